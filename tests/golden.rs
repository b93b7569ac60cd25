//! Golden volumes: one per key kind and volume format, committed under tests/golden/, with
//! known contents. Reading them with today's code proves old volumes still open and
//! decrypt.
//!
//! | directory          | volume format | key                             |
//! |--------------------|---------------|---------------------------------|
//! | `mmk/`, `pem/`     | 1             | platform key, RSA key file      |
//! | `v2-mmk/`, `v2-pem/` | 2           | platform key, RSA key file      |
//!
//! Their files were encrypted here, not by xtsfs's contents code: format 1 units with the
//! library's XTS, as they always were; format 2 with the `xts-mode` crate under a contents
//! key derived here with HKDF, and laid out by hand as docs/FORMAT.md says (header page,
//! zero-padded last block, marker bytes, holes). They are read back three ways: by the
//! decryptor of their format here, through xtsfs's contents layer, and through a mount.
//!
//! To rebuild them (new keys, nonces and ciphertext; same plaintext), one format at a time:
//! `cargo test --test golden -- --ignored --exact regenerate_golden_v2_volumes`
//! `cargo test --test golden -- --ignored --exact regenerate_golden_v1_volumes`

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs::{self, File};
use std::ops::Range;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use aes::cipher::{Array, KeyInit};
use aes::Aes256;
use hkdf::Hkdf;
use sha2::Sha512;
use xts_mode::{get_tweak_default, Xts128};

use xtsfs::crypto::names::{BackingEntry, BackingName, NameCipher};
use xtsfs::crypto::{VolumeKey, DATA_UNIT};
use xtsfs::fs::contents::{self, Contents};
use xtsfs::keys::KeyContext;
use xtsfs::volume::file_header::{FileFormat, FileHeader, FILE_HEADER_LEN};
use xtsfs::volume::header::VolumeFormat;
use xtsfs::volume::{self, UnlockedVolume, TREE_DIR};

use common::{assert_exit, copy_tree, mmk_ref, path_str, pem_ref, pseudo_random_bytes, TestEnv};

const SEED: u64 = 0x676f_6c64_656e; // "golden"

/// One golden volume: where it is, its key kind and its format.
#[derive(Debug, Clone, Copy)]
struct Golden {
    dir: &'static str,
    kind: &'static str,
    format: VolumeFormat,
}

const V1_MMK: Golden = Golden {
    dir: "mmk",
    kind: "mmk",
    format: VolumeFormat::V1,
};
const V1_PEM: Golden = Golden {
    dir: "pem",
    kind: "pem",
    format: VolumeFormat::V1,
};
const V2_MMK: Golden = Golden {
    dir: "v2-mmk",
    kind: "mmk",
    format: VolumeFormat::V2,
};
const V2_PEM: Golden = Golden {
    dir: "v2-pem",
    kind: "pem",
    format: VolumeFormat::V2,
};

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
}

/// The plaintext tree of a golden volume of `format`, by path. Both formats hold the same
/// files; format 2 volumes hold two more, for what only format 2 has.
///
/// - `sparse.bin` has a hole: its middle unit is stored as zeros, which reads as zeros.
/// - `header-only` (format 2) is empty but has a header: its backing file is the 4096-byte
///   header page and nothing else.
/// - `block-holes.bin` (format 2) has zeros at bytes 100..300 and 400..432: blocks
///   112..288 are holes, stored as zeros; the blocks around them, and the zeros at
///   400..432, are encrypted.
fn expected_tree(format: VolumeFormat) -> BTreeMap<PathBuf, Node> {
    let sparse = [
        pseudo_random_bytes(SEED + 3, DATA_UNIT),
        vec![0; DATA_UNIT],
        pseudo_random_bytes(SEED + 4, 50),
    ]
    .concat();
    let long_name = format!("{}-long", "x".repeat(195));
    assert_eq!(long_name.len(), 200);
    let mut tree = vec![
        ("empty", Node::File(vec![])),
        ("hello.txt", Node::File(b"hello".to_vec())),
        (
            "unit-and-tail.bin",
            Node::File(pseudo_random_bytes(SEED, DATA_UNIT + 100)),
        ),
        (
            "ten-thousand.bin",
            Node::File(pseudo_random_bytes(SEED + 1, 10_000)),
        ),
        ("sparse.bin", Node::File(sparse)),
        ("dir", Node::Dir),
        ("dir/sub", Node::Dir),
        (
            "dir/sub/nested.txt",
            Node::File(b"in a nested dir\n".to_vec()),
        ),
        (
            long_name.as_str(),
            Node::File(pseudo_random_bytes(SEED + 2, 20)),
        ),
    ];
    if format == VolumeFormat::V2 {
        let mut holed = pseudo_random_bytes(SEED + 5, 1000);
        holed[100..300].fill(0);
        holed[400..432].fill(0);
        tree.push(("header-only", Node::File(vec![])));
        tree.push(("block-holes.bin", Node::File(holed)));
    }
    tree.into_iter()
        .map(|(path, node)| (PathBuf::from(path), node))
        .collect()
}

