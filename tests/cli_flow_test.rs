//! `kestra flow test FILE`: runs a flow in a throwaway engine, streams its logs to stderr, prints a
//! summary (or, with `--json` / `-o json`, the final execution as JSON in Kestra's shape) and exits
//! 0 only on SUCCESS/WARNING. Colour only on terminals; `--log-format json` for collectors.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `kestra` with no colour forced or forbidden by the environment the tests run in.
fn kestra() -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_kestra"));
    for var in [
        "NO_COLOR",
        "CLICOLOR_FORCE",
        "CLICOLOR",
        "RUST_LOG",
        "KESTRA_LOG_FORMAT",
    ] {
        cmd.env_remove(var);
    }
    cmd
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

fn run_flow(dir: &Path, flow: &str, args: &[&str], env: &[(&str, &str)]) -> Run {
    let file = dir.join("flow.yaml");
    std::fs::write(&file, flow).unwrap();
    let output = kestra()
        .args(["flow", "test"])
        .arg(&file)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap();
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

fn flow_test(flow: &str, extra: &[&str]) -> (i32, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let run = run_flow(dir.path(), flow, extra, &[]);
    let json = serde_json::from_str(&run.stdout).unwrap_or_else(|e| {
        panic!(
            "stdout is not JSON ({e}): {}\nstderr: {}",
            run.stdout, run.stderr
        )
    });
    (run.code, json)
}

const GREET: &str = "id: greet\nnamespace: cli.test\ninputs:\n  - id: name\n    type: STRING\ntasks:\n  - id: hello\n    type: io.kestra.plugin.core.debug.Return\n    format: \"hi {{ inputs.name }}\"\noutputs:\n  - id: out\n    type: STRING\n    value: \"{{ outputs.hello.value }}\"\n";

/// A shell task that logs on stdout and stderr, then exits 3.
const EXIT_3: &str = r#"id: exit3
namespace: cli.test
tasks:
  - id: before
    type: io.kestra.plugin.core.log.Log
    message: starting
  - id: sh
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    commands:
      - echo working
      - echo the disk is full >&2
      - exit 3
"#;

#[test]
fn successful_flow_prints_the_execution_and_exits_zero() {
    let (code, e) = flow_test(GREET, &["--input", "name=bob", "--json"]);
    assert_eq!(code, 0, "{e}");
    assert_eq!(e["state"]["current"], "SUCCESS");
    assert_eq!(e["id"].as_str().unwrap().len(), 22);
    assert_eq!(e["taskRunList"][0]["taskId"], "hello");
    assert_eq!(e["taskRunList"][0]["state"]["current"], "SUCCESS");
    assert_eq!(e["taskRunList"][0]["attempts"].as_array().unwrap().len(), 1);
    assert_eq!(e["taskRunList"][0]["outputs"]["value"], "hi bob");
    assert_eq!(e["outputs"]["out"], "hi bob");
}

#[test]
fn short_output_option_selects_json_too() {
    let (code, e) = flow_test(GREET, &["--input", "name=al", "-o", "json"]);
    assert_eq!(code, 0, "{e}");
    assert_eq!(e["outputs"]["out"], "hi al");
}

#[test]
fn failed_flow_exits_non_zero() {
    let (code, e) = flow_test(
        "id: boom\nnamespace: cli.test\ntasks:\n  - id: fail\n    type: io.kestra.plugin.core.execution.Fail\n",
        &["--json"],
    );
    assert_eq!(code, 1);
    assert_eq!(e["state"]["current"], "FAILED");
}

/// Settings from the environment reach the engine of `flow test` (only its timings are its own).
#[test]
fn a_limit_set_in_the_environment_applies() {
    let flow = "id: three\nnamespace: cli.test\ntasks:\n  - id: each\n    type: io.kestra.plugin.core.flow.ForEach\n    values: [1, 2, 3]\n    tasks:\n      - id: r\n        type: io.kestra.plugin.core.debug.Return\n        format: \"{{ taskrun.value }}\"\n";
    let dir = tempfile::tempdir().unwrap();
    let run = run_flow(
        dir.path(),
        flow,
        &["--json"],
        &[("KESTRA_LIMITS_EXECUTION_MAX_TASK_RUNS", "3")],
    );
    assert_eq!(run.code, 1, "{}", run.stderr);
    let e: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(e["state"]["current"], "FAILED", "{e}");
    assert!(
        run.stderr
            .contains("over the limit of 3 task runs per execution"),
        "{}",
        run.stderr
    );
    let run = run_flow(dir.path(), flow, &["--json"], &[]);
    assert_eq!(run.code, 0, "without the variable: {}", run.stderr);
}

#[test]
fn summary_of_a_success_shows_task_runs_and_outputs() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_flow(dir.path(), GREET, &["--input", "name=bob"], &[]);
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    let out = &run.stdout;
    let first = out.lines().next().unwrap();
    assert!(first.starts_with("Execution "), "{out}");
    assert!(
        first.contains("of cli.test.greet (revision 1): SUCCESS in "),
        "{out}"
    );
    let hello = out
        .lines()
        .find(|l| l.trim_start().starts_with("hello "))
        .unwrap_or_else(|| panic!("no task run line: {out}"));
    assert!(hello.contains("SUCCESS"), "{hello}");
    assert!(hello.contains("1 attempt"), "{hello}");
    assert!(hello.contains("value=\"hi bob\""), "{hello}");
    assert!(out.contains("Outputs\n  out = \"hi bob\"\n"), "{out}");
    assert!(!out.contains("error"), "{out}");
}

