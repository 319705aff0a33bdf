//! Unit tests of the engine: watches, unknown outcomes, FLUSHALL, revoked snapshots, ids.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::index::VersionMeta;
use super::*;
use crate::storage::memory::MemoryStorage;
use crate::storage::testkit::fault::{FaultConfig, FaultyStorage};
use crate::storage::{StorageError, VersionId};

fn config() -> EngineConfig {
    EngineConfig {
        gc_interval: Duration::ZERO,
        status_retention: Duration::ZERO,
        ..EngineConfig::default()
    }
}

async fn engine() -> Arc<Engine> {
    Engine::open(Arc::new(MemoryStorage::new()), config())
        .await
        .unwrap()
}

/// An engine over a fault-injecting memory store (no random faults), and the store.
async fn faulty_engine() -> (Arc<Engine>, Arc<FaultyStorage>) {
    let storage = Arc::new(FaultyStorage::new(
        Arc::new(MemoryStorage::new()),
        FaultConfig::new(1),
    ));
    let engine = Engine::open(storage.clone(), config()).await.unwrap();
    (engine, storage)
}

fn key(k: &'static str) -> Bytes {
    Bytes::from_static(k.as_bytes())
}

async fn set(engine: &Arc<Engine>, k: &'static str, v: &'static str) -> VersionId {
    try_set(engine, k, v).await.unwrap().unwrap()
}

async fn try_set(
    engine: &Arc<Engine>,
    k: &'static str,
    v: &'static str,
) -> Result<Option<VersionId>, TxnError> {
    let mut txn = engine.begin();
    txn.put(key(k), Entry::string(key(v)));
    txn.commit().await
}

async fn get(engine: &Arc<Engine>, k: &'static str) -> Option<Bytes> {
    let mut txn = engine.begin();
    txn.get(&key(k)).await.unwrap().map(|e| match e.value {
        Value::Str(b) => b,
    })
}

/// INCR as the command does it: a validated read, then a write.
async fn incr(engine: &Arc<Engine>, k: &'static str) -> Result<i64, TxnError> {
    let mut txn = engine.begin();
    let current = match txn.get_for_update(&key(k)).await?.map(|e| e.value) {
        Some(Value::Str(b)) => std::str::from_utf8(&b).unwrap().parse::<i64>().unwrap(),
        None => 0,
    };
    txn.put(
        key(k),
        Entry::string(Bytes::from((current + 1).to_string())),
    );
    txn.commit().await?;
    Ok(current + 1)
}

