//! What each subcommand does, given a validated [`Config`].

use std::path::PathBuf;

use serde::Serialize;

use crate::error::Error;
use crate::keys::mmk::PlatformKeyStore;
use crate::keys::{KeyContext, KeyRef};
use crate::mount::{self, MountConfig, UnmountConfig};
use crate::process;
use crate::volume::{self, header::HeaderBody, header::FORMAT_VERSION, HEADER_FILE};

pub struct Config {
    pub verbosity: u8,
    pub keys: KeyContext,
    pub command: Command,
}

pub enum Command {
    Init(InitConfig),
    Status(StatusConfig),
    Rewrap(RewrapConfig),
    PlatformKey(PlatformKeyAction),
    Mount(MountConfig),
    Unmount(UnmountConfig),
}

pub struct InitConfig {
    pub backing: PathBuf,
    pub key: KeyRef,
    pub encrypt_names: bool,
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

pub enum PlatformKeyAction {
    Create(String),
    List,
    Rotate(String),
}

pub fn run(config: Config) -> Result<(), Error> {
    process::init_logging(config.verbosity);
    process::harden();
    let keys = &config.keys;
    match config.command {
        Command::Init(c) => {
            let body = volume::init(&c.backing, &c.key, keys, c.encrypt_names)?;
            println!(
                "created xtsfs volume {} in {}",
                body.volume_id,
                c.backing.display()
            );
            println!(
                "protector: {} ({})",
                body.protector.key, body.protector.key.algorithm
            );
            Ok(())
        }
        Command::Status(c) => status(&c, keys),
        Command::Rewrap(c) => {
            let (old, new) = volume::rewrap(&c.backing, keys, &c.key, c.current_key.as_ref())?;
            println!("rewrapped volume {}", new.volume_id);
            println!("from: {}", old.protector.key);
            println!(
                "to:   {} ({})",
                new.protector.key, new.protector.key.algorithm
            );
            Ok(())
        }
        Command::PlatformKey(action) => platform_key(action, keys),
        Command::Mount(c) => mount::mount(&c, keys),
        Command::Unmount(c) => mount::unmount(&c),
    }
}

#[derive(Serialize)]
struct StatusReport<'a> {
    volume_id: &'a str,
    format_version: u16,
    cipher: &'a str,
    data_unit_size: u32,
    names: &'a str,
    created_at: &'a str,
    protector: ProtectorReport<'a>,
    key_reachable: bool,
    key_error: Option<String>,
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

fn status(c: &StatusConfig, keys: &KeyContext) -> Result<(), Error> {
    let (body, bytes) = volume::read_header(&c.backing)?;
    let check = volume::provider_for(&body.protector, c.key.as_ref(), keys).and_then(|provider| {
        volume::unwrap_and_verify(
            provider.as_ref(),
            &body,
            &bytes,
            &c.backing.join(HEADER_FILE),
        )
    });
    let report = report(&body, check.as_ref().err());
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

fn report<'a>(body: &'a HeaderBody, key_error: Option<&Error>) -> StatusReport<'a> {
    let p = &body.protector;
    StatusReport {
        volume_id: &body.volume_id,
        format_version: FORMAT_VERSION,
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
    }
}

fn print_status(r: &StatusReport<'_>) {
    println!("volume:      {}", r.volume_id);
    println!("format:      {}", r.format_version);
    println!(
        "cipher:      {} ({}-byte data units)",
        r.cipher, r.data_unit_size
    );
    println!("names:       {}", r.names);
    println!("created:     {}", r.created_at);
    println!(
        "protector:   {} key '{}'",
        r.protector.kind, r.protector.key_id
    );
    println!("  version:   {}", r.protector.key_version);
    println!("  algorithm: {}", r.protector.algorithm);
    println!("  key ref:   {}", r.protector.key_ref);
    println!("  wrapped:   {}", r.protector.wrapped_at);
    match &r.key_error {
        None => println!("key:         reachable (unwrap and header MAC verified)"),
        Some(e) => println!("key:         NOT reachable: {e}"),
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
