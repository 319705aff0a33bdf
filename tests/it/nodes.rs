//! Two `aft` processes on one backend (Redis, Redis Cluster, DynamoDB): what the backend
//! itself guarantees between them today. A function retried on another proxy commits at
//! most once, and says how its first attempt ended; a transaction begun on one proxy cannot
//! be taken over through another; a commit left unsettled by a proxy that died is counted
//! by the next one.
//!
//! Conflicts between commits of different proxies, and garbage collection that knows the
//! other proxies' readers, need the nodes to learn each other's commits as they happen
//! (protocol.md §9); until then the README asks for one aft per backend and prefix at a time,
//! and these tests only check what holds without it.

use std::sync::Arc;
use std::time::Duration;

use redis::aio::MultiplexedConnection;

use crate::harness::{connect_patient, query, text, Emulator, Process, RedisServer};
use aft::storage::testkit::redis_server::{shared_cluster, unique_prefix, RedisCluster};

/// A backend two processes can share, kept alive by the test.
enum Shared {
    Redis(RedisServer),
    Cluster(Arc<RedisCluster>, String),
    DynamoDb(Emulator),
}

impl Shared {
    async fn start(kind: &str) -> Shared {
        match kind {
            "redis" => Shared::Redis(
                tokio::task::spawn_blocking(RedisServer::start)
                    .await
                    .expect("start redis"),
            ),
            "redis-cluster" => Shared::Cluster(
                tokio::task::spawn_blocking(shared_cluster)
                    .await
                    .expect("start the cluster"),
                unique_prefix(),
            ),
            "dynamodb" => Shared::DynamoDb(Emulator::start().await),
            other => panic!("no shared backend {other}"),
        }
    }

    fn url(&self) -> String {
        match self {
            Shared::Redis(redis) => format!("redis://127.0.0.1:{}", redis.port),
            Shared::Cluster(cluster, prefix) => cluster.url(&format!("?prefix={prefix}")),
            Shared::DynamoDb(emulator) => emulator.url("aft-nodes"),
        }
    }
}

/// An aft process over `url`, with a data directory of its own.
struct Node {
    process: Option<Process>,
    _dir: tempfile::TempDir,
    url: String,
}

impl Node {
    async fn start(url: &str) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().to_owned();
        let owned = url.to_string();
        let process =
            tokio::task::spawn_blocking(move || Process::spawn(&path, &["--backend", &owned]))
                .await
                .expect("spawn aft");
        Node {
            process: Some(process),
            _dir: dir,
            url: url.to_string(),
        }
    }

    async fn client(&self) -> MultiplexedConnection {
        let addr = self.process.as_ref().expect("running").addr;
        connect_patient(addr).await.expect("connect to aft")
    }

    /// SIGKILL: whatever it had not settled is left to the backend and the other nodes.
    fn kill9(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill9();
        }
    }

    /// A process started after this one stopped, on the same backend.
    async fn restart(mut self) -> Node {
        if let Some(p) = self.process.take() {
            tokio::task::spawn_blocking(move || p.terminate())
                .await
                .expect("stop aft");
        }
        Node::start(&self.url).await
    }
}

/// One attempt of a function that records payment `key` (two rows, written blind) and,
/// if `charge`, takes 30 out of `balance`, under the payment's idempotency key.
async fn pay(c: &mut MultiplexedConnection, key: &str, by: &str, charge: bool) -> String {
    let begun = text(c, &["AFT.BEGIN", "IDEMPOTENCY-KEY", key]).await;
    if begun.starts_with("error") {
        return begun;
    }
    text(c, &["SET", &format!("paid:{key}"), by]).await;
    text(c, &["SET", &format!("receipt:{key}"), by]).await;
    if charge {
        text(c, &["DECRBY", "balance", "30"]).await;
    }
    text(c, &["AFT.COMMIT"]).await
}

