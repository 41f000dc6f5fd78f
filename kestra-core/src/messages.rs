//! The messages the engine's components exchange through the [`Queue`](crate::queue::Queue), with the
//! topic and key each travels on. Every message *to the executor* that concerns an execution is keyed
//! by its id, so that all of them are processed in order by one executor. Worker jobs are keyed by
//! task run attempt ([`WorkerTask::key`]), so that the jobs of one execution spread over workers and
//! never wait for one another.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::flow::model::{ConcurrencyBehavior, Task, Trigger};
use crate::model::{Execution, State, StateType, TaskRun};
use crate::queue::{Envelope, QueueError, Topic};

/// A task attempt for a worker (topic [`Topic::WorkerJob`], key = [`WorkerTask::key`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTask {
    /// The task run, as the executor dispatched it (its last attempt is the one to run).
    pub task_run: TaskRun,
    /// The task definition (plugin defaults applied).
    pub task: Task,
    /// The expression context to render the task's properties with (flow, execution, taskrun,
    /// outputs, inputs, vars, ...).
    pub context: Value,
    /// Attempt number, from 1 (= `task_run.attempts.len()`).
    pub attempt: u32,
    /// Flow revision.
    pub flow_revision: i32,
}

/// What a worker receives: a task attempt (from the executor) or a polling-trigger evaluation (from
/// the scheduler).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum WorkerJob {
    /// Run one task attempt.
    Task(Box<WorkerTask>),
    /// Evaluate a polling trigger once.
    Trigger(Box<WorkerTrigger>),
}

impl WorkerTask {
    /// The job's queue key: `<task run id>/<attempt>` (Kestra keys a `WorkerTask` by its task run).
    ///
    /// Not the execution id: the queue hands out one message per key at a time, so a long task would
    /// hold back every other job of its execution. The attempt is part of it so that a new attempt
    /// (a retry, a restart) never waits behind the claim of an older one (a worker still stopping
    /// a killed attempt, or one that died holding it).
    pub fn key(&self) -> String {
        format!("{}/{}", self.task_run.id, self.attempt)
    }
}

impl WorkerJob {
    /// As a queue message keyed by task run attempt (a task, [`WorkerTask::key`]) or by trigger uid
    /// (a trigger).
    pub fn envelope(&self) -> Result<Envelope, QueueError> {
        match self {
            WorkerJob::Task(t) => Envelope::json(Topic::WorkerJob, t.key(), self),
            WorkerJob::Trigger(t) => Envelope::json(Topic::WorkerJob, t.uid(), self),
        }
    }
}

/// One evaluation of a polling trigger for a worker (topic [`Topic::WorkerJob`], key = trigger uid),
/// sent by the scheduler when the trigger is due (Kestra's `WorkerTrigger`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTrigger {
    /// Tenant.
    pub tenant_id: String,
    /// Flow namespace.
    pub namespace: String,
    /// Flow id.
    pub flow_id: String,
    /// Flow revision.
    pub flow_revision: i32,
    /// The trigger definition (plugin defaults applied).
    pub trigger: Trigger,
    /// The expression context to render the trigger's properties with (`flow`).
    pub context: Value,
    /// When the scheduler sent it: identifies the evaluation (a result for another date is stale).
    pub evaluation_date: DateTime<Utc>,
}

impl WorkerTrigger {
    /// The trigger's uid (`tenant_namespace_flow_trigger`).
    pub fn uid(&self) -> String {
        crate::model::trigger_uid(
            &self.tenant_id,
            &self.namespace,
            &self.flow_id,
            &self.trigger.id,
        )
    }
}

/// The result of one polling-trigger evaluation (topic [`Topic::WorkerTriggerResult`], key = trigger
/// uid), from a worker to the schedulers.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTriggerResult {
    /// Tenant.
    pub tenant_id: String,
    /// Flow namespace.
    pub namespace: String,
    /// Flow id.
    pub flow_id: String,
    /// Flow revision evaluated.
    pub flow_revision: i32,
    /// Trigger id.
    pub trigger_id: String,
    /// The evaluation this answers ([`WorkerTrigger::evaluation_date`]).
    pub evaluation_date: DateTime<Utc>,
    /// `Some`: start an execution with these `trigger` variables; `None`: nothing to start.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variables: Option<Map<String, Value>>,
    /// Why the evaluation failed (nothing is started).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Worker that evaluated it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
}