/// The plaintext range of a file that is stored as zeros (a hole), not encrypted.
fn holes(path: &Path) -> Option<Range<usize>> {
    match path.to_str().unwrap() {
        "sparse.bin" => Some(DATA_UNIT..2 * DATA_UNIT),
        "block-holes.bin" => Some(112..288),
        _ => None,
    }
}

// ---------------------------------------------------------------------------------------
// Format 1: a 32-byte header and XTS units (encrypted with the library's XTS).

/// Decrypts one format 1 backing file: empty, or a file header and XTS units, all-zero
/// units of 16 bytes or more being holes.
fn decrypt_v1(backing: &[u8], dek: &VolumeKey) -> Vec<u8> {
    if backing.is_empty() {
        return Vec::new();
    }
    let header = FileHeader::decode(backing).unwrap();
    assert_eq!(header.format, FileFormat::V1);
    let cipher = dek.file_cipher(&header.nonce);
    let mut data = backing[FILE_HEADER_LEN..].to_vec();
    for (index, unit) in data.chunks_mut(DATA_UNIT).enumerate() {
        if unit.len() < 16 || unit.iter().any(|b| *b != 0) {
            cipher.decrypt_unit(index as u64, unit).unwrap();
        }
    }
    data
}

/// Writes `contents` as a format 1 backing file: a file header and XTS units, or nothing
/// when empty. The `holes`, whole units of zeros, are left as zeros, as a hole punch
/// would.
fn encrypt_v1(contents: &[u8], dek: &VolumeKey, holes: &[Range<usize>]) -> Vec<u8> {
    if contents.is_empty() {
        return Vec::new();
    }
    let header = FileHeader::generate(FileFormat::V1).unwrap();
    let cipher = dek.file_cipher(&header.nonce);
    let mut data = contents.to_vec();
    for (index, unit) in data.chunks_mut(DATA_UNIT).enumerate() {
        let start = index * DATA_UNIT;
        let hole = holes
            .iter()
            .any(|h| h.start <= start && start + unit.len() <= h.end);
        if hole {
            assert!(unit.iter().all(|b| *b == 0), "a hole holds zeros");
        } else {
            cipher.encrypt_unit(index as u64, unit).unwrap();
        }
    }
    [&header.encode()[..], &data].concat()
}

// ---------------------------------------------------------------------------------------
// Format 2, independently of xtsfs's contents code: the header page, 16-byte blocks
// encrypted with xts-mode under a key derived here, the zero-padded last block, the
// marker bytes and block holes, all from docs/FORMAT.md.

const V2_DATA: usize = 4096;
const BLOCK: usize = 16;

/// XTS under a file's contents key: HKDF-SHA512, no salt, the DEK, info
/// `xtsfs v1 contents` || nonce; K1 = bytes 0..32, K2 = bytes 32..64.
fn v2_cipher(dek: &VolumeKey, nonce: &[u8; 16]) -> Xts128<Aes256> {
    let mut key = [0u8; 64];
    Hkdf::<Sha512>::new(None, dek.expose())
        .expand_multi_info(&[b"xtsfs v1 contents", nonce], &mut key)
        .unwrap();
    let (k1, k2) = key.split_at(32);
    Xts128::new(
        Aes256::new(&Array::try_from(k1).unwrap()),
        Aes256::new(&Array::try_from(k2).unwrap()),
    )
}

