//! Loaded PKCS#11 modules, shared by every provider in the process: one C_Initialize
//! for the first user of a module and one C_Finalize after the last.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, PoisonError};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};

use super::errors::ck_error;
use crate::keys::secure_file::check_trusted_file;
use crate::keys::KeyError;

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
pub(super) struct ModuleLease {
    /// The module's canonical path.
    pub(super) path: PathBuf,
    pub(super) pkcs11: Pkcs11,
}

impl ModuleLease {
    pub(super) fn acquire(path: &Path) -> Result<Self, KeyError> {
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
