//! Every error the filesystem returns becomes an errno here, and nowhere else.

use std::fmt::Display;
use std::os::fd::BorrowedFd;
use std::sync::{Mutex, MutexGuard};

use fuser::Errno;

use crate::crypto::names::NameError;

impl From<NameError> for Errno {
    fn from(e: NameError) -> Self {
        match e {
            NameError::Invalid => Errno::EINVAL,
            NameError::TooLong => Errno::ENAMETOOLONG,
            NameError::Undecryptable => Errno::EIO,
        }
    }
}

/// A backing object whose xtsfs data is damaged: logged with its backing path, EIO.
pub fn corrupt(fd: BorrowedFd<'_>, what: &dyn Display) -> Errno {
    tracing::error!(path = %backing_path(fd), "corrupt backing file: {what}");
    Errno::EIO
}

/// The backing path an fd names, for log messages.
pub fn backing_path(fd: BorrowedFd<'_>) -> String {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "<unknown>".into())
}

/// Locks a mutex; a poisoned one (a panic elsewhere) becomes EIO instead of a second panic.
pub fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, Errno> {
    mutex.lock().map_err(|_| Errno::EIO)
}
