//! POSIX rules for every user: scenarios that run as root and as two unprivileged users
//! (tests/common/users.rs) in a directory of the local file system, in a mount made with
//! `--allow-other`, and in one made with `--allow-other --direct-io`. Every run must
//! observe the same thing; most scenarios also pin the POSIX answer itself.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::common::mount::Mounted;
use crate::common::sys::{cpath, cvt};
use crate::common::users::{User, ALICE, BOB, SHARED_GROUP};
use crate::common::{set_mode, TestEnv};

/// Every file type, by the name a scenario gives it.
pub const TYPES: [&str; 7] = ["reg", "dir", "fifo", "sock", "symlink", "blk", "chr"];

/// An errno's name, or "ok": readable in an assertion message.
pub fn outcome<T>(result: io::Result<T>) -> String {
    match result {
        Ok(_) => "ok".into(),
        Err(e) => errno_name(e.raw_os_error().expect("an OS error")),
    }
}

fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EACCES => "EACCES",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EISDIR => "EISDIR",
        libc::EINVAL => "EINVAL",
        libc::ENOTEMPTY => "ENOTEMPTY",
        libc::ENODATA => "ENODATA",
        libc::ERANGE => "ERANGE",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::EXDEV => "EXDEV",
        libc::ELOOP => "ELOOP",
        libc::ENXIO => "ENXIO",
        libc::E2BIG => "E2BIG",
        libc::ENOSPC => "ENOSPC",
        libc::EBUSY => "EBUSY",
        libc::EROFS => "EROFS",
        _ => return format!("errno {errno}"),
    };
    name.into()
}

/// Type, mode and owner of a path (not following a final symlink), or the errno.
pub fn st(path: &Path) -> String {
    match fs::symlink_metadata(path) {
        Ok(meta) => {
            let kind = match meta.mode() & libc::S_IFMT {
                libc::S_IFREG => "reg",
                libc::S_IFDIR => "dir",
                libc::S_IFIFO => "fifo",
                libc::S_IFSOCK => "sock",
                libc::S_IFLNK => "symlink",
                libc::S_IFBLK => "blk",
                libc::S_IFCHR => "chr",
                _ => "?",
            };
            let mode = match kind {
                // A symlink's mode is 0777 everywhere; not worth comparing.
                "symlink" => String::new(),
                _ => format!(" {:04o}", meta.mode() & 0o7777),
            };
            let rdev = match kind {
                "blk" | "chr" => {
                    format!(" {}:{}", libc::major(meta.rdev()), libc::minor(meta.rdev()))
                }
                _ => String::new(),
            };
            format!("{kind}{mode} {}:{}{rdev}", meta.uid(), meta.gid())
        }
        Err(e) => outcome::<()>(Err(e)),
    }
}

fn c_call(path: &Path, call: impl FnOnce(*const libc::c_char) -> libc::c_int) -> io::Result<()> {
    let path = cpath(path);
    cvt(call(path.as_ptr()))
}

pub fn mknod(path: &Path, mode: u32, dev: libc::dev_t) -> io::Result<()> {
    // SAFETY: NUL-terminated path.
    c_call(path, |p| unsafe { libc::mknod(p, mode, dev) })
}

pub fn chmod(path: &Path, mode: u32) -> io::Result<()> {
    // SAFETY: NUL-terminated path.
    c_call(path, |p| unsafe { libc::chmod(p, mode) })
}

/// lchown: never follows a final symlink. `u32::MAX` leaves an id unchanged.
pub fn lchown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: NUL-terminated path.
    c_call(path, |p| unsafe { libc::lchown(p, uid, gid) })
}

pub fn chown(path: &Path, uid: u32, gid: u32) -> io::Result<()> {
    // SAFETY: NUL-terminated path.
    c_call(path, |p| unsafe { libc::chown(p, uid, gid) })
}

/// Sets the process umask; only for a child process (it is process-wide).
pub fn umask(mask: u32) {
    // SAFETY: cannot fail.
    unsafe { libc::umask(mask) };
}

