//! Contract suites against the Postgres store (store, outbox and consumer store), plus the
//! consumer-runtime migration on data written by older versions.
//!
//! Needs a server: `RIDES_TEST_POSTGRES_URL` names a database the tests may create schemas in
//! (`eval "$(scripts/services.sh)"` starts or finds one; `scripts/test.sh` exports it). Every
//! `fresh()` creates its own schema (`rides_test_<secs>_<random>`), so tests run in parallel
//! without seeing each other; `reopen` drops the handle and connects again to the same schema,
//! as a restarted process would. The Postgres *log* suite and the adapter-specific tests live
//! in `integration-tests/tests/postgres_contract.rs`.

use std::sync::Arc;

use adapters::postgres::{PgOptions, PostgresStore};
use ports::ConsumerStore;
use ports::contract::{StoreFactory, StoreUnderTest, async_trait};

/// The test server's URL, or a failure that says how to provide one.
fn url() -> String {
    std::env::var("RIDES_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "the Postgres contract needs a server: set RIDES_TEST_POSTGRES_URL to a database \
             the tests may create schemas in (e.g. run `eval \"$(scripts/services.sh)\"`, which \
             starts or reuses a local server, or use scripts/test.sh)"
        )
    })
}

fn options(schema: &str) -> PgOptions {
    PgOptions {
        schema: Some(schema.to_owned()),
        max_connections: 5,
        ..PgOptions::default()
    }
}

/// Seconds since the Unix epoch.
fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}

/// A new schema name `rides_test_<secs>_<random>`.
fn new_schema() -> String {
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("rides_test_{}_{}", now_secs(), &random[..12])
}

/// Connects to a new schema (the adapter creates and migrates it). The first call of a
/// process also drops the schemas earlier runs left behind (older than an hour), since a
/// factory has no teardown hook.
async fn fresh_store() -> PostgresStore {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let store = PostgresStore::connect(&url(), options(&new_schema()))
        .await
        .unwrap_or_else(|e| panic!("connect to a fresh schema: {e}"));
    if !SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        sweep_old_schemas(&store).await;
    }
    store
}

async fn sweep_old_schemas(store: &PostgresStore) {
    let names: Vec<String> = sqlx::query_scalar(
        "SELECT nspname::text FROM pg_namespace WHERE nspname LIKE 'rides_test_%'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap_or_default();
    for name in names {
        let created = name
            .strip_prefix("rides_test_")
            .and_then(|rest| rest.split('_').next())
            .and_then(|secs| secs.parse::<u64>().ok());
        if created.is_some_and(|c| c + 3600 < now_secs()) {
            let sql = format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE");
            // Best effort: another process may be sweeping the same schema.
            let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(store.pool())
                .await;
        }
    }
}

async fn reconnect(schema: &str) -> PostgresStore {
    PostgresStore::connect(&url(), options(schema))
        .await
        .unwrap_or_else(|e| panic!("reconnect to {schema}: {e}"))
}

fn under_test(store: PostgresStore) -> StoreUnderTest {
    StoreUnderTest {
        store: Arc::new(store.clone()),
        outbox: Arc::new(store.clone()),
        consumers: Arc::new(store),
    }
}

/// Stores, each in a new schema.
struct PgStores;

#[async_trait]
impl StoreFactory for PgStores {
    async fn fresh(&self) -> StoreUnderTest {
        under_test(fresh_store().await)
    }

    async fn reopen(&self, sut: StoreUnderTest) -> Option<StoreUnderTest> {
        let describe = sut.store.describe();
        drop(sut);
        let schema = describe
            .rsplit("schema=")
            .next()
            .unwrap_or_default()
            .to_owned();
        Some(under_test(reconnect(&schema).await))
    }
}

ports::store_contract_tests!(PgStores);

/// Adapter-specific: migration 0006 copies what older distance consumers kept in their state
/// (log, seal, marks, duplicates) into the cursor, leaving out what they did not have.
#[tokio::test]
async fn the_consumer_runtime_migration_moves_old_states_into_cursors() {
    use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
    use std::str::FromStr;

    let schema = new_schema();
    let connect = PgConnectOptions::from_str(&url())
        .unwrap_or_else(|e| panic!("bad RIDES_TEST_POSTGRES_URL: {e}"))
        .options([("search_path", schema.as_str())]);
    let pool = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(connect)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE SCHEMA \"{schema}\"")))
        .execute(&pool)
        .await
        .unwrap_or_else(|e| panic!("create schema: {e}"));
    // The schema as the previous version left it.
    sqlx::migrate!("./migrations/postgres")
        .run_to(5, &pool)
        .await
        .unwrap_or_else(|e| panic!("migrate to 5: {e}"));
    sqlx::query(
        "INSERT INTO consumer_checkpoints (name, position, state, version, updated_at_ms) VALUES \
         ('followed', '12', $1, 7, 99), ('plain', '3', $2, 2, 98), ('registered', '', 'null', 0, 0)",
    )
    .bind(serde_json::json!({
        "log_url": "kafka://k:9092/rides", "rides": 3, "distance_mm": 4500,
        "high_water": {"pg-1/0": 7, "pg-1/2": 5}, "floors": {"pg-0": 3},
        "duplicates": 2, "rejected": 1
    }))
    .bind(serde_json::json!({
        "sealed_to": "redis://r/0", "rides": 1, "distance_mm": 10,
        "high_water": {"pg-1/0": 1}, "duplicates": 0, "rejected": 0
    }))
    .execute(&pool)
    .await
    .unwrap_or_else(|e| panic!("insert old rows: {e}"));
    pool.close().await;

    let store = reconnect(&schema).await;
    let marks = |hw: &[(&str, u64)], floors: &[(&str, u64)]| domain::Marks {
        high_water: hw.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
        floors: floors.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
    };
    let followed = store.load("followed").await.expect("load").expect("kept");
    assert_eq!(
        followed.cursor,
        ports::Cursor {
            kind: None,
            log_url: Some("kafka://k:9092/rides".into()),
            sealed_to: None,
            marks: marks(&[("pg-1/0", 7), ("pg-1/2", 5)], &[("pg-0", 3)]),
            duplicates: 2,
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
        ports::Cursor {
            kind: None,
            log_url: None,
            sealed_to: Some("redis://r/0".into()),
            marks: marks(&[("pg-1/0", 1)], &[]),
            duplicates: 0,
        }
    );
    let registered = store.load("registered").await.expect("load").expect("kept");
    assert_eq!(registered, ports::Checkpoint::registered());
}

