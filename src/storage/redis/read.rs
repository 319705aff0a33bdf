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

    /// [`Storage::scan_commits`](crate::storage::Storage::scan_commits): the shards merged
    /// in id order. Each shard is read in batches of about `limit / shards`, in parallel, and
    /// a record is taken only while every shard not yet exhausted has one buffered (nothing
    /// smaller can then hide in it), so that about `limit` records are read per page.
    pub(super) async fn scan_now(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> Result<Vec<CommitRecord>, StorageError> {
        self.check_open()?;
        let shards = self.layout.shards.len();
        if shards == 1 {
            return self.scan_shard(0, after, limit).await;
        }
        let batch = limit.div_ceil(shards).max(1);
        let mut next = vec![after; shards];
        let mut buffered: Vec<std::collections::VecDeque<CommitRecord>> =
            (0..shards).map(|_| Default::default()).collect();
        let mut exhausted = vec![false; shards];
        let mut out = Vec::with_capacity(limit.min(SCAN_PAGE));
        while out.len() < limit {
            let empty: Vec<usize> = (0..shards)
                .filter(|s| buffered[*s].is_empty() && !exhausted[*s])
                .collect();
            let reads = empty.iter().map(|s| self.scan_shard(*s, next[*s], batch));
            for (s, found) in empty
                .iter()
                .zip(futures_util::future::join_all(reads).await)
            {
                let found = found?;
                exhausted[*s] = found.len() < batch;
                next[*s] = found.last().map(|r| r.id).or(next[*s]);
                buffered[*s].extend(found);
            }
            while out.len() < limit {
                if (0..shards).any(|s| buffered[s].is_empty() && !exhausted[s]) {
                    break;
                }
                let smallest = (0..shards)
                    .filter_map(|s| buffered[s].front().map(|r| (r.id, s)))
                    .min();
                let Some((_, s)) = smallest else {
                    return Ok(out);
                };
                out.extend(buffered[s].pop_front());
            }
        }
        Ok(out)
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
