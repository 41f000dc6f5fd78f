//! Hostile input: flows and expressions written to crash the engine or exhaust the machine are
//! refused with a clear error (issue 16). Each case failed (crashed, hung or grew without limit)
//! before the limit it tests existed.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use kestra_core::expression::{ExpressionEngine, ExpressionError, MAX_EXPRESSION_DEPTH};
use kestra_core::flow::{TaskRegistry, parse_flow};
use serde_json::json;

/// Runs `f` on a thread with a small stack (1 MiB, half a Tokio worker thread's), as a worker thread deep in a call chain
/// might have left: a recursion without a limit overflows it and aborts the test binary.
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(1024 * 1024)
        .spawn(f)
        .unwrap()
        .join()
        .unwrap()
}

fn deep_templates(n: usize) -> Vec<(&'static str, String)> {
    vec![
        (
            "parentheses",
            format!("{{{{ {}1{} }}}}", "(".repeat(n), ")".repeat(n)),
        ),
        (
            "brackets",
            format!("{{{{ {}1{} }}}}", "[".repeat(n), "]".repeat(n)),
        ),
        ("plus chain", format!("{{{{ 1{} }}}}", " + 1".repeat(n))),
        (
            "filter chain",
            format!("{{{{ 'a'{} }}}}", " | upper".repeat(n)),
        ),
        (
            "render calls",
            format!("{{{{ {}'x'{} }}}}", "render(".repeat(n), ")".repeat(n)),
        ),
        ("unary minus", format!("{{{{ {}1 }}}}", "-".repeat(n))),
        ("attribute chain", format!("{{{{ a{} }}}}", ".b".repeat(n))),
        (
            "ternaries",
            format!("{{{{ {}1{} }}}}", "true ? ".repeat(n), " : 0".repeat(n)),
        ),
        (
            "maps",
            format!("{{{{ {}1{} }}}}", "{'a': ".repeat(n), " }".repeat(n)),
        ),
    ]
}

#[test]
fn an_expression_nested_2000_deep_is_refused_not_a_stack_overflow() {
    on_small_stack(|| {
        let engine = ExpressionEngine::default();
        for (what, template) in deep_templates(2000) {
            let err = engine.render(&template, &json!({})).unwrap_err();
            match &err {
                ExpressionError::Syntax { message, .. } => assert!(
                    message.contains("nested too deeply"),
                    "{what}: unexpected message {message}"
                ),
                other => panic!("{what}: expected a depth error, got {other:?}"),
            }
            assert!(
                engine.render_typed(&template, &json!({})).is_err(),
                "{what}"
            );
            assert!(
                engine.evaluate_condition(&template, &json!({})).is_err(),
                "{what}"
            );
        }
    });
}

#[test]
fn expressions_within_the_depth_limit_still_render() {
    let engine = ExpressionEngine::default();
    let n = 20;
    let template = format!("{{{{ {}1{} }}}}", "(".repeat(n), ")".repeat(n));
    assert_eq!(engine.render(&template, &json!({})).unwrap(), "1");
    let template = format!("{{{{ 0{} }}}}", " + 1".repeat(n));
    assert_eq!(engine.render(&template, &json!({})).unwrap(), "20");
    // just under the limit: an operator chain renders
    let n = MAX_EXPRESSION_DEPTH - 2;
    let template = format!("{{{{ 0{} }}}}", " + 1".repeat(n));
    assert_eq!(engine.render(&template, &json!({})).unwrap(), n.to_string());
}

#[test]
fn flow_validation_refuses_a_too_deep_expression_naming_its_location() {
    on_small_stack(|| {
        let deep = format!("{{{{ {}1{} }}}}", "(".repeat(2000), ")".repeat(2000));
        let source = format!(
            "id: deep\nnamespace: company.team\ntasks:\n  - id: ok\n    type: io.kestra.plugin.core.log.Log\n    message: hello\n  - id: bad\n    type: io.kestra.plugin.core.log.Log\n    message: \"{deep}\"\n"
        );
        let errors = parse_flow(&source, &TaskRegistry::default()).unwrap_err();
        assert_eq!(errors.errors.len(), 1, "{errors}");
        let error = &errors.errors[0];
        assert_eq!(error.path, "tasks[1].message");
        assert_eq!(error.line, 9);
        assert!(error.message.contains("nested too deeply"), "{error}");
    });
}

