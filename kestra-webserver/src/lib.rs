//! The Webserver component: Kestra's REST API on axum, reading the Repository seam and publishing to
//! the Queue seam through an [`Engine`] (so it runs unchanged on every backend, alone with an engine
//! that runs no component, or inside `kestra server standalone`).
//!
//! Routes live under `/api/v1/main/...` (tenant `main`) and the older `/api/v1/...` alias; see
//! [`api`] for the list. The Web UI ([`ui`]) is served by the same router under `/ui/` (`/` redirects
//! there). Every route requires HTTP basic authentication except the exact public
//! paths of [`auth::is_public`] (`/health`); authentication is off only when the configuration says
//! so ([`Auth::Disabled`]), with a warning at start.
//!
//! ```no_run
//! # async fn demo(engine: std::sync::Arc<kestra_core::runtime::Engine>) -> Result<(), Box<dyn std::error::Error>> {
//! use kestra_webserver::{Auth, BasicAuth, Webserver};
//! let server = Webserver::builder(engine)
//!     .bind("127.0.0.1:8080".parse()?)
//!     .auth(Auth::Basic(BasicAuth::new("admin@kestra.io", "kestra")?))
//!     .build();
//! let shutdown = tokio_util::sync::CancellationToken::new();
//! server.run(shutdown).await?;
//! # Ok(()) }
//! ```

pub mod api;
pub mod auth;
pub mod error;
pub mod ui;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use kestra_core::liveness::{Heartbeat, LivenessConfig};
use kestra_core::model::ServiceType;
use kestra_core::runtime::Engine;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

pub use auth::{Auth, AuthError, BasicAuth};
pub use error::ApiError;

/// The default address: loopback, Kestra's port.
pub const DEFAULT_BIND: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 8080);

/// The default limit of a request body (uploads included): 100 MiB.
pub const DEFAULT_MAX_BODY: usize = 100 * 1024 * 1024;

/// The default limit of a request that uploads files (creating an execution with FILE inputs,
/// streamed into internal storage, never held in memory): 10 GiB, Kestra's
/// `micronaut.server.multipart.max-file-size`.
pub const DEFAULT_MAX_UPLOAD: u64 = 10 * 1024 * 1024 * 1024;