/// The backing length of `len` plaintext bytes with a header.
fn v2_backing_len(len: usize) -> usize {
    V2_DATA
        + match len % BLOCK {
            0 => len,
            tail => len.next_multiple_of(BLOCK) + tail,
        }
}

/// Writes `contents` as a format 2 backing file: nothing when empty (unless
/// `with_header`), else the header page, the blocks and the marker. The `holes`, whole
/// blocks of zeros, are stored as zeros.
fn encrypt_v2(
    contents: &[u8],
    dek: &VolumeKey,
    holes: &[Range<usize>],
    with_header: bool,
) -> Vec<u8> {
    if contents.is_empty() && !with_header {
        return Vec::new();
    }
    let mut nonce = [0u8; 16];
    getrandom::fill(&mut nonce).unwrap();
    let mut backing = vec![0u8; V2_DATA];
    backing[..4].copy_from_slice(b"XTSF");
    backing[4..6].copy_from_slice(&2u16.to_le_bytes());
    // Bytes 6..16 (reserved, key generation 0) and 32..4096 stay zero.
    backing[16..32].copy_from_slice(&nonce);

    let xts = v2_cipher(dek, &nonce);
    let mut blocks = contents.to_vec();
    blocks.resize(contents.len().next_multiple_of(BLOCK), 0);
    for (unit, chunk) in blocks.chunks_mut(DATA_UNIT).enumerate() {
        xts.encrypt_sector(chunk, get_tweak_default(unit as u128));
    }
    for hole in holes {
        assert!(
            hole.start % BLOCK == 0 && hole.end % BLOCK == 0,
            "whole blocks"
        );
        assert!(contents[hole.clone()].iter().all(|b| *b == 0), "zeros");
        blocks[hole.clone()].fill(0);
    }
    backing.extend_from_slice(&blocks);
    backing.resize(backing.len() + contents.len() % BLOCK, 0);
    assert_eq!(backing.len(), v2_backing_len(contents.len()));
    backing
}

/// Decrypts one format 2 backing file, checking its layout on the way.
fn decrypt_v2(backing: &[u8], dek: &VolumeKey) -> Vec<u8> {
    if backing.is_empty() {
        return Vec::new();
    }
    assert!(backing.len() >= V2_DATA);
    assert_eq!(&backing[..4], b"XTSF");
    assert_eq!(&backing[4..6], &2u16.to_le_bytes());
    assert!(
        backing[6..16].iter().all(|b| *b == 0),
        "reserved, generation 0"
    );
    assert!(
        backing[32..V2_DATA].iter().all(|b| *b == 0),
        "header padding"
    );
    let nonce: [u8; 16] = backing[16..32].try_into().unwrap();

    let stored = backing.len() - V2_DATA;
    let len = match stored % BLOCK {
        0 => stored,
        _ => {
            assert!(stored > BLOCK);
            stored - BLOCK
        }
    };
    assert_eq!(v2_backing_len(len), backing.len());
    let padded = len.next_multiple_of(BLOCK);
    let marker = &backing[V2_DATA + padded..];
    assert!(marker.len() == len % BLOCK && marker.iter().all(|b| *b == 0));

    let xts = v2_cipher(dek, &nonce);
    let mut blocks = backing[V2_DATA..V2_DATA + padded].to_vec();
    for (unit, chunk) in blocks.chunks_mut(DATA_UNIT).enumerate() {
        // XTS blocks are independent without ciphertext stealing: decrypt the whole
        // unit, then put the holes back as zeros.
        let holes: Vec<usize> = chunk
            .chunks(BLOCK)
            .enumerate()
            .filter(|(_, block)| block.iter().all(|b| *b == 0))
            .map(|(i, _)| i)
            .collect();
        xts.decrypt_sector(chunk, get_tweak_default(unit as u128));
        for i in holes {
            chunk[i * BLOCK..(i + 1) * BLOCK].fill(0);
        }
    }
    assert!(blocks[len..].iter().all(|b| *b == 0), "the pad is zeros");
    blocks.truncate(len);
    blocks
}

