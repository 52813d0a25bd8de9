//! The runtime against the in-memory log and consumer store (real adapters, no mocks).

use std::sync::Mutex;

use adapters::memory::{MemoryConsumerStore, MemoryLog};
use domain::{LogRecord, NewRecord};
use ports::{ConsumerStoreError, ManualClock};

use super::*;
use crate::faults::FaultConfig;

fn record(key: &str, seq: u64) -> LogRecord {
    NewRecord {
        id: uuid::Uuid::new_v4(),
        stream: "rides".into(),
        key: key.into(),
        kind: "ride.created".into(),
        payload: serde_json::json!({ "n": seq }),
        correlation_id: None,
        causation_id: None,
        recorded_at_ms: 0,
    }
    .sequenced("p", seq)
}

/// Remembers every record it is handed and fails on the seqs in `failing` while they are
/// in the set.
#[derive(Default, Clone)]
struct Recorder {
    seen: Arc<Mutex<Vec<u64>>>,
    failing: Arc<Mutex<HashSet<u64>>>,
}

impl Recorder {
    fn failing(seqs: &[u64]) -> Self {
        let r = Self::default();
        r.failing.lock().unwrap().extend(seqs);
        r
    }
    fn seen(&self) -> Vec<u64> {
        self.seen.lock().unwrap().clone()
    }
    fn heal(&self) {
        self.failing.lock().unwrap().clear();
    }
}

#[async_trait]
impl Effects for Recorder {
    const KIND: &'static str = "recorder";
    async fn apply(&self, records: &[Delivery]) -> Result<(), Failure> {
        for (i, d) in records.iter().enumerate() {
            if self.failing.lock().unwrap().contains(&d.record.seq) {
                return Err(Failure::At(i, format!("seq {} refused", d.record.seq)));
            }
            self.seen.lock().unwrap().push(d.record.seq);
        }
        Ok(())
    }
}

/// Counts seqs into a state.
struct Sum;

impl Fold for Sum {
    type State = Vec<u64>;
    const KIND: &'static str = "sum";
    fn apply(&self, state: &mut Vec<u64>, d: &Delivery) -> Result<(), String> {
        if d.record.key == "poison" {
            return Err("poison".into());
        }
        state.push(d.record.seq);
        Ok(())
    }
}

async fn log_of(records: &[LogRecord]) -> Arc<MemoryLog> {
    let log = Arc::new(MemoryLog::new());
    log.append(records).await.unwrap();
    log
}

fn consumer<H: Handler>(
    h: H,
    log: Arc<MemoryLog>,
    cs: Arc<MemoryConsumerStore>,
    policy: Policy,
) -> Consumer<H> {
    Consumer::new("c", h, log, cs, Arc::new(ManualClock::new(0)))
        .with_wait(Duration::ZERO)
        .with_policy(policy)
}

#[tokio::test]
async fn a_failing_record_is_retried_and_what_came_before_it_is_kept() {
    let log = log_of(&[record("a", 1), record("b", 2), record("c", 3)]).await;
    let cs = Arc::new(MemoryConsumerStore::new());
    let h = Recorder::failing(&[2]);
    let c = consumer(Idempotent(h.clone()), log, cs.clone(), Policy::default());
    let err = c.step().await.unwrap_err();
    assert!(err.downcast_ref::<RecordFailed>().is_some(), "{err:#}");
    let err = c.step().await.unwrap_err();
    assert!(err.to_string().contains("attempt 2 of 5"), "{err}");
    assert_eq!(
        h.seen(),
        vec![1],
        "seq 1 is applied once, not again at each retry"
    );
    h.heal();
    assert_eq!(c.step().await.unwrap(), Outcome::Worked(3));
    assert_eq!(h.seen(), vec![1, 2, 3]);
    assert_eq!(c.step().await.unwrap(), Outcome::Idle);
}

