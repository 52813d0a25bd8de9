//! The consumer runtime: a user writes a handler, the runtime does the rest.
//!
//! ```text
//!             ┌──────────────── one step ────────────────────────────────────────────┐
//!   lease ──▶ │ load checkpoint ─▶ read batch ─▶ duplicate rule ─▶ handler ─▶ save     │
//!  (standby   │ (position, cursor,  (blocking:    (producer, lane,  (new records  (one │
//!   if not    │  state, version)    the wake-up)  seq: Marks)        only)     transaction,
//!   held)     └──────────────────────────────────────────────────────────── fenced) ─┘
//! ```
//!
//! What the runtime does for every consumer:
//!
//! - **Reading** in batches, with a blocking read as the wake-up (no polling).
//! - **The duplicate rule**: a record whose producer sequence is not above the mark of its
//!   (producer, lane) was seen before and never reaches the handler ([`domain::Marks`]).
//! - **Checkpoints**: the position, the log it belongs to and the marks form the
//!   [`ports::Cursor`], saved with the handler's state in one transaction of the consumer
//!   store, guarded by the version loaded. Other services read cursors through the port.
//! - **Log cutovers**: a `log.cutover` record naming another log is the old log's seal. The
//!   runtime notes it, reads the old log to its end (every lane), then moves to the start of
//!   the new log with its marks collapsed into per-producer floors, in one save. This is the
//!   only place that follows a cutover on the consuming side.
//! - **Lost records** ([`domain::gaps`]): on a log whose lanes carry every record of a
//!   producer ([`Log::gap_free_lanes`]), a jump in a producer's sequence is a gap the log
//!   lost: noted in the cursor, logged at `ERROR`, reported until records fill it (a record at
//!   or below the mark that lies in a gap is handled, once) or it is acknowledged; the consumer
//!   goes on meanwhile. A position the log no longer holds ([`Log::beyond_end`], asked after a
//!   read that found nothing) makes the consumer read the log again from its start, with an
//!   open-ended gap after each mark that the producer's next record closes.
//! - **Retries**: a record the handler fails on is retried with exponential back-off (the
//!   service loop's), up to [`Policy::max_attempts`] attempts. The records before it in the
//!   batch are saved as handled, so a retry starts at the failing record.
//! - **Then** ([`OnFailure`]) either the consumer stops with a clear error, or the record is
//!   parked in the consumer's dead-letter list (`rides consumer parked NAME`) and the
//!   consumer goes on. Parking never reorders an entity: every later record with the same
//!   key ([`domain::LogRecord::key`]) is parked behind it, until `rides consumer retry-parked
//!   NAME` delivers them again, oldest first.
//! - **Leases** ([`lease`]): with a lease, one instance of a consumer name works and the
//!   others wait as hot standbys; every save is fenced by the lease's epoch.
//! - **Lanes** ([`lanes`]): on a log with several lanes (Kafka partitions) a consumer can
//!   run per lane, one lease, checkpoint and marks per lane, its lanes shared fairly by up to
//!   as many instances as there are lanes.
//!
//! # Two kinds of consumer
//!
//! - **Transactional** ([`Fold`], wrapped in [`Transactional`]): the handler folds records
//!   into a state that is saved with the checkpoint, in the same transaction. A crash before
//!   the save loses both the state change and the position change, so a record is applied
//!   exactly once. The distance consumers are of this kind.
//! - **Idempotent** ([`Effects`], wrapped in [`Idempotent`]): the handler applies effects to
//!   another system (a secondary datastore, an email service...). The checkpoint is saved
//!   after the effects, so a crash in between delivers the records again: effects must
//!   tolerate redelivery (upserts, deletes, idempotency keys). The duplicate rule still
//!   removes the log's own duplicates; only the records of the batch that was in flight at a
//!   crash are seen twice.

