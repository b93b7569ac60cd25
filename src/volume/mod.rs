//! The on-disk volume: `BACKING/xtsfs.header` plus the encrypted tree under `BACKING/tree`.
//! Keeping the user's tree in its own directory means no user name, plaintext or not,
//! can ever collide with xtsfs's own files.

pub mod file_header;
pub mod fsck;
pub mod header;
pub mod upgrade;

use std::fs::{self, DirBuilder, File};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::crypto::{random_array, VolumeKey, DATA_UNIT};
use crate::error::Error;
use crate::keys::mmk::PlatformKeyStore;
use crate::keys::{wrap_checked, KeyContext, KeyError, KeyProvider, KeyRef, Protector};
use header::{HeaderBody, VolumeFormat};

pub const HEADER_FILE: &str = "xtsfs.header";
const HEADER_TMP: &str = "xtsfs.header.tmp";
/// Serialises header updates between `xtsfs rewrap` and a mounted daemon's auto-rotation.
const HEADER_LOCK: &str = "xtsfs.lock";
pub const TREE_DIR: &str = "tree";
const MAX_HEADER_FILE: u64 = 80 * 1024;

/// A volume whose data key is unwrapped and whose header is authenticated.
pub struct UnlockedVolume {
    pub backing: PathBuf,
    pub header: HeaderBody,
    pub dek: VolumeKey,
}

impl std::fmt::Debug for UnlockedVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnlockedVolume")
            .field("backing", &self.backing)
            .finish_non_exhaustive()
    }
}

/// Creates a new volume in `backing`, which must be absent or an empty directory. The
/// key is checked with a wrap/unwrap round trip before anything is written.
pub fn init(
    backing: &Path,
    key: &KeyRef,
    ctx: &KeyContext,
    encrypt_names: bool,
    format: VolumeFormat,
) -> Result<HeaderBody, Error> {
    ensure_empty(backing)?;
    let provider = open_for_wrapping(key, ctx)?;
    let dek = VolumeKey::generate().map_err(KeyError::from)?;
    let protector = wrap_checked(provider.as_ref(), &dek)?;
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let body = HeaderBody {
        volume_id: new_uuid()?,
        cipher: header::CIPHER.into(),
        data_unit_size: DATA_UNIT as u32,
        names: if encrypt_names {
            header::NAMES_ENCRYPTED
        } else {
            header::NAMES_PLAINTEXT
        }
        .into(),
        created_at: now,
        epoch: (format == VolumeFormat::V2).then_some(1),
        protector,
        format,
    };
    create_layout(backing, 0o755)?;
    write_header(backing, &body.encode(&dek))?;
    Ok(body)
}

/// Reads and parses the header without any key.
pub fn read_header(backing: &Path) -> Result<(HeaderBody, Vec<u8>), Error> {
    let path = backing.join(HEADER_FILE);
    let file = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::NotAVolume(backing.into()),
            _ => Error::io("cannot open volume header", &path)(e),
        })?;
    let mut bytes = Vec::new();
    file.take(MAX_HEADER_FILE)
        .read_to_end(&mut bytes)
        .map_err(Error::io("cannot read volume header", &path))?;
    let body = HeaderBody::decode(&bytes).map_err(|source| Error::Header {
        path: path.clone(),
        source,
    })?;
    Ok((body, bytes))
}

/// The provider that unwraps `protector`: `key` if the user gave one, else the key the
/// protector records.
pub fn provider_for(
    protector: &Protector,
    key: Option<&KeyRef>,
    ctx: &KeyContext,
) -> Result<Box<dyn KeyProvider>, Error> {
    let recorded;
    let key = match key {
        Some(key) => key,
        None => {
            recorded = KeyRef::parse(&protector.key.key_ref)?;
            ctx.check_trusted(&recorded)?;
            &recorded
        }
    };
    Ok(key.open(ctx)?)
}

/// Unwraps the DEK in `protector` and authenticates the header bytes with it.
pub fn unwrap_and_verify(
    provider: &dyn KeyProvider,
    body: &HeaderBody,
    bytes: &[u8],
    path: &Path,
) -> Result<VolumeKey, Error> {
    let dek = match provider.unwrap(&body.protector) {
        Some(result) => result?,
        None => {
            let given = provider
                .describe()
                .map(|d| d.to_string())
                .unwrap_or_else(|e| e.to_string());
            return Err(KeyError::WrongKey {
                needed: body.protector.key.to_string(),
                given,
            }
            .into());
        }
    };
    header::verify(bytes, &dek).map_err(|source| Error::Header {
        path: path.into(),
        source,
    })?;
    Ok(dek)
}

