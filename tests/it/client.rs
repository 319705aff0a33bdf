//! The `redis` crate as a real client: commands, binary data, pipelines, transactions,
//! WATCH, RESP3, AUTH, concurrency, read atomicity and durability across a restart.

use std::collections::{BTreeSet, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aft::config::Config;
use redis::aio::MultiplexedConnection;
use redis::{AsyncCommands, ExistenceCheck, RedisError, SetExpiry, SetOptions, Value};

use crate::harness::TestServer;

type Result<T = ()> = redis::RedisResult<T>;

/// `CODE detail` of a server error reply, e.g. `ERR syntax error`.
fn error_text(e: &RedisError) -> String {
    match (e.code(), e.detail()) {
        (Some(code), Some(detail)) => format!("{code} {detail}"),
        (Some(code), None) => code.to_string(),
        _ => format!("not a server error: {e:?}"),
    }
}

/// Runs `command` expecting a server error and returns its text.
async fn server_error(con: &mut MultiplexedConnection, command: &redis::Cmd) -> String {
    match command.query_async::<Value>(con).await {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => error_text(&e),
    }
}

async fn connect(url: &str) -> Result<MultiplexedConnection> {
    redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await
}

async fn dbsize(con: &mut MultiplexedConnection) -> Result<i64> {
    redis::cmd("DBSIZE").query_async(con).await
}

fn bulk(b: &[u8]) -> Value {
    Value::BulkString(b.to_vec())
}

#[tokio::test]
async fn strings_get_and_set_with_options() -> Result {
    let server = TestServer::start().await;
    let mut con = server.client().await;
    assert_eq!(con.get::<_, Option<String>>("k").await?, None);
    con.set::<_, _, ()>("k", "v").await?;
    assert_eq!(con.get::<_, String>("k").await?, "v");

    let nx = SetOptions::default().conditional_set(ExistenceCheck::NX);
    let r: Option<String> = con.set_options("k", "w", nx.clone()).await?;
    assert_eq!(r, None, "SET NX on an existing key is a nil reply");
    assert_eq!(con.get::<_, String>("k").await?, "v");
    let r: Option<String> = con.set_options("fresh", "1", nx).await?;
    assert_eq!(r.as_deref(), Some("OK"));

    let xx_get = SetOptions::default()
        .conditional_set(ExistenceCheck::XX)
        .get(true);
    let old: Option<String> = con.set_options("k", "w", xx_get.clone()).await?;
    assert_eq!(old.as_deref(), Some("v"));
    let old: Option<String> = con.set_options("absent", "w", xx_get).await?;
    assert_eq!(old, None);
    assert!(!con.exists::<_, bool>("absent").await?);

    let ex = SetOptions::default().with_expiration(SetExpiry::EX(100));
    let _: Option<String> = con.set_options("t", "1", ex).await?;
    let ttl: i64 = con.ttl("t").await?;
    assert!((99..=100).contains(&ttl), "{ttl}");
    let keep = SetOptions::default().with_expiration(SetExpiry::KEEPTTL);
    let _: Option<String> = con.set_options("t", "2", keep).await?;
    let ttl: i64 = con.ttl("t").await?;
    assert!((99..=100).contains(&ttl), "KEEPTTL kept the TTL: {ttl}");
    con.set::<_, _, ()>("t", "3").await?;
    assert_eq!(
        con.ttl::<_, i64>("t").await?,
        -1,
        "a plain SET clears the TTL"
    );
    let px = SetOptions::default().with_expiration(SetExpiry::PX(50_000));
    let _: Option<String> = con.set_options("t", "4", px).await?;
    let pttl: i64 = con.pttl("t").await?;
    assert!((49_000..=50_000).contains(&pttl), "{pttl}");
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 500;
    let exat = SetOptions::default().with_expiration(SetExpiry::EXAT(at));
    let _: Option<String> = con.set_options("t", "5", exat).await?;
    let ttl: i64 = con.ttl("t").await?;
    assert!((498..=500).contains(&ttl), "{ttl}");

    assert!(!con.set_nx::<_, _, bool>("k", "x").await?);
    assert!(con.set_nx::<_, _, bool>("nx", "x").await?);
    let old: String = redis::cmd("GETSET")
        .arg("k")
        .arg("new")
        .query_async(&mut con)
        .await?;
    assert_eq!(old, "w");
    assert_eq!(
        con.get_del::<_, Option<String>>("k").await?.as_deref(),
        Some("new")
    );
    assert_eq!(con.get_del::<_, Option<String>>("k").await?, None);
    con.set_ex::<_, _, ()>("se", "v", 30).await?;
    assert_eq!(con.ttl::<_, i64>("se").await?, 30);

    con.mset::<_, _, ()>(&[("a", "1"), ("b", "2")]).await?;
    let got: Vec<Option<String>> = con.mget(&["a", "nope", "b"]).await?;
    assert_eq!(got, [Some("1".into()), None, Some("2".into())]);
    assert!(!con.mset_nx::<_, _, bool>(&[("a", "9"), ("c", "9")]).await?);
    assert_eq!(
        con.get::<_, Option<String>>("c").await?,
        None,
        "MSETNX is all or nothing"
    );
    assert!(con.mset_nx::<_, _, bool>(&[("c", "3"), ("d", "4")]).await?);
    assert_eq!(con.strlen::<_, i64>("c").await?, 1);

    let mut bad = redis::cmd("SET");
    bad.arg("k").arg("v").arg("EX").arg(0);
    assert_eq!(
        server_error(&mut con, &bad).await,
        "ERR invalid expire time in 'set' command"
    );
    let mut bad = redis::cmd("SET");
    bad.arg("k").arg("v").arg("NX").arg("XX");
    assert_eq!(server_error(&mut con, &bad).await, "ERR syntax error");
    Ok(())
}

#[tokio::test]
async fn counters_append_and_ranges() -> Result {
    let server = TestServer::start().await;
    let mut con = server.client().await;
    assert_eq!(
        redis::cmd("INCR")
            .arg("n")
            .query_async::<i64>(&mut con)
            .await?,
        1
    );
    assert_eq!(con.incr::<_, _, i64>("n", 10).await?, 11);
    assert_eq!(
        redis::cmd("DECR")
            .arg("n")
            .query_async::<i64>(&mut con)
            .await?,
        10
    );
    assert_eq!(con.decr::<_, _, i64>("n", 25).await?, -15);
    assert_eq!(con.incr::<_, _, i64>("n", -5).await?, -20);
    assert_eq!(con.get::<_, String>("n").await?, "-20");

    con.set::<_, _, ()>("max", i64::MAX).await?;
    assert_eq!(
        server_error(&mut con, redis::cmd("INCR").arg("max")).await,
        "ERR increment or decrement would overflow"
    );
    assert_eq!(con.get::<_, i64>("max").await?, i64::MAX);
    con.set::<_, _, ()>("word", "abc").await?;
    assert_eq!(
        server_error(&mut con, redis::cmd("INCR").arg("word")).await,
        "ERR value is not an integer or out of range"
    );
    assert_eq!(
        server_error(&mut con, redis::cmd("INCRBY").arg("n").arg("1.5")).await,
        "ERR value is not an integer or out of range"
    );

    con.set::<_, _, ()>("f", "10.5").await?;
    assert_eq!(con.incr::<_, _, String>("f", 0.1f64).await?, "10.6");
    assert_eq!(con.incr::<_, _, String>("f", -10.6f64).await?, "0");
    assert_eq!(con.incr::<_, _, String>("f", 1.5f64).await?, "1.5");
    assert_eq!(con.incr::<_, _, f64>("fresh_f", 2.25f64).await?, 2.25);
    let mut float = redis::cmd("INCRBYFLOAT");
    float.arg("f").arg("3.0e3");
    assert_eq!(float.query_async::<String>(&mut con).await?, "3001.5");
    assert_eq!(
        server_error(&mut con, redis::cmd("INCRBYFLOAT").arg("word").arg(1)).await,
        "ERR value is not a valid float"
    );

    assert_eq!(con.append::<_, _, i64>("s", "Hello").await?, 5);
    assert_eq!(con.append::<_, _, i64>("s", " World").await?, 11);
    assert_eq!(con.getrange::<_, String>("s", 0, 4).await?, "Hello");
    assert_eq!(con.getrange::<_, String>("s", -5, -1).await?, "World");
    assert_eq!(con.getrange::<_, String>("s", 5, 2).await?, "");
    assert_eq!(
        con.getrange::<_, String>("s", -100, 100).await?,
        "Hello World"
    );
    assert_eq!(con.getrange::<_, String>("missing", 0, -1).await?, "");
    assert_eq!(con.setrange::<_, _, i64>("s", 6, "Redis").await?, 11);
    assert_eq!(con.get::<_, String>("s").await?, "Hello Redis");
    assert_eq!(con.setrange::<_, _, i64>("pad", 3, "x").await?, 4);
    assert_eq!(con.get::<_, Vec<u8>>("pad").await?, b"\0\0\0x");
    assert_eq!(con.setrange::<_, _, i64>("none", 0, "").await?, 0);
    assert!(
        !con.exists::<_, bool>("none").await?,
        "empty SETRANGE creates nothing"
    );
    assert_eq!(
        server_error(&mut con, redis::cmd("SETRANGE").arg("s").arg(-1).arg("x")).await,
        "ERR offset is out of range"
    );
    Ok(())
}

#[tokio::test]
async fn expiry_ttl_persist_and_real_expiration() -> Result {
    let server = TestServer::start().await;
    let mut con = server.client().await;
    assert_eq!(con.ttl::<_, i64>("missing").await?, -2);
    assert_eq!(con.pttl::<_, i64>("missing").await?, -2);
    con.set::<_, _, ()>("k", "v").await?;
    assert_eq!(con.ttl::<_, i64>("k").await?, -1);
    assert!(con.expire::<_, bool>("k", 100).await?);
    assert_eq!(con.ttl::<_, i64>("k").await?, 100);
    let pttl: i64 = con.pttl("k").await?;
    assert!((99_000..=100_000).contains(&pttl), "{pttl}");
    assert!(con.pexpire::<_, bool>("k", 5_000).await?);
    assert_eq!(con.ttl::<_, i64>("k").await?, 5);
    assert!(con.persist::<_, bool>("k").await?);
    assert!(!con.persist::<_, bool>("k").await?);
    assert_eq!(con.ttl::<_, i64>("k").await?, -1);
    assert!(!con.expire::<_, bool>("missing", 10).await?);
    // An expiry in the past deletes the key at once.
    assert!(con.expire_at::<_, bool>("k", 1).await?);
    assert!(!con.exists::<_, bool>("k").await?);
    con.set::<_, _, ()>("k", "v").await?;
    assert!(con.expire::<_, bool>("k", -1).await?);
    assert_eq!(con.get::<_, Option<String>>("k").await?, None);
    // GETEX sets and clears the TTL.
    con.set::<_, _, ()>("g", "v").await?;
    let v: String = con.get_ex("g", redis::Expiry::EX(40)).await?;
    assert_eq!(v, "v");
    assert_eq!(con.ttl::<_, i64>("g").await?, 40);
    let _: String = con.get_ex("g", redis::Expiry::PERSIST).await?;
    assert_eq!(con.ttl::<_, i64>("g").await?, -1);

    // Keys really expire.
    let px = SetOptions::default().with_expiration(SetExpiry::PX(40));
    let _: Option<String> = con.set_options("short", "v", px).await?;
    con.set::<_, _, ()>("pshort", "v").await?;
    assert!(con.pexpire::<_, bool>("pshort", 40).await?);
    assert_eq!(
        con.get::<_, Option<String>>("short").await?.as_deref(),
        Some("v")
    );
    assert_eq!(dbsize(&mut con).await?, 3);
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let n: i64 = con.exists(&["short", "pshort"]).await?;
        if n == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "keys did not expire");
    }
    assert_eq!(con.get::<_, Option<String>>("short").await?, None);
    assert_eq!(con.ttl::<_, i64>("pshort").await?, -2);
    assert_eq!(dbsize(&mut con).await?, 1);
    Ok(())
}

