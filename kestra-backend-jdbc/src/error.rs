//! The crate's error type: what can fail while connecting, migrating and talking to the database.

/// Errors of the JDBC backend. Queue and repository operations wrap it in
/// [`kestra_core::queue::QueueError::Backend`] / [`kestra_core::repository::RepositoryError::Backend`]
/// with the operation named.
#[derive(Debug, thiserror::Error)]
pub enum JdbcError {
    /// The URL names no supported database.
    #[error(
        "unsupported database URL '{url}': expected sqlite:, postgres:, postgresql:, mysql: or mariadb:"
    )]
    UnsupportedUrl {
        /// The URL (password removed).
        url: String,
    },
    /// The URL's database is supported, but its cargo feature is not enabled.
    #[error("'{url}' needs the `{feature}` feature of kestra-backend-jdbc")]
    FeatureDisabled {
        /// The missing feature.
        feature: &'static str,
        /// The URL (password removed).
        url: String,
    },
    /// The URL could not be parsed or the database could not be reached.
    #[error("cannot connect to {url}: {source}")]
    Connect {
        /// The URL (password removed).
        url: String,
        /// Cause.
        #[source]
        source: sqlx::Error,
    },
    /// The SQLite file's folder could not be created.
    #[error("cannot create the folder of SQLite database {path}: {source}")]
    CreateDir {
        /// The folder.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The SQLite database file exists but is empty (0 bytes): it is not silently treated as a
    /// new database.
    #[error(
        "SQLite database {path} exists but is empty (0 bytes): refusing to treat it as a new \
         database; if it should be, delete it (or set `initialize_empty_sqlite`) and start again"
    )]
    EmptyDatabase {
        /// The file.
        path: String,
    },
    /// The SQLite database file exists but is not a SQLite database (damaged or another file).
    #[error(
        "{path} is not a SQLite database (its header is missing or damaged): refusing to open it; \
         restore it from a backup, or move it away to start with a new database"
    )]
    NotADatabase {
        /// The file.
        path: String,
    },
    /// The SQLite database file cannot be inspected.
    #[error("cannot read SQLite database {path}: {source}")]
    Inspect {
        /// The file.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Applying the embedded migrations failed.
    #[error("cannot migrate the {dialect} schema: {source}")]
    Migrate {
        /// `sqlite`, `postgres` or `mysql`.
        dialect: &'static str,
        /// Cause.
        #[source]
        source: sqlx::migrate::MigrateError,
    },
    /// A statement failed.
    #[error("database error during {operation}: {source}")]
    Database {
        /// What was being done.
        operation: &'static str,
        /// Cause.
        #[source]
        source: sqlx::Error,
    },
}

/// The URL with its password (if any) replaced by `***`, for messages.
pub(crate) fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let (authority, tail) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}{tail}")
        }
        None => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn redact_hides_the_password_only() {
        assert_eq!(
            super::redact("postgres://kestra:secret@127.0.0.1:5432/kestra"),
            "postgres://kestra:***@127.0.0.1:5432/kestra"
        );
        assert_eq!(super::redact("sqlite::memory:"), "sqlite::memory:");
    }
}
