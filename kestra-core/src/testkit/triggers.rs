//! Conformance suite for the scheduler's unit of work over trigger states
//! ([`Queue::begin_triggers`], [`TriggerUnit`]), which every queue backend runs: claims, writes under
//! claims, all or nothing. [`run_all`] runs everything.
//!
//! The checks claim every due trigger of the backend (they use fixed dates around 2001-01-01 and
//! assert only on their own tenant's triggers), so run them on a backend of their own, one at a time.
//! They read states back through new units, never through the repository (which may lag on Kafka).
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::StreamExt;

use crate::model::{TriggerState, new_id};
use crate::queue::{Envelope, Queue, QueueError, Topic, TriggerUnit};

/// 2001-01-01T00:00:00Z plus `secs`: the fixed "now" of the checks.
fn at(secs: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(978_307_200 + secs, 0).expect("fixed dates are in range")
}

const HOUR: i64 = 3_600;

fn ok<T>(r: Result<T, QueueError>, what: &str) -> T {
    r.unwrap_or_else(|e| panic!("{what} failed: {e}"))
}

fn state(tenant: &str, trigger: &str, next: Option<DateTime<Utc>>) -> TriggerState {
    let mut s = TriggerState::new(tenant, "company", "f", trigger, 1, at(0));
    s.next_execution_date = next;
    s
}

async fn begin(queue: &dyn Queue) -> Box<dyn TriggerUnit> {
    ok(queue.begin_triggers().await, "begin_triggers")
}

/// Create `states` in one committed unit.
async fn create_all(queue: &dyn Queue, states: &[&TriggerState]) {
    let mut unit = begin(queue).await;
    for s in states {
        assert!(
            ok(unit.create(s).await, "create"),
            "a new uid is created ({})",
            s.uid()
        );
    }
    ok(unit.commit().await, "commit creations");
}

/// The committed states of `tenant`, by uid (read in a unit that is dropped).
async fn committed(queue: &dyn Queue, tenant: &str) -> Vec<TriggerState> {
    let mut unit = begin(queue).await;
    let mut all = ok(unit.states(tenant).await, "states");
    all.sort_by_key(TriggerState::uid);
    all
}

/// Delete the states of `tenant` (cleanup).
async fn delete_all(queue: &dyn Queue, tenant: &str) {
    let mut unit = begin(queue).await;
    for s in ok(unit.states(tenant).await, "states") {
        if ok(unit.claim(&s.uid()).await, "claim for cleanup").is_some() {
            ok(unit.delete(&s.uid()).await, "delete");
        }
    }
    ok(unit.commit().await, "commit cleanup");
}

/// Claim every due trigger at `now` in `unit` (batches of 10) and keep those of `tenant`.
async fn claim_all(unit: &mut dyn TriggerUnit, now: DateTime<Utc>, tenant: &str) -> Vec<String> {
    let mut mine = Vec::new();
    let mut seen = BTreeSet::new();
    for _ in 0..1_000 {
        let batch = ok(unit.claim_due(now, 10).await, "claim_due");
        assert!(batch.len() <= 10, "claim_due(10) returned {}", batch.len());
        if batch.is_empty() {
            return mine;
        }
        for t in batch {
            assert!(!t.disabled, "claim_due returned the disabled {}", t.uid());
            let next = t
                .next_execution_date
                .unwrap_or_else(|| panic!("claim_due returned {} with no next date", t.uid()));
            assert!(next <= now, "claim_due returned {} due at {next}", t.uid());
            assert!(seen.insert(t.uid()), "one unit got {} twice", t.uid());
            if t.tenant_id == tenant {
                mine.push(t.uid());
            }
        }
    }
    panic!("claim_due keeps returning triggers after 1000 batches");
}

