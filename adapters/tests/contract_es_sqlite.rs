//! The event-store contract against the SQLite adapter, plus its own tests: a rolled-back
//! commit stages nothing, messages and documents survive a reopen, corrupt rows are errors.
//!
//! Every store is a fresh database file in its own temporary directory, kept as long as the
//! factory (one factory per test); `reopen` drops the store and connects to the same file
//! again, as a restarted process would.

use std::sync::{Arc, Mutex};

use adapters::sqlite::SqliteStore;
use domain::es::{Message, SyncOp};
use ports::contract::{EventStoreFactory, EventStoreUnderTest, async_trait};
use ports::{Append, Commit, EventStore, EventStoreError, ExpectedSeq, Outbox};
use serde_json::json;

/// Fresh SQLite stores, each in a temporary directory kept until the factory is dropped.
#[derive(Default)]
struct SqliteEventStores {
    dirs: Mutex<Vec<tempfile::TempDir>>,
}

impl SqliteEventStores {
    /// A new database file's URL.
    fn url(&self) -> String {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("rides.db").display());
        self.dirs
            .lock()
            .expect("the directory list is never poisoned")
            .push(dir);
        url
    }
}

async fn connect(url: &str) -> SqliteStore {
    SqliteStore::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect {url}: {e}"))
}

#[async_trait]
impl EventStoreFactory for SqliteEventStores {
    async fn fresh(&self) -> EventStoreUnderTest {
        let store = connect(&self.url()).await;
        EventStoreUnderTest {
            events: Arc::new(store.event_store()),
            outbox: Arc::new(store),
        }
    }

    async fn reopen(&self, sut: EventStoreUnderTest) -> Option<EventStoreUnderTest> {
        // The event store describes itself by its database's URL.
        let url = sut.events.describe();
        drop(sut);
        let store = connect(&url).await;
        Some(EventStoreUnderTest {
            events: Arc::new(store.event_store()),
            outbox: Arc::new(store),
        })
    }
}

ports::event_store_contract_tests!(SqliteEventStores::default());

fn cmd(stream_id: &str, seq: u64) -> Message {
    Message::new("tests.do_something", stream_id, json!({"n": seq}), 1_000)
        .unwrap_or_else(|e| panic!("fixture: {e}"))
        .with_seq(seq)
}

/// A commit that fails on its second append leaves no outbox record, no message, no
/// document, no stream; the store's other writes go on as before.
#[tokio::test]
async fn a_rolled_back_commit_stages_nothing_in_the_outbox() {
    let factory = SqliteEventStores::default();
    let store = connect(&factory.url()).await;
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
    // The global order goes on without a hole.
    let next = es
        .append_next_to_stream("a", &[cmd("a", 1)])
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    assert_eq!(
        next[0].global_seq, 2,
        "a rolled-back commit returns its global seqs"
    );
}

/// Messages, streams, documents and the global counter are in the file: a reopened store
/// reads them back and goes on numbering after them.
#[tokio::test]
async fn messages_survive_a_reopen() {
    let factory = SqliteEventStores::default();
    let url = factory.url();
    let store = connect(&url).await;
    let es = store.event_store();
    let first = cmd("ride-1", 1);
    let stored = es
        .commit(Commit {
            appends: vec![Append {
                stream_id: "ride-1".into(),
                expected: ExpectedSeq::Exactly(0),
                messages: vec![
                    first.clone(),
                    first.follow_raw("tests.done", json!({})).with_seq(2),
                ],
            }],
            sync: vec![SyncOp::put("rides", "ride-1", json!({"state": "done"}))],
        })
        .await
        .unwrap_or_else(|e| panic!("commit: {e}"));
    drop(es);
    drop(store);
    let store = connect(&url).await;
    let es = store.event_store();
    let back = es
        .read_all(0, 100)
        .await
        .unwrap_or_else(|e| panic!("read_all: {e}"));
    assert_eq!(back, stored, "the messages, with their global seqs");
    assert_eq!(
        es.document("rides", "ride-1")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        Some(json!({"state": "done"}))
    );
    let more = es
        .append_next_to_stream("ride-1", &[cmd("ride-1", 1)])
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    assert_eq!(
        (more[0].message.seq(), more[0].global_seq),
        (3, 3),
        "seqs and global seqs continue"
    );
    assert_eq!(store.staged().await.unwrap_or_else(|e| panic!("{e}")), 3);
}

/// A stored message that no longer decodes is a clear `Other` error naming the row, not a
/// panic and not a default.
#[tokio::test]
async fn a_corrupt_row_is_an_error_naming_it() {
    let factory = SqliteEventStores::default();
    let url = factory.url();
    let store = connect(&url).await;
    let es = store.event_store();
    es.append_to_stream("s", &[cmd("s", 1)])
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    let raw = sqlx::SqlitePool::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    sqlx::query("UPDATE es_messages SET payload = 'not json'")
        .execute(&raw)
        .await
        .unwrap_or_else(|e| panic!("corrupt: {e}"));
    match es.read_stream("s", 0, None).await {
        Err(EventStoreError::Other(m)) => {
            assert!(m.contains("global seq 1") && m.contains("payload"), "{m}");
        }
        other => panic!("a corrupt payload must be Other, got {other:?}"),
    }
}

/// Racing commits get the typed errors: of two `append_to_stream` at seq 1 of a new stream,
/// one wins and the other is a `Conflict`; of two commits of one new message id, one wins and
/// the other is `DuplicateMessage`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_commits_get_typed_errors() {
    let factory = SqliteEventStores::default();
    let store = connect(&factory.url()).await;
    let es: Arc<dyn EventStore> = Arc::new(store.event_store());
    for round in 0..10 {
        let stream = format!("race-{round}");
        let shared = cmd("dup", 1);
        let tasks: Vec<_> = (0..2)
            .map(|i| {
                let es = Arc::clone(&es);
                let m = cmd(&stream, 1);
                let stream = stream.clone();
                let copy = shared
                    .clone()
                    .to(format!("dup-{round}-{i}"))
                    .unwrap_or_else(|e| panic!("{e}"));
                tokio::spawn(async move {
                    let append = es.append_to_stream(&stream, &[m]).await;
                    let dup = es
                        .append_next_to_stream(copy.stream_id(), std::slice::from_ref(&copy))
                        .await;
                    (append, dup)
                })
            })
            .collect();
        let (mut appended, mut stored) = (0, 0);
        for t in tasks {
            let (append, dup) = t.await.unwrap_or_else(|e| panic!("task: {e}"));
            match append {
                Ok(_) => appended += 1,
                Err(EventStoreError::Conflict {
                    expected, actual, ..
                }) => assert_eq!((expected, actual), (0, 1)),
                Err(other) => panic!("a lost race must be a Conflict, got {other:?}"),
            }
            match dup {
                Ok(_) => stored += 1,
                Err(EventStoreError::DuplicateMessage(id)) => assert_eq!(id, shared.id()),
                Err(other) => {
                    panic!("a second copy of an id must be DuplicateMessage, got {other:?}")
                }
            }
        }
        assert_eq!((appended, stored), (1, 1), "one winner each");
    }
}
