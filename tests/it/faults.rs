//! The guarantees that depend on timing between commits, provoked deterministically on every
//! backend (`AFT_TEST_BACKEND`): the test backend sits behind the fault wrapper, which loses
//! replies, refuses commits, or holds a commit in flight at a gate for as long as a test
//! needs. Clients talk to a real server over sockets.

use std::time::Duration;

use aft::config::Config;

use crate::harness::{query, TestServer};

fn info_field(info: &str, name: &str) -> u64 {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in INFO"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_increment_whose_reply_was_lost_is_settled_and_counted_by_the_next_one() {
    let (server, faults) = TestServer::with_faults(Config::default()).await;
    let mut con = server.client().await;
    let _: () = query(&mut con, &["SET", "c", "10"]).await.unwrap();
    faults.lose_next_replies(1);
    let lost = query::<i64>(&mut con, &["INCR", "c"]).await.unwrap_err();
    assert!(
        lost.to_string().contains("commit outcome unknown"),
        "{lost}"
    );
    // The backend refuses commits for a while: the lost INCR stays unsettled, and the next
    // INCR must wait for it rather than increment the 10 it can see.
    faults.refuse_commits(true);
    let mut other = server.client().await;
    let next = tokio::spawn(async move { query::<i64>(&mut other, &["INCR", "c"]).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!next.is_finished(), "an INCR went through a fenced key");
    faults.refuse_commits(false);
    assert_eq!(next.await.unwrap().unwrap(), 12);
    let c: i64 = query(&mut con, &["GET", "c"]).await.unwrap();
    assert_eq!(c, 12);
    let info: String = query(&mut con, &["INFO", "transactions"]).await.unwrap();
    assert_eq!(info_field(&info, "aft_commits_outcome_unknown"), 1);
    assert_eq!(info_field(&info, "aft_commits_unresolved"), 0);
    assert_eq!(info_field(&info, "aft_unknown_found_committed"), 1);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flushall_deletes_a_commit_in_flight_whole() {
    let (server, faults) = TestServer::with_faults(Config::default()).await;
    let mut con = server.client().await;
    let _: () = query(&mut con, &["SET", "a", "old"]).await.unwrap();
    let gate = faults.pause_next_commits(1);
    let mut writer = server.client().await;
    let mset =
        tokio::spawn(
            async move { query::<()>(&mut writer, &["MSET", "a", "new", "b", "new"]).await },
        );
    gate.until_waiting(1).await;
    let _: () = query(&mut con, &["FLUSHALL"]).await.unwrap();
    gate.open();
    mset.await.unwrap().unwrap();
    let got: Vec<Option<String>> = query(&mut con, &["MGET", "a", "b"]).await.unwrap();
    assert_eq!(
        got,
        vec![None, None],
        "half of the MSET survived the FLUSHALL"
    );
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_pipelines_that_read_each_others_writes_never_both_read_nil() {
    let (server, faults) = TestServer::with_faults(Config::default()).await;
    let mut first = server.client().await;
    let mut second = server.client().await;
    // The first group's commit is held in flight after it read b.
    let gate = faults.pause_next_commits(1);
    let a = tokio::spawn(async move {
        redis::pipe()
            .set("a", 1)
            .get("b")
            .query_async::<((), Option<i64>)>(&mut first)
            .await
    });
    gate.until_waiting(1).await;
    let b = tokio::spawn(async move {
        redis::pipe()
            .set("b", 1)
            .get("a")
            .query_async::<((), Option<i64>)>(&mut second)
            .await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    gate.open();
    let ((), b_seen_by_first) = a.await.unwrap().unwrap();
    let ((), a_seen_by_second) = b.await.unwrap().unwrap();
    assert!(
        b_seen_by_first.is_some() || a_seen_by_second.is_some(),
        "both pipelines read nil"
    );
    assert_eq!(a_seen_by_second, Some(1));
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_of_an_absent_key_fails_after_a_set_and_a_del_even_once_collected() {
    let config = Config {
        gc_interval_ms: 10,
        status_retention_secs: 0,
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let mut watcher = server.client().await;
    let mut other = server.client().await;
    let _: () = query(&mut watcher, &["WATCH", "k"]).await.unwrap();
    let _: () = query(&mut other, &["SET", "k", "1"]).await.unwrap();
    let _: i64 = query(&mut other, &["DEL", "k"]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let info: String = query(&mut other, &["INFO", "gc"]).await.unwrap();
    assert!(info_field(&info, "aft_gc_runs") > 3, "{info}");
    let exec: Option<Vec<String>> = redis::pipe()
        .atomic()
        .set("k", "2")
        .query_async(&mut watcher)
        .await
        .unwrap();
    assert_eq!(exec, None, "EXEC passed although k changed after WATCH");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_abandoned_snapshot_is_revoked_and_stops_holding_garbage_collection() {
    let config = Config {
        gc_interval_ms: 10,
        max_snapshot_age_ms: 300,
        ..Config::default()
    };
    let server = TestServer::with_config(config).await;
    let mut holder = server.client().await;
    let mut writer = server.client().await;
    let _: () = query(&mut writer, &["SET", "k", "0"]).await.unwrap();
    let _: String = query(&mut holder, &["AFT.BEGIN"]).await.unwrap();
    let _: String = query(&mut holder, &["GET", "k"]).await.unwrap();
    for i in 0..50 {
        let _: () = query(&mut writer, &["SET", "k", &i.to_string()])
            .await
            .unwrap();
    }
    let info: String = query(&mut writer, &["INFO", "gc"]).await.unwrap();
    assert!(
        info_field(&info, "aft_versions_live") > 40,
        "the young snapshot holds: {info}"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    let info: String = query(&mut writer, &["INFO", "gc"]).await.unwrap();
    assert_eq!(info_field(&info, "aft_versions_live"), 1, "{info}");
    let stale = query::<String>(&mut holder, &["GET", "k"])
        .await
        .unwrap_err();
    assert!(stale.to_string().contains("snapshot too old"), "{stale}");
    let info: String = query(&mut writer, &["INFO", "transactions"]).await.unwrap();
    assert_eq!(info_field(&info, "aft_snapshots_revoked"), 1);
    server.stop().await;
}
