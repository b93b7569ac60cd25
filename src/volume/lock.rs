//! The volume lock: `flock` on the backing directory. A mounted daemon holds it for as
//! long as it runs; `xtsfs upgrade` and `xtsfs fsck` take it without waiting, so that a
//! mounted volume is refused and no mount starts while they work.

use std::ffi::OsString;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use crate::error::Error;
use crate::fs::backing;

/// Opens the backing directory, to lock it and to work in it; a missing one is not a
/// volume.
pub(super) fn open_backing(backing: &Path) -> Result<OwnedFd, Error> {
    backing::open_dir(backing).map_err(|e| match e.raw_os_error() {
        Some(libc::ENOENT) => Error::NotAVolume(backing.into()),
        _ => Error::io("cannot open backing directory", backing)(e),
    })
}

/// Takes the volume lock on `dir`, the open backing directory `backing`, without
/// waiting. `Ok(true)`: taken, and held for as long as `dir` stays open. `Ok(false)`:
/// another process holds it: the daemon of a mount of this volume, an upgrade or an fsck.
pub fn try_lock_volume(dir: BorrowedFd<'_>, backing: &Path) -> Result<bool, Error> {
    match backing::flock(dir, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(Error::io("cannot lock backing directory", backing)(e)),
    }
}

/// The volume lock for an offline command, or the error that says where the volume is
/// mounted.
pub(super) fn lock_offline(dir: BorrowedFd<'_>, backing: &Path) -> Result<(), Error> {
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

/// Where the xtsfs mount of `backing` is, from /proc/self/mountinfo.
fn mount_point_of(backing: &Path) -> Option<PathBuf> {
    let backing = backing.canonicalize().ok()?;
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(' ').collect();
        let separator = fields.iter().position(|f| *f == "-")?;
        let is_ours = *fields.get(separator + 1)? == "fuse.xtsfs"
            && unescape_mountinfo(fields.get(separator + 2)?) == backing.as_os_str();
        let mountpoint = fields.get(4)?;
        is_ours.then(|| PathBuf::from(unescape_mountinfo(mountpoint)))
    })
}

/// mountinfo escapes space, tab, newline and backslash as \ooo octal.
fn unescape_mountinfo(field: &str) -> OsString {
    use std::os::unix::ffi::OsStringExt;
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).filter(|_| bytes[i] == b'\\');
        match octal.and_then(|o| u8::from_str_radix(std::str::from_utf8(o).ok()?, 8).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 4;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    OsString::from_vec(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields_unescape() {
        assert_eq!(
            unescape_mountinfo(r"/srv/my\040backing\134x"),
            OsString::from(r"/srv/my backing\x")
        );
        assert_eq!(unescape_mountinfo(r"/a\04"), OsString::from(r"/a\04"));
    }
}
