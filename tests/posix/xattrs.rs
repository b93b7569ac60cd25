//! Extended attributes: `user.`, `trusted.` and `security.` stored encrypted, POSIX ACLs
//! passed through and enforced, each operation atomic per attribute, limits those of the
//! backing file system minus a stated overhead.

use std::fs::{self, OpenOptions};
use std::io;
use std::os::unix::fs::symlink;
use std::path::Path;

use crate::common::mount::find_plaintext;
use crate::common::users::{User, ALICE, BOB};
use crate::common::xattr::{self, lgetxattr, lgetxattr_into, lremovexattr, lsetxattr};
use crate::common::TestEnv;
use crate::users::{
    chmod, contents_changes, lchown, make, mounted_for_all, outcome, same_for_every_mount, st,
    umask, Change, TYPES,
};

/// getxattr into a buffer of exactly `size` bytes.
fn lgetxattr_sized(path: &Path, name: &str, size: usize) -> io::Result<usize> {
    lgetxattr_into(path, name, &mut vec![0u8; size])
}

/// The sorted attribute names.
pub fn llistxattr(path: &Path) -> io::Result<Vec<String>> {
    Ok(xattr::llistxattr(path)?
        .iter()
        .map(|n| String::from_utf8_lossy(n).into_owned())
        .collect())
}

fn show(result: io::Result<Vec<u8>>) -> String {
    match result {
        Ok(v) => format!("{:?}", String::from_utf8_lossy(&v)),
        Err(e) => outcome::<()>(Err(e)),
    }
}

#[test]
fn user_attributes_set_get_list_remove_with_create_and_replace() {
    same_for_every_mount(&[], |dir| {
        let mut seen = Vec::new();
        for kind in ["reg", "dir"] {
            let p = dir.join(kind);
            make(kind, &p, 0o644).unwrap();
            let set = |name: &str, value: &[u8], flags| outcome(lsetxattr(&p, name, value, flags));
            seen.push(format!(
                "{kind} empty list {:?}",
                llistxattr(&p).map_err(|e| e.to_string())
            ));
            seen.push(format!(
                "get missing {}",
                show(lgetxattr(&p, "user.missing"))
            ));
            seen.push(format!("set {}", set("user.a", b"one", 0)));
            seen.push(format!(
                "create existing {}",
                set("user.a", b"two", libc::XATTR_CREATE)
            ));
            seen.push(format!(
                "replace missing {}",
                set("user.b", b"two", libc::XATTR_REPLACE)
            ));
            seen.push(format!(
                "replace {}",
                set("user.a", b"three", libc::XATTR_REPLACE)
            ));
            seen.push(format!("create {}", set("user.b", b"", libc::XATTR_CREATE)));
            seen.push(format!("binary {}", set("user.bin", &[0, 255, 0, 1], 0)));
            seen.push(format!(
                "get {} {} {}",
                show(lgetxattr(&p, "user.a")),
                show(lgetxattr(&p, "user.b")),
                show(lgetxattr(&p, "user.bin"))
            ));
            seen.push(format!(
                "size only {:?}",
                lgetxattr_sized(&p, "user.a", 0).map_err(|e| e.to_string())
            ));
            seen.push(format!(
                "small buffer {}",
                outcome(lgetxattr_sized(&p, "user.a", 4))
            ));
            seen.push(format!(
                "exact buffer {:?}",
                lgetxattr_sized(&p, "user.a", 5).map_err(|e| e.to_string())
            ));
            seen.push(format!(
                "list {:?}",
                llistxattr(&p).map_err(|e| e.to_string())
            ));
            seen.push(format!(
                "remove {} again {}",
                outcome(lremovexattr(&p, "user.a")),
                outcome(lremovexattr(&p, "user.a"))
            ));
            seen.push(format!(
                "list {:?}",
                llistxattr(&p).map_err(|e| e.to_string())
            ));
            seen.push(format!("bad namespace {}", set("bogus.a", b"x", 0)));
            seen.push(format!("empty suffix {}", set("user.", b"x", 0)));
        }
        seen
    });
}

