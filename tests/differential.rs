//! Differential test: a long random sequence of file system operations, from fixed seeds,
//! applied both to an xtsfs mount and to a plain directory on the local file system (the
//! reference). Every operation's result (value or errno) must match between the two, and
//! so must the two trees whenever they are compared: paths, kinds, sizes, link counts,
//! modes, owners, device numbers, bytes, symlink targets and extended attributes (names
//! and values).
//!
//! Besides contents and names, the operations cover the POSIX attributes: chmod (set-id
//! and sticky bits included), chown and lchown (to another user and back, group changes),
//! mknod of FIFOs, sockets and device nodes, `user.` and `trusted.` extended attributes,
//! and utimensat with UTIME_NOW and UTIME_OMIT. Some operations run as a second user (not
//! root, with a supplementary group; tests/common/users.rs) under a umask of their own, so
//! permission errors must match too; the mount is made with `--allow-other` for that.
//!
//! The default run is a few thousand operations. For a soak run:
//!
//!   XTSFS_SOAK_SEED=0x5eed XTSFS_SOAK_OPS=200000 cargo test --test differential
//!
//! XTSFS_SOAK_SEED (decimal or 0x-hex) runs that one seed instead of the fixed ones, and
//! XTSFS_SOAK_OPS sets the operations per seed. A failure names the seed, the op index and
//! the last operations, which is all it takes to replay it; XTSFS_SOAK_MINIMIZE=1 also
//! shrinks the op sequence to a minimal one that fails the same way. XTSFS_SOAK_MOUNT_ARGS
//! adds arguments to every `xtsfs mount` (e.g. "--threads 1 -vv --log-file /tmp/d.log").

mod common;

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirBuilderExt, FileExt, FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use common::mount::{find_plaintext, Mounted};
use common::sys::{cpath, cvt, fallocate, read_full_at, renameat2, truncate};
use common::users::{User, ALICE, BOB, SHARED_GROUP};
use common::{pseudo_random_bytes, set_mode, Rng, TestEnv};

const UNIT: u64 = 4096;
const MIB: u64 = 1 << 20;
/// Files stay below this so that a full tree comparison stays cheap.
const MAX_FILE: u64 = 6 * MIB;
/// Past this many entries, creating operations give way to removing ones.
const MAX_ENTRIES: usize = 60;
/// Directories nest at most this deep (files one deeper).
const MAX_DIR_DEPTH: usize = 2;
/// Open file handle slots, held across operations (and across unlinks and renames).
const SLOTS: usize = 4;
const COMPARE_EVERY: usize = 50;
const REMOUNT_ONE_IN: u64 = 150;
const LOG_TAIL: usize = 40;
/// Longest name stored directly: a longer one's encryption (16-byte SIV tag, base64)
/// exceeds 255 bytes, so it is stored under a hash with a side file holding the name.
const LONGEST_DIRECT_NAME: usize = 175;

const DEFAULT_SEEDS: [u64; 3] = [0x5eed_0001, 0x0dd_ba11, 0xfee1_600d];
const DEFAULT_OPS_PER_SEED: usize = 2000;
/// Set (to anything) to shrink a failing op sequence before reporting it.
const MINIMIZE_VAR: &str = "XTSFS_SOAK_MINIMIZE";
/// Extra `xtsfs mount` arguments, whitespace-separated.
const MOUNT_ARGS_VAR: &str = "XTSFS_SOAK_MOUNT_ARGS";
/// The daemon's entry and attribute TTL, past which the kernel asks the daemon again.
const KERNEL_CACHE_TTL: Duration = Duration::from_millis(1100);

const XTSFS: usize = 0;
const REFERENCE: usize = 1;

/// One op in this many runs as the second user (wrapped in [`Op::AsOther`]).
const AS_OTHER_ONE_IN: u64 = 4;
/// Percent of ops drawn from the POSIX attribute operations (chmod, chown, mknod,
/// extended attributes, utimensat) rather than the contents and names ones.
const POSIX_OPS_PERCENT: u64 = 25;
/// Largest extended attribute value generated. Every attribute of an object shares one
/// backing block on ext4, and xtsfs stores each name and value with an overhead (README,
/// "POSIX behaviour": 32 bytes per value, the longer encrypted name), so values stay small
/// enough that the pool of names always fits on both sides.
const MAX_XATTR_VALUE: u64 = 200;
/// What an open of a device node returns on either side instead of opening it. The
/// mount is `nodev` (README, "POSIX behaviour": opening a device node gives EACCES unless
/// mounted `-o dev`), where the local file system opens the device: not compared.
const DEVICE_NOT_OPENED: i32 = -1000;
/// Slack around the wall-clock window of a UTIME_NOW: file system timestamps come from
/// the kernel's coarse clock, a tick behind `SystemTime::now()`.
const CLOCK_SLACK: Duration = Duration::from_millis(50);

#[test]
fn mount_matches_local_fs_under_random_operations() {
    let ops = env_number("XTSFS_SOAK_OPS").map_or(DEFAULT_OPS_PER_SEED, |n| n as usize);
    let seeds = match env_number("XTSFS_SOAK_SEED") {
        Some(seed) => vec![seed],
        None => DEFAULT_SEEDS.to_vec(),
    };
    for seed in seeds {
        let started = Instant::now();
        run_seed(seed, ops, Start::Init(&[]));
        eprintln!(
            "differential: seed {seed:#x}: {ops} ops in {:.1?}",
            started.elapsed()
        );
    }
}

/// Format 1 volumes keep mounting, reading and writing.
#[test]
fn format_1_volume_matches_local_fs() {
    run_seed(
        DEFAULT_SEEDS[1],
        DEFAULT_OPS_PER_SEED / 2,
        Start::Init(&["--format", "1"]),
    );
}

/// The committed format 1 golden volume, with its contents, goes on working under random
/// operations as it would after an xtsfs update.
#[test]
fn golden_format_1_volume_matches_local_fs() {
    run_seed(
        DEFAULT_SEEDS[2],
        DEFAULT_OPS_PER_SEED / 2,
        Start::Golden("mmk"),
    );
}

/// What the mount starts from.
#[derive(Clone, Copy)]
enum Start {
    /// A new volume, `xtsfs init` given these arguments.
    Init(&'static [&'static str]),
    /// A copy of a golden volume; the reference starts as a copy of its plaintext.
    Golden(&'static str),
}

// --- reproducers of bugs the differential run found --------------------------------------
// Each failed before its fix; they stay as regression tests that fail in milliseconds with
// a plain message, where the random run would take seconds and a seed to say the same.

/// Linux truncates on open(O_RDONLY|O_TRUNC) (ext4, tmpfs, ...). With FUSE_ATOMIC_O_TRUNC
/// the kernel sends no truncating setattr and leaves it to the daemon's OPEN whatever the
/// access mode; xtsfs used to truncate only on writable opens.
#[test]
fn read_only_open_with_o_trunc_truncates_like_local_fs() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let reference = env.path("reference");
    fs::create_dir(&reference).unwrap();
    for file in [m.path("f"), reference.join("f")] {
        fs::write(&file, b"hello world").unwrap();
        drop(open(&file, libc::O_RDONLY | libc::O_TRUNC).unwrap());
    }
    assert_eq!(
        fs::read(reference.join("f")).unwrap(),
        b"",
        "local fs truncates"
    );
    assert_eq!(fs::read(m.path("f")).unwrap(), b"", "xtsfs truncates too");
}

/// A long-named entry (stored under a hash, with a `.name` side file) renamed into another
/// directory under the same name must take its side file along. `XtsFs::rename` used to skip
/// the removal whenever the old and new backing names were equal, whatever the directories,
/// leaving a directory that lists as empty but cannot be removed (ENOTEMPTY).
#[test]
fn moving_a_long_name_to_another_dir_leaves_no_side_file() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let long = "x".repeat(LONGEST_DIRECT_NAME + 25);
    fs::create_dir(m.path("d")).unwrap();
    fs::write(m.path(&format!("d/{long}")), b"data").unwrap();
    fs::rename(m.path(&format!("d/{long}")), m.path(&long)).unwrap();
    assert_eq!(fs::read_dir(m.path("d")).unwrap().count(), 0);
    fs::remove_dir(m.path("d")).expect("rmdir of a directory that lists as empty");
}

/// Units shorter than 16 bytes are encrypted by XOR with a pad, and a unit whose ciphertext
/// is all zeros reads as a hole. A 1-byte last unit's ciphertext is zero for one of the 256
/// byte values (which one depends on the file's random nonce), so that value used to read
/// back as 0: silent corruption of 1 in 256 files whose size is 1 mod 4096 (1 in 65536 for
/// 2-byte tails), made permanent by the next read-modify-write of the unit.
#[test]
fn a_one_byte_last_unit_reads_back_whatever_its_value() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    // A file per size, so a nonce and unit index each: the chance that every file's bad
    // value is 0 itself (and so invisible) is 1 in 2^32.
    for size in [1, UNIT + 1, 2 * UNIT + 1, 3 * UNIT + 1] {
        let path = m.path(&format!("f{size}"));
        fs::write(&path, vec![0x5a; size as usize]).unwrap();
        let file = fs::OpenOptions::new().write(true).open(&path).unwrap();
        let wrong: Vec<(u8, u8)> = (0..=255u8)
            .filter_map(|byte| {
                file.write_all_at(&[byte], size - 1).unwrap();
                // A fresh open drops the kernel's cached pages, so this reads the daemon.
                let read = fs::read(&path).unwrap()[size as usize - 1];
                (read != byte).then_some((byte, read))
            })
            .collect();
        assert!(
            wrong.is_empty(),
            "file of {size} bytes: last byte written, read back: {wrong:?}"
        );
    }
}

/// The daemon's own reads of a backing file (the header at open, the rest of a unit a
/// write only partly covers, the header before a truncate) used to move the backing
/// access time, which the mount reports as the file's: an open, a write or a truncate
/// changed st_atime, which on a local file system only reads and utimensat do (a
/// utimensat with atime UTIME_OMIT then seemed to change it too).
#[test]
fn opens_writes_and_truncates_leave_the_access_time_alone() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let path = m.path("f");
    fs::write(&path, vec![7u8; 5000]).unwrap();
    let long_ago = TimeSpec::At(1_000_000_000, 0);
    let set = Op::Utimens {
        path: RelPath(b"f".to_vec()),
        atime: long_ago,
        mtime: long_ago,
        follow: false,
    };
    Side::new(m.mountpoint.clone()).apply(&set, b"").unwrap();
    drop(open(&path, libc::O_RDONLY).unwrap());
    let file = open(&path, libc::O_WRONLY).unwrap();
    file.write_all_at(b"0123456789", 100).unwrap();
    file.set_len(4100).unwrap();
    drop(file);
    truncate(&path, 100).unwrap();
    // The backing file's, not the kernel's cached view of it.
    let atime = fs::symlink_metadata(m.backing_path("f")).unwrap().atime();
    assert_eq!(atime, 1_000_000_000, "the access time moved");
    // A read through the mount marks the file accessed, as on a local file system.
    fs::read(&path).unwrap();
    let atime = fs::symlink_metadata(m.backing_path("f")).unwrap().atime();
    assert_ne!(atime, 1_000_000_000, "a read marks the file accessed");
}

