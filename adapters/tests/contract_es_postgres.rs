//! The event-store contract against the Postgres adapter, plus its own tests: a rolled-back
//! commit stages nothing, messages survive a reconnect, two schemas are two event stores,
//! the outbox's log carries the messages, and a reader never skips a late commit.
//!
//! Needs a server: `RIDES_TEST_POSTGRES_URL` names a database the tests may create schemas in
//! (`eval "$(scripts/services.sh)"` starts or finds one; `scripts/test.sh` exports it). Every
//! store lives in its own new schema (`rides_test_<secs>_<random>`), so tests run in parallel
//! without seeing each other (`reopen` connects again to the same schema, as a restarted
//! process would); the first store of a process drops the schemas earlier runs
//! left behind (older than an hour), and the adapter's own tests drop theirs at the end.

use std::sync::Arc;
use std::time::Duration;

use adapters::postgres::{PgOptions, PostgresStore};
use domain::es::{Message, SyncOp};
use ports::contract::{EventStoreFactory, EventStoreUnderTest, async_trait};
use ports::{Append, Commit, EventStore, EventStoreError, ExpectedSeq, Log, Outbox};
use serde_json::json;

/// The test server's URL, or a failure that says how to provide one.
fn url() -> String {
    std::env::var("RIDES_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "the Postgres event-store contract needs a server: set RIDES_TEST_POSTGRES_URL to a \
             database the tests may create schemas in (e.g. run `eval \"$(scripts/services.sh)\"`)"
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

async fn connect(schema: &str) -> PostgresStore {
    PostgresStore::connect(&url(), options(schema))
        .await
        .unwrap_or_else(|e| panic!("connect to schema {schema}: {e}"))
}

/// A store in a new schema (the adapter creates and migrates it). The first call of a process
/// also drops the schemas earlier runs left behind, since a factory has no teardown hook.
async fn fresh_store() -> (PostgresStore, String) {
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let schema = new_schema();
    let store = connect(&schema).await;
    if !SWEPT.swap(true, std::sync::atomic::Ordering::SeqCst) {
        sweep_old_schemas(&store).await;
    }
    (store, schema)
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
            drop_schema(store, &name).await;
        }
    }
}

/// Drops `schema` (best effort: another process may be sweeping it).
async fn drop_schema(store: &PostgresStore, schema: &str) {
    let sql = format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE");
    let _ = sqlx::query(sqlx::AssertSqlSafe(sql))
        .execute(store.pool())
        .await;
}

/// Event stores, each in a new schema.
struct PgEventStores;

#[async_trait]
impl EventStoreFactory for PgEventStores {
    async fn fresh(&self) -> EventStoreUnderTest {
        let (store, _) = fresh_store().await;
        EventStoreUnderTest {
            events: Arc::new(store.event_store()),
            outbox: Arc::new(store),
        }
    }

    async fn reopen(&self, sut: EventStoreUnderTest) -> Option<EventStoreUnderTest> {
        // The event store describes itself as its store does, schema included.
        let describe = sut.events.describe();
        drop(sut);
        let schema = describe
            .rsplit("schema=")
            .next()
            .unwrap_or_default()
            .to_owned();
        let store = connect(&schema).await;
        Some(EventStoreUnderTest {
            events: Arc::new(store.event_store()),
            outbox: Arc::new(store),
        })
    }
}

ports::event_store_contract_tests!(PgEventStores);

fn cmd(stream_id: &str, seq: u64) -> Message {
    Message::new("tests.do_something", stream_id, json!({"n": seq}), 1_000)
        .unwrap_or_else(|e| panic!("fixture: {e}"))
        .with_seq(seq)
}

/// A commit that fails on its second append leaves no outbox record, no message, no
/// document, no stream, and gives its global seqs back.
#[tokio::test]
async fn a_rolled_back_commit_stages_nothing_in_the_outbox() {
    let (store, schema) = fresh_store().await;
    let es = store.event_store();
    es.append_to_stream("b", &[cmd("b", 1)])
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    let staged = store.staged().await.unwrap_or_else(|e| panic!("{e}"));
    let failed = es
        .commit(Commit {
            appends: vec![
                Append {
                    stream_id: "a".into(),
                    expected: ExpectedSeq::Exactly(0),
                    messages: vec![cmd("a", 1), cmd("a", 2)],
                },
                Append {
                    stream_id: "b".into(),
                    expected: ExpectedSeq::Exactly(0),
                    messages: vec![cmd("b", 1)],
                },
            ],
            sync: vec![SyncOp::put("docs", "a", json!({"x": 1}))],
        })
        .await;
    assert!(
        matches!(failed, Err(EventStoreError::Conflict { .. })),
        "{failed:?}"
    );
    assert_eq!(
        store.staged().await.unwrap_or_else(|e| panic!("{e}")),
        staged,
        "nothing staged by the rolled-back commit"
    );
    let stats = es.stats().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((stats.stream_count, stats.message_count), (1, 1));
    assert_eq!(
        es.document("docs", "a")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        None
    );
    let next = es
        .append_next_to_stream("a", &[cmd("a", 1)])
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    assert_eq!(
        next[0].global_seq, 2,
        "a rolled-back commit returns its global seqs"
    );
    drop_schema(&store, &schema).await;
}