#[test]
fn namespaces_and_permissions_for_every_type_and_user() {
    same_for_every_mount(&[], |dir| {
        let mut seen = Vec::new();
        for kind in TYPES {
            let p = dir.join(kind);
            make(kind, &p, 0o664).unwrap();
            lchown(&p, ALICE, ALICE).unwrap();
            for ns in ["user", "trusted", "security"] {
                let name = format!("{ns}.root-{kind}");
                seen.push(format!(
                    "root {kind} {ns}: set {} get {}",
                    outcome(lsetxattr(&p, &name, b"v", 0)),
                    show(lgetxattr(&p, &name))
                ));
            }
            for user in [User::alice(), User::bob()] {
                let (p, uid) = (p.clone(), user.uid);
                seen.extend(user.run(move || {
                    ["user", "trusted", "security"]
                        .iter()
                        .map(|ns| {
                            let name = format!("{ns}.by-{uid}");
                            format!(
                                "{uid} {kind} {ns}: set {} get own {} get root's {} remove root's {} list {:?}",
                                outcome(lsetxattr(&p, &name, b"w", 0)),
                                show(lgetxattr(&p, &name)),
                                show(lgetxattr(&p, format!("{ns}.root-{kind}"))),
                                outcome(lremovexattr(&p, format!("{ns}.root-{kind}"))),
                                llistxattr(&p).map_err(|e| e.to_string()),
                            )
                        })
                        .collect::<Vec<_>>()
                }));
            }
        }
        seen
    });
}

/// A file capability (`struct vfs_cap_data`, revision 2, effective): CAP_NET_BIND_SERVICE
/// permitted. Little-endian words: magic and flags, permitted and inheritable, low and
/// high.
const FILE_CAPABILITY: [u8; 20] = [
    0x01, 0x00, 0x00, 0x02, // VFS_CAP_REVISION_2 | VFS_CAP_FLAGS_EFFECTIVE
    0x00, 0x04, 0x00, 0x00, // permitted, low word: bit 10
    0x00, 0x00, 0x00, 0x00, // inheritable, low word
    0x00, 0x00, 0x00, 0x00, // permitted, high word
    0x00, 0x00, 0x00, 0x00, // inheritable, high word
];

/// Writing to a file, or truncating it, removes its file capability, whoever does it:
/// the kernel looks for security.capability before a write unless it has seen that the
/// file has none since its attributes were last refreshed (SB_NOSEC, which the mount
/// gets by FUSE_HANDLE_KILLPRIV_V2). Each way runs twice on one file, so the second
/// write comes after the kernel has already looked once and found nothing.
/// (A chown that keeps both ids of a set-user-ID file with a capability is the one case
/// that differs from a local file system: the set-user-ID bit stays. XtsFs::setattr.)
#[test]
fn writes_and_truncates_remove_file_capabilities() {
    let ways: Vec<Change> = contents_changes()
        .into_iter()
        .filter(|(way, _)| {
            [
                "write O_RDWR",
                "write O_WRONLY",
                "ftruncate",
                "open O_TRUNC",
            ]
            .contains(way)
        })
        .collect();
    let seen = same_for_every_mount(&[], |dir| {
        let mut seen = Vec::new();
        for (i, (way, change)) in ways.iter().enumerate() {
            for user in [User::root(), User::alice()] {
                let p = dir.join(format!("cap-{i}-{}", user.uid));
                fs::write(&p, b"payload").unwrap();
                lchown(&p, ALICE, ALICE).unwrap();
                // The second round's file is also set-user-ID: root keeps the bit
                // while the capability goes, anyone else loses both.
                for (round, mode) in [(1, 0o755), (2, 0o4755)] {
                    chmod(&p, mode).unwrap();
                    let set = outcome(lsetxattr(&p, "security.capability", &FILE_CAPABILITY, 0));
                    let (q, change) = (p.clone(), *change);
                    let changed = user.run(move || outcome(change(&q)));
                    seen.push(format!(
                        "{way} by {} round {round} -> {}: set {set}, change {changed}, then {}",
                        user.uid,
                        st(&p),
                        show(lgetxattr(&p, "security.capability"))
                    ));
                }
            }
        }
        seen
    });
    // Pinned, so that the local file system's behaviour is not taken on trust either.
    for line in &seen {
        assert!(line.ends_with(", change ok, then ENODATA"), "{line}");
    }
}

