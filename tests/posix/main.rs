//! POSIX behaviour of a mounted volume, one test per operation, each on its own volume.
//!
//! Where POSIX leaves a result to the file system, a scenario runs both in a directory on
//! the local file system and in the mount, and the two must observe the same thing.
//!
//! One module per section: this file holds only the helpers the sections share.

#[path = "../common/mod.rs"]
mod common;

mod concurrency;
mod direct_io;
mod directories;
mod fallocate;
mod fsync;
mod getattr;
mod links;
mod no_plaintext;
mod open;
mod read_only;
mod read_write;
mod rename;
mod setattr;
mod statfs_mknod;
mod tampered_backing;
mod users;
mod xattrs;

use std::alloc::{self, Layout};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fmt;
use std::fs;
use std::io;
use std::ops::{Deref, DerefMut};
use std::path::Path;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use common::mount::Mounted;
use common::{fnv, pseudo_random_bytes, TestEnv, UNIT};

/// File contents compared by value but shown by length and checksum, so a mismatch of
/// large contents stays readable.
#[derive(PartialEq, Eq)]
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let fnv = fnv(&self.0);
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
