//! Commits: large ones on the general path, values over the item limit, lost replies.

use std::sync::atomic::Ordering;

use super::*;
use crate::storage::testkit::conformance::{self, get_one, plain, scan_all, vid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_keys_commit_and_read_back() {
    let (s, _emulator) = open(Limits::default()).await;
    let id = vid(100, 1);
    conformance::commit_ok(&*s, big_batch(id, 1000, Some(b"big"))).await;
    let values = read_all(&*s, id, 1000).await;
    for (i, value) in values.iter().enumerate() {
        let expected = format!("value-{i}-{id:?}");
        assert_eq!(value.as_deref(), Some(expected.as_bytes()), "key {i}");
    }
    let stats = s.stats();
    assert_eq!((stats.general_commits, stats.fast_commits), (1, 0));
    assert_eq!(
        markers(&s).await,
        0,
        "the marker is deleted after the commit"
    );
    assert_eq!(scan_all(&*s).await.len(), 1);
    assert_eq!(
        plain(s.find_idempotent(Bytes::from_static(b"big")).await),
        Ok(Some(id))
    );
    // A retry of the same transaction is a duplicate and writes nothing.
    let retry = s.commit(big_batch(vid(101, 1), 1000, Some(b"big"))).await;
    assert_eq!(plain(retry), Ok(CommitOutcome::Duplicate(id)));
    assert!(read_all(&*s, vid(101, 1), 1000)
        .await
        .iter()
        .all(Option::is_none));
    // 99 versions and a record: still one transaction.
    conformance::commit_ok(&*s, big_batch(vid(102, 1), 99, None)).await;
    assert_eq!(s.stats().fast_commits, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_over_the_item_limit_are_split_and_deleted_whole() {
    let (s, _emulator) = open(Limits::default()).await;
    let value = |len: usize, seed: u32| -> Vec<u8> {
        (0..len as u32)
            .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 24) as u8)
            .collect()
    };
    let medium = value(1_500_000, 1); // 5 items: one transaction
    let large = value(6_000_000, 2); // over 4 MB: the general path
    let exact = value(CHUNK_BYTES, 3); // fits in the head
    let a = vid(1, 1);
    let b = vid(2, 2);
    conformance::commit_ok(&*s, batch(a, None, &[(b"m", &medium), (b"e", &exact)])).await;
    conformance::commit_ok(&*s, batch(b, None, &[(b"l", &large)])).await;
    assert_eq!((s.stats().fast_commits, s.stats().general_commits), (1, 1));
    assert_eq!(get_one(&*s, b"m", a).await.as_deref(), Some(&medium[..]));
    assert_eq!(get_one(&*s, b"e", a).await.as_deref(), Some(&exact[..]));
    assert_eq!(get_one(&*s, b"l", b).await.as_deref(), Some(&large[..]));

    let chunks_of = |key: &[u8], id: VersionId| {
        let count = chunks_needed(
            if key == b"m" {
                medium.len()
            } else {
                large.len()
            },
            CHUNK_BYTES,
        );
        chunk_keys(&version_pk(key), &id.to_bytes(), count)
    };
    let m_chunks = chunks_of(b"m", a);
    let l_chunks = chunks_of(b"l", b);
    assert_eq!((m_chunks.len(), l_chunks.len()), (4, 16));
    s.delete(vec![vkey(b"m", a), vkey(b"l", b)], vec![])
        .await
        .expect("delete");
    assert_eq!(get_one(&*s, b"m", a).await, None);
    assert_eq!(get_one(&*s, b"l", b).await, None);
    for key in m_chunks.into_iter().chain(l_chunks) {
        assert_eq!(s.get_item(key).await.expect("get chunk"), None);
    }
    assert_eq!(get_one(&*s, b"e", a).await.as_deref(), Some(&exact[..]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_reply_is_resolved_by_the_retry_or_reported_unknown() {
    let (s, _emulator) = open(Limits::default()).await;
    let (f, faults) = faulty(&s, Limits::default(), 3);
    // Applied, reply lost once: the retry (same token) learns it committed.
    faults.lose_replies.store(1, Ordering::SeqCst);
    conformance::commit_ok(&f, batch(vid(1, 1), Some(b"i"), &[(b"k", b"v")])).await;
    assert_eq!(scan_all(&f).await.len(), 1);

    // Every reply lost: the outcome is unknown, and the commit did happen.
    faults.lose_replies.store(u64::MAX, Ordering::SeqCst);
    let result = f
        .commit(batch(vid(2, 2), Some(b"j"), &[(b"k", b"w")]))
        .await;
    assert!(
        matches!(result, Err(StorageError::OutcomeUnknown(_))),
        "{result:?}"
    );
    faults.lose_replies.store(0, Ordering::SeqCst);
    assert_eq!(
        get_one(&f, b"k", vid(2, 2)).await,
        Some(Bytes::from_static(b"w"))
    );
    // The client's retry is a duplicate of it.
    let retry = f
        .commit(batch(vid(3, 3), Some(b"j"), &[(b"k", b"x")]))
        .await;
    assert_eq!(plain(retry), Ok(CommitOutcome::Duplicate(vid(2, 2))));

    // The same in the general path: its final transaction's retry finds its own record.
    let (g, faults) = faulty(&s, tiny(), 3);
    faults.lose_replies.store(1, Ordering::SeqCst);
    conformance::commit_ok(&g, big_batch(vid(4, 4), 10, Some(b"g"))).await;
    assert_eq!(markers(&g).await, 0);
}
