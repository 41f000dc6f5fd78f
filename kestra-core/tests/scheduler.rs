//! The scheduler: pure slot logic (cron, nicknames, zones, daylight saving, recovery, late delay,
//! ScheduleOnDates, conditions) and the service driven step by step with a manual clock over small
//! in-memory stores defined here (claims honest under a mutex).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, TimeZone, Utc};
use kestra_core::executor::messages::{WorkerJob, WorkerTrigger, WorkerTriggerResult};
use kestra_core::expression::ExpressionEngine;
use kestra_core::flow::parse::parse_flow;
use kestra_core::flow::registry::TaskRegistry;
use kestra_core::flow::triggers::RecoverMissedSchedules;
use kestra_core::model::{Execution, Label, State, StateType, TriggerState, trigger_uid};
use kestra_core::queue::{
    ConsumerGroup, Delivery, DeliveryTag, Envelope, Queue, QueueError, Subscription, Topic,
    UnitOfWork,
};
use kestra_core::repository::{
    ExecutionQuery, ExecutionRepository, FlowQuery, FlowRecord, FlowRepository, Page, Pageable,
    PurgeCount, RepoResult, SaveOutcome, TriggerQuery, TriggerRepository,
};
use kestra_core::scheduler::conditions::{ConditionError, evaluate_conditions};
use kestra_core::scheduler::schedule::{Plan, RecoveryPolicy, Timetable, plan, slot_execution_id};
use kestra_core::scheduler::{
    BackfillRequest, ManualClock, SchedulerConfig, SchedulerError, SchedulerService, backfill,
};
use serde_json::{Value, json};

fn utc(y: i32, mo: u32, d: u32, h: u32, mi: u32, s: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, s).unwrap()
}

fn cron(expr: &str) -> Timetable {
    Timetable::cron(expr, false, None).unwrap()
}

// ------------------------------------------------------------------------------------------------
// pure schedule logic

#[test]
fn five_field_cron_next_and_previous() {
    let t = cron("*/15 * * * *");
    let at = utc(2024, 1, 1, 10, 7, 0);
    assert_eq!(t.next_after(at).unwrap(), Some(utc(2024, 1, 1, 10, 15, 0)));
    assert_eq!(
        t.previous_before(at).unwrap(),
        Some(utc(2024, 1, 1, 10, 0, 0))
    );
    let slot = utc(2024, 1, 1, 10, 15, 0);
    assert_eq!(
        t.next_after(slot).unwrap(),
        Some(utc(2024, 1, 1, 10, 30, 0))
    );
    assert_eq!(t.next_at_or_after(slot).unwrap(), Some(slot));
    assert_eq!(t.latest_at_or_before(slot).unwrap(), Some(slot));
    assert_eq!(
        t.previous_before(slot).unwrap(),
        Some(utc(2024, 1, 1, 10, 0, 0))
    );
}

#[test]
fn six_field_cron_needs_with_seconds() {
    let t = Timetable::cron("*/10 * * * * *", true, None).unwrap();
    assert_eq!(
        t.next_after(utc(2024, 1, 1, 10, 0, 3)).unwrap(),
        Some(utc(2024, 1, 1, 10, 0, 10))
    );
    assert!(Timetable::cron("*/10 * * * * *", false, None).is_err());
    assert!(Timetable::cron("*/10 * * * *", true, None).is_err());
    assert!(Timetable::cron("not a cron", false, None).is_err());
}

#[test]
fn nicknames() {
    let at = utc(2024, 5, 15, 10, 30, 0); // a Wednesday
    let cases = [
        ("@hourly", utc(2024, 5, 15, 11, 0, 0)),
        ("@daily", utc(2024, 5, 16, 0, 0, 0)),
        ("@midnight", utc(2024, 5, 16, 0, 0, 0)),
        ("@weekly", utc(2024, 5, 19, 0, 0, 0)),
        ("@monthly", utc(2024, 6, 1, 0, 0, 0)),
        ("@yearly", utc(2025, 1, 1, 0, 0, 0)),
        ("@annually", utc(2025, 1, 1, 0, 0, 0)),
    ];
    for (nick, expected) in cases {
        assert_eq!(cron(nick).next_after(at).unwrap(), Some(expected), "{nick}");
    }
    // With seconds, a nickname still fires at second 0.
    let t = Timetable::cron("@hourly", true, None).unwrap();
    assert_eq!(t.next_after(at).unwrap(), Some(utc(2024, 5, 15, 11, 0, 0)));
}

#[test]
fn time_zones_and_variables() {
    let t = Timetable::cron("0 9 * * *", false, Some("Europe/Paris")).unwrap();
    // Winter: UTC+1; summer: UTC+2.
    let winter = t.next_after(utc(2024, 1, 10, 0, 0, 0)).unwrap().unwrap();
    assert_eq!(winter, utc(2024, 1, 10, 8, 0, 0));
    let summer = t.next_after(utc(2024, 7, 10, 0, 0, 0)).unwrap().unwrap();
    assert_eq!(summer, utc(2024, 7, 10, 7, 0, 0));
    let vars = t.variables(winter).unwrap();
    assert_eq!(vars["date"], "2024-01-10T09:00:00+01:00");
    assert_eq!(vars["next"], "2024-01-11T09:00:00+01:00");
    assert_eq!(vars["previous"], "2024-01-09T09:00:00+01:00");
    // Default zone: UTC, written with Z.
    let vars = cron("0 9 * * *")
        .variables(utc(2024, 1, 10, 9, 0, 0))
        .unwrap();
    assert_eq!(vars["date"], "2024-01-10T09:00:00Z");
    assert!(Timetable::cron("0 9 * * *", false, Some("Mars/Olympus")).is_err());
}

fn slots(t: &Timetable, from: DateTime<Utc>, n: usize) -> Vec<DateTime<Utc>> {
    let mut out = Vec::new();
    let mut at = from;
    for _ in 0..n {
        at = t.next_after(at).unwrap().unwrap();
        out.push(at);
    }
    out
}

#[test]
fn dst_gap_paris() {
    // 2024-03-31: 02:00 CET jumps to 03:00 CEST (01:00Z).
    let fixed = Timetable::cron("30 2 * * *", false, Some("Europe/Paris")).unwrap();
    assert_eq!(
        slots(&fixed, utc(2024, 3, 30, 12, 0, 0), 2),
        // 02:30 does not exist on the 31st: it fires once at 03:00 CEST, then 02:30 CEST.
        vec![utc(2024, 3, 31, 1, 0, 0), utc(2024, 4, 1, 0, 30, 0)]
    );
    let hourly = Timetable::cron("30 * * * *", false, Some("Europe/Paris")).unwrap();
    assert_eq!(
        slots(&hourly, utc(2024, 3, 30, 23, 0, 0), 3),
        // 00:30 CET, 01:30 CET, (02:30 skipped), 03:30 CEST: one per real hour.
        vec![
            utc(2024, 3, 30, 23, 30, 0),
            utc(2024, 3, 31, 0, 30, 0),
            utc(2024, 3, 31, 1, 30, 0)
        ]
    );
    assert_eq!(
        hourly.variables(utc(2024, 3, 31, 1, 30, 0)).unwrap()["date"],
        "2024-03-31T03:30:00+02:00"
    );
}

#[test]
fn dst_overlap_paris_and_new_york() {
    // 2024-10-27: 03:00 CEST goes back to 02:00 CET; 02:30 happens at 00:30Z and at 01:30Z.
    let fixed = Timetable::cron("30 2 * * *", false, Some("Europe/Paris")).unwrap();
    assert_eq!(
        slots(&fixed, utc(2024, 10, 26, 12, 0, 0), 2),
        vec![utc(2024, 10, 27, 0, 30, 0), utc(2024, 10, 28, 1, 30, 0)],
        "a fixed time in the overlap fires once, at its first occurrence"
    );
    let hourly = Timetable::cron("30 * * * *", false, Some("Europe/Paris")).unwrap();
    assert_eq!(
        slots(&hourly, utc(2024, 10, 27, 0, 0, 0), 2),
        vec![utc(2024, 10, 27, 0, 30, 0), utc(2024, 10, 27, 1, 30, 0)],
        "an interval cron fires at both occurrences"
    );
    // New York, 2024-11-03: 01:30 EDT (05:30Z) then 01:30 EST (06:30Z).
    let ny = Timetable::cron("30 1 * * *", false, Some("America/New_York")).unwrap();
    assert_eq!(
        slots(&ny, utc(2024, 11, 2, 12, 0, 0), 2),
        vec![utc(2024, 11, 3, 5, 30, 0), utc(2024, 11, 4, 6, 30, 0)]
    );
    // New York spring gap, 2024-03-10: 02:30 does not exist; fires at 03:00 EDT (07:00Z).
    let ny_gap = Timetable::cron("30 2 * * *", false, Some("America/New_York")).unwrap();
    assert_eq!(
        slots(&ny_gap, utc(2024, 3, 9, 12, 0, 0), 2),
        vec![utc(2024, 3, 10, 7, 0, 0), utc(2024, 3, 11, 6, 30, 0)]
    );
}

/// Run the plan loop as the scheduler does: one step per evaluation at a fixed `now`.
fn run_steps(
    t: &Timetable,
    policy: RecoveryPolicy,
    mut pending: DateTime<Utc>,
    now: DateTime<Utc>,
) -> (Vec<DateTime<Utc>>, Option<DateTime<Utc>>) {
    let mut fired = Vec::new();
    for _ in 0..100 {
        match plan(t, policy, pending, now).unwrap() {
            Plan::Wait { next } => return (fired, next),
            Plan::Skip { next: None, .. } => return (fired, None),
            Plan::Skip { next: Some(n), .. } => pending = n,
            Plan::Fire { slot, next, .. } => {
                fired.push(slot);
                match next {
                    Some(n) => pending = n,
                    None => return (fired, None),
                }
            }
        }
    }
    panic!("plan did not settle");
}

