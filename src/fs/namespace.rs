//! Names: looking them up, making every kind of object (the one place the caller's mode
//! and umask apply), links, removal and rename, with the long-name side files that go
//! with names too long to store.

use std::ffi::OsStr;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;

use super::errno::{backing_path, corrupt, FsError, FsResult};
use super::handle::Handle;
use super::{backing, CallerIds, Entry, Opened, XtsFs};
use crate::crypto::names::BackingName;

/// The mode a new object is asked for and the caller's umask.
#[derive(Clone, Copy)]
struct NewMode {
    mode: u32,
    umask: u32,
}

impl NewMode {
    /// A symlink's mode is always 0777, and a hard link keeps its object's: no umask.
    const UNMASKED: NewMode = NewMode {
        mode: 0o777,
        umask: 0,
    };

    /// The permission bits (with set-id and sticky) the backing object is made with.
    fn permissions(self) -> u32 {
        self.mode & 0o7777
    }
}

impl XtsFs {
    pub fn lookup(&self, parent: u64, name: &OsStr) -> FsResult<Entry> {
        let secrets = self.keyring.get()?;
        let parent = self.inodes.get(parent)?;
        let backing_name = secrets.names.encrypt_name(name)?;
        self.intern(parent.fd(), backing_name.entry())
    }

    /// Looks up a backing entry and registers a kernel reference to it.
    pub(super) fn intern(&self, dir: BorrowedFd<'_>, entry: &OsStr) -> FsResult<Entry> {
        let fd = backing::open_path(dir, entry)?;
        self.register(fd)
    }

    /// Registers a kernel reference to the object an O_PATH fd names.
    fn register(&self, fd: OwnedFd) -> FsResult<Entry> {
        let st = backing::stat(fd.as_fd())?;
        let node = self.inodes.intern(fd, &st)?;
        Ok(Entry {
            attr: self.file_attr(&node, &st)?,
        })
    }

    /// The kernel dropped `count` references to node `id`.
    pub fn forget(&self, id: u64, count: u64) {
        self.inodes.forget(id, count);
    }

    pub fn readlink(&self, id: u64) -> FsResult<Vec<u8>> {
        let secrets = self.keyring.get()?;
        let node = self.inodes.get(id)?;
        let stored = backing::readlink(node.fd())?;
        secrets
            .names
            .decrypt_target(&stored)
            .map_err(|e| corrupt(node.fd(), &e))
    }

