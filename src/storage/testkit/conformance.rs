//! The conformance suite: one set of checks of the [`Storage`] contract that every backend
//! runs.
//!
//! Each check is an async function taking a fresh, empty store. A backend runs them all with
//! [`storage_conformance_tests!`](crate::storage_conformance_tests), which expands to one `#[tokio::test]` per check:
//!
//! ```ignore
//! aft::storage_conformance_tests!(|| (Arc::new(MemoryStorage::new()), ()));
//! ```
//!
//! The factory returns the store and a guard kept alive for the duration of the test (a
//! temporary directory, for instance).
//!
//! The suite checks the strict form of the contract that single-node backends give: a
//! duplicate commit writes none of its versions. A backend that writes versions before its
//! conditional create would relax [`idempotent_commit`].

use std::collections::BTreeSet;
use std::sync::Arc;

use bytes::Bytes;

use crate::storage::{
    CommitBatch, CommitOutcome, CommitRecord, Storage, StorageError, TxnId, VersionId, VersionKey,
};

/// Expands to one `#[tokio::test]` per check of the suite, each on a store made by `$factory`,
/// a closure returning `(Arc<impl Storage>, guard)`.
#[macro_export]
macro_rules! storage_conformance_tests {
    ($factory:expr) => {
        $crate::storage_conformance_tests!(@tests $factory;
            commit_then_read,
            missing_versions_are_none,
            keys_and_ids_never_collide,
            large_values,
            scan_order_and_pagination,
            idempotent_commit,
            a_commit_sent_again_is_idempotent,
            idempotency_race,
            delete_is_complete_and_idempotent,
            many_concurrent_commits,
            reclaiming_orphans_spares_commits,
            close_then_closed,
        );
    };
    (@tests $factory:expr; $($check:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $check() {
                let (storage, _guard) = ($factory)();
                let storage: ::std::sync::Arc<dyn $crate::storage::Storage> = storage;
                $crate::storage::testkit::conformance::$check(storage).await;
            }
        )*
    };
}

/// A version id from a timestamp and a transaction number.
pub fn vid(ts: u64, txn: u128) -> VersionId {
    VersionId {
        ts,
        txn: TxnId(txn),
    }
}

/// A batch committing `versions` at `id`, with a body naming the id.
pub fn batch(
    id: VersionId,
    idempotency_key: Option<&[u8]>,
    versions: &[(&[u8], &[u8])],
) -> CommitBatch {
    CommitBatch {
        versions: versions
            .iter()
            .map(|(k, v)| (Bytes::copy_from_slice(k), Bytes::copy_from_slice(v)))
            .collect(),
        record: CommitRecord {
            id,
            idempotency_key: idempotency_key.map(Bytes::copy_from_slice),
            body: Bytes::from(format!("body of {id:?}")),
        },
        conditions: Default::default(),
    }
}

/// Names a version.
pub fn vkey(key: &[u8], version: VersionId) -> VersionKey {
    VersionKey {
        key: Bytes::copy_from_slice(key),
        version,
    }
}

/// Commits and asserts the batch was committed.
pub async fn commit_ok(storage: &dyn Storage, batch: CommitBatch) {
    let id = batch.record.id;
    let outcome = plain(storage.commit(batch).await);
    assert_eq!(outcome, Ok(CommitOutcome::Committed), "commit of {id:?}");
}

/// Reads one version.
pub async fn get_one(storage: &dyn Storage, key: &[u8], version: VersionId) -> Option<Bytes> {
    let mut values = storage
        .get_versions(vec![vkey(key, version)])
        .await
        .expect("get_versions");
    assert_eq!(values.len(), 1);
    values.pop().flatten()
}

/// Every commit record, paging through `scan_commits`.
pub async fn scan_all(storage: &dyn Storage) -> Vec<CommitRecord> {
    let mut all = Vec::new();
    let mut after = None;
    loop {
        let page = storage.scan_commits(after, 64).await.expect("scan_commits");
        let Some(last) = page.last() else {
            return all;
        };
        after = Some(last.id);
        all.extend(page);
    }
}

/// A result with its error as text, to compare in assertions (`StorageError` holds strings
/// and is not `PartialEq`).
pub fn plain<T>(result: Result<T, StorageError>) -> Result<T, String> {
    result.map_err(|e| e.to_string())
}

