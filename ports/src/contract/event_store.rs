//! Scenarios for the event-store contract ([`crate::EventStore`]).
//!
//! They port sourced's backend shared examples that apply to part 1 (§4.19 of the behaviour
//! reference): appends, optimistic conflicts, `append_next_to_stream`, `read_stream` with
//! `after`/`upto`, correlation batches, transaction rollback, recent streams and stats, plus
//! what this product adds: outbox staging, documents written by sync ops, unique message ids,
//! contiguous seqs under racing `append_next_to_stream`, and a gap-safe global order under
//! concurrent commits.
//!
//! Deliberate differences from sourced's examples: appends return the stored messages
//! instead of `true`/`false`; a negative `recent_streams` limit cannot be expressed (the
//! limit is a `usize`); scheduling, consumer groups and claims are part 2.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use domain::es::{ES_RECORD_STREAM, Message, SyncOp};
use serde_json::json;
use uuid::Uuid;

use super::EventStoreFactory;
use super::fixtures::{now_ms, within};
use crate::{Append, Commit, EventStore, EventStoreError, ExpectedSeq, Outbox, StoredMessage};

/// A command of the fixtures' account domain (sourced's `Tests::DoSomething`).
pub const DO_SOMETHING: &str = "tests.do_something";
/// An event of the fixtures (sourced's `Tests::SomethingHappened1`).
pub const SOMETHING_HAPPENED: &str = "tests.something_happened1";

/// A unique stream id with a readable tag.
fn stream(tag: &str) -> String {
    format!("{tag}-{}", Uuid::new_v4().simple())
}

/// An initial command on `stream_id` at seq `seq`.
fn cmd(stream_id: &str, seq: u64, account_id: u64) -> Message {
    Message::new(
        DO_SOMETHING,
        stream_id,
        json!({"account_id": account_id}),
        now_ms(),
    )
    .unwrap_or_else(|e| panic!("fixture message: {e}"))
    .with_seq(seq)
}

/// An event following `cause` at seq `seq`.
fn evt(cause: &Message, seq: u64, account_id: u64) -> Message {
    cause
        .follow_raw(SOMETHING_HAPPENED, json!({"account_id": account_id}))
        .with_seq(seq)
}

async fn append(es: &Arc<dyn EventStore>, stream_id: &str, msgs: &[Message]) -> Vec<StoredMessage> {
    within("append_to_stream", es.append_to_stream(stream_id, msgs))
        .await
        .unwrap_or_else(|e| panic!("append_to_stream({stream_id}) must succeed: {e}"))
}

async fn append_next(
    es: &Arc<dyn EventStore>,
    stream_id: &str,
    msgs: &[Message],
) -> Vec<StoredMessage> {
    within(
        "append_next_to_stream",
        es.append_next_to_stream(stream_id, msgs),
    )
    .await
    .unwrap_or_else(|e| panic!("append_next_to_stream({stream_id}) must succeed: {e}"))
}

async fn read(
    es: &Arc<dyn EventStore>,
    stream_id: &str,
    after: u64,
    upto: Option<u64>,
) -> Vec<Message> {
    within("read_stream", es.read_stream(stream_id, after, upto))
        .await
        .unwrap_or_else(|e| panic!("read_stream({stream_id}) must succeed: {e}"))
        .into_iter()
        .map(|s| s.message)
        .collect()
}

fn seqs(msgs: &[Message]) -> Vec<u64> {
    msgs.iter().map(Message::seq).collect()
}

fn ids(msgs: &[Message]) -> Vec<Uuid> {
    msgs.iter().map(Message::id).collect()
}

/// The event-store messages staged in the outbox, in staging order.
async fn staged_messages(outbox: &Arc<dyn Outbox>) -> Vec<Message> {
    let records = within("outbox peek", outbox.peek(100_000))
        .await
        .unwrap_or_else(|e| panic!("outbox peek must succeed: {e}"));
    records
        .into_iter()
        .filter(|r| r.stream == ES_RECORD_STREAM)
        .map(|r| {
            assert!(
                r.correlation_id.is_some() && r.causation_id.is_some(),
                "a staged message record carries its correlation and causation ids"
            );
            let m: Message = serde_json::from_value(r.payload.clone())
                .unwrap_or_else(|e| panic!("a staged record's payload is the envelope: {e}"));
            assert_eq!(r.key, m.stream_id(), "the record's key is the stream id");
            assert_eq!(r.kind, m.kind(), "the record's kind is the message type");
            assert_eq!(r.id, m.id(), "the record's id is the message id");
            m
        })
        .collect()
}

