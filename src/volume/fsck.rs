//! `xtsfs fsck`: an offline, read-only verifier of a volume's structure.
//!
//! A run:
//!
//! 1. Takes the lock a mounted daemon holds on the backing directory, without waiting,
//!    as `xtsfs upgrade` does ([`super::upgrade`]): a mounted volume is refused, unless
//!    `force` (then it is checked without the lock, and changes in flight may show as
//!    problems; `repair` is never allowed on a mounted volume). It takes no header lock
//!    and writes nothing unless `repair`.
//! 2. Unlocks the volume: the header parses (magic, version, length, body, an epoch in
//!    a format 2 header and none in a format 1 header), the DEK unwraps under the key
//!    the protector records (or the one given), and the header MAC verifies. An error
//!    here is returned as the error it is for every other command (a key error, a
//!    corrupt header), not as a finding. The protector's key reference must parse and
//!    name a key of the protector's kind.
//! 3. Lists the backing root: `xtsfs.header`, `xtsfs.lock`, `tree/`, `lost+found/` and
//!    the transient `xtsfs.header.tmp` and `xtsfs.upgrade.tmp` are known; anything else
//!    is a problem.
//! 4. Walks the tree, never following a symlink (every directory is opened from the
//!    tree one component at a time with `O_NOFOLLOW`). Each name must decrypt, be
//!    canonical (encrypting the plaintext name again gives the stored name) and be
//!    unique in its directory after decryption. A hashed long name needs its side file,
//!    whose contents must hash to the entry's name and decrypt; a side file without its
//!    entry is an orphan. A symlink's target must decrypt. A directory whose name does
//!    not decrypt is not entered, and a file whose name does not decrypt is not read:
//!    nothing of them is reachable through the mount, and the name is the problem.
//!    (With AES-SIV and strict base64 a name that decrypts is always canonical and
//!    unique; both are checked anyway, since the mount could not look such a name up.)
//! 5. Checks each regular file once (hard links by inode), on several threads (the
//!    work is mostly waiting for the disk): its header (magic, version,
//!    reserved bytes, key generation), that its version belongs in the volume (a format
//!    1 file in a format 2 volume is a problem; format 2 files in a format 1 volume are
//!    what an interrupted upgrade leaves, a note), and that its backing length is the
//!    length of some plaintext in its format. A format 2 file whose 32 header bytes are
//!    zero and whose length is valid lost its header in a crash before it was synced:
//!    it reads as zeros, legally (a note). With `contents`, every file is read and
//!    decrypted in full, and 4 KiB units inside the length whose stored bytes are all
//!    zero (they read as holes) are a warning: sparse files have them legitimately,
//!    but zeroing ciphertext is also how someone who can write the backing directory
//!    erases data without a key.
//!
//! XTS has no integrity: changed ciphertext decrypts to other plaintext without any
//! error, so fsck cannot tell a tampered or rotted block from a good one.
//!
//! `repair` takes only actions that lose nothing, and reports each one: it removes
//! orphan side files (they hold only the encrypted name of an entry that is gone) and
//! moves entries that the mount cannot show — names that do not decrypt, long names
//! without a valid side file, symlinks whose target does not decrypt — into
//! `BACKING/lost+found/`, never overwriting (a numbered suffix keeps names unique), so
//! the user can look at them and delete them. Files whose name decrypts stay where they
//! are whatever their contents: the mount shows them (reading a damaged one fails with
//! EIO) and the user decides.

use std::collections::{HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Mutex};
use std::time::{Duration, Instant};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::{Serialize, Serializer};
use sha2::{Digest, Sha256};

use super::file_header::FileFormat;
use super::header::VolumeFormat;
use super::upgrade::{
    cname, cvt, fstat, is_zero, list_dir_typed, lock_offline, open_at, open_dir, open_dir_in,
    open_read, stat_at, sync_dir, unlink_at, DIR_FLAGS, UPGRADE_TMP,
};
use super::{unlock, UnlockedVolume, HEADER_FILE, HEADER_LOCK, HEADER_TMP, TREE_DIR};
use crate::crypto::names::{
    BackingEntry, BackingName, NameCipher, LONG_NAME_PREFIX, LONG_NAME_SIDE_SUFFIX,
};
use crate::crypto::DATA_UNIT;
use crate::error::Error;
use crate::fs::contents::{self, Contents, HeaderProblem};
use crate::keys::{KeyContext, KeyRef};

/// Where `repair` moves entries the mount cannot show, in the backing root.
pub const LOST_FOUND: &str = "lost+found";

/// Exit code: fsck found problems (and `--repair` was not given).
pub const EXIT_PROBLEMS: u8 = 10;
/// Exit code: `--repair` ran and problems it does not repair are left.
pub const EXIT_PROBLEMS_LEFT: u8 = 11;

/// What `xtsfs fsck --help` says after the options.
pub const HELP: &str = "\
What fsck cannot see: XTS has no integrity. Ciphertext that someone changed, rolled back or \
swapped, or that the disk corrupted, decrypts to other bytes without any error, so fsck \
cannot detect it. It checks the structure: the header (MAC, epoch, protector), every file \
header, version and size, every name and long-name side file, every symlink target, and \
the backing root. --contents also decrypts every file and warns about 4 KiB units that \
read as all-zero holes inside a file (sparse files have them legitimately).

--repair only takes actions that lose nothing, and prints each: it removes orphan \
long-name side files and moves entries whose name or symlink target does not decrypt to \
BACKING/lost+found/ (never overwriting). It refuses a mounted volume even with --force.

Output: one line per finding, `SEVERITY: KIND: BACKING-PATH [= PLAINTEXT-PATH | in \
PLAINTEXT-DIR]: DETAIL`, then a summary; --json prints one JSON object instead. Problems \
set the exit code; warnings and notes do not.

