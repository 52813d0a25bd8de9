//! `rides es demo`'s scenario (app::es::demo): the ride dispatch example on the background
//! runtime with workers killed mid-run, mailer failures and duplicate deliveries; the
//! verdict must agree on SQLite and on Postgres (a new schema of `RIDES_TEST_POSTGRES_URL`).

use std::sync::Arc;
use std::time::Duration;

use adapters::postgres::{PgOptions, PostgresStore};
use adapters::sqlite::SqliteStore;
use app::es::demo::{DemoConfig, DemoVerdict, run};
use ports::ReactorStore;

fn config() -> DemoConfig {
    DemoConfig {
        rides: 24,
        pilots: 2,
        timeout_ms: 150,
        kill_every: Some(Duration::from_millis(100)),
        ..DemoConfig::default()
    }
}

fn check(v: &DemoVerdict) {
    assert!(v.agree, "{v:#?}");
    assert_eq!(v.completed + v.cancelled, 24, "{v:#?}");
    assert!(v.completed > 0, "{v:#?}");
    assert!(v.workers_killed > 0, "faults exercised: {v:#?}");
    assert!(v.mailer_failures > 0, "faults exercised: {v:#?}");
    assert_eq!(v.receipts, v.completed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_agrees_on_sqlite() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}", dir.path().join("es.db").display());
    let store = SqliteStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let es: Arc<dyn ReactorStore> = Arc::new(store.event_store());
    check(&run(es, config()).await.unwrap_or_else(|e| panic!("{e:#}")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_agrees_on_postgres() {
    let url = std::env::var("RIDES_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!("this test needs Postgres: set RIDES_TEST_POSTGRES_URL (scripts/test.sh sets it)")
    });
    let schema = format!(
        "rides_test_{}_{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default(),
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let options = PgOptions {
        schema: Some(schema),
        max_connections: 8,
        ..PgOptions::default()
    };
    let store = PostgresStore::connect(&url, options)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let es: Arc<dyn ReactorStore> = Arc::new(store.event_store());
    // The schema (rides_test_…) is dropped by the adapters' sweep once an hour old.
    check(&run(es, config()).await.unwrap_or_else(|e| panic!("{e:#}")));
}
