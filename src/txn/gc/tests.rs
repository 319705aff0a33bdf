use super::*;
use crate::storage::memory::MemoryStorage;
use crate::storage::testkit::fault::{FaultConfig, FaultyStorage};
use crate::storage::Storage;
use crate::txn::{EngineConfig, Entry};

fn vid(ts: u64) -> VersionId {
    VersionId {
        ts,
        txn: TxnId(ts as u128),
    }
}

fn key(k: &'static str) -> Bytes {
    Bytes::from_static(k.as_bytes())
}

/// A record as garbage collection names it: its anchor and id.
fn rec(anchor: &'static str, ts: u64) -> VersionKey {
    VersionKey {
        key: key(anchor),
        version: vid(ts),
    }
}

fn dropped(k: &'static str, ts: u64, kind: Kind) -> Dropped {
    Dropped {
        key: key(k),
        id: vid(ts),
        kind,
    }
}

#[test]
fn a_record_dies_when_its_last_key_is_dropped() {
    let now = Instant::now();
    let mut t = Tracker::new(Duration::ZERO, Duration::ZERO);
    t.track(vid(1), vec![key("b"), key("a"), key("a")], None, now);
    assert_eq!(t.records_listing(b"a"), 1, "keys are deduplicated");
    assert_eq!(t.commit_of(TxnId(1)), Some(vid(1)));
    t.discard(vec![dropped("a", 1, Kind::String)], now);
    assert_eq!(t.dead(), 0);
    let work = t.take_work(now);
    assert_eq!(work.versions.len(), 1);
    assert!(work.records.is_empty());
    // A tombstone stores no value, but still counts as a dropped key.
    t.discard(vec![dropped("b", 1, Kind::Tombstone)], now);
    assert_eq!(t.dead(), 1);
    let work = t.take_work(now);
    assert!(work.versions.is_empty());
    assert_eq!(work.records, vec![rec("a", 1)], "named by its least key");
    // Still known until the deletion succeeded.
    assert_eq!(t.commit_of(TxnId(1)), Some(vid(1)));
    t.records_deleted(&work.records);
    assert_eq!(t.commit_of(TxnId(1)), None);
    assert_eq!(t.records_listing(b"a"), 0);
    assert_eq!(t.tracked(), 0);
    assert!(t.take_work(now).records.is_empty());
}

#[test]
fn retention_depends_on_the_idempotency_key() {
    let start = Instant::now();
    let mut t = Tracker::new(Duration::from_secs(100), Duration::from_secs(10));
    t.track(vid(1), vec![key("a")], Some(key("idem")), start);
    t.track(vid(2), vec![key("b")], None, start);
    t.discard(
        vec![dropped("a", 1, Kind::String), dropped("b", 2, Kind::String)],
        start,
    );
    assert!(t
        .take_work(start + Duration::from_secs(9))
        .records
        .is_empty());
    let work = t.take_work(start + Duration::from_secs(10));
    assert_eq!(work.records, vec![rec("b", 2)]);
    t.records_deleted(&work.records);
    assert!(t
        .take_work(start + Duration::from_secs(99))
        .records
        .is_empty());
    assert_eq!(t.commit_of(TxnId(1)), Some(vid(1)));
    let work = t.take_work(start + Duration::from_secs(100));
    assert_eq!(
        work.records,
        vec![rec("idem", 1)],
        "named by its idempotency key"
    );
}

#[test]
fn failed_work_comes_back() {
    let now = Instant::now();
    let mut t = Tracker::new(Duration::ZERO, Duration::ZERO);
    t.track(vid(1), vec![key("a")], None, now);
    t.discard(vec![dropped("a", 1, Kind::String)], now);
    let work = t.take_work(now);
    t.versions_failed(work.versions);
    // The record stays due until deleted, and its version is offered again.
    let again = t.take_work(now);
    assert_eq!(again.versions.len(), 1);
    assert_eq!(again.records, vec![rec("a", 1)]);
    t.records_deleted(&again.records);
    assert!(t.take_work(now).records.is_empty());
}

