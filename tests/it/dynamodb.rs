//! The DynamoDB backend through the real binary: `aft serve --backend dynamodb://…` as a child
//! process against an emulator that runs in the test process (and so outlives every `aft`).
//!
//! Transactions here write 150 keys, more than one `TransactWriteItems` holds, so they take
//! the backend's general path (pending marker, batches, then the commit record): a SIGKILL
//! lands between its steps, and every restart must show each transaction whole or not at
//! all, never older than the last acknowledged one.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aft::storage::dynamodb::DynamoDbStorage;
use aft::storage::Storage;

use crate::core_props::{seed_override, Rng};
use crate::harness::{connect_patient as connect, Emulator, Process};

const KEYS: usize = 150;

fn key(i: usize) -> String {
    format!("big:{i:03}")
}

/// MSETs every key to the next sequence number until told to stop or a reply fails;
/// `acked` is the last acknowledged number, `sent` the last one sent.
async fn writer(
    addr: std::net::SocketAddr,
    mut seq: u64,
    acked: Arc<AtomicU64>,
    sent: Arc<AtomicU64>,
    stop: Arc<AtomicBool>,
) -> u64 {
    let Ok(mut con) = connect(addr).await else {
        return seq;
    };
    while !stop.load(Ordering::SeqCst) {
        seq += 1;
        sent.store(seq, Ordering::SeqCst);
        let mut cmd = redis::cmd("MSET");
        for i in 0..KEYS {
            cmd.arg(key(i)).arg(format!("{seq}:{}", "x".repeat(64)));
        }
        let reply: redis::RedisResult<String> = cmd.query_async(&mut con).await;
        if !matches!(reply.as_deref(), Ok("OK")) {
            break;
        }
        acked.store(seq, Ordering::SeqCst);
    }
    seq
}

/// Every key, read at once: the sequence number they all show (None if none was written).
async fn state(addr: std::net::SocketAddr) -> Result<Option<u64>, String> {
    let mut con = connect(addr).await.map_err(|e| format!("connect: {e}"))?;
    let names: Vec<String> = (0..KEYS).map(key).collect();
    let values: Vec<Option<String>> = redis::cmd("MGET")
        .arg(&names)
        .query_async(&mut con)
        .await
        .map_err(|e| format!("MGET: {e}"))?;
    let seqs: Vec<Option<u64>> = values
        .iter()
        .map(|v| {
            v.as_deref()
                .and_then(|v| v.split(':').next())
                .and_then(|s| s.parse().ok())
        })
        .collect();
    let first = seqs[0];
    if let Some(i) = seqs.iter().position(|s| *s != first) {
        return Err(format!(
            "fractured: {} shows {first:?} but {} shows {:?}",
            key(0),
            key(i),
            seqs[i]
        ));
    }
    Ok(first)
}

#[test]
fn big_transactions_survive_kill_9_whole_on_dynamodb() {
    let seed = seed_override().unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(1)
    });
    eprintln!("seed {seed} (replay with AFT_TEST_SEED={seed})");
    let mut rng = Rng::new(seed);
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let emulator = runtime.block_on(Emulator::start());
    let url = emulator.url("aft-big");
    // A short lease: each restart waits for the killed process's lease to expire.
    let args = ["--backend", url.as_str(), "--lease-ms", "1000"];
    let dir = tempfile::tempdir().expect("tempdir");
    let acked = Arc::new(AtomicU64::new(0));
    let sent = Arc::new(AtomicU64::new(0));
    let mut seq = 0;
    for round in 1..=3 {
        let server = Process::spawn(dir.path(), &args);
        let stop = Arc::new(AtomicBool::new(false));
        let task = runtime.spawn(writer(
            server.addr,
            seq,
            acked.clone(),
            sent.clone(),
            stop.clone(),
        ));
        std::thread::sleep(Duration::from_millis(rng.range(300, 900)));
        server.kill9();
        seq = runtime
            .block_on(async { tokio::time::timeout(Duration::from_secs(30), task).await })
            .expect("writer stops")
            .expect("writer task");
        let server = Process::spawn(dir.path(), &args);
        let shown = runtime
            .block_on(state(server.addr))
            .unwrap_or_else(|e| panic!("seed {seed}, round {round}: {e}"));
        let (acked, sent) = (acked.load(Ordering::SeqCst), sent.load(Ordering::SeqCst));
        eprintln!("round {round}: acked {acked}, sent {sent}, shown {shown:?}");
        assert!(acked > 0, "round {round}: no transaction was acknowledged");
        let shown = shown.unwrap_or(0);
        assert!(
            (acked..=sent).contains(&shown),
            "seed {seed}, round {round}: shows {shown}, acked {acked}, sent {sent}"
        );
        server.kill9();
    }

    // The orphans the kills left (versions without a commit record) go, the commits stay.
    let reclaimed = runtime.block_on(async {
        let storage = DynamoDbStorage::connect(emulator.options("aft-big"))
            .await
            .expect("connect");
        storage
            .reclaim_orphans(Duration::ZERO)
            .await
            .expect("reclaim")
    });
    eprintln!("reclaimed {reclaimed} orphan versions");
    let server = Process::spawn(dir.path(), &args);
    let shown = runtime
        .block_on(state(server.addr))
        .unwrap_or_else(|e| panic!("after reclaim: {e}"));
    assert!(shown.unwrap_or(0) >= acked.load(Ordering::SeqCst));
    assert_eq!(server.terminate().code(), Some(0));
}
