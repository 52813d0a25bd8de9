//! The fleet: the API and every background service in one process.
//!
//! `rides serve` and `rides demo` both start a [`Fleet`]. Each service is a tokio task sharing
//! one shutdown token. [`Fleet::stop`] cancels the token and waits: a step that has started
//! finishes (drain), the API stops accepting and finishes its in-flight requests.
//! [`Fleet::abort`] is the in-process stand-in for `kill -9`: every task is dropped wherever
//! it is, and nothing is drained.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use async_trait::async_trait;
use domain::Thresholds;
use ports::{Clock, SystemClock};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::consumer::distance_consumer;
use super::sync::ReplicaSync;
use super::{Completer, Reaper, Streamer, Trimmer, run_service};
use crate::faults::Faults;
use crate::metrics::Metrics;
use crate::rides::{RideService, RideServiceConfig};
use crate::runtime::lease::{DEFAULT_TTL, LeaseKeeper, holder_id};
use crate::runtime::{Consumer, Idempotent};
use crate::wiring::{OpenedLog, Stores};

/// How long each service waits when idle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Intervals {
    /// The streamer's longest wait for an outbox wake-up.
    pub streamer_poll: Duration,
    /// The streamer's linger: how long records may gather after a wake-up, or behind a
    /// batch that was not full, before it peeks again (zero: never waits). See
    /// [`super::streamer`].
    pub streamer_linger: Duration,
    /// A consumer's blocking read.
    pub consumer_wait: Duration,
    /// The completer's pause after a run with nothing to do.
    pub completer: Duration,
    /// The reaper's pause after a run with nothing to do.
    pub reaper: Duration,
    /// The trimmer's pause after a run with nothing to do.
    pub trimmer: Duration,
}

impl Intervals {
    /// The reference's timings (5 s pauses; reads block up to 1 s).
    pub fn production() -> Self {
        Self {
            streamer_poll: Duration::from_millis(250),
            streamer_linger: super::streamer::DEFAULT_LINGER,
            consumer_wait: Duration::from_secs(1),
            completer: Duration::from_secs(5),
            reaper: Duration::from_secs(5),
            trimmer: Duration::from_secs(5),
        }
    }

    /// Short pauses, for the demo and the tests.
    pub fn demo() -> Self {
        Self {
            streamer_poll: Duration::from_millis(100),
            streamer_linger: super::streamer::DEFAULT_LINGER,
            consumer_wait: Duration::from_millis(500),
            completer: Duration::from_millis(200),
            reaper: Duration::from_secs(1),
            trimmer: Duration::from_millis(500),
        }
    }
}

/// What to run.
#[derive(Debug, Clone)]
pub struct FleetConfig {
    /// Where the API listens (`None`: no API).
    pub listen: Option<SocketAddr>,
    /// Run the streamer (ignored when the log needs none).
    pub streamer: bool,
    /// The distance consumers to run, by name.
    pub consumers: Vec<String>,
    /// Direct publishing (`--publish direct`): the API appends what each phase staged right
    /// after its commit, and the streamer only sweeps records staged longer ago than this
    /// delay (see [`super::publisher`]); `None` publishes through the streamer alone.
    pub publish_direct: Option<Duration>,
    /// Run each distance consumer per lane (`NAME/lane-k`, one lease per lane, lanes
    /// shared with the other instances): for logs with several lanes (Kafka partitions).
    pub per_lane: bool,
    /// Run the sync consumer into the stores' replica (when [`Stores::replica`] is set).
    pub sync: bool,
    /// Run the completer.
    pub completer: bool,
    /// Run the reaper.
    pub reaper: bool,
    /// Run the trimmer.
    pub trimmer: bool,
    /// Key life-cycle thresholds.
    pub thresholds: Thresholds,
    /// The fault injector shared by every service.
    pub faults: Arc<Faults>,
    /// Idle waits.
    pub intervals: Intervals,
    /// Seed of the fake payment processor.
    pub seed: u64,
    /// The TTL of the leases that make each service (each consumer name, the streamer, the
    /// completer, the reaper, the trimmer) one active instance per store, the others hot
    /// standbys; `None` runs without leases.
    pub lease_ttl: Option<Duration>,
    /// The retry and failure strategy of the consumers.
    pub consumer_policy: crate::runtime::Policy,
    /// The trimmer's consumer expiry (`None`: consumers never expire).
    pub consumer_expiry: Option<Duration>,
    /// The payment processor (`None`: the fake one, seeded with [`Self::seed`]).
    pub payments: Option<crate::wiring::Payments>,
    /// The API's timeouts, connection cap and head limits.
    pub http: crate::http::ServeOptions,
    /// Whether the API honours `raise_error=true` (the demo and the tests).
    pub allow_test_errors: bool,
    /// Where to serve `GET /metrics` on a listener of its own (`--metrics-listen`, for
    /// processes without the API; the API serves it on its own listener too).
    pub metrics_listen: Option<SocketAddr>,
    /// Event-sourcing workers to run over the store's event store (`rides es work`'s
    /// reactors, plus a housekeeper when above 0).
    pub es_workers: usize,
}