#[test]
fn a_too_deep_expression_in_a_block_scalar_is_reported_at_its_own_line() {
    let deep = format!("{{{{ {}1{} }}}}", "(".repeat(200), ")".repeat(200));
    let source = format!(
        "id: deep\nnamespace: company.team\ntasks:\n  - id: bad\n    type: io.kestra.plugin.core.log.Log\n    message: |\n      first line\n      {deep}\n"
    );
    let errors = parse_flow(&source, &TaskRegistry::default()).unwrap_err();
    let error = &errors.errors[0];
    assert_eq!(error.path, "tasks[0].message");
    assert_eq!(error.line, 8, "{error}");
}

#[test]
fn a_multibyte_character_inside_an_expression_is_an_error_not_a_panic() {
    let engine = ExpressionEngine::default();
    // the tag scanner used to slice a `str` inside `é` and panic
    for template in ["{{ é }}", "{{ 1 + é}}", "{% if é %}x{% endif %}"] {
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            engine.render(template, &json!({}))
        }));
        let result = result.unwrap_or_else(|_| panic!("`{template}` panicked"));
        assert!(result.is_err(), "{template}");
    }
    let source = "id: a\nnamespace: b\ntasks:\n  - id: t\n    type: io.kestra.plugin.core.log.Log\n    message: \"{{ é }}\"\n";
    let parsed = std::panic::catch_unwind(|| parse_flow(source, &TaskRegistry::default()));
    assert!(parsed.is_ok(), "validation panicked");
}

fn too_large(result: Result<String, ExpressionError>, what: &str) {
    match result {
        Err(ExpressionError::TooLarge { size, limit }) => assert!(size > limit, "{what}"),
        other => panic!("{what}: expected a size error, got {other:?}"),
    }
}

#[test]
fn range_near_the_64_bit_limit_is_refused_by_its_cap() {
    let engine = ExpressionEngine::default();
    for template in [
        "{{ range(-9223372036854775807, 9223372036854775807) | length }}",
        "{{ range(9223372036854775807, -9223372036854775807, -1) | length }}",
        "{{ (-9223372036854775807..9223372036854775806) | length }}",
    ] {
        let err = engine.render(template, &json!({})).unwrap_err();
        assert!(
            err.to_string().contains("range is too large"),
            "{template}: {err}"
        );
    }
    // the last items before the limit are still produced, without overflow
    assert_eq!(
        engine
            .render(
                "{{ range(9223372036854775805, 9223372036854775807) }}",
                &json!({})
            )
            .unwrap(),
        "[9223372036854775805,9223372036854775806,9223372036854775807]"
    );
    assert_eq!(
        engine
            .render(
                "{{ range(9223372036854775806, 9223372036854775807, 5) }}",
                &json!({})
            )
            .unwrap(),
        "[9223372036854775806]"
    );
}

#[test]
fn filter_outputs_count_against_the_value_size_limit() {
    let engine = ExpressionEngine::default();
    // 58 GB asked at once, before: refused before anything is built
    too_large(
        engine.render(
            "{{ range(1,100000) | join(range(1,100000) | join(',')) }}",
            &json!({}),
        ),
        "join",
    );
    too_large(
        engine.render(
            "{{ range(1,100000) | join(',') | replace({',': range(1,3000) | join('-')}) }}",
            &json!({}),
        ),
        "replace map",
    );
    too_large(
        engine.render(
            "{{ range(1,100000) | join(',') | replace(',', range(1,3000) | join('-')) }}",
            &json!({}),
        ),
        "replace",
    );
    too_large(
        engine.render(
            "{{ range(1,100000) | join('\n') | indent(1000) }}",
            &json!({}),
        ),
        "indent",
    );
    // ordinary sizes still work
    assert_eq!(
        engine
            .render(
                "{{ range(1,3) | join('-') | replace('-', '+') }}",
                &json!({})
            )
            .unwrap(),
        "1+2+3"
    );
}

#[test]
fn the_value_size_limit_is_configurable() {
    use kestra_core::expression::ExpressionOptions;
    let engine = ExpressionEngine::new(ExpressionOptions {
        max_value_size: 10,
        ..ExpressionOptions::default()
    });
    too_large(
        engine.render("{{ range(1,20) | join(',') }}", &json!({})),
        "join",
    );
    too_large(
        engine.render("{{ 'abcdefghijkl' | upper }}", &json!({})),
        "upper",
    );
    assert_eq!(
        engine.render("{{ 'abc' | upper }}", &json!({})).unwrap(),
        "ABC"
    );
}