/// A truncate or write by a caller without CAP_FSETID that is not in the file's group
/// clears set-group-ID even without group execute (Linux 6.2 on,
/// `setattr_should_drop_sgid`); a member's keeps it. xtsfs cleared it only with group
/// execute.
#[test]
fn set_group_id_without_group_execute_is_cleared_for_non_members() {
    let env = TestEnv::new();
    set_mode(env.root(), 0o755);
    let mut m = env.initialized(&[]);
    m.mount(&["--allow-other"]);
    let local = env.path("local");
    fs::create_dir(&local).unwrap();
    for dir in [&local, &m.mountpoint] {
        set_mode(dir, 0o777);
        for (name, gid) in [("other", 0), ("member", SHARED_GROUP)] {
            let path = dir.join(name);
            fs::write(&path, b"data").unwrap();
            std::os::unix::fs::chown(&path, None, Some(gid)).unwrap();
            set_mode(&path, 0o2666);
        }
    }
    let modes = [&local, &m.mountpoint].map(|dir| {
        let dir = dir.clone();
        User::alice().run(move || {
            ["other", "member"].map(|name| {
                truncate(&dir.join(name), 1).unwrap();
                fs::metadata(dir.join(name)).unwrap().mode() & 0o7777
            })
        })
    });
    assert_eq!(modes[0], [0o666, 0o2666], "the local file system");
    assert_eq!(modes[1], modes[0], "xtsfs");
}

fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number")))
}

// --- operations ---------------------------------------------------------------------------

/// A path relative to the tree root, as raw bytes ("" is the root).
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord)]
struct RelPath(Vec<u8>);

impl RelPath {
    fn join(&self, name: &[u8]) -> RelPath {
        let mut path = self.0.clone();
        if !path.is_empty() {
            path.push(b'/');
        }
        path.extend_from_slice(name);
        RelPath(path)
    }

    fn depth(&self) -> usize {
        if self.0.is_empty() {
            0
        } else {
            self.0.iter().filter(|b| **b == b'/').count() + 1
        }
    }
}

/// Raw bytes shown escaped, with long components shortened so a log tail stays readable.
struct Shown<'a>(&'a [u8]);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, part) in self.0.split(|b| *b == b'/').enumerate() {
            if i > 0 {
                f.write_str("/")?;
            }
            if part.len() > 24 {
                write!(f, "{}…({}B)", part[..12].escape_ascii(), part.len())?;
            } else {
                write!(f, "{}", part.escape_ascii())?;
            }
        }
        Ok(())
    }
}

impl fmt::Debug for RelPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", Shown(&self.0))
    }
}

/// What a write puts in the file; the bytes are made at apply time from this.
#[derive(Clone, Copy, Debug)]
enum Fill {
    Random(u64),
    /// Plaintext zeros, which must not be confused with holes (all-zero ciphertext).
    Zeros,
    /// The run's canary, which must never reach the backing directory in the clear.
    Canary,
}

impl Fill {
    fn bytes(self, len: u64, canary: &[u8]) -> Vec<u8> {
        match self {
            Fill::Random(seed) => pseudo_random_bytes(seed, len as usize),
            Fill::Zeros => vec![0; len as usize],
            Fill::Canary => canary.iter().copied().cycle().take(len as usize).collect(),
        }
    }
}

#[derive(Clone, Copy)]
struct OpenFlags(i32);

impl fmt::Debug for OpenFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let access = match self.0 & libc::O_ACCMODE {
            libc::O_RDONLY => "RDONLY",
            libc::O_WRONLY => "WRONLY",
            _ => "RDWR",
        };
        f.write_str(access)?;
        for (bit, name) in [
            (libc::O_CREAT, "CREAT"),
            (libc::O_EXCL, "EXCL"),
            (libc::O_TRUNC, "TRUNC"),
            (libc::O_APPEND, "APPEND"),
        ] {
            if self.0 & bit != 0 {
                write!(f, "|{name}")?;
            }
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct FallocMode(i32);

impl fmt::Debug for FallocMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self.0 & !libc::FALLOC_FL_KEEP_SIZE {
            0 => "ALLOCATE",
            libc::FALLOC_FL_PUNCH_HOLE => "PUNCH_HOLE",
            libc::FALLOC_FL_ZERO_RANGE => "ZERO_RANGE",
            _ => "?",
        };
        f.write_str(name)?;
        if self.0 & libc::FALLOC_FL_KEEP_SIZE != 0 {
            f.write_str("|KEEP_SIZE")?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy)]
struct RenameFlags(u32);

impl fmt::Debug for RenameFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            0 => "0",
            libc::RENAME_NOREPLACE => "NOREPLACE",
            libc::RENAME_EXCHANGE => "EXCHANGE",
            _ => "?",
        })
    }
}

/// Permission bits (set-id and sticky included), or a umask: shown in octal.
#[derive(Clone, Copy, PartialEq, Eq)]
struct Mode(u32);

impl fmt::Debug for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04o}", self.0)
    }
}

/// What mknod makes.
#[derive(Clone, Copy, Debug)]
enum NodeKind {
    Regular,
    Fifo,
    Socket,
    Char(u32, u32),
    Block(u32, u32),
}

impl NodeKind {
    fn mode_and_dev(self) -> (u32, libc::dev_t) {
        match self {
            NodeKind::Regular => (libc::S_IFREG, 0),
            NodeKind::Fifo => (libc::S_IFIFO, 0),
            NodeKind::Socket => (libc::S_IFSOCK, 0),
            NodeKind::Char(major, minor) => (libc::S_IFCHR, libc::makedev(major, minor)),
            NodeKind::Block(major, minor) => (libc::S_IFBLK, libc::makedev(major, minor)),
        }
    }
}

/// One of utimensat's two times.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TimeSpec {
    Now,
    Omit,
    At(i64, i64),
}

impl TimeSpec {
    fn timespec(self) -> libc::timespec {
        let (tv_sec, tv_nsec) = match self {
            TimeSpec::Now => (0, libc::UTIME_NOW),
            TimeSpec::Omit => (0, libc::UTIME_OMIT),
            TimeSpec::At(sec, nsec) => (sec, nsec),
        };
        libc::timespec { tv_sec, tv_nsec }
    }
}

#[derive(Clone, Copy)]
struct XattrFlags(i32);

impl fmt::Debug for XattrFlags {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self.0 {
            0 => "0",
            libc::XATTR_CREATE => "CREATE",
            libc::XATTR_REPLACE => "REPLACE",
            _ => "?",
        })
    }
}

/// An extended attribute name, as raw bytes.
#[derive(Clone)]
struct XattrName(Vec<u8>);

impl fmt::Debug for XattrName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", Shown(&self.0))
    }
}

#[derive(Clone, Debug)]
enum Op {
    /// open(O_WRONLY [|O_CREAT]) + pwrite + close.
    Write {
        path: RelPath,
        create: bool,
        offset: u64,
        len: u64,
        fill: Fill,
    },
    /// open(O_WRONLY|O_APPEND [|O_CREAT]) + write + close.
    Append {
        path: RelPath,
        create: bool,
        len: u64,
        fill: Fill,
    },
    Truncate {
        path: RelPath,
        size: u64,
    },
    /// open(O_WRONLY) + fallocate + close.
    Fallocate {
        path: RelPath,
        mode: FallocMode,
        offset: u64,
        len: u64,
    },
    Read {
        path: RelPath,
        offset: u64,
        len: u64,
    },
    Fsync {
        path: RelPath,
        data_only: bool,
    },
    Rename {
        from: RelPath,
        to: RelPath,
        flags: RenameFlags,
    },
    Link {
        from: RelPath,
        to: RelPath,
    },
    Unlink {
        path: RelPath,
    },
    Mkdir {
        path: RelPath,
        mode: Mode,
    },
    Rmdir {
        path: RelPath,
    },
    Symlink {
        target: RelPath,
        path: RelPath,
    },
    /// Opens `path` into a handle slot, closing what the slot held.
    Open {
        slot: usize,
        path: RelPath,
        flags: OpenFlags,
    },
    Close {
        slot: usize,
    },
    /// pwrite through a held handle (on an O_APPEND handle Linux appends regardless).
    HandleWrite {
        slot: usize,
        offset: u64,
        len: u64,
        fill: Fill,
    },
    HandleRead {
        slot: usize,
        offset: u64,
        len: u64,
    },
    HandleTruncate {
        slot: usize,
        size: u64,
    },
    HandleFallocate {
        slot: usize,
        mode: FallocMode,
        offset: u64,
        len: u64,
    },
    HandleSync {
        slot: usize,
        data_only: bool,
    },
    /// Unmounts and mounts xtsfs again (closing every handle on both sides first).
    Remount,
    /// chmod (follows a final symlink).
    Chmod {
        path: RelPath,
        mode: Mode,
    },
    /// chown, or lchown unless `follow`; `None` leaves an id as it is.
    Chown {
        path: RelPath,
        uid: Option<u32>,
        gid: Option<u32>,
        follow: bool,
    },
    Mknod {
        path: RelPath,
        kind: NodeKind,
        mode: Mode,
    },
    /// lsetxattr, with a value of `len` bytes.
    SetXattr {
        path: RelPath,
        name: XattrName,
        len: u64,
        fill: Fill,
        flags: XattrFlags,
    },
    /// lgetxattr: asking for the size first and then the value (`size` None, as
    /// getfattr does), or with a buffer of `size` bytes (0 asks for the size only).
    GetXattr {
        path: RelPath,
        name: XattrName,
        size: Option<u64>,
    },
    /// llistxattr.
    ListXattr {
        path: RelPath,
    },
    RemoveXattr {
        path: RelPath,
        name: XattrName,
    },
    /// utimensat, with AT_SYMLINK_NOFOLLOW unless `follow`.
    Utimens {
        path: RelPath,
        atime: TimeSpec,
        mtime: TimeSpec,
        follow: bool,
    },
    /// `op` run by the second user (not root; a supplementary group) in a child process
    /// whose umask is `umask`.
    AsOther {
        umask: Mode,
        op: Box<Op>,
    },
}

