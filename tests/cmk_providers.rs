//! The customer-managed-key providers against real parts: RSA key pairs in SoftHSM2 tokens
//! through PKCS#11, and KMS commands doing real RSA-OAEP-256 with openssl
//! (tests/support/openssl-kms.sh). Both through the library and through the `xtsfs` CLI.

mod common;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::Attribute;
use cryptoki::session::UserType;
use cryptoki::types::AuthPin;
use serde_json::Value;

use common::contract::run_provider_contract;
use common::kms::Kms;
use common::mount::wait_for_state;
use common::{assert_error, assert_exit, path_str, set_mode, stderr, stdout, TestEnv};
use xtsfs::keys::{KeyError, KeyKind, KeyRef};

const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const USER_PIN: &str = "1234";
const SO_PIN: &str = "5678";

// --- the provider contract ----------------------------------------------------------------

// --- fixtures ---------------------------------------------------------------------------

/// SoftHSM reads SOFTHSM2_CONF when initialized, in this process and in the xtsfs it
/// starts (which inherit the variable), so one configuration and token directory serves
/// the whole test binary and each test makes its own token in it.
fn softhsm_conf() -> &'static Path {
    static CONF: OnceLock<PathBuf> = OnceLock::new();
    CONF.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("cmk_providers-softhsm");
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(dir.join("tokens")).expect("create token dir");
        let conf = dir.join("softhsm2.conf");
        let text = format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            dir.join("tokens").display()
        );
        fs::write(&conf, text).expect("write softhsm2.conf");
        std::env::set_var("SOFTHSM2_CONF", &conf);
        // Every test token has the same user PIN. A PIN source recorded in a header is
        // never used: the xtsfs this binary runs get the PIN from local configuration.
        let pin = dir.join("user.pin");
        fs::write(&pin, format!("{USER_PIN}\n")).expect("write PIN file");
        set_mode(&pin, 0o600);
        std::env::set_var("XTSFS_PKCS11_PIN_SOURCE", &pin);
        conf
    })
}

/// Tests that use SoftHSM take turns, from making their token to deleting it. Its token
/// directory is shared by every process that opens it: a login, a new object or a new
/// token in one test rewrites files that another test's process may be reading, and
/// softhsm2-util and pkcs11-tool fail outright on a token they cannot read. SoftHSM also
/// lists its tokens only when it is initialized, which this process does once.
fn softhsm_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A SoftHSM token of its own for one test, deleted at the end.
struct Token {
    label: String,
    pin_file: PathBuf,
    /// Held until the token is deleted (fields drop after `Drop::drop`).
    _turn: MutexGuard<'static, ()>,
}

impl Token {
    fn new(env: &TestEnv, label: &str) -> Self {
        let turn = softhsm_turn();
        softhsm_conf();
        run(
            "softhsm2-util",
            &[
                "--init-token",
                "--free",
                "--label",
                label,
                "--pin",
                USER_PIN,
                "--so-pin",
                SO_PIN,
            ],
        );
        let pin_file = env.path(&format!("{label}.pin"));
        fs::write(&pin_file, format!("{USER_PIN}\n")).expect("write PIN file");
        set_mode(&pin_file, 0o600);
        Token {
            label: label.into(),
            pin_file,
            _turn: turn,
        }
    }

    fn tool(&self, args: &[&str]) -> String {
        let mut all = vec![
            "--module",
            SOFTHSM_MODULE,
            "--token-label",
            &self.label,
            "--login",
            "--pin",
            USER_PIN,
        ];
        all.extend_from_slice(args);
        run("pkcs11-tool", &all)
    }

    /// `key_type` as pkcs11-tool takes it: rsa:2048, EC:prime256v1.
    fn keypair(&self, object: &str, id: &str, key_type: &str) {
        self.tool(&[
            "--keypairgen",
            "--key-type",
            key_type,
            "--label",
            object,
            "--id",
            id,
        ]);
    }

