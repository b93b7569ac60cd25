//! The filesystem: operations over the backing tree, each returning an [`FsResult`].
//! [`adapter`] turns them into FUSE replies, and [`errno`] their errors into errnos.
//!
//! The operations are split by concern: [`namespace`] makes, finds and removes names,
//! [`dir`] lists directories, [`io`] opens, reads and writes files, [`xattr`] serves
//! extended attributes; this file holds the filesystem itself and its attributes.

#![warn(clippy::indexing_slicing)]

pub mod adapter;
pub(crate) mod attr;
pub(crate) mod backing;
mod behind;
pub mod contents;
mod dir;
mod errno;
mod handle;
mod inode;
mod io;
mod keyring;
mod namespace;
mod xattr;

use std::ffi::OsStr;
use std::os::fd::{AsFd, OwnedFd};
use std::sync::Arc;

use fuser::FileAttr;

use crate::volume::header::VolumeFormat;
pub use attr::CallerIds;
use attr::{file_attr, Times};
pub use errno::{FsError, FsResult};
use handle::{Handle, HandleTable};
use inode::{InodeTable, Node};
pub use keyring::{Keyring, VolumeSecrets};

/// Options fixed at mount time.
#[derive(Debug, Clone)]
pub struct FsOptions {
    pub read_only: bool,
    /// Every handle bypasses the kernel page cache, not only write-only and O_DIRECT ones.
    pub direct_io: bool,
    /// The volume's format: which file formats it holds and creates.
    pub format: VolumeFormat,
}

pub struct XtsFs {
    keyring: Arc<Keyring>,
    inodes: InodeTable,
    handles: HandleTable,
    options: FsOptions,
    /// Whether names, symlink targets and attributes are stored encrypted (a volume
    /// property, fixed for the life of the mount).
    encrypted_names: bool,
    /// Whether streams of requests drop or write out the backing pages they leave behind
    /// ([`behind`]): not on a backing file system that keeps files in memory.
    acts_behind: bool,
}

/// The result of creating or looking up a name.
pub struct Entry {
    pub attr: FileAttr,
}

/// What `open` and `create` tell the kernel about a handle.
pub struct Opened {
    pub fh: u64,
    pub direct_io: bool,
}

/// Filesystem usage of the backing file system.
pub struct FsStats {
    pub blocks: u64,
    pub bfree: u64,
    pub bavail: u64,
    pub files: u64,
    pub ffree: u64,
    pub bsize: u32,
    pub frsize: u32,
}

/// Changes a setattr asks for.
#[derive(Default)]
pub struct SetAttr {
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    pub size: Option<u64>,
    pub times: Times,
    pub fh: Option<u64>,
    /// Who asks; a truncate by a caller without CAP_FSETID clears set-id bits.
    pub caller: Option<CallerIds>,
}

impl SetAttr {
    /// Whether the request sets no attribute at all.
    fn changes_nothing(&self) -> bool {
        self.mode.is_none()
            && self.uid.is_none()
            && self.gid.is_none()
            && self.size.is_none()
            && self.times.atime.is_none()
            && self.times.mtime.is_none()
    }
}

/// What getxattr and listxattr answer: the size asked for, or the bytes.
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

