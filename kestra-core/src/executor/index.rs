//! [`FlowIndex`]: a flow resolved once for the executor - every task by id with its parent, the slot
//! it sits in and its decoded flowable structure - so that `process` never re-parses task properties.

use std::collections::HashMap;
use std::sync::Arc;

use indexmap::IndexMap;
use serde_json::Value;

use crate::executor::for_each_item as fei;
use crate::flow::model::{Flow, Retry, Task};
use crate::flow::property::{Property, is_expression};
use crate::flow::registry::{DecodeError, TaskKind, TaskRegistry};
use crate::flow::tasks;

/// Type names the executor handles itself.
pub mod types {
    /// `execution.Labels`.
    pub const LABELS: &str = "io.kestra.plugin.core.execution.Labels";
    /// `execution.Exit`.
    pub const EXIT: &str = "io.kestra.plugin.core.execution.Exit";
    /// `flow.WorkingDirectory`.
    pub const WORKING_DIRECTORY: &str = "io.kestra.plugin.core.flow.WorkingDirectory";
    /// `flow.ForEach`.
    pub const FOR_EACH: &str = "io.kestra.plugin.core.flow.ForEach";
    /// `flow.Pause`.
    pub const PAUSE: &str = "io.kestra.plugin.core.flow.Pause";
    /// `flow.LoopUntil`.
    pub const LOOP_UNTIL: &str = "io.kestra.plugin.core.flow.LoopUntil";
    /// `flow.Subflow`.
    pub const SUBFLOW: &str = "io.kestra.plugin.core.flow.Subflow";
    /// `flow.ForEachItem`.
    pub const FOR_EACH_ITEM: &str = "io.kestra.plugin.core.flow.ForEachItem";
}

/// Where a task sits in its parent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// `tasks` (or `then`/`else`/`cases`/`defaults`, Dag tasks).
    Tasks,
    /// `errors`.
    Errors,
    /// `finally`.
    Finally,
    /// The flow's `afterExecution`.
    AfterExecution,
}

/// A list of task ids run as a unit, with its own `errors` and `finally`.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Group {
    /// Main tasks (disabled ones left out: they create no task run).
    pub tasks: Vec<String>,
    /// Run when a main task failed.
    pub errors: Vec<String>,
    /// Run after the main tasks (and errors) whatever happened.
    pub finally: Vec<String>,
}

/// How a flowable runs its children.
#[derive(Debug, Clone, PartialEq)]
pub enum Flowable {
    /// One after the other; `allow_failure` for AllowFailure (a failure ends WARNING).
    Sequential {
        /// Children.
        group: Group,
        /// AllowFailure.
        allow_failure: bool,
    },
    /// At once, at most `concurrent` (0 = unlimited).
    Parallel {
        /// Children.
        group: Group,
        /// Limit.
        concurrent: Option<Property<u32>>,
    },
    /// One case chosen by `value`.
    Switch {
        /// Expression or literal.
        value: Value,
        /// Cases.
        cases: IndexMap<String, Vec<String>>,
        /// When no case matches.
        defaults: Option<Vec<String>>,
        /// Errors and finally (its `tasks` are unused).
        group: Group,
    },
    /// `then` or `else`.
    If {
        /// Condition.
        condition: Value,
        /// When true.
        then: Vec<String>,
        /// When false.
        else_tasks: Vec<String>,
        /// Errors and finally.
        group: Group,
    },
    /// The children once per value.
    ForEach {
        /// List, JSON string or expression.
        values: Value,
        /// Iterations at once (default 1, 0 = unlimited).
        concurrency_limit: Option<Property<u32>>,
        /// Children.
        group: Group,
    },
    /// A DAG of children.
    Dag {
        /// `(task id, depends on)`.
        nodes: Vec<(String, Vec<String>)>,
        /// Limit.
        concurrent: Option<Property<u32>>,
        /// Errors and finally.
        group: Group,
    },
    /// Pause until resumed or until its duration elapses; then its (deprecated) `tasks`.
    Pause {
        /// Properties.
        spec: PauseSpec,
        /// Deprecated children run after the pause.
        group: Group,
    },
    /// The body once per iteration until `condition` holds (see `executor::process::loop_until`).
    LoopUntil {
        /// Properties.
        spec: LoopSpec,
        /// Body, errors and finally.
        group: Group,
    },
    /// A child execution of another flow (see `executor::subflow`).
    Subflow(Box<tasks::Subflow>),
    /// ForEachItem: its three internal tasks `<id>_split`, `<id>_items`, `<id>_merge` in sequence
    /// (see `executor::for_each_item`), then its `errors` / `finally`.
    ForEachItem {
        /// The internal task ids in order, with the task's errors and finally.
        group: Group,
    },
    /// ForEachItem's `<id>_items`: one child execution per batch.
    ForEachItemBatches(Box<tasks::ForEachItem>),
}