#[tokio::test]
async fn stop_keeps_what_came_before_and_ends_the_consumer() {
    let log = log_of(&[record("a", 1), record("poison", 2), record("c", 3)]).await;
    let cs = Arc::new(MemoryConsumerStore::new());
    let policy = Policy {
        max_attempts: 2,
        on_failure: OnFailure::Stop,
    };
    let c = consumer(Transactional(Sum), log, cs.clone(), policy);
    assert!(
        c.step()
            .await
            .unwrap_err()
            .downcast_ref::<RecordFailed>()
            .is_some()
    );
    let err = c.step().await.unwrap_err();
    assert!(err.downcast_ref::<Stopped>().is_some(), "{err:#}");
    assert!(c.stops_on(&err), "the service loop ends on it");
    let cp = cs.load("c").await.unwrap().unwrap();
    assert_eq!(
        cp.state,
        serde_json::json!([1]),
        "seq 1 saved, seq 3 not handled"
    );
    assert!(cs.parked("c").await.unwrap().is_empty());
}

#[tokio::test]
async fn park_sets_aside_the_record_and_its_entity_and_goes_on() {
    let log = log_of(&[
        record("a", 1),
        record("poison", 2),
        record("b", 3),
        record("poison", 4),
        record("c", 5),
    ])
    .await;
    let cs = Arc::new(MemoryConsumerStore::new());
    let policy = Policy {
        max_attempts: 1,
        on_failure: OnFailure::Park,
    };
    let c = consumer(Transactional(Sum), log.clone(), cs.clone(), policy);
    assert_eq!(c.step().await.unwrap(), Outcome::Worked(5));
    let cp = cs.load("c").await.unwrap().unwrap();
    assert_eq!(cp.state, serde_json::json!([1, 3, 5]));
    let parked = cs.parked("c").await.unwrap();
    let seqs: Vec<u64> = parked.iter().map(|p| p.record.seq).collect();
    assert_eq!(
        seqs,
        vec![2, 4],
        "the entity's later record waits behind it"
    );
    assert_eq!(parked[0].error, "poison");
    assert_eq!(parked[1].error, HELD_BEHIND);

    // A later record of the parked entity is parked too, even in another batch.
    log.append(&[record("poison", 6), record("d", 7)])
        .await
        .unwrap();
    assert_eq!(c.step().await.unwrap(), Outcome::Worked(2));
    assert_eq!(cs.parked("c").await.unwrap().len(), 3);
    let cp = cs.load("c").await.unwrap().unwrap();
    assert_eq!(cp.state, serde_json::json!([1, 3, 5, 7]));

    // Retried while still failing: nothing is unparked.
    assert_eq!(c.retry_parked().await.unwrap(), (0, 3));
    assert_eq!(cs.parked("c").await.unwrap().len(), 3);
}

#[tokio::test]
async fn retry_parked_delivers_oldest_first_and_unparks_in_the_save() {
    let log = log_of(&[
        record("a", 1),
        record("x", 2),
        record("x", 3),
        record("b", 4),
    ])
    .await;
    let cs = Arc::new(MemoryConsumerStore::new());
    let h = Recorder::failing(&[2]);
    let policy = Policy {
        max_attempts: 1,
        on_failure: OnFailure::Park,
    };
    let c = consumer(Idempotent(h.clone()), log, cs.clone(), policy);
    assert_eq!(c.step().await.unwrap(), Outcome::Worked(4));
    assert_eq!(h.seen(), vec![1, 4]);
    h.heal();
    assert_eq!(c.retry_parked().await.unwrap(), (2, 0));
    assert_eq!(
        h.seen(),
        vec![1, 4, 2, 3],
        "the entity's records in their order"
    );
    assert!(cs.parked("c").await.unwrap().is_empty());
}

