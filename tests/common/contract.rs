//! The key provider contract: what every [`KeyProvider`] owes the volume code, whatever
//! holds its key. tests/key_providers.rs runs it against MMK and PEM keys,
//! tests/cmk_providers.rs against PKCS#11 (SoftHSM2) and command (KMS program) keys.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use xtsfs::crypto::VolumeKey;
use xtsfs::keys::{wrap_checked, KeyError, KeyKind, KeyProvider, KeyRef, Protector};

use super::hex;

pub fn run_provider_contract(provider: &dyn KeyProvider) {
    let description = provider.describe().expect("describe");
    assert_eq!(
        provider.describe().expect("describe"),
        description,
        "describe is stable"
    );
    for field in [
        &description.key_id,
        &description.key_version,
        &description.algorithm,
    ] {
        assert!(!field.is_empty(), "{description:?}");
    }
    let key_ref = KeyRef::parse(&description.key_ref).expect("the recorded key_ref parses");
    assert_eq!(
        key_ref.to_string(),
        description.key_ref,
        "key_ref round-trips"
    );

    let dek = VolumeKey::generate().expect("random DEK");
    let secret_texts = [hex(dek.expose()), STANDARD.encode(dek.expose())];
    let protector = provider.wrap(&dek).expect("wrap");
    assert_eq!(
        protector.key, description,
        "the protector records the key that wrapped it"
    );
    let wrapped = protector
        .wrapped_bytes()
        .expect("the wrapped key is base64");
    for window in dek.expose().windows(8) {
        assert!(
            !wrapped.windows(8).any(|w| w == window),
            "the wrapped key shows DEK bytes"
        );
    }
    let stored = serde_json::to_string(&protector).expect("protector serializes");
    for secret in &secret_texts {
        assert!(
            !stored.contains(secret.as_str()),
            "the protector shows the DEK"
        );
    }

    let unwrapped = provider
        .unwrap(&protector)
        .expect("a provider recognises its own protector")
        .expect("unwrap");
    assert_eq!(unwrapped.expose(), dek.expose());
    let checked = wrap_checked(provider, &dek).expect("wrap_checked");
    assert_eq!(checked.key, description);
    assert_eq!(
        provider
            .unwrap(&checked)
            .expect("recognised")
            .expect("unwrap")
            .expose(),
        dek.expose()
    );

    let mut foreign = protector.clone();
    foreign.key.kind = if description.kind == KeyKind::Mmk {
        KeyKind::Pem
    } else {
        KeyKind::Mmk
    };
    assert!(
        provider.unwrap(&foreign).is_none(),
        "a protector of another kind is not this provider's"
    );
    let mut other_key = protector.clone();
    other_key.key.key_id.push_str("-other");
    other_key.key.key_version.push_str("-other");
    match provider.unwrap(&other_key) {
        None | Some(Err(KeyError::WrongKey { .. })) => {}
        Some(Ok(_)) => panic!("unwrapped a protector of another key"),
        Some(Err(e)) => panic!("another key's protector: expected None or WrongKey, got {e}"),
    }

    for (what, tampered) in tampered_copies(&protector) {
        match provider.unwrap(&tampered) {
            Some(Err(e @ KeyError::UnwrapFailed { .. })) => {
                for secret in &secret_texts {
                    assert!(
                        !e.to_string().contains(secret.as_str()),
                        "{what}: the error shows the DEK"
                    );
                }
            }
            Some(Err(e)) => panic!("{what}: expected UnwrapFailed, got {e:?}"),
            Some(Ok(_)) => panic!("{what}: unwrapped a damaged key"),
            None => panic!("{what}: did not recognise its own protector"),
        }
    }
}

/// Copies of `protector` whose wrapped key is damaged in different ways.
fn tampered_copies(protector: &Protector) -> Vec<(&'static str, Protector)> {
    let wrapped = protector.wrapped_bytes().expect("base64");
    let with_wrapped = |wrapped_key: String| Protector {
        wrapped_key,
        ..protector.clone()
    };
    let mut first_flipped = wrapped.clone();
    first_flipped[0] ^= 1;
    let mut last_flipped = wrapped.clone();
    *last_flipped.last_mut().expect("not empty") ^= 0x80;
    vec![
        (
            "first byte flipped",
            with_wrapped(STANDARD.encode(&first_flipped)),
        ),
        (
            "last byte flipped",
            with_wrapped(STANDARD.encode(&last_flipped)),
        ),
        (
            "truncated",
            with_wrapped(STANDARD.encode(&wrapped[..wrapped.len() - 8])),
        ),
        (
            "extended",
            with_wrapped(STANDARD.encode([&wrapped[..], &[0u8; 8]].concat())),
        ),
        ("not base64", with_wrapped("not base64!".into())),
    ]
}
