//! Execution inputs: turns the raw values a caller gives (a JSON body, multipart form fields and
//! uploaded files) into the typed `inputs` map of a new execution, checked against the flow's
//! [`Input`] declarations.
//!
//! This module owns the rules of every input type (see SEMANTICS.md, "Inputs"), `defaults` and
//! `dependsOn`, the storage of uploaded FILE inputs, and the error messages. Entry points:
//! [`resolve_inputs`] for a whole execution, [`parse_input_value`] for one value.
//!
//! # Behaviour (Kestra's)
//!
//! - Inputs are resolved in declaration order, except that an input listed in another's
//!   `dependsOn.inputs` is resolved first; `dependsOn.condition` (rendered) must be true for the input
//!   to be enabled, otherwise it is left out of the result, as are inputs depending on it.
//! - A missing value (absent, JSON `null`, or an empty form field for a non-text type) takes the
//!   `defaults`, rendered with Pebble when it is a string containing `{{` or `{%` (context: `inputs`
//!   resolved so far, `flow`, `execution`), then validated like a given value. SELECT with
//!   `autoSelectFirst` and no `defaults` takes its first value. Still missing: an error when
//!   `required` (the default), otherwise the input is present with the value `null`.
//! - Values for undeclared inputs are ignored (a warning is logged), as Kestra does.
//! - Ids with dots nest: `a.b` becomes `{"a": {"b": ...}}`. A nested value may also be given nested
//!   (`{"a": {"b": 1}}`) in a JSON body.
//! - Every problem of every input is reported at once, in [`InputErrors`], in declaration order. An
//!   input whose dependency failed is skipped without an error of its own (the dependency's error
//!   explains it).
//!
//! # Normalised values
//!
//! DATETIME becomes UTC with `Z` (`2024-01-01T09:00:00Z`), DURATION Java's spelling (`P1D` ->
//! `PT24H`), FLOAT a JSON float, FILE the `kestra:///` URI of the stored file, JSON and YAML the parsed
//! document. SECRET is kept as given (Kestra encrypts it; here it is plain): callers must mask it in
//! logs and the UI.
//!
//! # FILE inputs and security
//!
//! An uploaded file is stored at `StoragePath::input_file(namespace, flow, execution, input, name)`,
//! the name reduced to its last path segment. A FILE value given as text must be a `kestra:///` URI
//! inside the flow's namespace (this is how a parent passes its files to a subflow of the same
//! namespace); `file://` URIs, local paths and any other scheme are refused.

mod parse;

use std::collections::{HashMap, HashSet};
use std::fmt;

use bytes::Bytes;
use indexmap::IndexMap;
use serde_json::{Map, Value, json};

use crate::flow::{Flow, Input, InputType};
use crate::storage::{InternalStorage, InternalStorageExt, StoragePath};

use parse::{Candidate, declared_values, is_empty, parse_candidate, value_as_option};

/// The message of a missing required input.
pub const REQUIRED: &str = "a value is required";

/// A raw value as it arrives: from JSON (any JSON value) or from a multipart form (text field or file).
#[derive(Debug, Clone, PartialEq)]
pub enum RawInput {
    /// A value from a JSON body (or given programmatically, e.g. by a trigger or a parent flow).
    Json(Value),
    /// A text field of a multipart form.
    Text(String),
    /// A file part of a multipart form.
    File {
        /// The file name the client sent (only its last path segment is used).
        file_name: String,
        /// The file's content.
        content: Bytes,
    },
    /// A file part the caller already streamed into internal storage (so that a large upload never
    /// sits in memory): it must be exactly at [`StoragePath::input_file`] of the execution being
    /// created, this input's id and [`upload_file_name`] of `file_name`, or it is refused.
    Stored {
        /// The file name the client sent.
        file_name: String,
        /// Where the caller stored it.
        path: StoragePath,
    },
}

/// The name an uploaded file is stored under: the last segment of what the client sent (`/` or `\`
/// separated), trimmed; an error when nothing usable is left (empty, `.`, `..`).
pub fn upload_file_name(file_name: &str) -> Result<String, String> {
    let name = file_name
        .rsplit(['/', '\\'])
        .next()
        .unwrap_or_default()
        .trim();
    if name.is_empty() || name == "." || name == ".." {
        return Err(format!(
            "the uploaded file has no usable name ('{file_name}')"
        ));
    }
    Ok(name.to_string())
}

