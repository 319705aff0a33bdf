//! Property test of the transaction core, without RESP: random concurrent transactions run
//! through [`Engine::begin`] over a [`MemoryStorage`] wrapped in a [`FaultyStorage`] (lost
//! requests, lost replies, failed reads, crashes), and their history is checked against the
//! guarantees of protocol.md §2:
//!
//! * no fractured reads (atomic readsets), in version order;
//! * no dirty reads: every value read was written by a transaction that committed;
//! * read-your-writes and repeatable reads inside a transaction;
//! * after a crash and recovery, every acknowledged commit is visible, the newest committed
//!   version of each key wins, and the recovered state is itself atomic.
//!
//! Writers also delete keys (tombstones), and in some scenarios garbage collection runs
//! concurrently with the transactions (a version it deletes too early shows up as a failed
//! read).
//!
//! Every value a transaction writes is `t<number>`, so that a read names its writer. After a
//! run, the commit records left in the inner store are matched to the history by the
//! transaction id they carry: they give the exact version of every commit, including the ones
//! whose outcome the client never learned.
//!
//! Each scenario is a seed; a failure prints it. `AFT_TEST_SEED=<n>` runs only that seed.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aft::storage::memory::MemoryStorage;
use aft::storage::testkit::fault::{FaultConfig, FaultyStorage};
use aft::storage::{
    CommitBatch, CommitOutcome, CommitRecord, Storage, StorageError, TxnId, VersionId, VersionKey,
};
use aft::txn::record::decode_body;
use aft::txn::{Engine, EngineConfig, Entry, GcReport, Kind, Txn, TxnError, Value};
use bytes::Bytes;
use parking_lot::Mutex;

/// Seeded, deterministic choices for the random schedules.
pub struct Rng(rand::rngs::SmallRng);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }

    pub fn next_u64(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.0)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: u64) -> u64 {
        rand::Rng::gen_range(&mut self.0, 0..n)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `percent`/100.
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// `k` distinct numbers of `0..n`, in random order.
    pub fn pick(&mut self, n: usize, k: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..n).collect();
        for i in 0..k.min(n) {
            let j = i + self.below((n - i) as u64) as usize;
            all.swap(i, j);
        }
        all.truncate(k);
        all
    }
}

/// The seed to replay from `AFT_TEST_SEED`, if set.
pub fn seed_override() -> Option<u64> {
    std::env::var("AFT_TEST_SEED").ok().map(|s| {
        s.trim()
            .parse()
            .unwrap_or_else(|_| panic!("AFT_TEST_SEED={s:?} is not a number"))
    })
}

// ---------------------------------------------------------------------------------------
// Histories and their checker.

/// A transaction, by its number in the run.
type Tx = u64;

/// One step of a transaction, in the order it happened.
#[derive(Clone, Debug, PartialEq)]
enum Op {
    /// A read of `key`; `writer` is the transaction whose value it returned (None: absent).
    Read { key: usize, writer: Option<Tx> },
    /// A buffered write of `key`: the value `t<this transaction>`, or a delete.
    Write { key: usize, delete: bool },
}

/// How a transaction ended.
#[derive(Clone, Debug, PartialEq)]
enum Outcome {
    /// `commit` returned this version: acknowledged.
    Acked(VersionId),
    /// `commit` returned `OutcomeUnknown`: it may or may not have committed.
    Unknown,
    /// `commit` returned another error: nothing may have been committed.
    Failed(String),
    /// Never committed anything: read-only, or abandoned after a failed read.
    NoCommit,
}

#[derive(Clone, Debug)]
struct Rec {
    tx: Tx,
    /// The engine's id of the transaction, which its commit record carries.
    id: TxnId,
    ops: Vec<Op>,
    outcome: Outcome,
}

/// A write set: key -> whether the write is a delete.
type WriteSet = HashMap<usize, bool>;

impl Rec {
    fn write_set(&self) -> WriteSet {
        self.ops
            .iter()
            .filter_map(|op| match *op {
                Op::Write { key, delete } => Some((key, delete)),
                Op::Read { .. } => None,
            })
            .collect()
    }
}

/// Every commit record found in the store: transaction -> (version, its write set).
type Stored = HashMap<Tx, (VersionId, WriteSet)>;

/// Whether a read of `key` that returned `seen` shows a version at least as new as `v`.
/// A value names its version; an absent key is conservatively taken to be as new as the
/// newest committed delete of the key.
fn not_older(seen: Option<Tx>, key: usize, v: VersionId, stored: &Stored) -> bool {
    match seen {
        Some(s) => stored.get(&s).is_some_and(|(sv, _)| *sv >= v),
        None => stored
            .values()
            .any(|(dv, ws)| ws.get(&key) == Some(&true) && *dv >= v),
    }
}

