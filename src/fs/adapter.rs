//! The FUSE adapter: unpacks each request, calls [`XtsFs`], and turns its result into a
//! reply (its error into the errno [`super::errno`] maps it to). No filesystem logic lives
//! here.

use std::ffi::OsStr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    BsdFileFlags, FileAttr, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
    KernelConfig, LockOwner, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData,
    ReplyDirectory, ReplyDirectoryPlus, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyStatfs, ReplyWrite,
    ReplyXattr, Request, TimeOrNow, WriteFlags,
};

use super::{CallerIds, Entry, FsResult, Opened, SetAttr, XattrReply, XtsFs};
use crate::fs::attr::Times;

/// How long the kernel may cache attributes and names. All changes go through this
/// daemon, so the kernel's view only goes stale if someone edits the backing dir.
const TTL: Duration = Duration::from_secs(1);
/// Largest write the kernel sends in one request.
const MAX_WRITE: u32 = 1 << 20;

pub struct FuseAdapter {
    fs: Arc<XtsFs>,
}

impl FuseAdapter {
    pub fn new(fs: Arc<XtsFs>) -> Self {
        FuseAdapter { fs }
    }
}

fn caller(req: &Request) -> CallerIds {
    CallerIds {
        uid: req.uid(),
        gid: req.gid(),
        pid: req.pid(),
    }
}

fn reply_entry(reply: ReplyEntry, result: FsResult<Entry>) {
    match result {
        Ok(entry) => reply.entry(&TTL, &entry.attr, Generation(0)),
        Err(e) => reply.error(e.into()),
    }
}

fn reply_attr(reply: ReplyAttr, result: FsResult<FileAttr>) {
    match result {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(e) => reply.error(e.into()),
    }
}

fn reply_empty(reply: ReplyEmpty, result: FsResult<()>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e.into()),
    }
}

fn reply_open(reply: ReplyOpen, result: FsResult<Opened>) {
    match result {
        Ok(opened) => reply.opened(FileHandle(opened.fh), fopen_flags(&opened)),
        Err(e) => reply.error(e.into()),
    }
}

fn fopen_flags(opened: &Opened) -> FopenFlags {
    if opened.direct_io {
        // Direct writes that stay inside the file then take the kernel's inode lock
        // shared, so writers to one file run in parallel. The daemon orders what must be
        // ordered: a write that rewrites only whole blocks in place runs under the shared
        // content lock, and anything that reads part of a block first, or changes the
        // length, under the exclusive one (src/fs/io.rs). The kernel keeps the lock
        // exclusive for appends, writes past the end, and while any handle of the file
        // uses the page cache.
        FopenFlags::FOPEN_DIRECT_IO | FopenFlags::FOPEN_PARALLEL_DIRECT_WRITES
    } else {
        // The plaintext pages stay cached from one open to the next: every change of
        // the file goes through the kernel, which keeps them consistent (a direct write
        // invalidates the pages it covers), and they are the file's only cached copy
        // (src/fs/behind.rs), so dropping them at each open would read the file
        // from the disk again.
        FopenFlags::FOPEN_KEEP_CACHE
    }
}

/// The connection settings xtsfs asks the kernel for at the FUSE handshake. Public so
/// the benchmark's do-nothing FUSE file system (examples/fuse_floor/) runs with the same.
pub fn negotiate(config: &mut KernelConfig) {
    let _ = config.set_max_write(MAX_WRITE);
    let _ = config.set_max_readahead(MAX_WRITE);
    let wanted = InitFlags::FUSE_DO_READDIRPLUS
        | InitFlags::FUSE_READDIRPLUS_AUTO
        | InitFlags::FUSE_ATOMIC_O_TRUNC
        | InitFlags::FUSE_PARALLEL_DIROPS
        | InitFlags::FUSE_ASYNC_DIO
        // Shared mmap of a file opened with --direct-io.
        | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP
        // The kernel enforces POSIX ACLs (the backing file system stores them) and leaves
        // the umask to us: a new object's mode comes from the backing file system, which
        // applies the caller's umask, or the parent's default ACL instead.
        | InitFlags::FUSE_POSIX_ACL
        | InitFlags::FUSE_DONT_MASK
        // The kernel then marks the mount SB_NOSEC: a buffered write no longer sends a
        // GETXATTR of security.capability first, unless a security.* attribute was set
        // or the file's attributes refreshed since the kernel last looked (one round
        // trip less per write, under the inode lock; docs/PERFORMANCE.md, step 18). In
        // exchange the file system clears set-id bits on write, truncate and O_TRUNC
        // (XtsFs::drop_setid, by the caller's ids) and on chown (the backing chown,
        // also for a chown that changes nothing: XtsFs::setattr), and removes a file
        // capability on a direct write (XtsFs::drop_capability); the kernel still
        // removes one on buffered writes and truncates. tests/posix checks each against
        // the local file system.
        | InitFlags::FUSE_HANDLE_KILLPRIV_V2;
    let _ = config.add_capabilities(wanted & config.capabilities());
}

