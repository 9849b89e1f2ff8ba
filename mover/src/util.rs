//! Small helpers shared by several modules.

use std::io::Write;
use std::path::Path;

use crate::error::{IoContext, Result};

pub fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

pub fn username() -> String {
    std::env::var("USER").unwrap_or_else(|_| rustix::process::getuid().as_raw().to_string())
}

/// Writes `bytes` to `path` so that a crash leaves either the old file or the new one, never a
/// torn one: a temp file in the same directory, fsync, rename, fsync of the directory.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let temp = durable_temp_file(dir, bytes)?;
    temp.persist(path)
        .map_err(|error| crate::Error::io(path, error.error))?;
    sync_dir(dir)
}

/// `bytes` in a temp file in `dir`, written and fsynced, ready to be persisted under its name.
pub fn durable_temp_file(dir: &Path, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
    let mut temp = tempfile::Builder::new()
        .prefix(".tmp-")
        .tempfile_in(dir)
        .at(dir)?;
    temp.write_all(bytes).at(temp.path().to_owned())?;
    temp.as_file().sync_all().at(temp.path().to_owned())?;
    Ok(temp)
}

pub fn sync_dir(dir: &Path) -> Result<()> {
    std::fs::File::open(dir).and_then(|d| d.sync_all()).at(dir)
}

/// A counting semaphore on bytes: producers wait while too many bytes are in flight, so that
/// memory use does not grow with the size of the data.
pub struct ByteBudget {
    limit: u64,
    used: std::sync::Mutex<u64>,
    freed: std::sync::Condvar,
}

impl ByteBudget {
    pub fn new(limit: u64) -> ByteBudget {
        ByteBudget {
            limit,
            used: std::sync::Mutex::new(0),
            freed: std::sync::Condvar::new(),
        }
    }

    /// Waits until `bytes` fit. A request larger than the whole budget waits for an empty budget,
    /// so it still makes progress.
    pub fn acquire(&self, bytes: u64) {
        let mut used = self.used.lock().expect("budget lock");
        while *used > 0 && *used + bytes > self.limit {
            used = self.freed.wait(used).expect("budget lock");
        }
        *used += bytes;
    }

    pub fn release(&self, bytes: u64) {
        let mut used = self.used.lock().expect("budget lock");
        *used = used.saturating_sub(bytes);
        self.freed.notify_all();
    }
}

pub fn available_cores() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
}

/// zstd-decompresses `compressed`, refusing output beyond `limit` bytes: memory grows with what
/// the data really expands to, never with what a header claims. For objects, whose length nothing
/// authenticated gives beforehand (blobs: [`crate::compression::decompress`]).
pub fn decompress_bounded(compressed: &[u8], limit: usize) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    zstd::stream::read::Decoder::new(compressed)?
        .take(limit as u64 + 1)
        .read_to_end(&mut out)?;
    if out.len() > limit {
        return Err(std::io::Error::other(format!(
            "expands beyond {limit} bytes"
        )));
    }
    Ok(out)
}
