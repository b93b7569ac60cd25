//! The customer-managed-key lifecycle on a mounted volume: revocation under the lock and
//! alert policies, online rewrap under load, following the newest key version, the audit
//! log, and ephemeral volumes.

mod common;

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine;
use common::mount::{assert_success, find_plaintext, live_state, wait_for_state};
use common::sys::try_statvfs;
use common::{assert_exit, hex, is_eacces, path_str, set_mode, wait_until, TestEnv};

fn audit_events(path: &Path) -> Vec<serde_json::Value> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str(l).expect("audit lines are JSON"))
        .collect()
}

fn has_event(events: &[serde_json::Value], event: &str, outcome: &str) -> bool {
    events
        .iter()
        .any(|e| e["event"] == event && e["outcome"] == outcome)
}

/// A PEM-keyed volume mounted with a fast key check and the given policy.
fn pem_volume<'a>(env: &'a TestEnv, policy: &str) -> (common::mount::Mounted<'a>, PathBuf) {
    let key = env.rsa_key("kek.pem", 2048);
    let mut m = env.initialized(&["--key", &format!("pem:{}", key.display())]);
    m.mount_checking_key(&["--on-key-loss", policy]);
    (m, key)
}

#[test]
fn lock_policy_fails_every_operation_until_the_key_returns() {
    let env = TestEnv::new();
    let (m, key) = pem_volume(&env, "lock");
    let mut file = fs::File::create(m.path("acknowledged")).unwrap();
    file.write_all(b"written and fsynced before revocation")
        .unwrap();
    file.sync_all().unwrap();
    drop(file);
    fs::write(m.path("cached"), b"read once, so in the page cache").unwrap();
    assert_eq!(
        fs::read(m.path("cached")).unwrap(),
        b"read once, so in the page cache"
    );

    let away = env.path("kek.pem.revoked");
    fs::rename(&key, &away).unwrap();
    let report = wait_for_state(&env, &m.mountpoint, "locked");
    assert_eq!(report["live"]["last_check"]["ok"], false);

    assert!(
        is_eacces(fs::read(m.path("acknowledged"))),
        "read after lock"
    );
    assert!(
        is_eacces(fs::read(m.path("cached"))),
        "page-cached data after lock"
    );
    assert!(
        is_eacces(fs::write(m.path("new"), b"x")),
        "create after lock"
    );
    assert!(is_eacces(fs::read_dir(&m.mountpoint)), "readdir after lock");
    assert!(
        is_eacces(fs::metadata(m.path("acknowledged"))),
        "getattr after lock"
    );
    if let Err(e) = try_statvfs(&m.mountpoint) {
        panic!("statfs still works: {e}");
    }

    fs::rename(&away, &key).unwrap();
    wait_for_state(&env, &m.mountpoint, "serving");
    assert_eq!(
        fs::read(m.path("acknowledged")).unwrap(),
        b"written and fsynced before revocation"
    );
    fs::write(m.path("after"), b"serving again").unwrap();
}

#[test]
fn alert_policy_keeps_serving_and_refuses_rewrap_until_the_key_returns() {
    let env = TestEnv::new();
    let audit = env.path("audit.log");
    let key = env.rsa_key("kek.pem", 2048);
    let mut m = env.initialized(&["--key", &format!("pem:{}", key.display())]);
    let backing = path_str(&m.backing).to_string();
    // --audit-log is global, so it may follow the subcommand like the rest.
    m.mount_checking_key(&["--audit-log", path_str(&audit), "--on-key-loss", "alert"]);
    fs::write(m.path("data"), b"kept").unwrap();

    set_mode(&key, 0o644);
    wait_for_state(&env, &m.mountpoint, "alert");
    assert_eq!(
        fs::read(m.path("data")).unwrap(),
        b"kept",
        "alert keeps serving"
    );
    fs::write(m.path("more"), b"still writable").unwrap();
    let refused = env.xtsfs(&["rewrap", &backing, "--key", "mmk"]);
    assert_exit(&refused, 3);

    set_mode(&key, 0o600);
    wait_for_state(&env, &m.mountpoint, "serving");
    assert_success(
        &env.xtsfs(&["rewrap", &backing, "--key", "mmk"]),
        "rewrap after restore",
    );
    let events = audit_events(&audit);
    assert!(has_event(&events, "check-failed", "failure"), "{events:?}");
    assert!(has_event(&events, "restored", "success"), "{events:?}");
    assert!(
        !events.iter().any(|e| e["event"] == "locked"),
        "alert never locks"
    );
    m.unmount();
}

/// Bytes of every regular file in the backing tree, by backing path.
fn backing_files(tree: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    for entry in fs::read_dir(tree).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            files.push((path.clone(), fs::read(&path).unwrap()));
        }
    }
    files.sort();
    files
}

