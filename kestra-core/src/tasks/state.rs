//! state.Set, state.Get and state.Delete: a JSON object per flow (or per namespace) in internal
//! storage, Kestra's `AbstractState`.
//!
//! # Where a state lives
//!
//! `kestra:///<namespace as path>[/<flow id>]/states/tasks-states[/<hash of taskrun.value>]/<name>`:
//! - the `<flow id>` segment is left out when `namespace: true` (one state shared by the namespace);
//! - the hash segment is there when `taskrunValue: true` (the default) and the task run has a value
//!   (inside a ForEach), so each iteration keeps its own state. The hash is Guava's
//!   `murmur3_128().hashString(value, UTF_8).toString()`, as Kestra's `Hashing.hashToString`, so
//!   the paths are the ones Kestra writes.
//!
//! The file is the state as a JSON object. `name` defaults to `default`.
//!
//! # Behaviour
//!
//! - Set: renders `data` (a map, keys and values rendered as strings; or an expression rendering to
//!   a map), merges it into the current state (Kestra's `MapUtils.merge`: maps merge recursively,
//!   lists append the new items they do not hold yet, a null keeps the old value, anything else
//!   replaces) and writes it back. Outputs `count` (keys of the merged state) and `key` (its URI).
//!   Not safe against concurrent executions of the same flow, as in Kestra.
//! - Get: outputs `data` (the state, `{}` when missing unless `errorOnMissing`) and `count`.
//! - Delete: outputs `deleted` (false when missing unless `errorOnMissing`).

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{Map, Value, json};

use crate::flow::property::Property;
use crate::flow::tasks::{StateKey, StateSet};
use crate::storage::{InternalStorageExt, StorageError, StoragePath};
use crate::worker::context::RunContext;
use crate::worker::runner::{RunnableTask, TaskError, TaskOutput};

/// The `state` segment Kestra's state tasks use under `states/`.
const TASKS_STATES: &str = "tasks-states";

/// state.Get (`delete: false`) or state.Delete (`delete: true`).
#[derive(Debug, Clone)]
pub struct StateKeyTask {
    /// Properties.
    pub props: StateKey,
    /// Delete instead of get.
    pub delete: bool,
}

/// Where a state is: its storage path and its rendered name.
struct StateLocation {
    path: StoragePath,
    name: String,
}

fn locate(
    ctx: &RunContext,
    name: &Option<String>,
    namespace: &Option<Property<bool>>,
    taskrun_value: &Option<Property<bool>>,
) -> Result<StateLocation, TaskError> {
    let name = match name {
        Some(n) => ctx.render(n)?,
        None => "default".to_string(),
    };
    if name.trim().is_empty() {
        return Err(TaskError::invalid("name", "must not be empty"));
    }
    let shared = ctx
        .render_opt_property("namespace", namespace)?
        .unwrap_or(false);
    let by_value = ctx
        .render_opt_property("taskrunValue", taskrun_value)?
        .unwrap_or(true);
    let identity = ctx.identity();
    let mut path = StoragePath::namespace(&identity.namespace)?;
    if !shared {
        path = path.join(&identity.flow_id)?;
    }
    path = path.join(&format!("states/{TASKS_STATES}"))?;
    if by_value && let Some(value) = &ctx.task_run().value {
        path = path.join(&hash_to_string(value))?;
    }
    let path = path
        .join(&name)
        .map_err(|e| TaskError::invalid("name", e.to_string()))?;
    Ok(StateLocation { path, name })
}

