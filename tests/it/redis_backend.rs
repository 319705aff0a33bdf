//! The real binary on the Redis backend:
//!
//! * Redis (`appendonly yes`, `appendfsync always`) is killed with SIGKILL and restarted on
//!   the same port and directory while clients run MULTI/EXEC transactions through aft: while
//!   it is down, clients get clear error replies; afterwards aft reconnects by itself; no
//!   acknowledged commit is lost and no read is fractured, neither through the running aft
//!   nor through a new aft that recovers from Redis.
//! * Two aft processes share one Redis: each sees the other's commits once it restarts.
//! * A commit is one round trip to a standalone Redis: one `EVALSHA` per transaction.
//! * A commit whose reply is lost (Redis stalls past aft's timeout, then applies it) is not
//!   forgotten: it becomes visible, and read-modify-writes after it count from it.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;

use crate::harness::{query, Process, RedisServer};

const WRITERS: usize = 4;
const READERS: usize = 2;

async fn connect(addr: std::net::SocketAddr) -> MultiplexedConnection {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(20)));
    redis::Client::open(format!("redis://{addr}/"))
        .expect("client")
        .get_multiplexed_async_connection_with_config(&config)
        .await
        .expect("connect to aft")
}

fn keys(w: usize) -> (String, String) {
    (format!("rb:{w}:a"), format!("rb:{w}:b"))
}

/// What the clients saw.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    /// Per writer: the last value acknowledged, and the last one sent.
    acked: Vec<AtomicU64>,
    sent: Vec<AtomicU64>,
    commits: AtomicU64,
    errors: Mutex<Vec<String>>,
    fractured: Mutex<Vec<String>>,
}

fn is_clear_storage_error(message: &str) -> bool {
    message.contains("backend unavailable") || message.contains("commit outcome unknown")
}

