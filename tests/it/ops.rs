//! Operating aft: CONFIG RESETSTAT and CONFIG GET as monitoring tools read them, INFO's
//! memory section, signals, logs, the open-file limit, configuration errors at start. Most
//! tests run the real binary, since that is where signals, limits and logs are handled.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use aft::config::Config;
use redis::aio::MultiplexedConnection;

use crate::harness::{free_port, TestServer};

// ---- a blocking RESP client, enough for these tests ----

/// A RESP2 reply.
#[derive(Debug, PartialEq)]
enum Resp {
    Simple(String),
    Error(String),
    Int(i64),
    Bulk(Option<String>),
    Array(Vec<Resp>),
}

struct Conn {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> std::io::Result<Conn> {
        let stream = TcpStream::connect(addr)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok(Conn {
            reader: BufReader::new(stream.try_clone()?),
            writer: stream,
        })
    }

    fn call(&mut self, args: &[&str]) -> std::io::Result<Resp> {
        let mut request = format!("*{}\r\n", args.len());
        for a in args {
            request.push_str(&format!("${}\r\n{a}\r\n", a.len()));
        }
        self.writer.write_all(request.as_bytes())?;
        self.read()
    }

    fn read(&mut self) -> std::io::Result<Resp> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let line = line.trim_end_matches("\r\n");
        let (kind, rest) = line.split_at(1);
        let number = || -> std::io::Result<i64> {
            rest.parse()
                .map_err(|_| std::io::Error::other(format!("bad RESP line {line:?}")))
        };
        Ok(match kind {
            "+" => Resp::Simple(rest.into()),
            "-" => Resp::Error(rest.into()),
            ":" => Resp::Int(number()?),
            "$" => match usize::try_from(number()?) {
                Err(_) => Resp::Bulk(None),
                Ok(n) => {
                    let mut body = vec![0; n + 2];
                    self.reader.read_exact(&mut body)?;
                    body.truncate(n);
                    Resp::Bulk(Some(String::from_utf8_lossy(&body).into_owned()))
                }
            },
            "*" => {
                let n = number()?.max(0);
                let mut items = Vec::new();
                for _ in 0..n {
                    items.push(self.read()?);
                }
                Resp::Array(items)
            }
            _ => return Err(std::io::Error::other(format!("bad RESP line {line:?}"))),
        })
    }

    fn info(&mut self, section: &str) -> String {
        match self.call(&["INFO", section]).expect("INFO") {
            Resp::Bulk(Some(text)) => text,
            other => panic!("INFO replied {other:?}"),
        }
    }

    /// The value of `CONFIG GET name`.
    fn config_get(&mut self, name: &str) -> String {
        match self.call(&["CONFIG", "GET", name]).expect("CONFIG GET") {
            Resp::Array(items) => match &items[..] {
                [Resp::Bulk(Some(n)), Resp::Bulk(Some(v))] if n == name => v.clone(),
                _ => panic!("CONFIG GET {name} replied {items:?}"),
            },
            other => panic!("CONFIG GET {name} replied {other:?}"),
        }
    }
}

fn field(info: &str, name: &str) -> String {
    info.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}:")))
        .map(|v| v.trim().to_string())
        .unwrap_or_else(|| panic!("no {name} in INFO:\n{info}"))
}

fn number(info: &str, name: &str) -> u64 {
    let value = field(info, name);
    value
        .parse()
        .unwrap_or_else(|_| panic!("{name}:{value} is not a number"))
}

// ---- the real binary ----

/// `aft serve` as a child process, killed when dropped.
struct Aft {
    child: Child,
    addr: SocketAddr,
}

impl Aft {
    /// Runs `program args…` (the aft binary, or a shell that execs it) and waits until it
    /// accepts clients on `addr`.
    fn start(mut command: Command, addr: SocketAddr) -> Aft {
        let child = command
            .env_remove("NO_COLOR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .spawn()
            .expect("spawn aft");
        let mut aft = Aft { child, addr };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !crate::harness::listening(addr) {
            if let Some(status) = aft.child.try_wait().expect("try_wait") {
                panic!("aft exited before listening: {status}");
            }
            assert!(Instant::now() < deadline, "aft did not start on {addr}");
            std::thread::sleep(Duration::from_millis(20));
        }
        aft
    }

    fn conn(&self) -> Conn {
        Conn::open(self.addr).expect("connect")
    }

    fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(status.success(), "kill -{name} failed");
    }

