//! Bad input never panics: every prefix of a few rich flows and a few thousand seeded random
//! mutations go through `parse_flow`, which must return (`Ok` or `Err`).

#![allow(clippy::unwrap_used)]

use kestra_core::flow::{TaskRegistry, parse_flow, parse_flows};

const FLOWS: &[&str] = &[
    r#"id: fuzz
namespace: company.team
labels: {env: prod}
inputs:
  - {id: name, type: STRING, defaults: world, validator: "^[a-z]+$"}
  - {id: pick, type: SELECT, values: [a, b]}
  - {id: d, type: DURATION, min: PT1S}
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: "{{ inputs.name }}"
    timeout: PT1M
    retry: {type: exponential, interval: PT1S, maxInterval: PT10S, delayFactor: 2, maxAttempts: 3}
  - id: sw
    type: io.kestra.plugin.core.flow.Switch
    value: "{{ inputs.pick }}"
    cases:
      a: [{id: a1, type: io.kestra.plugin.core.debug.Return, format: x}]
    defaults: [{id: d1, type: io.kestra.plugin.core.flow.Sleep, duration: PT0.1S}]
  - id: dag
    type: io.kestra.plugin.core.flow.Dag
    tasks:
      - task: {id: t1, type: io.kestra.plugin.core.log.Log, message: x}
      - task: {id: t2, type: io.kestra.plugin.core.log.Log, message: y}
        dependsOn: [t1]
  - id: sub
    type: io.kestra.plugin.core.flow.Subflow
    namespace: company.team
    flowId: other
    inputs: {a: 1}
triggers:
  - id: cron
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "*/15 9-17 * * MON-FRI"
    timezone: Europe/Paris
  - id: up
    type: io.kestra.plugin.core.trigger.Flow
    preconditions:
      flows: [{namespace: company.other, flowId: x, states: [SUCCESS]}]
pluginDefaults:
  - type: io.kestra.plugin.core.log
    values: {level: INFO}
"#,
    "id: a\nnamespace: b\ntasks:\n  - id: x\n    type: io.kestra.plugin.core.flow.If\n    condition: \"{{ true }}\"\n    then:\n      - id: y\n        type: io.kestra.plugin.core.flow.ForEach\n        values: '[1,2]'\n        tasks:\n          - &anchor {id: z, type: io.kestra.plugin.core.log.Log, message: [a, b]}\n    else:\n      - *anchor\n---\nid: c\nnamespace: d\ntasks: [{id: q, type: io.kestra.plugin.core.execution.Fail}]\n",
];

/// A small deterministic PRNG (xorshift64*).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % (n.max(1) as u64)).unwrap_or(0)
    }
}

const TOKENS: &[&str] = &[
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
    "!!int ",
    "? ",
    "~",
    "null",
    "yes",
    "0755",
    "1e400",
    "-",
    "{{ x }}",
    "tasks",
    "type",
    "id",
    "PT",
    "P1M",
    "io.kestra.plugin.core.flow.Parallel",
    "0 0 31 2 *",
    "@yearly",
    "\t",
    "\u{feff}",
    "\u{0}",
    "é",
];

fn mutate(rng: &mut Rng, source: &str) -> String {
    let mut text: Vec<char> = source.chars().collect();
    for _ in 0..1 + rng.below(4) {
        let at = rng.below(text.len() + 1);
        match rng.below(4) {
            0 if !text.is_empty() => {
                let end = (at + 1 + rng.below(20)).min(text.len());
                text.drain(at.min(end)..end);
            }
            1 => {
                let token = TOKENS[rng.below(TOKENS.len())];
                for (i, c) in token.chars().enumerate() {
                    text.insert(at + i, c);
                }
            }
            2 if !text.is_empty() => {
                let i = at.min(text.len() - 1);
                text[i] = char::from(u8::try_from(rng.below(95) + 32).unwrap_or(b'x'));
            }
            _ => {
                let len = text.len();
                if len > 2 {
                    let a = rng.below(len);
                    let b = rng.below(len);
                    text.swap(a, b);
                }
            }
        }
    }
    text.into_iter().collect()
}

#[test]
fn every_prefix_returns() {
    let registry = TaskRegistry::default();
    for flow in FLOWS {
        for (i, _) in flow.char_indices() {
            let _ = parse_flow(&flow[..i], &registry);
        }
        let _ = parse_flows(flow, &registry);
    }
}

#[test]
fn random_mutations_return() {
    let registry = TaskRegistry::default();
    let mut rng = Rng(0x5EED_1234_ABCD_0001);
    for round in 0..2000 {
        let base = FLOWS[round % FLOWS.len()];
        let mutated = mutate(&mut rng, base);
        let _ = parse_flow(&mutated, &registry);
        if round % 10 == 0 {
            let _ = parse_flows(&mutated, &registry);
        }
    }
}

#[test]
fn pathological_inputs_return() {
    let registry = TaskRegistry::default();
    let deep_seq = "[".repeat(10_000);
    let deep_map = "{a: ".repeat(10_000);
    let aliases = "a: &a [x, x, x, x, x, x, x, x, x]\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a, *a]\nc: &c [*b, *b, *b, *b, *b, *b, *b, *b, *b]\nd: &d [*c, *c, *c, *c, *c, *c, *c, *c, *c]\ne: &e [*d, *d, *d, *d, *d, *d, *d, *d, *d]\nf: [*e, *e, *e, *e, *e, *e, *e, *e, *e]\n";
    let nested_tasks = {
        let mut s = String::from("id: a\nnamespace: b\ntasks:\n");
        let mut indent = String::from("  ");
        for i in 0..20 {
            s.push_str(&format!("{indent}- id: t{i}\n{indent}  type: io.kestra.plugin.core.flow.Sequential\n{indent}  tasks:\n"));
            indent.push_str("    ");
        }
        s.push_str(&format!("{indent}- id: leaf\n{indent}  type: io.kestra.plugin.core.log.Log\n{indent}  message: x\n"));
        s
    };
    for source in [
        deep_seq.as_str(),
        deep_map.as_str(),
        aliases,
        "\u{0}",
        "\u{feff}",
        "%YAML 1.2\n---\n",
    ] {
        assert!(parse_flow(source, &registry).is_err(), "{source:.40}");
    }
    assert!(parse_flow(&nested_tasks, &registry).is_ok());
}
