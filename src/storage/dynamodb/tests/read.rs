//! Scans over the commit directory, its buckets and shards.

use std::collections::HashSet;

use super::*;
use crate::storage::testkit::conformance::{self, scan_all, vid};

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
    s.delete(vec![vkey(b"k", vid(1, 1))], vec![vid(1, 1)])
        .await
        .expect("delete");
    assert!(scan_all(&*s).await.is_empty());
    assert_eq!(directory().await, 0, "an empty bucket of 1970 is dropped");
    conformance::commit_ok(&*s, batch(vid(2, 1), None, &[(b"k", b"w")])).await;
    assert_eq!(scan_all(&*s).await.len(), 1);
    // Recent buckets stay even when empty.
    let now = now_ms() << 16;
    conformance::commit_ok(&*s, batch(vid(now, 1), None, &[])).await;
    s.delete(vec![], vec![vid(now, 1)]).await.expect("delete");
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
