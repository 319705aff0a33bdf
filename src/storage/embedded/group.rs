//! Group commit: the requests the writer applies in one redb write transaction, and what that
//! transaction does to the tables (a conditional create per commit, then the deletions).

use redb::{Database, Durability, ReadableTable};
use tokio::sync::oneshot;

use super::error::{failure, OrIo, BACKEND};
use super::layout::{Deletion, EncodedCommit, COMMITS, IDEMPOTENCY, VERSIONS};
use super::writer::Request;
use crate::storage::{record, CommitOutcome, StorageError};

/// Most requests (commits and deletions) applied in one write transaction.
pub const MAX_GROUP_REQUESTS: usize = 1024;

/// A group stops taking requests once their encoded size reaches this many bytes (a single
/// larger request still forms a group of its own).
pub const MAX_GROUP_BYTES: usize = 64 << 20;

/// Requests applied together in one write transaction.
#[derive(Default)]
pub(super) struct Group {
    pub(super) commits: Vec<EncodedCommit>,
    pub(super) commit_replies: Vec<oneshot::Sender<Result<CommitOutcome, StorageError>>>,
    pub(super) deletions: Vec<Deletion>,
    pub(super) delete_replies: Vec<oneshot::Sender<Result<(), StorageError>>>,
    bytes: usize,
}

impl Group {
    pub(super) fn len(&self) -> usize {
        self.commits.len() + self.deletions.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether the group has reached [`MAX_GROUP_REQUESTS`] or [`MAX_GROUP_BYTES`].
    pub(super) fn is_full(&self) -> bool {
        self.len() >= MAX_GROUP_REQUESTS || self.bytes >= MAX_GROUP_BYTES
    }

    /// Adds a request; returns the reply of a `Close` instead of adding it.
    pub(super) fn push(
        &mut self,
        request: Request,
    ) -> Option<oneshot::Sender<Result<(), StorageError>>> {
        match request {
            Request::Commit { commit, reply } => {
                self.bytes += commit.size();
                self.commits.push(commit);
                self.commit_replies.push(reply);
                None
            }
            Request::Delete { deletion, reply } => {
                self.bytes += deletion.size();
                self.deletions.push(deletion);
                self.delete_replies.push(reply);
                None
            }
            Request::Close { reply } => Some(reply),
        }
    }
}

/// Per-request results of a group that redb committed.
pub(super) struct GroupResults {
    pub(super) commits: Vec<Result<CommitOutcome, StorageError>>,
    pub(super) deletions: Vec<Result<(), StorageError>>,
}

/// Applies a group in one write transaction. `Err` means the whole group failed: `Io` if redb
/// failed before its commit (nothing written), `OutcomeUnknown` if its commit failed.
pub(super) fn apply_group(
    db: &Database,
    commits: &[EncodedCommit],
    deletions: &[Deletion],
    durability: Durability,
) -> Result<GroupResults, StorageError> {
    let mut txn = db.begin_write().or_io("begin write")?;
    txn.set_durability(durability).or_io("set durability")?;
    let results = {
        let mut versions = txn.open_table(VERSIONS).or_io("open versions")?;
        let mut records = txn.open_table(COMMITS).or_io("open commits")?;
        let mut idempotency = txn.open_table(IDEMPOTENCY).or_io("open idempotency")?;
        let mut tables = Tables {
            versions: &mut versions,
            records: &mut records,
            idempotency: &mut idempotency,
        };
        GroupResults {
            commits: commits
                .iter()
                .map(|c| tables.commit(c))
                .collect::<Result<_, redb::StorageError>>()
                .or_io("write commit")?,
            deletions: deletions
                .iter()
                .map(|d| tables.delete(d))
                .collect::<Result<_, redb::StorageError>>()
                .or_io("delete")?,
        }
    };
    txn.commit().map_err(|e| {
        StorageError::OutcomeUnknown(
            failure(format!("commit of the write transaction: {e}")).because(e),
        )
    })?;
    Ok(results)
}

type Table<'t> = redb::Table<'t, &'static [u8], &'static [u8]>;

/// The tables of one write transaction. Methods return `Err` for a redb failure (the group
/// fails) and `Ok(Err)` for a failure of the request alone, which then wrote nothing.
struct Tables<'a, 't> {
    versions: &'a mut Table<'t>,
    records: &'a mut Table<'t>,
    idempotency: &'a mut Table<'t>,
}

impl Tables<'_, '_> {
    /// Writes the commit's versions, record and idempotency entry, unless its record exists
    /// already (`Committed`: an earlier attempt applied) or its idempotency key is held
    /// (`Duplicate`): then nothing.
    fn commit(
        &mut self,
        commit: &EncodedCommit,
    ) -> Result<Result<CommitOutcome, StorageError>, redb::StorageError> {
        if self.records.get(&commit.id[..])?.is_some() {
            // Sent again after an unknown outcome: the first attempt applied.
            return Ok(Ok(CommitOutcome::Committed));
        }
        if let Some(key) = &commit.idempotency_key {
            let existing = self
                .idempotency
                .get(&key[..])?
                .map(|id| record::decode_id(BACKEND, id.value(), "idempotency entry"));
            match existing {
                Some(Ok(id)) => return Ok(Ok(CommitOutcome::Duplicate(id))),
                Some(Err(e)) => return Ok(Err(e)),
                None => {}
            }
        }
        for (key, value) in &commit.versions {
            self.versions.insert(key.as_slice(), &value[..])?;
        }
        self.records.insert(&commit.id[..], &commit.record[..])?;
        if let Some(key) = &commit.idempotency_key {
            self.idempotency.insert(&key[..], &commit.id[..])?;
        }
        Ok(Ok(CommitOutcome::Committed))
    }

