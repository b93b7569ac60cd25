//! O_DIRECT, write-only handles, mmap, and the --direct-io mount.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};

use crate::common::mount::Mounted;
use crate::common::sys::{cvt, read_at, read_full_at};
use crate::common::{TestEnv, UNIT};
use crate::{contents, data, AlignedBuf, Bytes};

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

/// Pages of `file` in the page cache, and pages in all, by mincore.
fn resident_pages(file: &File) -> (usize, usize) {
    let len = file.metadata().unwrap().len() as usize;
    let pages = len.div_ceil(4096);
    // SAFETY: a fresh shared read-only mapping of the whole file, unmapped below.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    assert_ne!(addr, libc::MAP_FAILED, "{}", io::Error::last_os_error());
    let mut vec = vec![0u8; pages];
    // SAFETY: addr maps len bytes; vec has one byte per page.
    cvt(unsafe { libc::mincore(addr, len, vec.as_mut_ptr()) }).unwrap();
    // SAFETY: mapped above with this length.
    unsafe { libc::munmap(addr, len) };
    (vec.iter().filter(|&&b| b & 1 != 0).count(), pages)
}

/// A file written and read through the page cache keeps its plaintext there, and its
/// ciphertext does not stay cached as well (src/fs/behind.rs): at most about two
/// 8 MiB windows of it. (Only an upper bound can be asserted: other tests may drop
/// caches at any time.) On a backing file system that keeps files in memory, nothing is
/// dropped.
#[test]
fn page_cached_io_does_not_leave_the_ciphertext_cached_too() {
    let env = TestEnv::new();
    let Some(m) = mounted_off_tmpfs(&env) else {
        return;
    };
    const LEN: u64 = 64 << 20;
    let path = m.path("cached");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    write_mib(&file, LEN >> 20);
    file.sync_all().unwrap();
    let mut reader = File::open(&path).unwrap();
    io::copy(&mut reader, &mut io::sink()).unwrap();
    assert_eq!(
        read_at(&reader, LEN - 4, 4),
        data((LEN >> 20) - 1, 1 << 20)[(1 << 20) - 4..]
    );
    let backing = File::open(m.backing_path("cached")).unwrap();
    let (resident, pages) = resident_pages(&backing);
    assert!(
        resident * 100 <= pages * 40,
        "{resident} of {pages} backing pages still cached"
    );
}

/// Writes that bypass the mount's page cache leave their ciphertext as the one cached
/// copy, and its writeback starts behind a stream of them, as a writer pacing itself
/// with `sync_file_range` on a local file system would have it (src/fs/behind.rs):
/// after 128 MiB written through a write-only handle and not synced, at most about
/// three 8 MiB windows of the backing file are still dirty. (An upper bound again: the
/// kernel or another test may write pages back sooner, never later.) Needs `cachestat`
/// (Linux 6.5), the one call that counts a file's dirty pages.
#[test]
fn writes_that_bypass_the_page_cache_are_written_back_behind_them() {
    let env = TestEnv::new();
    let Some(m) = mounted_off_tmpfs(&env) else {
        return;
    };
    const LEN: u64 = 128 << 20;
    let path = m.path("written");
    let file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .unwrap();
    write_mib(&file, LEN >> 20);
    let backing = File::open(m.backing_path("written")).unwrap();
    let Some(dirty) = dirty_pages(&backing) else {
        eprintln!("skipped: no cachestat(2) on this kernel (Linux 6.5+)");
        return;
    };
    assert!(
        dirty * 4096 <= 24 << 20,
        "{dirty} pages of the backing file ({} MiB) still dirty after {} MiB written",
        (dirty * 4096) >> 20,
        LEN >> 20
    );
    drop(file);
    assert_eq!(
        read_at(&File::open(&path).unwrap(), LEN - 4, 4),
        data((LEN >> 20) - 1, 1 << 20)[(1 << 20) - 4..]
    );
}

/// Dirty pages of `file` in the page cache, by cachestat(2); None where the kernel has
/// no such call.
fn dirty_pages(file: &File) -> Option<u64> {
    /// cachestat's number on x86-64 and aarch64 alike (the generic table).
    const SYS_CACHESTAT: libc::c_long = 451;
    // struct cachestat_range { off, len } (len 0: to the end) and struct cachestat
    // { nr_cache, nr_dirty, nr_writeback, nr_evicted, nr_recently_evicted }, from
    // linux/mman.h: all u64.
    let range = [0u64; 2];
    let mut stat = [0u64; 5];
    // SAFETY: valid fd; range and stat have the kernel's layouts, stat is written on
    // success.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            range.as_ptr(),
            stat.as_mut_ptr(),
            0,
        )
    };
    if r == -1 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
        return None;
    }
    cvt(r as i32).unwrap();
    Some(stat[1])
}

/// A mount for the tests of what stays in the backing file's page cache, or None (the
/// test is skipped) when the backing directory is on a tmpfs, whose pages are its
/// storage: nothing is dropped or written back there.
fn mounted_off_tmpfs(env: &TestEnv) -> Option<Mounted<'_>> {
    let m = env.mounted(&[]);
    if nix_statfs(&m.backing) == libc::TMPFS_MAGIC {
        eprintln!("skipped: the backing directory is on a tmpfs, whose pages are its storage");
        return None;
    }
    Some(m)
}

/// Writes `mib` MiB through `file`, 1 MiB (`data(i, 1 MiB)`) at a time from the start.
fn write_mib(file: &File, mib: u64) {
    for chunk in 0..mib {
        file.write_all_at(&data(chunk, 1 << 20), chunk << 20)
            .unwrap();
    }
}

fn nix_statfs(path: &std::path::Path) -> libc::__fsword_t {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let mut st = std::mem::MaybeUninit::<libc::statfs>::uninit();
    // SAFETY: a NUL-terminated path; st is written on success.
    cvt(unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) }).unwrap();
    // SAFETY: statfs succeeded.
    unsafe { st.assume_init() }.f_type
}
