//! POSIX behaviour of a mounted volume, one test per operation, each on its own volume.
//!
//! Where POSIX leaves a result to the file system, a scenario runs both in a directory on
//! the local file system and in the mount, and the two must observe the same thing.

#[path = "../common/mod.rs"]
mod common;
mod users;
mod xattrs;

use std::alloc::{self, Layout};
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::ops::{Deref, DerefMut};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{
    symlink, DirBuilderExt, DirEntryExt, FileExt, FileTypeExt, MetadataExt, OpenOptionsExt,
    PermissionsExt,
};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, SystemTime};

use common::mount::{find_plaintext, Mounted};
use common::sys::{cpath, cvt, fallocate, mkfifo, read_full_at, renameat2, truncate};
use common::{path_str, pseudo_random_bytes, set_mode, Rng, TestEnv};

const UNIT: u64 = 4096;
const MIB: u64 = 1 << 20;
const GIB: u64 = 1 << 30;

// ---------------------------------------------------------------------------------------
// Helpers

/// File contents compared by value but shown by length and checksum, so a mismatch of
/// large contents stays readable.
#[derive(PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fnv = self.0.iter().fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
        });
        write!(f, "{} bytes, fnv {fnv:016x}", self.0.len())?;
        if self.0.len() <= 40 {
            write!(f, " \"{}\"", self.0.escape_ascii())?;
        }
        Ok(())
    }
}

/// An I/O result with the error reduced to its errno, comparable across file systems.
fn os<T>(result: io::Result<T>) -> Result<T, i32> {
    result.map_err(|e| {
        e.raw_os_error()
            .unwrap_or_else(|| panic!("not an OS error: {e}"))
    })
}

#[track_caller]
fn assert_errno<T: fmt::Debug>(result: io::Result<T>, errno: i32) {
    let err = result.expect_err("the call should fail");
    assert_eq!(err.raw_os_error(), Some(errno), "{err}");
}

/// A file's contents, or the errno reading it gave.
fn contents(path: &Path) -> Result<Bytes, i32> {
    os(fs::read(path)).map(Bytes)
}

/// The sorted names in a directory.
fn names(dir: &Path) -> Vec<OsString> {
    let mut names: Vec<OsString> = fs::read_dir(dir)
        .expect("read dir")
        .map(|e| e.expect("dir entry").file_name())
        .collect();
    names.sort();
    names
}

/// Runs `scenario` in a directory of the local file system and in the (empty) mount,
/// asserts that both observed the same, and returns what was observed.
#[track_caller]
fn same_as_local<T: PartialEq + fmt::Debug>(
    env: &TestEnv,
    m: &Mounted,
    scenario: impl Fn(&Path) -> T,
) -> T {
    let local = env.path("local");
    fs::create_dir_all(&local).expect("create local dir");
    let expected = scenario(&local);
    let actual = scenario(&m.mountpoint);
    assert_eq!(
        actual, expected,
        "the mount (left) differs from the local file system (right)"
    );
    actual
}

/// Runs `work` on another thread, failing the test if it takes longer than `limit`: a
/// request the daemon never answers must fail the test, not stall it.
fn within<T: Send + 'static>(limit: Duration, work: impl FnOnce() -> T + Send + 'static) -> T {
    let (done, result) = mpsc::channel();
    let worker = thread::spawn(move || {
        let _ = done.send(work());
    });
    match result.recv_timeout(limit) {
        Ok(value) => value,
        Err(mpsc::RecvTimeoutError::Timeout) => panic!("no answer within {limit:?}"),
        Err(mpsc::RecvTimeoutError::Disconnected) => match worker.join() {
            Err(panic) => std::panic::resume_unwind(panic),
            Ok(()) => unreachable!("the worker sends before it ends"),
        },
    }
}

fn data(seed: u64, len: u64) -> Vec<u8> {
    pseudo_random_bytes(seed, len as usize)
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Reads up to `len` bytes at `offset`, stopping early only at end of file.
fn read_at(file: &File, offset: u64, len: u64) -> Vec<u8> {
    let mut buf = vec![0u8; len as usize];
    let done = read_full_at(file, &mut buf, offset)
        .unwrap_or_else(|e| panic!("read {len} bytes at {offset}: {e}"));
    buf.truncate(done);
    buf
}

fn statvfs(path: &Path) -> libc::statvfs {
    let path = cpath(path);
    // SAFETY: an all-zero statvfs is a valid value to be overwritten.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: NUL-terminated path, st is writable.
    cvt(unsafe { libc::statvfs(path.as_ptr(), &mut st) }).expect("statvfs");
    st
}

fn timespec(sec: i64, nsec: i64) -> libc::timespec {
    libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    }
}

const OMIT: libc::timespec = libc::timespec {
    tv_sec: 0,
    tv_nsec: libc::UTIME_OMIT,
};

fn utimensat(
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

/// A zeroed buffer aligned to 4096 bytes, as O_DIRECT wants.
struct AlignedBuf {
    ptr: *mut u8,
    layout: Layout,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let layout = Layout::from_size_align(len, UNIT as usize).expect("layout");
        // SAFETY: the layout has a non-zero size.
        let ptr = unsafe { alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null(), "allocation failed");
        AlignedBuf { ptr, layout }
    }
}

impl Deref for AlignedBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: ptr points to layout.size() initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr, self.layout.size()) }
    }
}

impl DerefMut for AlignedBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self is exclusive.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in new with this layout.
        unsafe { alloc::dealloc(self.ptr, self.layout) }
    }
}

/// A 200-byte name: its encryption is longer than 255 bytes, so it is stored hashed with
/// a side file.
fn long_name(tag: &str) -> String {
    let mut name = format!("{tag}-");
    while name.len() < 200 {
        name.push(char::from(b'a' + (name.len() % 26) as u8));
    }
    name
}

/// Asserts that every hashed long-name entry in the backing tree has its side file and
/// that no side file is left without its entry.
#[track_caller]
fn assert_side_files_match(tree: &Path) {
    let mut stack = vec![tree.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries = BTreeSet::new();
        let mut side_files = BTreeSet::new();
        for entry in fs::read_dir(&dir).expect("list backing dir") {
            let entry = entry.expect("backing entry");
            let name = entry
                .file_name()
                .into_string()
                .expect("backing names are ASCII");
            if entry.file_type().expect("file type").is_dir() {
                stack.push(entry.path());
            }
            if let Some(stem) = name.strip_suffix(".name") {
                side_files.insert(stem.to_owned());
            } else if name.starts_with("xtsfs.long.") {
                entries.insert(name);
            }
        }
        assert_eq!(
            entries,
            side_files,
            "long-name entries vs side files in {}",
            dir.display()
        );
    }
}

// ---------------------------------------------------------------------------------------
// lookup, getattr

#[test]
fn getattr_reports_the_plaintext_size_and_kind() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let mut seen = Vec::new();
        for size in [0, 1, 15, 16, 17, 4095, 4096, 4097, 8192, 100_000] {
            let path = dir.join(format!("file-{size}"));
            fs::write(&path, data(size, size)).unwrap();
            let by_path = fs::metadata(&path).unwrap();
            let by_fd = File::open(&path).unwrap().metadata().unwrap();
            seen.push(format!(
                "{size}: len {} fd len {} same ino {} file {} mode {:o} nlink {}",
                by_path.len(),
                by_fd.len(),
                by_path.ino() == by_fd.ino(),
                by_path.is_file(),
                by_path.mode(),
                by_path.nlink()
            ));
        }
        fs::create_dir(dir.join("dir")).unwrap();
        let meta = fs::metadata(dir.join("dir")).unwrap();
        seen.push(format!(
            "dir: dir {} mode {:o} nlink {}",
            meta.is_dir(),
            meta.mode(),
            meta.nlink()
        ));
        let missing = os(fs::metadata(dir.join("missing")).map(drop));
        let under_file = os(fs::metadata(dir.join("file-1/child")).map(drop));
        seen.push(format!("missing {missing:?} under a file {under_file:?}"));
        seen
    });
}

#[test]
fn st_blocks_counts_written_data_and_not_holes() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let dense = m.path("dense");
    fs::write(&dense, data(1, MIB)).unwrap();
    let blocks = fs::metadata(&dense).unwrap().blocks();
    assert!(blocks >= 2048, "a dense 1 MiB file has {blocks} blocks");

    let sparse = m.path("sparse");
    let file = File::create(&sparse).unwrap();
    file.set_len(5 * GIB).unwrap();
    file.write_all_at(b"end", 5 * GIB - 3).unwrap();
    let meta = fs::metadata(&sparse).unwrap();
    assert_eq!(meta.len(), 5 * GIB);
    assert!(
        meta.blocks() < 64,
        "a sparse 5 GiB file has {} blocks",
        meta.blocks()
    );
}

// ---------------------------------------------------------------------------------------
// create, open

#[test]
fn open_create_exclusive_refuses_an_existing_name() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let seen = same_as_local(&env, &m, |dir| {
        let create_new = |path: &Path| {
            os(OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o640)
                .open(path)
                .map(drop))
        };
        let path = dir.join("file");
        let first = create_new(&path);
        let mode = fs::metadata(&path).unwrap().mode();
        fs::write(&path, b"kept").unwrap();
        let again = create_new(&path);
        let without_excl = os(OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map(drop));
        fs::create_dir(dir.join("dir")).unwrap();
        let on_dir = create_new(&dir.join("dir"));
        // O_EXCL never follows a symlink, even a dangling one; plain O_CREAT does.
        symlink("created-through-link", dir.join("dangling")).unwrap();
        let on_dangling = create_new(&dir.join("dangling"));
        let target_after_excl = dir.join("created-through-link").exists();
        let through_link = os(OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .open(dir.join("dangling"))
            .map(drop));
        let target_after_creat = dir.join("created-through-link").exists();
        format!(
            "first {first:?} mode {mode:o} again {again:?} without excl {without_excl:?} \
             contents {:?} on dir {on_dir:?} on dangling {on_dangling:?} \
             target {target_after_excl} through link {through_link:?} target {target_after_creat}",
            contents(&path)
        )
    });
    assert!(
        seen.contains(&format!("again Err({})", libc::EEXIST)),
        "{seen}"
    );
}

