//! What fsck reports: findings with their severity and kind, the report of a run and
//! its exit code, the events a progress bar follows, and the report as text or JSON.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Serialize, Serializer};

/// Exit code: fsck found problems (and `--repair` was not given).
pub const EXIT_PROBLEMS: u8 = 10;
/// Exit code: `--repair` ran and problems it does not repair are left.
pub const EXIT_PROBLEMS_LEFT: u8 = 11;

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Damage: the mount cannot show or read something, or shows it wrong.
    Problem,
    /// Possibly damage, possibly legitimate.
    Warning,
    /// A legal state worth knowing about.
    Note,
}

impl Severity {
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Problem => "problem",
            Severity::Warning => "warning",
            Severity::Note => "note",
        }
    }
}

/// Every kind of finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// The protector's recorded key reference does not parse or names another kind.
    BadProtector,
    /// Something in the backing root that xtsfs does not put there.
    UnknownRootEntry,
    /// A transient file of an interrupted header rewrite or upgrade.
    LeftoverTempFile,
    /// `lost+found` holds entries an earlier repair moved there.
    LostFound,
    /// `force`: the volume was checked while mounted.
    CheckedWhileMounted,
    /// A name that does not decrypt.
    UndecryptableName,
    /// A name that decrypts but is not what encrypting its plaintext gives.
    NonCanonicalName,
    /// Two entries of a directory decrypt to the same name.
    DuplicateName,
    /// A hashed long name without its side file.
    MissingSideFile,
    /// A long name's side file that does not match its entry's hash or does not decrypt.
    BadSideFile,
    /// A side file whose entry is gone.
    OrphanSideFile,
    /// A symlink whose target does not decrypt.
    UndecryptableSymlink,
    /// A file header that is damaged (magic, version, reserved bytes, key generation,
    /// shorter than 32 bytes).
    BadFileHeader,
    /// A format 1 file in a format 2 volume.
    WrongFileFormat,
    /// A backing length that is no plaintext length's in the file's format.
    BadFileLength,
    /// Format 2: a file whose header a crash lost before it was synced; reads as zeros.
    LostFileHeader,
    /// Format 2 files in a format 1 volume: an upgrade was interrupted.
    InterruptedUpgrade,
    /// `contents`: 4 KiB units inside the length that are stored as zeros.
    ZeroUnits,
    /// A file or directory that could not be read.
    ReadError,
}

impl Kind {
    pub fn severity(self) -> Severity {
        match self {
            Kind::LeftoverTempFile
            | Kind::LostFound
            | Kind::CheckedWhileMounted
            | Kind::LostFileHeader
            | Kind::InterruptedUpgrade => Severity::Note,
            Kind::ZeroUnits => Severity::Warning,
            _ => Severity::Problem,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::BadProtector => "bad-protector",
            Kind::UnknownRootEntry => "unknown-root-entry",
            Kind::LeftoverTempFile => "leftover-temp-file",
            Kind::LostFound => "lost-found",
            Kind::CheckedWhileMounted => "checked-while-mounted",
            Kind::UndecryptableName => "undecryptable-name",
            Kind::NonCanonicalName => "non-canonical-name",
            Kind::DuplicateName => "duplicate-name",
            Kind::MissingSideFile => "missing-side-file",
            Kind::BadSideFile => "bad-side-file",
            Kind::OrphanSideFile => "orphan-side-file",
            Kind::UndecryptableSymlink => "undecryptable-symlink",
            Kind::BadFileHeader => "bad-file-header",
            Kind::WrongFileFormat => "wrong-file-format",
            Kind::BadFileLength => "bad-file-length",
            Kind::LostFileHeader => "lost-file-header",
            Kind::InterruptedUpgrade => "interrupted-upgrade",
            Kind::ZeroUnits => "zero-units",
            Kind::ReadError => "read-error",
        }
    }

    /// Whether `repair` has an action for it.
    pub(super) fn repairable(self) -> bool {
        matches!(
            self,
            Kind::UndecryptableName
                | Kind::MissingSideFile
                | Kind::BadSideFile
                | Kind::OrphanSideFile
                | Kind::UndecryptableSymlink
        )
    }
}

