//! Deletes (of versions and of commit records with their idempotency entries), the
//! reclamation of the versions of cluster commits that never got their record, found from
//! their pending markers, and the ending of locks left by commits across shards.

use std::time::Duration;

use bytes::Bytes;
use fred::types::Value;

use super::client::{bytes, frame_array, frame_bytes, id_arg, text};
use super::layout::decode_key_list;
use super::RedisStorage;
use crate::storage::{record, StorageError, VersionId, VersionKey};

/// Most commit records one delete script removes.
const DELETE_PAGE: usize = 1000;
/// Most pending markers one reclamation script takes.
const RECLAIM_PAGE: usize = 1000;

impl RedisStorage {
    /// [`Storage::delete`](crate::storage::Storage::delete).
    pub(super) async fn delete_now(
        &self,
        versions: Vec<VersionKey>,
        commits: Vec<VersionKey>,
    ) -> Result<(), StorageError> {
        self.check_open()?;
        // A key too long to encode was never stored.
        let keys: Vec<Bytes> = versions
            .iter()
            .filter_map(|v| self.layout.version(&v.key, v.version).ok())
            .collect();
        if !keys.is_empty() {
            self.delete_keys(&keys)
                .await
                .map_err(|e| e.plain(self.backend))?;
        }
        let mut by_shard: Vec<Vec<VersionId>> = vec![Vec::new(); self.layout.shards.len()];
        for commit in commits {
            by_shard[self.layout.shard_of(&commit.key)].push(commit.version);
        }
        for (shard, ids) in by_shard.iter().enumerate() {
            for chunk in ids.chunks(DELETE_PAGE) {
                self.delete_records(shard, chunk).await?;
            }
        }
        Ok(())
    }

    /// Reads the records (for their idempotency keys), then deletes them, their log entries
    /// and the idempotency entries that still name them, in one script.
    async fn delete_records(&self, shard: usize, ids: &[VersionId]) -> Result<(), StorageError> {
        if ids.is_empty() {
            return Ok(());
        }
        let backend = self.backend;
        let s = &self.layout.shards[shard];
        let id_values: Vec<Value> = ids.iter().map(|id| id_arg(*id)).collect();
        let mut request = vec![bytes(&s.rec)];
        request.extend(id_values.iter().cloned());
        let stored = self
            .call(s.slot, "HMGET", request)
            .await
            .and_then(frame_array)
            .map_err(|e| e.plain(backend))?;
        let mut keys = vec![bytes(&s.rec), bytes(&s.log), bytes(&s.tail)];
        let mut args = vec![text(ids.len().to_string())];
        args.extend(id_values);
        let mut owners = Vec::new();
        for (id, stored) in ids.iter().zip(stored) {
            let Some(stored) = frame_bytes(stored).map_err(|e| e.plain(backend))? else {
                continue;
            };
            if let Some(key) = record::decode(backend, *id, stored)?.idempotency_key {
                keys.push(Value::Bytes(s.idempotency(&key)));
                owners.push(id_arg(*id));
            }
        }
        args.extend(owners);
        self.eval(&self.scripts.delete, s.slot, keys, args)
            .await
            .map_err(|e| e.plain(backend))?;
        Ok(())
    }

    /// [`Storage::reclaim_orphans`](crate::storage::Storage::reclaim_orphans): takes the
    /// markers older than `older_than`, deletes their versions, then forgets the markers, a
    /// page at a time. A reclamation that stops half way leaves taken markers, which the next
    /// one finishes.
    /// Every shard is reclaimed in turn, and then the locks its commits across shards left
    /// behind are ended.
    pub(super) async fn reclaim_now(&self, older_than: Duration) -> Result<u64, StorageError> {
        self.check_open()?;
        let mut deleted = 0;
        for shard in 0..self.layout.shards.len() {
            deleted += self.reclaim_shard(shard, older_than).await?;
        }
        if self.layout.shards.len() > 1 {
            for shard in 0..self.layout.shards.len() {
                self.end_stale_locks(shard).await?;
            }
        }
        Ok(deleted)
    }

    /// Resolves the locks of `shard` whose commit is decided (see
    /// [`RedisStorage::resolve_lock`]): a commit whose node died after it prepared, or
    /// after it committed but before it ended its locks, leaves them until then.
    async fn end_stale_locks(&self, shard: usize) -> Result<(), StorageError> {
        let backend = self.backend;
        let s = &self.layout.shards[shard];
        let held = self
            .call(s.slot, "HGETALL", vec![bytes(&s.txlocks)])
            .await
            .and_then(frame_array)
            .map_err(|e| e.plain(backend))?;
        let mut held = held.into_iter();
        while let (Some(id), Some(list)) = (held.next(), held.next()) {
            let id = frame_bytes(id).map_err(|e| e.plain(backend))?;
            let list = frame_bytes(list).map_err(|e| e.plain(backend))?;
            let (Some(id), Some(list)) = (id, list) else {
                continue;
            };
            let Some(id) = VersionId::from_bytes(&id) else {
                continue;
            };
            let keys = decode_key_list(&list).map_err(|e| self.corrupt(e))?;
            let Some(key) = keys.first() else {
                continue;
            };
            let lock = self
                .call(s.slot, "HGET", vec![bytes(&s.locks), bytes(key)])
                .await
                .and_then(frame_bytes)
                .map_err(|e| e.plain(backend))?;
            match lock.and_then(|l| super::commit::parse_lock(&l, key.clone())) {
                Some(lock) if lock.id == id => {
                    self.resolve_lock(shard, &lock).await?;
                }
                // Scripts take and end a commit's locks in a shard together: this is no
                // state they leave.
                _ => {
                    tracing::warn!(commit = ?id, "a commit's lock list names a key it does not lock; left alone")
                }
            }
        }
        Ok(())
    }

    async fn reclaim_shard(&self, shard: usize, older_than: Duration) -> Result<u64, StorageError> {
        let backend = self.backend;
        let s = &self.layout.shards[shard];
        let older_ms = u64::try_from(older_than.as_millis()).unwrap_or(u64::MAX);
        let mut deleted = 0u64;
        loop {
            let items = self
                .eval(
                    &self.scripts.reclaim,
                    s.slot,
                    vec![bytes(&s.rec), bytes(&s.pending), bytes(&s.pendkeys)],
                    vec![text(older_ms.to_string()), text(RECLAIM_PAGE.to_string())],
                )
                .await
                .and_then(frame_array)
                .map_err(|e| e.plain(backend))?;
            if items.is_empty() {
                return Ok(deleted);
            }
            let taken = items.len() / 2;
            let mut ids = Vec::with_capacity(taken);
            let mut keys = Vec::new();
            let mut items = items.into_iter();
            while let (Some(id), Some(list)) = (items.next(), items.next()) {
                let id = frame_bytes(id)
                    .map_err(|e| e.plain(backend))?
                    .ok_or_else(|| self.corrupt("pending marker id is nil"))?;
                let list = frame_bytes(list)
                    .map_err(|e| e.plain(backend))?
                    .unwrap_or_default();
                keys.extend(decode_key_list(&list).map_err(|e| self.corrupt(e))?);
                ids.push(Value::Bytes(id));
            }
            if !keys.is_empty() {
                deleted += self
                    .delete_keys(&keys)
                    .await
                    .map_err(|e| e.plain(backend))?;
            }
            self.eval(
                &self.scripts.forget,
                s.slot,
                vec![bytes(&s.pending), bytes(&s.pendkeys)],
                ids,
            )
            .await
            .map_err(|e| e.plain(backend))?;
            if taken < RECLAIM_PAGE {
                return Ok(deleted);
            }
        }
    }
}
