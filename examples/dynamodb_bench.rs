//! Commit latency and throughput through aft on the DynamoDB backend, against direct
//! `BatchWriteItem` and `TransactWriteItems` calls on the same emulator, in the same run.
//!
//! ```sh
//! cargo run --release --example dynamodb_bench [-- SECONDS_PER_STEP [ROUNDS]]
//! ```
//!
//! A dynoxide emulator and an aft server run in this process. Each step runs N concurrent
//! clients (1, then 16) for a few seconds doing one of:
//!
//! * `aft MSET`: `MSET k1 v1 k2 v2` through aft (a RESP client per task): one commit of two
//!   versions, which aft writes with one `TransactWriteItems` of three items (two versions and
//!   the commit record);
//! * `BatchWriteItem`: two items, straight to the emulator;
//! * `TransactWriteItems`: two items, straight to the emulator; and three items, what aft's
//!   commit of two keys writes.
//!
//! Steps are interleaved round by round so that drift in the machine's speed hits all three
//! alike; the report gives p50/p99 latency, throughput and the ratios to the direct calls.

use std::sync::Arc;
use std::time::{Duration, Instant};

use aft::config::Config;
use aft::node::Node;
use aft::server;
use aft::storage::dynamodb::{sdk_client, CredentialSource, DynamoDbOptions, DynamoDbStorage};
use aft::txn::{Engine, EngineConfig};
use aws_sdk_dynamodb::primitives::Blob;
use aws_sdk_dynamodb::types::{AttributeValue, Put, PutRequest, TransactWriteItem, WriteRequest};
use tokio::net::TcpListener;

const VALUE_BYTES: usize = 100;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Aft,
    Batch,
    Transact,
    /// Two items and a third standing for the commit record: what aft's commit writes.
    Transact3,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Aft => "aft MSET (2 keys)",
            Kind::Batch => "BatchWriteItem (2 items)",
            Kind::Transact => "TransactWriteItems (2 items)",
            Kind::Transact3 => "TransactWriteItems (3 items)",
        }
    }
}

#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    elapsed: Duration,
    errors: u64,
}

impl Samples {
    fn percentile(&mut self, p: f64) -> Duration {
        if self.latencies.is_empty() {
            return Duration::ZERO;
        }
        self.latencies.sort();
        let i = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[i]
    }

    fn throughput(&self) -> f64 {
        self.latencies.len() as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }
}

fn item(pk: String, sk: u64, value: &[u8]) -> std::collections::HashMap<String, AttributeValue> {
    std::collections::HashMap::from([
        (
            "pk".to_owned(),
            AttributeValue::B(Blob::new(pk.into_bytes())),
        ),
        (
            "sk".to_owned(),
            AttributeValue::B(Blob::new(sk.to_be_bytes().to_vec())),
        ),
        ("v".to_owned(), AttributeValue::B(Blob::new(value.to_vec()))),
    ])
}

/// One client's loop: operations until `until`; returns their latencies and errors.
async fn client_loop(
    kind: Kind,
    client: usize,
    until: Instant,
    aft_addr: std::net::SocketAddr,
    dynamo: aws_sdk_dynamodb::Client,
    table: String,
) -> (Vec<Duration>, u64) {
    let value = vec![b'x'; VALUE_BYTES];
    let mut latencies = Vec::new();
    let mut errors = 0;
    let mut redis = None;
    if kind == Kind::Aft {
        match redis::Client::open(format!("redis://{aft_addr}/")) {
            Ok(c) => redis = c.get_multiplexed_async_connection().await.ok(),
            Err(_) => return (latencies, 1),
        }
        if redis.is_none() {
            return (latencies, 1);
        }
    }
    let mut n: u64 = 0;
    while Instant::now() < until {
        n += 1;
        let started = Instant::now();
        let ok = match kind {
            Kind::Aft => {
                let Some(con) = redis.as_mut() else { break };
                let reply: redis::RedisResult<()> = redis::cmd("MSET")
                    .arg(format!("bench:{client}:a"))
                    .arg(&value)
                    .arg(format!("bench:{client}:b"))
                    .arg(&value)
                    .query_async(con)
                    .await;
                reply.is_ok()
            }
            Kind::Batch => {
                let requests: Vec<WriteRequest> = ["a", "b"]
                    .iter()
                    .filter_map(|k| {
                        let put = PutRequest::builder()
                            .set_item(Some(item(format!("direct:{client}:{k}"), n, &value)))
                            .build()
                            .ok()?;
                        Some(WriteRequest::builder().put_request(put).build())
                    })
                    .collect();
                dynamo
                    .batch_write_item()
                    .request_items(&table, requests)
                    .send()
                    .await
                    .is_ok_and(|o| o.unprocessed_items().is_none_or(|u| u.is_empty()))
            }
            Kind::Transact | Kind::Transact3 => {
                let names: &[&str] = if kind == Kind::Transact3 {
                    &["a", "b", "record"]
                } else {
                    &["a", "b"]
                };
                let actions: Vec<TransactWriteItem> = names
                    .iter()
                    .filter_map(|k| {
                        let put = Put::builder()
                            .table_name(&table)
                            .set_item(Some(item(format!("direct:{client}:{k}"), n, &value)))
                            .build()
                            .ok()?;
                        Some(TransactWriteItem::builder().put(put).build())
                    })
                    .collect();
                dynamo
                    .transact_write_items()
                    .set_transact_items(Some(actions))
                    .send()
                    .await
                    .is_ok()
            }
        };
        if ok {
            latencies.push(started.elapsed());
        } else {
            errors += 1;
        }
    }
    (latencies, errors)
}

