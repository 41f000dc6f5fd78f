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
//!   `ConcurrencyLimited` command right away; freed slots start the oldest queued executions.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info_span, warn};

use crate::executor::concurrency::{self, ConcurrencySlots, SlotRequest, apply_slot_request};
use crate::executor::flow_trigger::triggered_executions;
use crate::executor::messages::{
    ExecutionCommand, ExecutionKilled, ExecutorEvent, WorkerJob, execution_envelope,
};
use crate::executor::process::process;
use crate::executor::subflow::{SubflowRequest, complete_child, result_for_parent};
use crate::expression::ExpressionEngine;
use crate::inputs::{ExecutionRef, RawInput, resolve_inputs};
use crate::model::{Execution, Level, LogEntry, StateType};
use crate::queue::{ConsumerGroup, Envelope, Queue, QueueError, Topic, UnitOfWork};
use crate::runtime::flows::FlowCache;

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
                Ok(()) => backoff = Duration::from_millis(50),
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

    /// Process one unit of work and commit it.
    pub async fn handle_unit(&self, mut unit: Box<dyn UnitOfWork>) -> Result<(), QueueError> {
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
                    Err(e) => {
                        // The execution cannot run: fail it with a visible reason.
                        let mut failed = reference.clone();
                        if failed.state.transition(StateType::Failed).is_ok() {
                            outgoing
                                .push(log_envelope(&failed, &format!("execution failed: {e}"))?);
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
                if !was_terminated
                    && let Some(result) = current.as_ref().and_then(result_for_parent)
                {
                    outgoing.push(result.envelope()?);
                }
                if let Some(now) = current.as_ref()
                    && Some(now.state.current()) != previous_state
                    && (now.state.is_terminated() || now.state.current() == StateType::Paused)
                {
                    for e in self.flow_triggered(now).await {
                        outgoing.push(execution_envelope(&e)?);
                    }
                }
                Ok(())
            }
            .instrument(span)
            .await?;
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
    /// trigger whose inputs are invalid is skipped with a warning).
    async fn flow_triggered(&self, ended: &Execution) -> Vec<Execution> {
        let flows = match self.flows.flows_with_triggers(&ended.tenant_id).await {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "cannot list flows with triggers; flow triggers skipped");
                return Vec::new();
            }
        };
        if flows.is_empty() {
            return Vec::new();
        }
        let (triggered, problems) =
            triggered_executions(ended, &flows, self.flows.registry(), &self.expr);
        for p in problems {
            warn!(execution_id = %ended.id, "flow trigger: {p}");
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
        out
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