/// Renders `defaults`, `expression` and `dependsOn.condition` (Pebble). The engine passes its
/// expression engine here; tests can pass a closure `Fn(&str, &Value) -> Result<Value, String>`.
pub trait InputRenderer: Send + Sync {
    /// Renders `template` in `ctx`, keeping the type of a lone expression (`{{ 1 + 1 }}` is `2`).
    fn render_typed(&self, template: &str, ctx: &Value) -> Result<Value, String>;
}

impl<F> InputRenderer for F
where
    F: Fn(&str, &Value) -> Result<Value, String> + Send + Sync,
{
    fn render_typed(&self, template: &str, ctx: &Value) -> Result<Value, String> {
        self(template, ctx)
    }
}

impl InputRenderer for crate::expression::ExpressionEngine {
    fn render_typed(&self, template: &str, ctx: &Value) -> Result<Value, String> {
        crate::expression::ExpressionEngine::render_typed(self, template, ctx)
            .map_err(|e| e.to_string())
    }
}

/// One broken rule of one input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("input '{input}': {message}")]
pub struct InputError {
    /// The input id.
    pub input: String,
    /// The rule broken (`must be >= 18 (got 12)`).
    pub message: String,
}

/// Every problem found in an execution's inputs; `Display` joins them with `; `.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct InputErrors(pub Vec<InputError>);

impl fmt::Display for InputErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl InputErrors {
    /// The messages about one input.
    pub fn messages_for(&self, input: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|e| e.input == input)
            .map(|e| e.message.as_str())
            .collect()
    }
}

/// The execution the inputs are for: where FILE inputs are stored and what the expressions see.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecutionRef {
    /// Tenant id.
    pub tenant: String,
    /// Flow namespace.
    pub namespace: String,
    /// Flow id.
    pub flow_id: String,
    /// Execution id.
    pub execution_id: String,
}

impl ExecutionRef {
    /// The reference of an existing execution.
    pub fn of(execution: &crate::model::execution::Execution) -> ExecutionRef {
        ExecutionRef {
            tenant: execution.tenant_id.clone(),
            namespace: execution.namespace.clone(),
            flow_id: execution.flow_id.clone(),
            execution_id: execution.id.clone(),
        }
    }
}

/// Parses and validates one value for `input`: the pure part of [`resolve_inputs`]. It applies the
/// type rules and `values` but not `defaults` or `expression` (they need a renderer), cannot take
/// a FILE upload (it needs the storage) and does not check that a FILE URI is inside the flow's
/// namespace (it does not know the execution). A missing value is an error when the input is required
/// and `null` otherwise.
pub fn parse_input_value(input: &Input, raw: RawInput) -> Result<Value, InputError> {
    parse::parse_raw(input, raw)
}

/// Where an input stands during resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Resolved,
    Disabled,
    Failed,
}

/// Resolves the inputs of a new execution of `flow` from the raw values given: dependency order,
/// defaults, type rules, FILE storage, nesting. See the module documentation.
pub async fn resolve_inputs(
    flow: &Flow,
    mut raw: IndexMap<String, RawInput>,
    execution_ref: ExecutionRef,
    storage: Option<&dyn InternalStorage>,
    renderer: &dyn InputRenderer,
) -> Result<Map<String, Value>, InputErrors> {
    let inputs = &flow.inputs;
    let mut errors = Vec::new();
    let order = resolution_order(inputs, &mut errors);
    let index_of: HashMap<&str, usize> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| (input.id.as_str(), i))
        .collect();

    let mut values: Vec<Option<Value>> = vec![None; inputs.len()];
    let mut status: Vec<Option<Status>> = vec![None; inputs.len()];
    let mut consumed: HashSet<String> = HashSet::new();

    for idx in order {
        let input = &inputs[idx];
        let dependencies = dependency_ids(input);
        let dep_status: Vec<Option<Status>> = dependencies
            .iter()
            .filter_map(|d| index_of.get(d.as_str()))
            .filter(|&&d| d != idx)
            .map(|&d| status[d])
            .collect();
        if dep_status.contains(&Some(Status::Failed)) {
            // The dependency's own error explains the problem; do not add noise.
            status[idx] = Some(Status::Failed);
            continue;
        }
        if dep_status.contains(&Some(Status::Disabled)) {
            status[idx] = Some(Status::Disabled);
            continue;
        }
        let outcome = resolve_one(
            input,
            &mut raw,
            &mut consumed,
            &Resolution {
                flow,
                inputs,
                values: &values,
                execution: &execution_ref,
                storage,
                renderer,
            },
        )
        .await;
        match outcome {
            Ok(Some(value)) => {
                values[idx] = Some(value);
                status[idx] = Some(Status::Resolved);
            }
            Ok(None) => status[idx] = Some(Status::Disabled),
            Err(messages) => {
                status[idx] = Some(Status::Failed);
                errors.extend(messages.into_iter().map(|message| InputError {
                    input: input.id.clone(),
                    message,
                }));
            }
        }
    }

    for key in raw.keys() {
        if !consumed.contains(key) && !index_of.contains_key(key.as_str()) {
            tracing::warn!(
                input = %key,
                namespace = %flow.namespace,
                flow = %flow.id,
                "input {key} was provided but is not declared in the flow inputs; ignored"
            );
        }
    }

    let (result, conflicts) = nest(inputs, &values);
    errors.extend(conflicts);
    if errors.is_empty() {
        Ok(result)
    } else {
        // Declaration order, whatever the resolution order was.
        errors.sort_by_key(|e| {
            index_of
                .get(e.input.as_str())
                .copied()
                .unwrap_or(usize::MAX)
        });
        Err(InputErrors(errors))
    }
}

