//! Logging in to a token: where the PIN comes from, and the host-wide suspension of
//! logins after a refused PIN, so that retries never lock the token's user PIN.

use std::path::{Path, PathBuf};

use cryptoki::error::{Error as CkError, RvError};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::TokenInfo;
use cryptoki::types::RawAuthPin;

use super::errors::{ck_error, token_error};
use super::uri::PinSource;
use crate::keys::host_state::{self, FileStamp, HostState, Suspension};
use crate::keys::secure_file::read_private;
use crate::keys::{KeyContext, KeyError};

const MAX_PIN_FILE_LEN: u64 = 1024;

/// Which token a login goes to, for suspensions.
pub(super) struct TokenIdentity {
    pub(super) module: PathBuf,
    /// Label and serial number.
    pub(super) token: String,
    /// For messages.
    pub(super) name: String,
}

/// Logs `session` in with the PIN from `pin`, unless the token needs none or logins to it
/// are suspended; a refused PIN suspends logins to the token on this host.
pub(super) fn login(
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
    // The PIN file as it was when its PIN was read: a suspension records this stamp, so a
    // fix made while the failing login was in flight still counts as a change.
    let (pin, state, pin_file_stamp) = match pin {
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
            let state = HostState::create(&ctx.host_state_dir)?;
            check_suspension(&state, identity, pin_file)?;
            let stamp = pin_file.and_then(FileStamp::of);
            (read_pin(source)?, state, stamp)
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
                pin_file_stamp,
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
