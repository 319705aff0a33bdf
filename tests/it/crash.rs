//! Crash test of the real binary: `aft serve` over the embedded backend (fsync on, garbage
//! collection every 10 ms) is killed with SIGKILL under concurrent multi-key MULTI/EXEC load,
//! restarted on the same data directory, and checked (and the same over DynamoDB, against an
//! emulator in the test process that outlives each `aft`):
//!
//! * durability: every acknowledged transaction is still there (each key shows its last
//!   acknowledged writer or a later one whose outcome the client never learned);
//! * atomicity: whenever a transaction's value is seen on one of its keys, its other keys read
//!   in the same command show it or something newer, both in MGETs during the load and in the
//!   state after each restart;
//! * no dirty reads: nothing read ever comes from a transaction shown not to have committed,
//!   and a value a reader saw before the crash survives it.
//!
//! "Newer" needs an order of the versions of a key, which clients cannot see. Two facts give
//! one: each writer task has keys of its own, which only it writes, one EXEC at a time, so
//! their versions are in the task's program order; and for any key, a transaction that was
//! acknowledged before another was sent is older than it (real-time order, taken from one
//! logical counter read before each EXEC is sent and after its reply arrives). A few shared
//! group keys, written by every task, are checked with that partial order only.
//!
//! The seed is printed; `AFT_TEST_SEED=<n>` replays the same choices (not the same timing).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::task::JoinHandle;

use crate::core_props::{seed_override, Rng};
use crate::harness::{connect_patient as connect, Emulator, Process};

const WRITERS: usize = 6;
const READERS: usize = 2;
/// Keys only one writer task writes.
const OWN: usize = 3;
/// Keys every writer task writes.
const GROUP: usize = 2;
const KEYS: usize = WRITERS * OWN + GROUP;
/// Keys each transaction writes.
const WRITE_SET: usize = 3;
const ROUNDS: usize = 4;

fn key_name(k: usize) -> String {
    if k < WRITERS * OWN {
        format!("crash:w{}:{}", k / OWN, k % OWN)
    } else {
        format!("crash:group:{}", k - WRITERS * OWN)
    }
}

/// What the client knows of a transaction.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// EXEC sent, no reply yet.
    InFlight,
    /// EXEC replied with every SET's OK.
    Acked,
    /// No reply (the connection dropped) or an error: it may or may not have committed.
    Unknown,
    /// Outcome unknown, but some client saw its value: it committed.
    Committed,
    /// Outcome unknown, and the state after a restart shows it did not commit.
    Aborted,
}

#[derive(Clone, Debug)]
struct TxnInfo {
    keys: Vec<usize>,
    /// Logical time before MULTI was sent.
    start: u64,
    /// Logical time after the reply arrived (`u64::MAX` while in flight).
    end: u64,
    state: State,
}

impl TxnInfo {
    /// Whether `self` certainly committed before `other` was sent, so that any version of
    /// `other` is newer than `self`'s.
    fn precedes(&self, other: &TxnInfo) -> bool {
        self.end < other.start
    }

    fn durable(&self) -> bool {
        matches!(self.state, State::Acked | State::Committed)
    }
}

/// Transactions by the token they wrote.
type Txns = HashMap<String, TxnInfo>;

/// What one read command returned: key -> token (None: absent).
type Observation = BTreeMap<usize, Option<String>>;

/// Fractured and dirty reads in one observation (a single MGET, read atomically).
fn check_atomic(obs: &Observation, txns: &Txns, what: &str) -> Vec<String> {
    let mut bad = Vec::new();
    for (&k, seen) in obs {
        let Some(token) = seen else { continue };
        let Some(t) = txns.get(token) else {
            bad.push(format!(
                "{what}: {} holds {token:?}, which nobody wrote",
                key_name(k)
            ));
            continue;
        };
        if !t.keys.contains(&k) {
            bad.push(format!(
                "{what}: {} holds {token}, which did not write it",
                key_name(k)
            ));
            continue;
        }
        if t.state == State::Aborted {
            bad.push(format!(
                "{what}: dirty read: {} holds {token}, which did not commit",
                key_name(k)
            ));
        }
        for &l in &t.keys {
            if l == k {
                continue;
            }
            let Some(other) = obs.get(&l) else { continue };
            let older = match other {
                None => true,
                Some(o) if o == token => false,
                Some(o) => txns.get(o).is_some_and(|oi| oi.precedes(t)),
            };
            if older {
                bad.push(format!(
                    "{what}: fractured read: {} shows {token}, which also wrote {}, but {} \
                     shows older {other:?}",
                    key_name(k),
                    key_name(l),
                    key_name(l)
                ));
            }
        }
    }
    bad
}