/// Asserts that `result` is `Err(StorageError::Closed)`.
#[track_caller]
pub fn assert_closed<T: std::fmt::Debug>(result: Result<T, StorageError>) {
    assert!(
        matches!(result, Err(StorageError::Closed)),
        "expected Closed, got {result:?}"
    );
}

/// Every version of a commit reads back, in request order, one entry per request, including
/// repeated requests; a commit with no versions is a valid commit.
pub async fn commit_then_read(storage: Arc<dyn Storage>) {
    let s = &*storage;
    let id = vid(10, 1);
    commit_ok(
        s,
        batch(id, None, &[(b"a", b"1"), (b"b", b"2"), (b"c", b"")]),
    )
    .await;
    commit_ok(s, batch(vid(11, 1), None, &[])).await;

    let got = s
        .get_versions(vec![
            vkey(b"c", id),
            vkey(b"a", id),
            vkey(b"missing", id),
            vkey(b"b", id),
            vkey(b"a", id),
        ])
        .await
        .expect("get_versions");
    assert_eq!(
        got,
        vec![
            Some(Bytes::new()),
            Some(Bytes::from_static(b"1")),
            None,
            Some(Bytes::from_static(b"2")),
            Some(Bytes::from_static(b"1")),
        ]
    );
    assert_eq!(s.get_versions(Vec::new()).await.expect("empty get"), vec![]);

    let records = scan_all(s).await;
    assert_eq!(records.len(), 2);
    assert_eq!(records[0], batch(id, None, &[]).record);
    assert_eq!(records[1].id, vid(11, 1));
}

/// A version that was never written reads as `None`: on an empty store, for an unknown key,
/// for a known key at another id and for a known id under another key.
pub async fn missing_versions_are_none(storage: Arc<dyn Storage>) {
    let s = &*storage;
    assert_eq!(get_one(s, b"k", vid(1, 1)).await, None);
    commit_ok(s, batch(vid(5, 5), None, &[(b"k", b"v")])).await;
    for (key, version) in [
        (&b"k"[..], vid(5, 6)),
        (b"k", vid(6, 5)),
        (b"k", vid(4, 5)),
        (b"other", vid(5, 5)),
        (b"", vid(5, 5)),
    ] {
        assert_eq!(
            get_one(s, key, version).await,
            None,
            "{key:?} at {version:?}"
        );
    }
    assert_eq!(
        get_one(s, b"k", vid(5, 5)).await,
        Some(Bytes::from_static(b"v"))
    );
    assert_eq!(
        s.scan_commits(Some(vid(5, 5)), 10).await.expect("scan"),
        vec![]
    );
    assert_eq!(
        plain(s.find_idempotent(Bytes::from_static(b"none")).await),
        Ok(None)
    );
}

/// Keys that are prefixes of each other, the empty key, binary keys and keys that look like
/// an encoded length or id never share storage, nor do ids that differ in one field.
pub async fn keys_and_ids_never_collide(storage: Arc<dyn Storage>) {
    let s = &*storage;
    let id_bytes = vid(1, 2).to_bytes();
    let mut keys: Vec<Vec<u8>> = vec![
        b"".to_vec(),
        b"a".to_vec(),
        b"ab".to_vec(),
        b"a\0".to_vec(),
        b"a\0\0\0".to_vec(),
        vec![0x00],
        vec![0x00, 0x00, 0x00, 0x01],
        vec![0xff],
        vec![0xff, 0xff, 0xff, 0xff, 0xff],
        vec![0x00, 0xff, 0x00, 0xff],
        b"a/b".to_vec(),
        b"a/".to_vec(),
        id_bytes.to_vec(),
        [b"a".as_slice(), &id_bytes].concat(),
    ];
    keys.sort();
    keys.dedup();
    let ids = [
        vid(1, 2),
        vid(1, 3),
        vid(2, 2),
        vid(0, 0),
        vid(u64::MAX, u128::MAX),
    ];

    for (i, id) in ids.iter().enumerate() {
        let values: Vec<(Vec<u8>, Vec<u8>)> = keys
            .iter()
            .enumerate()
            .map(|(j, k)| (k.clone(), format!("{i}:{j}").into_bytes()))
            .collect();
        let pairs: Vec<(&[u8], &[u8])> = values.iter().map(|(k, v)| (&k[..], &v[..])).collect();
        commit_ok(s, batch(*id, None, &pairs)).await;
    }

    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for (i, id) in ids.iter().enumerate() {
        for (j, key) in keys.iter().enumerate() {
            requests.push(vkey(key, *id));
            expected.push(Some(Bytes::from(format!("{i}:{j}"))));
        }
    }
    assert_eq!(
        s.get_versions(requests).await.expect("get_versions"),
        expected
    );
    let scanned: Vec<VersionId> = scan_all(s).await.iter().map(|r| r.id).collect();
    let mut sorted = ids.to_vec();
    sorted.sort();
    assert_eq!(scanned, sorted);
}