pub mod lanes;
pub mod lease;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use domain::{Seen, gaps};
use ports::{Clock, ConsumerStore, Cursor, Delivery, Log, Position, Save, ToPark};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use crate::faults::Faults;
use crate::metrics::Metrics;
use crate::services::{BATCH_SIZE, Outcome, Step, run_loop};
use crate::wiring::OpenedLog;

pub use lease::LeaseKeeper;

/// What a handler did with a batch of new records.
#[derive(Debug, Clone, PartialEq)]
pub struct Handled {
    /// The state after the records that were handled (`null` for a handler without state).
    pub state: serde_json::Value,
    /// The first record that failed (its index in the slice handed to the handler), and why.
    /// The records before it were handled (their effects, and `state`, include them); the
    /// records after it were not looked at.
    pub failed: Option<(usize, String)>,
}

/// A consumer's logic, as the runtime calls it. Implement [`Fold`] or [`Effects`] instead
/// of this trait, unless neither fits.
#[async_trait]
pub trait Handler: Send + Sync + 'static {
    /// The kind of consumer (`distance`, `sync`...), kept in its cursor.
    fn kind(&self) -> &'static str;

    /// Handles `records` (new records only, in log order), starting from `state` (the saved
    /// state; `null` for a consumer that never saved).
    ///
    /// # Errors
    /// When the batch cannot be handled at all (for example an unreadable state): the step
    /// fails, nothing is saved, and the batch is read again after a back-off. A failure of
    /// one record goes in [`Handled::failed`] instead.
    async fn handle(
        &self,
        state: serde_json::Value,
        records: &[Delivery],
    ) -> anyhow::Result<Handled>;
}

/// A transactional consumer: folds records into a state saved with its checkpoint.
pub trait Fold: Send + Sync + 'static {
    /// The folded result.
    type State: Serialize + DeserializeOwned + Default + Send;
    /// The kind of consumer, kept in its cursor.
    const KIND: &'static str;

    /// Applies one new record.
    ///
    /// # Errors
    /// Why the record cannot be applied (it is retried, then parked or the consumer stops).
    fn apply(&self, state: &mut Self::State, delivery: &Delivery) -> Result<(), String>;
}

/// Runs a [`Fold`] as a [`Handler`].
#[derive(Debug, Clone, Default)]
pub struct Transactional<F>(pub F);

#[async_trait]
impl<F: Fold> Handler for Transactional<F> {
    fn kind(&self) -> &'static str {
        F::KIND
    }

    async fn handle(
        &self,
        state: serde_json::Value,
        records: &[Delivery],
    ) -> anyhow::Result<Handled> {
        let mut s: F::State = if state.is_null() {
            F::State::default()
        } else {
            serde_json::from_value(state)
                .with_context(|| format!("the saved state is not a {} state", F::KIND))?
        };
        let mut failed = None;
        for (i, d) in records.iter().enumerate() {
            if let Err(why) = self.0.apply(&mut s, d) {
                failed = Some((i, why));
                break;
            }
        }
        Ok(Handled {
            state: serde_json::to_value(&s)?,
            failed,
        })
    }
}

/// Why [`Effects::apply`] did not apply a whole batch.
#[derive(Debug)]
pub enum Failure {
    /// The record at this index (and the ones after it) were not applied, for this reason;
    /// the ones before it were. The record is retried, then parked or the consumer stops.
    At(usize, String),
    /// Nothing can be applied now (the other system is down...): the step fails and the
    /// batch is read again after a back-off, without counting against any record.
    Batch(anyhow::Error),
}

/// An idempotent consumer: applies records' effects to another system. Effects must tolerate
/// being applied again (see the [module docs](self#two-kinds-of-consumer)).
#[async_trait]
pub trait Effects: Send + Sync + 'static {
    /// The kind of consumer, kept in its cursor.
    const KIND: &'static str;

    /// Applies the effects of `records`, in order.
    ///
    /// # Errors
    /// See [`Failure`].
    async fn apply(&self, records: &[Delivery]) -> Result<(), Failure>;
}

/// Runs an [`Effects`] handler as a [`Handler`] (its state is always `null`).
#[derive(Debug, Clone, Default)]
pub struct Idempotent<E>(pub E);