#[test]
fn listing_counts_every_stored_record_of_a_key() {
    let now = Instant::now();
    let mut t = Tracker::new(Duration::ZERO, Duration::ZERO);
    t.track(vid(1), vec![key("k"), key("j")], None, now);
    t.track(vid(2), vec![key("k")], None, now);
    assert_eq!(t.records_listing(b"k"), 2);
    assert_eq!(t.records_listing(b"j"), 1);
    t.records_deleted(&[rec("j", 1)]);
    assert_eq!(t.records_listing(b"k"), 1);
    assert_eq!(t.records_listing(b"j"), 0);
}

#[test]
fn watermark_is_below_every_pin_and_clock() {
    let mut s = Snapshots::default();
    assert_eq!(s.watermark(7).min_pin, 7);
    let at = Instant::now();
    let c3 = s.start_clock();
    let t3 = s.pin(3, LogPos::default(), c3, at);
    let c5 = s.start_clock();
    let t5 = s.pin(5, LogPos::default(), c5, at);
    assert_eq!(s.min_pin(7), 3);
    s.release(Some(t3), c3);
    assert_eq!(s.min_pin(7), 5);
    s.release(Some(t5), c5);
    assert_eq!(s.min_pin(7), 7);

    let wall = clock::wall_ms();
    let a = s.start_clock();
    assert!(a >= wall);
    assert_eq!(s.watermark(0).min_now, a);
    std::thread::sleep(Duration::from_millis(3));
    let b = s.start_clock();
    assert!(b > a);
    assert_eq!(s.watermark(0).min_now, a);
    let a2 = s.move_clock(None, a);
    assert!(a2 >= b);
    assert_eq!(s.watermark(0).min_now, b);
    s.release(None, a2);
    s.release(None, b);
    // With no transaction, the round's own clock, never behind a clock handed out.
    assert!(s.watermark(0).min_now >= a2);
}

#[test]
fn old_pins_are_revoked_and_release_nothing_twice() {
    let mut s = Snapshots::default();
    let start = Instant::now();
    let old_clock = s.start_clock();
    let old = s.pin(1, LogPos::default(), old_clock, start);
    let young_clock = s.start_clock();
    let young = s.pin(
        1,
        LogPos::default(),
        young_clock,
        start + Duration::from_secs(50),
    );
    assert_eq!(
        s.oldest_pin_age(start + Duration::from_secs(60)),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        s.revoke_older_than(Duration::ZERO, start + Duration::from_secs(60)),
        0
    );
    assert_eq!(
        s.revoke_older_than(Duration::from_secs(60), start + Duration::from_secs(60)),
        1
    );
    assert!(s.is_revoked(old));
    assert!(!s.is_revoked(young));
    assert_eq!(s.min_pin(9), 1, "the young pin still holds");
    // The revoked transaction ends: its registrations are not released twice.
    s.release(Some(old), old_clock);
    assert_eq!(s.min_pin(9), 1);
    s.release(Some(young), young_clock);
    assert_eq!(s.min_pin(9), 9);
    assert_eq!(s.oldest_pin_age(start), None);
}

/// A memory store behind the fault wrapper (deletions that fail, commits left half done).
fn flaky() -> Arc<FaultyStorage> {
    Arc::new(FaultyStorage::new(
        Arc::new(MemoryStorage::new()),
        FaultConfig::new(1),
    ))
}

fn config(retention: Duration) -> EngineConfig {
    EngineConfig {
        cache_bytes: 0,
        gc_interval: Duration::ZERO,
        idempotency_retention: retention,
        status_retention: retention,
        max_snapshot_age: Duration::ZERO,
        ..EngineConfig::default()
    }
}

async fn set(engine: &Arc<Engine>, k: &'static str, v: &'static str) -> VersionId {
    let mut txn = engine.begin();
    txn.put(key(k), Entry::string(key(v)));
    txn.commit().await.unwrap().unwrap()
}