fn expect_conflict(result: Result<Vec<StoredMessage>, EventStoreError>, what: &str) -> (u64, u64) {
    match result {
        Err(EventStoreError::Conflict {
            expected, actual, ..
        }) => (expected, actual),
        other => panic!("{what}: expected a Conflict, got {other:?}"),
    }
}

fn expect_invalid(result: Result<Vec<StoredMessage>, EventStoreError>, what: &str) -> String {
    match result {
        Err(EventStoreError::InvalidAppend(msg)) => msg,
        other => panic!("{what}: expected InvalidAppend, got {other:?}"),
    }
}

/// Rule: `append_to_stream` stores a single message or several, read back equal (ids, seqs,
/// times, causation, correlation, metadata, payload) in seq order; an empty list stores
/// nothing; every stored message is staged in the outbox as its envelope, keyed by stream.
/// Preconditions: a fresh store.
pub async fn append_to_stream_then_read_back_equal(f: &dyn EventStoreFactory) {
    let t = f.fresh().await;
    let s = stream("append");
    let c = cmd(&s, 1, 1);
    let mut meta = serde_json::Map::new();
    meta.insert("tid".into(), json!("abc"));
    meta.insert("ratio".into(), json!(0.1 + 0.2));
    let c = c.with_metadata(meta);
    let e1 = evt(&c, 2, 1);
    let e2 = evt(&e1, 3, 2);
    assert!(
        append(&t.events, &s, &[]).await.is_empty(),
        "an empty append returns nothing"
    );
    let stored = append(&t.events, &s, std::slice::from_ref(&c)).await;
    assert_eq!(stored.len(), 1, "one message appended, one returned");
    assert_eq!(
        stored[0].message, c,
        "the stored message equals the appended one"
    );
    append(&t.events, &s, &[e1.clone(), e2.clone()]).await;
    let back = read(&t.events, &s, 0, None).await;
    assert_eq!(
        back,
        vec![c.clone(), e1.clone(), e2.clone()],
        "read back equal, in order"
    );
    let staged = staged_messages(&t.outbox).await;
    assert_eq!(
        staged,
        vec![c, e1, e2],
        "every appended message (the command too) is staged in the outbox, in order"
    );
}

/// Rule: optimistic concurrency. Appending at a seq that is already taken is a
/// [`EventStoreError::Conflict`] naming the expected and actual last seqs; a gap in seqs or a
/// message of another stream is [`EventStoreError::InvalidAppend`]; a failed append writes
/// nothing (no message, no outbox record).
/// Preconditions: a fresh store.
pub async fn append_to_stream_conflicts_and_invalid_appends_write_nothing(
    f: &dyn EventStoreFactory,
) {
    let t = f.fresh().await;
    let s = stream("conflict");
    let c = cmd(&s, 1, 1);
    append(&t.events, &s, std::slice::from_ref(&c)).await;
    let again = cmd(&s, 1, 2);
    let (expected, actual) = expect_conflict(
        t.events.append_to_stream(&s, &[again]).await,
        "a second message at seq 1",
    );
    assert_eq!((expected, actual), (0, 1), "the conflict names the seqs");
    let gap = evt(&c, 3, 1);
    expect_invalid(
        t.events.append_to_stream(&s, &[gap]).await,
        "a message at seq 3 after seq 1",
    );
    let not_contiguous = [evt(&c, 2, 1), evt(&c, 4, 1)];
    expect_invalid(
        t.events.append_to_stream(&s, &not_contiguous).await,
        "seqs 2 and 4 in one append",
    );
    let other = cmd(&stream("other"), 2, 1);
    let msg = expect_invalid(
        t.events.append_to_stream(&s, &[evt(&c, 2, 1), other]).await,
        "a message of another stream",
    );
    assert!(
        msg.contains("Messages must all belong to the same stream"),
        "the error says why: {msg}"
    );
    assert_eq!(
        read(&t.events, &s, 0, None).await,
        vec![c.clone()],
        "failed appends leave the stream as it was"
    );
    assert_eq!(
        staged_messages(&t.outbox).await,
        vec![c],
        "failed appends stage nothing"
    );
}