/// What [`resolve_one`] needs besides the input itself.
struct Resolution<'a> {
    flow: &'a Flow,
    inputs: &'a [Input],
    values: &'a [Option<Value>],
    execution: &'a ExecutionRef,
    storage: Option<&'a dyn InternalStorage>,
    renderer: &'a dyn InputRenderer,
}

impl Resolution<'_> {
    /// The rendering context: `inputs` resolved so far (nested), `flow`, `execution`.
    fn context(&self) -> Value {
        let (inputs, _) = nest(self.inputs, self.values);
        json!({
            "inputs": inputs,
            "flow": {
                "id": self.flow.id,
                "namespace": self.flow.namespace,
                "revision": self.flow.revision,
                "tenantId": self.flow.tenant_id,
            },
            "execution": { "id": self.execution.execution_id },
        })
    }
}

/// Resolves one input: `Ok(None)` when its condition disables it, `Err` with every broken rule.
async fn resolve_one(
    input: &Input,
    raw: &mut IndexMap<String, RawInput>,
    consumed: &mut HashSet<String>,
    res: &Resolution<'_>,
) -> Result<Option<Value>, Vec<String>> {
    let ctx = res.context();

    if let Some(condition) = dependency_condition(input) {
        match res.renderer.render_typed(&condition, &ctx) {
            Ok(Value::Bool(true)) => {}
            Ok(Value::String(s)) if s.trim() == "true" => {}
            Ok(_) => return Ok(None),
            Err(e) => return Err(vec![format!("invalid dependsOn condition: {e}")]),
        }
    }

    let allowed = match (&input.expression, input.input_type) {
        (Some(expression), InputType::Select | InputType::Multiselect) => {
            Some(render_options(expression, &ctx, res.renderer).map_err(|e| vec![e])?)
        }
        _ => None,
    };

    let given = take_raw(raw, consumed, &input.id).filter(|r| !is_empty(input.input_type, r));
    let value = match given {
        Some(value) => value,
        None => match default_value(input, &ctx, res.renderer, allowed.as_deref())? {
            Some(value) => RawInput::Json(value),
            None if input.required => return Err(vec![REQUIRED.to_string()]),
            None => return Ok(Some(Value::Null)),
        },
    };

    match value {
        RawInput::File { file_name, content } if input.input_type == InputType::File => {
            store_file(input, &file_name, content, res)
                .await
                .map(Some)
                .map_err(|e| vec![e])
        }
        RawInput::Stored { file_name, path } if input.input_type == InputType::File => {
            check_stored_file(input, &file_name, &path, res.execution)
                .map(Some)
                .map_err(|e| vec![e])
        }
        RawInput::File { .. } | RawInput::Stored { .. } => {
            Err(vec!["expects a value, not a file upload".to_string()])
        }
        RawInput::Json(v) => finish(input, Candidate::Json(v), allowed.as_deref(), res.execution),
        RawInput::Text(s) => finish(input, Candidate::Text(s), allowed.as_deref(), res.execution),
    }
}

fn finish(
    input: &Input,
    candidate: Candidate,
    allowed: Option<&[String]>,
    execution: &ExecutionRef,
) -> Result<Option<Value>, Vec<String>> {
    let value = parse_candidate(input, candidate, allowed).map_err(|e| vec![e])?;
    if input.input_type == InputType::File
        && let Value::String(uri) = &value
    {
        check_file_scope(uri, execution).map_err(|e| vec![e])?;
    }
    Ok(Some(value))
}