/// Adapter-specific: a cursor that cannot be read is an error naming the consumer, never a
/// default cursor (which would put the consumer back on its first log).
#[tokio::test]
async fn an_unreadable_cursor_is_an_error_naming_the_consumer() {
    let store = fresh_store().await;
    store.register("broken").await.expect("register");
    sqlx::query("UPDATE consumer_checkpoints SET cursor = '{\"marks\": 5}' WHERE name = 'broken'")
        .execute(store.pool())
        .await
        .expect("corrupt the cursor");
    for result in [
        store.load("broken").await.map(|_| ()),
        store.list().await.map(|_| ()),
    ] {
        match result {
            Err(ports::ConsumerStoreError::Other(m)) => {
                assert!(m.contains("broken"), "the error names the consumer: {m}");
            }
            other => panic!("an unreadable cursor must be Other, got {other:?}"),
        }
    }
}

/// Adapter-specific: a save checks its lease under a row lock, so it cannot interleave with a
/// takeover. A save that starts while a takeover is still uncommitted waits for it and is then
/// fenced (a plain read would have seen the old lease and committed).
#[tokio::test]
async fn a_save_waits_for_an_uncommitted_takeover_and_is_fenced() {
    use std::time::Duration;

    let store = fresh_store().await;
    let a = store
        .acquire_lease("consumer:race", "holder-a", 5_000, 1_000)
        .await
        .expect("acquire")
        .expect("a free scope");
    let mut takeover = store.pool().begin().await.expect("begin");
    sqlx::query(
        "UPDATE consumer_leases SET holder = 'holder-b', epoch = epoch + 1 \
         WHERE scope = 'consumer:race'",
    )
    .execute(&mut *takeover)
    .await
    .expect("take over");

    let saving = {
        let store = store.clone();
        tokio::spawn(async move {
            let (pos, cursor, state) = (
                ports::Position::new("7"),
                ports::Cursor::default(),
                serde_json::json!({"n": 1}),
            );
            let save = ports::Save {
                lease: Some(&a),
                ..ports::Save::new(0, &pos, &cursor, &state, 1_001)
            };
            store.save("race", &save).await
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !saving.is_finished(),
        "the save must wait for the takeover's transaction"
    );
    takeover.commit().await.expect("commit the takeover");
    let saved = tokio::time::timeout(Duration::from_secs(10), saving)
        .await
        .expect("the save finishes once the takeover committed")
        .expect("join");
    assert!(
        matches!(saved, Err(ports::ConsumerStoreError::Fenced(_))),
        "a save under the taken-over lease must be Fenced, got {saved:?}"
    );
    assert_eq!(
        store.load("race").await.expect("load"),
        None,
        "nothing written"
    );
}
