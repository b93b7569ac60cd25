//! What each subcommand does, given a validated [`Config`].

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::audit::{Audit, AuditEvent};
use crate::error::Error;
use crate::keys::mmk::PlatformKeyStore;
use crate::keys::{KeyContext, KeyError, KeyRef};
use crate::live::{self, LiveStatus, ServingState};
use crate::mount::{self, MountConfig, UnmountConfig};
use crate::process;
use crate::volume::header::{HeaderBody, VolumeFormat};
use crate::volume::{self, upgrade, HEADER_FILE};

pub struct Config {
    pub verbosity: u8,
    pub settings: Settings,
    pub command: Command,
}

/// Settings every command shares.
pub struct Settings {
    pub keys: KeyContext,
    pub audit_log: Option<PathBuf>,
    /// Where mounted volumes keep their live status files.
    pub run_dir: PathBuf,
}

pub enum Command {
    Init(InitConfig),
    Status(StatusConfig),
    Rewrap(RewrapConfig),
    Upgrade(UpgradeConfig),
    Fsck(FsckConfig),
    PlatformKey(PlatformKeyAction),
    Mount(MountConfig),
    Unmount(UnmountConfig),
    /// Bytes to write to standard output as they are: a generated man page or
    /// completion script.
    Print(Vec<u8>),
}

pub struct InitConfig {
    pub backing: PathBuf,
    pub key: KeyRef,
    pub encrypt_names: bool,
    pub format: VolumeFormat,
}

pub struct StatusConfig {
    pub backing: PathBuf,
    pub json: bool,
    pub key: Option<KeyRef>,
}

pub struct RewrapConfig {
    pub backing: PathBuf,
    pub key: KeyRef,
    pub current_key: Option<KeyRef>,
}

pub struct UpgradeConfig {
    pub backing: PathBuf,
    pub key: Option<KeyRef>,
}

pub struct FsckConfig {
    pub backing: PathBuf,
    pub json: bool,
    pub options: volume::fsck::FsckOptions,
    pub key: Option<KeyRef>,
}

pub enum PlatformKeyAction {
    Create(String),
    List,
    Rotate(String),
}

pub fn run(config: Config) -> Result<(), Error> {
    process::init_logging(config.verbosity);
    process::harden();
    let settings = &config.settings;
    // Errors quote header fields and KMS answers, which whoever wrote them controls: no
    // control characters reach the terminal.
    dispatch(config.command, settings).map_err(|e| Error::Daemon {
        code: e.exit_code(),
        message: printable(&e.to_string()),
        hint: e.hint().map(|h| printable(&h)),
    })
}

/// `text` with every control character (terminal escapes, newlines) shown escaped.
pub fn printable(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_control() {
                c.escape_default().to_string()
            } else {
                c.to_string()
            }
        })
        .collect()
}

fn dispatch(command: Command, settings: &Settings) -> Result<(), Error> {
    match command {
        Command::Init(c) => init(&c, settings),
        Command::Status(c) => status(&c, settings),
        Command::Rewrap(c) => rewrap(&c, settings),
        Command::Upgrade(c) => upgrade(&c, settings),
        Command::Fsck(c) => fsck(&c, settings),
        Command::PlatformKey(action) => platform_key(action, &settings.keys),
        Command::Mount(c) => mount::mount(&c, settings),
        Command::Unmount(c) => mount::unmount(&c),
        Command::Print(bytes) => {
            use std::io::Write;
            std::io::stdout()
                .write_all(&bytes)
                .map_err(Error::io("cannot write", "standard output"))
        }
    }
}

