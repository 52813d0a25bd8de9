//! The event store ([`ports::EventStore`]) on Postgres, in the same schema as a
//! [`PostgresStore`].
//!
//! [`PostgresEventStore`] (from [`PostgresStore::event_store`]) shares the store's pool.
//! Every commit is one `READ COMMITTED` transaction that stages every message it stores in
//! the store's outbox with the store's own phase staging (rows with `seq` NULL, numbered by
//! the outbox sequencer once committed), and after the commit the store announces the
//! records as it does after a phase (`notify.rs`: this process's waiters at once, other
//! processes through one `pg_notify` outside the transaction). So a message is stored if and
//! only if its outbox record is.
//!
//! Tables (migration `0010_event_store.sql`): `es_messages` (unique UUID id, unique
//! `(stream_id, seq)`, JSONB metadata and payload, an index on `(correlation_id,
//! global_seq)`), `es_streams` (last seq, update time, last global seq, indexed for
//! `recent_streams`), `es_global` (the global counter) and `es_documents` (the documents of
//! sync ops). sourced lets the tables be named with a prefix and a schema; here they live
//! in the store's schema (the URL's `?schema=`, [`super::PgOptions::schema`]) under the fixed
//! prefix `es_`, created by the store's migrations, so two event stores are told apart by
//! their schema.
//!
//! # Concurrency
//!
//! A commit locks the rows of the streams it appends to (an upsert that creates a missing
//! row, `ON CONFLICT DO UPDATE ... RETURNING seq`, in stream-id order), then decides with
//! the port's rule ([`ports::event_store::plan_commit`]) on those locked seqs. Two appends
//! to one stream therefore run one after the other and the second decides on the first one's
//! result: `append_next_to_stream` never loses a race, and `append_to_stream` gets a typed
//! [`ports::EventStoreError::Conflict`] naming the actual last seq. The unique index on
//! `(stream_id, seq)` stays as a second guard; a unique violation while inserting a message
//! is reported, after the rollback, as `DuplicateMessage` when the id is stored, else as
//! `Conflict`. `SERIALIZABLE` is not needed: the locked stream rows (and the global counter)
//! are the only rows a commit reads and decides on.
//!
//! # Global order (DESIGN.md invariant 4)
//!
//! A `BIGSERIAL` is handed out at insert and becomes visible at commit, so a reader of
//! `global_seq > n` could pass over a message that commits after one with a larger number.
//! Three ways out were weighed:
//!
//! - **Read below the snapshot's xmin** (an `xid8` column set to `pg_current_xact_id()`,
//!   readers take only rows older than `pg_snapshot_xmin(pg_current_snapshot())`, ordered by
//!   `(xid, id)`): no lock for writers, but the order is a pair, not the port's single `u64`
//!   (`StoredMessage::global_seq`), a commit cannot return its global seqs, and any long
//!   transaction in the database (even one that never touches the event store) holds back
//!   every reader.
//! - **A sequencer after commit**, as the outbox's (`mod.rs`): numbers assigned by a
//!   serialized job once rows are committed. Writers never wait for each other, but a commit
//!   could not return its messages' global seqs (the contract asks it to) without waiting for
//!   a sequencer run, and `read_all` would have to run the sequencer first.
//! - **A counter locked until commit** (chosen): a commit takes its seqs with `UPDATE
//!   es_global SET last_global_seq = last_global_seq + n RETURNING ...` *after* its checks,
//!   and keeps the row locked until it commits. Postgres releases a transaction's locks only
//!   after its commit is visible, so the next commit gets its numbers only once every smaller
//!   number is visible (or rolled back, which returns them): numbers become visible in order,
//!   without gaps, and `read_all` is a plain index range scan. The price is that event-store
//!   commits serialize on the counter for the tail of their transaction (a few inserts and
//!   the commit itself). Unlike a phase, a commit runs no caller code inside its transaction
//!   ([`ports::EventStore::commit`] is one call), so that tail is short and bounded, and no
//!   other transaction of the database can hold readers back. The tail includes the commit's
//!   WAL flush, so event-store commits do not share flushes (no group commit): their
//!   throughput is about one commit per flush whatever the number of writers (about 200
//!   two-message commits per second on the 2-core development machine, debug build, 1 or 8
//!   writers). Phases never touch the counter and are not slowed. Should event-store write
//!   throughput matter, the outbox's scheme (sequence after commit, `commit` running one
//!   sequencer pass before it returns) is the way to lift it.

