//! Thin, safe wrappers over the `*at` syscalls the filesystem uses. Every access to the
//! backing tree goes relative to a directory fd with O_NOFOLLOW (or through an O_PATH fd
//! that already names the object), so a symlink planted in the backing directory is
//! never followed.
//!
//! This is the crate's one set of such wrappers: the filesystem, `xtsfs upgrade` and
//! `xtsfs fsck` all reach the backing tree through them.

use std::ffi::{CStr, CString, OsStr, OsString};
use std::fs::File;
use std::io;
use std::mem::MaybeUninit;
use std::ops::Range;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;

const EMPTY: &CStr = c"";

/// The flags that open a directory to list it or to work in it.
pub const DIR_FLAGS: i32 = libc::O_RDONLY | libc::O_DIRECTORY;

/// A libc return value as an `io::Result`: negative is the thread's errno.
pub fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// A name as a C string; a name with a NUL byte is EINVAL.
pub fn cname(name: &OsStr) -> io::Result<CString> {
    CString::new(name.as_bytes()).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// The /proc path of an fd, for the few calls that have no fd form usable with O_PATH.
fn proc_path(fd: BorrowedFd<'_>) -> io::Result<CString> {
    cname(OsStr::new(&format!("/proc/self/fd/{}", fd.as_raw_fd())))
}

pub fn open_at(dir: BorrowedFd<'_>, name: &OsStr, flags: i32, mode: u32) -> io::Result<OwnedFd> {
    let name = cname(name)?;
    // SAFETY: valid fd and NUL-terminated path; on success we own the returned fd.
    let fd = cvt(unsafe {
        libc::openat(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags | libc::O_NOFOLLOW | libc::O_CLOEXEC,
            mode,
        )
    })?;
    // SAFETY: fd was just returned by openat.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory at `path` (following symlinks in it: the path is the user's own
/// choice, the backing directory or a mount point).
pub fn open_dir(path: &Path) -> io::Result<OwnedFd> {
    let path = cname(path.as_os_str())?;
    // SAFETY: NUL-terminated path; on success we own the returned fd.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), DIR_FLAGS | libc::O_CLOEXEC) })?;
    // SAFETY: fd was just returned by open.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens the directory `relative` (to `tree`) one component at a time, so no component
/// can be a symlink.
pub fn open_dir_in(tree: BorrowedFd<'_>, relative: &Path) -> io::Result<OwnedFd> {
    let mut dir = open_at(tree, OsStr::new("."), DIR_FLAGS, 0)?;
    for component in relative.iter() {
        dir = open_at(dir.as_fd(), component, DIR_FLAGS, 0)?;
    }
    Ok(dir)
}

/// Opens `name` to read it without moving its atime where we may ([`open_at_quiet`]).
/// O_NONBLOCK: a FIFO swapped in never blocks the caller.
pub fn open_read(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    open_at_quiet(dir, name, libc::O_RDONLY | libc::O_NONBLOCK, 0)
}

/// An O_PATH handle on a directory entry, not following a final symlink.
pub fn open_path(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<OwnedFd> {
    open_at(dir, name, libc::O_PATH, 0)
}

/// Opens the object an O_PATH fd names for I/O. Going through /proc/self/fd reaches the
/// same inode the fd holds, never a path that could have been swapped.
pub fn reopen(fd: BorrowedFd<'_>, flags: i32) -> io::Result<File> {
    let path = proc_path(fd)?;
    // SAFETY: NUL-terminated path; on success we own the returned fd.
    let raw = cvt(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })?;
    // SAFETY: raw was just returned by open.
    Ok(unsafe { File::from_raw_fd(raw) })
}

/// [`reopen`] with O_NOATIME: the daemon's own reads of a backing file (its header, the
/// rest of a unit a write only partly covers) must not move the file's access time,
/// which the mount reports as the plaintext file's. Reads a user makes through the mount
/// mark the file accessed separately (`XtsFs::read`). Without CAP_FOWNER, O_NOATIME is
/// refused for another user's file: then without it.
pub fn reopen_quiet(fd: BorrowedFd<'_>, flags: i32) -> io::Result<File> {
    match reopen(fd, flags | libc::O_NOATIME) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => reopen(fd, flags),
        result => result,
    }
}

/// [`open_at`] with O_NOATIME, as for [`reopen_quiet`].
pub fn open_at_quiet(
    dir: BorrowedFd<'_>,
    name: &OsStr,
    flags: i32,
    mode: u32,
) -> io::Result<OwnedFd> {
    match open_at(dir, name, flags | libc::O_NOATIME, mode) {
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => open_at(dir, name, flags, mode),
        result => result,
    }
}

/// The status of the object an fd names (any fd, O_PATH included).
pub fn stat(fd: BorrowedFd<'_>) -> io::Result<libc::stat> {
    fstatat(fd, EMPTY, libc::AT_EMPTY_PATH)
}

/// The status of `name` in `dir`, not following a final symlink.
pub fn stat_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<libc::stat> {
    fstatat(dir, &cname(name)?, 0)
}

fn fstatat(dir: BorrowedFd<'_>, name: &CStr, flags: i32) -> io::Result<libc::stat> {
    let mut st = MaybeUninit::<libc::stat>::uninit();
    // SAFETY: valid fd and NUL-terminated path (empty with AT_EMPTY_PATH: the fd itself);
    // st is written on success.
    cvt(unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            st.as_mut_ptr(),
            flags | libc::AT_SYMLINK_NOFOLLOW,
        )
    })?;
    // SAFETY: fstatat succeeded, so st is initialised.
    Ok(unsafe { st.assume_init() })
}