/// Rule: a message id is stored once: appending a message whose id is already stored (on any
/// stream) is [`EventStoreError::DuplicateMessage`] and writes nothing.
/// Preconditions: a fresh store.
pub async fn a_message_id_is_stored_once(f: &dyn EventStoreFactory) {
    let t = f.fresh().await;
    let s = stream("dup");
    let c = cmd(&s, 1, 1);
    append(&t.events, &s, std::slice::from_ref(&c)).await;
    let s2 = stream("dup2");
    let copy = c.clone().to(s2.clone()).unwrap_or_else(|e| panic!("{e}"));
    match t.events.append_next_to_stream(&s2, &[copy]).await {
        Err(EventStoreError::DuplicateMessage(id)) => assert_eq!(id, c.id()),
        other => panic!("a stored id appended again must be DuplicateMessage, got {other:?}"),
    }
    assert!(
        read(&t.events, &s2, 0, None).await.is_empty(),
        "nothing written"
    );
}

/// Rule (sourced `#append_next_to_stream`): the store assigns the next seqs whatever the
/// messages say: one event after seq 1 gives [1, 2]; several give [1, 2, 3, 4]; an empty list
/// stores nothing; a new stream with two events gives [1, 2].
/// Preconditions: a fresh store.
pub async fn append_next_assigns_the_next_seqs(f: &dyn EventStoreFactory) {
    let t = f.fresh().await;
    let s = stream("next");
    let c = cmd(&s, 1, 1);
    append(&t.events, &s, std::slice::from_ref(&c)).await;
    let stored = append_next(&t.events, &s, &[evt(&c, 1, 1)]).await;
    assert_eq!(
        stored[0].message.seq(),
        2,
        "the returned message has its new seq"
    );
    assert_eq!(seqs(&read(&t.events, &s, 0, None).await), vec![1, 2]);
    append_next(&t.events, &s, &[evt(&c, 9, 2), evt(&c, 1, 3)]).await;
    assert_eq!(seqs(&read(&t.events, &s, 0, None).await), vec![1, 2, 3, 4]);
    assert!(append_next(&t.events, &s, &[]).await.is_empty());
    assert_eq!(
        read(&t.events, &s, 0, None).await.len(),
        4,
        "empty stores nothing"
    );
    let fresh = stream("next-new");
    let c2 = cmd(&fresh, 5, 1);
    append_next(&t.events, &fresh, &[c2.clone(), evt(&c2, 5, 1)]).await;
    assert_eq!(seqs(&read(&t.events, &fresh, 0, None).await), vec![1, 2]);
}

/// Rule: `append_next_to_stream` from many concurrent tasks on one stream stores every
/// message exactly once with seqs 1..=n, no gap and no duplicate (the store serialises the
/// appends or retries internally; none of them fails).
/// Preconditions: a fresh store.
pub async fn racing_append_next_gives_contiguous_seqs(f: &dyn EventStoreFactory) {
    const TASKS: u64 = 8;
    const EACH: u64 = 10;
    let t = f.fresh().await;
    let s = stream("race");
    let mut handles = Vec::new();
    for task in 0..TASKS {
        let es = Arc::clone(&t.events);
        let s = s.clone();
        handles.push(tokio::spawn(async move {
            let mut ids = Vec::new();
            for i in 0..EACH {
                let m = cmd(&s, 1, task * 100 + i);
                ids.push(m.id());
                es.append_next_to_stream(&s, &[m])
                    .await
                    .unwrap_or_else(|e| panic!("racing append_next must succeed: {e}"));
            }
            ids
        }));
    }
    let mut want = BTreeSet::new();
    for h in handles {
        want.extend(
            within("join", h)
                .await
                .unwrap_or_else(|e| panic!("task: {e}")),
        );
    }
    let back = read(&t.events, &s, 0, None).await;
    assert_eq!(
        seqs(&back),
        (1..=TASKS * EACH).collect::<Vec<_>>(),
        "seqs are contiguous from 1"
    );
    let got: BTreeSet<Uuid> = ids(&back).into_iter().collect();
    assert_eq!(got.len(), back.len(), "no message stored twice");
    assert_eq!(got, want, "every message stored");
}

