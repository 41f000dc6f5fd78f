//! Shared by the facade's engine tests: where the databases are.

/// The URL of a service from its environment variable; `None` (with a loud message) when unset,
/// except under `CI=true`, where a missing service is a failure.
pub fn service_url(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(url) if !url.is_empty() => Some(url),
        _ => {
            assert!(
                !std::env::var("CI").is_ok_and(|v| v == "true"),
                "{var} is not set: CI requires this service (scripts/services.sh starts it)"
            );
            eprintln!("SKIPPED: {var} is not set; run scripts/services.sh to test this backend");
            None
        }
    }
}

/// A SQLite database file in `dir`.
pub fn sqlite_url(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}/kestra.db?mode=rwc", dir.path().display())
}

/// A database of its own on the server of `base` (PostgreSQL or MySQL/MariaDB), created empty for
/// one check and dropped by [`ServerDatabase::remove`]. Tests sharing one server database shared its
/// queue too: a worker of one test could take another test's job (seen twice in CI).
#[allow(dead_code)] // a test file that runs on one backend only uses none of it
pub struct ServerDatabase {
    /// The URL of the new database (the base URL with its database name replaced).
    pub url: String,
    base: String,
    name: String,
}

/// `base` with its database name replaced by `name`.
#[cfg_attr(not(any(feature = "postgres", feature = "mysql")), allow(dead_code))]
fn with_database(base: &str, name: &str) -> String {
    let (head, query) = match base.split_once('?') {
        Some((h, q)) => (h, format!("?{q}")),
        None => (base, String::new()),
    };
    let head = head.rsplit_once('/').map(|(h, _)| h).unwrap_or(head);
    format!("{head}/{name}{query}")
}

/// Runs one statement on the server of `base` (no database of its own needed).
#[cfg_attr(
    not(any(feature = "postgres", feature = "mysql")),
    allow(unused_variables)
)]
async fn server_statement(base: &str, statement: String) -> Result<(), String> {
    #[cfg(feature = "postgres")]
    if base.starts_with("postgres") {
        use sqlx::{AssertSqlSafe, Connection};
        let mut conn = sqlx::PgConnection::connect(base)
            .await
            .map_err(|e| format!("connect to {base}: {e}"))?;
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    #[cfg(feature = "mysql")]
    if base.starts_with("mysql") || base.starts_with("mariadb") {
        use sqlx::{AssertSqlSafe, Connection};
        let mut conn = sqlx::MySqlConnection::connect(base)
            .await
            .map_err(|e| format!("connect to {base}: {e}"))?;
        sqlx::raw_sql(AssertSqlSafe(statement))
            .execute(&mut conn)
            .await
            .map_err(|e| e.to_string())?;
        return Ok(());
    }
    Err(format!("no driver compiled in for {base}"))
}

/// A fresh, empty database next to the one of `base`; panics (naming it) when it cannot be made.
#[allow(dead_code)] // used through `on_each_database!`
pub async fn fresh_database(base: &str) -> ServerDatabase {
    let name = format!("kestra_t_{}", kestra::core::model::new_id().to_lowercase());
    if let Err(e) = server_statement(base, format!("CREATE DATABASE {name}")).await {
        panic!("create the test database {name} next to {base}: {e}");
    }
    ServerDatabase {
        url: with_database(base, &name),
        base: base.to_string(),
        name,
    }
}

impl ServerDatabase {
    /// Drops the database (a check that panicked leaves it behind: its name starts with
    /// `kestra_t_`).
    #[allow(dead_code)] // used through `on_each_database!`
    pub async fn remove(self) {
        let force = if self.base.starts_with("postgres") {
            " WITH (FORCE)"
        } else {
            ""
        };
        if let Err(e) = server_statement(
            &self.base,
            format!("DROP DATABASE IF EXISTS {}{force}", self.name),
        )
        .await
        {
            eprintln!("could not drop the test database {}: {e}", self.name);
        }
    }
}

/// One test per database for a list of checks (`async fn(&str)` of this file, taking a database
/// URL): `on_each_database!(name: check_a, check_b)` expands into a module `name` with the tests
/// `sqlite`, `postgres` and `mysql`. Each runs the checks in order, each check on a fresh empty
/// database: on SQLite a new file; on PostgreSQL and MySQL/MariaDB a new database on the service
/// of `KESTRA_TEST_POSTGRES_URL` / `KESTRA_TEST_MYSQL_URL` ([`fresh_database`], dropped after the
/// check). The test is skipped with a loud message when the variable is unset, except under
/// `CI=true` where that is a failure ([`service_url`]).
#[allow(unused_macros)] // a test file that runs on one backend only (Kafka, the UI) uses none
macro_rules! on_each_database {
    ($name:ident: $($check:ident),+ $(,)?) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn sqlite() {
                $({
                    let dir = tempfile::tempdir()
                        .unwrap_or_else(|e| panic!("a temporary directory: {e}"));
                    super::$check(&crate::common::sqlite_url(&dir)).await;
                })+
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn postgres() {
                if let Some(url) = crate::common::service_url("KESTRA_TEST_POSTGRES_URL") {
                    $({
                        let db = crate::common::fresh_database(&url).await;
                        super::$check(&db.url).await;
                        db.remove().await;
                    })+
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mysql() {
                if let Some(url) = crate::common::service_url("KESTRA_TEST_MYSQL_URL") {
                    $({
                        let db = crate::common::fresh_database(&url).await;
                        super::$check(&db.url).await;
                        db.remove().await;
                    })+
                }
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_each_database;
