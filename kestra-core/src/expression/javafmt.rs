//! Java `DateTimeFormatter` and `DecimalFormat` patterns, as Kestra's `date` and `numberFormat`
//! filters accept them, implemented over chrono.

use chrono::{
    DateTime, Datelike, FixedOffset, NaiveDate, NaiveDateTime, Offset, TimeZone, Timelike,
};
use chrono_tz::Tz;

/// Named formats of Kestra's `date` filter.
pub(crate) fn named_format(name: &str) -> Option<&'static str> {
    Some(match name {
        "iso" => "yyyy-MM-dd'T'HH:mm:ss.SSSSSSXXX",
        "iso_sec" => "yyyy-MM-dd'T'HH:mm:ssXXX",
        "iso_milli" => "yyyy-MM-dd'T'HH:mm:ss.SSSXXX",
        "sql" => "yyyy-MM-dd HH:mm:ss.SSSSSS",
        "sql_seq" | "sql_sec" => "yyyy-MM-dd HH:mm:ss",
        "iso_date_time" | "iso_offset_date_time" => "yyyy-MM-dd'T'HH:mm:ss.nXXX",
        "iso_zoned_date_time" => "yyyy-MM-dd'T'HH:mm:ss.nXXX'['VV']'",
        "iso_date" => "yyyy-MM-ddXXX",
        "iso_time" => "HH:mm:ss.nXXX",
        "iso_local_date" => "yyyy-MM-dd",
        "iso_local_time" => "HH:mm:ss.n",
        "iso_local_date_time" => "yyyy-MM-dd'T'HH:mm:ss.n",
        "iso_offset_time" => "HH:mm:ss.nXXX",
        "iso_instant" => "INSTANT",
        "iso_ordinal_date" => "yyyy-DDDXXX",
        "iso_week_date" => "YYYY-'W'ww-eXXX",
        "rfc_1123_date_time" => "EEE, d MMM yyyy HH:mm:ss 'GMT'",
        "full" => "EEEE, MMMM d, yyyy 'at' h:mm:ss a zzzz",
        "long" => "MMMM d, yyyy 'at' h:mm:ss a z",
        "medium" => "MMM d, yyyy, h:mm:ss a",
        "short" => "M/d/yy, h:mm a",
        _ => return None,
    })
}

const MONTHS: [&str; 12] = [
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
];
const DAYS: [&str; 7] = [
    "Monday",
    "Tuesday",
    "Wednesday",
    "Thursday",
    "Friday",
    "Saturday",
    "Sunday",
];

fn pad(n: i64, width: usize) -> String {
    if n < 0 {
        format!("-{:0width$}", -n, width = width)
    } else {
        format!("{:0width$}", n, width = width)
    }
}

fn offset_text(secs: i32, count: usize, z_for_zero: bool) -> String {
    if secs == 0 && z_for_zero {
        return "Z".into();
    }
    let sign = if secs < 0 { '-' } else { '+' };
    let a = secs.abs();
    let (h, m) = (a / 3600, (a % 3600) / 60);
    match count {
        1 => {
            if m == 0 {
                format!("{sign}{h:02}")
            } else {
                format!("{sign}{h:02}{m:02}")
            }
        }
        2 | 4 => format!("{sign}{h:02}{m:02}"),
        _ => format!("{sign}{h:02}:{m:02}"),
    }
}

