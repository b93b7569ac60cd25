//! The key commands through the binary: init, status, rewrap and platform-key, their
//! files and permissions, and their exit codes (0 ok, 2 usage, 3 key, 4 volume).

mod common;

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use xtsfs::keys::KeyRef;
use xtsfs::volume::{self, HEADER_FILE, TREE_DIR};

use common::{assert_error, assert_exit, mode, path_str, pem_ref, set_mode, stdout, TestEnv};

/// Every file under `dir` and its bytes, keyed by relative path.
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    common::walk(dir)
        .into_iter()
        .filter(|(_, meta)| !meta.is_dir())
        .map(|(path, _)| {
            let bytes = fs::read(&path).unwrap();
            (path.strip_prefix(dir).unwrap().into(), bytes)
        })
        .collect()
}

/// The DEK bytes of the volume, unwrapped with `key`.
fn dek_of(env: &TestEnv, backing: &Path, key: &KeyRef) -> Vec<u8> {
    let volume = volume::unlock(backing, &env.key_context(), Some(key)).unwrap();
    volume.dek.expose().to_vec()
}

#[test]
fn init_with_the_default_platform_key_creates_a_private_store_and_volume() {
    let env = TestEnv::new();
    let backing = env.backing();
    let output = env.xtsfs(&["init", path_str(&backing)]);
    assert_exit(&output, 0);
    assert!(stdout(&output).contains("created xtsfs volume"));

    let store = env.platform_key_dir();
    let key = store.join("default.1.key");
    assert_eq!(mode(&store), 0o700);
    assert_eq!(mode(&key), 0o600);
    assert_eq!(fs::read(&key).unwrap().len(), 32);
    assert_eq!(mode(&backing), 0o700);
    assert_eq!(mode(&backing.join(HEADER_FILE)), 0o600);
    assert!(backing.join(TREE_DIR).is_dir());
}

#[test]
fn status_json_reports_the_format_and_the_protector() {
    let env = TestEnv::new();
    let backing = env.backing();
    assert_exit(&env.xtsfs(&["init", path_str(&backing)]), 0);
    let (header, _) = volume::read_header(&backing).unwrap();

    let status = env.status_json(&backing);
    assert_eq!(status["volume_id"], header.volume_id.as_str());
    assert_eq!(status["volume_id"].as_str().unwrap().len(), 36);
    assert_eq!(status["format_version"], 2);
    assert_eq!(status["epoch"], 1);
    assert_eq!(status["cipher"], "aes-256-xts");
    assert_eq!(status["data_unit_size"], 4096);
    assert_eq!(status["names"], "aes-256-siv");
    assert_eq!(status["key_reachable"], true);
    let protector = &status["protector"];
    assert_eq!(protector["kind"], "mmk");
    assert_eq!(protector["key_id"], "default");
    assert_eq!(protector["key_version"], "1");
    assert_eq!(protector["algorithm"], "A256KWP");

    let plain = env.path("plain");
    let rsa = env.rsa_key("rsa.pem", 2048);
    let key = format!("pem:{}", path_str(&rsa));
    let init = ["init", path_str(&plain), "--key", &key, "--plaintext-names"];
    assert_exit(&env.xtsfs(&init), 0);
    let status = env.status_json(&plain);
    assert_eq!(status["names"], "plaintext");
    assert_eq!(status["protector"]["kind"], "pem");
    assert_eq!(status["protector"]["key_id"], path_str(&rsa));
    assert_eq!(
        status["protector"]["key_version"],
        env.openssl_fingerprint(&rsa).as_str()
    );
    assert_eq!(status["protector"]["algorithm"], "RSA-OAEP-256");
}

