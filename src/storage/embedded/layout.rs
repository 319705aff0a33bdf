//! The file's layout: its tables, the encoding of their keys, the layout version checked at
//! open, and requests encoded for the tables (see the module documentation's *Layout*).

use std::path::Path;

use bytes::Bytes;
use redb::{Database, ReadableTable, TableDefinition};

use super::error::{failure, OrIo, BACKEND};
use crate::storage::{record, CommitBatch, StorageError, VersionId};

/// Name of the database file inside the directory given to
/// [`EmbeddedStorage::open`](super::EmbeddedStorage::open).
pub const FILE_NAME: &str = "aft.redb";

/// Largest encoded key + value of one record. redb's own limit is about 3 GiB per value; this
/// leaves room and is far above what Redis accepts (512 MiB).
pub(super) const MAX_RECORD_BYTES: usize = 1 << 30;

/// Layout version stored in the `meta` table.
const FORMAT_VERSION: u64 = 1;

pub(super) const VERSIONS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("versions");
pub(super) const COMMITS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("commits");
pub(super) const IDEMPOTENCY: TableDefinition<&[u8], &[u8]> = TableDefinition::new("idempotency");
pub(super) const META: TableDefinition<&str, u64> = TableDefinition::new("meta");

/// Creates the tables if needed and checks the layout version.
pub(super) fn init_tables(db: &Database, path: &Path) -> Result<(), StorageError> {
    let txn = db.begin_write().or_io("begin write")?;
    {
        txn.open_table(VERSIONS).or_io("create versions")?;
        txn.open_table(COMMITS).or_io("create commits")?;
        txn.open_table(IDEMPOTENCY).or_io("create idempotency")?;
        let mut meta = txn.open_table(META).or_io("create meta")?;
        let stored = meta.get("format").or_io("read format")?.map(|v| v.value());
        match stored {
            None => {
                meta.insert("format", FORMAT_VERSION)
                    .or_io("write format")?;
            }
            Some(FORMAT_VERSION) => {}
            Some(other) => {
                return Err(StorageError::Io(failure(format!(
                    "{} has layout version {other}; this build reads version {FORMAT_VERSION}",
                    path.display()
                ))))
            }
        }
    }
    txn.commit().or_io("commit table creation")
}

/// `u32` big-endian length of `key` ‖ `key` ‖ `version`: the `versions` table key.
pub(super) fn version_key(key: &[u8], version: VersionId) -> Result<Vec<u8>, StorageError> {
    let len = u32::try_from(key.len())
        .ok()
        .filter(|_| key.len() <= MAX_RECORD_BYTES)
        .ok_or_else(|| {
            StorageError::Io(failure(format!("key of {} bytes is too long", key.len())))
        })?;
    let mut out = Vec::with_capacity(4 + key.len() + VersionId::ENCODED_LEN);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(key);
    out.extend_from_slice(&version.to_bytes());
    Ok(out)
}

/// A commit, encoded for the tables.
pub(super) struct EncodedCommit {
    pub(super) id: [u8; VersionId::ENCODED_LEN],
    pub(super) idempotency_key: Option<Bytes>,
    /// The commit record, in the [`record`] encoding.
    pub(super) record: Bytes,
    /// `(versions table key, value)`.
    pub(super) versions: Vec<(Vec<u8>, Bytes)>,
}

impl EncodedCommit {
    /// Encodes `batch`; fails with [`StorageError::Io`] if a version or the record is larger
    /// than [`MAX_RECORD_BYTES`].
    pub(super) fn new(batch: CommitBatch) -> Result<Self, StorageError> {
        let CommitBatch {
            versions,
            record: commit,
            ..
        } = batch;
        let encoded_record = record::encode(BACKEND, &commit)?;
        if encoded_record.len() > MAX_RECORD_BYTES {
            return Err(StorageError::Io(failure(format!(
                "commit record of {} bytes is too long",
                encoded_record.len()
            ))));
        }
        let versions = versions
            .into_iter()
            .map(|(key, value)| {
                let key = version_key(&key, commit.id)?;
                if key.len() + value.len() > MAX_RECORD_BYTES {
                    return Err(StorageError::Io(failure(format!(
                        "version of {} bytes is too long",
                        key.len() + value.len()
                    ))));
                }
                Ok((key, value))
            })
            .collect::<Result<_, StorageError>>()?;
        Ok(EncodedCommit {
            id: commit.id.to_bytes(),
            idempotency_key: commit.idempotency_key,
            record: encoded_record,
            versions,
        })
    }

    /// Bytes this commit adds to a group.
    pub(super) fn size(&self) -> usize {
        let versions: usize = self.versions.iter().map(|(k, v)| k.len() + v.len()).sum();
        versions + self.record.len() + self.idempotency_key.as_ref().map_or(0, |k| k.len())
    }
}

/// A deletion, encoded for the tables.
pub(super) struct Deletion {
    /// `versions` table keys.
    pub(super) versions: Vec<Vec<u8>>,
    pub(super) commits: Vec<VersionId>,
}

impl Deletion {
    /// Bytes this deletion adds to a group.
    pub(super) fn size(&self) -> usize {
        self.versions.iter().map(Vec::len).sum::<usize>()
            + self.commits.len() * VersionId::ENCODED_LEN
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::testkit::conformance::vid;
    use crate::storage::CommitRecord;

    #[test]
    fn record_encoding_round_trips_and_rejects_garbage() {
        let id = vid(3, 4);
        for (key, body) in [
            (None, &b""[..]),
            (None, &b"body"[..]),
            (Some(&b""[..]), &b"body"[..]),
            (Some(&b"\x00\xff"[..]), &b""[..]),
            (Some(&b"idem"[..]), &b"\x01\x00\x00\x00\x05body"[..]),
        ] {
            let commit = CommitBatch {
                versions: Vec::new(),
                record: CommitRecord {
                    id,
                    idempotency_key: key.map(Bytes::copy_from_slice),
                    body: Bytes::copy_from_slice(body),
                },
                conditions: Default::default(),
            };
            let encoded = EncodedCommit::new(commit).expect("encode");
            let record = record::decode(BACKEND, id, encoded.record).expect("decode");
            assert_eq!(record.id, id);
            assert_eq!(record.idempotency_key.as_deref(), key);
            assert_eq!(&record.body[..], body);
        }
        for garbage in [
            &b""[..],
            &b"\x01"[..],
            &b"\x02\x00body"[..],
            &b"\x01\x02body"[..],
            &b"\x01\x01\x00\x00"[..],
            &b"\x01\x01\x00\x00\x00\x05abcd"[..],
            &b"\x01\x01\xff\xff\xff\xff"[..],
        ] {
            let result = record::decode(BACKEND, id, Bytes::from_static(garbage));
            assert!(
                matches!(result, Err(StorageError::Corrupt(_))),
                "{garbage:?}: {result:?}"
            );
        }
        for bad_id in [&b""[..], &[0u8; 23][..], &[0u8; 25][..]] {
            assert!(matches!(
                record::decode_id(BACKEND, bad_id, "id"),
                Err(StorageError::Corrupt(_))
            ));
        }
        assert_eq!(
            record::decode_id(BACKEND, &id.to_bytes(), "id").ok(),
            Some(id)
        );

        // The length prefix keeps prefixes apart: "a" ‖ id never equals "" ‖ something.
        let a = version_key(b"a", id).expect("encode");
        assert_eq!(&a[..4], &[0, 0, 0, 1]);
        assert_eq!(&a[4..5], b"a");
        assert_eq!(&a[5..], &id.to_bytes());
    }
}
