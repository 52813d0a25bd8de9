//! The distance consumer: folds `ride.created` records into a total, transactionally.
//!
//! One step: load the checkpoint (state + position + version), read the next batch after the
//! position (the blocking read is the wake-up: it returns as soon as a record is appended),
//! fold the batch into the state with [`DistanceState::apply`], then save state and new
//! position in ONE call of the consumer store, guarded by the version that was loaded.
//!
//! This consumer is *transactional*: its result and its position move together, so a crash
//! anywhere before the save leaves both at the old values and the batch is simply read again.
//! Duplicates in the log (double sends, redelivery) are skipped by the producer's sequence
//! (see `domain::distance`), never by timing. The state is reloaded at every step instead of
//! being cached: a step costs one extra read, and the consumer can never drift from what it
//! has committed.
//!
//! # Log cutover
//!
//! The saved state is a [`ConsumerState`]: the fold plus the URL of the log its position
//! belongs to. A `log.cutover` record naming another log is the old log's seal: the streamer
//! appended it after every record that belongs to the old log, and appends nothing new there
//! afterwards. Order only holds per lane, though (a Kafka partition), so records of *other*
//! lanes may still be unread when the seal shows up. The consumer therefore notes the seal
//! (`sealed_to`), keeps reading the old log, and switches only when a read finds nothing more:
//! then it moves to the start of the new log and collapses its duplicate marks into
//! per-producer floors (`DistanceState::start_new_log`), in one save. Nothing is lost (the old
//! log was read to its end) and nothing counts twice (every record of the old log is below
//! the floor).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use domain::{Applied, DistanceState};
use ports::{Clock, ConsumerStore, Log, Position};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::{BATCH_SIZE, Outcome, Step, run_loop};
use crate::faults::Faults;
use crate::metrics::Metrics;
use crate::wiring::OpenedLog;

/// What a distance consumer saves with its position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsumerState {
    /// The log the saved position belongs to; `None` means the log the process was started
    /// with (the consumer has never followed a cutover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    /// The log a seal read on the current log points to; the consumer moves there once the
    /// current log has nothing more to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_to: Option<String>,
    /// The fold.
    #[serde(flatten)]
    pub fold: DistanceState,
}

impl ConsumerState {
    /// Reads a saved state (`null` for a consumer that registered but never saved).
    ///
    /// # Errors
    /// When the JSON is not a distance consumer's state.
    pub fn from_json(json: serde_json::Value) -> Result<Self, serde_json::Error> {
        if json.is_null() {
            return Ok(Self::default());
        }
        serde_json::from_value(json)
    }
}

/// A consumer crash injected on purpose (after folding, before commit).
#[derive(Debug, thiserror::Error)]
#[error("simulated crash of consumer {0} before commit")]
pub struct SimulatedCrash(pub String);

/// Log → distance state, with its checkpoint in the consumer store.
pub struct DistanceConsumer {
    name: String,
    log: Arc<dyn Log>,
    consumers: Arc<dyn ConsumerStore>,
    clock: Arc<dyn Clock>,
    faults: Arc<Faults>,
    metrics: Arc<Metrics>,
    batch: usize,
    wait: Duration,
    registered: AtomicBool,
    following: Option<OpenedLog>,
}

