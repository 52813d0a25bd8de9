//! The event store ([`ports::EventStore`]) on SQLite, in the same file as a [`SqliteStore`].
//!
//! [`SqliteEventStore`] (from [`SqliteStore::event_store`]) shares the store's pools: every
//! commit is one `BEGIN IMMEDIATE` transaction on the store's single writer connection, and
//! stages every message it stores in the store's outbox (`staged_records`, with the same
//! insert as a phase) inside that transaction, then wakes the streamer as a phase does. So a
//! message is stored if and only if its outbox record is. Reads use the read pool.
//!
//! Tables (migration `20261210000000_event_store.sql`, prefix `es_`): `es_messages` (UUIDs
//! and JSON as text, unique id, unique `(stream_id, seq)`, an index on `(correlation_id,
//! global_seq)`), `es_streams` (last seq, update time, last global seq, indexed for
//! `recent_streams`), `es_global` (the global counter) and `es_documents` (the documents of
//! sync ops).
//!
//! # Global order
//!
//! SQLite has one writer, and every write transaction holds the write lock from its first
//! statement to its commit, so transactions are serialized: global seqs taken from the
//! `es_global` counter become visible in the order they were handed out, and
//! [`ports::EventStore::read_all`] can read `global_seq > n` without ever skipping a later
//! commit (invariant 4), exactly as the outbox's `AUTOINCREMENT` sequences. The counter (rather
//! than `AUTOINCREMENT`) lets both SQL dialects share one commit body
//! (`crate::sql_event_store`, which lists the steps of a commit). For the same reason a
//! commit never meets a concurrent append: conflicts are found by the port's rule
//! ([`ports::event_store::plan_commit`]) on the stream's last seq read inside the transaction.

use sqlx::{Sqlite, SqlitePool, Transaction};

use ports::EventStoreError;

use super::SqliteStore;
use super::error::Error;
use crate::sql_event_store::{EsSql, es_sql, sql_event_store};
use crate::sql_reactor_store::{RxSql, rx_sql, sql_reactor_store};

/// The statements (UUIDs and JSON are stored as text).
static SQL: EsSql = es_sql!(uuid = "", json = "");

fn db(e: sqlx::Error) -> EventStoreError {
    Error::from(e).into()
}

/// The event store ([`ports::EventStore`]) living in a [`SqliteStore`]'s database: messages
/// appended here are staged in that store's outbox in the same transaction. Cheap to clone.
#[derive(Debug, Clone)]
pub struct SqliteEventStore {
    store: SqliteStore,
}

impl SqliteStore {
    /// The event store living in this store's database, sharing its connections: appended
    /// messages are staged in this store's outbox atomically.
    pub fn event_store(&self) -> SqliteEventStore {
        SqliteEventStore {
            store: self.clone(),
        }
    }
}

impl SqliteEventStore {
    /// The store this event store lives in (and whose outbox carries its messages).
    pub fn store(&self) -> &SqliteStore {
        &self.store
    }

    fn describe_es(&self) -> String {
        self.store.inner.url.clone()
    }

    fn reader_es(&self) -> &SqlitePool {
        self.store.reader()
    }

    /// The store's write transaction: its one writer connection, `BEGIN IMMEDIATE`.
    async fn begin_es(&self) -> Result<Transaction<'static, Sqlite>, EventStoreError> {
        self.store.write().await.map_err(Into::into)
    }

    /// Stages `records` in the outbox as a phase does.
    async fn stage_es(
        &self,
        tx: &mut Transaction<'static, Sqlite>,
        records: &[domain::NewRecord],
    ) -> Result<(), EventStoreError> {
        super::outbox::insert_staged_rows(tx, records)
            .await
            .map_err(Into::into)
    }

    /// Wakes the streamer, as after a phase that staged records, and the reactor workers.
    fn committed_es(&self) {
        self.store.inner.staged.notify_one();
        self.store
            .inner
            .es_wake
            .send_modify(|v| *v = v.wrapping_add(1));
    }

    fn wake_version_es(&self) -> u64 {
        *self.store.inner.es_wake.borrow()
    }

    /// In-process wake-ups: SQLite is used by one process.
    async fn wait_wake_es(&self, seen: u64, timeout: std::time::Duration) -> u64 {
        let mut rx = self.store.inner.es_wake.subscribe();
        if *rx.borrow_and_update() != seen {
            return *rx.borrow();
        }
        let _ = tokio::time::timeout(timeout, rx.changed()).await;
        *rx.borrow()
    }
}

sql_event_store!(SqliteEventStore, Sqlite, SQL);

/// The reactor-store statements (the single writer serializes claims: no row locks).
static RX: RxSql = rx_sql!(claim_lock = "", scheduled_lock = "", json = "", uuid = "");

sql_reactor_store!(SqliteEventStore, Sqlite, RX);
