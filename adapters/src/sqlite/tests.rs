//! Unit tests of the SQLite adapter; the full contract suites run in `tests/contract_sqlite.rs`.

use std::time::Duration;

use domain::{IdempotencyKey, Phase, RecoveryPoint, Ride, RideEvent, RideParams, Thresholds};
use ports::{
    BeginRequest, Begun, ConsumerStore, ConsumerStoreError, Outbox, Position, RideStore, StoreError,
};

use super::{SqliteOptions, SqliteStore};

async fn fresh() -> (tempfile::TempDir, SqliteStore) {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("rides.db").display());
    let store = SqliteStore::connect(&url).await.expect("connect");
    (dir, store)
}

fn request(key: &str, now_ms: i64) -> BeginRequest {
    BeginRequest {
        user_id: 1,
        key: IdempotencyKey::parse(Some(key)).expect("key"),
        params: RideParams::new(37.7749295, -122.4194155, 37.8043637, -122.2711137)
            .expect("params"),
        method: "POST".into(),
        path: "/rides".into(),
        now_ms,
        thresholds: Thresholds::default(),
    }
}

#[tokio::test]
async fn a_phase_chain_stages_records_in_order_and_finishes_the_key() {
    let (_dir, store) = fresh().await;
    let req = request("aaaaaaaaaaaaaaaaaaaaaaaa", 1_000);
    let Begun::Proceed(key) = store.begin(&req).await.expect("begin") else {
        panic!("a new key must proceed");
    };
    assert_eq!(key.locked_at_ms, Some(1_000));
    assert_eq!(store.begin(&req).await.expect("begin"), Begun::InProgress);

    let create = Phase::create_ride(&key, "127.0.0.1", None);
    let key = store
        .run_phase(key.id, RecoveryPoint::Started, &create, 1_001)
        .await
        .expect("create ride");
    assert_eq!(key.recovery_point, RecoveryPoint::RideCreated);
    let ride = store
        .ride_for_key(key.id)
        .await
        .expect("ride")
        .expect("a ride");
    assert_eq!(ride.params, req.params, "coordinates round-trip exactly");

    // Running the same phase again is a conflict and writes nothing.
    let again = store
        .run_phase(key.id, RecoveryPoint::Started, &create, 1_002)
        .await;
    assert!(matches!(again, Err(StoreError::Conflict(_))), "{again:?}");

    let aggregate = Ride::from_events(&[RideEvent::Requested {
        user_id: 1,
        distance_mm: ride.distance_mm,
    }]);
    let charged = Phase::charged(&aggregate, ride.id, "ch_1", None);
    let key = store
        .run_phase(key.id, RecoveryPoint::RideCreated, &charged, 1_003)
        .await
        .expect("charge");
    let receipt = Phase::receipt(&key, ride.id, None);
    let key = store
        .run_phase(key.id, RecoveryPoint::ChargeCreated, &receipt, 1_004)
        .await
        .expect("receipt");
    assert_eq!(key.recovery_point, RecoveryPoint::Finished);
    assert_eq!(key.locked_at_ms, None);
    assert!(matches!(
        store.begin(&request("aaaaaaaaaaaaaaaaaaaaaaaa", 2_000)).await,
        Ok(Begun::Replay(r)) if r.status == 201
    ));

    let truth = store.truth().await.expect("truth");
    assert_eq!((truth.rides, truth.distance_mm), (1, ride.distance_mm));
    assert_eq!(truth.unfinished_keys, 0);

    let records = store.peek(10).await.expect("peek");
    let kinds: Vec<_> = records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(kinds, ["ride.created", "ride.charged", "receipt.requested"]);
    assert!(records.windows(2).all(|w| w[0].seq < w[1].seq));
    assert!(records.iter().all(|r| r.producer == store.producer()));
    assert!(store.producer().starts_with("sqlite-"));

    // Remove exactly the given sequences, then a new record gets a fresh sequence.
    let last = records[2].seq;
    assert_eq!(
        store.remove(&[records[0].seq, last]).await.expect("remove"),
        2
    );
    assert_eq!(store.staged().await.expect("staged"), 1);
    assert_eq!(store.remove(&[last]).await.expect("remove again"), 0);
    let Begun::Proceed(k) = store
        .begin(&request("bbbbbbbbbbbbbbbbbbbbbbbb", 3_000))
        .await
        .expect("begin")
    else {
        panic!("a new key must proceed");
    };
    let phase = Phase::create_ride(&k, "127.0.0.1", None);
    store
        .run_phase(k.id, RecoveryPoint::Started, &phase, 3_001)
        .await
        .expect("second ride");
    let records = store.peek(10).await.expect("peek");
    assert!(
        records.last().expect("records").seq > last,
        "sequences are never reused"
    );
}