/// Lost writes in the state after a restart (every key read): for each key, every durable
/// writer is shown, or something not older than it.
fn check_durable(state: &Observation, txns: &Txns) -> Vec<String> {
    let mut bad = Vec::new();
    for (&k, seen) in state {
        let seen_info = seen.as_ref().and_then(|s| txns.get(s));
        for (token, t) in txns {
            if !t.durable() || !t.keys.contains(&k) || seen.as_ref() == Some(token) {
                continue;
            }
            let lost = match seen_info {
                None => seen.is_none(),
                Some(s) => s.precedes(t),
            };
            if lost {
                bad.push(format!(
                    "lost write: {} shows {seen:?}, older than {token} ({:?})",
                    key_name(k),
                    t.state
                ));
            }
        }
    }
    bad
}

/// Settles unknown outcomes from what clients saw: a transaction whose value was seen
/// committed; one whose key shows something older than it (or nothing) did not.
fn resolve(state: &Observation, seen_by_readers: &[Observation], txns: &mut Txns) {
    let mut seen: HashSet<&str> = HashSet::new();
    for obs in seen_by_readers.iter().chain(std::iter::once(state)) {
        for token in obs.values().flatten() {
            seen.insert(token);
        }
    }
    let snapshot = txns.clone();
    for (token, t) in txns.iter_mut() {
        if t.state != State::Unknown {
            continue;
        }
        if seen.contains(token.as_str()) {
            t.state = State::Committed;
            continue;
        }
        let contradicted = t.keys.iter().any(|l| match state.get(l) {
            Some(None) => true,
            Some(Some(o)) => snapshot.get(o).is_some_and(|oi| oi.precedes(t)),
            None => false,
        });
        if contradicted {
            t.state = State::Aborted;
        }
    }
}

struct Shared {
    clock: AtomicU64,
    txns: Mutex<Txns>,
    stop: AtomicBool,
}

impl Shared {
    fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::SeqCst)
    }
}

/// Writes `WRITE_SET` keys per transaction, one transaction at a time, until told to stop
/// or an EXEC fails (after which its connection's state is unknown). Returns the next
/// sequence number.
async fn writer(
    w: usize,
    addr: std::net::SocketAddr,
    shared: Arc<Shared>,
    mut rng: Rng,
    mut seq: u64,
) -> u64 {
    let Ok(mut con) = connect(addr).await else {
        return seq;
    };
    let candidates: Vec<usize> = (w * OWN..(w + 1) * OWN)
        .chain(WRITERS * OWN..KEYS)
        .collect();
    while !shared.stop.load(Ordering::SeqCst) {
        let keys: Vec<usize> = rng
            .pick(candidates.len(), WRITE_SET)
            .into_iter()
            .map(|i| candidates[i])
            .collect();
        let token = format!("w{w}-{seq}");
        seq += 1;
        let start = shared.tick();
        shared.txns.lock().insert(
            token.clone(),
            TxnInfo {
                keys: keys.clone(),
                start,
                end: u64::MAX,
                state: State::InFlight,
            },
        );
        let mut pipe = redis::pipe();
        pipe.atomic();
        for &k in &keys {
            pipe.set(key_name(k), &token);
        }
        let reply: redis::RedisResult<Vec<String>> = pipe.query_async(&mut con).await;
        let end = shared.tick();
        let acked = matches!(&reply, Ok(r) if r.len() == keys.len() && r.iter().all(|s| s == "OK"));
        if let Some(t) = shared.txns.lock().get_mut(&token) {
            t.end = end;
            t.state = if acked { State::Acked } else { State::Unknown };
        }
        if !acked {
            break;
        }
    }
    seq
}

