//! What nodes sharing one Redis tell each other through it: leases (membership, fencing and
//! watermarks), the commit log in creation order, and the heads of collected keys.

use fred::types::{Resp3Frame, Value};

use super::client::{bytes, frame_array, frame_bytes, frame_int, id_arg, text, RequestError};
use super::RedisStorage;
use crate::storage::{
    record, Beat, Heartbeat, LogPage, LogPos, Member, NodeId, StorageError, VersionKey,
};

/// A reply's integer, or its decimal text (scores and hash values come as text).
fn number(frame: Resp3Frame) -> Result<u64, RequestError> {
    if let Some(n) = frame_int(&frame) {
        return u64::try_from(n).map_err(|_| RequestError::corrupt("negative number"));
    }
    let text = frame_bytes(frame)?.ok_or_else(|| RequestError::corrupt("nil number"))?;
    std::str::from_utf8(&text)
        .ok()
        .and_then(|t| t.parse::<f64>().ok())
        .filter(|n| *n >= 0.0 && n.fract() == 0.0)
        .map(|n| n as u64)
        .ok_or_else(|| RequestError::corrupt("a number that does not parse"))
}

/// `expiry-ms watermark oldest-clock-ms address`, as `lua/heartbeat.lua` stores a lease.
fn parse_lease(node: &[u8], lease: &[u8], now: u64) -> Option<Member> {
    let node = u128::from_str_radix(std::str::from_utf8(node).ok()?, 16).ok()?;
    let lease = std::str::from_utf8(lease).ok()?;
    let mut parts = lease.splitn(4, ' ');
    let expiry: u64 = parts.next()?.parse().ok()?;
    let watermark = LogPos::parse(parts.next()?)?;
    let oldest_clock_ms: u64 = parts.next()?.parse().ok()?;
    let address = parts.next().unwrap_or("").to_string();
    Some(Member {
        node: NodeId(node),
        watermark,
        oldest_clock_ms,
        address,
        expires_in_ms: expiry.saturating_sub(now),
    })
}

impl RedisStorage {
    /// [`Storage::heartbeat`](crate::storage::Storage::heartbeat).
    pub(super) async fn heartbeat_now(
        &self,
        beat: Heartbeat,
    ) -> Result<Option<Vec<Member>>, StorageError> {
        self.check_open()?;
        let backend = self.backend;
        let kind = match beat.kind {
            Beat::Join => "join",
            Beat::Renew => "renew",
            Beat::Leave => "leave",
        };
        // The address is the last field: it must not hold a space.
        let address = beat.address.replace(' ', "_");
        let lease_ms = u64::try_from(beat.lease.as_millis()).unwrap_or(u64::MAX / 4);
        let marks = format!("{} {}", beat.watermark, beat.oldest_clock_ms);
        let first = &self.layout.shards[0];
        let items = self
            .eval(
                &self.scripts.heartbeat,
                first.slot,
                vec![bytes(&first.nodes)],
                vec![
                    text(beat.node.to_string()),
                    text(lease_ms.to_string()),
                    text(marks.as_str()),
                    text(address.as_str()),
                    text(kind),
                ],
            )
            .await
            .and_then(frame_array)
            .map_err(|e| e.plain(backend))?;
        let mut items = items.into_iter();
        match items.next().as_ref().and_then(frame_int) {
            Some(1) => {}
            Some(0) => return Err(self.fenced()),
            _ => return Err(self.corrupt("unexpected reply to a heartbeat")),
        }
        let now = items
            .next()
            .map(number)
            .transpose()
            .map_err(|e| e.plain(backend))?
            .unwrap_or(0);
        // The copies the other shards check commits against expire a fifth of the lease
        // before the lease itself, so that a node others see dead commits nowhere (servers'
        // clocks agreeing within that much).
        if self.layout.shards.len() > 1 {
            let copy = match beat.kind {
                Beat::Leave => String::new(),
                Beat::Join | Beat::Renew => {
                    let expiry = now + lease_ms - lease_ms / 5;
                    format!("{expiry} {marks} {address}")
                }
            };
            let copies = self.layout.shards[1..].iter().map(|shard| {
                self.eval(
                    &self.scripts.lease,
                    shard.slot,
                    vec![bytes(&shard.nodes)],
                    vec![text(beat.node.to_string()), text(copy.as_str())],
                )
            });
            for copied in futures_util::future::join_all(copies).await {
                copied.map_err(|e| e.plain(backend))?;
            }
        }
        let mut members = Vec::new();
        while let (Some(node), Some(lease)) = (items.next(), items.next()) {
            let node = frame_bytes(node).map_err(|e| e.plain(backend))?;
            let lease = frame_bytes(lease).map_err(|e| e.plain(backend))?;
            let (Some(node), Some(lease)) = (node, lease) else {
                continue;
            };
            match parse_lease(&node, &lease, now) {
                Some(member) => members.push(member),
                None => tracing::warn!(
                    node = %String::from_utf8_lossy(&node),
                    "ignoring a lease that does not parse"
                ),
            }
        }
        Ok(Some(members))
    }

