//! Scans over the commit directory, its buckets and shards.

use std::collections::HashSet;

use super::*;
use crate::storage::testkit::conformance::{self, get_one, scan_all, vid};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_drop_empty_ancient_buckets_and_still_find_new_commits() {
    let (s, _emulator) = open(Limits::default()).await;
    let directory = || async {
        s.query_all(DIRECTORY_PK.to_vec(), None, None, None, usize::MAX)
            .await
            .expect("directory")
            .len()
    };
    conformance::commit_ok(&*s, batch(vid(1, 1), None, &[(b"k", b"v")])).await;
    assert_eq!(directory().await, 1);
    s.delete(vec![vkey(b"k", vid(1, 1))], vec![vkey(b"k", vid(1, 1))])
        .await
        .expect("delete");
    assert!(scan_all(&*s).await.is_empty());
    assert_eq!(directory().await, 0, "an empty bucket of 1970 is dropped");
    conformance::commit_ok(&*s, batch(vid(2, 1), None, &[(b"k", b"w")])).await;
    assert_eq!(scan_all(&*s).await.len(), 1);
    // Recent buckets stay even when empty.
    let now = now_ms() << 16;
    conformance::commit_ok(&*s, batch(vid(now, 1), None, &[])).await;
    s.delete(vec![], vec![vkey(b"k", vid(now, 1))])
        .await
        .expect("delete");
    assert_eq!(scan_all(&*s).await.len(), 1);
    assert_eq!(directory().await, 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_spread_over_buckets_and_shards_scan_in_order() {
    let (s, _emulator) = open(Limits::default()).await;
    let mut ids = Vec::new();
    for b in [0u64, 1, 5, 1 << 20] {
        for t in 0..12u128 {
            ids.push(vid(
                (b << BUCKET_SHIFT) + (t as u64 % 3),
                t * 0x1_0000_0001 + 7,
            ));
        }
    }
    for id in ids.iter().rev() {
        conformance::commit_ok(&*s, batch(*id, None, &[])).await;
    }
    ids.sort();
    let shards: HashSet<u8> = ids.iter().map(|id| shard(*id)).collect();
    assert_eq!(shards.len(), COMMIT_SHARDS as usize);
    for limit in [1, 5, 12, 13, 100] {
        let mut paged = Vec::new();
        let mut after = None;
        loop {
            let page = s.scan_commits(after, limit).await.expect("scan");
            let Some(last) = page.last() else { break };
            after = Some(last.id);
            paged.extend(page.into_iter().map(|r| r.id));
        }
        assert_eq!(paged, ids, "limit {limit}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_value_whose_chunks_are_being_deleted_reads_as_collected() {
    let (s, _emulator) = open(tiny()).await;
    let id = vid(3, 3);
    let big = vec![7u8; 10_000];
    conformance::commit_ok(&*s, batch(id, None, &[(b"k", &big[..]), (b"small", b"v")])).await;
    assert_eq!(
        get_one(&*s, b"k", id).await.as_deref(),
        Some(&big[..]),
        "stored split"
    );
    // Garbage collection got as far as the chunks.
    s.delete_items(chunk_keys(&version_pk(b"k"), &id.to_bytes(), 2))
        .await
        .expect("delete chunks");
    let read = s
        .get_versions(vec![vkey(b"k", id), vkey(b"small", id)])
        .await
        .expect("a read during deletion is not an error");
    assert_eq!(read, vec![None, Some(Bytes::from_static(b"v"))]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_whose_deletion_stopped_halfway_is_finished_by_the_next_scan() {
    let (s, _emulator) = open(tiny()).await;
    // A record larger than a chunk.
    let (big, next) = (vid(5, 5), vid(6, 6));
    let mut large = batch(big, None, &[(b"x", b"v")]);
    large.record.body = Bytes::from(vec![1u8; 10_000]);
    conformance::commit_ok(&*s, large).await;
    conformance::commit_ok(&*s, batch(next, None, &[(b"k", b"v")])).await;
    // Garbage collection deleted the big record's first chunk, then stopped.
    s.delete_items(chunk_keys(&commit_pk(big), &big.to_bytes(), 1))
        .await
        .expect("delete a chunk");
    // A page of one still holds the next record: the scan does not end early.
    let page = s.scan_commits(None, 1).await.expect("scan");
    assert_eq!(page.iter().map(|r| r.id).collect::<Vec<_>>(), vec![next]);
    let all = scan_all(&*s).await;
    assert_eq!(all.iter().map(|r| r.id).collect::<Vec<_>>(), vec![next]);
    let head = s
        .get_item(key_item(commit_pk(big), big.to_bytes().to_vec()))
        .await
        .expect("read the head");
    assert!(head.is_none(), "the rest of the record was deleted");
}
