//! HTTP basic authentication: one user, its password kept as an argon2 hash (PHC string), checked on
//! every route except the exact public paths of [`is_public`].
//!
//! Rules: the public paths are compared with the raw request path byte for byte, so an encoded
//! (`/%68ealth`), doubled (`//health`), trailing-slash (`/health/`) or case variant (`/HEALTH`) is not
//! public and needs credentials like any other path. The user name is compared in constant time and
//! the password through argon2's verification (constant-time comparison of the digests); a user name
//! that does not match still pays for an argon2 verification, so timing does not tell which part was
//! wrong. A header verified once is remembered by its SHA-256 digest, so that later requests with the
//! same credentials skip the (deliberately slow) argon2 step.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use argon2::Argon2;
use argon2::password_hash::phc::PasswordHash;
use argon2::password_hash::{PasswordHasher, PasswordVerifier};
use axum::extract::{Request, State};
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::AppState;
use crate::error::ApiError;

/// How many verified credential digests are remembered before the memory is cleared.
const VERIFIED_CACHE_SIZE: usize = 1024;

/// A configuration of basic authentication that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The user name is empty.
    #[error("kestra.server.basic-auth.username is empty")]
    EmptyUsername,
    /// The password is empty.
    #[error("kestra.server.basic-auth.password is empty")]
    EmptyPassword,
    /// The user name contains a colon (basic authentication cannot carry it).
    #[error("kestra.server.basic-auth.username must not contain ':'")]
    ColonInUsername,
    /// A `$argon2...` password is not a valid PHC string.
    #[error(
        "kestra.server.basic-auth.password looks like an argon2 hash but is not a valid one: {0}"
    )]
    InvalidHash(String),
    /// Hashing failed.
    #[error("cannot hash the password: {0}")]
    Hash(String),
}

/// Who may call the API.
#[derive(Debug, Clone)]
pub enum Auth {
    /// HTTP basic authentication with one user.
    Basic(BasicAuth),
    /// No authentication: only by explicit configuration (a warning is logged at start).
    Disabled,
    /// Nothing configured: every non-public route answers 401.
    Unconfigured,
}

/// One user of HTTP basic authentication.
#[derive(Clone)]
pub struct BasicAuth {
    username: String,
    /// The argon2 PHC string of the password.
    hash: String,
    verified: Arc<Mutex<HashSet<[u8; 32]>>>,
}

impl std::fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BasicAuth")
            .field("username", &self.username)
            .field("hash", &"<argon2>")
            .finish()
    }
}

impl BasicAuth {
    /// A user from its password: a `$argon2...` PHC string is taken as the hash (what
    /// [`BasicAuth::hash_password`] and the `argon2` tool print), anything else as the password in
    /// clear, hashed here.
    pub fn new(username: &str, password: &str) -> Result<BasicAuth, AuthError> {
        if password.is_empty() {
            return Err(AuthError::EmptyPassword);
        }
        let hash = if password.starts_with("$argon2") {
            PasswordHash::new(password).map_err(|e| AuthError::InvalidHash(e.to_string()))?;
            password.to_string()
        } else {
            BasicAuth::hash_password(password)?
        };
        BasicAuth::from_hash(username, &hash)
    }

    /// A user from the argon2 PHC string of its password.
    pub fn from_hash(username: &str, hash: &str) -> Result<BasicAuth, AuthError> {
        if username.is_empty() {
            return Err(AuthError::EmptyUsername);
        }
        if username.contains(':') {
            return Err(AuthError::ColonInUsername);
        }
        PasswordHash::new(hash).map_err(|e| AuthError::InvalidHash(e.to_string()))?;
        Ok(BasicAuth {
            username: username.to_string(),
            hash: hash.to_string(),
            verified: Arc::default(),
        })
    }

    /// The argon2id PHC string of a password, with a random salt.
    pub fn hash_password(password: &str) -> Result<String, AuthError> {
        Argon2::default()
            .hash_password(password.as_bytes())
            .map(|h| h.to_string())
            .map_err(|e| AuthError::Hash(e.to_string()))
    }

    /// The user name.
    pub fn username(&self) -> &str {
        &self.username
    }

