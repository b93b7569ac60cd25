//! The crate's error type, what to tell the user about each error, and exit codes.

use std::path::PathBuf;

pub use crate::io_error::{io_error, IoError};
use crate::keys::KeyError;

/// Process exit codes, documented in `xtsfs --help`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    Success = 0,
    /// An error not covered below (I/O, the backing file system).
    Failure = 1,
    /// The command line was wrong.
    Usage = 2,
    /// A key could not be found, read, used, or was the wrong one.
    Key = 3,
    /// The backing directory is not a usable volume (no header, corrupt header, not empty).
    Volume = 4,
    /// Mounting or unmounting failed.
    Mount = 5,
}

impl ExitCode {
    /// Every exit code, in order: the one list the help text and the decoding use.
    pub const ALL: [ExitCode; 6] = [
        ExitCode::Success,
        ExitCode::Failure,
        ExitCode::Usage,
        ExitCode::Key,
        ExitCode::Volume,
        ExitCode::Mount,
    ];

    /// What the code means, for `xtsfs --help`.
    pub fn meaning(self) -> &'static str {
        match self {
            ExitCode::Success => "success",
            ExitCode::Failure => "other failure (I/O)",
            ExitCode::Usage => "usage error",
            ExitCode::Key => "key error (missing, unreadable, unsupported, wrong or denied key)",
            ExitCode::Volume => "volume error (not a volume, corrupt header, backing not empty)",
            ExitCode::Mount => "mount or unmount failed",
        }
    }

    /// The exit code whose number is `code`.
    pub fn from_code(code: u8) -> Option<ExitCode> {
        Self::ALL.into_iter().find(|c| *c as u8 == code)
    }

    /// "Exit codes: 0 success, 1 ...", made from [`ExitCode::ALL`].
    pub fn help() -> String {
        let codes: Vec<String> = Self::ALL
            .iter()
            .map(|c| format!("{} {}", *c as u8, c.meaning()))
            .collect();
        format!("Exit codes: {}.", codes.join(", "))
    }
}

/// What is wrong with a volume header (`xtsfs.header`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    #[error("the header is {0} bytes long, too short to be an xtsfs header")]
    Truncated(usize),
    #[error("the header does not start with the xtsfs magic")]
    BadMagic,
    #[error(
        "header format version {0} is not supported by this xtsfs (it reads versions 1 and 2)"
    )]
    Version(u16),
    #[error("the header's length field says {declared} body bytes but the file holds {actual}")]
    Length { declared: usize, actual: usize },
    #[error("the header body is not valid: {0}")]
    Body(String),
    #[error("the header was modified or damaged: its MAC does not verify under the volume key")]
    Mac,
}

/// Why `xtsfs upgrade` stopped.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// Files it cannot convert: the run changed nothing.
    #[error("{}", damaged_list(.files))]
    Damaged {
        backing: PathBuf,
        /// Each file's backing path and what is wrong with it.
        files: Vec<(PathBuf, String)>,
    },
    /// A file is not what the index found: something wrote the backing tree during the run.
    #[error("the backing file {} changed while the upgrade ran", .0.display())]
    Changed(PathBuf),
}

/// Damaged files listed in [`UpgradeError::Damaged`]; the rest are counted.
const MAX_LISTED: usize = 10;

fn damaged_list(files: &[(PathBuf, String)]) -> String {
    let mut message = match files.len() {
        1 => "1 file cannot be upgraded:".to_string(),
        n => format!("{n} files cannot be upgraded:"),
    };
    for (path, problem) in files.iter().take(MAX_LISTED) {
        message.push_str(&format!("\n  {}: {problem}", path.display()));
    }
    if files.len() > MAX_LISTED {
        message.push_str(&format!("\n  and {} more", files.len() - MAX_LISTED));
    }
    message
}

impl UpgradeError {
    fn exit_code(&self) -> ExitCode {
        match self {
            UpgradeError::Damaged { .. } => ExitCode::Volume,
            UpgradeError::Changed(_) => ExitCode::Failure,
        }
    }