/// Sets both of its keys to 1, 2, 3… in one MULTI/EXEC each, until told to stop.
async fn writer(w: usize, addr: std::net::SocketAddr, shared: Arc<Shared>) {
    let mut con = connect(addr).await;
    let (a, b) = keys(w);
    let mut n = 0u64;
    while !shared.stop.load(Ordering::SeqCst) {
        n += 1;
        shared.sent[w].store(n, Ordering::SeqCst);
        let reply = exec(
            &mut con,
            redis::pipe()
                .cmd("SET")
                .arg(&a)
                .arg(n)
                .cmd("SET")
                .arg(&b)
                .arg(n),
        )
        .await;
        match exec_ok(reply) {
            Ok(()) => {
                shared.acked[w].store(n, Ordering::SeqCst);
                shared.commits.fetch_add(1, Ordering::SeqCst);
            }
            Err(e) => {
                shared.errors.lock().push(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// Sends `commands` between MULTI and EXEC, in one round trip; EXEC's reply.
async fn exec(
    con: &mut MultiplexedConnection,
    commands: &mut redis::Pipeline,
) -> redis::RedisResult<redis::Value> {
    let mut pipe = redis::pipe();
    pipe.cmd("MULTI");
    for command in commands.cmd_iter() {
        pipe.add_command(command.clone());
    }
    pipe.cmd("EXEC");
    let mut replies: Vec<redis::Value> = pipe.query_async(con).await?;
    Ok(replies.pop().unwrap_or(redis::Value::Nil))
}

/// `Ok` if every command of an EXEC reply replied OK, else the first error.
fn exec_ok(reply: redis::RedisResult<redis::Value>) -> Result<(), String> {
    match reply.map_err(|e| e.to_string())? {
        redis::Value::ServerError(e) => Err(e.to_string()),
        redis::Value::Array(items) => items.into_iter().try_for_each(|item| match item {
            redis::Value::Okay => Ok(()),
            redis::Value::ServerError(e) => Err(e.to_string()),
            other => Err(format!("unexpected reply {other:?}")),
        }),
        other => Err(format!("unexpected EXEC reply {other:?}")),
    }
}

/// Reads both keys of a writer in one MULTI/EXEC: they must be equal (the writer always sets
/// both), and at least what was acknowledged before the read began.
async fn reader(r: usize, addr: std::net::SocketAddr, shared: Arc<Shared>) {
    let mut con = connect(addr).await;
    let mut i = r;
    while !shared.stop.load(Ordering::SeqCst) {
        i += 1;
        let w = i % WRITERS;
        let (a, b) = keys(w);
        let acked = shared.acked[w].load(Ordering::SeqCst);
        let reply = exec(
            &mut con,
            redis::pipe().cmd("GET").arg(&a).cmd("GET").arg(&b),
        )
        .await;
        match exec_values(reply) {
            Ok(values) => {
                let (va, vb) = (values[0], values[1]);
                if va != vb || va.unwrap_or(0) < acked {
                    shared.fractured.lock().push(format!(
                        "writer {w}: read a={va:?} b={vb:?} after {acked} was acknowledged"
                    ));
                }
            }
            Err(e) => {
                shared.errors.lock().push(e);
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    }
}

/// The integers (or nils) of an EXEC reply of GETs, or the error it holds (a command's read
/// failed: its error is in the reply's array).
fn exec_values(reply: redis::RedisResult<redis::Value>) -> Result<Vec<Option<u64>>, String> {
    let items = match reply.map_err(|e| e.to_string())? {
        redis::Value::Array(items) => items,
        redis::Value::ServerError(e) => return Err(e.to_string()),
        other => return Err(format!("unexpected EXEC reply {other:?}")),
    };
    items
        .into_iter()
        .map(|item| match item {
            redis::Value::ServerError(e) => Err(e.to_string()),
            other => redis::from_redis_value(other).map_err(|e| e.to_string()),
        })
        .collect()
}

/// Every writer's keys, read through `addr` in one transaction: equal, and between the last
/// acknowledged and the last sent value.
async fn check_final_state(addr: std::net::SocketAddr, shared: &Shared, what: &str) {
    let mut con = connect(addr).await;
    for w in 0..WRITERS {
        let (a, b) = keys(w);
        let (va, vb): (Option<u64>, Option<u64>) = redis::pipe()
            .atomic()
            .get(&a)
            .get(&b)
            .query_async(&mut con)
            .await
            .unwrap_or_else(|e| panic!("{what}: final read failed: {e}"));
        let acked = shared.acked[w].load(Ordering::SeqCst);
        let sent = shared.sent[w].load(Ordering::SeqCst);
        assert_eq!(va, vb, "{what}: writer {w}'s keys differ");
        let v = va.unwrap_or(0);
        assert!(
            v >= acked && v <= sent,
            "{what}: writer {w} shows {v}, acknowledged {acked}, sent {sent}"
        );
    }
}

/// Commits acknowledged during the next `period`.
async fn commits_within(shared: &Shared, period: Duration) -> u64 {
    let before = shared.commits.load(Ordering::SeqCst);
    tokio::time::sleep(period).await;
    shared.commits.load(Ordering::SeqCst) - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_killed_and_restarted_under_load_loses_and_fractures_nothing() {
    let mut redis = tokio::task::spawn_blocking(RedisServer::durable)
        .await
        .expect("start redis");
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("redis://127.0.0.1:{}?timeout_ms=1000", redis.port);
    let aft = Process::spawn(dir.path(), &["--backend", &url]);
    let addr = aft.addr;

    let shared = Arc::new(Shared {
        acked: (0..WRITERS).map(|_| AtomicU64::new(0)).collect(),
        sent: (0..WRITERS).map(|_| AtomicU64::new(0)).collect(),
        ..Shared::default()
    });
    let mut tasks = Vec::new();
    for w in 0..WRITERS {
        tasks.push(tokio::spawn(writer(w, addr, shared.clone())));
    }
    for r in 0..READERS {
        tasks.push(tokio::spawn(reader(r, addr, shared.clone())));
    }

    let mut commits_while_up = Vec::new();
    for round in 0..2 {
        commits_while_up.push(commits_within(&shared, Duration::from_millis(500)).await);
        redis = tokio::task::spawn_blocking(move || {
            redis.kill();
            redis
        })
        .await
        .expect("kill redis");
        // A request caught in flight fails after the timeout (1 s), later ones at once.
        let errors_before = shared.errors.lock().len();
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(
            shared.errors.lock().len() > errors_before,
            "round {round}: no client saw an error while Redis was down"
        );
        redis = tokio::task::spawn_blocking(move || {
            redis.restart();
            redis
        })
        .await
        .expect("restart redis");
        // aft reconnects by itself.
        let deadline = Instant::now() + Duration::from_secs(10);
        let before = shared.commits.load(Ordering::SeqCst);
        while shared.commits.load(Ordering::SeqCst) == before {
            assert!(
                Instant::now() < deadline,
                "round {round}: no commit within 10 s of Redis's restart"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    commits_while_up.push(commits_within(&shared, Duration::from_millis(500)).await);
    shared.stop.store(true, Ordering::SeqCst);
    for task in tasks {
        task.await.expect("client task");
    }

    let errors = shared.errors.lock().clone();
    let unclear: Vec<&String> = errors
        .iter()
        .filter(|e| !is_clear_storage_error(e))
        .collect();
    assert!(
        unclear.is_empty(),
        "unclear errors: {:?}",
        &unclear[..unclear.len().min(5)]
    );
    let fractured = shared.fractured.lock().clone();
    assert!(
        fractured.is_empty(),
        "anomalies: {:?}",
        &fractured[..fractured.len().min(5)]
    );
    assert!(
        commits_while_up.iter().all(|n| *n > 0),
        "commits per period with Redis up: {commits_while_up:?}"
    );
    eprintln!(
        "commits with Redis up, per period: {commits_while_up:?}; errors while down: {}",
        errors.len()
    );

    check_final_state(addr, &shared, "running aft").await;
    // Everything acknowledged is in Redis: a new aft recovers it.
    aft.kill9();
    let aft = Process::spawn(dir.path(), &["--backend", &url]);
    check_final_state(aft.addr, &shared, "restarted aft").await;
    drop(aft);
    drop(redis);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_aft_processes_see_each_others_commits_after_a_restart() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("start redis");
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let spawn = |dir: &std::path::Path| Process::spawn(dir, &["--backend", &url]);
    let a = spawn(dir_a.path());
    let b = spawn(dir_b.path());

    let mut con_a = connect(a.addr).await;
    let _: () = redis::cmd("MSET")
        .arg(&["shared:x", "from-a", "shared:y", "from-a"])
        .query_async(&mut con_a)
        .await
        .unwrap();

    // B learns A's commits from Redis when it restarts.
    b.terminate();
    let b = spawn(dir_b.path());
    let mut con_b = connect(b.addr).await;
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&["shared:x", "shared:y"])
        .query_async(&mut con_b)
        .await
        .unwrap();
    assert_eq!(got, vec![Some("from-a".into()), Some("from-a".into())]);

    // B's later commit wins over A's (its clock moved past what it recovered), and A sees it
    // after its own restart.
    let _: () = redis::cmd("SET")
        .arg(&["shared:x", "from-b"])
        .query_async(&mut con_b)
        .await
        .unwrap();
    a.kill9();
    let a = spawn(dir_a.path());
    let mut con_a = connect(a.addr).await;
    let got: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&["shared:x", "shared:y"])
        .query_async(&mut con_a)
        .await
        .unwrap();
    assert_eq!(got, vec![Some("from-b".into()), Some("from-a".into())]);
    drop((a, b, redis));
}

/// `calls` of a command in Redis's `INFO commandstats`.
fn command_calls(redis: &RedisServer, command: &str) -> u64 {
    redis
        .cli(&["info", "commandstats"])
        .lines()
        .find_map(|line| line.strip_prefix(&format!("cmdstat_{command}:calls=")))
        .and_then(|rest| rest.split(',').next())
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_commit_is_one_evalsha_on_standalone_redis() {
    let redis = tokio::task::spawn_blocking(RedisServer::start)
        .await
        .expect("start redis");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://127.0.0.1:{}", redis.port);
    let aft = Process::spawn(dir.path(), &["--backend", &url]);
    let mut con = connect(aft.addr).await;
    let _: () = redis::cmd("SET")
        .arg(&["warm", "v"])
        .query_async(&mut con)
        .await
        .unwrap();
    let seq = || -> u64 {
        redis
            .cli(&["get", "aft:{aft:}seq"])
            .trim()
            .parse()
            .expect("the log's position")
    };
    redis.cli(&["config", "resetstat"]);
    let before = seq();
    const COMMITS: u64 = 40;
    for i in 0..COMMITS / 2 {
        let _: () = redis::cmd("SET")
            .arg(&[format!("one:{i}"), "v".into()])
            .query_async(&mut con)
            .await
            .unwrap();
        let _: () = redis::pipe()
            .atomic()
            .set(format!("two:{i}:a"), "v")
            .ignore()
            .set(format!("two:{i}:b"), "v")
            .ignore()
            .query_async(&mut con)
            .await
            .unwrap();
    }
    assert_eq!(seq() - before, COMMITS, "one record per commit");
    // One script per commit. A node alone reads no log before its transactions (nobody
    // else commits); its lease renewal (once a second) may fall in the window.
    let scripts = command_calls(&redis, "evalsha");
    assert!(
        (COMMITS..=COMMITS + 1).contains(&scripts),
        "{scripts} scripts for {COMMITS} commits"
    );
    assert_eq!(command_calls(&redis, "eval"), 0);
    assert_eq!(command_calls(&redis, "mset"), 0);
    drop((aft, redis));
}

/// Stalls the Redis server on `port` for `secs` seconds (`DEBUG SLEEP`), from a thread.
fn stall(port: u16, secs: &str) -> std::thread::JoinHandle<()> {
    let secs = secs.to_string();
    let handle = std::thread::spawn(move || {
        aft::storage::testkit::redis_server::cli(port, &["debug", "sleep", &secs]);
    });
    // Let the command reach Redis before the caller sends its own.
    std::thread::sleep(Duration::from_millis(150));
    handle
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_applied_after_its_reply_was_lost_is_not_forgotten() {
    let redis = tokio::task::spawn_blocking(RedisServer::stallable)
        .await
        .expect("start redis");
    let dir = tempfile::tempdir().unwrap();
    let url = format!("redis://127.0.0.1:{}?timeout_ms=300", redis.port);
    let aft = Process::spawn(dir.path(), &["--backend", &url]);
    let mut con = connect(aft.addr).await;

    let _: () = query(&mut con, &["SET", "k", "v0"]).await.unwrap();
    let sleeping = stall(redis.port, "1.5");
    let lost = query::<()>(&mut con, &["SET", "k", "x"]).await.unwrap_err();
    assert!(
        lost.to_string().contains("commit outcome unknown"),
        "{lost}"
    );
    sleeping.join().unwrap();
    // Redis applied it when it woke up: aft learns it without a restart.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let k: Option<String> = query(&mut con, &["GET", "k"]).await.unwrap();
        if k.as_deref() == Some("x") {
            break;
        }
        assert!(Instant::now() < deadline, "GET k still says {k:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // An increment whose reply was lost is counted by the next one.
    let _: () = query(&mut con, &["SET", "c", "10"]).await.unwrap();
    let sleeping = stall(redis.port, "1.5");
    let lost = query::<i64>(&mut con, &["INCR", "c"]).await.unwrap_err();
    assert!(
        lost.to_string().contains("commit outcome unknown"),
        "{lost}"
    );
    // The next one waits for it to settle (or, while Redis still sleeps, may find the
    // backend unavailable before it sends anything: the client tries again).
    let next: i64 = loop {
        match query(&mut con, &["INCR", "c"]).await {
            Ok(n) => break n,
            Err(e) if e.to_string().contains("backend unavailable") => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("{e}"),
        }
    };
    sleeping.join().unwrap();
    assert_eq!(next, 12, "an increment was lost");
    let info: String = query(&mut con, &["INFO", "transactions"]).await.unwrap();
    assert!(info.contains("aft_commits_outcome_unknown:2"), "{info}");
    assert!(info.contains("aft_commits_unresolved:0"), "{info}");

    // And after a restart, the same.
    aft.terminate();
    let aft = Process::spawn(dir.path(), &["--backend", &url]);
    let mut con = connect(aft.addr).await;
    let got: Vec<Option<String>> = query(&mut con, &["MGET", "k", "c"]).await.unwrap();
    assert_eq!(got, vec![Some("x".into()), Some("12".into())]);
    drop((aft, redis));
}