/// A FILE URI given as text must stay inside the flow's namespace.
fn check_file_scope(uri: &str, execution: &ExecutionRef) -> Result<(), String> {
    let path = StoragePath::parse(uri).map_err(|e| e.to_string())?;
    let scope = StoragePath::namespace(&execution.namespace).map_err(|e| e.to_string())?;
    if path.starts_with(&scope) {
        Ok(())
    } else {
        Err(format!(
            "file '{uri}' is outside the namespace '{}'",
            execution.namespace
        ))
    }
}

/// Stores an uploaded file under the execution's `inputs/<input id>/` directory.
async fn store_file(
    input: &Input,
    file_name: &str,
    content: Bytes,
    res: &Resolution<'_>,
) -> Result<Value, String> {
    let name = upload_file_name(file_name)?;
    let name = name.as_str();
    parse::check_extension(input, name)?;
    let storage = res.storage.ok_or_else(|| {
        "cannot store an uploaded file: no internal storage configured".to_string()
    })?;
    let ex = res.execution;
    let path = StoragePath::input_file(
        &ex.namespace,
        &ex.flow_id,
        &ex.execution_id,
        &input.id,
        name,
    )
    .map_err(|e| format!("cannot store file '{name}': {e}"))?;
    storage
        .put_bytes(&ex.tenant, &path, content)
        .await
        .map_err(|e| format!("cannot store file '{name}': {e}"))?;
    Ok(Value::String(path.to_uri()))
}

/// A file the caller streamed into storage itself: it must sit exactly where [`store_file`] would
/// have put it (this execution, this input, the cleaned file name), so a caller cannot point an input
/// at another execution's or namespace's file.
fn check_stored_file(
    input: &Input,
    file_name: &str,
    path: &StoragePath,
    ex: &ExecutionRef,
) -> Result<Value, String> {
    let name = upload_file_name(file_name)?;
    parse::check_extension(input, &name)?;
    let expected = StoragePath::input_file(
        &ex.namespace,
        &ex.flow_id,
        &ex.execution_id,
        &input.id,
        &name,
    )
    .map_err(|e| format!("cannot store file '{name}': {e}"))?;
    if *path != expected {
        return Err(format!(
            "the uploaded file was stored at {path}, not at {expected} where this input's file belongs"
        ));
    }
    Ok(Value::String(path.to_uri()))
}

/// The value given for `id`: the flat key (`a.b`), or the same path inside a nested JSON value
/// (`{"a": {"b": ...}}`).
fn take_raw(
    raw: &mut IndexMap<String, RawInput>,
    consumed: &mut HashSet<String>,
    id: &str,
) -> Option<RawInput> {
    if let Some(value) = raw.shift_remove(id) {
        consumed.insert(id.to_string());
        return Some(value);
    }
    let mut parts = id.split('.');
    let head = parts.next()?;
    let rest: Vec<&str> = parts.collect();
    if rest.is_empty() {
        return None;
    }
    let RawInput::Json(mut current) = raw.get(head)?.clone() else {
        return None;
    };
    for part in rest {
        current = current.get(part)?.clone();
    }
    consumed.insert(head.to_string());
    Some(RawInput::Json(current))
}

/// `defaults` (rendered when it is a template), else SELECT's first value with `autoSelectFirst`.
fn default_value(
    input: &Input,
    ctx: &Value,
    renderer: &dyn InputRenderer,
    allowed: Option<&[String]>,
) -> Result<Option<Value>, Vec<String>> {
    match &input.defaults {
        Some(Value::String(template)) if is_template(template) => {
            let rendered = renderer
                .render_typed(template, ctx)
                .map_err(|e| vec![format!("cannot render defaults: {e}")])?;
            Ok((!rendered.is_null()).then_some(rendered))
        }
        Some(Value::Null) | None => {
            if input.input_type == InputType::Select && input.auto_select_first {
                let first = match allowed {
                    Some(values) => values.first().cloned(),
                    None => declared_values(input).and_then(|v| v.into_iter().next()),
                };
                return Ok(first.map(Value::String));
            }
            Ok(None)
        }
        Some(literal) => Ok(Some(literal.clone())),
    }
}

fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// Renders a SELECT/MULTISELECT `expression` to its list of options.
fn render_options(
    expression: &str,
    ctx: &Value,
    renderer: &dyn InputRenderer,
) -> Result<Vec<String>, String> {
    let rendered = renderer
        .render_typed(expression, ctx)
        .map_err(|e| format!("cannot render expression: {e}"))?;
    let list = match rendered {
        Value::Array(items) => items,
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Array(items)) => items,
            _ => {
                return Err(format!(
                    "expression must render a list (got {})",
                    parse::quote(&s)
                ));
            }
        },
        other => return Err(format!("expression must render a list (got {other})")),
    };
    Ok(list.iter().map(value_as_option).collect())
}