    /// Waits up to `limit` for the process to exit.
    fn wait(&mut self, limit: Duration) -> Option<ExitStatus> {
        wait_exit(&mut self.child, limit)
    }
}

impl Drop for Aft {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_exit(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return Some(status);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `aft serve` on a free port with `args`, its stderr going to `log`.
fn serve(args: &[&str], log: &Path) -> (Command, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut command = Command::new(env!("CARGO_BIN_EXE_aft"));
    command
        .arg("serve")
        .arg("--listen")
        .arg(addr.to_string())
        .args(args)
        .stderr(std::fs::File::create(log).expect("log file"));
    (command, addr)
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path).expect("read log")
}

// ---- CONFIG RESETSTAT ----

async fn query(c: &mut MultiplexedConnection, args: &[&str]) -> redis::RedisResult<redis::Value> {
    let mut command = redis::cmd(args[0]);
    for a in &args[1..] {
        command.arg(*a);
    }
    command.query_async(c).await
}

async fn info_of(c: &mut MultiplexedConnection) -> String {
    redis::cmd("INFO")
        .arg("everything")
        .query_async(c)
        .await
        .expect("INFO")
}

#[tokio::test]
async fn config_resetstat_zeroes_counters_and_keeps_gauges() {
    let server = TestServer::with_config(Config {
        max_clients: 3,
        ..Config::default()
    })
    .await;
    let mut a = server.client().await;
    let mut open = server.client().await;
    let mut other = server.client().await;
    query(&mut a, &["SET", "k", "v"]).await.expect("SET");
    query(&mut a, &["GET", "k"]).await.expect("GET");
    redis::pipe()
        .atomic()
        .set("x", 1)
        .incr("x", 1)
        .query_async::<()>(&mut a)
        .await
        .expect("MULTI/EXEC");
    query(&mut other, &["AFT.BEGIN"]).await.expect("AFT.BEGIN");
    query(&mut other, &["SET", "y", "1"])
        .await
        .expect("SET in txn");
    query(&mut other, &["AFT.COMMIT"])
        .await
        .expect("AFT.COMMIT");
    // An interactive transaction left open: a gauge.
    query(&mut open, &["AFT.BEGIN"]).await.expect("AFT.BEGIN");
    query(&mut open, &["SET", "z", "1"])
        .await
        .expect("SET in txn");
    // A fourth client is over max_clients: a rejected connection.
    let mut refused = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connect");
    let mut reply = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut refused, &mut reply)
        .await
        .expect("read the refusal");
    assert_eq!(reply, b"-ERR max number of clients reached\r\n");

    let before = info_of(&mut a).await;
    for counter in ["total_commands_processed", "aft_commits", "aft_txns_begun"] {
        assert!(number(&before, counter) > 0, "{counter}:\n{before}");
    }
    assert_eq!(number(&before, "total_connections_received"), 3, "{before}");
    assert_eq!(number(&before, "rejected_connections"), 1, "{before}");
    assert_eq!(number(&before, "aft_txns_committed"), 1, "{before}");

    let ok: String = redis::cmd("CONFIG")
        .arg("RESETSTAT")
        .query_async(&mut a)
        .await
        .expect("CONFIG RESETSTAT");
    assert_eq!(ok, "OK");
    let after = info_of(&mut a).await;
    // INFO itself is counted, as in Redis.
    assert_eq!(number(&after, "total_commands_processed"), 1, "{after}");
    for counter in [
        "total_connections_received",
        "rejected_connections",
        "aft_commits",
        "aft_conflicts",
        "aft_watch_failures",
        "aft_storage_errors",
        "aft_storage_reads",
        "aft_cache_hits",
        "aft_txns_begun",
        "aft_txns_committed",
        "aft_txns_aborted",
        "aft_idempotent_duplicates",
    ] {
        assert_eq!(number(&after, counter), 0, "{counter}:\n{after}");
    }
    // Gauges describe the present.
    assert_eq!(number(&after, "connected_clients"), 3, "{after}");
    assert_eq!(number(&after, "aft_open_txns"), 1, "{after}");
    assert!(number(&after, "aft_open_txn_bytes") > 0, "{after}");
    assert!(field(&after, "db0").starts_with("keys=3,"), "{after}");
    // Counting starts again.
    query(&mut a, &["SET", "k", "w"]).await.expect("SET");
    assert_eq!(number(&info_of(&mut a).await, "aft_commits"), 1);
    query(&mut open, &["AFT.ABORT"]).await.expect("AFT.ABORT");
}

