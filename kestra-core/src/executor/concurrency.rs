//! Flow concurrency limits (`concurrency {limit, behavior}`): the slot bookkeeping, a keyed stage of
//! its own.
//!
//! `process` stays pure: when an execution of a limited flow would start (CREATED or RESTARTED ->
//! RUNNING) it stays where it is and reports [`SlotRequest::Acquire`]; when it ends, whatever the
//! path (success, failure, kill, refusal, CREATE_NEW_EXECUTION retry), it reports
//! [`SlotRequest::Release`]. The execution's unit of work does not touch the slots: it publishes a
//! [`SlotMessage`] on [`Topic::ConcurrencySlot`], keyed by the
//! flow ([`state_key`]). The executor group consumes that topic in its own units of work: the unit
//! that claimed a flow's messages loads the flow's [`ConcurrencySlots`] (executor state
//! [`STATE_KIND`], same key), applies each request in order with [`apply_slot_request`], saves the
//! slots and publishes the resulting commands ([`ExecutionCommand::Start`] or
//! [`ExecutionCommand::ConcurrencyLimited`]) keyed by execution. One flow's slots therefore have
//! one writer at a time (the owner of the flow's key), on JDBC as on Kafka.
//!
//! Running and paused executions hold a slot (a slot is released only on a terminal state); queued
//! executions start in FIFO order. A restarted execution takes a slot again: it stays RESTARTED
//! and asks for one like a new execution (then QUEUED, CANCELLED or FAILED per the behavior).
//!
//! A release forgets the execution wherever it is - holding a slot, queued, or granted a slot whose
//! `Start` it will never process because it ended meanwhile (killed while waiting) - and gives the
//! free slots to the oldest queued executions. A flow's requests are handled in publish order and
//! an execution's release is always published after its acquire, so no slot leaks.

use serde::{Deserialize, Serialize};

use crate::flow::model::{Concurrency, ConcurrencyBehavior};
use crate::messages::ExecutionCommand;
use crate::queue::{Envelope, QueueError, Topic};

/// The executor-state kind holding slots.
pub const STATE_KIND: &str = "concurrency";

/// The executor-state key of a flow's slots: `<tenant>|<namespace>|<flow id>`.
pub fn state_key(tenant: &str, namespace: &str, flow_id: &str) -> String {
    format!("{tenant}|{namespace}|{flow_id}")
}

/// What an execution needs from its flow's slots after one `process` call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum SlotRequest {
    /// Nothing.
    #[default]
    None,
    /// It wants to start: take a slot, or apply the flow's behavior.
    Acquire,
    /// It ended: free its slot or leave the queue, whichever it holds (and start the oldest queued
    /// executions).
    Release,
}

/// A slot request of one execution, on the flow's keyed stage (topic
/// [`Topic::ConcurrencySlot`], key = [`state_key`] of the flow).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SlotMessage {
    /// Tenant of the flow.
    pub tenant_id: String,
    /// Namespace of the flow.
    pub namespace: String,
    /// Flow id.
    pub flow_id: String,
    /// The execution asking.
    pub execution_id: String,
    /// What it asks.
    pub request: SlotRequest,
    /// The flow's limit, as the revision the execution runs declares it.
    pub concurrency: Concurrency,
}

impl SlotMessage {
    /// The flow's key: the message key and the executor-state key of its slots.
    pub fn key(&self) -> String {
        state_key(&self.tenant_id, &self.namespace, &self.flow_id)
    }

    /// As a queue message keyed by the flow.
    pub fn envelope(&self) -> Result<Envelope, QueueError> {
        Envelope::json(Topic::ConcurrencySlot, self.key(), self)
    }
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

/// Apply one execution's request to its flow's slots. Pure and idempotent: acquiring twice, or
/// releasing an id that holds nothing, changes nothing.
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
            let before = (slots.running.len(), slots.queued.len());
            slots.running.retain(|r| r != &id);
            slots.queued.retain(|q| q != &id);
            d.changed = before != (slots.running.len(), slots.queued.len());
            while (slots.running.len() as u32) < concurrency.limit && !slots.queued.is_empty() {
                let next = slots.queued.remove(0);
                slots.running.push(next.clone());
                d.changed = true;
                d.start.push(ExecutionCommand::Start { execution_id: next });
            }
        }
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit_one() -> Concurrency {
        Concurrency {
            limit: 1,
            behavior: ConcurrencyBehavior::Queue,
        }
    }

    fn start(id: &str) -> ExecutionCommand {
        ExecutionCommand::Start {
            execution_id: id.into(),
        }
    }

    #[test]
    fn a_release_leaves_the_queue_and_frees_a_slot_granted_too_late() {
        let c = limit_one();
        let mut slots = ConcurrencySlots::default();
        assert_eq!(
            apply_slot_request(&mut slots, SlotRequest::Acquire, "a", &c).follow_up,
            Some(start("a"))
        );
        for id in ["b", "c"] {
            let d = apply_slot_request(&mut slots, SlotRequest::Acquire, id, &c);
            assert!(matches!(
                d.follow_up,
                Some(ExecutionCommand::ConcurrencyLimited { .. })
            ));
        }
        // A queued execution killed: it leaves the queue.
        let d = apply_slot_request(&mut slots, SlotRequest::Release, "c", &c);
        assert!(d.changed && d.start.is_empty());
        assert_eq!(slots.queued, vec!["b".to_string()]);
        // `a` ends: `b` gets the slot ...
        let d = apply_slot_request(&mut slots, SlotRequest::Release, "a", &c);
        assert_eq!(d.start, vec![start("b")]);
        assert_eq!(slots.running, vec!["b".to_string()]);
        // ... but `b` was killed before its `Start` arrived: its release frees the slot.
        let d = apply_slot_request(&mut slots, SlotRequest::Release, "b", &c);
        assert!(d.changed);
        assert_eq!(slots, ConcurrencySlots::default());
        // Releasing again changes nothing.
        assert!(!apply_slot_request(&mut slots, SlotRequest::Release, "b", &c).changed);
    }

    #[test]
    fn a_slot_message_is_keyed_by_its_flow() -> Result<(), QueueError> {
        let m = SlotMessage {
            tenant_id: "main".into(),
            namespace: "ns".into(),
            flow_id: "f".into(),
            execution_id: "e1".into(),
            request: SlotRequest::Acquire,
            concurrency: limit_one(),
        };
        let e = m.envelope()?;
        assert_eq!(e.topic, Topic::ConcurrencySlot);
        assert_eq!(e.key, "main|ns|f");
        assert_eq!(e.decode::<SlotMessage>()?, m);
        Ok(())
    }
}