/// The current state, `None` when there is none.
async fn read_state(
    ctx: &RunContext,
    location: &StateLocation,
) -> Result<Option<Map<String, Value>>, TaskError> {
    let bytes = match ctx.storage().get_bytes(ctx.tenant(), &location.path).await {
        Ok(b) => b,
        Err(StorageError::NotFound { .. }) => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    match serde_json::from_slice::<Value>(&bytes) {
        Ok(Value::Object(map)) => Ok(Some(map)),
        _ => Err(TaskError::Failed(format!(
            "state '{}' ({}) is not a JSON object",
            location.name,
            location.path.to_uri()
        ))),
    }
}

/// Kestra's `MapUtils.merge(a, b)`: `b` wins, except that maps merge recursively, lists append the
/// items of `b` that `a` does not hold, and a null in `b` keeps `a`'s value.
pub fn merge_maps(mut a: Map<String, Value>, b: Map<String, Value>) -> Map<String, Value> {
    for (key, new) in b {
        let merged = match (a.remove(&key), new) {
            (Some(old), Value::Null) => old,
            (Some(Value::Object(old)), Value::Object(new)) => Value::Object(merge_maps(old, new)),
            (Some(Value::Array(mut old)), Value::Array(new)) => {
                for item in new {
                    if !old.contains(&item) {
                        old.push(item);
                    }
                }
                Value::Array(old)
            }
            (_, new) => new,
        };
        a.insert(key, merged);
    }
    a
}

fn render_data(ctx: &RunContext, data: &Option<Value>) -> Result<Map<String, Value>, TaskError> {
    let rendered = match data {
        None | Some(Value::Null) => return Ok(Map::new()),
        Some(Value::String(template)) => match ctx.render_typed(template)? {
            Value::String(s) => serde_json::from_str::<Value>(s.trim()).map_err(|_| {
                TaskError::invalid("data", format!("must render to a map, got '{s}'"))
            })?,
            other => other,
        },
        Some(other) => ctx.render_value(other, false)?,
    };
    match rendered {
        Value::Object(map) => Ok(map),
        other => Err(TaskError::invalid(
            "data",
            format!("must be a map, got {other}"),
        )),
    }
}

#[async_trait]
impl RunnableTask for StateSet {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let location = locate(ctx, &self.name, &self.namespace, &self.taskrun_value)?;
        let data = render_data(ctx, &self.data)?;
        let current = read_state(ctx, &location).await?.unwrap_or_default();
        let merged = merge_maps(current, data);
        let count = merged.len();
        let bytes = serde_json::to_vec(&Value::Object(merged))
            .map_err(|e| TaskError::invalid("data", e.to_string()))?;
        ctx.storage()
            .put_bytes(ctx.tenant(), &location.path, Bytes::from(bytes))
            .await?;
        let mut outputs = Map::new();
        outputs.insert("count".into(), json!(count));
        outputs.insert("key".into(), json!(location.path.to_uri()));
        Ok(TaskOutput::with_outputs(outputs))
    }
}

#[async_trait]
impl RunnableTask for StateKeyTask {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let p = &self.props;
        let location = locate(ctx, &p.name, &p.namespace, &p.taskrun_value)?;
        let error_on_missing = ctx
            .render_opt_property("errorOnMissing", &p.error_on_missing)?
            .unwrap_or(false);
        let missing = || {
            TaskError::Failed(format!(
                "state '{}' not found ({}) and `errorOnMissing` is true",
                location.name,
                location.path.to_uri()
            ))
        };
        if self.delete {
            let deleted = ctx.storage().delete(ctx.tenant(), &location.path).await?;
            if !deleted && error_on_missing {
                return Err(missing());
            }
            return Ok(TaskOutput::single("deleted", Value::Bool(deleted)));
        }
        let data = match read_state(ctx, &location).await? {
            Some(map) => map,
            None if error_on_missing => return Err(missing()),
            None => Map::new(),
        };
        let mut outputs = Map::new();
        outputs.insert("count".into(), json!(data.len()));
        outputs.insert("data".into(), Value::Object(data));
        Ok(TaskOutput::with_outputs(outputs))
    }
}

/// Kestra's `Hashing.hashToString`: Guava's `murmur3_128` (seed 0) of the UTF-8 bytes, as lowercase
/// hex of the 16 bytes (`h1` then `h2`, each little-endian).
pub fn hash_to_string(value: &str) -> String {
    let (h1, h2) = murmur3_x64_128(value.as_bytes());
    let mut out = String::with_capacity(32);
    for byte in h1.to_le_bytes().iter().chain(h2.to_le_bytes().iter()) {
        out.push_str(&format!("{byte:02x}"));
    }
    out
}

