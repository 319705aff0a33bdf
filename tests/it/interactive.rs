//! Interactive transactions over real sockets: AFT.BEGIN / COMMIT / ABORT / ATTACH /
//! DETACH / STATUS, sessions left open, idempotent retries, limits.

use std::time::Duration;

use aft::config::Config;
use redis::{RedisResult, Value};

use crate::harness::{query, text, TestServer};

fn info_field(info: &str, field: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {field} in INFO"))
}

#[tokio::test]
async fn a_malformed_exec_leaves_an_attached_transaction_attached() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let mut observer = server.client().await;
    text(&mut c, &["AFT.BEGIN"]).await;
    assert_eq!(text(&mut c, &["SET", "k", "v"]).await, "OK");
    let e = text(&mut c, &["EXEC", "x"]).await;
    assert!(e.contains("wrong number of arguments for 'exec'"), "{e}");
    // Still inside the transaction: this write is buffered with the first.
    assert_eq!(text(&mut c, &["SET", "k2", "v2"]).await, "OK");
    assert_eq!(text(&mut observer, &["GET", "k2"]).await, "(nil)");
    assert_eq!(text(&mut c, &["AFT.COMMIT"]).await, "OK");
    let both: Vec<Option<String>> = query(&mut observer, &["MGET", "k", "k2"]).await.unwrap();
    assert_eq!(both, vec![Some("v".into()), Some("v2".into())]);
}

#[tokio::test]
async fn writes_are_invisible_until_commit_and_reads_see_own_writes() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let mut other = server.client().await;
    text(&mut a, &["SET", "x", "old"]).await;
    let txid = text(&mut a, &["AFT.BEGIN"]).await;
    assert_eq!(txid.len(), 32, "{txid}");
    assert_eq!(text(&mut a, &["GET", "x"]).await, "old");
    assert_eq!(text(&mut a, &["SET", "x", "new"]).await, "OK");
    assert_eq!(text(&mut a, &["SET", "y", "1"]).await, "OK");
    assert_eq!(text(&mut a, &["INCR", "y"]).await, "2");
    // Read-your-writes inside; nothing outside.
    assert_eq!(text(&mut a, &["GET", "x"]).await, "new");
    assert_eq!(text(&mut other, &["GET", "x"]).await, "old");
    assert_eq!(text(&mut other, &["GET", "y"]).await, "(nil)");
    // Repeatable read: a commit by someone else after our first read is not seen.
    text(&mut other, &["SET", "z", "1"]).await;
    let snapshot_before = text(&mut a, &["EXISTS", "z"]).await;
    text(&mut other, &["SET", "z", "2"]).await;
    assert_eq!(text(&mut a, &["EXISTS", "z"]).await, snapshot_before);
    assert_eq!(text(&mut a, &["AFT.STATUS", &txid]).await, "running");
    assert_eq!(text(&mut a, &["AFT.COMMIT"]).await, "OK");
    assert_eq!(
        text(&mut other, &["MGET", "x", "y"]).await,
        format!(
            "{:?}",
            Value::Array(vec![
                Value::BulkString(b"new".to_vec()),
                Value::BulkString(b"2".to_vec())
            ])
        )
    );
    assert_eq!(text(&mut other, &["AFT.STATUS", &txid]).await, "committed");
    // The connection is back to autocommit.
    assert_eq!(text(&mut a, &["SET", "after", "1"]).await, "OK");
    assert_eq!(text(&mut other, &["GET", "after"]).await, "1");
}

