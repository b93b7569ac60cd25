//! `xtsfs upgrade`: format 1 volumes made through a real mount, converted to format 2,
//! compared through the mount before and after; interrupted runs (the library's
//! progress callback stops them) that stay readable and finish; refusals.

mod common;

use std::collections::BTreeMap;
use std::fs::{self, File, FileTimes};
use std::ops::ControlFlow;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use sha2::{Digest, Sha256};
use xtsfs::commands::upgrade::{self, FileOutcome, UpgradeEvent, UpgradeStatus, UPGRADE_TMP};
use xtsfs::keys::KeyRef;

use common::mount::{assert_success, Mounted, SmallFileSystem};
use common::{
    assert_error, assert_exit, hex, path_str, pseudo_random_bytes, set_mode, stderr, stdout,
    TestEnv,
};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Dir,
    File { len: u64, sha256: String },
    Symlink(PathBuf),
}

/// What a user sees of one entry through the mount.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    kind: Kind,
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: (i64, i64),
}

/// Every entry under `root`, never following a symlink.
fn snapshot(root: &Path) -> BTreeMap<PathBuf, Entry> {
    let mut tree = BTreeMap::new();
    for (path, meta) in common::walk(root) {
        let kind = if meta.is_dir() {
            Kind::Dir
        } else if meta.file_type().is_symlink() {
            Kind::Symlink(fs::read_link(&path).unwrap())
        } else {
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("read {path:?}: {e}"));
            Kind::File {
                len: bytes.len() as u64,
                sha256: hex(&Sha256::digest(&bytes)),
            }
        };
        let entry = Entry {
            kind,
            mode: meta.mode(),
            uid: meta.uid(),
            gid: meta.gid(),
            mtime: (meta.mtime(), meta.mtime_nsec()),
        };
        tree.insert(path.strip_prefix(root).unwrap().to_path_buf(), entry);
    }
    tree
}

/// Mode, uid, gid, mtime and (files) atime of a backing entry.
type BackingMetadata = (u32, u32, u32, (i64, i64), Option<(i64, i64)>);

/// The backing tree's names and metadata: the upgrade must keep every name, owner,
/// mode and mtime, and the atime of files.
fn backing_metadata(tree: &Path) -> BTreeMap<PathBuf, BackingMetadata> {
    common::walk(tree)
        .into_iter()
        .map(|(path, meta)| {
            let atime = meta.is_file().then(|| (meta.atime(), meta.atime_nsec()));
            let relative = path.strip_prefix(tree).unwrap().to_path_buf();
            let mtime = (meta.mtime(), meta.mtime_nsec());
            (
                relative,
                (meta.mode(), meta.uid(), meta.gid(), mtime, atime),
            )
        })
        .collect()
}

/// Every file's bytes in the backing directory.
fn backing_bytes(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    common::walk(dir)
        .into_iter()
        .filter(|(_, meta)| meta.is_file())
        .map(|(path, _)| {
            let bytes = fs::read(&path).unwrap();
            (path, bytes)
        })
        .collect()
}

/// Asserts equal trees of bytes, naming the paths that differ (not their bytes).
#[track_caller]
fn assert_same_bytes(left: &BTreeMap<PathBuf, Vec<u8>>, right: &BTreeMap<PathBuf, Vec<u8>>) {
    let differ: Vec<&PathBuf> = left
        .keys()
        .chain(right.keys())
        .filter(|path| left.get(*path) != right.get(*path))
        .collect();
    assert!(differ.is_empty(), "these files differ: {differ:?}");
}

fn long_name(prefix: &str, len: usize) -> String {
    format!("{prefix}{}", "x".repeat(len - prefix.len()))
}

/// The hard-linked names the tests check.
fn hard_two() -> [String; 2] {
    ["hard-a".into(), "dir/hard-b".into()]
}

fn hard_three() -> [String; 3] {
    [
        "hard3-a".into(),
        "dir/sub/hard3-b".into(),
        format!("dir/{}", long_name("hard3-c", 190)),
    ]
}

