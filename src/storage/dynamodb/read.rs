//! Reads: [`Storage::get_versions`] (`BatchGetItem` of the heads, then of the chunks of split
//! values), [`Storage::scan_commits`] (the commit directory, then each bucket's shards merged
//! in id order), [`Storage::find_idempotent`], and the reassembly of split payloads they
//! share.
//!
//! [`Storage::get_versions`]: crate::storage::Storage::get_versions
//! [`Storage::scan_commits`]: crate::storage::Storage::scan_commits
//! [`Storage::find_idempotent`]: crate::storage::Storage::find_idempotent

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::api::QueryRequest;
use super::layout::{
    bucket, chunk_count, chunk_keys, chunk_pk, commit_pk_of, decode_directory, delete_request,
    directory_sk, entry_id, get_bin, idempotency_pk, key_bytes, key_item, now_ms, version_pk, Item,
    BUCKET_SHIFT, DIRECTORY_PK, PK, SINGLE_SK, SK, VALUE,
};
use super::retry::{CONCURRENCY, QUERY_PAGE};
use super::{DynamoDbStorage, BACKEND};
use crate::storage::{record, CommitRecord, StorageError, VersionId, VersionKey};

/// Directory entries of empty buckets that ended this long ago are dropped.
const PRUNE_AFTER: Duration = Duration::from_secs(2 * 86_400);

