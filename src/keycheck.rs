//! The key monitor of a mounted volume: at mount and every interval it re-reads the
//! header, unwraps the DEK with the key the header names, follows the newest key version,
//! and applies the key-loss policy when the key is gone or denied.

use std::path::PathBuf;
use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::sync::Arc;
use std::time::Duration;

use sha2::{Digest, Sha256};

use crate::audit::{Audit, AuditEvent};
use crate::crypto::VolumeKey;
use crate::error::Error;
use crate::fs::{VolumeSecrets, XtsFs};
use crate::keys::{wrap_checked, KeyContext, KeyProvider, KeyRef};
use crate::live::{CheckReport, LiveStatus, ServingState};
use crate::volume::{self, header::HeaderBody, HEADER_FILE};

/// What to do when a check finds the key unreachable or denied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnKeyLoss {
    /// Flush, forget every key, and answer EACCES until the key is back.
    Lock,
    /// Keep serving and alert at every check.
    Alert,
}

impl OnKeyLoss {
    pub fn name(self) -> &'static str {
        match self {
            OnKeyLoss::Lock => "lock",
            OnKeyLoss::Alert => "alert",
        }
    }
}

/// Messages to the monitor thread.
pub enum MonitorRequest {
    CheckNow,
    Stop,
}

pub struct KeyMonitor {
    pub backing: PathBuf,
    pub keys: KeyContext,
    pub key_override: Option<KeyRef>,
    pub fs: Arc<XtsFs>,
    pub notifier: Option<fuser::Notifier>,
    pub audit: Arc<Audit>,
    pub interval: Duration,
    pub on_loss: OnKeyLoss,
    pub status: LiveStatus,
    pub status_path: PathBuf,
    pub encrypt_names: bool,
    /// Identifies the DEK served since mount, so a swapped-in header carrying some other
    /// key (anyone with an RSA public key can wrap one) is refused, not served.
    pub dek_fingerprint: [u8; 32],
}

pub fn dek_fingerprint(dek: &VolumeKey) -> [u8; 32] {
    Sha256::new_with_prefix(b"xtsfs v1 dek fingerprint")
        .chain_update(dek.expose())
        .finalize()
        .into()
}

impl KeyMonitor {
    pub fn run(mut self, requests: Receiver<MonitorRequest>) {
        loop {
            self.check();
            match requests.recv_timeout(self.interval) {
                Ok(MonitorRequest::CheckNow) | Err(RecvTimeoutError::Timeout) => {}
                Ok(MonitorRequest::Stop) | Err(RecvTimeoutError::Disconnected) => return,
            }
        }
    }

    pub fn publish(&self) {
        if let Err(e) = self.status.write(&self.status_path) {
            tracing::warn!(path = %self.status_path.display(), "cannot write live status: {e}");
        }
    }

    fn check(&mut self) {
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        match self.unwrap_current() {
            Ok((header, provider, dek)) => {
                self.status.protector = Some(header.protector.key.clone());
                if self.status.state != ServingState::Serving {
                    self.restore(&header, dek.clone());
                }
                self.follow_newest_version(&header, provider.as_ref(), &dek);
                self.status.last_check = Some(CheckReport {
                    at: now,
                    ok: true,
                    error: None,
                });
            }
            Err(e) => {
                self.status.last_check = Some(CheckReport {
                    at: now,
                    ok: false,
                    error: Some(e.to_string()),
                });
                let key = self.status.protector.clone();
                self.audit.record(
                    &self.status.volume_id,
                    AuditEvent::CheckFailed,
                    key.as_ref(),
                    Some(&e),
                    None,
                );
                self.on_key_lost(&e);
            }
        }
        self.publish();
    }

    fn unwrap_current(&self) -> Result<(HeaderBody, Box<dyn KeyProvider>, VolumeKey), Error> {
        let (header, bytes) = volume::read_header(&self.backing)?;
        if header.volume_id != self.status.volume_id {
            return Err(Error::Mount(format!(
                "the header now belongs to volume {}",
                header.volume_id
            )));
        }
        let provider =
            volume::provider_for(&header.protector, self.key_override.as_ref(), &self.keys)?;
        let dek = volume::unwrap_and_verify(
            provider.as_ref(),
            &header,
            &bytes,
            &self.backing.join(HEADER_FILE),
        )?;
        if dek_fingerprint(&dek) != self.dek_fingerprint {
            return Err(Error::Mount(
                "the header now carries a different volume key; refusing to serve with it".into(),
            ));
        }
        Ok((header, provider, dek))
    }

    fn on_key_lost(&mut self, error: &Error) {
        match (self.on_loss, self.status.state) {
            (OnKeyLoss::Lock, ServingState::Serving) => {
                self.fs.withdraw_keys(self.notifier.as_ref());
                self.status.state = ServingState::Locked;
                // Published before the flush, which can take a while on a busy disk.
                self.publish();
                if let Err(e) = self.fs.sync_backing() {
                    tracing::error!("cannot flush the backing file system after locking: {e}");
                }
                self.audit.record(
                    &self.status.volume_id,
                    AuditEvent::Locked,
                    self.status.protector.as_ref(),
                    Some(error),
                    None,
                );
                tracing::error!("volume locked: its key is unavailable ({error}); every operation now fails with EACCES until access is restored");
            }
            (OnKeyLoss::Alert, _) => {
                self.status.state = ServingState::Alert;
                tracing::error!("ALERT: the volume's key is unavailable ({error}); still serving because --on-key-loss=alert");
            }
            (OnKeyLoss::Lock, _) => {}
        }
    }

    fn restore(&mut self, header: &HeaderBody, dek: VolumeKey) {
        let key = Some(&header.protector.key);
        self.audit
            .record(&self.status.volume_id, AuditEvent::Unwrap, key, None, None);
        if self.status.state == ServingState::Locked {
            self.fs
                .keyring()
                .restore(VolumeSecrets::new(dek, self.encrypt_names));
        }
        self.status.state = ServingState::Serving;
        self.audit.record(
            &self.status.volume_id,
            AuditEvent::Restored,
            key,
            None,
            None,
        );
        tracing::warn!("key access restored; serving again");
    }

    /// A key reference without a pinned version follows the newest: when the provider
    /// now wraps with another version, rewrap onto it.
    fn follow_newest_version(
        &mut self,
        header: &HeaderBody,
        provider: &dyn KeyProvider,
        dek: &VolumeKey,
    ) {
        if self.key_override.is_some() {
            return;
        }
        let newest = match provider.describe() {
            Ok(newest) if newest.key_version != header.protector.key.key_version => newest,
            Ok(_) => return,
            Err(e) => return tracing::warn!("cannot ask the key for its newest version: {e}"),
        };
        let detail = format!(
            "from version {} to {}",
            header.protector.key.key_version, newest.key_version
        );
        let result = wrap_checked(provider, dek)
            .map_err(Error::from)
            .and_then(|protector| {
                volume::replace_protector(&self.backing, dek, &header.protector, protector)
            });
        match result {
            Ok(Some(new)) => {
                self.audit.record(
                    &self.status.volume_id,
                    AuditEvent::AutoRotate,
                    Some(&new.protector.key),
                    None,
                    Some(&detail),
                );
                self.status.protector = Some(new.protector.key);
            }
            Ok(None) => {}
            Err(e) => self.audit.record(
                &self.status.volume_id,
                AuditEvent::AutoRotate,
                Some(&newest),
                Some(&e),
                Some(&detail),
            ),
        }
    }
}
