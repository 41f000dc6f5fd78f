//! Worker and core runnable tasks, run for real: tasks through `RunnableTask::run` with a
//! `RunContext::for_test`, real processes, a local HTTP server, an in-memory InternalStorage, and
//! the `Worker` loop over a small in-memory Queue; polling triggers (http.Trigger) evaluated with
//! `evaluate_trigger` and through the `Worker` loop.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

use kestra_core::expression::ExpressionEngine;
use kestra_core::flow::model::Task;
use kestra_core::flow::{TaskKind, TaskRegistry, TaskType};
use kestra_core::liveness::LivenessMessage;
use kestra_core::messages::{
    ExecutionKilled, WorkerJob, WorkerTask, WorkerTaskResult, WorkerTrigger, WorkerTriggerResult,
};
use kestra_core::model::{
    Level, MetricType, ServiceInstance, ServiceState, ServiceType, State, StateType, TaskRun,
};
use kestra_core::queue::{Envelope, Queue, Topic};
use kestra_core::storage::{InternalStorage, InternalStorageExt, StoragePath};
use kestra_core::testkit::memory::{MemoryQueue, MemoryStorage};
use kestra_core::worker::{
    AttemptEnd, MemorySink, RunContext, RunnableTask, RunnerError, RunnerRegistry, TaskError,
    TaskOutput, TriggerEvaluator, Worker, WorkerConfig, evaluate_trigger, run_attempt,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

fn task(v: Value) -> Task {
    serde_json::from_value(v).expect("task json")
}

struct Run {
    result: Result<TaskOutput, TaskError>,
    sink: MemorySink,
    storage: Arc<MemoryStorage>,
}

impl Run {
    fn ok(&self) -> &TaskOutput {
        match &self.result {
            Ok(o) => o,
            Err(e) => panic!("task failed: {e}; logs: {:?}", self.sink.logs()),
        }
    }
    fn out(&self, name: &str) -> Value {
        self.ok().outputs.get(name).cloned().unwrap_or(Value::Null)
    }
    fn err(&self) -> String {
        match &self.result {
            Ok(o) => panic!("expected an error, got {o:?}"),
            Err(e) => e.to_string(),
        }
    }
    async fn read(&self, uri: &str) -> String {
        let p = StoragePath::parse(uri).unwrap();
        String::from_utf8(self.storage.get_bytes("main", &p).await.unwrap().to_vec()).unwrap()
    }
}

async fn run_with(t: Value, extra: Value, storage: Arc<MemoryStorage>) -> Run {
    let t = task(t);
    let (mut ctx, sink) = RunContext::for_test(t.clone(), extra, storage.clone());
    let runnable = RunnerRegistry::core()
        .build(&t, &TaskRegistry::default())
        .expect("runner");
    let result = runnable.run(&mut ctx).await;
    Run {
        result,
        sink,
        storage,
    }
}

async fn run(t: Value) -> Run {
    run_with(t, json!({}), Arc::new(MemoryStorage::default())).await
}

fn shell(commands: Value) -> Value {
    json!({"id": "sh", "type": "io.kestra.plugin.scripts.shell.Commands",
           "taskRunner": {"type": "io.kestra.plugin.core.runner.Process"}, "commands": commands})
}

// ---------------------------------------------------------------------------------------------
// Basic tasks
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn log_renders_each_message_at_its_level_and_respects_log_level() {
    let r = run(
        json!({"id": "l", "type": "io.kestra.plugin.core.log.Log", "level": "WARN",
                        "message": ["one {{ flow.id }}", "two {{ 1 + 1 }}"]}),
    )
    .await;
    r.ok();
    assert!(r.sink.has_log(Level::Warn, "one test-flow"));
    assert!(r.sink.has_log(Level::Warn, "two 2"));

    let r = run(
        json!({"id": "l", "type": "io.kestra.core.tasks.log.Log", "logLevel": "WARN",
                        "message": "filtered"}),
    )
    .await;
    r.ok();
    assert!(
        r.sink.logs().is_empty(),
        "INFO below logLevel WARN must be dropped"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn return_and_output_values_render_their_properties() {
    let r = run(
        json!({"id": "r", "type": "io.kestra.plugin.core.debug.Return",
                        "format": "{{ task.id }}-{{ flow.namespace }}"}),
    )
    .await;
    assert_eq!(r.out("value"), json!("r-company.team"));

    let r = run(json!({"id": "v", "type": "io.kestra.plugin.core.output.OutputValues",
                        "values": {"region": "eu-{{ 'west' | upper }}", "count": "{{ 40 + 2 }}", "nested": {"k": "{{ 'x' }}"}}})).await;
    assert_eq!(
        r.out("values"),
        json!({"region": "eu-WEST", "count": "42", "nested": {"k": "x"}})
    );

    let r = run(json!({"id": "e", "type": "io.kestra.plugin.core.debug.Echo", "format": "echo {{ task.id }}"})).await;
    r.ok();
    assert!(r.sink.has_log(Level::Info, "echo e"));
}

#[tokio::test(flavor = "multi_thread")]
async fn undefined_variable_is_an_error() {
    let r = run(json!({"id": "l", "type": "io.kestra.plugin.core.log.Log", "message": "{{ nothing_here }}"})).await;
    assert!(r.err().contains("nothing_here"), "{}", r.err());
}

#[tokio::test(flavor = "multi_thread")]
async fn fail_and_assert() {
    let r = run(json!({"id": "f", "type": "io.kestra.plugin.core.execution.Fail"})).await;
    assert_eq!(r.err(), "Task failure");
    let r = run(
        json!({"id": "f", "type": "io.kestra.plugin.core.execution.Fail",
                        "condition": "{{ 1 > 5 }}", "errorMessage": "never"}),
    )
    .await;
    r.ok();
    let r = run(
        json!({"id": "f", "type": "io.kestra.plugin.core.execution.Fail",
                        "condition": "{{ 10 > 5 }}", "errorMessage": "n is {{ 10 }}"}),
    )
    .await;
    assert_eq!(r.err(), "n is 10");

    let r = run(
        json!({"id": "a", "type": "io.kestra.plugin.core.execution.Assert",
                        "conditions": ["{{ 1 == 1 }}", "{{ 'a' == 'b' }}"]}),
    )
    .await;
    assert!(r.err().contains("{{ 'a' == 'b' }}"), "{}", r.err());
    assert!(
        r.sink
            .has_log(Level::Error, "Assertion `{{ 'a' == 'b' }}` failed")
    );
    let r = run(
        json!({"id": "a", "type": "io.kestra.plugin.core.execution.Assert",
                        "conditions": ["{{ true }}"], "errorMessage": "x"}),
    )
    .await;
    r.ok();
}

#[tokio::test(flavor = "multi_thread")]
async fn sleep_waits_and_is_cancellable() {
    let start = Instant::now();
    let r =
        run(json!({"id": "s", "type": "io.kestra.plugin.core.flow.Sleep", "duration": "PT0.2S"}))
            .await;
    r.ok();
    assert!(start.elapsed() >= Duration::from_millis(200));

    let t =
        task(json!({"id": "s", "type": "io.kestra.plugin.core.flow.Sleep", "duration": "PT30S"}));
    let (ctx, _sink) =
        RunContext::for_test(t.clone(), json!({}), Arc::new(MemoryStorage::default()));
    let kill = ctx.cancellation().clone();
    let runnable = RunnerRegistry::core()
        .build(&t, &TaskRegistry::default())
        .unwrap();
    let start = Instant::now();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(200)).await;
        kill.cancel();
    });
    let end = run_attempt(runnable, ctx, None, Duration::from_secs(5)).await;
    assert!(matches!(end, AttemptEnd::Killed), "{end:?}");
    assert!(start.elapsed() < Duration::from_secs(2));
}

