//! setattr: chmod, chown, utimens, truncate, the file size limit, times.

use std::fs::{self, File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{symlink, FileExt, MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::common::sys::{fallocate, read_at, timespec, truncate, utimensat, OMIT};
use crate::common::{set_mode, TestEnv};
use crate::{contents, data, os, same_as_local, Bytes};

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