#[tokio::test]
async fn del_exists_type_keys_and_scan_iterator() -> Result {
    let server = TestServer::start().await;
    let mut con = server.client().await;
    let mut pipe = redis::pipe();
    for i in 0..150 {
        pipe.set(format!("user:{i}"), i).ignore();
    }
    pipe.set("other", 1).ignore().set("x", 2).ignore();
    pipe.exec_async(&mut con).await?;

    assert_eq!(
        con.exists::<_, i64>(&["user:1", "user:2", "nope", "user:1"])
            .await?,
        3
    );
    assert_eq!(
        con.key_type::<_, redis::ValueType>("x").await?,
        redis::ValueType::String
    );
    assert_eq!(
        con.key_type::<_, redis::ValueType>("nope").await?,
        redis::ValueType::None
    );
    let kind: String = redis::cmd("TYPE").arg("x").query_async(&mut con).await?;
    assert_eq!(kind, "string");
    assert_eq!(con.del::<_, i64>(&["x", "nope", "x"]).await?, 1);
    assert_eq!(dbsize(&mut con).await?, 151);

    let mut keys: Vec<String> = con.keys("user:1?").await?;
    keys.sort();
    let want: Vec<String> = (10..20).map(|i| format!("user:{i}")).collect();
    assert_eq!(keys, want);
    let all: Vec<String> = con.keys("*").await?;
    assert_eq!(all.len(), 151);

    let want: HashSet<String> = (0..150).map(|i| format!("user:{i}")).collect();
    let mut seen = HashSet::new();
    {
        let mut iter = con.scan_match::<_, String>("user:*").await?;
        while let Some(key) = iter.next_item().await {
            seen.insert(key?);
        }
    }
    assert_eq!(seen, want);

    let mut seen = HashSet::new();
    let mut returned = 0;
    {
        let opts = redis::ScanOptions::default()
            .with_count(7)
            .with_type("string");
        let mut iter = con.scan_options::<String>(opts).await?;
        while let Some(key) = iter.next_item().await {
            seen.insert(key?);
            returned += 1;
        }
    }
    assert_eq!(seen.len(), 151);
    assert!(returned >= 151);
    {
        let opts = redis::ScanOptions::default().with_type("hash");
        let mut iter = con.scan_options::<String>(opts).await?;
        assert!(iter.next_item().await.is_none(), "no hashes exist");
    }
    assert_eq!(
        server_error(&mut con, redis::cmd("SCAN").arg("notacursor")).await,
        "ERR invalid cursor"
    );
    Ok(())
}

