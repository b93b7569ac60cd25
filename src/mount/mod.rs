//! `xtsfs mount` and `xtsfs unmount`: preflight checks, unlocking the volume, mounting,
//! going to the background once the mount is usable, and clean shutdown on signals.

use std::ffi::{CString, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use fuser::{MountOption, SessionACL};

use crate::audit::{Audit, AuditEvent};
use crate::config::{MountConfig, Settings, UnmountConfig};
use crate::crypto::VolumeKey;
use crate::error::{Error, ExitCode};
use crate::fs::adapter::FuseAdapter;
use crate::fs::{FsOptions, Keyring, VolumeSecrets, XtsFs};
use crate::keycheck::{KeyMonitor, MonitorRequest};
use crate::keys::{KeyDescription, KeyError};
use crate::live::{self, LiveStatus, ServingState};
use crate::volume::header::VolumeFormat;
use crate::volume::{self, TREE_DIR};

/// Set in the environment of the background daemon: the fd it reports readiness on.
const READY_FD_ENV: &str = "XTSFS_READY_FD";
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
/// Readahead window for the mount, matching the largest request the daemon accepts.
const READAHEAD_KIB: u32 = 1024;
/// How long unmount waits for the key monitor to stop.
const MONITOR_STOP_WAIT: Duration = Duration::from_secs(2);

pub fn mount(config: &MountConfig, settings: &Settings) -> Result<(), Error> {
    match std::env::var(READY_FD_ENV)
        .ok()
        .and_then(|fd| fd.parse::<i32>().ok())
    {
        Some(fd) => {
            // SAFETY: the parent passed us this pipe's write end and nothing else owns it.
            let ready = unsafe { File::from_raw_fd(fd) };
            serve(config, settings, Some(ready))
        }
        None if config.foreground => serve(config, settings, None),
        None => spawn_daemon(),
    }
}

/// Re-runs this command as a detached daemon and waits until it reports the mount usable
/// (or fails). Re-executing, rather than forking, keeps the daemon free of any state a
/// fork would copy mid-flight.
fn spawn_daemon() -> Result<(), Error> {
    let (read_end, write_end) = pipe().map_err(Error::io("cannot create a pipe", "mount"))?;
    let mut command = Command::new("/proc/self/exe");
    command
        .args(std::env::args_os().skip(1))
        .env(READY_FD_ENV, write_end.as_raw_fd().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        // Errors come back through the pipe; later logs go to --log-file.
        .stderr(Stdio::null());
    // SAFETY: setsid is async-signal-safe and touches no Rust state.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let mut child = command
        .spawn()
        .map_err(Error::io("cannot start the mount daemon", "/proc/self/exe"))?;
    drop(write_end);
    let mut report = String::new();
    let _ = File::from(read_end).read_to_string(&mut report);
    match report.split_once('\n') {
        Some(("ready", _)) => Ok(()),
        Some((code, rest)) if code.starts_with("error ") => {
            let (message, hint) = rest.split_once('\n').unwrap_or((rest, ""));
            Err(Error::Daemon {
                code: code[6..]
                    .parse()
                    .map(exit_code_from)
                    .unwrap_or(ExitCode::Mount),
                message: message.into(),
                hint: (!hint.trim().is_empty()).then(|| hint.trim().into()),
            })
        }
        _ => {
            let status = child
                .wait()
                .map_err(Error::io("cannot wait for the mount daemon", "mount"))?;
            Err(Error::Mount(format!(
                "the mount daemon exited ({status}) before the mount was ready"
            )))
        }
    }
}

fn exit_code_from(code: u8) -> ExitCode {
    [
        ExitCode::Failure,
        ExitCode::Usage,
        ExitCode::Key,
        ExitCode::Volume,
        ExitCode::Mount,
    ]
    .into_iter()
    .find(|c| *c as u8 == code)
    .unwrap_or(ExitCode::Mount)
}

fn serve(config: &MountConfig, settings: &Settings, mut ready: Option<File>) -> Result<(), Error> {
    let session = match start(config, settings) {
        Ok(session) => session,
        Err(e) => {
            if let Some(ready) = ready.as_mut() {
                // One line each: the parent reads the report line by line.
                let _ = write!(
                    ready,
                    "error {}\n{}\n{}\n",
                    e.exit_code() as u8,
                    crate::commands::printable(&e.to_string()),
                    crate::commands::printable(&e.hint().unwrap_or_default())
                );
            }
            return Err(e);
        }
    };
    tracing::info!(backing = %config.backing.display(), mountpoint = %config.mountpoint.display(), "mounted");
    if let Some(mut ready) = ready {
        detach_stdio(config.log_file.as_deref())?;
        let _ = ready.write_all(b"ready\n");
    }
    session.wait_for_shutdown();
    tracing::info!(mountpoint = %config.mountpoint.display(), "unmounted");
    Ok(())
}

/// A running mount: the FUSE session threads plus what is needed to stop them.
struct Running {
    mountpoint: PathBuf,
    signals: libc::sigset_t,
    session_done: mpsc::Receiver<()>,
    monitor: Option<(mpsc::Sender<MonitorRequest>, std::thread::JoinHandle<()>)>,
    audit: Arc<Audit>,
    volume_id: String,
    status_path: PathBuf,
    /// For an ephemeral volume: the backing directory to empty at unmount.
    ephemeral_backing: Option<PathBuf>,
    /// Held until the daemon is done, so `xtsfs unmount` can wait for it.
    _volume_lock: File,
}

/// What the volume is served with: its secrets and where they came from.
struct Unlocked {
    secrets: VolumeSecrets,
    format: VolumeFormat,
    volume_id: String,
    protector: Option<KeyDescription>,
    header_epoch: Option<u64>,
    key_check: [u8; 32],
}

fn unlock(
    config: &MountConfig,
    backing: &Path,
    settings: &Settings,
    audit: &Audit,
) -> Result<Unlocked, Error> {
    if config.ephemeral {
        let dek = VolumeKey::generate().map_err(KeyError::from)?;
        return Ok(Unlocked {
            key_check: dek.check_value(),
            secrets: VolumeSecrets::new(dek, true),
            format: VolumeFormat::LATEST,
            volume_id: volume::new_uuid()?,
            protector: None,
            header_epoch: None,
        });
    }
    let volume = volume::unlock(backing, &settings.keys, config.key.as_ref()).inspect_err(|e| {
        if let Ok((header, _)) = volume::read_header(backing) {
            audit.record(
                &header.volume_id,
                AuditEvent::Unwrap,
                Some(&header.protector.key),
                Some(e),
                None,
            );
        }
    })?;
    let key = volume.header.protector.key.clone();
    audit.record(
        &volume.header.volume_id,
        AuditEvent::Unwrap,
        Some(&key),
        None,
        None,
    );
    Ok(Unlocked {
        key_check: volume.dek.check_value(),
        secrets: VolumeSecrets::new(volume.dek, volume.header.names_encrypted()),
        format: volume.header.format,
        header_epoch: volume.header.epoch,
        volume_id: volume.header.volume_id,
        protector: Some(key),
    })
}

fn start(config: &MountConfig, settings: &Settings) -> Result<Running, Error> {
    let mountpoint = check_mountpoint(&config.mountpoint)?;
    if !Path::new("/dev/fuse").exists() {
        return Err(Error::Mount(
            "/dev/fuse does not exist: load the fuse module (modprobe fuse), or give the container the fuse device".into(),
        ));
    }
    if config.ephemeral {
        volume::create_empty_tree(&config.backing)?;
    }
    let backing = config
        .backing
        .canonicalize()
        .map_err(Error::io("cannot open backing directory", &config.backing))?;
    let volume_lock = lock_volume(&backing)?;
    let audit = Arc::new(Audit::open(settings.audit_log.as_deref())?);
    let unlocked = unlock(config, &backing, settings, &audit)?;
    let encrypt_names = unlocked.secrets.names.is_encrypted();
    let tree = open_tree(&backing)?;
    let fs = Arc::new(
        XtsFs::new(
            tree,
            Arc::new(Keyring::new(unlocked.secrets)),
            FsOptions {
                read_only: config.read_only,
                direct_io: config.direct_io,
                format: unlocked.format,
            },
        )
        .map_err(Error::io("cannot open", backing.join(TREE_DIR)))?,
    );

    // Signals are blocked before any thread starts, so only sigwait sees them.
    let signals = daemon_signals();
    // SAFETY: signals is an initialised set; blocking in this thread is inherited by new threads.
    unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &signals, std::ptr::null_mut()) };

    let session = open_session(FuseAdapter::new(fs.clone()), &backing, &mountpoint, config)
        .map_err(|e| Error::Mount(format!("cannot mount on '{}': {e}", mountpoint.display())))?;
    let notifier = session.notifier();
    let background = session
        .spawn()
        .map_err(|e| Error::Mount(format!("cannot start the FUSE session: {e}")))?;
    let (done_tx, session_done) = mpsc::channel();
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
    check_mounted(&mountpoint)?;
    raise_readahead(&mountpoint);

    let (start_time, exe) = live::own_identity();
    let status = LiveStatus {
        pid: std::process::id(),
        start_time,
        exe,
        state: ServingState::Serving,
        backing: backing.clone(),
        mountpoint: mountpoint.clone(),
        volume_id: unlocked.volume_id.clone(),
        ephemeral: config.ephemeral,
        on_key_loss: config.on_key_loss.name().into(),
        key_check_interval_secs: config.key_check_interval.as_secs_f64(),
        last_check: None,
        protector: unlocked.protector.clone(),
        header_epoch: unlocked.header_epoch,
        degraded_since: None,
    };
    let status_path = live::status_path(&settings.run_dir, &backing);
    let monitor = KeyMonitor {
        backing: backing.clone(),
        keys: settings.keys.clone(),
        key_override: config.key.clone(),
        fs,
        notifier: Some(notifier),
        audit: audit.clone(),
        interval: config.key_check_interval,
        timeout: config.key_check_timeout.unwrap_or(
            config
                .key_check_interval
                .min(crate::keycheck::MAX_DEFAULT_CHECK_TIMEOUT),
        ),
        grace: config.key_unavailable_grace,
        on_loss: config.on_key_loss,
        status,
        status_path: status_path.clone(),
        encrypt_names,
        key_check: unlocked.key_check,
    };
    let monitor = if config.ephemeral {
        // No header and no key to check: the status never changes.
        monitor.publish();
        None
    } else {
        Some(
            monitor
                .spawn()
                .map_err(Error::io("cannot start thread", "xtsfs-keycheck"))?,
        )
    };
    audit.record(
        &unlocked.volume_id,
        AuditEvent::Mount,
        unlocked.protector.as_ref(),
        None,
        None,
    );
    Ok(Running {
        mountpoint,
        signals,
        session_done,
        monitor,
        audit,
        volume_id: unlocked.volume_id,
        status_path,
        ephemeral_backing: config.ephemeral.then_some(backing),
        _volume_lock: volume_lock,
    })
}

