//! Plugin defaults (`pluginDefaults`, formerly `taskDefaults`): merging default property values into
//! the tasks and triggers whose type matches.
//!
//! A default matches a task or trigger whose type (as written, or its canonical name) equals the
//! default's `type` or starts with it followed by a dot (`io.kestra.plugin.core.log` matches
//! `io.kestra.plugin.core.log.Log`); legacy and canonical names of one type match each other.
//! Values written in the task win, unless the default is `forced`; maps merge deeply; lists and
//! scalars are replaced as a whole. When several non-forced defaults set
//! the same property, the first one listed wins; with several forced ones, the last one listed wins.

use serde_json::{Map, Value};

use crate::flow::model::{Flow, PluginDefault};
use crate::flow::registry::{TaskRegistry, child_values};

/// Whether a default's `type` applies to a type name.
pub fn type_matches(default_type: &str, type_name: &str) -> bool {
    type_name == default_type
        || (type_name.starts_with(default_type)
            && type_name.as_bytes().get(default_type.len()) == Some(&b'.'))
}

/// Deep-merges `defaults` into `target`: keys missing from `target` are added; when both are maps
/// they are merged recursively; otherwise `target` keeps its value unless `force`.
fn merge_into(target: &mut Map<String, Value>, defaults: &Map<String, Value>, force: bool) {
    for (key, default) in defaults {
        match target.get_mut(key) {
            None => {
                target.insert(key.clone(), default.clone());
            }
            Some(Value::Object(existing)) if default.is_object() => {
                if let Value::Object(default_map) = default {
                    merge_into(existing, default_map, force);
                }
            }
            Some(existing) => {
                if force {
                    *existing = default.clone();
                }
            }
        }
    }
}

/// Merges the matching defaults into one task or trigger map (not into its children). A default
/// written with a legacy type name (`io.kestra.core.tasks.log.Log`) also matches the tasks written
/// with the canonical one, and the other way round.
pub(crate) fn merge_defaults(
    map: &mut Map<String, Value>,
    canonical: Option<&str>,
    defaults: &[PluginDefault],
    registry: &TaskRegistry,
) {
    let Some(type_name) = map.get("type").and_then(Value::as_str).map(str::to_string) else {
        return;
    };
    let matches = |d: &PluginDefault| {
        let default_canonical = registry.canonical(&d.plugin_type).or_else(|| {
            registry
                .resolve_trigger(&d.plugin_type)
                .map(|e| e.type_name)
        });
        type_matches(&d.plugin_type, &type_name)
            || canonical.is_some_and(|c| type_matches(&d.plugin_type, c))
            || (default_canonical.is_some() && default_canonical == canonical)
    };
    let as_map = |d: &PluginDefault| -> Map<String, Value> {
        d.values
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    };
    for default in defaults.iter().filter(|d| !d.forced && matches(d)) {
        merge_into(map, &as_map(default), false);
    }
    for default in defaults.iter().filter(|d| d.forced && matches(d)) {
        merge_into(map, &as_map(default), true);
    }
}

fn apply_to_task(value: &mut Value, registry: &TaskRegistry, defaults: &[PluginDefault]) {
    let Value::Object(map) = value else { return };
    let entry = map
        .get("type")
        .and_then(Value::as_str)
        .and_then(|t| registry.resolve(t))
        .cloned();
    merge_defaults(map, entry.as_ref().map(|e| e.type_name), defaults, registry);
    let Some(entry) = entry else { return };
    let paths: Vec<String> = child_values(map, entry.children)
        .into_iter()
        .map(|(_, _, path, _)| path)
        .collect();
    for path in paths {
        if let Some(child) = pointer_mut(map, &path) {
            apply_to_task(child, registry, defaults);
        }
    }
}

/// Finds the value at a relative path (`tasks[0]`, `cases.A[1]`, `tasks[2].task`) inside a map.
pub(crate) fn pointer_mut<'a>(
    map: &'a mut Map<String, Value>,
    path: &str,
) -> Option<&'a mut Value> {
    let mut pointer = String::new();
    for part in path.split('.') {
        let (name, indexes) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        pointer.push('/');
        pointer.push_str(&name.replace('~', "~0").replace('/', "~1"));
        for index in indexes.split(['[', ']']).filter(|s| !s.is_empty()) {
            pointer.push('/');
            pointer.push_str(index);
        }
    }
    map_pointer_mut(map, &pointer)
}

fn map_pointer_mut<'a>(map: &'a mut Map<String, Value>, pointer: &str) -> Option<&'a mut Value> {
    let mut parts = pointer.trim_start_matches('/').splitn(2, '/');
    let first = parts.next()?.replace("~1", "/").replace("~0", "~");
    let value = map.get_mut(&first)?;
    match parts.next() {
        Some(rest) => value.pointer_mut(&format!("/{rest}")),
        None => Some(value),
    }
}

/// Returns a copy of `flow` with its plugin defaults merged into every task (nested ones included)
/// and trigger. The flow's own `pluginDefaults` list is kept.
pub fn apply_plugin_defaults(
    flow: &Flow,
    registry: &TaskRegistry,
) -> Result<Flow, serde_json::Error> {
    if flow.plugin_defaults.is_empty() {
        return Ok(flow.clone());
    }
    let mut value = serde_json::to_value(flow)?;
    let defaults = &flow.plugin_defaults;
    if let Value::Object(root) = &mut value {
        for list in ["tasks", "errors", "finally", "afterExecution"] {
            if let Some(Value::Array(tasks)) = root.get_mut(list) {
                for task in tasks {
                    apply_to_task(task, registry, defaults);
                }
            }
        }
        if let Some(Value::Array(triggers)) = root.get_mut("triggers") {
            for trigger in triggers {
                if let Value::Object(map) = trigger {
                    let canonical = map
                        .get("type")
                        .and_then(Value::as_str)
                        .and_then(|t| registry.resolve_trigger(t))
                        .map(|e| e.type_name);
                    merge_defaults(map, canonical, defaults, registry);
                }
            }
        }
    }
    serde_json::from_value(value)
}
