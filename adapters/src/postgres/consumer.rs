//! Consumers' state and positions (`consumer_checkpoints`), saved with an optimistic version.
//!
//! `save` is one statement, so state, position and version change together or not at all;
//! the `WHERE version = expected` guard makes two processes with one name never both win.

use async_trait::async_trait;
use ports::{Checkpoint, ConsumerStore, ConsumerStoreError, Position};
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PostgresStore;
use super::error::PgError;
use crate::sql_error::Kind;

fn checkpoint(row: &PgRow) -> Result<Checkpoint, PgError> {
    let version: i64 = row.try_get("version")?;
    let name: String = row.try_get("name")?;
    Ok(Checkpoint {
        position: Position::new(row.try_get::<String, _>("position")?),
        state: row.try_get("state")?,
        version: u64::try_from(version).map_err(|_| {
            PgError::Other(format!(
                "corrupt data in the store, consumer checkpoint {name:?}: negative version {version}"
            ))
        })?,
        updated_at_ms: row.try_get("updated_at_ms")?,
    })
}

#[async_trait]
impl ConsumerStore for PostgresStore {
    async fn register(&self, name: &str) -> Result<(), ConsumerStoreError> {
        sqlx::query(
            "INSERT INTO consumer_checkpoints (name, position, state, version, updated_at_ms) \
             VALUES ($1, '', 'null'::jsonb, 0, 0) ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(self.pool())
        .await
        .map_err(PgError::from)?;
        Ok(())
    }

    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, ConsumerStoreError> {
        let row = sqlx::query(
            "SELECT name, position, state, version, updated_at_ms FROM consumer_checkpoints \
             WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .map_err(PgError::from)?;
        Ok(row.as_ref().map(checkpoint).transpose()?)
    }

    async fn save(
        &self,
        name: &str,
        expected_version: u64,
        position: &Position,
        state: &serde_json::Value,
        now_ms: i64,
    ) -> Result<u64, ConsumerStoreError> {
        let expected = i64::try_from(expected_version)
            .map_err(|_| ConsumerStoreError::Conflict(name.to_owned()))?;
        let sql = if expected == 0 {
            // New or only registered: insert, or take over a version-0 row.
            "INSERT INTO consumer_checkpoints AS c (name, position, state, version, updated_at_ms) \
             VALUES ($1, $2, $3, 1, $4) \
             ON CONFLICT (name) DO UPDATE SET position = excluded.position, \
               state = excluded.state, version = c.version + 1, \
               updated_at_ms = excluded.updated_at_ms \
             WHERE c.version = $5 RETURNING version"
        } else {
            "UPDATE consumer_checkpoints SET position = $2, state = $3, version = version + 1, \
               updated_at_ms = $4 \
             WHERE name = $1 AND version = $5 RETURNING version"
        };
        let version: Option<i64> = sqlx::query_scalar(sql)
            .bind(name)
            .bind(position.as_str())
            .bind(state)
            .bind(now_ms)
            .bind(expected)
            .fetch_optional(self.pool())
            .await
            .map_err(|e| match PgError::from(e) {
                // Two first saves racing on the primary key.
                e if e.kind() == Kind::Conflict => ConsumerStoreError::Conflict(name.to_owned()),
                other => other.into(),
            })?;
        let version = version.ok_or_else(|| ConsumerStoreError::Conflict(name.to_owned()))?;
        u64::try_from(version).map_err(|_| {
            ConsumerStoreError::Other(format!(
                "corrupt data in the store, consumer checkpoint {name:?}: version {version}"
            ))
        })
    }

    async fn list(&self) -> Result<Vec<(String, Checkpoint)>, ConsumerStoreError> {
        let rows = sqlx::query(
            "SELECT name, position, state, version, updated_at_ms FROM consumer_checkpoints \
             ORDER BY name",
        )
        .fetch_all(self.pool())
        .await
        .map_err(PgError::from)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get("name").map_err(PgError::from)?;
            out.push((name, checkpoint(row)?));
        }
        Ok(out)
    }
}
