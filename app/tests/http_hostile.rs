//! Hostile clients against the real server on a socket: malformed, oversized and ambiguous
//! request heads get JSON errors; slow heads, slow bodies and idle connections are closed
//! within their timeouts; the connection cap evicts idle connections and refuses the rest;
//! and a normal client keeps being answered while hundreds of slow and thousands of idle
//! connections are open.

mod http_common;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use adapters::memory::MemoryStore;
use adapters::payment::FakeProcessor;
use app::http::{AppState, ServeOptions, serve_with};
use app::rides::{RideService, RideServiceConfig};
use http_common::*;
use ports::{ManualClock, RideStore};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A server on a socket, over a memory store.
struct Server {
    addr: SocketAddr,
    store: Arc<MemoryStore>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn start(opts: ServeOptions, allow_test_errors: bool, wrap: Option<WrapStore>) -> Self {
        let store = Arc::new(MemoryStore::new("memory"));
        let served: Arc<dyn RideStore> = match wrap {
            Some(f) => f(store.clone()),
            None => store.clone(),
        };
        let rides = Arc::new(RideService::new(
            served.clone(),
            Arc::new(FakeProcessor::default()),
            Arc::new(ManualClock::new(T0)),
            RideServiceConfig::default(),
        ));
        let state = AppState {
            rides,
            store: served,
            log: None,
            stats: None,
            allow_test_errors,
            events: None,
        };
        let listener = app::http::bind(([127, 0, 0, 1], 0).into()).unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(serve_with(listener, state, opts, async move {
            let _ = stopped.await;
        }));
        Self {
            addr,
            store,
            stop: Some(stop),
            task,
        }
    }

    async fn rides(&self) -> u64 {
        self.store.truth().await.unwrap().rides
    }

    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(10), self.task)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }
}

/// Short timeouts for the tests.
fn quick() -> ServeOptions {
    ServeOptions {
        header_timeout: Duration::from_millis(1500),
        body_timeout: Duration::from_millis(1500),
        keepalive_timeout: Duration::from_millis(1500),
        ..ServeOptions::default()
    }
}

/// One parsed response.
#[derive(Debug)]
struct Raw {
    status: u16,
    head: String,
    body: Value,
}

impl Raw {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
}

/// Parses the responses in `bytes` (each with a Content-Length), asserting each is JSON.
fn parse_all(mut bytes: &[u8]) -> Vec<Raw> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        let text = String::from_utf8_lossy(bytes).into_owned();
        let (head, _) = text
            .split_once("\r\n\r\n")
            .unwrap_or_else(|| panic!("a whole head in {text:?}"));
        let head = head.to_ascii_lowercase();
        let status = head[9..12].parse().unwrap();
        assert!(
            head.contains("content-type: application/json"),
            "every response is JSON: {head}"
        );
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("content-length: "))
            .expect("a content-length")
            .trim()
            .parse()
            .unwrap();
        let start = head.len() + 4;
        let body = serde_json::from_slice(&bytes[start..start + len]).expect("a JSON body");
        out.push(Raw { status, head, body });
        bytes = &bytes[start + len..];
    }
    out
}

/// Sends `request` on a new connection and reads until the server closes it.
async fn exchange(addr: SocketAddr, request: &[u8]) -> Vec<Raw> {
    let mut s = TcpStream::connect(addr).await.unwrap();
    s.write_all(request).await.unwrap();
    parse_all(&read_to_close(&mut s, Duration::from_secs(10)).await)
}