fn write_at(path: &Path, offset: u64, data: &[u8]) {
    let file = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap();
    file.write_all_at(data, offset).unwrap();
}

fn set_times(path: &Path, seconds: u64) {
    let at = |s: u64| SystemTime::UNIX_EPOCH + Duration::new(s, 123_456_789);
    let times = FileTimes::new()
        .set_accessed(at(seconds - 1_000_000))
        .set_modified(at(seconds));
    File::open(path).unwrap().set_times(times).unwrap();
}

/// A tree with every shape the upgrade has a case for, written through the mount.
fn populate(m: &Mounted<'_>) {
    let sizes = [
        0usize,
        1,
        15,
        16,
        17,
        4095,
        4096,
        4097,
        100_000,
        (3 << 20) + 123,
    ];
    let mut files = Vec::new();
    for (i, size) in sizes.into_iter().enumerate() {
        let name = format!("size-{size}");
        fs::write(m.path(&name), pseudo_random_bytes(i as u64, size)).unwrap();
        files.push(name);
    }
    // Written, then truncated to zero: a format 1 file of only its 32-byte header.
    fs::write(m.path("truncated"), b"data").unwrap();
    File::options()
        .write(true)
        .open(m.path("truncated"))
        .unwrap()
        .set_len(0)
        .unwrap();
    // Holes: units 1 to 4 never written; a 2 MiB hole at the end; written zeros.
    write_at(&m.path("sparse"), 0, &pseudo_random_bytes(100, 4096));
    write_at(
        &m.path("sparse"),
        5 * 4096 + 7,
        &pseudo_random_bytes(101, 100),
    );
    write_at(&m.path("sparse-tail"), 0, b"0123456789");
    File::options()
        .write(true)
        .open(m.path("sparse-tail"))
        .unwrap()
        .set_len((2 << 20) + 5)
        .unwrap();
    fs::write(m.path("zeros"), vec![0u8; 3 * 4096 + 5]).unwrap();
    files.extend(["truncated", "sparse", "sparse-tail", "zeros"].map(String::from));

    fs::create_dir_all(m.path("dir/sub")).unwrap();
    let long_dir = long_name("dir-", 190);
    fs::create_dir(m.path(&long_dir)).unwrap();
    let nested = [
        "dir/sub/nested.txt".to_string(),
        format!("{long_dir}/inner"),
    ];
    let long_file = long_name("file-", 200);
    for (i, name) in nested.iter().chain([&long_file]).enumerate() {
        fs::write(m.path(name), pseudo_random_bytes(200 + i as u64, 5000 + i)).unwrap();
        files.push(name.clone());
    }
    std::os::unix::fs::symlink("size-17", m.path("link-rel")).unwrap();
    std::os::unix::fs::symlink("/etc/hostname", m.path("dir/link-abs")).unwrap();
    std::os::unix::fs::symlink("no/such/file", m.path("dangling")).unwrap();

    let [a, b] = hard_two();
    fs::write(m.path(&a), pseudo_random_bytes(300, 10_000)).unwrap();
    fs::hard_link(m.path(&a), m.path(&b)).unwrap();
    let [a3, b3, c3] = hard_three();
    fs::write(m.path(&a3), pseudo_random_bytes(301, 5000)).unwrap();
    fs::hard_link(m.path(&a3), m.path(&b3)).unwrap();
    fs::hard_link(m.path(&a3), m.path(&c3)).unwrap();
    files.extend([a.clone(), a3]);

    set_mode(&m.path("size-1"), 0o600);
    set_mode(&m.path("size-15"), 0o4755);
    set_mode(&m.path("size-16"), 0o2750);
    set_mode(&m.path("size-4097"), 0o444);
    set_mode(&m.path("dir"), 0o750);
    std::os::unix::fs::chown(m.path("size-17"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::chown(m.path(&a), Some(4321), Some(8765)).unwrap();
    for (i, name) in files.iter().enumerate() {
        set_times(&m.path(name), 1_500_000_000 + i as u64 * 1000);
    }
    for (i, dir) in ["dir/sub", "dir", long_dir.as_str()].iter().enumerate() {
        set_times(&m.path(dir), 1_400_000_000 + i as u64);
    }
}

/// Asserts that `names` are one inode with exactly these links.
fn assert_linked(root: &Path, names: &[String]) {
    let inodes: Vec<(u64, u64)> = names
        .iter()
        .map(|name| {
            let meta = fs::symlink_metadata(root.join(name)).unwrap();
            (meta.ino(), meta.nlink())
        })
        .collect();
    assert!(
        inodes
            .iter()
            .all(|i| *i == (inodes[0].0, names.len() as u64)),
        "{names:?}: {inodes:?}"
    );
}

fn format_version(env: &TestEnv, backing: &Path) -> serde_json::Value {
    env.status_json(backing)["format_version"].clone()
}

/// A format 1 volume, populated through the mount and unmounted; its plaintext view.
fn v1_volume<'a>(env: &'a TestEnv, init_args: &[&str]) -> (Mounted<'a>, BTreeMap<PathBuf, Entry>) {
    let mut args = vec!["--format", "1"];
    args.extend_from_slice(init_args);
    let mut m = env.initialized(&args);
    m.mount(&[]);
    populate(&m);
    let expected = snapshot(&m.mountpoint);
    assert_linked(&m.mountpoint, &hard_two());
    assert_linked(&m.mountpoint, &hard_three());
    m.unmount_settled();
    assert_eq!(format_version(env, &m.backing), 1);
    (m, expected)
}

/// Every backing file (but long-name side files) is empty or format 2.
fn assert_all_format_2(tree: &Path) {
    for (path, bytes) in backing_bytes(tree) {
        let name = path.file_name().unwrap().to_string_lossy();
        if name.starts_with("xtsfs.long.") && name.ends_with(".name") {
            continue;
        }
        assert!(
            bytes.is_empty() || (bytes.len() >= 4096 && bytes[..6] == *b"XTSF\x02\x00"),
            "{path:?} is not a format 2 file"
        );
    }
}

fn full_upgrade(init_args: &[&str]) {
    let env = TestEnv::new();
    let (mut m, expected) = v1_volume(&env, init_args);
    let tree = m.tree();
    let metadata = backing_metadata(&tree);

    let output = env.xtsfs(&["upgrade", path_str(&m.backing)]);
    assert_exit(&output, 0);
    assert!(
        stdout(&output).contains("upgraded to format 2"),
        "{}",
        stdout(&output)
    );
    assert_eq!(format_version(&env, &m.backing), 2);
    assert_eq!(backing_metadata(&tree), metadata);
    assert_all_format_2(&tree);
    assert!(!m.backing.join(UPGRADE_TMP).exists());
    // The holes stayed holes: 2 MiB of hole at the end of sparse-tail is not allocated.
    let sparse_tail = fs::read_dir(&tree)
        .unwrap()
        .map(|e| e.unwrap().metadata().unwrap())
        .find(|meta| meta.len() > 2 << 20 && meta.len() < 3 << 20)
        .expect("the backing file of sparse-tail");
    assert!(sparse_tail.blocks() * 512 < 1 << 20, "{sparse_tail:?}");

    m.mount(&[]);
    assert_eq!(snapshot(&m.mountpoint), expected);
    assert_linked(&m.mountpoint, &hard_two());
    assert_linked(&m.mountpoint, &hard_three());
    // And the files take writes as format 2 files.
    write_at(&m.path("size-17"), 17, b"more");
    let mut grown = pseudo_random_bytes(4, 17);
    grown.extend_from_slice(b"more");
    assert_eq!(fs::read(m.path("size-17")).unwrap(), grown);
    m.unmount_settled();

    let again = env.xtsfs(&["upgrade", path_str(&m.backing)]);
    assert_exit(&again, 0);
    assert!(
        stdout(&again).contains("already format 2"),
        "{}",
        stdout(&again)
    );
    assert_eq!(format_version(&env, &m.backing), 2);
}

#[test]
fn upgrade_converts_every_file_and_keeps_names_metadata_and_hard_links() {
    full_upgrade(&[]);
}

#[test]
fn upgrade_converts_a_volume_with_plaintext_names() {
    full_upgrade(&["--plaintext-names"]);
}

/// Runs the library upgrade, which must stop (the callback says when) and leave the
/// volume format 1, readable through the mount as before.
fn stopped_run(
    env: &TestEnv,
    m: &mut Mounted<'_>,
    expected: &BTreeMap<PathBuf, Entry>,
    mut stop: impl FnMut(&UpgradeEvent<'_>) -> bool,
) -> upgrade::UpgradeReport {
    let report = upgrade::upgrade(
        &m.backing,
        &env.key_context(),
        None,
        &mut |event| match stop(&event) {
            true => ControlFlow::Break(()),
            false => ControlFlow::Continue(()),
        },
    )
    .unwrap();
    assert_eq!(report.status, UpgradeStatus::Stopped, "{report:?}");
    assert_eq!(format_version(env, &m.backing), 1);
    assert!(!m.backing.join(UPGRADE_TMP).exists());
    m.mount(&[]);
    assert_eq!(&snapshot(&m.mountpoint), expected);
    m.unmount_settled();
    report
}

#[test]
fn interrupted_upgrades_stay_readable_and_a_later_run_finishes() {
    // The order files are converted in follows the backing (encrypted, so random) names:
    // each kind of stop gets a volume of its own, so that none finds its files already
    // converted by another.
    let env = TestEnv::new();
    let (mut m, expected) = v1_volume(&env, &[]);
    // After N whole files, for several N: 8 of the volume's files in all. A run meets the
    // files an earlier one converted wherever their names put them, before or after its
    // own N: it counts at most those as already converted.
    let mut done = 0;
    for n in [1, 2, 5] {
        let mut converted = 0;
        let report = stopped_run(&env, &mut m, &expected, |event| {
            if let UpgradeEvent::File {
                outcome: FileOutcome::Converted,
                ..
            } = event
            {
                converted += 1;
            }
            converted == n
        });
        assert_eq!(report.converted, n, "{report:?}");
        assert!(report.already <= done, "{report:?}");
        done += n;
    }
    // In the middle of a file.
    let mut files = 0;
    let report = stopped_run(&env, &mut m, &expected, |event| match event {
        UpgradeEvent::File { .. } => {
            files += 1;
            false
        }
        UpgradeEvent::Bytes { .. } => files >= 1,
        _ => false,
    });
    assert!(report.converted <= 1, "{report:?}");
    finish_and_check(&env, &mut m, &expected, false);

    // Between the names of a hard-linked file: the first name is on the new inode, the
    // others still on the old one.
    let env = TestEnv::new();
    let (mut m, expected) = v1_volume(&env, &[]);
    stopped_run(&env, &mut m, &expected, |event| {
        matches!(
            event,
            UpgradeEvent::Named {
                name: 1,
                names: 3,
                ..
            }
        )
    });
    finish_and_check(&env, &mut m, &expected, true);
}

/// A later run, after a crash that left the temporary file too, finishes the upgrade.
fn finish_and_check(
    env: &TestEnv,
    m: &mut Mounted<'_>,
    expected: &BTreeMap<PathBuf, Entry>,
    split_hard_link: bool,
) {
    fs::write(m.backing.join(UPGRADE_TMP), b"left over").unwrap();
    let output = env.xtsfs(&["upgrade", path_str(&m.backing)]);
    assert_exit(&output, 0);
    assert_eq!(format_version(env, &m.backing), 2);
    assert!(!m.backing.join(UPGRADE_TMP).exists());
    assert_all_format_2(&m.tree());

    m.mount(&[]);
    assert_eq!(&snapshot(&m.mountpoint), expected);
    assert_linked(&m.mountpoint, &hard_two());
    let mut inodes: Vec<u64> = hard_three()
        .iter()
        .map(|name| fs::symlink_metadata(m.path(name)).unwrap().ino())
        .collect();
    inodes.sort();
    inodes.dedup();
    // The documented cost of the stop between names: the file that was split is two
    // inodes now, with the same contents under every name.
    let expected_inodes = if split_hard_link { 2 } else { 1 };
    assert_eq!(inodes.len(), expected_inodes, "{inodes:?}");
    m.unmount_settled();
}

#[test]
fn a_stop_before_the_first_file_changes_nothing() {
    let env = TestEnv::new();
    let (mut m, expected) = v1_volume(&env, &[]);
    let before = backing_bytes(&m.tree());
    let mut planned = None;
    let report = stopped_run(&env, &mut m, &expected, |event| {
        if let UpgradeEvent::Planned(plan) = event {
            planned = Some(*plan);
        }
        true
    });
    assert_eq!(report.converted, 0);
    let plan = planned.expect("the plan comes first");
    // 19 inodes (two of them hard-linked); size-0 was never written, so it is empty.
    assert_eq!(plan.files, 19, "{plan:?}");
    assert_eq!(plan.to_convert, 18, "{plan:?}");
    assert_same_bytes(&backing_bytes(&m.tree()), &before);
}

#[test]
fn a_mounted_volume_is_refused() {
    let env = TestEnv::new();
    let mut m = env.initialized(&["--format", "1"]);
    m.mount(&[]);
    fs::write(m.path("file"), b"contents").unwrap();
    let output = env.xtsfs(&["upgrade", path_str(&m.backing)]);
    assert_error(&output, 5);
    let mountpoint = m.mountpoint.canonicalize().unwrap();
    let message = format!(
        "is mounted; unmount it first (xtsfs unmount {})",
        mountpoint.display()
    );
    assert!(stderr(&output).contains(&message), "{}", stderr(&output));
    // The library refuses the same way.
    let err = upgrade::upgrade(&m.backing, &env.key_context(), None, &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap_err();
    assert!(err.to_string().contains(&message), "{err}");
    m.unmount_settled();
    assert_eq!(format_version(&env, &m.backing), 1);
    assert_exit(&env.xtsfs(&["upgrade", path_str(&m.backing)]), 0);
    m.mount(&[]);
    assert_eq!(fs::read(m.path("file")).unwrap(), b"contents");
    m.unmount_settled();
}

#[test]
fn damaged_files_are_reported_and_nothing_changes() {
    let env = TestEnv::new();
    let mut m = env.initialized(&["--format", "1"]);
    m.mount(&[]);
    for name in ["good", "bad-magic", "truncated-header"] {
        fs::write(m.path(name), pseudo_random_bytes(7, 9000)).unwrap();
    }
    let bad_magic = m.backing_path("bad-magic");
    let truncated = m.backing_path("truncated-header");
    m.unmount_settled();
    write_at(&bad_magic, 0, b"JUNK");
    File::options()
        .write(true)
        .open(&truncated)
        .unwrap()
        .set_len(20)
        .unwrap();
    let header = fs::read(m.backing.join("xtsfs.header")).unwrap();
    let before = backing_bytes(&m.tree());

    let output = env.xtsfs(&["upgrade", path_str(&m.backing)]);
    assert_error(&output, 4);
    let err = stderr(&output);
    assert!(err.contains("2 files cannot be upgraded"), "{err}");
    for path in [&bad_magic, &truncated] {
        assert!(err.contains(path_str(path)), "{err}");
    }
    assert!(
        err.contains("xtsfs: hint:") && err.contains("xtsfs upgrade"),
        "{err}"
    );
    assert_same_bytes(&backing_bytes(&m.tree()), &before);
    assert_eq!(fs::read(m.backing.join("xtsfs.header")).unwrap(), header);
    assert_eq!(format_version(&env, &m.backing), 1);

    // The user deletes the damaged files through the mount and runs it again.
    m.mount(&[]);
    assert_eq!(
        fs::read(m.path("good")).unwrap(),
        pseudo_random_bytes(7, 9000)
    );
    assert!(fs::read(m.path("bad-magic")).is_err());
    fs::remove_file(m.path("bad-magic")).unwrap();
    fs::remove_file(m.path("truncated-header")).unwrap();
    m.unmount_settled();
    assert_exit(&env.xtsfs(&["upgrade", path_str(&m.backing)]), 0);
    m.mount(&[]);
    assert_eq!(
        fs::read(m.path("good")).unwrap(),
        pseudo_random_bytes(7, 9000)
    );
    m.unmount_settled();
}

#[test]
fn symlinks_planted_in_the_backing_tree_are_not_followed() {
    let env = TestEnv::new();
    let mut m = env.initialized(&["--format", "1"]);
    m.mount(&[]);
    fs::write(m.path("file"), pseudo_random_bytes(8, 5000)).unwrap();
    let backing_file = m.backing_path("file");
    m.unmount_settled();
    // Format 1 files outside the volume, reachable through symlinks in its tree.
    let outside = env.path("outside");
    fs::create_dir_all(outside.join("dir")).unwrap();
    fs::copy(&backing_file, outside.join("victim")).unwrap();
    fs::copy(&backing_file, outside.join("dir/victim")).unwrap();
    let tree = m.tree();
    std::os::unix::fs::symlink(outside.join("victim"), tree.join("planted-file")).unwrap();
    std::os::unix::fs::symlink(outside.join("dir"), tree.join("planted-dir")).unwrap();
    let before = backing_bytes(&outside);

    assert_exit(&env.xtsfs(&["upgrade", path_str(&m.backing)]), 0);
    assert_same_bytes(&backing_bytes(&outside), &before);
    for name in ["planted-file", "planted-dir"] {
        assert!(fs::symlink_metadata(tree.join(name))
            .unwrap()
            .file_type()
            .is_symlink());
    }
    m.mount(&[]);
    assert_eq!(
        fs::read(m.path("file")).unwrap(),
        pseudo_random_bytes(8, 5000)
    );
    m.unmount_settled();
}

/// A golden format 1 volume (tests/golden.rs), copied, upgraded and compared.
fn upgrade_golden(kind: &str) {
    common::mount::require_fuse();
    let env = TestEnv::new();
    common::golden_copy(&env, kind);
    let key_file = env.path("key.pem");
    let key_arg = format!("pem:{}", path_str(&key_file));
    // The header records the path a PEM key was made at: give it explicitly.
    let key_args: Vec<&str> = match kind {
        "mmk" => vec![],
        _ => vec!["--key", &key_arg],
    };
    let backing = env.backing();
    let run = |command: &[&str]| {
        let mut args = command.to_vec();
        args.extend(key_args.iter().copied());
        env.xtsfs(&args)
    };
    let status = |backing: &Path| -> serde_json::Value {
        let output = run(&["status", "--json", path_str(backing)]);
        assert_exit(&output, 0);
        serde_json::from_slice(&output.stdout).unwrap()
    };
    let mountpoint = env.path("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let mounted_snapshot = || {
        assert_success(
            &run(&["mount", path_str(&backing), path_str(&mountpoint)]),
            "mount",
        );
        let seen = snapshot(&mountpoint);
        assert_success(&env.xtsfs(&["unmount", path_str(&mountpoint)]), "unmount");
        seen
    };

    assert_eq!(status(&backing)["format_version"], 1);
    let expected = mounted_snapshot();
    assert!(expected.len() >= 9, "{expected:?}");
    assert_exit(&run(&["upgrade", path_str(&backing)]), 0);
    assert_eq!(status(&backing)["format_version"], 2);
    assert_all_format_2(&backing.join("tree"));
    assert_eq!(mounted_snapshot(), expected);
    // The library takes the same key.
    let key = (kind != "mmk").then(|| KeyRef::Pem {
        path: key_file.clone(),
    });
    let report = upgrade::upgrade(&backing, &env.key_context(), key.as_ref(), &mut |_| {
        ControlFlow::Continue(())
    })
    .unwrap();
    assert_eq!(report.status, UpgradeStatus::AlreadyFormat2);
}

#[test]
fn golden_mmk_volume_upgrades() {
    upgrade_golden("mmk");
}

#[test]
fn golden_pem_volume_upgrades() {
    upgrade_golden("pem");
}

#[test]
fn upgrade_of_a_directory_that_is_no_volume_fails_clearly() {
    let env = TestEnv::new();
    fs::create_dir(env.backing()).unwrap();
    let output = env.xtsfs(&["upgrade", path_str(&env.backing())]);
    assert_error(&output, 4);
    let output = env.xtsfs(&["upgrade", path_str(&env.path("missing"))]);
    assert_error(&output, 4);
}

#[test]
fn a_full_backing_disk_stops_the_upgrade_and_loses_nothing() {
    let env = TestEnv::new();
    let _small = SmallFileSystem::mount(&env.backing(), "3M");
    let mut m = env.initialized(&["--format", "1"]);
    m.mount(&[]);
    let big = pseudo_random_bytes(9, 2 << 20);
    fs::write(m.path("big"), &big).unwrap();
    fs::write(m.path("small"), b"small").unwrap();
    m.unmount_settled();

    // The copy of `big` does not fit beside it.
    let output = env.xtsfs(&["upgrade", path_str(&m.backing)]);
    assert_error(&output, 1);
    let err = stderr(&output);
    assert!(err.contains("No space left on device"), "{err}");
    assert!(err.contains("the backing file system is full"), "{err}");
    assert!(!m.backing.join(UPGRADE_TMP).exists());
    assert_eq!(format_version(&env, &m.backing), 1);
    m.mount(&[]);
    assert!(fs::read(m.path("big")).unwrap() == big);
    assert_eq!(fs::read(m.path("small")).unwrap(), b"small");
    // With room again (a smaller file), the next run finishes.
    fs::write(m.path("big"), &big[..1 << 20]).unwrap();
    m.unmount_settled();
    assert_exit(&env.xtsfs(&["upgrade", path_str(&m.backing)]), 0);
    m.mount(&[]);
    assert!(fs::read(m.path("big")).unwrap() == big[..1 << 20]);
    assert_eq!(fs::read(m.path("small")).unwrap(), b"small");
    m.unmount_settled();
}

/// In a half-upgraded volume a converted (format 2) file that is truncated to zero starts
/// over as a format 1 file, the volume's format: its size must be read as format 1 from
/// then on. The mount used to keep the format it had first seen and report size 0.
#[test]
fn a_converted_file_truncated_to_zero_in_a_half_upgraded_volume_keeps_its_size_right() {
    let env = TestEnv::new();
    let mut m = env.mounted(&["--format", "1"]);
    fs::write(m.path("f"), vec![7u8; 5000]).unwrap();
    m.unmount_settled();
    let report = upgrade::upgrade(
        &m.backing,
        &env.key_context(),
        None,
        &mut |event| match event {
            UpgradeEvent::File { .. } => ControlFlow::Break(()),
            _ => ControlFlow::Continue(()),
        },
    )
    .unwrap();
    assert_eq!(report.status, UpgradeStatus::Stopped);
    let backing = fs::read(
        m.backing
            .join("tree")
            .read_dir()
            .unwrap()
            .next()
            .unwrap()
            .unwrap()
            .path(),
    )
    .unwrap();
    assert_eq!(
        &backing[4..6],
        &2u16.to_le_bytes(),
        "the file was converted"
    );
    m.mount(&[]);
    assert_eq!(fs::metadata(m.path("f")).unwrap().len(), 5000);
    fs::write(m.path("f"), b"ten bytes!").unwrap();
    assert_eq!(fs::metadata(m.path("f")).unwrap().len(), 10);
    assert_eq!(fs::read(m.path("f")).unwrap(), b"ten bytes!");
    m.remount();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"ten bytes!");
}
