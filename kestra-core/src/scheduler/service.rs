//! [`SchedulerService`]: keeps one [`TriggerState`] per schedule or polling trigger, claims the due
//! ones and starts their executions (polling triggers: sends their evaluations to the workers and
//! applies the results, see [`super::polling`]).
//!
//! # One evaluation step ([`SchedulerService::tick`])
//!
//! 1. **Sync** (every tenant of [`SchedulerConfig::tenants`]): every `Schedule`/`ScheduleOnDates` trigger
//!    of every non-deleted flow of the [`FlowSource`] (fed by the flow topic, not the repository)
//!    gets a state whose first `nextExecutionDate` is the first slot after now
//!    (nothing fires for the past on creation). States of triggers or flows that no longer exist are
//!    deleted. On a new flow revision, a changed timetable (cron, seconds, zone, dates) restarts at the
//!    first slot after now, and a trigger the system had disabled with an error is enabled again (the
//!    user changed the flow). A trigger disabled in the flow (or a disabled flow) has its pending slot
//!    removed when next claimed; once enabled again, the sync restores the slot after the last handled
//!    one (`date`), so the recovery policy applies to the slots of the disabled period and the next slot
//!    is never skipped.
//! 2. **Claim** due triggers with [`TriggerRepository::claim_due`], in batches, until none is left. A
//!    trigger is handled at most once per step: claims are kept until the end of the step, then every
//!    new state is stored with [`TriggerRepository::release`]. If a release is refused (the claim was
//!    lost), the step does nothing more for that trigger.
//! 3. **Lock**: unless `allowConcurrent`, a trigger whose last execution (`executionId`) still runs does
//!    not fire: its pending slot is *kept* (as Kestra, which fires when the trigger is free again); when
//!    the execution ends, the missed slots follow the recovery policy. The lock is cleared when the
//!    execution is terminal, or missing (deleted) for longer than [`SchedulerConfig::lock_grace`] (a
//!    just-queued execution may not be in the repository yet). A terminal state listed in `stopAfter`
//!    disables the trigger instead of firing. With `allowConcurrent`, the last execution is still
//!    recorded (so that `stopAfter` works) but never blocks.
//! 4. **Fire**: [`plan`] picks the slot; the conditions are evaluated (false: the slot is skipped); the
//!    execution is built (labels: flow labels, trigger labels; trigger `{id, type, variables {date, next,
//!    previous}}`; inputs rendered with the trigger variables then resolved against the flow's inputs),
//!    queued, and the state records `date` = slot, `nextExecutionDate` = next slot, `executionId`.
//!    A backfill fires its slots first, one per step, with its inputs and labels plus
//!    `system.backfill=true`; the regular schedule resumes after it (its slots due meanwhile follow the
//!    recovery policy).
//!
//! Polling triggers (types with a
//! [`DEFAULT_INTERVAL`](crate::flow::TriggerType::DEFAULT_INTERVAL)) go through the same sync, claim, lock and release; their sync and handling are described in
//! [`super::polling`]. Between the sync and the claim of due triggers, each step applies the
//! workers' evaluation results ([`Topic::WorkerTriggerResult`](crate::queue::Topic::WorkerTriggerResult)):
//! each result's trigger is claimed by uid ([`TriggerRepository::claim`]), the result applied, the
//! new state released, and only then the result acknowledged.
//!
//! A trigger that cannot be evaluated (cron or time zone that slipped through validation, unsupported
//! condition, inputs that do not render or resolve) is disabled with the message in its state's
//! `error`, logged once at ERROR, instead of failing every step. Backend errors (queue, repositories)
//! leave the trigger unchanged for the next step.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

use super::SchedulerError;
use super::clock::Clock;
use super::conditions::{check_conditions, evaluate_conditions};
use super::polling::PendingResults;
use super::schedule::{Plan, RecoveryPolicy, Timetable, plan, slot_execution_id};
use crate::executor::messages::execution_envelope;
use crate::expression::ExpressionEngine;
use crate::flow::apply_plugin_defaults;
use crate::flow::model::{Flow, Trigger};
use crate::flow::property::Property;
use crate::flow::registry::{TaskRegistry, TriggerType};
use crate::flow::triggers::{Schedule, ScheduleOnDates};
use crate::inputs::{ExecutionRef, InputRenderer, RawInput, resolve_inputs};
use crate::model::execution::system_labels;
use crate::model::{Backfill, Execution, Label, State, StateType, TriggerState, trigger_uid};
use crate::queue::Queue;
use crate::repository::{ExecutionRepository, FlowRecord, TriggerRepository};
use crate::runtime::flows::FlowSource;

