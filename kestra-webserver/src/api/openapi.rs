//! The OpenAPI 3.1 document of the REST API, generated from the code: `#[utoipa::path]` on each
//! handler gives its method, path, parameters and answers; the JSON bodies (Flow, Execution,
//! TaskRun, State, LogEntry, paged results, the error body, ...) are the `schemars` schemas of the
//! same serde types the handlers serialise, merged into `components.schemas`.
//!
//! Served at `GET /api/v1/main/openapi.json` (and the `/api/v1/openapi.json` alias) and, as YAML,
//! at Kestra's `GET /swagger/kestra.yml`; behind authentication like every non-public route. A copy
//! is kept in `docs/openapi.json` (the test `the_committed_openapi_document_is_up_to_date` fails
//! when it is stale; `KESTRA_UPDATE_OPENAPI=1` rewrites it).
//!
//! **A new endpoint gets into the document** by (1) an `#[utoipa::path(...)]` attribute on its
//! handler (method, `path = "/api/v1/main/..."`, `params`, `responses` with `body = ` one of the
//! component markers below, or a new marker with the `component!` macro of this file), and (2) its handler's name in
//! the `paths(...)` list of [`ApiDoc`]. The test `every_route_is_documented` reads the `.route(...)`
//! calls of `src/api/*.rs` and fails for a route (method and path) missing from the document.

use std::borrow::Cow;
use std::sync::Arc;

use axum::Json;
use axum::extract::{RawQuery, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, SchemaGenerator};
use serde_json::{Map, Value, json};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::{ObjectBuilder, RefOr, Schema};
use utoipa::{Modify, OpenApi};

use super::Params;
use super::{
    execution_labels, executions, flows, flows_namespace, kv, log_search, logs, metrics, triggers,
    webhook,
};
use crate::{ApiError, AppState};

/// The error body of every non-2xx answer.
#[derive(serde::Serialize, JsonSchema)]
#[allow(dead_code)]
struct ApiErrorBody {
    /// What is wrong.
    message: String,
    /// Positioned problems (flow validation, inputs), when there are any.
    #[serde(rename = "_embedded", skip_serializing_if = "Option::is_none")]
    embedded: Option<ApiErrorEmbedded>,
}

/// The positioned problems of an error.
#[derive(serde::Serialize, JsonSchema)]
#[allow(dead_code)]
struct ApiErrorEmbedded {
    /// One entry per problem.
    errors: Vec<ApiErrorDetail>,
}

/// One problem: where (path in the document, 1-based line and column) and what.
#[derive(serde::Serialize, JsonSchema)]
#[allow(dead_code)]
struct ApiErrorDetail {
    /// Path of the problem (`tasks[1].type`, `inputs.name`).
    path: String,
    /// 1-based line in the YAML source (flow validation only).
    #[serde(skip_serializing_if = "Option::is_none")]
    line: Option<usize>,
    /// 1-based column in the YAML source (flow validation only).
    #[serde(skip_serializing_if = "Option::is_none")]
    column: Option<usize>,
    /// What is wrong there.
    message: String,
}

/// A flow as the API answers it: the flow document plus what the server manages.
#[derive(serde::Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[schemars(rename = "Flow")]
#[allow(dead_code)]
struct FlowWithSource {
    #[serde(flatten)]
    flow: kestra_core::flow::Flow,
    /// When this revision was stored.
    updated: chrono::DateTime<chrono::Utc>,
    /// The YAML source (with `source=true`, and in revisions).
    #[serde(skip_serializing_if = "Option::is_none")]
    source: Option<String>,
}

/// The report of one YAML document of `POST /flows/validate`.
#[derive(serde::Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct ValidateReport {
    /// Index of the document in the body.
    index: usize,
    /// Flow id, when valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    flow: Option<String>,
    /// Namespace, when valid.
    #[serde(skip_serializing_if = "Option::is_none")]
    namespace: Option<String>,
    /// Always false here.
    outdated: bool,
    /// Deprecated paths (always empty here).
    deprecation_paths: Vec<String>,
    /// Warnings (always empty here).
    warnings: Vec<String>,
    /// Infos (always empty here).
    infos: Vec<String>,
    /// Every problem as one text, when invalid.
    #[serde(skip_serializing_if = "Option::is_none")]
    constraints: Option<String>,
    /// Every problem with its position.
    errors: Vec<ApiErrorDetail>,
}

