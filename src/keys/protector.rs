//! The protector: the wrapped volume key plus what is needed to find its KEK again.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KeyKind {
    Mmk,
    Pem,
    Pkcs11,
    Command,
}

impl fmt::Display for KeyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            KeyKind::Mmk => "mmk",
            KeyKind::Pem => "pem",
            KeyKind::Pkcs11 => "pkcs11",
            KeyKind::Command => "command",
        })
    }
}

/// Which key and which version of it, and how it wraps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyDescription {
    pub kind: KeyKind,
    pub key_id: String,
    pub key_version: String,
    pub algorithm: String,
    /// The key reference that finds this key again (`mmk:ID`, `pem:PATH`, `pkcs11:URI`
    /// without any pin-value, `command:PROGRAM[#VERSION]`).
    pub key_ref: String,
}

impl fmt::Display for KeyDescription {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} key '{}' version {}",
            self.kind, self.key_id, self.key_version
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Protector {
    #[serde(flatten)]
    pub key: KeyDescription,
    /// The wrapped volume key, base64 (standard alphabet, padded).
    pub wrapped_key: String,
    /// RFC 3339 UTC time of the wrap.
    pub wrapped_at: String,
}

impl Protector {
    pub fn new(key: KeyDescription, wrapped: &[u8]) -> Self {
        use base64::Engine;
        Protector {
            key,
            wrapped_key: base64::engine::general_purpose::STANDARD.encode(wrapped),
            wrapped_at: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
        }
    }

    pub fn wrapped_bytes(&self) -> Option<Vec<u8>> {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD
            .decode(&self.wrapped_key)
            .ok()
    }

    /// The wrapped key's bytes for `key` to unwrap; the error every provider gives when
    /// they are not base64.
    pub fn wrapped_for(&self, key: &str) -> Result<Vec<u8>, super::KeyError> {
        self.wrapped_bytes()
            .ok_or_else(|| super::KeyError::UnwrapFailed {
                key: key.to_string(),
                detail: "the wrapped key is not valid base64".into(),
            })
    }
}