#[async_trait]
impl<E: Effects> Handler for Idempotent<E> {
    fn kind(&self) -> &'static str {
        E::KIND
    }

    async fn handle(
        &self,
        _state: serde_json::Value,
        records: &[Delivery],
    ) -> anyhow::Result<Handled> {
        let failed = match self.0.apply(records).await {
            Ok(()) => None,
            Err(Failure::At(i, why)) => Some((i, why)),
            Err(Failure::Batch(e)) => return Err(e),
        };
        Ok(Handled {
            state: serde_json::Value::Null,
            failed,
        })
    }
}

/// What happens to a record that failed [`Policy::max_attempts`] times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnFailure {
    /// The consumer stops, with the record and the error in its log line; nothing after the
    /// record is handled until it is restarted.
    #[default]
    Stop,
    /// The record is parked in the consumer's dead-letter list with every later record of
    /// the same entity, and the consumer goes on.
    Park,
}

impl std::str::FromStr for OnFailure {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "stop" => Ok(Self::Stop),
            "park" => Ok(Self::Park),
            other => Err(format!("unknown failure strategy {other:?} (stop or park)")),
        }
    }
}

/// The retry and failure strategy of a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    /// Attempts per record, the first included (at least 1).
    pub max_attempts: u32,
    /// What happens after the last attempt.
    pub on_failure: OnFailure,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            on_failure: OnFailure::Stop,
        }
    }
}

/// A consumer crash injected on purpose (after handling, before the save).
#[derive(Debug, thiserror::Error)]
#[error("simulated crash of consumer {0} before commit")]
pub struct SimulatedCrash(pub String);

/// A record failed and will be retried after a back-off.
#[derive(Debug, thiserror::Error)]
#[error(
    "consumer {consumer}: {kind} seq {seq} of {producer} failed (attempt {attempt} of {max}): {why}"
)]
pub struct RecordFailed {
    consumer: String,
    kind: String,
    producer: String,
    seq: u64,
    attempt: u32,
    max: u32,
    why: String,
}

/// The consumer stopped on a record that failed every attempt ([`OnFailure::Stop`]).
#[derive(Debug, thiserror::Error)]
#[error(
    "consumer {consumer} stopped: {kind} seq {seq} of {producer} failed {attempts} times: {why}"
)]
pub struct Stopped {
    consumer: String,
    kind: String,
    producer: String,
    seq: u64,
    attempts: u32,
    why: String,
}

/// The error text of a record parked behind an earlier parked record of its entity.
const HELD_BEHIND: &str = "held behind a parked record of the same entity";

/// A named consumer: its handler, the log, and the consumer store (see the module docs).
pub struct Consumer<H> {
    name: String,
    handler: H,
    log: Arc<dyn Log>,
    following: Option<OpenedLog>,
    consumers: Arc<dyn ConsumerStore>,
    clock: Arc<dyn Clock>,
    faults: Arc<Faults>,
    metrics: Arc<Metrics>,
    batch: usize,
    wait: Duration,
    policy: Policy,
    lease: Option<LeaseKeeper>,
    /// The kind of record whose commit-to-consumed latency is sampled (`None`: every kind).
    measured: Option<&'static str>,
    registered: AtomicBool,
    /// Failed attempts per (producer, seq) of the record being retried.
    attempts: Mutex<HashMap<(String, u64), u32>>,
    /// The keys of this consumer's parked records (loaded on first use).
    parked_keys: tokio::sync::Mutex<Option<HashSet<String>>>,
}

/// How one batch sorts out: the cursor after it, the index in the batch of each new record
/// for the handler, and the records to park.
struct Sorted {
    cursor: Cursor,
    at: Vec<usize>,
    park: Vec<ToPark>,
}

