//! What a PKCS#11 error means for the user, as a [`KeyError`], and how its code reads.

use cryptoki::error::{Error as CkError, RvError};

use crate::keys::KeyError;

pub(super) fn decrypt_error(key: &str, error: &CkError) -> KeyError {
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

pub(super) fn no_decrypt_permission(key: &str) -> KeyError {
    KeyError::Denied {
        key: key.into(),
        detail: "the private key does not allow CKA_DECRYPT, which unwrapping the volume key needs"
            .into(),
    }
}

/// What a token error means for the user: wrong PIN or forbidden use is "denied", a missing
/// or broken token is "unavailable", a ciphertext the key cannot decrypt is a failed unwrap.
pub(super) fn token_error(key: &str, what: &str, error: &CkError) -> KeyError {
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
pub(super) fn ck_error(error: &CkError) -> String {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_codes_read_like_the_spec() {
        let error = CkError::Pkcs11(RvError::PinIncorrect, cryptoki::context::Function::Login);
        assert_eq!(ck_error(&error), "CKR_PIN_INCORRECT from C_Login");
    }
}