#[test]
fn failure_streams_the_logs_and_names_the_failing_task_and_its_message() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_flow(dir.path(), EXIT_3, &[], &[]);
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    // Logs on stderr: time, task id, level, message.
    let line = |task: &str, level: &str, message: &str| {
        run.stderr.lines().any(|l| {
            let parts: Vec<&str> = l.split_whitespace().collect();
            parts.len() >= 4
                && parts[0].len() == "12:00:00.000".len()
                && parts[1] == task
                && parts[2] == level
                && parts[3..].join(" ") == message
        })
    };
    assert!(line("before", "INFO", "starting"), "{}", run.stderr);
    assert!(line("sh", "INFO", "working"), "{}", run.stderr);
    assert!(line("sh", "ERROR", "the disk is full"), "{}", run.stderr);
    // Each line once, even though the live stream and the repository both hold it.
    assert_eq!(
        run.stderr.matches("the disk is full").count(),
        1,
        "{}",
        run.stderr
    );
    // The summary: the task-run tree and the failure.
    let out = &run.stdout;
    assert!(out.contains("(revision 1): FAILED in "), "{out}");
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("sh ") && l.contains("FAILED")),
        "{out}"
    );
    assert!(
        out.contains("error: task 'sh' failed: Command failed with exit code 3\n"),
        "{out}"
    );
}

#[test]
fn logs_reach_stderr_while_the_execution_runs() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flow.yaml");
    std::fs::write(
        &file,
        "id: slow\nnamespace: cli.test\ntasks:\n  - id: first\n    type: io.kestra.plugin.core.log.Log\n    message: early bird\n  - id: wait\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT4S\n",
    )
    .unwrap();
    let mut child = kestra()
        .args(["flow", "test"])
        .arg(&file)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    let running = child.try_wait().unwrap().is_none();
    let elapsed = start.elapsed();
    let status = child.wait().unwrap();
    assert!(line.contains("first INFO  early bird"), "{line:?}");
    assert!(
        running && elapsed < Duration::from_secs(4),
        "the line came after {elapsed:?}, when the process had ended: not streamed"
    );
    assert!(status.success());
}

#[test]
fn no_escape_codes_in_pipes_and_files() {
    let dir = tempfile::tempdir().unwrap();
    // RUST_LOG=info: the engine's own tracing logs are on stderr too.
    let run = run_flow(dir.path(), EXIT_3, &[], &[("RUST_LOG", "info")]);
    assert!(run.stderr.contains("engine started"), "{}", run.stderr);
    assert!(run.stderr.contains("the disk is full"), "{}", run.stderr);
    assert!(!run.stderr.contains('\x1b'), "{:?}", run.stderr);
    assert!(!run.stdout.contains('\x1b'), "{:?}", run.stdout);
}