fn policy(recover: RecoverMissedSchedules, late: Option<i64>) -> RecoveryPolicy {
    RecoveryPolicy {
        recover,
        late_maximum_delay: late.map(chrono::Duration::minutes),
    }
}

#[test]
fn recovery_after_a_three_hour_outage() {
    // Hourly; the 10:00 slot fired, the scheduler was down from 10:10 to 13:30: 11, 12, 13 missed.
    let t = cron("0 * * * *");
    let pending = utc(2024, 1, 1, 11, 0, 0);
    let now = utc(2024, 1, 1, 13, 30, 0);
    let (all, next) = run_steps(&t, policy(RecoverMissedSchedules::All, None), pending, now);
    assert_eq!(
        all,
        vec![
            utc(2024, 1, 1, 11, 0, 0),
            utc(2024, 1, 1, 12, 0, 0),
            utc(2024, 1, 1, 13, 0, 0)
        ]
    );
    assert_eq!(next, Some(utc(2024, 1, 1, 14, 0, 0)));

    let (last, next) = run_steps(&t, policy(RecoverMissedSchedules::Last, None), pending, now);
    assert_eq!(last, vec![utc(2024, 1, 1, 13, 0, 0)]);
    assert_eq!(next, Some(utc(2024, 1, 1, 14, 0, 0)));
    assert_eq!(
        plan(&t, policy(RecoverMissedSchedules::Last, None), pending, now).unwrap(),
        Plan::Fire {
            slot: utc(2024, 1, 1, 13, 0, 0),
            skipped_before: true,
            next: Some(utc(2024, 1, 1, 14, 0, 0))
        }
    );

    let (none, next) = run_steps(&t, policy(RecoverMissedSchedules::None, None), pending, now);
    assert!(none.is_empty());
    assert_eq!(next, Some(utc(2024, 1, 1, 14, 0, 0)));
    assert_eq!(
        plan(&t, policy(RecoverMissedSchedules::None, None), pending, now).unwrap(),
        Plan::Skip {
            through: utc(2024, 1, 1, 13, 0, 0),
            next: Some(utc(2024, 1, 1, 14, 0, 0))
        }
    );

    // On time (one due slot), NONE still fires it.
    let (on_time, _) = run_steps(
        &t,
        policy(RecoverMissedSchedules::None, None),
        pending,
        utc(2024, 1, 1, 11, 0, 1),
    );
    assert_eq!(on_time, vec![utc(2024, 1, 1, 11, 0, 0)]);
    // Nothing due yet.
    assert_eq!(
        plan(
            &t,
            RecoveryPolicy::default(),
            pending,
            utc(2024, 1, 1, 10, 59, 59)
        )
        .unwrap(),
        Plan::Wait {
            next: Some(pending)
        }
    );
}

#[test]
fn late_maximum_delay_skips_old_slots() {
    let t = cron("0 * * * *");
    let pending = utc(2024, 1, 1, 11, 0, 0);
    let now = utc(2024, 1, 1, 13, 30, 0);
    // 90 minutes: slots before 12:00 are too late.
    let (fired, next) = run_steps(
        &t,
        policy(RecoverMissedSchedules::All, Some(90)),
        pending,
        now,
    );
    assert_eq!(
        fired,
        vec![utc(2024, 1, 1, 12, 0, 0), utc(2024, 1, 1, 13, 0, 0)]
    );
    assert_eq!(next, Some(utc(2024, 1, 1, 14, 0, 0)));
    // 10 minutes: every due slot is too late.
    let (fired, next) = run_steps(
        &t,
        policy(RecoverMissedSchedules::All, Some(10)),
        pending,
        now,
    );
    assert!(fired.is_empty());
    assert_eq!(next, Some(utc(2024, 1, 1, 14, 0, 0)));
    // LAST within the delay fires; beyond it, not.
    let (fired, _) = run_steps(
        &t,
        policy(RecoverMissedSchedules::Last, Some(45)),
        pending,
        now,
    );
    assert_eq!(fired, vec![utc(2024, 1, 1, 13, 0, 0)]);
    let (fired, _) = run_steps(
        &t,
        policy(RecoverMissedSchedules::Last, Some(20)),
        pending,
        now,
    );
    assert!(fired.is_empty());
}

#[test]
fn schedule_on_dates() {
    let t = Timetable::dates(
        &[
            "2024-06-01T10:00:00+02:00",
            "2024-06-01T09:00:00",
            "2024-05-01",
            "2024-06-01T08:00:00Z",
        ],
        Some("Europe/Paris"),
    )
    .unwrap();
    // 10:00+02:00 == 08:00Z (a duplicate), 09:00 Paris == 07:00Z, 2024-05-01 Paris midnight == 22:00Z.
    assert_eq!(
        slots(&t, utc(2024, 1, 1, 0, 0, 0), 2),
        vec![utc(2024, 4, 30, 22, 0, 0), utc(2024, 6, 1, 7, 0, 0)]
    );
    assert_eq!(
        t.next_after(utc(2024, 6, 1, 7, 0, 0)).unwrap(),
        Some(utc(2024, 6, 1, 8, 0, 0))
    );
    assert_eq!(t.next_after(utc(2024, 6, 1, 8, 0, 0)).unwrap(), None);
    assert_eq!(
        t.variables(utc(2024, 6, 1, 7, 0, 0)).unwrap()["date"],
        "2024-06-01T09:00:00+02:00"
    );
    // Recovery over dates: all three missed, LAST fires the last one only.
    let (fired, next) = run_steps(
        &t,
        policy(RecoverMissedSchedules::Last, None),
        utc(2024, 4, 30, 22, 0, 0),
        utc(2024, 7, 1, 0, 0, 0),
    );
    assert_eq!(fired, vec![utc(2024, 6, 1, 8, 0, 0)]);
    assert_eq!(next, None);
    assert!(Timetable::dates(&["yesterday"], None).is_err());
}

#[test]
fn slot_execution_ids_are_deterministic() {
    let slot = utc(2024, 1, 1, 10, 0, 0);
    let a = slot_execution_id("main", "ns", "f", "t", slot, None);
    assert_eq!(a.len(), 22);
    assert_eq!(a, slot_execution_id("main", "ns", "f", "t", slot, None));
    assert_ne!(
        a,
        slot_execution_id("main", "ns", "f", "t", utc(2024, 1, 1, 11, 0, 0), None)
    );
    assert_ne!(a, slot_execution_id("main", "ns", "f", "t2", slot, None));
    assert_ne!(
        a,
        slot_execution_id("main", "ns", "f", "t", slot, Some("b1"))
    );
}

// ------------------------------------------------------------------------------------------------
// conditions

fn cond(conditions: Value, date: &str) -> Result<bool, ConditionError> {
    let list = conditions.as_array().unwrap().clone();
    let ctx = json!({"trigger": {"date": date}, "flow": {"id": "f", "namespace": "ns"}});
    evaluate_conditions(&list, &ctx, &ExpressionEngine::default())
}

const P: &str = "io.kestra.plugin.core.condition.";

#[test]
fn day_conditions() {
    let monday = "2024-01-01T10:00:00Z";
    let saturday = "2024-01-06T10:00:00Z";
    let day_week = json!([{"type": format!("{P}DayWeek"), "dayOfWeek": "MONDAY"}]);
    assert!(cond(day_week.clone(), monday).unwrap());
    assert!(!cond(day_week, saturday).unwrap());
    // The local day counts: Sunday 23:30 in New York is Monday in UTC.
    let legacy = json!([{"type": "io.kestra.core.models.conditions.types.DayWeekCondition", "dayOfWeek": "SUNDAY"}]);
    assert!(cond(legacy, "2024-01-07T23:30:00-05:00").unwrap());

    let weekend = json!([{"type": format!("{P}Weekend")}]);
    assert!(cond(weekend.clone(), saturday).unwrap());
    assert!(!cond(weekend, monday).unwrap());

    let first_monday = json!([{"type": format!("{P}DayWeekInMonth"), "dayOfWeek": "MONDAY", "dayInMonth": "FIRST"}]);
    assert!(cond(first_monday.clone(), monday).unwrap());
    assert!(!cond(first_monday, "2024-01-08T10:00:00Z").unwrap());
    let last_friday = json!([{"type": format!("{P}DayWeekInMonth"), "dayOfWeek": "FRIDAY", "dayInMonth": "LAST"}]);
    assert!(cond(last_friday.clone(), "2024-01-26T10:00:00Z").unwrap());
    assert!(!cond(last_friday, "2024-01-19T10:00:00Z").unwrap());
    let third_wed = json!([{"type": format!("{P}DayWeekInMonth"), "dayOfWeek": "WEDNESDAY", "dayInMonth": "THIRD"}]);
    assert!(cond(third_wed, "2024-01-17T00:00:00Z").unwrap());
}

