//! The header at the start of every non-empty backing file, and how a file format lays
//! out the plaintext after it (docs/FORMAT.md, "File contents").
//!
//! | bytes  | format 1                    | format 2                          |
//! |--------|-----------------------------|-----------------------------------|
//! | 0..4   | magic `XTSF`                | magic `XTSF`                      |
//! | 4..6   | version, u16 LE: 1          | version, u16 LE: 2                |
//! | 6..8   | reserved, zero              | reserved, zero                    |
//! | 8..12  | reserved, zero              | key generation, u32 LE: 0         |
//! | 12..16 | reserved, zero              | reserved, zero                    |
//! | 16..32 | nonce                       | nonce                             |
//! | data   | at byte 32                  | at byte 4096 (bytes 32..4096 zero) |
//!
//! Format 2 starts its data on a page boundary, so a 4 KiB data unit is one backing page
//! and an aligned write never read-modify-writes two backing pages.

use crate::crypto::xts::BLOCK;
use crate::crypto::{random_array, RandomError, FILE_NONCE_LEN};

/// Bytes of the header that carry fields; format 2 pads them to [`FileFormat::data_offset`].
pub const FILE_HEADER_LEN: usize = 32;
const MAGIC: &[u8; 4] = b"XTSF";
const BLOCK_LEN: u64 = BLOCK as u64;

/// How a file's plaintext is laid out after its header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileFormat {
    /// Data at byte 32, backing length = 32 + plaintext length; units of any length,
    /// with ciphertext stealing and short-tail pads.
    V1,
    /// Data at byte 4096 in whole 16-byte blocks; the last block is zero-padded and the
    /// plaintext length is encoded in the backing length ([`FileFormat::backing_len`]).
    V2,
}

impl FileFormat {
    pub const fn version(self) -> u16 {
        match self {
            FileFormat::V1 => 1,
            FileFormat::V2 => 2,
        }
    }

    /// Where the first data byte sits in the backing file.
    pub const fn data_offset(self) -> u64 {
        match self {
            FileFormat::V1 => FILE_HEADER_LEN as u64,
            FileFormat::V2 => 4096,
        }
    }

    /// Plaintext length of a backing file of `backing_len` bytes that has a header;
    /// `None` if no plaintext length gives that backing length. An empty backing file
    /// (never written, or truncated to zero) is an empty file.
    pub fn plaintext_len(self, backing_len: u64) -> Option<u64> {
        if backing_len == 0 {
            return Some(0);
        }
        let stored = backing_len.checked_sub(self.data_offset())?;
        match self {
            FileFormat::V1 => Some(stored),
            // A length that is not a whole number of blocks is stored as its padded blocks
            // followed by `len mod 16` marker bytes: the marker count is the stored
            // length mod 16, and it needs a block before it.
            FileFormat::V2 => match stored % BLOCK_LEN {
                0 => Some(stored),
                _ if stored > BLOCK_LEN => Some(stored - BLOCK_LEN),
                _ => None,
            },
        }
    }

    /// The backing length of a file with a header and `len` bytes of plaintext.
    pub fn backing_len(self, len: u64) -> u64 {
        let stored = match self {
            FileFormat::V1 => len,
            FileFormat::V2 => match len % BLOCK_LEN {
                0 => len,
                tail => len.next_multiple_of(BLOCK_LEN) + tail,
            },
        };
        self.data_offset() + stored
    }

    /// Whether a plaintext length can be stored without passing the largest file offset.
    pub fn fits(self, len: u64) -> bool {
        len.checked_add(2 * BLOCK_LEN + self.data_offset())
            .is_some_and(|end| end <= i64::MAX as u64)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHeader {
    pub format: FileFormat,
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
    #[error("the file is encrypted under key generation {0}, which this volume does not have")]
    KeyGeneration(u32),
}

impl FileHeader {
    pub fn generate(format: FileFormat) -> Result<Self, RandomError> {
        Ok(FileHeader {
            format,
            nonce: random_array()?,
        })
    }

    /// The header as stored: [`FILE_HEADER_LEN`] bytes, then zeros up to the data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![0u8; self.format.data_offset() as usize];
        out[..4].copy_from_slice(MAGIC);
        out[4..6].copy_from_slice(&self.format.version().to_le_bytes());
        // Format 2's key generation (bytes 8..12) is 0: the volume has one data key.
        out[16..FILE_HEADER_LEN].copy_from_slice(&self.nonce);
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
        let format = match u16::from_le_bytes([bytes[4], bytes[5]]) {
            1 => FileFormat::V1,
            2 => FileFormat::V2,
            other => return Err(FileHeaderError::Version(other)),
        };
        let (reserved, generation) = match format {
            FileFormat::V1 => (&bytes[6..16], 0),
            FileFormat::V2 => (
                &bytes[6..8],
                u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]),
            ),
        };
        if reserved.iter().chain(&bytes[12..16]).any(|b| *b != 0) {
            return Err(FileHeaderError::Reserved);
        }
        if generation != 0 {
            return Err(FileHeaderError::KeyGeneration(generation));
        }
        let mut nonce = [0u8; FILE_NONCE_LEN];
        nonce.copy_from_slice(&bytes[16..]);
        Ok(FileHeader { format, nonce })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v2_lengths_round_trip_and_reject_impossible_backing_lengths() {
        let v2 = FileFormat::V2;
        for len in (0..100).chain([4095, 4096, 4097, 1 << 40]) {
            let backing = v2.backing_len(len);
            assert_eq!(v2.plaintext_len(backing), Some(len), "length {len}");
        }
        // Written by hand from the rule: padded blocks, then len mod 16 marker bytes.
        assert_eq!(v2.backing_len(0), 4096);
        assert_eq!(v2.backing_len(5), 4096 + 16 + 5);
        assert_eq!(v2.backing_len(16), 4096 + 16);
        assert_eq!(v2.backing_len(17), 4096 + 32 + 1);
        for impossible in (1..4096).chain(4097..4112) {
            assert_eq!(v2.plaintext_len(impossible), None, "backing {impossible}");
        }
        assert_eq!(v2.plaintext_len(0), Some(0));
    }

    #[test]
    fn headers_round_trip_and_reject_damage() {
        for format in [FileFormat::V1, FileFormat::V2] {
            let header = FileHeader::generate(format).unwrap();
            let bytes = header.encode();
            assert_eq!(bytes.len() as u64, format.data_offset());
            assert_eq!(FileHeader::decode(&bytes), Ok(header));
            let mut bad = bytes.clone();
            bad[13] = 1;
            assert_eq!(FileHeader::decode(&bad), Err(FileHeaderError::Reserved));
        }
        let mut generation = FileHeader::generate(FileFormat::V2).unwrap().encode();
        generation[8] = 3;
        assert_eq!(
            FileHeader::decode(&generation),
            Err(FileHeaderError::KeyGeneration(3))
        );
        let mut version = generation.clone();
        version[4] = 9;
        assert_eq!(
            FileHeader::decode(&version),
            Err(FileHeaderError::Version(9))
        );
        assert_eq!(
            FileHeader::decode(&[0; 10]),
            Err(FileHeaderError::Truncated(10))
        );
    }
}
