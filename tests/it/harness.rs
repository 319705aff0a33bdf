//! Starting aft for tests: in-process on port 0, or as the real binary (for crash tests).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use aft::config::Config;
use aft::server::{self, Context};
use aft::storage::embedded::{EmbeddedOptions, EmbeddedStorage};
use aft::storage::memory::MemoryStorage;
use aft::storage::Storage;
use aft::txn::{Engine, EngineConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// A server running inside the test process.
pub struct TestServer {
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    /// A server over the memory backend with default configuration.
    pub async fn start() -> TestServer {
        Self::with_storage(Arc::new(MemoryStorage::new()), Config::default()).await
    }

    /// A server over the memory backend with `config`.
    pub async fn with_config(config: Config) -> TestServer {
        Self::with_storage(Arc::new(MemoryStorage::new()), config).await
    }

    /// A server over the embedded backend in `dir`.
    pub async fn embedded(dir: &Path) -> TestServer {
        let storage = EmbeddedStorage::open(dir, EmbeddedOptions { fsync: false })
            .expect("open embedded storage");
        Self::with_storage(Arc::new(storage), Config::default()).await
    }

    /// A server over any storage.
    pub async fn with_storage(storage: Arc<dyn Storage>, config: Config) -> TestServer {
        let engine = Engine::open(storage, EngineConfig::default())
            .await
            .expect("open engine");
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let ctx = Context::new(engine, Arc::new(config), addr.to_string());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(server::run(listener, ctx, async {
            let _ = stopped.await;
        }));
        TestServer {
            addr,
            stop: Some(stop),
            task: Some(task),
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

    /// A multiplexed async connection of the `redis` crate.
    pub async fn client(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .expect("client")
            .get_multiplexed_async_connection()
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
        while std::net::TcpStream::connect(addr).is_err() {
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

/// A port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A redis-server on a free loopback port, stopped on drop.
pub struct RedisServer {
    child: Child,
    pub port: u16,
}

impl RedisServer {
    /// Starts one (no persistence) and waits until it accepts clients.
    pub fn start() -> RedisServer {
        let port = free_port();
        let child = Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
            ])
            .args(["--appendonly", "no", "--daemonize", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server must be installed (make deps installs it)");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "redis-server did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        RedisServer { child, port }
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