/// MGETs groups of keys until told to stop or a read fails.
async fn reader(addr: std::net::SocketAddr, shared: Arc<Shared>, mut rng: Rng) -> Vec<Observation> {
    let mut seen = Vec::new();
    let Ok(mut con) = connect(addr).await else {
        return seen;
    };
    while !shared.stop.load(Ordering::SeqCst) {
        let keys: Vec<usize> = if rng.chance(50) {
            // One writer's candidate keys: its transactions are often seen whole.
            let w = rng.below(WRITERS as u64) as usize;
            (w * OWN..(w + 1) * OWN)
                .chain(WRITERS * OWN..KEYS)
                .collect()
        } else {
            let n = rng.range(4, 8) as usize;
            rng.pick(KEYS, n)
        };
        let names: Vec<String> = keys.iter().map(|&k| key_name(k)).collect();
        let reply: redis::RedisResult<Vec<Option<String>>> =
            redis::cmd("MGET").arg(&names).query_async(&mut con).await;
        match reply {
            Ok(values) if values.len() == keys.len() => {
                seen.push(keys.into_iter().zip(values).collect());
            }
            _ => break,
        }
    }
    seen
}

struct Load {
    writers: Vec<JoinHandle<u64>>,
    readers: Vec<JoinHandle<Vec<Observation>>>,
}

fn start_load(
    runtime: &tokio::runtime::Runtime,
    addr: std::net::SocketAddr,
    shared: &Arc<Shared>,
    rng: &mut Rng,
    seqs: &[u64],
) -> Load {
    shared.stop.store(false, Ordering::SeqCst);
    let writers = (0..WRITERS)
        .map(|w| {
            let task_rng = Rng::new(rng.next_u64());
            runtime.spawn(writer(w, addr, shared.clone(), task_rng, seqs[w]))
        })
        .collect();
    let readers = (0..READERS)
        .map(|_| runtime.spawn(reader(addr, shared.clone(), Rng::new(rng.next_u64()))))
        .collect();
    Load { writers, readers }
}

/// Waits for the load to end; returns each writer's next sequence number and what the
/// readers saw.
async fn join_load(load: Load) -> Result<(Vec<u64>, Vec<Observation>), String> {
    let mut seqs = Vec::new();
    for w in load.writers {
        let seq = tokio::time::timeout(Duration::from_secs(30), w)
            .await
            .map_err(|_| "a writer did not stop".to_string())?
            .map_err(|e| format!("writer task: {e}"))?;
        seqs.push(seq);
    }
    let mut seen = Vec::new();
    for r in load.readers {
        let obs = tokio::time::timeout(Duration::from_secs(30), r)
            .await
            .map_err(|_| "a reader did not stop".to_string())?
            .map_err(|e| format!("reader task: {e}"))?;
        seen.extend(obs);
    }
    Ok((seqs, seen))
}

/// After a (re)start: reads every key at once and checks it, settles unknown outcomes, then
/// checks what the readers saw before.
async fn verify(
    addr: std::net::SocketAddr,
    shared: &Shared,
    seen_by_readers: &[Observation],
    what: &str,
) -> Result<Vec<String>, String> {
    let mut con = connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let info: String = redis::cmd("INFO")
        .arg("persistence")
        .query_async(&mut con)
        .await
        .map_err(|e| format!("INFO: {e}"))?;
    let recovered: u64 = info
        .lines()
        .find_map(|l| l.strip_prefix("aft_recovered_commits:"))
        .and_then(|v| v.trim().parse().ok())
        .ok_or_else(|| format!("no aft_recovered_commits in INFO: {info:?}"))?;
    let names: Vec<String> = (0..KEYS).map(key_name).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&names)
        .query_async(&mut con)
        .await
        .map_err(|e| format!("MGET: {e}"))?;
    let state: Observation = (0..KEYS).zip(values).collect();

    let mut txns = shared.txns.lock();
    let mut bad = Vec::new();
    if txns.values().any(|t| t.state == State::Acked) && recovered == 0 {
        bad.push(format!("{what}: INFO says aft_recovered_commits:0"));
    }
    resolve(&state, seen_by_readers, &mut txns);
    bad.extend(
        check_durable(&state, &txns)
            .into_iter()
            .map(|b| format!("{what}: {b}")),
    );
    bad.extend(check_atomic(&state, &txns, what));
    for obs in seen_by_readers {
        bad.extend(check_atomic(obs, &txns, "MGET under load"));
    }
    Ok(bad)
}

fn count(shared: &Shared, state: State) -> usize {
    shared
        .txns
        .lock()
        .values()
        .filter(|t| t.state == state)
        .count()
}

#[test]
fn acknowledged_transactions_survive_kill_9_whole() {
    kill_9_under_load(&[]);
}