/// utimensat(AT_SYMLINK_NOFOLLOW) with (seconds, nanoseconds) pairs, where nanoseconds
/// may be UTIME_NOW or UTIME_OMIT.
pub fn utimes(path: &Path, atime: (i64, i64), mtime: (i64, i64)) -> io::Result<()> {
    let ts = |(sec, nsec): (i64, i64)| libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    let times = [ts(atime), ts(mtime)];
    // SAFETY: NUL-terminated path and a two-element array.
    c_call(path, |p| unsafe {
        libc::utimensat(libc::AT_FDCWD, p, times.as_ptr(), libc::AT_SYMLINK_NOFOLLOW)
    })
}

/// Creates an object of `kind` at `path` with permission bits `mode` (the caller's umask
/// applies, as for any creation).
pub fn make(kind: &str, path: &Path, mode: u32) -> io::Result<()> {
    match kind {
        "reg" => OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(path)
            .map(drop),
        "dir" => {
            use std::os::unix::fs::DirBuilderExt;
            fs::DirBuilder::new().mode(mode).create(path)
        }
        "fifo" => mknod(path, libc::S_IFIFO | mode, 0),
        "sock" => mknod(path, libc::S_IFSOCK | mode, 0),
        "symlink" => symlink("target-of-the-link", path),
        "blk" => mknod(path, libc::S_IFBLK | mode, libc::makedev(7, 200)),
        "chr" => mknod(path, libc::S_IFCHR | mode, libc::makedev(1, 3)),
        _ => panic!("no such kind {kind}"),
    }
}

/// A fresh directory `name` under `base`, made by root, mode `mode`.
pub fn fresh(base: &Path, name: &str, mode: u32) -> PathBuf {
    let dir = base.join(name);
    fs::create_dir(&dir).expect("create a scenario directory");
    set_mode(&dir, mode);
    dir
}

/// Runs `scenario` in a local directory and in a volume mounted `--allow-other`, then
/// `--allow-other --direct-io`, each time in a new directory (mode 0777, root's);
/// every run must observe the same. `init` are `xtsfs init` arguments.
#[track_caller]
pub fn same_for_every_mount<T: PartialEq + fmt::Debug>(
    init: &[&str],
    scenario: impl Fn(&Path) -> T,
) -> T {
    let env = TestEnv::new();
    // Other users must reach the local directory and the mount point.
    set_mode(env.root(), 0o755);
    let local = fresh(env.root(), "local", 0o755);
    let expected = scenario(&fresh(&local, "run", 0o777));
    let mut m = env.initialized(init);
    for options in [&["--allow-other"][..], &["--allow-other", "--direct-io"]] {
        m.mount(options);
        set_mode(&m.mountpoint, 0o755);
        let run = fresh(&m.mountpoint, "run", 0o777);
        let actual = scenario(&run);
        assert_eq!(
            actual, expected,
            "the mount with {options:?} (left) differs from the local file system (right)"
        );
        fs::remove_dir_all(&run).expect("clean up the scenario");
        m.unmount_settled();
    }
    expected
}

/// A mounted volume that other users can reach, for scenarios that only make sense
/// on the mount.
pub fn mounted_for_all<'a>(env: &'a TestEnv, init: &[&str], options: &[&str]) -> Mounted<'a> {
    set_mode(env.root(), 0o755);
    let mut m = env.initialized(init);
    let mut args = vec!["--allow-other"];
    args.extend_from_slice(options);
    m.mount(&args);
    set_mode(&m.mountpoint, 0o777);
    m
}

// ---------------------------------------------------------------------------------------
// Creation modes

