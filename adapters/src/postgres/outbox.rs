//! The outbox table: staging (inside phases), the sequencer, and the streamer's view.
//!
//! The streamer's [`Route`] is one row of the `meta` table (`name = 'route'`, the route as
//! JSON): written atomically, kept across restarts, and read by `peek` in the same statement
//! (a scalar subquery), so routing costs no extra round trip.

use std::time::Duration;

use async_trait::async_trait;
use domain::{LogRecord, NewRecord};
use ports::{Outbox, Route, StoreError};
use sqlx::postgres::PgRow;
use sqlx::{PgConnection, Row};
use tokio::time::Instant;
use uuid::Uuid;

use super::PostgresStore;
use super::error::PgError;

/// Rows sequenced per sequencer run at most.
const SEQUENCER_BATCH: i64 = 1000;

/// Keys of the sequencer's advisory lock: a constant ("RIDE") and the current schema, so
/// stores in different schemas of one database never wait for each other.
const SEQUENCER_LOCK: &str =
    "SELECT pg_try_advisory_xact_lock(1380533317, hashtext(current_schema()))";

/// The columns every read selects, in the order [`record_from_row`] expects.
pub(crate) const RECORD_COLUMNS: &str = "seq, producer, producer_seq, record_id::text AS record_id, \
     stream, key, kind, payload, correlation_id::text AS correlation_id, \
     causation_id::text AS causation_id, recorded_at_ms";

/// Inserts `records` unsequenced and schedules the wake-up for commit. Runs inside the
/// caller's transaction.
pub(crate) async fn stage(
    conn: &mut PgConnection,
    channel: &str,
    records: &[NewRecord],
) -> Result<(), PgError> {
    insert(conn, records.iter().map(|r| (r, None))).await?;
    if !records.is_empty() {
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(channel)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Inserts records with an optional (producer, producer seq) origin.
pub(crate) async fn insert<'a>(
    conn: &mut PgConnection,
    records: impl Iterator<Item = (&'a NewRecord, Option<(&'a str, u64)>)>,
) -> Result<(), PgError> {
    for (r, origin) in records {
        let producer_seq = origin
            .map(|(_, s)| i64::try_from(s))
            .transpose()
            .map_err(|_| PgError::Other("producer seq out of range".to_owned()))?;
        sqlx::query(
            "INSERT INTO outbox (producer, producer_seq, record_id, stream, key, kind, payload, \
             correlation_id, causation_id, recorded_at_ms) \
             VALUES ($1, $2, $3::uuid, $4, $5, $6, $7, $8::uuid, $9::uuid, $10)",
        )
        .bind(origin.map(|(p, _)| p))
        .bind(producer_seq)
        .bind(r.id.to_string())
        .bind(&r.stream)
        .bind(&r.key)
        .bind(&r.kind)
        .bind(&r.payload)
        .bind(r.correlation_id.map(|u| u.to_string()))
        .bind(r.causation_id.map(|u| u.to_string()))
        .bind(r.recorded_at_ms)
        .execute(&mut *conn)
        .await?;
    }
    Ok(())
}

fn parse_uuid(s: Option<String>, what: &str) -> Result<Option<Uuid>, PgError> {
    s.map(|s| Uuid::parse_str(&s))
        .transpose()
        .map_err(|e| PgError::Other(format!("bad {what} in outbox: {e}")))
}

/// A sequenced outbox row as a record; `producer` names this store's own records.
pub(crate) fn record_from_row(row: &PgRow, producer: &str) -> Result<LogRecord, PgError> {
    let seq: i64 = row.try_get("seq")?;
    let own_producer: Option<String> = row.try_get("producer")?;
    let producer_seq: Option<i64> = row.try_get("producer_seq")?;
    let id = parse_uuid(row.try_get("record_id")?, "record_id")?
        .ok_or_else(|| PgError::Other("record without id".to_owned()))?;
    let pseq = producer_seq.unwrap_or(seq);
    Ok(LogRecord {
        id,
        producer: own_producer.unwrap_or_else(|| producer.to_owned()),
        seq: u64::try_from(pseq).map_err(|_| PgError::Other(format!("negative seq {pseq}")))?,
        stream: row.try_get("stream")?,
        key: row.try_get("key")?,
        kind: row.try_get("kind")?,
        payload: row.try_get("payload")?,
        correlation_id: parse_uuid(row.try_get("correlation_id")?, "correlation_id")?,
        causation_id: parse_uuid(row.try_get("causation_id")?, "causation_id")?,
        recorded_at_ms: row.try_get("recorded_at_ms")?,
    })
}

