//! `xtsfs init`: a new volume.

use crate::audit::{Audit, AuditEvent};
use crate::config::{InitConfig, Settings};
use crate::error::printable;
use crate::error::Error;
use crate::volume;

pub fn run(c: &InitConfig, settings: &Settings) -> Result<(), Error> {
    let audit = Audit::open(settings.audit_log.as_deref())?;
    let body = volume::init(
        &c.backing,
        &c.key,
        &settings.keys,
        c.encrypt_names,
        c.format,
    )?;
    audit.record(
        &body.volume_id,
        AuditEvent::Init,
        Some(&body.protector.key),
        None,
        None,
    );
    println!(
        "created xtsfs volume {} in {}",
        body.volume_id,
        printable(&c.backing.display().to_string())
    );
    println!(
        "protector: {}",
        printable(&format!(
            "{} ({})",
            body.protector.key, body.protector.key.algorithm
        ))
    );
    Ok(())
}
