//! The commit log of several nodes sharing a table, in shards (the table's format item says
//! how many): per shard, a head item holding the position of the newest entry, and one entry
//! per commit record that claimed a position there, in creation order.
//!
//! A commit claims the next position of every shard of the keys it reads for update,
//! watches, writes or deletes, in its own transaction: it sets each head from the position
//! it was validated at to the next one (conditional on the head being there still) and puts
//! the entry. So positions have no gaps, every commit is ordered against every other that
//! touches a shard it touches, and a commit whose node had not seen the latest commits of
//! those shards is refused ([`CommitOutcome::Moved`](crate::storage::CommitOutcome::Moved))
//! until it caught up and validated its reads again: the conflict check across nodes is these
//! conditional writes. A key's commits all claim its shard, so two commits of one key are
//! always ordered; commits of keys of different shards do not contend.

use std::collections::HashSet;

use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};
use futures_util::future::try_join_all;

use super::layout::{
    bin, build_failed, commit_pk, get_bin, get_num, key_item, log_head_key, log_pk, log_shard_of,
    num, Item, ID, LOG_CLAIMS, LOG_HEAD_PK, LOG_POSITION, LOG_SEQ, PK,
};
use super::{DynamoDbStorage, BACKEND};
use crate::storage::{record, CommitBatch, LogPage, LogPos, StorageError, VersionId};

impl DynamoDbStorage {
    /// The shards of the log a commit claims a position of: those of every key it reads for
    /// update, watches, writes or deletes (in increasing order); shard 0 for a commit of no
    /// key (even that is ordered).
    pub(super) fn claimed_shards(&self, batch: &CommitBatch) -> Vec<usize> {
        let mut shards: Vec<usize> = batch
            .conditions
            .checks
            .iter()
            .map(|(k, _)| k)
            .chain(batch.versions.iter().map(|(k, _)| k))
            .chain(&batch.conditions.deleted)
            .map(|k| log_shard_of(k, self.log_shards))
            .collect();
        shards.sort_unstable();
        shards.dedup();
        if shards.is_empty() {
            shards.push(0);
        }
        shards
    }

