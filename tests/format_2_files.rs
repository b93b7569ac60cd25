//! Format 2 files through a mount, seen from the backing directory.
//!
//! Damaged backing files: each gives EIO and one log line that names the backing file,
//! never a panic and never a wrong byte; the rest of the volume goes on working. The one
//! state that is not damage: a file whose header a crash lost before it was ever synced
//! reads as zeros. And what the format promises about ciphertext: a rewrite from scratch
//! shares nothing with the version before it, and an append leaves every earlier block as
//! it was.

mod common;

use std::fs::{self, OpenOptions};
use std::os::unix::fs::FileExt;
use std::path::Path;

use common::mount::Mounted;
use common::{path_str, TestEnv};

const DATA: u64 = 4096;

/// Writes `name` through the mount, unmounts, damages its backing file with `damage`,
/// mounts again with a log file and opens and reads it; returns the read's error and the
/// log lines that name the backing file.
fn damaged_read(
    m: &mut Mounted<'_>,
    log: &Path,
    name: &str,
    contents: &[u8],
    damage: impl FnOnce(&fs::File),
) -> (Option<i32>, Vec<String>) {
    fs::write(m.path(name), contents).unwrap();
    let backing = m.backing_path(name);
    m.unmount_settled();
    damage(&OpenOptions::new().write(true).open(&backing).unwrap());
    let _ = fs::remove_file(log);
    m.mount(&["--log-file", path_str(log)]);
    let error = fs::read(m.path(name))
        .err()
        .map(|e| e.raw_os_error().unwrap());
    // The rest of the volume still works.
    fs::write(m.path("other"), b"fine").unwrap();
    assert_eq!(fs::read(m.path("other")).unwrap(), b"fine");
    m.unmount_settled();
    let lines = fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(path_str(&backing)))
        .map(str::to_string)
        .collect();
    m.mount(&[]);
    (error, lines)
}

fn assert_eio_with_one_line(outcome: (Option<i32>, Vec<String>), what: &str, says: &str) {
    let (error, lines) = outcome;
    assert_eq!(error, Some(libc::EIO), "{what}: read gives EIO");
    assert_eq!(
        lines.len(),
        1,
        "{what}: one log line names the file: {lines:?}"
    );
    assert!(
        lines[0].contains(says),
        "{what}: the line says '{says}': {}",
        lines[0]
    );
}

#[test]
fn damaged_format_2_files_give_eio_and_name_the_backing_file() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let log = env.path("daemon.log");
    let data = vec![0x42u8; 5000];

    // Lengths no plaintext length gives: inside the header page, and a marker with no
    // block before it.
    for (name, backing_len) in [("short", 100u64), ("marker", DATA + 5)] {
        let outcome = damaged_read(&mut m, &log, name, &data, |f| {
            f.set_len(backing_len).unwrap()
        });
        assert_eio_with_one_line(outcome, name, "no length of a format 2 file");
    }
    let outcome = damaged_read(&mut m, &log, "version", &data, |f| {
        f.write_all_at(&9u16.to_le_bytes(), 4).unwrap()
    });
    assert_eio_with_one_line(outcome, "unknown version", "version 9 is not supported");
    let outcome = damaged_read(&mut m, &log, "magic", &data, |f| {
        f.write_all_at(b"NOPE", 0).unwrap()
    });
    assert_eio_with_one_line(outcome, "bad magic", "magic is wrong");
    let outcome = damaged_read(&mut m, &log, "generation", &data, |f| {
        f.write_all_at(&7u32.to_le_bytes(), 8).unwrap()
    });
    assert_eio_with_one_line(outcome, "key generation", "key generation 7");
}

