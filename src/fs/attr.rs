//! Backing `stat` to FUSE attributes, and the caller's ids for new objects.

use std::os::fd::BorrowedFd;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo, TimeOrNow};

use crate::volume::file_header::FileFormat;

/// Attributes of a backing object; a regular file's size is decoded as `format`, a
/// symlink's as an encrypted target if `encrypted_targets`.
pub fn file_attr(
    id: u64,
    st: &libc::stat,
    format: FileFormat,
    encrypted_targets: bool,
) -> FileAttr {
    let kind = kind_from_mode(st.st_mode);
    let size = match kind {
        // A file whose length no plaintext length gives reads as empty; reads report the
        // damage.
        FileType::RegularFile => format.plaintext_len(st.st_size as u64).unwrap_or(0),
        FileType::Symlink if encrypted_targets => symlink_plain_len(st.st_size as u64),
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
        rdev: super::backing::dev_to_fuse(st.st_rdev),
        blksize: PREFERRED_IO_SIZE,
        flags: 0,
    }
}

/// The `st_blksize` of everything in the mount: the I/O size programs should prefer.
/// Each read or write that reaches the daemon is a round trip, so it is larger than the
/// backing file system's page-sized blocks. Buffered writers size their buffers by it:
/// glibc's stdio up to its BUFSIZ of 8 KiB (Redis saves and loads its RDB file through
/// it), Python's buffered files in full.
const PREFERRED_IO_SIZE: u32 = 128 << 10;

/// Length of a symlink target whose stored form is base64url(SIV tag + target): the
/// encoding of n bytes is ceil(4n / 3) long, so floor(3 * stored / 4) is n exactly.
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

/// Who asks: the ids the kernel sends with a request, and the process.
#[derive(Debug, Clone, Copy)]
pub struct CallerIds {
    pub uid: u32,
    pub gid: u32,
    pub pid: u32,
}

/// CAP_FSETID: keeps set-id bits on a write, truncate or chown.
const CAP_FSETID: u32 = 4;
/// CAP_SYS_ADMIN: reads and lists `trusted.` attributes.
const CAP_SYS_ADMIN: u32 = 21;

impl CallerIds {
    /// For a new hard link: the object keeps its owner.
    pub const KEEP: CallerIds = CallerIds {
        uid: u32::MAX,
        gid: u32::MAX,
        pid: 0,
    };

    /// Gives a new object to the caller, as a local file system would create it: the
    /// daemon runs as root, so the backing object is root's until chowned. chown drops
    /// set-id bits, so a new non-directory that has any gets its mode back afterwards.
    pub fn apply(self, parent: BorrowedFd<'_>, fd: BorrowedFd<'_>) -> std::io::Result<()> {
        // SAFETY: no preconditions.
        let (euid, egid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if self.uid == u32::MAX || (self.uid == euid && self.gid == egid) {
            return Ok(());
        }
        // In a set-group-ID directory the kernel already gave the object the directory's group.
        let setgid_parent = super::backing::stat(parent)?.st_mode & libc::S_ISGID != 0;
        let st = super::backing::stat(fd)?;
        super::backing::chown(fd, Some(self.uid), (!setgid_parent).then_some(self.gid))?;
        let setid = st.st_mode & (libc::S_ISUID | libc::S_ISGID);
        if setid != 0 && st.st_mode & libc::S_IFMT != libc::S_IFDIR {
            super::backing::chmod(fd, st.st_mode & 0o7777)?;
        }
        Ok(())
    }

    /// Whether the caller's writes and truncates keep set-id bits, which takes
    /// CAP_FSETID, as for a local file system.
    pub fn keeps_setid(self) -> bool {
        self.capable(CAP_FSETID)
    }

    /// Whether `gid` is the caller's group or one of its supplementary groups, read from
    /// /proc (only for a file with set-group-ID and no group execute). A process that is
    /// gone is in its own group only.
    pub fn in_group(self, gid: u32) -> bool {
        if self.gid == gid {
            return true;
        }
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid));
        status.ok().is_some_and(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("Groups:"))
                .is_some_and(|groups| {
                    groups
                        .split_whitespace()
                        .any(|g| g.parse::<u32>() == Ok(gid))
                })
        })
    }

    /// Whether the caller sees `trusted.` attributes, which takes CAP_SYS_ADMIN.
    pub fn sees_trusted(self) -> bool {
        self.capable(CAP_SYS_ADMIN)
    }

    /// Whether the calling thread has `cap` in its effective set, read from /proc (only
    /// when it matters: a file with set-id bits, a listing with `trusted.` names). A
    /// process that is gone counts as privileged only if its uid was 0.
    fn capable(self, cap: u32) -> bool {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid));
        let cap_eff = status.ok().and_then(|status| {
            status
                .lines()
                .find_map(|line| line.strip_prefix("CapEff:"))
                .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        });
        match cap_eff {
            Some(caps) => caps & (1 << cap) != 0,
            None => self.uid == 0,
        }
    }
}

/// The mode a write or truncate by a caller without CAP_FSETID leaves, as Linux
/// (`setattr_should_drop_sgid`, 6.2 on) leaves it: set-user-ID cleared; set-group-ID
/// cleared where group execute is set, and without group execute too unless the caller
/// is in the file's group (`in_group`, asked only then). `None` when nothing changes.
pub fn mode_without_setid(mode: u32, in_group: impl FnOnce() -> bool) -> Option<u32> {
    let mut kept = mode & 0o7777;
    kept &= !libc::S_ISUID;
    if mode & libc::S_ISGID != 0 && (mode & libc::S_IXGRP != 0 || !in_group()) {
        kept &= !libc::S_ISGID;
    }
    (kept != mode & 0o7777).then_some(kept)
}