/// Values (and bodies) of 1 MiB round-trip byte for byte, as do keys of 64 KiB.
pub async fn large_values(storage: Arc<dyn Storage>) {
    let s = &*storage;
    let big: Vec<u8> = (0..1024 * 1024)
        .map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let big_key = vec![0xabu8; 64 * 1024];
    let id = vid(7, 7);
    let mut b = batch(id, Some(&big_key), &[(b"big", &big), (&big_key, b"small")]);
    b.record.body = Bytes::from(big.clone());
    commit_ok(s, b).await;
    assert_eq!(get_one(s, b"big", id).await.as_deref(), Some(&big[..]));
    assert_eq!(
        get_one(s, &big_key, id).await.as_deref(),
        Some(&b"small"[..])
    );
    let records = scan_all(s).await;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].body, big);
    assert_eq!(records[0].idempotency_key.as_deref(), Some(&big_key[..]));
}

/// `scan_commits` lists records in increasing id order whatever the commit order, pages with
/// `after` (exclusive, need not exist) and `limit`, and returns records intact.
pub async fn scan_order_and_pagination(storage: Arc<dyn Storage>) {
    let s = &*storage;
    let mut ids = Vec::new();
    // Ids committed out of order, including equal timestamps and the extremes.
    for i in 0..30u64 {
        let ts = (i * 7919) % 31 + 1;
        ids.push(vid(ts, (u128::from(i % 3) << 100) | u128::from(i)));
    }
    ids.push(vid(0, 0));
    ids.push(vid(u64::MAX, u128::MAX));
    for (i, id) in ids.iter().enumerate() {
        let key = format!("idem-{i}");
        let idem: Option<&[u8]> = if i % 3 == 0 {
            None
        } else if i == 2 {
            Some(b"")
        } else {
            Some(key.as_bytes())
        };
        let mut b = batch(*id, idem, &[(b"k", key.as_bytes())]);
        if i == 4 {
            b.record.body = Bytes::new();
        }
        commit_ok(s, b).await;
    }
    let mut sorted = ids.clone();
    sorted.sort();

    let all = s.scan_commits(None, usize::MAX).await.expect("scan all");
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), sorted);
    for record in &all {
        let i = ids
            .iter()
            .position(|id| *id == record.id)
            .expect("known id");
        let expected_idem = match i % 3 {
            0 => None,
            _ if i == 2 => Some(Bytes::new()),
            _ => Some(Bytes::from(format!("idem-{i}"))),
        };
        assert_eq!(record.idempotency_key, expected_idem, "record {i}");
        let expected_body = if i == 4 {
            Bytes::new()
        } else {
            Bytes::from(format!("body of {:?}", record.id))
        };
        assert_eq!(record.body, expected_body, "record {i}");
    }

    for limit in [1, 7, 31, 32, 100] {
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = s.scan_commits(after, limit).await.expect("scan page");
            assert!(page.len() <= limit);
            // Only the last page is short: a reader stops at the first that is.
            if paged.len() + page.len() < sorted.len() {
                assert_eq!(page.len(), limit, "a short page before the end");
            }
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            paged.extend(page.into_iter().map(|r| r.id));
        }
        assert_eq!(paged, sorted, "limit {limit}");
    }

    assert_eq!(s.scan_commits(None, 0).await.expect("limit 0"), vec![]);
    let last = *sorted.last().expect("non-empty");
    assert_eq!(
        s.scan_commits(Some(last), 10).await.expect("after last"),
        vec![]
    );
    // An `after` that is not a commit id: strictly greater ids only.
    let between = vid(sorted[5].ts, sorted[5].txn.0 + 1);
    assert!(between < sorted[6]);
    let page = s
        .scan_commits(Some(between), 3)
        .await
        .expect("scan between");
    assert_eq!(
        page.iter().map(|r| r.id).collect::<Vec<_>>(),
        sorted[6..9].to_vec()
    );
}

