//! Polling triggers in the scheduler (Kestra's `PollingTriggerInterface`, e.g.
//! `io.kestra.plugin.core.http.Trigger`): the scheduler decides *when* a polling trigger is evaluated,
//! a worker evaluates it ([`crate::worker::polling`]), and the scheduler starts the execution.
//!
//! A trigger is a polling trigger when its type has a
//! [`TriggerType::DEFAULT_INTERVAL`](crate::flow::TriggerType::DEFAULT_INTERVAL); its `interval`
//! property overrides the default
//! ([`TaskRegistry::polling_interval`](crate::flow::TaskRegistry::polling_interval)).
//!
//! # State
//!
//! - **Sync**: a new polling trigger (or one enabled again) is first due one `interval` later. A new
//!   flow revision enables a trigger the system had disabled with an error.
//! - **Dispatch** (claimed as due, lock free): a [`WorkerTrigger`] job is sent to the workers with
//!   `evaluationDate` = now; the state records `evaluateRunningDate` = now (Kestra's field) and
//!   `date` = now, and is next due when the evaluation times out
//!   ([`SchedulerConfig::evaluation_timeout`](super::SchedulerConfig::evaluation_timeout), a worker
//!   may have died with it): no second evaluation is sent before its result or that timeout.
//! - **Result** ([`WorkerTriggerResult`], received at each step): the scheduler claims the result's
//!   trigger by uid ([`TriggerUnit::claim`]) and applies the result; the new state, the execution
//!   it starts and the acknowledgement of the result commit together with the step's unit. A
//!   trigger held by another scheduler at that moment is tried again at the next step. A result whose
//!   `evaluationDate` is not the running evaluation's (late, duplicate) is stale and ignored.
//!   Otherwise the running mark is cleared and the next evaluation is due at
//!   `evaluationDate + interval`. An evaluation error is logged and kept in the state's `error` (the
//!   trigger stays enabled; the next evaluation clears it). Variables start an execution: its id is
//!   derived from (trigger, evaluation date), so one evaluation can only ever start one execution; the
//!   trigger's `conditions` are evaluated with `trigger` = the variables (false: nothing starts), its
//!   `inputs` are rendered with them, its labels are added, and unless `allowConcurrent` the
//!   execution holds the trigger's lock (no evaluation is sent while it runs; `stopAfter` applies)
//!   as for schedules.
//! - A trigger that cannot be evaluated at all (bad `interval`, unsupported condition, inputs that
//!   do not render or resolve) is disabled with the message in its state's `error`.
//!
//! Several schedulers may run at once: dispatches and results are applied under the trigger's claim,
//! so one due date sends one evaluation and one result starts at most one execution (its id is
//! derived from the evaluation date anyway). A received result (or [`TriggerEvent`]) waits in memory
//! while its trigger is held elsewhere; past the queue lease it is dropped there and delivered again
//! by the queue.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use indexmap::IndexMap;
use serde_json::{Map, Value};

use super::SchedulerError;
use super::conditions::{check_conditions, evaluate_conditions};
use super::schedule::slot_execution_id;
use super::service::{
    Entry, FiredSlot, Held, Kind, Lock, Outcome, SchedulerService, StartRequest, Step, TickReport,
};
use crate::messages::{TriggerEvent, WorkerJob, WorkerTrigger, WorkerTriggerResult};
use crate::model::{TriggerState, trigger_uid};
use crate::queue::{ConsumerGroup, Delivery, DeliveryTag, Topic, TriggerUnit};

/// A received result: its delivery tag, the result, when it was received.
type Received = (DeliveryTag, WorkerTriggerResult, Instant);

/// A received trigger event: its delivery tag, the event, when it was received.
type ReceivedEvent = (DeliveryTag, TriggerEvent, Instant);

/// Evaluation results and trigger events received by a scheduler and not applied yet, by trigger
/// uid.
#[derive(Debug, Default)]
pub(super) struct PendingResults {
    by_trigger: HashMap<String, Vec<Received>>,
    events: HashMap<String, Vec<ReceivedEvent>>,
}

fn to_chrono(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::MAX)
}

