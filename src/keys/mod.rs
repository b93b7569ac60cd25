//! Key-encryption keys (KEKs). Every kind of key sits behind [`KeyProvider`]; the one
//! contract suite in tests/key_providers.rs runs against each of them.

pub mod command;
pub mod host_state;
pub mod mmk;
pub mod pem;
pub mod pkcs11;
mod protector;
mod secure_file;

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::crypto::VolumeKey;
use crate::io_error::{io_error, IoError};
pub use pkcs11::Pkcs11Uri;

/// The RSA key sizes PEM and PKCS#11 keys may have, in bits.
pub const SUPPORTED_BITS: [usize; 3] = [2048, 3072, 4096];
pub use protector::{KeyDescription, KeyKind, Protector};

/// Wraps and unwraps the volume data key with one key-encryption key.
///
/// `unwrap` follows age's identity model: `None` means "this protector is not for my
/// key" (another kind or key id), `Some(Err(..))` means it is mine but unwrapping failed.
pub trait KeyProvider: Send + Sync {
    /// Which key (and which version of it) a `wrap` uses now.
    fn describe(&self) -> Result<KeyDescription, KeyError>;
    fn wrap(&self, dek: &VolumeKey) -> Result<Protector, KeyError>;
    fn unwrap(&self, protector: &Protector) -> Option<Result<VolumeKey, KeyError>>;
}

/// Where key providers look for things that are not part of a key reference, and this
/// host's policy for headers: everything that comes from local configuration or the
/// command line, never from a backing directory.
#[derive(Debug, Clone)]
pub struct KeyContext {
    pub platform_key_dir: PathBuf,
    /// Directories whose KMS programs and PKCS#11 modules a volume header may name.
    pub trusted_key_dirs: Vec<PathBuf>,
    /// Where this host records the last header it saw of each volume, and suspended
    /// PKCS#11 logins ([`host_state`]).
    pub host_state_dir: PathBuf,
    /// The PIN file for PKCS#11 keys, unless a `--key` given on the command line names
    /// one. A PIN source recorded in a volume header is never used.
    pub pkcs11_pin_source: Option<PathBuf>,
    /// Accept, and record, a header this host did not see written (a volume moved or
    /// rewrapped on another host). Never applies to the key checks of a running mount.
    pub accept_header_from_elsewhere: bool,
    /// Caps the time limit of one run of a KMS command: a key check's deadline.
    pub call_timeout: Option<Duration>,
}

impl KeyContext {
    pub const DEFAULT_PLATFORM_KEY_DIR: &'static str = "/var/lib/xtsfs/platform-keys";
    pub const DEFAULT_TRUSTED_KEY_DIRS: [&'static str; 7] = [
        "/etc/xtsfs/kms",
        "/usr/lib/xtsfs/kms",
        "/usr/local/lib/xtsfs/kms",
        "/usr/lib/softhsm",
        "/usr/lib/pkcs11",
        "/usr/lib/x86_64-linux-gnu/pkcs11",
        "/usr/lib/aarch64-linux-gnu/pkcs11",
    ];

    /// The default trusted directories plus `extra_trusted`.
    pub fn new(platform_key_dir: PathBuf, extra_trusted: &[PathBuf]) -> Self {
        let mut trusted_key_dirs: Vec<PathBuf> = Self::DEFAULT_TRUSTED_KEY_DIRS
            .iter()
            .map(PathBuf::from)
            .collect();
        trusted_key_dirs.extend_from_slice(extra_trusted);
        KeyContext {
            host_state_dir: Self::default_host_state_dir(&platform_key_dir),
            platform_key_dir,
            trusted_key_dirs,
            pkcs11_pin_source: None,
            accept_header_from_elsewhere: false,
            call_timeout: None,
        }
    }

    /// Beside the platform key store: `/var/lib/xtsfs/volume-state` for the default store,
    /// `PARENT/volume-state` for a store at `PARENT/NAME`.
    pub fn default_host_state_dir(platform_key_dir: &Path) -> PathBuf {
        let absolute =
            std::path::absolute(platform_key_dir).unwrap_or_else(|_| platform_key_dir.into());
        match absolute.parent() {
            Some(parent) if parent != Path::new("/") => parent.join("volume-state"),
            _ => PathBuf::from(host_state::DEFAULT_DIR),
        }
    }

    /// A key reference read from a volume header is not authenticated until the key it
    /// names has unwrapped the DEK, so it may only run programs or load modules from
    /// trusted directories: otherwise whoever can write the backing directory could make
    /// root run any program. A `--key` the user gives is the user's own choice.
    pub fn check_trusted(&self, key: &KeyRef) -> Result<(), KeyError> {
        let Some(path) = key.executable() else {
            return Ok(());
        };
        // The directory is resolved, not a final symlink: a link placed inside a trusted
        // directory was placed by whoever controls that directory.
        let dir = path
            .parent()
            .unwrap_or(path)
            .canonicalize()
            .map_err(io_error("cannot resolve", path))?;
        let trusted = self
            .trusted_key_dirs
            .iter()
            .filter_map(|dir| dir.canonicalize().ok())
            .any(|trusted| dir.starts_with(trusted));
        if !trusted {
            return Err(KeyError::Untrusted(path.into()));
        }
        secure_file::check_dir_chain(&dir)
    }
}