#[test]
fn online_rewrap_chain_under_load_changes_no_data_byte() {
    let env = TestEnv::new();
    let audit = env.path("audit.log");
    let mut m = env.initialized(&[]);
    let backing = path_str(&m.backing).to_string();
    // --audit-log is global, so it may follow the subcommand like the rest.
    m.mount_checking_key(&["--audit-log", path_str(&audit)]);
    for i in 0..8 {
        fs::write(
            m.path(&format!("still-{i}")),
            vec![i as u8; 10_000 + i * 777],
        )
        .unwrap();
    }
    let before = backing_files(&m.tree());

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let (path, stop) = (m.path("busy"), stop.clone());
        std::thread::spawn(move || {
            let mut file = fs::File::create(&path).unwrap();
            let mut written = 0u64;
            while !stop.load(Ordering::Relaxed) {
                file.write_all(&[b'w'; 4096]).expect("write during rewrap");
                file.sync_data().expect("fdatasync during rewrap");
                written += 4096;
            }
            written
        })
    };
    let reader = {
        let (dir, stop) = (m.mountpoint.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut reads = 0u64;
            while !stop.load(Ordering::Relaxed) {
                for i in 0..8 {
                    let data =
                        fs::read(dir.join(format!("still-{i}"))).expect("read during rewrap");
                    assert_eq!(data, vec![i as u8; 10_000 + i * 777]);
                    reads += 1;
                }
            }
            reads
        })
    };

    let first = env.rsa_key("first.pem", 2048);
    let second = env.rsa_key("second.pem", 3072);
    let chain = [
        format!("pem:{}", first.display()),
        format!("pem:{}", second.display()),
        "mmk:other".into(),
        "mmk".into(),
    ];
    for key in &chain {
        assert_success(
            &env.xtsfs(&[
                "--audit-log",
                path_str(&audit),
                "rewrap",
                &backing,
                "--key",
                key,
            ]),
            key,
        );
        let report = wait_for_check_of_current_protector(&env, &m.mountpoint);
        assert_eq!(report["live"]["state"], "serving");
    }
    stop.store(true, Ordering::Relaxed);
    let written = writer.join().expect("writer saw no error");
    let reads = reader.join().expect("reader saw no error");
    assert!(written > 0 && reads > 0);
    assert_eq!(fs::metadata(m.path("busy")).unwrap().len(), written);
    assert_eq!(
        backing_files(&m.tree())
            .into_iter()
            .filter(|(p, _)| before.iter().any(|(b, _)| b == p))
            .collect::<Vec<_>>(),
        before
    );
    let rewraps = audit_events(&audit)
        .into_iter()
        .filter(|e| e["event"] == "rewrap" && e["outcome"] == "success")
        .count();
    assert_eq!(rewraps, chain.len());
    m.unmount();
}

/// Waits until the daemon's last successful check used the header's current protector.
fn wait_for_check_of_current_protector(env: &TestEnv, mountpoint: &Path) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report = live_state(env, mountpoint);
        let live = &report["live"];
        if live["last_check"]["ok"] == true
            && live["protector"]["key_ref"] == report["protector"]["key_ref"]
            && live["protector"]["key_version"] == report["protector"]["key_version"]
        {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "no key check against the new protector: {report}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}

#[test]
fn mounted_volume_follows_a_rotated_platform_key() {
    let env = TestEnv::new();
    let audit = env.path("audit.log");
    let mut m = env.initialized(&[]);
    // --audit-log is global, so it may follow the subcommand like the rest.
    m.mount_checking_key(&["--audit-log", path_str(&audit)]);
    fs::write(m.path("f"), b"survives rotation").unwrap();
    assert_success(&env.xtsfs(&["platform-key", "rotate", "default"]), "rotate");
    // The header is replaced first, then the host's record of it is committed, then the
    // rotation is audited: wait for all three.
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(25),
        "the mount never rewrapped onto version 2 (or never audited it)",
        || {
            live_state(&env, &m.mountpoint)["protector"]["key_version"] == "2"
                && has_event(&audit_events(&audit), "auto-rotate", "success")
        },
    );
    assert_eq!(fs::read(m.path("f")).unwrap(), b"survives rotation");
    m.remount();
    assert_eq!(fs::read(m.path("f")).unwrap(), b"survives rotation");
}