impl Op {
    /// Paths whose kind, size and link count are compared right after the op.
    fn touched(&self) -> Vec<&RelPath> {
        match self {
            Op::Write { path, .. }
            | Op::Append { path, .. }
            | Op::Truncate { path, .. }
            | Op::Fallocate { path, .. }
            | Op::Unlink { path }
            | Op::Mkdir { path, .. }
            | Op::Rmdir { path }
            | Op::Symlink { path, .. }
            | Op::Open { path, .. }
            | Op::Chmod { path, .. }
            | Op::Chown { path, .. }
            | Op::Mknod { path, .. }
            | Op::SetXattr { path, .. }
            | Op::RemoveXattr { path, .. }
            | Op::Utimens { path, .. } => vec![path],
            Op::Rename { from, to, .. } | Op::Link { from, to } => vec![from, to],
            Op::AsOther { op, .. } => op.touched(),
            _ => Vec::new(),
        }
    }

    /// The op itself, as whoever runs it.
    fn inner(&self) -> &Op {
        match self {
            Op::AsOther { op, .. } => op,
            op => op,
        }
    }

    /// The byte range a content-changing op touched, for an immediate readback.
    fn changed_range(&self) -> Option<(u64, u64)> {
        match *self {
            Op::Write { offset, len, .. }
            | Op::Fallocate { offset, len, .. }
            | Op::HandleWrite { offset, len, .. }
            | Op::HandleFallocate { offset, len, .. } => Some((offset, len)),
            Op::Truncate { size, .. } | Op::HandleTruncate { size, .. } => Some((size, 0)),
            Op::Append { .. } => Some((0, 0)),
            Op::AsOther { ref op, .. } => op.changed_range(),
            _ => None,
        }
    }

    fn slot(&self) -> Option<usize> {
        match *self {
            Op::HandleWrite { slot, .. }
            | Op::HandleRead { slot, .. }
            | Op::HandleTruncate { slot, .. }
            | Op::HandleFallocate { slot, .. }
            | Op::HandleSync { slot, .. } => Some(slot),
            _ => None,
        }
    }
}

// --- applying an operation to one side ------------------------------------------------------

/// What an operation returned, compared between the two sides.
#[derive(PartialEq)]
enum Value {
    Done,
    Count(u64),
    Data(Vec<u8>),
    /// Extended attribute names, sorted: the listing order is the file system's own (on
    /// xtsfs, the backing order of the encrypted names).
    Names(Vec<Vec<u8>>),
}

impl fmt::Debug for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Value::Done => f.write_str("Done"),
            Value::Count(n) => write!(f, "Count({n})"),
            Value::Data(data) => write!(f, "Data({} bytes, fnv {:016x})", data.len(), fnv(data)),
            Value::Names(names) => {
                let shown: Vec<String> = names.iter().map(|n| Shown(n).to_string()).collect();
                write!(f, "Names({shown:?})")
            }
        }
    }
}

/// An outcome as it crosses the pipe from a child running as another user.
type WireOutcome = Result<(u8, u64, Vec<u8>, Vec<Vec<u8>>), i32>;

fn to_wire(outcome: Outcome) -> WireOutcome {
    match outcome {
        Ok(Value::Done) => Ok((0, 0, Vec::new(), Vec::new())),
        Ok(Value::Count(n)) => Ok((1, n, Vec::new(), Vec::new())),
        Ok(Value::Data(data)) => Ok((2, 0, data, Vec::new())),
        Ok(Value::Names(names)) => Ok((3, 0, Vec::new(), names)),
        Err(e) => Err(e.0),
    }
}

fn from_wire(wire: WireOutcome) -> Outcome {
    match wire {
        Ok((0, ..)) => Ok(Value::Done),
        Ok((1, n, ..)) => Ok(Value::Count(n)),
        Ok((2, _, data, _)) => Ok(Value::Data(data)),
        Ok((_, _, _, names)) => Ok(Value::Names(names)),
        Err(e) => Err(Errno(e)),
    }
}

type Outcome = Result<Value, Errno>;

#[derive(Clone, Copy, PartialEq, Eq)]
struct Errno(i32);

impl fmt::Debug for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == DEVICE_NOT_OPENED {
            return f.write_str("a device node (not opened)");
        }
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

impl From<io::Error> for Errno {
    fn from(e: io::Error) -> Self {
        Errno(e.raw_os_error().unwrap_or(-1))
    }
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

fn open(path: &Path, flags: i32) -> Result<File, Errno> {
    // What the path names decides, on both sides alike: a FIFO is opened O_NONBLOCK (an
    // open for writing without a reader gives ENXIO instead of blocking the run), and a
    // device node is not opened at all (see DEVICE_NOT_OPENED).
    let mut flags = flags;
    if let Ok(meta) = fs::metadata(path) {
        let kind = meta.file_type();
        if kind.is_char_device() || kind.is_block_device() {
            return Err(Errno(DEVICE_NOT_OPENED));
        }
        if kind.is_fifo() {
            flags |= libc::O_NONBLOCK;
        }
    }
    let path = cpath(path);
    // SAFETY: NUL-terminated path; on success we own the returned fd.
    let fd = unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC, 0o644) };
    cvt(fd)?;
    // SAFETY: fd was just returned by open.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Reads up to `len` bytes at `offset`, stopping only at end of file.
fn read_at(file: &File, offset: u64, len: u64) -> Outcome {
    let mut buf = vec![0u8; len as usize];
    let done = read_full_at(file, &mut buf, offset)?;
    buf.truncate(done);
    Ok(Value::Data(buf))
}

fn xattr_cname(name: &XattrName) -> std::ffi::CString {
    std::ffi::CString::new(name.0.clone()).expect("no NUL in an attribute name")
}

/// A byte count from a libc call that returns one, or -1 and errno.
fn ssize(ret: isize) -> Result<usize, Errno> {
    if ret < 0 {
        Err(Errno::from(io::Error::last_os_error()))
    } else {
        Ok(ret as usize)
    }
}