#[test]
fn combinators_and_ranges() {
    let monday = "2024-01-01T10:00:00Z";
    let not_weekend =
        json!([{"type": format!("{P}Not"), "conditions": [{"type": format!("{P}Weekend")}]}]);
    assert!(cond(not_weekend.clone(), monday).unwrap());
    assert!(!cond(not_weekend, "2024-01-07T10:00:00Z").unwrap());
    let or = json!([{"type": format!("{P}Or"), "conditions": [
        {"type": format!("{P}DayWeek"), "dayOfWeek": "TUESDAY"},
        {"type": format!("{P}DayWeek"), "dayOfWeek": "MONDAY"}]}]);
    assert!(cond(or.clone(), monday).unwrap());
    assert!(!cond(or, "2024-01-03T10:00:00Z").unwrap());

    let between = json!([{"type": format!("{P}DateTimeBetween"),
        "after": "2024-01-01T10:00:00Z", "before": "2024-01-02T00:00:00+01:00"}]);
    assert!(
        cond(between.clone(), monday).unwrap(),
        "bounds are inclusive"
    );
    assert!(cond(between.clone(), "2024-01-01T23:00:00Z").unwrap());
    assert!(!cond(between.clone(), "2024-01-01T23:00:01Z").unwrap());
    assert!(!cond(between, "2024-01-01T09:59:59Z").unwrap());

    let hours = json!([{"type": format!("{P}TimeBetween"), "after": "09:00:00+01:00", "before": "17:00:00+01:00"}]);
    assert!(cond(hours.clone(), "2024-01-01T12:00:00+01:00").unwrap());
    assert!(
        cond(hours.clone(), "2024-01-01T09:30:00Z").unwrap(),
        "10:30+01:00"
    );
    assert!(
        !cond(hours.clone(), "2024-01-01T08:00:00Z").unwrap(),
        "exclusive bound"
    );
    assert!(!cond(hours, "2024-01-01T18:00:00+01:00").unwrap());

    let expr = json!([{"type": format!("{P}Expression"), "expression": "{{ trigger.date | date('HH') == '10' }}"}]);
    assert!(cond(expr.clone(), monday).unwrap());
    assert!(!cond(expr, "2024-01-01T11:00:00Z").unwrap());

    // All conditions must hold.
    let both = json!([{"type": format!("{P}DayWeek"), "dayOfWeek": "MONDAY"}, {"type": format!("{P}Weekend")}]);
    assert!(!cond(both, monday).unwrap());
}

#[test]
fn unknown_and_malformed_conditions_are_errors() {
    let unknown =
        json!([{"type": "io.kestra.plugin.core.condition.ExecutionStatus", "in": ["SUCCESS"]}]);
    assert!(matches!(
        cond(unknown, "2024-01-01T10:00:00Z"),
        Err(ConditionError::Unsupported(t)) if t.ends_with("ExecutionStatus")
    ));
    let missing = json!([{"type": format!("{P}DayWeek")}]);
    assert!(matches!(
        cond(missing, "2024-01-01T10:00:00Z"),
        Err(ConditionError::Invalid { .. })
    ));
    let bad_day = json!([{"type": format!("{P}DayWeek"), "dayOfWeek": "FUNDAY"}]);
    assert!(cond(bad_day, "2024-01-01T10:00:00Z").is_err());
}

// ------------------------------------------------------------------------------------------------
// in-memory stores (test only)

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap()
}

#[derive(Default)]
struct MemFlows {
    revisions: Mutex<Vec<FlowRecord>>,
}

#[async_trait]
impl FlowRepository for MemFlows {
    async fn save(&self, mut record: FlowRecord) -> RepoResult<(FlowRecord, SaveOutcome)> {
        let mut all = lock(&self.revisions);
        let latest = all
            .iter()
            .filter(|r| {
                r.tenant_id == record.tenant_id
                    && r.namespace == record.namespace
                    && r.id == record.id
            })
            .max_by_key(|r| r.revision)
            .cloned();
        if let Some(l) = &latest
            && !l.deleted
            && l.source == record.source
        {
            return Ok((l.clone(), SaveOutcome::Unchanged));
        }
        record.revision = latest.as_ref().map_or(1, |l| l.revision + 1);
        if let Value::Object(m) = &mut record.flow {
            m.insert("revision".into(), json!(record.revision));
        }
        all.push(record.clone());
        let outcome = if latest.is_some() {
            SaveOutcome::Updated
        } else {
            SaveOutcome::Created
        };
        Ok((record, outcome))
    }
    async fn find(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
        revision: Option<i32>,
    ) -> RepoResult<Option<FlowRecord>> {
        let all = lock(&self.revisions);
        let mut matching = all
            .iter()
            .filter(|r| r.tenant_id == tenant && r.namespace == namespace && r.id == id);
        let found = match revision {
            Some(rev) => matching.find(|r| r.revision == rev).cloned(),
            None => matching.max_by_key(|r| r.revision).cloned(),
        };
        Ok(found.filter(|r| !r.deleted))
    }
    async fn revisions(
        &self,
        tenant: &str,
        namespace: &str,
        id: &str,
    ) -> RepoResult<Vec<FlowRecord>> {
        Ok(lock(&self.revisions)
            .iter()
            .filter(|r| r.tenant_id == tenant && r.namespace == namespace && r.id == id)
            .cloned()
            .collect())
    }
    async fn delete(&self, tenant: &str, namespace: &str, id: &str) -> RepoResult<FlowRecord> {
        let latest = self.find(tenant, namespace, id, None).await?.unwrap();
        let mut deleted = latest.clone();
        deleted.revision += 1;
        deleted.deleted = true;
        lock(&self.revisions).push(deleted.clone());
        Ok(deleted)
    }
    async fn search(&self, _: &FlowQuery, _: &Pageable) -> RepoResult<Page<FlowRecord>> {
        Ok(Page {
            results: Vec::new(),
            total: 0,
        })
    }
    async fn find_all(&self, tenant: &str) -> RepoResult<Vec<FlowRecord>> {
        let all = lock(&self.revisions);
        let mut latest: BTreeMap<(String, String), FlowRecord> = BTreeMap::new();
        for r in all.iter().filter(|r| r.tenant_id == tenant) {
            let key = (r.namespace.clone(), r.id.clone());
            if latest.get(&key).is_none_or(|l| l.revision < r.revision) {
                latest.insert(key, r.clone());
            }
        }
        Ok(latest.into_values().filter(|r| !r.deleted).collect())
    }
    async fn distinct_namespaces(&self, _: &str) -> RepoResult<Vec<String>> {
        Ok(Vec::new())
    }
}

#[derive(Default)]
struct MemExecutions {
    all: Mutex<HashMap<String, Execution>>,
}

#[async_trait]
impl ExecutionRepository for MemExecutions {
    async fn save(&self, execution: &Execution) -> RepoResult<()> {
        lock(&self.all).insert(execution.id.clone(), execution.clone());
        Ok(())
    }
    async fn find_by_id(&self, _tenant: &str, id: &str) -> RepoResult<Option<Execution>> {
        Ok(lock(&self.all).get(id).filter(|e| !e.deleted).cloned())
    }
    async fn search(&self, _: &ExecutionQuery, _: &Pageable) -> RepoResult<Page<Execution>> {
        Ok(Page {
            results: Vec::new(),
            total: 0,
        })
    }
    async fn delete(&self, _tenant: &str, id: &str) -> RepoResult<()> {
        if let Some(e) = lock(&self.all).get_mut(id) {
            e.deleted = true;
        }
        Ok(())
    }
    async fn purge(&self, _tenant: &str, id: &str) -> RepoResult<PurgeCount> {
        lock(&self.all).remove(id);
        Ok(PurgeCount::default())
    }
}

/// A claim: owner and lease end.
type Claim = Option<(String, DateTime<Utc>)>;

/// Trigger states with honest claims.
#[derive(Default)]
struct MemTriggers {
    all: Mutex<BTreeMap<String, (TriggerState, Claim)>>,
}

#[async_trait]
impl TriggerRepository for MemTriggers {
    async fn save(&self, trigger: &TriggerState) -> RepoResult<()> {
        let mut all = lock(&self.all);
        let claim = all.get(&trigger.uid()).and_then(|(_, c)| c.clone());
        all.insert(trigger.uid(), (trigger.clone(), claim));
        Ok(())
    }
    async fn find(&self, uid: &str) -> RepoResult<Option<TriggerState>> {
        Ok(lock(&self.all).get(uid).map(|(t, _)| t.clone()))
    }
    async fn find_all(&self, tenant: &str) -> RepoResult<Vec<TriggerState>> {
        Ok(lock(&self.all)
            .values()
            .filter(|(t, _)| t.tenant_id == tenant)
            .map(|(t, _)| t.clone())
            .collect())
    }
    async fn search(&self, _: &TriggerQuery, _: &Pageable) -> RepoResult<Page<TriggerState>> {
        Ok(Page {
            results: Vec::new(),
            total: 0,
        })
    }
    async fn delete(&self, uid: &str) -> RepoResult<()> {
        lock(&self.all).remove(uid);
        Ok(())
    }
    async fn claim_due(
        &self,
        now: DateTime<Utc>,
        owner: &str,
        limit: usize,
        lease: Duration,
    ) -> RepoResult<Vec<TriggerState>> {
        let until = now + chrono::Duration::from_std(lease).unwrap();
        let mut out = Vec::new();
        for (t, claim) in lock(&self.all).values_mut() {
            if out.len() >= limit {
                break;
            }
            let due = !t.disabled && t.next_execution_date.is_some_and(|d| d <= now);
            let free = claim.as_ref().is_none_or(|(_, u)| *u <= now);
            if due && free {
                *claim = Some((owner.to_string(), until));
                out.push(t.clone());
            }
        }
        Ok(out)
    }
    async fn claim(
        &self,
        uid: &str,
        now: DateTime<Utc>,
        owner: &str,
        lease: Duration,
    ) -> RepoResult<Option<TriggerState>> {
        let until = now + chrono::Duration::from_std(lease).unwrap();
        match lock(&self.all).get_mut(uid) {
            Some((t, claim)) if claim.as_ref().is_none_or(|(_, u)| *u <= now) => {
                *claim = Some((owner.to_string(), until));
                Ok(Some(t.clone()))
            }
            _ => Ok(None),
        }
    }
    async fn release(&self, trigger: &TriggerState, owner: &str) -> RepoResult<bool> {
        let mut all = lock(&self.all);
        match all.get_mut(&trigger.uid()) {
            Some((t, claim)) if claim.as_ref().is_some_and(|(o, _)| o == owner) => {
                *t = trigger.clone();
                *claim = None;
                Ok(true)
            }
            _ => Ok(false),
        }
    }
}

