//! The key monitor of a mounted volume: at mount and every interval it re-reads the
//! header, unwraps the DEK with the key the header names, follows the newest key version,
//! and applies the key-loss policy when the key is gone or denied.
//!
//! A check runs on a worker thread of its own under a deadline: the monitor thread itself
//! never waits on a key service or on the backing file system, so a check that hangs (a
//! FIFO planted in the backing directory, a KMS or HSM that never answers) counts as a
//! failed check after the deadline, the lock still happens, and unmount never waits for
//! it. Answers that are definite (denied, disabled, deleted, not found, wrong key, a
//! refused header) apply `--on-key-loss` at once; answers that are not (timeouts,
//! connection errors, "unavailable") are retried with backoff for
//! `--key-unavailable-grace`, while the volume keeps serving in the `degraded` state.

use std::path::PathBuf;
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::audit::{Audit, AuditEvent};
use crate::config::OnKeyLoss;
use crate::crypto::VolumeKey;
use crate::error::Error;
use crate::fs::{VolumeSecrets, XtsFs};
use crate::keys::{wrap_checked, KeyContext, KeyError, KeyProvider, KeyRef};
use crate::live::{CheckReport, LiveStatus, ServingState};
use crate::volume::{self, header::HeaderBody, RecordUse, HEADER_FILE};

/// A key check's deadline unless `--key-check-timeout` says otherwise: the interval, at
/// most this.
pub const MAX_DEFAULT_CHECK_TIMEOUT: Duration = Duration::from_secs(30);
/// `--key-unavailable-grace` unless given.
pub const DEFAULT_UNAVAILABLE_GRACE: Duration = Duration::from_secs(300);
/// The first retry after an answer that is not definite; retries then double up to the
/// interval.
const FIRST_RETRY: Duration = Duration::from_secs(1);

/// Messages to the monitor thread.
pub enum MonitorRequest {
    CheckNow,
    Stop,
    /// A worker's result, with the number of the check it ran.
    Checked(u64, Box<Result<Checked, Error>>),
}

/// What a check that succeeded found.
pub struct Checked {
    header: HeaderBody,
    dek: VolumeKey,
    rotation: Option<Rotation>,
}

/// The header a successful auto-rotation wrote (already audited by the check).
struct Rotation {
    header: HeaderBody,
}

/// Whether an error is a definite answer about the key (denied, gone, wrong, a refused
/// header), as opposed to one that may go away by itself (a timeout, a connection error,
/// a key service that says it is unavailable, an I/O error).
pub fn is_definite(error: &Error) -> bool {
    match error {
        Error::Key(key) => !matches!(
            key,
            KeyError::Unavailable { .. }
                | KeyError::Io { .. }
                | KeyError::Protocol { .. }
                | KeyError::Random(_)
        ),
        Error::Io { .. } | Error::Upgrade(_) | Error::Rendered { .. } => false,
        _ => true,
    }
}

pub struct KeyMonitor {
    pub backing: PathBuf,
    pub keys: KeyContext,
    pub key_override: Option<KeyRef>,
    pub fs: Arc<XtsFs>,
    pub notifier: Option<fuser::Notifier>,
    pub audit: Arc<Audit>,
    pub interval: Duration,
    /// The deadline of one check.
    pub timeout: Duration,
    /// How long answers that are not definite are retried before `on_loss` applies.
    pub grace: Duration,
    pub on_loss: OnKeyLoss,
    pub status: LiveStatus,
    pub status_path: PathBuf,
    pub encrypt_names: bool,
    /// Identifies the DEK served since mount ([`VolumeKey::check_value`]), so a swapped-in
    /// header carrying some other key (anyone with an RSA public key can wrap one) is
    /// refused, not served.
    pub key_check: [u8; 32],
}