fn murmur3_x64_128(data: &[u8]) -> (u64, u64) {
    const C1: u64 = 0x87c3_7b91_1142_53d5;
    const C2: u64 = 0x4cf5_ad43_2745_937f;
    let mix_k1 = |k: u64| k.wrapping_mul(C1).rotate_left(31).wrapping_mul(C2);
    let mix_k2 = |k: u64| k.wrapping_mul(C2).rotate_left(33).wrapping_mul(C1);
    let (mut h1, mut h2) = (0u64, 0u64);
    let mut blocks = data.chunks_exact(16);
    for block in &mut blocks {
        let mut k1 = [0u8; 8];
        let mut k2 = [0u8; 8];
        k1.copy_from_slice(&block[..8]);
        k2.copy_from_slice(&block[8..]);
        h1 ^= mix_k1(u64::from_le_bytes(k1));
        h1 = h1
            .rotate_left(27)
            .wrapping_add(h2)
            .wrapping_mul(5)
            .wrapping_add(0x52dc_e729);
        h2 ^= mix_k2(u64::from_le_bytes(k2));
        h2 = h2
            .rotate_left(31)
            .wrapping_add(h1)
            .wrapping_mul(5)
            .wrapping_add(0x3849_5ab5);
    }
    let tail = blocks.remainder();
    let (mut k1, mut k2) = (0u64, 0u64);
    for (i, &b) in tail.iter().enumerate() {
        if i < 8 {
            k1 |= u64::from(b) << (8 * i);
        } else {
            k2 |= u64::from(b) << (8 * (i - 8));
        }
    }
    if tail.len() > 8 {
        h2 ^= mix_k2(k2);
    }
    if !tail.is_empty() {
        h1 ^= mix_k1(k1);
    }
    let len = data.len() as u64;
    h1 ^= len;
    h2 ^= len;
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    h1 = fmix64(h1);
    h2 = fmix64(h2);
    h1 = h1.wrapping_add(h2);
    h2 = h2.wrapping_add(h1);
    (h1, h2)
}

fn fmix64(mut k: u64) -> u64 {
    k ^= k >> 33;
    k = k.wrapping_mul(0xff51_afd7_ed55_8ccd);
    k ^= k >> 33;
    k = k.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    k ^ (k >> 33)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hash_matches_guava_murmur3_128() {
        // Guava's Murmur3Hash128Test vectors (seed 0), as (h1, h2).
        assert_eq!(
            murmur3_x64_128(b"hell"),
            (0x6299_4269_3e10_f867, 0x92db_0b82_baeb_5347)
        );
        assert_eq!(
            murmur3_x64_128(b"The quick brown fox jumps over the lazy dog"),
            (0xe34b_bc7b_bc07_1b6c, 0x7a43_3ca9_c49a_9347)
        );
        assert_eq!(murmur3_x64_128(b""), (0, 0));
        assert_eq!(
            hash_to_string("The quick brown fox jumps over the lazy dog"),
            "6c1b07bc7bbc4be347939ac4a93c437a"
        );
    }

    #[test]
    fn merge_follows_kestra_map_utils() {
        let a = json!({"keep": 1, "replace": "old", "nested": {"x": 1, "y": [1, 2]}, "nullish": "kept"});
        let b = json!({"replace": "new", "nested": {"y": [2, 3], "z": true}, "nullish": null, "added": 5});
        let (Value::Object(a), Value::Object(b)) = (a, b) else {
            unreachable!()
        };
        assert_eq!(
            Value::Object(merge_maps(a, b)),
            json!({"keep": 1, "replace": "new", "nested": {"x": 1, "y": [1, 2, 3], "z": true},
                   "nullish": "kept", "added": 5})
        );
    }
}