pub fn mkdir_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32) -> io::Result<()> {
    let name = cname(name)?;
    // SAFETY: valid fd and path.
    cvt(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

pub fn mknod_at(dir: BorrowedFd<'_>, name: &OsStr, mode: u32, rdev: u64) -> io::Result<()> {
    let name = cname(name)?;
    // SAFETY: valid fd and path.
    cvt(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, rdev) }).map(drop)
}

pub fn symlink_at(target: &[u8], dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<()> {
    let target = CString::new(target).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    let name = cname(name)?;
    // SAFETY: valid fd and paths.
    cvt(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// The target of the symlink an O_PATH fd names.
pub fn readlink(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    readlinkat(fd, EMPTY)
}

/// The target of the symlink `name` in `dir` (never followed).
pub fn readlink_at(dir: BorrowedFd<'_>, name: &OsStr) -> io::Result<Vec<u8>> {
    readlinkat(dir, &cname(name)?)
}

fn readlinkat(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: buffer pointer and length are valid; the path is NUL-terminated (empty: the
    // fd's own link).
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    buf.truncate(n as usize);
    Ok(buf)
}

pub fn unlink_at(dir: BorrowedFd<'_>, name: &OsStr, flags: i32) -> io::Result<()> {
    let name = cname(name)?;
    // SAFETY: valid fd and path.
    cvt(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

pub fn rename_at(
    old_dir: BorrowedFd<'_>,
    old: &OsStr,
    new_dir: BorrowedFd<'_>,
    new: &OsStr,
    flags: u32,
) -> io::Result<()> {
    let (old, new) = (cname(old)?, cname(new)?);
    // SAFETY: valid fds and paths.
    cvt(unsafe {
        libc::renameat2(
            old_dir.as_raw_fd(),
            old.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            flags,
        )
    })
    .map(drop)
}

/// A new hard link to the object an O_PATH fd names (AT_EMPTY_PATH needs
/// CAP_DAC_READ_SEARCH, which the root daemon has).
pub fn link_at(fd: BorrowedFd<'_>, new_dir: BorrowedFd<'_>, new: &OsStr) -> io::Result<()> {
    let new = cname(new)?;
    // SAFETY: valid fds and paths.
    cvt(unsafe {
        libc::linkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            new_dir.as_raw_fd(),
            new.as_ptr(),
            libc::AT_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// A new name `to` in `to_dir` for the entry `from` in `from_dir` (not following it:
/// linkat without AT_SYMLINK_FOLLOW).
pub fn link_name_at(
    from_dir: BorrowedFd<'_>,
    from: &OsStr,
    to_dir: BorrowedFd<'_>,
    to: &OsStr,
) -> io::Result<()> {
    let (from, to) = (cname(from)?, cname(to)?);
    // SAFETY: valid fds and NUL-terminated paths.
    cvt(unsafe {
        libc::linkat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
            0,
        )
    })
    .map(drop)
}

/// Sets owner and group (`None` leaves one unchanged) of the object an fd names, any fd.
pub fn chown(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    let (uid, gid) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
    // SAFETY: empty path with AT_EMPTY_PATH acts on the fd; u32::MAX (-1) leaves an id unchanged.
    cvt(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            uid,
            gid,
            libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW,
        )
    })
    .map(drop)
}

/// Sets the mode of the object an fd names, any fd (through /proc, which O_PATH fds need).
pub fn chmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let path = proc_path(fd)?;
    // SAFETY: NUL-terminated path.
    cvt(unsafe { libc::fchmodat(libc::AT_FDCWD, path.as_ptr(), mode, 0) }).map(drop)
}

/// Sets access and modification times; `None` leaves one unchanged.
pub fn utimens(
    fd: BorrowedFd<'_>,
    atime: Option<libc::timespec>,
    mtime: Option<libc::timespec>,
) -> io::Result<()> {
    let omit = libc::timespec {
        tv_sec: 0,
        tv_nsec: libc::UTIME_OMIT,
    };
    let times = [atime.unwrap_or(omit), mtime.unwrap_or(omit)];
    let path = proc_path(fd)?;
    // SAFETY: NUL-terminated path and a two-element times array.
    cvt(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

/// Sets access and modification time of an open (not O_PATH) fd, both given.
pub fn futimens(fd: BorrowedFd<'_>, times: &[libc::timespec; 2]) -> io::Result<()> {
    // SAFETY: a valid fd and two timespecs.
    cvt(unsafe { libc::futimens(fd.as_raw_fd(), times.as_ptr()) }).map(drop)
}

/// fsync: for a directory, makes the entries made or removed in it durable.
pub fn fsync(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a valid fd.
    cvt(unsafe { libc::fsync(fd.as_raw_fd()) }).map(drop)
}

pub fn statvfs(fd: BorrowedFd<'_>) -> io::Result<libc::statvfs> {
    let mut st = MaybeUninit::<libc::statvfs>::uninit();
    // SAFETY: st is written on success.
    cvt(unsafe { libc::fstatvfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatvfs succeeded.
    Ok(unsafe { st.assume_init() })
}

/// Whether the file system of `fd` keeps its files in memory (tmpfs, ramfs): its page
/// cache is its storage, and cannot be dropped.
pub fn is_memory_backed(fd: BorrowedFd<'_>) -> io::Result<bool> {
    let mut st = MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: st is written on success.
    cvt(unsafe { libc::fstatfs(fd.as_raw_fd(), st.as_mut_ptr()) })?;
    // SAFETY: fstatfs succeeded.
    let kind = unsafe { st.assume_init() }.f_type;
    // RAMFS_MAGIC, which libc does not define.
    const RAMFS: libc::__fsword_t = 0x8584_58f6;
    Ok(kind == libc::TMPFS_MAGIC || kind == RAMFS)
}

/// Advises the kernel that the cached pages of `range` of `file` are not needed again:
/// clean ones are dropped, dirty ones queued for writeback. A hint; errors are ignored.
pub fn drop_cached(file: &File, range: Range<u64>) {
    if let Some((offset, len)) = offset_and_len(range) {
        // SAFETY: valid fd; posix_fadvise reads nothing from memory.
        unsafe { libc::posix_fadvise(file.as_raw_fd(), offset, len, libc::POSIX_FADV_DONTNEED) };
    }
}

/// Starts writeback of the dirty pages of `range` of `file`, without waiting for it. A
/// hint; errors are ignored.
pub fn start_writeback(file: &File, range: Range<u64>) {
    if let Some((offset, len)) = offset_and_len(range) {
        // SAFETY: valid fd; sync_file_range reads nothing from memory.
        unsafe {
            libc::sync_file_range(file.as_raw_fd(), offset, len, libc::SYNC_FILE_RANGE_WRITE)
        };
    }
}

fn offset_and_len(range: Range<u64>) -> Option<(libc::off_t, libc::off_t)> {
    let len = range.end.saturating_sub(range.start);
    Some((to_off(range.start).ok()?, to_off(len).ok()?))
}

pub fn fallocate(file: &File, mode: i32, offset: u64, len: u64) -> io::Result<()> {
    let (offset, len) = (to_off(offset)?, to_off(len)?);
    // SAFETY: valid fd.
    cvt(unsafe { libc::fallocate(file.as_raw_fd(), mode, offset, len) }).map(drop)
}

fn to_off(value: u64) -> io::Result<libc::off_t> {
    libc::off_t::try_from(value).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))
}

/// One directory entry: name, inode number, d_type.
pub struct RawDirEntry {
    pub name: OsString,
    pub ino: u64,
    pub d_type: u8,
}

/// Lists a directory (an O_PATH fd is fine), without "." and "..".
pub fn read_dir(dir: BorrowedFd<'_>) -> io::Result<Vec<RawDirEntry>> {
    let fd = open_at(dir, OsStr::new("."), libc::O_RDONLY | libc::O_DIRECTORY, 0)?;
    let raw = std::os::fd::IntoRawFd::into_raw_fd(fd);
    // SAFETY: raw is an open directory fd whose ownership passes to the DIR stream.
    let stream = unsafe { libc::fdopendir(raw) };
    if stream.is_null() {
        let err = io::Error::last_os_error();
        // SAFETY: fdopendir failed, so raw is still ours to close.
        unsafe { libc::close(raw) };
        return Err(err);
    }
    let mut entries = Vec::new();
    let result = loop {
        // SAFETY: errno is thread-local; readdir reports end vs error through it.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: stream is a valid DIR*.
        let ent = unsafe { libc::readdir64(stream) };
        if ent.is_null() {
            let err = io::Error::last_os_error();
            break if err.raw_os_error() == Some(0) {
                Ok(())
            } else {
                Err(err)
            };
        }
        // SAFETY: readdir returned a valid entry, valid until the next readdir call.
        let ent = unsafe { &*ent };
        // SAFETY: d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr(ent.d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            entries.push(RawDirEntry {
                name: OsString::from_vec(name.to_vec()),
                ino: ent.d_ino,
                d_type: ent.d_type,
            });
        }
    };
    // SAFETY: stream is valid and closed once.
    unsafe { libc::closedir(stream) };
    result.map(|()| entries)
}

/// Runs `make` with this thread's umask set to `umask`, then restores it. The first call
/// on a thread unshares the thread's file-system attributes (CLONE_FS), so the umask is
/// the thread's own and the daemon's other threads keep theirs. A new backing object then
/// gets its mode from the backing file system exactly as a local one would: the
/// caller's mode minus the caller's umask, or the parent's default ACL instead of the
/// umask.
pub fn with_umask<T>(umask: u32, make: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    thread_local! {
        static UNSHARED: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    if !UNSHARED.get() {
        // SAFETY: no pointers; CLONE_FS only detaches this thread's cwd, root and umask.
        cvt(unsafe { libc::unshare(libc::CLONE_FS) })?;
        UNSHARED.set(true);
    }
    // SAFETY: umask cannot fail.
    let previous = unsafe { libc::umask(umask & 0o777) };
    let result = make();
    // SAFETY: as above.
    unsafe { libc::umask(previous) };
    result
}

/// Linux's `dev_t` from the kernel's 32-bit encoding of a device number (the one FUSE
/// carries: minor low 8 bits, major 12 bits, minor high 12 bits).
pub fn dev_from_fuse(rdev: u32) -> libc::dev_t {
    let major = (rdev & 0xfff00) >> 8;
    let minor = (rdev & 0xff) | ((rdev >> 12) & 0xfff00);
    libc::makedev(major, minor)
}

/// The kernel's 32-bit encoding of a device number, for FUSE attributes.
pub fn dev_to_fuse(dev: libc::dev_t) -> u32 {
    let (major, minor) = (libc::major(dev), libc::minor(dev));
    (minor & 0xff) | (major << 8) | ((minor & !0xff) << 12)
}

fn cxattr(name: &[u8]) -> io::Result<CString> {
    CString::new(name).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))
}

/// One extended attribute of the object an O_PATH fd names (through /proc, which reaches
/// the object itself even for a symlink or FIFO): its value if it fits `max` bytes; with
/// `max` 0, an empty value and the value's length.
pub fn getxattr(fd: BorrowedFd<'_>, name: &[u8], max: usize) -> io::Result<(Vec<u8>, usize)> {
    let (path, name) = (proc_path(fd)?, cxattr(name)?);
    let mut buf = vec![0u8; max];
    // SAFETY: NUL-terminated strings and a buffer of `max` bytes.
    let n = unsafe {
        libc::getxattr(
            path.as_ptr(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    if max > 0 {
        buf.truncate(n as usize);
    }
    Ok((buf, n as usize))
}

/// Sets one extended attribute; `flags` are XATTR_CREATE / XATTR_REPLACE.
pub fn setxattr(fd: BorrowedFd<'_>, name: &[u8], value: &[u8], flags: i32) -> io::Result<()> {
    let (path, name) = (proc_path(fd)?, cxattr(name)?);
    // SAFETY: NUL-terminated strings and a value buffer of its length.
    cvt(unsafe {
        libc::setxattr(
            path.as_ptr(),
            name.as_ptr(),
            value.as_ptr().cast(),
            value.len(),
            flags,
        )
    })
    .map(drop)
}

pub fn removexattr(fd: BorrowedFd<'_>, name: &[u8]) -> io::Result<()> {
    let (path, name) = (proc_path(fd)?, cxattr(name)?);
    // SAFETY: NUL-terminated strings.
    cvt(unsafe { libc::removexattr(path.as_ptr(), name.as_ptr()) }).map(drop)
}

/// The names of every extended attribute of an object, as the backing file system lists
/// them.
pub fn listxattr(fd: BorrowedFd<'_>) -> io::Result<Vec<Vec<u8>>> {
    let path = proc_path(fd)?;
    loop {
        // SAFETY: a NULL buffer of size 0 asks for the size.
        let size = unsafe { libc::listxattr(path.as_ptr(), std::ptr::null_mut(), 0) };
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buf = vec![0u8; size as usize];
        // SAFETY: a buffer of its length.
        let n = unsafe { libc::listxattr(path.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            let err = io::Error::last_os_error();
            // An attribute added between the two calls: ask again.
            if err.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(err);
        }
        buf.truncate(n as usize);
        return Ok(buf
            .split(|&b| b == 0)
            .filter(|name| !name.is_empty())
            .map(<[u8]>::to_vec)
            .collect());
    }
}
