//! Typed property structs of the core triggers and [`register_core_triggers`].
//!
//! Common trigger properties (`id`, `type`, `conditions`, `disabled`, `labels`, `stopAfter`,
//! `allowConcurrent`) live on [`Trigger`](crate::flow::model::Trigger); these structs hold the rest.

use indexmap::IndexMap;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::flow::duration::IsoDuration;
use crate::flow::property::Property;
use crate::flow::registry::{TaskRegistry, TriggerType};

/// Which missed schedules a Schedule trigger runs after downtime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum RecoverMissedSchedules {
    /// All of them (the default).
    #[default]
    All,
    /// Only the last one.
    Last,
    /// None.
    None,
}

/// `io.kestra.plugin.core.trigger.Schedule`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Schedule {
    /// Cron expression: 5 fields, 6 with `withSeconds`, or a nickname (`@hourly`).
    pub cron: String,
    /// The cron expression has a seconds field.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub with_seconds: bool,
    /// Time zone (the server's by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Inputs of the executions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<IndexMap<String, Value>>,
    /// Skip a schedule that is later than this.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub late_maximum_delay: Option<IsoDuration>,
    /// Missed schedules to run after downtime (ALL by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_missed_schedules: Option<RecoverMissedSchedules>,
    /// A backfill in progress (`{start, end, inputs, labels, ...}`), managed through the API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backfill: Option<Value>,
    /// Deprecated schedule-specific conditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub schedule_conditions: Option<Vec<Value>>,
    /// Polling interval of the scheduler (unused, accepted for compatibility).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Value>,
}
impl TriggerType for Schedule {
    fn properties_schema(generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(<Schedule as JsonSchema>::json_schema(generator))
    }
    const TYPE: &'static str = "io.kestra.plugin.core.trigger.Schedule";
    const ALIASES: &'static [&'static str] = &["io.kestra.core.models.triggers.types.Schedule"];
}

/// `io.kestra.plugin.core.trigger.ScheduleOnDates`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ScheduleOnDates {
    /// The dates (ISO-8601), or an expression rendering to them.
    pub dates: Property<Vec<String>>,
    /// Time zone of dates without an offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timezone: Option<String>,
    /// Inputs of the executions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<IndexMap<String, Value>>,
    /// Missed dates to run after downtime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recover_missed_schedules: Option<RecoverMissedSchedules>,
    /// Polling interval (accepted for compatibility).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Value>,
}
impl TriggerType for ScheduleOnDates {
    fn properties_schema(generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(<ScheduleOnDates as JsonSchema>::json_schema(generator))
    }
    const TYPE: &'static str = "io.kestra.plugin.core.trigger.ScheduleOnDates";
}

/// An upstream flow of Flow trigger preconditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UpstreamFlow {
    /// Namespace of the upstream flow.
    pub namespace: String,
    /// Id of the upstream flow (any flow of the namespace when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flow_id: Option<String>,
    /// States (names) that count.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<Vec<String>>,
    /// Labels the upstream execution must carry.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<Value>,
}

/// How the filters of a `where` group combine.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "UPPERCASE")]
pub enum FilterOperand {
    /// Every filter must hold (the default).
    #[default]
    And,
    /// One filter is enough.
    Or,
}

/// What a `where` filter looks at in the upstream execution (Kestra's
/// `AdvancedExecutionsCondition.Field`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FilterField {
    /// The upstream flow id.
    FlowId,
    /// The upstream namespace.
    Namespace,
    /// The upstream execution's state (`SUCCESS`, ...).
    State,
    /// `value` rendered as an expression over the upstream execution.
    Expression,
    /// A label, as `key:value`; `value` names the key (`key` or `key:value`).
    Label,
}

/// How a `where` filter compares (Kestra's `AdvancedExecutionsCondition.Type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum FilterType {
    /// Equal to `value`.
    EqualTo,
    /// Not equal to `value`.
    NotEqualTo,
    /// One of `values`.
    In,
    /// None of `values`.
    NotIn,
    /// Truthy.
    IsTrue,
    /// Falsy.
    IsFalse,
    /// Absent.
    IsNull,
    /// Present.
    IsNotNull,
    /// Starts with `value`.
    StartsWith,
    /// Ends with `value`.
    EndsWith,
    /// Matches the regular expression `value` as a whole.
    Regex,
    /// Contains `value`.
    Contains,
}

impl FilterType {
    /// Whether the type compares with a list (`values`) rather than one `value`.
    pub fn takes_values(self) -> bool {
        matches!(self, FilterType::In | FilterType::NotIn)
    }
}

/// One filter of a `where` group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PreconditionFilter {
    /// What is compared.
    pub field: FilterField,
    /// How.
    #[serde(rename = "type")]
    pub filter_type: FilterType,
    /// The value (every type but IN / NOT_IN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// The values (IN / NOT_IN).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub values: Option<Vec<String>>,
}

/// A filter group of Flow trigger preconditions: one condition, met by an execution that passes
/// its filters.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct WhereFilter {
    /// Id of the group (the condition's id).
    pub id: String,
    /// AND (default) or OR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operand: Option<FilterOperand>,
    /// The filters.
    pub filters: Vec<PreconditionFilter>,
}

