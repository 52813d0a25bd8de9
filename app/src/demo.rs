//! `rides demo`: the whole fleet, the simulator and the faults in one process, then a verdict.
//!
//! ```text
//!   simulator ──HTTP──▶ API ──phase txn──▶ store + outbox ──streamer──▶ log ──▶ distance-a
//!   (client retries)      ▲  (10 % crash after charge)       (10 % double send)  └─▶ distance-b
//!                         └──────────── completer (finishes abandoned keys)     (10 % crash before commit)
//! ```
//!
//! When the simulator has made its rides, the demo waits until the store has no unfinished
//! key, the outbox is empty and every consumer has caught up (lag 0, equal counts), then
//! compares every consumer with the store's truth. The same [`Verdict`] is what `rides verify`
//! prints for any existing data and what `GET /stats` shows.
//!
//! # The terminal
//!
//! While it runs, the demo shows a live progress display on standard error (indicatif): rides
//! made, the store's truth, each consumer's total and lag, and the faults injected; on a
//! standard error that is not a terminal, one plain line every 5 s instead. Service logs go
//! to `demo.log` in the data directory ([`crate::telemetry`]), whose path the demo prints;
//! `rides -v demo` also shows them on the terminal, above the display.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use domain::Thresholds;

use crate::services::{consumer, sync};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::faults::{FaultConfig, FaultCounts, Faults};
use crate::metrics::Latency;
use crate::services::{Fleet, FleetConfig, Intervals};
use crate::simulator::{self, SimConfig, SimStats};
use crate::wiring::{self, OpenedLog, Payments, Stores};

/// The store's side of the verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct TruthView {
    /// Rides in the store.
    pub rides: u64,
    /// Their total distance, metres.
    pub distance_m: f64,
    /// The same, millimetres (what is compared).
    pub distance_mm: u64,
    /// Keys not finished yet.
    pub unfinished_keys: u64,
}

/// One consumer's side of the verdict.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConsumerView {
    /// Its name.
    pub name: String,
    /// Rides it counted.
    pub rides: u64,
    /// Their total distance, metres.
    pub distance_m: f64,
    /// The same, millimetres.
    pub distance_mm: u64,
    /// Duplicates it skipped.
    pub duplicates: u64,
    /// Its position.
    pub position: String,
    /// Records after its position (`None` when the log could not say).
    pub lag: Option<u64>,
    /// The age in seconds of the oldest record after its position (0 when it is caught up;
    /// `None` when the log could not say).
    pub lag_s: Option<f64>,
    /// Records in its dead-letter list.
    pub parked: usize,
    /// Records its log lost (see [`domain::gaps`]), until repaired or acknowledged: a
    /// consumer with a gap does not agree, whatever its counts.
    pub gaps: Vec<domain::Gap>,
    /// Whether it equals the truth (and reports no gap).
    pub agrees: bool,
}

/// A consumer that is not compared with the truth (the sync consumer, other kinds).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ConsumerLag {
    /// Its name.
    pub name: String,
    /// Duplicates it skipped.
    pub duplicates: u64,
    /// Records after its position (`None` when the log could not say).
    pub lag: Option<u64>,
    /// The age in seconds of the oldest record after its position (0 when caught up).
    pub lag_s: Option<f64>,
    /// Records its log lost (see [`domain::gaps`]), until repaired or acknowledged.
    pub gaps: Vec<domain::Gap>,
}

/// A live lease: which instance runs a service.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LeaseView {
    /// The service (`consumer:distance-a`, `streamer`...).
    pub scope: String,
    /// The instance holding it.
    pub holder: String,
    /// Its epoch (incremented at every takeover).
    pub epoch: u64,
    /// Until it expires unless renewed (ms).
    pub expires_in_ms: i64,
}

/// The replica (secondary datastore) against the store, row by row.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ReplicaView {
    /// Its URL.
    pub url: String,
    /// Rows it holds.
    pub rows: u64,
    /// Rows that differ from the store's, are missing from it, or should not be in it.
    pub mismatches: u64,
    /// The ids of (at most ten of) the mismatching rows found in the replica; rows missing
    /// from it are only counted.
    pub mismatched_ids: Vec<i64>,
    /// Records after the sync consumer's position (`None` when it has not registered or the
    /// log could not say).
    pub lag: Option<u64>,
    /// Records the sync consumer's log lost (see [`domain::gaps`]), until repaired or
    /// acknowledged.
    pub gaps: Vec<domain::Gap>,
    /// Whether it equals the store: every row, no more, no less.
    pub agrees: bool,
}