impl FleetConfig {
    /// Everything (API on `listen`, streamer, consumers `distance-a` and `distance-b`,
    /// completer, reaper, trimmer), production thresholds, no faults.
    pub fn everything(listen: Option<SocketAddr>) -> Self {
        Self {
            listen,
            streamer: true,
            consumers: vec!["distance-a".into(), "distance-b".into()],
            per_lane: false,
            publish_direct: None,
            sync: true,
            completer: true,
            reaper: true,
            trimmer: true,
            thresholds: Thresholds::default(),
            faults: Arc::new(Faults::none()),
            intervals: Intervals::production(),
            seed: 0,
            lease_ttl: Some(DEFAULT_TTL),
            consumer_policy: crate::runtime::Policy::default(),
            consumer_expiry: None,
            payments: None,
            http: crate::http::ServeOptions::default(),
            allow_test_errors: false,
            metrics_listen: None,
            es_workers: 2,
        }
    }

    /// Only the given services: everything off, then the caller turns pieces on.
    pub fn nothing() -> Self {
        Self {
            listen: None,
            streamer: false,
            consumers: Vec::new(),
            sync: false,
            es_workers: 0,
            completer: false,
            reaper: false,
            trimmer: false,
            ..Self::everything(None)
        }
    }
}

/// The running fleet.
pub struct Fleet {
    shutdown: CancellationToken,
    tasks: Vec<(String, JoinHandle<()>)>,
    addr: Option<SocketAddr>,
    stats: Arc<FleetStats>,
    rides: Arc<RideService>,
    metrics_addr: Option<SocketAddr>,
}

impl std::fmt::Debug for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fleet")
            .field(
                "tasks",
                &self.tasks.iter().map(|(n, _)| n).collect::<Vec<_>>(),
            )
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// What `GET /stats` and the demo's progress lines read.
pub struct FleetStats {
    /// The stores.
    pub stores: Stores,
    /// The log.
    pub log: OpenedLog,
    /// The fault injector.
    pub faults: Arc<Faults>,
    /// Latency samples.
    pub metrics: Arc<Metrics>,
    /// When the fleet started.
    pub started: Instant,
}

#[async_trait]
impl crate::http::StatsProvider for FleetStats {
    async fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let mut v = crate::demo::collect_verdict(&self.stores, &self.log).await?;
        v.faults = self.faults.counts();
        v.latency_ms = self.metrics.latency();
        v.uptime_s = self.started.elapsed().as_secs_f64();
        let mut json = serde_json::to_value(&v)?;
        // The event-sourcing consumer groups (status, positions, lag, failing streams).
        let groups = match self.stores.reactors.groups().await {
            Ok(g) => serde_json::to_value(g)?,
            Err(e) => serde_json::json!({ "error": e.to_string() }),
        };
        if let Some(obj) = json.as_object_mut() {
            obj.insert("es_groups".to_owned(), groups);
        }
        Ok(json)
    }
}

