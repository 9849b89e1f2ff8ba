//! The deterministic mixed data set and its ~1% mutation.
//!
//! For a total size S (default 2 GiB) and a seed, the set holds:
//! - `large/`: three large, partly compressible files (a VM-disk-like image of random, text and
//!   zero regions, a log archive that is mostly text, a CSV-like data set), 44% of S;
//! - `db/pages.db`: a database-like file of 4 KiB pages (header, rows, free space, some empty
//!   pages), 20% of S;
//! - `small/`: about 20,000 small files (scaled with S) in nested directories, log-uniform sizes
//!   from 100 B to 32 KiB, mostly text, some random (images), a few duplicates;
//! - `media/`: incompressible files of 32 MiB (random bytes), the rest of S.
//!
//! Every file is generated from its own stream derived from the seed and its path, so the set is
//! byte-identical on every machine. The mutation ([`mutate`]) is deterministic in the same way.

use std::fs::{self, File};
use std::io::{BufWriter, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use anyhow::Context;

use crate::rng::Rng;
use crate::units::MIB;

pub const PAGE: usize = 4096;
const SEGMENT: usize = 64 * 1024;
const MEDIA_FILE: u64 = 32 * MIB;

/// Identifies a generated data set; written as `.ferry-bench-dataset` in its directory while the
/// directory still holds exactly the generated, unmutated set.
pub fn marker(size: u64, seed: u64) -> String {
    format!("ferry-bench dataset v1 size={size} seed={seed}\n")
}
pub const MARKER_FILE: &str = ".ferry-bench-dataset";

/// The composition of a region of a large file: fractions of 64 KiB segments that are random,
/// zero, or text (the rest).
#[derive(Debug, Clone, Copy)]
struct Mix {
    random: f64,
    zero: f64,
}

#[derive(Debug, Clone)]
pub struct Layout {
    pub size: u64,
    pub seed: u64,
    large: Vec<(&'static str, u64, Mix)>,
    pub db_pages: u64,
    pub small_files: u64,
    pub media: Vec<u64>,
}

impl Layout {
    pub fn new(size: u64, seed: u64) -> Self {
        let frac = |f: f64| ((size as f64 * f) as u64 / PAGE as u64) * PAGE as u64;
        let large = vec![
            (
                "large/vm-disk.img",
                frac(0.22),
                Mix {
                    random: 0.45,
                    zero: 0.15,
                },
            ),
            (
                "large/logs.tar",
                frac(0.13),
                Mix {
                    random: 0.10,
                    zero: 0.0,
                },
            ),
            (
                "large/dataset.csv",
                frac(0.09),
                Mix {
                    random: 0.25,
                    zero: 0.0,
                },
            ),
        ];
        let db_pages = frac(0.20) / PAGE as u64;
        // 20,000 small files at 2 GiB, proportionally fewer (at least 200) for smaller sets.
        let small_files = ((20_000.0 * size as f64 / (2u64 << 30) as f64) as u64).max(200);
        // Mean of log-uniform 100..32768 is ~5.6 KiB.
        let small_est = small_files * 5_700;
        let used: u64 = large.iter().map(|l| l.1).sum::<u64>() + db_pages * PAGE as u64 + small_est;
        let mut rest = size.saturating_sub(used).max(MIB);
        let mut media = Vec::new();
        while rest > 0 {
            let n = if rest >= MEDIA_FILE + MIB {
                MEDIA_FILE
            } else {
                rest
            };
            media.push(n);
            rest -= n;
        }
        Layout {
            size,
            seed,
            large,
            db_pages,
            small_files,
            media,
        }
    }
}

/// Summary of a generated data set.
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub files: u64,
    pub bytes: u64,
}

/// Words for text-like content: pseudo-words of 2-10 letters, chosen with a skewed (Zipf-like)
/// frequency, which compresses with zstd roughly like English prose or logs.
struct Dict {
    words: Vec<Vec<u8>>,
}

impl Dict {
    fn new(seed: u64) -> Self {
        let mut r = Rng::derive(seed, "dictionary");
        let words = (0..2048)
            .map(|_| {
                let len = r.range(2, 10) as usize;
                (0..len).map(|_| b'a' + r.below(26) as u8).collect()
            })
            .collect();
        Dict { words }
    }

    /// Fills `buf` with words, spaces, punctuation, numbers and newlines.
    fn fill_text(&self, r: &mut Rng, buf: &mut [u8]) {
        let mut i = 0;
        while i < buf.len() {
            let x = r.next_u64();
            // Skewed choice: square of a uniform 21-bit value, scaled to 11 bits.
            let u = x >> 43;
            let w = &self.words[((u * u) >> 31) as usize];
            let sep: &[u8] = match (x >> 8) & 31 {
                0 => b".\n",
                1 | 2 => b", ",
                3 => b" 42 ",
                4 => b" = ",
                _ => b" ",
            };
            for &b in w.iter().chain(sep) {
                if i == buf.len() {
                    break;
                }
                buf[i] = b;
                i += 1;
            }
            if (x & 0xff) == 7 && i + 20 < buf.len() {
                // A number, like a timestamp or an id in a log line.
                let n = format!("{} ", x >> 20);
                buf[i..i + n.len()].copy_from_slice(n.as_bytes());
                i += n.len();
            }
        }
    }

    fn fill_mixed(&self, r: &mut Rng, mix: Mix, buf: &mut [u8]) {
        for seg in buf.chunks_mut(SEGMENT) {
            let p = (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
            if p < mix.random {
                r.fill(seg);
            } else if p < mix.random + mix.zero {
                seg.fill(0);
            } else {
                self.fill_text(r, seg);
            }
        }
    }

    /// One database page: header, rows of fixed and text fields, then free space (zeros).
    /// About 3% of pages are empty (all zero), as in a real table file.
    fn fill_page(&self, r: &mut Rng, page_no: u64, lsn: u64, page: &mut [u8]) {
        page.fill(0);
        if r.chance(0.03) {
            return;
        }
        page[0..8].copy_from_slice(&page_no.to_le_bytes());
        page[8..16].copy_from_slice(&lsn.to_le_bytes());
        page[16..20].copy_from_slice(&0x5041_4745u32.to_le_bytes());
        let fill = r.range(PAGE as u64 * 60 / 100, PAGE as u64 * 95 / 100) as usize;
        let mut i = 32;
        let mut row = page_no * 40;
        while i + 96 < fill {
            page[i..i + 8].copy_from_slice(&row.to_le_bytes());
            page[i + 8..i + 16].copy_from_slice(&(1_700_000_000 + row * 3).to_le_bytes());
            page[i + 16..i + 20].copy_from_slice(&(r.next_u64() as u32 % 100_000).to_le_bytes());
            page[i + 20] = b"ANPSX"[r.below(5) as usize];
            let text_len = r.range(16, 64) as usize;
            self.fill_text(r, &mut page[i + 24..i + 24 + text_len]);
            i += 24 + text_len + 8;
            row += 1;
        }
    }
}

fn small_path(i: u64) -> String {
    const EXT: [&str; 6] = ["txt", "json", "yaml", "log", "conf", "png"];
    format!(
        "small/d{:02}/e{:02}/f{:06}.{}",
        i / 1000,
        (i / 100) % 10,
        i,
        EXT[(i % 6) as usize]
    )
}

/// Content of small file `label`: 100 B..32 KiB, text or (for `.png`) random.
fn small_content(dict: &Dict, seed: u64, label: &str) -> Vec<u8> {
    let mut r = Rng::derive(seed, label);
    let len = r.log_uniform(100, 32 * 1024) as usize;
    let mut buf = vec![0u8; len];
    if label.ends_with(".png") {
        r.fill(&mut buf);
    } else {
        dict.fill_text(&mut r, &mut buf);
    }
    buf
}

fn create(path: &Path) -> anyhow::Result<BufWriter<File>> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent)?;
    }
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    Ok(BufWriter::with_capacity(1 << 20, f))
}