/// Key versions are sent to KMS programs, recorded in headers and printed: 1-256
/// characters of `A-Z a-z 0-9 . _ - : / + = @` (enough for hex ids, fingerprints and
/// ARNs), nothing that could be a control character, a quote or whitespace.
pub fn validate_key_version(version: &str) -> Result<(), String> {
    let ok = !version.is_empty()
        && version.len() <= 256
        && version
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-:/+=@".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "key version '{}' is not valid: a key version is 1-256 characters of A-Z, a-z, 0-9 and . _ - : / + = @",
            version.chars().take(64).collect::<String>().escape_default()
        ))
    }
}

/// A key reference as the user writes it: `mmk`, `mmk:ID`, `pem:PATH`, `pkcs11:URI`
/// (RFC 7512), `command:PROGRAM[#VERSION]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRef {
    Mmk {
        id: String,
    },
    Pem {
        path: PathBuf,
    },
    Pkcs11 {
        uri: Pkcs11Uri,
    },
    /// `version: None` follows the newest version of the program's key.
    Command {
        program: PathBuf,
        version: Option<String>,
    },
}

impl KeyRef {
    pub const DEFAULT_MMK_ID: &'static str = "default";

    pub fn parse(text: &str) -> Result<Self, KeyError> {
        let (scheme, rest) = text.split_once(':').unwrap_or((text, ""));
        match scheme {
            "mmk" if rest.is_empty() => Ok(KeyRef::Mmk {
                id: Self::DEFAULT_MMK_ID.into(),
            }),
            "mmk" => {
                mmk::validate_id(rest)?;
                Ok(KeyRef::Mmk { id: rest.into() })
            }
            "pem" if !rest.is_empty() => Ok(KeyRef::Pem {
                path: PathBuf::from(rest),
            }),
            "pkcs11" => Ok(KeyRef::Pkcs11 {
                uri: Pkcs11Uri::parse(text)?,
            }),
            "command" => {
                // PROGRAM is a path; a '#' in it would read as the start of a version.
                let (program, version) = match rest.split_once('#') {
                    Some((program, version)) => (program, Some(version)),
                    None => (rest, None),
                };
                if program.is_empty() || version.is_some_and(str::is_empty) {
                    return Err(KeyError::InvalidRef(format!(
                        "{text} (write command:PROGRAM or command:PROGRAM#VERSION)"
                    )));
                }
                if let Some(version) = version {
                    validate_key_version(version).map_err(|e| {
                        KeyError::InvalidRef(format!("{} ({e})", text.escape_default()))
                    })?;
                }
                Ok(KeyRef::Command {
                    program: PathBuf::from(program),
                    version: version.map(str::to_owned),
                })
            }
            _ => Err(KeyError::InvalidRef(text.into())),
        }
    }

    /// A reference read from a volume header, which anyone who can write the backing
    /// directory controls: a `pkcs11:` URI may not carry a `pin-value`, and any
    /// `pin-source` in it is dropped: the PIN comes from this host's configuration
    /// (`--pkcs11-pin-source`) only.
    pub fn parse_recorded(text: &str) -> Result<Self, KeyError> {
        match Self::parse(text)? {
            KeyRef::Pkcs11 { uri } => Ok(KeyRef::Pkcs11 {
                uri: uri.recorded()?,
            }),
            other => Ok(other),
        }
    }

    /// The program or module this reference runs or loads, if any.
    pub fn executable(&self) -> Option<&Path> {
        match self {
            KeyRef::Mmk { .. } | KeyRef::Pem { .. } => None,
            KeyRef::Pkcs11 { uri } => Some(uri.module_path()),
            KeyRef::Command { program, .. } => Some(program),
        }
    }

    /// The provider for this key. Opening checks the reference (store permissions, file
    /// parses as a supported key) but does not yet use the key.
    pub fn open(&self, ctx: &KeyContext) -> Result<Box<dyn KeyProvider>, KeyError> {
        Ok(match self {
            KeyRef::Mmk { id } => Box::new(mmk::MmkProvider::open(&ctx.platform_key_dir, id)?),
            KeyRef::Pem { path } => Box::new(pem::PemProvider::open(path)?),
            KeyRef::Pkcs11 { uri } => Box::new(pkcs11::Pkcs11Provider::open(uri, ctx)?),
            KeyRef::Command { program, version } => {
                let provider = command::CommandProvider::open(program, version.as_deref())?;
                Box::new(match ctx.call_timeout {
                    Some(cap) => provider.with_timeout_at_most(cap),
                    None => provider,
                })
            }
        })
    }
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeyRef::Mmk { id } => write!(f, "mmk:{id}"),
            KeyRef::Pem { path } => write!(f, "pem:{}", path.display()),
            KeyRef::Pkcs11 { uri } => write!(f, "{uri}"),
            KeyRef::Command {
                program,
                version: None,
            } => write!(f, "command:{}", program.display()),
            KeyRef::Command {
                program,
                version: Some(version),
            } => write!(f, "command:{}#{version}", program.display()),
        }
    }
}

