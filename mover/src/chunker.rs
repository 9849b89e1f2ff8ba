//! Content-defined chunking with FastCDC (v2020, normalization level 1).
//!
//! The parameters are part of the repository config: every writer must cut the same way or
//! deduplication silently stops working. The `fastcdc` crate is pinned exactly for the same reason,
//! and `known_cut_points` below fails if a new version moves any cut.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

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

/// A piece of a file's content, in file order.
pub enum Piece {
    Data(Chunk),
    /// A range the filesystem reports as a hole: never read.
    Hole {
        offset: u64,
        length: u64,
    },
}

impl ChunkerParams {
    /// Chunks the first `size` bytes of `file` (the size it was listed with: a file that grows
    /// meanwhile is read no further). Ranges the filesystem reports as holes (`SEEK_DATA`,
    /// `SEEK_HOLE`) are handed over as [`Piece::Hole`] without being read, so a huge sparse file
    /// costs nothing; each range of data is chunked on its own. `stop` is asked before every
    /// chunk and ends the work with its error. Returns how many bytes the pieces cover: `size`,
    /// or less when the file shrank meanwhile.
    pub fn chunk_file(
        &self,
        file: &File,
        size: u64,
        stop: &dyn Fn() -> Result<()>,
        each: &mut dyn FnMut(Piece) -> Result<()>,
    ) -> Result<u64> {
        let io = |error: std::io::Error| Error::Other(format!("reading: {error}"));
        let mut position = 0u64;
        while position < size {
            stop()?;
            let data_start = match seek_data(file, position, true) {
                Ok(Some(offset)) => offset.min(size),
                // No data from here on: a hole to the end, or to where the file now ends if it
                // shrank since it was listed.
                Ok(None) => {
                    let now = file.metadata().map_err(io)?.len().min(size);
                    if now > position {
                        each(Piece::Hole {
                            offset: position,
                            length: now - position,
                        })?;
                    }
                    return Ok(now.max(position));
                }
                Err(error) => return Err(io(error)),
            };
            if data_start > position {
                each(Piece::Hole {
                    offset: position,
                    length: data_start - position,
                })?;
                position = data_start;
            }
            if position >= size {
                break;
            }
            let data_end = match seek_data(file, position, false) {
                Ok(Some(offset)) => offset.clamp(position, size),
                // Past the end: the file shrank meanwhile.
                Ok(None) => return Ok(position),
                Err(error) => return Err(io(error)),
            };
            let mut range = RangeReader {
                file,
                position,
                end: data_end,
                short: false,
            };
            let mut covered = position;
            for chunk in self.chunks(std::io::BufReader::with_capacity(256 * 1024, &mut range)) {
                stop()?;
                let mut chunk = chunk.map_err(io)?;
                chunk.offset += position;
                covered = chunk.offset + chunk.data.len() as u64;
                each(Piece::Data(chunk))?;
            }
            if range.short {
                // The file shrank while being read: what it holds now ends here.
                return Ok(covered);
            }
            position = data_end;
        }
        Ok(size.min(position))
    }
}

/// `SEEK_DATA` (`data`) or `SEEK_HOLE` from `from`: `None` when `from` is at or past the end of
/// the data (for `SEEK_HOLE`, of the file). Files that cannot tell (block devices, some
/// filesystems) are data from `from` on.
fn seek_data(file: &File, from: u64, data: bool) -> std::io::Result<Option<u64>> {
    use rustix::fs::SeekFrom;
    let whence = if data {
        SeekFrom::Data(from)
    } else {
        SeekFrom::Hole(from)
    };
    match rustix::fs::seek(file, whence) {
        Ok(offset) => Ok(Some(offset)),
        Err(rustix::io::Errno::NXIO) => Ok(None),
        // Everything is data, to the end: the callers bound the hole's offset by the size.
        // (Block devices answer EINVAL.)
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOTSUP) => {
            Ok(Some(if data { from } else { u64::MAX }))
        }
        Err(errno) => Err(errno.into()),
    }
}