impl PostgresStore {
    /// The sequencer: gives committed unsequenced rows consecutive seqs, in id order, in one
    /// transaction, one sequencer at a time (see the module docs). Returns how many rows it
    /// sequenced (0 also when another sequencer is running).
    pub(crate) async fn sequence(&self) -> Result<u64, PgError> {
        // One cheap round trip (partial index) before the four of a sequencer run. A row that
        // commits right after this check is simply sequenced by the next run.
        let pending: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM outbox WHERE seq IS NULL)")
                .fetch_one(&self.inner.pool)
                .await?;
        if !pending {
            return Ok(0);
        }
        let mut tx = self.inner.pool.begin().await?;
        let locked: bool = sqlx::query_scalar(SEQUENCER_LOCK)
            .fetch_one(&mut *tx)
            .await?;
        if !locked {
            return Ok(0);
        }
        let ids: Vec<i64> = sqlx::query_scalar(
            "SELECT id FROM outbox WHERE seq IS NULL ORDER BY id LIMIT $1 FOR UPDATE",
        )
        .bind(SEQUENCER_BATCH)
        .fetch_all(&mut *tx)
        .await?;
        if ids.is_empty() {
            return Ok(0);
        }
        let n = i64::try_from(ids.len()).unwrap_or(SEQUENCER_BATCH);
        let first: i64 = sqlx::query_scalar(
            "UPDATE outbox_counter SET next_seq = next_seq + $1 RETURNING next_seq - $1",
        )
        .bind(n)
        .fetch_one(&mut *tx)
        .await?;
        sqlx::query(
            "UPDATE outbox o SET seq = $1 + a.ord - 1 \
             FROM unnest($2::bigint[]) WITH ORDINALITY AS a(id, ord) WHERE o.id = a.id",
        )
        .bind(first)
        .bind(&ids)
        .execute(&mut *tx)
        .await?;
        // Readers in other processes may have skipped sequencing because we held the lock.
        sqlx::query("SELECT pg_notify($1, '')")
            .bind(self.inner.wake.channel())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        self.inner.wake.bump();
        Ok(ids.len() as u64)
    }

    async fn peek_inner(&self, max: usize) -> Result<Vec<LogRecord>, PgError> {
        self.sequence().await?;
        let sql = format!(
            "SELECT {RECORD_COLUMNS} FROM outbox WHERE seq IS NOT NULL \
             AND seq > coalesce((SELECT (value::jsonb ->> 'after_seq')::bigint FROM meta \
                                 WHERE name = 'route'), 0) \
             ORDER BY seq LIMIT $1"
        );
        let rows = sqlx::query(sqlx::AssertSqlSafe(sql))
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter()
            .map(|r| record_from_row(r, &self.inner.producer))
            .collect()
    }

    /// Stages `records` in a transaction of their own, exactly as a phase stages its records.
    async fn stage_inner(&self, records: &[NewRecord]) -> Result<(), PgError> {
        let mut tx = self.inner.pool.begin().await?;
        stage(&mut tx, self.inner.wake.channel(), records).await?;
        tx.commit().await?;
        self.inner.wake.bump();
        Ok(())
    }

    async fn route_inner(&self) -> Result<Option<Route>, PgError> {
        let value: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE name = 'route'")
                .fetch_optional(&self.inner.pool)
                .await?;
        value
            .map(|v| {
                serde_json::from_str(&v)
                    .map_err(|e| PgError::Other(format!("bad route {v:?} in meta: {e}")))
            })
            .transpose()
    }

    async fn set_route_inner(&self, route: &Route) -> Result<(), PgError> {
        // Seqs are BIGINT: a larger `after_seq` could not be compared.
        if i64::try_from(route.after_seq).is_err() {
            return Err(PgError::Other(format!(
                "route after_seq {} is out of range",
                route.after_seq
            )));
        }
        let value = serde_json::to_string(route)
            .map_err(|e| PgError::Other(format!("cannot encode the route: {e}")))?;
        sqlx::query(
            "INSERT INTO meta (name, value) VALUES ('route', $1) \
             ON CONFLICT (name) DO UPDATE SET value = EXCLUDED.value",
        )
        .bind(value)
        .execute(&self.inner.pool)
        .await?;
        Ok(())
    }

    pub(crate) async fn staged_inner(&self) -> Result<u64, PgError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox")
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or_default())
    }
}

#[async_trait]
impl Outbox for PostgresStore {
    fn producer(&self) -> String {
        self.inner.producer.clone()
    }

    async fn peek(&self, max: usize) -> Result<Vec<LogRecord>, StoreError> {
        Ok(self.peek_inner(max).await?)
    }

    async fn remove(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        // The seqs peek handed out are `coalesce(producer_seq, seq)`: the log seq for this
        // store's own records, the original producer seq for appended ones.
        let seqs: Vec<i64> = seqs.iter().filter_map(|s| i64::try_from(*s).ok()).collect();
        let done = sqlx::query(
            "DELETE FROM outbox WHERE coalesce(producer_seq, seq) = ANY($1) \
             AND seq IS NOT NULL",
        )
        .bind(&seqs)
        .execute(&self.inner.pool)
        .await
        .map_err(PgError::from)?;
        Ok(done.rows_affected())
    }

    async fn staged(&self) -> Result<u64, StoreError> {
        Ok(self.staged_inner().await?)
    }

    async fn wait_staged(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut rx = self.inner.wake.subscribe();
        loop {
            if self.staged_inner().await.is_ok_and(|n| n > 0) {
                return;
            }
            if Instant::now() >= deadline || self.inner.wake.wait(&mut rx, deadline).await {
                return;
            }
        }
    }
    async fn stage(&self, records: &[NewRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        Ok(self.stage_inner(records).await?)
    }

    async fn route(&self) -> Result<Option<Route>, StoreError> {
        Ok(self.route_inner().await?)
    }

    async fn set_route(&self, route: &Route) -> Result<(), StoreError> {
        Ok(self.set_route_inner(route).await?)
    }
}