#[test]
fn open_trunc_empties_the_file() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let path = dir.join("file");
        fs::write(&path, data(1, 10_000)).unwrap();
        let mut file = OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let len_on_open = file.metadata().unwrap().len();
        file.write_all(b"new").unwrap();
        drop(file);
        let after_write = contents(&path);
        // Linux truncates on O_RDONLY|O_TRUNC too (POSIX leaves it unspecified).
        fs::write(&path, data(2, 5000)).unwrap();
        let read_only = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_TRUNC)
            .open(&path)
            .unwrap();
        let len_read_only = read_only.metadata().unwrap().len();
        drop(read_only);
        format!(
            "on open {len_on_open} after write {after_write:?} read-only {len_read_only} \
             then {:?}",
            contents(&path)
        )
    });
}

#[test]
fn o_append_writers_interleave_without_overwriting() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let chunks: Vec<Vec<u8>> = (0..40).map(|i| data(i, 1 + (i * 997) % 5000)).collect();
    let seen = same_as_local(&env, &m, |dir| {
        let path = dir.join("log");
        let open = || {
            OpenOptions::new()
                .append(true)
                .create(true)
                .open(&path)
                .unwrap()
        };
        let mut writers = [open(), open()];
        for (i, chunk) in chunks.iter().enumerate() {
            let writer = &mut writers[i % 2];
            // O_APPEND ignores the file position.
            writer.seek(SeekFrom::Start(0)).unwrap();
            writer.write_all(chunk).unwrap();
        }
        contents(&path)
    });
    assert_eq!(seen, Ok(Bytes(chunks.concat())));
}

// ---------------------------------------------------------------------------------------
// read, write

#[test]
fn reads_and_writes_at_unaligned_offsets_match_a_local_file() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let mut writes: Vec<(u64, u64)> = vec![
        (0, 1),
        (1, 15),
        (15, 2),
        (4095, 1),
        (4095, 2),
        (4096, 4096),
        (8191, 4098),
        (3, 10_000),
        (20_000, 5),
        (12_288, 4096),
        (16_383, 1),
        (40_000, 70_000),
    ];
    let mut rng = Rng(7);
    writes.extend((0..40).map(|_| (rng.below(120_000), 1 + rng.below(9000))));
    let read_offsets = [
        0, 1, 15, 4095, 4096, 4097, 8191, 12_345, 109_999, 110_000, 130_000,
    ];
    let read_lens = [1, 15, 16, 4096, 5000, 70_000];
    same_as_local(&env, &m, |dir| {
        let path = dir.join("file");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut seen = Vec::new();
        for (i, &(offset, len)) in writes.iter().enumerate() {
            file.write_all_at(&data(i as u64, len), offset).unwrap();
            seen.push(format!("len {}", file.metadata().unwrap().len()));
        }
        for offset in read_offsets {
            for len in read_lens {
                seen.push(format!(
                    "{offset}+{len}: {:?}",
                    Bytes(read_at(&file, offset, len))
                ));
            }
        }
        seen.push(format!("{:?}", contents(&path)));
        seen
    });
    m.remount();
    assert_eq!(contents(&m.path("file")), contents(&env.path("local/file")));
}

#[test]
fn tiny_and_unit_multiple_files_round_trip() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let mut expected = BTreeMap::new();
    let sizes = (1..=17).chain([31, 4095, 4096, 4097, 8191, 8192, 12_288, 65_536]);
    for size in sizes {
        let name = format!("size-{size}");
        let bytes = data(size, size);
        fs::write(m.path(&name), &bytes).unwrap();
        expected.insert(name, bytes);
    }
    // Growing and shrinking moves the short last unit, which is encrypted by its length.
    let grow = |name: &str, extra: &[u8], expected: &mut BTreeMap<String, Vec<u8>>| {
        let mut file = OpenOptions::new().append(true).open(m.path(name)).unwrap();
        file.write_all(extra).unwrap();
        expected.get_mut(name).unwrap().extend_from_slice(extra);
    };
    grow("size-15", b"!", &mut expected);
    grow("size-8192", b"+", &mut expected);
    grow("size-1", b"0123456789abcdefXYZ", &mut expected);
    for (name, len) in [("size-4097", 4096), ("size-17", 15), ("size-12288", 4097)] {
        let file = OpenOptions::new().write(true).open(m.path(name)).unwrap();
        file.set_len(len).unwrap();
        expected.get_mut(name).unwrap().truncate(len as usize);
    }
    let check = |m: &Mounted| {
        for (name, bytes) in &expected {
            assert_eq!(contents(&m.path(name)), Ok(Bytes(bytes.clone())), "{name}");
            assert_eq!(
                fs::metadata(m.path(name)).unwrap().len(),
                bytes.len() as u64
            );
        }
    };
    check(&m);
    m.remount();
    check(&m);
}

#[test]
fn one_byte_last_units_read_back_exactly() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let path = m.path("file");
    let writer = File::create(&path).unwrap();
    // O_DIRECT reads go to the daemon every time, past the page cache.
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    let mut buf = AlignedBuf::new(UNIT as usize);
    // A 1-byte last unit encrypts to a zero byte for about 1 unit index in 256; that
    // ciphertext must not read back as a hole. 2000 indices miss it with odds below 2^-11.
    for unit in 0..2000 {
        let byte = 1 + (unit % 255) as u8;
        writer.write_all_at(&[byte], unit * UNIT).unwrap();
        let n = reader.read_at(&mut buf, unit * UNIT).unwrap();
        assert_eq!(&buf[..n], [byte], "1-byte last unit {unit}");
    }
}

#[test]
fn sparse_file_beyond_4_gib_reads_back_with_zero_holes() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let offset = 5 * GIB + 3 * 1024;
    let payload = data(5, 10_000);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("big"))
        .unwrap();
    file.write_all_at(&payload, offset).unwrap();
    // A write across the 4 GiB boundary, where 32-bit offsets would wrap.
    file.write_all_at(b"boundary", 4 * GIB - 4).unwrap();
    drop(file);
    let check = |m: &Mounted| {
        let file = File::open(m.path("big")).unwrap();
        assert_eq!(
            file.metadata().unwrap().len(),
            offset + payload.len() as u64
        );
        assert_eq!(read_at(&file, offset, 10_000), payload);
        assert_eq!(read_at(&file, 0, 8192), vec![0; 8192]);
        assert_eq!(read_at(&file, 4 * GIB - 4, 8), b"boundary");
        assert_eq!(read_at(&file, 4 * GIB - 100, 96), vec![0; 96]);
        assert_eq!(read_at(&file, 4 * GIB + 4, 5000), vec![0; 5000]);
        let mut expected = vec![0; 100];
        expected.extend_from_slice(&payload[..100]);
        assert_eq!(read_at(&file, offset - 100, 200), expected);
        assert_eq!(read_at(&file, offset + 9_990, 100), &payload[9_990..]);
        assert!(file.metadata().unwrap().blocks() < 128);
    };
    check(&m);
    m.remount();
    check(&m);
}

// ---------------------------------------------------------------------------------------
// setattr

#[test]
fn chmod_sets_permission_bits() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let file = dir.join("file");
        fs::write(&file, b"x").unwrap();
        fs::create_dir(dir.join("dir")).unwrap();
        let mut seen = Vec::new();
        for mode in [0o600, 0o640, 0o755, 0o4755, 0o2750, 0o000, 0o777] {
            set_mode(&file, mode);
            seen.push(format!("file {:o}", fs::metadata(&file).unwrap().mode()));
        }
        for mode in [0o1777, 0o700, 0o2755] {
            set_mode(&dir.join("dir"), mode);
            seen.push(format!(
                "dir {:o}",
                fs::metadata(dir.join("dir")).unwrap().mode()
            ));
        }
        // fchmod through an open handle.
        let handle = File::open(&file).unwrap();
        handle
            .set_permissions(fs::Permissions::from_mode(0o604))
            .unwrap();
        seen.push(format!("fchmod {:o}", fs::metadata(&file).unwrap().mode()));
        seen
    });
}

#[test]
fn chown_sets_arbitrary_owner_and_group() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let owners = |dir: &Path| {
        ["file", "dir", "link"].map(|name| {
            let meta = fs::symlink_metadata(dir.join(name)).unwrap();
            (meta.uid(), meta.gid(), meta.mode())
        })
    };
    let seen = same_as_local(&env, &m, |dir| {
        let file = dir.join("file");
        fs::write(&file, b"x").unwrap();
        fs::create_dir(dir.join("dir")).unwrap();
        symlink("file", dir.join("link")).unwrap();
        let mut seen = Vec::new();
        std::os::unix::fs::chown(&file, Some(1234), Some(5678)).unwrap();
        seen.push(owners(dir));
        std::os::unix::fs::chown(&file, None, Some(42)).unwrap();
        seen.push(owners(dir));
        std::os::unix::fs::fchown(File::open(&file).unwrap(), Some(7), Some(8)).unwrap();
        std::os::unix::fs::chown(dir.join("dir"), Some(1000), Some(1000)).unwrap();
        // lchown changes the link, not its target.
        std::os::unix::fs::lchown(dir.join("link"), Some(1111), Some(2222)).unwrap();
        seen.push(owners(dir));
        // A change of owner clears set-user-ID, as it would for any other file.
        set_mode(&file, 0o4755);
        std::os::unix::fs::chown(&file, Some(99), None).unwrap();
        seen.push(owners(dir));
        seen
    });
    assert_eq!(seen[0][0].0, 1234);
    assert_eq!(seen[0][0].1, 5678);
    m.remount();
    assert_eq!(owners(&m.mountpoint), seen[3], "owners after remount");
}

