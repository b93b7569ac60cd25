//! `xtsfs fsck`: volumes made with the real binary and filled through a real mount, then
//! damaged in the backing directory one way per kind of problem. fsck must find each,
//! `--repair` must repair what it promises (and lose nothing), a clean volume reports
//! clean, a mounted volume is refused unless `--force`, and the exit codes and the
//! `--json` report are what the help says. `many_files` times fsck on a large volume
//! (XTSFS_FSCK_FILES files, default 100 000) and prints its rate.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fs::{self, File, OpenOptions};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, FileExt};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::Instant;

use serde_json::Value;
use xtsfs::crypto::names::{BackingName, NameCipher};
use xtsfs::fs::contents::Contents;
use xtsfs::volume::file_header::{FileFormat, FileHeader};

use common::mount::{assert_success, Mounted};
use common::{assert_error, assert_exit, path_str, pseudo_random_bytes, stderr, stdout, TestEnv};

const EXIT_PROBLEMS: i32 = 10;
const EXIT_PROBLEMS_LEFT: i32 = 11;
/// A name of 200 bytes: stored under a hash, with a side file.
fn long(tag: char) -> String {
    std::iter::repeat_n(tag, 200).collect()
}

fn fsck(env: &TestEnv, args: &[&str]) -> Output {
    let backing = env.backing();
    let mut all = vec!["fsck", path_str(&backing)];
    all.extend_from_slice(args);
    env.xtsfs(&all)
}

/// `fsck --json` with `args`: its exit code and report.
fn fsck_json(env: &TestEnv, args: &[&str]) -> (i32, Value) {
    let mut all = vec!["--json"];
    all.extend_from_slice(args);
    let output = fsck(env, &all);
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!(
            "fsck --json prints JSON ({e}): {}\n{}",
            stdout(&output),
            stderr(&output)
        )
    });
    (output.status.code().expect("exit code"), report)
}

/// The findings of `kind` in a report.
fn findings<'a>(report: &'a Value, kind: &str) -> Vec<&'a Value> {
    report["findings"]
        .as_array()
        .expect("findings")
        .iter()
        .filter(|f| f["kind"] == kind)
        .collect()
}

/// The one finding of `kind` about `backing`.
#[track_caller]
fn finding<'a>(report: &'a Value, kind: &str, backing: &Path) -> &'a Value {
    let matching: Vec<_> = findings(report, kind)
        .into_iter()
        .filter(|f| f["backing_path"] == path_str(backing))
        .collect();
    assert_eq!(
        matching.len(),
        1,
        "one {kind} finding about {}: {report:#}",
        backing.display()
    );
    matching[0]
}