/// `GET /configs`.
#[derive(serde::Serialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
#[allow(dead_code)]
struct Configs {
    /// Server version.
    version: String,
    /// Whether basic authentication is on.
    is_basic_auth_enabled: bool,
    /// Always false.
    is_anonymous_usage_enabled: bool,
    /// Always false.
    is_task_run_enabled: bool,
    /// Always false.
    is_ui_anonymous_usage_enabled: bool,
    /// The system namespace.
    system_namespace: String,
    /// Label prefixes the UI hides.
    hidden_labels_prefixes: Vec<String>,
    /// Tenant features.
    tenants: Value,
}

/// `GET /health`.
#[derive(serde::Serialize, JsonSchema)]
#[allow(dead_code)]
struct Health {
    /// `UP`.
    status: String,
}

/// A page of search results.
#[derive(serde::Serialize, JsonSchema)]
#[allow(dead_code)]
struct PagedResults<T> {
    /// The results of this page.
    results: Vec<T>,
    /// How many results match, over every page.
    total: u64,
}

/// The inputs of a new execution (or of a resume): one multipart field per input, files as file
/// fields.
#[derive(serde::Serialize, JsonSchema)]
#[allow(dead_code)]
struct ExecutionInputs(std::collections::BTreeMap<String, String>);

/// Declares a component: a marker type that utoipa references by name in the paths, whose schema
/// is the `schemars` schema of `$type` (merged by [`openapi`]).
macro_rules! component {
    ($marker:ident, $name:literal, $type:ty) => {
        #[doc = concat!("The `", $name, "` component (its schema comes from `schemars`).")]
        pub struct $marker;
        impl utoipa::PartialSchema for $marker {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new().into()
            }
        }
        impl utoipa::ToSchema for $marker {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed($name)
            }
        }
        impl $marker {
            /// Adds the schemars schema (and what it references) to `generator`'s definitions.
            fn define(generator: &mut SchemaGenerator) -> (&'static str, Value) {
                (
                    $name,
                    <$type as JsonSchema>::json_schema(generator).to_value(),
                )
            }
        }
    };
}

component!(FlowBody, "Flow", FlowWithSource);
component!(ExecutionBody, "Execution", kestra_core::model::Execution);
component!(TaskRunBody, "TaskRun", kestra_core::model::TaskRun);
component!(StateBody, "State", kestra_core::model::State);
component!(LogEntryBody, "LogEntry", kestra_core::model::LogEntry);
component!(ErrorBody, "ApiError", ApiErrorBody);
component!(ValidateReportBody, "ValidateReport", ValidateReport);
component!(ConfigsBody, "Configs", Configs);
component!(HealthBody, "Health", Health);
component!(
    PagedFlowsBody,
    "PagedResults_Flow",
    PagedResults<FlowWithSource>
);
component!(
    PagedExecutionsBody,
    "PagedResults_Execution",
    PagedResults<kestra_core::model::Execution>
);
component!(InputsBody, "ExecutionInputs", ExecutionInputs);

type Define = fn(&mut SchemaGenerator) -> (&'static str, Value);

/// Every component, in the order they are defined.
const COMPONENTS: &[Define] = &[
    FlowBody::define,
    ExecutionBody::define,
    TaskRunBody::define,
    StateBody::define,
    LogEntryBody::define,
    ErrorBody::define,
    ValidateReportBody::define,
    ConfigsBody::define,
    HealthBody::define,
    PagedFlowsBody::define,
    PagedExecutionsBody::define,
    InputsBody::define,
];

/// Basic authentication on every operation (the public ones say `security: []`).
struct BasicAuthScheme;

impl Modify for BasicAuthScheme {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "basicAuth",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Basic).build()),
        );
    }
}

