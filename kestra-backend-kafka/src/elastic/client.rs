//! A small Elasticsearch REST client over `reqwest` + `serde_json` (see the module doc for why).

use std::time::Duration;

use kestra_core::repository::RepositoryError;
use reqwest::{Method, StatusCode, Url};
use serde_json::{Value, json};

/// Largest `from + size` of one search (Elasticsearch's default `index.max_result_window`).
pub(crate) const MAX_RESULT_WINDOW: u64 = 10_000;

/// Documents fetched per request when reading every match (`search_after` pages).
const SCROLL_PAGE: u64 = 1_000;

/// Errors of the Elasticsearch client (wrapped in [`RepositoryError::Backend`]).
#[derive(Debug, thiserror::Error)]
pub enum ElasticError {
    /// The URL is not a usable base URL.
    #[error("invalid Elasticsearch URL '{url}': {reason}")]
    Url {
        /// The URL given.
        url: String,
        /// Why it is refused.
        reason: String,
    },
    /// The HTTP request failed (connection refused, timeout, ...).
    #[error("{method} {path}: {source}")]
    Http {
        /// HTTP method.
        method: Method,
        /// Path requested.
        path: String,
        /// Cause.
        #[source]
        source: reqwest::Error,
    },
    /// Elasticsearch answered with an error status.
    #[error("{method} {path}: HTTP {status}: {body}")]
    Status {
        /// HTTP method.
        method: Method,
        /// Path requested.
        path: String,
        /// Status code.
        status: StatusCode,
        /// Response body (truncated).
        body: String,
    },
    /// A bulk request had failed items.
    #[error("bulk request on {index}: {count} item(s) failed, first: {first}")]
    Bulk {
        /// Index written.
        index: String,
        /// Failed items.
        count: usize,
        /// The first failure.
        first: String,
    },
}

/// An HTTP client bound to one Elasticsearch URL.
#[derive(Clone, Debug)]
pub(crate) struct Client {
    http: reqwest::Client,
    base: Url,
    /// Refresh parameter of every write (`true`, `wait_for` or `false`).
    pub(crate) refresh: &'static str,
}

/// A response: status and JSON body (`Value::Null` when empty).
pub(crate) struct Response {
    pub(crate) status: StatusCode,
    pub(crate) body: Value,
}

impl Client {
    pub(crate) fn new(
        url: &str,
        refresh: &'static str,
        timeout: Duration,
    ) -> Result<Client, ElasticError> {
        let mut base = Url::parse(url).map_err(|e| ElasticError::Url {
            url: url.to_string(),
            reason: e.to_string(),
        })?;
        if !matches!(base.scheme(), "http" | "https") || base.cannot_be_a_base() {
            return Err(ElasticError::Url {
                url: url.to_string(),
                reason: "expected http://host:port or https://host:port".to_string(),
            });
        }
        if !base.path().ends_with('/') {
            let path = format!("{}/", base.path());
            base.set_path(&path);
        }
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .build()
            .map_err(|e| ElasticError::Url {
                url: url.to_string(),
                reason: e.to_string(),
            })?;
        Ok(Client {
            http,
            base,
            refresh,
        })
    }

    /// `base` + path segments (each percent-encoded) + query pairs.
    fn url(&self, segments: &[&str], query: &[(&str, &str)]) -> Url {
        let mut url = self.base.clone();
        {
            // The base is an http(s) URL (checked in `new`): it has path segments.
            if let Ok(mut path) = url.path_segments_mut() {
                path.pop_if_empty();
                for s in segments {
                    path.push(s);
                }
            }
        }
        if !query.is_empty() {
            url.query_pairs_mut().extend_pairs(query);
        }
        url
    }

