//! Customer-managed RSA keys in a PKCS#11 token (an HSM), named by an RFC 7512 URI:
//!
//! `pkcs11:token=T;object=LABEL[;id=%01]?module-path=/usr/lib/…/module.so&pin-source=file:/PATH`
//!
//! The wrap is RSA-OAEP (CKM_RSA_PKCS_OAEP) with SHA-256 and MGF1-SHA-256: C_Encrypt with
//! the public key object, C_Decrypt with the private key object, which never leaves the
//! token. Tokens that reject SHA-256 OAEP parameters (SoftHSM before 2.7 supports only
//! SHA-1) get RSA-OAEP with SHA-1, and the protector records which one was used.
//!
//! The key version is the key pair's CKA_ID in hex. A URI without `id=` follows the newest
//! version: the public key with that label whose CKA_ID, read as an unsigned big-endian
//! number, is highest. Unwrapping uses the CKA_ID the protector records, so volumes wrapped
//! under an older version still open after a newer key pair is added.

use std::cmp::Ordering;
use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::rsa::{PkcsMgfType, PkcsOaepParams, PkcsOaepSource};
use cryptoki::mechanism::{Mechanism, MechanismType};
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::{Slot, TokenInfo};
use cryptoki::types::RawAuthPin;

use super::command::check_trusted_file;
use super::host_state::{self, FileStamp, HostState, Suspension};
use super::pem::SUPPORTED_BITS;
use super::secure_file::read_private;
use super::{KeyContext, KeyDescription, KeyError, KeyKind, KeyProvider, Protector};
use crate::crypto::secret::SecretVec;
use crate::crypto::{VolumeKey, DEK_LEN};

/// RSA-OAEP with SHA-256 and MGF1-SHA-256, as Key Vault and KMS name it.
pub const ALGORITHM: &str = "RSA-OAEP-256";
/// RSA-OAEP with SHA-1 and MGF1-SHA-1: only for tokens that cannot do [`ALGORITHM`].
pub const ALGORITHM_SHA1: &str = "RSA-OAEP";
const MAX_PIN_FILE_LEN: u64 = 1024;

// --- the URI ---------------------------------------------------------------------------

/// A parsed `pkcs11:` URI (RFC 7512). Equality is on the text as given.
#[derive(Clone)]
pub struct Pkcs11Uri {
    text: String,
    token: TokenSelector,
    object: String,
    id: Option<Vec<u8>>,
    module_path: PathBuf,
    pin: Option<PinSource>,
}

/// Which token: its label, plus whatever else the URI names.
#[derive(Clone, Default)]
struct TokenSelector {
    label: String,
    manufacturer: Option<String>,
    serial: Option<String>,
    model: Option<String>,
}

#[derive(Clone)]
enum PinSource {
    File(PathBuf),
    /// The PIN itself, for tests: it is on the command line, visible to `ps`.
    Value(String),
}

impl Pkcs11Uri {
    /// The PKCS#11 module this URI loads.
    pub fn module_path(&self) -> &Path {
        &self.module_path
    }

    pub const SCHEME: &'static str = "pkcs11:";

    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let invalid = |detail: String| {
            KeyError::InvalidRef(format!("{} ({detail})", without_pin_value(text)))
        };
        let body = text
            .strip_prefix(Self::SCHEME)
            .ok_or_else(|| invalid(format!("a PKCS#11 URI starts with {}", Self::SCHEME)))?;
        let (path, query) = body.split_once('?').unwrap_or((body, ""));

        let mut token = TokenSelector::default();
        let (mut object, mut id) = (None, None);
        for (name, value) in attributes(path, ';').map_err(&invalid)? {
            let decoded = || utf8(name, &value).map_err(&invalid);
            match name {
                "token" => token.label = decoded()?,
                "manufacturer" => token.manufacturer = Some(decoded()?),
                "serial" => token.serial = Some(decoded()?),
                "model" => token.model = Some(decoded()?),
                "object" => object = Some(decoded()?),
                "id" => id = Some(value),
                // Both halves of the key pair are used, whichever the URI was copied from.
                "type" if matches!(value.as_slice(), b"public" | b"private") => {}
                "type" => return Err(invalid("type must be public or private".into())),
                other => {
                    return Err(invalid(format!(
                        "unsupported path attribute '{other}'; xtsfs understands token, \
                         manufacturer, serial, model, object, id and type"
                    )))
                }
            }
        }