/// Records published messages; broadcasts them to subscribers; hands each message of a topic to one
/// competing receiver (no leases: a received message is never delivered again); records
/// acknowledgements.
struct MemQueue {
    published: Mutex<Vec<Envelope>>,
    /// Per topic: how many published messages receivers went past.
    received: Mutex<HashMap<Topic, usize>>,
    acked: Mutex<Vec<DeliveryTag>>,
    tx: tokio::sync::broadcast::Sender<Envelope>,
}

impl Default for MemQueue {
    fn default() -> Self {
        MemQueue {
            published: Mutex::new(Vec::new()),
            received: Mutex::new(HashMap::new()),
            acked: Mutex::new(Vec::new()),
            tx: tokio::sync::broadcast::channel(10_000).0,
        }
    }
}

impl MemQueue {
    /// The polling-trigger evaluations sent to workers.
    fn trigger_jobs(&self) -> Vec<WorkerTrigger> {
        lock(&self.published)
            .iter()
            .filter(|e| e.topic == Topic::WorkerJob)
            .map(|e| match e.decode().unwrap() {
                WorkerJob::Trigger(t) => *t,
                other => panic!("not a trigger job: {other:?}"),
            })
            .collect()
    }

    fn executions(&self) -> Vec<Execution> {
        lock(&self.published)
            .iter()
            .filter(|e| e.topic == Topic::Execution)
            .map(|e| e.decode().unwrap())
            .collect()
    }
}

#[async_trait]
impl Queue for MemQueue {
    async fn publish(&self, messages: Vec<Envelope>) -> Result<(), QueueError> {
        for m in messages {
            lock(&self.published).push(m.clone());
            let _ = self.tx.send(m);
        }
        Ok(())
    }
    async fn receive(
        &self,
        group: ConsumerGroup,
        topic: Topic,
        max: usize,
        _: Duration,
        _: Duration,
    ) -> Result<Vec<Delivery>, QueueError> {
        // Messages of a topic are handed out in order, once, from the topic's cursor on.
        let published = lock(&self.published);
        let mut cursors = lock(&self.received);
        let cursor = cursors.entry(topic).or_insert(0);
        let mut out = Vec::new();
        while *cursor < published.len() && out.len() < max {
            let envelope = &published[*cursor];
            *cursor += 1;
            if envelope.topic == topic {
                out.push(Delivery {
                    tag: DeliveryTag {
                        partition: 0,
                        offset: *cursor as i64,
                    },
                    group,
                    envelope: envelope.clone(),
                    attempt: 1,
                });
            }
        }
        Ok(out)
    }
    async fn ack(&self, _: ConsumerGroup, tags: &[DeliveryTag]) -> Result<(), QueueError> {
        lock(&self.acked).extend_from_slice(tags);
        Ok(())
    }
    async fn extend_lease(
        &self,
        _: ConsumerGroup,
        _: &[DeliveryTag],
        _: Duration,
    ) -> Result<Vec<DeliveryTag>, QueueError> {
        Ok(Vec::new())
    }
    async fn dead_letter(&self, _: &Delivery, _: &str) -> Result<(), QueueError> {
        Ok(())
    }
    async fn subscribe(&self, topic: Topic) -> Result<Subscription, QueueError> {
        let rx = self.tx.subscribe();
        let stream = futures::stream::unfold(rx, move |mut rx| async move {
            loop {
                match rx.recv().await {
                    Ok(m) if m.topic == topic => return Some((Ok(m), rx)),
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        return Some((Err(QueueError::Lagged { missed: n }), rx));
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return None,
                }
            }
        });
        Ok(Box::pin(stream))
    }
    async fn begin(
        &self,
        _: ConsumerGroup,
        _: &[Topic],
        _: usize,
        _: Duration,
    ) -> Result<Option<Box<dyn UnitOfWork>>, QueueError> {
        Ok(None)
    }
}

struct World {
    clock: Arc<ManualClock>,
    flows: Arc<MemFlows>,
    triggers: Arc<MemTriggers>,
    executions: Arc<MemExecutions>,
    queue: Arc<MemQueue>,
    registry: Arc<TaskRegistry>,
}

impl World {
    fn new(now: DateTime<Utc>) -> World {
        World {
            clock: Arc::new(ManualClock::new(now)),
            flows: Arc::default(),
            triggers: Arc::default(),
            executions: Arc::default(),
            queue: Arc::default(),
            registry: Arc::new(TaskRegistry::default()),
        }
    }

    fn scheduler(&self, name: &str) -> SchedulerService {
        SchedulerService::new(
            SchedulerConfig {
                id: name.to_string(),
                batch: 3,
                ..SchedulerConfig::default()
            },
            self.clock.clone(),
            self.flows.clone(),
            self.triggers.clone(),
            self.executions.clone(),
            self.queue.clone(),
            self.registry.clone(),
            Arc::new(ExpressionEngine::default()),
        )
    }

    async fn deploy(&self, source: &str) -> i32 {
        let flow = parse_flow(source, &self.registry).unwrap();
        let record = FlowRecord {
            tenant_id: "main".into(),
            namespace: flow.namespace.clone(),
            id: flow.id.clone(),
            revision: 0,
            flow: serde_json::to_value(&flow).unwrap(),
            source: source.to_string(),
            labels: Vec::new(),
            disabled: false,
            deleted: false,
            updated: self.clock.now_utc(),
        };
        self.flows.save(record).await.unwrap().0.revision
    }

    async fn state(&self, flow: &str, trigger: &str) -> TriggerState {
        self.triggers
            .find(&trigger_uid("main", "company", flow, trigger))
            .await
            .unwrap()
            .unwrap()
    }

    /// Store the execution with this state in the repository (as the executor would).
    async fn set_execution_state(&self, id: &str, state: StateType) {
        let mut e = self
            .queue
            .executions()
            .into_iter()
            .find(|e| e.id == id)
            .unwrap();
        e.state = State::new_at(state, self.clock.now_utc());
        self.executions.save(&e).await.unwrap();
    }

    fn at(&self, t: DateTime<Utc>) {
        self.clock.set(t);
    }
}

trait NowUtc {
    fn now_utc(&self) -> DateTime<Utc>;
}
impl NowUtc for ManualClock {
    fn now_utc(&self) -> DateTime<Utc> {
        kestra_core::scheduler::Clock::now(self)
    }
}

fn flow(id: &str, trigger: &str) -> String {
    format!(
        r#"id: {id}
namespace: company
labels:
  team: data
inputs:
  - id: day
    type: STRING
tasks:
  - id: hello
    type: io.kestra.plugin.core.log.Log
    message: hi
triggers:
{trigger}"#
    )
}

const HOURLY: &str = r#"  - id: hourly
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 * * * *"
    labels:
      source: cron
    inputs:
      day: "{{ trigger.date | date('yyyy-MM-dd') }}"
"#;

// ------------------------------------------------------------------------------------------------
// service

#[tokio::test]
async fn fires_once_per_slot_with_variables_labels_and_inputs() {
    let w = World::new(utc(2024, 1, 1, 10, 30, 0));
    w.deploy(&flow("f", &format!("{HOURLY}    allowConcurrent: true\n")))
        .await;
    let s = w.scheduler("s1");

    let r = s.tick().await.unwrap();
    assert_eq!(r.created, 1);
    assert!(r.fired.is_empty(), "no firing for the past on creation");
    assert_eq!(
        w.state("f", "hourly").await.next_execution_date,
        Some(utc(2024, 1, 1, 11, 0, 0))
    );

    w.at(utc(2024, 1, 1, 11, 0, 0));
    let r = s.tick().await.unwrap();
    assert_eq!(r.fired.len(), 1);
    assert_eq!(s.tick().await.unwrap().fired.len(), 0, "a slot fires once");
    w.at(utc(2024, 1, 1, 11, 59, 59));
    assert_eq!(s.tick().await.unwrap().fired.len(), 0);
    w.at(utc(2024, 1, 1, 12, 0, 0));
    assert_eq!(s.tick().await.unwrap().fired.len(), 1);

    let executions = w.queue.executions();
    assert_eq!(executions.len(), 2);
    let e = &executions[0];
    assert_eq!(
        e.id,
        slot_execution_id(
            "main",
            "company",
            "f",
            "hourly",
            utc(2024, 1, 1, 11, 0, 0),
            None
        )
    );
    assert_eq!(e.current(), StateType::Created);
    assert_eq!(e.flow_revision, 1);
    let trigger = e.trigger.as_ref().unwrap();
    assert_eq!(trigger.id, "hourly");
    assert_eq!(trigger.type_, "io.kestra.plugin.core.trigger.Schedule");
    assert_eq!(trigger.variables["date"], "2024-01-01T11:00:00Z");
    assert_eq!(trigger.variables["next"], "2024-01-01T12:00:00Z");
    assert_eq!(trigger.variables["previous"], "2024-01-01T10:00:00Z");
    assert_eq!(e.label("team"), Some("data"));
    assert_eq!(e.label("source"), Some("cron"));
    assert_eq!(e.label("system.correlationId"), Some(e.id.as_str()));
    assert_eq!(e.inputs["day"], "2024-01-01");
    let state = w.state("f", "hourly").await;
    assert_eq!(state.date, Some(utc(2024, 1, 1, 12, 0, 0)));
    assert_eq!(state.next_execution_date, Some(utc(2024, 1, 1, 13, 0, 0)));
}

