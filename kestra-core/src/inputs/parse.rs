//! Parsing and validation of one input value against its declaration, type by type. Pure: no
//! storage, no rendering (an `expression` is rendered by the caller and passed in as `allowed`).

use chrono::{DateTime, NaiveDate, NaiveTime, SecondsFormat, Utc};
use regex::Regex;
use serde_json::{Number, Value};

use crate::flow::duration;
use crate::flow::{Input, InputType};
use crate::storage::{SCHEME, StoragePath};

use super::{InputError, REQUIRED, RawInput};

/// How many characters of a rejected value an error message quotes.
const QUOTE_LIMIT: usize = 80;

/// A value as seen by the type parsers: JSON, or text from a form field.
#[derive(Debug, Clone)]
pub(crate) enum Candidate {
    /// Any JSON value (never `Null`: null means absent).
    Json(Value),
    /// Text from a form field.
    Text(String),
}

impl Candidate {
    /// The value as text when it is a scalar (`42` -> `"42"`), as Kestra's `toString()` does.
    fn scalar_text(&self) -> Option<String> {
        match self {
            Candidate::Text(s) => Some(s.clone()),
            Candidate::Json(Value::String(s)) => Some(s.clone()),
            Candidate::Json(Value::Number(n)) => Some(n.to_string()),
            Candidate::Json(Value::Bool(b)) => Some(b.to_string()),
            Candidate::Json(_) => None,
        }
    }

    fn describe(&self) -> String {
        match self {
            Candidate::Text(s) | Candidate::Json(Value::String(s)) => quote(s),
            Candidate::Json(v) => {
                let text = v.to_string();
                truncate(&text)
            }
        }
    }
}

fn truncate(s: &str) -> String {
    if s.chars().count() > QUOTE_LIMIT {
        let cut: String = s.chars().take(QUOTE_LIMIT).collect();
        format!("{cut}...")
    } else {
        s.to_string()
    }
}

/// `'text'`, truncated.
pub(crate) fn quote(s: &str) -> String {
    format!("'{}'", truncate(s))
}

/// Whether a raw value counts as "no value given": absent, JSON null, or (for every type that is not
/// text) an empty form field, which is what an HTML form sends for an untouched field.
pub(crate) fn is_empty(input_type: InputType, raw: &RawInput) -> bool {
    match raw {
        RawInput::Json(Value::Null) => true,
        RawInput::Text(s) => {
            s.is_empty() && !matches!(input_type, InputType::String | InputType::Secret)
        }
        _ => false,
    }
}

/// The checks one input's value goes through. `allowed` replaces `values` for SELECT/MULTISELECT when
/// the caller rendered `expression`.
pub(crate) fn parse_candidate(
    input: &Input,
    candidate: Candidate,
    allowed: Option<&[String]>,
) -> Result<Value, String> {
    let declared = declared_values(input);
    let allowed = allowed.or(declared.as_deref());
    parse_typed(input, input.input_type, candidate, allowed)
}

/// The allowed values written in the flow: `values`, or the deprecated `options` of MULTISELECT.
pub(crate) fn declared_values(input: &Input) -> Option<Vec<String>> {
    let list = input
        .values
        .clone()
        .or_else(|| match input.extra.get("options") {
            Some(Value::Array(items)) => Some(items.clone()),
            _ => None,
        })?;
    Some(list.iter().map(value_as_option).collect())
}