fn kinds(report: &Value) -> BTreeSet<String> {
    report["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["kind"].as_str().unwrap().to_string())
        .collect()
}

/// The volume's name cipher, from the real key (the test plants entries with names that
/// decrypt).
fn names(env: &TestEnv) -> NameCipher {
    let volume = xtsfs::volume::unlock(&env.backing(), &env.key_context(), None).unwrap();
    NameCipher::Encrypted(volume.dek.names_key())
}

fn encrypted(names: &NameCipher, name: &str) -> String {
    match names.encrypt_name(OsStr::new(name)).unwrap() {
        BackingName::Direct(name) => name.into_string().unwrap(),
        BackingName::Long { .. } => panic!("a short name"),
    }
}

/// A tree with a bit of everything, written through the mount.
fn populate(m: &Mounted<'_>) {
    fs::create_dir_all(m.path("docs/deep/er")).unwrap();
    fs::write(m.path("empty"), b"").unwrap();
    fs::write(m.path("one"), b"1").unwrap();
    fs::write(m.path("docs/unit"), vec![7u8; 4096]).unwrap();
    fs::write(m.path("docs/deep/er/big"), pseudo_random_bytes(1, 300_000)).unwrap();
    fs::write(m.path(&long('a')), b"a long name").unwrap();
    fs::create_dir(m.path(&format!("docs/{}", long('d')))).unwrap();
    fs::write(m.path(&format!("docs/{}/inside", long('d'))), b"in").unwrap();
    symlink("docs/unit", m.path("link")).unwrap();
    symlink(long('t'), m.path("docs/long-target")).unwrap();
    fs::hard_link(m.path("one"), m.path("docs/one-again")).unwrap();
    common::sys::mkfifo(&m.path("fifo"), 0o600).unwrap();
}

#[test]
fn a_clean_volume_reports_clean() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    populate(&m);
    // A sparse file: its holes are legitimate, a warning only with --contents.
    let sparse = File::create(m.path("sparse")).unwrap();
    sparse.write_all_at(b"end", 3 * 4096).unwrap();
    drop(sparse);
    let sparse_backing = m.backing_path("sparse");
    m.unmount_settled();

    let output = fsck(&env, &[]);
    assert_exit(&output, 0);
    let text = stdout(&output);
    assert!(
        text.contains("\nclean: 0 problems, 0 warnings, 0 notes"),
        "{text}"
    );
    assert!(
        text.contains("checked 7 files"),
        "hard links count once: {text}"
    );
    assert!(text.contains("header MAC verified"), "{text}");
    assert!(
        stderr(&output).is_empty(),
        "no progress bar when stderr is not a terminal: {}",
        stderr(&output)
    );

    let (code, report) = fsck_json(&env, &[]);
    assert_eq!(code, 0);
    assert_eq!(report["problems"], 0);
    assert_eq!(report["findings"], serde_json::json!([]));
    assert_eq!(report["files"], 7);
    assert_eq!(report["symlinks"], 2);
    assert_eq!(report["special"], 1);
    assert_eq!(report["directories"], 5);
    assert_eq!(report["format_version"], 2);
    assert_eq!(report["exit_code"], 0);

    // --contents decrypts everything; the sparse file's three holes are a warning, which
    // does not change the exit code.
    let (code, report) = fsck_json(&env, &["--contents"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(kinds(&report), BTreeSet::from(["zero-units".to_string()]));
    let zero = finding(&report, "zero-units", &sparse_backing);
    assert_eq!(zero["severity"], "warning");
    assert_eq!(zero["plaintext_path"], "/sparse");
    assert!(
        zero["detail"]
            .as_str()
            .unwrap()
            .contains("3 of its 4 4 KiB units"),
        "{zero}"
    );
    assert_eq!(report["bytes"], 1 + 4096 + 300_000 + 11 + 2 + 3 * 4096 + 3);

    // The repair of a clean volume does nothing.
    let (code, report) = fsck_json(&env, &["--repair"]);
    assert_eq!(code, 0);
    assert_eq!(report["repaired"], 0);
    assert!(!env.backing().join("lost+found").exists());
}

/// Every kind of damage fsck reports, planted in one volume: what fsck says about each,
/// what --repair does, and what is left.
#[test]
fn finds_every_kind_of_damage_and_repairs_what_it_promises() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    populate(&m);
    for name in [
        "bad-header",
        "bad-length",
        "lost-header",
        "zeroed",
        "wrong-format",
    ] {
        fs::write(
            m.path(&format!("docs/{name}")),
            pseudo_random_bytes(2, 3 * 4096),
        )
        .unwrap();
    }
    for tag in ['m', 's', 'o'] {
        fs::write(m.path(&format!("docs/{}", long(tag))), b"long").unwrap();
    }
    let back = |name: &str| m.backing_path(name);
    let bad_header = back("docs/bad-header");
    let bad_length = back("docs/bad-length");
    let lost_header = back("docs/lost-header");
    let zeroed = back("docs/zeroed");
    let wrong_format = back("docs/wrong-format");
    let missing_side = back(&format!("docs/{}", long('m')));
    let swapped_side = back(&format!("docs/{}", long('s')));
    let orphaned = back(&format!("docs/{}", long('o')));
    let docs = back("docs");
    m.unmount_settled();
    let backing = env.backing();
    let tree = backing.join("tree");
    let names = names(&env);
    let side = |entry: &Path| PathBuf::from(format!("{}.name", entry.display()));

    // Names: one that does not decrypt (a file), a directory whose name does not decrypt
    // (with files in it), a symlink with a decryptable name and a target that is not.
    let undecryptable = docs.join("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA");
    fs::write(&undecryptable, b"someone's bytes").unwrap();
    let bad_dir = tree.join("BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB");
    fs::create_dir(&bad_dir).unwrap();
    fs::write(bad_dir.join("CCCCCCCCCCCCCCCCCCCCCCCCCCC"), b"x").unwrap();
    let bad_symlink = docs.join(encrypted(&names, "bad-symlink"));
    symlink("not-an-encrypted-target", &bad_symlink).unwrap();
    // Long names: a side file removed, one swapped for another's (wrong hash), one that
    // hashes right but does not decrypt, and an entry removed (an orphan side file).
    fs::remove_file(side(&missing_side)).unwrap();
    fs::copy(side(&orphaned), side(&swapped_side)).unwrap();
    let garbage = b"Z".repeat(300);
    let undecryptable_long = docs.join(format!("xtsfs.long.{}", base64_url(&sha256(&garbage))));
    fs::write(&undecryptable_long, b"content").unwrap();
    fs::write(side(&undecryptable_long), &garbage).unwrap();
    fs::remove_file(&orphaned).unwrap();
    let orphan_side = side(&orphaned);
    // Files: a damaged magic, an impossible length, a lost header (a legal crash
    // state), a zeroed unit, a format 1 file in a format 2 volume.
    write_at(&bad_header, 0, b"XXXX");
    OpenOptions::new()
        .write(true)
        .open(&bad_length)
        .unwrap()
        .set_len(4096 + 5)
        .unwrap();
    write_at(&lost_header, 0, &[0; 32]);
    write_at(&zeroed, 4096 + 4096, &[0; 4096]);
    let v1 = FileHeader::generate(FileFormat::V1).unwrap();
    fs::write(&wrong_format, v1.encode()).unwrap();
    // The backing root: something unknown, a leftover temporary file.
    fs::write(backing.join("stray.txt"), b"?").unwrap();
    fs::write(backing.join("xtsfs.upgrade.tmp"), b"").unwrap();

    let (code, report) = fsck_json(&env, &["--contents"]);
    assert_eq!(code, EXIT_PROBLEMS, "{report:#}");
    let expect = |kind: &str, path: &Path, severity: &str, plaintext: Option<&str>| {
        let f = finding(&report, kind, path);
        assert_eq!(f["severity"], severity, "{f}");
        match plaintext {
            Some(p) => assert_eq!(f["plaintext_path"], p, "{f}"),
            None => assert_eq!(f["plaintext_path"], Value::Null, "{f}"),
        }
        assert!(!f["detail"].as_str().unwrap().is_empty());
        f.clone()
    };
    let f = expect("undecryptable-name", &undecryptable, "problem", None);
    assert_eq!(f["plaintext_dir"], "/docs", "its directory is known: {f}");
    expect("undecryptable-name", &bad_dir, "problem", None);
    expect(
        "undecryptable-symlink",
        &bad_symlink,
        "problem",
        Some("/docs/bad-symlink"),
    );
    expect("missing-side-file", &missing_side, "problem", None);
    let f = expect("bad-side-file", &swapped_side, "problem", None);
    assert!(f["detail"].as_str().unwrap().contains("hash"), "{f}");
    let f = expect("bad-side-file", &undecryptable_long, "problem", None);
    assert!(f["detail"].as_str().unwrap().contains("decrypt"), "{f}");
    expect("orphan-side-file", &orphan_side, "problem", None);
    let f = expect(
        "bad-file-header",
        &bad_header,
        "problem",
        Some("/docs/bad-header"),
    );
    assert!(f["detail"].as_str().unwrap().contains("magic"), "{f}");
    expect(
        "bad-file-length",
        &bad_length,
        "problem",
        Some("/docs/bad-length"),
    );
    expect(
        "lost-file-header",
        &lost_header,
        "note",
        Some("/docs/lost-header"),
    );
    let f = expect("zero-units", &zeroed, "warning", Some("/docs/zeroed"));
    assert!(f["detail"].as_str().unwrap().contains("(units 1)"), "{f}");
    expect(
        "wrong-file-format",
        &wrong_format,
        "problem",
        Some("/docs/wrong-format"),
    );
    expect(
        "unknown-root-entry",
        &backing.join("stray.txt"),
        "problem",
        None,
    );
    expect(
        "leftover-temp-file",
        &backing.join("xtsfs.upgrade.tmp"),
        "note",
        None,
    );
    assert_eq!(report["problems"], 11, "{report:#}");
    assert_eq!(report["warnings"], 1);
    assert_eq!(report["notes"], 2);
    assert_eq!(report["problems_left"], 11);
    // Nothing in the directory whose name does not decrypt was looked at.
    assert!(!report.to_string().contains("CCCCCCCC"));

    // The text report: one line per finding, with the kind, the backing path and the
    // plaintext path.
    let output = fsck(&env, &[]);
    assert_exit(&output, EXIT_PROBLEMS);
    let text = stdout(&output);
    let line = format!(
        "problem: bad-file-header: {} = /docs/bad-header: ",
        bad_header.display()
    );
    assert!(text.contains(&line), "{text}");
    let line = format!(
        "problem: undecryptable-name: {} in /docs: ",
        undecryptable.display()
    );
    assert!(text.contains(&line), "{text}");
    assert!(text.contains("PROBLEMS FOUND: 11 problems"), "{text}");
    // Without --contents no file is decrypted: no zero-units warning.
    assert!(!text.contains("zero-units"), "{text}");

    // --repair: the orphan side file is removed, the entries the mount cannot show go to
    // lost+found with their bytes, and every action is printed.
    let before = fs::read(&undecryptable).unwrap();
    let output = fsck(&env, &["--repair"]);
    assert_exit(&output, EXIT_PROBLEMS_LEFT);
    let text = stdout(&output);
    let lost_found = backing.join("lost+found");
    assert!(!orphan_side.exists());
    assert!(text.contains(&format!("repaired: {}: removed", orphan_side.display())));
    for moved in [
        &undecryptable,
        &bad_dir,
        &bad_symlink,
        &missing_side,
        &swapped_side,
        &undecryptable_long,
    ] {
        let name = moved.file_name().unwrap();
        assert!(!moved.exists(), "{} moved away", moved.display());
        assert!(
            fs::symlink_metadata(lost_found.join(name)).is_ok(),
            "{} in lost+found",
            moved.display()
        );
        let line = format!(
            "repaired: {}: moved to {}",
            moved.display(),
            lost_found.join(name).display()
        );
        assert!(text.contains(&line), "{line}\n{text}");
    }
    assert_eq!(
        fs::read(lost_found.join(undecryptable.file_name().unwrap())).unwrap(),
        before
    );
    assert!(lost_found
        .join("BBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBBB/CCCCCCCCCCCCCCCCCCCCCCCCCCC")
        .exists());
    // A long name with a bad side file takes it along.
    let swapped_name = swapped_side.file_name().unwrap().to_str().unwrap();
    assert!(lost_found.join(format!("{swapped_name}.name")).exists());
    assert!(!side(&swapped_side).exists());
    assert!(text.contains("PROBLEMS LEFT after repair"), "{text}");
    assert!(text.contains("; 7 repaired, 4 problems left"), "{text}");

    // What is left: what repair does not touch (files whose name decrypts stay visible
    // through the mount, and the unknown root entry).
    let (code, report) = fsck_json(&env, &[]);
    assert_eq!(code, EXIT_PROBLEMS, "{report:#}");
    assert_eq!(
        kinds(&report),
        [
            "bad-file-header",
            "bad-file-length",
            "wrong-file-format",
            "unknown-root-entry",
            "lost-file-header",
            "leftover-temp-file",
            "lost-found",
        ]
        .into_iter()
        .map(String::from)
        .collect()
    );

    // A second repair never overwrites what lost+found holds.
    fs::write(&undecryptable, b"again").unwrap();
    let (code, report) = fsck_json(&env, &["--repair"]);
    assert_eq!(code, EXIT_PROBLEMS_LEFT);
    let renamed = lost_found.join(format!(
        "{}.1",
        undecryptable.file_name().unwrap().to_str().unwrap()
    ));
    assert_eq!(fs::read(&renamed).unwrap(), b"again");
    assert_eq!(
        fs::read(lost_found.join(undecryptable.file_name().unwrap())).unwrap(),
        before
    );
    let f = finding(&report, "undecryptable-name", &undecryptable);
    assert_eq!(
        f["repaired"],
        format!("moved to {}", renamed.display()),
        "{f}"
    );

    // The user deals with the rest; the volume is clean, and mounts with every good file.
    for path in [&bad_header, &bad_length, &wrong_format] {
        fs::remove_file(path).unwrap();
    }
    fs::remove_file(backing.join("stray.txt")).unwrap();
    let (code, report) = fsck_json(&env, &[]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["problems"], 0);
    let output = fsck(&env, &[]);
    assert!(stdout(&output).contains("\nclean: 0 problems"));
    m.mount(&[]);
    assert_eq!(fs::read(m.path(&long('a'))).unwrap(), b"a long name");
    assert_eq!(
        fs::read(m.path("docs/lost-header")).unwrap(),
        vec![0; 3 * 4096]
    );
    assert_eq!(
        fs::read(m.path("docs/deep/er/big")).unwrap(),
        pseudo_random_bytes(1, 300_000)
    );
    m.unmount_settled();
}

#[test]
fn format_1_volumes_and_interrupted_upgrades() {
    let env = TestEnv::new();
    let mut m = env.mounted(&["--format", "1"]);
    populate(&m);
    m.unmount_settled();
    let (code, report) = fsck_json(&env, &["--contents"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["format_version"], 1);
    assert_eq!(report["findings"], serde_json::json!([]));

    // A format 2 file in a format 1 volume is what an interrupted upgrade leaves: a
    // note. A format 1 file whose header is zero is damage (format 1 has no lost
    // headers).
    let volume = xtsfs::volume::unlock(&env.backing(), &env.key_context(), None).unwrap();
    let names = NameCipher::Encrypted(volume.dek.names_key());
    let upgraded = env
        .backing()
        .join("tree")
        .join(encrypted(&names, "upgraded"));
    let header = FileHeader::generate(FileFormat::V2).unwrap();
    let file = File::create(&upgraded).unwrap();
    file.write_all_at(&header.encode(), 0).unwrap();
    let cipher = volume.dek.file_cipher(&header.nonce);
    let contents = Contents {
        file: &file,
        cipher: &cipher,
        format: FileFormat::V2,
    };
    contents.write(0, b"format two", 0).unwrap();
    drop(file);
    let zeroed = env.backing().join("tree").join(encrypted(&names, "zeroed"));
    fs::write(&zeroed, [0u8; 100]).unwrap();

    let (code, report) = fsck_json(&env, &["--contents"]);
    assert_eq!(code, EXIT_PROBLEMS, "{report:#}");
    assert_eq!(
        kinds(&report),
        ["bad-file-header", "interrupted-upgrade"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    let f = finding(&report, "bad-file-header", &zeroed);
    assert_eq!(f["plaintext_path"], "/zeroed");
    let note = &findings(&report, "interrupted-upgrade")[0];
    assert!(note["detail"]
        .as_str()
        .unwrap()
        .starts_with("1 format 2 files"));

    m.mount(&[]);
    assert_eq!(fs::read(m.path("upgraded")).unwrap(), b"format two");
    m.unmount_settled();
}

#[test]
fn a_mounted_volume_is_refused_unless_forced() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    populate(&m);
    let output = fsck(&env, &[]);
    assert_error(&output, 5);
    assert!(
        stderr(&output).contains("is mounted"),
        "{}",
        stderr(&output)
    );
    assert!(stderr(&output).contains("--force"), "{}", stderr(&output));

    let (code, report) = fsck_json(&env, &["--force"]);
    assert_eq!(code, 0, "{report:#}");
    assert_eq!(report["mounted"], true);
    assert_eq!(
        kinds(&report),
        BTreeSet::from(["checked-while-mounted".to_string()])
    );
    assert_eq!(report["files"], 6);

    // Never a repair under a running daemon.
    let output = fsck(&env, &["--force", "--repair"]);
    assert_error(&output, 5);
    assert!(stderr(&output).contains("--repair never runs on a mounted volume"));
    m.unmount_settled();
    assert_exit(&fsck(&env, &[]), 0);
}

#[test]
fn errors_opening_the_volume_keep_their_exit_codes() {
    let env = TestEnv::new();
    // Not a volume: 4.
    fs::create_dir_all(env.backing()).unwrap();
    assert_error(&fsck(&env, &[]), 4);
    fs::remove_dir(env.backing()).unwrap();
    assert_success(&env.xtsfs(&["init", path_str(&env.backing())]), "init");
    // A wrong key: 3.
    let output = fsck(&env, &["--key", "mmk:other"]);
    assert_error(&output, 3);
    // A header edited after its MAC: 4.
    let header = env.backing().join("xtsfs.header");
    let mut bytes = fs::read(&header).unwrap();
    let at = bytes.windows(10).position(|w| w == b"created_at").unwrap() + 14;
    bytes[at] ^= 1; // a digit of the year
    fs::write(&header, &bytes).unwrap();
    let output = fsck(&env, &[]);
    assert_error(&output, 4);
    assert!(stderr(&output).contains("MAC"), "{}", stderr(&output));
    // A bad command line: 2 (clap reports it).
    assert_exit(&fsck(&env, &["--no-such-flag"]), 2);
}

#[test]
fn help_documents_the_limits_and_the_exit_codes() {
    let env = TestEnv::new();
    let output = env.xtsfs(&["fsck", "--help"]);
    assert_exit(&output, 0);
    let help = stdout(&output);
    for needle in [
        "XTS has no integrity",
        "cannot detect",
        "--repair",
        "lost+found",
        "--contents",
        "--json",
        "--force",
        "0 clean",
        "10 problems found",
        "11 problems left after --repair",
        "3 key error",
        "4 volume error",
    ] {
        assert!(help.contains(needle), "help mentions {needle:?}:\n{help}");
    }
}

/// On a terminal (a pty from script(1)) a progress bar shows on stderr; elsewhere none
/// (a_clean_volume_reports_clean).
#[test]
fn a_progress_bar_shows_on_a_terminal() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    populate(&m);
    m.unmount_settled();
    let command = format!(
        "{} fsck {}",
        env!("CARGO_BIN_EXE_xtsfs"),
        path_str(&env.backing())
    );
    let output = std::process::Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env("XTSFS_PLATFORM_KEY_DIR", env.platform_key_dir())
        .env("XTSFS_RUN_DIR", env.path("run"))
        .output()
        .expect("run script(1)");
    assert_exit(&output, 0);
    let screen = stdout(&output);
    assert!(screen.contains("files 0/7"), "{screen}");
    assert!(screen.contains("ETA"), "{screen}");
    assert!(screen.contains("clean: 0 problems"), "{screen}");
}

/// A large volume, written directly with the library (FUSE would take minutes), checked
/// by the real binary. Prints fsck's rate.
#[test]
fn many_files() {
    let count: usize = std::env::var("XTSFS_FSCK_FILES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(100_000);
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    fs::write(m.path("through-the-mount"), b"hello").unwrap();
    m.unmount_settled();
    let volume = xtsfs::volume::unlock(&env.backing(), &env.key_context(), None).unwrap();
    let names = NameCipher::Encrypted(volume.dek.names_key());
    let tree = env.backing().join("tree");

    let started = Instant::now();
    let per_dir = 1000;
    let dirs = count.div_ceil(per_dir);
    let threads = 4;
    // Every tenth file is empty without a header, every tenth has data, the rest have a
    // header and no data (what fsck reads of a file is the same: its header and length).
    let bytes: u64 = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let (names, volume, tree) = (&names, &volume, &tree);
                s.spawn(move || {
                    let mut bytes = 0;
                    for d in (t..dirs).step_by(threads) {
                        let dir = tree.join(encrypted(names, &format!("dir{d:03}")));
                        fs::create_dir(&dir).unwrap();
                        for i in d * per_dir..count.min((d + 1) * per_dir) {
                            let path = dir.join(encrypted(names, &format!("file{i:06}")));
                            bytes += write_file(&path, volume, i);
                        }
                    }
                    bytes
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).sum()
    });
    eprintln!(
        "many_files: {count} files written with the library in {:.1?}",
        started.elapsed()
    );

    let started = Instant::now();
    let (code, report) = fsck_json(&env, &[]);
    let wall = started.elapsed();
    assert_eq!(code, 0, "{}", report["findings"]);
    assert_eq!(report["files"], count as u64 + 1);
    assert_eq!(report["bytes"], bytes + 5);
    println!(
        "many_files: fsck checked {} files in {:.2} s ({} files/s; {:.2?} wall with the \
         process and key unwrap)",
        report["files"], report["elapsed"], report["files_per_second"], wall
    );
    eprintln!(
        "many_files: fsck checked {} files in {:.2} s ({} files/s)",
        report["files"], report["elapsed"], report["files_per_second"]
    );

    // The mount reads what the library wrote.
    m.mount(&[]);
    let name = format!("dir{:03}/file{:06}", 0, 9);
    assert_eq!(fs::read(m.path(&name)).unwrap(), b"file 9\n");
    assert_eq!(fs::read(m.path("dir000/file000001")).unwrap(), b"");
    m.unmount_settled();
}

/// Backing file number `i` of `many_files`, written with the library; its plaintext
/// length.
fn write_file(path: &Path, volume: &xtsfs::volume::UnlockedVolume, i: usize) -> u64 {
    let file = File::create(path).unwrap();
    if i.is_multiple_of(10) {
        return 0;
    }
    let header = FileHeader::generate(FileFormat::V2).unwrap();
    file.write_all_at(&header.encode()[..32], 0).unwrap();
    file.set_len(FileFormat::V2.backing_len(0)).unwrap();
    if i % 10 != 9 {
        return 0;
    }
    let cipher = volume.dek.file_cipher(&header.nonce);
    let data = format!("file {i}\n");
    Contents {
        file: &file,
        cipher: &cipher,
        format: FileFormat::V2,
    }
    .write(0, data.as_bytes(), 0)
    .unwrap();
    data.len() as u64
}

fn write_at(path: &Path, offset: u64, bytes: &[u8]) {
    OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .write_all_at(bytes, offset)
        .unwrap();
}

fn sha256(bytes: &[u8]) -> Vec<u8> {
    use sha2::{Digest, Sha256};
    Sha256::digest(bytes).to_vec()
}

/// base64url without padding, as xtsfs writes hashed names.
fn base64_url(bytes: &[u8]) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    let mut out = String::new();
    for chunk in bytes.chunks(3) {
        let n = chunk.iter().fold(0u32, |n, b| n << 8 | u32::from(*b)) << (8 * (3 - chunk.len()));
        for i in 0..=chunk.len() {
            out.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
        }
    }
    out
}

#[test]
fn base64_url_matches_xtsfs_long_names() {
    // The format vector's long name: 200 'x', whose entry is in docs/FORMAT.md.
    let names = NameCipher::Encrypted(
        xtsfs::crypto::secret::SecretBytes::from_slice(&common::unhex(
            "09a2836c7b1d664f0c8e56a70056c1342781dc3edd17b241018c7f80946a48c3\
             d3cf251bdd16ed4e7da2151e8052dfc9d33db4958867abdc20082459d58f233c",
        ))
        .unwrap()
        .into(),
    );
    let BackingName::Long { entry, encoded, .. } =
        names.encrypt_name(OsStr::new(&"x".repeat(200))).unwrap()
    else {
        panic!("a long name");
    };
    assert_eq!(
        entry.as_bytes(),
        format!("xtsfs.long.{}", base64_url(&sha256(&encoded))).as_bytes()
    );
}
