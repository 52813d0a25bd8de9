//! The event store, in memory, inside a [`MemoryStore`].
//!
//! The streams live in the store's own state ([`EsState`] inside its one mutex), so that a
//! commit writes its messages, their outbox records and its documents under one lock: the
//! in-memory equivalent of one transaction. A commit plans everything first
//! ([`ports::event_store::plan_commit`]) and only then mutates, so a failed commit writes
//! nothing. Global sequences are handed out under the same lock, so they are visible in
//! order and [`EventStore::read_all`] is gap-safe by construction.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use domain::es::{Message, SyncOp};
use ports::event_store::plan_commit;
use ports::{Commit, EventStore, EventStoreError, EventStoreStats, StoredMessage, StreamInfo};
use serde_json::Value;
use uuid::Uuid;

use super::store::Inner;
use super::{MemoryStore, lock};

/// One stream's summary row.
#[derive(Debug, Clone)]
pub(super) struct StreamRow {
    pub(super) seq: u64,
    updated_at_ms: i64,
    last_global: u64,
    /// Global sequences of its messages, in seq order.
    pub(super) globals: Vec<u64>,
}

/// The event store's state, kept in [`MemoryStore`]'s mutex.
#[derive(Debug, Default)]
pub(crate) struct EsState {
    /// Every message by global sequence.
    pub(super) messages: BTreeMap<u64, Message>,
    pub(super) streams: HashMap<String, StreamRow>,
    /// Message id → global sequence.
    pub(super) by_id: HashMap<Uuid, u64>,
    /// Correlation id → global sequences.
    by_correlation: HashMap<Uuid, Vec<u64>>,
    /// Collection → id → document.
    documents: BTreeMap<String, BTreeMap<String, Value>>,
    next_global: u64,
    /// Consumer groups, offsets, workers and scheduled messages ([`super::reactor_store`]).
    pub(super) reactors: super::reactor_store::ReactorState,
}

/// The event store ([`EventStore`]) of a [`MemoryStore`]: messages appended here are staged in
/// that store's outbox in the same atomic step. Cheap to clone.
#[derive(Debug, Clone)]
pub struct MemoryEventStore {
    store: Arc<MemoryStore>,
}

impl MemoryEventStore {
    /// The event store living in `store` (which keeps its outbox).
    pub fn new(store: Arc<MemoryStore>) -> Self {
        Self { store }
    }

    /// The store this event store lives in.
    pub fn store(&self) -> &Arc<MemoryStore> {
        &self.store
    }
}

impl MemoryStore {
    /// The event store living in this store: appended messages are staged in this store's
    /// outbox atomically.
    pub fn event_store(self: &Arc<Self>) -> MemoryEventStore {
        MemoryEventStore::new(Arc::clone(self))
    }
}

pub(super) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn stored(state: &EsState, global: u64) -> Option<StoredMessage> {
    state.messages.get(&global).map(|m| StoredMessage {
        global_seq: global,
        message: m.clone(),
    })
}

impl MemoryEventStore {
    /// Wakes the streamer and the runtime's workers after a commit that stored messages.
    pub(super) fn committed(&self) {
        self.store.staged_wakeup.notify_one();
        self.store.es_wake.send_modify(|v| *v = v.wrapping_add(1));
    }
}

/// Checks and applies `commit` with the store's lock held (`inner`): the body of
/// [`EventStore::commit`], shared with the settlement of claims. Writes nothing on error.
pub(super) fn commit_locked(
    inner: &mut Inner,
    producer: &str,
    commit: &Commit,
) -> Result<Vec<StoredMessage>, EventStoreError> {
    let es = &inner.es;
    let planned = plan_commit(commit, |s| es.streams.get(s).map_or(0, |r| r.seq))?;
    let mut fresh_ids = HashSet::new();
    for m in &planned {
        if es.by_id.contains_key(&m.id()) || !fresh_ids.insert(m.id()) {
            return Err(EventStoreError::DuplicateMessage(m.id()));
        }
    }
    // Checked: from here on nothing fails.
    let now = now_ms();
    let mut out = Vec::with_capacity(planned.len());
    for m in planned {
        let es = &mut inner.es;
        es.next_global += 1;
        let global = es.next_global;
        let row = es
            .streams
            .entry(m.stream_id().to_owned())
            .or_insert_with(|| StreamRow {
                seq: 0,
                updated_at_ms: now,
                last_global: 0,
                globals: Vec::new(),
            });
        row.seq = m.seq();
        row.updated_at_ms = now;
        row.last_global = global;
        row.globals.push(global);
        es.by_id.insert(m.id(), global);
        es.by_correlation
            .entry(m.correlation_id())
            .or_default()
            .push(global);
        es.messages.insert(global, m.clone());
        inner.stage(producer, m.to_record());
        out.push(StoredMessage {
            global_seq: global,
            message: m,
        });
    }
    for op in &commit.sync {
        match op.clone() {
            SyncOp::Put {
                collection,
                id,
                doc,
            } => {
                inner
                    .es
                    .documents
                    .entry(collection)
                    .or_default()
                    .insert(id, doc);
            }
            SyncOp::Delete { collection, id } => {
                if let Some(c) = inner.es.documents.get_mut(&collection) {
                    c.remove(&id);
                }
            }
        }
    }
    Ok(out)
}

