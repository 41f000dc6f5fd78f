//! Login sessions of the Web UI: after a successful login (the same user and argon2 hash as the
//! API's basic authentication), the browser holds a random 256-bit token in the `kestra_session`
//! cookie (`HttpOnly`, `SameSite=Strict`, `Path=/`). The server keeps only the SHA-256 digest of each
//! token, in memory, with its expiry: a restart logs everyone out, and several webserver instances
//! each keep their own sessions (put a sticky load balancer in front, or use basic authentication).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::HeaderMap;
use sha2::{Digest, Sha256};

/// The cookie's name.
pub const COOKIE: &str = "kestra_session";

/// How long a session lasts after login.
pub const SESSION_TTL: Duration = Duration::from_secs(12 * 3600);

/// How many sessions are kept at most (the oldest go first).
const MAX_SESSIONS: usize = 10_000;

/// The live sessions: token digest -> expiry.
#[derive(Default)]
pub(crate) struct Sessions {
    live: Mutex<HashMap<[u8; 32], Instant>>,
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

impl Sessions {
    /// A new session: its token (64 hex digits).
    pub(crate) fn create(&self) -> String {
        let bytes: [u8; 32] = rand::random();
        let token: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        let now = Instant::now();
        if let Ok(mut live) = self.live.lock() {
            live.retain(|_, expiry| *expiry > now);
            if live.len() >= MAX_SESSIONS
                && let Some(oldest) = live.iter().min_by_key(|(_, e)| **e).map(|(k, _)| *k)
            {
                live.remove(&oldest);
            }
            live.insert(digest(&token), now + SESSION_TTL);
        }
        token
    }

    /// Whether a token is a live session.
    pub(crate) fn is_valid(&self, token: &str) -> bool {
        let now = Instant::now();
        self.live
            .lock()
            .map(|live| live.get(&digest(token)).is_some_and(|e| *e > now))
            .unwrap_or(false)
    }

    /// End a session.
    pub(crate) fn remove(&self, token: &str) {
        if let Ok(mut live) = self.live.lock() {
            live.remove(&digest(token));
        }
    }
}

/// The session token of a request's `Cookie` headers, if any.
pub(crate) fn cookie_token(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(axum::http::header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value.trim().to_string())
        .filter(|v| v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Whether a request carries a header only the UI's own scripts send (`HX-Request` from htmx,
/// `X-Kestra-UI` from the editor).
pub(crate) fn has_ui_header(headers: &HeaderMap) -> bool {
    headers.contains_key("hx-request") || headers.contains_key("x-kestra-ui")
}

/// The `Set-Cookie` value of a new session.
pub(crate) fn set_cookie(token: &str) -> String {
    format!(
        "{COOKIE}={token}; Path=/; HttpOnly; SameSite=Strict; Max-Age={}",
        SESSION_TTL.as_secs()
    )
}

/// The `Set-Cookie` value that clears the session cookie.
pub(crate) fn clear_cookie() -> String {
    format!("{COOKIE}=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_created_session_is_valid_until_removed() {
        let sessions = Sessions::default();
        let token = sessions.create();
        assert_eq!(token.len(), 64);
        assert!(sessions.is_valid(&token));
        assert!(!sessions.is_valid(&"0".repeat(64)));
        sessions.remove(&token);
        assert!(!sessions.is_valid(&token));
    }

    #[test]
    fn reads_only_a_well_formed_session_cookie() {
        let mut headers = HeaderMap::new();
        let token = "a".repeat(64);
        headers.insert(
            axum::http::header::COOKIE,
            format!("other=1; {COOKIE}={token}").parse().unwrap(),
        );
        assert_eq!(cookie_token(&headers), Some(token));
        headers.insert(
            axum::http::header::COOKIE,
            format!("{COOKIE}=short").parse().unwrap(),
        );
        assert_eq!(cookie_token(&headers), None);
        headers.insert(
            axum::http::header::COOKIE,
            format!("x{COOKIE}={}", "a".repeat(64)).parse().unwrap(),
        );
        assert_eq!(cookie_token(&headers), None);
    }
}