    /// An RSA-2048 key pair whose private key may sign but not decrypt or unwrap, which
    /// pkcs11-tool cannot make (SoftHSM defaults CKA_DECRYPT to true).
    fn keypair_without_decrypt(&self, object: &str, id: u8) {
        let pkcs11 = Pkcs11::new(SOFTHSM_MODULE).expect("load SoftHSM");
        pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
            .expect("C_Initialize");
        let slot = pkcs11
            .get_slots_with_token()
            .expect("slots")
            .into_iter()
            .find(|slot| {
                pkcs11
                    .get_token_info(*slot)
                    .is_ok_and(|t| t.label() == self.label)
            })
            .expect("the test token");
        {
            let session = pkcs11.open_rw_session(slot).expect("session");
            session
                .login(UserType::User, Some(&AuthPin::from(USER_PIN.to_string())))
                .expect("login");
            let (label, id) = (Attribute::Label(object.into()), Attribute::Id(vec![id]));
            session
                .generate_key_pair(
                    &Mechanism::RsaPkcsKeyPairGen,
                    &[
                        Attribute::Token(true),
                        Attribute::ModulusBits(2048.into()),
                        Attribute::PublicExponent(vec![1, 0, 1]),
                        Attribute::Encrypt(true),
                        Attribute::Verify(true),
                        label.clone(),
                        id.clone(),
                    ],
                    &[
                        Attribute::Token(true),
                        Attribute::Private(true),
                        Attribute::Sensitive(true),
                        Attribute::Sign(true),
                        Attribute::Decrypt(false),
                        Attribute::Unwrap(false),
                        label,
                        id,
                    ],
                )
                .expect("generate key pair");
        }
        pkcs11.finalize().expect("C_Finalize");
    }

    /// The key reference for `object`, with `path_extra` (e.g. `;id=%01`) after it.
    fn uri(&self, object: &str, path_extra: &str) -> String {
        format!(
            "pkcs11:token={};object={object}{path_extra}?module-path={SOFTHSM_MODULE}&pin-source=file:{}",
            self.label,
            self.pin_file.display()
        )
    }

    /// What a header records for [`Token::uri`]: no PIN source.
    fn recorded_uri(&self, object: &str, path_extra: &str) -> String {
        format!(
            "pkcs11:token={};object={object}{path_extra}?module-path={SOFTHSM_MODULE}",
            self.label
        )
    }
}

impl Drop for Token {
    fn drop(&mut self) {
        let _ = Command::new("softhsm2-util")
            .args(["--delete-token", "--token", &self.label])
            .output();
    }
}

/// The key context a mount's key check uses: calls capped at the check's deadline (the
/// default for a 5 s interval).
fn checking_context(env: &TestEnv) -> xtsfs::keys::KeyContext {
    let mut ctx = env.key_context();
    ctx.call_timeout = Some(Duration::from_secs(5));
    ctx
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}{}",
        stdout(&output),
        stderr(&output)
    );
    stdout(&output)
}

#[track_caller]
fn assert_stderr_contains(output: &Output, expected: &str) {
    let err = stderr(output);
    assert!(err.contains(expected), "expected '{expected}' in:\n{err}");
}

// --- key references ---------------------------------------------------------------------

#[test]
fn new_key_references_round_trip_and_bad_ones_are_explained() {
    for text in [
        "command:/usr/local/bin/azure-kms",
        "command:/usr/local/bin/azure-kms#0123abcd",
        "pkcs11:token=T;object=kek;id=%01?module-path=/usr/lib/softhsm/libsofthsm2.so&pin-source=file:/etc/xtsfs/pin",
    ] {
        let key = KeyRef::parse(text).unwrap_or_else(|e| panic!("{text}: {e}"));
        assert_eq!(key.to_string(), text);
    }
    assert_eq!(
        KeyRef::parse("command:/kms#v2").unwrap(),
        KeyRef::Command {
            program: "/kms".into(),
            version: Some("v2".into())
        }
    );
    for (text, expected) in [
        ("command:", "command:PROGRAM"),
        ("command:/kms#", "command:PROGRAM#VERSION"),
        ("pkcs11:token=T;object=kek", "module-path"),
    ] {
        let error = KeyRef::parse(text).expect_err(text);
        assert!(
            matches!(error, KeyError::InvalidRef(_)),
            "{text}: {error:?}"
        );
        assert!(error.to_string().contains(expected), "{text}: {error}");
    }
}

// --- PKCS#11 ----------------------------------------------------------------------------

#[test]
fn pkcs11_provider_meets_the_contract() {
    let env = TestEnv::new();
    let token = Token::new(&env, "contract");
    token.keypair("kek", "01", "rsa:2048");
    let provider = KeyRef::parse(&token.uri("kek", ""))
        .unwrap()
        .open(&checking_context(&env))
        .expect("open the token");
    assert_eq!(provider.describe().unwrap().kind, KeyKind::Pkcs11);
    run_provider_contract(provider.as_ref());
    let description = provider.describe().unwrap();
    assert_eq!(description.key_id, "contract/kek");
    assert_eq!(description.key_version, "01");
}

