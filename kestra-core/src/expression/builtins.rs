//! Kestra's filters, functions and tests, registered on the minijinja environment.

use std::cell::RefCell;
use std::sync::Arc;

use base64::Engine as _;
use chrono::{DateTime, Duration, Months, Utc};
use chrono_tz::Tz;
use minijinja::value::{Rest, ValueOrKwargs};
use minijinja::{Environment, Error, ErrorKind, Output, State};
use serde_json::{Map, Value as Json};
use sha2::Digest as _;

use super::javafmt;
use super::{ExpressionError, ExpressionHost, NoHost, Shared, translate};

type MjValue = minijinja::Value;

/// Carries one of our own errors through minijinja so the engine can return it unchanged.
#[derive(Debug)]
pub(crate) struct Marker(pub ExpressionError);

impl std::fmt::Display for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for Marker {}

/// One render in progress on this thread.
struct Frame {
    ctx: MjValue,
    host: Option<Arc<dyn ExpressionHost>>,
    env: Arc<Environment<'static>>,
}

thread_local! {
    static FRAMES: RefCell<Vec<Frame>> = const { RefCell::new(Vec::new()) };
}

/// Pops the frame pushed by [`push_frame`] when dropped.
pub(crate) struct FrameGuard;

impl Drop for FrameGuard {
    fn drop(&mut self) {
        FRAMES.with(|f| {
            f.borrow_mut().pop();
        });
    }
}

/// Registers the context, host and environment of a render starting on this thread.
pub(crate) fn push_frame(
    ctx: MjValue,
    host: Option<Arc<dyn ExpressionHost>>,
    env: Arc<Environment<'static>>,
) -> FrameGuard {
    FRAMES.with(|f| f.borrow_mut().push(Frame { ctx, host, env }));
    FrameGuard
}

fn depth() -> usize {
    FRAMES.with(|f| f.borrow().len())
}

fn current_ctx() -> MjValue {
    FRAMES.with(|f| {
        f.borrow()
            .last()
            .map(|fr| fr.ctx.clone())
            .unwrap_or_default()
    })
}

fn current_env() -> Option<Arc<Environment<'static>>> {
    FRAMES.with(|f| f.borrow().last().map(|fr| fr.env.clone()))
}

fn with_host<T>(f: impl FnOnce(&dyn ExpressionHost) -> Result<T, String>) -> Result<T, FnError> {
    let host = FRAMES.with(|fr| fr.borrow().last().and_then(|x| x.host.clone()));
    let r = match host {
        Some(h) => f(h.as_ref()),
        None => f(&NoHost),
    };
    r.map_err(|m| FnError::Typed(ExpressionError::Host(m)))
}

/// Error of a filter or function.
enum FnError {
    Msg(String),
    Typed(ExpressionError),
}

impl From<String> for FnError {
    fn from(s: String) -> Self {
        FnError::Msg(s)
    }
}

impl From<&str> for FnError {
    fn from(s: &str) -> Self {
        FnError::Msg(s.to_string())
    }
}

fn to_mj_error(what: &str, e: FnError) -> Error {
    match e {
        FnError::Msg(m) => Error::new(ErrorKind::InvalidOperation, format!("{what}: {m}")),
        FnError::Typed(t) => {
            Error::new(ErrorKind::InvalidOperation, format!("{what}: {t}")).with_source(Marker(t))
        }
    }
}

type FnResult = Result<Json, FnError>;

/// Converts a minijinja value to JSON.
pub(crate) fn to_json(v: &MjValue) -> Result<Json, String> {
    if v.is_undefined() {
        return Ok(Json::Null);
    }
    serde_json::to_value(v).map_err(|e| format!("cannot convert value to JSON: {e}"))
}

fn from_json(v: &Json) -> MjValue {
    MjValue::from(minijinja::value::Serde(v))
}

/// Positional and named arguments, converted to JSON.
struct Args {
    pos: Vec<Json>,
    named: Map<String, Json>,
}

impl Args {
    fn parse(values: &[MjValue]) -> Result<Self, Error> {
        let mut pos = Vec::new();
        let mut named = Map::new();
        for v in values {
            if v.is_kwargs() {
                if let Json::Object(m) =
                    to_json(v).map_err(|e| Error::new(ErrorKind::InvalidOperation, e))?
                {
                    named.extend(m);
                }
                continue;
            }
            if v.is_undefined() {
                return Err(Error::new(
                    ErrorKind::UndefinedError,
                    "an argument is undefined",
                ));
            }
            pos.push(to_json(v).map_err(|e| Error::new(ErrorKind::InvalidOperation, e))?);
        }
        Ok(Self { pos, named })
    }

    fn get(&self, i: usize, name: &str) -> Option<&Json> {
        self.named
            .get(name)
            .or_else(|| self.pos.get(i))
            .filter(|v| !v.is_null())
    }

    fn str(&self, i: usize, name: &str) -> Result<Option<String>, FnError> {
        match self.get(i, name) {
            None => Ok(None),
            Some(Json::String(s)) => Ok(Some(s.clone())),
            Some(other) => Ok(Some(display(other))),
        }
    }

    fn req_str(&self, i: usize, name: &str) -> Result<String, FnError> {
        self.str(i, name)?
            .ok_or_else(|| FnError::Msg(format!("missing argument `{name}`")))
    }

    fn i64(&self, i: usize, name: &str) -> Result<Option<i64>, FnError> {
        match self.get(i, name) {
            None => Ok(None),
            Some(v) => as_i64(v)
                .map(Some)
                .ok_or_else(|| FnError::Msg(format!("argument `{name}` must be a number"))),
        }
    }

    fn bool(&self, i: usize, name: &str) -> Option<bool> {
        match self.get(i, name) {
            Some(Json::Bool(b)) => Some(*b),
            Some(Json::String(s)) => Some(s.eq_ignore_ascii_case("true")),
            _ => None,
        }
    }
}