#[test]
fn a_format_1_file_in_a_format_2_volume_gives_eio() {
    let env = TestEnv::new();
    let v1 = TestEnv::new();
    let mut old = v1.mounted(&["--format", "1"]);
    fs::write(old.path("f"), b"format one").unwrap();
    let v1_file = fs::read(old.backing_path("f")).unwrap();
    assert_eq!(&v1_file[4..6], &1u16.to_le_bytes(), "written as format 1");
    old.unmount_settled();

    let mut m = env.mounted(&[]);
    let log = env.path("daemon.log");
    let outcome = damaged_read(&mut m, &log, "f", b"format two", |f| {
        f.set_len(0).unwrap();
        f.write_all_at(&v1_file, 0).unwrap();
    });
    assert_eio_with_one_line(
        outcome,
        "format 1 file",
        "a format 1 file in a format 2 volume",
    );
}

/// A crash can keep a new file's length but not its header (neither was synced): such a
/// file reads as zeros of that length, and the next write starts it over.
#[test]
fn a_file_whose_header_never_reached_the_disk_reads_as_zeros() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let log = env.path("daemon.log");
    let (error, lines) = damaged_read(&mut m, &log, "lost", &[0x77; 5000], |f| {
        f.write_all_at(&[0; 32], 0).unwrap()
    });
    assert_eq!(error, None);
    assert!(lines.is_empty(), "no damage is logged: {lines:?}");
    assert_eq!(fs::read(m.path("lost")).unwrap(), vec![0; 5000]);
    let file = OpenOptions::new().write(true).open(m.path("lost")).unwrap();
    file.write_all_at(b"new", 10).unwrap();
    drop(file);
    let mut expected = vec![0; 5000];
    expected[10..13].copy_from_slice(b"new");
    assert_eq!(fs::read(m.path("lost")).unwrap(), expected);
    m.remount();
    assert_eq!(
        fs::read(m.path("lost")).unwrap(),
        expected,
        "after a remount"
    );
}

fn nonce(backing: &Path) -> Vec<u8> {
    fs::read(backing).unwrap()[16..32].to_vec()
}

/// `echo -n 4711 > pin`, then `echo -n 9034 > pin`: O_TRUNC starts the file over under a
/// fresh nonce, so two backups of the file do not give the XOR of the two PINs.
#[test]
fn a_file_truncated_to_zero_starts_over_under_a_fresh_nonce() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    fs::write(m.path("pin"), b"4711").unwrap();
    let backing = m.backing_path("pin");
    let first = fs::read(&backing).unwrap();
    fs::write(m.path("pin"), b"9034").unwrap();
    let second = fs::read(&backing).unwrap();
    assert_eq!(first.len(), second.len());
    assert_ne!(nonce(&backing), first[16..32], "a new nonce");
    let (c1, c2) = (&first[DATA as usize..], &second[DATA as usize..]);
    let xor: Vec<u8> = c1.iter().zip(c2).map(|(a, b)| a ^ b).collect();
    let plain_xor: Vec<u8> = b"4711".iter().zip(b"9034").map(|(a, b)| a ^ b).collect();
    assert_ne!(
        &xor[..4],
        &plain_xor[..],
        "the ciphertexts' XOR is not the PINs' XOR"
    );
    assert_eq!(fs::read(m.path("pin")).unwrap(), b"9034");
}

/// Redis's AOF: a stream of small appends. Each one leaves every block before the one it
/// starts in as it was on disk, so no acknowledged byte is ever rewritten.
#[test]
fn appends_never_rewrite_earlier_blocks_through_the_mount() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let path = m.path("appendonly.aof");
    let file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .unwrap();
    let backing = m.backing_path("appendonly.aof");
    let mut len = 0usize;
    let mut before = Vec::new();
    for i in 0..200usize {
        let command = format!(
            "*2\r\n$4\r\nINCR\r\n${}\r\n{}\r\n",
            3 + i % 7,
            "k".repeat(3 + i % 7)
        );
        use std::io::Write;
        (&file).write_all(command.as_bytes()).unwrap();
        file.sync_data().unwrap();
        let after = fs::read(&backing).unwrap();
        // Before the first append the file has no header yet.
        let kept = (DATA as usize + len / 16 * 16).min(before.len());
        assert!(
            after[..kept] == before[..kept],
            "append {i} rewrote an earlier block"
        );
        len += command.len();
        before = after;
    }
    assert_eq!(fs::metadata(&path).unwrap().len(), len as u64);
}
