//! The filesystem: operations over the backing tree, each returning `Result<_, Errno>`.
//! [`adapter`] turns them into FUSE replies.

pub mod adapter;
pub(crate) mod attr;
pub(crate) mod backing;
pub mod contents;
mod errno;
mod handle;
mod inode;
mod keyring;

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::sync::Arc;

use fuser::{Errno, FileAttr};

use crate::crypto::names::{BackingEntry, BackingName, NameCipher};
use crate::volume::file_header::FileFormat;
use crate::volume::header::VolumeFormat;
pub use attr::CallerIds;
use attr::{file_attr, Times};
use contents::Contents;
use errno::{backing_path, corrupt};
use handle::{DirEntry, Handle, HandleTable};
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

/// What getxattr and listxattr answer: the size asked for, or the bytes.
pub enum XattrReply {
    Size(u32),
    Data(Vec<u8>),
}

const O_ACCMODE: i32 = libc::O_ACCMODE;

impl XtsFs {
    /// The filesystem over `tree`, the backing directory holding the encrypted tree.
    pub fn new(tree: OwnedFd, keyring: Arc<Keyring>, options: FsOptions) -> std::io::Result<Self> {
        let st = backing::stat(tree.as_fd())?;
        let encrypted_names = keyring.get().map_or(true, |s| s.names.is_encrypted());
        Ok(XtsFs {
            keyring,
            inodes: InodeTable::new(tree, &st),
            handles: HandleTable::default(),
            options,
            encrypted_names,
        })
    }

    pub fn keyring(&self) -> &Arc<Keyring> {
        &self.keyring
    }

    /// Stops serving: no new request gets a key, every derived key is dropped, and the
    /// kernel is told to drop its cached attributes and plaintext pages so nothing is
    /// served from its caches either. Every acknowledged write is already in the backing
    /// file system (writes go through, there is no writeback cache); [`Self::sync_backing`]
    /// makes it durable.
    pub fn withdraw_keys(&self, notifier: Option<&fuser::Notifier>) {
        self.keyring.withdraw();
        self.inodes.forget_keys();
        if let Some(notifier) = notifier {
            for id in self.inodes.ids() {
                // ENOENT just means the kernel already dropped that inode.
                let _ = notifier.inval_inode(fuser::INodeNo(id), 0, 0);
            }
        }
    }

