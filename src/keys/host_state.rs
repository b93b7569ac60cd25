//! What this host remembers outside every backing directory, so that whoever can write a
//! backing directory cannot undo a key change: for each volume, the last header epoch and
//! protector it saw (and a one-way check value of the volume key), and for each PKCS#11
//! token whose PIN was refused, that no more logins may be tried.
//!
//! Layout of the state directory (default `/var/lib/xtsfs/volume-state`, beside the
//! platform key store; mode 0700, owned by the user running xtsfs or root):
//!
//! - `VOLUME_ID.json`: a [`VolumeRecord`];
//! - `pkcs11-suspended/TOKEN_DIGEST.json`: a [`Suspension`];
//! - `.lock`: serialises read-modify-write of records between xtsfs processes.
//!
//! Every update is atomic: a new file is written, fsynced and renamed over the old one,
//! and the directory is fsynced.

use std::fs::{self, DirBuilder, File};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::secure_file::check_private;
use super::{KeyDescription, KeyError, Protector};
use crate::crypto::hex;
use crate::io_error::io_error;
use crate::lock_file::{LockError, LockFile};

pub const DEFAULT_DIR: &str = "/var/lib/xtsfs/volume-state";
const SUSPENDED_DIR: &str = "pkcs11-suspended";
const LOCK_FILE: &str = ".lock";
const MAX_RECORD_LEN: u64 = 64 * 1024;
/// How long to wait for another xtsfs process that is updating a record.
const LOCK_WAIT: Duration = Duration::from_secs(5);

/// The header of one volume as this host saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderSeen {
    /// `None` for a format 1 header, which has no epoch.
    pub epoch: Option<u64>,
    /// Which key the protector names, for messages.
    pub protector: KeyDescription,
    /// SHA-256 of the whole protector (wrapped key and wrap time included): any rewrap
    /// changes it.
    pub protector_digest: String,
}

impl HeaderSeen {
    pub fn describe(&self) -> String {
        match self.epoch {
            Some(epoch) => format!("epoch {epoch}, protector {}", self.protector),
            None => format!("no epoch (format 1), protector {}", self.protector),
        }
    }
}

/// What this host last saw of one volume.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeRecord {
    pub volume_id: String,
    /// Hex of [`crate::crypto::VolumeKey::check_value`]: which DEK the volume holds.
    pub key_check: String,
    pub current: HeaderSeen,
    /// A header a rewrap or auto-rotation on this host is writing right now: accepted as
    /// well as `current` until the writer commits it, so a check that reads the header
    /// between the two never mistakes a rewrap for a foreign header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending: Option<HeaderSeen>,
    pub updated_at: String,
}

/// Why logins to one PKCS#11 token are suspended.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Suspension {
    pub token: String,
    pub module: PathBuf,
    /// The CKR_ code the token answered, and from which call.
    pub reason: String,
    pub at: String,
    /// The PIN file used, and its state then: any change to it lifts the suspension.
    pub pin_file: Option<PathBuf>,
    pub pin_file_stamp: Option<FileStamp>,
}

/// Enough of a file's metadata to notice any change to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime_ns: i128,
    ctime_ns: i128,
}

impl FileStamp {
    pub fn of(path: &Path) -> Option<FileStamp> {
        let meta = fs::metadata(path).ok()?;
        Some(FileStamp {
            dev: meta.dev(),
            ino: meta.ino(),
            size: meta.size(),
            mtime_ns: meta.mtime() as i128 * 1_000_000_000 + meta.mtime_nsec() as i128,
            ctime_ns: meta.ctime() as i128 * 1_000_000_000 + meta.ctime_nsec() as i128,
        })
    }
}

/// The host state directory.
pub struct HostState {
    dir: PathBuf,
}

/// A volume id names a file here, and it comes from a header nobody has authenticated
/// yet: only UUID characters are allowed.
pub fn validate_volume_id(id: &str) -> Result<(), KeyError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-');
    if ok {
        Ok(())
    } else {
        Err(KeyError::Config(format!(
            "the header's volume id '{}' is not a UUID",
            id.escape_default()
        )))
    }
}

