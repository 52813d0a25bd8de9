//! SQLite: the canonical store, its outbox and the consumers' state, in one file (sqlx).
//!
//! [`SqliteStore`] implements [`ports::RideStore`], [`ports::Outbox`] and
//! [`ports::ConsumerStore`]. It is the embedded default: `rides demo` needs no server.
//! [`SqliteReplica`] implements [`ports::Replica`] in a database file of its own.
//! [`SqliteEventStore`] ([`SqliteStore::event_store`]) implements [`ports::EventStore`] in the
//! store's own file, staging every message in the store's outbox in the same transaction
//! (`event_store.rs`).
//!
//! # Concurrency (DESIGN.md section 8)
//!
//! SQLite allows one writer at a time. A *deferred* transaction (`BEGIN`) that reads first and
//! writes later must upgrade its lock, and when another connection wrote in between the upgrade
//! fails at once with "database is locked": the busy timeout does not help. So:
//!
//! - The file is in WAL mode: readers never block the writer and the writer never blocks them.
//! - Every connection has a 5 s busy timeout, foreign keys on, and `synchronous = NORMAL`. In
//!   WAL mode that is durable against a process crash (`kill -9`), which is what we promise;
//!   only a power loss can lose the last transactions.
//! - Every write runs in a transaction that starts with `BEGIN IMMEDIATE`, which takes the
//!   write lock up front (waiting up to the busy timeout) instead of upgrading later, and goes
//!   through a pool of exactly one connection, so writers of this process queue in the pool
//!   (fairly, without spinning in the busy handler) and writers of other processes queue on
//!   the file lock. Reads use a separate pool of several connections.
//!
//! # Sequencing the outbox
//!
//! Staged records get their sequence from `staged_records.seq INTEGER PRIMARY KEY
//! AUTOINCREMENT`, assigned at insert. Because every write transaction holds the write lock
//! from its first statement to its commit, transactions are serialized: a transaction that
//! inserts sequence `n` commits before the next one can even start, so sequences become
//! visible in exactly the order they were assigned. A reader therefore never sees sequence `n`
//! while a smaller one is still to come: the [`ports::Outbox`] contract holds without the
//! snapshot tricks Postgres needs (invariant 4). `AUTOINCREMENT` (rather than plain `rowid`)
//! guarantees that a sequence is never reused after the highest records were removed.
//!
//! The producer name is generated once per database file (`sqlite-` and 8 random hex digits,
//! stored in the `meta` table), so two SQLite stores feeding one log never share sequences.
//! The streamer's [`ports::Route`] is another `meta` row (`route`, as JSON).
//!
//! # Wake-ups
//!
//! [`ports::Outbox::wait_staged`] waits on a [`tokio::sync::Notify`] that a committed phase
//! with staged records (or a committed [`ports::Outbox::stage`]) notifies; writers in other processes are noticed when the caller's
//! timeout expires (the streamer's bounded poll).
//!
//! # URLs
//!
//! `sqlite://<path>` (the file is created if missing; relative paths are relative to the
//! working directory) and `sqlite::memory:` (a private in-memory database, for tests: one
//! connection serves reads and writes, and the data lives as long as the store).

pub mod baseline;
mod consumer;
mod error;
mod event_store;
mod outbox;
mod replica;
mod store;

use std::str::FromStr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use ports::StoreError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{Sqlite, Transaction};
use tokio::sync::Notify;

pub use self::event_store::SqliteEventStore;
pub use self::replica::SqliteReplica;

use self::error::Error;

/// How long a connection waits for the write lock before giving up with
/// [`StoreError::Unavailable`].
pub const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// Connections of the read pool (the write pool always has exactly one).
const READ_CONNECTIONS: u32 = 4;

/// Attempts at migrating after the first failure (see [`SqliteStore::migrate`]).
const MIGRATE_ATTEMPTS: u32 = 5;

/// The embedded schema, from `adapters/migrations/sqlite/`.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// Options of [`SqliteStore::connect_with`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SqliteOptions {
    /// Apply the embedded migrations while connecting (what [`SqliteStore::connect`] does).
    pub migrate: bool,
}

