//! Starting aft for tests: in-process on port 0, or as the real binary (for crash tests).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aft::config::Config;
use aft::node::{self, Node};
use aft::server;
use aft::storage::redis::{RedisOptions, RedisStorage};
use aft::storage::testkit::fault::{FaultConfig, FaultyStorage};
use aft::storage::Storage;
use aft::txn::{Engine, EngineConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use aft::storage::testkit::dynamodb_emulator::Emulator;
pub use aft::storage::testkit::redis_server::RedisServer;
use aft::storage::testkit::redis_server::{shared_cluster, unique_prefix, RedisCluster};

/// A server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// What the backend needs to stay up, dropped after the server.
    _backend: BackendGuard,
}

/// What a test server's backend needs to stay up.
pub enum BackendGuard {
    /// Nothing (memory, embedded).
    None,
    /// A DynamoDB emulator of its own.
    Emulator(Emulator),
    /// A redis-server of its own.
    Redis(RedisServer),
    /// The Redis Cluster shared by the servers running at the same time.
    RedisCluster(Arc<RedisCluster>),
}

/// The backend [`TestServer::start`] and [`TestServer::with_config`] use, from
/// `AFT_TEST_BACKEND`: `memory` (the default), `dynamodb` (a DynamoDB emulator inside the
/// test process, one per server), `redis` (a redis-server of its own on a free loopback port)
/// or `redis-cluster` (a 3-master Redis Cluster shared by the servers that run at the same
/// time, each under a key prefix of its own). Tests of a specific backend name it themselves.
pub fn test_backend() -> String {
    std::env::var("AFT_TEST_BACKEND").unwrap_or_else(|_| "memory".into())
}

/// Points `config` at the test backend (see [`test_backend`]), started for it if it needs a
/// process or an emulator of its own; the guard keeps that alive.
async fn test_backend_for(config: &mut Config) -> BackendGuard {
    match test_backend().as_str() {
        "memory" => {
            config.backend = "memory".into();
            BackendGuard::None
        }
        "dynamodb" => {
            let emulator = Emulator::start().await;
            config.backend = emulator.url("aft");
            BackendGuard::Emulator(emulator)
        }
        "redis" => {
            let redis = tokio::task::spawn_blocking(RedisServer::start)
                .await
                .expect("start redis-server");
            config.backend = format!("redis://127.0.0.1:{}", redis.port);
            BackendGuard::Redis(redis)
        }
        "redis-cluster" => {
            let cluster = tokio::task::spawn_blocking(shared_cluster)
                .await
                .expect("start the redis cluster");
            config.backend = cluster.url(&format!("?prefix={}", unique_prefix()));
            BackendGuard::RedisCluster(cluster)
        }
        other => {
            panic!("AFT_TEST_BACKEND={other}: expected memory, dynamodb, redis or redis-cluster")
        }
    }
}

impl TestServer {
    /// A server over the test backend (see [`test_backend`]) with default configuration.
    pub async fn start() -> TestServer {
        Self::with_config(Config::default()).await
    }

    /// A server over the test backend (see [`test_backend`]) with `config` (its `backend`
    /// is replaced by the test backend's), opened as `aft serve` opens one.
    pub async fn with_config(mut config: Config) -> TestServer {
        let guard = test_backend_for(&mut config).await;
        let engine = node::open_engine(&config).await.expect("open the backend");
        let mut server = Self::with_engine(engine, config).await;
        server._backend = guard;
        server
    }

    /// Like [`TestServer::with_config`], with the test backend behind the fault wrapper
    /// (no random faults: the test injects them on demand).
    pub async fn with_faults(mut config: Config) -> (TestServer, Arc<FaultyStorage>) {
        let guard = test_backend_for(&mut config).await;
        let (storage, engine) = node::open_storage(&config).await.expect("open the backend");
        let faults = Arc::new(FaultyStorage::new(storage, FaultConfig::new(1)));
        let engine = Engine::open(faults.clone(), engine)
            .await
            .expect("open engine");
        let mut server = Self::with_engine(engine, config).await;
        server._backend = guard;
        (server, faults)
    }

    /// A server over the embedded backend in `dir` (fsync off), opened as `aft serve`
    /// opens one.
    pub async fn embedded(dir: &Path) -> TestServer {
        let config = Config {
            backend: "embedded".into(),
            data_dir: dir.to_owned(),
            fsync: false,
            ..Config::default()
        };
        let engine = node::open_engine(&config)
            .await
            .expect("open embedded storage");
        Self::with_engine(engine, config).await
    }

    /// A server over any storage, its engine configured from `config`.
    pub async fn with_storage(storage: Arc<dyn Storage>, config: Config) -> TestServer {
        let engine = Engine::open(storage, EngineConfig::from(&config))
            .await
            .expect("open engine");
        Self::with_engine(engine, config).await
    }

