//! The controller's one error type. Every variant says whether trying again can help, so
//! reconcilers requeue transient failures and fail permanent ones with a reason.

use thiserror::Error;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Error)]
pub enum Error {
    #[error("Kubernetes API: {0}")]
    Kube(#[from] kube::Error),

    #[error("{what} not found")]
    NotFound { what: String },

    #[error("object storage: {message}")]
    Storage { message: String, retryable: bool },

    /// A backup's archive (or a file stored beside it) is not what Ferry writes: damaged or
    /// planted. Nothing is restored from it.
    #[error("the backup archive is malformed: {0}")]
    MalformedArchive(String),

    /// The archive was written by a Ferry whose format this one cannot read.
    #[error(
        "the archive has format version {found}, which this controller (format {supported}) cannot read; upgrade Ferry"
    )]
    ArchiveVersion {
        found: String,
        supported: &'static str,
    },

    /// An object read back from a backup is not valid JSON.
    #[error("{what} is not valid JSON: {source}")]
    InvalidJson {
        what: String,
        source: serde_json::Error,
    },

    /// Reading or writing a local file or stream (the archive's spool, gzip) failed.
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },

    /// A task that work was handed to ended without an answer: it panicked or was cancelled.
    #[error("{task} stopped: {source}")]
    Task {
        task: &'static str,
        source: tokio::task::JoinError,
    },

    /// One side of the archive's writing pipeline ended early; its own error says why.
    #[error("{0} stopped early")]
    PipelineStopped(&'static str),

    /// Issuing the certificates of the agent API failed.
    #[error("issuing the agent API certificates: {0}")]
    Certificates(#[source] Box<dyn std::error::Error + Send + Sync>),

    /// A call to a snapshot provider (EC2) failed.
    #[error("volume snapshots: {message}")]
    Snapshot { message: String, retryable: bool },

    /// The spec cannot be carried out as written; every problem is listed.
    #[error("invalid spec: {}", .0.join("; "))]
    Validation(Vec<String>),

    /// The data mover failed on a pod volume repository.
    #[error("repository {url}: {source}")]
    Repository {
        url: String,
        source: ferry_mover::Error,
    },

    #[error("{0}")]
    Json(#[from] serde_json::Error),

    /// An object read from the bucket is not sealed with this installation's key, or not under
    /// its own name: tampered with, swapped, cut short or planted. Nothing is read from it.
    #[error(
        "{what} in the bucket is refused: {reason}. It was changed, swapped or planted, or written by another installation (whose key this one lacks) or by a Ferry from before backups were sealed"
    )]
    Unsealed { what: String, reason: &'static str },

    /// A running operation's volume state in the cluster (see `volumes::state`) is gone or not
    /// its own: nothing else may say which volumes it follows, so it cannot go on.
    #[error(
        "the volume state of {operation} is lost: {reason}. Its volumes cannot be followed; run it again"
    )]
    VolumeStateLost { operation: String, reason: String },

    /// The node agents' repositories exist but their password does not: the user must bring it.
    #[error("{0}")]
    MissingRepositoryPassword(String),
}

impl Error {
    /// The kind of error, as the `error` label of `ferry_reconcile_failures_total`: a few fixed
    /// values, never a message (which would make a series per failure).
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(_) => "kubernetes",
            Error::NotFound { .. } => "not_found",
            Error::Storage { .. } => "object_storage",
            Error::MalformedArchive(_) | Error::InvalidJson { .. } => "malformed_archive",
            Error::ArchiveVersion { .. } => "archive_version",
            Error::Io { .. } => "io",
            Error::Task { .. } => "task",
            Error::PipelineStopped(_) => "archive",
            Error::Certificates(_) => "certificates",
            Error::Snapshot { .. } => "volume_snapshots",
            Error::Validation(_) => "validation",
            Error::Repository { .. } => "repository",
            Error::Json(_) => "json",
            Error::MissingRepositoryPassword(_) => "missing_repository_password",
            Error::Unsealed { .. } => "unsealed",
            Error::VolumeStateLost { .. } => "volume_state",
        }
    }

    /// Whether the same call can succeed later without anyone changing anything.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Kube(kube::Error::Api(status)) => {
                status.code == 429 || status.code >= 500 || status.code == 409
            }
            Error::Kube(_) => true,
            Error::Storage { retryable, .. } | Error::Snapshot { retryable, .. } => *retryable,
            Error::Repository { source, .. } => source.is_retryable(),
            Error::NotFound { .. }
            | Error::MalformedArchive(_)
            | Error::Unsealed { .. }
            | Error::VolumeStateLost { .. }
            | Error::ArchiveVersion { .. }
            | Error::InvalidJson { .. }
            | Error::Io { .. }
            | Error::Task { .. }
            | Error::PipelineStopped(_)
            | Error::Certificates(_)
            | Error::Validation(_)
            | Error::Json(_)
            | Error::MissingRepositoryPassword(_) => false,
        }
    }
}
