//! The contents layer against a plain byte model, in both formats.

use std::fs::File;

use super::*;
use crate::crypto::VolumeKey;
use crate::volume::file_header::FileHeader;
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Write { offset: u64, len: usize, seed: u8 },
    Resize { len: u64 },
    Zero { offset: u64, len: u64 },
}

/// Offsets cluster around unit boundaries and short tails, where the arithmetic is.
fn offset() -> impl Strategy<Value = u64> {
    prop_oneof![
        0..3 * UNIT + 40,
        (0..5u64).prop_flat_map(|u| (u * UNIT).saturating_sub(17)..u * UNIT + 17)
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (offset(), 1..2 * DATA_UNIT + 20, any::<u8>()).prop_map(|(offset, len, seed)| Op::Write { offset, len, seed }),
        1 => offset().prop_map(|len| Op::Resize { len }),
        1 => (offset(), 0..2 * UNIT + 20).prop_map(|(offset, len)| Op::Zero { offset, len }),
    ]
}

fn apply(contents: &Contents<'_, File>, model: &mut Vec<u8>, op: &Op) {
    let len = model.len() as u64;
    match *op {
        Op::Write {
            offset,
            len: n,
            seed,
        } => {
            let data: Vec<u8> = (0..n).map(|i| seed.wrapping_add(i as u8) | 1).collect();
            contents.write(offset, &data, len).unwrap();
            let end = offset as usize + n;
            if model.len() < end {
                model.resize(end, 0);
            }
            model[offset as usize..end].copy_from_slice(&data);
        }
        Op::Resize { len: new_len } => {
            contents.resize(len, new_len).unwrap();
            model.resize(new_len as usize, 0);
        }
        Op::Zero { offset, len: n } => {
            contents.zero(offset..offset + n, len).unwrap();
            let end = ((offset + n) as usize).min(model.len());
            if (offset as usize) < end {
                model[offset as usize..end].fill(0);
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(96))]

    #[test]
    fn contents_match_a_plain_byte_model(
        ops in prop::collection::vec(op(), 1..24),
        format in prop_oneof![Just(FileFormat::V1), Just(FileFormat::V2)],
    ) {
        let dek = VolumeKey::generate().unwrap();
        let header = FileHeader::generate(format).unwrap();
        let cipher = dek.file_cipher(&header.nonce);
        let file = tempfile::tempfile().unwrap();
        FileExt::write_all_at(&file, &header.encode(), 0).unwrap();
        let contents = Contents { file: &file, cipher: &cipher, format };
        let mut model = Vec::new();
        for op in &ops {
            // Every write starts from a buffer full of another request's bytes.
            with_thread_buffer(|buf| {
                buf.clear();
                buf.resize(3 * DATA_UNIT, 0xa5);
            });
            apply(&contents, &mut model, op);
            let backing_len = file.metadata().unwrap().len();
            if format == FileFormat::V2 && model.is_empty() && backing_len == 0 {
                // Truncated to zero: header and all, to start over under a new nonce.
                FileExt::write_all_at(&file, &header.encode(), 0).unwrap();
            } else {
                prop_assert_eq!(
                    format.plaintext_len(backing_len),
                    Some(model.len() as u64),
                    "length after {:?}",
                    op
                );
            }
            let mut buf = Vec::new();
            let range = contents.read(0, model.len() + 10, model.len() as u64, &mut buf).unwrap();
            prop_assert!(&buf[range] == model.as_slice(), "contents after {:?}", op);
        }
        // Reads at every unit-straddling offset agree with the model too.
        let len = model.len() as u64;
        for start in (0..len).step_by(1361) {
            let mut buf = vec![0xee; 3];
            let range = contents.read(start, 5000, len, &mut buf).unwrap();
            let end = (start as usize + 5000).min(model.len());
            prop_assert!(buf[range] == model[start as usize..end]);
        }
    }
}

/// Format 2's promise, byte for byte: a write stores the blocks it touches and the
/// length marker, and nothing before the block it starts in changes.
#[test]
fn v2_appends_rewrite_only_the_block_they_start_in() {
    let dek = VolumeKey::generate().unwrap();
    let header = FileHeader::generate(FileFormat::V2).unwrap();
    let cipher = dek.file_cipher(&header.nonce);
    let file = tempfile::tempfile().unwrap();
    FileExt::write_all_at(&file, &header.encode(), 0).unwrap();
    let contents = Contents {
        file: &file,
        cipher: &cipher,
        format: FileFormat::V2,
    };
    let mut len = 0u64;
    let mut before = std::fs::read(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
    for (i, n) in [5usize, 7, 4, 20, 4000, 100, 16, 1].into_iter().enumerate() {
        let data = vec![i as u8 + 1; n];
        contents.write(len, &data, len).unwrap();
        let after = std::fs::read(format!("/proc/self/fd/{}", file.as_raw_fd())).unwrap();
        let unchanged = (4096 + len / 16 * 16) as usize;
        assert_eq!(
            after[..unchanged],
            before[..unchanged],
            "append {i} changed earlier blocks"
        );
        len += n as u64;
        assert_eq!(after.len() as u64, FileFormat::V2.backing_len(len));
        let mut buf = Vec::new();
        let range = contents.read(len - n as u64, n, len, &mut buf).unwrap();
        assert_eq!(buf[range], data[..]);
        before = after;
    }
}
