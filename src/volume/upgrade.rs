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

use std::collections::HashMap;
use std::ffi::{CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::ops::ControlFlow;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, IntoRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::file_header::{FileFormat, FileHeader};
use super::header::{HeaderBody, VolumeFormat};
use super::{unlock, write_header, HeaderLock, UnlockedVolume, TREE_DIR};
use crate::crypto::names::{BackingEntry, NameCipher};
use crate::crypto::DATA_UNIT;
use crate::error::{Error, ExitCode};
use crate::fs::contents::{self, Contents, HeaderProblem};
use crate::keys::{KeyContext, KeyError, KeyRef};

/// Where a file's new contents are written before they replace it, and where a hard
/// link's next name is made before it replaces an old one: in `BACKING`, outside the
/// tree, so the mount never shows it. Each run removes what an interrupted one left.
pub const UPGRADE_TMP: &str = "xtsfs.upgrade.tmp";
/// Plaintext bytes converted per read and progress report.
const CHUNK: usize = 1 << 20;
/// Damaged files listed in the error; the rest are counted.
const MAX_LISTED: usize = 10;

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
    let backing_dir = open_dir(backing)?;
    lock_offline(&backing_dir, backing)?;
    // Not a volume: fail before the header lock leaves a lock file behind.
    super::read_header(backing)?;
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
    let tree = open_at(backing_dir.as_fd(), OsStr::new(TREE_DIR), DIR_FLAGS, 0)
        .map_err(Error::io("cannot open the volume's tree", &run.tree_path))?;
    let index = run.index(tree.as_fd())?;
    if !index.damaged.is_empty() {
        return Err(damaged_error(backing, &index.damaged));
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

/// The lock a mounted daemon holds on its backing directory for as long as it runs
/// (`lock_volume` in src/mount.rs), taken without waiting: held, the volume is mounted
/// (or another upgrade runs). Holding it keeps a mount from starting during the upgrade.
pub(super) fn lock_offline(dir: &OwnedFd, backing: &Path) -> Result<(), Error> {
    // SAFETY: a valid fd; the lock lives as long as the fd.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
        return Err(Error::io("cannot lock backing directory", backing)(err));
    }
    let (mountpoint, other) = match mount_point_of(backing) {
        Some(mountpoint) => (mountpoint.display().to_string(), ""),
        None => (
            "MOUNTPOINT".to_string(),
            " (or another xtsfs upgrade is running on it)",
        ),
    };
    Err(Error::Mount(format!(
        "the volume in {} is mounted{other}; unmount it first (xtsfs unmount {mountpoint})",
        backing.display()
    )))
}

/// Where the xtsfs mount of `backing` is, from /proc/self/mountinfo.
fn mount_point_of(backing: &Path) -> Option<PathBuf> {
    let backing = backing.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        let is_ours = *fields.get(separator + 1)? == "fuse.xtsfs"
            && unescape_mountinfo(fields.get(separator + 2)?) == backing.as_os_str();
        let mountpoint = fields.get(4)?;
        is_ours.then(|| PathBuf::from(unescape_mountinfo(mountpoint)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape_mountinfo(field: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|_| bytes[i] == b'\\');
        match octal.and_then(|o| u8::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

fn damaged_error(backing: &Path, damaged: &[(PathBuf, String)]) -> Error {
    let mut message = match damaged.len() {
        1 => "1 file cannot be upgraded:".to_string(),
        n => format!("{n} files cannot be upgraded:"),
    };
    for (path, problem) in damaged.iter().take(MAX_LISTED) {
        message.push_str(&format!("\n  {}: {problem}", path.display()));
    }
    if damaged.len() > MAX_LISTED {
        message.push_str(&format!("\n  and {} more", damaged.len() - MAX_LISTED));
    }
    Error::Daemon {
        code: ExitCode::Volume,
        message,
        hint: Some(format!(
            "this run changed nothing and the volume stays format 1: it mounts and reads as \
             before. Restore these files from a backup or delete them (through the mount, or \
             their backing files), then run xtsfs upgrade {} again",
            backing.display()
        )),
    }
}

/// The tree, indexed: regular files by inode with all their names.
struct Index {
    /// Directories relative to the tree; 0 is the tree itself.
    dirs: Vec<PathBuf>,
    /// Their atime and mtime before the run, put back after each rename in them.
    dir_times: Vec<Times>,
    files: Vec<FileEntry>,
    damaged: Vec<(PathBuf, String)>,
}

struct FileEntry {
    /// Every name of the inode: (index into `dirs`, name).
    names: Vec<(usize, OsString)>,
    ino: (u64, u64),
    state: FileState,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum FileState {
    Empty,
    V2 { len: u64 },
    V1 { len: u64 },
}

impl Index {
    fn plan(&self) -> Plan {
        let mut plan = Plan {
            files: self.files.len() as u64,
            ..Plan::default()
        };
        for file in &self.files {
            if let FileState::V1 { len } = file.state {
                plan.to_convert += 1;
                plan.bytes += len;
            }
        }
        plan
    }
}

struct Run<'a> {
    volume: &'a UnlockedVolume,
    backing_dir: BorrowedFd<'a>,
    tree_path: PathBuf,
    report: UpgradeReport,
    /// Reused for every chunk.
    buf: Vec<u8>,
}

pub(super) const DIR_FLAGS: i32 = libc::O_RDONLY | libc::O_DIRECTORY;

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
        match unlink_at(self.backing_dir, OsStr::new(UPGRADE_TMP)) {
            Err(e) if e.raw_os_error() != Some(libc::ENOENT) => Err(Error::io(
                "cannot remove the upgrade's temporary file",
                self.tree_path.with_file_name(UPGRADE_TMP),
            )(e)),
            _ => Ok(()),
        }
    }

    fn index(&self, tree: BorrowedFd<'_>) -> Result<Index, Error> {
        let names = match self.volume.header.names_encrypted() {
            true => NameCipher::Encrypted(self.volume.dek.names_key()),
            false => NameCipher::Plaintext,
        };
        let mut index = Index {
            dirs: vec![PathBuf::new()],
            dir_times: vec![times(
                &fstat(tree).map_err(Error::io("cannot stat", &self.tree_path))?,
            )],
            files: Vec::new(),
            damaged: Vec::new(),
        };
        // Inodes with several names seen so far: their file, or `None` if damaged.
        let mut by_inode: HashMap<(u64, u64), Option<usize>> = HashMap::new();
        let mut pending = vec![0];
        while let Some(dir_index) = pending.pop() {
            let dir_path = self.tree_path.join(&index.dirs[dir_index]);
            let dir = open_dir_in(tree, &index.dirs[dir_index])
                .map_err(Error::io("cannot open directory", &dir_path))?;
            let entries = list_dir(dir.as_fd()).map_err(Error::io("cannot list", &dir_path))?;
            for name in entries {
                let path = dir_path.join(&name);
                let st = stat_at(dir.as_fd(), &name).map_err(Error::io("cannot stat", &path))?;
                match st.st_mode & libc::S_IFMT {
                    libc::S_IFDIR => {
                        index.dirs.push(index.dirs[dir_index].join(&name));
                        index.dir_times.push(times(&st));
                        pending.push(index.dirs.len() - 1);
                    }
                    libc::S_IFREG => {
                        // A long name's side file holds the encoded name, not contents.
                        if matches!(names.classify(&name), Ok(BackingEntry::Internal)) {
                            continue;
                        }
                        let ino = (st.st_dev, st.st_ino);
                        match by_inode.get(&ino) {
                            Some(Some(file)) => index.files[*file].names.push((dir_index, name)),
                            Some(None) => {} // damaged, and reported under its first name
                            None => {
                                let file = match file_state(dir.as_fd(), &name, &path)? {
                                    Ok(state) => {
                                        index.files.push(FileEntry {
                                            names: vec![(dir_index, name)],
                                            ino,
                                            state,
                                        });
                                        Some(index.files.len() - 1)
                                    }
                                    Err(problem) => {
                                        index.damaged.push((path, problem));
                                        None
                                    }
                                };
                                if st.st_nlink > 1 {
                                    by_inode.insert(ino, file);
                                }
                            }
                        }
                    }
                    // Symlinks, FIFOs, sockets and devices have no contents.
                    _ => {}
                }
            }
        }
        Ok(index)
    }

    /// Upgrades one inode; `Break` when the callback stopped the run.
    fn upgrade_file(
        &mut self,
        tree: BorrowedFd<'_>,
        index: &Index,
        file: &FileEntry,
        progress: &mut dyn FnMut(UpgradeEvent<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        let (dir_index, name) = &file.names[0];
        let path = self.path_of(index, *dir_index, name);
        let (outcome, bytes) = match file.state {
            FileState::Empty => {
                self.report.empty += 1;
                (FileOutcome::Empty, 0)
            }
            FileState::V2 { len } => {
                self.report.already += 1;
                (FileOutcome::AlreadyFormat2, len)
            }
            FileState::V1 { len } => {
                let dir = open_dir_in(tree, &index.dirs[*dir_index])
                    .map_err(Error::io("cannot open directory", parent(&path)))?;
                let converted = if len == 0 {
                    truncate_empty(dir.as_fd(), name, file.ino)
                        .map_err(Error::io("cannot upgrade", &path))?;
                    ControlFlow::Continue(())
                } else {
                    let dir_times = &index.dir_times[*dir_index];
                    self.convert(dir.as_fd(), dir_times, name, &path, file, len, progress)?
                };
                if converted.is_break() {
                    return Ok(converted);
                }
                if file.names.len() > 1 && len > 0 {
                    let flow = self.relink(tree, index, file, dir.as_fd(), progress)?;
                    if flow.is_break() {
                        return Ok(flow);
                    }
                }
                self.report.converted += 1;
                self.report.bytes += len;
                (FileOutcome::Converted, len)
            }
        };
        Ok(progress(UpgradeEvent::File {
            path: &path,
            outcome,
            bytes,
        }))
    }

    /// Writes the format 2 copy of a format 1 file of plaintext length `len` and renames
    /// it over the file's first name.
    #[allow(clippy::too_many_arguments)]
    fn convert(
        &mut self,
        dir: BorrowedFd<'_>,
        dir_times: &Times,
        name: &OsStr,
        path: &Path,
        file: &FileEntry,
        len: u64,
        progress: &mut dyn FnMut(UpgradeEvent<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        let failed = || Error::io("cannot upgrade", path);
        let source = File::from(open_read(dir, name).map_err(failed())?);
        let st = fstat(source.as_fd()).map_err(failed())?;
        let old_len = FileFormat::V1.backing_len(len);
        if (st.st_dev, st.st_ino) != file.ino || st.st_size as u64 != old_len {
            return Err(changed(path));
        }
        let old_header = match contents::read_header(&source, VolumeFormat::V1) {
            Ok(Some(header)) if header.format == FileFormat::V1 => header,
            _ => return Err(changed(path)),
        };
        let old_cipher = self.volume.dek.file_cipher(&old_header.nonce);
        let old = Contents {
            file: &source,
            cipher: &old_cipher,
            format: FileFormat::V1,
        };

        let tmp_path = self.tree_path.with_file_name(UPGRADE_TMP);
        let tmp_failed = || Error::io("cannot write the upgraded copy", &tmp_path);
        let tmp_name = OsStr::new(UPGRADE_TMP);
        let flags = libc::O_RDWR | libc::O_CREAT | libc::O_EXCL;
        let tmp =
            File::from(open_at(self.backing_dir, tmp_name, flags, 0o600).map_err(tmp_failed())?);
        let header = FileHeader::generate(FileFormat::V2).map_err(KeyError::from)?;
        contents::start_file(&tmp, &header).map_err(tmp_failed())?;
        let new_cipher = self.volume.dek.file_cipher(&header.nonce);
        let new = Contents {
            file: &tmp,
            cipher: &new_cipher,
            format: FileFormat::V2,
        };

        let mut new_len = 0;
        let mut offset = 0;
        while offset < len {
            let range = old
                .read(offset, CHUNK, len, &mut self.buf)
                .map_err(failed())?;
            let data = &self.buf[range];
            // Runs of units with data; all-zero units are left as holes.
            let mut at = 0;
            while at < data.len() {
                let zero = |i: usize| is_zero(&data[i..(i + DATA_UNIT).min(data.len())]);
                if zero(at) {
                    at += DATA_UNIT;
                    continue;
                }
                let start = at;
                while at < data.len() && !zero(at) {
                    at += DATA_UNIT;
                }
                let run = &data[start..at.min(data.len())];
                let run_offset = offset + start as u64;
                new.write(run_offset, run, new_len).map_err(tmp_failed())?;
                new_len = new_len.max(run_offset + run.len() as u64);
            }
            let chunk = data.len() as u64;
            offset += chunk;
            let report = UpgradeEvent::Bytes { path, bytes: chunk };
            if progress(report).is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        new.resize(new_len, len).map_err(tmp_failed())?;
        copy_attributes(tmp.as_fd(), &st).map_err(tmp_failed())?;
        tmp.sync_all().map_err(tmp_failed())?;
        drop(tmp);
        rename_at(self.backing_dir, tmp_name, dir, name)
            .map_err(Error::io("cannot replace", path))?;
        set_times(dir, dir_times)
            .and_then(|()| sync_dir(dir))
            .map_err(Error::io("cannot sync directory", parent(path)))?;
        Ok(ControlFlow::Continue(()))
    }

    /// Moves the other names of a hard-linked file to its new inode, which holds the
    /// first name: a link in `BACKING`, renamed over each name.
    fn relink(
        &mut self,
        tree: BorrowedFd<'_>,
        index: &Index,
        file: &FileEntry,
        first_dir: BorrowedFd<'_>,
        progress: &mut dyn FnMut(UpgradeEvent<'_>) -> ControlFlow<()>,
    ) -> Result<ControlFlow<()>, Error> {
        let names = file.names.len();
        let (first_dir_index, first) = &file.names[0];
        let first_path = self.path_of(index, *first_dir_index, first);
        let event = UpgradeEvent::Named {
            path: &first_path,
            name: 1,
            names,
        };
        if progress(event).is_break() {
            return Ok(ControlFlow::Break(()));
        }
        let tmp_name = OsStr::new(UPGRADE_TMP);
        for (i, (dir_index, name)) in file.names.iter().enumerate().skip(1) {
            let path = self.path_of(index, *dir_index, name);
            let failed = || Error::io("cannot link the upgraded file to", &path);
            let dir = open_dir_in(tree, &index.dirs[*dir_index]).map_err(failed())?;
            let st = stat_at(dir.as_fd(), name).map_err(failed())?;
            if (st.st_dev, st.st_ino) != file.ino {
                return Err(changed(&path));
            }
            link_at(first_dir, first, self.backing_dir, tmp_name).map_err(failed())?;
            rename_at(self.backing_dir, tmp_name, dir.as_fd(), name).map_err(failed())?;
            set_times(dir.as_fd(), &index.dir_times[*dir_index])
                .and_then(|()| sync_dir(dir.as_fd()))
                .map_err(Error::io("cannot sync directory", parent(&path)))?;
            let event = UpgradeEvent::Named {
                path: &path,
                name: i + 1,
                names,
            };
            if progress(event).is_break() {
                return Ok(ControlFlow::Break(()));
            }
        }
        Ok(ControlFlow::Continue(()))
    }
}

/// A file that is not what the index found: something wrote the backing tree during
/// the upgrade.
fn changed(path: &Path) -> Error {
    Error::Daemon {
        code: ExitCode::Failure,
        message: format!(
            "the backing file {} changed while the upgrade ran",
            path.display()
        ),
        hint: Some(
            "nothing may write the backing directory during an upgrade; run xtsfs upgrade \
             again to finish the job"
                .into(),
        ),
    }
}

/// What a regular file in a format 1 volume holds; `Err` with the problem when it is
/// damaged (an I/O error is the outer error).
fn file_state(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    path: &Path,
) -> Result<Result<FileState, String>, Error> {
    let failed = || Error::io("cannot read", path);
    let file = File::from(open_read(dir, name).map_err(failed())?);
    let backing_len = fstat(file.as_fd()).map_err(failed())?.st_size as u64;
    let header = match contents::read_header(&file, VolumeFormat::V1) {
        Ok(header) => header,
        Err(HeaderProblem::Io(e)) => return Err(failed()(e)),
        Err(problem) => return Ok(Err(problem.to_string())),
    };
    let Some(header) = header else {
        return Ok(Ok(FileState::Empty));
    };
    Ok(match header.format.plaintext_len(backing_len) {
        Some(len) if header.format == FileFormat::V1 => Ok(FileState::V1 { len }),
        Some(len) => Ok(FileState::V2 { len }),
        None => Err(format!(
            "{backing_len} bytes is no length of a format {} file",
            header.format.version()
        )),
    })
}

/// Makes a format 1 file with a header and no data the 0-byte file it is in both
/// formats, in place (see the module documentation for why a crash cannot hurt).
/// Truncating sets the mtime, so the old times are put back.
fn truncate_empty(dir: BorrowedFd<'_>, name: &OsStr, ino: (u64, u64)) -> io::Result<()> {
    let file = File::from(open_at(dir, name, libc::O_WRONLY, 0)?);
    let st = fstat(file.as_fd())?;
    if (st.st_dev, st.st_ino) != ino || st.st_size as u64 != FileFormat::V1.backing_len(0) {
        return Err(io::Error::other("the file changed while the upgrade ran"));
    }
    file.set_len(0)?;
    set_times(file.as_fd(), &times(&st))?;
    file.sync_all()
}

fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(path)
}

pub(super) fn is_zero(bytes: &[u8]) -> bool {
    let (blocks, rest) = bytes.as_chunks::<16>();
    blocks.iter().all(|b| u128::from_ne_bytes(*b) == 0) && rest.iter().all(|b| *b == 0)
}

/// Owner, mode (after the owner: chown clears set-id bits), then the times, last.
fn copy_attributes(fd: BorrowedFd<'_>, st: &libc::stat) -> io::Result<()> {
    let own = fstat(fd)?;
    if (own.st_uid, own.st_gid) != (st.st_uid, st.st_gid) {
        // SAFETY: a valid fd.
        cvt(unsafe { libc::fchown(fd.as_raw_fd(), st.st_uid, st.st_gid) })?;
    }
    // SAFETY: a valid fd.
    cvt(unsafe { libc::fchmod(fd.as_raw_fd(), st.st_mode & 0o7777) })?;
    set_times(fd, &times(st))
}

/// An inode's atime and mtime, as futimens takes them.
type Times = [libc::timespec; 2];

fn times(st: &libc::stat) -> Times {
    [
        libc::timespec {
            tv_sec: st.st_atime,
            tv_nsec: st.st_atime_nsec,
        },
        libc::timespec {
            tv_sec: st.st_mtime,
            tv_nsec: st.st_mtime_nsec,
        },
    ]
}

fn set_times(fd: BorrowedFd<'_>, times: &Times) -> io::Result<()> {
    // SAFETY: a valid fd and two timespecs.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(drop)
}

// Thin wrappers of the *at system calls: every access is relative to a directory fd,
// with O_NOFOLLOW, so a symlink planted in the tree is never followed.

pub(super) fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

pub(super) fn cname(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

pub(super) fn open_dir(path: &Path) -> Result<OwnedFd, Error> {
    let cpath = cname(path.as_os_str()).map_err(Error::io("cannot open", path))?;
    // SAFETY: a NUL-terminated path; on success we own the fd.
    let fd = cvt(unsafe { libc::open(cpath.as_ptr(), DIR_FLAGS | libc::O_CLOEXEC) }).map_err(
        |e| match e.raw_os_error() {
            Some(libc::ENOENT) => Error::NotAVolume(path.into()),
            _ => Error::io("cannot open backing directory", path)(e),
        },
    )?;
    // SAFETY: fd was just returned by open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

pub(super) fn open_at(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    let name = cname(name)?;
    let flags = flags | libc::O_NOFOLLOW | libc::O_CLOEXEC;
    // SAFETY: a valid fd and NUL-terminated name; on success we own the fd.
    let fd = cvt(unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags, mode) })?;
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a file to read it without changing its atime where we may (O_NOATIME needs
/// the file's owner or CAP_FOWNER). O_NONBLOCK: a FIFO swapped in never blocks us.
pub(super) fn open_read(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_NONBLOCK;
    match open_at(dir, name, flags | libc::O_NOATIME, 0) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open_at(dir, name, flags, 0),
        result => result,
    }
}

/// Opens the directory `relative` (to the tree) one component at a time, so no
/// component can be a symlink.
pub(super) fn open_dir_in(tree: BorrowedFd<'_>, relative: &Path) -> io::Result<OwnedFd> {
    let mut dir = open_at(tree, OsStr::new("."), DIR_FLAGS, 0)?;
    for component in relative.iter() {
        dir = open_at(dir.as_fd(), component, DIR_FLAGS, 0)?;
    }
    Ok(dir)
}

pub(super) fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::stat> {
    let name = cname(name)?;
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd and path; st is written on success.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded.
    Ok(unsafe { st.assume_init() })
}

pub(super) fn fstat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: a valid fd; st is written on success.
    cvt(unsafe { libc::fstat(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstat succeeded.
    Ok(unsafe { st.assume_init() })
}

/// The names in a directory, without `.` and `..`.
fn list_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<OsString>> {
    list_dir_typed(dir).map(|entries| entries.into_iter().map(|(name, _)| name).collect())
}

/// The names in a directory with their `d_type` (`DT_UNKNOWN` where the file system
/// does not say), without `.` and `..`.
pub(super) fn list_dir_typed(dir: BorrowedFd<'_>) -> io::Result<Vec<(OsString, u8)>> {
    let own = open_at(dir, OsStr::new("."), DIR_FLAGS, 0)?;
    // SAFETY: a valid fd, which the stream owns from here on (closedir closes it).
    let stream = unsafe { libc::fdopendir(own.as_raw_fd()) };
    if stream.is_null() {
        return Err(io::Error::last_os_error());
    }
    let _ = own.into_raw_fd();
    let mut names = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; cleared to tell the end from an error.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: a stream from fdopendir, not yet closed.
        let entry = unsafe { libc::readdir(stream) };
        if entry.is_null() {
            let err = io::Error::last_os_error();
            break match err.raw_os_error() {
                Some(0) | None => Ok(()),
                _ => Err(err),
            };
        }
        // SAFETY: readdir returned an entry whose d_name is NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr((*entry).d_name.as_ptr()) };
        let name = OsStr::from_bytes(name.to_bytes());
        if name != "." && name != ".." {
            // SAFETY: as above.
            names.push((name.to_owned(), unsafe { (*entry).d_type }));
        }
    };
    // SAFETY: the stream is open; this closes it and its fd.
    unsafe { libc::closedir(stream) };
    result.map(|()| names)
}

pub(super) fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let name = cname(name)?;
    // SAFETY: a valid fd and path.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), 0) }).map(drop)
}

fn rename_at(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
) -> io::Result<()> {
    let (from, to) = (cname(from)?, cname(to)?);
    // SAFETY: valid fds and paths.
    cvt(unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
        )
    })
    .map(drop)
}

/// A new name `to` for the file `from` (not following it: linkat without AT_SYMLINK_FOLLOW).
fn link_at(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
) -> io::Result<()> {
    let (from, to) = (cname(from)?, cname(to)?);
    // SAFETY: valid fds and paths.
    cvt(unsafe {
        libc::linkat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            0,
        )
    })
    .map(drop)
}

pub(super) fn sync_dir(dir: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a valid fd.
    cvt(unsafe { libc::fsync(dir.as_raw_fd()) }).map(drop)
}

/// The command line's view of a run: an indicatif bar (files, bytes, rate, ETA) on a
/// terminal, nothing while it runs otherwise; [`summary`] is printed either way.
pub struct ProgressView {
    bar: Option<indicatif::ProgressBar>,
    files: u64,
    done: u64,
}

impl ProgressView {
    pub fn new(terminal: bool) -> Self {
        ProgressView {
            bar: terminal.then(indicatif::ProgressBar::hidden),
            files: 0,
            done: 0,
        }
    }

    pub fn event(&mut self, event: UpgradeEvent<'_>) -> ControlFlow<()> {
        let Some(bar) = &self.bar else {
            return ControlFlow::Continue(());
        };
        match event {
            UpgradeEvent::Planned(plan) => {
                self.files = plan.files;
                bar.set_length(plan.bytes);
                bar.set_style(
                    indicatif::ProgressStyle::with_template(
                        "{msg} [{wide_bar}] {binary_bytes}/{binary_total_bytes} \
                         {binary_bytes_per_sec} ETA {eta}",
                    )
                    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                );
                bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
                bar.set_message(format!("files 0/{}", self.files));
            }
            UpgradeEvent::Bytes { bytes, .. } => bar.inc(bytes),
            UpgradeEvent::Named { .. } => {}
            UpgradeEvent::File { .. } => {
                self.done += 1;
                bar.set_message(format!("files {}/{}", self.done, self.files));
            }
        }
        ControlFlow::Continue(())
    }

    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}

/// One line saying what a run did.
pub fn summary(report: &UpgradeReport, backing: &Path) -> String {
    let what = match report.status {
        UpgradeStatus::AlreadyFormat2 => {
            return format!(
                "volume {} in {} is already format 2; nothing to do",
                report.volume_id,
                backing.display()
            )
        }
        UpgradeStatus::Upgraded => "upgraded to format 2",
        UpgradeStatus::Stopped => "stopped before the end; still format 1 (run upgrade again)",
    };
    format!(
        "volume {} in {}: {what}: {} files converted ({}), {} already format 2, {} empty, in {}",
        report.volume_id,
        backing.display(),
        report.converted,
        indicatif::BinaryBytes(report.bytes),
        report.already,
        report.empty,
        format_args!("{:.2?}", report.elapsed),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_unescape() {
        assert_eq!(
            unescape_mountinfo(r"/srv/my\040backing\134x"),
            OsString::from(r"/srv/my backing\x")
        );
        assert_eq!(unescape_mountinfo(r"/a\04"), OsString::from(r"/a\04"));
    }

    #[test]
    fn zero_detection_covers_every_byte() {
        for len in [0, 1, 15, 16, 17, 4096, 4100] {
            let mut bytes = vec![0u8; len];
            assert!(is_zero(&bytes));
            for at in 0..len {
                bytes[at] = 1;
                assert!(!is_zero(&bytes), "{len} {at}");
                bytes[at] = 0;
            }
        }
    }
}
