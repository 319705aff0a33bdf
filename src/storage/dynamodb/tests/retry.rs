//! The retry loop: unprocessed items and keys, throttling, backoff.

use std::sync::atomic::Ordering;

use super::*;
use crate::storage::testkit::conformance::{self, get_one, vid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unprocessed_items_and_keys_are_sent_again() {
    let (s, _emulator) = open(Limits::default()).await;
    let (f, faults) = faulty(&s, Limits::default(), 5);
    faults.half_unprocessed.store(true, Ordering::SeqCst);
    let id = vid(7, 7);
    conformance::commit_ok(&f, big_batch(id, 300, None)).await;
    let values = read_all(&f, id, 300).await;
    assert!(values.iter().all(Option::is_some));
    let stats = f.stats();
    assert!(stats.unprocessed_items >= 150, "{stats:?}");
    assert!(stats.unprocessed_keys >= 150, "{stats:?}");
    // Against the real table too.
    assert!(read_all(&*s, id, 300).await.iter().all(Option::is_some));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_that_make_no_progress_give_up_after_the_attempts() {
    let (s, _emulator) = open(Limits::default()).await;
    let (f, faults) = faulty(&s, Limits::default(), 3);
    let id = vid(7, 7);
    conformance::commit_ok(&f, big_batch(id, 30, None)).await;
    faults.all_unprocessed.store(true, Ordering::SeqCst);
    let read = f
        .get_versions(
            (0..30)
                .map(|i| vkey(format!("key-{i}").as_bytes(), id))
                .collect(),
        )
        .await;
    assert!(
        matches!(&read, Err(StorageError::Unavailable(m))
            if m.message().contains("BatchGetItem left 30 keys unprocessed after 3 attempts")),
        "{read:?}"
    );
    let stats = f.stats();
    assert_eq!((stats.retries, stats.exhausted), (2, 1), "{stats:?}");
    // Too large for one transaction: written in batches.
    let commit = f.commit(big_batch(vid(8, 8), 300, None)).await;
    assert!(
        matches!(&commit, Err(StorageError::Unavailable(m))
            if m.message().contains("BatchWriteItem left")
                && m.message().contains("items unprocessed after 3 attempts")),
        "{commit:?}"
    );
    // Half of every batch goes through: progress, however slow, is not given up on.
    faults.all_unprocessed.store(false, Ordering::SeqCst);
    faults.half_unprocessed.store(true, Ordering::SeqCst);
    assert!(read_all(&f, id, 30).await.iter().all(Option::is_some));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_counted_then_reported() {
    let (s, _emulator) = open(Limits::default()).await;
    let (f, faults) = faulty(&s, Limits::default(), 4);
    faults.throttle_next.store(3, Ordering::SeqCst);
    conformance::commit_ok(&f, batch(vid(1, 1), None, &[(b"k", b"v")])).await;
    let stats = f.stats();
    assert_eq!((stats.throttled, stats.retries, stats.exhausted), (3, 3, 0));

    faults.throttle_next.store(u64::MAX, Ordering::SeqCst);
    let result = f.commit(batch(vid(2, 2), None, &[(b"k", b"w")])).await;
    assert!(
        matches!(&result, Err(StorageError::Unavailable(m)) if m.message().contains("gave up after 4 attempts")),
        "{result:?}"
    );
    let read = f.get_versions(vec![vkey(b"k", vid(1, 1))]).await;
    assert!(
        matches!(read, Err(StorageError::Unavailable(_))),
        "{read:?}"
    );
    assert!(f.stats().exhausted >= 2);
    faults.throttle_next.store(0, Ordering::SeqCst);
    assert_eq!(get_one(&f, b"k", vid(2, 2)).await, None);
}

#[test]
fn backoff_is_jittered_and_capped() {
    let s = DynamoDbStorage::with_api(
        FaultApi::new(Arc::new(NoApi)),
        "t",
        Limits::default(),
        3,
        Duration::ZERO,
    );
    for attempt in 1..40 {
        let d = s.backoff(attempt);
        assert!(d > Duration::ZERO && d <= MAX_BACKOFF, "{attempt}: {d:?}");
    }
    let first: Vec<Duration> = (0..50).map(|_| s.backoff(1)).collect();
    assert!(first.iter().all(|d| *d <= BASE_BACKOFF * 2));
    assert!(first.windows(2).any(|w| w[0] != w[1]));
}
