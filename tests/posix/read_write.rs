//! read and write: unaligned offsets, tails, sparse files past 4 GiB.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileExt, MetadataExt, OpenOptionsExt};

use crate::common::mount::Mounted;
use crate::common::sys::read_at;
use crate::common::{Rng, TestEnv, GIB, UNIT};
use crate::{contents, data, same_as_local, AlignedBuf, Bytes};

#[test]
fn reads_and_writes_at_unaligned_offsets_match_a_local_file() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let mut writes: Vec<(u64, u64)> = vec![
        (0, 1),
        (1, 15),
        (15, 2),
        (4095, 1),
        (4095, 2),
        (4096, 4096),
        (8191, 4098),
        (3, 10_000),
        (20_000, 5),
        (12_288, 4096),
        (16_383, 1),
        (40_000, 70_000),
    ];
    let mut rng = Rng(7);
    writes.extend((0..40).map(|_| (rng.below(120_000), 1 + rng.below(9000))));
    let read_offsets = [
        0, 1, 15, 4095, 4096, 4097, 8191, 12_345, 109_999, 110_000, 130_000,
    ];
    let read_lens = [1, 15, 16, 4096, 5000, 70_000];
    same_as_local(&env, &m, |dir| {
        let path = dir.join("file");
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        let mut seen = Vec::new();
        for (i, &(offset, len)) in writes.iter().enumerate() {
            file.write_all_at(&data(i as u64, len), offset).unwrap();
            seen.push(format!("len {}", file.metadata().unwrap().len()));
        }
        for offset in read_offsets {
            for len in read_lens {
                seen.push(format!(
                    "{offset}+{len}: {:?}",
                    Bytes(read_at(&file, offset, len))
                ));
            }
        }
        seen.push(format!("{:?}", contents(&path)));
        seen
    });
    m.remount();
    assert_eq!(contents(&m.path("file")), contents(&env.path("local/file")));
}

#[test]
fn tiny_and_unit_multiple_files_round_trip() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let mut expected = BTreeMap::new();
    let sizes = (1..=17).chain([31, 4095, 4096, 4097, 8191, 8192, 12_288, 65_536]);
    for size in sizes {
        let name = format!("size-{size}");
        let bytes = data(size, size);
        fs::write(m.path(&name), &bytes).unwrap();
        expected.insert(name, bytes);
    }
    // Growing and shrinking moves the short last unit, which is encrypted by its length.
    let grow = |name: &str, extra: &[u8], expected: &mut BTreeMap<String, Vec<u8>>| {
        let mut file = OpenOptions::new().append(true).open(m.path(name)).unwrap();
        file.write_all(extra).unwrap();
        expected.get_mut(name).unwrap().extend_from_slice(extra);
    };
    grow("size-15", b"!", &mut expected);
    grow("size-8192", b"+", &mut expected);
    grow("size-1", b"0123456789abcdefXYZ", &mut expected);
    for (name, len) in [("size-4097", 4096), ("size-17", 15), ("size-12288", 4097)] {
        let file = OpenOptions::new().write(true).open(m.path(name)).unwrap();
        file.set_len(len).unwrap();
        expected.get_mut(name).unwrap().truncate(len as usize);
    }
    let check = |m: &Mounted| {
        for (name, bytes) in &expected {
            assert_eq!(contents(&m.path(name)), Ok(Bytes(bytes.clone())), "{name}");
            assert_eq!(
                fs::metadata(m.path(name)).unwrap().len(),
                bytes.len() as u64
            );
        }
    };
    check(&m);
    m.remount();
    check(&m);
}

#[test]
fn one_byte_last_units_read_back_exactly() {
    let env = TestEnv::new();
    let m = env.mounted(&[]);
    let path = m.path("file");
    let writer = File::create(&path).unwrap();
    // O_DIRECT reads go to the daemon every time, past the page cache.
    let reader = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path)
        .unwrap();
    let mut buf = AlignedBuf::new(UNIT as usize);
    // A 1-byte last unit encrypts to a zero byte for about 1 unit index in 256; that
    // ciphertext must not read back as a hole. 2000 indices miss it with odds below 2^-11.
    for unit in 0..2000 {
        let byte = 1 + (unit % 255) as u8;
        writer.write_all_at(&[byte], unit * UNIT).unwrap();
        let n = reader.read_at(&mut buf, unit * UNIT).unwrap();
        assert_eq!(&buf[..n], [byte], "1-byte last unit {unit}");
    }
}

#[test]
fn sparse_file_beyond_4_gib_reads_back_with_zero_holes() {
    let env = TestEnv::new();
    let mut m = env.mounted(&[]);
    let offset = 5 * GIB + 3 * 1024;
    let payload = data(5, 10_000);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(m.path("big"))
        .unwrap();
    file.write_all_at(&payload, offset).unwrap();
    // A write across the 4 GiB boundary, where 32-bit offsets would wrap.
    file.write_all_at(b"boundary", 4 * GIB - 4).unwrap();
    drop(file);
    let check = |m: &Mounted| {
        let file = File::open(m.path("big")).unwrap();
        assert_eq!(
            file.metadata().unwrap().len(),
            offset + payload.len() as u64
        );
        assert_eq!(read_at(&file, offset, 10_000), payload);
        assert_eq!(read_at(&file, 0, 8192), vec![0; 8192]);
        assert_eq!(read_at(&file, 4 * GIB - 4, 8), b"boundary");
        assert_eq!(read_at(&file, 4 * GIB - 100, 96), vec![0; 96]);
        assert_eq!(read_at(&file, 4 * GIB + 4, 5000), vec![0; 5000]);
        let mut expected = vec![0; 100];
        expected.extend_from_slice(&payload[..100]);
        assert_eq!(read_at(&file, offset - 100, 200), expected);
        assert_eq!(read_at(&file, offset + 9_990, 100), &payload[9_990..]);
        assert!(file.metadata().unwrap().blocks() < 128);
    };
    check(&m);
    m.remount();
    check(&m);
}