#[tokio::test]
async fn abort_leaves_nothing_and_errors_are_clear() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let txid = text(&mut a, &["AFT.BEGIN"]).await;
    text(&mut a, &["SET", "k", "v"]).await;
    assert_eq!(text(&mut a, &["AFT.ABORT"]).await, "OK");
    assert_eq!(text(&mut a, &["GET", "k"]).await, "(nil)");
    assert_eq!(text(&mut a, &["AFT.STATUS", &txid]).await, "aborted");
    assert!(text(&mut a, &["AFT.ABORT"])
        .await
        .contains("AFT.ABORT without AFT.BEGIN"));
    assert!(text(&mut a, &["AFT.COMMIT"])
        .await
        .contains("AFT.COMMIT without AFT.BEGIN"));
    assert!(text(&mut a, &["AFT.DETACH"])
        .await
        .contains("without a transaction"));
    let e = text(&mut a, &["AFT.ATTACH", &txid]).await;
    assert!(e.contains("no longer running (aborted)"), "{e}");
    let e = text(&mut a, &["AFT.ATTACH", "nonsense"]).await;
    assert!(e.contains("unknown transaction"), "{e}");
    assert_eq!(
        text(&mut a, &["AFT.STATUS", "0123456789abcdef0123456789abcdef"]).await,
        "unknown"
    );
    // Nesting is refused both ways, and does not break the open transaction.
    text(&mut a, &["AFT.BEGIN"]).await;
    assert!(text(&mut a, &["MULTI"])
        .await
        .contains("MULTI inside an AFT transaction"));
    assert!(text(&mut a, &["AFT.BEGIN"])
        .await
        .contains("already in transaction"));
    text(&mut a, &["SET", "k", "v2"]).await;
    assert_eq!(text(&mut a, &["AFT.COMMIT"]).await, "OK");
    assert_eq!(text(&mut a, &["GET", "k"]).await, "v2");
    // AFT.* control commands are refused inside MULTI.
    let mut pipe = redis::pipe();
    pipe.cmd("MULTI").cmd("AFT.BEGIN").cmd("DISCARD");
    let e: RedisResult<Vec<Value>> = pipe.query_async(&mut a).await;
    assert!(
        format!("{e:?}").contains("AFT.BEGIN inside MULTI is not allowed"),
        "{e:?}"
    );
}

#[tokio::test]
async fn two_connections_cooperate_on_one_transaction() {
    let server = TestServer::start().await;
    let mut first = server.client().await;
    let mut second = server.client().await;
    let mut observer = server.client().await;
    let txid = text(&mut first, &["AFT.BEGIN"]).await;
    text(&mut first, &["SET", "step1", "done"]).await;
    assert_eq!(text(&mut first, &["AFT.DETACH"]).await, "OK");
    assert_eq!(text(&mut second, &["AFT.ATTACH", &txid]).await, "OK");
    assert_eq!(text(&mut second, &["GET", "step1"]).await, "done");
    text(&mut second, &["SET", "step2", "done"]).await;
    assert_eq!(
        text(&mut observer, &["EXISTS", "step1", "step2"]).await,
        "0"
    );
    assert_eq!(text(&mut second, &["AFT.COMMIT"]).await, "OK");
    assert_eq!(
        text(&mut observer, &["EXISTS", "step1", "step2"]).await,
        "2"
    );
    // The first connection detached: it runs autocommit commands again.
    assert_eq!(text(&mut first, &["GET", "step2"]).await, "done");
}