    /// Whether an `Authorization` header value carries this user's credentials. Slow on first sight
    /// (argon2): call it off the async threads.
    pub fn verify(&self, authorization: &[u8]) -> bool {
        let digest: [u8; 32] = Sha256::digest(authorization).into();
        if let Ok(verified) = self.verified.lock()
            && verified.contains(&digest)
        {
            return true;
        }
        let Some((user, password)) = parse_basic(authorization) else {
            return false;
        };
        let user_ok: bool = user.as_bytes().ct_eq(self.username.as_bytes()).into();
        // Verify the password even for a wrong user name: the time does not tell which was wrong.
        let password_ok = match PasswordHash::new(&self.hash) {
            Ok(hash) => Argon2::default()
                .verify_password(password.as_bytes(), &hash)
                .is_ok(),
            Err(_) => false,
        };
        let ok = user_ok & password_ok;
        if ok && let Ok(mut verified) = self.verified.lock() {
            if verified.len() >= VERIFIED_CACHE_SIZE {
                verified.clear();
            }
            verified.insert(digest);
        }
        ok
    }
}

/// `Basic <base64(user:password)>` (scheme case-insensitive) -> (user, password).
fn parse_basic(authorization: &[u8]) -> Option<(String, String)> {
    let text = std::str::from_utf8(authorization).ok()?.trim();
    let (scheme, encoded) = text.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_string(), password.to_string()))
}

/// Whether a request may pass without credentials: `GET`/`HEAD` of exactly `/health`, and
/// `GET`/`POST`/`PUT` of a Webhook trigger's route, exactly `/api/v1[/main]/executions/webhook/` then
/// three non-empty segments (namespace, flow id, key: the key is the secret, checked by the route).
/// The raw path is compared as received (no decoding, no normalisation), so no variant of them is
/// public.
pub fn is_public(method: &Method, raw_path: &str) -> bool {
    if raw_path == "/health" {
        return method == Method::GET || method == Method::HEAD;
    }
    if method != Method::GET && method != Method::POST && method != Method::PUT {
        return false;
    }
    let rest = raw_path
        .strip_prefix("/api/v1/main/executions/webhook/")
        .or_else(|| raw_path.strip_prefix("/api/v1/executions/webhook/"));
    match rest {
        Some(rest) => {
            let segments: Vec<&str> = rest.split('/').collect();
            segments.len() == 3
                && segments
                    .iter()
                    .all(|s| !s.is_empty() && *s != "." && *s != "..")
        }
        None => false,
    }
}

