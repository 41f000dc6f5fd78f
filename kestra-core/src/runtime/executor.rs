//! The executor service: feeds [`process`](fn@crate::executor::process::process) from the queue's units of work.
//!
//! Each loop claims a batch of messages (executions, commands, worker results) in one
//! [`UnitOfWork`], processes them in order (per execution, the queue hands
//! them out in publish order), saves the executions that changed, stages every emitted message, and
//! commits - all or nothing. A malformed message is dead-lettered and the loop goes on.
//!
//! Around `process`, inside the same unit of work, the service also:
//! - completes Subflow requests: resolves the child flow revision ([`FlowCache::flow`]), validates
//!   the inputs and composes the labels, then publishes the child execution - or a failed
//!   [`SubflowExecutionResult`](crate::executor::SubflowExecutionResult) for the parent when that
//!   is impossible;
//! - publishes the result for the parent when a subflow child ends, `Kill` commands for the
//!   children of a killed Subflow task run, `Restart` commands for the failed children of a
//!   restarted ForEachItem, and new executions (CREATE_NEW_EXECUTION retries);
//! - applies flow concurrency requests to the slots kept in executor state
//!   ([`crate::executor::concurrency`]) and processes the resulting `Start` /
//!   `ConcurrencyLimited` command right away; freed slots start the oldest queued executions;
//! - when an execution ends (or pauses), starts the flows whose Flow trigger it fires
//!   ([`crate::executor::flow_trigger`]); triggers with several precondition conditions keep their
//!   results in executor state ([`crate::executor::preconditions`]), locked by the unit of work.
//!
//! Refused units ([`UnitOutcome`]):
//! - [`QueueError::Fenced`] (this instance is a zombie: another one owns the messages now): the
//!   unit's work is dropped without backoff or error, the new owner processes the messages again.
//! - [`QueueError::TooLarge`] (a message it staged, or an execution it saved, is over the queue's
//!   maximum size): the unit is dropped and the execution whose processing produced that message is
//!   remembered; when its messages come back (here, or on another executor, which finds the same
//!   refusal) it is FAILED instead - from its last committed state, with its unfinished task runs
//!   FAILED, a kill broadcast, an ERROR log naming the topic, key and size, its parent's result and
//!   its Flow triggers - so the queue never stalls on it. If even that is refused, its messages are
//!   dead-lettered with the reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info_span, warn};

use crate::executor::concurrency::{self, ConcurrencySlots, SlotRequest, apply_slot_request};
use crate::executor::flow_trigger::plan_flow_triggers;
use crate::executor::messages::{
    ExecutionCommand, ExecutionKilled, ExecutorEvent, WorkerJob, execution_envelope,
};
use crate::executor::preconditions::{self, PreconditionState};
use crate::executor::process::process;
use crate::executor::subflow::{SubflowRequest, complete_child, result_for_parent};
use crate::expression::ExpressionEngine;
use crate::inputs::{ExecutionRef, RawInput, resolve_inputs};
use crate::model::{Execution, Level, LogEntry, StateType};
use crate::queue::{ConsumerGroup, Envelope, Queue, QueueError, Topic, UnitOfWork};
use crate::runtime::flows::{FlowCache, FlowCacheError};

/// Executor settings.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Messages claimed per unit of work.
    pub batch_size: usize,
    /// How long one `begin` waits for messages before looping (shutdown latency).
    pub poll_wait: Duration,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            batch_size: 200,
            poll_wait: Duration::from_millis(500),
        }
    }
}

/// The topics the executor consumes.
pub const EXECUTOR_TOPICS: &[Topic] = &[
    Topic::Execution,
    Topic::ExecutionCommand,
    Topic::WorkerTaskResult,
    Topic::SubflowExecutionResult,
];

/// The executor service.
pub struct ExecutorService {
    queue: Arc<dyn Queue>,
    flows: Arc<FlowCache>,
    expr: Arc<ExpressionEngine>,
    config: ExecutorConfig,
    /// Executions whose processing produced a message the queue refused as too large.
    oversized: Mutex<HashMap<String, Oversized>>,
}