impl DistanceConsumer {
    /// A consumer named `name` (batch 1000, blocking reads of up to 1 s).
    pub fn new(
        name: impl Into<String>,
        log: Arc<dyn Log>,
        consumers: Arc<dyn ConsumerStore>,
        clock: Arc<dyn Clock>,
        faults: Arc<Faults>,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            name: name.into(),
            log,
            consumers,
            clock,
            faults,
            metrics,
            batch: BATCH_SIZE,
            wait: Duration::from_secs(1),
            registered: AtomicBool::new(false),
            following: None,
        }
    }

    /// Follows log cutovers: `log` is the log the process was started with, and the one
    /// through which the logs named by cutover records are opened.
    pub fn following(mut self, log: OpenedLog) -> Self {
        self.log = log.log.clone();
        self.following = Some(log);
        self
    }

    /// The log a saved position belongs to.
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

    /// The URL of the log `state` is on, when known.
    fn current_url<'a>(&'a self, state: &'a ConsumerState) -> Option<&'a str> {
        state
            .log_url
            .as_deref()
            .or(self.following.as_ref().map(|o| o.url.as_str()))
    }

    /// Sets how long one read waits for records.
    pub fn with_wait(mut self, wait: Duration) -> Self {
        self.wait = wait;
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

    /// Folds and commits one batch; returns [`Outcome::Worked`] with the number of records
    /// read (duplicates included).
    ///
    /// # Errors
    /// When a port fails, when the save conflicts with another process of the same name, or
    /// on a [`SimulatedCrash`]; in each case nothing was committed.
    pub async fn step(&self) -> anyhow::Result<Outcome> {
        let checkpoint = self.consumers.load(&self.name).await?;
        let (position, version, mut state) = match checkpoint {
            Some(cp) if cp.version > 0 => {
                let state = ConsumerState::from_json(cp.state)
                    .with_context(|| format!("state of consumer {}", self.name))?;
                (cp.position, cp.version, state)
            }
            Some(cp) => (cp.position, 0, ConsumerState::default()),
            None => (Position::start(), 0, ConsumerState::default()),
        };
        let log = self.log_for(state.log_url.as_deref()).await?;
        let batch = log.read(&position, self.batch, self.wait).await?;
        if batch.deliveries.is_empty() {
            let Some(target) = state.sealed_to.take() else {
                return Ok(Outcome::Idle);
            };
            // Sealed and read to its end: every record of the old log has been applied.
            tracing::info!(consumer = %self.name, to = %target, "log cutover: continuing on the new log");
            state.fold.start_new_log();
            state.log_url = Some(target);
            let json = serde_json::to_value(&state)?;
            self.consumers
                .save(
                    &self.name,
                    version,
                    &Position::start(),
                    &json,
                    self.clock.now_ms(),
                )
                .await?;
            return Ok(Outcome::Worked(0));
        }
        let mut counted_at = Vec::new();
        for d in &batch.deliveries {
            let applied = state.fold.apply(d.lane, &d.record);
            match &applied {
                Applied::Counted => counted_at.push(d.record.recorded_at_ms),
                Applied::Rejected(why) => {
                    tracing::warn!(consumer = %self.name, %why, "record rejected");
                }
                Applied::Duplicate | Applied::Ignored => {}
            }
            // A seal is a seal only the first time: a cutover record that the duplicate rule
            // has seen before (a repeated seal, or an old one left in an outbox that later
            // became the log) names a log this consumer has already moved past.
            if applied != Applied::Duplicate
                && let Some(target) = d.record.cutover_target()
                && state.sealed_to.is_none()
                && self.current_url(&state) != Some(target)
            {
                tracing::info!(consumer = %self.name, to = %target, "log sealed: reading it to its end");
                state.sealed_to = Some(target.to_owned());
            }
        }
        if self.faults.consumer_crash() {
            tracing::debug!(consumer = %self.name, "fault injected: crashing before commit");
            return Err(SimulatedCrash(self.name.clone()).into());
        }
        let json = serde_json::to_value(&state)?;
        let now = self.clock.now_ms();
        self.consumers
            .save(&self.name, version, &batch.next, &json, now)
            .await?;
        for at in counted_at {
            self.metrics.record_latency(now - at);
        }
        Ok(Outcome::Worked(batch.deliveries.len() as u64))
    }

    /// Registers, then steps until `shutdown` is cancelled (retrying the registration).
    pub async fn run(self, shutdown: CancellationToken) {
        run_loop(self, shutdown).await;
    }
}