/// An attribute's value, asking for its size first as getfattr does.
fn lgetxattr(path: &Path, name: &[u8]) -> Result<Vec<u8>, Errno> {
    let path = cpath(path);
    let name = std::ffi::CString::new(name).expect("no NUL in an attribute name");
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

/// lgetxattr into a buffer of exactly `size` bytes: the value, or its size if `size` is 0.
fn lgetxattr_into(path: &Path, name: &[u8], size: usize) -> Outcome {
    let path = cpath(path);
    let name = std::ffi::CString::new(name).expect("no NUL in an attribute name");
    let mut buf = vec![0u8; size];
    let ptr = if size == 0 {
        std::ptr::null_mut()
    } else {
        buf.as_mut_ptr().cast()
    };
    // SAFETY: a buffer of `size` bytes, or NULL with size 0.
    let n = ssize(unsafe { libc::lgetxattr(path.as_ptr(), name.as_ptr(), ptr, size) })?;
    if size == 0 {
        return Ok(Value::Count(n as u64));
    }
    buf.truncate(n);
    Ok(Value::Data(buf))
}

/// The attribute names of a path (not following a final symlink), sorted, without
/// `security.` ones: the local file system may carry security-module labels that the
/// mount does not show (README, "POSIX behaviour": `security.` labels of the backing
/// objects are not shown). No operation here sets a `security.` attribute.
fn llistxattr(path: &Path) -> Result<Vec<Vec<u8>>, Errno> {
    let path = cpath(path);
    loop {
        // SAFETY: a NULL buffer of size 0 asks for the size.
        let size = ssize(unsafe { libc::llistxattr(path.as_ptr(), std::ptr::null_mut(), 0) })?;
        let mut buf = vec![0u8; size];
        // SAFETY: a buffer of its length.
        match ssize(unsafe { libc::llistxattr(path.as_ptr(), buf.as_mut_ptr().cast(), size) }) {
            Ok(n) => buf.truncate(n),
            Err(Errno(libc::ERANGE)) => continue,
            Err(e) => return Err(e),
        }
        let mut names: Vec<Vec<u8>> = buf
            .split(|b| *b == 0)
            .filter(|name| !name.is_empty() && !name.starts_with(b"security."))
            .map(<[u8]>::to_vec)
            .collect();
        names.sort();
        return Ok(names);
    }
}

/// Every attribute of a path with its value, as `llistxattr` lists them.
fn xattrs(path: &Path) -> Result<BTreeMap<Vec<u8>, Vec<u8>>, Errno> {
    llistxattr(path)?
        .into_iter()
        .map(|name| {
            let value = lgetxattr(path, &name)?;
            Ok((name, value))
        })
        .collect()
}

/// One of the two trees, with its handle slots.
struct Side {
    root: PathBuf,
    handles: Vec<Option<File>>,
}

impl Side {
    fn new(root: PathBuf) -> Self {
        Side {
            root,
            handles: (0..SLOTS).map(|_| None).collect(),
        }
    }

    fn path(&self, rel: &RelPath) -> PathBuf {
        join(&self.root, rel)
    }

    /// Generation only picks open slots, but a minimized replay may have dropped the open.
    fn handle(&self, slot: usize) -> Result<&File, Errno> {
        self.handles[slot].as_ref().ok_or(Errno(libc::EBADF))
    }

    fn apply(&mut self, op: &Op, canary: &[u8]) -> Outcome {
        match op {
            Op::Write {
                path,
                create,
                offset,
                len,
                fill,
            } => {
                let creat = if *create { libc::O_CREAT } else { 0 };
                let file = open(&self.path(path), libc::O_WRONLY | creat)?;
                file.write_all_at(&fill.bytes(*len, canary), *offset)
                    .map_err(Errno::from)?;
                Ok(Value::Count(*len))
            }
            Op::Append {
                path,
                create,
                len,
                fill,
            } => {
                let creat = if *create { libc::O_CREAT } else { 0 };
                let mut file = open(&self.path(path), libc::O_WRONLY | libc::O_APPEND | creat)?;
                file.write_all(&fill.bytes(*len, canary))
                    .map_err(Errno::from)?;
                Ok(Value::Count(*len))
            }
            Op::Truncate { path, size } => {
                truncate(&self.path(path), *size)?;
                Ok(Value::Done)
            }
            Op::Fallocate {
                path,
                mode,
                offset,
                len,
            } => {
                let file = open(&self.path(path), libc::O_WRONLY)?;
                fallocate(&file, mode.0, *offset, *len)?;
                Ok(Value::Done)
            }
            Op::Read { path, offset, len } => {
                read_at(&open(&self.path(path), libc::O_RDONLY)?, *offset, *len)
            }
            Op::Fsync { path, data_only } => {
                // Directories too: this is how fsyncdir gets exercised.
                let file = open(&self.path(path), libc::O_RDONLY)?;
                if *data_only {
                    file.sync_data()
                } else {
                    file.sync_all()
                }
                .map_err(Errno::from)?;
                Ok(Value::Done)
            }
            Op::Rename { from, to, flags } => {
                renameat2(&self.path(from), &self.path(to), flags.0)?;
                Ok(Value::Done)
            }
            Op::Link { from, to } => {
                let (from, to) = (cpath(&self.path(from)), cpath(&self.path(to)));
                // SAFETY: NUL-terminated paths; flags 0 links a symlink itself.
                cvt(unsafe {
                    libc::linkat(
                        libc::AT_FDCWD,
                        from.as_ptr(),
                        libc::AT_FDCWD,
                        to.as_ptr(),
                        0,
                    )
                })?;
                Ok(Value::Done)
            }
            Op::Unlink { path } => {
                fs::remove_file(self.path(path))?;
                Ok(Value::Done)
            }
            Op::Mkdir { path, mode } => {
                fs::DirBuilder::new().mode(mode.0).create(self.path(path))?;
                Ok(Value::Done)
            }
            Op::Rmdir { path } => {
                fs::remove_dir(self.path(path))?;
                Ok(Value::Done)
            }
            Op::Symlink { target, path } => {
                std::os::unix::fs::symlink(OsStr::from_bytes(&target.0), self.path(path))?;
                Ok(Value::Done)
            }
            Op::Open { slot, path, flags } => {
                self.handles[*slot] = None;
                self.handles[*slot] = Some(open(&self.path(path), flags.0)?);
                Ok(Value::Done)
            }
            Op::Close { slot } => {
                self.handles[*slot] = None;
                Ok(Value::Done)
            }
            Op::HandleWrite {
                slot,
                offset,
                len,
                fill,
            } => {
                self.handle(*slot)?
                    .write_all_at(&fill.bytes(*len, canary), *offset)
                    .map_err(Errno::from)?;
                Ok(Value::Count(*len))
            }
            Op::HandleRead { slot, offset, len } => read_at(self.handle(*slot)?, *offset, *len),
            Op::HandleTruncate { slot, size } => {
                self.handle(*slot)?.set_len(*size).map_err(Errno::from)?;
                Ok(Value::Done)
            }
            Op::HandleFallocate {
                slot,
                mode,
                offset,
                len,
            } => {
                fallocate(self.handle(*slot)?, mode.0, *offset, *len)?;
                Ok(Value::Done)
            }
            Op::HandleSync { slot, data_only } => {
                let file = self.handle(*slot)?;
                if *data_only {
                    file.sync_data()
                } else {
                    file.sync_all()
                }
                .map_err(Errno::from)?;
                Ok(Value::Done)
            }
            Op::Remount => Ok(Value::Done),
            Op::Chmod { path, mode } => {
                let path = cpath(&self.path(path));
                // SAFETY: NUL-terminated path.
                cvt(unsafe { libc::chmod(path.as_ptr(), mode.0) })?;
                Ok(Value::Done)
            }
            Op::Chown {
                path,
                uid,
                gid,
                follow,
            } => {
                let path = cpath(&self.path(path));
                let (uid, gid) = (uid.unwrap_or(u32::MAX), gid.unwrap_or(u32::MAX));
                // SAFETY: NUL-terminated path; -1 leaves an id as it is.
                cvt(unsafe {
                    if *follow {
                        libc::chown(path.as_ptr(), uid, gid)
                    } else {
                        libc::lchown(path.as_ptr(), uid, gid)
                    }
                })?;
                Ok(Value::Done)
            }
            Op::Mknod { path, kind, mode } => {
                let (kind, dev) = kind.mode_and_dev();
                let path = cpath(&self.path(path));
                // SAFETY: NUL-terminated path.
                cvt(unsafe { libc::mknod(path.as_ptr(), kind | mode.0, dev) })?;
                Ok(Value::Done)
            }
            Op::SetXattr {
                path,
                name,
                len,
                fill,
                flags,
            } => {
                let value = fill.bytes(*len, canary);
                let (path, name) = (cpath(&self.path(path)), xattr_cname(name));
                // SAFETY: NUL-terminated strings and a value of its length.
                cvt(unsafe {
                    libc::lsetxattr(
                        path.as_ptr(),
                        name.as_ptr(),
                        value.as_ptr().cast(),
                        value.len(),
                        flags.0,
                    )
                })?;
                Ok(Value::Done)
            }
            Op::GetXattr { path, name, size } => {
                let path = self.path(path);
                match size {
                    None => lgetxattr(&path, &name.0).map(Value::Data),
                    Some(size) => lgetxattr_into(&path, &name.0, *size as usize),
                }
            }
            Op::ListXattr { path } => llistxattr(&self.path(path)).map(Value::Names),
            Op::RemoveXattr { path, name } => {
                let (path, name) = (cpath(&self.path(path)), xattr_cname(name));
                // SAFETY: NUL-terminated strings.
                cvt(unsafe { libc::lremovexattr(path.as_ptr(), name.as_ptr()) })?;
                Ok(Value::Done)
            }
            Op::Utimens {
                path,
                atime,
                mtime,
                follow,
            } => {
                let path = cpath(&self.path(path));
                let times = [atime.timespec(), mtime.timespec()];
                let flags = if *follow {
                    0
                } else {
                    libc::AT_SYMLINK_NOFOLLOW
                };
                // SAFETY: NUL-terminated path and a two-element array.
                cvt(unsafe {
                    libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), flags)
                })?;
                Ok(Value::Done)
            }
            // Run::apply_both runs it in a child as the other user.
            Op::AsOther { .. } => Err(Errno(libc::EINVAL)),
        }
    }

    fn close_handles(&mut self) {
        self.handles.iter_mut().for_each(|h| *h = None);
    }
}

// --- looking at a tree ----------------------------------------------------------------------

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Dir,
    File,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

/// Every kind of entry.
const ANY_KIND: [Kind; 7] = [
    Kind::Dir,
    Kind::File,
    Kind::Symlink,
    Kind::Fifo,
    Kind::Socket,
    Kind::CharDevice,
    Kind::BlockDevice,
];
/// Every kind that unlink removes.
const NOT_DIR: [Kind; 6] = [
    Kind::File,
    Kind::Symlink,
    Kind::Fifo,
    Kind::Socket,
    Kind::CharDevice,
    Kind::BlockDevice,
];

fn kind_of(meta: &fs::Metadata) -> Kind {
    let t = meta.file_type();
    if t.is_dir() {
        Kind::Dir
    } else if t.is_file() {
        Kind::File
    } else if t.is_symlink() {
        Kind::Symlink
    } else if t.is_fifo() {
        Kind::Fifo
    } else if t.is_socket() {
        Kind::Socket
    } else if t.is_char_device() {
        Kind::CharDevice
    } else {
        Kind::BlockDevice
    }
}

/// lstat, reduced to what must match: kind, size (not for directories, whose sizes are
/// the file system's business), link count, permission bits (set-id and sticky
/// included), owner and group, and a device node's device number.
#[derive(PartialEq, Eq, Debug)]
struct Stat {
    kind: Kind,
    size: Option<u64>,
    nlink: u64,
    mode: Mode,
    owner: (u32, u32),
    rdev: Option<(u32, u32)>,
}

fn stat_of(meta: &fs::Metadata) -> Stat {
    let kind = kind_of(meta);
    let device = matches!(kind, Kind::CharDevice | Kind::BlockDevice);
    Stat {
        kind,
        size: (kind != Kind::Dir).then_some(meta.len()),
        nlink: meta.nlink(),
        mode: Mode(meta.mode() & 0o7777),
        owner: (meta.uid(), meta.gid()),
        rdev: device.then(|| (libc::major(meta.rdev()), libc::minor(meta.rdev()))),
    }
}

/// (atime, mtime) as (seconds, nanoseconds), of a final symlink itself unless `follow`.
fn times_of(path: &Path, follow: bool) -> Result<[(i64, i64); 2], Errno> {
    let meta = if follow {
        fs::metadata(path)?
    } else {
        fs::symlink_metadata(path)?
    };
    Ok([
        (meta.atime(), meta.atime_nsec()),
        (meta.mtime(), meta.mtime_nsec()),
    ])
}

fn lstat(path: &Path) -> Result<Stat, Errno> {
    Ok(stat_of(&fs::symlink_metadata(path)?))
}

/// lstat once the kernel's cached entries and attributes have expired: whether a
/// divergence outlives the kernel cache tells a stale kernel view from daemon state.
fn lstat_after_ttl(path: &Path) -> Result<Stat, Errno> {
    std::thread::sleep(KERNEL_CACHE_TTL);
    lstat(path)
}

/// One entry of a tree snapshot.
#[derive(PartialEq, Eq)]
struct Snapshot {
    stat: Stat,
    /// File bytes, or a symlink's target.
    bytes: Vec<u8>,
    /// Extended attributes, names and values (as root sees them: `trusted.` included).
    xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
}

/// Every entry under `root`, without following symlinks; an error names what failed.
fn snapshot(root: &Path) -> Result<BTreeMap<RelPath, Snapshot>, String> {
    let mut tree = BTreeMap::new();
    let mut stack = vec![RelPath(Vec::new())];
    while let Some(dir) = stack.pop() {
        let failed = |what: &str, rel: &RelPath, e: io::Error| format!("{what} {rel:?}: {e}");
        for entry in fs::read_dir(join(root, &dir)).map_err(|e| failed("list", &dir, e))? {
            let entry = entry.map_err(|e| failed("list", &dir, e))?;
            let rel = dir.join(entry.file_name().as_bytes());
            let path = entry.path();
            let meta = fs::symlink_metadata(&path).map_err(|e| failed("lstat", &rel, e))?;
            let stat = stat_of(&meta);
            let bytes = match stat.kind {
                Kind::Dir => {
                    stack.push(rel.clone());
                    Vec::new()
                }
                Kind::File => fs::read(&path).map_err(|e| failed("read", &rel, e))?,
                Kind::Symlink => fs::read_link(&path)
                    .map_err(|e| failed("readlink", &rel, e))?
                    .into_os_string()
                    .into_encoded_bytes(),
                _ => Vec::new(),
            };
            let xattrs = xattrs(&path).map_err(|e| format!("xattrs of {rel:?}: {e:?}"))?;
            tree.insert(
                rel,
                Snapshot {
                    stat,
                    bytes,
                    xattrs,
                },
            );
        }
    }
    Ok(tree)
}

fn join(root: &Path, rel: &RelPath) -> PathBuf {
    if rel.0.is_empty() {
        root.to_path_buf()
    } else {
        root.join(OsStr::from_bytes(&rel.0))
    }
}

