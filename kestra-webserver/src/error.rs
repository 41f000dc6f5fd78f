//! [`ApiError`]: every error of the API becomes a JSON body naming the problem, with Kestra's status
//! codes and shape: `{"message": "...", "_embedded": {"errors": [{"path", "line", "column",
//! "message"}]}}` (the list only when there are positioned errors, e.g. flow validation).

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use kestra_core::flow::parse::FlowErrors;
use kestra_core::repository::RepositoryError;
use kestra_core::runtime::EngineError;
use serde_json::{Value, json};

/// An error answer of the API.
#[derive(Debug)]
pub struct ApiError {
    /// The status code.
    pub status: StatusCode,
    /// What is wrong.
    pub message: String,
    /// Detailed errors (path, line, column, message), if any.
    pub errors: Vec<Value>,
}

impl ApiError {
    /// An error with a message.
    pub fn new(status: StatusCode, message: impl Into<String>) -> ApiError {
        ApiError {
            status,
            message: message.into(),
            errors: Vec::new(),
        }
    }
    /// 400.
    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }
    /// 404.
    pub fn not_found(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }
    /// 409.
    pub fn conflict(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::CONFLICT, message)
    }
    /// 422.
    pub fn unprocessable(message: impl Into<String>) -> ApiError {
        ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, message)
    }
    /// 500, logged.
    pub fn internal(message: impl Into<String>) -> ApiError {
        let message = message.into();
        tracing::error!(error = %message, "API request failed");
        ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, message)
    }

    /// 422 for an invalid flow, with one entry per problem.
    pub fn invalid_flow(errors: &FlowErrors) -> ApiError {
        ApiError {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: format!("Invalid entity: {errors}"),
            errors: flow_errors_json(errors),
        }
    }
}

/// The problems of a flow as JSON: `[{"path", "line", "column", "message"}]`.
pub fn flow_errors_json(errors: &FlowErrors) -> Vec<Value> {
    errors
        .errors
        .iter()
        .map(|e| {
            json!({
                "path": e.path,
                "line": e.line,
                "column": e.column,
                "message": e.message,
            })
        })
        .collect()
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut body = json!({ "message": self.message });
        if !self.errors.is_empty() {
            body["_embedded"] = json!({ "errors": self.errors });
        }
        (self.status, Json(body)).into_response()
    }
}

impl From<RepositoryError> for ApiError {
    fn from(e: RepositoryError) -> ApiError {
        match e {
            RepositoryError::NotFound { .. } => ApiError::not_found(e.to_string()),
            RepositoryError::InvalidSort { .. } | RepositoryError::InvalidQuery(_) => {
                ApiError::bad_request(e.to_string())
            }
            RepositoryError::Corrupt { .. } | RepositoryError::Backend { .. } => {
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl From<EngineError> for ApiError {
    fn from(e: EngineError) -> ApiError {
        match e {
            EngineError::InvalidFlow(errors) => ApiError::invalid_flow(&errors),
            EngineError::FlowNotFound { .. }
            | EngineError::ExecutionNotFound(_)
            | EngineError::TaskRunNotFound { .. }
            | EngineError::WebhookNotFound { .. } => ApiError::not_found(e.to_string()),
            EngineError::FlowDisabled { .. } => ApiError::conflict(e.to_string()),
            EngineError::InvalidInputs(ref inputs) => ApiError {
                status: StatusCode::UNPROCESSABLE_ENTITY,
                message: e.to_string(),
                errors: inputs
                    .0
                    .iter()
                    .map(|i| json!({ "path": format!("inputs.{}", i.input), "message": i.message }))
                    .collect(),
            },
            EngineError::Backfill(_) => ApiError::unprocessable(e.to_string()),
            EngineError::Timeout { .. } => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, e.to_string())
            }
            EngineError::Repository(r) => r.into(),
            EngineError::Queue(_) | EngineError::Serialization(_) => {
                ApiError::internal(e.to_string())
            }
        }
    }
}

impl From<QueryRejection> for ApiError {
    fn from(e: QueryRejection) -> ApiError {
        ApiError::bad_request(format!("invalid query parameters: {}", e.body_text()))
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> ApiError {
        ApiError::new(e.status(), format!("invalid JSON body: {}", e.body_text()))
    }
}
