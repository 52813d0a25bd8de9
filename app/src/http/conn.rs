//! One connection of the API server: its shared state, the guard between the socket and
//! hyper, the service that counts requests in flight, and the watchdog that enforces the
//! timeouts.
//!
//! ```text
//!  socket ─▶ GuardedIo ──(checked heads, bodies)──▶ hyper http1 ─▶ ConnService ─▶ axum Router
//!             │ Framer: phase, refused heads          │ in flight ±1, response started
//!             └────────────── ConnShared ◀────────────┘
//!                                 ▲ deadlines from the phase
//!                             watchdog ─▶ closes the connection (408 JSON when a request
//!                                         was under way and nothing was answered yet)
//! ```
//!
//! Timeouts, all measured by the watchdog from the connection's phase:
//!
//! - **header**: a new connection must deliver its first complete head within it of being
//!   accepted (a connection that sends nothing at all is closed then too); a later head
//!   within it of its first byte;
//! - **body**: a body must be complete within it of the end of its head;
//! - **keep-alive**: between requests (no request in flight, no byte of the next head), a
//!   connection may stay idle this long.
//!
//! A refused head (see [`super::framing`]) is answered with its JSON error after the
//! responses to the requests before it, then the connection is closed: the error is written
//! when hyper shuts the socket down, which then lingers (reads and discards for up to 1 s)
//! so that the client reads the answer rather than a reset.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, Response};
use bytes::{Buf as _, Bytes, BytesMut};
use futures::task::AtomicWaker;
use hyper::body::Incoming;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::ServiceExt as _;

use super::ApiError;
use super::framing::{Framer, HeadLimits, Phase};

/// How long a closing connection reads and discards after its last answer, at most.
const LINGER: Duration = Duration::from_secs(1);
/// How much a closing connection reads and discards, at most.
const LINGER_BYTES: usize = 1 << 20;

/// The three timeouts (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Timeouts {
    pub(super) header: Duration,
    pub(super) body: Duration,
    pub(super) keepalive: Duration,
}

/// Why the watchdog closes a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Expiry {
    /// The server needed its slot for a new connection (it had no request in flight).
    Evicted,
    /// Idle between requests for longer than the keep-alive timeout.
    Idle,
    /// Its head did not arrive in time; `started`: some of it did.
    Header { started: bool },
    /// Its body did not arrive in time.
    Body,
}

/// What the connection's parts share.
pub(super) struct ConnShared {
    accepted: Instant,
    timeouts: Timeouts,
    state: Mutex<ConnState>,
    /// Wakes the watchdog when the state changes.
    changed: Notify,
    /// Wakes a reader waiting for the requests in flight to finish (after a refused head).
    reader: AtomicWaker,
}

struct ConnState {
    phase: Phase,
    /// When `phase` (or the count of heads) last changed.
    since: Instant,
    /// Heads passed on to hyper so far.
    heads: u64,
    in_flight: usize,
    /// The current request's response has been handed to hyper.
    responding: bool,
    /// When the last request in flight finished.
    idle_since: Instant,
    evicted: bool,
    /// A head was refused: no more requests; close once those in flight are answered.
    refused: bool,
    /// Written to the client when the connection closes (a refusal or a 408).
    close_with: Option<Bytes>,
    /// The deadline the watchdog sleeps until (`None`: it waits for a change only). A change
    /// wakes it only when it brings the deadline earlier: most changes (a request starts,
    /// ends, a head completes) push it later, and the watchdog finds that out when it wakes.
    armed: Option<Instant>,
}

impl ConnShared {
    /// The state of a connection accepted now.
    pub(super) fn new(timeouts: Timeouts) -> Arc<Self> {
        let now = Instant::now();
        Arc::new(Self {
            accepted: now,
            timeouts,
            state: Mutex::new(ConnState {
                phase: Phase::AwaitingHead,
                since: now,
                heads: 0,
                in_flight: 0,
                responding: false,
                idle_since: now,
                evicted: false,
                refused: false,
                close_with: None,
                armed: None,
            }),
            changed: Notify::new(),
            reader: AtomicWaker::new(),
        })
    }

    fn state(&self) -> MutexGuard<'_, ConnState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the server may close it to admit a new connection: no request in flight and
    /// nothing but (part of) a head received since.
    pub(super) fn evictable(&self) -> bool {
        let s = self.state();
        !s.evicted
            && !s.refused
            && s.in_flight == 0
            && matches!(s.phase, Phase::AwaitingHead | Phase::InHead)
    }

    /// Wakes the watchdog if the change just made to `s` brings its deadline earlier.
    fn reschedule(&self, s: MutexGuard<'_, ConnState>) {
        let next = self.deadline_of(&s).map(|(at, _)| at);
        let wake = match (next, s.armed) {
            (Some(next), Some(armed)) => next < armed,
            (Some(_), None) => true,
            (None, _) => false,
        };
        drop(s);
        if wake {
            self.changed.notify_one();
        }
    }

