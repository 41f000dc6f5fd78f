//! The worker side of ForEachItem (contract in [`crate::executor::for_each_item`]): the `_split`
//! task cuts the `items` file into batch files, the `_merge` task writes the children's outputs
//! into one file (ION text, one struct per child, as Kestra). These types are internal: the
//! executor creates their jobs, flows never name them.

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::executor::for_each_item::{SPLIT_TYPE, batch_uri};
use crate::flow::model::Task;
use crate::flow::registry::DecodeError;
use crate::flow::tasks::Batch;
use crate::tasks::storage::{SplitMode, extension_of, parse_bytes, split_file};
use crate::worker::context::RunContext;
use crate::worker::runner::{RunnableTask, TaskError, TaskOutput};

/// `<id>_split`: the ForEachItem's `items` and `batch`.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForEachItemSplit {
    /// The file to cut (a `kestra://` URI, usually an expression).
    pub items: String,
    /// How to cut it (one row per batch by default).
    #[serde(default)]
    pub batch: Option<Batch>,
}

/// `<id>_merge`: the children's flow outputs by iteration, put in the job by the executor.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForEachItemMerge {
    /// Outputs of each child that had some, keyed by iteration (`"0"`, `"1"`, ...).
    #[serde(default)]
    pub subflow_outputs: Map<String, Value>,
}

/// Decodes an internal task's properties.
pub(crate) fn decode<T: for<'de> Deserialize<'de>>(task: &Task) -> Result<T, DecodeError> {
    let value = Value::Object(task.properties.clone().into_iter().collect());
    serde_path_to_error::deserialize(&value).map_err(|source| DecodeError::Invalid {
        type_name: task.task_type.clone(),
        source,
    })
}

impl ForEachItemSplit {
    fn mode(&self, ctx: &RunContext) -> Result<(SplitMode, String), TaskError> {
        let Some(batch) = &self.batch else {
            return Ok((SplitMode::Rows(1), "\n".into()));
        };
        let rows = ctx.render_opt_property("batch.rows", &batch.rows)?;
        let partitions = ctx.render_opt_property("batch.partitions", &batch.partitions)?;
        let bytes = match &batch.bytes {
            Some(b) => Some(parse_bytes(&ctx.render(b)?)?),
            None => None,
        };
        let separator = match &batch.separator {
            Some(s) => ctx.render(s)?,
            None => "\n".into(),
        };
        let mode = match (rows, bytes, partitions) {
            (None, None, None) => SplitMode::Rows(1),
            (Some(r), None, None) if r > 0 => SplitMode::Rows(u64::from(r)),
            (None, Some(b), None) if b > 0 => SplitMode::Bytes(b),
            (None, None, Some(p)) if p > 0 => SplitMode::Partitions(p as usize),
            (Some(_), None, None) | (None, Some(_), None) | (None, None, Some(_)) => {
                return Err(TaskError::invalid(
                    "batch",
                    "the batch size must be greater than 0",
                ));
            }
            _ => {
                return Err(TaskError::invalid(
                    "batch",
                    "only one of `rows`, `bytes` or `partitions` may be set",
                ));
            }
        };
        Ok((mode, separator))
    }
}

#[async_trait]
impl RunnableTask for ForEachItemSplit {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let items = ctx.render(&self.items)?.trim().to_string();
        if !items.starts_with("kestra://") {
            return Err(TaskError::invalid(
                "items",
                format!(
                    "Unable to split the items from {items}, this is not an internal storage URI!"
                ),
            ));
        }
        let (mode, separator) = self.mode(ctx)?;
        let extension = extension_of(&items);
        let uris = split_file(ctx, &items, &mode, &separator, |i| {
            format!("batch-{i}{extension}")
        })
        .await?;
        let prefix = format!("{}/batch-", ctx.task_run_path()?.to_uri());
        for (i, uri) in uris.iter().enumerate() {
            let expected = batch_uri(&prefix, i as u32, &extension);
            if *uri != expected {
                return Err(TaskError::Failed(format!(
                    "{SPLIT_TYPE}: batch stored as '{uri}', expected '{expected}'"
                )));
            }
        }
        let listing = uris.iter().map(|u| format!("{u}\n")).collect::<String>();
        let splits = ctx.put_file("splits.txt", Bytes::from(listing)).await?;
        ctx.logger()
            .info(format!("{} split into {} batch(es)", items, uris.len()));
        let mut out = Map::new();
        out.insert("splits".into(), Value::String(splits));
        out.insert("numberOfBatches".into(), Value::from(uris.len()));
        out.insert("batchUriPrefix".into(), Value::String(prefix));
        out.insert("batchUriSuffix".into(), Value::String(extension));
        Ok(TaskOutput::with_outputs(out))
    }
}

#[async_trait]
impl RunnableTask for ForEachItemMerge {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let mut entries: Vec<(u64, &Value)> = self
            .subflow_outputs
            .iter()
            .filter_map(|(k, v)| k.parse::<u64>().ok().map(|i| (i, v)))
            .collect();
        entries.sort_by_key(|(i, _)| *i);
        if entries.is_empty() {
            // No child had outputs: no file (Kestra's ForEachItemMergeOutputs returns no output).
            return Ok(TaskOutput::empty());
        }
        let mut text = String::new();
        for (_, outputs) in entries {
            write_ion(outputs, &mut text);
            text.push('\n');
        }
        let uri = ctx.put_file("outputs.ion", Bytes::from(text)).await?;
        Ok(TaskOutput::single("subflowOutputs", Value::String(uri)))
    }
}

/// Writes `value` as ION text, one value as Kestra's `FileSerde` writes it: structs with symbol
/// field names (`{name:"x",n:1}`), quoted when they are not plain identifiers.
pub fn write_ion(value: &Value, out: &mut String) {
    match value {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (None, Some(u), _) => out.push_str(&u.to_string()),
            (None, None, Some(f)) => out.push_str(&format!("{f:e}")),
            _ => out.push_str("null"),
        },
        // JSON string escapes (\", \\, \n, \t, \uXXXX) are valid ION string escapes.
        Value::String(s) => out.push_str(&Value::String(s.clone()).to_string()),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_ion(item, out);
            }
            out.push(']');
        }
        Value::Object(fields) => {
            out.push('{');
            for (i, (name, field)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                write_symbol(name, out);
                out.push(':');
                write_ion(field, out);
            }
            out.push('}');
        }
    }
}

fn write_symbol(name: &str, out: &mut String) {
    let mut chars = name.chars();
    let identifier = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '$')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
        && !matches!(name, "null" | "true" | "false" | "nan");
    if identifier {
        out.push_str(name);
        return;
    }
    out.push('\'');
    for c in name.chars() {
        match c {
            '\'' => out.push_str("\\'"),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn ion_text_of_outputs() {
        let mut out = String::new();
        write_ion(
            &json!({"content": "a\nb \"q\"", "n": -3, "f": 1.5, "ok": true, "none": null,
                    "list": [1, "x"], "odd key": {"it's": 1}, "null": 0}),
            &mut out,
        );
        assert_eq!(
            out,
            "{content:\"a\\nb \\\"q\\\"\",n:-3,f:1.5e0,ok:true,none:null,list:[1,\"x\"],'odd key':{'it\\'s':1},'null':0}"
        );
    }
}
