//! Log, debug.Return, debug.Echo, OutputValues, Fail, Assert and Sleep.

use async_trait::async_trait;
use serde_json::Value;

use crate::flow::Property;
use crate::flow::tasks::{Assert, Echo, Fail, Log, OutputValues, Return, Sleep};
use crate::model::Level;
use crate::worker::context::{RunContext, level_of};
use crate::worker::runner::{RunnableTask, TaskError, TaskOutput};

fn log_level(
    ctx: &RunContext,
    level: &Option<Property<crate::flow::LogLevel>>,
) -> Result<Level, TaskError> {
    Ok(ctx
        .render_opt_property("level", level)?
        .map(level_of)
        .unwrap_or(Level::Info))
}

#[async_trait]
impl RunnableTask for Log {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let level = log_level(ctx, &self.level)?;
        let messages: Vec<String> = match &self.message {
            Value::Array(items) => items
                .iter()
                .map(|m| ctx.render_to_string(m))
                .collect::<Result<_, _>>()?,
            other => vec![ctx.render_to_string(other)?],
        };
        for message in messages {
            ctx.logger().log(level, message);
        }
        Ok(TaskOutput::empty())
    }
}

#[async_trait]
impl RunnableTask for Echo {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let level = log_level(ctx, &self.level)?;
        let message = ctx.render(&self.format)?;
        ctx.logger().log(level, message);
        Ok(TaskOutput::empty())
    }
}

#[async_trait]
impl RunnableTask for Return {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let value = match &self.format {
            Some(f) => Value::String(ctx.render(f)?),
            None => Value::Null,
        };
        Ok(TaskOutput::single("value", value))
    }
}

#[async_trait]
impl RunnableTask for OutputValues {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let mut values = serde_json::Map::new();
        for (key, value) in self.values.iter().flatten() {
            values.insert(ctx.render(key)?, ctx.render_value(value, false)?);
        }
        Ok(TaskOutput::single("values", Value::Object(values)))
    }
}

#[async_trait]
impl RunnableTask for Fail {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let fail = match &self.condition {
            None | Some(Value::Null) => true,
            Some(Value::String(s)) => ctx.evaluate_condition(s)?,
            Some(Value::Bool(b)) => *b,
            Some(other) => ctx.evaluate_condition(&other.to_string())?,
        };
        if !fail {
            return Ok(TaskOutput::empty());
        }
        let message = match &self.error_message {
            Some(m) => ctx.render(m)?,
            None => "Task failure".to_string(),
        };
        Err(TaskError::Failed(message))
    }
}

#[async_trait]
impl RunnableTask for Assert {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        // literal conditions are evaluated one by one (so a failure names the condition as written)
        let conditions: Vec<Value> = match &self.conditions {
            Property::Value(list) => list.clone(),
            Property::Expression(e) => ctx.render_json("conditions", &Value::String(e.clone()))?,
        };
        let mut failed = Vec::new();
        for condition in &conditions {
            let (text, ok) = match condition {
                Value::String(s) => (s.clone(), ctx.evaluate_condition(s)?),
                Value::Bool(b) => (b.to_string(), *b),
                other => (
                    other.to_string(),
                    ctx.evaluate_condition(&other.to_string())?,
                ),
            };
            if !ok {
                ctx.logger().error(format!("Assertion `{text}` failed!"));
                failed.push(text);
            }
        }
        if failed.is_empty() {
            return Ok(TaskOutput::empty());
        }
        let message = match &self.error_message {
            Some(m) => ctx.render(m)?,
            None => format!(
                "{} assertion(s) failed: {}",
                failed.len(),
                failed
                    .iter()
                    .map(|c| format!("`{c}`"))
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        Err(TaskError::Failed(message))
    }
}

#[async_trait]
impl RunnableTask for Sleep {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let duration = ctx.render_property("duration", &self.duration)?;
        tokio::select! {
            _ = tokio::time::sleep(duration.duration()) => Ok(TaskOutput::empty()),
            _ = ctx.cancellation().cancelled() => Err(TaskError::Cancelled),
        }
    }
}
