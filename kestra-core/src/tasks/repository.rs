//! The core tasks that read the repository or act on other executions and triggers, through the
//! worker's [`ExecutionServices`](crate::worker::ExecutionServices) seam
//! ([`RunContext::services`]):
//!
//! - `log.Fetch`: an execution's logs (the current one by default) from `level` up (INFO), for
//!   `tasksId` when set, one JSON object a line in an `.ion` file (text ION, as Kestra writes it);
//!   outputs `uri` and `size`.
//! - `execution.Count`: executions started in `[startDate, endDate]` per flow of `flows` (each
//!   listed flow, 0 included) or of `namespaces` (their deployed flows, 0 included), in `states`;
//!   keeps the flows whose `expression` renders `true` with `count` set; outputs `results`
//!   (`namespace`, `flowId`, `count`) and `total`.
//! - `execution.PurgeExecutions`: ended executions started in `[startDate, endDate]` of a namespace
//!   (and its children, or exactly the namespace with `flowId`), in `states`: deletes them with
//!   their logs, metrics and internal-storage files as the `purge*` flags say; outputs
//!   `executionsCount`, `logsCount`, `metricsCount`, `storagesCount`, `taskOutputsCount`.
//! - `execution.Resume`: resumes a paused execution (the current one by default; with `namespace`
//!   and `flowId` but no `executionId`, the latest paused execution of that flow) with `inputs`.
//! - `trigger.Toggle`: enables (`enabled: true`) or disables (default) a trigger of a flow (the
//!   current flow by default) through the scheduler's trigger state.

use std::collections::BTreeMap;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::{Map, Value, json};

use crate::flow::model::LogLevel;
use crate::flow::tasks::{
    ExecutionCount, ExecutionResume, LogFetch, PurgeExecutions, TriggerToggle,
};
use crate::model::{Execution, StateType};
use crate::repository::ExecutionQuery;
use crate::storage::StoragePath;
use crate::worker::context::{RunContext, level_of};
use crate::worker::runner::{RunnableTask, TaskError, TaskOutput};
use crate::worker::services::ServicesError;

impl From<ServicesError> for TaskError {
    fn from(e: ServicesError) -> TaskError {
        TaskError::Failed(e.to_string())
    }
}

/// A string property rendered, `None` when unset or rendered empty.
fn render_opt(ctx: &RunContext, value: &Option<String>) -> Result<Option<String>, TaskError> {
    match value {
        Some(v) => {
            let r = ctx.render(v)?;
            Ok((!r.trim().is_empty()).then(|| r.trim().to_string()))
        }
        None => Ok(None),
    }
}

/// A rendered date property (ISO-8601 with an offset, or UTC without one).
fn parse_date(property: &str, text: &str) -> Result<DateTime<Utc>, TaskError> {
    crate::scheduler::schedule::parse_date_in(text, chrono_tz::UTC)
        .map_err(|e| TaskError::invalid(property, e.to_string()))
}

fn parse_states(property: &str, states: Option<Vec<String>>) -> Result<Vec<StateType>, TaskError> {
    states
        .unwrap_or_default()
        .iter()
        .map(|s| {
            s.trim()
                .to_ascii_uppercase()
                .parse::<StateType>()
                .map_err(|_| {
                    TaskError::invalid(property, format!("'{s}' is not an execution state"))
                })
        })
        .collect()
}

/// The current execution's namespace and flow id.
fn current_flow(ctx: &RunContext) -> (String, String) {
    let id = ctx.identity();
    (id.namespace.clone(), id.flow_id.clone())
}

