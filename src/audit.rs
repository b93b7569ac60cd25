//! The audit log: one JSON object per line for every key event, also sent through
//! tracing. It never holds key material: only kinds, ids, versions and outcomes.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Mutex;

use serde::Serialize;

use crate::error::Error;
use crate::keys::KeyDescription;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum AuditEvent {
    Init,
    Mount,
    Unwrap,
    Rewrap,
    AutoRotate,
    CheckFailed,
    /// The key service gave no definite answer: still serving within the grace period.
    Degraded,
    Locked,
    Restored,
    Unmount,
}

#[derive(Serialize)]
struct Record<'a> {
    timestamp: String,
    volume_id: &'a str,
    event: AuditEvent,
    key_kind: Option<String>,
    key_id: Option<&'a str>,
    key_version: Option<&'a str>,
    outcome: &'static str,
    error: Option<String>,
    detail: Option<&'a str>,
}

/// Where audit records go: always tracing, and a JSON-lines file if one was given.
#[derive(Default)]
pub struct Audit {
    file: Option<Mutex<File>>,
}

impl Audit {
    pub fn open(path: Option<&Path>) -> Result<Self, Error> {
        let file = path
            .map(|path| {
                File::options()
                    .create(true)
                    .append(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(path)
                    .map_err(Error::io("cannot open audit log", path))
            })
            .transpose()?;
        Ok(Audit {
            file: file.map(Mutex::new),
        })
    }

    /// Records one event; `error` is `None` for a success.
    pub fn record(
        &self,
        volume_id: &str,
        event: AuditEvent,
        key: Option<&KeyDescription>,
        error: Option<&dyn fmt::Display>,
        detail: Option<&str>,
    ) {
        let record = Record {
            timestamp: humantime::format_rfc3339_micros(std::time::SystemTime::now()).to_string(),
            volume_id,
            event,
            key_kind: key.map(|k| k.kind.to_string()),
            key_id: key.map(|k| k.key_id.as_str()),
            key_version: key.map(|k| k.key_version.as_str()),
            outcome: if error.is_none() {
                "success"
            } else {
                "failure"
            },
            error: error.map(|e| e.to_string()),
            detail,
        };
        let line = match serde_json::to_string(&record) {
            Ok(line) => line,
            // Like a failed write: the event goes on, and the log says what was lost.
            Err(e) => {
                tracing::error!("cannot write audit log: cannot encode the {event:?} record: {e}");
                return;
            }
        };
        // Info, not warn: a failing command already reports its error, and the daemon logs
        // lock and alert transitions at error level itself.
        tracing::info!(target: "xtsfs::audit", "{line}");
        if let Some(file) = &self.file {
            let mut file = file
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            // One write per line keeps lines whole under O_APPEND; the sync makes the
            // record survive a crash right after the event.
            if let Err(e) = file
                .write_all(format!("{line}\n").as_bytes())
                .and_then(|()| file.sync_data())
            {
                tracing::error!("cannot write audit log: {e}");
            }
        }
    }
}