#[tokio::test]
async fn a_vanished_client_leaves_nothing_and_its_transaction_times_out() {
    let server = TestServer::start().await;
    let mut observer = server.client().await;
    let txid = {
        let mut doomed = server.client().await;
        let txid = text(&mut doomed, &["AFT.BEGIN", "TIMEOUT", "200"]).await;
        text(&mut doomed, &["SET", "half", "written"]).await;
        txid
        // The connection drops here.
    };
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(text(&mut observer, &["GET", "half"]).await, "(nil)");
    // Still attachable before its timeout (a retry could pick it up)...
    assert_eq!(text(&mut observer, &["AFT.STATUS", &txid]).await, "running");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while text(&mut observer, &["AFT.STATUS", &txid]).await == "running" {
        assert!(tokio::time::Instant::now() < deadline, "never timed out");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(text(&mut observer, &["AFT.STATUS", &txid]).await, "aborted");
    assert_eq!(text(&mut observer, &["GET", "half"]).await, "(nil)");
    let info = text(&mut observer, &["INFO", "transactions"]).await;
    assert_eq!(info_field(&info, "aft_txns_timed_out"), 1);
    assert_eq!(info_field(&info, "aft_open_txns"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_retries_with_one_idempotency_key_apply_once() {
    let server = TestServer::start().await;
    let mut setup = server.client().await;
    text(&mut setup, &["SET", "balance", "100"]).await;
    // Two attempts of the same function run at once (a retry of a "crashed" one).
    let mut tasks = Vec::new();
    for _ in 0..2 {
        let mut c = server.client().await;
        tasks.push(tokio::spawn(async move {
            text(&mut c, &["AFT.BEGIN", "IDEMPOTENCY-KEY", "payment-42"]).await;
            text(&mut c, &["SET", "paid:42", "yes"]).await;
            text(&mut c, &["DECRBY", "balance", "30"]).await;
            tokio::time::sleep(Duration::from_millis(20)).await;
            text(&mut c, &["AFT.COMMIT"]).await
        }));
    }
    let mut outcomes = Vec::new();
    for t in tasks {
        outcomes.push(t.await.unwrap());
    }
    outcomes.sort();
    assert_eq!(outcomes[0], "OK", "{outcomes:?}");
    assert!(
        outcomes[1].contains("COMMITTED") || outcomes[1].contains("CONFLICT"),
        "{outcomes:?}"
    );
    assert_eq!(text(&mut setup, &["GET", "balance"]).await, "70");
    // A later retry learns the outcome at BEGIN and applies nothing.
    let e = text(&mut setup, &["AFT.BEGIN", "IDEMPOTENCY-KEY", "payment-42"]).await;
    assert!(e.contains("COMMITTED"), "{e}");
    assert_eq!(
        text(&mut setup, &["AFT.STATUS", "payment-42"]).await,
        "committed"
    );
    assert_eq!(
        text(&mut setup, &["AFT.STATUS", "payment-43"]).await,
        "unknown"
    );
    // The same protection for MULTI/EXEC.
    for expect_applied in [true, false] {
        let mut pipe = redis::pipe();
        pipe.cmd("MULTI")
            .cmd("AFT.IDEMPOTENT")
            .arg("refund-7")
            .cmd("INCRBY")
            .arg("balance")
            .arg(5)
            .cmd("EXEC");
        let r: RedisResult<Value> = pipe.query_async(&mut setup).await;
        assert_eq!(r.is_ok(), expect_applied, "{r:?}");
    }
    assert_eq!(text(&mut setup, &["GET", "balance"]).await, "75");
}

#[tokio::test]
async fn concurrent_read_modify_write_conflicts_are_reported_at_commit() {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    text(&mut a, &["SET", "counter", "10"]).await;
    text(&mut a, &["AFT.BEGIN"]).await;
    text(&mut b, &["AFT.BEGIN"]).await;
    assert_eq!(text(&mut a, &["INCR", "counter"]).await, "11");
    assert_eq!(text(&mut b, &["INCR", "counter"]).await, "11");
    assert_eq!(text(&mut a, &["AFT.COMMIT"]).await, "OK");
    let e = text(&mut b, &["AFT.COMMIT"]).await;
    assert!(
        e.contains("CONFLICT") && e.contains("nothing was applied"),
        "{e}"
    );
    assert_eq!(text(&mut a, &["GET", "counter"]).await, "11");
}

#[tokio::test]
async fn open_transactions_are_bounded_and_abandoned_ones_are_reclaimed() {
    let config = Config {
        max_open_txns: 50,
        max_txn_bytes: 1000,
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let mut observer = server.client().await;
    // Too big: the transaction is aborted, nothing visible.
    let mut c = server.client().await;
    text(&mut c, &["AFT.BEGIN"]).await;
    text(&mut c, &["SET", "small", "1"]).await;
    let e = text(&mut c, &["SET", "big", &"x".repeat(2000)]).await;
    assert!(e.contains("buffered more than 1000 bytes"), "{e}");
    assert!(text(&mut c, &["AFT.COMMIT"])
        .await
        .contains("without AFT.BEGIN"));
    assert_eq!(text(&mut observer, &["EXISTS", "small", "big"]).await, "0");
    // Many abandoned sessions: bounded while open, all reclaimed after their timeout.
    for i in 0..200 {
        let mut doomed = server.client().await;
        let r = text(&mut doomed, &["AFT.BEGIN", "TIMEOUT", "100"]).await;
        if i < 50 {
            assert_eq!(r.len(), 32, "{r}");
            text(&mut doomed, &["SET", &format!("abandoned:{i}"), "v"]).await;
        } else {
            assert!(r.contains("too many open transactions"), "{r}");
        }
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        let info = text(&mut observer, &["INFO", "transactions"]).await;
        if info_field(&info, "aft_open_txns") == 0 {
            assert_eq!(info_field(&info, "aft_open_txn_bytes"), 0);
            assert_eq!(info_field(&info, "aft_txns_timed_out"), 50);
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{info}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(text(&mut observer, &["DBSIZE"]).await, "0");
    // Room again.
    assert_eq!(text(&mut observer, &["AFT.BEGIN"]).await.len(), 32);
}
