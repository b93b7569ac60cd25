//! Applying an operation to one side (the mount or the reference), and its outcome.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::FromRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt};
use std::path::{Path, PathBuf};

use crate::common::fnv;
use crate::common::sys::{cpath, cvt, fallocate, renameat2, truncate, try_read_at};
use crate::common::xattr;
use crate::model::join;
use crate::op::{Op, RelPath, Shown};
use crate::{DEVICE_NOT_OPENED, SLOTS};

/// What an operation returned, compared between the two sides.
#[derive(PartialEq)]
pub(crate) enum Value {
    Done,
    Count(u64),
    Data(Vec<u8>),
    /// Extended attribute names, sorted: the listing order is the file system's own (on
    /// xtsfs, the backing order of the encrypted names).
    Names(Vec<Vec<u8>>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Done => f.write_str("Done"),
            Value::Count(n) => write!(f, "Count({n})"),
            Value::Data(data) => write!(f, "Data({} bytes, fnv {:016x})", data.len(), fnv(data)),
            Value::Names(names) => {
                let shown: Vec<String> = names.iter().map(|n| Shown(n).to_string()).collect();
                write!(f, "Names({shown:?})")
            }
        }
    }
}

/// An outcome as it crosses the pipe from a child running as another user.
type WireOutcome = Result<(u8, u64, Vec<u8>, Vec<Vec<u8>>), i32>;

pub(crate) fn to_wire(outcome: Outcome) -> WireOutcome {
    match outcome {
        Ok(Value::Done) => Ok((0, 0, Vec::new(), Vec::new())),
        Ok(Value::Count(n)) => Ok((1, n, Vec::new(), Vec::new())),
        Ok(Value::Data(data)) => Ok((2, 0, data, Vec::new())),
        Ok(Value::Names(names)) => Ok((3, 0, Vec::new(), names)),
        Err(e) => Err(e.0),
    }
}

pub(crate) fn from_wire(wire: WireOutcome) -> Outcome {
    match wire {
        Ok((0, ..)) => Ok(Value::Done),
        Ok((1, n, ..)) => Ok(Value::Count(n)),
        Ok((2, _, data, _)) => Ok(Value::Data(data)),
        Ok((_, _, _, names)) => Ok(Value::Names(names)),
        Err(e) => Err(Errno(e)),
    }
}

pub(crate) type Outcome = Result<Value, Errno>;

#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Errno(pub(crate) i32);

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == DEVICE_NOT_OPENED {
            return f.write_str("a device node (not opened)");
        }
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(-1))
    }
}

