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

    #[error("{0}")]
    Archive(String),

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
        source: ferry_agent::Error,
    },

    #[error("{0}")]
    Json(#[from] serde_json::Error),

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
            Error::Archive(_) => "archive",
            Error::Snapshot { .. } => "volume_snapshots",
            Error::Validation(_) => "validation",
            Error::Repository { .. } => "repository",
            Error::Json(_) => "json",
            Error::MissingRepositoryPassword(_) => "missing_repository_password",
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
            | Error::Archive(_)
            | Error::Validation(_)
            | Error::Json(_)
            | Error::MissingRepositoryPassword(_) => false,
        }
    }
}