// ---- CONFIG GET appendonly ----

#[test]
fn config_get_appendonly_reports_the_embedded_backends_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let cases: [(&[&str], &str, &str); 3] = [
        (&[], "yes", "always"),
        (&["--fsync", "false"], "yes", "everysec"),
        (&["--backend", "memory"], "no", "everysec"),
    ];
    for (i, (args, appendonly, appendfsync)) in cases.into_iter().enumerate() {
        let data = dir.path().join(format!("data{i}"));
        let log = dir.path().join(format!("aft{i}.log"));
        let (mut command, addr) = serve(args, &log);
        command.arg("--data-dir").arg(&data);
        let aft = Aft::start(command, addr);
        let mut c = aft.conn();
        assert_eq!(c.config_get("appendonly"), appendonly, "{args:?}");
        assert_eq!(c.config_get("appendfsync"), appendfsync, "{args:?}");
        assert_eq!(c.config_get("save"), "", "{args:?}");
        let aof = if appendonly == "yes" { 1 } else { 0 };
        assert_eq!(
            number(&c.info("persistence"), "aof_enabled"),
            aof,
            "{args:?}"
        );
    }
}

/// Each backend says what it vouches for: DynamoDB acknowledges durable writes, memory keeps
/// nothing, and a Redis backend's durability is that Redis's own configuration.
#[tokio::test]
async fn config_get_appendonly_follows_the_test_backend() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let expected = match crate::harness::test_backend().as_str() {
        "dynamodb" => ("yes", "always"),
        _ => ("no", "everysec"),
    };
    let got: Vec<String> = redis::cmd("CONFIG")
        .arg("GET")
        .arg("append*")
        .query_async::<Vec<String>>(&mut c)
        .await
        .expect("CONFIG GET");
    let value = |name: &str| {
        got.chunks(2)
            .find(|p| p[0] == name)
            .map(|p| p[1].clone())
            .unwrap_or_default()
    };
    assert_eq!(
        (value("appendonly").as_str(), value("appendfsync").as_str()),
        expected
    );
    server.stop().await;
}

// ---- INFO memory ----

#[tokio::test]
async fn info_memory_reports_the_resident_set() {
    let server = TestServer::start().await;
    let mut c = server.client().await;
    let value = "v".repeat(4 << 20);
    query(&mut c, &["SET", "big", &value]).await.expect("SET");
    query(&mut c, &["GET", "big"]).await.expect("GET");
    let info: String = redis::cmd("INFO")
        .arg("memory")
        .query_async(&mut c)
        .await
        .expect("INFO memory");
    let rss = number(&info, "used_memory_rss");
    let used = number(&info, "used_memory");
    let cached = number(&info, "aft_cached_value_bytes");
    assert!(rss > 0, "{info}");
    assert!(rss >= cached, "{info}");
    assert!(used >= cached, "{info}");
    assert!(rss > 4 << 20, "the 4 MiB value alone is resident:\n{info}");
    assert!(
        field(&info, "used_memory_rss_human").ends_with('M'),
        "{info}"
    );
    assert_eq!(number(&info, "maxmemory"), 0, "{info}");
}

// ---- signals and logs ----

#[test]
fn sighup_is_ignored_and_sigterm_still_exits_cleanly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("aft.log");
    let (command, addr) = serve(&["--backend", "memory", "--log", "info"], &log);
    let mut aft = Aft::start(command, addr);
    aft.signal("HUP");
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(aft.wait(Duration::ZERO), None, "SIGHUP stopped aft");
    let mut c = aft.conn();
    assert_eq!(
        c.call(&["PING"]).expect("PING"),
        Resp::Simple("PONG".into())
    );
    aft.signal("TERM");
    let status = aft
        .wait(Duration::from_secs(20))
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status}");
    let text = read_log(&log);
    assert!(text.contains("received SIGHUP: ignored"), "{text}");
}