#[test]
fn utimens_sets_access_and_modification_times() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let times = |path: &Path| {
        let meta = fs::symlink_metadata(path).unwrap();
        (
            meta.atime(),
            meta.atime_nsec(),
            meta.mtime(),
            meta.mtime_nsec(),
        )
    };
    let seen = same_as_local(&env, &m, |dir| {
        let file = dir.join("file");
        fs::write(&file, b"x").unwrap();
        fs::create_dir(dir.join("dir")).unwrap();
        symlink("file", dir.join("link")).unwrap();
        let mut seen = Vec::new();
        let (a, b) = (
            timespec(1_000_000_000, 123_456_789),
            timespec(1_500_000_000, 987_654_321),
        );
        utimensat(&file, a, b, 0).unwrap();
        seen.push(times(&file));
        // UTIME_OMIT keeps the access time.
        utimensat(&file, OMIT, timespec(2_000_000_000, 500_000_000), 0).unwrap();
        seen.push(times(&file));
        // Before 1970.
        utimensat(&file, OMIT, timespec(-31_536_000, 250_000_000), 0).unwrap();
        seen.push(times(&file));
        // futimens through a handle.
        let modified = SystemTime::UNIX_EPOCH + Duration::new(1_234_567_890, 1000);
        let handle = OpenOptions::new().write(true).open(&file).unwrap();
        handle
            .set_times(fs::FileTimes::new().set_modified(modified))
            .unwrap();
        seen.push(times(&file));
        utimensat(&dir.join("dir"), a, b, 0).unwrap();
        seen.push(times(&dir.join("dir")));
        utimensat(&dir.join("link"), b, a, libc::AT_SYMLINK_NOFOLLOW).unwrap();
        seen.push(times(&dir.join("link")));
        seen.push(times(&file));
        seen
    });
    assert_eq!(
        seen[0],
        (1_000_000_000, 123_456_789, 1_500_000_000, 987_654_321)
    );

    let file = m.path("file");
    let now = timespec(0, libc::UTIME_NOW);
    let before = SystemTime::now() - Duration::from_secs(2);
    utimensat(&file, now, now, 0).unwrap();
    let meta = fs::metadata(&file).unwrap();
    for time in [meta.accessed().unwrap(), meta.modified().unwrap()] {
        assert!(time >= before && time <= SystemTime::now() + Duration::from_secs(2));
    }
}

#[test]
fn truncate_shrinks_and_extends_with_zeros() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let path = dir.join("file");
        fs::write(&path, data(1, 10_000)).unwrap();
        let handle = OpenOptions::new().write(true).open(&path).unwrap();
        let mut seen = Vec::new();
        for (i, len) in [5000, 20_000, 4096, 4097, 1, 0, 8193, 3 * 4096, 12_289]
            .into_iter()
            .enumerate()
        {
            // Alternately ftruncate on a handle and truncate by path.
            if i % 2 == 0 {
                handle.set_len(len).unwrap();
            } else {
                truncate(&path, len).unwrap();
            }
            seen.push(format!("{len}: {:?}", contents(&path)));
            handle.write_all_at(b"tail", len.saturating_sub(2)).unwrap();
            seen.push(format!("written: {:?}", contents(&path)));
        }
        seen
    });
}

#[test]
fn truncate_while_another_handle_reads() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let path = dir.join("file");
        fs::write(&path, data(1, 12_000)).unwrap();
        let reader = File::open(&path).unwrap();
        let mut seen = vec![format!("{:?}", Bytes(read_at(&reader, 0, 20_000)))];
        truncate(&path, 3000).unwrap();
        seen.push(format!(
            "{} {:?}",
            reader.metadata().unwrap().len(),
            Bytes(read_at(&reader, 0, 20_000))
        ));
        let writer = OpenOptions::new().write(true).open(&path).unwrap();
        writer.set_len(9000).unwrap();
        seen.push(format!("{:?}", Bytes(read_at(&reader, 0, 20_000))));
        writer.write_all_at(b"tail", 8000).unwrap();
        seen.push(format!("{:?}", Bytes(read_at(&reader, 0, 20_000))));
        // SEEK_END sees a size another handle changed.
        writer.write_all_at(b"longer", 15_000).unwrap();
        let mut reader = reader;
        seen.push(format!("end {:?}", reader.seek(SeekFrom::End(0)).unwrap()));
        seen
    });
}

#[test]
fn sizes_past_the_file_size_limit_fail_like_a_local_file() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let path = dir.join("file");
        fs::write(&path, b"small").unwrap();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut seen = Vec::new();
        for size in [1 << 50, i64::MAX as u64] {
            seen.push(format!(
                "{size}: truncate {:?} ftruncate {:?} write {:?} fallocate {:?}",
                os(truncate(&path, size)),
                os(file.set_len(size)),
                os(file.write_all_at(b"x", size - 1)),
                os(fallocate(&file, 0, size - 1, 1)),
            ));
        }
        seen.push(format!("{:?}", contents(&path)));
        seen
    });
}

#[test]
fn changes_update_modification_and_change_times() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let past = timespec(1_000_000_000, 0);
    // Whether each time moved on from a second set far in the past.
    let moved = |path: &Path| {
        let meta = fs::symlink_metadata(path).unwrap();
        let far_future = SystemTime::now() + Duration::from_secs(60);
        (
            meta.mtime() > 1_000_000_000 && meta.modified().unwrap() < far_future,
            meta.ctime() > 1_000_000_000,
        )
    };
    same_as_local(&env, &m, |dir| {
        let (file, sub) = (dir.join("file"), dir.join("sub"));
        fs::write(&file, b"x").unwrap();
        fs::create_dir(&sub).unwrap();
        let mut seen = Vec::new();
        let mut reset_and = |what: &str, change: &dyn Fn()| {
            utimensat(&file, past, past, 0).unwrap();
            utimensat(&sub, past, past, 0).unwrap();
            change();
            seen.push(format!(
                "{what}: file {:?} dir {:?}",
                moved(&file),
                moved(&sub)
            ));
        };
        reset_and("nothing", &|| {});
        reset_and("write", &|| fs::write(&file, b"rewritten").unwrap());
        reset_and("truncate", &|| truncate(&file, 2).unwrap());
        reset_and("create in dir", &|| fs::write(sub.join("a"), b"a").unwrap());
        reset_and("rename in dir", &|| {
            fs::rename(sub.join("a"), sub.join("b")).unwrap()
        });
        reset_and("unlink in dir", &|| fs::remove_file(sub.join("b")).unwrap());
        seen
    });
}

// ---------------------------------------------------------------------------------------
// flush, fsync

#[test]
fn flush_and_fsync_succeed_on_files_and_directories() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    fs::create_dir(m.path("dir")).unwrap();
    let mut file = File::create(m.path("dir/file")).unwrap();
    file.write_all(&data(1, 10_000)).unwrap();
    file.flush().unwrap();
    file.sync_data().unwrap();
    file.write_all(b"more").unwrap();
    file.sync_all().unwrap();
    // close(2) sends FLUSH; its result is the close's.
    let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
    // SAFETY: fd was just released by its File, so it is closed once.
    cvt(unsafe { libc::close(fd) }).expect("close");
    // fsync is allowed on a read-only handle.
    File::open(m.path("dir/file")).unwrap().sync_all().unwrap();
    for dir in [m.path("dir"), m.mountpoint.clone()] {
        let handle = File::open(&dir).unwrap();
        handle.sync_all().unwrap();
        handle.sync_data().unwrap();
    }
    m.remount();
    let mut expected = data(1, 10_000);
    expected.extend_from_slice(b"more");
    assert_eq!(contents(&m.path("dir/file")), Ok(Bytes(expected)));
}

// ---------------------------------------------------------------------------------------
// fallocate

enum Step {
    Fallocate(i32, u64, u64),
    Write(u64, u64),
    Truncate(u64),
}

/// Applies `steps` to a file that starts with `initial` bytes; what each step returned
/// and the file's length and contents after it.
fn fallocate_steps(dir: &Path, initial: u64, steps: &[Step]) -> Vec<String> {
    let path = dir.join("file");
    fs::write(&path, data(1, initial)).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut seen = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let result = match *step {
            Step::Fallocate(mode, offset, len) => os(fallocate(&file, mode, offset, len)),
            Step::Write(offset, len) => os(file.write_all_at(&data(100 + i as u64, len), offset)),
            Step::Truncate(len) => os(file.set_len(len)),
        };
        seen.push(format!(
            "step {i}: {result:?} len {} {:?}",
            file.metadata().unwrap().len(),
            contents(&path)
        ));
    }
    seen
}

#[test]
fn fallocate_mode_zero_extends_and_keeps_contents() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    use Step::*;
    same_as_local(&env, &m, |dir| {
        let mut seen = fallocate_steps(
            dir,
            10_000,
            &[
                Fallocate(0, 0, 100),
                Fallocate(0, 5000, 20_000),
                Fallocate(0, 30_000, 1),
                Write(29_000, 5000),
                Fallocate(0, 4095, 2),
                // Growing to a last unit shorter than an AES block.
                Fallocate(0, 10 * UNIT, 3),
                Write(10 * UNIT + 1, 1),
            ],
        );
        // Preallocation really allocates.
        let empty = File::create(dir.join("empty")).unwrap();
        fallocate(&empty, 0, 0, MIB).unwrap();
        let meta = empty.metadata().unwrap();
        seen.push(format!(
            "empty: len {} dense {} {:?}",
            meta.len(),
            meta.blocks() >= 2048,
            contents(&dir.join("empty"))
        ));
        seen
    });
}

#[test]
fn fallocate_keep_size_keeps_size_and_contents() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    use Step::*;
    let k = libc::FALLOC_FL_KEEP_SIZE;
    same_as_local(&env, &m, |dir| {
        fallocate_steps(
            dir,
            10_000,
            &[
                Fallocate(k, 8000, 100_000),
                Fallocate(k, 0, 4096),
                // Extending over the preallocated range reads zeros up to the new data.
                Write(50_000, 100),
                Fallocate(k, 50_050, 3),
            ],
        )
    });
}

#[test]
fn fallocate_punch_hole_zeroes_exactly_the_range() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    use Step::*;
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    same_as_local(&env, &m, |dir| {
        fallocate_steps(
            dir,
            5 * UNIT + 100,
            &[
                Fallocate(punch, 100, 50),
                Fallocate(punch, 4000, 200),
                Fallocate(punch, 2 * UNIT, UNIT),
                Fallocate(punch, 3 * UNIT - 7, UNIT + 9),
                Fallocate(punch, 5 * UNIT + 90, 10),
                Fallocate(punch, 5 * UNIT + 50, 10_000),
                Fallocate(punch, 1, 0),
                // Hole punching must keep the size.
                Fallocate(libc::FALLOC_FL_PUNCH_HOLE, 0, 10),
                Write(3, 5),
                // A last unit shorter than an AES block, punched to the end of the file.
                Truncate(6 * UNIT + 7),
                Write(6 * UNIT, 7),
                Fallocate(punch, 6 * UNIT + 2, 100),
                Write(6 * UNIT + 1, 3),
                Fallocate(punch, 5 * UNIT, UNIT + 7),
            ],
        )
    });

    // Whole punched units free their backing blocks.
    let path = m.path("dense");
    fs::write(&path, data(2, 2 * MIB)).unwrap();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let before = file.metadata().unwrap().blocks();
    fallocate(&file, punch, MIB / 2, MIB).unwrap();
    let after = file.metadata().unwrap().blocks();
    assert!(after + 1800 <= before, "blocks {before} -> {after}");
}