#[test]
fn new_objects_get_the_callers_mode_minus_the_callers_umask_only() {
    let seen = same_for_every_mount(&[], |dir| {
        let mut seen = Vec::new();
        for (who, user) in [("root", User::root()), ("alice", User::alice())] {
            for mask in [0o000, 0o022, 0o077, 0o007] {
                let sub = fresh(dir, &format!("{who}-{mask:03o}"), 0o777);
                seen.extend(user.run(move || {
                    umask(mask);
                    let mut seen = Vec::new();
                    for kind in TYPES {
                        for mode in [0o777, 0o666, 0o4777, 0o2755, 0o1777, 0o6711] {
                            let path = sub.join(format!("{kind}-{mode:o}"));
                            let made = outcome(make(kind, &path, mode));
                            seen.push(format!(
                                "{who} umask {mask:03o} {kind} {mode:o}: {made} {}",
                                st(&path)
                            ));
                        }
                    }
                    seen
                }));
            }
        }
        seen
    });
    // The examples, pinned: umask 0 keeps 0666 and 04777.
    assert!(
        seen.contains(&"root umask 000 reg 666: ok reg 0666 0:0".to_string()),
        "{seen:#?}"
    );
    assert!(
        seen.contains(&format!(
            "alice umask 000 reg 4777: ok reg 4777 {ALICE}:{ALICE}"
        )),
        "{seen:#?}"
    );
    assert!(
        seen.contains(&format!(
            "alice umask 000 dir 1777: ok dir 1777 {ALICE}:{ALICE}"
        )),
        "{seen:#?}"
    );
}

#[test]
fn another_user_writes_a_file_created_0777() {
    same_for_every_mount(&[], |dir| {
        let path = dir.join("shared");
        let made = User::alice().run({
            let path = path.clone();
            move || {
                umask(0);
                outcome(make("reg", &path, 0o777))
            }
        });
        let written = User::bob().run({
            let path = path.clone();
            move || {
                outcome(
                    OpenOptions::new()
                        .append(true)
                        .open(&path)
                        .and_then(|mut f| f.write_all(b"bob")),
                )
            }
        });
        assert_eq!((made.as_str(), written.as_str()), ("ok", "ok"));
        (made, written, st(&path), fs::read(&path).unwrap())
    });
}

// ---------------------------------------------------------------------------------------
// Device nodes

#[test]
fn device_nodes_are_made_by_root_only_and_keep_their_numbers() {
    same_for_every_mount(&[], |dir| {
        let mut seen = Vec::new();
        for kind in ["blk", "chr"] {
            let path = dir.join(kind);
            seen.push(format!(
                "root {kind}: {} {}",
                outcome(make(kind, &path, 0o640)),
                st(&path)
            ));
            let denied = dir.join(format!("{kind}-alice"));
            let alice = User::alice().run({
                let denied = denied.clone();
                move || outcome(make(kind, &denied, 0o600))
            });
            seen.push(format!("alice {kind}: {alice} {}", st(&denied)));
            // Every operation on the node itself, as for any other file.
            let renamed = dir.join(format!("{kind}-renamed"));
            seen.push(format!("rename {}", outcome(fs::rename(&path, &renamed))));
            seen.push(format!("link {}", outcome(fs::hard_link(&renamed, &path))));
            seen.push(format!("chmod {}", outcome(chmod(&renamed, 0o600))));
            seen.push(format!("chown {}", outcome(lchown(&renamed, ALICE, BOB))));
            seen.push(format!(
                "after {} nlink {}",
                st(&path),
                fs::symlink_metadata(&path).unwrap().nlink()
            ));
            seen.push(format!("exists {}", outcome(make(kind, &path, 0o600))));
            seen.push(format!(
                "unlink {} {}",
                outcome(fs::remove_file(&renamed)),
                st(&renamed)
            ));
        }
        seen
    });
}

#[test]
fn device_nodes_cannot_be_opened_through_a_nodev_mount_and_survive_a_remount() {
    let env = TestEnv::new();
    let mut m = mounted_for_all(&env, &[], &[]);
    make("chr", &m.path("null"), 0o666).unwrap();
    make("blk", &m.path("loop"), 0o600).unwrap();
    assert_eq!(
        outcome(File::open(m.path("null"))),
        "EACCES",
        "the mount is nodev"
    );
    m.remount_with(&["--allow-other"]);
    // The test process's umask (022) applies.
    assert_eq!(st(&m.path("null")), "chr 0644 0:0 1:3");
    assert_eq!(st(&m.path("loop")), "blk 0600 0:0 7:200");
}

