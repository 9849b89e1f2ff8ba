//! Keyed BLAKE3 blob ids (`MasterKey::blob_id`) of chunk-sized inputs.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_benches::dataset::{Content, sample};
use ferry_mover::crypto::MasterKey;

fn hashing(c: &mut Criterion) {
    let key = MasterKey::from_bytes([7; 32]);
    let mut g = c.benchmark_group("blob_id");
    for len in [4 << 10, 256 << 10, 1 << 20] {
        let data = sample(Content::Mixed, len, 1);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_function(format!("keyed-blake3/{}KiB", len >> 10), |b| {
            b.iter(|| key.blob_id(&data))
        });
    }
    g.finish();
}

criterion_group!(benches, hashing);
criterion_main!(benches);