/// One thing fsck found.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub kind: Kind,
    /// The backing entry.
    #[serde(serialize_with = "escaped_path")]
    pub backing_path: PathBuf,
    /// The entry's path through the mount ("/dir/name"), when every name on the way
    /// decrypts.
    #[serde(serialize_with = "escaped_opt")]
    pub plaintext_path: Option<PathBuf>,
    /// For an entry whose own name is lost: the plaintext path of its directory.
    #[serde(serialize_with = "escaped_opt")]
    pub plaintext_dir: Option<PathBuf>,
    pub detail: String,
    /// What `repair` did about it.
    pub repaired: Option<String>,
    /// What `repair` would act on.
    #[serde(skip)]
    pub(super) target: Option<Target>,
}

/// A backing entry, for repair: its directory (index into the walk's directories, or
/// `None` for the backing root) and its name.
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub(super) dir: usize,
    pub(super) name: OsString,
    /// A long name's side file, moved with it.
    pub(super) side_file: Option<OsString>,
}

/// What a run found and did.
#[derive(Debug, Clone, Serialize)]
pub struct FsckReport {
    pub volume_id: String,
    #[serde(serialize_with = "escaped_path")]
    pub backing: PathBuf,
    pub format_version: u16,
    pub epoch: Option<u64>,
    pub names: String,
    pub protector: String,
    /// Checked while mounted (`force`).
    pub mounted: bool,
    pub contents_checked: bool,
    pub repair: bool,
    /// Regular files (inodes) checked.
    pub files: u64,
    pub directories: u64,
    pub symlinks: u64,
    /// FIFOs, sockets and devices.
    pub special: u64,
    /// Plaintext bytes in the files checked (decrypted, with `contents`).
    pub bytes: u64,
    #[serde(serialize_with = "seconds")]
    pub elapsed: Duration,
    pub files_per_second: f64,
    pub problems: usize,
    pub warnings: usize,
    pub notes: usize,
    pub repaired: usize,
    pub problems_left: usize,
    pub exit_code: u8,
    pub findings: Vec<Finding>,
}

impl FsckReport {
    /// 0 clean, [`EXIT_PROBLEMS`] or [`EXIT_PROBLEMS_LEFT`].
    fn compute_exit_code(&self) -> u8 {
        match (self.problems_left, self.repair) {
            (0, _) => 0,
            (_, false) => EXIT_PROBLEMS,
            (_, true) => EXIT_PROBLEMS_LEFT,
        }
    }

    pub(super) fn tally(&mut self) {
        let count = |s: Severity| self.findings.iter().filter(|f| f.severity == s).count();
        self.problems = count(Severity::Problem);
        self.warnings = count(Severity::Warning);
        self.notes = count(Severity::Note);
        self.repaired = self
            .findings
            .iter()
            .filter(|f| f.repaired.is_some())
            .count();
        self.problems_left = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Problem && f.repaired.is_none())
            .count();
        let secs = self.elapsed.as_secs_f64();
        self.files_per_second = if secs > 0.0 {
            (self.files as f64 / secs).round()
        } else {
            0.0
        };
        self.exit_code = self.compute_exit_code();
    }
}

/// What a run reports as it goes, for a progress bar.
#[derive(Debug, Clone, Copy)]
pub enum FsckEvent {
    /// The walk has seen `entries` more backing entries.
    Scanned { entries: u64 },
    /// The walk is done: `files` regular files to check, of `bytes` backing bytes
    /// (known with `contents` only).
    Planned { files: u64, bytes: Option<u64> },
    /// `bytes` more bytes of the current file were decrypted (`contents`).
    Bytes { bytes: u64 },
    /// A file is checked; `bytes` is its plaintext length (`contents`: already reported
    /// by [`FsckEvent::Bytes`]).
    File { bytes: u64 },
}

