//! Unit tests of the SQLite adapter; the full contract suites run in `tests/contract_sqlite.rs`.

use domain::{IdempotencyKey, Marks, RideParams, Thresholds};
use ports::{
    BeginRequest, Begun, Checkpoint, ConsumerStore, ConsumerStoreError, Cursor, Outbox, Position,
    RideStore, Save, StoreError,
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
        // Coordinates of the replay bug, as a client sends them.
        params: RideParams::new(
            "37.760634058469556".parse().expect("f64"),
            "-122.41962585931567".parse().expect("f64"),
            "37.79401207930116".parse().expect("f64"),
            "-122.39508346185291".parse().expect("f64"),
        )
        .expect("params"),
        method: "POST".into(),
        path: "/rides".into(),
        now_ms,
        thresholds: Thresholds::default(),
        origin_ip: "127.0.0.1".into(),
        correlation: None,
    }
}

#[tokio::test]
async fn seventeen_digit_coordinates_and_the_producer_survive_the_file() {
    let (_dir, store) = fresh().await;
    let req = request("aaaaaaaaaaaaaaaaaaaaaaaa", 1_000);
    let Begun::Proceed(key) = store.begin(&req).await.expect("begin") else {
        panic!("a new key must proceed");
    };
    let stored = store.key(1, &key.key).await.expect("key").expect("stored");
    assert_eq!(
        stored.request_params, req.params,
        "parameters round-trip exactly"
    );
    let ride = store
        .ride_for_key(key.id)
        .await
        .expect("ride")
        .expect("a ride");
    assert_eq!(ride.params, req.params, "coordinates round-trip exactly");
    assert!(store.producer().starts_with("sqlite-"));
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

    let (pos, cursor) = (Position::new("7"), Cursor::default());
    let state = serde_json::json!({"total": 3});
    let save = Save::new(0, &pos, &cursor, &state, 5);
    assert_eq!(store.save("distance", &save).await, Ok(1));
    assert_eq!(
        store.save("distance", &save).await,
        Err(ConsumerStoreError::Conflict("distance".into()))
    );
    store.register("distance").await.expect("register again");
    let cp = store.load("distance").await.expect("load").expect("saved");
    assert_eq!(
        (cp.version, cp.position, cp.state),
        (1, pos.clone(), state.clone())
    );
    // A consumer saved without registering first.
    assert_eq!(store.save("other", &save).await, Ok(1));
    let names: Vec<_> = store
        .list()
        .await
        .expect("list")
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(names, ["distance", "other"]);
}

/// The consumer-runtime migration copies what older distance consumers kept in their state
/// (log, seal, marks, duplicates) into the cursor, leaving out what they did not have.
#[tokio::test]
async fn the_consumer_runtime_migration_moves_old_states_into_cursors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let url = format!("sqlite://{}", dir.path().join("rides.db").display());
    let old = SqliteStore::connect_with(&url, SqliteOptions { migrate: false })
        .await
        .expect("connect");
    // The schema as the previous version left it.
    super::MIGRATOR
        .run_to(20_261_201_000_000, &old.inner.writer)
        .await
        .expect("migrate to the previous version");
    sqlx::query(
        "INSERT INTO consumer_checkpoints (name, position, state, version, updated_at_ms) VALUES \
         ('followed', '12', ?, 7, 99), ('plain', '3', ?, 2, 98), ('registered', '', 'null', 0, 0)",
    )
    .bind(
        serde_json::json!({
            "log_url": "kafka://k:9092/rides", "rides": 3, "distance_mm": 4500,
            "high_water": {"pg-1/0": 7, "pg-1/2": 5}, "floors": {"pg-0": 3},
            "duplicates": 2, "rejected": 1
        })
        .to_string(),
    )
    .bind(
        serde_json::json!({
            "sealed_to": "redis://r/0", "log_url": null, "rides": 1, "distance_mm": 10,
            "high_water": {"pg-1/0": 1}, "duplicates": 0, "rejected": 0
        })
        .to_string(),
    )
    .execute(&old.inner.writer)
    .await
    .expect("insert old rows");
    drop(old);

    let store = SqliteStore::connect(&url)
        .await
        .expect("connect and migrate");
    let marks = |hw: &[(&str, u64)], floors: &[(&str, u64)]| Marks {
        high_water: hw.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        floors: floors.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
    };
    let followed = store.load("followed").await.expect("load").expect("kept");
    assert_eq!(
        followed.cursor,
        Cursor {
            kind: None,
            log_url: Some("kafka://k:9092/rides".into()),
            sealed_to: None,
            marks: marks(&[("pg-1/0", 7), ("pg-1/2", 5)], &[("pg-0", 3)]),
            duplicates: 2,
            gaps: Vec::new(),
        }
    );
    assert_eq!(
        (followed.version, followed.state["rides"].clone()),
        (7, serde_json::json!(3)),
        "the rest of the checkpoint is unchanged"
    );
    let plain = store.load("plain").await.expect("load").expect("kept");
    assert_eq!(
        plain.cursor,
        Cursor {
            kind: None,
            log_url: None,
            sealed_to: Some("redis://r/0".into()),
            marks: marks(&[("pg-1/0", 1)], &[]),
            duplicates: 0,
            gaps: Vec::new(),
        }
    );
    let registered = store.load("registered").await.expect("load").expect("kept");
    assert_eq!(registered, Checkpoint::registered());
}

/// A cursor that cannot be read is an error naming the consumer, never a default cursor
/// (which would put the consumer back on its first log).
#[tokio::test]
async fn an_unreadable_cursor_is_an_error_naming_the_consumer() {
    let (_dir, store) = fresh().await;
    store.register("broken").await.expect("register");
    sqlx::query("UPDATE consumer_checkpoints SET cursor = '{\"marks\": 5}' WHERE name = 'broken'")
        .execute(&store.inner.writer)
        .await
        .expect("corrupt the cursor");
    for result in [
        store.load("broken").await.map(|_| ()),
        store.list().await.map(|_| ()),
    ] {
        match result {
            Err(ConsumerStoreError::Other(m)) => {
                assert!(m.contains("broken"), "the error names the consumer: {m}");
            }
            other => panic!("an unreadable cursor must be Other, got {other:?}"),
        }
    }
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
            match s.begin(&req).await? {
                Begun::Proceed(k) => Ok(k),
                other => Err(StoreError::Other(format!("no proceed: {other:?}"))),
            }
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

/// Two processes started at once on a new file (`rides serve` beside `rides api`) both
/// migrate it: neither fails on the other's half-applied schema.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_first_connects_on_a_new_file_both_migrate() {
    for _ in 0..10 {
        let dir = tempfile::tempdir().expect("tempdir");
        let url = format!("sqlite://{}", dir.path().join("rides.db").display());
        let opens: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { SqliteStore::connect(&url).await.map(|_| ()) })
            })
            .collect();
        for open in opens {
            open.await
                .expect("the task ran")
                .unwrap_or_else(|e| panic!("a concurrent first connect failed: {e}"));
        }
    }
}