#[test]
fn colour_is_forced_by_clicolor_force_and_refused_by_no_color_and_the_flag() {
    let dir = tempfile::tempdir().unwrap();
    let forced = run_flow(dir.path(), EXIT_3, &[], &[("CLICOLOR_FORCE", "1")]);
    let error_line = forced
        .stderr
        .lines()
        .find(|l| l.contains("the disk is full"))
        .unwrap();
    assert!(
        error_line.contains("\x1b[1m\x1b[31m") || error_line.contains("\x1b[31"),
        "{error_line:?}"
    );
    assert!(forced.stdout.contains('\x1b'), "{:?}", forced.stdout);

    let no_color = run_flow(
        dir.path(),
        EXIT_3,
        &[],
        &[("CLICOLOR_FORCE", "1"), ("NO_COLOR", "1")],
    );
    assert!(!no_color.stderr.contains('\x1b'), "{:?}", no_color.stderr);
    assert!(!no_color.stdout.contains('\x1b'), "{:?}", no_color.stdout);

    let flag = run_flow(
        dir.path(),
        EXIT_3,
        &["--no-color"],
        &[("CLICOLOR_FORCE", "1"), ("RUST_LOG", "info")],
    );
    assert!(flag.stderr.contains("engine started"), "{}", flag.stderr);
    assert!(!flag.stderr.contains('\x1b'), "{:?}", flag.stderr);
    assert!(!flag.stdout.contains('\x1b'), "{:?}", flag.stdout);
}

#[test]
fn json_log_format_writes_one_object_per_line() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_flow(
        dir.path(),
        EXIT_3,
        &["--log-format", "json"],
        &[("RUST_LOG", "info")],
    );
    let lines: Vec<serde_json::Value> = run
        .stderr
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{e}: {l:?}")))
        .collect();
    // The engine's tracing events ...
    assert!(
        lines
            .iter()
            .any(|l| l["fields"]["message"] == "engine started" && l["level"] == "INFO"),
        "{}",
        run.stderr
    );
    // ... and the execution's log lines, in Kestra's shape.
    assert!(
        lines.iter().any(|l| l["taskId"] == "sh"
            && l["level"] == "ERROR"
            && l["message"] == "the disk is full"),
        "{}",
        run.stderr
    );
}

/// Two files of `--flows` defining the same namespace and id: refused, naming both files, before
/// anything runs.
#[test]
fn flows_directory_with_a_duplicate_flow_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let flows = dir.path().join("flows");
    std::fs::create_dir(&flows).unwrap();
    let child = "namespace: cli.test\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n";
    std::fs::write(flows.join("a.yaml"), format!("id: child\n{child}")).unwrap();
    std::fs::write(flows.join("b.yml"), format!("id: other\n{child}")).unwrap();
    std::fs::write(flows.join("c.yaml"), format!("id: child\n{child}")).unwrap();
    let run = run_flow(
        dir.path(),
        GREET,
        &["--flows", flows.to_str().unwrap(), "--input", "name=x"],
        &[],
    );
    assert_eq!(run.code, 1, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains(&format!(
            "error: {} and {} both define flow cli.test.child",
            flows.join("a.yaml").display(),
            flows.join("c.yaml").display()
        )),
        "{}",
        run.stderr
    );
    assert!(run.stdout.is_empty(), "{}", run.stdout);
}

/// `flow test` refuses a file without a flow, like `flow validate`.
#[test]
fn empty_flow_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let run = run_flow(dir.path(), "---\n", &[], &[]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("empty document, expected a flow"),
        "{}",
        run.stderr
    );
}

/// A flow whose shell task prints a FILE input and an INT input.
const FILE_INPUT: &str = r#"id: file-input
namespace: cli.test
inputs:
  - id: data
    type: FILE
  - id: n
    type: INT
tasks:
  - id: show
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    inputFiles:
      data.csv: "{{ read(inputs.data) }}"
    commands:
      - cat data.csv
      - echo "n={{ inputs.n }}"
