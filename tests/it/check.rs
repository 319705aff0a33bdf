//! `aft check` end to end: the checker must find the anomalies plain Redis has without
//! transactions, find none where transactions are read atomic (aft, Redis MULTI/EXEC),
//! and survive servers that misbehave.

use std::time::{Duration, Instant};

use aft::check::{self, CheckConfig, CheckError, Mode, Report};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::harness::{RedisServer, TestServer};

fn config(port: u16, mode: Mode, txns: u64) -> CheckConfig {
    CheckConfig {
        host: "127.0.0.1".to_string(),
        port,
        mode,
        clients: 8,
        txns,
        keys: 8,
        writes: 2,
        reads: 4,
        abort_rate: 0.05,
        seed: 42,
        reconnect_for: Duration::from_secs(2),
        ..CheckConfig::default()
    }
}

async fn run(config: CheckConfig) -> Report {
    match check::run(config).await {
        Ok(report) => report,
        Err(e) => panic!("the check could not run: {e}"),
    }
}

fn assert_clean(report: &Report) {
    assert!(report.is_clean(), "{report}");
    assert_eq!(report.anomalies(), 0, "{report}");
    assert!(report.committed > 0, "{report}");
    assert_eq!(
        report.transactions,
        report.committed + report.aborted + report.failed + report.unknown
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_redis_shows_fractured_reads_and_read_your_writes_violations() {
    let redis = RedisServer::start();
    let mut last = None;
    // Contention makes this near certain at once; a larger run settles an unlucky one.
    for txns in [2_000, 8_000, 20_000] {
        let report = run(config(redis.port, Mode::Plain, txns)).await;
        let found = report.fractured_reads > 0 && report.read_your_writes > 0;
        last = Some(report);
        if found {
            break;
        }
    }
    let report = last.expect("ran");
    assert!(report.fractured_reads > 0, "{report}");
    assert!(report.read_your_writes > 0, "{report}");
    // Writes of plain Redis are not lost (single server, no crash).
    assert_eq!(report.lost_writes, 0, "{report}");
    assert_eq!(report.unexplained_values, 0, "{report}");
    assert!(report.final_read_error.is_none(), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_multi_exec_is_clean() {
    let redis = RedisServer::start();
    let report = run(config(redis.port, Mode::Multi, 2_000)).await;
    assert_clean(&report);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aft_multi_exec_is_clean() {
    let aft = TestServer::start().await;
    let report = run(config(aft.addr.port(), Mode::Multi, 2_000)).await;
    assert_clean(&report);
    assert!(report.aborted > 0, "{report}");
    // The history has every transaction plus one seed writer per key.
    assert_eq!(report.history.txns.len() as u64, report.transactions + 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aft_interactive_transactions_are_clean() {
    let aft = TestServer::start().await;
    let report = run(config(aft.addr.port(), Mode::Interactive, 2_000)).await;
    assert_clean(&report);
}

#[tokio::test]
async fn interactive_mode_needs_the_aft_commands() {
    let redis = RedisServer::start();
    match check::run(config(redis.port, Mode::Interactive, 10)).await {
        Err(CheckError::Unsupported(m)) => assert!(m.contains("AFT.BEGIN"), "{m}"),
        other => panic!("expected Unsupported, got {other:?}"),
    }
}

#[tokio::test]
async fn an_unreachable_server_is_a_connection_error() {
    let port = crate::harness::free_port();
    let config = CheckConfig {
        reconnect_for: Duration::from_millis(200),
        ..config(port, Mode::Multi, 10)
    };
    match check::run(config).await {
        Err(CheckError::Connect { .. }) => {}
        other => panic!("expected a connection error, got {other:?}"),
    }
}

#[tokio::test]
async fn invalid_configurations_are_refused() {
    let config = CheckConfig {
        writes: 9,
        ..config(1, Mode::Multi, 10)
    };
    assert!(matches!(
        check::run(config).await,
        Err(CheckError::Config(_))
    ));
}

/// A server that answers every chunk it receives with `reply` (closing the connection
/// at once if `reply` is empty).
async fn junk_server(reply: &'static [u8]) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = stream.read(&mut buf).await {
                    if n == 0 || reply.is_empty() || stream.write_all(reply).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    port
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_replies_never_panic_the_checker() {
    let replies: &[&'static [u8]] = &[
        b"+OK\r\n",
        b"",
        b"\x00\xffnot resp\r\n",
        b"$-5\r\n",
        b"*3\r\n$1\r\n",
        b"$99999999999\r\n",
        b"*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n*1\r\n",
        b":1\r\n",
        b"-ERR no\r\n",
    ];
    for &reply in replies {
        let port = junk_server(reply).await;
        for mode in [Mode::Plain, Mode::Multi, Mode::Interactive] {
            let config = CheckConfig {
                clients: 2,
                reconnect_for: Duration::from_millis(100),
                timeout: Duration::from_millis(200),
                ..config(port, mode, 20)
            };
            let started = Instant::now();
            let outcome = check::run(config).await;
            assert!(
                started.elapsed() < Duration::from_secs(5),
                "{mode} against {reply:?} took {:?}",
                started.elapsed()
            );
            if let Ok(report) = outcome {
                // No value was ever read: no anomaly can have been seen.
                assert_eq!(report.anomalies(), 0, "{report}");
            }
        }
    }
}