impl Default for SqliteOptions {
    fn default() -> Self {
        Self { migrate: true }
    }
}

/// The SQLite store: rides, idempotency keys, outbox and consumer state in one file.
///
/// Cheap to clone: clones share the connection pools and the staging wake-up.
#[derive(Clone)]
pub struct SqliteStore {
    inner: Arc<Inner>,
}

struct Inner {
    /// The URL as given (SQLite URLs carry no secrets).
    url: String,
    /// Exactly one connection: every write transaction goes through it.
    writer: SqlitePool,
    /// Reads (the same pool as `writer` for an in-memory database).
    reader: SqlitePool,
    /// The producer name, known once the schema exists.
    producer: OnceLock<String>,
    /// Notified after a committed phase staged records.
    staged: Notify,
    /// Bumped after event-store commits that stored messages and group starts: the
    /// reactor runtime's wake-ups.
    es_wake: tokio::sync::watch::Sender<u64>,
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("url", &self.inner.url)
            .finish_non_exhaustive()
    }
}

/// Why [`open_pools`] failed: a bad URL, or a file that cannot be opened.
pub(crate) enum OpenError {
    /// Not a SQLite URL, or one SQLite cannot parse.
    Bad(String),
    /// The file cannot be opened (the message names it).
    Unavailable(String),
}

/// Opens the pools of the SQLite database at `url` (`what` names it in errors): one writer
/// connection (every write goes through it, SQLite has one writer) and a few readers, in WAL
/// mode; for an in-memory database, one connection that never closes, shared by both.
pub(crate) async fn open_pools(
    url: &str,
    what: &str,
    foreign_keys: bool,
) -> Result<(sqlx::SqlitePool, sqlx::SqlitePool), OpenError> {
    if !url.starts_with("sqlite:") {
        return Err(OpenError::Bad(format!(
            "not a SQLite URL: {url:?} (expected sqlite://<path> or sqlite::memory:)"
        )));
    }
    let in_memory = url.contains(":memory:") || url.contains("mode=memory");
    let connect = SqliteConnectOptions::from_str(url)
        .map_err(|e| OpenError::Bad(format!("bad SQLite URL {url:?}: {e}")))?
        .create_if_missing(true)
        .busy_timeout(BUSY_TIMEOUT)
        .foreign_keys(foreign_keys)
        .synchronous(SqliteSynchronous::Normal);
    let path = connect.get_filename().display().to_string();
    let unavailable =
        |e: sqlx::Error| OpenError::Unavailable(format!("cannot open SQLite {what} {path}: {e}"));
    if in_memory {
        // One connection that never closes: closing it would drop the database.
        let pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(connect)
            .await
            .map_err(unavailable)?;
        return Ok((pool.clone(), pool));
    }
    let connect = connect.journal_mode(SqliteJournalMode::Wal);
    // The writer connects first, so WAL mode is set before any reader opens the file. On a
    // new file opened by several processes at once, switching it to WAL can meet a lock
    // that the busy timeout does not wait for (SQLITE_BUSY at once): try again shortly.
    let mut attempt = 0u64;
    let writer = loop {
        match SqlitePoolOptions::new()
            .max_connections(1)
            .connect_with(connect.clone())
            .await
        {
            Ok(pool) => break pool,
            Err(e) if attempt < 10 && e.to_string().contains("database is locked") => {
                attempt += 1;
                tokio::time::sleep(std::time::Duration::from_millis(20 * attempt)).await;
            }
            Err(e) => return Err(unavailable(e)),
        }
    };
    let reader = SqlitePoolOptions::new()
        .max_connections(READ_CONNECTIONS)
        .connect_with(connect)
        .await
        .map_err(unavailable)?;
    Ok((writer, reader))
}