#[async_trait]
impl Step for DistanceConsumer {
    fn name(&self) -> String {
        format!("consumer {}", self.name)
    }
    async fn step(&self) -> anyhow::Result<Outcome> {
        // Registering in the loop (once) means a store that is down at start-up is retried
        // like any other failure.
        if !self.registered.load(Ordering::Relaxed) {
            self.register().await?;
            self.registered.store(true, Ordering::Relaxed);
        }
        DistanceConsumer::step(self).await
    }
    async fn idle(&self) {
        // The blocking read already waited for records.
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultConfig;
    use crate::services::mocks::{MockConsumers, MockLog, ride_record};
    use mockall::predicate::{always, eq};
    use ports::{Batch, Checkpoint, ConsumerStoreError, Delivery, ManualClock, Position};

    fn log_with(records: Vec<(u64, u64)>) -> MockLog {
        let mut log = MockLog::new();
        log.expect_read().returning(move |_, _, _| {
            Ok(Batch {
                deliveries: records
                    .iter()
                    .map(|(seq, d)| Delivery {
                        lane: 0,
                        record: ride_record(*seq, *d, 1_000),
                    })
                    .collect(),
                next: Position::new("9"),
            })
        });
        log
    }

    fn consumer(
        log: MockLog,
        cs: MockConsumers,
        faults: Faults,
    ) -> (DistanceConsumer, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let c = DistanceConsumer::new(
            "a",
            Arc::new(log),
            Arc::new(cs),
            Arc::new(ManualClock::new(1_250)),
            Arc::new(faults),
            metrics.clone(),
        );
        (c, metrics)
    }

    fn registered(cs: &mut MockConsumers) {
        cs.expect_load().returning(|_| {
            Ok(Some(Checkpoint {
                position: Position::start(),
                state: serde_json::Value::Null,
                version: 0,
                updated_at_ms: 0,
            }))
        });
    }

    #[tokio::test]
    async fn folds_skips_the_double_send_and_commits_state_with_position() {
        let mut cs = MockConsumers::new();
        registered(&mut cs);
        cs.expect_save()
            .with(
                eq("a"),
                eq(0u64),
                eq(Position::new("9")),
                always(),
                eq(1_250i64),
            )
            .times(1)
            .returning(|_, _, _, state, _| {
                let s: DistanceState = serde_json::from_value(state.clone()).unwrap();
                assert_eq!((s.rides, s.distance_mm, s.duplicates), (2, 5_000, 1));
                Ok(1)
            });
        let (c, metrics) = consumer(
            log_with(vec![(1, 2_000), (1, 2_000), (2, 3_000)]),
            cs,
            Faults::none(),
        );
        assert_eq!(c.step().await.unwrap(), Outcome::Worked(3));
        assert_eq!(metrics.latency().p50, 250);
    }

    #[tokio::test]
    async fn a_refused_save_is_an_error_and_is_not_retried_within_the_step() {
        let mut cs = MockConsumers::new();
        registered(&mut cs);
        cs.expect_save()
            .times(1)
            .returning(|n, _, _, _, _| Err(ConsumerStoreError::Conflict(n.to_owned())));
        let (c, metrics) = consumer(log_with(vec![(1, 2_000)]), cs, Faults::none());
        assert!(c.step().await.is_err());
        assert_eq!(metrics.latency().samples, 0, "nothing counted as consumed");
    }

    #[tokio::test]
    async fn a_simulated_crash_commits_nothing() {
        let mut cs = MockConsumers::new();
        registered(&mut cs);
        cs.expect_save().never();
        let faults = Faults::new(FaultConfig {
            consumer_crash_rate: 1.0,
            ..FaultConfig::none()
        });
        let (c, _) = consumer(log_with(vec![(1, 2_000)]), cs, faults);
        let err = c.step().await.unwrap_err();
        assert!(err.downcast_ref::<SimulatedCrash>().is_some(), "{err}");
    }

    #[tokio::test]
    async fn resumes_from_the_saved_state_and_version() {
        let mut cs = MockConsumers::new();
        cs.expect_load().returning(|_| {
            let mut s = DistanceState::default();
            s.apply(0, &ride_record(1, 2_000, 0));
            Ok(Some(Checkpoint {
                position: Position::new("1"),
                state: serde_json::to_value(&s).unwrap(),
                version: 4,
                updated_at_ms: 1,
            }))
        });
        cs.expect_save()
            .with(eq("a"), eq(4u64), always(), always(), always())
            .times(1)
            .returning(|_, _, _, state, _| {
                let s: DistanceState = serde_json::from_value(state.clone()).unwrap();
                assert_eq!((s.rides, s.distance_mm), (2, 5_000));
                Ok(5)
            });
        let (c, _) = consumer(log_with(vec![(1, 2_000), (2, 3_000)]), cs, Faults::none());
        assert_eq!(c.step().await.unwrap(), Outcome::Worked(2));
    }

    #[tokio::test]
    async fn nothing_to_read_is_idle_and_saves_nothing() {
        let mut cs = MockConsumers::new();
        registered(&mut cs);
        cs.expect_save().never();
        let (c, _) = consumer(log_with(vec![]), cs, Faults::none());
        assert_eq!(c.step().await.unwrap(), Outcome::Idle);
    }

    #[tokio::test]
    async fn a_seal_is_read_to_the_end_of_every_lane_before_switching_logs() {
        use std::sync::Mutex;
        // The consumer store, shared by the mock's closures: (position, state, version).
        let saved = Arc::new(Mutex::new((
            Position::start(),
            serde_json::Value::Null,
            0u64,
        )));
        let mut cs = MockConsumers::new();
        let s = saved.clone();
        cs.expect_load().returning(move |_| {
            let (position, state, version) = s.lock().unwrap().clone();
            Ok(Some(Checkpoint {
                position,
                state,
                version,
                updated_at_ms: 0,
            }))
        });
        let s = saved.clone();
        cs.expect_save().returning(move |_, v, position, state, _| {
            *s.lock().unwrap() = (position.clone(), state.clone(), v + 1);
            Ok(v + 1)
        });
        let first = ride_record(1, 2_000, 0);
        let seal =
            domain::NewRecord::cutover("kafka://k:9092/t", 0).sequenced(first.producer.clone(), 2);
        let producer = first.producer.clone();
        let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut log = MockLog::new();
        log.expect_read().returning(move |_, _, _| {
            let deliveries = match calls.fetch_add(1, Ordering::SeqCst) {
                // The seal arrives on lane 0 while lane 1 still holds seq 3 of the old log.
                0 => vec![
                    Delivery {
                        lane: 0,
                        record: first.clone(),
                    },
                    Delivery {
                        lane: 0,
                        record: seal.clone(),
                    },
                    Delivery {
                        lane: 1,
                        record: ride_record(3, 3_000, 0),
                    },
                ],
                _ => vec![],
            };
            Ok(Batch {
                deliveries,
                next: Position::new("9"),
            })
        });
        let (c, _) = consumer(log, cs, Faults::none());

        assert_eq!(c.step().await.unwrap(), Outcome::Worked(3));
        let (position, state, _) = saved.lock().unwrap().clone();
        let state = ConsumerState::from_json(state).unwrap();
        assert_eq!(position, Position::new("9"), "still on the old log");
        assert_eq!(state.sealed_to.as_deref(), Some("kafka://k:9092/t"));
        assert_eq!(
            (state.fold.rides, state.fold.distance_mm),
            (2, 5_000),
            "lane 1 was not abandoned"
        );

        // Nothing more on the old log: move to the start of the new one, with floors.
        assert_eq!(c.step().await.unwrap(), Outcome::Worked(0));
        let (position, state, version) = saved.lock().unwrap().clone();
        let state = ConsumerState::from_json(state).unwrap();
        assert_eq!((position, version), (Position::start(), 2));
        assert_eq!(state.log_url.as_deref(), Some("kafka://k:9092/t"));
        assert_eq!(state.sealed_to, None);
        assert_eq!(state.fold.floors.get(&producer), Some(&3));
        assert_eq!(state.fold.rides, 2);
    }

    #[tokio::test]
    async fn an_old_seal_seen_again_is_a_duplicate_not_a_cutover() {
        let mut cs = MockConsumers::new();
        // On the new log already, with the old log's records below the floor.
        cs.expect_load().returning(|_| {
            // (`log_url` None: the log this consumer was started on.)
            let mut state = ConsumerState::default();
            state.fold.apply(0, &ride_record(7, 10, 0));
            state.fold.start_new_log();
            Ok(Some(Checkpoint {
                position: Position::start(),
                state: serde_json::to_value(state).unwrap(),
                version: 3,
                updated_at_ms: 0,
            }))
        });
        cs.expect_save().times(1).returning(|_, _, _, state, _| {
            let state = ConsumerState::from_json(state.clone()).unwrap();
            assert_eq!(state.sealed_to, None, "the stale seal was ignored");
            assert_eq!(state.log_url, None, "it stayed on its log");
            assert_eq!(state.fold.rides, 2, "the new ride after it was counted");
            Ok(4)
        });
        let producer = ride_record(1, 0, 0).producer;
        let stale = domain::NewRecord::cutover("kafka://k/t", 0).sequenced(producer, 5);
        let mut log = MockLog::new();
        log.expect_read().returning(move |_, _, _| {
            Ok(Batch {
                deliveries: vec![
                    Delivery {
                        lane: 0,
                        record: stale.clone(),
                    },
                    Delivery {
                        lane: 0,
                        record: ride_record(8, 10, 0),
                    },
                ],
                next: Position::new("2"),
            })
        });
        let (c, _) = consumer(log, cs, Faults::none());
        assert_eq!(c.step().await.unwrap(), Outcome::Worked(2));
    }
}
