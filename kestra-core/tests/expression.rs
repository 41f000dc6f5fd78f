//! Kestra's Pebble expressions, through the public API of `kestra_core::expression`.

// A failed `unwrap_err` is a failed assertion here.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;

use kestra_core::expression::{
    ExpressionEngine, ExpressionError, ExpressionHost, ExpressionOptions,
};
use serde_json::{Value, json};

fn engine() -> ExpressionEngine {
    ExpressionEngine::new(ExpressionOptions::default())
}

fn ctx() -> Value {
    json!({
        "flow": {"id": "hello", "namespace": "company.team"},
        "inputs": {"name": "World", "list": [3, 1, 2], "map": {"a": 1, "b": "x"}, "nothing": null, "n": -4,
                   "text": "Hello Kestra World", "date": "2024-03-05T10:15:30Z"},
        "outputs": {"t1": {"value": "ok", "vars": {"k": "v"}}},
        "vars": {"s": "a,b,c"},
    })
}

fn r(t: &str) -> String {
    match engine().render(t, &ctx()) {
        Ok(s) => s,
        Err(e) => format!("ERROR: {e}"),
    }
}

fn typed(t: &str) -> Value {
    engine()
        .render_typed(t, &ctx())
        .unwrap_or_else(|e| json!(format!("ERROR: {e}")))
}