Exit codes: 0 clean (no problems; or --repair repaired every problem it found), \
10 problems found, 11 problems left after --repair, 1 other failure (I/O), 2 usage error, \
3 key error (missing, unreadable, wrong or denied key), 4 volume error (not a volume, \
corrupt or tampered header), 5 the volume is mounted (without --force; always with --repair).";

/// Reads of `--contents`, in plaintext bytes.
const CHUNK: usize = 1 << 20;
/// How many entries the walk reports at once.
const SCAN_REPORT: u64 = 1024;
/// Longest side file read; a real one is at most 342 bytes.
const SIDE_FILE_MAX: u64 = 4096;

#[derive(Debug, Clone, Copy, Default)]
pub struct FsckOptions {
    /// Decrypt every file and report all-zero units.
    pub contents: bool,
    /// Remove orphan side files, move undecryptable entries to `lost+found`.
    pub repair: bool,
    /// Check a mounted volume (without `repair`).
    pub force: bool,
}

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
    fn repairable(self) -> bool {
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
    target: Option<Target>,
}

/// A backing entry, for repair: its directory (index into the walk's directories, or
/// `None` for the backing root) and its name.
#[derive(Debug, Clone)]
struct Target {
    dir: usize,
    name: OsString,
    /// A long name's side file, moved with it.
    side_file: Option<OsString>,
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

    fn tally(&mut self) {
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

/// Checks the volume in `backing`; see the module documentation. `key` unwraps the DEK
/// instead of the key the header records.
pub fn fsck(
    backing: &Path,
    ctx: &KeyContext,
    key: Option<&KeyRef>,
    options: FsckOptions,
    progress: &mut dyn FnMut(FsckEvent),
) -> Result<FsckReport, Error> {
    let started = Instant::now();
    // The lock lives as long as this fd.
    let backing_dir = open_dir(backing)?;
    let mounted = match lock_offline(&backing_dir, backing) {
        Ok(()) => false,
        Err(Error::Mount(message)) if options.force && !options.repair => {
            tracing::info!("{message}; checking anyway (--force)");
            true
        }
        Err(Error::Mount(message)) if options.force => {
            return Err(Error::Mount(format!(
                "{message}; --repair never runs on a mounted volume, even with --force"
            )))
        }
        Err(Error::Mount(message)) => {
            return Err(Error::Mount(format!(
                "{message}, or check it mounted with --force"
            )))
        }
        Err(e) => return Err(e),
    };
    let volume = unlock(backing, ctx, key)?;
    let names = name_cipher(&volume);
    let mut run = Run {
        volume: &volume,
        names,
        options,
        backing: backing.to_path_buf(),
        tree_path: backing.join(TREE_DIR),
        dirs: vec![DirInfo {
            relative: PathBuf::new(),
            plaintext: Some(PathBuf::from("/")),
        }],
        files: Vec::new(),
        findings: Vec::new(),
        report: FsckReport {
            volume_id: volume.header.volume_id.clone(),
            backing: backing.to_path_buf(),
            format_version: volume.header.format.version(),
            epoch: volume.header.epoch,
            names: volume.header.names.clone(),
            protector: volume.header.protector.key.to_string(),
            mounted,
            contents_checked: options.contents,
            repair: options.repair,
            files: 0,
            directories: 0,
            symlinks: 0,
            special: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
            files_per_second: 0.0,
            problems: 0,
            warnings: 0,
            notes: 0,
            repaired: 0,
            problems_left: 0,
            exit_code: 0,
            findings: Vec::new(),
        },
        upgraded_files: 0,
        scanned: 0,
    };
    if mounted {
        run.note_root(
            Kind::CheckedWhileMounted,
            backing,
            "the volume is mounted and was checked without its lock (--force): files \
             changing meanwhile can show as problems",
        );
    }
    run.check_protector(key.is_some());
    run.check_root(backing_dir.as_fd())?;
    match open_at(backing_dir.as_fd(), OsStr::new(TREE_DIR), DIR_FLAGS, 0) {
        Ok(tree) => {
            run.walk(tree.as_fd(), progress)?;
            run.check_files(tree.as_fd(), progress)?;
            if run.upgraded_files > 0 {
                let detail = format!(
                    "{} format 2 files in a format 1 volume: an upgrade was interrupted; \
                     run xtsfs upgrade {} to finish it",
                    run.upgraded_files,
                    backing.display()
                );
                run.note_root(Kind::InterruptedUpgrade, &run.tree_path.clone(), &detail);
            }
            if options.repair {
                run.repair(backing_dir.as_fd(), tree.as_fd())?;
            }
        }
        Err(e) => {
            // Without a tree there is nothing to walk; the volume does not mount.
            run.findings.push(Finding {
                severity: Severity::Problem,
                kind: Kind::ReadError,
                backing_path: run.tree_path.clone(),
                plaintext_path: Some("/".into()),
                plaintext_dir: None,
                detail: format!("the volume's tree cannot be opened: {e}"),
                repaired: None,
                target: None,
            });
        }
    }
    let mut report = run.report;
    report.findings = run.findings;
    report
        .findings
        .sort_by(|a, b| (a.severity, &a.backing_path).cmp(&(b.severity, &b.backing_path)));
    report.elapsed = started.elapsed();
    report.tally();
    Ok(report)
}

struct DirInfo {
    /// Relative to the tree.
    relative: PathBuf,
    /// Through the mount; `None` below a name that does not decrypt.
    plaintext: Option<PathBuf>,
}

struct FileJob {
    dir: usize,
    name: OsString,
    plaintext: Option<PathBuf>,
    /// Backing length from the walk (`contents` only; for the progress bar).
    size: u64,
}

struct Run<'a> {
    volume: &'a UnlockedVolume,
    names: NameCipher,
    options: FsckOptions,
    backing: PathBuf,
    tree_path: PathBuf,
    dirs: Vec<DirInfo>,
    files: Vec<FileJob>,
    findings: Vec<Finding>,
    report: FsckReport,
    /// Format 2 files in a format 1 volume.
    upgraded_files: u64,
    /// Entries seen and not yet reported.
    scanned: u64,
}

/// What the threads of a run share, read-only.
struct Checker<'a> {
    volume: &'a UnlockedVolume,
    options: FsckOptions,
    tree_path: &'a Path,
    dirs: &'a [DirInfo],
}

