//! The commit log of several nodes sharing a table: a head item holding the position of the
//! newest entry, and one entry per commit record, in creation order.
//!
//! A commit claims the next position in its own transaction: it sets the head from the
//! position it was validated at to the next one (conditional on the head being there still)
//! and puts the entry. So positions have no gaps, every commit is ordered against every
//! other, and a commit whose node had not seen the latest commits is refused
//! ([`CommitOutcome::Moved`](crate::storage::CommitOutcome::Moved)) until it caught up and
//! validated its reads again: the conflict check across nodes is this one conditional write.

use aws_sdk_dynamodb::types::{Put, TransactWriteItem, Update};

use super::layout::{
    bin, build_failed, commit_pk, get_bin, get_num, key_item, num, Item, ID, LOG_HEAD_PK, LOG_PK,
    LOG_SEQ, PK, SINGLE_SK,
};
use super::{DynamoDbStorage, BACKEND};
use crate::storage::{record, LogPage, LogPos, StorageError, VersionId};

fn head_key() -> Item {
    key_item(LOG_HEAD_PK.to_vec(), SINGLE_SK.to_vec())
}

impl DynamoDbStorage {
    /// The actions that claim position `at + 1` for the commit `id`.
    pub(super) fn log_claim(
        &self,
        at: u64,
        id: VersionId,
    ) -> Result<Vec<TransactWriteItem>, StorageError> {
        let update = Update::builder()
            .table_name(&self.table)
            .set_key(Some(head_key()))
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
        let mut entry = key_item(LOG_PK.to_vec(), (at + 1).to_be_bytes().to_vec());
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

    /// [`Storage::log_tail`](crate::storage::Storage::log_tail): the head, then the entries
    /// after `after`, then their records.
    pub(super) async fn tail_now(&self, after: u64, limit: usize) -> Result<LogPage, StorageError> {
        let head = match self.get_item(head_key()).await? {
            Some(item) => get_num(&item, LOG_SEQ)?.unwrap_or(0),
            None => 0,
        };
        if limit == 0 {
            return Ok(LogPage {
                head: LogPos::single(head),
                records: Vec::new(),
                through: LogPos::single(after),
            });
        }
        let entries = self
            .query_all(
                LOG_PK.to_vec(),
                Some(after.to_be_bytes().to_vec()),
                None,
                None,
                limit,
            )
            .await?;
        let mut positions = Vec::with_capacity(entries.len());
        let mut keys = Vec::with_capacity(entries.len());
        for entry in &entries {
            let sk = get_bin(entry, super::layout::SK)?;
            let pos = <[u8; 8]>::try_from(sk)
                .map(u64::from_be_bytes)
                .map_err(|_| {
                    StorageError::Corrupt(format!("log entry key of {} bytes", sk.len()).into())
                })?;
            let id = record::decode_id(BACKEND, get_bin(entry, ID)?, "log entry")?;
            positions.push((pos, id));
            keys.push(key_item(commit_pk(id), id.to_bytes().to_vec()));
        }
        // Entries created after the head was read may be in the page.
        let head = head.max(positions.last().map_or(0, |(pos, _)| *pos));
        let through = match positions.last() {
            Some((last, _)) if entries.len() >= limit => *last,
            _ => head,
        };
        let heads = if keys.is_empty() {
            Default::default()
        } else {
            self.batch_get(keys, None).await?
        };
        let mut found: Vec<(u64, VersionId, &Item)> = Vec::new();
        for (pos, id) in &positions {
            // A record garbage collection deleted since: nobody needs it.
            if let Some(item) = heads.get(&(commit_pk(*id), id.to_bytes().to_vec())) {
                found.push((*pos, *id, item));
            }
        }
        let refs: Vec<&Item> = found.iter().map(|(_, _, item)| *item).collect();
        let payloads = self.payloads(&refs).await?;
        let mut records = Vec::with_capacity(found.len());
        for ((_, id, _), payload) in found.into_iter().zip(payloads) {
            let Some(payload) = payload else { continue };
            records.push(record::decode(BACKEND, id, bytes::Bytes::from(payload))?);
        }
        Ok(LogPage {
            head: LogPos::single(head),
            records,
            through: LogPos::single(through.max(after)),
        })
    }

    /// The log entry of the record `head` (an item with its position), if it has one.
    pub(super) fn log_entry_of(head: &Item) -> Result<Option<Item>, StorageError> {
        Ok(get_num(head, super::layout::LOG_POSITION)?
            .map(|pos| key_item(LOG_PK.to_vec(), pos.to_be_bytes().to_vec())))
    }
}
