//! How the backend names what it stores: the prefix, the metadata hash tag, version keys,
//! metadata keys, and the key lists of pending markers (see the
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

/// The storage keys of one prefix.
#[derive(Debug)]
pub(super) struct Layout {
    /// `P`.
    pub(super) prefix: Vec<u8>,
    /// `M = P{P}`.
    pub(super) meta: Vec<u8>,
    /// `M rec`: the commit records.
    pub(super) rec: Bytes,
    /// `M log`: the commit log.
    pub(super) log: Bytes,
    /// `M pending`: the pending markers of cluster commits.
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
    /// The slot of every metadata key.
    pub(super) meta_slot: u16,
}

impl Layout {
    /// The keys under `prefix` (already validated: non-empty, without `{` or `}`).
    pub(super) fn new(prefix: &str) -> Layout {
        let prefix = prefix.as_bytes().to_vec();
        let mut meta = prefix.clone();
        meta.push(b'{');
        meta.extend_from_slice(&prefix);
        meta.push(b'}');
        let key = |suffix: &[u8]| Bytes::from([meta.as_slice(), suffix].concat());
        Layout {
            rec: key(b"rec"),
            log: key(b"log"),
            pending: key(b"pending"),
            pendkeys: key(b"pendkeys"),
            tail: key(b"tail"),
            seq: key(b"seq"),
            heads: key(b"heads"),
            nodes: key(b"nodes"),
            meta_slot: redis_keyslot(&meta),
            prefix,
            meta,
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

    /// `M i: ‖ key`.
    pub(super) fn idempotency(&self, key: &[u8]) -> Bytes {
        let mut out = Vec::with_capacity(self.meta.len() + 2 + key.len());
        out.extend_from_slice(&self.meta);
        out.extend_from_slice(b"i:");
        out.extend_from_slice(key);
        Bytes::from(out)
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