#[async_trait]
impl RunnableTask for LogFetch {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let (current_ns, current_flow) = current_flow(ctx);
        let namespace = render_opt(ctx, &self.namespace)?.unwrap_or(current_ns);
        let flow_id = render_opt(ctx, &self.flow_id)?.unwrap_or(current_flow);
        let execution_id = render_opt(ctx, &self.execution_id)?
            .unwrap_or_else(|| ctx.identity().execution_id.clone());
        let tasks: Vec<String> = ctx
            .render_opt_property("tasksId", &self.tasks_id)?
            .unwrap_or_default();
        let level = ctx
            .render_opt_property("level", &self.level)?
            .unwrap_or(LogLevel::Info);
        let services = ctx.services()?.clone();
        let logs = services
            .logs(ctx.tenant(), &execution_id, level_of(level))
            .await?;
        // As Kestra: the logs of that execution in the given (or current) flow only.
        let mut out = Vec::new();
        let mut size = 0u64;
        for log in logs.iter().filter(|l| {
            l.namespace == namespace
                && l.flow_id == flow_id
                && (tasks.is_empty()
                    || l.task_id
                        .as_ref()
                        .is_some_and(|t| tasks.iter().any(|x| x == t)))
        }) {
            serde_json::to_writer(&mut out, log)
                .map_err(|e| TaskError::Failed(format!("cannot serialize a log line: {e}")))?;
            out.push(b'\n');
            size += 1;
        }
        ctx.logger().debug(format!(
            "fetched {size} log lines of execution {execution_id} ({namespace}.{flow_id})"
        ));
        let uri = ctx
            .put_file(&format!("{}.ion", crate::model::new_id()), Bytes::from(out))
            .await?;
        let mut outputs = Map::new();
        outputs.insert("uri".into(), Value::String(uri));
        outputs.insert("size".into(), json!(size));
        Ok(TaskOutput::with_outputs(outputs))
    }
}

#[async_trait]
impl RunnableTask for ExecutionCount {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let namespaces: Option<Vec<String>> =
            ctx.render_opt_property("namespaces", &self.namespaces)?;
        let flows: Option<Vec<(String, String)>> = match &self.flows {
            None => None,
            Some(v) => {
                let rendered = ctx.render_value(v, true)?;
                let list = rendered.as_array().ok_or_else(|| {
                    TaskError::invalid("flows", "a list of {namespace, flowId} is expected")
                })?;
                let mut flows = Vec::new();
                for (i, f) in list.iter().enumerate() {
                    let ns = f.get("namespace").and_then(Value::as_str);
                    let id = f.get("flowId").and_then(Value::as_str);
                    match (ns, id) {
                        (Some(ns), Some(id)) => flows.push((ns.to_string(), id.to_string())),
                        _ => {
                            return Err(TaskError::invalid(
                                format!("flows[{i}]"),
                                "needs `namespace` and `flowId`",
                            ));
                        }
                    }
                }
                Some(flows)
            }
        };
        if flows.is_none() && namespaces.is_none() {
            return Err(TaskError::invalid(
                "flows",
                "you must provide a list of flows or namespaces",
            ));
        }
        let states = parse_states("states", ctx.render_opt_property("states", &self.states)?)?;
        let start = parse_date("startDate", &ctx.render(&self.start_date)?)?;
        let end = match &self.end_date {
            Some(e) => Some(parse_date("endDate", &ctx.render(e)?)?),
            None => None,
        };
        let services = ctx.services()?.clone();
        // Counts per flow, in a stable order: the listed flows, else the namespaces' flows.
        let mut counts: BTreeMap<(String, String), u64> = BTreeMap::new();
        let in_namespaces = |ns: &str| {
            namespaces
                .as_ref()
                .is_some_and(|list| list.iter().any(|n| n == ns))
        };
        match &flows {
            Some(list) => {
                for f in list {
                    counts.insert(f.clone(), 0);
                }
            }
            None => {
                for f in services.flows(ctx.tenant()).await? {
                    if in_namespaces(&f.0) {
                        counts.insert(f, 0);
                    }
                }
            }
        }
        let mut queries = Vec::new();
        match &flows {
            Some(list) => {
                for (ns, id) in list {
                    queries.push((Some(ns.clone()), Some(id.clone())));
                }
            }
            None => {
                for ns in namespaces.iter().flatten() {
                    queries.push((Some(ns.clone()), None));
                }
            }
        }
        for (namespace, flow_id) in queries {
            let query = ExecutionQuery {
                tenant_id: Some(ctx.tenant().to_string()),
                namespace: namespace.clone(),
                flow_id: flow_id.clone(),
                states: states.clone(),
                start_date: Some(start),
                end_date: end,
                ..ExecutionQuery::default()
            };
            for e in services.executions(&query, 500).await? {
                // The repository matches child namespaces too; Count wants the exact ones.
                let wanted = match &flow_id {
                    Some(id) => Some(&e.namespace) == namespace.as_ref() && &e.flow_id == id,
                    None => in_namespaces(&e.namespace),
                };
                if wanted {
                    *counts
                        .entry((e.namespace.clone(), e.flow_id.clone()))
                        .or_insert(0) += 1;
                }
            }
        }
        let mut results = Vec::new();
        let mut total = 0u64;
        for ((namespace, flow_id), count) in counts {
            crate::worker::context::set_variable(ctx.variables_mut(), "count", json!(count));
            let kept = ctx.render(&self.expression)?;
            if kept.trim() == "true" {
                total += count;
                results.push(json!({"namespace": namespace, "flowId": flow_id, "count": count}));
            }
        }
        ctx.logger()
            .debug(format!("{} flows matching the expression", results.len()));
        let mut outputs = Map::new();
        outputs.insert("results".into(), Value::Array(results));
        outputs.insert("total".into(), json!(total));
        Ok(TaskOutput::with_outputs(outputs))
    }
}