fn init(c: &InitConfig, settings: &Settings) -> Result<(), Error> {
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

/// The live status of the daemon serving `backing`, if one is running.
fn live_status(backing: &Path, settings: &Settings) -> Option<LiveStatus> {
    let backing = backing.canonicalize().ok()?;
    LiveStatus::read(&live::status_path(&settings.run_dir, &backing))
}

fn rewrap(c: &RewrapConfig, settings: &Settings) -> Result<(), Error> {
    let audit = Audit::open(settings.audit_log.as_deref())?;
    let live = live_status(&c.backing, settings);
    if let Some(live) = live.as_ref().filter(|l| l.state != ServingState::Serving) {
        return Err(Error::Key(KeyError::Unavailable {
            key: "the mounted volume's current key".into(),
            detail: format!(
                "the mount is {} because its key failed the last check; restore access before rewrapping",
                serde_json::to_string(&live.state).unwrap_or_default().trim_matches('"')
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

fn upgrade(c: &UpgradeConfig, settings: &Settings) -> Result<(), Error> {
    use std::io::IsTerminal;
    let mut view = upgrade::ProgressView::new(std::io::stderr().is_terminal());
    let report = upgrade::upgrade(&c.backing, &settings.keys, c.key.as_ref(), &mut |event| {
        view.event(event)
    });
    view.finish();
    println!("{}", upgrade::summary(&report?, &c.backing));
    Ok(())
}

/// `xtsfs fsck`: the report on stdout; exits with its code (docs in fsck::HELP).
fn fsck(c: &FsckConfig, settings: &Settings) -> Result<(), Error> {
    use std::io::{IsTerminal, Write};
    use volume::fsck;
    let mut view = fsck::ProgressView::new(std::io::stderr().is_terminal(), c.options.contents);
    let report = fsck::fsck(
        &c.backing,
        &settings.keys,
        c.key.as_ref(),
        c.options,
        &mut |event| view.event(event),
    );
    view.finish();
    let report = report?;
    let text = match c.json {
        true => serde_json::to_string_pretty(&report).expect("report serializes") + "\n",
        false => fsck::render(&report),
    };
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(Error::io("cannot write the report", "stdout"))?;
    match report.exit_code {
        0 => Ok(()),
        code => std::process::exit(code.into()),
    }
}

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

fn status(c: &StatusConfig, settings: &Settings) -> Result<(), Error> {
    let backing = mount::backing_of_mount(&c.backing).unwrap_or_else(|| c.backing.clone());
    let live = live_status(&backing, settings);
    if let Some(live) = live.as_ref().filter(|l| l.ephemeral) {
        // An ephemeral volume has no header: its daemon is the whole story.
        println!(
            "{}",
            serde_json::to_string_pretty(live).expect("status serializes")
        );
        return Ok(());
    }
    let (body, bytes) = match volume::read_header(&backing) {
        Ok(header) => header,
        // A mounted volume whose header cannot be read now: its daemon's view is still
        // worth printing before the error.
        Err(e) => {
            if let Some(live) = live {
                print_live_only(&live, c.json, &e);
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
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("status serializes")
        );
    } else {
        print_status(&report);
    }
    // Monitoring scripts get the key error's exit code; the report is already printed.
    check.map(drop)
}

/// The status of a mounted volume whose header cannot be read: its daemon's view, and why
/// the header is not shown.
fn print_live_only(live: &LiveStatus, json: bool, error: &Error) {
    if json {
        let report = serde_json::json!({
            "key_reachable": false,
            "key_error": error.to_string(),
            "live": live,
        });
        println!(
            "{}",
            serde_json::to_string_pretty(&report).expect("status serializes")
        );
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
        let state = serde_json::to_string(&live.state).unwrap_or_default();
        println!("  state:     {}", state.trim_matches('"'));
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
            let state = serde_json::to_string(&live.state).unwrap_or_default();
            println!(
                "mounted:     on {} (pid {})",
                p(&live.mountpoint.display().to_string()),
                live.pid
            );
            println!(
                "  state:     {} (on key loss: {})",
                state.trim_matches('"'),
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

fn platform_key(action: PlatformKeyAction, keys: &KeyContext) -> Result<(), Error> {
    let dir = &keys.platform_key_dir;
    match action {
        PlatformKeyAction::Create(id) => {
            let version = PlatformKeyStore::open_or_create(dir)?.create(&id)?;
            println!(
                "created platform key '{id}' version {version} in {}",
                dir.display()
            );
        }
        PlatformKeyAction::Rotate(id) => {
            let version = PlatformKeyStore::open(dir)?.rotate(&id)?;
            println!("platform key '{id}' is now at version {version}; volumes wrapped under older versions still open, rewrap them to use it");
        }
        PlatformKeyAction::List => {
            for key in PlatformKeyStore::open(dir)?.list()? {
                let versions: Vec<String> = key.versions.iter().map(u32::to_string).collect();
                println!(
                    "{}\tversions {}\tlatest {}",
                    key.id,
                    versions.join(","),
                    key.versions.last().copied().unwrap_or(0)
                );
            }
        }
    }
    Ok(())
}
