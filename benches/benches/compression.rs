//! zstd at the repository's default level on 64 KiB chunks (Ferry's average chunk size) of text,
//! mixed and random content, alone and with a dictionary trained on the 128 chunks before it
//! (format version 3); `blob::seal` (compress, or not when it does not shrink, then encrypt),
//! which is what a backup does per chunk, and `blob::open` (decrypt, inflate within the blob's
//! bound, verify the id), which is what a restore does; and the probe that stores a chunk that
//! looks random without compressing it.

use std::num::NonZeroU32;
use std::sync::Arc;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_benches::dataset::{Content, sample};
use ferry_mover::InitOptions;
use ferry_mover::blob::{BlobKind, open, seal};
use ferry_mover::compression::{Compressor, looks_incompressible};
use ferry_mover::crypto::MasterKey;
use ferry_mover::dictionary::{DictionarySource, MAX_DICTIONARY_SIZE};
use zstd::dict::{DecoderDictionary, EncoderDictionary};

const CHUNK: usize = 64 << 10;

struct Trained(Arc<DecoderDictionary<'static>>);

impl DictionarySource for Trained {
    fn dictionary(&self, _: NonZeroU32) -> ferry_mover::Result<Arc<DecoderDictionary<'static>>> {
        Ok(self.0.clone())
    }
}

fn compression(c: &mut Criterion) {
    let level = InitOptions::default().zstd_level;
    let key = MasterKey::from_bytes([7; 32]);
    let mut g = c.benchmark_group("compression");
    g.throughput(Throughput::Bytes(CHUNK as u64));
    for content in [Content::Text, Content::Mixed, Content::Random] {
        // 8 MiB of chunks to train on, as a repository trains on its first ones, and one more
        // chunk of the same data (one seed: one vocabulary) to compress.
        let whole = sample(content, 129 * CHUNK, 1);
        let samples: Vec<&[u8]> = whole.chunks(CHUNK).take(128).collect();
        let data = whole[128 * CHUNK..].to_vec();
        let trained = zstd::dict::from_samples(&samples, MAX_DICTIONARY_SIZE).ok();
        let encoder = trained
            .as_ref()
            .map(|trained| EncoderDictionary::copy(trained, level));
        let decoder = Trained(Arc::new(DecoderDictionary::copy(
            trained.as_deref().unwrap_or_default(),
        )));
        let mut compressors = vec![("alone", Compressor::Zstd(level))];
        if let Some(encoder) = &encoder {
            compressors.push(("dictionary", Compressor::Dictionary(encoder)));
        }
        let id = key.blob_id(&data);
        eprintln!(
            "{}: looks incompressible: {}",
            content.name(),
            looks_incompressible(&data)
        );
        g.bench_function(format!("probe/{}", content.name()), |b| {
            b.iter(|| looks_incompressible(&data))
        });
        for (how, compressor) in &compressors {
            let sealed = seal(&key, BlobKind::Data, id, &data, compressor);
            eprintln!(
                "{} {how}: stored {} of {} bytes (ratio {:.3})",
                content.name(),
                sealed.bytes.len(),
                data.len(),
                data.len() as f64 / sealed.bytes.len() as f64
            );
            g.bench_function(format!("seal/{how}/{}", content.name()), |b| {
                b.iter(|| {
                    seal(&key, BlobKind::Data, id, &data, compressor)
                        .bytes
                        .len()
                })
            });
            g.bench_function(format!("open/{how}/{}", content.name()), |b| {
                b.iter(|| {
                    open(
                        &key,
                        &decoder,
                        &id,
                        sealed.compression,
                        sealed.raw_length,
                        &sealed.bytes,
                        "blob",
                    )
                    .expect("opens")
                    .len()
                })
            });
        }
    }
    g.finish();
}

criterion_group!(benches, compression);
criterion_main!(benches);