    /// Asks the connection's watchdog to close it now.
    pub(super) fn evict(&self) {
        let mut s = self.state();
        s.evicted = true;
        self.reschedule(s);
    }

    fn set_phase(&self, phase: Phase, heads: u64) {
        let mut s = self.state();
        if s.phase != phase || s.heads != heads {
            s.phase = phase;
            s.heads = heads;
            s.since = Instant::now();
            self.reschedule(s);
        }
    }

    fn refuse(&self, error: &ApiError) {
        let mut s = self.state();
        s.refused = true;
        s.close_with = Some(error.raw_response());
    }

    fn refused(&self) -> bool {
        self.state().refused
    }

    fn in_flight(&self) -> usize {
        self.state().in_flight
    }

    fn request_started(&self) {
        let mut s = self.state();
        s.in_flight += 1;
        s.responding = false;
        self.reschedule(s);
    }

    fn request_responding(&self) {
        self.state().responding = true;
    }

    fn request_done(&self) {
        let mut s = self.state();
        s.in_flight = s.in_flight.saturating_sub(1);
        if s.in_flight == 0 {
            s.idle_since = Instant::now();
        }
        self.reschedule(s);
        self.reader.wake();
    }

    fn take_close_response(&self) -> Option<Bytes> {
        self.state().close_with.take()
    }

    /// The next deadline and what expires then; `None` while only a request's handler
    /// runs (or a refused connection finishes its answers).
    fn deadline_of(&self, s: &ConnState) -> Option<(Instant, Expiry)> {
        let t = &self.timeouts;
        if s.evicted {
            return Some((Instant::now(), Expiry::Evicted));
        }
        if s.refused {
            return None;
        }
        let idle_from = s.since.max(s.idle_since);
        match s.phase {
            Phase::AwaitingHead | Phase::Opaque if s.in_flight > 0 => None,
            Phase::AwaitingHead if s.heads == 0 => {
                Some((self.accepted + t.header, Expiry::Header { started: false }))
            }
            Phase::AwaitingHead | Phase::Opaque => Some((idle_from + t.keepalive, Expiry::Idle)),
            Phase::InHead => {
                let from = if s.heads == 0 { self.accepted } else { s.since };
                Some((from + t.header, Expiry::Header { started: true }))
            }
            Phase::InBody => Some((s.since + t.body, Expiry::Body)),
        }
    }

    /// Waits until a deadline passes; returns why.
    pub(super) async fn watchdog(&self) -> Expiry {
        loop {
            let next = {
                let mut s = self.state();
                let next = self.deadline_of(&s);
                s.armed = next.map(|(at, _)| at);
                next
            };
            match next {
                Some((at, why)) if at <= Instant::now() => return why,
                Some((at, _)) => {
                    tokio::select! {
                        () = tokio::time::sleep_until(at) => {}
                        () = self.changed.notified() => {}
                    }
                }
                None => self.changed.notified().await,
            }
        }
    }

    /// Prepares the connection's last words for `why` (written when it is dropped): a 408
    /// when a request was under way and nothing was answered yet, else nothing.
    pub(super) fn expired(&self, why: Expiry) {
        let t = &self.timeouts;
        let mut s = self.state();
        let answer = match why {
            Expiry::Header { started: true } if s.in_flight == 0 => Some(format!(
                "The request headers were not received within {} ms.",
                t.header.as_millis()
            )),
            Expiry::Body if !s.responding => Some(format!(
                "The request body was not received within {} ms.",
                t.body.as_millis()
            )),
            _ => None,
        };
        s.close_with = answer.map(|m| ApiError::RequestTimeout(m).raw_response());
    }
}

/// The socket as hyper sees it: only checked heads pass (see [`super::framing`]).
pub(super) struct GuardedIo {
    stream: TcpStream,
    shared: Arc<ConnShared>,
    framer: Framer,
    /// Read from the socket, not yet passed on (a partial head).
    input: BytesMut,
    /// Passed on, not yet read by hyper.
    ready: BytesMut,
    eof: bool,
    closing: Closing,
}

/// The steps of `poll_shutdown`.
enum Closing {
    Open,
    Writing(Bytes),
    Shutdown { linger: bool },
    Draining(Pin<Box<tokio::time::Sleep>>, usize),
    Closed,
}

impl GuardedIo {
    pub(super) fn new(stream: TcpStream, shared: Arc<ConnShared>, limits: HeadLimits) -> Self {
        Self {
            stream,
            shared,
            framer: Framer::new(limits),
            input: BytesMut::new(),
            ready: BytesMut::new(),
            eof: false,
            closing: Closing::Open,
        }
    }