/// What became of a unit of work handed to [`ExecutorService::handle_unit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitOutcome {
    /// Committed.
    Committed,
    /// Refused with [`QueueError::Fenced`]: nothing was applied, the instance that owns the
    /// messages now processes them again.
    Fenced,
    /// Refused with [`QueueError::TooLarge`]: nothing was applied; the execution that produced the
    /// oversized message fails when its messages come back.
    TooLarge,
}

/// An execution that produced an oversized message: fail it, or (if failing it was refused too)
/// dead-letter its messages. Both carry the error message.
#[derive(Debug, Clone)]
enum Oversized {
    Fail(String),
    Abandon(String),
}

impl ExecutorService {
    /// An executor over `queue`, reading flows from `flows`.
    pub fn new(
        queue: Arc<dyn Queue>,
        flows: Arc<FlowCache>,
        expr: Arc<ExpressionEngine>,
        config: ExecutorConfig,
    ) -> Self {
        ExecutorService {
            queue,
            flows,
            expr,
            config,
            oversized: Mutex::new(HashMap::new()),
        }
    }

    /// Run until `shutdown` is cancelled, then drain: keep processing until no message is due, so
    /// that results published by a draining worker are still applied. Backend errors are logged and
    /// retried with a backoff.
    pub async fn run(self, shutdown: CancellationToken) {
        // Flow changes (broadcast) invalidate the cached list of flows with triggers.
        let watcher = {
            let queue = self.queue.clone();
            let flows = self.flows.clone();
            let stop = shutdown.clone();
            tokio::spawn(async move {
                use futures::StreamExt;
                let Ok(mut changes) = queue.subscribe(Topic::Flow).await else {
                    warn!(
                        "cannot follow flow changes; flow triggers see new flows within a second"
                    );
                    return;
                };
                loop {
                    tokio::select! {
                        _ = stop.cancelled() => return,
                        next = changes.next() => match next {
                            Some(_) => flows.invalidate_trigger_flows(),
                            None => return,
                        },
                    }
                }
            })
        };
        self.run_loop(shutdown).await;
        watcher.abort();
    }