/// Reads `[position, end)` of a file with positional reads; notes when the file ends early.
struct RangeReader<'a> {
    file: &'a File,
    position: u64,
    end: u64,
    short: bool,
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.end.saturating_sub(self.position);
        if left == 0 {
            return Ok(0);
        }
        let want = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let read = loop {
            match self.file.read_at(&mut buf[..want], self.position) {
                Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
                other => break other?,
            }
        };
        if read == 0 {
            self.short = true;
        }
        self.position += read as u64;
        Ok(read)
    }
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

    /// A stream many buffers long, read a few odd-sized bytes at a time, is cut exactly as the
    /// same bytes in memory: no cut depends on where the stream chunker's buffer or a read ended.
    #[test]
    fn buffer_and_read_boundaries_move_no_cut() {
        struct Trickle<'a> {
            data: &'a [u8],
            step: usize,
        }
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                self.step = (self.step * 31 + 7) % 7919 + 1;
                let n = self.step.min(buf.len()).min(self.data.len());
                buf[..n].copy_from_slice(&self.data[..n]);
                self.data = &self.data[n..];
                Ok(n)
            }
        }
        let params = ChunkerParams {
            min_size: 4096,
            avg_size: 16384,
            max_size: 65536,
        };
        let data = sample(5_000_000);
        let mut offset = 0u64;
        let streamed: Vec<usize> = params
            .chunks(Trickle {
                data: &data,
                step: 1,
            })
            .map(|c| {
                let c = c.unwrap();
                assert_eq!(c.offset, offset);
                assert!(c.data[..] == data[offset as usize..offset as usize + c.data.len()]);
                offset += c.data.len() as u64;
                c.data.len()
            })
            .collect();
        assert_eq!(streamed, params.cut_lengths(&data));
        assert_eq!(offset, data.len() as u64);
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

    fn collect(params: &ChunkerParams, file: &File, size: u64) -> (Vec<(u64, u64, bool)>, u64) {
        let mut pieces = Vec::new();
        let covered = params
            .chunk_file(file, size, &|| Ok(()), &mut |piece| {
                pieces.push(match piece {
                    Piece::Data(chunk) => (chunk.offset, chunk.data.len() as u64, true),
                    Piece::Hole { offset, length } => (offset, length, false),
                });
                Ok(())
            })
            .unwrap();
        (pieces, covered)
    }

    /// Holes are skipped unread, the listed size bounds the read, and dense files chunk exactly
    /// as a stream does.
    #[test]
    fn files_are_chunked_by_their_data_ranges_up_to_their_listed_size() {
        let params = ChunkerParams {
            min_size: 4096,
            avg_size: 16384,
            max_size: 65536,
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let data = sample(300_000);
        std::fs::write(&path, &data).unwrap();
        let file = File::open(&path).unwrap();
        let (pieces, covered) = collect(&params, &file, data.len() as u64);
        assert_eq!(covered, data.len() as u64);
        let lengths: Vec<usize> = pieces.iter().map(|p| p.1 as usize).collect();
        assert_eq!(lengths, params.cut_lengths(&data));
        // Listed smaller than it is (it grew since): read no further.
        let (pieces, covered) = collect(&params, &file, 100_000);
        assert_eq!(covered, 100_000);
        assert_eq!(pieces.iter().map(|p| p.1).sum::<u64>(), 100_000);

        // A huge sparse file with a little data in the middle.
        let sparse = File::options()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(dir.path().join("sparse"))
            .unwrap();
        let size = 1u64 << 40;
        sparse.set_len(size).unwrap();
        sparse.write_all_at(&data[..50_000], 1 << 30).unwrap();
        let (pieces, covered) = collect(&params, &sparse, size);
        assert_eq!(covered, size);
        assert_eq!(pieces.iter().map(|p| p.1).sum::<u64>(), size);
        let read: u64 = pieces.iter().filter(|p| p.2).map(|p| p.1).sum();
        assert!(read < 1 << 20, "read {read} bytes of a file holding 50 kB");

        // Shrunk since it was listed: no trailing hole invented.
        let (pieces, covered) = collect(&params, &file, 400_000);
        assert_eq!(covered, data.len() as u64);
        assert_eq!(pieces.iter().map(|p| p.1).sum::<u64>(), covered);
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
