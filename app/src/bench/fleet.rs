//! `rides bench fleet`: CPU per ride and commit-to-consumed latency of the whole in-process
//! fleet at a fixed request rate.
//!
//! The fleet is wired as `rides serve` wires it ([`FleetConfig::everything`]: the HTTP API,
//! the streamer, the consumers `distance-a` and `distance-b`, the completer, the reaper and
//! the trimmer, production intervals, no faults). A load generator on its own thread (a
//! single-threaded runtime, so its CPU time can be read apart) sends `POST /rides` over
//! loopback HTTP at a fixed rate (`--rate` rides per second for `--seconds`, open loop: a
//! request starts on time whether or not the earlier ones are answered), each with a fresh
//! key; a 409 or 5xx is retried with the same key, as the simulator does. The benchmark then
//! waits until every consumer has counted every created ride.
//!
//! Reported, over the window from the first request to the last ride consumed:
//!
//! - **CPU per ride**: this process's CPU time (`/proc/self/stat`, user + system, every
//!   thread) minus the load generator's thread, divided by the rides created. It includes
//!   the HTTP server, the phases, the streamer, the consumers and the idle services' polls.
//! - **Server CPU per ride**, when the store or the log is a local server: the CPU time of
//!   every `postgres` or `redis-server` process on the machine (`/proc/<pid>/stat`), so it
//!   counts other work those servers did in the window too (other databases, other clients),
//!   and misses backends that exited in the window. Read it on a quiet machine.
//! - **Commit-to-consumed latency** p50/p99, as the demo measures it: for each ride a
//!   consumer counts, its commit time minus the record's `recorded_at_ms` (whole
//!   milliseconds, both consumers' samples).
//! - The HTTP request latency seen by the load generator.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use rand::SeedableRng;
use rand::rngs::StdRng;
use serde::Serialize;

use super::cpu::{self, Named};
use super::{Latency, Scratch, Urls, progress, scheme};
use crate::services::{Fleet, FleetConfig};
use crate::simulator::{GOOD_USER, ride_coordinates};
use crate::wiring;

/// The most rides one run may request (the latency recorder keeps 200 000 samples, two per
/// ride).
const MAX_RIDES: u64 = 50_000;

/// Settings of `rides bench fleet`.
#[derive(Debug, Clone)]
pub struct FleetBenchOptions {
    /// The store and the log.
    pub urls: Urls,
    /// Requests per second.
    pub rate: f64,
    /// Seconds of load.
    pub seconds: f64,
    /// The longest wait, after the load, for the consumers to count every ride.
    pub settle_timeout: Duration,
    /// Seed of the rides' coordinates.
    pub seed: u64,
    /// Direct publishing with this sweep delay (`--publish direct`), or `None` for the
    /// streamer alone.
    pub publish_direct: Option<Duration>,
}

impl FleetBenchOptions {
    /// The defaults: 200 rides/s for 10 s, 60 s to settle.
    pub fn new(urls: Urls) -> Self {
        Self {
            urls,
            rate: 200.0,
            seconds: 10.0,
            settle_timeout: Duration::from_secs(60),
            seed: 7,
            publish_direct: None,
        }
    }
}

/// CPU time of the local server processes of one name.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ServerCpu {
    /// The command name (`postgres`, `redis-server`).
    pub name: String,
    /// Processes of that name seen at the end of the window.
    pub processes: u64,
    /// Their CPU time in the window, milliseconds.
    pub cpu_ms: f64,
    /// The same per created ride.
    pub cpu_ms_per_ride: f64,
}

/// The result of `rides bench fleet`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FleetBenchReport {
    /// The benchmark's name (`fleet`).
    pub bench: &'static str,
    /// The store, as it describes itself.
    pub store: String,
    /// The log, as it describes itself.
    pub log: String,
    /// The requested rate, rides per second.
    pub rate: f64,
    /// Requests sent.
    pub requested: u64,
    /// Rides answered 201.
    pub created: u64,
    /// Rides that did not end in a 201.
    pub failed: u64,
    /// Retries with the same key (after a 409 or a 5xx).
    pub retried: u64,
    /// Seconds from the first request to the last answer.
    pub load_seconds: f64,
    /// Created rides per second over `load_seconds`.
    pub rides_per_sec: f64,
    /// Seconds from the last answer until every consumer had counted every ride.
    pub drain_seconds: f64,
    /// Whether every consumer counted every ride within the settle timeout.
    pub settled: bool,
    /// Whether every consumer equals the store's truth at the end.
    pub agree: bool,
    /// This process's CPU milliseconds per created ride, the load generator excluded.
    pub cpu_ms_per_ride: Option<f64>,
    /// This process's CPU milliseconds in the window.
    pub process_cpu_ms: Option<f64>,
    /// The load generator thread's CPU milliseconds (HTTP client), excluded above.
    pub loadgen_cpu_ms: Option<f64>,
    /// Local server processes (machine-wide for their names; see the module docs).
    pub servers: Vec<ServerCpu>,
    /// `cpu_ms_per_ride` plus every server's, when CPU times could be read.
    pub total_cpu_ms_per_ride: Option<f64>,
    /// Commit-to-consumed latency, median (ms).
    pub p50_ms: u64,
    /// Commit-to-consumed latency, 99th percentile (ms).
    pub p99_ms: u64,
    /// Commit-to-consumed samples (one per ride per consumer).
    pub latency_samples: u64,
    /// HTTP request latency (first attempt to final answer), median (ms).
    pub request_p50_ms: f64,
    /// HTTP request latency, 99th percentile (ms).
    pub request_p99_ms: f64,
}

