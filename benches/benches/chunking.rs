//! FastCDC chunking with Ferry's default parameters (64 KiB / 256 KiB / 1 MiB), in memory and
//! streaming from a reader (what a backup does), on mixed, text and random content.

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ferry_benches::dataset::{Content, sample};
use ferry_mover::ChunkerParams;

const LEN: usize = 32 << 20;

fn chunking(c: &mut Criterion) {
    let params = ChunkerParams::default();
    let mut g = c.benchmark_group("chunking");
    g.throughput(Throughput::Bytes(LEN as u64)).sample_size(10);
    for content in [Content::Mixed, Content::Text, Content::Random] {
        let data = sample(content, LEN, 1);
        g.bench_function(format!("cut_lengths/{}", content.name()), |b| {
            b.iter(|| std::hint::black_box(params.cut_lengths(&data)).len())
        });
        g.bench_function(format!("stream/{}", content.name()), |b| {
            b.iter(|| {
                params
                    .chunks(&data[..])
                    .map(|c| c.expect("in-memory read").data.len())
                    .sum::<usize>()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, chunking);
criterion_main!(benches);
