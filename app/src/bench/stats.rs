//! `rides bench stats`: what a flood of `GET /stats` does to `POST /rides`.
//!
//! The fleet is wired as `rides serve` wires it (HTTP API, streamer, two consumers,
//! completer, reaper, trimmer). The same load generator as `bench fleet` (its own thread,
//! open loop at `--rate` rides per second for `--seconds`) runs twice:
//!
//! 1. **baseline**: nothing else;
//! 2. **flood**: while `--flooders` clients (16 by default, on a thread of their own) send
//!    `GET /stats` back to back, each waiting only for its previous answer.
//!
//! Reported: the `POST /rides` latency (first attempt to final answer) of both runs and their
//! ratio (the target is ≤ 1.5: stats are served from a snapshot computed at most once a
//! second, so the flood costs the store nothing), and how many stats requests were
//! answered. Timings are reported, never asserted.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::fleet::{Load, generate};
use super::{Latency, Scratch, Urls, progress};
use crate::services::{Fleet, FleetConfig};
use crate::simulator::GOOD_USER;
use crate::wiring;

/// Settings of `rides bench stats`.
#[derive(Debug, Clone)]
pub struct StatsBenchOptions {
    /// The store and the log.
    pub urls: Urls,
    /// Rides per second in each run.
    pub rate: f64,
    /// Seconds of load per run.
    pub seconds: f64,
    /// Clients flooding `GET /stats` in the second run.
    pub flooders: usize,
    /// Seed of the rides' coordinates.
    pub seed: u64,
}

impl StatsBenchOptions {
    /// The defaults: 100 rides/s for 30 s per run (3000 samples: a p99 that is not just
    /// the few worst requests), 16 flooders.
    pub fn new(urls: Urls) -> Self {
        Self {
            urls,
            rate: 100.0,
            seconds: 30.0,
            flooders: 16,
            seed: 7,
        }
    }
}

/// One run's `POST /rides`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PostRun {
    /// Rides answered 201.
    pub created: u64,
    /// Rides that did not end in a 201.
    pub failed: u64,
    /// Created rides per second.
    pub rides_per_sec: f64,
    /// Request latency, milliseconds.
    pub latency: Latency,
}

impl PostRun {
    fn of(load: Load) -> Self {
        Self {
            created: load.created,
            failed: load.failed,
            rides_per_sec: load.created as f64 / load.seconds.max(1e-9),
            latency: Latency::of(load.samples),
        }
    }
}

/// The result of `rides bench stats`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StatsBenchReport {
    /// The benchmark's name (`stats`).
    pub bench: &'static str,
    /// The store, as it describes itself.
    pub store: String,
    /// The log, as it describes itself.
    pub log: String,
    /// The requested rate, rides per second.
    pub rate: f64,
    /// Rides requested per run.
    pub requested: u64,
    /// Clients flooding `GET /stats` in the second run.
    pub flooders: usize,
    /// Without the flood.
    pub baseline: PostRun,
    /// With the flood.
    pub flood: PostRun,
    /// `GET /stats` answered 200 during the flood.
    pub stats_ok: u64,
    /// `GET /stats` answered otherwise, or not at all.
    pub stats_failed: u64,
    /// Stats answers per second during the flood.
    pub stats_per_sec: f64,
    /// Flood p50 over baseline p50.
    pub p50_ratio: f64,
    /// Flood p99 over baseline p99.
    pub p99_ratio: f64,
}

impl StatsBenchReport {
    /// A small text table.
    pub fn table(&self) -> String {
        let row = |name: &str, r: &PostRun| {
            format!(
                "{name:<22} {:>8} {:>7} {:>10.1} {:>9.2} {:>9.2} {:>9.2}\n",
                r.created,
                r.failed,
                r.rides_per_sec,
                r.latency.p50_ms,
                r.latency.p99_ms,
                r.latency.max_ms
            )
        };
        format!(
            "rides bench stats: store {}, log {}, {} rides at {:.0}/s per run\n\
             {:<22} {:>8} {:>7} {:>10} {:>9} {:>9} {:>9}\n{}{}\
             stats flood: {} answers ({:.0}/s), {} failed\n\
             POST latency ratio (flood / baseline): p50 {:.2}, p99 {:.2} (target <= 1.5)\n",
            self.store,
            self.log,
            self.requested,
            self.rate,
            "POST /rides",
            "created",
            "failed",
            "rides/s",
            "p50 ms",
            "p99 ms",
            "max ms",
            row("baseline", &self.baseline),
            row(&format!("{} /stats flooders", self.flooders), &self.flood),
            self.stats_ok,
            self.stats_per_sec,
            self.stats_failed,
            self.p50_ratio,
            self.p99_ratio,
        )
    }
}

/// Runs `rides bench stats`.
///
/// # Errors
/// When the store or the log cannot be opened, the API cannot start, or the options ask for
/// no ride.
pub async fn bench_stats(opts: StatsBenchOptions) -> anyhow::Result<StatsBenchReport> {
    let total = (opts.rate * opts.seconds).round() as u64;
    anyhow::ensure!(
        opts.rate > 0.0 && (1..=50_000).contains(&total),
        "--rate x --seconds must ask for 1 to 50000 rides per run, not {total}"
    );
    let mut scratch = Scratch::default();
    let result = run(&opts, total, &mut scratch).await;
    scratch.clean().await;
    result
}

