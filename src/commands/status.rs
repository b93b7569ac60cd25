//! `xtsfs status`: the header, whether its key is reachable, and a mounted volume's
//! live state.

use serde::Serialize;

use super::live_status;
use crate::config::{Settings, StatusConfig};
use crate::error::printable;
use crate::error::Error;
use crate::live::LiveStatus;
use crate::mount;
use crate::volume::header::HeaderBody;
use crate::volume::{self, HEADER_FILE};

#[derive(Serialize)]
struct StatusReport<'a> {
    volume_id: &'a str,
    format_version: u16,
    /// Format 2: how many times the header was written.
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<u64>,
    cipher: &'a str,
    data_unit_size: u32,
    names: &'a str,
    created_at: &'a str,
    protector: ProtectorReport<'a>,
    key_reachable: bool,
    key_error: Option<String>,
    /// The mounted daemon's view, when the volume is mounted.
    live: Option<LiveStatus>,
}

#[derive(Serialize)]
struct ProtectorReport<'a> {
    kind: String,
    key_id: &'a str,
    key_version: &'a str,
    algorithm: &'a str,
    key_ref: &'a str,
    wrapped_at: &'a str,
}

pub fn run(c: &StatusConfig, settings: &Settings) -> Result<(), Error> {
    let backing = mount::backing_of_mount(&c.backing).unwrap_or_else(|| c.backing.clone());
    let live = live_status(&backing, settings);
    if let Some(live) = live.as_ref().filter(|l| l.ephemeral) {
        // An ephemeral volume has no header: its daemon is the whole story.
        return print_json(live);
    }
    let (body, bytes) = match volume::read_header(&backing) {
        Ok(header) => header,
        // A mounted volume whose header cannot be read now: its daemon's view is still
        // worth printing before the error.
        Err(e) => {
            if let Some(live) = live {
                print_live_only(&live, c.json, &e)?;
            }
            return Err(e);
        }
    };
    let check = volume::provider_for(&body.protector, c.key.as_ref(), &settings.keys)
        .and_then(|provider| {
            volume::unwrap_and_verify(provider.as_ref(), &body, &bytes, &backing.join(HEADER_FILE))
        })
        .and_then(|dek| {
            volume::check_host_record(&settings.keys, &body, &dek, volume::RecordUse::Status)
        });
    let report = report(&body, check.as_ref().err(), live);
    if c.json {
        print_json(&report)?;
    } else {
        print_status(&report);
    }
    // Monitoring scripts get the key error's exit code; the report is already printed.
    check.map(drop)
}

/// The status of a mounted volume whose header cannot be read: its daemon's view, and why
/// the header is not shown.
fn print_live_only(live: &LiveStatus, json: bool, error: &Error) -> Result<(), Error> {
    if json {
        let mut report = serde_json::Map::new();
        report.insert("key_reachable".into(), false.into());
        report.insert("key_error".into(), error.to_string().into());
        let live = serde_json::to_value(live).map_err(output_error())?;
        report.insert("live".into(), live);
        print_json(&report)?;
    } else {
        println!(
            "header:      NOT readable: {}",
            printable(&error.to_string())
        );
        println!(
            "mounted:     on {} (pid {})",
            printable(&live.mountpoint.display().to_string()),
            live.pid
        );
        println!("  state:     {}", live.state.name());
        if let Some(check) = &live.last_check {
            match &check.error {
                None => println!("  last check: {} ok", printable(&check.at)),
                Some(e) => println!(
                    "  last check: {} FAILED: {}",
                    printable(&check.at),
                    printable(e)
                ),
            }
        }
    }
    Ok(())
}

/// The error of a status that cannot be encoded for stdout.
fn output_error<E: Into<std::io::Error>>() -> impl FnOnce(E) -> Error {
    Error::io("cannot write the status", "standard output")
}

/// `value` as indented JSON on stdout.
fn print_json(value: &impl Serialize) -> Result<(), Error> {
    let text = serde_json::to_string_pretty(value).map_err(output_error())?;
    println!("{text}");
    Ok(())
}

fn report<'a>(
    body: &'a HeaderBody,
    key_error: Option<&Error>,
    live: Option<LiveStatus>,
) -> StatusReport<'a> {
    let p = &body.protector;
    StatusReport {
        volume_id: &body.volume_id,
        format_version: body.format.version(),
        epoch: body.epoch,
        cipher: &body.cipher,
        data_unit_size: body.data_unit_size,
        names: &body.names,
        created_at: &body.created_at,
        protector: ProtectorReport {
            kind: p.key.kind.to_string(),
            key_id: &p.key.key_id,
            key_version: &p.key.key_version,
            algorithm: &p.key.algorithm,
            key_ref: &p.key.key_ref,
            wrapped_at: &p.wrapped_at,
        },
        key_reachable: key_error.is_none(),
        key_error: key_error.map(|e| e.to_string()),
        live,
    }
}

/// Prints the report for a terminal. Every string from the header or the daemon's status
/// goes through [`printable`]: a crafted `key_ref` cannot send escape sequences.
fn print_status(r: &StatusReport<'_>) {
    let p = |text: &str| printable(text);
    println!("volume:      {}", p(r.volume_id));
    match r.epoch {
        Some(epoch) => println!("format:      {} (header epoch {epoch})", r.format_version),
        None => println!(
            "format:      {} (upgrade with: xtsfs upgrade BACKING)",
            r.format_version
        ),
    }
    println!(
        "cipher:      {} ({}-byte data units)",
        p(r.cipher),
        r.data_unit_size
    );
    println!("names:       {}", p(r.names));
    println!("created:     {}", p(r.created_at));
    println!(
        "protector:   {} key '{}'",
        p(&r.protector.kind),
        p(r.protector.key_id)
    );
    println!("  version:   {}", p(r.protector.key_version));
    println!("  algorithm: {}", p(r.protector.algorithm));
    println!("  key ref:   {}", p(r.protector.key_ref));
    println!("  wrapped:   {}", p(r.protector.wrapped_at));
    match &r.key_error {
        None => println!("key:         reachable (unwrap and header MAC verified)"),
        Some(e) => println!("key:         NOT reachable: {}", p(e)),
    }
    match &r.live {
        None => println!("mounted:     no"),
        Some(live) => {
            println!(
                "mounted:     on {} (pid {})",
                p(&live.mountpoint.display().to_string()),
                live.pid
            );
            println!(
                "  state:     {} (on key loss: {})",
                live.state.name(),
                p(&live.on_key_loss)
            );
            if let Some(since) = &live.degraded_since {
                println!("  degraded since: {}", p(since));
            }
            if let Some(check) = &live.last_check {
                match &check.error {
                    None => println!("  last check: {} ok", p(&check.at)),
                    Some(e) => println!("  last check: {} FAILED: {}", p(&check.at), p(e)),
                }
            }
        }
    }
}
