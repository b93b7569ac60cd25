//! Platform-managed keys (MMK): a local key store directory that xtsfs creates and guards.
//!
//! Layout: `DIR/ID.N.key`, 32 random bytes each, mode 0600 in a 0700 directory. `N`
//! counts versions from 1; rotation adds a version and keeps the old ones so volumes
//! wrapped under them still open. The wrap is AES-256 key wrap with padding (RFC 5649).

use std::fs::{self, DirBuilder, File};
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use aes::cipher::KeyInit;
use aes_kw::KwpAes256;

use super::secure_file::{check_private, read_private};
use super::{KeyDescription, KeyError, KeyKind, KeyProvider, Protector};
use crate::crypto::secret::SecretBytes;
use crate::crypto::{VolumeKey, DEK_LEN};
use crate::io_error::io_error;

pub const ALGORITHM: &str = "A256KWP";
const KEY_LEN: usize = 32;
/// RFC 5649 output for a 64-byte key: 8-byte integrity block + 64 bytes.
const WRAPPED_LEN: usize = DEK_LEN + 8;

pub(crate) fn validate_id(id: &str) -> Result<(), KeyError> {
    let ok = !id.is_empty()
        && id.len() <= 64
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
    if ok {
        Ok(())
    } else {
        Err(KeyError::InvalidRef(format!(
            "mmk:{id} (a platform key id is 1-64 characters of A-Z, a-z, 0-9, '-' and '_')"
        )))
    }
}

/// The platform key store directory.
pub struct PlatformKeyStore {
    dir: PathBuf,
}

/// One key id in the store and its versions, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredKey {
    pub id: String,
    pub versions: Vec<u32>,
}

impl PlatformKeyStore {
    /// Opens an existing store, checking its permissions.
    pub fn open(dir: &Path) -> Result<Self, KeyError> {
        let meta = fs::symlink_metadata(dir).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => KeyError::NotFound(format!(
                "the platform key store '{}' does not exist",
                dir.display()
            )),
            _ => io_error("cannot open platform key store", dir)(e).into(),
        })?;
        if !meta.is_dir() {
            return Err(KeyError::NotFound(format!(
                "'{}' is not a directory",
                dir.display()
            )));
        }
        check_private(dir, &meta)?;
        Ok(PlatformKeyStore { dir: dir.into() })
    }

    /// Opens the store, creating it (mode 0700) if it does not exist.
    pub fn open_or_create(dir: &Path) -> Result<Self, KeyError> {
        if !dir.exists() {
            DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(io_error("cannot create platform key store", dir))?;
        }
        Self::open(dir)
    }

    fn key_path(&self, id: &str, version: u32) -> PathBuf {
        self.dir.join(format!("{id}.{version}.key"))
    }

    pub fn list(&self) -> Result<Vec<StoredKey>, KeyError> {
        let mut keys: Vec<StoredKey> = Vec::new();
        let entries = fs::read_dir(&self.dir).map_err(io_error("cannot list", &self.dir))?;
        for entry in entries {
            let entry = entry.map_err(io_error("cannot list", &self.dir))?;
            let name = entry.file_name();
            let Some((id, version)) = name.to_str().and_then(parse_key_file_name) else {
                continue;
            };
            match keys.iter_mut().find(|k| k.id == id) {
                Some(key) => key.versions.push(version),
                None => keys.push(StoredKey {
                    id: id.into(),
                    versions: vec![version],
                }),
            }
        }
        for key in &mut keys {
            key.versions.sort_unstable();
        }
        keys.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(keys)
    }

    pub fn latest_version(&self, id: &str) -> Result<Option<u32>, KeyError> {
        Ok(self
            .list()?
            .into_iter()
            .find(|k| k.id == id)
            .and_then(|k| k.versions.last().copied()))
    }

    /// Creates version 1 of a new key id.
    pub fn create(&self, id: &str) -> Result<u32, KeyError> {
        validate_id(id)?;
        if self.latest_version(id)?.is_some() {
            return Err(KeyError::Exists(format!(
                "platform key '{id}' already exists in '{}'",
                self.dir.display()
            )));
        }
        self.add_version(id, 1)?;
        Ok(1)
    }

    /// Adds the next version of an existing key id.
    pub fn rotate(&self, id: &str) -> Result<u32, KeyError> {
        validate_id(id)?;
        let latest = self
            .latest_version(id)?
            .ok_or_else(|| self.not_found(id, None))?;
        self.add_version(id, latest + 1)?;
        Ok(latest + 1)
    }

    /// Writes a new key file without ever replacing an existing one: a temp file, fsynced,
    /// then hard-linked into place (which fails if the name exists).
    fn add_version(&self, id: &str, version: u32) -> Result<(), KeyError> {
        let key = SecretBytes::<KEY_LEN>::random()?;
        let path = self.key_path(id, version);
        let tmp = self.dir.join(format!(".{id}.{version}.key.tmp"));
        let _ = fs::remove_file(&tmp);
        let mut file = File::options()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
            .map_err(io_error("cannot create key file", &tmp))?;
        file.write_all(key.expose())
            .and_then(|()| file.sync_all())
            .map_err(io_error("cannot write key file", &tmp))?;
        let linked = fs::hard_link(&tmp, &path).map_err(io_error("cannot create key file", &path));
        let _ = fs::remove_file(&tmp);
        linked?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("cannot sync", &self.dir))?;
        Ok(())
    }

    fn read_key(&self, id: &str, version: u32) -> Result<SecretBytes<KEY_LEN>, KeyError> {
        let path = self.key_path(id, version);
        let bytes = read_private(&path, KEY_LEN as u64).map_err(|e| match e {
            KeyError::NotFound(_) => self.not_found(id, Some(version)),
            other => other,
        })?;
        SecretBytes::from_slice(&bytes).ok_or_else(|| KeyError::UnwrapFailed {
            key: format!("platform key '{id}' version {version}"),
            detail: format!("'{}' is not a {KEY_LEN}-byte key file", path.display()),
        })
    }

    fn not_found(&self, id: &str, version: Option<u32>) -> KeyError {
        let which = match version {
            Some(v) => format!("platform key '{id}' version {v}"),
            None => format!("platform key '{id}'"),
        };
        KeyError::NotFound(format!(
            "{which} is not in the store '{}'",
            self.dir.display()
        ))
    }
}

