//! How the embedded store reports failures: every error names the backend ([`BACKEND`]) and
//! keeps redb's or the system's error as its source.

use std::path::Path;

use redb::DatabaseError;

use crate::storage::{Failure, StorageError};

/// The backend's [`Storage::name`](crate::storage::Storage::name), named by all its errors.
pub(super) const BACKEND: &str = "embedded";

/// A failure of this backend, described by `message`.
pub(super) fn failure(message: impl Into<String>) -> Failure {
    Failure::new(BACKEND, message)
}

/// Maps redb errors into [`StorageError`]: corruption found by redb is `Corrupt`, the rest `Io`.
pub(super) trait OrIo<T> {
    /// `what` says what was being done, first in the message; redb's error is the source.
    fn or_io(self, what: &str) -> Result<T, StorageError>;
}

impl<T, E: Into<redb::Error>> OrIo<T> for Result<T, E> {
    fn or_io(self, what: &str) -> Result<T, StorageError> {
        self.map_err(|e| {
            let e: redb::Error = e.into();
            let (corrupt, message) = match &e {
                redb::Error::Corrupted(message) => (true, format!("{what}: {message}")),
                other => (false, format!("{what}: {other}")),
            };
            let failure = failure(message).because(e);
            if corrupt {
                StorageError::Corrupt(failure)
            } else {
                StorageError::Io(failure)
            }
        })
    }
}

/// The error of opening the database file at `path`: `Unavailable` if another owner holds it,
/// `Corrupt` if it is not a readable store, `Io` otherwise.
pub(super) fn open_error(path: &Path, error: DatabaseError) -> StorageError {
    match &error {
        DatabaseError::DatabaseAlreadyOpen => StorageError::Unavailable(
            failure(format!(
                "{} is already open (by another aft process, or another store in this one); \
                 an embedded store has a single owner",
                path.display()
            ))
            .because(error),
        ),
        DatabaseError::UpgradeRequired(version) => StorageError::Io(
            failure(format!(
                "{}: redb file format {version} must be upgraded before this build can open it",
                path.display()
            ))
            .because(error),
        ),
        DatabaseError::Storage(redb::StorageError::Corrupted(message)) => {
            StorageError::Corrupt(failure(format!("{}: {message}", path.display())).because(error))
        }
        // redb reports a file that is not a database (bad magic number) this way.
        DatabaseError::Storage(redb::StorageError::Io(e))
            if e.kind() == std::io::ErrorKind::InvalidData =>
        {
            StorageError::Corrupt(failure(format!("{}: {e}", path.display())).because(error))
        }
        other => StorageError::Io(
            failure(format!("cannot open {}: {other}", path.display())).because(error),
        ),
    }
}
