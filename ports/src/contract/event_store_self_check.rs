//! The event-store suite checked against itself: a tiny correct event store (with its own
//! outbox) passes every scenario, and the same store with one deliberate bug fails the
//! scenario that names that bug.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use domain::es::{Message, SyncOp};
use domain::{LogRecord, NewRecord};
use serde_json::Value;
use uuid::Uuid;

use super::{EventStoreFactory, EventStoreUnderTest};
use crate::event_store::plan_commit;
use crate::{
    Commit, EventStore, EventStoreError, EventStoreStats, ExpectedSeq, Outbox, Route, StoreError,
    StoredMessage, StreamInfo,
};

/// A deliberate bug of [`TinyStore`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// Appends of a commit are applied one by one: a failing second append keeps the first.
    NoRollback,
    /// Messages are not staged in the outbox.
    NoOutbox,
    /// `Exactly(n)` is treated as `Any`: no optimistic concurrency.
    NoConflictCheck,
    /// A stored id can be stored again.
    DuplicateIds,
    /// `read_stream`'s `upto` is exclusive.
    UptoExclusive,
    /// `read_correlation_batch` returns only the message's own stream.
    CorrelationPerStream,
    /// `recent_streams` orders by the first append, not the last.
    RecentByFirstAppend,
    /// `read_all` skips the first message after the cursor.
    ReadAllSkips,
    /// A `SyncOp::Delete` is ignored.
    IgnoresDeletes,
    /// A reopen loses everything.
    ForgetsOnReopen,
}

#[derive(Default)]
struct State {
    messages: BTreeMap<u64, Message>,
    first_global: BTreeMap<String, u64>,
    documents: BTreeMap<(String, String), Value>,
    staged: BTreeMap<u64, LogRecord>,
    next_global: u64,
    next_record: u64,
    route: Option<Route>,
}

impl State {
    fn stream(&self, id: &str) -> Vec<(u64, &Message)> {
        self.messages
            .iter()
            .filter(|(_, m)| m.stream_id() == id)
            .map(|(g, m)| (*g, m))
            .collect()
    }
    fn last_seq(&self, id: &str) -> u64 {
        self.stream(id).last().map_or(0, |(_, m)| m.seq())
    }
}

/// An event store and its outbox in one map, with one optional bug.
struct TinyStore {
    bug: Bug,
    state: Mutex<State>,
}

fn lock(m: &Mutex<State>) -> std::sync::MutexGuard<'_, State> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

impl TinyStore {
    fn apply(
        &self,
        st: &mut State,
        commit: &Commit,
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        let mut planning = commit.clone();
        if self.bug == Bug::NoConflictCheck {
            for a in &mut planning.appends {
                a.expected = ExpectedSeq::Any;
            }
        }
        let planned = plan_commit(&planning, |s| st.last_seq(s))?;
        if self.bug != Bug::DuplicateIds {
            let mut seen = HashSet::new();
            for m in &planned {
                if st.messages.values().any(|s| s.id() == m.id()) || !seen.insert(m.id()) {
                    return Err(EventStoreError::DuplicateMessage(m.id()));
                }
            }
        }
        let mut out = Vec::new();
        for m in planned {
            st.next_global += 1;
            let g = st.next_global;
            st.first_global.entry(m.stream_id().to_owned()).or_insert(g);
            if self.bug != Bug::NoOutbox {
                st.next_record += 1;
                let seq = st.next_record;
                st.staged.insert(seq, m.to_record().sequenced("tiny", seq));
            }
            st.messages.insert(g, m.clone());
            out.push(StoredMessage {
                global_seq: g,
                message: m,
            });
        }
        for op in &commit.sync {
            match op {
                SyncOp::Put {
                    collection,
                    id,
                    doc,
                } => {
                    st.documents
                        .insert((collection.clone(), id.clone()), doc.clone());
                }
                SyncOp::Delete { collection, id } => {
                    if self.bug != Bug::IgnoresDeletes {
                        st.documents.remove(&(collection.clone(), id.clone()));
                    }
                }
            }
        }
        Ok(out)
    }
}

