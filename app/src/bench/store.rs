//! `rides bench store`: `create_ride` throughput and latency on one store, next to the
//! reference design on the same database.
//!
//! Both designs create the same number of rides from the same number of concurrent tasks
//! (default 2000 from 16), never at the same time, each task with its own user and fresh
//! idempotency keys, a fake payment processor that answers at once and never fails, and no
//! faults. A 409 is retried with the same key after a short pause, as a client does; the
//! latency of a ride runs from its first attempt to its final answer. Each design first
//! makes one untimed ride per task, so that neither is timed with cold connections and
//! caches; then the designs run in halves in the order ours, baseline, baseline, ours, so
//! that a drift over the run (growing tables, a checkpoint, a neighbour's load) weighs on
//! both alike.
//!
//! - **ours**: [`RideService::create_ride`], exactly as the API calls it (no HTTP).
//! - **baseline**: rocket-rides-atomic's design through [`adapters::baseline::Baseline`]:
//!   four transactions per ride (lock or insert the key; ride + audit record; charge id;
//!   receipt job + response), in its own `baseline_…` tables created next to the store's and
//!   dropped at the end, through the same driver (sqlx), the same pool settings and the same
//!   isolation as the store: `READ COMMITTED` with the key row locked `FOR UPDATE` on
//!   Postgres, `BEGIN IMMEDIATE` on one writer connection on SQLite. The reference itself ran
//!   its phases `SERIALIZABLE`, which on a small machine fails about two concurrent requests in
//!   three with 40001 and would measure isolation instead of the number of transactions.
//!   A store without SQL (`memory://`) has no baseline.
//!
//! The report's `ratio` is ours / baseline in rides per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use adapters::baseline::{Baseline as SqlBaseline, BaselineRide};
use adapters::payment::FakeProcessor;
use domain::{IdempotencyKey, RideParams, RideRequest};
use ports::{Clock, SystemClock, User};
use serde::Serialize;
use uuid::Uuid;

use super::{Latency, Scratch, fresh_store, progress, ratio, unique_suffix};
use crate::rides::{RideService, RideServiceConfig};
use crate::wiring;

/// Settings of `rides bench store`.
#[derive(Debug, Clone)]
pub struct StoreBenchOptions {
    /// The store URL, as for `--store`.
    pub url: String,
    /// Whether the URL was given explicitly (otherwise a temporary SQLite file is used).
    pub explicit: bool,
    /// Rides to create (per design).
    pub rides: u64,
    /// Concurrent tasks.
    pub concurrency: usize,
    /// Whether to run the reference design too (when the store has SQL).
    pub baseline: bool,
}

impl StoreBenchOptions {
    /// The defaults: 2000 rides from 16 tasks, with the baseline.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            explicit: true,
            rides: 2000,
            concurrency: 16,
            baseline: true,
        }
    }
}

/// One design's run.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    created: u64,
    failed: u64,
    retried: u64,
    seconds: f64,
    samples: Vec<Duration>,
}

impl Run {
    fn rides_per_sec(&self) -> f64 {
        self.created as f64 / self.seconds.max(1e-9)
    }

    fn latency(&self) -> Latency {
        Latency::of(self.samples.clone())
    }

    /// Two runs of one design as one.
    fn merge(mut self, other: Run) -> Run {
        self.created += other.created;
        self.failed += other.failed;
        self.retried += other.retried;
        self.seconds += other.seconds;
        self.samples.extend(other.samples);
        self
    }
}

/// The result of `rides bench store`: ours, then the baseline's numbers (`null` without one).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoreBenchReport {
    /// The benchmark's name (`store`).
    pub bench: &'static str,
    /// The store, as it describes itself.
    pub store: String,
    /// Concurrent tasks.
    pub concurrency: u64,
    /// Rides requested per design.
    pub rides: u64,
    /// Requests answered 201.
    pub created: u64,
    /// Rides that did not end in a 201 after every attempt.
    pub failed: u64,
    /// Requests answered 409 (a conflict with a concurrent transaction) and retried with the
    /// same key, as a client does.
    pub retried: u64,
    /// Wall-clock seconds.
    pub seconds: f64,
    /// Created rides per second.
    pub rides_per_sec: f64,
    /// Median latency per ride, from the first attempt to the final reply (retries included).
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// Worst of the same.
    pub max_ms: f64,
    /// What the baseline is, or why there is none.
    pub baseline: String,
    /// The baseline's rides answered 201.
    pub baseline_created: Option<u64>,
    /// The baseline's rides that did not end in a 201.
    pub baseline_failed: Option<u64>,
    /// The baseline's 409s, retried.
    pub baseline_retried: Option<u64>,
    /// The baseline's wall-clock seconds.
    pub baseline_seconds: Option<f64>,
    /// The baseline's created rides per second.
    pub baseline_rides_per_sec: Option<f64>,
    /// The baseline's median latency per ride.
    pub baseline_p50_ms: Option<f64>,
    /// The baseline's 99th percentile latency per ride.
    pub baseline_p99_ms: Option<f64>,
    /// `rides_per_sec / baseline_rides_per_sec`.
    pub ratio: Option<f64>,
}

