//! The outbox table: staging (inside phases), the sequencer, and the streamer's view.
//!
//! The streamer's [`Route`] is one row of the `meta` table (`name = 'route'`, the route as
//! JSON): written atomically, kept across restarts, and read by `peek` in the same statement
//! (a scalar subquery), so routing costs no extra round trip.

use std::time::Duration;

use async_trait::async_trait;
use domain::{LogRecord, NewRecord};
use ports::{Outbox, Published, Route, StoreError};
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use sqlx::{PgConnection, Row};
use tokio::time::Instant;
use uuid::Uuid;

use super::PostgresStore;
use super::error::PgError;
use crate::sql_rows::SqlDialect;

/// Rows sequenced per sequencer run at most.
const SEQUENCER_BATCH: i64 = 1000;

/// The first key of the sequencer's transaction-scoped advisory lock (migrations 0002 and
/// 0003: `pg_try_advisory_xact_lock(1380533317, hashtext(current_schema()))`); the second is
/// the schema's hash, so stores in different schemas never share a sequencer.
pub(crate) const SEQUENCER_LOCK_CLASS: i64 = 1_380_533_317;

/// The columns every read selects, in the order [`record_from_row`] expects.
pub(crate) const RECORD_COLUMNS: &str = "seq, producer, producer_seq, record_id::text AS record_id, \
     stream, key, kind, payload, correlation_id::text AS correlation_id, \
     causation_id::text AS causation_id, recorded_at_ms";

/// The outbox rows of claimed batches (migration 0007) with their seqs: `first_seq + k - 1`
/// for the id at ordinality k. Selects `c` (the batch), `o` (the row) and `seq`.
pub(crate) const CLAIMED_ROWS: &str = "outbox_claimed c \
     CROSS JOIN LATERAL unnest(c.ids) WITH ORDINALITY AS u(id, ord) \
     JOIN outbox o ON o.id = u.id";

/// The seq of a claimed row in [`CLAIMED_ROWS`].
pub(crate) const CLAIMED_SEQ: &str = "(c.first_seq + u.ord - 1)";

/// Unsequenced rows that no claimed batch names: what the sequencers take next.
pub(crate) const UNCLAIMED: &str =
    "seq IS NULL AND id NOT IN (SELECT unnest(cl.ids) FROM outbox_claimed cl)";

/// The sequenced records above `after`, at most `limit` of the rows (both SQL expressions):
/// the rows the row sequencer numbered in place, and the rows of claimed batches (migration
/// 0007), with the `outbox` table's columns in its order. The caller orders and limits the
/// union. Claimed batches are few (the streamer removes them once sent), so their part is
/// read whole.
pub(crate) fn sequenced_above(after: &str, limit: &str) -> String {
    format!(
        "(SELECT * FROM outbox WHERE seq > {after} ORDER BY seq LIMIT {limit}) \
         UNION ALL \
         (SELECT o.id, {CLAIMED_SEQ} AS seq, o.producer, o.producer_seq, o.record_id, o.stream, \
                 o.key, o.kind, o.payload, o.correlation_id, o.causation_id, o.recorded_at_ms \
          FROM {CLAIMED_ROWS} WHERE c.last_seq > {after} AND {CLAIMED_SEQ} > {after})"
    )
}

/// How many sequenced records lie above `after` (an SQL expression), rows and claimed.
pub(crate) fn count_above(after: &str) -> String {
    format!(
        "(SELECT count(*) FROM outbox WHERE seq > {after}) \
         + (SELECT count(*) FROM {CLAIMED_ROWS} \
            WHERE c.last_seq > {after} AND {CLAIMED_SEQ} > {after})"
    )
}

/// Takes the claimed rows that `cte` (a CTE of `first_seq` per deleted row) lists off
/// their batches' `remaining`, as CTEs (`counts`, `emptied`, `shrunk`) to append after it: a
/// batch whose rows are all gone is deleted, any other one counts down. (Postgres runs
/// data-modifying CTEs to completion whether or not the main query reads them.)
pub(crate) fn claimed_countdown(cte: &str) -> String {
    format!(
        "counts AS (SELECT first_seq, count(*) AS n FROM {cte} GROUP BY first_seq), \
         emptied AS (DELETE FROM outbox_claimed c USING counts k \
                     WHERE c.first_seq = k.first_seq AND c.remaining <= k.n RETURNING 1), \
         shrunk AS (UPDATE outbox_claimed c SET remaining = c.remaining - k.n FROM counts k \
                    WHERE c.first_seq = k.first_seq AND c.remaining > k.n RETURNING 1)"
    )
}

