//! Property tests of the crypto core: XTS units, the name and symlink cipher, and the
//! per-file key derivation.

mod common;

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

use proptest::prelude::*;
use xtsfs::crypto::names::{
    BackingEntry, BackingName, NameCipher, NameError, ENCRYPTED_TARGET_MAX, LONG_NAME_PREFIX,
    LONG_NAME_SIDE_SUFFIX, NAME_MAX,
};
use xtsfs::crypto::secret::SecretBytes;
use xtsfs::crypto::xts::XtsError;
use xtsfs::crypto::{VolumeKey, DEK_LEN};

use common::{encrypted, xts, LONGEST_DIRECT_NAME};

fn key64() -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(any::<u8>(), 64)
}

fn dek() -> impl Strategy<Value = VolumeKey> {
    prop::collection::vec(any::<u8>(), DEK_LEN).prop_map(|b| VolumeKey::from_bytes(&b).unwrap())
}

fn xor(a: &[u8], b: &[u8]) -> Vec<u8> {
    a.iter().zip(b).map(|(x, y)| x ^ y).collect()
}

/// A valid directory entry name of `len` bytes: any byte but NUL and '/', not "." or "..".
fn name_of_len(len: impl Into<prop::collection::SizeRange>) -> impl Strategy<Value = Vec<u8>> {
    prop::collection::vec(
        any::<u8>().prop_filter("no NUL or /", |b| *b != 0 && *b != b'/'),
        len,
    )
    .prop_filter("not . or ..", |n| n != b"." && n != b"..")
}

