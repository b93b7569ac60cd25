//! File name and symlink target encryption.
//!
//! Names are encrypted with AES-256-SIV (RFC 5297), a deterministic AEAD, so a lookup can
//! encrypt the name it is asked for and find the backing entry, and a tampered name fails
//! to decrypt rather than decrypting to garbage. The ciphertext is base64url without
//! padding. A name whose encoding exceeds the backing file system's 255-byte limit is
//! stored under a hash, with the full encoding in a side file (see docs/FORMAT.md).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::sync::{Mutex, MutexGuard, PoisonError};

use aes_siv::siv::Aes256Siv;
use aes_siv::KeyInit;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use sha2::{Digest, Sha256};

use super::secret::SecretBytes;

/// Longest name, in bytes, a directory entry may have (Linux NAME_MAX).
pub const NAME_MAX: usize = 255;
/// Longest symlink target accepted when targets are encrypted: its encoding must fit in
/// the backing file system's PATH_MAX of 4096 bytes including the NUL.
pub const ENCRYPTED_TARGET_MAX: usize = 3050;
/// Prefix of a hashed long name. It contains '.', which base64url never produces, so it
/// can never collide with an encrypted name.
pub const LONG_NAME_PREFIX: &str = "xtsfs.long.";
/// Suffix of the side file holding a long name's full encoding.
pub const LONG_NAME_SIDE_SUFFIX: &str = ".name";
/// The most of a side file anyone reads: a real one holds at most 342 bytes.
pub const LONG_NAME_SIDE_MAX: u64 = 4096;

const AD_NAME: &[u8] = b"xtsfs name";
const AD_SYMLINK: &[u8] = b"xtsfs symlink";

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("a name must not be empty, '.', '..' or contain '/' or NUL")]
    Invalid,
    #[error("the name is longer than {NAME_MAX} bytes")]
    TooLong,
    #[error("the backing name does not decrypt with this volume's key")]
    Undecryptable,
}

/// How a plaintext name is stored in the backing directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackingName {
    /// The backing entry's name.
    Direct(OsString),
    /// A hashed entry name plus the side file name and the full encoding it holds.
    Long {
        entry: OsString,
        side_file: OsString,
        encoded: Vec<u8>,
    },
}

impl BackingName {
    pub fn entry(&self) -> &OsStr {
        match self {
            BackingName::Direct(name) => name,
            BackingName::Long { entry, .. } => entry,
        }
    }
}

/// The name of the side file of the hashed long-name entry `entry`: the one place it
/// is made.
pub fn long_name_side_file(entry: &OsStr) -> OsString {
    let mut side = entry.to_owned();
    side.push(LONG_NAME_SIDE_SUFFIX);
    side
}

/// The hashed long-name entry whose side file is `side`, if `side` names a side file.
pub fn long_name_entry_of(side: &OsStr) -> Option<&OsStr> {
    side.as_bytes()
        .strip_suffix(LONG_NAME_SIDE_SUFFIX.as_bytes())
        .filter(|entry| entry.starts_with(LONG_NAME_PREFIX.as_bytes()))
        .map(OsStr::from_bytes)
}

/// What a backing directory entry is, seen through the name scheme.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BackingEntry {
    /// A user entry with this plaintext name.
    Named(OsString),
    /// A hashed long name: the plaintext comes from decoding its side file.
    Long,
    /// xtsfs's own bookkeeping (a long-name side file); never shown.
    Internal,
}

/// The AES-256-SIV key of a volume and the one cipher instance built from it. The instance
/// is built once per volume, not per name operation, so the key schedules exist in one
/// place that is zeroized when the volume's secrets are dropped (aes-siv, cmac and aes
/// are built with `zeroize`).
pub struct SivKey {
    key: SecretBytes<64>,
    siv: Mutex<Box<Aes256Siv>>,
}

impl SivKey {
    pub fn new(key: SecretBytes<64>) -> Self {
        let siv = Mutex::new(Box::new(Aes256Siv::new(key.expose().into())));
        SivKey { key, siv }
    }

    pub fn expose(&self) -> &[u8; 64] {
        self.key.expose()
    }
}

