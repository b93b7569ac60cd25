//! Golden volumes: one per key kind, committed under tests/golden/, with known contents.
//! Reading them with today's code proves old volumes still open and decrypt.
//!
//! To rebuild them (new keys, nonces and ciphertext; same plaintext):
//! `cargo test --test golden -- --ignored regenerate_golden_volumes`

mod common;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fs;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use xtsfs::crypto::names::{BackingEntry, BackingName, NameCipher};
use xtsfs::crypto::{VolumeKey, DATA_UNIT};
use xtsfs::keys::{KeyContext, KeyRef};
use xtsfs::volume::file_header::{FileHeader, FILE_HEADER_LEN};
use xtsfs::volume::{self, UnlockedVolume, TREE_DIR};

use common::{
    assert_exit, copy_tree, mmk_ref, path_str, pem_ref, pseudo_random_bytes, set_mode, TestEnv,
};

const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");
const SEED: u64 = 0x676f_6c64_656e; // "golden"

#[derive(Debug, PartialEq, Eq)]
enum Node {
    Dir,
    File(Vec<u8>),
}

/// The plaintext tree of every golden volume, by path. `sparse.bin` has a hole: its
/// middle unit is stored as zeros, which reads as zeros.
fn expected_tree() -> BTreeMap<PathBuf, Node> {
    let sparse = [
        pseudo_random_bytes(SEED + 3, DATA_UNIT),
        vec![0; DATA_UNIT],
        pseudo_random_bytes(SEED + 4, 50),
    ]
    .concat();
    let long_name = format!("{}-long", "x".repeat(195));
    assert_eq!(long_name.len(), 200);
    [
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
    ]
    .into_iter()
    .map(|(path, node)| (PathBuf::from(path), node))
    .collect()
}

/// Decrypts one backing file: empty, or a file header and XTS units, all-zero units of
/// 16 bytes or more being holes.
fn decrypt_file(backing: &[u8], dek: &VolumeKey) -> Vec<u8> {
    if backing.is_empty() {
        return Vec::new();
    }
    let header = FileHeader::decode(backing).unwrap();
    let cipher = dek.file_cipher(&header.nonce);
    let mut data = backing[FILE_HEADER_LEN..].to_vec();
    for (index, unit) in data.chunks_mut(DATA_UNIT).enumerate() {
        if unit.len() < 16 || unit.iter().any(|b| *b != 0) {
            cipher.decrypt_unit(index as u64, unit).unwrap();
        }
    }
    data
}

/// Reads a whole encrypted tree back to plaintext paths and contents.
fn read_tree(volume: &UnlockedVolume) -> BTreeMap<PathBuf, Node> {
    fn walk(
        dir: &Path,
        plain_dir: &Path,
        names: &NameCipher,
        dek: &VolumeKey,
        tree: &mut BTreeMap<PathBuf, Node>,
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
            if entry.file_type().unwrap().is_dir() {
                tree.insert(path.clone(), Node::Dir);
                walk(&entry.path(), &path, names, dek, tree);
            } else {
                let contents = decrypt_file(&fs::read(entry.path()).unwrap(), dek);
                tree.insert(path, Node::File(contents));
            }
        }
    }
    assert!(volume.header.names_encrypted());
    let names = NameCipher::Encrypted(volume.dek.names_key());
    let mut tree = BTreeMap::new();
    let root = volume.backing.join(TREE_DIR);
    walk(&root, Path::new(""), &names, &volume.dek, &mut tree);
    tree
}

/// A copy of golden volume `kind` in `env` with the key modes git does not keep.
fn golden_copy(env: &TestEnv, kind: &str) {
    let golden = Path::new(GOLDEN).join(kind);
    copy_tree(&golden.join("backing"), &env.backing());
    match kind {
        "mmk" => {
            copy_tree(&golden.join("platform-keys"), &env.platform_key_dir());
            set_mode(&env.platform_key_dir(), 0o700);
            set_mode(&env.platform_key_dir().join("default.1.key"), 0o600);
        }
        _ => {
            fs::copy(golden.join("key.pem"), env.path("key.pem")).unwrap();
            set_mode(&env.path("key.pem"), 0o600);
        }
    }
}