/// Label set on the executions of a backfill.
pub const BACKFILL_LABEL: &str = "system.backfill";
/// Label identifying one backfill (set by [`backfill`](super::backfill())); part of its executions' ids.
pub const BACKFILL_ID_LABEL: &str = "system.backfillId";

/// Configuration of a [`SchedulerService`].
#[derive(Debug, Clone)]
pub struct SchedulerConfig {
    /// Owner name of this instance's claims (unique per instance).
    pub id: String,
    /// Time between evaluation steps in [`SchedulerService::run`] (1 s).
    pub tick: Duration,
    /// How long a claim holds before another instance may take the trigger (30 s).
    pub lease: Duration,
    /// Triggers claimed per batch (100).
    pub batch: usize,
    /// Tenants whose flows are scheduled (`["main"]`).
    pub tenants: Vec<String>,
    /// How long an execution holding a trigger's lock may be missing from the repository before it is
    /// considered deleted (60 s): a freshly queued execution is not there yet.
    pub lock_grace: Duration,
    /// How long a polling trigger's evaluation may run without a result before the scheduler sends
    /// another one (5 min): a worker may have died with it. A late result of the abandoned
    /// evaluation is ignored.
    pub evaluation_timeout: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            id: format!("scheduler-{}", crate::model::new_id()),
            tick: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            batch: 100,
            tenants: vec![crate::model::DEFAULT_TENANT.to_string()],
            lock_grace: Duration::from_secs(60),
            evaluation_timeout: Duration::from_secs(5 * 60),
        }
    }
}

/// A slot that was fired (for a polling trigger: an evaluation that started an execution, its
/// evaluation date as the slot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FiredSlot {
    /// Trigger uid.
    pub trigger_uid: String,
    /// The execution queued.
    pub execution_id: String,
    /// The slot.
    pub slot: DateTime<Utc>,
    /// Part of a backfill.
    pub backfill: bool,
}

/// What one evaluation step did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// The step's "now".
    pub now: Option<DateTime<Utc>>,
    /// Trigger states created by the sync.
    pub created: usize,
    /// Trigger states deleted by the sync.
    pub removed: usize,
    /// Triggers claimed.
    pub claimed: usize,
    /// Slots fired, in order.
    pub fired: Vec<FiredSlot>,
    /// Slots skipped (recovery policy, `lateMaximumDelay`, false conditions).
    pub skipped: usize,
    /// Due triggers that did not fire because their previous execution still runs.
    pub locked: usize,
    /// Triggers disabled at this step, with the reason (`stopAfter` or an error).
    pub disabled: Vec<(String, String)>,
    /// Releases refused because the claim was lost.
    pub lost_claims: usize,
    /// Triggers left unchanged after a backend error.
    pub failures: usize,
    /// Polling triggers whose evaluation was sent to the workers (uids).
    pub evaluations: Vec<String>,
    /// Evaluation results applied.
    pub results: usize,
    /// Evaluation results ignored: not for the running evaluation (late, duplicate) or for a trigger
    /// that no longer exists.
    pub stale_results: usize,
}

/// The scheduler service. See the module documentation.
pub struct SchedulerService {
    pub(super) config: SchedulerConfig,
    clock: Arc<dyn Clock>,
    /// Where flows come from (the flow topic's source, not the repository).
    flows: Arc<dyn FlowSource>,
    pub(super) triggers: Arc<dyn TriggerRepository>,
    executions: Arc<dyn ExecutionRepository>,
    pub(super) queue: Arc<dyn Queue>,
    registry: Arc<TaskRegistry>,
    pub(super) expr: Arc<ExpressionEngine>,
    /// Evaluation results received and not applied yet, by trigger uid.
    pub(super) results: Mutex<PendingResults>,
}

/// The kind of trigger.
#[derive(Debug, Clone)]
pub(super) enum Kind {
    Cron(Box<Schedule>),
    Dates(Box<ScheduleOnDates>),
    /// A polling trigger of this (canonical) type, evaluated every `interval`.
    Polling {
        type_name: &'static str,
        interval: Duration,
    },
}

/// A schedule or polling trigger of the current flow revision.
#[derive(Debug, Clone)]
pub(super) struct Entry {
    pub(super) flow: Arc<Flow>,
    pub(super) revision: i32,
    pub(super) trigger: Trigger,
    /// Decoded properties, or why they cannot be.
    pub(super) kind: Result<Kind, String>,
    /// A polling trigger (even when `kind` is an error).
    pub(super) polling: bool,
    /// The flow or the trigger is disabled in the flow definition.
    pub(super) disabled: bool,
}

/// A trigger's compiled schedule.
struct Compiled {
    timetable: Timetable,
    policy: RecoveryPolicy,
    inputs: Option<IndexMap<String, Value>>,
}

