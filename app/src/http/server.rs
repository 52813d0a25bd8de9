//! The API's HTTP/1.1 server: hyper's connection driver under our own accept loop, so that
//! hostile clients cannot starve the others.
//!
//! - **Timeouts** for headers, bodies and idle keep-alive connections (see [`super::conn`]).
//! - **A cap on open connections**, below the file-descriptor limit by default. At the cap a
//!   new connection takes the slot of the connection that has been open longest among those
//!   with no request in flight (an idle keep-alive connection, or one still sending its
//!   head: what slowloris holds); when every connection has a request in flight, the new
//!   one is refused at once with a JSON 503. Both are logged (at most once a second, with
//!   counts), so the server never silently runs out of descriptors and lets requests time
//!   out.
//! - **Checked request heads** (see [`super::framing`]): 400, 414 and 431 are the API's JSON
//!   errors, and a request with both `Content-Length` and `Transfer-Encoding` is refused.
//!
//! Graceful shutdown: the listener closes, idle connections close, requests in flight are
//! answered, then [`serve_with`] returns. Dropping its future closes every connection at once
//! (the in-process `kill -9` of the tests).

use std::collections::VecDeque;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::conn::{ConnService, ConnShared, GuardedIo, Timeouts};
use super::framing::HeadLimits;
use super::{ApiError, AppState, router};

/// How the server treats its clients.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServeOptions {
    /// A connection's first complete request head must arrive within this of its accept; a
    /// later head within this of its first byte.
    pub header_timeout: Duration,
    /// A request body must be complete within this of the end of its head.
    pub body_timeout: Duration,
    /// How long a connection may stay idle between requests.
    pub keepalive_timeout: Duration,
    /// The most connections open at once; `None`: from the file-descriptor limit
    /// ([`default_max_connections`]).
    pub max_connections: Option<usize>,
    /// Sizes of request heads.
    pub limits: HeadLimits,
}

impl Default for ServeOptions {
    /// Headers 10 s, bodies 10 s, keep-alive 60 s, the cap from the descriptor limit,
    /// heads of 16 KiB (targets 8 KiB, 100 fields).
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            keepalive_timeout: Duration::from_secs(60),
            max_connections: None,
            limits: HeadLimits::default(),
        }
    }
}

impl ServeOptions {
    fn timeouts(&self) -> Timeouts {
        Timeouts {
            header: self.header_timeout,
            body: self.body_timeout,
            keepalive: self.keepalive_timeout,
        }
    }
}

/// The listen backlog asked for by [`bind`] (the kernel caps it at `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds a listener for [`serve_with`] with a deep accept queue: tokio's `bind` asks for 128,
/// which a burst of connections (an attack, or many clients reconnecting at once) overflows,
/// and a normal client whose SYN is dropped waits a second for its retransmission.
///
/// # Errors
/// When the address cannot be bound.
pub fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The process's soft limit on open file descriptors (`/proc/self/limits`); `None` when it
/// cannot be read (not Linux) or is unlimited.
pub fn fd_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// The default cap on connections: the descriptor limit minus a reserve of a tenth of it
/// (at least 64) for the store's and the log's connections, files and the listener; 922
/// when the limit is unknown (as for 1024).
pub fn default_max_connections() -> usize {
    let limit = fd_limit().unwrap_or(1024);
    limit.saturating_sub((limit / 10).max(64)).max(16)
}

/// Serves the API on `listener` with the default [`ServeOptions`] until `shutdown`
/// completes, then drains in-flight requests.
///
/// # Errors
/// Never in practice: accept errors are logged and retried (kept for the signature's sake).
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    serve_with(listener, state, ServeOptions::default(), shutdown).await
}

/// Serves the API on `listener` with `opts` until `shutdown` completes, then drains
/// in-flight requests. Handlers see the client's address ([`axum::extract::ConnectInfo`]).
///
/// # Errors
/// Never in practice: accept errors are logged and retried.
pub async fn serve_with(
    listener: TcpListener,
    state: AppState,
    opts: ServeOptions,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let max = opts
        .max_connections
        .unwrap_or_else(default_max_connections)
        .max(1);
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(
            %addr,
            max_connections = max,
            header_timeout_ms = opts.header_timeout.as_millis() as u64,
            body_timeout_ms = opts.body_timeout.as_millis() as u64,
            keepalive_timeout_ms = opts.keepalive_timeout.as_millis() as u64,
            "API listening"
        );
    }
    let metrics = state.rides.metrics().clone();
    let app = router(state);
    let registry = Arc::new(Registry::new(max, metrics));
    let stop = CancellationToken::new();
    let mut connections = JoinSet::new();
    let accept_errors = Throttle::default();
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            Some(done) = connections.join_next(), if !connections.is_empty() => {
                if let Err(e) = done
                    && e.is_panic()
                {
                    tracing::error!(error = %e, "a connection task panicked");
                }
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    let shared = ConnShared::new(opts.timeouts());
                    match registry.admit(&shared) {
                        Some(slot) => {
                            connections.spawn(connection(
                                stream,
                                remote,
                                app.clone(),
                                shared,
                                opts,
                                stop.clone(),
                                slot,
                            ));
                        }
                        None => refuse(&stream),
                    }
                }
                Err(e) if is_per_connection(&e) => {}
                Err(e) => {
                    // Out of descriptors (EMFILE/ENFILE) or memory: back off a little.
                    accept_errors.note(|n| {
                        tracing::warn!(error = %e, errors = n, "accepting connections failed");
                    });
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
        }
    }
    drop(listener);
    stop.cancel();
    while connections.join_next().await.is_some() {}
    Ok(())
}

