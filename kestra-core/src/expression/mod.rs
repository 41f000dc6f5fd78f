//! Kestra's Pebble expression language: rendering of `{{ ... }}` templates in dynamic properties.
//!
//! This module owns the [`ExpressionEngine`] (a minijinja environment holding Kestra's filters,
//! functions and tests), the Pebble -> minijinja translation, the [`ExpressionHost`] seam through
//! which templates reach storage, KV and logs, and the [`ExpressionError`] type.
//!
//! # How Pebble is run on minijinja
//!
//! Templates are translated before compiling (see `translate`): `a ?? b`, `a ??? b`, `c ? x : y`,
//! `a contains b`, `null`, `1..3`, `{% elseif %}`, `"#{interpolation}"`, Pebble's 0-based
//! `loop.index`/`loop.revindex` and Pebble's operator precedences (`~` binds tighter than `|`, as in
//! Pebble). String literals are never rewritten. Undefined variables are errors naming the variable
//! except as operand of `is defined`, `is null`, `is empty`, `??`, `???` and `| default`, where the
//! lookup is lenient: a missing attribute anywhere along `a.b.c` yields undefined.
//!
//! # Choices where Kestra is unclear or Java-specific
//!
//! - Output: strings as-is, `null` renders as an empty string, maps and lists as compact JSON,
//!   booleans `true`/`false`, floats with at least one decimal (`1.0`) like Java's `Double`.
//! - `/` divides integers as integers when both operands are integers (Java `Long` arithmetic).
//! - `date` without `timeZone` uses UTC (Kestra uses the JVM zone, which is UTC in its images);
//!   integers are epoch seconds; a bare `2024-01-01` is midnight of that day.
//! - `split` takes its delimiter literally (Java takes a regex); `slugify` does not fold accents.
//! - `fromIon`/`toIon` handle the JSON-compatible subset of Ion text.
//! - `randomInt(min, max)` is `min` inclusive, `max` exclusive; `uuid()` is a random UUID v4;
//!   `range(a, b, step)` and `a..b` include `b`, as Pebble does.
//! - `encrypt(key?, value)`: AES-256-GCM, output base64(12-byte IV || ciphertext || tag); the key
//!   is the argument (base64 of 32 bytes, or 32 raw characters) or else `encryption_key`.
//! - `kv(key)` without `namespace` passes `flow.namespace` of the context (or none) to the host.
//! - `{% include %}`, `{% import %}`, `{% extends %}` are rejected: no template loader exists.
//! - `render(expr)` renders recursively until the result has no more expressions; every level
//!   counts towards `max_render_depth`, as do nested `render` calls. `renderOnce` renders once.

mod builtins;
mod javafmt;
mod translate;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use minijinja::{Environment, ErrorKind, UndefinedBehavior};
use serde_json::Value;

pub use translate::MAX_EXPRESSION_DEPTH;
use translate::{TYPED_RESULT, Translated};

/// Options of an [`ExpressionEngine`].
#[derive(Debug, Clone)]
pub struct ExpressionOptions {
    /// Maximum nesting of `render()` calls (default 5).
    pub max_render_depth: usize,
    /// minijinja fuel per render: stops runaway loops (default `Some(1_000_000)`; `None` disables).
    pub fuel: Option<u64>,
    /// The largest string a filter or function may build, in bytes (default 16 MiB): `join`,
    /// `replace`, `indent` and the like check the size of their result before building it, every
    /// other filter and function after.
    pub max_value_size: usize,
    /// The `globals` variable.
    pub globals: Value,
    /// `kestra.environment`.
    pub kestra_environment: Option<String>,
    /// `kestra.url`.
    pub kestra_url: Option<String>,
    /// Default key of `encrypt`/`decrypt`: base64 of 32 bytes.
    pub encryption_key: Option<String>,
    /// Prefix of the process environment variables exposed as `envs` (default `ENV_`).
    pub env_prefix: String,
}

impl Default for ExpressionOptions {
    fn default() -> Self {
        Self {
            max_render_depth: 5,
            fuel: Some(1_000_000),
            max_value_size: DEFAULT_MAX_VALUE_SIZE,
            globals: Value::Object(serde_json::Map::new()),
            kestra_environment: None,
            kestra_url: None,
            encryption_key: None,
            env_prefix: "ENV_".to_string(),
        }
    }
}

/// Default of [`ExpressionOptions::max_value_size`]: 16 MiB.
pub const DEFAULT_MAX_VALUE_SIZE: usize = 16 * 1024 * 1024;

