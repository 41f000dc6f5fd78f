//! Position-aware YAML loading: turns a YAML document into a [`serde_json::Value`] plus a map from
//! every node's path (`tasks[2].cases.FIRST[0].type`) to its 1-based line and column.
//!
//! The tree is read once with `serde-saphyr` (strict booleans, leading-zero numbers kept as strings,
//! duplicate keys rejected) through its [`Spanned`] wrapper; everything after that works on JSON.

use std::collections::HashMap;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::{Map, Number, Value};
use serde_saphyr::Spanned;

/// A 1-based line and column in the YAML source.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Position {
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
}

impl Position {
    /// Builds a position from serde-saphyr's location (0 means unknown and becomes 1).
    fn from_location(location: &serde_saphyr::Location) -> Self {
        Position {
            line: usize::try_from(location.line())
                .unwrap_or(usize::MAX)
                .max(1),
            column: usize::try_from(location.column())
                .unwrap_or(usize::MAX)
                .max(1),
        }
    }
}

/// Positions of the nodes of one document, keyed by path (see [`join_key`] and [`join_index`]).
#[derive(Debug, Clone, Default)]
pub struct Positions {
    values: HashMap<String, Position>,
    keys: HashMap<String, Position>,
}

impl Positions {
    /// Position of the value at `path`, or of its nearest ancestor that has one.
    pub fn value(&self, path: &str) -> Position {
        let mut current = path;
        loop {
            if let Some(position) = self.values.get(current) {
                return *position;
            }
            match parent_path(current) {
                Some(parent) => current = parent,
                None => return Position { line: 1, column: 1 },
            }
        }
    }

    /// Position of the key of the mapping entry at `path` (falls back to [`Positions::value`]).
    pub fn key(&self, path: &str) -> Position {
        self.keys
            .get(path)
            .copied()
            .unwrap_or_else(|| self.value(path))
    }
}

/// The path of a mapping entry `key` under `parent` (`""` is the document root).
pub fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

/// The path of the sequence element `index` under `parent`.
pub fn join_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

/// The path of the parent node, `None` for the root.
pub fn parent_path(path: &str) -> Option<&str> {
    if path.is_empty() {
        return None;
    }
    if path.ends_with(']')
        && let Some(open) = path.rfind('[')
    {
        return Some(&path[..open]);
    }
    match path.rfind(['.', ']']) {
        Some(i) if path.as_bytes().get(i) == Some(&b']') => Some(&path[..=i]),
        Some(i) => Some(&path[..i]),
        None => Some(""),
    }
}

/// A YAML syntax error (or a duplicate key) with its position.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlError {
    /// Where the problem is.
    pub position: Position,
    /// What the problem is, without the position.
    pub message: String,
    /// Whether this is a duplicate mapping key (rather than a syntax error).
    pub duplicate_key: bool,
}

/// One loaded YAML document.
#[derive(Debug, Clone)]
pub struct Document {
    /// The document as JSON (mapping keys are strings; anchors and merges resolved).
    pub value: Value,
    /// Where each node of `value` came from.
    pub positions: Positions,
}

/// A node of the raw tree, as read through serde-saphyr.
enum Node {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    String(String),
    Seq(Vec<Spanned<Node>>),
    Map(Vec<(Spanned<Key>, Spanned<Node>)>),
}

/// A mapping key, turned into a string (Kestra's keys are strings; `1: x` gives key `"1"`).
struct Key(String);

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let node = Node::deserialize(deserializer)?;
        let text = match node {
            Node::Null => "null".to_string(),
            Node::Bool(b) => b.to_string(),
            Node::Int(i) => i.to_string(),
            Node::UInt(u) => u.to_string(),
            Node::Float(f) => f.to_string(),
            Node::String(s) => s,
            Node::Seq(_) | Node::Map(_) => {
                return Err(de::Error::custom("mapping keys must be scalars"));
            }
        };
        Ok(Key(text))
    }
}

struct NodeVisitor;