pub(crate) fn open(path: &Path, flags: i32) -> Result<File, Errno> {
    // What the path names decides, on both sides alike: a FIFO is opened O_NONBLOCK (an
    // open for writing without a reader gives ENXIO instead of blocking the run), and a
    // device node is not opened at all (see DEVICE_NOT_OPENED).
    let mut flags = flags;
    if let Ok(meta) = fs::metadata(path) {
        let kind = meta.file_type();
        if kind.is_char_device() || kind.is_block_device() {
            return Err(Errno(DEVICE_NOT_OPENED));
        }
        if kind.is_fifo() {
            flags |= libc::O_NONBLOCK;
        }
    }
    let path = cpath(path);
    // SAFETY: NUL-terminated path; on success we own the returned fd.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    cvt(fd)?;
    // SAFETY: fd was just returned by open.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Up to `len` bytes at `offset`, or the errno.
pub(crate) fn read_data(file: &File, offset: u64, len: u64) -> Outcome {
    Ok(Value::Data(try_read_at(file, offset, len)?))
}

/// An attribute's value, asking for its size first as getfattr does.
fn lgetxattr(path: &Path, name: &[u8]) -> Result<Vec<u8>, Errno> {
    Ok(xattr::lgetxattr(path, name)?)
}

/// lgetxattr into a buffer of exactly `size` bytes: the value, or its size if `size` is 0.
fn lgetxattr_into(path: &Path, name: &[u8], size: usize) -> Outcome {
    let mut buf = vec![0u8; size];
    let n = xattr::lgetxattr_into(path, name, &mut buf)?;
    if size == 0 {
        return Ok(Value::Count(n as u64));
    }
    buf.truncate(n);
    Ok(Value::Data(buf))
}

/// The attribute names of a path (not following a final symlink), sorted, without
/// `security.` ones: the local file system may carry security-module labels that the
/// mount does not show (README, "POSIX behaviour": `security.` labels of the backing
/// objects are not shown). No operation here sets a `security.` attribute.
fn llistxattr(path: &Path) -> Result<Vec<Vec<u8>>, Errno> {
    let mut names = xattr::llistxattr(path)?;
    names.retain(|name| !name.starts_with(b"security."));
    Ok(names)
}

/// Every attribute of a path with its value, as `llistxattr` lists them.
pub(crate) fn xattrs(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, Errno> {
    llistxattr(path)?
        .into_iter()
        .map(|name| {
            let value = lgetxattr(path, &name)?;
            Ok((name, value))
        })
        .collect()
}

/// One of the two trees, with its handle slots.
pub(crate) struct Side {
    pub(crate) root: PathBuf,
    pub(crate) handles: Vec<Option<File>>,
}

impl Side {
    pub(crate) fn new(root: PathBuf) -> Self {
        Side {
            root,
            handles: (0..SLOTS).map(|_| None).collect(),
        }
    }

    pub(crate) fn path(&self, rel: &RelPath) -> PathBuf {
        join(&self.root, rel)
    }

    /// Generation only picks open slots, but a minimized replay may have dropped the open.
    pub(crate) fn handle(&self, slot: usize) -> Result<&File, Errno> {
        self.handles[slot].as_ref().ok_or(Errno(libc::EBADF))
    }

    pub(crate) fn apply(&mut self, op: &Op, canary: &[u8]) -> Outcome {
        match op {
            Op::Write {
                path,
                create,
                offset,
                len,
                fill,
            } => {
                let creat = if *create { libc::O_CREAT } else { 0 };
                let file = open(&self.path(path), libc::O_WRONLY | creat)?;
                file.write_all_at(&fill.bytes(*len, canary), *offset)
                    .map_err(Errno::from)?;
                Ok(Value::Count(*len))
            }
            Op::Append {
                path,
                create,
                len,
                fill,
            } => {
                let creat = if *create { libc::O_CREAT } else { 0 };
                let mut file = open(&self.path(path), libc::O_WRONLY | libc::O_APPEND | creat)?;
                file.write_all(&fill.bytes(*len, canary))
                    .map_err(Errno::from)?;
                Ok(Value::Count(*len))
            }
            Op::Truncate { path, size } => {
                truncate(&self.path(path), *size)?;
                Ok(Value::Done)
            }
            Op::Fallocate {
                path,
                mode,
                offset,
                len,
            } => {
                let file = open(&self.path(path), libc::O_WRONLY)?;
                fallocate(&file, mode.0, *offset, *len)?;
                Ok(Value::Done)
            }
            Op::Read { path, offset, len } => {
                read_data(&open(&self.path(path), libc::O_RDONLY)?, *offset, *len)
            }
            Op::Fsync { path, data_only } => {
                // Directories too: this is how fsyncdir gets exercised.
                let file = open(&self.path(path), libc::O_RDONLY)?;
                if *data_only {
                    file.sync_data()
                } else {
                    file.sync_all()
                }
                .map_err(Errno::from)?;
                Ok(Value::Done)
            }
            Op::Rename { from, to, flags } => {
                renameat2(&self.path(from), &self.path(to), flags.0)?;
                Ok(Value::Done)
            }
            Op::Link { from, to } => {
                let (from, to) = (cpath(&self.path(from)), cpath(&self.path(to)));
                // SAFETY: NUL-terminated paths; flags 0 links a symlink itself.
                cvt(unsafe {
                    libc::linkat(
                        libc::AT_FDCWD,
                        from.as_ptr(),
                        libc::AT_FDCWD,
                        to.as_ptr(),
                        0,
                    )
                })?;
                Ok(Value::Done)
            }
            Op::Unlink { path } => {
                fs::remove_file(self.path(path))?;
                Ok(Value::Done)
            }
            Op::Mkdir { path, mode } => {
                fs::DirBuilder::new().mode(mode.0).create(self.path(path))?;
                Ok(Value::Done)
            }
            Op::Rmdir { path } => {
                fs::remove_dir(self.path(path))?;
                Ok(Value::Done)
            }
            Op::Symlink { target, path } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&target.0), self.path(path))?;
                Ok(Value::Done)
            }
            Op::Open { slot, path, flags } => {
                self.handles[*slot] = None;
                self.handles[*slot] = Some(open(&self.path(path), flags.0)?);
                Ok(Value::Done)
            }
            Op::Close { slot } => {
                self.handles[*slot] = None;
                Ok(Value::Done)
            }
            Op::HandleWrite {
                slot,
                offset,
                len,
                fill,
            } => {
                self.handle(*slot)?
                    .write_all_at(&fill.bytes(*len, canary), *offset)
                    .map_err(Errno::from)?;
                Ok(Value::Count(*len))
            }
            Op::HandleRead { slot, offset, len } => read_data(self.handle(*slot)?, *offset, *len),
            Op::HandleTruncate { slot, size } => {
                self.handle(*slot)?.set_len(*size).map_err(Errno::from)?;
                Ok(Value::Done)
            }
            Op::HandleFallocate {
                slot,
                mode,
                offset,
                len,
            } => {
                fallocate(self.handle(*slot)?, mode.0, *offset, *len)?;
                Ok(Value::Done)
            }
            Op::HandleSync { slot, data_only } => {
                let file = self.handle(*slot)?;
                if *data_only {
                    file.sync_data()
                } else {
                    file.sync_all()
                }
                .map_err(Errno::from)?;
                Ok(Value::Done)
            }
            Op::Remount => Ok(Value::Done),
            Op::Chmod { path, mode } => {
                let path = cpath(&self.path(path));
                // SAFETY: NUL-terminated path.
                cvt(unsafe { libc::chmod(path.as_ptr(), mode.0) })?;
                Ok(Value::Done)
            }
            Op::Chown {
                path,
                uid,
                gid,
                follow,
            } => {
                let path = cpath(&self.path(path));
                let (uid, gid) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
                // SAFETY: NUL-terminated path; -1 leaves an id as it is.
                cvt(unsafe {
                    if *follow {
                        libc::chown(path.as_ptr(), uid, gid)
                    } else {
                        libc::lchown(path.as_ptr(), uid, gid)
                    }
                })?;
                Ok(Value::Done)
            }
            Op::Mknod { path, kind, mode } => {
                let (kind, dev) = kind.mode_and_dev();
                let path = cpath(&self.path(path));
                // SAFETY: NUL-terminated path.
                cvt(unsafe { libc::mknod(path.as_ptr(), kind | mode.0, dev) })?;
                Ok(Value::Done)
            }
            Op::SetXattr {
                path,
                name,
                len,
                fill,
                flags,
            } => {
                let value = fill.bytes(*len, canary);
                xattr::lsetxattr(&self.path(path), &name.0, &value, flags.0)?;
                Ok(Value::Done)
            }
            Op::GetXattr { path, name, size } => {
                let path = self.path(path);
                match size {
                    None => lgetxattr(&path, &name.0).map(Value::Data),
                    Some(size) => lgetxattr_into(&path, &name.0, *size as usize),
                }
            }
            Op::ListXattr { path } => llistxattr(&self.path(path)).map(Value::Names),
            Op::RemoveXattr { path, name } => {
                xattr::lremovexattr(&self.path(path), &name.0)?;
                Ok(Value::Done)
            }
            Op::Utimens {
                path,
                atime,
                mtime,
                follow,
            } => {
                let path = cpath(&self.path(path));
                let times = [atime.timespec(), mtime.timespec()];
                let flags = if *follow {
                    0
                } else {
                    libc::AT_SYMLINK_NOFOLLOW
                };
                // SAFETY: NUL-terminated path and a two-element array.
                cvt(unsafe {
                    libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), flags)
                })?;
                Ok(Value::Done)
            }
            // Run::apply_both runs it in a child as the other user.
            Op::AsOther { .. } => Err(Errno(libc::EINVAL)),
        }
    }

    pub(crate) fn close_handles(&mut self) {
        self.handles.iter_mut().for_each(|h| *h = None);
    }
}
