//! Queue throughput per database: enqueue (batched publishes) and competing dequeue (2 consumers,
//! batches of 100..500, acknowledged in batches), as messages per second. PostgreSQL and MySQL run when
//! `KESTRA_TEST_POSTGRES_URL` / `KESTRA_TEST_MYSQL_URL` are set (`eval "$(scripts/services.sh)"`).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use kestra_backend_jdbc::JdbcBackend;
use kestra_core::queue::{ConsumerGroup, DeliveryTag, Envelope, Queue, Topic};

const BATCH: usize = 500;
const MESSAGES: usize = 5_000;

fn messages(n: usize, round: u64) -> Vec<Envelope> {
    (0..n)
        .map(|i| {
            Envelope::new(
                Topic::Log,
                format!("k{}", i % 64),
                format!(
                    "{{\"round\":{round},\"i\":{i},\"message\":\"a log line of ordinary length\"}}"
                ),
            )
        })
        .collect()
}

async fn enqueue(queue: &Arc<dyn Queue>, n: usize, round: u64) {
    for chunk in messages(n, round).chunks(BATCH) {
        queue.publish(chunk.to_vec()).await.unwrap();
    }
}

/// Two competing consumers drain `n` messages, acknowledging each batch.
async fn dequeue(queue: &Arc<dyn Queue>, n: usize, batch: usize) {
    let left = Arc::new(std::sync::atomic::AtomicUsize::new(n));
    let consumers: Vec<_> = (0..2)
        .map(|_| {
            let (queue, left) = (queue.clone(), left.clone());
            tokio::spawn(async move {
                while left.load(std::sync::atomic::Ordering::Relaxed) > 0 {
                    let got = queue
                        .receive(
                            ConsumerGroup::Indexer,
                            Topic::Log,
                            batch,
                            Duration::from_secs(60),
                            Duration::from_millis(50),
                        )
                        .await
                        .unwrap();
                    if got.is_empty() {
                        continue;
                    }
                    let tags: Vec<DeliveryTag> = got.iter().map(|d| d.tag).collect();
                    queue.ack(ConsumerGroup::Indexer, &tags).await.unwrap();
                    left.fetch_sub(got.len(), std::sync::atomic::Ordering::Relaxed);
                }
            })
        })
        .collect();
    for c in consumers {
        c.await.unwrap();
    }
}

fn databases(rt: &tokio::runtime::Runtime) -> Vec<(&'static str, JdbcBackend)> {
    let mut out = Vec::new();
    let dir = std::env::temp_dir().join(format!("kestra-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sqlite = format!("sqlite://{}/bench.db?mode=rwc", dir.display());
    out.push((
        "sqlite",
        rt.block_on(JdbcBackend::connect(&sqlite)).unwrap(),
    ));
    for (name, var) in [
        ("postgres", "KESTRA_TEST_POSTGRES_URL"),
        ("mysql", "KESTRA_TEST_MYSQL_URL"),
    ] {
        match std::env::var(var) {
            Ok(url) => out.push((name, rt.block_on(JdbcBackend::connect(&url)).unwrap())),
            Err(_) => eprintln!("{var} unset: skipping {name}"),
        }
    }
    out
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dbs = databases(&rt);
    let mut group = c.benchmark_group("queue");
    group
        .sample_size(10)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .throughput(Throughput::Elements(MESSAGES as u64));
    for (name, backend) in &dbs {
        let queue = backend.queue();
        // Start from an empty queue.
        rt.block_on(dequeue_all(&queue));
        group.bench_function(BenchmarkId::new("enqueue", name), |b| {
            b.to_async(&rt).iter_custom(|iters| {
                let queue = queue.clone();
                async move {
                    let mut total = Duration::ZERO;
                    for round in 0..iters {
                        let start = Instant::now();
                        enqueue(&queue, MESSAGES, round).await;
                        total += start.elapsed();
                        dequeue(&queue, MESSAGES, BATCH).await;
                    }
                    total
                }
            })
        });
        for batch in [100, 500] {
            group.bench_function(
                BenchmarkId::new(format!("dequeue_2_consumers_batch_{batch}"), name),
                |b| {
                    b.to_async(&rt).iter_custom(|iters| {
                        let queue = queue.clone();
                        async move {
                            let mut total = Duration::ZERO;
                            for round in 0..iters {
                                enqueue(&queue, MESSAGES, round).await;
                                let start = Instant::now();
                                dequeue(&queue, MESSAGES, batch).await;
                                total += start.elapsed();
                            }
                            total
                        }
                    })
                },
            );
        }
        rt.block_on(backend.purge_broadcast()).unwrap();
    }
    group.finish();
}

async fn dequeue_all(queue: &Arc<dyn Queue>) {
    loop {
        let got = queue
            .receive(
                ConsumerGroup::Indexer,
                Topic::Log,
                1000,
                Duration::from_secs(60),
                Duration::ZERO,
            )
            .await
            .unwrap();
        if got.is_empty() {
            return;
        }
        let tags: Vec<DeliveryTag> = got.iter().map(|d| d.tag).collect();
        queue.ack(ConsumerGroup::Indexer, &tags).await.unwrap();
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
