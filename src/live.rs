//! The live status of a mounted volume: a root-only JSON file the daemon rewrites after
//! every key check and state change, read by `xtsfs status`.

use std::fs::{self, DirBuilder, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::crypto::hex;
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
    /// The key service gave no definite answer (a timeout, "unavailable"): still serving
    /// and retrying, until `--key-unavailable-grace` runs out and `--on-key-loss` applies.
    Degraded,
}

impl ServingState {
    /// The state's name, as in the JSON status.
    pub fn name(self) -> &'static str {
        match self {
            ServingState::Serving => "serving",
            ServingState::Locked => "locked",
            ServingState::Alert => "alert",
            ServingState::Degraded => "degraded",
        }
    }
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
    /// The daemon's start time in clock ticks since boot (/proc/PID/stat field 22) and its
    /// executable: with the pid they identify the daemon, so that a pid reused by another
    /// process after a crash is never signalled.
    #[serde(default)]
    pub start_time: u64,
    #[serde(default)]
    pub exe: PathBuf,
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
    /// The header epoch the daemon last verified (format 2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header_epoch: Option<u64>,
    /// While degraded: since when.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub degraded_since: Option<String>,
}

/// The status file for the volume in `backing` (a canonical path).
pub fn status_path(run_dir: &Path, backing: &Path) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    let digest = Sha256::digest(backing.as_os_str().as_bytes());
    run_dir.join(format!("{}.json", hex(&digest[..12])))
}

impl LiveStatus {
    /// Replaces the status file atomically.
    pub fn write(&self, path: &Path) -> std::io::Result<()> {
        let Some(dir) = path.parent() else {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a status file needs a directory",
            ));
        };
        let json = serde_json::to_vec_pretty(self)?;
        DirBuilder::new().recursive(true).mode(0o700).create(dir)?;
        let tmp = path.with_extension("tmp");
        let mut file = File::options()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)?;
        file.write_all(&json)?;
        fs::rename(&tmp, path)
    }

    /// The status of a running daemon, if there is one for this file: the process with
    /// the recorded pid must still have the recorded start time and executable.
    pub fn read(path: &Path) -> Option<LiveStatus> {
        let status: LiveStatus = serde_json::from_slice(&fs::read(path).ok()?).ok()?;
        status.is_alive().then_some(status)
    }

    fn is_alive(&self) -> bool {
        self.pid != 0
            && process_start_time(self.pid) == Some(self.start_time)
            && same_exe(
                &fs::read_link(format!("/proc/{}/exe", self.pid)).unwrap_or_default(),
                &self.exe,
            )
    }

    /// Sends `signal` to the daemon through a pidfd, after checking (with the pidfd held,
    /// so the pid cannot be reused in between) that it is still the daemon that wrote
    /// this status.
    pub fn signal(&self, signal: i32) -> std::io::Result<()> {
        // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, self.pid as libc::pid_t, 0) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: pidfd_open returned a new fd that nothing else owns.
        let pidfd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) };
        if !self.is_alive() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::NotFound,
                "the daemon that wrote the status file is gone (its pid now names another process)",
            ));
        }
        // SAFETY: a valid pidfd; no siginfo; no flags.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_pidfd_send_signal,
                pidfd.as_raw_fd(),
                signal,
                std::ptr::null::<libc::siginfo_t>(),
                0,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }
}

use std::os::fd::{AsRawFd, FromRawFd};

/// Whether /proc/PID/exe names the recorded executable. A binary replaced on disk while
/// the daemon runs (an upgrade, a rebuild) shows as "PATH (deleted)": the same daemon.
fn same_exe(now: &Path, recorded: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let strip = |path: &Path| {
        let bytes = path.as_os_str().as_bytes();
        bytes.strip_suffix(b" (deleted)").unwrap_or(bytes).to_vec()
    };
    let now = strip(now);
    !now.is_empty() && now == strip(recorded)
}

/// This process's identity for its status file: start time and executable.
pub fn own_identity() -> (u64, PathBuf) {
    let pid = std::process::id();
    (
        process_start_time(pid).unwrap_or(0),
        fs::read_link("/proc/self/exe").unwrap_or_default(),
    )
}

/// Field 22 of /proc/PID/stat: when the process started, in clock ticks since boot.
pub fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) is in parentheses and may hold spaces or parentheses.
    let after_name = &stat[stat.rfind(')')? + 1..];
    after_name.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::ServingState;

    #[test]
    fn state_names_are_the_json_names() {
        for state in [
            ServingState::Serving,
            ServingState::Locked,
            ServingState::Alert,
            ServingState::Degraded,
        ] {
            let json = serde_json::to_string(&state).unwrap();
            assert_eq!(json, format!("\"{}\"", state.name()));
        }
    }
}