/// Time windows of Flow trigger preconditions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum TimeWindowType {
    /// Fixed windows of `window` (PT1D by default).
    DurationWindow,
    /// A window of `window` ending now.
    SlidingWindow,
    /// Every day until `deadline`.
    DailyTimeDeadline,
    /// Every day between `startTime` and `endTime`.
    DailyTimeWindow,
}

/// The time window of Flow trigger preconditions.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct TimeWindow {
    /// Kind of window (DURATION_WINDOW by default).
    #[serde(default, rename = "type", skip_serializing_if = "Option::is_none")]
    pub window_type: Option<TimeWindowType>,
    /// Window length.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<IsoDuration>,
    /// Window offset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window_advance: Option<IsoDuration>,
    /// DAILY_TIME_DEADLINE: time of day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline: Option<String>,
    /// DAILY_TIME_WINDOW: start time of day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// DAILY_TIME_WINDOW: end time of day.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
}

/// Flow trigger preconditions: upstream flows that must all have run in a time window.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Preconditions {
    /// Id of the precondition set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Upstream flows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<Vec<UpstreamFlow>>,
    /// Filter groups.
    #[serde(default, rename = "where", skip_serializing_if = "Option::is_none")]
    pub where_filters: Option<Vec<WhereFilter>>,
    /// Time window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_window: Option<TimeWindow>,
    /// Reset the window after a successful trigger (true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reset_on_success: Option<bool>,
}

/// `io.kestra.plugin.core.trigger.Flow`: starts this flow when other executions change state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowTrigger {
    /// States (names) that fire (terminal states plus PAUSED by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub states: Option<Vec<String>>,
    /// Upstream preconditions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preconditions: Option<Preconditions>,
    /// Inputs of the executions (rendered with `trigger.outputs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<IndexMap<String, Value>>,
}
impl TriggerType for FlowTrigger {
    fn properties_schema(generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(<FlowTrigger as JsonSchema>::json_schema(generator))
    }
    const TYPE: &'static str = "io.kestra.plugin.core.trigger.Flow";
    const ALIASES: &'static [&'static str] = &["io.kestra.core.models.triggers.types.Flow"];
}

/// `io.kestra.plugin.core.trigger.Webhook`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Webhook {
    /// The secret key in the webhook URL.
    pub key: String,
    /// Answer when the execution ends instead of at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait: Option<bool>,
    /// With `wait`, answer with the flow outputs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub return_outputs: Option<bool>,
    /// Content type of the answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_content_type: Option<String>,
    /// Inputs of the executions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<IndexMap<String, Value>>,
}
impl TriggerType for Webhook {
    fn properties_schema(generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(<Webhook as JsonSchema>::json_schema(generator))
    }
    const TYPE: &'static str = "io.kestra.plugin.core.trigger.Webhook";
    const ALIASES: &'static [&'static str] = &["io.kestra.core.models.triggers.types.Webhook"];
}

/// `io.kestra.plugin.core.http.Trigger`: polls a URI every `interval` on a worker (evaluated by
/// [`crate::tasks::http`]); starts an execution with `trigger.{uri, code, headers, body}` when
/// `responseCondition` holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HttpTrigger {
    /// The URI.
    pub uri: String,
    /// HTTP method (GET).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Request body.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<Value>,
    /// Form data.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub form_data: Option<Value>,
    /// Content type.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub content_type: Option<String>,
    /// Request headers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub headers: Option<Property<IndexMap<String, Value>>>,
    /// Timeouts, auth, redirects, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Value>,
    /// TLS options.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssl_options: Option<Value>,
    /// Polling interval (PT60S).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<IsoDuration>,
    /// Expression on `response` (`statusCode`, `body`, `headers`) deciding whether to start an
    /// execution (`{{ response.statusCode < 400 }}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub response_condition: Option<String>,
    /// Encrypt the body in the trigger variables.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encrypt_body: Option<Property<bool>>,
    /// Fail when the response is empty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_on_empty_response: Option<Property<bool>>,
    /// Inputs of the executions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inputs: Option<IndexMap<String, Value>>,
}
impl TriggerType for HttpTrigger {
    fn properties_schema(generator: &mut schemars::SchemaGenerator) -> Option<schemars::Schema> {
        Some(<HttpTrigger as JsonSchema>::json_schema(generator))
    }
    const TYPE: &'static str = "io.kestra.plugin.core.http.Trigger";
    const ALIASES: &'static [&'static str] = &["io.kestra.plugin.fs.http.Trigger"];
    const DEFAULT_INTERVAL: Option<std::time::Duration> = Some(std::time::Duration::from_secs(60));
}

/// Registers every core trigger (and legacy alias) in `registry`.
pub fn register_core_triggers(registry: &mut TaskRegistry) {
    registry
        .register_trigger::<Schedule>()
        .register_trigger::<ScheduleOnDates>()
        .register_trigger::<FlowTrigger>()
        .register_trigger::<Webhook>()
        .register_trigger::<HttpTrigger>();
}