/// A SELECT option as text (`"a"` -> `a`, `1` -> `1`).
pub(crate) fn value_as_option(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

fn parse_typed(
    input: &Input,
    input_type: InputType,
    candidate: Candidate,
    allowed: Option<&[String]>,
) -> Result<Value, String> {
    match input_type {
        InputType::String => {
            let text = expect_text(&candidate)?;
            if let Some(pattern) = &input.validator {
                let re = Regex::new(&format!("^(?:{pattern})$"))
                    .map_err(|e| format!("invalid validator '{pattern}' in the flow: {e}"))?;
                if !re.is_match(&text) {
                    return Err(format!("does not match validator '{pattern}'"));
                }
            }
            Ok(Value::String(text))
        }
        InputType::Secret => match candidate {
            Candidate::Text(s) | Candidate::Json(Value::String(s)) => Ok(Value::String(s)),
            _ => Err("must be a string".to_string()),
        },
        InputType::Int => {
            let n = parse_int(&candidate)?;
            if let Some(min) = bound_number(input.min.as_ref(), "min")?
                && (n as f64) < min
            {
                return Err(format!("must be >= {} (got {n})", fmt_number(min)));
            }
            if let Some(max) = bound_number(input.max.as_ref(), "max")?
                && (n as f64) > max
            {
                return Err(format!("must be <= {} (got {n})", fmt_number(max)));
            }
            Ok(Value::Number(Number::from(n)))
        }
        InputType::Float => {
            let x = parse_float(&candidate)?;
            if let Some(min) = bound_number(input.min.as_ref(), "min")?
                && x < min
            {
                return Err(format!(
                    "must be >= {} (got {})",
                    fmt_number(min),
                    fmt_number(x)
                ));
            }
            if let Some(max) = bound_number(input.max.as_ref(), "max")?
                && x > max
            {
                return Err(format!(
                    "must be <= {} (got {})",
                    fmt_number(max),
                    fmt_number(x)
                ));
            }
            Number::from_f64(x)
                .map(Value::Number)
                .ok_or_else(|| format!("must be a finite number (got {})", candidate.describe()))
        }
        InputType::Bool => match &candidate {
            Candidate::Json(Value::Bool(b)) => Ok(Value::Bool(*b)),
            Candidate::Text(s) | Candidate::Json(Value::String(s)) => {
                match s.trim().to_ascii_lowercase().as_str() {
                    "true" => Ok(Value::Bool(true)),
                    "false" => Ok(Value::Bool(false)),
                    _ => Err(format!(
                        "must be true or false (got {})",
                        candidate.describe()
                    )),
                }
            }
            _ => Err(format!(
                "must be true or false (got {})",
                candidate.describe()
            )),
        },
        InputType::Datetime => {
            let text = expect_text(&candidate)?;
            let value = parse_datetime(&text).ok_or_else(|| {
                format!(
                    "must be an ISO-8601 date-time with an offset or 'Z' (got {})",
                    quote(&text)
                )
            })?;
            let shown = value.to_rfc3339_opts(SecondsFormat::AutoSi, true);
            check_range(input, &value, &shown, parse_datetime)?;
            Ok(Value::String(shown))
        }
        InputType::Date => {
            let text = expect_text(&candidate)?;
            let value = parse_date(text.trim())
                .ok_or_else(|| format!("must be a date yyyy-MM-dd (got {})", quote(&text)))?;
            let shown = value.format("%Y-%m-%d").to_string();
            check_range(input, &value, &shown, parse_date)?;
            Ok(Value::String(shown))
        }
        InputType::Time => {
            let text = expect_text(&candidate)?;
            let value = parse_time(text.trim())
                .ok_or_else(|| format!("must be a time HH:mm[:ss] (got {})", quote(&text)))?;
            let shown = text.trim().to_string();
            check_range(input, &value, &shown, parse_time)?;
            Ok(Value::String(shown))
        }
        InputType::Duration => {
            let text = expect_text(&candidate)?;
            let value = duration::parse(&text).map_err(|e| {
                format!(
                    "must be an ISO-8601 duration such as PT5M (got {}): {}",
                    quote(&text),
                    e.reason
                )
            })?;
            let shown = duration::format(value);
            if let Some(min) = bound_duration(input.min.as_ref(), "min")?
                && value < min
            {
                return Err(format!(
                    "must be >= {} (got {shown})",
                    duration::format(min)
                ));
            }
            if let Some(max) = bound_duration(input.max.as_ref(), "max")?
                && value > max
            {
                return Err(format!(
                    "must be <= {} (got {shown})",
                    duration::format(max)
                ));
            }
            Ok(Value::String(shown))
        }
        InputType::Select => {
            let text = candidate
                .scalar_text()
                .ok_or_else(|| format!("must be one value (got {})", candidate.describe()))?;
            check_allowed(input, &text, allowed)?;
            Ok(Value::String(text))
        }
        InputType::Multiselect => {
            let items = expect_list(candidate)?;
            let mut out = Vec::with_capacity(items.len());
            for item in items {
                let text = match &item {
                    Value::String(s) => s.clone(),
                    Value::Number(_) | Value::Bool(_) => item.to_string(),
                    other => {
                        return Err(format!(
                            "items must be single values (got {})",
                            truncate(&other.to_string())
                        ));
                    }
                };
                check_allowed(input, &text, allowed)?;
                out.push(Value::String(text));
            }
            Ok(Value::Array(out))
        }
        InputType::Array => {
            let items = expect_list(candidate)?;
            let Some(item_type) = input.item_type else {
                return Ok(Value::Array(items));
            };
            if matches!(item_type, InputType::Array | InputType::Multiselect) {
                return Err(format!("itemType {item_type:?} is not supported for ARRAY"));
            }
            let mut out = Vec::with_capacity(items.len());
            let mut problems = Vec::new();
            for (index, item) in items.into_iter().enumerate() {
                if item.is_null() {
                    problems.push(format!("item {index} is null"));
                    continue;
                }
                let described = Candidate::Json(item.clone()).describe();
                match parse_item(item_type, Candidate::Json(item)) {
                    Ok(v) => out.push(v),
                    Err(e) => problems.push(format!("item {index} ({described}): {e}")),
                }
            }
            if problems.is_empty() {
                Ok(Value::Array(out))
            } else {
                Err(problems.join("; "))
            }
        }
        InputType::Json => match candidate {
            Candidate::Text(s) | Candidate::Json(Value::String(s)) => {
                serde_json::from_str(&s).map_err(|e| format!("must be valid JSON: {e}"))
            }
            Candidate::Json(v) => Ok(v),
        },
        InputType::Yaml => match candidate {
            Candidate::Text(s) | Candidate::Json(Value::String(s)) => {
                serde_saphyr::from_str_with_options::<Value>(&s, yaml_options())
                    .map_err(|e| format!("must be valid YAML: {e}"))
            }
            Candidate::Json(v) => Ok(v),
        },
        InputType::Uri => {
            let text = expect_text(&candidate)?;
            if is_absolute_uri(&text) {
                Ok(Value::String(text))
            } else {
                Err(format!(
                    "must be an absolute URI with a scheme (got {})",
                    quote(&text)
                ))
            }
        }
        InputType::Email => {
            let text = expect_text(&candidate)?;
            if is_email(&text) {
                Ok(Value::String(text))
            } else {
                Err(format!("must be an e-mail address (got {})", quote(&text)))
            }
        }
        InputType::File => {
            let text = expect_text(&candidate)?;
            let path = parse_file_uri(&text)?;
            check_extension(input, path.file_name())?;
            Ok(Value::String(path.to_uri()))
        }
    }
}

/// An ARRAY item: type conversion only (the array's own `min`, `validator`... are not applied to
/// items, as in Kestra).
fn parse_item(item_type: InputType, candidate: Candidate) -> Result<Value, String> {
    let bare = Input {
        id: String::new(),
        input_type: item_type,
        description: None,
        display_name: None,
        required: true,
        defaults: None,
        prefill: None,
        depends_on: None,
        validator: None,
        min: None,
        max: None,
        after: None,
        before: None,
        values: None,
        expression: None,
        allow_custom_value: true,
        auto_select_first: false,
        item_type: None,
        allowed_file_extensions: None,
        extra: Default::default(),
    };
    parse_typed(&bare, item_type, candidate, None)
}

fn yaml_options() -> serde_saphyr::Options {
    serde_saphyr::options! {
        strict_booleans: true,
        leading_zero_numbers_as_strings: true,
        with_snippet: false,
        duplicate_keys: serde_saphyr::DuplicateKeyPolicy::Error,
    }
}

fn expect_text(candidate: &Candidate) -> Result<String, String> {
    candidate
        .scalar_text()
        .ok_or_else(|| format!("must be a string (got {})", candidate.describe()))
}

fn expect_list(candidate: Candidate) -> Result<Vec<Value>, String> {
    match candidate {
        Candidate::Json(Value::Array(items)) => Ok(items),
        Candidate::Text(s) | Candidate::Json(Value::String(s)) => {
            match serde_json::from_str::<Value>(&s) {
                Ok(Value::Array(items)) => Ok(items),
                _ => Err(format!("must be a list: a JSON array (got {})", quote(&s))),
            }
        }
        Candidate::Json(other) => Err(format!(
            "must be a list: a JSON array (got {})",
            truncate(&other.to_string())
        )),
    }
}

fn parse_int(candidate: &Candidate) -> Result<i64, String> {
    let bad = || format!("must be an integer (got {})", candidate.describe());
    match candidate {
        Candidate::Json(Value::Number(n)) => n.as_i64().ok_or_else(bad),
        Candidate::Text(s) | Candidate::Json(Value::String(s)) => {
            s.trim().parse::<i64>().map_err(|_| bad())
        }
        Candidate::Json(_) => Err(bad()),
    }
}

fn parse_float(candidate: &Candidate) -> Result<f64, String> {
    let bad = || format!("must be a number (got {})", candidate.describe());
    let x = match candidate {
        Candidate::Json(Value::Number(n)) => n.as_f64().ok_or_else(bad)?,
        Candidate::Text(s) | Candidate::Json(Value::String(s)) => {
            s.trim().parse::<f64>().map_err(|_| bad())?
        }
        Candidate::Json(_) => return Err(bad()),
    };
    if x.is_finite() { Ok(x) } else { Err(bad()) }
}

/// `12` for whole numbers, `1.5` otherwise.
fn fmt_number(x: f64) -> String {
    if x.fract() == 0.0 && x.abs() < 1e15 {
        format!("{}", x as i64)
    } else {
        format!("{x}")
    }
}

fn bound_number(bound: Option<&Value>, name: &str) -> Result<Option<f64>, String> {
    match bound {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n
            .as_f64()
            .map(Some)
            .ok_or_else(|| format!("invalid {name} in the flow: {n}")),
        Some(Value::String(s)) => s
            .trim()
            .parse::<f64>()
            .map(Some)
            .map_err(|_| format!("invalid {name} in the flow: {}", quote(s))),
        Some(other) => Err(format!("invalid {name} in the flow: {other}")),
    }
}

fn bound_duration(
    bound: Option<&Value>,
    name: &str,
) -> Result<Option<std::time::Duration>, String> {
    match bound {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => duration::parse(s)
            .map(Some)
            .map_err(|e| format!("invalid {name} in the flow: {e}")),
        Some(other) => Err(format!("invalid {name} in the flow: {other}")),
    }
}

fn parse_datetime(s: &str) -> Option<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(s.trim())
        .ok()
        .map(|d| d.with_timezone(&Utc))
}