/// Waits (up to 5 s) until `cond` holds.
async fn eventually(what: &str, mut cond: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while !cond().await {
        assert!(std::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn watch_ignores_a_version_still_being_published() {
    let engine = engine().await;
    set(&engine, "k", "1").await;
    // A commit half way through publication: in the index, sequence not yet visible.
    let pending = VersionId {
        ts: engine.clock.tick(),
        txn: engine.new_txn_id(),
    };
    let next_seq = engine.seq.load(Ordering::Acquire) + 1;
    engine.index.insert(
        key("k"),
        VersionMeta {
            id: pending,
            seq: next_seq,
            kind: Kind::String,
            expire_at: 0,
            value: Some(key("2")),
        },
        0,
    );
    // A client that WATCHes now and then reads sees the first version...
    let mut watches = engine.watches();
    watches.watch(&key("k"));
    let mut reader = engine.begin();
    let read = reader.get(&key("k")).await.unwrap().unwrap();
    assert_eq!(read.value, Value::Str(key("1")));
    // ...so its EXEC must fail once the pending version is there, not write 1 + 1.
    let mut writer = engine.begin();
    writer.put(key("k"), Entry::string(key("2")));
    assert!(matches!(
        writer.commit_watched(&watches).await,
        Err(TxnError::WatchFailed)
    ));
}

#[tokio::test]
async fn watch_passes_when_nothing_changed() {
    let engine = engine().await;
    set(&engine, "k", "1").await;
    let mut watches = engine.watches();
    watches.watch(&key("k"));
    let mut writer = engine.begin();
    writer.put(key("k"), Entry::string(key("2")));
    assert!(writer.commit_watched(&watches).await.unwrap().is_some());
}

#[tokio::test]
async fn a_snapshot_revoked_just_before_validation_fails_the_commit() {
    let config = EngineConfig {
        max_snapshot_age: Duration::from_millis(20),
        ..config()
    };
    let engine = Engine::open(Arc::new(MemoryStorage::new()), config)
        .await
        .unwrap();
    set(&engine, "c", "10").await;
    // An INCR reads c, then another client deletes it.
    let mut slow = engine.begin();
    assert!(slow.get_for_update(&key("c")).await.unwrap().is_some());
    let mut del = engine.begin();
    del.delete(key("c"));
    del.commit().await.unwrap();
    // The INCR's snapshot gets old; garbage collection revokes it and removes c (gone for
    // good) between the INCR's last check and its validation.
    tokio::time::sleep(Duration::from_millis(40)).await;
    let weak = Arc::downgrade(&engine);
    *engine.before_validation.lock() = Some(Box::new(move || {
        Box::pin(async move {
            let engine = weak.upgrade().unwrap();
            for _ in 0..3 {
                engine.collect_garbage().await;
            }
            assert_eq!(engine.gc_gauges().versions, 0, "c was not removed");
        })
    }));
    slow.put(key("c"), Entry::string(key("11")));
    let result = slow.commit().await;
    assert!(
        matches!(result, Err(TxnError::SnapshotTooOld(_))),
        "{result:?}"
    );
    // The DEL stands: no increment of the value it deleted.
    assert_eq!(get(&engine, "c").await, None);
}

#[tokio::test]
async fn orphans_are_not_reclaimed_while_a_commit_is_being_settled() {
    let (engine, storage) = faulty_engine().await;
    set(&engine, "c", "10").await;
    storage.lose_next_replies(1);
    assert!(incr(&engine, "c").await.is_err());
    storage.refuse_commits(true);
    let before = storage.stats().reclaims;
    engine.collect_garbage().await;
    assert_eq!(engine.unresolved_commits(), 1);
    assert_eq!(storage.stats().reclaims, before, "reclaimed while settling");
    storage.refuse_commits(false);
    eventually("the commit is settled", async || {
        engine.unresolved_commits() == 0
    })
    .await;
    engine.collect_garbage().await;
    assert_eq!(storage.stats().reclaims, before + 1);
}

#[tokio::test]
async fn a_commit_of_unknown_outcome_is_settled_and_fences_its_keys_meanwhile() {
    let (engine, storage) = faulty_engine().await;
    set(&engine, "c", "10").await;
    // The backend applies the INCR but its reply is lost; then it goes down for writes.
    storage.lose_next_replies(1);
    let lost = incr(&engine, "c").await;
    assert!(
        matches!(
            lost,
            Err(TxnError::Storage(StorageError::OutcomeUnknown(_)))
        ),
        "{lost:?}"
    );
    storage.refuse_commits(true);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(engine.unresolved_commits(), 1);
    // Another INCR must not increment the value it can see (10): the key is fenced.
    assert!(matches!(incr(&engine, "c").await, Err(TxnError::Conflict)));
    // The backend is back: the resolver finds the commit applied and publishes it.
    storage.refuse_commits(false);
    eventually("the lost commit is published", async || {
        get(&engine, "c").await == Some(key("11"))
    })
    .await;
    assert_eq!(engine.unresolved_commits(), 0);
    assert_eq!(incr(&engine, "c").await.unwrap(), 12);
    let stats = engine.stats();
    assert_eq!(stats.outcome_unknown.load(Ordering::Relaxed), 1);
    assert_eq!(stats.unknown_committed.load(Ordering::Relaxed), 1);
    // One record per commit: three in all, as a restart finds them.
    drop(engine);
    let restarted = Engine::open(storage.inner().clone(), config())
        .await
        .unwrap();
    assert_eq!(get(&restarted, "c").await, Some(key("12")));
    assert_eq!(
        restarted.stats().recovered_commits.load(Ordering::Relaxed),
        3
    );
}

#[tokio::test]
async fn a_commit_of_unknown_outcome_that_never_arrived_is_applied_whole_when_settled() {
    let (engine, storage) = faulty_engine().await;
    set(&engine, "k", "v0").await;
    // The request is lost on its way, and the engine cannot tell (a timeout).
    storage.drop_next_requests(1);
    let mut txn = engine.begin();
    txn.put(key("k"), Entry::string(key("x")));
    txn.put(key("j"), Entry::string(key("x")));
    assert!(matches!(
        txn.commit().await,
        Err(TxnError::Storage(StorageError::OutcomeUnknown(_)))
    ));
    // Settling sends it again: it is applied now, both keys at once.
    eventually("the commit is settled", async || {
        engine.unresolved_commits() == 0
    })
    .await;
    let mut reader = engine.begin();
    let k = reader.get(&key("k")).await.unwrap().map(|e| e.value);
    let j = reader.get(&key("j")).await.unwrap().map(|e| e.value);
    assert_eq!(
        (k, j),
        (Some(Value::Str(key("x"))), Some(Value::Str(key("x"))))
    );
    assert_eq!(engine.stats().unknown_committed.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn garbage_collection_keeps_what_an_unsettled_commit_could_resurrect() {
    let (engine, storage) = faulty_engine().await;
    set(&engine, "k", "v0").await;
    // SET k x is applied but its reply is lost, and every attempt to settle it fails.
    storage.lose_next_replies(1);
    assert!(try_set(&engine, "k", "x").await.is_err());
    storage.refuse_commits_where(|batch| batch.versions.iter().any(|(_, v)| v == "x"));
    // A later write of k, acknowledged, that expires at once: k is then absent.
    let mut txn = engine.begin();
    let at = txn.now_ms() + 1;
    txn.put(
        key("k"),
        Entry {
            expire_at: Some(at),
            ..Entry::string(key("y"))
        },
    );
    txn.commit().await.unwrap();
    tokio::time::sleep(Duration::from_millis(10)).await;
    for _ in 0..4 {
        engine.collect_garbage().await;
    }
    assert_eq!(engine.unresolved_commits(), 1);
    assert_eq!(get(&engine, "k").await, None);
    // A crash now: the store holds x's record. The expiring write's record must still be
    // there to shadow it.
    drop(engine);
    let restarted = Engine::open(storage.inner().clone(), config())
        .await
        .unwrap();
    assert_eq!(
        get(&restarted, "k").await,
        None,
        "k came back after a restart"
    );
}

#[tokio::test]
async fn flushall_is_atomic_against_a_commit_in_flight() {
    let (engine, storage) = faulty_engine().await;
    set(&engine, "a", "old").await;
    // An MSET of an existing key and a new one, stalled in the backend.
    let gate = storage.pause_next_commits(1);
    let mset = {
        let engine = engine.clone();
        tokio::spawn(async move {
            let mut txn = engine.begin();
            txn.put(key("a"), Entry::string(key("new")));
            txn.put(key("b"), Entry::string(key("new")));
            txn.commit().await
        })
    };
    gate.until_waiting(1).await;
    let mut flush = engine.begin();
    flush.flush_all();
    flush.commit().await.unwrap().unwrap();
    gate.open();
    mset.await.unwrap().unwrap().unwrap();
    // The MSET took its timestamp first: it is entirely before the FLUSHALL.
    assert_eq!(get(&engine, "a").await, None);
    assert_eq!(get(&engine, "b").await, None, "half of the MSET survived");
    // A commit after the FLUSHALL stands whole.
    set(&engine, "b", "after").await;
    assert_eq!(get(&engine, "b").await, Some(key("after")));
}

#[tokio::test]
async fn writes_after_flushall_in_one_transaction_stand() {
    let engine = engine().await;
    set(&engine, "a", "1").await;
    set(&engine, "b", "1").await;
    let mut txn = engine.begin();
    txn.put(key("a"), Entry::string(key("2")));
    txn.flush_all();
    assert!(txn.get(&key("b")).await.unwrap().is_none());
    txn.put(key("c"), Entry::string(key("3")));
    assert_eq!(txn.key_count(), 1);
    assert_eq!(txn.keys_where(&|_| true).await, vec![key("c")]);
    txn.commit().await.unwrap();
    assert_eq!(get(&engine, "a").await, None);
    assert_eq!(get(&engine, "b").await, None);
    assert_eq!(get(&engine, "c").await, Some(key("3")));
    assert_eq!(engine.key_counts(), (1, 0));
}

#[tokio::test]
async fn a_snapshot_older_than_the_limit_is_revoked_and_stops_holding_gc() {
    let config = EngineConfig {
        max_snapshot_age: Duration::from_millis(50),
        ..config()
    };
    let engine = Engine::open(Arc::new(MemoryStorage::new()), config)
        .await
        .unwrap();
    set(&engine, "k", "0").await;
    set(&engine, "other", "x").await;
    let mut old = engine.begin();
    assert!(old.get(&key("k")).await.unwrap().is_some());
    for _ in 0..100 {
        set(&engine, "k", "new").await;
    }
    engine.collect_garbage().await;
    assert!(
        engine.gc_gauges().versions > 100,
        "the young snapshot holds"
    );
    assert!(engine.oldest_snapshot_age().is_some());
    tokio::time::sleep(Duration::from_millis(60)).await;
    engine.collect_garbage().await;
    assert_eq!(engine.gc_gauges().versions, 2, "one version per key left");
    assert_eq!(engine.stats().snapshots_revoked.load(Ordering::Relaxed), 1);
    assert_eq!(engine.oldest_snapshot_age(), None);
    // The holder learns it at its next read, whatever the key.
    let _ = old.get(&key("other")).await;
    assert!(matches!(
        old.check_snapshot(),
        Err(TxnError::SnapshotTooOld(_))
    ));
    drop(old);
    assert_eq!(get(&engine, "k").await, Some(key("new")));
}

#[tokio::test]
async fn transaction_ids_are_random() {
    let engine = engine().await;
    let ids: Vec<u128> = (0..64).map(|_| engine.begin().id().0).collect();
    for pair in ids.windows(2) {
        assert_ne!(pair[0] >> 64, pair[1] >> 64, "no shared node prefix");
        assert!(pair[0].abs_diff(pair[1]) > 1 << 64, "not a counter");
    }
    // Each of the 128 bits takes both values.
    let ones = ids.iter().fold(0u128, |acc, id| acc | id);
    let zeros = ids.iter().fold(0u128, |acc, id| acc | !id);
    assert_eq!((ones, zeros), (u128::MAX, u128::MAX));
}
