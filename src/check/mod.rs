//! `aft check`: a Jepsen-style anomaly checker for any RESP server (aft, Redis, …).
//!
//! [`run`] seeds every key, then drives concurrent transactions in the style of the AFT
//! paper's benchmark (a few writes, then a few reads, some of them of its own writes),
//! records a [`history::History`] (who wrote what, who read what, when, and how each
//! transaction ended), reads every key once more after the run, and analyzes the history
//! for fractured reads, read-your-writes violations, dirty reads and lost acknowledged
//! writes (protocol.md §2). Clients survive a server that drops connections or restarts:
//! they reconnect and mark the transaction in flight as unknown.
//!
//! The checker assumes it is alone on its keys (`aft-check:k<n>`): another writer of
//! those keys during the run shows up as unexplained values.

pub mod client;
pub mod history;

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::Mutex;

use client::{Connection, Reply};
use history::{key_name, value_for, Example, History, Key, Op, Outcome, TxnId, TxnRecord};

/// How transactions are sent.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// No transaction: each SET and GET is its own command, as an application that uses
    /// Redis without transactions does. An aborted transaction stops after its first write,
    /// as if it crashed halfway.
    Plain,
    /// Writes and reads in one `MULTI … EXEC`; an aborted one sends `DISCARD`.
    Multi,
    /// aft's interactive transactions: `AFT.BEGIN`, SETs and GETs one at a time,
    /// `AFT.COMMIT` (or `AFT.ABORT`).
    Interactive,
}

impl Mode {
    /// Its name on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Plain => "plain",
            Mode::Multi => "multi",
            Mode::Interactive => "interactive",
        }
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Mode {
    type Err = String;

    fn from_str(s: &str) -> Result<Mode, String> {
        match s.to_ascii_lowercase().as_str() {
            "plain" => Ok(Mode::Plain),
            "multi" => Ok(Mode::Multi),
            "interactive" => Ok(Mode::Interactive),
            _ => Err(format!(
                "unknown mode {s:?} (expected plain, multi or interactive)"
            )),
        }
    }
}

/// What to run and against which server.
#[derive(Clone, Debug)]
pub struct CheckConfig {
    /// Server host name or address.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Password sent with `AUTH` on every connection.
    pub password: Option<String>,
    /// How transactions are sent.
    pub mode: Mode,
    /// Concurrent clients, one connection each.
    pub clients: usize,
    /// Transactions to run, in total over all clients.
    pub txns: u64,
    /// Size of the key space.
    pub keys: u32,
    /// Distinct keys each transaction writes.
    pub writes: usize,
    /// Distinct keys each transaction reads (after its writes).
    pub reads: usize,
    /// Values are padded to this many bytes.
    pub value_size: usize,
    /// Fraction of transactions aborted on purpose, in `[0, 1]`.
    pub abort_rate: f64,
    /// Seed of the workload's random choices (the interleaving is up to the server).
    pub seed: u64,
    /// How long a client keeps trying to (re)connect before it gives up.
    pub reconnect_for: Duration,
    /// How long to wait for any one reply.
    pub timeout: Duration,
    /// Examples kept per anomaly kind.
    pub max_examples: usize,
}

impl Default for CheckConfig {
    fn default() -> Self {
        CheckConfig {
            host: "127.0.0.1".to_string(),
            port: 7379,
            password: None,
            mode: Mode::Multi,
            clients: 8,
            txns: 10_000,
            keys: 100,
            writes: 2,
            reads: 4,
            value_size: 32,
            abort_rate: 0.05,
            seed: 1,
            reconnect_for: Duration::from_secs(5),
            timeout: Duration::from_secs(5),
            max_examples: 3,
        }
    }
}