#[test]
fn fallocate_zero_range_zeroes_and_may_extend() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    use Step::*;
    let zero = libc::FALLOC_FL_ZERO_RANGE;
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    same_as_local(&env, &m, |dir| {
        fallocate_steps(
            dir,
            5 * UNIT + 100,
            &[
                Fallocate(zero, 100, 50),
                Fallocate(zero, 4000, 5000),
                Fallocate(zero, 2 * UNIT, 2 * UNIT),
                Fallocate(zero, 5 * UNIT + 50, 200),
                Fallocate(zero | keep, 5 * UNIT + 100, 5000),
                Write(5 * UNIT + 140, 10),
                // A last unit shorter than an AES block, zeroed to the end and extended.
                Truncate(6 * UNIT + 3),
                Write(6 * UNIT, 3),
                Fallocate(zero, 6 * UNIT + 1, 2),
                Fallocate(zero, 6 * UNIT + 3, 5),
                Write(6 * UNIT + 7, 1),
            ],
        )
    });
}

#[test]
fn fallocate_collapse_and_insert_range_are_not_supported() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let path = m.path("file");
    let original = data(1, 8 * UNIT);
    fs::write(&path, &original).unwrap();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    for mode in [libc::FALLOC_FL_COLLAPSE_RANGE, libc::FALLOC_FL_INSERT_RANGE] {
        assert_errno(fallocate(&file, mode, UNIT, UNIT), libc::EOPNOTSUPP);
    }
    assert_eq!(contents(&path), Ok(Bytes(original)));
}

// ---------------------------------------------------------------------------------------
// rename

#[test]
fn rename_replaces_the_target() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let (from, to) = (dir.join("from"), dir.join("to"));
        fs::write(&from, b"new").unwrap();
        fs::write(&to, b"old").unwrap();
        let ino = fs::metadata(&from).unwrap().ino();
        let kept_open = File::open(&to).unwrap();
        fs::rename(&from, &to).unwrap();
        let mut seen = vec![format!(
            "{:?} {:?} same inode {} old still open {:?}",
            contents(&from),
            contents(&to),
            fs::metadata(&to).unwrap().ino() == ino,
            Bytes(read_at(&kept_open, 0, 10))
        )];
        for name in ["empty", "full", "full/child", "file"] {
            if name.starts_with("file") {
                fs::write(dir.join(name), b"f").unwrap();
            } else {
                fs::create_dir(dir.join(name)).unwrap();
            }
        }
        fs::create_dir(dir.join("moving")).unwrap();
        let rename = |a: &str, b: &str| os(fs::rename(dir.join(a), dir.join(b)));
        seen.push(format!(
            "dir onto non-empty dir {:?}",
            rename("moving", "full")
        ));
        seen.push(format!("dir onto file {:?}", rename("moving", "file")));
        seen.push(format!("file onto dir {:?}", rename("file", "empty")));
        seen.push(format!(
            "dir onto empty dir {:?}",
            rename("moving", "empty")
        ));
        seen.push(format!("missing {:?}", rename("missing", "other")));
        seen.push(format!("onto itself {:?}", rename("file", "file")));
        seen.push(format!("{:?}", names(dir)));
        seen
    });

    // No reader ever sees the target missing or half-written while it is replaced.
    let versions: Vec<Vec<u8>> = (0..200).map(|v| data(v, 5000)).collect();
    let target = m.path("target");
    fs::write(&target, &versions[0]).unwrap();
    thread::scope(|s| {
        let replacer = s.spawn(|| {
            for (i, version) in versions.iter().enumerate().skip(1) {
                let tmp = m.path(&format!("tmp-{i}"));
                fs::write(&tmp, version).unwrap();
                fs::rename(&tmp, &target).unwrap();
            }
        });
        let mut reads = 0;
        while !replacer.is_finished() || reads == 0 {
            let seen = fs::read(&target).expect("the target exists throughout");
            assert!(versions.contains(&seen), "a read saw a mix of versions");
            reads += 1;
        }
        replacer.join().unwrap();
    });
    assert_eq!(fs::read(&target).unwrap(), versions[199]);
}

#[test]
fn renameat2_noreplace_and_exchange() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let path = |name: &str| dir.join(name);
        fs::write(path("a"), b"contents of a").unwrap();
        fs::write(path("b"), b"contents of b").unwrap();
        fs::create_dir(path("dir")).unwrap();
        fs::write(path("dir/inside"), b"inside").unwrap();
        let ino = |name: &str| fs::symlink_metadata(path(name)).unwrap().ino();
        let (ino_a, ino_dir) = (ino("a"), ino("dir"));
        let mut seen = Vec::new();
        let noreplace = os(renameat2(&path("a"), &path("b"), libc::RENAME_NOREPLACE));
        seen.push(format!(
            "noreplace onto b {noreplace:?} {:?} {:?}",
            contents(&path("a")),
            contents(&path("b"))
        ));
        let free = os(renameat2(&path("a"), &path("c"), libc::RENAME_NOREPLACE));
        seen.push(format!("noreplace to free name {free:?} {:?}", names(dir)));
        let exchange = os(renameat2(&path("c"), &path("b"), libc::RENAME_EXCHANGE));
        seen.push(format!(
            "exchange {exchange:?} b {:?} c {:?} inode moved {}",
            contents(&path("b")),
            contents(&path("c")),
            ino("b") == ino_a
        ));
        let with_dir = os(renameat2(&path("b"), &path("dir"), libc::RENAME_EXCHANGE));
        seen.push(format!(
            "exchange with dir {with_dir:?} b is dir {} dir {:?} {:?} dir inode moved {}",
            path("b").is_dir(),
            contents(&path("dir")),
            contents(&path("b/inside")),
            ino("b") == ino_dir
        ));
        let missing = os(renameat2(
            &path("c"),
            &path("missing"),
            libc::RENAME_EXCHANGE,
        ));
        seen.push(format!("exchange with missing {missing:?}"));
        let both = os(renameat2(
            &path("c"),
            &path("b"),
            libc::RENAME_EXCHANGE | libc::RENAME_NOREPLACE,
        ));
        seen.push(format!("both flags {both:?} {:?}", names(dir)));
        seen
    });
}

#[test]
fn rename_moves_directories_with_contents_across_directories() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let tree = |dir: &Path| {
        let mut seen = Vec::new();
        let mut stack = vec![PathBuf::new()];
        while let Some(rel) = stack.pop() {
            for name in names(&dir.join(&rel)) {
                let rel = rel.join(name);
                let meta = fs::symlink_metadata(dir.join(&rel)).unwrap();
                if meta.is_dir() {
                    stack.push(rel.clone());
                    seen.push(format!("{} dir nlink {}", rel.display(), meta.nlink()));
                } else {
                    seen.push(format!("{} {:?}", rel.display(), contents(&dir.join(&rel))));
                }
            }
        }
        seen.sort();
        seen
    };
    let seen = same_as_local(&env, &m, |dir| {
        let path = |name: &str| dir.join(name);
        for d in ["a", "a/b", "a/b/c", "x", "x/y"] {
            fs::create_dir(path(d)).unwrap();
        }
        fs::write(path("a/b/file"), b"one").unwrap();
        fs::write(path("a/b/c/deep"), data(3, 9000)).unwrap();
        symlink("deep", path("a/b/c/link")).unwrap();
        let ino = fs::metadata(path("a/b/c/deep")).unwrap().ino();
        let mut seen = Vec::new();
        seen.push(format!(
            "into own child {:?}",
            os(fs::rename(path("a"), path("a/b/c/a")))
        ));
        fs::rename(path("a/b"), path("x/y/moved")).unwrap();
        fs::rename(path("x/y/moved/file"), path("a/file")).unwrap();
        fs::rename(path("x/y"), path("y")).unwrap();
        seen.push(format!(
            "inode kept {} link {:?}",
            fs::metadata(path("y/moved/c/deep")).unwrap().ino() == ino,
            contents(&path("y/moved/c/link"))
        ));
        // The moved directory stays usable under its new name.
        fs::write(path("y/moved/c/new"), b"new").unwrap();
        seen.extend(tree(dir));
        seen
    });
    m.remount();
    assert_eq!(tree(&m.mountpoint), seen[2..]);
}

#[test]
fn rename_of_long_names_keeps_side_files_in_step() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let long = |n: u32| long_name(&format!("long{n}"));
    let seen = same_as_local(&env, &m, |dir| {
        let path = |name: &str| dir.join(name);
        let listing = || {
            let mut all = names(dir);
            all.extend(
                names(&path("sub"))
                    .into_iter()
                    .map(|n| Path::new("sub").join(n).into()),
            );
            format!("{all:?}")
        };
        fs::create_dir(path("sub")).unwrap();
        let mut seen = Vec::new();
        fs::write(path(&long(1)), b"first").unwrap();
        fs::rename(path(&long(1)), path(&long(2))).unwrap();
        seen.push(listing());
        fs::rename(path(&long(2)), path("short")).unwrap();
        seen.push(listing());
        fs::rename(path("short"), path(&long(3))).unwrap();
        seen.push(listing());
        fs::rename(path(&long(3)), path(&format!("sub/{}", long(4)))).unwrap();
        seen.push(listing());
        // Replacing an existing long name.
        fs::write(path(&long(5)), b"fifth").unwrap();
        fs::rename(path(&long(5)), path(&format!("sub/{}", long(4)))).unwrap();
        seen.push(format!(
            "{} {:?}",
            listing(),
            contents(&path(&format!("sub/{}", long(4))))
        ));
        fs::write(path(&long(6)), b"sixth").unwrap();
        fs::write(path(&long(7)), b"seventh").unwrap();
        let refused = os(renameat2(
            &path(&long(6)),
            &path(&long(7)),
            libc::RENAME_NOREPLACE,
        ));
        let swapped = os(renameat2(
            &path(&long(6)),
            &path(&long(7)),
            libc::RENAME_EXCHANGE,
        ));
        seen.push(format!(
            "{refused:?} {swapped:?} {} {:?} {:?}",
            listing(),
            contents(&path(&long(6))),
            contents(&path(&long(7)))
        ));
        // A long-named directory with contents, renamed long to long and into `sub`.
        fs::create_dir(path(&long(8))).unwrap();
        fs::write(path(&format!("{}/{}", long(8), long(80))), b"child").unwrap();
        fs::rename(path(&long(8)), path(&format!("sub/{}", long(9)))).unwrap();
        seen.push(format!(
            "{} {:?}",
            listing(),
            contents(&path(&format!("sub/{}/{}", long(9), long(80))))
        ));
        fs::rename(path(&long(7)), path(&long(7))).unwrap();
        fs::remove_file(path(&long(6))).unwrap();
        // The same long name moved to another directory: the old directory empties.
        fs::create_dir(path("other")).unwrap();
        fs::write(path(&format!("other/{}", long(11))), b"moved").unwrap();
        fs::rename(path(&format!("other/{}", long(11))), path(&long(11))).unwrap();
        seen.push(format!("rmdir {:?}", os(fs::remove_dir(path("other")))));
        seen.push(listing());
        seen
    });
    assert_side_files_match(&m.tree());
    m.remount();
    let mut after = names(&m.mountpoint);
    after.extend(
        names(&m.path("sub"))
            .into_iter()
            .map(|n| Path::new("sub").join(n).into()),
    );
    assert_eq!(format!("{after:?}"), seen[seen.len() - 1]);
}

