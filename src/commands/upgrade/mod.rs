//! `xtsfs upgrade`: converts a format 1 volume to format 2, offline.
//!
//! A format 1 volume reads and writes files of both formats, so the upgrade can go file
//! by file and stop anywhere: every state it leaves mounts and reads correctly, and a
//! second run finishes the job. Only when every file is format 2 is the header rewritten
//! as format 2 (atomically, [`super::write_header`]); from then on the volume accepts
//! format 2 files only.
//!
//! A run:
//!
//! 1. Takes the lock a mounted daemon holds (`flock` on the backing directory) without
//!    waiting, so a mounted volume is refused and no mount can start meanwhile; takes the
//!    header lock; unlocks the volume.
//! 2. Indexes the tree (`BACKING/tree`), never following a symlink: every directory and
//!    file is opened relative to its parent's fd with `O_NOFOLLOW`. Each regular file's
//!    header is read, and all names of a hard-linked inode are gathered by (dev, ino). A
//!    damaged file stops the run here, before anything is changed.
//! 3. Converts each format 1 inode:
//!    - **with data**: its plaintext is decrypted in 1 MiB chunks and written, under a
//!      fresh nonce, into a new format 2 file at `BACKING/xtsfs.upgrade.tmp` (all-zero
//!      4 KiB units are skipped, so holes stay holes). Owner, mode, then atime and mtime
//!      are copied, the file is fsynced and renamed over the original name, the
//!      directory's own times are put back, and the directory is fsynced. A crash leaves
//!      the name on the old file or on the complete new one; a leftover temp file sits
//!      outside the tree, invisible to the mount, and the next run removes it. Files are
//!      read with O_NOATIME, so files the run only looks at keep their atime too.
//!    - **empty** (a 32-byte header and no data): truncated to 0 bytes in place, which
//!      is an empty file in both formats. `ftruncate` changes the length in one step, so
//!      a crash leaves the 32-byte format 1 file or the 0-byte one, and both read as the
//!      same empty file, with the same inode and every hard link. Truncating sets the
//!      mtime, which is put back right after; a crash between the two can leave the
//!      time of the upgrade as the file's mtime, never other contents.
//!
//!    **Hard links.** An inode with several names is converted once; the new inode takes
//!    the first name by rename, then each other name by a temporary link in `BACKING`
//!    renamed over it. No system call replaces several names at once, so a crash (or a
//!    stop) between two of these renames leaves some names on the new inode and the rest
//!    on the old one: every name still reads the same contents, but they are two files
//!    from then on, and the next run converts the old one separately.
//! 4. Writes the header as format 2 with epoch 1.
//!
//! `index` builds the index of step 2, `convert` does step 3, `progress` draws the bar.

mod convert;
mod index;
mod progress;

use std::ffi::OsStr;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, BorrowedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::commands::offline::{lock_offline, open_backing, parent};
use crate::error::{Error, UpgradeError};
use crate::fs::backing::{self, DIR_FLAGS};
use crate::keys::{KeyContext, KeyRef};
use crate::volume::header::{HeaderBody, VolumeFormat};
use crate::volume::{unlock, write_header, HeaderLock, UnlockedVolume, TREE_DIR};
use index::Index;
pub use progress::{summary, ProgressView};

/// Where a file's new contents are written before they replace it, and where a hard
/// link's next name is made before it replaces an old one: in `BACKING`, outside the
/// tree, so the mount never shows it. Each run removes what an interrupted one left.
pub const UPGRADE_TMP: &str = "xtsfs.upgrade.tmp";
/// Plaintext bytes converted per read and progress report.
pub(super) const CHUNK: usize = 1 << 20;

/// What a run will do, known once the tree is indexed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Plan {
    /// Regular files (inodes: a hard-linked file counts once).
    pub files: u64,
    /// Of those, the format 1 files that will be converted.
    pub to_convert: u64,
    /// Their plaintext bytes.
    pub bytes: u64,
}

