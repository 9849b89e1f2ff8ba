//! zstd for blobs, with one compression and one decompression context per thread: a backup
//! compresses tens of thousands of chunks and a restore inflates as many, and creating a context
//! for each (and the first-use allocations inside it) cost about 5% of a restore's CPU
//! (`perf`, benches/RESULTS.md).

use std::cell::RefCell;

use zstd::dict::{DecoderDictionary, EncoderDictionary};
use zstd::zstd_safe::{CCtx, DCtx};

use crate::blob::{COMPRESSION_ZSTD, COMPRESSION_ZSTD_DICTIONARY};

thread_local! {
    static COMPRESSION: RefCell<CCtx<'static>> = RefCell::new(CCtx::create());
    static DECOMPRESSION: RefCell<DCtx<'static>> = RefCell::new(DCtx::create());
}

/// How a blob is compressed before it is encrypted.
pub enum Compressor<'a> {
    /// Stored as it is.
    None,
    /// zstd at this level, alone.
    Zstd(i32),
    /// zstd with a trained dictionary (its level was fixed when it was prepared).
    Dictionary(&'a EncoderDictionary<'static>),
}

impl Compressor<'_> {
    /// The compression code and the compressed bytes, or `None` when compressing fails.
    pub fn compress(&self, plaintext: &[u8]) -> Option<(u8, Vec<u8>)> {
        if let Compressor::None = self {
            return None;
        }
        let mut out = Vec::with_capacity(zstd::zstd_safe::compress_bound(plaintext.len()));
        let (code, result) = COMPRESSION.with_borrow_mut(|context| match self {
            Compressor::None => unreachable!("returned above"),
            Compressor::Zstd(level) => (
                COMPRESSION_ZSTD,
                context.compress(&mut out, plaintext, *level),
            ),
            Compressor::Dictionary(dictionary) => (
                COMPRESSION_ZSTD_DICTIONARY,
                context.compress_using_cdict(&mut out, plaintext, dictionary.as_cdict()),
            ),
        });
        result.ok().map(|_| (code, out))
    }
}

/// Inflates one zstd frame of a blob (with its dictionary, if it names one) into exactly
/// `raw_length` bytes at most: more is an error, never a larger allocation. `raw_length` is the
/// authenticated length the pack header or index gives, at most [`crate::blob::MAX_BLOB_LENGTH`];
/// the buffer reserved for it is only touched as far as the frame really expands.
pub fn decompress(
    stored: &[u8],
    raw_length: usize,
    dictionary: Option<&DecoderDictionary<'static>>,
) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(raw_length);
    DECOMPRESSION
        .with_borrow_mut(|context| match dictionary {
            None => context.decompress(&mut out, stored),
            Some(dictionary) => {
                context.decompress_using_ddict(&mut out, stored, dictionary.as_ddict())
            }
        })
        .map_err(|code| std::io::Error::other(zstd::zstd_safe::get_error_name(code)))?;
    Ok(out)
}

/// Whether a chunk looks like data zstd cannot shrink (compressed or encrypted files, media):
/// four 1 KiB windows spread over it all have the byte entropy of random bytes. Such a chunk is
/// stored as it is without compressing all of it first, which cost as much CPU as hashing it
/// (criterion `compression`, benches/RESULTS.md). A chunk under 8 KiB is always tried.
pub fn looks_incompressible(chunk: &[u8]) -> bool {
    const WINDOW: usize = 1024;
    const WINDOWS: usize = 4;
    // Random bytes measure 7.82 bits per byte over 1 KiB (the estimate's bias at this size, with
    // little spread); text measures 4-5, base64 6, anything with zstd-visible repetition less.
    const RANDOM_BITS_PER_BYTE: f64 = 7.6;
    if chunk.len() < 8 * WINDOW {
        return false;
    }
    let stride = (chunk.len() - WINDOW) / (WINDOWS - 1);
    (0..WINDOWS).all(|n| {
        let window = &chunk[n * stride..n * stride + WINDOW];
        let mut counts = [0u32; 256];
        for &byte in window {
            counts[byte as usize] += 1;
        }
        let entropy: f64 = counts
            .iter()
            .filter(|&&count| count > 0)
            .map(|&count| {
                let p = f64::from(count) / WINDOW as f64;
                -p * p.log2()
            })
            .sum();
        entropy >= RANDOM_BITS_PER_BYTE
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_chunks_look_incompressible_and_text_zeros_or_mixed_ones_do_not() {
        let mut random = vec![0u8; 64 << 10];
        crate::crypto::fill_random(&mut random);
        assert!(looks_incompressible(&random));
        assert!(
            Compressor::Zstd(3)
                .compress(&random)
                .is_none_or(|(_, compressed)| compressed.len() >= random.len())
        );

        let text: Vec<u8> = (0..(64usize << 10))
            .map(|n| b"the quick brown fox jumps over a lazy dog "[n % 42])
            .collect();
        assert!(!looks_incompressible(&text));
        assert!(!looks_incompressible(&vec![0u8; 64 << 10]));
        // Random but for one text window: tried, since part of it shrinks.
        let mut mixed = random.clone();
        mixed[..2048].copy_from_slice(&text[..2048]);
        assert!(!looks_incompressible(&mixed));
        // Too small to judge from samples: tried.
        assert!(!looks_incompressible(&random[..4096]));
    }
}