/// What a backing name turned out to be.
enum NameOutcome {
    /// A direct name, decrypted.
    Named(OsString),
    /// A direct name that decrypts but is not stored as its plaintext encrypts.
    NonCanonical(OsString, String),
    /// A long name, decrypted from its side file.
    Long(OsString),
    /// A long name whose side file is bad.
    BadSide {
        side: OsString,
        why: String,
    },
    /// A long name without a side file.
    MissingSide(OsString),
    Undecryptable(String),
}

/// One file checked, for the thread that gathers the results.
enum FileMessage {
    /// `contents`: bytes of the current file decrypted.
    Bytes(u64),
    Done(FileOutcome),
}

#[derive(Default)]
struct FileOutcome {
    /// A regular file seen for the first time (not under another name).
    counted: bool,
    /// Plaintext length.
    len: u64,
    /// A format 2 file in a format 1 volume.
    upgraded: bool,
    finding: Option<Finding>,
}

/// Threads that check files: the work is mostly waiting for the backing disk (an inode
/// and a page per file when nothing is cached), so more threads than cores help.
const FILE_THREADS: usize = 8;
/// Below this many entries a directory's names are decrypted by one thread.
const PARALLEL_NAMES: usize = 64;

fn name_cipher(volume: &UnlockedVolume) -> NameCipher {
    match volume.header.names_encrypted() {
        true => NameCipher::Encrypted(volume.dek.names_key()),
        false => NameCipher::Plaintext,
    }
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// `f` over `items` on every core, results in order; each thread gets its own state
/// from `init`.
fn par_map<T: Sync, R: Send, S>(
    items: &[T],
    init: impl Fn() -> S + Sync,
    f: impl Fn(&S, &T) -> R + Sync,
) -> Vec<R> {
    let threads = cores();
    if items.len() < PARALLEL_NAMES || threads == 1 {
        let state = init();
        return items.iter().map(|item| f(&state, item)).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| {
                s.spawn(|| {
                    let state = init();
                    c.iter().map(|item| f(&state, item)).collect::<Vec<R>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("a name thread panicked"))
            .collect()
    })
}

/// A finding about entry `name` of directory `dir`.
fn entry_finding(
    tree_path: &Path,
    dirs: &[DirInfo],
    kind: Kind,
    dir: usize,
    name: &OsStr,
    plaintext_name: Option<&OsStr>,
    detail: String,
) -> Finding {
    let parent = dirs[dir].plaintext.clone();
    let (plaintext_path, plaintext_dir) = match plaintext_name {
        Some(plain) => (parent.map(|p| p.join(plain)), None),
        None => (None, parent),
    };
    Finding {
        severity: kind.severity(),
        kind,
        backing_path: tree_path.join(&dirs[dir].relative).join(name),
        plaintext_path,
        plaintext_dir,
        detail,
        repaired: None,
        target: kind.repairable().then(|| Target {
            dir,
            name: name.to_owned(),
            side_file: None,
        }),
    }
}

impl Run<'_> {
    fn note_root(&mut self, kind: Kind, path: &Path, detail: &str) {
        self.findings.push(Finding {
            severity: kind.severity(),
            kind,
            backing_path: path.to_path_buf(),
            plaintext_path: None,
            plaintext_dir: None,
            detail: detail.to_string(),
            repaired: None,
            target: None,
        });
    }

    /// A finding about entry `name` of directory `dir`.
    fn finding(
        &mut self,
        kind: Kind,
        dir: usize,
        name: &OsStr,
        plaintext_name: Option<&OsStr>,
        detail: String,
    ) -> &mut Finding {
        let finding = entry_finding(
            &self.tree_path,
            &self.dirs,
            kind,
            dir,
            name,
            plaintext_name,
            detail,
        );
        self.findings.push(finding);
        self.findings.last_mut().expect("just pushed")
    }

    /// The recorded key reference must find a key of the recorded kind again.
    fn check_protector(&mut self, key_given: bool) {
        let key = &self.volume.header.protector.key;
        let problem = match KeyRef::parse(&key.key_ref) {
            Err(e) => Some(format!(
                "the protector's key reference '{}' does not parse: {e}",
                key.key_ref
            )),
            Ok(parsed) => {
                let kind = match parsed {
                    KeyRef::Mmk { .. } => "mmk",
                    KeyRef::Pem { .. } => "pem",
                    KeyRef::Pkcs11 { .. } => "pkcs11",
                    KeyRef::Command { .. } => "command",
                };
                (kind != key.kind.to_string()).then(|| {
                    format!(
                        "the protector is a {} key but its key reference '{}' names a {kind} key",
                        key.kind, key.key_ref
                    )
                })
            }
        };
        if let Some(mut detail) = problem {
            if key_given {
                detail.push_str("; the volume opens only with --key");
            }
            let header = self.backing.join(HEADER_FILE);
            self.note_root(Kind::BadProtector, &header, &detail);
        }
    }

    /// Everything in the backing root must be xtsfs's.
    fn check_root(&mut self, root: BorrowedFd<'_>) -> Result<(), Error> {
        let entries = list_dir_typed(root)
            .map_err(Error::io("cannot list backing directory", &self.backing))?;
        for (name, _) in entries {
            let path = self.backing.join(&name);
            let is_dir =
                || stat_at(root, &name).is_ok_and(|st| st.st_mode & libc::S_IFMT == libc::S_IFDIR);
            let bytes = name.as_bytes();
            if bytes == HEADER_FILE.as_bytes() || bytes == HEADER_LOCK.as_bytes() {
                continue;
            }
            if bytes == TREE_DIR.as_bytes() && is_dir() {
                continue;
            }
            if bytes == HEADER_TMP.as_bytes() || bytes == UPGRADE_TMP.as_bytes() {
                let detail = if bytes == HEADER_TMP.as_bytes() {
                    "left by a header rewrite (rewrap) that was interrupted; the header in \
                     use is xtsfs.header, this file can be deleted"
                } else {
                    "left by an interrupted xtsfs upgrade; the next upgrade removes it, or \
                     delete it"
                };
                self.note_root(Kind::LeftoverTempFile, &path, detail);
                continue;
            }
            if bytes == LOST_FOUND.as_bytes() && is_dir() {
                let count = open_at(root, &name, DIR_FLAGS, 0)
                    .and_then(|dir| list_dir_typed(dir.as_fd()))
                    .map(|entries| entries.len())
                    .unwrap_or(0);
                if count > 0 {
                    let detail = format!(
                        "{count} entries moved here by fsck --repair: the mount cannot show \
                         them; look at them and delete them"
                    );
                    self.note_root(Kind::LostFound, &path, &detail);
                }
                continue;
            }
            self.note_root(
                Kind::UnknownRootEntry,
                &path,
                "xtsfs puts nothing by this name in the backing root (only xtsfs.header, \
                 xtsfs.lock, tree/ and lost+found/)",
            );
        }
        Ok(())
    }

    fn scanned(&mut self, progress: &mut dyn FnMut(FsckEvent)) {
        self.scanned += 1;
        if self.scanned == SCAN_REPORT {
            progress(FsckEvent::Scanned {
                entries: self.scanned,
            });
            self.scanned = 0;
        }
    }

    /// Walks the tree: names, side files, symlinks; queues regular files.
    fn walk(
        &mut self,
        tree: BorrowedFd<'_>,
        progress: &mut dyn FnMut(FsckEvent),
    ) -> Result<(), Error> {
        let mut pending = vec![0];
        while let Some(dir_index) = pending.pop() {
            self.report.directories += 1;
            let dir_path = self.tree_path.join(&self.dirs[dir_index].relative);
            let listed = open_dir_in(tree, &self.dirs[dir_index].relative)
                .and_then(|dir| Ok((list_dir_typed(dir.as_fd())?, dir)));
            let (entries, dir) = match listed {
                Ok(listed) => listed,
                Err(e) => {
                    let plaintext = self.dirs[dir_index].plaintext.clone();
                    self.findings.push(Finding {
                        severity: Severity::Problem,
                        kind: Kind::ReadError,
                        backing_path: dir_path,
                        plaintext_path: plaintext,
                        plaintext_dir: None,
                        detail: format!("the directory cannot be listed: {e}"),
                        repaired: None,
                        target: None,
                    });
                    continue;
                }
            };
            // Long names' side files (with their d_type), and the rest.
            let mut side_files: HashMap<OsString, u8> = HashMap::new();
            let mut others = Vec::with_capacity(entries.len());
            for (name, d_type) in entries {
                match self.names.classify(&name) {
                    Ok(BackingEntry::Internal) => {
                        side_files.insert(name, d_type);
                    }
                    _ => others.push((name, d_type)),
                }
            }
            let outcomes = {
                let (dir, volume) = (dir.as_fd(), self.volume);
                // The volume's SIV instance is one, behind a lock: a cipher per thread.
                par_map(
                    &others,
                    || name_cipher(volume),
                    |names, (name, _)| decode_name(names, dir, name, &side_files),
                )
            };
            let mut used_side_files: HashSet<OsString> = HashSet::new();
            // Plaintext names seen in this directory, with their backing names.
            let mut seen: HashMap<OsString, OsString> = HashMap::with_capacity(others.len());
            for ((name, d_type), outcome) in others.into_iter().zip(outcomes) {
                self.scanned(progress);
                let plain = self.record_name(dir_index, &name, outcome, &mut used_side_files);
                if let Some(plain) = &plain {
                    if let Some(first) = seen.get(plain) {
                        let detail = format!(
                            "decrypts to the same name as {}: the mount shows only one of them",
                            escape(&dir_path.join(first))
                        );
                        self.finding(Kind::DuplicateName, dir_index, &name, Some(plain), detail);
                    } else {
                        seen.insert(plain.clone(), name.clone());
                    }
                }
                let kind = match d_type {
                    libc::DT_UNKNOWN => match stat_at(dir.as_fd(), &name) {
                        Ok(st) => mode_to_dtype(st.st_mode),
                        Err(e) => {
                            let detail = format!("cannot stat: {e}");
                            self.finding(
                                Kind::ReadError,
                                dir_index,
                                &name,
                                plain.as_deref(),
                                detail,
                            );
                            continue;
                        }
                    },
                    d_type => d_type,
                };
                match kind {
                    libc::DT_DIR => match plain {
                        Some(plain) => {
                            let parent = &self.dirs[dir_index];
                            let info = DirInfo {
                                relative: parent.relative.join(&name),
                                plaintext: parent.plaintext.as_ref().map(|p| p.join(&plain)),
                            };
                            self.dirs.push(info);
                            pending.push(self.dirs.len() - 1);
                        }
                        // Nothing in it is reachable through the mount; repair moves it
                        // whole.
                        None => self.report.directories += 1,
                    },
                    // A file whose name does not decrypt is reported as that, once: the
                    // mount does not show it, and repair moves it whole.
                    libc::DT_REG if plain.is_none() => {}
                    libc::DT_REG => {
                        let size = match self.options.contents {
                            true => stat_at(dir.as_fd(), &name).map_or(0, |st| st.st_size as u64),
                            false => 0,
                        };
                        let plaintext = self.dirs[dir_index]
                            .plaintext
                            .as_ref()
                            .zip(plain.as_ref())
                            .map(|(dir, plain)| dir.join(plain));
                        self.files.push(FileJob {
                            dir: dir_index,
                            name,
                            plaintext,
                            size,
                        });
                    }
                    libc::DT_LNK => {
                        self.report.symlinks += 1;
                        self.check_symlink(dir_index, dir.as_fd(), &name, plain.as_deref());
                    }
                    _ => self.report.special += 1,
                }
            }
            let mut orphans: Vec<OsString> = side_files
                .into_keys()
                .filter(|side| !used_side_files.contains(side))
                .collect();
            orphans.sort();
            for side in orphans {
                let entry = &side.as_bytes()[..side.len() - LONG_NAME_SIDE_SUFFIX.len()];
                let detail = format!(
                    "a long name's side file without its entry {}: it holds only the \
                     encrypted name of an entry that is gone",
                    String::from_utf8_lossy(entry)
                );
                self.finding(Kind::OrphanSideFile, dir_index, &side, None, detail);
            }
        }
        if self.scanned > 0 {
            progress(FsckEvent::Scanned {
                entries: self.scanned,
            });
            self.scanned = 0;
        }
        Ok(())
    }

    /// Records what is wrong with a name; its plaintext, if it has one. Notes the side
    /// file a long name uses.
    fn record_name(
        &mut self,
        dir: usize,
        name: &OsStr,
        outcome: NameOutcome,
        used_side_files: &mut HashSet<OsString>,
    ) -> Option<OsString> {
        let side_of = |name: &OsStr| {
            let mut side = name.to_owned();
            side.push(LONG_NAME_SIDE_SUFFIX);
            side
        };
        match outcome {
            NameOutcome::Named(plain) => Some(plain),
            NameOutcome::NonCanonical(plain, detail) => {
                self.finding(Kind::NonCanonicalName, dir, name, Some(&plain), detail);
                Some(plain)
            }
            NameOutcome::Long(plain) => {
                used_side_files.insert(side_of(name));
                Some(plain)
            }
            NameOutcome::BadSide { side, why } => {
                let detail = format!(
                    "the long name's side file {} is bad: {why}; its name is lost",
                    side.to_string_lossy()
                );
                used_side_files.insert(side.clone());
                let finding = self.finding(Kind::BadSideFile, dir, name, None, detail);
                if let Some(target) = &mut finding.target {
                    target.side_file = Some(side);
                }
                None
            }
            NameOutcome::MissingSide(side) => {
                let detail = format!(
                    "a long name without its side file {}: its name is lost",
                    side.to_string_lossy()
                );
                self.finding(Kind::MissingSideFile, dir, name, None, detail);
                None
            }
            NameOutcome::Undecryptable(detail) => {
                self.finding(Kind::UndecryptableName, dir, name, None, detail);
                None
            }
        }
    }

    fn check_symlink(
        &mut self,
        dir_index: usize,
        dir: BorrowedFd<'_>,
        name: &OsStr,
        plain: Option<&OsStr>,
    ) {
        let problem = match readlink_at(dir, name) {
            Ok(target) => match self.names.decrypt_target(&target) {
                Ok(_) => return,
                Err(e) => (Kind::UndecryptableSymlink, format!("its target: {e}")),
            },
            Err(e) => (Kind::ReadError, format!("cannot read the symlink: {e}")),
        };
        self.finding(problem.0, dir_index, name, plain, problem.1);
    }

    /// Checks every queued regular file, once per inode, on [`FILE_THREADS`] threads.
    fn check_files(
        &mut self,
        tree: BorrowedFd<'_>,
        progress: &mut dyn FnMut(FsckEvent),
    ) -> Result<(), Error> {
        let jobs = std::mem::take(&mut self.files);
        let bytes = self
            .options
            .contents
            .then(|| jobs.iter().map(|job| job.size).sum());
        progress(FsckEvent::Planned {
            files: jobs.len() as u64,
            bytes,
        });
        let checker = Checker {
            volume: self.volume,
            options: self.options,
            tree_path: &self.tree_path,
            dirs: &self.dirs,
        };
        let linked: Mutex<HashSet<(u64, u64)>> = Mutex::new(HashSet::new());
        let next = AtomicUsize::new(0);
        let (sender, receiver) = mpsc::channel();
        let threads = FILE_THREADS.min(jobs.len()).max(1);
        std::thread::scope(|s| {
            for _ in 0..threads {
                let sender = sender.clone();
                let (checker, jobs, linked, next) = (&checker, &jobs, &linked, &next);
                s.spawn(move || checker.file_worker(tree, jobs, next, linked, &sender));
            }
            drop(sender);
            for message in receiver {
                match message {
                    FileMessage::Bytes(bytes) => progress(FsckEvent::Bytes { bytes }),
                    FileMessage::Done(outcome) => {
                        if outcome.counted {
                            self.report.files += 1;
                            self.report.bytes += outcome.len;
                        }
                        if outcome.upgraded {
                            self.upgraded_files += 1;
                        }
                        self.findings.extend(outcome.finding);
                        progress(FsckEvent::File { bytes: outcome.len });
                    }
                }
            }
        });
        Ok(())
    }
}

/// What backing name `name` in `dir` is; `side_files` are the directory's.
fn decode_name(
    names: &NameCipher,
    dir: BorrowedFd<'_>,
    name: &OsStr,
    side_files: &HashMap<OsString, u8>,
) -> NameOutcome {
    match names.classify(name) {
        Ok(BackingEntry::Named(plain)) => {
            if !names.is_encrypted() {
                return NameOutcome::Named(plain);
            }
            match names.encrypt_name(&plain) {
                Ok(BackingName::Direct(stored)) if stored == name => NameOutcome::Named(plain),
                Ok(canonical) => {
                    let detail = format!(
                        "decrypts, but its name is stored as {} (the mount cannot look it \
                         up)",
                        String::from_utf8_lossy(canonical.entry().as_bytes())
                    );
                    NameOutcome::NonCanonical(plain, detail)
                }
                Err(e) => {
                    let detail = format!("decrypts to a name the mount refuses: {e}");
                    NameOutcome::NonCanonical(plain, detail)
                }
            }
        }
        Ok(BackingEntry::Long) => {
            let mut side = name.to_owned();
            side.push(LONG_NAME_SIDE_SUFFIX);
            let Some(d_type) = side_files.get(&side) else {
                return NameOutcome::MissingSide(side);
            };
            let result = match *d_type {
                libc::DT_REG | libc::DT_UNKNOWN => read_side_file(dir, &side)
                    .map_err(|e| format!("cannot read it: {e}"))
                    .and_then(|encoded| decode_long(names, name, &encoded)),
                _ => Err("it is not a regular file".to_string()),
            };
            match result {
                Ok(plain) => NameOutcome::Long(plain),
                Err(why) => NameOutcome::BadSide { side, why },
            }
        }
        // Side files are sorted out before.
        Ok(BackingEntry::Internal) => NameOutcome::Undecryptable("a side file".into()),
        Err(e) => NameOutcome::Undecryptable(format!("{e}; the mount does not show it")),
    }
}

/// The name a side file holds for entry `entry`, or why it holds none.
fn decode_long(names: &NameCipher, entry: &OsStr, encoded: &[u8]) -> Result<OsString, String> {
    let hash = URL_SAFE_NO_PAD.encode(Sha256::digest(encoded));
    if entry.as_bytes()[LONG_NAME_PREFIX.len()..] != *hash.as_bytes() {
        return Err("its contents do not hash to the entry's name".into());
    }
    names
        .decrypt_long(entry, encoded)
        .map_err(|e| format!("its contents do not decrypt ({e})"))
}

impl Checker<'_> {
    /// One thread of [`Run::check_files`]: takes jobs until none are left.
    fn file_worker(
        &self,
        tree: BorrowedFd<'_>,
        jobs: &[FileJob],
        next: &AtomicUsize,
        linked: &Mutex<HashSet<(u64, u64)>>,
        sender: &mpsc::Sender<FileMessage>,
    ) {
        // The open directory of the last file: files come directory by directory.
        let mut open: Option<(usize, OwnedFd)> = None;
        let mut buffers = (Vec::new(), Vec::new());
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(job) = jobs.get(i) else {
                return;
            };
            if open.as_ref().is_none_or(|(dir, _)| *dir != job.dir) {
                open = match open_dir_in(tree, &self.dirs[job.dir].relative) {
                    Ok(fd) => Some((job.dir, fd)),
                    Err(e) => {
                        let detail = format!("cannot open its directory: {e}");
                        let outcome = FileOutcome {
                            finding: Some(self.file_finding(Kind::ReadError, job, detail)),
                            ..FileOutcome::default()
                        };
                        let _ = sender.send(FileMessage::Done(outcome));
                        continue;
                    }
                };
            }
            let dir = open.as_ref().expect("opened above").1.as_fd();
            let outcome = self.check_file(dir, job, linked, &mut buffers, &mut |bytes| {
                let _ = sender.send(FileMessage::Bytes(bytes));
            });
            let _ = sender.send(FileMessage::Done(outcome));
        }
    }

    fn file_finding(&self, kind: Kind, job: &FileJob, detail: String) -> Finding {
        let backing_path = self
            .tree_path
            .join(&self.dirs[job.dir].relative)
            .join(&job.name);
        let plaintext_dir = match job.plaintext {
            Some(_) => None,
            None => self.dirs[job.dir].plaintext.clone(),
        };
        Finding {
            severity: kind.severity(),
            kind,
            backing_path,
            plaintext_path: job.plaintext.clone(),
            plaintext_dir,
            detail,
            repaired: None,
            target: None,
        }
    }

    /// Checks one file.
    fn check_file(
        &self,
        dir: BorrowedFd<'_>,
        job: &FileJob,
        linked: &Mutex<HashSet<(u64, u64)>>,
        buffers: &mut (Vec<u8>, Vec<u8>),
        progress: &mut dyn FnMut(u64),
    ) -> FileOutcome {
        let mut outcome = FileOutcome::default();
        let found = |kind, detail| FileOutcome {
            finding: Some(self.file_finding(kind, job, detail)),
            ..FileOutcome::default()
        };
        let opened = open_read(dir, &job.name)
            .map(File::from)
            .and_then(|file| Ok((fstat(file.as_fd())?, file)));
        let (st, file) = match opened {
            Ok(opened) => opened,
            Err(e) => return found(Kind::ReadError, format!("cannot open: {e}")),
        };
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return outcome; // replaced meanwhile (a forced run on a mounted volume)
        }
        if st.st_nlink > 1
            && !linked
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((st.st_dev, st.st_ino))
        {
            return outcome; // checked under another name
        }
        let backing_len = st.st_size as u64;
        let volume_format = self.volume.header.format;
        let header = match contents::read_header(&file, volume_format) {
            Ok(header) => header,
            Err(HeaderProblem::WrongFormat { file, volume }) => {
                let detail = format!(
                    "a format {file} file in a format {volume} volume (the mount reads it \
                     as EIO); only xtsfs upgrade writes format 2 copies of format 1 files"
                );
                return counted(found(Kind::WrongFileFormat, detail));
            }
            Err(HeaderProblem::Io(e)) => {
                return counted(found(Kind::ReadError, format!("cannot read: {e}")));
            }
            Err(problem) => {
                let detail = format!("{problem} (the mount reads it as EIO)");
                return counted(found(Kind::BadFileHeader, detail));
            }
        };
        outcome.counted = true;
        let format = match header {
            Some(header) => header.format,
            None if backing_len == 0 => return outcome,
            // No header, and a length: a format 2 file whose header a crash lost.
            None => FileFormat::V2,
        };
        let Some(len) = format.plaintext_len(backing_len) else {
            let detail = format!(
                "{backing_len} bytes is no length of a format {} file (the mount reads it \
                 as EIO)",
                format.version()
            );
            return counted(found(Kind::BadFileLength, detail));
        };
        outcome.len = len;
        let Some(header) = header else {
            let detail = format!(
                "its 32 header bytes are zero: a crash lost the header before it was synced, \
                 so none of its data was synced either; it reads as {len} zero bytes, and \
                 the next write starts it over"
            );
            outcome.finding = Some(self.file_finding(Kind::LostFileHeader, job, detail));
            return outcome;
        };
        outcome.upgraded = format == FileFormat::V2 && volume_format == VolumeFormat::V1;
        if self.options.contents {
            outcome.finding = self.check_contents(
                &file,
                job,
                header.format,
                &header.nonce,
                len,
                buffers,
                progress,
            );
        }
        outcome
    }

    /// Decrypts the whole file; a finding if it cannot be read or has units stored as
    /// zeros.
    #[allow(clippy::too_many_arguments)]
    fn check_contents(
        &self,
        file: &File,
        job: &FileJob,
        format: FileFormat,
        nonce: &[u8; crate::crypto::FILE_NONCE_LEN],
        len: u64,
        (raw, buf): &mut (Vec<u8>, Vec<u8>),
        progress: &mut dyn FnMut(u64),
    ) -> Option<Finding> {
        let cipher = self.volume.dek.file_cipher(nonce);
        let contents = Contents {
            file,
            cipher: &cipher,
            format,
        };
        let unit = DATA_UNIT as u64;
        let mut zero_units: Vec<u64> = Vec::new();
        let mut offset = 0;
        while offset < len {
            let end = len.min(offset + CHUNK as u64);
            // The stored bytes of units offset/unit .. end/unit, to tell holes.
            let stored_start = format.data_offset() + offset;
            let stored_end = match format {
                FileFormat::V1 => format.data_offset() + end,
                FileFormat::V2 => format.data_offset() + end.next_multiple_of(16),
            };
            raw.resize((stored_end - stored_start) as usize, 0);
            let read = read_full_at(file, raw, stored_start)
                .and_then(|()| contents.read(offset, (end - offset) as usize, len, buf));
            if let Err(e) = read {
                let detail = format!("cannot read at plaintext offset {offset}: {e}");
                return Some(self.file_finding(Kind::ReadError, job, detail));
            }
            for (i, stored) in raw.chunks(DATA_UNIT).enumerate() {
                // A format 1 short tail (under 16 bytes) is never a hole.
                let hole_able = format == FileFormat::V2 || stored.len() >= 16;
                if hole_able && is_zero(stored) {
                    zero_units.push(offset / unit + i as u64);
                }
            }
            progress(end - offset);
            offset = end;
        }
        if zero_units.is_empty() {
            return None;
        }
        let detail = format!(
            "{} of its {} 4 KiB units are stored as zeros and read as holes (units {}): a \
             sparse file has them legitimately, but zeroed ciphertext is also how data is \
             erased without the key",
            zero_units.len(),
            len.div_ceil(unit),
            unit_ranges(&zero_units)
        );
        Some(self.file_finding(Kind::ZeroUnits, job, detail))
    }
}