#[tokio::test]
async fn binary_safe_keys_and_values() -> Result {
    let server = TestServer::start().await;
    let mut con = server.client().await;
    let big: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    let pairs: Vec<(&[u8], Vec<u8>)> = vec![
        (b"\xff\xfe\x80 not utf-8", b"\xc3\x28\xa0\xa1".to_vec()),
        (
            b"crlf\r\nkey\r\n",
            b"line1\r\nline2\r\n*1\r\n$3\r\n".to_vec(),
        ),
        (b"nul\0key\0", b"\0\0a\0".to_vec()),
        (b"", b"value of the empty key".to_vec()),
        (b"dir/sub/file.txt", b"/".to_vec()),
        (b"empty value", Vec::new()),
        (b"big", big.clone()),
    ];
    for (key, value) in &pairs {
        con.set::<_, _, ()>(key, value).await?;
    }
    for (key, value) in &pairs {
        let got: Vec<u8> = con.get(key).await?;
        assert_eq!(&got, value, "key {}", key.escape_ascii());
        assert_eq!(con.strlen::<_, usize>(key).await?, value.len());
    }
    let keys: Vec<&[u8]> = pairs.iter().map(|(k, _)| *k).collect();
    let got: Vec<Vec<u8>> = con.mget(&keys).await?;
    let want: Vec<Vec<u8>> = pairs.iter().map(|(_, v)| v.clone()).collect();
    assert_eq!(got, want);

    let listed: BTreeSet<Vec<u8>> = con
        .keys::<_, Vec<Vec<u8>>>("*")
        .await?
        .into_iter()
        .collect();
    let want: BTreeSet<Vec<u8>> = keys.iter().map(|k| k.to_vec()).collect();
    assert_eq!(listed, want);
    let slashed: Vec<Vec<u8>> = con.keys("dir/*").await?;
    assert_eq!(slashed, vec![b"dir/sub/file.txt".to_vec()]);

    assert_eq!(
        con.getrange::<_, Vec<u8>>("big", 1000, 1999).await?,
        &big[1000..2000]
    );
    assert_eq!(
        con.append::<_, _, usize>("big", b"\r\n\0").await?,
        big.len() + 3
    );
    let tail: Vec<u8> = con.getrange("big", -4, -1).await?;
    assert_eq!(tail, [big[big.len() - 1], b'\r', b'\n', 0]);
    assert_eq!(con.append::<_, _, usize>(b"\0", b"\xff").await?, 1);
    assert_eq!(con.get::<_, Vec<u8>>(b"\0").await?, b"\xff");

    let raw: Value = redis::cmd("GET").arg(b"").query_async(&mut con).await?;
    assert_eq!(raw, bulk(b"value of the empty key"));
    assert_eq!(con.del::<_, i64>(b"").await?, 1);
    assert!(!con.exists::<_, bool>(b"").await?);
    assert_eq!(
        con.get::<_, Option<Vec<u8>>>(b"empty value").await?,
        Some(Vec::new())
    );
    Ok(())
}

