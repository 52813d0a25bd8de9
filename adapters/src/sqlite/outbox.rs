//! [`Outbox`] on SQLite: the `staged_records` table, read in `seq` order.
//!
//! Sequences are assigned by `AUTOINCREMENT` inside serialized (`BEGIN IMMEDIATE`) write
//! transactions, hence in commit order (see the module docs of [`super`]): peeking the lowest
//! sequences can never pass over a record that commits later.

use std::time::Duration;

use async_trait::async_trait;
use domain::{LogRecord, NewRecord};
use ports::{Outbox, Published, Route, StoreError};
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;

use super::SqliteStore;
use super::error::{Error, corrupt};
use crate::sql_rows::SqlDialect;

fn uuid(text: &str) -> Result<Uuid, Error> {
    Uuid::parse_str(text).map_err(|e| corrupt(format!("record id {text:?}: {e}")))
}

fn record_from_row(row: &SqliteRow, producer: &str) -> Result<LogRecord, Error> {
    let seq: i64 = row.try_get("seq")?;
    let id: String = row.try_get("id")?;
    let payload: String = row.try_get("payload")?;
    let correlation: Option<String> = row.try_get("correlation_id")?;
    let causation: Option<String> = row.try_get("causation_id")?;
    let record = NewRecord {
        id: uuid(&id)?,
        stream: row.try_get("stream")?,
        key: row.try_get("key")?,
        kind: row.try_get("kind")?,
        payload: serde_json::from_str(&payload)?,
        correlation_id: correlation.as_deref().map(uuid).transpose()?,
        causation_id: causation.as_deref().map(uuid).transpose()?,
        recorded_at_ms: row.try_get("recorded_at_ms")?,
    };
    let seq = u64::try_from(seq).map_err(|_| corrupt(format!("sequence {seq}")))?;
    Ok(record.sequenced(producer, seq))
}

/// The most records [`insert_staged_rows`] writes with one statement.
const STAGE_ROWS_MAX: usize = 4;

/// `INSERT … VALUES` for 0..=[`STAGE_ROWS_MAX`] records (index = row count).
static STAGE_ROWS_SQL: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    (0..=STAGE_ROWS_MAX)
        .map(|n| SqlDialect::Sqlite.insert_records(1, n))
        .collect()
});

/// Inserts staged records, up to [`STAGE_ROWS_MAX`] per statement; their sequences are
/// assigned by `AUTOINCREMENT` in row order. Phases and [`Outbox::stage`] share it, inside
/// their own `BEGIN IMMEDIATE` transaction.
pub(super) async fn insert_staged_rows(
    tx: &mut Transaction<'static, Sqlite>,
    records: &[NewRecord],
) -> Result<(), Error> {
    for chunk in records.chunks(STAGE_ROWS_MAX) {
        insert_chunk(tx, chunk).await?;
    }
    Ok(())
}

async fn insert_chunk(
    tx: &mut Transaction<'static, Sqlite>,
    records: &[NewRecord],
) -> Result<(), Error> {
    let mut q = sqlx::query(sqlx::AssertSqlSafe(STAGE_ROWS_SQL[records.len()].as_str()));
    for r in records {
        q = crate::sql_rows::bind_staged!(q, r);
    }
    q.execute(&mut **tx).await?;
    Ok(())
}

