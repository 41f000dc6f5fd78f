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