#[tokio::test]
async fn two_schedulers_never_fire_a_slot_twice() {
    let w = World::new(utc(2024, 1, 1, 0, 0, 0));
    for i in 0..6 {
        w.deploy(&flow(
            &format!("f{i}"),
            "  - id: m\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"* * * * *\"\n    allowConcurrent: true\n    inputs:\n      day: x\n",
        ))
        .await;
    }
    let (a, b) = (w.scheduler("a"), w.scheduler("b"));
    let mut fired = 0;
    for step in 0..=30 {
        if step > 0 {
            w.clock.advance(chrono::Duration::minutes(1));
        }
        let (ra, rb) = tokio::join!(a.tick(), b.tick());
        fired += ra.unwrap().fired.len() + rb.unwrap().fired.len();
    }
    assert_eq!(fired, 6 * 30);
    let executions = w.queue.executions();
    let mut ids: Vec<&str> = executions.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(executions.len(), 180, "each slot queued exactly once");
    assert_eq!(ids.len(), 180);
}

const LOCKED: &str = r#"  - id: hourly
    type: io.kestra.plugin.core.trigger.Schedule
    cron: "0 * * * *"
    inputs:
      day: x
"#;

#[tokio::test]
async fn lock_is_held_while_the_execution_runs() {
    for ended in [StateType::Success, StateType::Failed, StateType::Killed] {
        let w = World::new(utc(2024, 1, 1, 10, 30, 0));
        w.deploy(&flow("f", LOCKED)).await;
        let s = w.scheduler("s");
        s.tick().await.unwrap();
        w.at(utc(2024, 1, 1, 11, 0, 0));
        let first = s.tick().await.unwrap().fired[0].execution_id.clone();
        assert_eq!(
            w.state("f", "hourly").await.execution_id.as_deref(),
            Some(first.as_str())
        );
        w.set_execution_state(&first, StateType::Running).await;

        w.at(utc(2024, 1, 1, 12, 0, 0));
        let r = s.tick().await.unwrap();
        assert!(
            r.fired.is_empty(),
            "no new execution while the previous one runs"
        );
        assert_eq!(r.locked, 1);
        w.at(utc(2024, 1, 1, 12, 20, 0));
        assert!(s.tick().await.unwrap().fired.is_empty());

        w.set_execution_state(&first, ended).await;
        w.at(utc(2024, 1, 1, 12, 30, 0));
        let r = s.tick().await.unwrap();
        assert_eq!(r.fired.len(), 1, "fires once free after {ended:?}");
        assert_eq!(
            r.fired[0].slot,
            utc(2024, 1, 1, 12, 0, 0),
            "the kept slot fires"
        );
        let state = w.state("f", "hourly").await;
        assert_eq!(
            state.execution_id.as_deref(),
            Some(r.fired[0].execution_id.as_str())
        );
        assert_eq!(state.next_execution_date, Some(utc(2024, 1, 1, 13, 0, 0)));
    }
}

#[tokio::test]
async fn lock_of_a_deleted_execution_is_released_after_the_grace() {
    let w = World::new(utc(2024, 1, 1, 10, 30, 0));
    w.deploy(&flow("f", LOCKED)).await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 11, 0, 0));
    let first = s.tick().await.unwrap().fired[0].execution_id.clone();
    w.set_execution_state(&first, StateType::Running).await;
    w.at(utc(2024, 1, 1, 12, 0, 0));
    assert!(s.tick().await.unwrap().fired.is_empty());
    w.executions.delete("main", &first).await.unwrap();
    let r = s.tick().await.unwrap();
    assert_eq!(
        r.fired.len(),
        1,
        "a deleted execution no longer holds the lock"
    );

    // Not yet in the repository, just queued: still locked within the grace period.
    w.at(utc(2024, 1, 1, 12, 0, 30));
    let state = w.state("f", "hourly").await;
    assert!(state.execution_id.is_some());
    let mut due = state.clone();
    due.next_execution_date = Some(utc(2024, 1, 1, 12, 0, 0));
    w.triggers.save(&due).await.unwrap();
    let r = s.tick().await.unwrap();
    assert!(r.fired.is_empty());
    assert_eq!(r.locked, 1);
}

#[tokio::test]
async fn stop_after_disables_the_trigger() {
    let w = World::new(utc(2024, 1, 1, 10, 30, 0));
    w.deploy(&flow("f", &format!("{LOCKED}    stopAfter: [FAILED]\n")))
        .await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 11, 0, 0));
    let first = s.tick().await.unwrap().fired[0].execution_id.clone();
    w.set_execution_state(&first, StateType::Success).await;
    w.at(utc(2024, 1, 1, 12, 0, 0));
    let second = s.tick().await.unwrap().fired[0].execution_id.clone();
    w.set_execution_state(&second, StateType::Failed).await;
    w.at(utc(2024, 1, 1, 13, 0, 0));
    let r = s.tick().await.unwrap();
    assert!(r.fired.is_empty());
    assert_eq!(r.disabled.len(), 1);
    assert!(r.disabled[0].1.contains("FAILED"));
    let state = w.state("f", "hourly").await;
    assert!(state.disabled);
    assert_eq!(state.execution_id, None);
    w.at(utc(2024, 1, 1, 15, 0, 0));
    assert!(s.tick().await.unwrap().fired.is_empty(), "stays disabled");
}

#[tokio::test]
async fn broken_triggers_are_disabled_with_an_error_once() {
    let w = World::new(utc(2024, 1, 1, 10, 30, 0));
    w.deploy(&flow(
        "f",
        &format!("{LOCKED}    conditions:\n      - type: io.kestra.plugin.core.condition.ExecutionStatus\n        in: [SUCCESS]\n"),
    ))
    .await;
    // Inputs that cannot render: disabled when it first fires.
    w.deploy(&flow(
        "g",
        "  - id: hourly\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"0 * * * *\"\n    inputs:\n      day: \"{{ nope.missing }}\"\n",
    ))
    .await;
    let s = w.scheduler("s");
    let r = s.tick().await.unwrap();
    assert_eq!(
        r.disabled.len(),
        1,
        "unsupported condition detected on sync"
    );
    let f = w.state("f", "hourly").await;
    assert!(f.disabled);
    assert!(f.error.as_deref().unwrap().contains("ExecutionStatus"));

    w.at(utc(2024, 1, 1, 11, 0, 0));
    let r = s.tick().await.unwrap();
    assert!(r.fired.is_empty());
    assert_eq!(r.disabled.len(), 1);
    let g = w.state("g", "hourly").await;
    assert!(g.disabled);
    assert!(g.error.as_deref().unwrap().contains("day"), "{:?}", g.error);
    w.at(utc(2024, 1, 1, 12, 0, 0));
    let r = s.tick().await.unwrap();
    assert!(r.disabled.is_empty(), "reported once, not every step");
    assert!(w.queue.executions().is_empty());

    // Fixing the flow enables the trigger again.
    w.deploy(&flow("f", LOCKED)).await;
    s.tick().await.unwrap();
    let f = w.state("f", "hourly").await;
    assert!(!f.disabled);
    assert_eq!(f.error, None);
    assert_eq!(f.next_execution_date, Some(utc(2024, 1, 1, 13, 0, 0)));
}

#[tokio::test]
async fn disabled_then_enabled_recovers_and_never_skips_the_next_slot() {
    let w = World::new(utc(2024, 1, 1, 10, 30, 0));
    let with = |extra: &str| flow("f", &format!("{LOCKED}    allowConcurrent: true\n{extra}"));
    w.deploy(&with("")).await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 11, 0, 0));
    assert_eq!(s.tick().await.unwrap().fired.len(), 1);

    // Disabled from 11:10 to 11:30: nothing due meanwhile; the 12:00 slot still fires.
    w.at(utc(2024, 1, 1, 11, 10, 0));
    w.deploy(&with("    disabled: true\n")).await;
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 11, 30, 0));
    w.deploy(&with("")).await;
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 12, 0, 0));
    let r = s.tick().await.unwrap();
    assert_eq!(r.fired.len(), 1);
    assert_eq!(r.fired[0].slot, utc(2024, 1, 1, 12, 0, 0));

    // Disabled across 13:00 and 14:00 with LAST: enabling at 14:30 fires 14:00 only, then 15:00.
    w.deploy(&with(
        "    disabled: true\n    recoverMissedSchedules: LAST\n",
    ))
    .await;
    for h in [13, 14] {
        w.at(utc(2024, 1, 1, h, 0, 0));
        assert!(s.tick().await.unwrap().fired.is_empty());
    }
    assert_eq!(w.state("f", "hourly").await.next_execution_date, None);
    w.at(utc(2024, 1, 1, 14, 30, 0));
    w.deploy(&with("    recoverMissedSchedules: LAST\n")).await;
    s.tick().await.unwrap(); // sync restores the pending slot (13:00)
    let r = s.tick().await.unwrap();
    assert_eq!(r.fired.len(), 1);
    assert_eq!(r.fired[0].slot, utc(2024, 1, 1, 14, 0, 0));
    w.at(utc(2024, 1, 1, 15, 0, 0));
    assert_eq!(
        s.tick().await.unwrap().fired[0].slot,
        utc(2024, 1, 1, 15, 0, 0)
    );
}

