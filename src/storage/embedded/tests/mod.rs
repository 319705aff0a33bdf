//! Tests of the store as a whole: the conformance suite (with and without `fsync`), reopening,
//! single ownership, corruption, group commit and close. Write failures are in [`fault`], the
//! killed process in [`crash`].

mod crash;
mod fault;

use std::collections::BTreeSet;
use std::sync::Arc;
use std::task::{Context, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use redb::Database;
use tempfile::TempDir;

use super::layout::{COMMITS, IDEMPOTENCY};
use super::{EmbeddedOptions, EmbeddedStorage, FILE_NAME};
use crate::storage::testkit::conformance::{batch, commit_ok, get_one, plain, scan_all, vid, vkey};
use crate::storage::{CommitOutcome, Storage, StorageError, VersionId};

fn open_temp(fsync: bool) -> (Arc<EmbeddedStorage>, TempDir) {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = EmbeddedOptions {
        fsync,
        ..EmbeddedOptions::default()
    };
    let storage = EmbeddedStorage::open(dir.path(), options).expect("open");
    (Arc::new(storage), dir)
}

fn reopen(dir: &TempDir, fsync: bool) -> EmbeddedStorage {
    let options = EmbeddedOptions {
        fsync,
        ..EmbeddedOptions::default()
    };
    EmbeddedStorage::open(dir.path(), options).expect("reopen")
}

crate::storage_conformance_tests!(|| open_temp(true));

mod without_fsync {
    use super::open_temp;

    crate::storage_conformance_tests!(|| open_temp(false));
}

/// Commits a few records (one later deleted) and returns what should remain.
async fn populate(s: &dyn Storage) -> Vec<VersionId> {
    let ids: Vec<VersionId> = (1..=20).map(|i| vid(i, u128::from(i) << 64)).collect();
    for (i, id) in ids.iter().enumerate() {
        let idem = format!("idem-{i}");
        let value = format!("value-{i}");
        commit_ok(
            s,
            batch(*id, Some(idem.as_bytes()), &[(b"k", value.as_bytes())]),
        )
        .await;
    }
    s.delete(vec![vkey(b"k", ids[0])], vec![vkey(b"k", ids[0])])
        .await
        .expect("delete");
    ids[1..].to_vec()
}

async fn check_populated(s: &dyn Storage, expected: &[VersionId]) {
    let ids: Vec<VersionId> = scan_all(s).await.iter().map(|r| r.id).collect();
    assert_eq!(ids, expected);
    for (i, id) in expected.iter().enumerate() {
        let value = format!("value-{}", i + 1);
        assert_eq!(
            get_one(s, b"k", *id).await.as_deref(),
            Some(value.as_bytes())
        );
        let idem = Bytes::from(format!("idem-{}", i + 1));
        assert_eq!(plain(s.find_idempotent(idem).await), Ok(Some(*id)));
    }
    assert_eq!(
        plain(s.find_idempotent(Bytes::from_static(b"idem-0")).await),
        Ok(None)
    );
    // Idempotency survives the restart.
    let retry = s
        .commit(batch(vid(99, 99), Some(b"idem-1"), &[(b"k", b"again")]))
        .await;
    assert_eq!(plain(retry), Ok(CommitOutcome::Duplicate(expected[0])));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_close_finds_everything() {
    for fsync in [true, false] {
        let (s, dir) = open_temp(fsync);
        let expected = populate(&*s).await;
        s.close().await.expect("close");
        drop(s);
        let s = reopen(&dir, fsync);
        check_populated(&s, &expected).await;
        s.close().await.expect("close");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_drop_finds_every_acknowledged_commit() {
    for fsync in [true, false] {
        let (s, dir) = open_temp(fsync);
        let expected = populate(&*s).await;
        // Concurrent commits, then the store is dropped with no close.
        let tasks: Vec<_> = (0..64u64)
            .map(|i| {
                let s = s.clone();
                tokio::spawn(async move {
                    let id = vid(1000 + i, u128::from(i));
                    (id, s.commit(batch(id, None, &[(b"c", b"v")])).await)
                })
            })
            .collect();
        let mut acknowledged = Vec::new();
        for task in tasks {
            let (id, result) = task.await.expect("task");
            assert_eq!(plain(result), Ok(CommitOutcome::Committed));
            acknowledged.push(id);
        }
        drop(Arc::into_inner(s).expect("sole owner"));

        let s = reopen(&dir, fsync);
        let found: BTreeSet<VersionId> = scan_all(&s).await.iter().map(|r| r.id).collect();
        for id in expected.iter().chain(&acknowledged) {
            assert!(found.contains(id), "fsync {fsync}: {id:?} lost");
        }
        for id in &acknowledged {
            assert_eq!(get_one(&s, b"c", *id).await.as_deref(), Some(&b"v"[..]));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_open_fails_clearly_until_closed() {
    let (s, dir) = open_temp(true);
    commit_ok(&*s, batch(vid(1, 1), None, &[(b"k", b"v")])).await;
    let second = EmbeddedStorage::open(dir.path(), EmbeddedOptions::default());
    match second {
        Err(StorageError::Unavailable(message)) => {
            assert!(message.message().contains("already open"), "{message}");
            assert!(message.message().contains(FILE_NAME), "{message}");
        }
        other => panic!("expected Unavailable, got {other:?}"),
    }
    // The first store is unharmed.
    assert_eq!(
        get_one(&*s, b"k", vid(1, 1)).await.as_deref(),
        Some(&b"v"[..])
    );
    commit_ok(&*s, batch(vid(2, 2), None, &[(b"k", b"w")])).await;

    // Closing releases the file, even while the value is still alive.
    s.close().await.expect("close");
    let third = reopen(&dir, true);
    assert_eq!(scan_all(&third).await.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_records_are_reported() {
    let (s, dir) = open_temp(true);
    let good = vid(1, 1);
    commit_ok(&*s, batch(good, Some(b"good"), &[(b"k", b"v")])).await;
    s.close().await.expect("close");
    drop(s);

    let bad = vid(5, 5);
    {
        let db = Database::create(dir.path().join(FILE_NAME)).expect("raw open");
        let txn = db.begin_write().expect("begin");
        {
            let mut commits = txn.open_table(COMMITS).expect("commits");
            commits
                .insert(&bad.to_bytes()[..], &[9u8, 0][..])
                .expect("insert");
            let mut idempotency = txn.open_table(IDEMPOTENCY).expect("idempotency");
            idempotency
                .insert(&b"bad"[..], &b"short"[..])
                .expect("insert");
        }
        txn.commit().expect("commit");
    }

    let s = reopen(&dir, true);
    let corrupt = |what: &str, result: Result<(), StorageError>| {
        assert!(
            matches!(result, Err(StorageError::Corrupt(_))),
            "{what}: {result:?}"
        );
    };
    corrupt("scan", s.scan_commits(None, 10).await.map(drop));
    corrupt(
        "find",
        s.find_idempotent(Bytes::from_static(b"bad"))
            .await
            .map(drop),
    );
    let retry = s
        .commit(batch(vid(6, 6), Some(b"bad"), &[(b"k", b"x")]))
        .await;
    corrupt("commit", retry.map(drop));
    corrupt(
        "delete",
        s.delete(vec![vkey(b"k", good)], vec![vkey(b"k", bad)])
            .await,
    );

    // Nothing of the failed requests was applied; the rest of the store works.
    assert_eq!(get_one(&s, b"k", vid(6, 6)).await, None);
    assert_eq!(get_one(&s, b"k", good).await.as_deref(), Some(&b"v"[..]));
    assert_eq!(
        plain(s.find_idempotent(Bytes::from_static(b"good")).await),
        Ok(Some(good))
    );
    let after_bad = s
        .scan_commits(Some(bad), 10)
        .await
        .expect("scan past the bad record");
    assert!(after_bad.is_empty());
    let first = s
        .scan_commits(None, 1)
        .await
        .expect("scan before the bad record");
    assert_eq!(first.iter().map(|r| r.id).collect::<Vec<_>>(), vec![good]);
    commit_ok(&s, batch(vid(7, 7), Some(b"fresh"), &[(b"k", b"y")])).await;
}

#[test]
fn open_rejects_a_file_that_is_not_a_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let garbage: Vec<u8> = b"not a database "
        .iter()
        .copied()
        .cycle()
        .take(64 * 1024)
        .collect();
    std::fs::write(dir.path().join(FILE_NAME), garbage).expect("write");
    let result = EmbeddedStorage::open(dir.path(), EmbeddedOptions::default());
    match result {
        Err(StorageError::Corrupt(message)) => {
            assert!(message.message().contains(FILE_NAME), "{message}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_name_the_backend_and_keep_redbs_error() {
    let (s, dir) = open_temp(true);
    let Err(e) = EmbeddedStorage::open(dir.path(), EmbeddedOptions::default()) else {
        panic!("a second open succeeded");
    };
    assert_eq!(e.backend(), Some("embedded"), "{e}");
    let source = std::error::Error::source(&e).expect("a source");
    assert!(
        source.downcast_ref::<redb::DatabaseError>().is_some(),
        "{source:?}"
    );
    s.close().await.expect("close");

    let not_a_store = tempfile::tempdir().expect("tempdir");
    std::fs::write(not_a_store.path().join(FILE_NAME), [7u8; 64 * 1024]).expect("write");
    let Err(e) = EmbeddedStorage::open(not_a_store.path(), EmbeddedOptions::default()) else {
        panic!("opened a file that is not a store");
    };
    assert!(matches!(e, StorageError::Corrupt(_)), "{e:?}");
    assert_eq!(e.backend(), Some("embedded"), "{e}");
    assert!(std::error::Error::source(&e).is_some(), "{e:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_commits_share_one_write_transaction() {
    let (s, _dir) = open_temp(true);
    let db = s.shared.db.read().clone().expect("open");
    // While the test holds redb's write lock the writer thread cannot begin a group, so
    // every commit below is queued before any is applied.
    let blocker = db.begin_write().expect("begin write");
    let mut pending: Vec<_> = (0..64u64)
        .map(|i| s.commit(batch(vid(i, u128::from(i)), None, &[(b"k", b"v")])))
        .collect();
    let mut cx = Context::from_waker(Waker::noop());
    for commit in &mut pending {
        assert!(commit.as_mut().poll(&mut cx).is_pending());
    }
    blocker.abort().expect("abort");
    drop(db);
    for commit in pending {
        assert_eq!(plain(commit.await), Ok(CommitOutcome::Committed));
    }
    // The first request the writer took may form a group alone; the rest share one.
    let stats = s.stats();
    assert_eq!(stats.requests, 64);
    assert!(stats.groups <= 2, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_applies_what_was_queued_and_refuses_the_rest() {
    let (s, dir) = open_temp(true);
    let tasks: Vec<_> = (0..100u64)
        .map(|i| {
            let s = s.clone();
            tokio::spawn(async move {
                let id = vid(i, u128::from(i));
                (id, s.commit(batch(id, None, &[(b"k", b"v")])).await)
            })
        })
        .collect();
    let closer = s.clone();
    let close = tokio::spawn(async move { closer.close().await });
    let mut committed = Vec::new();
    let mut refused = Vec::new();
    for task in tasks {
        match task.await.expect("task") {
            (id, Ok(CommitOutcome::Committed)) => committed.push(id),
            (id, Err(StorageError::Closed)) => refused.push(id),
            (id, other) => panic!("{id:?}: {other:?}"),
        }
    }
    close.await.expect("close task").expect("close");
    drop(Arc::into_inner(s).expect("sole owner"));

    let s = reopen(&dir, true);
    let found: BTreeSet<VersionId> = scan_all(&s).await.iter().map(|r| r.id).collect();
    assert_eq!(found, committed.iter().copied().collect());
    for id in refused {
        assert_eq!(get_one(&s, b"k", id).await, None);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_closes_all_succeed_after_one_flush() {
    for fsync in [true, false] {
        let (s, dir) = open_temp(fsync);
        commit_ok(&*s, batch(vid(1, 1), None, &[(b"k", b"v")])).await;
        let closes: Vec<_> = (0..4)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.close().await })
            })
            .collect();
        for close in closes {
            close.await.expect("task").expect("close");
        }
        s.close().await.expect("close again");
        drop(s);
        let s = reopen(&dir, fsync);
        assert_eq!(
            get_one(&s, b"k", vid(1, 1)).await.as_deref(),
            Some(&b"v"[..])
        );
    }
}

/// Commits per second through the store with fsync on, from 1 task and from 64.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "benchmark: cargo test --release -- --ignored --nocapture group_commit_throughput"]
async fn group_commit_throughput() {
    const RUN: Duration = Duration::from_secs(3);
    for tasks in [1u64, 64] {
        let (s, _dir) = open_temp(true);
        let start = Instant::now();
        let workers: Vec<_> = (0..tasks)
            .map(|task| {
                let s = s.clone();
                tokio::spawn(async move {
                    let mut done = 0u64;
                    while start.elapsed() < RUN {
                        let id = vid(done, (u128::from(task) << 64) | u128::from(done));
                        let key = format!("key-{task}-{}", done % 100);
                        let b = batch(id, None, &[(key.as_bytes(), &[7u8; 100]), (b"hot", b"v")]);
                        assert_eq!(plain(s.commit(b).await), Ok(CommitOutcome::Committed));
                        done += 1;
                    }
                    done
                })
            })
            .collect();
        let mut commits = 0;
        for worker in workers {
            commits += worker.await.expect("worker");
        }
        let elapsed = start.elapsed().as_secs_f64();
        let stats = s.stats();
        println!(
            "{tasks:>2} task(s): {commits} commits in {elapsed:.2} s = {:.0} commits/s, \
             {} fsynced groups ({:.1} commits per group)",
            commits as f64 / elapsed,
            stats.groups,
            stats.requests as f64 / stats.groups.max(1) as f64,
        );
        s.close().await.expect("close");
    }
}