fn parse_date(s: &str) -> Option<NaiveDate> {
    // Exactly yyyy-MM-dd: chrono alone would accept `2024-1-5`.
    let b = s.as_bytes();
    if b.len() != 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    NaiveDate::parse_from_str(s, "%Y-%m-%d").ok()
}

fn parse_time(s: &str) -> Option<NaiveTime> {
    let b = s.as_bytes();
    if b.len() < 5 || b[2] != b':' {
        return None;
    }
    NaiveTime::parse_from_str(s, "%H:%M:%S%.f")
        .or_else(|_| NaiveTime::parse_from_str(s, "%H:%M"))
        .ok()
}

/// `after` / `before` (inclusive bounds, as Kestra: the value may equal them).
fn check_range<T: PartialOrd>(
    input: &Input,
    value: &T,
    shown: &str,
    parse: impl Fn(&str) -> Option<T>,
) -> Result<(), String> {
    if let Some(after) = &input.after {
        let bound =
            parse(after).ok_or_else(|| format!("invalid after in the flow: {}", quote(after)))?;
        if *value < bound {
            return Err(format!("must be after {after} (got {shown})"));
        }
    }
    if let Some(before) = &input.before {
        let bound = parse(before)
            .ok_or_else(|| format!("invalid before in the flow: {}", quote(before)))?;
        if *value > bound {
            return Err(format!("must be before {before} (got {shown})"));
        }
    }
    Ok(())
}