/// Checks a history against the commits found in the store. Returns every violation found.
fn check_history(history: &[Rec], stored: &Stored) -> Vec<String> {
    let mut bad = Vec::new();
    let by_tx: HashMap<Tx, &Rec> = history.iter().map(|r| (r.tx, r)).collect();
    let write_sets: HashMap<Tx, WriteSet> = history.iter().map(|r| (r.tx, r.write_set())).collect();

    // Outcomes agree with the store.
    for rec in history {
        let found = stored.get(&rec.tx);
        match (&rec.outcome, found) {
            (Outcome::Acked(v), Some((id, _))) if v == id => {}
            (Outcome::Acked(v), Some((id, _))) => bad.push(format!(
                "t{}: acknowledged as {v:?} but stored as {id:?}",
                rec.tx
            )),
            (Outcome::Acked(v), None) => bad.push(format!(
                "t{}: acknowledged as {v:?} but has no commit record (lost commit)",
                rec.tx
            )),
            (Outcome::Failed(e), Some(_)) => bad.push(format!(
                "t{}: commit failed ({e}) but left a commit record",
                rec.tx
            )),
            (Outcome::NoCommit, Some(_)) => bad.push(format!(
                "t{}: never committed but has a commit record",
                rec.tx
            )),
            _ => {}
        }
        if let Some((_, ws)) = found {
            if *ws != write_sets[&rec.tx] {
                bad.push(format!(
                    "t{}: stored write set {ws:?}, wrote {:?}",
                    rec.tx, write_sets[&rec.tx]
                ));
            }
        }
    }
    for tx in stored.keys() {
        if !by_tx.contains_key(tx) {
            bad.push(format!("commit record of t{tx}, which no transaction ran"));
        }
    }

    for rec in history {
        let me = rec.tx;
        // Reads served by the snapshot (not by the transaction's own writes).
        let mut snapshot: BTreeMap<usize, Option<Tx>> = BTreeMap::new();
        let mut own: WriteSet = WriteSet::new();
        for op in &rec.ops {
            match *op {
                Op::Write { key, delete } => {
                    own.insert(key, delete);
                }
                Op::Read { key, writer } if own.contains_key(&key) => {
                    let expected = (!own[&key]).then_some(me);
                    if writer != expected {
                        bad.push(format!(
                            "t{me}: read-your-writes: read {} from k{key} after writing {}",
                            show(writer),
                            show(expected)
                        ));
                    }
                }
                Op::Read { key, writer } => {
                    if let Some(first) = snapshot.get(&key) {
                        if *first != writer {
                            bad.push(format!(
                                "t{me}: non-repeatable read of k{key}: {} then {}",
                                show(*first),
                                show(writer)
                            ));
                        }
                        continue;
                    }
                    snapshot.insert(key, writer);
                    let Some(w) = writer else { continue };
                    if w == me {
                        bad.push(format!(
                            "t{me}: read its own uncommitted write of k{key} from the snapshot"
                        ));
                    } else if write_sets.get(&w).and_then(|ws| ws.get(&key)) != Some(&false) {
                        bad.push(format!(
                            "t{me}: read t{w} from k{key}, but t{w} wrote no value there"
                        ));
                    } else if !stored.contains_key(&w) {
                        bad.push(format!(
                            "t{me}: dirty read of k{key}: t{w} ({:?}) never committed",
                            by_tx[&w].outcome
                        ));
                    } else if !matches!(by_tx[&w].outcome, Outcome::Acked(_) | Outcome::Unknown) {
                        bad.push(format!(
                            "t{me}: dirty read of k{key}: t{w} ended {:?}",
                            by_tx[&w].outcome
                        ));
                    }
                }
            }
        }
        bad.extend(fractured(me, &snapshot, &write_sets, stored));
    }
    bad
}

/// Fractured reads in one readset: `k_i` read, `l` in ws(T_i), and `l_j` read with `j < i`.
fn fractured(
    reader: Tx,
    reads: &BTreeMap<usize, Option<Tx>>,
    write_sets: &HashMap<Tx, WriteSet>,
    stored: &Stored,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (&k, &writer) in reads {
        let Some(i) = writer else { continue };
        let (Some(ws), Some((vi, _))) = (write_sets.get(&i), stored.get(&i)) else {
            // An uncommitted writer is reported as a dirty read already.
            continue;
        };
        for (&l, &deleted) in ws {
            if l == k {
                continue;
            }
            let Some(&other) = reads.get(&l) else {
                continue;
            };
            let older = match other {
                Some(j) if j == i => false,
                // Absent is T_i's own delete, or must be a newer delete.
                None => !deleted && !not_older(None, l, *vi, stored),
                Some(j) => !not_older(Some(j), l, *vi, stored) && stored.contains_key(&j),
            };
            if older {
                bad.push(format!(
                    "t{reader}: fractured read: k{k} from t{i}, which also wrote k{l}, \
                     but k{l} from older {}",
                    show(other)
                ));
            }
        }
    }
    bad
}