    async fn run_loop(&self, shutdown: CancellationToken) {
        let mut backoff = Duration::from_millis(50);
        loop {
            let draining = shutdown.is_cancelled();
            // The claim is never abandoned half-way (a dropped `begin` could leave rows locked by an
            // unfinished transaction, which a draining executor would then skip): shutdown is
            // noticed between claims, within `poll_wait`.
            let wait = if draining {
                Duration::ZERO
            } else {
                self.config.poll_wait
            };
            let begin = self
                .queue
                .begin(
                    ConsumerGroup::Executor,
                    EXECUTOR_TOPICS,
                    self.config.batch_size,
                    wait,
                )
                .await;
            let result = match begin {
                Ok(None) if draining => return,
                Ok(None) => continue,
                Ok(Some(unit)) => self.handle_unit(unit).await,
                Err(e) => Err(e),
            };
            match result {
                Ok(_) => backoff = Duration::from_millis(50),
                Err(e) => {
                    error!(error = %e, "executor unit of work failed; retrying");
                    if draining {
                        return;
                    }
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Process one unit of work and commit it. A fenced or too-large refusal is handled (see the
    /// module documentation) and reported as its [`UnitOutcome`]; other errors are returned (the
    /// unit was dropped: its messages come back).
    pub async fn handle_unit(&self, unit: Box<dyn UnitOfWork>) -> Result<UnitOutcome, QueueError> {
        let oversized = self
            .oversized
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        let mut produced: Vec<(Topic, String, String)> = Vec::new();
        match self.process_unit(unit, &oversized, &mut produced).await {
            Ok(()) => {
                if !oversized.is_empty() {
                    let mut map = self
                        .oversized
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner);
                    map.retain(|id, o| {
                        matches!(o, Oversized::Abandon(_))
                            || !produced.iter().any(|(_, _, origin)| origin == id)
                    });
                }
                Ok(UnitOutcome::Committed)
            }
            Err(QueueError::Fenced { detail }) => {
                warn!(%detail, "unit of work fenced: its messages belong to another executor now; its work is dropped");
                Ok(UnitOutcome::Fenced)
            }
            Err(QueueError::TooLarge {
                topic,
                key,
                size,
                max,
            }) => {
                let Some(id) = produced
                    .iter()
                    .find(|(t, k, _)| *t == topic && *k == key)
                    .map(|(_, _, id)| id.clone())
                else {
                    return Err(QueueError::TooLarge {
                        topic,
                        key,
                        size,
                        max,
                    });
                };
                let message = format!(
                    "execution failed: a message it produced is too large for the queue \
                     (topic {topic}, key {key}, {size} bytes, maximum {max} bytes)"
                );
                error!(execution_id = %id, "{message}");
                let mut map = self
                    .oversized
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let next = match map.get(&id) {
                    None => Oversized::Fail(message),
                    Some(Oversized::Fail(first) | Oversized::Abandon(first)) => Oversized::Abandon(
                        format!("{first}; failing the execution was refused too ({message})"),
                    ),
                };
                map.insert(id, next);
                Ok(UnitOutcome::TooLarge)
            }
            Err(e) => Err(e),
        }
    }

    /// The work of [`ExecutorService::handle_unit`]: `produced` receives (topic, key, execution
    /// id) of every message staged and execution saved, so a refusal can be traced to the
    /// execution that produced it; the executions of `oversized` are failed (or dead-lettered).
    async fn process_unit(
        &self,
        mut unit: Box<dyn UnitOfWork>,
        oversized: &HashMap<String, Oversized>,
        produced: &mut Vec<(Topic, String, String)>,
    ) -> Result<(), QueueError> {
        let deliveries = unit.deliveries().to_vec();
        let mut executions: HashMap<String, Option<Execution>> = HashMap::new();
        let mut dirty: Vec<String> = Vec::new();
        let mut outgoing: Vec<Envelope> = Vec::new();
        for delivery in deliveries {
            let event = match ExecutorEvent::decode(&delivery.envelope) {
                Ok(e) => e,
                Err(e) => {
                    warn!(topic = %delivery.envelope.topic, key = %delivery.envelope.key, error = %e, "dead-lettering malformed message");
                    unit.dead_letter(delivery.tag, &e.to_string()).await?;
                    continue;
                }
            };
            let id = event.execution_id().to_string();
            let span = info_span!("executor.process", execution_id = %id, topic = %delivery.envelope.topic);
            let staged_before = outgoing.len();
            match oversized.get(&id) {
                None => {}
                Some(Oversized::Abandon(reason)) => {
                    error!(execution_id = %id, %reason, "dead-lettering a message of an execution that cannot be saved");
                    unit.dead_letter(delivery.tag, reason).await?;
                    continue;
                }
                Some(Oversized::Fail(reason)) => {
                    if !executions.contains_key(&id) {
                        let loaded = unit.load_execution(&id).await?;
                        executions.insert(id.clone(), loaded);
                    }
                    let current = executions.get(&id).cloned().flatten();
                    let reference = current.or_else(|| match &event {
                        ExecutorEvent::Execution(e) => Some((**e).clone()),
                        _ => None,
                    });
                    if let Some(reference) = reference
                        && let Some((failed, messages)) = fail_oversized(&reference, reason)?
                    {
                        outgoing.extend(messages);
                        for e in self.flow_triggered(unit.as_mut(), &failed).await? {
                            outgoing.push(execution_envelope(&e)?);
                        }
                        executions.insert(id.clone(), Some(failed));
                        if !dirty.contains(&id) {
                            dirty.push(id.clone());
                        }
                    }
                    for e in &outgoing[staged_before..] {
                        produced.push((e.topic, e.key.clone(), id.clone()));
                    }
                    continue;
                }
            }
            async {
                if !executions.contains_key(&id) {
                    let loaded = unit.load_execution(&id).await?;
                    executions.insert(id.clone(), loaded);
                }
                let current = executions.get(&id).cloned().flatten();
                let Some(reference) = current.clone().or_else(|| match &event {
                    ExecutorEvent::Execution(e) => Some((**e).clone()),
                    _ => None,
                }) else {
                    debug!("event for an unknown execution; dropped");
                    return Ok::<(), QueueError>(());
                };
                let restart = matches!(
                    &event,
                    ExecutorEvent::Command(ExecutionCommand::Restart { .. })
                );
                if !restart && current.as_ref().is_some_and(|c| c.state.is_terminated()) {
                    debug!("event for a terminated execution; dropped");
                    return Ok(());
                }
                let index = match self
                    .flows
                    .index(
                        &reference.tenant_id,
                        &reference.namespace,
                        &reference.flow_id,
                        reference.flow_revision,
                    )
                    .await
                {
                    Ok(i) => i,
                    // A backend failure is transient: roll the unit back, it is delivered again.
                    Err(FlowCacheError::Source(e)) => {
                        return Err(QueueError::backend("load the flow of an execution", e));
                    }
                    Err(e) => {
                        // The execution cannot run (its flow revision is missing or invalid): fail
                        // it with a visible reason, and tell its parent, if any, that it ended.
                        if let Some((failed, messages)) = fail_unrunnable(&reference, &e)? {
                            outgoing.extend(messages);
                            executions.insert(id.clone(), Some(failed));
                            if !dirty.contains(&id) {
                                dirty.push(id.clone());
                            }
                        }
                        return Ok(());
                    }
                };
                let was_terminated = current.as_ref().is_some_and(|c| c.state.is_terminated());
                let previous_state = current.as_ref().map(|c| c.state.current());
                let previous_history = current.as_ref().map_or(0, |c| c.state.histories().len());
                let mut current = current;
                let mut pending = vec![event];
                while let Some(event) = pending.pop() {
                    let Some(outcome) =
                        process(&index, &self.expr, Utc::now(), current.clone(), &event)
                    else {
                        break;
                    };
                    if let Some(reason) = &outcome.ignored {
                        debug!(%reason, "event ignored");
                    }
                    for task in outcome.worker_tasks {
                        outgoing.push(WorkerJob::Task(Box::new(task)).envelope()?);
                    }
                    for delay in outcome.delays {
                        outgoing.push(delay.command.envelope()?.delayed_until(delay.at));
                    }
                    if outcome.kill_broadcast {
                        outgoing.push(
                            ExecutionKilled {
                                execution_id: id.clone(),
                            }
                            .envelope()?,
                        );
                    }
                    for log in &outcome.logs {
                        outgoing.push(Envelope::json(Topic::Log, &id, log)?);
                    }
                    for child in &outcome.kill_executions {
                        outgoing.push(
                            ExecutionCommand::Kill {
                                execution_id: child.clone(),
                            }
                            .envelope()?,
                        );
                    }
                    for child in &outcome.restart_executions {
                        outgoing.push(
                            ExecutionCommand::Restart {
                                execution_id: child.clone(),
                            }
                            .envelope()?,
                        );
                    }
                    for next in &outcome.new_executions {
                        outgoing.push(execution_envelope(next)?);
                    }
                    for request in &outcome.subflow_requests {
                        outgoing.push(self.subflow_envelope(request).await?);
                    }
                    if outcome.slot != SlotRequest::None
                        && let Some(limit) = &index.flow.concurrency
                    {
                        let key = concurrency::state_key(
                            &outcome.execution.tenant_id,
                            &outcome.execution.namespace,
                            &outcome.execution.flow_id,
                        );
                        let mut slots: ConcurrencySlots =
                            match unit.load_state(concurrency::STATE_KIND, &key).await? {
                                Some(v) => serde_json::from_value(v).unwrap_or_default(),
                                None => ConcurrencySlots::default(),
                            };
                        let decision = apply_slot_request(&mut slots, outcome.slot, &id, limit);
                        if decision.changed {
                            let value = serde_json::to_value(&slots).map_err(|source| {
                                QueueError::Encode {
                                    topic: Topic::ExecutionCommand,
                                    source,
                                }
                            })?;
                            unit.save_state(concurrency::STATE_KIND, &key, Some(&value))
                                .await?;
                        }
                        for start in decision.start {
                            outgoing.push(start.envelope()?);
                        }
                        if let Some(follow_up) = decision.follow_up {
                            pending.push(ExecutorEvent::Command(follow_up));
                        }
                    }
                    if outcome.changed {
                        current = Some(outcome.execution.clone());
                        executions.insert(id.clone(), Some(outcome.execution));
                        if !dirty.contains(&id) {
                            dirty.push(id.clone());
                        }
                    }
                }
                // Ended in this unit: it was running, or a restart in this unit already ended it
                // again (e.g. refused by a concurrency limit): its parent waits for the result.
                let ended_again = was_terminated
                    && current
                        .as_ref()
                        .is_some_and(|c| c.state.histories().len() > previous_history);
                if (!was_terminated || ended_again)
                    && let Some(result) = current.as_ref().and_then(result_for_parent)
                {
                    outgoing.push(result.envelope()?);
                }
                if let Some(now) = current.as_ref()
                    && Some(now.state.current()) != previous_state
                    && (now.state.is_terminated() || now.state.current() == StateType::Paused)
                {
                    for e in self.flow_triggered(unit.as_mut(), now).await? {
                        outgoing.push(execution_envelope(&e)?);
                    }
                }
                Ok(())
            }
            .instrument(span)
            .await?;
            for e in &outgoing[staged_before..] {
                produced.push((e.topic, e.key.clone(), id.clone()));
            }
        }
        for id in &dirty {
            produced.push((Topic::Execution, id.clone(), id.clone()));
        }
        for id in &dirty {
            if let Some(Some(e)) = executions.get(id) {
                unit.save_execution(e).await?;
            }
        }
        if !outgoing.is_empty() {
            unit.publish(outgoing).await?;
        }
        unit.commit().await
    }
}

impl ExecutorService {
    /// Executions started by Flow triggers because `ended` reached its state (inputs resolved; a
    /// trigger whose inputs are invalid is skipped with a warning). Triggers with several
    /// precondition conditions read and update their state in `unit` (locked until it commits).
    async fn flow_triggered(
        &self,
        unit: &mut dyn UnitOfWork,
        ended: &Execution,
    ) -> Result<Vec<Execution>, QueueError> {
        let flows = match self.flows.flows_with_triggers(&ended.tenant_id).await {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "cannot list flows with triggers; flow triggers skipped");
                return Ok(Vec::new());
            }
        };
        if flows.is_empty() {
            return Ok(Vec::new());
        }
        let plan = plan_flow_triggers(ended, &flows, self.flows.registry(), &self.expr, Utc::now());
        for p in &plan.problems {
            warn!(execution_id = %ended.id, "flow trigger: {p}");
        }
        let mut triggered = plan.ready;
        for pending in plan.pending {
            let stored: Option<PreconditionState> = unit
                .load_state(preconditions::STATE_KIND, &pending.key)
                .await?
                .and_then(|v| match serde_json::from_value(v) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        warn!(key = %pending.key, error = %e, "unreadable precondition state; starting over");
                        None
                    }
                });
            let decision = preconditions::apply(stored, &pending.check, plan.at);
            if let Some(why) = &decision.skipped {
                debug!(key = %pending.key, %why, "precondition not counted");
            }
            if decision.changed {
                let value = decision
                    .state
                    .as_ref()
                    .map(serde_json::to_value)
                    .transpose()
                    .map_err(|source| QueueError::Encode {
                        topic: Topic::Execution,
                        source,
                    })?;
                unit.save_state(preconditions::STATE_KIND, &pending.key, value.as_ref())
                    .await?;
            }
            if decision.fire {
                triggered.push(pending.triggered);
            }
        }
        let mut out = Vec::new();
        for t in triggered {
            let mut execution = t.execution;
            let flow = match self
                .flows
                .flow(
                    &execution.tenant_id,
                    &execution.namespace,
                    &execution.flow_id,
                    Some(execution.flow_revision),
                )
                .await
            {
                Ok(f) => f,
                Err(e) => {
                    warn!(error = %e, "flow trigger: flow vanished");
                    continue;
                }
            };
            let raw = t
                .inputs
                .into_iter()
                .map(|(k, v)| (k, RawInput::Json(v)))
                .collect();
            match resolve_inputs(
                &flow,
                raw,
                ExecutionRef::of(&execution),
                None,
                self.expr.as_ref(),
            )
            .await
            {
                Ok(inputs) => execution.inputs = inputs,
                Err(e) => {
                    warn!(flow = %flow.id, namespace = %flow.namespace, "flow trigger: invalid inputs: {e}");
                    continue;
                }
            }
            debug!(triggered = %execution.id, flow = %flow.id, "flow trigger fired");
            out.push(execution);
        }
        Ok(out)
    }

