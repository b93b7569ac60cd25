//! The operations: what a step of the run does, as data that shows and replays.

use std::fmt;

use crate::common::pseudo_random_bytes;

/// A path relative to the tree root, as raw bytes ("" is the root).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct RelPath(pub(crate) Vec<u8>);

impl RelPath {
    pub(crate) fn join(&self, name: &[u8]) -> RelPath {
        let mut path = self.0.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        RelPath(path)
    }

    pub(crate) fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.iter().filter(|b| **b == b'/').count() + 1
        }
    }
}

/// Raw bytes shown escaped, with long components shortened so a log tail stays readable.
pub(crate) struct Shown<'a>(pub(crate) &'a [u8]);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, part) in self.0.split(|b| *b == b'/').enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            if part.len() > 24 {
                write!(f, "{}…({}B)", part[..12].escape_ascii(), part.len())?;
            } else {
                write!(f, "{}", part.escape_ascii())?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", Shown(&self.0))
    }
}

/// What a write puts in the file; the bytes are made at apply time from this.
#[derive(Clone, Copy, Debug)]
pub(crate) enum Fill {
    Random(u64),
    /// Plaintext zeros, which must not be confused with holes (all-zero ciphertext).
    Zeros,
    /// The run's canary, which must never reach the backing directory in the clear.
    Canary,
}

impl Fill {
    pub(crate) fn bytes(self, len: u64, canary: &[u8]) -> Vec<u8> {
        match self {
            Fill::Random(seed) => pseudo_random_bytes(seed, len as usize),
            Fill::Zeros => vec![0; len as usize],
            Fill::Canary => canary.iter().copied().cycle().take(len as usize).collect(),
        }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct OpenFlags(pub(crate) i32);

impl fmt::Debug for OpenFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = match self.0 & libc::O_ACCMODE {
            libc::O_RDONLY => "RDONLY",
            libc::O_WRONLY => "WRONLY",
            _ => "RDWR",
        };
        f.write_str(access)?;
        for (bit, name) in [
            (libc::O_CREAT, "CREAT"),
            (libc::O_EXCL, "EXCL"),
            (libc::O_TRUNC, "TRUNC"),
            (libc::O_APPEND, "APPEND"),
        ] {
            if self.0 & bit != 0 {
                write!(f, "|{name}")?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
pub(crate) struct FallocMode(pub(crate) i32);

impl fmt::Debug for FallocMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 & !libc::FALLOC_FL_KEEP_SIZE {
            0 => "ALLOCATE",
            libc::FALLOC_FL_PUNCH_HOLE => "PUNCH_HOLE",
            libc::FALLOC_FL_ZERO_RANGE => "ZERO_RANGE",
            _ => "?",
        };
        f.write_str(name)?;
        if self.0 & libc::FALLOC_FL_KEEP_SIZE != 0 {
            f.write_str("|KEEP_SIZE")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
pub(crate) struct RenameFlags(pub(crate) u32);

impl fmt::Debug for RenameFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            0 => "0",
            libc::RENAME_NOREPLACE => "NOREPLACE",
            libc::RENAME_EXCHANGE => "EXCHANGE",
            _ => "?",
        })
    }
}

/// Permission bits (set-id and sticky included), or a umask: shown in octal.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct Mode(pub(crate) u32);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// What mknod makes.
#[derive(Clone, Copy, Debug)]
pub(crate) enum NodeKind {
    Regular,
    Fifo,
    Socket,
    Char(u32, u32),
    Block(u32, u32),
}

impl NodeKind {
    pub(crate) fn mode_and_dev(self) -> (u32, libc::dev_t) {
        match self {
            NodeKind::Regular => (libc::S_IFREG, 0),
            NodeKind::Fifo => (libc::S_IFIFO, 0),
            NodeKind::Socket => (libc::S_IFSOCK, 0),
            NodeKind::Char(major, minor) => (libc::S_IFCHR, libc::makedev(major, minor)),
            NodeKind::Block(major, minor) => (libc::S_IFBLK, libc::makedev(major, minor)),
        }
    }
}

/// One of utimensat's two times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum TimeSpec {
    Now,
    Omit,
    At(i64, i64),
}

impl TimeSpec {
    pub(crate) fn timespec(self) -> libc::timespec {
        let (tv_sec, tv_nsec) = match self {
            TimeSpec::Now => (0, libc::UTIME_NOW),
            TimeSpec::Omit => (0, libc::UTIME_OMIT),
            TimeSpec::At(sec, nsec) => (sec, nsec),
        };
        libc::timespec { tv_sec, tv_nsec }
    }
}

#[derive(Clone, Copy)]
pub(crate) struct XattrFlags(pub(crate) i32);

impl fmt::Debug for XattrFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            0 => "0",
            libc::XATTR_CREATE => "CREATE",
            libc::XATTR_REPLACE => "REPLACE",
            _ => "?",
        })
    }
}

/// An extended attribute name, as raw bytes.
#[derive(Clone)]
pub(crate) struct XattrName(pub(crate) Vec<u8>);

impl fmt::Debug for XattrName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", Shown(&self.0))
    }
}