// ---------------------------------------------------------------------------------------
// unlink, mkdir, rmdir, readdir

#[test]
fn unlink_removes_the_name_but_not_open_data() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let path = dir.join("file");
        fs::write(&path, data(1, 9000)).unwrap();
        let handle = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        fs::remove_file(&path).unwrap();
        let mut seen = vec![format!("stat {:?}", os(fs::metadata(&path).map(drop)))];
        // An unlinked file stays usable through a handle opened before.
        handle.write_all_at(b"still writable", 4090).unwrap();
        seen.push(format!(
            "nlink {} {:?}",
            handle.metadata().unwrap().nlink(),
            Bytes(read_at(&handle, 0, 20_000))
        ));
        seen.push(format!("again {:?}", os(fs::remove_file(&path))));
        fs::create_dir(dir.join("dir")).unwrap();
        seen.push(format!("dir {:?}", os(fs::remove_file(dir.join("dir")))));
        fs::write(dir.join("target"), b"t").unwrap();
        symlink("target", dir.join("link")).unwrap();
        fs::remove_file(dir.join("link")).unwrap();
        seen.push(format!(
            "{:?} {:?}",
            names(dir),
            contents(&dir.join("target"))
        ));
        seen
    });
}

#[test]
fn mkdir_creates_directories() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let path = |name: &str| dir.join(name);
        let mkdir = |name: &str, mode: u32| os(fs::DirBuilder::new().mode(mode).create(path(name)));
        let mut seen = vec![
            format!("{:?}", mkdir("a", 0o755)),
            format!("{:?}", mkdir("a/b", 0o700)),
            format!("{:?}", mkdir("a/b/c", 0o2775)),
            format!("exists {:?}", mkdir("a", 0o755)),
            format!("missing parent {:?}", mkdir("none/x", 0o755)),
        ];
        fs::write(path("file"), b"x").unwrap();
        seen.push(format!("over file {:?}", mkdir("file", 0o755)));
        seen.push(format!("under file {:?}", mkdir("file/x", 0o755)));
        for name in ["a", "a/b", "a/b/c"] {
            let meta = fs::metadata(path(name)).unwrap();
            seen.push(format!(
                "{name} mode {:o} nlink {} empty {}",
                meta.mode(),
                meta.nlink(),
                names(&path(name)).is_empty()
            ));
        }
        seen
    });
}

/// Runs `work` on a thread whose file-system group id is `gid`, as a process of that
/// group would create files. (setfsgid is per thread; the mount still admits the thread
/// because its real and effective ids stay root's.)
fn as_fs_group<T: Send>(gid: u32, work: impl FnOnce() -> T + Send) -> T {
    thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: changes only this thread's fsgid, which dies with the thread.
            unsafe { libc::setfsgid(gid) };
            // SAFETY: an invalid id changes nothing and returns the current one.
            assert_eq!(unsafe { libc::setfsgid(u32::MAX) } as u32, gid);
            work()
        })
        .join()
        .unwrap()
    })
}

#[test]
fn new_objects_belong_to_the_callers_group_or_a_setgid_parent() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let path = |name: &str| dir.join(name);
        fs::create_dir(path("plain")).unwrap();
        fs::create_dir(path("setgid")).unwrap();
        std::os::unix::fs::chown(path("setgid"), None, Some(4321)).unwrap();
        set_mode(&path("setgid"), 0o2777);
        as_fs_group(5678, || {
            for parent in ["plain", "setgid"] {
                let path = |name: &str| dir.join(parent).join(name);
                fs::write(path("file"), b"x").unwrap();
                fs::create_dir(path("dir")).unwrap();
                symlink("file", path("link")).unwrap();
                mkfifo(&path("fifo"), 0o600).unwrap();
            }
        });
        let mut seen = Vec::new();
        for parent in ["plain", "setgid"] {
            for name in ["file", "dir", "link", "fifo"] {
                let meta = fs::symlink_metadata(dir.join(parent).join(name)).unwrap();
                seen.push(format!(
                    "{parent}/{name}: {}:{} mode {:o}",
                    meta.uid(),
                    meta.gid(),
                    meta.mode()
                ));
            }
        }
        seen
    });
}

#[test]
fn rmdir_removes_only_empty_directories() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let path = |name: &str| dir.join(name);
        let rmdir = |name: &str| os(fs::remove_dir(path(name)));
        fs::create_dir_all(path("full/sub")).unwrap();
        fs::create_dir(path("long")).unwrap();
        fs::write(path(&format!("long/{}", long_name("x"))), b"x").unwrap();
        fs::write(path("file"), b"x").unwrap();
        let mut seen = vec![
            format!("non-empty {:?}", rmdir("full")),
            format!("file {:?}", rmdir("file")),
            format!("missing {:?}", rmdir("missing")),
            format!("dot {:?}", rmdir("full/sub/.")),
            format!("long name inside {:?}", rmdir("long")),
        ];
        fs::remove_file(path(&format!("long/{}", long_name("x")))).unwrap();
        seen.push(format!("emptied {:?}", rmdir("long")));
        seen.push(format!(
            "sub {:?} full {:?}",
            rmdir("full/sub"),
            rmdir("full")
        ));
        seen.push(format!("{:?}", names(dir)));
        seen
    });
    assert_side_files_match(&m.tree());
    m.remount();
    assert_eq!(names(&m.mountpoint), ["file"]);
}

#[test]
fn readdir_lists_600_entries_once_each() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let dir = m.path("many");
    fs::create_dir(&dir).unwrap();
    let mut expected = BTreeSet::new();
    for i in 0..600 {
        let name = match i % 5 {
            0 => long_name(&format!("entry{i}")),
            _ => format!("entry-{i:03}"),
        };
        if i % 7 == 0 {
            fs::create_dir(dir.join(&name)).unwrap();
        } else {
            fs::write(dir.join(&name), i.to_string()).unwrap();
        }
        expected.insert(OsString::from(name));
    }
    let check = |expected: &BTreeSet<OsString>| {
        let mut listed = Vec::new();
        for entry in fs::read_dir(&dir).unwrap() {
            let entry = entry.unwrap();
            let meta = fs::symlink_metadata(entry.path()).unwrap();
            assert_eq!(entry.ino(), meta.ino(), "{:?}", entry.file_name());
            assert_eq!(entry.file_type().unwrap().is_dir(), meta.is_dir());
            listed.push(entry.file_name());
        }
        let unique: BTreeSet<OsString> = listed.iter().cloned().collect();
        assert_eq!(unique.len(), listed.len(), "duplicate entries");
        assert_eq!(&unique, expected);
    };
    check(&expected);
    let removed: Vec<OsString> = expected.iter().step_by(3).cloned().collect();
    for name in removed {
        let path = dir.join(&name);
        if path.is_dir() {
            fs::remove_dir(&path).unwrap();
        } else {
            fs::remove_file(&path).unwrap();
        }
        expected.remove(&name);
    }
    check(&expected);
    assert_side_files_match(&m.tree());
}

#[test]
fn non_utf8_names_round_trip() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let name = |bytes: &[u8]| dir.join(OsStr::from_bytes(bytes));
        fs::write(name(b"caf\xe9"), b"latin-1").unwrap();
        fs::create_dir(name(b"\xff\xfe dir")).unwrap();
        fs::write(name(b"\xff\xfe dir/\x80\x81"), b"inner").unwrap();
        fs::rename(name(b"caf\xe9"), name(b"\xff\xfe dir/caf\xc3\xa9 \x01\x7f")).unwrap();
        let mut seen = vec![format!("{:?}", names(dir))];
        for entry in names(&name(b"\xff\xfe dir")) {
            let path = name(b"\xff\xfe dir").join(&entry);
            seen.push(format!("{:?} {:?}", entry.as_bytes(), contents(&path)));
        }
        seen
    });
}

#[test]
fn names_up_to_255_bytes_work_and_longer_fail() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let ascii = "n".repeat(255);
        // 127 two-byte characters and one more byte.
        let multibyte = format!("{}x", "é".repeat(127));
        let too_long = "n".repeat(256);
        let mut seen = Vec::new();
        for name in [&ascii, &multibyte] {
            let path = dir.join(name);
            fs::write(&path, name.as_bytes()).unwrap();
            fs::create_dir(dir.join(format!("{}d", &name[..name.len() - 1]))).unwrap();
            seen.push(format!(
                "{:?} len {}",
                contents(&path).map(|b| b.0.len()),
                name.len()
            ));
        }
        seen.push(format!("{:?}", names(dir)));
        let path = dir.join(&too_long);
        seen.push(format!(
            "create {:?} mkdir {:?} stat {:?} symlink {:?} link {:?} rename {:?}",
            os(File::create(&path).map(drop)),
            os(fs::create_dir(&path)),
            os(fs::metadata(&path).map(drop)),
            os(symlink("x", &path)),
            os(fs::hard_link(dir.join(&ascii), &path)),
            os(fs::rename(dir.join(&ascii), &path)),
        ));
        fs::rename(dir.join(&ascii), dir.join(&multibyte)).unwrap();
        fs::remove_file(dir.join(&multibyte)).unwrap();
        seen.push(format!("{:?}", names(dir)));
        seen
    });
    assert_side_files_match(&m.tree());
}

