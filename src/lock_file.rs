//! An exclusive lock on a lock file, taken without ever blocking: the one way the volume's
//! header lock and the host state lock are held. A leaf module, so that the volume and the
//! key providers can both use it.

use std::fs::{File, FileType};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often a held lock is tried again.
const RETRY: Duration = Duration::from_millis(20);

/// Why a lock was not taken; each holder words it for its own file.
#[derive(Debug)]
pub enum LockError {
    /// The lock file cannot be opened: ELOOP for a symlink, ENXIO for a FIFO, as the
    /// open never follows the one or blocks on the other.
    Open(io::Error),
    Stat(io::Error),
    /// The lock file is not a regular file; what it is instead.
    NotRegular(FileType),
    Lock(io::Error),
    /// Another process held the lock for the whole wait.
    Held,
}

/// An exclusive `flock` on an open lock file, released when this is dropped.
#[derive(Debug)]
pub struct LockFile {
    _file: File,
}

impl LockFile {
    /// Opens `path`, creating it with mode 0600, and locks it; tries again for `wait`
    /// while another process holds it. The file must be a regular file (not a FIFO or a
    /// symlink someone planted).
    pub fn acquire(path: &Path, wait: Duration) -> Result<LockFile, LockError> {
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(path)
            .map_err(LockError::Open)?;
        let meta = file.metadata().map_err(LockError::Stat)?;
        if !meta.is_file() {
            return Err(LockError::NotRegular(meta.file_type()));
        }
        let deadline = Instant::now() + wait;
        loop {
            // SAFETY: a valid fd; LOCK_NB never blocks.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(LockFile { _file: file });
            }
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(LockError::Lock(error));
            }
            if Instant::now() >= deadline {
                return Err(LockError::Held);
            }
            std::thread::sleep(RETRY);
        }
    }
}
