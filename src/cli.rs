//! Command-line options. Clap types stop here: [`Opts::into_config`] turns them into the
//! validated [`Config`] that the rest of the crate takes.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{CommandFactory, Parser, Subcommand};

use crate::config::{
    Command, Config, FsckConfig, InitConfig, MountConfig, OnKeyLoss, PlatformKeyAction,
    RewrapConfig, Settings, StatusConfig, UnmountConfig, UpgradeConfig, DEFAULT_THREADS,
};
use crate::error::{Error, ExitCode};
use crate::keys::{KeyContext, KeyRef};
use crate::live;
use crate::volume::header::VolumeFormat;

#[derive(Debug, Parser)]
#[command(
    name = "xtsfs",
    version,
    about = "AES-256-XTS encrypted FUSE filesystem with platform- and customer-managed keys"
)]
#[command(after_help = ExitCode::help())]
pub struct Opts {
    /// More log output (-v info, -vv debug, -vvv trace); RUST_LOG overrides.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    verbose: u8,

    /// Platform key store directory.
    #[arg(long, global = true, env = "XTSFS_PLATFORM_KEY_DIR", default_value = KeyContext::DEFAULT_PLATFORM_KEY_DIR)]
    platform_key_dir: PathBuf,

    /// Another directory whose KMS programs and PKCS#11 modules a volume header may
    /// name (repeatable; the defaults are /etc/xtsfs/kms, /usr/lib/xtsfs/kms,
    /// /usr/local/lib/xtsfs/kms and the standard PKCS#11 module directories).
    #[arg(
        long,
        global = true,
        env = "XTSFS_TRUSTED_KEY_DIRS",
        value_delimiter = ':'
    )]
    trusted_key_dir: Vec<PathBuf>,

    /// Append key events (JSON lines) to this file.
    #[arg(long, global = true, env = "XTSFS_AUDIT_LOG")]
    audit_log: Option<PathBuf>,

    /// Where mounted volumes keep their live status files.
    #[arg(long, global = true, env = "XTSFS_RUN_DIR", default_value = live::DEFAULT_RUN_DIR)]
    run_dir: PathBuf,

    /// Where this host records the last header epoch and protector it saw of each volume
    /// (and suspended PKCS#11 logins). Default: beside the platform key store
    /// (/var/lib/xtsfs/volume-state for the default store).
    #[arg(long, global = true, env = "XTSFS_HOST_STATE_DIR")]
    host_state_dir: Option<PathBuf>,

    /// The file holding the PIN of the PKCS#11 token a volume header names. A PIN
    /// source in a header is never used; a --key given on the command line may name its
    /// own.
    #[arg(long, global = true, env = "XTSFS_PKCS11_PIN_SOURCE")]
    pkcs11_pin_source: Option<PathBuf>,

    /// Accept a header this host did not see written (older than the last one it saw,
    /// or rewrapped elsewhere): for a volume moved or rewrapped on another host. The
    /// header becomes the one this host expects from then on.
    #[arg(long, global = true)]
    accept_header_from_elsewhere: bool,

    #[command(subcommand)]
    command: Sub,
}