    /// Removes the versions, then the records with the idempotency entries that point at them.
    fn delete(
        &mut self,
        deletion: &Deletion,
    ) -> Result<Result<(), StorageError>, redb::StorageError> {
        // Decode every record first, so that a corrupt one fails the request before it
        // changes anything.
        let mut owned_keys = Vec::new();
        for id in &deletion.commits {
            let id_bytes = id.to_bytes();
            let key = match self.records.get(&id_bytes[..])? {
                None => continue,
                Some(stored) => match record::split(stored.value()) {
                    Ok((key, _)) => key.map(<[u8]>::to_vec),
                    Err(e) => {
                        return Ok(Err(StorageError::Corrupt(failure(format!(
                            "commit {id:?}: {e}"
                        )))))
                    }
                },
            };
            owned_keys.push((id_bytes, key));
        }
        for key in &deletion.versions {
            self.versions.remove(key.as_slice())?;
        }
        for (id, key) in owned_keys {
            self.records.remove(&id[..])?;
            let Some(key) = key else { continue };
            // Only the entry that points at this commit belongs to it.
            let points_here = self
                .idempotency
                .get(key.as_slice())?
                .is_some_and(|entry| entry.value() == id);
            if points_here {
                self.idempotency.remove(key.as_slice())?;
            }
        }
        Ok(Ok(()))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use redb::backends::InMemoryBackend;
    use redb::{ReadableDatabase, ReadableTableMetadata};

    use super::*;
    use crate::storage::embedded::layout::{init_tables, version_key};
    use crate::storage::testkit::conformance::{batch, plain, vid};
    use crate::storage::{CommitBatch, VersionId};

    #[test]
    fn duplicates_within_one_group_and_against_the_table() {
        let db = Database::builder()
            .create_with_backend(InMemoryBackend::new())
            .expect("db");
        init_tables(&db, Path::new("memory")).expect("tables");
        let encode = |b: CommitBatch| EncodedCommit::new(b).expect("encode");

        let first = vid(1, 1);
        let results = apply_group(
            &db,
            &[
                encode(batch(first, Some(b"k"), &[(b"x", b"1")])),
                encode(batch(vid(2, 2), Some(b"k"), &[(b"x", b"2")])),
                encode(batch(vid(3, 3), None, &[(b"x", b"3")])),
                encode(batch(vid(4, 4), Some(b"other"), &[])),
            ],
            &[Deletion {
                versions: vec![version_key(b"x", vid(3, 3)).expect("key")],
                commits: vec![vid(4, 4)],
            }],
            Durability::Immediate,
        )
        .expect("group");
        let outcomes: Vec<_> = results.commits.into_iter().map(plain).collect();
        assert_eq!(
            outcomes,
            vec![
                Ok(CommitOutcome::Committed),
                Ok(CommitOutcome::Duplicate(first)),
                Ok(CommitOutcome::Committed),
                Ok(CommitOutcome::Committed),
            ]
        );
        assert_eq!(
            results.deletions.into_iter().map(plain).collect::<Vec<_>>(),
            vec![Ok(())]
        );

        // A later group sees the key in the table.
        let results = apply_group(
            &db,
            &[encode(batch(vid(5, 5), Some(b"k"), &[(b"x", b"5")]))],
            &[],
            Durability::Immediate,
        )
        .expect("group");
        assert_eq!(
            plain(results.commits.into_iter().next().expect("one")),
            Ok(CommitOutcome::Duplicate(first))
        );

        let txn = db.begin_read().expect("read");
        let versions = txn.open_table(VERSIONS).expect("versions");
        let present = |id: VersionId| {
            let key = version_key(b"x", id).expect("key");
            versions.get(key.as_slice()).expect("get").is_some()
        };
        assert!(present(first));
        assert!(!present(vid(2, 2)), "duplicate wrote a version");
        assert!(!present(vid(3, 3)), "deleted in the same group");
        assert!(!present(vid(5, 5)), "duplicate wrote a version");
        let commits = txn.open_table(COMMITS).expect("commits");
        assert_eq!(commits.len().expect("len"), 2);
        let idempotency = txn.open_table(IDEMPOTENCY).expect("idempotency");
        assert!(idempotency.get(&b"other"[..]).expect("get").is_none());
    }
}