impl Filesystem for FuseAdapter {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        negotiate(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        reply_entry(reply, self.fs.lookup(parent.0, name));
    }

    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        self.fs.forget(ino.0, nlookup);
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.fs.getattr(ino.0));
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let change = SetAttr {
            mode,
            uid,
            gid,
            size,
            times: Times { atime, mtime },
            fh: fh.map(|fh| fh.0),
            caller: Some(caller(req)),
        };
        reply_attr(reply, self.fs.setattr(ino.0, change));
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        match self.fs.readlink(ino.0) {
            Ok(target) => reply.data(&target),
            Err(e) => reply.error(e.into()),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.fs
                .mknod(parent.0, name, mode, umask, rdev, caller(req)),
        );
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.fs.mkdir(parent.0, name, mode, umask, caller(req)),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.unlink(parent.0, name));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.rmdir(parent.0, name));
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        reply_entry(
            reply,
            self.fs
                .symlink(parent.0, link_name, target.as_os_str(), caller(req)),
        );
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.fs
                .rename(parent.0, name, newparent.0, newname, flags.bits()),
        );
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        reply_entry(reply, self.fs.link(ino.0, newparent.0, newname));
    }

    fn open(&self, req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        reply_open(reply, self.fs.open(ino.0, flags.0, caller(req)));
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        crate::fs::contents::with_thread_buffer(|buf| match self.fs.read(fh.0, offset, size, buf) {
            Ok(range) => reply.data(buf.get(range).unwrap_or_default()),
            Err(e) => reply.error(e.into()),
        })
    }

    fn write(
        &self,
        req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.fs.write(fh.0, offset, data, caller(req)) {
            Ok(written) => reply.written(written),
            Err(e) => reply.error(e.into()),
        }
    }

    /// Writes reach the backing file before they are acknowledged, so there is nothing
    /// buffered here to flush.
    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fsync(fh.0, datasync));
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.fs.opendir(ino.0) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e.into()),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listed = self
            .fs
            .readdir(ino.0, fh.0, offset, |ino, next, kind, name| {
                reply.add(INodeNo(ino), next, kind, name)
            });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn readdirplus(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectoryPlus,
    ) {
        let listed = self
            .fs
            .readdirplus(ino.0, fh.0, offset, |name, next, attr| {
                reply.add(attr.ino, next, name, &TTL, attr, Generation(0))
            });
        match listed {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e.into()),
        }
    }

    fn releasedir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.fs.release(fh.0);
        reply.ok();
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fsync(fh.0, datasync));
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.fs.statfs() {
            Ok(s) => reply.statfs(
                s.blocks, s.bfree, s.bavail, s.files, s.ffree, s.bsize, 255, s.frsize,
            ),
            Err(e) => reply.error(e.into()),
        }
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        match self
            .fs
            .create(parent.0, name, mode, umask, flags, caller(req))
        {
            Ok((entry, opened)) => reply.created(
                &TTL,
                &entry.attr,
                Generation(0),
                FileHandle(opened.fh),
                fopen_flags(&opened),
            ),
            Err(e) => reply.error(e.into()),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        reply_empty(reply, self.fs.fallocate(fh.0, offset, length, mode));
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        reply_empty(
            reply,
            self.fs.setxattr(ino.0, name, value, flags, caller(req)),
        );
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, self.fs.getxattr(ino.0, name, size));
    }

    fn listxattr(&self, req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        reply_xattr(reply, self.fs.listxattr(ino.0, size, caller(req)));
    }

    fn removexattr(&self, req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        reply_empty(reply, self.fs.removexattr(ino.0, name, caller(req)));
    }
}

fn reply_xattr(reply: ReplyXattr, result: FsResult<XattrReply>) {
    match result {
        Ok(XattrReply::Size(size)) => reply.size(size),
        Ok(XattrReply::Data(data)) => reply.data(&data),
        Err(e) => reply.error(e.into()),
    }
}