/// Errors of expression rendering.
#[derive(Debug, thiserror::Error, Clone, PartialEq)]
pub enum ExpressionError {
    /// The template does not parse.
    #[error("syntax error at line {line}: {message} (in `{excerpt}`)")]
    Syntax {
        /// What is wrong.
        message: String,
        /// The start of the template.
        excerpt: String,
        /// 1-based line.
        line: usize,
    },
    /// A variable or attribute is not defined. Worded as Kestra's (`VariableRenderer`): "Missing
    /// variable: 'x' on '`<template>`' at line 1".
    #[error("Missing variable: '{name}' on '{template}' at line {line}")]
    Undefined {
        /// The expression that is undefined.
        name: String,
        /// minijinja's description.
        message: String,
        /// The template being rendered.
        template: String,
        /// 1-based line of the template.
        line: usize,
    },
    /// A filter, function or operator failed.
    #[error("rendering failed: {message}")]
    Render {
        /// What failed.
        message: String,
    },
    /// `render()` nested deeper than `max_render_depth`.
    #[error("render depth limit exceeded (max {limit})")]
    DepthExceeded {
        /// The configured limit.
        limit: usize,
    },
    /// The fuel limit stopped the template (probably a runaway loop).
    #[error("expression used too much fuel: runaway loop or too large template")]
    FuelExhausted,
    /// A filter or function would build a value larger than
    /// [`ExpressionOptions::max_value_size`].
    #[error(
        "expression value too large: {size} bytes, more than the limit of {limit} bytes (kestra.limits.expression.max-value-size)"
    )]
    TooLarge {
        /// The size the value would have had, in bytes.
        size: usize,
        /// The configured limit.
        limit: usize,
    },
    /// The host (storage, KV, logs) failed or is not available.
    #[error("{0}")]
    Host(String),
    /// A secret is missing.
    #[error("cannot find secret `{0}`")]
    SecretNotFound(String),
}

/// What templates may reach outside pure data. The worker/executor implements it.
pub trait ExpressionHost: Send + Sync {
    /// `read(uri)`: the content of an internal-storage or namespace file.
    fn read_file(&self, uri: &str) -> Result<String, String>;
    /// `fileSize(uri)` and `fileEmpty(uri)`.
    fn file_size(&self, uri: &str) -> Result<u64, String>;
    /// `fileExists(uri)`.
    fn file_exists(&self, uri: &str) -> Result<bool, String>;
    /// `fileURI(path)`: the URI of a namespace file.
    fn file_uri(&self, path: &str) -> Result<String, String>;
    /// `kv(key, namespace)`.
    fn kv(&self, namespace: Option<&str>, key: &str) -> Result<Option<Value>, String>;
    /// `errorLogs()`: the error logs of the current execution.
    fn error_logs(&self) -> Result<Vec<Value>, String>;
}

/// The host used when none is given: every call fails with a clear message.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoHost;

const NO_STORAGE: &str = "storage is not available in this context";

impl ExpressionHost for NoHost {
    fn read_file(&self, _uri: &str) -> Result<String, String> {
        Err(NO_STORAGE.into())
    }
    fn file_size(&self, _uri: &str) -> Result<u64, String> {
        Err(NO_STORAGE.into())
    }
    fn file_exists(&self, _uri: &str) -> Result<bool, String> {
        Err(NO_STORAGE.into())
    }
    fn file_uri(&self, _path: &str) -> Result<String, String> {
        Err(NO_STORAGE.into())
    }
    fn kv(&self, _namespace: Option<&str>, _key: &str) -> Result<Option<Value>, String> {
        Err("the KV store is not available in this context".into())
    }
    fn error_logs(&self) -> Result<Vec<Value>, String> {
        Err("logs are not available in this context".into())
    }
}

/// Options shared with the filters and functions.
#[derive(Debug)]
pub(crate) struct Shared {
    pub options: ExpressionOptions,
}

/// Compiled templates kept before the environment is rebuilt (bounds memory).
const MAX_CACHED_TEMPLATES: usize = 4096;

/// Renders Kestra expressions. Build it once and share it (`Send + Sync`).
pub struct ExpressionEngine {
    shared: Arc<Shared>,
    /// The current generation of the environment; its loader caches compiled templates.
    env: RwLock<Arc<Environment<'static>>>,
    loaded: Arc<AtomicUsize>,
    translations: Mutex<HashMap<(String, bool), Arc<Translated>>>,
    base_context: minijinja::Value,
}

impl std::fmt::Debug for ExpressionEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ExpressionEngine")
            .field("options", &self.shared.options)
            .finish_non_exhaustive()
    }
}

impl Default for ExpressionEngine {
    fn default() -> Self {
        Self::new(ExpressionOptions::default())
    }
}