/// Why the webserver could not run.
#[derive(Debug, thiserror::Error)]
pub enum WebserverError {
    /// The address could not be bound.
    #[error("cannot listen on {address}: {source}")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("webserver failed: {0}")]
    Serve(#[source] std::io::Error),
}

/// Settings of the webserver.
#[derive(Debug, Clone)]
pub struct WebserverConfig {
    /// Where to listen (default [`DEFAULT_BIND`]).
    pub bind: SocketAddr,
    /// Authentication (default: basic authentication must be configured; see [`Auth`]).
    pub auth: Auth,
    /// Largest request body accepted, in bytes (413 beyond; default [`DEFAULT_MAX_BODY`]).
    pub max_body_bytes: usize,
    /// Largest body of a request that uploads files (execution creation from the API or the UI), in
    /// bytes (413 beyond; default [`DEFAULT_MAX_UPLOAD`]). Its file parts are streamed into internal
    /// storage; its text fields stay limited to `max_body_bytes` each.
    pub max_upload_bytes: u64,
    /// How long `wait=true` on an execution waits for its end (default one hour).
    pub wait_timeout: Duration,
    /// How often a follow (SSE) reads the execution again (default 200 ms).
    pub follow_poll: Duration,
    /// Whether `GET /metrics` is served without credentials (default false: behind
    /// authentication like every route).
    pub metrics_public: bool,
    /// How often [`Webserver::serve`] publishes this instance's heartbeat on the queue, as every
    /// component does (a `WEBSERVER` service instance in `kestra sys services`; the executor declares
    /// it dead when it falls silent). Default: every component's default (3 s); `None`: no
    /// heartbeat (the instance does not show up).
    pub heartbeat: Option<Duration>,
}

/// Shared by every handler.
pub(crate) struct AppState {
    pub(crate) engine: Arc<Engine>,
    pub(crate) config: WebserverConfig,
    pub(crate) shutdown: CancellationToken,
    /// The Web UI's login sessions.
    pub(crate) sessions: ui::session::Sessions,
    /// What `/metrics` counts.
    pub(crate) metrics: Arc<api::metrics::Metrics>,
}

/// Builds a [`Webserver`].
pub struct WebserverBuilder {
    engine: Arc<Engine>,
    config: WebserverConfig,
}

impl WebserverBuilder {
    /// Where to listen.
    pub fn bind(mut self, address: SocketAddr) -> Self {
        self.config.bind = address;
        self
    }
    /// Authentication.
    pub fn auth(mut self, auth: Auth) -> Self {
        self.config.auth = auth;
        self
    }
    /// Largest request body accepted, in bytes.
    pub fn max_body_bytes(mut self, bytes: usize) -> Self {
        self.config.max_body_bytes = bytes;
        self
    }
    /// Largest body of a request that uploads files, in bytes.
    pub fn max_upload_bytes(mut self, bytes: u64) -> Self {
        self.config.max_upload_bytes = bytes;
        self
    }
    /// How long `wait=true` waits for an execution's end.
    pub fn wait_timeout(mut self, timeout: Duration) -> Self {
        self.config.wait_timeout = timeout;
        self
    }
    /// How often a follow reads the execution again.
    pub fn follow_poll(mut self, every: Duration) -> Self {
        self.config.follow_poll = every;
        self
    }
    /// Serve `GET /metrics` without credentials (for a Prometheus that cannot authenticate; keep
    /// the port private then).
    pub fn metrics_public(mut self, public: bool) -> Self {
        self.config.metrics_public = public;
        self
    }
    /// How often the webserver publishes its heartbeat while it serves (`None`: never); see
    /// [`WebserverConfig::heartbeat`].
    pub fn heartbeat(mut self, every: Option<Duration>) -> Self {
        self.config.heartbeat = every;
        self
    }
    /// The webserver.
    pub fn build(self) -> Webserver {
        Webserver {
            engine: self.engine,
            config: self.config,
        }
    }
}

/// The Webserver component: build it with [`Webserver::builder`], then [`Webserver::run`] it, or take
/// its [`Webserver::router`] to serve it yourself (or to test it without a socket).
pub struct Webserver {
    engine: Arc<Engine>,
    config: WebserverConfig,
}

impl Webserver {
    /// A builder over an engine (its components may be none: the webserver only uses its API).
    pub fn builder(engine: Arc<Engine>) -> WebserverBuilder {
        WebserverBuilder {
            engine,
            config: WebserverConfig {
                bind: DEFAULT_BIND,
                auth: Auth::Unconfigured,
                max_body_bytes: DEFAULT_MAX_BODY,
                max_upload_bytes: DEFAULT_MAX_UPLOAD,
                wait_timeout: Duration::from_secs(3600),
                follow_poll: Duration::from_millis(200),
                metrics_public: false,
                heartbeat: Some(LivenessConfig::default().heartbeat_interval),
            },
        }
    }

    /// The settings.
    pub fn config(&self) -> &WebserverConfig {
        &self.config
    }

    /// The routes with authentication and limits; long-lived responses (follows) end when `shutdown`
    /// is cancelled.
    pub fn router(&self, shutdown: CancellationToken) -> Router {
        let state = Arc::new(AppState {
            engine: self.engine.clone(),
            config: self.config.clone(),
            shutdown,
            sessions: ui::session::Sessions::default(),
            metrics: Arc::default(),
        });
        api::router(state)
    }

    /// Bind the configured address and serve until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) -> Result<(), WebserverError> {
        let listener = tokio::net::TcpListener::bind(self.config.bind)
            .await
            .map_err(|source| WebserverError::Bind {
                address: self.config.bind,
                source,
            })?;
        self.serve(listener, shutdown).await
    }

    /// Serve on a bound listener until `shutdown` is cancelled (open connections are drained).
    /// While it serves, the instance beats on the engine's queue (see [`WebserverConfig::heartbeat`])
    /// and says goodbye (`TERMINATED_GRACEFULLY`) once the connections are drained.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: CancellationToken,
    ) -> Result<(), WebserverError> {
        match &self.config.auth {
            Auth::Disabled => warn!(
                "webserver authentication is DISABLED by configuration (kestra.server.basic-auth.enabled=false): anyone who reaches the port can run flows"
            ),
            Auth::Unconfigured => warn!(
                "webserver has no credentials configured: every request except /health is refused (set kestra.server.basic-auth.username and .password)"
            ),
            Auth::Basic(_) => {}
        }
        let address = listener.local_addr().map_err(WebserverError::Serve)?;
        let router = self.router(shutdown.clone());
        info!(%address, "webserver listening");
        let heartbeat = self.config.heartbeat.map(|every| {
            Heartbeat::start(
                self.engine.queue().clone(),
                ServiceType::Webserver,
                &format!("webserver-{}", kestra_core::model::new_id()),
                every,
            )
        });
        let served = axum::serve(listener, router)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await
            .map_err(WebserverError::Serve);
        if let Some(heartbeat) = heartbeat {
            heartbeat.stop().await;
        }
        served
    }
}