/// Every consumer against the store's truth.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Verdict {
    /// Whether there is at least one consumer and every consumer equals the truth.
    pub agree: bool,
    /// The store.
    pub truth: TruthView,
    /// Every registered distance consumer.
    pub consumers: Vec<ConsumerView>,
    /// The other registered consumers (the sync consumer, consumers of other kinds): their
    /// lags and duplicates, which are not compared with the truth.
    pub other_consumers: Vec<ConsumerLag>,
    /// The replica, when one is configured.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub replica: Option<ReplicaView>,
    /// The live leases: which instance runs each service.
    pub leases: Vec<LeaseView>,
    /// Records still in the outbox.
    pub staged: u64,
    /// The age in seconds of the oldest record in the outbox (`None` when it is empty).
    pub staged_oldest_age_s: Option<f64>,
    /// How long the current log is held back by an in-flight transaction (Postgres-only log;
    /// `None` when nothing is held back).
    pub held_back_ms: Option<u64>,
    /// Faults injected (by this process).
    pub faults: FaultCounts,
    /// Rides per second made by the simulator (0 outside the demo).
    pub rides_per_sec: f64,
    /// Commit-to-consumed latency (zero outside a running fleet).
    pub latency_ms: Latency,
    /// Seconds the fleet has run (0 for `verify`).
    pub uptime_s: f64,
    /// The demo's service log file, when it wrote one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub log_file: Option<String>,
}

impl Verdict {
    /// Whether everything upstream has reached every consumer: no unfinished key, nothing
    /// staged, every lag 0 and every consumer with the same count.
    pub fn settled(&self) -> bool {
        self.truth.unfinished_keys == 0
            && self.staged == 0
            && self.consumers.iter().all(|c| c.lag == Some(0))
            && self.replica.as_ref().is_none_or(|r| r.lag == Some(0))
            && self
                .consumers
                .windows(2)
                .all(|w| (w[0].rides, w[0].distance_mm) == (w[1].rides, w[1].distance_mm))
    }

    /// The verdict as a human-readable table.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<16} {:>8} {:>16} {:>8} {:>10}  {}\n",
            "", "rides", "distance (m)", "lag", "dups", "verdict"
        ));
        out.push_str(&format!(
            "{:<16} {:>8} {:>16.3} {:>8} {:>10}  {}\n",
            "store (truth)",
            self.truth.rides,
            self.truth.distance_m,
            "-",
            "-",
            if self.truth.unfinished_keys == 0 {
                "all keys finished".to_owned()
            } else {
                format!("{} unfinished keys", self.truth.unfinished_keys)
            }
        ));
        for c in &self.consumers {
            out.push_str(&format!(
                "{:<16} {:>8} {:>16.3} {:>8} {:>10}  {}\n",
                c.name,
                c.rides,
                c.distance_m,
                c.lag.map_or("?".to_owned(), |l| l.to_string()),
                c.duplicates,
                if c.agrees { "agrees" } else { "DISAGREES" }
            ));
        }
        let replica_gaps = self.replica.iter().flat_map(|r| &r.gaps);
        let named = self
            .consumers
            .iter()
            .flat_map(|c| c.gaps.iter().map(|g| (c.name.as_str(), g)))
            .chain(replica_gaps.map(|g| ("replica", g)));
        for (name, g) in named {
            out.push_str(&format!(
                "LOST RECORDS: {name} is missing {g} (run `rides log repair`)\n"
            ));
        }
        if let Some(r) = &self.replica {
            out.push_str(&format!(
                "{:<16} {:>8} {:>16} {:>8} {:>10}  {}\n",
                "replica",
                r.rows,
                "-",
                r.lag.map_or("?".to_owned(), |l| l.to_string()),
                "-",
                if r.agrees {
                    "agrees row by row".to_owned()
                } else {
                    format!("{} MISMATCHES {:?}", r.mismatches, r.mismatched_ids)
                }
            ));
        }
        if let Some(ms) = self.held_back_ms.filter(|ms| *ms > 0) {
            out.push_str(&format!(
                "log held back by an in-flight transaction for {ms} ms\n"
            ));
        }
        out.push_str(&format!(
            "faults: {} double sends, {} consumer crashes, {} API crashes\n",
            self.faults.double_sends, self.faults.consumer_crashes, self.faults.api_crashes
        ));
        out.push_str(&format!(
            "throughput: {:.1} rides/s; commit-to-consumed latency p50 {} ms, p99 {} ms\n",
            self.rides_per_sec, self.latency_ms.p50, self.latency_ms.p99
        ));
        out.push_str(if self.agree {
            "VERDICT: every consumer equals the truth\n"
        } else if self.consumers.is_empty() {
            "VERDICT: no consumer registered\n"
        } else {
            "VERDICT: DISAGREE\n"
        });
        out
    }
}

