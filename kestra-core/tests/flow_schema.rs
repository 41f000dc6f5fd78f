//! The JSON Schema of the flow language ([`TaskRegistry::json_schema`]): it accepts every valid flow
//! of the corpus, of the engine scenarios (`tests/scenarios`) and of `flows/`; it refuses flows the
//! parser refuses for a reason a schema can see (unknown property, unknown type, missing id, wrong
//! property type); and `docs/flow.schema.json` is what the code generates.
//!
//! `KESTRA_UPDATE_SCHEMAS=1 cargo test -p kestra-core --test flow_schema` rewrites
//! `docs/flow.schema.json` (or `cargo run -- flow schema --pretty > docs/flow.schema.json`).

#![allow(clippy::unwrap_used)]

use std::fs;
use std::path::{Path, PathBuf};

use kestra_core::flow::{TaskKind, TaskRegistry, TaskType, parse_flow, yaml};
use serde_json::{Value, json};

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn yaml_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("cannot read {}: {e}", dir.display()))
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    files
}

fn validator(schema: &Value) -> jsonschema::Validator {
    jsonschema::draft7::new(schema).unwrap_or_else(|e| panic!("the schema is invalid: {e}"))
}

/// The problems the schema finds in a flow (first YAML document of `source`).
fn schema_errors(validator: &jsonschema::Validator, source: &str) -> Vec<String> {
    let flow = yaml::load_all(source).unwrap().remove(0).value;
    validator
        .iter_errors(&flow)
        .map(|e| format!("{}: {e}", e.instance_path()))
        .collect()
}

