//! [`Outbox`] on SQLite: the `staged_records` table, read in `seq` order.
//!
//! Sequences are assigned by `AUTOINCREMENT` inside serialized (`BEGIN IMMEDIATE`) write
//! transactions, hence in commit order (see the module docs of [`super`]): peeking the lowest
//! sequences can never pass over a record that commits later.

use std::time::Duration;

use async_trait::async_trait;
use domain::{LogRecord, NewRecord};
use ports::{Outbox, StoreError};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use super::SqliteStore;
use super::error::{Error, corrupt};

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

impl SqliteStore {
    async fn peek_tx(&self, max: usize) -> Result<Vec<LogRecord>, Error> {
        let limit = i64::try_from(max).unwrap_or(i64::MAX);
        let rows = sqlx::query(
            "SELECT seq, id, stream, key, kind, payload, correlation_id, causation_id, \
             recorded_at_ms FROM staged_records ORDER BY seq LIMIT ?",
        )
        .bind(limit)
        .fetch_all(self.reader())
        .await?;
        let producer = self.producer();
        rows.iter().map(|r| record_from_row(r, &producer)).collect()
    }

    async fn remove_tx(&self, seqs: &[u64]) -> Result<u64, Error> {
        if seqs.is_empty() {
            return Ok(0);
        }
        // The sequences travel as one JSON array: one statement whatever their number, no
        // dynamic SQL, no limit on bound variables.
        let list = serde_json::to_string(seqs)?;
        let mut tx = self.write().await?;
        let done =
            sqlx::query("DELETE FROM staged_records WHERE seq IN (SELECT value FROM json_each(?))")
                .bind(list)
                .execute(&mut *tx)
                .await?;
        tx.commit().await?;
        Ok(done.rows_affected())
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
        self.peek_tx(max).await.map_err(Into::into)
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
}
