//! Orphan clean-up, [`Storage::reclaim_orphans`]: pending markers older than the horizon are
//! resolved: the markers of commits that completed are deleted, the others are first fenced
//! (`ab`), so that their commit can no longer complete, then deleted with everything they
//! list.
//!
//! [`Storage::reclaim_orphans`]: crate::storage::Storage::reclaim_orphans

use std::time::Duration;

use aws_sdk_dynamodb::types::{AttributeValue, TransactWriteItem, Update};

use super::api::CallError;
use super::layout::{
    build_failed, chunk_count, chunk_keys, commit_pk, decode_marker, get_bin, get_num, key_item,
    now_ms, version_pk, ABANDONED, CHUNKS, DONE, MARKER_PK, PK, SK, STARTED,
};
use super::retry::CallFailure;
use super::stats::bump;
use super::{DynamoDbStorage, BACKEND};
use crate::storage::{record, StorageError, VersionId};

impl DynamoDbStorage {
    /// [`Storage::reclaim_orphans`](crate::storage::Storage::reclaim_orphans).
    pub(super) async fn reclaim_now(&self, older_than: Duration) -> Result<u64, StorageError> {
        let horizon = now_ms().saturating_sub(older_than.as_millis() as u64);
        let markers = self
            .query_all(
                MARKER_PK.to_vec(),
                None,
                None,
                Some(&[PK, SK, STARTED, DONE, CHUNKS]),
                usize::MAX,
            )
            .await?;
        let mut deleted = 0;
        for marker in markers {
            let started = get_num(&marker, STARTED)?.unwrap_or(0);
            if started > horizon {
                continue;
            }
            let id = record::decode_id(BACKEND, get_bin(&marker, SK)?, "pending marker key")?;
            if marker.contains_key(DONE) {
                self.delete_marker(id, chunk_count(&marker)?).await?;
            } else {
                deleted += self.abandon(id).await?;
            }
        }
        Ok(deleted)
    }

    /// Deletes a pending marker: its chunks, then its head.
    pub(super) async fn delete_marker(
        &self,
        id: VersionId,
        chunks: u32,
    ) -> Result<(), StorageError> {
        let sk = id.to_bytes().to_vec();
        self.delete_items(chunk_keys(MARKER_PK, &sk, chunks))
            .await?;
        self.delete_items(vec![key_item(MARKER_PK.to_vec(), sk)])
            .await
    }

    /// Resolves the pending marker of `id`: if its commit completed, deletes the marker;
    /// otherwise forbids the commit to complete, then deletes what it wrote and the marker.
    /// Returns the number of versions deleted.
    pub(super) async fn abandon(&self, id: VersionId) -> Result<u64, StorageError> {
        let sk = id.to_bytes().to_vec();
        let marker_key = key_item(MARKER_PK.to_vec(), sk.clone());
        let fence = Update::builder()
            .table_name(&self.table)
            .set_key(Some(marker_key.clone()))
            .update_expression("SET #ab = :t")
            .condition_expression("attribute_exists(#pk) AND attribute_not_exists(#d)")
            .expression_attribute_names("#ab", ABANDONED)
            .expression_attribute_names("#pk", PK)
            .expression_attribute_names("#d", DONE)
            .expression_attribute_values(":t", AttributeValue::Bool(true))
            .build()
            .map_err(build_failed)?;
        match self
            .write_one(TransactWriteItem::builder().update(fence).build())
            .await
        {
            Ok(()) => {}
            Err(CallFailure {
                last: CallError::ConditionFailed(_),
                ..
            }) => {
                // Gone (resolved by someone else), or done: the commit is complete.
                let Some(marker) = self.get_item(marker_key).await? else {
                    return Ok(0);
                };
                self.delete_marker(id, chunk_count(&marker)?).await?;
                return Ok(0);
            }
            Err(f) => return Err(self.failed(f, false)),
        }
        let Some(marker) = self.get_item(marker_key).await? else {
            return Ok(0);
        };
        let marker_chunks = chunk_count(&marker)?;
        let payload = self.payloads(&[&marker]).await?.pop().flatten();
        let Some(payload) = payload else {
            // The key list was never completely written, so no version was.
            self.delete_marker(id, marker_chunks).await?;
            return Ok(0);
        };
        let plan = decode_marker(&payload)?;
        let mut chunks = chunk_keys(&commit_pk(id), &sk, plan.record_chunks);
        let mut heads = Vec::with_capacity(plan.versions.len());
        for (key, count) in &plan.versions {
            let pk = version_pk(key);
            chunks.extend(chunk_keys(&pk, &sk, *count));
            heads.push(key_item(pk, sk.clone()));
        }
        let deleted = heads.len() as u64;
        self.delete_items(chunks).await?;
        self.delete_items(heads).await?;
        self.delete_marker(id, marker_chunks).await?;
        bump(&self.counters.orphans_reclaimed, deleted);
        Ok(deleted)
    }
}
