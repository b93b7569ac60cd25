//! Every error the filesystem returns becomes an errno here, and nowhere else: the core
//! says what went wrong as an [`FsError`], and `From<FsError> for Errno` is the one
//! mapping, which the adapter applies to every reply.
//!
//! The lock rule lives here too. A poisoned lock (a panic while another request held it)
//! fails the request with EIO, through [`lock`], [`read`] and [`write`]. The only
//! exception is a path that must finish whatever happened before: dropping keys,
//! listings, handles, lookups or contents buffers. It goes on with the data through
//! [`recover`] (or [`try_recover`]), and says so where it does. That is sound because every structure behind these locks is changed
//! by single calls (a map insert or remove, a value replaced), never left half-done.

use std::fmt::Display;
use std::io;
use std::os::fd::BorrowedFd;
use std::sync::{
    LockResult, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard, TryLockError,
    TryLockResult,
};

use fuser::Errno;

use crate::crypto::names::NameError;

/// Why a filesystem operation failed.
#[derive(Debug)]
pub enum FsError {
    /// A backing call failed: its errno.
    Io(io::Error),
    /// A name, symlink target or attribute that cannot be encrypted or decrypted.
    Name(NameError),
    /// The volume is locked: its keys are withdrawn (EACCES).
    Locked,
    /// A directory handle whose listing was dropped at a lock (EACCES).
    ListingDropped,
    /// The mount is read-only (EROFS).
    ReadOnly,
    /// A node id the kernel no longer holds (ESTALE).
    UnknownNode,
    /// A handle that is not open, or not open for this (EBADF).
    BadHandle,
    /// A file operation on a directory handle (EISDIR).
    IsDirectory,
    /// An argument the operation does not take (EINVAL).
    Invalid,
    /// An operation or mode xtsfs does not serve (EOPNOTSUPP).
    Unsupported,
    /// An offset and length past the largest file (EFBIG).
    TooLarge,
    /// An answer too long for the FUSE protocol (E2BIG).
    ReplyTooLong,
    /// A buffer the caller gave is too small, or an attribute name too long (ERANGE).
    Range,
    /// Only the owner may do this (EPERM).
    NotOwner,
    /// Damaged xtsfs data, already logged by [`corrupt`] (EIO).
    Corrupt,
    /// A lock poisoned by a panic elsewhere (EIO).
    Poisoned,
    /// The system's random source failed, so no new file header (EIO).
    NoRandomness,
}

impl From<FsError> for Errno {
    fn from(e: FsError) -> Self {
        match e {
            FsError::Io(e) => Errno::from(e),
            FsError::Name(NameError::Invalid) => Errno::EINVAL,
            FsError::Name(NameError::TooLong) => Errno::ENAMETOOLONG,
            FsError::Name(NameError::Undecryptable) => Errno::EIO,
            FsError::Locked | FsError::ListingDropped => Errno::EACCES,
            FsError::ReadOnly => Errno::EROFS,
            FsError::UnknownNode => Errno::ESTALE,
            FsError::BadHandle => Errno::EBADF,
            FsError::IsDirectory => Errno::EISDIR,
            FsError::Invalid => Errno::EINVAL,
            FsError::Unsupported => Errno::EOPNOTSUPP,
            FsError::TooLarge => Errno::EFBIG,
            FsError::ReplyTooLong => Errno::E2BIG,
            FsError::Range => Errno::ERANGE,
            FsError::NotOwner => Errno::EPERM,
            FsError::Corrupt | FsError::Poisoned | FsError::NoRandomness => Errno::EIO,
        }
    }
}

impl From<io::Error> for FsError {
    fn from(e: io::Error) -> Self {
        FsError::Io(e)
    }
}

impl From<NameError> for FsError {
    fn from(e: NameError) -> Self {
        FsError::Name(e)
    }
}

impl FsError {
    /// As an `io::Error`, for the daemon's own calls that report in those terms.
    pub fn into_io(self) -> io::Error {
        io::Error::from_raw_os_error(Errno::from(self).code())
    }
}

/// A backing object whose xtsfs data is damaged: logged with its backing path, EIO.
pub fn corrupt(fd: BorrowedFd<'_>, what: &dyn Display) -> FsError {
    tracing::error!(path = %backing_path(fd), "corrupt backing file: {what}");
    FsError::Corrupt
}

/// The backing path an fd names, for log messages.
pub fn backing_path(fd: BorrowedFd<'_>) -> String {
    use std::os::fd::AsRawFd;
    std::fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd()))
        .map(|p| p.display().to_string())
        .unwrap_or_else(|_| "<unknown>".into())
}

/// Locks a mutex for a request; poisoned is EIO.
pub fn lock<T>(mutex: &Mutex<T>) -> Result<MutexGuard<'_, T>, FsError> {
    mutex.lock().map_err(|_| FsError::Poisoned)
}

/// Takes a read lock for a request; poisoned is EIO.
pub fn read<T>(lock: &RwLock<T>) -> Result<RwLockReadGuard<'_, T>, FsError> {
    lock.read().map_err(|_| FsError::Poisoned)
}

/// Takes a write lock for a request; poisoned is EIO.
pub fn write<T>(lock: &RwLock<T>) -> Result<RwLockWriteGuard<'_, T>, FsError> {
    lock.write().map_err(|_| FsError::Poisoned)
}

/// The guard of a lock, poisoned or not, for a path that must finish (see the module
/// documentation): `recover(mutex.lock())`.
pub fn recover<G>(result: LockResult<G>) -> G {
    result.unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// [`recover`] for a `try_lock`: the guard, poisoned or not; `None` only if the lock is
/// held.
pub fn try_recover<G>(result: TryLockResult<G>) -> Option<G> {
    match result {
        Ok(guard) => Some(guard),
        Err(TryLockError::Poisoned(poisoned)) => Some(poisoned.into_inner()),
        Err(TryLockError::WouldBlock) => None,
    }
}

/// What every filesystem operation returns.
pub type FsResult<T> = Result<T, FsError>;