impl StoreBenchReport {
    fn new(
        store: String,
        opts: &StoreBenchOptions,
        ours: &Run,
        baseline: (String, Option<Run>),
    ) -> Self {
        let (what, b) = baseline;
        let latency = ours.latency();
        let b_latency = b.as_ref().map(Run::latency);
        Self {
            bench: "store",
            store,
            concurrency: opts.concurrency as u64,
            rides: opts.rides,
            created: ours.created,
            failed: ours.failed,
            retried: ours.retried,
            seconds: ours.seconds,
            rides_per_sec: ours.rides_per_sec(),
            p50_ms: latency.p50_ms,
            p99_ms: latency.p99_ms,
            max_ms: latency.max_ms,
            baseline: what,
            baseline_created: b.as_ref().map(|b| b.created),
            baseline_failed: b.as_ref().map(|b| b.failed),
            baseline_retried: b.as_ref().map(|b| b.retried),
            baseline_seconds: b.as_ref().map(|b| b.seconds),
            baseline_rides_per_sec: b.as_ref().map(Run::rides_per_sec),
            baseline_p50_ms: b_latency.as_ref().map(|l| l.p50_ms),
            baseline_p99_ms: b_latency.as_ref().map(|l| l.p99_ms),
            ratio: ratio(ours.rides_per_sec(), b.as_ref().map(Run::rides_per_sec)),
        }
    }

    /// A small text table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "rides bench store: {} ({} tasks, {} rides per design)\n\
             {:<30} {:>8} {:>7} {:>6} {:>9} {:>9} {:>8} {:>8}\n",
            self.store,
            self.concurrency,
            self.rides,
            "design",
            "created",
            "failed",
            "409s",
            "seconds",
            "rides/s",
            "p50 ms",
            "p99 ms",
        );
        let mut row = |name: &str,
                       created,
                       failed,
                       retried,
                       seconds: f64,
                       rate: f64,
                       p50: f64,
                       p99: f64| {
            out.push_str(&format!(
                "{name:<30} {created:>8} {failed:>7} {retried:>6} {seconds:>9.3} {rate:>9.0} {p50:>8.2} {p99:>8.2}\n"
            ));
        };
        row(
            "ours (RideService)",
            self.created,
            self.failed,
            self.retried,
            self.seconds,
            self.rides_per_sec,
            self.p50_ms,
            self.p99_ms,
        );
        if let (Some(c), Some(f), Some(r), Some(s), Some(rate), Some(p50), Some(p99)) = (
            self.baseline_created,
            self.baseline_failed,
            self.baseline_retried,
            self.baseline_seconds,
            self.baseline_rides_per_sec,
            self.baseline_p50_ms,
            self.baseline_p99_ms,
        ) {
            row("baseline (reference, 4 tx)", c, f, r, s, rate, p50, p99);
        }
        out.push_str(&format!("baseline: {}\n", self.baseline));
        if let Some(r) = self.ratio {
            out.push_str(&format!("ratio ours/baseline: {r:.2}\n"));
        }
        out
    }
}

/// Runs `rides bench store`.
///
/// # Errors
/// When the store cannot be opened, or a scratch namespace cannot be made.
pub async fn bench_store(opts: StoreBenchOptions) -> anyhow::Result<StoreBenchReport> {
    anyhow::ensure!(opts.rides > 0, "--rides must be at least 1");
    let mut opts = opts;
    opts.concurrency = opts.concurrency.max(1);
    let mut scratch = Scratch::default();
    let result = run_store_bench(&opts, &mut scratch).await;
    scratch.clean().await;
    result
}