/// Messages, documents and the global counter are in the schema: a new connection reads them
/// back and goes on numbering after them.
#[tokio::test]
async fn messages_survive_a_reconnect() {
    let (store, schema) = fresh_store().await;
    let es = store.event_store();
    let first = cmd("ride-1", 1);
    let stored = es
        .commit(Commit {
            appends: vec![Append {
                stream_id: "ride-1".into(),
                expected: ExpectedSeq::Exactly(0),
                messages: vec![
                    first.clone(),
                    first
                        .follow_raw("tests.done", json!({"ratio": 0.1 + 0.2}))
                        .with_seq(2),
                ],
            }],
            sync: vec![SyncOp::put("rides", "ride-1", json!({"state": "done"}))],
        })
        .await
        .unwrap_or_else(|e| panic!("commit: {e}"));
    drop(es);
    let again = connect(&schema).await;
    let es2 = again.event_store();
    assert_eq!(
        es2.read_all(0, 100)
            .await
            .unwrap_or_else(|e| panic!("read_all: {e}")),
        stored,
        "the messages, with their global seqs"
    );
    assert_eq!(
        es2.document("rides", "ride-1")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Some(json!({"state": "done"}))
    );
    let more = es2
        .append_next_to_stream("ride-1", &[cmd("ride-1", 1)])
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    assert_eq!((more[0].message.seq(), more[0].global_seq), (3, 3));
    drop_schema(&store, &schema).await;
}

/// Two schemas are two event stores: the same stream id and message ids in both, and each
/// store's outbox carries only its own messages. Also checks that the tables are created in
/// the store's schema, not in `public`.
#[tokio::test]
async fn the_adapter_works_in_a_non_default_schema() {
    let (one, s1) = fresh_store().await;
    let (two, s2) = fresh_store().await;
    let m = cmd("shared", 1);
    for store in [&one, &two] {
        store
            .event_store()
            .append_to_stream("shared", std::slice::from_ref(&m))
            .await
            .unwrap_or_else(|e| panic!("the same message in another schema is new there: {e}"));
    }
    one.event_store()
        .append_to_stream("shared", &[cmd("shared", 2)])
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    assert_eq!(
        one.event_store()
            .read_stream("shared", 0, None)
            .await
            .map(|v| v.len()),
        Ok(2)
    );
    assert_eq!(
        two.event_store()
            .read_stream("shared", 0, None)
            .await
            .map(|v| v.len()),
        Ok(1)
    );
    assert_eq!(one.staged().await, Ok(2));
    assert_eq!(two.staged().await, Ok(1));
    let tables: Vec<String> = sqlx::query_scalar(
        "SELECT table_schema::text FROM information_schema.tables WHERE table_name = 'es_messages' \
         AND table_schema IN ($1, $2) ORDER BY 1",
    )
    .bind(&s1)
    .bind(&s2)
    .fetch_all(one.pool())
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    let mut want = vec![s1.clone(), s2.clone()];
    want.sort();
    assert_eq!(tables, want, "each store's tables live in its schema");
    drop_schema(&one, &s1).await;
    drop_schema(&one, &s2).await;
}

/// The messages reach the store's Postgres-only log (the outbox, once sequenced), in
/// stream order, and a waiting reader wakes on a commit.
#[tokio::test]
async fn the_outbox_log_carries_the_messages_and_wakes_readers() {
    let (store, schema) = fresh_store().await;
    let es = store.event_store();
    let log = store.log();
    let reader = {
        let log = log.clone();
        tokio::spawn(async move {
            log.read(&ports::Position::start(), 10, Duration::from_secs(20))
                .await
        })
    };
    tokio::time::sleep(Duration::from_millis(200)).await;
    let c = cmd("ride-9", 1);
    let e = c.follow_raw("tests.done", json!({})).with_seq(2);
    let started = std::time::Instant::now();
    es.append_to_stream("ride-9", &[c.clone(), e.clone()])
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    let batch = tokio::time::timeout(Duration::from_secs(30), reader)
        .await
        .unwrap_or_else(|_| panic!("the reader must return"))
        .unwrap_or_else(|e| panic!("reader task: {e}"))
        .unwrap_or_else(|e| panic!("read: {e}"));
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the reader woke on the commit, well before its timeout"
    );
    let mut ids: Vec<uuid::Uuid> = batch.deliveries.iter().map(|d| d.record.id).collect();
    if ids.len() < 2 {
        let rest = log
            .read(&batch.next, 10, Duration::from_secs(5))
            .await
            .unwrap_or_else(|e| panic!("read: {e}"));
        ids.extend(rest.deliveries.iter().map(|d| d.record.id));
    }
    assert_eq!(ids, vec![c.id(), e.id()], "the log carries both, in order");
    drop_schema(&store, &schema).await;
}