fn names_of(dek: &VolumeKey) -> NameCipher {
    NameCipher::Encrypted(dek.names_key())
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(128))]

    #[test]
    fn xts_units_round_trip(
        key in key64(),
        unit_index in any::<u64>(),
        plaintext in prop::collection::vec(any::<u8>(), 1..=4096),
    ) {
        let xts = xts(&key);
        let mut unit = encrypted(&xts, unit_index, &plaintext);
        prop_assert_eq!(unit.len(), plaintext.len());
        // Below 4 bytes a pad that happens to start with zeros (chance up to 1/256) would
        // leave the input unchanged; from 4 bytes on that chance is negligible.
        if plaintext.len() >= 4 {
            prop_assert_ne!(&unit, &plaintext);
        }
        xts.decrypt_unit(unit_index, &mut unit).unwrap();
        prop_assert_eq!(unit, plaintext);
    }

    #[test]
    fn xts_units_depend_on_the_unit_index(
        key in key64(),
        unit_index in any::<u64>(),
        plaintext in prop::collection::vec(any::<u8>(), 4..=4096),
    ) {
        let xts = xts(&key);
        prop_assert_ne!(
            encrypted(&xts, unit_index, &plaintext),
            encrypted(&xts, unit_index.wrapping_add(1), &plaintext)
        );
    }

    /// A short unit is XORed with a pad fixed by (key, unit index, length): it hides the
    /// bytes, but two versions at the same place and length leak their XOR
    /// (docs/SECURITY.md). Pads differ between lengths and unit indices.
    #[test]
    fn short_units_are_xored_with_a_pad_fixed_by_index_and_length(
        key in key64(),
        unit_index in any::<u64>(),
        first in prop::collection::vec(any::<u8>(), 4..16),
        second_seed in prop::collection::vec(any::<u8>(), 15),
    ) {
        let xts = xts(&key);
        let len = first.len();
        let second = &second_seed[..len];
        let c1 = encrypted(&xts, unit_index, &first);
        let c2 = encrypted(&xts, unit_index, second);
        prop_assert_ne!(&c1, &first);
        prop_assert_eq!(xor(&c1, &first), xor(&c2, second));

        let zeros = [0u8; 16];
        let pad = encrypted(&xts, unit_index, &zeros[..len]);
        let shorter_pad = encrypted(&xts, unit_index, &zeros[..len - 1]);
        let next_unit_pad = encrypted(&xts, unit_index.wrapping_add(1), &zeros[..len]);
        prop_assert_ne!(&pad[..len - 1], &shorter_pad[..]);
        prop_assert_ne!(pad, next_unit_pad);
    }

    #[test]
    fn names_round_trip_and_are_deterministic(
        dek in dek(),
        name in prop_oneof![name_of_len(1..=LONGEST_DIRECT_NAME), name_of_len(LONGEST_DIRECT_NAME + 1..=NAME_MAX)],
    ) {
        let names = names_of(&dek);
        let name = OsStr::from_bytes(&name);
        let backing = names.encrypt_name(name).unwrap();
        prop_assert_eq!(&names_of(&dek).encrypt_name(name).unwrap(), &backing);
        match &backing {
            BackingName::Direct(entry) => {
                prop_assert!(name.len() <= LONGEST_DIRECT_NAME);
                prop_assert!(entry.len() <= NAME_MAX);
                prop_assert!(entry
                    .as_bytes()
                    .iter()
                    .all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'));
                prop_assert_eq!(names.classify(entry).unwrap(), BackingEntry::Named(name.into()));
            }
            BackingName::Long { entry, side_file, encoded } => {
                prop_assert!(name.len() > LONGEST_DIRECT_NAME);
                prop_assert!(entry.as_bytes().starts_with(LONG_NAME_PREFIX.as_bytes()));
                prop_assert!(side_file.len() <= NAME_MAX);
                prop_assert_eq!(
                    side_file.as_bytes(),
                    [entry.as_bytes(), LONG_NAME_SIDE_SUFFIX.as_bytes()].concat()
                );
                prop_assert_eq!(names.classify(entry).unwrap(), BackingEntry::Long);
                prop_assert_eq!(names.classify(side_file).unwrap(), BackingEntry::Internal);
                prop_assert_eq!(names.decrypt_long(entry, encoded).unwrap(), name);
                // The side file's encoding is bound to its entry's hash.
                let other_entry = OsStr::new("xtsfs.long.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
                prop_assert_eq!(names.decrypt_long(other_entry, encoded), Err(NameError::Undecryptable));
            }
        }
    }

    /// Only hashed long names, which carry the "xtsfs.long." prefix, contain a '.': so no
    /// encrypted name is ever ".", "..", a hidden file or mistaken for xtsfs's own files.
    #[test]
    fn only_long_names_contain_a_dot(dek in dek(), name in name_of_len(1..=NAME_MAX)) {
        let backing = names_of(&dek).encrypt_name(OsStr::from_bytes(&name)).unwrap();
        let has_dot = backing.entry().as_bytes().contains(&b'.');
        prop_assert_eq!(has_dot, matches!(backing, BackingName::Long { .. }));
    }

    #[test]
    fn different_deks_encrypt_names_differently(
        dek_a in dek(),
        dek_b in dek(),
        name in name_of_len(1..=NAME_MAX),
    ) {
        prop_assume!(dek_a.expose() != dek_b.expose());
        let name = OsStr::from_bytes(&name);
        prop_assert_ne!(
            names_of(&dek_a).encrypt_name(name).unwrap(),
            names_of(&dek_b).encrypt_name(name).unwrap()
        );
    }

    #[test]
    fn tampered_names_do_not_decrypt(
        dek in dek(),
        name in name_of_len(1..=LONGEST_DIRECT_NAME),
        position in any::<prop::sample::Index>(),
        replacement in prop::sample::select(b"AQgw-_".to_vec()),
    ) {
        let names = names_of(&dek);
        let backing = names.encrypt_name(OsStr::from_bytes(&name)).unwrap();
        let mut entry = backing.entry().as_bytes().to_vec();
        let i = position.index(entry.len());
        prop_assume!(entry[i] != replacement);
        entry[i] = replacement;
        prop_assert_eq!(names.classify(OsStr::from_bytes(&entry)), Err(NameError::Undecryptable));
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    #[test]
    fn symlink_targets_round_trip(
        dek in dek(),
        target in prop::collection::vec(any::<u8>(), 1..=ENCRYPTED_TARGET_MAX),
    ) {
        let names = names_of(&dek);
        let stored = names.encrypt_target(&target).unwrap();
        // A backing symlink target must fit PATH_MAX (4096 with the NUL) and hold no NUL.
        prop_assert!(stored.len() < 4096);
        prop_assert!(stored.iter().all(|b| b.is_ascii_alphanumeric() || *b == b'-' || *b == b'_'));
        prop_assert_eq!(names.decrypt_target(&stored).unwrap(), target);
    }

    /// Every file's contents key comes from its own random nonce, so equal contents in two
    /// files do not show as equal ciphertext.
    #[test]
    fn equal_contents_under_different_nonces_encrypt_differently(
        dek in dek(),
        nonce_a in any::<[u8; 16]>(),
        nonce_b in any::<[u8; 16]>(),
        unit_index in any::<u64>(),
        plaintext in prop::collection::vec(any::<u8>(), 16..=4096),
    ) {
        prop_assume!(nonce_a != nonce_b);
        let in_a = encrypted(&dek.file_cipher(&nonce_a), unit_index, &plaintext);
        let in_b = encrypted(&dek.file_cipher(&nonce_b), unit_index, &plaintext);
        prop_assert_ne!(&in_a, &in_b);
        // Same DEK and nonce: the same key again (a reopened file decrypts).
        prop_assert_eq!(encrypted(&dek.file_cipher(&nonce_a), unit_index, &plaintext), in_a);
    }

    #[test]
    fn different_deks_encrypt_contents_differently(
        dek_a in dek(),
        dek_b in dek(),
        nonce in any::<[u8; 16]>(),
        plaintext in prop::collection::vec(any::<u8>(), 16..=4096),
    ) {
        prop_assume!(dek_a.expose() != dek_b.expose());
        prop_assert_ne!(
            encrypted(&dek_a.file_cipher(&nonce), 0, &plaintext),
            encrypted(&dek_b.file_cipher(&nonce), 0, &plaintext)
        );
    }
}

#[test]
fn empty_units_are_refused() {
    let xts = xts(&[7u8; 64]);
    assert_eq!(xts.encrypt_unit(0, &mut []), Err(XtsError::EmptyUnit));
    assert_eq!(xts.decrypt_unit(0, &mut []), Err(XtsError::EmptyUnit));
}

#[test]
fn invalid_and_too_long_names_and_targets_are_refused() {
    let names = NameCipher::Encrypted(SecretBytes::from_slice(&[9u8; 64]).unwrap().into());
    for invalid in [&b""[..], b".", b"..", b"a/b", b"a\0b"] {
        assert_eq!(
            names.encrypt_name(OsStr::from_bytes(invalid)),
            Err(NameError::Invalid),
            "{invalid:?}"
        );
    }
    let too_long = vec![b'x'; NAME_MAX + 1];
    assert_eq!(
        names.encrypt_name(OsStr::from_bytes(&too_long)),
        Err(NameError::TooLong)
    );
    assert_eq!(
        names.encrypt_target(&vec![b'x'; ENCRYPTED_TARGET_MAX + 1]),
        Err(NameError::TooLong)
    );
}