/// A damaged file still counts as a file checked.
fn counted(mut outcome: FileOutcome) -> FileOutcome {
    outcome.counted = true;
    outcome
}

impl Run<'_> {
    /// Takes the repair actions; marks each finding it repaired.
    fn repair(&mut self, root: BorrowedFd<'_>, tree: BorrowedFd<'_>) -> Result<(), Error> {
        let mut lost_found: Option<OwnedFd> = None;
        let mut touched: HashSet<usize> = HashSet::new();
        for i in 0..self.findings.len() {
            let Some(target) = self.findings[i].target.clone() else {
                continue;
            };
            let path = self.findings[i].backing_path.clone();
            let dir = open_dir_in(tree, &self.dirs[target.dir].relative)
                .map_err(Error::io("cannot open directory", parent(&path)))?;
            let action = if self.findings[i].kind == Kind::OrphanSideFile {
                // Still an orphan? (its entry's name is the side file's without ".name")
                let entry =
                    &target.name.as_bytes()[..target.name.len() - LONG_NAME_SIDE_SUFFIX.len()];
                if stat_at(dir.as_fd(), OsStr::from_bytes(entry)).is_ok() {
                    continue;
                }
                unlink_at(dir.as_fd(), &target.name)
                    .map_err(Error::io("cannot remove orphan side file", &path))?;
                "removed".to_string()
            } else {
                if lost_found.is_none() {
                    lost_found = Some(open_lost_found(root, &self.backing)?);
                }
                let lf = lost_found.as_ref().expect("opened above").as_fd();
                let moved = move_unique(dir.as_fd(), &target.name, lf, &target.name)
                    .map_err(Error::io("cannot move to lost+found", &path))?;
                let moved_path = self.backing.join(LOST_FOUND).join(&moved);
                let mut action = format!("moved to {}", moved_path.display());
                if let Some(side) = &target.side_file {
                    let mut side_to = moved.clone();
                    side_to.push(LONG_NAME_SIDE_SUFFIX);
                    let side_path = parent(&path).join(side);
                    let side_moved = move_unique(dir.as_fd(), side, lf, &side_to)
                        .map_err(Error::io("cannot move to lost+found", &side_path))?;
                    let _ = write!(
                        action,
                        ", its side file to {}",
                        self.backing.join(LOST_FOUND).join(side_moved).display()
                    );
                }
                action
            };
            touched.insert(target.dir);
            self.findings[i].repaired = Some(action);
        }
        for dir in touched {
            let path = self.tree_path.join(&self.dirs[dir].relative);
            open_dir_in(tree, &self.dirs[dir].relative)
                .and_then(|fd| sync_dir(fd.as_fd()))
                .map_err(Error::io("cannot sync directory", &path))?;
        }
        if let Some(lf) = lost_found {
            sync_dir(lf.as_fd()).map_err(Error::io(
                "cannot sync directory",
                self.backing.join(LOST_FOUND),
            ))?;
        }
        Ok(())
    }
}

