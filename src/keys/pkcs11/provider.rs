//! [`Pkcs11Provider`]: wraps with the newest (or the named) public key of a key pair on
//! the token and unwraps with the private key of the version a protector records.

use std::cmp::Ordering;
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki::context::Pkcs11;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::Session;
use cryptoki::slot::{Slot, TokenInfo};

use super::errors::{ck_error, decrypt_error, no_decrypt_permission, token_error};
use super::login::{login, TokenIdentity};
use super::module_lease::ModuleLease;
use super::uri::{PinSource, Pkcs11Uri, TokenSelector};
use super::{ALGORITHM, ALGORITHM_SHA1};
use crate::crypto::secret::SecretVec;
use crate::crypto::{hex, VolumeKey, DEK_LEN};
use crate::keys::{
    KeyContext, KeyDescription, KeyError, KeyKind, KeyProvider, Protector, SUPPORTED_BITS,
};

/// Which OAEP hash the token does. Decided once per provider by a trial encryption.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum OaepHash {
    Sha256,
    Sha1,
}

impl OaepHash {
    fn algorithm(self) -> &'static str {
        match self {
            OaepHash::Sha256 => ALGORITHM,
            OaepHash::Sha1 => ALGORITHM_SHA1,
        }
    }

    fn from_algorithm(name: &str) -> Option<Self> {
        match name {
            ALGORITHM => Some(OaepHash::Sha256),
            ALGORITHM_SHA1 => Some(OaepHash::Sha1),
            _ => None,
        }
    }

    fn mechanism(self) -> Mechanism<'static> {
        let (hash, mgf) = match self {
            OaepHash::Sha256 => (MechanismType::SHA256, PkcsMgfType::MGF1_SHA256),
            OaepHash::Sha1 => (MechanismType::SHA1, PkcsMgfType::MGF1_SHA1),
        };
        Mechanism::RsaPkcsOaep(PkcsOaepParams::new(hash, mgf, PkcsOaepSource::empty()))
    }
}

/// The RSA public key a wrap uses now.
struct WrappingKey {
    handle: ObjectHandle,
    id: Vec<u8>,
}

pub struct Pkcs11Provider {
    uri: Pkcs11Uri,
    // Declared before the lease: the session must close before the module is finalized.
    session: Mutex<Session>,
    oaep: OnceLock<OaepHash>,
    /// Held only to be dropped last: it finalizes the module after the last provider.
    _module: ModuleLease,
}

impl Pkcs11Provider {
    /// Loads the module, finds the token and logs in; no key is used yet. The PIN comes
    /// from the URI if the user gave it one on the command line, else from
    /// `ctx.pkcs11_pin_source`.
    pub fn open(uri: &Pkcs11Uri, ctx: &KeyContext) -> Result<Self, KeyError> {
        let module = ModuleLease::acquire(uri.module_path())?;
        let token = format!("PKCS#11 token '{}'", uri.token.label);
        let (slot, info) =
            find_token(&module.pkcs11, &uri.token).map_err(|detail| KeyError::Unavailable {
                key: token.clone(),
                detail,
            })?;
        let session = module
            .pkcs11
            .open_ro_session(slot)
            .map_err(|e| token_error(&token, "cannot open a session", &e))?;
        let pin = uri.pin.clone().or_else(|| {
            ctx.pkcs11_pin_source
                .as_ref()
                .map(|path| PinSource::File(path.clone()))
        });
        let identity = TokenIdentity {
            module: module.path.clone(),
            token: format!("{}/{}", info.label(), info.serial_number()),
            name: token.clone(),
        };
        login(&session, pin.as_ref(), &info, &identity, ctx)?;
        Ok(Pkcs11Provider {
            uri: uri.clone(),
            session: Mutex::new(session),
            oaep: OnceLock::new(),
            _module: module,
        })
    }

    fn token_name(&self) -> String {
        format!("PKCS#11 token '{}'", self.uri.token.label)
    }

