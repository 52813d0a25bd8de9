//! The distance consumer: folds `ride.created` records into a total, transactionally.
//!
//! It is a [`Fold`] on the consumer runtime ([`crate::runtime`]), which reads the log in
//! batches, removes duplicates by the producer's sequence, saves the fold with the checkpoint
//! in one transaction, follows log cutovers and retries. The fold is
//! [`DistanceState::apply`]; a `ride.created` record whose payload cannot be read is counted
//! as rejected and skipped with a warning (it is not retried: it would fail again).

use std::sync::Arc;

use domain::{Applied, DistanceState};
use ports::{Checkpoint, Clock, ConsumerStore, Delivery, Log};

use crate::faults::Faults;
use crate::metrics::Metrics;
use crate::runtime::{Consumer, Fold, Transactional};

/// The kind name of distance consumers, kept in their cursor.
pub const KIND: &str = "distance";

/// The distance fold.
#[derive(Debug, Clone, Copy, Default)]
pub struct Distance;

impl Fold for Distance {
    type State = DistanceState;
    const KIND: &'static str = KIND;

    fn apply(&self, state: &mut DistanceState, d: &Delivery) -> Result<(), String> {
        if let Applied::Rejected(why) = state.apply(&d.record) {
            tracing::warn!(%why, "record rejected");
        }
        Ok(())
    }
}

/// A distance consumer on the runtime.
pub type DistanceConsumer = Consumer<Transactional<Distance>>;

/// A distance consumer named `name` (batch 1000, blocking reads of up to 1 s).
pub fn distance_consumer(
    name: impl Into<String>,
    log: Arc<dyn Log>,
    consumers: Arc<dyn ConsumerStore>,
    clock: Arc<dyn Clock>,
    faults: Arc<Faults>,
    metrics: Arc<Metrics>,
) -> DistanceConsumer {
    Consumer::new(name, Transactional(Distance), log, consumers, clock)
        .with_faults(faults)
        .with_metrics(metrics)
        .measuring(domain::record::kinds::RIDE_CREATED)
}