impl Running {
    /// Serves until the mount goes away or a signal asks to unmount. SIGUSR2 asks for
    /// a key check now (`xtsfs rewrap` sends it after changing the protector).
    fn wait_for_shutdown(self) {
        loop {
            let mut signal = 0;
            // SAFETY: signals is initialised and blocked in this thread.
            unsafe { libc::sigwait(&self.signals, &mut signal) };
            if self.session_done.try_recv().is_ok() {
                break;
            }
            match signal {
                libc::SIGUSR1 => {}
                libc::SIGUSR2 => {
                    if let Some((requests, _)) = &self.monitor {
                        let _ = requests.send(MonitorRequest::CheckNow);
                    }
                }
                _ => {
                    tracing::info!(signal, "unmounting on signal");
                    if let Err(e) = unmount_path(&self.mountpoint, false) {
                        tracing::warn!(
                            "{e}; detaching lazily, the daemon exits when the last file is closed"
                        );
                        let _ = unmount_path(&self.mountpoint, true);
                    }
                    let _ = self.session_done.recv();
                    break;
                }
            }
        }
        if let Some((requests, handle)) = self.monitor {
            // The monitor never waits on a key check (checks run on threads of their
            // own), so it stops at once; still, unmount never waits on it for more than
            // a moment. Exiting ends any check still stuck in a key service.
            let _ = requests.send(MonitorRequest::Stop);
            let deadline = Instant::now() + MONITOR_STOP_WAIT;
            while !handle.is_finished() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            if handle.is_finished() {
                let _ = handle.join();
            } else {
                tracing::warn!("the key monitor did not stop; exiting without it");
            }
        }
        let _ = std::fs::remove_file(&self.status_path);
        if let Some(backing) = &self.ephemeral_backing {
            if let Err(e) = std::fs::remove_dir_all(backing.join(TREE_DIR)) {
                tracing::error!(backing = %backing.display(), "cannot remove the ephemeral volume's contents: {e}");
            }
        }
        self.audit
            .record(&self.volume_id, AuditEvent::Unmount, None, None, None);
    }
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
fn open_session(
    adapter: FuseAdapter,
    backing: &Path,
    mountpoint: &Path,
    config: &MountConfig,
) -> std::io::Result<fuser::Session<FuseAdapter>> {
    let fuse_config = fuse_config(config);
    match mount_fuse(backing, mountpoint, config) {
        Ok(fd) => fuser::Session::from_fd(adapter, fd, fuse_config.acl, fuse_config),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            let mut fuse_config = fuse_config;
            fuse_config.mount_options = vec![
                MountOption::FSName(backing.display().to_string()),
                MountOption::Subtype("xtsfs".into()),
                MountOption::DefaultPermissions,
                MountOption::NoDev,
                MountOption::NoSuid,
            ];
            if config.read_only {
                fuse_config.mount_options.push(MountOption::RO);
            }
            fuse_config.mount_options.extend(
                config
                    .options
                    .iter()
                    .map(|o| MountOption::CUSTOM(o.clone())),
            );
            fuser::Session::new(adapter, mountpoint, &fuse_config)
        }
        Err(e) => Err(e),
    }
}

