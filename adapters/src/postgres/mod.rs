//! Postgres: the canonical store, its outbox and the consumers' state, plus the
//! Postgres-only log (the outbox table *is* the log; no streamer needed).
//! [`PostgresReplica`] is a secondary datastore ([`ports::Replica`]) in another database or
//! schema (`replica.rs`). [`PostgresEventStore`] ([`PostgresStore::event_store`]) is the event
//! store ([`ports::EventStore`]) in the store's schema, staging every message in the store's
//! outbox in the same transaction (`event_store.rs`, which also explains its global order).
//!
//! ```text
//!  run_phase (key row locked)        sequencer (one at a time)          readers
//!  ┌──────────────────────┐          ┌──────────────────────────┐       ┌─────────────────┐
//!  │ ride, audit, key     │ commit   │ advisory xact lock (try) │       │ WHERE seq > pos │
//!  │ INSERT outbox seq=∅  │────────▶ │ rows seq IS NULL by id   │──────▶│ ORDER BY seq    │
//!  │ pg_notify(channel)   │          │ seq := counter + 1, 2, …  │commit │                 │
//!  └──────────────────────┘          └──────────────────────────┘       └─────────────────┘
//! ```
//!
//! # Why seqs are assigned after commit (DESIGN.md invariant 4)
//!
//! A `BIGSERIAL` is handed out at insert and becomes visible at commit, so a reader polling
//! `WHERE id > last` can pass over a row whose transaction commits after a row with a larger
//! id was read. Here a phase inserts its records with `seq` NULL; the *sequencer* (run at the
//! start of [`Outbox::peek`](ports::Outbox::peek), [`Log::read`](ports::Log::read) and
//! [`Log::lag`](ports::Log::lag); the server-side function `outbox_sequence` of migration
//! 0002, so a run is one round trip) takes, in one transaction, a transaction-scoped advisory
//! lock (`pg_try_advisory_xact_lock`; if another sequencer holds it, it skips), locks up to
//! 1000 committed unsequenced rows in id order, gives them consecutive seqs from a one-row
//! counter, and commits. Sequencer runs are serialized and each makes its whole range visible
//! atomically, after every earlier range; a row is invisible to the sequencer until its
//! writer commits. So a reader that has read up to seq `S` never later sees a new row with a
//! seq `<= S`, whatever order the writers commit in: zero skips. A rolled-back phase's rows
//! never become visible: zero phantoms. `integration-tests/tests/postgres_concurrency.rs`
//! checks both with 16 writers, random commit delays and rollbacks.
//!
//! The failure mode of every gap-safe scheme is a *stall*. In this scheme it is narrow: a
//! long-running transaction does **not** hold back the rows of transactions that commit
//! after it (they are sequenced as soon as they commit); only that transaction's own rows
//! wait, and they get a seq, after everything sequenced so far, when it finally commits.
//! Schemes that read below `pg_snapshot_xmin` instead hold back *every* later commit. Either
//! way operators want to see it: [`PostgresLog::held_back`] reports the age of the oldest
//! open transaction that holds staged records (it has written to this store's outbox), or
//! of the one holding the sequencer's lock, whichever is older; transactions that write
//! elsewhere hold nothing back and are not counted.
//!
//! # Producer sequence
//!
//! A record's producer is the store's name (`meta.producer`, `pg-` + 8 hex digits, generated
//! by the migration) and its producer seq is its log seq, unless it was appended from another
//! store's outbox ([`Log::append`](ports::Log::append)), in which case it keeps both.
//!
//! # Staging
//!
//! A phase's records, a [`stage`](ports::Outbox::stage) and a [`Log::append`](ports::Log::append)
//! batch are inserted by one `INSERT … SELECT … FROM UNNEST($1::text[], …) WITH ORDINALITY
//! ORDER BY ord` (arrays bound once per column), so ids, hence seqs, follow the batch order and
//! a 1000-record append is one round trip. Outside a phase the same statement also runs the
//! `pg_notify` (a data-modifying CTE), so it needs no explicit transaction at all.
//!
//! # Isolation
//!
//! Phases ([`begin`](ports::RideStore::begin) and [`run_phase`](ports::RideStore::run_phase))
//! run at `READ COMMITTED` and start by locking their idempotency key row with
//! `SELECT … FOR UPDATE`. This is as safe as `SERIALIZABLE` for them because of their shape:
//!
//! - the key row is the **only** row a phase reads and decides on (`KeyRecord::decide`, the
//!   `expected` recovery point). `FOR UPDATE` returns its latest committed version and holds
//!   it until commit, so two phases of one key run one after the other and the second decides
//!   on the first one's result: a racing `begin` answers `InProgress` (the key is locked), a
//!   racing `run_phase` finds the key past `expected` and fails with
//!   [`StoreError::Conflict`], writing nothing. Never two rides or two charges for one key.
//! - everything else a phase does is a write that reads nothing back: the ride insert (unique
//!   `rides.idempotency_key_id` as a second guard), the charge update of the key's own ride,
//!   the audit row, the outbox rows, the key transition. Two `begin`s creating the same new
//!   key collide on `UNIQUE (user_id, idempotency_key)`: the loser gets `Conflict`.
//!
//! `SERIALIZABLE`, which the adapter used first, added nothing but false positives: on tiny
//! tables the planner scans sequentially, SSI then takes relation-level predicate locks, and
//! with 16 concurrent requests for *different* keys about two phases in three failed with
//! SQLSTATE 40001 ("read/write dependencies"); such a failure surfaces at `COMMIT`, which
//! also made sqlx send a stray `ROLLBACK` afterwards. Under the row-lock scheme requests with
//! different keys never wait for or fail because of each other. No phase is retried
//! internally; a lost race is reported as `Conflict`, as the trait asks, and the payment call
//! happens between phases with its own idempotency key.
//!
//! # Errors, wake-ups
//!
//! SQLSTATE 40001, 40P01 and unique violations become [`StoreError::Conflict`] (see
//! `error.rs`), connection problems `Unavailable`. Readers and
//! the streamer wait on `LISTEN` (see `notify.rs`), or poll every 100 ms with
//! [`PgOptions::listen`] `false`. Times are stored as BIGINT milliseconds.

