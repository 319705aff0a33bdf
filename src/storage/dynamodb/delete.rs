//! [`Storage::delete`]: versions with their chunks; commit records with their chunks, after
//! their idempotency entries (each only if it still names the record), so that a crash
//! mid-way leaves what the next, idempotent, attempt needs.
//!
//! [`Storage::delete`]: crate::storage::Storage::delete

use std::collections::HashSet;

use aws_sdk_dynamodb::types::{Delete, TransactWriteItem};
use futures_util::stream::{self, StreamExt, TryStreamExt};

use super::api::CallError;
use super::layout::{
    bin, build_failed, chunk_count, chunk_keys, commit_pk, corrupt, get_bin, idempotency_pk,
    key_item, key_of, version_pk, Item, CHUNKS, ID, PK, SINGLE_SK, SK, VALUE,
};
use super::retry::{CallFailure, CONCURRENCY};
use super::{DynamoDbStorage, BACKEND};
use crate::storage::{record, StorageError, VersionId, VersionKey};

impl DynamoDbStorage {
    /// [`Storage::delete`](crate::storage::Storage::delete).
    pub(super) async fn delete_now(
        &self,
        versions: Vec<VersionKey>,
        commits: Vec<VersionId>,
    ) -> Result<(), StorageError> {
        if !versions.is_empty() {
            let mut seen = HashSet::new();
            let keys: Vec<Item> = versions
                .iter()
                .map(|v| (version_pk(&v.key), v.version.to_bytes().to_vec()))
                .filter(|k| seen.insert(k.clone()))
                .map(|(pk, sk)| key_item(pk, sk))
                .collect();
            self.delete_split(keys).await?;
        }
        if !commits.is_empty() {
            let mut seen = HashSet::new();
            let keys: Vec<Item> = commits
                .iter()
                .filter(|id| seen.insert(**id))
                .map(|id| key_item(commit_pk(*id), id.to_bytes().to_vec()))
                .collect();
            let found = self.batch_get(keys, None).await?;
            // Idempotency entries first, each only if it still names this commit.
            let mut owned = Vec::new();
            let heads: Vec<&Item> = found.values().collect();
            let payloads = self.payloads(&heads).await?;
            for (head, payload) in heads.iter().zip(payloads) {
                let id = record::decode_id(BACKEND, get_bin(head, SK)?, "commit record key")?;
                let bytes = match &payload {
                    Some(p) => p.as_slice(),
                    None => get_bin(head, VALUE)?,
                };
                // Without its chunks, the head's part holds the idempotency key, if any.
                match record::split(bytes) {
                    Ok((Some(key), _)) => owned.push((key.to_vec(), id)),
                    Ok((None, _)) => {}
                    Err(_) => return Err(corrupt(format!("commit record {id:?} does not decode"))),
                }
            }
            stream::iter(owned)
                .map(|(key, id)| self.delete_idempotency(key, id))
                .buffer_unordered(CONCURRENCY)
                .try_collect::<Vec<()>>()
                .await?;
            // Their log entries (several nodes) before them: an entry whose record is gone
            // is skipped by readers, a record without its entry would be missed.
            let entries = heads
                .iter()
                .map(|head| Self::log_entries_of(head))
                .collect::<Result<Vec<_>, _>>()?;
            self.delete_items(entries.into_iter().flatten().collect())
                .await?;
            self.delete_split_known(heads).await?;
        }
        Ok(())
    }

    /// Deletes the idempotency entry of `key` if it still names the commit `id`.
    async fn delete_idempotency(&self, key: Vec<u8>, id: VersionId) -> Result<(), StorageError> {
        let delete = Delete::builder()
            .table_name(&self.table)
            .set_key(Some(key_item(idempotency_pk(&key), SINGLE_SK.to_vec())))
            .condition_expression("#id = :id")
            .expression_attribute_names("#id", ID)
            .expression_attribute_values(":id", bin(id.to_bytes()))
            .build()
            .map_err(build_failed)?;
        match self
            .write_one(TransactWriteItem::builder().delete(delete).build())
            .await
        {
            Ok(())
            | Err(CallFailure {
                last: CallError::ConditionFailed(_),
                ..
            }) => Ok(()),
            Err(f) => Err(self.failed(f, false)),
        }
    }

    /// Deletes the items at `keys` that exist, with their chunks (chunks first).
    async fn delete_split(&self, keys: Vec<Item>) -> Result<(), StorageError> {
        let found = self.batch_get(keys, Some(&[PK, SK, CHUNKS])).await?;
        self.delete_split_known(found.values().collect()).await
    }

    /// Deletes `heads` (items known to exist) with their chunks (chunks first).
    async fn delete_split_known(&self, heads: Vec<&Item>) -> Result<(), StorageError> {
        let mut chunks = Vec::new();
        for head in &heads {
            let count = chunk_count(head)?;
            if count > 0 {
                chunks.extend(chunk_keys(get_bin(head, PK)?, get_bin(head, SK)?, count));
            }
        }
        self.delete_items(chunks).await?;
        self.delete_items(heads.iter().map(|h| key_of(h)).collect())
            .await
    }
}