impl HostState {
    /// Opens the state directory, creating it (mode 0700) if it is missing.
    pub fn create(dir: &Path) -> Result<Self, KeyError> {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io_error("cannot create the host state directory", dir))?;
        let meta = fs::symlink_metadata(dir)
            .map_err(io_error("cannot open the host state directory", dir))?;
        Self::checked(dir, &meta)
    }

    /// Opens the state directory; `None` if it does not exist.
    pub fn open(dir: &Path) -> Result<Option<Self>, KeyError> {
        let meta = match fs::symlink_metadata(dir) {
            Ok(meta) => meta,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(io_error("cannot open the host state directory", dir)(e).into()),
        };
        Self::checked(dir, &meta).map(Some)
    }

    /// The state directory at `dir`, if it is a private directory.
    fn checked(dir: &Path, meta: &fs::Metadata) -> Result<Self, KeyError> {
        if !meta.is_dir() {
            return Err(KeyError::Config(format!(
                "the host state directory '{}' is not a directory",
                dir.display()
            )));
        }
        check_private(dir, meta)?;
        Ok(HostState { dir: dir.into() })
    }

    pub fn record_path(&self, volume_id: &str) -> PathBuf {
        self.dir.join(format!("{volume_id}.json"))
    }

    /// What the record of volume `volume_id` keeps of a header with `epoch` and
    /// `protector`.
    pub fn header_seen(
        &self,
        volume_id: &str,
        epoch: Option<u64>,
        protector: &Protector,
    ) -> Result<HeaderSeen, KeyError> {
        let json = serde_json::to_vec(protector).map_err(io_error(
            "cannot encode the protector for",
            self.record_path(volume_id),
        ))?;
        Ok(HeaderSeen {
            epoch,
            protector: protector.key.clone(),
            protector_digest: hex(&Sha256::digest(&json)),
        })
    }

    pub fn read_record(&self, volume_id: &str) -> Result<Option<VolumeRecord>, KeyError> {
        validate_volume_id(volume_id)?;
        let path = self.record_path(volume_id);
        let Some(bytes) = read_small(&path)? else {
            return Ok(None);
        };
        let record: VolumeRecord = serde_json::from_slice(&bytes).map_err(|e| {
            KeyError::Config(format!(
                "the host's record of volume {volume_id} ('{}') is damaged: {e}; remove it to \
                 start over (the next mount records the header it finds)",
                path.display()
            ))
        })?;
        Ok(Some(record))
    }

    pub fn write_record(&self, record: &VolumeRecord) -> Result<(), KeyError> {
        validate_volume_id(&record.volume_id)?;
        let path = self.record_path(&record.volume_id);
        let bytes = serde_json::to_vec_pretty(record).map_err(io_error("cannot encode", &path))?;
        write_atomic(&self.dir, &path, &bytes)
    }

    /// Holds the state lock while `f` reads and rewrites records.
    pub fn locked<R>(&self, f: impl FnOnce(&Self) -> Result<R, KeyError>) -> Result<R, KeyError> {
        let path = self.dir.join(LOCK_FILE);
        let lock = LockFile::acquire(&path, LOCK_WAIT).map_err(|e| match e {
            LockError::Open(e) => io_error("cannot open the host state lock", &path)(e).into(),
            LockError::Stat(e) => io_error("cannot stat the host state lock", &path)(e).into(),
            LockError::NotRegular(_) => {
                KeyError::Config(format!("'{}' is not a regular file", path.display()))
            }
            LockError::Lock(e) => io_error("cannot lock the host state lock", &path)(e).into(),
            LockError::Held => KeyError::Config(format!(
                "another process has held the host state lock '{}' for {} s",
                path.display(),
                LOCK_WAIT.as_secs()
            )),
        })?;
        let result = f(self);
        drop(lock);
        result
    }

    fn suspension_path(&self, module: &Path, token: &str) -> PathBuf {
        use std::os::unix::ffi::OsStrExt;
        let mut digest = Sha256::new();
        digest.update(module.as_os_str().as_bytes());
        digest.update([0]);
        digest.update(token.as_bytes());
        let name = hex(&digest.finalize()[..16]);
        self.dir.join(SUSPENDED_DIR).join(format!("{name}.json"))
    }

    /// The suspension of logins to `token` through `module`, if there is one.
    pub fn suspension(
        &self,
        module: &Path,
        token: &str,
    ) -> Result<Option<(Suspension, PathBuf)>, KeyError> {
        let path = self.suspension_path(module, token);
        let Some(bytes) = read_small(&path)? else {
            return Ok(None);
        };
        match serde_json::from_slice(&bytes) {
            Ok(suspension) => Ok(Some((suspension, path))),
            // A damaged marker still means "do not log in".
            Err(e) => Ok(Some((
                Suspension {
                    token: token.into(),
                    module: module.into(),
                    reason: format!("the suspension record is damaged ({e})"),
                    at: String::new(),
                    pin_file: None,
                    pin_file_stamp: None,
                },
                path,
            ))),
        }
    }

    pub fn suspend(&self, suspension: &Suspension) -> Result<PathBuf, KeyError> {
        let path = self.suspension_path(&suspension.module, &suspension.token);
        let dir = self.dir.join(SUSPENDED_DIR);
        DirBuilder::new()
            .mode(0o700)
            .recursive(true)
            .create(&dir)
            .map_err(io_error("cannot create", &dir))?;
        let bytes =
            serde_json::to_vec_pretty(suspension).map_err(io_error("cannot encode", &path))?;
        write_atomic(&dir, &path, &bytes)?;
        Ok(path)
    }

    pub fn lift(&self, path: &Path) -> Result<(), KeyError> {
        match fs::remove_file(path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(io_error("cannot remove", path)(e).into())
            }
            _ => Ok(()),
        }
    }
}

/// Reads a small regular file, refusing symlinks and anything that is not a regular file;
/// `None` if it does not exist.
fn read_small(path: &Path) -> Result<Option<Vec<u8>>, KeyError> {
    let file = match File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(path)
    {
        Ok(file) => file,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_error("cannot open", path)(e).into()),
    };
    let meta = file.metadata().map_err(io_error("cannot stat", path))?;
    if !meta.is_file() {
        return Err(KeyError::Config(format!(
            "'{}' is not a regular file",
            path.display()
        )));
    }
    let mut bytes = Vec::new();
    file.take(MAX_RECORD_LEN)
        .read_to_end(&mut bytes)
        .map_err(io_error("cannot read", path))?;
    Ok(Some(bytes))
}

/// Temp file, fsync, rename, fsync the directory: a crash leaves the old file or the new.
fn write_atomic(dir: &Path, path: &Path, bytes: &[u8]) -> Result<(), KeyError> {
    let tmp = path.with_extension("tmp");
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(io_error("cannot remove", &tmp)(e).into())
        }
        _ => {}
    }
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(io_error("cannot write", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(io_error("cannot write", &tmp))?;
    fs::rename(&tmp, path).map_err(io_error("cannot replace", path))?;
    File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_error("cannot sync", dir))?;
    Ok(())
}

pub fn now() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}