#[tokio::test]
async fn recovery_after_downtime_through_the_service() {
    for (policy, expected) in [
        ("ALL", vec![11, 12, 13]),
        ("LAST", vec![13]),
        ("NONE", vec![]),
    ] {
        let w = World::new(utc(2024, 1, 1, 10, 30, 0));
        w.deploy(&flow(
            "f",
            &format!("{LOCKED}    allowConcurrent: true\n    recoverMissedSchedules: {policy}\n"),
        ))
        .await;
        let s = w.scheduler("s");
        s.tick().await.unwrap();
        w.at(utc(2024, 1, 1, 13, 30, 0)); // scheduler down 10:30 -> 13:30
        let mut slots = Vec::new();
        for _ in 0..5 {
            slots.extend(s.tick().await.unwrap().fired.iter().map(|f| f.slot));
        }
        let expected: Vec<_> = expected.iter().map(|h| utc(2024, 1, 1, *h, 0, 0)).collect();
        assert_eq!(slots, expected, "{policy}");
        assert_eq!(
            w.state("f", "hourly").await.next_execution_date,
            Some(utc(2024, 1, 1, 14, 0, 0))
        );
    }
}

#[tokio::test]
async fn conditions_skip_slots_in_the_service() {
    // 2024-01-05 is a Friday, 06 Saturday, 07 Sunday, 08 Monday.
    let w = World::new(utc(2024, 1, 4, 12, 0, 0));
    w.deploy(&flow(
        "f",
        "  - id: daily\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"0 9 * * *\"\n    allowConcurrent: true\n    inputs:\n      day: x\n    conditions:\n      - type: io.kestra.plugin.core.condition.Not\n        conditions:\n          - type: io.kestra.plugin.core.condition.Weekend\n",
    ))
    .await;
    let s = w.scheduler("s");
    let mut fired = Vec::new();
    for day in 4..=9 {
        w.at(utc(2024, 1, day, 12, 0, 0));
        fired.extend(s.tick().await.unwrap().fired.iter().map(|f| f.slot));
    }
    assert_eq!(
        fired,
        vec![
            utc(2024, 1, 5, 9, 0, 0),
            utc(2024, 1, 8, 9, 0, 0),
            utc(2024, 1, 9, 9, 0, 0)
        ]
    );
}

#[tokio::test]
async fn schedule_on_dates_in_the_service() {
    let w = World::new(utc(2024, 1, 1, 0, 0, 0));
    w.deploy(&flow(
        "f",
        "  - id: dates\n    type: io.kestra.plugin.core.trigger.ScheduleOnDates\n    timezone: Europe/Paris\n    inputs:\n      day: x\n    dates:\n      - \"2024-01-02T10:00:00\"\n      - \"2024-01-03T10:00:00+01:00\"\n",
    ))
    .await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    assert_eq!(
        w.state("f", "dates").await.next_execution_date,
        Some(utc(2024, 1, 2, 9, 0, 0))
    );
    w.at(utc(2024, 1, 2, 9, 0, 0));
    assert_eq!(s.tick().await.unwrap().fired.len(), 1);
    let first = w.queue.executions()[0].clone();
    w.set_execution_state(&first.id, StateType::Success).await;
    w.at(utc(2024, 1, 3, 9, 0, 0));
    assert_eq!(s.tick().await.unwrap().fired.len(), 1);
    assert_eq!(w.state("f", "dates").await.next_execution_date, None);
    assert_eq!(
        first.trigger.as_ref().unwrap().type_,
        "io.kestra.plugin.core.trigger.ScheduleOnDates"
    );
    assert_eq!(
        first.trigger.unwrap().variables["date"],
        "2024-01-02T10:00:00+01:00"
    );
}

#[tokio::test]
async fn backfill_fires_every_slot_in_order_then_clears() {
    let w = World::new(utc(2024, 1, 1, 10, 30, 0));
    w.deploy(&flow("f", &format!("{HOURLY}    allowConcurrent: true\n")))
        .await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 11, 0, 0));
    assert_eq!(s.tick().await.unwrap().fired.len(), 1);
    w.at(utc(2024, 1, 1, 11, 10, 0));

    let now = utc(2024, 1, 1, 11, 10, 0);
    let req = |start, end| BackfillRequest {
        start,
        end,
        inputs: serde_json::Map::from_iter([("day".to_string(), json!("backfilled"))]),
        labels: vec![Label::new("why", "replay")],
    };
    let call = |r| {
        backfill(
            w.flows.as_ref(),
            w.triggers.as_ref(),
            &w.registry,
            now,
            "main",
            "company",
            "f",
            "hourly",
            r,
        )
    };
    assert!(matches!(
        call(req(
            utc(2024, 1, 1, 5, 0, 0),
            Some(utc(2024, 1, 1, 4, 0, 0))
        ))
        .await,
        Err(SchedulerError::InvalidRequest(_))
    ));
    assert!(matches!(
        call(req(
            utc(2024, 1, 1, 5, 0, 0),
            Some(utc(2024, 1, 1, 12, 0, 0))
        ))
        .await,
        Err(SchedulerError::InvalidRequest(_)),
    ));
    call(req(
        utc(2024, 1, 1, 0, 30, 0),
        Some(utc(2024, 1, 1, 3, 0, 0)),
    ))
    .await
    .unwrap();
    assert!(matches!(
        call(req(utc(2024, 1, 1, 0, 0, 0), None)).await,
        Err(SchedulerError::Conflict(_))
    ));

    let mut backfilled = Vec::new();
    for _ in 0..5 {
        let r = s.tick().await.unwrap();
        assert!(r.fired.len() <= 1, "one backfill slot per step");
        backfilled.extend(r.fired.iter().filter(|f| f.backfill).map(|f| f.slot));
    }
    assert_eq!(
        backfilled,
        vec![utc(2024, 1, 1, 1, 0, 0), utc(2024, 1, 1, 2, 0, 0)],
        "slots in [start, end) in order"
    );
    let state = w.state("f", "hourly").await;
    assert_eq!(state.backfill, None, "the backfill cleared itself");
    assert_eq!(
        state.next_execution_date,
        Some(utc(2024, 1, 1, 12, 0, 0)),
        "regular schedule resumes"
    );
    let executions = w.queue.executions();
    let b = executions
        .iter()
        .find(|e| e.label("system.backfill").is_some())
        .unwrap();
    assert_eq!(b.label("system.backfill"), Some("true"));
    assert_eq!(b.label("why"), Some("replay"));
    assert_eq!(b.label("team"), Some("data"));
    assert_eq!(b.inputs["day"], "backfilled");
    assert_eq!(
        b.trigger.as_ref().unwrap().variables["date"],
        "2024-01-01T01:00:00Z"
    );

    // Backfilling a slot that already ran creates a new execution (a backfill id is in its id).
    call(req(utc(2024, 1, 1, 11, 0, 0), None)).await.unwrap();
    let r = s.tick().await.unwrap();
    assert_eq!(r.fired.len(), 1);
    let regular = slot_execution_id(
        "main",
        "company",
        "f",
        "hourly",
        utc(2024, 1, 1, 11, 0, 0),
        None,
    );
    assert_ne!(r.fired[0].execution_id, regular);
    w.at(utc(2024, 1, 1, 12, 0, 0));
    let r = s.tick().await.unwrap();
    assert_eq!(r.fired.len(), 1);
    assert_eq!(r.fired[0].slot, utc(2024, 1, 1, 12, 0, 0));
    assert!(!r.fired[0].backfill);
}

#[tokio::test]
async fn removed_triggers_lose_their_state_and_cron_changes_reschedule() {
    let w = World::new(utc(2024, 1, 1, 10, 30, 0));
    w.deploy(&flow("f", LOCKED)).await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.deploy(&flow(
        "f",
        "  - id: hourly\n    type: io.kestra.plugin.core.trigger.Schedule\n    cron: \"45 * * * *\"\n    inputs:\n      day: x\n",
    ))
    .await;
    s.tick().await.unwrap();
    let state = w.state("f", "hourly").await;
    assert_eq!(state.flow_revision, Some(2));
    assert_eq!(state.next_execution_date, Some(utc(2024, 1, 1, 10, 45, 0)));
    w.flows.delete("main", "company", "f").await.unwrap();
    let r = s.tick().await.unwrap();
    assert_eq!(r.removed, 1);
    assert!(w.triggers.find(&state.uid()).await.unwrap().is_none());
}

#[cfg(feature = "testkit")]
mod conformance {
    use super::*;
    use kestra_core::repository::{
        LogRepository, MetricRepository, Repositories, ServiceInstanceRepository,
    };