impl SchedulerService {
    fn pending(&self) -> std::sync::MutexGuard<'_, PendingResults> {
        // The map stays consistent even if a holder panicked.
        self.results
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Apply the trigger events and evaluation results waiting in memory, each under its trigger's
    /// claim (see the module documentation); a trigger held elsewhere keeps them for the next step.
    pub(super) async fn apply_pending(
        &self,
        unit: &mut dyn TriggerUnit,
        entries: &HashMap<String, Entry>,
        now: DateTime<Utc>,
        report: &mut TickReport,
        step: &mut Step,
    ) -> Result<(), SchedulerError> {
        let mut uids: Vec<String> = {
            let pending = self.pending();
            pending
                .by_trigger
                .keys()
                .chain(pending.events.keys())
                .cloned()
                .collect()
        };
        uids.sort();
        uids.dedup();
        for uid in uids {
            let Some(entry) = entries.get(&uid) else {
                continue;
            };
            if !step.held.contains_key(&uid) {
                match unit.claim(&uid).await? {
                    Some(state) => {
                        step.held.insert(uid.clone(), Held::claimed(state));
                    }
                    // Held by another scheduler (or not created yet): try again at the next step.
                    None => continue,
                }
            }
            let (results, events) = {
                let mut pending = self.pending();
                (
                    pending.by_trigger.remove(&uid).unwrap_or_default(),
                    pending.events.remove(&uid).unwrap_or_default(),
                )
            };
            let Some(held) = step.held.get_mut(&uid) else {
                continue;
            };
            for (tag, event, _) in events {
                match event {
                    TriggerEvent::ExecutionEnded {
                        execution_id,
                        state: ended,
                        ..
                    } => {
                        report.events += 1;
                        if let Some(why) =
                            self.apply_ended(entry, &mut held.state, &execution_id, ended, now)
                        {
                            report.disabled.push((uid.clone(), why));
                        }
                    }
                }
                step.acks.push(tag);
            }
            if results.is_empty() {
                continue;
            }
            if !entry.polling {
                report.stale_results += results.len();
                step.acks.extend(results.iter().map(|(tag, _, _)| *tag));
                continue;
            }
            let tags: Vec<DeliveryTag> = results.iter().map(|(tag, _, _)| *tag).collect();
            let results = results.into_iter().map(|(_, r, _)| r).collect();
            let current = held.state.clone();
            let (outcome, consumed) = self
                .apply(unit, entry, &current, results, now, report)
                .await?;
            if let Some(held) = step.held.get_mut(&uid) {
                held.state = match outcome {
                    Outcome::Store(s) => s,
                    Outcome::Disable(s, why) => {
                        report.disabled.push((uid.clone(), why));
                        s
                    }
                };
            }
            if consumed {
                step.acks.extend(tags);
            }
        }
        Ok(())
    }

    /// Receive the evaluation results waiting in the queue into the pending map. Results of triggers
    /// of this scheduler's tenants that no longer exist are acknowledged and dropped; results of other
    /// tenants are left to their schedulers; malformed ones are dead-lettered. Nothing is received
    /// while this scheduler has no polling trigger.
    pub(super) async fn receive_results(
        &self,
        entries: &HashMap<String, Entry>,
        report: &mut TickReport,
    ) {
        let lease = self.config.lease;
        self.pending().by_trigger.retain(|_, results| {
            // Past the lease, the queue hands the result out again (maybe to another scheduler).
            results.retain(|(_, _, at)| at.elapsed() < lease);
            !results.is_empty()
        });
        if !entries.values().any(|e| e.polling) {
            return;
        }
        let Some(deliveries) = self.receive(Topic::WorkerTriggerResult, report).await else {
            return;
        };
        let mut orphans = Vec::new();
        for delivery in deliveries {
            let result: WorkerTriggerResult = match delivery.envelope.decode() {
                Ok(r) => r,
                Err(e) => {
                    self.dead_letter(&delivery, &e.to_string(), report).await;
                    continue;
                }
            };
            let uid = result.uid();
            if entries.get(&uid).is_some_and(|e| e.polling) {
                self.pending().by_trigger.entry(uid).or_default().push((
                    delivery.tag,
                    result,
                    Instant::now(),
                ));
            } else if !self.config.tenants.contains(&result.tenant_id) {
                tracing::debug!(trigger = %uid, "evaluation result of another tenant left to its scheduler");
            } else {
                tracing::debug!(trigger = %uid, "evaluation result of a trigger that no longer exists");
                report.stale_results += 1;
                orphans.push(delivery.tag);
            }
        }
        self.ack_orphans(&orphans, report).await;
    }

