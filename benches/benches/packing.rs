//! Pack writing: sealed 256 KiB blobs appended to a `PackWriter` until it holds 16 MiB (the
//! default pack size), then `finish` (encrypted header, BLAKE3 pack id, flush) — the sealing is
//! done beforehand, so this measures the pack path alone; a second benchmark includes sealing.

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ferry_benches::dataset::{Content, sample};
use ferry_mover::InitOptions;
use ferry_mover::blob::{BlobKind, SealedBlob, seal};
use ferry_mover::compression::Compressor;
use ferry_mover::crypto::MasterKey;
use ferry_mover::pack::PackWriter;

const CHUNK: usize = 256 << 10;

fn packing(c: &mut Criterion) {
    let opts = InitOptions::default();
    let key = MasterKey::from_bytes([7; 32]);
    let data = sample(Content::Mixed, opts.pack_size as usize, 1);
    let chunks: Vec<&[u8]> = data.chunks(CHUNK).collect();
    let sealed: Vec<SealedBlob> = chunks
        .iter()
        .map(|c| {
            seal(
                &key,
                BlobKind::Data,
                key.blob_id(c),
                c,
                &Compressor::Zstd(opts.zstd_level),
            )
        })
        .collect();
    let dir = tempfile::tempdir().expect("temp dir");

    let mut g = c.benchmark_group("pack");
    g.throughput(Throughput::Bytes(data.len() as u64))
        .sample_size(10);
    g.bench_function("write-sealed-blobs/16MiB", |b| {
        b.iter_batched(
            || PackWriter::new(dir.path(), BlobKind::Data).expect("pack writer"),
            |mut w| {
                for blob in &sealed {
                    w.add(blob).expect("add");
                }
                let p = w.finish(&key).expect("finish");
                std::fs::remove_file(&p.path).expect("remove pack");
                p.size
            },
            BatchSize::PerIteration,
        )
    });
    g.bench_function("hash-seal-write/16MiB", |b| {
        b.iter_batched(
            || PackWriter::new(dir.path(), BlobKind::Data).expect("pack writer"),
            |mut w| {
                for c in &chunks {
                    w.add(&seal(
                        &key,
                        BlobKind::Data,
                        key.blob_id(c),
                        c,
                        &Compressor::Zstd(opts.zstd_level),
                    ))
                    .expect("add");
                }
                let p = w.finish(&key).expect("finish");
                std::fs::remove_file(&p.path).expect("remove pack");
                p.size
            },
            BatchSize::PerIteration,
        )
    });
    g.finish();
}

criterion_group!(benches, packing);
criterion_main!(benches);
