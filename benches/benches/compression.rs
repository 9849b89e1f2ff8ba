//! zstd at the repository's default level on 256 KiB chunks (Ferry's average chunk size) of text,
//! mixed and random content, and decompression; plus `blob::seal` (compress, or not when it does
//! not shrink, then encrypt), which is what a backup does per chunk.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_benches::dataset::{Content, sample};
use ferry_mover::InitOptions;
use ferry_mover::blob::{BlobKind, seal};
use ferry_mover::crypto::MasterKey;

const CHUNK: usize = 256 << 10;

fn compression(c: &mut Criterion) {
    let level = InitOptions::default().zstd_level;
    let key = MasterKey::from_bytes([7; 32]);
    let mut g = c.benchmark_group("compression");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for content in [Content::Text, Content::Mixed, Content::Random] {
        let data = sample(content, CHUNK, 1);
        let compressed = zstd::bulk::compress(&data, level).expect("zstd");
        eprintln!(
            "{}: zstd level {level} ratio {:.2}",
            content.name(),
            data.len() as f64 / compressed.len() as f64
        );
        g.bench_function(format!("zstd-{level}/compress/{}", content.name()), |b| {
            b.iter(|| zstd::bulk::compress(&data, level).expect("zstd").len())
        });
        g.bench_function(format!("zstd-{level}/decompress/{}", content.name()), |b| {
            b.iter(|| {
                zstd::bulk::decompress(&compressed, CHUNK)
                    .expect("zstd")
                    .len()
            })
        });
        let id = key.blob_id(&data);
        g.bench_function(format!("seal/{}", content.name()), |b| {
            b.iter(|| seal(&key, BlobKind::Data, id, &data, level).bytes.len())
        });
    }
    g.finish();
}

criterion_group!(benches, compression);
criterion_main!(benches);
