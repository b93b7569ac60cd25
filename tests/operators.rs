//! What operators run: mount(8) with `-t fuse.xtsfs`, an fstab line (`mount -T`),
//! umount(8), the systemd units in contrib/systemd, the man page and the completions.
//!
//! mount(8) runs mount.fuse3, which finds `xtsfs` on mount's own fixed PATH, not the
//! test's: while these tests run, /usr/local/bin/xtsfs is this build (any xtsfs found
//! there is put back afterwards), and the tests take turns through a lock file.

mod common;

use std::fs::{self, File};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::mount::{assert_success, require_fuse};
use common::{path_str, stderr, wait_until, TestEnv};

const INSTALLED: &str = "/usr/local/bin/xtsfs";

/// /usr/local/bin/xtsfs is this build while it lives.
struct Installed {
    _lock: File,
    saved: Option<PathBuf>,
}

impl Installed {
    fn new() -> Self {
        let lock = File::create("/run/lock/xtsfs-operators-test.lock").expect("lock file");
        // SAFETY: a valid fd; blocks until another test run is done with the binary.
        assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
        let installed = Path::new(INSTALLED);
        let saved = installed.symlink_metadata().is_ok().then(|| {
            let saved = PathBuf::from(format!("{INSTALLED}.saved-by-test-{}", std::process::id()));
            fs::rename(installed, &saved).expect("put the installed xtsfs aside");
            saved
        });
        std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_xtsfs"), installed).expect("install");
        Installed { _lock: lock, saved }
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        let _ = fs::remove_file(INSTALLED);
        if let Some(saved) = &self.saved {
            let _ = fs::rename(saved, INSTALLED);
        }
    }
}

/// The `-o` options that give a mount this environment's key store and run directory
/// (mount(8) passes no environment variables on).
fn env_options(env: &TestEnv) -> String {
    format!(
        "platform_key_dir={},run_dir={},trusted_key_dir={}",
        path_str(&env.platform_key_dir()),
        path_str(&env.path("run")),
        path_str(env.root())
    )
}

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"))
}

/// The mount's options from /proc/self/mountinfo (per-mount and super block), if mounted.
fn mount_options(mountpoint: &Path) -> Option<String> {
    let mountpoint = mountpoint.canonicalize().ok()?;
    fs::read_to_string("/proc/self/mountinfo")
        .ok()?
        .lines()
        .find(|line| line.split(' ').nth(4) == Some(path_str(&mountpoint)))
        .map(str::to_string)
}

/// Waits (bounded) until the daemon of `backing` has exited after an unmount.
fn wait_daemon_gone(env: &TestEnv, backing: &Path) {
    wait_until(
        Duration::from_secs(20),
        Duration::from_millis(50),
        "the daemon did not exit after umount",
        || env.status_json(backing)["live"].is_null(),
    );
}

#[test]
fn mount_t_fuse_xtsfs_takes_every_option_and_umount_unmounts() {
    require_fuse();
    let _installed = Installed::new();
    let env = TestEnv::new();
    let m = env.initialized(&[]);
    let options = format!(
        "allow_other,key_check_interval=30s,nofail,_netdev,x-systemd.requires=foo.service,\
         noatime,log_file={},{}",
        path_str(&env.path("daemon.log")),
        env_options(&env)
    );
    let backing = path_str(&m.backing);
    let mnt = path_str(&m.mountpoint);
    assert_success(
        &run("mount", &["-t", "fuse.xtsfs", backing, mnt, "-o", &options]),
        "mount -t fuse.xtsfs",
    );
    // mount(8) returns only once the mount is usable.
    fs::write(m.path("hello"), b"through mount(8)").unwrap();
    let info = mount_options(&m.mountpoint).expect("mounted");
    assert!(info.contains("fuse.xtsfs"), "{info}");
    assert!(info.contains("noatime"), "{info}");
    assert!(info.contains("allow_other"), "{info}");
    let status = env.status_json(&m.backing);
    assert_eq!(status["live"]["key_check_interval_secs"], 30.0, "{status}");
    assert!(env.path("daemon.log").exists(), "log_file= was used");

    assert_success(&run("umount", &[mnt]), "umount");
    assert!(mount_options(&m.mountpoint).is_none(), "unmounted");
    wait_daemon_gone(&env, &m.backing);
    let mut m = m;
    m.mount(&[]);
    assert_eq!(fs::read(m.path("hello")).unwrap(), b"through mount(8)");
}

