//! Contract suites against the Redis adapter.
//!
//! Needs a Redis (>= 6.2) at `RIDES_TEST_REDIS_URL`, e.g.
//! `RIDES_TEST_REDIS_URL=redis://127.0.0.1:6379 cargo test -p integration-tests --test redis_contract`.
//! Every log is a fresh stream key `rides-test-<uuid>`; the factory deletes its keys when the
//! test ends.

mod harness;

use std::sync::{Arc, Mutex};

use adapters::redis::RedisLog;
use ports::Log;
use ports::contract::{LogFactory, async_trait};

/// The variable that names the test Redis.
const URL_VAR: &str = "RIDES_TEST_REDIS_URL";

/// The test service URL: from the environment, a container, or a clear failure (see `harness`).
async fn redis_url() -> String {
    harness::redis_url().await
}

/// Opens logs on fresh stream keys and reconnects to them as a restarted process would.
#[derive(Default)]
struct RedisLogs {
    /// The stream keys handed out, deleted on drop.
    streams: Mutex<Vec<String>>,
}

#[async_trait]
impl LogFactory for RedisLogs {
    async fn fresh(&self) -> Arc<dyn Log> {
        let stream = format!("rides-test-{}", uuid::Uuid::new_v4());
        let log = RedisLog::connect(&redis_url().await, &stream)
            .await
            .unwrap_or_else(|e| panic!("connect to the test Redis ({URL_VAR}): {e}"));
        self.streams.lock().expect("streams lock").push(stream);
        Arc::new(log)
    }

    async fn reopen(&self, log: Arc<dyn Log>) -> Option<Arc<dyn Log>> {
        let described = log.describe();
        let stream = described
            .rsplit('/')
            .next()
            .unwrap_or_else(|| panic!("describe() must end with /<stream>: {described}"))
            .to_owned();
        assert_eq!(
            Arc::strong_count(&log),
            1,
            "reopen: the caller must have dropped every other clone"
        );
        drop(log);
        let log = RedisLog::connect(&redis_url().await, &stream)
            .await
            .unwrap_or_else(|e| panic!("reconnect to {stream}: {e}"));
        Some(Arc::new(log))
    }
}

impl Drop for RedisLogs {
    fn drop(&mut self) {
        let streams = std::mem::take(&mut *self.streams.lock().unwrap_or_else(|e| e.into_inner()));
        if streams.is_empty() {
            return;
        }
        // Best effort: a leftover key only costs a little memory on the test server (and a
        // container started by the harness disappears anyway).
        let Ok(url) = std::env::var("RIDES_TEST_REDIS_URL") else {
            return;
        };
        if let Ok(client) = redis::Client::open(url)
            && let Ok(mut conn) = client.get_connection()
        {
            let _: Result<(), _> = redis::cmd("DEL").arg(&streams).query(&mut conn);
        }
    }
}

ports::log_contract_tests!(RedisLogs::default());

/// The adapter reports what the server persists (the CI Redis runs without persistence, a
/// production one should not); it must never fail on it.
#[tokio::test]
async fn persistence_is_reported() {
    let stream = format!("rides-test-{}", uuid::Uuid::new_v4());
    let log = RedisLog::connect(&redis_url().await, &stream)
        .await
        .expect("connect");
    let shown = log.persistence().to_string();
    assert!(!shown.is_empty());
    assert!(
        log.describe().ends_with(&format!("/{stream}")),
        "describe() = {}",
        log.describe()
    );
    assert!(
        !log.describe().contains('@'),
        "describe() must not show credentials"
    );
}

/// Blocking reads run on dedicated connections: while several readers sit in `XREAD BLOCK`,
/// commands on the shared connection (`len`, `append`) still answer at once, and every reader
/// wakes with the appended record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn blocked_readers_do_not_stall_other_commands() {
    use std::time::{Duration, Instant};

    use ports::Position;

    let factory = RedisLogs::default();
    let log = factory.fresh().await;
    let readers: Vec<_> = (0..3)
        .map(|_| {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                log.read(&Position::start(), 10, Duration::from_secs(30))
                    .await
            })
        })
        .collect();
    // Give the readers time to reach XREAD BLOCK (if they did not, the test still holds).
    tokio::time::sleep(Duration::from_millis(200)).await;
    let started = Instant::now();
    assert_eq!(log.len().await.expect("len"), 0);
    let record = domain::LogRecord {
        id: uuid::Uuid::new_v4(),
        producer: "p".into(),
        seq: 1,
        stream: "rides".into(),
        key: "ride-1".into(),
        kind: "ride.created".into(),
        payload: serde_json::json!({ "distance": 1 }),
        correlation_id: None,
        causation_id: None,
        recorded_at_ms: 0,
    };
    log.append(std::slice::from_ref(&record))
        .await
        .expect("append");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "len + append took {:?} while readers were blocked",
        started.elapsed()
    );
    for reader in readers {
        let batch = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("a blocked reader must wake on append")
            .expect("reader task")
            .expect("read");
        assert_eq!(batch.deliveries.len(), 1);
        assert_eq!(batch.deliveries[0].record, record);
    }
}

/// `lag` never walks the whole stream (see the adapter's docs, `LAG_COUNT_BOUND` = 1000):
/// it is exact within 1000 entries of the head or of the oldest entry held, including after a
/// trim and for a position trimmed past, and in between it stays within what is provable,
/// `[1000, len - 1000]`.
#[tokio::test]
async fn lag_is_exact_near_both_ends_and_bounded_between() {
    use ports::Position;

    const BOUND: u64 = 1000;
    let factory = RedisLogs::default();
    let log = factory.fresh().await;
    let producer = format!("lag-{}", uuid::Uuid::new_v4());
    let records = ports::contract::fixtures::rides(&producer, 1, 3000);
    for chunk in records.chunks(1000) {
        log.append(chunk).await.expect("append");
    }
    let stream = log
        .describe()
        .rsplit('/')
        .next()
        .expect("stream")
        .to_owned();
    let client = redis::Client::open(redis_url().await).expect("client");
    let mut conn = client
        .get_multiplexed_async_connection()
        .await
        .expect("connect");
    let entries: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .expect("XRANGE");
    let ids: Vec<String> = entries.ids.into_iter().map(|e| e.id).collect();
    assert_eq!(ids.len(), 3000);
    // The position after the entry at `i` (0-based) has `3000 - i - 1` entries after it.
    let after = |i: usize| Position::new(ids[i].clone());
    let lag = |p: Position| {
        let log = Arc::clone(&log);
        async move { log.lag(&p).await.expect("lag") }
    };

    assert_eq!(lag(Position::start()).await, 3000, "from the start");
    assert_eq!(lag(after(0)).await, 2999, "after the first entry");
    assert_eq!(lag(after(998)).await, 2001, "999 entries up to it: exact");
    assert_eq!(lag(after(2000)).await, 999, "999 entries after it: exact");
    assert_eq!(lag(after(2999)).await, 0, "at the head");
    let middle = lag(after(1499)).await;
    assert!(
        (BOUND..=3000 - BOUND).contains(&middle),
        "more than {BOUND} on both sides: the estimate {middle} must lie in [{BOUND}, {}]",
        3000 - BOUND
    );

    assert_eq!(log.trim(&[after(499)]).await.expect("trim"), 500);
    assert_eq!(
        lag(Position::start()).await,
        2500,
        "from the start after a trim"
    );
    assert_eq!(lag(after(100)).await, 2500, "from a position trimmed past");
    assert_eq!(
        lag(after(1498)).await,
        1501,
        "999 entries held up to it: exact"
    );
}
