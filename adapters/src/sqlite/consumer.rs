//! [`ConsumerStore`] on SQLite: one row per consumer, saved with an optimistic version check.

use async_trait::async_trait;
use ports::{Checkpoint, ConsumerStore, ConsumerStoreError, Position};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;

use super::SqliteStore;
use super::error::{Error, corrupt};

fn checkpoint_from_row(row: &SqliteRow) -> Result<Checkpoint, Error> {
    let position: String = row.try_get("position")?;
    let state: String = row.try_get("state")?;
    let version: i64 = row.try_get("version")?;
    Ok(Checkpoint {
        position: Position::new(position),
        state: serde_json::from_str(&state)?,
        version: u64::try_from(version).map_err(|_| corrupt(format!("version {version}")))?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

impl SqliteStore {
    async fn register_tx(&self, name: &str) -> Result<(), Error> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT OR IGNORE INTO consumer_checkpoints (name, position, state, version, \
             updated_at_ms) VALUES (?, '', 'null', 0, 0)",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn save_tx(
        &self,
        name: &str,
        expected: u64,
        position: &Position,
        state: &serde_json::Value,
        now_ms: i64,
    ) -> Result<Option<u64>, Error> {
        let version = expected
            .checked_add(1)
            .ok_or_else(|| corrupt("version overflow"))?;
        let version_i = i64::try_from(version).map_err(|_| corrupt("version overflow"))?;
        let state = serde_json::to_string(state)?;
        let mut tx = self.write().await?;
        let updated = sqlx::query(
            "UPDATE consumer_checkpoints SET position = ?, state = ?, version = ?, \
             updated_at_ms = ? WHERE name = ? AND version = ?",
        )
        .bind(position.as_str())
        .bind(&state)
        .bind(version_i)
        .bind(now_ms)
        .bind(name)
        .bind(version_i - 1)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let saved = if updated == 1 {
            true
        } else if expected == 0 {
            // A consumer that was never registered: create it, unless someone else just did.
            sqlx::query(
                "INSERT OR IGNORE INTO consumer_checkpoints (name, position, state, version, \
                 updated_at_ms) VALUES (?, ?, ?, ?, ?)",
            )
            .bind(name)
            .bind(position.as_str())
            .bind(&state)
            .bind(version_i)
            .bind(now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1
        } else {
            false
        };
        if !saved {
            // Nothing was written; dropping the transaction rolls it back.
            return Ok(None);
        }
        tx.commit().await?;
        Ok(Some(version))
    }
}

#[async_trait]
impl ConsumerStore for SqliteStore {
    async fn register(&self, name: &str) -> Result<(), ConsumerStoreError> {
        self.register_tx(name).await.map_err(Into::into)
    }

    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, ConsumerStoreError> {
        let row = sqlx::query(
            "SELECT position, state, version, updated_at_ms FROM consumer_checkpoints \
             WHERE name = ?",
        )
        .bind(name)
        .fetch_optional(self.reader())
        .await
        .map_err(Error::from)?;
        Ok(row.as_ref().map(checkpoint_from_row).transpose()?)
    }

    async fn save(
        &self,
        name: &str,
        expected_version: u64,
        position: &Position,
        state: &serde_json::Value,
        now_ms: i64,
    ) -> Result<u64, ConsumerStoreError> {
        match self
            .save_tx(name, expected_version, position, state, now_ms)
            .await?
        {
            Some(version) => Ok(version),
            None => Err(ConsumerStoreError::Conflict(name.to_owned())),
        }
    }

    async fn list(&self) -> Result<Vec<(String, Checkpoint)>, ConsumerStoreError> {
        let rows = sqlx::query(
            "SELECT name, position, state, version, updated_at_ms FROM consumer_checkpoints \
             ORDER BY name",
        )
        .fetch_all(self.reader())
        .await
        .map_err(Error::from)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get("name").map_err(Error::from)?;
            out.push((name, checkpoint_from_row(row)?));
        }
        Ok(out)
    }
}