impl WorkerTriggerResult {
    /// The answer to `job` from `worker_id`, with neither variables nor error yet.
    pub fn answering(job: &WorkerTrigger, worker_id: Option<String>) -> WorkerTriggerResult {
        WorkerTriggerResult {
            tenant_id: job.tenant_id.clone(),
            namespace: job.namespace.clone(),
            flow_id: job.flow_id.clone(),
            flow_revision: job.flow_revision,
            trigger_id: job.trigger.id.clone(),
            evaluation_date: job.evaluation_date,
            variables: None,
            error: None,
            worker_id,
        }
    }

    /// The trigger's uid.
    pub fn uid(&self) -> String {
        crate::model::trigger_uid(
            &self.tenant_id,
            &self.namespace,
            &self.flow_id,
            &self.trigger_id,
        )
    }

    /// As a queue message keyed by the trigger uid.
    pub fn envelope(&self) -> Result<Envelope, QueueError> {
        Envelope::json(Topic::WorkerTriggerResult, self.uid(), self)
    }
}

/// What a worker says about one task attempt (topic [`Topic::WorkerTaskResult`], key = execution
/// id): RUNNING when it starts the attempt, then the attempt's final state. Both travel on the
/// execution's key, so the executor sees them in that order; it applies a RUNNING only to a task
/// run still waiting for a worker (CREATED, RETRYING, RESTARTED), and a final result whose RUNNING
/// never arrived still records RUNNING first (at the attempt's start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerTaskResult {
    /// Execution.
    pub execution_id: String,
    /// Task run.
    pub task_run_id: String,
    /// Attempt number the result is for (from 1); a result for another attempt is stale.
    pub attempt: u32,
    /// RUNNING (the worker started the attempt) or the attempt's final state (SUCCESS, WARNING,
    /// FAILED, KILLED).
    pub state: StateType,
    /// The attempt's own state history (RUNNING ... final; only RUNNING, with the worker's start
    /// date, in a RUNNING message).
    pub attempt_state: State,
    /// Outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Map<String, Value>>,
    /// Task runs created on the worker (children of a WorkingDirectory), final.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub child_task_runs: Vec<TaskRun>,
    /// Worker that ran it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
}

impl WorkerTaskResult {
    /// The RUNNING message for `job`: the worker `worker_id` started it at `attempt_state`'s date.
    pub fn running(job: &WorkerTask, attempt_state: State, worker_id: Option<String>) -> Self {
        WorkerTaskResult {
            execution_id: job.task_run.execution_id.clone(),
            task_run_id: job.task_run.id.clone(),
            attempt: job.attempt,
            state: StateType::Running,
            attempt_state,
            outputs: None,
            child_task_runs: Vec::new(),
            worker_id,
        }
    }

    /// As a queue message keyed by the execution id.
    pub fn envelope(&self) -> Result<Envelope, QueueError> {
        Envelope::json(Topic::WorkerTaskResult, &self.execution_id, self)
    }
}

