//! The YAML flow language: the model ([`model`]), the task and trigger registry ([`registry`]),
//! parsing with positions ([`parse`]) and validation ([`validate`]).

pub mod duration;
pub mod model;
pub mod property;
pub mod yaml;

pub use duration::IsoDuration;
pub use model::*;
pub use property::Property;
pub mod registry;
pub mod schema;
pub mod tasks;
pub mod triggers;

pub use registry::{
    ChildSlot, TaskEntry, TaskKind, TaskRegistry, TaskType, TriggerEntry, TriggerType,
};
pub mod defaults;
pub mod parse;
pub mod preconditions;
pub mod validate;

pub use defaults::apply_plugin_defaults;
pub use parse::{FlowError, FlowErrorKind, FlowErrors, parse_flow, parse_flows};
