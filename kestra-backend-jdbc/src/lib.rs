//! JDBC backend (in progress).