    struct Nothing;
    #[async_trait]
    impl LogRepository for Nothing {
        async fn save_batch(&self, _: &[kestra_core::model::LogEntry]) -> RepoResult<()> {
            Ok(())
        }
        async fn find_by_execution(
            &self,
            _: &str,
            _: &str,
            _: Option<kestra_core::model::Level>,
            _: Option<&str>,
        ) -> RepoResult<Vec<kestra_core::model::LogEntry>> {
            Ok(Vec::new())
        }
        async fn search(
            &self,
            _: &kestra_core::repository::LogQuery,
            _: &Pageable,
        ) -> RepoResult<Page<kestra_core::model::LogEntry>> {
            Ok(Page {
                results: Vec::new(),
                total: 0,
            })
        }
        async fn delete_by_execution(&self, _: &str, _: &str) -> RepoResult<u64> {
            Ok(0)
        }
    }
    #[async_trait]
    impl MetricRepository for Nothing {
        async fn save_batch(&self, _: &[kestra_core::model::MetricEntry]) -> RepoResult<()> {
            Ok(())
        }
        async fn find_by_execution(
            &self,
            _: &str,
            _: &str,
        ) -> RepoResult<Vec<kestra_core::model::MetricEntry>> {
            Ok(Vec::new())
        }
        async fn delete_by_execution(&self, _: &str, _: &str) -> RepoResult<u64> {
            Ok(0)
        }
    }
    #[async_trait]
    impl ServiceInstanceRepository for Nothing {
        async fn save(&self, _: &kestra_core::model::ServiceInstance) -> RepoResult<()> {
            Ok(())
        }
        async fn find_by_id(
            &self,
            _: &str,
        ) -> RepoResult<Option<kestra_core::model::ServiceInstance>> {
            Ok(None)
        }
        async fn find_all(&self) -> RepoResult<Vec<kestra_core::model::ServiceInstance>> {
            Ok(Vec::new())
        }
        async fn delete(&self, _: &str) -> RepoResult<()> {
            Ok(())
        }
    }

    fn repos() -> (Repositories, Arc<dyn Queue>) {
        let nothing = Arc::new(Nothing);
        let repos = Repositories {
            flows: Arc::new(MemFlows::default()),
            executions: Arc::new(MemExecutions::default()),
            logs: nothing.clone(),
            metrics: nothing.clone(),
            triggers: Arc::new(MemTriggers::default()),
            services: nothing,
        };
        (repos, Arc::new(MemQueue::default()))
    }

    #[tokio::test]
    async fn testkit_two_schedulers_one_execution_per_slot() {
        let (repos, queue) = repos();
        kestra_core::testkit::scheduler::two_schedulers_one_execution_per_slot(&repos, queue).await;
    }

    #[tokio::test]
    async fn testkit_two_schedulers_one_evaluation_per_due_date() {
        let (repos, queue) = repos();
        kestra_core::testkit::scheduler::two_schedulers_one_evaluation_per_due_date(&repos, queue)
            .await;
    }

    #[tokio::test]
    async fn testkit_scheduler_killed_mid_run() {
        let (repos, queue) = repos();
        kestra_core::testkit::scheduler::scheduler_killed_mid_run(&repos, queue).await;
    }
}

#[tokio::test]
async fn run_loop_ticks_until_shutdown() {
    let w = World::new(utc(2024, 1, 1, 10, 30, 0));
    w.deploy(&flow("f", &format!("{HOURLY}    allowConcurrent: true\n")))
        .await;
    let s = SchedulerService::new(
        SchedulerConfig {
            id: "looping".into(),
            tick: Duration::from_millis(5),
            ..SchedulerConfig::default()
        },
        w.clock.clone(),
        w.flows.clone(),
        w.triggers.clone(),
        w.executions.clone(),
        w.queue.clone(),
        w.registry.clone(),
        Arc::new(ExpressionEngine::default()),
    );
    let shutdown = tokio_util::sync::CancellationToken::new();
    let handle = tokio::spawn(s.run(shutdown.clone()));
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(w.queue.executions().is_empty());
    w.at(utc(2024, 1, 1, 11, 0, 0));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while w.queue.executions().is_empty() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    shutdown.cancel();
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("run stops on shutdown")
        .unwrap();
    assert_eq!(
        w.queue.executions().len(),
        1,
        "the loop fired the 11:00 slot once"
    );
}

// ------------------------------------------------------------------------------------------------
// polling triggers (http.Trigger): the scheduler sends evaluations, the test plays the worker

const POLL: &str = r#"  - id: poll
    type: io.kestra.plugin.core.http.Trigger
    uri: http://127.0.0.1:1/status
    interval: PT1M
    labels:
      source: http
    inputs:
      day: "{{ trigger.body }}"
"#;

/// A worker's answer to `job`: `variables` start an execution, `error` is a failed evaluation.
async fn answer(w: &World, job: &WorkerTrigger, variables: Option<Value>, error: Option<&str>) {
    let result = WorkerTriggerResult {
        tenant_id: job.tenant_id.clone(),
        namespace: job.namespace.clone(),
        flow_id: job.flow_id.clone(),
        flow_revision: job.flow_revision,
        trigger_id: job.trigger.id.clone(),
        evaluation_date: job.evaluation_date,
        variables: variables.map(|v| v.as_object().unwrap().clone()),
        error: error.map(str::to_string),
        worker_id: Some("w1".into()),
    };
    w.queue
        .publish(vec![result.envelope().unwrap()])
        .await
        .unwrap();
}

fn response(body: &str) -> Value {
    json!({"uri": "http://127.0.0.1:1/status", "code": 200, "headers": {"x": ["y"]}, "body": body})
}

#[tokio::test]
async fn polling_trigger_sends_one_evaluation_per_due_date_and_waits_for_its_result() {
    let t0 = utc(2024, 1, 1, 10, 0, 0);
    let w = World::new(t0);
    w.deploy(&flow("f", POLL)).await;
    let s = w.scheduler("s");

    let r = s.tick().await.unwrap();
    assert_eq!(r.created, 1);
    assert!(
        r.evaluations.is_empty(),
        "first evaluation one interval later"
    );
    assert_eq!(
        w.state("f", "poll").await.next_execution_date,
        Some(t0 + chrono::Duration::minutes(1))
    );
    w.at(utc(2024, 1, 1, 10, 0, 59));
    assert!(s.tick().await.unwrap().evaluations.is_empty());

    let due = utc(2024, 1, 1, 10, 1, 0);
    w.at(due);
    let r = s.tick().await.unwrap();
    assert_eq!(
        r.evaluations,
        vec![trigger_uid("main", "company", "f", "poll")]
    );
    let jobs = w.queue.trigger_jobs();
    assert_eq!(jobs.len(), 1);
    assert_eq!(jobs[0].evaluation_date, due);
    assert_eq!(jobs[0].trigger.id, "poll");
    assert_eq!(jobs[0].flow_revision, 1);
    assert_eq!(jobs[0].context["flow"]["id"], "f");
    assert_eq!(w.state("f", "poll").await.evaluate_running_date, Some(due));

    // The evaluation runs: nothing more is sent, even once the interval has passed.
    for at in [utc(2024, 1, 1, 10, 1, 1), utc(2024, 1, 1, 10, 3, 0)] {
        w.at(at);
        let r = s.tick().await.unwrap();
        assert!(r.evaluations.is_empty(), "no second evaluation at {at}");
        assert_eq!(w.state("f", "poll").await.evaluate_running_date, Some(due));
    }
    assert_eq!(w.queue.trigger_jobs().len(), 1);

    // The result arrives (nothing to start): the next evaluation is due one interval after the last.
    answer(&w, &jobs[0], None, None).await;
    w.at(utc(2024, 1, 1, 10, 3, 10));
    let r = s.tick().await.unwrap();
    assert_eq!(r.results, 1);
    assert!(r.fired.is_empty());
    // 10:02 is past: the overdue evaluation is sent in the same step.
    assert_eq!(r.evaluations.len(), 1);
    assert_eq!(
        lock(&w.queue.acked).len(),
        1,
        "the applied result is acknowledged"
    );
    let jobs = w.queue.trigger_jobs();
    assert_eq!(jobs.len(), 2);
    answer(&w, &jobs[1], None, None).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.results, 1);
    assert!(r.evaluations.is_empty());
    let state = w.state("f", "poll").await;
    assert_eq!(state.evaluate_running_date, None);
    assert_eq!(state.worker_id.as_deref(), Some("w1"));
    assert_eq!(
        state.next_execution_date,
        Some(utc(2024, 1, 1, 10, 4, 10)),
        "evaluation date + interval"
    );
}

#[tokio::test]
async fn polling_result_starts_one_execution_with_trigger_variables() {
    let w = World::new(utc(2024, 1, 1, 10, 0, 0));
    w.deploy(&flow("f", &format!("{POLL}    allowConcurrent: true\n")))
        .await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 10, 1, 0));
    s.tick().await.unwrap();
    let job = w.queue.trigger_jobs().remove(0);

    answer(&w, &job, Some(response("2024-01-01")), None).await;
    // The same result delivered twice (a worker redelivery): the second one is stale.
    answer(&w, &job, Some(response("2024-01-01")), None).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.results, 1);
    assert_eq!(r.stale_results, 1);
    assert_eq!(r.fired.len(), 1);
    let executions = w.queue.executions();
    assert_eq!(executions.len(), 1, "one execution per evaluation");
    let e = &executions[0];
    assert_eq!(e.id, r.fired[0].execution_id);
    assert_eq!(
        e.id,
        slot_execution_id("main", "company", "f", "poll", job.evaluation_date, None),
        "the execution id is derived from the evaluation"
    );
    let trigger = e.trigger.as_ref().unwrap();
    assert_eq!(trigger.id, "poll");
    assert_eq!(trigger.type_, "io.kestra.plugin.core.http.Trigger");
    assert_eq!(trigger.variables["body"], "2024-01-01");
    assert_eq!(trigger.variables["code"], 200);
    assert_eq!(trigger.variables["headers"]["x"], json!(["y"]));
    assert_eq!(trigger.variables["uri"], "http://127.0.0.1:1/status");
    assert_eq!(
        e.inputs["day"], "2024-01-01",
        "inputs rendered with trigger"
    );
    assert_eq!(e.label("source"), Some("http"));
    assert_eq!(e.label("team"), Some("data"));
    assert_eq!(e.current(), StateType::Created);
    assert_eq!(lock(&w.queue.acked).len(), 2, "both results acknowledged");
}