fn check_allowed(input: &Input, text: &str, allowed: Option<&[String]>) -> Result<(), String> {
    if input.allow_custom_value {
        return Ok(());
    }
    match allowed {
        Some(values) if !values.iter().any(|v| v == text) => Err(format!(
            "{} is not one of [{}]",
            quote(text),
            values.join(", ")
        )),
        _ => Ok(()),
    }
}

/// `scheme:rest`, the scheme starting with a letter, no whitespace anywhere.
fn is_absolute_uri(s: &str) -> bool {
    let Some((scheme, rest)) = s.split_once(':') else {
        return false;
    };
    let mut chars = scheme.chars();
    let scheme_ok = chars.next().is_some_and(|c| c.is_ascii_alphabetic())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
    scheme_ok
        && !rest.is_empty()
        && rest != "//"
        && !s.chars().any(|c| c.is_whitespace() || c.is_control())
}

/// `local@domain.tld`: one `@`, no whitespace, a dot in the domain, no empty domain label.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    !local.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && domain.split('.').all(|label| {
            !label.is_empty() && label.chars().all(|c| c.is_alphanumeric() || c == '-')
        })
        && !local
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == ',')
}

/// A FILE input given as text must be a `kestra:///` URI (a file already in internal storage). Local
/// paths and `file://` URIs are refused: they would read the server's disk.
pub(crate) fn parse_file_uri(text: &str) -> Result<StoragePath, String> {
    let trimmed = text.trim();
    if !trimmed.starts_with(SCHEME) {
        let scheme = trimmed.split_once("://").map(|(s, _)| s);
        return Err(match scheme {
            Some(s) if s.eq_ignore_ascii_case("file") => {
                "file:// URIs are refused: upload the file instead".to_string()
            }
            _ => format!(
                "must be an uploaded file or a kestra:/// URI (got {})",
                quote(trimmed)
            ),
        });
    }
    StoragePath::parse(trimmed).map_err(|e| e.to_string())
}