/// `dependsOn.inputs` (or a bare list of ids).
fn dependency_ids(input: &Input) -> Vec<String> {
    let list = match &input.depends_on {
        Some(Value::Object(map)) => map.get("inputs"),
        Some(list @ Value::Array(_)) => Some(list),
        _ => None,
    };
    match list {
        Some(Value::Array(items)) => items
            .iter()
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect(),
        _ => Vec::new(),
    }
}

/// `dependsOn.condition`.
fn dependency_condition(input: &Input) -> Option<String> {
    match &input.depends_on {
        Some(Value::Object(map)) => map.get("condition")?.as_str().map(str::to_string),
        _ => None,
    }
}

/// Declaration order, each input after the inputs it depends on; an input on a cycle is reported and
/// left out. Unknown dependencies are ignored, as Kestra does.
fn resolution_order(inputs: &[Input], errors: &mut Vec<InputError>) -> Vec<usize> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        Visiting,
        Done,
        Cyclic,
    }
    let index_of: HashMap<&str, usize> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| (input.id.as_str(), i))
        .collect();
    let deps: Vec<Vec<usize>> = inputs
        .iter()
        .enumerate()
        .map(|(i, input)| {
            dependency_ids(input)
                .iter()
                .filter_map(|d| index_of.get(d.as_str()).copied())
                .filter(|&d| d != i)
                .collect()
        })
        .collect();
    let mut marks = vec![Mark::New; inputs.len()];
    let mut order = Vec::with_capacity(inputs.len());

    // Iterative depth-first search: (node, next dependency to look at).
    for start in 0..inputs.len() {
        if marks[start] != Mark::New {
            continue;
        }
        let mut stack = vec![(start, 0usize)];
        marks[start] = Mark::Visiting;
        while let Some(&mut (node, ref mut next)) = stack.last_mut() {
            if let Some(&dep) = deps[node].get(*next) {
                *next += 1;
                match marks[dep] {
                    Mark::New => {
                        marks[dep] = Mark::Visiting;
                        stack.push((dep, 0));
                    }
                    Mark::Visiting => {
                        // Everything on the stack from `dep` up is on the cycle.
                        let from = stack.iter().position(|&(n, _)| n == dep).unwrap_or(0);
                        let cycle: Vec<&str> = stack[from..]
                            .iter()
                            .map(|&(n, _)| inputs[n].id.as_str())
                            .chain(std::iter::once(inputs[dep].id.as_str()))
                            .collect();
                        for &(n, _) in &stack[from..] {
                            if marks[n] != Mark::Cyclic {
                                marks[n] = Mark::Cyclic;
                                errors.push(InputError {
                                    input: inputs[n].id.clone(),
                                    message: format!("dependsOn cycle: {}", cycle.join(" -> ")),
                                });
                            }
                        }
                    }
                    Mark::Done | Mark::Cyclic => {}
                }
            } else {
                stack.pop();
                if marks[node] == Mark::Visiting {
                    marks[node] = Mark::Done;
                    order.push(node);
                }
            }
        }
    }
    order
}

/// Builds the nested result in declaration order (`a.b` -> `{"a": {"b": ...}}`); an id that clashes
/// with another (`a` and `a.b`) is reported.
fn nest(inputs: &[Input], values: &[Option<Value>]) -> (Map<String, Value>, Vec<InputError>) {
    let mut root = Map::new();
    let mut errors = Vec::new();
    for (input, value) in inputs.iter().zip(values) {
        let Some(value) = value else { continue };
        let parts: Vec<&str> = input.id.split('.').collect();
        if !insert_path(&mut root, &parts, value.clone()) {
            errors.push(InputError {
                input: input.id.clone(),
                message: "its id clashes with another input's nested id".to_string(),
            });
        }
    }
    (root, errors)
}

/// Inserts `value` at `path`, creating maps on the way; false if a non-map is in the way, or if a
/// map made for nested ids would be replaced by a plain value.
fn insert_path(map: &mut Map<String, Value>, path: &[&str], value: Value) -> bool {
    match path {
        [] => false,
        [last] => {
            if map.get(*last).is_some_and(Value::is_object) && !value.is_object() {
                return false;
            }
            map.insert((*last).to_string(), value);
            true
        }
        [head, rest @ ..] => {
            let entry = map
                .entry((*head).to_string())
                .or_insert_with(|| Value::Object(Map::new()));
            match entry {
                Value::Object(inner) => insert_path(inner, rest, value),
                _ => false,
            }
        }
    }
}