fn env_vars(prefix: &str) -> serde_json::Map<String, Value> {
    std::env::vars()
        .filter_map(|(k, v)| {
            k.strip_prefix(prefix)
                .map(|rest| (rest.to_lowercase(), Value::String(v)))
        })
        .collect()
}

impl ExpressionEngine {
    /// Builds the engine; reads the `ENV_*` environment variables once.
    pub fn new(options: ExpressionOptions) -> Self {
        let envs = env_vars(&options.env_prefix);
        let base = serde_json::json!({
            "envs": envs,
            "globals": options.globals,
            "kestra": {
                "environment": options.kestra_environment,
                "url": options.kestra_url,
            },
        });
        let shared = Arc::new(Shared { options });
        let loaded = Arc::new(AtomicUsize::new(0));
        let env = build_environment(&shared, &loaded);
        Self {
            shared,
            env: RwLock::new(Arc::new(env)),
            loaded,
            translations: Mutex::new(HashMap::new()),
            base_context: minijinja::Value::from(minijinja::value::Serde(&base)),
        }
    }

    /// Renders a template to a string. Non-string results of `{{ }}` are written as JSON.
    pub fn render(&self, template: &str, ctx: &Value) -> Result<String, ExpressionError> {
        self.render_inner(template, ctx, None)
    }

    /// Renders with a host giving access to storage, KV and logs.
    pub fn render_with_host(
        &self,
        template: &str,
        ctx: &Value,
        host: &Arc<dyn ExpressionHost>,
    ) -> Result<String, ExpressionError> {
        self.render_inner(template, ctx, Some(host))
    }

    /// Typed rendering: a template that is exactly one `{{ expr }}` (after trimming) yields the
    /// typed value; anything else the rendered string.
    pub fn render_typed(&self, template: &str, ctx: &Value) -> Result<Value, ExpressionError> {
        self.render_typed_inner(template, ctx, None)
    }

    /// [`render_typed`](Self::render_typed) with a host.
    pub fn render_typed_with_host(
        &self,
        template: &str,
        ctx: &Value,
        host: &Arc<dyn ExpressionHost>,
    ) -> Result<Value, ExpressionError> {
        self.render_typed_inner(template, ctx, Some(host))
    }

    /// Renders every string inside a JSON value (map keys too).
    pub fn render_value(
        &self,
        value: &Value,
        ctx: &Value,
        typed: bool,
    ) -> Result<Value, ExpressionError> {
        self.render_value_inner(value, ctx, typed, None)
    }

    /// [`render_value`](Self::render_value) with a host.
    pub fn render_value_with_host(
        &self,
        value: &Value,
        ctx: &Value,
        typed: bool,
        host: &Arc<dyn ExpressionHost>,
    ) -> Result<Value, ExpressionError> {
        self.render_value_inner(value, ctx, typed, Some(host))
    }

    /// Evaluates a condition (a bare expression or a template) with Kestra's truthiness.
    pub fn evaluate_condition(&self, expr: &str, ctx: &Value) -> Result<bool, ExpressionError> {
        self.evaluate_condition_inner(expr, ctx, None)
    }

    /// [`evaluate_condition`](Self::evaluate_condition) with a host.
    pub fn evaluate_condition_with_host(
        &self,
        expr: &str,
        ctx: &Value,
        host: &Arc<dyn ExpressionHost>,
    ) -> Result<bool, ExpressionError> {
        self.evaluate_condition_inner(expr, ctx, Some(host))
    }