#[tokio::test]
async fn pipeline_of_a_thousand_commands() -> Result {
    let server = TestServer::start().await;
    let mut con = server.client().await;
    let mut pipe = redis::pipe();
    for _ in 0..1000 {
        pipe.incr("p", 1);
    }
    let counts: Vec<i64> = pipe.query_async(&mut con).await?;
    assert_eq!(counts, (1..=1000).collect::<Vec<i64>>());

    let mut pipe = redis::pipe();
    for i in 0..500 {
        pipe.set(format!("k{i}"), format!("v{i}")).ignore();
        pipe.get(format!("k{i}"));
    }
    let values: Vec<String> = pipe.query_async(&mut con).await?;
    assert_eq!(values.len(), 500);
    assert!(values
        .iter()
        .enumerate()
        .all(|(i, v)| *v == format!("v{i}")));
    assert_eq!(dbsize(&mut con).await?, 501);
    Ok(())
}

#[tokio::test]
async fn atomic_pipeline_is_multi_exec() -> Result {
    let server = TestServer::start().await;
    let mut con = server.client().await;
    let (n, s, missing): (i64, String, Option<String>) = redis::pipe()
        .atomic()
        .set("a", 1)
        .ignore()
        .incr("a", 5)
        .set("b", "x")
        .ignore()
        .append("b", "yz")
        .ignore()
        .get("b")
        .get("nope")
        .query_async(&mut con)
        .await?;
    assert_eq!((n, s.as_str(), missing), (6, "xyz", None));
    let mut other = server.client().await;
    let got: Vec<String> = other.mget(&["a", "b"]).await?;
    assert_eq!(got, ["6", "xyz"]);
    // An empty transaction.
    let empty: Vec<Value> = redis::pipe().atomic().query_async(&mut con).await?;
    assert!(empty.is_empty());
    Ok(())
}