#[async_trait]
impl RunnableTask for PurgeExecutions {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let namespace = render_opt(ctx, &self.namespace)?;
        let flow_id = render_opt(ctx, &self.flow_id)?;
        if flow_id.is_some() && namespace.is_none() {
            return Err(TaskError::invalid(
                "namespace",
                "`namespace` is required with `flowId`",
            ));
        }
        let start = match &self.start_date {
            Some(s) => Some(parse_date("startDate", &ctx.render(s)?)?),
            None => None,
        };
        let end = parse_date("endDate", &ctx.render(&self.end_date)?)?;
        let states = parse_states("states", ctx.render_opt_property("states", &self.states)?)?;
        let flag = |name: &str, p| -> Result<bool, TaskError> {
            Ok(ctx.render_opt_property(name, p)?.unwrap_or(true))
        };
        let purge_execution = flag("purgeExecution", &self.purge_execution)?;
        let purge_log = flag("purgeLog", &self.purge_log)?;
        let purge_metric = flag("purgeMetric", &self.purge_metric)?;
        let purge_storage = flag("purgeStorage", &self.purge_storage)?;
        if !purge_execution && (purge_log || purge_metric) {
            return Err(TaskError::invalid(
                "purgeExecution",
                "purging logs or metrics while keeping their executions is not supported \
                 (set purgeLog and purgeMetric to false, or purgeExecution to true)",
            ));
        }
        let batch_size: i64 = ctx
            .render_opt_property("batchSize", &self.batch_size)?
            .unwrap_or(100);
        let batch_size = u32::try_from(batch_size)
            .ok()
            .filter(|b| *b > 0)
            .ok_or_else(|| TaskError::invalid("batchSize", "must be a positive number"))?;
        let services = ctx.services()?.clone();
        let tenant = ctx.tenant().to_string();
        let query = ExecutionQuery {
            tenant_id: Some(tenant.clone()),
            namespace: namespace.clone(),
            flow_id: flow_id.clone(),
            states,
            start_date: start,
            end_date: Some(end),
            ..ExecutionQuery::default()
        };
        let current = ctx.identity().execution_id.clone();
        let found: Vec<Execution> = services
            .executions(&query, batch_size)
            .await?
            .into_iter()
            .filter(|e| {
                e.id != current
                    && e.state.is_terminated()
                    && (flow_id.is_none() || Some(&e.namespace) == namespace.as_ref())
            })
            .collect();
        let (mut executions, mut logs, mut metrics, mut storages) = (0u64, 0u64, 0u64, 0u64);
        for e in &found {
            if purge_log {
                logs += services
                    .logs(&tenant, &e.id, crate::model::Level::Trace)
                    .await?
                    .len() as u64;
            }
            if purge_metric {
                metrics += services.metrics(&tenant, &e.id).await?.len() as u64;
            }
            if purge_storage {
                let root = StoragePath::execution(&e.namespace, &e.flow_id, &e.id)?;
                storages += ctx.storage().delete_prefix(&tenant, &root).await?;
            }
            if purge_execution {
                services
                    .delete_execution(&tenant, &e.id, purge_log, purge_metric)
                    .await?;
                executions += 1;
            }
        }
        ctx.logger().info(format!(
            "purged {executions} executions, {logs} logs, {metrics} metrics, {storages} files"
        ));
        let mut outputs = Map::new();
        outputs.insert("executionsCount".into(), json!(executions));
        outputs.insert("logsCount".into(), json!(logs));
        outputs.insert("metricsCount".into(), json!(metrics));
        outputs.insert("storagesCount".into(), json!(storages));
        outputs.insert("taskOutputsCount".into(), json!(0));
        Ok(TaskOutput::with_outputs(outputs))
    }
}