    /// Flushes the backing file system to disk.
    pub fn sync_backing(&self) -> std::io::Result<()> {
        let root = self
            .inodes
            .get(inode::ROOT_ID)
            .map_err(|e| std::io::Error::from_raw_os_error(e.code()))?;
        let dir = backing::open_at(
            root.fd(),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )?;
        // SAFETY: valid fd.
        if unsafe { libc::syncfs(std::os::fd::AsRawFd::as_raw_fd(&dir)) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    fn writable(&self) -> Result<(), Errno> {
        if self.options.read_only {
            Err(Errno::EROFS)
        } else {
            Ok(())
        }
    }

    fn attr_of(&self, node: &Node) -> Result<FileAttr, Errno> {
        let st = backing::stat(node.fd()).map_err(Errno::from)?;
        Ok(self.file_attr(node, &st))
    }

    fn file_attr(&self, node: &Node, st: &libc::stat) -> FileAttr {
        let format = if st.st_mode & libc::S_IFMT == libc::S_IFREG {
            node.format(self.options.format)
        } else {
            self.options.format.new_files()
        };
        node.note_mode(st.st_mode);
        file_attr(node.id, st, format, self.encrypted_names)
    }

    /// Clears set-id bits before a write or truncate by a caller without CAP_FSETID, as
    /// a local file system does. The one place that does it, for writes through the page
    /// cache and direct I/O alike, truncates and O_TRUNC opens; the kernel's own
    /// clearing (a setattr before a cached write or a truncate) then finds nothing left.
    fn drop_setid(&self, node: &Node, caller: CallerIds) -> Result<(), Errno> {
        let setid = libc::S_ISUID | libc::S_ISGID;
        if node.last_mode() & setid == 0 || caller.keeps_setid() {
            return Ok(());
        }
        let st = backing::stat(node.fd()).map_err(Errno::from)?;
        if st.st_mode & libc::S_IFMT != libc::S_IFREG {
            return Ok(());
        }
        if let Some(mode) = attr::mode_without_setid(st.st_mode, || caller.in_group(st.st_gid)) {
            backing::chmod(node.fd(), mode).map_err(Errno::from)?;
            node.note_mode(st.st_mode & libc::S_IFMT | mode);
        }
        Ok(())
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<Entry, Errno> {
        let secrets = self.keyring.get()?;
        let parent = self.inodes.get(parent)?;
        let backing_name = secrets.names.encrypt_name(name)?;
        self.intern(parent.fd(), backing_name.entry())
    }

    /// Looks up a backing entry and registers a kernel reference to it.
    fn intern(&self, dir: BorrowedFd<'_>, entry: &OsStr) -> Result<Entry, Errno> {
        let fd = backing::open_path(dir, entry).map_err(Errno::from)?;
        self.register(fd)
    }

    /// Registers a kernel reference to the object an O_PATH fd names.
    fn register(&self, fd: OwnedFd) -> Result<Entry, Errno> {
        let st = backing::stat(fd.as_fd()).map_err(Errno::from)?;
        let node = self.inodes.intern(fd, &st)?;
        Ok(Entry {
            attr: self.file_attr(&node, &st),
        })
    }

    pub fn forget(&self, id: u64, count: u64) {
        self.inodes.forget(id, count);
    }

    pub fn getattr(&self, id: u64) -> Result<FileAttr, Errno> {
        self.keyring.get()?;
        self.attr_of(&*self.inodes.get(id)?)
    }

    pub fn setattr(&self, id: u64, change: SetAttr) -> Result<FileAttr, Errno> {
        let secrets = self.keyring.get()?;
        self.writable()?;
        let node = self.inodes.get(id)?;
        if let Some(mode) = change.mode {
            backing::chmod(node.fd(), mode & 0o7777).map_err(Errno::from)?;
        }
        if change.uid.is_some() || change.gid.is_some() {
            backing::chown(node.fd(), change.uid, change.gid).map_err(Errno::from)?;
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
                    opened = backing::reopen_quiet(node.fd(), libc::O_RDWR).map_err(Errno::from)?;
                    &opened
                }
            };
            self.truncate(&node, file, size, &secrets)?;
        }
        if change.times.any() {
            let (atime, mtime) = change.times.to_timespecs();
            backing::utimens(node.fd(), atime, mtime).map_err(Errno::from)?;
        }
        self.attr_of(&node)
    }

    fn truncate(
        &self,
        node: &Node,
        file: &File,
        size: u64,
        secrets: &VolumeSecrets,
    ) -> Result<(), Errno> {
        // An empty file truncated to zero stays without a header.
        if self.read_contents(node, file, secrets, |_, len| Ok(len))? == size {
            return Ok(());
        }
        let cleared = self.write_contents(node, file, secrets, |contents, len| {
            if size == len {
                return Ok(false);
            }
            contents.resize(len, size).map_err(Errno::from)?;
            Ok(size == 0 && contents.format == FileFormat::V2)
        })?;
        if cleared {
            // The header went with the data: the next write starts over with a new nonce.
            node.forget_key();
        }
        Ok(())
    }

    pub fn readlink(&self, id: u64) -> Result<Vec<u8>, Errno> {
        let secrets = self.keyring.get()?;
        let node = self.inodes.get(id)?;
        let stored = backing::readlink(node.fd()).map_err(Errno::from)?;
        secrets
            .names
            .decrypt_target(&stored)
            .map_err(|e| corrupt(node.fd(), &e))
    }

    /// Creates a directory entry through `make`, with its long-name side file if it needs
    /// one, hands it to the caller, and registers it.
    fn make_entry(
        &self,
        parent: u64,
        name: &OsStr,
        caller: CallerIds,
        umask: u32,
        make: impl FnOnce(BorrowedFd<'_>, &OsStr) -> std::io::Result<()>,
    ) -> Result<Entry, Errno> {
        let secrets = self.keyring.get()?;
        self.writable()?;
        let parent = self.inodes.get(parent)?;
        let backing_name = secrets.names.encrypt_name(name)?;
        let side_created = write_side_file(parent.fd(), &backing_name)?;
        if let Err(e) = backing::with_umask(umask, || make(parent.fd(), backing_name.entry())) {
            if side_created {
                remove_side_file(parent.fd(), &backing_name);
            }
            return Err(Errno::from(e));
        }
        let fd = backing::open_path(parent.fd(), backing_name.entry()).map_err(Errno::from)?;
        caller.apply(parent.fd(), fd.as_fd()).map_err(Errno::from)?;
        self.register(fd)
    }

    /// A new directory. `mode` and `umask` are the caller's: the backing file system
    /// applies the umask, or the parent's default ACL instead (see [`backing::with_umask`]),
    /// as for every new object.
    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        caller: CallerIds,
    ) -> Result<Entry, Errno> {
        self.make_entry(parent, name, caller, umask, |dir, entry| {
            backing::mkdir_at(dir, entry, mode & 0o7777)
        })
    }

    /// Regular files, FIFOs, sockets and device nodes. The kernel has checked CAP_MKNOD
    /// for a device node in the caller's context; the mount is nodev unless mounted with
    /// `-o dev`, so one cannot be opened through it.
    pub fn mknod(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        caller: CallerIds,
    ) -> Result<Entry, Errno> {
        match mode & libc::S_IFMT {
            libc::S_IFIFO | libc::S_IFSOCK => {
                self.make_entry(parent, name, caller, umask, |dir, entry| {
                    backing::mknod_at(dir, entry, mode, 0)
                })
            }
            libc::S_IFCHR | libc::S_IFBLK => {
                self.make_entry(parent, name, caller, umask, |dir, entry| {
                    backing::mknod_at(dir, entry, mode, backing::dev_from_fuse(rdev))
                })
            }
            libc::S_IFREG => self.make_entry(parent, name, caller, umask, |dir, entry| {
                backing::open_at(
                    dir,
                    entry,
                    libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
                    mode & 0o7777,
                )
                .map(drop)
            }),
            _ => Err(Errno::EINVAL),
        }
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        caller: CallerIds,
    ) -> Result<Entry, Errno> {
        let stored = self
            .keyring
            .get()?
            .names
            .encrypt_target(target.as_bytes())?;
        // A symlink's mode is always 0777: no umask applies.
        self.make_entry(parent, name, caller, 0, |dir, entry| {
            backing::symlink_at(&stored, dir, entry)
        })
    }

    pub fn link(&self, id: u64, new_parent: u64, new_name: &OsStr) -> Result<Entry, Errno> {
        let node = self.inodes.get(id)?;
        // The kernel holds a reference to the node; the new link shares it.
        self.make_entry(new_parent, new_name, CallerIds::KEEP, 0, |dir, entry| {
            backing::link_at(node.fd(), dir, entry)
        })
    }

    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        caller: CallerIds,
    ) -> Result<(Entry, Opened), Errno> {
        let mut created = None;
        let entry = self.make_entry(parent, name, caller, umask, |dir, entry| {
            let fd = backing::open_at_quiet(
                dir,
                entry,
                libc::O_CREAT | libc::O_RDWR | (flags & libc::O_EXCL),
                mode & 0o7777,
            )?;
            created = Some(File::from(fd));
            Ok(())
        })?;
        let file = created.ok_or(Errno::EIO)?;
        let node = self.inodes.get(entry.attr.ino.0)?;
        let fh = self.handles.insert(Handle::for_file(node, file, true));
        Ok((
            entry,
            Opened {
                fh,
                direct_io: self.bypasses_page_cache(flags),
            },
        ))
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.remove(parent, name, 0)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        self.remove(parent, name, libc::AT_REMOVEDIR)
    }