    /// Frames what was just read; refuses the connection's next head when it must be.
    fn frame(&mut self, got: &[u8]) {
        self.input.extend_from_slice(got);
        if let Err(r) = self.framer.feed(&mut self.input, &mut self.ready) {
            let error = ApiError::from(r);
            tracing::debug!(status = %error.status(), error = %error, "refusing a request head");
            self.input = BytesMut::new();
            self.shared.refuse(&error);
        }
        self.shared
            .set_phase(self.framer.phase(&self.input), self.framer.heads());
    }
}

impl hyper::rt::Read for GuardedIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        mut buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.ready.is_empty() {
                let n = buf.remaining().min(this.ready.len());
                buf.put_slice(&this.ready[..n]);
                this.ready.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.shared.refused() {
                // End of input for hyper once the requests before the refused head are
                // answered: it then closes, and `poll_shutdown` sends the refusal.
                this.shared.reader.register(cx.waker());
                return if this.shared.in_flight() == 0 {
                    Poll::Ready(Ok(()))
                } else {
                    Poll::Pending
                };
            }
            if this.eof {
                return Poll::Ready(Ok(()));
            }
            // Wait for data without a buffer: an idle connection holds no read buffer here.
            ready!(this.stream.poll_read_ready(cx))?;
            let mut scratch = [0u8; 8192];
            match this.stream.try_read(&mut scratch) {
                Ok(0) => {
                    // A partial head at the end is dropped: hyper sees a clean end.
                    this.eof = true;
                }
                Ok(n) => this.frame(&scratch[..n]),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Err(e)),
            }
        }
    }
}

impl hyper::rt::Write for GuardedIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    /// Writes the connection's last words (a refusal), shuts the write side, and lingers.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            match &mut this.closing {
                Closing::Open => {
                    this.closing = match this.shared.take_close_response() {
                        Some(last) => Closing::Writing(last),
                        None => Closing::Shutdown { linger: false },
                    };
                }
                Closing::Writing(last) => {
                    while !last.is_empty() {
                        match ready!(Pin::new(&mut this.stream).poll_write(cx, last)) {
                            Ok(0) | Err(_) => {
                                this.closing = Closing::Closed;
                                return Poll::Ready(Ok(()));
                            }
                            Ok(n) => last.advance(n),
                        }
                    }
                    this.closing = Closing::Shutdown { linger: true };
                }
                Closing::Shutdown { linger } => {
                    let linger = *linger;
                    let done = ready!(Pin::new(&mut this.stream).poll_shutdown(cx));
                    if linger && done.is_ok() {
                        this.closing = Closing::Draining(Box::pin(tokio::time::sleep(LINGER)), 0);
                    } else {
                        this.closing = Closing::Closed;
                        return Poll::Ready(done);
                    }
                }
                Closing::Draining(until, drained) => {
                    if until.as_mut().poll(cx).is_ready() || *drained > LINGER_BYTES {
                        this.closing = Closing::Closed;
                        continue;
                    }
                    let mut scratch = [0u8; 8192];
                    let mut read = tokio::io::ReadBuf::new(&mut scratch);
                    match ready!(Pin::new(&mut this.stream).poll_read(cx, &mut read)) {
                        Ok(()) if !read.filled().is_empty() => *drained += read.filled().len(),
                        _ => this.closing = Closing::Closed,
                    }
                }
                Closing::Closed => return Poll::Ready(Ok(())),
            }
        }
    }
}

impl Drop for GuardedIo {
    /// A connection closed by its watchdog has not been shut down through hyper: send its
    /// last words (a 408) if the socket takes them at once.
    fn drop(&mut self) {
        if let Some(last) = self.shared.take_close_response() {
            let _ = self.stream.try_write(&last);
        }
    }
}

/// The service hyper calls for each request: the router, with the client's address, and
/// the connection's count of requests in flight.
#[derive(Clone)]
pub(super) struct ConnService {
    router: Router,
    shared: Arc<ConnShared>,
    remote: SocketAddr,
}

impl ConnService {
    pub(super) fn new(router: Router, shared: Arc<ConnShared>, remote: SocketAddr) -> Self {
        Self {
            router,
            shared,
            remote,
        }
    }
}

impl hyper::service::Service<Request<Incoming>> for ConnService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = InFlight::start(Arc::clone(&self.shared));
        let mut req = req.map(Body::new);
        req.extensions_mut().insert(ConnectInfo(self.remote));
        let router = self.router.clone();
        Box::pin(async move {
            let Ok(response) = router.oneshot(req).await;
            guard.0.request_responding();
            Ok(response.map(|inner| {
                Body::new(GuardedBody {
                    inner,
                    _guard: guard,
                })
            }))
        })
    }
}

/// One request in flight, until its response body is dropped (sent, or abandoned).
struct InFlight(Arc<ConnShared>);

impl InFlight {
    fn start(shared: Arc<ConnShared>) -> Self {
        shared.request_started();
        Self(shared)
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.request_done();
    }
}

/// A response body that keeps its request in flight until hyper is done with it.
struct GuardedBody {
    inner: Body,
    _guard: InFlight,
}

impl http_body::Body for GuardedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.get_mut().inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