#[test]
fn pkcs11_init_status_and_rewrap_through_the_cli() {
    let env = TestEnv::new();
    let token = Token::new(&env, "cli");
    token.keypair("kek", "01", "rsa:2048");
    let uri = token.uri("kek", "");
    let backing = env.backing();

    let output = env.xtsfs(&["init", path_str(&backing), "--key", &uri]);
    assert_exit(&output, 0);
    let status = env.status_json(&backing);
    let protector = &status["protector"];
    assert_eq!(protector["kind"], "pkcs11");
    assert_eq!(protector["key_id"], "cli/kek");
    assert_eq!(protector["key_version"], "01");
    assert_eq!(protector["key_ref"], token.recorded_uri("kek", "").as_str());
    assert_eq!(status["key_reachable"], true);
    // SoftHSM 2.6 does OAEP with SHA-1 only; a token that does SHA-256 records RSA-OAEP-256.
    assert!(matches!(
        protector["algorithm"].as_str(),
        Some("RSA-OAEP" | "RSA-OAEP-256")
    ));

    assert_exit(
        &env.xtsfs(&["rewrap", path_str(&backing), "--key", "mmk"]),
        0,
    );
    assert_eq!(env.status_json(&backing)["protector"]["kind"], "mmk");
    assert_exit(
        &env.xtsfs(&["rewrap", path_str(&backing), "--key", &uri]),
        0,
    );
    let status = env.status_json(&backing);
    assert_eq!(status["protector"]["kind"], "pkcs11");
    assert_eq!(status["key_reachable"], true);
    assert_exit(
        &env.xtsfs(&["rewrap", path_str(&backing), "--key", "mmk:other"]),
        0,
    );
    assert_eq!(env.status_json(&backing)["protector"]["key_id"], "other");
}

#[test]
fn pkcs11_pin_value_is_used_but_never_stored() {
    let env = TestEnv::new();
    let token = Token::new(&env, "pin-in-uri");
    token.keypair("kek", "01", "rsa:2048");
    let with_pin = format!(
        "pkcs11:token={};object=kek?pin-value={USER_PIN}&module-path={SOFTHSM_MODULE}",
        token.label
    );
    let backing = env.backing();
    assert_exit(
        &env.xtsfs(&["init", path_str(&backing), "--key", &with_pin]),
        0,
    );
    let header = fs::read(backing.join("xtsfs.header")).expect("read header");
    assert!(
        !header.windows(9).any(|w| w == b"pin-value"),
        "the header holds the PIN"
    );

    // The recorded reference has no PIN, so the key needs it again.
    let output = Command::new(env!("CARGO_BIN_EXE_xtsfs"))
        .args(["status", path_str(&backing)])
        .env("XTSFS_PLATFORM_KEY_DIR", env.platform_key_dir())
        .env("XTSFS_RUN_DIR", env.path("run"))
        .env_remove("XTSFS_PKCS11_PIN_SOURCE")
        .output()
        .unwrap();
    assert_error(&output, 3);
    assert_stderr_contains(&output, "requires a PIN");
    assert_exit(
        &env.xtsfs(&["status", path_str(&backing), "--key", &with_pin]),
        0,
    );
}

#[test]
fn pkcs11_ec_key_is_refused() {
    let env = TestEnv::new();
    let token = Token::new(&env, "ec");
    token.keypair("eckey", "01", "EC:prime256v1");
    let backing = env.backing();
    let output = env.xtsfs(&["init", path_str(&backing), "--key", &token.uri("eckey", "")]);
    assert_error(&output, 3);
    assert_stderr_contains(
        &output,
        "only RSA keys of 2048, 3072 or 4096 bits are supported",
    );
    assert_stderr_contains(&output, "is an EC key");
    assert!(!backing.exists(), "init wrote something");
}

