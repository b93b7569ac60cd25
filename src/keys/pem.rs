//! Customer-managed RSA keys in a PEM file. The wrap is RSA-OAEP with SHA-256 and MGF1-SHA-256
//! (RSA-OAEP-256, as Key Vault and KMS name it). The key version is the SHA-256 fingerprint
//! of the public key's SubjectPublicKeyInfo.

use std::path::{Path, PathBuf};

use rsa::pkcs1::DecodeRsaPrivateKey;
use rsa::pkcs8::{DecodePrivateKey, EncodePublicKey};
use rsa::sha2::{Digest, Sha256};
use rsa::traits::PublicKeyParts;
use rsa::{Oaep, RsaPrivateKey, RsaPublicKey};

use super::secure_file::read_private;
use super::{KeyDescription, KeyError, KeyKind, KeyProvider, Protector, SUPPORTED_BITS};
use crate::crypto::secret::SecretVec;
use crate::crypto::{hex, VolumeKey};
use crate::io_error::io_error;

pub const ALGORITHM: &str = "RSA-OAEP-256";
const MAX_PEM_LEN: u64 = 64 * 1024;

pub struct PemProvider {
    path: PathBuf,
    key: RsaPrivateKey,
    fingerprint: String,
}

impl PemProvider {
    pub fn open(path: &Path) -> Result<Self, KeyError> {
        let path = std::path::absolute(path).map_err(io_error("cannot resolve key path", path))?;
        let pem = read_private(&path, MAX_PEM_LEN)?;
        let key = parse_rsa_private_key(&pem, &path)?;
        let fingerprint = spki_fingerprint(&key.to_public_key())?;
        Ok(PemProvider {
            path,
            key,
            fingerprint,
        })
    }
}

/// Parses a PKCS#8 or PKCS#1 PEM RSA private key of a supported size.
fn parse_rsa_private_key(pem: &[u8], path: &Path) -> Result<RsaPrivateKey, KeyError> {
    let text = std::str::from_utf8(pem)
        .map_err(|_| KeyError::Unsupported(format!("'{}' is not a PEM file", path.display())))?;
    let key = RsaPrivateKey::from_pkcs8_pem(text)
        .or_else(|_| RsaPrivateKey::from_pkcs1_pem(text))
        .map_err(|_| {
            KeyError::Unsupported(format!("'{}' holds {}", path.display(), describe_pem(text)))
        })?;
    let bits = key.n().bits();
    if !SUPPORTED_BITS.contains(&bits) {
        return Err(KeyError::Unsupported(format!(
            "'{}' holds an RSA-{bits} key",
            path.display()
        )));
    }
    Ok(key)
}

fn describe_pem(text: &str) -> &'static str {
    let label = text
        .lines()
        .find_map(|l| l.strip_prefix("-----BEGIN "))
        .unwrap_or("");
    match label {
        l if l.starts_with("EC ") => "an EC key",
        l if l.starts_with("PUBLIC KEY") || l.starts_with("RSA PUBLIC KEY") => {
            "a public key, not a private key"
        }
        l if l.starts_with("ENCRYPTED PRIVATE KEY") => {
            "a passphrase-encrypted key (decrypt it with openssl pkey first)"
        }
        l if l.starts_with("PRIVATE KEY") => "a private key that is not RSA (EC, Ed25519, ...)",
        l if l.starts_with("OPENSSH PRIVATE KEY") => "an OpenSSH-format key",
        "" => "no PEM key",
        _ => "an unrecognised PEM object",
    }
}