    fn key_name(&self, id: &[u8]) -> String {
        format!(
            "key '{}' id {} on PKCS#11 token '{}'",
            self.uri.object,
            hex(id),
            self.uri.token.label
        )
    }

    fn session(&self) -> std::sync::MutexGuard<'_, Session> {
        self.session.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The pinned public key, or the newest one with the label.
    fn wrapping_key(&self, session: &Session) -> Result<WrappingKey, KeyError> {
        let mut template = vec![
            Attribute::Class(ObjectClass::PUBLIC_KEY),
            Attribute::Label(self.uri.object.as_bytes().to_vec()),
        ];
        if let Some(id) = &self.uri.id {
            template.push(Attribute::Id(id.clone()));
        }
        let token = self.token_name();
        let handles = session
            .find_objects(&template)
            .map_err(|e| token_error(&token, "cannot search for the public key", &e))?;
        let mut keys = Vec::with_capacity(handles.len());
        for handle in handles {
            let id = match session.get_attributes(handle, &[AttributeType::Id]) {
                Ok(attrs) => attrs.into_iter().find_map(|a| match a {
                    Attribute::Id(id) => Some(id),
                    _ => None,
                }),
                Err(e) => return Err(token_error(&token, "cannot read CKA_ID", &e)),
            };
            // Without a CKA_ID a key pair has no version to record.
            if let Some(id) = id.filter(|id| !id.is_empty()) {
                keys.push(WrappingKey { handle, id });
            }
        }
        keys.sort_by(|a, b| id_order(&a.id, &b.id));
        let newest = keys.pop().ok_or_else(|| {
            KeyError::NotFound(match &self.uri.id {
                Some(id) => format!(
                    "{token} has no public key labelled '{}' with id {}",
                    self.uri.object,
                    hex(id)
                ),
                None => format!(
                    "{token} has no public key labelled '{}' with a CKA_ID",
                    self.uri.object
                ),
            })
        })?;
        if keys.last().is_some_and(|k| k.id == newest.id) {
            return Err(KeyError::NotFound(format!(
                "{token} holds more than one public key labelled '{}' with id {}; the key reference must name exactly one",
                self.uri.object,
                hex(&newest.id)
            )));
        }
        check_rsa(session, newest.handle, &self.key_name(&newest.id))?;
        Ok(newest)
    }

    /// RSA-OAEP with SHA-256 if the token does it, else with SHA-1, found by encrypting a
    /// zero block: the only portable way to learn which OAEP parameters a token takes.
    fn oaep_hash(&self, session: &Session, key: &WrappingKey) -> Result<OaepHash, KeyError> {
        if let Some(hash) = self.oaep.get() {
            return Ok(*hash);
        }
        let probe = [0u8; DEK_LEN];
        let hash = match session.encrypt(&OaepHash::Sha256.mechanism(), key.handle, &probe) {
            Ok(_) => OaepHash::Sha256,
            Err(CkError::Pkcs11(RvError::MechanismParamInvalid | RvError::ArgumentsBad, _)) => {
                // Not a warning: the key monitor opens a provider at every check, and the
                // protector records the algorithm for anyone who wants to know.
                tracing::info!(
                    token = %self.uri.token.label,
                    "the token does not do RSA-OAEP with SHA-256; wrapping with RSA-OAEP (SHA-1)"
                );
                OaepHash::Sha1
            }
            Err(e) => {
                return Err(token_error(
                    &self.key_name(&key.id),
                    "RSA-OAEP encryption failed",
                    &e,
                ))
            }
        };
        Ok(*self.oaep.get_or_init(|| hash))
    }

    fn description(&self, id: &[u8], hash: OaepHash) -> KeyDescription {
        KeyDescription {
            kind: KeyKind::Pkcs11,
            key_id: self.uri.key_id(),
            key_version: hex(id),
            algorithm: hash.algorithm().into(),
            key_ref: self.uri.key_ref(),
        }
    }