/// Formats a date with a Java pattern (or a named format).
pub(crate) fn format_date(dt: &DateTime<Tz>, format: &str) -> Result<String, String> {
    let pattern = named_format(format).unwrap_or(format);
    if pattern == "INSTANT" {
        let utc = dt.with_timezone(&chrono::Utc);
        return Ok(utc.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true));
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    let offset_secs = dt.offset().fix().local_minus_utc();
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            // quoted literal; '' is a single quote
            if chars.get(i + 1) == Some(&'\'') {
                out.push('\'');
                i += 2;
                continue;
            }
            let mut j = i + 1;
            while j < chars.len() {
                if chars[j] == '\'' {
                    if chars.get(j + 1) == Some(&'\'') {
                        out.push('\'');
                        j += 2;
                        continue;
                    }
                    break;
                }
                out.push(chars[j]);
                j += 1;
            }
            i = j + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            out.push(c);
            i += 1;
            continue;
        }
        let mut n = 1;
        while i + n < chars.len() && chars[i + n] == c {
            n += 1;
        }
        i += n;
        let piece = match c {
            'y' | 'u' | 'Y' => {
                let y = if c == 'Y' {
                    i64::from(dt.iso_week().year())
                } else {
                    i64::from(dt.year())
                };
                if n == 2 {
                    pad(y.rem_euclid(100), 2)
                } else {
                    pad(y, n)
                }
            }
            'M' | 'L' => match n {
                1 => dt.month().to_string(),
                2 => pad(i64::from(dt.month()), 2),
                3 => MONTHS[dt.month0() as usize][..3].to_string(),
                _ => MONTHS[dt.month0() as usize].to_string(),
            },
            'd' => pad(i64::from(dt.day()), n),
            'D' => pad(i64::from(dt.ordinal()), n),
            'H' => pad(i64::from(dt.hour()), n),
            'k' => pad(i64::from(if dt.hour() == 0 { 24 } else { dt.hour() }), n),
            'h' => {
                let h = dt.hour() % 12;
                pad(i64::from(if h == 0 { 12 } else { h }), n)
            }
            'K' => pad(i64::from(dt.hour() % 12), n),
            'm' => pad(i64::from(dt.minute()), n),
            's' => pad(i64::from(dt.second()), n),
            'S' => {
                let nanos = format!("{:09}", dt.nanosecond() % 1_000_000_000);
                if n <= 9 {
                    nanos[..n].to_string()
                } else {
                    format!("{nanos}{}", "0".repeat(n - 9))
                }
            }
            'n' => {
                // ISO fraction: as many digits as needed in groups of 3, dropped when zero
                let ns = dt.nanosecond() % 1_000_000_000;
                if n == 1 && i >= 2 && pattern_is_iso_fraction(&chars, i - n) {
                    if ns == 0 {
                        // remove the '.' that precedes the fraction
                        out.pop();
                        String::new()
                    } else if ns.is_multiple_of(1_000_000) {
                        format!("{:03}", ns / 1_000_000)
                    } else if ns.is_multiple_of(1000) {
                        format!("{:06}", ns / 1000)
                    } else {
                        format!("{ns:09}")
                    }
                } else {
                    pad(i64::from(ns), n)
                }
            }
            'A' => pad(i64::from(dt.num_seconds_from_midnight()) * 1000, n),
            'E' => {
                let d = DAYS[dt.weekday().num_days_from_monday() as usize];
                if n >= 4 {
                    d.to_string()
                } else {
                    d[..3].to_string()
                }
            }
            'e' | 'c' => {
                let v = dt.weekday().number_from_monday();
                pad(i64::from(v), n)
            }
            'w' => pad(i64::from(dt.iso_week().week()), n),
            'a' => if dt.hour() < 12 { "AM" } else { "PM" }.to_string(),
            'X' => offset_text(offset_secs, n, true),
            'x' => offset_text(offset_secs, n, false),
            'Z' => {
                if n >= 4 {
                    if offset_secs == 0 {
                        "GMT".to_string()
                    } else {
                        format!("GMT{}", offset_text(offset_secs, 3, false))
                    }
                } else {
                    offset_text(offset_secs, 2, false)
                }
            }
            'z' => {
                let abbr = dt.offset().to_string();
                if n >= 4 {
                    dt.timezone().name().to_string()
                } else {
                    abbr
                }
            }
            'V' => dt.timezone().name().to_string(),
            'O' => {
                if offset_secs == 0 {
                    "GMT".to_string()
                } else {
                    format!("GMT{}", offset_text(offset_secs, 3, false))
                }
            }
            'G' => "AD".to_string(),
            other => {
                return Err(format!(
                    "unknown pattern letter `{other}` in date format `{format}`"
                ));
            }
        };
        out.push_str(&piece);
    }
    Ok(out)
}

fn pattern_is_iso_fraction(chars: &[char], pos: usize) -> bool {
    pos > 0 && chars[pos - 1] == '.'
}