    /// Creates a directory entry through `make` (given the directory, the backing name
    /// and the permission bits), with its long-name side file if it needs one, hands it
    /// to the caller, and registers it; returns it with what `make` returned. The one place a new object's mode is made: the
    /// backing file system applies the caller's umask, or the parent's default ACL
    /// instead (see [`backing::with_umask`]), as for every new object.
    fn make_entry<T>(
        &self,
        parent: u64,
        name: &OsStr,
        caller: CallerIds,
        new: NewMode,
        make: impl FnOnce(BorrowedFd<'_>, &OsStr, u32) -> std::io::Result<T>,
    ) -> FsResult<(Entry, T)> {
        let secrets = self.keyring.get()?;
        self.writable()?;
        let parent = self.inodes.get(parent)?;
        let backing_name = secrets.names.encrypt_name(name)?;
        let side_created = write_side_file(parent.fd(), &backing_name)?;
        let made = backing::with_umask(new.umask, || {
            make(parent.fd(), backing_name.entry(), new.permissions())
        });
        let made = match made {
            Ok(made) => made,
            Err(e) => {
                if side_created {
                    remove_side_file(parent.fd(), &backing_name);
                }
                return Err(FsError::from(e));
            }
        };
        let fd = backing::open_path(parent.fd(), backing_name.entry())?;
        caller.apply(parent.fd(), fd.as_fd())?;
        Ok((self.register(fd)?, made))
    }

    /// A new directory, with the caller's `mode` and `umask`.
    pub fn mkdir(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        caller: CallerIds,
    ) -> FsResult<Entry> {
        let new = NewMode { mode, umask };
        self.make_entry(parent, name, caller, new, backing::mkdir_at)
            .map(|(entry, ())| entry)
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
    ) -> FsResult<Entry> {
        let kind = mode & libc::S_IFMT;
        let new = NewMode { mode, umask };
        let made = match kind {
            libc::S_IFIFO | libc::S_IFSOCK => {
                self.make_entry(parent, name, caller, new, |dir, entry, perm| {
                    backing::mknod_at(dir, entry, kind | perm, 0)
                })
            }
            libc::S_IFCHR | libc::S_IFBLK => {
                self.make_entry(parent, name, caller, new, |dir, entry, perm| {
                    backing::mknod_at(dir, entry, kind | perm, backing::dev_from_fuse(rdev))
                })
            }
            libc::S_IFREG => self.make_entry(parent, name, caller, new, |dir, entry, perm| {
                let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
                backing::open_at(dir, entry, flags, perm).map(drop)
            }),
            _ => Err(FsError::Invalid),
        };
        made.map(|(entry, ())| entry)
    }

    pub fn symlink(
        &self,
        parent: u64,
        name: &OsStr,
        target: &OsStr,
        caller: CallerIds,
    ) -> FsResult<Entry> {
        let stored = self
            .keyring
            .get()?
            .names
            .encrypt_target(target.as_bytes())?;
        self.make_entry(parent, name, caller, NewMode::UNMASKED, |dir, entry, _| {
            backing::symlink_at(&stored, dir, entry)
        })
        .map(|(entry, ())| entry)
    }

    pub fn link(&self, id: u64, new_parent: u64, new_name: &OsStr) -> FsResult<Entry> {
        let node = self.inodes.get(id)?;
        // The kernel holds a reference to the node; the new link shares it.
        let keep = CallerIds::KEEP;
        self.make_entry(
            new_parent,
            new_name,
            keep,
            NewMode::UNMASKED,
            |dir, entry, _| backing::link_at(node.fd(), dir, entry),
        )
        .map(|(entry, ())| entry)
    }

    /// A new regular file, opened.
    pub fn create(
        &self,
        parent: u64,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        caller: CallerIds,
    ) -> FsResult<(Entry, Opened)> {
        let new = NewMode { mode, umask };
        let (entry, file) = self.make_entry(parent, name, caller, new, |dir, entry, perm| {
            let flags = libc::O_CREAT | libc::O_RDWR | (flags & libc::O_EXCL);
            backing::open_at_quiet(dir, entry, flags, perm).map(File::from)
        })?;
        let node = self.inodes.get(entry.attr.ino.0)?;
        let direct_io = self.bypasses_page_cache(flags);
        let fh = self
            .handles
            .insert(Handle::for_file(node, file, true, !direct_io))?;
        Ok((entry, Opened { fh, direct_io }))
    }

    pub fn unlink(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, 0)
    }

    pub fn rmdir(&self, parent: u64, name: &OsStr) -> FsResult<()> {
        self.remove(parent, name, libc::AT_REMOVEDIR)
    }

    fn remove(&self, parent: u64, name: &OsStr, flags: i32) -> FsResult<()> {
        let secrets = self.keyring.get()?;
        self.writable()?;
        let parent = self.inodes.get(parent)?;
        let backing_name = secrets.names.encrypt_name(name)?;
        backing::unlink_at(parent.fd(), backing_name.entry(), flags)?;
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
    ) -> FsResult<()> {
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
            return Err(FsError::from(e));
        }
        // After an exchange both names still exist; otherwise the old name is gone (a
        // name moved to another directory keeps its backing name, but not its directory).
        if flags & libc::RENAME_EXCHANGE == 0 && (from != to || from_dir.id != to_dir.id) {
            remove_side_file(from_dir.fd(), &from);
        }
        Ok(())
    }
}

/// Writes a long name's side file; returns whether it was newly created.
fn write_side_file(dir: BorrowedFd<'_>, name: &BackingName) -> FsResult<bool> {
    let BackingName::Long {
        side_file, encoded, ..
    } = name
    else {
        return Ok(false);
    };
    use std::io::Write;
    let flags = libc::O_CREAT | libc::O_EXCL | libc::O_WRONLY;
    match backing::open_at(dir, side_file, flags, 0o600) {
        Ok(fd) => {
            // Durable before the entry that needs it is made: directory operations reach
            // the disk in order, so a crash can keep the entry only with the whole name.
            let side = File::from(fd);
            (&side).write_all(encoded)?;
            side.sync_data()?;
            Ok(true)
        }
        // The side file of a name is the same bytes whatever links to it.
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(false),
        Err(e) => Err(FsError::from(e)),
    }
}

/// Removes a long name's side file, after its entry went; a failure only leaves a stray
/// file, so it is logged, not returned.
fn remove_side_file(dir: BorrowedFd<'_>, name: &BackingName) {
    if let BackingName::Long { side_file, .. } = name {
        if let Err(e) = backing::unlink_at(dir, side_file, 0) {
            tracing::warn!(dir = %backing_path(dir), side_file = ?side_file, "could not remove long-name side file: {e}");
        }
    }
}