    /// Receive the trigger events ([`Topic::Trigger`]) waiting in the queue into the pending map, as
    /// [`SchedulerService::receive_results`] does for results.
    pub(super) async fn receive_events(
        &self,
        entries: &HashMap<String, Entry>,
        report: &mut TickReport,
    ) {
        let lease = self.config.lease;
        self.pending().events.retain(|_, events| {
            events.retain(|(_, _, at)| at.elapsed() < lease);
            !events.is_empty()
        });
        let Some(deliveries) = self.receive(Topic::Trigger, report).await else {
            return;
        };
        let mut orphans = Vec::new();
        for delivery in deliveries {
            let event: TriggerEvent = match delivery.envelope.decode() {
                Ok(e) => e,
                Err(e) => {
                    self.dead_letter(&delivery, &e.to_string(), report).await;
                    continue;
                }
            };
            let uid = event.uid();
            if entries.contains_key(&uid) {
                self.pending().events.entry(uid).or_default().push((
                    delivery.tag,
                    event,
                    Instant::now(),
                ));
            } else if !self.config.tenants.iter().any(|t| t == event.tenant_id()) {
                tracing::debug!(trigger = %uid, "trigger event of another tenant left to its scheduler");
            } else {
                tracing::debug!(trigger = %uid, "event of a trigger that no longer exists");
                orphans.push(delivery.tag);
            }
        }
        self.ack_orphans(&orphans, report).await;
    }

    async fn receive(&self, topic: Topic, report: &mut TickReport) -> Option<Vec<Delivery>> {
        match self
            .queue
            .receive(
                ConsumerGroup::Scheduler,
                topic,
                self.config.batch.max(1) * 5,
                self.config.lease,
                Duration::ZERO,
            )
            .await
        {
            Ok(d) => Some(d),
            Err(e) => {
                report.failures += 1;
                tracing::warn!(scheduler = %self.config.id, %topic, error = %e,
                    "cannot receive scheduler messages");
                None
            }
        }
    }

    async fn dead_letter(&self, delivery: &Delivery, reason: &str, report: &mut TickReport) {
        tracing::error!(topic = %delivery.envelope.topic, key = %delivery.envelope.key,
            "malformed scheduler message, dead-lettered: {reason}");
        if let Err(e) = self.queue.dead_letter(delivery, reason).await {
            report.failures += 1;
            tracing::error!("cannot dead-letter a malformed scheduler message: {e}");
        }
    }

    async fn ack_orphans(&self, orphans: &[DeliveryTag], report: &mut TickReport) {
        if !orphans.is_empty()
            && let Err(e) = self.queue.ack(ConsumerGroup::Scheduler, orphans).await
        {
            report.failures += 1;
            tracing::warn!(error = %e, "cannot acknowledge messages of triggers that no longer exist");
        }
    }