/// The monitor's own bookkeeping.
struct Progress {
    /// The number of the last check started.
    seq: u64,
    /// The check running now, and when it started.
    running: Option<Instant>,
    /// Whether the running check has already been counted as failed (it overran).
    overrun: bool,
    next_check: Instant,
    /// When answers that are not definite started, while degraded.
    degraded_since: Option<Instant>,
    backoff: Duration,
}

/// The part of the monitor a check worker needs.
struct CheckJob {
    audit: Arc<Audit>,
    backing: PathBuf,
    keys: KeyContext,
    key_override: Option<KeyRef>,
    volume_id: String,
    key_check: [u8; 32],
}

impl KeyMonitor {
    /// Starts the monitor thread; it checks at once, then every interval.
    pub fn spawn(self) -> std::io::Result<(Sender<MonitorRequest>, JoinHandle<()>)> {
        let (requests, receiver) = mpsc::channel();
        let sender = requests.clone();
        let handle = std::thread::Builder::new()
            .name("xtsfs-keycheck".into())
            .spawn(move || self.run(sender, receiver))?;
        Ok((requests, handle))
    }

    fn run(mut self, sender: Sender<MonitorRequest>, requests: Receiver<MonitorRequest>) {
        let mut progress = Progress {
            seq: 0,
            running: None,
            overrun: false,
            next_check: Instant::now(),
            degraded_since: None,
            backoff: FIRST_RETRY.min(self.interval),
        };
        loop {
            let now = Instant::now();
            if now >= progress.next_check {
                match progress.running {
                    None => self.start_check(&mut progress, &sender),
                    // The last check is stuck past its deadline: this one fails too,
                    // without piling up another thread behind it.
                    Some(started) if progress.overrun => {
                        self.failed(&mut progress, overrun_error(now - started))
                    }
                    // Still within its deadline: its result is this check's.
                    Some(_) => {}
                }
            }
            let deadline = match progress.running {
                Some(started) if !progress.overrun => started + self.timeout,
                _ => progress.next_check,
            };
            match requests.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok(MonitorRequest::Checked(seq, result)) if seq == progress.seq => {
                    progress.running = None;
                    if progress.overrun {
                        // Already counted as failed; its result is stale.
                        progress.overrun = false;
                        continue;
                    }
                    match *result {
                        Ok(checked) => self.succeeded(&mut progress, checked),
                        Err(error) => self.failed(&mut progress, error),
                    }
                }
                // A late answer to a check that was given up on: dropped, key and all.
                Ok(MonitorRequest::Checked(..)) => {}
                Ok(MonitorRequest::CheckNow) => progress.next_check = Instant::now(),
                Ok(MonitorRequest::Stop) | Err(RecvTimeoutError::Disconnected) => return,
                Err(RecvTimeoutError::Timeout) => {
                    if let Some(started) = progress.running.filter(|_| !progress.overrun) {
                        let elapsed = started.elapsed();
                        if elapsed >= self.timeout {
                            progress.overrun = true;
                            self.failed(&mut progress, overrun_error(elapsed));
                        }
                    }
                }
            }
        }
    }

    fn start_check(&mut self, progress: &mut Progress, sender: &Sender<MonitorRequest>) {
        progress.seq += 1;
        progress.running = Some(Instant::now());
        progress.overrun = false;
        // Until the result says otherwise.
        progress.next_check = Instant::now() + self.interval;
        let mut keys = self.keys.clone();
        keys.call_timeout = Some(self.timeout);
        let job = CheckJob {
            audit: self.audit.clone(),
            backing: self.backing.clone(),
            keys,
            key_override: self.key_override.clone(),
            volume_id: self.status.volume_id.clone(),
            key_check: self.key_check,
        };
        let (seq, sender) = (progress.seq, sender.clone());
        let spawned = std::thread::Builder::new()
            .name("xtsfs-keycheck-job".into())
            .spawn(move || {
                let result = job.run();
                // The monitor may be gone (unmount), or may have given up on this check.
                let _ = sender.send(MonitorRequest::Checked(seq, Box::new(result)));
            });
        if let Err(e) = spawned {
            progress.running = None;
            self.failed(
                progress,
                Error::io("cannot start a key check", "xtsfs-keycheck-job")(e),
            );
        }
    }

    pub fn publish(&self) {
        if let Err(e) = self.status.write(&self.status_path) {
            tracing::warn!(path = %self.status_path.display(), "cannot write live status: {e}");
        }
    }

    fn now() -> String {
        humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
    }

    fn succeeded(&mut self, progress: &mut Progress, checked: Checked) {
        let Checked {
            header,
            dek,
            rotation,
        } = checked;
        self.status.protector = Some(header.protector.key.clone());
        self.status.header_epoch = header.epoch;
        if self.status.state != ServingState::Serving {
            self.restore(&header, dek);
        }
        if let Some(rotation) = rotation {
            self.record_rotation(rotation);
        }
        self.status.last_check = Some(CheckReport {
            at: Self::now(),
            ok: true,
            error: None,
        });
        self.status.degraded_since = None;
        progress.degraded_since = None;
        progress.backoff = FIRST_RETRY.min(self.interval);
        progress.next_check = Instant::now() + self.interval;
        self.publish();
    }

    fn failed(&mut self, progress: &mut Progress, error: Error) {
        self.status.last_check = Some(CheckReport {
            at: Self::now(),
            ok: false,
            error: Some(error.to_string()),
        });
        let key = self.status.protector.clone();
        self.audit.record(
            &self.status.volume_id,
            AuditEvent::CheckFailed,
            key.as_ref(),
            Some(&error),
            None,
        );
        progress.next_check = Instant::now() + self.interval;
        match self.status.state {
            // Nothing more to lose; keep checking for the key's return.
            ServingState::Locked => {}
            _ if is_definite(&error) => self.on_key_lost(&error),
            ServingState::Alert => self.on_key_lost(&error),
            ServingState::Serving | ServingState::Degraded => {
                let since = *progress.degraded_since.get_or_insert_with(Instant::now);
                let elapsed = since.elapsed();
                if elapsed >= self.grace {
                    self.on_key_lost(&error);
                } else {
                    if self.status.state == ServingState::Serving {
                        self.status.state = ServingState::Degraded;
                        self.status.degraded_since = Some(Self::now());
                        let detail = format!(
                            "still serving; retrying, and applying --on-key-loss={} if the key is not back within {}",
                            self.on_loss.name(),
                            humantime::format_duration(self.grace)
                        );
                        self.audit.record(
                            &self.status.volume_id,
                            AuditEvent::Degraded,
                            key.as_ref(),
                            Some(&error),
                            Some(&detail),
                        );
                    }
                    tracing::warn!("the volume's key did not answer ({error}); degraded, still serving for up to {} more", humantime::format_duration(self.grace - elapsed));
                    progress.next_check =
                        Instant::now() + progress.backoff.min(self.grace - elapsed);
                    progress.backoff = (progress.backoff * 2).min(self.interval);
                }
            }
        }
        self.publish();
    }

    fn on_key_lost(&mut self, error: &Error) {
        match self.on_loss {
            OnKeyLoss::Lock => {
                self.fs.withdraw_keys(self.notifier.as_ref());
                self.status.state = ServingState::Locked;
                self.status.degraded_since = None;
                self.publish();
                // Flushing can take long on a busy or hung disk: not on this thread.
                let fs = self.fs.clone();
                let _ = std::thread::Builder::new()
                    .name("xtsfs-lock-sync".into())
                    .spawn(move || {
                        if let Err(e) = fs.sync_backing() {
                            tracing::error!(
                                "cannot flush the backing file system after locking: {e}"
                            );
                        }
                    });
                self.audit.record(
                    &self.status.volume_id,
                    AuditEvent::Locked,
                    self.status.protector.as_ref(),
                    Some(error),
                    None,
                );
                tracing::error!("volume locked: its key is unavailable ({error}); every operation except statfs and closing files now fails with EACCES until access is restored");
            }
            OnKeyLoss::Alert => {
                self.status.state = ServingState::Alert;
                self.status.degraded_since = None;
                tracing::error!("ALERT: the volume's key is unavailable ({error}); still serving because --on-key-loss=alert");
            }
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

    fn record_rotation(&mut self, rotation: Rotation) {
        self.status.header_epoch = rotation.header.epoch;
        self.status.protector = Some(rotation.header.protector.key);
    }
}

fn overrun_error(elapsed: Duration) -> Error {
    Error::Key(KeyError::Unavailable {
        key: "the volume's key".into(),
        detail: format!(
            "the key check has not finished after {}: the key service, the token or the backing file system does not answer (--key-check-timeout)",
            humantime::format_duration(Duration::from_millis(elapsed.as_millis() as u64))
        ),
    })
}

impl CheckJob {
    /// Checks the key. A header refused against the host's record is read again a few
    /// times first: a rewrap on this host replaces the header and then its record, and a
    /// check that read the header just before and the record just after sees them
    /// disagree for a moment. A header really put back from elsewhere stays refused.
    fn run(&self) -> Result<Checked, Error> {
        let mut attempt = 0;
        loop {
            match self.check() {
                Err(Error::HeaderRefused { .. }) if attempt < 3 => {
                    attempt += 1;
                    std::thread::sleep(Duration::from_millis(50));
                }
                result => return result,
            }
        }
    }

    fn check(&self) -> Result<Checked, Error> {
        let (header, bytes) = volume::read_header(&self.backing)?;
        if header.volume_id != self.volume_id {
            return Err(self.refused(format!(
                "the header now belongs to volume {}",
                header.volume_id.escape_default()
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
        if dek.check_value() != self.key_check {
            return Err(self.refused(
                "the header now carries a different volume key; refusing to serve with it".into(),
            ));
        }
        volume::check_host_record(&self.keys, &header, &dek, RecordUse::Monitor)?;
        let rotation = self.follow_newest_version(&header, provider.as_ref(), &dek);
        Ok(Checked {
            header,
            dek,
            rotation,
        })
    }

    fn refused(&self, detail: String) -> Error {
        Error::HeaderRefused {
            volume_id: self.volume_id.clone(),
            detail,
            running: true,
            record: self.keys.host_state_dir.clone(),
        }
    }

    /// A key reference without a pinned version follows the newest: when the provider
    /// now wraps with another version, rewrap onto it.
    fn follow_newest_version(
        &self,
        header: &HeaderBody,
        provider: &dyn KeyProvider,
        dek: &VolumeKey,
    ) -> Option<Rotation> {
        if self.key_override.is_some() {
            return None;
        }
        let newest = match provider.describe() {
            Ok(newest) if newest.key_version != header.protector.key.key_version => newest,
            Ok(_) => return None,
            Err(e) => {
                tracing::warn!("cannot ask the key for its newest version: {e}");
                return None;
            }
        };
        let detail = format!(
            "from version {} to {}",
            header.protector.key.key_version, newest.key_version
        );
        let result = wrap_checked(provider, dek)
            .map_err(Error::from)
            .and_then(|protector| {
                volume::replace_protector(
                    &self.keys,
                    &self.backing,
                    dek,
                    &header.protector,
                    protector,
                )
            });
        // Audited here, as soon as the header is written, whatever becomes of the check.
        match result {
            Ok(Some(new)) => {
                self.audit.record(
                    &self.volume_id,
                    AuditEvent::AutoRotate,
                    Some(&new.protector.key),
                    None,
                    Some(&detail),
                );
                Some(Rotation { header: new })
            }
            Ok(None) => None,
            Err(e) => {
                self.audit.record(
                    &self.volume_id,
                    AuditEvent::AutoRotate,
                    Some(&newest),
                    Some(&e),
                    Some(&detail),
                );
                None
            }
        }
    }
}