#[async_trait]
impl EventStore for TinyStore {
    fn describe(&self) -> String {
        format!("tiny ({:?})", self.bug)
    }
    async fn ping(&self) -> Result<(), EventStoreError> {
        Ok(())
    }
    async fn commit(&self, commit: Commit) -> Result<Vec<StoredMessage>, EventStoreError> {
        let mut st = lock(&self.state);
        if self.bug == Bug::NoRollback {
            let mut out = Vec::new();
            for append in &commit.appends {
                let one = Commit {
                    appends: vec![append.clone()],
                    sync: Vec::new(),
                };
                out.extend(self.apply(&mut st, &one)?);
            }
            let sync = Commit {
                appends: Vec::new(),
                sync: commit.sync.clone(),
            };
            self.apply(&mut st, &sync)?;
            return Ok(out);
        }
        let mut scratch = State {
            messages: st.messages.clone(),
            first_global: st.first_global.clone(),
            documents: st.documents.clone(),
            staged: st.staged.clone(),
            next_global: st.next_global,
            next_record: st.next_record,
            route: st.route.clone(),
        };
        let out = self.apply(&mut scratch, &commit)?;
        *st = scratch;
        Ok(out)
    }
    async fn read_stream(
        &self,
        stream_id: &str,
        after: u64,
        upto: Option<u64>,
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        let st = lock(&self.state);
        let exclusive = self.bug == Bug::UptoExclusive;
        Ok(st
            .stream(stream_id)
            .into_iter()
            .filter(|(_, m)| m.seq() > after)
            .filter(|(_, m)| match upto {
                None => true,
                Some(u) if exclusive => m.seq() < u,
                Some(u) => m.seq() <= u,
            })
            .map(|(g, m)| StoredMessage {
                global_seq: g,
                message: m.clone(),
            })
            .collect())
    }
    async fn read_correlation_batch(
        &self,
        message_id: Uuid,
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        let st = lock(&self.state);
        let Some(m) = st.messages.values().find(|m| m.id() == message_id) else {
            return Ok(Vec::new());
        };
        let per_stream = self.bug == Bug::CorrelationPerStream;
        Ok(st
            .messages
            .iter()
            .filter(|(_, o)| o.correlation_id() == m.correlation_id())
            .filter(|(_, o)| !per_stream || o.stream_id() == m.stream_id())
            .map(|(g, o)| StoredMessage {
                global_seq: *g,
                message: o.clone(),
            })
            .collect())
    }
    async fn read_all(
        &self,
        after_global: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        let st = lock(&self.state);
        let skip = usize::from(self.bug == Bug::ReadAllSkips);
        Ok(st
            .messages
            .range(after_global + 1..)
            .skip(skip)
            .take(max)
            .map(|(g, m)| StoredMessage {
                global_seq: *g,
                message: m.clone(),
            })
            .collect())
    }
    async fn recent_streams(&self, limit: usize) -> Result<Vec<StreamInfo>, EventStoreError> {
        let st = lock(&self.state);
        let mut rows: Vec<(u64, StreamInfo)> = st
            .first_global
            .iter()
            .map(|(id, first)| {
                let stream = st.stream(id);
                let last = stream.last().map_or(0, |(g, _)| *g);
                let key = if self.bug == Bug::RecentByFirstAppend {
                    *first
                } else {
                    last
                };
                (
                    key,
                    StreamInfo {
                        stream_id: id.clone(),
                        seq: st.last_seq(id),
                        updated_at_ms: super::fixtures::now_ms(),
                    },
                )
            })
            .collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.0));
        Ok(rows.into_iter().take(limit).map(|r| r.1).collect())
    }
    async fn stats(&self) -> Result<EventStoreStats, EventStoreError> {
        let st = lock(&self.state);
        Ok(EventStoreStats {
            stream_count: st.first_global.len() as u64,
            message_count: st.messages.len() as u64,
            max_global_seq: st.messages.keys().next_back().copied().unwrap_or(0),
        })
    }
    async fn document(&self, collection: &str, id: &str) -> Result<Option<Value>, EventStoreError> {
        let st = lock(&self.state);
        Ok(st
            .documents
            .get(&(collection.to_owned(), id.to_owned()))
            .cloned())
    }
    async fn documents(&self, collection: &str) -> Result<Vec<(String, Value)>, EventStoreError> {
        let st = lock(&self.state);
        Ok(st
            .documents
            .iter()
            .filter(|((c, _), _)| c == collection)
            .map(|((_, id), d)| (id.clone(), d.clone()))
            .collect())
    }
}