// ---------------------------------------------------------------------------------------
// chmod, chown, lchown

#[test]
fn chmod_and_chown_rules_for_owner_and_non_owner_of_every_type() {
    same_for_every_mount(&[], |dir| {
        let mut seen = Vec::new();
        for kind in TYPES {
            let path = dir.join(kind);
            make(kind, &path, 0o644).unwrap();
            lchown(&path, ALICE, ALICE).unwrap();
            let p = path.clone();
            seen.extend(User::alice().run(move || {
                let mut seen = vec![format!("{kind} start {}", st(&p))];
                // chmod follows a symlink (to a missing target): compare what happens.
                seen.push(format!(
                    "owner chmod {} {}",
                    outcome(chmod(&p, 0o640)),
                    st(&p)
                ));
                seen.push(format!(
                    "owner chown to bob {} {}",
                    outcome(lchown(&p, BOB, u32::MAX)),
                    st(&p)
                ));
                seen.push(format!(
                    "owner chgrp to shared {} {}",
                    outcome(lchown(&p, u32::MAX, SHARED_GROUP)),
                    st(&p)
                ));
                seen.push(format!(
                    "owner chgrp to root {} {}",
                    outcome(lchown(&p, u32::MAX, 0)),
                    st(&p)
                ));
                seen.push(format!(
                    "owner chown to self {} {}",
                    outcome(lchown(&p, ALICE, ALICE)),
                    st(&p)
                ));
                seen.push(format!(
                    "owner chown follows {}",
                    outcome(chown(&p, ALICE, u32::MAX))
                ));
                seen
            }));
            let p = path.clone();
            seen.extend(User::bob().run(move || {
                vec![
                    format!("non-owner chmod {} {}", outcome(chmod(&p, 0o777)), st(&p)),
                    format!(
                        "non-owner chown {} {}",
                        outcome(lchown(&p, BOB, u32::MAX)),
                        st(&p)
                    ),
                    format!(
                        "non-owner chgrp {} {}",
                        outcome(lchown(&p, u32::MAX, SHARED_GROUP)),
                        st(&p)
                    ),
                    format!(
                        "non-owner no-op chown {} {}",
                        outcome(lchown(&p, u32::MAX, u32::MAX)),
                        st(&p)
                    ),
                ]
            }));
            seen.push(format!(
                "root chown {} {}",
                outcome(lchown(&path, BOB, BOB)),
                st(&path)
            ));
        }
        seen
    });
}

#[test]
fn chmod_of_setgid_by_an_owner_outside_the_group_drops_it() {
    same_for_every_mount(&[], |dir| {
        let path = dir.join("f");
        make("reg", &path, 0o644).unwrap();
        lchown(&path, ALICE, 0).unwrap();
        let p = path.clone();
        User::alice().run(move || {
            vec![
                outcome(chmod(&p, 0o2755)),
                st(&p),
                outcome(chmod(&p, 0o4755)),
                st(&p),
            ]
        })
    });
}

// ---------------------------------------------------------------------------------------
// link, unlink, rename; sticky directories