use sqlx::postgres::PgPool;
use sqlx::{Postgres, Transaction};

use ports::EventStoreError;

use super::PostgresStore;
use super::error::PgError;
use crate::sql_event_store::{EsSql, es_sql, sql_event_store};
use crate::sql_reactor_store::{RxSql, rx_sql, sql_reactor_store};

/// The statements (UUIDs and JSON travel as text and are cast by the server).
static SQL: EsSql = es_sql!(uuid = "::uuid", json = "::jsonb");

fn db(e: sqlx::Error) -> EventStoreError {
    PgError::from(e).into()
}

/// The event store ([`ports::EventStore`]) living in a [`PostgresStore`]'s schema: messages
/// appended here are staged in that store's outbox in the same transaction. Cheap to clone.
#[derive(Debug, Clone)]
pub struct PostgresEventStore {
    store: PostgresStore,
}

impl PostgresStore {
    /// The event store living in this store's schema, sharing its pool: appended messages are
    /// staged in this store's outbox atomically.
    pub fn event_store(&self) -> PostgresEventStore {
        PostgresEventStore {
            store: self.clone(),
        }
    }
}

impl PostgresEventStore {
    /// The store this event store lives in (and whose outbox carries its messages).
    pub fn store(&self) -> &PostgresStore {
        &self.store
    }

    fn describe_es(&self) -> String {
        self.store.inner.describe.clone()
    }

    fn reader_es(&self) -> &PgPool {
        &self.store.inner.pool
    }

    /// A `READ COMMITTED` transaction, named explicitly as phases do.
    async fn begin_es(&self) -> Result<Transaction<'static, Postgres>, EventStoreError> {
        self.store
            .inner
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(db)
    }

    /// Stages `records` unsequenced, as a phase does (no `NOTIFY` inside the transaction).
    async fn stage_es(
        &self,
        tx: &mut Transaction<'static, Postgres>,
        records: &[domain::NewRecord],
    ) -> Result<(), EventStoreError> {
        super::outbox::stage_in_phase(tx, records)
            .await
            .map_err(Into::into)
    }

    /// Announces the staged records, as after a phase (this process's waiters at once,
    /// other processes through `pg_notify`).
    fn committed_es(&self) {
        self.store.inner.wake.announce();
    }

    fn wake_version_es(&self) -> u64 {
        *self.store.inner.wake.subscribe().borrow()
    }

    /// Waits on the store's wake-ups (`LISTEN` on its channel, or polling every 100 ms).
    async fn wait_wake_es(&self, seen: u64, timeout: std::time::Duration) -> u64 {
        let wake = &self.store.inner.wake;
        let mut rx = wake.subscribe();
        if *rx.borrow_and_update() != seen {
            return *rx.borrow();
        }
        wake.wait(&mut rx, tokio::time::Instant::now() + timeout)
            .await;
        *rx.borrow()
    }
}

sql_event_store!(PostgresEventStore, Postgres, SQL);

/// The reactor-store statements: claims and promotions skip rows other transactions hold.
static RX: RxSql = rx_sql!(
    claim_lock = " FOR UPDATE OF o SKIP LOCKED",
    scheduled_lock = " FOR UPDATE SKIP LOCKED",
    json = "::jsonb",
    uuid = "::uuid"
);

sql_reactor_store!(PostgresEventStore, Postgres, RX);
