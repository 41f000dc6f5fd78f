//! Property-based fuzzing (issue 16, item 6: "a fuzz target for the flow parser and the expression
//! engine that runs for a bounded time in CI"): `proptest` generates flow sources (edits of rich
//! flows, and raw text over YAML's syntax) and templates (sequences of Pebble's tokens, filters and
//! functions), and checks that the parser and the engine always *return*: `Ok`, or an error that says
//! something. A panic, a stack overflow or a hang fails the run, and proptest shrinks the input to a
//! small case to report. Bounded: a fixed number of cases per property (`KESTRA_FUZZ_CASES`,
//! default 1,000), no regression files written. `flow_fuzz.rs` keeps the seeded mutation loops and
//! the pathological inputs.

use kestra_core::expression::{ExpressionEngine, ExpressionOptions};
use kestra_core::flow::{TaskRegistry, parse_flow, parse_flows};
use proptest::prelude::*;
use proptest::test_runner::Config;
use serde_json::json;

fn config() -> Config {
    let cases = std::env::var("KESTRA_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    Config {
        cases,
        failure_persistence: None,
        ..Config::default()
    }
}

const FLOW: &str = r#"id: fuzz
namespace: company.team
labels: {env: prod}
inputs:
  - {id: name, type: STRING, defaults: world}
  - {id: pick, type: SELECT, values: [a, b]}
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: "{{ inputs.name }}"
    retry: {type: constant, interval: PT1S, maxAttempts: 3}
  - id: each
    type: io.kestra.plugin.core.flow.ForEach
    values: [1, 2, 3]
    concurrencyLimit: 0
    tasks:
      - id: sw
        type: io.kestra.plugin.core.flow.Switch
        value: "{{ taskrun.value }}"
        cases:
          "1": [{id: one, type: io.kestra.plugin.core.debug.Return, format: x}]
        defaults: [{id: other, type: io.kestra.plugin.core.flow.Sleep, duration: PT0.1S}]
errors:
  - id: failed
    type: io.kestra.plugin.core.log.Log
    message: "{{ errorLogs() }}"
triggers:
  - id: cron
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "*/15 9-17 * * MON-FRI"
"#;

/// Pieces of YAML and of flows that mutations insert.
const YAML_TOKENS: &[&str] = &[
    ":",
    "- ",
    "[",
    "]",
    "{",
    "}",
    "\n",
    "  ",
    "'",
    "\"",
    "&a ",
    "*a",
    "<<: *a",
    "---",
    "#",
    "|",
    ">",
    "!!str ",
    "!!binary ",
    "? ",
    "~",
    "null",
    "0x1F",
    "1e400",
    "-.inf",
    "{{ x }}",
    "tasks",
    "type",
    "id",
    "PT",
    "P1M",
    "io.kestra.plugin.core.flow.Parallel",
    "io.kestra.plugin.core.flow.Dag",
    "dependsOn",
    "0 0 31 2 *",
    "\t",
    "\u{feff}",
    "\u{0}",
    "é",
    "\u{10FFFF}",
];

/// One edit of a flow source: delete a span, insert a token, or replace a character.
#[derive(Debug, Clone)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, token: &'static str },
    Replace { at: usize, with: char },
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        (any::<usize>(), 1usize..40).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), prop::sample::select(YAML_TOKENS))
            .prop_map(|(at, token)| Edit::Insert { at, token }),
        (any::<usize>(), any::<char>()).prop_map(|(at, with)| Edit::Replace { at, with }),
    ]
}

fn apply(source: &str, edits: &[Edit]) -> String {
    let mut text: Vec<char> = source.chars().collect();
    for edit in edits {
        let at = |i: usize, len: usize| if len == 0 { 0 } else { i % len };
        match edit {
            Edit::Delete { at: i, len } if !text.is_empty() => {
                let start = at(*i, text.len());
                let end = (start + len).min(text.len());
                text.drain(start..end);
            }
            Edit::Insert { at: i, token } => {
                let start = at(*i, text.len() + 1);
                text.splice(start..start, token.chars());
            }
            Edit::Replace { at: i, with } if !text.is_empty() => {
                let i = at(*i, text.len());
                text[i] = *with;
            }
            _ => {}
        }
    }
    text.into_iter().collect()
}

