//! The FUSE floor: a file system that keeps only file sizes, discards what is written and
//! reads zeros. It negotiates the connection exactly as xtsfs does (same request sizes,
//! threads and readahead), so `scripts/bench.py` runs fio on it as the fastest any FUSE
//! file system can be on the machine; what xtsfs falls short of it is what xtsfs's own
//! work (encryption, backing I/O) costs.
//!
//! Usage: fuse_floor MOUNTPOINT (stays in the foreground; unmount to stop it).

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo,
    KernelConfig, LockOwner, MountOption, OpenFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyEmpty,
    ReplyEntry, ReplyOpen, ReplyWrite, Request, TimeOrNow, WriteFlags,
};

const TTL: Duration = Duration::from_secs(1);
const ROOT: u64 = 1;
/// Reads are answered from here: no request is larger than 1 MiB.
static ZEROS: [u8; 1 << 20] = [0; 1 << 20];

#[derive(Default)]
struct Files {
    names: HashMap<OsString, u64>,
    sizes: HashMap<u64, u64>,
    created: u64,
}

#[derive(Default)]
struct Floor {
    files: Mutex<Files>,
}

fn attr(ino: u64, size: u64) -> FileAttr {
    let (kind, perm) = if ino == ROOT {
        (FileType::Directory, 0o755)
    } else {
        (FileType::RegularFile, 0o644)
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks: size.div_ceil(512),
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind,
        perm,
        nlink: 1,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

fn reply_attr(reply: ReplyAttr, attr: Result<FileAttr, Errno>) {
    match attr {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(e) => reply.error(e),
    }
}

impl Floor {
    fn files(&self) -> std::sync::MutexGuard<'_, Files> {
        self.files
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn attr_of(&self, ino: u64) -> Result<FileAttr, Errno> {
        if ino == ROOT {
            return Ok(attr(ROOT, 0));
        }
        let size = *self.files().sizes.get(&ino).ok_or(Errno::ENOENT)?;
        Ok(attr(ino, size))
    }
}

impl Filesystem for Floor {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        xtsfs::fs::adapter::negotiate(config);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let ino = (parent.0 == ROOT)
            .then(|| self.files().names.get(name).copied())
            .flatten();
        match ino.map(|ino| self.attr_of(ino)) {
            Some(Ok(attr)) => reply.entry(&TTL, &attr, Generation(0)),
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.attr_of(ino.0));
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<TimeOrNow>,
        _mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if let (Some(size), Some(current)) = (size, self.files().sizes.get_mut(&ino.0)) {
            *current = size;
        }
        reply_attr(reply, self.attr_of(ino.0));
    }

    fn create(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        _mode: u32,
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        if parent.0 != ROOT {
            return reply.error(Errno::ENOENT);
        }
        let ino = {
            let mut files = self.files();
            files.created += 1;
            let ino = ROOT + files.created;
            files.names.insert(name.to_owned(), ino);
            files.sizes.insert(ino, 0);
            ino
        };
        reply.created(
            &TTL,
            &attr(ino, 0),
            Generation(0),
            FileHandle(0),
            FopenFlags::empty(),
        );
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let mut files = self.files();
        match files.names.remove(name) {
            Some(ino) => {
                files.sizes.remove(&ino);
                reply.ok();
            }
            None => reply.error(Errno::ENOENT),
        }
    }

    fn open(&self, _req: &Request, _ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        reply.opened(FileHandle(0), FopenFlags::empty());
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let len = self.files().sizes.get(&ino.0).copied().unwrap_or(0);
        let n = len.saturating_sub(offset).min(size as u64) as usize;
        reply.data(&ZEROS[..n.min(ZEROS.len())]);
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if let Some(size) = self.files().sizes.get_mut(&ino.0) {
            *size = (*size).max(offset + data.len() as u64);
        }
        reply.written(data.len() as u32);
    }

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

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }
}

fn main() -> std::io::Result<()> {
    let mountpoint = std::env::args_os()
        .nth(1)
        .ok_or_else(|| std::io::Error::other("usage: fuse_floor MOUNTPOINT"))?;
    let mut config = fuser::Config::default();
    config.mount_options = vec![MountOption::FSName("fuse-floor".into())];
    config.n_threads = Some(xtsfs::mount::DEFAULT_THREADS.into());
    config.clone_fd = true;
    let session = fuser::Session::new(Floor::default(), &mountpoint, &config)?.spawn()?;
    // After the handshake is served: looking up the mount point waits for it.
    xtsfs::mount::raise_readahead(mountpoint.as_ref());
    session.join()
}