/// mount(2) of a new FUSE connection; returns the /dev/fuse fd that serves it.
fn mount_fuse(backing: &Path, mountpoint: &Path, config: &MountConfig) -> std::io::Result<OwnedFd> {
    let dev = File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/dev/fuse")?;
    let root_mode = std::fs::metadata(mountpoint)?.mode() & libc::S_IFMT | 0o755;
    // SAFETY: no preconditions.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let mut data = format!(
        "fd={},rootmode={root_mode:o},user_id={uid},group_id={gid},default_permissions",
        dev.as_raw_fd()
    );
    if config.allow_other {
        data.push_str(",allow_other");
    }
    let mut flags = libc::MS_NOSUID | libc::MS_NODEV;
    if config.read_only {
        flags |= libc::MS_RDONLY;
    }
    for option in &config.options {
        match mount_flag(option) {
            Some(flag) => flags |= flag,
            None => {
                data.push(',');
                data.push_str(option);
            }
        }
    }
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

/// The mount(2) flag a generic mount option sets; `None` for an option that is not one.
/// xtsfs mounts are always nodev and nosuid: `dev` and `suid`, which mount(8) adds for
/// `defaults`, change nothing.
pub(crate) fn mount_flag(option: &str) -> Option<libc::c_ulong> {
    Some(match option {
        "ro" => libc::MS_RDONLY,
        "noatime" => libc::MS_NOATIME,
        "nodiratime" => libc::MS_NODIRATIME,
        "strictatime" => libc::MS_STRICTATIME,
        "noexec" => libc::MS_NOEXEC,
        "sync" => libc::MS_SYNCHRONOUS,
        "dirsync" => libc::MS_DIRSYNC,
        "rw" | "atime" | "relatime" | "diratime" | "exec" | "async" | "nosuid" | "nodev"
        | "dev" | "suid" => 0,
        _ => return None,
    })
}

