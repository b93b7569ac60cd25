//! `xtsfs unmount`, and the daemon's own unmount on a signal.

use std::ffi::CString;
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use super::mountinfo::find_mount;
use crate::config::UnmountConfig;
use crate::error::Error;

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

pub(super) fn unmount_path(mountpoint: &Path, lazy: bool) -> Result<(), Error> {
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
