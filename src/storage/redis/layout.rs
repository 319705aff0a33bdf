//! How the backend names what it stores: the prefix, the shards of the log and their hash
//! tags, version keys, metadata keys, and the key lists of pending markers (see the
//! [backend's documentation](super#layout)).

use std::fmt;

use bytes::Bytes;
use fred::util::redis_keyslot;

use crate::storage::VersionId;

/// A key longer than a `u32` length prefix can say: it cannot be (and never was) stored.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) struct KeyTooLong(usize);

impl fmt::Display for KeyTooLong {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "key of {} bytes is too long", self.0)
    }
}

impl std::error::Error for KeyTooLong {}

/// `key.len()` as the `u32` of a length prefix.
fn length_prefix(key: &[u8]) -> Result<[u8; 4], KeyTooLong> {
    u32::try_from(key.len())
        .map(u32::to_be_bytes)
        .map_err(|_| KeyTooLong(key.len()))
}

pub(super) use super::options::MAX_SHARDS;

/// The metadata keys of one shard of the log (see the
/// [backend's documentation](super#layout)): all carry the shard's hash tag, so that one
/// script updates them together.
#[derive(Debug)]
pub(super) struct Shard {
    /// `M`: the shard's tag, which every key below starts with.
    pub(super) meta: Vec<u8>,
    /// `M rec`: the commit records.
    pub(super) rec: Bytes,
    /// `M log`: the commit log (by id).
    pub(super) log: Bytes,
    /// `M pending`: the pending markers of commits written in several steps.
    pub(super) pending: Bytes,
    /// `M pendkeys`: the version keys of each pending marker.
    pub(super) pendkeys: Bytes,
    /// `M tail`: the commit log in creation order (score = position).
    pub(super) tail: Bytes,
    /// `M seq`: the position of the newest record.
    pub(super) seq: Bytes,
    /// `M heads`: user key -> its head (id, then `1` for a value or `0` for a tombstone).
    pub(super) heads: Bytes,
    /// `M nodes`: node id (hex) -> its lease (`expiry-ms watermark oldest-clock-ms address`).
    pub(super) nodes: Bytes,
    /// `M locks`: user key -> the lock a commit across shards holds on it.
    pub(super) locks: Bytes,
    /// `M txlocks`: commit id -> the user keys it locked in this shard.
    pub(super) txlocks: Bytes,
    /// The slot of every key above.
    pub(super) slot: u16,
}

impl Shard {
    fn new(meta: Vec<u8>) -> Shard {
        let key = |suffix: &[u8]| Bytes::from([meta.as_slice(), suffix].concat());
        Shard {
            rec: key(b"rec"),
            log: key(b"log"),
            pending: key(b"pending"),
            pendkeys: key(b"pendkeys"),
            tail: key(b"tail"),
            seq: key(b"seq"),
            heads: key(b"heads"),
            nodes: key(b"nodes"),
            locks: key(b"locks"),
            txlocks: key(b"txlocks"),
            slot: redis_keyslot(&meta),
            meta,
        }
    }

    /// `M i: ‖ key`.
    pub(super) fn idempotency(&self, key: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(self.meta.len() + 2 + key.len());
        out.extend_from_slice(&self.meta);
        out.extend_from_slice(b"i:");
        out.extend_from_slice(key);
        Bytes::from(out)
    }
}

/// The storage keys of one prefix.
#[derive(Debug)]
pub(super) struct Layout {
    /// `P`.
    pub(super) prefix: Vec<u8>,
    /// `P{P}shards`: how many shards the log has, decided by the first node.
    pub(super) root: Bytes,
    /// The slot of `root` (and of shard 0 of a log of one shard).
    pub(super) root_slot: u16,
    /// The shards of the log.
    pub(super) shards: Vec<Shard>,
}