/// Wraps with `provider`, then unwraps the result and compares, so a key that cannot
/// unwrap (a public-only token object, a denied decrypt permission) is caught before
/// anything is written.
pub fn wrap_checked(provider: &dyn KeyProvider, dek: &VolumeKey) -> Result<Protector, KeyError> {
    let protector = provider.wrap(dek)?;
    let unwrapped = provider.unwrap(&protector).ok_or_else(|| {
        KeyError::RoundTrip("the provider did not recognise its own protector".into())
    })??;
    if unwrapped.expose() != dek.expose() {
        return Err(KeyError::RoundTrip(
            "unwrapping gave back a different key".into(),
        ));
    }
    Ok(protector)
}

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Exists(String),
    #[error("the volume header names '{0}', which is not in a trusted key directory")]
    Untrusted(PathBuf),
    #[error("'{0}' is not a key reference")]
    InvalidRef(String),
    #[error("{0}")]
    NotFound(String),
    #[error("permissions {mode:04o} for '{path}' are too open")]
    TooOpen { path: PathBuf, mode: u32 },
    #[error("'{path}' is owned by uid {owner}, not by uid {expected} or root")]
    WrongOwner {
        path: PathBuf,
        owner: u32,
        expected: u32,
    },
    #[error("only RSA keys of 2048, 3072 or 4096 bits are supported ({0})")]
    Unsupported(String),
    #[error("wrong key: the volume needs {needed}, but was given {given}")]
    WrongKey { needed: String, given: String },
    #[error("the volume key did not unwrap with {key}: {detail}")]
    UnwrapFailed { key: String, detail: String },
    #[error("access to {key} was denied: {detail}")]
    Denied { key: String, detail: String },
    #[error("logins to {token} are suspended: {detail}")]
    LoginSuspended {
        token: String,
        detail: String,
        /// What lifts the suspension.
        remedy: String,
    },
    #[error("{key} is unavailable: {detail}")]
    Unavailable { key: String, detail: String },
    #[error("the key failed its wrap/unwrap check: {0}")]
    RoundTrip(String),
    #[error("KMS command '{program}' broke the protocol: {detail}")]
    Protocol { program: PathBuf, detail: String },
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Io(#[from] IoError),
    #[error(transparent)]
    Random(#[from] crate::crypto::RandomError),
}

impl KeyError {
    /// What the user can do about it.
    pub fn hint(&self) -> String {
        match self {
            KeyError::Exists(_) => "use xtsfs platform-key rotate ID to add a version".into(),
            KeyError::Untrusted(_) => "pass the key explicitly with --key, or add its directory with --trusted-key-dir (XTSFS_TRUSTED_KEY_DIRS)".into(),
            KeyError::InvalidRef(_) => {
                "use --key mmk, mmk:ID, pem:PATH, 'pkcs11:token=T;object=LABEL?module-path=/PATH/module.so&pin-source=file:/PATH' or command:PROGRAM[#VERSION] (docs/KMS.md)".into()
            }
            KeyError::NotFound(_) => "check the key reference (for a token: pkcs11-tool --list-objects), or the --platform-key-dir / XTSFS_PLATFORM_KEY_DIR the volume was made with".into(),
            KeyError::TooOpen { path, .. } => format!(
                "key material must be readable, and a KMS command or PKCS#11 module writable, by its owner only: run chmod go-rwx '{}'",
                path.display()
            ),
            KeyError::WrongOwner { path, expected, .. } => {
                format!("run chown {expected} '{}'", path.display())
            }
            KeyError::Unsupported(_) => "give an RSA key: a PKCS#8 or PKCS#1 PEM file (openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:3072) or a token key pair (pkcs11-tool --keypairgen --key-type rsa:3072)".into(),
            KeyError::WrongKey { .. } => "pass the key the volume was last wrapped with (xtsfs status shows it)".into(),
            KeyError::UnwrapFailed { .. } => "the header's wrapped key or the key itself is damaged; restore the key or the header from backup".into(),
            KeyError::Denied { .. } => "grant this host decrypt/unwrap permission on the key (for a token: the PIN, and CKA_DECRYPT on the private key), then retry".into(),
            KeyError::LoginSuspended { remedy, .. } => format!("no PIN is tried again until the operator acts, so that the token's user PIN is not locked for every application: {remedy}"),
            KeyError::Unavailable { .. } => "check that the key service (KMS command, HSM token and its module) is reachable, then retry".into(),
            KeyError::RoundTrip(_) => "the key must allow both wrap (encrypt) and unwrap (decrypt)".into(),
            KeyError::Protocol { program, .. } => format!(
                "the program must speak the protocol in docs/KMS.md; try it by hand: echo '{{\"xtsfs_kms\":1,\"op\":\"check\",\"key_version\":null}}' | '{}'",
                program.display()
            ),
            KeyError::Config(_) => "fix or unset the setting named above".into(),
            KeyError::Io(_) => "check that the path exists and is readable".into(),
            KeyError::Random(_) => "the system's random source is broken; do not create volumes on this machine".into(),
        }
    }
}