/// Converts a Java pattern to a chrono `strftime` pattern, for parsing with `existingFormat`.
pub(crate) fn java_to_strftime(pattern: &str) -> Result<String, String> {
    let pattern = named_format(pattern).unwrap_or(pattern);
    let chars: Vec<char> = pattern.chars().collect();
    let mut out = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '\'' {
            let mut j = i + 1;
            while j < chars.len() && chars[j] != '\'' {
                if chars[j] == '%' {
                    out.push_str("%%");
                } else {
                    out.push(chars[j]);
                }
                j += 1;
            }
            if j == i + 1 {
                out.push('\'');
            }
            i = j + 1;
            continue;
        }
        if !c.is_ascii_alphabetic() {
            if c == '%' {
                out.push_str("%%");
            } else {
                out.push(c);
            }
            i += 1;
            continue;
        }
        let mut n = 1;
        while i + n < chars.len() && chars[i + n] == c {
            n += 1;
        }
        i += n;
        out.push_str(match (c, n) {
            ('y' | 'u', 2) => "%y",
            ('y' | 'u', _) => "%Y",
            ('M', 1 | 2) => "%m",
            ('M', 3) => "%b",
            ('M', _) => "%B",
            ('d', _) => "%d",
            ('D', _) => "%j",
            ('H', _) => "%H",
            ('h', _) => "%I",
            ('m', _) => "%M",
            ('s', _) => "%S",
            ('S' | 'n', _) => "%f",
            ('E', 1..=3) => "%a",
            ('E', _) => "%A",
            ('a', _) => "%p",
            ('X' | 'x', 3) => "%:z",
            ('X' | 'x' | 'Z', _) => "%z",
            ('z' | 'V', _) => "%Z",
            (other, _) => {
                return Err(format!(
                    "unsupported pattern letter `{other}` in `{pattern}`"
                ));
            }
        });
    }
    Ok(out)
}

/// Parses a date value the way Kestra's `date` filter does: integers are epoch seconds, strings
/// are ISO-8601 (zoned, local date-time or date) unless `existing_format` is given. Values without
/// an offset are taken in `tz`.
pub(crate) fn parse_date(
    value: &serde_json::Value,
    existing_format: Option<&str>,
    tz: Tz,
) -> Result<DateTime<Tz>, String> {
    match value {
        serde_json::Value::Number(n) => {
            let secs = n
                .as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .ok_or_else(|| format!("invalid epoch seconds `{n}`"))?;
            tz.timestamp_opt(secs, 0)
                .single()
                .ok_or_else(|| format!("invalid epoch seconds `{secs}`"))
        }
        serde_json::Value::String(s) => parse_date_str(s.trim(), existing_format, tz),
        other => Err(format!("cannot read `{other}` as a date")),
    }
}

fn localize(naive: NaiveDateTime, tz: Tz) -> Result<DateTime<Tz>, String> {
    tz.from_local_datetime(&naive)
        .earliest()
        .ok_or_else(|| format!("`{naive}` does not exist in time zone {tz}"))
}

fn parse_date_str(s: &str, existing_format: Option<&str>, tz: Tz) -> Result<DateTime<Tz>, String> {
    if let Some(fmt) = existing_format {
        let f = java_to_strftime(fmt)?;
        if let Ok(d) = DateTime::<FixedOffset>::parse_from_str(s, &f) {
            return Ok(d.with_timezone(&tz));
        }
        if let Ok(d) = NaiveDateTime::parse_from_str(s, &f) {
            return localize(d, tz);
        }
        if let Ok(d) = NaiveDate::parse_from_str(s, &f) {
            return localize(d.and_hms_opt(0, 0, 0).unwrap_or_default(), tz);
        }
        return Err(format!("cannot parse `{s}` with format `{fmt}`"));
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Ok(d.with_timezone(&tz));
    }
    // `2024-01-01T10:00:00+01:00[Europe/Paris]`: drop the zone id suffix
    if let Some(idx) = s.find('[')
        && let Ok(d) = DateTime::parse_from_rfc3339(&s[..idx])
    {
        return Ok(d.with_timezone(&tz));
    }
    for f in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M:%S%.f",
    ] {
        if let Ok(d) = NaiveDateTime::parse_from_str(s, f) {
            return localize(d, tz);
        }
    }
    if let Ok(d) = NaiveDate::parse_from_str(s, "%Y-%m-%d") {
        // a bare date is midnight of that day in `tz`
        return localize(d.and_hms_opt(0, 0, 0).unwrap_or_default(), tz);
    }
    Err(format!("cannot parse `{s}` as an ISO-8601 date"))
}