/// The same on the DynamoDB backend: the emulator runs in this process (on a runtime of its
/// own) and outlives every `aft` child that is killed and restarted on the same table.
#[test]
fn acknowledged_transactions_survive_kill_9_whole_on_dynamodb() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("emulator runtime");
    let emulator = runtime.block_on(Emulator::start());
    // A short lease: each restart waits for the killed process's lease to expire.
    kill_9_under_load(&[
        "--backend",
        &emulator.url("aft-crash"),
        "--lease-ms",
        "1000",
    ]);
    drop(emulator);
}

/// Runs the load, kills and restarts `aft serve` (with `backend_args` added) and checks the
/// states it finds after each restart.
fn kill_9_under_load(backend_args: &[&str]) {
    let seed = seed_override().unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!("crash test seed {seed} (replay with AFT_TEST_SEED={seed})");
    let fail = |round: &str, problems: Vec<String>| -> ! {
        panic!(
            "seed {seed} (replay: AFT_TEST_SEED={seed}), {round}: {} problems:\n{}",
            problems.len(),
            problems
                .iter()
                .take(30)
                .cloned()
                .collect::<Vec<_>>()
                .join("\n")
        )
    };
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let dir = tempfile::tempdir().expect("tempdir");
    // Garbage collection every 10 ms, so that it runs under the load and across the crashes.
    let conf_dir = tempfile::tempdir().expect("tempdir");
    let conf = conf_dir.path().join("aft.toml");
    std::fs::write(&conf, "gc_interval_ms = 10\n").expect("write config");
    let conf = conf.to_str().expect("utf-8 path");
    let mut args = vec!["--config", conf];
    args.extend_from_slice(backend_args);
    let shared = Arc::new(Shared {
        clock: AtomicU64::new(0),
        txns: Mutex::new(Txns::new()),
        stop: AtomicBool::new(false),
    });
    let mut seqs = vec![0u64; WRITERS];

    let mut server = Process::spawn(dir.path(), &args);
    for round in 1..=ROUNDS {
        let load = start_load(&runtime, server.addr, &shared, &mut rng, &seqs);
        let delay = rng.range(200, 600);
        std::thread::sleep(Duration::from_millis(delay));
        server.kill9();
        let (next, seen) = runtime
            .block_on(join_load(load))
            .unwrap_or_else(|e| fail(&format!("round {round}"), vec![e]));
        seqs = next;
        if count(&shared, State::InFlight) > 0 {
            fail(
                &format!("round {round}"),
                vec!["a transaction stayed in flight".into()],
            );
        }
        server = Process::spawn(dir.path(), &args);
        let what = format!("restart {round} (killed after {delay} ms)");
        let bad = runtime
            .block_on(verify(server.addr, &shared, &seen, &what))
            .unwrap_or_else(|e| fail(&what, vec![e]));
        if !bad.is_empty() {
            fail(&what, bad);
        }
        eprintln!(
            "{what}: {} acked, {} unknown, {} seen committed, {} shown aborted, {} reads",
            count(&shared, State::Acked),
            count(&shared, State::Unknown),
            count(&shared, State::Committed),
            count(&shared, State::Aborted),
            seen.len()
        );
    }

    // A last load, stopped cleanly: every EXEC must succeed; then a graceful shutdown.
    let before = shared.clock.load(Ordering::SeqCst);
    let load = start_load(&runtime, server.addr, &shared, &mut rng, &seqs);
    std::thread::sleep(Duration::from_millis(rng.range(200, 400)));
    shared.stop.store(true, Ordering::SeqCst);
    let (_, seen) = runtime
        .block_on(join_load(load))
        .unwrap_or_else(|e| fail("clean load", vec![e]));
    let not_acked: Vec<String> = shared
        .txns
        .lock()
        .iter()
        .filter(|(_, t)| t.start >= before && t.state != State::Acked)
        .map(|(token, t)| format!("EXEC of {token} failed without a crash ({:?})", t.state))
        .collect();
    if !not_acked.is_empty() {
        fail("clean load", not_acked);
    }
    let status = server.terminate();
    if !status.success() {
        fail(
            "graceful shutdown",
            vec![format!("aft exited with {status}")],
        );
    }
    let server = Process::spawn(dir.path(), &args);
    let bad = runtime
        .block_on(verify(server.addr, &shared, &seen, "restart after SIGTERM"))
        .unwrap_or_else(|e| fail("restart after SIGTERM", vec![e]));
    if !bad.is_empty() {
        fail("restart after SIGTERM", bad);
    }
    let status = server.terminate();
    if !status.success() {
        fail("final shutdown", vec![format!("aft exited with {status}")]);
    }
    eprintln!(
        "crash test: {} transactions acked, {} seen committed, {} unknown, {} shown aborted, in {:?}",
        count(&shared, State::Acked),
        count(&shared, State::Committed),
        count(&shared, State::Unknown),
        count(&shared, State::Aborted),
        started.elapsed()
    );
}