#[tokio::test]
async fn wait_staged_wakes_up_on_a_committed_phase() {
    let (_dir, store) = fresh().await;
    let Begun::Proceed(key) = store
        .begin(&request("cccccccccccccccccccccccc", 1_000))
        .await
        .expect("begin")
    else {
        panic!("proceed");
    };
    let waiter = {
        let store = store.clone();
        tokio::spawn(async move {
            let started = std::time::Instant::now();
            store.wait_staged(Duration::from_secs(30)).await;
            started.elapsed()
        })
    };
    tokio::task::yield_now().await;
    let phase = Phase::create_ride(&key, "127.0.0.1", None);
    store
        .run_phase(key.id, RecoveryPoint::Started, &phase, 1_001)
        .await
        .expect("phase");
    let waited = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("woken before the timeout")
        .expect("join");
    assert!(waited < Duration::from_secs(10));
}

#[tokio::test]
async fn consumer_saves_are_versioned() {
    let (_dir, store) = fresh().await;
    store.register("distance").await.expect("register");
    let cp = store
        .load("distance")
        .await
        .expect("load")
        .expect("registered");
    assert_eq!((cp.version, cp.position.is_start()), (0, true));

    let pos = Position::new("7");
    let state = serde_json::json!({"total": 3});
    assert_eq!(store.save("distance", 0, &pos, &state, 5).await, Ok(1));
    assert_eq!(
        store.save("distance", 0, &pos, &state, 6).await,
        Err(ConsumerStoreError::Conflict("distance".into()))
    );
    store.register("distance").await.expect("register again");
    let cp = store.load("distance").await.expect("load").expect("saved");
    assert_eq!((cp.version, cp.position, cp.state), (1, pos.clone(), state));
    // A consumer saved without registering first.
    assert_eq!(
        store.save("other", 0, &pos, &serde_json::json!(1), 5).await,
        Ok(1)
    );
    let names: Vec<_> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["distance", "other"]);
}

#[tokio::test]
async fn concurrent_writers_queue_instead_of_failing() {
    let (dir, store) = fresh().await;
    // A second store on the same file stands for a second process.
    let url = format!("sqlite://{}", dir.path().join("rides.db").display());
    let other = SqliteStore::connect(&url).await.expect("second connect");
    let mut tasks = Vec::new();
    for i in 0..40 {
        let s = if i % 2 == 0 {
            store.clone()
        } else {
            other.clone()
        };
        tasks.push(tokio::spawn(async move {
            let req = request(&format!("concurrent-key-{i:010}"), 1_000);
            let Begun::Proceed(k) = s.begin(&req).await? else {
                return Err(StoreError::Other("no proceed".into()));
            };
            let phase = Phase::create_ride(&k, "127.0.0.1", None);
            s.run_phase(k.id, RecoveryPoint::Started, &phase, 1_001)
                .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("every writer succeeds");
    }
    assert_eq!(store.truth().await.expect("truth").rides, 40);
    let seqs: Vec<_> = store
        .peek(100)
        .await
        .expect("peek")
        .iter()
        .map(|r| r.seq)
        .collect();
    assert_eq!(seqs, (1..=40).collect::<Vec<_>>());
    assert_eq!(store.producer(), other.producer(), "one producer per file");
}

#[tokio::test]
async fn connections_use_wal_busy_timeout_and_foreign_keys() {
    let (_dir, store) = fresh().await;
    for pool in [&store.inner.reader, &store.inner.writer] {
        let mode: String = sqlx::query_scalar("PRAGMA journal_mode")
            .fetch_one(pool)
            .await
            .expect("journal_mode");
        let timeout: i64 = sqlx::query_scalar("PRAGMA busy_timeout")
            .fetch_one(pool)
            .await
            .expect("busy_timeout");
        let fk: i64 = sqlx::query_scalar("PRAGMA foreign_keys")
            .fetch_one(pool)
            .await
            .expect("foreign_keys");
        let sync: i64 = sqlx::query_scalar("PRAGMA synchronous")
            .fetch_one(pool)
            .await
            .expect("synchronous");
        assert_eq!((mode.as_str(), timeout, fk, sync), ("wal", 5_000, 1, 1));
    }
}

#[tokio::test]
async fn an_unopenable_path_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("missing-dir").join("rides.db");
    let err = SqliteStore::connect(&format!("sqlite://{}", path.display()))
        .await
        .expect_err("cannot open");
    assert!(
        matches!(&err, StoreError::Unavailable(m) if m.contains(&path.display().to_string())),
        "{err:?}"
    );
    let err = SqliteStore::connect("postgres://x")
        .await
        .expect_err("wrong scheme");
    assert!(matches!(err, StoreError::Other(_)), "{err:?}");
}

#[tokio::test]
async fn in_memory_and_deferred_migrations_work() {
    let mem = SqliteStore::connect("sqlite::memory:")
        .await
        .expect("memory");
    assert!(
        mem.user_by_email("user@example.com")
            .await
            .expect("user")
            .is_some()
    );
    mem.ping().await.expect("ping");

    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("late.db").display());
    let store = SqliteStore::connect_with(&url, SqliteOptions { migrate: false })
        .await
        .expect("connect without migrating");
    store.migrate().await.expect("migrate");
    store.migrate().await.expect("migrating twice is a no-op");
    let u = store
        .user_by_email("user-bad-source@example.com")
        .await
        .expect("user")
        .expect("seeded");
    assert_eq!(u.id, 2);
    assert!(store.producer().starts_with("sqlite-"));
}