    /// A server over an open engine.
    pub async fn with_engine(engine: Arc<Engine>, config: Config) -> TestServer {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let node = Node::new(engine, Arc::new(config), addr.to_string());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, node, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            task: Some(task),
            _backend: BackendGuard::None,
        }
    }

    /// `redis://` URL of the server.
    pub fn url(&self) -> String {
        format!("redis://{}/", self.addr)
    }

    /// URL asking the redis crate for RESP3.
    pub fn url_resp3(&self) -> String {
        format!("redis://{}/?protocol=resp3", self.addr)
    }

    /// A multiplexed async connection of the `redis` crate. Over a networked backend a commit
    /// takes a round trip to it, so a long pipeline needs more than the crate's default
    /// 500 ms response timeout.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        let mut config = redis::AsyncConnectionConfig::new();
        if test_backend() != "memory" {
            config = config.set_response_timeout(Some(Duration::from_secs(120)));
        }
        redis::Client::open(self.url())
            .expect("client")
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .expect("connect")
    }

    /// Stops the server gracefully and waits for it (backend closed).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Whether a server listens on `addr` (loopback). A connection to a port nobody listens on
/// can still succeed, connected to itself, when the kernel happens to pick that very port as
/// its source (TCP simultaneous open): such a connection does not count.
pub fn listening(addr: SocketAddr) -> bool {
    match std::net::TcpStream::connect(addr) {
        Ok(stream) => stream.local_addr().ok() != stream.peer_addr().ok(),
        Err(_) => false,
    }
}

/// The `aft` binary running as a child process.
pub struct Process {
    pub child: Child,
    pub addr: SocketAddr,
}

impl Process {
    /// Starts `aft serve` on a free port with `args` added; waits until it accepts clients.
    pub fn spawn(data_dir: &Path, args: &[&str]) -> Process {
        let port = free_port();
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("addr");
        Self::spawn_at(data_dir, addr, args)
    }

    /// Like [`Process::spawn`], on a given address (to restart where clients reconnect).
    pub fn spawn_at(data_dir: &Path, addr: SocketAddr, args: &[&str]) -> Process {
        let child = Command::new(env!("CARGO_BIN_EXE_aft"))
            .arg("serve")
            .arg("--listen")
            .arg(addr.to_string())
            .arg("--data-dir")
            .arg(data_dir)
            .arg("--log")
            .arg("warn")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn aft");
        let deadline = Instant::now() + Duration::from_secs(30);
        while !listening(addr) {
            assert!(Instant::now() < deadline, "aft did not start on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        Process { child, addr }
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// SIGTERM, then wait for a clean exit; returns the exit status.
    pub fn terminate(mut self) -> std::process::ExitStatus {
        sigterm(self.child.id());
        self.child.wait().expect("wait aft")
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends SIGTERM with the system's `kill` command.
fn sigterm(pid: u32) {
    let _ = Command::new("kill")
        .arg("-TERM")
        .arg(pid.to_string())
        .status();
}

/// A port that was free a moment ago (and its cluster bus port too).
pub use aft::storage::testkit::redis_server::free_port;

/// Connects the Redis backend at `url`.
pub async fn redis_storage(url: &str) -> Arc<dyn Storage> {
    let options = RedisOptions::parse(url).expect("redis url");
    Arc::new(
        RedisStorage::connect(&options)
            .await
            .expect("connect to redis"),
    )
}

/// A connection of the `redis` crate with generous timeouts, for tests that kill and restart
/// servers under load.
pub async fn connect_patient(
    addr: SocketAddr,
) -> redis::RedisResult<redis::aio::MultiplexedConnection> {
    let config = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(20)));
    redis::Client::open(format!("redis://{addr}/"))?
        .get_multiplexed_async_connection_with_config(&config)
        .await
}

/// Sends `args` (a command and its arguments) and decodes the reply.
pub async fn query<T: redis::FromRedisValue>(
    con: &mut redis::aio::MultiplexedConnection,
    args: &[&str],
) -> redis::RedisResult<T> {
    let mut cmd = redis::cmd(args[0]);
    for a in &args[1..] {
        cmd.arg(*a);
    }
    cmd.query_async(con).await
}

/// The reply to `args` as text, for asserting on: a string's text, an integer's digits,
/// `OK`, `(nil)`, `error: …` for an error, and the `Debug` form of anything else.
pub async fn text(con: &mut redis::aio::MultiplexedConnection, args: &[&str]) -> String {
    use redis::Value;
    match query::<Value>(con, args).await {
        Ok(Value::BulkString(b)) => String::from_utf8_lossy(&b).into_owned(),
        Ok(Value::SimpleString(s)) | Ok(Value::VerbatimString { text: s, .. }) => s,
        Ok(Value::Okay) => "OK".into(),
        Ok(Value::Nil) => "(nil)".into(),
        Ok(Value::Int(i)) => i.to_string(),
        Ok(other) => format!("{other:?}"),
        Err(e) => format!("error: {e}"),
    }
}