#[test]
fn pkcs11_key_that_may_not_decrypt_is_refused_before_anything_is_written() {
    let env = TestEnv::new();
    let token = Token::new(&env, "no-decrypt");
    token.keypair_without_decrypt("signer", 0x01);
    let backing = env.backing();
    let output = env.xtsfs(&[
        "init",
        path_str(&backing),
        "--key",
        &token.uri("signer", ""),
    ]);
    assert_error(&output, 3);
    assert_stderr_contains(&output, "the private key does not allow CKA_DECRYPT");
    assert!(!backing.exists(), "init wrote something");

    // Rewrapping onto it leaves the header as it was.
    assert_exit(&env.xtsfs(&["init", path_str(&backing)]), 0);
    let before = fs::read(backing.join("xtsfs.header")).unwrap();
    let output = env.xtsfs(&[
        "rewrap",
        path_str(&backing),
        "--key",
        &token.uri("signer", ""),
    ]);
    assert_exit(&output, 3);
    assert_stderr_contains(&output, "the private key does not allow CKA_DECRYPT");
    assert_eq!(fs::read(backing.join("xtsfs.header")).unwrap(), before);
}

#[test]
fn pkcs11_follows_the_newest_id_and_old_versions_still_unwrap() {
    let env = TestEnv::new();
    let token = Token::new(&env, "versions");
    token.keypair("kek", "01", "rsa:2048");
    let uri = token.uri("kek", "");
    let backing = env.backing();
    assert_exit(&env.xtsfs(&["init", path_str(&backing), "--key", &uri]), 0);

    token.keypair("kek", "02", "rsa:2048");
    {
        let provider = KeyRef::parse(&uri)
            .unwrap()
            .open(&env.key_context())
            .unwrap();
        assert_eq!(provider.describe().unwrap().key_version, "02");
        let pinned = KeyRef::parse(&token.uri("kek", ";id=%01")).unwrap();
        let pinned = pinned.open(&env.key_context()).unwrap();
        assert_eq!(pinned.describe().unwrap().key_version, "01");
    }
    // The volume wrapped under 01 still opens, through the reference it recorded.
    let status = env.status_json(&backing);
    assert_eq!(status["protector"]["key_version"], "01");
    assert_eq!(status["key_reachable"], true);

    assert_exit(
        &env.xtsfs(&["rewrap", path_str(&backing), "--key", &uri]),
        0,
    );
    assert_eq!(env.status_json(&backing)["protector"]["key_version"], "02");

    // A larger id is newer even when it is longer: 0100 > 02.
    token.keypair("kek", "0100", "rsa:2048");
    assert_exit(
        &env.xtsfs(&["rewrap", path_str(&backing), "--key", &uri]),
        0,
    );
    assert_eq!(
        env.status_json(&backing)["protector"]["key_version"],
        "0100"
    );
}

#[test]
fn pkcs11_deleted_key_fails_unwrap_clearly() {
    let env = TestEnv::new();
    let token = Token::new(&env, "deleted");
    token.keypair("kek", "01", "rsa:2048");
    let backing = env.backing();
    assert_exit(
        &env.xtsfs(&["init", path_str(&backing), "--key", &token.uri("kek", "")]),
        0,
    );

    token.tool(&["--delete-object", "--type", "privkey", "--id", "01"]);
    let output = env.xtsfs(&["status", path_str(&backing)]);
    assert_error(&output, 3);
    assert_stderr_contains(
        &output,
        "the private key 'kek' id 01 on PKCS#11 token 'deleted' is not on the token",
    );
    let output = env.xtsfs(&["status", "--json", path_str(&backing)]);
    let status: Value = serde_json::from_str(&stdout(&output)).unwrap();
    assert_eq!(status["key_reachable"], false);
}

#[test]
fn pkcs11_missing_token_and_wrong_pin_are_reported() {
    let env = TestEnv::new();
    let token = Token::new(&env, "reports");
    token.keypair("kek", "01", "rsa:2048");
    let backing = env.backing();

    let absent = token
        .uri("kek", "")
        .replace("token=reports", "token=absent");
    let output = env.xtsfs(&["init", path_str(&backing), "--key", &absent]);
    assert_error(&output, 3);
    assert_stderr_contains(&output, "PKCS#11 token 'absent' is unavailable");
    assert_stderr_contains(&output, "'reports'");

    let wrong_pin =
        format!("pkcs11:token=reports;object=kek?module-path={SOFTHSM_MODULE}&pin-value=9999");
    let output = env.xtsfs(&["init", path_str(&backing), "--key", &wrong_pin]);
    assert_error(&output, 3);
    assert_stderr_contains(
        &output,
        "logins to PKCS#11 token 'reports' are suspended: the login just failed with CKR_PIN_INCORRECT",
    );

    // No more logins until the operator acts: the right PIN file was not touched since.
    let output = env.xtsfs(&["init", path_str(&backing), "--key", &token.uri("kek", "")]);
    assert_error(&output, 3);
    assert_stderr_contains(&output, "the last login (at ");
    let marker = fs::read_dir(env.path("volume-state/pkcs11-suspended"))
        .unwrap()
        .next()
        .unwrap()
        .unwrap()
        .path();
    fs::remove_file(marker).unwrap();

    let output = env.xtsfs(&[
        "init",
        path_str(&backing),
        "--key",
        &token.uri("nothing", ""),
    ]);
    assert_error(&output, 3);
    assert_stderr_contains(&output, "has no public key labelled 'nothing'");

    let output = env.xtsfs(&[
        "init",
        path_str(&backing),
        "--key",
        "pkcs11:token=reports;object=kek;id=%zz?module-path=/m.so",
    ]);
    assert_error(&output, 2);
    assert_stderr_contains(&output, "two hex digits");
    assert!(!backing.exists());
}

