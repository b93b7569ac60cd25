//! Safety against a tampered backing directory: planted symlinks, corrupt files.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::sys::{mkfifo, statvfs, timespec, truncate, utimensat};
use crate::common::{contains, path_str, set_mode, TestEnv};
use crate::{assert_errno, contents, data, long_name, names, within, Bytes};

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
    crate::common::copy_tree(&backing_dir, &outside);
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
