//! `rides bench relay`: how fast the real streamer empties the outbox into the log, next to
//! how fast the store alone can give the records up.
//!
//! 1. *Stage*: N realistic `ride.created` records (default 100 000) are staged in the store's
//!    outbox through [`Outbox::stage`], 1000 per call (untimed).
//! 2. *Relay* (timed): the streamer runs exactly as `rides streamer` runs it (a fleet with
//!    only the streamer, following the log's route), from its start until it has removed all
//!    N records from the outbox. The outbox is wrapped to count what the streamer removes, so
//!    the end is exact without polling the store.
//! 3. *Baseline* (timed): N new records are staged the same way (untimed), then drained by one statement per 1000
//!    records that takes the oldest staged rows and deletes them (`DELETE … WHERE id IN
//!    (SELECT … ORDER BY id LIMIT 1000) RETURNING …`, every column decoded; see
//!    [`adapters::baseline`]). No relay can move records faster than its store gives them up:
//!    this is the store side's limit. A store without SQL (`memory://`) has no baseline.
//!
//! The report's `ratio` is relay / baseline in records per second.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use domain::{LogRecord, NewRecord};
use ports::{Outbox, Route, StoreError};
use serde::Serialize;
use tokio::sync::Notify;

use super::{Scratch, Urls, progress, ratio, ride_drafts};
use crate::services::{BATCH_SIZE, Fleet, FleetConfig};
use crate::wiring::{self, Stores};

/// Settings of `rides bench relay`.
#[derive(Debug, Clone)]
pub struct RelayBenchOptions {
    /// The store and the log.
    pub urls: Urls,
    /// Records staged and moved.
    pub records: usize,
    /// Whether to run the baseline (when the store has SQL).
    pub baseline: bool,
    /// The longest a relay may take before the benchmark gives up.
    pub timeout: Duration,
}

impl RelayBenchOptions {
    /// The defaults: 100 000 records, with the baseline, 10 minutes at most.
    pub fn new(urls: Urls) -> Self {
        Self {
            urls,
            records: 100_000,
            baseline: true,
            timeout: Duration::from_secs(600),
        }
    }
}

/// The result of `rides bench relay`.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RelayBenchReport {
    /// The benchmark's name (`relay`).
    pub bench: &'static str,
    /// The store, as it describes itself.
    pub store: String,
    /// The log, as it describes itself.
    pub log: String,
    /// Records moved.
    pub records: u64,
    /// Records the log holds afterwards (at least `records`).
    pub log_records: u64,
    /// Seconds the streamer took to empty the outbox.
    pub seconds: f64,
    /// Records per second through the streamer.
    pub records_per_sec: f64,
    /// What the baseline is, or why there is none.
    pub baseline: String,
    /// Seconds the baseline took to drain the same number of records.
    pub baseline_seconds: Option<f64>,
    /// Records per second through the baseline.
    pub baseline_records_per_sec: Option<f64>,
    /// `records_per_sec / baseline_records_per_sec`.
    pub ratio: Option<f64>,
}

impl RelayBenchReport {
    /// A small text table.
    pub fn table(&self) -> String {
        let mut out = format!(
            "rides bench relay: {} -> {} ({} records)\n{:<44} {:>9} {:>12}\n",
            self.store, self.log, self.records, "phase", "seconds", "records/s"
        );
        out.push_str(&format!(
            "{:<44} {:>9.3} {:>12.0}\n",
            "streamer (outbox -> log, until empty)", self.seconds, self.records_per_sec
        ));
        if let (Some(s), Some(r)) = (self.baseline_seconds, self.baseline_records_per_sec) {
            out.push_str(&format!(
                "{:<44} {s:>9.3} {r:>12.0}\n",
                "baseline (DELETE … RETURNING, 1000 per tx)"
            ));
        }
        out.push_str(&format!("baseline: {}\n", self.baseline));
        if let Some(r) = self.ratio {
            out.push_str(&format!("ratio streamer/baseline: {r:.2}\n"));
        }
        out
    }
}

