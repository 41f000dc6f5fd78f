//! Execution inputs from the command line: `--input KEY=VALUE` (repeatable) and `--inputs FILE`
//! (a YAML mapping). For an input of type FILE, a value `@path` uploads that local file (a path in
//! an inputs file is relative to that file's directory); every other value is passed as written and
//! checked by the engine, whose errors name the input and the expected type.

use std::path::{Path, PathBuf};

use indexmap::IndexMap;
use kestra_core::flow::{Flow, InputType};
use kestra_core::inputs::RawInput;
use serde_json::Value;

/// Whether `id` is a FILE input of `flow`.
fn is_file_input(flow: &Flow, id: &str) -> bool {
    flow.inputs
        .iter()
        .any(|i| i.id == id && i.input_type == InputType::File)
}

/// The upload of a local file for FILE input `id`; `origin` names where the value came from.
fn upload(id: &str, path: &Path, origin: &str) -> Result<RawInput, String> {
    // A device or a FIFO (`@/dev/zero`) would be read without end or hang the run.
    let content = kestra::core::limits::regular_file(path)
        .and_then(|_| std::fs::read(path))
        .map_err(|e| {
            format!(
                "{origin}: input '{id}': cannot read local file {}: {e}",
                path.display()
            )
        })?;
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| id.to_string());
    Ok(RawInput::File {
        file_name,
        content: content.into(),
    })
}

/// A text value: `@path` for a FILE input is an upload of `base/path`.
fn text_value(
    flow: &Flow,
    id: &str,
    value: &str,
    base: &Path,
    origin: &str,
) -> Result<RawInput, String> {
    match value.strip_prefix('@') {
        Some(path) if is_file_input(flow, id) => upload(id, &base.join(path), origin),
        _ => Ok(RawInput::Text(value.to_string())),
    }
}

/// Read `--inputs FILE`: a YAML mapping of input ids to values. Scalars are passed as text (parsed
/// as `--input` values are), lists and mappings as JSON (for ARRAY, JSON and MULTISELECT inputs).
fn read_inputs_file(
    flow: &Flow,
    file: &Path,
    raw: &mut IndexMap<String, RawInput>,
) -> Result<(), String> {
    let origin = file.display().to_string();
    let text =
        kestra::core::limits::read_text_file(file, kestra::core::limits::MAX_SOURCE_FILE_SIZE)
            .map_err(|e| format!("cannot read {origin}: {e}"))?;
    let value: Value = if text.trim().is_empty() {
        Value::Object(Default::default())
    } else {
        // YAML 1.2 scalars: `yes` stays a string, `0755` is not a number.
        let options = serde_saphyr::options! {
            strict_booleans: true,
            leading_zero_numbers_as_strings: true,
            duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
        };
        serde_saphyr::from_str_with_options(&text, options)
            .map_err(|e| format!("{origin}: invalid YAML: {e}"))?
    };
    let Value::Object(map) = value else {
        return Err(format!(
            "{origin}: expected a mapping of input ids to values (`name: value`)"
        ));
    };
    let base = file.parent().map(Path::to_path_buf).unwrap_or_default();
    for (id, value) in map {
        let input = match value {
            Value::String(s) => text_value(flow, &id, &s, &base, &origin)?,
            Value::Bool(_) | Value::Number(_) => RawInput::Text(value.to_string()),
            other => RawInput::Json(other),
        };
        raw.insert(id, input);
    }
    Ok(())
}

/// The raw inputs of an execution of `flow`: the inputs file first, then each `--input` (which
/// wins).
pub fn raw_inputs(
    flow: &Flow,
    pairs: &[String],
    inputs_file: Option<&Path>,
) -> Result<IndexMap<String, RawInput>, String> {
    let mut raw = IndexMap::new();
    if let Some(file) = inputs_file {
        read_inputs_file(flow, file, &mut raw)?;
    }
    for pair in pairs {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| format!("--input '{pair}': expected KEY=VALUE"))?;
        let origin = format!("--input {pair}");
        let input = text_value(flow, k, v, &PathBuf::new(), &origin)?;
        raw.insert(k.to_string(), input);
    }
    Ok(raw)
}