async fn run_store_bench(
    opts: &StoreBenchOptions,
    scratch: &mut Scratch,
) -> anyhow::Result<StoreBenchReport> {
    let url = fresh_store(&opts.url, opts.explicit, scratch).await?;
    let stores = wiring::open_store(&url).await?;
    stores.store.ping().await?;
    let described = stores.store.describe();
    progress(&format!("store {described}"));
    let mut users = Vec::with_capacity(opts.concurrency);
    let run = unique_suffix();
    for t in 0..opts.concurrency {
        users.push(
            stores
                .store
                .ensure_user(&format!("bench-{run}-{t}@example.com"))
                .await?,
        );
    }

    let ours = Arc::new(Design::Ours(Arc::new(RideService::new(
        stores.store.clone(),
        Arc::new(FakeProcessor::new(0.0, 7)),
        Arc::new(SystemClock),
        RideServiceConfig::default(),
    ))));
    let reference = match wiring::open_baseline(&url).await? {
        Some(b) if opts.baseline => {
            let b: Arc<dyn SqlBaseline> = Arc::from(b);
            b.create_tables().await?;
            let design = Design::Reference {
                baseline: b.clone(),
                payments: Arc::new(FakeProcessor::new(0.0, 7)),
            };
            Some((b, Arc::new(design)))
        }
        _ => None,
    };
    progress(&format!(
        "{} rides per design from {} tasks: ours (RideService::create_ride){}",
        opts.rides,
        opts.concurrency,
        if reference.is_some() {
            " and the reference design, in the order A B B A (halves)"
        } else {
            ""
        }
    ));
    let measured = measure(
        &ours,
        reference.as_ref().map(|(_, d)| d),
        &users,
        opts.rides,
    )
    .await;
    if let Some((b, _)) = &reference
        && let Err(e) = b.drop_tables().await
    {
        progress(&format!("could not drop the baseline tables: {e}"));
    }
    let (ours, baseline) = measured?;
    let what = match (baseline.is_some(), opts.baseline) {
        (true, _) => format!(
            "reference design (rocket-rides-atomic), 4 transactions per ride, {} isolation, same database, driver and concurrency",
            isolation(&url)
        ),
        (false, false) => "skipped (--no-baseline)".to_owned(),
        (false, true) => "none: the store has no SQL".to_owned(),
    };
    Ok(StoreBenchReport::new(
        described,
        opts,
        &ours,
        (what, baseline),
    ))
}

/// How the baseline's transactions are isolated on the store at `url`.
fn isolation(url: &str) -> &'static str {
    match super::scheme(url).as_str() {
        "sqlite" => "BEGIN IMMEDIATE (one writer)",
        _ => "READ COMMITTED + key row FOR UPDATE",
    }
}

/// A design under test.
enum Design {
    /// The store's design, as the API runs it.
    Ours(Arc<RideService>),
    /// rocket-rides-atomic's four transactions.
    Reference {
        baseline: Arc<dyn SqlBaseline>,
        payments: Arc<FakeProcessor>,
    },
}

impl Design {
    /// One attempt; the status the API would answer.
    async fn attempt(&self, user: &User, key: &IdempotencyKey, request: &RideRequest) -> u16 {
        match self {
            Design::Ours(service) => {
                service
                    .create_ride(user, key, request, "127.0.0.1")
                    .await
                    .status
            }
            Design::Reference { baseline, payments } => {
                let ride = BaselineRide {
                    user_id: user.id,
                    email: &user.email,
                    key: key.as_str(),
                    params: &request.params,
                    origin_ip: "127.0.0.1",
                    now_ms: SystemClock.now_ms(),
                };
                match baseline.create_ride(&ride, payments.as_ref()).await {
                    Ok(status) => status,
                    Err(e) => {
                        tracing::warn!(error = %e, "baseline ride failed");
                        500
                    }
                }
            }
        }
    }
}

/// Runs `rides` rides of ours and, when given, of the baseline: first one untimed ride per
/// task of each, then halves in the order ours, baseline, baseline, ours, so that a drift
/// over the run (growing tables, a checkpoint, a neighbour's load) weighs on both alike.
async fn measure(
    ours: &Arc<Design>,
    baseline: Option<&Arc<Design>>,
    users: &[User],
    rides: u64,
) -> anyhow::Result<(Run, Option<Run>)> {
    let warm = users.len() as u64;
    run_design(ours.clone(), users, warm).await?;
    let Some(baseline) = baseline else {
        return Ok((run_design(ours.clone(), users, rides).await?, None));
    };
    run_design(baseline.clone(), users, warm).await?;
    let (first, second) = (rides / 2, rides - rides / 2);
    let a1 = run_design(ours.clone(), users, first).await?;
    let b1 = run_design(baseline.clone(), users, first).await?;
    let b2 = run_design(baseline.clone(), users, second).await?;
    let a2 = run_design(ours.clone(), users, second).await?;
    Ok((a1.merge(a2), Some(b1.merge(b2))))
}