#[test]
fn link_unlink_and_rename_of_other_users_objects_and_in_sticky_directories() {
    same_for_every_mount(&[], |dir| {
        let mut seen = Vec::new();
        for (label, mode) in [("sticky", 0o1777), ("open", 0o777), ("closed", 0o755)] {
            let d = fresh(dir, label, mode);
            for kind in TYPES {
                let theirs = d.join(format!("alice-{kind}"));
                make(kind, &theirs, 0o644).unwrap();
                lchown(&theirs, ALICE, ALICE).unwrap();
            }
            let mine = d.join("bob-file");
            make("reg", &mine, 0o644).unwrap();
            lchown(&mine, BOB, BOB).unwrap();
            let d2 = d.clone();
            seen.extend(User::bob().run(move || {
                let mut seen = Vec::new();
                for kind in TYPES {
                    let theirs = d2.join(format!("alice-{kind}"));
                    let p = |n: &str| d2.join(n);
                    seen.push(format!(
                        "{label} {kind}: link {} rename-over-it {} rename-it {} unlink {} left {}",
                        outcome(fs::hard_link(&theirs, p(&format!("bob-link-{kind}")))),
                        outcome(fs::rename(p("bob-file"), &theirs)),
                        outcome(fs::rename(&theirs, p(&format!("moved-{kind}")))),
                        outcome(if kind == "dir" {
                            fs::remove_dir(&theirs)
                        } else {
                            fs::remove_file(&theirs)
                        }),
                        st(&theirs),
                    ));
                }
                seen.push(format!(
                    "{label} own file unlink {}",
                    outcome(fs::remove_file(p_of(&d2, "bob-file")))
                ));
                seen
            }));
        }
        seen
    });
}

fn p_of(dir: &Path, name: &str) -> PathBuf {
    dir.join(name)
}

#[test]
fn renaming_a_directory_needs_write_permission_on_it() {
    same_for_every_mount(&[], |dir| {
        let theirs = dir.join("alices-dir");
        make("dir", &theirs, 0o755).unwrap();
        lchown(&theirs, ALICE, ALICE).unwrap();
        let into = dir.join("bobs");
        make("dir", &into, 0o777).unwrap();
        let (t, i) = (theirs.clone(), into.clone());
        User::bob().run(move || {
            vec![
                outcome(fs::rename(&t, i.join("moved"))),
                outcome(fs::rename(&t, t.with_file_name("renamed-in-place"))),
            ]
        })
    });
}

// ---------------------------------------------------------------------------------------
// Error precedence; O_CREAT | O_EXCL

#[test]
fn errors_come_in_the_same_order_as_on_a_local_file_system() {
    same_for_every_mount(&[], |dir| {
        let closed = fresh(dir, "closed", 0o755);
        make("reg", &closed.join("file"), 0o644).unwrap();
        make("dir", &closed.join("sub"), 0o755).unwrap();
        let noexec = fresh(dir, "noexec", 0o666);
        make("reg", &noexec.join("file"), 0o644).unwrap();
        let (c, n) = (closed.clone(), noexec.clone());
        User::bob().run(move || {
            let open_new = |p: PathBuf| OpenOptions::new().write(true).create_new(true).open(p);
            vec![
                format!(
                    "create existing in closed {}",
                    outcome(open_new(c.join("file")))
                ),
                format!("create new in closed {}", outcome(open_new(c.join("new")))),
                format!(
                    "mkdir existing in closed {}",
                    outcome(fs::create_dir(c.join("sub")))
                ),
                format!(
                    "mkdir new in closed {}",
                    outcome(fs::create_dir(c.join("new")))
                ),
                format!(
                    "mkdir under file {}",
                    outcome(fs::create_dir(c.join("file/x")))
                ),
                format!(
                    "mkdir under missing {}",
                    outcome(fs::create_dir(c.join("none/x")))
                ),
                format!(
                    "unlink missing in closed {}",
                    outcome(fs::remove_file(c.join("none")))
                ),
                format!(
                    "unlink existing in closed {}",
                    outcome(fs::remove_file(c.join("file")))
                ),
                format!("unlink dir {}", outcome(fs::remove_file(c.join("sub")))),
                format!("rmdir file {}", outcome(fs::remove_dir(c.join("file")))),
                format!("rmdir non-empty {}", outcome(fs::remove_dir(&c))),
                format!(
                    "rename missing {}",
                    outcome(fs::rename(c.join("none"), c.join("x")))
                ),
                format!(
                    "rename dir over file {}",
                    outcome(fs::rename(c.join("sub"), c.join("file")))
                ),
                format!(
                    "rename file over dir {}",
                    outcome(fs::rename(c.join("file"), c.join("sub")))
                ),
                format!("search without x {}", outcome(fs::metadata(n.join("file")))),
                format!("create without x {}", outcome(open_new(n.join("new")))),
                format!("open file as dir {}", outcome(fs::read_dir(c.join("file")))),
                format!(
                    "trailing slash on file {}",
                    outcome(fs::metadata(c.join("file/")))
                ),
                format!(
                    "link to missing {}",
                    outcome(fs::hard_link(c.join("none"), c.join("l")))
                ),
                format!(
                    "link dir {}",
                    outcome(fs::hard_link(c.join("sub"), c.join("l")))
                ),
            ]
        })
    });
}