/// One view per consumer: the lanes of a consumer that runs per lane (`NAME/lane-k`, see
/// [`crate::runtime::lanes`]) add up to one consumer `NAME`, with one position of the whole
/// log when every lane has one.
fn merge_lanes(views: Vec<ConsumerView>, log: &dyn ports::Log) -> Vec<ConsumerView> {
    let mut out: Vec<ConsumerView> = Vec::new();
    let mut lanes: std::collections::BTreeMap<String, Vec<(u32, ConsumerView)>> =
        std::collections::BTreeMap::new();
    for v in views {
        match crate::runtime::lanes::split_lane(&v.name) {
            Some((base, lane)) => lanes.entry(base.to_owned()).or_default().push((lane, v)),
            None => out.push(v),
        }
    }
    for (name, mut parts) in lanes {
        parts.sort_by_key(|(lane, _)| *lane);
        let positions: Vec<ports::Position> = parts
            .iter()
            .map(|(_, v)| {
                ports::Position::new(if v.position == "start" {
                    ""
                } else {
                    &v.position
                })
            })
            .collect();
        let position = log.merge_lanes(&positions).map_or_else(
            |_| {
                parts
                    .iter()
                    .map(|(lane, v)| format!("lane {lane}: {}", v.position))
                    .collect::<Vec<_>>()
                    .join("; ")
            },
            |p| p.to_string(),
        );
        let mut whole = ConsumerView {
            name,
            position,
            lag: Some(0),
            lag_s: None,
            ..ConsumerView::default()
        };
        for (_, v) in parts {
            whole.rides += v.rides;
            whole.distance_mm += v.distance_mm;
            whole.duplicates += v.duplicates;
            whole.parked += v.parked;
            whole.gaps.extend(v.gaps);
            whole.lag = whole.lag.zip(v.lag).map(|(a, b)| a + b);
            whole.lag_s = match (whole.lag_s, v.lag_s) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        whole.distance_m = whole.distance_mm as f64 / 1000.0;
        out.push(whole);
    }
    out
}

/// Reads every registered consumer and the store's truth, and compares them.
///
/// Consumers are read **before** the truth: everything a consumer has counted was committed
/// before it was read, so the truth read afterwards includes it, and a consumer never appears
/// ahead of the truth (read the other way round, rides created and consumed between the two
/// reads would put consumers ahead). Under load the consumers may appear behind; `lag`
/// says by how much.
///
/// # Errors
/// When the store or the consumer store cannot be read, or a consumer's state is not a
/// distance state.
pub async fn collect_verdict(stores: &Stores, log: &OpenedLog) -> anyhow::Result<Verdict> {
    // Consumers first, the truth after: a snapshot never shows a consumer ahead of the truth.
    let (mut verdict, replica_lag, replica_gaps) = progress(stores, log).await?;
    let truth = stores
        .store
        .truth()
        .await
        .context("reading the store's truth")?;
    for c in &mut verdict.consumers {
        c.agrees =
            c.rides == truth.rides && c.distance_mm == truth.distance_mm && c.gaps.is_empty();
    }
    let replica = match &stores.replica {
        Some(r) => {
            let mut view = compare_replica(stores.store.as_ref(), r, truth.rides).await?;
            view.lag = replica_lag;
            view.agrees = view.agrees && replica_gaps.is_empty();
            view.gaps = replica_gaps;
            Some(view)
        }
        None => None,
    };
    verdict.agree = !verdict.consumers.is_empty()
        && verdict.consumers.iter().all(|c| c.agrees)
        && replica.as_ref().is_none_or(|r| r.agrees);
    verdict.replica = replica;
    verdict.truth = TruthView {
        rides: truth.rides,
        distance_m: truth.distance_mm as f64 / 1000.0,
        distance_mm: truth.distance_mm,
        unfinished_keys: truth.unfinished_keys,
    };
    Ok(verdict)
}

/// What [`collect_verdict`] reads before the truth, without the full scans (the store's
/// truth, the replica row by row): each consumer's position, totals and lags, the leases,
/// the outbox and the held-back time. The truth is left at zero, no consumer `agrees`, and
/// there is no replica view. `GET /metrics` of the processes without the API reads this.
///
/// # Errors
/// As [`collect_verdict`].
pub async fn collect_progress(stores: &Stores, log: &OpenedLog) -> anyhow::Result<Verdict> {
    Ok(progress(stores, log).await?.0)
}

/// The age in seconds of the oldest of the first records after `from`, for a consumer `lag`
/// records behind (`None` when the log cannot be read, or says it is behind and returns
/// nothing in time).
async fn lag_seconds(
    log: &dyn ports::Log,
    lane: Option<u32>,
    from: &ports::Position,
    lag: Option<u64>,
    now_ms: i64,
) -> Option<f64> {
    // Enough records to find the oldest among a few lanes' heads.
    const PEEK: usize = 16;
    // Logs that have records answer at once; a broker may need a fetch round trip.
    const WAIT: Duration = Duration::from_millis(200);
    let batch = match lane {
        Some(lane) => log.read_lane(lane, from, PEEK, WAIT).await,
        None => log.read(from, PEEK, WAIT).await,
    }
    .ok()?;
    let oldest = batch
        .deliveries
        .iter()
        .map(|d| d.record.recorded_at_ms)
        .min();
    match (oldest, lag) {
        (Some(at), _) => Some((now_ms - at).max(0) as f64 / 1000.0),
        (None, Some(0)) => Some(0.0),
        (None, _) => None,
    }
}

/// The progress part of a verdict, and the sync consumer's lag and gaps.
async fn progress(
    stores: &Stores,
    log: &OpenedLog,
) -> anyhow::Result<(Verdict, Option<u64>, Vec<domain::Gap>)> {
    let mut consumers = Vec::new();
    let mut others = Vec::new();
    let mut replica_lag = None;
    let mut replica_gaps = Vec::new();
    let started_ms = ports::Clock::now_ms(&ports::SystemClock);
    for (name, cp) in stores.consumers.list().await.context("listing consumers")? {
        let lane = crate::runtime::lanes::split_lane(&name).map(|(_, lane)| lane);
        let followed = match &cp.cursor.log_url {
            Some(url) => Some(log.follow(url).await?),
            None => None,
        };
        let (on, lane) = match &followed {
            Some(f) => (f.log.as_ref(), None),
            None => (log.log.as_ref(), lane),
        };
        let lag = match lane {
            Some(lane) => on.lag_lane(lane, &cp.position).await.ok(),
            None => on.lag(&cp.position).await.ok(),
        };
        let lag_s = match lag {
            Some(0) => Some(0.0),
            _ => lag_seconds(on, lane, &cp.position, lag, started_ms).await,
        };
        let other = ConsumerLag {
            name: name.clone(),
            duplicates: cp.cursor.duplicates,
            lag,
            lag_s,
            gaps: cp.cursor.gaps.clone(),
        };
        if name == sync::DEFAULT_NAME || cp.cursor.kind.as_deref() == Some(sync::KIND) {
            replica_lag = lag;
            replica_gaps.extend(cp.cursor.gaps.iter().cloned());
            others.push(other);
            continue;
        }
        // Only distance consumers are compared with the truth.
        let Some(state) = consumer::result(&cp).with_context(|| format!("consumer {name}"))? else {
            others.push(other);
            continue;
        };
        let parked = stores
            .consumers
            .parked(&name)
            .await
            .with_context(|| format!("reading consumer {name}'s parked records"))?
            .len();
        consumers.push(ConsumerView {
            agrees: false,
            parked,
            name,
            rides: state.rides,
            distance_m: state.distance_m(),
            distance_mm: state.distance_mm,
            duplicates: cp.cursor.duplicates,
            position: cp.position.to_string(),
            gaps: cp.cursor.gaps.clone(),
            lag,
            lag_s,
        });
    }
    let consumers = merge_lanes(consumers, log.log.as_ref());
    let now_ms = ports::Clock::now_ms(&ports::SystemClock);
    let leases = stores
        .consumers
        .leases()
        .await
        .context("reading the leases")?
        .into_iter()
        .filter(|l| l.expires_at_ms > now_ms)
        .map(|l| LeaseView {
            expires_in_ms: l.expires_at_ms - now_ms,
            scope: l.scope,
            holder: l.holder,
            epoch: l.epoch,
        })
        .collect();
    // The log records are published on now (a cutover may have moved it).
    let current = match stores.outbox.route().await.context("reading the route")? {
        Some(route) => log.follow(&route.log_url).await?,
        None => log.clone(),
    };
    let held_back_ms = current
        .log
        .held_back()
        .await
        .ok()
        .flatten()
        .map(|d| d.as_millis() as u64);
    let (staged, staged_oldest_age_s) = if current.needs_streamer {
        let staged = stores.outbox.staged().await.context("reading the outbox")?;
        let oldest = if staged > 0 {
            let now_ms = ports::Clock::now_ms(&ports::SystemClock);
            stores
                .outbox
                .peek(1)
                .await
                .context("reading the outbox")?
                .first()
                .map(|r| (now_ms - r.recorded_at_ms).max(0) as f64 / 1000.0)
        } else {
            None
        };
        (staged, oldest)
    } else {
        (0, None)
    };
    let verdict = Verdict {
        leases,
        consumers,
        other_consumers: others,
        staged,
        staged_oldest_age_s,
        held_back_ms,
        ..Verdict::default()
    };
    Ok((verdict, replica_lag, replica_gaps))
}

/// Compares the replica with the store row by row: every replica row against the store's
/// row with its id (one batched query per page of 1000), and the store's row count against
/// the rows matched. The rides' `idempotency_key_id` is not compared: the reaper clears it in
/// the store when it deletes an old key, which is not a change of the ride.
///
/// # Errors
/// When the store or the replica cannot be read.
pub async fn compare_replica(
    store: &dyn ports::RideStore,
    replica: &crate::wiring::Replica,
    store_rows: u64,
) -> anyhow::Result<ReplicaView> {
    const PAGE: usize = 1000;
    let r = &replica.replica;
    let mut view = ReplicaView {
        url: crate::wiring::redact(&replica.url),
        rows: r.count().await.context("counting the replica's rows")?,
        ..ReplicaView::default()
    };
    let (mut after, mut matched) = (0_i64, 0_u64);
    loop {
        let page = r.page(after, PAGE).await.context("reading the replica")?;
        let Some(last) = page.last() else { break };
        after = last.id;
        let ids: Vec<i64> = page.iter().map(|row| row.id).collect();
        let primary: std::collections::HashMap<i64, ports::RideRow> = store
            .rides_by_ids(&ids)
            .await
            .context("reading the store's rides")?
            .into_iter()
            .map(|row| (row.id, row))
            .collect();
        for row in &page {
            let same = primary.get(&row.id).is_some_and(|p| {
                ports::RideRow {
                    idempotency_key_id: row.idempotency_key_id,
                    ..p.clone()
                } == *row
            });
            if same {
                matched += 1;
            } else {
                view.mismatches += 1;
                if view.mismatched_ids.len() < 10 {
                    view.mismatched_ids.push(row.id);
                }
            }
        }
    }
    // Store rows that the replica lacks.
    view.mismatches += store_rows.saturating_sub(matched);
    view.agrees = view.mismatches == 0 && view.rows == store_rows;
    Ok(view)
}

/// What `rides demo` runs.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Rides the simulator makes.
    pub rides: u64,
    /// Concurrent simulated clients.
    pub concurrency: usize,
    /// Seed of the faults, the simulator and the payment processor.
    pub seed: u64,
    /// Fault rates (the seed is replaced by [`Self::seed`]).
    pub faults: FaultConfig,
    /// The data directory (default `./data/demo-<seed>`).
    pub data_dir: Option<PathBuf>,
    /// Store URL (default `sqlite://<dir>/rides.db`).
    pub store: Option<String>,
    /// Replica URL (default `sqlite://<dir>/replica.db`, or `memory://` when both the store
    /// and the log are given; `none`: no replica).
    pub replica: Option<String>,
    /// Log URL (default `sled://<dir>/log`).
    pub log: Option<String>,
    /// Consumers to run.
    pub consumers: Vec<String>,
    /// Key thresholds (short, so crashed requests are finished within the run).
    pub thresholds: Thresholds,
    /// The longest wait for convergence after the simulator is done.
    pub settle_timeout: Duration,
    /// Show the live progress display on stderr (and the lines around it).
    pub progress: bool,
    /// The streamer's linger (see [`crate::services::streamer`]).
    pub streamer_linger: Duration,
    /// The payment processor (`None`: the fake one, seeded with [`Self::seed`]).
    pub payments: Option<Payments>,
}