#[test]
fn plain_text_and_variables() {
    assert_eq!(r("no expression"), "no expression");
    assert_eq!(r("Hello {{ inputs.name }}!"), "Hello World!");
    assert_eq!(r("{{ inputs.map }}"), r#"{"a":1,"b":"x"}"#);
    assert_eq!(r("{{ inputs.list }}"), "[3,1,2]");
    assert_eq!(r("{{ inputs.nothing }}"), "");
    assert_eq!(r("{{ true }}"), "true");
    assert_eq!(r("{{ 1.5 }}"), "1.5");
    assert_eq!(r("{{ inputs['name'] }}"), "World");
    assert_eq!(r("{{ inputs.list[0] }}"), "3");
    assert_eq!(r("a\n{{ inputs.name }}\n"), "a\nWorld\n");
}

#[test]
fn operators() {
    assert_eq!(r("{{ 'a' ~ 'b' ~ 1 }}"), "ab1");
    assert_eq!(r("{{ inputs.list contains 2 }}"), "true");
    assert_eq!(r("{{ inputs.list contains 7 }}"), "false");
    assert_eq!(r("{{ 'hello' contains 'ell' }}"), "true");
    assert_eq!(r("{{ inputs.map contains 'a' }}"), "true");
    assert_eq!(r("{{ inputs.n > 0 ? 'pos' : 'neg' }}"), "neg");
    assert_eq!(r("{{ true ? (false ? 1 : 2) : 3 }}"), "2");
    assert_eq!(r("{{ inputs.missing ?? 'dflt' }}"), "dflt");
    assert_eq!(r("{{ inputs.nothing ?? 'dflt' }}"), "dflt");
    assert_eq!(r("{{ inputs.name ?? 'dflt' }}"), "World");
    assert_eq!(r("{{ outputs.nope.deep.value ?? 'chain' }}"), "chain");
    assert_eq!(r("{{ inputs.a ?? inputs.b ?? 'last' }}"), "last");
    assert_eq!(r("{{ inputs.missing ??? 'u' }}"), "u");
    assert_eq!(r("{{ inputs.nothing ??? 'u' }}"), "");
    assert_eq!(r("{{ 1 + 2 * 3 }}"), "7");
    assert_eq!(r("{{ 10 / 4 }}"), "2");
    assert_eq!(r("{{ 10.0 / 4 }}"), "2.5");
    assert_eq!(r("{{ 7 % 3 }}"), "1");
    assert_eq!(r("{{ not (1 == 2) }}"), "true");
    assert_eq!(r("{{ 1 == 1 and 2 != 3 or false }}"), "true");
    assert_eq!(r("{{ 1 equals 1 }}"), "true");
    assert_eq!(r("{{ null }}"), "");
    assert_eq!(r("{{ 1..3 }}"), "[1,2,3]");
    assert_eq!(r("{{ \"Hi #{inputs.name}\" }}"), "Hi World");
    assert_eq!(r("{{ 'a ?? b' }}"), "a ?? b");
}

#[test]
fn tests_is() {
    assert_eq!(r("{{ inputs.name is defined }}"), "true");
    assert_eq!(r("{{ inputs.missing is defined }}"), "false");
    assert_eq!(r("{{ outputs.missing.x is defined }}"), "false");
    assert_eq!(r("{{ inputs.missing is not defined }}"), "true");
    assert_eq!(r("{{ inputs.nothing is null }}"), "true");
    assert_eq!(r("{{ inputs.name is not null }}"), "true");
    assert_eq!(r("{{ '' is empty }}"), "true");
    assert_eq!(r("{{ inputs.list is empty }}"), "false");
    assert_eq!(r("{{ 2 is even }}"), "true");
    assert_eq!(r("{{ 3 is odd }}"), "true");
    assert_eq!(r("{{ inputs.list is iterable }}"), "true");
    assert_eq!(r("{{ inputs.map is map }}"), "true");
    assert_eq!(r("{{ inputs.list is map }}"), "false");
    assert_eq!(r("{{ '{\"a\":1}' is json }}"), "true");
    assert_eq!(r("{{ 'nope' is json }}"), "false");
}

#[test]
fn tags() {
    assert_eq!(
        r("{% raw %}{{ not rendered }}{% endraw %}"),
        "{{ not rendered }}"
    );
    assert_eq!(r("{% set x = 2 %}{{ x * 2 }}"), "4");
    assert_eq!(
        r("{% if inputs.n > 0 %}pos{% elseif inputs.n == 0 %}zero{% else %}neg{% endif %}"),
        "neg"
    );
    assert_eq!(
        r(
            "{% for x in inputs.list %}{{ loop.index }}:{{ x }}{% if not loop.last %},{% endif %}{% endfor %}"
        ),
        "0:3,1:1,2:2"
    );
    assert_eq!(
        r(
            "{% for x in inputs.list %}{{ loop.first }}{{ loop.length }}{{ loop.revindex }} {% endfor %}"
        ),
        "true32 false31 false30 "
    );
    assert_eq!(r("{% for x in [] %}a{% else %}empty{% endfor %}"), "empty");
    assert_eq!(
        r("{% for e in inputs.map %}{{ e.key }}={{ e.value }};{% endfor %}"),
        "a=1;b=x;"
    );
    assert_eq!(
        r("{% macro hi(n) %}Hi {{ n }}{% endmacro %}{{ hi('Bob') }}"),
        "Hi Bob"
    );
    assert_eq!(r("{% filter upper %}abc{% endfilter %}"), "ABC");
    assert_eq!(r("{# comment #}x"), "x");
    assert_eq!(r("{% for i in 1..3 %}{{ i }}{% endfor %}"), "123");
}

#[test]
fn strict_undefined_names_the_variable() {
    let err = engine().render("{{ inputs.missing }}", &ctx()).unwrap_err();
    assert!(
        matches!(&err, ExpressionError::Undefined { name, .. } if name.contains("inputs.missing")),
        "{err}"
    );
    let err = engine().render("{{ nope }}", &ctx()).unwrap_err();
    assert!(err.to_string().contains("nope"), "{err}");
    // Kestra's wording (VariableRenderer.properPebbleException).
    let err = engine()
        .render("value is {{ nothing_here }}", &ctx())
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "Missing variable: 'nothing_here' on 'value is {{ nothing_here }}' at line 1"
    );
    let err = engine()
        .render("a\nb {{ nothing_here }}", &ctx())
        .unwrap_err();
    assert!(err.to_string().ends_with("at line 2"), "{err}");
    let err = engine()
        .render("{{ outputs.t2.value }}", &ctx())
        .unwrap_err();
    assert!(matches!(err, ExpressionError::Undefined { .. }), "{err}");
    assert_eq!(r("{{ inputs.missing | default('d') }}"), "d");
    assert_eq!(r("{{ outputs.x.y | default('d') }}"), "d");
    assert!(
        engine()
            .render("{% if nope %}x{% endif %}", &ctx())
            .is_err()
    );
}

