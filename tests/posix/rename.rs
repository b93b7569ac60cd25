//! rename and renameat2, long names and their side files.

use std::fs::{self, File};
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::{Path, PathBuf};
use std::thread;

use crate::common::sys::{read_at, renameat2};
use crate::common::TestEnv;
use crate::{assert_side_files_match, contents, data, long_name, names, os, same_as_local, Bytes};

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