/// What a run reports as it goes. The callback's `Break` stops the run cleanly at that
/// point (no temp file is left behind, the header stays format 1).
#[derive(Debug)]
pub enum UpgradeEvent<'a> {
    /// The tree is indexed; conversion starts.
    Planned(Plan),
    /// `bytes` more plaintext bytes of the file at `path` (its backing path) were
    /// converted; once per chunk.
    Bytes { path: &'a Path, bytes: u64 },
    /// A hard-linked file's new inode took over name `name` (1-based) of its `names`,
    /// `path`.
    Named {
        path: &'a Path,
        name: usize,
        names: usize,
    },
    /// A file is done, under all its names; `bytes` is its plaintext length.
    File {
        path: &'a Path,
        outcome: FileOutcome,
        bytes: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileOutcome {
    /// A format 1 file, now format 2.
    Converted,
    /// Format 2 already (converted by an earlier, interrupted run).
    AlreadyFormat2,
    /// 0 bytes: empty in both formats.
    Empty,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpgradeStatus {
    /// The volume was format 2 before the run; nothing was done.
    AlreadyFormat2,
    /// Every file was converted and the header is now format 2.
    Upgraded,
    /// The progress callback stopped the run; the volume is still format 1.
    Stopped,
}

#[derive(Debug, Clone)]
pub struct UpgradeReport {
    pub volume_id: String,
    pub status: UpgradeStatus,
    /// Format 1 files converted by this run.
    pub converted: u64,
    /// Files that were format 2 already.
    pub already: u64,
    /// Files of 0 bytes.
    pub empty: u64,
    /// Plaintext bytes converted by this run.
    pub bytes: u64,
    pub elapsed: Duration,
}

/// Converts the format 1 volume in `backing` to format 2; see the module documentation.
/// `key` unwraps the DEK instead of the key the header records.
pub fn upgrade(
    backing: &Path,
    ctx: &KeyContext,
    key: Option<&KeyRef>,
    progress: &mut dyn FnMut(UpgradeEvent<'_>) -> ControlFlow<()>,
) -> Result<UpgradeReport, Error> {
    let started = Instant::now();
    // The lock lives as long as this fd.
    let backing_dir = open_backing(backing)?;
    lock_offline(backing_dir.as_fd(), backing)?;
    // Not a volume: fail before the header lock leaves a lock file behind.
    crate::volume::read_header(backing)?;
    let _header_lock = HeaderLock::acquire(backing)?;
    let volume = unlock(backing, ctx, key)?;
    let mut run = Run {
        volume: &volume,
        backing_dir: backing_dir.as_fd(),
        tree_path: backing.join(TREE_DIR),
        report: UpgradeReport {
            volume_id: volume.header.volume_id.clone(),
            status: UpgradeStatus::Upgraded,
            converted: 0,
            already: 0,
            empty: 0,
            bytes: 0,
            elapsed: Duration::ZERO,
        },
        buf: Vec::new(),
    };
    run.remove_tmp()?;
    if volume.header.format != VolumeFormat::V1 {
        run.report.status = UpgradeStatus::AlreadyFormat2;
        return Ok(run.finish(started));
    }
    let tree = backing::open_at(backing_dir.as_fd(), OsStr::new(TREE_DIR), DIR_FLAGS, 0)
        .map_err(Error::io("cannot open the volume's tree", &run.tree_path))?;
    let index = run.index(tree.as_fd())?;
    if !index.damaged.is_empty() {
        return Err(UpgradeError::Damaged {
            backing: backing.into(),
            files: index.damaged,
        }
        .into());
    }
    let plan = index.plan();
    if progress(UpgradeEvent::Planned(plan)).is_break() {
        run.report.status = UpgradeStatus::Stopped;
        return Ok(run.finish(started));
    }
    for file in &index.files {
        let flow = run.upgrade_file(tree.as_fd(), &index, file, progress);
        if !matches!(flow, Ok(ControlFlow::Continue(()))) {
            // Best effort: the next run removes it anyway.
            let _ = run.remove_tmp();
        }
        if flow?.is_break() {
            run.report.status = UpgradeStatus::Stopped;
            return Ok(run.finish(started));
        }
    }
    let body = HeaderBody {
        format: VolumeFormat::V2,
        epoch: Some(1),
        ..volume.header.clone()
    };
    write_header(backing, &body.encode(&volume.dek))?;
    Ok(run.finish(started))
}

struct Run<'a> {
    volume: &'a UnlockedVolume,
    backing_dir: BorrowedFd<'a>,
    tree_path: PathBuf,
    report: UpgradeReport,
    /// Reused for every chunk.
    buf: Vec<u8>,
}

impl Run<'_> {
    fn finish(mut self, started: Instant) -> UpgradeReport {
        self.report.elapsed = started.elapsed();
        self.report
    }

    /// The backing path of `name` in directory `dir` of `index`, for messages.
    fn path_of(&self, index: &Index, dir: usize, name: &OsStr) -> PathBuf {
        self.tree_path.join(&index.dirs[dir]).join(name)
    }

    fn remove_tmp(&self) -> Result<(), Error> {
        match backing::unlink_at(self.backing_dir, OsStr::new(UPGRADE_TMP), 0) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(Error::io(
                "cannot remove the upgrade's temporary file",
                self.tree_path.with_file_name(UPGRADE_TMP),
            )(e)),
            _ => Ok(()),
        }
    }
}

/// `xtsfs upgrade`, with a progress bar on a terminal.
pub fn run(
    c: &crate::config::UpgradeConfig,
    settings: &crate::config::Settings,
) -> Result<(), Error> {
    use std::io::IsTerminal;
    let mut view = ProgressView::new(std::io::stderr().is_terminal());
    let report = upgrade(&c.backing, &settings.keys, c.key.as_ref(), &mut |event| {
        view.event(event)
    });
    view.finish();
    println!("{}", summary(&report?, &c.backing));
    Ok(())
}