#[test]
fn syntax_errors_and_forbidden_tags() {
    let err = engine().render("{{ a ? }}", &ctx()).unwrap_err();
    assert!(matches!(err, ExpressionError::Syntax { .. }), "{err}");
    let err = engine()
        .render("line1\n{{ 'unterminated }}", &ctx())
        .unwrap_err();
    assert!(
        matches!(err, ExpressionError::Syntax { line: 2, .. }),
        "{err}"
    );
    let err = engine().render("{% include 'x' %}", &ctx()).unwrap_err();
    assert!(err.to_string().contains("include"), "{err}");
    assert!(engine().render("{% import 'x' as y %}", &ctx()).is_err());
    assert!(engine().render("{% if true %}unclosed", &ctx()).is_err());
}

#[test]
fn string_filters() {
    assert_eq!(r("{{ 'Hello World' | abbreviate(8) }}"), "Hello...");
    assert_eq!(r("{{ 'short' | abbreviate(10) }}"), "short");
    assert_eq!(r("{{ inputs.n | abs }}"), "4");
    assert_eq!(r("{{ 'hello wORLD' | capitalize }}"), "Hello wORLD");
    assert_eq!(r("{{ 'hello wORLD' | title }}"), "Hello World");
    assert_eq!(r("{{ 'abc' | upper }}"), "ABC");
    assert_eq!(r("{{ 'ABC' | lower }}"), "abc");
    assert_eq!(r("{{ '  x  ' | trim }}"), "x");
    assert_eq!(r("{{ inputs.nothing | default('d') }}"), "d");
    assert_eq!(r("{{ inputs.name | default('d') }}"), "World");
    assert_eq!(r("{{ 'abc' | length }}"), "3");
    assert_eq!(r("{{ vars.s | split(',') }}"), r#"["a","b","c"]"#);
    assert_eq!(r("{{ 'a.b.c' | split('.') | join('-') }}"), "a-b-c");
    assert_eq!(r("{{ 'hello' | replace({'l': 'L', 'o': '0'}) }}"), "heLL0");
    assert_eq!(r("{{ 'hello' | slice(1, 3) }}"), "el");
    assert_eq!(r("{{ 'abc' | reverse }}"), "cba");
    assert_eq!(r("{{ 'Hello World!' | slugify }}"), "hello-world");
    assert_eq!(r("{{ 'a.b.c' | substringBefore('.') }}"), "a");
    assert_eq!(r("{{ 'a.b.c' | substringAfter('.') }}"), "b.c");
    assert_eq!(r("{{ 'a.b.c' | substringBeforeLast('.') }}"), "a.b");
    assert_eq!(r("{{ 'a.b.c' | substringAfterLast('.') }}"), "c");
    assert_eq!(r("{{ 'abc' | substringAfter('x') }}"), "");
    assert_eq!(r("{{ 'abc' | startsWith('ab') }}"), "true");
    assert_eq!(r("{{ 'abc' | endsWith('ab') }}"), "false");
    assert_eq!(r(r#"{{ "it's" | escapeChar('single') }}"#), r"it\'s");
    assert_eq!(
        r(r#"{{ 'say "hi"' | escapeChar('double') }}"#),
        r#"say \"hi\""#
    );
    assert_eq!(r(r#"{{ "it's" | escapeChar('shell') }}"#), r"it'\''s");
    assert_eq!(r("{{ 'a b&c' | urlencode }}"), "a+b%26c");
    assert_eq!(r("{{ 'a+b%26c' | urldecode }}"), "a b&c");
    assert_eq!(r("{{ 'hello' | base64encode }}"), "aGVsbG8=");
    assert_eq!(r("{{ 'aGVsbG8=' | base64decode }}"), "hello");
    assert_eq!(
        r("{{ 'abc' | sha1 }}"),
        "a9993e364706816aba3e25717850c26c9cd0d89d"
    );
    assert_eq!(
        r("{{ 'abc' | sha256 }}"),
        "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    );
    assert!(r("{{ 'abc' | sha512 }}").starts_with("ddaf35a193617aba"));
    assert_eq!(r("{{ 'abc' | md5 }}"), "900150983cd24fb0d6963f7d28e17f72");
    assert_eq!(r("{{ 'a\nb' | indent(2) }}"), "a\n  b");
    assert_eq!(r("{{ 'a\nb' | nindent(2) }}"), "\n  a\n  b");
    assert_eq!(r("{{ 'x' | className }}"), "java.lang.String");
    assert_eq!(r("{{ 'Hello' ~ ' ' ~ 'you' | upper }}"), "HELLO YOU");
}

#[test]
fn collection_filters() {
    assert_eq!(r("{{ inputs.list | first }}"), "3");
    assert_eq!(r("{{ inputs.list | last }}"), "2");
    assert_eq!(r("{{ inputs.list | length }}"), "3");
    assert_eq!(r("{{ inputs.list | join(', ') }}"), "3, 1, 2");
    assert_eq!(r("{{ inputs.list | sort }}"), "[1,2,3]");
    assert_eq!(r("{{ inputs.list | rsort }}"), "[3,2,1]");
    assert_eq!(r("{{ inputs.list | reverse }}"), "[2,1,3]");
    assert_eq!(r("{{ inputs.list | slice(1, 3) }}"), "[1,2]");
    assert_eq!(r("{{ inputs.list | merge([4]) }}"), "[3,1,2,4]");
    assert_eq!(
        r("{{ inputs.map | merge({'c': 3}) }}"),
        r#"{"a":1,"b":"x","c":3}"#
    );
    assert_eq!(r("{{ [1, 2, 1, 3, 2] | distinct }}"), "[1,2,3]");
    assert_eq!(r("{{ [1, 2, 3, 4, 5] | chunk(2) }}"), "[[1,2],[3,4],[5]]");
    assert_eq!(r("{{ inputs.map | keys }}"), r#"["a","b"]"#);
    assert_eq!(r("{{ inputs.map | values }}"), r#"[1,"x"]"#);
    assert_eq!(r("{{ [[1, 2], [3], 4] | flatten }}"), "[1,2,3,4]");
    assert_eq!(r("{{ inputs.map | length }}"), "2");
}

#[test]
fn number_filters() {
    assert_eq!(r("{{ '12' | number + 1 }}"), "13");
    assert_eq!(r("{{ '1.5' | number }}"), "1.5");
    assert_eq!(r("{{ '7' | number('FLOAT') }}"), "7.0");
    assert!(r("{{ 'abc' | number }}").starts_with("ERROR"));
    assert_eq!(r("{{ 1234.567 | numberFormat('#,##0.00') }}"), "1,234.57");
    assert_eq!(r("{{ 3.14159 | numberFormat('#.##') }}"), "3.14");
    assert_eq!(r("{{ 5 | numberFormat('0.00') }}"), "5.00");
}

#[test]
fn date_filters() {
    assert_eq!(r("{{ inputs.date | date('yyyy-MM-dd') }}"), "2024-03-05");
    assert_eq!(
        r("{{ inputs.date | date('yyyy-MM-dd HH:mm', timeZone='Europe/Paris') }}"),
        "2024-03-05 11:15"
    );
    assert_eq!(r("{{ inputs.date | date }}"), "2024-03-05T10:15:30.000000Z");
    assert_eq!(
        r("{{ inputs.date | date('iso_sec') }}"),
        "2024-03-05T10:15:30Z"
    );
    assert_eq!(
        r("{{ inputs.date | date('sql_seq') }}"),
        "2024-03-05 10:15:30"
    );
    assert_eq!(r("{{ inputs.date | date('EEE, MMM d') }}"), "Tue, Mar 5");
    assert_eq!(
        r("{{ inputs.date | date(\"yyyy-MM-dd'T'HH:mm:ss.SSSXXX\") }}"),
        "2024-03-05T10:15:30.000Z"
    );
    assert_eq!(
        r("{{ '05/03/2024 10:00' | date('yyyy-MM-dd', existingFormat='dd/MM/yyyy HH:mm') }}"),
        "2024-03-05"
    );
    assert_eq!(r("{{ 0 | date('yyyy-MM-dd') }}"), "1970-01-01");
    assert_eq!(
        r("{{ inputs.date | dateAdd(1, 'DAYS') | date('yyyy-MM-dd') }}"),
        "2024-03-06"
    );
    assert_eq!(
        r("{{ inputs.date | dateAdd(-2, 'HOURS') | date('HH:mm') }}"),
        "08:15"
    );
    assert_eq!(
        r("{{ inputs.date | dateAdd(1, 'MONTHS') | date('yyyy-MM-dd') }}"),
        "2024-04-05"
    );
    assert_eq!(r("{{ inputs.date | timestamp }}"), "1709633730");
    assert_eq!(r("{{ inputs.date | timestampMilli }}"), "1709633730000");
    assert_eq!(r("{{ inputs.date | timestampMicro }}"), "1709633730000000");
    assert_eq!(
        r("{{ inputs.date | timestampNano }}"),
        "1709633730000000000"
    );
    assert!(r("{{ 'garbage' | date }}").starts_with("ERROR"));
}

#[test]
fn serialization_filters() {
    assert_eq!(r("{{ inputs.map | toJson }}"), r#"{"a":1,"b":"x"}"#);
    assert_eq!(r("{{ 'x' | json }}"), r#""x""#);
    assert_eq!(r("{{ inputs.map | toIon }}"), r#"{a:1,b:"x"}"#);
    assert_eq!(r("{{ inputs.map | yaml }}").trim(), "a: 1\nb: x");
    assert_eq!(typed("{{ inputs.map | jq('.a') }}"), json!([1]));
    assert_eq!(
        typed("{{ inputs.list | jq('.[] | . * 2') }}"),
        json!([6, 2, 4])
    );
    assert_eq!(r("{{ inputs.map | jq('.b') | first }}"), "x");
    assert!(
        r("{{ inputs.map | jq('env') }}").starts_with("ERROR"),
        "jq must not read the environment"
    );
}

#[test]
fn functions_pure() {
    assert_eq!(
        typed("{{ fromJson('{\"a\": [1, 2]}') }}"),
        json!({"a": [1, 2]})
    );
    assert_eq!(typed("{{ json('[1]') }}"), json!([1]));
    assert_eq!(typed("{{ fromIon('{\"a\": 1}') }}"), json!({"a": 1}));
    assert_eq!(
        typed("{{ yaml('a: 1\nb: [x]') }}"),
        json!({"a": 1, "b": ["x"]})
    );
    assert_eq!(typed("{{ range(1, 5, 2) }}"), json!([1, 3, 5]));
    assert_eq!(r("{{ max(3, 7, 1) }}"), "7");
    assert_eq!(r("{{ min(3, 7, 1) }}"), "1");
    assert_eq!(r("{{ uuid() | length }}"), "36");
    let id = r("{{ id() }}");
    assert_eq!(id.len(), 22);
    assert!(id.chars().all(|c| c.is_ascii_alphanumeric()));
    let n: i64 = r("{{ randomInt(1, 3) }}").parse().unwrap_or(-1);
    assert!((1..3).contains(&n), "{n}");
    let port: u32 = r("{{ randomPort() }}").parse().unwrap_or(0);
    assert!(port > 0);
    let now = r("{{ now() }}");
    assert!(now.ends_with('Z') && now.len() == 27, "{now}");
    assert!(r("{{ now(timeZone='Asia/Tokyo') }}").ends_with("+09:00"));
    assert!(r("{{ printContext() }}").contains("company.team"));
}

#[test]
fn render_functions_and_depth() {
    let c = json!({"a": "{{ b }}", "b": "{{ c }}", "c": "deep", "self": "{{ render(self) }}",
                   "loop1": "{{ render(loop2) }}", "loop2": "{{ render(loop1) }}"});
    let e = engine();
    assert_eq!(
        e.render("{{ render(a) }}", &c).ok().as_deref(),
        Some("deep")
    );
    assert_eq!(
        e.render("{{ renderOnce(a) }}", &c).ok().as_deref(),
        Some("{{ c }}")
    );
    assert_eq!(
        e.render("{{ render('plain') }}", &c).ok().as_deref(),
        Some("plain")
    );
    let err = e.render("{{ render(loop1) }}", &c).unwrap_err();
    assert_eq!(err, ExpressionError::DepthExceeded { limit: 5 });
    let shallow = ExpressionEngine::new(ExpressionOptions {
        max_render_depth: 1,
        ..Default::default()
    });
    assert!(matches!(
        shallow.render("{{ render(a) }}", &c),
        Err(ExpressionError::DepthExceeded { limit: 1 })
    ));
}

#[test]
fn each_output_and_tasks_with_state() {
    let c = json!({
        "outputs": {"inner": {"v1": {"sub1": {"value": "A"}}, "v2": {"sub2": {"value": "B"}}}},
        "parents": [{"taskrun": {"value": "v2"}}],
        "taskrun": {"value": "sub2"},
        "tasks": {"t1": {"state": "SUCCESS"}, "t2": {"state": "FAILED"},
                  "each": {"a": {"state": "FAILED"}, "b": {"state": "SUCCESS"}}},
    });
    let e = engine();
    assert_eq!(
        e.render("{{ currentEachOutput(outputs.inner).value }}", &c)
            .ok()
            .as_deref(),
        Some("B")
    );
    let failed = e.render_typed("{{ tasksWithState('failed') }}", &c).ok();
    assert_eq!(
        failed,
        Some(json!([
            {"taskId": "t2", "value": null, "state": "FAILED"},
            {"taskId": "each", "value": "a", "state": "FAILED"}
        ]))
    );
}

/// Runs `secrets_and_envs_child` in a child process with the environment variables set
/// (setting them in-process would need `unsafe`).
#[test]
fn secrets_and_envs() {
    let exe = std::env::current_exe().unwrap_or_default();
    let status = std::process::Command::new(exe)
        .args([
            "--exact",
            "secrets_and_envs_child",
            "--include-ignored",
            "--quiet",
        ])
        .env("SECRET_MY_TOKEN", "czNjcjN0")
        .env("ENV_MY_VAR", "from-env")
        .env("KESTRA_EXPR_CHILD", "1")
        .status();
    assert!(status.is_ok_and(|s| s.success()), "child test failed");
}

#[test]
#[ignore = "run by secrets_and_envs with the environment it needs"]
fn secrets_and_envs_child() {
    if std::env::var("KESTRA_EXPR_CHILD").is_err() {
        return;
    }
    let e = engine();
    let c = ctx();
    assert_eq!(
        e.render("{{ secret('MY_TOKEN') }}", &c).ok().as_deref(),
        Some("s3cr3t")
    );
    let err = e.render("{{ secret('ABSENT_ONE') }}", &c).unwrap_err();
    assert_eq!(err, ExpressionError::SecretNotFound("ABSENT_ONE".into()));
    assert!(err.to_string().contains("ABSENT_ONE"));
    assert_eq!(
        e.render("{{ envs.my_var }}", &c).ok().as_deref(),
        Some("from-env")
    );
    assert!(
        e.render("{{ envs.path }}", &c).is_err(),
        "only ENV_ variables are exposed"
    );
    assert!(e.render("{{ envs.kestra_expr_child }}", &c).is_err());
}

#[test]
fn encryption() {
    let c = ctx();
    let key = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8=";
    let enc = ExpressionEngine::new(ExpressionOptions {
        encryption_key: Some(key.into()),
        ..Default::default()
    });
    let cipher = enc.render("{{ encrypt('hello') }}", &c).unwrap_or_default();
    assert_ne!(cipher, "hello");
    let c2 = json!({"cipher": cipher});
    assert_eq!(
        enc.render("{{ decrypt(cipher) }}", &c2).ok().as_deref(),
        Some("hello")
    );
    assert_eq!(
        enc.render("{{ decrypt('0123456789abcdef0123456789abcdef', encrypt('0123456789abcdef0123456789abcdef', 'x')) }}", &c).ok().as_deref(),
        Some("x")
    );
    assert!(
        engine().render("{{ encrypt('hello') }}", &c).is_err(),
        "no key configured"
    );
}

#[test]
fn globals_and_kestra() {
    let e = ExpressionEngine::new(ExpressionOptions {
        globals: json!({"team": "data"}),
        kestra_environment: Some("prod".into()),
        kestra_url: Some("http://localhost:8080".into()),
        ..Default::default()
    });
    assert_eq!(
        e.render(
            "{{ globals.team }}-{{ kestra.environment }}-{{ kestra.url }}",
            &json!({})
        )
        .ok()
        .as_deref(),
        Some("data-prod-http://localhost:8080")
    );
}

#[test]
fn typed_rendering() {
    assert_eq!(typed("{{ [1, 2] }}"), json!([1, 2]));
    assert_eq!(typed("  {{ inputs.list }} "), json!([3, 1, 2]));
    assert_eq!(typed("{{ inputs.map }}"), json!({"a": 1, "b": "x"}));
    assert_eq!(typed("{{ 42 }}"), json!(42));
    assert_eq!(typed("{{ 1 == 1 }}"), json!(true));
    assert_eq!(typed("{{ inputs.nothing }}"), Value::Null);
    assert_eq!(typed("{{ inputs.name }}"), json!("World"));
    assert_eq!(typed("list: {{ inputs.list }}"), json!("list: [3,1,2]"));
    assert_eq!(typed("{{ 1 }}{{ 2 }}"), json!("12"));
    assert_eq!(typed("plain"), json!("plain"));
    assert!(
        engine()
            .render_typed("{{ inputs.missing }}", &ctx())
            .is_err()
    );
}

#[test]
fn render_value_recurses() {
    let v = json!({"{{ inputs.name }}": ["{{ inputs.list }}", 1, {"x": "{{ 1 + 1 }}"}]});
    let out = engine().render_value(&v, &ctx(), true).ok();
    assert_eq!(out, Some(json!({"World": [[3, 1, 2], 1, {"x": 2}]})));
    let out = engine().render_value(&v, &ctx(), false).ok();
    assert_eq!(out, Some(json!({"World": ["[3,1,2]", 1, {"x": "2"}]})));
}

#[test]
fn conditions() {
    let e = engine();
    let c = ctx();
    let cond = |s: &str| {
        e.evaluate_condition(s, &c)
            .unwrap_or_else(|err| panic!("{s}: {err}"))
    };
    assert!(cond("{{ inputs.n < 0 }}"));
    assert!(cond("inputs.n < 0"));
    assert!(!cond("{{ false }}"));
    assert!(!cond("{{ 'false' }}"));
    assert!(!cond("{{ 0 }}"));
    assert!(!cond("{{ '' }}"));
    assert!(!cond("{{ inputs.nothing }}"));
    assert!(!cond("{{ [] }}"));
    assert!(cond("{{ 'yes' }}"));
    assert!(cond("inputs.name == 'World'"));
    assert!(e.evaluate_condition("inputs.missing", &c).is_err());
}

#[test]
fn fuel_stops_runaway_loops() {
    let e = ExpressionEngine::new(ExpressionOptions {
        fuel: Some(10_000),
        ..Default::default()
    });
    let err = e
        .render(
            "{% for i in range(1, 50000) %}{% for j in range(1, 100) %}x{% endfor %}{% endfor %}",
            &json!({}),
        )
        .unwrap_err();
    assert_eq!(err, ExpressionError::FuelExhausted);
}

struct TestHost;

impl ExpressionHost for TestHost {
    fn read_file(&self, uri: &str) -> Result<String, String> {
        if uri == "kestra:///f.txt" {
            Ok("content".into())
        } else {
            Err(format!("no file {uri}"))
        }
    }
    fn file_size(&self, uri: &str) -> Result<u64, String> {
        Ok(if uri.ends_with("empty") { 0 } else { 7 })
    }
    fn file_exists(&self, uri: &str) -> Result<bool, String> {
        Ok(uri == "kestra:///f.txt")
    }
    fn file_uri(&self, path: &str) -> Result<String, String> {
        Ok(format!("kestra:///ns/{path}"))
    }
    fn kv(&self, namespace: Option<&str>, key: &str) -> Result<Option<Value>, String> {
        Ok((key == "k").then(|| json!({"ns": namespace})))
    }
    fn error_logs(&self) -> Result<Vec<Value>, String> {
        Ok(vec![json!({"message": "boom"})])
    }
}

#[test]
fn host_functions() {
    let e = engine();
    let host: Arc<dyn ExpressionHost> = Arc::new(TestHost);
    let c = ctx();
    let rh = |t: &str| {
        e.render_with_host(t, &c, &host)
            .unwrap_or_else(|err| format!("ERROR: {err}"))
    };
    assert_eq!(rh("{{ read('kestra:///f.txt') }}"), "content");
    assert_eq!(rh("{{ fileSize('kestra:///f.txt') }}"), "7");
    assert_eq!(rh("{{ fileEmpty('kestra:///empty') }}"), "true");
    assert_eq!(rh("{{ fileExists('kestra:///f.txt') }}"), "true");
    assert_eq!(rh("{{ fileExists('kestra:///other') }}"), "false");
    assert_eq!(rh("{{ fileURI('a.sql') }}"), "kestra:///ns/a.sql");
    assert_eq!(rh("{{ kv('k').ns }}"), "company.team");
    assert_eq!(rh("{{ kv('k', namespace='other').ns }}"), "other");
    assert!(rh("{{ kv('missing') }}").contains("missing"));
    assert_eq!(
        rh("{{ kv('missing', errorOnMissing=false) ?? 'none' }}"),
        "none"
    );
    assert_eq!(rh("{{ errorLogs()[0].message }}"), "boom");
    assert!(rh("{{ read('kestra:///nope') }}").contains("no file"));
    // without a host, storage is unavailable with a clear error
    let err = e.render("{{ read('kestra:///f.txt') }}", &c).unwrap_err();
    assert_eq!(
        err,
        ExpressionError::Host("storage is not available in this context".into())
    );
}

#[test]
fn engine_is_shareable_and_caches() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<ExpressionEngine>();
    let e = Arc::new(engine());
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let e = e.clone();
            std::thread::spawn(move || {
                (0..50)
                    .map(|_| {
                        e.render("{{ n * 2 }}", &json!({"n": i}))
                            .unwrap_or_default()
                    })
                    .collect::<Vec<_>>()
            })
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let out = h.join().unwrap_or_default();
        assert!(out.iter().all(|s| *s == (i * 2).to_string()));
    }
}

#[test]
fn nested_map_literals_do_not_close_the_block() {
    let engine = ExpressionEngine::default();
    let ctx = serde_json::json!({});
    assert_eq!(
        engine
            .render("{{ {'a': {'b': 3}} | jq('.a.b') | first }}", &ctx)
            .unwrap(),
        "3"
    );
    assert_eq!(
        engine
            .render("{{ {'a': {'b': 1}} | toJson }}", &ctx)
            .unwrap(),
        r#"{"a":{"b":1}}"#
    );
}
