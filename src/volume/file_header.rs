//! The fixed header at the start of every non-empty backing file.
//!
//! | bytes  | field                                  |
//! |--------|----------------------------------------|
//! | 0..4   | magic `XTSF`                           |
//! | 4..6   | file format version, u16 LE (1)        |
//! | 6..16  | reserved, zero                         |
//! | 16..32 | nonce the file's contents key derives from |

use crate::crypto::{random_array, RandomError, FILE_NONCE_LEN};

pub const FILE_HEADER_LEN: usize = 32;
const MAGIC: &[u8; 4] = b"XTSF";
const VERSION: u16 = 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub nonce: [u8; FILE_NONCE_LEN],
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileHeaderError {
    #[error("the file is {0} bytes long, shorter than its {FILE_HEADER_LEN}-byte header")]
    Truncated(u64),
    #[error("the file header's magic is wrong (not an xtsfs file)")]
    BadMagic,
    #[error("the file format version {0} is not supported")]
    Version(u16),
    #[error("the file header's reserved bytes are not zero")]
    Reserved,
}

impl FileHeader {
    pub fn generate() -> Result<Self, RandomError> {
        Ok(FileHeader {
            nonce: random_array()?,
        })
    }

    pub fn encode(&self) -> [u8; FILE_HEADER_LEN] {
        let mut out = [0u8; FILE_HEADER_LEN];
        out[..4].copy_from_slice(MAGIC);
        out[4..6].copy_from_slice(&VERSION.to_le_bytes());
        out[16..].copy_from_slice(&self.nonce);
        out
    }

    pub fn decode(bytes: &[u8]) -> Result<Self, FileHeaderError> {
        let bytes: &[u8; FILE_HEADER_LEN] = bytes
            .get(..FILE_HEADER_LEN)
            .and_then(|b| b.try_into().ok())
            .ok_or(FileHeaderError::Truncated(bytes.len() as u64))?;
        if &bytes[..4] != MAGIC {
            return Err(FileHeaderError::BadMagic);
        }
        let version = u16::from_le_bytes([bytes[4], bytes[5]]);
        if version != VERSION {
            return Err(FileHeaderError::Version(version));
        }
        if bytes[6..16].iter().any(|b| *b != 0) {
            return Err(FileHeaderError::Reserved);
        }
        let mut nonce = [0u8; FILE_NONCE_LEN];
        nonce.copy_from_slice(&bytes[16..]);
        Ok(FileHeader { nonce })
    }
}

/// Plaintext size of a backing file of `backing_len` bytes; `None` if it is too short to
/// hold a header yet not empty.
pub fn plaintext_len(backing_len: u64) -> Option<u64> {
    match backing_len {
        0 => Some(0),
        n if n < FILE_HEADER_LEN as u64 => None,
        n => Some(n - FILE_HEADER_LEN as u64),
    }
}