#[test]
fn an_fstab_line_mounts_with_mount_t_file() {
    require_fuse();
    let _installed = Installed::new();
    let env = TestEnv::new();
    let m = env.initialized(&[]);
    let fstab = env.path("fstab");
    let line = |options: &str| {
        format!(
            "# xtsfs volume\n{} {} fuse.xtsfs {options},{} 0 0\n",
            path_str(&m.backing),
            path_str(&m.mountpoint),
            env_options(&env)
        )
    };
    let mnt = path_str(&m.mountpoint);
    fs::write(&fstab, line("allow_other,key_check_interval=45s,nofail")).unwrap();
    assert_success(
        &run("mount", &["-T", path_str(&fstab), mnt]),
        "mount -T fstab",
    );
    fs::write(m.path("f"), b"fstab").unwrap();
    assert_eq!(
        env.status_json(&m.backing)["live"]["key_check_interval_secs"],
        45.0
    );
    assert_success(&run("umount", &[mnt]), "umount");
    wait_daemon_gone(&env, &m.backing);

    // ro is --read-only: the daemon refuses writes too.
    fs::write(&fstab, line("ro")).unwrap();
    assert_success(
        &run("mount", &["-T", path_str(&fstab), mnt]),
        "mount -T fstab, ro",
    );
    assert_eq!(fs::read(m.path("f")).unwrap(), b"fstab");
    let error = fs::write(m.path("g"), b"x").unwrap_err();
    assert_eq!(error.raw_os_error(), Some(libc::EROFS), "{error}");
    assert_success(&run("umount", &[mnt]), "umount");
    wait_daemon_gone(&env, &m.backing);
}

#[test]
fn bad_mount_options_are_clear_errors_that_name_the_option() {
    require_fuse();
    let _installed = Installed::new();
    let env = TestEnv::new();
    let m = env.initialized(&[]);
    let (backing, mnt) = (path_str(&m.backing), path_str(&m.mountpoint));
    for (option, says) in [
        ("bogus_option", "unknown mount option 'bogus_option'"),
        ("key_check_interval", "'key_check_interval' needs a value"),
        ("allow_other=yes", "'allow_other' takes no value"),
        ("foreground", "unknown mount option 'foreground'"),
        ("key_check_interval=1fortnight", "invalid value"),
    ] {
        let options = format!("{option},{}", env_options(&env));
        let output = run("mount", &["-t", "fuse.xtsfs", backing, mnt, "-o", &options]);
        assert!(!output.status.success(), "{option} was accepted");
        assert!(
            stderr(&output).contains(says),
            "{option}: {}",
            stderr(&output)
        );
        assert!(
            mount_options(&m.mountpoint).is_none(),
            "{option}: not mounted"
        );
    }
    // The same rule for `xtsfs mount -o`.
    let output = env.xtsfs(&["mount", backing, mnt, "-o", "noatime,max_read=4096"]);
    assert_eq!(output.status.code(), Some(2));
    assert!(stderr(&output).contains("unknown mount option 'max_read=4096'"));
}

#[test]
fn a_key_error_fails_mount_8_with_the_xtsfs_message() {
    require_fuse();
    let _installed = Installed::new();
    let env = TestEnv::new();
    let key = env.rsa_key("key.pem", 2048);
    let m = env.initialized(&["--key", &format!("pem:{}", path_str(&key))]);
    fs::remove_file(&key).unwrap();
    let options = env_options(&env);
    let output = run(
        "mount",
        &[
            "-t",
            "fuse.xtsfs",
            path_str(&m.backing),
            path_str(&m.mountpoint),
            "-o",
            &options,
        ],
    );
    assert!(!output.status.success(), "mounted without its key");
    assert!(
        stderr(&output).contains("xtsfs: error:"),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("key.pem"), "{}", stderr(&output));
    assert!(mount_options(&m.mountpoint).is_none());
}