/// Human-readable differences between two snapshots (empty when they match).
fn tree_differences(
    xtsfs: &BTreeMap<RelPath, Snapshot>,
    reference: &BTreeMap<RelPath, Snapshot>,
) -> Vec<String> {
    let mut diffs = Vec::new();
    for (path, theirs) in reference {
        match xtsfs.get(path) {
            None => diffs.push(format!("{path:?}: missing on xtsfs ({:?})", theirs.stat)),
            Some(ours) if ours.stat != theirs.stat => diffs.push(format!(
                "{path:?}: xtsfs {:?}, reference {:?}",
                ours.stat, theirs.stat
            )),
            Some(ours) if ours.bytes != theirs.bytes => diffs.push(format!(
                "{path:?}: {}",
                bytes_difference(&ours.bytes, &theirs.bytes)
            )),
            Some(ours) if ours.xattrs != theirs.xattrs => diffs.push(format!(
                "{path:?}: extended attributes: xtsfs {}, reference {}",
                shown_xattrs(&ours.xattrs),
                shown_xattrs(&theirs.xattrs)
            )),
            Some(_) => {}
        }
    }
    for (path, ours) in xtsfs {
        if !reference.contains_key(path) {
            diffs.push(format!("{path:?}: only on xtsfs ({:?})", ours.stat));
        }
    }
    diffs
}

fn shown_xattrs(xattrs: &BTreeMap<Vec<u8>, Vec<u8>>) -> String {
    let shown: Vec<String> = xattrs
        .iter()
        .map(|(name, value)| format!("{}={:?}", Shown(name), Value::Data(value.clone())))
        .collect();
    format!("{{{}}}", shown.join(", "))
}

/// Where two byte strings first differ, with a little context.
fn bytes_difference(ours: &[u8], theirs: &[u8]) -> String {
    let at = ours
        .iter()
        .zip(theirs)
        .position(|(a, b)| a != b)
        .unwrap_or(ours.len().min(theirs.len()));
    let last = ours
        .iter()
        .zip(theirs)
        .rposition(|(a, b)| a != b)
        .map_or(String::new(), |p| format!(", last at byte {p}"));
    let around = |bytes: &[u8]| -> String {
        let window = &bytes[at.min(bytes.len())..bytes.len().min(at + 16)];
        format!("{} bytes, from {at}: {window:02x?}", bytes.len())
    };
    format!(
        "contents differ from byte {at} (unit {}, +{}){last}: xtsfs {}; reference {}",
        at as u64 / UNIT,
        at as u64 % UNIT,
        around(ours),
        around(theirs)
    )
}

/// The reference tree as generation needs it: entries with kinds and file sizes.
struct Listing {
    entries: Vec<(RelPath, Kind, u64)>,
    /// Directories, the root ("") included.
    dirs: Vec<RelPath>,
}

fn list(root: &Path) -> Listing {
    let mut listing = Listing {
        entries: Vec::new(),
        dirs: vec![RelPath(Vec::new())],
    };
    let mut stack = vec![RelPath(Vec::new())];
    while let Some(dir) = stack.pop() {
        let mut names: Vec<_> = fs::read_dir(join(root, &dir))
            .expect("list reference dir")
            .map(|e| e.expect("reference entry").file_name())
            .collect();
        // read_dir order is the file system's; sorting keeps generation deterministic.
        names.sort();
        for name in names {
            let rel = dir.join(name.as_bytes());
            let meta = fs::symlink_metadata(join(root, &rel)).expect("lstat reference entry");
            let kind = kind_of(&meta);
            if kind == Kind::Dir {
                listing.dirs.push(rel.clone());
                stack.push(rel.clone());
            }
            listing.entries.push((rel, kind, meta.len()));
        }
    }
    listing
}

// --- generating operations ------------------------------------------------------------------

/// Entry names: short, non-UTF-8, multibyte UTF-8, long enough to be stored under a hash
/// with a side file (plaintext over 175 bytes), and names carrying the canary.
fn name_pool(canary: &[u8]) -> Vec<Vec<u8>> {
    let mut long_binary: Vec<u8> = (0..255u32).map(|i| (0x80 + i % 0x7f) as u8).collect();
    long_binary[..4].copy_from_slice(b"bin-");
    let mut long_canary = b"long-".to_vec();
    long_canary.extend_from_slice(canary);
    long_canary.resize(230, b'c');
    vec![
        b"a".to_vec(),
        b"b".to_vec(),
        b"dir".to_vec(),
        b"file.txt".to_vec(),
        b"caf\xe9".to_vec(),
        b"\xff\xfe\x80-raw".to_vec(),
        "ünïcödé ✓".as_bytes().to_vec(),
        b"new\nline and space".to_vec(),
        vec![b'x'; 200],
        long_binary,
        [b"n-".as_slice(), canary].concat(),
        long_canary,
    ]
}

/// A string that must never appear in the clear in the backing directory.
fn canary(seed: u64) -> Vec<u8> {
    format!("xtsfs-canary-{seed:016x}").into_bytes()
}

/// Extended attribute names: `user.` and `trusted.` ones, one at the longest `user.`
/// name xtsfs stores (README, "POSIX behaviour": 172 bytes; longer ones give ERANGE where
/// the local file system takes up to 255, so none is generated), names carrying the
/// canary, and names both sides must refuse alike: an empty `user.` suffix, an
/// unsupported `system.` one and one without a namespace.
fn xattr_name_pool(canary: &[u8]) -> Vec<Vec<u8>> {
    let mut longest = b"user.".to_vec();
    longest.resize(172, b'n');
    vec![
        b"user.a".to_vec(),
        b"user.a".to_vec(),
        b"user.b".to_vec(),
        b"user.mime_type".to_vec(),
        b"user.caf\xe9.\xff".to_vec(),
        [b"user.".as_slice(), canary].concat(),
        longest,
        b"trusted.t".to_vec(),
        b"trusted.overlay.opaque".to_vec(),
        [b"trusted.".as_slice(), canary].concat(),
        b"user.".to_vec(),
        b"system.nonesuch".to_vec(),
        b"nonamespace".to_vec(),
    ]
}

struct Generator {
    rng: Rng,
    names: Vec<Vec<u8>>,
    xattr_names: Vec<Vec<u8>>,
    canary: Vec<u8>,
}

impl Generator {
    fn new(seed: u64) -> Self {
        let canary = canary(seed);
        Generator {
            rng: Rng(seed),
            names: name_pool(&canary),
            xattr_names: xattr_name_pool(&canary),
            canary,
        }
    }

    /// An op, run as the second user one time in AS_OTHER_ONE_IN when it names paths
    /// only (an op on a handle slot runs as root, who opened it).
    fn op(&mut self, listing: &Listing, open_slots: &[(usize, u64)]) -> Op {
        let op = if self.rng.percent(POSIX_OPS_PERCENT) {
            self.posix_op(listing)
        } else {
            self.contents_op(listing, open_slots)
        };
        let by_path =
            op.slot().is_none() && !matches!(op, Op::Open { .. } | Op::Close { .. } | Op::Remount);
        if by_path && self.rng.below(AS_OTHER_ONE_IN) == 0 {
            Op::AsOther {
                umask: Mode(*self.rng.pick(&[0o022, 0o022, 0, 0o077, 0o002, 0o027])),
                op: Box::new(op),
            }
        } else {
            op
        }
    }

    /// Owners and groups: root's, the second user's (whose groups are its own and
    /// SHARED_GROUP), and a user and group it is not.
    fn owner(&mut self) -> (Option<u32>, Option<u32>) {
        let uid = *self
            .rng
            .pick(&[Some(ALICE), Some(ALICE), Some(0), Some(BOB), None]);
        let gid = *self.rng.pick(&[
            Some(ALICE),
            Some(SHARED_GROUP),
            Some(SHARED_GROUP),
            Some(0),
            Some(BOB),
            None,
        ]);
        (uid, gid)
    }

    fn mode(&mut self) -> Mode {
        if self.rng.percent(15) {
            return Mode(self.rng.below(0o10000) as u32);
        }
        Mode(*self.rng.pick(&[
            0o644, 0o600, 0o755, 0o777, 0o666, 0o640, 0o4755, 0o2755, 0o6755, 0o2644, 0o4644,
            0o1777, 0o1755, 0o2775, 0o3777, 0o000, 0o4777, 0o6777, 0o2745,
        ]))
    }

    fn time(&mut self) -> TimeSpec {
        match self.rng.below(10) {
            0..=2 => TimeSpec::Now,
            3..=5 => TimeSpec::Omit,
            _ => {
                let (sec, nsec) = *self.rng.pick(&[
                    (0, 0),
                    (1_700_000_000, 123_456_789),
                    (1_000_000_000, 999_999_999),
                    // Past 2038, and before 1970.
                    (4_000_000_000, 1),
                    (-1_000_000, 500_000_000),
                ]);
                TimeSpec::At(sec, nsec)
            }
        }
    }

    /// chmod, chown, mknod, extended attributes and utimensat.
    fn posix_op(&mut self, listing: &Listing) -> Op {
        match self.rng.below(100) {
            0..=19 => Op::Chmod {
                path: self.any_path(listing),
                mode: self.mode(),
            },
            20..=33 => {
                let (uid, gid) = self.owner();
                Op::Chown {
                    path: self.any_path(listing),
                    uid,
                    gid,
                    follow: self.rng.percent(40),
                }
            }
            34..=45 => {
                let dev = *self
                    .rng
                    .pick(&[(1, 3), (7, 200), (259, 0x12345), (4095, 0xfffff)]);
                let kind = match self.rng.below(10) {
                    0..=2 => NodeKind::Fifo,
                    3 | 4 => NodeKind::Socket,
                    5 | 6 => NodeKind::Char(dev.0, dev.1),
                    7 | 8 => NodeKind::Block(dev.0, dev.1),
                    _ => NodeKind::Regular,
                };
                Op::Mknod {
                    path: self.new_path(listing),
                    kind,
                    mode: self.mode(),
                }
            }
            46..=61 => Op::SetXattr {
                path: self.any_path(listing),
                name: XattrName(self.rng.pick(&self.xattr_names).clone()),
                len: *self.rng.pick(&[0, 1, 15, 16, 17, 100, MAX_XATTR_VALUE]),
                fill: self.fill(),
                flags: XattrFlags(*self.rng.pick(&[
                    0,
                    0,
                    0,
                    libc::XATTR_CREATE,
                    libc::XATTR_REPLACE,
                ])),
            },
            62..=71 => Op::GetXattr {
                path: self.any_path(listing),
                name: XattrName(self.rng.pick(&self.xattr_names).clone()),
                size: *self
                    .rng
                    .pick(&[None, None, None, Some(0), Some(1), Some(16), Some(200)]),
            },
            72..=77 => Op::ListXattr {
                path: self.any_path(listing),
            },
            78..=85 => Op::RemoveXattr {
                path: self.any_path(listing),
                name: XattrName(self.rng.pick(&self.xattr_names).clone()),
            },
            _ => Op::Utimens {
                path: self.any_path(listing),
                atime: self.time(),
                mtime: self.time(),
                follow: self.rng.percent(40),
            },
        }
    }

