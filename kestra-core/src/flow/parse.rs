//! Parsing flows: [`parse_flow`] and [`parse_flows`] turn YAML into a [`Flow`] or report every
//! problem of the document as a [`FlowError`] with its path and position.

use std::fmt;

use crate::flow::model::Flow;
use crate::flow::registry::TaskRegistry;
use crate::flow::validate::Validator;
use crate::flow::yaml::{self, Document, YamlError};

/// What kind of problem a [`FlowError`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FlowErrorKind {
    /// The YAML itself is malformed.
    Syntax,
    /// A mapping has the same key twice.
    DuplicateKey,
    /// The document (or a part that must be one) is not a mapping.
    NotAMapping,
    /// A task, trigger or input type is not known.
    UnknownType,
    /// A property is not accepted here.
    UnknownProperty,
    /// A required property is missing.
    MissingProperty,
    /// A property has the wrong type or value.
    InvalidValue,
    /// An ISO-8601 duration is malformed.
    InvalidDuration,
    /// An id or namespace is malformed or reserved.
    InvalidId,
    /// Two tasks, triggers or inputs share an id.
    DuplicateId,
    /// A cron expression is malformed or never fires.
    InvalidCron,
    /// A time zone is unknown.
    InvalidTimezone,
    /// A Subflow task or Flow trigger refers to its own flow.
    SelfReference,
}

/// One problem of a flow document.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FlowError {
    /// Where in the document, e.g. `tasks[2].cases.FIRST[0].type` (empty for the whole document).
    pub path: String,
    /// 1-based line.
    pub line: usize,
    /// 1-based column.
    pub column: usize,
    /// What is wrong.
    pub message: String,
    /// The category of the problem.
    pub kind: FlowErrorKind,
}

impl fmt::Display for FlowError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}:{}: {}", self.line, self.column, self.message)
        } else {
            write!(
                f,
                "{}:{}: {}: {}",
                self.line, self.column, self.path, self.message
            )
        }
    }
}

/// Every problem of one flow document, sorted by position.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct FlowErrors {
    /// The problems, sorted by line, column, path and message.
    pub errors: Vec<FlowError>,
}

impl FlowErrors {
    /// Sorts and deduplicates `errors`.
    pub fn new(mut errors: Vec<FlowError>) -> Self {
        errors.sort_by(|a, b| {
            (a.line, a.column, &a.path, &a.message).cmp(&(b.line, b.column, &b.path, &b.message))
        });
        errors.dedup();
        FlowErrors { errors }
    }

    fn from_yaml(error: YamlError) -> Self {
        FlowErrors::new(vec![FlowError {
            path: String::new(),
            line: error.position.line,
            column: error.position.column,
            message: error.message,
            kind: if error.duplicate_key {
                FlowErrorKind::DuplicateKey
            } else {
                FlowErrorKind::Syntax
            },
        }])
    }
}

impl fmt::Display for FlowErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

fn parse_document(document: &Document, registry: &TaskRegistry) -> Result<Flow, FlowErrors> {
    Validator::new(registry, &document.positions).validate_flow(&document.value)
}

/// Parses and validates one flow. On failure, returns every problem found (syntax errors stop the
/// parse; all other problems are collected).
pub fn parse_flow(source: &str, registry: &TaskRegistry) -> Result<Flow, FlowErrors> {
    let document = yaml::load(source).map_err(FlowErrors::from_yaml)?;
    parse_document(&document, registry)
}

/// Parses and validates every document of a multi-document (`---`) stream. A YAML syntax error
/// makes the whole stream unreadable: the result is then a single `Err`.
pub fn parse_flows(source: &str, registry: &TaskRegistry) -> Vec<Result<Flow, FlowErrors>> {
    match yaml::load_all(source) {
        Ok(documents) => documents
            .iter()
            .map(|d| parse_document(d, registry))
            .collect(),
        Err(error) => vec![Err(FlowErrors::from_yaml(error))],
    }
}