impl DynamoDbStorage {
    /// Reassembles the payloads of `heads` (their `v` and overflow chunks). `None` for a head
    /// whose chunks are not all there.
    pub(super) async fn payloads(
        &self,
        heads: &[&Item],
    ) -> Result<Vec<Option<Vec<u8>>>, StorageError> {
        let mut wanted = Vec::new();
        let mut counts = Vec::with_capacity(heads.len());
        for head in heads {
            let count = chunk_count(head)?;
            counts.push(count);
            if count > 0 {
                let pk = get_bin(head, PK)?;
                let sk = get_bin(head, SK)?;
                wanted.extend(chunk_keys(pk, sk, count));
            }
        }
        let chunks = if wanted.is_empty() {
            HashMap::new()
        } else {
            self.batch_get(wanted, None).await?
        };
        let mut out = Vec::with_capacity(heads.len());
        'heads: for (head, count) in heads.iter().zip(counts) {
            let mut payload = get_bin(head, VALUE)?.to_vec();
            if count > 0 {
                let cpk = chunk_pk(get_bin(head, PK)?, get_bin(head, SK)?);
                for i in 1..=count {
                    match chunks.get(&(cpk.clone(), i.to_be_bytes().to_vec())) {
                        Some(chunk) => payload.extend_from_slice(get_bin(chunk, VALUE)?),
                        None => {
                            out.push(None);
                            continue 'heads;
                        }
                    }
                }
            }
            out.push(Some(payload));
        }
        Ok(out)
    }

    /// The id of the commit holding `key`, read consistently.
    pub(super) async fn read_idempotent(
        &self,
        key: &[u8],
    ) -> Result<Option<VersionId>, StorageError> {
        let item = self
            .get_item(key_item(idempotency_pk(key), SINGLE_SK.to_vec()))
            .await?;
        item.map(|entry| entry_id(&entry)).transpose()
    }

    /// [`Storage::get_versions`](crate::storage::Storage::get_versions).
    pub(super) async fn get_now(
        &self,
        keys: Vec<VersionKey>,
    ) -> Result<Vec<Option<Bytes>>, StorageError> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let mut unique: HashMap<(Vec<u8>, Vec<u8>), usize> = HashMap::new();
        let mut wanted = Vec::new();
        let mut slots = Vec::with_capacity(keys.len());
        for k in &keys {
            let key = (version_pk(&k.key), k.version.to_bytes().to_vec());
            let next = unique.len();
            let slot = *unique.entry(key.clone()).or_insert_with(|| {
                wanted.push(key_item(key.0, key.1));
                next
            });
            slots.push(slot);
        }
        let found = self.batch_get(wanted.clone(), None).await?;
        let heads: Vec<Option<&Item>> = wanted
            .iter()
            .map(|k| key_bytes(k).and_then(|kb| found.get(&kb)))
            .collect();
        let present: Vec<&Item> = heads.iter().flatten().copied().collect();
        let mut payloads = self.payloads(&present).await?.into_iter();
        // A head whose chunks are not all there is being deleted (deletion removes the
        // chunks first; a commit writes every chunk before its record makes the head
        // readable): collected, like a head that is gone.
        let values: Vec<Option<Bytes>> = heads
            .iter()
            .map(|head| {
                head.and_then(|_| payloads.next().flatten())
                    .map(Bytes::from)
            })
            .collect();
        Ok(slots.into_iter().map(|slot| values[slot].clone()).collect())
    }

    /// [`Storage::scan_commits`](crate::storage::Storage::scan_commits).
    pub(super) async fn scan_now(
        &self,
        after: Option<VersionId>,
        limit: usize,
    ) -> Result<Vec<CommitRecord>, StorageError> {
        let mut records = Vec::new();
        if limit == 0 {
            return Ok(records);
        }
        let from_bucket = after.map_or(0, bucket);
        let after_sk = after.map(|a| a.to_bytes().to_vec());
        // Only the first bucket's records are limited by `after`.
        let after_in = |b: u64| after_sk.clone().filter(|_| b == from_bucket);
        let mut directory_start = None;
        let mut current: Option<u64> = None;
        let mut shards: Vec<u8> = Vec::new();
        loop {
            // Directory entries, in (bucket, shard) order.
            let request = QueryRequest {
                pk: DIRECTORY_PK.to_vec(),
                after: None,
                from: Some(from_bucket.to_be_bytes().to_vec()),
                projection: Some(&[PK, SK]),
                limit: QUERY_PAGE,
                start: directory_start.take(),
            };
            let (page, next) = self
                .retrying("Query", || self.api.query(request.clone()))
                .await
                .map_err(|f| self.failed(f, false))?;
            for entry in page {
                let (b, shard) = decode_directory(get_bin(&entry, SK)?)?;
                if let Some(done) = current.filter(|c| *c != b) {
                    let wanted = limit - records.len();
                    records.extend(
                        self.scan_bucket(done, &shards, after_in(done), wanted)
                            .await?,
                    );
                    shards.clear();
                    if records.len() >= limit {
                        return Ok(records);
                    }
                }
                current = Some(b);
                shards.push(shard);
            }
            match next {
                Some(next) => directory_start = Some(next),
                None => break,
            }
        }
        if let Some(last) = current {
            let wanted = limit - records.len();
            records.extend(
                self.scan_bucket(last, &shards, after_in(last), wanted)
                    .await?,
            );
        }
        Ok(records)
    }

    /// Up to `limit` records of one bucket (after `after`), merged across its shards in id
    /// order.
    ///
    /// A record whose deletion stopped between its chunks and its head (garbage collection
    /// deletes a record only after all its versions) is deleted now, and the bucket read
    /// again: a short page means the bucket holds no more.
    async fn scan_bucket(
        &self,
        bucket: u64,
        shards: &[u8],
        after: Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<CommitRecord>, StorageError> {
        loop {
            let heads = self.bucket_heads(bucket, shards, &after, limit).await?;
            let refs: Vec<&Item> = heads.iter().map(|(_, item)| item).collect();
            let payloads = self.payloads(&refs).await?;
            let mut records = Vec::with_capacity(heads.len());
            let mut partly_deleted = Vec::new();
            for ((id, head), payload) in heads.iter().zip(payloads) {
                match payload {
                    Some(payload) => {
                        records.push(record::decode(BACKEND, *id, Bytes::from(payload))?)
                    }
                    None => {
                        tracing::info!(?id, "deleting the rest of a partly deleted commit record");
                        partly_deleted.push(key_item(
                            get_bin(head, PK)?.to_vec(),
                            get_bin(head, SK)?.to_vec(),
                        ));
                    }
                }
            }
            if partly_deleted.is_empty() {
                return Ok(records);
            }
            self.delete_items(partly_deleted).await?;
        }
    }

    /// The heads of up to `limit` records of one bucket (after `after`), in id order.
    async fn bucket_heads(
        &self,
        bucket: u64,
        shards: &[u8],
        after: &Option<Vec<u8>>,
        limit: usize,
    ) -> Result<Vec<(VersionId, Item)>, StorageError> {
        let pages: Vec<(u8, Vec<Item>)> = stream::iter(shards.iter().copied())
            .map(|shard| {
                let after = after.clone();
                async move {
                    let items = self
                        .query_all(commit_pk_of(bucket, shard), after, None, None, limit)
                        .await?;
                    Ok::<_, StorageError>((shard, items))
                }
            })
            .buffer_unordered(CONCURRENCY)
            .try_collect()
            .await?;
        let mut heads = Vec::new();
        for (shard, items) in pages {
            if items.is_empty() && after.is_none() {
                self.maybe_prune(bucket, shard).await;
            }
            for item in items {
                let id = record::decode_id(BACKEND, get_bin(&item, SK)?, "commit record key")?;
                heads.push((id, item));
            }
        }
        heads.sort_by_key(|(id, _)| *id);
        heads.truncate(limit);
        Ok(heads)
    }

    /// Drops the directory entry of an empty commit partition whose bucket ended long ago.
    async fn maybe_prune(&self, bucket: u64, shard: u8) {
        let bucket_end_ms = (bucket.saturating_add(1) << BUCKET_SHIFT) >> 16;
        let horizon = now_ms().saturating_sub(PRUNE_AFTER.as_millis() as u64);
        if bucket_end_ms >= horizon {
            return;
        }
        self.registered.lock().remove(&(bucket, shard));
        let key = key_item(DIRECTORY_PK.to_vec(), directory_sk(bucket, shard));
        if let Ok(request) = delete_request(key) {
            if let Err(e) = self.batch_write(vec![request]).await {
                tracing::debug!("dynamodb: directory entry not pruned: {e}");
            }
        }
    }
}