/// Everything the server sends until it closes (or `limit` passes: a failure).
async fn read_to_close(s: &mut TcpStream, limit: Duration) -> Vec<u8> {
    let mut got = Vec::new();
    tokio::time::timeout(limit, async {
        let mut buf = [0u8; 4096];
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .expect("the server closes the connection");
    got
}

fn post_rides_head(extra: &str, body: &str) -> Vec<u8> {
    format!(
        "POST /rides HTTP/1.1\r\nHost: x\r\nAuthorization: {USER}\r\nIdempotency-Key: {}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n{extra}\r\n{body}",
        new_key()
    )
    .into_bytes()
}

// ---- JSON errors from the HTTP layer ------------------------------------------------------

#[tokio::test]
async fn malformed_heads_get_a_json_400() {
    let server = Server::start(quick(), false, None).await;
    for bad in [
        &b"GET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n"[..],
        b"G(T /healthz HTTP/1.1\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    ] {
        let r = exchange(server.addr, bad).await;
        assert_eq!(r.len(), 1, "{bad:?}");
        assert_eq!(r[0].status, 400, "{bad:?}");
        assert!(r[0].error().starts_with("Malformed request: "), "{r:?}");
        assert!(r[0].head.contains("connection: close"));
    }
    server.stop().await;
}

#[tokio::test]
async fn a_long_uri_gets_a_json_414_and_large_headers_a_json_431() {
    let server = Server::start(quick(), false, None).await;
    let long = format!("GET /{} HTTP/1.1\r\nHost: x\r\n\r\n", "a".repeat(9000));
    let r = exchange(server.addr, long.as_bytes()).await;
    assert_eq!(r[0].status, 414);
    assert!(r[0].error().contains("URI is too long"), "{r:?}");

    // 100 KiB of headers: the client sends them all and still reads the answer.
    let big = format!(
        "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
        "b".repeat(100 * 1024)
    );
    let r = exchange(server.addr, big.as_bytes()).await;
    assert_eq!(r[0].status, 431);
    assert!(r[0].error().contains("headers are too large"), "{r:?}");

    let many: String = (0..150).map(|i| format!("X-{i}: 1\r\n")).collect();
    let many = format!("GET /healthz HTTP/1.1\r\nHost: x\r\n{many}\r\n");
    let r = exchange(server.addr, many.as_bytes()).await;
    assert_eq!(r[0].status, 431);
    server.stop().await;
}

#[tokio::test]
async fn a_request_with_both_content_length_and_transfer_encoding_is_refused() {
    let server = Server::start(quick(), false, None).await;
    let body = format!("{:x}\r\n{VALID_FORM}\r\n0\r\n\r\n", VALID_FORM.len());
    for extra in [
        format!(
            "Content-Length: {}\r\nTransfer-Encoding: chunked\r\n",
            body.len()
        ),
        format!(
            "Transfer-Encoding: chunked\r\nContent-Length: {}\r\n",
            body.len()
        ),
    ] {
        let r = exchange(server.addr, &post_rides_head(&extra, &body)).await;
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].status, 400);
        assert_eq!(
            r[0].error(),
            "A request may not have both Content-Length and Transfer-Encoding."
        );
    }
    assert_eq!(server.rides().await, 0, "nothing was created");
    // Chunked alone is fine.
    let r = exchange(
        server.addr,
        &post_rides_head("Transfer-Encoding: chunked\r\nConnection: close\r\n", &body),
    )
    .await;
    assert_eq!(r[0].status, 201, "{r:?}");
    server.stop().await;
}

#[tokio::test]
async fn requests_before_a_refused_head_are_answered_first() {
    let server = Server::start(quick(), false, None).await;
    let r = exchange(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\nGET /healthz HTTP/1.1\r\nBad Header: x\r\n\r\n",
    )
    .await;
    let statuses: Vec<u16> = r.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 400]);
    server.stop().await;
}

// ---- timeouts ---------------------------------------------------------------------------

