//! Execution routes: trigger (multipart inputs and files, `wait`, labels, `scheduleDate`,
//! `revision`), get, search, follow (server-sent events), kill, delete.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::extract::{FromRequest, Multipart, Path, RawQuery, Request, State};
use axum::http::{StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use futures::Stream;
use indexmap::IndexMap;
use kestra_core::inputs::RawInput;
use kestra_core::model::{DEFAULT_TENANT, Execution, StateType};
use kestra_core::repository::ExecutionQuery;
use kestra_core::runtime::ExecuteOptions;
use kestra_core::storage::StoragePath;
use serde_json::{Value, json};

use super::Params;
use crate::{ApiError, AppState};

/// How long a follow waits for an execution that was just created and is not stored yet.
const FOLLOW_APPEAR_WAIT: Duration = Duration::from_secs(10);

pub(crate) async fn find(state: &AppState, id: &str) -> Result<Execution, ApiError> {
    state
        .engine
        .repositories()
        .executions
        .find_by_id(DEFAULT_TENANT, id)
        .await?
        .ok_or_else(|| ApiError::not_found(format!("execution {id} not found")))
}

pub(crate) fn execution_json(execution: &Execution) -> Result<Value, ApiError> {
    serde_json::to_value(execution)
        .map_err(|e| ApiError::internal(format!("cannot serialise execution: {e}")))
}

/// Where the file parts of a form go: the FILE inputs folder of the execution about to be created.
pub(crate) struct UploadTarget {
    /// The flow's namespace.
    pub(crate) namespace: String,
    /// The flow id.
    pub(crate) flow_id: String,
    /// The id the execution will have (see [`ExecuteOptions::execution_id`]).
    pub(crate) execution_id: String,
}

impl UploadTarget {
    /// A target for a new execution of a flow, with a fresh execution id.
    pub(crate) fn new(namespace: &str, flow_id: &str) -> UploadTarget {
        UploadTarget {
            namespace: namespace.to_string(),
            flow_id: flow_id.to_string(),
            execution_id: kestra_core::model::id::new_id(),
        }
    }
}

/// The inputs of a multipart form: text fields (each at most `max_body_bytes`) and files. With a
/// `target`, each file part is streamed straight into internal storage at
/// `.../executions/<id>/inputs/<field>/<file name>` (never held in memory) and given as
/// [`RawInput::Stored`]; without one, a file part is refused (422). A file part with an empty name and
/// no content (an untouched file field of an HTML form) counts as absent. On any error, the files
/// stored so far are deleted. A body over the route's limit is a 413.
pub(crate) async fn form_inputs(
    state: &Arc<AppState>,
    request: Request,
    target: Option<&UploadTarget>,
) -> Result<IndexMap<String, RawInput>, ApiError> {
    let mut stored = Vec::new();
    let result = read_form(state, request, target, &mut stored).await;
    if result.is_err() {
        for path in stored {
            if let Err(e) = state.engine.storage().delete(DEFAULT_TENANT, &path).await {
                tracing::warn!(path = %path, error = %e, "cannot delete a file of a refused upload");
            }
        }
    }
    result
}

async fn read_form(
    state: &Arc<AppState>,
    request: Request,
    target: Option<&UploadTarget>,
    stored: &mut Vec<StoragePath>,
) -> Result<IndexMap<String, RawInput>, ApiError> {
    let content_type = request
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_ascii_lowercase);
    match content_type {
        Some(ct) if ct.starts_with("multipart/form-data") => {}
        None => return Ok(IndexMap::new()),
        Some(ct) => {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("inputs are sent as multipart/form-data, not {ct}"),
            ));
        }
    }
    let mut multipart = Multipart::from_request(request, state)
        .await
        .map_err(|e| ApiError::new(e.status(), e.body_text()))?;
    let mut inputs = IndexMap::new();
    while let Some(mut field) = multipart.next_field().await.map_err(form_error)? {
        let Some(name) = field.name().map(str::to_string) else {
            return Err(ApiError::bad_request("a multipart field has no name"));
        };
        let input = match field.file_name().map(str::to_string) {
            Some(file_name) => {
                let Some(target) = target else {
                    return Err(ApiError::unprocessable(format!(
                        "input '{name}': files are not accepted here"
                    )));
                };
                if file_name.trim().is_empty() {
                    // An untouched file field of an HTML form: no file, unless it has content.
                    if field.chunk().await.map_err(form_error)?.is_some() {
                        return Err(ApiError::unprocessable(format!(
                            "input '{name}': the uploaded file has no name"
                        )));
                    }
                    continue;
                }
                let clean = kestra_core::inputs::upload_file_name(&file_name)
                    .map_err(|e| ApiError::unprocessable(format!("input '{name}': {e}")))?;
                let path = StoragePath::input_file(
                    &target.namespace,
                    &target.flow_id,
                    &target.execution_id,
                    &name,
                    &clean,
                )
                .map_err(|e| ApiError::unprocessable(format!("input '{name}': {e}")))?;
                stream_to_storage(state, &mut field, &path).await?;
                tracing::debug!(input = %name, path = %path, "uploaded file stored");
                stored.push(path.clone());
                RawInput::Stored { file_name, path }
            }
            None => {
                let mut text = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(form_error)? {
                    if text.len() + chunk.len() > state.config.max_body_bytes {
                        return Err(ApiError::new(
                            StatusCode::PAYLOAD_TOO_LARGE,
                            format!(
                                "input '{name}': a text field is limited to {} bytes",
                                state.config.max_body_bytes
                            ),
                        ));
                    }
                    text.extend_from_slice(&chunk);
                }
                RawInput::Text(String::from_utf8(text).map_err(|_| {
                    ApiError::bad_request(format!("input '{name}': the text is not valid UTF-8"))
                })?)
            }
        };
        if let Some(RawInput::Stored { path: old, .. }) = inputs.get(&name)
            && !matches!(&input, RawInput::Stored { path, .. } if path == old)
        {
            // The same field twice: the last one wins, the earlier file goes.
            let old = old.clone();
            stored.retain(|p| *p != old);
            if let Err(e) = state.engine.storage().delete(DEFAULT_TENANT, &old).await {
                tracing::warn!(path = %old, error = %e, "cannot delete a replaced upload");
            }
        }
        inputs.insert(name, input);
    }
    Ok(inputs)
}

