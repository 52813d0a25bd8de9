//! `rides bench slowloris`: slow-header and idle connections against a running API, and a
//! normal client beside them.
//!
//! Opens `--slow` connections that send a request line and then one header line every
//! `--trickle-ms` (slowloris: the head never ends) and `--idle` connections that send
//! nothing, as fast as the machine allows (at most 512 connects in flight), and holds them
//! until the server closes them. Meanwhile a normal client sends `GET /healthz` on a new
//! connection every `--probe-ms` (a new connection each time is the hard case: it must get
//! past the others to be accepted). After `--seconds` it reports:
//!
//! - how many junk connections were opened, and how many the server closed, how long after
//!   they were opened (p50, p99, max), and how many within `--timeout-ms` + 1 s (the
//!   server's header timeout: closed "within the timeout");
//! - what the server said when it closed them (408 for a slow head, 503 when refused at the
//!   cap, nothing for an idle connection or an evicted one);
//! - the normal client's latency (p50, p99, max) and how many answers took more than 1 s.
//!
//! One process can hold only as many connections as its descriptor limit allows:
//! `scripts/slowloris.sh` runs the full 3000 slow + 20 000 idle from several processes
//! against a `rides api`. Timings are reported, never asserted.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_util::sync::CancellationToken;

use super::{Latency, progress};

/// Settings of `rides bench slowloris`.
#[derive(Debug, Clone)]
pub struct SlowlorisOptions {
    /// The API's address.
    pub target: SocketAddr,
    /// Slow-header connections.
    pub slow: usize,
    /// Idle connections.
    pub idle: usize,
    /// How long to run.
    pub seconds: f64,
    /// A slow connection sends a header line this often.
    pub trickle: Duration,
    /// The normal client sends a request this often (`None`: no normal client).
    pub probe: Option<Duration>,
    /// The server's header timeout, to count the connections closed within it.
    pub timeout: Duration,
}

impl SlowlorisOptions {
    /// 3000 slow and 20 000 idle connections against `target` for 20 s, a header line every
    /// second, a probe every 100 ms, a 10 s header timeout.
    pub fn new(target: SocketAddr) -> Self {
        Self {
            target,
            slow: 3000,
            idle: 20_000,
            seconds: 20.0,
            trickle: Duration::from_secs(1),
            probe: Some(Duration::from_millis(100)),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The normal client's side.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ProbeReport {
    /// Requests sent.
    pub requests: u64,
    /// Answered 200.
    pub ok: u64,
    /// Not answered, or answered otherwise.
    pub failed: u64,
    /// Answers that took more than 1 s.
    pub over_1s: u64,
    /// Latency of the answered requests.
    pub latency: Latency,
}

/// The result of `rides bench slowloris`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SlowlorisReport {
    /// The benchmark's name (`slowloris`).
    pub bench: &'static str,
    /// The API's address.
    pub target: String,
    /// Slow-header connections opened.
    pub slow_opened: u64,
    /// Idle connections opened.
    pub idle_opened: u64,
    /// Connections that could not be opened.
    pub open_failed: u64,
    /// Opened connections the server closed within the run.
    pub closed_by_server: u64,
    /// Of those, closed within the header timeout + 1 s of being opened.
    pub closed_within_timeout: u64,
    /// Still open at the end of the run.
    pub still_open: u64,
    /// How long the closed ones stayed open.
    pub lifetime: Latency,
    /// Closed with a 408 (a slow head).
    pub answered_408: u64,
    /// Closed with a 503 (refused at the connection cap).
    pub answered_503: u64,
    /// Closed without an answer (idle, or evicted at the cap).
    pub closed_silently: u64,
    /// The normal client, when there was one.
    pub probe: Option<ProbeReport>,
}

impl SlowlorisReport {
    /// A small text table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "rides bench slowloris against {}\n\
             opened: {} slow-header + {} idle ({} could not be opened)\n\
             closed by the server: {} ({} within the timeout + 1 s; {} with 408, {} with 503, {} silently), {} still open\n\
             time open before the server closed them: p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms\n",
            self.target,
            self.slow_opened,
            self.idle_opened,
            self.open_failed,
            self.closed_by_server,
            self.closed_within_timeout,
            self.answered_408,
            self.answered_503,
            self.closed_silently,
            self.still_open,
            self.lifetime.p50_ms,
            self.lifetime.p99_ms,
            self.lifetime.max_ms,
        );
        if let Some(p) = &self.probe {
            out.push_str(&format!(
                "normal client: {} requests, {} answered 200, {} failed, {} over 1 s; latency p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms\n",
                p.requests,
                p.ok,
                p.failed,
                p.over_1s,
                p.latency.p50_ms,
                p.latency.p99_ms,
                p.latency.max_ms
            ));
        }
        out
    }
}

