//! http.Request and http.Download with `reqwest` (rustls), and the polling http.Trigger, which sends
//! the same request as http.Request.
//!
//! Options (`options`): `connectTimeout`, `readTimeout` (ISO durations; also under `timeout:
//! {connectTimeout, readIdleTimeout}`), `followRedirects` (true), `allowFailed` (false; the top-level
//! `allowFailed` of Request is the deprecated spelling), `auth: {type: BASIC, username, password}` or
//! `{type: BEARER, token}`, `basicAuthUser`/`basicAuthPassword`. `sslOptions:
//! {insecureTrustAllCertificates: true}` disables certificate checks.
//!
//! Request outputs `code`, `headers` (name -> list of values), `body` (text, JSON stays a string as in
//! Kestra) and `uri`; Download streams the body into internal storage and outputs `uri`, `code`,
//! `length`, `headers`. A non-2xx status fails the task unless `allowFailed`.
//!
//! http.Trigger (a [`PollingTrigger`]) sends the request with `allowFailed` (a status never fails
//! it), renders `responseCondition` (default `{{ response.statusCode < 400 }}`) with `response
//! {statusCode, body, headers}` (`body` is the text, `""` when empty) and, when it is true, starts an
//! execution whose `trigger` variables are http.Request's outputs: `uri`, `code`, `headers`, `body`.
//! `failOnEmptyResponse` (false) makes an empty body an evaluation error.

use std::time::Duration;

use async_trait::async_trait;
use futures::StreamExt;
use indexmap::IndexMap;
use serde_json::{Map, Value};

use crate::flow::Property;
use crate::flow::duration;
use crate::flow::tasks::{HttpDownload, HttpRequest};
use crate::flow::triggers::HttpTrigger;
use crate::storage::{SCHEME, StorageError};
use crate::worker::context::{RunContext, set_variable};
use crate::worker::polling::PollingTrigger;
use crate::worker::runner::{RunnableTask, TaskError, TaskOutput};

#[derive(Debug, Default)]
struct HttpOptions {
    connect_timeout: Option<Duration>,
    read_timeout: Option<Duration>,
    follow_redirects: Option<bool>,
    allow_failed: Option<bool>,
    basic_auth: Option<(String, Option<String>)>,
    bearer: Option<String>,
    insecure: bool,
}

fn as_duration(value: Option<&Value>, name: &str) -> Result<Option<Duration>, TaskError> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => duration::parse(s)
            .map(Some)
            .map_err(|e| TaskError::invalid(name, e.to_string())),
        Some(Value::Number(n)) => Ok(n.as_f64().map(Duration::from_secs_f64)),
        Some(other) => Err(TaskError::invalid(name, format!("not a duration: {other}"))),
    }
}