/// The stats of a process without the API, for its `GET /metrics`: consumers, lags, leases,
/// outbox and held-back time, without the store's truth and the replica's row-by-row
/// comparison (full scans that only `GET /stats` and `rides verify` need).
struct LightStats(Arc<FleetStats>);

#[async_trait]
impl crate::http::StatsProvider for LightStats {
    async fn stats(&self) -> anyhow::Result<serde_json::Value> {
        let s = &self.0;
        let mut v = crate::demo::collect_progress(&s.stores, &s.log).await?;
        v.faults = s.faults.counts();
        v.uptime_s = s.started.elapsed().as_secs_f64();
        let mut doc = serde_json::to_value(&v)?;
        if let Some(map) = doc.as_object_mut() {
            // Not computed: left out rather than reported as zero.
            map.remove("truth");
            map.remove("agree");
        }
        Ok(doc)
    }
}

impl Fleet {
    /// Starts the configured services on `stores` and `log`.
    ///
    /// # Errors
    /// When the API cannot bind its address.
    pub async fn start(
        stores: &Stores,
        log: &OpenedLog,
        config: FleetConfig,
    ) -> anyhow::Result<Self> {
        let shutdown = CancellationToken::new();
        let clock: Arc<dyn Clock> = Arc::new(SystemClock);
        let metrics = Arc::new(Metrics::new());
        let payments = config
            .payments
            .clone()
            .unwrap_or_else(|| crate::wiring::Payments::fake(config.seed));
        let mut service = RideService::new(
            stores.store.clone(),
            payments.gateway,
            clock.clone(),
            RideServiceConfig {
                thresholds: config.thresholds,
                faults: config.faults.clone(),
            },
        )
        .with_metrics(metrics.clone());
        // Direct publishing needs a log that is not the outbox itself.
        let direct = config.publish_direct.filter(|_| log.needs_streamer);
        if direct.is_some() {
            service = service.with_publisher(Arc::new(
                super::publisher::DirectPublisher::new(
                    stores.outbox.clone(),
                    log.log.clone(),
                    log.url.clone(),
                )
                .with_metrics(metrics.clone()),
            ));
        }
        let rides = Arc::new(service);
        let stats = Arc::new(FleetStats {
            stores: stores.clone(),
            log: log.clone(),
            faults: config.faults.clone(),
            metrics: metrics.clone(),
            started: Instant::now(),
        });
        let mut tasks = Vec::new();
        let mut addr = None;
        if let Some(listen) = config.listen {
            let listener = crate::http::bind(listen)
                .map_err(|e| anyhow::anyhow!("binding the API to {listen}: {e}"))?;
            addr = Some(listener.local_addr()?);
            let state = crate::http::AppState {
                rides: rides.clone(),
                store: stores.store.clone(),
                log: Some(log.log.clone()),
                stats: Some(stats.clone() as Arc<dyn crate::http::StatsProvider>),
                allow_test_errors: config.allow_test_errors,
                events: Some(stores.events.clone()),
            };
            let stop = shutdown.clone().cancelled_owned();
            let http = config.http;
            tasks.push((
                "api".to_owned(),
                tokio::spawn(async move {
                    if let Err(e) = crate::http::serve_with(listener, state, http, stop).await {
                        tracing::error!(error = %e, "the API stopped");
                    }
                }),
            ));
        }
        let mut metrics_addr = None;
        if let Some(listen) = config.metrics_listen {
            let listener = crate::http::bind(listen)
                .map_err(|e| anyhow::anyhow!("binding the metrics listener to {listen}: {e}"))?;
            metrics_addr = Some(listener.local_addr()?);
            let source = crate::http::metrics::MetricsSource::new(
                metrics.clone(),
                config.faults.clone(),
                Some(Arc::new(LightStats(stats.clone())) as Arc<dyn crate::http::StatsProvider>),
            );
            let stop = shutdown.clone().cancelled_owned();
            tasks.push((
                "metrics".to_owned(),
                tokio::spawn(async move {
                    if let Err(e) =
                        crate::http::metrics::serve_metrics(listener, source, stop).await
                    {
                        tracing::error!(error = %e, "the metrics listener stopped");
                    }
                }),
            ));
        }
        let i = config.intervals;
        let holder = holder_id();
        let lease = |scope: String| {
            config.lease_ttl.map(|ttl| {
                LeaseKeeper::new(
                    stores.consumers.clone(),
                    clock.clone(),
                    scope,
                    holder.clone(),
                    ttl,
                )
            })
        };
        // Also on the Postgres-only log, where it only watches for a cutover away from it.
        if config.streamer {
            let s = Streamer::new(
                stores.outbox.clone(),
                log.log.clone(),
                config.faults.clone(),
            )
            .following(log.clone())
            .with_metrics(metrics.clone())
            .with_poll(i.streamer_poll)
            .with_linger(i.streamer_linger);
            let s = match direct {
                Some(delay) => s.sweeping(delay),
                None => s,
            };
            tasks.push((
                "streamer".to_owned(),
                tokio::spawn(run_service(s, lease("streamer".into()), shutdown.clone())),
            ));
        }
        for name in config.consumers.iter().filter(|_| config.per_lane) {
            tasks.extend(
                spawn_lanes(
                    name, stores, log, &clock, &metrics, &config, &holder, &shutdown,
                )
                .await?,
            );
        }
        for name in config.consumers.iter().filter(|_| !config.per_lane) {
            refuse_other_mode(stores, name, false).await?;
            let mut c = distance_consumer(
                name.clone(),
                log.log.clone(),
                stores.consumers.clone(),
                clock.clone(),
                config.faults.clone(),
                metrics.clone(),
            )
            .following(log.clone())
            .with_wait(i.consumer_wait)
            .with_policy(config.consumer_policy);
            if let Some(keeper) = lease(format!("consumer:{name}")) {
                c = c.with_lease(keeper);
            }
            // Registered before the trimmer can run, so it never trims what `name` needs.
            if let Err(e) = c.register().await {
                tracing::warn!(consumer = %name, error = %format!("{e:#}"), "could not register yet");
            }
            tasks.push((
                format!("consumer {name}"),
                tokio::spawn(c.run(shutdown.clone())),
            ));
        }
        if let Some(replica) = stores.replica.as_ref().filter(|_| config.sync) {
            let name = super::sync::DEFAULT_NAME;
            let handler = Idempotent(ReplicaSync::new(
                stores.store.clone(),
                replica.replica.clone(),
            ));
            let mut c = Consumer::new(
                name,
                handler,
                log.log.clone(),
                stores.consumers.clone(),
                clock.clone(),
            )
            .following(log.clone())
            .with_wait(i.consumer_wait)
            .with_policy(config.consumer_policy)
            .with_faults(config.faults.clone())
            .with_metrics(metrics.clone());
            if let Some(keeper) = lease(format!("consumer:{name}")) {
                c = c.with_lease(keeper);
            }
            if let Err(e) = c.register().await {
                tracing::warn!(consumer = %name, error = %format!("{e:#}"), "could not register yet");
            }
            tasks.push((
                format!("consumer {name}"),
                tokio::spawn(c.run(shutdown.clone())),
            ));
        }
        if config.completer {
            let c = Completer::new(
                stores.store.clone(),
                rides.clone(),
                clock.clone(),
                config.thresholds,
            )
            .with_interval(i.completer);
            tasks.push((
                "completer".to_owned(),
                tokio::spawn(run_service(c, lease("completer".into()), shutdown.clone())),
            ));
        }
        if config.reaper {
            let r = Reaper::new(stores.store.clone(), clock.clone(), config.thresholds)
                .with_interval(i.reaper);
            tasks.push((
                "reaper".to_owned(),
                tokio::spawn(run_service(r, lease("reaper".into()), shutdown.clone())),
            ));
        }
        if config.trimmer {
            let mut t = Trimmer::new(log.log.clone(), stores.consumers.clone())
                .following(log.clone())
                .with_outbox(stores.outbox.clone())
                .with_interval(i.trimmer);
            if let Some(expiry) = config.consumer_expiry {
                t = t.with_consumer_expiry(expiry, clock.clone());
            }
            tasks.push((
                "trimmer".to_owned(),
                tokio::spawn(run_service(t, lease("trimmer".into()), shutdown.clone())),
            ));
        }
        if config.es_workers > 0 {
            let rt = Arc::new(crate::es::cli::runtime(
                stores.reactors.clone(),
                crate::es::RuntimeConfig {
                    workers: config.es_workers,
                    ..crate::es::RuntimeConfig::default()
                },
            ));
            if let Err(e) = rt.register().await {
                tracing::warn!(error = %e, "could not register the event-sourcing groups yet");
            }
            let until = |name: String, work: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>| {
                let stop = shutdown.clone();
                (
                    name,
                    tokio::spawn(async move {
                        tokio::select! {
                            () = work => {}
                            () = stop.cancelled() => {}
                        }
                    }),
                )
            };
            for w in 0..config.es_workers {
                let id = format!("{holder}-es-worker-{w}");
                tasks.push(until(
                    format!("es worker {w}"),
                    Box::pin(Arc::clone(&rt).run_worker(id)),
                ));
            }
            tasks.push(until(
                "es housekeeper".to_owned(),
                Box::pin(Arc::clone(&rt).run_housekeeper()),
            ));
        }
        Ok(Self {
            shutdown,
            tasks,
            addr,
            stats,
            rides,
            metrics_addr,
        })
    }

