//! Trusting files the way ssh and sudo do: key material that others can read, or code
//! (a KMS command, a PKCS#11 module) that others can change, or that belongs to someone
//! else, is refused, and a symlink planted in a key directory is never followed.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::KeyError;
use crate::crypto::secret::SecretVec;
use crate::io_error::io_error;

/// Checks owner and mode of an open key file or key directory.
pub(crate) fn check_private(path: &Path, meta: &std::fs::Metadata) -> Result<(), KeyError> {
    check_owner_and_mode(path, meta, 0o077)
}

/// The file must belong to this user or root and have none of the `forbidden` mode bits.
pub(crate) fn check_owner_and_mode(
    path: &Path,
    meta: &std::fs::Metadata,
    forbidden: u32,
) -> Result<(), KeyError> {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    if meta.uid() != euid && meta.uid() != 0 {
        return Err(KeyError::WrongOwner {
            path: path.into(),
            owner: meta.uid(),
            expected: euid,
        });
    }
    if meta.mode() & forbidden != 0 {
        return Err(KeyError::TooOpen {
            path: path.into(),
            mode: meta.mode() & 0o7777,
        });
    }
    Ok(())
}

/// Reads a private key file after checking it, at most `limit` bytes.
pub(crate) fn read_private(path: &Path, limit: u64) -> Result<SecretVec, KeyError> {
    let file = File::options()
        .read(true)
        // Non-blocking so a FIFO planted where a key should be cannot hang the open.
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                KeyError::NotFound(format!("key file '{}' does not exist", path.display()))
            }
            _ => io_error("cannot open key file", path)(e).into(),
        })?;
    let meta = file
        .metadata()
        .map_err(io_error("cannot stat key file", path))?;
    if !meta.is_file() {
        return Err(KeyError::NotFound(format!(
            "'{}' is not a regular file",
            path.display()
        )));
    }
    check_private(path, &meta)?;
    // Sized up front for the largest file accepted, so reading never reallocates and
    // leaves a copy of the key in freed memory.
    let capacity = usize::try_from(limit)
        .unwrap_or(usize::MAX)
        .saturating_add(1);
    let mut contents = SecretVec::new(Vec::with_capacity(capacity));
    file.take(limit + 1)
        .read_to_end(&mut contents)
        .map_err(io_error("cannot read key file", path))?;
    debug_assert!(
        contents.capacity() == capacity,
        "the key file buffer was reallocated"
    );
    Ok(contents)
}

/// Code that xtsfs runs or loads (a KMS command, a PKCS#11 module) runs with xtsfs's
/// privileges and sees the volume key, so, like sudo and ssh, refuse one that someone
/// other than this user or root could have replaced.
pub(crate) fn check_trusted_file(path: &Path, what: &str) -> Result<(), KeyError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => {
            KeyError::NotFound(format!("{what} '{}' does not exist", path.display()))
        }
        _ => io_error("cannot stat", path)(e).into(),
    })?;
    if !meta.is_file() {
        return Err(KeyError::NotFound(format!(
            "{what} '{}' is not a regular file",
            path.display()
        )));
    }
    // Others may run it, but nobody but its owner may change it.
    check_owner_and_mode(path, &meta, 0o022)
}

/// As ssh's StrictModes: the directory a trusted program or module is in, and every
/// directory above it, must belong to root or this user and be writable by nobody else
/// (a sticky, root-owned directory such as /tmp is allowed above the program's own
/// directory, which is what sticky means). Otherwise whoever can write one of them can
/// swap the program for their own.
pub(crate) fn check_dir_chain(dir: &Path) -> Result<(), KeyError> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    for (depth, ancestor) in dir.ancestors().enumerate() {
        let meta = std::fs::metadata(ancestor).map_err(io_error("cannot stat", ancestor))?;
        if meta.uid() != 0 && meta.uid() != euid {
            return Err(KeyError::WrongOwner {
                path: ancestor.into(),
                owner: meta.uid(),
                expected: euid,
            });
        }
        let sticky = meta.mode() & libc::S_ISVTX != 0 && meta.uid() == 0;
        if meta.mode() & 0o022 != 0 && !(sticky && depth > 0) {
            return Err(KeyError::TooOpen {
                path: ancestor.into(),
                mode: meta.mode() & 0o7777,
            });
        }
    }
    Ok(())
}
