//! An existing but empty or damaged SQLite database file is refused with a clear message instead
//! of being silently treated as a new, empty database (issue 16).

#![cfg(feature = "sqlite")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use kestra_backend_jdbc::{JdbcBackend, JdbcError, JdbcOptions};

fn url(path: &std::path::Path) -> String {
    format!("sqlite://{}?mode=rwc", path.display())
}

#[tokio::test]
async fn an_empty_database_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kestra.db");
    std::fs::write(&path, b"").unwrap();
    let Err(err) = JdbcBackend::connect(&url(&path)).await else {
        panic!("the file was accepted");
    };
    assert!(matches!(err, JdbcError::EmptyDatabase { .. }), "{err}");
    let message = err.to_string();
    assert!(
        message.contains("exists but is empty (0 bytes)"),
        "{message}"
    );
    assert!(message.contains(&path.display().to_string()), "{message}");
    // nothing was written to it
    assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
}

#[tokio::test]
async fn an_empty_database_file_is_initialised_when_asked() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kestra.db");
    std::fs::write(&path, b"").unwrap();
    let options = JdbcOptions {
        initialize_empty_sqlite: true,
        ..JdbcOptions::default()
    };
    JdbcBackend::connect_with(&url(&path), options)
        .await
        .unwrap();
    assert!(std::fs::metadata(&path).unwrap().len() > 0);
}

#[tokio::test]
async fn a_damaged_database_file_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kestra.db");
    std::fs::write(&path, b"this is not a database at all, just text").unwrap();
    let Err(err) = JdbcBackend::connect(&url(&path)).await else {
        panic!("the file was accepted");
    };
    assert!(matches!(err, JdbcError::NotADatabase { .. }), "{err}");
    assert!(
        err.to_string().contains("is not a SQLite database"),
        "{err}"
    );
}

#[tokio::test]
async fn a_missing_file_is_created_and_an_existing_database_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("kestra.db");
    let backend = JdbcBackend::connect(&url(&path)).await.unwrap();
    drop(backend);
    JdbcBackend::connect(&url(&path)).await.unwrap();
}