impl DemoOptions {
    /// The demo's defaults for `rides` rides and `seed`: faults 10 % each, 8 clients, short
    /// thresholds (lock 1 s, completer grace 1 s, last run 0.5 s).
    pub fn new(rides: u64, seed: u64) -> Self {
        Self {
            rides,
            concurrency: 32,
            seed,
            faults: FaultConfig::demo(seed),
            data_dir: None,
            store: None,
            log: None,
            replica: None,
            consumers: vec!["distance-a".into(), "distance-b".into()],
            thresholds: Thresholds {
                lock_timeout_ms: 1_000,
                completer_grace_ms: 1_000,
                completer_last_run_ms: 500,
                reap_after_ms: Thresholds::default().reap_after_ms,
            },
            settle_timeout: Duration::from_secs(180),
            progress: true,
            streamer_linger: crate::services::streamer::DEFAULT_LINGER,
            payments: None,
        }
    }
}

/// Marks a directory the demo created, so a later run may wipe it.
const MARKER: &str = ".rides-demo";
/// The demo's service log, in its data directory.
pub const LOG_FILE: &str = "demo.log";

/// Prepares the data directory: a fresh default one (wiping an older demo's), or the given
/// one as it is.
fn prepare_dir(opts: &DemoOptions) -> anyhow::Result<PathBuf> {
    let (dir, fresh) = match &opts.data_dir {
        Some(d) => (d.clone(), false),
        None => (PathBuf::from(format!("./data/demo-{}", opts.seed)), true),
    };
    if fresh && dir.exists() {
        anyhow::ensure!(
            dir.join(MARKER).exists(),
            "{} exists and was not made by `rides demo`; pass --data-dir",
            dir.display()
        );
        std::fs::remove_dir_all(&dir).with_context(|| format!("wiping {}", dir.display()))?;
    }
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::write(dir.join(MARKER), b"made by `rides demo`; safe to delete\n")?;
    Ok(dir)
}