/// The header is not authenticated until the key it names has unwrapped the DEK, so it
/// may not choose the PIN: a `pin-value` in it is refused, a `pin-source` in it is not
/// used (the PIN comes from --pkcs11-pin-source / XTSFS_PKCS11_PIN_SOURCE).
#[test]
fn a_header_cannot_choose_the_pkcs11_pin() {
    let env = TestEnv::new();
    let token = Token::new(&env, "header-pin");
    token.keypair("kek", "01", "rsa:2048");
    let backing = env.backing();
    assert_exit(
        &env.xtsfs(&["init", path_str(&backing), "--key", &token.uri("kek", "")]),
        0,
    );
    let ctx = env.key_context();
    let mut volume = xtsfs::volume::unlock(
        &backing,
        &ctx,
        Some(&KeyRef::parse(&token.uri("kek", "")).unwrap()),
    )
    .unwrap();
    // Headers as someone with write access to the backing directory (and the DEK, for
    // a valid MAC: the worst case) would write them; the host records each as its own.
    let mut forge = |key_ref: String| {
        volume.header.protector.key.key_ref = key_ref;
        fs::write(
            backing.join("xtsfs.header"),
            volume.header.encode(&volume.dek),
        )
        .unwrap();
        xtsfs::volume::record_header(&ctx, &volume.header, &volume.dek).unwrap();
    };

    forge(format!("{}&pin-value=9999", token.recorded_uri("kek", "")));
    let output = env.xtsfs(&["status", path_str(&backing)]);
    assert_error(&output, 2);
    assert_stderr_contains(&output, "a volume header may not carry pin-value");

    let wrong = env.path("wrong.pin");
    fs::write(&wrong, "9999\n").unwrap();
    set_mode(&wrong, 0o600);
    forge(format!(
        "{}&pin-source=file:{}",
        token.recorded_uri("kek", ""),
        wrong.display()
    ));
    assert_exit(&env.xtsfs(&["status", path_str(&backing)]), 0);
}

/// A wrong PIN at a key check suspends logins to the token (so the checks do not lock the
/// user PIN for every application) until the PIN file changes; the status says why.
#[test]
fn a_wrong_pin_suspends_logins_until_the_pin_file_changes() {
    let env = TestEnv::new();
    let token = Token::new(&env, "suspend");
    token.keypair("kek", "01", "rsa:2048");
    let mut m = env.initialized(&["--key", &token.uri("kek", "")]);
    let pin = path_str(&token.pin_file).to_string();
    m.mount_checking_key(&["--pkcs11-pin-source", &pin]);
    fs::write(m.path("data"), b"behind the token").unwrap();

    fs::write(&token.pin_file, "9999\n").unwrap();
    let report = wait_for_state(&env, &m.mountpoint, "locked");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut report = report;
    // Later checks do not log in again: they report the suspension.
    while !report["live"]["last_check"]["error"]
        .as_str()
        .unwrap_or("")
        .contains("the last login (at ")
    {
        assert!(Instant::now() < deadline, "{report}");
        std::thread::sleep(Duration::from_millis(50));
        report = common::mount::live_state(&env, &m.mountpoint);
    }
    let error = report["live"]["last_check"]["error"].as_str().unwrap();
    assert!(error.contains("are suspended"), "{error}");
    assert!(error.contains("CKR_PIN_INCORRECT"), "{error}");
    let output = env.xtsfs(&["status", "--pkcs11-pin-source", &pin, path_str(&m.backing)]);
    assert_error(&output, 3);
    assert!(stdout(&output).contains("suspended"), "{}", stdout(&output));

    fs::write(&token.pin_file, format!("{USER_PIN}\n")).unwrap();
    wait_for_state(&env, &m.mountpoint, "serving");
    assert_eq!(fs::read(m.path("data")).unwrap(), b"behind the token");
}