// ---------------------------------------------------------------------------------------
// symlink, readlink, link, inode numbers

#[test]
fn symlink_targets_round_trip() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let mut targets: Vec<Vec<u8>> = [
        &b"file"[..],
        b"../elsewhere",
        b"/absolute/path/nowhere",
        b"dir/with/../dots/",
        b"spaces and\ttabs",
        b"non-utf8 \xff\xfe",
        b"x",
    ]
    .map(<[u8]>::to_vec)
    .into();
    targets.push(b"a/".repeat(1500));
    let longest = xtsfs::crypto::names::ENCRYPTED_TARGET_MAX;
    targets.push(b"L".repeat(longest));
    same_as_local(&env, &m, |dir| {
        fs::write(dir.join("file"), b"through the link").unwrap();
        fs::create_dir(dir.join("dir")).unwrap();
        fs::write(dir.join("dir/inner"), b"inner").unwrap();
        let mut seen = Vec::new();
        for (i, target) in targets.iter().enumerate() {
            let link = dir.join(format!("link-{i}"));
            symlink(OsStr::from_bytes(target), &link).unwrap();
            let meta = fs::symlink_metadata(&link).unwrap();
            let read = fs::read_link(&link).unwrap();
            seen.push(format!(
                "{i}: round trip {} symlink {} len {}",
                read.as_os_str().as_bytes() == target.as_slice(),
                meta.file_type().is_symlink(),
                meta.len()
            ));
        }
        symlink("dir", dir.join("dir-link")).unwrap();
        seen.push(format!(
            "followed {:?} {:?} {:?}",
            contents(&dir.join("link-0")),
            contents(&dir.join("dir-link/inner")),
            names(&dir.join("dir-link"))
        ));
        seen
    });
    // Encrypted targets are longer than the plaintext; the documented limit is refused
    // cleanly rather than passed on to the backing file system.
    let too_long = OsString::from_vec(b"L".repeat(longest + 1));
    assert_errno(symlink(&too_long, m.path("too-long")), libc::ENAMETOOLONG);
}

#[test]
fn hard_links_share_inode_and_data() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let seen = same_as_local(&env, &m, |dir| {
        let path = |name: &str| dir.join(name);
        fs::create_dir(path("sub")).unwrap();
        fs::write(path("a"), b"shared data").unwrap();
        fs::hard_link(path("a"), path("sub/b")).unwrap();
        let (a, b) = (
            fs::metadata(path("a")).unwrap(),
            fs::metadata(path("sub/b")).unwrap(),
        );
        let mut seen = vec![format!(
            "same ino {} nlink {} {}",
            a.ino() == b.ino(),
            a.nlink(),
            b.nlink()
        )];
        OpenOptions::new()
            .write(true)
            .open(path("sub/b"))
            .unwrap()
            .write_all_at(b"SHARED", 0)
            .unwrap();
        seen.push(format!("{:?}", contents(&path("a"))));
        fs::hard_link(path("a"), path(&long_name("link"))).unwrap();
        seen.push(format!(
            "nlink {}",
            fs::metadata(path("a")).unwrap().nlink()
        ));
        // link(2) links a symlink itself, not its target.
        symlink("a", path("symlink")).unwrap();
        fs::hard_link(path("symlink"), path("symlink-2")).unwrap();
        let linked = fs::symlink_metadata(path("symlink-2")).unwrap();
        seen.push(format!(
            "symlink linked: {} {:?} nlink {}",
            linked.file_type().is_symlink(),
            fs::read_link(path("symlink-2")).unwrap(),
            linked.nlink()
        ));
        fs::remove_file(path("a")).unwrap();
        seen.push(format!(
            "{:?} nlink {} {:?}",
            os(fs::metadata(path("a")).map(drop)),
            fs::metadata(path("sub/b")).unwrap().nlink(),
            contents(&path("sub/b"))
        ));
        seen.push(format!(
            "dir {:?} existing {:?} missing {:?}",
            os(fs::hard_link(path("sub"), path("sub-link"))),
            os(fs::hard_link(path("sub/b"), path(&long_name("link")))),
            os(fs::hard_link(path("a"), path("c")))
        ));
        seen
    });
    assert_eq!(seen[0], "same ino true nlink 2 2");
    assert_side_files_match(&m.tree());
    m.remount();
    let (b, long) = (m.path("sub/b"), m.path(&long_name("link")));
    assert_eq!(
        fs::metadata(&b).unwrap().ino(),
        fs::metadata(&long).unwrap().ino()
    );
    assert_eq!(contents(&long), Ok(Bytes(b"SHARED data".to_vec())));
}

#[test]
fn inode_numbers_are_stable_across_remount() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    fs::create_dir_all(m.path("dir/sub")).unwrap();
    fs::write(m.path("dir/file"), b"x").unwrap();
    fs::write(m.path(&long_name("long")), b"x").unwrap();
    symlink("dir/file", m.path("link")).unwrap();
    fs::hard_link(m.path("dir/file"), m.path("hard")).unwrap();
    mkfifo(&m.path("fifo"), 0o600).unwrap();
    let names = [
        "dir",
        "dir/sub",
        "dir/file",
        "link",
        "hard",
        "fifo",
        &long_name("long"),
    ];
    let inodes = |m: &Mounted| names.map(|name| fs::symlink_metadata(m.path(name)).unwrap().ino());
    let listed = |m: &Mounted| {
        let mut listed: Vec<(OsString, u64)> = fs::read_dir(&m.mountpoint)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| (e.file_name(), e.ino()))
            .collect();
        listed.sort();
        listed
    };
    let (before, listed_before) = (inodes(&m), listed(&m));
    assert_eq!(before[2], before[4], "hard links share an inode");
    m.remount();
    assert_eq!(inodes(&m), before);
    assert_eq!(listed(&m), listed_before);
}

#[test]
fn access_checks_permission_bits() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let access = |name: &str, mode: i32| {
            let path = cpath(&dir.join(name));
            // SAFETY: NUL-terminated path.
            os(cvt(unsafe { libc::access(path.as_ptr(), mode) }))
        };
        fs::write(dir.join("plain"), b"x").unwrap();
        fs::write(dir.join("script"), b"x").unwrap();
        set_mode(&dir.join("script"), 0o700);
        let (r, w, x) = (libc::R_OK, libc::W_OK, libc::X_OK);
        format!(
            "plain rw {:?} x {:?} script x {:?} missing {:?}",
            access("plain", r | w),
            access("plain", x),
            access("script", x),
            access("missing", libc::F_OK)
        )
    });
}

#[test]
fn flock_and_fcntl_locks_exclude_other_handles() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let path = dir.join("locked");
        fs::write(&path, b"x").unwrap();
        let (first, second) = (File::open(&path).unwrap(), File::open(&path).unwrap());
        let flock = |file: &File, op: i32| {
            // SAFETY: a valid fd.
            os(cvt(unsafe { libc::flock(file.as_raw_fd(), op) }))
        };
        let mut seen = vec![
            format!("flock {:?}", flock(&first, libc::LOCK_EX | libc::LOCK_NB)),
            format!(
                "contended {:?}",
                flock(&second, libc::LOCK_EX | libc::LOCK_NB)
            ),
            format!("unlock {:?}", flock(&first, libc::LOCK_UN)),
            format!("after {:?}", flock(&second, libc::LOCK_EX | libc::LOCK_NB)),
        ];
        // Open file description locks conflict between two descriptions in one process.
        let ofd_lock = |file: &File, kind: i32| {
            // SAFETY: an all-zero flock is valid; the fields that matter are set below.
            let mut lock: libc::flock = unsafe { std::mem::zeroed() };
            lock.l_type = kind as i16;
            lock.l_whence = libc::SEEK_SET as i16;
            lock.l_len = 10;
            // SAFETY: a valid fd and flock.
            os(cvt(unsafe {
                libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &lock)
            }))
        };
        seen.push(format!("ofd {:?}", ofd_lock(&first, libc::F_WRLCK)));
        seen.push(format!(
            "ofd contended {:?}",
            ofd_lock(&second, libc::F_RDLCK)
        ));
        seen
    });
}

#[test]
fn copy_file_range_copies_within_and_into_the_mount() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let source = data(1, 3 * MIB + 123);
    fs::write(env.path("outside"), &source).unwrap();
    fs::copy(env.path("outside"), m.path("copied-in")).unwrap();
    fs::copy(m.path("copied-in"), m.path("copied-within")).unwrap();
    fs::copy(m.path("copied-within"), env.path("copied-out")).unwrap();
    for path in [
        m.path("copied-in"),
        m.path("copied-within"),
        env.path("copied-out"),
    ] {
        assert_eq!(
            contents(&path),
            Ok(Bytes(source.clone())),
            "{}",
            path.display()
        );
    }
}

// ---------------------------------------------------------------------------------------
// statfs, mknod, xattrs

#[test]
fn statfs_matches_the_backing_file_system() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let (mounted, backing) = (statvfs(&m.mountpoint), statvfs(&m.tree()));
    assert_eq!(mounted.f_bsize, backing.f_bsize);
    assert_eq!(mounted.f_frsize, backing.f_frsize);
    assert_eq!(mounted.f_blocks, backing.f_blocks);
    assert_eq!(mounted.f_files, backing.f_files);
    assert_eq!(mounted.f_namemax, 255);
}

