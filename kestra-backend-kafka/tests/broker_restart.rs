//! Kafka fault tests with a broker of their own (issue 10, "Done when"): the broker is killed and
//! started again in the middle of a run of executions; each execution ends once, none is lost or
//! duplicated, no task run has a second SUCCESS.
//!
//! The broker is NOT the shared one of `scripts/services.sh` (other tests use it): each test
//! starts its own KRaft node from the distribution `scripts/services/kafka.sh` caches
//! (`$KESTRA_SERVICES_DIR/kafka/libs-*`, default `/var/tmp/kestra-services`), on free ports,
//! with a log dir in a temporary directory, and kills only that process. Needs `java` and the
//! cached distribution: skipped loudly when missing, a failure under CI=true. The run's size is
//! `KESTRA_TEST_RESTART_EXECUTIONS` (default 1,000, as issue 10 asks).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use kestra_backend_kafka::{KafkaOptions, KafkaQueue};
use kestra_core::messages::ExecutionChange;
use kestra_core::runtime::{Components, Engine};
use kestra_core::testkit::memory::{MemoryRepositories, MemoryStorage};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::Message;
use rdkafka::{ClientConfig, Offset, TopicPartitionList};

/// The cached Kafka distribution (a `libs-*` folder holding `.complete`), or `None` (loudly; a
/// panic under CI=true).
fn kafka_libs() -> Option<PathBuf> {
    let base = std::env::var("KESTRA_SERVICES_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| PathBuf::from("/var/tmp/kestra-services"))
        .join("kafka");
    let found = std::fs::read_dir(&base).ok().and_then(|entries| {
        entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with("libs-"))
                    && p.join(".complete").exists()
            })
            .max()
    });
    let java = Command::new("java")
        .arg("-version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    match found {
        Some(libs) if java => Some(libs),
        _ => {
            let ci = std::env::var("CI").is_ok_and(|v| v == "true" || v == "1");
            assert!(
                !ci,
                "no cached Kafka distribution under {} (or no java) under CI=true: scripts/services.sh fetches it",
                base.display()
            );
            eprintln!(
                "\n!!!!! SKIPPED: no cached Kafka distribution under {} (or no java); run scripts/services.sh first !!!!!\n",
                base.display()
            );
            None
        }
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A single-node KRaft broker of this test: its own ports and log dir, killed on drop.
struct OwnBroker {
    libs: PathBuf,
    dir: tempfile::TempDir,
    port: u16,
    child: Option<Child>,
    starts: u32,
}

impl OwnBroker {
    fn java(libs: &Path, dir: &Path) -> Command {
        let log4j = dir.join("log4j2.properties");
        if !log4j.exists() {
            std::fs::write(
                &log4j,
                "status = warn\nrootLogger.level = INFO\nrootLogger.appenderRefs = stdout\n\
                 rootLogger.appenderRef.stdout.ref = STDOUT\nappender.stdout.type = Console\n\
                 appender.stdout.name = STDOUT\nappender.stdout.layout.type = PatternLayout\n\
                 appender.stdout.layout.pattern = [%d] %p %m (%c)%n\n",
            )
            .unwrap();
        }
        let mut c = Command::new("java");
        c.args([
            "-Xms256m",
            "-Xmx256m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
        ])
        .arg(format!("-Dlog4j2.configurationFile={}", log4j.display()))
        .arg("-cp")
        .arg(format!("{}/*", libs.display()));
        c
    }

    /// Format a log dir and start the broker (same settings as scripts/services/kafka.sh).
    fn start(libs: PathBuf) -> OwnBroker {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let controller = free_port();
        let conf = dir.path().join("server.properties");
        std::fs::write(
            &conf,
            format!(
                "process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers=127.0.0.1:{controller}
listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
advertised.listeners=PLAINTEXT://127.0.0.1:{port},CONTROLLER://127.0.0.1:{controller}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs={}
num.partitions=1
auto.create.topics.enable=false
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
transaction.state.log.num.partitions=4
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
default.replication.factor=1
min.insync.replicas=1
group.initial.rebalance.delay.ms=0
",
                dir.path().join("data").display()
            ),
        )
        .unwrap();
        let out = Self::java(&libs, dir.path())
            .args(["kafka.tools.StorageTool", "random-uuid"])
            .output()
            .unwrap();
        let cluster = String::from_utf8_lossy(&out.stdout).trim().to_string();
        assert!(
            !cluster.is_empty(),
            "StorageTool random-uuid printed nothing"
        );
        let status = Self::java(&libs, dir.path())
            .args(["kafka.tools.StorageTool", "format", "--standalone", "-t"])
            .arg(&cluster)
            .arg("-c")
            .arg(&conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "formatting the broker's log dir failed");
        let mut broker = OwnBroker {
            libs,
            dir,
            port,
            child: None,
            starts: 0,
        };
        broker.run();
        broker
    }

    fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Start the process (again) and wait until it serves.
    fn run(&mut self) {
        self.starts += 1;
        let log = self.dir.path().join(format!("kafka-{}.log", self.starts));
        let file = std::fs::File::create(&log).unwrap();
        let child = Self::java(&self.libs, self.dir.path())
            .arg("kafka.Kafka")
            .arg(self.dir.path().join("server.properties"))
            .stdin(Stdio::null())
            .stdout(file.try_clone().unwrap())
            .stderr(file)
            .spawn()
            .unwrap();
        eprintln!(
            "own broker started on {} (pid {}, start {})",
            self.address(),
            child.id(),
            self.starts
        );
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let mut text = String::new();
            if let Ok(mut f) = std::fs::File::open(&log) {
                let _ = f.read_to_string(&mut text);
            }
            if text.contains("Kafka Server started")
                && std::net::TcpStream::connect(self.address()).is_ok()
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "own broker not ready within 90 s; log:\n{text}"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// SIGKILL the broker (and wait for it): a crash, not a clean shutdown.
    fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
            eprintln!("own broker killed");
        }
    }
}

