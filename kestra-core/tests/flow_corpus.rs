//! The flow corpus: every `corpus/valid/*.yaml` must parse without error and round-trip through
//! JSON exactly; every `corpus/invalid/*.yaml` must report exactly the errors listed in its
//! `# expect: <path> @ <line>:<col>: <message>` comment lines (a file without any fails).
//!
//! Run with `BLESS_CORPUS=1` to rewrite the `# expect:` lines of the invalid files from the actual
//! errors (then review the diff: the lines are a specification, not a snapshot).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use kestra_core::flow::{Flow, FlowError, TaskRegistry, parse_flow};

fn corpus_dir(kind: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/corpus")
        .join(kind)
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

/// One expected error, as written in a `# expect:` line.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Expected {
    path: String,
    line: usize,
    column: usize,
    message: String,
}

impl Expected {
    fn from_error(e: &FlowError) -> Self {
        Expected {
            path: e.path.clone(),
            line: e.line,
            column: e.column,
            message: e.message.clone(),
        }
    }

    fn render(&self) -> String {
        format!(
            "# expect: {} @ {}:{}: {}",
            self.path, self.line, self.column, self.message
        )
    }
}

/// Parses the `# expect:` lines of a file (`Err` names a malformed line).
fn expectations(source: &str) -> Result<Vec<Expected>, String> {
    let mut out = Vec::new();
    for line in source.lines() {
        let Some(rest) = line.trim_start().strip_prefix("# expect:") else {
            continue;
        };
        let rest = rest.trim();
        let (path, position) = if let Some(p) = rest.strip_prefix("@ ") {
            ("", p)
        } else {
            rest.split_once(" @ ")
                .ok_or_else(|| format!("malformed expect line (no ' @ '): {line}"))?
        };
        let mut parts = position.splitn(3, ':');
        let (Some(l), Some(c), Some(message)) = (parts.next(), parts.next(), parts.next()) else {
            return Err(format!(
                "malformed expect line (no line:col: message): {line}"
            ));
        };
        let line_no = l
            .trim()
            .parse()
            .map_err(|_| format!("malformed line number: {line}"))?;
        let column = c
            .trim()
            .parse()
            .map_err(|_| format!("malformed column number: {line}"))?;
        out.push(Expected {
            path: path.trim().to_string(),
            line: line_no,
            column,
            message: message.trim().to_string(),
        });
    }
    Ok(out)
}

/// Checks one valid file; returns a failure description.
fn check_valid(file: &Path, registry: &TaskRegistry) -> Option<String> {
    let name = file.display();
    let source = match fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => return Some(format!("{name}: cannot read: {e}")),
    };
    let flow = match parse_flow(&source, registry) {
        Ok(flow) => flow,
        Err(errors) => {
            let lines: Vec<String> = errors
                .errors
                .iter()
                .map(|e| format!("  {name}:{e}"))
                .collect();
            return Some(format!(
                "{name}: expected no error, got:\n{}",
                lines.join("\n")
            ));
        }
    };
    let json = match serde_json::to_value(&flow) {
        Ok(j) => j,
        Err(e) => return Some(format!("{name}: cannot serialize: {e}")),
    };
    let back: Flow = match serde_json::from_value(json.clone()) {
        Ok(f) => f,
        Err(e) => return Some(format!("{name}: JSON does not parse back: {e}")),
    };
    if back != flow {
        return Some(format!("{name}: Flow -> JSON -> Flow differs"));
    }
    match serde_json::to_value(&back) {
        Ok(again) if again == json => None,
        Ok(again) => Some(format!(
            "{name}: JSON -> Flow -> JSON differs:\n  {json}\n  {again}"
        )),
        Err(e) => Some(format!("{name}: cannot serialize again: {e}")),
    }
}

/// Checks one invalid file; returns a failure description.
fn check_invalid(file: &Path, registry: &TaskRegistry, bless: bool) -> Option<String> {
    let name = file.display();
    let source = match fs::read_to_string(file) {
        Ok(s) => s,
        Err(e) => return Some(format!("{name}: cannot read: {e}")),
    };
    let mut actual: Vec<Expected> = match parse_flow(&source, registry) {
        Ok(_) => Vec::new(),
        Err(errors) => errors.errors.iter().map(Expected::from_error).collect(),
    };
    actual.sort();
    if bless && !actual.is_empty() {
        let kept: Vec<&str> = source
            .lines()
            .filter(|l| !l.trim_start().starts_with("# expect:"))
            .collect();
        let insert_at = kept
            .iter()
            .take_while(|l| l.trim_start().starts_with('#'))
            .count();
        let mut lines: Vec<String> = kept.iter().map(|l| (*l).to_string()).collect();
        for (i, e) in actual.iter().enumerate() {
            lines.insert(insert_at + i, e.render());
        }
        let blessed = lines.join("\n") + "\n";
        // Re-check: inserting comment lines above the flow shifts the positions.
        let _ = fs::write(file, &blessed);
        return check_invalid(file, registry, false)
            .map(|f| format!("{f}\n  (re-run with BLESS_CORPUS=1 once more)"));
    }
    let mut expected = match expectations(&source) {
        Ok(e) => e,
        Err(e) => return Some(format!("{name}: {e}")),
    };
    if expected.is_empty() {
        let lines: Vec<String> = actual.iter().map(Expected::render).collect();
        return Some(format!(
            "{name}: no '# expect:' line; actual errors:\n{}",
            lines.join("\n")
        ));
    }
    expected.sort();
    if expected == actual {
        return None;
    }
    let missing: Vec<String> = expected
        .iter()
        .filter(|e| !actual.contains(e))
        .map(Expected::render)
        .collect();
    let unexpected: Vec<String> = actual
        .iter()
        .filter(|e| !expected.contains(e))
        .map(Expected::render)
        .collect();
    Some(format!(
        "{name}: errors differ\n  expected but not reported:\n    {}\n  reported but not expected:\n    {}",
        missing.join("\n    "),
        unexpected.join("\n    ")
    ))
}