#[test]
fn audit_and_daemon_logs_hold_no_key_material() {
    let env = TestEnv::new();
    let audit = env.path("audit.log");
    let log = env.path("daemon.log");
    let key = env.rsa_key("kek.pem", 2048);
    let mut m = env.initialized(&[]);
    let (backing, mnt) = (
        path_str(&m.backing).to_string(),
        path_str(&m.mountpoint).to_string(),
    );
    let with_logs = |args: &[&str]| {
        let mut all = vec!["-vvv", "--audit-log", path_str(&audit)];
        all.extend_from_slice(args);
        assert_success(&env.xtsfs(&all), args[0]);
    };
    with_logs(&[
        "mount",
        &backing,
        &mnt,
        "--key-check-interval",
        "100ms",
        "--key-check-timeout",
        "10s",
        "--log-file",
        path_str(&log),
    ]);
    fs::write(m.path("f"), b"data").unwrap();
    with_logs(&[
        "rewrap",
        &backing,
        "--key",
        &format!("pem:{}", key.display()),
    ]);
    with_logs(&["rewrap", &backing, "--key", "mmk"]);
    std::thread::sleep(Duration::from_millis(300));
    m.unmount();

    let dek = xtsfs::volume::unlock(&m.backing, &env.key_context(), None)
        .unwrap()
        .dek;
    let kek = fs::read(env.platform_key_dir().join("default.1.key")).unwrap();
    let pem = fs::read_to_string(&key).unwrap();
    let mut needles: Vec<String> = Vec::new();
    for secret in [&dek.expose()[..], &kek[..]] {
        needles.push(hex(secret));
        needles.push(base64::engine::general_purpose::STANDARD.encode(secret));
        needles.push(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
        needles.push(hex(&secret[..16]));
    }
    needles.extend(
        pem.lines()
            .filter(|l| !l.starts_with("-----"))
            .map(str::to_string),
    );
    let events = audit_events(&audit);
    for event in ["mount", "unwrap", "rewrap", "unmount"] {
        assert!(
            has_event(&events, event, "success"),
            "{event} missing from {events:?}"
        );
    }
    for file in [&audit, &log] {
        let text = fs::read_to_string(file).unwrap();
        assert!(!text.is_empty(), "{} is empty", file.display());
        for needle in &needles {
            assert!(
                !text.contains(needle.as_str()),
                "key material in {}",
                file.display()
            );
        }
    }
}

#[test]
fn ephemeral_volume_leaves_nothing_decryptable() {
    let env = TestEnv::new();
    let backing = env.path("scratch");
    let mountpoint = env.path("mnt");
    fs::create_dir_all(&mountpoint).unwrap();
    let canary = "ephemeral-canary-91c4";
    let mount = || {
        assert_success(
            &env.xtsfs(&[
                "mount",
                "--ephemeral",
                path_str(&backing),
                path_str(&mountpoint),
            ]),
            "mount --ephemeral",
        )
    };

    // A clean unmount removes the contents.
    mount();
    fs::write(mountpoint.join(canary), canary.repeat(1000)).unwrap();
    let status = live_state_ephemeral(&env, &mountpoint);
    assert_eq!(status["ephemeral"], true);
    assert_success(&env.xtsfs(&["unmount", path_str(&mountpoint)]), "unmount");
    assert_eq!(
        fs::read_dir(&backing).unwrap().count(),
        0,
        "emptied at unmount"
    );

    // After kill -9 the ciphertext stays, but no key exists anywhere on disk.
    mount();
    fs::write(mountpoint.join(canary), canary.repeat(1000)).unwrap();
    let pid = live_state_ephemeral(&env, &mountpoint)["pid"]
        .as_i64()
        .unwrap() as i32;
    // SAFETY: killing the daemon we started.
    unsafe { libc::kill(pid, libc::SIGKILL) };
    wait_until(
        Duration::from_secs(10),
        Duration::from_millis(10),
        "the killed daemon is gone",
        || {
            // SAFETY: signal 0 probes for the process.
            let probe = unsafe { libc::kill(pid, 0) };
            probe != 0
        },
    );
    let dead = std::ffi::CString::new(path_str(&mountpoint)).unwrap();
    // SAFETY: valid path; detaches the dead FUSE mount.
    unsafe { libc::umount2(dead.as_ptr(), libc::MNT_DETACH) };
    let names: Vec<_> = fs::read_dir(&backing)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        names,
        vec![std::ffi::OsString::from("tree")],
        "no header, no key file"
    );
    assert_eq!(
        fs::read_dir(backing.join("tree")).unwrap().count(),
        1,
        "the ciphertext file remains"
    );
    assert!(find_plaintext(&backing, canary.as_bytes()).is_empty());
    assert!(
        !env.platform_key_dir().exists(),
        "no platform key was created"
    );

    // A non-empty backing directory is refused.
    let refused = env.xtsfs(&[
        "mount",
        "--ephemeral",
        path_str(&backing),
        path_str(&mountpoint),
    ]);
    assert_exit(&refused, 4);
}

fn live_state_ephemeral(env: &TestEnv, mountpoint: &Path) -> serde_json::Value {
    let output = env.xtsfs(&["status", path_str(mountpoint)]);
    assert_success(&output, "status of an ephemeral mount");
    serde_json::from_slice(&output.stdout).unwrap()
}