/// Runs `rides bench relay`.
///
/// # Errors
/// When the store or the log cannot be opened, the log needs no streamer (the Postgres-only
/// log), the streamer stops or does not finish in time, or the baseline fails.
pub async fn bench_relay(opts: RelayBenchOptions) -> anyhow::Result<RelayBenchReport> {
    anyhow::ensure!(opts.records > 0, "--records must be at least 1");
    let mut scratch = Scratch::default();
    let result = run_relay_bench(&opts, &mut scratch).await;
    scratch.clean().await;
    result
}

async fn run_relay_bench(
    opts: &RelayBenchOptions,
    scratch: &mut Scratch,
) -> anyhow::Result<RelayBenchReport> {
    let (store_url, log_url) = opts.urls.fresh(scratch).await?;
    let stores = wiring::open_store(&store_url).await?;
    let log = wiring::open_log(&log_url, &stores).await?;
    anyhow::ensure!(
        log.needs_streamer,
        "the log {} is the store's own outbox: there is nothing to relay",
        log.log.describe()
    );
    let n = opts.records as u64;
    let records = ride_drafts(opts.records);
    progress(&format!(
        "store {}, log {}",
        stores.store.describe(),
        log.log.describe()
    ));

    progress(&format!(
        "stage: {n} records, {BATCH_SIZE} per Outbox::stage"
    ));
    stage(&stores, &records).await?;
    progress("relay: the streamer, as `rides streamer` runs it, until the outbox is empty");
    let counting = Arc::new(Counting::new(stores.outbox.clone(), n));
    let mut counted = stores.clone();
    counted.outbox = counting.clone();
    let started = Instant::now();
    let mut fleet = Fleet::start(
        &counted,
        &log,
        FleetConfig {
            streamer: true,
            ..FleetConfig::nothing()
        },
    )
    .await?;
    let outcome = tokio::select! {
        () = counting.done.notified() => Ok(()),
        ended = fleet.wait() => Err(anyhow::anyhow!("the streamer stopped: {ended:?}")),
        () = tokio::time::sleep(opts.timeout) => Err(anyhow::anyhow!(
            "the streamer moved only {} of {n} records in {:?}",
            counting.removed.load(Ordering::Relaxed),
            opts.timeout
        )),
    };
    let seconds = started.elapsed().as_secs_f64().max(1e-9);
    fleet.stop(Duration::from_secs(10)).await;
    outcome?;
    let left = stores.outbox.staged().await?;
    anyhow::ensure!(left == 0, "{left} records are still staged after the relay");
    let log_records = log.log.len().await?;

    let (baseline, baseline_seconds) = match wiring::open_baseline(&store_url).await? {
        Some(b) if opts.baseline => {
            let what = "the store side's limit: one DELETE … RETURNING of the oldest 1000 staged records per transaction".to_owned();
            progress(&format!("baseline: stage {n} new records, then {what}"));
            stage(&stores, &ride_drafts(opts.records)).await?;
            let started = Instant::now();
            let mut drained = 0;
            while drained < n {
                let d = b.drain_outbox(BATCH_SIZE).await?;
                anyhow::ensure!(
                    d.records > 0,
                    "the baseline found only {drained} of {n} records"
                );
                drained += d.records;
            }
            (what, Some(started.elapsed().as_secs_f64().max(1e-9)))
        }
        Some(_) => ("skipped (--no-baseline)".to_owned(), None),
        None => ("none: the store has no SQL".to_owned(), None),
    };
    let records_per_sec = n as f64 / seconds;
    let baseline_records_per_sec = baseline_seconds.map(|s| n as f64 / s);
    Ok(RelayBenchReport {
        bench: "relay",
        store: stores.store.describe(),
        log: log.log.describe(),
        records: n,
        log_records,
        seconds,
        records_per_sec,
        baseline,
        baseline_seconds,
        baseline_records_per_sec,
        ratio: ratio(records_per_sec, baseline_records_per_sec),
    })
}