/// A Pause, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct PauseSpec {
    /// `pauseDuration` (alias `delay`); else the task's `timeout` (with behavior FAIL); else forever.
    pub duration: Option<Property<crate::flow::duration::IsoDuration>>,
    /// What happens when the duration elapses (RESUME by default).
    pub behavior: Option<Property<tasks::PauseBehavior>>,
    /// Whether `duration` came from the legacy `timeout` (then the default behavior is FAIL).
    pub from_timeout: bool,
    /// `onResume` input declarations.
    pub on_resume: Vec<crate::flow::model::Input>,
}

/// A LoopUntil, resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct LoopSpec {
    /// WaitFor (run again while `condition` is true, stop when `maxIterations` is reached)
    /// rather than LoopUntil (run again until it is true, stop when `maxIterations` is passed).
    pub wait_for: bool,
    /// Checked after each iteration.
    pub condition: Value,
    /// `checkFrequency`.
    pub check_frequency: Option<tasks::CheckFrequency>,
    /// `failOnMaxReached`.
    pub fail_on_max_reached: Option<Property<bool>>,
}

/// What the executor does with a task.
#[derive(Debug, Clone, PartialEq)]
pub enum NodeKind {
    /// Sent to a worker (WorkingDirectory too: its children run there, in one directory).
    Runnable,
    /// Decided by the executor.
    Flowable(Box<Flowable>),
    /// Changes the execution itself (Labels, Exit).
    ExecutorSide,
    /// Known type whose runtime is not available in this build (the message says why).
    Unsupported(String),
}

/// A task of the flow with what the executor needs.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskNode {
    /// The task definition.
    pub task: Task,
    /// Canonical type name.
    pub type_name: &'static str,
    /// How it runs.
    pub kind: NodeKind,
    /// Parent task id (None at top level).
    pub parent: Option<String>,
    /// Slot in the parent.
    pub slot: Slot,
    /// Whether the task may read other task runs' outputs or states ([`reads_run_history`]):
    /// if not, its worker job carries the execution's context without `outputs` and `tasks`, so
    /// that a job's size does not grow with the execution.
    pub reads_run_history: bool,
}

/// Whether `task`'s expressions may read the outputs or states of other task runs: whether its
/// definition (plugin defaults applied) or the flow's variables mention `outputs`, `tasks` (also
/// `parents[..].outputs`), or a function that renders or dumps variables (`render`, `debug`).
/// Conservative: a mention in any string value, even in plain text, counts. Property names (the
/// keys of the definition) and plugin type names (a `type` that is not an expression) are not read:
/// they cannot be rendered, and `io.kestra.plugin.core.debug.Return` would otherwise count as a
/// mention of `debug`.
pub fn reads_run_history(task: &Task, flow: &Flow) -> bool {
    match (
        serde_json::to_value(task),
        serde_json::to_value(&flow.variables),
    ) {
        (Ok(task), Ok(variables)) => {
            mentions_run_history(&task) || mentions_run_history(&variables)
        }
        _ => true,
    }
}

/// Whether a string value of `value` (see [`reads_run_history`]) mentions a word that reads run
/// history.
fn mentions_run_history(value: &Value) -> bool {
    const WORDS: [&str; 4] = ["outputs", "tasks", "render", "debug"];
    let mentions = |text: &str| WORDS.iter().any(|w| text.contains(w));
    match value {
        Value::String(text) => mentions(text),
        Value::Array(items) => items.iter().any(mentions_run_history),
        Value::Object(map) => map.iter().any(|(key, v)| match v {
            // A plugin type name is never rendered.
            Value::String(text) if key == "type" && !is_expression(text) => false,
            v => mentions_run_history(v),
        }),
        Value::Null | Value::Bool(_) | Value::Number(_) => false,
    }
}

/// Why a flow cannot be indexed (the parser normally rejects such flows first).
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// Unknown or invalid task.
    #[error("task '{task_id}': {source}")]
    Decode {
        /// Task id.
        task_id: String,
        /// Cause.
        #[source]
        source: DecodeError,
    },
    /// Two tasks share an id.
    #[error("duplicate task id '{0}'")]
    DuplicateId(String),
}

