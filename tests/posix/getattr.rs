//! lookup and getattr: sizes, kinds and block counts.

use std::fs::{self, File};
use std::os::unix::fs::{FileExt, MetadataExt};

use crate::common::{TestEnv, GIB, MIB};
use crate::{data, os, same_as_local};

#[test]
fn getattr_reports_the_plaintext_size_and_kind() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    same_as_local(&env, &m, |dir| {
        let mut seen = Vec::new();
        for size in [0, 1, 15, 16, 17, 4095, 4096, 4097, 8192, 100_000] {
            let path = dir.join(format!("file-{size}"));
            fs::write(&path, data(size, size)).unwrap();
            let by_path = fs::metadata(&path).unwrap();
            let by_fd = File::open(&path).unwrap().metadata().unwrap();
            seen.push(format!(
                "{size}: len {} fd len {} same ino {} file {} mode {:o} nlink {}",
                by_path.len(),
                by_fd.len(),
                by_path.ino() == by_fd.ino(),
                by_path.is_file(),
                by_path.mode(),
                by_path.nlink()
            ));
        }
        fs::create_dir(dir.join("dir")).unwrap();
        let meta = fs::metadata(dir.join("dir")).unwrap();
        seen.push(format!(
            "dir: dir {} mode {:o} nlink {}",
            meta.is_dir(),
            meta.mode(),
            meta.nlink()
        ));
        let missing = os(fs::metadata(dir.join("missing")).map(drop));
        let under_file = os(fs::metadata(dir.join("file-1/child")).map(drop));
        seen.push(format!("missing {missing:?} under a file {under_file:?}"));
        seen
    });
}

#[test]
fn st_blocks_counts_written_data_and_not_holes() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let dense = m.path("dense");
    fs::write(&dense, data(1, MIB)).unwrap();
    let blocks = fs::metadata(&dense).unwrap().blocks();
    assert!(blocks >= 2048, "a dense 1 MiB file has {blocks} blocks");

    let sparse = m.path("sparse");
    let file = File::create(&sparse).unwrap();
    file.set_len(5 * GIB).unwrap();
    file.write_all_at(b"end", 5 * GIB - 3).unwrap();
    let meta = fs::metadata(&sparse).unwrap();
    assert_eq!(meta.len(), 5 * GIB);
    assert!(
        meta.blocks() < 64,
        "a sparse 5 GiB file has {} blocks",
        meta.blocks()
    );
}
