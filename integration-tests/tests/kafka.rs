//! The log contract against a Kafka-protocol broker (tansu locally, any Kafka in CI), plus
//! the Kafka-specific rules the contract cannot see: keys pick partitions, topics are made
//! explicitly, positions are partition maps.
//!
//! Brokers come from `RIDES_TEST_KAFKA_BROKERS` (see `harness`); each test uses its own
//! topic.

mod harness;

use std::sync::Arc;
use std::time::Duration;

use adapters::kafka::{KafkaLog, KafkaOptions};
use ports::contract::fixtures::rides;
use ports::{Log, LogError, Position};

/// The partition count of the contract's topics: more than one, so that per-lane order and
/// partition-map positions are really exercised.
const PARTITIONS: i32 = 3;

/// Options that work on tansu 0.6 (the local broker) and on Apache Kafka alike: one record
/// per produce batch (tansu's `ListOffsets(latest)` counts batches) and no `DeleteRecords`
/// (tansu's in-memory storage does not implement it), so `trim` removes nothing here.
fn options() -> KafkaOptions {
    KafkaOptions {
        partitions: PARTITIONS,
        batch_records: Some(1),
        delete_records: false,
        ..KafkaOptions::default()
    }
}

async fn open(topic: &str) -> KafkaLog {
    let brokers = harness::kafka_brokers().await;
    let options = options();
    KafkaLog::connect_with(&brokers, topic, options)
        .await
        .unwrap_or_else(|e| panic!("connect to kafka topic {topic} on {brokers}: {e}"))
}

/// Fresh = a new topic; reopen = a new client on the same topic.
struct KafkaLogs;

#[ports::contract::async_trait]
impl ports::contract::LogFactory for KafkaLogs {
    async fn fresh(&self) -> Arc<dyn Log> {
        Arc::new(open(&harness::unique("rides-log")).await)
    }

    async fn reopen(&self, log: Arc<dyn Log>) -> Option<Arc<dyn Log>> {
        let described = log.describe();
        drop(log);
        let topic = described
            .rsplit('/')
            .next()
            .unwrap_or_else(|| panic!("describe() must end in the topic: {described}"));
        Some(Arc::new(open(topic).await))
    }
}

ports::log_contract_tests!(KafkaLogs);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connect_by_url_creates_the_topic_and_describes_it() {
    let brokers = harness::kafka_brokers().await;
    let topic = harness::unique("rides-url");
    let url =
        format!("kafka://{brokers}/{topic}?partitions=2&batch_records=1&delete_records=false");
    let log = KafkaLog::connect(&url).await.expect("connect by URL");
    assert_eq!(log.partitions(), 2, "the URL's partition count");
    assert_eq!(log.describe(), format!("kafka://{brokers}/{topic}"));
    log.ping().await.expect("ping a reachable broker");
    // Connecting again reuses the topic (TopicAlreadyExists is fine) with its own count.
    let again = KafkaLog::connect(&format!("kafka://{brokers}/{topic}?partitions=5"))
        .await
        .expect("connect to an existing topic");
    assert_eq!(
        again.partitions(),
        2,
        "an existing topic keeps its partitions"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn records_of_one_key_share_a_lane_and_keep_their_order() {
    let log = open(&harness::unique("rides-key")).await;
    // 30 records, 3 keys: every key must land on one lane, in seq order.
    let mut records = rides("keyed", 1, 30);
    for r in &mut records {
        r.key = format!("ride:{}", r.seq % 3);
    }
    log.append(&records).await.expect("append");
    let mut got = Vec::new();
    let mut at = Position::start();
    while got.len() < records.len() {
        let batch = log
            .read(&at, 100, Duration::from_secs(5))
            .await
            .expect("read");
        assert!(!batch.deliveries.is_empty(), "records went missing");
        got.extend(batch.deliveries);
        at = batch.next;
    }
    for key in 0..3 {
        let mine: Vec<_> = got
            .iter()
            .filter(|d| d.record.key == format!("ride:{key}"))
            .collect();
        assert_eq!(mine.len(), 10, "key {key}: 10 records");
        assert!(
            mine.iter().all(|d| d.lane == mine[0].lane),
            "key {key} was spread over lanes"
        );
        assert!(
            mine.windows(2).all(|w| w[0].record.seq < w[1].record.seq),
            "key {key} came back out of order"
        );
    }
    // The position names partitions and offsets, nothing else.
    assert!(
        at.as_str()
            .split(',')
            .all(|part| part.split_once(':').is_some()),
        "a position is a partition:offset map, got {at}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_naming_unknown_partitions_are_invalid() {
    let log = open(&harness::unique("rides-pos")).await;
    let beyond = Position::new(format!("{PARTITIONS}:0"));
    let err = log
        .read(&beyond, 10, Duration::from_millis(10))
        .await
        .expect_err("a partition the topic does not have");
    assert!(matches!(err, LogError::InvalidPosition(_)), "got {err:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_broker_is_unavailable() {
    let options = KafkaOptions {
        timeout: Duration::from_millis(500),
        ..options()
    };
    // Port 1 on localhost: nothing listens there.
    let err = KafkaLog::connect_with("127.0.0.1:1", "rides-nowhere", options)
        .await
        .expect_err("no broker");
    assert!(
        matches!(err, LogError::Unavailable(_)),
        "an unreachable broker must be Unavailable (retryable), got {err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lag_len_and_empty_reads_agree_with_what_was_appended() {
    // Several multi-record appends: watermarks must count records, not batches.
    let log = open(&harness::unique("rides-marks")).await;
    for round in 0..4 {
        log.append(&rides("marks", 1 + round * 5, 5))
            .await
            .expect("append");
    }
    assert_eq!(log.len().await.expect("len"), 20, "len counts records");
    assert_eq!(
        log.lag(&Position::start()).await.expect("lag"),
        20,
        "lag from the start"
    );
    let mut at = Position::start();
    let mut read = 0;
    loop {
        // A short wait: an empty batch must still mean "nothing after `at`".
        let batch = log
            .read(&at, 3, Duration::from_millis(1))
            .await
            .expect("read");
        if batch.deliveries.is_empty() {
            break;
        }
        read += batch.deliveries.len();
        at = batch.next;
        assert_eq!(
            log.lag(&at).await.expect("lag"),
            20 - read as u64,
            "lag after {read}"
        );
    }
    assert_eq!(read, 20, "an empty read came before the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trim_without_delete_records_removes_nothing() {
    let log = open(&harness::unique("rides-trim")).await;
    log.append(&rides("trim", 1, 6)).await.expect("append");
    let end = log
        .read(&Position::start(), 100, Duration::from_secs(5))
        .await
        .expect("read")
        .next;
    assert_eq!(log.trim(&[end]).await.expect("trim"), 0);
    assert_eq!(log.len().await.expect("len"), 6);
}