/// The newest committed write of `key` in the store: (version, writer, is a delete).
fn newest_stored(key: usize, stored: &Stored) -> Option<(VersionId, Tx, bool)> {
    stored
        .iter()
        .filter_map(|(tx, (v, ws))| ws.get(&key).map(|d| (*v, *tx, *d)))
        .max()
}

/// The newest acknowledged write of `key`: (version, writer).
fn newest_acked(key: usize, history: &[Rec]) -> Option<(VersionId, Tx)> {
    history
        .iter()
        .filter_map(|r| match r.outcome {
            Outcome::Acked(v) if r.write_set().contains_key(&key) => Some((v, r.tx)),
            _ => None,
        })
        .max()
}

/// After recovery: each key shows its newest committed version, never one older than an
/// acknowledged write.
fn check_recovered(
    state: &BTreeMap<usize, Option<Tx>>,
    history: &[Rec],
    stored: &Stored,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (&key, &seen) in state {
        let newest = newest_stored(key, stored);
        let expected = newest.and_then(|(_, tx, deleted)| (!deleted).then_some(tx));
        if seen != expected {
            bad.push(format!(
                "after recovery k{key} shows {}, its newest committed write is {newest:?}",
                show(seen)
            ));
        }
        if let Some((v, tx)) = newest_acked(key, history) {
            if !not_older(seen, key, v, stored) {
                bad.push(format!(
                    "after recovery k{key} shows {}, older than acknowledged t{tx}",
                    show(seen)
                ));
            }
        }
    }
    bad
}

/// While running: each key shows a version at least as new as its newest acknowledged write
/// (a commit whose reply was lost may or may not be shown before recovery).
fn check_live(
    state: &BTreeMap<usize, Option<Tx>>,
    history: &[Rec],
    stored: &Stored,
) -> Vec<String> {
    let mut bad = Vec::new();
    for (&key, &seen) in state {
        if let Some((v, tx)) = newest_acked(key, history) {
            if !not_older(seen, key, v, stored) {
                bad.push(format!(
                    "k{key} shows {}, older than acknowledged t{tx}",
                    show(seen)
                ));
            }
        }
    }
    bad
}

fn show(writer: Option<Tx>) -> String {
    match writer {
        Some(t) => format!("t{t}"),
        None => "nothing".into(),
    }
}

// ---------------------------------------------------------------------------------------
// The workload.

const KEYS: usize = 6;
const TASKS: u64 = 8;
const TXNS_PER_TASK: u64 = 100;

fn key(k: usize) -> Bytes {
    Bytes::from(format!("key:{k}"))
}

fn value(tx: Tx) -> Bytes {
    Bytes::from(format!("t{tx}"))
}

fn parse_value(bytes: &[u8]) -> Option<Tx> {
    std::str::from_utf8(bytes)
        .ok()?
        .strip_prefix('t')?
        .parse()
        .ok()
}

/// A read, recorded; `Err` if the transaction must be abandoned.
async fn read(
    txn: &mut Txn,
    k: usize,
    for_update: bool,
    ops: &mut Vec<Op>,
    bad: &Mutex<Vec<String>>,
) -> Result<(), ()> {
    let result = if for_update {
        txn.get_for_update(&key(k)).await
    } else {
        txn.get(&key(k)).await
    };
    match result {
        Ok(entry) => {
            let writer = match entry {
                None => None,
                Some(Entry {
                    value: Value::Str(b),
                    ..
                }) => match parse_value(&b) {
                    Some(w) => Some(w),
                    None => {
                        bad.lock().push(format!("k{k} holds garbage {b:?}"));
                        return Err(());
                    }
                },
            };
            ops.push(Op::Read { key: k, writer });
            Ok(())
        }
        Err(TxnError::Storage(StorageError::Unavailable(_))) => Err(()),
        Err(e) => {
            bad.lock().push(format!("read of k{k} failed: {e}"));
            Err(())
        }
    }
}

/// Buffers a write of `k`: usually the transaction's value, sometimes a delete. The first
/// write of a transaction is always a value, so that its versions name it.
fn write(txn: &mut Txn, ops: &mut Vec<Op>, rng: &mut Rng, tx: Tx, k: usize, first: bool) {
    let delete = !first && rng.chance(20);
    if delete {
        txn.delete(key(k));
    } else {
        txn.put(key(k), Entry::string(value(tx)));
    }
    ops.push(Op::Write { key: k, delete });
}

