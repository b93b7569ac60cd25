//! The key provider contract, run against every provider, then what is specific to the
//! platform key store (MMK) and to PEM files.

mod common;

use std::fs;
use std::os::unix::fs::symlink;

use xtsfs::crypto::VolumeKey;
use xtsfs::keys::mmk::{MmkProvider, PlatformKeyStore, StoredKey};
use xtsfs::keys::pem::PemProvider;
use xtsfs::keys::{KeyError, KeyProvider};

use common::contract::run_provider_contract;
use common::{set_mode, TestEnv};

fn mmk_provider(env: &TestEnv, id: &str) -> MmkProvider {
    let dir = env.platform_key_dir();
    PlatformKeyStore::open_or_create(&dir)
        .unwrap()
        .create(id)
        .unwrap();
    MmkProvider::open(&dir, id).unwrap()
}

#[test]
fn contract_mmk() {
    let env = TestEnv::new();
    run_provider_contract(&mmk_provider(&env, "contract"));
}

#[test]
fn contract_pem_rsa_2048() {
    let env = TestEnv::new();
    let key = env.rsa_key("rsa2048.pem", 2048);
    run_provider_contract(&PemProvider::open(&key).unwrap());
}

#[test]
fn contract_pem_rsa_3072() {
    let env = TestEnv::new();
    let key = env.rsa_key("rsa3072.pem", 3072);
    run_provider_contract(&PemProvider::open(&key).unwrap());
}

// --- Platform keys (MMK) ---

#[test]
fn mmk_rotation_keeps_old_versions_and_wraps_with_the_newest() {
    let env = TestEnv::new();
    let provider = mmk_provider(&env, "rotating");
    let store = PlatformKeyStore::open(&env.platform_key_dir()).unwrap();
    let dek = VolumeKey::generate().unwrap();
    let under_v1 = provider.wrap(&dek).unwrap();
    assert_eq!(under_v1.key.key_version, "1");

    assert_eq!(store.rotate("rotating").unwrap(), 2);
    assert_eq!(provider.describe().unwrap().key_version, "2");
    let under_v2 = provider.wrap(&dek).unwrap();
    assert_eq!(under_v2.key.key_version, "2");
    assert_ne!(under_v1.wrapped_key, under_v2.wrapped_key);

    assert_eq!(
        store.list().unwrap(),
        vec![StoredKey {
            id: "rotating".into(),
            versions: vec![1, 2]
        }]
    );
    for protector in [&under_v1, &under_v2] {
        let unwrapped = provider.unwrap(protector).unwrap().unwrap();
        assert_eq!(unwrapped.expose(), dek.expose());
    }
}

#[test]
fn mmk_protector_of_another_key_id_is_not_mine() {
    let env = TestEnv::new();
    let mine = mmk_provider(&env, "mine");
    let theirs = mmk_provider(&env, "theirs");
    let protector = theirs.wrap(&VolumeKey::generate().unwrap()).unwrap();
    assert!(mine.unwrap(&protector).is_none());
}

#[test]
fn mmk_store_or_key_readable_by_others_is_too_open() {
    let env = TestEnv::new();
    let provider = mmk_provider(&env, "guarded");
    let dir = env.platform_key_dir();
    let protector = provider.wrap(&VolumeKey::generate().unwrap()).unwrap();

    for mode in [0o750, 0o705, 0o770] {
        set_mode(&dir, mode);
        match MmkProvider::open(&dir, "guarded") {
            Err(KeyError::TooOpen { mode: reported, .. }) => assert_eq!(reported, mode),
            other => panic!("store mode {mode:o}: {:?}", other.map(|_| "opened")),
        }
    }
    set_mode(&dir, 0o700);

    let key_file = dir.join("guarded.1.key");
    for mode in [0o640, 0o604, 0o644] {
        set_mode(&key_file, mode);
        assert!(matches!(
            provider.wrap(&VolumeKey::generate().unwrap()),
            Err(KeyError::TooOpen { .. })
        ));
        assert!(matches!(
            provider.unwrap(&protector),
            Some(Err(KeyError::TooOpen { .. }))
        ));
    }
}