#[test]
fn logs_written_to_a_file_have_no_colour_codes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("aft.log");
    let (command, addr) = serve(&["--backend", "memory", "--log", "debug"], &log);
    let mut aft = Aft::start(command, addr);
    aft.conn().call(&["PING"]).expect("PING");
    aft.signal("TERM");
    let status = aft
        .wait(Duration::from_secs(20))
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status}");
    let text = read_log(&log);
    assert!(text.contains("aft ready"), "{text}");
    assert!(text.contains("INFO"), "{text}");
    assert!(!text.contains('\x1b'), "escape codes in the log: {text:?}");
}

// ---- configuration errors and limits ----

#[test]
fn a_log_filter_that_does_not_parse_stops_the_start() {
    let mut child = Command::new(env!("CARGO_BIN_EXE_aft"))
        .args(["serve", "--backend", "memory", "--listen", "127.0.0.1:0"])
        .args(["--log", "not a[filter"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn aft");
    let Some(status) = wait_exit(&mut child, Duration::from_secs(20)) else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("aft started with an invalid log filter");
    };
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .expect("stderr")
        .read_to_string(&mut stderr)
        .expect("read stderr");
    assert_eq!(status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("log filter 'not a[filter'"), "{stderr}");
}

#[test]
fn a_max_clients_of_zero_or_beyond_a_semaphore_stops_the_start() {
    let dir = tempfile::tempdir().expect("tempdir");
    // 0 used to refuse every client; 2^62 is above tokio's Semaphore::MAX_PERMITS and used
    // to panic once the server was up.
    for value in ["0", "4611686018427387904"] {
        let config = dir.path().join("aft.toml");
        std::fs::write(
            &config,
            format!("backend = \"memory\"\nlisten = \"127.0.0.1:0\"\nmax_clients = {value}\n"),
        )
        .expect("write config");
        let log = dir.path().join("aft.log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_aft"))
            .arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log file"))
            .spawn()
            .expect("spawn aft");
        let Some(status) = wait_exit(&mut child, Duration::from_secs(20)) else {
            let _ = child.kill();
            let _ = child.wait();
            panic!("aft started with max_clients = {value}");
        };
        let stderr = read_log(&log);
        assert_eq!(status.code(), Some(2), "max_clients = {value}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "max_clients must be between 1 and 1073741824 (got {value})"
            )),
            "{stderr}"
        );
    }
}

#[test]
fn a_low_open_file_limit_lowers_maxclients_and_refuses_extra_clients() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log = dir.path().join("aft.log");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse().expect("addr");
    let mut command = Command::new("sh");
    // `ulimit -n` sets the soft and the hard limit: aft cannot raise it. max_clients is
    // its default, 10000.
    command
        .arg("-c")
        .arg("ulimit -n 64 && exec \"$0\" \"$@\"")
        .arg(env!("CARGO_BIN_EXE_aft"))
        .args(["serve", "--backend", "memory", "--log", "warn"])
        .args(["--listen", &addr.to_string()])
        .stderr(std::fs::File::create(&log).expect("log file"));
    let aft = Aft::start(command, addr);
    let mut first = aft.conn();
    assert_eq!(number(&first.info("clients"), "maxclients"), 64 - 32);
    assert_eq!(first.config_get("maxclients"), "32");
    // The probes of Aft::start have gone.
    let deadline = Instant::now() + Duration::from_secs(10);
    while number(&first.info("clients"), "connected_clients") != 1 {
        assert!(Instant::now() < deadline, "probe connections linger");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut clients = Vec::new();
    for i in 1..32 {
        let mut c = aft.conn();
        let pong = c.call(&["PING"]);
        assert_eq!(pong.ok(), Some(Resp::Simple("PONG".into())), "client {i}");
        clients.push(c);
    }
    let mut extra = aft.conn();
    let refusal = extra.read().expect("a reply, not a hang");
    assert_eq!(
        refusal,
        Resp::Error("ERR max number of clients reached".into())
    );
    assert_eq!(number(&first.info("clients"), "rejected_connections"), 1);
    let text = read_log(&log);
    assert!(
        text.contains(
            "You requested maxclients of 10000 requiring at least 10032 max file descriptors"
        ),
        "{text}"
    );
    assert!(text.contains("maxclients has been reduced to 32"), "{text}");
    assert!(!text.contains("accept failed"), "{text}");
}