fn daemon_signals() -> libc::sigset_t {
    // SAFETY: sigemptyset/sigaddset initialise and fill the set.
    unsafe {
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
    }
}

fn check_mountpoint(path: &Path) -> Result<PathBuf, Error> {
    let canonical = path.canonicalize().map_err(|e| {
        Error::Mount(format!(
            "mount point '{}' cannot be used: {e}",
            path.display()
        ))
    })?;
    if !canonical.is_dir() {
        return Err(Error::Mount(format!(
            "mount point '{}' is not a directory",
            path.display()
        )));
    }
    if let Some(existing) = find_mount(&canonical) {
        return Err(Error::Mount(format!(
            "'{}' is already a mount point ({} from {}): unmount it first or pick another directory",
            canonical.display(),
            existing.fs_type,
            existing.source
        )));
    }
    Ok(canonical)
}

/// Holds an exclusive lock on the backing directory for the life of the mount, so one
/// volume is never served by two daemons.
fn lock_volume(backing: &Path) -> Result<File, Error> {
    let dir = File::open(backing).map_err(Error::io("cannot open backing directory", backing))?;
    // SAFETY: valid fd.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        return Err(Error::Mount(format!(
            "the volume '{}' is already mounted by another xtsfs process",
            backing.display()
        )));
    }
    Ok(dir)
}