fn as_bool(value: Option<&Value>) -> Option<bool> {
    match value? {
        Value::Bool(b) => Some(*b),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_string(value: Option<&Value>) -> Option<String> {
    match value? {
        Value::String(s) => Some(s.clone()),
        Value::Null => None,
        other => Some(other.to_string()),
    }
}

fn parse_options(
    ctx: &RunContext,
    options: &Option<Value>,
    ssl: &Option<Value>,
) -> Result<HttpOptions, TaskError> {
    let mut out = HttpOptions::default();
    if let Some(options) = options {
        let o = ctx.render_value(options, true)?;
        let timeout = o.get("timeout");
        out.connect_timeout = as_duration(
            o.get("connectTimeout")
                .or_else(|| timeout.and_then(|t| t.get("connectTimeout"))),
            "options.connectTimeout",
        )?;
        out.read_timeout = as_duration(
            o.get("readTimeout")
                .or_else(|| timeout.and_then(|t| t.get("readIdleTimeout"))),
            "options.readTimeout",
        )?;
        out.follow_redirects = as_bool(o.get("followRedirects"));
        out.allow_failed = as_bool(o.get("allowFailed"));
        if let Some(user) = as_string(o.get("basicAuthUser")) {
            out.basic_auth = Some((user, as_string(o.get("basicAuthPassword"))));
        }
        if let Some(auth) = o.get("auth") {
            let kind = as_string(auth.get("type"))
                .unwrap_or_default()
                .to_ascii_uppercase();
            match kind.as_str() {
                "BASIC" => {
                    let user = as_string(auth.get("username")).unwrap_or_default();
                    out.basic_auth = Some((user, as_string(auth.get("password"))));
                }
                "BEARER" => out.bearer = as_string(auth.get("token")),
                other => {
                    return Err(TaskError::invalid(
                        "options.auth.type",
                        format!("unknown authentication '{other}' (BASIC or BEARER)"),
                    ));
                }
            }
        }
    }
    if let Some(ssl) = ssl {
        let s = ctx.render_value(ssl, true)?;
        out.insecure = as_bool(s.get("insecureTrustAllCertificates")).unwrap_or(false);
    }
    Ok(out)
}

fn client(options: &HttpOptions) -> Result<reqwest::Client, TaskError> {
    let mut builder = reqwest::Client::builder();
    if let Some(t) = options.connect_timeout {
        builder = builder.connect_timeout(t);
    }
    if let Some(t) = options.read_timeout {
        builder = builder.read_timeout(t);
    }
    if options.follow_redirects == Some(false) {
        builder = builder.redirect(reqwest::redirect::Policy::none());
    }
    if options.insecure {
        builder = builder.danger_accept_invalid_certs(true);
    }
    Ok(builder.build()?)
}

/// The request parts common to Request and Download.
struct RequestSpec<'a> {
    uri: &'a str,
    method: &'a Option<String>,
    body: &'a Option<Value>,
    form_data: &'a Option<Value>,
    content_type: &'a Option<String>,
    headers: &'a Option<Property<IndexMap<String, Value>>>,
}

async fn build_request(
    ctx: &RunContext,
    spec: RequestSpec<'_>,
    options: &HttpOptions,
) -> Result<(reqwest::RequestBuilder, String), TaskError> {
    let uri = ctx.render(spec.uri)?.trim().to_string();
    let method = match spec.method {
        Some(m) => ctx.render(m)?.trim().to_ascii_uppercase(),
        None => "GET".to_string(),
    };
    let method = reqwest::Method::from_bytes(method.as_bytes())
        .map_err(|_| TaskError::invalid("method", format!("'{method}' is not an HTTP method")))?;
    let url = reqwest::Url::parse(&uri)
        .map_err(|e| TaskError::invalid("uri", format!("'{uri}': {e}")))?;
    let mut request = client(options)?.request(method, url);
    let content_type = match spec.content_type {
        Some(c) => Some(ctx.render(c)?),
        None => None,
    };
    if let Some(headers) = ctx.render_opt_property("headers", spec.headers)? {
        for (name, value) in headers {
            let value = match value {
                Value::String(s) => s,
                Value::Array(items) => items
                    .iter()
                    .map(|v| {
                        v.as_str()
                            .map(str::to_string)
                            .unwrap_or_else(|| v.to_string())
                    })
                    .collect::<Vec<_>>()
                    .join(", "),
                other => other.to_string(),
            };
            request = request.header(name, value);
        }
    }
    if let Some((user, password)) = &options.basic_auth {
        request = request.basic_auth(user, password.as_ref());
    }
    if let Some(token) = &options.bearer {
        request = request.bearer_auth(token);
    }
    if let Some(form) = spec.form_data {
        let fields: Map<String, Value> = ctx.render_json("formData", form)?;
        let multipart = content_type
            .as_deref()
            .is_some_and(|c| c.to_ascii_lowercase().starts_with("multipart/form-data"));
        if multipart {
            let mut parts = reqwest::multipart::Form::new();
            for (name, value) in fields {
                let text = value
                    .as_str()
                    .map(str::to_string)
                    .unwrap_or_else(|| value.to_string());
                if text.starts_with(SCHEME) {
                    let bytes = ctx.read_file(&text).await?;
                    let file_name = text.rsplit('/').next().unwrap_or("file").to_string();
                    parts = parts.part(
                        name,
                        reqwest::multipart::Part::bytes(bytes.to_vec()).file_name(file_name),
                    );
                } else {
                    parts = parts.text(name, text);
                }
            }
            request = request.multipart(parts);
        } else {
            let pairs: Vec<(String, String)> = fields
                .into_iter()
                .map(|(k, v)| {
                    let v = v
                        .as_str()
                        .map(str::to_string)
                        .unwrap_or_else(|| v.to_string());
                    (k, v)
                })
                .collect();
            request = request.form(&pairs);
        }
    } else if let Some(body) = spec.body {
        let text = match body {
            Value::String(s) => ctx.render(s)?,
            other => ctx.render_value(other, true)?.to_string(),
        };
        request = request
            .header(
                reqwest::header::CONTENT_TYPE,
                content_type.unwrap_or_else(|| "application/json".to_string()),
            )
            .body(text);
    } else if let Some(c) = content_type {
        request = request.header(reqwest::header::CONTENT_TYPE, c);
    }
    Ok((request, uri))
}

fn headers_output(headers: &reqwest::header::HeaderMap) -> Value {
    let mut out: Map<String, Value> = Map::new();
    for (name, value) in headers {
        let value = Value::String(String::from_utf8_lossy(value.as_bytes()).into_owned());
        match out.get_mut(name.as_str()) {
            Some(Value::Array(values)) => values.push(value),
            _ => {
                out.insert(name.as_str().to_string(), Value::Array(vec![value]));
            }
        }
    }
    Value::Object(out)
}

async fn send(
    ctx: &RunContext,
    request: reqwest::RequestBuilder,
) -> Result<reqwest::Response, TaskError> {
    tokio::select! {
        r = request.send() => Ok(r?),
        _ = ctx.cancellation().cancelled() => Err(TaskError::Cancelled),
    }
}

/// Sends http.Request's request and returns its outputs `uri`, `code`, `headers`, `body` (text,
/// `null` when empty). A non-2xx status is an error unless `allow_failed`; an empty body is one with
/// `fail_on_empty`.
async fn request_output(
    ctx: &RunContext,
    spec: RequestSpec<'_>,
    options: &HttpOptions,
    allow_failed: bool,
    fail_on_empty: bool,
) -> Result<Map<String, Value>, TaskError> {
    let (request, uri) = build_request(ctx, spec, options).await?;
    let response = send(ctx, request).await?;
    let status = response.status();
    let headers = headers_output(response.headers());
    let body = tokio::select! {
        b = response.text() => b?,
        _ = ctx.cancellation().cancelled() => return Err(TaskError::Cancelled),
    };
    ctx.logger()
        .debug(format!("request {uri} answered {}", status.as_u16()));
    if !status.is_success() && !allow_failed {
        return Err(TaskError::Failed(format!(
            "Failed http request with response code '{}'{}",
            status.as_u16(),
            if body.is_empty() {
                String::new()
            } else {
                format!(" and body: {}", body.chars().take(500).collect::<String>())
            }
        )));
    }
    if body.is_empty() && fail_on_empty {
        return Err(TaskError::Failed("No response from server".into()));
    }
    let mut out = Map::new();
    out.insert("uri".into(), Value::String(uri));
    out.insert("code".into(), Value::from(status.as_u16()));
    out.insert("headers".into(), headers);
    out.insert(
        "body".into(),
        if body.is_empty() {
            Value::Null
        } else {
            Value::String(body)
        },
    );
    Ok(out)
}

/// http.Trigger's default `responseCondition`.
pub const DEFAULT_RESPONSE_CONDITION: &str = "{{ response.statusCode < 400 }}";

#[async_trait]
impl PollingTrigger for HttpTrigger {
    async fn evaluate(
        &self,
        ctx: &mut RunContext,
    ) -> Result<Option<Map<String, Value>>, TaskError> {
        let options = parse_options(ctx, &self.options, &self.ssl_options)?;
        if ctx
            .render_opt_property("encryptBody", &self.encrypt_body)?
            .unwrap_or(false)
        {
            return Err(TaskError::invalid(
                "encryptBody",
                "encrypted body outputs are not supported by this worker",
            ));
        }
        let fail_on_empty = ctx
            .render_opt_property("failOnEmptyResponse", &self.fail_on_empty_response)?
            .unwrap_or(false);
        let output = request_output(
            ctx,
            RequestSpec {
                uri: &self.uri,
                method: &self.method,
                body: &self.body,
                form_data: &self.form_data,
                content_type: &self.content_type,
                headers: &self.headers,
            },
            &options,
            true,
            fail_on_empty,
        )
        .await?;
        let response = serde_json::json!({
            "statusCode": output.get("code").cloned().unwrap_or(Value::Null),
            "body": match output.get("body") {
                Some(Value::String(b)) => Value::String(b.clone()),
                _ => Value::String(String::new()),
            },
            "headers": output.get("headers").cloned().unwrap_or(Value::Null),
        });
        set_variable(ctx.variables_mut(), "response", response);
        let condition = self
            .response_condition
            .as_deref()
            .unwrap_or(DEFAULT_RESPONSE_CONDITION);
        if ctx.evaluate_condition(condition)? {
            ctx.logger().info(format!(
                "responseCondition is true ({} answered {}): starting an execution",
                output
                    .get("uri")
                    .and_then(Value::as_str)
                    .unwrap_or_default(),
                output.get("code").cloned().unwrap_or(Value::Null)
            ));
            Ok(Some(output))
        } else {
            Ok(None)
        }
    }
}

#[async_trait]
impl RunnableTask for HttpRequest {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let options = parse_options(ctx, &self.options, &self.ssl_options)?;
        if ctx
            .render_opt_property("encryptBody", &self.encrypt_body)?
            .unwrap_or(false)
        {
            return Err(TaskError::invalid(
                "encryptBody",
                "encrypted body outputs are not supported by this worker",
            ));
        }
        let allow_failed = match options.allow_failed {
            Some(a) => a,
            None => ctx
                .render_opt_property("allowFailed", &self.allow_failed)?
                .unwrap_or(false),
        };
        let fail_on_empty = ctx
            .render_opt_property("failOnEmptyResponse", &self.fail_on_empty_response)?
            .unwrap_or(false);
        let out = request_output(
            ctx,
            RequestSpec {
                uri: &self.uri,
                method: &self.method,
                body: &self.body,
                form_data: &self.form_data,
                content_type: &self.content_type,
                headers: &self.headers,
            },
            &options,
            allow_failed,
            fail_on_empty,
        )
        .await?;
        Ok(TaskOutput::with_outputs(out))
    }
}