pub mod baseline;
mod config;
mod consumer;
mod error;
mod event_store;
mod log;
mod notify;
mod outbox;
mod replica;
mod store;

use std::sync::Arc;

use ports::StoreError;
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection};

pub use config::PgOptions;
pub use event_store::PostgresEventStore;
pub use log::PostgresLog;
pub use replica::PostgresReplica;

use config::Target;
use error::PgError;
use notify::Wakeup;

use crate::sql_error::Kind;

/// The embedded migrations (`adapters/migrations/postgres`).
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// The Postgres canonical store: implements [`ports::RideStore`], [`ports::Outbox`] and
/// [`ports::ConsumerStore`]. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct PostgresStore {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pool: PgPool,
    producer: String,
    describe: String,
    schema: Option<String>,
    wake: Wakeup,
    /// Ride ids taken from the `rides` sequence ahead of use (see `store.rs`).
    ride_ids: std::sync::Mutex<Vec<i64>>,
}

impl std::fmt::Debug for PostgresStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresStore")
            .field("url", &self.inner.describe)
            .field("producer", &self.inner.producer)
            .finish()
    }
}

impl PostgresStore {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/database`), runs the
    /// migrations unless `opts.migrate` is `false`, and loads the producer name.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached; [`StoreError::Other`]
    /// for a bad URL or schema name, a failed migration, or an unmigrated database. Messages
    /// never contain the password.
    pub async fn connect(url: &str, opts: PgOptions) -> Result<Self, StoreError> {
        Self::open(url, opts).await.map_err(|e| {
            let unavailable = e.kind() == Kind::Unavailable;
            match StoreError::from(e) {
                StoreError::Unavailable(m) if unavailable => {
                    StoreError::Unavailable(config::redact(&format!("cannot connect: {m}"), url))
                }
                other => other,
            }
        })
    }

    async fn open(url: &str, opts: PgOptions) -> Result<Self, PgError> {
        let target = Target::new(url, &opts)?;
        // One direct connection first: an unreachable server fails at once (the pool would
        // retry until its acquire timeout).
        let mut conn = PgConnection::connect_with(&target.connect).await?;
        if opts.migrate
            && let Some(schema) = &opts.schema
        {
            // The name was checked to be a plain identifier.
            let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
            sqlx::query(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await?;
        }
        // Closing politely is best effort; the pool makes its own connections.
        let _ = conn.close().await;
        let pool = target.pool(&opts);
        if opts.migrate {
            MIGRATOR.run(&pool).await?;
        }
        let producer: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'producer'")
                .fetch_optional(&pool)
                .await
                .map_err(|e| match PgError::from(e) {
                    e if e.kind() == Kind::Other => e.context(
                        "the database is not migrated (connect with migrate: true or run \
                         PostgresStore::migrate)",
                    ),
                    other => other,
                })?;
        let producer =
            producer.ok_or_else(|| PgError::Other("meta.producer is missing".to_owned()))?;
        let wake = Wakeup::new(
            opts.listen,
            target.channel.clone(),
            target.listener_pool(),
            pool.clone(),
        );
        Ok(Self {
            inner: Arc::new(Inner {
                pool,
                ride_ids: std::sync::Mutex::new(Vec::new()),
                producer,
                describe: target.describe,
                schema: opts.schema,
                wake,
            }),
        })
    }

    /// Runs the embedded migrations (idempotent).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the server cannot be reached; [`StoreError::Other`]
    /// when a migration fails.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        MIGRATOR
            .run(&self.inner.pool)
            .await
            .map_err(|e| StoreError::from(PgError::from(e)))
    }

    /// The Postgres-only log over this store's outbox, sharing its pool.
    pub fn log(&self) -> PostgresLog {
        PostgresLog::from_store(self.clone())
    }

    /// The schema this store lives in, if one was given.
    pub fn schema(&self) -> Option<&str> {
        self.inner.schema.as_deref()
    }

    /// The connection pool (tests stage records in their own transactions with it).
    #[doc(hidden)]
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// Stages `records` in the caller's transaction exactly as a phase does (seq NULL, plus
    /// the `NOTIFY`): for tests that drive the outbox with raw transactions.
    ///
    /// # Errors
    /// As a phase's statements.
    #[doc(hidden)]
    pub async fn stage_in(
        &self,
        conn: &mut sqlx::PgConnection,
        records: &[domain::NewRecord],
    ) -> Result<(), StoreError> {
        outbox::stage(conn, self.inner.wake.channel(), records).await?;
        Ok(())
    }
}