#[tokio::test]
async fn an_idempotent_consumer_sees_the_in_flight_batch_again_after_a_crash() {
    let log = log_of(&[record("a", 1), record("b", 2)]).await;
    let cs = Arc::new(MemoryConsumerStore::new());
    let h = Recorder::default();
    let crashing = consumer(
        Idempotent(h.clone()),
        log.clone(),
        cs.clone(),
        Policy::default(),
    )
    .with_faults(Arc::new(Faults::new(FaultConfig {
        consumer_crash_rate: 1.0,
        ..FaultConfig::none()
    })));
    assert!(crashing.step().await.is_err());
    let c = consumer(
        Idempotent(h.clone()),
        log.clone(),
        cs.clone(),
        Policy::default(),
    );
    assert_eq!(c.step().await.unwrap(), Outcome::Worked(2));
    assert_eq!(
        h.seen(),
        vec![1, 2, 1, 2],
        "effects applied, then applied again"
    );
    // The log's own duplicates never reach it.
    log.append(&[record("b", 2), record("c", 3)]).await.unwrap();
    assert_eq!(c.step().await.unwrap(), Outcome::Worked(2));
    assert_eq!(h.seen(), vec![1, 2, 1, 2, 3]);
}

#[tokio::test]
async fn one_instance_works_the_standby_takes_over_and_a_paused_holder_is_fenced() {
    let log = log_of(&[record("a", 1)]).await;
    let cs = Arc::new(MemoryConsumerStore::new());
    let clock = Arc::new(ManualClock::new(1_000));
    let keeper = |holder: &str| {
        LeaseKeeper::new(
            cs.clone(),
            clock.clone(),
            "consumer:c",
            holder,
            Duration::from_secs(5),
        )
    };
    let (ha, hb) = (Recorder::default(), Recorder::default());
    let a = Consumer::new(
        "c",
        Idempotent(ha.clone()),
        log.clone(),
        cs.clone(),
        clock.clone(),
    )
    .with_wait(Duration::ZERO)
    .with_lease(keeper("a"));
    let b = Consumer::new(
        "c",
        Idempotent(hb.clone()),
        log.clone(),
        cs.clone(),
        clock.clone(),
    )
    .with_wait(Duration::ZERO)
    .with_lease(keeper("b"));
    assert_eq!(a.step().await.unwrap(), Outcome::Worked(1));
    assert_eq!(b.step().await.unwrap(), Outcome::Idle, "b is a standby");
    assert_eq!(hb.seen(), Vec::<u64>::new());

    // `a` is paused past its lease; `b` takes over and works.
    clock.advance(6_000);
    log.append(&[record("b", 2)]).await.unwrap();
    assert_eq!(b.step().await.unwrap(), Outcome::Worked(1));
    assert_eq!(hb.seen(), vec![2]);

    // `a` wakes up: its lease was taken, so it stands by (it asks the store again).
    log.append(&[record("c", 3)]).await.unwrap();
    assert_eq!(a.step().await.unwrap(), Outcome::Idle);
    assert_eq!(ha.seen(), vec![1]);

    // Released on shutdown: `a` takes over at once, without waiting for the TTL.
    Step::stop(&b).await;
    assert_eq!(a.step().await.unwrap(), Outcome::Worked(1));
    assert_eq!(ha.seen(), vec![1, 3]);
}

#[tokio::test]
async fn a_save_with_a_lease_that_was_taken_over_is_fenced() {
    let log = log_of(&[record("a", 1)]).await;
    let cs = Arc::new(MemoryConsumerStore::new());
    let clock = Arc::new(ManualClock::new(1_000));
    let keeper = LeaseKeeper::new(
        cs.clone(),
        clock.clone(),
        "consumer:c",
        "a",
        Duration::from_secs(5),
    );
    let h = Recorder::default();
    let a = Consumer::new(
        "c",
        Idempotent(h.clone()),
        log.clone(),
        cs.clone(),
        clock.clone(),
    )
    .with_wait(Duration::ZERO)
    .with_lease(keeper);
    // `a` holds the lease, then pauses past it (its cached lease is renewed only once a
    // second); `b` takes the lease in the meantime.
    assert_eq!(a.step().await.unwrap(), Outcome::Worked(1));
    clock.advance(5_500);
    let b = cs
        .acquire_lease("consumer:c", "b", 5_000, clock.now_ms())
        .await
        .unwrap();
    assert!(b.is_some(), "the lease expired, b takes it");
    // `a`'s next save names its old lease: refused, and `a` becomes a standby.
    let lease = Some(ports::Lease {
        scope: "consumer:c".into(),
        holder: "a".into(),
        epoch: 1,
        expires_at_ms: 6_000,
    });
    let cp = cs.load("c").await.unwrap().unwrap();
    let save = ports::Save {
        lease: lease.as_ref(),
        ..ports::Save::new(cp.version, &cp.position, &cp.cursor, &cp.state, 0)
    };
    assert!(matches!(
        cs.save("c", &save).await,
        Err(ConsumerStoreError::Fenced(_))
    ));
    log.append(&[record("b", 2)]).await.unwrap();
    assert_eq!(a.step().await.unwrap(), Outcome::Idle);
    assert_eq!(h.seen(), vec![1]);
}