    fn remove(&self, parent: u64, name: &OsStr, flags: i32) -> Result<(), Errno> {
        let secrets = self.keyring.get()?;
        self.writable()?;
        let parent = self.inodes.get(parent)?;
        let backing_name = secrets.names.encrypt_name(name)?;
        backing::unlink_at(parent.fd(), backing_name.entry(), flags).map_err(Errno::from)?;
        remove_side_file(parent.fd(), &backing_name);
        Ok(())
    }

    pub fn rename(
        &self,
        parent: u64,
        name: &OsStr,
        new_parent: u64,
        new_name: &OsStr,
        flags: u32,
    ) -> Result<(), Errno> {
        let secrets = self.keyring.get()?;
        self.writable()?;
        let (from_dir, to_dir) = (self.inodes.get(parent)?, self.inodes.get(new_parent)?);
        let from = secrets.names.encrypt_name(name)?;
        let to = secrets.names.encrypt_name(new_name)?;
        let side_created = write_side_file(to_dir.fd(), &to)?;
        if let Err(e) =
            backing::rename_at(from_dir.fd(), from.entry(), to_dir.fd(), to.entry(), flags)
        {
            if side_created {
                remove_side_file(to_dir.fd(), &to);
            }
            return Err(Errno::from(e));
        }
        // After an exchange both names still exist; otherwise the old name is gone (a
        // name moved to another directory keeps its backing name, but not its directory).
        if flags & libc::RENAME_EXCHANGE == 0 && (from != to || from_dir.id != to_dir.id) {
            remove_side_file(from_dir.fd(), &from);
        }
        Ok(())
    }

