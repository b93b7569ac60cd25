//! A full backing file system: the application gets ENOSPC, nothing it wrote before is
//! lost or left unreadable, the volume header survives a rewrap that has no room, and
//! freeing space makes the volume writable again.

mod common;

use std::fs::{self, OpenOptions};
use std::io::{ErrorKind, Write};

use common::mount::{assert_success, SmallFileSystem};
use common::{assert_error, path_str, pseudo_random_bytes, stderr, TestEnv};

fn is_no_space(error: &std::io::Error) -> bool {
    error.kind() == ErrorKind::StorageFull || error.raw_os_error() == Some(libc::EDQUOT)
}

#[test]
fn full_backing_disk_is_enospc_and_loses_nothing() {
    let env = TestEnv::new();
    let _small = SmallFileSystem::mount(&env.backing(), "1M");
    let mut m = env.mounted(&[]);

    // The last unit is partial, so every append below rewrites acknowledged bytes in it.
    let kept = pseudo_random_bytes(1, 5000);
    let mut file = fs::File::create(m.path("kept")).unwrap();
    file.write_all(&kept).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let stream = pseudo_random_bytes(2, 2 << 20);
    let mut file = OpenOptions::new()
        .append(true)
        .open(m.path("kept"))
        .unwrap();
    let (mut sent, mut synced) = (0, 0);
    let error = loop {
        assert!(sent + 3000 <= stream.len(), "1 MiB never filled up");
        // Not unit-aligned, so the last unit is partial after every append.
        match file.write(&stream[sent..sent + 3000]) {
            Ok(n) => sent += n,
            Err(e) => break e,
        }
        match file.sync_data() {
            Ok(()) => synced = sent,
            Err(e) => break e,
        }
    };
    assert!(is_no_space(&error), "a full disk is ENOSPC, got {error}");
    assert!(synced > 0, "some appends fit before the disk filled");
    drop(file);

    // The backing file, not the page cache: remount and read every byte back.
    m.remount();
    let contents = fs::read(m.path("kept")).expect("the file stays readable");
    assert_eq!(contents[..kept.len()], kept[..], "bytes written before");
    let appended = &contents[kept.len()..];
    assert!(
        appended.len() >= synced && appended.len() <= sent,
        "{} bytes appended: at least the {synced} synced, at most the {sent} sent",
        appended.len()
    );
    assert_eq!(appended, &stream[..appended.len()], "appended bytes");

    // No room for a new header: the rewrap fails and the old header still opens.
    let output = env.xtsfs(&["rewrap", path_str(&m.backing), "--key", "mmk:other"]);
    assert_error(&output, 1);
    assert!(
        stderr(&output).contains("No space left on device")
            && stderr(&output).contains("free space, then retry"),
        "the error names the cause: {}",
        stderr(&output)
    );
    assert_success(
        &env.xtsfs(&["status", path_str(&m.backing)]),
        "status after a failed rewrap",
    );

    // Freeing space makes the volume writable again.
    OpenOptions::new()
        .write(true)
        .open(m.path("kept"))
        .unwrap()
        .set_len(kept.len() as u64)
        .unwrap();
    let after = pseudo_random_bytes(3, 200_000);
    fs::write(m.path("after"), &after).expect("a write after space was freed");
    m.remount();
    assert_eq!(fs::read(m.path("kept")).unwrap(), kept);
    assert_eq!(fs::read(m.path("after")).unwrap(), after);
}