impl From<SecretBytes<64>> for SivKey {
    fn from(key: SecretBytes<64>) -> Self {
        SivKey::new(key)
    }
}

/// The volume's name scheme.
pub enum NameCipher {
    Plaintext,
    Encrypted(SivKey),
}

impl NameCipher {
    /// The volume's one SIV instance, for one operation. SIV's operations take `&mut
    /// self`; a name is a few hundred bytes at most, so threads queue here only for
    /// microseconds.
    fn siv(key: &SivKey) -> MutexGuard<'_, Box<Aes256Siv>> {
        key.siv.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn is_encrypted(&self) -> bool {
        matches!(self, NameCipher::Encrypted(_))
    }

    /// The backing name for a plaintext directory entry name.
    pub fn encrypt_name(&self, name: &OsStr) -> Result<BackingName, NameError> {
        validate_name(name.as_bytes())?;
        let key = match self {
            NameCipher::Plaintext => return Ok(BackingName::Direct(name.to_owned())),
            NameCipher::Encrypted(key) => key,
        };
        let ciphertext = Self::siv(key)
            .encrypt([AD_NAME], name.as_bytes())
            .map_err(|_| NameError::TooLong)?;
        let encoded = URL_SAFE_NO_PAD.encode(ciphertext);
        if encoded.len() <= NAME_MAX {
            return Ok(BackingName::Direct(encoded.into()));
        }
        let entry = format!(
            "{LONG_NAME_PREFIX}{}",
            URL_SAFE_NO_PAD.encode(Sha256::digest(encoded.as_bytes()))
        );
        let entry = OsString::from(entry);
        Ok(BackingName::Long {
            side_file: long_name_side_file(&entry),
            entry,
            encoded: encoded.into_bytes(),
        })
    }

    /// Classifies a backing directory entry and decrypts its name when it is direct.
    pub fn classify(&self, backing: &OsStr) -> Result<BackingEntry, NameError> {
        let key = match self {
            NameCipher::Plaintext => return Ok(BackingEntry::Named(backing.to_owned())),
            NameCipher::Encrypted(key) => key,
        };
        let bytes = backing.as_bytes();
        if bytes.starts_with(LONG_NAME_PREFIX.as_bytes()) {
            return Ok(if bytes.ends_with(LONG_NAME_SIDE_SUFFIX.as_bytes()) {
                BackingEntry::Internal
            } else {
                BackingEntry::Long
            });
        }
        self.decode(key, bytes).map(BackingEntry::Named)
    }

    /// Decrypts the full encoding read from a long name's side file, checking that it
    /// belongs to `entry`.
    pub fn decrypt_long(&self, entry: &OsStr, encoded: &[u8]) -> Result<OsString, NameError> {
        let NameCipher::Encrypted(key) = self else {
            return Err(NameError::Undecryptable);
        };
        let name = self.decode(key, encoded)?;
        match self.encrypt_name(&name)? {
            BackingName::Long {
                entry: expected, ..
            } if expected == entry => Ok(name),
            _ => Err(NameError::Undecryptable),
        }
    }

    fn decode(&self, key: &SivKey, encoded: &[u8]) -> Result<OsString, NameError> {
        let ciphertext = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| NameError::Undecryptable)?;
        let plain = Self::siv(key)
            .decrypt([AD_NAME], &ciphertext)
            .map_err(|_| NameError::Undecryptable)?;
        validate_name(&plain).map_err(|_| NameError::Undecryptable)?;
        Ok(OsString::from_vec(plain))
    }

    /// The backing symlink target for a plaintext target.
    pub fn encrypt_target(&self, target: &[u8]) -> Result<Vec<u8>, NameError> {
        match self {
            NameCipher::Plaintext => Ok(target.to_vec()),
            NameCipher::Encrypted(_) if target.len() > ENCRYPTED_TARGET_MAX => {
                Err(NameError::TooLong)
            }
            NameCipher::Encrypted(key) => {
                let ciphertext = Self::siv(key)
                    .encrypt([AD_SYMLINK], target)
                    .map_err(|_| NameError::TooLong)?;
                Ok(URL_SAFE_NO_PAD.encode(ciphertext).into_bytes())
            }
        }
    }

    pub fn decrypt_target(&self, stored: &[u8]) -> Result<Vec<u8>, NameError> {
        match self {
            NameCipher::Plaintext => Ok(stored.to_vec()),
            NameCipher::Encrypted(key) => {
                let ciphertext = URL_SAFE_NO_PAD
                    .decode(stored)
                    .map_err(|_| NameError::Undecryptable)?;
                Self::siv(key)
                    .decrypt([AD_SYMLINK], &ciphertext)
                    .map_err(|_| NameError::Undecryptable)
            }
        }
    }
}