    fn render_value_inner(
        &self,
        value: &Value,
        ctx: &Value,
        typed: bool,
        host: Option<&Arc<dyn ExpressionHost>>,
    ) -> Result<Value, ExpressionError> {
        Ok(match value {
            Value::String(s) => {
                if typed {
                    self.render_typed_inner(s, ctx, host)?
                } else {
                    Value::String(self.render_inner(s, ctx, host)?)
                }
            }
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|v| self.render_value_inner(v, ctx, typed, host))
                    .collect::<Result<_, _>>()?,
            ),
            Value::Object(map) => {
                let mut out = serde_json::Map::with_capacity(map.len());
                for (k, v) in map {
                    let key = self.render_inner(k, ctx, host)?;
                    out.insert(key, self.render_value_inner(v, ctx, typed, host)?);
                }
                Value::Object(out)
            }
            other => other.clone(),
        })
    }

    fn evaluate_condition_inner(
        &self,
        expr: &str,
        ctx: &Value,
        host: Option<&Arc<dyn ExpressionHost>>,
    ) -> Result<bool, ExpressionError> {
        let value = if has_expression(expr) {
            self.render_typed_inner(expr, ctx, host)?
        } else {
            let wrapped = format!("{{{{ {} }}}}", expr.trim());
            self.render_typed_inner(&wrapped, ctx, host)?
        };
        Ok(is_truthy(&value))
    }

    fn render_inner(
        &self,
        template: &str,
        ctx: &Value,
        host: Option<&Arc<dyn ExpressionHost>>,
    ) -> Result<String, ExpressionError> {
        if !has_expression(template) {
            return Ok(template.to_string());
        }
        let translated = self.translate(template, false)?;
        let env = self.current_env();
        let context = self.context(ctx);
        let _frame = builtins::push_frame(context.clone(), host.cloned(), env.clone());
        let tmpl = env
            .get_template(&translated.source)
            .map_err(|e| map_error(e, template, &translated.source))?;
        render_bounded(&tmpl, context, self.shared.options.max_value_size).map_err(|e| match e {
            Ok(e) => map_error(e, template, &translated.source),
            Err(typed) => typed,
        })
    }

    fn render_typed_inner(
        &self,
        template: &str,
        ctx: &Value,
        host: Option<&Arc<dyn ExpressionHost>>,
    ) -> Result<Value, ExpressionError> {
        if !has_expression(template) {
            return Ok(Value::String(template.to_string()));
        }
        let translated = self.translate(template, true)?;
        if translated.single_expression.is_none() {
            return self.render_inner(template, ctx, host).map(Value::String);
        }
        let env = self.current_env();
        let context = self.context(ctx);
        let _frame = builtins::push_frame(context.clone(), host.cloned(), env.clone());
        let tmpl = env
            .get_template(&translated.source)
            .map_err(|e| map_error(e, template, &translated.source))?;
        let captured = tmpl
            .render_captured(context)
            .map_err(|e| map_error(e, template, &translated.source))?;
        let value = captured
            .state()
            .lookup(TYPED_RESULT)
            .unwrap_or(minijinja::Value::UNDEFINED);
        if value.is_undefined() {
            return Err(ExpressionError::Undefined {
                name: translated.single_expression.clone().unwrap_or_default(),
                message: "the expression is undefined".into(),
                template: template.to_string(),
                line: 1,
            });
        }
        builtins::to_json(&value).map_err(|message| ExpressionError::Render { message })
    }

    fn current_env(&self) -> Arc<Environment<'static>> {
        if self.loaded.load(Ordering::Relaxed) > MAX_CACHED_TEMPLATES {
            let fresh = Arc::new(build_environment(&self.shared, &self.loaded));
            if let Ok(mut guard) = self.env.write() {
                self.loaded.store(0, Ordering::Relaxed);
                *guard = fresh.clone();
            }
            return fresh;
        }
        match self.env.read() {
            Ok(guard) => guard.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn context(&self, ctx: &Value) -> minijinja::Value {
        let user = minijinja::Value::from(minijinja::value::Serde(ctx));
        minijinja::context! { ..self.base_context.clone(), ..user }
    }

    fn translate(&self, template: &str, typed: bool) -> Result<Arc<Translated>, ExpressionError> {
        let key = (template.to_string(), typed);
        if let Ok(cache) = self.translations.lock()
            && let Some(t) = cache.get(&key)
        {
            return Ok(t.clone());
        }
        let mut t =
            translate::translate_template(template).map_err(|e| ExpressionError::Syntax {
                message: e.message,
                excerpt: excerpt(template),
                line: e.line,
            })?;
        if typed && let Some(expr) = &t.single_expression {
            t.source = format!("{{% set {TYPED_RESULT} = ({expr}) %}}");
        }
        let t = Arc::new(t);
        if let Ok(mut cache) = self.translations.lock() {
            if cache.len() > MAX_CACHED_TEMPLATES {
                cache.clear();
            }
            cache.insert(key, t.clone());
        }
        Ok(t)
    }
}

/// Checks what flow validation can check of a template without rendering it: that no
/// expression nests deeper than [`MAX_EXPRESSION_DEPTH`]. Returns the message and the 1-based line
/// of the template. Other syntax problems are reported when the template is rendered, as Kestra does.
pub fn check_template_depth(template: &str) -> Result<(), (String, usize)> {
    if !has_expression(template) {
        return Ok(());
    }
    match translate::translate_template(template) {
        Err(e) if e.too_deep => Err((e.message, e.line)),
        _ => Ok(()),
    }
}

/// Does the string contain a Pebble tag?
fn has_expression(s: &str) -> bool {
    s.contains("{{") || s.contains("{%") || s.contains("{#")
}