/// A second commit with the same idempotency key is a `Duplicate` of the first: no record, no
/// versions; `find_idempotent` names the first. Commits without a key never collide.
/// A batch sent again (to settle an unknown outcome) reports the commit once applied,
/// leaves one record, and commits a batch whose first attempt never arrived.
pub async fn a_commit_sent_again_is_idempotent(storage: Arc<dyn Storage>) {
    let s = &*storage;
    let plain_id = vid(10, 1);
    let keyed_id = vid(20, 2);
    let plain_batch = || batch(plain_id, None, &[(b"a", b"1"), (b"b", b"1")]);
    let keyed_batch = || batch(keyed_id, Some(b"once"), &[(b"a", b"2")]);
    commit_ok(s, plain_batch()).await;
    commit_ok(s, keyed_batch()).await;
    // Sent again, both report the commit (a keyed one may name its own id as the holder).
    commit_ok(s, plain_batch()).await;
    let again = plain(s.commit(keyed_batch()).await);
    assert!(
        again == Ok(CommitOutcome::Committed) || again == Ok(CommitOutcome::Duplicate(keyed_id)),
        "{again:?}"
    );
    let ids: Vec<VersionId> = scan_all(s).await.iter().map(|r| r.id).collect();
    assert_eq!(ids, vec![plain_id, keyed_id], "one record each");
    assert_eq!(
        get_one(s, b"a", plain_id).await,
        Some(Bytes::from_static(b"1"))
    );
    assert_eq!(
        get_one(s, b"a", keyed_id).await,
        Some(Bytes::from_static(b"2"))
    );
    assert_eq!(s_find(s, "once").await, Some(keyed_id));
    // After GC deleted its superseded version, a resend still writes no second record.
    s.delete(vec![vkey(b"b", plain_id)], Vec::new())
        .await
        .expect("delete");
    commit_ok(s, plain_batch()).await;
    assert_eq!(scan_all(s).await.len(), 2);
}

/// Orphan reclamation, even with no grace at all, never touches what a commit record
/// references: every committed version and record is still there afterwards.
pub async fn reclaiming_orphans_spares_commits(storage: Arc<dyn Storage>) {
    let s = &*storage;
    let ids: Vec<VersionId> = (1..=5u64).map(|i| vid(100 + i, u128::from(i))).collect();
    for (i, id) in ids.iter().enumerate() {
        let value = format!("v{i}");
        commit_ok(
            s,
            batch(*id, None, &[(b"k", value.as_bytes()), (b"j", b"x")]),
        )
        .await;
    }
    s.reclaim_orphans(std::time::Duration::ZERO)
        .await
        .expect("reclaim_orphans");
    for (i, id) in ids.iter().enumerate() {
        let value = format!("v{i}");
        assert_eq!(
            get_one(s, b"k", *id).await.as_deref(),
            Some(value.as_bytes())
        );
        assert_eq!(get_one(s, b"j", *id).await, Some(Bytes::from_static(b"x")));
    }
    assert_eq!(scan_all(s).await.len(), ids.len());
}