#[async_trait]
impl RunnableTask for HttpDownload {
    async fn run(&self, ctx: &mut RunContext) -> Result<TaskOutput, TaskError> {
        let options = parse_options(ctx, &self.options, &self.ssl_options)?;
        let fail_on_empty = ctx
            .render_opt_property("failOnEmptyResponse", &self.fail_on_empty_response)?
            .unwrap_or(true);
        let (request, uri) = build_request(
            ctx,
            RequestSpec {
                uri: &self.uri,
                method: &self.method,
                body: &self.body,
                form_data: &self.form_data,
                content_type: &self.content_type,
                headers: &self.headers,
            },
            &options,
        )
        .await?;
        let response = send(ctx, request).await?;
        let status = response.status();
        if !status.is_success() && !options.allow_failed.unwrap_or(false) {
            return Err(TaskError::Failed(format!(
                "Failed http request with response code '{}'",
                status.as_u16()
            )));
        }
        let headers = headers_output(response.headers());
        let file_name = match &self.save_as {
            Some(s) => ctx.render(s)?,
            None => response
                .url()
                .path_segments()
                .and_then(|mut s| s.next_back().map(str::to_string))
                .filter(|s| !s.is_empty())
                .map(|s| {
                    percent_encoding::percent_decode_str(&s)
                        .decode_utf8_lossy()
                        .replace('/', "_")
                })
                .unwrap_or_else(|| "download".to_string()),
        };
        let hint = uri.clone();
        let cancel = ctx.cancellation().clone();
        let stream = response
            .bytes_stream()
            .take_until(async move { cancel.cancelled().await })
            .map(move |chunk| {
                chunk.map_err(|e| StorageError::Backend {
                    operation: "download",
                    uri: hint.clone(),
                    source: Box::new(e),
                })
            })
            .boxed();
        let (stored, length) = ctx.put_stream(&file_name, stream).await?;
        if ctx.cancellation().is_cancelled() {
            return Err(TaskError::Cancelled);
        }
        if length == 0 && fail_on_empty {
            return Err(TaskError::Failed("No response from server".into()));
        }
        let mut out = Map::new();
        out.insert("uri".into(), Value::String(stored));
        out.insert("code".into(), Value::from(status.as_u16()));
        out.insert("length".into(), Value::from(length));
        out.insert("headers".into(), headers);
        Ok(TaskOutput::with_outputs(out))
    }
}
