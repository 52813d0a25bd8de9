//! Contract suites against the Postgres store (store, outbox and consumer store).
//!
//! Needs a server: `RIDES_TEST_POSTGRES_URL` names a database the tests may create schemas in
//! (`eval "$(scripts/services.sh)"` starts or finds one; `scripts/test.sh` exports it). Every
//! `fresh()` creates its own schema (`rides_test_<secs>_<random>`), so tests run in parallel
//! without seeing each other; `reopen` drops the handle and connects again to the same schema,
//! as a restarted process would. The Postgres *log* suite and the adapter-specific tests live
//! in `integration-tests/tests/postgres_contract.rs`.

use std::sync::Arc;

use adapters::postgres::{PgOptions, PostgresStore};
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
