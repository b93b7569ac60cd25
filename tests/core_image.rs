//! After a lock, no copy of the data key, of a derived file key or of decrypted data is
//! left in the daemon (issue 11). The test reads the daemon's whole memory as root, through
//! /proc/PID/mem over every readable mapping in /proc/PID/maps (what gcore would dump; the
//! daemon is non-dumpable, which keeps other users out but not root), first while it
//! serves, as a control that the search finds what it looks for, then after a lock.

mod common;

use std::fs;
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::mount::{live_state, wait_for_state};
use common::{path_str, TestEnv};
use hkdf::Hkdf;
use sha2::Sha512;
use xtsfs::volume::file_header::FileHeader;

/// Readable mappings of `pid`: (start, end, description).
fn readable_regions(pid: u32) -> Vec<(u64, u64, String)> {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).expect("read maps");
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let name = fields.nth(3).unwrap_or("").to_string();
            let (start, end) = range.split_once('-')?;
            (perms.starts_with('r') && name != "[vvar]" && name != "[vsyscall]").then(|| {
                (
                    u64::from_str_radix(start, 16).unwrap(),
                    u64::from_str_radix(end, 16).unwrap(),
                    name,
                )
            })
        })
        // Adjacent regions as one: a malloc arena grows by mprotect, page by page, and a
        // key may straddle two of its mappings.
        .fold(
            Vec::new(),
            |mut regions: Vec<(u64, u64, String)>, (start, end, name)| {
                match regions.last_mut() {
                    Some(last) if last.1 == start => last.1 = end,
                    _ => regions.push((start, end, name)),
                }
                regions
            },
        )
}

/// Which of `needles` occur anywhere in the daemon's readable memory, with where.
fn search_memory(pid: u32, needles: &[(&str, Vec<u8>)]) -> Vec<String> {
    let mem = fs::File::open(format!("/proc/{pid}/mem")).expect("open /proc/PID/mem as root");
    let mut found = Vec::new();
    let mut total = 0u64;
    for (start, end, name) in readable_regions(pid) {
        let mut region = vec![0u8; (end - start) as usize];
        // Some mappings (guard pages, device memory) cannot be read: skipped.
        let Ok(n) = mem.read_at(&mut region, start) else {
            continue;
        };
        total += n as u64;
        let region = &region[..n];
        for (what, needle) in needles {
            if let Some(at) = memchr::memmem::find(region, needle) {
                found.push(format!("{what} at {:#x} in {name:?}", start + at as u64));
            }
        }
    }
    assert!(total > 1 << 20, "read only {total} bytes of the daemon");
    found
}

#[test]
fn no_data_key_file_key_or_plaintext_in_the_daemon_after_a_lock() {
    let env = TestEnv::new();
    let key = env.rsa_key("kek.pem", 2048);
    let mut m = env.initialized(&["--key", &format!("pem:{}", key.display())]);
    let canary = format!(
        "xtsfs-core-canary-{}",
        common::hex(&common::pseudo_random_bytes(std::process::id() as u64, 24))
    );
    // Written by one daemon, read back by another: the second daemon only ever holds the
    // canary as data it decrypted.
    m.mount(&[]);
    fs::write(m.path("canary.txt"), canary.repeat(100)).unwrap();
    m.unmount_settled();
    m.mount(&[
        "--key-check-interval",
        "200ms",
        "--key-check-timeout",
        "10s",
        "--threads",
        "2",
    ]);
    // An open handle keeps the file's node, and so its key, in the daemon whatever the
    // kernel forgets meanwhile (another process dropping dentries and inodes).
    let held = fs::File::open(m.path("canary.txt")).unwrap();
    for _ in 0..4 {
        let read = fs::read(m.path("canary.txt")).unwrap();
        assert!(read.starts_with(canary.as_bytes()));
        // Out of the page cache, so the next read is decrypted again.
        let _ = fs::write("/proc/sys/vm/drop_caches", "1");
    }

    let volume =
        xtsfs::volume::unlock(&m.backing, &env.key_context(), Some(&common::pem_ref(&key)))
            .expect("unlock in the test");
    let dek = volume.dek.expose().to_vec();
    let backing_file = m.backing_path("canary.txt");
    let header = FileHeader::decode(&fs::read(&backing_file).unwrap()[..32]).unwrap();
    let mut file_key = [0u8; 64];
    Hkdf::<Sha512>::new(None, &dek)
        .expand_multi_info(&[b"xtsfs v1 contents", &header.nonce], &mut file_key)
        .unwrap();
    let needles = [
        ("the DEK (first half)", dek[..32].to_vec()),
        ("the DEK (second half)", dek[32..].to_vec()),
        ("the file key (first half)", file_key[..32].to_vec()),
        ("the file key (second half)", file_key[32..].to_vec()),
        ("the plaintext canary", canary.as_bytes().to_vec()),
    ];
    let pid = live_state(&env, &m.mountpoint)["live"]["pid"]
        .as_u64()
        .expect("the daemon's pid") as u32;

    let serving = search_memory(pid, &needles);
    for (what, _) in &needles {
        assert!(
            serving.iter().any(|f| f.starts_with(what)),
            "control: {what} is not found while serving, so the search cannot be trusted: {serving:?}"
        );
    }

    fs::rename(&key, env.path("kek.pem.revoked")).unwrap();
    wait_for_state(&env, &m.mountpoint, "locked");
    // Let checks that were in flight at the lock finish and fail.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let locked = search_memory(pid, &needles);
    assert!(
        locked.is_empty(),
        "left in the daemon after the lock: {locked:?}"
    );
    assert!(Path::new(&format!("/proc/{pid}")).exists());
    drop(held);
    let _ = path_str(&m.mountpoint);
}
