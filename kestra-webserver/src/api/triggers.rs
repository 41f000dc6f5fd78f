//! Trigger routes: search the trigger states (with each trigger's definition), enable/disable,
//! unlock, backfill (start, pause, resume, delete).
//!
//! Reads come from the trigger repository (the API's view). Every write goes through the queue
//! backend's [`TriggerUnit`](kestra_core::queue::TriggerUnit), under the trigger's claim, exactly as
//! the schedulers and `kestra trigger unlock` write: a scheduler never overwrites the change, and it
//! works the same on JDBC and on Kafka. While a scheduler holds the trigger (a step evaluates it), the
//! write is tried again for up to [`CLAIM_WAIT`], then refused with 409.
//!
//! Shapes are Kestra's: a trigger is `{"namespace", "flowId", "triggerId", "date",
//! "nextExecutionDate", "executionId", "evaluateRunningDate", "workerId", "disabled", "backfill",
//! "updatedDate", "locked"}`; a search result is `{"abstractTrigger": <definition>,
//! "triggerContext": <trigger>}`.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, RawQuery, State};
use chrono::{DateTime, Utc};
use kestra_core::model::{DEFAULT_TENANT, Label, TriggerState, trigger_uid};
use kestra_core::repository::TriggerQuery;
use serde::Deserialize;
use serde_json::{Map, Value, json};

use super::Params;
use crate::{ApiError, AppState};

/// How long a write waits for a scheduler that holds the trigger.
pub const CLAIM_WAIT: Duration = Duration::from_secs(10);
const CLAIM_PAUSE: Duration = Duration::from_millis(100);

/// A trigger state as the API answers it: the state plus `locked` (an execution or an evaluation
/// holds it).
pub(crate) fn trigger_json(state: &TriggerState) -> Value {
    let mut value = serde_json::to_value(state).unwrap_or_else(|_| json!({}));
    value["locked"] = json!(state.execution_id.is_some() || state.evaluate_running_date.is_some());
    value
}

/// The definition of a trigger in the current revision of its flow, with the flow's revision.
pub(crate) async fn definition(
    state: &AppState,
    namespace: &str,
    flow_id: &str,
    trigger_id: &str,
) -> Result<Option<(Value, i32)>, ApiError> {
    let Some(record) = state
        .engine
        .repositories()
        .flows
        .find(DEFAULT_TENANT, namespace, flow_id, None)
        .await?
    else {
        return Ok(None);
    };
    Ok(record
        .flow
        .get("triggers")
        .and_then(Value::as_array)
        .and_then(|list| {
            list.iter()
                .find(|t| t.get("id").and_then(Value::as_str) == Some(trigger_id))
        })
        .map(|t| (t.clone(), record.revision)))
}

fn not_found(namespace: &str, flow_id: &str, trigger_id: &str) -> ApiError {
    ApiError::not_found(format!(
        "no trigger '{trigger_id}' in flow {namespace}.{flow_id}"
    ))
}

/// What a change of a trigger state decided.
enum Change {
    /// Save the modified state.
    Save,
    /// Nothing to write.
    Unchanged,
}

/// Apply `change` to a trigger's state under its claim, and commit. When the trigger has no state
/// yet and `create` is set, a fresh state is created (the trigger must be defined in its flow);
/// otherwise a missing state is a 404.
async fn modify<F>(
    state: &AppState,
    namespace: &str,
    flow_id: &str,
    trigger_id: &str,
    create: bool,
    mut change: F,
) -> Result<TriggerState, ApiError>
where
    F: FnMut(&mut TriggerState) -> Result<Change, ApiError>,
{
    let uid = trigger_uid(DEFAULT_TENANT, namespace, flow_id, trigger_id);
    let queue_error = |e: kestra_core::queue::QueueError| {
        ApiError::internal(format!("cannot write trigger {uid}: {e}"))
    };
    let started = Instant::now();
    loop {
        let mut unit = state
            .engine
            .queue()
            .begin_triggers()
            .await
            .map_err(queue_error)?;
        match unit.claim(&uid).await.map_err(queue_error)? {
            Some(mut current) => {
                let now = Utc::now();
                match change(&mut current)? {
                    Change::Unchanged => return Ok(current),
                    Change::Save => {
                        current.updated_date = now;
                        unit.save(&current).await.map_err(queue_error)?;
                        unit.commit().await.map_err(queue_error)?;
                        return Ok(current);
                    }
                }
            }
            None => {
                if create {
                    let (_, revision) = definition(state, namespace, flow_id, trigger_id)
                        .await?
                        .ok_or_else(|| not_found(namespace, flow_id, trigger_id))?;
                    let mut fresh = TriggerState::new(
                        DEFAULT_TENANT,
                        namespace,
                        flow_id,
                        trigger_id,
                        revision,
                        Utc::now(),
                    );
                    change(&mut fresh)?;
                    if unit.create(&fresh).await.map_err(queue_error)? {
                        unit.commit().await.map_err(queue_error)?;
                        return Ok(fresh);
                    }
                } else {
                    drop(unit);
                    let exists = state
                        .engine
                        .repositories()
                        .triggers
                        .find(&uid)
                        .await?
                        .is_some();
                    if !exists {
                        return Err(ApiError::not_found(format!(
                            "trigger '{trigger_id}' of flow {namespace}.{flow_id} has no state (is the flow deployed and a scheduler running?)"
                        )));
                    }
                }
            }
        }
        if started.elapsed() > CLAIM_WAIT {
            return Err(ApiError::conflict(format!(
                "trigger {uid} is held by a scheduler for more than {} s; try again",
                CLAIM_WAIT.as_secs()
            )));
        }
        tokio::time::sleep(CLAIM_PAUSE).await;
    }
}