impl XtsFs {
    /// The filesystem over `tree`, the backing directory holding the encrypted tree.
    pub fn new(tree: OwnedFd, keyring: Arc<Keyring>, options: FsOptions) -> std::io::Result<Self> {
        let st = backing::stat(tree.as_fd())?;
        let encrypted_names = keyring.get().map_or(true, |s| s.names.is_encrypted());
        let acts_behind = !backing::is_memory_backed(tree.as_fd())?;
        Ok(XtsFs {
            keyring,
            inodes: InodeTable::new(tree, &st),
            handles: HandleTable::default(),
            options,
            encrypted_names,
            acts_behind,
        })
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// Stops serving: no new request gets a key, every derived key is dropped, every
    /// thread's contents buffer is wiped (a thread serving a request now wipes its own
    /// when done, before serving again), open directory handles drop their decrypted
    /// listings, and the kernel is told to drop its cached attributes and plaintext pages
    /// so nothing is served from its caches either. Every acknowledged write is already
    /// in the backing file system (writes go through, there is no writeback cache);
    /// [`Self::sync_backing`] makes it durable.
    ///
    /// Contents buffers are per thread, so process-wide: a daemon serves one volume, and
    /// a lock of any volume in a process that serves several wipes them all (they are
    /// caches).
    pub fn withdraw_keys(&self, notifier: Option<&fuser::Notifier>) {
        self.keyring.withdraw();
        self.inodes.forget_keys();
        contents::wipe_thread_buffers();
        self.handles.drop_listings();
        if let Some(notifier) = notifier {
            for id in self.inodes.ids() {
                // ENOENT just means the kernel already dropped that inode.
                let _ = notifier.inval_inode(fuser::INodeNo(id), 0, 0);
            }
        }
    }

    /// Flushes the backing file system to disk.
    pub fn sync_backing(&self) -> std::io::Result<()> {
        let root = self.inodes.get(inode::ROOT_ID).map_err(FsError::into_io)?;
        let dir = backing::open_at(root.fd(), OsStr::new("."), backing::DIR_FLAGS, 0)?;
        // SAFETY: valid fd.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn writable(&self) -> FsResult<()> {
        if self.options.read_only {
            Err(FsError::ReadOnly)
        } else {
            Ok(())
        }
    }

    fn attr_of(&self, node: &Node) -> FsResult<FileAttr> {
        let st = backing::stat(node.fd())?;
        self.file_attr(node, &st)
    }

    fn file_attr(&self, node: &Node, st: &libc::stat) -> FsResult<FileAttr> {
        let format = if st.st_mode & libc::S_IFMT == libc::S_IFREG {
            node.format(self.options.format)?
        } else {
            self.options.format.new_files()
        };
        node.note_mode(st.st_mode);
        Ok(file_attr(node.id, st, format, self.encrypted_names))
    }

    /// Clears set-id bits before a write or truncate by a caller without CAP_FSETID, as
    /// a local file system does. The one place that does it, for writes through the page
    /// cache and direct I/O alike, truncates and O_TRUNC opens; the kernel's own
    /// clearing (a setattr before a cached write or a truncate) then finds nothing left.
    fn drop_setid(&self, node: &Node, caller: CallerIds) -> FsResult<()> {
        let setid = libc::S_ISUID | libc::S_ISGID;
        if node.last_mode() & setid == 0 || caller.keeps_setid() {
            return Ok(());
        }
        let st = backing::stat(node.fd())?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(());
        }
        if let Some(mode) = attr::mode_without_setid(st.st_mode, || caller.in_group(st.st_gid)) {
            backing::chmod(node.fd(), mode)?;
            node.note_mode(st.st_mode & libc::S_IFMT | mode);
        }
        Ok(())
    }

    pub fn getattr(&self, id: u64) -> FsResult<FileAttr> {
        self.keyring.get()?;
        self.attr_of(&*self.inodes.get(id)?)
    }

    pub fn setattr(&self, id: u64, change: SetAttr) -> FsResult<FileAttr> {
        let secrets = self.keyring.get()?;
        self.writable()?;
        let node = self.inodes.get(id)?;
        if let Some(mode) = change.mode {
            backing::chmod(node.fd(), mode & 0o7777)?;
        }
        if change.uid.is_some() || change.gid.is_some() || self.is_chown_of_nothing(&node, &change)
        {
            // A chown of the backing object by the daemon (which is root) clears set-id
            // bits as the local file system's chown does, and keeps a directory's.
            backing::chown(node.fd(), change.uid, change.gid)?;
        }
        if let Some(size) = change.size {
            if let Some(caller) = change.caller {
                self.drop_setid(&node, caller)?;
            }
            let handle = change.fh.map(|fh| self.handles.get(fh)).transpose()?;
            let opened;
            let file = match handle.as_deref().and_then(Handle::file) {
                Some(file) => file,
                None => {
                    opened = backing::reopen_quiet(node.fd(), libc::O_RDWR)?;
                    &opened
                }
            };
            self.truncate(&node, file, size, &secrets)?;
        }
        if change.times.any() {
            let (atime, mtime) = change.times.to_timespecs();
            backing::utimens(node.fd(), atime, mtime)?;
        }
        self.attr_of(&node)
    }

    /// Whether a setattr is a chown that keeps both ids, which clears set-id bits on a
    /// local file system: with FUSE_HANDLE_KILLPRIV_V2 (adapter::negotiate) the kernel
    /// sends it as a setattr of nothing. It sends the same after removing a file's
    /// capability before a buffered write, where set-id bits must stay for a caller
    /// with CAP_FSETID (and XtsFs::write clears them for others); that one follows the
    /// same process's removal of the capability. A chown of nothing right after a
    /// capability removal by the same process is taken for the write's: the one case
    /// that differs from a local file system (README, "POSIX behaviour").
    fn is_chown_of_nothing(&self, node: &Node, change: &SetAttr) -> bool {
        change.changes_nothing()
            && !change
                .caller
                .is_some_and(|caller| node.take_capability_removal(caller.pid))
    }

    /// Usage of the backing file system; served while locked too.
    pub fn statfs(&self) -> FsResult<FsStats> {
        let root = self.inodes.get(inode::ROOT_ID)?;
        let st = backing::statvfs(root.fd())?;
        Ok(FsStats {
            blocks: st.f_blocks,
            bfree: st.f_bfree,
            bavail: st.f_bavail,
            files: st.f_files,
            ffree: st.f_ffree,
            bsize: st.f_bsize as u32,
            frsize: st.f_frsize as u32,
        })
    }
}