#[tokio::main(flavor = "multi_thread")]
async fn main() {
    let mut args = std::env::args().skip(1);
    let step: f64 = args.next().and_then(|a| a.parse().ok()).unwrap_or(3.0);
    let rounds: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(3);
    let step = Duration::from_secs_f64(step);

    // The emulator.
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind emulator");
    let endpoint = format!(
        "http://{}",
        listener.local_addr().expect("emulator address")
    );
    let db = dynoxide::Database::memory().expect("emulator database");
    tokio::spawn(async move {
        let _ = dynoxide::server::serve_with_shutdown(listener, db, std::future::pending()).await;
    });
    let options = DynamoDbOptions {
        region: Some("us-east-1".into()),
        endpoint: Some(endpoint.clone()),
        create_table: true,
        credentials: CredentialSource::Static {
            access_key_id: "bench".into(),
            secret_access_key: "bench".into(),
        },
        ..DynamoDbOptions::new("aft")
    };

    // aft on it.
    let storage = Arc::new(
        DynamoDbStorage::connect(options.clone())
            .await
            .expect("connect"),
    );
    let engine = Engine::open(storage.clone(), EngineConfig::default())
        .await
        .expect("engine");
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind aft");
    let aft_addr = listener.local_addr().expect("aft address");
    let ctx = Node::new(engine, Arc::new(Config::default()), aft_addr.to_string());
    tokio::spawn(server::run(listener, ctx, std::future::pending()));

    // Direct calls: the same SDK client configuration the backend uses (no SDK retries).
    let dynamo = sdk_client(&options).await.expect("sdk client");

    println!(
        "emulator {endpoint}, aft {aft_addr}; {rounds} rounds of {step:?} per step, values of \
         {VALUE_BYTES} bytes"
    );
    let kinds = [Kind::Aft, Kind::Batch, Kind::Transact, Kind::Transact3];
    for clients in [1usize, 16] {
        let mut results: Vec<Samples> = kinds.iter().map(|_| Samples::default()).collect();
        for round in 0..rounds {
            // Rotate the order each round.
            for offset in 0..kinds.len() {
                let k = (round + offset) % kinds.len();
                let kind = kinds[k];
                let started = Instant::now();
                let until = started + step;
                let tasks: Vec<_> = (0..clients)
                    .map(|c| {
                        tokio::spawn(client_loop(
                            kind,
                            c,
                            until,
                            aft_addr,
                            dynamo.clone(),
                            options.table.clone(),
                        ))
                    })
                    .collect();
                for task in tasks {
                    if let Ok((latencies, errors)) = task.await {
                        results[k].latencies.extend(latencies);
                        results[k].errors += errors;
                    }
                }
                results[k].elapsed += started.elapsed();
            }
        }
        println!("\n{clients} concurrent client(s):");
        println!(
            "  {:<30} {:>10} {:>10} {:>12} {:>8}",
            "workload", "p50 ms", "p99 ms", "ops/s", "errors"
        );
        let mut summary = Vec::new();
        for (kind, samples) in kinds.iter().zip(results.iter_mut()) {
            let p50 = samples.percentile(0.50);
            let p99 = samples.percentile(0.99);
            let rate = samples.throughput();
            println!(
                "  {:<30} {:>10.2} {:>10.2} {:>12.0} {:>8}",
                kind.name(),
                p50.as_secs_f64() * 1e3,
                p99.as_secs_f64() * 1e3,
                rate,
                samples.errors
            );
            summary.push((p50, rate));
        }
        let (aft_p50, aft_rate) = summary[0];
        for (i, kind) in kinds.iter().enumerate().skip(1) {
            let (p50, rate) = summary[i];
            println!(
                "  aft vs {:<28} p50 x{:.2}, throughput x{:.2}",
                kind.name(),
                aft_p50.as_secs_f64() / p50.as_secs_f64().max(1e-9),
                aft_rate / rate.max(1e-9)
            );
        }
    }
    println!("\nbackend counters: {:?}", storage.stats());
}
