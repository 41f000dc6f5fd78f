//! Diagnostic: latency of back-to-back Kafka transactions on a broker (`KESTRA_TEST_KAFKA_BROKERS`),
//! as the executor's units and the worker's recorded receives run them: begin, produce N records,
//! (optionally) send consumer offsets, commit. Prints the median and p90 per step for each value of
//! `retry.backoff.ms` given as arguments (default: librdkafka's 100, then 10).
//!
//! Run: `cargo run --release -p kestra-backend-kafka --example txn_latency -- 100 10`

use std::time::{Duration, Instant};

use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::{Offset, TopicPartitionList};

fn pct(v: &mut [Duration], p: f64) -> f64 {
    v.sort();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i].as_secs_f64() * 1000.0
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let brokers =
        std::env::var("KESTRA_TEST_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:19092".into());
    let topic = format!("kspeed_probe_{}", std::process::id());
    let admin: AdminClient<_> = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .create()
        .expect("admin");
    admin
        .create_topics(
            &[NewTopic::new(&topic, 4, TopicReplication::Fixed(1))],
            &AdminOptions::new(),
        )
        .await
        .expect("create topic");
    let backoffs: Vec<String> = {
        let a: Vec<String> = std::env::args().skip(1).collect();
        if a.is_empty() {
            vec!["100".into(), "10".into()]
        } else {
            a
        }
    };
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", format!("{topic}-g"))
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    consumer.subscribe(&[&topic]).expect("subscribe");
    let start = Instant::now();
    while consumer.assignment().map(|a| a.count()).unwrap_or(0) == 0
        && start.elapsed() < Duration::from_secs(20)
    {
        consumer.poll(Duration::from_millis(100));
    }
    for backoff in backoffs {
        let producer: BaseProducer = ClientConfig::new()
            .set("bootstrap.servers", &brokers)
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", "2")
            .set("retry.backoff.ms", &backoff)
            .set("transactional.id", format!("{topic}-{backoff}"))
            .create()
            .expect("producer");
        producer
            .init_transactions(Duration::from_secs(30))
            .expect("init");
        for offsets in [false, true] {
            let (mut produce, mut send_offsets, mut commit, mut total) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for i in 0..60 {
                let t0 = Instant::now();
                producer.begin_transaction().expect("begin");
                for p in 0..4 {
                    let key = format!("k{i}-{p}");
                    producer
                        .send(BaseRecord::to(&topic).key(&key).payload("x").partition(p))
                        .expect("send");
                }
                let t1 = Instant::now();
                if offsets {
                    let mut tpl = TopicPartitionList::new();
                    tpl.add_partition_offset(&topic, 0, Offset::Offset(i))
                        .expect("tpl");
                    let meta = consumer.group_metadata().expect("metadata");
                    producer
                        .send_offsets_to_transaction(&tpl, &meta, Duration::from_secs(30))
                        .expect("offsets");
                }
                let t2 = Instant::now();
                producer
                    .commit_transaction(Duration::from_secs(30))
                    .expect("commit");
                let t3 = Instant::now();
                consumer.poll(Duration::ZERO);
                if i >= 10 {
                    produce.push(t1 - t0);
                    send_offsets.push(t2 - t1);
                    commit.push(t3 - t2);
                    total.push(t3 - t0);
                }
            }
            println!(
                "retry.backoff.ms={backoff} offsets={offsets}: total p50 {:.1} ms p90 {:.1} ms | produce p50 {:.1} | send_offsets p50 {:.1} p90 {:.1} | commit p50 {:.1} p90 {:.1}",
                pct(&mut total.clone(), 0.5),
                pct(&mut total, 0.9),
                pct(&mut produce, 0.5),
                pct(&mut send_offsets.clone(), 0.5),
                pct(&mut send_offsets, 0.9),
                pct(&mut commit.clone(), 0.5),
                pct(&mut commit, 0.9),
            );
        }
    }
    let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
}