impl Sorted {
    /// The new records of `batch`: the batch itself when every record is new (the usual
    /// case: nothing is copied), else copies of the new ones.
    fn fresh<'b>(&self, batch: &'b [Delivery]) -> std::borrow::Cow<'b, [Delivery]> {
        if self.at.len() == batch.len() {
            std::borrow::Cow::Borrowed(batch)
        } else {
            std::borrow::Cow::Owned(self.at.iter().map(|&i| batch[i].clone()).collect())
        }
    }
}

impl<H: Handler> Consumer<H> {
    /// A consumer named `name` reading `log` (batches of 1000, blocking reads of up to 1 s,
    /// the default [`Policy`], no lease, no faults).
    pub fn new(
        name: impl Into<String>,
        handler: H,
        log: Arc<dyn Log>,
        consumers: Arc<dyn ConsumerStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        Self {
            name: name.into(),
            handler,
            log,
            following: None,
            consumers,
            clock,
            faults: Arc::new(Faults::none()),
            metrics: Arc::new(Metrics::new()),
            batch: BATCH_SIZE,
            wait: Duration::from_secs(1),
            policy: Policy::default(),
            lease: None,
            measured: None,
            registered: AtomicBool::new(false),
            attempts: Mutex::new(HashMap::new()),
            parked_keys: tokio::sync::Mutex::new(None),
        }
    }

    /// Follows log cutovers: `log` is the log the process was started with, and the one
    /// through which the logs named by cutover records are opened.
    pub fn following(mut self, log: OpenedLog) -> Self {
        self.log = log.log.clone();
        self.following = Some(log);
        self
    }