"#;

#[test]
fn a_local_file_reaches_a_file_input() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("local.csv");
    std::fs::write(&csv, "city,temp\nOslo,-3\n").unwrap();
    let run = run_flow(
        dir.path(),
        FILE_INPUT,
        &[
            "--input",
            &format!("data=@{}", csv.display()),
            "--input",
            "n=3",
            "--json",
        ],
        &[],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("show INFO  Oslo,-3"), "{}", run.stderr);
    let e: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let uri = e["inputs"]["data"].as_str().unwrap();
    assert!(
        uri.starts_with("kestra:///cli/test/file-input/executions/") && uri.ends_with("local.csv"),
        "{uri}"
    );
}

#[test]
fn inputs_come_from_a_yaml_file_and_input_flags_win() {
    let dir = tempfile::tempdir().unwrap();
    let sub = dir.path().join("data");
    std::fs::create_dir(&sub).unwrap();
    std::fs::write(sub.join("local.csv"), "from the inputs file\n").unwrap();
    // `@local.csv` is relative to the inputs file, wherever the command runs.
    std::fs::write(sub.join("inputs.yaml"), "data: \"@local.csv\"\nn: 7\n").unwrap();
    let inputs = sub.join("inputs.yaml");
    let run = run_flow(
        dir.path(),
        FILE_INPUT,
        &["--inputs", inputs.to_str().unwrap()],
        &[],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr.contains("show INFO  from the inputs file"),
        "{}",
        run.stderr
    );
    assert!(run.stderr.contains("show INFO  n=7"), "{}", run.stderr);

    let run = run_flow(
        dir.path(),
        FILE_INPUT,
        &["--inputs", inputs.to_str().unwrap(), "--input", "n=8"],
        &[],
    );
    assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    assert!(run.stderr.contains("show INFO  n=8"), "{}", run.stderr);
}

#[test]
fn bad_inputs_are_refused_with_the_input_and_the_problem() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.csv");
    let run = run_flow(
        dir.path(),
        FILE_INPUT,
        &["--input", &format!("data=@{}", missing.display())],
        &[],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(&format!(
            "input 'data': cannot read local file {}",
            missing.display()
        )),
        "{}",
        run.stderr
    );

    let csv = dir.path().join("ok.csv");
    std::fs::write(&csv, "x\n").unwrap();
    let run = run_flow(
        dir.path(),
        FILE_INPUT,
        &[
            "--input",
            &format!("data=@{}", csv.display()),
            "--input",
            "n=x",
        ],
        &[],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("input 'n': must be an integer (got 'x')"),
        "{}",
        run.stderr
    );

    let list = dir.path().join("list.yaml");
    std::fs::write(&list, "- n\n- 3\n").unwrap();
    let run = run_flow(
        dir.path(),
        FILE_INPUT,
        &["--inputs", list.to_str().unwrap()],
        &[],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains(&format!(
            "{}: expected a mapping of input ids to values",
            list.display()
        )),
        "{}",
        run.stderr
    );
}

const SLEEPY: &str = r#"id: sleepy
namespace: cli.test
tasks:
  - id: hi
    type: io.kestra.plugin.core.log.Log
    message: about to sleep
  - id: nap
    type: io.kestra.plugin.scripts.shell.Commands
    taskRunner:
      type: io.kestra.plugin.core.runner.Process
    commands:
      - sleep 30
"#;

/// The names in `dir` (none once the run's temporary database, storage and working directories
/// are gone).
fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn timeout_kills_the_execution_and_ends_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let start = Instant::now();
    let run = run_flow(
        dir.path(),
        SLEEPY,
        &["--timeout", "2"],
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    let elapsed = start.elapsed();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr
            .contains("did not finish within 2s (last state RUNNING); it was killed"),
        "{}",
        run.stderr
    );
    assert!(elapsed < Duration::from_millis(3_500), "{elapsed:?}");
    assert_eq!(entries(&tmp), Vec::<String>::new());
}