    fn hint(&self) -> String {
        match self {
            UpgradeError::Damaged { backing, .. } => format!(
                "this run changed nothing and the volume stays format 1: it mounts and reads as \
                 before. Restore these files from a backup or delete them (through the mount, or \
                 their backing files), then run xtsfs upgrade {} again",
                backing.display()
            ),
            UpgradeError::Changed(_) => "nothing may write the backing directory during an \
                                         upgrade; run xtsfs upgrade again to finish the job"
                .into(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("'{0}' is not an xtsfs volume (it has no xtsfs.header)")]
    NotAVolume(PathBuf),
    #[error("'{0}' is not empty")]
    NotEmpty(PathBuf),
    #[error("corrupt volume header '{path}': {source}")]
    Header { path: PathBuf, source: HeaderError },
    /// A header this host will not use: older than the last one it saw of the volume, or
    /// changed without a rewrap on this host.
    #[error("refusing the header of volume {volume_id}: {detail}")]
    HeaderRefused {
        volume_id: String,
        detail: String,
        /// Refused by the key check of a running mount, which accepts nothing from
        /// elsewhere.
        running: bool,
        /// The host's record of the volume.
        record: PathBuf,
    },
    #[error("{0}")]
    Mount(String),
    #[error(transparent)]
    Upgrade(#[from] UpgradeError),
    /// An error already turned into text, with its exit code and hint: one the background
    /// mount daemon reported before it was ready, or one [`crate::commands::run`] made
    /// printable for the terminal.
    #[error("{message}")]
    Rendered {
        code: ExitCode,
        message: String,
        hint: Option<String>,
    },
    #[error(transparent)]
    Io(#[from] IoError),
}

impl Error {
    /// [`io_error`] where an [`Error`] is needed without `?`.
    pub fn io<E: Into<std::io::Error>>(
        context: impl Into<String>,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(E) -> Error {
        let io = io_error(context, path);
        move |source| Error::Io(io(source))
    }

    pub fn exit_code(&self) -> ExitCode {
        match self {
            // A malformed key reference is a usage error wherever it is caught.
            Error::Usage(_) | Error::Key(KeyError::InvalidRef(_)) => ExitCode::Usage,
            Error::Key(_) => ExitCode::Key,
            Error::NotAVolume(_)
            | Error::NotEmpty(_)
            | Error::Header { .. }
            | Error::HeaderRefused { .. } => ExitCode::Volume,
            Error::Mount(_) => ExitCode::Mount,
            Error::Upgrade(e) => e.exit_code(),
            Error::Rendered { code, .. } => *code,
            Error::Io { .. } => ExitCode::Failure,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Usage(_) => Some("see xtsfs --help".into()),
            Error::Key(e) => Some(e.hint()),
            Error::NotAVolume(_) => Some("create one with xtsfs init, or check the path".into()),
            Error::NotEmpty(_) => {
                Some("init needs an empty or absent directory; pick another path".into())
            }
            Error::Header {
                source: HeaderError::Mac,
                ..
            } => Some(
                "restore xtsfs.header from a backup; do not trust this volume's metadata".into(),
            ),
            Error::Header { .. } => Some(
                "restore xtsfs.header from a backup, or use an xtsfs that reads this format".into(),
            ),
            Error::HeaderRefused { running: true, .. } => Some(
                "a running mount accepts only headers written by itself or by xtsfs rewrap on this host: put back the current xtsfs.header; to take a header from elsewhere, unmount and mount with --accept-header-from-elsewhere".into(),
            ),
            Error::HeaderRefused { record, .. } => Some(format!(
                "if someone put an old or foreign header back, restore the current xtsfs.header. If the header is legitimate (the volume was rewrapped on another host, or moved here from one), accept it once with --accept-header-from-elsewhere (mount, rewrap or status), or rewrap on this host; key changes made with xtsfs rewrap on this host are always accepted. The host's record is '{}'",
                record.display()
            )),
            Error::Mount(_) => None,
            Error::Upgrade(e) => Some(e.hint()),
            Error::Rendered { hint, .. } => hint.clone(),
            Error::Io(e) if e.source.raw_os_error() == Some(libc::ENOSPC) => {
                Some("the backing file system is full: free space, then retry".into())
            }
            Error::Io { .. } => None,
        }
    }
}

/// `text` with every control character (terminal escapes, newlines) shown escaped: what
/// comes from a header, a KMS or the backing directory never drives the terminal.
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