#[tokio::test]
async fn run_time_errors_inside_exec_do_not_stop_the_rest() -> Result {
    let server = TestServer::start().await;
    let mut con = server.client().await;
    let results: Vec<Result<Value>> = redis::pipe()
        .atomic()
        .set("s", "text")
        .incr("s", 1)
        .incr("n", 5)
        .cmd("SET")
        .arg("e")
        .arg("v")
        .arg("EX")
        .arg(0)
        .cmd("SET")
        .arg("t")
        .arg("v")
        .arg("BOGUS")
        .get("n")
        .ignore_errors()
        .query_async(&mut con)
        .await?;
    assert_eq!(results.len(), 6);
    assert_eq!(results[0].as_ref().unwrap(), &Value::Okay);
    assert_eq!(
        error_text(results[1].as_ref().unwrap_err()),
        "ERR value is not an integer or out of range"
    );
    assert_eq!(results[2].as_ref().unwrap(), &Value::Int(5));
    assert_eq!(
        error_text(results[3].as_ref().unwrap_err()),
        "ERR invalid expire time in 'set' command"
    );
    assert_eq!(
        error_text(results[4].as_ref().unwrap_err()),
        "ERR syntax error"
    );
    assert_eq!(results[5].as_ref().unwrap(), &bulk(b"5"));
    assert_eq!(con.exists::<_, i64>(&["e", "t"]).await?, 0);

    // Without ignore_errors the crate reports the failure, but the other commands ran.
    let failed = redis::pipe()
        .atomic()
        .incr("n", 1)
        .incr("s", 1)
        .incr("n", 1)
        .query_async::<Value>(&mut con)
        .await;
    assert!(failed.is_err(), "{failed:?}");
    assert_eq!(con.get::<_, i64>("n").await?, 7);

    // A queue-time error (unknown command) aborts the whole transaction.
    let aborted = redis::pipe()
        .atomic()
        .set("n", 100)
        .cmd("NOSUCHCOMMAND")
        .arg("x")
        .query_async::<Value>(&mut con)
        .await;
    // The crate reports the queued command's error for the aborted EXEC.
    let e = aborted.expect_err("EXEC must abort");
    assert!(
        format!("{e:?}")
            .contains("unknown command 'NOSUCHCOMMAND', with args beginning with: 'x' "),
        "{e:?}"
    );
    assert_eq!(con.get::<_, i64>("n").await?, 7);
    // The connection is usable afterwards (not left inside MULTI).
    let pong: String = redis::cmd("PING").query_async(&mut con).await?;
    assert_eq!(pong, "PONG");
    assert_eq!(
        server_error(&mut con, &redis::cmd("EXEC")).await,
        "ERR EXEC without MULTI"
    );
    Ok(())
}

#[tokio::test]
async fn watch_aborts_exec_when_another_connection_writes() -> Result {
    let server = TestServer::start().await;
    let mut a = server.client().await;
    let mut b = server.client().await;
    a.set::<_, _, ()>("k", "1").await?;

    redis::cmd("WATCH").arg("k").exec_async(&mut a).await?;
    b.set::<_, _, ()>("k", "2").await?;
    let r: Option<(String,)> = redis::pipe()
        .atomic()
        .set("k", "3")
        .ignore()
        .get("k")
        .query_async(&mut a)
        .await?;
    assert_eq!(r, None, "EXEC must return nil");
    assert_eq!(a.get::<_, String>("k").await?, "2");

    // Watches are gone after EXEC: the same transaction now commits.
    let r: Option<(String,)> = redis::pipe()
        .atomic()
        .set("k", "3")
        .ignore()
        .get("k")
        .query_async(&mut a)
        .await?;
    assert_eq!(r, Some(("3".into(),)));

    // A watched key that nobody touches, or that is rewritten by no one: EXEC runs.
    redis::cmd("WATCH")
        .arg("k")
        .arg("ghost")
        .exec_async(&mut a)
        .await?;
    b.set::<_, _, ()>("unrelated", "x").await?;
    let r: Option<(i64,)> = redis::pipe()
        .atomic()
        .incr("k", 1)
        .query_async(&mut a)
        .await?;
    assert_eq!(r, Some((4,)));

    // Deleting and expiring a watched key also count as changes.
    redis::cmd("WATCH").arg("k").exec_async(&mut a).await?;
    b.del::<_, ()>("k").await?;
    let r: Option<(i64,)> = redis::pipe()
        .atomic()
        .incr("k", 1)
        .query_async(&mut a)
        .await?;
    assert_eq!(r, None);
    b.set::<_, _, ()>("k", "10").await?;
    redis::cmd("WATCH").arg("k").exec_async(&mut a).await?;
    assert!(b.expire::<_, bool>("k", 100).await?);
    let r: Option<(i64,)> = redis::pipe()
        .atomic()
        .incr("k", 1)
        .query_async(&mut a)
        .await?;
    assert_eq!(r, None);
    assert_eq!(b.get::<_, i64>("k").await?, 10);
    Ok(())
}

/// The crate's blocking `transaction` helper: a conflicting write during the first attempt
/// makes EXEC return nil, the helper retries, the second attempt commits.
#[tokio::test]
async fn transaction_helper_retries_after_a_conflict() {
    let server = TestServer::start().await;
    let url = server.url();
    let attempts = tokio::task::spawn_blocking(move || -> Result<(usize, i64)> {
        use redis::Commands;
        let client = redis::Client::open(url.as_str())?;
        let mut con = client.get_connection()?;
        let mut intruder = client.get_connection()?;
        con.set::<_, _, ()>("balance", 100)?;
        let mut attempts = 0;
        let (final_balance,): (i64,) = redis::transaction(&mut con, &["balance"], |con, pipe| {
            attempts += 1;
            let balance: i64 = con.get("balance")?;
            if attempts == 1 {
                intruder.incr::<_, _, i64>("balance", 50)?;
            }
            pipe.set("balance", balance - 30)
                .ignore()
                .get("balance")
                .query(con)
        })?;
        Ok((attempts, final_balance))
    })
    .await
    .expect("join")
    .expect("transaction");
    assert_eq!(attempts, (2, 120));
    let mut con = server.client().await;
    assert_eq!(con.get::<_, i64>("balance").await.unwrap(), 120);
}