#[test]
fn open_o_creat_o_excl_refuses_every_existing_type() {
    same_for_every_mount(&[], |dir| {
        for kind in TYPES {
            make(kind, &dir.join(kind), 0o666).unwrap();
        }
        let d = dir.to_path_buf();
        let mut seen = Vec::new();
        for user in [User::root(), User::alice()] {
            let d = d.clone();
            seen.extend(user.run(move || {
                TYPES
                    .iter()
                    .map(|kind| {
                        let excl = OpenOptions::new()
                            .write(true)
                            .create_new(true)
                            .custom_flags(libc::O_NONBLOCK)
                            .open(d.join(kind));
                        // Without O_EXCL an existing object is opened; not device nodes,
                        // which the nodev mount refuses and the local directory opens.
                        let creat = match *kind {
                            "blk" | "chr" => "not tried".to_string(),
                            _ => outcome(
                                OpenOptions::new()
                                    .read(true)
                                    .create(true)
                                    .write(true)
                                    .custom_flags(libc::O_NONBLOCK)
                                    .open(d.join(kind)),
                            ),
                        };
                        format!("{kind}: O_EXCL {} O_CREAT {creat}", outcome(excl))
                    })
                    .collect::<Vec<_>>()
            }));
        }
        assert!(
            seen.iter().all(|s| s.contains("O_EXCL EEXIST")),
            "{seen:#?}"
        );
        seen
    });
}

// ---------------------------------------------------------------------------------------
// utimensat

#[test]
fn utimensat_now_and_omit_for_owner_writer_and_stranger() {
    same_for_every_mount(&[], |dir| {
        let mut seen = Vec::new();
        for kind in TYPES {
            let path = dir.join(kind);
            make(kind, &path, 0o664).unwrap();
            lchown(&path, ALICE, SHARED_GROUP).unwrap();
            utimes(&path, (1_000_000, 5), (2_000_000, 7)).unwrap();
            // Bob writes through the shared group; a third user has no write permission.
            for user in [
                User::alice(),
                User::bob(),
                User::new(41_003, 41_003, &[41_003]),
            ] {
                let uid = user.uid;
                let p = path.clone();
                let times = |p: &Path| {
                    fs::symlink_metadata(p)
                        .map(|m| (m.atime(), m.atime_nsec(), m.mtime(), m.mtime_nsec()))
                };
                seen.extend(user.run(move || {
                    let t0 = times(&p).unwrap();
                    let mut seen = vec![];
                    for (label, a, m) in [
                        ("omit omit", (0, libc::UTIME_OMIT), (0, libc::UTIME_OMIT)),
                        ("now omit", (0, libc::UTIME_NOW), (0, libc::UTIME_OMIT)),
                        ("omit now", (0, libc::UTIME_OMIT), (0, libc::UTIME_NOW)),
                        ("now now", (0, libc::UTIME_NOW), (0, libc::UTIME_NOW)),
                        ("set omit", (3_000_000, 9), (0, libc::UTIME_OMIT)),
                        ("set set", (4_000_000, 11), (5_000_000, 13)),
                    ] {
                        let before = times(&p).unwrap();
                        let r = outcome(utimes(&p, a, m));
                        let after = times(&p).unwrap();
                        seen.push(format!(
                            "{kind} uid {uid} {label}: {r} atime changed {} mtime changed {} exact {:?}",
                            after.0 != before.0 || after.1 != before.1,
                            after.2 != before.2 || after.3 != before.3,
                            (after.0 == 3_000_000 || after.0 == 4_000_000, after.2 == 5_000_000)
                        ));
                    }
                    let _ = t0;
                    seen
                }));
                utimes(&path, (1_000_000, 5), (2_000_000, 7)).unwrap();
            }
        }
        seen
    });
}