/// Writes `len` bytes produced by `gen` (called with 1 MiB buffers) to `path`.
fn write_generated(
    path: &Path,
    len: u64,
    mut generate: impl FnMut(&mut [u8]),
) -> anyhow::Result<()> {
    let mut w = create(path)?;
    let mut buf = vec![0u8; MIB as usize];
    let mut left = len;
    while left > 0 {
        let n = left.min(buf.len() as u64) as usize;
        generate(&mut buf[..n]);
        w.write_all(&buf[..n])?;
        left -= n as u64;
    }
    w.flush()?;
    Ok(())
}

/// Generates the data set into `dir` (which must be empty or absent).
pub fn generate(layout: &Layout, dir: &Path) -> anyhow::Result<Stats> {
    let dict = Dict::new(layout.seed);
    let mut stats = Stats::default();
    fs::create_dir_all(dir)?;

    for &(name, len, mix) in &layout.large {
        let mut r = Rng::derive(layout.seed, name);
        write_generated(&dir.join(name), len, |b| dict.fill_mixed(&mut r, mix, b))?;
        stats.files += 1;
        stats.bytes += len;
    }

    {
        let mut r = Rng::derive(layout.seed, "db");
        let mut w = create(&dir.join("db/pages.db"))?;
        let mut page = vec![0u8; PAGE];
        for p in 0..layout.db_pages {
            dict.fill_page(&mut r, p, 1000 + p, &mut page);
            w.write_all(&page)?;
        }
        w.flush()?;
        stats.files += 1;
        stats.bytes += layout.db_pages * PAGE as u64;
    }

    for i in 0..layout.small_files {
        let path = small_path(i);
        // About 2% of small files duplicate an earlier one (vendored copies, repeated configs).
        let label = if i > 10 && i % 50 == 17 {
            small_path(i - 7)
        } else {
            path.clone()
        };
        let content = small_content(&dict, layout.seed, &label);
        let mut w = create(&dir.join(&path))?;
        w.write_all(&content)?;
        w.flush()?;
        stats.files += 1;
        stats.bytes += content.len() as u64;
    }

    for (i, &len) in layout.media.iter().enumerate() {
        let name = format!("media/clip-{i:03}.mp4");
        let mut r = Rng::derive(layout.seed, &name);
        write_generated(&dir.join(&name), len, |b| r.fill(b))?;
        stats.files += 1;
        stats.bytes += len;
    }
    fs::write(dir.join(MARKER_FILE), marker(layout.size, layout.seed))?;
    stats.files += 1;
    Ok(stats)
}