fn form_error(e: axum::extract::multipart::MultipartError) -> ApiError {
    // A body that breaks off (client gone, connection reset) is the client's problem, not a 500.
    let status = match e.status() {
        StatusCode::INTERNAL_SERVER_ERROR => StatusCode::BAD_REQUEST,
        status => status,
    };
    ApiError::new(status, format!("invalid multipart body: {}", e.body_text()))
}

/// Stream one file part into storage: the part is read chunk by chunk while the storage writes it
/// (a bounded channel between them), so memory stays at a few chunks whatever the file's size. A
/// broken or over-limit body fails the `put`, which then leaves nothing behind.
async fn stream_to_storage(
    state: &Arc<AppState>,
    field: &mut axum::extract::multipart::Field<'_>,
    path: &StoragePath,
) -> Result<u64, ApiError> {
    use futures::StreamExt;
    use kestra_core::storage::StorageError;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, StorageError>>(4);
    let data = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .boxed();
    let storage = state.engine.storage().clone();
    let put = storage.put(DEFAULT_TENANT, path, data);
    let feed = async move {
        loop {
            match field.chunk().await {
                Ok(Some(chunk)) => {
                    if tx.send(Ok(chunk)).await.is_err() {
                        // The storage gave up; its error tells why.
                        return Ok(());
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => {
                    let error = form_error(e);
                    let _ = tx
                        .send(Err(StorageError::Backend {
                            operation: "receive the upload",
                            uri: path.to_uri(),
                            source: error.message.clone().into(),
                        }))
                        .await;
                    return Err(error);
                }
            }
        }
    };
    let (written, fed) = tokio::join!(put, feed);
    fed?;
    written.map_err(|e| ApiError::internal(format!("cannot store the uploaded file {path}: {e}")))
}

/// `POST /executions/{namespace}/{flowId}`: create an execution; answers at once with it (CREATED),
/// or at its end with `wait=true`. 404 unknown flow, 409 disabled flow, 422 invalid inputs.
#[utoipa::path(
    post,
    path = "/api/v1/main/executions/{namespace}/{flowId}",
    tag = "Executions",
    operation_id = "createExecution",
    params(
        ("namespace" = String, Path, description = "Namespace of the flow"),
        ("flowId" = String, Path, description = "Flow id"),
        ("wait" = Option<bool>, Query, description = "true: answer at the end of the execution"),
        ("labels" = Option<String>, Query, description = "key:value, repeatable"),
        ("scheduleDate" = Option<String>, Query, description = "ISO-8601 date-time to start at"),
        ("revision" = Option<i32>, Query, description = "Flow revision to run"),
    ),
    request_body(content = crate::api::openapi::InputsBody, content_type = "multipart/form-data", description = "One field per input; files as file fields"),
    responses(
        (status = 200, description = "The execution (CREATED, or ended with wait=true)", body = crate::api::openapi::ExecutionBody),
        (status = 400, description = "Invalid query parameter", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such flow", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The flow is disabled", body = crate::api::openapi::ErrorBody),
        (status = 413, description = "The body is over the limit", body = crate::api::openapi::ErrorBody),
        (status = 415, description = "The body is not multipart/form-data", body = crate::api::openapi::ErrorBody),
        (status = 422, description = "Invalid inputs, one error per input", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn trigger(
    State(state): State<Arc<AppState>>,
    Path((namespace, flow_id)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    request: Request,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(
        query.as_deref(),
        &["wait", "labels", "scheduleDate", "revision"],
    )?;
    let wait = params.bool("wait", false)?;
    let revision = match params.one("revision") {
        None => None,
        Some(r) => Some(r.parse::<i32>().map_err(|_| {
            ApiError::bad_request(format!(
                "query parameter 'revision': '{r}' is not an integer"
            ))
        })?),
    };
    let target = UploadTarget::new(&namespace, &flow_id);
    let options = ExecuteOptions {
        labels: params.labels()?,
        revision,
        schedule_date: params.date("scheduleDate")?,
        execution_id: Some(target.execution_id.clone()),
    };
    let inputs = form_inputs(&state, request, Some(&target)).await?;
    let execution = state
        .engine
        .execute_with(&namespace, &flow_id, inputs, options)
        .await?;
    if !wait {
        return Ok(Json(execution_json(&execution)?));
    }
    let done = tokio::select! {
        done = state.engine.wait_for(&execution.id, state.config.wait_timeout) => done?,
        () = state.shutdown.cancelled() => {
            return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"));
        }
    };
    Ok(Json(execution_json(&done)?))
}

/// `GET /executions/{id}`.
#[utoipa::path(
    get,
    path = "/api/v1/main/executions/{id}",
    tag = "Executions",
    operation_id = "getExecution",
    params(
        ("id" = String, Path, description = "Execution id"),
    ),
    responses(
        (status = 200, description = "The execution", body = crate::api::openapi::ExecutionBody),
        (status = 404, description = "No such execution", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn get_execution(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(execution_json(&find(&state, &id).await?)?))
}

/// `GET /executions/search`: `{"results": [...], "total": N}`.
#[utoipa::path(
    get,
    path = "/api/v1/main/executions/search",
    tag = "Executions",
    operation_id = "searchExecutions",
    params(
        ("q" = Option<String>, Query, description = "Text in the id, namespace or flow id"),
        ("namespace" = Option<String>, Query, description = "Namespace, with its children"),
        ("flowId" = Option<String>, Query, description = "Flow id"),
        ("state" = Option<String>, Query, description = "State, repeatable or comma-separated"),
        ("startDate" = Option<String>, Query, description = "ISO-8601: started at or after"),
        ("endDate" = Option<String>, Query, description = "ISO-8601: started at or before"),
        ("labels" = Option<String>, Query, description = "key:value, repeatable"),
        ("page" = Option<u32>, Query, description = "Page, from 1 (default 1)"),
        ("size" = Option<u32>, Query, description = "Page size, 1 to 10000 (default 25)"),
        ("sort" = Option<String>, Query, description = "field:asc or field:desc, repeatable"),
    ),
    responses(
        (status = 200, description = "A page of executions", body = crate::api::openapi::PagedExecutionsBody),
        (status = 400, description = "Unknown or invalid query parameter, or sort field", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn search(
    State(state): State<Arc<AppState>>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(
        query.as_deref(),
        &[
            "q",
            "namespace",
            "flowId",
            "state",
            "startDate",
            "endDate",
            "labels",
            "page",
            "size",
            "sort",
        ],
    )?;
    let page = params.pageable()?;
    let states = params
        .all("state")
        .into_iter()
        .map(|s| {
            s.parse::<StateType>().map_err(|_| {
                ApiError::bad_request(format!("query parameter 'state': '{s}' is not a state"))
            })
        })
        .collect::<Result<Vec<_>, _>>()?;
    let query = ExecutionQuery {
        tenant_id: None,
        q: params.one("q").map(str::to_string),
        namespace: params.one("namespace").map(str::to_string),
        flow_id: params.one("flowId").map(str::to_string),
        states,
        start_date: params.date("startDate")?,
        end_date: params.date("endDate")?,
        labels: params.labels()?,
        parent_id: None,
    };
    let found = state
        .engine
        .repositories()
        .executions
        .search(&query, &page)
        .await?;
    let results = found
        .results
        .iter()
        .map(execution_json)
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Json(json!({ "results": results, "total": found.total })))
}

/// Where a follow stands.
struct Follow {
    state: Arc<AppState>,
    id: String,
    last: Option<Value>,
    ended: bool,
}

/// `GET /executions/{id}/follow`: server-sent events, one per change of the execution (`id:
/// progress`, data: the execution), the last with `id: end` once it has ended; then the stream
/// closes. 404 when the execution does not appear within a few seconds.
#[utoipa::path(
    get,
    path = "/api/v1/main/executions/{id}/follow",
    tag = "Executions",
    operation_id = "followExecution",
    params(
        ("id" = String, Path, description = "Execution id"),
    ),
    responses(
        (status = 200, description = "Server-sent events: the execution at each change (id: progress), the last with id: end", content_type = "text/event-stream"),
        (status = 404, description = "No such execution", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn follow(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let deadline = tokio::time::Instant::now() + FOLLOW_APPEAR_WAIT;
    loop {
        let found = state
            .engine
            .repositories()
            .executions
            .find_by_id(DEFAULT_TENANT, &id)
            .await?;
        if found.is_some() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::not_found(format!("execution {id} not found")));
        }
        tokio::select! {
            () = tokio::time::sleep(state.config.follow_poll) => {}
            () = state.shutdown.cancelled() => {
                return Err(ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "the server is shutting down"));
            }
        }
    }
    let start = Follow {
        state,
        id,
        last: None,
        ended: false,
    };
    let events = futures::stream::unfold(start, |mut f| async move {
        if f.ended {
            return None;
        }
        loop {
            let current = f
                .state
                .engine
                .repositories()
                .executions
                .find_by_id(DEFAULT_TENANT, &f.id)
                .await;
            match current {
                Ok(Some(execution)) => {
                    let ended = execution.state.is_terminated();
                    if let Ok(value) = serde_json::to_value(&execution)
                        && f.last.as_ref() != Some(&value)
                    {
                        let event = Event::default()
                            .id(if ended { "end" } else { "progress" })
                            .data(value.to_string());
                        f.last = Some(value);
                        f.ended = ended;
                        return Some((Ok(event), f));
                    }
                }
                Ok(None) => {
                    // Deleted while followed.
                    return None;
                }
                Err(e) => {
                    tracing::warn!(execution_id = %f.id, error = %e, "follow cannot read the execution; retrying");
                }
            }
            tokio::select! {
                () = tokio::time::sleep(f.state.config.follow_poll) => {}
                () = f.state.shutdown.cancelled() => return None,
            }
        }
    });
    Ok(Sse::new(events).keep_alive(KeepAlive::default()))
}

/// `DELETE /executions/{id}/kill`: 202 once the kill is asked; 409 when the execution has ended.
#[utoipa::path(
    delete,
    path = "/api/v1/main/executions/{id}/kill",
    tag = "Executions",
    operation_id = "killExecution",
    params(
        ("id" = String, Path, description = "Execution id"),
    ),
    responses(
        (status = 202, description = "The kill is asked"),
        (status = 404, description = "No such execution", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The execution has ended", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn kill(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let execution = find(&state, &id).await?;
    if execution.state.is_terminated() {
        return Err(ApiError::conflict(format!(
            "execution {id} has already ended ({}): nothing to kill",
            execution.state.current()
        )));
    }
    state.engine.kill(&id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `DELETE /executions/{id}`: delete an ended execution; its logs and metrics too unless
/// `deleteLogs=false` / `deleteMetrics=false`. 204; 409 while it runs (kill it first).
#[utoipa::path(
    delete,
    path = "/api/v1/main/executions/{id}",
    tag = "Executions",
    operation_id = "deleteExecution",
    params(
        ("id" = String, Path, description = "Execution id"),
        ("deleteLogs" = Option<bool>, Query, description = "Delete its logs too (default true)"),
        ("deleteMetrics" = Option<bool>, Query, description = "Delete its metrics too (default true)"),
    ),
    responses(
        (status = 204, description = "Deleted"),
        (status = 404, description = "No such execution", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The execution still runs", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn delete_execution(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<StatusCode, ApiError> {
    let params = Params::parse(query.as_deref(), &["deleteLogs", "deleteMetrics"])?;
    let delete_logs = params.bool("deleteLogs", true)?;
    let delete_metrics = params.bool("deleteMetrics", true)?;
    let execution = find(&state, &id).await?;
    if !execution.state.is_terminated() {
        return Err(ApiError::conflict(format!(
            "execution {id} is still {}: kill it before deleting it",
            execution.state.current()
        )));
    }
    state
        .engine
        .delete_execution(&id, delete_logs, delete_metrics)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /executions/{id}/restart`: the failed task runs (and their parents) run again in the same
/// execution. 202 once asked; 409 unless the execution is FAILED or KILLED.
#[utoipa::path(
    post,
    path = "/api/v1/main/executions/{id}/restart",
    tag = "Executions",
    operation_id = "restartExecution",
    params(
        ("id" = String, Path, description = "Execution id"),
    ),
    responses(
        (status = 202, description = "The restart is asked"),
        (status = 404, description = "No such execution", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "Not FAILED or KILLED", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn restart(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let execution = find(&state, &id).await?;
    let current = execution.state.current();
    if !matches!(current, StateType::Failed | StateType::Killed) {
        return Err(ApiError::conflict(format!(
            "execution {id} is {current}: only a FAILED or KILLED execution can be restarted"
        )));
    }
    state.engine.restart(&id).await?;
    Ok(StatusCode::ACCEPTED)
}

/// `POST /executions/{id}/replay?taskRunId=...`: a new execution that keeps what ran before that
/// task run and runs the rest again; answers the new execution. 404 for an unknown execution or
/// task run; 409 while the execution runs.
#[utoipa::path(
    post,
    path = "/api/v1/main/executions/{id}/replay",
    tag = "Executions",
    operation_id = "replayExecution",
    params(
        ("id" = String, Path, description = "Execution id"),
        ("taskRunId" = Option<String>, Query, description = "The task run to replay from (required)"),
    ),
    responses(
        (status = 200, description = "The new execution", body = crate::api::openapi::ExecutionBody),
        (status = 400, description = "taskRunId missing", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such execution or task run", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "The execution still runs", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn replay(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    let params = Params::parse(query.as_deref(), &["taskRunId"])?;
    let Some(task_run_id) = params.one("taskRunId") else {
        return Err(ApiError::bad_request(
            "query parameter 'taskRunId' is required: the task run to replay from",
        ));
    };
    let execution = find(&state, &id).await?;
    if !execution.state.is_terminated() {
        return Err(ApiError::conflict(format!(
            "execution {id} is still {}: only an ended execution can be replayed",
            execution.state.current()
        )));
    }
    let replayed = state.engine.replay(&id, task_run_id).await?;
    Ok(Json(execution_json(&replayed)?))
}

/// `POST /executions/{id}/resume`: resume a PAUSED execution, with the Pause tasks' `onResume`
/// inputs as multipart text fields. 204 once asked; 409 unless PAUSED.
#[utoipa::path(
    post,
    path = "/api/v1/main/executions/{id}/resume",
    tag = "Executions",
    operation_id = "resumeExecution",
    params(
        ("id" = String, Path, description = "Execution id"),
    ),
    request_body(content = crate::api::openapi::InputsBody, content_type = "multipart/form-data", description = "One field per input; files as file fields"),
    responses(
        (status = 204, description = "The resume is asked"),
        (status = 404, description = "No such execution", body = crate::api::openapi::ErrorBody),
        (status = 409, description = "Not PAUSED", body = crate::api::openapi::ErrorBody),
        (status = 422, description = "Invalid onResume inputs", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn resume(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    request: Request,
) -> Result<StatusCode, ApiError> {
    let execution = find(&state, &id).await?;
    if execution.state.current() != StateType::Paused {
        return Err(ApiError::conflict(format!(
            "execution {id} is {}: only a PAUSED execution can be resumed",
            execution.state.current()
        )));
    }
    let mut inputs = serde_json::Map::new();
    for (name, input) in form_inputs(&state, request, None).await? {
        match input {
            RawInput::Text(text) => {
                inputs.insert(name, Value::String(text));
            }
            RawInput::Json(value) => {
                inputs.insert(name, value);
            }
            RawInput::File { .. } | RawInput::Stored { .. } => {
                return Err(ApiError::unprocessable(format!(
                    "resume input '{name}': files are not accepted when resuming"
                )));
            }
        }
    }
    state.engine.resume(&id, inputs).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /executions/{id}/file?path=kestra:///...`: download a file of the execution. Only a file
/// under the execution's own storage folder (`<namespace>/<flow>/executions/<id>/`) is served; the
/// path is canonicalised first (encoded, doubled or `..` segments cannot leave that folder): 403 for
/// any other file, 400 for an invalid path, 404 for a missing file.
#[utoipa::path(
    get,
    path = "/api/v1/main/executions/{id}/file",
    tag = "Executions",
    operation_id = "downloadFileFromExecution",
    params(
        ("id" = String, Path, description = "Execution id"),
        ("path" = Option<String>, Query, description = "kestra:/// URI of a file of this execution (required)"),
    ),
    responses(
        (status = 200, description = "The file", content_type = "application/octet-stream"),
        (status = 400, description = "Invalid or missing path", body = crate::api::openapi::ErrorBody),
        (status = 403, description = "Not a file of this execution", body = crate::api::openapi::ErrorBody),
        (status = 404, description = "No such execution or file", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn file(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<axum::response::Response, ApiError> {
    use axum::response::IntoResponse;
    let params = Params::parse(query.as_deref(), &["path"])?;
    let Some(raw) = params.one("path") else {
        return Err(ApiError::bad_request(
            "query parameter 'path' is required: the kestra:/// URI of the file",
        ));
    };
    let OwnedFile { path, size, stream } = owned_file(&state, &id, raw).await?;
    let file_name: String = path
        .file_name()
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_') {
                c
            } else {
                '_'
            }
        })
        .collect();
    Ok((
        [
            (header::CONTENT_TYPE, "application/octet-stream".to_string()),
            (header::CONTENT_LENGTH, size.to_string()),
            (
                header::CONTENT_DISPOSITION,
                format!("attachment; filename=\"{file_name}\""),
            ),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response())
}

/// A file of an execution, opened for reading.
pub(crate) struct OwnedFile {
    /// Its canonical path.
    pub(crate) path: kestra_core::storage::StoragePath,
    /// Its size in bytes.
    pub(crate) size: u64,
    /// Its content.
    pub(crate) stream: kestra_core::storage::ByteStream,
}

/// Open `raw` (a `kestra:///` URI) only if it is a file under execution `id`'s own storage folder
/// (canonicalised first): 403 for any other file, 400 for an invalid path, 404 for a missing one.
pub(crate) async fn owned_file(
    state: &AppState,
    id: &str,
    raw: &str,
) -> Result<OwnedFile, ApiError> {
    use kestra_core::storage::{StorageError, StoragePath};
    let execution = find(state, id).await?;
    let path = StoragePath::parse(raw).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let root = StoragePath::execution(&execution.namespace, &execution.flow_id, &execution.id)
        .map_err(|e| ApiError::internal(e.to_string()))?;
    if !path.starts_with(&root) || path == root {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "{} is not a file of execution {id}: only files under {} are served",
                path.to_uri(),
                root.to_uri()
            ),
        ));
    }
    let storage = state.engine.storage();
    let storage_error = |e: StorageError| match e {
        StorageError::NotFound { .. } => ApiError::not_found(e.to_string()),
        StorageError::InvalidUri { .. } => ApiError::bad_request(e.to_string()),
        StorageError::Forbidden { .. } => ApiError::new(StatusCode::FORBIDDEN, e.to_string()),
        StorageError::Backend { .. } => ApiError::internal(e.to_string()),
    };
    let size = storage
        .size(&execution.tenant_id, &path)
        .await
        .map_err(storage_error)?;
    let stream = storage
        .get(&execution.tenant_id, &path)
        .await
        .map_err(storage_error)?;
    Ok(OwnedFile { path, size, stream })
}