    /// [`Storage::log_tail`](crate::storage::Storage::log_tail): every shard in parallel.
    pub(super) async fn tail_now(
        &self,
        after: LogPos,
        limit: usize,
    ) -> Result<LogPage, StorageError> {
        self.check_open()?;
        let shards = (0..self.layout.shards.len()).map(|s| self.tail_shard(s, after.get(s), limit));
        let mut heads = Vec::with_capacity(self.layout.shards.len());
        let mut throughs = Vec::with_capacity(self.layout.shards.len());
        let mut records = Vec::new();
        for page in futures_util::future::join_all(shards).await {
            let (head, through, found) = page?;
            heads.push(head);
            throughs.push(through);
            records.extend(found);
        }
        Ok(LogPage {
            head: LogPos::new(heads),
            records,
            through: LogPos::new(throughs),
        })
    }

    /// One shard's page of the log: its head, how far the page covers, and the records.
    async fn tail_shard(
        &self,
        shard: usize,
        after: u64,
        limit: usize,
    ) -> Result<(u64, u64, Vec<crate::storage::CommitRecord>), StorageError> {
        let backend = self.backend;
        let s = &self.layout.shards[shard];
        if limit == 0 {
            let head = self
                .call(s.slot, "GET", vec![bytes(&s.seq)])
                .await
                .and_then(|f| match frame_bytes(f.clone())? {
                    None => Ok(0),
                    Some(_) => number(f),
                })
                .map_err(|e| e.plain(backend))?;
            return Ok((head, after, Vec::new()));
        }
        let items = self
            .eval(
                &self.scripts.tail,
                s.slot,
                vec![bytes(&s.rec), bytes(&s.tail), bytes(&s.seq)],
                vec![text(after.to_string()), text(limit.to_string())],
            )
            .await
            .and_then(frame_array)
            .map_err(|e| e.plain(backend))?;
        let mut items = items.into_iter();
        let head = items
            .next()
            .map(number)
            .transpose()
            .map_err(|e| e.plain(backend))?
            .unwrap_or(0);
        let mut records = Vec::new();
        let (mut found, mut last) = (0usize, after);
        while let (Some(id), Some(pos), Some(stored)) = (items.next(), items.next(), items.next()) {
            found += 1;
            let id = frame_bytes(id)
                .map_err(|e| e.plain(backend))?
                .ok_or_else(|| self.corrupt("commit log entry is nil"))?;
            let id = record::decode_id(backend, &id, "commit log entry")?;
            last = number(pos).map_err(|e| e.plain(backend))?;
            // Deleted by garbage collection since it was logged: nobody needs it.
            let Some(stored) = frame_bytes(stored).map_err(|e| e.plain(backend))? else {
                continue;
            };
            records.push(record::decode(backend, id, stored)?);
        }
        // The script read every entry up to the head unless it stopped at the limit.
        let through = if found < limit { head.max(after) } else { last };
        Ok((head, through, records))
    }

    /// [`Storage::drop_heads`](crate::storage::Storage::drop_heads).
    pub(super) async fn drop_heads_now(&self, heads: Vec<VersionKey>) -> Result<(), StorageError> {
        self.check_open()?;
        let mut by_shard: Vec<Vec<VersionKey>> = vec![Vec::new(); self.layout.shards.len()];
        for head in heads {
            by_shard[self.layout.shard_of(&head.key)].push(head);
        }
        for (shard, heads) in self.layout.shards.iter().zip(by_shard) {
            for chunk in heads.chunks(1000) {
                let mut args = Vec::with_capacity(2 * chunk.len());
                for head in chunk {
                    args.push(Value::Bytes(head.key.clone()));
                    args.push(id_arg(head.version));
                }
                self.eval(
                    &self.scripts.heads,
                    shard.slot,
                    vec![bytes(&shard.heads)],
                    args,
                )
                .await
                .map_err(|e| e.plain(self.backend))?;
            }
        }
        Ok(())
    }
}
