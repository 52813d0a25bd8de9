//! The whole fleet (API over real HTTP, streamer, two consumers, completer, reaper, trimmer,
//! simulator) with every fault on, against real services, for every store × log combination
//! the issue names. Each run must end with every consumer equal to the store's truth and every
//! kind of fault injected at least once.

mod harness;

use std::time::Duration;

use app::demo::{self, DemoOptions, Verdict};
use harness::FreshDb;

const RIDES: u64 = 300;

fn options(seed: u64, store: String, log: String) -> DemoOptions {
    let mut o = DemoOptions::new(RIDES, seed);
    o.concurrency = 8;
    o.progress = false;
    o.settle_timeout = Duration::from_secs(120);
    o.store = Some(store);
    o.log = Some(log);
    // Half of the streamer's batches are sent twice: slow logs (Kafka) move few, large
    // batches, and every combination must see double sends.
    o.faults.double_send_rate = 0.5;
    o
}

fn assert_converged(v: &Verdict) {
    assert!(v.agree, "consumers disagree with the truth:\n{}", v.table());
    assert_eq!(
        v.truth.rides,
        RIDES,
        "every simulated ride exists once:\n{}",
        v.table()
    );
    assert_eq!(v.truth.unfinished_keys, 0, "{}", v.table());
    assert_eq!(v.consumers.len(), 2, "{}", v.table());
    let replica = v.replica.as_ref().expect("the fleet keeps a replica");
    assert!(
        replica.agrees && replica.mismatches == 0 && replica.rows == RIDES,
        "the replica equals the store row by row:\n{}",
        v.table()
    );
    for c in &v.consumers {
        assert_eq!(
            (c.rides, c.distance_mm),
            (v.truth.rides, v.truth.distance_mm),
            "{}",
            v.table()
        );
    }
    let f = v.faults;
    assert!(
        f.double_sends > 0 && f.consumer_crashes > 0 && f.api_crashes > 0,
        "every kind of fault fired: {f:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_with_redis_log_converges() {
    let db = FreshDb::create().await;
    let stream = harness::unique("rides_fleet");
    // This machine's Redis keeps nothing on disk: the test accepts it.
    let redis = format!(
        "{}?volatile=ok&stream={stream}",
        harness::redis_url().await.trim_end_matches('/')
    );
    // The replica in Redis too: a hash per ride and a sorted set per user.
    let mut o = options(11, db.url.clone(), redis);
    let prefix = harness::unique("rides_replica");
    o.replica = Some(format!(
        "{}/{prefix}",
        harness::redis_url().await.trim_end_matches('/')
    ));
    let v = demo::run_demo(o).await.unwrap();
    assert_converged(&v);
    db.drop_now().await;
    // The replica's keys (and the stream) go with the test.
    let client = redis::Client::open(harness::redis_url().await).expect("redis client");
    let mut conn = client.get_connection().expect("redis connection");
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{prefix}:*"))
        .query(&mut conn)
        .unwrap_or_default();
    if !keys.is_empty() {
        let _: Result<(), _> = redis::cmd("DEL").arg(&keys).query(&mut conn);
    }
    let _: Result<(), _> = redis::cmd("DEL").arg(&stream).query(&mut conn);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_store_with_kafka_log_converges() {
    let db = FreshDb::create().await;
    // tansu needs one record per producer batch and has no record deletion (see the Kafka
    // adapter's docs); a real Kafka needs neither option.
    let kafka = format!(
        "kafka://{}/{}?partitions=3&batch_records=1&delete_records=false",
        harness::kafka_brokers().await,
        harness::unique("rides_fleet")
    );
    let v = demo::run_demo(options(15, db.url.clone(), kafka))
        .await
        .unwrap();
    assert_converged(&v);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn postgres_alone_converges_without_a_streamer() {
    let db = FreshDb::create().await;
    // The replica in another schema of the same database.
    let mut o = options(12, db.url.clone(), db.url.clone());
    let sep = if db.url.contains('?') { '&' } else { '?' };
    o.replica = Some(format!("{}{sep}schema=replica", db.url));
    let v = demo::run_demo(o).await.unwrap();
    assert_converged(&v);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_with_postgres_log_converges() {
    let db = FreshDb::create().await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("rides.db").display());
    let v = demo::run_demo(options(13, store, db.url.clone()))
        .await
        .unwrap();
    assert_converged(&v);
    db.drop_now().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sqlite_store_with_sled_log_converges() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("rides.db").display());
    let log = format!("sled://{}", dir.path().join("log").display());
    let v = demo::run_demo(options(14, store, log)).await.unwrap();
    assert_converged(&v);
}

#[test]
fn database_names_are_replaced_in_urls() {
    assert_eq!(
        harness::with_database("postgres://u@h:5432/test", "x"),
        "postgres://u@h:5432/x"
    );
    assert_eq!(
        harness::with_database("postgres://u@h/test?sslmode=disable", "x"),
        "postgres://u@h/x?sslmode=disable"
    );
    assert_eq!(
        harness::with_database("postgres://h", "x"),
        "postgres://h/x"
    );
}