/// Stages `records` through the outbox port, [`BATCH_SIZE`] per call.
async fn stage(stores: &Stores, records: &[NewRecord]) -> anyhow::Result<()> {
    for chunk in records.chunks(BATCH_SIZE) {
        stores.outbox.stage(chunk).await?;
    }
    Ok(())
}

/// An outbox that counts what is removed from it and says when `target` records are gone.
struct Counting {
    inner: Arc<dyn Outbox>,
    removed: AtomicU64,
    target: u64,
    done: Notify,
}

impl Counting {
    fn new(inner: Arc<dyn Outbox>, target: u64) -> Self {
        Self {
            inner,
            removed: AtomicU64::new(0),
            target,
            done: Notify::new(),
        }
    }
}

#[async_trait]
impl Outbox for Counting {
    fn producer(&self) -> String {
        self.inner.producer()
    }
    async fn peek(&self, max: usize) -> Result<Vec<LogRecord>, StoreError> {
        self.inner.peek(max).await
    }
    async fn peek_after(&self, after_seq: u64, max: usize) -> Result<Vec<LogRecord>, StoreError> {
        self.inner.peek_after(after_seq, max).await
    }
    async fn remove(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        let n = self.inner.remove(seqs).await?;
        if self.removed.fetch_add(n, Ordering::Relaxed) + n >= self.target {
            // Stores a permit when nobody waits yet, so the end is never missed.
            self.done.notify_one();
        }
        Ok(n)
    }
    async fn staged(&self) -> Result<u64, StoreError> {
        self.inner.staged().await
    }
    async fn wait_staged(&self, timeout: Duration) {
        self.inner.wait_staged(timeout).await;
    }
    async fn stage(&self, records: &[NewRecord]) -> Result<(), StoreError> {
        self.inner.stage(records).await
    }
    async fn published(
        &self,
        producer: &str,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<Vec<ports::Published>, StoreError> {
        self.inner.published(producer, from_seq, to_seq).await
    }
    async fn forget_published(&self, producer: &str, below_seq: u64) -> Result<u64, StoreError> {
        self.inner.forget_published(producer, below_seq).await
    }
    async fn restage(&self, records: &[LogRecord]) -> Result<(), StoreError> {
        self.inner.restage(records).await
    }
    async fn route(&self) -> Result<Option<Route>, StoreError> {
        self.inner.route().await
    }
    async fn set_route(&self, route: &Route) -> Result<(), StoreError> {
        self.inner.set_route(route).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(store: &str, log: &str) -> Urls {
        Urls {
            store: store.into(),
            store_explicit: true,
            log: log.into(),
            log_explicit: true,
        }
    }

    #[tokio::test]
    async fn the_relay_bench_moves_every_record_on_memory_without_a_baseline() {
        let mut opts = RelayBenchOptions::new(urls("memory://", "memory://"));
        opts.records = 2_500;
        let report = bench_relay(opts).await.unwrap();
        assert_eq!((report.records, report.log_records), (2_500, 2_500));
        assert!(report.records_per_sec > 0.0);
        assert!(report.baseline_records_per_sec.is_none() && report.ratio.is_none());
        assert!(report.table().contains("streamer"));
    }

    #[cfg(all(feature = "sqlite", feature = "sled"))]
    #[tokio::test]
    async fn the_relay_bench_runs_the_streamer_and_the_baseline_on_sqlite_and_sled() {
        let mut opts = RelayBenchOptions::new(Urls {
            store_explicit: false,
            log_explicit: false,
            ..urls("", "")
        });
        opts.records = 2_500;
        let report = bench_relay(opts).await.unwrap();
        assert!(report.store.starts_with("sqlite://"), "{}", report.store);
        assert_eq!((report.records, report.log_records), (2_500, 2_500));
        assert!(report.baseline_records_per_sec.is_some());
        assert!(report.ratio.is_some_and(|r| r > 0.0));
        let json = serde_json::to_value(&report).unwrap();
        for field in ["records_per_sec", "baseline_records_per_sec", "ratio"] {
            assert!(json[field].as_f64().is_some(), "{field} in {json}");
        }
    }
}
