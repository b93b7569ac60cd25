//! `xtsfs mount` / `xtsfs unmount` behaviour: readiness, errors and exit codes, busy
//! mount points, open files at unmount, signals in the foreground.

mod common;

use std::fs::{self, File};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::mount::{assert_success, require_fuse};
use common::{path_str, stderr, wait_until, TestEnv};

/// The /proc/mounts line for `mountpoint`, if it is mounted.
fn mount_line(mountpoint: &Path) -> Option<String> {
    let mountpoint = fs::canonicalize(mountpoint).ok()?;
    fs::read_to_string("/proc/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split(' ').nth(1) == Some(path_str(&mountpoint)))
        .map(str::to_string)
}

#[test]
fn mount_is_usable_on_return_and_shows_as_fuse_xtsfs() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    // `mounted` returned only after `xtsfs mount` exited 0: the mount must answer now.
    fs::write(m.path("ready"), b"yes").unwrap();
    let line = mount_line(&m.mountpoint).expect("mounted");
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(
        fields[0],
        path_str(&fs::canonicalize(&m.backing).unwrap()),
        "source is the backing dir"
    );
    assert_eq!(fields[2], "fuse.xtsfs");
}

#[test]
fn mount_errors_have_exit_codes_and_leave_nothing_mounted() {
    let env = TestEnv::new();
    let m = env.initialized(&[]);
    let (backing, mnt) = (path_str(&m.backing), path_str(&m.mountpoint));

    let other_key = env.rsa_key("other.pem", 2048);
    let wrong_key = env.xtsfs(&[
        "mount",
        backing,
        mnt,
        "--key",
        &format!("pem:{}", other_key.display()),
    ]);
    assert_eq!(wrong_key.status.code(), Some(3), "{}", stderr(&wrong_key));
    assert!(
        stderr(&wrong_key).contains("wrong key"),
        "{}",
        stderr(&wrong_key)
    );

    fs::create_dir(env.path("empty")).unwrap();
    let not_volume = env.xtsfs(&["mount", path_str(&env.path("empty")), mnt]);
    assert_eq!(not_volume.status.code(), Some(4), "{}", stderr(&not_volume));

    let no_mountpoint = env.xtsfs(&["mount", backing, path_str(&env.path("missing"))]);
    assert_eq!(
        no_mountpoint.status.code(),
        Some(5),
        "{}",
        stderr(&no_mountpoint)
    );
    assert!(stderr(&no_mountpoint).contains("mount point"));

    assert!(
        mount_line(&m.mountpoint).is_none(),
        "a failed mount leaves nothing mounted"
    );
    for output in [&wrong_key, &not_volume, &no_mountpoint] {
        assert!(
            stderr(output).starts_with("xtsfs: error:"),
            "{}",
            stderr(output)
        );
        assert!(!stderr(output).contains("panicked"));
    }
}

#[test]
fn busy_mount_point_and_second_mount_of_a_volume_are_refused() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let again = env.xtsfs(&["mount", path_str(&m.backing), path_str(&m.mountpoint)]);
    assert_eq!(again.status.code(), Some(5));
    assert!(
        stderr(&again).contains("already a mount point"),
        "{}",
        stderr(&again)
    );

    let second = env.path("second");
    fs::create_dir(&second).unwrap();
    let twice = env.xtsfs(&["mount", path_str(&m.backing), path_str(&second)]);
    assert_eq!(twice.status.code(), Some(5));
    assert!(
        stderr(&twice).contains("already mounted"),
        "{}",
        stderr(&twice)
    );
    assert!(mount_line(&second).is_none());
}

#[test]
fn unmount_with_open_files_is_refused_then_succeeds_or_detaches_lazily() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    fs::write(m.path("open"), b"data").unwrap();
    let held = File::open(m.path("open")).unwrap();
    let busy = m.unmount();
    assert_eq!(busy.status.code(), Some(5));
    assert!(stderr(&busy).contains("busy"), "{}", stderr(&busy));
    assert_eq!(
        fs::read(m.path("open")).unwrap(),
        b"data",
        "still serving after a refused unmount"
    );
    drop(held);
    assert_success(&m.unmount(), "unmount after close");
    assert!(mount_line(&m.mountpoint).is_none());

    m.mount(&[]);
    let held = File::open(m.path("open")).unwrap();
    assert_success(
        &env.xtsfs(&["unmount", "--lazy", path_str(&m.mountpoint)]),
        "lazy unmount",
    );
    assert!(mount_line(&m.mountpoint).is_none(), "detached at once");
    drop(held);

    let not_ours = env.xtsfs(&["unmount", path_str(env.root())]);
    assert_eq!(not_ours.status.code(), Some(5));
    assert!(stderr(&not_ours).contains("not an xtsfs mount"));
}

#[test]
fn foreground_mount_unmounts_cleanly_on_sigterm_and_sigint() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    fs::write(m.path("kept"), b"before signal").unwrap();
    m.unmount();
    for signal in [libc::SIGTERM, libc::SIGINT] {
        let mut daemon = Command::new(env!("CARGO_BIN_EXE_xtsfs"))
            .args([
                "mount",
                "--foreground",
                path_str(&m.backing),
                path_str(&m.mountpoint),
            ])
            .env("XTSFS_PLATFORM_KEY_DIR", env.platform_key_dir())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_until(
            Duration::from_secs(20),
            Duration::from_millis(10),
            "foreground mount never appeared",
            || mount_line(&m.mountpoint).is_some(),
        );
        assert_eq!(fs::read(m.path("kept")).unwrap(), b"before signal");
        // SAFETY: signalling our own child.
        unsafe { libc::kill(daemon.id() as i32, signal) };
        let status = daemon.wait().unwrap();
        assert!(status.success(), "exit after signal {signal}: {status}");
        assert!(
            mount_line(&m.mountpoint).is_none(),
            "unmounted on signal {signal}"
        );
    }
}

#[test]
fn missing_dev_fuse_is_a_clear_error() {
    require_fuse();
    let env = TestEnv::new();
    let m = env.initialized(&[]);
    // A private mount namespace whose /dev has no fuse device.
    let script = format!(
        "mount -t tmpfs none /dev && exec {} mount --foreground {} {}",
        env!("CARGO_BIN_EXE_xtsfs"),
        path_str(&m.backing),
        path_str(&m.mountpoint)
    );
    let output = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "sh", "-c", &script])
        .env("XTSFS_PLATFORM_KEY_DIR", env.platform_key_dir())
        .output()
        .unwrap();
    assert_eq!(output.status.code(), Some(5), "{}", stderr(&output));
    assert!(stderr(&output).contains("/dev/fuse"), "{}", stderr(&output));
}