/// RSA-OAEP decryption with SHA-256 and MGF1-SHA-256 and an empty label (RFC 8017,
/// section 7.1.2), done here rather than by `rsa`'s `Oaep`: rsa 0.9 copies the decoded
/// block, volume key included, into a vector it frees without zeroizing, so every unwrap
/// would leave a copy of the DEK in freed heap memory. Every buffer here that holds the
/// seed or the decoded block is zeroized. The checks do not return early, so that which
/// one failed does not show in the timing (the RSA operation itself is not constant-time:
/// docs/SECURITY.md, "RSA timing"); the caller learns only that decryption failed.
fn oaep_sha256_decrypt(key: &RsaPrivateKey, ciphertext: &[u8]) -> Option<SecretVec> {
    use zeroize::Zeroizing;
    const H: usize = 32;
    let k = key.size();
    if ciphertext.len() != k || k < 2 * H + 2 {
        return None;
    }
    let c = rsa::BigUint::from_bytes_be(ciphertext);
    let m = rsa::hazmat::rsa_decrypt_and_check(key, Some(&mut rand_core::OsRng), &c).ok()?;
    let bytes = Zeroizing::new(m.to_bytes_be());
    drop(m);
    if bytes.len() > k {
        return None;
    }
    // EM = 0x00 || maskedSeed || maskedDB, left-padded with zeros to k bytes.
    let mut em = Zeroizing::new(vec![0u8; k]);
    em[k - bytes.len()..].copy_from_slice(&bytes);
    let (y, rest) = em.split_at_mut(1);
    let (seed, db) = rest.split_at_mut(H);
    mgf1_xor(seed, db);
    mgf1_xor(db, seed);
    let label_hash = <::sha2::Sha256 as ::sha2::Digest>::digest([]);
    let mut bad = y[0] != 0;
    bad |= db[..H] != label_hash[..];
    // DB = lHash || PS (zeros) || 0x01 || M: the first non-zero byte after lHash.
    let mut start = 0usize;
    let mut found = false;
    for (i, byte) in db.iter().enumerate().skip(H) {
        let first_one = !found && *byte == 1;
        bad |= !found && *byte != 0 && *byte != 1;
        if first_one {
            start = i + 1;
        }
        found |= *byte != 0;
    }
    if bad || !found {
        return None;
    }
    Some(SecretVec::new(db[start..].to_vec()))
}

/// `out ^= MGF1-SHA-256(seed, out.len())`.
fn mgf1_xor(out: &mut [u8], seed: &[u8]) {
    for (counter, chunk) in out.chunks_mut(32).enumerate() {
        use ::sha2::Digest as _;
        // sha2 0.11, whose state is zeroized on drop (rsa's sha2 0.10 is not).
        let mut digest = ::sha2::Sha256::new();
        digest.update(seed);
        digest.update((counter as u32).to_be_bytes());
        let mask = zeroize::Zeroizing::new(<[u8; 32]>::from(digest.finalize()));
        for (byte, m) in chunk.iter_mut().zip(mask.iter()) {
            *byte ^= m;
        }
    }
}

/// `sha256:` + hex SHA-256 of the DER SubjectPublicKeyInfo.
fn spki_fingerprint(key: &RsaPublicKey) -> Result<String, KeyError> {
    let der = key
        .to_public_key_der()
        .map_err(|e| KeyError::Unsupported(format!("cannot encode the public key: {e}")))?;
    let digest = Sha256::digest(der.as_bytes());
    Ok(format!("sha256:{}", hex(&digest)))
}

impl KeyProvider for PemProvider {
    fn describe(&self) -> Result<KeyDescription, KeyError> {
        Ok(KeyDescription {
            kind: KeyKind::Pem,
            key_id: self.path.display().to_string(),
            key_version: self.fingerprint.clone(),
            algorithm: ALGORITHM.into(),
            key_ref: format!("pem:{}", self.path.display()),
        })
    }

    fn wrap(&self, dek: &VolumeKey) -> Result<Protector, KeyError> {
        let wrapped = self
            .key
            .to_public_key()
            .encrypt(&mut rand_core::OsRng, Oaep::new::<Sha256>(), dek.expose())
            .map_err(|e| KeyError::RoundTrip(format!("RSA-OAEP encryption failed: {e}")))?;
        Ok(Protector::new(self.describe()?, &wrapped))
    }

    /// A PEM protector is "mine" whatever file it names: the fingerprint decides, so a
    /// key moved to another path still opens the volume, and a different key gets a
    /// wrong-key error naming both versions.
    fn unwrap(&self, protector: &Protector) -> Option<Result<VolumeKey, KeyError>> {
        if protector.key.kind != KeyKind::Pem {
            return None;
        }
        if protector.key.key_version != self.fingerprint {
            return Some(Err(KeyError::WrongKey {
                needed: format!("RSA key {}", protector.key.key_version),
                given: format!("'{}' ({})", self.path.display(), self.fingerprint),
            }));
        }
        let key = format!("RSA key '{}'", self.path.display());
        Some((|| {
            let wrapped = protector.wrapped_for(&key)?;
            let plain =
                oaep_sha256_decrypt(&self.key, &wrapped).ok_or_else(|| KeyError::UnwrapFailed {
                    key: key.clone(),
                    detail: "RSA-OAEP decryption failed (the wrapped key is damaged)".into(),
                })?;
            VolumeKey::from_bytes(&plain).ok_or_else(|| KeyError::UnwrapFailed {
                key,
                detail: format!("the unwrapped key is {} bytes long", plain.len()),
            })
        })())
    }
}