/// Optimistic read-modify-write increments from several connections with
/// `transaction_async`: every increment lands exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_async_counter_under_contention() -> Result {
    let server = TestServer::start().await;
    let attempts = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let con = server.client().await;
        let attempts = attempts.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..25 {
                let attempts = attempts.clone();
                let (_,): (i64,) = redis::aio::transaction_async(
                    con.clone(),
                    &["ctr"],
                    move |mut con, mut pipe| {
                        attempts.fetch_add(1, Ordering::Relaxed);
                        async move {
                            let v: Option<i64> = con.get("ctr").await?;
                            // Give the other tasks a chance to interleave.
                            tokio::task::yield_now().await;
                            pipe.set("ctr", v.unwrap_or(0) + 1)
                                .ignore()
                                .get("ctr")
                                .query_async(&mut con)
                                .await
                        }
                    },
                )
                .await?;
            }
            Ok::<_, RedisError>(())
        }));
    }
    for t in tasks {
        t.await.expect("join")?;
    }
    let mut con = server.client().await;
    assert_eq!(con.get::<_, i64>("ctr").await?, 100);
    assert!(attempts.load(Ordering::Relaxed) >= 100);
    Ok(())
}

#[tokio::test]
async fn resp3_nulls_hello_and_maps() -> Result {
    let server = TestServer::start().await;
    let mut con = connect(&server.url_resp3()).await?;
    let raw: Value = redis::cmd("GET")
        .arg("missing")
        .query_async(&mut con)
        .await?;
    assert_eq!(raw, Value::Nil);
    assert_eq!(con.get::<_, Option<String>>("missing").await?, None);
    con.set::<_, _, ()>("a", "1").await?;
    let got: Vec<Option<String>> = con.mget(&["a", "missing"]).await?;
    assert_eq!(got, [Some("1".to_string()), None]);

    let hello: Value = redis::cmd("HELLO").arg(3).query_async(&mut con).await?;
    let Value::Map(fields) = hello else {
        panic!("HELLO 3 is not a map: {hello:?}")
    };
    let field = |name: &[u8]| {
        fields
            .iter()
            .find(|(k, _)| *k == bulk(name))
            .map(|(_, v)| v.clone())
    };
    assert_eq!(field(b"server"), Some(bulk(b"redis")));
    assert_eq!(field(b"version"), Some(bulk(b"7.0.15")));
    assert_eq!(field(b"proto"), Some(Value::Int(3)));
    assert_eq!(field(b"mode"), Some(bulk(b"standalone")));
    assert_eq!(field(b"role"), Some(bulk(b"master")));
    assert_eq!(field(b"modules"), Some(Value::Array(vec![])));
    assert_eq!(fields.len(), 7);

    let config: Value = redis::cmd("CONFIG")
        .arg("GET")
        .arg("save")
        .query_async(&mut con)
        .await?;
    assert_eq!(config, Value::Map(vec![(bulk(b"save"), bulk(b""))]));
    let config: Value = redis::cmd("CONFIG")
        .arg("GET")
        .arg("maxclients")
        .query_async(&mut con)
        .await?;
    assert_eq!(
        config,
        Value::Map(vec![(bulk(b"maxclients"), bulk(b"10000"))])
    );
    let info: String = redis::cmd("CLIENT")
        .arg("INFO")
        .query_async(&mut con)
        .await?;
    assert!(info.contains(" resp=3"), "{info}");
    let info: Value = redis::cmd("INFO")
        .arg("server")
        .query_async(&mut con)
        .await?;
    assert!(
        matches!(&info, Value::VerbatimString { text, .. } if text.contains("redis_version:7.0.15")),
        "{info:?}"
    );
    // INCRBYFLOAT stays a bulk string in RESP3, as in Redis 7.0.
    let f: Value = redis::cmd("INCRBYFLOAT")
        .arg("f")
        .arg("1.5")
        .query_async(&mut con)
        .await?;
    assert_eq!(f, bulk(b"1.5"));

    // An EXEC aborted by WATCH is a RESP3 null; the crate sees nil.
    let mut other = server.client().await;
    redis::cmd("WATCH").arg("a").exec_async(&mut con).await?;
    other.set::<_, _, ()>("a", "2").await?;
    let r: Option<(i64,)> = redis::pipe()
        .atomic()
        .incr("a", 1)
        .query_async(&mut con)
        .await?;
    assert_eq!(r, None);
    let r: Option<(i64, Option<String>)> = redis::pipe()
        .atomic()
        .incr("a", 1)
        .get("missing")
        .query_async(&mut con)
        .await?;
    assert_eq!(r, Some((3, None)));
    Ok(())
}

