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
//!
//! The modules: `root` checks the protector and the backing root, `tree` walks the
//! names, `files` checks file contents, `repair` acts, `report` says what was found
//! (`progress` draws the bar).

mod files;
mod progress;
mod repair;
mod report;
mod root;
mod tree;

use std::ffi::{OsStr, OsString};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::commands::offline::{lock_offline, open_backing};
use crate::crypto::names::NameCipher;
use crate::error::Error;
use crate::fs::backing::{self, DIR_FLAGS};
use crate::keys::{KeyContext, KeyRef};
use crate::volume::{unlock, UnlockedVolume, TREE_DIR};
pub use progress::ProgressView;
use report::Target;
pub use report::{
    escape, finding_line, render, Finding, FsckEvent, FsckReport, Kind, Severity, EXIT_PROBLEMS,
    EXIT_PROBLEMS_LEFT,
};

/// Where `repair` moves entries the mount cannot show, in the backing root.
pub const LOST_FOUND: &str = "lost+found";

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

pub use crate::config::FsckOptions;

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
    let backing_dir = open_backing(backing)?;
    let mounted = match lock_offline(backing_dir.as_fd(), backing) {
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
    match backing::open_at(backing_dir.as_fd(), OsStr::new(TREE_DIR), DIR_FLAGS, 0) {
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

fn name_cipher(volume: &UnlockedVolume) -> NameCipher {
    match volume.header.names_encrypted() {
        true => NameCipher::Encrypted(volume.dek.names_key()),
        false => NameCipher::Plaintext,
    }
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
    ) {
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
    }
}
/// `xtsfs fsck`: the report on stdout; exits with its code (docs in fsck::HELP).
pub fn run(c: &crate::config::FsckConfig, settings: &crate::config::Settings) -> Result<(), Error> {
    use std::io::{IsTerminal, Write};
    let mut view = ProgressView::new(std::io::stderr().is_terminal(), c.options.contents);
    let report = fsck(
        &c.backing,
        &settings.keys,
        c.key.as_ref(),
        c.options,
        &mut |event| view.event(event),
    );
    view.finish();
    let report = report?;
    let text = match c.json {
        true => {
            serde_json::to_string_pretty(&report)
                .map_err(Error::io("cannot write the report", "stdout"))?
                + "\n"
        }
        false => render(&report),
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