/// What [`mutate`] changed.
#[derive(Debug, Clone, Default)]
pub struct Mutation {
    /// Bytes of new content written (overwritten pages, inserted, appended, new and rewritten
    /// files); removed files are not counted.
    pub bytes_changed: u64,
    pub pages_overwritten: u64,
    pub bytes_inserted: u64,
    pub bytes_appended: u64,
    pub files_added: u64,
    pub files_removed: u64,
    pub files_rewritten: u64,
}

/// Applies the ~1% mutation to a generated set in `dir`:
/// - scattered 4 KiB page overwrites: 2% of the database's pages and 0.1% of the VM image's
///   4 KiB blocks;
/// - 5,333 random bytes inserted in the middle of the VM image (everything after shifts by a
///   non-multiple of any block size);
/// - text appended to the log archive (0.2% of S);
/// - small files: 1% removed, 1% added (new names, some in a new directory), 0.5% rewritten;
/// - one new media file (0.25% of S).
pub fn mutate(layout: &Layout, dir: &Path) -> anyhow::Result<Mutation> {
    let _ = fs::remove_file(dir.join(MARKER_FILE));
    let dict = Dict::new(layout.seed);
    let seed = layout.seed ^ 0x6d75_7461_7469_6f6e;
    let mut r = Rng::derive(seed, "mutation");
    let mut m = Mutation::default();

    // Database: scattered page overwrites with new LSNs.
    {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .open(dir.join("db/pages.db"))?;
        let mut page = vec![0u8; PAGE];
        let n = (layout.db_pages / 50).max(1);
        for k in 0..n {
            let p = r.below(layout.db_pages);
            dict.fill_page(&mut r, p, 10_000_000 + k, &mut page);
            f.seek(SeekFrom::Start(p * PAGE as u64))?;
            f.write_all(&page)?;
        }
        f.sync_all()?;
        m.pages_overwritten += n;
        m.bytes_changed += n * PAGE as u64;
    }

    // VM image: scattered 4 KiB block writes, then an insert in the middle (content shifts).
    {
        let path = dir.join("large/vm-disk.img");
        let len = fs::metadata(&path)?.len();
        let blocks = len / PAGE as u64;
        {
            let mut f = fs::OpenOptions::new().write(true).open(&path)?;
            let mut block = vec![0u8; PAGE];
            let n = (blocks / 1000).max(1);
            for _ in 0..n {
                r.fill(&mut block);
                f.seek(SeekFrom::Start(r.below(blocks) * PAGE as u64))?;
                f.write_all(&block)?;
            }
            m.pages_overwritten += n;
            m.bytes_changed += n * PAGE as u64;
        }
        let at = len / 2 + 1237;
        let mut insert = vec![0u8; 5333];
        r.fill(&mut insert);
        let tmp = path.with_extension("img.tmp");
        {
            let mut src = File::open(&path)?;
            let mut w = BufWriter::with_capacity(1 << 20, File::create(&tmp)?);
            std::io::copy(&mut (&mut src).take(at), &mut w)?;
            w.write_all(&insert)?;
            std::io::copy(&mut src, &mut w)?;
            w.flush()?;
        }
        fs::rename(&tmp, &path)?;
        m.bytes_inserted += insert.len() as u64;
        m.bytes_changed += insert.len() as u64;
    }

    // Log archive: appended text.
    {
        let n = (layout.size / 500).max(4096);
        let mut buf = vec![0u8; n as usize];
        dict.fill_text(&mut r, &mut buf);
        let mut f = fs::OpenOptions::new()
            .append(true)
            .open(dir.join("large/logs.tar"))?;
        f.write_all(&buf)?;
        m.bytes_appended += n;
        m.bytes_changed += n;
    }

    // Small files: remove 1%, add 1%, rewrite 0.5%.
    {
        let n = layout.small_files;
        let mut removed = std::collections::HashSet::new();
        for _ in 0..(n / 100).max(1) {
            let i = r.below(n);
            if removed.insert(i) {
                fs::remove_file(dir.join(small_path(i)))?;
                m.files_removed += 1;
            }
        }
        for _ in 0..(n / 200).max(1) {
            let i = r.below(n);
            if removed.contains(&i) {
                continue;
            }
            let path = small_path(i);
            let content = small_content(&dict, seed, &path);
            fs::write(dir.join(&path), &content)?;
            m.files_rewritten += 1;
            m.bytes_changed += content.len() as u64;
        }
        for k in 0..(n / 100).max(1) {
            // Half into existing directories, half into a new one.
            let path = if k % 2 == 0 {
                let i = r.below(n);
                small_path(i).replace("/f", "/new-f")
            } else {
                format!("small/added/n{k:05}.json")
            };
            let content = small_content(&dict, seed, &path);
            let mut w = create(&dir.join(&path))?;
            w.write_all(&content)?;
            w.flush()?;
            m.files_added += 1;
            m.bytes_changed += content.len() as u64;
        }
    }

    // A new media file.
    {
        let len = (layout.size / 400).max(4096);
        let name = "media/clip-new.mp4";
        let mut rr = Rng::derive(seed, name);
        write_generated(&dir.join(name), len, |b| rr.fill(b))?;
        m.files_added += 1;
        m.bytes_changed += len;
    }
    Ok(m)
}

