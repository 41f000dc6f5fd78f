//! KV routes per namespace, over the same store the `kv()` function and the `kv.*` tasks use
//! ([`KvStore`], in internal storage):
//!
//! - `GET /namespaces/{ns}/kv`: `[{"key", "description", "updateDate", "expirationDate"}]`, sorted
//!   by key, expired entries left out;
//! - `GET /namespaces/{ns}/kv/{key}`: `{"type": "STRING|NUMBER|BOOLEAN|DATETIME|DATE|DURATION|JSON",
//!   "value": ...}`; 404 when missing or expired;
//! - `PUT /namespaces/{ns}/kv/{key}`: the body is the value, typed as Kestra does: JSON text (a
//!   number, `true`/`false`, a quoted string, an object or array) keeps its JSON type, an ISO-8601
//!   date-time, date or duration is typed as such, anything else is a STRING; header `ttl` (an
//!   ISO-8601 duration) sets an expiration date;
//! - `DELETE /namespaces/{ns}/kv/{key}`: `true` when the key existed, `false` otherwise (Kestra's
//!   answer).

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::HeaderMap;
use chrono::{DateTime, NaiveDate, Utc};
use kestra_core::model::DEFAULT_TENANT;
use kestra_core::worker::{KvEntry, KvError, KvStore};
use serde_json::{Value, json};

use super::Params;
use crate::{ApiError, AppState};

fn store(state: &AppState) -> KvStore {
    KvStore::new(state.engine.storage().clone(), DEFAULT_TENANT)
}

fn kv_error(namespace: &str, e: KvError) -> ApiError {
    match e {
        KvError::InvalidKey(_) => ApiError::bad_request(e.to_string()),
        KvError::Storage(kestra_core::storage::StorageError::InvalidUri { .. }) => {
            ApiError::bad_request(format!("invalid namespace '{namespace}': {e}"))
        }
        other => ApiError::internal(other.to_string()),
    }
}

/// The type of a stored value: the declared one, else from its JSON kind.
fn type_of(entry: &KvEntry) -> String {
    if let Some(t) = &entry.r#type {
        return t.to_ascii_uppercase();
    }
    match &entry.value {
        Value::Number(_) => "NUMBER",
        Value::Bool(_) => "BOOLEAN",
        Value::String(_) | Value::Null => "STRING",
        Value::Array(_) | Value::Object(_) => "JSON",
    }
    .to_string()
}