/// The checks are not vacuous: hand-made bad states are rejected, good ones accepted.
#[test]
fn crash_checker_detects_bad_states() {
    let t = |keys: &[usize], start: u64, end: u64, state: State| TxnInfo {
        keys: keys.to_vec(),
        start,
        end,
        state,
    };
    // a then b on keys 0 and 1 (own keys of writer 0, in program order); c is concurrent with
    // b; u's outcome is unknown, sent after b.
    let txns: Txns = [
        ("a", t(&[0, 1], 0, 1, State::Acked)),
        ("b", t(&[0, 1, 18], 2, 3, State::Acked)),
        ("c", t(&[3, 18], 2, 5, State::Acked)),
        ("u", t(&[0, 1], 4, 9, State::Unknown)),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    let obs = |pairs: &[(usize, Option<&str>)]| -> Observation {
        pairs
            .iter()
            .map(|&(k, v)| (k, v.map(str::to_string)))
            .collect()
    };
    let has = |bad: Vec<String>, what: &str| {
        assert!(
            bad.iter().any(|b| b.contains(what)),
            "expected {what:?} in {bad:?}"
        );
    };

    // Atomicity.
    assert!(check_atomic(
        &obs(&[(0, Some("b")), (1, Some("b")), (18, Some("c"))]),
        &txns,
        "x"
    )
    .is_empty());
    assert!(check_atomic(
        &obs(&[(0, Some("u")), (1, Some("u")), (18, Some("b"))]),
        &txns,
        "x"
    )
    .is_empty());
    has(
        check_atomic(&obs(&[(0, Some("a")), (1, Some("b"))]), &txns, "x"),
        "fractured",
    );
    has(
        check_atomic(&obs(&[(0, Some("b")), (1, Some("a"))]), &txns, "x"),
        "fractured",
    );
    has(
        check_atomic(&obs(&[(1, Some("a")), (0, None)]), &txns, "x"),
        "fractured",
    );
    has(
        check_atomic(&obs(&[(3, Some("c")), (18, None)]), &txns, "x"),
        "fractured",
    );
    has(
        check_atomic(&obs(&[(2, Some("a"))]), &txns, "x"),
        "did not write",
    );
    has(
        check_atomic(&obs(&[(2, Some("zz"))]), &txns, "x"),
        "nobody wrote",
    );

    // Durability: b and c acknowledged; u unknown may or may not show.
    let full = |pairs: &[(usize, Option<&str>)]| {
        let mut o: Observation = (0..KEYS).map(|k| (k, None)).collect();
        o.extend(obs(pairs));
        o
    };
    let good = full(&[
        (0, Some("b")),
        (1, Some("b")),
        (3, Some("c")),
        (18, Some("c")),
    ]);
    assert!(check_durable(&good, &txns).is_empty());
    let with_u = full(&[
        (0, Some("u")),
        (1, Some("u")),
        (3, Some("c")),
        (18, Some("b")),
    ]);
    assert!(check_durable(&with_u, &txns).is_empty());
    has(
        check_durable(
            &full(&[
                (0, Some("a")),
                (1, Some("b")),
                (3, Some("c")),
                (18, Some("c")),
            ]),
            &txns,
        ),
        "lost write",
    );
    has(
        check_durable(
            &full(&[(1, Some("b")), (3, Some("c")), (18, Some("c"))]),
            &txns,
        ),
        "lost write",
    );

    // Resolution: u seen -> committed, then losing it is a lost write; u contradicted ->
    // aborted, then reading it is a dirty read.
    let mut settled = txns.clone();
    resolve(&good, &[obs(&[(0, Some("u"))])], &mut settled);
    assert_eq!(settled["u"].state, State::Committed);
    has(check_durable(&good, &settled), "older than u");
    let mut settled = txns.clone();
    resolve(&good, &[], &mut settled);
    assert_eq!(settled["u"].state, State::Aborted);
    has(
        check_atomic(&obs(&[(0, Some("u"))]), &settled, "x"),
        "dirty read",
    );
}