fn check_golden(kind: &str) {
    let env = TestEnv::new();
    golden_copy(&env, kind);
    // A PEM key is given explicitly: the header records the path it was made at.
    let key_file = env.path("key.pem");
    let key_arg = format!("pem:{}", path_str(&key_file));
    let (key, cli_args) = match kind {
        "mmk" => (None, vec![]),
        _ => (Some(pem_ref(&key_file)), vec!["--key", key_arg.as_str()]),
    };
    let volume = volume::unlock(&env.backing(), &env.key_context(), key.as_ref()).unwrap();
    assert_eq!(volume.header.cipher, "aes-256-xts");
    assert_eq!(volume.header.data_unit_size, 4096);
    assert_eq!(volume.header.protector.key.kind.to_string(), kind);
    assert_eq!(read_tree(&volume), expected_tree());

    let backing = env.backing();
    let mut args = vec!["status", path_str(&backing)];
    args.extend(cli_args.iter().copied());
    assert_exit(&env.xtsfs(&args), 0);

    // And through the mount, as a user would read it.
    common::mount::require_fuse();
    let mountpoint = env.path("mnt");
    fs::create_dir(&mountpoint).unwrap();
    let mut args = vec!["mount", path_str(&backing), path_str(&mountpoint)];
    args.extend(cli_args.iter().copied());
    assert_exit(&env.xtsfs(&args), 0);
    let mounted = read_mounted_tree(&mountpoint);
    assert_exit(&env.xtsfs(&["unmount", path_str(&mountpoint)]), 0);
    assert_eq!(mounted, expected_tree());
}

/// The plaintext tree seen through a mount, by path.
fn read_mounted_tree(root: &Path) -> BTreeMap<PathBuf, Node> {
    let mut tree = BTreeMap::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(root).unwrap().to_path_buf();
            if path.is_dir() {
                pending.push(path);
                tree.insert(relative, Node::Dir);
            } else {
                tree.insert(relative, Node::File(fs::read(&path).unwrap()));
            }
        }
    }
    tree
}

#[test]
fn golden_mmk_volume_decrypts_and_mounts_with_its_known_contents() {
    check_golden("mmk");
}

#[test]
fn golden_pem_volume_decrypts_and_mounts_with_its_known_contents() {
    check_golden("pem");
}

/// Writes `contents` as a backing file: a file header and XTS units, or nothing when
/// empty. Units of zeros in `holes` are left as zeros, as a hole punch would.
fn encrypt_file(contents: &[u8], dek: &VolumeKey, holes: &[usize]) -> Vec<u8> {
    if contents.is_empty() {
        return Vec::new();
    }
    let header = FileHeader::generate().unwrap();
    let cipher = dek.file_cipher(&header.nonce);
    let mut data = contents.to_vec();
    for (index, unit) in data.chunks_mut(DATA_UNIT).enumerate() {
        if !holes.contains(&index) {
            cipher.encrypt_unit(index as u64, unit).unwrap();
        }
    }
    [&header.encode()[..], &data].concat()
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

fn populate(backing: &Path, key: Option<&KeyRef>, ctx: &KeyContext) {
    let volume = volume::unlock(backing, ctx, key).unwrap();
    let names = NameCipher::Encrypted(volume.dek.names_key());
    let tree = backing.join(TREE_DIR);
    for (path, node) in expected_tree() {
        let stored = backing_path(&tree, &path, &names);
        match node {
            Node::Dir => fs::create_dir(stored).unwrap(),
            Node::File(contents) => {
                let holes: &[usize] = if path == Path::new("sparse.bin") {
                    &[1]
                } else {
                    &[]
                };
                fs::write(stored, encrypt_file(&contents, &volume.dek, holes)).unwrap();
            }
        }
    }
    assert_eq!(read_tree(&volume), expected_tree());
}

#[test]
#[ignore = "rewrites tests/golden"]
fn regenerate_golden_volumes() {
    let env = TestEnv::new();
    let ctx = env.key_context();

    let mmk_backing = env.path("mmk");
    volume::init(&mmk_backing, &mmk_ref("default"), &ctx, true).unwrap();
    populate(&mmk_backing, None, &ctx);

    let key_file = env.rsa_key("key.pem", 2048);
    let pem_backing = env.path("pem");
    volume::init(&pem_backing, &pem_ref(&key_file), &ctx, true).unwrap();
    populate(&pem_backing, None, &ctx);

    let golden = Path::new(GOLDEN);
    for kind in ["mmk", "pem"] {
        let dir = golden.join(kind);
        if dir.exists() {
            fs::remove_dir_all(&dir).unwrap();
        }
        copy_tree(&env.path(kind), &dir.join("backing"));
    }
    copy_tree(&env.platform_key_dir(), &golden.join("mmk/platform-keys"));
    fs::copy(&key_file, golden.join("pem/key.pem")).unwrap();
}