/// Runs one random transaction numbered `tx`.
async fn one_txn(
    engine: &Arc<Engine>,
    rng: &mut Rng,
    tx: Tx,
    commits: &AtomicU64,
    bad: &Mutex<Vec<String>>,
) -> Rec {
    let mut txn = engine.begin();
    let id = txn.id();
    let mut ops = Vec::new();
    let kind = rng.below(10);
    let done = |ops: Vec<Op>, outcome| Rec {
        tx,
        id,
        ops,
        outcome,
    };
    macro_rules! read {
        ($k:expr, $upd:expr) => {
            if read(&mut txn, $k, $upd, &mut ops, bad).await.is_err() {
                return done(ops, Outcome::NoCommit);
            }
            if rng.chance(20) {
                tokio::task::yield_now().await;
            }
        };
    }
    if kind < 4 {
        // Reader: a random subset, sometimes a key twice.
        let n = rng.range(2, KEYS as u64) as usize;
        let keys = rng.pick(KEYS, n);
        for &k in &keys {
            read!(k, false);
            if rng.chance(25) {
                let again = keys[rng.below(keys.len() as u64) as usize];
                read!(again, false);
            }
        }
        return match txn.commit().await {
            Ok(None) => done(ops, Outcome::NoCommit),
            other => {
                bad.lock()
                    .push(format!("t{tx}: read-only commit returned {other:?}"));
                done(ops, Outcome::NoCommit)
            }
        };
    }
    let n = rng.range(2, 4) as usize;
    let writes = rng.pick(KEYS, n);
    if kind < 7 {
        // Blind writer, with reads before, between and after its writes.
        let n = rng.below(3) as usize;
        for k in rng.pick(KEYS, n) {
            read!(k, false);
        }
        for (n, &k) in writes.iter().enumerate() {
            write(&mut txn, &mut ops, rng, tx, k, n == 0);
            if rng.chance(30) {
                read!(k, false);
            }
            if rng.chance(30) {
                read!(rng.below(KEYS as u64) as usize, false);
            }
        }
    } else {
        // Read-modify-write: reads some of its keys for update, then writes them all.
        let checked = rng.range(1, 2) as usize;
        for &k in &writes[..checked] {
            read!(k, true);
        }
        if rng.chance(50) {
            read!(rng.below(KEYS as u64) as usize, false);
        }
        for (n, &k) in writes.iter().enumerate() {
            write(&mut txn, &mut ops, rng, tx, k, n == 0);
        }
        if rng.chance(50) {
            read!(writes[0], false);
        }
    }
    commits.fetch_add(1, Ordering::SeqCst);
    let outcome = match txn.commit().await {
        Ok(Some(v)) => Outcome::Acked(v),
        Ok(None) => {
            bad.lock()
                .push(format!("t{tx}: a commit with writes returned no version"));
            Outcome::NoCommit
        }
        Err(TxnError::Storage(StorageError::OutcomeUnknown(_))) => Outcome::Unknown,
        Err(e) => Outcome::Failed(e.to_string()),
    };
    done(ops, outcome)
}

/// Reads every key in one transaction of `engine`, retrying if the store fails a read.
async fn read_all(engine: &Arc<Engine>, tx: Tx) -> Result<Rec, String> {
    'attempt: for _ in 0..100 {
        let mut txn = engine.begin();
        let mut ops = Vec::new();
        let bad = Mutex::new(Vec::new());
        for k in 0..KEYS {
            if read(&mut txn, k, false, &mut ops, &bad).await.is_err() {
                if bad.lock().is_empty() {
                    continue 'attempt;
                }
                return Err(format!("reading every key failed: {:?}", bad.lock()));
            }
        }
        return Ok(Rec {
            tx,
            id: txn.id(),
            ops,
            outcome: Outcome::NoCommit,
        });
    }
    Err("reading every key failed 100 times".into())
}

fn state_of(rec: &Rec) -> BTreeMap<usize, Option<Tx>> {
    rec.ops
        .iter()
        .filter_map(|op| match *op {
            Op::Read { key, writer } => Some((key, writer)),
            Op::Write { .. } => None,
        })
        .collect()
}

/// Every commit record in `storage`, matched to the transaction by the id it carries, with
/// its write set. The values still stored (garbage collection may have deleted superseded
/// ones) must be the transaction's.
async fn stored_commits(
    storage: &Arc<dyn Storage>,
    ids: &HashMap<TxnId, Tx>,
) -> Result<Stored, String> {
    let mut out = Stored::new();
    let mut after = None;
    loop {
        let page = storage
            .scan_commits(after, 256)
            .await
            .map_err(|e| format!("scan_commits: {e}"))?;
        let Some(last) = page.last() else { break };
        after = Some(last.id);
        for record in page {
            let id = record.id;
            let tx = *ids
                .get(&id.txn)
                .ok_or_else(|| format!("commit record {id:?} of no transaction that ran"))?;
            let metas = decode_body(&record.body).map_err(|e| format!("{id:?}: {e}"))?;
            let mut ws = WriteSet::new();
            let mut wanted = Vec::new();
            for m in metas {
                let k = std::str::from_utf8(&m.key)
                    .ok()
                    .and_then(|s| s.strip_prefix("key:"))
                    .and_then(|s| s.parse::<usize>().ok())
                    .ok_or_else(|| format!("{id:?} wrote unexpected key {:?}", m.key))?;
                let deleted = m.kind == Kind::Tombstone;
                ws.insert(k, deleted);
                if !deleted {
                    wanted.push(VersionKey {
                        key: m.key,
                        version: id,
                    });
                }
            }
            let values = storage
                .get_versions(wanted)
                .await
                .map_err(|e| format!("get_versions: {e}"))?;
            for v in values.into_iter().flatten() {
                if parse_value(&v) != Some(tx) {
                    return Err(format!("t{tx}'s commit {id:?} stored the value {v:?}"));
                }
            }
            if out.insert(tx, (id, ws)).is_some() {
                return Err(format!("t{tx} has two commit records"));
            }
        }
    }
    Ok(out)
}