fn parse_key_file_name(name: &str) -> Option<(&str, u32)> {
    let stem = name.strip_suffix(".key")?;
    let (id, version) = stem.rsplit_once('.')?;
    validate_id(id).ok()?;
    Some((id, version.parse().ok().filter(|v| *v > 0)?))
}

/// Wraps with the newest version of one platform key id; unwraps with whichever
/// version a protector names.
pub struct MmkProvider {
    store: PlatformKeyStore,
    id: String,
}

impl MmkProvider {
    pub fn open(dir: &Path, id: &str) -> Result<Self, KeyError> {
        validate_id(id)?;
        Ok(MmkProvider {
            store: PlatformKeyStore::open(dir)?,
            id: id.into(),
        })
    }

    /// The newest version of the key, which wraps.
    fn latest_version(&self) -> Result<u32, KeyError> {
        self.store
            .latest_version(&self.id)?
            .ok_or_else(|| self.store.not_found(&self.id, None))
    }

    fn description(&self, version: u32) -> KeyDescription {
        KeyDescription {
            kind: KeyKind::Mmk,
            key_id: self.id.clone(),
            key_version: version.to_string(),
            algorithm: ALGORITHM.into(),
            key_ref: format!("mmk:{}", self.id),
        }
    }
}

impl KeyProvider for MmkProvider {
    fn describe(&self) -> Result<KeyDescription, KeyError> {
        Ok(self.description(self.latest_version()?))
    }

    fn wrap(&self, dek: &VolumeKey) -> Result<Protector, KeyError> {
        let version = self.latest_version()?;
        let description = self.description(version);
        let kek = self.store.read_key(&self.id, version)?;
        let mut wrapped = [0u8; WRAPPED_LEN];
        KwpAes256::new(kek.expose().into())
            .wrap_key(dek.expose(), &mut wrapped)
            .map_err(|e| KeyError::RoundTrip(format!("AES key wrap failed: {e}")))?;
        Ok(Protector::new(description, &wrapped))
    }

    fn unwrap(&self, protector: &Protector) -> Option<Result<VolumeKey, KeyError>> {
        if protector.key.kind != KeyKind::Mmk || protector.key.key_id != self.id {
            return None;
        }
        let key = format!(
            "platform key '{}' version {}",
            self.id, protector.key.key_version
        );
        Some((|| {
            let version: u32 =
                protector
                    .key
                    .key_version
                    .parse()
                    .map_err(|_| KeyError::UnwrapFailed {
                        key: key.clone(),
                        detail: "the protector's key version is not a number".into(),
                    })?;
            let kek = self.store.read_key(&self.id, version)?;
            let wrapped = protector.wrapped_for(&key)?;
            let mut plain = SecretBytes::<WRAPPED_LEN>::zeroed();
            let unwrapped = KwpAes256::new(kek.expose().into())
                .unwrap_key(&wrapped, plain.expose_mut())
                .map_err(|_| KeyError::UnwrapFailed {
                    key: key.clone(),
                    detail: "the key wrap integrity check failed (the wrapped key is damaged, or the key file was replaced)".into(),
                })?;
            VolumeKey::from_bytes(unwrapped).ok_or_else(|| KeyError::UnwrapFailed {
                key: key.clone(),
                detail: format!(
                    "the unwrapped key is {} bytes, not {DEK_LEN}",
                    unwrapped.len()
                ),
            })
        })())
    }
}
