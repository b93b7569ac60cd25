//! Concurrent writers.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::thread;

use crate::common::mount::Mounted;
use crate::common::{Rng, TestEnv, MIB, UNIT};
use crate::{contents, data, Bytes};

/// The unaligned small writes one thread makes within `region` of the shared file.
fn small_writes(seed: u64, region: (u64, u64)) -> Vec<(u64, Vec<u8>)> {
    let mut rng = Rng(seed);
    (0..300)
        .map(|i| {
            let len = 1 + rng.below(700);
            let offset = region.0 + rng.below(region.1 - len);
            (offset, data(seed * 1000 + i, len))
        })
        .collect()
}

#[test]
fn concurrent_writers_on_separate_files_and_regions_of_one_file() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    const ALIGNED_UNITS: u64 = 256;
    let regions = [(MIB + 1000, 96 * 1024), (MIB + 200 * 1024 + 7, 96 * 1024)];
    let own_file = |t: u64| data(50 + t, 384 * 1024);
    let shared = m.path("shared");
    File::create(&shared).unwrap();
    thread::scope(|s| {
        for t in 0..4 {
            let path = m.path(&format!("own-{t}"));
            s.spawn(move || {
                let bytes = own_file(t);
                let mut file = File::create(path).unwrap();
                let mut rng = Rng(t);
                let mut at = 0;
                while at < bytes.len() {
                    let end = bytes.len().min(at + 1 + rng.below(20_000) as usize);
                    file.write_all(&bytes[at..end]).unwrap();
                    at = end;
                }
            });
        }
        for t in 0..4 {
            let file = OpenOptions::new().write(true).open(&shared).unwrap();
            s.spawn(move || {
                for unit in (t..ALIGNED_UNITS).step_by(4) {
                    file.write_all_at(&data(unit, UNIT), unit * UNIT).unwrap();
                }
            });
        }
        for (t, region) in regions.into_iter().enumerate() {
            let file = OpenOptions::new().write(true).open(&shared).unwrap();
            s.spawn(move || {
                for (offset, bytes) in small_writes(t as u64 + 1, region) {
                    file.write_all_at(&bytes, offset).unwrap();
                }
            });
        }
    });

    let mut expected: Vec<u8> = (0..ALIGNED_UNITS).flat_map(|u| data(u, UNIT)).collect();
    for (t, region) in regions.into_iter().enumerate() {
        for (offset, bytes) in small_writes(t as u64 + 1, region) {
            let end = offset as usize + bytes.len();
            if expected.len() < end {
                expected.resize(end, 0);
            }
            expected[offset as usize..end].copy_from_slice(&bytes);
        }
    }
    let check = |m: &Mounted| {
        for t in 0..4 {
            let own = contents(&m.path(&format!("own-{t}")));
            assert_eq!(own, Ok(Bytes(own_file(t))), "own-{t}");
        }
        assert_eq!(contents(&m.path("shared")), Ok(Bytes(expected.clone())));
    };
    check(&m);
    m.remount();
    check(&m);
}