/// A distance consumer's result from its checkpoint: `None` when the checkpoint belongs to
/// another kind of consumer.
///
/// # Errors
/// When a distance consumer's state cannot be read.
pub fn result(cp: &Checkpoint) -> anyhow::Result<Option<DistanceState>> {
    if cp.cursor.kind.as_deref().is_some_and(|k| k != KIND) {
        return Ok(None);
    }
    if cp.version == 0 || cp.state.is_null() {
        return Ok(Some(DistanceState::default()));
    }
    match serde_json::from_value(cp.state.clone()) {
        Ok(s) => Ok(Some(s)),
        // An unnamed kind (saved before kinds were recorded) that is not a distance state.
        Err(_) if cp.cursor.kind.is_none() => Ok(None),
        Err(e) => Err(anyhow::anyhow!(
            "a distance consumer's state cannot be read: {e}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultConfig;
    use crate::runtime::SimulatedCrash;
    use crate::services::Outcome;
    use crate::services::mocks::{MockLog, ride_record};
    use adapters::memory::{MemoryConsumerStore, MemoryLog};
    use ports::{Batch, ManualClock, Position};
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn consumer(
        log: Arc<dyn Log>,
        cs: Arc<MemoryConsumerStore>,
        faults: Faults,
    ) -> (DistanceConsumer, Arc<Metrics>) {
        let metrics = Arc::new(Metrics::new());
        let c = distance_consumer(
            "a",
            log,
            cs,
            Arc::new(ManualClock::new(1_250)),
            Arc::new(faults),
            metrics.clone(),
        );
        (c, metrics)
    }

    async fn fold(cs: &MemoryConsumerStore) -> (DistanceState, Checkpoint) {
        let cp = cs.load("a").await.unwrap().unwrap();
        (result(&cp).unwrap().unwrap(), cp)
    }

    #[tokio::test]
    async fn folds_skips_the_double_send_and_commits_state_with_position() {
        let log = Arc::new(MemoryLog::new());
        log.append(&[ride_record(1, 2_000, 1_000), ride_record(1, 2_000, 1_000)])
            .await
            .unwrap();
        log.append(&[ride_record(2, 3_000, 1_000)]).await.unwrap();
        let cs = Arc::new(MemoryConsumerStore::new());
        let (c, metrics) = consumer(log, cs.clone(), Faults::none());
        assert_eq!(c.step().await.unwrap(), Outcome::Worked(3));
        let (s, cp) = fold(&cs).await;
        assert_eq!((s.rides, s.distance_mm), (2, 5_000));
        assert_eq!(cp.cursor.duplicates, 1);
        assert_eq!(cp.cursor.kind.as_deref(), Some(KIND));
        assert_eq!(cp.version, 1);
        assert_eq!(metrics.latency().p50, 250);
        assert_eq!(
            c.step().await.unwrap(),
            Outcome::Idle,
            "nothing more to read"
        );
    }

    #[tokio::test]
    async fn a_simulated_crash_commits_nothing() {
        let log = Arc::new(MemoryLog::new());
        log.append(&[ride_record(1, 2_000, 0)]).await.unwrap();
        let cs = Arc::new(MemoryConsumerStore::new());
        let faults = Faults::new(FaultConfig {
            consumer_crash_rate: 1.0,
            ..FaultConfig::none()
        });
        let (c, _) = consumer(log, cs.clone(), faults);
        let err = c.step().await.unwrap_err();
        assert!(err.downcast_ref::<SimulatedCrash>().is_some(), "{err}");
        let cp = cs.load("a").await.unwrap().unwrap();
        assert_eq!((cp.version, cp.position), (0, Position::start()));
    }

    #[tokio::test]
    async fn a_bad_payload_is_rejected_and_the_consumer_goes_on() {
        let log = Arc::new(MemoryLog::new());
        let mut bad = ride_record(1, 0, 0);
        bad.payload = serde_json::json!({"distance_mm": "far"});
        log.append(&[bad, ride_record(2, 10, 0)]).await.unwrap();
        let cs = Arc::new(MemoryConsumerStore::new());
        let (c, _) = consumer(log, cs.clone(), Faults::none());
        assert_eq!(c.step().await.unwrap(), Outcome::Worked(2));
        let (s, _) = fold(&cs).await;
        assert_eq!((s.rides, s.rejected), (1, 1));
    }

    #[tokio::test]
    async fn a_seal_is_read_to_the_end_of_every_lane_before_switching_logs() {
        let cs = Arc::new(MemoryConsumerStore::new());
        let first = ride_record(1, 2_000, 0);
        let seal =
            domain::NewRecord::cutover("kafka://k:9092/t", 0).sequenced(first.producer.clone(), 2);
        let producer = first.producer.clone();
        let calls = Arc::new(AtomicUsize::new(0));
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
        // Two lanes: a producer's sequence jumps on each.
        log.expect_gap_free_lanes().return_const(false);
        log.expect_beyond_end().returning(|_| Ok(false));
        let (c, _) = consumer(Arc::new(log), cs.clone(), Faults::none());

        assert_eq!(c.step().await.unwrap(), Outcome::Worked(3));
        let (s, cp) = fold(&cs).await;
        assert_eq!(cp.position, Position::new("9"), "still on the old log");
        assert_eq!(cp.cursor.sealed_to.as_deref(), Some("kafka://k:9092/t"));
        assert_eq!(
            (s.rides, s.distance_mm),
            (2, 5_000),
            "lane 1 was not abandoned"
        );

        // Nothing more on the old log: move to the start of the new one, with floors.
        assert_eq!(c.step().await.unwrap(), Outcome::Worked(0));
        let (s, cp) = fold(&cs).await;
        assert_eq!((cp.position, cp.version), (Position::start(), 2));
        assert_eq!(cp.cursor.log_url.as_deref(), Some("kafka://k:9092/t"));
        assert_eq!(cp.cursor.sealed_to, None);
        assert_eq!(cp.cursor.marks.floors.get(&producer), Some(&3));
        assert_eq!(s.rides, 2);
    }

    #[tokio::test]
    async fn an_old_seal_seen_again_is_a_duplicate_not_a_cutover() {
        let cs = Arc::new(MemoryConsumerStore::new());
        let log = Arc::new(MemoryLog::new());
        log.append(&[ride_record(7, 10, 0)]).await.unwrap();
        let (c, _) = consumer(log.clone(), cs.clone(), Faults::none());
        c.step().await.unwrap();
        // The consumer moved on to a new log (this one, by its marks' floors): the old
        // seal at seq 5 shows up again, then a new ride.
        let cp = cs.load("a").await.unwrap().unwrap();
        let mut cursor = cp.cursor.clone();
        cursor.marks.start_new_log();
        cs.save(
            "a",
            &ports::Save::new(cp.version, &cp.position, &cursor, &cp.state, 0),
        )
        .await
        .unwrap();
        let producer = ride_record(1, 0, 0).producer;
        let stale = domain::NewRecord::cutover("kafka://k/t", 0).sequenced(producer, 5);
        log.append(&[stale, ride_record(8, 10, 0)]).await.unwrap();
        assert_eq!(c.step().await.unwrap(), Outcome::Worked(2));
        let (s, cp) = fold(&cs).await;
        assert_eq!(cp.cursor.sealed_to, None, "the stale seal was ignored");
        assert_eq!(cp.cursor.log_url, None, "it stayed on its log");
        assert_eq!(s.rides, 2, "the new ride after it was counted");
    }
}