#[tokio::test]
async fn requirepass_needs_auth() -> Result {
    let server = TestServer::with_config(Config {
        requirepass: Some("s3cret".into()),
        ..Config::default()
    })
    .await;
    let addr = server.addr;

    let mut anonymous = server.client().await;
    let e = anonymous.get::<_, Option<String>>("k").await.unwrap_err();
    assert_eq!(error_text(&e), "NOAUTH Authentication required.");
    let e = anonymous.set::<_, _, ()>("k", "v").await.unwrap_err();
    assert_eq!(e.code(), Some("NOAUTH"));
    let e = redis::cmd("AUTH")
        .arg("wrong")
        .query_async::<()>(&mut anonymous)
        .await
        .unwrap_err();
    assert_eq!(
        error_text(&e),
        "WRONGPASS invalid username-password pair or user is disabled."
    );
    redis::cmd("AUTH")
        .arg("s3cret")
        .exec_async(&mut anonymous)
        .await?;
    anonymous.set::<_, _, ()>("k", "v").await?;

    let mut con = connect(&format!("redis://:s3cret@{addr}/")).await?;
    assert_eq!(con.get::<_, String>("k").await?, "v");
    con.set::<_, _, ()>("k", "w").await?;
    let mut con = connect(&format!("redis://default:s3cret@{addr}/")).await?;
    assert_eq!(con.get::<_, String>("k").await?, "w");
    let mut con = connect(&format!("redis://:s3cret@{addr}/?protocol=resp3")).await?;
    assert_eq!(con.get::<_, String>("k").await?, "w");
    let raw: Value = redis::cmd("GET")
        .arg("missing")
        .query_async(&mut con)
        .await?;
    assert_eq!(raw, Value::Nil);

    assert!(connect(&format!("redis://:wrong@{addr}/")).await.is_err());
    assert!(connect(&format!("redis://:wrong@{addr}/?protocol=resp3"))
        .await
        .is_err());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_connections_increment_without_losing_updates() -> Result {
    let server = TestServer::start().await;
    let mut tasks = Vec::new();
    for i in 0..50 {
        let mut con = server.client().await;
        tasks.push(tokio::spawn(async move {
            for _ in 0..100 {
                redis::cmd("INCR")
                    .arg("total")
                    .query_async::<i64>(&mut con)
                    .await?;
                con.incr::<_, _, i64>(format!("own:{i}"), 1).await?;
            }
            Ok::<_, RedisError>(())
        }));
    }
    for t in tasks {
        t.await.expect("join")?;
    }
    let mut con = server.client().await;
    assert_eq!(con.get::<_, i64>("total").await?, 5000);
    let keys: Vec<String> = (0..50).map(|i| format!("own:{i}")).collect();
    let own: Vec<i64> = con.mget(&keys).await?;
    assert!(own.iter().all(|&n| n == 100), "{own:?}");
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut con)
        .await?;
    assert!(info.contains("connected_clients:"), "{info}");
    Ok(())
}

/// Writers commit `SET a i; SET b i` in MULTI/EXEC; readers using MGET or MULTI/GET/GET/EXEC
/// must never observe a state between two transactions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_half_of_a_transaction() -> Result {
    let server = TestServer::start().await;
    let mut setup = server.client().await;
    setup.mset::<_, _, ()>(&[("a", 0), ("b", 0)]).await?;
    let done = Arc::new(AtomicBool::new(false));

    let mut writers = Vec::new();
    for w in 0..2i64 {
        let mut con = server.client().await;
        writers.push(tokio::spawn(async move {
            for i in 1..=250i64 {
                let v = i * 2 + w;
                redis::pipe()
                    .atomic()
                    .set("a", v)
                    .ignore()
                    .set("b", v)
                    .ignore()
                    .exec_async(&mut con)
                    .await?;
            }
            Ok::<_, RedisError>(())
        }));
    }
    let mut readers = Vec::new();
    for r in 0..4 {
        let mut con = server.client().await;
        let done = done.clone();
        readers.push(tokio::spawn(async move {
            let mut seen = HashSet::new();
            let mut reads = 0;
            while !done.load(Ordering::Acquire) || reads == 0 {
                let (a, b): (i64, i64) = if r % 2 == 0 {
                    con.mget(&["a", "b"]).await?
                } else {
                    redis::pipe()
                        .atomic()
                        .get("a")
                        .get("b")
                        .query_async(&mut con)
                        .await?
                };
                assert_eq!(a, b, "torn read (reader {r})");
                seen.insert(a);
                reads += 1;
            }
            Ok::<_, RedisError>(seen)
        }));
    }
    for w in writers {
        w.await.expect("join")?;
    }
    done.store(true, Ordering::Release);
    let mut distinct = HashSet::new();
    for r in readers {
        distinct.extend(r.await.expect("join")?);
    }
    assert!(
        distinct.len() > 2,
        "readers overlapped with writers: {distinct:?}"
    );
    let (a, b): (i64, i64) = setup.mget(&["a", "b"]).await?;
    assert_eq!(a, b);
    assert!(a == 500 || a == 501, "{a}");
    Ok(())
}

