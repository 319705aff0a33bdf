//! Reads: versions (one `MGET` per slot), the commit log (a script per page), idempotency
//! entries.

use bytes::Bytes;
use fred::types::Value;

use super::client::{bytes, frame_array, frame_bytes, text};
use super::RedisStorage;
use crate::storage::{record, CommitRecord, StorageError, VersionId, VersionKey};

/// Most records one scan script returns (Lua's `unpack` has a stack limit).
const SCAN_PAGE: usize = 1000;

impl RedisStorage {
    /// [`Storage::get_versions`](crate::storage::Storage::get_versions).
    pub(super) async fn get_now(
        &self,
        requested: Vec<VersionKey>,
    ) -> Result<Vec<Option<Bytes>>, StorageError> {
        self.check_open()?;
        let backend = self.backend;
        let mut out = vec![None; requested.len()];
        // A key too long to encode was never stored.
        let mut keys = Vec::with_capacity(requested.len());
        let mut positions = Vec::with_capacity(requested.len());
        for (i, v) in requested.iter().enumerate() {
            if let Ok(key) = self.layout.version(&v.key, v.version) {
                keys.push(key);
                positions.push(i);
            }
        }
        let groups = self.by_slot(&keys);
        let reads = groups.iter().map(|(slot, indexes)| {
            let args = indexes.iter().map(|i| bytes(&keys[*i])).collect();
            self.call(*slot, "MGET", args)
        });
        let replies = futures_util::future::join_all(reads).await;
        for (indexes, reply) in groups.values().zip(replies) {
            let values = reply.and_then(frame_array).map_err(|e| e.plain(backend))?;
            if values.len() != indexes.len() {
                return Err(self.corrupt(format!(
                    "MGET of {} keys returned {} values",
                    indexes.len(),
                    values.len()
                )));
            }
            for (i, value) in indexes.iter().zip(values) {
                out[positions[*i]] = frame_bytes(value).map_err(|e| e.plain(backend))?;
            }
        }
        Ok(out)
    }

    /// [`Storage::scan_commits`](crate::storage::Storage::scan_commits): up to `limit`
    /// records from every shard, merged in id order and cut at `limit` (what lies past the
    /// cut is read again by the next page).
    pub(super) async fn scan_now(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> Result<Vec<CommitRecord>, StorageError> {
        self.check_open()?;
        let scans = (0..self.layout.shards.len()).map(|s| self.scan_shard(s, after, limit));
        let mut records = Vec::new();
        for found in futures_util::future::join_all(scans).await {
            records.extend(found?);
        }
        if self.layout.shards.len() > 1 {
            records.sort_unstable_by_key(|r| r.id);
            records.truncate(limit);
        }
        Ok(records)
    }

    /// Up to `limit` records of one shard after `after`, in id order.
    async fn scan_shard(
        &self,
        shard: usize,
        after: Option<VersionId>,
        limit: usize,
    ) -> Result<Vec<CommitRecord>, StorageError> {
        let backend = self.backend;
        let s = &self.layout.shards[shard];
        let mut records = Vec::new();
        let mut after = after;
        while records.len() < limit {
            let page = (limit - records.len()).min(SCAN_PAGE);
            let from = match after {
                Some(id) => Value::Bytes(Bytes::from([&b"("[..], &id.to_bytes()].concat())),
                None => text("-"),
            };
            let items = self
                .eval(
                    &self.scripts.scan,
                    s.slot,
                    vec![bytes(&s.rec), bytes(&s.log)],
                    vec![from, text(page.to_string())],
                )
                .await
                .and_then(frame_array)
                .map_err(|e| e.plain(backend))?;
            let got = items.len() / 2;
            let mut items = items.into_iter();
            while let (Some(id), Some(stored)) = (items.next(), items.next()) {
                let id = frame_bytes(id)
                    .map_err(|e| e.plain(backend))?
                    .ok_or_else(|| self.corrupt("commit log entry is nil"))?;
                let id = record::decode_id(backend, &id, "commit log entry")?;
                let stored = frame_bytes(stored)
                    .map_err(|e| e.plain(backend))?
                    .ok_or_else(|| {
                        self.corrupt(format!(
                            "the commit log lists {id:?} but its record is missing"
                        ))
                    })?;
                records.push(record::decode(backend, id, stored)?);
                after = Some(id);
            }
            if got < page {
                break;
            }
        }
        Ok(records)
    }

    /// [`Storage::find_idempotent`](crate::storage::Storage::find_idempotent): in the shard
    /// of the key, which anchors its commit.
    pub(super) async fn find_now(&self, key: Bytes) -> Result<Option<VersionId>, StorageError> {
        self.check_open()?;
        let backend = self.backend;
        let shard = &self.layout.shards[self.layout.shard_of(&key)];
        let entry = shard.idempotency(&key);
        self.call(shard.slot, "GET", vec![Value::Bytes(entry)])
            .await
            .and_then(frame_bytes)
            .map_err(|e| e.plain(backend))?
            .map(|id| record::decode_id(backend, &id, "idempotency entry"))
            .transpose()
    }
}
