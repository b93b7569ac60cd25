//! The volume secrets the filesystem serves with.

use std::sync::{Arc, RwLock};

use super::errno::{read, recover, FsError};
use crate::crypto::names::NameCipher;
use crate::crypto::VolumeKey;

/// The unwrapped DEK and the name cipher derived from it.
pub struct VolumeSecrets {
    pub dek: VolumeKey,
    pub names: NameCipher,
}

impl VolumeSecrets {
    pub fn new(dek: VolumeKey, encrypt_names: bool) -> Self {
        let names = if encrypt_names {
            NameCipher::Encrypted(dek.names_key())
        } else {
            NameCipher::Plaintext
        };
        VolumeSecrets { dek, names }
    }
}

/// Holds the volume secrets while the volume may be served.
pub struct Keyring {
    current: RwLock<Option<Arc<VolumeSecrets>>>,
}

impl Keyring {
    pub fn new(secrets: VolumeSecrets) -> Self {
        Keyring {
            current: RwLock::new(Some(Arc::new(secrets))),
        }
    }

    /// The secrets, or EACCES while the volume is locked.
    pub fn get(&self) -> Result<Arc<VolumeSecrets>, FsError> {
        read(&self.current)?.clone().ok_or(FsError::Locked)
    }

    /// Stops serving: no request gets the secrets any more, and the DEK is zeroized as
    /// soon as in-flight requests drop their references to it. (`XtsFs::withdraw_keys`
    /// drops the rest: file keys, contents buffers, directory listings.)
    pub fn withdraw(&self) {
        // Recovered from poisoning: the keys must go whatever happened before.
        *recover(self.current.write()) = None;
    }

    pub fn restore(&self, secrets: VolumeSecrets) {
        // Recovered from poisoning: the value is replaced whole.
        *recover(self.current.write()) = Some(Arc::new(secrets));
    }
}