impl SqliteStore {
    /// Opens (creating if missing) the database at `url` and applies the migrations.
    ///
    /// `url` is `sqlite://<path>` or `sqlite::memory:`.
    ///
    /// # Errors
    /// [`StoreError::Other`] for a URL that is not a SQLite URL or a failed migration;
    /// [`StoreError::Unavailable`] naming the path when the file cannot be opened.
    pub async fn connect(url: &str) -> Result<Self, StoreError> {
        Self::connect_with(url, SqliteOptions::default()).await
    }

    /// Opens (creating if missing) the database at `url`, applying the migrations only when
    /// `options.migrate` is set.
    ///
    /// # Errors
    /// As [`SqliteStore::connect`]; also [`StoreError::Other`] when the database was already
    /// migrated by a newer version of this program.
    pub async fn connect_with(url: &str, options: SqliteOptions) -> Result<Self, StoreError> {
        let (writer, reader) = open_pools(url, "database", true)
            .await
            .map_err(|e| match e {
                OpenError::Bad(m) => StoreError::Other(m),
                OpenError::Unavailable(m) => StoreError::Unavailable(m),
            })?;

        let store = Self {
            inner: Arc::new(Inner {
                url: url.to_owned(),
                writer,
                reader,
                producer: OnceLock::new(),
                staged: Notify::new(),
                es_wake: tokio::sync::watch::channel(0).0,
            }),
        };
        if options.migrate {
            store.migrate().await?;
        } else {
            // Without migrations the schema may not exist yet; `migrate` loads it later.
            let _ = store.load_producer().await;
        }
        Ok(store)
    }

    /// Applies the embedded migrations that are not applied yet, then makes sure the store
    /// has its producer name.
    ///
    /// # Errors
    /// [`StoreError::Other`] when a migration fails or the database was migrated by a newer
    /// version; [`StoreError::Unavailable`] when the database cannot be reached.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        // Two processes started at once on a new file (`rides serve` and `rides api`) both
        // see a migration as not applied; the second one's fails on what the first one's
        // created, and rolls back. Once the first is done nothing is left to apply: retry.
        let mut attempt = 0u32;
        loop {
            match MIGRATOR.run(&self.inner.writer).await {
                Ok(()) => break,
                Err(e) if attempt >= MIGRATE_ATTEMPTS => {
                    let context = format!("cannot migrate SQLite database {}", self.inner.url);
                    return Err(StoreError::from(crate::sql_error::DbError::migration(
                        crate::sql_error::Kind::Other,
                        context,
                        e,
                    )));
                }
                Err(e) => {
                    attempt += 1;
                    tracing::debug!(error = %e, attempt, "migration failed; another process may be migrating: retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(100 * u64::from(attempt)))
                        .await;
                }
            }
        }
        self.load_producer().await.map_err(Into::into)
    }

    /// A cheap health check (`SELECT 1`).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the database cannot be reached.
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(&self.inner.reader)
            .await
            .map(|_| ())
            .map_err(|e| Error::from(e).into())
    }

    /// Reads the producer name, generating it on first use.
    async fn load_producer(&self) -> Result<(), Error> {
        if self.inner.producer.get().is_some() {
            return Ok(());
        }
        let candidate = format!("sqlite-{:08x}", rand::random::<u32>());
        let mut tx = self.write().await?;
        sqlx::query("INSERT OR IGNORE INTO meta (key, value) VALUES ('producer', ?)")
            .bind(&candidate)
            .execute(&mut *tx)
            .await?;
        let name: String = sqlx::query_scalar("SELECT value FROM meta WHERE key = 'producer'")
            .fetch_one(&mut *tx)
            .await?;
        tx.commit().await?;
        let _ = self.inner.producer.set(name);
        Ok(())
    }

    /// Starts a write transaction: the single writer connection, `BEGIN IMMEDIATE`.
    async fn write(&self) -> Result<Transaction<'static, Sqlite>, Error> {
        Ok(self.inner.writer.begin_with("BEGIN IMMEDIATE").await?)
    }

    /// The read pool.
    fn reader(&self) -> &SqlitePool {
        &self.inner.reader
    }
}

#[cfg(test)]
mod tests;