impl SqliteStore {
    async fn peek_tx(&self, after_seq: u64, max: usize) -> Result<Vec<LogRecord>, Error> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        // Above i64::MAX there is nothing (sequences are SQLite integers).
        let after = i64::try_from(after_seq).unwrap_or(i64::MAX);
        // Sequences start at 1, so "no route" is "after 0".
        let rows = sqlx::query(
            "SELECT seq, id, stream, key, kind, payload, correlation_id, causation_id, \
             recorded_at_ms FROM staged_records \
             WHERE seq > max(?, coalesce((SELECT json_extract(value, '$.after_seq') FROM meta \
                                          WHERE key = 'route'), 0)) \
             ORDER BY seq LIMIT ?",
        )
        .bind(after)
        .bind(limit)
        .fetch_all(self.reader())
        .await?;
        let producer = self.producer();
        rows.iter().map(|r| record_from_row(r, &producer)).collect()
    }

    /// Stages `records` in one `BEGIN IMMEDIATE` transaction, with the same insert as a phase.
    async fn stage_tx(&self, records: &[NewRecord]) -> Result<(), Error> {
        let mut tx = self.write().await?;
        insert_staged_rows(&mut tx, records).await?;
        tx.commit().await?;
        Ok(())
    }

    async fn route_tx(&self) -> Result<Option<Route>, Error> {
        let value: Option<String> =
            sqlx::query_scalar("SELECT value FROM meta WHERE key = 'route'")
                .fetch_optional(self.reader())
                .await?;
        value
            .map(|v| serde_json::from_str(&v).map_err(|e| corrupt(format!("route {v:?}: {e}"))))
            .transpose()
    }

    async fn set_route_tx(&self, route: &Route) -> Result<(), Error> {
        // SQLite integers are signed 64-bit: a larger `after_seq` could not be compared.
        if i64::try_from(route.after_seq).is_err() {
            return Err(StoreError::Other(format!(
                "route after_seq {} is out of range",
                route.after_seq
            ))
            .into());
        }
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT INTO meta (key, value) VALUES ('route', ?) \
             ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        )
        .bind(serde_json::to_string(route)?)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn remove_tx(&self, seqs: &[u64]) -> Result<u64, Error> {
        if seqs.is_empty() {
            return Ok(0);
        }
        // The sequences travel as one JSON array: one statement whatever their number, no
        // dynamic SQL, no limit on bound variables.
        let list = serde_json::to_string(seqs)?;
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT OR REPLACE INTO published_records (seq, kind, key) \
             SELECT seq, kind, key FROM staged_records \
             WHERE seq IN (SELECT value FROM json_each(?))",
        )
        .bind(&list)
        .execute(&mut *tx)
        .await?;
        let done =
            sqlx::query("DELETE FROM staged_records WHERE seq IN (SELECT value FROM json_each(?))")
                .bind(list)
                .execute(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
    }

    async fn published_tx(&self, from_seq: u64, to_seq: u64) -> Result<Vec<Published>, Error> {
        let clamp = |s: u64| i64::try_from(s).unwrap_or(i64::MAX);
        let rows: Vec<(i64, String, String)> = sqlx::query_as(
            "SELECT seq, kind, key FROM published_records WHERE seq BETWEEN ? AND ? ORDER BY seq",
        )
        .bind(clamp(from_seq))
        .bind(clamp(to_seq))
        .fetch_all(self.reader())
        .await?;
        let producer = self.producer();
        Ok(rows
            .into_iter()
            .map(|(seq, kind, key)| Published {
                producer: producer.clone(),
                seq: u64::try_from(seq).unwrap_or_default(),
                kind,
                key,
            })
            .collect())
    }

    /// Inserts records under their own sequences (`INSERT OR IGNORE`: one still staged stays).
    async fn restage_tx(&self, records: &[LogRecord]) -> Result<(), Error> {
        let mut tx = self.write().await?;
        for r in records {
            let seq = i64::try_from(r.seq)
                .map_err(|_| corrupt(format!("sequence {} out of range", r.seq)))?;
            sqlx::query(
                "INSERT OR IGNORE INTO staged_records (seq, id, stream, key, kind, payload, \
                 correlation_id, causation_id, recorded_at_ms) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(seq)
            .bind(r.id.to_string())
            .bind(&r.stream)
            .bind(&r.key)
            .bind(&r.kind)
            .bind(serde_json::to_string(&r.payload)?)
            .bind(r.correlation_id.map(|u| u.to_string()))
            .bind(r.causation_id.map(|u| u.to_string()))
            .bind(r.recorded_at_ms)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl Outbox for SqliteStore {
    fn producer(&self) -> String {
        // Set by `migrate` (and by `connect`); only a store opened without migrations on an
        // empty file lacks it, and such a store has no records to name either.
        self.inner
            .producer
            .get()
            .cloned()
            .unwrap_or_else(|| "sqlite-unmigrated".to_owned())
    }

    async fn peek(&self, max: usize) -> Result<Vec<LogRecord>, StoreError> {
        self.peek_tx(0, max).await.map_err(Into::into)
    }

    async fn peek_after(&self, after_seq: u64, max: usize) -> Result<Vec<LogRecord>, StoreError> {
        self.peek_tx(after_seq, max).await.map_err(Into::into)
    }

    async fn remove(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        self.remove_tx(seqs).await.map_err(Into::into)
    }

    async fn staged(&self) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar("SELECT count(*) FROM staged_records")
            .fetch_one(self.reader())
            .await
            .map_err(Error::from)?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    async fn wait_staged(&self, timeout: Duration) {
        let _ = tokio::time::timeout(timeout, self.inner.staged.notified()).await;
    }

    async fn stage(&self, records: &[NewRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        self.stage_tx(records).await?;
        self.inner.staged.notify_one();
        Ok(())
    }

    async fn published(
        &self,
        producer: &str,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<Vec<Published>, StoreError> {
        if producer != self.producer() || from_seq > to_seq {
            return Ok(Vec::new());
        }
        self.published_tx(from_seq, to_seq)
            .await
            .map_err(Into::into)
    }

    async fn forget_published(&self, producer: &str, below_seq: u64) -> Result<u64, StoreError> {
        if producer != self.producer() {
            return Ok(0);
        }
        let below = i64::try_from(below_seq).unwrap_or(i64::MAX);
        let mut tx = self.write().await?;
        let done = sqlx::query("DELETE FROM published_records WHERE seq < ?")
            .bind(below)
            .execute(&mut *tx)
            .await
            .map_err(Error::from)?;
        tx.commit().await.map_err(Error::from)?;
        Ok(done.rows_affected())
    }

    async fn restage(&self, records: &[LogRecord]) -> Result<(), StoreError> {
        let own = self.producer();
        if let Some(r) = records.iter().find(|r| r.producer != own) {
            return Err(StoreError::Other(format!(
                "cannot re-stage a record of producer {} in the store of {own}",
                r.producer
            )));
        }
        if records.is_empty() {
            return Ok(());
        }
        self.restage_tx(records).await?;
        self.inner.staged.notify_one();
        Ok(())
    }

    async fn route(&self) -> Result<Option<Route>, StoreError> {
        self.route_tx().await.map_err(Into::into)
    }

    async fn set_route(&self, route: &Route) -> Result<(), StoreError> {
        self.set_route_tx(route).await.map_err(Into::into)
    }
}
