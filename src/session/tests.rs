//! The session's behaviour, byte for byte, without sockets.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::*;
use crate::config::Config;
use crate::storage::memory::MemoryStorage;
use crate::txn::{Engine, EngineConfig};

async fn context(config: Config) -> Arc<Node> {
    let engine = Engine::open(Arc::new(MemoryStorage::new()), EngineConfig::default())
        .await
        .unwrap();
    Node::new(engine, Arc::new(config), "127.0.0.1:7379".into())
}

async fn session() -> Session {
    Session::new(context(Config::default()).await, "127.0.0.1:1".into())
}

/// Runs a space-separated command and returns the exact reply bytes as text.
async fn run(s: &mut Session, line: &str) -> String {
    let args = line
        .split(' ')
        .map(|a| Bytes::copy_from_slice(a.as_bytes()))
        .collect();
    let mut out = BytesMut::new();
    s.handle(args, &mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

async fn expect(s: &mut Session, script: &[(&str, &str)]) {
    for (cmd, want) in script {
        assert_eq!(run(s, cmd).await, *want, "command: {cmd}");
    }
}

#[tokio::test]
async fn strings_get_set_and_conditions() {
    let mut s = session().await;
    expect(
        &mut s,
        &[
            ("GET k", "$-1\r\n"),
            ("SET k v", "+OK\r\n"),
            ("GET k", "$1\r\nv\r\n"),
            ("SET k w NX", "$-1\r\n"),
            ("SET k w XX GET", "$1\r\nv\r\n"),
            ("SET other x XX", "$-1\r\n"),
            ("SET n 1 NX GET", "$-1\r\n"),
            ("SETNX k z", ":0\r\n"),
            ("SETNX fresh z", ":1\r\n"),
            ("GETSET k new", "$1\r\nw\r\n"),
            ("GETDEL k", "$3\r\nnew\r\n"),
            ("GETDEL k", "$-1\r\n"),
            ("MSET a 1 b 2", "+OK\r\n"),
            ("MGET a b nope", "*3\r\n$1\r\n1\r\n$1\r\n2\r\n$-1\r\n"),
            ("MSETNX a 9 c 9", ":0\r\n"),
            ("MSETNX c 3 d 4", ":1\r\n"),
            (
                "MSET a",
                "-ERR wrong number of arguments for 'mset' command\r\n",
            ),
            (
                "MSET a 1 b",
                "-ERR wrong number of arguments for 'mset' command\r\n",
            ),
            (
                "SET k v EX 0",
                "-ERR invalid expire time in 'set' command\r\n",
            ),
            ("SET k v BOGUS", "-ERR syntax error\r\n"),
            (
                "SET k v EX nope",
                "-ERR value is not an integer or out of range\r\n",
            ),
            (
                "SETEX k 0 v",
                "-ERR invalid expire time in 'setex' command\r\n",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn append_and_setrange_obey_max_bulk_len() {
    let config = Config {
        max_bulk_len: 10,
        ..Config::default()
    };
    let engine = Engine::open(Arc::new(MemoryStorage::new()), EngineConfig::from(&config))
        .await
        .unwrap();
    let node = Node::new(engine, Arc::new(config), "127.0.0.1:7379".into());
    let mut s = Session::new(node, "127.0.0.1:1".into());
    let too_big = "-ERR string exceeds maximum allowed size (proto-max-bulk-len)\r\n";
    expect(
        &mut s,
        &[
            ("APPEND s 0123456789", ":10\r\n"),
            ("APPEND s x", too_big),
            ("SETRANGE s 9 y", ":10\r\n"),
            ("SETRANGE s 10 y", too_big),
            ("SETRANGE t 8 abc", too_big),
            ("GET s", "$10\r\n012345678y\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn string_editing_and_counters() {
    let mut s = session().await;
    expect(
        &mut s,
        &[
            ("APPEND s Hello", ":5\r\n"),
            ("APPEND s _World", ":11\r\n"),
            ("STRLEN s", ":11\r\n"),
            ("STRLEN none", ":0\r\n"),
            ("GETRANGE s 0 4", "$5\r\nHello\r\n"),
            ("GETRANGE s -5 -1", "$5\r\nWorld\r\n"),
            ("GETRANGE none 0 -1", "$0\r\n\r\n"),
            ("SETRANGE s 6 Redis", ":11\r\n"),
            ("GET s", "$11\r\nHello_Redis\r\n"),
            ("SETRANGE pad 3 x", ":4\r\n"),
            ("GET pad", "$4\r\n\0\0\0x\r\n"),
            ("SETRANGE s -1 x", "-ERR offset is out of range\r\n"),
            ("INCR n", ":1\r\n"),
            ("INCRBY n 10", ":11\r\n"),
            ("DECR n", ":10\r\n"),
            ("DECRBY n 20", ":-10\r\n"),
            ("INCR s", "-ERR value is not an integer or out of range\r\n"),
            (
                "INCRBY n x",
                "-ERR value is not an integer or out of range\r\n",
            ),
            ("SET big 9223372036854775807", "+OK\r\n"),
            ("INCR big", "-ERR increment or decrement would overflow\r\n"),
            (
                "DECRBY n -9223372036854775808",
                "-ERR decrement would overflow\r\n",
            ),
            ("SET f 10.5", "+OK\r\n"),
            ("INCRBYFLOAT f 0.1", "$4\r\n10.6\r\n"),
            ("INCRBYFLOAT f -10.6", "$1\r\n0\r\n"),
            ("INCRBYFLOAT s 1", "-ERR value is not a valid float\r\n"),
            ("INCRBYFLOAT f nan", "-ERR value is not a valid float\r\n"),
            ("SET f 1", "+OK\r\n"),
            (
                "INCRBYFLOAT f inf",
                "-ERR increment would produce NaN or Infinity\r\n",
            ),
        ],
    )
    .await;
}

#[tokio::test]
async fn keyspace_and_expiry() {
    let mut s = session().await;
    expect(
        &mut s,
        &[
            ("SET a 1", "+OK\r\n"),
            ("SET b 2 EX 100", "+OK\r\n"),
            ("EXISTS a b c a", ":3\r\n"),
            ("TYPE a", "+string\r\n"),
            ("TYPE c", "+none\r\n"),
            ("TTL a", ":-1\r\n"),
            ("TTL b", ":100\r\n"),
            ("TTL c", ":-2\r\n"),
            ("EXPIRE a 50", ":1\r\n"),
            ("EXPIRE a 10 GT", ":0\r\n"),
            ("EXPIRE a 10 LT", ":1\r\n"),
            ("TTL a", ":10\r\n"),
            ("EXPIRE a 10 NX", ":0\r\n"),
            ("EXPIRE c 10", ":0\r\n"),
            ("PERSIST a", ":1\r\n"),
            ("PERSIST a", ":0\r\n"),
            ("TTL a", ":-1\r\n"),
            ("EXPIRE a 10 XX", ":0\r\n"),
            (
                "EXPIRE a 10 NX XX",
                "-ERR NX and XX, GT or LT options at the same time are not compatible\r\n",
            ),
            (
                "EXPIRE a 10 GT LT",
                "-ERR GT and LT options at the same time are not compatible\r\n",
            ),
            ("EXPIRE a 10 FOO", "-ERR Unsupported option FOO\r\n"),
            ("DBSIZE", ":2\r\n"),
            ("EXPIRE a -1", ":1\r\n"),
            ("GET a", "$-1\r\n"),
            ("DBSIZE", ":1\r\n"),
            ("DEL b c", ":1\r\n"),
            ("KEYS *", "*0\r\n"),
            ("MSET k1 1 k2 2 x 3", "+OK\r\n"),
            ("EXPIRETIME k1", ":-1\r\n"),
            ("GETEX k1 EX 100", "$1\r\n1\r\n"),
            ("TTL k1", ":100\r\n"),
            ("GETEX k1 PERSIST", "$1\r\n1\r\n"),
            ("TTL k1", ":-1\r\n"),
            (
                "GETEX k1 EX 0",
                "-ERR invalid expire time in 'getex' command\r\n",
            ),
            ("FLUSHALL", "+OK\r\n"),
            ("DBSIZE", ":0\r\n"),
            ("RANDOMKEY", "$-1\r\n"),
            ("SET p 1 PX 1", "+OK\r\n"),
        ],
    )
    .await;
    tokio::time::sleep(Duration::from_millis(5)).await;
    expect(&mut s, &[("GET p", "$-1\r\n"), ("EXISTS p", ":0\r\n")]).await;
}

#[tokio::test]
async fn keys_and_scan_visit_every_key() {
    let mut s = session().await;
    for i in 0..25 {
        run(&mut s, &format!("SET key:{i} v")).await;
    }
    run(&mut s, "SET other v").await;
    let keys = run(&mut s, "KEYS key:*").await;
    assert!(keys.starts_with("*25\r\n"), "{keys}");
    let mut seen = std::collections::HashSet::new();
    let mut cursor = "0".to_string();
    loop {
        let reply = run(&mut s, &format!("SCAN {cursor} MATCH key:* COUNT 7")).await;
        let lines: Vec<&str> = reply.split("\r\n").collect();
        cursor = lines[2].to_string();
        for l in &lines[4..] {
            if l.starts_with("key:") {
                seen.insert(l.to_string());
            }
        }
        if cursor == "0" {
            break;
        }
    }
    assert_eq!(seen.len(), 25);
    assert_eq!(run(&mut s, "SCAN x").await, "-ERR invalid cursor\r\n");
}

#[tokio::test]
async fn multi_exec_replies_like_redis() {
    let mut s = session().await;
    expect(
        &mut s,
        &[
            ("EXEC", "-ERR EXEC without MULTI\r\n"),
            ("DISCARD", "-ERR DISCARD without MULTI\r\n"),
            ("MULTI", "+OK\r\n"),
            ("MULTI", "-ERR MULTI calls can not be nested\r\n"),
            ("SET a 1", "+QUEUED\r\n"),
            ("INCR a", "+QUEUED\r\n"),
            ("SET s x", "+QUEUED\r\n"),
            ("INCR s", "+QUEUED\r\n"),
            ("SET a b c", "+QUEUED\r\n"),
            ("GET a", "+QUEUED\r\n"),
            ("PING", "+QUEUED\r\n"),
            (
                "EXEC",
                "*7\r\n+OK\r\n:2\r\n+OK\r\n-ERR value is not an integer or out of range\r\n-ERR syntax error\r\n$1\r\n2\r\n+PONG\r\n",
            ),
            ("MULTI", "+OK\r\n"),
            ("EXEC", "*0\r\n"),
            ("MULTI", "+OK\r\n"),
            ("SET a 5", "+QUEUED\r\n"),
            ("NOSUCH x", "-ERR unknown command 'NOSUCH', with args beginning with: 'x' \r\n"),
            ("GET", "-ERR wrong number of arguments for 'get' command\r\n"),
            ("EXEC", "-EXECABORT Transaction discarded because of previous errors.\r\n"),
            ("GET a", "$1\r\n2\r\n"),
            ("MULTI", "+OK\r\n"),
            ("SET a 6", "+QUEUED\r\n"),
            ("DISCARD", "+OK\r\n"),
            ("GET a", "$1\r\n2\r\n"),
            ("MULTI", "+OK\r\n"),
            ("WATCH a", "-ERR WATCH inside MULTI is not allowed\r\n"),
            ("EXEC", "*0\r\n"),
        ],
    )
    .await;
}

#[tokio::test]
async fn watch_fails_exec_when_the_key_changes() {
    let ctx = context(Config::default()).await;
    let mut a = Session::new(ctx.clone(), "a".into());
    let mut b = Session::new(ctx.clone(), "b".into());
    expect(&mut a, &[("SET k 1", "+OK\r\n"), ("WATCH k", "+OK\r\n")]).await;
    expect(&mut b, &[("SET k 2", "+OK\r\n")]).await;
    expect(
        &mut a,
        &[
            ("MULTI", "+OK\r\n"),
            ("SET k 3", "+QUEUED\r\n"),
            ("EXEC", "*-1\r\n"),
            ("GET k", "$1\r\n2\r\n"),
            // Watches were cleared: the next transaction runs.
            ("MULTI", "+OK\r\n"),
            ("SET k 3", "+QUEUED\r\n"),
            ("EXEC", "*1\r\n+OK\r\n"),
            // A change by the watcher itself also counts.
            ("WATCH k", "+OK\r\n"),
            ("SET k 4", "+OK\r\n"),
            ("MULTI", "+OK\r\n"),
            ("GET k", "+QUEUED\r\n"),
            ("EXEC", "*-1\r\n"),
            // UNWATCH forgets.
            ("WATCH k", "+OK\r\n"),
            ("UNWATCH", "+OK\r\n"),
            ("SET k 5", "+OK\r\n"),
            ("MULTI", "+OK\r\n"),
            ("GET k", "+QUEUED\r\n"),
            ("EXEC", "*1\r\n$1\r\n5\r\n"),
            // A watched key that does not exist and is not created: EXEC runs.
            ("WATCH ghost", "+OK\r\n"),
            ("MULTI", "+OK\r\n"),
            ("EXEC", "*0\r\n"),
        ],
    )
    .await;
}

fn request(line: &str) -> Vec<Bytes> {
    line.split(' ')
        .map(|a| Bytes::copy_from_slice(a.as_bytes()))
        .collect()
}

#[tokio::test]
async fn a_pipelined_batch_replies_in_order_and_commits_its_writes_together() {
    let mut s = session().await;
    run(&mut s, "SET w 0").await;
    let engine = s.node.engine.clone();
    let commits = || engine.stats().commits.load(Ordering::Relaxed);
    let before = commits();
    let batch = [
        "SET a 1",
        "INCR a",
        "SET s str",
        "INCR s",
        "GET a",
        "SET a b c",
        "APPEND a x",
        "MGET a s nope",
        "PING",
        "DEL s",
        "EXISTS s a",
    ];
    let mut out = BytesMut::new();
    let mut requests = batch.iter().map(|l| request(l)).collect();
    s.handle_batch(&mut requests, &mut out, usize::MAX).await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        "+OK\r\n:2\r\n+OK\r\n-ERR value is not an integer or out of range\r\n$1\r\n2\r\n-ERR syntax error\r\n:2\r\n*3\r\n$2\r\n2x\r\n$3\r\nstr\r\n$-1\r\n+PONG\r\n:1\r\n:1\r\n"
    );
    // The writes before PING were one commit, those after it another.
    assert_eq!(commits() - before, 2);
    assert_eq!(run(&mut s, "MGET a s").await, "*2\r\n$2\r\n2x\r\n$-1\r\n");

    // Mode changes inside a batch take effect for the requests after them.
    let batch = [
        "WATCH w",
        "SET w 1",
        "MULTI",
        "SET a 9",
        "EXEC",
        "GET a",
        "MULTI",
        "INCR a",
        "EXEC",
        "QUIT",
        "SET never 1",
    ];
    let mut out = BytesMut::new();
    let mut requests = batch.iter().map(|l| request(l)).collect();
    s.handle_batch(&mut requests, &mut out, usize::MAX).await;
    assert_eq!(
        String::from_utf8_lossy(&out),
        "+OK\r\n+OK\r\n+OK\r\n+QUEUED\r\n*-1\r\n$2\r\n2x\r\n+OK\r\n+QUEUED\r\n*1\r\n-ERR value is not an integer or out of range\r\n+OK\r\n"
    );
    assert!(s.should_close());
    let mut other = session_on(s.node.clone()).await;
    assert_eq!(run(&mut other, "EXISTS never").await, ":0\r\n");
}

async fn session_on(ctx: Arc<Node>) -> Session {
    Session::new(ctx, "other".into())
}

/// A pipelined batch on `s`, replies as text.
async fn pipeline(s: &mut Session, lines: &[&str]) -> String {
    let mut requests = lines.iter().map(|l| request(l)).collect();
    let mut out = BytesMut::new();
    s.handle_batch(&mut requests, &mut out, usize::MAX).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn a_pipelined_group_is_as_if_its_commands_ran_one_by_one() {
    use crate::storage::testkit::fault::{FaultConfig, FaultyStorage};
    let storage = Arc::new(FaultyStorage::new(
        Arc::new(MemoryStorage::new()),
        FaultConfig::new(3),
    ));
    let engine = Engine::open(storage.clone(), EngineConfig::default())
        .await
        .unwrap();
    let ctx = Node::new(engine, Arc::new(Config::default()), "127.0.0.1:7379".into());
    let mut first = session_on(ctx.clone()).await;
    let mut second = session_on(ctx.clone()).await;
    // The first group's commit stalls in the backend after it read b (absent).
    let gate = storage.pause_next_commits(1);
    let first_group =
        tokio::spawn(async move { pipeline(&mut first, &["SET a 1", "GET b"]).await });
    gate.until_waiting(1).await;
    // The second group reads a after writing b: if its read stood on the snapshot (a
    // absent), both groups would read nil, which no order of the four commands gives.
    let second_group =
        tokio::spawn(async move { pipeline(&mut second, &["SET b 1", "GET a"]).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    gate.open();
    let first_replies = first_group.await.unwrap();
    let second_replies = second_group.await.unwrap();
    assert_eq!(first_replies, "+OK\r\n$-1\r\n");
    assert_eq!(second_replies, "+OK\r\n$1\r\n1\r\n");
}

#[tokio::test]
async fn a_keyspace_read_after_a_write_ends_the_pipelined_group() {
    let mut s = session().await;
    let engine = s.node.engine.clone();
    let commits = || engine.stats().commits.load(Ordering::Relaxed);
    let before = commits();
    let replies = pipeline(&mut s, &["SET a 1", "DBSIZE", "SET b 2", "KEYS *", "GET a"]).await;
    assert!(
        replies.starts_with("+OK\r\n:1\r\n+OK\r\n*2\r\n"),
        "{replies}"
    );
    assert!(replies.ends_with("$1\r\n1\r\n"), "{replies}");
    assert_eq!(commits() - before, 2, "split before DBSIZE and before KEYS");
}

#[tokio::test]
async fn a_pipeline_stops_at_the_output_limit_and_resumes() {
    let mut s = session().await;
    run(&mut s, "SET big 0123456789").await;
    let mut requests: VecDeque<Vec<Bytes>> = (0..10).map(|_| request("GET big")).collect();
    requests.push_back(request("SET after 1"));
    let mut out = BytesMut::new();
    // Each reply is 17 bytes: a limit of 40 stops after 3 of them.
    s.handle_batch(&mut requests, &mut out, 40).await;
    assert_eq!(out.len(), 3 * 17);
    let mut rounds = 1;
    while !requests.is_empty() || s.has_pending() {
        out.clear();
        s.handle_batch(&mut requests, &mut out, 40).await;
        assert!(out.len() <= 3 * 17 + 4, "{}", out.len());
        rounds += 1;
    }
    assert!(rounds >= 4);
    assert_eq!(run(&mut s, "GET after").await, "$1\r\n1\r\n");
}

#[tokio::test]
async fn aft_abort_of_a_transaction_that_committed_says_so_and_changes_nothing() {
    let ctx = context(Config::default()).await;
    let mut a = session_on(ctx.clone()).await;
    let mut b = session_on(ctx.clone()).await;
    let id = run(&mut a, "AFT.BEGIN").await;
    let id = id.split("\r\n").nth(1).unwrap().to_string();
    assert_eq!(run(&mut a, "SET x 1").await, "+OK\r\n");
    assert_eq!(run(&mut b, &format!("AFT.ATTACH {id}")).await, "+OK\r\n");
    assert_eq!(run(&mut b, "AFT.COMMIT").await, "+OK\r\n");
    assert_eq!(
        run(&mut a, "AFT.ABORT").await,
        format!("-ERR transaction {id} is no longer running (committed); nothing was aborted\r\n")
    );
    assert_eq!(
        run(&mut a, &format!("AFT.STATUS {id}")).await,
        "$9\r\ncommitted\r\n"
    );
    assert_eq!(run(&mut a, "GET x").await, "$1\r\n1\r\n");
}

#[tokio::test]
async fn a_neighbouring_transaction_id_attaches_to_nothing() {
    let ctx = context(Config::default()).await;
    let mut a = session_on(ctx.clone()).await;
    let mut thief = session_on(ctx.clone()).await;
    let first = run(&mut a, "AFT.BEGIN").await;
    let first = first.split("\r\n").nth(1).unwrap().to_string();
    run(&mut a, "AFT.DETACH").await;
    run(&mut a, "AFT.BEGIN").await;
    run(&mut a, "SET secret 1").await;
    run(&mut a, "AFT.DETACH").await;
    let n = u128::from_str_radix(&first, 16).unwrap();
    for guess in [n.wrapping_add(1), n.wrapping_sub(1)] {
        let reply = run(&mut thief, &format!("AFT.ATTACH {guess:032x}")).await;
        assert!(reply.starts_with("-ERR unknown transaction"), "{reply}");
    }
}

#[tokio::test]
async fn info_reports_the_oldest_pinned_snapshot() {
    let ctx = context(Config::default()).await;
    let mut a = session_on(ctx.clone()).await;
    let mut b = session_on(ctx.clone()).await;
    let age = |info: String| -> u64 {
        info.lines()
            .find_map(|l| l.strip_prefix("aft_oldest_snapshot_age_ms:"))
            .and_then(|v| v.trim().parse().ok())
            .expect("aft_oldest_snapshot_age_ms")
    };
    run(&mut a, "SET k 1").await;
    run(&mut a, "AFT.BEGIN").await;
    run(&mut a, "GET k").await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    assert!(age(run(&mut b, "INFO transactions").await) >= 30);
    run(&mut a, "AFT.ABORT").await;
    assert_eq!(age(run(&mut b, "INFO transactions").await), 0);
}

#[tokio::test]
async fn one_client_cannot_lock_others_out_of_interactive_transactions() {
    let config = Config {
        max_open_txns: 8,
        max_open_txns_per_client: 3,
        txn_timeout_ms: 100,
        ..Config::default()
    };
    let ctx = context(config).await;
    let mut greedy = session_on(ctx.clone()).await;
    for _ in 0..3 {
        assert!(run(&mut greedy, "AFT.BEGIN TIMEOUT 3600000")
            .await
            .starts_with('$'));
        run(&mut greedy, "AFT.DETACH").await;
    }
    let refused = run(&mut greedy, "AFT.BEGIN TIMEOUT 3600000").await;
    assert!(refused.contains("max_open_txns_per_client"), "{refused}");
    // The greedy client reconnects again and again until the registry is full.
    let mut clients = Vec::new();
    while ctx.open_txns.gauges().0 < 8 {
        let mut c = session_on(ctx.clone()).await;
        run(&mut c, "AFT.BEGIN TIMEOUT 3600000").await;
        run(&mut c, "AFT.DETACH").await;
        clients.push(c);
    }
    let mut victim = session_on(ctx.clone()).await;
    assert!(run(&mut victim, "AFT.BEGIN")
        .await
        .starts_with("-ERR too many open"));
    // Once the hoarded transactions sat idle and detached for the default timeout, one
    // of them makes room for a client that needs it.
    tokio::time::sleep(Duration::from_millis(150)).await;
    assert!(run(&mut victim, "AFT.BEGIN").await.starts_with('$'));
    assert_eq!(ctx.open_txns.stats().evicted.load(Ordering::Relaxed), 1);
    assert_eq!(ctx.open_txns.gauges().0, 8);
}

#[tokio::test]
async fn connection_commands() {
    let mut s = session().await;
    expect(
        &mut s,
        &[
            ("PING", "+PONG\r\n"),
            ("PING hi", "$2\r\nhi\r\n"),
            ("PING a b", "-ERR wrong number of arguments for 'ping' command\r\n"),
            ("ECHO hey", "$3\r\nhey\r\n"),
            ("SELECT 0", "+OK\r\n"),
            ("SELECT 1", "-ERR DB index is out of range\r\n"),
            ("SELECT x", "-ERR value is not an integer or out of range\r\n"),
            ("CLIENT SETNAME app", "+OK\r\n"),
            ("CLIENT GETNAME", "$3\r\napp\r\n"),
            (
                "CLIENT SETNAME a\nb",
                "-ERR Client names cannot contain spaces, newlines or special characters.\r\n",
            ),
            ("CLIENT SETINFO LIB-NAME redis-py", "+OK\r\n"),
            ("CLIENT SETINFO LIB-VER 1.0", "+OK\r\n"),
            ("CLIENT ID", ":1\r\n"),
            ("CLIENT NOPE", "-ERR unknown subcommand 'NOPE'. Try CLIENT HELP.\r\n"),
            (
                "AUTH x",
                "-ERR AUTH <password> called without any password configured for the default user. Are you sure your configuration is correct?\r\n",
            ),
            ("HELLO 4", "-NOPROTO unsupported protocol version\r\n"),
            ("HELLO x", "-ERR Protocol version is not an integer or out of range\r\n"),
            ("FUNCTION FLUSH", "+OK\r\n"),
            ("DEBUG LOG hi", "-ERR DEBUG is not supported\r\n"),
            ("COMMAND COUNT", &format!(":{}\r\n", crate::cmd::COMMANDS.len())),
            ("CONFIG GET save", "*2\r\n$4\r\nsave\r\n$0\r\n\r\n"),
            (
                "CONFIG GET appendonly",
                "*2\r\n$10\r\nappendonly\r\n$2\r\nno\r\n",
            ),
            (
                "FOO a b",
                "-ERR unknown command 'FOO', with args beginning with: 'a' 'b' \r\n",
            ),
            ("QUIT", "+OK\r\n"),
        ],
    )
    .await;
    assert!(s.should_close());
}

#[tokio::test]
async fn hello_3_switches_to_resp3() {
    let mut s = session().await;
    let hello = run(&mut s, "HELLO 3 SETNAME me").await;
    assert!(
        hello.starts_with("%7\r\n$6\r\nserver\r\n$5\r\nredis\r\n"),
        "{hello}"
    );
    assert!(hello.contains("$5\r\nproto\r\n:3\r\n"), "{hello}");
    expect(
        &mut s,
        &[
            ("GET missing", "_\r\n"),
            ("CLIENT GETNAME", "$2\r\nme\r\n"),
            ("CONFIG GET save", "%1\r\n$4\r\nsave\r\n$0\r\n\r\n"),
            ("SET k 1", "+OK\r\n"),
            ("WATCH k", "+OK\r\n"),
            ("SET k 2", "+OK\r\n"),
            ("MULTI", "+OK\r\n"),
            ("EXEC", "_\r\n"),
            ("RESET", "+RESET\r\n"),
            ("GET missing", "$-1\r\n"),
        ],
    )
    .await;
    let info = run(&mut s, "INFO").await;
    assert!(info.contains("redis_version:7.0.15\r\n"), "{info}");
}

#[tokio::test]
async fn requirepass_gates_commands() {
    let config = Config {
        requirepass: Some("secret".into()),
        ..Config::default()
    };
    let mut s = Session::new(context(config).await, "x".into());
    assert!(!s.is_authenticated());
    expect(
        &mut s,
        &[
            ("GET k", "-NOAUTH Authentication required.\r\n"),
            (
                "AUTH wrong",
                "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            ),
            (
                "AUTH other secret",
                "-WRONGPASS invalid username-password pair or user is disabled.\r\n",
            ),
            ("AUTH secret", "+OK\r\n"),
            ("GET k", "$-1\r\n"),
            ("RESET", "+RESET\r\n"),
            ("GET k", "-NOAUTH Authentication required.\r\n"),
        ],
    )
    .await;
    let hello = run(&mut s, "HELLO 3").await;
    assert!(hello.starts_with("-NOAUTH HELLO must be called"), "{hello}");
    let hello = run(&mut s, "HELLO 3 AUTH default secret").await;
    assert!(hello.starts_with("%7\r\n"), "{hello}");
    assert!(s.is_authenticated());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_increments_are_never_lost() {
    let ctx = context(Config::default()).await;
    let mut tasks = Vec::new();
    for i in 0..8 {
        let ctx = ctx.clone();
        tasks.push(tokio::spawn(async move {
            let mut s = Session::new(ctx, format!("c{i}"));
            for _ in 0..50 {
                assert!(run(&mut s, "INCR counter").await.starts_with(':'));
                run(&mut s, "MULTI").await;
                run(&mut s, "INCRBY other 2").await;
                run(&mut s, "APPEND log x").await;
                assert!(run(&mut s, "EXEC").await.starts_with("*2\r\n:"));
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let mut s = Session::new(ctx, "check".into());
    expect(
        &mut s,
        &[
            ("GET counter", "$3\r\n400\r\n"),
            ("GET other", "$3\r\n800\r\n"),
            ("STRLEN log", ":400\r\n"),
        ],
    )
    .await;
}
