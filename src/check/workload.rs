//! The workload of a check: seeding, the transactions each client runs (plain, MULTI or
//! interactive), and what they record.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;
use rand::rngs::SmallRng;
use rand::{Rng as _, RngCore, SeedableRng};

use super::client::{Connection, Reply};
use super::history::{key_name, value_for, Key, Op, Outcome, TxnId, TxnRecord};
use super::{CheckConfig, CheckError, Mode};

/// A short tag that differs between runs, so values an earlier run left are never taken
/// for this run's.
pub(super) fn run_tag(seed: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut rng = Rng::new(seed ^ nanos ^ (u64::from(std::process::id()) << 32));
    format!("{:06x}", rng.next() & 0xff_ffff)
}

/// State shared by the clients of a run.
pub(super) struct Shared {
    pub(super) config: CheckConfig,
    pub(super) run_tag: String,
    pub(super) epoch: Instant,
    pub(super) tickets: AtomicU64,
    pub(super) stop: AtomicBool,
    pub(super) reconnects: AtomicU64,
    /// An error that ends the whole check.
    pub(super) fatal: Mutex<Option<CheckError>>,
    /// Why clients stopped early.
    pub(super) interrupted: Mutex<Option<String>>,
}

impl Shared {
    fn now(&self) -> Duration {
        self.epoch.elapsed()
    }