impl FleetBenchReport {
    /// A small text table.
    pub fn table(&self) -> String {
        let opt = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.3}"));
        let ms = |v: Option<f64>| v.map_or("n/a".to_owned(), |v| format!("{v:.0}"));
        let mut out = format!(
            "rides bench fleet: store {}, log {}\n\
             load: {} requests at {:.0}/s: {} created, {} failed, {} retries, {:.1} rides/s over {:.2} s; drained {:.2} s later\n\
             cpu ms per ride: this process {} (of {} ms; load generator {} ms excluded)\n",
            self.store,
            self.log,
            self.requested,
            self.rate,
            self.created,
            self.failed,
            self.retried,
            self.rides_per_sec,
            self.load_seconds,
            self.drain_seconds,
            opt(self.cpu_ms_per_ride),
            ms(self.process_cpu_ms),
            ms(self.loadgen_cpu_ms),
        );
        for s in &self.servers {
            out.push_str(&format!(
                "cpu ms per ride: {} {:.3} ({} processes, {:.0} ms, machine-wide)\n",
                s.name, s.cpu_ms_per_ride, s.processes, s.cpu_ms
            ));
        }
        out.push_str(&format!(
            "cpu ms per ride, total: {}\n\
             commit-to-consumed latency: p50 {} ms, p99 {} ms ({} samples); request latency p50 {:.2} ms, p99 {:.2} ms\n{}",
            opt(self.total_cpu_ms_per_ride),
            self.p50_ms,
            self.p99_ms,
            self.latency_samples,
            self.request_p50_ms,
            self.request_p99_ms,
            if self.settled && self.agree {
                "every consumer counted every ride and equals the truth\n"
            } else {
                "NOT SETTLED: some rides were not consumed in time, or a consumer disagrees\n"
            },
        ));
        out
    }
}

/// Runs `rides bench fleet`.
///
/// # Errors
/// When the store or the log cannot be opened, the API cannot start, or the rate and
/// duration ask for no ride or too many.
pub async fn bench_fleet(opts: FleetBenchOptions) -> anyhow::Result<FleetBenchReport> {
    anyhow::ensure!(
        opts.rate > 0.0 && opts.seconds > 0.0,
        "--rate and --seconds must be positive"
    );
    let total = (opts.rate * opts.seconds).round() as u64;
    anyhow::ensure!(
        (1..=MAX_RIDES).contains(&total),
        "--rate x --seconds must ask for 1 to {MAX_RIDES} rides, not {total}"
    );
    let mut scratch = Scratch::default();
    let result = run_fleet_bench(&opts, total, &mut scratch).await;
    scratch.clean().await;
    result
}

