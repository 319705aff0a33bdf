//! The one error type of every backend: what happened (and so whether a retry is safe), which
//! backend said so, and the underlying error.

use std::error::Error;
use std::fmt;
use std::sync::Arc;

/// What a backend reports about a failed call: which backend, a message, and the error that
/// caused it (a client library's, an I/O error…), kept as the [`Error::source`].
#[derive(Clone, Debug)]
pub struct Failure {
    backend: &'static str,
    message: String,
    source: Option<Arc<dyn Error + Send + Sync>>,
}

impl Failure {
    /// A failure of `backend` (its [`Storage::name`](super::Storage::name)).
    pub fn new(backend: &'static str, message: impl Into<String>) -> Self {
        Failure {
            backend,
            message: message.into(),
            source: None,
        }
    }

    /// The same failure, caused by `source`.
    pub fn because(mut self, source: impl Error + Send + Sync + 'static) -> Self {
        self.source = Some(Arc::new(source));
        self
    }

    /// The backend that failed (empty if the failure was not attributed to one).
    pub fn backend(&self) -> &'static str {
        self.backend
    }

    /// What went wrong, in the backend's words.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.backend.is_empty() || self.message.starts_with(self.backend) {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.backend, self.message)
        }
    }
}

impl Error for Failure {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.source.as_deref().map(|e| e as &(dyn Error + 'static))
    }
}

/// A message not attributed to a backend (tests, wrappers that only pass failures on).
impl From<String> for Failure {
    fn from(message: String) -> Self {
        Failure::new("", message)
    }
}

impl From<&str> for Failure {
    fn from(message: &str) -> Self {
        Failure::new("", message)
    }
}

/// Errors of every backend, in one enum. Each says whether the caller may retry and whether
/// anything may have been committed.
#[derive(Debug, Clone)]
pub enum StorageError {
    /// The backend could not be reached or refused the request; nothing was committed.
    Unavailable(Failure),
    /// The backend failed while serving the request; nothing was committed.
    Io(Failure),
    /// A commit may or may not have been applied (e.g. a timeout after sending it).
    OutcomeUnknown(Failure),
    /// Stored data could not be decoded.
    Corrupt(Failure),
    /// The backend was closed.
    Closed,
    /// The node's lease expired: the backend takes no commit and no renewal from it until it
    /// rejoins (other nodes may have reclaimed what it left in flight). Nothing was written.
    Fenced(Failure),
}

impl StorageError {
    /// Whether the same request may be sent again.
    pub fn is_retryable(&self) -> bool {
        matches!(self, StorageError::Unavailable(_))
    }

    /// The failure's details (all but [`StorageError::Closed`] have some).
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            StorageError::Unavailable(f)
            | StorageError::Io(f)
            | StorageError::OutcomeUnknown(f)
            | StorageError::Corrupt(f)
            | StorageError::Fenced(f) => Some(f),
            StorageError::Closed => None,
        }
    }

    /// The backend that failed, if known.
    pub fn backend(&self) -> Option<&'static str> {
        self.failure()
            .map(Failure::backend)
            .filter(|b| !b.is_empty())
    }
}

impl fmt::Display for StorageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StorageError::Unavailable(e) => write!(f, "backend unavailable: {e}"),
            StorageError::Io(e) => write!(f, "backend I/O error: {e}"),
            StorageError::OutcomeUnknown(e) => write!(f, "commit outcome unknown: {e}"),
            StorageError::Corrupt(e) => write!(f, "corrupt data in backend: {e}"),
            StorageError::Closed => f.write_str("backend is closed"),
            StorageError::Fenced(e) => write!(f, "node fenced: {e}"),
        }
    }
}

impl Error for StorageError {
    fn source(&self) -> Option<&(dyn Error + 'static)> {
        self.failure().and_then(Error::source)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_error_names_its_backend_and_keeps_its_source() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        let e = StorageError::Unavailable(Failure::new("redis", "cannot connect").because(io));
        assert_eq!(e.to_string(), "backend unavailable: redis: cannot connect");
        assert_eq!(e.backend(), Some("redis"));
        assert_eq!(
            e.source().map(|s| s.to_string()).as_deref(),
            Some("refused")
        );
        assert!(e.is_retryable());
        let plain = StorageError::Io("disk full".into());
        assert_eq!(plain.to_string(), "backend I/O error: disk full");
        assert_eq!(plain.backend(), None);
        assert!(!StorageError::OutcomeUnknown("lost".into()).is_retryable());
    }
}