/// The outcome of handling one claimed trigger.
pub(super) enum Outcome {
    /// Store this state.
    Store(TriggerState),
    /// Store this state; the trigger was disabled for this reason (logged).
    Disable(TriggerState, String),
}

struct Renderer(Arc<ExpressionEngine>);

impl InputRenderer for Renderer {
    fn render_typed(&self, template: &str, ctx: &Value) -> Result<Value, String> {
        self.0
            .render_typed(template, ctx)
            .map_err(|e| e.to_string())
    }
}

fn to_std(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl SchedulerService {
    /// A scheduler over these backends.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: SchedulerConfig,
        clock: Arc<dyn Clock>,
        flows: Arc<dyn FlowSource>,
        triggers: Arc<dyn TriggerRepository>,
        executions: Arc<dyn ExecutionRepository>,
        queue: Arc<dyn Queue>,
        registry: Arc<TaskRegistry>,
        expr: Arc<ExpressionEngine>,
    ) -> SchedulerService {
        SchedulerService {
            config,
            clock,
            flows,
            triggers,
            executions,
            queue,
            registry,
            expr,
            results: Mutex::new(PendingResults::default()),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SchedulerConfig {
        &self.config
    }

    /// Run evaluation steps every [`SchedulerConfig::tick`] until `shutdown` is cancelled. A failed
    /// step is logged and retried at the next tick.
    pub async fn run(self, shutdown: CancellationToken) {
        tracing::info!(scheduler = %self.config.id, "scheduler started");
        loop {
            if let Err(e) = self.tick().await {
                tracing::warn!(scheduler = %self.config.id, error = %e, "scheduler step failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.config.tick) => {}
            }
        }
        tracing::info!(scheduler = %self.config.id, "scheduler stopped");
    }

    /// One evaluation step at the clock's "now". See the module documentation.
    pub async fn tick(&self) -> Result<TickReport, SchedulerError> {
        let now = self.clock.now();
        let mut report = TickReport {
            now: Some(now),
            ..TickReport::default()
        };
        let snapshot = self.sync(now, &mut report).await?;
        self.apply_results(&snapshot, now, &mut report).await;

        let owner = self.config.id.as_str();
        let mut pending: Vec<(TriggerState, Outcome)> = Vec::new();
        let mut seen = HashSet::new();
        loop {
            let batch = self
                .triggers
                .claim_due(now, owner, self.config.batch.max(1), self.config.lease)
                .await?;
            if batch.is_empty() {
                break;
            }
            let mut fresh = 0;
            for state in batch {
                report.claimed += 1;
                if !seen.insert(state.uid()) {
                    // Cannot happen with an honest claim (it is held until the end of the step).
                    continue;
                }
                fresh += 1;
                let outcome = match snapshot.get(&state.uid()) {
                    Some(entry) if entry.polling => {
                        self.handle_polling(entry, &state, now, &mut report).await
                    }
                    Some(entry) => self.handle(entry, &state, now, &mut report).await,
                    // Not a trigger of this scheduler's tenants: leave it as it is.
                    None => Outcome::Store(state.clone()),
                };
                pending.push((state, outcome));
            }
            if fresh == 0 {
                break;
            }
        }

        for (claimed, outcome) in pending {
            self.release(&claimed, outcome, &mut report).await;
        }
        Ok(report)
    }

    /// Store a claimed trigger's new state and release the claim; true when stored.
    pub(super) async fn release(
        &self,
        claimed: &TriggerState,
        outcome: Outcome,
        report: &mut TickReport,
    ) -> bool {
        let (new_state, disabled) = match outcome {
            Outcome::Store(s) => (s, None),
            Outcome::Disable(s, why) => (s, Some(why)),
        };
        match self.triggers.release(&new_state, &self.config.id).await {
            Ok(true) => {
                if let Some(why) = disabled {
                    report.disabled.push((claimed.uid(), why));
                }
                true
            }
            Ok(false) => {
                report.lost_claims += 1;
                tracing::debug!(trigger = %claimed.uid(), "claim lost before release");
                false
            }
            Err(e) => {
                report.failures += 1;
                tracing::warn!(trigger = %claimed.uid(), error = %e, "cannot release trigger");
                false
            }
        }
    }

    /// Make sure every schedule trigger has a state; returns the triggers by uid.
    async fn sync(
        &self,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<HashMap<String, Entry>, SchedulerError> {
        let mut snapshot = HashMap::new();
        for tenant in &self.config.tenants {
            let records = self.flows.find_all(tenant).await?;
            let states: HashMap<String, TriggerState> = self
                .triggers
                .find_all(tenant)
                .await?
                .into_iter()
                .map(|s| (s.uid(), s))
                .collect();
            let mut live: HashSet<String> = HashSet::new();
            let mut unreadable: HashSet<(String, String)> = HashSet::new();
            for record in records {
                if record.deleted {
                    continue;
                }
                let flow = match self.read_flow(&record) {
                    Ok(f) => f,
                    Err(message) => {
                        tracing::warn!(namespace = %record.namespace, flow = %record.id, %message,
                            "scheduler cannot read flow");
                        unreadable.insert((record.namespace.clone(), record.id.clone()));
                        continue;
                    }
                };
                let flow = Arc::new(flow);
                for trigger in &flow.triggers {
                    let uid = trigger_uid(tenant, &flow.namespace, &flow.id, &trigger.id);
                    live.insert(uid.clone());
                    let Some(kind) = self.kind_of(trigger) else {
                        continue;
                    };
                    let entry = Entry {
                        flow: flow.clone(),
                        revision: record.revision,
                        trigger: trigger.clone(),
                        polling: self.registry.polling_interval(trigger).is_some(),
                        kind,
                        disabled: flow.disabled || record.disabled || trigger.disabled,
                    };
                    if let Err(e) = self
                        .sync_state(tenant, &entry, states.get(&uid), now, report)
                        .await
                    {
                        tracing::warn!(trigger = %uid, error = %e, "cannot sync trigger state");
                    }
                    snapshot.insert(uid, entry);
                }
            }
            for (uid, state) in &states {
                let flow_key = (state.namespace.clone(), state.flow_id.clone());
                if !live.contains(uid) && !unreadable.contains(&flow_key) {
                    self.triggers.delete(uid).await?;
                    report.removed += 1;
                }
            }
        }
        Ok(snapshot)
    }

    fn read_flow(&self, record: &FlowRecord) -> Result<Flow, String> {
        let mut flow: Flow =
            serde_json::from_value(record.flow.clone()).map_err(|e| e.to_string())?;
        flow.revision = Some(record.revision);
        flow.tenant_id = record.tenant_id.clone();
        apply_plugin_defaults(&flow, &self.registry).map_err(|e| e.to_string())
    }

    /// `None` if the trigger is neither a schedule nor a polling trigger.
    fn kind_of(&self, trigger: &Trigger) -> Option<Result<Kind, String>> {
        let canonical = self
            .registry
            .resolve_trigger(&trigger.trigger_type)?
            .type_name;
        if let Some(interval) = self.registry.polling_interval(trigger) {
            Some(interval.map(|interval| Kind::Polling {
                type_name: canonical,
                interval,
            }))
        } else if canonical == Schedule::TYPE {
            Some(
                self.registry
                    .decode_trigger::<Schedule>(trigger)
                    .map(|s| Kind::Cron(Box::new(s)))
                    .map_err(|e| e.to_string()),
            )
        } else if canonical == ScheduleOnDates::TYPE {
            Some(
                self.registry
                    .decode_trigger::<ScheduleOnDates>(trigger)
                    .map(|s| Kind::Dates(Box::new(s)))
                    .map_err(|e| e.to_string()),
            )
        } else {
            None
        }
    }

    fn compile(&self, entry: &Entry) -> Result<Compiled, String> {
        check_conditions(&entry.trigger.conditions).map_err(|e| e.to_string())?;
        match entry.kind.as_ref().map_err(Clone::clone)? {
            Kind::Cron(s) => Ok(Compiled {
                timetable: Timetable::of_schedule(s).map_err(|e| e.to_string())?,
                policy: RecoveryPolicy::of_schedule(s),
                inputs: s.inputs.clone(),
            }),
            Kind::Polling { .. } => Err("a polling trigger has no timetable".to_string()),
            Kind::Dates(s) => {
                let dates: Vec<String> = match &s.dates {
                    Property::Value(v) => v.clone(),
                    Property::Expression(template) => {
                        let rendered = self
                            .expr
                            .render_typed(template, &flow_context(entry))
                            .map_err(|e| format!("cannot render dates '{template}': {e}"))?;
                        dates_of(rendered)?
                    }
                };
                Ok(Compiled {
                    timetable: Timetable::dates(&dates, s.timezone.as_deref())
                        .map_err(|e| e.to_string())?,
                    policy: RecoveryPolicy {
                        recover: s.recover_missed_schedules.unwrap_or_default(),
                        late_maximum_delay: None,
                    },
                    inputs: s.inputs.clone(),
                })
            }
        }
    }

    async fn sync_state(
        &self,
        tenant: &str,
        entry: &Entry,
        existing: Option<&TriggerState>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<(), SchedulerError> {
        if entry.polling {
            return self
                .sync_polling(tenant, entry, existing, now, report)
                .await;
        }
        let flow = &entry.flow;
        let uid = trigger_uid(tenant, &flow.namespace, &flow.id, &entry.trigger.id);
        let compiled = self.compile(entry);
        let Some(existing) = existing else {
            let mut state = TriggerState::new(
                tenant,
                &flow.namespace,
                &flow.id,
                &entry.trigger.id,
                entry.revision,
                now,
            );
            match compiled.and_then(|c| c.timetable.next_after(now).map_err(|e| e.to_string())) {
                Ok(next) => state.next_execution_date = next,
                Err(message) => disable_with_error(&mut state, &message),
            }
            self.triggers.save(&state).await?;
            report.created += 1;
            if let Some(message) = &state.error {
                report.disabled.push((uid, message.clone()));
            }
            return Ok(());
        };

        let mut state = existing.clone();
        if state.flow_revision != Some(entry.revision) {
            let old_timetable = match state.flow_revision {
                Some(rev) => self.timetable_key_at(entry, rev).await?,
                None => None,
            };
            let changed = old_timetable.as_ref() != Some(&timetable_key(&entry.trigger));
            let was_broken = state.disabled && state.error.is_some();
            state.flow_revision = Some(entry.revision);
            state.updated_date = now;
            if changed || was_broken {
                if was_broken {
                    state.disabled = false;
                    state.error = None;
                }
                if changed {
                    // The last handled slot belongs to another timetable.
                    state.date = None;
                }
                match compiled.and_then(|c| c.timetable.next_after(now).map_err(|e| e.to_string()))
                {
                    Ok(next) => {
                        if changed || state.next_execution_date.is_none() {
                            state.next_execution_date = next;
                        }
                    }
                    Err(message) => {
                        disable_with_error(&mut state, &message);
                        report.disabled.push((uid.clone(), message));
                    }
                }
            }
            self.triggers.save(&state).await?;
            return Ok(());
        }

        // Enabled again after a disabled period: resume after the last handled slot.
        if !entry.disabled
            && !state.disabled
            && state.next_execution_date.is_none()
            && state.backfill.is_none()
        {
            let resumed = compiled.and_then(|c| {
                match state.date {
                    Some(date) => c.timetable.next_after(date),
                    None => c.timetable.next_after(now),
                }
                .map_err(|e| e.to_string())
            });
            match resumed {
                Ok(Some(next)) => {
                    state.next_execution_date = Some(next);
                    state.updated_date = now;
                    self.triggers.save(&state).await?;
                }
                // An exhausted timetable stays without a next date.
                Ok(None) => {}
                Err(message) => {
                    disable_with_error(&mut state, &message);
                    state.updated_date = now;
                    self.triggers.save(&state).await?;
                    report.disabled.push((uid, message));
                }
            }
        }
        Ok(())
    }

    /// The timetable-defining properties of the trigger in an older revision of its flow.
    async fn timetable_key_at(
        &self,
        entry: &Entry,
        revision: i32,
    ) -> Result<Option<Value>, SchedulerError> {
        let flow = &entry.flow;
        let Some(record) = self
            .flows
            .find(&flow.tenant_id, &flow.namespace, &flow.id, Some(revision))
            .await?
        else {
            return Ok(None);
        };
        let Ok(old) = self.read_flow(&record) else {
            return Ok(None);
        };
        Ok(old
            .triggers
            .iter()
            .find(|t| t.id == entry.trigger.id)
            .map(timetable_key))
    }

    /// Handle one claimed trigger at `now`.
    async fn handle(
        &self,
        entry: &Entry,
        claimed: &TriggerState,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Outcome {
        let mut state = claimed.clone();
        if state.disabled {
            return Outcome::Store(state);
        }
        if entry.disabled {
            // Disabled in the flow: drop the pending slot; the sync restores it once enabled again.
            state.next_execution_date = None;
            state.updated_date = now;
            return Outcome::Store(state);
        }

        match self.check_lock(entry, &mut state, now).await {
            Lock::Free => {}
            Lock::Held => {
                report.locked += 1;
                return Outcome::Store(claimed.clone());
            }
            Lock::Stop(why) => return Outcome::Disable(state, why),
            Lock::Failed => {
                report.failures += 1;
                return Outcome::Store(claimed.clone());
            }
        }

        let compiled = match self.compile(entry) {
            Ok(c) => c,
            Err(message) => return self.disable(state, message, now),
        };

        if let Some(backfill) = state.backfill.clone() {
            if backfill.paused {
                return Outcome::Store(state);
            }
            return self
                .step_backfill(entry, &compiled, state, backfill, now, report)
                .await;
        }

        let Some(pending) = state.next_execution_date else {
            return Outcome::Store(state);
        };
        let decision = match plan(&compiled.timetable, compiled.policy, pending, now) {
            Ok(p) => p,
            Err(e) => return self.disable(state, e.to_string(), now),
        };
        match decision {
            Plan::Wait { next } => {
                if next != state.next_execution_date {
                    state.next_execution_date = next;
                    state.updated_date = now;
                }
                Outcome::Store(state)
            }
            Plan::Skip { through, next } => {
                report.skipped += 1;
                state.date = Some(through);
                state.next_execution_date = next;
                state.updated_date = now;
                Outcome::Store(state)
            }
            Plan::Fire {
                slot,
                skipped_before,
                next,
            } => {
                if skipped_before {
                    report.skipped += 1;
                }
                match self
                    .fire(entry, &compiled, &state, slot, None, now, report)
                    .await
                {
                    Ok(Ok(fired)) => {
                        state.date = Some(slot);
                        state.next_execution_date = next;
                        state.updated_date = now;
                        if let Some(id) = fired {
                            self.record_lock(entry, &mut state, id);
                        }
                        Outcome::Store(state)
                    }
                    Ok(Err(message)) => self.disable(state, message, now),
                    Err(e) => {
                        report.failures += 1;
                        tracing::warn!(trigger = %state.uid(), error = %e, "cannot queue execution");
                        Outcome::Store(claimed.clone())
                    }
                }
            }
        }
    }

    /// The lock of the trigger's previous execution (`executionId`): see the module documentation.
    /// Clears `executionId` when the execution ended (or vanished past the grace); disables the
    /// trigger (`Stop`) when it ended in a `stopAfter` state.
    pub(super) async fn check_lock(
        &self,
        entry: &Entry,
        state: &mut TriggerState,
        now: DateTime<Utc>,
    ) -> Lock {
        let Some(execution_id) = state.execution_id.clone() else {
            return Lock::Free;
        };
        match self
            .executions
            .find_by_id(&state.tenant_id, &execution_id)
            .await
        {
            Ok(Some(execution)) if execution.state.is_terminated() => {
                state.execution_id = None;
                state.updated_date = now;
                let ended = execution.current();
                if entry
                    .trigger
                    .stop_after
                    .iter()
                    .any(|s| s.eq_ignore_ascii_case(ended.as_str()))
                {
                    let why = format!(
                        "stopAfter: execution {execution_id} ended in state {}",
                        ended.as_str()
                    );
                    tracing::info!(trigger = %state.uid(), %why, "trigger disabled");
                    state.disabled = true;
                    return Lock::Stop(why);
                }
                Lock::Free
            }
            Ok(Some(_)) if entry.trigger.allow_concurrent => Lock::Free,
            Ok(Some(_)) => Lock::Held,
            Ok(None) => {
                if now - state.updated_date >= to_std(self.config.lock_grace) {
                    state.execution_id = None;
                    state.updated_date = now;
                    Lock::Free
                } else if entry.trigger.allow_concurrent {
                    Lock::Free
                } else {
                    Lock::Held
                }
            }
            Err(e) => {
                tracing::warn!(trigger = %state.uid(), error = %e, "cannot read the locking execution");
                Lock::Failed
            }
        }
    }

    pub(super) fn record_lock(
        &self,
        entry: &Entry,
        state: &mut TriggerState,
        execution_id: String,
    ) {
        if !entry.trigger.allow_concurrent || !entry.trigger.stop_after.is_empty() {
            state.execution_id = Some(execution_id);
        }
    }

    async fn step_backfill(
        &self,
        entry: &Entry,
        compiled: &Compiled,
        mut state: TriggerState,
        mut backfill: Backfill,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Outcome {
        let end = backfill.end.unwrap_or(now);
        let slot = match compiled.timetable.next_at_or_after(backfill.current_date) {
            Ok(s) => s.filter(|s| *s < end),
            Err(e) => return self.disable(state, e.to_string(), now),
        };
        if let Some(slot) = slot {
            match self
                .fire(entry, compiled, &state, slot, Some(&backfill), now, report)
                .await
            {
                Ok(Ok(fired)) => {
                    if let Some(id) = fired {
                        self.record_lock(entry, &mut state, id);
                    }
                }
                Ok(Err(message)) => return self.disable(state, message, now),
                Err(e) => {
                    report.failures += 1;
                    tracing::warn!(trigger = %state.uid(), error = %e, "cannot queue backfill execution");
                    return Outcome::Store(state);
                }
            }
            match compiled.timetable.next_after(slot) {
                Ok(Some(next)) if next < end => {
                    backfill.current_date = next;
                    state.backfill = Some(backfill);
                    // Stay due so that the next step fires the next backfill slot.
                    state.next_execution_date = Some(now.min(next));
                    state.updated_date = now;
                    return Outcome::Store(state);
                }
                Ok(_) => {}
                Err(e) => return self.disable(state, e.to_string(), now),
            }
        }
        // The backfill is over: the regular schedule resumes after its last handled slot.
        state.backfill = None;
        state.updated_date = now;
        state.next_execution_date = match state.date {
            Some(date) => compiled.timetable.next_after(date),
            None => compiled.timetable.next_after(now),
        }
        .unwrap_or(None);
        Outcome::Store(state)
    }

    pub(super) fn disable(
        &self,
        mut state: TriggerState,
        message: String,
        now: DateTime<Utc>,
    ) -> Outcome {
        tracing::error!(trigger = %state.uid(), error = %message,
            "trigger cannot be evaluated: it is disabled until the flow changes");
        disable_with_error(&mut state, &message);
        state.updated_date = now;
        Outcome::Disable(state, message)
    }

    /// Evaluate the conditions of `slot` and queue its execution. `Ok(Ok(None))`: a condition is
    /// false, nothing fired; `Ok(Err(message))`: the trigger cannot be evaluated; `Err`: backend error.
    #[allow(clippy::too_many_arguments)]
    async fn fire(
        &self,
        entry: &Entry,
        compiled: &Compiled,
        state: &TriggerState,
        slot: DateTime<Utc>,
        backfill: Option<&Backfill>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<Result<Option<String>, String>, SchedulerError> {
        let flow = &entry.flow;
        let variables = match compiled.timetable.variables(slot) {
            Ok(v) => v,
            Err(e) => return Ok(Err(e.to_string())),
        };
        let mut ctx = flow_context(entry);
        if let Value::Object(map) = &mut ctx {
            map.insert("trigger".into(), Value::Object(variables.clone()));
        }
        match evaluate_conditions(&entry.trigger.conditions, &ctx, &self.expr) {
            Ok(true) => {}
            Ok(false) => {
                report.skipped += 1;
                tracing::debug!(trigger = %state.uid(), %slot, "conditions false: slot skipped");
                return Ok(Ok(None));
            }
            Err(e) => return Ok(Err(e.to_string())),
        }

        let backfill_id = backfill.and_then(|b| {
            b.labels
                .iter()
                .find(|l| l.key == BACKFILL_ID_LABEL)
                .map(|l| l.value.as_str())
        });
        let id = slot_execution_id(
            &state.tenant_id,
            &flow.namespace,
            &flow.id,
            &entry.trigger.id,
            slot,
            backfill_id,
        );
        // Inputs: the trigger's, overridden by the backfill's, rendered with the trigger variables.
        let mut raw_values: IndexMap<String, Value> = compiled.inputs.clone().unwrap_or_default();
        if let Some(b) = backfill {
            for (k, v) in &b.inputs {
                raw_values.insert(k.clone(), v.clone());
            }
        }
        let mut extra_labels: Vec<Label> = backfill.iter().flat_map(|b| b.labels.clone()).collect();
        if backfill.is_some() {
            extra_labels.push(Label::new(BACKFILL_LABEL, "true"));
        }
        let type_ = match entry.kind {
            Ok(Kind::Dates(_)) => ScheduleOnDates::TYPE,
            _ => Schedule::TYPE,
        };
        let start = StartRequest {
            id: &id,
            trigger_type: type_,
            variables,
            ctx: &ctx,
            raw_inputs: raw_values,
            extra_labels,
        };
        if let Err(message) = self
            .queue_execution(entry, &state.tenant_id, start, now)
            .await?
        {
            return Ok(Err(message));
        }
        tracing::info!(trigger = %state.uid(), execution_id = %id, %slot,
            namespace = %flow.namespace, flow = %flow.id, "schedule fired");
        report.fired.push(FiredSlot {
            trigger_uid: state.uid(),
            execution_id: id.clone(),
            slot,
            backfill: backfill.is_some(),
        });
        Ok(Ok(Some(id)))
    }

    /// Build the execution a trigger starts (labels: correlation id, flow labels, trigger labels,
    /// `extra_labels`; inputs rendered with `ctx` then resolved against the flow's inputs) and queue
    /// it. `Ok(Err(message))`: the inputs do not render or resolve; `Err`: backend error.
    pub(super) async fn queue_execution(
        &self,
        entry: &Entry,
        tenant: &str,
        start: StartRequest<'_>,
        now: DateTime<Utc>,
    ) -> Result<Result<(), String>, SchedulerError> {
        let flow = &entry.flow;
        let id = start.id.to_string();
        let mut execution = Execution::new(&flow.namespace, &flow.id, entry.revision);
        execution.id = id.clone();
        execution.tenant_id = tenant.to_string();
        execution.labels = vec![Label::new(system_labels::CORRELATION_ID, id.clone())];
        let user_labels = flow
            .labels
            .iter()
            .chain(&entry.trigger.labels)
            .map(|l| Label::new(l.key.clone(), l.value.clone()))
            .filter(|l| !l.key.starts_with("system."));
        for label in user_labels.chain(start.extra_labels) {
            set_label(&mut execution.labels, label);
        }
        execution.state = State::new_at(StateType::Created, now);
        execution.metadata.original_created_date = now;
        execution.trigger = Some(crate::model::execution::ExecutionTrigger {
            id: entry.trigger.id.clone(),
            type_: start.trigger_type.to_string(),
            variables: start.variables,
        });

        let mut raw = IndexMap::new();
        for (key, value) in start.raw_inputs {
            match self.expr.render_value(&value, start.ctx, true) {
                Ok(v) => {
                    raw.insert(key, RawInput::Json(v));
                }
                Err(e) => return Ok(Err(format!("cannot render input '{key}': {e}"))),
            }
        }
        let renderer = Renderer(self.expr.clone());
        match resolve_inputs(flow, raw, ExecutionRef::of(&execution), None, &renderer).await {
            Ok(inputs) => execution.inputs = inputs,
            Err(e) => return Ok(Err(format!("invalid inputs: {e}"))),
        }

        self.queue
            .publish(vec![execution_envelope(&execution)?])
            .await?;
        Ok(Ok(()))
    }
}

/// The execution a trigger starts, for [`SchedulerService::queue_execution`].
pub(super) struct StartRequest<'a> {
    /// Execution id (derived from the trigger and its slot or evaluation).
    pub(super) id: &'a str,
    /// Canonical trigger type.
    pub(super) trigger_type: &'a str,
    /// `trigger` variables.
    pub(super) variables: Map<String, Value>,
    /// Expression context of the inputs (`flow`, `trigger`).
    pub(super) ctx: &'a Value,
    /// Inputs before rendering.
    pub(super) raw_inputs: IndexMap<String, Value>,
    /// Labels added after the flow's and the trigger's (backfill labels).
    pub(super) extra_labels: Vec<Label>,
}

/// What the lock of a trigger's previous execution says ([`SchedulerService::check_lock`]).
pub(super) enum Lock {
    /// No execution holds it.
    Free,
    /// The previous execution still runs.
    Held,
    /// The previous execution ended in a `stopAfter` state: the trigger is disabled for this reason.
    Stop(String),
    /// The execution could not be read (backend error).
    Failed,
}

fn set_label(labels: &mut Vec<Label>, label: Label) {
    match labels.iter_mut().find(|l| l.key == label.key) {
        Some(existing) => existing.value = label.value,
        None => labels.push(label),
    }
}

fn disable_with_error(state: &mut TriggerState, message: &str) {
    state.disabled = true;
    state.error = Some(message.to_string());
}

/// The properties that define a trigger's timetable (a change restarts its schedule).
fn timetable_key(trigger: &Trigger) -> Value {
    let p = &trigger.properties;
    json!({
        "type": trigger.trigger_type,
        "cron": p.get("cron"),
        "withSeconds": p.get("withSeconds"),
        "timezone": p.get("timezone"),
        "dates": p.get("dates"),
    })
}

/// The expression context of a trigger without the slot: `flow`.
pub(super) fn flow_context(entry: &Entry) -> Value {
    let flow = &entry.flow;
    let mut ctx = Map::new();
    ctx.insert(
        "flow".into(),
        json!({
            "id": flow.id,
            "namespace": flow.namespace,
            "revision": entry.revision,
            "tenantId": flow.tenant_id,
        }),
    );
    Value::Object(ctx)
}

/// Dates rendered from an expression: a list, or a JSON list in a string, or one date.
fn dates_of(rendered: Value) -> Result<Vec<String>, String> {
    let list = match rendered {
        Value::String(s) => match serde_json::from_str::<Value>(&s) {
            Ok(Value::Array(a)) => a,
            _ => vec![Value::String(s)],
        },
        Value::Array(a) => a,
        other => return Err(format!("dates must render to a list, got {other}")),
    };
    list.into_iter()
        .map(|v| match v {
            Value::String(s) => Ok(s),
            other => Err(format!("a date must be a string, got {other}")),
        })
        .collect()
}
