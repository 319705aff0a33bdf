//! Reads: one redb read transaction each, run on Tokio's blocking pool. A read sees every
//! commit acknowledged before it began.

use std::ops::Bound;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use redb::{Database, ReadableDatabase};

use super::error::{failure, OrIo, BACKEND};
use super::layout::{COMMITS, IDEMPOTENCY, VERSIONS};
use super::EmbeddedStorage;
use crate::storage::{record, CommitRecord, StorageError, VersionId};

impl EmbeddedStorage {
    /// Runs `read` on the open database, on the blocking pool. Fails with
    /// [`StorageError::Closed`] once closed, and with [`StorageError::Unavailable`] while the
    /// database is being reopened after a write failure.
    pub(super) async fn read<T: Send + 'static>(
        &self,
        read: impl FnOnce(&Database) -> Result<T, StorageError> + Send + 'static,
    ) -> Result<T, StorageError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(StorageError::Closed);
        }
        let db = self.shared.db.read().clone();
        let Some(db) = db else {
            return Err(if self.closed.load(Ordering::Acquire) {
                StorageError::Closed
            } else {
                self.shared.unreadable()
            });
        };
        tokio::task::spawn_blocking(move || read(&db))
            .await
            .map_err(|e| {
                StorageError::Io(failure(format!("storage read task failed: {e}")).because(e))
            })?
    }
}

/// The value of every `versions` table key, in order; `None` for a key not stored (a `None`
/// key stands for one too long to encode, so never stored).
pub(super) fn get_versions(
    db: &Database,
    keys: &[Option<Vec<u8>>],
) -> Result<Vec<Option<Bytes>>, StorageError> {
    let txn = db.begin_read().or_io("begin read")?;
    let table = txn.open_table(VERSIONS).or_io("open versions")?;
    keys.iter()
        .map(|key| {
            let Some(key) = key else { return Ok(None) };
            let value = table.get(key.as_slice()).or_io("read version")?;
            Ok(value.map(|v| Bytes::copy_from_slice(v.value())))
        })
        .collect()
}

/// Up to `limit` commit records with id greater than `after` (all if `None`), in id order.
pub(super) fn scan_commits(
    db: &Database,
    after: Option<VersionId>,
    limit: usize,
) -> Result<Vec<CommitRecord>, StorageError> {
    let txn = db.begin_read().or_io("begin read")?;
    let table = txn.open_table(COMMITS).or_io("open commits")?;
    let after = after.map(VersionId::to_bytes);
    let lower = match &after {
        Some(after) => Bound::Excluded(after.as_slice()),
        None => Bound::Unbounded,
    };
    let range = table
        .range::<&[u8]>((lower, Bound::Unbounded))
        .or_io("scan commits")?;
    let mut records = Vec::with_capacity(limit.min(1024));
    for entry in range.take(limit) {
        let (key, value) = entry.or_io("scan commits")?;
        let id = record::decode_id(BACKEND, key.value(), "commit id")?;
        let bytes = Bytes::copy_from_slice(value.value());
        records.push(record::decode(BACKEND, id, bytes)?);
    }
    Ok(records)
}

/// The id of the commit holding `idempotency_key`, if any.
pub(super) fn find_idempotent(
    db: &Database,
    idempotency_key: &[u8],
) -> Result<Option<VersionId>, StorageError> {
    let txn = db.begin_read().or_io("begin read")?;
    let table = txn.open_table(IDEMPOTENCY).or_io("open idempotency")?;
    let entry = table.get(idempotency_key).or_io("read idempotency")?;
    entry
        .map(|id| record::decode_id(BACKEND, id.value(), "idempotency entry"))
        .transpose()
}
