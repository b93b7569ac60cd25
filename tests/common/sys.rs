//! Thin wrappers of the system calls the tests make that std does not offer.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::Path;

pub fn cpath(path: &Path) -> CString {
    CString::new(path.as_os_str().as_bytes()).expect("no NUL in a test path")
}

/// A libc return value: -1 becomes the errno.
pub fn cvt(ret: libc::c_int) -> io::Result<()> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

pub fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    // SAFETY: a valid fd; offsets are plain integers.
    cvt(unsafe { libc::fallocate(file.as_raw_fd(), mode, offset as i64, len as i64) })
}

pub fn renameat2(from: &Path, to: &Path, flags: libc::c_uint) -> io::Result<()> {
    let (from, to) = (cpath(from), cpath(to));
    // SAFETY: NUL-terminated paths.
    cvt(unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            flags,
        )
    })
}

pub fn truncate(path: &Path, len: u64) -> io::Result<()> {
    let path = cpath(path);
    // SAFETY: NUL-terminated path.
    cvt(unsafe { libc::truncate(path.as_ptr(), len as i64) })
}

pub fn mkfifo(path: &Path, mode: u32) -> io::Result<()> {
    let path = cpath(path);
    // SAFETY: NUL-terminated path.
    cvt(unsafe { libc::mkfifo(path.as_ptr(), mode) })
}

/// Reads into `buf` at `offset` until it is full or the file ends; returns the bytes read.
pub fn read_full_at(file: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match file.read_at(&mut buf[done..], offset + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

/// Reads up to `len` bytes at `offset`, stopping early only at end of file.
pub fn try_read_at(file: &File, offset: u64, len: u64) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; len as usize];
    let done = read_full_at(file, &mut buf, offset)?;
    buf.truncate(done);
    Ok(buf)
}

/// [`try_read_at`], which must succeed.
pub fn read_at(file: &File, offset: u64, len: u64) -> Vec<u8> {
    try_read_at(file, offset, len).unwrap_or_else(|e| panic!("read {len} bytes at {offset}: {e}"))
}

pub fn try_statvfs(path: &Path) -> io::Result<libc::statvfs> {
    let path = cpath(path);
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path, st is writable.
    cvt(unsafe { libc::statvfs(path.as_ptr(), &mut st) })?;
    Ok(st)
}

/// [`try_statvfs`], which must succeed.
pub fn statvfs(path: &Path) -> libc::statvfs {
    try_statvfs(path).expect("statvfs")
}

pub fn timespec(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

/// A utimensat time that leaves the timestamp as it is.
pub const OMIT: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_OMIT,
};

pub fn utimensat(
    path: &Path,
    atime: libc::timespec,
    mtime: libc::timespec,
    flags: i32,
) -> io::Result<()> {
    let path = cpath(path);
    let times = [atime, mtime];
    // SAFETY: NUL-terminated path and a two-element times array.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), flags) })
}