fn validate_name(name: &[u8]) -> Result<(), NameError> {
    if name.is_empty() || name == b"." || name == b".." || name.contains(&b'/') || name.contains(&0)
    {
        return Err(NameError::Invalid);
    }
    if name.len() > NAME_MAX {
        return Err(NameError::TooLong);
    }
    Ok(())
}

/// Extended attribute namespaces whose attributes xtsfs stores encrypted. Other
/// namespaces (`system.`) are passed through as the backing file system handles them.
pub const XATTR_ENCRYPTED_NAMESPACES: [&str; 3] = ["user.", "trusted.", "security."];
/// What follows the namespace in the backing name of an encrypted attribute.
pub const XATTR_TAG: &str = "xtsfs.";
/// Bytes an encrypted attribute value takes beyond its plaintext: a 16-byte random nonce
/// and the 16-byte SIV tag.
pub const XATTR_VALUE_OVERHEAD: usize = 32;
/// Longest attribute name the backing file systems of Linux accept (XATTR_NAME_MAX).
pub const XATTR_NAME_MAX: usize = 255;

const AD_XATTR_NAME: &[u8] = b"xtsfs xattr name";
const AD_XATTR_VALUE: &[u8] = b"xtsfs xattr value";

/// The namespace prefix of an attribute name stored encrypted, and the rest of it.
fn xattr_namespace(name: &[u8]) -> Option<(&'static str, &[u8])> {
    XATTR_ENCRYPTED_NAMESPACES
        .iter()
        .find(|ns| name.starts_with(ns.as_bytes()))
        .map(|ns| (*ns, &name[ns.len()..]))
}

/// Longest plaintext attribute name, namespace included, that fits
/// [`XATTR_NAME_MAX`] once encrypted, for a namespace of `ns_len` bytes.
pub const fn xattr_name_max(ns_len: usize) -> usize {
    // base64url of n bytes is ceil(4n / 3) long: the room left is
    // 255 - ns - "xtsfs.", so n <= floor(3 * room / 4), and n is the suffix plus 16.
    let room = XATTR_NAME_MAX - ns_len - XATTR_TAG.len();
    ns_len + room * 3 / 4 - 16
}

impl NameCipher {
    /// Whether attributes named `name` are stored by xtsfs (encrypted unless names are
    /// plaintext), rather than passed through.
    pub fn stores_xattr(name: &[u8]) -> bool {
        xattr_namespace(name).is_some()
    }

    /// The backing name of an attribute in one of [`XATTR_ENCRYPTED_NAMESPACES`]:
    /// `namespace || "xtsfs." || base64url(AES-SIV(names key, AD = ["xtsfs xattr name",
    /// namespace], rest))`. Plaintext-name volumes store it as it is.
    pub fn encrypt_xattr_name(&self, name: &[u8]) -> Result<Vec<u8>, NameError> {
        let (ns, rest) = xattr_namespace(name).ok_or(NameError::Invalid)?;
        if rest.is_empty() || name.contains(&0) {
            return Err(NameError::Invalid);
        }
        let key = match self {
            NameCipher::Plaintext => return Ok(name.to_vec()),
            NameCipher::Encrypted(key) => key,
        };
        if name.len() > xattr_name_max(ns.len()) {
            return Err(NameError::TooLong);
        }
        let ciphertext = Self::siv(key)
            .encrypt([AD_XATTR_NAME, ns.as_bytes()], rest)
            .map_err(|_| NameError::TooLong)?;
        let mut stored = format!("{ns}{XATTR_TAG}").into_bytes();
        stored.extend_from_slice(URL_SAFE_NO_PAD.encode(ciphertext).as_bytes());
        Ok(stored)
    }