#[derive(Debug, Subcommand)]
enum Sub {
    /// Create a volume in an empty or absent backing directory.
    Init {
        backing: PathBuf,
        /// Key-encryption key: mmk[:ID] (default mmk:default), pem:PATH, pkcs11:URI or command:PROGRAM[#VERSION].
        #[arg(long, default_value = "mmk")]
        key: String,
        /// Store file names unencrypted.
        #[arg(long)]
        plaintext_names: bool,
        /// The volume format version. Only for tests and benchmarks that compare with
        /// volumes made before format 2; new volumes should not use format 1.
        #[arg(long, hide = true, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=2))]
        format: u16,
    },
    /// Show a volume's format and protector, whether its key is reachable now, and, for
    /// a mounted volume, its live state (serving, locked or alert).
    Status {
        /// The backing directory or the mount point.
        backing: PathBuf,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
        /// Check this key instead of the one the header records.
        #[arg(long)]
        key: Option<String>,
    },
    /// Wrap the volume key under another key-encryption key; data is not touched.
    Rewrap {
        backing: PathBuf,
        /// The new key-encryption key.
        #[arg(long)]
        key: String,
        /// Unwrap with this key instead of the one the header records.
        #[arg(long)]
        current_key: Option<String>,
    },
    /// Convert an unmounted format 1 volume to format 2 (every file is rewritten;
    /// safe to interrupt: run it again to finish).
    Upgrade {
        backing: PathBuf,
        /// Unwrap with this key instead of the one the header records.
        #[arg(long)]
        key: Option<String>,
    },
    /// Check an unmounted volume offline, read-only: header, file headers and sizes,
    /// names, long-name side files, symlink targets, the backing root. XTS has no
    /// integrity, so fsck cannot detect changed ciphertext.
    #[command(after_help = crate::commands::fsck::HELP)]
    Fsck {
        backing: PathBuf,
        /// Print one JSON object (the report) instead of lines.
        #[arg(long)]
        json: bool,
        /// Also read and decrypt every file, and warn about 4 KiB units stored as zeros.
        #[arg(long)]
        contents: bool,
        /// Remove orphan long-name side files; move entries whose name or symlink
        /// target does not decrypt to BACKING/lost+found/. Loses nothing; prints each
        /// action.
        #[arg(long)]
        repair: bool,
        /// Check a mounted volume anyway (not with --repair).
        #[arg(long)]
        force: bool,
        /// Unwrap with this key instead of the one the header records.
        #[arg(long)]
        key: Option<String>,
    },
    /// Mount a volume; goes to the background once the mount is usable.
    Mount {
        backing: PathBuf,
        mountpoint: PathBuf,
        /// Stay in the foreground; SIGINT/SIGTERM unmount cleanly.
        #[arg(short, long)]
        foreground: bool,
        /// Let users other than the one mounting use the mount.
        #[arg(long)]
        allow_other: bool,
        /// Mount read-only.
        #[arg(long)]
        read_only: bool,
        /// Extra mount options, comma-separated (noatime, noexec, ...).
        #[arg(short = 'o', value_delimiter = ',')]
        options: Vec<String>,
        /// Unwrap with this key instead of the one the header records.
        #[arg(long)]
        key: Option<String>,
        /// FUSE request threads.
        #[arg(long, default_value_t = DEFAULT_THREADS, value_parser = clap::value_parser!(u16).range(1..=64))]
        threads: u16,
        /// Where the background daemon logs (default: nowhere).
        #[arg(long)]
        log_file: Option<PathBuf>,
        /// How often the key is checked (e.g. 60s, 500ms, 5m).
        #[arg(long, default_value = "60s", value_parser = parse_interval)]
        key_check_interval: Duration,
        /// The deadline of one key check; a check that overruns it has failed (default:
        /// the interval, at most 30s).
        #[arg(long, value_parser = parse_interval)]
        key_check_timeout: Option<Duration>,
        /// How long answers from the key service that are not definite (timeouts,
        /// connection errors, "unavailable") are retried, the volume still serving and
        /// "degraded", before --on-key-loss applies. Definite answers (denied, disabled,
        /// deleted, not found, wrong key) apply it at once.
        #[arg(long, default_value = "5m", value_parser = parse_grace)]
        key_unavailable_grace: Duration,
        /// On losing the key: lock (flush, forget keys, EACCES) or alert (keep serving).
        #[arg(long, value_enum, default_value_t = KeyLossArg::Lock)]
        on_key_loss: KeyLossArg,
        /// Random in-memory key, no header; BACKING must be empty and is emptied at unmount.
        #[arg(long, conflicts_with = "key")]
        ephemeral: bool,
        /// Bypass the kernel page cache for every open file: large and random I/O run
        /// faster, small sequential and repeated reads slower (docs/PERFORMANCE.md).
        /// Without it, only write-only and O_DIRECT opens bypass it.
        #[arg(long)]
        direct_io: bool,
    },
    /// Unmount a volume, waiting until its daemon has finished.
    Unmount {
        mountpoint: PathBuf,
        /// Detach now even if files are open; the daemon exits when they close.
        #[arg(long)]
        lazy: bool,
    },
    /// Manage the platform key store.
    PlatformKey {
        #[command(subcommand)]
        action: PlatformKeyCmd,
    },
    /// Print the man page (xtsfs.1) or a shell completion script, made from these
    /// definitions; scripts/install.sh installs them.
    #[command(hide = true)]
    Generate {
        #[arg(value_enum)]
        what: Generated,
    },
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum Generated {
    Man,
    Bash,
    Zsh,
    Fish,
}

/// The man page or completion script `what`, for this command line.
fn generate(what: Generated) -> Result<Vec<u8>, Error> {
    let mut command = Opts::command();
    let mut out = Vec::new();
    let shell = match what {
        Generated::Man => {
            clap_mangen::Man::new(command)
                .render(&mut out)
                .map_err(Error::io("cannot render the man page", "xtsfs.1"))?;
            return Ok(out);
        }
        Generated::Bash => clap_complete::Shell::Bash,
        Generated::Zsh => clap_complete::Shell::Zsh,
        Generated::Fish => clap_complete::Shell::Fish,
    };
    clap_complete::generate(shell, &mut command, "xtsfs", &mut out);
    Ok(out)
}

/// Options that mount(8), systemd and fstab use for themselves; xtsfs accepts and ignores
/// them (mount.fuse3 already drops some).
const MOUNT_TOOL_OPTIONS: &[&str] = &[
    "defaults", "auto", "noauto", "user", "nouser", "users", "owner", "group", "nofail", "_netdev",
    "comment",
];

/// The command line, with mount(8)'s calling form turned into `xtsfs mount`.
///
/// For a file system of type `fuse.xtsfs` (`mount -t fuse.xtsfs`, an fstab line, a
/// systemd `.mount` unit), mount(8) runs mount.fuse3, which runs
/// `xtsfs BACKING MOUNTPOINT -o OPTIONS`. Every flag of `xtsfs mount` and every global
/// flag has an `-o` spelling: its long name with `_` for `-` (`allow_other`,
/// `key_check_interval=30s`, `key=pem:/etc/xtsfs/key.pem`); `ro` is `--read-only`; the
/// generic mount flags (`noatime`, `noexec`, ...) pass through; the options of mount(8)
/// and systemd (`nofail`, `_netdev`, `x-systemd.*`, ...) are ignored. An unknown option
/// is a usage error that names it.
pub fn args(args: Vec<OsString>) -> Result<Vec<OsString>, Error> {
    let command = Opts::command();
    let is_subcommand = |arg: &OsString| {
        let arg = arg.to_string_lossy();
        arg == "help" || command.find_subcommand(arg.as_ref()).is_some()
    };
    let helper_form =
        args.len() >= 3 && !args[1].to_string_lossy().starts_with('-') && !is_subcommand(&args[1]);
    if !helper_form {
        return Ok(args);
    }
    let mut options = Vec::new();
    let mut rest = args[3..].iter();
    while let Some(arg) = rest.next() {
        let text = arg.to_string_lossy();
        match text.strip_prefix("-o") {
            Some("") => options.extend(rest.next().map(|o| o.to_string_lossy().into_owned())),
            Some(inline) => options.push(inline.to_string()),
            None => {
                return Err(Error::Usage(format!(
                    "unexpected argument '{text}': mount(8) runs xtsfs as \
                     'xtsfs BACKING MOUNTPOINT -o OPTIONS'"
                )))
            }
        }
    }
    let mount = command
        .find_subcommand("mount")
        .ok_or_else(|| Error::Usage("no mount command".into()))?;
    let (mut flags, mut passed) = (Vec::new(), Vec::new());
    for option in options.iter().flat_map(|o| o.split(',')) {
        let (name, value) = match option.split_once('=') {
            Some((name, value)) => (name, Some(value)),
            None => (option, None),
        };
        if name.is_empty() || MOUNT_TOOL_OPTIONS.contains(&name) || name.starts_with("x-") {
            continue;
        }
        if name == "ro" {
            flags.push("--read-only".to_string());
            continue;
        }
        if value.is_none() && crate::mount::mount_flag(name).is_some() {
            passed.push(name);
            continue;
        }
        let long = name.replace('_', "-");
        let arg = mount
            .get_arguments()
            .chain(command.get_arguments())
            .filter(|a| !matches!(a.get_id().as_str(), "foreground" | "options" | "help"))
            .find(|a| a.get_long() == Some(long.as_str()))
            .ok_or_else(|| {
                Error::Usage(format!(
                    "unknown mount option '{name}' (every flag of 'xtsfs mount' is an option: \
                     --key-check-interval is key_check_interval=...; see xtsfs mount --help)"
                ))
            })?;
        match (arg.get_action().takes_values(), value) {
            (true, Some(value)) => flags.push(format!("--{long}={value}")),
            (false, None) => flags.push(format!("--{long}")),
            (true, None) => {
                return Err(Error::Usage(format!(
                    "mount option '{name}' needs a value ({name}=...)"
                )))
            }
            (false, Some(_)) => {
                return Err(Error::Usage(format!(
                    "mount option '{name}' takes no value"
                )))
            }
        }
    }
    let mut translated = vec![
        args[0].clone(),
        "mount".into(),
        args[1].clone(),
        args[2].clone(),
    ];
    translated.extend(flags.into_iter().map(OsString::from));
    if !passed.is_empty() {
        translated.push("-o".into());
        translated.push(passed.join(",").into());
    }
    Ok(translated)
}

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
enum KeyLossArg {
    Lock,
    Alert,
}

/// `-o` options of `xtsfs mount`: generic mount flags only (noatime, noexec, ...); `ro`
/// is --read-only.
fn checked_mount_options(options: Vec<String>) -> Result<Vec<String>, Error> {
    match options
        .iter()
        .find(|o| crate::mount::mount_flag(o).is_none())
    {
        Some(unknown) => Err(Error::Usage(format!(
            "unknown mount option '{unknown}' (-o takes generic mount flags: noatime, \
             nodiratime, noexec, sync, dirsync, ro, rw, ...)"
        ))),
        None => Ok(options),
    }
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    let interval = humantime::parse_duration(text).map_err(|e| e.to_string())?;
    if interval < Duration::from_millis(50) {
        return Err("the key check interval must be at least 50ms".into());
    }
    Ok(interval)
}

fn parse_grace(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text)
        .map_err(|e| format!("{e} (give a duration such as 5m, 90s or 0s)"))
}