/// No background garbage collection (scenarios that want it run rounds themselves), and
/// commit records kept for the whole test, so that the store still holds the record of
/// every commit for the checker to match against the history.
// The struct update keeps this compiling when the engine gains settings.
#[allow(clippy::needless_update)]
fn config(cache_bytes: usize) -> EngineConfig {
    EngineConfig {
        cache_bytes,
        gc_interval: Duration::ZERO,
        status_retention: Duration::from_secs(3600),
        idempotency_retention: Duration::from_secs(3600),
        ..EngineConfig::default()
    }
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    seed: u64,
    faults: FaultConfig,
    cache_bytes: usize,
    /// Crash the store once this many commits were started.
    crash_after: Option<u64>,
    /// Run garbage collection rounds continuously, concurrently with the transactions.
    gc: bool,
}

impl Scenario {
    fn from_seed(seed: u64) -> Scenario {
        let mut rng = Rng::new(seed ^ 0x5ce7_a210);
        let p = |rng: &mut Rng, max: u64| rng.below(max + 1) as f64 / 100.0;
        let faults = if seed.is_multiple_of(4) {
            FaultConfig::new(seed)
        } else {
            FaultConfig {
                seed,
                fail_before: p(&mut rng, 15),
                fail_after: p(&mut rng, 15),
                fail_read: p(&mut rng, 8),
            }
        };
        Scenario {
            seed,
            faults,
            // No cache: every read goes to the (faulty) store.
            cache_bytes: if rng.chance(50) { 0 } else { 1 << 20 },
            crash_after: (seed % 2 == 1).then(|| rng.range(50, 400)),
            gc: !seed.is_multiple_of(3),
        }
    }
}

async fn run_scenario(sc: Scenario) -> Result<String, Vec<String>> {
    let memory: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let faulty = Arc::new(FaultyStorage::new(memory.clone(), sc.faults));
    let engine = Engine::open(faulty.clone(), config(sc.cache_bytes))
        .await
        .map_err(|e| vec![format!("open: {e}")])?;

    let commits = Arc::new(AtomicU64::new(0));
    let bad = Arc::new(Mutex::new(Vec::new()));
    let stop_crasher = Arc::new(AtomicBool::new(false));
    let crasher = sc.crash_after.map(|at| {
        let handle = faulty.crash_handle();
        let commits = commits.clone();
        let stop = stop_crasher.clone();
        tokio::spawn(async move {
            while commits.load(Ordering::SeqCst) < at && !stop.load(Ordering::SeqCst) {
                tokio::task::yield_now().await;
            }
            handle.crash();
        })
    });
    let stop_gc = Arc::new(AtomicBool::new(false));
    let collector = sc.gc.then(|| {
        let engine = engine.clone();
        let stop = stop_gc.clone();
        tokio::spawn(async move {
            let mut total = GcReport::default();
            while !stop.load(Ordering::SeqCst) {
                let r = engine.collect_garbage().await;
                total.versions_dropped += r.versions_dropped;
                total.keys_removed += r.keys_removed;
                total.versions_deleted += r.versions_deleted;
                total.commits_deleted += r.commits_deleted;
                total.errors += r.errors;
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
            total
        })
    });
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let engine = engine.clone();
        let commits = commits.clone();
        let bad = bad.clone();
        let mut rng = Rng::new(sc.seed.wrapping_mul(31).wrapping_add(t));
        tasks.push(tokio::spawn(async move {
            let mut history = Vec::new();
            for i in 0..TXNS_PER_TASK {
                let tx = (t + 1) * 1000 + i;
                history.push(one_txn(&engine, &mut rng, tx, &commits, &bad).await);
            }
            history
        }));
    }
    let mut history = Vec::new();
    for task in tasks {
        history.extend(task.await.map_err(|e| vec![format!("task: {e}")])?);
    }
    stop_crasher.store(true, Ordering::SeqCst);
    if let Some(c) = crasher {
        c.await.map_err(|e| vec![format!("crasher: {e}")])?;
    }
    stop_gc.store(true, Ordering::SeqCst);
    let gc = match collector {
        Some(c) => Some(c.await.map_err(|e| vec![format!("collector: {e}")])?),
        None => None,
    };
    let mut violations = std::mem::take(&mut *bad.lock());

    let ids: HashMap<TxnId, Tx> = history.iter().map(|r| (r.id, r.tx)).collect();
    if ids.len() != history.len() {
        violations.push("two transactions got the same id".into());
    }
    let stored = stored_commits(&memory, &ids).await.map_err(|e| vec![e])?;
    if !faulty.is_crashed() {
        // Without a crash, the running engine shows every acknowledged commit.
        let rec = read_all(&engine, 1).await.map_err(|e| vec![e])?;
        violations.extend(check_live(&state_of(&rec), &history, &stored));
        history.push(rec);
    }
    drop(engine);

    // Restart: a new engine recovers from what the store holds.
    let recovered = Engine::open(memory.clone(), config(1 << 20))
        .await
        .map_err(|e| vec![format!("recovery: {e}")])?;
    let rec = read_all(&recovered, 2).await.map_err(|e| vec![e])?;
    violations.extend(check_recovered(&state_of(&rec), &history, &stored));
    history.push(rec);
    violations.extend(check_history(&history, &stored));

    // A commit after recovery supersedes everything recovered.
    let mut txn = recovered.begin();
    for k in 0..KEYS {
        txn.put(key(k), Entry::string(value(3)));
    }
    let after = txn.commit().await;
    let newest = stored.values().map(|(v, _)| *v).max();
    match after {
        Ok(Some(v)) if newest.is_none_or(|n| v > n) => {}
        other => violations.push(format!(
            "commit after recovery returned {other:?}, newest recovered version {newest:?}"
        )),
    }
    let rec = read_all(&recovered, 4).await.map_err(|e| vec![e])?;
    if state_of(&rec).values().any(|w| *w != Some(3)) {
        violations.push(format!(
            "after a commit of every key following recovery, read {:?}",
            state_of(&rec)
        ));
    }

    let count = |f: fn(&Outcome) -> bool| history.iter().filter(|r| f(&r.outcome)).count();
    let summary = format!(
        "{} acked, {} unknown, {} failed, {} read-only/abandoned; faults {:?}; crashed: {}; \
         gc: {gc:?}",
        count(|o| matches!(o, Outcome::Acked(_))),
        count(|o| matches!(o, Outcome::Unknown)),
        count(|o| matches!(o, Outcome::Failed(_))),
        count(|o| matches!(o, Outcome::NoCommit)),
        faulty.stats(),
        faulty.is_crashed(),
    );
    if violations.is_empty() {
        Ok(summary)
    } else {
        violations.push(summary);
        Err(violations)
    }
}

