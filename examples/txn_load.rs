//! Load generator for `make bench`: MULTI/EXEC transactions of 2 GETs and 2 SETs, each sent
//! as one pipelined write (`MULTI, GET a, GET b, SET a, SET b, EXEC`: one round trip per
//! transaction), over many connections, against any RESP server.
//!
//! ```text
//! cargo run --release --example txn_load -- [--host H] [--port P] [--connections 50]
//!     [--txns 100000] [--keys 100000] [--value-size 3] [--csv]
//! ```
//!
//! Prints the transactions per second (and, with `--csv`, one line `"TXN","<rate>"` like
//! `redis-benchmark --csv`). Exits non-zero if any EXEC did not reply with an array of 4
//! results.

use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

struct Options {
    host: String,
    port: u16,
    connections: usize,
    txns: u64,
    keys: u64,
    value_size: usize,
    csv: bool,
}

fn parse_args() -> Result<Options, String> {
    let mut options = Options {
        host: "127.0.0.1".into(),
        port: 6379,
        connections: 50,
        txns: 100_000,
        keys: 100_000,
        value_size: 3,
        csv: false,
    };
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "--csv" {
            options.csv = true;
            continue;
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let number = || {
            value
                .parse::<u64>()
                .map_err(|_| format!("{flag}: '{value}' is not a number"))
        };
        match flag.as_str() {
            "--host" => options.host = value.clone(),
            "--port" => options.port = u16::try_from(number()?).map_err(|_| "--port: too large")?,
            "--connections" => options.connections = number()?.max(1) as usize,
            "--txns" => options.txns = number()?,
            "--keys" => options.keys = number()?.max(2),
            "--value-size" => options.value_size = number()? as usize,
            other => return Err(format!("unknown flag {other}")),
        }
    }
    Ok(options)
}

/// A fast generator, seeded per connection.
struct Rng(rand::rngs::SmallRng);

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(rand::SeedableRng::seed_from_u64(seed))
    }

    fn next(&mut self) -> u64 {
        rand::RngCore::next_u64(&mut self.0)
    }
}

fn push_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
}

/// A reply, reduced to what the check needs.
enum Reply {
    Simple,
    Error(String),
    Array(usize),
}

/// Reads one reply (nested arrays included).
async fn read_reply<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    line: &mut String,
) -> std::io::Result<Reply> {
    line.clear();
    if reader.read_line(line).await? == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::UnexpectedEof,
            "connection closed",
        ));
    }
    let bad = || std::io::Error::new(std::io::ErrorKind::InvalidData, "bad reply");
    let text = line.trim_end();
    let (kind, rest) = text.split_at(1.min(text.len()));
    match kind {
        "+" | ":" => Ok(Reply::Simple),
        "-" => Ok(Reply::Error(rest.to_owned())),
        "$" => {
            let len: i64 = rest.parse().map_err(|_| bad())?;
            if len >= 0 {
                let mut skip = vec![0u8; len as usize + 2];
                reader.read_exact(&mut skip).await?;
            }
            Ok(Reply::Simple)
        }
        "*" => {
            let n: i64 = rest.parse().map_err(|_| bad())?;
            for _ in 0..n.max(0) {
                Box::pin(read_reply(reader, line)).await?;
            }
            Ok(Reply::Array(n.max(0) as usize))
        }
        _ => Err(bad()),
    }
}

async fn connection(
    options: Arc<Options>,
    seed: u64,
    txns: u64,
    failures: Arc<AtomicU64>,
) -> std::io::Result<()> {
    let stream = TcpStream::connect((options.host.as_str(), options.port)).await?;
    stream.set_nodelay(true)?;
    let (read, mut write) = stream.into_split();
    let mut reader = BufReader::new(read);
    let mut rng = Rng::new(seed);
    let value = vec![b'x'; options.value_size];
    let mut request = Vec::with_capacity(256);
    let mut line = String::new();
    for _ in 0..txns {
        let a = rng.next() % options.keys;
        let mut b = rng.next() % options.keys;
        if b == a {
            b = (a + 1) % options.keys;
        }
        let (a, b) = (format!("key:{a:012}"), format!("key:{b:012}"));
        request.clear();
        push_command(&mut request, &[b"MULTI"]);
        push_command(&mut request, &[b"GET", a.as_bytes()]);
        push_command(&mut request, &[b"GET", b.as_bytes()]);
        push_command(&mut request, &[b"SET", a.as_bytes(), &value]);
        push_command(&mut request, &[b"SET", b.as_bytes(), &value]);
        push_command(&mut request, &[b"EXEC"]);
        write.write_all(&request).await?;
        for _ in 0..5 {
            read_reply(&mut reader, &mut line).await?;
        }
        match read_reply(&mut reader, &mut line).await? {
            Reply::Array(4) => {}
            Reply::Error(e) => {
                if failures.fetch_add(1, Ordering::Relaxed) == 0 {
                    eprintln!("txn_load: EXEC failed: {e}");
                }
            }
            _ => {
                failures.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    Ok(())
}

#[tokio::main]
async fn main() -> ExitCode {
    let options = match parse_args() {
        Ok(o) => Arc::new(o),
        Err(e) => {
            eprintln!("txn_load: {e}");
            return ExitCode::from(2);
        }
    };
    let failures = Arc::new(AtomicU64::new(0));
    let per_connection = options.txns / options.connections as u64;
    let total = per_connection * options.connections as u64;
    let start = Instant::now();
    let tasks: Vec<_> = (0..options.connections)
        .map(|i| {
            tokio::spawn(connection(
                options.clone(),
                0x9e37_79b9_7f4a_7c15u64.wrapping_mul(i as u64 + 1),
                per_connection,
                failures.clone(),
            ))
        })
        .collect();
    for task in tasks {
        match task.await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                eprintln!("txn_load: connection failed: {e}");
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("txn_load: task failed: {e}");
                return ExitCode::FAILURE;
            }
        }
    }
    let rate = total as f64 / start.elapsed().as_secs_f64();
    if options.csv {
        println!("\"TXN\",\"{rate:.2}\"");
    } else {
        println!("TXN (MULTI, 2 GET, 2 SET, EXEC): {rate:.2} transactions per second");
    }
    let failed = failures.load(Ordering::Relaxed);
    if failed > 0 {
        eprintln!("txn_load: {failed} of {total} transactions failed");
        return ExitCode::FAILURE;
    }
    ExitCode::SUCCESS
}
