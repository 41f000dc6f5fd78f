//! The scheduler's pure slot logic: cron, nicknames, zones, daylight saving, recovery, late delay,
//! ScheduleOnDates, conditions. The service itself ([`SchedulerService`](kestra_core::scheduler::SchedulerService))
//! is tested on the real backends by the scenarios of `kestra_core::testkit::scheduler`, which every
//! backend's tests run (`kestra-backend-jdbc/tests/{sqlite,postgres,mysql}.rs`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use chrono::{DateTime, TimeZone, Utc};
use kestra_core::expression::ExpressionEngine;
use kestra_core::flow::triggers::RecoverMissedSchedules;
use kestra_core::scheduler::conditions::{ConditionError, evaluate_conditions};
use kestra_core::scheduler::schedule::{Plan, RecoveryPolicy, Timetable, plan, slot_execution_id};
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