/// `GET /namespaces/{ns}/kv`.
#[utoipa::path(
    get,
    path = "/api/v1/main/namespaces/{namespace}/kv",
    tag = "KV",
    operation_id = "listKeys",
    params(
        ("namespace" = String, Path, description = "The namespace"),
    ),
    responses(
        (status = 200, description = "The namespace's keys", content_type = "application/json"),
        (status = 400, description = "Invalid namespace", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn list(
    State(state): State<Arc<AppState>>,
    Path(namespace): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<Vec<Value>>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let entries = store(&state)
        .list(&namespace)
        .await
        .map_err(|e| kv_error(&namespace, e))?;
    Ok(Json(
        entries
            .into_iter()
            .map(|(key, entry)| {
                json!({
                    "key": key,
                    "description": entry.description,
                    "updateDate": entry.update_date,
                    "expirationDate": entry.expiration_date,
                })
            })
            .collect(),
    ))
}

/// `GET /namespaces/{ns}/kv/{key}`.
#[utoipa::path(
    get,
    path = "/api/v1/main/namespaces/{namespace}/kv/{key}",
    tag = "KV",
    operation_id = "getKeyValue",
    params(
        ("namespace" = String, Path, description = "The namespace"),
        ("key" = String, Path, description = "The key"),
    ),
    responses(
        (status = 200, description = "`{\"type\", \"value\"}`", content_type = "application/json"),
        (status = 404, description = "No such key", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn get_key(
    State(state): State<Arc<AppState>>,
    Path((namespace, key)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<Value>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let entry = store(&state)
        .get(&namespace, &key)
        .await
        .map_err(|e| kv_error(&namespace, e))?
        .ok_or_else(|| {
            ApiError::not_found(format!(
                "no value for key '{key}' in namespace '{namespace}' (missing or expired)"
            ))
        })?;
    Ok(Json(
        json!({ "type": type_of(&entry), "value": entry.value }),
    ))
}

/// A PUT body as Kestra types it.
fn typed_value(body: &str) -> (Value, &'static str) {
    let text = body.trim();
    if let Ok(value) = serde_json::from_str::<Value>(text) {
        let kind = match &value {
            Value::Number(_) => "NUMBER",
            Value::Bool(_) => "BOOLEAN",
            Value::Array(_) | Value::Object(_) => "JSON",
            Value::String(_) | Value::Null => "STRING",
        };
        if !value.is_null() {
            return (value, kind);
        }
    }
    if DateTime::parse_from_rfc3339(text).is_ok() {
        return (Value::String(text.to_string()), "DATETIME");
    }
    if NaiveDate::parse_from_str(text, "%Y-%m-%d").is_ok() {
        return (Value::String(text.to_string()), "DATE");
    }
    if text.starts_with(['P', 'p']) && kestra_core::flow::duration::parse(text).is_ok() {
        return (Value::String(text.to_string()), "DURATION");
    }
    (Value::String(body.to_string()), "STRING")
}

/// Set a KV entry from a value typed as Kestra does ([`typed_value`]) and an optional ISO-8601 `ttl`
/// (`ttl_name` names where it came from in an error), keeping the entry's description. The API's
/// PUT route and the UI's form both call this. Answers the entry and its type.
pub(crate) async fn set_value(
    state: &AppState,
    namespace: &str,
    key: &str,
    body: &str,
    ttl: Option<&str>,
    ttl_name: &str,
) -> Result<(KvEntry, &'static str), ApiError> {
    let now = Utc::now();
    let expiration_date = match ttl {
        None => None,
        Some(text) => {
            let duration = kestra_core::flow::duration::parse(text)
                .map_err(|e| ApiError::bad_request(format!("{ttl_name}: {e}")))?;
            Some(
                chrono::Duration::from_std(duration)
                    .ok()
                    .and_then(|d| now.checked_add_signed(d))
                    .ok_or_else(|| {
                        ApiError::bad_request(format!("{ttl_name}: '{text}' is too large"))
                    })?,
            )
        }
    };
    let (value, kind) = typed_value(body);
    let kv = store(state);
    let description = kv
        .get(namespace, key)
        .await
        .map_err(|e| kv_error(namespace, e))?
        .and_then(|e| e.description);
    let entry = KvEntry {
        value,
        r#type: Some(kind.to_string()),
        expiration_date,
        update_date: now,
        description,
    };
    kv.set(namespace, key, &entry)
        .await
        .map_err(|e| kv_error(namespace, e))?;
    Ok((entry, kind))
}

/// Delete a KV entry: `true` when it existed. The API's DELETE route and the UI's button both call
/// this.
pub(crate) async fn delete_value(
    state: &AppState,
    namespace: &str,
    key: &str,
) -> Result<bool, ApiError> {
    store(state)
        .delete(namespace, key)
        .await
        .map_err(|e| kv_error(namespace, e))
}

/// `PUT /namespaces/{ns}/kv/{key}`: body = the value, header `ttl` = ISO-8601 duration.
#[utoipa::path(
    put,
    path = "/api/v1/main/namespaces/{namespace}/kv/{key}",
    tag = "KV",
    operation_id = "setKeyValue",
    params(
        ("namespace" = String, Path, description = "The namespace"),
        ("key" = String, Path, description = "The key"),
        ("ttl" = Option<String>, Header, description = "Time to live (ISO-8601 duration)"),
    ),
    request_body(content_type = "text/plain", description = "The value (typed as Kestra does: number, boolean, JSON, date, duration or string)"),
    responses(
        (status = 200, description = "Stored", content_type = "application/json"),
        (status = 400, description = "Invalid key, value or ttl", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn put_key(
    State(state): State<Arc<AppState>>,
    Path((namespace, key)): Path<(String, String)>,
    RawQuery(query): RawQuery,
    headers: HeaderMap,
    body: String,
) -> Result<Json<Value>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let ttl = match headers.get("ttl") {
        None => None,
        Some(ttl) => Some(
            ttl.to_str()
                .map_err(|_| ApiError::bad_request("header 'ttl' is not ASCII text"))?,
        ),
    };
    let (entry, kind) = set_value(&state, &namespace, &key, &body, ttl, "header 'ttl'").await?;
    tracing::info!(%namespace, %key, r#type = kind, "KV entry set through the API");
    Ok(Json(json!({
        "key": key,
        "type": kind,
        "updateDate": entry.update_date,
        "expirationDate": entry.expiration_date,
    })))
}

/// `DELETE /namespaces/{ns}/kv/{key}`: `true` if it existed.
#[utoipa::path(
    delete,
    path = "/api/v1/main/namespaces/{namespace}/kv/{key}",
    tag = "KV",
    operation_id = "deleteKeyValue",
    params(
        ("namespace" = String, Path, description = "The namespace"),
        ("key" = String, Path, description = "The key"),
    ),
    responses(
        (status = 200, description = "`true` when the key existed", content_type = "application/json"),
        (status = 400, description = "Invalid key", body = crate::api::openapi::ErrorBody),
        (status = 401, description = "Missing or wrong credentials", body = crate::api::openapi::ErrorBody),
    )
)]
pub(crate) async fn delete_key(
    State(state): State<Arc<AppState>>,
    Path((namespace, key)): Path<(String, String)>,
    RawQuery(query): RawQuery,
) -> Result<Json<bool>, ApiError> {
    Params::parse(query.as_deref(), &[])?;
    let existed = delete_value(&state, &namespace, &key).await?;
    Ok(Json(existed))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn put_bodies_are_typed_as_kestra_does() {
        assert_eq!(typed_value("42"), (json!(42), "NUMBER"));
        assert_eq!(typed_value("true"), (json!(true), "BOOLEAN"));
        assert_eq!(typed_value("{\"a\":1}"), (json!({"a": 1}), "JSON"));
        assert_eq!(typed_value("\"quoted\""), (json!("quoted"), "STRING"));
        assert_eq!(typed_value("hello world"), (json!("hello world"), "STRING"));
        assert_eq!(
            typed_value("2026-01-31T10:00:00Z"),
            (json!("2026-01-31T10:00:00Z"), "DATETIME")
        );
        assert_eq!(typed_value("2026-01-31"), (json!("2026-01-31"), "DATE"));
        assert_eq!(typed_value("PT5M"), (json!("PT5M"), "DURATION"));
        assert_eq!(typed_value("Paris"), (json!("Paris"), "STRING"));
    }
}
