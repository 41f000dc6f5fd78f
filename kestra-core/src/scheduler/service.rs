//! [`SchedulerService`]: keeps one [`TriggerState`] per schedule or polling trigger, claims the due
//! ones and starts their executions (polling triggers: sends their evaluations to the workers and
//! applies the results, see [`super::polling`]).
//!
//! # One evaluation step ([`SchedulerService::tick`])
//!
//! 1. **Sync** (every tenant of [`SchedulerConfig::tenants`]): every `Schedule`/`ScheduleOnDates` trigger
//!    of every flow of the [`FlowSource`] gets a state whose first `nextExecutionDate` is the first slot
//!    after now (nothing fires for the past on creation). States of triggers or flows that no longer
//!    exist are deleted. On a new flow revision, a changed timetable (cron, seconds, zone, dates)
//!    restarts at the first slot after now, and a trigger the system had disabled with an error is
//!    enabled again (the user changed the flow). A trigger disabled in the flow (or a disabled flow)
//!    has its pending slot removed when next claimed; once enabled again, the sync restores the slot
//!    after the last handled one (`date`), so the recovery policy applies to the slots of the disabled
//!    period and the next slot is never skipped.
//! 2. **Events**: the [`TriggerEvent`](crate::messages::TriggerEvent)s the executor sent
//!    ([`Topic::Trigger`](crate::queue::Topic::Trigger), keyed by trigger uid)
//!    and the workers' evaluation results ([`Topic::WorkerTriggerResult`](crate::queue::Topic::WorkerTriggerResult)) are applied to their
//!    triggers, each under its trigger's claim ([`TriggerUnit::claim`]).
//! 3. **Claim** due triggers with [`TriggerUnit::claim_due`], in batches, until none is left. A
//!    trigger is handled at most once per step.
//! 4. **Lock**: unless `allowConcurrent`, a trigger whose last execution (`executionId`) still runs does
//!    not fire: its pending slot is *kept* (as Kestra, which fires when the trigger is free again); when
//!    the execution ends, the missed slots follow the recovery policy. The lock is cleared by the
//!    executor's [`TriggerEvent::ExecutionEnded`](crate::messages::TriggerEvent::ExecutionEnded) for that execution (the scheduler never reads
//!    executions). A terminal state listed in `stopAfter` disables the trigger. With
//!    `allowConcurrent`, the last execution is still recorded (so that `stopAfter` works) but never
//!    blocks.
//! 5. **Fire**: [`plan`] picks the slot; the conditions are evaluated (false: the slot is skipped); the
//!    execution is built (labels: flow labels, trigger labels; trigger `{id, type, variables {date, next,
//!    previous}}`; inputs rendered with the trigger variables then resolved against the flow's inputs),
//!    staged, and the state records `date` = slot, `nextExecutionDate` = next slot, `executionId`.
//!    A backfill fires its slots first, one per step, with its inputs and labels plus
//!    `system.backfill=true`; the regular schedule resumes after it (its slots due meanwhile follow the
//!    recovery policy).
//!
//! The whole step is one [`TriggerUnit`] of the queue backend ([`Queue::begin_triggers`]): the new
//! trigger states, the executions and evaluation jobs it starts, and the acknowledgements of the
//! events and results it consumed commit together or not at all. Several schedulers never hold the
//! same trigger at once, and a slot's execution is queued in the same commit that moves the trigger
//! past the slot. The scheduler takes no repository: flows come from a [`FlowSource`], trigger state
//! and events from the queue backend, so it keeps firing while the repository is unavailable.
//!
//! Polling triggers (types with a
//! [`DEFAULT_INTERVAL`](crate::flow::TriggerType::DEFAULT_INTERVAL)) go through the same sync, claim,
//! lock and commit; their sync and handling are described in [`super::polling`].
//!
//! A trigger that cannot be evaluated (cron or time zone that slipped through validation, unsupported
//! condition, inputs that do not render or resolve) is disabled with the message in its state's
//! `error`, logged once at ERROR, instead of failing every step. A backend error fails the step: its
//! unit is rolled back and the next step starts again from the committed states.

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
use crate::expression::ExpressionEngine;
use crate::flow::apply_plugin_defaults;
use crate::flow::model::{Flow, Trigger};
use crate::flow::property::Property;
use crate::flow::registry::{TaskRegistry, TriggerType};
use crate::flow::triggers::{Schedule, ScheduleOnDates};
use crate::inputs::{ExecutionRef, InputRenderer, RawInput, resolve_inputs};
use crate::messages::execution_envelope;
use crate::model::execution::system_labels;
use crate::model::{Backfill, Execution, Label, State, StateType, TriggerState, trigger_uid};
use crate::queue::{DeliveryTag, Queue, TriggerUnit};
use crate::repository::FlowRecord;
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
    /// How long the events and evaluation results this instance received are held before the queue
    /// hands them out again (30 s): one held elsewhere by another scheduler waits in memory so long.
    pub lease: Duration,
    /// Triggers claimed per batch (100).
    pub batch: usize,
    /// Tenants whose flows are scheduled (`["main"]`).
    pub tenants: Vec<String>,
    /// How long a polling trigger's evaluation may run without a result before the scheduler sends
    /// another one (5 min): a worker may have died with it. A late result of the abandoned
    /// evaluation is ignored.
    pub evaluation_timeout: Duration,
    /// Between two heartbeats of this instance on the queue (3 s, [`crate::liveness`]).
    pub heartbeat_interval: Duration,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            id: format!("scheduler-{}", crate::model::new_id()),
            tick: Duration::from_secs(1),
            lease: Duration::from_secs(30),
            batch: 100,
            tenants: vec![crate::model::DEFAULT_TENANT.to_string()],
            evaluation_timeout: Duration::from_secs(5 * 60),
            heartbeat_interval: crate::liveness::LivenessConfig::default().heartbeat_interval,
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
    /// Deliveries (evaluation results, trigger events) that could not be received, acknowledged or
    /// dead-lettered; they are delivered again.
    pub failures: usize,
    /// Polling triggers whose evaluation was sent to the workers (uids).
    pub evaluations: Vec<String>,
    /// Evaluation results applied.
    pub results: usize,
    /// Evaluation results ignored: not for the running evaluation (late, duplicate) or for a trigger
    /// that no longer exists.
    pub stale_results: usize,
    /// Trigger events ([`TriggerEvent`](crate::messages::TriggerEvent)) applied.
    pub events: usize,
}