/// A flow resolved for the executor.
#[derive(Debug, Clone)]
pub struct FlowIndex {
    /// The flow.
    pub flow: Arc<Flow>,
    /// Top-level tasks, errors and finally.
    pub root: Group,
    /// `afterExecution`.
    pub after_execution: Vec<String>,
    nodes: HashMap<String, TaskNode>,
}

fn ids(tasks: &[Task]) -> Vec<String> {
    tasks
        .iter()
        .filter(|t| !t.disabled)
        .map(|t| t.id.clone())
        .collect()
}

impl FlowIndex {
    /// Resolve every task of `flow`.
    pub fn new(flow: Arc<Flow>, registry: &TaskRegistry) -> Result<FlowIndex, IndexError> {
        let mut index = FlowIndex {
            root: Group {
                tasks: ids(&flow.tasks),
                errors: ids(&flow.errors),
                finally: ids(&flow.finally),
            },
            after_execution: ids(&flow.after_execution),
            nodes: HashMap::new(),
            flow: flow.clone(),
        };
        for (list, slot) in [
            (&flow.tasks, Slot::Tasks),
            (&flow.errors, Slot::Errors),
            (&flow.finally, Slot::Finally),
            (&flow.after_execution, Slot::AfterExecution),
        ] {
            for task in list.iter() {
                index.add(task, None, slot, registry)?;
            }
        }
        Ok(index)
    }

    /// A task by id.
    pub fn node(&self, task_id: &str) -> Option<&TaskNode> {
        self.nodes.get(task_id)
    }

    /// The retry policy that applies to a task: its own, else the nearest enclosing flowable's, else
    /// the flow's.
    pub fn retry_for(&self, task_id: &str) -> Option<&Retry> {
        let mut current = self.nodes.get(task_id);
        while let Some(node) = current {
            if let Some(r) = &node.task.retry {
                return Some(r);
            }
            current = node.parent.as_deref().and_then(|p| self.nodes.get(p));
        }
        self.flow.retry.as_ref()
    }

    fn add_list(
        &mut self,
        tasks: &[Task],
        parent: &str,
        slot: Slot,
        registry: &TaskRegistry,
    ) -> Result<Vec<String>, IndexError> {
        for t in tasks {
            self.add(t, Some(parent), slot, registry)?;
        }
        Ok(ids(tasks))
    }

    fn add_group(
        &mut self,
        tasks: &[Task],
        errors: &[Task],
        finally: &[Task],
        parent: &str,
        registry: &TaskRegistry,
    ) -> Result<Group, IndexError> {
        Ok(Group {
            tasks: self.add_list(tasks, parent, Slot::Tasks, registry)?,
            errors: self.add_list(errors, parent, Slot::Errors, registry)?,
            finally: self.add_list(finally, parent, Slot::Finally, registry)?,
        })
    }

    /// The internal tasks of a ForEachItem (see `executor::for_each_item`): a runnable split, the
    /// executor-side batches, a runnable merge.
    fn add_for_each_item_tasks(
        &mut self,
        task: &Task,
        spec: tasks::ForEachItem,
    ) -> Result<Group, IndexError> {
        let internal = |suffix: &str, type_name: &str, properties: IndexMap<String, Value>| Task {
            id: format!("{}{suffix}", task.id),
            task_type: type_name.to_string(),
            description: None,
            retry: None,
            timeout: None,
            disabled: false,
            log_level: task.log_level,
            log_to_file: false,
            allow_failure: false,
            allow_warning: false,
            run_if: None,
            worker_group: task.worker_group.clone(),
            properties,
        };
        // Only what the split needs: errors/finally are the ForEachItem's own children.
        let mut split_props = IndexMap::new();
        for key in ["items", "batch"] {
            if let Some(v) = task.properties.get(key) {
                split_props.insert(key.to_string(), v.clone());
            }
        }
        let nodes = [
            (
                internal(fei::SPLIT_SUFFIX, fei::SPLIT_TYPE, split_props),
                fei::SPLIT_TYPE,
                NodeKind::Runnable,
            ),
            (
                internal(fei::ITEMS_SUFFIX, fei::ITEMS_TYPE, IndexMap::new()),
                fei::ITEMS_TYPE,
                NodeKind::Flowable(Box::new(Flowable::ForEachItemBatches(Box::new(spec)))),
            ),
            (
                internal(fei::MERGE_SUFFIX, fei::MERGE_TYPE, IndexMap::new()),
                fei::MERGE_TYPE,
                NodeKind::Runnable,
            ),
        ];
        let mut group = Group::default();
        for (child, type_name, kind) in nodes {
            if self.nodes.contains_key(&child.id) {
                return Err(IndexError::DuplicateId(child.id));
            }
            group.tasks.push(child.id.clone());
            self.nodes.insert(
                child.id.clone(),
                TaskNode {
                    reads_run_history: reads_run_history(&child, &self.flow),
                    task: child,
                    type_name,
                    kind,
                    parent: Some(task.id.clone()),
                    slot: Slot::Tasks,
                },
            );
        }
        Ok(group)
    }

