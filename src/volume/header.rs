//! The volume header file, `BACKING/xtsfs.header`.
//!
//! | bytes      | field                                        |
//! |------------|----------------------------------------------|
//! | 0..8       | magic `XTSFSVOL`                             |
//! | 8..10      | format version, u16 LE (1 or 2)              |
//! | 10..14     | body length N, u32 LE (at most 64 KiB)       |
//! | 14..14+N   | body: UTF-8 JSON, see [`HeaderBody`]         |
//! | 14+N..+32  | HMAC-SHA256 over bytes 0..14+N, keyed from the DEK |
//!
//! The MAC can only be checked after the DEK is unwrapped: a KEK that fails to unwrap is
//! a key problem; a DEK that unwraps but fails the MAC means the header was edited.

use hmac::{Hmac, Mac};
use serde::{Deserialize, Serialize};
use sha2::Sha256;

use crate::crypto::{VolumeKey, DATA_UNIT};
/// The header's own errors, defined beside the crate error that carries them.
pub use crate::error::HeaderError;
use crate::keys::Protector;
use crate::volume::file_header::FileFormat;

/// The volume format version: it says which file format new files get and which file
/// formats the volume may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum VolumeFormat {
    /// Files in format 1, and, while `xtsfs upgrade` has not finished, format 2.
    V1,
    /// Files in format 2 only; the header carries an epoch.
    #[default]
    V2,
}

impl VolumeFormat {
    pub const LATEST: VolumeFormat = VolumeFormat::V2;

    pub fn version(self) -> u16 {
        match self {
            VolumeFormat::V1 => 1,
            VolumeFormat::V2 => 2,
        }
    }

    pub fn from_version(version: u16) -> Option<Self> {
        match version {
            1 => Some(VolumeFormat::V1),
            2 => Some(VolumeFormat::V2),
            _ => None,
        }
    }

    /// The format of files created in the volume.
    pub fn new_files(self) -> FileFormat {
        match self {
            VolumeFormat::V1 => FileFormat::V1,
            VolumeFormat::V2 => FileFormat::V2,
        }
    }

    /// Whether a file of `format` belongs in the volume. A format 1 volume holds format
    /// 2 files where an interrupted `xtsfs upgrade` converted them; a format 2 volume was
    /// upgraded completely, so a format 1 file in it was put there from outside.
    pub fn accepts(self, format: FileFormat) -> bool {
        self == VolumeFormat::V1 || format == FileFormat::V2
    }
}
pub const CIPHER: &str = "aes-256-xts";
pub const NAMES_ENCRYPTED: &str = "aes-256-siv";
pub const NAMES_PLAINTEXT: &str = "plaintext";
const MAGIC: &[u8; 8] = b"XTSFSVOL";
const PREFIX_LEN: usize = 14;
const MAC_LEN: usize = 32;
const MAX_BODY: usize = 64 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HeaderBody {
    pub volume_id: String,
    pub cipher: String,
    pub data_unit_size: u32,
    pub names: String,
    pub created_at: String,
    /// Format 2: counts the header's rewrites, starting at 1, under the MAC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub epoch: Option<u64>,
    pub protector: Protector,
    /// From the binary prefix, not the JSON body.
    #[serde(skip)]
    pub format: VolumeFormat,
}

