//! Reading key material the way ssh does: refuse files others can read or that belong
//! to someone else, and never follow a symlink planted in a key directory.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use super::{io_error, KeyError};
use crate::crypto::secret::SecretVec;

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
            _ => io_error("cannot open key file", path)(e),
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