/// Odd seeds crash the store mid-run; every fourth seed injects no other fault; two seeds in
/// three collect garbage while transactions run.
const SEEDS: std::ops::RangeInclusive<u64> = 1..=24;

#[test]
fn random_transactions_are_read_atomic_and_durable_across_crashes() {
    let seeds: Vec<u64> = seed_override().map_or(SEEDS.collect(), |s| vec![s]);
    for seed in seeds {
        let sc = Scenario::from_seed(seed);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .expect("runtime");
        let started = Instant::now();
        let result = runtime.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), run_scenario(sc))
                .await
                .unwrap_or_else(|_| Err(vec!["timed out".into()]))
        });
        match result {
            Ok(summary) => eprintln!("seed {seed}: ok in {:?}: {summary}", started.elapsed()),
            Err(violations) => panic!(
                "seed {seed} ({sc:?}) failed (replay: AFT_TEST_SEED={seed}), {} problems:\n{}",
                violations.len(),
                violations
                    .iter()
                    .take(30)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join("\n")
            ),
        }
    }
}

/// A commit lost before reaching the store leaves nothing: not to readers, not after recovery.
#[tokio::test]
async fn a_commit_that_failed_before_the_store_leaves_nothing_visible() {
    let memory: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let base = Engine::open(memory.clone(), config(1 << 20))
        .await
        .expect("open");
    let mut txn = base.begin();
    txn.put(key(0), Entry::string(Bytes::from_static(b"before")));
    assert!(matches!(txn.commit().await, Ok(Some(_))));
    drop(base);

    let faulty = Arc::new(FaultyStorage::new(
        memory.clone(),
        FaultConfig {
            fail_before: 1.0,
            ..FaultConfig::new(11)
        },
    ));
    let engine = Engine::open(faulty.clone(), config(1 << 20))
        .await
        .expect("open over faulty store");
    let mut txn = engine.begin();
    txn.put(key(0), Entry::string(Bytes::from_static(b"lost")));
    txn.put(key(1), Entry::string(Bytes::from_static(b"lost")));
    txn.delete(key(2));
    let result = txn.commit().await;
    assert!(
        matches!(result, Err(TxnError::Storage(StorageError::Unavailable(_)))),
        "{result:?}"
    );
    assert_eq!(faulty.stats().failed_before, 1);

    let expect = |what: &str, got: Vec<Option<Entry>>| {
        assert_eq!(
            got,
            vec![
                Some(Entry::string(Bytes::from_static(b"before"))),
                None,
                None
            ],
            "{what}"
        );
    };
    let mut reader = engine.begin();
    let mut got = Vec::new();
    for k in 0..3 {
        got.push(reader.get(&key(k)).await.expect("read"));
    }
    expect("same engine", got);

    let records = memory.scan_commits(None, 100).await.expect("scan");
    assert_eq!(records.len(), 1, "only the first commit is stored");
    let recovered = Engine::open(memory.clone(), config(1 << 20))
        .await
        .expect("recover");
    let mut reader = recovered.begin();
    let mut got = Vec::new();
    for k in 0..3 {
        got.push(reader.get(&key(k)).await.expect("read"));
    }
    expect("after recovery", got);
}