// ---------------------------------------------------------------------------------------
// Set-id bits

/// One way of changing a file, by name.
pub type Change = (&'static str, fn(&Path) -> io::Result<()>);

/// Each way of changing a file's contents or length through a path, by name.
pub fn contents_changes() -> [Change; 7] {
    [
        ("write O_RDWR", |p| {
            OpenOptions::new()
                .read(true)
                .write(true)
                .open(p)?
                .write_all(b"x")
        }),
        ("write O_WRONLY", |p| {
            OpenOptions::new().write(true).open(p)?.write_all(b"x")
        }),
        ("write O_APPEND", |p| {
            OpenOptions::new().append(true).open(p)?.write_all(b"x")
        }),
        ("write O_DIRECT", |p| {
            let f = OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(p)?;
            let layout = std::alloc::Layout::from_size_align(4096, 4096).unwrap();
            // SAFETY: a valid non-zero layout; the buffer is freed below.
            let buf = unsafe { std::alloc::alloc_zeroed(layout) };
            // SAFETY: buf holds 4096 bytes.
            let n =
                unsafe { libc::pwrite(std::os::fd::AsRawFd::as_raw_fd(&f), buf.cast(), 4096, 0) };
            let result = if n < 0 {
                Err(io::Error::last_os_error())
            } else {
                Ok(())
            };
            // SAFETY: allocated above with this layout.
            unsafe { std::alloc::dealloc(buf, layout) };
            result
        }),
        ("truncate", |p| crate::common::sys::truncate(p, 1)),
        ("ftruncate", |p| {
            OpenOptions::new().write(true).open(p)?.set_len(2)
        }),
        ("open O_TRUNC", |p| {
            OpenOptions::new()
                .write(true)
                .truncate(true)
                .open(p)
                .map(drop)
        }),
    ]
}

/// Each way of changing a file's contents or owner, and who does it.
fn setid_clearing(dir: &Path) -> Vec<String> {
    let mut seen = Vec::new();
    for (i, (way, change)) in contents_changes().iter().enumerate() {
        for mode in [0o6775, 0o6765, 0o4755] {
            for user in [User::root(), User::alice(), User::bob()] {
                let path = dir.join(format!("f-{i}-{mode:o}-{}", user.uid));
                fs::write(&path, vec![b'a'; 100]).unwrap();
                lchown(&path, ALICE, SHARED_GROUP).unwrap();
                chmod(&path, mode).unwrap();
                let (p, change) = (path.clone(), *change);
                let uid = user.uid;
                let r = user.run(move || outcome(change(&p)));
                seen.push(format!("{way} {mode:o} by {uid}: {r} -> {}", st(&path)));
            }
        }
    }
    for (who, uid, gid) in [
        ("root chown", BOB, u32::MAX),
        ("root chgrp", u32::MAX, ALICE),
        ("root no-op", u32::MAX, u32::MAX),
    ] {
        for mode in [0o6775, 0o2765, 0o6755] {
            let path = dir.join(format!("c-{who}-{mode:o}"));
            fs::write(&path, b"x").unwrap();
            lchown(&path, ALICE, SHARED_GROUP).unwrap();
            chmod(&path, mode).unwrap();
            seen.push(format!(
                "{who} {mode:o}: {} -> {}",
                outcome(lchown(&path, uid, gid)),
                st(&path)
            ));
        }
    }
    for mode in [0o6775, 0o2765] {
        let path = dir.join(format!("c-alice-{mode:o}"));
        fs::write(&path, b"x").unwrap();
        lchown(&path, ALICE, ALICE).unwrap();
        chmod(&path, mode).unwrap();
        let p = path.clone();
        let r = User::alice().run(move || outcome(lchown(&p, u32::MAX, SHARED_GROUP)));
        seen.push(format!("alice chgrp {mode:o}: {r} -> {}", st(&path)));
    }
    // A directory keeps its set-group-ID bit on chown.
    let d = dir.join("setgid-dir");
    make("dir", &d, 0o2775).unwrap();
    seen.push(format!(
        "dir chown: {} -> {}",
        outcome(lchown(&d, ALICE, ALICE)),
        st(&d)
    ));
    seen
}

#[test]
fn set_id_bits_are_cleared_by_unprivileged_writes_truncates_and_chown() {
    let seen = same_for_every_mount(&[], setid_clearing);
    // Pinned: a write by a user without CAP_FSETID drops set-user-ID and set-group-ID
    // (with group execute); root keeps them.
    for way in [
        "write O_RDWR",
        "write O_WRONLY",
        "write O_DIRECT",
        "truncate",
        "open O_TRUNC",
    ] {
        assert!(
            seen.contains(&format!(
                "{way} 6775 by {BOB}: ok -> reg 0775 {ALICE}:{SHARED_GROUP}"
            )),
            "{way}: {seen:#?}"
        );
        assert!(
            seen.contains(&format!(
                "{way} 6775 by 0: ok -> reg 6775 {ALICE}:{SHARED_GROUP}"
            )),
            "{way}: {seen:#?}"
        );
    }
}

#[test]
fn a_setuid_file_created_by_a_user_keeps_its_bits_until_written() {
    same_for_every_mount(&[], |dir| {
        let path = dir.join("prog");
        let p = path.clone();
        User::alice().run(move || {
            umask(0o022);
            let made = outcome(make("reg", &p, 0o4755));
            let before = st(&p);
            let written = outcome(
                OpenOptions::new()
                    .write(true)
                    .open(&p)
                    .and_then(|mut f| f.write_all(b"#!")),
            );
            vec![made, before, written, st(&p)]
        })
    });
}

// ---------------------------------------------------------------------------------------
// Symlink sizes and long targets

#[test]
fn symlink_sizes_are_the_target_length_with_either_name_scheme() {
    for init in [&[][..], &["--plaintext-names"]] {
        same_for_every_mount(init, |dir| {
            [1usize, 2, 3, 15, 16, 17, 100, 1000, 3050]
                .iter()
                .map(|&len| {
                    let link = dir.join(format!("l{len}"));
                    symlink("t".repeat(len), &link).unwrap();
                    let meta = fs::symlink_metadata(&link).unwrap();
                    let read = fs::read_link(&link).unwrap();
                    (meta.len(), read.as_os_str().as_bytes().len())
                })
                .collect::<Vec<_>>()
        });
    }
}

#[test]
fn longest_symlink_target_is_3050_bytes_encrypted_and_4095_plaintext() {
    let env = TestEnv::new();
    let m = mounted_for_all(&env, &[], &[]);
    let link = |name: &str, len: usize| symlink("x".repeat(len), m.path(name));
    assert_eq!(outcome(link("max", 3050)), "ok");
    assert_eq!(fs::symlink_metadata(m.path("max")).unwrap().len(), 3050);
    assert_eq!(outcome(link("over", 3051)), "ENAMETOOLONG");
    assert_eq!(outcome(link("path-max", 4095)), "ENAMETOOLONG");
    drop(m);
    let env = TestEnv::new();
    let m = mounted_for_all(&env, &["--plaintext-names"], &[]);
    assert_eq!(outcome(symlink("y".repeat(4095), m.path("max"))), "ok");
    assert_eq!(
        fs::read_link(m.path("max")).unwrap().as_os_str().len(),
        4095
    );
    assert_eq!(fs::symlink_metadata(m.path("max")).unwrap().len(), 4095);
}