async fn del(engine: &Arc<Engine>, k: &'static str) -> VersionId {
    let mut txn = engine.begin();
    txn.delete(key(k));
    txn.commit().await.unwrap().unwrap()
}

async fn get(engine: &Arc<Engine>, k: &'static str) -> Option<Bytes> {
    let mut txn = engine.begin();
    txn.get(&key(k)).await.unwrap().map(|e| match e.value {
        super::super::Value::Str(b) => b,
    })
}

async fn stored(storage: &dyn Storage, k: &'static str, id: VersionId) -> bool {
    storage
        .get_versions(vec![VersionKey {
            key: key(k),
            version: id,
        }])
        .await
        .unwrap()[0]
        .is_some()
}

async fn records(storage: &dyn Storage) -> Vec<VersionId> {
    let all = storage.scan_commits(None, usize::MAX).await.unwrap();
    all.into_iter().map(|r| r.id).collect()
}

#[tokio::test]
async fn failed_deletions_are_retried_and_records_wait_for_their_versions() {
    let storage = flaky();
    let engine = Engine::open(storage.clone(), config(Duration::ZERO))
        .await
        .unwrap();
    let old = set(&engine, "k", "1").await;
    let new = set(&engine, "k", "2").await;
    storage.fail_deletes_after(0);
    let report = engine.collect_garbage().await;
    assert_eq!(report.errors, 1);
    assert_eq!(report.commits_deleted, 0);
    assert!(stored(&**storage.inner(), "k", old).await);
    assert_eq!(records(&**storage.inner()).await, vec![old, new]);
    assert_eq!(engine.commit_of(old.txn), Some(old));
    assert_eq!(engine.gc_gauges().pending_versions, 1);

    storage.fail_deletes_after(u64::MAX);
    let report = engine.collect_garbage().await;
    assert_eq!((report.versions_deleted, report.commits_deleted), (1, 1));
    assert!(!stored(&**storage.inner(), "k", old).await);
    assert!(stored(&**storage.inner(), "k", new).await);
    assert_eq!(records(&**storage.inner()).await, vec![new]);
    assert_eq!(engine.commit_of(old.txn), None);
    assert_eq!(engine.commit_of(new.txn), Some(new));
    let stats = engine.stats();
    assert_eq!(stats.gc_errors.load(Ordering::Relaxed), 1);
    assert_eq!(stats.gc_runs.load(Ordering::Relaxed), 2);
    assert_eq!(stats.versions_collected.load(Ordering::Relaxed), 1);
    assert_eq!(stats.commits_collected.load(Ordering::Relaxed), 1);
    assert_eq!(get(&engine, "k").await.unwrap(), key("2"));
}