/// A commit after a restart supersedes recovered versions even if they carry timestamps ahead
/// of this machine's clock (a node whose clock ran fast, or a clock stepped back).
#[tokio::test]
async fn a_commit_after_recovery_wins_over_recovered_versions_from_the_future() {
    let memory: Arc<dyn Storage> = Arc::new(MemoryStorage::new());
    let now_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_millis() as u64;
    // An hour ahead, in the hybrid clock's format (physical ms above a 16-bit counter).
    let future = VersionId {
        ts: (now_ms + 3_600_000) << 16,
        txn: TxnId(7),
    };
    let body = aft::txn::record::encode_body(&[aft::txn::WriteMeta {
        key: key(0),
        kind: aft::txn::Kind::String,
        expire_at: 0,
    }]);
    let outcome = memory
        .commit(CommitBatch {
            versions: vec![(key(0), value(1))],
            record: CommitRecord {
                id: future,
                idempotency_key: None,
                body,
            },
            conditions: Default::default(),
        })
        .await
        .expect("commit");
    assert_eq!(outcome, CommitOutcome::Committed);

    let engine = Engine::open(memory.clone(), config(1 << 20))
        .await
        .expect("recover");
    let mut txn = engine.begin();
    let got = txn.get(&key(0)).await.expect("read");
    assert_eq!(got, Some(Entry::string(value(1))), "recovered value");
    drop(txn);
    let mut txn = engine.begin();
    txn.put(key(0), Entry::string(value(2)));
    let id = txn.commit().await.expect("commit");
    assert!(
        id.is_some_and(|id| id > future),
        "new commit {id:?} is not newer than recovered {future:?}"
    );
    let mut txn = engine.begin();
    let got = txn.get(&key(0)).await.expect("read");
    assert_eq!(got, Some(Entry::string(value(2))), "the later commit wins");
}