impl<'de> Visitor<'de> for NodeVisitor {
    type Value = Node;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any YAML node")
    }
    fn visit_unit<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_none<E: de::Error>(self) -> Result<Node, E> {
        Ok(Node::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Node, D::Error> {
        Node::deserialize(d)
    }
    fn visit_bool<E: de::Error>(self, v: bool) -> Result<Node, E> {
        Ok(Node::Bool(v))
    }
    fn visit_i64<E: de::Error>(self, v: i64) -> Result<Node, E> {
        Ok(Node::Int(v))
    }
    fn visit_u64<E: de::Error>(self, v: u64) -> Result<Node, E> {
        Ok(Node::UInt(v))
    }
    fn visit_i128<E: de::Error>(self, v: i128) -> Result<Node, E> {
        Ok(Node::String(v.to_string()))
    }
    fn visit_u128<E: de::Error>(self, v: u128) -> Result<Node, E> {
        Ok(Node::String(v.to_string()))
    }
    fn visit_f64<E: de::Error>(self, v: f64) -> Result<Node, E> {
        Ok(Node::Float(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Node, E> {
        Ok(Node::String(v.to_string()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Node, E> {
        Ok(Node::String(v))
    }
    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<Node, E> {
        Ok(Node::String(String::from_utf8_lossy(v).into_owned()))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Node, A::Error> {
        let mut items = Vec::new();
        while let Some(item) = seq.next_element::<Spanned<Node>>()? {
            items.push(item);
        }
        Ok(Node::Seq(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Node, A::Error> {
        let mut entries = Vec::new();
        while let Some(key) = map.next_key::<Spanned<Key>>()? {
            let value = map.next_value::<Spanned<Node>>()?;
            entries.push((key, value));
        }
        Ok(Node::Map(entries))
    }
}

impl<'de> Deserialize<'de> for Node {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(NodeVisitor)
    }
}

/// Maximum nesting of YAML collections (block or flow): deeper documents are rejected rather than
/// risking the stack.
pub const MAX_DEPTH: usize = 64;

fn options() -> serde_saphyr::Options {
    let mut budget = serde_saphyr::Budget::default();
    budget.max_depth = MAX_DEPTH;
    budget.flow_nesting_limit = MAX_DEPTH;
    serde_saphyr::options! {
        budget: Some(budget),
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        with_snippet: false,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    }
}

fn convert(node: Spanned<Node>, path: &str, positions: &mut Positions) -> Value {
    positions
        .values
        .insert(path.to_string(), Position::from_location(&node.referenced));
    match node.value {
        Node::Null => Value::Null,
        Node::Bool(b) => Value::Bool(b),
        Node::Int(i) => Value::Number(i.into()),
        Node::UInt(u) => Value::Number(u.into()),
        Node::Float(f) => {
            Number::from_f64(f).map_or_else(|| Value::String(f.to_string()), Value::Number)
        }
        Node::String(s) => Value::String(s),
        Node::Seq(items) => Value::Array(
            items
                .into_iter()
                .enumerate()
                .map(|(i, item)| convert(item, &join_index(path, i), positions))
                .collect(),
        ),
        Node::Map(entries) => {
            let mut map = Map::new();
            for (key, value) in entries {
                let child = join_key(path, &key.value.0);
                positions
                    .keys
                    .insert(child.clone(), Position::from_location(&key.referenced));
                let converted = convert(value, &child, positions);
                map.insert(key.value.0, converted);
            }
            Value::Object(map)
        }
    }
}

fn to_yaml_error(error: &serde_saphyr::Error) -> YamlError {
    let position = error
        .location()
        .map(|l| Position::from_location(&l))
        .unwrap_or(Position { line: 1, column: 1 });
    let rendered = error.to_string();
    let message = strip_location(&rendered);
    let duplicate_key = message.to_ascii_lowercase().contains("duplicate");
    YamlError {
        position,
        message,
        duplicate_key,
    }
}

/// serde-saphyr appends the location (and sometimes a hint) to its messages; keep only the text.
fn strip_location(rendered: &str) -> String {
    let mut text = rendered.lines().next().unwrap_or(rendered).trim();
    if let Some(i) = text.find(" at line ") {
        text = &text[..i];
    }
    if let Some(rest) = text.strip_prefix("duplicate mapping key: ") {
        let key = rest
            .split(", set DuplicateKeyPolicy")
            .next()
            .unwrap_or(rest)
            .trim();
        return format!("duplicate key '{key}'");
    }
    text.to_string()
}

/// Loads a single YAML document (an empty source gives `null`).
pub fn load(source: &str) -> Result<Document, YamlError> {
    let node: Spanned<Node> =
        serde_saphyr::from_str_with_options(source, options()).map_err(|e| to_yaml_error(&e))?;
    let mut positions = Positions::default();
    let value = convert(node, "", &mut positions);
    Ok(Document { value, positions })
}

/// Loads every document of a multi-document (`---`) YAML stream.
pub fn load_all(source: &str) -> Result<Vec<Document>, YamlError> {
    let nodes: Vec<Spanned<Node>> = serde_saphyr::from_str_multiple_with_options(source, options())
        .map_err(|e| to_yaml_error(&e))?;
    Ok(nodes
        .into_iter()
        .map(|node| {
            let mut positions = Positions::default();
            let value = convert(node, "", &mut positions);
            Document { value, positions }
        })
        .collect())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn positions_of_nested_nodes() {
        let doc = load("id: x\ntasks:\n  - id: a\n    type: t\n    n: 0755\n    b: yes\n").unwrap();
        assert_eq!(doc.value["tasks"][0]["n"], Value::String("0755".into()));
        assert_eq!(doc.value["tasks"][0]["b"], Value::String("yes".into()));
        assert_eq!(
            doc.positions.value("tasks[0].type"),
            Position {
                line: 4,
                column: 11
            }
        );
        assert_eq!(
            doc.positions.key("tasks[0].type"),
            Position { line: 4, column: 5 }
        );
        assert_eq!(
            doc.positions.value("tasks[0]"),
            Position { line: 3, column: 5 }
        );
        assert_eq!(
            doc.positions.value("tasks[0].missing"),
            Position { line: 3, column: 5 }
        );
    }

    #[test]
    fn duplicate_keys_are_rejected() {
        let err = load("id: x\nid: y\n").unwrap_err();
        assert!(err.duplicate_key);
        assert_eq!(err.message, "duplicate key 'id'");
        assert_eq!(err.position.line, 2);
    }

    #[test]
    fn syntax_error_has_position() {
        let err = load("id: x\ntasks: [a, b\n").unwrap_err();
        assert!(!err.duplicate_key);
        assert_eq!(err.message, "unclosed bracket '['");
        assert_eq!(err.position, Position { line: 2, column: 8 });
    }

    #[test]
    fn parent_paths() {
        assert_eq!(
            parent_path("tasks[2].cases.A[0].type"),
            Some("tasks[2].cases.A[0]")
        );
        assert_eq!(parent_path("tasks[2].cases.A[0]"), Some("tasks[2].cases.A"));
        assert_eq!(parent_path("tasks[2]"), Some("tasks"));
        assert_eq!(parent_path("tasks"), Some(""));
        assert_eq!(parent_path(""), None);
    }
}
