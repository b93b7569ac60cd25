//! Backing `stat` to FUSE attributes, and the caller's ids for new objects.

use std::os::fd::BorrowedFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};

use crate::volume::file_header::FileFormat;

/// Attributes of a backing object; a regular file's size is decoded as `format`.
pub fn file_attr(id: u64, st: &libc::stat, format: FileFormat) -> FileAttr {
    let kind = kind_from_mode(st.st_mode);
    let size = match kind {
        // A file whose length no plaintext length gives reads as empty; reads report the
        // damage.
        FileType::RegularFile => format.plaintext_len(st.st_size as u64).unwrap_or(0),
        FileType::Symlink => symlink_plain_len(st.st_size as u64),
        _ => st.st_size as u64,
    };
    FileAttr {
        ino: INodeNo(id),
        size,
        blocks: st.st_blocks as u64,
        atime: system_time(st.st_atime, st.st_atime_nsec),
        mtime: system_time(st.st_mtime, st.st_mtime_nsec),
        ctime: system_time(st.st_ctime, st.st_ctime_nsec),
        crtime: UNIX_EPOCH,
        kind,
        perm: (st.st_mode & 0o7777) as u16,
        nlink: st.st_nlink as u32,
        uid: st.st_uid,
        gid: st.st_gid,
        rdev: st.st_rdev as u32,
        blksize: 4096,
        flags: 0,
    }
}

/// Length of a symlink target whose stored form is base64url(SIV tag + target), or the
/// stored length itself for plaintext targets (the two can't be told apart by length, so
/// this is only used for `st_size`; readlink returns the exact target).
fn symlink_plain_len(stored: u64) -> u64 {
    (stored * 3 / 4).saturating_sub(16)
}

fn kind_from_mode(mode: u32) -> FileType {
    match mode & libc::S_IFMT {
        libc::S_IFDIR => FileType::Directory,
        libc::S_IFLNK => FileType::Symlink,
        libc::S_IFIFO => FileType::NamedPipe,
        libc::S_IFSOCK => FileType::Socket,
        libc::S_IFCHR => FileType::CharDevice,
        libc::S_IFBLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

pub fn kind_from_dtype(d_type: u8) -> FileType {
    match d_type {
        libc::DT_DIR => FileType::Directory,
        libc::DT_LNK => FileType::Symlink,
        libc::DT_FIFO => FileType::NamedPipe,
        libc::DT_SOCK => FileType::Socket,
        libc::DT_CHR => FileType::CharDevice,
        libc::DT_BLK => FileType::BlockDevice,
        _ => FileType::RegularFile,
    }
}

fn system_time(secs: i64, nsecs: i64) -> SystemTime {
    let nanos = Duration::from_nanos(nsecs.clamp(0, 999_999_999) as u64);
    if secs >= 0 {
        UNIX_EPOCH + Duration::from_secs(secs as u64) + nanos
    } else {
        UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()) + nanos
    }
}

/// New access and modification times from a setattr.
#[derive(Default)]
pub struct Times {
    pub atime: Option<TimeOrNow>,
    pub mtime: Option<TimeOrNow>,
}

impl Times {
    pub fn any(&self) -> bool {
        self.atime.is_some() || self.mtime.is_some()
    }

    pub fn to_timespecs(&self) -> (Option<libc::timespec>, Option<libc::timespec>) {
        (self.atime.map(timespec), self.mtime.map(timespec))
    }
}

fn timespec(time: TimeOrNow) -> libc::timespec {
    match time {
        TimeOrNow::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        TimeOrNow::SpecificTime(t) => match t.duration_since(UNIX_EPOCH) {
            Ok(d) => libc::timespec {
                tv_sec: d.as_secs() as i64,
                tv_nsec: d.subsec_nanos() as i64,
            },
            // fuser 0.18 decodes the kernel's (tv_sec < 0, tv_nsec) as UNIX_EPOCH minus
            // (-tv_sec s + tv_nsec ns) (its `system_time_from_time`), so undoing exactly that
            // recovers the time asked for; the true instant would be off by 2 * tv_nsec.
            Err(e) => libc::timespec {
                tv_sec: -(e.duration().as_secs() as i64),
                tv_nsec: e.duration().subsec_nanos() as i64,
            },
        },
    }
}

/// Who asked for a new object. The daemon runs as root, so new objects are chowned to
/// the caller, as a local file system would create them.
#[derive(Debug, Clone, Copy)]
pub struct CallerIds {
    pub uid: u32,
    pub gid: u32,
}

impl CallerIds {
    /// For a new hard link: the object keeps its owner.
    pub const KEEP: CallerIds = CallerIds {
        uid: u32::MAX,
        gid: u32::MAX,
    };

    pub fn apply(self, parent: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        // SAFETY: no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if self.uid == u32::MAX || (self.uid == euid && self.gid == egid) {
            return Ok(());
        }
        // In a set-group-ID directory the kernel already gave the object the directory's group.
        let setgid_parent = super::backing::stat(parent)?.st_mode & libc::S_ISGID != 0;
        super::backing::chown(fd, Some(self.uid), (!setgid_parent).then_some(self.gid))
    }
}
