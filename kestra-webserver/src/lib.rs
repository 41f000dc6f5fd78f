//! Web server: Kestra REST API (`/api/v1/main/...`) and web UI on axum, reading the repositories.
//! A later issue fills this crate; it is empty today.
