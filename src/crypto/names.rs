//! File name and symlink target encryption.
//!
//! Names are encrypted with AES-256-SIV (RFC 5297), a deterministic AEAD, so a lookup can
//! encrypt the name it is asked for and find the backing entry, and a tampered name fails
//! to decrypt rather than decrypting to garbage. The ciphertext is base64url without
//! padding. A name whose encoding exceeds the backing file system's 255-byte limit is
//! stored under a hash, with the full encoding in a side file (see docs/FORMAT.md).

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};

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

/// The volume's name scheme.
pub enum NameCipher {
    Plaintext,
    Encrypted(SecretBytes<64>),
}

impl NameCipher {
    fn siv(key: &SecretBytes<64>) -> Aes256Siv {
        Aes256Siv::new(key.expose().into())
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
        Ok(BackingName::Long {
            side_file: format!("{entry}{LONG_NAME_SIDE_SUFFIX}").into(),
            entry: entry.into(),
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

    fn decode(&self, key: &SecretBytes<64>, encoded: &[u8]) -> Result<OsString, NameError> {
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