#[derive(Clone, Debug)]
pub(crate) enum Op {
    /// open(O_WRONLY [|O_CREAT]) + pwrite + close.
    Write {
        path: RelPath,
        create: bool,
        offset: u64,
        len: u64,
        fill: Fill,
    },
    /// open(O_WRONLY|O_APPEND [|O_CREAT]) + write + close.
    Append {
        path: RelPath,
        create: bool,
        len: u64,
        fill: Fill,
    },
    Truncate {
        path: RelPath,
        size: u64,
    },
    /// open(O_WRONLY) + fallocate + close.
    Fallocate {
        path: RelPath,
        mode: FallocMode,
        offset: u64,
        len: u64,
    },
    Read {
        path: RelPath,
        offset: u64,
        len: u64,
    },
    Fsync {
        path: RelPath,
        data_only: bool,
    },
    Rename {
        from: RelPath,
        to: RelPath,
        flags: RenameFlags,
    },
    Link {
        from: RelPath,
        to: RelPath,
    },
    Unlink {
        path: RelPath,
    },
    Mkdir {
        path: RelPath,
        mode: Mode,
    },
    Rmdir {
        path: RelPath,
    },
    Symlink {
        target: RelPath,
        path: RelPath,
    },
    /// Opens `path` into a handle slot, closing what the slot held.
    Open {
        slot: usize,
        path: RelPath,
        flags: OpenFlags,
    },
    Close {
        slot: usize,
    },
    /// pwrite through a held handle (on an O_APPEND handle Linux appends regardless).
    HandleWrite {
        slot: usize,
        offset: u64,
        len: u64,
        fill: Fill,
    },
    HandleRead {
        slot: usize,
        offset: u64,
        len: u64,
    },
    HandleTruncate {
        slot: usize,
        size: u64,
    },
    HandleFallocate {
        slot: usize,
        mode: FallocMode,
        offset: u64,
        len: u64,
    },
    HandleSync {
        slot: usize,
        data_only: bool,
    },
    /// Unmounts and mounts xtsfs again (closing every handle on both sides first).
    Remount,
    /// chmod (follows a final symlink).
    Chmod {
        path: RelPath,
        mode: Mode,
    },
    /// chown, or lchown unless `follow`; `None` leaves an id as it is.
    Chown {
        path: RelPath,
        uid: Option<u32>,
        gid: Option<u32>,
        follow: bool,
    },
    Mknod {
        path: RelPath,
        kind: NodeKind,
        mode: Mode,
    },
    /// lsetxattr, with a value of `len` bytes.
    SetXattr {
        path: RelPath,
        name: XattrName,
        len: u64,
        fill: Fill,
        flags: XattrFlags,
    },
    /// lgetxattr: asking for the size first and then the value (`size` None, as
    /// getfattr does), or with a buffer of `size` bytes (0 asks for the size only).
    GetXattr {
        path: RelPath,
        name: XattrName,
        size: Option<u64>,
    },
    /// llistxattr.
    ListXattr {
        path: RelPath,
    },
    RemoveXattr {
        path: RelPath,
        name: XattrName,
    },
    /// utimensat, with AT_SYMLINK_NOFOLLOW unless `follow`.
    Utimens {
        path: RelPath,
        atime: TimeSpec,
        mtime: TimeSpec,
        follow: bool,
    },
    /// `op` run by the second user (not root; a supplementary group) in a child process
    /// whose umask is `umask`.
    AsOther {
        umask: Mode,
        op: Box<Op>,
    },
}

impl Op {
    /// Paths whose kind, size and link count are compared right after the op.
    pub(crate) fn touched(&self) -> Vec<&RelPath> {
        match self {
            Op::Write { path, .. }
            | Op::Append { path, .. }
            | Op::Truncate { path, .. }
            | Op::Fallocate { path, .. }
            | Op::Unlink { path }
            | Op::Mkdir { path, .. }
            | Op::Rmdir { path }
            | Op::Symlink { path, .. }
            | Op::Open { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Mknod { path, .. }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::Utimens { path, .. } => vec![path],
            Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
            Op::AsOther { op, .. } => op.touched(),
            _ => Vec::new(),
        }
    }

    /// The op itself, as whoever runs it.
    pub(crate) fn inner(&self) -> &Op {
        match self {
            Op::AsOther { op, .. } => op,
            op => op,
        }
    }

    /// The byte range a content-changing op touched, for an immediate readback.
    pub(crate) fn changed_range(&self) -> Option<(u64, u64)> {
        match *self {
            Op::Write { offset, len, .. }
            | Op::Fallocate { offset, len, .. }
            | Op::HandleWrite { offset, len, .. }
            | Op::HandleFallocate { offset, len, .. } => Some((offset, len)),
            Op::Truncate { size, .. } | Op::HandleTruncate { size, .. } => Some((size, 0)),
            Op::Append { .. } => Some((0, 0)),
            Op::AsOther { ref op, .. } => op.changed_range(),
            _ => None,
        }
    }

    pub(crate) fn slot(&self) -> Option<usize> {
        match *self {
            Op::HandleWrite { slot, .. }
            | Op::HandleRead { slot, .. }
            | Op::HandleTruncate { slot, .. }
            | Op::HandleFallocate { slot, .. }
            | Op::HandleSync { slot, .. } => Some(slot),
            _ => None,
        }
    }
}