impl CheckConfig {
    /// `host:port` (IPv6 literals in brackets).
    pub fn addr(&self) -> String {
        if self.host.contains(':') && !self.host.starts_with('[') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    fn validate(&self) -> Result<(), CheckError> {
        let bad = |m: String| Err(CheckError::Config(m));
        if self.clients == 0 {
            return bad("--clients must be at least 1".into());
        }
        if self.keys == 0 {
            return bad("--keys must be at least 1".into());
        }
        if self.writes == 0 && self.reads == 0 {
            return bad("a transaction needs at least one write or read".into());
        }
        if self.writes > self.keys as usize || self.reads > self.keys as usize {
            return bad(format!(
                "--writes ({}) and --reads ({}) must not exceed --keys ({})",
                self.writes, self.reads, self.keys
            ));
        }
        if !(0.0..=1.0).contains(&self.abort_rate) {
            return bad(format!(
                "--abort-rate must be between 0 and 1, not {}",
                self.abort_rate
            ));
        }
        if self.timeout.is_zero() {
            return bad("the reply timeout must be positive".into());
        }
        Ok(())
    }
}

/// Why a check could not run (as opposed to finding anomalies).
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The configuration makes no sense.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The server could not be reached within the reconnect time.
    #[error("cannot connect to {addr}: {reason}")]
    Connect {
        /// The address tried.
        addr: String,
        /// The last error.
        reason: String,
    },
    /// AUTH was refused.
    #[error("authentication failed: {0}")]
    Auth(String),
    /// The server does not have the commands the mode needs.
    #[error("{0}")]
    Unsupported(String),
    /// The server replied something that stops the check (e.g. seeding was refused).
    #[error("{0}")]
    Server(String),
}

/// The outcome of a check: what ran, and which anomalies were found.
#[derive(Clone, Debug)]
pub struct Report {
    /// How transactions were sent.
    pub mode: Mode,
    /// The server checked.
    pub addr: String,
    /// Concurrent clients.
    pub clients: usize,
    /// Size of the key space.
    pub keys: u32,
    /// Writes per transaction.
    pub writes: usize,
    /// Reads per transaction.
    pub reads: usize,
    /// The workload seed.
    pub seed: u64,
    /// Transactions run (seeding excluded).
    pub transactions: u64,
    /// Transactions acknowledged as committed.
    pub committed: u64,
    /// Transactions aborted on purpose.
    pub aborted: u64,
    /// Transactions that definitely did not commit (an error, or a connection lost before
    /// the commit was sent).
    pub failed: u64,
    /// Transactions whose outcome is unknown (connection lost after the commit was sent).
    pub unknown: u64,
    /// Connections lost and re-established during the run.
    pub reconnects: u64,
    /// Duration of the measured run.
    pub elapsed: Duration,
    /// Committed transactions per second over the measured run.
    pub throughput: f64,
    /// Transactions with a fractured read.
    pub fractured_reads: u64,
    /// Transactions that did not read their own writes.
    pub read_your_writes: u64,
    /// Transactions (and final-state keys) that read a never-committed value.
    pub dirty_reads: u64,
    /// Keys whose final state lost an acknowledged write.
    pub lost_writes: u64,
    /// Reads of values that no transaction of this run wrote to that key.
    pub unexplained_values: u64,
    /// A few examples of each anomaly kind.
    pub examples: Vec<Example>,
    /// Why the run stopped early (a client could not reconnect in time), if it did.
    pub interrupted: Option<String>,
    /// Why the final read failed, if it did (lost writes were then not checked).
    pub final_read_error: Option<String>,
    /// The full history, for further inspection.
    pub history: History,
}

impl Report {
    /// All anomalies found.
    pub fn anomalies(&self) -> u64 {
        self.fractured_reads
            + self.read_your_writes
            + self.dirty_reads
            + self.lost_writes
            + self.unexplained_values
    }

    /// True if the run completed, the final state was checked, and nothing was found.
    pub fn is_clean(&self) -> bool {
        self.anomalies() == 0 && self.interrupted.is_none() && self.final_read_error.is_none()
    }