#[async_trait]
impl Outbox for TinyStore {
    fn producer(&self) -> String {
        "tiny".to_owned()
    }
    async fn peek(&self, max: usize) -> Result<Vec<LogRecord>, StoreError> {
        self.peek_after(0, max).await
    }
    async fn peek_after(&self, after_seq: u64, max: usize) -> Result<Vec<LogRecord>, StoreError> {
        let st = lock(&self.state);
        Ok(st
            .staged
            .range(after_seq + 1..)
            .take(max)
            .map(|(_, r)| r.clone())
            .collect())
    }
    async fn remove(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        let mut st = lock(&self.state);
        Ok(seqs
            .iter()
            .filter(|s| st.staged.remove(s).is_some())
            .count() as u64)
    }
    async fn staged(&self) -> Result<u64, StoreError> {
        Ok(lock(&self.state).staged.len() as u64)
    }
    async fn wait_staged(&self, timeout: Duration) {
        tokio::time::sleep(timeout.min(Duration::from_millis(10))).await;
    }
    async fn stage(&self, records: &[NewRecord]) -> Result<(), StoreError> {
        let mut st = lock(&self.state);
        for r in records {
            st.next_record += 1;
            let seq = st.next_record;
            st.staged.insert(seq, r.clone().sequenced("tiny", seq));
        }
        Ok(())
    }
    async fn published(
        &self,
        _producer: &str,
        _from_seq: u64,
        _to_seq: u64,
    ) -> Result<Vec<crate::Published>, StoreError> {
        Ok(Vec::new())
    }
    async fn forget_published(&self, _producer: &str, _below: u64) -> Result<u64, StoreError> {
        Ok(0)
    }
    async fn restage(&self, _records: &[LogRecord]) -> Result<(), StoreError> {
        Err(StoreError::Other(
            "the self-check store cannot re-stage".into(),
        ))
    }
    async fn route(&self) -> Result<Option<Route>, StoreError> {
        Ok(lock(&self.state).route.clone())
    }
    async fn set_route(&self, route: &Route) -> Result<(), StoreError> {
        lock(&self.state).route = Some(route.clone());
        Ok(())
    }
}

/// Makes [`TinyStore`]s with one bug (or none).
struct TinyStores(Bug);

fn under_test(store: Arc<TinyStore>) -> EventStoreUnderTest {
    EventStoreUnderTest {
        events: store.clone(),
        outbox: store,
    }
}

#[async_trait]
impl EventStoreFactory for TinyStores {
    async fn fresh(&self) -> EventStoreUnderTest {
        under_test(Arc::new(TinyStore {
            bug: self.0,
            state: Mutex::new(State::default()),
        }))
    }
    async fn reopen(&self, store: EventStoreUnderTest) -> Option<EventStoreUnderTest> {
        if self.0 == Bug::ForgetsOnReopen {
            return Some(self.fresh().await);
        }
        // Keeps the same store: a "restart" that keeps everything.
        Some(store)
    }
}

mod correct_store_passes {
    use super::{Bug, TinyStores};
    crate::event_store_contract_tests!(TinyStores(Bug::None));
}

/// Runs `scenario` against a store with `bug` and expects it to fail (panic).
async fn must_fail<F, Fut>(bug: Bug, scenario: F)
where
    F: FnOnce(TinyStores) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::FutureExt;
    let run = std::panic::AssertUnwindSafe(scenario(TinyStores(bug))).catch_unwind();
    let outcome = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("the scenario hung on {bug:?}"));
    assert!(
        outcome.is_err(),
        "an event store with bug {bug:?} passed the scenario that should catch it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_event_stores_fail_the_scenario_that_names_their_bug() {
    use super::event_store as es;
    must_fail(Bug::NoRollback, |f| async move {
        es::a_failed_commit_leaves_nothing(&f).await
    })
    .await;
    must_fail(Bug::NoOutbox, |f| async move {
        es::append_to_stream_then_read_back_equal(&f).await
    })
    .await;
    must_fail(Bug::NoConflictCheck, |f| async move {
        es::append_to_stream_conflicts_and_invalid_appends_write_nothing(&f).await
    })
    .await;
    must_fail(Bug::DuplicateIds, |f| async move {
        es::a_message_id_is_stored_once(&f).await
    })
    .await;
    must_fail(Bug::UptoExclusive, |f| async move {
        es::read_stream_after_and_upto(&f).await
    })
    .await;
    must_fail(Bug::CorrelationPerStream, |f| async move {
        es::read_correlation_batch_follows_a_command(&f).await
    })
    .await;
    must_fail(Bug::RecentByFirstAppend, |f| async move {
        es::recent_streams_most_recent_first(&f).await
    })
    .await;
    must_fail(Bug::ReadAllSkips, |f| async move {
        es::read_all_is_gap_safe_under_concurrent_commits(&f).await
    })
    .await;
    must_fail(Bug::IgnoresDeletes, |f| async move {
        es::commit_appends_to_several_streams_and_writes_documents(&f).await
    })
    .await;
    must_fail(Bug::ForgetsOnReopen, |f| async move {
        es::messages_and_documents_survive_reopen(&f).await
    })
    .await;
}