impl Drop for OwnBroker {
    fn drop(&mut self) {
        self.kill();
    }
}

const FLOW: &str = "id: two\nnamespace: company.restart\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: a\n  - id: b\n    type: io.kestra.plugin.core.debug.Return\n    format: b\n";

/// Every committed record of the execution change topic, read from the start.
fn committed_changes(options: &KafkaOptions) -> Vec<ExecutionChange> {
    let name = options.topic_name(kestra_core::queue::Topic::ExecutionChange);
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &options.brokers)
        .set("group.id", format!("{}check", options.prefix))
        .set("enable.auto.commit", "false")
        .set("isolation.level", "read_committed")
        .set("enable.partition.eof", "true")
        .create()
        .unwrap();
    let mut tpl = TopicPartitionList::new();
    let mut remaining = HashSet::new();
    for p in 0..options.partitions {
        let (low, high) = consumer
            .fetch_watermarks(&name, p, Duration::from_secs(10))
            .unwrap();
        if high > low {
            tpl.add_partition_offset(&name, p, Offset::Beginning)
                .unwrap();
            remaining.insert(p);
        }
    }
    let mut out = Vec::new();
    if remaining.is_empty() {
        return out;
    }
    consumer.assign(&tpl).unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !remaining.is_empty() {
        assert!(Instant::now() < deadline, "reading {name} took over 60 s");
        match consumer.poll(Duration::from_millis(500)) {
            Some(Ok(m)) => out.push(serde_json::from_slice(m.payload().unwrap()).unwrap()),
            Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                remaining.remove(&p);
            }
            Some(Err(e)) => panic!("reading {name}: {e}"),
            None => {}
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn broker_restart_during_a_run_loses_and_doubles_nothing() {
    let Some(libs) = kafka_libs() else { return };
    let n: usize = std::env::var("KESTRA_TEST_RESTART_EXECUTIONS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let mut broker = tokio::task::spawn_blocking(move || OwnBroker::start(libs))
        .await
        .unwrap();
    let options = KafkaOptions::new(broker.address())
        .with_prefix("kestra_restart_")
        .with_partitions(4);
    let queue = Arc::new(KafkaQueue::connect(options.clone()).await.unwrap());
    let engine = Engine::builder(
        queue,
        MemoryRepositories::new().repositories(),
        Arc::new(MemoryStorage::new()),
    )
    .components(Components {
        executor: true,
        worker: true,
        ..Components::none()
    })
    .start();
    engine.deploy(FLOW).await.unwrap();
    let start = Instant::now();
    let mut ids = HashSet::new();
    for _ in 0..n {
        let e = engine
            .execute("company.restart", "two", Default::default())
            .await
            .unwrap();
        ids.insert(e.id);
    }
    // Kill the broker once a tenth of the run has ended (the read above takes a while).
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let done = common::ended(&KafkaQueue::executions(&options).await.unwrap(), &ids);
        if done >= n / 10 {
            eprintln!(
                "{done} of {n} ended after {:?}: killing the broker",
                start.elapsed()
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {n} ended before the restart"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let restart = Instant::now();
    broker = tokio::task::spawn_blocking(move || {
        broker.kill();
        std::thread::sleep(Duration::from_secs(3));
        broker.run();
        broker
    })
    .await
    .unwrap();
    eprintln!("broker back after {:?}", restart.elapsed());
    let deadline = Instant::now() + Duration::from_secs(240);
    let executions = loop {
        // Right after the restart partition leaders may be unknown for a moment.
        let executions = match KafkaQueue::executions(&options).await {
            Ok(e) => e,
            Err(e) => {
                eprintln!("reading the executor state after the restart: {e}");
                assert!(
                    Instant::now() < deadline,
                    "the executor state stayed unreadable"
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        let done = common::ended(&executions, &ids);
        if done == n {
            break executions;
        }
        assert!(
            Instant::now() < deadline,
            "only {done} of {n} executions ended within 240 s of the broker's restart"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eprintln!(
        "broker restart: {n} executions of a 2-task flow ended in {:?} ({:?} after the restart)",
        start.elapsed(),
        restart.elapsed()
    );
    engine.shutdown().await;

    // None lost, none doubled: exactly the started executions, each SUCCESS with two task runs,
    // each task run SUCCESS once.
    common::assert_each_ended_once(&executions, &ids, n);
    // The committed changes (what the indexer applies): per execution versions 1, 2, ... in
    // order, none repeated, and one terminal change.
    let changes = tokio::task::spawn_blocking({
        let options = options.clone();
        move || committed_changes(&options)
    })
    .await
    .unwrap();
    let mut per: BTreeMap<String, Vec<(u64, bool)>> = BTreeMap::new();
    for c in changes {
        if let ExecutionChange::Saved { execution } = c {
            per.entry(execution.id.clone())
                .or_default()
                .push((execution.metadata.version, execution.state.is_terminated()));
        }
    }
    assert_eq!(per.len(), n, "a change stream for each execution");
    for (id, versions) in &per {
        let v: Vec<u64> = versions.iter().map(|(v, _)| *v).collect();
        let expected: Vec<u64> = (1..=v.len() as u64).collect();
        assert_eq!(
            v, expected,
            "execution {id}: committed versions in order, none doubled"
        );
        let terminal = versions.iter().filter(|(_, t)| *t).count();
        assert_eq!(terminal, 1, "execution {id}: one terminal change");
    }
    drop(broker);
}
