//! Object stores behind one trait: a local directory (the embedded default), S3, and an in-memory
//! store for tests.
//!
//! The trait is synchronous on purpose: the data mover's pipeline runs on OS threads, and the S3
//! backend drives its own small tokio runtime. Callers inside an async runtime use
//! `spawn_blocking`.

mod local;
mod memory;
mod s3;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

pub use local::LocalBackend;
pub use memory::MemoryBackend;
pub use s3::{S3Backend, S3Options};

use crate::error::{IoContext, Result};

/// What an object is; each kind lives under its own prefix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    Config,
    Key,
    Pack,
    Index,
    Snapshot,
    Lock,
    Dictionary,
}

impl Kind {
    pub fn prefix(self) -> &'static str {
        match self {
            Kind::Config => "",
            Kind::Key => "keys",
            Kind::Pack => "data",
            Kind::Index => "index",
            Kind::Snapshot => "snapshots",
            Kind::Lock => "locks",
            Kind::Dictionary => "dictionaries",
        }
    }

    /// The object's path relative to the repository root. Packs are spread over 256 directories so
    /// that no local directory holds millions of entries.
    pub fn path_of(self, name: &str) -> String {
        match self {
            Kind::Config => name.to_owned(),
            Kind::Pack => format!("data/{}/{name}", &name[..2.min(name.len())]),
            other => format!("{}/{name}", other.prefix()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct ObjectInfo {
    pub name: String,
    pub size: u64,
    pub modified: Option<SystemTime>,
}

pub trait Backend: Send + Sync + std::fmt::Debug {
    /// Where the repository is, as the user would write it.
    fn location(&self) -> String;

    fn put(&self, kind: Kind, name: &str, bytes: &[u8]) -> Result<()>;

    /// Stores the content of a local file; the pack writer streams packs to temp files so that
    /// they never sit whole in memory. The file may be moved (and so consumed) by the backend.
    fn put_file(&self, kind: Kind, name: &str, path: &Path) -> Result<()> {
        let bytes = std::fs::read(path).at(path)?;
        self.put(kind, name, &bytes)
    }

    /// Stores `bytes` under `name` only if nothing is stored there yet, atomically: of writers
    /// racing for the same name, exactly one creates it. Returns whether this call did.
    fn put_new(&self, kind: Kind, name: &str, bytes: &[u8]) -> Result<bool>;

    fn get(&self, kind: Kind, name: &str) -> Result<Vec<u8>>;

    fn get_range(&self, kind: Kind, name: &str, offset: u64, length: u64) -> Result<Vec<u8>>;

    fn list(&self, kind: Kind) -> Result<Vec<ObjectInfo>>;

    fn delete(&self, kind: Kind, name: &str) -> Result<()>;

    fn exists(&self, kind: Kind, name: &str) -> Result<bool> {
        match self.get_range(kind, name, 0, 1) {
            Ok(_) => Ok(true),
            Err(crate::Error::NotFound { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    /// Removes what interrupted writes left behind that is older than `older_than` (temp files of
    /// a local repository, unfinished multipart uploads on S3); returns how many went.
    fn remove_leftovers(&self, older_than: std::time::Duration) -> Result<u64> {
        let _ = older_than;
        Ok(0)
    }

    /// How long after a write another writer's racing write of the same name may still land:
    /// [`crate::Repository::init`] reads its config back after this long, for stores that may
    /// ignore [`Backend::put_new`]'s condition. Zero where the condition is atomic for sure.
    fn settle_time(&self) -> std::time::Duration {
        std::time::Duration::ZERO
    }

    /// A directory on the same filesystem as the stored objects, when there is one, so that
    /// [`Backend::put_file`] can rename instead of copying.
    fn temp_dir(&self) -> Option<PathBuf> {
        None
    }
}

/// Opens the backend a `--repo` value names: `s3://bucket/prefix` or a local path.
pub fn open_backend(repo: &str, s3: &S3Options) -> Result<Arc<dyn Backend>> {
    if let Some(rest) = repo.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(crate::Error::InvalidArgument(format!(
                "{repo:?} names no bucket; write s3://BUCKET/PREFIX"
            )));
        }
        Ok(Arc::new(S3Backend::new(
            bucket,
            prefix.trim_matches('/'),
            s3,
        )?))
    } else if repo.contains("://") {
        Err(crate::Error::InvalidArgument(format!(
            "{repo:?}: unknown repository scheme; use a local path or s3://bucket/prefix"
        )))
    } else {
        Ok(Arc::new(LocalBackend::new(repo)))
    }
}