#[test]
fn rewrap_through_pem_keys_and_back_changes_only_the_header() {
    let env = TestEnv::new();
    let backing = env.backing();
    assert_exit(&env.xtsfs(&["init", path_str(&backing)]), 0);
    let tree = backing.join(TREE_DIR);
    fs::create_dir(tree.join("dir")).unwrap();
    fs::write(tree.join("file"), common::pseudo_random_bytes(1, 5000)).unwrap();
    fs::write(tree.join("dir/nested"), common::pseudo_random_bytes(2, 33)).unwrap();
    fs::write(tree.join("empty"), b"").unwrap();
    let data = snapshot(&tree);
    let volume_id = env.status_json(&backing)["volume_id"].clone();
    let dek = dek_of(&env, &backing, &common::mmk_ref("default"));

    let (first, second) = (
        env.rsa_key("first.pem", 2048),
        env.rsa_key("second.pem", 2048),
    );
    let steps = [
        (format!("pem:{}", path_str(&first)), pem_ref(&first), "pem"),
        (
            format!("pem:{}", path_str(&second)),
            pem_ref(&second),
            "pem",
        ),
        ("mmk".to_string(), common::mmk_ref("default"), "mmk"),
    ];
    for (key_arg, key, kind) in steps {
        let before = fs::read(backing.join(HEADER_FILE)).unwrap();
        let output = env.xtsfs(&["rewrap", path_str(&backing), "--key", &key_arg]);
        assert_exit(&output, 0);
        assert_ne!(fs::read(backing.join(HEADER_FILE)).unwrap(), before);

        let status = env.status_json(&backing);
        assert_eq!(
            status["protector"]["kind"], kind,
            "after rewrap to {key_arg}"
        );
        assert_eq!(status["volume_id"], volume_id);
        assert_eq!(snapshot(&tree), data, "data changed by rewrap to {key_arg}");
        assert_eq!(dek_of(&env, &backing, &key), dek);
    }

    // The PEM keys the volume was wrapped under before no longer open it.
    let old = format!("pem:{}", path_str(&second));
    assert_error(
        &env.xtsfs(&["status", path_str(&backing), "--key", &old]),
        3,
    );
}

#[test]
fn init_with_a_bad_key_writes_nothing() {
    let env = TestEnv::new();
    let too_open = env.rsa_key("too-open.pem", 2048);
    set_mode(&too_open, 0o644);
    let bad_keys = [
        format!("pem:{}", path_str(&env.path("missing.pem"))),
        format!("pem:{}", path_str(&env.rsa_key("rsa1024.pem", 1024))),
        format!("pem:{}", path_str(&env.ec_key("ec.pem"))),
        format!("pem:{}", path_str(&too_open)),
    ];
    for key in &bad_keys {
        let backing = env.path("never");
        assert_error(&env.xtsfs(&["init", path_str(&backing), "--key", key]), 3);
        assert!(!backing.exists(), "init with {key} created the backing dir");
    }
    assert!(
        !env.platform_key_dir().exists(),
        "PEM keys never touch the platform key store"
    );

    // A platform key store others can read is refused before a key is created in it.
    fs::create_dir(env.platform_key_dir()).unwrap();
    set_mode(&env.platform_key_dir(), 0o755);
    let backing = env.path("never");
    assert_error(&env.xtsfs(&["init", path_str(&backing)]), 3);
    assert!(!backing.exists());
    assert_eq!(fs::read_dir(env.platform_key_dir()).unwrap().count(), 0);
}

#[test]
fn rewrap_with_a_bad_key_leaves_the_header_unchanged() {
    let env = TestEnv::new();
    let backing = env.backing();
    assert_exit(&env.xtsfs(&["init", path_str(&backing)]), 0);
    let header = fs::read(backing.join(HEADER_FILE)).unwrap();
    let rsa1024 = env.rsa_key("rsa1024.pem", 1024);
    let unrelated = env.rsa_key("unrelated.pem", 2048);

    let bad_rewraps = [
        vec![
            "--key".to_string(),
            format!("pem:{}", path_str(&env.path("missing.pem"))),
        ],
        vec!["--key".to_string(), format!("pem:{}", path_str(&rsa1024))],
        vec![
            "--key".to_string(),
            format!("pem:{}", path_str(&env.ed25519_key("ed.pem"))),
        ],
        // The right new key, but unwrapping with a key the volume is not wrapped under.
        vec![
            "--key".to_string(),
            format!("pem:{}", path_str(&unrelated)),
            "--current-key".to_string(),
            format!("pem:{}", path_str(&unrelated)),
        ],
        vec![
            "--key".to_string(),
            "mmk".to_string(),
            "--current-key".to_string(),
            "mmk:absent".to_string(),
        ],
    ];
    for extra in &bad_rewraps {
        let mut args = vec!["rewrap", path_str(&backing)];
        args.extend(extra.iter().map(String::as_str));
        assert_error(&env.xtsfs(&args), 3);
        assert_eq!(
            fs::read(backing.join(HEADER_FILE)).unwrap(),
            header,
            "rewrap {extra:?}"
        );
        assert!(!backing.join("xtsfs.header.tmp").exists());
    }
}