// --- KMS commands -----------------------------------------------------------------------

#[test]
fn command_provider_meets_the_contract() {
    let env = TestEnv::new();
    let kms = Kms::new(&env, "contract");
    kms.add_version(&env, 1);
    // Under a key check's deadline, as the key monitor opens it: every run of the
    // program is capped at the deadline.
    let provider = KeyRef::parse(&kms.key())
        .unwrap()
        .open(&checking_context(&env))
        .expect("open the KMS command");
    assert_eq!(provider.describe().unwrap().kind, KeyKind::Command);
    run_provider_contract(provider.as_ref());
    let description = provider.describe().unwrap();
    assert_eq!(
        (
            description.key_id.as_str(),
            description.key_version.as_str(),
            description.algorithm.as_str()
        ),
        ("openssl-kms", "v1", "RSA-OAEP-256")
    );
}

#[test]
fn command_init_status_and_rewrap_through_the_cli() {
    let env = TestEnv::new();
    let kms = Kms::new(&env, "cli");
    kms.add_version(&env, 1);
    let backing = env.backing();

    assert_exit(
        &env.xtsfs(&["init", path_str(&backing), "--key", &kms.key()]),
        0,
    );
    let status = env.status_json(&backing);
    let protector = &status["protector"];
    assert_eq!(protector["kind"], "command");
    assert_eq!(protector["key_id"], "openssl-kms");
    assert_eq!(protector["key_version"], "v1");
    assert_eq!(protector["algorithm"], "RSA-OAEP-256");
    assert_eq!(protector["key_ref"], kms.key().as_str());
    assert_eq!(status["key_reachable"], true);

    assert_exit(
        &env.xtsfs(&["rewrap", path_str(&backing), "--key", "mmk"]),
        0,
    );
    assert_eq!(env.status_json(&backing)["protector"]["kind"], "mmk");
    assert_exit(
        &env.xtsfs(&["rewrap", path_str(&backing), "--key", &kms.key()]),
        0,
    );
    let status = env.status_json(&backing);
    assert_eq!(status["protector"]["kind"], "command");
    assert_eq!(status["key_reachable"], true);
}

#[test]
fn command_follows_the_newest_version_unless_pinned() {
    let env = TestEnv::new();
    let kms = Kms::new(&env, "versions");
    kms.add_version(&env, 1);
    let backing = env.backing();
    assert_exit(
        &env.xtsfs(&["init", path_str(&backing), "--key", &kms.key()]),
        0,
    );

    kms.add_version(&env, 2);
    let status = env.status_json(&backing);
    assert_eq!(status["protector"]["key_version"], "v1");
    assert_eq!(
        status["key_reachable"], true,
        "the old version still unwraps"
    );
    assert_exit(
        &env.xtsfs(&["rewrap", path_str(&backing), "--key", &kms.key()]),
        0,
    );
    assert_eq!(env.status_json(&backing)["protector"]["key_version"], "v2");

    let pinned = format!("{}#v1", kms.key());
    let pinned_backing = env.path("pinned");
    assert_exit(
        &env.xtsfs(&["init", path_str(&pinned_backing), "--key", &pinned]),
        0,
    );
    let status = env.status_json(&pinned_backing);
    assert_eq!(status["protector"]["key_version"], "v1");
    assert_eq!(status["protector"]["key_ref"], pinned.as_str());

    let output = env.xtsfs(&[
        "init",
        path_str(&env.path("missing")),
        "--key",
        &format!("{}#v9", kms.key()),
    ]);
    assert_error(&output, 3);
    assert_stderr_contains(&output, "no key version 'v9'");

    // A version the KMS no longer has fails clearly; the others still open.
    fs::remove_file(kms.dir.join("v1.pem")).expect("remove v1");
    let output = env.xtsfs(&["status", path_str(&pinned_backing)]);
    assert_error(&output, 3);
    assert_stderr_contains(&output, "no key version 'v1'");
    assert_exit(&env.xtsfs(&["status", path_str(&backing)]), 0);
}