    /// Sets how long one read waits for records.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
        self
    }

    /// Sets the batch size (at least 1).
    pub fn with_batch(mut self, batch: usize) -> Self {
        self.batch = batch.max(1);
        self
    }

    /// Sets the retry and failure strategy.
    pub fn with_policy(mut self, policy: Policy) -> Self {
        self.policy = Policy {
            max_attempts: policy.max_attempts.max(1),
            ..policy
        };
        self
    }

    /// Runs only while holding `lease` (hot standby otherwise); saves are fenced by it.
    pub fn with_lease(mut self, lease: LeaseKeeper) -> Self {
        self.lease = Some(lease);
        self
    }

    /// Injects faults (crashes after handling, before the save).
    pub fn with_faults(mut self, faults: Arc<Faults>) -> Self {
        self.faults = faults;
        self
    }

    /// Records commit-to-consumed latencies in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Samples the commit-to-consumed latency of records of `kind` only (by default every
    /// new record handled is sampled).
    pub fn measuring(mut self, kind: &'static str) -> Self {
        self.measured = Some(kind);
        self
    }

    /// The consumer's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Registers the consumer so the trimmer waits for it (done by [`Self::run`] too).
    ///
    /// # Errors
    /// When the consumer store cannot be reached.
    pub async fn register(&self) -> anyhow::Result<()> {
        self.consumers
            .register(&self.name)
            .await
            .with_context(|| format!("registering consumer {}", self.name))
    }

    /// The log a saved cursor is on.
    async fn log_for(&self, url: Option<&str>) -> anyhow::Result<Arc<dyn Log>> {
        match (url, &self.following) {
            (None, _) => Ok(self.log.clone()),
            (Some(url), Some(start)) => Ok(start.follow(url).await?.log),
            (Some(url), None) => Err(anyhow::anyhow!(
                "consumer {} is on the log {url}, which it was not set up to follow",
                self.name
            )),
        }
    }

    /// The URL of the log `cursor` is on, when known.
    fn current_url<'a>(&'a self, cursor: &'a Cursor) -> Option<&'a str> {
        cursor
            .log_url
            .as_deref()
            .or(self.following.as_ref().map(|o| o.url.as_str()))
    }

    /// The duplicate rule, gaps, seals and parked entities over `deliveries`, from `start`.
    /// `gap_free`: the log's lanes carry every record of a producer, so a jump is a loss
    /// ([`Log::gap_free_lanes`]); `log_gaps`: say so in the log (once per batch: the first
    /// sort of a batch logs, the re-sorts after a failure do not).
    #[allow(
        clippy::too_many_arguments,
        reason = "one private helper; a struct would only rename them"
    )]
    fn sort_out(
        &self,
        start: &Cursor,
        deliveries: &[Delivery],
        parked_keys: &HashSet<String>,
        errors: &HashMap<usize, String>,
        gap_free: bool,
        now_ms: i64,
        log_gaps: bool,
    ) -> Sorted {
        let mut cursor = start.clone();
        let (mut at, mut park) = (Vec::new(), Vec::new());
        for (i, d) in deliveries.iter().enumerate() {
            let r = &d.record;
            let mut filled = false;
            match cursor.marks.see(d.lane, r) {
                Seen::Duplicate => {
                    // At or below the mark, but missing: a repaired record fills its gap.
                    if !gaps::fill(&mut cursor.gaps, &r.producer, d.lane, r.seq) {
                        cursor.duplicates += 1;
                        continue;
                    }
                    filled = true;
                    if log_gaps {
                        tracing::info!(consumer = %self.name, producer = %r.producer, seq = r.seq,
                            lane = d.lane, "a record of a gap arrived (repaired)");
                    }
                }
                Seen::New { skipped } => {
                    let was_open = gaps::close_open(&mut cursor.gaps, &r.producer, d.lane, r.seq);
                    if skipped > 0 && gap_free && !was_open {
                        let (from, to) = (r.seq - skipped, r.seq - 1);
                        gaps::note(&mut cursor.gaps, &r.producer, d.lane, from, to, now_ms);
                        if log_gaps {
                            tracing::error!(consumer = %self.name, producer = %r.producer,
                                lane = d.lane, from_seq = from, to_seq = to, missing = skipped,
                                "the log lost records: the producer's sequence jumps from {} to {}; \
                                 going on with what the log holds, the gap stays reported until \
                                 `rides log repair` fills it or it is acknowledged",
                                from - 1, r.seq);
                        }
                    } else if was_open
                        && log_gaps
                        && let Some(g) = cursor.gaps.iter().find(|g| {
                            g.producer == r.producer
                                && g.lane == d.lane
                                && g.to_seq == Some(r.seq - 1)
                        })
                    {
                        tracing::error!(consumer = %self.name, gap = %g,
                            missing = g.missing().unwrap_or_default(),
                            "the log lost records after this consumer's position: gap now known");
                    }
                }
            }
            // A seal is a seal only the first time: a cutover record that the duplicate rule
            // has seen before names a log this consumer has already moved past (and one that
            // arrives late, in a gap, is older than where the consumer reads).
            if let Some(target) = d.record.cutover_target()
                && !filled
                && cursor.sealed_to.is_none()
                && self.current_url(&cursor) != Some(target)
            {
                tracing::info!(consumer = %self.name, to = %target, "log sealed: reading it to its end");
                cursor.sealed_to = Some(target.to_owned());
            }
            if parked_keys.contains(&d.record.key) {
                park.push(ToPark {
                    lane: d.lane,
                    record: d.record.clone(),
                    error: errors
                        .get(&i)
                        .cloned()
                        .unwrap_or_else(|| HELD_BEHIND.to_owned()),
                });
                continue;
            }
            at.push(i);
        }
        Sorted { cursor, at, park }
    }

    /// The keys of parked records, loaded once.
    async fn parked_keys(&self) -> anyhow::Result<HashSet<String>> {
        let mut keys = self.parked_keys.lock().await;
        if keys.is_none() {
            let parked = self.consumers.parked(&self.name).await?;
            *keys = Some(parked.into_iter().map(|p| p.record.key).collect());
        }
        Ok(keys.clone().unwrap_or_default())
    }

    /// Counts a failed attempt at `d`; returns the attempts so far.
    fn failed_attempt(&self, d: &Delivery) -> u32 {
        let mut attempts = self.attempts.lock().unwrap_or_else(PoisonError::into_inner);
        let n = attempts
            .entry((d.record.producer.clone(), d.record.seq))
            .or_insert(0);
        *n += 1;
        *n
    }

    fn forget_attempts(&self) {
        self.attempts
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clear();
    }

    /// Saves under the version loaded, fenced by the lease when there is one.
    async fn save(
        &self,
        version: u64,
        position: &Position,
        cursor: &Cursor,
        state: &serde_json::Value,
        park: &[ToPark],
        unpark: &[u64],
    ) -> anyhow::Result<u64> {
        let lease = self.lease.as_ref().and_then(LeaseKeeper::current);
        let mut cursor = cursor.clone();
        cursor.kind = Some(self.handler.kind().to_owned());
        let save = Save {
            lease: lease.as_ref(),
            park,
            unpark,
            ..Save::new(version, position, &cursor, state, self.clock.now_ms())
        };
        let v = match self.consumers.save(&self.name, &save).await {
            Ok(v) => v,
            Err(e) => {
                if matches!(e, ports::ConsumerStoreError::Fenced(_))
                    && let Some(keeper) = &self.lease
                {
                    keeper.lost();
                }
                return Err(e.into());
            }
        };
        if !park.is_empty() {
            let mut keys = self.parked_keys.lock().await;
            keys.get_or_insert_with(HashSet::new)
                .extend(park.iter().map(|p| p.record.key.clone()));
        }
        Ok(v)
    }

    /// Reads, handles and saves one batch; [`Outcome::Worked`] with the number of records
    /// read (duplicates included), [`Outcome::Idle`] when there was nothing to read or this
    /// instance is a standby.
    ///
    /// # Errors
    /// When a port fails, when the save conflicts or is fenced, on a [`SimulatedCrash`]
    /// (nothing saved in these cases), when a record failed and will be retried
    /// ([`RecordFailed`], the records before it saved), or when the consumer stops
    /// ([`Stopped`]).
    pub async fn step(&self) -> anyhow::Result<Outcome> {
        if let Some(lease) = &self.lease
            && lease.hold().await?.is_none()
        {
            return Ok(Outcome::Idle);
        }
        if !self.registered.load(Ordering::Relaxed) {
            self.register().await?;
            self.registered.store(true, Ordering::Relaxed);
        }
        let cp = self
            .consumers
            .load(&self.name)
            .await?
            .unwrap_or_else(ports::Checkpoint::registered);
        let log = self.log_for(cp.cursor.log_url.as_deref()).await?;
        let batch = match log.read(&cp.position, self.batch, self.wait).await {
            Ok(batch) => batch,
            // A position the log refuses may be one it lost (sled restored from a backup).
            Err(e @ ports::LogError::InvalidPosition(_)) => {
                if log.beyond_end(&cp.position).await.unwrap_or(false) {
                    return self.lost_end(&cp, log.as_ref()).await;
                }
                return Err(e.into());
            }
            Err(e) => return Err(e.into()),
        };
        if batch.deliveries.is_empty() {
            if !cp.position.is_start() && log.beyond_end(&cp.position).await? {
                return self.lost_end(&cp, log.as_ref()).await;
            }
            let Some(target) = cp.cursor.sealed_to.clone() else {
                return Ok(Outcome::Idle);
            };
            // Sealed and read to its end: every record of the old log has been handled.
            tracing::info!(consumer = %self.name, to = %target, "log cutover: continuing on the new log");
            let mut cursor = cp.cursor.clone();
            cursor.marks.start_new_log();
            cursor.sealed_to = None;
            cursor.log_url = Some(target);
            self.save(cp.version, &Position::start(), &cursor, &cp.state, &[], &[])
                .await?;
            return Ok(Outcome::Worked(0));
        }

        let mut parked_keys = self.parked_keys().await?;
        let mut errors = HashMap::new();
        let (gap_free, now_ms) = (log.gap_free_lanes(), self.clock.now_ms());
        let sort = |upto: usize, parked: &HashSet<String>, errors: &HashMap<usize, String>| {
            self.sort_out(
                &cp.cursor,
                &batch.deliveries[..upto],
                parked,
                errors,
                gap_free,
                now_ms,
                false,
            )
        };
        let mut sorted = self.sort_out(
            &cp.cursor,
            &batch.deliveries,
            &parked_keys,
            &errors,
            gap_free,
            now_ms,
            true,
        );
        let mut state = if cp.version == 0 {
            serde_json::Value::Null
        } else {
            cp.state.clone()
        };
        let mut from = 0;
        let mut fresh = sorted.fresh(&batch.deliveries);
        while from < fresh.len() {
            let handled = self.handler.handle(state, &fresh[from..]).await?;
            state = handled.state;
            let Some((k, why)) = handled.failed else {
                break;
            };
            let k = from + k;
            let failing = &fresh[k];
            let attempt = self.failed_attempt(failing);
            let record = &failing.record;
            if attempt < self.policy.max_attempts || self.policy.on_failure == OnFailure::Stop {
                // Keep what was handled before the failing record: the same position (the
                // batch is read again), the cursor and parks up to it.
                let upto = sorted.at[k];
                let before = sort(upto, &parked_keys, &errors);
                self.save(
                    cp.version,
                    &cp.position,
                    &before.cursor,
                    &state,
                    &before.park,
                    &[],
                )
                .await?;
                if attempt < self.policy.max_attempts {
                    return Err(RecordFailed {
                        consumer: self.name.clone(),
                        kind: record.kind.clone(),
                        producer: record.producer.clone(),
                        seq: record.seq,
                        attempt,
                        max: self.policy.max_attempts,
                        why,
                    }
                    .into());
                }
                return Err(Stopped {
                    consumer: self.name.clone(),
                    kind: record.kind.clone(),
                    producer: record.producer.clone(),
                    seq: record.seq,
                    attempts: attempt,
                    why,
                }
                .into());
            }
            // Park it, with every later record of its entity, and go on after it.
            tracing::warn!(consumer = %self.name, kind = %record.kind, producer = %record.producer,
                seq = record.seq, key = %record.key, error = %why, "parking a record after {attempt} attempts");
            let at = sorted.at[k];
            errors.insert(at, why);
            parked_keys.insert(record.key.clone());
            sorted = sort(batch.deliveries.len(), &parked_keys, &errors);
            fresh = sorted.fresh(&batch.deliveries);
            from = sorted.at.partition_point(|&i| i <= at);
        }
        if self.faults.consumer_crash() {
            tracing::debug!(consumer = %self.name, "fault injected: crashing before commit");
            return Err(SimulatedCrash(self.name.clone()).into());
        }
        self.save(
            cp.version,
            &batch.next,
            &sorted.cursor,
            &state,
            &sorted.park,
            &[],
        )
        .await?;
        self.forget_attempts();
        let now = self.clock.now_ms();
        let duplicates = sorted
            .cursor
            .duplicates
            .saturating_sub(cp.cursor.duplicates);
        self.metrics
            .consumer_batch(&self.name, fresh.len(), duplicates);
        for d in fresh.iter() {
            if self.measured.is_none_or(|k| d.record.kind == k) {
                self.metrics
                    .consumed(&self.name, now - d.record.recorded_at_ms);
            }
        }
        Ok(Outcome::Worked(batch.deliveries.len() as u64))
    }

    /// The log no longer holds this consumer's position: it lost its end (a volatile Redis
    /// restarted, a directory restored from an older backup). Starts again at the start of
    /// the log (what it holds now is sorted out by the duplicate rule) and opens a gap after
    /// each (producer, lane) mark, which the next record of that producer closes; in one save.
    async fn lost_end(&self, cp: &ports::Checkpoint, log: &dyn Log) -> anyhow::Result<Outcome> {
        let mut cursor = cp.cursor.clone();
        let now = self.clock.now_ms();
        if log.gap_free_lanes() {
            for (key, &hw) in &cp.cursor.marks.high_water {
                let Some((producer, lane)) = key.rsplit_once('/') else {
                    continue;
                };
                let Ok(lane) = lane.parse::<u32>() else {
                    continue;
                };
                if !cursor
                    .gaps
                    .iter()
                    .any(|g| g.producer == producer && g.lane == lane && g.to_seq.is_none())
                {
                    cursor.gaps.push(domain::Gap {
                        producer: producer.to_owned(),
                        lane,
                        from_seq: hw + 1,
                        to_seq: None,
                        detected_at_ms: now,
                    });
                }
            }
        }
        tracing::error!(consumer = %self.name, log = %log.describe(), position = %cp.position,
            "the log no longer holds this consumer's position (it lost records: restarted \
             without persistence, recreated, or restored from an older backup); reading it \
             again from its start, the records after this consumer's marks are reported \
             missing until `rides log repair` re-stages them");
        let state = if cp.version == 0 {
            serde_json::Value::Null
        } else {
            cp.state.clone()
        };
        self.save(cp.version, &Position::start(), &cursor, &state, &[], &[])
            .await?;
        Ok(Outcome::Worked(0))
    }

    /// Delivers the parked records again, oldest first, through the handler, and drops from
    /// the dead-letter list the ones that succeed (in one save with the handler's state).
    /// Stops at the first record that fails again, which stays parked with the ones after it.
    /// Returns (delivered, still parked).
    ///
    /// Run it while no other instance of the consumer works (the CLI takes the consumer's
    /// lease first).
    ///
    /// # Errors
    /// When a port fails or the save conflicts (nothing is unparked then).
    pub async fn retry_parked(&self) -> anyhow::Result<(usize, usize)> {
        let parked = self.consumers.parked(&self.name).await?;
        if parked.is_empty() {
            return Ok((0, 0));
        }
        let cp = self
            .consumers
            .load(&self.name)
            .await?
            .unwrap_or_else(ports::Checkpoint::registered);
        let deliveries: Vec<Delivery> = parked
            .iter()
            .map(|p| Delivery {
                lane: p.lane,
                record: p.record.clone(),
            })
            .collect();
        let state = if cp.version == 0 {
            serde_json::Value::Null
        } else {
            cp.state.clone()
        };
        let handled = self.handler.handle(state, &deliveries).await?;
        let done = handled.failed.as_ref().map_or(parked.len(), |(k, _)| *k);
        if let Some((k, why)) = &handled.failed {
            tracing::warn!(consumer = %self.name, seq = parked[*k].record.seq, error = %why, "a parked record failed again");
        }
        let unpark: Vec<u64> = parked[..done].iter().map(|p| p.id).collect();
        self.save(
            cp.version,
            &cp.position,
            &cp.cursor,
            &handled.state,
            &[],
            &unpark,
        )
        .await?;
        *self.parked_keys.lock().await = None;
        Ok((done, parked.len() - done))
    }

    /// Releases the lease now, as a shutdown does.
    pub async fn release_lease(&self) {
        if let Some(lease) = &self.lease {
            lease.release().await;
        }
    }

    /// Steps until `shutdown` is cancelled, then releases the lease.
    pub async fn run(self, shutdown: CancellationToken) {
        run_loop(self, shutdown).await;
    }
}

#[async_trait]
impl<H: Handler> Step for Consumer<H> {
    fn name(&self) -> String {
        format!("consumer {}", self.name)
    }
    async fn step(&self) -> anyhow::Result<Outcome> {
        Consumer::step(self).await
    }
    async fn idle(&self) {
        // An active consumer's blocking read already waited for records; a standby waits a
        // fraction of the lease's TTL before it tries to take over.
        if let Some(lease) = &self.lease
            && lease.current().is_none()
        {
            tokio::time::sleep(lease.standby_poll()).await;
        }
    }
    fn stops_on(&self, error: &anyhow::Error) -> bool {
        error.downcast_ref::<Stopped>().is_some()
    }
    async fn stop(&self) {
        if let Some(lease) = &self.lease {
            lease.release().await;
        }
    }
}

#[cfg(test)]
mod tests;
