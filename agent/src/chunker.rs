//! Content-defined chunking with FastCDC (v2020, normalization level 1).
//!
//! The parameters are part of the repository config: every writer must cut the same way or
//! deduplication silently stops working. The `fastcdc` crate is pinned exactly for the same reason,
//! and `known_cut_points` below fails if a new version moves any cut.

use std::io::Read;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkerParams {
    pub min_size: u32,
    pub avg_size: u32,
    pub max_size: u32,
}

impl Default for ChunkerParams {
    /// A 64 KiB average (restic and kopia use 1 MiB or more), chosen by the sweep in
    /// benches/RESULTS.md: after scattered 4 KiB writes it uploads 0.43 of restic's bytes (256 KiB:
    /// 0.79), for a repository 3% larger (smaller chunks compress a little worse) and an index of
    /// 16,384 entries per GiB.
    fn default() -> Self {
        ChunkerParams {
            min_size: 16 * 1024,
            avg_size: 64 * 1024,
            max_size: 256 * 1024,
        }
    }
}

impl ChunkerParams {
    pub fn validate(&self) -> Result<()> {
        use fastcdc::v2020::{
            AVERAGE_MAX, AVERAGE_MIN, MAXIMUM_MAX, MAXIMUM_MIN, MINIMUM_MAX, MINIMUM_MIN,
        };
        let (min, avg, max) = (
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        );
        let problem = if !(MINIMUM_MIN..=MINIMUM_MAX).contains(&min) {
            Some(format!(
                "the minimum chunk size must be within {MINIMUM_MIN}..={MINIMUM_MAX} bytes"
            ))
        } else if !(AVERAGE_MIN..=AVERAGE_MAX).contains(&avg) {
            Some(format!(
                "the average chunk size must be within {AVERAGE_MIN}..={AVERAGE_MAX} bytes"
            ))
        } else if !(MAXIMUM_MIN..=MAXIMUM_MAX).contains(&max) {
            Some(format!(
                "the maximum chunk size must be within {MAXIMUM_MIN}..={MAXIMUM_MAX} bytes"
            ))
        } else if !(min < avg && avg < max) {
            Some("chunk sizes must satisfy min < avg < max".to_owned())
        } else if min % 2 != 0 || avg % 2 != 0 || max % 2 != 0 {
            Some("chunk sizes must be even".to_owned())
        } else {
            None
        };
        match problem {
            Some(problem) => Err(Error::InvalidArgument(format!(
                "chunker min/avg/max {min}/{avg}/{max}: {problem}"
            ))),
            None => Ok(()),
        }
    }

    /// Chunks of a stream, each with its offset; reads at most `max_size` bytes ahead.
    pub fn chunks<R: Read>(&self, source: R) -> impl Iterator<Item = std::io::Result<Chunk>> {
        fastcdc::v2020::StreamCDC::new(
            source,
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        )
        .map(|chunk| match chunk {
            Ok(chunk) => Ok(Chunk {
                offset: chunk.offset,
                data: chunk.data,
            }),
            Err(error) => Err(std::io::Error::from(error)),
        })
    }

    /// Cut points (chunk lengths) of an in-memory buffer.
    pub fn cut_lengths(&self, data: &[u8]) -> Vec<usize> {
        fastcdc::v2020::FastCDC::new(
            data,
            self.min_size as usize,
            self.avg_size as usize,
            self.max_size as usize,
        )
        .map(|chunk| chunk.length)
        .collect()
    }
}

pub struct Chunk {
    pub offset: u64,
    pub data: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Deterministic pseudo-random bytes (xorshift), so that the expected cut points below never
    /// depend on a random generator's version.
    fn sample(len: usize) -> Vec<u8> {
        let mut state = 0x9E37_79B9_7F4A_7C15u64;
        (0..len)
            .map(|_| {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                (state >> 24) as u8
            })
            .collect()
    }

    #[test]
    fn known_cut_points() {
        let params = ChunkerParams {
            min_size: 4096,
            avg_size: 16384,
            max_size: 65536,
        };
        let lengths = params.cut_lengths(&sample(256 * 1024));
        assert_eq!(
            lengths, KNOWN_LENGTHS,
            "fastcdc moved its cut points: existing repositories would stop deduplicating"
        );
    }

    /// Recorded from fastcdc 5.0.0 (v2020) on this sample; they must never change.
    const KNOWN_LENGTHS: &[usize] = &[
        6191, 8763, 17021, 17777, 15442, 16619, 24411, 10767, 23092, 24826, 30843, 26719, 5435,
        22882, 11356,
    ];

    #[test]
    fn streaming_and_in_memory_chunking_agree() {
        let params = ChunkerParams {
            min_size: 4096,
            avg_size: 16384,
            max_size: 65536,
        };
        let data = sample(300_000);
        let streamed: Vec<usize> = params
            .chunks(&data[..])
            .map(|c| c.unwrap().data.len())
            .collect();
        assert_eq!(streamed, params.cut_lengths(&data));
        assert_eq!(streamed.iter().sum::<usize>(), data.len());
    }

    #[test]
    fn cuts_resynchronise_after_an_insertion() {
        let params = ChunkerParams {
            min_size: 4096,
            avg_size: 16384,
            max_size: 65536,
        };
        let data = sample(400_000);
        let mut shifted = b"inserted bytes".to_vec();
        shifted.extend_from_slice(&data);
        let chunks = |d: &[u8]| -> std::collections::HashSet<Vec<u8>> {
            let mut offset = 0;
            params
                .cut_lengths(d)
                .into_iter()
                .map(|len| {
                    offset += len;
                    d[offset - len..offset].to_vec()
                })
                .collect()
        };
        let (before, after) = (chunks(&data), chunks(&shifted));
        let shared = before.intersection(&after).count();
        assert!(
            shared + 2 >= before.len(),
            "only {shared} of {} chunks survived a shift",
            before.len()
        );
    }

    #[test]
    fn invalid_parameters_are_refused_with_a_reason() {
        let error = ChunkerParams {
            min_size: 10,
            avg_size: 16384,
            max_size: 65536,
        }
        .validate()
        .unwrap_err();
        assert!(error.to_string().contains("minimum chunk size"), "{error}");
        let error = ChunkerParams {
            min_size: 8192,
            avg_size: 4096,
            max_size: 65536,
        }
        .validate()
        .unwrap_err();
        assert!(error.to_string().contains("min < avg < max"), "{error}");
        ChunkerParams::default().validate().unwrap();
    }
}