/// What became of one junk connection.
enum Fate {
    NotOpened,
    /// Closed by the server after this long, with this status (`None`: no answer).
    Closed(Duration, Option<u16>),
    StillOpen,
}

/// Runs `rides bench slowloris`.
///
/// # Errors
/// When the options ask for nothing to run.
pub async fn bench_slowloris(opts: SlowlorisOptions) -> anyhow::Result<SlowlorisReport> {
    anyhow::ensure!(opts.seconds > 0.0, "--seconds must be positive");
    let stop = CancellationToken::new();
    let connects = Arc::new(tokio::sync::Semaphore::new(512));
    progress(&format!(
        "{} slow-header and {} idle connections against {} for {} s",
        opts.slow, opts.idle, opts.target, opts.seconds
    ));
    let mut junk = tokio::task::JoinSet::new();
    for i in 0..opts.slow + opts.idle {
        let slow = i < opts.slow;
        let (stop, connects) = (stop.clone(), connects.clone());
        let (target, trickle) = (opts.target, opts.trickle);
        junk.spawn(async move {
            let fate = one(target, slow, trickle, &connects, &stop).await;
            (slow, fate)
        });
    }
    let probe = opts
        .probe
        .map(|every| tokio::spawn(probe(opts.target, every, stop.clone())));
    tokio::time::sleep(Duration::from_secs_f64(opts.seconds)).await;
    stop.cancel();

    let mut report = SlowlorisReport {
        bench: "slowloris",
        target: opts.target.to_string(),
        slow_opened: 0,
        idle_opened: 0,
        open_failed: 0,
        closed_by_server: 0,
        closed_within_timeout: 0,
        still_open: 0,
        lifetime: Latency::of(Vec::new()),
        answered_408: 0,
        answered_503: 0,
        closed_silently: 0,
        probe: None,
    };
    let mut lifetimes = Vec::new();
    while let Some(done) = junk.join_next().await {
        let (slow, fate) = done?;
        if !matches!(fate, Fate::NotOpened) {
            *if slow {
                &mut report.slow_opened
            } else {
                &mut report.idle_opened
            } += 1;
        }
        match fate {
            Fate::NotOpened => report.open_failed += 1,
            Fate::StillOpen => report.still_open += 1,
            Fate::Closed(open, status) => {
                report.closed_by_server += 1;
                if open <= opts.timeout + Duration::from_secs(1) {
                    report.closed_within_timeout += 1;
                }
                match status {
                    Some(408) => report.answered_408 += 1,
                    Some(503) => report.answered_503 += 1,
                    _ => report.closed_silently += 1,
                }
                lifetimes.push(open);
            }
        }
    }
    report.lifetime = Latency::of(lifetimes);
    if let Some(p) = probe {
        report.probe = Some(p.await?);
    }
    Ok(report)
}