/// Whether an execution waits on a Pause.
fn is_paused(e: &Execution) -> bool {
    e.state.current() == StateType::Paused
        || e.task_run_list
            .iter()
            .any(|r| r.state.current() == StateType::Paused)
}

#[async_trait]
impl RunnableTask for ExecutionResume {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let (current_ns, current_flow) = current_flow(ctx);
        let namespace = render_opt(ctx, &self.namespace)?;
        let flow_id = render_opt(ctx, &self.flow_id)?;
        let execution_id = render_opt(ctx, &self.execution_id)?;
        let services = ctx.services()?.clone();
        let tenant = ctx.tenant().to_string();
        let id = match (&execution_id, &namespace, &flow_id) {
            (Some(id), _, _) => id.clone(),
            // The latest paused execution of that flow.
            (None, Some(ns), Some(flow)) => {
                let query = ExecutionQuery {
                    tenant_id: Some(tenant.clone()),
                    namespace: Some(ns.clone()),
                    flow_id: Some(flow.clone()),
                    states: vec![StateType::Paused],
                    ..ExecutionQuery::default()
                };
                let mut paused: Vec<Execution> = services
                    .executions(&query, 100)
                    .await?
                    .into_iter()
                    .filter(|e| &e.namespace == ns)
                    .collect();
                paused.sort_by_key(|e| e.state.start_date());
                paused
                    .pop()
                    .ok_or_else(|| {
                        TaskError::Failed(format!("no paused execution of flow {ns}.{flow}"))
                    })?
                    .id
            }
            _ => ctx.identity().execution_id.clone(),
        };
        let namespace = namespace.unwrap_or(current_ns);
        let flow_id = flow_id.unwrap_or(current_flow);
        // The repository may lag the queue (Kafka + Elasticsearch): wait a little for the pause.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        let execution = loop {
            let found = services.execution(&tenant, &id).await?;
            match found {
                Some(e) if is_paused(&e) => break e,
                other if tokio::time::Instant::now() >= deadline => {
                    return Err(TaskError::Failed(match other {
                        None => format!("no execution found for execution id {id}"),
                        Some(e) => {
                            format!("execution {id} is not paused (it is {})", e.state.current())
                        }
                    }));
                }
                _ => tokio::time::sleep(std::time::Duration::from_millis(100)).await,
            }
        };
        if execution.namespace != namespace || execution.flow_id != flow_id {
            return Err(TaskError::Failed(format!(
                "execution {id} is of flow {}.{}, not {namespace}.{flow_id}",
                execution.namespace, execution.flow_id
            )));
        }
        let mut inputs = Map::new();
        for (k, v) in self.inputs.iter().flatten() {
            inputs.insert(k.clone(), ctx.render_value(v, true)?);
        }
        services.resume(&id, inputs).await?;
        ctx.logger()
            .info(format!("resumed execution {id} ({namespace}.{flow_id})"));
        Ok(TaskOutput::empty())
    }
}

#[async_trait]
impl RunnableTask for TriggerToggle {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let (current_ns, current_flow) = current_flow(ctx);
        let namespace = render_opt(ctx, &self.namespace)?.unwrap_or(current_ns);
        let flow_id = render_opt(ctx, &self.flow_id)?.unwrap_or(current_flow);
        let trigger = ctx.render(&self.trigger)?;
        let enabled = ctx
            .render_opt_property("enabled", &self.enabled)?
            .unwrap_or(false);
        let services = ctx.services()?.clone();
        let tenant = ctx.tenant().to_string();
        let exists = services
            .flows(&tenant)
            .await?
            .iter()
            .any(|(ns, id)| ns == &namespace && id == &flow_id);
        if !exists {
            return Err(TaskError::Failed(format!(
                "unable to find flow {namespace}.{flow_id}"
            )));
        }
        services
            .set_trigger_enabled(&tenant, &namespace, &flow_id, &trigger, enabled)
            .await?;
        ctx.logger().info(format!(
            "trigger {namespace}.{flow_id}.{trigger} {}",
            if enabled { "enabled" } else { "disabled" }
        ));
        Ok(TaskOutput::empty())
    }
}