async fn gaps_of(cs: &MemoryConsumerStore) -> Vec<domain::Gap> {
    cs.load("c").await.unwrap().unwrap().cursor.gaps
}

#[tokio::test]
async fn a_sequence_jump_is_a_reported_gap_that_repaired_records_fill_exactly_once() {
    let log = log_of(&[record("a", 1), record("b", 2)]).await;
    let cs = Arc::new(MemoryConsumerStore::new());
    let c = consumer(
        Transactional(Sum),
        log.clone(),
        cs.clone(),
        Policy::default(),
    );
    c.step().await.unwrap();
    // Records 3..=5 reach the log, then are lost (trimmed past this consumer) before it
    // reads them; record 6 arrives.
    log.append(&[record("c", 3), record("d", 4), record("e", 5)])
        .await
        .unwrap();
    log.trim(&[Position::new("5")]).await.unwrap();
    log.append(&[record("f", 6)]).await.unwrap();
    c.step().await.unwrap();
    let gaps = gaps_of(&cs).await;
    assert_eq!(gaps.len(), 1, "{gaps:?}");
    assert_eq!(
        (
            gaps[0].producer.as_str(),
            gaps[0].lane,
            gaps[0].from_seq,
            gaps[0].to_seq
        ),
        ("p", 0, 3, Some(5))
    );
    // The consumer went on with what the log holds.
    let cp = cs.load("c").await.unwrap().unwrap();
    assert_eq!(cp.state, serde_json::json!([1, 2, 6]));
    // A repair re-stages 4 and 3 (twice) under their original sequences: handled once each.
    log.append(&[
        record("d", 4),
        record("c", 3),
        record("c", 3),
        record("b", 2),
    ])
    .await
    .unwrap();
    c.step().await.unwrap();
    let cp = cs.load("c").await.unwrap().unwrap();
    assert_eq!(cp.state, serde_json::json!([1, 2, 6, 4, 3]));
    assert_eq!(cp.cursor.gaps.len(), 1, "5 is still missing");
    assert_eq!(
        (cp.cursor.gaps[0].from_seq, cp.cursor.gaps[0].to_seq),
        (5, Some(5))
    );
    assert_eq!(cp.cursor.duplicates, 2);
    log.append(&[record("e", 5)]).await.unwrap();
    c.step().await.unwrap();
    let cp = cs.load("c").await.unwrap().unwrap();
    assert_eq!(cp.state, serde_json::json!([1, 2, 6, 4, 3, 5]));
    assert!(cp.cursor.gaps.is_empty());
}

