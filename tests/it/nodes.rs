//! Several `aft` processes on one backend.
//!
//! On Redis and Redis Cluster any number of nodes share one prefix with one node's
//! guarantees: they learn each other's commits from the backend's commit log, check write
//! conflicts in the backend, hold garbage collection back for each other's snapshots, and
//! fence a node whose lease expired. Tested with three processes: exact totals of
//! concurrent increments through different nodes, WATCH across nodes, a write read at once
//! through another node, the read-atomic checker with its clients spread over the nodes
//! while one is killed and restarted, takeover of a dead node, garbage collection bounded
//! with a node down and held back by a snapshot on another node.
//!
//! The same on DynamoDB (its commits are ordered by claiming the next position of the log
//! in their transaction).

use std::sync::Arc;
use std::time::{Duration, Instant};

use redis::aio::MultiplexedConnection;

use crate::harness::{connect_patient, query, text, Emulator, Process, RedisServer};
use aft::storage::testkit::redis_server::{cli, shared_cluster, unique_prefix, RedisCluster};

/// The table of the DynamoDB backend.
const TABLE: &str = "aft-nodes";

/// A backend several processes can share, kept alive by the test.
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
            Shared::DynamoDb(emulator) => emulator.url(TABLE),
        }
    }

    /// The Redis servers (a cluster's masters) and the prefix aft stores under.
    fn servers(&self) -> (Vec<u16>, &str) {
        match self {
            Shared::Redis(redis) => (vec![redis.port], "aft:"),
            Shared::Cluster(cluster, prefix) => {
                (cluster.nodes.iter().map(|n| n.port).collect(), prefix)
            }
            Shared::DynamoDb(_) => panic!("counted on Redis only"),
        }
    }

    /// The stored keys matching `pattern`, with the port of the server holding each.
    fn stored_keys(&self, pattern: &str) -> Vec<(u16, String)> {
        let (ports, _) = self.servers();
        ports
            .into_iter()
            .flat_map(|port| {
                cli(port, &["--scan", "--pattern", pattern])
                    .lines()
                    .filter(|l| !l.is_empty())
                    .map(|l| (port, l.to_string()))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    /// How many keys have a head (the latest version committed to them) in the backend,
    /// over every shard of the log.
    fn stored_heads(&self) -> usize {
        let (_, prefix) = self.servers();
        self.stored_keys(&format!("{prefix}{{*}}heads"))
            .into_iter()
            .map(|(port, heads)| {
                cli(port, &["hlen", &heads])
                    .trim()
                    .parse::<usize>()
                    .expect("HLEN")
            })
            .sum()
    }

    /// How many stored versions (of any key) the backend holds now.
    async fn stored_versions(&self) -> usize {
        if let Shared::DynamoDb(emulator) = self {
            return emulator.stored_versions(TABLE).await;
        }
        let (_, prefix) = self.servers();
        self.stored_keys(&format!("{prefix}v{{*")).len()
    }

    /// Whether the backend keeps key heads (Redis; DynamoDB orders commits by its log).
    fn keeps_heads(&self) -> bool {
        !matches!(self, Shared::DynamoDb(_))
    }
}

/// An aft process over `url`, with a data directory of its own.
struct Node {
    process: Option<Process>,
    dir: tempfile::TempDir,
    url: String,
    args: Vec<String>,
}

impl Node {
    async fn start(url: &str) -> Node {
        Node::start_with(url, &[]).await
    }

    /// A node with further `aft serve` arguments.
    async fn start_with(url: &str, args: &[&str]) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut node = Node {
            process: None,
            dir,
            url: url.to_string(),
            args: args.iter().map(|a| a.to_string()).collect(),
        };
        node.spawn(None).await;
        node
    }

    /// Starts the process (on `addr`, or a free port).
    async fn spawn(&mut self, addr: Option<std::net::SocketAddr>) {
        let path = self.dir.path().to_owned();
        let mut args = vec!["--backend".to_string(), self.url.clone()];
        args.extend(self.args.iter().cloned());
        let process = tokio::task::spawn_blocking(move || {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match addr {
                Some(addr) => Process::spawn_at(&path, addr, &args),
                None => Process::spawn(&path, &args),
            }
        })
        .await
        .expect("spawn aft");
        self.process = Some(process);
    }

    fn addr(&self) -> std::net::SocketAddr {
        self.process.as_ref().expect("running").addr
    }

    /// A client of the node. A refused connection is tried again for a while (what refuses
    /// it is said if the process exited meanwhile).
    async fn client(&self) -> MultiplexedConnection {
        let process = self.process.as_ref().expect("running");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match connect_patient(process.addr).await {
                Ok(c) => return c,
                Err(e) => {
                    let pid = process.child.id();
                    let state = std::fs::read_to_string(format!("/proc/{pid}/stat"))
                        .ok()
                        .and_then(|s| s.rsplit(')').next().map(|r| r.trim().to_string()));
                    let exited = state.as_deref().is_none_or(|s| s.starts_with('Z'));
                    assert!(
                        !exited && Instant::now() < deadline,
                        "connect to aft {} (pid {pid}, {}): {e}",
                        process.addr,
                        if exited { "exited" } else { "running" }
                    );
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }

    /// SIGKILL: whatever it had not settled is left to the backend and the other nodes.
    fn kill9(&mut self) {
        if let Some(p) = self.process.take() {
            p.kill9();
        }
    }

    /// SIGKILL, then a new process on the same address (its clients reconnect to it).
    async fn kill9_and_restart(&mut self) {
        let addr = self.addr();
        self.kill9();
        self.spawn(Some(addr)).await;
    }

    /// A process started after this one stopped, on the same backend.
    async fn restart(mut self) -> Node {
        if let Some(p) = self.process.take() {
            tokio::task::spawn_blocking(move || p.terminate())
                .await
                .expect("stop aft");
        }
        self.spawn(None).await;
        self
    }
}

/// Three nodes over `url`, started together.
async fn three(url: &str, args: &[&str]) -> [Node; 3] {
    let (a, b, c) = tokio::join!(
        Node::start_with(url, args),
        Node::start_with(url, args),
        Node::start_with(url, args)
    );
    [a, b, c]
}

/// A field of `INFO nodes`.
async fn info_field(c: &mut MultiplexedConnection, field: &str) -> String {
    let info = text(c, &["INFO", "nodes"]).await;
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{field}:")))
        .unwrap_or_else(|| panic!("no {field} in {info}"))
        .trim()
        .to_string()
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

    // Two attempts at once, one on each node: one commits.
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

async fn a_transaction_attaches_through_any_node(kind: &str) {
    let backend = Shared::start(kind).await;
    let url = backend.url();
    let args = ["--lease-ms", "1000"];
    let [mut a, b, c] = three(&url, &args).await;
    let (mut ca, mut cb, mut cc) = (a.client().await, b.client().await, c.client().await);
    assert_eq!(text(&mut cc, &["MSET", "x", "old", "y", "old"]).await, "OK");

    // The first function begins on A, reads and writes; the next one lands on B.
    let txid = text(&mut ca, &["AFT.BEGIN"]).await;
    assert_eq!(text(&mut ca, &["GET", "x"]).await, "old");
    assert_eq!(text(&mut ca, &["SET", "draft", "1"]).await, "OK");
    assert_eq!(text(&mut ca, &["AFT.DETACH"]).await, "OK");
    // Meanwhile x and y change through C.
    assert_eq!(text(&mut cc, &["MSET", "x", "new", "y", "new"]).await, "OK");
    assert_eq!(text(&mut cb, &["AFT.ATTACH", &txid]).await, "OK");
    assert_eq!(text(&mut cb, &["AFT.STATUS", &txid]).await, "running");
    // Read-your-writes, repeatable and atomic reads: the snapshot A took, whole.
    assert_eq!(text(&mut cb, &["GET", "draft"]).await, "1");
    assert_eq!(text(&mut cb, &["GET", "x"]).await, "old");
    assert_eq!(text(&mut cb, &["GET", "y"]).await, "old");
    assert_eq!(text(&mut cb, &["INCR", "draft"]).await, "2");
    // Nothing of it is visible before the commit, anywhere.
    assert_eq!(text(&mut cc, &["GET", "draft"]).await, "(nil)");
    assert_eq!(text(&mut cb, &["AFT.COMMIT"]).await, "OK");
    assert_eq!(text(&mut cc, &["GET", "draft"]).await, "2");
    assert_eq!(text(&mut cc, &["AFT.STATUS", &txid]).await, "committed");
    // B's connection is its own again.
    assert_eq!(text(&mut cb, &["GET", "x"]).await, "new");

    // A transaction whose node dies is aborted, as every node says once its lease expired.
    let doomed = text(&mut ca, &["AFT.BEGIN"]).await;
    assert_eq!(text(&mut ca, &["SET", "lost", "1"]).await, "OK");
    drop(ca);
    a.kill9();
    let deadline = Instant::now() + Duration::from_secs(10);
    while text(&mut cb, &["AFT.STATUS", &doomed]).await != "aborted" {
        assert!(Instant::now() < deadline, "never reported aborted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let attach = text(&mut cb, &["AFT.ATTACH", &doomed]).await;
    assert!(attach.contains("aborted"), "{attach}");
    assert_eq!(text(&mut cc, &["GET", "lost"]).await, "(nil)");
}

async fn increments_through_three_nodes_add_up(kind: &str) {
    let backend = Shared::start(kind).await;
    let nodes = three(&backend.url(), &[]).await;
    let mut tasks = Vec::new();
    for node in &nodes {
        for _ in 0..3 {
            let mut c = node.client().await;
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for _ in 0..100 {
                    let n: i64 = query(&mut c, &["INCR", "counter"]).await.expect("INCR");
                    seen.push(n);
                }
                seen
            }));
        }
    }
    let mut all = Vec::new();
    for t in tasks {
        all.extend(t.await.expect("client"));
    }
    all.sort_unstable();
    all.dedup();
    // Every increment saw a different value: none was lost, none applied twice.
    assert_eq!(all.len(), 900, "{} increments lost", 900 - all.len());
    assert_eq!((all[0], all[899]), (1, 900));
    for node in &nodes {
        let mut c = node.client().await;
        assert_eq!(text(&mut c, &["GET", "counter"]).await, "900");
    }
}

/// Transactions that each increment two of three keys (so that, on a sharded log, most span
/// shards, and each key is sometimes where the commit is decided and sometimes not), through
/// three nodes at once: no increment is lost or applied twice.
async fn increments_of_two_keys_at_once_add_up_through_three_nodes(kind: &str) {
    const TRIPLES: usize = 2;
    const PER_CLIENT: usize = 45;
    let backend = Shared::start(kind).await;
    let nodes = three(&backend.url(), &[]).await;
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for client in 0..2 {
            let mut c = node.client().await;
            tasks.push(tokio::spawn(async move {
                let mut seen = Vec::new();
                for i in 0..PER_CLIENT {
                    let triple = (n + client + i) % TRIPLES;
                    let keys = [
                        format!("t:{triple}:a"),
                        format!("t:{triple}:b"),
                        format!("t:{triple}:c"),
                    ];
                    let (x, y) = [(0, 1), (1, 2), (0, 2)][(i / TRIPLES + n) % 3];
                    let mut pipe = redis::pipe();
                    pipe.atomic()
                        .cmd("INCR")
                        .arg(&keys[x])
                        .cmd("INCR")
                        .arg(&keys[y]);
                    let (vx, vy): (i64, i64) = pipe.query_async(&mut c).await.expect("EXEC");
                    seen.push((keys[x].clone(), vx));
                    seen.push((keys[y].clone(), vy));
                }
                seen
            }));
        }
    }
    let mut seen: std::collections::BTreeMap<String, Vec<i64>> = Default::default();
    for t in tasks {
        for (key, value) in t.await.expect("client") {
            seen.entry(key).or_default().push(value);
        }
    }
    assert_eq!(seen.len(), 3 * TRIPLES);
    let mut c = nodes[1].client().await;
    for (key, values) in &mut seen {
        values.sort_unstable();
        let expected: Vec<i64> = (1..=values.len() as i64).collect();
        assert_eq!(
            values, &expected,
            "{key}: an increment lost or applied twice"
        );
        let stored = text(&mut c, &["GET", key]).await;
        assert_eq!(stored, values.len().to_string(), "{key}");
    }
}

async fn watch_and_set_nx_see_commits_of_other_nodes(kind: &str) {
    let backend = Shared::start(kind).await;
    let [a, b, c] = three(&backend.url(), &[]).await;
    let (mut ca, mut cb, mut cc) = (a.client().await, b.client().await, c.client().await);
    assert_eq!(text(&mut ca, &["SET", "k", "0"]).await, "OK");

    // A key watched through A and changed through B: EXEC through A fails.
    assert_eq!(text(&mut ca, &["WATCH", "k"]).await, "OK");
    assert_eq!(text(&mut cb, &["SET", "k", "from-b"]).await, "OK");
    assert_eq!(text(&mut ca, &["MULTI"]).await, "OK");
    assert_eq!(text(&mut ca, &["SET", "k", "from-a"]).await, "QUEUED");
    assert_eq!(text(&mut ca, &["EXEC"]).await, "(nil)");
    assert_eq!(text(&mut cc, &["GET", "k"]).await, "from-b");

    // Changed through B before the WATCH: not a change after it.
    assert_eq!(text(&mut cb, &["SET", "k", "again-b"]).await, "OK");
    assert_eq!(text(&mut ca, &["WATCH", "k"]).await, "OK");
    assert_eq!(text(&mut ca, &["MULTI"]).await, "OK");
    assert_eq!(text(&mut ca, &["SET", "k", "from-a"]).await, "QUEUED");
    assert_eq!(text(&mut ca, &["EXEC"]).await, "array([ok])");
    assert_eq!(text(&mut cc, &["GET", "k"]).await, "from-a");

    // A lock taken with SET NX through three nodes at once, many times: one winner each.
    for round in 0..20 {
        let key = format!("lock-{round}");
        let (sa, sb, sc) = (
            ["SET", key.as_str(), "a", "NX"],
            ["SET", key.as_str(), "b", "NX"],
            ["SET", key.as_str(), "c", "NX"],
        );
        let (ra, rb, rc) =
            tokio::join!(text(&mut ca, &sa), text(&mut cb, &sb), text(&mut cc, &sc),);
        let won = [&ra, &rb, &rc].iter().filter(|r| **r == "OK").count();
        assert_eq!(won, 1, "round {round}: {ra} {rb} {rc}");
        let holder = text(&mut ca, &["GET", &key]).await;
        let winner = if ra == "OK" {
            "a"
        } else if rb == "OK" {
            "b"
        } else {
            "c"
        };
        assert_eq!(holder, winner, "round {round}");
    }
}

async fn a_write_through_one_node_is_read_at_once_through_the_others(kind: &str) {
    let backend = Shared::start(kind).await;
    let nodes = three(&backend.url(), &[]).await;
    let mut clients = Vec::new();
    for node in &nodes {
        clients.push(node.client().await);
    }
    for i in 0..150usize {
        let value = i.to_string();
        let writer = i % 3;
        let reply = text(&mut clients[writer], &["MSET", "x", &value, "y", &value]).await;
        assert_eq!(reply, "OK");
        for reader in [(i + 1) % 3, (i + 2) % 3] {
            let got: Vec<String> = query(&mut clients[reader], &["MGET", "x", "y"])
                .await
                .expect("MGET");
            assert_eq!(
                got,
                [value.clone(), value.clone()],
                "write {i} through {writer}, read through {reader}"
            );
        }
    }
}

async fn reads_stay_atomic_while_a_node_is_killed_and_restarted(kind: &str) {
    let backend = Shared::start(kind).await;
    let [a, b, mut c] = three(&backend.url(), &["--lease-ms", "2000"]).await;
    let config = aft::check::CheckConfig {
        port: a.addr().port(),
        more_ports: vec![b.addr().port(), c.addr().port()],
        mode: aft::check::Mode::Multi,
        clients: 6,
        txns: 3000,
        keys: 50,
        reconnect_for: Duration::from_secs(30),
        seed: 7,
        ..Default::default()
    };
    let check = tokio::spawn(aft::check::run(config));
    tokio::time::sleep(Duration::from_millis(700)).await;
    c.kill9_and_restart().await;
    let report = check.await.expect("check task").expect("check ran");
    assert!(report.is_clean(), "{report}");
    assert!(report.committed > 1000, "{report}");
    // The restarted node serves what everyone committed, including what it had itself.
    let mut cc = c.client().await;
    let mut ca = a.client().await;
    let keys: Vec<String> = (0..50).map(aft::check::history::key_name).collect();
    let mut mget = vec!["MGET"];
    mget.extend(keys.iter().map(String::as_str));
    let through_c: Vec<Option<String>> = query(&mut cc, &mget).await.expect("MGET");
    let through_a: Vec<Option<String>> = query(&mut ca, &mget).await.expect("MGET");
    assert_eq!(through_c, through_a);
    drop(b);
}

async fn a_dead_node_is_taken_over_and_does_not_stall_collection(kind: &str) {
    let backend = Shared::start(kind).await;
    let url = backend.url();
    let (mut a, b) = tokio::join!(
        Node::start_with(&url, &["--lease-ms", "1000"]),
        Node::start_with(&url, &["--lease-ms", "1000"])
    );
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let deadline = Instant::now() + Duration::from_secs(5);
    while info_field(&mut cb, "aft_nodes_live").await != "2" {
        assert!(Instant::now() < deadline, "B never saw A");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A transaction on A that holds a snapshot, then A dies with it.
    let txid = text(&mut ca, &["AFT.BEGIN"]).await;
    assert_eq!(text(&mut ca, &["GET", "hot"]).await, "(nil)");
    assert_eq!(text(&mut ca, &["AFT.COMMIT"]).await, "OK", "{txid}");
    assert_eq!(text(&mut ca, &["MSET", "p", "1", "q", "1"]).await, "OK");
    a.kill9();
    let died = Instant::now();
    // Its acknowledged commit is visible through B at once.
    let got: Vec<String> = query(&mut cb, &["MGET", "p", "q"]).await.expect("MGET");
    assert_eq!(got, ["1", "1"]);
    // Its lease expires: B sees one node within the bound.
    loop {
        if info_field(&mut cb, "aft_nodes_live").await == "1" {
            break;
        }
        assert!(
            died.elapsed() < Duration::from_secs(5),
            "A's lease did not expire"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // B overwrites one key many times; storage stays bounded though A never comes back.
    for i in 0..300 {
        assert_eq!(text(&mut cb, &["SET", "hot", &i.to_string()]).await, "OK");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let stored = backend.stored_versions().await;
        if stored <= 10 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{stored} versions still stored with a node down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert_eq!(text(&mut cb, &["GET", "hot"]).await, "299");
}

async fn a_snapshot_on_one_node_holds_collection_back_on_the_others(kind: &str) {
    let backend = Shared::start(kind).await;
    let url = backend.url();
    let (a, b) = tokio::join!(Node::start(&url), Node::start(&url));
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    assert_eq!(text(&mut ca, &["MSET", "x", "old", "y", "old"]).await, "OK");
    // B's transaction pins its snapshot with its first read.
    let txid = text(&mut cb, &["AFT.BEGIN"]).await;
    assert_eq!(text(&mut cb, &["GET", "x"]).await, "old", "{txid}");
    for i in 0..30 {
        let v = format!("new-{i}");
        assert_eq!(text(&mut ca, &["MSET", "x", &v, "y", &v]).await, "OK");
    }
    // Several collection rounds on A (and B) later, B still reads its snapshot, whole.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(text(&mut cb, &["GET", "y"]).await, "old");
    assert_eq!(text(&mut cb, &["AFT.COMMIT"]).await, "OK");
    // Once it ended, the old versions go.
    let deadline = Instant::now() + Duration::from_secs(20);
    while backend.stored_versions().await > 4 {
        assert!(
            Instant::now() < deadline,
            "old versions were never collected"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let got: Vec<String> = query(&mut cb, &["MGET", "x", "y"]).await.expect("MGET");
    assert_eq!(got, ["new-29", "new-29"]);
}

async fn deleted_keys_leave_nothing_behind(kind: &str) {
    let backend = Shared::start(kind).await;
    let url = backend.url();
    let args = ["--status-retention-secs", "1", "--gc-interval-ms", "200"];
    let (a, b) = tokio::join!(Node::start_with(&url, &args), Node::start_with(&url, &args));
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    let keys: Vec<String> = (0..40).map(|i| format!("gone-{i}")).collect();
    for key in &keys {
        assert_eq!(text(&mut ca, &["SET", key, "v"]).await, "OK");
    }
    assert_eq!(backend.stored_versions().await, 40);
    if backend.keeps_heads() {
        assert_eq!(backend.stored_heads(), 40);
    }
    for key in &keys {
        assert_eq!(text(&mut cb, &["DEL", key]).await, "1");
    }
    // Values, records, then the keys themselves and their heads are collected.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let heads = if backend.keeps_heads() {
            backend.stored_heads()
        } else {
            0
        };
        let versions = backend.stored_versions().await;
        if heads == 0 && versions == 0 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{heads} heads and {versions} versions left"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A key set again after its head went is an ordinary key.
    assert_eq!(text(&mut cb, &["INCR", "gone-0"]).await, "1");
    assert_eq!(text(&mut ca, &["INCR", "gone-0"]).await, "2");
}

/// `calls` of `command` in each server's INFO commandstats.
fn command_calls(ports: &[u16], command: &str) -> Vec<u64> {
    let field = format!("cmdstat_{command}:calls=");
    ports
        .iter()
        .map(|port| {
            cli(*port, &["info", "commandstats"])
                .lines()
                .find_map(|l| l.strip_prefix(&field))
                .and_then(|rest| rest.split(',').next())
                .map_or(0, |n| n.parse().expect("calls"))
        })
        .collect()
}

/// Commits through three nodes on a 3-master cluster spread over the masters: each runs a
/// fair share of the commit scripts and holds a fair share of the records, and a commit of
/// one key costs one write of its value, whatever the number of nodes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_spread_over_the_masters_of_a_cluster() {
    let backend = Shared::start("redis-cluster").await;
    let (ports, prefix) = backend.servers();
    let prefix = prefix.to_string();
    let nodes = three(&backend.url(), &[]).await;
    let (scripts, writes) = (
        command_calls(&ports, "evalsha"),
        command_calls(&ports, "mset"),
    );
    const PER_CLIENT: usize = 100;
    let mut tasks = Vec::new();
    for (n, node) in nodes.iter().enumerate() {
        for client in 0..2 {
            let mut c = node.client().await;
            tasks.push(tokio::spawn(async move {
                for i in 0..PER_CLIENT {
                    let key = format!("spread:{n}:{client}:{i}");
                    assert_eq!(text(&mut c, &["SET", &key, "v"]).await, "OK");
                }
            }));
        }
    }
    for t in tasks {
        t.await.expect("client");
    }
    let commits = (6 * PER_CLIENT) as u64;
    let scripts: Vec<u64> = command_calls(&ports, "evalsha")
        .iter()
        .zip(&scripts)
        .map(|(after, before)| after - before)
        .collect();
    let writes: Vec<u64> = command_calls(&ports, "mset")
        .iter()
        .zip(&writes)
        .map(|(after, before)| after - before)
        .collect();
    // Records per master, from the log's shards (each in the slot of its tag).
    let mut records = vec![0u64; ports.len()];
    for (port, tail) in backend.stored_keys(&format!("{prefix}{{*}}tail")) {
        let n: u64 = cli(port, &["zcard", &tail]).trim().parse().expect("ZCARD");
        records[ports.iter().position(|p| *p == port).expect("a master")] += n;
    }
    let total_scripts: u64 = scripts.iter().sum();
    println!(
        "{commits} commits: records per master {records:?}, scripts per master {scripts:?} \
         ({:.2} per commit, with the tailers' and leases'), value writes per master {writes:?}",
        total_scripts as f64 / commits as f64
    );
    assert_eq!(records.iter().sum::<u64>(), commits);
    assert_eq!(writes.iter().sum::<u64>(), commits, "one MSET per commit");
    let fair = commits / ports.len() as u64;
    for (what, counts) in [("records", &records), ("scripts", &scripts)] {
        let share = if what == "records" {
            fair
        } else {
            total_scripts / ports.len() as u64
        };
        assert!(
            counts.iter().all(|n| *n >= share / 2),
            "{what} per master: {counts:?}"
        );
    }
}

/// One test module per scenario, with a test per backend of `$backends`.
macro_rules! on_backends {
    ($backends:tt $($name:ident),* $(,)?) => {
        $( backend_tests!($name $backends); )*
    };
}

macro_rules! backend_tests {
    ($name:ident [$($test:ident = $kind:literal),*]) => {
        mod $name {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $test() {
                    super::$name($kind).await
                }
            )*
        }
    };
}

on_backends!(
    [on_redis = "redis", on_redis_cluster = "redis-cluster", on_dynamodb = "dynamodb"]
    a_retry_on_another_node_commits_at_most_once,
    a_transaction_attaches_through_any_node,
    increments_through_three_nodes_add_up,
    increments_of_two_keys_at_once_add_up_through_three_nodes,
    watch_and_set_nx_see_commits_of_other_nodes,
    a_write_through_one_node_is_read_at_once_through_the_others,
    reads_stay_atomic_while_a_node_is_killed_and_restarted,
    a_paused_node_that_comes_back_commits_on_the_current_state,
);

// They count what the backend stores.
on_backends!(
    [on_redis = "redis", on_redis_cluster = "redis-cluster", on_dynamodb = "dynamodb"]
    a_dead_node_is_taken_over_and_does_not_stall_collection,
    a_snapshot_on_one_node_holds_collection_back_on_the_others,
    deleted_keys_leave_nothing_behind,
);

/// Sends a signal to a process with the system's `kill`.
fn signal(pid: u32, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

async fn a_paused_node_that_comes_back_commits_on_the_current_state(kind: &str) {
    let backend = Shared::start(kind).await;
    let url = backend.url();
    let args = ["--lease-ms", "1000"];
    let (a, b) = tokio::join!(Node::start_with(&url, &args), Node::start_with(&url, &args));
    let (mut ca, mut cb) = (a.client().await, b.client().await);
    // Both renew their leases: still committing well after the lease's length.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(text(&mut ca, &["SET", "balance", "100"]).await, "OK");
    assert_eq!(text(&mut cb, &["GET", "balance"]).await, "100");
    // B is paused past its lease; A goes on.
    let pid = b.process.as_ref().expect("running").child.id();
    signal(pid, "STOP");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(text(&mut ca, &["INCRBY", "balance", "5"]).await, "105");
    signal(pid, "CONT");
    // B's increment is not applied to what it knew before the pause: fenced, it rejoins
    // and runs it on the current state.
    assert_eq!(text(&mut cb, &["INCRBY", "balance", "1000"]).await, "1105");
    // And the other node, which believed itself alone meanwhile, reads it at once.
    assert_eq!(text(&mut ca, &["GET", "balance"]).await, "1105");
}

/// Standalone Redis stalled with `DEBUG SLEEP`: node A's increment times out (outcome
/// unknown) and A is killed before Redis wakes up and applies it. Node B, started
/// afterwards, counts it: the next increment says 12, not 11.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_increment_left_unsettled_by_a_dead_node_is_counted_by_the_next() {
    let redis = tokio::task::spawn_blocking(RedisServer::stallable)
        .await
        .expect("start redis");
    let url = format!("redis://127.0.0.1:{}?timeout_ms=300", redis.port);
    // Bounded freshness: the increment goes to the commit at once (with real-time
    // freshness, its read of the log would time out first and nothing would be sent).
    let mut a = Node::start_with(&url, &["--freshness", "bounded"]).await;
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