/// A command or timer for the executor on one execution (topic [`Topic::ExecutionCommand`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "camelCase")]
pub enum ExecutionCommand {
    /// Kill the execution (running attempts stop, pending task runs end KILLED).
    Kill {
        /// Execution.
        execution_id: String,
    },
    /// A retry of a failed task run is due: start attempt `attempt`.
    RetryDue {
        /// Execution.
        execution_id: String,
        /// Task run to retry.
        task_run_id: String,
        /// The attempt to start (from 2).
        attempt: u32,
    },
    /// Restart a failed execution: failed task runs (and their parents) run again.
    Restart {
        /// Execution.
        execution_id: String,
    },
    /// Resume a paused execution: the given Pause task run (or every paused one) ends in SUCCESS,
    /// with `inputs` checked against its `onResume` declarations and exposed as output `onResume`.
    Resume {
        /// Execution.
        execution_id: String,
        /// The paused task run to resume (`None`: every paused task run).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        task_run_id: Option<String>,
        /// Values for the Pause's `onResume` inputs.
        #[serde(default, skip_serializing_if = "Map::is_empty")]
        inputs: Map<String, Value>,
    },
    /// Timer: a Pause's `pauseDuration` elapsed (ignored when the task run was resumed meanwhile).
    PauseElapsed {
        /// Execution.
        execution_id: String,
        /// The Pause task run.
        task_run_id: String,
    },
    /// Timer: the next iteration of a LoopUntil is due.
    LoopIterationDue {
        /// Execution.
        execution_id: String,
        /// The LoopUntil task run.
        task_run_id: String,
        /// The iteration to start (0-based).
        iteration: u32,
    },
    /// Timer: a flow `sla` of type MAX_DURATION is due (ignored when the execution has ended).
    SlaDue {
        /// Execution.
        execution_id: String,
        /// The SLA's `id`.
        sla_id: String,
    },
    /// Timer: the execution's `scheduleDate` is reached.
    ScheduledStart {
        /// Execution.
        execution_id: String,
    },
    /// A concurrency slot was granted (right away or when a slot freed): the CREATED or QUEUED
    /// execution starts.
    Start {
        /// Execution.
        execution_id: String,
    },
    /// The flow's concurrency limit is reached: the execution is QUEUED, CANCELLED or FAILED.
    ConcurrencyLimited {
        /// Execution.
        execution_id: String,
        /// The flow's `concurrency.behavior`.
        behavior: ConcurrencyBehavior,
    },
    /// Timer after a [`ExecutionCommand::Kill`]: broadcast the kill signal again while the
    /// execution is still KILLING (broadcasts are best effort). Ignored otherwise, so a stale
    /// repeat never kills the execution again after a restart.
    KillRepeat {
        /// Execution.
        execution_id: String,
    },
    /// The worker holding attempt `attempt` of a task run was declared dead (or an operator asked,
    /// `kestra sys resubmit`): that attempt ends RESUBMITTED and a new attempt is sent to the
    /// workers - unless the task run has already been resubmitted `max_resubmissions` times, when
    /// it fails instead. Ignored for an execution that ended or is being killed, and for an
    /// attempt that is not the task run's current, unfinished one (a stale resubmission).
    Resubmit {
        /// Execution.
        execution_id: String,
        /// The task run whose attempt is resubmitted.
        task_run_id: String,
        /// The attempt its dead worker held (from 1); `None`: the current one.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        attempt: Option<u32>,
        /// The dead worker (for the logs and the error), when known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker_id: Option<String>,
        /// How many resubmissions a task run may have before it fails ("killed N workers").
        max_resubmissions: u32,
    },
    /// Replace the execution's labels (the API's `POST /executions/{id}/labels`): its `system.*`
    /// labels stay, every other label is replaced by `labels` (whose `system.*` entries are
    /// ignored). Applied to running and ended executions alike; nothing else of the execution
    /// changes.
    SetLabels {
        /// Execution.
        execution_id: String,
        /// The new labels.
        labels: Vec<crate::model::Label>,
    },
}

impl ExecutionCommand {
    /// The execution concerned.
    pub fn execution_id(&self) -> &str {
        match self {
            ExecutionCommand::Kill { execution_id }
            | ExecutionCommand::RetryDue { execution_id, .. }
            | ExecutionCommand::Restart { execution_id }
            | ExecutionCommand::Resume { execution_id, .. }
            | ExecutionCommand::PauseElapsed { execution_id, .. }
            | ExecutionCommand::LoopIterationDue { execution_id, .. }
            | ExecutionCommand::SlaDue { execution_id, .. }
            | ExecutionCommand::ScheduledStart { execution_id }
            | ExecutionCommand::Start { execution_id }
            | ExecutionCommand::ConcurrencyLimited { execution_id, .. }
            | ExecutionCommand::KillRepeat { execution_id }
            | ExecutionCommand::Resubmit { execution_id, .. }
            | ExecutionCommand::SetLabels { execution_id, .. } => execution_id,
        }
    }

    /// As a queue message keyed by the execution id.
    pub fn envelope(&self) -> Result<Envelope, QueueError> {
        Envelope::json(Topic::ExecutionCommand, self.execution_id(), self)
    }
}