    /// The private key for one version, checked to be an RSA key that may decrypt.
    fn unwrapping_key(&self, session: &Session, id: &[u8]) -> Result<ObjectHandle, KeyError> {
        let key = self.key_name(id);
        let template = [
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(self.uri.object.as_bytes().to_vec()),
            Attribute::Id(id.to_vec()),
        ];
        let handles = session
            .find_objects(&template)
            .map_err(|e| token_error(&key, "cannot search for the private key", &e))?;
        let [handle] = handles[..] else {
            return Err(KeyError::NotFound(if handles.is_empty() {
                format!(
                    "the private {key} is not on the token (deleted, or not visible to this login)"
                )
            } else {
                format!(
                    "the token holds {} private keys matching {key}; the key reference must name exactly one",
                    handles.len()
                )
            }));
        };
        check_rsa(session, handle, &key)?;
        let decrypt = session
            .get_attributes(handle, &[AttributeType::Decrypt])
            .map_err(|e| token_error(&key, "cannot read CKA_DECRYPT", &e))?;
        if !decrypt.contains(&Attribute::Decrypt(true)) {
            return Err(no_decrypt_permission(&key));
        }
        Ok(handle)
    }
}

impl KeyProvider for Pkcs11Provider {
    fn describe(&self) -> Result<KeyDescription, KeyError> {
        let session = self.session();
        let key = self.wrapping_key(&session)?;
        let hash = self.oaep_hash(&session, &key)?;
        Ok(self.description(&key.id, hash))
    }

    fn wrap(&self, dek: &VolumeKey) -> Result<Protector, KeyError> {
        let session = self.session();
        let key = self.wrapping_key(&session)?;
        let hash = self.oaep_hash(&session, &key)?;
        let wrapped = session
            .encrypt(&hash.mechanism(), key.handle, dek.expose())
            .map_err(|e| token_error(&self.key_name(&key.id), "RSA-OAEP encryption failed", &e))?;
        Ok(Protector::new(self.description(&key.id, hash), &wrapped))
    }

    fn unwrap(&self, protector: &Protector) -> Option<Result<VolumeKey, KeyError>> {
        if protector.key.kind != KeyKind::Pkcs11 || protector.key.key_id != self.uri.key_id() {
            return None;
        }
        let version = &protector.key.key_version;
        Some((|| {
            let id = unhex(version).ok_or_else(|| KeyError::UnwrapFailed {
                key: format!("key '{}'", self.uri.key_id()),
                detail: format!("the protector's key version '{version}' is not a hex CKA_ID"),
            })?;
            let key = self.key_name(&id);
            let hash = OaepHash::from_algorithm(&protector.key.algorithm).ok_or_else(|| {
                KeyError::UnwrapFailed {
                    key: key.clone(),
                    detail: format!("unknown wrap algorithm '{}'", protector.key.algorithm),
                }
            })?;
            let wrapped = protector.wrapped_for(&key)?;
            let session = self.session();
            let handle = self.unwrapping_key(&session, &id)?;
            let plain: SecretVec = session
                .decrypt(&hash.mechanism(), handle, &wrapped)
                .map(SecretVec::new)
                .map_err(|e| decrypt_error(&key, &e))?;
            VolumeKey::from_bytes(&plain).ok_or_else(|| KeyError::UnwrapFailed {
                key,
                detail: format!("the unwrapped key is {} bytes long", plain.len()),
            })
        })())
    }
}

fn find_token(pkcs11: &Pkcs11, wanted: &TokenSelector) -> Result<(Slot, TokenInfo), String> {
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| format!("cannot list slots: {}", ck_error(&e)))?;
    let mut present = Vec::new();
    for slot in slots {
        let Ok(info) = pkcs11.get_token_info(slot) else {
            continue;
        };
        if !info.token_initialized() {
            continue;
        }
        let matches = info.label() == wanted.label
            && wanted
                .manufacturer
                .as_deref()
                .is_none_or(|m| m == info.manufacturer_id())
            && wanted
                .serial
                .as_deref()
                .is_none_or(|s| s == info.serial_number())
            && wanted.model.as_deref().is_none_or(|m| m == info.model());
        if matches {
            return Ok((slot, info));
        }
        present.push(format!("'{}'", info.label()));
    }
    Err(if present.is_empty() {
        "the module reports no tokens present".into()
    } else {
        format!(
            "no such token is present (tokens present: {})",
            present.join(", ")
        )
    })
}