    fn fail(&self, e: CheckError) {
        self.fatal.lock().get_or_insert(e);
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Connects to the first server and authenticates, retrying with a short backoff for
/// `reconnect_for`.
pub(super) async fn connect(config: &CheckConfig) -> Result<Connection, CheckError> {
    connect_to(config, config.addr()).await
}

/// Connects to `addr` and authenticates, retrying as [`connect`] does.
pub(super) async fn connect_to(
    config: &CheckConfig,
    addr: String,
) -> Result<Connection, CheckError> {
    let deadline = Instant::now() + config.reconnect_for;
    let mut backoff = Duration::from_millis(10);
    loop {
        let reason = match Connection::connect(&addr, config.timeout).await {
            Ok(mut conn) => match &config.password {
                None => return Ok(conn),
                Some(pw) => match conn.call(&[b"AUTH", pw.as_bytes()]).await {
                    Ok(r) if r.is_ok() => return Ok(conn),
                    Ok(r) => return Err(CheckError::Auth(r.describe())),
                    Err(e) => e.to_string(),
                },
            },
            Err(e) => e.to_string(),
        };
        let now = Instant::now();
        if now >= deadline {
            return Err(CheckError::Connect { addr, reason });
        }
        tokio::time::sleep(backoff.min(deadline - now)).await;
        backoff = (backoff * 2).min(Duration::from_millis(250));
    }
}

/// Checks that the server has aft's interactive transactions.
pub(super) async fn probe_interactive(
    conn: &mut Connection,
    config: &CheckConfig,
) -> Result<(), CheckError> {
    let unsupported = |what: String| {
        CheckError::Unsupported(format!(
            "{} does not support interactive transactions: {what}",
            config.addr()
        ))
    };
    match conn.call(&[b"AFT.BEGIN"]).await {
        Ok(Reply::Bulk(Some(_)) | Reply::Status(_)) => {}
        Ok(other) => {
            return Err(unsupported(format!(
                "AFT.BEGIN replied {}",
                other.describe()
            )))
        }
        Err(e) => return Err(unsupported(format!("AFT.BEGIN failed: {e}"))),
    }
    match conn.call(&[b"AFT.ABORT"]).await {
        Ok(r) if r.is_ok() => Ok(()),
        Ok(other) => Err(unsupported(format!(
            "AFT.ABORT replied {}",
            other.describe()
        ))),
        Err(e) => Err(unsupported(format!("AFT.ABORT failed: {e}"))),
    }
}

/// Requests retried after connection failures (seeding, final read) are tried this often.
const ATTEMPTS: u32 = 3;

/// Writes every key once (as writers `t0-<key>`), retrying after connection failures.
pub(super) async fn seed(
    conn: &mut Connection,
    config: &CheckConfig,
    run_tag: &str,
    epoch: Instant,
) -> Result<Vec<TxnRecord>, CheckError> {
    const CHUNK: u32 = 500;
    let start = epoch.elapsed();
    let values: Vec<(String, Bytes)> = (0..config.keys)
        .map(|k| {
            let id = TxnId {
                client: 0,
                seq: u64::from(k),
            };
            (key_name(k), value_for(run_tag, id, &[k], config.value_size))
        })
        .collect();
    let mut from = 0;
    let mut attempts = 0;
    while from < config.keys {
        let to = (from + CHUNK).min(config.keys);
        let mut args: Vec<&[u8]> = vec![b"MSET"];
        for (name, value) in &values[from as usize..to as usize] {
            args.push(name.as_bytes());
            args.push(value);
        }
        match conn.call(&args).await {
            Ok(r) if r.is_ok() => from = to,
            Ok(r) => {
                return Err(CheckError::Server(format!(
                    "seeding the keys failed: MSET replied {}",
                    r.describe()
                )))
            }
            Err(e) => {
                attempts += 1;
                if attempts >= ATTEMPTS {
                    return Err(CheckError::Connect {
                        addr: config.addr(),
                        reason: format!("seeding the keys failed: {e}"),
                    });
                }
                *conn = connect(config).await?;
            }
        }
    }
    let end = epoch.elapsed();
    Ok(values
        .into_iter()
        .enumerate()
        .map(|(k, (_, value))| TxnRecord {
            id: TxnId {
                client: 0,
                seq: k as u64,
            },
            start,
            end,
            ops: vec![Op::Write {
                key: k as Key,
                value,
            }],
            outcome: Outcome::Committed,
        })
        .collect())
}

/// Reads every key once more, from a fresh connection.
pub(super) async fn final_state(
    config: &CheckConfig,
) -> Result<Vec<(Key, Option<Bytes>)>, CheckError> {
    const CHUNK: u32 = 500;
    let mut conn = connect(config).await?;
    let mut state = Vec::with_capacity(config.keys as usize);
    let mut from = 0;
    let mut attempts = 0;
    while from < config.keys {
        let to = (from + CHUNK).min(config.keys);
        let names: Vec<String> = (from..to).map(key_name).collect();
        let mut args: Vec<&[u8]> = vec![b"MGET"];
        args.extend(names.iter().map(|n| n.as_bytes()));
        match conn.call(&args).await {
            Ok(Reply::Array(Some(items))) if items.len() == names.len() => {
                for (k, item) in (from..to).zip(items) {
                    match item {
                        Reply::Bulk(v) => state.push((k, v)),
                        other => {
                            return Err(CheckError::Server(format!(
                                "final read: MGET returned {} for a key",
                                other.describe()
                            )))
                        }
                    }
                }
                from = to;
            }
            Ok(other) => {
                return Err(CheckError::Server(format!(
                    "final read: MGET replied {}",
                    other.describe()
                )))
            }
            Err(e) => {
                attempts += 1;
                if attempts >= ATTEMPTS {
                    return Err(CheckError::Connect {
                        addr: config.addr(),
                        reason: format!("the final read failed: {e}"),
                    });
                }
                conn = connect(config).await?;
            }
        }
    }
    Ok(state)
}

/// One transaction to run.
pub(super) struct Plan {
    pub(super) id: TxnId,
    pub(super) writes: Vec<(Key, Bytes)>,
    pub(super) reads: Vec<Key>,
    pub(super) abort: bool,
}

pub(super) fn plan(rng: &mut Rng, config: &CheckConfig, run_tag: &str, id: TxnId) -> Plan {
    let keys = config.keys;
    let mut ws: Vec<Key> = Vec::with_capacity(config.writes);
    while ws.len() < config.writes {
        let k = rng.below(u64::from(keys)) as Key;
        if !ws.contains(&k) {
            ws.push(k);
        }
    }
    let value = value_for(run_tag, id, &ws, config.value_size);
    // Each read is of one of its own writes with probability 1/2 (while some are left),
    // else of another key.
    let mut reads: Vec<Key> = Vec::with_capacity(config.reads);
    let others = keys as usize - ws.len();
    while reads.len() < config.reads {
        let own_left: Vec<Key> = ws.iter().copied().filter(|k| !reads.contains(k)).collect();
        let others_left = others - reads.iter().filter(|k| !ws.contains(k)).count();
        let pick_own = !own_left.is_empty() && (others_left == 0 || rng.below(2) == 0);
        if pick_own {
            reads.push(own_left[rng.below(own_left.len() as u64) as usize]);
        } else {
            let k = rng.below(u64::from(keys)) as Key;
            if !ws.contains(&k) && !reads.contains(&k) {
                reads.push(k);
            }
        }
    }
    Plan {
        id,
        writes: ws.into_iter().map(|k| (k, value.clone())).collect(),
        reads,
        abort: rng.chance(config.abort_rate),
    }
}

/// One client: runs transactions until the run's budget is used up.
pub(super) async fn client_loop(client: u32, shared: Arc<Shared>) -> Vec<TxnRecord> {
    let config = &shared.config;
    let mut rng = Rng::new(config.seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ u64::from(client));
    let mut records = Vec::new();
    let mut conn: Option<Connection> = None;
    let mut seq = 0u64;
    while !shared.stop.load(Ordering::Relaxed)
        && shared.tickets.fetch_add(1, Ordering::Relaxed) < config.txns
    {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match connect_to(config, config.client_addr(client)).await {
                Ok(c) => conn.insert(c),
                Err(e @ CheckError::Auth(_)) => {
                    shared.fail(e);
                    break;
                }
                Err(e) => {
                    shared.interrupted.lock().get_or_insert(format!(
                        "client {client} gave up after {:?}: {e}",
                        config.reconnect_for
                    ));
                    shared.stop.store(true, Ordering::Relaxed);
                    break;
                }
            },
        };
        seq += 1;
        let plan = plan(&mut rng, config, &shared.run_tag, TxnId { client, seq });
        let done = match config.mode {
            Mode::Plain => run_plain(c, &plan, &shared).await,
            Mode::Multi => run_multi(c, &plan, &shared).await,
            Mode::Interactive => run_interactive(c, &plan, &shared).await,
        };
        records.push(done.record);
        match done.next {
            Next::Keep => {}
            Next::Reconnect => {
                conn = None;
                shared.reconnects.fetch_add(1, Ordering::Relaxed);
            }
            Next::Fatal(e) => {
                shared.fail(e);
                break;
            }
        }
    }
    records
}

/// What to do with the connection after a transaction.
enum Next {
    Keep,
    Reconnect,
    Fatal(CheckError),
}

struct Done {
    record: TxnRecord,
    next: Next,
}

/// Builds the record of a transaction as it goes.
struct Recorder<'a> {
    shared: &'a Shared,
    id: TxnId,
    start: Duration,
    ops: Vec<Op>,
}

