//! Shared fixture for the integration tests: a private scratch directory with its own
//! platform key store, the built `xtsfs` binary, and keys made with the openssl CLI.

// Each test crate includes this module and uses a different part of it.
#![allow(dead_code)]

pub mod contract;
pub mod kms;
pub mod mount;
pub mod redis;
pub mod sys;
pub mod users;
pub mod xattr;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use xtsfs::crypto::secret::SecretBytes;
use xtsfs::crypto::xts::Xts256;
use xtsfs::keys::{KeyContext, KeyRef};

/// The data unit: every file's contents are encrypted in units of this many bytes.
pub const UNIT: u64 = 4096;
pub const MIB: u64 = 1 << 20;
pub const GIB: u64 = 1 << 30;

/// Longest name stored directly: a longer one's encryption (16-byte SIV tag, base64)
/// exceeds 255 bytes, so it is stored under a hash with a side file holding the name.
pub const LONGEST_DIRECT_NAME: usize = 175;

pub struct TestEnv {
    dir: tempfile::TempDir,
}

impl TestEnv {
    pub fn new() -> Self {
        let dir = tempfile::Builder::new()
            .prefix("xtsfs-test-")
            .tempdir()
            .expect("create temp dir");
        TestEnv { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn path(&self, relative: &str) -> PathBuf {
        self.root().join(relative)
    }

    /// The default backing directory (not created).
    pub fn backing(&self) -> PathBuf {
        self.path("backing")
    }

    /// This environment's platform key store (created on first use by xtsfs).
    pub fn platform_key_dir(&self) -> PathBuf {
        self.path("platform-keys")
    }

    pub fn key_context(&self) -> KeyContext {
        KeyContext::new(self.platform_key_dir(), &[self.root().to_path_buf()])
    }

    /// Runs the built binary with this environment's platform key store.
    pub fn xtsfs(&self, args: &[&str]) -> Output {
        self.xtsfs_with_env(&[], args)
    }

    /// `xtsfs` with environment variables that override this environment's.
    pub fn xtsfs_with_env(&self, vars: &[(&str, &str)], args: &[&str]) -> Output {
        self.command(vars, args).output().expect("run xtsfs")
    }

    /// The `xtsfs` command [`TestEnv::xtsfs_with_env`] runs, not yet started.
    pub fn command(&self, vars: &[(&str, &str)], args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_xtsfs"));
        command
            .args(args)
            .env("XTSFS_PLATFORM_KEY_DIR", self.platform_key_dir())
            .env("XTSFS_RUN_DIR", self.path("run"))
            // KMS test programs live in this environment's directory.
            .env("XTSFS_TRUSTED_KEY_DIRS", self.root())
            .env_remove("XTSFS_AUDIT_LOG")
            .env_remove("RUST_LOG")
            .envs(vars.iter().copied())
            .current_dir(self.root());
        command
    }

    /// `xtsfs status --json` of a backing directory or mount point, which must succeed.
    pub fn status_json(&self, path: &Path) -> serde_json::Value {
        let output = self.xtsfs(&["status", "--json", path_str(path)]);
        assert_exit(&output, 0);
        serde_json::from_slice(&output.stdout).expect("status --json prints JSON")
    }

    /// Runs `openssl` with `args`, panicking with its stderr if it fails.
    pub fn openssl(&self, args: &[&str]) -> Vec<u8> {
        let output = Command::new("openssl")
            .args(args)
            .current_dir(self.root())
            .output()
            .expect("run openssl");
        assert!(
            output.status.success(),
            "openssl {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        output.stdout
    }

    /// Generates a private key with `openssl genpkey` into `name`, mode 0600.
    pub fn genpkey(&self, name: &str, algorithm_args: &[&str]) -> PathBuf {
        let path = self.path(name);
        let mut args = vec!["genpkey", "-out", path_str(&path)];
        args.extend_from_slice(algorithm_args);
        self.openssl(&args);
        set_mode(&path, 0o600);
        path
    }

    /// An RSA private key (PKCS#8 PEM) of `bits` bits.
    pub fn rsa_key(&self, name: &str, bits: u32) -> PathBuf {
        let bits = format!("rsa_keygen_bits:{bits}");
        self.genpkey(name, &["-algorithm", "RSA", "-pkeyopt", &bits])
    }

    /// An EC P-256 private key (PKCS#8 PEM).
    pub fn ec_key(&self, name: &str) -> PathBuf {
        self.genpkey(
            name,
            &["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"],
        )
    }

    pub fn ed25519_key(&self, name: &str) -> PathBuf {
        self.genpkey(name, &["-algorithm", "ED25519"])
    }

    /// `sha256:` + hex SHA-256 of the key's DER SubjectPublicKeyInfo, computed by openssl.
    pub fn openssl_fingerprint(&self, key: &Path) -> String {
        let der = self.path(".spki.der");
        let (key, der_str) = (path_str(key), path_str(&der));
        self.openssl(&[
            "pkey", "-in", key, "-pubout", "-outform", "DER", "-out", der_str,
        ]);
        let digest = self.openssl(&["dgst", "-sha256", "-binary", der_str]);
        fs::remove_file(&der).expect("remove SPKI file");
        format!("sha256:{}", hex(&digest))
    }
}

pub fn pem_ref(path: &Path) -> KeyRef {
    KeyRef::Pem { path: path.into() }
}

pub fn mmk_ref(id: &str) -> KeyRef {
    KeyRef::Mmk { id: id.into() }
}

pub fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

pub fn set_mode(path: &Path, mode: u32) {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).expect("chmod");
}

pub fn mode(path: &Path) -> u32 {
    fs::metadata(path).expect("stat").permissions().mode() & 0o7777
}

pub fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

pub fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Asserts the exit code, showing both output streams when it differs.
#[track_caller]
pub fn assert_exit(output: &Output, code: i32) {
    assert_eq!(
        output.status.code(),
        Some(code),
        "stdout:\n{}\nstderr:\n{}",
        stdout(output),
        stderr(output)
    );
}

/// Asserts a failure that xtsfs reported as an error (not a panic) with exit `code`.
/// Log lines (audit events) may come before the error.
#[track_caller]
pub fn assert_error(output: &Output, code: i32) {
    assert_exit(output, code);
    let err = stderr(output);
    assert!(
        err.lines().any(|line| line.starts_with("xtsfs: error:")),
        "stderr: {err}"
    );
    assert!(!err.contains("panicked"), "stderr: {err}");
}

/// A number from the environment variable `name` (decimal or 0x-hex), if it is set; a
/// value that is not a number fails the test.
pub fn env_number(name: &str) -> Option<u64> {
    let text = std::env::var(name).ok()?;
    let parsed = match text.strip_prefix("0x") {
        Some(hex) => u64::from_str_radix(hex, 16),
        None => text.parse(),
    };
    Some(parsed.unwrap_or_else(|_| panic!("{name}={text:?} is not a number")))
}

/// Checks `done` every `every` until it holds, failing the test with `what` once `limit`
/// has passed.
#[track_caller]
pub fn wait_until(limit: Duration, every: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(every);
    }
}

/// Whether an I/O result is a permission error (EACCES, or EPERM).
pub fn is_eacces<T: std::fmt::Debug>(result: std::io::Result<T>) -> bool {
    matches!(result, Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied)
}

/// FNV-1a of `data`: a short checksum that shows whether large contents differ.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Whether `needle` occurs in `haystack`.
pub fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

pub fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub fn unhex(text: &str) -> Vec<u8> {
    assert!(text.len().is_multiple_of(2), "odd-length hex: {text}");
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&text[i..i + 2], 16).expect("hex digit"))
        .collect()
}

