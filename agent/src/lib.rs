//! Ferry's node agent and its data mover.
//!
//! The agent runs on every node, reads pod volumes from the kubelet's directory and stores them in
//! a deduplicating, encrypted repository. The same data mover backs the CLI's standalone
//! `ferry volume` commands. The repository format is specified in `agent/FORMAT.md`; the daemon
//! that serves the controller is [`daemon`].

pub mod backend;
pub mod backup;
pub mod blob;
pub mod chunker;
pub mod crypto;
pub mod daemon;
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
pub mod snapshot;
pub mod tree;
mod util;

pub use backend::{Backend, LocalBackend, MemoryBackend, S3Backend, S3Options, open_backend};
pub use backup::{BackupOptions, BackupOutcome, ParentChoice, backup};
pub use chunker::ChunkerParams;
pub use crypto::KdfParams;
pub use error::{Error, Result};
pub use id::Id;
pub use maintenance::{
    CheckOptions, CheckReport, PruneOptions, PruneReport, check, forget, forget_snapshots,
    forget_tagged, prune,
};
pub use progress::{ProgressEvent, ProgressSink, ProgressSnapshot};
pub use repository::{InitOptions, Repository, SnapshotListing};
pub use restore::{RestoreOptions, RestoreSummary, restore, restore_tree};
pub use snapshot::{BackupSummary, RetentionPolicy, Snapshot};
