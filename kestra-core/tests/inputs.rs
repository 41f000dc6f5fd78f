//! Execution inputs: every input type from JSON and from form text, every rule broken with its exact
//! message, defaults, dependsOn, nested ids, FILE uploads stored in internal storage, and all errors
//! reported at once.

#![allow(clippy::unwrap_used)]

use bytes::Bytes;
use indexmap::IndexMap;
use kestra_core::flow::{Flow, Input};
use kestra_core::inputs::{ExecutionRef, InputErrors, RawInput, parse_input_value, resolve_inputs};
use kestra_core::storage::{InternalStorage, InternalStorageExt, StoragePath};
use kestra_core::testkit::memory::MemoryStorage;
use serde_json::{Map, Value, json};

// ---------------------------------------------------------------------------------------------
// Test helpers: a tiny renderer (storage: the testkit's MemoryStorage).
// ---------------------------------------------------------------------------------------------

/// Handles `{{ a.b.c }}` lookups in the context: a lone expression keeps its type, otherwise the
/// pieces are concatenated as text. An undefined variable is an error (strict, like the engine).
fn render(template: &str, ctx: &Value) -> Result<Value, String> {
    let lookup = |path: &str| -> Result<Value, String> {
        let mut current = ctx;
        for part in path.trim().split('.') {
            current = current
                .get(part)
                .ok_or_else(|| format!("'{}' is undefined", path.trim()))?;
        }
        Ok(current.clone())
    };
    let trimmed = template.trim();
    if trimmed.starts_with("{{") && trimmed.ends_with("}}") && trimmed.matches("{{").count() == 1 {
        return lookup(&trimmed[2..trimmed.len() - 2]);
    }
    let mut out = String::new();
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let end = rest[start..].find("}}").ok_or("unclosed '{{'")? + start;
        match lookup(&rest[start + 2..end])? {
            Value::String(s) => out.push_str(&s),
            other => out.push_str(&other.to_string()),
        }
        rest = &rest[end + 2..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

fn input(def: Value) -> Input {
    serde_json::from_value(def).unwrap()
}

fn flow(inputs: Value) -> Flow {
    serde_json::from_value(json!({"id": "upload", "namespace": "company.team", "inputs": inputs}))
        .unwrap()
}

fn exec() -> ExecutionRef {
    ExecutionRef {
        tenant: "main".into(),
        namespace: "company.team".into(),
        flow_id: "upload".into(),
        execution_id: "exec1".into(),
    }
}

/// `parse_input_value`, expecting success.
fn ok(def: Value, raw: RawInput) -> Value {
    let input = input(def);
    match parse_input_value(&input, raw) {
        Ok(v) => v,
        Err(e) => panic!("expected a value for '{}', got error: {e}", input.id),
    }
}

/// `parse_input_value`, expecting an error; its Display.
fn err(def: Value, raw: RawInput) -> String {
    let input = input(def);
    match parse_input_value(&input, raw) {
        Ok(v) => panic!("expected an error for '{}', got {v}", input.id),
        Err(e) => e.to_string(),
    }
}

fn j(v: Value) -> RawInput {
    RawInput::Json(v)
}

fn t(s: &str) -> RawInput {
    RawInput::Text(s.to_string())
}

fn raw(pairs: Vec<(&str, RawInput)>) -> IndexMap<String, RawInput> {
    pairs.into_iter().map(|(k, v)| (k.to_string(), v)).collect()
}

async fn resolve(
    flow: &Flow,
    pairs: Vec<(&str, RawInput)>,
    storage: Option<&dyn InternalStorage>,
) -> Result<Map<String, Value>, InputErrors> {
    resolve_inputs(flow, raw(pairs), exec(), storage, &render).await
}

// ---------------------------------------------------------------------------------------------
// Types
// ---------------------------------------------------------------------------------------------

#[test]
fn string_and_validator() {
    let def = json!({"id": "name", "type": "STRING", "validator": "^[a-z]+$"});
    assert_eq!(ok(def.clone(), j(json!("kestra"))), json!("kestra"));
    assert_eq!(ok(def.clone(), t("kestra")), json!("kestra"));
    assert_eq!(
        err(def.clone(), t("Kestra")),
        "input 'name': does not match validator '^[a-z]+$'"
    );
    // The validator must match the whole value, not a part of it.
    assert_eq!(
        err(def, t("abc1")),
        "input 'name': does not match validator '^[a-z]+$'"
    );
    let plain = json!({"id": "s", "type": "STRING"});
    assert_eq!(ok(plain.clone(), j(json!(42))), json!("42"));
    assert_eq!(ok(plain.clone(), t("")), json!(""));
    assert_eq!(
        err(plain, j(json!({"a": 1}))),
        "input 's': must be a string (got {\"a\":1})"
    );
}

#[test]
fn int_rules() {
    let def = json!({"id": "age", "type": "INT", "min": 18, "max": 99});
    assert_eq!(ok(def.clone(), j(json!(42))), json!(42));
    assert_eq!(ok(def.clone(), t("42")), json!(42));
    assert_eq!(ok(def.clone(), j(json!("42"))), json!(42));
    assert_eq!(
        err(def.clone(), t("12")),
        "input 'age': must be >= 18 (got 12)"
    );
    assert_eq!(
        err(def.clone(), j(json!(120))),
        "input 'age': must be <= 99 (got 120)"
    );
    assert_eq!(
        err(def.clone(), t("4x")),
        "input 'age': must be an integer (got '4x')"
    );
    assert_eq!(
        err(def, j(json!(1.5))),
        "input 'age': must be an integer (got 1.5)"
    );
}

#[test]
fn float_rules() {
    let def = json!({"id": "ratio", "type": "FLOAT", "min": 0, "max": 1.5});
    assert_eq!(ok(def.clone(), j(json!(0.25))), json!(0.25));
    assert_eq!(ok(def.clone(), t("1.5")), json!(1.5));
    assert_eq!(ok(def.clone(), j(json!(1))), json!(1.0));
    assert_eq!(
        err(def.clone(), t("-0.5")),
        "input 'ratio': must be >= 0 (got -0.5)"
    );
    assert_eq!(
        err(def.clone(), j(json!(2))),
        "input 'ratio': must be <= 1.5 (got 2)"
    );
    assert_eq!(
        err(def.clone(), t("abc")),
        "input 'ratio': must be a number (got 'abc')"
    );
    assert_eq!(
        err(def, t("NaN")),
        "input 'ratio': must be a number (got 'NaN')"
    );
}

#[test]
fn bool_and_its_alias() {
    let def = json!({"id": "flag", "type": "BOOL"});
    assert_eq!(ok(def.clone(), j(json!(true))), json!(true));
    assert_eq!(ok(def.clone(), t("false")), json!(false));
    assert_eq!(ok(def.clone(), t("TRUE")), json!(true));
    assert_eq!(
        err(def, t("yes")),
        "input 'flag': must be true or false (got 'yes')"
    );
    let alias = json!({"id": "flag", "type": "BOOLEAN"});
    assert_eq!(ok(alias.clone(), t("true")), json!(true));
    assert_eq!(
        err(alias, j(json!(1))),
        "input 'flag': must be true or false (got 1)"
    );
}

#[test]
fn datetime_is_an_instant_normalised_to_utc() {
    let def = json!({"id": "at", "type": "DATETIME",
        "after": "2024-01-01T00:00:00Z", "before": "2025-01-01T00:00:00Z"});
    assert_eq!(
        ok(def.clone(), j(json!("2024-06-01T10:00:00+02:00"))),
        json!("2024-06-01T08:00:00Z")
    );
    assert_eq!(
        ok(def.clone(), t("2024-06-01T10:00:00.5Z")),
        json!("2024-06-01T10:00:00.500Z")
    );
    assert_eq!(
        err(def.clone(), t("2024-06-01T10:00:00")),
        "input 'at': must be an ISO-8601 date-time with an offset or 'Z' (got '2024-06-01T10:00:00')"
    );
    assert_eq!(
        err(def.clone(), t("2023-12-31T23:00:00Z")),
        "input 'at': must be after 2024-01-01T00:00:00Z (got 2023-12-31T23:00:00Z)"
    );
    assert_eq!(
        err(def, t("2025-01-01T00:00:01Z")),
        "input 'at': must be before 2025-01-01T00:00:00Z (got 2025-01-01T00:00:01Z)"
    );
}

#[test]
fn date_and_time() {
    let date = json!({"id": "day", "type": "DATE", "after": "2024-01-01", "before": "2024-12-31"});
    assert_eq!(ok(date.clone(), t("2024-03-05")), json!("2024-03-05"));
    assert_eq!(
        ok(date.clone(), j(json!("2024-01-01"))),
        json!("2024-01-01"),
        "bounds are inclusive"
    );
    assert_eq!(
        err(date.clone(), t("2024-3-5")),
        "input 'day': must be a date yyyy-MM-dd (got '2024-3-5')"
    );
    assert_eq!(
        err(date.clone(), t("2024-02-30")),
        "input 'day': must be a date yyyy-MM-dd (got '2024-02-30')"
    );
    assert_eq!(
        err(date, t("2023-12-31")),
        "input 'day': must be after 2024-01-01 (got 2023-12-31)"
    );

    let time = json!({"id": "at", "type": "TIME", "after": "08:00", "before": "18:00:00"});
    assert_eq!(ok(time.clone(), t("10:30")), json!("10:30"));
    assert_eq!(ok(time.clone(), j(json!("10:30:15"))), json!("10:30:15"));
    assert_eq!(
        err(time.clone(), t("25:00")),
        "input 'at': must be a time HH:mm[:ss] (got '25:00')"
    );
    assert_eq!(
        err(time.clone(), t("07:59")),
        "input 'at': must be after 08:00 (got 07:59)"
    );
    assert_eq!(
        err(time, t("18:00:01")),
        "input 'at': must be before 18:00:00 (got 18:00:01)"
    );
}

#[test]
fn duration_rules() {
    let def = json!({"id": "wait", "type": "DURATION", "min": "PT1M", "max": "P2D"});
    assert_eq!(ok(def.clone(), t("PT5M")), json!("PT5M"));
    assert_eq!(
        ok(def.clone(), j(json!("P1D"))),
        json!("PT24H"),
        "Java's spelling"
    );
    assert_eq!(
        err(def.clone(), t("5 minutes")),
        "input 'wait': must be an ISO-8601 duration such as PT5M (got '5 minutes'): must start with 'P'"
    );
    assert_eq!(
        err(def.clone(), t("PT30S")),
        "input 'wait': must be >= PT1M (got PT30S)"
    );
    assert_eq!(
        err(def, t("P3D")),
        "input 'wait': must be <= PT48H (got PT72H)"
    );
}

#[test]
fn select_and_enum() {
    let def = json!({"id": "env", "type": "SELECT", "values": ["dev", "prod"]});
    assert_eq!(ok(def.clone(), t("prod")), json!("prod"));
    assert_eq!(ok(def.clone(), j(json!("dev"))), json!("dev"));
    assert_eq!(
        err(def, t("qa")),
        "input 'env': 'qa' is not one of [dev, prod]"
    );
    let alias = json!({"id": "env", "type": "ENUM", "values": ["dev", "prod"]});
    assert_eq!(
        err(alias, j(json!("qa"))),
        "input 'env': 'qa' is not one of [dev, prod]"
    );
    let custom =
        json!({"id": "env", "type": "SELECT", "values": ["dev"], "allowCustomValue": true});
    assert_eq!(ok(custom, t("qa")), json!("qa"));
}

#[test]
fn multiselect() {
    let def = json!({"id": "regions", "type": "MULTISELECT", "values": ["eu", "us", "ap"]});
    assert_eq!(ok(def.clone(), j(json!(["eu", "us"]))), json!(["eu", "us"]));
    assert_eq!(
        ok(def.clone(), t(r#"["ap"]"#)),
        json!(["ap"]),
        "a form sends a JSON-encoded list"
    );
    assert_eq!(
        err(def.clone(), j(json!(["eu", "mars"]))),
        "input 'regions': 'mars' is not one of [eu, us, ap]"
    );
    assert_eq!(
        err(def, t("eu")),
        "input 'regions': must be a list: a JSON array (got 'eu')"
    );
    // The deprecated `options` is read like `values`.
    let old = json!({"id": "r", "type": "MULTISELECT", "options": ["a"]});
    assert_eq!(
        err(old, j(json!(["b"]))),
        "input 'r': 'b' is not one of [a]"
    );
}

#[test]
fn array_items_take_the_item_type() {
    let def = json!({"id": "nums", "type": "ARRAY", "itemType": "INT"});
    assert_eq!(ok(def.clone(), j(json!(["1", 2]))), json!([1, 2]));
    assert_eq!(ok(def.clone(), t("[3, 4]")), json!([3, 4]));
    assert_eq!(
        err(def.clone(), j(json!([1, "x", "y"]))),
        "input 'nums': item 1 ('x'): must be an integer (got 'x'); item 2 ('y'): must be an integer (got 'y')"
    );
    assert_eq!(
        err(def, t("1,2")),
        "input 'nums': must be a list: a JSON array (got '1,2')"
    );
    let dates = json!({"id": "days", "type": "ARRAY", "itemType": "DATE"});
    assert_eq!(ok(dates, t(r#"["2024-01-02"]"#)), json!(["2024-01-02"]));
}

#[test]
fn json_and_yaml() {
    let def = json!({"id": "doc", "type": "JSON"});
    assert_eq!(
        ok(def.clone(), j(json!({"a": [1, 2]}))),
        json!({"a": [1, 2]})
    );
    assert_eq!(ok(def.clone(), t(r#"{"a": true}"#)), json!({"a": true}));
    assert_eq!(
        ok(def.clone(), j(json!(r#"[1, "x"]"#))),
        json!([1, "x"]),
        "a JSON string is parsed"
    );
    assert!(err(def, t("{a: ")).starts_with("input 'doc': must be valid JSON: "));

    let yaml = json!({"id": "cfg", "type": "YAML"});
    assert_eq!(
        ok(yaml.clone(), t("a: 1\nb: [x, y]\nmode: '0755'")),
        json!({"a": 1, "b": ["x", "y"], "mode": "0755"})
    );
    assert_eq!(ok(yaml.clone(), j(json!({"k": "v"}))), json!({"k": "v"}));
    assert!(err(yaml, t("a: [1, 2")).starts_with("input 'cfg': must be valid YAML: "));
}

#[test]
fn uri_email_secret() {
    let uri = json!({"id": "site", "type": "URI"});
    assert_eq!(
        ok(uri.clone(), t("https://kestra.io/docs?x=1")),
        json!("https://kestra.io/docs?x=1")
    );
    assert_eq!(
        ok(uri.clone(), j(json!("s3://bucket/key"))),
        json!("s3://bucket/key")
    );
    assert_eq!(
        err(uri.clone(), t("kestra.io/docs")),
        "input 'site': must be an absolute URI with a scheme (got 'kestra.io/docs')"
    );
    assert_eq!(
        err(uri, t("https://kes tra.io")),
        "input 'site': must be an absolute URI with a scheme (got 'https://kes tra.io')"
    );

    let email = json!({"id": "to", "type": "EMAIL"});
    assert_eq!(
        ok(email.clone(), t("ops@example.com")),
        json!("ops@example.com")
    );
    assert_eq!(
        err(email.clone(), t("ops@")),
        "input 'to': must be an e-mail address (got 'ops@')"
    );
    assert_eq!(
        err(email, t("ops example@x.io")),
        "input 'to': must be an e-mail address (got 'ops example@x.io')"
    );

    let secret = json!({"id": "token", "type": "SECRET"});
    assert_eq!(ok(secret.clone(), t(" s3cr3t ")), json!(" s3cr3t "));
    assert_eq!(err(secret, j(json!(12))), "input 'token': must be a string");
}

#[test]
fn missing_values_in_the_pure_parser() {
    let required = json!({"id": "x", "type": "INT"});
    assert_eq!(
        err(required.clone(), j(Value::Null)),
        "input 'x': a value is required"
    );
    assert_eq!(
        err(required, t("")),
        "input 'x': a value is required",
        "an empty form field is no value"
    );
    let optional = json!({"id": "x", "type": "INT", "required": false});
    assert_eq!(ok(optional, j(Value::Null)), Value::Null);
    let file = json!({"id": "f", "type": "INT"});
    assert_eq!(
        err(
            file,
            RawInput::File {
                file_name: "a.txt".into(),
                content: Bytes::from_static(b"1")
            }
        ),
        "input 'f': expects a value, not a file upload"
    );
}

// ---------------------------------------------------------------------------------------------
// Whole executions
// ---------------------------------------------------------------------------------------------

#[tokio::test]
async fn required_optional_and_defaults() {
    let f = flow(json!([
        {"id": "a", "type": "STRING"},
        {"id": "b", "type": "STRING", "defaults": "{{ inputs.a }}-x"},
        {"id": "n", "type": "INT", "defaults": 5},
        {"id": "opt", "type": "INT", "required": false},
        {"id": "when", "type": "DURATION", "defaults": "P1D"},
    ]));
    let out = resolve(&f, vec![("a", t("hello"))], None).await.unwrap();
    assert_eq!(
        Value::Object(out),
        json!({"a": "hello", "b": "hello-x", "n": 5, "opt": null, "when": "PT24H"}),
        "defaults are rendered then validated; an absent optional input is null"
    );

    // A given value wins over the default; an empty form field of a non-text type means "absent".
    let out = resolve(
        &f,
        vec![
            ("a", t("a")),
            ("b", t("given")),
            ("n", t("")),
            ("opt", t("")),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(out["b"], json!("given"));
    assert_eq!(out["n"], json!(5));
    assert_eq!(out["opt"], Value::Null);

    let e = resolve(&f, vec![], None).await.unwrap_err();
    // `a` is missing; `b`'s default renders `inputs.a`, undefined, so it fails too.
    assert_eq!(
        e.to_string(),
        "input 'a': a value is required; input 'b': cannot render defaults: 'inputs.a' is undefined"
    );
}

#[tokio::test]
async fn defaults_are_validated_like_given_values() {
    let f = flow(json!([
        {"id": "age", "type": "INT", "defaults": "{{ inputs.raw }}", "dependsOn": {"inputs": ["raw"]}},
        {"id": "raw", "type": "STRING"},
        {"id": "env", "type": "SELECT", "values": ["dev"], "defaults": "prod"},
    ]));
    let e = resolve(&f, vec![("raw", t("twelve"))], None)
        .await
        .unwrap_err();
    assert_eq!(
        e.messages_for("age"),
        vec!["must be an integer (got 'twelve')"]
    );
    assert_eq!(e.messages_for("env"), vec!["'prod' is not one of [dev]"]);
    let out = resolve(&f, vec![("raw", t("30")), ("env", t("dev"))], None)
        .await
        .unwrap();
    assert_eq!(out["age"], json!(30));
}

#[tokio::test]
async fn depends_on_order_and_condition() {
    let f = flow(json!([
        {"id": "label", "type": "STRING", "defaults": "{{ inputs.env }}-{{ inputs.region }}",
         "dependsOn": {"inputs": ["env", "region"]}},
        {"id": "env", "type": "SELECT", "expression": "{{ envs }}", "autoSelectFirst": true,
         "dependsOn": {"inputs": ["unknown"]}},
        {"id": "region", "type": "STRING", "defaults": "eu"},
        {"id": "advanced", "type": "BOOL", "defaults": false},
        {"id": "tuning", "type": "INT", "required": true,
         "dependsOn": {"inputs": ["advanced"], "condition": "{{ inputs.advanced }}"}},
        {"id": "tuningNote", "type": "STRING", "defaults": "x", "dependsOn": {"inputs": ["tuning"]}},
    ]));
    // `envs` is not in the context: the expression fails, and `label`, which depends on `env`, is
    // not reported again.
    let e = resolve(&f, vec![], None).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "input 'env': cannot render expression: 'envs' is undefined"
    );

    // With the expression rendered by a renderer that knows `envs`.
    let renderer = |template: &str, ctx: &Value| -> Result<Value, String> {
        if template == "{{ envs }}" {
            Ok(json!(["staging", "prod"]))
        } else {
            render(template, ctx)
        }
    };
    let out = resolve_inputs(&f, raw(vec![]), exec(), None, &renderer)
        .await
        .unwrap();
    assert_eq!(
        Value::Object(out),
        json!({"label": "staging-eu", "env": "staging", "region": "eu", "advanced": false}),
        "declaration order kept; disabled `tuning` (condition false) and `tuningNote` are left out"
    );
    let e = resolve_inputs(
        &f,
        raw(vec![("env", t("qa")), ("advanced", t("true"))]),
        exec(),
        None,
        &renderer,
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "input 'env': 'qa' is not one of [staging, prod]; input 'tuning': a value is required"
    );
}

#[tokio::test]
async fn depends_on_cycles_are_reported() {
    let f = flow(json!([
        {"id": "a", "type": "STRING", "dependsOn": {"inputs": ["b"]}},
        {"id": "b", "type": "STRING", "dependsOn": {"inputs": ["a"]}},
        {"id": "c", "type": "STRING"},
    ]));
    let e = resolve(&f, vec![("a", t("1")), ("b", t("2")), ("c", t("3"))], None)
        .await
        .unwrap_err();
    assert_eq!(e.messages_for("a"), vec!["dependsOn cycle: a -> b -> a"]);
    assert_eq!(e.messages_for("b"), vec!["dependsOn cycle: a -> b -> a"]);
    assert!(e.messages_for("c").is_empty());
}

#[tokio::test]
async fn nested_ids_and_unknown_inputs() {
    let f = flow(json!([
        {"id": "db.host", "type": "STRING"},
        {"id": "db.port", "type": "INT", "defaults": 5432},
        {"id": "name", "type": "STRING"},
    ]));
    let out = resolve(
        &f,
        vec![
            ("db.host", t("localhost")),
            ("name", t("n")),
            ("undeclared", t("x")),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(
        Value::Object(out),
        json!({"db": {"host": "localhost", "port": 5432}, "name": "n"}),
        "dots nest; undeclared inputs are ignored"
    );
    // A nested JSON body works too.
    let out = resolve(
        &f,
        vec![
            ("db", j(json!({"host": "h", "port": "1"}))),
            ("name", t("n")),
        ],
        None,
    )
    .await
    .unwrap();
    assert_eq!(out["db"], json!({"host": "h", "port": 1}));

    let clash = flow(json!([{"id": "a", "type": "STRING"}, {"id": "a.b", "type": "STRING"}]));
    let e = resolve(&clash, vec![("a", t("x")), ("a.b", t("y"))], None)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "input 'a.b': its id clashes with another input's nested id"
    );
}

#[tokio::test]
async fn all_errors_at_once() {
    let f = flow(json!([
        {"id": "name", "type": "STRING", "validator": "^[a-z]+$"},
        {"id": "age", "type": "INT", "min": 18},
        {"id": "ok", "type": "BOOL"},
        {"id": "when", "type": "DATE"},
        {"id": "to", "type": "EMAIL"},
    ]));
    let e = resolve(
        &f,
        vec![
            ("name", t("X")),
            ("age", j(json!(12))),
            ("ok", t("true")),
            ("to", t("nope")),
        ],
        None,
    )
    .await
    .unwrap_err();
    assert_eq!(e.0.len(), 4);
    assert_eq!(
        e.to_string(),
        "input 'name': does not match validator '^[a-z]+$'; input 'age': must be >= 18 (got 12); \
         input 'when': a value is required; input 'to': must be an e-mail address (got 'nope')"
    );
}

// ---------------------------------------------------------------------------------------------
// FILE
// ---------------------------------------------------------------------------------------------

fn upload(name: &str, content: &'static [u8]) -> RawInput {
    RawInput::File {
        file_name: name.to_string(),
        content: Bytes::from_static(content),
    }
}

#[tokio::test]
async fn file_upload_is_stored_in_internal_storage() {
    let storage = MemoryStorage::default();
    let f = flow(json!([
        {"id": "data", "type": "FILE", "allowedFileExtensions": [".csv"]},
        {"id": "other", "type": "FILE", "required": false},
    ]));
    let out = resolve(
        &f,
        vec![("data", upload("report.CSV", b"a,b\n1,2\n"))],
        Some(&storage),
    )
    .await
    .unwrap();
    let uri = "kestra:///company/team/upload/executions/exec1/inputs/data/report.CSV";
    assert_eq!(out["data"], json!(uri));
    assert_eq!(out["other"], Value::Null);
    let path = StoragePath::parse(uri).unwrap();
    assert_eq!(
        storage.get_bytes("main", &path).await.unwrap(),
        Bytes::from_static(b"a,b\n1,2\n")
    );

    // Only the last segment of the client's file name is used.
    let out = resolve(
        &f,
        vec![("data", upload("../../../etc/x.csv", b"z"))],
        Some(&storage),
    )
    .await
    .unwrap();
    assert_eq!(
        out["data"],
        json!("kestra:///company/team/upload/executions/exec1/inputs/data/x.csv")
    );

    let e = resolve(
        &f,
        vec![("data", upload("evil.exe", b"MZ"))],
        Some(&storage),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        "input 'data': file 'evil.exe' must have one of the extensions [.csv]"
    );
    assert_eq!(storage.len(), 2, "a refused file is not stored");

    let e = resolve(&f, vec![("data", upload("a.csv", b"1"))], None)
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "input 'data': cannot store an uploaded file: no internal storage configured"
    );
}

#[tokio::test]
async fn file_given_as_a_uri() {
    let storage = MemoryStorage::default();
    let f = flow(json!([{"id": "data", "type": "FILE"}]));
    let inside = "kestra:///company/team/parent/executions/p1/tasks/t/r/out.txt";
    let out = resolve(&f, vec![("data", j(json!(inside)))], Some(&storage))
        .await
        .unwrap();
    assert_eq!(
        out["data"],
        json!(inside),
        "a file of the same namespace (e.g. from a parent flow)"
    );

    for (value, message) in [
        (
            "file:///etc/passwd",
            "input 'data': file:// URIs are refused: upload the file instead",
        ),
        (
            "/etc/passwd",
            "input 'data': must be an uploaded file or a kestra:/// URI (got '/etc/passwd')",
        ),
        (
            "kestra:///other/ns/f/executions/e/x.txt",
            "input 'data': file 'kestra:///other/ns/f/executions/e/x.txt' is outside the namespace 'company.team'",
        ),
        (
            "kestra:///company/team/../../other/x",
            "input 'data': invalid storage URI 'kestra:///company/team/../../other/x': contains a '..' segment",
        ),
    ] {
        let e = resolve(&f, vec![("data", t(value))], Some(&storage))
            .await
            .unwrap_err();
        assert_eq!(e.to_string(), message, "{value}");
    }
    let select = flow(json!([{"id": "s", "type": "STRING"}]));
    let e = resolve(&select, vec![("s", upload("a.txt", b"x"))], Some(&storage))
        .await
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "input 's': expects a value, not a file upload"
    );
    assert_eq!(storage.len(), 0);
}