async fn run_fleet_bench(
    opts: &FleetBenchOptions,
    total: u64,
    scratch: &mut Scratch,
) -> anyhow::Result<FleetBenchReport> {
    let (store_url, log_url) = opts.urls.fresh(scratch).await?;
    let stores = wiring::open_store(&store_url).await?;
    let log = wiring::open_log(&log_url, &stores).await?;
    stores.store.ensure_user(GOOD_USER).await?;
    let mut config = FleetConfig::everything(Some(SocketAddr::from(([127, 0, 0, 1], 0))));
    config.publish_direct = opts.publish_direct;
    let consumers = config.consumers.len() as u64;
    let mut fleet = Fleet::start(&stores, &log, config).await?;
    let addr = fleet
        .addr()
        .ok_or_else(|| anyhow::anyhow!("the fleet's API has no address"))?;
    progress(&format!(
        "store {}, log {}, API http://{addr}: {total} rides at {}/s",
        stores.store.describe(),
        log.log.describe(),
        opts.rate
    ));
    let names = local_servers(&store_url, &log_url);
    // Let the services start (consumers register and block in their first read).
    tokio::time::sleep(Duration::from_millis(200)).await;

    let servers_before = Named::now(&names);
    let process_before = cpu::process_ticks();
    let url = format!("http://{addr}/rides");
    let (rate, seed) = (opts.rate, opts.seed);
    let generator = std::thread::Builder::new()
        .name("bench-load".into())
        .spawn(move || generate(url, total, rate, seed))?;
    let load = tokio::task::spawn_blocking(move || generator.join())
        .await?
        .map_err(|_| anyhow::anyhow!("the load generator panicked"))??;

    let metrics = fleet.stats().metrics.clone();
    let wanted = load.created * consumers;
    let drain_started = Instant::now();
    let settled = loop {
        if metrics.latency().samples >= wanted {
            break true;
        }
        if drain_started.elapsed() >= opts.settle_timeout {
            break false;
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(10)) => {}
            ended = fleet.wait() => anyhow::bail!("a fleet task stopped: {ended:?}"),
        }
    };
    let drain_seconds = drain_started.elapsed().as_secs_f64();
    let process_after = cpu::process_ticks();
    let servers = Named::now(&names).since(&servers_before);

    let latency = metrics.latency();
    let verdict = crate::demo::collect_verdict(&stores, &log).await?;
    fleet.stop(Duration::from_secs(10)).await;

    let created = load.created.max(1) as f64;
    let process_cpu_ms = process_after
        .zip(process_before)
        .map(|(a, b)| cpu::ticks_to_ms(a.saturating_sub(b)));
    let loadgen_cpu_ms = load.cpu_ticks.map(cpu::ticks_to_ms);
    let cpu_ms_per_ride = process_cpu_ms
        .zip(loadgen_cpu_ms)
        .map(|(p, l)| (p - l).max(0.0) / created);
    let mut servers: Vec<ServerCpu> = names
        .iter()
        .map(|name| {
            let (ticks, processes) = servers.get(*name).copied().unwrap_or_default();
            let cpu_ms = cpu::ticks_to_ms(ticks);
            ServerCpu {
                name: (*name).to_owned(),
                processes,
                cpu_ms,
                cpu_ms_per_ride: cpu_ms / created,
            }
        })
        .collect();
    servers.retain(|s| s.processes > 0);
    let total_cpu_ms_per_ride =
        cpu_ms_per_ride.map(|c| c + servers.iter().map(|s| s.cpu_ms_per_ride).sum::<f64>());
    let requests = Latency::of(load.samples);
    Ok(FleetBenchReport {
        bench: "fleet",
        store: stores.store.describe(),
        log: log.log.describe(),
        rate: opts.rate,
        requested: total,
        created: load.created,
        failed: load.failed,
        retried: load.retried,
        load_seconds: load.seconds,
        rides_per_sec: load.created as f64 / load.seconds.max(1e-9),
        drain_seconds,
        settled,
        agree: verdict.agree,
        cpu_ms_per_ride,
        process_cpu_ms,
        loadgen_cpu_ms,
        servers,
        total_cpu_ms_per_ride,
        p50_ms: latency.p50,
        p99_ms: latency.p99,
        latency_samples: latency.samples,
        request_p50_ms: requests.p50_ms,
        request_p99_ms: requests.p99_ms,
    })
}

/// The server processes to measure: `postgres` when the store or the log is a local
/// Postgres, `redis-server` when the log is a local Redis.
fn local_servers(store: &str, log: &str) -> Vec<&'static str> {
    let mut names = Vec::new();
    for url in [store, log] {
        let name = match scheme(url).as_str() {
            "postgres" | "postgresql" => "postgres",
            "redis" => "redis-server",
            _ => continue,
        };
        if is_local(url) && !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// Whether the URL's host is this machine (a loopback address, `localhost`, or no host: a
/// Unix socket).
fn is_local(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split(['/', '?']).next().unwrap_or_default();
    let host_port = authority.rsplit_once('@').map_or(authority, |(_, h)| h);
    let host = if let Some(v6) = host_port.strip_prefix('[') {
        v6.split(']').next().unwrap_or_default()
    } else {
        host_port.split(':').next().unwrap_or_default()
    };
    host.is_empty() || host == "localhost" || host == "::1" || host.starts_with("127.")
}

/// What the load generator did.
pub(super) struct Load {
    pub(super) created: u64,
    pub(super) failed: u64,
    pub(super) retried: u64,
    /// First request to last answer.
    pub(super) seconds: f64,
    pub(super) samples: Vec<Duration>,
    /// The generator thread's CPU time.
    pub(super) cpu_ticks: Option<u64>,
}

/// The load generator's thread: its own single-threaded runtime, so that its CPU time is the
/// thread's.
pub(super) fn generate(url: String, total: u64, rate: f64, seed: u64) -> anyhow::Result<Load> {
    let before = cpu::thread_ticks();
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut load = runtime.block_on(send_all(url, total, rate, seed))?;
    drop(runtime);
    load.cpu_ticks = cpu::thread_ticks()
        .zip(before)
        .map(|(a, b)| a.saturating_sub(b));
    Ok(load)
}

/// Sends `total` rides, request `i` at `i / rate` seconds after the first.
async fn send_all(url: String, total: u64, rate: f64, seed: u64) -> anyhow::Result<Load> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let started = tokio::time::Instant::now();
    let mut requests = tokio::task::JoinSet::new();
    for i in 0..total {
        tokio::time::sleep_until(started + Duration::from_secs_f64(i as f64 / rate)).await;
        let (client, url) = (client.clone(), url.clone());
        requests.spawn(async move { one_ride(&client, &url, seed, i).await });
    }
    let mut load = Load {
        created: 0,
        failed: 0,
        retried: 0,
        seconds: 0.0,
        samples: Vec::with_capacity(total as usize),
        cpu_ticks: None,
    };
    while let Some(done) = requests.join_next().await {
        let (status, retries, took) = done?;
        load.retried += retries;
        load.samples.push(took);
        if status == Some(201) {
            load.created += 1;
        } else {
            load.failed += 1;
        }
    }
    load.seconds = started.elapsed().as_secs_f64();
    Ok(load)
}