    fn name(&mut self) -> Vec<u8> {
        // Rarely one byte over NAME_MAX: both sides must refuse it the same way.
        if self.rng.percent(1) {
            return vec![b'L'; 256];
        }
        self.rng.pick(&self.names).clone()
    }

    /// A path that may or may not exist, in an existing directory.
    fn new_path(&mut self, listing: &Listing) -> RelPath {
        let dir = self.rng.pick(&listing.dirs).clone();
        dir.join(&self.name())
    }

    fn existing(&mut self, listing: &Listing, kinds: &[Kind]) -> Option<(RelPath, u64)> {
        let matching: Vec<_> = listing
            .entries
            .iter()
            .filter(|(_, kind, _)| kinds.contains(kind))
            .collect();
        if matching.is_empty() {
            return None;
        }
        let (path, _, size) = self.rng.pick(&matching);
        Some((path.clone(), *size))
    }

    /// Mostly an existing file; sometimes anything, or a new path.
    fn file_path(&mut self, listing: &Listing) -> (RelPath, u64) {
        let found = match self.rng.below(20) {
            0..=15 => self.existing(listing, &[Kind::File]),
            16 | 17 => self.existing(listing, &ANY_KIND),
            _ => None,
        };
        found.unwrap_or_else(|| (self.new_path(listing), 0))
    }

    /// Any existing entry most of the time, else a path that may not exist.
    fn any_path(&mut self, listing: &Listing) -> RelPath {
        let found = if self.rng.percent(80) {
            self.existing(listing, &ANY_KIND)
        } else {
            None
        };
        found.map_or_else(|| self.new_path(listing), |(path, _)| path)
    }

    /// Offsets cluster where the unit arithmetic is: unit boundaries ±17, the end of the
    /// file and its short tail, and far past the end (a hole).
    fn offset(&mut self, size: u64) -> u64 {
        match self.rng.below(10) {
            0..=2 => {
                let unit = self.rng.below(size / UNIT + 3);
                (unit * UNIT + self.rng.below(35)).saturating_sub(17)
            }
            3 => size,
            4 => size.saturating_sub(1 + self.rng.below(15)),
            5 => size + 1 + self.rng.below(2 * MIB),
            6 => self.rng.below(size / UNIT + 2) * UNIT,
            _ => self.rng.below(size + 100),
        }
    }

    fn length(&mut self) -> u64 {
        match self.rng.below(20) {
            0..=3 => 1 + self.rng.below(15),
            4..=6 => ((1 + self.rng.below(3)) * UNIT + self.rng.below(35)).saturating_sub(17),
            7 | 8 => (1 + self.rng.below(4)) * UNIT,
            9 => MIB,
            10 => MIB + self.rng.below(35) - 17,
            _ => 1 + self.rng.below(10_000),
        }
    }

    /// An offset and length for a write into a file of `size` bytes, kept under MAX_FILE.
    fn extent(&mut self, size: u64) -> (u64, u64) {
        let len = self.length();
        // Whole units at a unit boundary take the daemon's parallel write path.
        let mut offset = if self.rng.percent(10) && len.is_multiple_of(UNIT) {
            self.rng.below(size / UNIT + 2) * UNIT
        } else {
            self.offset(size)
        };
        if offset + len > MAX_FILE {
            offset = self.rng.below(MAX_FILE - len);
        }
        (offset, len)
    }

    fn new_size(&mut self, size: u64) -> u64 {
        let new = match self.rng.below(10) {
            0 => 0,
            1..=3 => {
                let unit = self.rng.below(size / UNIT + 3);
                (unit * UNIT + self.rng.below(35)).saturating_sub(17)
            }
            4 => size.saturating_sub(1 + self.rng.below(15)),
            5 => self.rng.below(size + 1),
            6 => size + 1 + self.rng.below(3 * UNIT),
            7 => size + self.rng.below(MIB),
            8 => size,
            _ => size + 1 + self.rng.below(15),
        };
        new.min(MAX_FILE)
    }

    fn fill(&mut self) -> Fill {
        match self.rng.below(10) {
            0 => Fill::Zeros,
            1 => Fill::Canary,
            _ => Fill::Random(self.rng.next()),
        }
    }

    fn falloc_mode(&mut self) -> FallocMode {
        let keep = libc::FALLOC_FL_KEEP_SIZE;
        FallocMode(*self.rng.pick(&[
            0,
            keep,
            libc::FALLOC_FL_PUNCH_HOLE | keep,
            libc::FALLOC_FL_PUNCH_HOLE | keep,
            libc::FALLOC_FL_ZERO_RANGE,
            libc::FALLOC_FL_ZERO_RANGE | keep,
        ]))
    }

    fn falloc_extent(&mut self, size: u64) -> (u64, u64) {
        let (offset, len) = self.extent(size);
        // A zero length is EINVAL on both sides; keep it rare.
        (offset, if self.rng.percent(2) { 0 } else { len })
    }

    /// Symlink targets stay inside the tree (no "..", not absolute) so following one on
    /// either side never leaves its root.
    fn target(&mut self) -> RelPath {
        match self.rng.below(10) {
            0 => RelPath(Vec::new()),
            1 => RelPath(self.canary.clone()),
            2 => {
                let part = self.rng.pick(&self.names).clone();
                let repeat = 1 + self.rng.below(8) as usize;
                RelPath(vec![part; repeat].join(&b'/'))
            }
            3 | 4 => RelPath(self.rng.pick(&self.names).clone()).join(&self.name()),
            _ => RelPath(self.name()),
        }
    }

    fn open_flags(&mut self) -> OpenFlags {
        let mut flags =
            *self
                .rng
                .pick(&[libc::O_RDWR, libc::O_RDWR, libc::O_WRONLY, libc::O_RDONLY]);
        for (bit, percent) in [
            (libc::O_CREAT, 30),
            (libc::O_APPEND, 25),
            (libc::O_TRUNC, 8),
            (libc::O_EXCL, 5),
        ] {
            if self.rng.percent(percent) {
                flags |= bit;
            }
        }
        OpenFlags(flags)
    }

    /// `open_slots` pairs each open handle slot with the size of the file it holds.
    fn contents_op(&mut self, listing: &Listing, open_slots: &[(usize, u64)]) -> Op {
        if self.rng.below(REMOUNT_ONE_IN) == 0 {
            return Op::Remount;
        }
        let crowded = listing.entries.len() > MAX_ENTRIES;
        let mut choice = self.rng.below(100);
        if crowded && choice >= 50 {
            // Remove until the tree is small again: unlink or rmdir.
            choice = if self.rng.percent(70) { 58 } else { 67 };
        }
        if choice >= 79 && open_slots.is_empty() {
            // Nothing open yet for a handle op: open something instead.
            choice = 75;
        }
        match choice {
            0..=17 => {
                let (path, size) = self.file_path(listing);
                let (offset, len) = self.extent(size);
                Op::Write {
                    path,
                    create: self.rng.percent(85),
                    offset,
                    len,
                    fill: self.fill(),
                }
            }
            18..=22 => {
                let (path, size) = self.file_path(listing);
                let len = if size + MIB > MAX_FILE {
                    1 + self.rng.below(100)
                } else {
                    self.length()
                };
                Op::Append {
                    path,
                    create: self.rng.percent(60),
                    len,
                    fill: self.fill(),
                }
            }
            23..=30 => {
                let (path, size) = self.file_path(listing);
                Op::Truncate {
                    path,
                    size: self.new_size(size),
                }
            }
            31..=37 => {
                let (path, size) = self.file_path(listing);
                let (offset, len) = self.falloc_extent(size);
                Op::Fallocate {
                    path,
                    mode: self.falloc_mode(),
                    offset,
                    len,
                }
            }
            38..=42 => {
                let (path, size) = self.file_path(listing);
                Op::Read {
                    path,
                    offset: self.offset(size),
                    len: self.length(),
                }
            }
            43..=45 => Op::Fsync {
                path: self.any_path(listing),
                data_only: self.rng.percent(50),
            },
            46..=54 => {
                let from = self.any_path(listing);
                let to = if self.rng.percent(40) {
                    self.any_path(listing)
                } else {
                    self.new_path(listing)
                };
                let flags = RenameFlags(match self.rng.below(10) {
                    0 | 1 => libc::RENAME_NOREPLACE,
                    2 | 3 => libc::RENAME_EXCHANGE,
                    _ => 0,
                });
                Op::Rename { from, to, flags }
            }
            55..=57 => Op::Link {
                from: match self.existing(listing, &NOT_DIR) {
                    Some((path, _)) if self.rng.percent(85) => path,
                    _ => self.any_path(listing),
                },
                to: if self.rng.percent(15) {
                    self.any_path(listing)
                } else {
                    self.new_path(listing)
                },
            },
            58..=63 => {
                let found = if self.rng.percent(85) {
                    self.existing(listing, &NOT_DIR)
                } else {
                    None
                };
                Op::Unlink {
                    path: found.map_or_else(|| self.any_path(listing), |(path, _)| path),
                }
            }
            64..=66 => {
                let shallow: Vec<_> = listing
                    .dirs
                    .iter()
                    .filter(|d| d.depth() < MAX_DIR_DEPTH)
                    .cloned()
                    .collect();
                let dir = self.rng.pick(&shallow).clone();
                Op::Mkdir {
                    path: dir.join(&self.name()),
                    mode: Mode(*self.rng.pick(&[
                        0o777, 0o777, 0o777, 0o755, 0o700, 0o1777, 0o2775, 0o3777, 0o555,
                    ])),
                }
            }
            67..=70 => {
                let found = if self.rng.percent(80) {
                    self.existing(listing, &[Kind::Dir])
                } else {
                    None
                };
                Op::Rmdir {
                    path: found.map_or_else(|| self.any_path(listing), |(path, _)| path),
                }
            }
            71..=73 => Op::Symlink {
                target: self.target(),
                path: self.new_path(listing),
            },
            74 => Op::Close {
                slot: self.rng.below(SLOTS as u64) as usize,
            },
            // From here on, operations need an open handle.
            75..=78 => Op::Open {
                slot: self.rng.below(SLOTS as u64) as usize,
                path: self.file_path(listing).0,
                flags: self.open_flags(),
            },
            79..=88 => {
                let (slot, size) = *self.rng.pick(open_slots);
                let (offset, len) = self.extent(size);
                Op::HandleWrite {
                    slot,
                    offset,
                    len,
                    fill: self.fill(),
                }
            }
            89..=91 => {
                let (slot, size) = *self.rng.pick(open_slots);
                Op::HandleRead {
                    slot,
                    offset: self.offset(size),
                    len: self.length(),
                }
            }
            92..=94 => {
                let (slot, size) = *self.rng.pick(open_slots);
                Op::HandleTruncate {
                    slot,
                    size: self.new_size(size),
                }
            }
            95..=97 => {
                let (slot, size) = *self.rng.pick(open_slots);
                let (offset, len) = self.falloc_extent(size);
                Op::HandleFallocate {
                    slot,
                    mode: self.falloc_mode(),
                    offset,
                    len,
                }
            }
            _ => Op::HandleSync {
                slot: self.rng.pick(open_slots).0,
                data_only: self.rng.percent(50),
            },
        }
    }
}

