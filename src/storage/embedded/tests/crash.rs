//! A process killed while it commits keeps every commit it acknowledged.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::{mpsc, Arc};
use std::time::{Duration, Instant};

use super::reopen;
use crate::storage::embedded::{EmbeddedOptions, EmbeddedStorage};
use crate::storage::testkit::conformance::{batch, get_one, scan_all, vid};
use crate::storage::{CommitOutcome, Storage, VersionId};

const CRASH_DIR_ENV: &str = "AFT_STORAGE_CRASH_TEST_DIR";

/// The child process of `killed_process_keeps_acknowledged_commits`: commits from 8 tasks
/// until killed, printing `ACK <ts> <txn>` once each commit is acknowledged.
#[test]
#[ignore = "run as a child process by killed_process_keeps_acknowledged_commits"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let storage = Arc::new(
            EmbeddedStorage::open(Path::new(&dir), EmbeddedOptions::default()).expect("open"),
        );
        let (acks, mut acked) = tokio::sync::mpsc::unbounded_channel();
        for task in 0..8u64 {
            let storage = storage.clone();
            let acks = acks.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    let id = vid(i, (u128::from(task) << 64) | u128::from(i));
                    let value = format!("{task}:{i}");
                    let b = batch(id, None, &[(b"k", value.as_bytes())]);
                    if let Ok(CommitOutcome::Committed) = storage.commit(b).await {
                        if acks.send(id).is_err() {
                            return;
                        }
                    }
                }
            });
        }
        while let Some(id) = acked.recv().await {
            println!("ACK {} {}", id.ts, id.txn.0);
        }
    });
}

#[test]
fn killed_process_keeps_acknowledged_commits() {
    const ACKS: usize = 300;
    let dir = tempfile::tempdir().expect("tempdir");
    let module = module_path!().split_once("::").map_or("", |(_, path)| path);
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args([
            &format!("{module}::crash_child"),
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("child stdout");
    let (lines, received) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            if lines.send(line).is_err() {
                return;
            }
        }
    });

    let mut acknowledged = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while acknowledged.len() < ACKS {
        let line = received.recv_timeout(deadline.saturating_duration_since(Instant::now()));
        let Ok(line) = line else {
            let _ = child.kill();
            panic!(
                "the child stopped after {} acknowledgements",
                acknowledged.len()
            );
        };
        let Some(rest) = line.strip_prefix("ACK ") else {
            continue;
        };
        let (ts, txn) = rest.split_once(' ').expect("ACK line");
        acknowledged.push(vid(ts.parse().expect("ts"), txn.parse().expect("txn")));
    }
    // SIGKILL: no destructor, no flush; only what reached the disk survives.
    child.kill().expect("kill");
    child.wait().expect("wait");
    drop(received);
    let _ = reader.join();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .build()
        .expect("runtime");
    runtime.block_on(async {
        let s = reopen(&dir, true);
        let found: BTreeSet<VersionId> = scan_all(&s).await.iter().map(|r| r.id).collect();
        assert!(found.len() >= ACKS);
        for id in &acknowledged {
            assert!(found.contains(id), "acknowledged {id:?} lost");
            let task = id.txn.0 >> 64;
            let value = format!("{task}:{}", id.ts);
            assert_eq!(
                get_one(&s, b"k", *id).await.as_deref(),
                Some(value.as_bytes())
            );
        }
        s.close().await.expect("close");
    });
}