/// Checks that a key object is RSA of a supported size; EC and other keys are refused.
fn check_rsa(session: &Session, handle: ObjectHandle, key: &str) -> Result<(), KeyError> {
    let attrs = session
        .get_attributes(handle, &[AttributeType::KeyType, AttributeType::Modulus])
        .map_err(|e| token_error(key, "cannot read the key type", &e))?;
    let mut key_type = None;
    let mut bits = None;
    for attr in attrs {
        match attr {
            Attribute::KeyType(t) => key_type = Some(t),
            // CKA_MODULUS_BITS exists only on public keys; the modulus is on both halves.
            Attribute::Modulus(n) => bits = Some(modulus_bits(&n)),
            _ => {}
        }
    }
    match (key_type, bits) {
        (Some(KeyType::RSA), Some(bits)) if SUPPORTED_BITS.contains(&bits) => Ok(()),
        (Some(KeyType::RSA), Some(bits)) => {
            Err(KeyError::Unsupported(format!("{key} is an RSA-{bits} key")))
        }
        (Some(KeyType::RSA), None) => Err(KeyError::Unsupported(format!(
            "{key} does not show its modulus"
        ))),
        (Some(KeyType::EC), _) => Err(KeyError::Unsupported(format!("{key} is an EC key"))),
        (Some(other), _) => Err(KeyError::Unsupported(format!("{key} is a {other} key"))),
        (None, _) => Err(KeyError::Unsupported(format!(
            "{key} does not say its key type"
        ))),
    }
}

fn modulus_bits(modulus: &[u8]) -> usize {
    let significant = match modulus.iter().position(|b| *b != 0) {
        Some(first) => &modulus[first..],
        None => return 0,
    };
    significant.len() * 8 - significant[0].leading_zeros() as usize
}

/// Orders CKA_IDs as unsigned big-endian numbers (leading zero bytes do not count), then
/// by length so that equal numbers with different encodings still order consistently.
fn id_order(a: &[u8], b: &[u8]) -> Ordering {
    let trim = |id: &[u8]| -> usize { id.iter().position(|b| *b != 0).unwrap_or(id.len()) };
    let (a_num, b_num) = (&a[trim(a)..], &b[trim(b)..]);
    a_num
        .len()
        .cmp(&b_num.len())
        .then_with(|| a_num.cmp(b_num))
        .then_with(|| a.len().cmp(&b.len()))
}

fn unhex(text: &str) -> Option<Vec<u8>> {
    if text.is_empty() || !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_order_as_unsigned_big_endian_numbers() {
        let mut ids: Vec<Vec<u8>> = vec![
            vec![0x02],
            vec![0x01, 0x00],
            vec![0xff],
            vec![0x00, 0x03],
            vec![],
        ];
        ids.sort_by(|a, b| id_order(a, b));
        assert_eq!(
            ids,
            vec![
                vec![],
                vec![0x02],
                vec![0x00, 0x03],
                vec![0xff],
                vec![0x01, 0x00]
            ]
        );
    }

    #[test]
    fn modulus_bits_ignores_leading_zero_bytes() {
        let mut modulus = vec![0u8; 257];
        modulus[1] = 0x80;
        assert_eq!(modulus_bits(&modulus), 2048);
        assert_eq!(modulus_bits(&[0x01, 0x00]), 9);
    }

    #[test]
    fn hex_round_trips() {
        assert_eq!(unhex(&hex(&[0, 1, 0xab])), Some(vec![0, 1, 0xab]));
        assert_eq!(unhex("0"), None);
        assert_eq!(unhex("zz"), None);
        assert_eq!(unhex(""), None);
    }
}
