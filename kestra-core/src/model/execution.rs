//! Executions and their task runs, in Kestra's JSON shape (SEMANTICS.md, "JSON shapes").

use super::id::new_id;
use super::state::{State, StateType};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// The tenant every entity belongs to until multi-tenancy arrives.
pub const DEFAULT_TENANT: &str = "main";

fn default_tenant() -> String {
    DEFAULT_TENANT.to_string()
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// A `{key, value}` label.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Label {
    /// Label key; keys starting `system.` are reserved.
    pub key: String,
    /// Label value.
    pub value: String,
}

impl Label {
    /// A label.
    pub fn new(key: impl Into<String>, value: impl Into<String>) -> Label {
        Label {
            key: key.into(),
            value: value.into(),
        }
    }
}

/// Label keys set by the system.
pub mod system_labels {
    /// Correlates an execution with the executions it started (subflows, ForEachItem).
    pub const CORRELATION_ID: &str = "system.correlationId";
    /// The user who created the execution.
    pub const USERNAME: &str = "system.username";
    /// Set on an execution restarted by a user.
    pub const RESTARTED: &str = "system.restarted";
    /// Set on a replay execution (its value is the original id).
    pub const REPLAY: &str = "system.replay";
    /// Set on an execution that has been replayed.
    pub const REPLAYED: &str = "system.replayed";
}

/// How an execution was started (`trigger` of an execution).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
pub struct ExecutionTrigger {
    /// Trigger id (for a subflow child: the parent's task id).
    pub id: String,
    /// Trigger type, e.g. `io.kestra.plugin.core.trigger.Schedule`.
    #[serde(rename = "type")]
    pub type_: String,
    /// Variables exposed as `trigger.*` (e.g. `date`, `executionId`, `body`).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub variables: Map<String, Value>,
}

/// Execution metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ExecutionMetadata {
    /// Incremented by each restart.
    pub attempt_number: u32,
    /// When the first attempt of this execution was created.
    pub original_created_date: DateTime<Utc>,
    /// Version of this document: 0 until the executor first saves it, then one more at each save
    /// of the executor's unit of work. A repository written asynchronously (by the indexer, from
    /// [`ExecutionChange`](crate::messages::ExecutionChange) messages) never lets an older version
    /// overwrite a newer one ([`ExecutionRepository::save`](crate::repository::ExecutionRepository::save)).
    #[serde(default)]
    pub version: u64,
}

/// Kind of execution (`NORMAL` unless it is a test or playground run).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default, schemars::JsonSchema,
)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionKind {
    /// A normal execution.
    #[default]
    Normal,
    /// A test run (`kestra flow test`).
    Test,
    /// A playground run.
    Playground,
}

/// One attempt of a task run (one job on a worker).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRunAttempt {
    /// The attempt's state.
    pub state: State,
    /// Storage URI of the attempt's log file, when `logToFile`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
    /// Worker that ran the attempt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_id: Option<String>,
}

/// One run of a task inside an execution (a loop body creates one per value).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskRun {
    /// Task run id (base62).
    pub id: String,
    /// Tenant.
    #[serde(default = "default_tenant")]
    pub tenant_id: String,
    /// Execution it belongs to.
    pub execution_id: String,
    /// Flow namespace.
    pub namespace: String,
    /// Flow id.
    pub flow_id: String,
    /// Task id in the flow.
    pub task_id: String,
    /// Parent flowable's task run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_task_run_id: Option<String>,
    /// Loop value (ForEach), always a string.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Iteration (LoopUntil, ForEachItem).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iteration: Option<u32>,
    /// Attempts, oldest first.
    #[serde(default)]
    pub attempts: Vec<TaskRunAttempt>,
    /// Outputs of the task run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outputs: Option<Map<String, Value>>,
    /// State.
    pub state: State,
    /// Created at run time by a flowable rather than declared.
    #[serde(default, skip_serializing_if = "is_false")]
    pub dynamic: bool,
}

impl TaskRun {
    /// A new CREATED task run of `task_id` in `execution`.
    pub fn new(execution: &Execution, task_id: impl Into<String>) -> TaskRun {
        TaskRun {
            id: new_id(),
            tenant_id: execution.tenant_id.clone(),
            execution_id: execution.id.clone(),
            namespace: execution.namespace.clone(),
            flow_id: execution.flow_id.clone(),
            task_id: task_id.into(),
            parent_task_run_id: None,
            value: None,
            iteration: None,
            attempts: Vec::new(),
            outputs: None,
            state: State::new(),
            dynamic: false,
        }
    }