    fn anomaly_rows(&self) -> [(&'static str, &'static str, u64); 5] {
        [
            ("fractured_reads", "fractured reads", self.fractured_reads),
            (
                "read_your_writes",
                "read-your-writes violations",
                self.read_your_writes,
            ),
            ("dirty_reads", "dirty reads", self.dirty_reads),
            ("lost_writes", "lost acknowledged writes", self.lost_writes),
            (
                "unexplained_values",
                "unexplained values",
                self.unexplained_values,
            ),
        ]
    }

    /// The report as one JSON object.
    pub fn to_json(&self) -> String {
        let opt = |v: &Option<String>| v.as_deref().map_or("null".to_string(), json_string);
        let mut s = format!(
            "{{\"mode\":{},\"addr\":{},\"clients\":{},\"keys\":{},\"writes\":{},\"reads\":{},\
             \"seed\":{},\"transactions\":{},\"committed\":{},\"aborted\":{},\"failed\":{},\
             \"unknown\":{},\"reconnects\":{},\"elapsed_s\":{:.3},\"throughput\":{:.1}",
            json_string(self.mode.name()),
            json_string(&self.addr),
            self.clients,
            self.keys,
            self.writes,
            self.reads,
            self.seed,
            self.transactions,
            self.committed,
            self.aborted,
            self.failed,
            self.unknown,
            self.reconnects,
            self.elapsed.as_secs_f64(),
            self.throughput,
        );
        for (name, _, n) in self.anomaly_rows() {
            s.push_str(&format!(",\"{name}\":{n}"));
        }
        s.push_str(&format!(",\"anomalies\":{}", self.anomalies()));
        let examples: Vec<String> = self
            .examples
            .iter()
            .map(|e| {
                format!(
                    "{{\"kind\":{},\"text\":{}}}",
                    json_string(e.kind.name()),
                    json_string(&e.text)
                )
            })
            .collect();
        s.push_str(&format!(
            ",\"examples\":[{}],\"interrupted\":{},\"final_read_error\":{}}}",
            examples.join(","),
            opt(&self.interrupted),
            opt(&self.final_read_error)
        ));
        s
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "aft check: {} mode against {}, {} clients, {} keys, {} writes + {} reads per \
             transaction, seed {}",
            self.mode, self.addr, self.clients, self.keys, self.writes, self.reads, self.seed
        )?;
        writeln!(
            f,
            "transactions: {} run, {} committed, {} aborted on purpose, {} failed, {} unknown \
             ({} reconnects)",
            self.transactions,
            self.committed,
            self.aborted,
            self.failed,
            self.unknown,
            self.reconnects
        )?;
        writeln!(
            f,
            "throughput:   {:.0} committed txn/s over {:.2} s",
            self.throughput,
            self.elapsed.as_secs_f64()
        )?;
        writeln!(f, "anomalies:                      count  per 10,000 txns")?;
        for (_, label, n) in self.anomaly_rows() {
            let rate = if self.transactions == 0 {
                0.0
            } else {
                n as f64 * 10_000.0 / self.transactions as f64
            };
            writeln!(f, "  {label:<28} {n:>6}  {rate:>8.1}")?;
        }
        for e in &self.examples {
            writeln!(f, "  e.g. {}: {}", e.kind.name(), e.text)?;
        }
        if let Some(why) = &self.interrupted {
            writeln!(f, "interrupted: {why}")?;
        }
        if let Some(why) = &self.final_read_error {
            writeln!(f, "lost writes NOT checked: the final read failed: {why}")?;
        }
        let verdict = if self.anomalies() > 0 {
            format!("{} ANOMALIES FOUND", self.anomalies())
        } else if self.is_clean() {
            "no anomaly found".to_string()
        } else {
            "no anomaly found, but the check is incomplete".to_string()
        };
        write!(f, "result: {verdict}")
    }
}

fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Runs a check: seed every key, drive `config.txns` transactions from `config.clients`
/// concurrent clients, read the final state and analyze the history.
///
/// Anomalies are part of the [`Report`]; an `Err` means the check itself could not run
/// (bad configuration, unreachable server, refused AUTH, missing commands).
pub async fn run(config: CheckConfig) -> Result<Report, CheckError> {
    config.validate()?;
    let epoch = Instant::now();
    let run_tag = run_tag(config.seed);
    let mut history = History::default();

    // Seed every key, so that nil is never a legitimate read.
    let mut conn = connect(&config).await?;
    if config.mode == Mode::Interactive {
        probe_interactive(&mut conn, &config).await?;
    }
    history
        .txns
        .extend(seed(&mut conn, &config, &run_tag, epoch).await?);
    drop(conn);

    let shared = Arc::new(Shared {
        config: config.clone(),
        run_tag,
        epoch,
        tickets: AtomicU64::new(0),
        stop: AtomicBool::new(false),
        reconnects: AtomicU64::new(0),
        fatal: Mutex::new(None),
        interrupted: Mutex::new(None),
    });
    let started = epoch.elapsed();
    let tasks: Vec<_> = (1..=config.clients)
        .map(|c| tokio::spawn(client_loop(c as u32, Arc::clone(&shared))))
        .collect();
    for task in tasks {
        match task.await {
            Ok(records) => history.txns.extend(records),
            Err(e) => {
                return Err(CheckError::Server(format!("a client task failed: {e}")));
            }
        }
    }
    let elapsed = epoch.elapsed().saturating_sub(started);
    if let Some(fatal) = shared.fatal.lock().take() {
        return Err(fatal);
    }

    let final_read_error = match final_state(&config).await {
        Ok(state) => {
            history.final_state = Some(state);
            None
        }
        Err(e) => Some(e.to_string()),
    };

    let found = history::analyze(&history, config.max_examples);
    let measured = || history.txns.iter().filter(|t| t.id.client != 0);
    let count = |o: Outcome| measured().filter(|t| t.outcome == o).count() as u64;
    let transactions = measured().count() as u64;
    let (committed, aborted, failed, unknown) = (
        count(Outcome::Committed),
        count(Outcome::Aborted),
        count(Outcome::Failed),
        count(Outcome::Unknown),
    );
    let interrupted = shared.interrupted.lock().take();
    Ok(Report {
        mode: config.mode,
        addr: config.addr(),
        clients: config.clients,
        keys: config.keys,
        writes: config.writes,
        reads: config.reads,
        seed: config.seed,
        transactions,
        committed,
        aborted,
        failed,
        unknown,
        reconnects: shared.reconnects.load(Ordering::Relaxed),
        elapsed,
        throughput: committed as f64 / elapsed.as_secs_f64().max(1e-9),
        fractured_reads: found.fractured_reads,
        read_your_writes: found.read_your_writes,
        dirty_reads: found.dirty_reads,
        lost_writes: found.lost_writes,
        unexplained_values: found.unexplained_values,
        examples: found.examples,
        interrupted,
        final_read_error,
        history,
    })
}

/// A short tag that differs between runs, so values an earlier run left are never taken
/// for this run's.
fn run_tag(seed: u64) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or_default();
    let mut rng = Rng::new(seed ^ nanos ^ (u64::from(std::process::id()) << 32));
    format!("{:06x}", rng.next() & 0xff_ffff)
}