    /// The API's address, when it runs.
    pub fn addr(&self) -> Option<SocketAddr> {
        self.addr
    }

    /// The metrics listener's address, when it runs (`--metrics-listen`).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_addr
    }

    /// The stats shared with `GET /stats`.
    pub fn stats(&self) -> &Arc<FleetStats> {
        &self.stats
    }

    /// The ride service the API and the completer use.
    pub fn rides(&self) -> &Arc<RideService> {
        &self.rides
    }

    /// The shutdown token (cancel it to make [`Self::wait`] return).
    pub fn shutdown_token(&self) -> CancellationToken {
        self.shutdown.clone()
    }

    /// Waits until one task ends by itself (a bug or a fatal error) or the token is cancelled,
    /// and returns the name of the task that ended, if any.
    pub async fn wait(&mut self) -> Option<String> {
        if self.tasks.is_empty() {
            self.shutdown.cancelled().await;
            return None;
        }
        let watch = futures::future::select_all(self.tasks.iter_mut().map(|(_, h)| h));
        tokio::select! {
            () = self.shutdown.cancelled() => None,
            (_, idx, _) = watch => Some(self.tasks[idx].0.clone()),
        }
    }

    /// Drains: cancels the token and waits (up to `deadline`) for every task to finish its
    /// current step; tasks still running then are aborted.
    pub async fn stop(self, deadline: Duration) {
        self.shutdown.cancel();
        let start = Instant::now();
        for (name, mut handle) in self.tasks {
            let left = deadline.saturating_sub(start.elapsed());
            if tokio::time::timeout(left, &mut handle).await.is_err() {
                tracing::warn!(task = %name, "did not stop in time; aborting it");
                handle.abort();
                let _ = handle.await;
            }
        }
    }

    /// Stops abruptly, as close to `kill -9` as a process can do to itself: every task is
    /// dropped wherever it is (no drain), and the call returns once they are all gone, so the
    /// adapters' files are released.
    pub async fn abort(self) {
        for (_, h) in &self.tasks {
            h.abort();
        }
        for (_, h) in self.tasks {
            let _ = h.await;
        }
    }
}

