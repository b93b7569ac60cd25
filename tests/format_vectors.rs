//! Reproduces every test vector in docs/FORMAT.md with the code, parsing them out of the
//! markdown so that the document and the implementation cannot drift apart.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs;

use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use aes::Aes256;
use sha2::{Digest, Sha256};
use xtsfs::crypto::names::{BackingEntry, BackingName, NameCipher};
use xtsfs::crypto::secret::SecretBytes;
use xtsfs::crypto::VolumeKey;
use xtsfs::keys::mmk::MmkProvider;
use xtsfs::keys::KeyProvider;
use xtsfs::volume::header::{self, HeaderBody};

use common::{encrypted, hex, set_mode, unhex, xts, TestEnv};

const FORMAT_MD: &str = include_str!("../docs/FORMAT.md");

/// One ```vector block: its fields, consumed as they are checked.
struct Vector {
    name: String,
    fields: BTreeMap<String, String>,
}

impl Vector {
    fn text(&mut self, field: &str) -> String {
        self.fields
            .remove(field)
            .unwrap_or_else(|| panic!("vector {}: no field {field}", self.name))
    }

    fn hex(&mut self, field: &str) -> Vec<u8> {
        unhex(&self.text(field))
    }

    /// Every field of the block was checked.
    fn done(self) {
        assert!(
            self.fields.is_empty(),
            "vector {}: fields not checked: {:?}",
            self.name,
            self.fields.keys()
        );
    }
}

/// The bodies of all fenced blocks with the given info string.
fn fenced_blocks(info: &str) -> Vec<Vec<&'static str>> {
    let mut blocks = Vec::new();
    let mut current: Option<Vec<&str>> = None;
    for line in FORMAT_MD.lines() {
        match &mut current {
            None if line == format!("```{info}") => current = Some(Vec::new()),
            Some(_) if line == "```" => blocks.extend(current.take()),
            Some(block) => block.push(line),
            None => {}
        }
    }
    assert!(current.is_none(), "unterminated ```{info} block");
    blocks
}

fn vectors() -> Vec<Vector> {
    fenced_blocks("vector")
        .into_iter()
        .map(|lines| {
            let mut fields: Vec<(String, String)> = Vec::new();
            for line in lines {
                if line.starts_with(' ') {
                    let (_, value) = fields.last_mut().expect("continuation of a field");
                    value.push_str(line.trim());
                } else {
                    let (field, value) = line.split_once(": ").expect("field: value");
                    fields.push((field.into(), value.into()));
                }
            }
            let mut fields: BTreeMap<String, String> = fields.into_iter().collect();
            let name = fields.remove("vector").expect("a vector: line");
            Vector { name, fields }
        })
        .collect()
}

fn vector(name: &str) -> Vector {
    let mut found = vectors().into_iter().filter(|v| v.name == name);
    let vector = found.next().unwrap_or_else(|| panic!("no vector {name}"));
    assert!(found.next().is_none(), "two vectors named {name}");
    vector
}

fn aes_encrypt(key: &[u8], block: [u8; 16]) -> [u8; 16] {
    let mut block = Array::from(block);
    Aes256::new(&Array::try_from(key).unwrap()).encrypt_block(&mut block);
    block.into()
}

#[test]
fn every_vector_in_the_document_is_checked() {
    let names: BTreeSet<String> = vectors().into_iter().map(|v| v.name).collect();
    let checked = ["contents", "header", "keys", "mmk-wrap", "names"];
    assert_eq!(names, checked.into_iter().map(String::from).collect());
}

#[test]
fn key_derivation() {
    let mut v = vector("keys");
    let dek = VolumeKey::from_bytes(&v.hex("dek")).unwrap();
    let nonce: [u8; 16] = v.hex("nonce").try_into().unwrap();
    assert_eq!(hex(dek.names_key().expose()), v.text("names_key"));
    assert_eq!(hex(dek.header_mac_key().expose()), v.text("header_mac_key"));
    // The derived XTS key is not exposed: equal ciphertext under the documented key
    // and the derived one shows they are the same key.
    let documented = xts(&v.hex("contents_key"));
    let plaintext = common::pseudo_random_bytes(7, 4096);
    for unit_index in [0, 1, 1 << 40] {
        assert_eq!(
            encrypted(&dek.file_cipher(&nonce), unit_index, &plaintext),
            encrypted(&documented, unit_index, &plaintext)
        );
    }
    v.done();
}