/// The route's `after_seq` (0 without a route), as a scalar subquery.
const ROUTE_AFTER: &str =
    "coalesce((SELECT (value::jsonb ->> 'after_seq')::bigint FROM meta WHERE name = 'route'), 0)";

/// [`Outbox::peek_after`]: `$1` = max, `$2` = the caller's cursor.
static PEEK_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let after = format!("greatest($2, {ROUTE_AFTER})");
    format!(
        "SELECT {RECORD_COLUMNS} FROM ({}) s ORDER BY seq LIMIT $1",
        sequenced_above(&after, "$1")
    )
});

/// [`Outbox::remove`]: exactly the records whose handed-out sequence is in `$1`, rows
/// sequenced in place and rows of claimed batches, in one statement. Only the batches that
/// can hold a named seq are joined: those overlapping the named range, and those holding
/// records appended from another store (named by their producer seq). Each removed record
/// is noted in the `published` index (`outbox_published`, migration 0012; `$2` = this
/// store's producer name, for its own records) by the same statement.
static REMOVE_SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH named AS (SELECT DISTINCT s AS seq FROM unnest($1::bigint[]) s), \
         gone AS ( \
           DELETE FROM outbox WHERE seq IS NOT NULL \
           AND ((producer_seq IS NULL AND seq = ANY($1)) OR producer_seq = ANY($1)) \
           RETURNING coalesce(producer, $2) AS producer, coalesce(producer_seq, seq) AS seq, \
                     kind, key), \
         gone_claimed AS ( \
           DELETE FROM outbox o2 USING ( \
             SELECT c.first_seq, o.id, n.seq AS pseq FROM {CLAIMED_ROWS} \
             JOIN named n ON n.seq = coalesce(o.producer_seq, {CLAIMED_SEQ}) \
             WHERE c.foreign \
                OR (c.last_seq >= (SELECT min(seq) FROM named) \
                    AND c.first_seq <= (SELECT max(seq) FROM named))) h \
           WHERE o2.id = h.id \
           RETURNING h.first_seq, coalesce(o2.producer, $2) AS producer, h.pseq, o2.kind, o2.key), \
         {}, \
         noted AS ( \
           INSERT INTO outbox_published (producer, seq, kind, key) \
           SELECT producer, seq, kind, key FROM gone \
           UNION ALL SELECT producer, pseq, kind, key FROM gone_claimed \
           ON CONFLICT (producer, seq) DO NOTHING RETURNING 1) \
         SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM gone_claimed)",
        claimed_countdown("gone_claimed")
    )
});

/// Inserts `records` unsequenced, in a phase's transaction, without `NOTIFY` (the store
/// announces after the commit: see [`super::notify`]).
///
/// A phase stages one to three records: a plain multi-row `VALUES` (one prepared statement
/// per row count, cached by the connection) costs the server less than unnesting arrays.
pub(crate) async fn stage_in_phase(
    conn: &mut PgConnection,
    records: &[NewRecord],
) -> Result<(), PgError> {
    if records.len() > PHASE_VALUES_MAX {
        return insert(conn, records.iter().map(Staged::from), None).await;
    }
    let sql = &PHASE_INSERT_SQL[records.len()];
    let mut q = sqlx::query(sqlx::AssertSqlSafe(sql.as_str()));
    for r in records {
        q = crate::sql_rows::bind_staged!(q, r);
    }
    q.execute(conn).await?;
    Ok(())
}

/// The most records a phase stages with a `VALUES` statement.
const PHASE_VALUES_MAX: usize = 4;

/// `INSERT … VALUES` for 0..=[`PHASE_VALUES_MAX`] records (index = row count).
static PHASE_INSERT_SQL: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    (0..=PHASE_VALUES_MAX)
        .map(|n| SqlDialect::Postgres.insert_records(1, n))
        .collect()
});

/// Inserts `records` unsequenced and schedules the wake-up for commit, in one statement.
/// Runs inside the caller's transaction.
pub(crate) async fn stage(
    conn: &mut PgConnection,
    channel: &str,
    records: &[NewRecord],
) -> Result<(), PgError> {
    insert(conn, records.iter().map(Staged::from), Some(channel)).await
}