async fn run(
    opts: &StatsBenchOptions,
    total: u64,
    scratch: &mut Scratch,
) -> anyhow::Result<StatsBenchReport> {
    let (store_url, log_url) = opts.urls.fresh(scratch).await?;
    let stores = wiring::open_store(&store_url).await?;
    let log = wiring::open_log(&log_url, &stores).await?;
    stores.store.ensure_user(GOOD_USER).await?;
    let fleet = Fleet::start(
        &stores,
        &log,
        FleetConfig::everything(Some(([127, 0, 0, 1], 0).into())),
    )
    .await?;
    let addr = fleet
        .addr()
        .ok_or_else(|| anyhow::anyhow!("the fleet's API has no address"))?;
    progress(&format!(
        "store {}, log {}, API http://{addr}: {total} rides at {}/s, without then with {} /stats flooders",
        stores.store.describe(),
        log.log.describe(),
        opts.rate,
        opts.flooders
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let rides_url = format!("http://{addr}/rides");
    let (rate, seed) = (opts.rate, opts.seed);

    let url = rides_url.clone();
    let baseline = tokio::task::spawn_blocking(move || generate(url, total, rate, seed)).await??;

    let flood = Flood::start(format!("http://{addr}/stats"), opts.flooders)?;
    let url = rides_url.clone();
    let flooded =
        tokio::task::spawn_blocking(move || generate(url, total, rate, seed ^ 1)).await??;
    let (stats_ok, stats_failed, flood_seconds) = flood.stop().await?;
    fleet.stop(Duration::from_secs(10)).await;

    let baseline = PostRun::of(baseline);
    let flood = PostRun::of(flooded);
    let ratio = |a: f64, b: f64| if b > 0.0 { a / b } else { 0.0 };
    Ok(StatsBenchReport {
        bench: "stats",
        store: stores.store.describe(),
        log: log.log.describe(),
        rate: opts.rate,
        requested: total,
        flooders: opts.flooders,
        p50_ratio: ratio(flood.latency.p50_ms, baseline.latency.p50_ms),
        p99_ratio: ratio(flood.latency.p99_ms, baseline.latency.p99_ms),
        baseline,
        flood,
        stats_ok,
        stats_failed,
        stats_per_sec: stats_ok as f64 / flood_seconds.max(1e-9),
    })
}

/// The flooders: their own thread and runtime, each client sending `GET /stats` back to back.
struct Flood {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    started: Instant,
    thread: std::thread::JoinHandle<anyhow::Result<()>>,
}

impl Flood {
    fn start(url: String, clients: usize) -> anyhow::Result<Self> {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let thread = std::thread::Builder::new()
            .name("bench-stats-flood".into())
            .spawn(move || {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                runtime.block_on(async move {
                    let client = reqwest::Client::builder()
                        .timeout(Duration::from_secs(30))
                        .build()?;
                    let mut tasks = tokio::task::JoinSet::new();
                    for _ in 0..clients {
                        let (client, url) = (client.clone(), url.clone());
                        let (s, o, f) = (s.clone(), o.clone(), f.clone());
                        tasks.spawn(async move {
                            while !s.load(Ordering::Relaxed) {
                                let good = match client.get(&url).send().await {
                                    Ok(r) => r.status().as_u16() == 200 && r.bytes().await.is_ok(),
                                    Err(_) => false,
                                };
                                if good { &o } else { &f }.fetch_add(1, Ordering::Relaxed);
                            }
                        });
                    }
                    while tasks.join_next().await.is_some() {}
                    anyhow::Ok(())
                })
            })?;
        Ok(Self {
            stop,
            ok,
            failed,
            started: Instant::now(),
            thread,
        })
    }

    /// Stops the flood; returns the answers that were 200, the others, and its seconds.
    async fn stop(self) -> anyhow::Result<(u64, u64, f64)> {
        self.stop.store(true, Ordering::Relaxed);
        let seconds = self.started.elapsed().as_secs_f64();
        let thread = self.thread;
        tokio::task::spawn_blocking(move || thread.join())
            .await?
            .map_err(|_| anyhow::anyhow!("the stats flood panicked"))??;
        Ok((
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            seconds,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_stats_bench_runs_both_runs_and_counts_the_flood() {
        let mut opts = StatsBenchOptions::new(Urls {
            store: "memory://".into(),
            store_explicit: true,
            log: "memory://".into(),
            log_explicit: true,
        });
        opts.rate = 100.0;
        opts.seconds = 0.3;
        opts.flooders = 4;
        let report = bench_stats(opts).await.unwrap();
        assert_eq!((report.requested, report.baseline.created), (30, 30));
        assert_eq!((report.flood.created, report.flood.failed), (30, 0));
        assert!(report.stats_ok > 0, "{}", report.table());
        assert_eq!(report.stats_failed, 0, "{}", report.table());
        let json = serde_json::to_value(&report).unwrap();
        for field in ["p50_ratio", "p99_ratio", "stats_per_sec"] {
            assert!(json.get(field).is_some(), "{field} in {json}");
        }
    }
}
