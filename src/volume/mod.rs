//! The on-disk volume: `BACKING/xtsfs.header` plus the encrypted tree under `BACKING/tree`.
//! Keeping the user's tree in its own directory means no user name, plaintext or not,
//! can ever collide with xtsfs's own files.

pub mod file_header;
pub mod header;

use std::fs::{self, DirBuilder, File};
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::crypto::{hex, random_array, VolumeKey, DATA_UNIT};
use crate::error::Error;
use crate::keys::host_state::{self, HeaderSeen, HostState, VolumeRecord};
use crate::keys::mmk::PlatformKeyStore;
use crate::keys::{
    validate_key_version, wrap_checked, KeyContext, KeyError, KeyProvider, KeyRef, Protector,
};
use crate::lock_file::{LockError, LockFile};
use header::{HeaderBody, VolumeFormat};

pub const HEADER_FILE: &str = "xtsfs.header";
pub(crate) const HEADER_TMP: &str = "xtsfs.header.tmp";
/// Serialises header updates between `xtsfs rewrap` and a mounted daemon's auto-rotation.
pub(crate) const HEADER_LOCK: &str = "xtsfs.lock";
pub const TREE_DIR: &str = "tree";
const MAX_HEADER_FILE: u64 = 80 * 1024;
/// How long a header update waits for another one (a rewrap, a mount's auto-rotation)
/// before giving up; a lock held longer than this is not another xtsfs at work.
const HEADER_LOCK_WAIT: Duration = Duration::from_secs(5);
/// Flags for every file xtsfs opens in a backing directory: never follow a planted
/// symlink, never block on a planted FIFO or device.
const BACKING_FILE_FLAGS: i32 = libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC;

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
    record_header(ctx, &body, &dek)?;
    Ok(body)
}

/// Reads and parses the header without any key.
pub fn read_header(backing: &Path) -> Result<(HeaderBody, Vec<u8>), Error> {
    let path = backing.join(HEADER_FILE);
    let file = File::options()
        .read(true)
        .custom_flags(BACKING_FILE_FLAGS)
        .open(&path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ENOENT) => Error::NotAVolume(backing.into()),
            Some(libc::ELOOP) => not_regular(&path, "a symlink"),
            _ => Error::io("cannot open volume header", &path)(e),
        })?;
    let meta = file
        .metadata()
        .map_err(Error::io("cannot stat volume header", &path))?;
    if !meta.is_file() {
        return Err(not_regular(&path, file_kind(meta.file_type())));
    }
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
            recorded = KeyRef::parse_recorded(&protector.key.key_ref)?;
            ctx.check_trusted(&recorded)?;
            &recorded
        }
    };
    validate_key_version(&protector.key.key_version).map_err(|e| Error::Header {
        path: PathBuf::from(HEADER_FILE),
        source: header::HeaderError::Body(format!("the protector's {e}")),
    })?;
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
    check_host_record(ctx, &header, &dek, RecordUse::Open)?;
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
    commit_header(ctx, backing, &new, &volume.dek)?;
    Ok((volume.header, new))
}

/// Swaps in `new` as the header's protector, unless the header no longer holds
/// `expected` (someone rewrapped meanwhile). Returns the new header if it was written.
pub fn replace_protector(
    ctx: &KeyContext,
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
    commit_header(ctx, backing, &body, dek)?;
    Ok(Some(body))
}

/// Writes a new header of a volume whose record this host holds: the record first names
/// the new header as pending, then the header is replaced, then the record makes it
/// current. A key check that reads the header in between accepts either, and a crash
/// leaves a pending entry that the next mount settles.
pub fn commit_header(
    ctx: &KeyContext,
    backing: &Path,
    new: &HeaderBody,
    dek: &VolumeKey,
) -> Result<(), Error> {
    let state = HostState::create(&ctx.host_state_dir)?;
    let seen = state.header_seen(&new.volume_id, new.epoch, &new.protector)?;
    state.locked(|state| {
        let Some(mut record) = state.read_record(&new.volume_id)? else {
            return Ok(());
        };
        record.pending = Some(seen.clone());
        record.updated_at = host_state::now();
        state.write_record(&record)
    })?;
    write_header(backing, &new.encode(dek))?;
    record_header(ctx, new, dek)
}