#[derive(Debug, Subcommand)]
enum PlatformKeyCmd {
    /// Create version 1 of a new platform key.
    Create { id: String },
    /// List platform keys and their versions.
    List,
    /// Add a new version of a platform key; old versions are kept.
    Rotate { id: String },
}

impl Opts {
    pub fn into_config(self) -> Result<Config, Error> {
        let mut keys = KeyContext::new(self.platform_key_dir, &self.trusted_key_dir);
        if let Some(dir) = self.host_state_dir {
            keys.host_state_dir = dir;
        }
        if let Some(pin) = self.pkcs11_pin_source {
            let path = pin
                .to_str()
                .and_then(|p| {
                    p.strip_prefix("file://")
                        .or_else(|| p.strip_prefix("file:"))
                })
                .map(PathBuf::from)
                .unwrap_or(pin);
            if !path.is_absolute() {
                return Err(Error::Usage(format!(
                    "--pkcs11-pin-source '{}' must be an absolute path",
                    path.display()
                )));
            }
            keys.pkcs11_pin_source = Some(path);
        }
        keys.accept_header_from_elsewhere = self.accept_header_from_elsewhere;
        let settings = Settings {
            keys,
            audit_log: self.audit_log,
            run_dir: self.run_dir,
        };
        let parse_key = |text: &str| KeyRef::parse(text).map_err(|e| Error::Usage(e.to_string()));
        let parse_opt = |text: Option<String>| text.as_deref().map(parse_key).transpose();
        let command = match self.command {
            Sub::Init {
                backing,
                key,
                plaintext_names,
                format,
            } => Command::Init(InitConfig {
                backing,
                key: parse_key(&key)?,
                encrypt_names: !plaintext_names,
                format: VolumeFormat::from_version(format)
                    .ok_or_else(|| Error::Usage(format!("no volume format {format}")))?,
            }),
            Sub::Status { backing, json, key } => Command::Status(StatusConfig {
                backing,
                json,
                key: parse_opt(key)?,
            }),
            Sub::Rewrap {
                backing,
                key,
                current_key,
            } => Command::Rewrap(RewrapConfig {
                backing,
                key: parse_key(&key)?,
                current_key: parse_opt(current_key)?,
            }),
            Sub::Upgrade { backing, key } => Command::Upgrade(UpgradeConfig {
                backing,
                key: parse_opt(key)?,
            }),
            Sub::Fsck {
                backing,
                json,
                contents,
                repair,
                force,
                key,
            } => Command::Fsck(FsckConfig {
                backing,
                json,
                options: crate::commands::fsck::FsckOptions {
                    contents,
                    repair,
                    force,
                },
                key: parse_opt(key)?,
            }),
            Sub::Mount {
                backing,
                mountpoint,
                foreground,
                allow_other,
                read_only,
                options,
                key,
                threads,
                log_file,
                key_check_interval,
                key_check_timeout,
                key_unavailable_grace,
                on_key_loss,
                ephemeral,
                direct_io,
            } => Command::Mount(MountConfig {
                read_only: read_only || options.iter().any(|o| o == "ro"),
                options: checked_mount_options(options)?,
                backing,
                mountpoint,
                foreground,
                allow_other,
                key: parse_opt(key)?,
                threads: threads.into(),
                log_file,
                key_check_interval,
                key_check_timeout,
                key_unavailable_grace,
                on_key_loss: match on_key_loss {
                    KeyLossArg::Lock => OnKeyLoss::Lock,
                    KeyLossArg::Alert => OnKeyLoss::Alert,
                },
                ephemeral,
                direct_io,
            }),
            Sub::Unmount { mountpoint, lazy } => {
                Command::Unmount(UnmountConfig { mountpoint, lazy })
            }
            Sub::PlatformKey { action } => Command::PlatformKey(match action {
                PlatformKeyCmd::Create { id } => PlatformKeyAction::Create(id),
                PlatformKeyCmd::List => PlatformKeyAction::List,
                PlatformKeyCmd::Rotate { id } => PlatformKeyAction::Rotate(id),
            }),
            Sub::Generate { what } => Command::Print(generate(what)?),
        };
        Ok(Config {
            verbosity: self.verbose,
            settings,
            command,
        })
    }
}
