//! Throughput of the XTS data-unit cipher: one 4 KiB unit, and a 1 MiB run of units as
//! one FUSE write carries. `scripts/bench-xts.sh` compares the result with OpenSSL.

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use xtsfs::crypto::{VolumeKey, DATA_UNIT};

fn xts(c: &mut Criterion) {
    let dek = VolumeKey::generate().expect("random key");
    let cipher = dek.file_cipher(&[7; 16]);
    let mut group = c.benchmark_group("xts");
    for (name, len) in [("4KiB", DATA_UNIT), ("1MiB", 1 << 20)] {
        group.throughput(Throughput::Bytes(len as u64));
        let mut buf = vec![0x5au8; len];
        group.bench_function(format!("encrypt/{name}"), |b| {
            b.iter(|| {
                for (i, unit) in buf.chunks_mut(DATA_UNIT).enumerate() {
                    cipher.encrypt_unit(i as u64, unit).expect("full unit");
                }
            })
        });
        // A write's path: the caller's bytes encrypted into the run buffer.
        let plain = vec![0xa5u8; len];
        group.bench_function(format!("encrypt_from/{name}"), |b| {
            b.iter(|| {
                let units = plain.chunks(DATA_UNIT).zip(buf.chunks_mut(DATA_UNIT));
                for (i, (source, unit)) in units.enumerate() {
                    cipher
                        .encrypt_unit_from(i as u64, source, unit)
                        .expect("full unit");
                }
            })
        });
        group.bench_function(format!("decrypt/{name}"), |b| {
            b.iter(|| {
                for (i, unit) in buf.chunks_mut(DATA_UNIT).enumerate() {
                    cipher.decrypt_unit(i as u64, unit).expect("full unit");
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, xts);
criterion_main!(benches);
