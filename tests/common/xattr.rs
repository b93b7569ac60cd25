//! Extended attribute calls on a path, not following a final symlink (std offers none).

use std::ffi::CString;
use std::io;
use std::path::Path;

use super::sys::{cpath, cvt};

fn cname(name: impl AsRef<[u8]>) -> CString {
    CString::new(name.as_ref()).expect("no NUL in an attribute name")
}

/// A byte count from a libc call that returns one, or -1 and errno.
fn ssize(ret: isize) -> io::Result<usize> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret as usize)
    }
}

pub fn lsetxattr(path: &Path, name: impl AsRef<[u8]>, value: &[u8], flags: i32) -> io::Result<()> {
    let (path, name) = (cpath(path), cname(name));
    // SAFETY: NUL-terminated strings and a value of its length.
    cvt(unsafe {
        libc::lsetxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
}

/// An attribute's value, asking for its size first as getfattr does.
pub fn lgetxattr(path: &Path, name: impl AsRef<[u8]>) -> io::Result<Vec<u8>> {
    let (path, name) = (cpath(path), cname(name));
    // SAFETY: a NULL buffer of size 0 asks for the size.
    let size =
        ssize(unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), std::ptr::null_mut(), 0) })?;
    let mut buf = vec![0u8; size];
    // SAFETY: a buffer of its length.
    let n = ssize(unsafe {
        libc::lgetxattr(path.as_ptr(), name.as_ptr(), buf.as_mut_ptr().cast(), size)
    })?;
    buf.truncate(n);
    Ok(buf)
}

/// One lgetxattr into exactly `buf` (NULL when it is empty, which asks for the size): the
/// byte count the call returned.
pub fn lgetxattr_into(path: &Path, name: impl AsRef<[u8]>, buf: &mut [u8]) -> io::Result<usize> {
    let (path, name) = (cpath(path), cname(name));
    let ptr = if buf.is_empty() {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    // SAFETY: a buffer of `buf.len()` bytes, or NULL with size 0.
    ssize(unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), ptr, buf.len()) })
}

/// Every attribute name of a path, sorted (asked again if the list grew in between).
pub fn llistxattr(path: &Path) -> io::Result<Vec<Vec<u8>>> {
    let path = cpath(path);
    loop {
        // SAFETY: a NULL buffer of size 0 asks for the size.
        let size = ssize(unsafe { libc::llistxattr(path.as_ptr(), std::ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; size];
        // SAFETY: a buffer of its length.
        match ssize(unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), size) }) {
            Ok(n) => buf.truncate(n),
            Err(e) if e.raw_os_error() == Some(libc::ERANGE) => continue,
            Err(e) => return Err(e),
        }
        let mut names: Vec<Vec<u8>> = buf
            .split(|b| *b == 0)
            .filter(|name| !name.is_empty())
            .map(<[u8]>::to_vec)
            .collect();
        names.sort();
        return Ok(names);
    }
}

pub fn lremovexattr(path: &Path, name: impl AsRef<[u8]>) -> io::Result<()> {
    let (path, name) = (cpath(path), cname(name));
    // SAFETY: NUL-terminated strings.
    cvt(unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) })
}