/// What [`insert`] writes of one record, borrowed from a [`NewRecord`] (staged by this store)
/// or a [`LogRecord`] (appended from another store's outbox): no copy of the record on its
/// way into the statement's arrays.
pub(crate) struct Staged<'a> {
    id: Uuid,
    stream: &'a str,
    key: &'a str,
    kind: &'a str,
    payload: &'a serde_json::Value,
    correlation_id: Option<Uuid>,
    causation_id: Option<Uuid>,
    recorded_at_ms: i64,
    /// `(producer, producer seq)` of a record appended from another store.
    origin: Option<(&'a str, u64)>,
}

impl<'a> From<&'a NewRecord> for Staged<'a> {
    fn from(r: &'a NewRecord) -> Self {
        Self {
            id: r.id,
            stream: &r.stream,
            key: &r.key,
            kind: &r.kind,
            payload: &r.payload,
            correlation_id: r.correlation_id,
            causation_id: r.causation_id,
            recorded_at_ms: r.recorded_at_ms,
            origin: None,
        }
    }
}

impl<'a> Staged<'a> {
    /// A record appended from another store: it keeps its producer and producer seq.
    pub(crate) fn appended(r: &'a LogRecord) -> Self {
        Self {
            id: r.id,
            stream: &r.stream,
            key: &r.key,
            kind: &r.kind,
            payload: &r.payload,
            correlation_id: r.correlation_id,
            causation_id: r.causation_id,
            recorded_at_ms: r.recorded_at_ms,
            origin: Some((&r.producer, r.seq)),
        }
    }
}

/// The outbox columns [`insert`] writes, as arrays (one element per record, in order),
/// borrowing the records' strings and payloads.
struct Columns<'a> {
    producer: Vec<Option<&'a str>>,
    producer_seq: Vec<Option<i64>>,
    record_id: Vec<String>,
    stream: Vec<&'a str>,
    key: Vec<&'a str>,
    kind: Vec<&'a str>,
    payload: Vec<Json<&'a serde_json::Value>>,
    correlation_id: Vec<Option<String>>,
    causation_id: Vec<Option<String>>,
    recorded_at_ms: Vec<i64>,
}

/// One `INSERT … SELECT … FROM UNNEST(arrays) WITH ORDINALITY ORDER BY ord`: the whole batch
/// in one round trip, ids (hence seqs) in the order of the batch. UUIDs travel as text and
/// are cast by the server, as everywhere in this adapter.
const INSERT_SQL: &str = "INSERT INTO outbox (producer, producer_seq, record_id, stream, key, \
       kind, payload, correlation_id, causation_id, recorded_at_ms) \
     SELECT r.producer, r.producer_seq, r.record_id::uuid, r.stream, r.key, r.kind, r.payload, \
       r.correlation_id::uuid, r.causation_id::uuid, r.recorded_at_ms \
     FROM UNNEST($1::text[], $2::bigint[], $3::text[], $4::text[], $5::text[], $6::text[], \
                 $7::jsonb[], $8::text[], $9::text[], $10::bigint[]) \
       WITH ORDINALITY AS r(producer, producer_seq, record_id, stream, key, kind, payload, \
                            correlation_id, causation_id, recorded_at_ms, ord) \
     ORDER BY r.ord";

