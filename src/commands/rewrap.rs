//! `xtsfs rewrap`: the data key under another key-encryption key; a mounted volume is
//! asked to check its key at once.

use super::live_status;
use crate::audit::{Audit, AuditEvent};
use crate::config::{RewrapConfig, Settings};
use crate::error::printable;
use crate::error::Error;
use crate::keys::KeyError;
use crate::live::ServingState;
use crate::volume;

pub fn run(c: &RewrapConfig, settings: &Settings) -> Result<(), Error> {
    let audit = Audit::open(settings.audit_log.as_deref())?;
    let live = live_status(&c.backing, settings);
    if let Some(live) = live.as_ref().filter(|l| l.state != ServingState::Serving) {
        return Err(Error::Key(KeyError::Unavailable {
            key: "the mounted volume's current key".into(),
            detail: format!(
                "the mount is {} because its key failed the last check; restore access before rewrapping",
                live.state.name()
            ),
        }));
    }
    let (old, new) =
        match volume::rewrap(&c.backing, &settings.keys, &c.key, c.current_key.as_ref()) {
            Ok(headers) => headers,
            Err(e) => {
                if let Ok((header, _)) = volume::read_header(&c.backing) {
                    audit.record(
                        &header.volume_id,
                        AuditEvent::Rewrap,
                        Some(&header.protector.key),
                        Some(&e),
                        None,
                    );
                }
                return Err(e);
            }
        };
    let detail = format!("from {}", old.protector.key);
    audit.record(
        &new.volume_id,
        AuditEvent::Rewrap,
        Some(&new.protector.key),
        None,
        Some(&detail),
    );
    if let Some(live) = live {
        // The daemon checks access against the new protector right away. Through a pidfd
        // of the verified daemon: a reused pid is never signalled.
        if let Err(e) = live.signal(libc::SIGUSR2) {
            tracing::warn!(
                pid = live.pid,
                "cannot ask the mount to check its key now ({e}); it will at its next check"
            );
        }
    }
    println!("rewrapped volume {}", new.volume_id);
    println!("from: {}", printable(&old.protector.key.to_string()));
    println!(
        "to:   {}",
        printable(&format!(
            "{} ({})",
            new.protector.key, new.protector.key.algorithm
        ))
    );
    Ok(())
}