/// One junk connection, from connect to close (or the end of the run).
async fn one(
    target: SocketAddr,
    slow: bool,
    trickle: Duration,
    connects: &tokio::sync::Semaphore,
    stop: &CancellationToken,
) -> Fate {
    let stream = {
        let Ok(_permit) = connects.acquire().await else {
            return Fate::NotOpened;
        };
        tokio::select! {
            () = stop.cancelled() => return Fate::NotOpened,
            s = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(target)) => s,
        }
    };
    let Ok(Ok(mut s)) = stream else {
        return Fate::NotOpened;
    };
    let opened = Instant::now();
    let mut first = Vec::new();
    let mut buf = [0u8; 512];
    if slow && s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.is_err() {
        return Fate::Closed(opened.elapsed(), None);
    }
    let mut next = tokio::time::Instant::now() + trickle;
    loop {
        tokio::select! {
            () = stop.cancelled() => return Fate::StillOpen,
            r = s.read(&mut buf) => match r {
                Ok(n) if n > 0 => {
                    if first.len() < 64 {
                        first.extend_from_slice(&buf[..n]);
                    }
                }
                _ => return Fate::Closed(opened.elapsed(), status(&first)),
            },
            () = tokio::time::sleep_until(next), if slow => {
                next += trickle;
                if s.write_all(b"X-a: b\r\n").await.is_err() {
                    return Fate::Closed(opened.elapsed(), status(&first));
                }
            }
        }
    }
}

/// The status of a response that starts with `bytes`.
fn status(bytes: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(bytes.get(9..12)?).ok()?;
    text.parse().ok()
}

/// The normal client: `GET /healthz` on a new connection every `every`.
async fn probe(target: SocketAddr, every: Duration, stop: CancellationToken) -> ProbeReport {
    let url = format!("http://{target}/healthz");
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build();
    let mut report = ProbeReport {
        requests: 0,
        ok: 0,
        failed: 0,
        over_1s: 0,
        latency: Latency::of(Vec::new()),
    };
    let Ok(client) = client else {
        return report;
    };
    let mut samples = Vec::new();
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => break,
            _ = tick.tick() => {}
        }
        report.requests += 1;
        let t = Instant::now();
        let answered = match client.get(&url).send().await {
            Ok(r) => r.status().as_u16() == 200 && r.bytes().await.is_ok(),
            Err(_) => false,
        };
        if answered {
            let took = t.elapsed();
            report.ok += 1;
            if took > Duration::from_secs(1) {
                report.over_1s += 1;
            }
            samples.push(took);
        } else {
            report.failed += 1;
        }
    }
    report.latency = Latency::of(samples);
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_slowloris_bench_counts_what_the_server_did() {
        let store = std::sync::Arc::new(adapters::memory::MemoryStore::new("memory"));
        let rides = std::sync::Arc::new(crate::rides::RideService::new(
            store.clone(),
            std::sync::Arc::new(adapters::payment::FakeProcessor::default()),
            std::sync::Arc::new(ports::SystemClock),
            crate::rides::RideServiceConfig::default(),
        ));
        let state = crate::http::AppState {
            rides,
            store,
            log: None,
            stats: None,
            allow_test_errors: false,
            events: None,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let target = listener.local_addr().unwrap();
        let opts = crate::http::ServeOptions {
            header_timeout: Duration::from_millis(500),
            ..crate::http::ServeOptions::default()
        };
        let server = tokio::spawn(crate::http::serve_with(
            listener,
            state,
            opts,
            std::future::pending(),
        ));
        let mut bench = SlowlorisOptions::new(target);
        bench.slow = 5;
        bench.idle = 10;
        bench.seconds = 1.5;
        bench.trickle = Duration::from_millis(100);
        bench.timeout = Duration::from_millis(500);
        let report = bench_slowloris(bench).await.unwrap();
        server.abort();
        assert_eq!((report.slow_opened, report.idle_opened), (5, 10));
        assert_eq!(report.closed_by_server, 15, "{}", report.table());
        assert_eq!(report.answered_408, 5, "{}", report.table());
        assert_eq!(report.closed_silently, 10);
        let probe = report.probe.as_ref().unwrap();
        assert!(probe.ok > 0 && probe.failed == 0, "{}", report.table());
    }
}