/// The checker is not vacuous: it rejects hand-made bad histories and accepts a good one.
#[test]
fn checker_detects_bad_histories() {
    let v = |ts: u64| VersionId {
        ts,
        txn: TxnId(u128::from(ts)),
    };
    // Write sets are (key, is a delete).
    let writer = |tx: Tx, keys: &[(usize, bool)], outcome: Outcome| Rec {
        tx,
        id: TxnId(u128::from(tx)),
        ops: keys
            .iter()
            .map(|&(key, delete)| Op::Write { key, delete })
            .collect(),
        outcome,
    };
    let reader = |tx: Tx, reads: &[(usize, Option<Tx>)]| Rec {
        tx,
        id: TxnId(u128::from(tx)),
        ops: reads
            .iter()
            .map(|&(key, writer)| Op::Read { key, writer })
            .collect(),
        outcome: Outcome::NoCommit,
    };
    let ws = |keys: &[(usize, bool)]| -> WriteSet { keys.iter().copied().collect() };
    // t1 then t2 wrote k0 and k1; t3 (unknown outcome, committed) wrote k1 and k2 after
    // both; t4 failed; t5's outcome is unknown and it did not commit; t6 wrote k4 and
    // deleted k5 after t7 wrote k5; t8 wrote k4 after t6.
    let base = vec![
        writer(1, &[(0, false), (1, false)], Outcome::Acked(v(10))),
        writer(2, &[(0, false), (1, false)], Outcome::Acked(v(20))),
        writer(3, &[(1, false), (2, false)], Outcome::Unknown),
        writer(4, &[(3, false)], Outcome::Failed("conflict".into())),
        writer(5, &[(3, false)], Outcome::Unknown),
        writer(6, &[(4, false), (5, true)], Outcome::Acked(v(60))),
        writer(7, &[(5, false)], Outcome::Acked(v(50))),
        writer(8, &[(4, false)], Outcome::Acked(v(70))),
    ];
    let stored: Stored = [
        (1, (v(10), ws(&[(0, false), (1, false)]))),
        (2, (v(20), ws(&[(0, false), (1, false)]))),
        (3, (v(30), ws(&[(1, false), (2, false)]))),
        (6, (v(60), ws(&[(4, false), (5, true)]))),
        (7, (v(50), ws(&[(5, false)]))),
        (8, (v(70), ws(&[(4, false)]))),
    ]
    .into_iter()
    .collect();
    assert_eq!(check_history(&base, &stored), Vec::<String>::new());
    let with = |extra: Rec| {
        let mut h = base.clone();
        h.push(extra);
        check_history(&h, &stored)
    };
    let rejects = |extra: Rec, what: &str| {
        let bad = with(extra);
        assert!(
            bad.iter().any(|b| b.contains(what)),
            "expected {what:?}, got {bad:?}"
        );
    };
    let none = Vec::<String>::new();

    // Good readsets: a consistent snapshot, or newer versions of the other keys.
    assert_eq!(with(reader(9, &[(0, Some(2)), (1, Some(2))])), none);
    assert_eq!(with(reader(9, &[(0, Some(1)), (1, Some(3))])), none);
    assert_eq!(
        with(reader(9, &[(1, Some(3)), (2, Some(3)), (0, None)])),
        none
    );
    assert_eq!(with(reader(9, &[(4, Some(6)), (5, None)])), none);
    assert_eq!(with(reader(9, &[(5, Some(7)), (4, Some(8))])), none);

    // Fractured: k0 from t2 but k1 from the older t1, in either read order; or k1 absent.
    rejects(reader(9, &[(0, Some(2)), (1, Some(1))]), "fractured");
    rejects(reader(9, &[(1, Some(1)), (0, Some(2))]), "fractured");
    rejects(reader(9, &[(0, Some(1)), (1, None)]), "fractured");
    // k1 from the unknown-outcome t3 (committed at 30) but k2 absent.
    rejects(reader(9, &[(1, Some(3)), (2, None)]), "fractured");
    // k4 from t6, which deleted k5, but k5 still shows the older t7.
    rejects(reader(9, &[(4, Some(6)), (5, Some(7))]), "fractured");
    // Dirty: values of a failed commit and of an unknown one that never committed.
    rejects(reader(9, &[(3, Some(4))]), "dirty read");
    rejects(reader(9, &[(3, Some(5))]), "dirty read");
    rejects(reader(9, &[(2, Some(1))]), "wrote no value");
    rejects(reader(9, &[(5, Some(6))]), "wrote no value");
    // Read-your-writes and repeatable reads.
    let mut own = writer(9, &[(0, false)], Outcome::NoCommit);
    own.ops.push(Op::Read {
        key: 0,
        writer: Some(2),
    });
    rejects(own, "read-your-writes");
    let mut own = writer(9, &[(0, true)], Outcome::NoCommit);
    own.ops.push(Op::Read {
        key: 0,
        writer: Some(2),
    });
    rejects(own, "read-your-writes");
    rejects(reader(9, &[(0, Some(1)), (0, Some(2))]), "non-repeatable");
    rejects(reader(9, &[(0, Some(1)), (0, None)]), "non-repeatable");
    // Outcomes: an acknowledged commit missing, a failed one stored, a write set changed.
    let mut h = base.clone();
    h.push(writer(10, &[(4, false)], Outcome::Acked(v(80))));
    assert!(check_history(&h, &stored)
        .iter()
        .any(|b| b.contains("lost commit")));
    let mut s = stored.clone();
    s.insert(4, (v(40), ws(&[(3, false)])));
    assert!(check_history(&base, &s)
        .iter()
        .any(|b| b.contains("left a commit record")));
    let mut s = stored.clone();
    s.insert(6, (v(60), ws(&[(4, false)])));
    assert!(check_history(&base, &s)
        .iter()
        .any(|b| b.contains("stored write set")));

    // Recovered state: the newest committed write per key; older, or missing, is rejected.
    let good: BTreeMap<usize, Option<Tx>> = [
        (0, Some(2)),
        (1, Some(3)),
        (2, Some(3)),
        (3, None),
        (4, Some(8)),
        (5, None),
    ]
    .into_iter()
    .collect();
    assert_eq!(check_recovered(&good, &base, &stored), none);
    let bad_state = |key: usize, seen: Option<Tx>| {
        let mut state = good.clone();
        state.insert(key, seen);
        state
    };
    assert!(check_recovered(&bad_state(0, Some(1)), &base, &stored)
        .iter()
        .any(|b| b.contains("older than acknowledged t2")));
    assert!(!check_recovered(&bad_state(1, Some(2)), &base, &stored).is_empty());
    assert!(!check_recovered(&bad_state(5, Some(7)), &base, &stored).is_empty());
    assert!(!check_recovered(&bad_state(0, None), &base, &stored).is_empty());
    // Live state: the unknown t3 may be missing, the acknowledged t2 and t6 may not.
    let mut live = bad_state(1, Some(2));
    live.insert(2, None);
    assert_eq!(check_live(&live, &base, &stored), none);
    assert!(!check_live(&bad_state(0, Some(1)), &base, &stored).is_empty());
    assert!(!check_live(&bad_state(5, Some(7)), &base, &stored).is_empty());
}