#[tokio::test]
async fn embedded_backend_keeps_data_across_a_graceful_restart() -> Result {
    let dir = tempfile::tempdir().expect("tempdir");
    let big: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    {
        let server = TestServer::embedded(dir.path()).await;
        let mut con = server.client().await;
        con.set::<_, _, ()>("plain", "hello").await?;
        con.set::<_, _, ()>(b"bin\0\xff\r\n", b"\x00\x01\xfe\xff")
            .await?;
        con.set::<_, _, ()>("big", &big).await?;
        for _ in 0..10 {
            con.incr::<_, _, i64>("counter", 3).await?;
        }
        con.set_ex::<_, _, ()>("ttl", "v", 1000).await?;
        con.set::<_, _, ()>("persisted", "v").await?;
        con.expire::<_, bool>("persisted", 1000).await?;
        con.persist::<_, bool>("persisted").await?;
        con.set::<_, _, ()>("deleted", "v").await?;
        con.del::<_, ()>("deleted").await?;
        redis::pipe()
            .atomic()
            .set("tx:a", 1)
            .ignore()
            .set("tx:b", 2)
            .ignore()
            .append("plain", " world")
            .ignore()
            .exec_async(&mut con)
            .await?;
        drop(con);
        server.stop().await;
    }
    {
        let server = TestServer::embedded(dir.path()).await;
        let mut con = server.client().await;
        assert_eq!(con.get::<_, String>("plain").await?, "hello world");
        assert_eq!(
            con.get::<_, Vec<u8>>(b"bin\0\xff\r\n").await?,
            b"\x00\x01\xfe\xff"
        );
        assert_eq!(con.get::<_, Vec<u8>>("big").await?, big);
        assert_eq!(con.get::<_, i64>("counter").await?, 30);
        let ttl: i64 = con.ttl("ttl").await?;
        assert!((990..=1000).contains(&ttl), "{ttl}");
        assert_eq!(con.ttl::<_, i64>("persisted").await?, -1);
        assert!(!con.exists::<_, bool>("deleted").await?);
        let tx: (i64, i64) = con.mget(&["tx:a", "tx:b"]).await?;
        assert_eq!(tx, (1, 2));
        assert_eq!(dbsize(&mut con).await?, 8);
        // Writes after a restart are durable too; FLUSHALL included.
        con.incr::<_, _, i64>("counter", 1).await?;
        redis::cmd("FLUSHALL").exec_async(&mut con).await?;
        con.set::<_, _, ()>("only", "1").await?;
        drop(con);
        server.stop().await;
    }
    let server = TestServer::embedded(dir.path()).await;
    let mut con = server.client().await;
    assert_eq!(dbsize(&mut con).await?, 1);
    assert_eq!(con.get::<_, Option<String>>("counter").await?, None);
    assert_eq!(con.get::<_, String>("only").await?, "1");
    drop(con);
    server.stop().await;
    Ok(())
}

#[tokio::test]
async fn flushall_dbsize_and_info_keyspace() -> Result {
    let server = TestServer::start().await;
    let mut con = server.client().await;
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut con)
        .await?;
    assert_eq!(info, "# Keyspace\r\n");
    con.mset::<_, _, ()>(&[("a", 1), ("b", 2), ("c", 3)])
        .await?;
    con.expire::<_, ()>("c", 100).await?;
    assert_eq!(dbsize(&mut con).await?, 3);
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut con)
        .await?;
    assert!(
        info.starts_with("# Keyspace\r\ndb0:keys=3,expires=1,avg_ttl="),
        "{info:?}"
    );
    let info: String = redis::cmd("INFO").query_async(&mut con).await?;
    for line in [
        "redis_version:7.0.15\r\n",
        "# Keyspace\r\ndb0:keys=3,expires=1,",
    ] {
        assert!(info.contains(line), "{line:?} not in {info:?}");
    }
    let parsed: redis::InfoDict = redis::cmd("INFO").query_async(&mut con).await?;
    assert_eq!(
        parsed.get::<String>("redis_version").as_deref(),
        Some("7.0.15")
    );

    redis::cmd("FLUSHALL").exec_async(&mut con).await?;
    assert_eq!(dbsize(&mut con).await?, 0);
    assert!(con.keys::<_, Vec<String>>("*").await?.is_empty());
    let info: String = redis::cmd("INFO")
        .arg("keyspace")
        .query_async(&mut con)
        .await?;
    assert_eq!(info, "# Keyspace\r\n");
    con.set::<_, _, ()>("x", 1).await?;
    redis::cmd("FLUSHDB")
        .arg("SYNC")
        .exec_async(&mut con)
        .await?;
    assert_eq!(dbsize(&mut con).await?, 0);
    assert_eq!(
        server_error(&mut con, redis::cmd("FLUSHALL").arg("LATER")).await,
        "ERR syntax error"
    );
    Ok(())
}