// ---------------------------------------------------------------------------------------
// Reading volumes.

/// A file read by the decryptor of the volume's format in this file.
fn read_independently(path: &Path, volume: &UnlockedVolume) -> Vec<u8> {
    let backing = fs::read(path).unwrap();
    match volume.header.format {
        VolumeFormat::V1 => decrypt_v1(&backing, &volume.dek),
        VolumeFormat::V2 => decrypt_v2(&backing, &volume.dek),
    }
}

/// A file read through xtsfs's contents layer, as the mounted file system reads it.
fn read_with_library(path: &Path, volume: &UnlockedVolume) -> Vec<u8> {
    let file = File::open(path).unwrap();
    let format = volume.header.format;
    let backing_len = file.metadata().unwrap().len();
    let Some(header) = contents::read_header(&file, format).unwrap() else {
        assert_eq!(
            backing_len,
            0,
            "{}: only empty files have no header",
            path.display()
        );
        return Vec::new();
    };
    // Golden volumes hold files of their own format only.
    assert_eq!(header.format, format.new_files());
    let len = header.format.plaintext_len(backing_len).unwrap();
    let cipher = volume.dek.file_cipher(&header.nonce);
    let contents = Contents {
        file: &file,
        cipher: &cipher,
        format: header.format,
    };
    let mut buf = Vec::new();
    let range = contents.read(0, len as usize, len, &mut buf).unwrap();
    buf[range].to_vec()
}

/// Every entry of a volume's tree: plaintext path, whether it is a directory, and its
/// backing path.
fn tree_entries(volume: &UnlockedVolume) -> Vec<(PathBuf, bool, PathBuf)> {
    fn walk(
        dir: &Path,
        plain_dir: &Path,
        names: &NameCipher,
        entries: &mut Vec<(PathBuf, bool, PathBuf)>,
    ) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let stored = entry.file_name();
            let name = match names.classify(&stored).unwrap() {
                BackingEntry::Named(name) => name,
                BackingEntry::Long => {
                    let side = [stored.as_bytes(), b".name"].concat();
                    let encoded = fs::read(dir.join(OsString::from_vec(side))).unwrap();
                    names.decrypt_long(&stored, &encoded).unwrap()
                }
                BackingEntry::Internal => {
                    let entry_name = stored.as_bytes().strip_suffix(b".name").unwrap();
                    assert!(dir.join(OsString::from_vec(entry_name.to_vec())).exists());
                    continue;
                }
            };
            let path = plain_dir.join(name);
            let is_dir = entry.file_type().unwrap().is_dir();
            entries.push((path.clone(), is_dir, entry.path()));
            if is_dir {
                walk(&entry.path(), &path, names, entries);
            }
        }
    }
    assert!(volume.header.names_encrypted());
    let names = NameCipher::Encrypted(volume.dek.names_key());
    let mut entries = Vec::new();
    let root = volume.backing.join(TREE_DIR);
    walk(&root, Path::new(""), &names, &mut entries);
    entries
}

/// Reads a whole encrypted tree back to plaintext paths and contents with `read`.
fn read_tree(
    volume: &UnlockedVolume,
    read: fn(&Path, &UnlockedVolume) -> Vec<u8>,
) -> BTreeMap<PathBuf, Node> {
    tree_entries(volume)
        .into_iter()
        .map(|(path, is_dir, backing)| {
            let node = if is_dir {
                Node::Dir
            } else {
                Node::File(read(&backing, volume))
            };
            (path, node)
        })
        .collect()
}

