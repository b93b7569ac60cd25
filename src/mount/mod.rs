//! `xtsfs mount` and `xtsfs unmount`: preflight checks, unlocking the volume, mounting,
//! going to the background once the mount is usable, and clean shutdown on signals.
//!
//! - [`daemon`]: the background daemon and the pipe it reports readiness on;
//! - [`session`]: mounting and serving the FUSE session, and signals;
//! - [`options`]: one plan of mount options for mount(2) and for fusermount3;
//! - [`mountinfo`]: which mounts exist, and checks on a mount point;
//! - [`unmount`]: `xtsfs unmount`.

mod daemon;
mod mountinfo;
mod options;
mod session;
mod unmount;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use crate::audit::{Audit, AuditEvent};
use crate::config::{MountConfig, Settings};
use crate::crypto::VolumeKey;
use crate::error::Error;
use crate::fs::{FsOptions, Keyring, VolumeSecrets, XtsFs};
use crate::keycheck::{KeyMonitor, MonitorRequest, MAX_DEFAULT_CHECK_TIMEOUT};
use crate::keys::{KeyDescription, KeyError};
use crate::live::{self, LiveStatus, ServingState};
use crate::volume::header::VolumeFormat;
use crate::volume::{self, TREE_DIR};

pub use mountinfo::{backing_of_mount, mount_point_of};
pub(crate) use options::mount_flag;
pub use session::raise_readahead;
pub use unmount::unmount;

/// How long unmount waits for the key monitor to stop.
const MONITOR_STOP_WAIT: Duration = Duration::from_secs(2);

pub fn mount(config: &MountConfig, settings: &Settings) -> Result<(), Error> {
    match daemon::ready_pipe() {
        Some(ready) => serve(config, settings, Some(ready)),
        None if config.foreground => serve(config, settings, None),
        None => daemon::spawn(),
    }
}