        let (mut module_path, mut pin) = (None, None);
        for (name, value) in attributes(query, '&').map_err(&invalid)? {
            let decoded = || utf8(name, &value).map_err(&invalid);
            let new_pin = match name {
                "module-path" => {
                    module_path = Some(PathBuf::from(decoded()?));
                    continue;
                }
                "pin-source" => PinSource::File(pin_file(&decoded()?).map_err(&invalid)?),
                "pin-value" => PinSource::Value(decoded()?),
                "module-name" => {
                    return Err(invalid(
                        "module-name is not supported; give module-path=/ABSOLUTE/PATH".into(),
                    ))
                }
                other => {
                    return Err(invalid(format!(
                        "unsupported query attribute '{other}'; xtsfs understands \
                         module-path, pin-source and pin-value"
                    )))
                }
            };
            if pin.replace(new_pin).is_some() {
                return Err(invalid("give pin-source or pin-value, not both".into()));
            }
        }

        if token.label.is_empty() {
            return Err(invalid("it needs token=LABEL".into()));
        }
        let object = object
            .filter(|o| !o.is_empty())
            .ok_or_else(|| invalid("it needs object=LABEL, the key pair's label".into()))?;
        if id.as_ref().is_some_and(Vec::is_empty) {
            return Err(invalid("id is empty".into()));
        }
        let module_path = module_path.ok_or_else(|| {
            invalid("it needs module-path=/ABSOLUTE/PATH of the PKCS#11 module".into())
        })?;
        if !module_path.is_absolute() {
            return Err(invalid("module-path must be an absolute path".into()));
        }
        Ok(Pkcs11Uri {
            text: text.into(),
            token,
            object,
            id,
            module_path,
            pin,
        })
    }

    /// The URI as given, minus any `pin-value` and `pin-source`: what the volume header
    /// records. The PIN never comes from a header (see [`Pkcs11Uri::recorded`]).
    pub fn key_ref(&self) -> String {
        without_query(&self.text, &["pin-value", "pin-source"])
    }

    /// This URI as read from a volume header, which whoever can write the backing
    /// directory controls: a `pin-value` is refused, and a `pin-source` is dropped (it
    /// could name any root-owned file, and a wrong PIN at every key check would lock the
    /// token's user PIN for every application). The PIN comes from this host's
    /// configuration (`--pkcs11-pin-source`) instead.
    pub fn recorded(&self) -> Result<Pkcs11Uri, KeyError> {
        if matches!(self.pin, Some(PinSource::Value(_))) {
            return Err(KeyError::InvalidRef(format!(
                "{} (a volume header may not carry pin-value; give the PIN with --pkcs11-pin-source FILE or XTSFS_PKCS11_PIN_SOURCE)",
                self.key_ref()
            )));
        }
        Ok(Pkcs11Uri {
            text: self.key_ref(),
            pin: None,
            ..self.clone()
        })
    }

    /// `token/label`, the key id protectors record.
    pub fn key_id(&self) -> String {
        format!("{}/{}", self.token.label, self.object)
    }
}

impl fmt::Display for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Never prints a `pin-value`.
impl fmt::Debug for Pkcs11Uri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("Pkcs11Uri").field(&self.key_ref()).finish()
    }
}

impl PartialEq for Pkcs11Uri {
    fn eq(&self, other: &Self) -> bool {
        self.text == other.text
    }
}

impl Eq for Pkcs11Uri {}