impl HeaderBody {
    // serde_json fails only where a `Serialize` impl fails or a map key is not a string,
    // and a `Vec` never fails to take bytes: HeaderBody and Protector derive `Serialize`
    // over strings and integers alone. The tests and format vectors call `encode` as a
    // plain function of the header, so it has no error to return.
    #[allow(clippy::expect_used)]
    pub fn encode(&self, dek: &VolumeKey) -> Vec<u8> {
        let body = serde_json::to_vec_pretty(self).expect("header body serializes");
        let mut out = Vec::with_capacity(PREFIX_LEN + body.len() + MAC_LEN);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&self.format.version().to_le_bytes());
        out.extend_from_slice(&(body.len() as u32).to_le_bytes());
        out.extend_from_slice(&body);
        let mac = mac(dek, &out);
        out.extend_from_slice(&mac);
        out
    }

    /// Parses and validates a header without the key; the MAC is checked by [`verify`].
    pub fn decode(bytes: &[u8]) -> Result<Self, HeaderError> {
        let (Some(actual), Some([magic @ .., v0, v1, l0, l1, l2, l3])) = (
            bytes.len().checked_sub(PREFIX_LEN + MAC_LEN),
            bytes.first_chunk::<PREFIX_LEN>(),
        ) else {
            return Err(HeaderError::Truncated(bytes.len()));
        };
        if magic != MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let version = u16::from_le_bytes([*v0, *v1]);
        let format = VolumeFormat::from_version(version).ok_or(HeaderError::Version(version))?;
        let declared = u32::from_le_bytes([*l0, *l1, *l2, *l3]) as usize;
        if declared != actual || declared > MAX_BODY {
            return Err(HeaderError::Length { declared, actual });
        }
        let mut body: HeaderBody =
            serde_json::from_slice(&bytes[PREFIX_LEN..PREFIX_LEN + declared])
                .map_err(|e| HeaderError::Body(e.to_string()))?;
        body.format = format;
        body.validate()?;
        Ok(body)
    }

    fn validate(&self) -> Result<(), HeaderError> {
        let bad = |what: String| Err(HeaderError::Body(what));
        if self.cipher != CIPHER {
            return bad(format!(
                "cipher '{}' is not supported (only {CIPHER})",
                self.cipher
            ));
        }
        if self.data_unit_size as usize != DATA_UNIT {
            return bad(format!(
                "data unit size {} is not supported (only {DATA_UNIT})",
                self.data_unit_size
            ));
        }
        if self.names != NAMES_ENCRYPTED && self.names != NAMES_PLAINTEXT {
            return bad(format!("names mode '{}' is not known", self.names));
        }
        match (self.format, self.epoch) {
            (VolumeFormat::V1, Some(_)) => return bad("a format 1 header has no epoch".into()),
            (VolumeFormat::V2, None | Some(0)) => {
                return bad("a format 2 header needs an epoch of 1 or more".into())
            }
            _ => {}
        }
        if self.protector.wrapped_bytes().is_none() {
            return bad("the protector's wrapped key is not valid base64".into());
        }
        Ok(())
    }

    pub fn names_encrypted(&self) -> bool {
        self.names == NAMES_ENCRYPTED
    }

    /// The same header with `protector`, as its next rewrite.
    pub fn with_protector(&self, protector: Protector) -> HeaderBody {
        HeaderBody {
            protector,
            epoch: self.epoch.map(|epoch| epoch.saturating_add(1)),
            ..self.clone()
        }
    }
}

/// Checks the MAC of an encoded header with the unwrapped DEK.
pub fn verify(bytes: &[u8], dek: &VolumeKey) -> Result<(), HeaderError> {
    let split = bytes
        .len()
        .checked_sub(MAC_LEN)
        .ok_or(HeaderError::Truncated(bytes.len()))?;
    let mut mac_state = mac_state(dek);
    mac_state.update(&bytes[..split]);
    mac_state
        .verify_slice(&bytes[split..])
        .map_err(|_| HeaderError::Mac)
}

fn mac(dek: &VolumeKey, bytes: &[u8]) -> [u8; MAC_LEN] {
    let mut mac_state = mac_state(dek);
    mac_state.update(bytes);
    mac_state.finalize().into_bytes().into()
}

/// HMAC-SHA256 under the header MAC key. `hmac` builds one through `KeyInit`, whose
/// `new_from_slice` returns a `Result` for ciphers with fixed key sizes although HMAC takes
/// any key; `hkdf`'s `HmacImpl` builds the same state without one.
fn mac_state(dek: &VolumeKey) -> Hmac<Sha256> {
    <Hmac<Sha256> as hkdf::HmacImpl>::new_from_slice(dek.header_mac_key().expose())
}
