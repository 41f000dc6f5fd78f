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

/// One test per database for a list of checks (`async fn(&str)` of this file, taking a database
/// URL): `on_each_database!(name: check_a, check_b)` expands into a module `name` with the tests
/// `sqlite`, `postgres` and `mysql`. Each runs the checks in order: on SQLite each check gets a
/// fresh database file; on PostgreSQL and MySQL/MariaDB the checks share the service's URL
/// (`KESTRA_TEST_POSTGRES_URL`, `KESTRA_TEST_MYSQL_URL`), and the test is skipped with a loud
/// message when it is unset, except under `CI=true` where that is a failure ([`service_url`]).
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
                    $(super::$check(&url).await;)+
                }
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn mysql() {
                if let Some(url) = crate::common::service_url("KESTRA_TEST_MYSQL_URL") {
                    $(super::$check(&url).await;)+
                }
            }
        }
    };
}
#[allow(unused_imports)]
pub(crate) use on_each_database;