impl Layout {
    /// The keys under `prefix` (already validated: non-empty, without `{` or `}`) for a log
    /// of `count` shards (1 to [`MAX_SHARDS`]). One shard is tagged `P{P}`; shard `s` of
    /// several is tagged `P{P~k}`, `k` the least number whose slot falls in the `s`-th of
    /// `count` equal ranges of the 16,384 slots, so that the shards spread over the masters
    /// of a cluster (which hold ranges of slots).
    pub(super) fn new(prefix: &str, count: usize) -> Layout {
        let count = count.clamp(1, MAX_SHARDS);
        let prefix = prefix.as_bytes().to_vec();
        let tag = |inner: &[u8]| [prefix.as_slice(), b"{", inner, b"}"].concat();
        let root_tag = tag(&prefix);
        let shards = if count == 1 {
            vec![Shard::new(root_tag.clone())]
        } else {
            (0..count)
                .map(|s| {
                    let low = s * 16384 / count;
                    let high = (s + 1) * 16384 / count;
                    let meta = (0u64..)
                        .map(|k| tag(&[prefix.as_slice(), format!("~{k}").as_bytes()].concat()))
                        .find(|meta| (low..high).contains(&usize::from(redis_keyslot(meta))))
                        .unwrap_or_else(|| root_tag.clone());
                    Shard::new(meta)
                })
                .collect()
        };
        Layout {
            root: Bytes::from([root_tag.as_slice(), b"shards"].concat()),
            root_slot: redis_keyslot(&root_tag),
            prefix,
            shards,
        }
    }

    /// The shard of a user key (of its head, and of a commit it anchors).
    pub(super) fn shard_of(&self, key: &[u8]) -> usize {
        if self.shards.len() == 1 {
            0
        } else {
            (fnv1a(key) % self.shards.len() as u64) as usize
        }
    }

    /// `P v{h} ‖ u32 BE length ‖ key ‖ id`.
    pub(super) fn version(&self, key: &[u8], id: VersionId) -> Result<Bytes, KeyTooLong> {
        let len = length_prefix(key)?;
        let mut out =
            Vec::with_capacity(self.prefix.len() + 20 + 4 + key.len() + VersionId::ENCODED_LEN);
        out.extend_from_slice(&self.prefix);
        out.extend_from_slice(b"v{");
        out.extend_from_slice(format!("{:016x}", fnv1a(key)).as_bytes());
        out.push(b'}');
        out.extend_from_slice(&len);
        out.extend_from_slice(key);
        out.extend_from_slice(&id.to_bytes());
        Ok(Bytes::from(out))
    }
}

/// 64-bit FNV-1a: stable across processes and versions (unlike std's hasher).
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        hash ^= u64::from(*b);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    }
    hash
}

/// The version keys of a pending marker: `u32 BE length ‖ key`, repeated.
pub(super) fn encode_key_list(keys: &[Bytes]) -> Result<Bytes, KeyTooLong> {
    let mut out = Vec::with_capacity(keys.iter().map(|k| 4 + k.len()).sum());
    for key in keys {
        out.extend_from_slice(&length_prefix(key)?);
        out.extend_from_slice(key);
    }
    Ok(Bytes::from(out))
}

/// Decodes [`encode_key_list`]; the keys are slices of `bytes`.
pub(super) fn decode_key_list(bytes: &Bytes) -> Result<Vec<Bytes>, &'static str> {
    const TRUNCATED: &str = "pending key list truncated";
    let mut keys = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        let len = bytes
            .get(at..at + 4)
            .and_then(|l| <[u8; 4]>::try_from(l).ok())
            .map(u32::from_be_bytes)
            .and_then(|l| usize::try_from(l).ok())
            .ok_or(TRUNCATED)?;
        let end = (at + 4)
            .checked_add(len)
            .filter(|end| *end <= bytes.len())
            .ok_or(TRUNCATED)?;
        keys.push(bytes.slice(at + 4..end));
        at = end;
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_shard_keeps_the_root_tag_and_several_spread_over_the_slots() {
        let one = Layout::new("aft:", 1);
        assert_eq!(one.shards[0].rec.as_ref(), b"aft:{aft:}rec");
        assert_eq!(one.shards[0].slot, one.root_slot);
        assert_eq!(one.shard_of(b"anything"), 0);
        let three = Layout::new("aft:", 3);
        let slots: Vec<usize> = three.shards.iter().map(|s| usize::from(s.slot)).collect();
        for (s, slot) in slots.iter().enumerate() {
            assert!(
                (s * 16384 / 3..(s + 1) * 16384 / 3).contains(slot),
                "{slots:?}"
            );
        }
        let mut seen = [0usize; 3];
        for i in 0..3000 {
            seen[three.shard_of(format!("key:{i}").as_bytes())] += 1;
        }
        assert!(seen.iter().all(|n| *n > 800), "{seen:?}");
    }
}