/// Splits `name=value` attributes on `separator` and percent-decodes the values.
/// Each attribute may appear once (RFC 7512 section 2.3).
fn attributes(text: &str, separator: char) -> Result<Vec<(&str, Vec<u8>)>, String> {
    let mut parsed: Vec<(&str, Vec<u8>)> = Vec::new();
    for attribute in text.split(separator).filter(|a| !a.is_empty()) {
        let (name, value) = attribute
            .split_once('=')
            .ok_or_else(|| format!("attribute '{attribute}' has no '='"))?;
        if parsed.iter().any(|(seen, _)| *seen == name) {
            return Err(format!("attribute '{name}' appears twice"));
        }
        let value = percent_decode(value).map_err(|e| format!("attribute '{name}': {e}"))?;
        parsed.push((name, value));
    }
    Ok(parsed)
}

fn percent_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let pair = bytes
                .get(i + 1..i + 3)
                .and_then(|h| std::str::from_utf8(h).ok())
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("'%' must be followed by two hex digits")?;
            decoded.push(pair);
            i += 3;
        } else {
            decoded.push(bytes[i]);
            i += 1;
        }
    }
    Ok(decoded)
}

fn utf8(name: &str, value: &[u8]) -> Result<String, String> {
    String::from_utf8(value.to_vec()).map_err(|_| format!("attribute '{name}' is not UTF-8"))
}

/// `file:/PATH`, `file:///PATH` or `/PATH`. RFC 7512 leaves other schemes to the
/// application; running a program for the PIN (`|cmd`) is deliberately not supported.
fn pin_file(source: &str) -> Result<PathBuf, String> {
    let path = source
        .strip_prefix("file://")
        .or_else(|| source.strip_prefix("file:"))
        .unwrap_or(source);
    if path.starts_with('/') {
        Ok(PathBuf::from(path))
    } else {
        Err("pin-source must be file:/ABSOLUTE/PATH".into())
    }
}

fn without_pin_value(text: &str) -> String {
    without_query(text, &["pin-value"])
}