/// A commit whose idempotency key another commit holds is a duplicate and writes nothing.
pub async fn idempotent_commit(storage: Arc<dyn Storage>) {
    let s = &*storage;
    let first = vid(10, 1);
    let second = vid(20, 2);
    commit_ok(s, batch(first, Some(b"req-1"), &[(b"x", b"first")])).await;
    let outcome = plain(
        s.commit(batch(
            second,
            Some(b"req-1"),
            &[(b"x", b"second"), (b"y", b"second")],
        ))
        .await,
    );
    assert_eq!(outcome, Ok(CommitOutcome::Duplicate(first)));
    assert_eq!(get_one(s, b"x", second).await, None);
    assert_eq!(get_one(s, b"y", second).await, None);
    assert_eq!(
        get_one(s, b"x", first).await,
        Some(Bytes::from_static(b"first"))
    );
    assert_eq!(
        scan_all(s).await.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![first]
    );

    assert_eq!(s_find(s, "req-1").await, Some(first));
    assert_eq!(s_find(s, "req-2").await, None);
    assert_eq!(s_find(s, "req-").await, None);

    // The same retry, again: still the first.
    let outcome = plain(s.commit(batch(vid(30, 3), Some(b"req-1"), &[])).await);
    assert_eq!(outcome, Ok(CommitOutcome::Duplicate(first)));

    // No key: never a duplicate. The empty key is a key like any other.
    commit_ok(s, batch(vid(40, 4), None, &[(b"x", b"4")])).await;
    commit_ok(s, batch(vid(41, 4), None, &[(b"x", b"41")])).await;
    commit_ok(s, batch(vid(50, 5), Some(b""), &[])).await;
    let outcome = plain(s.commit(batch(vid(51, 5), Some(b""), &[])).await);
    assert_eq!(outcome, Ok(CommitOutcome::Duplicate(vid(50, 5))));
    assert_eq!(s_find(s, "").await, Some(vid(50, 5)));
}

/// Concurrent commits racing on one idempotency key: exactly one is `Committed`, the others are
/// duplicates of it, and only its versions exist.
pub async fn idempotency_race(storage: Arc<dyn Storage>) {
    const RACERS: u128 = 16;
    for round in 0..10u64 {
        let key = format!("race-{round}");
        let tasks: Vec<_> = (0..RACERS)
            .map(|i| {
                let storage = storage.clone();
                let b = batch(
                    vid(round, i),
                    Some(key.as_bytes()),
                    &[(b"r", key.as_bytes())],
                );
                tokio::spawn(async move { (b.record.id, storage.commit(b).await) })
            })
            .collect();
        let mut winners = Vec::new();
        let mut duplicates = Vec::new();
        for task in tasks {
            match task.await.expect("task") {
                (id, Ok(CommitOutcome::Committed)) => winners.push(id),
                (_, Ok(CommitOutcome::Duplicate(of))) => duplicates.push(of),
                (id, Ok(CommitOutcome::Conflict(i))) => {
                    panic!("commit {id:?} without checks failed check {i}")
                }
                (id, Ok(CommitOutcome::Moved)) => {
                    panic!("commit {id:?} without a log position was refused for one")
                }
                (id, Err(e)) => panic!("commit {id:?} failed: {e}"),
            }
        }
        assert_eq!(winners.len(), 1, "round {round}: {winners:?}");
        let winner = winners[0];
        assert!(duplicates.iter().all(|d| *d == winner), "round {round}");
        assert_eq!(s_find(&*storage, &key).await, Some(winner));
        for i in 0..RACERS {
            let id = vid(round, i);
            let expected = (id == winner).then(|| Bytes::from(key.clone()));
            assert_eq!(get_one(&*storage, b"r", id).await, expected);
        }
    }
}

async fn s_find(storage: &dyn Storage, key: &str) -> Option<VersionId> {
    storage
        .find_idempotent(Bytes::from(key.to_owned()))
        .await
        .expect("find_idempotent")
}