#[test]
fn contents_encryption() {
    let mut v = vector("contents");
    let key = v.hex("contents_key");
    let (k1, k2) = key.split_at(32);
    let xts = xts(&key);

    assert_eq!(
        v.text("full_unit_plaintext"),
        "4096 bytes, byte j = j mod 256"
    );
    let plaintext: Vec<u8> = (0..4096).map(|j| j as u8).collect();
    let index = v.text("full_unit_index").parse().unwrap();
    let ciphertext = encrypted(&xts, index, &plaintext);
    assert_eq!(
        hex(&ciphertext[..64]),
        v.text("full_unit_ciphertext_first_64")
    );
    assert_eq!(
        hex(&Sha256::digest(&ciphertext)),
        v.text("full_unit_ciphertext_sha256")
    );

    let index = v.text("cts_unit_index").parse().unwrap();
    let plaintext = v.hex("cts_unit_plaintext");
    assert!(plaintext.len() > 16 && !plaintext.len().is_multiple_of(16));
    assert_eq!(
        hex(&encrypted(&xts, index, &plaintext)),
        v.text("cts_unit_ciphertext")
    );

    // The short-tail formula, computed here with plain AES, then through Xts256.
    let index: u64 = v.text("short_unit_index").parse().unwrap();
    let plaintext = v.hex("short_unit_plaintext");
    assert!(plaintext.len() < 16);
    let tweak = aes_encrypt(k2, u128::from(index).to_le_bytes());
    assert_eq!(hex(&tweak), v.text("short_unit_tweak"));
    let mut block = tweak;
    block[15] ^= plaintext.len() as u8;
    let pad = aes_encrypt(k1, block);
    assert_eq!(hex(&pad), v.text("short_unit_pad"));
    let ciphertext = encrypted(&xts, index, &plaintext);
    let xored: Vec<u8> = plaintext.iter().zip(pad).map(|(p, k)| p ^ k).collect();
    assert_eq!(ciphertext, xored);
    assert_eq!(hex(&ciphertext), v.text("short_unit_ciphertext"));
    v.done();
}

#[test]
fn name_and_symlink_encryption() {
    let mut v = vector("names");
    let names = NameCipher::Encrypted(SecretBytes::from_slice(&v.hex("names_key")).unwrap());

    let name = v.text("name");
    let stored = v.text("stored_name");
    assert_eq!(
        names.encrypt_name(OsStr::new(&name)).unwrap(),
        BackingName::Direct(stored.clone().into())
    );
    assert_eq!(
        names.classify(OsStr::new(&stored)).unwrap(),
        BackingEntry::Named(name.into())
    );

    assert_eq!(v.text("long_name"), "200 bytes, all x");
    let long_name = "x".repeat(200);
    let entry = v.text("long_name_entry");
    let encoded = v.text("long_name_side_file_contents");
    assert_eq!(
        names.encrypt_name(OsStr::new(&long_name)).unwrap(),
        BackingName::Long {
            entry: entry.clone().into(),
            side_file: format!("{entry}.name").into(),
            encoded: encoded.clone().into_bytes(),
        }
    );
    assert_eq!(
        names
            .decrypt_long(OsStr::new(&entry), encoded.as_bytes())
            .unwrap(),
        long_name.as_str()
    );

    let target = v.text("symlink_target");
    let stored_target = v.text("stored_symlink_target");
    assert_eq!(
        names.encrypt_target(target.as_bytes()).unwrap(),
        stored_target.as_bytes()
    );
    assert_eq!(
        names.decrypt_target(stored_target.as_bytes()).unwrap(),
        target.as_bytes()
    );
    v.done();
}

/// A platform key store holding `key` as version 1 of id `default`.
fn store_with(env: &TestEnv, key: &[u8]) -> MmkProvider {
    let dir = env.platform_key_dir();
    fs::create_dir(&dir).unwrap();
    set_mode(&dir, 0o700);
    let file = dir.join("default.1.key");
    fs::write(&file, key).unwrap();
    set_mode(&file, 0o600);
    MmkProvider::open(&dir, "default").unwrap()
}

#[test]
fn mmk_wrap() {
    let mut v = vector("mmk-wrap");
    let env = TestEnv::new();
    let provider = store_with(&env, &v.hex("platform_key"));
    let dek = VolumeKey::from_bytes(&v.hex("dek")).unwrap();
    let protector = provider.wrap(&dek).unwrap();
    assert_eq!(protector.wrapped_key, v.text("wrapped_key"));
    assert_eq!(protector.key.algorithm, "A256KWP");
    v.done();
}

#[test]
fn example_header() {
    let mut v = vector("header");
    let dek = VolumeKey::from_bytes(&v.hex("dek")).unwrap();
    let prefix = v.hex("prefix");
    let mac = v.hex("mac");
    let json_blocks = fenced_blocks("json");
    assert_eq!(json_blocks.len(), 1, "one example header body");
    let body_text = json_blocks[0].join("\n");
    assert!(FORMAT_MD.contains(&format!("exactly ({} bytes)", body_text.len())));

    assert_eq!(&prefix[..8], b"XTSFSVOL");
    assert_eq!(&prefix[8..10], &1u16.to_le_bytes());
    assert_eq!(&prefix[10..14], &(body_text.len() as u32).to_le_bytes());
    let bytes = [&prefix[..], body_text.as_bytes(), &mac[..]].concat();

    let body = HeaderBody::decode(&bytes).unwrap();
    header::verify(&bytes, &dek).unwrap();
    assert_eq!(body.encode(&dek), bytes, "xtsfs writes exactly this header");

    // Its protector is the MMK vector's wrap of the same DEK.
    let mut wrap = vector("mmk-wrap");
    assert_eq!(body.protector.wrapped_key, wrap.text("wrapped_key"));
    let env = TestEnv::new();
    let unwrapped = store_with(&env, &wrap.hex("platform_key"))
        .unwrap(&body.protector)
        .unwrap()
        .unwrap();
    assert_eq!(unwrapped.expose(), dek.expose());
    v.done();
}