/// Rule (sourced `#read_stream`): reads one stream in order, other streams excluded;
/// `upto: 2` gives [e1, e2]; `after: 1` gives [e2, e3]; an unknown stream reads empty.
/// Preconditions: a fresh store.
pub async fn read_stream_after_and_upto(f: &dyn EventStoreFactory) {
    let t = f.fresh().await;
    let s = stream("read");
    let other = stream("read-other");
    let e1 = cmd(&s, 1, 1);
    let e2 = evt(&e1, 2, 2);
    let e3 = evt(&e2, 3, 3);
    append(&t.events, &s, &[e1.clone(), e2.clone()]).await;
    append(&t.events, &other, &[cmd(&other, 1, 9)]).await;
    append(&t.events, &s, std::slice::from_ref(&e3)).await;
    assert_eq!(
        read(&t.events, &s, 0, None).await,
        vec![e1.clone(), e2.clone(), e3.clone()]
    );
    assert_eq!(read(&t.events, &s, 0, Some(2)).await, vec![e1, e2.clone()]);
    assert_eq!(read(&t.events, &s, 1, None).await, vec![e2, e3]);
    assert!(
        read(&t.events, &stream("unknown"), 0, None)
            .await
            .is_empty()
    );
}

/// Rule (sourced `#read_correlation_batch`): returns the messages sharing the given message's
/// correlation id (cmd1, evt1 following it, evt2 following evt1, across streams), excluding
/// an uncorrelated message, in global order; an unknown id gives [].
/// Preconditions: a fresh store.
pub async fn read_correlation_batch_follows_a_command(f: &dyn EventStoreFactory) {
    let t = f.fresh().await;
    let s = stream("corr");
    let s2 = stream("corr2");
    let cmd1 = cmd(&s, 1, 1);
    let evt1 = evt(&cmd1, 2, 1);
    let evt3 = cmd(&s2, 1, 3);
    let evt2 = evt(&evt1, 1, 2)
        .to(s2.clone())
        .unwrap_or_else(|e| panic!("{e}"))
        .with_seq(2);
    append(&t.events, &s, &[cmd1.clone(), evt1.clone()]).await;
    append(&t.events, &s2, &[evt3, evt2.clone()]).await;
    let batch: Vec<Message> = within(
        "read_correlation_batch",
        t.events.read_correlation_batch(evt1.id()),
    )
    .await
    .unwrap_or_else(|e| panic!("read_correlation_batch: {e}"))
    .into_iter()
    .map(|s| s.message)
    .collect();
    assert_eq!(
        batch,
        vec![cmd1, evt1, evt2],
        "the conversation, in global order"
    );
    let none = within(
        "read_correlation_batch",
        t.events.read_correlation_batch(Uuid::new_v4()),
    )
    .await
    .unwrap_or_else(|e| panic!("read_correlation_batch: {e}"));
    assert!(none.is_empty(), "an unknown id has no batch");
}