/// Claims in one unit: only enabled triggers due at or before now; never the same trigger twice;
/// by uid, due or not and disabled too, an unknown uid claims nothing; a claim of a held trigger
/// returns its staged state; `create` of an existing uid changes nothing; writes are refused on a
/// trigger the unit does not hold.
pub async fn claims_in_one_unit(queue: &dyn Queue) {
    let tn = format!("tk-trig-{}", new_id());
    let a = state(&tn, "due", Some(at(-60)));
    let mut b = state(&tn, "disabled", Some(at(-60)));
    b.disabled = true;
    let c = state(&tn, "later", Some(at(HOUR)));
    let d = state(&tn, "never", None);
    let e = state(&tn, "exactly-now", Some(at(0)));
    create_all(queue, &[&a, &b, &c, &d, &e]).await;

    let mut unit = begin(queue).await;
    let mut claimed = claim_all(unit.as_mut(), at(0), &tn).await;
    claimed.sort();
    let mut expected = vec![a.uid(), e.uid()];
    expected.sort();
    assert_eq!(
        claimed, expected,
        "only enabled triggers due at or before now are claimed"
    );
    let mut a_next = a.clone();
    a_next.next_execution_date = Some(at(HOUR));
    ok(unit.save(&a_next).await, "save a claimed trigger");
    assert_eq!(
        ok(unit.claim(&a.uid()).await, "claim a held trigger").and_then(|t| t.next_execution_date),
        Some(at(HOUR)),
        "a held trigger claimed again shows the unit's staged state"
    );
    assert!(
        unit.save(&c).await.is_err(),
        "saving a trigger the unit does not hold is refused"
    );
    assert!(
        unit.delete(&c.uid()).await.is_err(),
        "deleting a trigger the unit does not hold is refused"
    );
    assert!(
        !ok(unit.create(&c).await, "create an existing uid"),
        "create of an existing uid returns false"
    );
    assert!(
        unit.save(&c).await.is_err(),
        "a refused create holds nothing"
    );
    for (s, what) in [(&c, "not due"), (&b, "disabled")] {
        assert_eq!(
            ok(unit.claim(&s.uid()).await, "claim by uid").map(|t| t.uid()),
            Some(s.uid()),
            "a {what} trigger can be claimed by uid"
        );
    }
    assert!(
        ok(unit.claim(&format!("{tn}_nope")).await, "claim unknown").is_none(),
        "an unknown uid claims nothing"
    );
    let mut c_disabled = c.clone();
    c_disabled.disabled = true;
    ok(
        unit.save(&c_disabled).await,
        "save a trigger claimed by uid",
    );
    assert!(
        unit.delete(&d.uid()).await.is_err(),
        "deleting an unheld trigger is refused"
    );
    ok(unit.commit().await, "commit");

    let after = committed(queue, &tn).await;
    let next_of = |uid: &str| {
        after
            .iter()
            .find(|t| t.uid() == uid)
            .and_then(|t| t.next_execution_date)
    };
    assert_eq!(
        next_of(&a.uid()),
        Some(at(HOUR)),
        "the commit stored a's new state"
    );
    assert!(
        after.iter().any(|t| t.uid() == c.uid() && t.disabled),
        "the commit stored c's new state"
    );
    assert_eq!(after.len(), 5, "nothing was deleted");
    delete_all(queue, &tn).await;
}