    /// The child execution of a Subflow request, or a failed result for its parent.
    async fn subflow_envelope(&self, request: &SubflowRequest) -> Result<Envelope, QueueError> {
        let child = &request.execution;
        let failure = |message: String| {
            warn!(child = %child.id, %message, "subflow execution not created");
            request.failure(message).envelope()
        };
        let flow = match self
            .flows
            .flow(
                &child.tenant_id,
                &child.namespace,
                &child.flow_id,
                request.revision,
            )
            .await
        {
            Ok(f) => f,
            Err(FlowCacheError::Source(e)) => {
                return Err(QueueError::backend("load the flow of a subflow", e));
            }
            Err(e) => return failure(e.to_string()),
        };
        if flow.disabled {
            return failure(format!(
                "flow {}.{} is disabled",
                child.namespace, child.flow_id
            ));
        }
        let mut execution = complete_child(request, &flow);
        let raw = request
            .inputs
            .iter()
            .map(|(k, v)| (k.clone(), RawInput::Json(v.clone())))
            .collect();
        match resolve_inputs(
            &flow,
            raw,
            ExecutionRef::of(&execution),
            None,
            self.expr.as_ref(),
        )
        .await
        {
            Ok(inputs) => execution.inputs = inputs,
            Err(e) => return failure(format!("invalid inputs: {e}")),
        }
        execution_envelope(&execution)
    }
}