/// A path as one printable line: bytes that are not printable UTF-8 (control
/// characters, invalid UTF-8) and backslashes are written as `\xNN`.
pub fn escape(path: &Path) -> String {
    let bytes = path.as_os_str().as_bytes();
    let mut out = String::with_capacity(bytes.len());
    for chunk in bytes.utf8_chunks() {
        for c in chunk.valid().chars() {
            if c.is_control() || c == '\\' {
                let mut utf8 = [0u8; 4];
                for b in c.encode_utf8(&mut utf8).bytes() {
                    let _ = write!(out, "\\x{b:02x}");
                }
            } else {
                out.push(c);
            }
        }
        for b in chunk.invalid() {
            let _ = write!(out, "\\x{b:02x}");
        }
    }
    out
}

fn escaped_path<S: Serializer>(path: &Path, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&escape(path))
}

fn escaped_opt<S: Serializer>(path: &Option<PathBuf>, s: S) -> Result<S::Ok, S::Error> {
    match path {
        Some(path) => s.serialize_str(&escape(path)),
        None => s.serialize_none(),
    }
}

fn seconds<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// One line for a finding: `SEVERITY: KIND: BACKING [= PLAINTEXT | in DIR]: DETAIL`.
pub fn finding_line(f: &Finding) -> String {
    let mut line = format!(
        "{}: {}: {}",
        f.severity.as_str(),
        f.kind.as_str(),
        escape(&f.backing_path)
    );
    if let Some(plain) = &f.plaintext_path {
        let _ = write!(line, " = {}", escape(plain));
    } else if let Some(dir) = &f.plaintext_dir {
        let _ = write!(line, " in {}", escape(dir));
    }
    let _ = write!(line, ": {}", f.detail);
    line
}

/// The report as text: a line per finding, a line per repair, a summary.
pub fn render(report: &FsckReport) -> String {
    let mut out = String::new();
    for f in &report.findings {
        out.push_str(&finding_line(f));
        out.push('\n');
    }
    for f in &report.findings {
        if let Some(action) = &f.repaired {
            let _ = writeln!(out, "repaired: {}: {}", escape(&f.backing_path), action);
        }
    }
    let epoch = report
        .epoch
        .map(|e| format!(", header epoch {e}"))
        .unwrap_or_default();
    let _ = writeln!(
        out,
        "volume {} in {}: format {}{epoch}, {}, {}; header MAC verified",
        report.volume_id,
        escape(&report.backing),
        report.format_version,
        report.protector,
        report.names,
    );
    let what = if report.contents_checked {
        "decrypted"
    } else {
        "headers checked"
    };
    let _ = writeln!(
        out,
        "checked {} files ({} {what}), {} directories, {} symlinks, {} other in {:.2?} \
         ({} files/s)",
        report.files,
        indicatif::BinaryBytes(report.bytes),
        report.directories,
        report.symlinks,
        report.special,
        report.elapsed,
        report.files_per_second,
    );
    let verdict = match report.exit_code {
        0 if report.repaired > 0 => "clean after repair",
        0 => "clean",
        EXIT_PROBLEMS => "PROBLEMS FOUND",
        _ => "PROBLEMS LEFT after repair",
    };
    let _ = write!(
        out,
        "{verdict}: {} problems, {} warnings, {} notes",
        report.problems, report.warnings, report.notes
    );
    if report.repair {
        let _ = write!(
            out,
            "; {} repaired, {} problems left",
            report.repaired, report.problems_left
        );
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn escape_keeps_one_line() {
        assert_eq!(escape(Path::new("/a b/c")), "/a b/c");
        assert_eq!(escape(Path::new("a\nb\\c")), "a\\x0ab\\x5cc");
        assert_eq!(escape(Path::new(OsStr::from_bytes(b"x\xffy"))), "x\\xffy");
        assert_eq!(escape(Path::new("é")), "é");
    }

    #[test]
    fn kinds_serialize_as_their_names() {
        for kind in [
            Kind::OrphanSideFile,
            Kind::UnknownRootEntry,
            Kind::ZeroUnits,
        ] {
            assert_eq!(
                serde_json::to_value(kind).unwrap(),
                serde_json::Value::String(kind.as_str().into())
            );
        }
    }
}