fn open_tree(backing: &Path) -> Result<OwnedFd, Error> {
    let path = backing.join(TREE_DIR);
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(Error::io("cannot open the volume's tree", &path))?;
    Ok(OwnedFd::from(file))
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

/// Points stdin at /dev/null and stdout/stderr at the log file or /dev/null, so the
/// daemon outlives the terminal that started it.
fn detach_stdio(log_file: Option<&Path>) -> Result<(), Error> {
    let null = File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(Error::io("cannot open", "/dev/null"))?;
    let log = match log_file {
        Some(path) => File::options()
            .create(true)
            .append(true)
            .open(path)
            .map_err(Error::io("cannot open log file", path))?,
        None => null
            .try_clone()
            .map_err(Error::io("cannot open", "/dev/null"))?,
    };
    // SAFETY: dup2 onto the standard fds with valid source fds.
    unsafe {
        libc::dup2(null.as_raw_fd(), 0);
        libc::dup2(log.as_raw_fd(), 1);
        libc::dup2(log.as_raw_fd(), 2);
    }
    Ok(())
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), 0) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: pipe2 returned two new fds we own. The read end must not leak into the
    // daemon, so it is close-on-exec; the write end is inherited on purpose.
    unsafe {
        libc::fcntl(fds[0], libc::F_SETFD, libc::FD_CLOEXEC);
        Ok((OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])))
    }
}

/// The backing directory of the xtsfs mount at `path`, if `path` is one.
pub fn backing_of_mount(path: &Path) -> Option<PathBuf> {
    let entry = find_mount(&path.canonicalize().ok()?)?;
    (entry.fs_type == "fuse.xtsfs").then(|| PathBuf::from(entry.source))
}

pub fn unmount(config: &UnmountConfig) -> Result<(), Error> {
    let mountpoint = config
        .mountpoint
        .canonicalize()
        .map_err(Error::io("cannot find mount point", &config.mountpoint))?;
    let entry = find_mount(&mountpoint)
        .filter(|m| m.fs_type == "fuse.xtsfs")
        .ok_or_else(|| Error::Mount(format!("'{}' is not an xtsfs mount", mountpoint.display())))?;
    unmount_path(&mountpoint, config.lazy)?;
    if !config.lazy {
        wait_for_daemon(Path::new(&entry.source));
    }
    Ok(())
}

fn unmount_path(mountpoint: &Path, lazy: bool) -> Result<(), Error> {
    let path = CString::new(mountpoint.as_os_str().as_bytes())
        .map_err(|_| Error::Mount("bad mount point".into()))?;
    let flags = if lazy { libc::MNT_DETACH } else { 0 };
    // SAFETY: valid path.
    if unsafe { libc::umount2(path.as_ptr(), flags) } == 0 {
        return Ok(());
    }
    let err = std::io::Error::last_os_error();
    match err.raw_os_error() {
        Some(libc::EBUSY) => Err(Error::Mount(format!(
            "'{}' is busy: files or directories on it are still open (see fuser -vm {0}); close them or use --lazy",
            mountpoint.display()
        ))),
        Some(libc::EPERM) => {
            let mut command = Command::new("fusermount3");
            command.arg("-u");
            if lazy {
                command.arg("-z");
            }
            let status = command.arg("--").arg(mountpoint).status().map_err(Error::io("cannot run", "fusermount3"))?;
            if status.success() {
                Ok(())
            } else {
                Err(Error::Mount(format!("fusermount3 -u '{}' failed ({status})", mountpoint.display())))
            }
        }
        _ => Err(Error::Mount(format!("cannot unmount '{}': {err}", mountpoint.display()))),
    }
}

/// After an unmount the daemon still finishes its last requests; it is done when it
/// drops its lock on the backing directory.
fn wait_for_daemon(backing: &Path) {
    let Ok(dir) = File::open(backing) else { return };
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        // SAFETY: valid fd; the lock is released when `dir` closes.
        if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) } == 0 {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    tracing::warn!(backing = %backing.display(), "the daemon still holds the volume 30 s after unmount");
}

struct MountEntry {
    fs_type: String,
    source: String,
}

/// The mount whose mount point is `path`, from /proc/self/mountinfo.
fn find_mount(path: &Path) -> Option<MountEntry> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().rev().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        let mount_point = unescape_mountinfo(fields.get(4)?);
        if Path::new(&mount_point) != path {
            return None;
        }
        Some(MountEntry {
            fs_type: fields.get(separator + 1)?.to_string(),
            source: unescape_mountinfo(fields.get(separator + 2)?)
                .to_string_lossy()
                .into_owned(),
        })
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape_mountinfo(field: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes
            .get(i + 1..i + 4)
            .and_then(|d| std::str::from_utf8(d).ok())
            .and_then(|d| u8::from_str_radix(d, 8).ok());
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}