/// Issue 16: `--timeout 2` on a core Sleep of one hour returns within a second or so of the
/// timeout (it took 65 s once), the execution killed and its temporary files removed.
#[test]
fn timeout_stops_a_one_hour_sleep_task_within_a_second() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let start = Instant::now();
    let run = run_flow(
        dir.path(),
        "id: nap\nnamespace: cli.test\ntasks:\n  - id: hour\n    type: io.kestra.plugin.core.flow.Sleep\n    duration: PT1H\n",
        &["--timeout", "2"],
        &[("TMPDIR", tmp.to_str().unwrap())],
    );
    let elapsed = start.elapsed();
    assert_eq!(run.code, 1, "{}", run.stderr);
    assert!(
        run.stderr.contains("did not finish within 2s") && run.stderr.contains("it was killed"),
        "{}",
        run.stderr
    );
    assert!(elapsed < Duration::from_millis(3_500), "{elapsed:?}");
    assert_eq!(entries(&tmp), Vec::<String>::new());
}

#[cfg(unix)]
#[test]
fn sigterm_stops_the_run_and_removes_its_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let file = dir.path().join("flow.yaml");
    std::fs::write(&file, SLEEPY).unwrap();
    let mut child = kestra()
        .args(["flow", "test"])
        .arg(&file)
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    stderr.read_line(&mut line).unwrap();
    assert!(line.contains("about to sleep"), "{line}");
    std::thread::sleep(Duration::from_millis(500)); // the shell task is running
    assert!(
        !entries(&tmp).is_empty(),
        "the run keeps its files in TMPDIR"
    );
    let term = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let start = Instant::now();
    let status = child.wait().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(
        rest.contains("interrupted: the execution was killed"),
        "{rest}"
    );
    assert_eq!(entries(&tmp), Vec::<String>::new());
}

/// Whether process `pid` runs (a zombie does not).
#[cfg(target_os = "linux")]
fn alive(pid: &str) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|stat| {
            stat.rsplit_once(')')
                .map(|(_, rest)| rest.trim_start().starts_with('Z'))
        })
        .is_some_and(|zombie| !zombie)
}