#[test]
fn command_denied_and_unavailable_are_key_errors() {
    let env = TestEnv::new();
    let kms = Kms::new(&env, "refusals");
    kms.add_version(&env, 1);
    let backing = env.backing();
    assert_exit(
        &env.xtsfs(&["init", path_str(&backing), "--key", &kms.key()]),
        0,
    );

    kms.set("deny", "");
    let output = env.xtsfs(&["status", path_str(&backing)]);
    assert_error(&output, 3);
    assert_stderr_contains(&output, "was denied: the test KMS denies this host");
    let output = env.xtsfs(&["init", path_str(&env.path("new")), "--key", &kms.key()]);
    assert_error(&output, 3);
    assert_stderr_contains(&output, "was denied");
    assert!(!env.path("new").exists());
    kms.unset("deny");

    kms.set("unavailable", "");
    let output = env.xtsfs(&["status", path_str(&backing)]);
    assert_error(&output, 3);
    assert_stderr_contains(&output, "is unavailable: the test KMS is down");
    kms.unset("unavailable");
    assert_exit(&env.xtsfs(&["status", path_str(&backing)]), 0);

    // The same refusals through the library, as the variants callers match on.
    let provider = KeyRef::parse(&kms.key())
        .unwrap()
        .open(&env.key_context())
        .unwrap();
    kms.set("deny", "");
    assert!(matches!(provider.describe(), Err(KeyError::Denied { .. })));
    kms.unset("deny");
    kms.set("unavailable", "");
    assert!(matches!(
        provider.describe(),
        Err(KeyError::Unavailable { .. })
    ));
}

#[test]
fn command_protocol_violations_are_explained() {
    let env = TestEnv::new();
    let kms = Kms::new(&env, "violations");
    kms.add_version(&env, 1);
    let init = |name: &str| env.xtsfs(&["init", path_str(&env.path(name)), "--key", &kms.key()]);

    kms.set("reply", "this is not JSON\n");
    let output = init("malformed");
    assert_error(&output, 3);
    assert_stderr_contains(
        &output,
        "broke the protocol: the reply is not one JSON object",
    );

    kms.set("reply", r#"{"xtsfs_kms":2,"ok":true,"key_id":"k"}"#);
    let output = init("version");
    assert_error(&output, 3);
    assert_stderr_contains(
        &output,
        "it speaks protocol version 2; this xtsfs speaks version 1",
    );

    kms.set(
        "reply",
        r#"{"xtsfs_kms":1,"ok":true,"key_version":"v1","algorithm":"RSA-OAEP-256"}"#,
    );
    let output = init("no-id");
    assert_error(&output, 3);
    assert_stderr_contains(&output, "the reply has no \"key_id\"");
    kms.unset("reply");

    kms.set("exit", "7");
    let output = init("crashed");
    assert_error(&output, 3);
    assert_stderr_contains(
        &output,
        "exited with exit status: 7 and no reply; it said: openssl-kms: told to fail",
    );
    kms.unset("exit");

    set_mode(&kms.program, 0o775);
    let output = init("writable");
    assert_error(&output, 3);
    assert_stderr_contains(&output, "are too open");
    set_mode(&kms.program, 0o755);

    for name in ["malformed", "version", "no-id", "crashed", "writable"] {
        assert!(!env.path(name).exists(), "{name}: init wrote something");
    }
}

#[test]
fn command_that_hangs_is_killed_at_the_time_limit() {
    let env = TestEnv::new();
    let kms = Kms::new(&env, "hang");
    kms.add_version(&env, 1);
    kms.set("sleep", "60");
    let started = Instant::now();
    let output = env.xtsfs_with_env(
        &[("XTSFS_KMS_TIMEOUT", "1")],
        &["init", path_str(&env.backing()), "--key", &kms.key()],
    );
    assert_error(&output, 3);
    assert_stderr_contains(&output, "did not finish within 1s and was killed");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );

    assert!(
        !kms.sleeper_still_running_after(Duration::from_secs(5)),
        "the KMS command outlived its time limit"
    );

    let output = env.xtsfs_with_env(
        &[("XTSFS_KMS_TIMEOUT", "soon")],
        &["init", path_str(&env.backing()), "--key", &kms.key()],
    );
    assert_error(&output, 3);
    assert_stderr_contains(&output, "XTSFS_KMS_TIMEOUT='soon' is not a time limit");
}