/// The backing files hold what the expected tree says they do beyond their plaintext:
/// holes stored as zeros, and a header page alone for `header-only`.
fn check_layout(volume: &UnlockedVolume) {
    let data_offset = volume.header.format.new_files().data_offset() as usize;
    let mut holes_seen = 0;
    for (path, is_dir, backing) in tree_entries(volume) {
        if is_dir {
            continue;
        }
        let stored = fs::read(&backing).unwrap();
        if let Some(hole) = holes(&path) {
            let hole = data_offset + hole.start..data_offset + hole.end;
            assert!(stored[hole].iter().all(|b| *b == 0), "{}", path.display());
            holes_seen += 1;
        }
        if path == Path::new("header-only") {
            assert_eq!(stored.len(), V2_DATA);
        }
        if path == Path::new("empty") {
            assert!(stored.is_empty());
        }
    }
    let expected = match volume.header.format {
        VolumeFormat::V1 => 1,
        VolumeFormat::V2 => 2,
    };
    assert_eq!(holes_seen, expected, "every golden hole was looked at");
}

fn check_golden(golden: Golden) {
    let env = TestEnv::new();
    common::golden_copy(&env, golden.dir);
    let expected = expected_tree(golden.format);
    // A PEM key is given explicitly: the header records the path it was made at.
    let key_file = env.path("key.pem");
    let key_arg = format!("pem:{}", path_str(&key_file));
    let (key, cli_args) = match golden.kind {
        "mmk" => (None, vec![]),
        _ => (Some(pem_ref(&key_file)), vec!["--key", key_arg.as_str()]),
    };
    let volume = volume::unlock(&env.backing(), &env.key_context(), key.as_ref()).unwrap();
    assert_eq!(volume.header.cipher, "aes-256-xts");
    assert_eq!(volume.header.data_unit_size, 4096);
    assert_eq!(volume.header.protector.key.kind.to_string(), golden.kind);
    assert_eq!(volume.header.format, golden.format);
    let epoch = (golden.format == VolumeFormat::V2).then_some(1);
    assert_eq!(volume.header.epoch, epoch);
    check_layout(&volume);
    assert_eq!(read_tree(&volume, read_independently), expected);
    assert_eq!(read_tree(&volume, read_with_library), expected);

    let backing = env.backing();
    let mut args = vec!["status", "--json", path_str(&backing)];
    args.extend(cli_args.iter().copied());
    let output = env.xtsfs(&args);
    assert_exit(&output, 0);
    let status: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["format_version"], golden.format.version());

    // And through the mount, as a user would read it.
    common::mount::require_fuse();
    let mountpoint = env.path("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let mut args = vec!["mount", path_str(&backing), path_str(&mountpoint)];
    args.extend(cli_args.iter().copied());
    assert_exit(&env.xtsfs(&args), 0);
    let mounted = read_mounted_tree(&mountpoint);
    assert_exit(&env.xtsfs(&["unmount", path_str(&mountpoint)]), 0);
    assert_eq!(mounted, expected);
}

/// The plaintext tree seen through a mount, by path.
fn read_mounted_tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut tree = BTreeMap::new();
    for (path, meta) in common::walk(root) {
        let relative = path.strip_prefix(root).unwrap().to_path_buf();
        if meta.is_dir() {
            tree.insert(relative, Node::Dir);
        } else {
            let contents = fs::read(&path).unwrap();
            // The size the kernel was given agrees with what reads return.
            let size = fs::metadata(&path).unwrap().len();
            assert_eq!(size, contents.len() as u64, "{}", relative.display());
            tree.insert(relative, Node::File(contents));
        }
    }
    tree
}

#[test]
fn golden_mmk_volume_decrypts_and_mounts_with_its_known_contents() {
    check_golden(V1_MMK);
}

#[test]
fn golden_pem_volume_decrypts_and_mounts_with_its_known_contents() {
    check_golden(V1_PEM);
}

#[test]
fn golden_v2_mmk_volume_decrypts_and_mounts_with_its_known_contents() {
    check_golden(V2_MMK);
}

#[test]
fn golden_v2_pem_volume_decrypts_and_mounts_with_its_known_contents() {
    check_golden(V2_PEM);
}

