//! Flow `sla`, evaluated by the executor as Kestra's `ExecutorService.processViolation`:
//!
//! - `MAX_DURATION`: when the execution first goes RUNNING, a [`ExecutionCommand::SlaDue`] timer
//!   is staged for `duration` later; when it fires and the execution has not ended, the SLA is
//!   violated.
//! - `EXECUTION_ASSERTION`: `assert` is rendered against the execution when its tasks are done,
//!   before it ends; a false value (Kestra's truthiness) violates the SLA.
//!
//! A violation adds the SLA's `labels` (unless the execution has them all already) and applies its
//! `behavior`: FAIL ends the execution FAILED, CANCEL ends it CANCELLED (for MAX_DURATION the open
//! task runs are killed and the workers told to stop), NONE does nothing else. Only the first
//! violated SLA of a kind applies, as Kestra's.

use super::*;
use crate::flow::model::{Sla, SlaBehavior, SlaType};

impl Run<'_> {
    /// Stage the MAX_DURATION timers of the flow's SLA (on the execution's first RUNNING).
    pub(super) fn schedule_slas(&mut self) {
        let timers: Vec<(String, chrono::Duration)> = self
            .index
            .flow
            .sla
            .iter()
            .filter(|s| s.sla_type == SlaType::MaxDuration)
            .filter_map(|s| {
                let d = s.duration.as_ref()?;
                Some((
                    s.id.clone(),
                    chrono::Duration::from_std(d.duration()).unwrap_or(chrono::Duration::MAX),
                ))
            })
            .collect();
        for (sla_id, duration) in timers {
            let at = self
                .now
                .checked_add_signed(duration)
                .unwrap_or(DateTime::<Utc>::MAX_UTC);
            self.delays.push(Delay {
                at,
                command: ExecutionCommand::SlaDue {
                    execution_id: self.exec.id.clone(),
                    sla_id,
                },
            });
        }
    }

    /// A MAX_DURATION timer fired.
    pub(super) fn sla_due(&mut self, sla_id: &str) {
        if self.exec.state.is_terminated() {
            self.ignored = Some(format!("SLA '{sla_id}': the execution has ended"));
            return;
        }
        let Some(sla) = self.index.flow.sla.iter().find(|s| s.id == sla_id).cloned() else {
            self.ignored = Some(format!("SLA '{sla_id}' is not in the flow any more"));
            return;
        };
        let Some(max) = sla.duration.as_ref() else {
            return;
        };
        let started = self.exec.state.start_date().unwrap_or(self.now);
        let elapsed = self.now - started;
        let reason = format!(
            "execution duration of {} exceed the maximum duration of {}.",
            iso_millis(elapsed),
            max
        );
        let Some(end) = self.sla_violated(&sla, &reason) else {
            return;
        };
        self.end_for_sla(end);
    }

    /// An SLA is violated for `reason`: its labels are added and Kestra's line logged; the state
    /// its behavior ends the execution in (FAIL: FAILED, CANCEL: CANCELLED; NONE: none).
    fn sla_violated(&mut self, sla: &Sla, reason: &str) -> Option<StateType> {
        self.add_sla_labels(sla);
        let (level, message, end) = match sla.behavior {
            SlaBehavior::Fail => (
                Level::Error,
                format!(
                    "Execution failed due to SLA '{}' violated: {reason}",
                    sla.id
                ),
                Some(StateType::Failed),
            ),
            SlaBehavior::Cancel => (
                Level::Warn,
                format!(
                    "Execution cancelled due to SLA '{}' violated: {reason}",
                    sla.id
                ),
                Some(StateType::Cancelled),
            ),
            SlaBehavior::None => (
                Level::Warn,
                format!("SLA '{}' violated: {reason}", sla.id),
                None,
            ),
        };
        self.log(None, level, message);
        end
    }

    /// The EXECUTION_ASSERTION SLA, checked when the tasks are done: the state the execution
    /// ends in (`state`, or the first violated SLA's behavior).
    pub(super) fn check_assertion_slas(&mut self, state: StateType) -> StateType {
        let slas: Vec<Sla> = self
            .index
            .flow
            .sla
            .iter()
            .filter(|s| s.sla_type == SlaType::ExecutionAssertion)
            .cloned()
            .collect();
        for sla in slas {
            let Some(assertion) = sla.assert.clone() else {
                continue;
            };
            let ctx = Value::Object(self.base().clone());
            let holds = match self.condition(&Value::String(assertion.clone()), &ctx) {
                Ok(b) => b,
                Err(e) => {
                    self.log(
                        None,
                        Level::Error,
                        format!("SLA '{}': cannot evaluate assert: {e}", sla.id),
                    );
                    false
                }
            };
            if holds {
                continue;
            }
            let reason = format!("assertion is false: {assertion}.");
            return self.sla_violated(&sla, &reason).unwrap_or(state);
        }
        state
    }

    fn add_sla_labels(&mut self, sla: &Sla) {
        let missing: Vec<Label> = sla
            .labels
            .iter()
            .filter(|l| {
                !self
                    .exec
                    .labels
                    .iter()
                    .any(|e| e.key == l.key && e.value == l.value)
            })
            .map(|l| Label::new(l.key.clone(), l.value.clone()))
            .collect();
        if missing.is_empty() {
            return;
        }
        self.exec.labels.extend(missing);
        self.touch();
    }

    /// End a running execution in `state` at once: open task runs are killed (workers and child
    /// executions told to stop), as Kestra's `markAs` plus its kill.
    fn end_for_sla(&mut self, state: StateType) {
        let open: Vec<String> = self
            .exec
            .task_run_list
            .iter()
            .filter(|r| !r.state.is_terminated())
            .map(|r| r.id.clone())
            .collect();
        for id in &open {
            let Some(run) = lookup::task_run(&self.exec, &self.runs, id) else {
                continue;
            };
            match self.index.node(&run.task_id).map(|n| &n.kind) {
                Some(NodeKind::Runnable) => self.kill_broadcast = true,
                Some(NodeKind::Flowable(f)) if matches!(**f, Flowable::Subflow(_)) => {
                    if let Some(child) = run
                        .outputs
                        .as_ref()
                        .and_then(|o| o.get("executionId"))
                        .and_then(Value::as_str)
                    {
                        self.kill_executions.push(child.to_string());
                    }
                }
                _ => {}
            }
        }
        let now = self.now;
        for id in open {
            if let Some(r) = lookup::task_run_mut(&mut self.exec, &self.runs, &id)
                && let Some(last) = r.attempts.last_mut()
                && !last.state.is_terminated()
            {
                let _ = last.state.transition_at(StateType::Killed, now);
            }
            self.set_run_state(&id, StateType::Killed);
        }
        self.set_exec_state(state);
    }
}