/// State shared by the clients of a run.
struct Shared {
    config: CheckConfig,
    run_tag: String,
    epoch: Instant,
    tickets: AtomicU64,
    stop: AtomicBool,
    reconnects: AtomicU64,
    /// An error that ends the whole check.
    fatal: Mutex<Option<CheckError>>,
    /// Why clients stopped early.
    interrupted: Mutex<Option<String>>,
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

/// Connects and authenticates, retrying with a short backoff for `reconnect_for`.
async fn connect(config: &CheckConfig) -> Result<Connection, CheckError> {
    let addr = config.addr();
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
async fn probe_interactive(conn: &mut Connection, config: &CheckConfig) -> Result<(), CheckError> {
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
async fn seed(
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
async fn final_state(config: &CheckConfig) -> Result<Vec<(Key, Option<Bytes>)>, CheckError> {
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
struct Plan {
    id: TxnId,
    writes: Vec<(Key, Bytes)>,
    reads: Vec<Key>,
    abort: bool,
}

fn plan(rng: &mut Rng, config: &CheckConfig, run_tag: &str, id: TxnId) -> Plan {
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
async fn client_loop(client: u32, shared: Arc<Shared>) -> Vec<TxnRecord> {
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
            None => match connect(config).await {
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

/// A small, fast, seedable generator (SplitMix64): the workload needs no better.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`; 0 when `n == 0`).
    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            ((u128::from(self.next()) * u128::from(n)) >> 64) as u64
        }
    }

    /// True with probability `p`.
    fn chance(&mut self, p: f64) -> bool {
        ((self.next() >> 11) as f64 / (1u64 << 53) as f64) < p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plans_write_distinct_keys_and_read_some_of_them() {
        let config = CheckConfig {
            keys: 6,
            writes: 2,
            reads: 4,
            ..CheckConfig::default()
        };
        let mut rng = Rng::new(7);
        let mut own_reads = 0;
        for seq in 0..200 {
            let p = plan(&mut rng, &config, "x", TxnId { client: 1, seq });
            let ws: Vec<Key> = p.writes.iter().map(|(k, _)| *k).collect();
            assert_eq!(ws.len(), 2);
            assert_ne!(ws[0], ws[1]);
            assert_eq!(p.reads.len(), 4);
            let mut r = p.reads.clone();
            r.sort_unstable();
            r.dedup();
            assert_eq!(r.len(), 4, "reads are distinct");
            assert!(p.reads.iter().all(|&k| k < 6));
            own_reads += p.reads.iter().filter(|k| ws.contains(k)).count();
        }
        assert!(own_reads > 100 && own_reads < 400, "{own_reads}");
        // Every key read, the whole key space.
        let all = CheckConfig {
            keys: 3,
            writes: 3,
            reads: 3,
            ..CheckConfig::default()
        };
        let p = plan(&mut rng, &all, "x", TxnId { client: 1, seq: 1 });
        assert_eq!(p.reads.len(), 3);
    }

    #[test]
    fn modes_parse() {
        assert_eq!("plain".parse::<Mode>(), Ok(Mode::Plain));
        assert_eq!("MULTI".parse::<Mode>(), Ok(Mode::Multi));
        assert_eq!("interactive".parse::<Mode>(), Ok(Mode::Interactive));
        assert!("serializable".parse::<Mode>().is_err());
    }

    #[test]
    fn invalid_configurations_are_refused() {
        for config in [
            CheckConfig {
                clients: 0,
                ..CheckConfig::default()
            },
            CheckConfig {
                keys: 3,
                writes: 4,
                ..CheckConfig::default()
            },
            CheckConfig {
                abort_rate: 1.5,
                ..CheckConfig::default()
            },
        ] {
            assert!(matches!(config.validate(), Err(CheckError::Config(_))));
        }
        assert!(CheckConfig::default().validate().is_ok());
    }

    #[test]
    fn json_strings_are_escaped() {
        assert_eq!(json_string("a\"b\\c\n\u{1}"), "\"a\\\"b\\\\c\\n\\u0001\"");
    }

    #[test]
    fn rng_is_uniform_enough() {
        let mut rng = Rng::new(1);
        let mut counts = [0u32; 4];
        for _ in 0..4000 {
            counts[rng.below(4) as usize] += 1;
        }
        assert!(counts.iter().all(|&c| c > 800), "{counts:?}");
        let hits = (0..10_000).filter(|_| rng.chance(0.05)).count();
        assert!((300..700).contains(&hits), "{hits}");
    }
}
