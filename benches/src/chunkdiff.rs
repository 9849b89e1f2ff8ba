//! The harness's own computation of "the chunks that truly differ" between two states of the data
//! set, for the drifted-restore check: every file is cut with Ferry's default chunker parameters
//! (the ones `ferry repo init` uses unless told otherwise, or those of `--ferry-chunk`), and each distinct chunk of the new
//! state that occurs nowhere in the old state is sealed the way Ferry stores it (zstd at the
//! repository's default level unless that does not shrink it, then AES-GCM) to get its stored
//! size. A restore into a copy of the old state needs exactly these chunks from the repository,
//! wherever in the target the others sit.

use std::collections::HashSet;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use anyhow::Context;
use ferry_mover::blob::{BlobKind, seal};
use ferry_mover::compression::Compressor;
use ferry_mover::crypto::MasterKey;
use ferry_mover::{ChunkerParams, Id, InitOptions};

/// The distinct chunks of a tree, by content.
pub struct Chunks {
    ids: HashSet<Id>,
    params: ChunkerParams,
    key: MasterKey,
}

/// The chunks of the new state that the old state lacks.
#[derive(Debug, Clone, Default)]
pub struct Differing {
    pub chunks: u64,
    pub raw_bytes: u64,
    /// Their size as Ferry stores them (compressed if that helps, plus nonce and tag).
    pub stored_bytes: u64,
}

impl Chunks {
    /// The chunks of `dir` cut with `params` (Ferry's defaults when `None`).
    pub fn of_tree(dir: &Path, params: Option<ChunkerParams>) -> anyhow::Result<Chunks> {
        let mut c = Chunks {
            ids: HashSet::new(),
            params: params.unwrap_or(InitOptions::default().chunker),
            key: MasterKey::from_bytes([1; 32]),
        };
        let mut ids = HashSet::new();
        c.for_each_chunk(dir, &mut |id, _| {
            ids.insert(id);
        })?;
        c.ids = ids;
        Ok(c)
    }

    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The chunks of `dir` (the new state) not in `self` (the old state), each counted once.
    pub fn differing(&self, dir: &Path) -> anyhow::Result<Differing> {
        let level = InitOptions::default().zstd_level;
        let mut seen = HashSet::new();
        let mut d = Differing::default();
        self.for_each_chunk(dir, &mut |id, data| {
            if !self.ids.contains(&id) && seen.insert(id) {
                d.chunks += 1;
                d.raw_bytes += data.len() as u64;
                // Sealed alone: Ferry's repositories compress with a dictionary, which only
                // makes what they download smaller than this bound.
                d.stored_bytes += seal(
                    &self.key,
                    BlobKind::Data,
                    id,
                    data,
                    &Compressor::Zstd(level),
                )
                .bytes
                .len() as u64;
            }
        })?;
        Ok(d)
    }

    fn for_each_chunk(&self, dir: &Path, f: &mut dyn FnMut(Id, &[u8])) -> anyhow::Result<()> {
        let mut paths = Vec::new();
        collect_files(dir, &mut paths)?;
        paths.sort();
        for p in paths {
            let file = File::open(&p).with_context(|| format!("opening {}", p.display()))?;
            for chunk in self.params.chunks(BufReader::with_capacity(1 << 20, file)) {
                let chunk = chunk.with_context(|| format!("reading {}", p.display()))?;
                f(self.key.blob_id(&chunk.data), &chunk.data);
            }
        }
        Ok(())
    }
}

fn collect_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) -> anyhow::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let ft = entry.file_type()?;
        if ft.is_dir() {
            collect_files(&entry.path(), out)?;
        } else if ft.is_file() {
            out.push(entry.path());
        }
    }
    Ok(())
}