#[test]
fn exit_codes_tell_usage_key_and_volume_errors_apart() {
    let env = TestEnv::new();
    let backing = env.backing();

    // 2: the command line is wrong.
    assert_exit(&env.xtsfs(&["no-such-command"]), 2);
    assert_exit(&env.xtsfs(&["status"]), 2);
    assert_error(
        &env.xtsfs(&["init", path_str(&backing), "--key", "gpg:somebody"]),
        2,
    );
    assert_error(
        &env.xtsfs(&["init", path_str(&backing), "--key", "mmk:not/an/id"]),
        2,
    );
    assert!(!backing.exists());

    // 4: not a volume, or not empty.
    fs::create_dir(&backing).unwrap();
    assert_error(&env.xtsfs(&["status", path_str(&backing)]), 4);
    assert_error(&env.xtsfs(&["status", path_str(&env.path("absent"))]), 4);
    fs::write(backing.join("stray"), b"x").unwrap();
    assert_error(&env.xtsfs(&["init", path_str(&backing)]), 4);
    fs::remove_file(backing.join("stray")).unwrap();

    // 3: the key is missing or wrong.
    assert_exit(&env.xtsfs(&["init", path_str(&backing)]), 0);
    let wrong = format!("pem:{}", path_str(&env.rsa_key("wrong.pem", 2048)));
    assert_error(
        &env.xtsfs(&["status", path_str(&backing), "--key", &wrong]),
        3,
    );
    fs::remove_file(env.platform_key_dir().join("default.1.key")).unwrap();
    let output = env.xtsfs(&["status", "--json", path_str(&backing)]);
    assert_error(&output, 3);
    // The report is still printed, for monitoring.
    let status: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(status["key_reachable"], false);
}

#[test]
fn platform_key_create_list_and_rotate() {
    let env = TestEnv::new();
    let list = || stdout(&env.xtsfs(&["platform-key", "list"]));

    // Listing a store that does not exist is a key error, and does not create it.
    assert_error(&env.xtsfs(&["platform-key", "list"]), 3);
    assert!(!env.platform_key_dir().exists());

    assert_exit(&env.xtsfs(&["platform-key", "create", "team-a"]), 0);
    assert_eq!(mode(&env.platform_key_dir()), 0o700);
    assert_eq!(mode(&env.platform_key_dir().join("team-a.1.key")), 0o600);
    assert_eq!(list(), "team-a\tversions 1\tlatest 1\n");
    assert_error(&env.xtsfs(&["platform-key", "create", "team-a"]), 3);

    let backing = env.backing();
    assert_exit(
        &env.xtsfs(&["init", path_str(&backing), "--key", "mmk:team-a"]),
        0,
    );
    assert_exit(&env.xtsfs(&["platform-key", "rotate", "team-a"]), 0);
    assert_eq!(list(), "team-a\tversions 1,2\tlatest 2\n");
    assert_error(&env.xtsfs(&["platform-key", "rotate", "team-b"]), 3);

    // The volume stays on version 1 until it is rewrapped, then uses version 2.
    assert_eq!(env.status_json(&backing)["protector"]["key_version"], "1");
    assert_exit(
        &env.xtsfs(&["rewrap", path_str(&backing), "--key", "mmk:team-a"]),
        0,
    );
    assert_eq!(env.status_json(&backing)["protector"]["key_version"], "2");

    assert_exit(&env.xtsfs(&["platform-key", "create", "team-b"]), 0);
    assert_eq!(
        list(),
        "team-a\tversions 1,2\tlatest 2\nteam-b\tversions 1\tlatest 1\n"
    );
    let bad_id = env.xtsfs(&["platform-key", "create", "no spaces"]);
    assert_ne!(bad_id.status.code(), Some(0));
    assert!(!env.platform_key_dir().join("no spaces.1.key").exists());
}