/// Ctrl-C (SIGINT) as SIGTERM above (issue 16, item 4): the run stops within a second or two, its
/// script's whole process tree (the shell and the `sleep` it put in the background) is gone, and
/// so are its temporary database and storage.
#[cfg(target_os = "linux")]
#[test]
fn ctrl_c_kills_the_script_tree_and_removes_its_temporary_files() {
    let dir = tempfile::tempdir().unwrap();
    let tmp = dir.path().join("tmp");
    std::fs::create_dir(&tmp).unwrap();
    let marks = dir.path().join("marks");
    std::fs::create_dir(&marks).unwrap();
    let file = dir.path().join("flow.yaml");
    std::fs::write(
        &file,
        format!(
            "id: tree\nnamespace: cli.test\ntasks:\n  - id: nap\n    type: io.kestra.plugin.scripts.shell.Commands\n    taskRunner:\n      type: io.kestra.plugin.core.runner.Process\n    commands:\n      - echo $$ > {m}/shell.tmp && mv {m}/shell.tmp {m}/shell.pid\n      - sleep 60 & echo $! > {m}/child.tmp && mv {m}/child.tmp {m}/child.pid; wait\n",
            m = marks.display()
        ),
    )
    .unwrap();
    let mut child = kestra()
        .args(["flow", "test"])
        .arg(&file)
        .env("TMPDIR", &tmp)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let read = |name: &str| std::fs::read_to_string(marks.join(name)).ok();
    let deadline = Instant::now() + Duration::from_secs(30);
    let (shell, sleeper) = loop {
        if let (Some(a), Some(b)) = (read("shell.pid"), read("child.pid")) {
            break (a.trim().to_string(), b.trim().to_string());
        }
        assert!(Instant::now() < deadline, "the script did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(alive(&shell) && alive(&sleeper), "the script runs");
    assert!(
        !entries(&tmp).is_empty(),
        "the run keeps its files in TMPDIR"
    );
    let int = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(int.success());
    let start = Instant::now();
    let status = child.wait().unwrap();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    let gone = Instant::now() + Duration::from_secs(2);
    while (alive(&shell) || alive(&sleeper)) && Instant::now() < gone {
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        !alive(&shell) && !alive(&sleeper),
        "the script's shell ({shell}: {}) and its background sleep ({sleeper}: {}) are gone",
        alive(&shell),
        alive(&sleeper)
    );
    assert_eq!(entries(&tmp), Vec::<String>::new());
}

#[cfg(unix)]
#[test]
fn watch_runs_the_flow_again_when_the_file_changes() {
    use std::sync::mpsc;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flow.yaml");
    let flow = |message: &str| {
        format!(
            "id: watched\nnamespace: cli.test\ntasks:\n  - id: say\n    type: io.kestra.plugin.core.log.Log\n    message: {message}\n"
        )
    };
    std::fs::write(&file, flow("first version")).unwrap();
    let mut child = kestra()
        .args(["flow", "test", "--watch"])
        .arg(&file)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, rx) = mpsc::channel::<String>();
    for stream in [
        Box::new(child.stdout.take().unwrap()) as Box<dyn std::io::Read + Send>,
        Box::new(child.stderr.take().unwrap()),
    ] {
        let tx = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stream).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
    }
    // Stdout and stderr are read by two threads: lines of one stream may come before earlier
    // lines of the other. A wait takes the first line not taken yet that matches, whenever it
    // came.
    let mut seen: Vec<String> = Vec::new();
    let mut taken: Vec<bool> = Vec::new();
    let mut wait_for = |needle: &str| {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(i) = (0..seen.len()).find(|i| !taken[*i] && seen[*i].contains(needle)) {
                taken[i] = true;
                return;
            }
            if Instant::now() >= deadline {
                panic!("no line with {needle:?}: {seen:#?}");
            }
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(200)) {
                seen.push(line);
                taken.push(false);
            }
        }
    };
    wait_for("say INFO  first version");
    wait_for("SUCCESS in");
    wait_for("for changes (Ctrl-C to stop)");
    std::fs::write(&file, flow("second version")).unwrap();
    wait_for("changed: running it again");
    wait_for("say INFO  second version");
    wait_for("SUCCESS in");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
}

/// The README's "Run it" example: `flow test flows/hello.yaml --input name=you` prints what the
/// README shows.
#[test]
fn the_readme_example_prints_what_the_readme_shows() {
    let file = Path::new(env!("CARGO_MANIFEST_DIR")).join("flows/hello.yaml");
    let output = kestra()
        .args(["flow", "test"])
        .arg(&file)
        .args(["--input", "name=you"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains(" greet INFO  Hello, you!\n"), "{stderr}");
    assert!(
        stdout.contains("of company.team.hello (revision 1): SUCCESS in "),
        "{stdout}"
    );
    let lines: Vec<Vec<&str>> = stdout
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert!(lines.iter().any(|l| l[..] == ["Task", "runs"]), "{stdout}");
    assert!(
        lines
            .iter()
            .any(|l| l.len() == 5 && l[..4] == ["greet", "SUCCESS", "1", "attempt"]),
        "{stdout}"
    );
    assert!(
        lines.iter().any(|l| l.len() == 6
            && l[..4] == ["answer", "SUCCESS", "1", "attempt"]
            && l[5] == "value=\"YOU\""),
        "{stdout}"
    );
}

/// `kestra flow test --json F | head -c 0`: a reader that closes the pipe before the output is
/// written is not a crash (it panicked with "failed printing to stdout: Broken pipe").
#[test]
fn a_reader_that_closes_stdout_early_is_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flow.yaml");
    std::fs::write(&file, GREET).unwrap();
    for format in ["--json", "--output=text"] {
        let mut child = kestra()
            .args(["flow", "test"])
            .arg(&file)
            .args(["--input", "name=bob", format])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before anything is written
        let output = child.wait_with_output().unwrap();
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(!stderr.contains("panicked"), "{format}: {stderr}");
        assert_eq!(output.status.code(), Some(0), "{format}: {stderr}");
    }
}