fn as_i64(v: &Json) -> Option<i64> {
    match v {
        Json::Number(n) => n.as_i64().or_else(|| n.as_f64().map(|f| f as i64)),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

fn as_f64(v: &Json) -> Option<f64> {
    match v {
        Json::Number(n) => n.as_f64(),
        Json::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

/// How a value prints: strings raw, null empty, containers as JSON.
pub(crate) fn display(v: &Json) -> String {
    match v {
        Json::Null => String::new(),
        Json::String(s) => s.clone(),
        Json::Bool(b) => b.to_string(),
        Json::Number(n) => {
            if let Some(f) = n.as_f64().filter(|_| n.is_f64()) {
                format_float(f)
            } else {
                n.to_string()
            }
        }
        other => serde_json::to_string(other).unwrap_or_default(),
    }
}

fn format_float(f: f64) -> String {
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e16 {
        format!("{f:.1}")
    } else {
        format!("{f}")
    }
}

/// The output formatter: Kestra writes non-string values as JSON and null as nothing.
pub(crate) fn format_output(
    out: &mut Output,
    _state: &mut State,
    value: &MjValue,
) -> Result<(), Error> {
    if value.is_undefined() {
        return Err(Error::new(
            ErrorKind::UndefinedError,
            "cannot print an undefined value",
        ));
    }
    if let Some(s) = value.as_str() {
        return out.write_str(s).map_err(Error::from);
    }
    let json = to_json(value).map_err(|e| Error::new(ErrorKind::InvalidOperation, e))?;
    out.write_str(&display(&json)).map_err(Error::from)
}

fn json_num(f: f64) -> Json {
    if f.fract() == 0.0 && f.abs() < 9.0e15 {
        Json::from(f as i64)
    } else {
        serde_json::Number::from_f64(f)
            .map(Json::Number)
            .unwrap_or(Json::Null)
    }
}

type FilterFn = fn(&Json, &Args, &Shared) -> FnResult;
type FunctionFn = fn(&State, &Args, &Shared) -> FnResult;

fn add_filter(
    env: &mut Environment<'static>,
    shared: &Arc<Shared>,
    name: &'static str,
    f: FilterFn,
) {
    let shared = shared.clone();
    env.add_filter(
        name,
        move |value: MjValue, args: Rest<ValueOrKwargs>| -> Result<MjValue, Error> {
            if value.is_undefined() {
                return Err(Error::new(
                    ErrorKind::UndefinedError,
                    format!("the input of filter `{name}` is undefined"),
                ));
            }
            let args = Args::parse(&args.into_values())?;
            let input = to_json(&value).map_err(|e| Error::new(ErrorKind::InvalidOperation, e))?;
            f(&input, &args, &shared)
                .and_then(|v| check_output(&shared, v))
                .map(|v| from_json(&v))
                .map_err(|e| to_mj_error(&format!("filter `{name}`"), e))
        },
    );
}

/// Every string a filter or function returns counts against the size limit.
fn check_output(shared: &Shared, v: Json) -> FnResult {
    if let Json::String(s) = &v {
        check_size(shared, s.len())?;
    }
    Ok(v)
}

fn add_function(
    env: &mut Environment<'static>,
    shared: &Arc<Shared>,
    name: &'static str,
    f: FunctionFn,
) {
    let shared = shared.clone();
    env.add_function(
        name,
        move |state: &State, args: Rest<ValueOrKwargs>| -> Result<MjValue, Error> {
            let args = Args::parse(&args.into_values())?;
            f(state, &args, &shared)
                .and_then(|v| check_output(&shared, v))
                .map(|v| from_json(&v))
                .map_err(|e| to_mj_error(&format!("function `{name}`"), e))
        },
    );
}

/// Registers every filter, function and test.
pub(crate) fn register(env: &mut Environment<'static>, shared: Arc<Shared>) {
    let filters: &[(&'static str, FilterFn)] = &[
        ("abbreviate", f_abbreviate),
        ("abs", f_abs),
        ("capitalize", f_capitalize),
        ("title", f_title),
        ("upper", |v, _, _| {
            Ok(Json::String(display(v).to_uppercase()))
        }),
        ("lower", |v, _, _| {
            Ok(Json::String(display(v).to_lowercase()))
        }),
        ("trim", |v, _, _| {
            Ok(Json::String(display(v).trim().to_string()))
        }),
        ("length", f_length),
        ("first", f_first),
        ("last", f_last),
        ("join", f_join),
        ("split", f_split),
        ("replace", f_replace),
        ("slice", f_slice),
        ("sort", |v, _, _| f_sort(v, false)),
        ("rsort", |v, _, _| f_sort(v, true)),
        ("reverse", f_reverse),
        ("merge", f_merge),
        ("distinct", f_distinct),
        ("chunk", f_chunk),
        ("keys", f_keys),
        ("values", f_values),
        ("flatten", f_flatten),
        ("number", f_number),
        ("numberFormat", f_number_format),
        ("date", f_date),
        ("dateAdd", f_date_add),
        ("timestamp", |v, a, _| f_timestamp(v, a, 0)),
        ("timestampMilli", |v, a, _| f_timestamp(v, a, 3)),
        ("timestampMicro", |v, a, _| f_timestamp(v, a, 6)),
        ("timestampNano", |v, a, _| f_timestamp(v, a, 9)),
        ("toJson", |v, _, _| {
            serde_json::to_string(v)
                .map(Json::String)
                .map_err(|e| FnError::Msg(e.to_string()))
        }),
        ("toIon", |v, _, _| Ok(Json::String(to_ion(v)))),
        ("yaml", |v, _, _| {
            serde_saphyr::to_string(v)
                .map(Json::String)
                .map_err(|e| FnError::Msg(e.to_string()))
        }),
        ("jq", f_jq),
        ("indent", |v, a, s| f_indent(v, a, s, false)),
        ("nindent", |v, a, s| f_indent(v, a, s, true)),
        ("slugify", f_slugify),
        ("substringBefore", |v, a, _| substring(v, a, false, false)),
        ("substringAfter", |v, a, _| substring(v, a, true, false)),
        ("substringBeforeLast", |v, a, _| {
            substring(v, a, false, true)
        }),
        ("substringAfterLast", |v, a, _| substring(v, a, true, true)),
        ("startsWith", |v, a, _| {
            Ok(Json::Bool(display(v).starts_with(&a.req_str(0, "prefix")?)))
        }),
        ("endsWith", |v, a, _| {
            Ok(Json::Bool(display(v).ends_with(&a.req_str(0, "suffix")?)))
        }),
        ("escapeChar", f_escape_char),
        ("urlencode", |v, _, _| {
            Ok(Json::String(url_encode(&display(v))))
        }),
        ("urldecode", f_urldecode),
        ("base64encode", |v, _, _| {
            Ok(Json::String(
                base64::engine::general_purpose::STANDARD.encode(display(v)),
            ))
        }),
        ("base64decode", f_base64decode),
        ("sha1", |v, _, _| {
            Ok(Json::String(hex::encode(sha1::Sha1::digest(
                display(v).as_bytes(),
            ))))
        }),
        ("sha256", |v, _, _| {
            Ok(Json::String(hex::encode(sha2::Sha256::digest(
                display(v).as_bytes(),
            ))))
        }),
        ("sha512", |v, _, _| {
            Ok(Json::String(hex::encode(sha2::Sha512::digest(
                display(v).as_bytes(),
            ))))
        }),
        ("md5", |v, _, _| {
            Ok(Json::String(hex::encode(md5::Md5::digest(
                display(v).as_bytes(),
            ))))
        }),
        ("className", f_class_name),
        ("string", |v, _, _| Ok(Json::String(display(v)))),
    ];
    for (name, f) in filters {
        add_filter(env, &shared, name, *f);
    }
    // `default` must see undefined and null inputs
    env.add_filter(
        "default",
        |value: MjValue, args: Rest<MjValue>| -> Result<MjValue, Error> {
            let fallback = args.first().cloned().unwrap_or_else(|| MjValue::from(""));
            let json = if value.is_undefined() {
                Json::Null
            } else {
                to_json(&value).unwrap_or(Json::Null)
            };
            if is_empty(&json) {
                Ok(fallback)
            } else {
                Ok(value)
            }
        },
    );

    let functions: &[(&'static str, FunctionFn)] = &[
        ("now", fn_now),
        ("fromJson", |_, a, _| {
            let s = a.req_str(0, "json")?;
            serde_json::from_str(&s).map_err(|e| FnError::Msg(format!("invalid JSON: {e}")))
        }),
        ("fromIon", |_, a, _| {
            let s = a.req_str(0, "ion")?;
            serde_json::from_str(&s).map_err(|e| {
                FnError::Msg(format!(
                    "invalid Ion (only its JSON subset is supported): {e}"
                ))
            })
        }),
        ("yaml", |_, a, _| {
            let s = a.req_str(0, "yaml")?;
            serde_saphyr::from_str::<Json>(&s)
                .map_err(|e| FnError::Msg(format!("invalid YAML: {e}")))
        }),
        ("secret", fn_secret),
        ("kv", fn_kv),
        ("read", |_, a, _| {
            let uri = a.req_str(0, "path")?;
            with_host(|h| h.read_file(&uri)).map(Json::String)
        }),
        ("fileURI", |_, a, _| {
            let p = a.req_str(0, "path")?;
            with_host(|h| h.file_uri(&p)).map(Json::String)
        }),
        ("fileSize", |_, a, _| {
            let p = a.req_str(0, "path")?;
            with_host(|h| h.file_size(&p)).map(Json::from)
        }),
        ("fileExists", |_, a, _| {
            let p = a.req_str(0, "path")?;
            with_host(|h| h.file_exists(&p)).map(Json::Bool)
        }),
        ("fileEmpty", |_, a, _| {
            let p = a.req_str(0, "path")?;
            with_host(|h| h.file_size(&p)).map(|s| Json::Bool(s == 0))
        }),
        ("render", |_, a, s| {
            fn_render(a, s, a.bool(1, "recursive").unwrap_or(true))
        }),
        ("renderOnce", |_, a, s| fn_render(a, s, false)),
        ("currentEachOutput", fn_current_each_output),
        ("tasksWithState", fn_tasks_with_state),
        ("encrypt", fn_encrypt),
        ("decrypt", fn_decrypt),
        ("uuid", |_, _, _| {
            Ok(Json::String(uuid::Uuid::new_v4().to_string()))
        }),
        ("id", |_, _, _| Ok(Json::String(random_id()))),
        ("randomInt", fn_random_int),
        ("randomPort", |_, _, _| {
            let l = std::net::TcpListener::bind("127.0.0.1:0")
                .map_err(|e| FnError::Msg(e.to_string()))?;
            let port = l
                .local_addr()
                .map_err(|e| FnError::Msg(e.to_string()))?
                .port();
            Ok(Json::from(port))
        }),
        ("range", fn_range),
        ("max", |_, a, _| fn_extreme(a, true)),
        ("min", |_, a, _| fn_extreme(a, false)),
        ("errorLogs", |_, _, _| {
            with_host(|h| h.error_logs()).map(Json::Array)
        }),
        ("printContext", |_, _, _| {
            let ctx = to_json(&current_ctx())?;
            serde_json::to_string_pretty(&ctx)
                .map(Json::String)
                .map_err(|e| FnError::Msg(e.to_string()))
        }),
        ("__kestra_contains", |_, a, _| {
            let (l, r) = (
                a.pos.first().cloned().unwrap_or(Json::Null),
                a.pos.get(1).cloned().unwrap_or(Json::Null),
            );
            Ok(Json::Bool(contains(&l, &r)))
        }),
        ("__kestra_div", fn_div),
    ];
    for (name, f) in functions {
        add_function(env, &shared, name, *f);
    }

    // The result of `~`, `+` and `*` (the translation wraps them): a string longer than
    // `max_value_size` bytes, or a list of more items, is refused as soon as it is built, so that
    // repeated concatenation cannot grow a value past about twice the limit.
    let sized = shared.clone();
    env.add_function(
        "__kestra_sized",
        move |value: MjValue| -> Result<MjValue, Error> {
            let limit = sized.options.max_value_size;
            if let Some(s) = value.as_str() {
                check_size(&sized, s.len()).map_err(|e| to_mj_error("operator", e))?;
            } else if value.kind() == minijinja::value::ValueKind::Seq
                && let Some(items) = value.len()
                && items > limit
            {
                return Err(to_mj_error(
                    "operator",
                    FnError::Msg(format!(
                        "list too large: {items} items, more than the limit of {limit} \
                         (kestra.limits.expression.max-value-size)"
                    )),
                ));
            }
            Ok(value)
        },
    );
    env.add_function(
        "__kestra_lookup",
        |state: &State, path: Rest<MjValue>| -> Result<MjValue, Error> {
            let mut iter = path.iter();
            let Some(first) = iter.next().and_then(|v| v.as_str().map(str::to_string)) else {
                return Ok(MjValue::UNDEFINED);
            };
            let mut cur = state.lookup(&first).unwrap_or(MjValue::UNDEFINED);
            for key in iter {
                if cur.is_undefined() || cur.is_none() {
                    return Ok(MjValue::UNDEFINED);
                }
                cur = cur.get_item(key).unwrap_or(MjValue::UNDEFINED);
            }
            Ok(cur)
        },
    );
    env.add_function(
        "__kestra_iter",
        |value: MjValue| -> Result<MjValue, Error> {
            if value.is_undefined() {
                return Err(Error::new(
                    ErrorKind::UndefinedError,
                    "cannot iterate over an undefined value",
                ));
            }
            if let Ok(Json::Object(m)) = to_json(&value)
                && value.kind() == minijinja::value::ValueKind::Map
            {
                let entries: Vec<Json> = m
                    .into_iter()
                    .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
                    .collect();
                return Ok(from_json(&Json::Array(entries)));
            }
            Ok(value)
        },
    );

    env.add_test("__kestra_null", |v: &MjValue| {
        v.is_undefined() || v.is_none()
    });
    env.add_test("__kestra_empty", |v: &MjValue| {
        v.is_undefined() || to_json(v).map(|j| is_empty(&j)).unwrap_or(false)
    });
    env.add_test("__kestra_json", |v: &MjValue| {
        v.as_str()
            .is_some_and(|s| serde_json::from_str::<Json>(s).is_ok())
    });
}

fn is_empty(v: &Json) -> bool {
    match v {
        Json::Null => true,
        Json::String(s) => s.trim().is_empty(),
        Json::Array(a) => a.is_empty(),
        Json::Object(o) => o.is_empty(),
        _ => false,
    }
}

fn contains(container: &Json, item: &Json) -> bool {
    match container {
        Json::Array(a) => match item {
            Json::Array(items) => items.iter().all(|i| a.iter().any(|x| json_eq(x, i))),
            _ => a.iter().any(|x| json_eq(x, item)),
        },
        Json::Object(m) => match item {
            Json::Array(items) => items.iter().all(|i| m.contains_key(&display(i))),
            _ => m.contains_key(&display(item)),
        },
        Json::String(s) => s.contains(&display(item)),
        _ => false,
    }
}

fn json_eq(a: &Json, b: &Json) -> bool {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x.as_f64() == y.as_f64(),
        _ => a == b,
    }
}

// ------------------------------------------------------------------------------------------
// Filters

fn f_abbreviate(v: &Json, a: &Args, _: &Shared) -> FnResult {
    let s = display(v);
    let max = a
        .i64(0, "length")?
        .ok_or("missing argument `length`")?
        .max(0) as usize;
    let n = s.chars().count();
    if n <= max {
        return Ok(Json::String(s));
    }
    let keep = max.saturating_sub(3);
    let mut out: String = s.chars().take(keep).collect();
    out.push_str("...");
    Ok(Json::String(out))
}

fn f_abs(v: &Json, _: &Args, _: &Shared) -> FnResult {
    match v {
        Json::Number(n) if n.is_i64() => Ok(Json::from(n.as_i64().unwrap_or(0).unsigned_abs())),
        other => as_f64(other)
            .map(|f| json_num_keep(f.abs(), other))
            .ok_or_else(|| "not a number".into()),
    }
}

fn json_num_keep(f: f64, original: &Json) -> Json {
    if matches!(original, Json::Number(n) if n.is_f64()) {
        serde_json::Number::from_f64(f)
            .map(Json::Number)
            .unwrap_or(Json::Null)
    } else {
        json_num(f)
    }
}

fn f_capitalize(v: &Json, _: &Args, _: &Shared) -> FnResult {
    let s = display(v);
    let mut c = s.chars();
    Ok(Json::String(match c.next() {
        Some(f) => f.to_uppercase().collect::<String>() + c.as_str(),
        None => String::new(),
    }))
}

fn f_title(v: &Json, _: &Args, _: &Shared) -> FnResult {
    let mut out = String::new();
    let mut next_upper = true;
    for ch in display(v).chars() {
        if ch.is_whitespace() {
            next_upper = true;
            out.push(ch);
        } else if next_upper {
            out.extend(ch.to_uppercase());
            next_upper = false;
        } else {
            out.extend(ch.to_lowercase());
        }
    }
    Ok(Json::String(out))
}

fn f_length(v: &Json, _: &Args, _: &Shared) -> FnResult {
    Ok(Json::from(match v {
        Json::Null => 0,
        Json::String(s) => s.chars().count(),
        Json::Array(a) => a.len(),
        Json::Object(o) => o.len(),
        other => display(other).chars().count(),
    }))
}

fn f_first(v: &Json, _: &Args, _: &Shared) -> FnResult {
    Ok(match v {
        Json::Array(a) => a.first().cloned().unwrap_or(Json::Null),
        Json::String(s) => s
            .chars()
            .next()
            .map(|c| Json::String(c.to_string()))
            .unwrap_or(Json::Null),
        Json::Object(o) => o.values().next().cloned().unwrap_or(Json::Null),
        other => other.clone(),
    })
}

fn f_last(v: &Json, _: &Args, _: &Shared) -> FnResult {
    Ok(match v {
        Json::Array(a) => a.last().cloned().unwrap_or(Json::Null),
        Json::String(s) => s
            .chars()
            .last()
            .map(|c| Json::String(c.to_string()))
            .unwrap_or(Json::Null),
        Json::Object(o) => o.values().next_back().cloned().unwrap_or(Json::Null),
        other => other.clone(),
    })
}

fn f_join(v: &Json, a: &Args, shared: &Shared) -> FnResult {
    let sep = a.str(0, "separator")?.unwrap_or_default();
    let items: Vec<String> = match v {
        Json::Array(items) => items.iter().map(display).collect(),
        other => vec![display(other)],
    };
    let size = items
        .iter()
        .map(String::len)
        .fold(0usize, usize::saturating_add)
        .saturating_add(sep.len().saturating_mul(items.len().saturating_sub(1)));
    check_size(shared, size)?;
    Ok(Json::String(items.join(&sep)))
}

/// Refuses to build a value of `size` bytes over [`ExpressionOptions::max_value_size`]
/// (`crate::expression::ExpressionOptions`).
fn check_size(shared: &Shared, size: usize) -> Result<(), FnError> {
    let limit = shared.options.max_value_size;
    if size > limit {
        return Err(FnError::Typed(ExpressionError::TooLarge { size, limit }));
    }
    Ok(())
}

/// The length of `s` once every `from` is replaced by `to` (counted before building it).
fn replaced_len(s: &str, from: &str, to: &str) -> usize {
    if from.is_empty() {
        // Java and Rust insert `to` between every character and at both ends
        let slots = s.chars().count().saturating_add(1);
        return s.len().saturating_add(slots.saturating_mul(to.len()));
    }
    let hits = s.matches(from).count();
    (s.len() - hits * from.len()).saturating_add(hits.saturating_mul(to.len()))
}

fn f_split(v: &Json, a: &Args, _: &Shared) -> FnResult {
    let s = display(v);
    let delim = a.req_str(0, "delimiter")?;
    let limit = a.i64(1, "limit")?;
    let parts: Vec<Json> = match limit {
        Some(l) if l > 0 => s
            .splitn(l as usize, delim.as_str())
            .map(|p| Json::String(p.into()))
            .collect(),
        _ => {
            let mut p: Vec<Json> = s
                .split(delim.as_str())
                .map(|p| Json::String(p.into()))
                .collect();
            // Java's String.split drops trailing empty strings when no limit is given
            while p.len() > 1 && p.last().is_some_and(|x| x.as_str() == Some("")) {
                p.pop();
            }
            p
        }
    };
    Ok(Json::Array(parts))
}

fn f_replace(v: &Json, a: &Args, shared: &Shared) -> FnResult {
    let mut s = display(v);
    match a.get(0, "replace_pairs") {
        Some(Json::Object(pairs)) => {
            for (from, to) in pairs {
                let to = display(to);
                check_size(shared, replaced_len(&s, from, &to))?;
                s = s.replace(from.as_str(), &to);
            }
        }
        Some(from) => {
            let to = a.str(1, "to")?.unwrap_or_default();
            let from = display(from);
            check_size(shared, replaced_len(&s, &from, &to))?;
            s = s.replace(&from, &to);
        }
        None => return Err("missing replacement map".into()),
    }
    Ok(Json::String(s))
}

fn f_slice(v: &Json, a: &Args, _: &Shared) -> FnResult {
    let from = a.i64(0, "fromIndex")?.unwrap_or(0).max(0) as usize;
    match v {
        Json::Array(items) => {
            let to = a
                .i64(1, "toIndex")?
                .map(|t| t.max(0) as usize)
                .unwrap_or(items.len())
                .min(items.len());
            if from > to {
                return Err(format!("fromIndex {from} is greater than toIndex {to}").into());
            }
            Ok(Json::Array(items[from..to].to_vec()))
        }
        other => {
            let chars: Vec<char> = display(other).chars().collect();
            let to = a
                .i64(1, "toIndex")?
                .map(|t| t.max(0) as usize)
                .unwrap_or(chars.len())
                .min(chars.len());
            if from > to {
                return Err(format!("fromIndex {from} is greater than toIndex {to}").into());
            }
            Ok(Json::String(chars[from..to].iter().collect()))
        }
    }
}

fn cmp_json(a: &Json, b: &Json) -> std::cmp::Ordering {
    match (a, b) {
        (Json::Number(x), Json::Number(y)) => x
            .as_f64()
            .partial_cmp(&y.as_f64())
            .unwrap_or(std::cmp::Ordering::Equal),
        (Json::String(x), Json::String(y)) => x.cmp(y),
        _ => display(a).cmp(&display(b)),
    }
}

fn f_sort(v: &Json, reverse: bool) -> FnResult {
    let Json::Array(items) = v else {
        return Err("can only sort a list".into());
    };
    let mut items = items.clone();
    items.sort_by(cmp_json);
    if reverse {
        items.reverse();
    }
    Ok(Json::Array(items))
}

fn f_reverse(v: &Json, _: &Args, _: &Shared) -> FnResult {
    Ok(match v {
        Json::Array(items) => Json::Array(items.iter().rev().cloned().collect()),
        other => Json::String(display(other).chars().rev().collect()),
    })
}

fn f_merge(v: &Json, a: &Args, _: &Shared) -> FnResult {
    let other = a.get(0, "items").cloned().unwrap_or(Json::Null);
    match (v, other) {
        (Json::Array(x), Json::Array(y)) => Ok(Json::Array(x.iter().cloned().chain(y).collect())),
        (Json::Array(x), y) => {
            let mut x = x.clone();
            x.push(y);
            Ok(Json::Array(x))
        }
        (Json::Object(x), Json::Object(y)) => {
            let mut m = x.clone();
            m.extend(y);
            Ok(Json::Object(m))
        }
        _ => Err("merge needs two lists or two maps".into()),
    }
}

fn f_distinct(v: &Json, _: &Args, _: &Shared) -> FnResult {
    let Json::Array(items) = v else {
        return Err("distinct needs a list".into());
    };
    let mut out: Vec<Json> = Vec::new();
    for i in items {
        if !out.iter().any(|x| json_eq(x, i)) {
            out.push(i.clone());
        }
    }
    Ok(Json::Array(out))
}

fn f_chunk(v: &Json, a: &Args, _: &Shared) -> FnResult {
    let Json::Array(items) = v else {
        return Err("chunk needs a list".into());
    };
    let size = a.i64(0, "size")?.ok_or("missing argument `size`")?;
    if size <= 0 {
        return Err("chunk size must be positive".into());
    }
    Ok(Json::Array(
        items
            .chunks(size as usize)
            .map(|c| Json::Array(c.to_vec()))
            .collect(),
    ))
}

fn f_keys(v: &Json, _: &Args, _: &Shared) -> FnResult {
    match v {
        Json::Object(m) => Ok(Json::Array(
            m.keys().map(|k| Json::String(k.clone())).collect(),
        )),
        Json::Array(a) => Ok(Json::Array((0..a.len()).map(Json::from).collect())),
        _ => Err("keys needs a map".into()),
    }
}

fn f_values(v: &Json, _: &Args, _: &Shared) -> FnResult {
    match v {
        Json::Object(m) => Ok(Json::Array(m.values().cloned().collect())),
        Json::Array(a) => Ok(Json::Array(a.clone())),
        _ => Err("values needs a map".into()),
    }
}

fn f_flatten(v: &Json, _: &Args, _: &Shared) -> FnResult {
    let Json::Array(items) = v else {
        return Err("flatten needs a list".into());
    };
    let mut out = Vec::new();
    for i in items {
        match i {
            Json::Array(inner) => out.extend(inner.iter().cloned()),
            other => out.push(other.clone()),
        }
    }
    Ok(Json::Array(out))
}

fn f_number(v: &Json, a: &Args, _: &Shared) -> FnResult {
    let s = display(v);
    let t = s.trim();
    let kind = a.str(0, "type")?.map(|k| k.to_uppercase());
    let bad = || FnError::Msg(format!("`{t}` is not a number"));
    match kind.as_deref() {
        Some("INT") | Some("INTEGER") | Some("LONG") => {
            t.parse::<i64>().map(Json::from).map_err(|_| bad())
        }
        Some("FLOAT") | Some("DOUBLE") | Some("BIGDECIMAL") => t
            .parse::<f64>()
            .ok()
            .and_then(serde_json::Number::from_f64)
            .map(Json::Number)
            .ok_or_else(bad),
        _ => {
            if let Ok(i) = t.parse::<i64>() {
                Ok(Json::from(i))
            } else {
                t.parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Json::Number)
                    .ok_or_else(bad)
            }
        }
    }
}

fn f_number_format(v: &Json, a: &Args, _: &Shared) -> FnResult {
    let f = as_f64(v).ok_or("input is not a number")?;
    let pattern = a.req_str(0, "format")?;
    Ok(Json::String(javafmt::decimal_format(f, &pattern)))
}

fn tz_arg(a: &Args, idx: usize) -> Result<Tz, FnError> {
    match a.str(idx, "timeZone")? {
        None => Ok(Tz::UTC),
        Some(z) => z
            .parse::<Tz>()
            .map_err(|_| FnError::Msg(format!("unknown time zone `{z}`"))),
    }
}

fn f_date(v: &Json, a: &Args, _: &Shared) -> FnResult {
    let format = a.str(0, "format")?.unwrap_or_else(|| "iso".into());
    let tz = tz_arg(a, 1)?;
    let existing = a.str(2, "existingFormat")?;
    let dt = javafmt::parse_date(v, existing.as_deref(), tz)?;
    Ok(Json::String(javafmt::format_date(&dt, &format)?))
}

fn add_unit(dt: DateTime<Tz>, amount: i64, unit: &str) -> Result<DateTime<Tz>, FnError> {
    let overflow = || FnError::Msg("date out of range".into());
    let unit = unit.to_uppercase();
    let d = match unit.as_str() {
        "NANOS" => Duration::nanoseconds(amount),
        "MICROS" => Duration::microseconds(amount),
        "MILLIS" => Duration::milliseconds(amount),
        "SECONDS" => Duration::seconds(amount),
        "MINUTES" => Duration::minutes(amount),
        "HOURS" => Duration::hours(amount),
        "HALF_DAYS" => Duration::hours(12 * amount),
        "DAYS" => Duration::days(amount),
        "WEEKS" => Duration::weeks(amount),
        "MONTHS" | "YEARS" | "DECADES" | "CENTURIES" => {
            let months = match unit.as_str() {
                "MONTHS" => amount,
                "YEARS" => amount * 12,
                "DECADES" => amount * 120,
                _ => amount * 1200,
            };
            let m = Months::new(months.unsigned_abs().min(u64::from(u32::MAX)) as u32);
            return if months >= 0 {
                dt.checked_add_months(m)
            } else {
                dt.checked_sub_months(m)
            }
            .ok_or_else(overflow);
        }
        other => return Err(format!("unknown time unit `{other}`").into()),
    };
    dt.checked_add_signed(d).ok_or_else(overflow)
}

fn f_date_add(v: &Json, a: &Args, _: &Shared) -> FnResult {
    let amount = a.i64(0, "amount")?.ok_or("missing argument `amount`")?;
    let unit = a.req_str(1, "unit")?;
    let format = a.str(2, "format")?.unwrap_or_else(|| "iso".into());
    let tz = tz_arg(a, 3)?;
    let existing = a.str(4, "existingFormat")?;
    let dt = javafmt::parse_date(v, existing.as_deref(), tz)?;
    let dt = add_unit(dt, amount, &unit)?;
    Ok(Json::String(javafmt::format_date(&dt, &format)?))
}

fn f_timestamp(v: &Json, a: &Args, digits: u32) -> FnResult {
    let tz = tz_arg(a, 0)?;
    let existing = a.str(1, "existingFormat")?;
    let dt = javafmt::parse_date(v, existing.as_deref(), tz)?;
    let secs = i128::from(dt.timestamp());
    let nanos = i128::from(dt.timestamp_subsec_nanos());
    let value = secs * 10i128.pow(digits) + nanos / 10i128.pow(9 - digits);
    i64::try_from(value)
        .map(Json::from)
        .map_err(|_| "timestamp out of range".into())
}

fn to_ion(v: &Json) -> String {
    match v {
        Json::Null => "null".into(),
        Json::Bool(b) => b.to_string(),
        Json::Number(n) => {
            if n.is_f64() {
                let f = n.as_f64().unwrap_or(0.0);
                format!("{f:e}").replace('e', "e")
            } else {
                n.to_string()
            }
        }
        Json::String(s) => serde_json::to_string(s).unwrap_or_default(),
        Json::Array(a) => format!("[{}]", a.iter().map(to_ion).collect::<Vec<_>>().join(",")),
        Json::Object(m) => {
            let fields: Vec<String> = m
                .iter()
                .map(|(k, v)| {
                    let ident = !k.is_empty()
                        && k.chars()
                            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
                        && !k.starts_with(|c: char| c.is_ascii_digit());
                    let key = if ident {
                        k.clone()
                    } else {
                        format!("'{}'", k.replace('\'', "\\'"))
                    };
                    format!("{key}:{}", to_ion(v))
                })
                .collect();
            format!("{{{}}}", fields.join(","))
        }
    }
}

fn f_jq(v: &Json, a: &Args, _: &Shared) -> FnResult {
    use jaq_core::load::{Arena, File, Loader};
    use jaq_core::{Compiler, Ctx, Vars, data, unwrap_valr};
    let program = a.req_str(0, "expression")?;
    // no access to the process environment or to other inputs
    let forbidden = ["env", "input", "inputs"];
    let defs = jaq_core::defs()
        .chain(jaq_std::defs())
        .chain(jaq_json::defs());
    let funs = jaq_core::funs()
        .chain(jaq_std::funs())
        .chain(jaq_json::funs())
        .filter(|f| !forbidden.contains(&f.0));
    let loader = Loader::new(defs);
    let arena = Arena::default();
    let modules = loader
        .load(
            &arena,
            File {
                code: program.as_str(),
                path: (),
            },
        )
        .map_err(|e| FnError::Msg(format!("invalid jq expression `{program}`: {e:?}")))?;
    let filter = Compiler::default()
        .with_funs(funs)
        .compile(modules)
        .map_err(|e| FnError::Msg(format!("invalid jq expression `{program}`: {e:?}")))?;
    // As Kestra's JqFilter: a string holding JSON is read as that JSON (a ForEach's
    // `taskrun.value` of an object item), any other string is a JSON string.
    let text = match v {
        Json::String(s) if serde_json::from_str::<Json>(s).is_ok() => s.clone(),
        other => serde_json::to_string(other).map_err(|e| FnError::Msg(e.to_string()))?,
    };
    let input = jaq_json::read::parse_single(text.as_bytes())
        .map_err(|e| FnError::Msg(format!("cannot read jq input: {e:?}")))?;
    let ctx = Ctx::<data::JustLut<jaq_json::Val>>::new(&filter.lut, Vars::new([]));
    let mut out = Vec::new();
    for r in filter.id.run((ctx, input)).map(unwrap_valr) {
        let val = r.map_err(|e| FnError::Msg(format!("jq failed: {e}")))?;
        let json = serde_json::from_str(&val.to_string())
            .map_err(|e| FnError::Msg(format!("jq produced a non-JSON value: {e}")))?;
        out.push(json);
    }
    Ok(Json::Array(out))
}

fn f_indent(v: &Json, a: &Args, shared: &Shared, newline_first: bool) -> FnResult {
    let amount = a
        .i64(0, "amount")?
        .ok_or("missing argument `amount`")?
        .max(0) as usize;
    let prefix = a.str(1, "prefix")?.unwrap_or_else(|| " ".into());
    let s = display(v);
    let lines = s.matches('\n').count().saturating_add(1);
    check_size(
        shared,
        prefix
            .len()
            .saturating_mul(amount)
            .saturating_mul(lines)
            .saturating_add(s.len()),
    )?;
    let pad = prefix.repeat(amount);
    let mut out = String::new();
    for (i, line) in s.split('\n').enumerate() {
        if i > 0 {
            out.push('\n');
        }
        if (i > 0 || newline_first) && !line.is_empty() {
            out.push_str(&pad);
        }
        out.push_str(line);
    }
    if newline_first {
        out.insert(0, '\n');
    }
    Ok(Json::String(out))
}

fn f_slugify(v: &Json, _: &Args, _: &Shared) -> FnResult {
    let mut out = String::new();
    let mut dash = false;
    for ch in display(v).to_lowercase().chars() {
        if ch.is_ascii_alphanumeric() {
            out.push(ch);
            dash = false;
        } else if !dash && !out.is_empty() {
            out.push('-');
            dash = true;
        }
    }
    while out.ends_with('-') {
        out.pop();
    }
    Ok(Json::String(out))
}

fn substring(v: &Json, a: &Args, after: bool, last: bool) -> FnResult {
    let s = display(v);
    let sep = a.req_str(0, "separator")?;
    let pos = if last { s.rfind(&sep) } else { s.find(&sep) };
    Ok(Json::String(match (pos, after) {
        (Some(p), false) => s[..p].to_string(),
        (Some(p), true) => s[p + sep.len()..].to_string(),
        (None, false) => s,
        (None, true) => String::new(),
    }))
}

fn f_escape_char(v: &Json, a: &Args, _: &Shared) -> FnResult {
    let s = display(v);
    let kind = a.req_str(0, "type")?;
    Ok(Json::String(match kind.to_lowercase().as_str() {
        "single" => s.replace('\'', "\\'"),
        "double" => s.replace('"', "\\\""),
        "shell" => s.replace('\'', "'\\''"),
        other => {
            return Err(format!("unknown escape type `{other}` (single, double or shell)").into());
        }
    }))
}

/// `application/x-www-form-urlencoded`, as Java's `URLEncoder`.
fn url_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'.' | b'-' | b'*' | b'_' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

fn f_urldecode(v: &Json, _: &Args, _: &Shared) -> FnResult {
    let s = display(v).replace('+', " ");
    percent_encoding::percent_decode_str(&s)
        .decode_utf8()
        .map(|c| Json::String(c.into_owned()))
        .map_err(|e| FnError::Msg(e.to_string()))
}

fn f_base64decode(v: &Json, _: &Args, _: &Shared) -> FnResult {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(display(v).trim())
        .map_err(|e| FnError::Msg(format!("invalid base64: {e}")))?;
    String::from_utf8(bytes)
        .map(Json::String)
        .map_err(|_| "decoded value is not UTF-8".into())
}

fn f_class_name(v: &Json, _: &Args, _: &Shared) -> FnResult {
    Ok(Json::String(
        match v {
            Json::Null => "null",
            Json::Bool(_) => "java.lang.Boolean",
            Json::Number(n) if n.is_f64() => "java.lang.Double",
            Json::Number(n) if n.as_i64().is_some_and(|i| i32::try_from(i).is_ok()) => {
                "java.lang.Integer"
            }
            Json::Number(_) => "java.lang.Long",
            Json::String(_) => "java.lang.String",
            Json::Array(_) => "java.util.ArrayList",
            Json::Object(_) => "java.util.LinkedHashMap",
        }
        .to_string(),
    ))
}

// ------------------------------------------------------------------------------------------
// Functions

fn fn_now(_: &State, a: &Args, _: &Shared) -> FnResult {
    let tz = tz_arg(a, 1)?;
    let format = a.str(0, "format")?.unwrap_or_else(|| "iso".into());
    let now = Utc::now().with_timezone(&tz);
    Ok(Json::String(javafmt::format_date(&now, &format)?))
}

fn fn_secret(_: &State, a: &Args, _: &Shared) -> FnResult {
    let key = a.req_str(0, "key")?;
    let var = format!("SECRET_{key}");
    let raw = std::env::var(&var)
        .map_err(|_| FnError::Typed(ExpressionError::SecretNotFound(key.clone())))?;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(raw.trim())
        .map_err(|e| FnError::Msg(format!("secret `{key}` is not valid base64: {e}")))?;
    String::from_utf8(bytes)
        .map(Json::String)
        .map_err(|_| FnError::Msg(format!("secret `{key}` is not UTF-8")))
}

fn fn_kv(state: &State, a: &Args, _: &Shared) -> FnResult {
    let key = a.req_str(0, "key")?;
    let namespace = match a.str(1, "namespace")? {
        Some(n) => Some(n),
        None => state
            .lookup("flow")
            .and_then(|f| f.get_attr("namespace").ok())
            .and_then(|n| n.as_str().map(str::to_string)),
    };
    let error_on_missing = a.bool(2, "errorOnMissing").unwrap_or(true);
    let value = with_host(|h| h.kv(namespace.as_deref(), &key))?;
    match value {
        Some(v) => Ok(v),
        None if error_on_missing => Err(FnError::Typed(ExpressionError::Host(format!(
            "the KV key `{key}` does not exist in namespace `{}`",
            namespace.unwrap_or_default()
        )))),
        None => Ok(Json::Null),
    }
}

fn fn_render(a: &Args, shared: &Shared, recursive: bool) -> FnResult {
    let Some(v) = a.get(0, "toRender") else {
        return Ok(Json::Null);
    };
    let Json::String(s) = v else {
        return Ok(v.clone());
    };
    render_string(s, shared, recursive).map(Json::String)
}

fn render_string(s: &str, shared: &Shared, recursive: bool) -> Result<String, FnError> {
    let limit = shared.options.max_render_depth;
    if depth() > limit {
        return Err(FnError::Typed(ExpressionError::DepthExceeded { limit }));
    }
    if !(s.contains("{{") || s.contains("{%") || s.contains("{#")) {
        return Ok(s.to_string());
    }
    let env = current_env().ok_or("no render in progress")?;
    let ctx = current_ctx();
    let translated = translate::translate_template(s)
        .map_err(|e| FnError::Msg(format!("syntax error at line {}: {}", e.line, e.message)))?;
    let host = FRAMES.with(|f| f.borrow().last().and_then(|x| x.host.clone()));
    let _guard = push_frame(ctx.clone(), host, env.clone());
    let tmpl = env
        .get_template(&translated.source)
        .map_err(|e| nested_error(&e))?;
    let out = crate::expression::render_bounded(&tmpl, ctx, shared.options.max_value_size)
        .map_err(|e| match e {
            Ok(e) => nested_error(&e),
            Err(typed) => FnError::Typed(typed),
        })?;
    if recursive && out != s && (out.contains("{{") || out.contains("{%")) {
        return render_string(&out, shared, true);
    }
    Ok(out)
}

fn nested_error(e: &Error) -> FnError {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(x) = cur {
        if let Some(m) = x.downcast_ref::<Marker>() {
            return FnError::Typed(m.0.clone());
        }
        cur = x.source();
    }
    FnError::Msg(e.to_string())
}

fn fn_current_each_output(state: &State, a: &Args, _: &Shared) -> FnResult {
    let mut outputs = a.get(0, "outputs").cloned().unwrap_or(Json::Null);
    let parents = state
        .lookup("parents")
        .map(|p| to_json(&p))
        .transpose()?
        .unwrap_or(Json::Null);
    if let Json::Array(parents) = parents {
        for parent in parents.iter().rev() {
            if let Some(value) = parent
                .get("taskrun")
                .and_then(|t| t.get("value"))
                .filter(|v| !v.is_null())
            {
                outputs = outputs.get(display(value)).cloned().unwrap_or(Json::Null);
            }
        }
    }
    let taskrun = state
        .lookup("taskrun")
        .map(|p| to_json(&p))
        .transpose()?
        .unwrap_or(Json::Null);
    if let Some(value) = taskrun.get("value").filter(|v| !v.is_null()) {
        outputs = outputs.get(display(value)).cloned().unwrap_or(Json::Null);
    }
    Ok(outputs)
}

fn fn_tasks_with_state(state: &State, a: &Args, _: &Shared) -> FnResult {
    let wanted = a.req_str(0, "state")?.to_uppercase();
    let tasks = state
        .lookup("tasks")
        .map(|p| to_json(&p))
        .transpose()?
        .unwrap_or(Json::Null);
    let mut out = Vec::new();
    if let Json::Object(tasks) = tasks {
        for (task_id, entry) in tasks {
            if let Some(s) = entry.get("state").and_then(Json::as_str) {
                if s.eq_ignore_ascii_case(&wanted) {
                    out.push(serde_json::json!({"taskId": task_id, "value": null, "state": s}));
                }
            } else if let Json::Object(values) = entry {
                for (value, inner) in values {
                    if let Some(s) = inner.get("state").and_then(Json::as_str)
                        && s.eq_ignore_ascii_case(&wanted)
                    {
                        out.push(
                            serde_json::json!({"taskId": task_id, "value": value, "state": s}),
                        );
                    }
                }
            }
        }
    }
    Ok(Json::Array(out))
}

fn aes_key(explicit: Option<String>, shared: &Shared) -> Result<[u8; 32], FnError> {
    let raw = explicit
        .or_else(|| shared.options.encryption_key.clone())
        .ok_or("no encryption key is configured")?;
    if let Ok(bytes) = base64::engine::general_purpose::STANDARD.decode(raw.trim())
        && let Ok(key) = <[u8; 32]>::try_from(bytes.as_slice())
    {
        return Ok(key);
    }
    <[u8; 32]>::try_from(raw.as_bytes())
        .map_err(|_| "the encryption key must be 32 bytes (base64-encoded or raw)".into())
}

fn fn_encrypt(_: &State, a: &Args, shared: &Shared) -> FnResult {
    use aes_gcm::aead::{Aead, KeyInit};
    let (key, value) = if a.pos.len() >= 2 || a.named.contains_key("key") {
        (a.str(0, "key")?, a.req_str(1, "plaintext")?)
    } else {
        (None, a.req_str(0, "plaintext")?)
    };
    let key = aes_key(key, shared)?;
    let cipher =
        aes_gcm::Aes256Gcm::new_from_slice(&key).map_err(|e| FnError::Msg(e.to_string()))?;
    let iv: [u8; 12] = rand::random();
    let ct = cipher
        .encrypt(&aes_gcm::Nonce::from(iv), value.as_bytes())
        .map_err(|_| "encryption failed")?;
    let mut out = iv.to_vec();
    out.extend(ct);
    Ok(Json::String(
        base64::engine::general_purpose::STANDARD.encode(out),
    ))
}

fn fn_decrypt(_: &State, a: &Args, shared: &Shared) -> FnResult {
    use aes_gcm::aead::{Aead, KeyInit};
    let (key, value) = if a.pos.len() >= 2 || a.named.contains_key("key") {
        (a.str(0, "key")?, a.req_str(1, "encrypted")?)
    } else {
        (None, a.req_str(0, "encrypted")?)
    };
    let key = aes_key(key, shared)?;
    let data = base64::engine::general_purpose::STANDARD
        .decode(value.trim())
        .map_err(|e| FnError::Msg(format!("invalid base64: {e}")))?;
    let Some((iv, body)) = data.split_first_chunk::<12>() else {
        return Err("encrypted value is too short".into());
    };
    let cipher =
        aes_gcm::Aes256Gcm::new_from_slice(&key).map_err(|e| FnError::Msg(e.to_string()))?;
    let plain = cipher
        .decrypt(&aes_gcm::Nonce::from(*iv), body)
        .map_err(|_| "decryption failed: wrong key or corrupted value")?;
    String::from_utf8(plain)
        .map(Json::String)
        .map_err(|_| "decrypted value is not UTF-8".into())
}

fn random_id() -> String {
    const ALPHABET: &[u8] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
    let mut n: u128 = rand::random();
    let mut s = String::with_capacity(22);
    for _ in 0..22 {
        s.push(ALPHABET[(n % 62) as usize] as char);
        n /= 62;
    }
    s
}

fn fn_random_int(_: &State, a: &Args, _: &Shared) -> FnResult {
    use rand::Rng as _;
    let min = a.i64(0, "lower")?.ok_or("missing argument `lower`")?;
    let max = a.i64(1, "upper")?.ok_or("missing argument `upper`")?;
    if min >= max {
        return Err("`lower` must be less than `upper`".into());
    }
    Ok(Json::from(rand::rng().random_range(min..max)))
}

/// The most items `range` (and `a..b`) produces.
pub(crate) const MAX_RANGE_ITEMS: i128 = 100_000;

fn fn_range(_: &State, a: &Args, _: &Shared) -> FnResult {
    let start = a.i64(0, "start")?.ok_or("missing argument `start`")?;
    let end = a.i64(1, "end")?.ok_or("missing argument `end`")?;
    let step = a.i64(2, "step")?.unwrap_or(1);
    if step == 0 {
        return Err("step must not be 0".into());
    }
    // in i128: no bound of i64 overflows the arithmetic
    let (start, end, step) = (i128::from(start), i128::from(end), i128::from(step));
    let count = ((end - start) / step).max(-1) + 1;
    if count > MAX_RANGE_ITEMS {
        return Err(
            format!("range is too large ({count} items, more than {MAX_RANGE_ITEMS})").into(),
        );
    }
    let out = (0..count.max(0))
        .filter_map(|k| i64::try_from(start + k * step).ok())
        .map(Json::from)
        .collect();
    Ok(Json::Array(out))
}

fn fn_extreme(a: &Args, max: bool) -> FnResult {
    let items: Vec<&Json> = if a.pos.len() == 1
        && let Some(Json::Array(items)) = a.pos.first()
    {
        items.iter().collect()
    } else {
        a.pos.iter().collect()
    };
    let best = items.into_iter().reduce(|x, y| {
        let ord = cmp_json(x, y);
        if (max && ord == std::cmp::Ordering::Less) || (!max && ord == std::cmp::Ordering::Greater)
        {
            y
        } else {
            x
        }
    });
    Ok(best.cloned().unwrap_or(Json::Null))
}

fn fn_div(_: &State, a: &Args, _: &Shared) -> FnResult {
    let (l, r) = (
        a.pos.first().cloned().unwrap_or(Json::Null),
        a.pos.get(1).cloned().unwrap_or(Json::Null),
    );
    match (&l, &r) {
        (Json::Number(x), Json::Number(y)) if x.is_i64() && y.is_i64() => {
            let (x, y) = (x.as_i64().unwrap_or(0), y.as_i64().unwrap_or(0));
            if y == 0 {
                return Err("division by zero".into());
            }
            Ok(Json::from(x / y))
        }
        _ => {
            let (x, y) = (
                as_f64(&l).ok_or("cannot divide a non-number")?,
                as_f64(&r).ok_or("cannot divide by a non-number")?,
            );
            if y == 0.0 {
                return Err("division by zero".into());
            }
            serde_json::Number::from_f64(x / y)
                .map(Json::Number)
                .ok_or_else(|| "invalid division".into())
        }
    }
}