    /// Send a request; any status is returned (callers decide which are errors).
    pub(crate) async fn send(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Body>,
    ) -> Result<Response, ElasticError> {
        let url = self.url(segments, query);
        let path = url.path().to_string();
        let mut req = self.http.request(method.clone(), url);
        match body {
            Some(Body::Json(v)) => req = req.json(&v),
            Some(Body::NdJson(s)) => {
                req = req
                    .header(reqwest::header::CONTENT_TYPE, "application/x-ndjson")
                    .body(s)
            }
            None => {}
        }
        let resp = req.send().await.map_err(|source| ElasticError::Http {
            method: method.clone(),
            path: path.clone(),
            source,
        })?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|source| ElasticError::Http {
            method: method.clone(),
            path: path.clone(),
            source,
        })?;
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()))
        };
        Ok(Response { status, body })
    }

    /// Send and require a success status.
    pub(crate) async fn ok(
        &self,
        method: Method,
        segments: &[&str],
        query: &[(&str, &str)],
        body: Option<Body>,
    ) -> Result<Value, ElasticError> {
        let r = self.send(method.clone(), segments, query, body).await?;
        if r.status.is_success() {
            Ok(r.body)
        } else {
            Err(status_error(method, segments, r))
        }
    }

    /// GET a document's `_source` (realtime); `None` when absent.
    pub(crate) async fn get(&self, index: &str, id: &str) -> Result<Option<Value>, ElasticError> {
        self.get_with(index, id, &[]).await
    }

    /// GET a document's `_source` as searches see it (`realtime=false`: from the last refresh, not
    /// the translog); `None` when absent. A document found this way is found by a search too.
    pub(crate) async fn get_searchable(
        &self,
        index: &str,
        id: &str,
    ) -> Result<Option<Value>, ElasticError> {
        self.get_with(index, id, &[("realtime", "false")]).await
    }

    async fn get_with(
        &self,
        index: &str,
        id: &str,
        query: &[(&str, &str)],
    ) -> Result<Option<Value>, ElasticError> {
        let id = &*doc_id(id);
        let r = self
            .send(Method::GET, &[index, "_doc", id], query, None)
            .await?;
        if r.status == StatusCode::NOT_FOUND {
            return Ok(None);
        }
        if !r.status.is_success() {
            return Err(status_error(Method::GET, &[index, "_doc", id], r));
        }
        Ok(r.body.get("_source").cloned())
    }

    /// One search request (hits and total from one reader: they agree).
    pub(crate) async fn search(&self, index: &str, body: Value) -> Result<Value, ElasticError> {
        self.ok(
            Method::POST,
            &[index, "_search"],
            &[],
            Some(Body::Json(body)),
        )
        .await
    }

    /// Every `_source` matching `query`, sorted by `sort` (whose last key must be unique), read in
    /// `search_after` pages so that no result window limits it.
    pub(crate) async fn search_all(
        &self,
        index: &str,
        query: Value,
        sort: Value,
    ) -> Result<Vec<Value>, ElasticError> {
        let mut out = Vec::new();
        let mut after: Option<Value> = None;
        loop {
            let mut body = json!({
                "query": query,
                "sort": sort,
                "size": SCROLL_PAGE,
                "track_total_hits": false,
            });
            if let Some(a) = &after {
                body["search_after"] = a.clone();
            }
            let r = self.search(index, body).await?;
            let hits = hits(&r);
            let n = hits.len() as u64;
            for h in hits {
                after = h.get("sort").cloned();
                if let Some(s) = h.get("_source") {
                    out.push(s.clone());
                }
            }
            if n < SCROLL_PAGE {
                return Ok(out);
            }
        }
    }

    /// Run a `_bulk` request on `index`; returns each item's result (`created`, `updated`,
    /// `deleted`, `not_found`, ... or `conflict` for a version conflict the caller expected).
    pub(crate) async fn bulk(
        &self,
        index: &str,
        lines: String,
        allow_conflicts: bool,
    ) -> Result<Vec<String>, ElasticError> {
        if lines.is_empty() {
            return Ok(Vec::new());
        }
        let (started, bytes) = (std::time::Instant::now(), lines.len());
        let r = self
            .ok(
                Method::POST,
                &[index, "_bulk"],
                &[("refresh", self.refresh)],
                Some(Body::NdJson(lines)),
            )
            .await?;
        tracing::trace!(
            index,
            bytes,
            refresh = self.refresh,
            ms = started.elapsed().as_secs_f64() * 1000.0,
            "bulk request"
        );
        let mut results = Vec::new();
        let mut failed = Vec::new();
        for item in r["items"].as_array().into_iter().flatten() {
            let Some((_, op)) = item.as_object().and_then(|o| o.iter().next()) else {
                continue;
            };
            let status = op["status"].as_u64().unwrap_or(0);
            if status == 409 && allow_conflicts {
                results.push("conflict".to_string());
            } else if op.get("error").is_some() {
                failed.push(op["error"].to_string());
                results.push("error".to_string());
            } else {
                results.push(op["result"].as_str().unwrap_or("").to_string());
            }
        }
        if let Some(first) = failed.first() {
            return Err(ElasticError::Bulk {
                index: index.to_string(),
                count: failed.len(),
                first: first.clone(),
            });
        }
        Ok(results)
    }
}