async fn a_retry_on_another_node_commits_at_most_once(kind: &str) {
    let backend = Shared::start(kind).await;
    let url = backend.url();
    let (a, b) = tokio::join!(Node::start(&url), Node::start(&url));
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    assert_eq!(text(&mut ca, &["SET", "balance", "100"]).await, "OK");

    // The first attempt commits on A; the platform retries the function, which lands on B
    // (which has not seen A's commits: the backend refuses the retry).
    assert_eq!(pay(&mut ca, "payment-1", "a", true).await, "OK");
    let retry = pay(&mut cb, "payment-1", "b", true).await;
    assert!(retry.contains("COMMITTED"), "the retry on B: {retry}");
    assert_eq!(
        text(&mut cb, &["AFT.STATUS", "payment-1"]).await,
        "committed"
    );

    // Two attempts at once, one on each node: one commits. (They write blind: a
    // read-modify-write through two nodes at once can lose an update until nodes learn
    // each other's commits.)
    let (ra, rb) = tokio::join!(
        pay(&mut ca, "payment-2", "a", false),
        pay(&mut cb, "payment-2", "b", false)
    );
    let outcomes = [ra, rb];
    let committed = outcomes.iter().filter(|o| *o == "OK").count();
    assert_eq!(committed, 1, "{outcomes:?}");
    assert!(
        outcomes
            .iter()
            .any(|o| o.contains("COMMITTED") || o.contains("CONFLICT")),
        "{outcomes:?}"
    );

    // A node started now reads what the backend holds: each payment once, whole.
    drop((ca, cb));
    let (a, b) = (a.restart().await, b.restart().await);
    for node in [&a, &b] {
        let mut c = node.client().await;
        assert_eq!(text(&mut c, &["GET", "balance"]).await, "70");
        let rows: Vec<Option<String>> = query(
            &mut c,
            &[
                "MGET",
                "paid:payment-1",
                "receipt:payment-1",
                "paid:payment-2",
                "receipt:payment-2",
            ],
        )
        .await
        .expect("MGET");
        assert_eq!(rows[0].as_deref(), Some("a"), "the first attempt's write");
        assert_eq!(rows[0], rows[1], "{rows:?}");
        assert!(
            matches!(rows[2].as_deref(), Some("a" | "b")),
            "the winner's write: {rows:?}"
        );
        assert_eq!(rows[2], rows[3], "{rows:?}");
    }
}

async fn a_transaction_cannot_be_attached_through_another_node(kind: &str) {
    let backend = Shared::start(kind).await;
    let url = backend.url();
    let (a, b) = tokio::join!(Node::start(&url), Node::start(&url));
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let txid = text(&mut ca, &["AFT.BEGIN"]).await;
    assert_eq!(text(&mut ca, &["SET", "secret", "draft"]).await, "OK");
    let attach = text(&mut cb, &["AFT.ATTACH", &txid]).await;
    assert!(attach.starts_with("error"), "AFT.ATTACH on B: {attach}");
    // B knows nothing of it until it commits.
    assert_eq!(text(&mut cb, &["AFT.STATUS", &txid]).await, "unknown");
    assert_eq!(text(&mut cb, &["GET", "secret"]).await, "(nil)");
    // The transaction is intact on A.
    assert_eq!(text(&mut ca, &["AFT.COMMIT"]).await, "OK");
    assert_eq!(text(&mut ca, &["GET", "secret"]).await, "draft");
}

macro_rules! on_every_shared_backend {
    ($($name:ident),* $(,)?) => {
        $(
            mod $name {
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_redis() {
                    super::$name("redis").await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_redis_cluster() {
                    super::$name("redis-cluster").await
                }

                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn on_dynamodb() {
                    super::$name("dynamodb").await
                }
            }
        )*
    };
}

on_every_shared_backend!(
    a_retry_on_another_node_commits_at_most_once,
    a_transaction_cannot_be_attached_through_another_node,
);

/// Standalone Redis stalled with `DEBUG SLEEP`: node A's increment times out (outcome
/// unknown) and A is killed before Redis wakes up and applies it. Node B, started
/// afterwards, counts it: the next increment says 12, not 11.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_increment_left_unsettled_by_a_dead_node_is_counted_by_the_next() {
    let redis = tokio::task::spawn_blocking(|| {
        RedisServer::with_args(&[
            "--save",
            "",
            "--appendonly",
            "no",
            "--enable-debug-command",
            "yes",
        ])
    })
    .await
    .expect("start redis");
    let url = format!("redis://127.0.0.1:{}?timeout_ms=300", redis.port);
    let mut a = Node::start(&url).await;
    let mut ca = a.client().await;
    assert_eq!(text(&mut ca, &["SET", "c", "10"]).await, "OK");
    let port = redis.port;
    let sleeping = std::thread::spawn(move || {
        aft::storage::testkit::redis_server::cli(port, &["debug", "sleep", "1.5"]);
    });
    std::thread::sleep(Duration::from_millis(150));
    let lost = text(&mut ca, &["INCR", "c"]).await;
    assert!(lost.contains("commit outcome unknown"), "{lost}");
    a.kill9();
    sleeping.join().expect("debug sleep");

    let b = Node::start(&url).await;
    let mut cb = b.client().await;
    assert_eq!(text(&mut cb, &["INCR", "c"]).await, "12");
    drop(redis);
}