/// `BACKING/lost+found`, made (mode 0700, and durable) if absent.
fn open_lost_found(root: BorrowedFd<'_>, backing: &Path) -> Result<OwnedFd, Error> {
    let path = backing.join(LOST_FOUND);
    let name = OsStr::new(LOST_FOUND);
    match mkdir_at(root, name, 0o700) {
        Ok(()) => sync_dir(root).map_err(Error::io("cannot sync directory", backing))?,
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => {}
        Err(e) => return Err(Error::io("cannot create", &path)(e)),
    }
    open_at(root, name, DIR_FLAGS, 0).map_err(Error::io("cannot open", &path))
}

/// Renames `name` in `from` to `to` (or `to.1`, `to.2`, ... if taken) in `into`, never
/// replacing anything; returns the name it got.
fn move_unique(
    from: BorrowedFd<'_>,
    name: &OsStr,
    into: BorrowedFd<'_>,
    to: &OsStr,
) -> io::Result<OsString> {
    for n in 0u32.. {
        let candidate = match n {
            0 => to.to_owned(),
            n => {
                // Room for the suffix within NAME_MAX.
                let keep = &to.as_bytes()[..to.len().min(240)];
                let mut candidate = OsStr::from_bytes(keep).to_owned();
                candidate.push(format!(".{n}"));
                candidate
            }
        };
        match rename_noreplace(from, name, into, &candidate) {
            Ok(()) => return Ok(candidate),
            Err(e) if e.raw_os_error() == Some(libc::EEXIST) => continue,
            Err(e) => return Err(e),
        }
    }
    unreachable!("some suffix is free")
}