/// Kestra's truthiness for conditions.
fn is_truthy(v: &Value) -> bool {
    match v {
        Value::Null => false,
        Value::Bool(b) => *b,
        Value::Number(n) => n.as_f64().is_some_and(|f| f != 0.0),
        Value::String(s) => {
            let t = s.trim();
            !(t.is_empty()
                || t.eq_ignore_ascii_case("false")
                || t == "0"
                || t == "-0"
                || t == "null")
        }
        Value::Array(a) => !a.is_empty(),
        Value::Object(o) => !o.is_empty(),
    }
}

fn excerpt(template: &str) -> String {
    let mut s: String = template.chars().take(80).collect();
    if template.chars().count() > 80 {
        s.push_str("...");
    }
    s
}

fn map_error(err: minijinja::Error, template: &str, source: &str) -> ExpressionError {
    // errors raised by our own functions carry a marker as their source
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(&err);
    while let Some(e) = cur {
        if let Some(m) = e.downcast_ref::<builtins::Marker>() {
            return m.0.clone();
        }
        cur = e.source();
    }
    let detail = err.detail().unwrap_or("").to_string();
    match err.kind() {
        ErrorKind::SyntaxError => ExpressionError::Syntax {
            message: if detail.is_empty() {
                err.kind().to_string()
            } else {
                detail
            },
            excerpt: excerpt(template),
            line: err.line().unwrap_or(1),
        },
        ErrorKind::UndefinedError => {
            let name = err
                .range()
                .and_then(|r| source.get(r))
                .map(clean_undefined_name)
                .unwrap_or_else(|| "?".into());
            ExpressionError::Undefined {
                name,
                message: err.to_string(),
                template: template.to_string(),
                line: err.line().unwrap_or(1),
            }
        }
        ErrorKind::OutOfFuel => ExpressionError::FuelExhausted,
        _ => ExpressionError::Render {
            message: if detail.is_empty() {
                err.to_string()
            } else {
                detail
            },
        },
    }
}

fn clean_undefined_name(s: &str) -> String {
    s.trim()
        .trim_start_matches('(')
        .trim_end_matches(')')
        .to_string()
}

/// The output of a render, refused once it would grow past `limit` bytes: printed values and
/// literal text alike, in loops too.
struct BoundedOutput {
    bytes: Vec<u8>,
    limit: usize,
    /// The size the output would have reached when it was refused.
    refused: Option<usize>,
}

impl std::io::Write for BoundedOutput {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let size = self.bytes.len().saturating_add(buf.len());
        if size > self.limit {
            self.refused = Some(size);
            return Err(std::io::Error::other("output too large"));
        }
        self.bytes.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Renders `tmpl` into at most `limit` bytes: `Err(Ok(_))` is minijinja's error, `Err(Err(_))`
/// the output that grew too large ([`ExpressionError::TooLarge`]).
pub(crate) fn render_bounded(
    tmpl: &minijinja::Template<'_, '_>,
    context: minijinja::Value,
    limit: usize,
) -> Result<String, Result<minijinja::Error, ExpressionError>> {
    let mut out = BoundedOutput {
        bytes: Vec::new(),
        limit,
        refused: None,
    };
    match tmpl.render_captured_to(context, &mut out) {
        Ok(_) => {}
        Err(e) => {
            return Err(match out.refused {
                Some(size) => Err(ExpressionError::TooLarge { size, limit }),
                None => Ok(e),
            });
        }
    }
    String::from_utf8(out.bytes).map_err(|e| {
        Err(ExpressionError::Render {
            message: format!("the output is not valid UTF-8: {e}"),
        })
    })
}

fn build_environment(shared: &Arc<Shared>, loaded: &Arc<AtomicUsize>) -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_fuel(shared.options.fuel);
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    if let Ok(syntax) = minijinja::syntax::SyntaxConfig::builder()
        .keep_trailing_newline(true)
        .build()
    {
        env.set_syntax(syntax);
    }
    let counter = loaded.clone();
    // the template name is its (translated) source: the loader compiles it once per generation
    env.set_loader(move |name| {
        counter.fetch_add(1, Ordering::Relaxed);
        Ok(Some(name.to_string()))
    });
    env.set_formatter(builtins::format_output);
    builtins::register(&mut env, shared.clone());
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truthiness() {
        assert!(!is_truthy(&Value::String("false".into())));
        assert!(!is_truthy(&Value::String(" ".into())));
        assert!(is_truthy(&Value::String("yes".into())));
        assert!(!is_truthy(&serde_json::json!(0)));
        assert!(!is_truthy(&serde_json::json!([])));
    }
}