/// A kill signal broadcast to workers (topic [`Topic::ExecutionKilled`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionKilled {
    /// Execution whose running attempts must stop.
    pub execution_id: String,
    /// Only the attempt with this job key ([`WorkerTask::key`]): a stale copy of an attempt that
    /// was resubmitted (its job delivered again after its worker was declared dead), or an attempt
    /// a worker started after its execution ended (e.g. killed while its first worker died).
    /// `None`: every attempt of the execution, and its later jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempt: Option<String>,
}

impl ExecutionKilled {
    /// As a queue message keyed by the execution id.
    pub fn envelope(&self) -> Result<Envelope, QueueError> {
        Envelope::json(Topic::ExecutionKilled, &self.execution_id, self)
    }
}

/// A subflow execution ended: the result for the parent's Subflow task run (topic
/// [`Topic::SubflowExecutionResult`], key = the parent execution id).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SubflowExecutionResult {
    /// The parent execution.
    pub parent_execution_id: String,
    /// The parent's Subflow task run.
    pub parent_task_run_id: String,
    /// The child execution.
    pub child_execution_id: String,
    /// The child's final state.
    pub state: StateType,
    /// The child's flow outputs.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub outputs: Map<String, Value>,
    /// Why the child could not be created (the parent's task run then fails with this message).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For a ForEachItem child: its batch (from 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration: Option<u32>,
}

impl SubflowExecutionResult {
    /// As a queue message keyed by the parent execution id.
    pub fn envelope(&self) -> Result<Envelope, QueueError> {
        Envelope::json(
            Topic::SubflowExecutionResult,
            &self.parent_execution_id,
            self,
        )
    }
}

/// An event about a trigger for the schedulers (topic [`Topic::Trigger`], key = trigger uid,
/// consumed by [`ConsumerGroup::Scheduler`](crate::queue::ConsumerGroup::Scheduler)). The executor
/// sends it so that the scheduler never reads executions from the repository.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "camelCase")]
pub enum TriggerEvent {
    /// An execution started by a trigger ended: it no longer holds the trigger's lock, and its
    /// final state decides `stopAfter`.
    #[serde(rename_all = "camelCase")]
    ExecutionEnded {
        /// Tenant.
        tenant_id: String,
        /// Flow namespace.
        namespace: String,
        /// Flow id.
        flow_id: String,
        /// Trigger id in the flow.
        trigger_id: String,
        /// The execution that ended.
        execution_id: String,
        /// Its final state.
        state: StateType,
    },
}

impl TriggerEvent {
    /// The event for `execution`, which just ended, if a trigger that holds state in the
    /// scheduler (a schedule or a polling trigger) started it: not for executions of Flow or
    /// Webhook triggers, of subflow tasks, or started by hand.
    pub fn execution_ended(execution: &Execution) -> Option<TriggerEvent> {
        use crate::flow::registry::TriggerType;
        use crate::flow::triggers::{FlowTrigger as Flow, Webhook};
        let trigger = execution.trigger.as_ref()?;
        if execution.parent_id.is_some() || !execution.state.is_terminated() {
            return None;
        }
        let stateless = [Flow::TYPE, Webhook::TYPE]
            .into_iter()
            .chain(Flow::ALIASES.iter().copied())
            .chain(Webhook::ALIASES.iter().copied());
        if stateless.into_iter().any(|t| t == trigger.type_) {
            return None;
        }
        Some(TriggerEvent::ExecutionEnded {
            tenant_id: execution.tenant_id.clone(),
            namespace: execution.namespace.clone(),
            flow_id: execution.flow_id.clone(),
            trigger_id: trigger.id.clone(),
            execution_id: execution.id.clone(),
            state: execution.state.current(),
        })
    }

    /// The uid of the trigger the event is about.
    pub fn uid(&self) -> String {
        match self {
            TriggerEvent::ExecutionEnded {
                tenant_id,
                namespace,
                flow_id,
                trigger_id,
                ..
            } => crate::model::trigger_uid(tenant_id, namespace, flow_id, trigger_id),
        }
    }

