//! Leases: every node that serves the table holds one item, renewed in the background and
//! checked by each of its commits in the same transaction, so that a node that lost it
//! (paused past its expiry, while the others took over) can no longer commit. Expiry is
//! judged by the nodes' clocks (DynamoDB conditions cannot read the server's), so the
//! nodes' clocks must agree to well within the lease.

use aws_sdk_dynamodb::types::{AttributeValue, ConditionCheck, TransactWriteItem};

use super::api::CallError;
use super::layout::{build_failed, key_item, now_ms, num, put_action, Item, PK};
use super::retry::CallFailure;
use super::{DynamoDbStorage, BACKEND};
use crate::storage::{Beat, Failure, Heartbeat, Member, NodeId, StorageError};

/// `pk` of the lease items (no other item's `pk` starts with `n`); `sk` is the node id.
pub(super) const LEASE_PK: &[u8] = b"n";
/// The lease's expiry, ms since the epoch by the holder's clock.
const EXPIRES_MS: &str = "x";
/// The holder's address.
const ADDRESS: &str = "a";
/// The holder's watermark in shard 0 of the log.
const WATERMARK: &str = "w";
/// The holder's watermark in every shard of the log (`LogPos`'s text form).
const WATERMARKS: &str = "ws";
/// The clock of the holder's oldest transaction.
const OLDEST: &str = "c";

fn lease_key(node: NodeId) -> Item {
    key_item(LEASE_PK.to_vec(), node.0.to_be_bytes().to_vec())
}

/// A lease item as a member (`expires_in_ms` 0 once expired).
fn parse_lease(item: &Item, now: u64) -> Option<Member> {
    let node = item
        .get(super::layout::SK)
        .and_then(|v| v.as_b().ok())
        .and_then(|b| <[u8; 16]>::try_from(b.as_ref()).ok())
        .map(u128::from_be_bytes)?;
    let number = |name: &str| {
        item.get(name)
            .and_then(|v| v.as_n().ok())
            .and_then(|n| n.parse::<u64>().ok())
    };
    Some(Member {
        node: NodeId(node),
        watermark: match item.get(WATERMARKS).and_then(|v| v.as_s().ok()) {
            Some(text) => crate::storage::LogPos::parse(text)?,
            None => crate::storage::LogPos::single(number(WATERMARK)?),
        },
        oldest_clock_ms: number(OLDEST)?,
        address: item
            .get(ADDRESS)
            .and_then(|v| v.as_s().ok())
            .cloned()
            .unwrap_or_default(),
        expires_in_ms: number(EXPIRES_MS)?.saturating_sub(now),
    })
}

impl DynamoDbStorage {
    /// [`Storage::heartbeat`](crate::storage::Storage::heartbeat): creates, renews or
    /// deletes this node's lease item, then lists the live ones.
    pub(super) async fn heartbeat_now(
        &self,
        beat: Heartbeat,
    ) -> Result<Option<Vec<Member>>, StorageError> {
        let now = now_ms();
        let lease_ms = u64::try_from(beat.lease.as_millis()).unwrap_or(u64::MAX / 4);
        match beat.kind {
            Beat::Leave => {
                self.delete_items(vec![lease_key(beat.node)]).await?;
            }
            Beat::Join | Beat::Renew => {
                let mut item = lease_key(beat.node);
                item.insert(EXPIRES_MS.into(), num(now.saturating_add(lease_ms)));
                item.insert(ADDRESS.into(), AttributeValue::S(beat.address.clone()));
                item.insert(WATERMARK.into(), num(beat.watermark.get(0)));
                item.insert(
                    WATERMARKS.into(),
                    AttributeValue::S(beat.watermark.to_string()),
                );
                item.insert(OLDEST.into(), num(beat.oldest_clock_ms));
                let mut action = put_action(&self.table, item)?;
                if beat.kind == Beat::Renew {
                    if let Some(put) = action.put.as_mut() {
                        put.condition_expression =
                            Some("attribute_exists(#pk) AND #x >= :now".into());
                        let names = put
                            .expression_attribute_names
                            .get_or_insert_with(Default::default);
                        names.insert("#pk".into(), PK.into());
                        names.insert("#x".into(), EXPIRES_MS.into());
                        put.expression_attribute_values
                            .get_or_insert_with(Default::default)
                            .insert(":now".into(), num(now));
                    }
                }
                match self.write_one(action).await {
                    Ok(()) => {}
                    Err(CallFailure {
                        last: CallError::ConditionFailed(_),
                        ..
                    }) => return Err(self.fenced()),
                    Err(f) => return Err(self.failed(f, false)),
                }
            }
        }
        let items = self
            .query_all(LEASE_PK.to_vec(), None, None, None, 100_000)
            .await?;
        let mut members = Vec::new();
        for item in items {
            let Some(member) = parse_lease(&item, now) else {
                tracing::warn!("dynamodb: ignoring a lease item that does not parse");
                continue;
            };
            if member.expires_in_ms > 0 {
                members.push(member);
            }
        }
        Ok(Some(members))
    }

    /// The action that makes a commit conditional on `node` holding a lease live at `at_ms`
    /// (the commit's start, by its clock).
    pub(super) fn lease_check(
        &self,
        node: NodeId,
        at_ms: u64,
    ) -> Result<TransactWriteItem, StorageError> {
        let check = ConditionCheck::builder()
            .table_name(&self.table)
            .set_key(Some(lease_key(node)))
            .condition_expression("#x >= :now")
            .expression_attribute_names("#x", EXPIRES_MS)
            .expression_attribute_values(":now", num(at_ms))
            .build()
            .map_err(build_failed)?;
        Ok(TransactWriteItem::builder().condition_check(check).build())
    }

    /// The error of a commit refused because this node's lease is gone.
    pub(super) fn fenced(&self) -> StorageError {
        StorageError::Fenced(Failure::new(
            BACKEND,
            "this node's lease expired; it must rejoin before it commits",
        ))
    }
}
