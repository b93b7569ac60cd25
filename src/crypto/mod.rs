//! The crypto core: the volume data key and what is derived from it, the XTS data-unit
//! cipher and the filename cipher.

pub mod names;
pub mod secret;
pub mod xts;

use hkdf::Hkdf;
use sha2::Sha512;
use zeroize::Zeroize;

use secret::SecretBytes;
use xts::Xts256;

/// Size of one XTS data unit of file contents.
pub const DATA_UNIT: usize = 4096;
/// Size of the random per-file nonce the contents key is derived from.
pub const FILE_NONCE_LEN: usize = 16;
/// Size of the volume data key: an AES-256-XTS key pair.
pub const DEK_LEN: usize = 64;

const INFO_CONTENTS: &[u8] = b"xtsfs v1 contents";
const INFO_NAMES: &[u8] = b"xtsfs v1 names";
const INFO_HEADER_MAC: &[u8] = b"xtsfs v1 header mac";
const INFO_KEY_CHECK: &[u8] = b"xtsfs v1 key check";

#[derive(Debug, thiserror::Error)]
#[error("the OS random number generator failed: {0}")]
pub struct RandomError(#[from] getrandom::Error);

/// The volume data key (DEK). Every other key is derived from it with HKDF-SHA512, so
/// rewrapping it under a new KEK never touches data.
///
/// The HKDF pseudorandom key (PRK) is extracted once, when the key is made, into a locked
/// secret buffer of its own; every derivation expands from it (`Hkdf::from_prk`), so the
/// DEK never passes through a hash state again. Hash and MAC states are zeroized when
/// dropped (the `zeroize` features of `hmac`, `sha2` and `digest`).
#[derive(Clone, Debug)]
pub struct VolumeKey {
    dek: SecretBytes<DEK_LEN>,
    prk: SecretBytes<PRK_LEN>,
}

/// HKDF-SHA512's PRK is one SHA-512 output.
const PRK_LEN: usize = 64;

impl VolumeKey {
    pub fn generate() -> Result<Self, RandomError> {
        Ok(Self::with_dek(SecretBytes::random()?))
    }

    /// `None` unless `bytes` is exactly [`DEK_LEN`] long.
    pub fn from_bytes(bytes: &[u8]) -> Option<Self> {
        SecretBytes::from_slice(bytes).map(Self::with_dek)
    }

    fn with_dek(dek: SecretBytes<DEK_LEN>) -> Self {
        let mut prk = SecretBytes::<PRK_LEN>::zeroed();
        let (mut extracted, _) = Hkdf::<Sha512>::extract(None, dek.expose());
        prk.expose_mut().copy_from_slice(extracted.as_slice());
        extracted.as_mut_slice().zeroize();
        VolumeKey { dek, prk }
    }

    pub fn expose(&self) -> &[u8; DEK_LEN] {
        self.dek.expose()
    }

    // `hkdf` has no constructor from a PRK that cannot fail, and keeping the `Hkdf` that
    // `extract` returns would keep the PRK's HMAC state outside the locked buffer. Neither
    // call can fail: `from_prk` refuses only a PRK shorter than 64 bytes (this one is
    // `[u8; 64]`), `expand_multi_info` only more than 255 × 64 bytes of output (N is at
    // most 64, checked when compiling).
    #[allow(clippy::expect_used)]
    fn derive<const N: usize>(&self, info: &[&[u8]]) -> SecretBytes<N> {
        const { assert!(N <= PRK_LEN) };
        let mut okm = SecretBytes::<N>::zeroed();
        Hkdf::<Sha512>::from_prk(self.prk.expose())
            .expect("a 64-byte PRK is valid for HKDF-SHA512")
            .expand_multi_info(info, okm.expose_mut())
            .expect("HKDF-SHA512 output of at most 64 bytes is always valid");
        okm
    }

    /// The XTS cipher for one file's contents, from the file's random nonce.
    pub fn file_cipher(&self, nonce: &[u8; FILE_NONCE_LEN]) -> Xts256 {
        Xts256::new(&self.derive::<64>(&[INFO_CONTENTS, nonce]))
    }

    /// The AES-256-SIV key for file names and symlink targets, with its cipher.
    pub fn names_key(&self) -> names::SivKey {
        names::SivKey::new(self.derive(&[INFO_NAMES]))
    }

    /// The HMAC-SHA256 key that authenticates the volume header.
    pub fn header_mac_key(&self) -> SecretBytes<32> {
        self.derive(&[INFO_HEADER_MAC])
    }

    /// A public value that identifies this DEK without revealing it: an HKDF output under
    /// a label of its own, so it says nothing about any key xtsfs uses. A mount compares
    /// it to refuse a header that carries some other DEK, and the host's volume records
    /// keep it to refuse a substituted header at mount.
    pub fn check_value(&self) -> [u8; 32] {
        *self.derive::<32>(&[INFO_KEY_CHECK]).expose()
    }
}

/// `N` random bytes for public values: nonces, volume ids.
pub fn random_array<const N: usize>() -> Result<[u8; N], RandomError> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes)?;
    Ok(bytes)
}

/// Lowercase hex, two digits a byte: the crate's one encoder, for public values only
/// (digests, key check values, key versions, volume ids, file names made from them).
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut text = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        text.push(char::from(DIGITS[usize::from(byte >> 4)]));
        text.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    text
}

#[cfg(test)]
mod tests {
    #[test]
    fn hex_is_two_lowercase_digits_a_byte() {
        assert_eq!(super::hex(&[]), "");
        assert_eq!(super::hex(&[0x00, 0x0f, 0xa0, 0xff]), "000fa0ff");
    }
}
