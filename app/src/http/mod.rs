//! The HTTP API (axum).
//!
//! | route | what |
//! |---|---|
//! | `POST /rides` | create a ride under an `Idempotency-Key` (reference 2.3) |
//! | `GET /rides` | the caller's rides, newest first, paged with `?limit=` and `?before=` |
//! | `GET /rides/{id}` | one of the caller's rides |
//! | `GET /healthz` | 200 when the store answers, else 503 |
//! | `GET /healthz/live` | 200 while the process serves (liveness) |
//! | `GET /healthz/ready` | 200 when the store answers, else 503 (readiness), with each dependency's state |
//! | `POST /dispatch/commands`, `GET /dispatch/streams/{id}` | ride dispatch on the event-sourcing layer: a separate router, [`dispatch::router`], merged in by whoever has an event store |
//! | `GET /stats` | consumers' positions, totals and lags: a snapshot of a [`StatsProvider`] computed at most once a second (see [`stats`]) |
//! | `GET /metrics` | the Prometheus text format: the process's counters and histograms, and gauges from the same snapshot (see [`metrics`]) |
//!
//! # Design choices
//!
//! - Handlers are thin: they authenticate, validate in the reference's order (credentials, then
//!   key, then parameters) and hand over to [`RideService`]; the service decides everything
//!   else and answers with an [`crate::rides::ApiReply`].
//! - Every response is JSON, including 404 for unknown routes and 405 for a wrong method, and
//!   every error goes through [`ApiError`] (one status table, internals logged, not sent).
//! - Handlers do not use extractors that can reject with axum's plain-text errors: the body,
//!   the query and path parameters are read raw and decoded here, so a bad input always gets a
//!   clear JSON 4xx and never a panic.
//! - The client's address comes from [`ConnectInfo`] when the server provides it ([`serve`]
//!   does), and defaults to `127.0.0.1` otherwise (tests with `oneshot`, the completer).
//! - The server ([`server`]) is hyper's HTTP/1.1 connection driver under an accept loop of
//!   our own: header, body and keep-alive timeouts, a cap on connections, and request heads
//!   checked before hyper sees them ([`framing`]), so that errors of the HTTP layer (400,
//!   408, 414, 431, 503) are JSON too and no client can hold the server with slow or idle
//!   connections.
//! - `raise_error=true` is honoured only when [`AppState::allow_test_errors`] is set
//!   (`--allow-test-errors`, the demo, the tests): elsewhere it is a 400.

mod conn;
pub mod dispatch;
mod error;
pub mod framing;
mod handlers;
pub mod metrics;
pub mod server;
pub mod stats;

use std::net::SocketAddr;
use std::sync::Arc;

use async_trait::async_trait;
use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use ports::RideStore;

use crate::rides::RideService;

pub use error::ApiError;
pub use framing::HeadLimits;
pub use server::{ServeOptions, bind, serve, serve_with};

/// Something that can describe the system's progress for `GET /stats`.
///
/// It is called by one background refresh at most once a second ([`stats`]), never by a
/// request directly, so it may be expensive.
#[async_trait]
pub trait StatsProvider: Send + Sync {
    /// A JSON object: each consumer's position, total and lag, and whatever else helps.
    ///
    /// # Errors
    /// When a dependency (the store) cannot be read: `GET /stats` then answers 503.
    async fn stats(&self) -> anyhow::Result<serde_json::Value>;
}

/// What every handler shares.
#[derive(Clone)]
pub struct AppState {
    /// The ride service (`POST /rides`).
    pub rides: Arc<RideService>,
    /// The canonical store (authentication, reads, health).
    pub store: Arc<dyn RideStore>,
    /// The log, when this process has one: reported by `GET /healthz/ready` (the API needs
    /// only the store, so a log that is down does not make it unready).
    pub log: Option<Arc<dyn ports::Log>>,
    /// The source of `GET /stats` (each router computes from it through its own snapshot);
    /// `None` answers 404.
    pub stats: Option<Arc<dyn StatsProvider>>,
    /// Whether `raise_error=true` (the reference's test switch) is honoured; otherwise such
    /// a request is refused with a 400 before anything is stored (`--allow-test-errors`).
    pub allow_test_errors: bool,
    /// The store's event store: with one, the router also serves ride dispatch
    /// ([`dispatch::router`]).
    pub events: Option<Arc<dyn ports::EventStore>>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("rides", &self.rides)
            .field("store", &self.store.describe())
            .field("stats", &self.stats.is_some())
            .field("allow_test_errors", &self.allow_test_errors)
            .finish()
    }
}

/// The API's router, with JSON 404 and 405 fallbacks.
pub fn router(state: AppState) -> Router {
    let stats_cache = state
        .stats
        .clone()
        .map(|p| Arc::new(stats::StatsCache::new(p, stats::STATS_MIN_INTERVAL)));
    let dispatch = state.events.clone().map(|events| {
        dispatch::router(dispatch::DispatchState::new(
            events,
            state.store.clone(),
            Arc::new(ports::SystemClock),
        ))
    });
    let source = metrics::MetricsSource {
        metrics: state.rides.metrics().clone(),
        faults: state.rides.config().faults.clone(),
        stats: stats_cache.clone(),
    };
    let tracked = state.rides.metrics().clone();
    let mut app = Router::new()
        .route(
            "/rides",
            get(handlers::list_rides).post(handlers::create_ride),
        )
        .route("/rides/{id}", get(handlers::get_ride))
        .route("/healthz", get(handlers::healthz))
        .route("/healthz/live", get(handlers::live))
        .route("/healthz/ready", get(handlers::ready))
        .route("/stats", get(handlers::stats))
        .route("/metrics", get(metrics::metrics).with_state(source))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        .layer(axum::Extension(stats_cache))
        .with_state(state);
    if let Some(dispatch) = dispatch {
        app = app.merge(dispatch);
    }
    app.layer(axum::middleware::from_fn_with_state(
        tracked,
        metrics::track,
    ))
}

/// The client's IP as text, `127.0.0.1` when the server did not record it.
fn client_ip(info: Option<&ConnectInfo<SocketAddr>>) -> String {
    info.map_or_else(|| "127.0.0.1".to_owned(), |ci| ci.0.ip().to_string())
}