    /// The actions that claim position `at + 1` of `shard` for the commit `id`.
    pub(super) fn log_claim(
        &self,
        shard: usize,
        at: u64,
        id: VersionId,
    ) -> Result<Vec<TransactWriteItem>, StorageError> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(log_head_key(shard)))
            .update_expression("SET #s = :next")
            .condition_expression(if at == 0 {
                "attribute_not_exists(#s) OR #s = :at"
            } else {
                "#s = :at"
            })
            .expression_attribute_names("#s", LOG_SEQ)
            .expression_attribute_values(":next", num(at + 1))
            .expression_attribute_values(":at", num(at))
            .build()
            .map_err(build_failed)?;
        let mut entry = key_item(log_pk(shard), (at + 1).to_be_bytes().to_vec());
        entry.insert(ID.into(), bin(id.to_bytes()));
        let put = Put::builder()
            .table_name(&self.table)
            .set_item(Some(entry))
            .condition_expression("attribute_not_exists(#pk)")
            .expression_attribute_names("#pk", PK)
            .build()
            .map_err(build_failed)?;
        Ok(vec![
            TransactWriteItem::builder().update(update).build(),
            TransactWriteItem::builder().put(put).build(),
        ])
    }

    /// The attribute a commit record head carries for its claims `(shard, position)`: the
    /// position alone when it claimed shard 0 only (as a log of one shard always does).
    pub(super) fn claims_attribute(
        claims: &[(usize, u64)],
    ) -> (&'static str, aws_sdk_dynamodb::types::AttributeValue) {
        match claims {
            [(0, pos)] => (LOG_POSITION, num(*pos)),
            _ => {
                let text: Vec<String> = claims.iter().map(|(s, p)| format!("{s}:{p}")).collect();
                (
                    LOG_CLAIMS,
                    aws_sdk_dynamodb::types::AttributeValue::S(text.join(" ")),
                )
            }
        }
    }

    /// [`Storage::log_tail`](crate::storage::Storage::log_tail): every shard's head in one
    /// `BatchGetItem`, then the entries after `after` of every shard whose head moved past
    /// it, in parallel; then the records, once each.
    pub(super) async fn tail_now(
        &self,
        after: LogPos,
        limit: usize,
    ) -> Result<LogPage, StorageError> {
        let keys = (0..self.log_shards).map(log_head_key).collect();
        let found = self.batch_get(keys, None).await?;
        let mut heads = Vec::with_capacity(self.log_shards);
        for shard in 0..self.log_shards {
            let head = found.get(&(LOG_HEAD_PK.to_vec(), vec![shard as u8]));
            heads.push(
                head.map(|item| get_num(item, LOG_SEQ))
                    .transpose()?
                    .flatten()
                    .unwrap_or(0),
            );
        }
        if limit == 0 {
            return Ok(LogPage {
                head: LogPos::new(heads),
                records: Vec::new(),
                through: after,
            });
        }
        let pages = try_join_all(
            heads
                .iter()
                .enumerate()
                .map(|(s, head)| self.tail_shard(s, *head, after.get(s), limit)),
        )
        .await?;
        let mut heads = Vec::with_capacity(pages.len());
        let mut throughs = Vec::with_capacity(pages.len());
        let mut ids = Vec::new();
        let mut seen = HashSet::new();
        for (head, through, found) in pages {
            heads.push(head);
            throughs.push(through);
            // A commit of keys of several shards is in each of their logs.
            ids.extend(found.into_iter().filter(|id| seen.insert(*id)));
        }
        let keys: Vec<Item> = ids
            .iter()
            .map(|id| key_item(commit_pk(*id), id.to_bytes().to_vec()))
            .collect();
        let found_heads = if keys.is_empty() {
            Default::default()
        } else {
            self.batch_get(keys, None).await?
        };
        let mut found: Vec<(VersionId, &Item)> = Vec::new();
        for id in &ids {
            // A record garbage collection deleted since: nobody needs it.
            if let Some(item) = found_heads.get(&(commit_pk(*id), id.to_bytes().to_vec())) {
                found.push((*id, item));
            }
        }
        let refs: Vec<&Item> = found.iter().map(|(_, item)| *item).collect();
        let payloads = self.payloads(&refs).await?;
        let mut records = Vec::with_capacity(found.len());
        for ((id, _), payload) in found.into_iter().zip(payloads) {
            let Some(payload) = payload else { continue };
            records.push(record::decode(BACKEND, id, bytes::Bytes::from(payload))?);
        }
        Ok(LogPage {
            head: LogPos::new(heads),
            records,
            through: LogPos::new(throughs),
        })
    }

    /// One shard's head, how far its page covers, and the ids of its entries after `after`
    /// (at most `limit`), in position order, given the head read before: nothing is asked
    /// of a shard whose head did not pass `after`.
    async fn tail_shard(
        &self,
        shard: usize,
        head: u64,
        after: u64,
        limit: usize,
    ) -> Result<(u64, u64, Vec<VersionId>), StorageError> {
        if head <= after {
            return Ok((head, after, Vec::new()));
        }
        let entries = self
            .query_all(
                log_pk(shard),
                Some(after.to_be_bytes().to_vec()),
                None,
                None,
                limit,
            )
            .await?;
        let mut ids = Vec::with_capacity(entries.len());
        let mut last = after;
        for entry in &entries {
            let sk = get_bin(entry, super::layout::SK)?;
            last = <[u8; 8]>::try_from(sk)
                .map(u64::from_be_bytes)
                .map_err(|_| {
                    StorageError::Corrupt(format!("log entry key of {} bytes", sk.len()).into())
                })?;
            ids.push(record::decode_id(
                BACKEND,
                get_bin(entry, ID)?,
                "log entry",
            )?);
        }
        // Entries created after the head was read may be in the page.
        let head = head.max(last);
        let through = if entries.len() >= limit { last } else { head };
        Ok((head, through.max(after), ids))
    }

    /// The log entries of the record `head` (an item with its claims), if it has any.
    pub(super) fn log_entries_of(head: &Item) -> Result<Vec<Item>, StorageError> {
        if let Some(pos) = get_num(head, LOG_POSITION)? {
            return Ok(vec![key_item(log_pk(0), pos.to_be_bytes().to_vec())]);
        }
        let Some(claims) = head.get(LOG_CLAIMS) else {
            return Ok(Vec::new());
        };
        let text = claims.as_s().map_err(|_| {
            StorageError::Corrupt("a commit record's log claims are not text".into())
        })?;
        text.split(' ')
            .map(|claim| {
                claim
                    .split_once(':')
                    .and_then(|(s, p)| Some((s.parse::<usize>().ok()?, p.parse::<u64>().ok()?)))
                    .map(|(s, p)| key_item(log_pk(s), p.to_be_bytes().to_vec()))
                    .ok_or_else(|| {
                        StorageError::Corrupt(
                            format!("a log claim '{claim}' does not parse").into(),
                        )
                    })
            })
            .collect()
    }
}