    /// Current state.
    pub fn current(&self) -> StateType {
        self.state.current()
    }
}

/// One run of a flow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Execution {
    /// Execution id (22-char base62).
    pub id: String,
    /// Tenant.
    #[serde(default = "default_tenant")]
    pub tenant_id: String,
    /// Flow namespace.
    pub namespace: String,
    /// Flow id.
    pub flow_id: String,
    /// Flow revision the execution runs.
    pub flow_revision: i32,
    /// Labels (system ones included).
    #[serde(default)]
    pub labels: Vec<Label>,
    /// Validated inputs.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub inputs: Map<String, Value>,
    /// Flow outputs by id (set when the execution ends).
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub outputs: Map<String, Value>,
    /// Flow variables at creation.
    #[serde(default, skip_serializing_if = "Map::is_empty")]
    pub variables: Map<String, Value>,
    /// State.
    pub state: State,
    /// Task runs in creation order.
    #[serde(default)]
    pub task_run_list: Vec<TaskRun>,
    /// How it was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub trigger: Option<ExecutionTrigger>,
    /// Parent execution (subflow child).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent_id: Option<String>,
    /// Original execution (replays and CREATE_NEW_EXECUTION retries).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub original_id: Option<String>,
    /// Do not start before this date.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_date: Option<DateTime<Utc>>,
    /// Metadata.
    pub metadata: ExecutionMetadata,
    /// Kind.
    #[serde(default)]
    pub kind: ExecutionKind,
    /// Soft-deleted.
    #[serde(default)]
    pub deleted: bool,
}

impl Execution {
    /// A new CREATED execution of a flow revision, labelled with its own correlation id.
    pub fn new(
        namespace: impl Into<String>,
        flow_id: impl Into<String>,
        flow_revision: i32,
    ) -> Execution {
        let id = new_id();
        let now = Utc::now();
        Execution {
            labels: vec![Label::new(system_labels::CORRELATION_ID, id.clone())],
            id,
            tenant_id: default_tenant(),
            namespace: namespace.into(),
            flow_id: flow_id.into(),
            flow_revision,
            inputs: Map::new(),
            outputs: Map::new(),
            variables: Map::new(),
            state: State::new_at(StateType::Created, now),
            task_run_list: Vec::new(),
            trigger: None,
            parent_id: None,
            original_id: None,
            schedule_date: None,
            metadata: ExecutionMetadata {
                attempt_number: 1,
                original_created_date: now,
                version: 0,
            },
            kind: ExecutionKind::Normal,
            deleted: false,
        }
    }

    /// Current state.
    pub fn current(&self) -> StateType {
        self.state.current()
    }

    /// A task run by id.
    pub fn task_run(&self, id: &str) -> Option<&TaskRun> {
        self.task_run_list.iter().find(|t| t.id == id)
    }

    /// A task run by id, mutable.
    pub fn task_run_mut(&mut self, id: &str) -> Option<&mut TaskRun> {
        self.task_run_list.iter_mut().find(|t| t.id == id)
    }

    /// The value of a label, if present.
    pub fn label(&self, key: &str) -> Option<&str> {
        self.labels
            .iter()
            .find(|l| l.key == key)
            .map(|l| l.value.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_json_round_trip_and_shape() -> Result<(), serde_json::Error> {
        let mut e = Execution::new("company.team", "hello", 3);
        let mut tr = TaskRun::new(&e, "first");
        tr.value = Some("a".into());
        tr.attempts.push(TaskRunAttempt {
            state: State::new(),
            log_file: None,
            worker_id: None,
        });
        e.task_run_list.push(tr);
        let json = serde_json::to_value(&e)?;
        assert_eq!(json["flowId"], "hello");
        assert_eq!(json["tenantId"], "main");
        assert_eq!(json["flowRevision"], 3);
        assert_eq!(json["state"]["current"], "CREATED");
        assert_eq!(json["taskRunList"][0]["taskId"], "first");
        assert_eq!(json["taskRunList"][0]["executionId"], json["id"]);
        assert_eq!(json["labels"][0]["key"], "system.correlationId");
        assert_eq!(json["labels"][0]["value"], json["id"]);
        assert_eq!(json["metadata"]["attemptNumber"], 1);
        assert_eq!(json["kind"], "NORMAL");
        let back: Execution = serde_json::from_value(json.clone())?;
        assert_eq!(back, e);
        assert_eq!(serde_json::to_value(&back)?, json);
        Ok(())
    }
}