#[test]
fn mmk_missing_store_key_id_or_version_is_not_found() {
    let env = TestEnv::new();
    assert!(matches!(
        MmkProvider::open(&env.platform_key_dir(), "any"),
        Err(KeyError::NotFound(_))
    ));

    let provider = mmk_provider(&env, "present");
    let absent = MmkProvider::open(&env.platform_key_dir(), "absent").unwrap();
    assert!(matches!(absent.describe(), Err(KeyError::NotFound(_))));
    assert!(matches!(
        absent.wrap(&VolumeKey::generate().unwrap()),
        Err(KeyError::NotFound(_))
    ));

    let protector = provider.wrap(&VolumeKey::generate().unwrap()).unwrap();
    fs::remove_file(env.platform_key_dir().join("present.1.key")).unwrap();
    assert!(matches!(
        provider.unwrap(&protector),
        Some(Err(KeyError::NotFound(_)))
    ));
}

#[test]
fn mmk_key_file_of_the_wrong_size_or_content_does_not_unwrap() {
    let env = TestEnv::new();
    let provider = mmk_provider(&env, "damaged");
    let dek = VolumeKey::generate().unwrap();
    let protector = provider.wrap(&dek).unwrap();
    let key_file = env.platform_key_dir().join("damaged.1.key");
    let original = fs::read(&key_file).unwrap();

    for replacement in [vec![7u8; 31], vec![7u8; 33], vec![], vec![7u8; 32]] {
        fs::write(&key_file, &replacement).unwrap();
        assert!(
            matches!(
                provider.unwrap(&protector),
                Some(Err(KeyError::UnwrapFailed { .. }))
            ),
            "{}-byte key file",
            replacement.len()
        );
    }
    fs::write(&key_file, &original).unwrap();
    let unwrapped = provider.unwrap(&protector).unwrap().unwrap();
    assert_eq!(unwrapped.expose(), dek.expose());
}

#[test]
fn mmk_key_file_symlink_is_not_followed() {
    let env = TestEnv::new();
    let provider = mmk_provider(&env, "planted");
    let protector = provider.wrap(&VolumeKey::generate().unwrap()).unwrap();
    let key_file = env.platform_key_dir().join("planted.1.key");
    let elsewhere = env.path("elsewhere.key");
    fs::rename(&key_file, &elsewhere).unwrap();
    symlink(&elsewhere, &key_file).unwrap();
    assert!(matches!(provider.unwrap(&protector), Some(Err(_))));
}

// --- PEM files ---

const UNSUPPORTED: &str = "only RSA keys of 2048, 3072 or 4096 bits are supported";

fn assert_unsupported(result: Result<PemProvider, KeyError>, what: &str) {
    match result {
        Err(e @ KeyError::Unsupported(_)) => {
            assert!(e.to_string().starts_with(UNSUPPORTED), "{what}: {e}")
        }
        Err(e) => panic!("{what}: expected Unsupported, got {e:?}"),
        Ok(_) => panic!("{what}: accepted"),
    }
}

#[test]
fn pem_keys_other_than_rsa_2048_to_4096_are_unsupported() {
    let env = TestEnv::new();
    let rsa = env.rsa_key("rsa2048.pem", 2048);
    let public = env.path("public.pem");
    env.openssl(&[
        "pkey",
        "-in",
        common::path_str(&rsa),
        "-pubout",
        "-out",
        common::path_str(&public),
    ]);
    set_mode(&public, 0o600);
    let garbage = env.path("garbage.pem");
    fs::write(&garbage, common::pseudo_random_bytes(1, 300)).unwrap();
    set_mode(&garbage, 0o600);
    let not_a_key = env.path("text.pem");
    fs::write(
        &not_a_key,
        "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n",
    )
    .unwrap();
    set_mode(&not_a_key, 0o600);

    for (what, path) in [
        ("RSA-1024", env.rsa_key("rsa1024.pem", 1024)),
        ("EC P-256", env.ec_key("ec.pem")),
        ("Ed25519", env.ed25519_key("ed25519.pem")),
        ("public key only", public),
        ("random bytes", garbage),
        ("broken PEM body", not_a_key),
    ] {
        assert_unsupported(PemProvider::open(&path), what);
    }
}

