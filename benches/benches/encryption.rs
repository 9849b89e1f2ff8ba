//! AES-256-GCM encryption and decryption (`MasterKey::encrypt` / `decrypt`) of chunk-sized blobs.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_benches::dataset::{Content, sample};
use ferry_mover::crypto::MasterKey;

fn encryption(c: &mut Criterion) {
    let key = MasterKey::from_bytes([7; 32]);
    let mut g = c.benchmark_group("aes-256-gcm");
    for len in [4 << 10, 256 << 10, 1 << 20] {
        let data = sample(Content::Random, len, 1);
        let sealed = key.encrypt(&data);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("encrypt/{}KiB", len >> 10), |b| {
            b.iter(|| key.encrypt(&data).len())
        });
        g.bench_function(format!("decrypt/{}KiB", len >> 10), |b| {
            b.iter(|| key.decrypt(&sealed, "bench").expect("authentic").len())
        });
    }
    g.finish();
}

criterion_group!(benches, encryption);
criterion_main!(benches);