/// Invariant 4 with a commit held open: while one commit has taken its global seq and not
/// committed, a later commit waits, and a reader sees neither; once both commit, the reader
/// sees both, in order. (The contract's concurrent scenario checks the same statistically.)
#[tokio::test]
async fn a_reader_never_skips_a_late_commit() {
    let (store, schema) = fresh_store().await;
    let es = store.event_store();
    es.append_to_stream("warm", &[cmd("warm", 1)])
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    // Hold the global counter as a commit between its step 4 and its commit does.
    let mut held = store
        .pool()
        .begin()
        .await
        .unwrap_or_else(|e| panic!("begin: {e}"));
    let taken: i64 = sqlx::query_scalar(
        "UPDATE es_global SET last_global_seq = last_global_seq + 1 RETURNING last_global_seq",
    )
    .fetch_one(&mut *held)
    .await
    .unwrap_or_else(|e| panic!("take: {e}"));
    assert_eq!(taken, 2);
    let late = {
        let es = es.clone();
        tokio::spawn(async move { es.append_to_stream("late", &[cmd("late", 1)]).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(!late.is_finished(), "a later commit waits for the counter");
    let seen = es.read_all(1, 100).await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        seen.is_empty(),
        "nothing above the held seq is visible: {seen:?}"
    );
    held.rollback()
        .await
        .unwrap_or_else(|e| panic!("rollback: {e}"));
    let stored = late
        .await
        .unwrap_or_else(|e| panic!("task: {e}"))
        .unwrap_or_else(|e| panic!("the late commit succeeds: {e}"));
    assert_eq!(
        stored[0].global_seq, 2,
        "the rolled-back seq is reused: no gap"
    );
    let seen = es.read_all(1, 100).await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(seen, stored);
    drop_schema(&store, &schema).await;
}

/// Racing commits on Postgres get the typed errors: of two `append_to_stream` at seq 1 of a
/// new stream, one wins and the other is a `Conflict` naming the actual last seq; of two
/// commits of one new message id on different streams, one wins and the other is
/// `DuplicateMessage`. Neither is an `Unavailable` or `Other` driver error.
#[tokio::test]
async fn racing_commits_get_typed_errors() {
    let (store, schema) = fresh_store().await;
    let es: Arc<dyn EventStore> = Arc::new(store.event_store());
    for round in 0..10 {
        let stream = format!("race-{round}");
        let tasks: Vec<_> = (0..2)
            .map(|_| {
                let es = Arc::clone(&es);
                let m = cmd(&stream, 1);
                let stream = stream.clone();
                tokio::spawn(async move { es.append_to_stream(&stream, &[m]).await })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap_or_else(|e| panic!("task: {e}")) {
                Ok(_) => wins += 1,
                Err(EventStoreError::Conflict {
                    expected, actual, ..
                }) => assert_eq!((expected, actual), (0, 1)),
                Err(other) => panic!("a lost race must be a Conflict, got {other:?}"),
            }
        }
        assert_eq!(wins, 1, "exactly one append at seq 1 wins");

        let shared = cmd("dup-a", 1);
        let tasks: Vec<_> = ["dup-a", "dup-b"]
            .into_iter()
            .map(|s| {
                let es = Arc::clone(&es);
                let m = shared
                    .clone()
                    .to(format!("{s}-{round}"))
                    .unwrap_or_else(|e| panic!("{e}"));
                tokio::spawn(async move {
                    es.append_next_to_stream(m.stream_id(), std::slice::from_ref(&m))
                        .await
                })
            })
            .collect();
        let mut wins = 0;
        for t in tasks {
            match t.await.unwrap_or_else(|e| panic!("task: {e}")) {
                Ok(_) => wins += 1,
                Err(EventStoreError::DuplicateMessage(id)) => assert_eq!(id, shared.id()),
                Err(other) => {
                    panic!("a second copy of an id must be DuplicateMessage, got {other:?}")
                }
            }
        }
        assert_eq!(wins, 1, "one copy of the id is stored");
    }
    drop_schema(&store, &schema).await;
}

/// Stored data the domain refuses (metadata that is not an object, an empty type) is a clear
/// `Other` error naming the row, not a panic and not a default.
#[tokio::test]
async fn a_corrupt_row_is_an_error_naming_it() {
    let (store, schema) = fresh_store().await;
    let es = store.event_store();
    es.append_to_stream("s", &[cmd("s", 1)])
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    for (corruption, what) in [
        ("UPDATE es_messages SET metadata = '[1]'::jsonb", "metadata"),
        (
            "UPDATE es_messages SET metadata = '{}'::jsonb, type = ''",
            "type",
        ),
    ] {
        sqlx::query(corruption)
            .execute(store.pool())
            .await
            .unwrap_or_else(|e| panic!("corrupt: {e}"));
        match es.read_stream("s", 0, None).await {
            Err(EventStoreError::Other(m)) => {
                assert!(m.contains("global seq 1") && m.contains(what), "{m}");
            }
            other => panic!("corrupt {what} must be Other, got {other:?}"),
        }
    }
    drop_schema(&store, &schema).await;
}