/// Mounts, tells a waiting parent the outcome, and serves until unmounted.
fn serve(config: &MountConfig, settings: &Settings, mut ready: Option<File>) -> Result<(), Error> {
    let running = start(config, settings).inspect_err(|e| {
        if let Some(ready) = ready.as_mut() {
            daemon::report_error(ready, e);
        }
    })?;
    tracing::info!(backing = %config.backing.display(), mountpoint = %config.mountpoint.display(), "mounted");
    if let Some(ready) = ready {
        daemon::report_ready(ready, config.log_file.as_deref())?;
    }
    running.wait_for_shutdown();
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

/// The steps of a mount, in order.
fn start(config: &MountConfig, settings: &Settings) -> Result<Running, Error> {
    let mountpoint = mountinfo::check_mountpoint(&config.mountpoint)?;
    session::require_fuse_device()?;
    let backing = backing_dir(config)?;
    let volume_lock = lock_volume(&backing)?;
    let audit = Arc::new(Audit::open(settings.audit_log.as_deref())?);
    let unlocked = unlock(config, &backing, settings, &audit)?;
    let encrypt_names = unlocked.secrets.names.is_encrypted();
    let fs = open_fs(config, &backing, unlocked.secrets, unlocked.format)?;
    let signals = session::block_signals();
    let session = session::start(fs.clone(), &backing, &mountpoint, config)?;
    let status_path = live::status_path(&settings.run_dir, &backing);
    let status = live_status(config, &backing, &mountpoint, &unlocked.id);
    let monitor = KeyMonitor {
        backing: backing.clone(),
        keys: settings.keys.clone(),
        key_override: config.key.clone(),
        fs,
        notifier: Some(session.notifier),
        audit: audit.clone(),
        interval: config.key_check_interval,
        timeout: config
            .key_check_timeout
            .unwrap_or(config.key_check_interval.min(MAX_DEFAULT_CHECK_TIMEOUT)),
        grace: config.key_unavailable_grace,
        on_loss: config.on_key_loss,
        status,
        status_path: status_path.clone(),
        encrypt_names,
        key_check: unlocked.key_check,
    };
    let monitor = match config.ephemeral {
        // No header and no key to check: the status never changes.
        true => {
            monitor.publish();
            None
        }
        false => Some(
            monitor
                .spawn()
                .map_err(Error::io("cannot start thread", "xtsfs-keycheck"))?,
        ),
    };
    audit.record(
        &unlocked.id.volume_id,
        AuditEvent::Mount,
        unlocked.id.protector.as_ref(),
        None,
        None,
    );
    Ok(Running {
        mountpoint,
        signals,
        session_done: session.done,
        monitor,
        audit,
        volume_id: unlocked.id.volume_id,
        status_path,
        ephemeral_backing: config.ephemeral.then_some(backing),
        _volume_lock: volume_lock,
    })
}

/// The backing directory, canonical; an ephemeral volume's is laid out first.
fn backing_dir(config: &MountConfig) -> Result<PathBuf, Error> {
    if config.ephemeral {
        volume::create_empty_tree(&config.backing)?;
    }
    config
        .backing
        .canonicalize()
        .map_err(Error::io("cannot open backing directory", &config.backing))
}

/// The file system over the volume's tree, serving with `secrets`.
fn open_fs(
    config: &MountConfig,
    backing: &Path,
    secrets: VolumeSecrets,
    format: VolumeFormat,
) -> Result<Arc<XtsFs>, Error> {
    let tree = open_tree(backing)?;
    let options = FsOptions {
        read_only: config.read_only,
        direct_io: config.direct_io,
        format,
    };
    XtsFs::new(tree, Arc::new(Keyring::new(secrets)), options)
        .map(Arc::new)
        .map_err(Error::io("cannot open", backing.join(TREE_DIR)))
}

/// The status a new mount starts with: serving, no check yet.
fn live_status(
    config: &MountConfig,
    backing: &Path,
    mountpoint: &Path,
    id: &VolumeIdentity,
) -> LiveStatus {
    let (start_time, exe) = live::own_identity();
    LiveStatus {
        pid: std::process::id(),
        start_time,
        exe,
        state: ServingState::Serving,
        backing: backing.to_path_buf(),
        mountpoint: mountpoint.to_path_buf(),
        volume_id: id.volume_id.clone(),
        ephemeral: config.ephemeral,
        on_key_loss: config.on_key_loss.name().into(),
        key_check_interval_secs: config.key_check_interval.as_secs_f64(),
        last_check: None,
        protector: id.protector.clone(),
        header_epoch: id.header_epoch,
        degraded_since: None,
    }
}

/// What the volume is served with: its secrets and where they came from.
struct Unlocked {
    secrets: VolumeSecrets,
    format: VolumeFormat,
    id: VolumeIdentity,
    key_check: [u8; 32],
}

/// Which volume is served, under which key.
struct VolumeIdentity {
    volume_id: String,
    protector: Option<KeyDescription>,
    header_epoch: Option<u64>,
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
            id: VolumeIdentity {
                volume_id: volume::new_uuid()?,
                protector: None,
                header_epoch: None,
            },
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
        id: VolumeIdentity {
            header_epoch: volume.header.epoch,
            volume_id: volume.header.volume_id,
            protector: Some(key),
        },
    })
}

impl Running {
    /// Serves until the mount goes away or a signal asks to unmount. SIGUSR2 asks for
    /// a key check now (`xtsfs rewrap` sends it after changing the protector).
    fn wait_for_shutdown(self) {
        loop {
            let signal = session::wait_for_signal(&self.signals);
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
                    if let Err(e) = unmount::unmount_path(&self.mountpoint, false) {
                        tracing::warn!(
                            "{e}; detaching lazily, the daemon exits when the last file is closed"
                        );
                        let _ = unmount::unmount_path(&self.mountpoint, true);
                    }
                    let _ = self.session_done.recv();
                    break;
                }
            }
        }
        if let Some((requests, handle)) = self.monitor {
            // The monitor never waits on a key check (checks run on threads of their
            // own), so it stops at once; still, unmount never waits on it for more than
            // a moment. Exiting ends any check still stuck in a key service inside the
            // daemon (PKCS#11); one stuck in a key program is killed below.
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
        // A check stuck in a key program (`command:`) would otherwise leave the program
        // running after the daemon is gone.
        crate::keys::command::kill_running_programs();
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

/// Holds an exclusive lock on the backing directory for the life of the mount, so one
/// volume is never served by two daemons.
fn lock_volume(backing: &Path) -> Result<File, Error> {
    let dir = File::open(backing).map_err(Error::io("cannot open backing directory", backing))?;
    if !volume::try_lock_volume(dir.as_fd(), backing)? {
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