fn run_valid(dir: &Path) -> (usize, Vec<String>) {
    let registry = TaskRegistry::default();
    let files = yaml_files(dir);
    let failures = files
        .iter()
        .filter_map(|f| check_valid(f, &registry))
        .collect();
    (files.len(), failures)
}

fn run_invalid(dir: &Path, bless: bool) -> (usize, Vec<String>) {
    let registry = TaskRegistry::default();
    let files = yaml_files(dir);
    let failures = files
        .iter()
        .filter_map(|f| check_invalid(f, &registry, bless))
        .collect();
    (files.len(), failures)
}

#[test]
fn valid_corpus_parses_and_round_trips() {
    let dir = corpus_dir("valid");
    let (count, failures) = run_valid(&dir);
    eprintln!("{count} valid flows in {}", dir.display());
    assert!(
        failures.is_empty(),
        "{} of {count} valid flows fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn invalid_corpus_reports_exactly_the_expected_errors() {
    let dir = corpus_dir("invalid");
    let bless = std::env::var_os("BLESS_CORPUS").is_some();
    let (count, failures) = run_invalid(&dir, bless);
    eprintln!("{count} invalid flows in {}", dir.display());
    assert!(
        failures.is_empty(),
        "{} of {count} invalid flows fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

// The runner itself, on files written here.

const VALID: &str = "id: a\nnamespace: b\ntasks:\n  - id: l\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n";

#[test]
fn runner_accepts_a_valid_flow_and_rejects_an_invalid_one_in_valid() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(dir.path().join("ok.yaml"), VALID).unwrap();
    assert_eq!(run_valid(dir.path()), (1, Vec::new()));
    fs::write(dir.path().join("bad.yaml"), "id: a\nnamespace: b\n").unwrap();
    let (count, failures) = run_valid(dir.path());
    assert_eq!(count, 2);
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].contains("bad.yaml: expected no error"),
        "{}",
        failures[0]
    );
}

#[test]
fn runner_compares_expect_lines_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let exact = "# intent: tasks is missing\n# expect: tasks @ 3:1: missing required property 'tasks'\nid: a\nnamespace: b\n";
    fs::write(dir.path().join("exact.yaml"), exact).unwrap();
    assert_eq!(run_invalid(dir.path(), false), (1, Vec::new()));

    let wrong_column = exact.replace("3:1:", "3:2:");
    fs::write(dir.path().join("exact.yaml"), wrong_column).unwrap();
    assert_eq!(run_invalid(dir.path(), false).1.len(), 1);

    let extra = format!("# expect: id @ 3:5: something else\n{exact}");
    fs::write(dir.path().join("exact.yaml"), extra).unwrap();
    assert_eq!(run_invalid(dir.path(), false).1.len(), 1);
}

#[test]
fn runner_fails_a_file_without_expect_lines() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("none.yaml"),
        "# intent: tasks is missing\nid: a\nnamespace: b\n",
    )
    .unwrap();
    let (_, failures) = run_invalid(dir.path(), false);
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].contains("no '# expect:' line"),
        "{}",
        failures[0]
    );
    assert!(
        failures[0].contains("# expect: tasks @ 2:1: missing required property 'tasks'"),
        "{}",
        failures[0]
    );
}

#[test]
fn runner_fails_an_invalid_file_that_parses() {
    let dir = tempfile::tempdir().unwrap();
    fs::write(
        dir.path().join("fine.yaml"),
        format!("# expect: tasks @ 3:1: x\n{VALID}"),
    )
    .unwrap();
    assert_eq!(run_invalid(dir.path(), false).1.len(), 1);
}

#[test]
fn expect_lines_with_an_empty_path() {
    let parsed = expectations("# expect: @ 3:8: unclosed bracket '['\n").unwrap();
    assert_eq!(
        parsed,
        vec![Expected {
            path: String::new(),
            line: 3,
            column: 8,
            message: "unclosed bracket '['".into()
        }]
    );
    assert!(expectations("# expect: nonsense\n").is_err());
}
