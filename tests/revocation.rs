//! Revocation that holds (issue 11): the key monitor cannot be stalled, a revocation cannot
//! be rolled back by restoring an old header, outages are told apart from revocations, and
//! smaller hardening (pidfd signals, printable status, StrictModes for trusted
//! directories, key version characters).

mod common;

use std::fs;
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use common::kms::Kms;
use common::mount::{assert_success, live_state, wait_for_state};
use common::{assert_exit, is_eacces, path_str, set_mode, stderr, stdout, TestEnv};

/// Runs xtsfs like [`TestEnv::xtsfs_with_env`], but gives up after `limit`: `None` if it
/// was still running (it is killed). Old code hung in these places; a test must not.
fn xtsfs_bounded(
    env: &TestEnv,
    vars: &[(&str, &str)],
    args: &[&str],
    limit: Duration,
) -> Option<Output> {
    let mut child = env
        .command(vars, args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run xtsfs");
    let deadline = Instant::now() + limit;
    loop {
        if child.try_wait().expect("wait for xtsfs").is_some() {
            return Some(child.wait_with_output().expect("collect xtsfs output"));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Polls `xtsfs status` until the mount's live state is `state`, for at most `limit`.
/// A status whose own key check cannot finish gives up after a second (the daemon's live
/// state is what counts here).
fn reaches_state(env: &TestEnv, mountpoint: &Path, state: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    while Instant::now() < deadline {
        let report = xtsfs_bounded(
            env,
            &[("XTSFS_KMS_TIMEOUT", "1")],
            &["status", "--json", path_str(mountpoint)],
            Duration::from_secs(10),
        );
        let Some(report) = report else { return false };
        let json: serde_json::Value = serde_json::from_slice(&report.stdout).unwrap_or_default();
        if json["live"]["state"] == state {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Unmounts with `xtsfs unmount` and asserts that it returns within a few seconds, and
/// lazily detaches if it does not, so a failing test does not leave a mount behind.
fn assert_unmounts_quickly(env: &TestEnv, m: &mut common::mount::Mounted<'_>) {
    let output = xtsfs_bounded(
        env,
        &[],
        &["unmount", path_str(&m.mountpoint)],
        Duration::from_secs(8),
    );
    match output {
        Some(output) => {
            assert_success(&output, "unmount");
            // Drop would unmount again: tell it the mount is gone.
            let _ = m.unmount();
        }
        None => {
            let _ = env.xtsfs(&["unmount", "--lazy", path_str(&m.mountpoint)]);
            panic!("unmount did not return within 8 s");
        }
    }
}

// --- High: the key monitor cannot be stalled ----------------------------------------------

#[test]
fn a_fifo_in_place_of_the_header_does_not_stall_the_lock_or_unmount() {
    let env = TestEnv::new();
    let key = env.rsa_key("kek.pem", 2048);
    let mut m = env.initialized(&["--key", &format!("pem:{}", key.display())]);
    m.mount(&[
        "--key-check-interval",
        "200ms",
        "--key-check-timeout",
        "10s",
    ]);
    fs::write(m.path("data"), b"served until the key is revoked").unwrap();

    // Swapped in by a rename: a key check between a removal and a mkfifo would find no
    // header at all, and lock for that.
    let header = m.backing.join("xtsfs.header");
    let fifo = m.backing.join("fifo");
    common::sys::mkfifo(&fifo, 0o600).unwrap();
    fs::rename(&fifo, &header).unwrap();
    fs::rename(&key, env.path("kek.pem.revoked")).unwrap();

    assert!(
        reaches_state(&env, &m.mountpoint, "locked", Duration::from_secs(15)),
        "the mount still serves"
    );
    assert!(is_eacces(fs::read(m.path("data"))));
    // The header is unreadable, so status reports the daemon's view alone.
    let report = live_state(&env, &m.mountpoint);
    let error = report["live"]["last_check"]["error"].as_str().unwrap_or("");
    assert!(error.contains("a FIFO, not a regular file"), "{report}");
    assert_unmounts_quickly(&env, &mut m);
}

#[test]
fn header_lock_and_temporary_header_never_block() {
    let env = TestEnv::new();
    let backing = env.backing();
    assert_exit(&env.xtsfs(&["init", path_str(&backing)]), 0);
    let lock = backing.join("xtsfs.lock");

    // A foreign flock on the lock file: rewrap gives up after a few seconds of retries.
    let held = fs::File::create(&lock).unwrap();
    // SAFETY: a valid fd.
    let locked = unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(locked, 0);
    let output = xtsfs_bounded(
        &env,
        &[],
        &["rewrap", path_str(&backing), "--key", "mmk:other"],
        Duration::from_secs(20),
    )
    .expect("rewrap blocked on a foreign lock");
    assert_exit(&output, 5);
    assert!(stderr(&output).contains("has held"), "{}", stderr(&output));
    drop(held);

    // A FIFO in place of the lock file, then in place of the temporary header.
    fs::remove_file(&lock).unwrap();
    common::sys::mkfifo(&lock, 0o600).unwrap();
    let output = xtsfs_bounded(
        &env,
        &[],
        &["rewrap", path_str(&backing), "--key", "mmk:other"],
        Duration::from_secs(10),
    )
    .expect("rewrap blocked on a FIFO lock file");
    assert_exit(&output, 4);
    assert!(
        stderr(&output).contains("a FIFO, not a regular file"),
        "{}",
        stderr(&output)
    );
    fs::remove_file(&lock).unwrap();
    common::sys::mkfifo(&backing.join("xtsfs.header.tmp"), 0o600).unwrap();
    let output = xtsfs_bounded(
        &env,
        &[],
        &["rewrap", path_str(&backing), "--key", "mmk:other"],
        Duration::from_secs(10),
    )
    .expect("rewrap blocked on a FIFO temporary header");
    assert_exit(&output, 0);
    assert_eq!(env.status_json(&backing)["protector"]["key_id"], "other");
}

/// A volume whose key is KMS program `name`, mounted with a key check every 300 ms
/// under the deadline `timeout`, and `options`.
fn mounted_under_kms<'a>(
    env: &'a TestEnv,
    name: &str,
    timeout: &str,
    options: &[&str],
) -> (Kms, common::mount::Mounted<'a>) {
    let kms = Kms::new(env, name);
    kms.add_version(env, 1);
    let mut m = env.initialized(&["--key", &kms.key()]);
    let checks = [
        "--key-check-interval",
        "300ms",
        "--key-check-timeout",
        timeout,
    ];
    m.mount(&[&checks[..], options].concat());
    (kms, m)
}

/// A KMS program that never answers in time: the check overruns its deadline, counts as
/// failed, and (no grace) locks; unmount does not wait for the program.
#[test]
fn a_key_check_that_hangs_fails_at_its_deadline() {
    let env = TestEnv::new();
    let (kms, mut m) = mounted_under_kms(&env, "hang", "1s", &["--key-unavailable-grace", "0s"]);
    fs::write(m.path("data"), b"x").unwrap();
    kms.set("sleep", "60");
    assert!(
        reaches_state(&env, &m.mountpoint, "locked", Duration::from_secs(15)),
        "the mount still serves"
    );
    assert!(is_eacces(fs::read(m.path("data"))));
    assert_unmounts_quickly(&env, &mut m);
}

/// A key check stuck in a KMS program when the volume is unmounted: the unmount does not
/// wait for it, and the program (with what it started) does not outlive the daemon,
/// although its own time limit (the check's 20 s) is far off.
#[test]
fn unmount_kills_a_kms_program_that_a_key_check_waits_for() {
    let env = TestEnv::new();
    let (kms, mut m) = mounted_under_kms(&env, "stuck", "20s", &[]);
    kms.set("sleep", "60");
    assert!(
        kms.started_sleeping(Duration::from_secs(10)),
        "no key check ran the program"
    );
    assert_unmounts_quickly(&env, &mut m);
    assert!(
        !kms.sleeper_still_running_after(Duration::from_secs(5)),
        "the KMS program outlived the daemon"
    );
}

// --- High: rollback -------------------------------------------------------------------------

#[test]
fn restoring_an_old_header_does_not_undo_a_revocation() {
    let env = TestEnv::new();
    let backing = env.backing();
    assert_exit(&env.xtsfs(&["init", path_str(&backing)]), 0);
    let header = backing.join("xtsfs.header");
    let old_header = fs::read(&header).unwrap();

    let key = env.rsa_key("kek.pem", 2048);
    let pem = format!("pem:{}", key.display());
    assert_exit(
        &env.xtsfs(&["rewrap", path_str(&backing), "--key", &pem]),
        0,
    );
    let mut m = env.existing();
    m.mount_checking_key(&[]);
    fs::write(m.path("data"), b"locked away").unwrap();
    fs::rename(&key, env.path("kek.pem.revoked")).unwrap();
    wait_for_state(&env, &m.mountpoint, "locked");

    // The host's own platform key unwraps the old header, and its MAC is right.
    fs::write(&header, &old_header).unwrap();
    let deadline = Instant::now() + Duration::from_secs(2);
    let mut report = live_state(&env, &m.mountpoint);
    while Instant::now() < deadline {
        report = live_state(&env, &m.mountpoint);
        assert_eq!(report["live"]["state"], "locked", "{report}");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(is_eacces(fs::read(m.path("data"))));
    let error = report["live"]["last_check"]["error"].as_str().unwrap_or("");
    assert!(error.contains("header rollback"), "{report}");
    assert_eq!(report["key_reachable"], false, "status refuses it too");
    assert!(
        report["key_error"]
            .as_str()
            .unwrap_or("")
            .contains("header rollback: its epoch is 1, but this host last saw epoch 2"),
        "{report}"
    );
    m.unmount_settled();

    // A fresh mount refuses it, and says what to do.
    let output = env.xtsfs(&["mount", path_str(&backing), path_str(&m.mountpoint)]);
    assert_exit(&output, 4);
    let err = stderr(&output);
    assert!(err.contains("header rollback"), "{err}");
    assert!(err.contains("--accept-header-from-elsewhere"), "{err}");
    assert!(err.contains("rewrap on this host"), "{err}");

    // Explicitly accepted, it mounts, and becomes what the host expects.
    m.mount(&["--accept-header-from-elsewhere"]);
    assert_eq!(fs::read(m.path("data")).unwrap(), b"locked away");
    m.unmount_settled();
    m.mount(&[]);
    m.unmount_settled();
}

#[test]
fn format_1_volumes_get_protector_pinning() {
    let env = TestEnv::new();
    let backing = env.backing();
    assert_exit(
        &env.xtsfs(&["init", path_str(&backing), "--format", "1"]),
        0,
    );
    let header = backing.join("xtsfs.header");
    let old_header = fs::read(&header).unwrap();
    assert_exit(
        &env.xtsfs(&["rewrap", path_str(&backing), "--key", "mmk:second"]),
        0,
    );
    fs::write(&header, &old_header).unwrap();
    let output = env.xtsfs(&["status", path_str(&backing)]);
    assert_exit(&output, 4);
    assert!(
        stderr(&output).contains("the header changed without a rewrap on this host"),
        "{}",
        stderr(&output)
    );
    assert!(
        stdout(&output).contains("upgrade with: xtsfs upgrade"),
        "{}",
        stdout(&output)
    );
}

#[test]
fn a_volume_rewrapped_on_another_host_needs_explicit_acceptance() {
    let env = TestEnv::new();
    let backing = env.backing();
    let host_b = env.path("host-b-state");
    let on_b = [("XTSFS_HOST_STATE_DIR", path_str(&host_b))];
    assert_exit(&env.xtsfs(&["init", path_str(&backing)]), 0);
    assert_exit(&env.xtsfs(&["status", path_str(&backing)]), 0);

    // Host B sees the volume for the first time: accepted and recorded.
    assert_exit(
        &env.xtsfs_with_env(&on_b, &["status", path_str(&backing)]),
        0,
    );
    assert_exit(
        &env.xtsfs_with_env(&on_b, &["rewrap", path_str(&backing), "--key", "mmk:on-b"]),
        0,
    );
    // Back on host A: the protector changed without a rewrap here.
    let output = env.xtsfs(&["rewrap", path_str(&backing), "--key", "mmk:again"]);
    assert_exit(&output, 4);
    assert!(
        stderr(&output).contains("without a rewrap on this host"),
        "{}",
        stderr(&output)
    );
    assert_exit(
        &env.xtsfs(&[
            "rewrap",
            path_str(&backing),
            "--key",
            "mmk:again",
            "--accept-header-from-elsewhere",
        ]),
        0,
    );
    assert_exit(&env.xtsfs(&["status", path_str(&backing)]), 0);

    // The records are root-only, beside the platform key store.
    let state = env.path("volume-state");
    assert_eq!(
        fs::metadata(&state).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let id = env.status_json(&backing)["volume_id"]
        .as_str()
        .unwrap()
        .to_string();
    let record: serde_json::Value =
        serde_json::from_slice(&fs::read(state.join(format!("{id}.json"))).unwrap()).unwrap();
    assert_eq!(record["current"]["epoch"], 3);
}

// --- Outages are not revocations ----------------------------------------------------------

#[test]
fn an_unavailable_kms_degrades_then_locks_and_a_denial_locks_at_once() {
    let env = TestEnv::new();
    let audit = env.path("audit.jsonl");
    let kms = Kms::new(&env, "outage");
    kms.add_version(&env, 1);
    let mut m = env.initialized(&["--key", &kms.key()]);
    m.mount(&[
        "--key-check-interval",
        "200ms",
        "--key-check-timeout",
        "10s",
        "--key-unavailable-grace",
        "3s",
        "--audit-log",
        path_str(&audit),
    ]);
    fs::write(m.path("data"), b"still served").unwrap();

    kms.set("unavailable", "");
    let report = wait_for_state(&env, &m.mountpoint, "degraded");
    assert!(report["live"]["degraded_since"].is_string(), "{report}");
    assert_eq!(fs::read(m.path("data")).unwrap(), b"still served");
    let events = fs::read_to_string(&audit).unwrap();
    assert!(events.contains("\"event\":\"degraded\""), "{events}");
    // The grace period runs out: --on-key-loss (lock) applies.
    wait_for_state(&env, &m.mountpoint, "locked");
    assert!(is_eacces(fs::read(m.path("data"))));

    kms.unset("unavailable");
    wait_for_state(&env, &m.mountpoint, "serving");
    assert_eq!(fs::read(m.path("data")).unwrap(), b"still served");

    // A definite answer locks at once, whatever the grace period.
    m.unmount_settled();
    m.mount(&[
        "--key-check-interval",
        "200ms",
        "--key-check-timeout",
        "10s",
        "--key-unavailable-grace",
        "5m",
    ]);
    kms.set("deny", "");
    wait_for_state(&env, &m.mountpoint, "locked");
    assert!(is_eacces(fs::read(m.path("data"))));
    kms.unset("deny");
    wait_for_state(&env, &m.mountpoint, "serving");
}

// --- Smaller findings ---------------------------------------------------------------------

#[test]
fn rewrap_never_signals_a_process_that_reused_the_daemons_pid() {
    let env = TestEnv::new();
    let backing = env.backing();
    assert_exit(&env.xtsfs(&["init", path_str(&backing)]), 0);
    let mut bystander = Command::new("sleep").arg("60").spawn().unwrap();
    // A status file left by a daemon that died, whose pid now names the bystander.
    let status = serde_json::json!({
        "pid": bystander.id(),
        "state": "serving",
        "backing": backing.canonicalize().unwrap(),
        "mountpoint": env.path("mnt"),
        "volume_id": "x",
        "ephemeral": false,
        "on_key_loss": "lock",
        "key_check_interval_secs": 60.0,
        "last_check": null,
        "protector": null,
    });
    let path = xtsfs::live::status_path(&env.path("run"), &backing.canonicalize().unwrap());
    fs::create_dir_all(path.parent().unwrap()).unwrap();
    fs::write(&path, status.to_string()).unwrap();
    assert_exit(
        &env.xtsfs(&["rewrap", path_str(&backing), "--key", "mmk:other"]),
        0,
    );
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        bystander.try_wait().unwrap().is_none(),
        "rewrap killed an unrelated process"
    );
    let _ = bystander.kill();
    let _ = bystander.wait();
}

#[test]
fn status_prints_no_control_characters_from_the_header() {
    let env = TestEnv::new();
    let backing = env.backing();
    assert_exit(&env.xtsfs(&["init", path_str(&backing)]), 0);
    let header = backing.join("xtsfs.header");
    let bytes = fs::read(&header).unwrap();
    let text = String::from_utf8_lossy(&bytes[14..bytes.len() - 32]).into_owned();
    let evil = text.replace(
        "\"mmk:default\"",
        "\"mmk:\\u001b]0;owned\\u0007\\u001b[2J\"",
    );
    assert_ne!(evil, text);
    let mut forged = bytes[..10].to_vec();
    forged.extend_from_slice(&(evil.len() as u32).to_le_bytes());
    forged.extend_from_slice(evil.as_bytes());
    forged.extend_from_slice(&bytes[bytes.len() - 32..]);
    fs::write(&header, forged).unwrap();

    let output = env.xtsfs(&["status", path_str(&backing)]);
    assert_ne!(output.status.code(), Some(0));
    let out = stdout(&output);
    assert!(out.contains("key ref:   mmk:\\u{1b}]0;owned"), "{out}");
    for text in [&out, &stderr(&output)] {
        assert!(
            !text.chars().any(|c| c.is_control() && c != '\n'),
            "control characters reach the terminal: {text:?}"
        );
    }
}

#[test]
fn trusted_key_directories_are_checked_like_strict_modes_and_versions_are_plain() {
    let env = TestEnv::new();
    let kms = Kms::new(&env, "strict");
    kms.add_version(&env, 1);
    // The program in a directory under a world-writable (not sticky) one.
    let open = env.path("open");
    let dir = open.join("kms");
    fs::create_dir_all(&dir).unwrap();
    set_mode(&open, 0o777);
    set_mode(&dir, 0o755);
    let program = dir.join("kms.sh");
    fs::copy(&kms.program, &program).unwrap();
    set_mode(&program, 0o755);
    let backing = env.backing();
    let key = format!("command:{}", program.display());
    // Given with --key, it is the user's own choice.
    assert_exit(&env.xtsfs(&["init", path_str(&backing), "--key", &key]), 0);
    // Named by the header, it is refused: someone could have swapped it.
    let output = env.xtsfs(&["status", path_str(&backing)]);
    assert_exit(&output, 3);
    assert!(
        stderr(&output).contains(&format!("permissions 0777 for '{}'", open.display())),
        "{}",
        stderr(&output)
    );
    set_mode(&open, 0o755);
    assert_exit(&env.xtsfs(&["status", path_str(&backing)]), 0);

    for bad in ["v1 x", "v1\u{1b}[31m", "", "v1\"", &"v".repeat(300)] {
        let output = env.xtsfs(&[
            "init",
            path_str(&env.path("other")),
            "--key",
            &format!("{key}#{bad}"),
        ]);
        assert_exit(&output, 2);
    }
}

#[test]
fn directory_handles_drop_their_listing_at_a_lock() {
    let env = TestEnv::new();
    let key = env.rsa_key("kek.pem", 2048);
    let mut m = env.initialized(&["--key", &format!("pem:{}", key.display())]);
    m.mount_checking_key(&[]);
    fs::create_dir(m.path("dir")).unwrap();
    fs::write(m.path("dir/secret-name"), b"").unwrap();
    let dir = m.path("dir");
    let c = std::ffi::CString::new(path_str(&dir)).unwrap();
    // SAFETY: a valid path; the stream is closed below.
    let stream = unsafe { libc::opendir(c.as_ptr()) };
    assert!(!stream.is_null());

    fs::rename(&key, env.path("kek.pem.away")).unwrap();
    wait_for_state(&env, &m.mountpoint, "locked");
    fs::rename(env.path("kek.pem.away"), &key).unwrap();
    wait_for_state(&env, &m.mountpoint, "serving");

    // The handle opened before the lock lost its listing; a new one lists afresh.
    // SAFETY: a valid stream; errno is this thread's.
    let errno = unsafe {
        *libc::__errno_location() = 0;
        let entry = libc::readdir(stream);
        let errno = *libc::__errno_location();
        libc::closedir(stream);
        assert!(entry.is_null(), "the old handle still lists");
        errno
    };
    assert_eq!(errno, libc::EACCES);
    let names: Vec<_> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["secret-name"]);
}

// --- fixtures -----------------------------------------------------------------------------