/// A duration as ISO-8601 with milliseconds (`PT1.234S`), as Java's `Duration.toString`.
fn iso_millis(d: chrono::Duration) -> String {
    let ms = d.num_milliseconds().max(0);
    let (h, rest) = (ms / 3_600_000, ms % 3_600_000);
    let (m, rest) = (rest / 60_000, rest % 60_000);
    let (s, frac) = (rest / 1000, rest % 1000);
    let mut out = String::from("PT");
    if h > 0 {
        out.push_str(&format!("{h}H"));
    }
    if m > 0 {
        out.push_str(&format!("{m}M"));
    }
    if s > 0 || frac > 0 || (h == 0 && m == 0) {
        if frac > 0 {
            let f = format!("{frac:03}");
            out.push_str(&format!("{s}.{}S", f.trim_end_matches('0')));
        } else {
            out.push_str(&format!("{s}S"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::iso_millis;

    #[test]
    fn durations_print_as_java_does() {
        assert_eq!(iso_millis(chrono::Duration::milliseconds(1234)), "PT1.234S");
        assert_eq!(iso_millis(chrono::Duration::milliseconds(1500)), "PT1.5S");
        assert_eq!(iso_millis(chrono::Duration::seconds(61)), "PT1M1S");
        assert_eq!(iso_millis(chrono::Duration::seconds(3600)), "PT1H");
        assert_eq!(iso_millis(chrono::Duration::zero()), "PT0S");
    }
}
