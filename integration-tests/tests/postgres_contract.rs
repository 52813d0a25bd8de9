//! Contract suites against the Postgres adapter.
//!
//! The store contract (store, outbox, consumer store) runs in
//! `adapters/tests/contract_postgres.rs`.
//!
//! Every `fresh()` creates its own schema (`rides_test_<uuid>`) in the database named by
//! `RIDES_TEST_POSTGRES_URL`, so tests run in parallel without seeing each other; `reopen`
//! drops the handle and connects again to the same schema, as a restarted process would.

mod harness;

use std::sync::Arc;

use adapters::postgres::{PgOptions, PostgresLog, PostgresStore};
use ports::Log;
use ports::contract::{LogFactory, async_trait};

/// The test service URL: from the environment, a container, or a clear failure (see `harness`).
async fn url() -> String {
    harness::postgres_url().await
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

/// Connects to a new schema `rides_test_<secs>_<random>` (the adapter creates and migrates
/// it). The first call of a process also drops the schemas earlier runs left behind (older
/// than an hour), since a factory has no teardown hook.
async fn fresh_store() -> PostgresStore {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let random = uuid::Uuid::new_v4().simple().to_string();
    let schema = format!("rides_test_{}_{}", now_secs(), &random[..12]);
    let store = PostgresStore::connect(&url().await, options(&schema))
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

/// Postgres-only logs, each over a store in a new schema.
struct PgLogs;

#[async_trait]
impl LogFactory for PgLogs {
    async fn fresh(&self) -> Arc<dyn Log> {
        Arc::new(fresh_store().await.log())
    }

    async fn reopen(&self, log: Arc<dyn Log>) -> Option<Arc<dyn Log>> {
        let describe = log.describe();
        drop(log);
        let schema = describe
            .rsplit("schema=")
            .next()
            .unwrap_or_default()
            .to_owned();
        let log = PostgresLog::connect(&url().await, options(&schema))
            .await
            .unwrap_or_else(|e| panic!("reconnect the log to {schema}: {e}"));
        Some(Arc::new(log))
    }
}

mod log {
    ports::log_contract_tests!(super::PgLogs);
}

/// Adapter-specific: a bad URL is a clear error that never shows the password.
#[tokio::test]
async fn connect_errors_are_clear_and_hide_the_password() {
    let e = PostgresStore::connect(
        "postgres://rides:sup3rs3cret@127.0.0.1:1/nowhere",
        PgOptions::default(),
    )
    .await
    .expect_err("nothing listens on port 1");
    let text = e.to_string();
    assert!(
        e.retryable(),
        "an unreachable server is Unavailable: {text}"
    );
    assert!(!text.contains("sup3rs3cret"), "password leaked: {text}");
}

/// A record for the raw-transaction tests below.
fn probe_record(n: i64) -> domain::NewRecord {
    domain::NewRecord {
        id: uuid::Uuid::new_v4(),
        stream: "rides".into(),
        key: format!("ride:{n}"),
        kind: "test".into(),
        payload: serde_json::json!({ "n": n }),
        correlation_id: None,
        causation_id: None,
        recorded_at_ms: 0,
    }
}

/// `held_back` in seconds (0 when nothing is held back), through the port as `/stats` reads it.
async fn held_back_s(log: &PostgresLog) -> f64 {
    let port: Arc<dyn Log> = Arc::new(log.clone());
    port.held_back()
        .await
        .expect("held_back")
        .map_or(0.0, |d| d.as_secs_f64())
}

/// Adapter-specific: an idle transaction that wrote to another table holds no record back,
/// however old it is.
#[tokio::test]
async fn held_back_ignores_an_unrelated_idle_write_transaction() {
    use std::time::Duration;
    let store = fresh_store().await;
    let log = store.log();
    let mut tx = store.pool().begin().await.expect("begin");
    sqlx::query("INSERT INTO meta (name, value) VALUES ('probe', 'x')")
        .execute(&mut *tx)
        .await
        .expect("insert");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        held_back_s(&log).await,
        0.0,
        "a transaction that staged nothing holds nothing back"
    );
    tx.rollback().await.expect("rollback");
}

/// Adapter-specific: a transaction holding a staged record shows its age, and nothing once it
/// has committed.
#[tokio::test]
async fn held_back_shows_the_age_of_a_transaction_holding_a_staged_record() {
    use std::time::{Duration, Instant};
    let store = fresh_store().await;
    let log = store.log();
    let mut tx = store.pool().begin().await.expect("begin");
    let began = Instant::now();
    store
        .stage_in(&mut tx, &[probe_record(1)])
        .await
        .expect("stage");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let held = held_back_s(&log).await;
    let age = began.elapsed().as_secs_f64();
    assert!(
        (1.9..=age + 0.5).contains(&held),
        "held back {held:.3} s by a transaction {age:.3} s old"
    );
    tx.commit().await.expect("commit");
    assert_eq!(held_back_s(&log).await, 0.0, "nothing once it committed");
}

/// Adapter-specific: holding the sequencer's lock stalls delivery, and `held_back` shows how
/// long it has been held.
#[tokio::test]
async fn held_back_shows_how_long_the_sequencer_lock_is_held() {
    use std::time::{Duration, Instant};
    const HOLD: Duration = Duration::from_secs(3);
    let store = fresh_store().await;
    let log = store.log();
    let mut holder = store.pool().begin().await.expect("begin");
    let taken = Instant::now();
    sqlx::query("SELECT pg_advisory_xact_lock(1380533317, hashtext(current_schema()))")
        .execute(&mut *holder)
        .await
        .expect("take the sequencer's lock");
    // A record committed meanwhile is not delivered: the stall is real.
    let mut tx = store.pool().begin().await.expect("begin");
    store
        .stage_in(&mut tx, &[probe_record(1)])
        .await
        .expect("stage");
    tx.commit().await.expect("commit");
    let read = log
        .read(&ports::Position::start(), 10, Duration::from_millis(300))
        .await
        .expect("read");
    assert!(
        read.deliveries.is_empty(),
        "nothing is sequenced while the lock is held"
    );
    tokio::time::sleep(HOLD.saturating_sub(taken.elapsed())).await;
    let held = held_back_s(&log).await;
    let hold = taken.elapsed().as_secs_f64();
    assert!(
        (HOLD.as_secs_f64() - 0.1..=hold + 0.5).contains(&held),
        "held back {held:.3} s while the lock was held for {hold:.3} s"
    );

    holder.commit().await.expect("release the lock");
    let read = log
        .read(&ports::Position::start(), 10, Duration::from_secs(5))
        .await
        .expect("read");
    assert_eq!(
        read.deliveries.len(),
        1,
        "delivered once the lock is released"
    );
    assert_eq!(held_back_s(&log).await, 0.0, "nothing held back any more");
}

/// Adapter-specific: a record staged by a transaction that is still open does not hold back
/// records committed after it, and is delivered after them, once it commits.
#[tokio::test]
async fn a_long_transaction_holds_back_only_its_own_records() {
    use std::time::Duration;
    let store = fresh_store().await;
    let log = store.log();
    let rec = probe_record;
    let mut long = store.pool().begin().await.expect("begin");
    store.stage_in(&mut long, &[rec(1)]).await.expect("stage");
    let mut short = store.pool().begin().await.expect("begin");
    store.stage_in(&mut short, &[rec(2)]).await.expect("stage");
    short.commit().await.expect("commit");

    let first = log
        .read(&ports::Position::start(), 10, Duration::from_secs(5))
        .await
        .expect("read");
    let ns: Vec<_> = first
        .deliveries
        .iter()
        .map(|d| d.record.payload["n"].clone())
        .collect();
    assert_eq!(
        ns,
        vec![serde_json::json!(2)],
        "the later commit is not held back"
    );

    long.commit().await.expect("commit");
    let second = log
        .read(&first.next, 10, Duration::from_secs(5))
        .await
        .expect("read");
    let ns: Vec<_> = second
        .deliveries
        .iter()
        .map(|d| d.record.payload["n"].clone())
        .collect();
    assert_eq!(
        ns,
        vec![serde_json::json!(1)],
        "the long transaction's record comes after"
    );
    assert!(second.deliveries[0].record.seq > first.deliveries[0].record.seq);
}

/// Adapter-specific: records numbered by the streamer's claim sequencer (one claimed-batch row
/// per batch, migration 0005) and records numbered in place by the log's row sequencer form
/// one gap-free sequence, which the Postgres-only log reads, counts and trims, and from which
/// `remove` takes exactly what it is given. (A cutover back to the Postgres-only log leaves
/// claimed records behind: the log must deliver them.)
#[tokio::test]
async fn claimed_and_row_sequenced_records_are_one_log() {
    use ports::{Outbox, Position};
    use std::time::Duration;
    let store = fresh_store().await;
    let log = store.log();
    let rec = |n: i64| domain::NewRecord {
        id: uuid::Uuid::new_v4(),
        stream: "rides".into(),
        key: format!("ride:{n}"),
        kind: "test".into(),
        payload: serde_json::json!({ "n": n }),
        correlation_id: None,
        causation_id: None,
        recorded_at_ms: 0,
    };
    let n_of = |b: &ports::Batch| -> Vec<i64> {
        b.deliveries
            .iter()
            .map(|d| d.record.payload["n"].as_i64().unwrap())
            .collect()
    };
    Outbox::stage(&store, &[rec(1), rec(2), rec(3)])
        .await
        .unwrap();
    // The streamer's peek claims all three as one batch row.
    let peeked = Outbox::peek(&store, 2).await.unwrap();
    assert_eq!(peeked.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
    let claimed: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_claimed")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(claimed, 1, "one row for the batch");
    // Staged afterwards and numbered in place by the log's reader.
    Outbox::stage(&store, &[rec(4)]).await.unwrap();
    let all = log
        .read(&Position::start(), 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(n_of(&all), vec![1, 2, 3, 4]);
    let seqs: Vec<u64> = all.deliveries.iter().map(|d| d.record.seq).collect();
    assert_eq!(seqs, vec![1, 2, 3, 4], "one gap-free sequence");
    assert_eq!(log.lag(&Position::start()).await.unwrap(), 4);
    assert_eq!(Outbox::staged(&store).await.unwrap(), 4);

    // `remove` is exact inside a claimed batch too.
    assert_eq!(Outbox::remove(&store, &[2]).await.unwrap(), 1);
    assert_eq!(Outbox::remove(&store, &[2]).await.unwrap(), 0);
    let left = Outbox::peek(&store, 10).await.unwrap();
    assert_eq!(
        left.iter().map(|r| r.seq).collect::<Vec<_>>(),
        vec![1, 3, 4]
    );
    assert_eq!(log.lag(&Position::new("1")).await.unwrap(), 2);

    // Trimming through a claimed batch keeps what is above the checkpoint.
    assert_eq!(log.trim(&[Position::new("1")]).await.unwrap(), 1);
    let rest = log
        .read(&Position::start(), 10, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(n_of(&rest), vec![3, 4]);
    assert_eq!(log.trim(&[Position::new("4")]).await.unwrap(), 2);
    assert_eq!(log.len().await.unwrap(), 0);
    let claimed: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_claimed")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(claimed, 0, "an emptied batch row is deleted");
}
