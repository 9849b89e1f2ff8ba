//! Ferry's benchmarks: the comparison harness against restic (0.14 and 0.18), kopia and rustic
//! (`compare` binary) and its building blocks; the criterion micro-benchmarks are in `benches/`.

pub mod chunkdiff;
pub mod dataset;
pub mod measure;
pub mod report;
pub mod rng;
pub mod tools;
pub mod tree;
pub mod units;