/// A single large file (for the "one 4 GiB file restores as fast per byte as many small files"
/// check): a VM-image-like mix of random, text and zero regions.
pub fn generate_big_file(path: &Path, len: u64, seed: u64) -> anyhow::Result<()> {
    let dict = Dict::new(seed);
    let mut r = Rng::derive(seed, "big-file");
    write_generated(path, len, |b| {
        dict.fill_mixed(
            &mut r,
            Mix {
                random: 0.45,
                zero: 0.15,
            },
            b,
        )
    })
}

/// Kinds of sample content for the micro-benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// The large files' mix: 45% random, 15% zero, 40% text, by 64 KiB segment.
    Mixed,
    /// Text only (compresses about 3x with zstd).
    Text,
    /// Random bytes (incompressible media).
    Random,
}

impl Content {
    pub fn name(self) -> &'static str {
        match self {
            Content::Mixed => "mixed",
            Content::Text => "text",
            Content::Random => "random",
        }
    }
}

/// `len` bytes of deterministic sample content, generated like the data set's.
pub fn sample(content: Content, len: usize, seed: u64) -> Vec<u8> {
    let dict = Dict::new(seed);
    let mut r = Rng::derive(seed, content.name());
    let mut buf = vec![0u8; len];
    match content {
        Content::Mixed => dict.fill_mixed(
            &mut r,
            Mix {
                random: 0.45,
                zero: 0.15,
            },
            &mut buf,
        ),
        Content::Text => dict.fill_text(&mut r, &mut buf),
        Content::Random => r.fill(&mut buf),
    }
    buf
}

/// The small-files part of the set, for per-byte restore comparisons.
pub fn small_dir(dir: &Path) -> PathBuf {
    dir.join("small")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_scales() {
        let l = Layout::new(2 << 30, 1);
        assert_eq!(l.small_files, 20_000);
        let total: u64 = l.large.iter().map(|x| x.1).sum::<u64>()
            + l.db_pages * PAGE as u64
            + l.small_files * 5_700
            + l.media.iter().sum::<u64>();
        assert!(
            (total as f64 / (2u64 << 30) as f64 - 1.0).abs() < 0.02,
            "{total}"
        );
    }

    #[test]
    fn generation_is_deterministic() {
        let a = tempfile_dir("a");
        let b = tempfile_dir("b");
        let layout = Layout::new(8 << 20, 7);
        generate(&layout, &a).unwrap();
        generate(&layout, &b).unwrap();
        for p in [
            "large/vm-disk.img",
            "db/pages.db",
            "media/clip-000.mp4",
            &small_path(5),
        ] {
            assert_eq!(
                fs::read(a.join(p)).unwrap(),
                fs::read(b.join(p)).unwrap(),
                "{p}"
            );
        }
        let ma = mutate(&layout, &a).unwrap();
        let mb = mutate(&layout, &b).unwrap();
        assert_eq!(ma.bytes_changed, mb.bytes_changed);
        assert_eq!(
            fs::read(a.join("large/vm-disk.img")).unwrap(),
            fs::read(b.join("large/vm-disk.img")).unwrap()
        );
        fs::remove_dir_all(a).unwrap();
        fs::remove_dir_all(b).unwrap();
    }

    fn tempfile_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("ferry-bench-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }
}