/// Attempts per ride (a 409 or 5xx is retried with the same key).
const ATTEMPTS: u64 = 5;

/// One ride: its final status (`None` after connection errors), retries, and latency.
async fn one_ride(
    client: &reqwest::Client,
    url: &str,
    seed: u64,
    i: u64,
) -> (Option<u16>, u64, Duration) {
    let mut rng = StdRng::seed_from_u64(seed ^ i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let body = serde_urlencoded::to_string(ride_coordinates(&mut rng)).unwrap_or_default();
    let key = uuid::Uuid::new_v4().to_string();
    let started = Instant::now();
    let mut status = None;
    for attempt in 0..ATTEMPTS {
        if attempt > 0 {
            tokio::time::sleep(Duration::from_millis(10 * attempt)).await;
        }
        let sent = client
            .post(url)
            .header("Authorization", GOOD_USER)
            .header("Idempotency-Key", &key)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await;
        status = match sent {
            Ok(r) => {
                let s = r.status().as_u16();
                let _ = r.bytes().await;
                Some(s)
            }
            Err(_) => None,
        };
        if status.is_some_and(|s| s != 409 && s < 500) {
            return (status, attempt, started.elapsed());
        }
    }
    (status, ATTEMPTS - 1, started.elapsed())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn local_servers_are_found_from_the_urls() {
        assert_eq!(
            local_servers(
                "postgres://postgres@127.0.0.1:5432/x",
                "redis://localhost:6379"
            ),
            vec!["postgres", "redis-server"]
        );
        assert_eq!(
            local_servers(
                "postgres://u:pw@db.example/x",
                "redis://[::1]:6379?stream=s"
            ),
            vec!["redis-server"]
        );
        assert_eq!(
            local_servers("postgres:///x?host=/run/postgresql", "postgres:///x"),
            vec!["postgres"]
        );
        assert!(local_servers("sqlite://./x.db", "sled://./log").is_empty());
    }

    #[tokio::test]
    async fn the_fleet_bench_creates_and_consumes_every_ride_on_memory() {
        let mut opts = FleetBenchOptions::new(Urls {
            store: "memory://".into(),
            store_explicit: true,
            log: "memory://".into(),
            log_explicit: true,
        });
        opts.rate = 100.0;
        opts.seconds = 0.3;
        let report = bench_fleet(opts).await.unwrap();
        assert_eq!(
            (report.requested, report.created, report.failed),
            (30, 30, 0)
        );
        assert!(report.settled && report.agree, "{}", report.table());
        assert_eq!(report.latency_samples, 60);
        assert!(report.servers.is_empty());
        let json = serde_json::to_value(&report).unwrap();
        for field in ["cpu_ms_per_ride", "p50_ms", "p99_ms", "rides_per_sec"] {
            assert!(json.get(field).is_some(), "{field} in {json}");
        }
    }

    #[cfg(all(feature = "sqlite", feature = "sled"))]
    #[tokio::test]
    async fn the_fleet_bench_runs_on_sqlite_and_sled() {
        let mut opts = FleetBenchOptions::new(Urls {
            store: String::new(),
            store_explicit: false,
            log: String::new(),
            log_explicit: false,
        });
        opts.rate = 50.0;
        opts.seconds = 0.4;
        let report = bench_fleet(opts).await.unwrap();
        assert!(report.store.starts_with("sqlite://"), "{}", report.store);
        assert_eq!((report.created, report.failed), (20, 0));
        assert!(report.settled && report.agree, "{}", report.table());
        assert_eq!(report.latency_samples, 40);
    }
}