// --- the run --------------------------------------------------------------------------------

/// A divergence between the two sides.
struct Mismatch {
    /// The failing op's kind and what diverged, to recognise the same failure while
    /// minimizing.
    class: String,
    what: String,
}

fn op_kind(op: &Op) -> String {
    if let Op::AsOther { op, .. } = op {
        return format!("{} as other user", op_kind(op));
    }
    let shown = format!("{op:?}");
    shown
        .split([' ', '{'])
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The two sides with their mount, applying operations and comparing.
struct Run<'a> {
    // Before `mount`: fields drop in order, and open handles would keep it busy.
    sides: [Side; 2],
    mount: Mounted<'a>,
    canary: Vec<u8>,
    mount_args: Vec<String>,
    /// Per operation kind: how many succeeded, and how many failed with which errno.
    tally: BTreeMap<String, (usize, BTreeMap<String, usize>)>,
}

impl<'a> Run<'a> {
    fn new(env: &'a TestEnv, seed: u64, start: Start) -> Self {
        // --allow-other: the second user must reach the mount.
        let mut mount_args = vec!["--allow-other".to_string()];
        mount_args.extend(
            std::env::var(MOUNT_ARGS_VAR)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_string),
        );
        let mut mount = match start {
            Start::Init(args) => env.initialized(args),
            Start::Golden(kind) => {
                common::golden_copy(env, kind);
                env.existing()
            }
        };
        mount.mount(&mount_args.iter().map(String::as_str).collect::<Vec<_>>());
        // The reference lives on the same file system as the backing directory, so both
        // sides' errors come from the same kind of file system.
        let reference = env.path("reference");
        fs::create_dir(&reference).expect("create reference dir");
        // The second user reaches both roots, and may create in them.
        set_mode(env.root(), 0o755);
        set_mode(&reference, 0o777);
        set_mode(&mount.mountpoint, 0o777);
        if let Start::Golden(_) = start {
            let copied = std::process::Command::new("cp")
                .arg("-a")
                .arg(mount.mountpoint.join("."))
                .arg(&reference)
                .status()
                .expect("run cp");
            assert!(
                copied.success(),
                "copy the golden plaintext to the reference"
            );
        }
        Run {
            sides: [Side::new(mount.mountpoint.clone()), Side::new(reference)],
            mount,
            canary: canary(seed),
            mount_args,
            tally: BTreeMap::new(),
        }
    }

    /// Open handle slots with the size of the file each holds.
    fn open_slots(&self) -> Vec<(usize, u64)> {
        (0..SLOTS)
            .filter_map(|slot| {
                let file = self.sides[REFERENCE].handles[slot].as_ref()?;
                Some((slot, file.metadata().map_or(0, |m| m.len())))
            })
            .collect()
    }

    /// Applies `op` to both sides: here as root, or for [`Op::AsOther`] in a child
    /// process as the second user.
    fn apply_both(&mut self, op: &Op) -> [Outcome; 2] {
        let Op::AsOther { umask, op } = op else {
            let canary = &self.canary;
            return self.sides.each_mut().map(|side| side.apply(op, canary));
        };
        let (sides, canary) = (&mut self.sides, &self.canary);
        let wire = User::alice().run(|| {
            // SAFETY: cannot fail; the child's own umask.
            unsafe { libc::umask(umask.0) };
            sides.each_mut().map(|side| to_wire(side.apply(op, canary)))
        });
        wire.map(from_wire)
    }

    fn step(&mut self, op: &Op) -> Result<(), Mismatch> {
        if let Op::Remount = op {
            self.remount()?;
            return self.compare_trees("comparison after remount");
        }
        let times_before = match op.inner() {
            Op::Utimens { path, follow, .. } => Some(
                self.sides
                    .each_ref()
                    .map(|side| times_of(&side.path(path), *follow)),
            ),
            _ => None,
        };
        let started = SystemTime::now();
        let [ours, theirs] = self.apply_both(op);
        let ended = SystemTime::now();
        let counts = self.tally.entry(op_kind(op)).or_default();
        match &theirs {
            Ok(_) => counts.0 += 1,
            Err(e) => *counts.1.entry(format!("{e:?}")).or_default() += 1,
        }
        if ours != theirs {
            let detail = match (&ours, &theirs) {
                (Ok(Value::Data(a)), Ok(Value::Data(b))) => bytes_difference(a, b),
                _ => String::new(),
            };
            return Err(Mismatch {
                class: format!("{}: result", op_kind(op)),
                what: format!("results differ: xtsfs {ours:?}, reference {theirs:?} {detail}"),
            });
        }
        if let (Some(before), Op::Utimens { .. }) = (times_before, op.inner()) {
            self.check_times(op, &before, theirs.is_ok(), (started, ended))?;
        }
        self.spot_check(op)
    }

    /// After a utimensat, each side's times are what was asked for: a given time exactly,
    /// UTIME_OMIT's unchanged, UTIME_NOW's within the op's wall-clock window, and after
    /// a failure both unchanged. The sides' own times differ (files were not made at the
    /// same instant), so what is compared is whether each side did as asked.
    fn check_times(
        &self,
        op: &Op,
        before: &[Result<[(i64, i64); 2], Errno>; 2],
        succeeded: bool,
        (started, ended): (SystemTime, SystemTime),
    ) -> Result<(), Mismatch> {
        let Op::Utimens {
            path,
            atime,
            mtime,
            follow,
        } = op.inner()
        else {
            return Ok(());
        };
        let since_epoch = |t: SystemTime| {
            let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap();
            (d.as_secs() as i64, i64::from(d.subsec_nanos()))
        };
        let window = (
            since_epoch(started - CLOCK_SLACK),
            since_epoch(ended + CLOCK_SLACK),
        );
        let after = self
            .sides
            .each_ref()
            .map(|side| times_of(&side.path(path), *follow));
        let verdicts: Vec<_> = (0..2)
            .map(|side| {
                let (Ok(before), Ok(after)) = (&before[side], &after[side]) else {
                    return None;
                };
                let specs = [*atime, *mtime];
                Some([0, 1].map(|i| match specs[i] {
                    _ if !succeeded => after[i] == before[i],
                    TimeSpec::Omit => after[i] == before[i],
                    TimeSpec::At(sec, nsec) => after[i] == (sec, nsec),
                    TimeSpec::Now => window.0 <= after[i] && after[i] <= window.1,
                }))
            })
            .collect();
        if verdicts[XTSFS] == verdicts[REFERENCE] {
            return Ok(());
        }
        Err(Mismatch {
            class: format!("{}: times", op_kind(op)),
            what: format!(
                "after the op, whether (atime, mtime) are as asked: xtsfs {:?}, reference {:?}; \
                 times before: {before:?}, after: {after:?}, window {window:?}",
                verdicts[XTSFS], verdicts[REFERENCE]
            ),
        })
    }

    /// Right after an op, the paths it named and the bytes it changed must agree, so a
    /// divergence is reported at the op that caused it rather than at the next comparison.
    fn spot_check(&self, op: &Op) -> Result<(), Mismatch> {
        for path in op.touched() {
            let stats = self.sides.each_ref().map(|side| lstat(&side.path(path)));
            if stats[XTSFS] != stats[REFERENCE] {
                let again = lstat_after_ttl(&self.sides[XTSFS].path(path));
                return Err(Mismatch {
                    class: format!("{}: stat", op_kind(op)),
                    what: format!(
                        "after the op, {path:?} is xtsfs {:?}, reference {:?}; \
                         on xtsfs {} s later: {again:?}",
                        stats[XTSFS],
                        stats[REFERENCE],
                        KERNEL_CACHE_TTL.as_secs_f32()
                    ),
                });
            }
        }
        if let Op::SetXattr { path, .. } | Op::RemoveXattr { path, .. } = op.inner() {
            let found = self.sides.each_ref().map(|side| xattrs(&side.path(path)));
            if found[XTSFS] != found[REFERENCE] {
                let shown = found.each_ref().map(|f| match f {
                    Ok(xattrs) => shown_xattrs(xattrs),
                    Err(e) => format!("{e:?}"),
                });
                return Err(Mismatch {
                    class: format!("{}: xattrs", op_kind(op)),
                    what: format!(
                        "after the op, the attributes of {path:?} are xtsfs {}, reference {}",
                        shown[XTSFS], shown[REFERENCE]
                    ),
                });
            }
        }
        let Some((offset, len)) = op.changed_range() else {
            return Ok(());
        };
        let opened = match (op.touched().first(), op.slot()) {
            (Some(path), _) => self
                .sides
                .each_ref()
                .map(|side| open(&side.path(path), libc::O_RDONLY)),
            // A handle may be write-only: reopen what it names through /proc.
            (None, Some(slot)) => self.sides.each_ref().map(|side| {
                let fd = side.handle(slot)?.as_raw_fd();
                open(Path::new(&format!("/proc/self/fd/{fd}")), libc::O_RDONLY)
            }),
            (None, None) => return Ok(()),
        };
        let [Ok(ours), Ok(theirs)] = opened else {
            return Ok(());
        };
        let files = [ours, theirs];
        let contents_mismatch = |what: String| Mismatch {
            class: format!("{}: contents", op_kind(op)),
            what,
        };
        let sizes = files
            .each_ref()
            .map(|f| f.metadata().map(|m| m.len()).map_err(Errno::from));
        if sizes[XTSFS] != sizes[REFERENCE] {
            return Err(contents_mismatch(format!(
                "after the op, sizes differ: xtsfs {:?}, reference {:?}",
                sizes[XTSFS], sizes[REFERENCE]
            )));
        }
        let size = sizes[REFERENCE].unwrap_or(0);
        // Around both ends of the change and the end of the file, a unit either side.
        let mut windows = vec![
            (offset.saturating_sub(UNIT), 2 * UNIT),
            ((offset + len).saturating_sub(UNIT), 2 * UNIT),
            (size.saturating_sub(2 * UNIT), 2 * UNIT),
        ];
        if len <= 4 * UNIT {
            windows.push((offset.saturating_sub(UNIT), len + 2 * UNIT));
        }
        for (at, n) in windows {
            let read = files.each_ref().map(|f| read_at(f, at, n));
            if read[XTSFS] != read[REFERENCE] {
                let detail = match (&read[XTSFS], &read[REFERENCE]) {
                    (Ok(Value::Data(a)), Ok(Value::Data(b))) => bytes_difference(a, b),
                    (a, b) => format!("xtsfs {a:?}, reference {b:?}"),
                };
                return Err(contents_mismatch(format!(
                    "after the op, reading {n} bytes at {at}: {detail}"
                )));
            }
        }
        Ok(())
    }

    /// Whether the xtsfs tree reads cleanly again once the kernel cache has expired.
    fn after_ttl(&self) -> String {
        std::thread::sleep(KERNEL_CACHE_TTL);
        match snapshot(&self.sides[XTSFS].root) {
            Ok(tree) => format!(
                "; {} s later it reads without errors ({} entries)",
                KERNEL_CACHE_TTL.as_secs_f32(),
                tree.len()
            ),
            Err(e) => format!("; {} s later: {e}", KERNEL_CACHE_TTL.as_secs_f32()),
        }
    }

    fn remount(&mut self) -> Result<(), Mismatch> {
        self.sides.iter_mut().for_each(Side::close_handles);
        let unmounted = self.mount.unmount_retrying();
        if !unmounted.status.success() {
            return Err(Mismatch {
                class: "unmount".into(),
                what: format!("unmount failed: {}", common::stderr(&unmounted)),
            });
        }
        let args: Vec<&str> = self.mount_args.iter().map(String::as_str).collect();
        self.mount.mount(&args);
        Ok(())
    }

    fn compare_trees(&self, what: &str) -> Result<(), Mismatch> {
        let trees = self.sides.each_ref().map(|side| snapshot(&side.root));
        let [ours, theirs] = trees.map(|tree| {
            tree.map_err(|e| Mismatch {
                class: "trees".into(),
                what: format!("{what}: {e}"),
            })
        });
        let ours = ours.map_err(|mut m| {
            m.what = format!("{} (on xtsfs){}", m.what, self.after_ttl());
            m
        });
        let theirs = theirs.map_err(|mut m| {
            m.what.push_str(" (on the reference)");
            m
        });
        let diffs = tree_differences(&ours?, &theirs?);
        if diffs.is_empty() {
            return Ok(());
        }
        let shown: Vec<_> = diffs.iter().take(12).map(|d| format!("  {d}")).collect();
        Err(Mismatch {
            class: "trees".into(),
            what: format!(
                "{what}: the trees differ in {} entries:\n{}",
                diffs.len(),
                shown.join("\n")
            ),
        })
    }

    /// The end of a run: with every handle closed the trees must match, and still match
    /// once the volume has been unmounted and mounted again.
    fn finish(&mut self) -> Result<(), Mismatch> {
        self.sides.iter_mut().for_each(Side::close_handles);
        self.compare_trees("final comparison")?;
        self.remount()?;
        self.compare_trees("final comparison after remount")
    }
}

