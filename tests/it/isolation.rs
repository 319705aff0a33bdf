//! One client cannot hurt the others: keyspace-wide commands cost what they return, and a
//! pipeline of large replies is written as it goes instead of piling up in memory.
//!
//! These run on the memory backend whatever `AFT_TEST_BACKEND` says: they measure aft's own
//! work, not a backend's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aft::config::Config;
use aft::storage::memory::MemoryStorage;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::harness::TestServer;

const KEYS: usize = 200_000;

async fn memory_server() -> TestServer {
    TestServer::with_storage(Arc::new(MemoryStorage::new()), Config::default()).await
}

/// Loads `KEYS` keys, 1,000 per MSET.
async fn load(con: &mut redis::aio::MultiplexedConnection) {
    for chunk in 0..KEYS / 1000 {
        let mut mset = redis::cmd("MSET");
        for i in chunk * 1000..(chunk + 1) * 1000 {
            mset.arg(format!("key:{i}")).arg("v");
        }
        let _: () = mset.query_async(con).await.expect("MSET");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scans_cost_their_count_and_do_not_starve_other_connections() {
    let server = memory_server().await;
    let mut con = server.client().await;
    load(&mut con).await;
    let dbsize: usize = redis::cmd("DBSIZE").query_async(&mut con).await.unwrap();
    assert_eq!(dbsize, KEYS);

    // A whole scan returns every key, about COUNT per call.
    let mut cursor = 0u64;
    let mut seen = std::collections::HashSet::new();
    let mut calls = 0;
    loop {
        let (next, keys): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("COUNT")
            .arg(1000)
            .query_async(&mut con)
            .await
            .unwrap();
        assert!(keys.len() <= 1010, "a call returned {} keys", keys.len());
        seen.extend(keys);
        calls += 1;
        cursor = next;
        if cursor == 0 {
            break;
        }
    }
    assert_eq!(seen.len(), KEYS);
    assert!((190..=210).contains(&calls), "{calls} calls of COUNT 1000");

    // Two clients pipeline SCANs (and DBSIZE, RANDOMKEY) as fast as they can while a third
    // one pings: its pings are answered promptly throughout.
    let stop = Arc::new(AtomicBool::new(false));
    let scans = Arc::new(AtomicU64::new(0));
    let mut scanners = Vec::new();
    for _ in 0..2 {
        let (stop, scans) = (stop.clone(), scans.clone());
        let mut con = server.client().await;
        scanners.push(tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                let mut pipe = redis::pipe();
                for _ in 0..32 {
                    pipe.cmd("SCAN").arg(0).arg("COUNT").arg(10);
                }
                pipe.cmd("DBSIZE").cmd("RANDOMKEY");
                let _: Vec<redis::Value> = pipe.query_async(&mut con).await.expect("scans");
                scans.fetch_add(32, Ordering::Relaxed);
            }
        }));
    }
    let mut pinger = server.client().await;
    let mut worst = Duration::ZERO;
    let until = Instant::now() + Duration::from_secs(2);
    while Instant::now() < until {
        let start = Instant::now();
        let _: String = redis::cmd("PING").query_async(&mut pinger).await.unwrap();
        worst = worst.max(start.elapsed());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for s in scanners {
        s.await.unwrap();
    }
    assert!(scans.load(Ordering::Relaxed) >= 64, "the scanners ran");
    // Generous: a walk of the keyspace per SCAN made pings wait for seconds here.
    assert!(worst < Duration::from_secs(1), "a PING waited {worst:?}");
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pipeline_of_large_replies_is_written_as_it_goes() {
    let server = memory_server().await;
    let mut con = server.client().await;
    const VALUE: usize = 1 << 20;
    const GETS: usize = 200;
    let _: () = redis::cmd("SET")
        .arg("big")
        .arg(vec![b'x'; VALUE])
        .query_async(&mut con)
        .await
        .unwrap();
    // Raw pipeline: every request sent before reading any reply.
    let mut raw = TcpStream::connect(server.addr).await.unwrap();
    let request = b"*2\r\n$3\r\nGET\r\n$3\r\nbig\r\n".repeat(GETS);
    raw.write_all(&request).await.unwrap();
    // The client reads slowly; the server must wait for it rather than buffer 200 MiB.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let reply_len = format!("${VALUE}\r\n").len() + VALUE + 2;
    let mut received = 0;
    let mut buf = vec![0u8; 1 << 16];
    while received < reply_len * GETS {
        let n = raw.read(&mut buf).await.unwrap();
        assert!(n > 0, "connection closed after {received} bytes");
        received += n;
    }
    assert_eq!(received, reply_len * GETS);
    let info: String = redis::cmd("INFO")
        .arg("clients")
        .query_async(&mut con)
        .await
        .unwrap();
    let peak: usize = info
        .lines()
        .find_map(|l| l.strip_prefix("client_recent_max_output_buffer:"))
        .and_then(|v| v.trim().parse().ok())
        .expect("client_recent_max_output_buffer in INFO");
    // The flush mark plus one reply, not the whole pipeline.
    assert!(
        peak < 2 * reply_len + (64 << 10),
        "{peak} bytes of replies held at once"
    );
    server.stop().await;
}
