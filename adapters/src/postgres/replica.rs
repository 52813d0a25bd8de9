//! The replica ([`ports::Replica`]) on Postgres: another database, or another schema of the
//! store's database.
//!
//! One table, `replica_rides` (the store's columns, `DOUBLE PRECISION` coordinates, which
//! travel as binary `float8` and so round-trip bit for bit), with an index on
//! `(user_id, id)` for "my rides". [`PostgresReplica::connect`] creates the schema (when
//! given) and the table if missing; the schema is reached through `search_path`, as the
//! store does.
//!
//! # Batches
//!
//! Every call is ONE statement in a transaction of its own, whatever the batch size: an
//! upsert is `INSERT … SELECT … FROM UNNEST($1::bigint[], …) … ON CONFLICT (id) DO UPDATE`
//! (one array per column), a delete `… WHERE id = ANY($1)`.
//!
//! # Concurrent writers
//!
//! `ON CONFLICT DO UPDATE` refuses a statement that touches one row twice, so a batch is
//! reduced to the last row of each id first. Both writes then lock their rows in increasing
//! id order (the upsert's rows are sorted, the delete locks `ORDER BY id … FOR UPDATE`), so
//! two writers with overlapping batches wait for each other instead of deadlocking. A
//! deadlock or serialization failure that happens anyway is [`ReplicaError::Unavailable`]:
//! retrying the batch is safe.

use std::collections::BTreeMap;

use ports::{ReplicaError, RideRow};
use sqlx::postgres::PgPool;
use sqlx::{Connection, PgConnection};

use super::PgOptions;
use super::config::{self, Target};
use super::error::PgError;
use crate::sql_error::Kind;
use crate::sql_replica::{self, sql_replica};

/// Pool size: the sync consumer writes one batch at a time; the rest is for readers.
const MAX_CONNECTIONS: u32 = 4;

/// The table, created when missing (in the schema `search_path` names).
const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS replica_rides (
    id                 BIGINT PRIMARY KEY,
    user_id            BIGINT NOT NULL,
    idempotency_key_id BIGINT NULL,
    origin_lat         DOUBLE PRECISION NOT NULL,
    origin_lon         DOUBLE PRECISION NOT NULL,
    target_lat         DOUBLE PRECISION NOT NULL,
    target_lon         DOUBLE PRECISION NOT NULL,
    distance_mm        BIGINT NOT NULL CHECK (distance_mm >= 0),
    charge_id          TEXT NULL,
    created_at_ms      BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS replica_rides_user ON replica_rides (user_id, id)";

/// `bigint[]` of ride ids.
const DELETE: &str = "DELETE FROM replica_rides WHERE id IN \
     (SELECT id FROM replica_rides WHERE id = ANY($1) ORDER BY id FOR UPDATE)";

/// The rows of an upsert: one array per column, in [`sql_replica::INSERT`]'s order.
static UPSERT: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "{}SELECT * FROM UNNEST($1::bigint[], $2::bigint[], $3::bigint[], $4::float8[], \
         $5::float8[], $6::float8[], $7::float8[], $8::bigint[], $9::text[], $10::bigint[]) \
         AS r (id, user_id, idempotency_key_id, origin_lat, origin_lon, target_lat, target_lon, \
         distance_mm, charge_id, created_at_ms) ORDER BY r.id{}",
        sql_replica::INSERT,
        sql_replica::ON_CONFLICT
    )
});

/// A sqlx error, translated once (see [`super::error`]).
fn db(e: impl Into<PgError>) -> ReplicaError {
    e.into().into()
}

/// The replica in a Postgres database or schema. Cheap to clone (a pool inside).
#[derive(Clone)]
pub struct PostgresReplica {
    pool: PgPool,
    describe: String,
}

impl std::fmt::Debug for PostgresReplica {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresReplica")
            .field("url", &self.describe)
            .finish_non_exhaustive()
    }
}