fn url_in(scheme: &str, dir: &Path, name: &str) -> String {
    format!("{scheme}://{}", dir.join(name).display())
}

/// Runs the demo and returns its verdict.
///
/// # Errors
/// When the data directory, the store or the log cannot be opened, or the API cannot start.
pub async fn run_demo(opts: DemoOptions) -> anyhow::Result<Verdict> {
    // The directory holds the default store and log, and the log file of a process that
    // logs to one (the `rides demo` binary; not the tests that run the demo in process).
    let needs_dir = opts.store.is_none() || opts.log.is_none() || crate::telemetry::logs_to_file();
    let dir = if needs_dir {
        Some(prepare_dir(&opts)?)
    } else {
        None
    };
    let log_file = match &dir {
        Some(d) => {
            let path = d.join(LOG_FILE);
            crate::telemetry::log_to_file(&path)
                .with_context(|| format!("creating the log file {}", path.display()))?
        }
        None => None,
    };
    let store_url = match (&opts.store, &dir) {
        (Some(u), _) => u.clone(),
        (None, Some(d)) => url_in("sqlite", d, "rides.db"),
        (None, None) => unreachable!("a data dir is prepared when a URL is missing"),
    };
    let log_url = match (&opts.log, &dir) {
        (Some(u), _) => u.clone(),
        (None, Some(d)) => url_in("sled", d, "log"),
        (None, None) => unreachable!("a data dir is prepared when a URL is missing"),
    };
    let replica_url = match (&opts.replica, &dir) {
        (Some(u), _) => (u != "none").then(|| u.clone()),
        (None, Some(d)) => Some(url_in("sqlite", d, "replica.db")),
        (None, None) => Some("memory://".to_owned()),
    };
    let mut stores = wiring::open_store(&store_url).await?;
    if let Some(url) = &replica_url {
        stores = stores.with_replica(url).await?;
    }
    let log = wiring::open_log(&log_url, &stores).await?;
    for user in [simulator::GOOD_USER, simulator::BAD_SOURCE_USER] {
        stores.store.ensure_user(user).await?;
    }
    let faults = Arc::new(Faults::new(FaultConfig {
        seed: opts.seed,
        ..opts.faults
    }));
    let fleet = Fleet::start(
        &stores,
        &log,
        FleetConfig {
            listen: Some(([127, 0, 0, 1], 0).into()),
            consumers: opts.consumers.clone(),
            thresholds: opts.thresholds,
            faults: faults.clone(),
            intervals: Intervals {
                streamer_linger: opts.streamer_linger,
                ..Intervals::demo()
            },
            seed: opts.seed,
            payments: opts.payments.clone(),
            allow_test_errors: true,
            ..FleetConfig::everything(None)
        },
    )
    .await?;
    let addr = fleet.addr().context("the demo's API has no address")?;
    tracing::info!(
        store = %stores.store.describe(),
        log = %log.log.describe(),
        api = %format!("http://{addr}"),
        rides = opts.rides,
        seed = opts.seed,
        "demo started"
    );
    if opts.progress {
        eprintln!(
            "rides demo: {} rides, seed {}; store {}, log {}, API http://{addr}",
            opts.rides,
            opts.seed,
            stores.store.describe(),
            log.log.describe(),
        );
        if let Some(path) = &log_file {
            eprintln!(
                "service logs: {} (`rides -v demo` shows them here)",
                path.display()
            );
        }
    }
    let stop = CancellationToken::new();
    let sim_stats = Arc::new(SimStats::default());
    let progress = opts.progress.then(|| {
        tokio::spawn(progress_display(
            stores.clone(),
            log.clone(),
            faults.clone(),
            sim_stats.clone(),
            opts.rides,
            stop.clone(),
        ))
    });
    let sim = simulator::simulate(
        SimConfig::new(
            format!("http://{addr}"),
            opts.rides,
            opts.concurrency,
            opts.seed,
        ),
        sim_stats.clone(),
        stop.clone(),
    )
    .await;
    let sim = match sim {
        Ok(s) => s,
        Err(e) => {
            stop.cancel();
            fleet.stop(Duration::from_secs(10)).await;
            return Err(e);
        }
    };
    let settled = settle(&stores, &log, opts.settle_timeout).await;
    stop.cancel();
    if let Some(p) = progress {
        let _ = p.await;
    }
    let latency = fleet.stats().metrics.latency();
    fleet.stop(Duration::from_secs(10)).await;
    let mut verdict = collect_verdict(&stores, &log).await?;
    if !settled {
        tracing::warn!("the fleet did not settle in time");
        verdict.agree = false;
    }
    verdict.faults = faults.counts();
    verdict.latency_ms = latency;
    verdict.rides_per_sec = if sim.elapsed_s > 0.0 {
        sim.rides as f64 / sim.elapsed_s
    } else {
        0.0
    };
    verdict.uptime_s = sim.elapsed_s;
    verdict.log_file = log_file.map(|p| p.display().to_string());
    tracing::info!(
        rides = sim.rides,
        client_retries = sim.retries,
        outcomes = ?sim.outcomes,
        agree = verdict.agree,
        "demo finished"
    );
    if opts.progress {
        eprintln!(
            "simulator: {} rides, {} client retries, outcomes {:?}",
            sim.rides, sim.retries, sim.outcomes
        );
    }
    Ok(verdict)
}