    fn add(
        &mut self,
        task: &Task,
        parent: Option<&str>,
        slot: Slot,
        registry: &TaskRegistry,
    ) -> Result<(), IndexError> {
        if self.nodes.contains_key(&task.id) {
            return Err(IndexError::DuplicateId(task.id.clone()));
        }
        let decode_err = |source| IndexError::Decode {
            task_id: task.id.clone(),
            source,
        };
        let entry = registry
            .resolve(&task.task_type)
            .ok_or_else(|| decode_err(DecodeError::UnknownType(task.task_type.clone())))?;
        let type_name = entry.type_name;
        // Reserve the id first so that children cannot reuse it.
        self.nodes.insert(
            task.id.clone(),
            TaskNode {
                task: task.clone(),
                type_name,
                kind: NodeKind::Runnable,
                parent: parent.map(str::to_string),
                slot,
                reads_run_history: reads_run_history(task, &self.flow),
            },
        );
        let id = task.id.as_str();
        let kind = match type_name {
            "io.kestra.plugin.core.flow.Sequential" => {
                let t: tasks::Sequential = registry.decode(task).map_err(decode_err)?;
                NodeKind::Flowable(Box::new(Flowable::Sequential {
                    group: self.add_group(&t.tasks, &t.errors, &t.finally, id, registry)?,
                    allow_failure: false,
                }))
            }
            "io.kestra.plugin.core.flow.AllowFailure" => {
                let t: tasks::AllowFailure = registry.decode(task).map_err(decode_err)?;
                NodeKind::Flowable(Box::new(Flowable::Sequential {
                    group: self.add_group(&t.tasks, &t.errors, &t.finally, id, registry)?,
                    allow_failure: true,
                }))
            }
            "io.kestra.plugin.core.flow.Parallel" => {
                let t: tasks::Parallel = registry.decode(task).map_err(decode_err)?;
                NodeKind::Flowable(Box::new(Flowable::Parallel {
                    group: self.add_group(&t.tasks, &t.errors, &t.finally, id, registry)?,
                    concurrent: t.concurrent,
                }))
            }
            "io.kestra.plugin.core.flow.Switch" => {
                let t: tasks::Switch = registry.decode(task).map_err(decode_err)?;
                let mut cases = IndexMap::new();
                for (k, list) in t.cases.iter().flatten() {
                    cases.insert(k.clone(), self.add_list(list, id, Slot::Tasks, registry)?);
                }
                let defaults = match &t.defaults {
                    Some(d) => Some(self.add_list(d, id, Slot::Tasks, registry)?),
                    None => None,
                };
                NodeKind::Flowable(Box::new(Flowable::Switch {
                    value: t.value.clone(),
                    cases,
                    defaults,
                    group: self.add_group(&[], &t.errors, &t.finally, id, registry)?,
                }))
            }
            "io.kestra.plugin.core.flow.If" => {
                let t: tasks::If = registry.decode(task).map_err(decode_err)?;
                let then = self.add_list(&t.then, id, Slot::Tasks, registry)?;
                let else_tasks = match &t.else_tasks {
                    Some(e) => self.add_list(e, id, Slot::Tasks, registry)?,
                    None => Vec::new(),
                };
                NodeKind::Flowable(Box::new(Flowable::If {
                    condition: t.condition.clone(),
                    then,
                    else_tasks,
                    group: self.add_group(&[], &t.errors, &t.finally, id, registry)?,
                }))
            }
            "io.kestra.plugin.core.flow.ForEach" => {
                let t: tasks::ForEach = registry.decode(task).map_err(decode_err)?;
                NodeKind::Flowable(Box::new(Flowable::ForEach {
                    values: t.values.clone(),
                    concurrency_limit: t.concurrency_limit.clone(),
                    group: self.add_group(&t.tasks, &t.errors, &t.finally, id, registry)?,
                }))
            }
            tasks::EACH_SEQUENTIAL | tasks::EACH_PARALLEL => {
                let t: tasks::EachLegacy = registry.decode(task).map_err(decode_err)?;
                let f = t.to_for_each(type_name == tasks::EACH_PARALLEL);
                NodeKind::Flowable(Box::new(Flowable::ForEach {
                    values: f.values.clone(),
                    concurrency_limit: f.concurrency_limit.clone(),
                    group: self.add_group(&f.tasks, &f.errors, &f.finally, id, registry)?,
                }))
            }
            "io.kestra.plugin.core.flow.Dag" => {
                let t: tasks::Dag = registry.decode(task).map_err(decode_err)?;
                let mut nodes = Vec::new();
                for d in &t.tasks {
                    self.add(&d.task, Some(id), Slot::Tasks, registry)?;
                    if !d.task.disabled {
                        nodes.push((d.task.id.clone(), d.depends_on.clone().unwrap_or_default()));
                    }
                }
                NodeKind::Flowable(Box::new(Flowable::Dag {
                    nodes,
                    concurrent: t.concurrent,
                    group: self.add_group(&[], &t.errors, &t.finally, id, registry)?,
                }))
            }
            types::WORKING_DIRECTORY => {
                let t: tasks::WorkingDirectory = registry.decode(task).map_err(decode_err)?;
                // Children run on the worker, inside the WorkingDirectory's job; they are indexed so
                // that ids stay unique and their task runs (reported by the worker) can be resolved.
                self.add_group(&t.tasks, &t.errors, &t.finally, id, registry)?;
                NodeKind::Runnable
            }
            types::PAUSE => {
                let t: tasks::Pause = registry.decode(task).map_err(decode_err)?;
                let from_timeout = t.pause_duration.is_none() && task.timeout.is_some();
                let duration = t
                    .pause_duration
                    .clone()
                    .or_else(|| task.timeout.clone().map(Property::Value));
                let children = t.tasks.clone().unwrap_or_default();
                NodeKind::Flowable(Box::new(Flowable::Pause {
                    spec: PauseSpec {
                        duration,
                        behavior: t.behavior.clone(),
                        from_timeout,
                        on_resume: t.on_resume.clone().unwrap_or_default(),
                    },
                    group: self.add_group(&children, &[], &[], id, registry)?,
                }))
            }
            types::LOOP_UNTIL | tasks::WAIT_FOR => {
                let t: tasks::LoopUntil = registry.decode(task).map_err(decode_err)?;
                NodeKind::Flowable(Box::new(Flowable::LoopUntil {
                    spec: LoopSpec {
                        wait_for: type_name == tasks::WAIT_FOR,
                        condition: t.condition.clone(),
                        check_frequency: t.check_frequency.clone(),
                        fail_on_max_reached: t.fail_on_max_reached.clone(),
                    },
                    group: self.add_group(&t.tasks, &t.errors, &t.finally, id, registry)?,
                }))
            }
            types::SUBFLOW => {
                let t: tasks::Subflow = registry.decode(task).map_err(decode_err)?;
                NodeKind::Flowable(Box::new(Flowable::Subflow(Box::new(t))))
            }
            types::FOR_EACH_ITEM => {
                let t: tasks::ForEachItem = registry.decode(task).map_err(decode_err)?;
                let errors = t.errors.clone();
                let finally = t.finally.clone();
                let mut group = self.add_for_each_item_tasks(task, t)?;
                group.errors = self.add_list(&errors, id, Slot::Errors, registry)?;
                group.finally = self.add_list(&finally, id, Slot::Finally, registry)?;
                NodeKind::Flowable(Box::new(Flowable::ForEachItem { group }))
            }
            types::LABELS | types::EXIT => NodeKind::ExecutorSide,
            other => match entry.kind {
                TaskKind::Runnable => NodeKind::Runnable,
                TaskKind::ExecutorSide => NodeKind::ExecutorSide,
                TaskKind::Flowable | TaskKind::Executable => NodeKind::Unsupported(format!(
                    "task type '{other}' is not supported by this engine"
                )),
            },
        };
        if let Some(node) = self.nodes.get_mut(&task.id) {
            node.kind = kind;
        }
        Ok(())
    }
}
