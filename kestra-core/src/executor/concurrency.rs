//! Flow concurrency limits (`concurrency {limit, behavior}`): the slot bookkeeping.
//!
//! `process` stays pure: when an execution of a limited flow would start (CREATED -> RUNNING) it
//! stays CREATED and reports [`SlotRequest::Acquire`]; when an execution that held a slot ends it
//! reports [`SlotRequest::Release`]. The runtime applies the request to the flow's
//! [`ConcurrencySlots`], stored in executor state (`load_state(STATE_KIND, state_key(..))`, locked by
//! the unit of work so that several executors serialise on it), inside the same unit of work, with
//! [`apply_slot_request`], and feeds back the resulting command ([`ExecutionCommand::Start`] or
//! [`ExecutionCommand::ConcurrencyLimited`]) to `process` before committing. Executions started
//! because a slot freed get a `Start` command on their own key.
//!
//! Running and paused executions hold a slot (a slot is released only on a terminal state); queued
//! executions start in FIFO order. A restarted execution takes a slot again: it stays RESTARTED
//! and asks for one like a new execution (then QUEUED, CANCELLED or FAILED per the behavior).

use serde::{Deserialize, Serialize};

use crate::executor::messages::ExecutionCommand;
use crate::flow::model::{Concurrency, ConcurrencyBehavior};

/// The executor-state kind holding slots.
pub const STATE_KIND: &str = "concurrency";

/// The executor-state key of a flow's slots: `<tenant>|<namespace>|<flow id>`.
pub fn state_key(tenant: &str, namespace: &str, flow_id: &str) -> String {
    format!("{tenant}|{namespace}|{flow_id}")
}

/// What an execution needs from its flow's slots after one `process` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SlotRequest {
    /// Nothing.
    #[default]
    None,
    /// It wants to start: take a slot, or apply the flow's behavior.
    Acquire,
    /// It held a slot and ended: free it (and start the oldest queued execution).
    Release,
    /// It was queued and ended without running (killed): leave the queue.
    LeaveQueue,
}

/// The slots of one flow: ids of the executions holding one, and the FIFO of queued ids.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConcurrencySlots {
    /// Executions holding a slot (running or paused).
    #[serde(default)]
    pub running: Vec<String>,
    /// Queued executions, oldest first.
    #[serde(default)]
    pub queued: Vec<String>,
}

/// The outcome of [`apply_slot_request`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SlotDecision {
    /// The command for the execution that made the request (processed in the same unit of work).
    pub follow_up: Option<ExecutionCommand>,
    /// `Start` commands for queued executions that got a slot.
    pub start: Vec<ExecutionCommand>,
    /// Whether the slots changed (to be saved).
    pub changed: bool,
}

/// Apply one execution's request to its flow's slots. Idempotent: acquiring twice, or releasing
/// an id that holds no slot, changes nothing.
pub fn apply_slot_request(
    slots: &mut ConcurrencySlots,
    request: SlotRequest,
    execution_id: &str,
    concurrency: &Concurrency,
) -> SlotDecision {
    let mut d = SlotDecision::default();
    let id = execution_id.to_string();
    match request {
        SlotRequest::None => {}
        SlotRequest::Acquire => {
            if slots.running.contains(&id) || (slots.running.len() as u32) < concurrency.limit {
                if !slots.running.contains(&id) {
                    slots.running.push(id.clone());
                    d.changed = true;
                }
                slots.queued.retain(|q| q != &id);
                d.follow_up = Some(ExecutionCommand::Start { execution_id: id });
            } else {
                if concurrency.behavior == ConcurrencyBehavior::Queue && !slots.queued.contains(&id)
                {
                    slots.queued.push(id.clone());
                    d.changed = true;
                }
                d.follow_up = Some(ExecutionCommand::ConcurrencyLimited {
                    execution_id: id,
                    behavior: concurrency.behavior,
                });
            }
        }
        SlotRequest::Release => {
            let before = slots.running.len();
            slots.running.retain(|r| r != &id);
            d.changed = before != slots.running.len();
            while (slots.running.len() as u32) < concurrency.limit && !slots.queued.is_empty() {
                let next = slots.queued.remove(0);
                slots.running.push(next.clone());
                d.changed = true;
                d.start.push(ExecutionCommand::Start { execution_id: next });
            }
        }
        SlotRequest::LeaveQueue => {
            let before = slots.queued.len();
            slots.queued.retain(|q| q != &id);
            d.changed = before != slots.queued.len();
        }
    }
    d
}