#[test]
fn mknod_makes_fifos_sockets_and_regular_files() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let fifo = m.path("fifo");
    mkfifo(&fifo, 0o640).unwrap();
    let meta = fs::symlink_metadata(&fifo).unwrap();
    assert!(meta.file_type().is_fifo());
    assert_eq!(meta.mode() & 0o777, 0o640);
    let message = data(9, 256 * 1024);
    let received = within(Duration::from_secs(20), {
        let (fifo, message) = (fifo.clone(), message.clone());
        move || {
            let writer_fifo = fifo.clone();
            let writer = thread::spawn(move || {
                File::options()
                    .write(true)
                    .open(&writer_fifo)
                    .unwrap()
                    .write_all(&message)
                    .unwrap()
            });
            let mut received = Vec::new();
            File::open(&fifo)
                .unwrap()
                .read_to_end(&mut received)
                .unwrap();
            writer.join().unwrap();
            received
        }
    });
    assert_eq!(Bytes(received), Bytes(message));

    let socket = m.path("socket");
    let listener = UnixListener::bind(&socket).unwrap();
    assert!(fs::symlink_metadata(&socket)
        .unwrap()
        .file_type()
        .is_socket());
    let mut client = UnixStream::connect(&socket).unwrap();
    client.write_all(b"ping").unwrap();
    let mut buf = [0u8; 4];
    listener.accept().unwrap().0.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ping");

    let regular = m.path("regular");
    let c = cpath(&regular);
    // SAFETY: NUL-terminated path.
    cvt(unsafe { libc::mknod(c.as_ptr(), libc::S_IFREG | 0o600, 0) }).unwrap();
    assert!(fs::metadata(&regular).unwrap().is_file());
    assert_eq!(contents(&regular), Ok(Bytes(Vec::new())));
    fs::write(&regular, b"written after mknod").unwrap();
    drop(listener);
    m.remount();
    assert_eq!(
        contents(&m.path("regular")),
        Ok(Bytes(b"written after mknod".to_vec()))
    );
    assert!(fs::symlink_metadata(m.path("fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
}

// ---------------------------------------------------------------------------------------
// O_DIRECT, mmap

#[test]
fn o_direct_round_trips_and_buffered_reads_see_it() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let path = m.path("direct");
    fs::write(&path, data(1, 6 * UNIT)).unwrap();
    // Fill the page cache first, so a stale cached page would show.
    let buffered = File::open(&path).unwrap();
    assert_eq!(read_at(&buffered, 0, 6 * UNIT), data(1, 6 * UNIT));

    let direct = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    let mut out = AlignedBuf::new(3 * UNIT as usize);
    out.copy_from_slice(&data(2, 3 * UNIT));
    direct.write_all_at(&out, UNIT).unwrap();
    // Past the end, leaving a hole.
    direct
        .write_all_at(&out[..UNIT as usize], 8 * UNIT)
        .unwrap();

    let mut expected = data(1, 6 * UNIT);
    expected[UNIT as usize..4 * UNIT as usize].copy_from_slice(&data(2, 3 * UNIT));
    expected.resize(8 * UNIT as usize, 0);
    expected.extend_from_slice(&data(2, UNIT));

    let mut back = AlignedBuf::new(9 * UNIT as usize);
    let done = read_full_at(&direct, &mut back, 0).unwrap();
    assert_eq!(done, expected.len());
    assert_eq!(Bytes(back.to_vec()), Bytes(expected.clone()));
    assert_eq!(
        Bytes(read_at(&buffered, 0, 10 * UNIT)),
        Bytes(expected.clone())
    );
    assert_eq!(contents(&path), Ok(Bytes(expected)));
}

#[test]
fn write_only_handles_bypass_the_page_cache_and_readers_see_their_writes() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let path = m.path("written");
    fs::write(&path, data(1, 6 * UNIT)).unwrap();
    // A reader with the file in the page cache, then a write-only (direct) writer.
    let reader = File::open(&path).unwrap();
    assert_eq!(read_at(&reader, 0, 6 * UNIT), data(1, 6 * UNIT));
    let writer = OpenOptions::new().write(true).open(&path).unwrap();
    writer.write_all_at(&data(2, 2 * UNIT), UNIT + 100).unwrap();
    writer.write_all_at(b"tail", 7 * UNIT).unwrap();
    let mut expected = data(1, 6 * UNIT);
    expected[UNIT as usize + 100..3 * UNIT as usize + 100].copy_from_slice(&data(2, 2 * UNIT));
    expected.resize(7 * UNIT as usize, 0);
    expected.extend_from_slice(b"tail");
    assert_eq!(
        Bytes(read_at(&reader, 0, 8 * UNIT)),
        Bytes(expected.clone())
    );
    assert_eq!(contents(&path), Ok(Bytes(expected)));
}

#[test]
fn mmap_shared_reads_and_writes_reach_the_file() {
    let env = TestEnv::new();
    mmap_shared_round_trip(&mut env.mounted(&[]));
}

#[test]
fn direct_io_mount_serves_large_io_and_shared_mmap() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    m.remount_with(&["--direct-io"]);
    let path = m.path("large");
    let expected = data(3, 3 * 1024 * 1024 + 123);
    fs::write(&path, &expected).unwrap();
    assert_eq!(contents(&path), Ok(Bytes(expected.clone())));
    let file = File::open(&path).unwrap();
    assert_eq!(
        Bytes(read_at(&file, 1_000_000, 2 * UNIT)),
        Bytes(expected[1_000_000..1_000_000 + 2 * UNIT as usize].to_vec())
    );
    drop(file);
    mmap_shared_round_trip(&mut m);
}

fn mmap_shared_round_trip(m: &mut Mounted) {
    let path = m.path("mapped");
    let len = 10_000;
    let mut expected = data(1, len as u64);
    fs::write(&path, &expected).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    // SAFETY: a fresh shared mapping of an open file, unmapped below.
    let ptr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(ptr, libc::MAP_FAILED, "{}", io::Error::last_os_error());
    // SAFETY: the mapping is len bytes, readable and writable, and only used here.
    let map = unsafe { std::slice::from_raw_parts_mut(ptr.cast::<u8>(), len) };
    assert_eq!(Bytes(map.to_vec()), Bytes(expected.clone()));
    for (offset, bytes) in [
        (0, &b"start"[..]),
        (4090, b"across units"),
        (9990, b"end of file"),
    ] {
        let bytes = &bytes[..bytes.len().min(len - offset)];
        map[offset..offset + bytes.len()].copy_from_slice(bytes);
        expected[offset..offset + bytes.len()].copy_from_slice(bytes);
    }
    // SAFETY: ptr/len is the mapping made above.
    unsafe {
        cvt(libc::msync(ptr, len, libc::MS_SYNC)).expect("msync");
        cvt(libc::munmap(ptr, len)).expect("munmap");
    }
    drop(file);
    assert_eq!(contents(&path), Ok(Bytes(expected.clone())));
    m.remount();
    assert_eq!(contents(&m.path("mapped")), Ok(Bytes(expected)));
}

// ---------------------------------------------------------------------------------------
// read-only mount

#[test]
fn read_only_mount_serves_reads_and_refuses_writes() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/file"), b"readable").unwrap();
    symlink("dir/file", m.path("link")).unwrap();
    m.remount_with(&["--read-only"]);
    let backing_before = names(&m.tree());

    assert_eq!(
        contents(&m.path("dir/file")),
        Ok(Bytes(b"readable".to_vec()))
    );
    assert_eq!(contents(&m.path("link")), Ok(Bytes(b"readable".to_vec())));
    assert_eq!(
        fs::read_link(m.path("link")).unwrap(),
        Path::new("dir/file")
    );
    assert_eq!(names(&m.path("dir")), ["file"]);

    let file = m.path("dir/file");
    let erofs = libc::EROFS;
    assert_errno(OpenOptions::new().write(true).open(&file), erofs);
    assert_errno(OpenOptions::new().append(true).open(&file), erofs);
    assert_errno(File::create(m.path("new")), erofs);
    assert_errno(fs::create_dir(m.path("newdir")), erofs);
    assert_errno(fs::remove_file(&file), erofs);
    assert_errno(fs::remove_dir(m.path("dir")), erofs);
    assert_errno(fs::rename(&file, m.path("moved")), erofs);
    assert_errno(symlink("x", m.path("newlink")), erofs);
    assert_errno(fs::hard_link(&file, m.path("hard")), erofs);
    assert_errno(
        fs::set_permissions(&file, fs::Permissions::from_mode(0o777)),
        erofs,
    );
    assert_errno(std::os::unix::fs::chown(&file, Some(1), Some(1)), erofs);
    assert_errno(truncate(&file, 0), erofs);
    assert_errno(mkfifo(&m.path("fifo"), 0o600), erofs);
    assert_errno(utimensat(&file, timespec(1, 0), timespec(1, 0), 0), erofs);

    assert_eq!(contents(&file), Ok(Bytes(b"readable".to_vec())));
    assert_eq!(names(&m.tree()), backing_before);
}

// ---------------------------------------------------------------------------------------
// safety against a tampered backing directory

const OUTSIDE_MARKER: &[u8] = b"OUTSIDE-SECRET-do-not-serve";

#[test]
fn planted_symlink_in_place_of_a_file_is_not_followed_outside() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    fs::write(m.path("absolute"), b"inside data").unwrap();
    fs::write(m.path("relative"), b"inside data").unwrap();
    fs::write(m.path("bystander"), b"other").unwrap();
    let outside = env.path("outside-secret");
    fs::write(&outside, OUTSIDE_MARKER).unwrap();
    set_mode(&outside, 0o600);
    let outside_before = fs::metadata(&outside).unwrap();
    let planted = [
        (m.backing_path("absolute"), outside.clone()),
        // From BACKING/tree/<entry>, two levels up is the test's root.
        (
            m.backing_path("relative"),
            PathBuf::from("../../outside-secret"),
        ),
    ];
    m.unmount_settled();
    for (entry, target) in &planted {
        fs::remove_file(entry).unwrap();
        symlink(target, entry).unwrap();
        assert_eq!(fs::read(entry).unwrap(), OUTSIDE_MARKER, "the plant works");
    }
    m.mount(&[]);

    for name in ["absolute", "relative"] {
        let path = m.path(name);
        if let Ok(read) = fs::read(&path) {
            assert!(
                !contains(&read, OUTSIDE_MARKER),
                "{name} served the outside file"
            );
        }
        if let Ok(target) = fs::read_link(&path) {
            assert!(!target.ends_with("outside-secret"), "{name} -> {target:?}");
        }
        let _ = fs::write(&path, b"clobbered");
        let _ = OpenOptions::new()
            .append(true)
            .open(&path)
            .and_then(|mut f| f.write_all(b"appended"));
        let _ = truncate(&path, 0);
        let _ = fs::set_permissions(&path, fs::Permissions::from_mode(0o666));
        let _ = std::os::unix::fs::chown(&path, Some(1234), Some(5678));
        let _ = utimensat(&path, timespec(1, 0), timespec(1, 0), 0);
        // Removing the name removes the planted link, never what it points to.
        let _ = fs::remove_file(&path);
    }
    let outside_after = fs::metadata(&outside).unwrap();
    assert_eq!(fs::read(&outside).unwrap(), OUTSIDE_MARKER);
    assert_eq!(outside_after.mode(), outside_before.mode());
    assert_eq!((outside_after.uid(), outside_after.gid()), (0, 0));
    assert_eq!(outside_after.mtime(), outside_before.mtime());
    assert_eq!(outside_after.mtime_nsec(), outside_before.mtime_nsec());
    assert_eq!(contents(&m.path("bystander")), Ok(Bytes(b"other".to_vec())));
}