impl<'a> Recorder<'a> {
    fn new(shared: &'a Shared, id: TxnId) -> Recorder<'a> {
        Recorder {
            shared,
            id,
            start: shared.now(),
            ops: Vec::new(),
        }
    }

    fn write(&mut self, key: Key, value: &Bytes) {
        self.ops.push(Op::Write {
            key,
            value: value.clone(),
        });
    }

    fn read(&mut self, key: Key, value: Option<Bytes>) {
        self.ops.push(Op::Read { key, value });
    }

    fn end(self, outcome: Outcome, next: Next) -> Done {
        Done {
            record: TxnRecord {
                id: self.id,
                start: self.start,
                end: self.shared.now(),
                ops: self.ops,
                outcome,
            },
            next,
        }
    }
}

/// True if an error reply says that nothing was applied.
fn rejected(error: &str) -> bool {
    error.starts_with("CONFLICT")
        || error.starts_with("EXECABORT")
        || error.starts_with("NOAUTH")
        || error.contains("nothing was committed")
        || error.contains("nothing was applied")
}

fn unknown_command(error: &str) -> bool {
    error.starts_with("ERR unknown command")
}

/// Plain mode: every SET and GET is its own command, one round trip each.
async fn run_plain(conn: &mut Connection, plan: &Plan, shared: &Shared) -> Done {
    let mut rec = Recorder::new(shared, plan.id);
    if plan.abort && plan.writes.is_empty() {
        return rec.end(Outcome::Aborted, Next::Keep);
    }
    for (i, (key, value)) in plan.writes.iter().enumerate() {
        let name = key_name(*key);
        rec.write(*key, value);
        // Earlier writes took effect: after a failure the transaction is half done.
        let partial = if plan.abort {
            Outcome::Aborted
        } else {
            Outcome::Unknown
        };
        match conn.call(&[b"SET", name.as_bytes(), value]).await {
            Ok(r) if r.is_ok() => {}
            Ok(r) => {
                let nothing = i == 0 && r.error_text().is_some_and(|e| rejected(&e));
                let outcome = if nothing && !plan.abort {
                    Outcome::Failed
                } else {
                    partial
                };
                return rec.end(outcome, Next::Keep);
            }
            Err(_) => return rec.end(partial, Next::Reconnect),
        }
        if plan.abort {
            // Crash halfway: the first write is done, the rest never happens.
            return rec.end(Outcome::Aborted, Next::Keep);
        }
    }
    for key in &plan.reads {
        let name = key_name(*key);
        match conn.call(&[b"GET", name.as_bytes()]).await {
            Ok(Reply::Bulk(v)) => rec.read(*key, v),
            Ok(_) => return rec.end(Outcome::Unknown, Next::Reconnect),
            Err(_) => return rec.end(Outcome::Unknown, Next::Reconnect),
        }
    }
    rec.end(Outcome::Committed, Next::Keep)
}

/// Multi mode: `MULTI`, the SETs, the GETs, then `EXEC` (or `DISCARD`), in one pipeline.
async fn run_multi(conn: &mut Connection, plan: &Plan, shared: &Shared) -> Done {
    let names: Vec<(String, Key)> = plan
        .writes
        .iter()
        .map(|(k, _)| (key_name(*k), *k))
        .chain(plan.reads.iter().map(|k| (key_name(*k), *k)))
        .collect();
    let mut commands: Vec<Vec<&[u8]>> = vec![vec![b"MULTI"]];
    for ((name, _), (_, value)) in names.iter().zip(&plan.writes) {
        commands.push(vec![b"SET", name.as_bytes(), value]);
    }
    for (name, _) in &names[plan.writes.len()..] {
        commands.push(vec![b"GET", name.as_bytes()]);
    }
    let last: &[u8] = if plan.abort { b"DISCARD" } else { b"EXEC" };
    commands.push(vec![last]);

    let mut rec = Recorder::new(shared, plan.id);
    for (key, value) in &plan.writes {
        rec.write(*key, value);
    }
    // Whatever happens from here, an aborted transaction never sent EXEC.
    let lost = if plan.abort {
        Outcome::Aborted
    } else {
        Outcome::Unknown
    };
    if conn.send(&commands).await.is_err() {
        return rec.end(lost, Next::Reconnect);
    }
    let mut replies = Vec::with_capacity(commands.len());
    for _ in 0..commands.len() {
        match conn.read_reply().await {
            Ok(r) => replies.push(r),
            Err(_) => return rec.end(lost, Next::Reconnect),
        }
    }
    let queued = replies[0].is_ok()
        && replies[1..replies.len() - 1]
            .iter()
            .all(|r| r.is_status("QUEUED"));
    if !replies[0].is_ok() {
        // Without MULTI the commands ran one by one: nobody knows what happened.
        return rec.end(Outcome::Unknown, Next::Reconnect);
    }
    let final_reply = &replies[replies.len() - 1];
    if plan.abort {
        let next = if final_reply.is_ok() {
            Next::Keep
        } else {
            Next::Reconnect
        };
        return rec.end(Outcome::Aborted, next);
    }
    match final_reply {
        Reply::Array(Some(items)) if queued && items.len() == names.len() => {
            let (sets, gets) = items.split_at(plan.writes.len());
            if !sets.iter().all(Reply::is_ok) {
                return rec.end(Outcome::Unknown, Next::Keep);
            }
            let mut values = Vec::with_capacity(gets.len());
            for g in gets {
                match g {
                    Reply::Bulk(v) => values.push(v.clone()),
                    _ => return rec.end(Outcome::Unknown, Next::Keep),
                }
            }
            for (key, v) in plan.reads.iter().zip(values) {
                rec.read(*key, v);
            }
            rec.end(Outcome::Committed, Next::Keep)
        }
        // A watch failure (we watch nothing, but a server may say so): not applied.
        Reply::Array(None) => rec.end(Outcome::Failed, Next::Keep),
        Reply::Error(e) if rejected(&String::from_utf8_lossy(e)) => {
            rec.end(Outcome::Failed, Next::Keep)
        }
        Reply::Error(_) => rec.end(Outcome::Unknown, Next::Keep),
        _ => rec.end(Outcome::Unknown, Next::Reconnect),
    }
}

/// Interactive mode: `AFT.BEGIN`, SETs and GETs one at a time, `AFT.COMMIT` or
/// `AFT.ABORT`.
async fn run_interactive(conn: &mut Connection, plan: &Plan, shared: &Shared) -> Done {
    let mut rec = Recorder::new(shared, plan.id);
    // Until the commit is sent nothing can be visible: the server drops the transaction
    // of a vanished client.
    let not_sent = if plan.abort {
        Outcome::Aborted
    } else {
        Outcome::Failed
    };
    match conn.call(&[b"AFT.BEGIN"]).await {
        Ok(Reply::Bulk(Some(_)) | Reply::Status(_)) => {}
        Ok(Reply::Error(e)) if unknown_command(&String::from_utf8_lossy(&e)) => {
            let e = CheckError::Unsupported(format!(
                "the server stopped supporting interactive transactions: AFT.BEGIN replied {}",
                String::from_utf8_lossy(&e)
            ));
            return rec.end(not_sent, Next::Fatal(e));
        }
        Ok(Reply::Error(_)) => return rec.end(not_sent, Next::Keep),
        Ok(_) | Err(_) => return rec.end(not_sent, Next::Reconnect),
    }
    for (key, value) in &plan.writes {
        let name = key_name(*key);
        rec.write(*key, value);
        match conn.call(&[b"SET", name.as_bytes(), value]).await {
            Ok(r) if r.is_ok() => {}
            Ok(Reply::Error(_)) => return abort(conn, rec, not_sent).await,
            Ok(_) | Err(_) => return rec.end(not_sent, Next::Reconnect),
        }
    }
    for key in &plan.reads {
        let name = key_name(*key);
        match conn.call(&[b"GET", name.as_bytes()]).await {
            Ok(Reply::Bulk(v)) => rec.read(*key, v),
            Ok(Reply::Error(_)) => return abort(conn, rec, not_sent).await,
            Ok(_) | Err(_) => return rec.end(not_sent, Next::Reconnect),
        }
    }
    if plan.abort {
        return abort(conn, rec, Outcome::Aborted).await;
    }
    match conn.call(&[b"AFT.COMMIT"]).await {
        Ok(r) if r.is_ok() => rec.end(Outcome::Committed, Next::Keep),
        Ok(Reply::Error(e)) if rejected(&String::from_utf8_lossy(&e)) => {
            rec.end(Outcome::Failed, Next::Keep)
        }
        Ok(Reply::Error(_)) => rec.end(Outcome::Unknown, Next::Keep),
        Ok(_) | Err(_) => rec.end(Outcome::Unknown, Next::Reconnect),
    }
}

/// Sends `AFT.ABORT` and ends the transaction with `outcome` (it never committed).
async fn abort(conn: &mut Connection, rec: Recorder<'_>, outcome: Outcome) -> Done {
    match conn.call(&[b"AFT.ABORT"]).await {
        Ok(Reply::Status(_) | Reply::Error(_)) => rec.end(outcome, Next::Keep),
        Ok(_) | Err(_) => rec.end(outcome, Next::Reconnect),
    }
}

/// Seeded choices of the workload.
pub(super) struct Rng(SmallRng);

impl Rng {
    pub(super) fn new(seed: u64) -> Rng {
        Rng(SmallRng::seed_from_u64(seed))
    }

    fn next(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Uniform in `0..n` (0 when `n == 0`).
    pub(super) fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.0.gen_range(0..n)
        }
    }

    /// True with probability `p` (clamped to `[0, 1]`).
    pub(super) fn chance(&mut self, p: f64) -> bool {
        self.0.gen_bool(p.clamp(0.0, 1.0))
    }
}