/// The paths and operations, from the handlers' `#[utoipa::path]` attributes.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "Kestra API (kestra-rs)",
        description = "Kestra's REST API as served by kestra-rs, tenant `main`. Every path is also served under the older `/api/v1/...` prefix (without `/main`). Errors are JSON bodies (`ApiError`) naming the problem. Query parameters are allow-listed per route: an unknown one is a 400.",
        license(name = "Apache-2.0")
    ),
    modifiers(&BasicAuthScheme),
    security(("basicAuth" = [])),
    tags(
        (name = "Flows", description = "Flows: create and update from YAML, search, revisions, validation"),
        (name = "Executions", description = "Executions: trigger, search, follow, kill, restart, replay, resume, files"),
        (name = "Logs", description = "Execution logs"),
        (name = "Plugins", description = "The flow language's JSON Schema"),
        (name = "Misc", description = "Health, configuration, this document"),
    ),
    paths(
        super::health,
        super::configs,
        openapi_json,
        swagger_yaml,
        flow_schema,
        plugins,
        flows::create,
        flows::validate,
        flows::search,
        flows::distinct_namespaces,
        flows::get_flow,
        flows::update,
        flows::delete_flow,
        flows::revisions,
        executions::trigger,
        executions::search,
        executions::get_execution,
        executions::delete_execution,
        executions::follow,
        executions::kill,
        executions::restart,
        executions::replay,
        executions::resume,
        executions::file,
        webhook::webhook,
        logs::by_execution,
        logs::follow,
        flows_namespace::list,
        flows_namespace::update,
        log_search::search,
        log_search::download,
        triggers::search,
        triggers::of_flow,
        triggers::set_disabled_by_triggers,
        triggers::update,
        triggers::unlock,
        triggers::pause_backfill,
        triggers::unpause_backfill,
        triggers::delete_backfill,
        execution_labels::set_labels,
        kv::list,
        kv::get_key,
        kv::put_key,
        kv::delete_key,
        metrics::metrics,
    )
)]
pub struct ApiDoc;

/// The OpenAPI document as JSON: utoipa's paths with the components' schemars schemas.
pub fn openapi() -> Value {
    let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_else(|e| {
        // utoipa's types always serialise; keep a document that says what went wrong.
        json!({ "openapi": "3.1.0", "info": { "title": format!("cannot build the document: {e}"), "version": "" }, "paths": {} })
    });
    let mut generator = SchemaGenerator::new(
        SchemaSettings::draft2020_12()
            .with(|s| {
                s.definitions_path = "/components/schemas".into();
                s.meta_schema = None;
            })
            .for_serialize(),
    );
    let mut schemas = Map::new();
    for define in COMPONENTS {
        let (name, schema) = define(&mut generator);
        schemas.insert(name.to_string(), schema);
    }
    for (name, schema) in generator.take_definitions(true) {
        schemas.entry(name).or_insert(schema);
    }
    schemas.sort_keys();
    document["info"]["version"] = json!(env!("CARGO_PKG_VERSION"));
    document["components"]["schemas"] = Value::Object(schemas);
    document
}

/// `GET /openapi.json`: this document.
#[utoipa::path(
    get,
    path = "/api/v1/main/openapi.json",
    tag = "Misc",
    operation_id = "getOpenApi",
    responses((status = 200, description = "The OpenAPI 3.1 document of this API", content_type = "application/json"))
)]
pub(crate) async fn openapi_json() -> Json<Value> {
    Json(openapi())
}

/// `GET /swagger/kestra.yml`: this document as YAML, at Kestra's path.
#[utoipa::path(
    get,
    path = "/swagger/kestra.yml",
    tag = "Misc",
    operation_id = "getSwaggerYaml",
    responses((status = 200, description = "The OpenAPI document as YAML", content_type = "application/yaml"))
)]
pub(crate) async fn swagger_yaml() -> Result<Response, ApiError> {
    let yaml = serde_saphyr::to_string(&openapi())
        .map_err(|e| ApiError::internal(format!("cannot write the document as YAML: {e}")))?;
    Ok(([(header::CONTENT_TYPE, "application/yaml")], yaml).into_response())
}