impl PostgresReplica {
    /// Connects to `url` (`postgres://user[:password]@host[:port]/database`) and creates the
    /// table, in `schema` when given (created if missing; a plain identifier), else in the
    /// server's `search_path`.
    ///
    /// # Errors
    /// [`ReplicaError::Unavailable`] when the server cannot be reached;
    /// [`ReplicaError::Other`] for a bad URL or schema name, or a failed schema statement.
    /// Messages never contain the password.
    pub async fn connect(url: &str, schema: Option<&str>) -> Result<Self, ReplicaError> {
        Self::open(url, schema).await.map_err(|e| {
            let unavailable = e.kind() == Kind::Unavailable;
            match ReplicaError::from(e) {
                ReplicaError::Unavailable(m) if unavailable => {
                    ReplicaError::Unavailable(config::redact(&format!("cannot connect: {m}"), url))
                }
                ReplicaError::Unavailable(m) => ReplicaError::Unavailable(config::redact(&m, url)),
                ReplicaError::Other(m) => ReplicaError::Other(config::redact(&m, url)),
            }
        })
    }

    async fn open(url: &str, schema: Option<&str>) -> Result<Self, PgError> {
        let opts = PgOptions {
            schema: schema.map(str::to_owned),
            max_connections: MAX_CONNECTIONS,
            listen: false,
            migrate: true,
        };
        let target = Target::new(url, &opts)?;
        // One direct connection first: an unreachable server fails at once (the pool would
        // retry until its acquire timeout).
        let mut conn = PgConnection::connect_with(&target.connect).await?;
        if let Some(schema) = schema {
            // `Target::new` checked that the name is a plain identifier.
            let sql = format!("CREATE SCHEMA IF NOT EXISTS \"{schema}\"");
            sqlx::raw_sql(sqlx::AssertSqlSafe(sql))
                .execute(&mut conn)
                .await?;
        }
        sqlx::raw_sql(SCHEMA).execute(&mut conn).await?;
        // Closing politely is best effort; the pool makes its own connections.
        let _ = conn.close().await;
        Ok(Self {
            pool: target.pool(&opts),
            describe: target.describe,
        })
    }

    /// The pool.
    fn pool(&self) -> &PgPool {
        &self.pool
    }
}

/// The columns of an upsert, one array each, from the last row of every id, by id.
#[derive(Default)]
struct Columns<'a> {
    id: Vec<i64>,
    user_id: Vec<i64>,
    idempotency_key_id: Vec<Option<i64>>,
    origin_lat: Vec<f64>,
    origin_lon: Vec<f64>,
    target_lat: Vec<f64>,
    target_lon: Vec<f64>,
    distance_mm: Vec<i64>,
    charge_id: Vec<Option<&'a str>>,
    created_at_ms: Vec<i64>,
}

impl<'a> Columns<'a> {
    fn of(rides: &'a [RideRow]) -> Result<Self, ReplicaError> {
        // A later row for the same id wins; the map also sorts by id (the lock order).
        let latest: BTreeMap<i64, &RideRow> = rides.iter().map(|r| (r.id, r)).collect();
        let mut c = Self::default();
        for r in latest.into_values() {
            c.id.push(r.id);
            c.user_id.push(r.user_id);
            c.idempotency_key_id.push(r.idempotency_key_id);
            c.origin_lat.push(r.params.origin_lat());
            c.origin_lon.push(r.params.origin_lon());
            c.target_lat.push(r.params.target_lat());
            c.target_lon.push(r.params.target_lon());
            c.distance_mm.push(sql_replica::distance(r)?);
            c.charge_id.push(r.charge_id.as_deref());
            c.created_at_ms.push(r.created_at_ms);
        }
        Ok(c)
    }
}

sql_replica!(PostgresReplica, pool, {
    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn ping(&self) -> Result<(), ReplicaError> {
        sqlx::query("SELECT 1")
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn upsert(&self, rides: &[RideRow]) -> Result<(), ReplicaError> {
        if rides.is_empty() {
            return Ok(());
        }
        let c = Columns::of(rides)?;
        sqlx::query(sqlx::AssertSqlSafe(UPSERT.as_str()))
            .bind(c.id)
            .bind(c.user_id)
            .bind(c.idempotency_key_id)
            .bind(c.origin_lat)
            .bind(c.origin_lon)
            .bind(c.target_lat)
            .bind(c.target_lon)
            .bind(c.distance_mm)
            .bind(c.charge_id)
            .bind(c.created_at_ms)
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn delete(&self, ids: &[i64]) -> Result<(), ReplicaError> {
        if ids.is_empty() {
            return Ok(());
        }
        sqlx::query(DELETE)
            .bind(ids)
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(())
    }
});