/// Waits until the verdict is settled (true) or `timeout` passes (false). Convergence has no
/// single event to wait on (it spans the store, the log and every consumer), so this polls.
pub async fn settle(stores: &Stores, log: &OpenedLog, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        match collect_verdict(stores, log).await {
            Ok(v) if v.settled() && !v.consumers.is_empty() => return true,
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "reading the verdict"),
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// How often the display reads the verdict (a few queries on the store and the log).
const PROGRESS_EVERY: Duration = Duration::from_millis(500);
/// How often a standard error that is not a terminal gets a progress line.
const PLAIN_PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The live display: a bar of rides made, then the store, the consumers and the faults.
struct Display {
    multi: indicatif::MultiProgress,
    rides: indicatif::ProgressBar,
    lines: [indicatif::ProgressBar; 3],
}

impl Display {
    fn new(rides: u64) -> Self {
        use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
        let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stderr());
        let bar = multi.add(ProgressBar::new(rides));
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner:.green} [{elapsed_precise}] {bar:32.cyan/blue} {pos}/{len} rides {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("█▉▊▋▌▍▎▏ "),
        );
        bar.enable_steady_tick(Duration::from_millis(120));
        let lines = std::array::from_fn(|_| {
            let line = multi.add(ProgressBar::new_spinner());
            line.set_style(
                ProgressStyle::with_template("  {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            line
        });
        crate::telemetry::set_progress(Some(multi.clone()));
        Self {
            multi,
            rides: bar,
            lines,
        }
    }

    fn update(&self, made: u64, rate: f64, lines: [String; 3]) {
        self.rides.set_position(made);
        self.rides
            .set_message(if made >= self.rides.length().unwrap_or(0) {
                "made; waiting for every consumer to catch up".to_owned()
            } else {
                format!("({rate:.0}/s)")
            });
        for (bar, text) in self.lines.iter().zip(lines) {
            bar.set_message(text);
        }
    }
}

impl Drop for Display {
    fn drop(&mut self) {
        crate::telemetry::set_progress(None);
        self.rides.finish_and_clear();
        for l in &self.lines {
            l.finish_and_clear();
        }
        let _ = self.multi.clear();
    }
}

/// The display's three text lines: the store, the consumers, the faults.
fn progress_text(v: &Verdict, f: FaultCounts) -> [String; 3] {
    let consumers: Vec<String> = v
        .consumers
        .iter()
        .map(|c| {
            format!(
                "{} {} (lag {})",
                c.name,
                c.rides,
                c.lag.map_or("?".to_owned(), |l| l.to_string())
            )
        })
        .collect();
    [
        format!(
            "store      {} rides, {} keys unfinished, {} records staged",
            v.truth.rides, v.truth.unfinished_keys, v.staged
        ),
        format!("consumers  {}", consumers.join(" · ")),
        format!(
            "faults     {} double sends · {} consumer crashes · {} API crashes",
            f.double_sends, f.consumer_crashes, f.api_crashes
        ),
    ]
}

/// Shows the progress until `stop`: the live display on a terminal, else a plain line every
/// few seconds.
async fn progress_display(
    stores: Stores,
    log: OpenedLog,
    faults: Arc<Faults>,
    sim: Arc<SimStats>,
    rides: u64,
    stop: CancellationToken,
) {
    use std::io::IsTerminal as _;
    let started = Instant::now();
    let display = std::io::stderr().is_terminal().then(|| Display::new(rides));
    let every = if display.is_some() {
        PROGRESS_EVERY
    } else {
        PLAIN_PROGRESS_EVERY
    };
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        let Ok(v) = collect_verdict(&stores, &log).await else {
            continue;
        };
        let made = sim.done.load(Ordering::Relaxed);
        let elapsed = started.elapsed().as_secs_f64();
        let text = progress_text(&v, faults.counts());
        match &display {
            Some(d) => d.update(made, made as f64 / elapsed.max(0.001), text),
            None => eprintln!(
                "[{elapsed:>4.0}s] rides made {made}/{rides} | {} | {} | {}",
                text[0].split_whitespace().collect::<Vec<_>>().join(" "),
                text[1].split_whitespace().collect::<Vec<_>>().join(" "),
                text[2].split_whitespace().collect::<Vec<_>>().join(" "),
            ),
        }
    }
}