/// `GET /plugins`: the task and trigger types this server knows (the embedder's too), grouped by
/// their package as Kestra groups them by plugin: `[{"name", "group", "tasks": [{"cls",
/// "deprecated"}], "triggers": [...]}]`. Legacy aliases are listed as deprecated elements.
#[utoipa::path(
    get,
    path = "/api/v1/main/plugins",
    tag = "Plugins",
    operation_id = "listPlugins",
    responses(
        (status = 200, description = "The plugins: their task and trigger types", content_type = "application/json"),
        (status = 400, description = "Unknown query parameter", body = ErrorBody),
    )
)]
pub(crate) async fn plugins(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let registry = state.engine.registry();
    // group -> (tasks, triggers), each element `{"cls", "deprecated"}`.
    let mut groups: std::collections::BTreeMap<String, (Vec<Value>, Vec<Value>)> =
        std::collections::BTreeMap::new();
    let group_of = |cls: &str| {
        cls.rsplit_once('.')
            .map_or_else(|| cls.to_string(), |(package, _)| package.to_string())
    };
    for (kind, types) in [(0, registry.task_types()), (1, registry.trigger_types())] {
        for (name, aliases, _) in types {
            let mut elements = vec![json!({"cls": name, "deprecated": false})];
            elements.extend(
                aliases
                    .iter()
                    .filter(|a| **a != name)
                    .map(|a| json!({"cls": a, "deprecated": true})),
            );
            for element in elements {
                let cls = element["cls"].as_str().unwrap_or_default().to_string();
                let entry = groups.entry(group_of(&cls)).or_default();
                if kind == 0 {
                    entry.0.push(element);
                } else {
                    entry.1.push(element);
                }
            }
        }
    }
    let plugins: Vec<Value> = groups
        .into_iter()
        .map(|(group, (tasks, triggers))| {
            json!({
                "name": group.rsplit('.').next().unwrap_or(&group),
                "group": group,
                "tasks": tasks,
                "triggers": triggers,
                "conditions": [],
                "taskRunners": [],
            })
        })
        .collect();
    Ok(Json(Value::Array(plugins)))
}