/// A consumer runs either whole or per lane, for good: its checkpoints differ (`NAME`, or
/// `NAME/lane-k`), so starting it the other way would count everything again.
async fn refuse_other_mode(stores: &Stores, name: &str, per_lane: bool) -> anyhow::Result<()> {
    let other = if per_lane {
        name.to_owned()
    } else {
        crate::runtime::lanes::lane_name(name, 0)
    };
    let used = stores
        .consumers
        .load(&other)
        .await
        .with_context(|| format!("reading consumer {other}"))?
        .is_some_and(|cp| cp.version > 0);
    anyhow::ensure!(
        !used,
        "consumer {name} has run {} before (checkpoint {other}); run it that way again, or \
         give it a new name (`rides consumer remove {other}` forgets the old one)",
        if per_lane { "whole" } else { "per lane" }
    );
    Ok(())
}

/// Starts distance consumer `name` per lane: one leased consumer `NAME/lane-k` per lane of
/// the log, each reading its lane only, with this instance's fair share of the lanes (see
/// [`crate::runtime::lanes`]).
#[allow(clippy::too_many_arguments)]
async fn spawn_lanes(
    name: &str,
    stores: &Stores,
    log: &OpenedLog,
    clock: &Arc<dyn Clock>,
    metrics: &Arc<Metrics>,
    config: &FleetConfig,
    holder: &str,
    shutdown: &CancellationToken,
) -> anyhow::Result<Vec<(String, JoinHandle<()>)>> {
    use crate::runtime::lanes::{LaneShare, lane_name};
    refuse_other_mode(stores, name, true).await?;
    let ttl = config.lease_ttl.ok_or_else(|| {
        anyhow::anyhow!("consumer {name}: running per lane needs leases (a --lease-ttl-ms above 0)")
    })?;
    // A log opened lazily knows its lanes once it is reached.
    log.log
        .ping()
        .await
        .with_context(|| format!("consumer {name}: reading the log's lanes"))?;
    let lanes = log.log.lanes();
    anyhow::ensure!(
        lanes > 1,
        "consumer {name}: --per-lane needs a log with several lanes (Kafka partitions); {} has one",
        log.log.describe()
    );
    let share = Arc::new(LaneShare::new(
        stores.consumers.clone(),
        clock.clone(),
        name,
        holder,
        lanes,
        ttl,
    ));
    let mut tasks = Vec::new();
    for lane in 0..lanes {
        let lname = lane_name(name, lane);
        let view: Arc<dyn ports::Log> = Arc::new(ports::LaneLog::new(log.log.clone(), lane)?);
        let keeper = LeaseKeeper::new(
            stores.consumers.clone(),
            clock.clone(),
            format!("consumer:{lname}"),
            holder,
            ttl,
        )
        .with_share(share.clone(), lane);
        let c = distance_consumer(
            lname.clone(),
            view,
            stores.consumers.clone(),
            clock.clone(),
            config.faults.clone(),
            metrics.clone(),
        )
        .with_wait(config.intervals.consumer_wait)
        .with_policy(config.consumer_policy)
        .with_lease(keeper);
        if let Err(e) = c.register().await {
            tracing::warn!(consumer = %lname, error = %format!("{e:#}"), "could not register yet");
        }
        tasks.push((
            format!("consumer {lname}"),
            tokio::spawn(c.run(shutdown.clone())),
        ));
    }
    let stop = shutdown.clone();
    tasks.push((
        format!("lane members {name}"),
        tokio::spawn(async move {
            stop.cancelled().await;
            share.leave().await;
        }),
    ));
    Ok(tasks)
}