#[tokio::test]
async fn polling_conditions_false_start_nothing() {
    let w = World::new(utc(2024, 1, 1, 10, 0, 0));
    let trigger = format!(
        "{POLL}    conditions:\n      - type: io.kestra.plugin.core.condition.Expression\n        expression: \"{{{{ trigger.body == 'go' }}}}\"\n"
    );
    w.deploy(&flow("f", &trigger)).await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 10, 1, 0));
    s.tick().await.unwrap();
    let job = w.queue.trigger_jobs().remove(0);
    answer(&w, &job, Some(response("wait")), None).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.results, 1);
    assert_eq!(r.skipped, 1);
    assert!(
        w.queue.executions().is_empty(),
        "condition false: nothing starts"
    );

    w.at(utc(2024, 1, 1, 10, 2, 0));
    s.tick().await.unwrap();
    let job = w.queue.trigger_jobs().remove(1);
    answer(&w, &job, Some(response("go")), None).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.fired.len(), 1);
    assert_eq!(w.queue.executions().len(), 1);
}

#[tokio::test]
async fn polling_lock_holds_evaluations_while_the_execution_runs() {
    let w = World::new(utc(2024, 1, 1, 10, 0, 0));
    w.deploy(&flow("f", POLL)).await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 10, 1, 0));
    s.tick().await.unwrap();
    let job = w.queue.trigger_jobs().remove(0);
    answer(&w, &job, Some(response("x")), None).await;
    let first = s.tick().await.unwrap().fired[0].execution_id.clone();
    assert_eq!(
        w.state("f", "poll").await.execution_id.as_deref(),
        Some(first.as_str())
    );
    w.set_execution_state(&first, StateType::Running).await;

    for at in [utc(2024, 1, 1, 10, 2, 0), utc(2024, 1, 1, 10, 5, 0)] {
        w.at(at);
        let r = s.tick().await.unwrap();
        assert!(r.evaluations.is_empty(), "no evaluation while {first} runs");
        assert_eq!(r.locked, 1);
    }
    assert_eq!(w.queue.trigger_jobs().len(), 1);

    w.set_execution_state(&first, StateType::Success).await;
    w.at(utc(2024, 1, 1, 10, 6, 0));
    let r = s.tick().await.unwrap();
    assert_eq!(
        r.evaluations.len(),
        1,
        "free again: the next evaluation is sent"
    );
    assert_eq!(w.state("f", "poll").await.execution_id, None);
}

#[tokio::test]
async fn polling_evaluation_errors_are_kept_in_the_state_and_abandoned_evaluations_resent() {
    let w = World::new(utc(2024, 1, 1, 10, 0, 0));
    w.deploy(&flow("f", POLL)).await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 10, 1, 0));
    s.tick().await.unwrap();
    let job = w.queue.trigger_jobs().remove(0);
    answer(
        &w,
        &job,
        None,
        Some("invalid property `uri`: 'nope': relative URL"),
    )
    .await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.results, 1);
    assert!(r.fired.is_empty());
    let state = w.state("f", "poll").await;
    assert_eq!(
        state.error.as_deref(),
        Some("invalid property `uri`: 'nope': relative URL"),
        "the error is visible"
    );
    assert!(
        !state.disabled,
        "a failed evaluation does not disable the trigger"
    );

    // The next evaluation is lost with its worker: after the timeout a new one is sent, and the
    // late result of the abandoned one is ignored.
    w.at(utc(2024, 1, 1, 10, 2, 0));
    s.tick().await.unwrap();
    let lost = w.queue.trigger_jobs().remove(1);
    w.at(utc(2024, 1, 1, 10, 6, 59));
    assert!(s.tick().await.unwrap().evaluations.is_empty());
    w.at(utc(2024, 1, 1, 10, 7, 0));
    let r = s.tick().await.unwrap();
    assert_eq!(
        r.evaluations.len(),
        1,
        "resent after evaluation_timeout (5 min)"
    );
    answer(&w, &lost, Some(response("late")), None).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.stale_results, 1);
    assert!(
        w.queue.executions().is_empty(),
        "a stale result starts nothing"
    );
    let resent = w.queue.trigger_jobs().remove(2);
    answer(&w, &resent, Some(response("ok")), None).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.fired.len(), 1);
    assert_eq!(
        w.state("f", "poll").await.error,
        None,
        "a good evaluation clears the error"
    );
}

#[tokio::test]
async fn polling_trigger_whose_inputs_cannot_render_is_disabled_with_an_error() {
    let w = World::new(utc(2024, 1, 1, 10, 0, 0));
    let trigger = POLL.replace("{{ trigger.body }}", "{{ trigger.nothing }}");
    w.deploy(&flow("f", &trigger)).await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 10, 1, 0));
    s.tick().await.unwrap();
    let job = w.queue.trigger_jobs().remove(0);
    answer(&w, &job, Some(response("x")), None).await;
    let r = s.tick().await.unwrap();
    assert_eq!(r.disabled.len(), 1);
    assert!(r.disabled[0].1.contains("nothing"), "{:?}", r.disabled);
    let state = w.state("f", "poll").await;
    assert!(state.disabled);
    assert!(state.error.unwrap().contains("cannot render input 'day'"));
    assert!(w.queue.executions().is_empty());

    // Fixing the flow enables it again.
    w.deploy(&flow("f", POLL)).await;
    s.tick().await.unwrap();
    let state = w.state("f", "poll").await;
    assert!(!state.disabled);
    assert_eq!(state.error, None);
}

#[tokio::test]
async fn two_schedulers_send_one_evaluation_per_due_date() {
    let w = World::new(utc(2024, 1, 1, 10, 0, 0));
    for i in 0..5 {
        w.deploy(&flow(
            &format!("f{i}"),
            &format!("{POLL}    allowConcurrent: true\n"),
        ))
        .await;
    }
    let (a, b) = (w.scheduler("a"), w.scheduler("b"));
    let mut sent = 0;
    let mut started = 0;
    for _ in 0..20 {
        w.clock.advance(chrono::Duration::seconds(30));
        let (ra, rb) = tokio::join!(a.tick(), b.tick());
        let (ra, rb) = (ra.unwrap(), rb.unwrap());
        sent += ra.evaluations.len() + rb.evaluations.len();
        started += ra.fired.len() + rb.fired.len();
        // Play the worker: answer every evaluation sent in this step.
        let jobs = w.queue.trigger_jobs();
        for job in &jobs[jobs.len() - ra.evaluations.len() - rb.evaluations.len()..] {
            answer(&w, job, Some(response("x")), None).await;
        }
    }
    let jobs = w.queue.trigger_jobs();
    assert_eq!(jobs.len(), sent);
    let mut keys: Vec<(String, DateTime<Utc>)> = jobs
        .iter()
        .map(|j| (j.flow_id.clone(), j.evaluation_date))
        .collect();
    keys.sort();
    keys.dedup();
    assert_eq!(
        keys.len(),
        jobs.len(),
        "one evaluation per trigger and due date"
    );
    assert!(sent >= 5 * 5, "every trigger kept being evaluated ({sent})");
    let executions = w.queue.executions();
    assert_eq!(executions.len(), started);
    let mut ids: Vec<&str> = executions.iter().map(|e| e.id.as_str()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), executions.len());
}

#[tokio::test]
async fn polling_stop_after_disables_the_trigger() {
    let w = World::new(utc(2024, 1, 1, 10, 0, 0));
    w.deploy(&flow("f", &format!("{POLL}    stopAfter: [FAILED]\n")))
        .await;
    let s = w.scheduler("s");
    s.tick().await.unwrap();
    w.at(utc(2024, 1, 1, 10, 1, 0));
    s.tick().await.unwrap();
    let job = w.queue.trigger_jobs().remove(0);
    answer(&w, &job, Some(response("x")), None).await;
    let id = s.tick().await.unwrap().fired[0].execution_id.clone();
    w.set_execution_state(&id, StateType::Failed).await;
    w.at(utc(2024, 1, 1, 10, 2, 0));
    let r = s.tick().await.unwrap();
    assert!(r.evaluations.is_empty());
    assert_eq!(r.disabled.len(), 1);
    assert!(r.disabled[0].1.starts_with("stopAfter"), "{:?}", r.disabled);
    assert!(w.state("f", "poll").await.disabled);
}

#[tokio::test]
async fn polling_trigger_with_a_zero_interval_is_disabled_with_an_error() {
    let w = World::new(utc(2024, 1, 1, 10, 0, 0));
    w.deploy(&flow("f", &POLL.replace("PT1M", "PT0S"))).await;
    let s = w.scheduler("s");
    let r = s.tick().await.unwrap();
    assert_eq!(r.disabled.len(), 1, "{r:?}");
    let state = w.state("f", "poll").await;
    assert!(state.disabled);
    assert_eq!(
        state.error.as_deref(),
        Some("interval must be longer than zero")
    );
    w.at(utc(2024, 1, 1, 11, 0, 0));
    assert!(s.tick().await.unwrap().evaluations.is_empty());
    assert!(w.queue.trigger_jobs().is_empty());
}