/// Makes `header` the one this host last saw of its volume.
pub fn record_header(ctx: &KeyContext, header: &HeaderBody, dek: &VolumeKey) -> Result<(), Error> {
    let state = HostState::create(&ctx.host_state_dir)?;
    let record = VolumeRecord {
        volume_id: header.volume_id.clone(),
        key_check: hex(&dek.check_value()),
        current: state.header_seen(&header.volume_id, header.epoch, &header.protector)?,
        pending: None,
        updated_at: host_state::now(),
    };
    Ok(state.locked(|state| state.write_record(&record))?)
}

/// Who checks a header against the host's record, which decides what may be written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordUse {
    /// mount, rewrap: a first sight is recorded, and `accept_header_from_elsewhere` lets
    /// a foreign header in.
    Open,
    /// The key monitor of a running mount: it never accepts a header from elsewhere.
    Monitor,
    /// `xtsfs status`: reads only.
    Status,
}

/// How a header compares with the host's record of its volume.
#[derive(Debug)]
enum Verdict {
    /// It is the header the record names (or the one a writer on this host has pending).
    Known {
        pending: bool,
    },
    /// This host has no record of the volume, or recorded it in format 1 and the same
    /// protector now comes with an epoch (`xtsfs upgrade`).
    New,
    Refused(String),
}

fn judge(record: &VolumeRecord, found: &HeaderSeen, key_check: &str) -> Verdict {
    if record.key_check != key_check {
        return Verdict::Refused(
            "the header carries another volume key than the one this host has seen for this volume: it was replaced by a header made for other data".into(),
        );
    }
    if *found == record.current {
        return Verdict::Known { pending: false };
    }
    if record.pending.as_ref() == Some(found) {
        return Verdict::Known { pending: true };
    }
    let seen = &record.current;
    match (seen.epoch, found.epoch) {
        (None, Some(_)) if seen.protector_digest == found.protector_digest => Verdict::New,
        (Some(last), Some(now)) if now < last => Verdict::Refused(format!(
            "header rollback: its epoch is {now}, but this host last saw epoch {last} ({}); an older copy of xtsfs.header was put back, which would undo a rewrap or a key revocation",
            seen.describe()
        )),
        (Some(last), None) => Verdict::Refused(format!(
            "header rollback: it is a format 1 header without an epoch, but this host last saw the volume in format 2 at epoch {last} ({}); an older copy of xtsfs.header was put back",
            seen.describe()
        )),
        _ => Verdict::Refused(format!(
            "the header changed without a rewrap on this host: it now has {}, and this host last saw {}",
            found.describe(),
            seen.describe()
        )),
    }
}

/// Checks an authenticated header against what this host last saw of its volume
/// ([`host_state`]): refuses an older epoch, and a protector that changed without a
/// rewrap on this host.
pub fn check_host_record(
    ctx: &KeyContext,
    header: &HeaderBody,
    dek: &VolumeKey,
    usage: RecordUse,
) -> Result<(), Error> {
    host_state::validate_volume_id(&header.volume_id)?;
    let state = match usage {
        RecordUse::Status => match HostState::open(&ctx.host_state_dir)? {
            Some(state) => state,
            None => return Ok(()),
        },
        RecordUse::Open | RecordUse::Monitor => HostState::create(&ctx.host_state_dir)?,
    };
    let key_check = hex(&dek.check_value());
    let verdict = match state.read_record(&header.volume_id)? {
        None => Verdict::New,
        Some(record) => {
            let found = state.header_seen(&header.volume_id, header.epoch, &header.protector)?;
            judge(&record, &found, &key_check)
        }
    };
    match (verdict, usage) {
        (Verdict::Known { pending: false }, _) => Ok(()),
        (Verdict::Known { pending: true } | Verdict::New, RecordUse::Status) => Ok(()),
        (Verdict::Known { pending: true } | Verdict::New, _) => record_header(ctx, header, dek),
        (Verdict::Refused(detail), RecordUse::Open) if ctx.accept_header_from_elsewhere => {
            tracing::warn!(volume_id = %header.volume_id, "accepting a header from elsewhere as asked: {detail}");
            record_header(ctx, header, dek)
        }
        (Verdict::Refused(detail), RecordUse::Status) if ctx.accept_header_from_elsewhere => {
            tracing::warn!(volume_id = %header.volume_id, "{detail}");
            Ok(())
        }
        (Verdict::Refused(detail), usage) => Err(Error::HeaderRefused {
            volume_id: header.volume_id.clone(),
            detail,
            running: usage == RecordUse::Monitor,
            record: state.record_path(&header.volume_id),
        }),
    }
}

/// An exclusive lock on the volume's header for a read-modify-write of it.
pub struct HeaderLock {
    /// The lock lives as long as this.
    _lock: LockFile,
}

