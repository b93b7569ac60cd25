//! The FUSE floor: a file system that keeps only file sizes, discards what is written and
//! reads zeros. It negotiates the connection exactly as xtsfs does (same request sizes,
//! threads and readahead), so `scripts/bench.py` runs fio on it as the fastest any FUSE
//! file system can be on the machine; what xtsfs falls short of it is what xtsfs's own
//! work (encryption, backing I/O) costs.
//!
//! With `--io-uring` it serves requests over FUSE-over-io_uring instead of `/dev/fuse`
//! reads (uring.rs), to measure that transport's ceiling (docs/PERFORMANCE.md, step 14).
//!
//! Usage: fuse_floor MOUNTPOINT [--io-uring [--sched-idle]]
//! (stays in the foreground; unmount to stop it).

mod uring;

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, Generation, INodeNo, InitFlags,
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

/// The floor's state, shared by both transports: file names and sizes, nothing else.
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

    fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        let ino = (parent == ROOT)
            .then(|| self.files().names.get(name).copied())
            .flatten()
            .ok_or(Errno::ENOENT)?;
        self.attr_of(ino)
    }

    fn set_size(&self, ino: u64, size: Option<u64>) -> Result<FileAttr, Errno> {
        if let (Some(size), Some(current)) = (size, self.files().sizes.get_mut(&ino)) {
            *current = size;
        }
        self.attr_of(ino)
    }

    fn create(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        if parent != ROOT {
            return Err(Errno::ENOENT);
        }
        let mut files = self.files();
        files.created += 1;
        let ino = ROOT + files.created;
        files.names.insert(name.to_owned(), ino);
        files.sizes.insert(ino, 0);
        Ok(attr(ino, 0))
    }

    fn unlink(&self, name: &OsStr) -> Result<(), Errno> {
        let mut files = self.files();
        let ino = files.names.remove(name).ok_or(Errno::ENOENT)?;
        files.sizes.remove(&ino);
        Ok(())
    }

    /// The zeros a read of `size` bytes at `offset` returns.
    fn read(&self, ino: u64, offset: u64, size: u32) -> &'static [u8] {
        let len = self.files().sizes.get(&ino).copied().unwrap_or(0);
        let n = len.saturating_sub(offset).min(size as u64) as usize;
        &ZEROS[..n.min(ZEROS.len())]
    }

    fn write(&self, ino: u64, offset: u64, size: u32) -> u32 {
        if let Some(current) = self.files().sizes.get_mut(&ino) {
            *current = (*current).max(offset + size as u64);
        }
        size
    }
}

/// The `/dev/fuse` transport (fuser). With `--io-uring` it still serves the handshake and
/// what the kernel keeps sending there (forgets, interrupts).
struct FuseFloor {
    floor: Arc<Floor>,
    io_uring: bool,
    /// Told, once the handshake is answered, whether the kernel offered io_uring.
    handshake: mpsc::Sender<bool>,
}

fn reply_attr(reply: ReplyAttr, attr: Result<FileAttr, Errno>) {
    match attr {
        Ok(attr) => reply.attr(&TTL, &attr),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for FuseFloor {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        xtsfs::fs::adapter::negotiate(config);
        let offered = config
            .capabilities()
            .contains(InitFlags::FUSE_OVER_IO_URING);
        if self.io_uring && offered {
            let _ = config.add_capabilities(InitFlags::FUSE_OVER_IO_URING);
        }
        let _ = self.handshake.send(offered);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        match self.floor.lookup(parent.0, name) {
            Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
            Err(e) => reply.error(e),
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        reply_attr(reply, self.floor.attr_of(ino.0));
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
        reply_attr(reply, self.floor.set_size(ino.0, size));
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
        match self.floor.create(parent.0, name) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::empty(),
            ),
            Err(e) => reply.error(e),
        }
    }

    fn unlink(&self, _req: &Request, _parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        match self.floor.unlink(name) {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(e),
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
        reply.data(self.floor.read(ino.0, offset, size));
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
        reply.written(self.floor.write(ino.0, offset, data.len() as u32));
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

const USAGE: &str = "usage: fuse_floor MOUNTPOINT [--io-uring [--sched-idle]]";

fn main() -> std::process::ExitCode {
    match run() {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("fuse_floor: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run() -> std::io::Result<()> {
    let mut args = std::env::args_os().skip(1);
    let mountpoint = args.next().ok_or_else(|| std::io::Error::other(USAGE))?;
    let (mut io_uring, mut sched_idle) = (false, false);
    for arg in args {
        match arg.to_str() {
            Some("--io-uring") => io_uring = true,
            Some("--sched-idle") => sched_idle = true,
            _ => return Err(std::io::Error::other(USAGE)),
        }
    }
    let floor = Arc::new(Floor::default());
    let (handshake, handshake_done) = mpsc::channel();
    let mut config = fuser::Config::default();
    config.mount_options = vec![MountOption::FSName("fuse-floor".into())];
    config.n_threads = Some(xtsfs::config::DEFAULT_THREADS.into());
    config.clone_fd = true;
    let fuse_floor = FuseFloor {
        floor: floor.clone(),
        io_uring,
        handshake,
    };
    let session = fuser::Session::new(fuse_floor, &mountpoint, &config)?;
    let device = std::os::fd::AsFd::as_fd(&session).try_clone_to_owned()?;
    let session = session.spawn()?;
    if io_uring {
        // The kernel holds every request after the handshake until each CPU's queue has
        // an entry registered, so the queues start as soon as the handshake is answered.
        let offered = handshake_done
            .recv()
            .map_err(|_| std::io::Error::other("the FUSE handshake did not happen"))?;
        if !offered {
            let _ = session.umount_and_join();
            return Err(std::io::Error::other(
                "the kernel does not offer FUSE over io_uring: as root, \
                 echo Y > /sys/module/fuse/parameters/enable_uring, then mount again",
            ));
        }
        uring::start(floor, Arc::new(device), sched_idle)?;
    }
    // After the handshake is served: looking up the mount point waits for it.
    xtsfs::mount::raise_readahead(mountpoint.as_ref());
    session.join()
}