/// Inserts records (with their origin when appended from another store) as one statement;
/// with `notify`, the same statement also runs `pg_notify(channel, '')` (delivered at
/// commit), so a batch outside a transaction is atomic and costs one round trip.
pub(crate) async fn insert<'a, 'c, E>(
    conn: E,
    records: impl ExactSizeIterator<Item = Staged<'a>>,
    notify: Option<&str>,
) -> Result<(), PgError>
where
    E: sqlx::Executor<'c, Database = sqlx::Postgres>,
{
    let n = records.len();
    let mut c = Columns {
        producer: Vec::with_capacity(n),
        producer_seq: Vec::with_capacity(n),
        record_id: Vec::with_capacity(n),
        stream: Vec::with_capacity(n),
        key: Vec::with_capacity(n),
        kind: Vec::with_capacity(n),
        payload: Vec::with_capacity(n),
        correlation_id: Vec::with_capacity(n),
        causation_id: Vec::with_capacity(n),
        recorded_at_ms: Vec::with_capacity(n),
    };
    for r in records {
        let producer_seq = r
            .origin
            .map(|(_, s)| i64::try_from(s))
            .transpose()
            .map_err(|_| PgError::Other("producer seq out of range".to_owned()))?;
        c.producer.push(r.origin.map(|(p, _)| p));
        c.producer_seq.push(producer_seq);
        c.record_id.push(r.id.to_string());
        c.stream.push(r.stream);
        c.key.push(r.key);
        c.kind.push(r.kind);
        c.payload.push(Json(r.payload));
        c.correlation_id
            .push(r.correlation_id.map(|u| u.to_string()));
        c.causation_id.push(r.causation_id.map(|u| u.to_string()));
        c.recorded_at_ms.push(r.recorded_at_ms);
    }
    if c.record_id.is_empty() {
        return Ok(());
    }
    let sql = match notify {
        // A data-modifying CTE runs to completion even though the outer query ignores it.
        Some(_) => format!("WITH staged AS ({INSERT_SQL}) SELECT pg_notify($11, '')"),
        None => INSERT_SQL.to_owned(),
    };
    let mut query = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(c.producer)
        .bind(c.producer_seq)
        .bind(c.record_id)
        .bind(c.stream)
        .bind(c.key)
        .bind(c.kind)
        .bind(c.payload)
        .bind(c.correlation_id)
        .bind(c.causation_id)
        .bind(c.recorded_at_ms);
    if let Some(channel) = notify {
        query = query.bind(channel);
    }
    query.execute(conn).await?;
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
    ///
    /// The whole run is the server-side function `outbox_sequence` (migration 0002), called
    /// as one statement, hence in a transaction of its own: one round trip, and when nothing
    /// is unsequenced it returns before taking the lock.
    pub(crate) async fn sequence(&self) -> Result<u64, PgError> {
        let n: i64 = sqlx::query_scalar("SELECT outbox_sequence($1, $2)")
            .bind(SEQUENCER_BATCH)
            .bind(self.inner.wake.channel())
            .fetch_one(&self.inner.pool)
            .await?;
        if n > 0 {
            self.inner.wake.bump();
        }
        Ok(u64::try_from(n).unwrap_or_default())
    }

    /// The claim sequencer (`outbox_claim`, migrations 0005 and 0007): numbers up to
    /// [`SEQUENCER_BATCH`] committed staged rows as ONE claimed-batch row (their ids) instead
    /// of one update per row, unless claimed batches above `after_seq` already hold a batch. Same
    /// lock, same counter and same order as [`Self::sequence`]; returns how many it numbered.
    async fn claim(&self, after_seq: i64) -> Result<u64, PgError> {
        let n: i64 = sqlx::query_scalar("SELECT outbox_claim($1, $2)")
            .bind(SEQUENCER_BATCH)
            .bind(after_seq)
            .fetch_one(&self.inner.pool)
            .await?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    async fn peek_inner(&self, after_seq: u64, max: usize) -> Result<Vec<LogRecord>, PgError> {
        // Seqs are BIGINT: above i64::MAX there is nothing.
        let after_seq = i64::try_from(after_seq).unwrap_or(i64::MAX);
        self.claim(after_seq).await?;
        let rows = sqlx::query(sqlx::AssertSqlSafe(PEEK_SQL.as_str()))
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .bind(after_seq)
            .fetch_all(&self.inner.pool)
            .await?;
        rows.iter()
            .map(|r| record_from_row(r, &self.inner.producer))
            .collect()
    }

    /// Stages `records` in a transaction of their own, exactly as a phase stages its records.
    /// One statement (insert + `NOTIFY`), so it needs no explicit transaction.
    async fn stage_inner(&self, records: &[NewRecord]) -> Result<(), PgError> {
        let channel = self.inner.wake.channel();
        insert(
            &self.inner.pool,
            records.iter().map(Staged::from),
            Some(channel),
        )
        .await?;
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

    /// Whether [`Outbox::peek`] would find anything: committed rows the sequencer has not
    /// numbered yet, or rows above the route. Two index probes (a `count(*)` reads the whole
    /// table), and false on the Postgres-only log once the route has passed everything, so a
    /// waiting streamer really waits there.
    async fn peekable(&self) -> Result<bool, PgError> {
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT EXISTS (SELECT 1 FROM outbox WHERE {UNCLAIMED}) \
                     OR EXISTS (SELECT 1 FROM outbox WHERE seq > {ROUTE_AFTER}) \
                     OR EXISTS (SELECT 1 FROM outbox_claimed WHERE last_seq > {ROUTE_AFTER})"
            )
        });
        Ok(sqlx::query_scalar(sqlx::AssertSqlSafe(SQL.as_str()))
            .fetch_one(&self.inner.pool)
            .await?)
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
        Ok(self.peek_inner(0, max).await?)
    }

    async fn peek_after(&self, after_seq: u64, max: usize) -> Result<Vec<LogRecord>, StoreError> {
        Ok(self.peek_inner(after_seq, max).await?)
    }

    async fn remove(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        // The seqs peek handed out are `coalesce(producer_seq, seq)`: the log seq for this
        // store's own records, the original producer seq for appended ones. One statement:
        // the unique index on `seq`, or the partial index on `producer_seq` (migration 0003),
        // and the claimed batches.
        let seqs: Vec<i64> = seqs.iter().filter_map(|s| i64::try_from(*s).ok()).collect();
        let done: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(REMOVE_SQL.as_str()))
            .bind(&seqs)
            .bind(&self.inner.producer)
            .fetch_one(&self.inner.pool)
            .await
            .map_err(PgError::from)?;
        Ok(u64::try_from(done).unwrap_or_default())
    }

    async fn published(
        &self,
        producer: &str,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<Vec<Published>, StoreError> {
        let clamp = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT seq, kind, key FROM outbox_published \
             WHERE producer = $1 AND seq BETWEEN $2 AND $3 ORDER BY seq",
        )
        .bind(producer)
        .bind(clamp(from_seq))
        .bind(clamp(to_seq))
        .fetch_all(&self.inner.pool)
        .await
        .map_err(PgError::from)?;
        Ok(rows
            .into_iter()
            .map(|(seq, kind, key)| Published {
                producer: producer.to_owned(),
                seq: u64::try_from(seq).unwrap_or_default(),
                kind,
                key,
            })
            .collect())
    }

    async fn forget_published(&self, producer: &str, below_seq: u64) -> Result<u64, StoreError> {
        let below = i64::try_from(below_seq).unwrap_or(i64::MAX);
        let done = sqlx::query("DELETE FROM outbox_published WHERE producer = $1 AND seq < $2")
            .bind(producer)
            .bind(below)
            .execute(&self.inner.pool)
            .await
            .map_err(PgError::from)?;
        Ok(done.rows_affected())
    }

    /// Inserted like records appended from another store: they keep their producer and
    /// producer seq (which `peek` hands out and `remove` names), ordered by the store's own.
    async fn restage(&self, records: &[LogRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let seqs: Vec<i64> = records
            .iter()
            .filter_map(|r| i64::try_from(r.seq).ok())
            .collect();
        let producers: Vec<&str> = records.iter().map(|r| r.producer.as_str()).collect();
        // A record still staged (same producer and producer seq, or this store's own seq)
        // stays as it is.
        let staged: Vec<(String, i64)> = sqlx::query_as(
            "SELECT coalesce(producer, $3), coalesce(producer_seq, seq) FROM outbox \
             WHERE coalesce(producer_seq, seq) = ANY($1) AND coalesce(producer, $3) = ANY($2) \
             UNION ALL \
             SELECT coalesce(o.producer, $3), coalesce(o.producer_seq, c.first_seq + u.ord - 1) \
             FROM outbox_claimed c CROSS JOIN LATERAL unnest(c.ids) WITH ORDINALITY AS u(id, ord) \
             JOIN outbox o ON o.id = u.id \
             WHERE coalesce(o.producer_seq, c.first_seq + u.ord - 1) = ANY($1)",
        )
        .bind(&seqs)
        .bind(&producers)
        .bind(&self.inner.producer)
        .fetch_all(&self.inner.pool)
        .await
        .map_err(PgError::from)?;
        let fresh: Vec<&LogRecord> = records
            .iter()
            .filter(|r| {
                !staged
                    .iter()
                    .any(|(p, s)| p == &r.producer && u64::try_from(*s).ok() == Some(r.seq))
            })
            .collect();
        insert(
            &self.inner.pool,
            fresh.into_iter().map(Staged::appended),
            Some(self.inner.wake.channel()),
        )
        .await?;
        self.inner.wake.bump();
        Ok(())
    }

    async fn staged(&self) -> Result<u64, StoreError> {
        Ok(self.staged_inner().await?)
    }

    async fn wait_staged(&self, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        let mut rx = self.inner.wake.subscribe();
        loop {
            if self.peekable().await.unwrap_or(false) {
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
