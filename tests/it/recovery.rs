//! `aft check` against the real binary while it is killed with SIGKILL and restarted on the
//! same data directory and port: the checker's clients reconnect, and the whole history
//! (before, across and after the crashes) must show no anomaly and no lost acknowledged write.

use std::time::Duration;

use aft::check::{self, CheckConfig, Mode};

use crate::harness::Process;

async fn survive_kills(mode: Mode, txns: u64) {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut aft = Process::spawn(dir.path(), &[]);
    let addr = aft.addr;
    let config = CheckConfig {
        host: "127.0.0.1".into(),
        port: addr.port(),
        mode,
        clients: 6,
        txns,
        keys: 24,
        reconnect_for: Duration::from_secs(20),
        seed: 7,
        ..CheckConfig::default()
    };
    let run = tokio::spawn(check::run(config));
    let mut kills = 0;
    for pause_ms in [250, 400, 300] {
        tokio::time::sleep(Duration::from_millis(pause_ms)).await;
        if run.is_finished() {
            break;
        }
        aft.kill9();
        kills += 1;
        aft = tokio::task::spawn_blocking({
            let dir = dir.path().to_owned();
            move || Process::spawn_at(&dir, addr, &[])
        })
        .await
        .expect("restart");
    }
    let report = run.await.expect("check task").expect("check ran");
    eprintln!("{report}");
    assert!(
        kills >= 2,
        "the run ended before aft could be killed twice:\n{report}"
    );
    assert!(report.reconnects > 0, "{report}");
    assert!(report.committed > 100, "{report}");
    assert_eq!(report.anomalies(), 0, "{report}");
    drop(aft);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interactive_transactions_survive_kill_9_without_anomalies() {
    survive_kills(Mode::Interactive, 6_000).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_exec_survives_kill_9_without_anomalies() {
    survive_kills(Mode::Multi, 6_000).await;
}
