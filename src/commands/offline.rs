//! What the offline commands (`xtsfs upgrade`, `xtsfs fsck`) share: the backing
//! directory, opened, and the volume lock, refused with where the volume is mounted.

use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::Path;

use crate::error::Error;
use crate::fs::backing;
use crate::mount::mount_point_of;
use crate::volume::try_lock_volume;

/// Opens the backing directory, to lock it and to work in it; a missing one is not a
/// volume.
pub(crate) fn open_backing(backing: &Path) -> Result<OwnedFd, Error> {
    backing::open_dir(backing).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => Error::NotAVolume(backing.into()),
        _ => Error::io("cannot open backing directory", backing)(e),
    })
}

/// The volume lock for an offline command, or the error that says where the volume is
/// mounted.
pub(crate) fn lock_offline(dir: BorrowedFd<'_>, backing: &Path) -> Result<(), Error> {
    if try_lock_volume(dir, backing)? {
        return Ok(());
    }
    let (mountpoint, other) = match mount_point_of(backing) {
        Some(mountpoint) => (mountpoint.display().to_string(), ""),
        None => (
            "MOUNTPOINT".to_string(),
            " (or another xtsfs upgrade is running on it)",
        ),
    };
    Err(Error::Mount(format!(
        "the volume in {} is mounted{other}; unmount it first (xtsfs unmount {mountpoint})",
        backing.display()
    )))
}

/// The directory that holds `path`, for naming it in an error about that directory.
pub(crate) fn parent(path: &Path) -> &Path {
    path.parent().unwrap_or(path)
}