/// Generates and applies `ops` operations from `seed`, comparing as it goes.
fn run_seed(seed: u64, ops: usize, start: Start) {
    let env = TestEnv::new();
    let mut run = Run::new(&env, seed, start);
    let mut generator = Generator::new(seed);
    let mut applied = Vec::with_capacity(ops);
    let mut result = Ok(());
    for i in 0..ops {
        let listing = list(&run.sides[REFERENCE].root);
        let op = generator.op(&listing, &run.open_slots());
        applied.push(op.clone());
        result = run.step(&op);
        if result.is_ok() && (i + 1) % COMPARE_EVERY == 0 {
            result = run.compare_trees("periodic comparison");
        }
        if result.is_err() {
            break;
        }
    }
    if result.is_ok() {
        // Random ops may have removed every trace of the canary: leave some for sure.
        for op in final_canary_ops(&run.canary) {
            applied.push(op.clone());
            result = run.step(&op);
            if result.is_err() {
                break;
            }
        }
    }
    if let Err(mut mismatch) = result.and_then(|()| run.finish()) {
        if let Some(note) = mount_gone(&run.mount.mountpoint) {
            mismatch.what = format!("{} [{note}]", mismatch.what);
        }
        drop(run);
        report(seed, ops, &applied, &mismatch);
    }
    let tally: Vec<String> = run
        .tally
        .iter()
        .map(|(kind, (ok, errors))| format!("  {kind}: {ok} ok, errors {errors:?}"))
        .collect();
    eprintln!(
        "differential: seed {seed:#x} results:\n{}",
        tally.join("\n")
    );
    assert!(
        !find_plaintext(&run.sides[REFERENCE].root, &run.canary).is_empty(),
        "the canary is in the clear on the reference side, so the search can find it"
    );
    assert!(
        !find_plaintext_xattrs(&run.sides[REFERENCE].root, &run.canary).is_empty(),
        "the canary is in the reference's attributes, so the search can find it"
    );
    let leaks = find_plaintext_xattrs(&run.mount.backing, &run.canary);
    assert!(
        leaks.is_empty(),
        "seed {seed:#x}: the canary is in the clear in backing attributes: {leaks:?}"
    );
    let leaks = find_plaintext(&run.mount.backing, &run.canary);
    assert!(
        leaks.is_empty(),
        "seed {seed:#x}: the canary {:?} is in the clear in the backing dir: {leaks:?}",
        String::from_utf8_lossy(&run.canary)
    );
}

/// Contents, a short name, a long name (whose side file holds its encryption) and a
/// symlink target, all carrying the canary, under names the generator never uses.
fn final_canary_ops(canary: &[u8]) -> Vec<Op> {
    let short = RelPath([b"final-".as_slice(), canary].concat());
    let mut long = short.0.clone();
    long.resize(LONGEST_DIRECT_NAME + 60, b'-');
    vec![
        Op::Write {
            path: short.clone(),
            create: true,
            offset: 0,
            len: 3 * UNIT + 7,
            fill: Fill::Canary,
        },
        Op::Write {
            path: RelPath(long),
            create: true,
            offset: UNIT - 5,
            len: 100,
            fill: Fill::Canary,
        },
        Op::Symlink {
            target: RelPath(canary.to_vec()),
            path: RelPath([short.0.as_slice(), b"-link"].concat()),
        },
        Op::SetXattr {
            path: short,
            name: XattrName([b"user.".as_slice(), canary].concat()),
            len: MAX_XATTR_VALUE,
            fill: Fill::Canary,
            flags: XattrFlags(0),
        },
    ]
}

/// Every place under `dir` where `needle` occurs in an extended attribute's name or value.
fn find_plaintext_xattrs(dir: &Path, needle: &[u8]) -> Vec<String> {
    let contains = |haystack: &[u8]| haystack.windows(needle.len()).any(|w| w == needle);
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        for (name, value) in xattrs(&path).unwrap_or_default() {
            if contains(&name) || contains(&value) {
                hits.push(format!("{}: {}", path.display(), Shown(&name)));
            }
        }
        if fs::symlink_metadata(&path).is_ok_and(|m| m.is_dir()) {
            for entry in fs::read_dir(&path).expect("list backing dir") {
                stack.push(entry.expect("backing entry").path());
            }
        }
    }
    hits
}

/// Whether the xtsfs side diverged because its mount went away: a daemon that died, or
/// an unmount from outside (a test script sweeping up "leaked" mounts on a shared machine
/// detaches a running test's mount too, and every path under it then reads ENOENT).
fn mount_gone(mountpoint: &Path) -> Option<String> {
    let parent = mountpoint.parent()?;
    match (fs::metadata(mountpoint), fs::metadata(parent)) {
        (Ok(mount), Ok(parent)) if mount.dev() == parent.dev() => {
            Some("the xtsfs mount is gone: unmounted from outside the test?".into())
        }
        (Err(e), _) => Some(format!("the xtsfs mount does not answer: {e}")),
        _ => None,
    }
}

/// Panics with everything needed to replay the failure, and with a minimized op sequence
/// when asked for one.
fn report(seed: u64, ops: usize, applied: &[Op], mismatch: &Mismatch) -> ! {
    let at = if applied.len() < ops {
        format!("op #{}", applied.len() - 1)
    } else {
        format!("the end, after {ops} ops")
    };
    let first = applied.len().saturating_sub(LOG_TAIL);
    let tail: Vec<String> = applied[first..]
        .iter()
        .enumerate()
        .map(|(i, op)| format!("#{}: {op:?}", first + i))
        .collect();
    let minimized = if std::env::var_os(MINIMIZE_VAR).is_some() {
        let ops = minimize(seed, applied, &mismatch.class);
        let shown: Vec<String> = ops.iter().map(|op| format!("{op:?}")).collect();
        format!(
            "minimized to {} ops, failing the same way ({}):\n  {}",
            ops.len(),
            mismatch.class,
            shown.join("\n  ")
        )
    } else {
        format!("({MINIMIZE_VAR}=1 shrinks the sequence)")
    };
    panic!(
        "differential mismatch, seed {seed:#x}, at {at}: {what}\n\
         replay: XTSFS_SOAK_SEED={seed:#x} XTSFS_SOAK_OPS={replay_ops} cargo test --test differential\n\
         last {n} ops:\n  {tail}\n{minimized}",
        what = mismatch.what,
        replay_ops = applied.len().min(ops),
        n = tail.len(),
        tail = tail.join("\n  "),
    );
}

/// Applies a fixed op sequence to a fresh volume and reference, then finishes as a run does.
fn replay(seed: u64, ops: &[Op]) -> Result<(), Mismatch> {
    let env = TestEnv::new();
    let mut run = Run::new(&env, seed, Start::Init(&[]));
    for op in ops {
        run.step(op)?;
    }
    run.finish()
}

/// Delta debugging (ddmin): drops chunks of the sequence while it still fails the same
/// way, down to a sequence where removing any single op makes the failure go away.
fn minimize(seed: u64, ops: &[Op], class: &str) -> Vec<Op> {
    let trials = std::cell::Cell::new(0);
    let fails = |candidate: &[Op]| {
        trials.set(trials.get() + 1);
        matches!(replay(seed, candidate), Err(m) if m.class == class)
    };
    let mut ops = ops.to_vec();
    if !fails(&ops) {
        eprintln!("differential: the failure does not replay from the op sequence alone");
        return ops;
    }
    let mut chunks = 2;
    while ops.len() >= 2 {
        let size = ops.len().div_ceil(chunks);
        let reduced = (0..chunks).find_map(|i| {
            let start = (i * size).min(ops.len());
            let end = ((i + 1) * size).min(ops.len());
            let candidate: Vec<Op> = [&ops[..start], &ops[end..]].concat();
            (start < end && fails(&candidate)).then_some(candidate)
        });
        match reduced {
            Some(candidate) => {
                ops = candidate;
                chunks = (chunks - 1).max(2);
            }
            None if chunks >= ops.len() => break,
            None => chunks = (chunks * 2).min(ops.len()),
        }
        eprintln!(
            "differential: minimizing: {} ops ({} trials)",
            ops.len(),
            trials.get()
        );
    }
    ops
}