#[tokio::test]
async fn a_log_that_lost_its_end_is_noticed_and_read_again_from_its_start() {
    let cs = Arc::new(MemoryConsumerStore::new());
    let before = log_of(&[record("a", 1), record("b", 2), record("c", 3)]).await;
    let c = consumer(Transactional(Sum), before, cs.clone(), Policy::default());
    c.step().await.unwrap();
    // The log restarts empty (a volatile Redis): the saved position (offset 3) lies beyond
    // it. Without detection the consumer would wait there, skipping new records 1..=3.
    let after = Arc::new(MemoryLog::new());
    let c = consumer(
        Transactional(Sum),
        after.clone(),
        cs.clone(),
        Policy::default(),
    );
    assert_eq!(c.step().await.unwrap(), Outcome::Worked(0));
    let cp = cs.load("c").await.unwrap().unwrap();
    assert!(cp.position.is_start(), "{}", cp.position);
    assert_eq!(cp.cursor.gaps.len(), 1);
    assert_eq!(
        (cp.cursor.gaps[0].from_seq, cp.cursor.gaps[0].to_seq),
        (4, None)
    );
    // Records 4 and 5 were published before the restart and lost; 6 and 7 come after it.
    after
        .append(&[record("f", 6), record("g", 7)])
        .await
        .unwrap();
    c.step().await.unwrap();
    let cp = cs.load("c").await.unwrap().unwrap();
    assert_eq!(cp.state, serde_json::json!([1, 2, 3, 6, 7]));
    assert_eq!(cp.cursor.gaps.len(), 1);
    assert_eq!(
        (cp.cursor.gaps[0].from_seq, cp.cursor.gaps[0].to_seq),
        (4, Some(5))
    );
    after
        .append(&[record("d", 4), record("e", 5)])
        .await
        .unwrap();
    c.step().await.unwrap();
    let cp = cs.load("c").await.unwrap().unwrap();
    assert_eq!(cp.state, serde_json::json!([1, 2, 3, 6, 7, 4, 5]));
    assert!(cp.cursor.gaps.is_empty());
    assert_eq!(c.step().await.unwrap(), Outcome::Idle);
}

#[tokio::test]
async fn a_restart_that_lost_nothing_closes_the_open_gap_at_the_next_record() {
    let cs = Arc::new(MemoryConsumerStore::new());
    let c = consumer(
        Transactional(Sum),
        log_of(&[record("a", 1)]).await,
        cs.clone(),
        Policy::default(),
    );
    c.step().await.unwrap();
    let after = Arc::new(MemoryLog::new());
    let c = consumer(
        Transactional(Sum),
        after.clone(),
        cs.clone(),
        Policy::default(),
    );
    c.step().await.unwrap();
    assert_eq!(gaps_of(&cs).await.len(), 1);
    after.append(&[record("b", 2)]).await.unwrap();
    c.step().await.unwrap();
    assert!(gaps_of(&cs).await.is_empty());
}

/// Two lanes, each carrying only part of a producer's records (Kafka-like).
struct TwoLanes(MemoryLog);

#[async_trait]
impl Log for TwoLanes {
    fn describe(&self) -> String {
        "two-lanes".into()
    }
    async fn ping(&self) -> Result<(), ports::LogError> {
        Ok(())
    }
    async fn append(&self, records: &[LogRecord]) -> Result<(), ports::LogError> {
        self.0.append(records).await
    }
    async fn read(
        &self,
        from: &Position,
        max: usize,
        wait: Duration,
    ) -> Result<ports::Batch, ports::LogError> {
        self.0.read(from, max, wait).await
    }
    async fn lag(&self, from: &Position) -> Result<u64, ports::LogError> {
        self.0.lag(from).await
    }
    async fn trim(&self, checkpoints: &[Position]) -> Result<u64, ports::LogError> {
        self.0.trim(checkpoints).await
    }
    async fn len(&self) -> Result<u64, ports::LogError> {
        self.0.len().await
    }
    fn lanes(&self) -> u32 {
        2
    }
}

#[tokio::test]
async fn a_jump_on_a_partitioned_log_is_not_a_gap() {
    let log = TwoLanes(MemoryLog::new());
    log.append(&[record("a", 1), record("c", 3)]).await.unwrap();
    let cs = Arc::new(MemoryConsumerStore::new());
    let c = Consumer::new(
        "c",
        Transactional(Sum),
        Arc::new(log),
        cs.clone(),
        Arc::new(ManualClock::new(0)),
    )
    .with_wait(Duration::ZERO);
    c.step().await.unwrap();
    assert!(gaps_of(&cs).await.is_empty());
}