/// `delete` removes exactly the named versions and commit records (with their idempotency
/// entries, so the key may be used again), and deleting what does not exist is not an error.
pub async fn delete_is_complete_and_idempotent(storage: Arc<dyn Storage>) {
    let s = &*storage;
    let a = vid(1, 1);
    let b = vid(2, 2);
    commit_ok(s, batch(a, Some(b"idem-a"), &[(b"k", b"a"), (b"l", b"a")])).await;
    commit_ok(s, batch(b, Some(b"idem-b"), &[(b"k", b"b"), (b"l", b"b")])).await;

    // Versions only: the commit records stay.
    s.delete(vec![vkey(b"k", a)], vec![])
        .await
        .expect("delete version");
    assert_eq!(get_one(s, b"k", a).await, None);
    assert_eq!(get_one(s, b"l", a).await, Some(Bytes::from_static(b"a")));
    assert_eq!(get_one(s, b"k", b).await, Some(Bytes::from_static(b"b")));
    assert_eq!(scan_all(s).await.len(), 2);

    // A commit record and its idempotency entry; its remaining version stays until named.
    s.delete(vec![], vec![vkey(b"idem-a", a)])
        .await
        .expect("delete commit");
    assert_eq!(
        scan_all(s).await.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![b]
    );
    assert_eq!(s_find(s, "idem-a").await, None);
    assert_eq!(s_find(s, "idem-b").await, Some(b));
    assert_eq!(get_one(s, b"l", a).await, Some(Bytes::from_static(b"a")));

    // Idempotent: again, and things that never existed.
    s.delete(
        vec![vkey(b"k", a), vkey(b"l", a), vkey(b"nope", b)],
        vec![vkey(b"idem-a", a), vkey(b"k", vid(9, 9))],
    )
    .await
    .expect("delete again");
    s.delete(vec![], vec![]).await.expect("empty delete");
    assert_eq!(get_one(s, b"l", a).await, None);
    assert_eq!(get_one(s, b"l", b).await, Some(Bytes::from_static(b"b")));

    // The idempotency key of a deleted commit is free again.
    let c = vid(3, 3);
    commit_ok(s, batch(c, Some(b"idem-a"), &[(b"k", b"c")])).await;
    assert_eq!(s_find(s, "idem-a").await, Some(c));

    // Deleting a commit whose key was reused must not remove the new owner's entry.
    s.delete(vec![], vec![vkey(b"idem-a", a)])
        .await
        .expect("delete stale");
    assert_eq!(s_find(s, "idem-a").await, Some(c));
}

/// 200 concurrent commits all succeed and are all readable, record and versions.
pub async fn many_concurrent_commits(storage: Arc<dyn Storage>) {
    const TASKS: u64 = 200;
    let tasks: Vec<_> = (0..TASKS)
        .map(|i| {
            let storage = storage.clone();
            tokio::spawn(async move {
                let key = format!("key-{i}");
                let idem = format!("idem-{i}");
                let b = batch(
                    vid(i, u128::from(i)),
                    Some(idem.as_bytes()),
                    &[(key.as_bytes(), b"v"), (b"shared", key.as_bytes())],
                );
                storage.commit(b).await
            })
        })
        .collect();
    for task in tasks {
        assert_eq!(
            plain(task.await.expect("task")),
            Ok(CommitOutcome::Committed)
        );
    }
    let s = &*storage;
    let ids: BTreeSet<VersionId> = scan_all(s).await.iter().map(|r| r.id).collect();
    assert_eq!(ids, (0..TASKS).map(|i| vid(i, u128::from(i))).collect());
    let mut requests = Vec::new();
    let mut expected = Vec::new();
    for i in 0..TASKS {
        let id = vid(i, u128::from(i));
        let key = format!("key-{i}");
        requests.push(vkey(key.as_bytes(), id));
        expected.push(Some(Bytes::from_static(b"v")));
        requests.push(vkey(b"shared", id));
        expected.push(Some(Bytes::from(key)));
    }
    assert_eq!(
        s.get_versions(requests).await.expect("get_versions"),
        expected
    );
    for i in (0..TASKS).step_by(37) {
        assert_eq!(
            s_find(s, &format!("idem-{i}")).await,
            Some(vid(i, u128::from(i)))
        );
    }
}

/// After `close` every call fails with `Closed`; `close` itself is idempotent.
pub async fn close_then_closed(storage: Arc<dyn Storage>) {
    let s = &*storage;
    assert!(!s.name().is_empty());
    commit_ok(s, batch(vid(1, 1), Some(b"i"), &[(b"k", b"v")])).await;
    s.close().await.expect("close");

    assert_closed(s.commit(batch(vid(2, 2), None, &[(b"k", b"v")])).await);
    assert_closed(s.get_versions(vec![vkey(b"k", vid(1, 1))]).await);
    assert_closed(s.scan_commits(None, 10).await);
    assert_closed(s.find_idempotent(Bytes::from_static(b"i")).await);
    assert_closed(s.delete(vec![], vec![vkey(b"k", vid(1, 1))]).await);
    s.close().await.expect("second close");
}