impl HeaderLock {
    /// Takes the lock without ever blocking: a few seconds of retries, then an error.
    /// `xtsfs.lock` must be a regular file (not a FIFO or a symlink someone planted).
    pub fn acquire(backing: &Path) -> Result<Self, Error> {
        let path = backing.join(HEADER_LOCK);
        let lock = LockFile::acquire(&path, HEADER_LOCK_WAIT).map_err(|e| match e {
            LockError::Open(e) => match e.raw_os_error() {
                Some(libc::ELOOP) => not_regular(&path, "a symlink"),
                Some(libc::ENXIO) => not_regular(&path, "a FIFO"),
                _ => Error::io("cannot open header lock", &path)(e),
            },
            LockError::Stat(e) => Error::io("cannot stat header lock", &path)(e),
            LockError::NotRegular(kind) => not_regular(&path, file_kind(kind)),
            LockError::Lock(e) => Error::io("cannot lock", &path)(e),
            LockError::Held => Error::Mount(format!(
                "another process has held '{}' for {} s: another rewrap or a mount's key rotation is still running, or something else holds the lock (see fuser -v '{}'); retry later",
                path.display(),
                HEADER_LOCK_WAIT.as_secs(),
                path.display()
            )),
        })?;
        Ok(HeaderLock { _lock: lock })
    }
}

fn not_regular(path: &Path, what: &str) -> Error {
    Error::Header {
        path: path.into(),
        source: header::HeaderError::Body(format!(
            "it is {what}, not a regular file: something other than xtsfs put it there; restore the volume's files from a backup"
        )),
    }
}

fn file_kind(kind: fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if kind.is_dir() {
        "a directory"
    } else if kind.is_fifo() {
        "a FIFO"
    } else if kind.is_socket() {
        "a socket"
    } else if kind.is_block_device() || kind.is_char_device() {
        "a device"
    } else if kind.is_symlink() {
        "a symlink"
    } else {
        "not a regular file"
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
    // Whatever is at the temporary name (a FIFO, a symlink) is removed, never opened.
    match fs::remove_file(&tmp) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(Error::io("cannot remove", &tmp)(e))
        }
        _ => {}
    }
    let mut file = File::options()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(BACKING_FILE_FLAGS)
        .open(&tmp)
        .map_err(Error::io("cannot write volume header", &tmp))?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(Error::io("cannot write volume header", &tmp))?;
    fs::rename(&tmp, &path).map_err(Error::io("cannot replace volume header", &path))?;
    File::options()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | BACKING_FILE_FLAGS)
        .open(backing)
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
    let digits = hex(&b);
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &digits[..8],
        &digits[8..12],
        &digits[12..16],
        &digits[16..20],
        &digits[20..]
    ))
}

/// Whether every byte is zero: a 4 KiB unit stored as zeros reads as a hole.
pub(crate) fn is_zero(bytes: &[u8]) -> bool {
    let (blocks, rest) = bytes.as_chunks::<16>();
    blocks.iter().all(|b| u128::from_ne_bytes(*b) == 0) && rest.iter().all(|b| *b == 0)
}

/// Takes the volume lock, `flock` on the open backing directory `dir`, without waiting.
/// A mounted daemon holds it for as long as it runs; `xtsfs upgrade` and `xtsfs fsck`
/// take it too, so that a mounted volume is refused and no mount starts while they work.
/// `Ok(true)`: taken, and held for as long as `dir` stays open. `Ok(false)`: another
/// process holds it.
pub fn try_lock_volume(dir: std::os::fd::BorrowedFd<'_>, backing: &Path) -> Result<bool, Error> {
    // SAFETY: a valid fd; flock reads no memory of ours.
    if unsafe {
        libc::flock(
            std::os::fd::AsRawFd::as_raw_fd(&dir),
            libc::LOCK_EX | libc::LOCK_NB,
        )
    } == 0
    {
        return Ok(true);
    }
    match std::io::Error::last_os_error() {
        e if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        e => Err(Error::io("cannot lock backing directory", backing)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::is_zero;

    #[test]
    fn zero_detection_covers_every_byte() {
        for len in [0, 1, 15, 16, 17, 4096, 4100] {
            let mut bytes = vec![0u8; len];
            assert!(is_zero(&bytes));
            for at in 0..len {
                bytes[at] = 1;
                assert!(!is_zero(&bytes), "{len} {at}");
                bytes[at] = 0;
            }
        }
    }
}