#[test]
fn planted_symlink_in_place_of_a_directory_is_not_followed_outside() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/file"), OUTSIDE_MARKER).unwrap();
    let backing_dir = m.backing_path("dir");
    // The outside directory holds validly encrypted entries, so only refusing to follow
    // the link keeps the mount out of it.
    let outside = env.path("outside-dir");
    common::copy_tree(&backing_dir, &outside);
    let listing = |dir: &Path| {
        let mut seen: Vec<(OsString, u64, i64, i64)> = fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap())
            .map(|e| {
                let meta = e.metadata().unwrap();
                (e.file_name(), meta.len(), meta.mtime(), meta.mtime_nsec())
            })
            .collect();
        seen.sort();
        let dir_meta = fs::metadata(dir).unwrap();
        (seen, dir_meta.mtime(), dir_meta.mtime_nsec())
    };
    let outside_before = listing(&outside);
    m.unmount_settled();
    fs::remove_dir_all(&backing_dir).unwrap();
    symlink(&outside, &backing_dir).unwrap();
    m.mount(&[]);

    assert!(fs::metadata(m.path("dir/file")).is_err());
    assert!(fs::read(m.path("dir/file")).is_err());
    assert!(fs::read_dir(m.path("dir")).is_err());
    assert!(fs::write(m.path("dir/new"), b"x").is_err());
    assert!(fs::create_dir(m.path("dir/newdir")).is_err());
    assert!(fs::remove_file(m.path("dir/file")).is_err());
    assert!(fs::rename(m.path("dir/file"), m.path("stolen")).is_err());
    assert!(fs::symlink_metadata(m.path("stolen")).is_err());
    assert_eq!(listing(&outside), outside_before);
}

#[test]
fn corrupt_backing_files_give_eio_and_the_mount_keeps_serving() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let good = data(1, 10_000);
    let damaged = ["short", "bad-magic", "bad-version", "torn-tail"];
    for name in damaged.iter().chain(&["good"]) {
        fs::write(m.path(name), &good).unwrap();
    }
    symlink("some/target", m.path("bad-link")).unwrap();
    fs::write(m.path("unnamed"), b"x").unwrap();
    let long = long_name("side-file-is-a-fifo");
    fs::write(m.path(&long), b"x").unwrap();
    let long_backing = m.backing_path(&long);
    let backing: BTreeMap<&str, PathBuf> = damaged
        .iter()
        .chain(&["bad-link", "unnamed"])
        .map(|name| (*name, m.backing_path(name)))
        .collect();
    m.unmount_settled();

    let open = |name: &str| OpenOptions::new().write(true).open(&backing[name]).unwrap();
    open("short").set_len(10).unwrap();
    open("bad-magic").write_all_at(b"EVIL", 0).unwrap();
    open("bad-version").write_all_at(&[9, 0], 4).unwrap();
    // A last unit shorter than an AES block is not a length xtsfs writes for a 10 000-byte
    // file, but it must not upset anything either.
    open("torn-tail").set_len(32 + 8192 + 5).unwrap();
    fs::remove_file(&backing["bad-link"]).unwrap();
    symlink("not an encrypted target", &backing["bad-link"]).unwrap();
    fs::rename(&backing["unnamed"], m.tree().join("not-an-encrypted-name")).unwrap();
    fs::write(m.tree().join("xtsfs.long.without-side-file"), b"x").unwrap();
    // Opening a FIFO for reading waits for a writer: listing must not.
    let side_file = PathBuf::from(format!("{}.name", long_backing.display()));
    fs::remove_file(&side_file).unwrap();
    mkfifo(&side_file, 0o600).unwrap();

    let log = env.path("daemon.log");
    m.mount(&["--log-file", path_str(&log)]);
    let mnt = m.mountpoint.clone();
    within(Duration::from_secs(30), move || {
        let eio = libc::EIO;
        for name in ["short", "bad-magic", "bad-version"] {
            assert_errno(fs::read(mnt.join(name)), eio);
            let written = OpenOptions::new()
                .write(true)
                .open(mnt.join(name))
                .and_then(|f| f.write_all_at(b"overwrite", 100));
            assert_errno(written, eio);
        }
        // Whatever the torn file reads as, reading it is an answer, not a hang or a crash.
        let _ = fs::read(mnt.join("torn-tail"));
        assert_errno(fs::read_link(mnt.join("bad-link")), eio);
        assert_eq!(
            names(&mnt),
            [
                "bad-link",
                "bad-magic",
                "bad-version",
                "good",
                "short",
                "torn-tail"
            ]
        );
        assert_eq!(fs::read(mnt.join("good")).unwrap(), good);
        fs::write(mnt.join("new"), b"still writable").unwrap();
        assert_eq!(fs::read(mnt.join("new")).unwrap(), b"still writable");
    });
    statvfs(&m.mountpoint);
    m.unmount_settled();
    let log = fs::read_to_string(&log).unwrap_or_default();
    assert!(!log.contains("panicked"), "the daemon panicked:\n{log}");
}

// ---------------------------------------------------------------------------------------
// concurrency

/// The unaligned small writes one thread makes within `region` of the shared file.
fn small_writes(seed: u64, region: (u64, u64)) -> Vec<(u64, Vec<u8>)> {
    let mut rng = Rng(seed);
    (0..300)
        .map(|i| {
            let len = 1 + rng.below(700);
            let offset = region.0 + rng.below(region.1 - len);
            (offset, data(seed * 1000 + i, len))
        })
        .collect()
}

#[test]
fn concurrent_writers_on_separate_files_and_regions_of_one_file() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    const ALIGNED_UNITS: u64 = 256;
    let regions = [(MIB + 1000, 96 * 1024), (MIB + 200 * 1024 + 7, 96 * 1024)];
    let own_file = |t: u64| data(50 + t, 384 * 1024);
    let shared = m.path("shared");
    File::create(&shared).unwrap();
    thread::scope(|s| {
        for t in 0..4 {
            let path = m.path(&format!("own-{t}"));
            s.spawn(move || {
                let bytes = own_file(t);
                let mut file = File::create(path).unwrap();
                let mut rng = Rng(t);
                let mut at = 0;
                while at < bytes.len() {
                    let end = bytes.len().min(at + 1 + rng.below(20_000) as usize);
                    file.write_all(&bytes[at..end]).unwrap();
                    at = end;
                }
            });
        }
        for t in 0..4 {
            let file = OpenOptions::new().write(true).open(&shared).unwrap();
            s.spawn(move || {
                for unit in (t..ALIGNED_UNITS).step_by(4) {
                    file.write_all_at(&data(unit, UNIT), unit * UNIT).unwrap();
                }
            });
        }
        for (t, region) in regions.into_iter().enumerate() {
            let file = OpenOptions::new().write(true).open(&shared).unwrap();
            s.spawn(move || {
                for (offset, bytes) in small_writes(t as u64 + 1, region) {
                    file.write_all_at(&bytes, offset).unwrap();
                }
            });
        }
    });

    let mut expected: Vec<u8> = (0..ALIGNED_UNITS).flat_map(|u| data(u, UNIT)).collect();
    for (t, region) in regions.into_iter().enumerate() {
        for (offset, bytes) in small_writes(t as u64 + 1, region) {
            let end = offset as usize + bytes.len();
            if expected.len() < end {
                expected.resize(end, 0);
            }
            expected[offset as usize..end].copy_from_slice(&bytes);
        }
    }
    let check = |m: &Mounted| {
        for t in 0..4 {
            let own = contents(&m.path(&format!("own-{t}")));
            assert_eq!(own, Ok(Bytes(own_file(t))), "own-{t}");
        }
        assert_eq!(contents(&m.path("shared")), Ok(Bytes(expected.clone())));
    };
    check(&m);
    m.remount();
    check(&m);
}

// ---------------------------------------------------------------------------------------
// no plaintext in the backing directory

#[test]
fn canary_never_reaches_the_backing_directory() {
    const CANARY: &str = "xtsfs-canary-5b8e1d";
    // Short enough for a file below one AES block, which is encrypted differently.
    const SHORT_CANARY: &str = "tiny-canary";
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let mut notes = data(1, 20_000);
    for offset in [0, 4090, 8191, 19_000] {
        notes[offset..offset + CANARY.len()].copy_from_slice(CANARY.as_bytes());
    }
    fs::write(m.path("notes"), &notes).unwrap();
    fs::write(m.path("exact"), CANARY).unwrap();
    fs::write(m.path("short"), SHORT_CANARY).unwrap();
    fs::write(m.path(CANARY), b"named").unwrap();
    fs::create_dir(m.path(&format!("dir-{CANARY}"))).unwrap();
    fs::write(m.path(&format!("dir-{CANARY}/inner-{CANARY}")), CANARY).unwrap();
    fs::write(m.path(&long_name(CANARY)), CANARY).unwrap();
    fs::create_dir(m.path(&long_name(&format!("dir-{CANARY}")))).unwrap();
    symlink(format!("../{CANARY}/target"), m.path("link")).unwrap();
    symlink(format!("/{CANARY}/").repeat(60), m.path("long-link")).unwrap();
    fs::hard_link(m.path("notes"), m.path(&format!("hard-{CANARY}"))).unwrap();
    mkfifo(&m.path(&format!("fifo-{CANARY}")), 0o600).unwrap();
    fs::write(m.path("renamed"), b"x").unwrap();
    fs::rename(m.path("renamed"), m.path(&format!("renamed-{CANARY}"))).unwrap();
    assert_eq!(fs::read(m.path("short")).unwrap(), SHORT_CANARY.as_bytes());
    m.unmount_settled();

    for canary in [CANARY, SHORT_CANARY] {
        let hits = find_plaintext(&m.backing, canary.as_bytes());
        assert!(hits.is_empty(), "{canary} in plaintext at {hits:?}");
    }
}
