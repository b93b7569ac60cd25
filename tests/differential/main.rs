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
//!
//! Modules: `op` (the operations), `generator` (drawing them from a seed), `side` (applying
//! one to the mount or the reference), `model` (what a tree is compared by), `run` (both
//! sides, comparing, reporting and minimizing). This file: the tests and the reproducers.

#[path = "../common/mod.rs"]
mod common;
mod generator;
mod model;
mod op;
mod run;
mod side;

use std::fs;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::time::{Duration, Instant};

use crate::op::{Op, RelPath, TimeSpec};
use crate::run::run_seed;
use crate::side::{open, Side};
use common::sys::truncate;
use common::users::{User, SHARED_GROUP};
use common::{env_number, set_mode, TestEnv, LONGEST_DIRECT_NAME, MIB, UNIT};

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

// --- operations ---------------------------------------------------------------------------
