//! Mounted volumes for integration tests: init + mount in a TestEnv, unmount on drop.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{DirEntryExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::thread;
use std::time::{Duration, Instant};

use super::{contains, path_str, TestEnv};

/// `xtsfs mount` arguments for a key check every 100 ms with a 10 s timeout: a test sees
/// a key change at once.
pub const FAST_KEY_CHECK: [&str; 4] = [
    "--key-check-interval",
    "100ms",
    "--key-check-timeout",
    "10s",
];

/// A volume mounted by the real `xtsfs mount` (as root, over /dev/fuse).
pub struct Mounted<'a> {
    env: &'a TestEnv,
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    mounted: bool,
}

impl TestEnv {
    /// Inits a volume (default: MMK) with `init_args` and mounts it.
    pub fn mounted(&self, init_args: &[&str]) -> Mounted<'_> {
        let mut mounted = self.initialized(init_args);
        mounted.mount(&[]);
        mounted
    }

    /// Inits a volume with `init_args`, ready to be mounted with options of the test's own.
    pub fn initialized(&self, init_args: &[&str]) -> Mounted<'_> {
        let backing = self.backing();
        let mut args = vec!["init", path_str(&backing)];
        args.extend_from_slice(init_args);
        assert_success(&self.xtsfs(&args), "init");
        self.existing()
    }

    /// The volume already in the backing directory, ready to be mounted.
    pub fn existing(&self) -> Mounted<'_> {
        require_fuse();
        let backing = self.backing();
        let mountpoint = self.path("mnt");
        fs::create_dir_all(&mountpoint).expect("create mount point");
        Mounted {
            env: self,
            backing,
            mountpoint,
            mounted: false,
        }
    }
}

impl Mounted<'_> {
    /// A path inside the mount.
    pub fn path(&self, relative: &str) -> PathBuf {
        self.mountpoint.join(relative)
    }

    /// The backing directory holding the encrypted tree.
    pub fn tree(&self) -> PathBuf {
        self.backing.join("tree")
    }

    /// Mounts with [`FAST_KEY_CHECK`] and `extra` arguments.
    pub fn mount_checking_key(&mut self, extra: &[&str]) {
        let mut args = FAST_KEY_CHECK.to_vec();
        args.extend_from_slice(extra);
        self.mount(&args);
    }

    pub fn mount(&mut self, extra: &[&str]) {
        let mut args = vec!["mount", path_str(&self.backing), path_str(&self.mountpoint)];
        args.extend_from_slice(extra);
        assert_success(&self.env.xtsfs(&args), "mount");
        self.mounted = true;
    }

    /// `xtsfs unmount`, which returns once the daemon has let go of the volume.
    pub fn unmount(&mut self) -> Output {
        let output = self.env.xtsfs(&["unmount", path_str(&self.mountpoint)]);
        if output.status.success() {
            self.mounted = false;
        }
        output
    }

    /// The backing entry that `relative` (inside the mount) is stored as, found by its
    /// inode number: the mount reports backing inode numbers as `st_ino`.
    pub fn backing_path(&self, relative: &str) -> PathBuf {
        let ino = fs::symlink_metadata(self.path(relative))
            .expect("stat in mount")
            .ino();
        let mut stack = vec![self.tree()];
        while let Some(dir) = stack.pop() {
            for entry in fs::read_dir(&dir).expect("list backing dir") {
                let entry = entry.expect("backing entry");
                if entry.ino() == ino {
                    return entry.path();
                }
                if entry.file_type().expect("backing file type").is_dir() {
                    stack.push(entry.path());
                }
            }
        }
        panic!("no backing entry has inode {ino} ({relative})");
    }

    /// Unmounts, retrying for a while if the mount is busy. Test threads share one
    /// process: a child another thread is spawning holds a copy of every open fd until it
    /// execs, so a file just closed here can keep the mount busy for a moment.
    pub fn unmount_settled(&mut self) {
        assert_success(&self.unmount_retrying(), "unmount");
    }

    /// `unmount`, retried while it fails with "busy" for up to 10 s; the last attempt's
    /// output.
    pub fn unmount_retrying(&mut self) -> Output {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let output = self.unmount();
            let busy = String::from_utf8_lossy(&output.stderr).contains("busy");
            if output.status.success() || !busy || Instant::now() > deadline {
                return output;
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn remount(&mut self) {
        self.remount_with(&[]);
    }

    /// Unmounts and mounts again with `extra` mount arguments.
    pub fn remount_with(&mut self, extra: &[&str]) {
        self.unmount_settled();
        self.mount(extra);
    }
}

impl Drop for Mounted<'_> {
    fn drop(&mut self) {
        if self.mounted && !self.unmount().status.success() {
            let _ = self
                .env
                .xtsfs(&["unmount", "--lazy", path_str(&self.mountpoint)]);
        }
    }
}

/// A tmpfs of `size` mounted on `dir` for one test, so the backing file system fills up
/// quickly without touching the machine's disks.
pub struct SmallFileSystem(PathBuf);

impl SmallFileSystem {
    pub fn mount(dir: &Path, size: &str) -> Self {
        fs::create_dir_all(dir).expect("create the small file system's mount point");
        let output = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size},mode=0700")])
            .args(["tmpfs", path_str(dir)])
            .output()
            .expect("run mount");
        assert_success(&output, "mount a small tmpfs");
        SmallFileSystem(dir.to_path_buf())
    }
}

impl Drop for SmallFileSystem {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .output();
    }
}

/// The tests need root and a FUSE device; say so plainly rather than fail obscurely.
pub fn require_fuse() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(euid, 0, "mount tests run as root (CI does)");
    assert!(
        Path::new("/dev/fuse").exists(),
        "mount tests need /dev/fuse (modprobe fuse)"
    );
}

pub fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}): {}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Every place under `dir` where `needle` occurs: in file contents, in entry names, in
/// symlink targets.
pub fn find_plaintext(dir: &Path, needle: &[u8]) -> Vec<PathBuf> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let meta = fs::symlink_metadata(&path).expect("stat backing entry");
        let name = path.file_name().map(|n| n.as_bytes()).unwrap_or_default();
        if contains(name, needle) {
            hits.push(path.clone());
        }
        if meta.is_dir() {
            for entry in fs::read_dir(&path).expect("list backing dir") {
                stack.push(entry.expect("backing entry").path());
            }
        } else if meta.file_type().is_symlink() {
            let target = fs::read_link(&path).expect("read backing symlink");
            if contains(target.as_os_str().as_bytes(), needle) {
                hits.push(path);
            }
        } else if meta.is_file() && contains(&fs::read(&path).expect("read backing file"), needle) {
            hits.push(path);
        }
    }
    hits
}

/// `xtsfs status --json` of a mounted volume (it exits non-zero while the key is gone,
/// but still reports).
pub fn live_state(env: &TestEnv, mountpoint: &Path) -> serde_json::Value {
    let output = env.xtsfs(&["status", "--json", path_str(mountpoint)]);
    serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "status --json: {e}: {}",
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Polls until the mount reports `state` (serving, locked, alert).
pub fn wait_for_state(env: &TestEnv, mountpoint: &Path, state: &str) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let report = live_state(env, mountpoint);
        if report["live"]["state"] == state {
            return report;
        }
        assert!(
            Instant::now() < deadline,
            "never reached state {state}: {report}"
        );
        std::thread::sleep(Duration::from_millis(25));
    }
}
