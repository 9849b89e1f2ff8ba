//! The crate's one error type. Each variant says whether trying again can help, so that callers
//! (the CLI, the agent's gRPC service) can decide between a retry and a clear report.

use std::path::PathBuf;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The object store failed in a way that may pass (network, throttling, a 5xx).
    #[error("object store: {message}")]
    BackendTransient { message: String },

    /// The object store refused the request for good (access denied, no such bucket...).
    #[error("object store: {message}")]
    Backend { message: String },

    #[error("object {name} not found in the repository")]
    NotFound { name: String },

    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "wrong password: no key slot of this repository opens with it (the repository was not changed)"
    )]
    WrongPassword,

    #[error("no Ferry repository at {location}: create one with `ferry repo init`")]
    NoRepository { location: String },

    #[error("a repository already exists at {location}; refusing to overwrite it")]
    RepositoryExists { location: String },

    /// Authenticated decryption or an id check failed: the stored bytes are not what was written.
    #[error("{what} is damaged: {reason}")]
    Corrupt { what: String, reason: String },

    #[error("repository format: {0}")]
    Format(String),

    #[error("the repository is locked by {holder}; {advice}")]
    Locked { holder: String, advice: String },

    /// This process's own lock can no longer be relied on; it stopped before writing anything
    /// that depends on it.
    #[error("the repository lock was lost: {reason}; stopped without saving, try again")]
    LockLost { reason: String },

    #[error("invalid argument: {0}")]
    InvalidArgument(String),

    #[error("refusing unsafe path in snapshot: {0}")]
    UnsafePath(String),

    /// Stopped because the caller asked (the agent's Cancel); what was written stays consistent.
    #[error("cancelled")]
    Cancelled,

    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Whether the same operation, tried again later, may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::BackendTransient { .. } | Error::Locked { .. } | Error::LockLost { .. } => true,
            Error::Io { source, .. } => matches!(
                source.kind(),
                std::io::ErrorKind::Interrupted
                    | std::io::ErrorKind::TimedOut
                    | std::io::ErrorKind::WouldBlock
            ),
            _ => false,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io {
            path: path.into(),
            source,
        }
    }

    /// The same error, its message prefixed with what was being done; the variant (and so
    /// whether a retry can help) stays.
    pub fn context(self, context: impl std::fmt::Display) -> Error {
        match self {
            Error::BackendTransient { message } => Error::BackendTransient {
                message: format!("{context}: {message}"),
            },
            Error::Backend { message } => Error::Backend {
                message: format!("{context}: {message}"),
            },
            Error::Corrupt { what, reason } => Error::Corrupt {
                what: format!("{context}: {what}"),
                reason,
            },
            Error::Format(message) => Error::Format(format!("{context}: {message}")),
            Error::Other(message) => Error::Other(format!("{context}: {message}")),
            other => other,
        }
    }

    pub(crate) fn corrupt(what: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Corrupt {
            what: what.into(),
            reason: reason.into(),
        }
    }
}

/// Attaches a path to an `io::Error`.
/// An error and its causes on one line (`error: cause: cause`): a transport error says nothing
/// until its sources say a certificate or a connection was refused.
pub struct DisplayChain<'a>(pub &'a dyn std::error::Error);

impl std::fmt::Display for DisplayChain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(error) = source {
            write!(f, ": {error}")?;
            source = error.source();
        }
        Ok(())
    }
}

pub(crate) trait IoContext<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T>;
}

impl<T> IoContext<T> for std::io::Result<T> {
    fn at(self, path: impl Into<PathBuf>) -> Result<T> {
        self.map_err(|source| Error::io(path, source))
    }
}
