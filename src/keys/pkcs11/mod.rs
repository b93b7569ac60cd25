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
//!
//! - `uri`: the URI, parsed, and its forms for a volume header;
//! - `module_lease`: one initialized module per process, shared by providers;
//! - `login`: the PIN and the suspension of logins after a refused PIN;
//! - `provider`: the [`KeyProvider`](super::KeyProvider) itself;
//! - `errors`: token errors as key errors.

mod errors;
mod login;
mod module_lease;
mod provider;
mod uri;

pub use provider::Pkcs11Provider;
pub use uri::Pkcs11Uri;

/// RSA-OAEP with SHA-256 and MGF1-SHA-256, as Key Vault and KMS name it.
pub const ALGORITHM: &str = "RSA-OAEP-256";
/// RSA-OAEP with SHA-1 and MGF1-SHA-1: only for tokens that cannot do [`ALGORITHM`].
pub const ALGORITHM_SHA1: &str = "RSA-OAEP";