    pub fn open(&self, id: u64, flags: i32, caller: CallerIds) -> Result<Opened, Errno> {
        let secrets = self.keyring.get()?;
        let node = self.inodes.get(id)?;
        let write = flags & O_ACCMODE != libc::O_RDONLY;
        // With FUSE_ATOMIC_O_TRUNC the kernel leaves O_TRUNC to us even on an O_RDONLY open,
        // which truncates on Linux (the kernel has already checked write permission).
        let trunc = flags & libc::O_TRUNC != 0;
        if write || trunc {
            self.writable()?;
        }
        // Partial-unit writes read before they write, so a writable handle is O_RDWR.
        // O_APPEND is the kernel's business (it sends the offset), and O_DIRECT cannot
        // apply to a backing file whose units sit after a header.
        let access = if write || trunc {
            libc::O_RDWR
        } else {
            libc::O_RDONLY
        };
        let file = backing::reopen_quiet(node.fd(), access).map_err(Errno::from)?;
        // A damaged file fails to open: its size may read as 0, so the kernel would never
        // send the read that reports the damage.
        self.read_contents(&node, &file, &secrets, |_, _| Ok(()))?;
        if trunc {
            // The kernel leaves an atomic O_TRUNC entirely to the file system.
            self.drop_setid(&node, caller)?;
            self.truncate(&node, &file, 0, &secrets)?;
        }
        let direct_io = self.bypasses_page_cache(flags);
        Ok(Opened {
            fh: self.handles.insert(Handle::for_file(node, file, write)),
            direct_io,
        })
    }

    /// Reads into `buf` (the caller's, reused); returns the range of it to reply with.
    pub fn read(
        &self,
        fh: u64,
        offset: u64,
        size: u32,
        buf: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>, Errno> {
        let secrets = self.keyring.get()?;
        let handle = self.handles.get(fh)?;
        let (node, file) = (handle.node(), handle.file().ok_or(Errno::EISDIR)?);
        let range = self.read_contents(node, file, &secrets, |contents, len| match contents {
            Some(contents) => contents
                .read(offset, size as usize, len, buf)
                .map_err(Errno::from),
            None => {
                let n = len.saturating_sub(offset).min(size.into()) as usize;
                buf.clear();
                buf.resize(n, 0);
                Ok(0..n)
            }
        })?;
        self.mark_accessed(node, file);
        Ok(range)
    }

    /// A read through the mount marks the file accessed, as a read of a local file does;
    /// the daemon's own reads of the backing file do not (they go through O_NOATIME
    /// handles, [`backing::reopen_quiet`]). Only when relatime would update the access time
    /// (it is not after the last change, or a day old), by a one-byte read through a
    /// handle without O_NOATIME, so the backing mount's own atime policy decides.
    fn mark_accessed(&self, node: &Node, file: &File) {
        use std::os::unix::fs::{FileExt, MetadataExt};
        if self.options.read_only {
            return;
        }
        let Ok(meta) = file.metadata() else {
            return;
        };
        let atime = (meta.atime(), meta.atime_nsec());
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64);
        let stale = atime <= (meta.mtime(), meta.mtime_nsec())
            || atime <= (meta.ctime(), meta.ctime_nsec())
            || now - atime.0 >= 24 * 60 * 60;
        if stale {
            if let Ok(plain) = backing::reopen(node.fd(), libc::O_RDONLY | libc::O_NONBLOCK) {
                let _ = plain.read_at(&mut [0u8; 1], 0);
            }
        }
    }