#[tokio::test]
async fn a_slow_head_is_closed_with_a_json_408_within_the_header_timeout() {
    let server = Server::start(quick(), false, None).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let opened = Instant::now();
    // A byte every 200 ms: it never completes its head.
    let trickle = async {
        for b in b"GET /healthz HTTP/1.1\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa" {
            if s.write_all(&[*b]).await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(1200), trickle).await;
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = opened.elapsed();
    assert!(
        closed >= Duration::from_millis(1400) && closed < Duration::from_millis(2500),
        "closed after {closed:?} (header timeout 1.5 s)"
    );
    let r = parse_all(&got);
    assert_eq!(r[0].status, 408);
    assert!(r[0].error().contains("headers were not received"), "{r:?}");
    server.stop().await;
}

#[tokio::test]
async fn a_connection_that_sends_nothing_is_closed_silently_within_the_header_timeout() {
    let server = Server::start(quick(), false, None).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let opened = Instant::now();
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = opened.elapsed();
    assert!(
        got.is_empty(),
        "nothing is sent to a client that said nothing"
    );
    assert!(
        closed >= Duration::from_millis(1400) && closed < Duration::from_millis(2500),
        "closed after {closed:?}"
    );
    server.stop().await;
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_keepalive_timeout() {
    let opts = ServeOptions {
        keepalive_timeout: Duration::from_millis(800),
        header_timeout: Duration::from_secs(5),
        ..quick()
    };
    let server = Server::start(opts, false, None).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = s.read(&mut buf).await.unwrap();
    let answered = Instant::now();
    assert_eq!(parse_all(&buf[..n])[0].status, 200);
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = answered.elapsed();
    assert!(got.is_empty());
    assert!(
        closed >= Duration::from_millis(700) && closed < Duration::from_millis(2000),
        "closed {closed:?} after the answer (keep-alive 0.8 s, header timeout 5 s)"
    );
    server.stop().await;
}

#[tokio::test]
async fn a_slow_body_gets_a_json_408_and_creates_nothing() {
    let server = Server::start(quick(), false, None).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let mut request = post_rides_head(&format!("Content-Length: {}\r\n", VALID_FORM.len()), "");
    request.extend_from_slice(&VALID_FORM.as_bytes()[..10]);
    s.write_all(&request).await.unwrap();
    let sent = Instant::now();
    let got = read_to_close(&mut s, Duration::from_secs(5)).await;
    let closed = sent.elapsed();
    assert!(
        closed >= Duration::from_millis(1400) && closed < Duration::from_millis(2500),
        "closed after {closed:?} (body timeout 1.5 s)"
    );
    let r = parse_all(&got);
    assert_eq!(r[0].status, 408);
    assert!(r[0].error().contains("body was not received"), "{r:?}");
    assert_eq!(server.rides().await, 0);
    server.stop().await;
}

// ---- the test switch ----------------------------------------------------------------------

#[tokio::test]
async fn raise_error_is_refused_unless_test_errors_are_allowed() {
    let form = format!("{VALID_FORM}&raise_error=true");
    let request = |key: &str| {
        format!(
            "POST /rides HTTP/1.1\r\nHost: x\r\nAuthorization: {USER}\r\nIdempotency-Key: {key}\r\n\
             Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\
             Connection: close\r\n\r\n{form}",
            form.len()
        )
    };
    let server = Server::start(quick(), false, None).await;
    let key = new_key();
    let r = exchange(server.addr, request(&key).as_bytes()).await;
    assert_eq!(r[0].status, 400);
    assert!(r[0].error().contains("--allow-test-errors"), "{r:?}");
    assert!(
        server.store.key(1, &key).await.unwrap().is_none(),
        "nothing is stored for a refused request"
    );
    server.stop().await;

    let server = Server::start(quick(), true, None).await;
    let r = exchange(server.addr, request(&new_key()).as_bytes()).await;
    assert_eq!(r[0].status, 500, "allowed: the charge phase fails as asked");
    server.stop().await;
}

// ---- the connection cap -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn at_the_cap_idle_connections_make_room_and_busy_ones_refuse_with_a_json_503() {
    let opts = ServeOptions {
        max_connections: Some(20),
        header_timeout: Duration::from_secs(30),
        keepalive_timeout: Duration::from_secs(30),
        ..quick()
    };
    // The charge phase takes 300 ms: requests stay in flight.
    let server = Server::start(opts, false, Some(FailingStore::slow)).await;
    let mut idle = Vec::new();
    for _ in 0..20 {
        idle.push(TcpStream::connect(server.addr).await.unwrap());
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    // A normal client gets in: the oldest idle connection makes room.
    let started = Instant::now();
    let r = exchange(
        server.addr,
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(r[0].status, 200);
    assert!(started.elapsed() < Duration::from_secs(1));
    let evicted = read_to_close(&mut idle[0], Duration::from_secs(2)).await;
    assert!(evicted.is_empty(), "the oldest idle connection was closed");
    drop(idle);
    tokio::time::sleep(Duration::from_millis(200)).await;

    // Twenty requests in flight: the twenty-first connection is refused at once.
    let mut busy = Vec::new();
    for i in 0..20 {
        let mut s = TcpStream::connect(server.addr).await.unwrap();
        s.write_all(&post_rides_head(
            &format!(
                "Content-Length: {}\r\nConnection: close\r\n",
                VALID_FORM.len()
            ),
            VALID_FORM,
        ))
        .await
        .unwrap_or_else(|e| panic!("request {i}: {e}"));
        busy.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    let r = parse_all(&read_to_close(&mut s, Duration::from_secs(2)).await);
    assert_eq!(r[0].status, 503);
    assert_eq!(r[0].error(), "Too many connections. Please retry later.");
    for mut s in busy {
        let r = parse_all(&read_to_close(&mut s, Duration::from_secs(5)).await);
        assert_eq!(r[0].status, 201, "requests in flight are never evicted");
    }
    server.stop().await;
}

// ---- slowloris, at CI scale (scripts/slowloris.sh runs 3000 slow + 20 000 idle) -----------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_normal_client_is_answered_while_slow_and_idle_connections_are_held_and_closed() {
    const SLOW: usize = 300;
    const IDLE: usize = 2000;
    let timeout = Duration::from_secs(2);
    let opts = ServeOptions {
        header_timeout: timeout,
        keepalive_timeout: timeout,
        max_connections: Some(1500),
        ..quick()
    };
    let server = Server::start(opts, false, None).await;
    let addr = server.addr;

    // Each junk connection reports how long it stayed open.
    let mut junk = tokio::task::JoinSet::new();
    for i in 0..SLOW + IDLE {
        let slow = i < SLOW;
        let Ok(mut s) = TcpStream::connect(addr).await else {
            panic!("connection {i} could not be opened");
        };
        junk.spawn(async move {
            let opened = Instant::now();
            let mut buf = [0u8; 256];
            if slow {
                let _ = s.write_all(b"GET / HTTP/1.1\r\n").await;
                loop {
                    tokio::select! {
                        r = s.read(&mut buf) => if matches!(r, Ok(0) | Err(_)) { break },
                        () = tokio::time::sleep(Duration::from_millis(300)) => {
                            if s.write_all(b"X-a: b\r\n").await.is_err() { break; }
                        }
                    }
                }
            } else {
                while matches!(s.read(&mut buf).await, Ok(n) if n > 0) {}
            }
            opened.elapsed()
        });
    }

    // A normal client, a new connection per request, every 100 ms for 3 s.
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let mut worst = Duration::ZERO;
    let probing = Instant::now();
    let mut answered = 0;
    while probing.elapsed() < Duration::from_secs(3) {
        let t = Instant::now();
        let r = client
            .get(format!("http://{addr}/healthz"))
            .timeout(Duration::from_secs(5))
            .send()
            .await
            .expect("the normal client is answered");
        assert_eq!(r.status().as_u16(), 200);
        worst = worst.max(t.elapsed());
        answered += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(answered >= 10);
    assert!(worst < Duration::from_secs(1), "worst answer {worst:?}");

    let mut longest = Duration::ZERO;
    let done = tokio::time::timeout(Duration::from_secs(15), async {
        while let Some(open) = junk.join_next().await {
            longest = longest.max(open.unwrap());
        }
    })
    .await;
    assert!(
        done.is_ok(),
        "every slow or idle connection was closed by the server"
    );
    assert!(
        longest < timeout + Duration::from_millis(1500),
        "the longest junk connection stayed {longest:?} (header timeout {timeout:?})"
    );
    server.stop().await;
}
