//! In-memory backend: every record in `BTreeMap`s behind one lock.
//!
//! For tests and `--backend memory`. Nothing survives the process: "durable" means "in this
//! process's memory", so a commit is visible to every later call on the same value as soon as
//! [`Storage::commit`] returns.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use parking_lot::RwLock;

use super::{
    BoxFuture, CommitBatch, CommitOutcome, CommitRecord, Storage, StorageError, VersionId,
    VersionKey,
};

/// A [`Storage`] that keeps everything in memory.
///
/// Every call is applied atomically under one lock, so a commit is all-or-nothing and a
/// duplicate (same idempotency key as an existing commit record) writes none of its versions.
/// Calls never fail except with [`StorageError::Closed`] after [`Storage::close`].
#[derive(Debug, Default)]
pub struct MemoryStorage {
    state: RwLock<State>,
    closed: AtomicBool,
}

/// The three kinds of records of the contract, each in its own map.
#[derive(Debug, Default)]
struct State {
    /// `(user key, version) -> value`.
    versions: BTreeMap<(Bytes, VersionId), Bytes>,
    /// Commit records in id order, as [`Storage::scan_commits`] lists them.
    commits: BTreeMap<VersionId, CommitRecord>,
    /// `idempotency key -> id` of the commit record holding it.
    idempotency: BTreeMap<Bytes, VersionId>,
}

impl MemoryStorage {
    /// An empty, open store.
    pub fn new() -> Self {
        Self::default()
    }

    /// `Err(Closed)` once closed. Called with the lock held, so that no call is applied after
    /// `close` returned.
    fn check_open(&self) -> Result<(), StorageError> {
        if self.closed.load(Ordering::Acquire) {
            Err(StorageError::Closed)
        } else {
            Ok(())
        }
    }

    fn commit_now(&self, batch: CommitBatch) -> Result<CommitOutcome, StorageError> {
        let mut state = self.state.write();
        self.check_open()?;
        let CommitBatch {
            versions, record, ..
        } = batch;
        if state.commits.contains_key(&record.id) {
            // Sent again after an unknown outcome: the first attempt applied.
            return Ok(CommitOutcome::Committed);
        }
        if let Some(key) = &record.idempotency_key {
            if let Some(existing) = state.idempotency.get(key) {
                return Ok(CommitOutcome::Duplicate(*existing));
            }
            state.idempotency.insert(key.clone(), record.id);
        }
        for (key, value) in versions {
            state.versions.insert((key, record.id), value);
        }
        state.commits.insert(record.id, record);
        Ok(CommitOutcome::Committed)
    }

    fn get_now(&self, keys: Vec<VersionKey>) -> Result<Vec<Option<Bytes>>, StorageError> {
        let state = self.state.read();
        self.check_open()?;
        Ok(keys
            .into_iter()
            .map(|k| state.versions.get(&(k.key, k.version)).cloned())
            .collect())
    }

    fn scan_now(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> Result<Vec<CommitRecord>, StorageError> {
        let state = self.state.read();
        self.check_open()?;
        let lower = after.map_or(Bound::Unbounded, Bound::Excluded);
        Ok(state
            .commits
            .range((lower, Bound::Unbounded))
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }

    fn find_now(&self, idempotency_key: &Bytes) -> Result<Option<VersionId>, StorageError> {
        let state = self.state.read();
        self.check_open()?;
        Ok(state.idempotency.get(idempotency_key).copied())
    }

    fn delete_now(
        &self,
        versions: Vec<VersionKey>,
        commits: Vec<VersionId>,
    ) -> Result<(), StorageError> {
        let mut state = self.state.write();
        self.check_open()?;
        for v in versions {
            state.versions.remove(&(v.key, v.version));
        }
        for id in commits {
            let Some(record) = state.commits.remove(&id) else {
                continue;
            };
            if let Some(key) = record.idempotency_key {
                // Only the entry that points at this commit belongs to it.
                if state.idempotency.get(&key) == Some(&id) {
                    state.idempotency.remove(&key);
                }
            }
        }
        Ok(())
    }
}

impl Storage for MemoryStorage {
    fn name(&self) -> &'static str {
        "memory"
    }

    fn commit(&self, batch: CommitBatch) -> BoxFuture<'_, Result<CommitOutcome, StorageError>> {
        Box::pin(async move { self.commit_now(batch) })
    }

    fn get_versions(
        &self,
        keys: Vec<VersionKey>,
    ) -> BoxFuture<'_, Result<Vec<Option<Bytes>>, StorageError>> {
        Box::pin(async move { self.get_now(keys) })
    }

    fn scan_commits(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> BoxFuture<'_, Result<Vec<CommitRecord>, StorageError>> {
        Box::pin(async move { self.scan_now(after, limit) })
    }

    fn find_idempotent(
        &self,
        idempotency_key: Bytes,
    ) -> BoxFuture<'_, Result<Option<VersionId>, StorageError>> {
        Box::pin(async move { self.find_now(&idempotency_key) })
    }

    fn delete(
        &self,
        versions: Vec<VersionKey>,
        commits: Vec<VersionKey>,
    ) -> BoxFuture<'_, Result<(), StorageError>> {
        let commits = commits.into_iter().map(|c| c.version).collect();
        Box::pin(async move { self.delete_now(versions, commits) })
    }

    /// Marks the store closed; every later call (except `close`, which is idempotent) returns
    /// [`StorageError::Closed`]. The records are released when the value is dropped.
    fn close(&self) -> BoxFuture<'_, Result<(), StorageError>> {
        Box::pin(async move {
            // Under the write lock: every call either completed before or sees the flag.
            let _state = self.state.write();
            self.closed.store(true, Ordering::Release);
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::MemoryStorage;

    crate::storage_conformance_tests!(|| (Arc::new(MemoryStorage::new()), ()));
}