// ---------------------------------------------------------------------------------------------
// Scripts
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn shell_outputs_metrics_and_log_streams() {
    let r = run(shell(json!([
        "echo 'plain stdout line'",
        "echo '::{\"outputs\":{\"a\":1,\"name\":\"kestra\"}}::'",
        "echo '::{\"metrics\":[{\"name\":\"rows\",\"type\":\"counter\",\"value\":3,\"tags\":{\"t\":\"x\"}},{\"name\":\"took\",\"type\":\"timer\",\"value\":0.5}]}::'",
        "echo 'to stderr' >&2",
    ]))).await;
    assert_eq!(r.out("exitCode"), json!(0));
    assert_eq!(r.out("vars"), json!({"a": 1, "name": "kestra"}));
    assert!(r.sink.has_log(Level::Info, "plain stdout line"));
    assert!(r.sink.has_log(Level::Error, "to stderr"));
    assert!(
        !r.sink.logs().iter().any(|l| l.message.contains("::{")),
        "protocol lines are not logged"
    );
    let metrics = r.sink.metrics();
    assert_eq!(metrics.len(), 2);
    assert_eq!(metrics[0].name, "rows");
    assert_eq!(metrics[0].type_, MetricType::Counter);
    assert_eq!(metrics[0].value, 3.0);
    assert_eq!(metrics[0].tags.get("t").map(String::as_str), Some("x"));
    assert_eq!(metrics[1].type_, MetricType::Timer);
    assert_eq!(
        r.ok().final_state(),
        StateType::Success,
        "stderr alone does not fail"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_non_zero_exit_fails_with_outputs() {
    let r = run(shell(json!(["echo before", "exit 3"]))).await;
    assert_eq!(r.ok().final_state(), StateType::Failed);
    assert_eq!(r.out("exitCode"), json!(3));
    assert!(r.sink.has_log(Level::Error, "exit code 3"));
    // failFast (set -e): a failing command stops the script
    let r = run(shell(json!(["false", "echo not reached"]))).await;
    assert_eq!(r.ok().final_state(), StateType::Failed);
    assert!(!r.sink.has_log(Level::Info, "not reached"));
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_env_input_files_output_files_and_working_dir() {
    let storage = Arc::new(MemoryStorage::default());
    // a file already in storage, under the execution's namespace, to copy as an input file
    let src = StoragePath::parse("kestra:///company/team/other/in.txt").unwrap();
    storage
        .put_bytes("main", &src, Bytes::from_static(b"from storage"))
        .await
        .unwrap();
    let mut t = shell(json!([
        "echo \"env=$GREETING\"",
        "cat inline.txt",
        "cat sub/copied.txt",
        "test -f {{ workingDir }}/inline.txt && echo wd-ok",
        "printf 'out body' > out.txt",
        "mkdir -p res && printf 'csv' > res/a.csv && printf 'no' > res/b.tmp",
    ]));
    t["env"] = json!({"GREETING": "hi {{ flow.id }}"});
    t["inputFiles"] = json!({"inline.txt": "inline {{ task.id }}", "sub/copied.txt": src.to_uri()});
    t["outputFiles"] = json!(["out.txt", "res/*.csv"]);
    let r = run_with(t, json!({}), storage).await;
    assert_eq!(r.out("exitCode"), json!(0), "{:?}", r.sink.logs());
    assert!(r.sink.has_log(Level::Info, "env=hi test-flow"));
    assert!(r.sink.has_log(Level::Info, "inline sh"));
    assert!(r.sink.has_log(Level::Info, "from storage"));
    assert!(r.sink.has_log(Level::Info, "wd-ok"));
    let files = r.out("outputFiles");
    let files = files.as_object().unwrap();
    assert_eq!(files.len(), 2, "{files:?}");
    assert_eq!(r.read(files["out.txt"].as_str().unwrap()).await, "out body");
    assert_eq!(r.read(files["res/a.csv"].as_str().unwrap()).await, "csv");
    assert!(
        files["out.txt"]
            .as_str()
            .unwrap()
            .starts_with("kestra:///company/team/test-flow/executions/")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn input_files_outside_the_namespace_are_forbidden() {
    let storage = Arc::new(MemoryStorage::default());
    let other = StoragePath::parse("kestra:///secret/ns/file.txt").unwrap();
    storage
        .put_bytes("main", &other, Bytes::from_static(b"x"))
        .await
        .unwrap();
    let mut t = shell(json!(["cat f.txt"]));
    t["inputFiles"] = json!({"f.txt": other.to_uri()});
    let r = run_with(t, json!({}), storage).await;
    assert!(r.err().contains("not allowed"), "{}", r.err());
    let r = run(
        json!({"id": "r", "type": "io.kestra.plugin.core.debug.Return",
                        "format": "{{ read('kestra:///secret/ns/file.txt') }}"}),
    )
    .await;
    assert!(r.err().contains("not allowed"), "{}", r.err());
}

#[tokio::test(flavor = "multi_thread")]
async fn shell_script_and_python_script() {
    let r = run(json!({"id": "script", "type": "io.kestra.plugin.scripts.shell.Script",
        "script": "total=0\nfor i in 1 2 3; do total=$((total + i)); done\necho \"total is $total for {{ flow.id }}\"\necho \"::{\\\"outputs\\\":{\\\"total\\\":$total}}::\"\n"})).await;
    assert_eq!(r.out("vars"), json!({"total": 6}));
    assert!(r.sink.has_log(Level::Info, "total is 6 for test-flow"));

    let r = run(json!({"id": "py", "type": "io.kestra.plugin.scripts.python.Script",
        "taskRunner": {"type": "io.kestra.plugin.core.runner.Process"},
        "script": "import json, sys\nprint('python says hi')\nprint('::' + json.dumps({'outputs': {'x': 1, 'word': '{{ task.id }}'}}) + '::')\nprint('oops', file=sys.stderr)\n"})).await;
    assert_eq!(r.out("exitCode"), json!(0), "{:?}", r.sink.logs());
    assert_eq!(r.out("vars"), json!({"x": 1, "word": "py"}));
    assert!(r.sink.has_log(Level::Info, "python says hi"));
    assert!(r.sink.has_log(Level::Error, "oops"));

    let r = run(
        json!({"id": "py", "type": "io.kestra.plugin.scripts.python.Script",
        "script": "raise SystemExit(2)"}),
    )
    .await;
    assert_eq!(r.ok().final_state(), StateType::Failed);
    assert_eq!(r.out("exitCode"), json!(2));
}

fn process_alive(pid: i32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
        && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z ")
}

async fn background_sleep_run(
    dir: &std::path::Path,
    timeout: Option<&str>,
    kill_after: Option<Duration>,
) -> (AttemptEnd, Duration, i32) {
    let mut t = shell(json!(["sleep 30 & echo $! > sleep.pid; wait"]));
    if let Some(to) = timeout {
        t["timeout"] = json!(to);
    }
    let t = task(t);
    let storage: Arc<MemoryStorage> = Arc::new(MemoryStorage::default());
    let (base, _sink) = RunContext::for_test(t.clone(), json!({}), storage.clone());
    let ctx = RunContext::builder(
        t.clone(),
        base.task_run().clone(),
        base.variables().clone(),
        storage,
    )
    .working_dir(dir.to_path_buf())
    .build();
    let kill = ctx.cancellation().clone();
    if let Some(after) = kill_after {
        tokio::spawn(async move {
            tokio::time::sleep(after).await;
            kill.cancel();
        });
    }
    let runnable = RunnerRegistry::core()
        .build(&t, &TaskRegistry::default())
        .unwrap();
    let start = Instant::now();
    let end = run_attempt(runnable, ctx, t.timeout.as_ref(), Duration::from_secs(5)).await;
    let elapsed = start.elapsed();
    let pid: i32 = std::fs::read_to_string(dir.join("sleep.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    (end, elapsed, pid)
}

#[tokio::test(flavor = "multi_thread")]
async fn timeout_kills_the_whole_process_group() {
    let dir = tempfile::tempdir().unwrap();
    let (end, elapsed, pid) = background_sleep_run(dir.path(), Some("PT0.3S"), None).await;
    assert!(
        matches!(&end, AttemptEnd::TimedOut(t) if t == "PT0.3S"),
        "{end:?}"
    );
    assert!(elapsed < Duration::from_millis(1300), "{elapsed:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !process_alive(pid),
        "the background sleep {pid} must be killed"
    );
    let logger_sink = MemorySink::new();
    let logger = kestra_core::worker::TaskLogger::new(
        Arc::new(kestra_core::worker::RunIdentity {
            tenant_id: "main".into(),
            namespace: "n".into(),
            flow_id: "f".into(),
            execution_id: "e".into(),
            task_id: "t".into(),
            task_run_id: "tr".into(),
            attempt: 1,
        }),
        Level::Trace,
        Arc::new(logger_sink.clone()),
    );
    let result = end.into_result(&logger);
    assert_eq!(result.state, StateType::Failed);
    assert!(logger_sink.has_log(Level::Error, "Timeout after PT0.3S"));
}

#[tokio::test(flavor = "multi_thread")]
async fn kill_stops_a_running_script() {
    let dir = tempfile::tempdir().unwrap();
    let (end, elapsed, pid) =
        background_sleep_run(dir.path(), None, Some(Duration::from_millis(300))).await;
    assert!(matches!(end, AttemptEnd::Killed), "{end:?}");
    assert!(elapsed < Duration::from_millis(1300), "{elapsed:?}");
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!process_alive(pid));
}

// ---------------------------------------------------------------------------------------------
// Custom tasks, registry, panics
// ---------------------------------------------------------------------------------------------

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Greet {
    name: String,
    #[serde(default)]
    panic: bool,
}

impl TaskType for Greet {
    const TYPE: &'static str = "com.example.Greet";
    const ALIASES: &'static [&'static str] = &["com.example.legacy.Greet"];
    const KIND: TaskKind = TaskKind::Runnable;
}

#[async_trait]
impl RunnableTask for Greet {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        if self.panic {
            panic!("greet exploded");
        }
        let name = ctx.render(&self.name)?;
        ctx.logger().info(format!("hello {name}"));
        Ok(TaskOutput::single(
            "greeting",
            json!(format!("hello {name}")),
        ))
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn custom_tasks_register_in_both_registries_and_panics_become_failures() {
    let mut tasks = TaskRegistry::default();
    tasks.register::<Greet>();
    let mut runners = RunnerRegistry::core();
    runners.register::<Greet>();
    let t = task(json!({"id": "g", "type": "com.example.legacy.Greet", "name": "{{ flow.id }}"}));
    let (mut ctx, sink) =
        RunContext::for_test(t.clone(), json!({}), Arc::new(MemoryStorage::default()));
    let out = runners
        .build(&t, &tasks)
        .unwrap()
        .run(&mut ctx)
        .await
        .unwrap();
    assert_eq!(out.outputs["greeting"], json!("hello test-flow"));
    assert!(sink.has_log(Level::Info, "hello test-flow"));

    let unknown = task(json!({"id": "x", "type": "com.example.Unknown"}));
    assert!(matches!(
        RunnerRegistry::core().build(&unknown, &tasks),
        Err(RunnerError::NoRunner(_))
    ));
    let flowable =
        task(json!({"id": "x", "type": "io.kestra.plugin.core.flow.Sequential", "tasks": []}));
    assert!(matches!(
        RunnerRegistry::core().build(&flowable, &tasks),
        Err(RunnerError::NoRunner(_))
    ));

    let boom = task(json!({"id": "g", "type": "com.example.Greet", "name": "x", "panic": true}));
    let (ctx, _sink) =
        RunContext::for_test(boom.clone(), json!({}), Arc::new(MemoryStorage::default()));
    let end = run_attempt(
        runners.build(&boom, &tasks).unwrap(),
        ctx,
        None,
        Duration::from_secs(1),
    )
    .await;
    assert!(
        matches!(&end, AttemptEnd::Panicked(m) if m.contains("greet exploded")),
        "{end:?}"
    );
}

// ---------------------------------------------------------------------------------------------
// KV
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn kv_set_get_delete_and_kv_function() {
    let storage = Arc::new(MemoryStorage::default());
    let set = |value: Value, extra: Value| {
        let mut t = json!({"id": "set", "type": "io.kestra.plugin.core.kv.Set", "key": "k_{{ flow.id }}", "value": value});
        for (k, v) in extra.as_object().unwrap() {
            t[k] = v.clone();
        }
        t
    };
    run_with(
        set(json!("stored {{ task.id }}"), json!({})),
        json!({}),
        storage.clone(),
    )
    .await
    .ok();
    let r = run_with(
        json!({"id": "get", "type": "io.kestra.plugin.core.kv.Get", "key": "k_test-flow"}),
        json!({}),
        storage.clone(),
    )
    .await;
    assert_eq!(r.out("value"), json!("stored set"));
    let r = run_with(json!({"id": "r", "type": "io.kestra.plugin.core.debug.Return", "format": "{{ kv('k_test-flow') }}"}), json!({}), storage.clone()).await;
    assert_eq!(r.out("value"), json!("stored set"));

    // overwrite: false refuses an existing key
    let r = run_with(
        set(json!("again"), json!({"overwrite": false})),
        json!({}),
        storage.clone(),
    )
    .await;
    assert!(r.err().contains("already exists"), "{}", r.err());

    // typed values and another namespace
    run_with(
        set(
            json!("42"),
            json!({"kvType": "NUMBER", "namespace": "other.ns"}),
        ),
        json!({}),
        storage.clone(),
    )
    .await
    .ok();
    let r = run_with(json!({"id": "get", "type": "io.kestra.plugin.core.kv.Get", "key": "k_test-flow", "namespace": "other.ns"}), json!({}), storage.clone()).await;
    assert_eq!(r.out("value"), json!(42));

    let r = run_with(
        json!({"id": "del", "type": "io.kestra.plugin.core.kv.Delete", "key": "k_test-flow"}),
        json!({}),
        storage.clone(),
    )
    .await;
    assert_eq!(r.out("deleted"), json!(true));
    let r = run_with(
        json!({"id": "del", "type": "io.kestra.plugin.core.kv.Delete", "key": "k_test-flow"}),
        json!({}),
        storage.clone(),
    )
    .await;
    assert_eq!(r.out("deleted"), json!(false));
    let r = run_with(json!({"id": "del", "type": "io.kestra.plugin.core.kv.Delete", "key": "k_test-flow", "errorOnMissing": true}), json!({}), storage.clone()).await;
    r.err();
    let r = run_with(
        json!({"id": "get", "type": "io.kestra.plugin.core.kv.Get", "key": "k_test-flow"}),
        json!({}),
        storage.clone(),
    )
    .await;
    assert_eq!(r.out("value"), Value::Null);
    let r = run_with(json!({"id": "get", "type": "io.kestra.plugin.core.kv.Get", "key": "k_test-flow", "errorOnMissing": true}), json!({}), storage.clone()).await;
    r.err();
    let r = run_with(json!({"id": "r", "type": "io.kestra.plugin.core.debug.Return", "format": "{{ kv('k_test-flow', errorOnMissing=false) ?? 'gone' }}"}), json!({}), storage.clone()).await;
    assert_eq!(r.out("value"), json!("gone"));
    let r = run_with(json!({"id": "r", "type": "io.kestra.plugin.core.debug.Return", "format": "{{ kv('k_test-flow') }}"}), json!({}), storage.clone()).await;
    r.err();

    // ttl: expired entries read as missing
    run_with(
        set(json!("short"), json!({"ttl": "PT0.1S"})),
        json!({}),
        storage.clone(),
    )
    .await
    .ok();
    tokio::time::sleep(Duration::from_millis(250)).await;
    let r = run_with(
        json!({"id": "get", "type": "io.kestra.plugin.core.kv.Get", "key": "k_test-flow"}),
        json!({}),
        storage.clone(),
    )
    .await;
    assert_eq!(r.out("value"), Value::Null);
}

// ---------------------------------------------------------------------------------------------
// State store (state.Set / Get / Delete)
// ---------------------------------------------------------------------------------------------

/// Runs `t` as a task run whose `value` is `value` (as inside a ForEach iteration).
async fn run_with_value(t: Value, value: Option<&str>, storage: Arc<MemoryStorage>) -> Run {
    let t = task(t);
    let (base, sink) = RunContext::for_test(t.clone(), json!({}), storage.clone());
    let mut task_run = base.task_run().clone();
    task_run.value = value.map(str::to_string);
    let mut ctx = RunContext::builder(
        t.clone(),
        task_run,
        base.variables().clone(),
        storage.clone(),
    )
    .sink(Arc::new(sink.clone()))
    .build();
    let runnable = RunnerRegistry::core()
        .build(&t, &TaskRegistry::default())
        .expect("runner");
    let result = runnable.run(&mut ctx).await;
    Run {
        result,
        sink,
        storage,
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn state_set_merges_get_reads_delete_removes() {
    let storage = Arc::new(MemoryStorage::default());
    let go = |t: Value| run_with(t, json!({}), storage.clone());

    // missing state: empty data, or a failure naming errorOnMissing
    let r = go(json!({"id": "get", "type": "io.kestra.plugin.core.state.Get"})).await;
    assert_eq!(r.out("data"), json!({}));
    assert_eq!(r.out("count"), json!(0));
    let r =
        go(json!({"id": "get", "type": "io.kestra.plugin.core.state.Get", "errorOnMissing": true}))
            .await;
    assert!(r.err().contains("`errorOnMissing`"), "{}", r.err());

    // Set renders keys and values and writes under the flow's states/tasks-states
    let r = go(
        json!({"id": "set", "type": "io.kestra.plugin.core.state.Set",
        "data": {"{{ task.id }}_key": "{{ flow.id }}", "list": [1, 2], "nested": {"a": 1}}}),
    )
    .await;
    assert_eq!(r.out("count"), json!(3));
    let key = "kestra:///company/team/test-flow/states/tasks-states/default";
    assert_eq!(r.out("key"), json!(key));
    let stored: Value = serde_json::from_str(&r.read(key).await).unwrap();
    assert_eq!(stored["set_key"], json!("test-flow"));

    // a second Set merges (maps recursively, lists append new items, null keeps the old value)
    let r = go(
        json!({"id": "set", "type": "io.kestra.core.tasks.states.Set",
        "data": {"list": [2, 3], "nested": {"b": 2}, "set_key": null, "added": "x"}}),
    )
    .await;
    assert_eq!(r.out("count"), json!(4));
    let r = go(json!({"id": "get", "type": "io.kestra.core.tasks.states.Get"})).await;
    assert_eq!(
        r.out("data"),
        json!({"set_key": "test-flow", "list": [1, 2, 3], "nested": {"a": 1, "b": 2}, "added": "x"})
    );
    assert_eq!(r.out("count"), json!(4));

    // data may be an expression rendering to a map; anything else is refused, naming `data`
    let r = go(
        json!({"id": "set", "type": "io.kestra.plugin.core.state.Set", "name": "expr",
        "data": "{{ {'k': flow.namespace} }}"}),
    )
    .await;
    assert_eq!(r.out("count"), json!(1));
    let r = go(
        json!({"id": "set", "type": "io.kestra.plugin.core.state.Set", "name": "expr",
        "data": "{{ [1, 2] }}"}),
    )
    .await;
    assert!(r.err().contains("`data`"), "{}", r.err());

    // another name, and a namespace-wide state, are separate files
    let r = go(
        json!({"id": "set", "type": "io.kestra.plugin.core.state.Set", "name": "cursor",
        "namespace": true, "data": {"last": 7}}),
    )
    .await;
    assert_eq!(
        r.out("key"),
        json!("kestra:///company/team/states/tasks-states/cursor")
    );
    let r =
        go(json!({"id": "get", "type": "io.kestra.plugin.core.state.Get", "name": "cursor"})).await;
    assert_eq!(r.out("data"), json!({}));
    let r = go(
        json!({"id": "get", "type": "io.kestra.plugin.core.state.Get", "name": "cursor",
        "namespace": "{{ true }}"}),
    )
    .await;
    assert_eq!(r.out("data"), json!({"last": 7}));

    // Delete: true once, then false, then a failure with errorOnMissing
    let del = json!({"id": "del", "type": "io.kestra.plugin.core.state.Delete"});
    assert_eq!(go(del.clone()).await.out("deleted"), json!(true));
    assert_eq!(go(del.clone()).await.out("deleted"), json!(false));
    let r = go(
        json!({"id": "del", "type": "io.kestra.core.tasks.states.Delete", "errorOnMissing": true}),
    )
    .await;
    assert!(r.err().contains("state 'default' not found"), "{}", r.err());
    let r = go(json!({"id": "get", "type": "io.kestra.plugin.core.state.Get"})).await;
    assert_eq!(r.out("count"), json!(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn state_is_keyed_by_the_task_run_value_unless_taskrun_value_is_false() {
    let storage = Arc::new(MemoryStorage::default());
    let set =
        |data: Value| json!({"id": "set", "type": "io.kestra.plugin.core.state.Set", "data": data});
    let get = json!({"id": "get", "type": "io.kestra.plugin.core.state.Get"});

    let r = run_with_value(set(json!({"region": "eu"})), Some("eu"), storage.clone()).await;
    let hash = kestra_core::tasks::state::hash_to_string("eu");
    assert_eq!(
        r.out("key"),
        json!(format!(
            "kestra:///company/team/test-flow/states/tasks-states/{hash}/default"
        ))
    );
    run_with_value(set(json!({"region": "us"})), Some("us"), storage.clone())
        .await
        .ok();
    let r = run_with_value(get.clone(), Some("eu"), storage.clone()).await;
    assert_eq!(r.out("data"), json!({"region": "eu"}));
    let r = run_with_value(get.clone(), Some("us"), storage.clone()).await;
    assert_eq!(r.out("data"), json!({"region": "us"}));
    // no value, or taskrunValue: false, is the flow's un-keyed state
    let r = run_with_value(get.clone(), None, storage.clone()).await;
    assert_eq!(r.out("count"), json!(0));
    let mut shared = set(json!({"all": true}));
    shared["taskrunValue"] = json!(false);
    let r = run_with_value(shared, Some("eu"), storage.clone()).await;
    assert_eq!(
        r.out("key"),
        json!("kestra:///company/team/test-flow/states/tasks-states/default")
    );
    let r = run_with_value(get.clone(), None, storage.clone()).await;
    assert_eq!(r.out("data"), json!({"all": true}));
}

#[test]
fn state_tasks_validate_their_own_properties() {
    let registry = TaskRegistry::default();
    let decode = |t: Value| {
        let t = task(t);
        RunnerRegistry::core().build(&t, &registry).map(|_| ())
    };
    decode(json!({"id": "s", "type": "io.kestra.core.tasks.states.Set", "data": {"a": 1}}))
        .unwrap();
    decode(
        json!({"id": "d", "type": "io.kestra.core.tasks.states.Delete", "errorOnMissing": true}),
    )
    .unwrap();
    // Get/Delete take no `data`, Set takes no `errorOnMissing`
    let err = decode(json!({"id": "g", "type": "io.kestra.plugin.core.state.Get", "data": {}}))
        .unwrap_err();
    assert!(err.to_string().contains("data"), "{err}");
    let err = decode(
        json!({"id": "s", "type": "io.kestra.plugin.core.state.Set", "errorOnMissing": true}),
    )
    .unwrap_err();
    assert!(err.to_string().contains("errorOnMissing"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// templating.TemplatedTask
// ---------------------------------------------------------------------------------------------

fn templated(spec: &str) -> Value {
    json!({"id": "tpl", "type": "io.kestra.plugin.core.templating.TemplatedTask", "spec": spec})
}

#[tokio::test(flavor = "multi_thread")]
async fn templated_task_renders_its_spec_and_runs_the_task() {
    // the spec is rendered first (the type itself comes from an expression), then the task runs
    let r = run_with(
        templated(
            "id: inner\ntype: io.kestra.plugin.core.{{ inputs.kind }}\nformat: \"{{ flow.id }}-{{ inputs.n * 2 }}\"",
        ),
        json!({"inputs": {"kind": "debug.Return", "n": 21}}),
        Arc::new(MemoryStorage::default()),
    )
    .await;
    assert_eq!(r.out("value"), json!("test-flow-42"));

    // a Log with a level chosen by an expression logs in the TemplatedTask's run
    let r = run_with(
        templated(
            "id: generated_log\ntype: io.kestra.plugin.core.log.Log\nmessage: \"{{ inputs.message }}\"\nlevel: {{ inputs.message | length > 10 ? 'WARN' : 'DEBUG' }}",
        ),
        json!({"inputs": {"message": "generated at runtime"}}),
        Arc::new(MemoryStorage::default()),
    )
    .await;
    r.ok();
    assert!(r.sink.has_log(Level::Warn, "generated at runtime"));

    // a storage task writes its file in the TemplatedTask's task run directory
    let r = run(templated(
        "id: w\ntype: io.kestra.plugin.core.storage.Write\ncontent: hello {{ task.id }}",
    ))
    .await;
    let uri = r.out("uri").as_str().unwrap().to_string();
    assert!(uri.contains("/tasks/tpl/"), "{uri}");
    assert_eq!(r.read(&uri).await, "hello tpl");
}

#[tokio::test(flavor = "multi_thread")]
async fn templated_task_refuses_bad_specs_naming_the_property() {
    let cases = [
        ("id: x\ntype: [unclosed", "not valid YAML"),
        ("just a string", "must render to the YAML of one task"),
        (
            "type: io.kestra.plugin.core.log.Log\nmessage: hi",
            "not a task definition",
        ),
        (
            "id: x\ntype: io.kestra.plugin.core.nope.Nope",
            "unknown task type 'io.kestra.plugin.core.nope.Nope'",
        ),
        (
            "id: x\ntype: io.kestra.plugin.core.flow.Sequential\ntasks:\n  - id: l\n    type: io.kestra.plugin.core.log.Log\n    message: hi",
            "a flowable task",
        ),
        (
            "id: x\ntype: io.kestra.plugin.core.execution.Exit",
            "run by the executor",
        ),
        (
            "id: x\ntype: io.kestra.plugin.core.templating.TemplatedTask\nspec: 'id: y'",
            "cannot be another",
        ),
        (
            "id: x\ntype: io.kestra.plugin.core.log.Log\nmesage: typo",
            "mesage",
        ),
    ];
    for (spec, expected) in cases {
        let r = run(templated(spec)).await;
        let err = r.err();
        assert!(err.contains("`spec`"), "{spec}: {err}");
        assert!(err.contains(expected), "{spec}: {err}");
    }
    // an expression error in the spec is reported as such
    let r = run(templated(
        "id: x\ntype: io.kestra.plugin.core.log.Log\nmessage: {{ undefined_var }}",
    ))
    .await;
    r.err();
}

// ---------------------------------------------------------------------------------------------
// Storage tasks
// ---------------------------------------------------------------------------------------------

async fn write(storage: &Arc<MemoryStorage>, content: &str) -> String {
    let r = run_with(json!({"id": "w", "type": "io.kestra.plugin.core.storage.Write", "content": content, "extension": ".txt"}), json!({}), storage.clone()).await;
    r.out("uri").as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread")]
async fn storage_write_size_concat_split_delete_purge() {
    let storage = Arc::new(MemoryStorage::default());
    let a = write(&storage, "first;").await;
    let b = write(&storage, "second").await;
    assert!(
        a.starts_with("kestra:///company/team/test-flow/executions/") && a.ends_with(".txt"),
        "{a}"
    );

    let r = run_with(
        json!({"id": "s", "type": "io.kestra.plugin.core.storage.Size", "uri": a}),
        json!({}),
        storage.clone(),
    )
    .await;
    assert_eq!(r.out("size"), json!(6));
    let r = run_with(
        json!({"id": "r", "type": "io.kestra.plugin.core.debug.Return",
        "format": "{{ fileExists(x) }}-{{ fileSize(x) }}-{{ read(x) }}"}),
        json!({"x": a}),
        storage.clone(),
    )
    .await;
    assert_eq!(r.out("value"), json!("true-6-first;"));

    let r = run_with(json!({"id": "c", "type": "io.kestra.plugin.core.storage.Concat", "files": ["{{ a }}", "{{ b }}"], "separator": "|"}),
        json!({"a": a, "b": b}), storage.clone()).await;
    assert_eq!(
        r.read(r.out("uri").as_str().unwrap()).await,
        "first;|second"
    );
    let r = run_with(
        json!({"id": "c", "type": "io.kestra.plugin.core.storage.Concat", "files": "{{ list }}"}),
        json!({"list": [a, b]}),
        storage.clone(),
    )
    .await;
    assert_eq!(r.read(r.out("uri").as_str().unwrap()).await, "first;second");

    let rows = write(&storage, "r1\nr2\nr3\nr4\nr5").await;
    let split = |extra: Value| {
        let mut t =
            json!({"id": "sp", "type": "io.kestra.plugin.core.storage.Split", "from": rows});
        for (k, v) in extra.as_object().unwrap() {
            t[k] = v.clone();
        }
        t
    };
    let r = run_with(split(json!({"rows": 2})), json!({}), storage.clone()).await;
    let uris = r.out("uris");
    let mut parts = Vec::new();
    for u in uris.as_array().unwrap() {
        parts.push(r.read(u.as_str().unwrap()).await);
    }
    assert_eq!(parts, vec!["r1\nr2\n", "r3\nr4\n", "r5\n"]);
    assert!(uris[0].as_str().unwrap().ends_with(".txt"));
    let r = run_with(split(json!({"partitions": 2})), json!({}), storage.clone()).await;
    let mut parts = Vec::new();
    for u in r.out("uris").as_array().unwrap() {
        parts.push(r.read(u.as_str().unwrap()).await);
    }
    assert_eq!(
        parts,
        vec!["r1\nr3\nr5\n", "r2\nr4\n"],
        "rows dealt round-robin"
    );
    let r = run_with(split(json!({"bytes": "6"})), json!({}), storage.clone()).await;
    let mut parts = Vec::new();
    for u in r.out("uris").as_array().unwrap() {
        parts.push(r.read(u.as_str().unwrap()).await);
    }
    assert_eq!(parts, vec!["r1\nr2\n", "r3\nr4\n", "r5\n"]);
    let r = run_with(split(json!({})), json!({}), storage.clone()).await;
    r.err();

    let r = run_with(
        json!({"id": "d", "type": "io.kestra.plugin.core.storage.Delete", "uri": a}),
        json!({}),
        storage.clone(),
    )
    .await;
    assert_eq!(r.out("deleted"), json!(true));
    let r = run_with(
        json!({"id": "d", "type": "io.kestra.plugin.core.storage.Delete", "uri": a}),
        json!({}),
        storage.clone(),
    )
    .await;
    assert_eq!(r.out("deleted"), json!(false));
    let r = run_with(json!({"id": "d", "type": "io.kestra.plugin.core.storage.Delete", "uri": a, "errorOnMissing": true}), json!({}), storage.clone()).await;
    r.err();
    let r = run_with(json!({"id": "d", "type": "io.kestra.plugin.core.storage.Delete", "uri": "kestra:///elsewhere/x"}), json!({}), storage.clone()).await;
    assert!(r.err().contains("not allowed"));

    // purge: only the current execution's files
    let t = task(
        json!({"id": "p", "type": "io.kestra.plugin.core.storage.PurgeCurrentExecutionFiles"}),
    );
    let (mut ctx, _sink) = RunContext::for_test(t.clone(), json!({}), storage.clone());
    let mine = ctx
        .put_file("mine.txt", Bytes::from_static(b"m"))
        .await
        .unwrap();
    let out = RunnerRegistry::core()
        .build(&t, &TaskRegistry::default())
        .unwrap()
        .run(&mut ctx)
        .await
        .unwrap();
    assert_eq!(out.outputs["uris"], json!([mine]));
    assert!(
        !storage
            .exists("main", &StoragePath::parse(&mine).unwrap())
            .await
            .unwrap()
    );
    assert!(
        storage
            .exists("main", &StoragePath::parse(&b).unwrap())
            .await
            .unwrap(),
        "other executions' files stay"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn local_files_write_inputs_and_collect_outputs() {
    let r = run(
        json!({"id": "lf", "type": "io.kestra.plugin.core.storage.LocalFiles",
        "inputs": {"a.txt": "A {{ task.id }}", "dir/b.csv": "b"}, "outputs": ["*.txt", "dir/*"]}),
    )
    .await;
    let uris = r.out("uris");
    assert_eq!(r.read(uris["a.txt"].as_str().unwrap()).await, "A lf");
    assert_eq!(r.read(uris["dir/b.csv"].as_str().unwrap()).await, "b");
}

// ---------------------------------------------------------------------------------------------
// WorkingDirectory
// ---------------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread")]
async fn working_directory_shares_files_and_outputs_between_children() {
    let r = run(json!({"id": "wd", "type": "io.kestra.plugin.core.flow.WorkingDirectory",
        "inputFiles": {"greeting.txt": "hello from {{ flow.id }}"},
        "outputFiles": ["result.txt"],
        "tasks": [
            {"id": "write", "type": "io.kestra.plugin.scripts.shell.Commands",
             "commands": ["echo \"shared-42\" > {{ workingDir }}/data.txt", "cat greeting.txt"]},
            {"id": "read", "type": "io.kestra.plugin.scripts.shell.Commands",
             "commands": ["echo '::{\"outputs\":{\"content\":\"'$(cat data.txt)'\"}}::'", "printf done > result.txt"]},
            {"id": "skipped", "type": "io.kestra.plugin.core.log.Log", "runIf": "{{ false }}", "message": "no"},
            {"id": "disabled", "type": "io.kestra.plugin.core.log.Log", "disabled": true, "message": "no"},
            {"id": "use", "type": "io.kestra.plugin.core.debug.Return",
             "format": "{{ outputs.read.vars.content }}/{{ tasks.write.state }}"}
        ]})).await;
    let out = r.ok();
    assert_eq!(out.final_state(), StateType::Success, "{:?}", r.sink.logs());
    let runs = &out.child_task_runs;
    let ids: Vec<&str> = runs.iter().map(|t| t.task_id.as_str()).collect();
    assert_eq!(ids, vec!["write", "read", "skipped", "use"]);
    let by_id = |id: &str| runs.iter().find(|t| t.task_id == id).unwrap();
    assert_eq!(
        by_id("read").outputs.as_ref().unwrap()["vars"],
        json!({"content": "shared-42"})
    );
    assert_eq!(by_id("skipped").state.current(), StateType::Skipped);
    assert!(by_id("skipped").attempts.is_empty());
    assert_eq!(
        by_id("use").outputs.as_ref().unwrap()["value"],
        json!("shared-42/SUCCESS")
    );
    assert_eq!(by_id("use").attempts.len(), 1);
    assert_eq!(by_id("use").attempts[0].state.current(), StateType::Success);
    let parent_id = r
        .sink
        .logs()
        .iter()
        .find(|l| l.message.contains("hello from test-flow"))
        .unwrap()
        .task_run_id
        .clone();
    assert_eq!(
        parent_id.as_deref(),
        Some(by_id("write").id.as_str()),
        "child logs carry the child's task run id"
    );
    for run in runs {
        assert!(run.parent_task_run_id.is_some());
        assert!(run.state.is_terminated());
    }
    let files = r.out("outputFiles");
    assert_eq!(r.read(files["result.txt"].as_str().unwrap()).await, "done");
}

#[tokio::test(flavor = "multi_thread")]
async fn working_directory_failure_runs_errors_and_finally_and_allow_failure_warns() {
    let r = run(json!({"id": "wd", "type": "io.kestra.plugin.core.flow.WorkingDirectory",
        "tasks": [
            {"id": "soft", "type": "io.kestra.plugin.core.execution.Fail", "allowFailure": true},
            {"id": "hard", "type": "io.kestra.plugin.scripts.shell.Commands", "commands": ["exit 1"]},
            {"id": "never", "type": "io.kestra.plugin.core.log.Log", "message": "never"}
        ],
        "errors": [{"id": "on_error", "type": "io.kestra.plugin.core.log.Log", "message": "handled {{ tasks.hard.state }}"}],
        "finally": [{"id": "always", "type": "io.kestra.plugin.core.log.Log", "message": "finally ran"}]
    })).await;
    let out = r.ok();
    assert_eq!(out.final_state(), StateType::Failed);
    let states: Vec<(&str, StateType)> = out
        .child_task_runs
        .iter()
        .map(|t| (t.task_id.as_str(), t.state.current()))
        .collect();
    assert_eq!(
        states,
        vec![
            ("soft", StateType::Warning),
            ("hard", StateType::Failed),
            ("on_error", StateType::Success),
            ("always", StateType::Success),
        ]
    );
    assert!(r.sink.has_log(Level::Info, "handled FAILED"));
    assert!(r.sink.has_log(Level::Info, "finally ran"));

    let r = run(json!({"id": "wd", "type": "io.kestra.plugin.core.flow.WorkingDirectory",
        "tasks": [{"id": "soft", "type": "io.kestra.plugin.core.execution.Fail", "allowFailure": true}]})).await;
    assert_eq!(r.ok().final_state(), StateType::Warning);
}

// ---------------------------------------------------------------------------------------------
// HTTP against a local server
// ---------------------------------------------------------------------------------------------

async fn http_server() -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let Ok((mut sock, _)) = listener.accept().await else {
                return;
            };
            tokio::spawn(async move {
                let mut buf = Vec::new();
                let mut chunk = [0u8; 4096];
                // read headers, then the body by content-length
                let (head, body) = loop {
                    let n = sock.read(&mut chunk).await.unwrap_or(0);
                    if n == 0 {
                        return;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                    if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                        let head = String::from_utf8_lossy(&buf[..i]).to_string();
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length:")
                                    .map(|v| v.trim().parse::<usize>().unwrap_or(0))
                            })
                            .unwrap_or(0);
                        let mut body = buf[i + 4..].to_vec();
                        while body.len() < len {
                            let n = sock.read(&mut chunk).await.unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            body.extend_from_slice(&chunk[..n]);
                        }
                        break (head, body);
                    }
                };
                let first = head.lines().next().unwrap_or("").to_string();
                let mut parts = first.split_whitespace();
                let method = parts.next().unwrap_or("").to_string();
                let path = parts.next().unwrap_or("").to_string();
                let auth = head
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("authorization:"))
                    .map(|l| l[14..].trim().to_string())
                    .unwrap_or_default();
                let ctype = head
                    .lines()
                    .find(|l| l.to_ascii_lowercase().starts_with("content-type:"))
                    .map(|l| l[13..].trim().to_string())
                    .unwrap_or_default();
                let (status, ctype_out, resp): (&str, &str, Vec<u8>) = match path.as_str() {
                    "/json" => (
                        "200 OK",
                        "application/json",
                        br#"{"hello":"world"}"#.to_vec(),
                    ),
                    "/echo" => (
                        "200 OK",
                        "text/plain",
                        format!("{method}|{ctype}|{auth}|{}", String::from_utf8_lossy(&body))
                            .into_bytes(),
                    ),
                    "/files/data.bin" => ("200 OK", "application/octet-stream", vec![7u8; 1000]),
                    "/empty" => ("200 OK", "text/plain", Vec::new()),
                    _ => ("404 Not Found", "text/plain", b"nope".to_vec()),
                };
                let header = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype_out}\r\nX-Test: a\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    resp.len()
                );
                let _ = sock.write_all(header.as_bytes()).await;
                let _ = sock.write_all(&resp).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

#[tokio::test(flavor = "multi_thread")]
async fn http_request_outputs_and_failures() {
    let base = http_server().await;
    let r = run(json!({"id": "h", "type": "io.kestra.plugin.core.http.Request", "uri": format!("{base}/json")})).await;
    assert_eq!(r.out("code"), json!(200));
    assert_eq!(
        r.out("body"),
        json!(r#"{"hello":"world"}"#),
        "JSON bodies stay strings"
    );
    assert_eq!(r.out("headers")["x-test"], json!(["a"]));
    assert_eq!(r.out("uri"), json!(format!("{base}/json")));

    let r = run(json!({"id": "h", "type": "io.kestra.plugin.core.http.Request", "uri": "{{ base }}/echo",
        "method": "POST", "body": "{\"n\": {{ 1 + 1 }}}", "options": {"auth": {"type": "BASIC", "username": "u", "password": "p"}}})).await;
    // the base variable is missing in this context: rendering fails
    r.err();
    let r = run_with(json!({"id": "h", "type": "io.kestra.plugin.core.http.Request", "uri": "{{ base }}/echo",
        "method": "POST", "body": "{\"n\": {{ 1 + 1 }}}", "options": {"auth": {"type": "BASIC", "username": "u", "password": "p"}}}),
        json!({"base": base}), Arc::new(MemoryStorage::default())).await;
    assert_eq!(
        r.out("body"),
        json!("POST|application/json|Basic dTpw|{\"n\": 2}")
    );

    let r = run(json!({"id": "h", "type": "io.kestra.plugin.core.http.Request", "uri": format!("{base}/echo"),
        "method": "POST", "formData": {"a": "1", "b": "x y"}})).await;
    assert_eq!(
        r.out("body"),
        json!("POST|application/x-www-form-urlencoded||a=1&b=x+y")
    );

    let r = run(json!({"id": "h", "type": "io.kestra.plugin.core.http.Request", "uri": format!("{base}/missing")})).await;
    assert!(r.err().contains("404"), "{}", r.err());
    let r = run(json!({"id": "h", "type": "io.kestra.plugin.core.http.Request", "uri": format!("{base}/missing"),
        "options": {"allowFailed": true}})).await;
    assert_eq!(r.out("code"), json!(404));
    let r = run(json!({"id": "h", "type": "io.kestra.plugin.core.http.Request", "uri": format!("{base}/missing"),
        "allowFailed": true})).await;
    assert_eq!(r.out("code"), json!(404));
}

#[tokio::test(flavor = "multi_thread")]
async fn http_download_streams_to_storage() {
    let base = http_server().await;
    let r = run(json!({"id": "d", "type": "io.kestra.plugin.core.http.Download", "uri": format!("{base}/files/data.bin")})).await;
    assert_eq!(r.out("code"), json!(200));
    assert_eq!(r.out("length"), json!(1000));
    let uri = r.out("uri").as_str().unwrap().to_string();
    assert!(uri.ends_with("/data.bin"), "{uri}");
    let p = StoragePath::parse(&uri).unwrap();
    assert_eq!(
        r.storage.get_bytes("main", &p).await.unwrap().to_vec(),
        vec![7u8; 1000]
    );
    let r = run(json!({"id": "d", "type": "io.kestra.plugin.core.http.Download", "uri": format!("{base}/empty")})).await;
    assert!(r.err().contains("No response"), "{}", r.err());
    let r = run(json!({"id": "d", "type": "io.kestra.plugin.core.http.Download", "uri": format!("{base}/missing")})).await;
    assert!(r.err().contains("404"));
}

// ---------------------------------------------------------------------------------------------
// The Worker loop over the testkit's in-memory queue
// ---------------------------------------------------------------------------------------------

/// What these tests read off the testkit's in-memory queue.
trait Observed {
    fn trigger_results(&self) -> Vec<WorkerTriggerResult>;
    /// Final results (not the RUNNING messages), in publish order.
    fn results(&self) -> Vec<WorkerTaskResult>;
    /// Every message on the result topic (RUNNING and final), in publish order.
    fn task_messages(&self) -> Vec<WorkerTaskResult>;
    fn logs(&self) -> Vec<String>;
}

impl Observed for MemoryQueue {
    fn trigger_results(&self) -> Vec<WorkerTriggerResult> {
        self.published()
            .iter()
            .filter(|e| e.topic == Topic::WorkerTriggerResult)
            .map(|e| e.decode().unwrap())
            .collect()
    }
    fn results(&self) -> Vec<WorkerTaskResult> {
        self.task_messages()
            .into_iter()
            .filter(|r| r.state != StateType::Running)
            .collect()
    }
    fn task_messages(&self) -> Vec<WorkerTaskResult> {
        self.published()
            .iter()
            .filter(|e| e.topic == Topic::WorkerTaskResult)
            .map(|e| e.decode().unwrap())
            .collect()
    }
    fn logs(&self) -> Vec<String> {
        self.published()
            .iter()
            .filter(|e| e.topic == Topic::Log)
            .map(|e| e.decode::<kestra_core::model::LogEntry>().unwrap().message)
            .collect()
    }
}

fn job(execution_id: &str, t: Value) -> WorkerJob {
    let t = task(t);
    let run = TaskRun {
        id: kestra_core::model::new_id(),
        tenant_id: "main".into(),
        execution_id: execution_id.into(),
        namespace: "company.team".into(),
        flow_id: "f".into(),
        task_id: t.id.clone(),
        parent_task_run_id: None,
        value: None,
        iteration: None,
        attempts: Vec::new(),
        outputs: None,
        state: State::new_at(StateType::Running, chrono::Utc::now()),
        dynamic: false,
    };
    WorkerJob::Task(Box::new(WorkerTask {
        context: json!({"flow": {"id": "f", "namespace": "company.team"}, "execution": {"id": execution_id}, "task": {"id": t.id}, "outputs": {}}),
        task_run: run,
        task: t,
        attempt: 2,
        flow_revision: 1,
    }))
}

async fn wait_for(queue: &MemoryQueue, n: usize) -> Vec<WorkerTaskResult> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let r = queue.results();
        if r.len() >= n || Instant::now() > deadline {
            return r;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Issue 16, item 1: a task that panics fails its task run with the panic's message in its logs;
/// the worker goes on running the jobs after it.
#[tokio::test(flavor = "multi_thread")]
async fn a_panicking_task_fails_its_task_run_and_the_worker_goes_on() {
    let queue = Arc::new(MemoryQueue::new());
    let mut tasks = TaskRegistry::default();
    tasks.register::<Greet>();
    let mut runners = RunnerRegistry::core();
    runners.register::<Greet>();
    let worker = Worker::new(
        WorkerConfig {
            concurrency: 2,
            poll_wait: Duration::from_millis(100),
            ..WorkerConfig::default()
        },
        queue.clone(),
        Arc::new(MemoryStorage::default()),
        Arc::new(ExpressionEngine::default()),
        Arc::new(tasks),
        Arc::new(runners),
    );
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    let boom = job(
        "boom",
        json!({"id": "g", "type": "com.example.Greet", "name": "x", "panic": true}),
    );
    queue.publish(vec![boom.envelope().unwrap()]).await.unwrap();
    let results = wait_for(&queue, 1).await;
    let failed = results.iter().find(|r| r.execution_id == "boom");
    assert_eq!(
        failed.map(|r| r.state),
        Some(StateType::Failed),
        "{results:?}"
    );
    assert!(
        queue
            .logs()
            .iter()
            .any(|l| l.contains("the task panicked: greet exploded")),
        "the reason is logged on the task run: {:?}",
        queue.logs()
    );
    assert!(!handle.is_finished(), "the worker still runs");
    for n in 0..3 {
        let fine = job(
            &format!("fine{n}"),
            json!({"id": "g", "type": "com.example.Greet", "name": "{{ flow.id }}"}),
        );
        queue.publish(vec![fine.envelope().unwrap()]).await.unwrap();
    }
    let results = wait_for(&queue, 4).await;
    for n in 0..3 {
        let ok = results
            .iter()
            .find(|r| r.execution_id == format!("fine{n}"));
        assert_eq!(ok.map(|r| r.state), Some(StateType::Success), "{results:?}");
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while queue.acknowledged().len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(queue.acknowledged().len(), 4, "each job acknowledged once");
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .unwrap()
        .unwrap();
}

/// Issue 16, item 4 ("a graceful stop has a configurable drain limit"): a shutdown waits
/// `drain_timeout` for running jobs (`kestra.server.terminationGracePeriod` in the server), then
/// abandons them - cancelled within `cancel_grace`, never acknowledged, so another worker runs
/// them again - instead of waiting for a task of an hour.
#[tokio::test(flavor = "multi_thread")]
async fn a_shutdown_abandons_running_jobs_after_the_drain_limit() {
    let queue = Arc::new(MemoryQueue::new());
    let worker = Worker::new(
        WorkerConfig {
            concurrency: 2,
            poll_wait: Duration::from_millis(100),
            drain_timeout: Duration::from_millis(500),
            cancel_grace: Duration::from_millis(500),
            ..WorkerConfig::default()
        },
        queue.clone(),
        Arc::new(MemoryStorage::default()),
        Arc::new(ExpressionEngine::default()),
        Arc::new(TaskRegistry::default()),
        Arc::new(RunnerRegistry::core()),
    );
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    let long = job(
        "long",
        json!({"id": "nap", "type": "io.kestra.plugin.core.flow.Sleep", "duration": "PT1H"}),
    );
    queue.publish(vec![long.envelope().unwrap()]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.task_messages().is_empty() {
        assert!(Instant::now() < deadline, "the job did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let start = Instant::now();
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the worker stops after its drain limit, not after the task's hour")
        .unwrap();
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(450) && took < Duration::from_secs(3),
        "drain limit 0.5 s + cancel grace: {took:?}"
    );
    assert!(
        queue.acknowledged().is_empty(),
        "the abandoned job is not acknowledged (another worker runs it again)"
    );
    assert!(
        queue.results().is_empty(),
        "no final result for the abandoned job: {:?}",
        queue.results()
    );
    // Its heartbeats: RUNNING, TERMINATING while it drained, TERMINATED_FORCED at the end.
    assert_eq!(
        heartbeat_states(&queue),
        vec![
            ServiceState::Running,
            ServiceState::TerminatingGracefully,
            ServiceState::TerminatedForced
        ]
    );
}

/// The states of the heartbeats published so far, consecutive repeats merged.
fn heartbeat_states(queue: &MemoryQueue) -> Vec<ServiceState> {
    let mut states: Vec<ServiceState> = Vec::new();
    for e in queue.published() {
        if e.topic != Topic::Liveness {
            continue;
        }
        if let Ok(LivenessMessage::Heartbeat { instance }) = e.decode::<LivenessMessage>()
            && states.last() != Some(&instance.state)
        {
            states.push(instance.state);
        }
    }
    states
}

/// Issue 14 ("a worker that finds itself declared dead stops its tasks"): when the executor's
/// verdict that this worker is dead (DISCONNECTED: it was frozen or cut off past the liveness
/// timeout, so its jobs are being resubmitted elsewhere) reaches it, it abandons its running jobs
/// at once - no result, no acknowledgement - and stops without being asked; another worker's
/// verdict changes nothing.
#[tokio::test(flavor = "multi_thread")]
async fn a_worker_declared_dead_abandons_its_jobs_and_stops() {
    let queue = Arc::new(MemoryQueue::new());
    let worker = Worker::new(
        WorkerConfig {
            concurrency: 2,
            poll_wait: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(60),
            cancel_grace: Duration::from_millis(500),
            ..WorkerConfig::default()
        },
        queue.clone(),
        Arc::new(MemoryStorage::default()),
        Arc::new(ExpressionEngine::default()),
        Arc::new(TaskRegistry::default()),
        Arc::new(RunnerRegistry::core()),
    );
    let worker_id = worker.id().to_string();
    let shutdown = CancellationToken::new();
    let mut handle = tokio::spawn(worker.run(shutdown.clone()));
    let long = job(
        "long",
        json!({"id": "nap", "type": "io.kestra.plugin.core.flow.Sleep", "duration": "PT1H"}),
    );
    queue.publish(vec![long.envelope().unwrap()]).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.task_messages().is_empty() {
        assert!(Instant::now() < deadline, "the job did not start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let verdict = |id: &str| {
        LivenessMessage::Declared {
            instance: ServiceInstance {
                id: id.to_string(),
                type_: ServiceType::Worker,
                state: ServiceState::Disconnected,
                hostname: "h".into(),
                created_date: chrono::Utc::now(),
                updated_date: chrono::Utc::now(),
                props: serde_json::Map::new(),
            },
            jobs: Vec::new(),
        }
        .envelope()
        .unwrap()
    };
    // Another worker's verdict: nothing happens.
    queue.publish(vec![verdict("someone-else")]).await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut handle)
            .await
            .is_err(),
        "another worker's verdict stopped this one"
    );
    let start = Instant::now();
    queue.publish(vec![verdict(&worker_id)]).await.unwrap();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("a worker declared dead stops without waiting for its task's hour")
        .unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(5),
        "stopped {:?} after the verdict",
        start.elapsed()
    );
    assert!(!shutdown.is_cancelled(), "it stopped on its own");
    assert!(
        queue.acknowledged().is_empty(),
        "its job is not acknowledged (it runs elsewhere)"
    );
    assert!(
        queue.results().is_empty(),
        "no result for the abandoned job: {:?}",
        queue.results()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_runs_jobs_publishes_results_then_acks_and_follows_kills() {
    let queue = Arc::new(MemoryQueue::new());
    let worker = Worker::new(
        WorkerConfig {
            concurrency: 4,
            poll_wait: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(5),
            ..WorkerConfig::default()
        },
        queue.clone(),
        Arc::new(MemoryStorage::default()),
        Arc::new(ExpressionEngine::default()),
        Arc::new(TaskRegistry::default()),
        Arc::new(RunnerRegistry::core()),
    );
    let worker_id = worker.id().to_string();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(100)).await;

    let ok = job(
        "e1",
        json!({"id": "ret", "type": "io.kestra.plugin.core.debug.Return", "format": "{{ flow.id }}"}),
    );
    let bad = job(
        "e2",
        json!({"id": "bad", "type": "io.kestra.plugin.core.log.Log", "message": "{{ missing }}"}),
    );
    let slow = job(
        "e3",
        json!({"id": "slow", "type": "io.kestra.plugin.core.flow.Sleep", "duration": "PT30S"}),
    );
    let timed = job(
        "e4",
        json!({"id": "timed", "type": "io.kestra.plugin.core.flow.Sleep", "duration": "PT30S", "timeout": "PT0.2S"}),
    );
    let mut messages = vec![
        ok.envelope().unwrap(),
        bad.envelope().unwrap(),
        slow.envelope().unwrap(),
        timed.envelope().unwrap(),
    ];
    messages.push(Envelope::new(Topic::WorkerJob, "e5", &b"{not a job"[..]));
    queue.publish(messages).await.unwrap();

    let results = wait_for(&queue, 3).await;
    let by = |id: &str| results.iter().find(|r| r.execution_id == id).cloned();
    let r1 = by("e1").expect("result of e1");
    assert_eq!(r1.state, StateType::Success);
    assert_eq!(r1.attempt, 2);
    assert_eq!(r1.outputs.unwrap()["value"], json!("f"));
    assert_eq!(r1.worker_id.as_deref(), Some(worker_id.as_str()));
    let states: Vec<StateType> = r1
        .attempt_state
        .histories()
        .iter()
        .map(|h| h.state)
        .collect();
    assert_eq!(states, vec![StateType::Running, StateType::Success]);
    assert_eq!(by("e2").expect("e2").state, StateType::Failed);
    assert_eq!(by("e4").expect("e4").state, StateType::Failed);
    assert!(
        queue.logs().iter().any(|l| l.contains("missing")),
        "error logs are published: {:?}",
        queue.logs()
    );
    assert!(queue.logs().iter().any(|l| l == "Timeout after PT0.2S"));
    assert_eq!(
        queue.dead_letters().len(),
        1,
        "the malformed job is dead-lettered"
    );
    assert!(by("e3").is_none(), "the slow job is still running");

    // kill e3: it ends KILLED; a later job of e3 is answered KILLED without running
    queue
        .publish(vec![
            ExecutionKilled {
                execution_id: "e3".into(),
                attempt: None,
            }
            .envelope()
            .unwrap(),
        ])
        .await
        .unwrap();
    let results = wait_for(&queue, 4).await;
    let killed = results
        .iter()
        .find(|r| r.execution_id == "e3")
        .expect("e3 killed");
    assert_eq!(killed.state, StateType::Killed);
    let late = job(
        "e3",
        json!({"id": "late", "type": "io.kestra.plugin.core.log.Log", "message": "must not run"}),
    );
    queue.publish(vec![late.envelope().unwrap()]).await.unwrap();
    let results = wait_for(&queue, 5).await;
    assert_eq!(
        results
            .iter()
            .filter(|r| r.execution_id == "e3" && r.state == StateType::Killed)
            .count(),
        2
    );
    assert!(!queue.logs().iter().any(|l| l.contains("must not run")));

    // every processed job was acknowledged, after its result (the acknowledgement follows the
    // result's publish: wait for it)
    let deadline = Instant::now() + Duration::from_secs(5);
    while queue.acknowledged().len() < 5 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(queue.acknowledged().len(), 5);

    // graceful shutdown: a running job finishes and its result is published
    let short = job(
        "e6",
        json!({"id": "short", "type": "io.kestra.plugin.core.flow.Sleep", "duration": "PT0.5S"}),
    );
    queue
        .publish(vec![short.envelope().unwrap()])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .unwrap()
        .unwrap();
    let results = queue.results();
    assert_eq!(
        results
            .iter()
            .find(|r| r.execution_id == "e6")
            .map(|r| r.state),
        Some(StateType::Success)
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_says_running_when_it_starts_an_attempt_then_answers() {
    let queue = Arc::new(MemoryQueue::new());
    let worker = Worker::new(
        WorkerConfig {
            concurrency: 2,
            poll_wait: Duration::from_millis(100),
            ..WorkerConfig::default()
        },
        queue.clone(),
        Arc::new(MemoryStorage::default()),
        Arc::new(ExpressionEngine::default()),
        Arc::new(TaskRegistry::default()),
        Arc::new(RunnerRegistry::core()),
    );
    let worker_id = worker.id().to_string();
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    let nap = job(
        "r1",
        json!({"id": "nap", "type": "io.kestra.plugin.core.flow.Sleep", "duration": "PT1S"}),
    );
    let WorkerJob::Task(task) = &nap else {
        unreachable!()
    };
    let task_run_id = task.task_run.id.clone();
    let published = chrono::Utc::now();
    queue.publish(vec![nap.envelope().unwrap()]).await.unwrap();

    // RUNNING while the task runs (long before it ends), not acknowledging the job.
    let deadline = Instant::now() + Duration::from_millis(800);
    let running = loop {
        if let Some(r) = queue.task_messages().first().cloned() {
            break r;
        }
        assert!(Instant::now() < deadline, "no RUNNING while the task runs");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(running.state, StateType::Running);
    assert_eq!(running.execution_id, "r1");
    assert_eq!(running.task_run_id, task_run_id);
    assert_eq!(running.attempt, 2);
    assert_eq!(running.worker_id.as_deref(), Some(worker_id.as_str()));
    assert!(running.outputs.is_none());
    let started = running.attempt_state.start_date().unwrap();
    assert!(started >= published);
    assert_eq!(
        running
            .attempt_state
            .histories()
            .iter()
            .map(|h| h.state)
            .collect::<Vec<_>>(),
        vec![StateType::Running]
    );
    assert!(queue.results().is_empty());
    assert!(queue.acknowledged().is_empty());

    // Then the final result, with the same start.
    let results = wait_for(&queue, 1).await;
    assert_eq!(results[0].state, StateType::Success);
    assert_eq!(results[0].attempt_state.start_date(), Some(started));
    let all = queue.task_messages();
    assert_eq!(all.len(), 2, "one RUNNING, one result: {all:?}");
    assert_eq!(all[0].state, StateType::Running, "RUNNING comes first");
    assert_eq!(queue.acknowledged().len(), 1);

    // A job of a killed execution is answered KILLED without running: no RUNNING for it.
    queue
        .publish(vec![
            ExecutionKilled {
                execution_id: "r2".into(),
                attempt: None,
            }
            .envelope()
            .unwrap(),
        ])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let late = job(
        "r2",
        json!({"id": "late", "type": "io.kestra.plugin.core.log.Log", "message": "must not run"}),
    );
    queue.publish(vec![late.envelope().unwrap()]).await.unwrap();
    let results = wait_for(&queue, 2).await;
    assert_eq!(results[1].state, StateType::Killed);
    assert!(
        !queue
            .task_messages()
            .iter()
            .any(|r| r.execution_id == "r2" && r.state == StateType::Running)
    );

    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .unwrap()
        .unwrap();
}

/// A kill of one attempt (a stale copy of a resubmitted attempt) stops that job only: the other
/// job of the same execution runs on and succeeds, and later jobs of the execution still run.
#[tokio::test(flavor = "multi_thread")]
async fn a_kill_of_one_attempt_stops_only_that_job() {
    let queue = Arc::new(MemoryQueue::new());
    let worker = Worker::new(
        WorkerConfig {
            concurrency: 4,
            poll_wait: Duration::from_millis(100),
            ..WorkerConfig::default()
        },
        queue.clone(),
        Arc::new(MemoryStorage::default()),
        Arc::new(ExpressionEngine::default()),
        Arc::new(TaskRegistry::default()),
        Arc::new(RunnerRegistry::core()),
    );
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    let sleep = |id: &str, duration: &str| {
        job(
            "x1",
            json!({"id": id, "type": "io.kestra.plugin.core.flow.Sleep", "duration": duration}),
        )
    };
    let (stale, other) = (sleep("stale", "PT5S"), sleep("other", "PT0.6S"));
    let key = |j: &WorkerJob| match j {
        WorkerJob::Task(t) => (t.key(), t.task_run.id.clone()),
        _ => unreachable!(),
    };
    let (stale_key, stale_run) = key(&stale);
    let (_, other_run) = key(&other);
    queue
        .publish(vec![stale.envelope().unwrap(), other.envelope().unwrap()])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while queue
        .task_messages()
        .iter()
        .filter(|r| r.state == StateType::Running)
        .count()
        < 2
    {
        assert!(Instant::now() < deadline, "both jobs start");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    queue
        .publish(vec![
            ExecutionKilled {
                execution_id: "x1".into(),
                attempt: Some(stale_key),
            }
            .envelope()
            .unwrap(),
        ])
        .await
        .unwrap();
    let results = wait_for(&queue, 2).await;
    let state_of = |run: &str| {
        results
            .iter()
            .find(|r| r.task_run_id == run)
            .map(|r| r.state)
    };
    assert_eq!(state_of(&stale_run), Some(StateType::Killed), "{results:?}");
    assert_eq!(
        state_of(&other_run),
        Some(StateType::Success),
        "{results:?}"
    );
    // The execution is not marked killed: its next job runs.
    let next = job(
        "x1",
        json!({"id": "next", "type": "io.kestra.plugin.core.log.Log", "message": "still runs"}),
    );
    queue.publish(vec![next.envelope().unwrap()]).await.unwrap();
    let results = wait_for(&queue, 3).await;
    assert_eq!(results.get(2).map(|r| r.state), Some(StateType::Success));
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .unwrap()
        .unwrap();
}

// ---------------------------------------------------------------------------------------------
// Polling triggers on the worker (http.Trigger)
// ---------------------------------------------------------------------------------------------

fn trigger_job(trigger: Value) -> WorkerTrigger {
    WorkerTrigger {
        tenant_id: "main".into(),
        namespace: "company.team".into(),
        flow_id: "polled".into(),
        flow_revision: 3,
        trigger: serde_json::from_value(trigger).expect("trigger json"),
        context: json!({"flow": {"id": "polled", "namespace": "company.team", "revision": 3, "tenantId": "main"}}),
        evaluation_date: chrono::Utc::now(),
    }
}

async fn evaluate(trigger: Value) -> (WorkerTriggerResult, MemorySink) {
    let sink = MemorySink::new();
    let job = trigger_job(trigger);
    let result = evaluate_trigger(
        &job,
        &TriggerEvaluator {
            storage: Arc::new(MemoryStorage::default()),
            expr: Arc::new(ExpressionEngine::default()),
            task_registry: Arc::new(TaskRegistry::default()),
            runners: Arc::new(RunnerRegistry::core()),
            sink: Arc::new(sink.clone()),
            cancel: CancellationToken::new(),
            worker_id: Some("w1".into()),
        },
    )
    .await;
    assert_eq!(result.evaluation_date, job.evaluation_date);
    assert_eq!(result.trigger_id, "poll");
    assert_eq!(result.flow_revision, 3);
    (result, sink)
}

fn http_trigger(uri: &str, extra: Value) -> Value {
    let mut t = json!({"id": "poll", "type": "io.kestra.plugin.core.http.Trigger", "uri": uri, "interval": "PT1S"});
    if let (Value::Object(t), Value::Object(extra)) = (&mut t, extra) {
        t.extend(extra);
    }
    t
}

#[tokio::test(flavor = "multi_thread")]
async fn http_trigger_default_condition_starts_with_request_outputs() {
    let base = http_server().await;
    let (r, _) = evaluate(http_trigger(&format!("{base}/json"), json!({}))).await;
    assert_eq!(r.error, None);
    let vars = r.variables.expect("200 < 400: an execution starts");
    assert_eq!(vars["uri"], json!(format!("{base}/json")));
    assert_eq!(vars["code"], json!(200));
    assert_eq!(vars["body"], json!(r#"{"hello":"world"}"#));
    assert_eq!(vars["headers"]["x-test"], json!(["a"]));
    assert_eq!(r.worker_id.as_deref(), Some("w1"));

    // A 404 is a response, not an error: the default condition is false.
    let (r, _) = evaluate(http_trigger(&format!("{base}/missing"), json!({}))).await;
    assert_eq!(r.error, None);
    assert_eq!(r.variables, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn http_trigger_response_condition_sees_status_body_and_headers() {
    let base = http_server().await;
    let uri = format!("{base}/json");
    let cases = [
        ("{{ fromJson(response.body).hello == 'world' }}", true),
        ("{{ response.body contains 'nobody' }}", false),
        (
            "{{ response.statusCode == 200 and response.headers['x-test'][0] == 'a' }}",
            true,
        ),
        ("{{ response.statusCode == 201 }}", false),
    ];
    for (condition, starts) in cases {
        let (r, _) = evaluate(http_trigger(&uri, json!({"responseCondition": condition}))).await;
        assert_eq!(r.error, None, "{condition}");
        assert_eq!(r.variables.is_some(), starts, "{condition}");
    }
    // A 404 can be what the trigger waits for.
    let (r, _) = evaluate(http_trigger(
        &format!("{base}/missing"),
        json!({"responseCondition": "{{ response.statusCode == 404 }}"}),
    ))
    .await;
    assert_eq!(r.variables.expect("404 matched")["body"], json!("nope"));
}

#[tokio::test(flavor = "multi_thread")]
async fn http_trigger_errors_are_results_and_trigger_logs() {
    let base = http_server().await;
    for (trigger, needle) in [
        (http_trigger("not a uri", json!({})), "uri"),
        (http_trigger("{{ nowhere }}", json!({})), "nowhere"),
        (
            http_trigger(
                &format!("{base}/json"),
                json!({"responseCondition": "{{ response.nope.deeper }}"}),
            ),
            "nope",
        ),
        (
            http_trigger(
                &format!("{base}/empty"),
                json!({"failOnEmptyResponse": true}),
            ),
            "No response",
        ),
        (
            http_trigger("http://127.0.0.1:1/closed", json!({})),
            "HTTP request failed",
        ),
    ] {
        let (r, sink) = evaluate(trigger).await;
        let error = r.error.expect("an evaluation error");
        assert!(error.contains(needle), "{error} should mention {needle}");
        assert_eq!(r.variables, None);
        let logs = sink.logs();
        let line = logs
            .iter()
            .find(|l| l.level == Level::Error)
            .expect("the error is logged");
        assert!(line.message.contains(needle), "{}", line.message);
        assert_eq!(line.trigger_id.as_deref(), Some("poll"));
        assert_eq!(line.execution_id, None, "a trigger log has no execution");
        assert_eq!(line.flow_id, "polled");
    }
    // Without failOnEmptyResponse an empty body is a response like another.
    let (r, _) = evaluate(http_trigger(&format!("{base}/empty"), json!({}))).await;
    assert_eq!(r.variables.expect("200 starts")["body"], Value::Null);
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_evaluates_trigger_jobs_and_dead_letters_malformed_ones() {
    let base = http_server().await;
    let queue = Arc::new(MemoryQueue::new());
    let worker = Worker::new(
        WorkerConfig {
            poll_wait: Duration::from_millis(100),
            drain_timeout: Duration::from_secs(5),
            ..WorkerConfig::default()
        },
        queue.clone(),
        Arc::new(MemoryStorage::default()),
        Arc::new(ExpressionEngine::default()),
        Arc::new(TaskRegistry::default()),
        Arc::new(RunnerRegistry::core()),
    );
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run(shutdown.clone()));

    let good = trigger_job(http_trigger(&format!("{base}/json"), json!({})));
    let unknown = trigger_job(
        json!({"id": "sched", "type": "io.kestra.plugin.core.trigger.Schedule", "cron": "* * * * *"}),
    );
    queue
        .publish(vec![
            Envelope::new(
                Topic::WorkerJob,
                "k",
                &br#"{"type": "trigger", "flowId": 3}"#[..],
            ),
            WorkerJob::Trigger(Box::new(good.clone()))
                .envelope()
                .unwrap(),
            WorkerJob::Trigger(Box::new(unknown)).envelope().unwrap(),
        ])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let results = loop {
        let results = queue.trigger_results();
        if results.len() >= 2 || Instant::now() > deadline {
            break results;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .unwrap()
        .unwrap();

    assert_eq!(results.len(), 2, "{results:?}");
    let ok = results.iter().find(|r| r.trigger_id == "poll").unwrap();
    assert_eq!(ok.evaluation_date, good.evaluation_date);
    assert_eq!(ok.variables.as_ref().unwrap()["code"], json!(200));
    let not_polling = results.iter().find(|r| r.trigger_id == "sched").unwrap();
    assert!(
        not_polling
            .error
            .as_deref()
            .unwrap()
            .contains("not a registered polling trigger"),
        "{not_polling:?}"
    );
    assert_eq!(
        queue.dead_letters().len(),
        1,
        "the malformed job is dead-lettered"
    );
    assert_eq!(
        queue.acknowledged().len(),
        2,
        "evaluated jobs are acknowledged"
    );
    let published = queue.published();
    for published in published
        .iter()
        .filter(|e| e.topic == Topic::WorkerTriggerResult)
    {
        let result: WorkerTriggerResult = published.decode().unwrap();
        assert_eq!(
            published.key,
            result.uid(),
            "results are keyed by trigger uid"
        );
    }
    assert!(
        published
            .iter()
            .any(|e| e.topic == Topic::WorkerTriggerResult && e.key == good.uid()),
        "the good job's result is keyed by its trigger uid"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn worker_stops_an_evaluation_that_outlives_its_timeout() {
    // A server that accepts connections and never answers.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((sock, _)) = listener.accept().await {
            held.push(sock);
        }
    });
    let queue = Arc::new(MemoryQueue::new());
    let worker = Worker::new(
        WorkerConfig {
            poll_wait: Duration::from_millis(100),
            evaluation_timeout: Duration::from_millis(300),
            ..WorkerConfig::default()
        },
        queue.clone(),
        Arc::new(MemoryStorage::default()),
        Arc::new(ExpressionEngine::default()),
        Arc::new(TaskRegistry::default()),
        Arc::new(RunnerRegistry::core()),
    );
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    let job = trigger_job(http_trigger(&format!("http://{addr}/hang"), json!({})));
    queue
        .publish(vec![WorkerJob::Trigger(Box::new(job)).envelope().unwrap()])
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.trigger_results().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .unwrap()
        .unwrap();
    let results = queue.trigger_results();
    assert_eq!(results.len(), 1);
    let error = results[0].error.as_deref().unwrap();
    assert!(error.contains("did not end within"), "{error}");
    assert_eq!(results[0].variables, None);
}

#[tokio::test(flavor = "multi_thread")]
async fn for_each_item_split_cuts_batches_and_merge_writes_outputs() {
    const SPLIT: &str = "io.kestra.plugin.core.flow.ForEachItem$ForEachItemSplit";
    let storage = Arc::new(MemoryStorage::default());
    let rows = write(&storage, "r1\nr2\nr3\nr4\nr5\n").await;
    let split = |batch: Value| json!({"id": "each_split", "type": SPLIT, "items": "{{ f }}", "batch": batch});
    let batches = |r: &Run| {
        let n = r.out("numberOfBatches").as_u64().unwrap();
        let prefix = r.out("batchUriPrefix").as_str().unwrap().to_string();
        let suffix = r.out("batchUriSuffix").as_str().unwrap().to_string();
        (0..n)
            .map(|i| format!("{prefix}{i}{suffix}"))
            .collect::<Vec<_>>()
    };
    async fn contents(r: &Run, uris: Vec<String>) -> Vec<String> {
        let mut out = Vec::new();
        for u in uris {
            out.push(r.read(&u).await);
        }
        out
    }
    // Default: one row per batch; the `splits` file lists the batch URIs.
    let r = run_with(split(Value::Null), json!({"f": rows}), storage.clone()).await;
    let uris = batches(&r);
    assert_eq!(uris.len(), 5);
    assert!(uris[0].ends_with("/batch-0.txt"), "{}", uris[0]);
    assert_eq!(
        r.read(r.out("splits").as_str().unwrap()).await,
        uris.iter().map(|u| format!("{u}\n")).collect::<String>()
    );
    assert_eq!(
        contents(&r, uris).await,
        vec!["r1\n", "r2\n", "r3\n", "r4\n", "r5\n"]
    );
    let r = run_with(
        split(json!({"rows": 2})),
        json!({"f": rows}),
        storage.clone(),
    )
    .await;
    assert_eq!(
        contents(&r, batches(&r)).await,
        vec!["r1\nr2\n", "r3\nr4\n", "r5\n"]
    );
    let r = run_with(
        split(json!({"partitions": 2})),
        json!({"f": rows}),
        storage.clone(),
    )
    .await;
    assert_eq!(
        contents(&r, batches(&r)).await,
        vec!["r1\nr3\nr5\n", "r2\nr4\n"]
    );
    let r = run_with(
        split(json!({"bytes": "7B"})),
        json!({"f": rows}),
        storage.clone(),
    )
    .await;
    assert_eq!(
        contents(&r, batches(&r)).await,
        vec!["r1\nr2\n", "r3\nr4\n", "r5\n"]
    );
    // An empty file gives no batch.
    let empty = write(&storage, "").await;
    let r = run_with(split(Value::Null), json!({"f": empty}), storage.clone()).await;
    assert_eq!(r.out("numberOfBatches"), json!(0));
    // Bad input: errors, not panics.
    let r = run_with(
        split(json!({"rows": 2, "partitions": 2})),
        json!({"f": rows}),
        storage.clone(),
    )
    .await;
    assert!(r.err().contains("only one of"), "{}", r.err());
    let r = run_with(
        split(json!({"rows": 0})),
        json!({"f": rows}),
        storage.clone(),
    )
    .await;
    assert!(r.err().contains("greater than 0"), "{}", r.err());
    let r = run_with(
        split(Value::Null),
        json!({"f": "not a uri"}),
        storage.clone(),
    )
    .await;
    assert!(
        r.err().contains(
            "Unable to split the items from not a uri, this is not an internal storage URI!"
        ),
        "{}",
        r.err()
    );
    let missing = "kestra:///company/team/test-flow/missing.txt";
    let r = run_with(split(Value::Null), json!({"f": missing}), storage.clone()).await;
    assert!(r.err().contains("file not found"), "{}", r.err());

    // Merge: one ION struct per line, in iteration order.
    let r = run_with(
        json!({"id": "each_merge", "type": "io.kestra.plugin.core.flow.ForEachItem$ForEachItemMergeOutputs",
               "subflowOutputs": {"10": {"v": 10}, "2": {"v": "two"}, "0": {"v": 0}}}),
        json!({}),
        storage.clone(),
    )
    .await;
    assert_eq!(
        r.read(r.out("subflowOutputs").as_str().unwrap()).await,
        "{v:0}\n{v:\"two\"}\n{v:10}\n"
    );
    // No child had outputs: no file, no output.
    let r = run_with(
        json!({"id": "each_merge", "type": "io.kestra.plugin.core.flow.ForEachItem$ForEachItemMergeOutputs",
               "subflowOutputs": {}}),
        json!({}),
        storage.clone(),
    )
    .await;
    assert!(r.ok().outputs.is_empty());
}

#[tokio::test(flavor = "multi_thread")]
async fn repository_tasks_without_services_fail_naming_the_task() {
    // A context built without `ExecutionServices` (a worker not started by the Engine): each task
    // that reads the repository fails with an error naming itself, never a panic.
    for t in [
        json!({"id": "f", "type": "io.kestra.plugin.core.log.Fetch"}),
        json!({"id": "c", "type": "io.kestra.plugin.core.execution.Count",
               "namespaces": ["company.team"], "startDate": "2024-01-01T00:00:00Z",
               "expression": "{{ count > 0 }}"}),
        json!({"id": "p", "type": "io.kestra.plugin.core.execution.PurgeExecutions",
               "endDate": "2024-01-01T00:00:00Z"}),
        json!({"id": "r", "type": "io.kestra.plugin.core.execution.Resume"}),
        json!({"id": "t", "type": "io.kestra.plugin.core.trigger.Toggle", "trigger": "s"}),
    ] {
        let id = t["id"].as_str().unwrap().to_string();
        let r = run(t).await;
        let err = r
            .result
            .expect_err("no services: the task fails")
            .to_string();
        assert!(
            err.contains(&format!("task '{id}'")) && err.contains("needs access to the repository"),
            "{err}"
        );
    }
    // A bad date or state is named before any repository access.
    let r = run(
        json!({"id": "c", "type": "io.kestra.plugin.core.execution.Count",
                       "flows": [{"namespace": "a"}], "startDate": "2024-01-01T00:00:00Z",
                       "expression": "{{ true }}"}),
    )
    .await;
    let err = r.result.expect_err("flows[0] lacks flowId").to_string();
    assert!(err.contains("flows[0]") && err.contains("flowId"), "{err}");
    let r = run(
        json!({"id": "p", "type": "io.kestra.plugin.core.execution.PurgeExecutions",
                       "endDate": "yesterday"}),
    )
    .await;
    let err = r.result.expect_err("bad endDate").to_string();
    assert!(
        err.contains("endDate") && err.contains("yesterday"),
        "{err}"
    );
}

/// Issue 16, item 1: a polling-trigger evaluation whose worker died (or abandoned it) each time it
/// was delivered is, past `max_delivery_attempts`, set aside as a dead letter and answered with an
/// error naming the key (the scheduler then releases the trigger) - never evaluated again, never a
/// crash loop of the worker.
#[tokio::test(flavor = "multi_thread")]
async fn a_trigger_evaluation_delivered_too_often_is_dead_lettered_and_answered_with_an_error() {
    let queue = Arc::new(MemoryQueue::new());
    // A server that counts the evaluations reaching it (there must be none).
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    tokio::spawn({
        let hits = hits.clone();
        async move {
            while let Ok((_sock, _)) = listener.accept().await {
                hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let job = trigger_job(http_trigger(&format!("http://{addr}/poll"), json!({})));
    queue
        .publish(vec![
            WorkerJob::Trigger(Box::new(job.clone()))
                .envelope()
                .unwrap(),
        ])
        .await
        .unwrap();
    // Three deliveries whose consumer "died": taken with a short lease, never acknowledged.
    for n in 1..=3u32 {
        let got = queue
            .receive(
                kestra_core::queue::ConsumerGroup::Worker,
                Topic::WorkerJob,
                1,
                Duration::from_millis(1),
                Duration::from_secs(2),
            )
            .await
            .unwrap();
        assert_eq!(got.len(), 1, "delivery {n}");
        assert_eq!(got[0].attempt, n);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let worker = Worker::new(
        WorkerConfig {
            poll_wait: Duration::from_millis(100),
            max_delivery_attempts: 3,
            ..WorkerConfig::default()
        },
        queue.clone(),
        Arc::new(MemoryStorage::default()),
        Arc::new(ExpressionEngine::default()),
        Arc::new(TaskRegistry::default()),
        Arc::new(RunnerRegistry::core()),
    );
    let shutdown = CancellationToken::new();
    let handle = tokio::spawn(worker.run(shutdown.clone()));
    let deadline = Instant::now() + Duration::from_secs(10);
    while queue.trigger_results().is_empty() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .unwrap()
        .unwrap();
    let results = queue.trigger_results();
    assert_eq!(results.len(), 1, "{results:?}");
    assert_eq!(results[0].trigger_id, job.trigger.id);
    assert_eq!(results[0].evaluation_date, job.evaluation_date);
    assert_eq!(results[0].variables, None);
    let error = results[0].error.as_deref().unwrap();
    assert!(
        error.contains("delivered 3 times") && error.contains("kestra.queue.max-delivery-attempts"),
        "{error}"
    );
    let dead = queue.dead_letters();
    assert_eq!(dead.len(), 1, "the job is a dead letter");
    assert!(
        dead[0].1.contains("kestra.queue.max-delivery-attempts"),
        "{}",
        dead[0].1
    );
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        0,
        "the poisoned evaluation is not run a fourth time"
    );
}