/// `text` without the query attributes named in `dropped`.
fn without_query(text: &str, dropped: &[&str]) -> String {
    let Some((base, query)) = text.split_once('?') else {
        return text.into();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|a| !dropped.contains(&a.split_once('=').map_or(*a, |(name, _)| name)))
        .collect();
    if kept.iter().all(|a| a.is_empty()) {
        base.into()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

// --- loaded modules ----------------------------------------------------------------------

/// Loaded PKCS#11 modules by canonical path. C_Initialize may be called once per process
/// and C_Finalize ends the library for every user, so providers share one initialized
/// module and the last one to finish finalizes it. Finalizing between uses also makes a
/// module such as SoftHSM rescan its tokens on the next C_Initialize. Modules stay loaded:
/// unloading and reloading a library that links a crypto library is asking for trouble.
static MODULES: Mutex<BTreeMap<PathBuf, LoadedModule>> = Mutex::new(BTreeMap::new());

struct LoadedModule {
    pkcs11: Pkcs11,
    leases: usize,
}

/// One provider's use of an initialized module.
struct ModuleLease {
    path: PathBuf,
    pkcs11: Pkcs11,
}

impl ModuleLease {
    fn acquire(path: &Path) -> Result<Self, KeyError> {
        let canonical = std::fs::canonicalize(path)
            .map_err(|e| KeyError::NotFound(format!("PKCS#11 module '{}': {e}", path.display())))?;
        let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
        let module = match modules.entry(canonical.clone()) {
            std::collections::btree_map::Entry::Occupied(entry) => entry.into_mut(),
            std::collections::btree_map::Entry::Vacant(entry) => {
                // The module is code run with this process's privileges: the same rule as
                // for a KMS command program.
                check_trusted_file(&canonical, "PKCS#11 module")?;
                let pkcs11 = Pkcs11::new(&canonical).map_err(|e| KeyError::Unavailable {
                    key: format!("PKCS#11 module '{}'", path.display()),
                    detail: format!("cannot load it: {e}"),
                })?;
                entry.insert(LoadedModule { pkcs11, leases: 0 })
            }
        };
        if module.leases == 0 {
            match module
                .pkcs11
                .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            {
                Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
                Err(e) => {
                    return Err(KeyError::Unavailable {
                        key: format!("PKCS#11 module '{}'", path.display()),
                        detail: format!("C_Initialize failed: {}", ck_error(&e)),
                    })
                }
            }
        }
        module.leases += 1;
        Ok(ModuleLease {
            path: canonical,
            pkcs11: module.pkcs11.clone(),
        })
    }
}

impl Drop for ModuleLease {
    fn drop(&mut self) {
        let mut modules = MODULES.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(module) = modules.get_mut(&self.path) {
            module.leases -= 1;
            if module.leases == 0 {
                if let Err(e) = module.pkcs11.clone().finalize() {
                    let module = self.path.display();
                    tracing::warn!(%module, "C_Finalize failed: {}", ck_error(&e));
                }
            }
        }
    }
}

// --- the provider ------------------------------------------------------------------------

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
        let module = ModuleLease::acquire(&uri.module_path)?;
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
            let wrapped = protector
                .wrapped_bytes()
                .ok_or_else(|| KeyError::UnwrapFailed {
                    key: key.clone(),
                    detail: "the wrapped key is not valid base64".into(),
                })?;
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

/// Which token a login goes to, for suspensions.
struct TokenIdentity {
    module: PathBuf,
    /// Label and serial number.
    token: String,
    /// For messages.
    name: String,
}

fn login(
    session: &Session,
    pin: Option<&PinSource>,
    info: &TokenInfo,
    identity: &TokenIdentity,
    ctx: &KeyContext,
) -> Result<(), KeyError> {
    let token = identity.name.as_str();
    let pin_file = match pin {
        Some(PinSource::File(path)) => Some(path.as_path()),
        _ => None,
    };
    let (pin, state) = match pin {
        None if info.login_required() => {
            return Err(KeyError::Denied {
                key: token.into(),
                detail: "the token requires a PIN: give --pkcs11-pin-source FILE (or \
                         XTSFS_PKCS11_PIN_SOURCE), or pin-source=file:/PATH in a --key given on \
                         the command line (a PIN source recorded in a volume header is not used)"
                    .into(),
            })
        }
        None => return Ok(()),
        Some(source) => {
            let state = HostState::open(&ctx.host_state_dir, true)?
                .expect("the host state directory was just created");
            check_suspension(&state, identity, pin_file)?;
            (read_pin(source)?, state)
        }
    };
    match session.login_with_raw(UserType::User, &pin) {
        // Logins are per token, not per session: another provider in this process did it.
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(
            e
            @ CkError::Pkcs11(RvError::PinIncorrect | RvError::PinLocked | RvError::PinExpired, _),
        ) => {
            let suspension = Suspension {
                token: identity.token.clone(),
                module: identity.module.clone(),
                reason: ck_error(&e),
                at: host_state::now(),
                pin_file: pin_file.map(Path::to_path_buf),
                pin_file_stamp: pin_file.and_then(FileStamp::of),
            };
            let marker = state.suspend(&suspension)?;
            tracing::error!(token, reason = %suspension.reason, "PKCS#11 login refused; no more logins to this token until the operator acts");
            Err(KeyError::LoginSuspended {
                token: token.into(),
                detail: format!("the login just failed with {}", suspension.reason),
                remedy: remedy(pin_file, &marker),
            })
        }
        Err(e) => Err(token_error(token, "login failed", &e)),
    }
}

fn read_pin(source: &PinSource) -> Result<RawAuthPin, KeyError> {
    Ok(match source {
        PinSource::File(path) => {
            let mut bytes = read_private(path, MAX_PIN_FILE_LEN)?;
            // A PIN file written with `echo` ends in a newline that is not part of the PIN.
            while bytes.last().is_some_and(|b| *b == b'\n' || *b == b'\r') {
                bytes.pop();
            }
            RawAuthPin::new(Box::new(std::mem::take(&mut *bytes)))
        }
        PinSource::Value(value) => RawAuthPin::new(Box::new(value.clone().into_bytes())),
    })
}

/// Refuses to log in while a suspension stands, whatever PIN source this process has. A
/// suspension recorded with a PIN file is lifted by any change to that file: fixing the
/// PIN is the operator's act.
fn check_suspension(
    state: &HostState,
    identity: &TokenIdentity,
    pin_file: Option<&Path>,
) -> Result<(), KeyError> {
    let Some((suspension, marker)) = state.suspension(&identity.module, &identity.token)? else {
        return Ok(());
    };
    // Only a change to the PIN file that failed counts: another process on this host
    // with another PIN source must not try its PIN and lift the suspension for all.
    let changed = match (&suspension.pin_file, &suspension.pin_file_stamp, pin_file) {
        (Some(then), Some(stamp), Some(now)) if then == now => {
            FileStamp::of(now).as_ref() != Some(stamp)
        }
        _ => false,
    };
    if changed {
        tracing::warn!(token = %identity.name, "the PIN file changed since logins were suspended; trying the PIN again");
        return state.lift(&marker);
    }
    Err(KeyError::LoginSuspended {
        token: identity.name.clone(),
        detail: format!(
            "the last login{} failed with {}",
            if suspension.at.is_empty() {
                String::new()
            } else {
                format!(" (at {})", suspension.at)
            },
            suspension.reason
        ),
        remedy: remedy(suspension.pin_file.as_deref(), &marker),
    })
}

fn remedy(pin_file: Option<&Path>, marker: &Path) -> String {
    match pin_file {
        Some(file) => format!(
            "put the right PIN in '{}' (any change to that file lifts the suspension; unlock the PIN on the token first if it is locked), or remove '{}'",
            file.display(),
            marker.display()
        ),
        None => format!(
            "fix the PIN, then remove '{}'",
            marker.display()
        ),
    }
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

fn decrypt_error(key: &str, error: &CkError) -> KeyError {
    match error {
        CkError::Pkcs11(RvError::KeyFunctionNotPermitted, _) => no_decrypt_permission(key),
        // The key was just found and checked in this session, so a vague failure here is
        // most likely the ciphertext: SoftHSM reports bad OAEP padding as CKR_GENERAL_ERROR.
        CkError::Pkcs11(RvError::GeneralError | RvError::FunctionFailed, _) => {
            KeyError::UnwrapFailed {
                key: key.into(),
                detail: format!(
                    "RSA-OAEP decryption failed: {} (the wrapped key is damaged or was wrapped \
                     under another key, or the token failed)",
                    ck_error(error)
                ),
            }
        }
        other => token_error(key, "RSA-OAEP decryption failed", other),
    }
}

fn no_decrypt_permission(key: &str) -> KeyError {
    KeyError::Denied {
        key: key.into(),
        detail: "the private key does not allow CKA_DECRYPT, which unwrapping the volume key needs"
            .into(),
    }
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

/// What a token error means for the user: wrong PIN or forbidden use is "denied", a missing
/// or broken token is "unavailable", a ciphertext the key cannot decrypt is a failed unwrap.
fn token_error(key: &str, what: &str, error: &CkError) -> KeyError {
    let detail = format!("{what}: {}", ck_error(error));
    let CkError::Pkcs11(rv, _) = error else {
        return KeyError::Unavailable {
            key: key.into(),
            detail,
        };
    };
    match rv {
        RvError::PinIncorrect
        | RvError::PinInvalid
        | RvError::PinLenRange
        | RvError::PinExpired
        | RvError::PinLocked
        | RvError::UserPinNotInitialized
        | RvError::UserNotLoggedIn
        | RvError::KeyFunctionNotPermitted => KeyError::Denied {
            key: key.into(),
            detail,
        },
        RvError::EncryptedDataInvalid | RvError::EncryptedDataLenRange => KeyError::UnwrapFailed {
            key: key.into(),
            detail: format!(
                "{detail} (the wrapped key is damaged, or was wrapped under another key)"
            ),
        },
        RvError::MechanismInvalid => {
            KeyError::RoundTrip(format!("{key}: the token does not offer CKM_RSA_PKCS_OAEP"))
        }
        _ => KeyError::Unavailable {
            key: key.into(),
            detail,
        },
    }
}

/// `CKR_PIN_INCORRECT` rather than cryptoki's paragraph-long descriptions: the code is
/// what HSM documentation and administrators use.
fn ck_error(error: &CkError) -> String {
    match error {
        CkError::Pkcs11(rv, function) => {
            let mut code = String::from("CKR");
            for c in format!("{rv:?}").chars() {
                if c.is_ascii_uppercase() {
                    code.push('_');
                }
                code.push(c.to_ascii_uppercase());
            }
            format!("{code} from C_{function:?}")
        }
        other => other.to_string(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
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

    const MODULE: &str = "module-path=/usr/lib/softhsm/libsofthsm2.so";

    fn parse(text: &str) -> Result<Pkcs11Uri, String> {
        Pkcs11Uri::parse(text).map_err(|e| e.to_string())
    }

    #[test]
    fn parses_path_and_query_attributes_with_percent_decoding() {
        let uri = parse(&format!(
            "pkcs11:token=My%20Token;object=kek;id=%01%ff;type=private?{MODULE}&pin-source=file:/etc/pin"
        ))
        .unwrap();
        assert_eq!(uri.token.label, "My Token");
        assert_eq!(uri.object, "kek");
        assert_eq!(uri.id.as_deref(), Some(&[0x01, 0xff][..]));
        assert_eq!(
            uri.module_path,
            Path::new("/usr/lib/softhsm/libsofthsm2.so")
        );
        assert!(matches!(&uri.pin, Some(PinSource::File(p)) if p == Path::new("/etc/pin")));
        assert_eq!(uri.key_id(), "My Token/kek");
    }

    #[test]
    fn key_ref_drops_only_the_pin_value() {
        let text = format!("pkcs11:token=T;object=k?{MODULE}&pin-value=1234");
        let uri = parse(&text).unwrap();
        assert_eq!(uri.key_ref(), format!("pkcs11:token=T;object=k?{MODULE}"));
        assert_eq!(uri.to_string(), text, "Display gives the URI as given");
        assert!(!format!("{uri:?}").contains("1234"));
        let first = parse(&format!("pkcs11:token=T;object=k?pin-value=1234&{MODULE}")).unwrap();
        assert_eq!(first.key_ref(), format!("pkcs11:token=T;object=k?{MODULE}"));
    }

    #[test]
    fn bad_uris_say_what_is_wrong_without_echoing_the_pin() {
        for (text, expected) in [
            (
                "pkcs11:object=k?module-path=/m.so".to_string(),
                "needs token=",
            ),
            ("pkcs11:token=T?module-path=/m.so".into(), "needs object="),
            ("pkcs11:token=T;object=k".into(), "needs module-path="),
            (
                "pkcs11:token=T;object=k?module-path=m.so".into(),
                "absolute",
            ),
            (
                format!("pkcs11:token=T;object=k;id=%0g?{MODULE}"),
                "two hex digits",
            ),
            (
                format!("pkcs11:token=T;object=k;id=%0?{MODULE}"),
                "two hex digits",
            ),
            (
                format!("pkcs11:token=T;token=U;object=k?{MODULE}"),
                "appears twice",
            ),
            (
                format!("pkcs11:token=T;object=k;slot-id=1?{MODULE}"),
                "unsupported path attribute 'slot-id'",
            ),
            (
                format!("pkcs11:token=T;object=k?{MODULE}&pin-source=|cat"),
                "file:/ABSOLUTE/PATH",
            ),
            (
                format!("pkcs11:token=T;object=k?{MODULE}&pin-source=/p&pin-value=99"),
                "not both",
            ),
            (
                format!("pkcs11:token=T;object=k;type=cert?{MODULE}"),
                "type must be",
            ),
            (
                format!("pkcs11:token=T;object=k;label?{MODULE}"),
                "has no '='",
            ),
            (
                format!("pkcs11:token=T;object=k?{MODULE}&pin-value=99&x=1"),
                "unsupported query attribute 'x'",
            ),
        ] {
            let error = parse(&text).expect_err(&text);
            assert!(error.contains(expected), "{text}: {error}");
            assert!(!error.contains("99"), "{text}: the PIN is echoed: {error}");
        }
    }

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

    #[test]
    fn error_codes_read_like_the_spec() {
        let error = CkError::Pkcs11(RvError::PinIncorrect, cryptoki::context::Function::Login);
        assert_eq!(ck_error(&error), "CKR_PIN_INCORRECT from C_Login");
    }
}
