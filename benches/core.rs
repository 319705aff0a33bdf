//! Micro-benchmarks of aft's hot paths (`cargo bench`): request parsing, reply encoding, a
//! read served from the version cache, a snapshot pin, and commits of 1 and of 100 keys
//! through the core on the memory backend. End-to-end load against Redis is `make bench`.

use std::hint::black_box;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BatchSize, Criterion, Throughput};

use aft::resp::{Limits, Protocol, Reply, RequestParser};
use aft::storage::memory::MemoryStorage;
use aft::txn::{Engine, EngineConfig, Entry};

const LIMITS: Limits = Limits {
    max_bulk_len: 512 << 20,
    max_multibulk_len: 1 << 20,
    max_inline_len: 64 << 10,
};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .expect("runtime")
}

fn parsing(c: &mut Criterion) {
    let mut pipeline = Vec::new();
    for i in 0..16 {
        let key = format!("key:{i:06}");
        pipeline.extend_from_slice(
            format!(
                "*3\r\n$3\r\nSET\r\n${}\r\n{key}\r\n$5\r\nvalue\r\n",
                key.len()
            )
            .as_bytes(),
        );
    }
    let mut group = c.benchmark_group("resp");
    group.throughput(Throughput::Elements(16));
    group.bench_function("parse 16 pipelined SETs", |b| {
        b.iter_batched(
            || BytesMut::from(&pipeline[..]),
            |mut buf| {
                let mut parser = RequestParser::new(LIMITS);
                parser.set_authenticated(true);
                let mut n = 0;
                while let Ok(Some(args)) = parser.parse(&mut buf) {
                    n += args.len();
                }
                black_box(n)
            },
            BatchSize::SmallInput,
        )
    });
    let reply = Reply::Array(
        (0..100)
            .map(|i| Reply::Bulk(Bytes::from(format!("value-{i:04}"))))
            .collect(),
    );
    group.throughput(Throughput::Elements(100));
    group.bench_function("encode an array of 100 bulk strings", |b| {
        let mut out = BytesMut::with_capacity(4096);
        b.iter(|| {
            out.clear();
            black_box(&reply).encode(Protocol::Resp2, &mut out);
            black_box(out.len())
        })
    });
    group.finish();
}

fn core(c: &mut Criterion) {
    let rt = runtime();
    let engine = rt.block_on(async {
        Engine::open(Arc::new(MemoryStorage::new()), EngineConfig::default())
            .await
            .expect("engine")
    });
    let hot = Bytes::from_static(b"hot");
    rt.block_on(async {
        let mut txn = engine.begin();
        txn.put(
            hot.clone(),
            Entry::string(Bytes::from_static(b"cached value")),
        );
        txn.commit().await.expect("commit");
    });
    let mut group = c.benchmark_group("core");
    group.bench_function("read served from the cache", |b| {
        b.iter(|| {
            rt.block_on(async {
                let mut txn = engine.begin();
                black_box(txn.get(&hot).await.expect("get"))
            })
        })
    });
    group.bench_function("begin, pin a snapshot, end", |b| {
        b.iter(|| {
            let mut txn = engine.begin();
            black_box(txn.meta(&hot))
        })
    });
    for keys in [1usize, 100] {
        let names: Vec<Bytes> = (0..keys).map(|i| Bytes::from(format!("k{i}"))).collect();
        group.throughput(Throughput::Elements(keys as u64));
        group.bench_function(format!("commit of {keys} keys"), |b| {
            b.iter(|| {
                rt.block_on(async {
                    let mut txn = engine.begin();
                    for key in &names {
                        txn.put(key.clone(), Entry::string(Bytes::from_static(b"v")));
                    }
                    black_box(txn.commit().await.expect("commit"))
                })
            })
        });
    }
    group.finish();
}

criterion_group!(benches, parsing, core);
criterion_main!(benches);
