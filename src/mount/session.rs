//! The FUSE session: mounting (mount(2) as root, fusermount3 otherwise), the threads that
//! serve it, and the signals the daemon waits on.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{mpsc, Arc};

use fuser::SessionACL;

use super::options::MountPlan;
use crate::config::MountConfig;
use crate::error::Error;
use crate::fs::adapter::FuseAdapter;
use crate::fs::XtsFs;

const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
/// Readahead window for the mount, matching the largest request the daemon accepts.
const READAHEAD_KIB: u32 = 1024;

/// A mounted, serving session.
pub struct Session {
    pub notifier: fuser::Notifier,
    /// Receives once the session has ended (the mount went away).
    pub done: mpsc::Receiver<()>,
}

/// Fails clearly when the kernel has no FUSE device.
pub fn require_fuse_device() -> Result<(), Error> {
    if Path::new("/dev/fuse").exists() {
        return Ok(());
    }
    Err(Error::Mount(
        "/dev/fuse does not exist: load the fuse module (modprobe fuse), or give the container the fuse device".into(),
    ))
}

/// Mounts `fs` on `mountpoint`, starts its threads, and returns once the mount answers.
/// When the session ends, the process gets SIGUSR1, which wakes [`wait_for_signal`].
pub fn start(
    fs: Arc<XtsFs>,
    backing: &Path,
    mountpoint: &Path,
    config: &MountConfig,
) -> Result<Session, Error> {
    let session = open(FuseAdapter::new(fs), backing, mountpoint, config)
        .map_err(|e| Error::Mount(format!("cannot mount on '{}': {e}", mountpoint.display())))?;
    let notifier = session.notifier();
    let background = session
        .spawn()
        .map_err(|e| Error::Mount(format!("cannot start the FUSE session: {e}")))?;
    let (done_tx, done) = mpsc::channel();
    std::thread::Builder::new()
        .name("xtsfs-session".into())
        .spawn(move || {
            if let Err(e) = background.join() {
                tracing::error!("FUSE session ended with an error: {e}");
            }
            let _ = done_tx.send(());
            // Wakes the main thread's sigwait.
            // SAFETY: signalling our own process.
            unsafe { libc::kill(libc::getpid(), libc::SIGUSR1) };
        })
        .map_err(Error::io("cannot start thread", "xtsfs-session"))?;
    check_mounted(mountpoint)?;
    raise_readahead(mountpoint);
    Ok(Session { notifier, done })
}

fn fuse_config(config: &MountConfig) -> fuser::Config {
    let mut fuse_config = fuser::Config::default();
    fuse_config.acl = if config.allow_other {
        SessionACL::All
    } else {
        SessionACL::Owner
    };
    fuse_config.n_threads = Some(config.threads);
    fuse_config.clone_fd = true;
    fuse_config
}

/// Mounts and completes the FUSE handshake. As root, xtsfs calls mount(2) itself so the
/// mount has type `fuse.xtsfs` and the backing directory as its source; other users go
/// through fuser and fusermount3.
fn open(
    adapter: FuseAdapter,
    backing: &Path,
    mountpoint: &Path,
    config: &MountConfig,
) -> std::io::Result<fuser::Session<FuseAdapter>> {
    let plan = MountPlan::new(config);
    let mut fuse_config = fuse_config(config);
    match mount2(&plan, backing, mountpoint) {
        Ok(fd) => fuser::Session::from_fd(adapter, fd, fuse_config.acl, fuse_config),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            fuse_config.mount_options = plan.fuser_options(backing);
            fuser::Session::new(adapter, mountpoint, &fuse_config)
        }
        Err(e) => Err(e),
    }
}

/// mount(2) of a new FUSE connection; returns the /dev/fuse fd that serves it.
fn mount2(plan: &MountPlan, backing: &Path, mountpoint: &Path) -> std::io::Result<OwnedFd> {
    let dev = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?;
    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT | 0o755;
    // SAFETY: no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let (flags, data) = plan.mount2(dev.as_raw_fd(), root_mode, uid, gid);
    let cstr =
        |s: &[u8]| CString::new(s).map_err(|_| std::io::Error::from_raw_os_error(libc::EINVAL));
    let source = cstr(backing.as_os_str().as_bytes())?;
    let target = cstr(mountpoint.as_os_str().as_bytes())?;
    let data = cstr(data.as_bytes())?;
    // SAFETY: all pointers are NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            c"fuse.xtsfs".as_ptr(),
            flags,
            data.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(OwnedFd::from(dev))
}

/// Blocks the signals the daemon waits on, in this thread and so in every thread it
/// starts from now on: only [`wait_for_signal`] sees them.
pub fn block_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set.
    let set = unsafe {
        let mut set = std::mem::zeroed::<libc::sigset_t>();
        libc::sigemptyset(&mut set);
        for signal in [
            libc::SIGINT,
            libc::SIGTERM,
            libc::SIGHUP,
            libc::SIGUSR1,
            libc::SIGUSR2,
        ] {
            libc::sigaddset(&mut set, signal);
        }
        set
    };
    // SAFETY: set is initialised; blocking in this thread is inherited by new threads.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    set
}

/// The next of `signals` sent to the process.
pub fn wait_for_signal(signals: &libc::sigset_t) -> libc::c_int {
    let mut signal = 0;
    // SAFETY: signals is initialised and blocked in this thread.
    unsafe { libc::sigwait(signals, &mut signal) };
    signal
}

/// Sequential reads arrive in requests no larger than the mount's readahead window, which
/// for FUSE starts at 128 KiB and which the FUSE handshake can only lower. Raising it to the
/// 1 MiB requests xtsfs accepts cuts the round trips of a large read to an eighth. Best
/// effort: it needs root and sysfs.
pub fn raise_readahead(mountpoint: &Path) {
    let Ok(meta) = std::fs::metadata(mountpoint) else {
        return;
    };
    let (major, minor) = (libc::major(meta.dev()), libc::minor(meta.dev()));
    let knob = format!("/sys/class/bdi/{major}:{minor}/read_ahead_kb");
    if let Err(e) = std::fs::write(&knob, format!("{}\n", READAHEAD_KIB)) {
        tracing::debug!("cannot raise readahead through {knob}: {e}");
    }
}

/// Confirms the mount answers: statfs goes through the new FUSE connection.
fn check_mounted(mountpoint: &Path) -> Result<(), Error> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| Error::Mount("bad mount point".into()))?;
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: valid path; st is written on success.
    if unsafe { libc::statfs(path.as_ptr(), st.as_mut_ptr()) } != 0 {
        return Err(Error::Mount(format!(
            "the mount at '{}' does not answer: {}",
            mountpoint.display(),
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: statfs succeeded.
    if unsafe { st.assume_init() }.f_type != FUSE_SUPER_MAGIC {
        return Err(Error::Mount(format!(
            "'{}' did not become a FUSE mount",
            mountpoint.display()
        )));
    }
    Ok(())
}