fn rename_noreplace(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
) -> io::Result<()> {
    let (from, to) = (cname(from)?, cname(to)?);
    // SAFETY: valid fds and NUL-terminated paths.
    cvt(unsafe {
        libc::renameat2(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    })
    .map(drop)
}

fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let name = cname(name)?;
    // SAFETY: a valid fd and NUL-terminated path.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// The target of symlink `name` in `dir` (never followed).
fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    let name = cname(name)?;
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: a valid fd, NUL-terminated path, and a buffer of buf.len() bytes.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

fn read_side_file(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    let mut encoded = Vec::new();
    File::from(open_read(dir, name)?)
        .take(SIDE_FILE_MAX)
        .read_to_end(&mut encoded)?;
    Ok(encoded)
}

/// Fills `buf` from `offset`; bytes past the end of the file read as zeros.
fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf[done..].fill(0);
    Ok(())
}

fn mode_to_dtype(mode: libc::mode_t) -> u8 {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => libc::DT_DIR,
        libc::S_IFREG => libc::DT_REG,
        libc::S_IFLNK => libc::DT_LNK,
        _ => libc::DT_UNKNOWN,
    }
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(path)
}

/// "0, 3-5, 9" from sorted unit numbers (at most 20 ranges, then "...").
fn unit_ranges(units: &[u64]) -> String {
    let mut ranges: Vec<(u64, u64)> = Vec::new();
    for &u in units {
        match ranges.last_mut() {
            Some((_, end)) if *end + 1 == u => *end = u,
            _ => ranges.push((u, u)),
        }
    }
    let mut out: Vec<String> = ranges
        .iter()
        .take(20)
        .map(|&(a, b)| {
            if a == b {
                a.to_string()
            } else {
                format!("{a}-{b}")
            }
        })
        .collect();
    if ranges.len() > 20 {
        out.push("...".into());
    }
    out.join(", ")
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

/// The command line's view of a run: an indicatif bar (files and bytes checked, rate,
/// ETA) on a terminal, nothing otherwise.
pub struct ProgressView {
    bar: Option<indicatif::ProgressBar>,
    contents: bool,
    files: u64,
    done: u64,
    bytes: u64,
    scanned: u64,
}

impl ProgressView {
    pub fn new(terminal: bool, contents: bool) -> Self {
        let bar = terminal.then(|| {
            let bar = indicatif::ProgressBar::new_spinner();
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.enable_steady_tick(Duration::from_millis(200));
            bar
        });
        ProgressView {
            bar,
            contents,
            files: 0,
            done: 0,
            bytes: 0,
            scanned: 0,
        }
    }

    pub fn event(&mut self, event: FsckEvent) {
        let Some(bar) = &self.bar else {
            return;
        };
        match event {
            FsckEvent::Scanned { entries } => {
                self.scanned += entries;
                bar.set_message(format!("scanning the tree: {} entries", self.scanned));
            }
            FsckEvent::Planned { files, bytes } => {
                self.files = files;
                bar.disable_steady_tick();
                let template = match bytes {
                    Some(bytes) => {
                        bar.set_length(bytes);
                        "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} \
                         {binary_bytes_per_sec} ETA {eta}"
                    }
                    None => {
                        bar.set_length(files);
                        "files {pos}/{len}, {msg} [{wide_bar}] {per_sec} ETA {eta}"
                    }
                };
                bar.set_style(
                    indicatif::ProgressStyle::with_template(template)
                        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.reset_elapsed();
                bar.set_position(0);
                self.update_message();
            }
            FsckEvent::Bytes { bytes } => {
                self.bytes += bytes;
                bar.inc(bytes);
            }
            FsckEvent::File { bytes } => {
                self.done += 1;
                if !self.contents {
                    self.bytes += bytes;
                    bar.inc(1);
                }
                if self.done.is_multiple_of(256) || self.done == self.files {
                    self.update_message();
                }
            }
        }
    }

    fn update_message(&self) {
        if let Some(bar) = &self.bar {
            bar.set_message(match self.contents {
                true => format!("files {}/{}", self.done, self.files),
                false => format!("{}", indicatif::BinaryBytes(self.bytes)),
            });
        }
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_ranges_are_compact() {
        assert_eq!(unit_ranges(&[0, 1, 2, 5, 7, 8]), "0-2, 5, 7-8");
        assert_eq!(unit_ranges(&[]), "");
    }

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
