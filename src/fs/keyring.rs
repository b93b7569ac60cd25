//! The volume secrets the filesystem serves with.

use std::sync::{Arc, RwLock};

use fuser::Errno;

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
    pub fn get(&self) -> Result<Arc<VolumeSecrets>, Errno> {
        self.current
            .read()
            .map_err(|_| Errno::EIO)?
            .clone()
            .ok_or(Errno::EACCES)
    }

    /// Stops serving. The DEK is zeroized as soon as in-flight requests drop their
    /// references to it; every thread's contents buffer is wiped (a thread serving a
    /// request now wipes its own when done, before serving again), and open directory
    /// handles drop their decrypted listings.
    ///
    /// Buffers and listings are process-wide: a daemon serves one volume, and a lock of
    /// any volume in a process that serves several wipes them all (they are caches).
    pub fn withdraw(&self) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = None;
        super::contents::wipe_thread_buffers();
        super::handle::drop_all_listings();
    }

    pub fn restore(&self, secrets: VolumeSecrets) {
        *self
            .current
            .write()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(Arc::new(secrets));
    }

    pub fn is_serving(&self) -> bool {
        self.get().is_ok()
    }
}