    /// The plaintext name of a backing attribute that xtsfs stored, or `None` for any
    /// other backing attribute (the backing system's own, a damaged one), which is not
    /// shown.
    pub fn decrypt_xattr_name(&self, stored: &[u8]) -> Option<Vec<u8>> {
        let (ns, rest) = xattr_namespace(stored)?;
        let key = match self {
            NameCipher::Plaintext => return Some(stored.to_vec()),
            NameCipher::Encrypted(key) => key,
        };
        let encoded = rest.strip_prefix(XATTR_TAG.as_bytes())?;
        let ciphertext = URL_SAFE_NO_PAD.decode(encoded).ok()?;
        let plain = Self::siv(key)
            .decrypt([AD_XATTR_NAME, ns.as_bytes()], &ciphertext)
            .ok()?;
        if plain.is_empty() || plain.contains(&0) {
            return None;
        }
        let mut name = ns.as_bytes().to_vec();
        name.extend_from_slice(&plain);
        Some(name)
    }

    /// The backing value of attribute `name` (plaintext, namespace included):
    /// `nonce || AES-SIV(names key, AD = ["xtsfs xattr value", name, nonce], value)` with
    /// a random 16-byte nonce, so equal values are not visible as equal.
    pub fn encrypt_xattr_value(&self, name: &[u8], value: &[u8]) -> Result<Vec<u8>, NameError> {
        let mut nonce = [0u8; 16];
        getrandom::fill(&mut nonce).map_err(|_| NameError::Invalid)?;
        self.encrypt_xattr_value_with_nonce(name, value, &nonce)
    }

    /// [`Self::encrypt_xattr_value`] with a given nonce (test vectors).
    #[doc(hidden)]
    pub fn encrypt_xattr_value_with_nonce(
        &self,
        name: &[u8],
        value: &[u8],
        nonce: &[u8; 16],
    ) -> Result<Vec<u8>, NameError> {
        let key = match self {
            NameCipher::Plaintext => return Ok(value.to_vec()),
            NameCipher::Encrypted(key) => key,
        };
        let ciphertext = Self::siv(key)
            .encrypt([AD_XATTR_VALUE, name, nonce.as_slice()], value)
            .map_err(|_| NameError::TooLong)?;
        let mut stored = nonce.to_vec();
        stored.extend_from_slice(&ciphertext);
        Ok(stored)
    }

    /// The plaintext of attribute `name`'s backing value.
    pub fn decrypt_xattr_value(&self, name: &[u8], stored: &[u8]) -> Result<Vec<u8>, NameError> {
        let key = match self {
            NameCipher::Plaintext => return Ok(stored.to_vec()),
            NameCipher::Encrypted(key) => key,
        };
        if stored.len() < XATTR_VALUE_OVERHEAD {
            return Err(NameError::Undecryptable);
        }
        let (nonce, ciphertext) = stored.split_at(16);
        Self::siv(key)
            .decrypt([AD_XATTR_VALUE, name, nonce], ciphertext)
            .map_err(|_| NameError::Undecryptable)
    }

    /// How many bytes a stored value takes beyond its plaintext.
    pub fn xattr_value_overhead(&self) -> usize {
        match self {
            NameCipher::Plaintext => 0,
            NameCipher::Encrypted(_) => XATTR_VALUE_OVERHEAD,
        }
    }

    /// The plaintext length of a backing value of `stored_len` bytes.
    pub fn xattr_value_len(&self, stored_len: usize) -> usize {
        match self {
            NameCipher::Plaintext => stored_len,
            NameCipher::Encrypted(_) => stored_len.saturating_sub(XATTR_VALUE_OVERHEAD),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn side_file_names_go_both_ways() {
        let entry = OsStr::new("xtsfs.long.abc");
        let side = long_name_side_file(entry);
        assert_eq!(side, "xtsfs.long.abc.name");
        assert_eq!(long_name_entry_of(&side), Some(entry));
        assert_eq!(long_name_entry_of(OsStr::new("other.name")), None);
        assert_eq!(long_name_entry_of(entry), None);
    }
}