#[test]
fn pem_pkcs1_and_pkcs8_encodings_of_one_key_are_the_same_key() {
    let env = TestEnv::new();
    let pkcs8 = env.rsa_key("pkcs8.pem", 2048);
    let pkcs1 = env.path("pkcs1.pem");
    env.openssl(&[
        "pkey",
        "-in",
        common::path_str(&pkcs8),
        "-traditional",
        "-out",
        common::path_str(&pkcs1),
    ]);
    set_mode(&pkcs1, 0o600);
    assert!(fs::read_to_string(&pkcs1)
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    assert!(fs::read_to_string(&pkcs8)
        .unwrap()
        .starts_with("-----BEGIN PRIVATE KEY-----"));

    let from_pkcs8 = PemProvider::open(&pkcs8).unwrap();
    let from_pkcs1 = PemProvider::open(&pkcs1).unwrap();
    let fingerprint = env.openssl_fingerprint(&pkcs8);
    assert_eq!(from_pkcs8.describe().unwrap().key_version, fingerprint);
    assert_eq!(from_pkcs1.describe().unwrap().key_version, fingerprint);

    // Same fingerprint, so either file unwraps what the other wrapped.
    let dek = VolumeKey::generate().unwrap();
    let protector = from_pkcs8.wrap(&dek).unwrap();
    let unwrapped = from_pkcs1.unwrap(&protector).unwrap().unwrap();
    assert_eq!(unwrapped.expose(), dek.expose());
}

#[test]
fn pem_key_moved_to_another_path_still_unwraps() {
    let env = TestEnv::new();
    let key = env.rsa_key("before.pem", 2048);
    let dek = VolumeKey::generate().unwrap();
    let protector = PemProvider::open(&key).unwrap().wrap(&dek).unwrap();
    let moved = env.path("after.pem");
    fs::rename(&key, &moved).unwrap();
    let unwrapped = PemProvider::open(&moved)
        .unwrap()
        .unwrap(&protector)
        .unwrap()
        .unwrap();
    assert_eq!(unwrapped.expose(), dek.expose());
}

#[test]
fn pem_wrong_key_names_both_fingerprints() {
    let env = TestEnv::new();
    let right = env.rsa_key("right.pem", 2048);
    let wrong = env.rsa_key("wrong.pem", 2048);
    let protector = PemProvider::open(&right)
        .unwrap()
        .wrap(&VolumeKey::generate().unwrap())
        .unwrap();
    let (needed, given) = (
        env.openssl_fingerprint(&right),
        env.openssl_fingerprint(&wrong),
    );
    match PemProvider::open(&wrong).unwrap().unwrap(&protector) {
        Some(Err(e @ KeyError::WrongKey { .. })) => {
            let message = e.to_string();
            assert!(message.contains(&needed), "{message}");
            assert!(message.contains(&given), "{message}");
        }
        other => panic!(
            "expected WrongKey, got {:?}",
            other.map(|r| r.map(|_| "a key"))
        ),
    }
}

#[test]
fn pem_file_readable_by_others_is_too_open_and_missing_file_is_not_found() {
    let env = TestEnv::new();
    let key = env.rsa_key("open.pem", 2048);
    set_mode(&key, 0o644);
    assert!(matches!(
        PemProvider::open(&key),
        Err(KeyError::TooOpen { mode: 0o644, .. })
    ));
    assert!(matches!(
        PemProvider::open(&env.path("missing.pem")),
        Err(KeyError::NotFound(_))
    ));
}
