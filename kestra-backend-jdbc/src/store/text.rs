//! Statements written once for two ways of carrying their values: bound ([`Qb`], a prepared
//! statement) or inline ([`Text`], MySQL's text protocol).
//!
//! Why inline on MySQL: a prepared statement is one statement and one round trip, so a
//! transaction of a publish and an acknowledgement was five (`BEGIN`, two inserts, a delete,
//! `COMMIT`), each about 0.2 ms here. In text, the server takes several statements in one query
//! (sqlx's MySQL connections enable `CLIENT_MULTI_STATEMENTS`) and the whole transaction is one
//! round trip. Written by hand: sqlx renders no query with its arguments inline.
//!
//! Values are never parsed as SQL: integers are written in decimal; text made only of letters,
//! digits and `_ - . : @ /` between single quotes (what names, ids and tokens are), any other text
//! as a hex literal of its UTF-8 bytes with the `_utf8mb4` introducer, and bytes as a hex literal -
//! whatever the server's `sql_mode` (`NO_BACKSLASH_ESCAPES` changes what a backslash means in a
//! quoted string; hex has no escapes).

use super::*;

/// The largest text statement sent: past it, the prepared statements are used (MySQL refuses a
/// query larger than its `max_allowed_packet`, 16 MiB by default on MariaDB; hex doubles a
/// payload's size).
pub(super) const TEXT_MAX: usize = 4 << 20;

/// Where a statement's values go: bound or inline (see the module documentation).
pub(super) trait Sql {
    /// SQL as it is.
    fn sql(&mut self, sql: &str) -> &mut Self;
    /// A text value.
    fn text(&mut self, value: &str) -> &mut Self;
    /// An integer value.
    fn int(&mut self, value: i64) -> &mut Self;
    /// A bytes value.
    fn bytes(&mut self, value: &[u8]) -> &mut Self;
    /// An integer value or `NULL`.
    fn opt_int(&mut self, value: Option<i64>) -> &mut Self;
    /// A text value or `NULL`.
    fn opt_text(&mut self, value: Option<&str>) -> &mut Self;
    /// A boolean value.
    fn boolean(&mut self, value: bool) -> &mut Self;
    /// `(t1, t2, ...)`.
    fn texts(&mut self, values: &[String]) -> &mut Self {
        self.sql("(");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.sql(", ");
            }
            self.text(v);
        }
        self.sql(")")
    }
    /// `(v1, v2, ...)`.
    fn ints(&mut self, values: &[i64]) -> &mut Self {
        self.sql("(");
        for (i, v) in values.iter().enumerate() {
            if i > 0 {
                self.sql(", ");
            }
            self.int(*v);
        }
        self.sql(")")
    }
}

impl Sql for Qb {
    fn sql(&mut self, sql: &str) -> &mut Self {
        self.push(sql);
        self
    }
    fn text(&mut self, value: &str) -> &mut Self {
        self.push_bind(value.to_string());
        self
    }
    fn int(&mut self, value: i64) -> &mut Self {
        self.push_bind(value);
        self
    }
    fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.push_bind(value.to_vec());
        self
    }
    fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        self.push_bind(value);
        self
    }
    fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        self.push_bind(value.map(str::to_string));
        self
    }
    fn boolean(&mut self, value: bool) -> &mut Self {
        self.push_bind(value);
        self
    }
}

/// A MySQL query in text, values inline (see the module documentation).
#[derive(Default)]
pub(super) struct Text(pub(super) String);

impl Text {
    fn hex(&mut self, value: &[u8]) {
        use std::fmt::Write;
        self.0.reserve(value.len() * 2 + 3);
        self.0.push_str("X'");
        for b in value {
            let _ = write!(self.0, "{b:02X}");
        }
        self.0.push('\'');
    }
}

impl Sql for Text {
    fn sql(&mut self, sql: &str) -> &mut Self {
        self.0.push_str(sql);
        self
    }
    fn text(&mut self, value: &str) -> &mut Self {
        let plain = value
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_-.:@/".contains(&b));
        if plain {
            self.0.push('\'');
            self.0.push_str(value);
            self.0.push('\'');
        } else {
            self.0.push_str("_utf8mb4 ");
            self.hex(value.as_bytes());
        }
        self
    }
    fn int(&mut self, value: i64) -> &mut Self {
        use std::fmt::Write;
        let _ = write!(self.0, "{value}");
        self
    }
    fn bytes(&mut self, value: &[u8]) -> &mut Self {
        self.hex(value);
        self
    }
    fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(v) => self.int(v),
            None => self.sql("NULL"),
        }
    }
    fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.text(v),
            None => self.sql("NULL"),
        }
    }
    fn boolean(&mut self, value: bool) -> &mut Self {
        self.sql(if value { "TRUE" } else { "FALSE" })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_written_inline_and_never_as_sql() {
        let mut t = Text::default();
        t.sql("INSERT INTO q VALUES (")
            .text("WorkerJob")
            .sql(", ")
            .text("it's; DROP TABLE q; \\")
            .sql(", ")
            .text("")
            .sql(", ")
            .bytes(&[0, 0xab, b'\''])
            .sql(", ")
            .int(-42)
            .sql(", ")
            .opt_int(None)
            .sql(", ")
            .opt_text(Some("a b"))
            .sql(", ")
            .boolean(true)
            .sql(") AND id IN ")
            .ints(&[1, 2])
            .sql(" AND k IN ")
            .texts(&["x".to_string(), "é".to_string()]);
        assert_eq!(
            t.0,
            "INSERT INTO q VALUES ('WorkerJob', _utf8mb4 X'697427733B2044524F50205441424C4520713B205C', \
             '', X'00AB27', -42, NULL, _utf8mb4 X'612062', TRUE) AND id IN (1, 2) \
             AND k IN ('x', _utf8mb4 X'C3A9')"
        );
    }
}
