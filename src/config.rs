//! The validated configuration: what the command line asked for, in the crate's own
//! types. The command line (cli.rs) builds it from clap's; the commands and the mount
//! daemon take it, and nothing below the command line sees clap.

use std::path::PathBuf;
use std::time::Duration;

use crate::keys::{KeyContext, KeyRef};
use crate::volume::header::VolumeFormat;

/// FUSE request threads unless `--threads` says otherwise.
pub const DEFAULT_THREADS: u16 = 4;

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
    pub options: FsckOptions,
    pub key: Option<KeyRef>,
}

pub enum PlatformKeyAction {
    Create(String),
    List,
    Rotate(String),
}

#[derive(Debug, Clone)]
pub struct MountConfig {
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub foreground: bool,
    pub allow_other: bool,
    pub read_only: bool,
    pub options: Vec<String>,
    pub key: Option<KeyRef>,
    pub threads: usize,
    pub log_file: Option<PathBuf>,
    pub key_check_interval: Duration,
    /// The deadline of one key check; `None`: the interval, at most 30 s.
    pub key_check_timeout: Option<Duration>,
    /// How long answers that are not definite (timeouts, "unavailable") are retried, the
    /// volume still serving, before `on_key_loss` applies.
    pub key_unavailable_grace: Duration,
    pub on_key_loss: OnKeyLoss,
    /// A volume with a random in-memory key and no header, removed at unmount.
    pub ephemeral: bool,
    /// Every open file bypasses the kernel page cache.
    pub direct_io: bool,
}

#[derive(Debug, Clone)]
pub struct UnmountConfig {
    pub mountpoint: PathBuf,
    pub lazy: bool,
}

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

/// What `xtsfs fsck` does besides checking names and headers.
#[derive(Debug, Clone, Copy, Default)]
pub struct FsckOptions {
    /// Decrypt every file and report all-zero units.
    pub contents: bool,
    /// Remove orphan side files, move undecryptable entries to `lost+found`.
    pub repair: bool,
    /// Check a mounted volume (without `repair`).
    pub force: bool,
}