#[tokio::test]
async fn a_deleted_key_stays_while_an_older_record_lists_it() {
    let storage = Arc::new(MemoryStorage::new());
    let engine = Engine::open(storage.clone(), config(Duration::ZERO))
        .await
        .unwrap();
    // One record lists k and j; j stays live, so that record stays stored.
    let both = {
        let mut txn = engine.begin();
        txn.put(key("k"), Entry::string(key("k1")));
        txn.put(key("j"), Entry::string(key("j1")));
        txn.commit().await.unwrap().unwrap()
    };
    let gone = del(&engine, "k").await;
    let report = engine.collect_garbage().await;
    assert_eq!(
        report.keys_removed, 0,
        "the record of k1 would resurrect it"
    );
    assert!(!stored(storage.as_ref(), "k", both).await);
    assert_eq!(records(storage.as_ref()).await, vec![both, gone]);
    assert_eq!(engine.gc_gauges().versions, 2);

    // A restart at this point finds k deleted.
    drop(engine);
    let engine = Engine::open(storage.clone(), config(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(get(&engine, "k").await, None);
    assert_eq!(get(&engine, "j").await.unwrap(), key("j1"));

    // Once j is overwritten, the old record goes, then k itself.
    let j2 = set(&engine, "j", "j2").await;
    let report = engine.collect_garbage().await;
    assert_eq!(report.commits_deleted, 1);
    let report = engine.collect_garbage().await;
    assert_eq!(report.keys_removed, 1);
    assert_eq!(report.commits_deleted, 1);
    assert_eq!(records(storage.as_ref()).await, vec![j2]);
    assert_eq!(engine.gc_gauges().versions, 1);
    assert_eq!(engine.stats().keys_removed.load(Ordering::Relaxed), 1);

    drop(engine);
    let engine = Engine::open(storage.clone(), config(Duration::ZERO))
        .await
        .unwrap();
    assert_eq!(get(&engine, "k").await, None);
    assert_eq!(get(&engine, "j").await.unwrap(), key("j2"));
}

#[tokio::test]
async fn a_running_transaction_keeps_an_expired_key_it_still_sees() {
    let storage = Arc::new(MemoryStorage::new());
    let engine = Engine::open(storage.clone(), config(Duration::ZERO))
        .await
        .unwrap();
    // Begins before the key is written, so its clock is before the expiry.
    let mut old = engine.begin();
    let id = {
        let mut txn = engine.begin();
        let at = txn.now_ms() + 40;
        txn.put(
            key("k"),
            Entry {
                expire_at: Some(at),
                ..Entry::string(key("v"))
            },
        );
        txn.commit().await.unwrap().unwrap()
    };
    tokio::time::sleep(Duration::from_millis(60)).await;
    assert_eq!(
        get(&engine, "k").await,
        None,
        "expired for new transactions"
    );
    let report = engine.collect_garbage().await;
    assert_eq!(report.keys_removed, 0);
    assert!(old.get(&key("k")).await.unwrap().is_some());
    drop(old);
    let report = engine.collect_garbage().await;
    assert_eq!(report.keys_removed, 1);
    assert_eq!(report.commits_deleted, 1);
    assert!(!stored(storage.as_ref(), "k", id).await);
    assert!(records(storage.as_ref()).await.is_empty());
}

#[tokio::test]
async fn removal_by_gc_is_not_a_conflict() {
    let storage = Arc::new(MemoryStorage::new());
    let mut config = config(Duration::ZERO);
    config.idempotency_retention = Duration::from_secs(60);
    let engine = Engine::open(storage.clone(), config).await.unwrap();
    set(&engine, "k", "1").await;
    // The delete's record is retained (it has an idempotency key) after k is removed.
    let mut txn = engine.begin();
    txn.set_idempotency_key(key("del"));
    txn.delete(key("k"));
    txn.commit().await.unwrap().unwrap();
    let mut txn = engine.begin();
    assert!(txn.get_for_update(&key("k")).await.unwrap().is_none());
    assert_eq!(engine.collect_garbage().await.keys_removed, 0);
    assert_eq!(engine.collect_garbage().await.keys_removed, 1);
    assert_eq!(engine.gc_gauges().versions, 0);
    txn.put(key("k"), Entry::string(key("2")));
    txn.commit().await.unwrap().unwrap();
    assert_eq!(get(&engine, "k").await.unwrap(), key("2"));
}

#[tokio::test]
async fn a_watched_key_stays_in_the_index_until_unwatched() {
    let storage = Arc::new(MemoryStorage::new());
    let engine = Engine::open(storage.clone(), config(Duration::ZERO))
        .await
        .unwrap();
    set(&engine, "k", "1").await;
    del(&engine, "k").await;
    let mut watches = engine.watches();
    watches.watch(&key("k"));
    engine.collect_garbage().await;
    engine.collect_garbage().await;
    assert_eq!(engine.gc_gauges().versions, 1, "the tombstone stays");
    // Nothing changed: EXEC passes.
    let mut txn = engine.begin();
    txn.put(key("other"), Entry::string(key("x")));
    txn.commit_watched(&watches).await.unwrap().unwrap();
    watches.clear();
    engine.collect_garbage().await;
    engine.collect_garbage().await;
    assert_eq!(engine.gc_gauges().versions, 1, "only 'other' is left");
}

#[tokio::test]
async fn a_watch_of_an_absent_key_fails_after_a_set_and_a_del_collected_by_gc() {
    let storage = Arc::new(MemoryStorage::new());
    let engine = Engine::open(storage.clone(), config(Duration::ZERO))
        .await
        .unwrap();
    let mut watches = engine.watches();
    watches.watch(&key("k"));
    // Another client: SET then DEL, and garbage collection runs.
    set(&engine, "k", "1").await;
    del(&engine, "k").await;
    for _ in 0..3 {
        engine.collect_garbage().await;
    }
    let mut txn = engine.begin();
    txn.put(key("k"), Entry::string(key("2")));
    assert!(matches!(
        txn.commit_watched(&watches).await,
        Err(crate::txn::TxnError::WatchFailed)
    ));
}

#[tokio::test]
async fn a_watch_fails_if_the_key_changed_before_it_was_removed() {
    let storage = Arc::new(MemoryStorage::new());
    let engine = Engine::open(storage.clone(), config(Duration::ZERO))
        .await
        .unwrap();
    del(&engine, "k").await;
    let mut watches = engine.watches();
    watches.watch(&key("k"));
    set(&engine, "k", "1").await;
    del(&engine, "k").await;
    engine.collect_garbage().await;
    engine.collect_garbage().await;
    let mut txn = engine.begin();
    txn.put(key("k"), Entry::string(key("2")));
    assert!(matches!(
        txn.commit_watched(&watches).await,
        Err(crate::txn::TxnError::WatchFailed)
    ));
}

#[tokio::test]
async fn orphan_versions_of_a_failed_commit_are_reclaimed() {
    let storage = flaky();
    let engine = Engine::open(storage.clone(), config(Duration::ZERO))
        .await
        .unwrap();
    storage.orphan_next_commits(1);
    let mut txn = engine.begin();
    let id = txn.id();
    txn.put(key("k"), Entry::string(key("v")));
    assert!(txn.commit().await.is_err());
    let version = storage.last_orphaned().unwrap();
    assert_eq!(version.txn, id);
    assert!(stored(&**storage.inner(), "k", version).await);
    assert!(records(&**storage.inner()).await.is_empty());
    assert_eq!(engine.gc_gauges().pending_versions, 1);
    let report = engine.collect_garbage().await;
    assert_eq!(report.versions_deleted, 1);
    assert!(!stored(&**storage.inner(), "k", version).await);
    assert_eq!(engine.commit_of(id), None);
}

#[tokio::test]
async fn the_background_task_collects_and_stops_on_close() {
    let storage = Arc::new(MemoryStorage::new());
    let mut config = config(Duration::ZERO);
    config.gc_interval = Duration::from_millis(5);
    let engine = Engine::open(storage.clone(), config).await.unwrap();
    let first = set(&engine, "k", "1").await;
    set(&engine, "k", "2").await;
    let deadline = Instant::now() + Duration::from_secs(2);
    while stored(storage.as_ref(), "k", first).await {
        assert!(Instant::now() < deadline, "the task never collected");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    engine.close().await.unwrap();
    let runs = engine.stats().gc_runs.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert_eq!(engine.stats().gc_runs.load(Ordering::Relaxed), runs);
    assert_eq!(engine.stats().gc_errors.load(Ordering::Relaxed), 0);
}

#[tokio::test]
async fn the_background_task_ends_with_the_engine() {
    let storage = Arc::new(MemoryStorage::new());
    let mut config = config(Duration::ZERO);
    config.gc_interval = Duration::from_millis(5);
    let engine = Engine::open(storage, config).await.unwrap();
    let weak = Arc::downgrade(&engine);
    drop(engine);
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(weak.upgrade().is_none());
}
