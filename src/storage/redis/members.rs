//! What nodes sharing one Redis tell each other through it: leases (membership, fencing and
//! watermarks), the commit log in creation order, and the heads of collected keys.

use fred::types::{Resp3Frame, Value};

use super::client::{bytes, frame_array, frame_bytes, frame_int, id_arg, text, RequestError};
use super::RedisStorage;
use crate::storage::{record, Beat, Heartbeat, LogPage, Member, NodeId, StorageError, VersionKey};

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
    let watermark: u64 = parts.next()?.parse().ok()?;
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
        let items = self
            .eval(
                &self.scripts.heartbeat,
                vec![bytes(&self.layout.nodes)],
                vec![
                    text(beat.node.to_string()),
                    text(lease_ms.to_string()),
                    text(format!("{} {}", beat.watermark, beat.oldest_clock_ms)),
                    text(address),
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

    /// [`Storage::log_tail`](crate::storage::Storage::log_tail).
    pub(super) async fn tail_now(&self, after: u64, limit: usize) -> Result<LogPage, StorageError> {
        self.check_open()?;
        let backend = self.backend;
        let items = self
            .eval(
                &self.scripts.tail,
                vec![
                    bytes(&self.layout.rec),
                    bytes(&self.layout.tail),
                    bytes(&self.layout.seq),
                ],
                vec![text(after.to_string()), text(limit.max(1).to_string())],
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
            let pos = number(pos).map_err(|e| e.plain(backend))?;
            last = pos;
            // Deleted by garbage collection since it was logged: nobody needs it.
            let Some(stored) = frame_bytes(stored).map_err(|e| e.plain(backend))? else {
                continue;
            };
            records.push((pos, record::decode(backend, id, stored)?));
        }
        // The script read every entry up to the head unless it stopped at the limit.
        let through = if found < limit.max(1) {
            head.max(after)
        } else {
            last
        };
        Ok(LogPage {
            head,
            records,
            through,
        })
    }

    /// [`Storage::drop_heads`](crate::storage::Storage::drop_heads).
    pub(super) async fn drop_heads_now(&self, heads: Vec<VersionKey>) -> Result<(), StorageError> {
        self.check_open()?;
        for chunk in heads.chunks(1000) {
            let mut args = Vec::with_capacity(2 * chunk.len());
            for head in chunk {
                args.push(Value::Bytes(head.key.clone()));
                args.push(id_arg(head.version));
            }
            self.eval(&self.scripts.heads, vec![bytes(&self.layout.heads)], args)
                .await
                .map_err(|e| e.plain(self.backend))?;
        }
        Ok(())
    }
}