/// Every entry below `root` (not `root` itself) with its metadata, never following a
/// symlink.
pub fn walk(root: &Path) -> Vec<(PathBuf, fs::Metadata)> {
    let mut entries = Vec::new();
    let mut pending = vec![root.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in fs::read_dir(&dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            let meta = fs::symlink_metadata(&path).expect("stat");
            if meta.is_dir() {
                pending.push(path.clone());
            }
            entries.push((path, meta));
        }
    }
    entries
}

/// Copies a directory tree (files and directories only).
pub fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).expect("create dir");
    for entry in fs::read_dir(from).expect("read dir") {
        let entry = entry.expect("dir entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            fs::copy(entry.path(), &target).expect("copy file");
        }
    }
}

/// Deterministic pseudo-random bytes (SplitMix64): known content without test data files.
pub fn pseudo_random_bytes(seed: u64, len: usize) -> Vec<u8> {
    let mut rng = Rng(seed);
    let mut bytes = Vec::with_capacity(len + 8);
    while bytes.len() < len {
        bytes.extend_from_slice(&rng.next().to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// An XTS cipher from a 64-byte key.
pub fn xts(key: &[u8]) -> Xts256 {
    Xts256::new(&SecretBytes::from_slice(key).expect("64-byte XTS key"))
}

/// One data unit encrypted.
pub fn encrypted(xts: &Xts256, unit_index: u64, plaintext: &[u8]) -> Vec<u8> {
    let mut unit = plaintext.to_vec();
    xts.encrypt_unit(unit_index, &mut unit).unwrap();
    unit
}

/// One data unit decrypted.
pub fn decrypted(xts: &Xts256, unit_index: u64, ciphertext: &[u8]) -> Vec<u8> {
    let mut unit = ciphertext.to_vec();
    xts.decrypt_unit(unit_index, &mut unit).unwrap();
    unit
}

/// SplitMix64: tiny and deterministic, so a seed replays the same run anywhere.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (0 when n is 0).
    pub fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    pub fn percent(&mut self, p: u64) -> bool {
        self.below(100) < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len() as u64) as usize]
    }
}

/// The committed golden volumes, one per key kind and format (tests/golden).
pub const GOLDEN: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/golden");

/// A copy of golden volume `kind` as `env`'s backing directory, with its key, and the
/// key modes git does not keep.
pub fn golden_copy(env: &TestEnv, kind: &str) {
    let golden = Path::new(GOLDEN).join(kind);
    copy_tree(&golden.join("backing"), &env.backing());
    if golden.join("platform-keys").exists() {
        copy_tree(&golden.join("platform-keys"), &env.platform_key_dir());
        set_mode(&env.platform_key_dir(), 0o700);
        for key in fs::read_dir(env.platform_key_dir()).unwrap() {
            set_mode(&key.unwrap().path(), 0o600);
        }
    } else {
        fs::copy(golden.join("key.pem"), env.path("key.pem")).unwrap();
        set_mode(&env.path("key.pem"), 0o600);
    }
}