/// The authentication middleware of every route: HTTP basic authentication, or the Web UI's login
/// session cookie ([`crate::ui::session`]); a change (any method but `GET`/`HEAD`) made with the
/// cookie alone must also carry the `HX-Request` or `X-Kestra-UI` header, which another site's page
/// cannot send without a CORS preflight this server never grants. A browser asking for a UI page
/// without credentials is sent to the login page instead of a 401.
pub(crate) async fn require_auth(
    State(state): State<Arc<AppState>>,
    request: Request,
    next: Next,
) -> Response {
    if is_public(request.method(), request.uri().path())
        || crate::ui::is_public(request.method(), request.uri().path())
        || (state.config.metrics_public
            && request.method() == Method::GET
            && request.uri().path() == "/metrics")
    {
        return next.run(request).await;
    }
    let user = match &state.config.auth {
        Auth::Disabled => return next.run(request).await,
        Auth::Unconfigured => {
            if let Some(redirect) = crate::ui::login_redirect(&request) {
                return redirect;
            }
            return unauthorized("no credentials are configured on this server");
        }
        Auth::Basic(user) => user.clone(),
    };
    let Some(value) = request.headers().get(header::AUTHORIZATION) else {
        if crate::ui::session::cookie_token(request.headers())
            .is_some_and(|token| state.sessions.is_valid(&token))
        {
            let safe = request.method() == Method::GET || request.method() == Method::HEAD;
            if safe || crate::ui::session::has_ui_header(request.headers()) {
                return next.run(request).await;
            }
            return ApiError::new(
                StatusCode::FORBIDDEN,
                "a change made with the UI's session cookie must carry the X-Kestra-UI header",
            )
            .into_response();
        }
        if let Some(redirect) = crate::ui::login_redirect(&request) {
            return redirect;
        }
        if crate::ui::session::has_ui_header(request.headers()) {
            // The UI's own scripts: no browser password prompt, the page sends the user to log in.
            return ApiError::new(
                StatusCode::UNAUTHORIZED,
                "your session has ended: log in again",
            )
            .into_response();
        }
        return unauthorized("authentication required");
    };
    let value = value.as_bytes().to_vec();
    let ok = tokio::task::spawn_blocking(move || user.verify(&value))
        .await
        .unwrap_or(false);
    if ok {
        next.run(request).await
    } else {
        unauthorized("invalid credentials")
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = ApiError::new(StatusCode::UNAUTHORIZED, message).into_response();
    response.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"Kestra\""),
    );
    response
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn header(user: &str, password: &str) -> Vec<u8> {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
        )
        .into_bytes()
    }

    #[test]
    fn verifies_the_password_against_its_argon2_hash() {
        let auth = BasicAuth::new("admin@kestra.io", "s3cret:with colon").unwrap();
        assert!(auth.hash.starts_with("$argon2id$"));
        assert!(auth.verify(&header("admin@kestra.io", "s3cret:with colon")));
        // Remembered, and still right.
        assert!(auth.verify(&header("admin@kestra.io", "s3cret:with colon")));
        assert!(!auth.verify(&header("admin@kestra.io", "s3cret")));
        assert!(!auth.verify(&header("Admin@kestra.io", "s3cret:with colon")));
        assert!(!auth.verify(b"Bearer abc"));
        assert!(!auth.verify(b"Basic !!!"));
        assert!(!auth.verify(b""));
    }

    #[test]
    fn accepts_a_phc_hash_as_password_and_rejects_a_broken_one() {
        let hash = BasicAuth::hash_password("kestra").unwrap();
        let auth = BasicAuth::new("me", &hash).unwrap();
        assert!(auth.verify(&header("me", "kestra")));
        assert!(!auth.verify(&header("me", &hash)));
        assert!(matches!(
            BasicAuth::new("me", "$argon2id$broken"),
            Err(AuthError::InvalidHash(_))
        ));
        assert!(matches!(
            BasicAuth::new("", "x"),
            Err(AuthError::EmptyUsername)
        ));
        assert!(matches!(
            BasicAuth::new("a:b", "x"),
            Err(AuthError::ColonInUsername)
        ));
        assert!(matches!(
            BasicAuth::new("a", ""),
            Err(AuthError::EmptyPassword)
        ));
    }

    #[test]
    fn only_the_exact_health_path_is_public() {
        assert!(is_public(&Method::GET, "/health"));
        assert!(is_public(&Method::HEAD, "/health"));
        for path in [
            "/health/",
            "//health",
            "/HEALTH",
            "/Health",
            "/%68ealth",
            "/health%2F",
            "/health/../api/v1/flows/search",
            "/api/v1/health",
            "/healthz",
        ] {
            assert!(!is_public(&Method::GET, path), "{path} must not be public");
        }
        assert!(!is_public(&Method::POST, "/health"));
    }

    #[test]
    fn only_exact_webhook_routes_are_public() {
        for path in [
            "/api/v1/main/executions/webhook/ns/flow/key",
            "/api/v1/executions/webhook/ns/flow/key",
            "/api/v1/main/executions/webhook/company.team/flow/k%2Fey",
        ] {
            assert!(is_public(&Method::POST, path), "{path}");
            assert!(is_public(&Method::GET, path), "{path}");
            assert!(is_public(&Method::PUT, path), "{path}");
            assert!(!is_public(&Method::DELETE, path), "{path}");
        }
        for path in [
            "/api/v1/main/executions/webhook/ns/flow",
            "/api/v1/main/executions/webhook/ns/flow/key/",
            "/api/v1/main/executions/webhook/ns/flow/key/extra",
            "/api/v1/main/executions/webhook/ns//key",
            "/api/v1/main/executions/webhook//flow/key",
            "/api/v1/main/executions/webhook/../../flows/search",
            "/api/v1/main/executions/webhook/ns/../search",
            "/api/v1/main/executions//webhook/ns/flow/key",
            "//api/v1/main/executions/webhook/ns/flow/key",
            "/API/v1/main/executions/webhook/ns/flow/key",
            "/api/v1/main/executions/Webhook/ns/flow/key",
            "/api/v1/main/executions/%77ebhook/ns/flow/key",
            "/api/v1/other/executions/webhook/ns/flow/key",
        ] {
            assert!(!is_public(&Method::POST, path), "{path} must not be public");
        }
    }
}
