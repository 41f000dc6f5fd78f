//! The executor service: feeds [`process`](crate::executor::process) from the queue's units of work.
//!
//! Each loop claims a batch of messages (executions, commands, worker results) in one
//! [`UnitOfWork`](crate::queue::UnitOfWork), processes them in order (per execution, the queue hands
//! them out in publish order), saves the executions that changed, stages every emitted message, and
//! commits - all or nothing. A malformed message is dead-lettered and the loop goes on.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, error, info_span, warn};

use crate::executor::messages::{ExecutionKilled, ExecutorEvent, WorkerJob};
use crate::executor::process::process;
use crate::expression::ExpressionEngine;
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
        let mut backoff = Duration::from_millis(50);
        loop {
            let draining = shutdown.is_cancelled();
            let begin = if draining {
                self.queue
                    .begin(
                        ConsumerGroup::Executor,
                        EXECUTOR_TOPICS,
                        self.config.batch_size,
                        Duration::ZERO,
                    )
                    .await
            } else {
                tokio::select! {
                    _ = shutdown.cancelled() => continue,
                    b = self.queue.begin(ConsumerGroup::Executor, EXECUTOR_TOPICS, self.config.batch_size, self.config.poll_wait) => b,
                }
            };
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
                if current.as_ref().is_some_and(|c| c.state.is_terminated()) {
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
                let Some(outcome) = process(&index, &self.expr, Utc::now(), current, &event) else {
                    return Ok(());
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
                if outcome.changed {
                    executions.insert(id.clone(), Some(outcome.execution));
                    if !dirty.contains(&id) {
                        dirty.push(id.clone());
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