#[test]
fn sticky_directory_user_attributes_belong_to_the_owner() {
    same_for_every_mount(&[], |dir| {
        let d = dir.join("sticky");
        make("dir", &d, 0o1777).unwrap();
        lchown(&d, ALICE, ALICE).unwrap();
        let p = d.clone();
        User::bob().run(move || outcome(lsetxattr(&p, "user.x", b"y", 0)))
    });
}

#[test]
fn attributes_are_encrypted_in_the_backing_tree_and_survive_a_remount() {
    let env = TestEnv::new();
    let mut m = mounted_for_all(&env, &[], &[]);
    let canary = "user.CANARY-NAME-9f3e";
    fs::write(m.path("file"), b"x").unwrap();
    symlink("file", m.path("link")).unwrap();
    lsetxattr(&m.path("file"), canary, b"CANARY-VALUE-77aa", 0).unwrap();
    lsetxattr(
        &m.path("link"),
        "trusted.CANARY-NAME-2",
        b"CANARY-VALUE-2",
        0,
    )
    .unwrap();
    for (path, name) in [("file", canary), ("link", "trusted.CANARY-NAME-2")] {
        let backing = m.backing_path(path);
        let stored = llistxattr(&backing).unwrap();
        assert_eq!(stored.len(), 1, "{stored:?}");
        let stored_name = &stored[0];
        assert!(!stored_name.contains("CANARY"), "{stored_name}");
        let ns = name.split('.').next().unwrap();
        assert!(
            stored_name.starts_with(&format!("{ns}.xtsfs.")),
            "{stored_name}"
        );
        let value = lgetxattr(&backing, stored_name).unwrap();
        assert!(!value.windows(6).any(|w| w == b"CANARY"));
        // The stated overhead: a 16-byte nonce and a 16-byte tag.
        assert_eq!(
            value.len(),
            lgetxattr(&m.path(path), name).unwrap().len() + 32
        );
    }
    assert!(find_plaintext(&m.backing, b"CANARY").is_empty());
    // Values are not deterministic: the same value twice is stored differently.
    lsetxattr(&m.path("file"), "user.again", b"CANARY-VALUE-77aa", 0).unwrap();
    let backing = m.backing_path("file");
    let values: Vec<Vec<u8>> = llistxattr(&backing)
        .unwrap()
        .iter()
        .map(|n| lgetxattr(&backing, n).unwrap())
        .collect();
    assert_ne!(values[0], values[1]);
    m.remount_with(&["--allow-other"]);
    assert_eq!(
        lgetxattr(&m.path("file"), canary).unwrap(),
        b"CANARY-VALUE-77aa"
    );
    assert_eq!(
        llistxattr(&m.path("file")).unwrap(),
        vec![
            "user.CANARY-NAME-9f3e".to_string(),
            "user.again".to_string()
        ]
    );
    assert_eq!(
        lgetxattr(&m.path("link"), "trusted.CANARY-NAME-2").unwrap(),
        b"CANARY-VALUE-2"
    );
}

#[test]
fn plaintext_name_volumes_store_attributes_as_they_are() {
    let env = TestEnv::new();
    let m = mounted_for_all(&env, &["--plaintext-names"], &[]);
    fs::write(m.path("file"), b"x").unwrap();
    let long = format!("user.{}", "n".repeat(250));
    lsetxattr(&m.path("file"), &long, b"value", 0).unwrap();
    let backing = m.backing_path("file");
    assert_eq!(llistxattr(&backing).unwrap(), vec![long.clone()]);
    assert_eq!(lgetxattr(&backing, &long).unwrap(), b"value");
    assert_eq!(lgetxattr(&m.path("file"), &long).unwrap(), b"value");
}

