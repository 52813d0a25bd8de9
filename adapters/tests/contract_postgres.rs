//! Contract suites against the Postgres adapter: the store (store, outbox and consumer store)
//! and the Postgres-only log, plus the consumer-runtime migration on data written by older
//! versions.
//!
//! Needs a server: `RIDES_TEST_POSTGRES_URL` names a database the tests may create schemas in
//! (`eval "$(scripts/services.sh)"` starts or finds one; `scripts/test.sh` exports it). Every
//! `fresh()` creates its own schema (`rides_test_<secs>_<random>`), so tests run in parallel
//! without seeing each other; `reopen` drops the handle and connects again to the same schema,
//! as a restarted process would. Also the Postgres-only *log* suite, and the adapter's own
//! tests: connection errors, `held_back`, late commits, claimed batches.

use std::sync::Arc;

use adapters::postgres::{PgOptions, PostgresLog, PostgresStore};
use ports::contract::{LogFactory, StoreFactory, StoreUnderTest, async_trait};
use ports::{ConsumerStore, Log};

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
        ports::Cursor {
            kind: None,
            log_url: None,
            sealed_to: Some("redis://r/0".into()),
            marks: marks(&[("pg-1/0", 1)], &[]),
            duplicates: 0,
            gaps: Vec::new(),
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
        let log = PostgresLog::connect(&url(), options(&schema))
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
/// of ids per batch, migrations 0005 and 0007) and records numbered in place by the log's row sequencer form
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