#[test]
fn a_header_may_only_name_kms_programs_in_trusted_directories() {
    let env = TestEnv::new();
    let kms = Kms::new(&env, "trust");
    kms.add_version(&env, 1);
    // A program that leaves a mark each time it runs, then acts as the KMS.
    let marker = env.path("ran");
    let program = env.path("marking-kms.sh");
    let script = format!(
        "#!/bin/sh\ntouch '{}'\nexec '{}'\n",
        marker.display(),
        kms.program.display()
    );
    fs::write(&program, script).expect("write marking KMS");
    set_mode(&program, 0o755);
    let key = format!("command:{}", program.display());
    let backing = env.backing();
    assert_exit(&env.xtsfs(&["init", path_str(&backing), "--key", &key]), 0);
    fs::remove_file(&marker).expect("init ran the program");

    let untrusted = [("XTSFS_TRUSTED_KEY_DIRS", "/nonexistent")];
    let refused = env.xtsfs_with_env(&untrusted, &["status", path_str(&backing)]);
    assert_exit(&refused, 3);
    assert_stderr_contains(&refused, "not in a trusted key directory");
    assert!(
        !marker.exists(),
        "a header alone must not make xtsfs run a program"
    );

    let explicit = env.xtsfs_with_env(&untrusted, &["status", path_str(&backing), "--key", &key]);
    assert_exit(&explicit, 0);
    assert!(marker.exists(), "an explicit --key is the user's choice");
}

/// Mounts `key`'s volume with a fast key check and the lock policy, writes and fsyncs a
/// file, runs `revoke`, expects EACCES, runs `restore`, and expects the data back.
fn revoke_while_mounted(env: &TestEnv, key: &str, revoke: impl FnOnce(), restore: impl FnOnce()) {
    let mut m = env.initialized(&["--key", key]);
    m.mount_checking_key(&["--on-key-loss", "lock"]);
    let mut file = fs::File::create(m.path("acknowledged")).unwrap();
    std::io::Write::write_all(&mut file, b"fsynced before revocation").unwrap();
    file.sync_all().unwrap();
    drop(file);

    revoke();
    wait_for_state(env, &m.mountpoint, "locked");
    let denied = fs::read(m.path("acknowledged")).unwrap_err();
    assert_eq!(denied.kind(), std::io::ErrorKind::PermissionDenied);

    restore();
    wait_for_state(env, &m.mountpoint, "serving");
    assert_eq!(
        fs::read(m.path("acknowledged")).unwrap(),
        b"fsynced before revocation"
    );
}

#[test]
fn command_denial_while_mounted_locks_until_access_returns() {
    let env = TestEnv::new();
    let kms = Kms::new(&env, "revoke");
    kms.add_version(&env, 1);
    revoke_while_mounted(
        &env,
        &kms.key(),
        || kms.set("deny", ""),
        || kms.unset("deny"),
    );
}

#[test]
fn pkcs11_key_deleted_while_mounted_locks_until_the_token_is_restored() {
    let env = TestEnv::new();
    let token = Token::new(&env, "revoked");
    token.keypair("kek", "01", "rsa:2048");
    // The token's own directory, found by its label, backed up the way an HSM is.
    let tokens = softhsm_conf().parent().unwrap().join("tokens");
    let token_dir = fs::read_dir(&tokens)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|dir| {
            fs::read(dir.join("token.object"))
                .map(|bytes| bytes.windows(7).any(|w| w == b"revoked"))
                .unwrap_or(false)
        })
        .expect("the token's directory");
    // Beside the token directory (so renames stay on one filesystem) but outside the
    // directory SoftHSM scans.
    let backup = tokens.with_file_name("revoked-backup");
    let _ = fs::remove_dir_all(&backup);
    run("cp", &["-a", path_str(&token_dir), path_str(&backup)]);
    revoke_while_mounted(
        &env,
        &token.uri("kek", ""),
        || {
            token.tool(&["--delete-object", "--type", "privkey", "--id", "01"]);
        },
        || {
            // The daemon's key checks keep creating lock files in the token directory, so
            // the restore swaps whole directories by rename instead of emptying one.
            let removed = tokens.with_file_name("revoked-removed");
            fs::rename(&token_dir, &removed).unwrap();
            fs::rename(&backup, &token_dir).unwrap();
            let _ = fs::remove_dir_all(&removed);
        },
    );
}
