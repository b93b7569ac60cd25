//! unlink, mkdir, rmdir, readdir, and the names a directory takes.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, DirBuilderExt, DirEntryExt, FileExt, MetadataExt};
use std::thread;

use crate::common::sys::{mkfifo, read_at};
use crate::common::{set_mode, TestEnv};
use crate::{assert_side_files_match, contents, data, long_name, names, os, same_as_local, Bytes};

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
