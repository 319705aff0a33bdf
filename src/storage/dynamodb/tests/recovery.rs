//! Orphans: what a crash at each step of a general-path commit leaves, and its clean-up.

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::Notify;

use super::*;
use crate::storage::testkit::conformance::{self, get_one, plain, scan_all, vid};

/// A general-path commit that "crashes" where `rule` says; returns the id and key count.
async fn crash_during_general_commit(
    s: &DynamoDbStorage,
    rule: impl Fn(Call, u64) -> bool + Send + Sync + 'static,
) -> Result<CommitOutcome, StorageError> {
    let (f, faults) = faulty(s, Limits::default(), 3);
    faults.crash_when(rule);
    f.commit(big_batch(vid(50, 5), 300, Some(b"crash"))).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_of_a_crash_before_the_record_are_invisible_and_reclaimed() {
    let (s, _emulator) = open(Limits::default()).await;
    let id = vid(50, 5);
    conformance::commit_ok(&*s, batch(vid(1, 1), None, &[(b"key-0", b"old")])).await;
    // Crash when the commit sends its final transaction: every version is written.
    let result = crash_during_general_commit(&s, |call, _| call == Call::Transact).await;
    assert!(matches!(result, Err(StorageError::Io(_))), "{result:?}");
    // What a restarted node finds: versions, a marker, no record.
    assert!(read_all(&*s, id, 300).await.iter().all(Option::is_some));
    assert_eq!(markers(&s).await, 1);
    assert_eq!(
        scan_all(&*s).await.iter().map(|r| r.id).collect::<Vec<_>>(),
        vec![vid(1, 1)]
    );
    assert_eq!(
        plain(s.find_idempotent(Bytes::from_static(b"crash")).await),
        Ok(None)
    );
    // Too young: untouched.
    assert_eq!(
        plain(s.reclaim_orphans(Duration::from_secs(3600)).await),
        Ok(0)
    );
    assert_eq!(markers(&s).await, 1);
    assert_eq!(plain(s.reclaim_orphans(Duration::ZERO).await), Ok(300));
    assert!(read_all(&*s, id, 300).await.iter().all(Option::is_none));
    assert_eq!(markers(&s).await, 0);
    assert_eq!(s.stats().orphans_reclaimed, 300);
    assert_eq!(
        get_one(&*s, b"key-0", vid(1, 1)).await,
        Some(Bytes::from_static(b"old"))
    );
    // The idempotency key is free: the client's retry commits.
    conformance::commit_ok(&*s, big_batch(vid(60, 6), 300, Some(b"crash"))).await;
    assert_eq!(plain(s.reclaim_orphans(Duration::ZERO).await), Ok(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orphans_of_a_crash_among_the_batches_are_reclaimed() {
    let (s, _emulator) = open(Limits::default()).await;
    let id = vid(50, 5);
    // The third BatchWriteItem never happens, nor anything after it.
    let result =
        crash_during_general_commit(&s, |call, n| call == Call::BatchWrite && n == 3).await;
    assert!(result.is_err());
    // Requests in flight when the crash came may or may not have been applied.
    let present = read_all(&*s, id, 300)
        .await
        .iter()
        .filter(|v| v.is_some())
        .count();
    assert!(present < 300, "{present}");
    assert_eq!(markers(&s).await, 1);
    assert!(scan_all(&*s).await.is_empty());
    assert_eq!(plain(s.reclaim_orphans(Duration::ZERO).await), Ok(300));
    assert!(read_all(&*s, id, 300).await.iter().all(Option::is_none));
    assert_eq!(markers(&s).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_after_the_record_keeps_the_commit() {
    let (s, _emulator) = open(Limits::default()).await;
    let id = vid(50, 5);
    // The marker's deletion (a BatchWriteItem after the transaction) never happens.
    let result = crash_during_general_commit(&s, {
        let after_txn = Arc::new(AtomicBool::new(false));
        move |call, _| {
            if call == Call::Transact {
                after_txn.store(true, Ordering::SeqCst);
                return false;
            }
            call == Call::BatchWrite && after_txn.load(Ordering::SeqCst)
        }
    })
    .await;
    assert_eq!(plain(result), Ok(CommitOutcome::Committed));
    assert_eq!(markers(&s).await, 1);
    assert_eq!(plain(s.reclaim_orphans(Duration::ZERO).await), Ok(0));
    assert_eq!(markers(&s).await, 0);
    assert!(read_all(&*s, id, 300).await.iter().all(Option::is_some));
    assert_eq!(scan_all(&*s).await.len(), 1);
    assert_eq!(
        plain(s.find_idempotent(Bytes::from_static(b"crash")).await),
        Ok(Some(id))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_writing_the_marker_leaves_only_the_marker() {
    let (s, _emulator) = open(Limits::default()).await;
    let limits = Limits {
        chunk_bytes: 1024,
        ..Limits::default()
    };
    let (f, faults) = faulty(&s, limits, 3);
    // With 1 KiB chunks the key list has overflow chunks: crash while writing them.
    faults.crash_when(|call, n| call == Call::BatchWrite && n == 1);
    let result = f.commit(big_batch(vid(50, 5), 300, None)).await;
    assert!(result.is_err());
    assert_eq!(markers(&s).await, 1);
    assert_eq!(plain(s.reclaim_orphans(Duration::ZERO).await), Ok(0));
    assert_eq!(markers(&s).await, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reclaim_fences_a_slow_commit() {
    let (s, _emulator) = open(Limits::default()).await;
    let (f, faults) = faulty(&s, Limits::default(), 3);
    let reached = Arc::new(Notify::new());
    let release = Arc::new(Notify::new());
    *faults.hold.lock() = Some((reached.clone(), release.clone()));
    let f = Arc::new(f);
    let commit = tokio::spawn({
        let f = f.clone();
        async move { f.commit(big_batch(vid(50, 5), 300, Some(b"slow"))).await }
    });
    reached.notified().await;
    // The commit has written its versions and waits to send its transaction.
    assert_eq!(plain(s.reclaim_orphans(Duration::ZERO).await), Ok(300));
    release.notify_one();
    let result = commit.await.expect("commit task");
    assert!(
        matches!(&result, Err(StorageError::Io(m)) if m.message().contains("abandoned")),
        "{result:?}"
    );
    assert!(scan_all(&*s).await.is_empty());
    assert!(read_all(&*s, vid(50, 5), 300)
        .await
        .iter()
        .all(Option::is_none));
    assert_eq!(
        plain(s.find_idempotent(Bytes::from_static(b"slow")).await),
        Ok(None)
    );
    assert_eq!(markers(&s).await, 0);
}