/// Errors that concern one connection only (the client gave up before the accept).
fn is_per_connection(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}

/// Refuses a connection over the cap: a JSON 503 if the socket takes it at once, then close.
fn refuse(stream: &TcpStream) {
    let _ = stream.try_write(&ApiError::TooManyConnections.raw_response());
}

/// One connection, from accept to close.
async fn connection(
    stream: TcpStream,
    remote: SocketAddr,
    app: Router,
    shared: Arc<ConnShared>,
    opts: ServeOptions,
    stop: CancellationToken,
    _slot: Slot,
) {
    let _ = stream.set_nodelay(true);
    let io = GuardedIo::new(stream, shared.clone(), opts.limits);
    let service = ConnService::new(app, shared.clone(), remote);
    let mut http = hyper::server::conn::http1::Builder::new();
    http.header_read_timeout(None).half_close(false);
    let conn = http.serve_connection(io, service);
    let mut conn = std::pin::pin!(conn);
    let mut draining = false;
    loop {
        tokio::select! {
            done = conn.as_mut() => {
                if let Err(e) = done {
                    tracing::debug!(%remote, error = %e, "connection ended with an error");
                }
                return;
            }
            why = shared.watchdog() => {
                tracing::debug!(%remote, ?why, "closing the connection");
                shared.expired(why);
                return;
            }
            () = stop.cancelled(), if !draining => {
                draining = true;
                conn.as_mut().graceful_shutdown();
            }
        }
    }
}

/// How many connections one eviction looks at, at most: at the cap with every connection busy,
/// a refusal must stay cheap.
const EVICTION_SCAN: usize = 256;

/// The open connections, oldest first, and the cap.
struct Registry {
    max: usize,
    metrics: Arc<crate::metrics::Metrics>,
    open: AtomicUsize,
    order: Mutex<VecDeque<Weak<ConnShared>>>,
    evictions: Throttle,
    refusals: Throttle,
}

/// An open connection's place under the cap, given back when it closes.
struct Slot(Arc<Registry>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.metrics.connection_open(-1);
    }
}

impl Registry {
    fn new(max: usize, metrics: Arc<crate::metrics::Metrics>) -> Self {
        Self {
            max,
            metrics,
            open: AtomicUsize::new(0),
            order: Mutex::new(VecDeque::new()),
            evictions: Throttle::default(),
            refusals: Throttle::default(),
        }
    }

    /// A slot for `conn`, evicting the oldest connection without a request in flight when at
    /// the cap; `None` when there is none to evict.
    fn admit(self: &Arc<Self>, conn: &Arc<ConnShared>) -> Option<Slot> {
        let mut order = self.order.lock().unwrap_or_else(|e| e.into_inner());
        if self.open.load(Ordering::SeqCst) >= self.max {
            if Self::evict_one(&mut order) {
                self.metrics.connection_evicted();
                self.evictions.note(|n| {
                    tracing::warn!(
                        max_connections = self.max,
                        evicted = n,
                        "connection limit reached: closed the longest-open idle connections to admit new ones"
                    );
                });
            } else {
                drop(order);
                self.metrics.connection_refused();
                self.refusals.note(|n| {
                    tracing::warn!(
                        max_connections = self.max,
                        refused = n,
                        "connection limit reached and every connection has a request in flight: refused new connections (503)"
                    );
                });
                return None;
            }
        }
        let open = self.open.fetch_add(1, Ordering::SeqCst) + 1;
        self.metrics.connection_open(1);
        order.push_back(Arc::downgrade(conn));
        if order.len() > 2 * open + 1024 {
            order.retain(|c| c.strong_count() > 0);
        }
        Some(Slot(Arc::clone(self)))
    }

    /// Evicts the oldest evictable connection among the first [`EVICTION_SCAN`] of the
    /// queue (connections with a request in flight go to its back); `false` when none is.
    fn evict_one(order: &mut VecDeque<Weak<ConnShared>>) -> bool {
        for _ in 0..order.len().min(EVICTION_SCAN) {
            let Some(weak) = order.pop_front() else {
                return false;
            };
            let Some(conn) = weak.upgrade() else {
                continue;
            };
            if conn.evictable() {
                conn.evict();
                return true;
            }
            order.push_back(weak);
        }
        false
    }
}

/// Logs an event at most once a second, with how many happened since the last log.
#[derive(Default)]
struct Throttle {
    count: AtomicU64,
    last: Mutex<Option<Instant>>,
}

impl Throttle {
    fn note(&self, log: impl FnOnce(u64)) {
        self.count.fetch_add(1, Ordering::Relaxed);
        let mut last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        if last.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            *last = Some(Instant::now());
            log(self.count.swap(0, Ordering::Relaxed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_leaves_a_reserve_below_the_descriptor_limit() {
        let max = default_max_connections();
        assert!(max >= 16);
        if let Some(limit) = fd_limit() {
            assert!(max < limit, "{max} < {limit}");
            assert!(limit - max >= 64);
        }
    }
}