/// Creates `rides` rides from one task per user.
async fn run_design(design: Arc<Design>, users: &[User], rides: u64) -> anyhow::Result<Run> {
    let next = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let tasks: Vec<_> = users
        .iter()
        .map(|user| {
            tokio::spawn(create_rides(
                design.clone(),
                user.clone(),
                next.clone(),
                rides,
            ))
        })
        .collect();
    let (mut created, mut failed, mut retried) = (0, 0, 0);
    let mut samples = Vec::with_capacity(rides as usize);
    for task in tasks {
        let t = task.await?;
        created += t.created;
        failed += t.failed;
        retried += t.retried;
        samples.extend(t.samples);
    }
    Ok(Run {
        created,
        failed,
        retried,
        seconds: started.elapsed().as_secs_f64(),
        samples,
    })
}

/// Attempts per ride (the first one and the retries after a 409).
const MAX_ATTEMPTS: u64 = 10;

/// What one task did.
struct Tally {
    created: u64,
    failed: u64,
    retried: u64,
    samples: Vec<Duration>,
}

/// One task: takes ride numbers until `total`.
async fn create_rides(design: Arc<Design>, user: User, next: Arc<AtomicU64>, total: u64) -> Tally {
    let (mut created, mut failed, mut retried, mut samples) = (0, 0, 0, Vec::new());
    loop {
        let i = next.fetch_add(1, Ordering::Relaxed);
        if i >= total {
            break;
        }
        let wobble = (i % 1000) as f64 / 10_000.0;
        let Ok(params) = RideParams::new(48.85 + wobble, 2.35, 48.80, 2.30 + wobble) else {
            failed += 1;
            continue;
        };
        let request = RideRequest {
            params,
            raise_error: false,
        };
        let Ok(key) = IdempotencyKey::parse(Some(&Uuid::new_v4().to_string())) else {
            failed += 1;
            continue;
        };
        // Like a real client (and the simulator): a 409 conflict is retried with the same key,
        // which is safe because the key makes the request idempotent.
        let started = Instant::now();
        let mut attempt = 1;
        let status = loop {
            let status = design.attempt(&user, &key, &request).await;
            if status != 409 || attempt >= MAX_ATTEMPTS {
                break status;
            }
            retried += 1;
            tokio::time::sleep(Duration::from_millis(2 * attempt)).await;
            attempt += 1;
        };
        samples.push(started.elapsed());
        if status == 201 {
            created += 1;
        } else {
            failed += 1;
        }
    }
    Tally {
        created,
        failed,
        retried,
        samples,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn the_store_bench_runs_on_the_memory_store_without_a_baseline() {
        let mut opts = StoreBenchOptions::new("memory://");
        opts.rides = 50;
        opts.concurrency = 4;
        let report = bench_store(opts).await.unwrap();
        assert_eq!((report.created, report.failed), (50, 0));
        assert!(report.rides_per_sec > 0.0);
        assert!(report.baseline_rides_per_sec.is_none() && report.ratio.is_none());
        assert!(report.table().contains("ours"));
    }

    #[tokio::test]
    async fn the_store_bench_runs_both_designs_on_sqlite() {
        let mut opts = StoreBenchOptions::new("sqlite://unused");
        opts.explicit = false;
        opts.rides = 40;
        opts.concurrency = 4;
        let report = bench_store(opts).await.unwrap();
        assert!(report.store.starts_with("sqlite://"), "{}", report.store);
        assert_eq!((report.created, report.failed), (40, 0));
        assert_eq!(report.baseline_created, Some(40));
        assert_eq!(report.baseline_failed, Some(0));
        assert!(report.ratio.is_some_and(|r| r > 0.0));
        let json = serde_json::to_value(&report).unwrap();
        for field in [
            "rides_per_sec",
            "baseline_rides_per_sec",
            "ratio",
            "p50_ms",
            "p99_ms",
            "baseline_p50_ms",
            "baseline_p99_ms",
            "store",
        ] {
            assert!(!json[field].is_null(), "{field} in {json}");
        }
        assert!(report.table().contains("baseline (reference, 4 tx)"));
    }
}
