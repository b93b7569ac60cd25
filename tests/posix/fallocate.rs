//! fallocate: every mode, against the local file system.

use std::fs::{self, File, OpenOptions};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::Path;

use crate::common::sys::fallocate;
use crate::common::{TestEnv, MIB, UNIT};
use crate::{assert_errno, contents, data, os, same_as_local, Bytes};

enum Step {
    Fallocate(i32, u64, u64),
    Write(u64, u64),
    Truncate(u64),
}

/// Applies `steps` to a file that starts with `initial` bytes; what each step returned
/// and the file's length and contents after it.
fn fallocate_steps(dir: &Path, initial: u64, steps: &[Step]) -> Vec<String> {
    let path = dir.join("file");
    fs::write(&path, data(1, initial)).unwrap();
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut seen = Vec::new();
    for (i, step) in steps.iter().enumerate() {
        let result = match *step {
            Step::Fallocate(mode, offset, len) => os(fallocate(&file, mode, offset, len)),
            Step::Write(offset, len) => os(file.write_all_at(&data(100 + i as u64, len), offset)),
            Step::Truncate(len) => os(file.set_len(len)),
        };
        seen.push(format!(
            "step {i}: {result:?} len {} {:?}",
            file.metadata().unwrap().len(),
            contents(&path)
        ));
    }
    seen
}

#[test]
fn fallocate_mode_zero_extends_and_keeps_contents() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    use Step::*;
    same_as_local(&env, &m, |dir| {
        let mut seen = fallocate_steps(
            dir,
            10_000,
            &[
                Fallocate(0, 0, 100),
                Fallocate(0, 5000, 20_000),
                Fallocate(0, 30_000, 1),
                Write(29_000, 5000),
                Fallocate(0, 4095, 2),
                // Growing to a last unit shorter than an AES block.
                Fallocate(0, 10 * UNIT, 3),
                Write(10 * UNIT + 1, 1),
            ],
        );
        // Preallocation really allocates.
        let empty = File::create(dir.join("empty")).unwrap();
        fallocate(&empty, 0, 0, MIB).unwrap();
        let meta = empty.metadata().unwrap();
        seen.push(format!(
            "empty: len {} dense {} {:?}",
            meta.len(),
            meta.blocks() >= 2048,
            contents(&dir.join("empty"))
        ));
        seen
    });
}

#[test]
fn fallocate_keep_size_keeps_size_and_contents() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    use Step::*;
    let k = libc::FALLOC_FL_KEEP_SIZE;
    same_as_local(&env, &m, |dir| {
        fallocate_steps(
            dir,
            10_000,
            &[
                Fallocate(k, 8000, 100_000),
                Fallocate(k, 0, 4096),
                // Extending over the preallocated range reads zeros up to the new data.
                Write(50_000, 100),
                Fallocate(k, 50_050, 3),
            ],
        )
    });
}

#[test]
fn fallocate_punch_hole_zeroes_exactly_the_range() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    use Step::*;
    let punch = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    same_as_local(&env, &m, |dir| {
        fallocate_steps(
            dir,
            5 * UNIT + 100,
            &[
                Fallocate(punch, 100, 50),
                Fallocate(punch, 4000, 200),
                Fallocate(punch, 2 * UNIT, UNIT),
                Fallocate(punch, 3 * UNIT - 7, UNIT + 9),
                Fallocate(punch, 5 * UNIT + 90, 10),
                Fallocate(punch, 5 * UNIT + 50, 10_000),
                Fallocate(punch, 1, 0),
                // Hole punching must keep the size.
                Fallocate(libc::FALLOC_FL_PUNCH_HOLE, 0, 10),
                Write(3, 5),
                // A last unit shorter than an AES block, punched to the end of the file.
                Truncate(6 * UNIT + 7),
                Write(6 * UNIT, 7),
                Fallocate(punch, 6 * UNIT + 2, 100),
                Write(6 * UNIT + 1, 3),
                Fallocate(punch, 5 * UNIT, UNIT + 7),
            ],
        )
    });

    // Whole punched units free their backing blocks.
    let path = m.path("dense");
    fs::write(&path, data(2, 2 * MIB)).unwrap();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    let before = file.metadata().unwrap().blocks();
    fallocate(&file, punch, MIB / 2, MIB).unwrap();
    let after = file.metadata().unwrap().blocks();
    assert!(after + 1800 <= before, "blocks {before} -> {after}");
}

#[test]
fn fallocate_zero_range_zeroes_and_may_extend() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    use Step::*;
    let zero = libc::FALLOC_FL_ZERO_RANGE;
    let keep = libc::FALLOC_FL_KEEP_SIZE;
    same_as_local(&env, &m, |dir| {
        fallocate_steps(
            dir,
            5 * UNIT + 100,
            &[
                Fallocate(zero, 100, 50),
                Fallocate(zero, 4000, 5000),
                Fallocate(zero, 2 * UNIT, 2 * UNIT),
                Fallocate(zero, 5 * UNIT + 50, 200),
                Fallocate(zero | keep, 5 * UNIT + 100, 5000),
                Write(5 * UNIT + 140, 10),
                // A last unit shorter than an AES block, zeroed to the end and extended.
                Truncate(6 * UNIT + 3),
                Write(6 * UNIT, 3),
                Fallocate(zero, 6 * UNIT + 1, 2),
                Fallocate(zero, 6 * UNIT + 3, 5),
                Write(6 * UNIT + 7, 1),
            ],
        )
    });
}

#[test]
fn fallocate_collapse_and_insert_range_are_not_supported() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let path = m.path("file");
    let original = data(1, 8 * UNIT);
    fs::write(&path, &original).unwrap();
    let file = OpenOptions::new().write(true).open(&path).unwrap();
    for mode in [libc::FALLOC_FL_COLLAPSE_RANGE, libc::FALLOC_FL_INSERT_RANGE] {
        assert_errno(fallocate(&file, mode, UNIT, UNIT), libc::EOPNOTSUPP);
    }
    assert_eq!(contents(&path), Ok(Bytes(original)));
}