/// `GET /plugins/schemas/flow`: the JSON Schema (draft-07) of a flow document with every task and
/// trigger type this server knows (the embedder's too), for editors.
#[utoipa::path(
    get,
    path = "/api/v1/main/plugins/schemas/flow",
    tag = "Plugins",
    operation_id = "getFlowSchema",
    params(("arrayOf" = Option<bool>, Query, description = "true: the schema of a list of flows")),
    responses(
        (status = 200, description = "The flow JSON Schema (draft-07)", content_type = "application/json"),
        (status = 400, description = "Unknown query parameter", body = ErrorBody),
    )
)]
pub(crate) async fn flow_schema(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(query.as_deref(), &["arrayOf"])?;
    let schema = state.engine.registry().json_schema();
    if params.bool("arrayOf", false)? {
        let mut schema = schema;
        let definitions = schema
            .as_object_mut()
            .and_then(|m| m.remove("definitions"))
            .unwrap_or(Value::Null);
        let meta = schema
            .as_object_mut()
            .and_then(|m| m.remove("$schema"))
            .unwrap_or(Value::Null);
        return Ok(Json(json!({
            "$schema": meta,
            "type": "array",
            "items": schema,
            "definitions": definitions,
        })));
    }
    Ok(Json(schema))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use std::path::Path;

    /// `(METHOD, path)` of every `.route("...", get(..).post(..))` call in `src/api/*.rs`, the paths
    /// with every parameter written `{}`.
    fn served_routes() -> Vec<(String, String)> {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/api");
        let mut routes = Vec::new();
        let mut files: Vec<_> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "rs"))
            .collect();
        files.sort();
        for file in files {
            let source: String = std::fs::read_to_string(&file)
                .unwrap()
                .lines()
                .filter(|line| !line.trim_start().starts_with("//"))
                .flat_map(str::split_whitespace)
                .collect();
            for call in source.split(".route(\"").skip(1) {
                let Some((path, rest)) = call.split_once('"') else {
                    continue;
                };
                // The method router runs to the matching parenthesis of `.route(`.
                let mut depth = 1;
                let mut end = rest.len();
                for (i, c) in rest.char_indices() {
                    match c {
                        '(' => depth += 1,
                        ')' => {
                            depth -= 1;
                            if depth == 0 {
                                end = i;
                                break;
                            }
                        }
                        _ => {}
                    }
                }
                let router = &rest[..end];
                for method in ["get", "post", "put", "delete", "patch"] {
                    let called = router.starts_with(&format!(",{method}("))
                        || router.contains(&format!(".{method}("))
                        || router.contains(&format!("::{method}("));
                    if called {
                        routes.push((method.to_uppercase(), normalise(path)));
                    }
                }
            }
        }
        routes
    }

    fn normalise(path: &str) -> String {
        let mut out = String::new();
        let mut in_param = false;
        for c in path.chars() {
            match c {
                '{' => {
                    in_param = true;
                    out.push_str("{}");
                }
                '}' => in_param = false,
                _ if !in_param => out.push(c),
                _ => {}
            }
        }
        out
    }

    fn documented() -> Vec<(String, String)> {
        let document = openapi();
        let mut out = Vec::new();
        for (path, item) in document["paths"].as_object().unwrap() {
            for method in item.as_object().unwrap().keys() {
                out.push((method.to_uppercase(), normalise(path)));
            }
        }
        out
    }

    #[test]
    fn every_route_is_documented() {
        let routes = served_routes();
        assert!(routes.len() > 20, "only {} routes found", routes.len());
        let documented = documented();
        let missing: Vec<String> = routes
            .iter()
            .filter(|(method, path)| {
                let full =
                    if path == "/health" || path == "/metrics" || path.starts_with("/swagger/") {
                        path.clone()
                    } else {
                        format!("/api/v1/main{path}")
                    };
                !documented.contains(&(method.clone(), full))
            })
            .map(|(m, p)| format!("{m} {p}"))
            .collect();
        assert!(
            missing.is_empty(),
            "routes without an #[utoipa::path] in ApiDoc (see api/openapi.rs): {missing:?}"
        );
    }

    #[test]
    fn components_are_referenced_and_defined() {
        let document = openapi();
        let schemas = document["components"]["schemas"].as_object().unwrap();
        for name in [
            "Flow",
            "Execution",
            "TaskRun",
            "State",
            "LogEntry",
            "ApiError",
        ] {
            assert!(schemas.contains_key(name), "{name} missing");
        }
        assert!(
            schemas["Execution"]["properties"]["taskRunList"].is_object(),
            "{}",
            schemas["Execution"]
        );
        // Every $ref points at a defined component.
        let text = document.to_string();
        for reference in text.split("\"$ref\":\"").skip(1) {
            let target = reference.split('"').next().unwrap();
            let name = target
                .strip_prefix("#/components/schemas/")
                .unwrap_or_else(|| {
                    panic!("reference outside components: {target}");
                });
            assert!(schemas.contains_key(name), "dangling reference {target}");
        }
    }

    /// `docs/openapi.json` is the generated document; `KESTRA_UPDATE_OPENAPI=1` rewrites it.
    #[test]
    fn the_committed_openapi_document_is_up_to_date() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/openapi.json");
        let generated = serde_json::to_string_pretty(&openapi()).unwrap() + "\n";
        if std::env::var_os("KESTRA_UPDATE_OPENAPI").is_some() {
            std::fs::write(&path, &generated).unwrap();
            return;
        }
        let committed = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            committed == generated,
            "{} is not the document the code generates: regenerate it with\n  \
             KESTRA_UPDATE_OPENAPI=1 cargo test -p kestra-webserver --lib openapi\n\
             and commit it",
            path.display()
        );
    }
}
