//! The commit log of several nodes, in shards: a commit claims the shards of its keys, is
//! refused (`Moved`) only when one of those moved, and is listed once however many it claims.

use super::*;
use crate::storage::testkit::conformance::vid;
use crate::storage::{Beat, CommitOutcome, Conditions, Heartbeat, LogPos, NodeId, Storage};

/// A key whose commits claim shard `shard` of `s`'s log.
fn key_in(s: &DynamoDbStorage, shard: usize) -> Vec<u8> {
    (0..)
        .map(|i| format!("k{i}").into_bytes())
        .find(|k| log_shard_of(k, s.log_shards) == shard)
        .expect("a key of that shard")
}

/// A commit by node 1 of `keys`, validated at `at`.
fn at(id: VersionId, keys: &[&[u8]], at: &LogPos) -> CommitBatch {
    let pairs: Vec<(&[u8], &[u8])> = keys.iter().map(|k| (*k, &b"v"[..])).collect();
    let mut b = batch(id, None, &pairs);
    b.conditions = Conditions {
        node: Some(NodeId(1)),
        at_ms: now_ms(),
        log_at: Some(at.clone()),
        checks: Vec::new(),
        deleted: Vec::new(),
    };
    b
}

async fn head(s: &DynamoDbStorage) -> LogPos {
    s.log_tail(LogPos::default(), 0).await.expect("head").head
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_claim_the_shards_of_their_keys_only() {
    let (s, _emulator) = open(Limits::default()).await;
    assert_eq!(s.log_shards, DEFAULT_LOG_SHARDS);
    s.heartbeat(Heartbeat {
        node: NodeId(1),
        lease: Duration::from_secs(60),
        watermark: LogPos::default(),
        oldest_clock_ms: 0,
        address: String::new(),
        kind: Beat::Join,
    })
    .await
    .expect("join");
    let (a, b) = (key_in(&s, 1), key_in(&s, 2));
    let start = LogPos::default();
    assert_eq!(
        s.commit(at(vid(1, 1), &[&a], &start)).await.unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(head(&s).await, start.with(1, 1));
    // Another shard did not move: a commit there validated at the start still goes in.
    assert_eq!(
        s.commit(at(vid(2, 2), &[&b], &start)).await.unwrap(),
        CommitOutcome::Committed
    );
    // The first shard moved: a commit of its key validated at the start is refused.
    assert_eq!(
        s.commit(at(vid(3, 3), &[&a], &start)).await.unwrap(),
        CommitOutcome::Moved
    );
    let now = head(&s).await;
    assert_eq!(now, LogPos::new(vec![0, 1, 1]));
    // A commit that reads `a` and writes `b` claims the shard of `a` too: validated before
    // the commit of `a`, it is refused though the shard of `b` is current.
    let mut reads_a = at(vid(3, 4), &[&b], &start.with(2, 1));
    reads_a.conditions.checks = vec![(Bytes::from(a.clone()), None)];
    assert_eq!(s.commit(reads_a).await.unwrap(), CommitOutcome::Moved);
    assert_eq!(head(&s).await, now, "nothing claimed");
    // A commit of both keys claims both shards, and is listed once.
    assert_eq!(
        s.commit(at(vid(4, 4), &[&a, &b], &now)).await.unwrap(),
        CommitOutcome::Committed
    );
    assert_eq!(head(&s).await, LogPos::new(vec![0, 2, 2]));
    let page = s.log_tail(now, 10).await.unwrap();
    let ids: Vec<VersionId> = page.records.iter().map(|r| r.id).collect();
    assert_eq!(ids, [vid(4, 4)]);
    assert_eq!(page.through, LogPos::new(vec![0, 2, 2]));
    // Deleted, it leaves every shard's log.
    s.delete(vec![], vec![vkey(&a, vid(4, 4))]).await.unwrap();
    let all = s.log_tail(LogPos::default(), 10).await.unwrap();
    let ids: Vec<VersionId> = all.records.iter().map(|r| r.id).collect();
    assert_eq!(ids.len(), 2, "{ids:?}");
    assert!(!ids.contains(&vid(4, 4)));
    let entries = s
        .query_all(log_pk(2), None, None, None, 10)
        .await
        .expect("entries");
    assert_eq!(
        entries.len(),
        1,
        "shard 2 keeps the entry of the commit of b only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_first_node_decides_how_many_shards_the_log_has() {
    let emulator = Emulator::start().await;
    let mut options = emulator.options("aft");
    options.log_shards = 3;
    let first = DynamoDbStorage::connect(options.clone()).await.unwrap();
    assert_eq!(first.log_shards, 3);
    options.log_shards = 9;
    let second = DynamoDbStorage::connect(options).await.unwrap();
    assert_eq!(second.log_shards, 3, "the stored count wins");
    // A table written before shards existed (no count in its format item) has one.
    let mut format = key_item(FORMAT_PK.to_vec(), SINGLE_SK.to_vec());
    format.insert(FORMAT.into(), num(1));
    first
        .write_one(put_action(&first.table, format).unwrap())
        .await
        .unwrap_or_else(|_| panic!("rewrite the format item"));
    let mut options = emulator.options("aft");
    options.log_shards = 5;
    let old = DynamoDbStorage::connect(options).await.unwrap();
    assert_eq!(old.log_shards, 1);
}