/// The independent format 2 encryptor and decryptor agree with each other, and with
/// xtsfs, on every length around block and unit edges.
#[test]
fn independent_v2_encryptor_round_trips_and_matches_xtsfs() {
    let dek = VolumeKey::generate().unwrap();
    for len in (0..70).chain([4095, 4096, 4097, 4111, 4112, 4113, 8192 + 33]) {
        let plain = pseudo_random_bytes(SEED + len as u64, len);
        let backing = encrypt_v2(&plain, &dek, &[], true);
        assert_eq!(backing.len(), v2_backing_len(len));
        assert_eq!(decrypt_v2(&backing, &dek), plain, "length {len}");
        let header = FileHeader::decode(&backing).unwrap();
        assert_eq!(header.format, FileFormat::V2);
        assert_eq!(
            FileFormat::V2.plaintext_len(backing.len() as u64),
            Some(len as u64)
        );
        // xtsfs's block encryption gives the same ciphertext.
        let mut blocks = plain.clone();
        blocks.resize(len.next_multiple_of(BLOCK), 0);
        dek.file_cipher(&header.nonce)
            .encrypt_blocks(0, &mut blocks)
            .unwrap();
        assert_eq!(blocks, backing[V2_DATA..V2_DATA + blocks.len()]);
    }
}

/// The backing path of a plaintext path, creating long-name side files on the way.
fn backing_path(tree: &Path, plain: &Path, names: &NameCipher) -> PathBuf {
    let mut dir = tree.to_path_buf();
    for component in plain.iter() {
        let stored = names.encrypt_name(component).unwrap();
        if let BackingName::Long {
            side_file, encoded, ..
        } = &stored
        {
            fs::write(dir.join(side_file), encoded).unwrap();
        }
        dir.push(stored.entry());
    }
    dir
}

fn populate(backing: &Path, ctx: &KeyContext, format: VolumeFormat) {
    let volume = volume::unlock(backing, ctx, None).unwrap();
    assert_eq!(volume.header.format, format);
    let names = NameCipher::Encrypted(volume.dek.names_key());
    let tree = backing.join(TREE_DIR);
    for (path, node) in expected_tree(format) {
        let stored = backing_path(&tree, &path, &names);
        match node {
            Node::Dir => fs::create_dir(stored).unwrap(),
            Node::File(contents) => {
                let holes: Vec<Range<usize>> = holes(&path).into_iter().collect();
                let bytes = match format {
                    VolumeFormat::V1 => encrypt_v1(&contents, &volume.dek, &holes),
                    VolumeFormat::V2 => {
                        let with_header = path == Path::new("header-only");
                        encrypt_v2(&contents, &volume.dek, &holes, with_header)
                    }
                };
                fs::write(stored, bytes).unwrap();
            }
        }
    }
    check_layout(&volume);
    assert_eq!(
        read_tree(&volume, read_independently),
        expected_tree(format)
    );
}

/// Makes the golden volumes `volumes` afresh in tests/golden, replacing those there.
fn regenerate(volumes: &[Golden]) {
    let env = TestEnv::new();
    let ctx = env.key_context();
    let key_file = env.rsa_key("key.pem", 2048);
    for golden in volumes {
        let backing = env.path(golden.dir);
        let key = match golden.kind {
            "mmk" => mmk_ref("default"),
            _ => pem_ref(&key_file),
        };
        volume::init(&backing, &key, &ctx, true, golden.format).unwrap();
        populate(&backing, &ctx, golden.format);
    }
    for golden in volumes {
        let dir = Path::new(common::GOLDEN).join(golden.dir);
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
        copy_tree(&env.path(golden.dir), &dir.join("backing"));
        match golden.kind {
            "mmk" => copy_tree(&env.platform_key_dir(), &dir.join("platform-keys")),
            _ => {
                fs::copy(&key_file, dir.join("key.pem")).unwrap();
            }
        }
    }
}

#[test]
#[ignore = "rewrites tests/golden/mmk and tests/golden/pem"]
fn regenerate_golden_v1_volumes() {
    regenerate(&[V1_MMK, V1_PEM]);
}

#[test]
#[ignore = "rewrites tests/golden/v2-mmk and tests/golden/v2-pem"]
fn regenerate_golden_v2_volumes() {
    regenerate(&[V2_MMK, V2_PEM]);
}