/// Rule: a [`Commit`] appends to several streams, chains two appends to the same stream, and
/// writes documents in order (a put then a delete of another id, a put replacing a put), all
/// visible together; the returned messages are in commit order with increasing global
/// sequences.
/// Preconditions: a fresh store.
pub async fn commit_appends_to_several_streams_and_writes_documents(f: &dyn EventStoreFactory) {
    let t = f.fresh().await;
    let a = stream("commit-a");
    let b = stream("commit-b");
    let ca = cmd(&a, 1, 1);
    let ea = evt(&ca, 2, 1);
    let cb = cmd(&b, 1, 2);
    let commit = Commit {
        appends: vec![
            Append {
                stream_id: a.clone(),
                expected: ExpectedSeq::Exactly(0),
                messages: vec![ca.clone()],
            },
            Append {
                stream_id: b.clone(),
                expected: ExpectedSeq::Any,
                messages: vec![cb.clone().with_seq(7)],
            },
            Append {
                stream_id: a.clone(),
                expected: ExpectedSeq::Exactly(1),
                messages: vec![ea.clone()],
            },
        ],
        sync: vec![
            SyncOp::put("things", "1", json!({"name": "first"})),
            SyncOp::put("things", "2", json!({"name": "second"})),
            SyncOp::put("things", "1", json!({"name": "Widget", "n": 0.1 + 0.2})),
            SyncOp::delete("things", "2"),
            SyncOp::delete("things", "missing"),
        ],
    };
    let stored = within("commit", t.events.commit(commit))
        .await
        .unwrap_or_else(|e| panic!("commit must succeed: {e}"));
    assert_eq!(
        ids(&stored.iter().map(|s| s.message.clone()).collect::<Vec<_>>()),
        vec![ca.id(), cb.id(), ea.id()],
        "stored messages in commit order"
    );
    assert!(
        stored.windows(2).all(|w| w[0].global_seq < w[1].global_seq),
        "global sequences increase in commit order"
    );
    assert_eq!(read(&t.events, &a, 0, None).await, vec![ca, ea]);
    assert_eq!(
        seqs(&read(&t.events, &b, 0, None).await),
        vec![1],
        "Any renumbers"
    );
    let doc = within("document", t.events.document("things", "1"))
        .await
        .unwrap_or_else(|e| panic!("document: {e}"));
    assert_eq!(
        doc,
        Some(json!({"name": "Widget", "n": 0.1 + 0.2})),
        "the last put wins"
    );
    let docs = within("documents", t.events.documents("things"))
        .await
        .unwrap_or_else(|e| panic!("documents: {e}"));
    assert_eq!(
        docs,
        vec![("1".to_owned(), json!({"name": "Widget", "n": 0.1 + 0.2}))]
    );
    assert_eq!(
        staged_messages(&t.outbox).await.len(),
        3,
        "all three staged"
    );
}

/// Rule (sourced "#transaction resets append on error"): a commit whose second append
/// conflicts leaves nothing: not the first append, not its outbox records, not its
/// documents.
/// Preconditions: a fresh store.
pub async fn a_failed_commit_leaves_nothing(f: &dyn EventStoreFactory) {
    let t = f.fresh().await;
    let a = stream("rollback-a");
    let b = stream("rollback-b");
    let cb = cmd(&b, 1, 1);
    append(&t.events, &b, std::slice::from_ref(&cb)).await;
    let staged_before = staged_messages(&t.outbox).await.len();
    let commit = Commit {
        appends: vec![
            Append {
                stream_id: a.clone(),
                expected: ExpectedSeq::Exactly(0),
                messages: vec![cmd(&a, 1, 1)],
            },
            Append {
                stream_id: b.clone(),
                expected: ExpectedSeq::Exactly(0),
                messages: vec![cmd(&b, 1, 2)],
            },
        ],
        sync: vec![SyncOp::put("things", "a", json!({"x": 1}))],
    };
    let (expected, actual) = expect_conflict(t.events.commit(commit).await, "the second append");
    assert_eq!((expected, actual), (0, 1));
    assert!(
        read(&t.events, &a, 0, None).await.is_empty(),
        "the first append is rolled back"
    );
    assert_eq!(read(&t.events, &b, 0, None).await, vec![cb]);
    assert_eq!(
        staged_messages(&t.outbox).await.len(),
        staged_before,
        "no outbox record of a rolled-back commit"
    );
    let doc = t
        .events
        .document("things", "a")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(doc, None, "no document of a rolled-back commit");
    let stats = t.events.stats().await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        stats.stream_count, 1,
        "the rolled-back stream does not exist"
    );
    assert_eq!(stats.message_count, 1);
}