/// Formats a number with a Java `DecimalFormat` pattern such as `#,##0.00`, `0.###` or `#.##%`.
pub(crate) fn decimal_format(value: f64, pattern: &str) -> String {
    let (positive, negative) = match pattern.split_once(';') {
        Some((p, n)) => (p, Some(n)),
        None => (pattern, None),
    };
    let is_neg = value < 0.0;
    // prefix/suffix are the parts outside the number characters
    let num_chars = |c: char| matches!(c, '#' | '0' | ',' | '.');
    let start = positive.find(num_chars).unwrap_or(positive.len());
    let end = positive.rfind(num_chars).map(|e| e + 1).unwrap_or(start);
    let prefix = &positive[..start];
    let suffix = &positive[end..];
    let core = &positive[start..end];
    let mut v = value.abs();
    if suffix.contains('%') {
        v *= 100.0;
    }
    let (int_pat, frac_pat) = match core.split_once('.') {
        Some((i, f)) => (i, f),
        None => (core, ""),
    };
    let min_frac = frac_pat.chars().filter(|c| *c == '0').count();
    let max_frac = frac_pat.chars().filter(|c| *c == '0' || *c == '#').count();
    let min_int = int_pat.chars().filter(|c| *c == '0').count();
    let grouping = int_pat.rfind(',').map(|p| {
        int_pat[p + 1..]
            .chars()
            .filter(|c| *c == '#' || *c == '0')
            .count()
    });
    // HALF_EVEN rounding as DecimalFormat does
    let scale = 10f64.powi(max_frac as i32);
    let scaled = v * scale;
    let rounded = {
        let r = scaled.round();
        if (scaled - scaled.trunc()).abs() == 0.5 && r % 2.0 != 0.0 {
            r - scaled.signum()
        } else {
            r
        }
    };
    let text = format!("{:.*}", max_frac, rounded / scale);
    let (int_digits, mut frac_digits) = match text.split_once('.') {
        Some((i, f)) => (i.to_string(), f.to_string()),
        None => (text.clone(), String::new()),
    };
    while frac_digits.len() > min_frac && frac_digits.ends_with('0') {
        frac_digits.pop();
    }
    let mut int_digits = int_digits.trim_start_matches('0').to_string();
    while int_digits.len() < min_int {
        int_digits.insert(0, '0');
    }
    if let Some(g) = grouping.filter(|g| *g > 0) {
        let digits: Vec<char> = int_digits.chars().collect();
        let mut grouped = String::new();
        for (idx, d) in digits.iter().enumerate() {
            if idx > 0 && (digits.len() - idx).is_multiple_of(g) {
                grouped.push(',');
            }
            grouped.push(*d);
        }
        int_digits = grouped;
    }
    let mut number = int_digits;
    if !frac_digits.is_empty() {
        number.push('.');
        number.push_str(&frac_digits);
    }
    if number.is_empty() {
        number.push('0');
    }
    let all_zero = !number.chars().any(|c| c.is_ascii_digit() && c != '0');
    let suffix = suffix.replace('\'', "");
    let prefix = prefix.replace('\'', "");
    if is_neg && !all_zero {
        match negative {
            Some(n) => {
                let s = n.find(num_chars).unwrap_or(n.len());
                let e = n.rfind(num_chars).map(|e| e + 1).unwrap_or(s);
                format!("{}{number}{}", &n[..s], &n[e..])
            }
            None => format!("-{prefix}{number}{suffix}"),
        }
    } else {
        format!("{prefix}{number}{suffix}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decimal_formats() {
        assert_eq!(decimal_format(1234.567, "#,##0.00"), "1,234.57");
        assert_eq!(decimal_format(3.0, "#.##"), "3");
        assert_eq!(decimal_format(0.5, "0.00"), "0.50");
        assert_eq!(decimal_format(-12.5, "0.0"), "-12.5");
        assert_eq!(decimal_format(0.256, "#%"), "26%");
    }
}
