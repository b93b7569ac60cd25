//! The live status of a mounted volume: a root-only JSON file the daemon rewrites after
//! every key check and state change, read by `xtsfs status`.

use std::fs::{self, DirBuilder, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::keys::KeyDescription;

pub const DEFAULT_RUN_DIR: &str = "/run/xtsfs";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServingState {
    /// The key is reachable and the volume is served.
    Serving,
    /// The key was lost and the policy is `lock`: every operation returns EACCES.
    Locked,
    /// The key was lost and the policy is `alert`: still serving, alerting at each check.
    Alert,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CheckReport {
    pub at: String,
    pub ok: bool,
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LiveStatus {
    pub pid: u32,
    pub state: ServingState,
    pub backing: PathBuf,
    pub mountpoint: PathBuf,
    pub volume_id: String,
    pub ephemeral: bool,
    pub on_key_loss: String,
    pub key_check_interval_secs: f64,
    pub last_check: Option<CheckReport>,
    /// The protector currently in the header; `None` for an ephemeral volume.
    pub protector: Option<KeyDescription>,
}

/// The status file for the volume in `backing` (a canonical path).
pub fn status_path(run_dir: &Path, backing: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha256::digest(backing.as_os_str().as_bytes());
    let name: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    run_dir.join(format!("{name}.json"))
}

impl LiveStatus {
    /// Replaces the status file atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let dir = path.parent().expect("status files live in a directory");
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let tmp = path.with_extension("tmp");
        let mut file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        file.write_all(&serde_json::to_vec_pretty(self).expect("status serializes"))?;
        fs::rename(&tmp, path)
    }

    /// The status of a running daemon, if there is one for this file.
    pub fn read(path: &Path) -> Option<LiveStatus> {
        let status: LiveStatus = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
        // SAFETY: signal 0 only checks that the process exists.
        (unsafe { libc::kill(status.pid as i32, 0) } == 0).then_some(status)
    }
}