/// The largest value `set` accepts, by bisection up to 64 KiB, and the errno past it.
fn largest_value(set: impl Fn(usize) -> io::Result<()>) -> (usize, String) {
    let (mut ok, mut bad) = (0usize, 65_537usize);
    while bad - ok > 1 {
        let mid = (ok + bad) / 2;
        if set(mid).is_ok() {
            ok = mid;
        } else {
            bad = mid;
        }
    }
    (ok, outcome(set(bad)))
}

#[test]
fn limits_are_the_backing_limits_minus_the_stated_overhead() {
    let env = TestEnv::new();
    let m = mounted_for_all(&env, &[], &[]);
    let file = m.path("file");
    fs::write(&file, b"x").unwrap();
    // Names: 255 bytes in the backing file system, so 172 in user. and trusted., 173 in
    // security., once encrypted.
    for (ns, max) in [("user.", 172), ("trusted.", 172), ("security.", 173)] {
        let name = |len: usize| format!("{ns}{}", "n".repeat(len - ns.len()));
        assert_eq!(outcome(lsetxattr(&file, name(max), b"v", 0)), "ok", "{ns}");
        assert_eq!(
            outcome(lsetxattr(&file, name(max + 1), b"v", 0)),
            "ERANGE",
            "{ns}"
        );
        lremovexattr(&file, name(max)).unwrap();
    }
    // Values: whatever the backing file system takes under the stored name, minus 32.
    let name = "user.v";
    let (largest, past) = largest_value(|len| lsetxattr(&file, name, &vec![b'v'; len], 0));
    assert!(largest > 1000, "{largest}");
    let backing = m.backing_path("file");
    let stored_name = llistxattr(&backing).unwrap().remove(0);
    lremovexattr(&file, name).unwrap();
    let (backing_largest, backing_past) =
        largest_value(|len| lsetxattr(&backing, &stored_name, &vec![b'v'; len], 0));
    assert_eq!((largest + 32, past), (backing_largest, backing_past));
    lremovexattr(&backing, &stored_name).unwrap();
    // A full value round-trips.
    lsetxattr(&file, name, &vec![7u8; largest], 0).unwrap();
    assert_eq!(lgetxattr(&file, name).unwrap(), vec![7u8; largest]);
}

// ---------------------------------------------------------------------------------------
// POSIX ACLs

/// A `system.posix_acl_*` value: version 2, then (tag, perm, id) entries.
fn acl(entries: &[(u16, u16, u32)]) -> Vec<u8> {
    let mut value = 2u32.to_le_bytes().to_vec();
    for &(tag, perm, id) in entries {
        value.extend_from_slice(&tag.to_le_bytes());
        value.extend_from_slice(&perm.to_le_bytes());
        value.extend_from_slice(&id.to_le_bytes());
    }
    value
}

const USER_OBJ: u16 = 1;
const USER: u16 = 2;
const GROUP_OBJ: u16 = 4;
const MASK: u16 = 0x10;
const OTHER: u16 = 0x20;
const UNDEFINED: u32 = u32::MAX;