/// Opens a volume: reads the header, unwraps the DEK and authenticates the header.
pub fn unlock(
    backing: &Path,
    ctx: &KeyContext,
    key: Option<&KeyRef>,
) -> Result<UnlockedVolume, Error> {
    let (header, bytes) = read_header(backing)?;
    let provider = provider_for(&header.protector, key, ctx)?;
    let dek = unwrap_and_verify(
        provider.as_ref(),
        &header,
        &bytes,
        &backing.join(HEADER_FILE),
    )?;
    Ok(UnlockedVolume {
        backing: backing.into(),
        header,
        dek,
    })
}

/// Wraps the DEK under `new_key` and replaces the header atomically. Data is untouched.
pub fn rewrap(
    backing: &Path,
    ctx: &KeyContext,
    new_key: &KeyRef,
    current_key: Option<&KeyRef>,
) -> Result<(HeaderBody, HeaderBody), Error> {
    let _lock = HeaderLock::acquire(backing)?;
    let volume = unlock(backing, ctx, current_key)?;
    let provider = open_for_wrapping(new_key, ctx)?;
    let protector = wrap_checked(provider.as_ref(), &volume.dek)?;
    let new = volume.header.with_protector(protector);
    write_header(backing, &new.encode(&volume.dek))?;
    Ok((volume.header, new))
}

/// Swaps in `new` as the header's protector, unless the header no longer holds
/// `expected` (someone rewrapped meanwhile). Returns the new header if it was written.
pub fn replace_protector(
    backing: &Path,
    dek: &VolumeKey,
    expected: &Protector,
    new: Protector,
) -> Result<Option<HeaderBody>, Error> {
    let _lock = HeaderLock::acquire(backing)?;
    let (current, _) = read_header(backing)?;
    if &current.protector != expected {
        return Ok(None);
    }
    let body = current.with_protector(new);
    write_header(backing, &body.encode(dek))?;
    Ok(Some(body))
}

/// An exclusive lock on the volume's header for a read-modify-write of it.
pub struct HeaderLock {
    /// The lock lives as long as this open file.
    _file: File,
}

impl HeaderLock {
    pub fn acquire(backing: &Path) -> Result<Self, Error> {
        use std::os::fd::AsRawFd;
        let path = backing.join(HEADER_LOCK);
        let file = File::options()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(Error::io("cannot open header lock", &path))?;
        // SAFETY: valid fd; blocks until other header writers are done.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } != 0 {
            return Err(Error::io("cannot lock", &path)(
                std::io::Error::last_os_error(),
            ));
        }
        Ok(HeaderLock { _file: file })
    }
}

/// Opens a key for a new wrap; platform keys are created on first use.
pub fn open_for_wrapping(key: &KeyRef, ctx: &KeyContext) -> Result<Box<dyn KeyProvider>, Error> {
    if let KeyRef::Mmk { id } = key {
        let store = PlatformKeyStore::open_or_create(&ctx.platform_key_dir)?;
        if store.latest_version(id)?.is_none() {
            store.create(id)?;
            tracing::info!(key_id = %id, "created platform key");
        }
    }
    Ok(key.open(ctx)?)
}

/// Replaces the header atomically: temp file, fsync, rename, fsync the directory. A crash
/// leaves either the old header or the new one.
pub fn write_header(backing: &Path, bytes: &[u8]) -> Result<(), Error> {
    let tmp = backing.join(HEADER_TMP);
    let path = backing.join(HEADER_FILE);
    let mut file = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&tmp)
        .map_err(Error::io("cannot write volume header", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(Error::io("cannot write volume header", &tmp))?;
    fs::rename(&tmp, &path).map_err(Error::io("cannot replace volume header", &path))?;
    File::open(backing)
        .and_then(|dir| dir.sync_all())
        .map_err(Error::io("cannot sync backing directory", backing))
}

/// Lays out an ephemeral volume: an empty or absent `backing` with only a tree in it.
pub fn create_empty_tree(backing: &Path) -> Result<(), Error> {
    ensure_empty(backing)?;
    create_layout(backing, 0o700)
}

/// Creates `backing` (private to its owner) and the tree directory in it.
fn create_layout(backing: &Path, tree_mode: u32) -> Result<(), Error> {
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(backing)
        .map_err(Error::io("cannot create backing directory", backing))?;
    let tree = backing.join(TREE_DIR);
    DirBuilder::new()
        .mode(tree_mode)
        .create(&tree)
        .map_err(Error::io("cannot create", &tree))
}

fn ensure_empty(backing: &Path) -> Result<(), Error> {
    match fs::read_dir(backing) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(Error::NotEmpty(backing.into())),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io("cannot read backing directory", backing)(e)),
    }
}

pub fn new_uuid() -> Result<String, Error> {
    let mut b: [u8; 16] = random_array().map_err(KeyError::from)?;
    b[6] = (b[6] & 0x0f) | 0x40; // version 4
    b[8] = (b[8] & 0x3f) | 0x80; // RFC 4122 variant
    let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &hex[..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..]
    ))
}
