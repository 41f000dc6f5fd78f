//! ForEachItem: what the executor and the workers agree on - the three internal task runs, the
//! batch file names, the per-batch bookkeeping kept in the `_items` task run.
//!
//! A ForEachItem task `x` is a flowable whose children are three internal tasks, run in sequence
//! (Kestra's `ForEachItem.getTasks()`):
//! 1. `x_split` ([`SPLIT_TYPE`], on a worker): cuts the `items` file into batch files in the task
//!    run's storage directory, named [`batch_uri`]`(prefix, i, suffix)` for `i` in `0..n`.
//!    Outputs: `splits` (a file listing the batch URIs, one per line, as Kestra), `numberOfBatches`,
//!    `batchUriPrefix`, `batchUriSuffix`. The executor derives each batch URI from these, so it
//!    never reads storage.
//! 2. `x_items` ([`ITEMS_TYPE`], in the executor): creates one child execution per batch, through
//!    the Subflow machinery (`executor::subflow`), with `{{ taskrun.items }}` (the batch URI) and
//!    `{{ taskrun.iteration }}` (from 0, as Kestra) in the context its `inputs` render with. The child's id is
//!    derived from (execution, task run, iteration), so re-processing never creates it twice. Its
//!    trigger is `{id: x_items, type: ITEMS_TYPE}` with the parent's ids and `taskRunIteration`.
//!    Outputs: `numberOfBatches`, `iterations` (count per state: `CREATED` for batches whose child
//!    has not ended, then one key per final state) and, while it waits, [`BATCH_STATES`] (one
//!    letter per batch, see [`state_letter`]) and [`BATCH_OUTPUTS`] (each ended child's flow
//!    outputs by iteration), so that a duplicate result is recognised and nothing is counted twice.
//!    With `wait` it ends once every child has ended: FAILED if one failed, else KILLED if one was
//!    killed, else WARNING if one warned, else SUCCESS (with `transmitFailed: false`, SUCCESS).
//!    Without `wait` it ends SUCCESS once the children are requested.
//! 3. `x_merge` ([`MERGE_TYPE`], on a worker): writes the children's outputs, one ION struct per
//!    line in iteration order (as Kestra's `FileSerde`), to a file; output `subflowOutputs` (none when no
//!    child had outputs, as Kestra). The executor puts the outputs collected by `x_items` into the
//!    job's properties ([`MERGE_OUTPUTS_PROPERTY`]).
//!
//! Restart: a restarted `x_items` runs its failed batches again (`restartBehavior`): RETRY_FAILED
//! (default) restarts their child executions (`Outcome.restart_executions`), NEW_EXECUTION
//! creates new ones, whose ids are also derived from the execution's attempt number; a batch
//! whose child could not be created is created again either way.
//!
//! When all three end, `x` takes outputs `numberOfBatches`, `iterations` and `uri` (the merged file),
//! then runs its own `errors` (if it failed) and `finally`.

use serde_json::{Map, Value};

use crate::model::StateType;

/// Task type of `<id>_split` (runs on a worker).
pub const SPLIT_TYPE: &str = "io.kestra.plugin.core.flow.ForEachItem$ForEachItemSplit";
/// Task type of `<id>_items` (decided by the executor); also the trigger type of the children.
pub const ITEMS_TYPE: &str = "io.kestra.plugin.core.flow.ForEachItem$ForEachItemExecutable";
/// Task type of `<id>_merge` (runs on a worker).
pub const MERGE_TYPE: &str = "io.kestra.plugin.core.flow.ForEachItem$ForEachItemMergeOutputs";

/// Suffix of the split task id.
pub const SPLIT_SUFFIX: &str = "_split";
/// Suffix of the items task id.
pub const ITEMS_SUFFIX: &str = "_items";
/// Suffix of the merge task id.
pub const MERGE_SUFFIX: &str = "_merge";

/// `_items` output: one [`state_letter`] per batch, in iteration order.
pub const BATCH_STATES: &str = "batchStates";
/// `_items` output: the flow outputs of each ended child, by iteration (as a string key).
pub const BATCH_OUTPUTS: &str = "batchOutputs";
/// Property of the merge job holding the outputs to merge (`[{iteration, outputs}]`).
pub const MERGE_OUTPUTS_PROPERTY: &str = "subflowOutputs";

/// The URI of batch `iteration` (from 0) from the split task's outputs.
pub fn batch_uri(prefix: &str, iteration: u32, suffix: &str) -> String {
    format!("{prefix}{iteration}{suffix}")
}

/// The letter recording a batch's state in [`BATCH_STATES`]: `C` for a child not ended yet.
pub fn state_letter(state: StateType) -> char {
    match state {
        StateType::Success => 'S',
        StateType::Warning => 'W',
        StateType::Failed => 'F',
        StateType::Killed => 'K',
        StateType::Cancelled => 'X',
        _ => 'C',
    }
}

/// The letter of a batch whose child execution could not be created (counted FAILED).
pub const NOT_CREATED: char = 'N';

fn letter_state(c: char) -> StateType {
    match c {
        NOT_CREATED => StateType::Failed,
        'S' => StateType::Success,
        'W' => StateType::Warning,
        'F' => StateType::Failed,
        'K' => StateType::Killed,
        'X' => StateType::Cancelled,
        _ => StateType::Created,
    }
}

/// The state of each batch recorded in `states` (see [`BATCH_STATES`]).
pub fn batch_states(states: &str) -> impl Iterator<Item = StateType> + '_ {
    states.chars().map(letter_state)
}

/// The `iterations` output for the recorded batch states: count per state name (`CREATED` always
/// present, final states when they occur).
pub fn iteration_counts(states: &str) -> Map<String, Value> {
    let mut counts = Map::new();
    counts.insert(StateType::Created.as_str().into(), Value::from(0));
    for s in batch_states(states) {
        let entry = counts.entry(s.as_str()).or_insert(Value::from(0));
        *entry = Value::from(entry.as_u64().unwrap_or(0) + 1);
    }
    counts
}

/// The `_items` task run's final state once every child ended (Kestra's
/// `ExecutableUtils.manageIterations`): with `transmitFailed`, FAILED if a child failed, else KILLED
/// if one was killed, else WARNING if one warned, else SUCCESS; without it, SUCCESS.
pub fn final_state(states: &str, transmit_failed: bool) -> StateType {
    if !transmit_failed {
        return StateType::Success;
    }
    let has = |s: StateType| batch_states(states).any(|b| b == s);
    if has(StateType::Failed) || has(StateType::Cancelled) {
        StateType::Failed
    } else if has(StateType::Killed) {
        StateType::Killed
    } else if has(StateType::Warning) {
        StateType::Warning
    } else {
        StateType::Success
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_and_final_state_follow_the_recorded_letters() {
        let counts = iteration_counts("SSF");
        assert_eq!(counts["SUCCESS"], 2);
        assert_eq!(counts["FAILED"], 1);
        assert_eq!(counts["CREATED"], 0);
        assert_eq!(final_state("SSF", true), StateType::Failed);
        assert_eq!(final_state("SSF", false), StateType::Success);
        assert_eq!(final_state("SWS", true), StateType::Warning);
        assert_eq!(final_state("SKW", true), StateType::Killed);
        assert_eq!(final_state("", true), StateType::Success);
        assert_eq!(iteration_counts("CS")["CREATED"], 1);
        assert_eq!(iteration_counts("SN")["FAILED"], 1);
        assert_eq!(final_state("SN", true), StateType::Failed);
        assert_eq!(
            batch_uri("kestra:///a/batch-", 2, ".csv"),
            "kestra:///a/batch-2.csv"
        );
    }
}