#[test]
fn posix_acls_are_stored_applied_and_enforced_like_the_backing_file_system() {
    same_for_every_mount(&[], |dir| {
        let mut seen = Vec::new();
        let file = dir.join("file");
        fs::write(&file, b"secret").unwrap();
        lchown(&file, ALICE, ALICE).unwrap();
        chmod(&file, 0o600).unwrap();
        let bob_read = |p: &Path| {
            let p = p.to_path_buf();
            User::bob().run(move || outcome(fs::read(&p)))
        };
        seen.push(format!("bob before {}", bob_read(&file)));
        let grant = acl(&[
            (USER_OBJ, 6, UNDEFINED),
            (USER, 4, BOB),
            (GROUP_OBJ, 0, UNDEFINED),
            (MASK, 4, UNDEFINED),
            (OTHER, 0, UNDEFINED),
        ]);
        for (who, user) in [("bob", User::bob()), ("alice", User::alice())] {
            let (f, g) = (file.clone(), grant.clone());
            let set = user.run(move || outcome(lsetxattr(&f, "system.posix_acl_access", &g, 0)));
            seen.push(format!("{who} sets {set}"));
        }
        seen.push(format!("mode {}", st(&file)));
        seen.push(format!(
            "list {:?}",
            llistxattr(&file).map_err(|e| e.to_string())
        ));
        seen.push(format!("bob after {}", bob_read(&file)));
        seen.push(format!(
            "chmod {} {}",
            outcome(chmod(&file, 0o600)),
            st(&file)
        ));
        seen.push(format!("bob after chmod {}", bob_read(&file)));
        seen.push(format!(
            "get {:?}",
            lgetxattr(&file, "system.posix_acl_access").map_err(|e| e.to_string())
        ));
        seen.push(format!(
            "remove {} {}",
            outcome(lremovexattr(&file, "system.posix_acl_access")),
            st(&file)
        ));

        // A default ACL replaces the umask for new objects.
        let d = dir.join("inherits");
        make("dir", &d, 0o777).unwrap();
        let default = acl(&[
            (USER_OBJ, 7, UNDEFINED),
            (USER, 7, BOB),
            (GROUP_OBJ, 5, UNDEFINED),
            (MASK, 7, UNDEFINED),
            (OTHER, 5, UNDEFINED),
        ]);
        seen.push(format!(
            "default on dir {}",
            outcome(lsetxattr(&d, "system.posix_acl_default", &default, 0))
        ));
        seen.push(format!(
            "default on file {}",
            outcome(lsetxattr(&file, "system.posix_acl_default", &default, 0))
        ));
        let d2 = d.clone();
        seen.extend(User::alice().run(move || {
            umask(0o077);
            let mut seen = Vec::new();
            for kind in ["reg", "dir", "fifo"] {
                let p = d2.join(kind);
                seen.push(format!(
                    "inherited {kind} {} {} {:?}",
                    outcome(make(kind, &p, 0o666)),
                    st(&p),
                    llistxattr(&p).map_err(|e| e.to_string())
                ));
            }
            seen
        }));
        let p = d.join("reg");
        seen.push(format!(
            "bob writes inherited {}",
            User::bob().run(move || outcome(OpenOptions::new().write(true).open(&p)))
        ));
        seen
    });
}

#[test]
fn cp_and_tar_preserve_attributes_into_the_mount() {
    let env = TestEnv::new();
    let m = mounted_for_all(&env, &[], &[]);
    let src = env.path("src");
    fs::create_dir(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    lsetxattr(&src.join("f"), "user.origin", b"copied", 0).unwrap();
    let run = |program: &str, args: &[&str]| {
        let out = std::process::Command::new(program)
            .args(args)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{program}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(
        "cp",
        &["-a", src.to_str().unwrap(), m.path("cp").to_str().unwrap()],
    );
    assert_eq!(
        lgetxattr(&m.path("cp/f"), "user.origin").unwrap(),
        b"copied"
    );
    let tar = env.path("a.tar");
    run(
        "tar",
        &[
            "--xattrs",
            "--xattrs-include=*",
            "-C",
            src.to_str().unwrap(),
            "-cf",
            tar.to_str().unwrap(),
            ".",
        ],
    );
    fs::create_dir(m.path("tar")).unwrap();
    run(
        "tar",
        &[
            "--xattrs",
            "--xattrs-include=*",
            "-C",
            m.path("tar").to_str().unwrap(),
            "-xf",
            tar.to_str().unwrap(),
        ],
    );
    assert_eq!(
        lgetxattr(&m.path("tar/f"), "user.origin").unwrap(),
        b"copied"
    );
}