/// A request body.
pub(crate) enum Body {
    Json(Value),
    NdJson(String),
}

fn status_error(method: Method, segments: &[&str], r: Response) -> ElasticError {
    let mut body = r.body.to_string();
    if body.len() > 2_000 {
        let mut cut = 2_000;
        while !body.is_char_boundary(cut) {
            cut -= 1;
        }
        body.truncate(cut);
    }
    ElasticError::Status {
        method,
        path: segments.join("/"),
        status: r.status,
        body,
    }
}

/// The hits of a search response.
/// Elasticsearch refuses a document `_id` over 512 bytes.
pub(crate) const MAX_DOC_ID_BYTES: usize = 512;

/// The `_id` of the document whose key is `key`: the key itself, or - over
/// [`MAX_DOC_ID_BYTES`] (a very long tenant + namespace + id) - `sha256-` and the hex SHA-256 of
/// the key, so that every key has a document (the full key stays in the document's `key` field).
/// Idempotent: an id already hashed is short and kept as is.
pub(crate) fn doc_id(key: &str) -> std::borrow::Cow<'_, str> {
    use sha2::Digest;
    if key.len() <= MAX_DOC_ID_BYTES {
        return std::borrow::Cow::Borrowed(key);
    }
    let digest = sha2::Sha256::digest(key.as_bytes());
    let mut id = String::with_capacity(7 + 64);
    id.push_str("sha256-");
    for b in digest {
        id.push_str(&format!("{b:02x}"));
    }
    std::borrow::Cow::Owned(id)
}

pub(crate) fn hits(r: &Value) -> &[Value] {
    r["hits"]["hits"].as_array().map_or(&[], |v| v.as_slice())
}

/// The total of a search response (with `track_total_hits: true`).
pub(crate) fn total(r: &Value) -> u64 {
    r["hits"]["total"]["value"].as_u64().unwrap_or(0)
}

/// Wrap a client error as a repository error.
pub(crate) fn backend(operation: &'static str) -> impl FnOnce(ElasticError) -> RepositoryError {
    move |e| RepositoryError::backend(operation, e)
}

/// Escape `*`, `?` and `\` for a wildcard pattern.
pub(crate) fn wildcard_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// Case-insensitive substring match of `q` on any of `fields` (keyword fields), or a phrase match
/// on the `.text` sub-field of `long_fields` (for values longer than the keyword limit).
pub(crate) fn text_query(q: &str, fields: &[&str], long_fields: &[&str]) -> Value {
    let pattern = format!("*{}*", wildcard_escape(q));
    let mut should: Vec<Value> = fields
        .iter()
        .chain(long_fields)
        .map(|f| json!({"wildcard": {*f: {"value": pattern, "case_insensitive": true}}}))
        .collect();
    for f in long_fields {
        should.push(json!({"match_phrase": {format!("{f}.text"): q}}));
    }
    json!({"bool": {"should": should, "minimum_should_match": 1}})
}

/// `namespace` equal to `ns` or one of its children (`ns.` prefix).
pub(crate) fn namespace_query(field: &str, ns: &str) -> Value {
    json!({"bool": {"should": [
        {"term": {field: ns}},
        {"prefix": {field: format!("{ns}.")}},
    ], "minimum_should_match": 1}})
}

/// Date rendering for documents and range filters (RFC 3339, UTC, as precise as the value).
pub(crate) fn date(d: chrono::DateTime<chrono::Utc>) -> String {
    d.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true)
}