    /// The tenant of the trigger.
    pub fn tenant_id(&self) -> &str {
        match self {
            TriggerEvent::ExecutionEnded { tenant_id, .. } => tenant_id,
        }
    }

    /// As a queue message keyed by the trigger uid.
    pub fn envelope(&self) -> Result<Envelope, QueueError> {
        Envelope::json(Topic::Trigger, self.uid(), self)
    }
}

/// A new execution to start (topic [`Topic::Execution`], key = its id).
pub fn execution_envelope(execution: &Execution) -> Result<Envelope, QueueError> {
    Envelope::json(Topic::Execution, &execution.id, execution)
}

/// A change of an execution for a repository written asynchronously (topic
/// [`Topic::ExecutionChange`], key = the execution id, consumed by the indexer).
///
/// Published only where the queue's unit of work does not itself write the row the repository
/// reads ([`QueueCapabilities::repository_in_unit`](crate::queue::QueueCapabilities) is false:
/// Kafka + Elasticsearch): the executor stages a `Saved` in the unit that saves the execution, so
/// the repository follows the executor's state exactly once per version; a delete through the API
/// reaches the indexer as a `Deleted` tombstone. On JDBC neither is published (no cost): the unit
/// writes the row, and a delete deletes it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionChange {
    /// The execution as the executor saved it (its `metadata.version` orders the changes: an
    /// older version never overwrites a newer one).
    Saved {
        /// The execution.
        execution: Box<Execution>,
    },
    /// A tombstone: the execution is deleted (and its logs and metrics, if asked).
    #[serde(rename_all = "camelCase")]
    Deleted {
        /// Tenant.
        tenant_id: String,
        /// The execution deleted.
        execution_id: String,
        /// Delete its logs too.
        delete_logs: bool,
        /// Delete its metrics too.
        delete_metrics: bool,
    },
}

impl ExecutionChange {
    /// The execution concerned (the message key).
    pub fn execution_id(&self) -> &str {
        match self {
            ExecutionChange::Saved { execution } => &execution.id,
            ExecutionChange::Deleted { execution_id, .. } => execution_id,
        }
    }

    /// As a queue message keyed by the execution id.
    pub fn envelope(&self) -> Result<Envelope, QueueError> {
        Envelope::json(Topic::ExecutionChange, self.execution_id(), self)
    }
}

/// A message the executor consumes, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum ExecutorEvent {
    /// A new execution (or a replacement, e.g. a restart prepared by the API).
    Execution(Box<Execution>),
    /// A command or timer.
    Command(ExecutionCommand),
    /// A worker's result.
    WorkerResult(Box<WorkerTaskResult>),
    /// A subflow execution ended.
    SubflowResult(Box<SubflowExecutionResult>),
}

impl ExecutorEvent {
    /// Decode a consumed message; `Err` means a malformed message to dead-letter.
    pub fn decode(envelope: &Envelope) -> Result<ExecutorEvent, QueueError> {
        match envelope.topic {
            Topic::Execution => Ok(ExecutorEvent::Execution(Box::new(envelope.decode()?))),
            Topic::ExecutionCommand => Ok(ExecutorEvent::Command(envelope.decode()?)),
            Topic::WorkerTaskResult => {
                Ok(ExecutorEvent::WorkerResult(Box::new(envelope.decode()?)))
            }
            Topic::SubflowExecutionResult => {
                Ok(ExecutorEvent::SubflowResult(Box::new(envelope.decode()?)))
            }
            other => Err(QueueError::UnknownTopic(format!(
                "executor does not consume {other}"
            ))),
        }
    }

    /// The execution concerned.
    pub fn execution_id(&self) -> &str {
        match self {
            ExecutorEvent::Execution(e) => &e.id,
            ExecutorEvent::Command(c) => c.execution_id(),
            ExecutorEvent::WorkerResult(r) => &r.execution_id,
            ExecutorEvent::SubflowResult(r) => &r.parent_execution_id,
        }
    }
}

/// A delayed executor command (retry due, ...) with the time it is due.
#[derive(Debug, Clone, PartialEq)]
pub struct Delay {
    /// When.
    pub at: DateTime<Utc>,
    /// What.
    pub command: ExecutionCommand,
}
