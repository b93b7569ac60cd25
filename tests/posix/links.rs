//! symlink, readlink, link, inode numbers; access, locks, copy_file_range.

use std::ffi::{OsStr, OsString};
use std::fs::{self, File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::fs::{symlink, DirEntryExt, FileExt, MetadataExt};

use crate::common::mount::Mounted;
use crate::common::sys::{cpath, cvt, mkfifo};
use crate::common::{set_mode, TestEnv, MIB};
use crate::{
    assert_errno, assert_side_files_match, contents, data, long_name, names, os, same_as_local,
    Bytes,
};

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