/// `GET /triggers/search`: `q` (flow id or trigger id), `namespace` (and children), `flowId`,
/// `page`, `size`, `sort` → `{"results": [{"abstractTrigger", "triggerContext"}], "total"}`.
#[utoipa::path(
    get,
    path = "/api/v1/main/triggers/search",
    tag = "Triggers",
    operation_id = "searchTriggers",
    params(
        ("q" = Option<String>, Query, description = "Text to find"),
        ("namespace" = Option<String>, Query, description = "Namespace (and its children)"),
        ("flowId" = Option<String>, Query, description = "Flow id"),
        ("page" = Option<u32>, Query, description = "Page number, from 1"),
        ("size" = Option<u32>, Query, description = "Page size"),
        ("sort" = Option<String>, Query, description = "Sort, e.g. `date:desc`"),
    ),
    responses(
        (status = 200, description = "`{\"results\": [{\"abstractTrigger\", \"triggerContext\"}], \"total\"}`", content_type = "application/json"),
        (status = 400, description = "Invalid query parameter", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn search(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(
        query.as_deref(),
        &["q", "namespace", "flowId", "page", "size", "sort"],
    )?;
    let query = TriggerQuery {
        tenant_id: Some(DEFAULT_TENANT.to_string()),
        q: params.one("q").map(str::to_string),
        namespace: params.one("namespace").map(str::to_string),
        flow_id: params.one("flowId").map(str::to_string),
    };
    let page = params.pageable()?;
    let found = state
        .engine
        .repositories()
        .triggers
        .search(&query, &page)
        .await?;
    Ok(Json(json!({
        "results": with_definitions(&state, &found.results).await?,
        "total": found.total,
    })))
}

/// `GET /triggers/{namespace}/{flowId}`: the trigger states of one flow (paged as a search).
#[utoipa::path(
    get,
    path = "/api/v1/main/triggers/{namespace}/{flowId}",
    tag = "Triggers",
    operation_id = "searchTriggersForFlow",
    params(
        ("namespace" = String, Path, description = "The namespace"),
        ("flowId" = String, Path, description = "The flow id"),
    ),
    responses(
        (status = 200, description = "The trigger states of the flow", content_type = "application/json"),
        (status = 404, description = "No such flow", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn of_flow(
    State(state): State<Arc<AppState>>,
    Path((namespace, flow_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(query.as_deref(), &["q", "page", "size", "sort"])?;
    let query = TriggerQuery {
        tenant_id: Some(DEFAULT_TENANT.to_string()),
        q: params.one("q").map(str::to_string),
        namespace: Some(namespace.clone()),
        flow_id: Some(flow_id.clone()),
    };
    let found = state
        .engine
        .repositories()
        .triggers
        .search(&query, &params.pageable()?)
        .await?;
    // `namespace` matches children too: keep this flow's only.
    let results: Vec<TriggerState> = found
        .results
        .into_iter()
        .filter(|t| t.namespace == namespace)
        .collect();
    Ok(Json(json!({
        "results": with_definitions(&state, &results).await?,
        "total": results.len(),
    })))
}

async fn with_definitions(
    state: &AppState,
    triggers: &[TriggerState],
) -> Result<Vec<Value>, ApiError> {
    let mut flows: HashMap<(String, String), Option<Value>> = HashMap::new();
    let mut out = Vec::with_capacity(triggers.len());
    for trigger in triggers {
        let key = (trigger.namespace.clone(), trigger.flow_id.clone());
        if !flows.contains_key(&key) {
            let flow = state
                .engine
                .repositories()
                .flows
                .find(DEFAULT_TENANT, &key.0, &key.1, None)
                .await?
                .map(|r| r.flow);
            flows.insert(key.clone(), flow);
        }
        let abstract_trigger = flows
            .get(&key)
            .and_then(Option::as_ref)
            .and_then(|f| f.get("triggers"))
            .and_then(Value::as_array)
            .and_then(|list| {
                list.iter().find(|t| {
                    t.get("id").and_then(Value::as_str) == Some(trigger.trigger_id.as_str())
                })
            })
            .cloned()
            .unwrap_or(Value::Null);
        out.push(json!({
            "abstractTrigger": abstract_trigger,
            "triggerContext": trigger_json(trigger),
        }));
    }
    Ok(out)
}

/// A trigger as a request body names it (other fields of Kestra's trigger are accepted and
/// ignored, except `disabled` and `backfill` where documented).
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct TriggerRef {
    namespace: String,
    flow_id: String,
    trigger_id: String,
    #[serde(default)]
    disabled: Option<bool>,
    #[serde(default)]
    backfill: Option<BackfillBody>,
}

/// A backfill in a `PUT /triggers` body.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct BackfillBody {
    start: DateTime<Utc>,
    #[serde(default)]
    end: Option<DateTime<Utc>>,
    #[serde(default)]
    inputs: Option<Map<String, Value>>,
    #[serde(default)]
    labels: Option<Vec<Label>>,
}

/// The body of `POST /triggers/set-disabled/by-triggers`.
#[derive(Debug, Deserialize)]
pub(crate) struct SetDisabled {
    triggers: Vec<TriggerRef>,
    disabled: bool,
}

fn set_disabled(disabled: bool) -> impl FnMut(&mut TriggerState) -> Result<Change, ApiError> {
    move |t: &mut TriggerState| {
        if t.disabled == disabled && (disabled || t.error.is_none()) {
            return Ok(Change::Unchanged);
        }
        t.disabled = disabled;
        if !disabled {
            // Enabled by a user: a system error that had disabled it is cleared.
            t.error = None;
        }
        Ok(Change::Save)
    }
}

/// `POST /triggers/set-disabled/by-triggers`: `{"triggers": [{namespace, flowId, triggerId}],
/// "disabled": bool}` → `{"count": N}` (triggers whose state changed or was created).
#[utoipa::path(
    post,
    path = "/api/v1/main/triggers/set-disabled/by-triggers",
    tag = "Triggers",
    operation_id = "setDisabledByTriggers",
    request_body(content_type = "application/json", description = "`{\"triggers\": [{namespace, flowId, triggerId}], \"disabled\": bool}`"),
    responses(
        (status = 200, description = "`{\"count\"}`: how many triggers were changed", content_type = "application/json"),
        (status = 400, description = "Invalid body", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "A scheduler holds a trigger", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn set_disabled_by_triggers(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    body: Result<Json<SetDisabled>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let Json(body) = body?;
    let mut count = 0u64;
    for t in &body.triggers {
        let before = state
            .engine
            .repositories()
            .triggers
            .find(&trigger_uid(
                DEFAULT_TENANT,
                &t.namespace,
                &t.flow_id,
                &t.trigger_id,
            ))
            .await?
            .map(|s| s.disabled);
        let after = modify(
            &state,
            &t.namespace,
            &t.flow_id,
            &t.trigger_id,
            true,
            set_disabled(body.disabled),
        )
        .await?;
        if before != Some(after.disabled) {
            count += 1;
        }
        tracing::info!(namespace = %t.namespace, flow_id = %t.flow_id, trigger_id = %t.trigger_id, disabled = body.disabled, "trigger set through the API");
    }
    Ok(Json(json!({ "count": count })))
}

/// `PUT /triggers`: update one trigger. With a `backfill` ({start, end, inputs, labels}) on a
/// Schedule trigger without a running backfill: start that backfill. Otherwise `disabled` sets
/// whether it is disabled. Answers the trigger.
#[utoipa::path(
    put,
    path = "/api/v1/main/triggers",
    tag = "Triggers",
    operation_id = "updateTrigger",
    request_body(content_type = "application/json", description = "One trigger context: `disabled`, or a `backfill` {start, end, inputs, labels}"),
    responses(
        (status = 200, description = "The trigger after the change", content_type = "application/json"),
        (status = 400, description = "Invalid body", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such trigger", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "A scheduler holds the trigger", body = crate::api::openapi::ErrorBody),
        (status = 422, description = "The backfill cannot start", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn update(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    body: Result<Json<TriggerRef>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let Json(body) = body?;
    if definition(&state, &body.namespace, &body.flow_id, &body.trigger_id)
        .await?
        .is_none()
    {
        return Err(not_found(&body.namespace, &body.flow_id, &body.trigger_id));
    }
    if let Some(backfill) = body.backfill {
        let request = kestra_core::scheduler::BackfillRequest {
            start: backfill.start,
            end: backfill.end,
            inputs: backfill.inputs.unwrap_or_default(),
            labels: backfill.labels.unwrap_or_default(),
        };
        let started = state
            .engine
            .backfill(&body.namespace, &body.flow_id, &body.trigger_id, request)
            .await?;
        tracing::info!(namespace = %body.namespace, flow_id = %body.flow_id, trigger_id = %body.trigger_id, "backfill started through the API");
        return Ok(Json(trigger_json(&started)));
    }
    let Some(disabled) = body.disabled else {
        return Err(ApiError::unprocessable(
            "PUT /triggers needs 'disabled' (true or false) or a 'backfill' ({start, end, inputs, labels})",
        ));
    };
    let after = set_trigger_disabled(
        &state,
        &body.namespace,
        &body.flow_id,
        &body.trigger_id,
        disabled,
    )
    .await?;
    Ok(Json(trigger_json(&after)))
}

/// Disable or enable one trigger under its claim (a state is created when it has none yet; enabling
/// clears a system error). The API's `PUT /triggers` and the UI's buttons both call this.
pub(crate) async fn set_trigger_disabled(
    state: &AppState,
    namespace: &str,
    flow_id: &str,
    trigger_id: &str,
    disabled: bool,
) -> Result<TriggerState, ApiError> {
    modify(
        state,
        namespace,
        flow_id,
        trigger_id,
        true,
        set_disabled(disabled),
    )
    .await
}

/// Release the running execution and the evaluation that hold a trigger, under its claim; a 409
/// when it is not locked. The API's unlock route and the UI's button both call this.
pub(crate) async fn unlock_trigger(
    state: &AppState,
    namespace: &str,
    flow_id: &str,
    trigger_id: &str,
) -> Result<TriggerState, ApiError> {
    modify(state, namespace, flow_id, trigger_id, false, |t| {
        if t.execution_id.is_none() && t.evaluate_running_date.is_none() && t.worker_id.is_none() {
            return Err(ApiError::conflict(format!(
                "trigger '{}' of flow {}.{} is not locked",
                t.trigger_id, t.namespace, t.flow_id
            )));
        }
        t.execution_id = None;
        t.evaluate_running_date = None;
        t.worker_id = None;
        Ok(Change::Save)
    })
    .await
}

/// `POST /triggers/{namespace}/{flowId}/{triggerId}/unlock`: release the running execution and the
/// evaluation that hold the trigger; 409 when it is not locked.
#[utoipa::path(
    post,
    path = "/api/v1/main/triggers/{namespace}/{flowId}/{triggerId}/unlock",
    tag = "Triggers",
    operation_id = "unlockTrigger",
    params(
        ("namespace" = String, Path, description = "The namespace"),
        ("flowId" = String, Path, description = "The flow id"),
        ("triggerId" = String, Path, description = "The trigger id"),
    ),
    responses(
        (status = 200, description = "The trigger after the unlock", content_type = "application/json"),
        (status = 404, description = "No such trigger", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The trigger is not locked", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn unlock(
    State(state): State<Arc<AppState>>,
    Path((namespace, flow_id, trigger_id)): Path<(String, String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let after = unlock_trigger(&state, &namespace, &flow_id, &trigger_id).await?;
    tracing::info!(%namespace, %flow_id, %trigger_id, "trigger unlocked through the API");
    Ok(Json(trigger_json(&after)))
}

fn with_backfill(
    action: &'static str,
    mut f: impl FnMut(&mut TriggerState),
) -> impl FnMut(&mut TriggerState) -> Result<Change, ApiError> {
    move |t: &mut TriggerState| {
        if t.backfill.is_none() {
            return Err(ApiError::conflict(format!(
                "cannot {action}: no backfill runs on trigger '{}' of flow {}.{}",
                t.trigger_id, t.namespace, t.flow_id
            )));
        }
        f(t);
        Ok(Change::Save)
    }
}

/// A change to a trigger's running backfill: Kestra's pause, unpause and delete.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BackfillAction {
    /// No further slot fires until unpaused.
    Pause,
    /// A paused backfill goes on at once.
    Unpause,
    /// No further slot fires; the scheduler's next step clears the backfill and the regular
    /// schedule goes on.
    Delete,
}

impl BackfillAction {
    /// What the action does, for messages ("cannot {verb}: ...").
    pub(crate) fn verb(self) -> &'static str {
        match self {
            BackfillAction::Pause => "pause the backfill",
            BackfillAction::Unpause => "resume the backfill",
            BackfillAction::Delete => "delete the backfill",
        }
    }

    fn apply(self, t: &mut TriggerState) {
        match self {
            BackfillAction::Pause => {
                if let Some(b) = t.backfill.as_mut() {
                    b.paused = true;
                }
            }
            BackfillAction::Unpause => {
                if let Some(b) = t.backfill.as_mut() {
                    b.paused = false;
                }
                // Due at once, so the next slot fires at the scheduler's next step.
                t.next_execution_date = Some(Utc::now());
            }
            BackfillAction::Delete => {
                // Ends it at its next slot: the scheduler's next step clears it and resumes the
                // regular schedule after the last handled slot, as when a backfill completes.
                if let Some(b) = t.backfill.as_mut() {
                    b.end = Some(b.current_date);
                    b.paused = false;
                }
                t.next_execution_date = Some(Utc::now());
            }
        }
    }
}

/// Apply `action` to the running backfill of a trigger through the trigger seam (the API's
/// `/triggers/backfill/*` and the UI's buttons); a conflict when no backfill runs on it.
pub(crate) async fn change_backfill(
    state: &AppState,
    namespace: &str,
    flow_id: &str,
    trigger_id: &str,
    action: BackfillAction,
) -> Result<TriggerState, ApiError> {
    modify(
        state,
        namespace,
        flow_id,
        trigger_id,
        false,
        with_backfill(action.verb(), move |t| action.apply(t)),
    )
    .await
}

async fn backfill_action(
    state: &AppState,
    body: Result<Json<TriggerRef>, JsonRejection>,
    query: Option<String>,
    action: BackfillAction,
) -> Result<Json<Value>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let Json(body) = body?;
    let after = change_backfill(
        state,
        &body.namespace,
        &body.flow_id,
        &body.trigger_id,
        action,
    )
    .await?;
    tracing::info!(namespace = %body.namespace, flow_id = %body.flow_id, trigger_id = %body.trigger_id, action = action.verb(), "backfill changed through the API");
    Ok(Json(trigger_json(&after)))
}

/// `PUT /triggers/backfill/pause`: pause the trigger's backfill (body: the trigger).
#[utoipa::path(
    put,
    path = "/api/v1/main/triggers/backfill/pause",
    tag = "Triggers",
    operation_id = "pauseBackfill",
    request_body(content_type = "application/json", description = "The trigger context"),
    responses(
        (status = 200, description = "The trigger after the change", content_type = "application/json"),
        (status = 400, description = "Invalid body", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such trigger", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "No backfill runs on the trigger", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn pause_backfill(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    body: Result<Json<TriggerRef>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    backfill_action(&state, body, query, BackfillAction::Pause).await
}

/// `PUT /triggers/backfill/unpause`: resume a paused backfill (body: the trigger).
#[utoipa::path(
    put,
    path = "/api/v1/main/triggers/backfill/unpause",
    tag = "Triggers",
    operation_id = "unpauseBackfill",
    request_body(content_type = "application/json", description = "The trigger context"),
    responses(
        (status = 200, description = "The trigger after the change", content_type = "application/json"),
        (status = 400, description = "Invalid body", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such trigger", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "No backfill runs on the trigger", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn unpause_backfill(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    body: Result<Json<TriggerRef>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    backfill_action(&state, body, query, BackfillAction::Unpause).await
}

/// `POST /triggers/backfill/delete`: stop the trigger's backfill (body: the trigger): no further
/// slot of it fires; the scheduler's next step removes it and the regular schedule goes on.
#[utoipa::path(
    post,
    path = "/api/v1/main/triggers/backfill/delete",
    tag = "Triggers",
    operation_id = "deleteBackfill",
    request_body(content_type = "application/json", description = "The trigger context"),
    responses(
        (status = 200, description = "The trigger after the change", content_type = "application/json"),
        (status = 400, description = "Invalid body", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such trigger", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "No backfill runs on the trigger", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn delete_backfill(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
    body: Result<Json<TriggerRef>, JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    backfill_action(&state, body, query, BackfillAction::Delete).await
}