/// `allowedFileExtensions` (`.csv` or `csv`, case-insensitive); anything when unset or empty.
pub(crate) fn check_extension(input: &Input, file_name: &str) -> Result<(), String> {
    let Some(allowed) = &input.allowed_file_extensions else {
        return Ok(());
    };
    if allowed.is_empty() {
        return Ok(());
    }
    let lower = file_name.to_ascii_lowercase();
    let ok = allowed.iter().any(|ext| {
        let ext = ext.trim().trim_start_matches('.').to_ascii_lowercase();
        lower.ends_with(&format!(".{ext}"))
    });
    if ok {
        Ok(())
    } else {
        Err(format!(
            "file {} must have one of the extensions [{}]",
            quote(file_name),
            allowed.join(", ")
        ))
    }
}

/// See [`super::parse_input_value`].
pub(crate) fn parse_raw(input: &Input, raw: RawInput) -> Result<Value, InputError> {
    let err = |message: String| InputError {
        input: input.id.clone(),
        message,
    };
    if is_empty(input.input_type, &raw) {
        return if input.required {
            Err(err(REQUIRED.into()))
        } else {
            Ok(Value::Null)
        };
    }
    let candidate = match raw {
        RawInput::Json(v) => Candidate::Json(v),
        RawInput::Text(s) => Candidate::Text(s),
        RawInput::File { .. } | RawInput::Stored { .. } if input.input_type == InputType::File => {
            return Err(err(
                "a file upload must be stored: use resolve_inputs, which has the storage".into(),
            ));
        }
        RawInput::File { .. } | RawInput::Stored { .. } => {
            return Err(err("expects a value, not a file upload".into()));
        }
    };
    parse_candidate(input, candidate, None).map_err(err)
}