    /// The state of a polling trigger after the sync, when it needs a write (see
    /// [`SchedulerService`]'s sync and the module documentation).
    pub(super) async fn synced_polling(
        &self,
        tenant: &str,
        entry: &Entry,
        existing: Option<&TriggerState>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<Option<TriggerState>, SchedulerError> {
        let flow = &entry.flow;
        let uid = trigger_uid(tenant, &flow.namespace, &flow.id, &entry.trigger.id);
        let interval = interval_of(entry);
        let Some(existing) = existing else {
            let mut state = TriggerState::new(
                tenant,
                &flow.namespace,
                &flow.id,
                &entry.trigger.id,
                entry.revision,
                now,
            );
            match interval {
                Ok(interval) => state.next_execution_date = Some(now + to_chrono(interval)),
                Err(message) => {
                    state.disabled = true;
                    state.error = Some(message);
                }
            }
            return Ok(Some(state));
        };

        let mut state = existing.clone();
        if state.flow_revision != Some(entry.revision) {
            state.flow_revision = Some(entry.revision);
            state.updated_date = now;
            if state.disabled && state.error.is_some() {
                // The user changed the flow: try again.
                match interval {
                    Ok(interval) => {
                        state.disabled = false;
                        state.error = None;
                        state.evaluate_running_date = None;
                        state.next_execution_date = Some(now + to_chrono(interval));
                    }
                    Err(message) => {
                        state.error = Some(message.clone());
                        report.disabled.push((uid, message));
                    }
                }
            }
            return Ok(Some(state));
        }
        // Enabled again after a disabled period.
        if !entry.disabled && !state.disabled && state.next_execution_date.is_none() {
            match interval {
                Ok(interval) => state.next_execution_date = Some(now + to_chrono(interval)),
                Err(message) => {
                    state.disabled = true;
                    state.error = Some(message.clone());
                    report.disabled.push((uid, message));
                }
            }
            state.updated_date = now;
            return Ok(Some(state));
        }
        Ok(None)
    }

    /// Apply the results of one claimed polling trigger. Returns its new state and whether the
    /// results were consumed (to be acknowledged once the state is stored).
    async fn apply(
        &self,
        unit: &mut dyn TriggerUnit,
        entry: &Entry,
        claimed: &TriggerState,
        results: Vec<WorkerTriggerResult>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<(Outcome, bool), SchedulerError> {
        let uid = claimed.uid();
        let mut state = claimed.clone();
        if state.disabled || entry.disabled {
            report.stale_results += results.len();
            if !state.disabled {
                // Disabled in the flow: no evaluation runs any more.
                state.evaluate_running_date = None;
                state.next_execution_date = None;
                state.updated_date = now;
            }
            return Ok((Outcome::Store(state), true));
        }
        let interval = match interval_of(entry) {
            Ok(i) => i,
            Err(message) => return Ok((self.disable(state, message, now), true)),
        };
        for result in results {
            if state.evaluate_running_date != Some(result.evaluation_date) {
                tracing::debug!(trigger = %uid, evaluation = %result.evaluation_date,
                    "stale evaluation result ignored");
                report.stale_results += 1;
                continue;
            }
            report.results += 1;
            state.evaluate_running_date = None;
            state.worker_id = result.worker_id.clone();
            state.next_execution_date = Some(result.evaluation_date + to_chrono(interval));
            state.updated_date = now;
            if let Some(error) = result.error {
                tracing::warn!(trigger = %uid, %error, "polling trigger evaluation failed");
                state.error = Some(error);
                continue;
            }
            state.error = None;
            let Some(variables) = result.variables else {
                continue;
            };
            match self
                .start_polled(
                    unit,
                    entry,
                    &state,
                    result.evaluation_date,
                    variables,
                    now,
                    report,
                )
                .await?
            {
                Ok(Some(id)) => self.record_lock(entry, &mut state, id),
                Ok(None) => {}
                Err(message) => return Ok((self.disable(state, message, now), true)),
            }
        }
        Ok((Outcome::Store(state), true))
    }

    /// Handle one polling trigger claimed as due: send an evaluation to the workers unless one is
    /// running or the previous execution holds the lock.
    pub(super) async fn handle_polling(
        &self,
        unit: &mut dyn TriggerUnit,
        entry: &Entry,
        claimed: &TriggerState,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<Outcome, SchedulerError> {
        let uid = claimed.uid();
        let mut state = claimed.clone();
        if state.disabled {
            return Ok(Outcome::Store(state));
        }
        if entry.disabled {
            // Disabled in the flow: no evaluation; the sync makes it due again once enabled.
            state.next_execution_date = None;
            state.evaluate_running_date = None;
            state.updated_date = now;
            return Ok(Outcome::Store(state));
        }
        if let Err(message) = interval_of(entry) {
            return Ok(self.disable(state, message, now));
        }
        if let Err(e) = check_conditions(&entry.trigger.conditions) {
            return Ok(self.disable(state, e.to_string(), now));
        }
        let timeout = to_chrono(self.config.evaluation_timeout);
        if let Some(running) = state.evaluate_running_date {
            if now - running < timeout {
                state.next_execution_date = Some(running + timeout);
                return Ok(Outcome::Store(state));
            }
            tracing::warn!(trigger = %uid, %running,
                "no result for the running evaluation: it is abandoned and a new one is sent");
            state.evaluate_running_date = None;
        }
        if self.check_lock(entry, &state) == Lock::Held {
            report.locked += 1;
            return Ok(Outcome::Store(state));
        }

        let flow = &entry.flow;
        let job = WorkerJob::Trigger(Box::new(WorkerTrigger {
            tenant_id: state.tenant_id.clone(),
            namespace: flow.namespace.clone(),
            flow_id: flow.id.clone(),
            flow_revision: entry.revision,
            trigger: entry.trigger.clone(),
            context: super::service::flow_context(entry),
            evaluation_date: now,
        }));
        unit.publish(vec![job.envelope()?]).await?;
        tracing::debug!(trigger = %uid, "evaluation sent to the workers");
        state.evaluate_running_date = Some(now);
        state.worker_id = None;
        state.date = Some(now);
        // Due again only if no result comes back in time.
        state.next_execution_date = Some(now + timeout);
        state.updated_date = now;
        report.evaluations.push(uid);
        Ok(Outcome::Store(state))
    }

    /// Start the execution of an evaluation that answered `variables`. `Ok(Ok(None))`: a condition
    /// is false; `Ok(Err(message))`: the trigger cannot be evaluated; `Err`: backend error.
    #[allow(clippy::too_many_arguments)]
    async fn start_polled(
        &self,
        unit: &mut dyn TriggerUnit,
        entry: &Entry,
        state: &TriggerState,
        evaluation_date: DateTime<Utc>,
        variables: Map<String, Value>,
        now: DateTime<Utc>,
        report: &mut TickReport,
    ) -> Result<Result<Option<String>, String>, SchedulerError> {
        let flow = &entry.flow;
        let type_name = match &entry.kind {
            Ok(Kind::Polling { type_name, .. }) => *type_name,
            _ => entry.trigger.trigger_type.as_str(),
        };
        let mut ctx = super::service::flow_context(entry);
        if let Value::Object(map) = &mut ctx {
            map.insert("trigger".into(), Value::Object(variables.clone()));
        }
        match evaluate_conditions(&entry.trigger.conditions, &ctx, &self.expr) {
            Ok(true) => {}
            Ok(false) => {
                report.skipped += 1;
                tracing::debug!(trigger = %state.uid(), "conditions false: no execution");
                return Ok(Ok(None));
            }
            Err(e) => return Ok(Err(e.to_string())),
        }
        let raw_inputs: IndexMap<String, Value> = match entry.trigger.properties.get("inputs") {
            None | Some(Value::Null) => IndexMap::new(),
            Some(v) => match serde_json::from_value(v.clone()) {
                Ok(m) => m,
                Err(e) => return Ok(Err(format!("invalid inputs: {e}"))),
            },
        };
        let id = slot_execution_id(
            &state.tenant_id,
            &flow.namespace,
            &flow.id,
            &entry.trigger.id,
            evaluation_date,
            None,
        );
        let start = StartRequest {
            id: &id,
            trigger_type: type_name,
            variables,
            ctx: &ctx,
            raw_inputs,
            extra_labels: Vec::new(),
        };
        if let Err(message) = self
            .queue_execution(unit, entry, &state.tenant_id, start, now)
            .await?
        {
            return Ok(Err(message));
        }
        tracing::info!(trigger = %state.uid(), execution_id = %id,
            namespace = %flow.namespace, flow = %flow.id, "polling trigger started an execution");
        report.fired.push(FiredSlot {
            trigger_uid: state.uid(),
            execution_id: id.clone(),
            slot: evaluation_date,
            backfill: false,
        });
        Ok(Ok(Some(id)))
    }
}

fn interval_of(entry: &Entry) -> Result<Duration, String> {
    match &entry.kind {
        Ok(Kind::Polling { interval, .. }) => Ok(*interval),
        Ok(_) => Err("not a polling trigger".to_string()),
        Err(message) => Err(message.clone()),
    }
}