/// The scheduler service. See the module documentation.
pub struct SchedulerService {
    pub(super) config: SchedulerConfig,
    clock: Arc<dyn Clock>,
    flows: Arc<dyn FlowSource>,
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

impl SchedulerService {
    /// A scheduler reading flows from `flows` and keeping trigger state behind `queue`
    /// ([`Queue::begin_triggers`]); it reads no repository.
    pub fn new(
        config: SchedulerConfig,
        clock: Arc<dyn Clock>,
        flows: Arc<dyn FlowSource>,
        queue: Arc<dyn Queue>,
        registry: Arc<TaskRegistry>,
        expr: Arc<ExpressionEngine>,
    ) -> SchedulerService {
        SchedulerService {
            config,
            clock,
            flows,
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
        let heartbeat = crate::liveness::Heartbeat::start(
            self.queue.clone(),
            crate::model::ServiceType::Scheduler,
            &self.config.id,
            self.config.heartbeat_interval,
        );
        loop {
            if let Err(e) = self.tick().await {
                tracing::warn!(scheduler = %self.config.id, error = %e, "scheduler step failed");
            }
            tokio::select! {
                () = shutdown.cancelled() => break,
                () = tokio::time::sleep(self.config.tick) => {}
            }
        }
        heartbeat.stop().await;
        tracing::info!(scheduler = %self.config.id, "scheduler stopped");
    }

    /// One evaluation step at the clock's "now", in one [`TriggerUnit`]. See the module
    /// documentation.
    pub async fn tick(&self) -> Result<TickReport, SchedulerError> {
        let now = self.clock.now();
        let mut report = TickReport {
            now: Some(now),
            ..TickReport::default()
        };
        let flows = self.read_flows().await?;
        // Received before the unit begins: a unit holds the backend's writer (SQLite) until it ends.
        self.receive_results(&flows.entries, &mut report).await;
        self.receive_events(&flows.entries, &mut report).await;

        let mut unit = self.queue.begin_triggers().await?;
        let mut step = Step::default();
        self.sync(unit.as_mut(), &flows, now, &mut report, &mut step)
            .await?;
        self.apply_pending(unit.as_mut(), &flows.entries, now, &mut report, &mut step)
            .await?;

        // Triggers held since the sync or the events that are due now.
        let due: Vec<String> = step
            .held
            .iter()
            .filter(|(_, h)| is_due(&h.state, now))
            .map(|(uid, _)| uid.clone())
            .collect();
        for uid in due {
            self.handle_held(
                unit.as_mut(),
                &flows.entries,
                &uid,
                now,
                &mut report,
                &mut step,
            )
            .await?;
        }
        loop {
            let batch = unit.claim_due(now, self.config.batch.max(1)).await?;
            if batch.is_empty() {
                break;
            }
            for state in batch {
                report.claimed += 1;
                let uid = state.uid();
                if step.held.contains_key(&uid) {
                    // Cannot happen with an honest unit (it never hands out a trigger twice).
                    continue;
                }
                step.held.insert(uid.clone(), Held::claimed(state));
                self.handle_held(
                    unit.as_mut(),
                    &flows.entries,
                    &uid,
                    now,
                    &mut report,
                    &mut step,
                )
                .await?;
            }
        }

        for held in step.held.values() {
            if held.state != held.claimed {
                unit.save(&held.state).await?;
            }
        }
        if !step.acks.is_empty() {
            unit.ack(&step.acks).await?;
        }
        unit.commit().await?;
        Ok(report)
    }

    /// Handle a held trigger as due (once per step): fire, dispatch an evaluation, or keep it.
    async fn handle_held(
        &self,
        unit: &mut dyn TriggerUnit,
        entries: &HashMap<String, Entry>,
        uid: &str,
        now: DateTime<Utc>,
        report: &mut TickReport,
        step: &mut Step,
    ) -> Result<(), SchedulerError> {
        let Some(held) = step.held.get(uid) else {
            return Ok(());
        };
        if held.handled {
            return Ok(());
        }
        let state = held.state.clone();
        let outcome = match entries.get(uid) {
            Some(entry) if entry.polling => {
                self.handle_polling(unit, entry, &state, now, report)
                    .await?
            }
            Some(entry) => self.handle(unit, entry, &state, now, report).await?,
            // Not a trigger of this scheduler's tenants: leave it as it is.
            None => Outcome::Store(state),
        };
        if let Some(held) = step.held.get_mut(uid) {
            held.handled = true;
            held.state = outcome.into_state(uid, report);
        }
        Ok(())
    }

    /// The flows with schedule or polling triggers of every tenant, by trigger uid.
    async fn read_flows(&self) -> Result<FlowSnapshot, SchedulerError> {
        let mut snapshot = FlowSnapshot::default();
        for tenant in &self.config.tenants {
            for source in self.flows.find_all(tenant).await? {
                let flow = match self.read_flow(tenant, &source) {
                    Ok(f) => Arc::new(f),
                    Err(message) => {
                        tracing::warn!(namespace = %source.namespace, flow = %source.id, %message,
                            "scheduler cannot read flow");
                        snapshot.unreadable.insert((
                            tenant.clone(),
                            source.namespace.clone(),
                            source.id.clone(),
                        ));
                        continue;
                    }
                };
                let revision = flow.revision.unwrap_or(1);
                for trigger in &flow.triggers {
                    let uid = trigger_uid(tenant, &flow.namespace, &flow.id, &trigger.id);
                    snapshot.live.insert(uid.clone());
                    let Some(kind) = self.kind_of(trigger) else {
                        continue;
                    };
                    let entry = Entry {
                        flow: flow.clone(),
                        revision,
                        trigger: trigger.clone(),
                        polling: self.registry.polling_interval(trigger).is_some(),
                        kind,
                        disabled: flow.disabled || trigger.disabled,
                    };
                    snapshot.entries.insert(uid, entry);
                }
            }
        }
        Ok(snapshot)
    }

    /// Make sure every schedule trigger has a state and no state outlives its trigger (see the module
    /// documentation). A trigger another scheduler holds is synced at a later step.
    async fn sync(
        &self,
        unit: &mut dyn TriggerUnit,
        flows: &FlowSnapshot,
        now: DateTime<Utc>,
        report: &mut TickReport,
        step: &mut Step,
    ) -> Result<(), SchedulerError> {
        for tenant in &self.config.tenants {
            let states: HashMap<String, TriggerState> = unit
                .states(tenant)
                .await?
                .into_iter()
                .map(|s| (s.uid(), s))
                .collect();
            // In uid order: two schedulers creating the same new states wait on each other in
            // one order, never in a cycle.
            let mut entries: Vec<(&String, &Entry)> = flows
                .entries
                .iter()
                .filter(|(_, e)| e.flow.tenant_id == *tenant)
                .collect();
            entries.sort_by(|a, b| a.0.cmp(b.0));
            for (uid, entry) in entries {
                match states.get(uid) {
                    None => {
                        let state = self.synced(tenant, entry, None, now, report).await?;
                        if let Some(state) = state
                            && unit.create(&state).await?
                        {
                            report.created += 1;
                            if let Some(message) = &state.error {
                                report.disabled.push((uid.clone(), message.clone()));
                            }
                            step.held.insert(uid.clone(), Held::claimed(state));
                        }
                    }
                    Some(existing) if needs_sync(entry, existing) => {
                        let Some(claimed) = unit.claim(uid).await? else {
                            tracing::debug!(trigger = %uid, "held by another scheduler: synced later");
                            continue;
                        };
                        let state = self
                            .synced(tenant, entry, Some(&claimed), now, report)
                            .await?;
                        let mut held = Held::claimed(claimed);
                        if let Some(state) = state {
                            held.state = state;
                        }
                        step.held.insert(uid.clone(), held);
                    }
                    Some(_) => {}
                }
            }
            for (uid, state) in &states {
                let flow_key = (
                    state.tenant_id.clone(),
                    state.namespace.clone(),
                    state.flow_id.clone(),
                );
                if flows.live.contains(uid) || flows.unreadable.contains(&flow_key) {
                    continue;
                }
                if unit.claim(uid).await?.is_some() {
                    unit.delete(uid).await?;
                    report.removed += 1;
                }
            }
        }
        Ok(())
    }

    fn read_flow(&self, tenant: &str, record: &FlowRecord) -> Result<Flow, String> {
        let mut flow: Flow =
            serde_json::from_value(record.flow.clone()).map_err(|e| e.to_string())?;
        flow.revision = Some(record.revision);
        let mut flow = apply_plugin_defaults(&flow, &self.registry).map_err(|e| e.to_string())?;
        flow.tenant_id = tenant.to_string();
        Ok(flow)
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

    /// The state a trigger should have after the sync, when it needs a write: a new trigger's first
    /// state (`existing` = `None`, the caller counts it created and reports its error), or the new
    /// state of an existing one.
    async fn synced(
        &self,
        tenant: &str,
        entry: &Entry,
        existing: Option<&TriggerState>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<Option<TriggerState>, SchedulerError> {
        if entry.polling {
            return self
                .synced_polling(tenant, entry, existing, now, report)
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
            return Ok(Some(state));
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
            return Ok(Some(state));
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
                    return Ok(Some(state));
                }
                // An exhausted timetable stays without a next date.
                Ok(None) => {}
                Err(message) => {
                    disable_with_error(&mut state, &message);
                    state.updated_date = now;
                    report.disabled.push((uid, message));
                    return Ok(Some(state));
                }
            }
        }
        Ok(None)
    }

    /// The timetable-defining properties of the trigger in an older revision of its flow.
    async fn timetable_key_at(
        &self,
        entry: &Entry,
        revision: i32,
    ) -> Result<Option<Value>, SchedulerError> {
        let flow = &entry.flow;
        let Some(source) = self
            .flows
            .find(&flow.tenant_id, &flow.namespace, &flow.id, Some(revision))
            .await?
        else {
            return Ok(None);
        };
        let Ok(old) = self.read_flow(&flow.tenant_id, &source) else {
            return Ok(None);
        };
        Ok(old
            .triggers
            .iter()
            .find(|t| t.id == entry.trigger.id)
            .map(timetable_key))
    }

    /// Handle one claimed trigger at `now`. `Err`: a backend error (the step fails).
    async fn handle(
        &self,
        unit: &mut dyn TriggerUnit,
        entry: &Entry,
        claimed: &TriggerState,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<Outcome, SchedulerError> {
        let mut state = claimed.clone();
        if state.disabled {
            return Ok(Outcome::Store(state));
        }
        if entry.disabled {
            // Disabled in the flow: drop the pending slot; the sync restores it once enabled again.
            state.next_execution_date = None;
            state.updated_date = now;
            return Ok(Outcome::Store(state));
        }

        if self.check_lock(entry, &state) == Lock::Held {
            report.locked += 1;
            return Ok(Outcome::Store(state));
        }

        let compiled = match self.compile(entry) {
            Ok(c) => c,
            Err(message) => return Ok(self.disable(state, message, now)),
        };

        if let Some(backfill) = state.backfill.clone() {
            if backfill.paused {
                return Ok(Outcome::Store(state));
            }
            return self
                .step_backfill(unit, entry, &compiled, state, backfill, now, report)
                .await;
        }

        let Some(pending) = state.next_execution_date else {
            return Ok(Outcome::Store(state));
        };
        let decision = match plan(&compiled.timetable, compiled.policy, pending, now) {
            Ok(p) => p,
            Err(e) => return Ok(self.disable(state, e.to_string(), now)),
        };
        Ok(match decision {
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
                    .fire(unit, entry, &compiled, &state, slot, None, now, report)
                    .await?
                {
                    Ok(fired) => {
                        state.date = Some(slot);
                        state.next_execution_date = next;
                        state.updated_date = now;
                        if let Some(id) = fired {
                            self.record_lock(entry, &mut state, id);
                        }
                        Outcome::Store(state)
                    }
                    Err(message) => self.disable(state, message, now),
                }
            }
        })
    }

    /// The lock of the trigger's previous execution (`executionId`, cleared when the executor
    /// reports its end): see the module documentation.
    pub(super) fn check_lock(&self, entry: &Entry, state: &TriggerState) -> Lock {
        match state.execution_id {
            Some(_) if !entry.trigger.allow_concurrent => Lock::Held,
            _ => Lock::Free,
        }
    }

    /// Apply the end of an execution the trigger started
    /// ([`TriggerEvent::ExecutionEnded`](crate::messages::TriggerEvent::ExecutionEnded)): the
    /// lock is released if that execution holds it, and a final state listed in `stopAfter`
    /// disables the trigger (returned: why). The end of another execution changes nothing.
    pub(super) fn apply_ended(
        &self,
        entry: &Entry,
        state: &mut TriggerState,
        execution_id: &str,
        ended: StateType,
        now: DateTime<Utc>,
    ) -> Option<String> {
        if state.execution_id.as_deref() != Some(execution_id) {
            tracing::debug!(trigger = %state.uid(), %execution_id,
                "end of an execution that holds no lock of the trigger: ignored");
            return None;
        }
        state.execution_id = None;
        state.updated_date = now;
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
            return Some(why);
        }
        None
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

    #[allow(clippy::too_many_arguments)]
    async fn step_backfill(
        &self,
        unit: &mut dyn TriggerUnit,
        entry: &Entry,
        compiled: &Compiled,
        mut state: TriggerState,
        mut backfill: Backfill,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<Outcome, SchedulerError> {
        let end = backfill.end.unwrap_or(now);
        let slot = match compiled.timetable.next_at_or_after(backfill.current_date) {
            Ok(s) => s.filter(|s| *s < end),
            Err(e) => return Ok(self.disable(state, e.to_string(), now)),
        };
        if let Some(slot) = slot {
            match self
                .fire(
                    unit,
                    entry,
                    compiled,
                    &state,
                    slot,
                    Some(&backfill),
                    now,
                    report,
                )
                .await?
            {
                Ok(fired) => {
                    if let Some(id) = fired {
                        self.record_lock(entry, &mut state, id);
                    }
                }
                Err(message) => return Ok(self.disable(state, message, now)),
            }
            match compiled.timetable.next_after(slot) {
                Ok(Some(next)) if next < end => {
                    backfill.current_date = next;
                    state.backfill = Some(backfill);
                    // Stay due so that the next step fires the next backfill slot.
                    state.next_execution_date = Some(now.min(next));
                    state.updated_date = now;
                    return Ok(Outcome::Store(state));
                }
                Ok(_) => {}
                Err(e) => return Ok(self.disable(state, e.to_string(), now)),
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
        Ok(Outcome::Store(state))
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
        unit: &mut dyn TriggerUnit,
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
            .queue_execution(unit, entry, &state.tenant_id, start, now)
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
    /// `extra_labels`; inputs rendered with `ctx` then resolved against the flow's inputs) and stage
    /// it in `unit`. `Ok(Err(message))`: the inputs do not render or resolve; `Err`: backend error.
    pub(super) async fn queue_execution(
        &self,
        unit: &mut dyn TriggerUnit,
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

        unit.publish(vec![execution_envelope(&execution)?]).await?;
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Lock {
    /// No execution holds it.
    Free,
    /// The previous execution still runs (the executor has not reported its end).
    Held,
}

/// The triggers one step holds and what it consumed.
#[derive(Default)]
pub(super) struct Step {
    /// Held triggers by uid: their state as claimed and their new state.
    pub(super) held: IndexMap<String, Held>,
    /// Deliveries consumed by the step, acknowledged when its unit commits.
    pub(super) acks: Vec<DeliveryTag>,
}

/// A trigger held by the step's unit.
pub(super) struct Held {
    /// As claimed (or created).
    pub(super) claimed: TriggerState,
    /// Its new state (stored at the end of the step if it differs).
    pub(super) state: TriggerState,
    /// Already handled as due in this step.
    pub(super) handled: bool,
}

impl Held {
    pub(super) fn claimed(state: TriggerState) -> Held {
        Held {
            claimed: state.clone(),
            state,
            handled: false,
        }
    }
}

/// The flows of a step.
#[derive(Default)]
pub(super) struct FlowSnapshot {
    /// Schedule and polling triggers by uid.
    pub(super) entries: HashMap<String, Entry>,
    /// Uids of every trigger of every flow (any type).
    live: HashSet<String>,
    /// (tenant, namespace, flow id) of flows that cannot be read: their states are kept.
    unreadable: HashSet<(String, String, String)>,
}

impl Outcome {
    /// The state to store; a disabling reason is reported.
    fn into_state(self, uid: &str, report: &mut TickReport) -> TriggerState {
        match self {
            Outcome::Store(s) => s,
            Outcome::Disable(s, why) => {
                report.disabled.push((uid.to_string(), why));
                s
            }
        }
    }
}

/// Enabled and due at `now`.
fn is_due(state: &TriggerState, now: DateTime<Utc>) -> bool {
    !state.disabled && state.next_execution_date.is_some_and(|d| d <= now)
}

/// Whether the sync may have to write an existing trigger's state: a new flow revision, or a
/// trigger enabled again (no pending slot).
fn needs_sync(entry: &Entry, existing: &TriggerState) -> bool {
    existing.flow_revision != Some(entry.revision)
        || (!entry.disabled
            && !existing.disabled
            && existing.next_execution_date.is_none()
            && (entry.polling || existing.backfill.is_none()))
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
