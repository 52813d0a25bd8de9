//! The replica ([`ports::Replica`]) in a SQLite database of its own: the embedded default
//! (`rides serve` and `rides demo` sync to a file beside the store).
//!
//! One table, `replica_rides` (the store's columns; `id` is the rowid, so a page is a rowid
//! range), and an index on `(user_id, id)` for "my rides". Opened like the store: WAL mode,
//! one writer connection taking the write lock up front (`BEGIN IMMEDIATE`), a small read
//! pool, a 5 s busy timeout.
//!
//! # Batches
//!
//! An upsert is `INSERT … VALUES (…), (…) … ON CONFLICT (id) DO UPDATE` with every value
//! bound (coordinates travel as `f64` binds, never as text, so they are stored bit for bit),
//! in one transaction: one statement per [`UPSERT_ROWS`] rides. A delete is one statement
//! whatever the number of ids (they travel as one JSON array, `json_each`).

use ports::{ReplicaError, RideRow};
use sqlx::sqlite::SqlitePool;

use super::error::Error;
use crate::sql_replica::{self, sql_replica};

/// Rides per upsert statement: 10 binds each, well below SQLite's 32 766 variables.
const UPSERT_ROWS: usize = 500;

/// The schema, created when missing.
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS replica_rides (
    id                 INTEGER PRIMARY KEY,
    user_id            INTEGER NOT NULL,
    idempotency_key_id INTEGER,
    origin_lat         REAL    NOT NULL,
    origin_lon         REAL    NOT NULL,
    target_lat         REAL    NOT NULL,
    target_lon         REAL    NOT NULL,
    distance_mm        INTEGER NOT NULL CHECK (distance_mm >= 0),
    charge_id          TEXT,
    created_at_ms      INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS replica_rides_user ON replica_rides (user_id, id);";

/// Ride ids as a JSON array.
const DELETE: &str = "DELETE FROM replica_rides WHERE id IN (SELECT value FROM json_each($1))";

/// A sqlx error, translated once (see [`super::error`]).
fn db(e: impl Into<Error>) -> ReplicaError {
    e.into().into()
}

/// The upsert of `n` rides.
fn upsert_sql(n: usize) -> String {
    let row = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
    let rows = vec![row; n].join(", ");
    format!(
        "{}VALUES {rows}{}",
        sql_replica::INSERT,
        sql_replica::ON_CONFLICT
    )
}

/// The replica in its own SQLite database. Cheap to clone (pools inside).
#[derive(Clone)]
pub struct SqliteReplica {
    url: String,
    writer: SqlitePool,
    reader: SqlitePool,
}

impl std::fmt::Debug for SqliteReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteReplica")
            .field("url", &self.url)
            .finish_non_exhaustive()
    }
}

impl SqliteReplica {
    /// Opens (creating if missing) the database at `url` and its table.
    ///
    /// `url` is `sqlite://<path>` or `sqlite::memory:` (a private database that lives as long
    /// as the replica). Use a file of its own, not the store's.
    ///
    /// # Errors
    /// [`ReplicaError::Other`] for a URL that is not a SQLite URL or a failed schema
    /// statement; [`ReplicaError::Unavailable`] naming the path when the file cannot be
    /// opened.
    pub async fn open(url: &str) -> Result<Self, ReplicaError> {
        let (writer, reader) =
            super::open_pools(url, "replica", false)
                .await
                .map_err(|e| match e {
                    super::OpenError::Bad(m) => ReplicaError::Other(m),
                    super::OpenError::Unavailable(m) => ReplicaError::Unavailable(m),
                })?;
        let replica = Self {
            url: url.to_owned(),
            writer,
            reader,
        };
        let mut tx = replica.write().await?;
        sqlx::raw_sql(SCHEMA).execute(&mut *tx).await.map_err(db)?;
        tx.commit().await.map_err(db)?;
        Ok(replica)
    }

    /// A write transaction on the single writer connection (`BEGIN IMMEDIATE`).
    async fn write(&self) -> Result<sqlx::Transaction<'static, sqlx::Sqlite>, ReplicaError> {
        self.writer.begin_with("BEGIN IMMEDIATE").await.map_err(db)
    }

    /// The read pool.
    fn reader(&self) -> &SqlitePool {
        &self.reader
    }
}

sql_replica!(SqliteReplica, reader, {
    fn describe(&self) -> String {
        self.url.clone()
    }

    async fn ping(&self) -> Result<(), ReplicaError> {
        sqlx::query("SELECT 1")
            .execute(self.reader())
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn upsert(&self, rides: &[RideRow]) -> Result<(), ReplicaError> {
        if rides.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        // Rows are applied in slice order, so a later row for the same id wins.
        for chunk in rides.chunks(UPSERT_ROWS) {
            let sql = upsert_sql(chunk.len());
            let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
            for r in chunk {
                q = q
                    .bind(r.id)
                    .bind(r.user_id)
                    .bind(r.idempotency_key_id)
                    .bind(r.params.origin_lat())
                    .bind(r.params.origin_lon())
                    .bind(r.params.target_lat())
                    .bind(r.params.target_lon())
                    .bind(sql_replica::distance(r)?)
                    .bind(r.charge_id.as_deref())
                    .bind(r.created_at_ms);
            }
            q.execute(&mut *tx).await.map_err(db)?;
        }
        tx.commit().await.map_err(db)
    }

    async fn delete(&self, ids: &[i64]) -> Result<(), ReplicaError> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut tx = self.write().await?;
        sqlx::query(DELETE)
            .bind(serde_json::Value::from(ids).to_string())
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        tx.commit().await.map_err(db)
    }
});