    pub fn write(
        &self,
        fh: u64,
        offset: u64,
        data: &[u8],
        caller: CallerIds,
    ) -> Result<u32, Errno> {
        let secrets = self.keyring.get()?;
        let handle = self.handles.get(fh)?;
        let (node, file) = (handle.node(), handle.writable_file()?);
        if !data.is_empty() {
            self.drop_setid(node, caller)?;
        }
        let written = u32::try_from(data.len()).map_err(|_| Errno::EINVAL)?;
        // Writes that rewrite only their own bytes and keep the length go in parallel.
        let in_place =
            self.read_contents(node, file, &secrets, |contents, len| match contents {
                Some(c) if Contents::<File>::writes_in_place(c.format, offset, data.len(), len) => {
                    c.write(offset, data, len).map_err(Errno::from)?;
                    Ok(true)
                }
                _ => Ok(false),
            })?;
        if !in_place {
            self.write_contents(node, file, &secrets, |contents, len| {
                contents.write(offset, data, len).map_err(Errno::from)
            })?;
        }
        Ok(written)
    }

    /// Runs `f` on a file's contents and plaintext length under the shared content lock;
    /// `None` for a file without a header, which reads as zeros.
    fn read_contents<R>(
        &self,
        node: &Node,
        file: &File,
        secrets: &VolumeSecrets,
        f: impl FnOnce(Option<&Contents<'_>>, u64) -> Result<R, Errno>,
    ) -> Result<R, Errno> {
        let _shared = node.content_lock.read().map_err(|_| Errno::EIO)?;
        let key = node.key(file, &secrets.dek, self.options.format)?;
        let format = key
            .as_ref()
            .map_or(self.options.format.new_files(), |k| k.format);
        let len = plain_len(format, node, file)?;
        let contents = key.as_ref().map(|key| Contents {
            file,
            cipher: &key.cipher,
            format: key.format,
        });
        f(contents.as_ref(), len)
    }

    /// Runs `f` on a file's contents and plaintext length under the exclusive content
    /// lock, writing a file header first if the file has none.
    fn write_contents<R>(
        &self,
        node: &Node,
        file: &File,
        secrets: &VolumeSecrets,
        f: impl FnOnce(&Contents<'_>, u64) -> Result<R, Errno>,
    ) -> Result<R, Errno> {
        let _exclusive = node.content_lock.write().map_err(|_| Errno::EIO)?;
        let key = node.key_or_create(file, &secrets.dek, self.options.format)?;
        let len = plain_len(key.format, node, file)?;
        f(
            &Contents {
                file,
                cipher: &key.cipher,
                format: key.format,
            },
            len,
        )
    }

    /// Whether a handle opened with `flags` bypasses the kernel page cache. A write-only
    /// handle does by default: in the page cache its writes would be copied once more, into
    /// pages nobody reads through it (a Redis AOF or RDB file being written), and every
    /// write reaches the daemon anyway, as there is no writeback cache.
    fn bypasses_page_cache(&self, flags: i32) -> bool {
        self.options.direct_io || flags & libc::O_DIRECT != 0 || flags & O_ACCMODE == libc::O_WRONLY
    }

    pub fn fallocate(&self, fh: u64, offset: u64, length: u64, mode: i32) -> Result<(), Errno> {
        let secrets = self.keyring.get()?;
        let handle = self.handles.get(fh)?;
        let (node, file) = (handle.node(), handle.writable_file()?);
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let zeroing = mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE);
        match mode & !libc::FALLOC_FL_KEEP_SIZE {
            0 | libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE => {}
            _ => return Err(Errno::EOPNOTSUPP),
        }
        if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 && !keep_size {
            return Err(Errno::EOPNOTSUPP);
        }
        self.write_contents(node, file, &secrets, |contents, len| {
            if zeroing != 0 {
                contents.zero(offset..end, len).map_err(Errno::from)?;
            }
            if !keep_size && end > len {
                contents.resize(len, end).map_err(Errno::from)?;
            }
            if zeroing == 0 {
                // Allocated backing blocks read as zeros, i.e. as holes: contents unchanged.
                backing::fallocate(
                    file,
                    libc::FALLOC_FL_KEEP_SIZE,
                    contents.format.data_offset() + offset,
                    length,
                )
                .map_err(Errno::from)?;
            }
            Ok(())
        })
    }

    pub fn fsync(&self, fh: u64, datasync: bool) -> Result<(), Errno> {
        self.keyring.get()?;
        let handle = self.handles.get(fh)?;
        let file = handle.sync_target();
        if datasync {
            file.sync_data()
        } else {
            file.sync_all()
        }
        .map_err(Errno::from)
    }

    pub fn release(&self, fh: u64) {
        self.handles.remove(fh);
    }

    pub fn opendir(&self, id: u64) -> Result<u64, Errno> {
        let secrets = self.keyring.get()?;
        let node = self.inodes.get(id)?;
        let dir = backing::open_at(
            node.fd(),
            OsStr::new("."),
            libc::O_RDONLY | libc::O_DIRECTORY,
            0,
        )
        .map_err(Errno::from)?;
        let mut entries = Vec::new();
        for raw in backing::read_dir(node.fd()).map_err(Errno::from)? {
            let name = match secrets.names.classify(&raw.name) {
                Ok(BackingEntry::Named(name)) => name,
                Ok(BackingEntry::Long) => {
                    match read_long_name(node.fd(), &raw.name, &secrets.names) {
                        Some(name) => name,
                        None => continue,
                    }
                }
                Ok(BackingEntry::Internal) => continue,
                Err(e) => {
                    tracing::warn!(dir = %backing_path(node.fd()), entry = ?raw.name, "skipping backing entry: {e}");
                    continue;
                }
            };
            entries.push(DirEntry {
                name,
                backing: raw.name,
                ino: raw.ino,
                kind: attr::kind_from_dtype(raw.d_type),
            });
        }
        Ok(self
            .handles
            .insert(Handle::for_dir(node, File::from(dir), entries)))
    }

    /// Entries from `offset` on, for plain readdir: (offset of next, backing ino, kind, name).
    pub fn dir_entries(&self, fh: u64) -> Result<Arc<Handle>, Errno> {
        self.keyring.get()?;
        self.handles.get(fh)
    }

    /// For readdirplus: looks up one listed entry, registering a kernel reference.
    pub fn lookup_listed(&self, dir: &Handle, entry: &DirEntry) -> Result<Entry, Errno> {
        self.keyring.get()?;
        self.intern(dir.node().fd(), &entry.backing)
    }

    pub fn statfs(&self) -> Result<FsStats, Errno> {
        let root = self.inodes.get(inode::ROOT_ID)?;
        let st = backing::statvfs(root.fd()).map_err(Errno::from)?;
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

/// Extended attributes. `user.`, `trusted.` and `security.` attributes are stored in the
/// backing object's attribute of the same namespace, with name and value encrypted under
/// the names key (docs/FORMAT.md, "Extended attributes"); the kernel has checked the
/// caller's right to each namespace. POSIX ACLs (`system.posix_acl_access`,
/// `system.posix_acl_default`) are passed through: the backing file system applies them
/// (to the mode, and to new objects in a directory with a default ACL) and the kernel
/// enforces them. Each operation is one backing call, so atomic per attribute.
impl XtsFs {
    pub fn getxattr(&self, id: u64, name: &OsStr, size: u32) -> Result<XattrReply, Errno> {
        let secrets = self.keyring.get()?;
        let node = self.inodes.get(id)?;
        let name = name.as_bytes();
        let names = &secrets.names;
        if is_posix_acl(name) {
            return backing_xattr_reply(backing::getxattr(node.fd(), name, size as usize), size);
        }
        let stored_name = xattr_backing_name(names, name)?;
        let max = match size {
            0 => 0,
            size => size as usize + names.xattr_value_overhead(),
        };
        let (stored, len) = backing::getxattr(node.fd(), &stored_name, max).map_err(Errno::from)?;
        if size == 0 {
            return Ok(XattrReply::Size(
                u32::try_from(names.xattr_value_len(len)).map_err(|_| Errno::E2BIG)?,
            ));
        }
        let value = names
            .decrypt_xattr_value(name, &stored)
            .map_err(|e| corrupt(node.fd(), &format_args!("extended attribute: {e}")))?;
        Ok(XattrReply::Data(value))
    }

    /// The names, as the backing file system lists them to the caller: `trusted.` ones
    /// only to a caller with CAP_SYS_ADMIN (the daemon itself always sees them).
    pub fn listxattr(&self, id: u64, size: u32, caller: CallerIds) -> Result<XattrReply, Errno> {
        let secrets = self.keyring.get()?;
        let node = self.inodes.get(id)?;
        let mut list = Vec::new();
        let mut sees_trusted = None;
        for stored in backing::listxattr(node.fd()).map_err(Errno::from)? {
            let name = if is_posix_acl(&stored) {
                Some(stored)
            } else {
                secrets.names.decrypt_xattr_name(&stored)
            };
            let mut hidden = |name: &[u8]| {
                name.starts_with(b"trusted.")
                    && !*sees_trusted.get_or_insert_with(|| caller.sees_trusted())
            };
            if let Some(name) = name.filter(|name| !hidden(name)) {
                list.extend_from_slice(&name);
                list.push(0);
            }
        }
        let len = u32::try_from(list.len()).map_err(|_| Errno::E2BIG)?;
        match size {
            0 => Ok(XattrReply::Size(len)),
            _ if len > size => Err(Errno::ERANGE),
            _ => Ok(XattrReply::Data(list)),
        }
    }

    pub fn setxattr(
        &self,
        id: u64,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        caller: CallerIds,
    ) -> Result<(), Errno> {
        let secrets = self.keyring.get()?;
        self.writable()?;
        let node = self.inodes.get(id)?;
        let name = name.as_bytes();
        if flags & !(libc::XATTR_CREATE | libc::XATTR_REPLACE) != 0 {
            return Err(Errno::EINVAL);
        }
        if is_posix_acl(name) {
            self.may_set_acl(&node, caller)?;
            backing::setxattr(node.fd(), name, value, flags).map_err(Errno::from)?;
            // Setting an access ACL may change the mode.
            return self.attr_of(&node).map(drop);
        }
        let stored_name = xattr_backing_name(&secrets.names, name)?;
        let stored = secrets.names.encrypt_xattr_value(name, value)?;
        backing::setxattr(node.fd(), &stored_name, &stored, flags).map_err(Errno::from)
    }

    pub fn removexattr(&self, id: u64, name: &OsStr, caller: CallerIds) -> Result<(), Errno> {
        let secrets = self.keyring.get()?;
        self.writable()?;
        let node = self.inodes.get(id)?;
        let name = name.as_bytes();
        if is_posix_acl(name) {
            self.may_set_acl(&node, caller)?;
            backing::removexattr(node.fd(), name).map_err(Errno::from)?;
            return self.attr_of(&node).map(drop);
        }
        let stored_name = xattr_backing_name(&secrets.names, name)?;
        backing::removexattr(node.fd(), &stored_name).map_err(Errno::from)
    }

    /// Only the owner (or root) may set or remove a POSIX ACL, as on a local file
    /// system; the daemon's own call in the backing directory would always be allowed.
    fn may_set_acl(&self, node: &Node, caller: CallerIds) -> Result<(), Errno> {
        let st = backing::stat(node.fd()).map_err(Errno::from)?;
        if caller.uid == 0 || caller.uid == st.st_uid {
            Ok(())
        } else {
            Err(Errno::EPERM)
        }
    }
}

fn is_posix_acl(name: &[u8]) -> bool {
    name == b"system.posix_acl_access" || name == b"system.posix_acl_default"
}

/// The backing name of an attribute xtsfs stores; EOPNOTSUPP for a namespace it does not
/// serve, ERANGE for a name too long to encrypt within the backing limit.
fn xattr_backing_name(names: &NameCipher, name: &[u8]) -> Result<Vec<u8>, Errno> {
    if !NameCipher::stores_xattr(name) {
        return Err(Errno::EOPNOTSUPP);
    }
    names.encrypt_xattr_name(name).map_err(|e| match e {
        crate::crypto::names::NameError::TooLong => Errno::ERANGE,
        e => Errno::from(e),
    })
}

/// A getxattr answer from a passed-through backing attribute.
fn backing_xattr_reply(
    result: std::io::Result<(Vec<u8>, usize)>,
    size: u32,
) -> Result<XattrReply, Errno> {
    let (value, len) = result.map_err(Errno::from)?;
    if size == 0 {
        Ok(XattrReply::Size(
            u32::try_from(len).map_err(|_| Errno::E2BIG)?,
        ))
    } else {
        Ok(XattrReply::Data(value))
    }
}

/// The plaintext length of an open backing file of `format`.
fn plain_len(format: FileFormat, node: &Node, file: &File) -> Result<u64, Errno> {
    let backing_len = file.metadata().map_err(Errno::from)?.len();
    format.plaintext_len(backing_len).ok_or_else(|| {
        corrupt(
            node.fd(),
            &format_args!(
                "{backing_len} bytes is no length of a format {} file",
                format.version()
            ),
        )
    })
}

/// Writes a long name's side file; returns whether it was newly created.
fn write_side_file(dir: BorrowedFd<'_>, name: &BackingName) -> Result<bool, Errno> {
    let BackingName::Long {
        side_file, encoded, ..
    } = name
    else {
        return Ok(false);
    };
    use std::io::Write;
    match backing::open_at(
        dir,
        side_file,
        libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY,
        0o600,
    ) {
        Ok(fd) => {
            // Durable before the entry that needs it is made: directory operations reach
            // the disk in order, so a crash can keep the entry only with the whole name.
            let side = File::from(fd);
            (&side)
                .write_all(encoded)
                .and_then(|()| side.sync_data())
                .map_err(Errno::from)?;
            Ok(true)
        }
        // The side file of a name is the same bytes whatever links to it.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(Errno::from(e)),
    }
}

fn remove_side_file(dir: BorrowedFd<'_>, name: &BackingName) {
    if let BackingName::Long { side_file, .. } = name {
        if let Err(e) = backing::unlink_at(dir, side_file, 0) {
            tracing::warn!(dir = %backing_path(dir), side_file = ?side_file, "could not remove long-name side file: {e}");
        }
    }
}

fn read_long_name(dir: BorrowedFd<'_>, entry: &OsStr, names: &NameCipher) -> Option<OsString> {
    use std::io::Read;
    let side = OsString::from(format!(
        "{}{}",
        entry.to_string_lossy(),
        crate::crypto::names::LONG_NAME_SIDE_SUFFIX
    ));
    let mut encoded = Vec::new();
    // O_NONBLOCK: a FIFO planted in place of the side file must not stall the listing.
    let result = backing::open_at(dir, &side, libc::O_RDONLY | libc::O_NONBLOCK, 0)
        .and_then(|fd| File::from(fd).take(4096).read_to_end(&mut encoded))
        .map_err(|e| e.to_string())
        .and_then(|_| {
            names
                .decrypt_long(entry, &encoded)
                .map_err(|e| e.to_string())
        });
    match result {
        Ok(name) => Some(name),
        Err(e) => {
            tracing::warn!(dir = %backing_path(dir), entry = ?entry, "skipping long-name entry: {e}");
            None
        }
    }
}
