//! Garbage collection through the public API of the core (protocol.md §8), over the memory
//! and the embedded backends: storage stays bounded by the live data, pinned readers keep
//! what they can see, deleted and expired keys leave memory and storage for good, commit
//! records are retained as configured, and a restart (also in the middle of a round) finds
//! exactly the data it had.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aft::storage::embedded::{EmbeddedOptions, EmbeddedStorage, FILE_NAME};
use aft::storage::memory::MemoryStorage;
use aft::storage::testkit::fault::{FaultConfig, FaultyStorage};
use aft::storage::{Storage, VersionId, VersionKey};
use aft::txn::{Engine, EngineConfig, Entry, TxnError, Value};
use bytes::Bytes;

const KEYS: usize = 20;

fn config(retention: Duration) -> EngineConfig {
    EngineConfig {
        // Every read goes to storage: a version collected too early cannot hide in a cache.
        cache_bytes: 0,
        gc_interval: Duration::ZERO,
        idempotency_retention: retention,
        status_retention: retention,
        max_snapshot_age: Duration::ZERO,
        ..EngineConfig::default()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64
}

fn key(i: usize) -> Bytes {
    Bytes::from(format!("key:{i}"))
}

/// A value of about 100 bytes naming its key and round.
fn value(i: usize, round: usize) -> Bytes {
    Bytes::from(format!("{i}/{round}/{}", "x".repeat(90)))
}

fn text(entry: Option<Entry>) -> Option<Bytes> {
    entry.map(|e| match e.value {
        Value::Str(b) => b,
    })
}

async fn set(engine: &Arc<Engine>, k: Bytes, v: Bytes, expire_at: Option<u64>) -> VersionId {
    let mut txn = engine.begin();
    txn.put(
        k,
        Entry {
            value: Value::Str(v),
            expire_at,
        },
    );
    txn.commit().await.expect("commit").expect("a version")
}

async fn del(engine: &Arc<Engine>, k: Bytes) -> VersionId {
    let mut txn = engine.begin();
    txn.delete(k);
    txn.commit().await.expect("commit").expect("a version")
}

async fn get(engine: &Arc<Engine>, k: &Bytes) -> Option<Bytes> {
    let mut txn = engine.begin();
    text(txn.get(k).await.expect("read"))
}

async fn record_ids(storage: &dyn Storage) -> Vec<VersionId> {
    let records = storage.scan_commits(None, usize::MAX).await.expect("scan");
    records.into_iter().map(|r| r.id).collect()
}

/// How many of `versions` storage still holds.
async fn stored_count(storage: &dyn Storage, versions: &[VersionKey]) -> usize {
    let mut n = 0;
    for chunk in versions.chunks(4096) {
        let values = storage.get_versions(chunk.to_vec()).await.expect("read");
        n += values.iter().filter(|v| v.is_some()).count();
    }
    n
}

fn open_embedded(dir: &Path) -> Arc<EmbeddedStorage> {
    Arc::new(
        EmbeddedStorage::open(
            dir,
            EmbeddedOptions {
                fsync: false,
                ..EmbeddedOptions::default()
            },
        )
        .expect("open store"),
    )
}

/// 20 writers overwrite one key each, `rounds` times in all, in four phases, while the
/// background task collects garbage; after each phase, one more round and the size of
/// `file` (if any). Returns every version written and the sizes.
async fn overwrite_workload(
    engine: &Arc<Engine>,
    rounds: usize,
    file: Option<&Path>,
) -> (Vec<VersionKey>, Vec<u64>) {
    let mut all = Vec::new();
    let mut sizes = Vec::new();
    for phase in 0..4 {
        let writers: Vec<_> = (0..KEYS)
            .map(|i| {
                let engine = engine.clone();
                tokio::spawn(async move {
                    let mut written = Vec::new();
                    for round in phase * rounds / 4..(phase + 1) * rounds / 4 {
                        let id = set(&engine, key(i), value(i, round), None).await;
                        written.push(VersionKey {
                            key: key(i),
                            version: id,
                        });
                    }
                    written
                })
            })
            .collect();
        for w in writers {
            all.extend(w.await.expect("writer"));
        }
        let report = engine.collect_garbage().await;
        assert_eq!(report.errors, 0);
        if let Some(file) = file {
            sizes.push(std::fs::metadata(file).expect("file").len());
        }
    }
    (all, sizes)
}

/// After the workload: one record and one version per key, in memory and in storage.
async fn assert_bounded(engine: &Arc<Engine>, storage: &dyn Storage, all: &[VersionKey]) {
    let gauges = engine.gc_gauges();
    assert_eq!(gauges.versions, KEYS, "{gauges:?}");
    assert_eq!(gauges.commits, KEYS, "{gauges:?}");
    assert_eq!(gauges.pending_versions, 0, "{gauges:?}");
    assert_eq!(record_ids(storage).await.len(), KEYS);
    assert_eq!(stored_count(storage, all).await, KEYS);
    let stats = engine.stats();
    assert!(stats.gc_runs.load(Ordering::Relaxed) >= 4);
    assert_eq!(stats.gc_errors.load(Ordering::Relaxed), 0);
    assert_eq!(
        stats.versions_collected.load(Ordering::Relaxed) as usize,
        all.len() - KEYS
    );
    assert_eq!(
        stats.commits_collected.load(Ordering::Relaxed) as usize,
        all.len() - KEYS
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overwrites_keep_the_memory_store_bounded() {
    let storage = Arc::new(MemoryStorage::new());
    let mut cfg = config(Duration::ZERO);
    cfg.gc_interval = Duration::from_millis(5);
    let engine = Engine::open(storage.clone(), cfg).await.expect("open");
    let rounds = 2000;
    let (all, _) = overwrite_workload(&engine, rounds, None).await;
    assert_eq!(all.len(), KEYS * rounds);
    assert_bounded(&engine, storage.as_ref(), &all).await;
    for i in 0..KEYS {
        assert_eq!(get(&engine, &key(i)).await, Some(value(i, rounds - 1)));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn overwrites_keep_the_embedded_file_bounded() {
    let dir = tempfile::tempdir().expect("tempdir");
    let storage = open_embedded(dir.path());
    let mut cfg = config(Duration::ZERO);
    cfg.gc_interval = Duration::from_millis(5);
    let engine = Engine::open(storage.clone(), cfg.clone())
        .await
        .expect("open");
    let rounds = 1000;
    let (all, sizes) = overwrite_workload(&engine, rounds, Some(&dir.path().join(FILE_NAME))).await;
    assert_bounded(&engine, storage.as_ref(), &all).await;
    // The file grows while the first phase fills it, then reuses freed pages (redb may
    // still grow its allocation once).
    let history = (all.len() * 100) as u64;
    assert!(
        sizes[3] <= 2 * sizes[0] && sizes[3] < history / 2,
        "file sizes after each quarter: {sizes:?} (values written: {history} bytes)"
    );
    engine.close().await.expect("close");
    drop(engine);
    drop(storage);

    let storage = open_embedded(dir.path());
    let engine = Engine::open(storage.clone(), cfg).await.expect("reopen");
    assert_eq!(
        engine.stats().recovered_commits.load(Ordering::Relaxed) as usize,
        KEYS
    );
    for i in 0..KEYS {
        assert_eq!(get(&engine, &key(i)).await, Some(value(i, rounds - 1)));
    }
    engine.close().await.expect("close");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pinned_readers_keep_their_snapshot_and_readers_never_miss_a_version() {
    let storage = Arc::new(MemoryStorage::new());
    let mut cfg = config(Duration::ZERO);
    cfg.gc_interval = Duration::from_millis(1);
    let engine = Engine::open(storage.clone(), cfg).await.expect("open");
    let mut first = Vec::new();
    for i in 0..KEYS {
        let id = set(&engine, key(i), value(i, 0), None).await;
        first.push(VersionKey {
            key: key(i),
            version: id,
        });
    }
    // Pins the snapshot without loading anything; later reads load from storage.
    let mut pinned = engine.begin();
    assert!(pinned.meta(&key(0)).is_some());

    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|r| {
            let engine = engine.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut reads = 0u64;
                let mut i = r;
                while !stop.load(Ordering::Relaxed) {
                    i = (i * 7 + 3) % KEYS;
                    let mut txn = engine.begin();
                    let v = txn.get(&key(i)).await.expect("never a missing version");
                    let v = text(v).expect("a live key");
                    assert!(v.starts_with(format!("{i}/").as_bytes()));
                    reads += 1;
                    tokio::task::yield_now().await;
                }
                reads
            })
        })
        .collect();

    let rounds = 300;
    for round in 1..=rounds {
        let writes: Vec<_> = (0..KEYS)
            .map(|i| {
                let engine = engine.clone();
                tokio::spawn(async move { set(&engine, key(i), value(i, round), None).await })
            })
            .collect();
        for w in writes {
            w.await.expect("writer");
        }
        if round % 15 == 0 {
            // The pinned transaction reads one more key for the first time.
            engine.collect_garbage().await;
            let i = round / 15 - 1;
            let v = text(pinned.get(&key(i)).await.expect("pinned read"));
            assert_eq!(v, Some(value(i, 0)), "key {i} after round {round}");
        }
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        assert!(r.await.expect("reader") > 0);
    }
    engine.collect_garbage().await;
    assert_eq!(stored_count(storage.as_ref(), &first).await, KEYS);
    for i in 0..KEYS {
        let v = text(pinned.get(&key(i)).await.expect("pinned read"));
        assert_eq!(v, Some(value(i, 0)));
    }
    // Once the pin is released, the old snapshot is collected.
    drop(pinned);
    engine.collect_garbage().await;
    assert_eq!(stored_count(storage.as_ref(), &first).await, 0);
    assert_eq!(engine.gc_gauges().versions, KEYS);
    assert_eq!(record_ids(storage.as_ref()).await.len(), KEYS);
    for i in 0..KEYS {
        assert_eq!(get(&engine, &key(i)).await, Some(value(i, rounds)));
    }
}

/// A backend to restart: the same memory store, or the same embedded directory.
enum Backend {
    Memory(Arc<MemoryStorage>),
    Embedded(PathBuf),
}

impl Backend {
    async fn open(&self, cfg: &EngineConfig) -> (Arc<Engine>, Arc<dyn Storage>) {
        let storage: Arc<dyn Storage> = match self {
            Backend::Memory(s) => s.clone(),
            Backend::Embedded(dir) => open_embedded(dir),
        };
        let engine = Engine::open(storage.clone(), cfg.clone())
            .await
            .expect("open engine");
        (engine, storage)
    }

    /// Stops `engine` as a crash would for the memory store (it is just dropped); the
    /// embedded store is closed so that it can be opened again in this process.
    async fn restart(
        &self,
        engine: Arc<Engine>,
        storage: Arc<dyn Storage>,
        cfg: &EngineConfig,
    ) -> (Arc<Engine>, Arc<dyn Storage>) {
        if let Backend::Embedded(_) = self {
            engine.close().await.expect("close");
        }
        drop(engine);
        drop(storage);
        self.open(cfg).await
    }
}

async fn deleted_and_expired_keys_go_for_good(backend: Backend) {
    let cfg = config(Duration::ZERO);
    let (mut engine, mut storage) = backend.open(&cfg).await;
    let mut written = Vec::new();
    let mut remember = |k: Bytes, id: VersionId| {
        written.push(VersionKey {
            key: k,
            version: id,
        })
    };
    for i in 0..40 {
        let id = set(&engine, key(i), value(i, 0), None).await;
        remember(key(i), id);
    }
    let soon = now_ms() + 300;
    for i in 0..10 {
        del(&engine, key(i)).await;
    }
    for i in 10..20 {
        let id = set(&engine, key(i), value(i, 1), Some(soon)).await;
        remember(key(i), id);
    }
    // Deleted, then written again: the new value must survive.
    for i in 30..35 {
        del(&engine, key(i)).await;
        let id = set(&engine, key(i), value(i, 2), None).await;
        remember(key(i), id);
    }
    // Expires much later: stays.
    let id = set(&engine, key(35), value(35, 3), Some(now_ms() + 3_600_000)).await;
    remember(key(35), id);
    let expected = |i: usize| match i {
        0..=19 => None,
        30..=34 => Some(value(i, 2)),
        35 => Some(value(35, 3)),
        _ => Some(value(i, 0)),
    };

    // The first round collects the records of the older values, the second removes the
    // keys those records listed.
    let first = engine.collect_garbage().await;
    let second = engine.collect_garbage().await;
    assert_eq!(first.errors + second.errors, 0);
    // (On a very slow machine the keys may have expired already.)
    let early = first.keys_removed + second.keys_removed;
    assert!(early >= 10, "the deleted keys: {early}");
    tokio::time::sleep(Duration::from_millis(350)).await;
    let first = engine.collect_garbage().await;
    let second = engine.collect_garbage().await;
    let late = first.keys_removed + second.keys_removed;
    assert_eq!(early + late, 20, "the deleted and the expired keys");
    assert_eq!(engine.stats().keys_removed.load(Ordering::Relaxed), 20);
    let gauges = engine.gc_gauges();
    assert_eq!(gauges.versions, 20, "{gauges:?}");
    assert_eq!(gauges.commits, 20, "{gauges:?}");
    assert_eq!(record_ids(storage.as_ref()).await.len(), 20);
    assert_eq!(stored_count(storage.as_ref(), &written).await, 20);
    assert_eq!(engine.key_counts(), (20, 1));

    for restart in 0..2 {
        (engine, storage) = backend.restart(engine, storage, &cfg).await;
        for i in 0..40 {
            assert_eq!(
                get(&engine, &key(i)).await,
                expected(i),
                "key {i}, restart {restart}"
            );
        }
        assert_eq!(engine.key_counts(), (20, 1));
        let report = engine.collect_garbage().await;
        assert_eq!(
            report.keys_removed + report.commits_deleted,
            0,
            "{report:?}"
        );
        assert_eq!(record_ids(storage.as_ref()).await.len(), 20);
    }
    engine.close().await.expect("close");
}

#[tokio::test]
async fn deleted_and_expired_keys_go_for_good_in_memory() {
    deleted_and_expired_keys_go_for_good(Backend::Memory(Arc::new(MemoryStorage::new()))).await;
}

#[tokio::test]
async fn deleted_and_expired_keys_go_for_good_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    deleted_and_expired_keys_go_for_good(Backend::Embedded(dir.path().to_path_buf())).await;
}

#[tokio::test]
async fn commit_records_are_retained_as_configured() {
    let storage = Arc::new(MemoryStorage::new());
    let cfg = EngineConfig {
        idempotency_retention: Duration::from_millis(600),
        status_retention: Duration::from_millis(150),
        ..config(Duration::ZERO)
    };
    let engine = Engine::open(storage.clone(), cfg.clone())
        .await
        .expect("open");
    let idempotent = {
        let mut txn = engine.begin();
        txn.set_idempotency_key(Bytes::from_static(b"retry-me"));
        txn.put(key(1), Entry::string(value(1, 0)));
        txn.commit().await.expect("commit").expect("id")
    };
    let plain = set(&engine, key(2), value(2, 0), None).await;
    set(&engine, key(1), value(1, 1), None).await;
    set(&engine, key(2), value(2, 1), None).await;

    // Both records are garbage now, and retained.
    let report = engine.collect_garbage().await;
    assert_eq!((report.versions_deleted, report.commits_deleted), (2, 0));
    assert_eq!(engine.commit_of(idempotent.txn), Some(idempotent));
    assert_eq!(engine.commit_of(plain.txn), Some(plain));
    assert_eq!(engine.gc_gauges().retained_commits, 2);
    assert_eq!(record_ids(storage.as_ref()).await.len(), 4);

    tokio::time::sleep(Duration::from_millis(200)).await;
    let report = engine.collect_garbage().await;
    assert_eq!(report.commits_deleted, 1);
    assert_eq!(engine.commit_of(plain.txn), None);
    assert_eq!(engine.commit_of(idempotent.txn), Some(idempotent));
    // A retry with the idempotency key is still recognised.
    let mut retry = engine.begin();
    retry.set_idempotency_key(Bytes::from_static(b"retry-me"));
    retry.put(key(1), Entry::string(value(1, 9)));
    match retry.commit().await {
        Err(TxnError::Duplicate(existing)) => assert_eq!(existing, idempotent),
        other => panic!("expected a duplicate, got {other:?}"),
    }

    // Retention is measured again from a restart.
    drop(engine);
    let engine = Engine::open(storage.clone(), cfg).await.expect("reopen");
    assert_eq!(engine.commit_of(idempotent.txn), Some(idempotent));
    assert_eq!(engine.collect_garbage().await.commits_deleted, 0);
    tokio::time::sleep(Duration::from_millis(650)).await;
    assert_eq!(engine.collect_garbage().await.commits_deleted, 1);
    assert_eq!(engine.commit_of(idempotent.txn), None);
    assert_eq!(
        storage
            .find_idempotent(Bytes::from_static(b"retry-me"))
            .await
            .expect("find"),
        None
    );
    assert_eq!(record_ids(storage.as_ref()).await.len(), 2);
    // The key is free again.
    let mut late = engine.begin();
    late.set_idempotency_key(Bytes::from_static(b"retry-me"));
    late.put(key(1), Entry::string(value(1, 2)));
    late.commit().await.expect("commit");
    assert_eq!(get(&engine, &key(1)).await, Some(value(1, 2)));
    assert_eq!(get(&engine, &key(2)).await, Some(value(2, 1)));
}

/// Seeded, deterministic choices for the random workloads.
struct Rng(rand::rngs::SmallRng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }

    fn below(&mut self, n: u64) -> u64 {
        rand::Rng::gen_range(&mut self.0, 0..n)
    }
}

/// What each key should hold: `None` when deleted or expired.
type Model = BTreeMap<usize, Option<Bytes>>;

/// Random transactions of 1–3 writes over 30 keys: sets, deletes, sets that are already
/// expired and sets that expire in an hour. Returns how the model changed.
async fn random_commits(engine: &Arc<Engine>, rng: &mut Rng, model: &mut Model, n: usize) {
    for t in 0..n {
        let mut txn = engine.begin();
        let mut effects = Vec::new();
        for _ in 0..=rng.below(3) {
            let i = rng.below(30) as usize;
            let v = value(i, t);
            match rng.below(10) {
                0..=1 => {
                    txn.delete(key(i));
                    effects.push((i, None));
                }
                2 => {
                    let past = Entry {
                        value: Value::Str(v),
                        expire_at: Some(now_ms() - 1),
                    };
                    txn.put(key(i), past);
                    effects.push((i, None));
                }
                3 => {
                    let later = Entry {
                        value: Value::Str(v.clone()),
                        expire_at: Some(now_ms() + 3_600_000),
                    };
                    txn.put(key(i), later);
                    effects.push((i, Some(v)));
                }
                _ => {
                    txn.put(key(i), Entry::string(v.clone()));
                    effects.push((i, Some(v)));
                }
            }
        }
        txn.commit().await.expect("commit");
        model.extend(effects);
    }
}

async fn assert_model(engine: &Arc<Engine>, model: &Model, when: &str) {
    let mut txn = engine.begin();
    for i in 0..30 {
        let got = text(txn.get(&key(i)).await.expect("read"));
        let want = model.get(&i).cloned().flatten();
        assert_eq!(got, want, "key {i} {when}");
    }
    let live = model.values().filter(|v| v.is_some()).count();
    assert_eq!(txn.key_count(), live, "{when}");
}

async fn assert_bounded_by_keys(engine: &Arc<Engine>, storage: &dyn Storage) {
    let gauges = engine.gc_gauges();
    let records = record_ids(storage).await.len();
    assert!(gauges.versions <= 30, "{gauges:?}");
    assert!(records <= gauges.versions, "{records} records, {gauges:?}");
    assert_eq!(gauges.commits, records, "{gauges:?}");
    assert_eq!(gauges.pending_versions, 0, "{gauges:?}");
}

async fn restart_after_gc_finds_the_same_data(backend: Backend, seed: u64) {
    let cfg = config(Duration::ZERO);
    let (mut engine, mut storage) = backend.open(&cfg).await;
    let mut rng = Rng::new(seed);
    let mut model = Model::new();
    for step in 0..6 {
        random_commits(&engine, &mut rng, &mut model, 150).await;
        // Sometimes with a long reader holding an old snapshot across the round.
        let reader = if step % 2 == 0 {
            let mut txn = engine.begin();
            txn.meta(&key(0));
            Some(txn)
        } else {
            None
        };
        random_commits(&engine, &mut rng, &mut model, 50).await;
        engine.collect_garbage().await;
        drop(reader);
        if step % 3 == 2 {
            engine.collect_garbage().await;
        }
        assert_model(&engine, &model, &format!("before restart {step}")).await;
        (engine, storage) = backend.restart(engine, storage, &cfg).await;
        assert_model(&engine, &model, &format!("after restart {step}")).await;
    }
    // Fully collected: one version per key at most in memory (a deleted key stays while an
    // older record listing it is kept by another key), every stored record holds one of
    // them, and nothing waits.
    engine.collect_garbage().await;
    engine.collect_garbage().await;
    assert_bounded_by_keys(&engine, storage.as_ref()).await;
    engine.close().await.expect("close");
}

#[tokio::test]
async fn restart_after_gc_finds_the_same_data_in_memory() {
    for seed in [1, 2, 3] {
        let storage = Arc::new(MemoryStorage::new());
        restart_after_gc_finds_the_same_data(Backend::Memory(storage), seed).await;
    }
}

#[tokio::test]
async fn restart_after_gc_finds_the_same_data_on_disk() {
    let dir = tempfile::tempdir().expect("tempdir");
    restart_after_gc_finds_the_same_data(Backend::Embedded(dir.path().to_path_buf()), 4).await;
}

#[tokio::test]
async fn a_crash_in_the_middle_of_collection_loses_and_resurrects_nothing() {
    let cfg = config(Duration::ZERO);
    for crash_after in 0..8 {
        let inner = Arc::new(MemoryStorage::new());
        let mut rng = Rng::new(100 + crash_after);
        let mut model = Model::new();
        // Every deletion after the first `crash_after` fails, as if the process died in the
        // middle of a collection round.
        let crashing = Arc::new(FaultyStorage::new(inner.clone(), FaultConfig::new(1)));
        crashing.fail_deletes_after(crash_after);
        let engine = Engine::open(crashing.clone(), cfg.clone())
            .await
            .expect("open");
        for _ in 0..3 {
            random_commits(&engine, &mut rng, &mut model, 100).await;
            engine.collect_garbage().await;
        }
        assert_model(
            &engine,
            &model,
            &format!("crash after {crash_after}: before"),
        )
        .await;
        drop(engine);

        let engine = Engine::open(inner.clone(), cfg.clone())
            .await
            .expect("reopen");
        assert_model(
            &engine,
            &model,
            &format!("crash after {crash_after}: recovered"),
        )
        .await;
        for _ in 0..3 {
            assert_eq!(engine.collect_garbage().await.errors, 0);
        }
        drop(engine);
        let engine = Engine::open(inner.clone(), cfg.clone())
            .await
            .expect("reopen");
        assert_model(
            &engine,
            &model,
            &format!("crash after {crash_after}: collected"),
        )
        .await;
        engine.collect_garbage().await;
        assert_bounded_by_keys(&engine, inner.as_ref()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_modify_write_loses_no_update_while_collecting() {
    let storage = Arc::new(MemoryStorage::new());
    let mut cfg = config(Duration::ZERO);
    cfg.gc_interval = Duration::from_millis(1);
    let engine = Engine::open(storage.clone(), cfg.clone())
        .await
        .expect("open");
    let workers: Vec<_> = (0..8)
        .map(|w| {
            let engine = engine.clone();
            tokio::spawn(async move {
                for n in 0..100 {
                    let k = key((w + n) % 4);
                    loop {
                        let mut txn = engine.begin();
                        let old = text(txn.get_for_update(&k).await.expect("read"));
                        let old: u64 = old.map_or(0, |b| {
                            std::str::from_utf8(&b)
                                .expect("utf8")
                                .parse()
                                .expect("number")
                        });
                        txn.put(k.clone(), Entry::string(Bytes::from((old + 1).to_string())));
                        match txn.commit().await {
                            Ok(_) => break,
                            Err(TxnError::Conflict) => continue,
                            Err(e) => panic!("commit: {e}"),
                        }
                    }
                }
            })
        })
        .collect();
    for w in workers {
        w.await.expect("worker");
    }
    drop(engine);
    let engine = Engine::open(storage.clone(), cfg).await.expect("reopen");
    let mut total = 0;
    for i in 0..4 {
        let v = get(&engine, &key(i)).await.expect("a counter");
        total += std::str::from_utf8(&v)
            .expect("utf8")
            .parse::<u64>()
            .expect("number");
    }
    assert_eq!(total, 800);
    engine.collect_garbage().await;
    assert_eq!(record_ids(storage.as_ref()).await.len(), 4);
}