/// All or nothing: a dropped unit stores nothing, publishes nothing and releases its claims; a
/// committed unit stores its states and publishes its messages together.
pub async fn all_or_nothing(queue: &dyn Queue) {
    let tn = format!("tk-trig-{}", new_id());
    let a = state(&tn, "due", Some(at(-30)));
    create_all(queue, &[&a]).await;
    let mut sub = ok(queue.subscribe(Topic::ExecutionKilled).await, "subscribe");
    let key = format!("{tn}-message");

    let mut unit = begin(queue).await;
    assert_eq!(claim_all(unit.as_mut(), at(0), &tn).await, vec![a.uid()]);
    let mut moved = a.clone();
    moved.next_execution_date = Some(at(HOUR));
    ok(unit.save(&moved).await, "save");
    ok(
        unit.publish(vec![Envelope::new(
            Topic::ExecutionKilled,
            &key,
            &b"{}"[..],
        )])
        .await,
        "publish",
    );
    drop(unit);

    // The claims of a dropped unit end with its rollback, which a backend may finish in the
    // background: wait for it (briefly).
    let mut tries = 0;
    let mut unit = loop {
        let mut unit = begin(queue).await;
        let mine = claim_all(unit.as_mut(), at(0), &tn).await;
        if !mine.is_empty() || tries == 100 {
            assert_eq!(
                mine,
                vec![a.uid()],
                "a dropped unit released its claim and stored nothing: the trigger is still due"
            );
            break unit;
        }
        drop(unit);
        tries += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    ok(unit.save(&moved).await, "save");
    ok(
        unit.publish(vec![Envelope::new(
            Topic::ExecutionKilled,
            &key,
            &b"{}"[..],
        )])
        .await,
        "publish",
    );
    ok(unit.commit().await, "commit");

    let mut unit = begin(queue).await;
    assert!(
        claim_all(unit.as_mut(), at(0), &tn).await.is_empty(),
        "the committed state is no longer due"
    );
    drop(unit);
    let mut received = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while let Ok(Some(next)) = tokio::time::timeout_at(deadline, sub.next()).await {
        if ok(next, "broadcast").key == key {
            received += 1;
            // Give a wrongly published copy of the dropped unit a moment to show up.
            if tokio::time::timeout(Duration::from_millis(300), sub.next())
                .await
                .is_err()
            {
                break;
            }
        }
    }
    assert_eq!(
        received, 1,
        "only the committed unit's message is published, once"
    );
    delete_all(queue, &tn).await;
}

/// Two units at once never hold the same trigger: each claims due triggers in batches of 5 and
/// moves them past now before committing (a scheduler's step); together they handled every due
/// trigger exactly once. (On SQLite the second unit waits for the first: one writer.)
pub async fn concurrent_units_claim_disjoint_triggers(queue: Arc<dyn Queue>) {
    let tn = format!("tk-trig-{}", new_id());
    let all: Vec<TriggerState> = (0..50)
        .map(|i| state(&tn, &format!("t{i}"), Some(at(-10))))
        .collect();
    create_all(queue.as_ref(), &all.iter().collect::<Vec<_>>()).await;
    let mut handles = Vec::new();
    for _ in 0..2 {
        let (queue, tn) = (queue.clone(), tn.clone());
        handles.push(tokio::spawn(async move {
            let mut unit = begin(queue.as_ref()).await;
            let mut mine = Vec::new();
            loop {
                let batch = ok(unit.claim_due(at(0), 5).await, "claim_due");
                if batch.is_empty() {
                    break;
                }
                for mut t in batch {
                    if t.tenant_id != tn {
                        continue;
                    }
                    mine.push(t.uid());
                    t.next_execution_date = Some(at(HOUR));
                    ok(unit.save(&t).await, "save");
                }
                tokio::task::yield_now().await;
            }
            ok(unit.commit().await, "commit");
            mine
        }));
    }
    let mut sets = Vec::new();
    for h in handles {
        match h.await {
            Ok(v) => sets.push(v),
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => panic!("claiming task cancelled: {e}"),
        }
    }
    let first: BTreeSet<&String> = sets[0].iter().collect();
    let second: BTreeSet<&String> = sets[1].iter().collect();
    let both: Vec<&&String> = first.intersection(&second).collect();
    assert!(both.is_empty(), "triggers handled by both units: {both:?}");
    let union: BTreeSet<String> = first.union(&second).map(|s| (*s).clone()).collect();
    let expected: BTreeSet<String> = all.iter().map(TriggerState::uid).collect();
    assert_eq!(
        union, expected,
        "together the units handled every due trigger"
    );
    assert_eq!(
        sets[0].len() + sets[1].len(),
        50,
        "each trigger handled once"
    );
    delete_all(queue.as_ref(), &tn).await;
}

/// Every check, one after the other.
pub async fn run_all(queue: Arc<dyn Queue>) {
    claims_in_one_unit(queue.as_ref()).await;
    all_or_nothing(queue.as_ref()).await;
    concurrent_units_claim_disjoint_triggers(queue).await;
}