#[test]
fn accepts_every_valid_flow_of_the_corpus_scenarios_and_examples() {
    let registry = TaskRegistry::default();
    let validator = validator(&registry.json_schema());
    let root = workspace();
    let mut files = yaml_files(&root.join("kestra-core/tests/corpus/valid"));
    files.extend(yaml_files(&root.join("tests/scenarios")));
    files.extend(yaml_files(&root.join("tests/scenarios/_subflows")));
    files.extend(yaml_files(&root.join("flows")));
    assert!(files.len() > 250, "only {} flow files found", files.len());
    let mut checked = 0;
    let mut failures = Vec::new();
    for file in &files {
        let source = fs::read_to_string(file).unwrap();
        // Scenarios whose flow the parser refuses on purpose are not valid flows.
        let first = source.split("\n---").next().unwrap_or(&source);
        if parse_flow(first, &registry).is_err() {
            continue;
        }
        checked += 1;
        let errors = schema_errors(&validator, &source);
        if !errors.is_empty() {
            failures.push(format!("{}:\n  {}", file.display(), errors.join("\n  ")));
        }
    }
    assert!(checked > 250, "only {checked} valid flows checked");
    assert!(
        failures.is_empty(),
        "the schema refuses {} valid flows:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn refuses_flows_with_unknown_property_type_or_missing_id() {
    let validator = validator(&TaskRegistry::default().json_schema());
    let cases = [
        (
            "unknown property on a task",
            "id: f\nnamespace: n\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n    colour: red\n",
        ),
        (
            "unknown task type",
            "id: f\nnamespace: n\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Lgo\n    message: hi\n",
        ),
        (
            "task without id",
            "id: f\nnamespace: n\ntasks:\n  - type: io.kestra.plugin.core.log.Log\n    message: hi\n",
        ),
        (
            "flow without id",
            "namespace: n\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n",
        ),
        ("flow without tasks", "id: f\nnamespace: n\n"),
        (
            "unknown flow property",
            "id: f\nnamespace: n\nowner: me\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n",
        ),
        (
            "wrong type of a typed property",
            "id: f\nnamespace: n\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.flow.Parallel\n    concurrent: [1]\n    tasks:\n      - id: b\n        type: io.kestra.plugin.core.log.Log\n        message: hi\n",
        ),
        (
            "a string that is not an expression for an integer property",
            "id: f\nnamespace: n\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.flow.Parallel\n    concurrent: two\n    tasks:\n      - id: b\n        type: io.kestra.plugin.core.log.Log\n        message: hi\n",
        ),
        (
            "unknown property of a nested task",
            "id: f\nnamespace: n\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.flow.Sequential\n    tasks:\n      - id: b\n        type: io.kestra.plugin.core.log.Log\n        mesage: hi\n",
        ),
        (
            "unknown trigger type",
            "id: f\nnamespace: n\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: hi\ntriggers:\n  - id: t\n    type: io.kestra.plugin.core.trigger.Cron\n",
        ),
        (
            "unknown input type",
            "id: f\nnamespace: n\ninputs:\n  - id: x\n    type: STRNG\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.log.Log\n    message: hi\n",
        ),
    ];
    for (what, source) in cases {
        let registry = TaskRegistry::default();
        assert!(
            parse_flow(source, &registry).is_err(),
            "{what}: the parser accepts it, so the schema should too"
        );
        assert!(
            !schema_errors(&validator, source).is_empty(),
            "{what}: the schema accepts\n{source}"
        );
    }
}

#[test]
fn expressions_are_accepted_for_typed_properties() {
    let validator = validator(&TaskRegistry::default().json_schema());
    let source = "id: f\nnamespace: n\ninputs:\n  - id: n\n    type: INT\ntasks:\n  - id: a\n    type: io.kestra.plugin.core.flow.Parallel\n    concurrent: \"{{ inputs.n }}\"\n    tasks:\n      - id: b\n        type: io.kestra.plugin.core.flow.Sleep\n        duration: \"{{ 'PT' ~ inputs.n ~ 'S' }}\"\n";
    assert!(parse_flow(source, &TaskRegistry::default()).is_ok());
    assert_eq!(schema_errors(&validator, source), Vec::<String>::new());
}

/// An embedder's task type: typed properties when it declares a schema, "any object" otherwise.
#[test]
fn an_embedders_task_types_get_a_branch() {
    #[derive(serde::Deserialize, schemars::JsonSchema)]
    #[serde(deny_unknown_fields)]
    #[allow(dead_code)]
    struct Typed {
        /// Who to greet.
        name: String,
    }
    impl TaskType for Typed {
        const TYPE: &'static str = "com.example.Typed";
        const KIND: TaskKind = TaskKind::Runnable;
        fn properties_schema(
            generator: &mut schemars::SchemaGenerator,
        ) -> Option<schemars::Schema> {
            Some(<Typed as schemars::JsonSchema>::json_schema(generator))
        }
    }
    #[derive(serde::Deserialize)]
    struct Untyped {}
    impl TaskType for Untyped {
        const TYPE: &'static str = "com.example.Untyped";
        const ALIASES: &'static [&'static str] = &["com.example.Old"];
        const KIND: TaskKind = TaskKind::Runnable;
    }
    let mut registry = TaskRegistry::default();
    registry.register::<Typed>().register::<Untyped>();
    let schema = registry.json_schema();
    assert_eq!(
        schema["definitions"]["com.example.Untyped"]["properties"]["type"],
        json!({"enum": ["com.example.Untyped", "com.example.Old"]})
    );
    let validator = validator(&schema);
    let flow = |task: &str| format!("id: f\nnamespace: n\ntasks:\n  - id: a\n{task}");
    assert!(
        schema_errors(
            &validator,
            &flow("    type: com.example.Typed\n    name: x\n")
        )
        .is_empty()
    );
    assert!(
        !schema_errors(
            &validator,
            &flow("    type: com.example.Typed\n    nam: x\n")
        )
        .is_empty()
    );
    assert!(
        schema_errors(
            &validator,
            &flow("    type: com.example.Old\n    whatever: 1\n")
        )
        .is_empty()
    );
}

/// `docs/flow.schema.json` is the generated schema; `KESTRA_UPDATE_SCHEMAS=1` rewrites it.
#[test]
fn the_committed_schema_is_up_to_date() {
    let path = workspace().join("docs/flow.schema.json");
    let generated =
        serde_json::to_string_pretty(&TaskRegistry::default().json_schema()).unwrap() + "\n";
    if std::env::var_os("KESTRA_UPDATE_SCHEMAS").is_some() {
        fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "{} is not the schema the code generates: regenerate it with\n  \
         KESTRA_UPDATE_SCHEMAS=1 cargo test -p kestra-core --test flow_schema\n\
         (or: cargo run -- flow schema --pretty > docs/flow.schema.json) and commit it",
        path.display()
    );
}
