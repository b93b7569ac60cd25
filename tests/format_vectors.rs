//! Reproduces every test vector in docs/FORMAT.md with the code, parsing them out of the
//! markdown so that the document and the implementation cannot drift apart.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::os::unix::fs::FileExt;

use aes::cipher::{Array, BlockCipherEncrypt, KeyInit};
use aes::Aes256;
use sha2::{Digest, Sha256};
use xtsfs::crypto::names::{BackingEntry, BackingName, NameCipher};
use xtsfs::crypto::secret::SecretBytes;
use xtsfs::crypto::xts::Xts256;
use xtsfs::crypto::VolumeKey;
use xtsfs::fs::contents::{self, Contents, HeaderProblem};
use xtsfs::keys::mmk::MmkProvider;
use xtsfs::keys::KeyProvider;
use xtsfs::volume::file_header::{FileFormat, FileHeader, FileHeaderError, FILE_HEADER_LEN};
use xtsfs::volume::header::{self, HeaderBody, HeaderError, VolumeFormat};

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

    fn number(&mut self, field: &str) -> u64 {
        let text = self.text(field);
        text.parse()
            .unwrap_or_else(|_| panic!("vector {}: {field} is not a number: {text}", self.name))
    }

    /// All fields named `prefix` + something, by that something.
    fn with_prefix(&mut self, prefix: &str) -> Vec<(String, String)> {
        let names: Vec<String> = self
            .fields
            .keys()
            .filter(|name| name.starts_with(prefix))
            .cloned()
            .collect();
        names
            .into_iter()
            .map(|name| {
                let value = self.fields.remove(&name).unwrap();
                (name[prefix.len()..].to_string(), value)
            })
            .collect()
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
    let checked = [
        "contents",
        "header",
        "keys",
        "mmk-wrap",
        "names",
        "v2-block-run",
        "v2-contents",
        "v2-file-header",
        "v2-header",
        "v2-lengths",
        "xattrs",
    ];
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
    let names = NameCipher::Encrypted(SecretBytes::from_slice(&v.hex("names_key")).unwrap().into());

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

/// The example header body of one volume format: format 2's has an epoch.
fn example_body(format: VolumeFormat) -> String {
    let bodies: Vec<String> = fenced_blocks("json")
        .into_iter()
        .map(|lines| lines.join("\n"))
        .collect();
    assert_eq!(bodies.len(), 2, "one example header body per format");
    let with_epoch = format == VolumeFormat::V2;
    let mut found = bodies
        .into_iter()
        .filter(|body| body.contains("\"epoch\"") == with_epoch);
    let body = found.next().expect("an example body");
    assert!(found.next().is_none());
    assert!(FORMAT_MD.contains(&format!("exactly ({} bytes)", body.len())));
    body
}

/// Checks a documented header vector (`prefix`, `mac` and the body of `format`) and
/// returns the DEK, the decoded body and the header's bytes.
fn check_example_header(v: &mut Vector, format: VolumeFormat) -> (VolumeKey, HeaderBody, Vec<u8>) {
    let dek = VolumeKey::from_bytes(&v.hex("dek")).unwrap();
    let prefix = v.hex("prefix");
    let mac = v.hex("mac");
    let body_text = example_body(format);

    assert_eq!(&prefix[..8], b"XTSFSVOL");
    assert_eq!(&prefix[8..10], &format.version().to_le_bytes());
    assert_eq!(&prefix[10..14], &(body_text.len() as u32).to_le_bytes());
    let bytes = [&prefix[..], body_text.as_bytes(), &mac[..]].concat();

    let body = HeaderBody::decode(&bytes).unwrap();
    assert_eq!(body.format, format);
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
    (dek, body, bytes)
}

#[test]
fn example_header() {
    let mut v = vector("header");
    let (_, body, _) = check_example_header(&mut v, VolumeFormat::V1);
    assert_eq!(body.epoch, None);
    v.done();
}

#[test]
fn v2_example_header() {
    let mut v = vector("v2-header");
    let (dek, body, bytes) = check_example_header(&mut v, VolumeFormat::V2);
    assert_eq!(body.epoch, Some(1));

    // The same body as format 1's, with the epoch between created_at and protector.
    let v1_body = example_body(VolumeFormat::V1);
    let created_at = "  \"created_at\": \"2026-01-01T00:00:00Z\",\n";
    assert_eq!(
        example_body(VolumeFormat::V2),
        v1_body.replace(created_at, &format!("{created_at}  \"epoch\": 1,\n"))
    );

    // A rewrite of the header (rewrap, rotation) adds 1 to the epoch.
    let rewritten = body.with_protector(body.protector.clone());
    assert_eq!(rewritten.epoch, Some(2));
    let rewritten = HeaderBody::decode(&rewritten.encode(&dek)).unwrap();
    assert_eq!(
        (rewritten.format, rewritten.epoch),
        (VolumeFormat::V2, Some(2))
    );

    // A format 2 header needs an epoch of at least 1; a format 1 header has none.
    let reframed = |version: u16, body: &str| {
        let mut bytes = bytes.clone();
        bytes.truncate(8);
        bytes.extend_from_slice(&version.to_le_bytes());
        bytes.extend_from_slice(&(body.len() as u32).to_le_bytes());
        bytes.extend_from_slice(body.as_bytes());
        bytes.extend_from_slice(&[0; 32]);
        HeaderBody::decode(&bytes)
    };
    let v2_body = example_body(VolumeFormat::V2);
    assert!(reframed(2, &v2_body).is_ok());
    assert!(matches!(reframed(2, &v1_body), Err(HeaderError::Body(_))));
    assert!(matches!(reframed(1, &v2_body), Err(HeaderError::Body(_))));
    let epoch_zero = v2_body.replace("\"epoch\": 1,", "\"epoch\": 0,");
    assert!(matches!(
        reframed(2, &epoch_zero),
        Err(HeaderError::Body(_))
    ));
    assert!(matches!(
        reframed(3, &v2_body),
        Err(HeaderError::Version(3))
    ));
    v.done();
}

/// A scratch backing file holding `bytes`.
fn backing_file(bytes: &[u8]) -> File {
    let file = tempfile::tempfile().unwrap();
    file.write_all_at(bytes, 0).unwrap();
    file
}

#[test]
fn v2_file_header() {
    let mut v = vector("v2-file-header");
    let nonce: [u8; 16] = v.hex("nonce").try_into().unwrap();
    let first_32 = v.hex("header");
    let page = FileHeader {
        format: FileFormat::V2,
        nonce,
    }
    .encode();
    assert_eq!(page.len(), 4096);
    assert_eq!(FileFormat::V2.data_offset(), 4096);
    assert_eq!(page[..FILE_HEADER_LEN], first_32[..]);
    assert!(page[FILE_HEADER_LEN..].iter().all(|b| *b == 0));
    assert_eq!(hex(&Sha256::digest(&page)), v.text("header_page_sha256"));

    // The documented fields, byte by byte.
    assert_eq!(&first_32[..4], b"XTSF");
    assert_eq!(&first_32[4..6], &2u16.to_le_bytes());
    assert_eq!(&first_32[8..12], &0u32.to_le_bytes(), "key generation 0");
    assert_eq!(first_32[16..], nonce);
    let decoded = FileHeader::decode(&first_32).unwrap();
    assert_eq!((decoded.format, decoded.nonce), (FileFormat::V2, nonce));

    // Readers reject reserved bytes and key generations they do not have.
    for at in [6, 7, 12, 13, 14, 15] {
        let mut bad = first_32.clone();
        bad[at] = 1;
        assert_eq!(
            FileHeader::decode(&bad),
            Err(FileHeaderError::Reserved),
            "byte {at}"
        );
    }
    let mut generation = first_32.clone();
    generation[8..12].copy_from_slice(&1u32.to_le_bytes());
    assert_eq!(
        FileHeader::decode(&generation),
        Err(FileHeaderError::KeyGeneration(1))
    );

    // Which volumes hold a format 2 file, and a format 1 one.
    let v1_header = FileHeader {
        format: FileFormat::V1,
        nonce,
    }
    .encode();
    assert_eq!(v1_header.len(), 32);
    for volume in [VolumeFormat::V1, VolumeFormat::V2] {
        let read = contents::read_header(&backing_file(&page), volume).unwrap();
        assert_eq!(
            read,
            Some(decoded),
            "format 2 file in a format {volume:?} volume"
        );
    }
    let read = contents::read_header(&backing_file(&v1_header), VolumeFormat::V1).unwrap();
    assert_eq!(read.map(|h| h.format), Some(FileFormat::V1));
    assert!(matches!(
        contents::read_header(&backing_file(&v1_header), VolumeFormat::V2),
        Err(HeaderProblem::WrongFormat { file: 1, volume: 2 })
    ));

    // A header a crash lost (zeros, the length kept) is no header: the file reads as
    // zeros. An empty backing file has no header either.
    let lost = [vec![0u8; 4096], vec![0; 16 + 5]].concat();
    assert_eq!(
        contents::read_header(&backing_file(&lost), VolumeFormat::V2).unwrap(),
        None
    );
    assert_eq!(
        contents::read_header(&backing_file(&[]), VolumeFormat::V2).unwrap(),
        None
    );
    v.done();
}

/// Multiplication by α in GF(2^128), IEEE 1619 little-endian convention.
fn mul_alpha(t: [u8; 16]) -> [u8; 16] {
    let t = u128::from_le_bytes(t);
    ((t << 1) ^ if t >> 127 == 1 { 0x87 } else { 0 }).to_le_bytes()
}

#[test]
fn v2_block_run() {
    let mut v = vector("v2-block-run");
    let key = v.hex("contents_key");
    let (k1, k2) = key.split_at(32);
    let xts = xts(&key);
    let first = v.number("first_block");
    assert_eq!(v.text("plaintext"), "160 bytes, byte j = (7j + 3) mod 256");
    let plaintext: Vec<u8> = (0..160u32).map(|j| (7 * j + 3) as u8).collect();
    let ciphertext = v.hex("ciphertext");
    assert_eq!(ciphertext.len(), plaintext.len());
    // Blocks 250..256 of unit 5, then 0..4 of unit 6.
    assert_eq!((first / 256, first % 256), (5, 250));

    // The tweaks, from the formula: T = AES(K2, LE128(u)) · α^j.
    let mut tweak = aes_encrypt(k2, 5u128.to_le_bytes());
    for _ in 0..250 {
        tweak = mul_alpha(tweak);
    }
    assert_eq!(hex(&tweak), v.text("first_block_tweak"));
    let unit_6_tweak = aes_encrypt(k2, 6u128.to_le_bytes());
    assert_eq!(hex(&unit_6_tweak), v.text("unit_6_tweak"));

    // Block by block with plain AES: C = AES(K1, P ^ T) ^ T.
    let xor = |a: [u8; 16], b: [u8; 16]| -> [u8; 16] { std::array::from_fn(|i| a[i] ^ b[i]) };
    for (i, (p, c)) in plaintext.chunks(16).zip(ciphertext.chunks(16)).enumerate() {
        let block = first + i as u64;
        let t = if block.is_multiple_of(256) {
            unit_6_tweak
        } else {
            tweak
        };
        let p: [u8; 16] = p.try_into().unwrap();
        assert_eq!(xor(aes_encrypt(k1, xor(p, t)), t), c, "block {block}");
        tweak = mul_alpha(t);
    }

    // The whole run, and each block on its own, through Xts256::encrypt_blocks.
    let mut run = plaintext.clone();
    xts.encrypt_blocks(first, &mut run).unwrap();
    assert_eq!(run, ciphertext);
    for (i, (p, c)) in plaintext.chunks(16).zip(ciphertext.chunks(16)).enumerate() {
        let mut block = p.to_vec();
        xts.encrypt_blocks(first + i as u64, &mut block).unwrap();
        assert_eq!(block, c);
    }
    xts.decrypt_blocks(first, &mut run).unwrap();
    assert_eq!(run, plaintext);

    // The same bytes as units 5 and 6 encrypted whole, whatever their other bytes are.
    let mut units = common::pseudo_random_bytes(11, 2 * 4096);
    let at = 250 * 16;
    units[at..at + 160].copy_from_slice(&plaintext);
    let whole = [
        encrypted(&xts, 5, &units[..4096]),
        encrypted(&xts, 6, &units[4096..]),
    ]
    .concat();
    assert_eq!(whole[at..at + 160], ciphertext[..]);
    v.done();
}

#[test]
fn v2_lengths() {
    let mut v = vector("v2-lengths");
    let v2 = FileFormat::V2;
    assert_eq!(v.number("empty_without_header"), 0);
    assert_eq!(v2.plaintext_len(0), Some(0));
    let table = v.with_prefix("plaintext_");
    let lengths: BTreeSet<u64> = table.iter().map(|(len, _)| len.parse().unwrap()).collect();
    let required = BTreeSet::from([0, 1, 15, 16, 17, 31, 32, 4096, 4097]);
    assert!(lengths.is_superset(&required), "lengths {lengths:?}");
    for (len, backing) in table {
        let (len, backing): (u64, u64) = (len.parse().unwrap(), backing.parse().unwrap());
        assert_eq!(v2.backing_len(len), backing, "plaintext length {len}");
        assert_eq!(
            v2.plaintext_len(backing),
            Some(len),
            "backing length {backing}"
        );
    }

    // The impossible backing lengths are exactly those no plaintext length gives.
    let mut impossible = BTreeSet::new();
    for range in v.text("impossible").split(' ') {
        let (from, to) = range.split_once('-').unwrap();
        impossible.extend(from.parse::<u64>().unwrap()..=to.parse().unwrap());
    }
    let reachable: BTreeSet<u64> = (0..20_000).map(|len| v2.backing_len(len)).collect();
    for backing in 1..20_000 {
        let possible = !impossible.contains(&backing);
        assert_eq!(
            reachable.contains(&backing),
            possible,
            "backing length {backing}"
        );
        assert_eq!(
            v2.plaintext_len(backing).is_some(),
            possible,
            "backing {backing}"
        );
    }
    v.done();
}

/// A format 2 backing file with `header` whose contents `writes` put there, in order,
/// each a write of the bytes at an offset, through xtsfs's contents layer.
fn written_v2_file(header: &FileHeader, cipher: &Xts256, writes: &[(u64, &[u8])]) -> Vec<u8> {
    let file = backing_file(&header.encode());
    let contents = Contents {
        file: &file,
        cipher,
        format: FileFormat::V2,
    };
    for &(offset, data) in writes {
        let len = FileFormat::V2.plaintext_len(file.metadata().unwrap().len());
        contents.write(offset, data, len.unwrap()).unwrap();
    }
    let mut bytes = vec![0u8; file.metadata().unwrap().len() as usize];
    file.read_exact_at(&mut bytes, 0).unwrap();
    bytes
}

/// Reads a whole format 2 backing file through xtsfs's contents layer.
fn read_v2_file(bytes: &[u8], cipher: &Xts256) -> Vec<u8> {
    let file = backing_file(bytes);
    let len = FileFormat::V2.plaintext_len(bytes.len() as u64).unwrap();
    let contents = Contents {
        file: &file,
        cipher,
        format: FileFormat::V2,
    };
    let mut buf = Vec::new();
    let range = contents.read(0, len as usize, len, &mut buf).unwrap();
    buf[range].to_vec()
}

#[test]
fn v2_contents() {
    let mut v = vector("v2-contents");
    let xts = xts(&v.hex("contents_key"));
    let nonce: [u8; 16] = v.hex("nonce").try_into().unwrap();
    assert_eq!(v.text("plaintext"), "4133 bytes, byte j = j mod 251");
    let plaintext: Vec<u8> = (0..4133u32).map(|j| (j % 251) as u8).collect();
    let header = FileHeader {
        format: FileFormat::V2,
        nonce,
    };
    // The header is the file header vector's.
    let mut header_vector = vector("v2-file-header");
    assert_eq!(hex(&nonce), header_vector.text("nonce"));

    let backing = written_v2_file(&header, &xts, &[(0, &plaintext)]);
    assert_eq!(backing.len() as u64, v.number("backing_len"));
    assert_eq!(backing[..32], header_vector.hex("header")[..]);
    assert!(backing[32..4096].iter().all(|b| *b == 0));
    let data = &backing[4096..];
    assert_eq!(hex(&data[..64]), v.text("data_first_64"));
    let last = v.number("last_block_offset") as usize;
    assert_eq!(last, 4096 + plaintext.len() / 16 * 16);
    assert_eq!(hex(&backing[last..last + 16]), v.text("last_block"));
    assert_eq!(hex(&backing[last + 16..]), v.text("marker"));
    assert_eq!(hex(&Sha256::digest(data)), v.text("data_sha256"));
    assert_eq!(hex(&Sha256::digest(&backing)), v.text("backing_sha256"));

    // The last block is the zero-padded tail, encrypted as block 258 (unit 1, block 2).
    let last_plain = v.hex("last_block_plaintext");
    assert_eq!(last_plain[..5], plaintext[4128..]);
    assert!(last_plain[5..].iter().all(|b| *b == 0));
    let mut block = last_plain.clone();
    xts.encrypt_blocks(258, &mut block).unwrap();
    assert_eq!(block, backing[last..last + 16]);
    // Unit 0 is a whole IEEE 1619 unit, as format 1 encrypts it.
    assert_eq!(data[..4096], encrypted(&xts, 0, &plaintext[..4096])[..]);

    // The ciphertext does not depend on how the file was written: appends of any sizes,
    // and writes out of order, give the same bytes.
    let mut appends = Vec::new();
    let mut at = 0;
    for size in [1, 7, 15, 16, 17, 100, 1000, 31, 2900].into_iter().cycle() {
        let end = (at + size).min(plaintext.len());
        appends.push((at as u64, &plaintext[at..end]));
        at = end;
        if at == plaintext.len() {
            break;
        }
    }
    assert_eq!(written_v2_file(&header, &xts, &appends), backing);
    let backwards = [
        (4100, &plaintext[4100..]),
        (5, &plaintext[5..4100]),
        (0, &plaintext[..5]),
    ];
    assert_eq!(written_v2_file(&header, &xts, &backwards), backing);

    // It reads back, and an all-zero block is a hole that reads as zeros.
    assert_eq!(read_v2_file(&backing, &xts), plaintext);
    let mut holed = backing.clone();
    holed[4096 + 160..4096 + 176].fill(0);
    holed[last..last + 16].fill(0);
    let mut expected = plaintext.clone();
    expected[160..176].fill(0);
    expected[4128..].fill(0);
    assert_eq!(read_v2_file(&holed, &xts), expected);
    v.done();
}

#[test]
// `.into()` builds the cipher's key type whichever it is (the SecretBytes or a wrapper).
#[allow(clippy::useless_conversion)]
fn xattr_encryption() {
    let mut v = vector("xattrs");
    let names = NameCipher::Encrypted(SecretBytes::from_slice(&v.hex("names_key")).unwrap().into());
    for (name, stored) in v.with_prefix("name_") {
        assert_eq!(
            String::from_utf8(names.encrypt_xattr_name(name.as_bytes()).unwrap()).unwrap(),
            stored
        );
        assert_eq!(
            names.decrypt_xattr_name(stored.as_bytes()).unwrap(),
            name.as_bytes()
        );
    }
    let name = v.text("value_name");
    let value = v.text("value");
    let nonce: [u8; 16] = v.hex("value_nonce").try_into().unwrap();
    let stored = v.hex("stored_value");
    assert_eq!(
        names
            .encrypt_xattr_value_with_nonce(name.as_bytes(), value.as_bytes(), &nonce)
            .unwrap(),
        stored
    );
    assert_eq!(
        names.decrypt_xattr_value(name.as_bytes(), &stored).unwrap(),
        value.as_bytes()
    );
    // Bound to its name: the same bytes under another name do not decrypt.
    assert!(names.decrypt_xattr_value(b"user.other", &stored).is_err());
    v.done();
}