/// Pieces of Pebble templates: delimiters, tags, literals, operators, filters and functions
/// (including the ones that build big values: `range`, `repeat`, `join`, `replace`).
const EXPRESSION_TOKENS: &[&str] = &[
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    " ",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    ".",
    "|",
    "+",
    "-",
    "*",
    "/",
    "%",
    "~",
    "==",
    "!=",
    "<",
    ">=",
    " and ",
    " or ",
    " not ",
    " is ",
    " in ",
    "?",
    "??",
    "..",
    "'a'",
    "\"b\"",
    "'",
    "0",
    "1",
    "-1",
    "9223372036854775807",
    "1e308",
    "3.5",
    "true",
    "false",
    "null",
    "inputs",
    "inputs.list",
    "inputs.map",
    "inputs.name",
    "outputs",
    "vars",
    "x",
    "loop.index",
    " if ",
    "if ",
    "endif",
    "else",
    "elseif ",
    "for x in ",
    "endfor",
    "set y = ",
    "macro m()",
    "endmacro",
    "filter upper",
    "endfilter",
    "raw",
    "endraw",
    "upper",
    "lower",
    "join(',')",
    "replace({'a': 'bb'})",
    "repeat(3)",
    "length",
    "keys",
    "first",
    "last",
    "reverse",
    "sort",
    "split(',')",
    "slice(1, 3)",
    "default('d')",
    "json",
    "toJson",
    "jq('.')",
    "date('yyyy-MM-dd')",
    "number",
    "abs",
    "title",
    "trim",
    "abbreviate(3)",
    "range(",
    "range(1, 5)",
    "range(0, 1000000000)",
    "now()",
    "render(",
    "json('[1,2]')",
    "fromJson('{}')",
    "max(1, 2)",
    "min(",
    "randomInt(1, 5)",
    "uuid()",
    "printContext()",
    "read(",
    "secret('s')",
    "kv('k')",
    "fileURI('f')",
    "errorLogs()",
    "block('b')",
    "\n",
];

fn template() -> impl Strategy<Value = String> {
    prop::collection::vec(prop::sample::select(EXPRESSION_TOKENS), 0..32).prop_map(|t| t.concat())
}

fn context() -> serde_json::Value {
    json!({
        "flow": {"id": "fuzz", "namespace": "company.team"},
        "inputs": {"name": "World", "list": [3, 1, 2], "map": {"a": 1, "b": "x"}},
        "outputs": {"t1": {"value": "ok"}},
        "vars": {"s": "a,b,c"},
    })
}

proptest! {
    #![proptest_config(config())]

    /// Edits of a rich flow: the parser returns, and an error names something.
    #[test]
    fn edited_flows_parse_or_say_why(edits in prop::collection::vec(edit(), 1..8)) {
        let registry = TaskRegistry::default();
        let source = apply(FLOW, &edits);
        if let Err(e) = parse_flow(&source, &registry) {
            prop_assert!(!e.to_string().trim().is_empty());
        }
        let _ = parse_flows(&source, &registry);
    }

    /// Raw text over YAML's syntax and flow words: the parser returns.
    #[test]
    fn token_soup_parses_or_says_why(
        tokens in prop::collection::vec(prop::sample::select(YAML_TOKENS), 0..64)
    ) {
        let registry = TaskRegistry::default();
        let source = format!("id: a\nnamespace: b\n{}", tokens.concat());
        if let Err(e) = parse_flow(&source, &registry) {
            prop_assert!(!e.to_string().trim().is_empty());
        }
    }

    /// Any template: rendering returns (a value, or an error that says something) within the
    /// engine's fuel, as text, typed, and as a condition.
    #[test]
    fn templates_render_or_say_why(template in template()) {
        let engine = ExpressionEngine::new(ExpressionOptions::default());
        let ctx = context();
        if let Err(e) = engine.render(&template, &ctx) {
            prop_assert!(!e.to_string().trim().is_empty());
        }
        let _ = engine.render_typed(&template, &ctx);
        let _ = engine.evaluate_condition(&template, &ctx);
    }

    /// Any text at all (unicode, control characters) as a template: rendering returns.
    #[test]
    fn arbitrary_text_renders_or_says_why(text in any::<String>()) {
        let engine = ExpressionEngine::new(ExpressionOptions::default());
        let _ = engine.render(&text, &context());
        let _ = engine.render(&format!("{{{{ {text} }}}}"), &context());
    }
}