/// Operators and printing build values too: with a value limit of 1,000 bytes, a string grown by
/// `~`, `+` or `*`, and a template printing more than the limit in a loop, are refused; within
/// the limit they still work.
#[test]
fn operators_and_printed_output_count_against_the_value_size_limit() {
    use kestra_core::expression::ExpressionOptions;
    let engine = ExpressionEngine::new(ExpressionOptions {
        max_value_size: 1000,
        ..ExpressionOptions::default()
    });
    for (what, template) in [
        ("~", "{{ (('a' * 600) ~ ('b' * 600)) | length }}"),
        ("+", "{{ (('a' * 600) + ('b' * 600)) | length }}"),
        ("*", "{{ ('a' * 2000) | length }}"),
        (
            "~ doubling",
            "{% set x = 'a' * 100 %}{% set x = x ~ x %}{% set x = x ~ x %}{% set x = x ~ x %}{% set x = x ~ x %}{{ x | length }}",
        ),
        (
            "printed in a loop",
            "{% for i in range(1, 100) %}{{ 'a' * 100 }}{% endfor %}",
        ),
    ] {
        too_large(engine.render(template, &json!({})), what);
    }
    assert_eq!(
        engine
            .render("{{ (('a' * 300) ~ ('b' * 300)) | length }}", &json!({}))
            .unwrap(),
        "600"
    );
    assert_eq!(
        engine
            .render(
                "{% for i in range(1, 5) %}{{ 'a' * 100 }}{% endfor %}",
                &json!({})
            )
            .unwrap()
            .len(),
        500
    );
}

/// xorshift: a reproducible stream of pseudo-random numbers (no dependency).
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

const EXPRESSION_TOKENS: &[&str] = &[
    "{{",
    "}}",
    "{%",
    "%}",
    "{#",
    "#}",
    "(",
    ")",
    "[",
    "]",
    "{",
    "}",
    ",",
    ":",
    "?",
    "??",
    "???",
    " ~ ",
    " + ",
    " - ",
    " * ",
    " / ",
    " // ",
    " % ",
    " ** ",
    "..",
    " | ",
    ".",
    "'",
    "\"",
    "#{",
    "é",
    "\u{1F600}",
    "\\",
    "-",
    " is ",
    " not ",
    " and ",
    " or ",
    " in ",
    " contains ",
    "defined",
    "null",
    "empty",
    "upper",
    "join(','):",
    "replace('a','bb')",
    "range(1, 10)",
    "render(",
    "renderOnce(",
    "json",
    "toJson",
    "indent(4)",
    "x",
    "a.b",
    "inputs",
    "1",
    "0",
    "-1",
    "9223372036854775807",
    "1.5e308",
    "true",
    "none",
    " if ",
    " else ",
    " for ",
    " endfor ",
    " set ",
    "=",
    "raw",
    "endraw",
    "loop.index",
    "\n",
];

/// Random token soups and mutations of real templates, rendered: every one returns (`Ok` or a
/// clear `Err`) - no panic, no stack overflow, no hang. Bounded to a few seconds.
#[test]
fn random_expressions_return() {
    let seeds = [
        "{{ inputs.name | upper }} and {{ range(1, 3) | join(',') }}",
        "{% for i in range(1, 3) %}{{ i ~ '-' }}{% endfor %}",
        "{{ x ?? 'd' }} {{ a.b is defined ? a.b : 'no' }}",
        "{{ \"#{x} y\" | replace('y', 'z') }}",
        "{{ {'a': [1, 2, {'b': x}]} | toJson }}",
    ];
    let ctx = json!({"x": "v", "a": {"b": 1}, "inputs": {"name": "n"}});
    on_small_stack(move || {
        let engine = ExpressionEngine::default();
        let mut rng = Rng(0x0BAD_5EED_1616_0001);
        let started = std::time::Instant::now();
        for round in 0..3000 {
            let template = if round % 2 == 0 {
                let mut s = String::new();
                for _ in 0..1 + rng.below(30) {
                    s.push_str(EXPRESSION_TOKENS[rng.below(EXPRESSION_TOKENS.len())]);
                }
                s
            } else {
                let mut chars: Vec<char> = seeds[rng.below(seeds.len())].chars().collect();
                for _ in 0..1 + rng.below(4) {
                    let at = rng.below(chars.len() + 1);
                    if rng.below(2) == 0 && at < chars.len() {
                        chars.remove(at);
                    } else {
                        let token = EXPRESSION_TOKENS[rng.below(EXPRESSION_TOKENS.len())];
                        for (i, c) in token.chars().enumerate() {
                            chars.insert(at + i, c);
                        }
                    }
                }
                chars.into_iter().collect()
            };
            let _ = engine.render(&template, &ctx);
            let _ = engine.render_typed(&template, &ctx);
            let _ = kestra_core::expression::check_template_depth(&template);
            if started.elapsed() > std::time::Duration::from_secs(10) {
                break;
            }
        }
    });
}
