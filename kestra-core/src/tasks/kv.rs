//! kv.Set, kv.Get and kv.Delete over the [`KvStore`](crate::worker::KvStore).
//!
//! - Set: `key`, `value` (rendered, typed), `namespace` (the flow's by default), `overwrite` (true),
//!   `ttl`, `kvType` (STRING, NUMBER, BOOLEAN, JSON convert the value; DATETIME, DATE, DURATION keep
//!   its text); no output.
//! - Get: output `value` (null when missing unless `errorOnMissing`).
//! - Delete: output `deleted` (false when missing unless `errorOnMissing`).

use async_trait::async_trait;
use chrono::Utc;
use serde_json::Value;

use crate::flow::tasks::{KvKey, KvSet};
use crate::worker::context::RunContext;
use crate::worker::kv::{KvEntry, KvError};
use crate::worker::runner::{RunnableTask, TaskError, TaskOutput};

impl From<KvError> for TaskError {
    fn from(e: KvError) -> Self {
        match e {
            KvError::Storage(s) => TaskError::Storage(s),
            other => TaskError::Failed(other.to_string()),
        }
    }
}

fn namespace(ctx: &RunContext, ns: &Option<String>) -> Result<String, TaskError> {
    match ns {
        Some(n) => Ok(ctx.render(n)?),
        None => Ok(ctx.identity().namespace.clone()),
    }
}

fn convert(value: Value, kv_type: Option<&str>) -> Result<Value, TaskError> {
    let Some(kind) = kv_type else {
        return Ok(value);
    };
    let text = match &value {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let bad = |what: &str| TaskError::invalid("value", format!("'{text}' is not a valid {what}"));
    Ok(match kind.to_ascii_uppercase().as_str() {
        "STRING" => Value::String(text),
        "NUMBER" => match value {
            Value::Number(_) => value,
            _ => serde_json::from_str::<serde_json::Number>(text.trim())
                .map(Value::Number)
                .map_err(|_| bad("number"))?,
        },
        "BOOLEAN" => match value {
            Value::Bool(_) => value,
            _ => Value::Bool(text.trim().parse::<bool>().map_err(|_| bad("boolean"))?),
        },
        "JSON" => match value {
            Value::String(s) => serde_json::from_str(&s).map_err(|_| bad("JSON document"))?,
            other => other,
        },
        "DATETIME" | "DATE" | "DURATION" => Value::String(text),
        other => {
            return Err(TaskError::invalid(
                "kvType",
                format!(
                    "unknown type '{other}' (STRING, NUMBER, BOOLEAN, DATETIME, DATE, DURATION, JSON)"
                ),
            ));
        }
    })
}

#[async_trait]
impl RunnableTask for KvSet {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let ns = namespace(ctx, &self.namespace)?;
        let key = ctx.render(&self.key)?;
        let kv_type = self.kv_type.as_deref().map(|t| ctx.render(t)).transpose()?;
        let value = convert(ctx.render_value(&self.value, true)?, kv_type.as_deref())?;
        let overwrite = ctx
            .render_opt_property("overwrite", &self.overwrite)?
            .unwrap_or(true);
        let ttl = ctx.render_opt_property("ttl", &self.ttl)?;
        let store = ctx.kv();
        if !overwrite && store.get(&ns, &key).await?.is_some() {
            return Err(TaskError::Failed(format!(
                "Cannot set value for key '{key}'. Key already exists and `overwrite` is set to `false`."
            )));
        }
        let now = Utc::now();
        let expiration_date = match ttl {
            Some(ttl) => Some(
                chrono::Duration::from_std(ttl.duration())
                    .ok()
                    .and_then(|d| now.checked_add_signed(d))
                    .ok_or_else(|| TaskError::invalid("ttl", "too large"))?,
            ),
            None => None,
        };
        let description = self
            .description
            .as_deref()
            .map(|d| ctx.render(d))
            .transpose()?;
        store
            .set(
                &ns,
                &key,
                &KvEntry {
                    value,
                    r#type: kv_type.map(|t| t.to_ascii_uppercase()),
                    expiration_date,
                    update_date: now,
                    description,
                },
            )
            .await?;
        Ok(TaskOutput::empty())
    }
}

/// kv.Get (`delete: false`) or kv.Delete (`delete: true`).
#[derive(Debug, Clone)]
pub struct KvKeyTask {
    /// Properties.
    pub props: KvKey,
    /// Delete instead of get.
    pub delete: bool,
}

#[async_trait]
impl RunnableTask for KvKeyTask {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let ns = namespace(ctx, &self.props.namespace)?;
        let key = ctx.render(&self.props.key)?;
        let error_on_missing = ctx
            .render_opt_property("errorOnMissing", &self.props.error_on_missing)?
            .unwrap_or(false);
        let store = ctx.kv();
        let missing = || {
            TaskError::Failed(format!(
                "No value found for key '{key}' in namespace '{ns}' and `errorOnMissing` is set to true"
            ))
        };
        if self.delete {
            let deleted = store.delete(&ns, &key).await?;
            if !deleted && error_on_missing {
                return Err(missing());
            }
            Ok(TaskOutput::single("deleted", Value::Bool(deleted)))
        } else {
            match store.get(&ns, &key).await? {
                Some(entry) => Ok(TaskOutput::single("value", entry.value)),
                None if error_on_missing => Err(missing()),
                None => Ok(TaskOutput::single("value", Value::Null)),
            }
        }
    }
}