/// Rule (sourced `#recent_streams`): streams by most recent activity, with their last seq
/// and update time; the limit is respected (3 → the three latest, 1 → the latest, 0 → none,
/// more than exist → all).
/// Preconditions: a fresh store.
pub async fn recent_streams_most_recent_first(f: &dyn EventStoreFactory) {
    let t = f.fresh().await;
    let before = now_ms();
    let names: Vec<String> = (1..=5).map(|i| stream(&format!("recent{i}"))).collect();
    for name in &names {
        append(&t.events, name, &[cmd(name, 1, 1)]).await;
    }
    // s2 gets activity last: ten messages.
    let c = cmd(&names[1], 2, 2);
    let more: Vec<Message> = (2..=10).map(|seq| evt(&c, seq, 2)).collect();
    append(&t.events, &names[1], &more).await;
    let recent = |limit| {
        let es = Arc::clone(&t.events);
        async move {
            within("recent_streams", es.recent_streams(limit))
                .await
                .unwrap_or_else(|e| panic!("recent_streams({limit}): {e}"))
        }
    };
    let all = recent(10).await;
    let order: Vec<&str> = all.iter().map(|s| s.stream_id.as_str()).collect();
    assert_eq!(
        order,
        vec![&names[1], &names[4], &names[3], &names[2], &names[0]],
        "most recent activity first"
    );
    assert_eq!(all[0].seq, 10, "the last seq of the stream");
    assert_eq!(all[1].seq, 1);
    assert!(
        all.iter()
            .all(|s| s.updated_at_ms >= before - 5_000 && s.updated_at_ms <= now_ms() + 5_000),
        "update times are the store's clock at append: {all:?}"
    );
    let three: Vec<String> = recent(3).await.into_iter().map(|s| s.stream_id).collect();
    assert_eq!(
        three,
        vec![names[1].clone(), names[4].clone(), names[3].clone()]
    );
    assert_eq!(recent(1).await.len(), 1);
    assert!(recent(0).await.is_empty(), "limit 0 gives none");
    assert_eq!(recent(1000).await.len(), 5, "a large limit gives all");
}

/// Rule: `stats` counts streams and messages and reports the highest global sequence, which
/// is at least the message count's worth of distinct sequences.
/// Preconditions: a fresh store.
pub async fn stats_count_streams_and_messages(f: &dyn EventStoreFactory) {
    let t = f.fresh().await;
    let empty = t
        .events
        .stats()
        .await
        .unwrap_or_else(|e| panic!("stats: {e}"));
    assert_eq!(
        (
            empty.stream_count,
            empty.message_count,
            empty.max_global_seq
        ),
        (0, 0, 0)
    );
    let s1 = stream("stats1");
    let s2 = stream("stats2");
    let c = cmd(&s1, 1, 1);
    append(&t.events, &s1, &[c.clone(), evt(&c, 2, 1), evt(&c, 3, 1)]).await;
    let stored = append(&t.events, &s2, &[cmd(&s2, 1, 1), cmd(&s2, 2, 1)]).await;
    let stats = t
        .events
        .stats()
        .await
        .unwrap_or_else(|e| panic!("stats: {e}"));
    assert_eq!(stats.stream_count, 2);
    assert_eq!(stats.message_count, 5);
    assert_eq!(
        stats.max_global_seq,
        stored.last().map_or(0, |s| s.global_seq),
        "the highest global sequence is the last stored message's"
    );
}

