//! What a transaction writes, and how its write set is encoded in a commit record's body.
//!
//! Body format (version 1), all integers little-endian:
//!
//! ```text
//! u8 format (= 1) | u32 entry count | entries…
//! entry: u8 kind | u64 expire_at (ms since epoch, 0 = none) | u32 key length | key bytes
//! ```
//!
//! The body lists every key the transaction wrote, deletes included, so that a node can
//! rebuild its version index from commit records alone. Values live in the key versions.

use bytes::{BufMut, Bytes, BytesMut};

use crate::storage::StorageError;

const FORMAT: u8 = 1;

/// What kind of version a write created. The discriminants are stored: never reuse one.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
#[repr(u8)]
pub enum Kind {
    /// A delete: the key does not exist at this version. No value is stored.
    Tombstone = 0,
    /// A string value.
    String = 1,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        match b {
            0 => Some(Kind::Tombstone),
            1 => Some(Kind::String),
            _ => None,
        }
    }

    /// The name `TYPE` replies with.
    pub fn type_name(self) -> &'static str {
        match self {
            Kind::Tombstone => "none",
            Kind::String => "string",
        }
    }
}

/// The data a key holds.
#[derive(Clone, PartialEq, Eq, Debug)]
pub enum Value {
    /// A Redis string (arbitrary bytes).
    Str(Bytes),
}

impl Value {
    /// The version kind that stores this value.
    pub fn kind(&self) -> Kind {
        match self {
            Value::Str(_) => Kind::String,
        }
    }

    /// The bytes stored in the key version.
    pub fn encode(&self) -> Bytes {
        match self {
            Value::Str(b) => b.clone(),
        }
    }

    /// Decodes what [`Value::encode`] stored for a version of `kind`.
    pub fn decode(kind: Kind, stored: Bytes) -> Option<Value> {
        match kind {
            Kind::String => Some(Value::Str(stored)),
            Kind::Tombstone => None,
        }
    }
}

/// A live key's content: its value and its expiry.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct Entry {
    /// The value.
    pub value: Value,
    /// Absolute expiry in milliseconds since the epoch, if any.
    pub expire_at: Option<u64>,
}

impl Entry {
    /// A string without expiry.
    pub fn string(bytes: Bytes) -> Self {
        Entry {
            value: Value::Str(bytes),
            expire_at: None,
        }
    }
}

/// One key of a write set, as recorded in the commit record.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct WriteMeta {
    /// The user key.
    pub key: Bytes,
    /// What the version is.
    pub kind: Kind,
    /// Absolute expiry in ms since the epoch, 0 for none.
    pub expire_at: u64,
}

/// Encodes a write set into a commit record body.
pub fn encode_body(writes: &[WriteMeta]) -> Bytes {
    let size = 5 + writes.iter().map(|w| 13 + w.key.len()).sum::<usize>();
    let mut out = BytesMut::with_capacity(size);
    out.put_u8(FORMAT);
    out.put_u32_le(writes.len() as u32);
    for w in writes {
        out.put_u8(w.kind as u8);
        out.put_u64_le(w.expire_at);
        out.put_u32_le(w.key.len() as u32);
        out.put_slice(&w.key);
    }
    out.freeze()
}

/// Decodes a commit record body; keys are zero-copy slices of `body`.
pub fn decode_body(body: &Bytes) -> Result<Vec<WriteMeta>, StorageError> {
    let corrupt = |what: &str| StorageError::Corrupt(format!("commit record body: {what}").into());
    let b = &body[..];
    if b.first() != Some(&FORMAT) {
        return Err(corrupt("unknown format"));
    }
    let mut pos = 1;
    let take = |pos: &mut usize, n: usize| -> Result<std::ops::Range<usize>, StorageError> {
        let end = pos.checked_add(n).filter(|&e| e <= b.len());
        match end {
            Some(end) => {
                let r = *pos..end;
                *pos = end;
                Ok(r)
            }
            None => Err(corrupt("truncated")),
        }
    };
    let count = u32::from_le_bytes(
        b[take(&mut pos, 4)?]
            .try_into()
            .map_err(|_| corrupt("count"))?,
    );
    let mut writes = Vec::with_capacity((count as usize).min(b.len() / 13));
    for _ in 0..count {
        let kind = Kind::from_u8(b[take(&mut pos, 1)?][0]).ok_or_else(|| corrupt("kind"))?;
        let expire_at = u64::from_le_bytes(
            b[take(&mut pos, 8)?]
                .try_into()
                .map_err(|_| corrupt("expiry"))?,
        );
        let len = u32::from_le_bytes(
            b[take(&mut pos, 4)?]
                .try_into()
                .map_err(|_| corrupt("length"))?,
        );
        let key = body.slice(take(&mut pos, len as usize)?);
        writes.push(WriteMeta {
            key,
            kind,
            expire_at,
        });
    }
    if pos != b.len() {
        return Err(corrupt("trailing bytes"));
    }
    Ok(writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_round_trips_binary_keys() {
        let writes = vec![
            WriteMeta {
                key: Bytes::from_static(b"a/b\x00\xff"),
                kind: Kind::String,
                expire_at: 1234,
            },
            WriteMeta {
                key: Bytes::new(),
                kind: Kind::Tombstone,
                expire_at: 0,
            },
        ];
        let body = encode_body(&writes);
        assert_eq!(decode_body(&body).unwrap(), writes);
    }

    #[test]
    fn truncated_or_garbage_bodies_are_corrupt_not_panics() {
        let body = encode_body(&[WriteMeta {
            key: Bytes::from_static(b"key"),
            kind: Kind::String,
            expire_at: 0,
        }]);
        for cut in 0..body.len() {
            assert!(decode_body(&body.slice(..cut)).is_err());
        }
        assert!(decode_body(&Bytes::from_static(b"\x01\xff\xff\xff\xff")).is_err());
        assert!(decode_body(&Bytes::from_static(b"\x01\x01\x00\x00\x00\x09")).is_err());
    }
}
