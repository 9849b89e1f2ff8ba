//! Ferry's data mover: a deduplicating, encrypted, incremental repository of directory trees.
//!
//! It knows nothing of Kubernetes: the node agent (`ferry-agent`) runs it on pod volumes, and the
//! CLI's standalone `ferry repo|volume` commands on any directory. The repository format is
//! specified in `mover/FORMAT.md`.

pub mod backend;
pub mod backup;
pub mod blob;
pub mod chunker;
pub mod compression;
pub mod crypto;
pub mod dictionary;
mod error;
pub mod id;
pub mod index;
pub mod lock;
pub mod maintenance;
pub mod pack;
mod packer;
pub mod progress;
pub mod repository;
pub mod restore;
pub mod root_dir;
pub mod s3;
pub mod snapshot;
pub mod tree;
mod util;

pub use backend::{Backend, LocalBackend, MemoryBackend, S3Backend, S3Options, open_backend};
pub use backup::{BackupOptions, BackupOutcome, ParentChoice, backup};
pub use chunker::ChunkerParams;
pub use crypto::KdfParams;
pub use error::{DisplayChain, Error, Result};
pub use id::Id;
pub use maintenance::{
    CheckOptions, CheckReport, PruneOptions, PruneReport, check, forget, forget_snapshots,
    forget_tagged, prune,
};
pub use progress::{ProgressEvent, ProgressSink, ProgressSnapshot};
pub use repository::{InitOptions, Repository, SnapshotListing};
pub use restore::{RestoreOptions, RestoreSummary, restore, restore_tree};
pub use snapshot::{BackupSummary, RetentionPolicy, Snapshot};
