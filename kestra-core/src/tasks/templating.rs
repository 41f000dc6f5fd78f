//! templating.TemplatedTask: renders `spec` with the run's variables, parses the result as the YAML
//! of one task and runs that task in place (same task run, same run context), returning its
//! outputs, as Kestra's `TemplatedTask` does.
//!
//! The generated task must be a runnable task without child tasks, registered on this worker; a
//! flowable, executable or executor-side type, an unknown type, another TemplatedTask, or a spec that
//! is not the YAML of a task fails the run with a message naming `spec`. The generated task's own
//! `retry`, `timeout`, `runIf` and the like are ignored: those of the TemplatedTask apply.

use async_trait::async_trait;

use crate::flow::model::Task;
use crate::flow::registry::{TaskKind, TaskType};
use crate::flow::tasks::TemplatedTask;
use crate::flow::yaml;
use crate::worker::context::RunContext;
use crate::worker::runner::{RunnableTask, TaskError, TaskOutput};

fn bad_spec(message: impl Into<String>) -> TaskError {
    TaskError::invalid("spec", message)
}

/// Parses a rendered spec into a task runnable on a worker.
pub fn parse_spec(ctx: &RunContext, rendered: &str) -> Result<Task, TaskError> {
    let document = yaml::load(rendered).map_err(|e| {
        bad_spec(format!(
            "not valid YAML (line {}, column {} of the rendered spec): {}",
            e.position.line, e.position.column, e.message
        ))
    })?;
    if !document.value.is_object() {
        return Err(bad_spec(
            "must render to the YAML of one task (a map with `id` and `type`)",
        ));
    }
    let task: Task = serde_json::from_value(document.value)
        .map_err(|e| bad_spec(format!("not a task definition: {e}")))?;
    let registry = ctx.task_registry();
    let entry = registry
        .resolve(&task.task_type)
        .ok_or_else(|| bad_spec(format!("unknown task type '{}'", task.task_type)))?;
    if entry.type_name == TemplatedTask::TYPE {
        return Err(bad_spec(format!(
            "the generated task cannot be another '{}'",
            entry.type_name
        )));
    }
    if entry.kind != TaskKind::Runnable || !entry.children.is_empty() {
        return Err(bad_spec(format!(
            "the generated task must be a runnable task, '{}' is {}",
            task.task_type,
            match entry.kind {
                TaskKind::Flowable => "a flowable task",
                TaskKind::Executable => "an executable task",
                TaskKind::ExecutorSide => "run by the executor",
                TaskKind::Runnable => "a task with child tasks",
            }
        )));
    }
    Ok(task)
}

#[async_trait]
impl RunnableTask for TemplatedTask {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let rendered = ctx.render(&self.spec)?;
        let task = parse_spec(ctx, &rendered)?;
        let runnable = ctx
            .runners()
            .build(&task, ctx.task_registry())
            .map_err(|e| bad_spec(e.to_string()))?;
        ctx.logger().debug(format!(
            "running the templated task '{}' ({})",
            task.id, task.task_type
        ));
        runnable.run(ctx).await
    }
}