#[async_trait]
impl EventStore for MemoryEventStore {
    fn describe(&self) -> String {
        "memory://".to_owned()
    }

    async fn ping(&self) -> Result<(), EventStoreError> {
        Ok(())
    }

    async fn commit(&self, commit: Commit) -> Result<Vec<StoredMessage>, EventStoreError> {
        let out = {
            let mut inner = lock(&self.store.inner);
            let producer = self.store.producer.clone();
            commit_locked(&mut inner, &producer, &commit)?
        };
        if !out.is_empty() {
            self.committed();
        }
        Ok(out)
    }

    async fn read_stream(
        &self,
        stream_id: &str,
        after: u64,
        upto: Option<u64>,
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        let inner = lock(&self.store.inner);
        let es = &inner.es;
        let Some(row) = es.streams.get(stream_id) else {
            return Ok(Vec::new());
        };
        Ok(row
            .globals
            .iter()
            .filter_map(|g| stored(es, *g))
            .filter(|s| s.message.seq() > after && upto.is_none_or(|u| s.message.seq() <= u))
            .collect())
    }

    async fn read_correlation_batch(
        &self,
        message_id: Uuid,
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        let inner = lock(&self.store.inner);
        let es = &inner.es;
        let Some(m) = es.by_id.get(&message_id).and_then(|g| es.messages.get(g)) else {
            return Ok(Vec::new());
        };
        let mut globals = es
            .by_correlation
            .get(&m.correlation_id())
            .cloned()
            .unwrap_or_default();
        globals.sort_unstable();
        Ok(globals.into_iter().filter_map(|g| stored(es, g)).collect())
    }

    async fn read_all(
        &self,
        after_global: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        let inner = lock(&self.store.inner);
        Ok(inner
            .es
            .messages
            .range(after_global + 1..)
            .take(max)
            .map(|(g, m)| StoredMessage {
                global_seq: *g,
                message: m.clone(),
            })
            .collect())
    }

    async fn recent_streams(&self, limit: usize) -> Result<Vec<StreamInfo>, EventStoreError> {
        let inner = lock(&self.store.inner);
        let mut rows: Vec<(&String, &StreamRow)> = inner.es.streams.iter().collect();
        rows.sort_by_key(|r| std::cmp::Reverse(r.1.last_global));
        Ok(rows
            .into_iter()
            .take(limit)
            .map(|(id, r)| StreamInfo {
                stream_id: id.clone(),
                seq: r.seq,
                updated_at_ms: r.updated_at_ms,
            })
            .collect())
    }

    async fn stats(&self) -> Result<EventStoreStats, EventStoreError> {
        let inner = lock(&self.store.inner);
        let es = &inner.es;
        Ok(EventStoreStats {
            stream_count: es.streams.len() as u64,
            message_count: es.messages.len() as u64,
            max_global_seq: es.messages.keys().next_back().copied().unwrap_or(0),
        })
    }

    async fn document(&self, collection: &str, id: &str) -> Result<Option<Value>, EventStoreError> {
        let inner = lock(&self.store.inner);
        Ok(inner
            .es
            .documents
            .get(collection)
            .and_then(|c| c.get(id))
            .cloned())
    }

    async fn documents(&self, collection: &str) -> Result<Vec<(String, Value)>, EventStoreError> {
        let inner = lock(&self.store.inner);
        Ok(inner
            .es
            .documents
            .get(collection)
            .map(|c| c.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default())
    }
}
