//! The one encoding of a [`CommitRecord`] as backends store it (the record's id is the
//! storage key, so it is not repeated inside).
//!
//! ```text
//! u8 format (= 1) | u8 flags | [u32 BE key length | idempotency key] | body
//! flags: bit 0 = an idempotency key follows
//! ```
//!
//! The body is the core's encoding of the write set, opaque here.

use bytes::Bytes;

use super::{CommitRecord, Failure, StorageError, VersionId};

/// The layout version of [`encode`].
pub const FORMAT: u8 = 1;
const HAS_IDEMPOTENCY_KEY: u8 = 0b1;

/// Encodes `record` (without its id). `backend` names the caller in errors.
pub fn encode(backend: &'static str, record: &CommitRecord) -> Result<Bytes, StorageError> {
    let key_len = record.idempotency_key.as_ref().map_or(0, |k| 4 + k.len());
    let mut out = Vec::with_capacity(2 + key_len + record.body.len());
    out.push(FORMAT);
    match &record.idempotency_key {
        Some(key) => {
            out.push(HAS_IDEMPOTENCY_KEY);
            let len = u32::try_from(key.len()).map_err(|_| {
                StorageError::Io(Failure::new(backend, "idempotency key is too long"))
            })?;
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(key);
        }
        None => out.push(0),
    }
    out.extend_from_slice(&record.body);
    Ok(Bytes::from(out))
}

/// Splits an encoded record into its idempotency key and body, without copying.
pub fn split(bytes: &[u8]) -> Result<(Option<&[u8]>, &[u8]), String> {
    let [format, flags, rest @ ..] = bytes else {
        return Err(format!(
            "commit record of {} bytes is truncated",
            bytes.len()
        ));
    };
    if *format != FORMAT {
        return Err(format!("unknown commit record format {format}"));
    }
    match *flags {
        0 => Ok((None, rest)),
        HAS_IDEMPOTENCY_KEY => {
            let (len, rest) = rest
                .split_first_chunk::<4>()
                .ok_or("commit record truncated in its idempotency key length")?;
            let len = usize::try_from(u32::from_be_bytes(*len))
                .map_err(|_| "idempotency key length does not fit in memory")?;
            if rest.len() < len {
                return Err("commit record truncated in its idempotency key".into());
            }
            let (key, body) = rest.split_at(len);
            Ok((Some(key), body))
        }
        other => Err(format!("unknown commit record flags {other:#04x}")),
    }
}

/// Decodes the record stored under `id`; the key and body are slices of `bytes`.
pub fn decode(
    backend: &'static str,
    id: VersionId,
    bytes: Bytes,
) -> Result<CommitRecord, StorageError> {
    let (key, body) = split(&bytes)
        .map_err(|e| StorageError::Corrupt(Failure::new(backend, format!("commit {id:?}: {e}"))))?;
    let slice = |part: &[u8]| bytes.slice_ref(part);
    Ok(CommitRecord {
        id,
        idempotency_key: key.map(slice),
        body: slice(body),
    })
}

/// Decodes a stored version id (`what` names it in the error).
pub fn decode_id(
    backend: &'static str,
    bytes: &[u8],
    what: &str,
) -> Result<VersionId, StorageError> {
    VersionId::from_bytes(bytes).ok_or_else(|| {
        StorageError::Corrupt(Failure::new(
            backend,
            format!(
                "{what} has {} bytes, expected {}",
                bytes.len(),
                VersionId::ENCODED_LEN
            ),
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::TxnId;

    fn record(key: Option<&'static [u8]>, body: &'static [u8]) -> CommitRecord {
        CommitRecord {
            id: VersionId {
                ts: 7,
                txn: TxnId(9),
            },
            idempotency_key: key.map(Bytes::from_static),
            body: Bytes::from_static(body),
        }
    }

    #[test]
    fn records_round_trip_with_and_without_a_key() {
        for r in [
            record(None, b"body"),
            record(Some(b"key"), b"body"),
            record(Some(b""), b""),
        ] {
            let bytes = encode("test", &r).unwrap();
            assert_eq!(decode("test", r.id, bytes).unwrap(), r);
        }
        // The layout is fixed: stored records of every backend use it.
        let bytes = encode("test", &record(Some(b"k"), b"b")).unwrap();
        assert_eq!(&bytes[..], b"\x01\x01\x00\x00\x00\x01kb");
    }

    #[test]
    fn damaged_records_are_corrupt_not_a_panic() {
        let id = record(None, b"").id;
        for bad in [
            &b""[..],
            b"\x01",
            b"\x02\x00",
            b"\x01\x02",
            b"\x01\x01\x00\x00",
            b"\x01\x01\x00\x00\x00\x09k",
        ] {
            let e = decode("test", id, Bytes::copy_from_slice(bad)).unwrap_err();
            assert!(matches!(e, StorageError::Corrupt(_)), "{bad:?}: {e}");
        }
    }
}
