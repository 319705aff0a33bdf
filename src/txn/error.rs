//! Why a transaction did not commit.

use std::time::Duration;

use crate::storage::{StorageError, VersionId};

/// Why a transaction did not commit.
#[derive(Debug, Clone, thiserror::Error)]
pub enum TxnError {
    /// A key read by a read-modify-write command changed before commit (first committer
    /// wins). Nothing was written; the transaction may be re-executed from scratch.
    #[error("transaction conflict: a key it read was changed by a concurrent commit")]
    Conflict,
    /// A watched key changed after WATCH. Nothing was written.
    #[error("a watched key was changed")]
    WatchFailed,
    /// A commit with the same idempotency key already exists (its version id is given).
    #[error("a transaction with this idempotency key already committed")]
    Duplicate(VersionId),
    /// The transaction's snapshot is older than the configured limit: what it could read
    /// may have been collected. Nothing was written; it may be run again.
    #[error("snapshot too old: the transaction read a snapshot taken more than {} ms ago", .0.as_millis())]
    SnapshotTooOld(Duration),
    /// The backend refused the commit because this node's lease had expired (the backend was
    /// unreachable for longer than the lease, or the node was paused); the node rejoined.
    /// Nothing was written; it may be run again.
    #[error(
        "this node's lease had expired (it has rejoined); nothing was committed, run it again"
    )]
    Rejoined,
    /// The backend failed; see [`StorageError`] for whether anything was committed.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A bug: the commit task ended without an outcome.
    #[error("internal error: {0}")]
    Internal(String),
}

impl TxnError {
    /// Whether the transaction can simply run again from scratch, its client having seen
    /// nothing of it (write conflicts, revoked snapshots, a commit refused while its node
    /// rejoined).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            TxnError::Conflict | TxnError::SnapshotTooOld(_) | TxnError::Rejoined
        )
    }
}