/// Rule (invariant 4 for the event store): with many writers committing concurrently, a
/// reader that polls `read_all(after = last seen, max)` sees every message exactly once, in
/// increasing global order, and nothing else; a full read at the end agrees.
/// Preconditions: a fresh store.
pub async fn read_all_is_gap_safe_under_concurrent_commits(f: &dyn EventStoreFactory) {
    const WRITERS: usize = 6;
    const COMMITS: usize = 15;
    let t = f.fresh().await;
    let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let es = Arc::clone(&t.events);
        let done = Arc::clone(&done);
        writers.push(tokio::spawn(async move {
            let mut written = Vec::new();
            for i in 0..COMMITS {
                // Half the writers share a stream (racing appends), half own one.
                let s = if w % 2 == 0 {
                    "gap-shared".to_owned()
                } else {
                    format!("gap-{w}")
                };
                let m = cmd(&s, 1, (w * 1000 + i) as u64);
                let m2 = evt(&m, 2, 0);
                written.push(m.id());
                written.push(m2.id());
                es.append_next_to_stream(&s, &[m, m2])
                    .await
                    .unwrap_or_else(|e| panic!("writer {w}: {e}"));
                if i % 3 == 0 {
                    tokio::task::yield_now().await;
                }
            }
            done.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            written
        }));
    }
    let mut seen: Vec<StoredMessage> = Vec::new();
    let mut after = 0;
    loop {
        let finished = done.load(std::sync::atomic::Ordering::SeqCst) == WRITERS;
        let batch = within("read_all", t.events.read_all(after, 7))
            .await
            .unwrap_or_else(|e| panic!("read_all: {e}"));
        if let Some(last) = batch.last() {
            after = last.global_seq;
        }
        let empty = batch.is_empty();
        seen.extend(batch);
        if finished && empty {
            break;
        }
        if empty {
            tokio::task::yield_now().await;
        }
    }
    let mut written = BTreeSet::new();
    for h in writers {
        written.extend(
            within("join", h)
                .await
                .unwrap_or_else(|e| panic!("writer: {e}")),
        );
    }
    assert!(
        seen.windows(2).all(|w| w[0].global_seq < w[1].global_seq),
        "read_all returns increasing global sequences"
    );
    let seen_ids: Vec<Uuid> = seen.iter().map(|s| s.message.id()).collect();
    let unique: BTreeSet<Uuid> = seen_ids.iter().copied().collect();
    assert_eq!(unique.len(), seen_ids.len(), "no message seen twice");
    let skipped: Vec<&Uuid> = written.difference(&unique).collect();
    assert!(
        skipped.is_empty(),
        "the reader skipped {} messages",
        skipped.len()
    );
    let phantom: Vec<&Uuid> = unique.difference(&written).collect();
    assert!(
        phantom.is_empty(),
        "the reader saw {} phantom messages",
        phantom.len()
    );
    let full = within("read_all", t.events.read_all(0, 100_000))
        .await
        .unwrap_or_else(|e| panic!("read_all: {e}"));
    assert_eq!(full, seen, "a full read agrees with the polling reader");
    // Per stream, global order agrees with seq order.
    let mut last_seq: HashMap<String, u64> = HashMap::new();
    for s in &full {
        let prev = last_seq.insert(s.message.stream_id().to_owned(), s.message.seq());
        assert_eq!(
            s.message.seq(),
            prev.unwrap_or(0) + 1,
            "within a stream, global order is seq order"
        );
    }
}

/// Rule: after a restart (a backend that keeps data: the factory's `reopen`), streams,
/// global order, seqs, documents and the staged outbox records are all still there, and
/// appends continue after the last seq.
/// Preconditions: a fresh store; skipped for a backend whose `reopen` is `None` (memory).
pub async fn messages_and_documents_survive_reopen(f: &dyn EventStoreFactory) {
    let t = f.fresh().await;
    let s = stream("reopen");
    let c = cmd(&s, 1, 1);
    let e = evt(&c, 2, 1);
    let commit = Commit {
        appends: vec![Append {
            stream_id: s.clone(),
            expected: ExpectedSeq::Exactly(0),
            messages: vec![c.clone(), e.clone()],
        }],
        sync: vec![SyncOp::put("things", "1", json!({"name": "Widget"}))],
    };
    let stored = within("commit", t.events.commit(commit))
        .await
        .unwrap_or_else(|e| panic!("commit must succeed: {e}"));
    let Some(t) = f.reopen(t).await else {
        return;
    };
    assert_eq!(
        read(&t.events, &s, 0, None).await,
        vec![c.clone(), e.clone()]
    );
    let all = within("read_all", t.events.read_all(0, 100))
        .await
        .unwrap_or_else(|e| panic!("read_all: {e}"));
    assert_eq!(all, stored, "the global order survives");
    let doc = within("document", t.events.document("things", "1"))
        .await
        .unwrap_or_else(|e| panic!("document: {e}"));
    assert_eq!(doc, Some(json!({"name": "Widget"})));
    assert_eq!(staged_messages(&t.outbox).await, vec![c.clone(), e.clone()]);
    let next = append_next(&t.events, &s, &[evt(&e, 1, 2)]).await;
    assert_eq!(
        next[0].message.seq(),
        3,
        "appends continue after the last seq"
    );
    assert!(
        next[0].global_seq > stored[1].global_seq,
        "global sequences keep increasing after a restart"
    );
}
