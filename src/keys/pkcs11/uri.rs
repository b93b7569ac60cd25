//! The `pkcs11:` URI (RFC 7512) a key reference names: token, key pair label and id,
//! module path and PIN source, parsed and checked, and its forms for a volume header.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::keys::KeyError;

/// A parsed `pkcs11:` URI (RFC 7512). Equality is on the text as given.
#[derive(Clone)]
pub struct Pkcs11Uri {
    text: String,
    pub(super) token: TokenSelector,
    /// The key pair's label.
    pub(super) object: String,
    /// The key pair's CKA_ID, if the URI pins one version.
    pub(super) id: Option<Vec<u8>>,
    module_path: PathBuf,
    pub(super) pin: Option<PinSource>,
}

/// Which token: its label, plus whatever else the URI names.
#[derive(Clone, Default)]
pub(super) struct TokenSelector {
    pub(super) label: String,
    pub(super) manufacturer: Option<String>,
    pub(super) serial: Option<String>,
    pub(super) model: Option<String>,
}

#[derive(Clone)]
pub(super) enum PinSource {
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
}