/// An execution whose flow revision cannot run (missing, or not indexable): the execution FAILED
/// with the reason, and the messages that tell the world: an ERROR log line and, for a subflow
/// child, the result its parent waits for. `None` when the execution cannot move to FAILED.
fn fail_unrunnable(
    execution: &Execution,
    reason: &FlowCacheError,
) -> Result<Option<(Execution, Vec<Envelope>)>, QueueError> {
    let mut failed = execution.clone();
    if failed.state.transition(StateType::Failed).is_err() {
        return Ok(None);
    }
    let mut messages = vec![log_envelope(
        &failed,
        &format!("execution failed: {reason}"),
    )?];
    if let Some(result) = result_for_parent(&failed) {
        messages.push(result.envelope()?);
    }
    Ok(Some((failed, messages)))
}

/// An execution whose processing produced a message too large for the queue, failed from
/// `execution` (its last committed state): the execution and its unfinished task runs FAILED, and
/// the messages that tell the world: a kill broadcast (its running attempts stop), an ERROR log
/// with `reason` and, for a subflow child, its parent's result. `None` when it already ended.
fn fail_oversized(
    execution: &Execution,
    reason: &str,
) -> Result<Option<(Execution, Vec<Envelope>)>, QueueError> {
    let mut failed = execution.clone();
    if failed.state.transition(StateType::Failed).is_err() {
        return Ok(None);
    }
    for task_run in failed.task_run_list.iter_mut() {
        if !task_run.state.is_terminated() {
            // Unfinished task runs end with their execution (a refused transition keeps its state).
            let _ = task_run.state.transition(StateType::Failed);
        }
    }
    let mut messages = vec![
        ExecutionKilled {
            execution_id: failed.id.clone(),
        }
        .envelope()?,
        log_envelope(&failed, reason)?,
    ];
    if let Some(result) = result_for_parent(&failed) {
        messages.push(result.envelope()?);
    }
    Ok(Some((failed, messages)))
}