#[test]
fn the_systemd_units_verify() {
    let dir = tempfile::tempdir().unwrap();
    let contrib = Path::new(env!("CARGO_MANIFEST_DIR")).join("contrib/systemd");
    let mut units = Vec::new();
    for name in ["xtsfs-redis.service", "mnt-xtsfs.mount"] {
        // systemd-analyze checks that ExecStart's program exists.
        let text = fs::read_to_string(contrib.join(name))
            .unwrap()
            .replace(INSTALLED, env!("CARGO_BIN_EXE_xtsfs"));
        fs::write(dir.path().join(name), text).unwrap();
        units.push(dir.path().join(name));
    }
    let output = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .args(&units)
        .output()
        .expect("run systemd-analyze (Debian package systemd)");
    assert_success(&output, "systemd-analyze verify");
    let drop_in = fs::read_to_string(contrib.join("redis-server.service.d/xtsfs.conf")).unwrap();
    assert!(drop_in.contains("Requires=xtsfs-redis.service"));
    let mount = fs::read_to_string(contrib.join("mnt-xtsfs.mount")).unwrap();
    assert!(mount.contains("Type=fuse.xtsfs"));
}

#[test]
fn man_page_and_completions_name_every_subcommand() {
    let env = TestEnv::new();
    let subcommands = [
        "init",
        "status",
        "rewrap",
        "upgrade",
        "fsck",
        "mount",
        "unmount",
        "platform-key",
    ];
    for what in ["man", "bash", "zsh", "fish"] {
        let output = env.xtsfs(&["generate", what]);
        assert_success(&output, what);
        let text = String::from_utf8(output.stdout).unwrap();
        for subcommand in subcommands {
            // roff escapes '-' in the man page.
            let spelled = match what {
                "man" => subcommand.replace('-', "\\-"),
                _ => subcommand.to_string(),
            };
            assert!(
                text.contains(&spelled),
                "{what} does not mention {subcommand}"
            );
        }
    }
    let man = env.xtsfs(&["generate", "man"]).stdout;
    let man = String::from_utf8(man).unwrap();
    assert!(
        man.starts_with(".ie") || man.contains(".TH xtsfs 1"),
        "roff: {}",
        &man[..80]
    );
}

#[test]
fn install_sh_installs_the_binary_man_page_completions_and_units() {
    let env = TestEnv::new();
    let prefix = env.path("prefix");
    let output = Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/install.sh"))
        .arg(&prefix)
        .args(["--bin", env!("CARGO_BIN_EXE_xtsfs")])
        .output()
        .expect("run scripts/install.sh");
    assert_success(&output, "install.sh");
    for file in [
        "bin/xtsfs",
        "share/man/man1/xtsfs.1",
        "share/bash-completion/completions/xtsfs",
        "share/zsh/site-functions/_xtsfs",
        "share/fish/vendor_completions.d/xtsfs.fish",
        "lib/systemd/system/xtsfs-redis.service",
        "lib/systemd/system/mnt-xtsfs.mount",
        "lib/systemd/system/redis-server.service.d/xtsfs.conf",
    ] {
        let path = prefix.join(file);
        let size = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
        assert!(size > 0, "{file} installed");
    }
    let unit = fs::read_to_string(prefix.join("lib/systemd/system/xtsfs-redis.service")).unwrap();
    assert!(unit.contains(&format!("ExecStart={}/bin/xtsfs mount", path_str(&prefix))));
    let version = run(path_str(&prefix.join("bin/xtsfs")), &["--version"]);
    assert_success(&version, "installed xtsfs --version");
}