fn log_envelope(execution: &Execution, message: &str) -> Result<Envelope, QueueError> {
    let entry = LogEntry {
        tenant_id: execution.tenant_id.clone(),
        namespace: execution.namespace.clone(),
        flow_id: execution.flow_id.clone(),
        task_id: None,
        execution_id: Some(execution.id.clone()),
        task_run_id: None,
        attempt_number: None,
        trigger_id: None,
        timestamp: Utc::now(),
        level: Level::Error,
        thread: Some("executor".into()),
        message: message.to_string(),
    };
    Envelope::json(Topic::Log, &execution.id, &entry)
}

#[cfg(test)]
mod tests {
    use serde_json::{Map, json};

    use super::*;
    use crate::executor::subflow::SUBFLOW_TRIGGER_TYPE;
    use crate::model::ExecutionTrigger;

    fn not_found() -> FlowCacheError {
        FlowCacheError::NotFound {
            namespace: "tests".into(),
            id: "gone".into(),
            revision: Some(3),
        }
    }

    #[test]
    fn an_unrunnable_subflow_child_fails_and_answers_its_parent() -> Result<(), QueueError> {
        let mut child = Execution::new("tests", "gone", 3);
        child.parent_id = Some("parent-1".into());
        let mut variables = Map::new();
        variables.insert("taskRunId".into(), json!("taskrun-9"));
        child.trigger = Some(ExecutionTrigger {
            id: "call".into(),
            type_: SUBFLOW_TRIGGER_TYPE.into(),
            variables,
        });
        let Some((failed, messages)) = fail_unrunnable(&child, &not_found())? else {
            panic!("a CREATED execution can fail");
        };
        assert_eq!(failed.state.current(), StateType::Failed);
        let log = messages
            .iter()
            .find(|m| m.topic == Topic::Log)
            .map(|m| m.decode::<LogEntry>())
            .transpose()?;
        let log = log.map(|l| l.message).unwrap_or_default();
        assert!(
            log.contains("flow tests.gone revision Some(3) not found"),
            "{log}"
        );
        let result = messages
            .iter()
            .find(|m| m.topic == Topic::SubflowExecutionResult)
            .map(|m| m.decode::<crate::executor::messages::SubflowExecutionResult>())
            .transpose()?;
        let Some(result) = result else {
            panic!("no result for the parent in {messages:?}");
        };
        assert_eq!(result.parent_execution_id, "parent-1");
        assert_eq!(result.parent_task_run_id, "taskrun-9");
        assert_eq!(result.child_execution_id, child.id);
        assert_eq!(result.state, StateType::Failed);
        Ok(())
    }

    #[test]
    fn an_unrunnable_top_level_execution_only_fails() -> Result<(), QueueError> {
        let execution = Execution::new("tests", "gone", 3);
        let Some((failed, messages)) = fail_unrunnable(&execution, &not_found())? else {
            panic!("a CREATED execution can fail");
        };
        assert_eq!(failed.state.current(), StateType::Failed);
        assert_eq!(messages.len(), 1);
        assert_eq!(messages[0].topic, Topic::Log);
        // An execution that already ended cannot fail again.
        assert!(fail_unrunnable(&failed, &not_found())?.is_none());
        Ok(())
    }
}
