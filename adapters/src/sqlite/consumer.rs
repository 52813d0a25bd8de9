//! [`ConsumerStore`] on SQLite: one row per consumer (`consumer_checkpoints`: position, cursor
//! and state as JSON text, version), the dead-letter lists (`consumer_parked`) and leases
//! (`consumer_leases`).
//!
//! Every write is one `BEGIN IMMEDIATE` transaction on the single writer connection, so
//! nothing interleaves with it: a save checks the lease (fencing) and then the version, writes
//! the checkpoint, parks and unparks, and commits, or rolls back having written nothing. A
//! lease is taken or renewed by one `INSERT … ON CONFLICT DO UPDATE … WHERE` that decides on
//! the stored row (free, expired, or the caller's own).

use async_trait::async_trait;
use ports::{Checkpoint, ConsumerStore, ConsumerStoreError, Lease, Parked, Save};

use super::SqliteStore;
use super::error::{Error, corrupt};
use crate::sql_consumer::{self as sql, CheckpointRow, LeaseRow, ParkedRow, fenced};

/// Why a save wrote nothing.
enum Refused {
    Conflict,
    Fenced,
}

impl SqliteStore {
    async fn register_tx(&self, name: &str) -> Result<(), Error> {
        let mut tx = self.write().await?;
        sqlx::query(
            "INSERT OR IGNORE INTO consumer_checkpoints (name, position, cursor, state, version, \
             updated_at_ms) VALUES (?, '', '{}', 'null', 0, 0)",
        )
        .bind(name)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        Ok(())
    }

    async fn save_tx(&self, name: &str, save: &Save<'_>) -> Result<Result<u64, Refused>, Error> {
        let expected =
            i64::try_from(save.expected_version).map_err(|_| corrupt("version overflow"))?;
        let version = expected
            .checked_add(1)
            .ok_or_else(|| corrupt("version overflow"))?;
        let cursor = serde_json::to_string(save.cursor)?;
        let state = serde_json::to_string(save.state)?;
        let parked = save
            .park
            .iter()
            .map(|p| {
                Ok((
                    i64::from(p.lane),
                    serde_json::to_string(&p.record)?,
                    &p.error,
                ))
            })
            .collect::<Result<Vec<_>, Error>>()?;
        let unpark = serde_json::to_string(save.unpark)?;
        // Dropping the transaction without commit rolls it back.
        let mut tx = self.write().await?;
        if let Some(lease) = save.lease {
            let epoch = i64::try_from(lease.epoch).map_err(|_| corrupt("epoch overflow"))?;
            let held = sqlx::query(
                "SELECT 1 FROM consumer_leases WHERE scope = ? AND holder = ? AND epoch = ?",
            )
            .bind(&lease.scope)
            .bind(&lease.holder)
            .bind(epoch)
            .fetch_optional(&mut *tx)
            .await?;
            if held.is_none() {
                return Ok(Err(Refused::Fenced));
            }
        }
        let updated = sqlx::query(
            "UPDATE consumer_checkpoints SET position = ?, cursor = ?, state = ?, version = ?, \
             updated_at_ms = ? WHERE name = ? AND version = ?",
        )
        .bind(save.position.as_str())
        .bind(&cursor)
        .bind(&state)
        .bind(version)
        .bind(save.now_ms)
        .bind(name)
        .bind(expected)
        .execute(&mut *tx)
        .await?
        .rows_affected();
        let saved = if updated == 1 {
            true
        } else if expected == 0 {
            // A consumer that was never registered: create it, unless it exists.
            sqlx::query(
                "INSERT OR IGNORE INTO consumer_checkpoints (name, position, cursor, state, \
                 version, updated_at_ms) VALUES (?, ?, ?, ?, ?, ?)",
            )
            .bind(name)
            .bind(save.position.as_str())
            .bind(&cursor)
            .bind(&state)
            .bind(version)
            .bind(save.now_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected()
                == 1
        } else {
            false
        };
        if !saved {
            return Ok(Err(Refused::Conflict));
        }
        for (lane, record, error) in &parked {
            sqlx::query(
                "INSERT INTO consumer_parked (name, lane, record, error, parked_at_ms) \
                 VALUES (?, ?, ?, ?, ?)",
            )
            .bind(name)
            .bind(lane)
            .bind(record)
            .bind(error)
            .bind(save.now_ms)
            .execute(&mut *tx)
            .await?;
        }
        if !save.unpark.is_empty() {
            sqlx::query(
                "DELETE FROM consumer_parked WHERE name = ? \
                 AND id IN (SELECT value FROM json_each(?))",
            )
            .bind(name)
            .bind(&unpark)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(Ok(
            u64::try_from(version).map_err(|_| corrupt("version overflow"))?
        ))
    }

    async fn remove_consumer_tx(&self, name: &str) -> Result<bool, Error> {
        let mut tx = self.write().await?;
        sqlx::query("DELETE FROM consumer_parked WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?;
        let removed = sqlx::query("DELETE FROM consumer_checkpoints WHERE name = ?")
            .bind(name)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        tx.commit().await?;
        Ok(removed == 1)
    }

    async fn acquire_tx(
        &self,
        scope: &str,
        holder: &str,
        expires_at_ms: i64,
        now_ms: i64,
    ) -> Result<Option<LeaseRow>, Error> {
        let mut tx = self.write().await?;
        let row = sqlx::query_as::<_, LeaseRow>(sql::ACQUIRE_LEASE)
            .bind(scope)
            .bind(holder)
            .bind(expires_at_ms)
            .bind(now_ms)
            .fetch_optional(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(row)
    }

    async fn release_tx(&self, lease: &Lease) -> Result<(), Error> {
        let epoch = i64::try_from(lease.epoch).map_err(|_| corrupt("epoch overflow"))?;
        let mut tx = self.write().await?;
        sqlx::query(sql::RELEASE_LEASE)
            .bind(&lease.scope)
            .bind(&lease.holder)
            .bind(epoch)
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}

#[async_trait]
impl ConsumerStore for SqliteStore {
    async fn register(&self, name: &str) -> Result<(), ConsumerStoreError> {
        self.register_tx(name).await.map_err(Into::into)
    }

    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, ConsumerStoreError> {
        let row = sqlx::query_as::<_, CheckpointRow>(sql::LOAD)
            .bind(name)
            .fetch_optional(self.reader())
            .await
            .map_err(Error::from)?;
        row.map(|row| row.decode().map(|(_, cp)| cp)).transpose()
    }

    async fn save<'a>(&self, name: &str, save: &Save<'a>) -> Result<u64, ConsumerStoreError> {
        match self.save_tx(name, save).await? {
            Ok(version) => Ok(version),
            Err(Refused::Conflict) => Err(ConsumerStoreError::Conflict(name.to_owned())),
            Err(Refused::Fenced) => Err(fenced(save.lease)),
        }
    }

    async fn list(&self) -> Result<Vec<(String, Checkpoint)>, ConsumerStoreError> {
        let rows = sqlx::query_as::<_, CheckpointRow>(sql::LIST)
            .fetch_all(self.reader())
            .await
            .map_err(Error::from)?;
        rows.into_iter().map(CheckpointRow::decode).collect()
    }

    async fn remove(&self, name: &str) -> Result<bool, ConsumerStoreError> {
        self.remove_consumer_tx(name).await.map_err(Into::into)
    }

    async fn parked(&self, name: &str) -> Result<Vec<Parked>, ConsumerStoreError> {
        let rows = sqlx::query_as::<_, ParkedRow>(sql::PARKED)
            .bind(name)
            .fetch_all(self.reader())
            .await
            .map_err(Error::from)?;
        rows.into_iter().map(|row| row.decode(name)).collect()
    }

    async fn acquire_lease(
        &self,
        scope: &str,
        holder: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Option<Lease>, ConsumerStoreError> {
        let row = self
            .acquire_tx(scope, holder, now_ms.saturating_add(ttl_ms), now_ms)
            .await?;
        row.map(Lease::try_from).transpose()
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), ConsumerStoreError> {
        self.release_tx(lease).await.map_err(Into::into)
    }

    async fn leases(&self) -> Result<Vec<Lease>, ConsumerStoreError> {
        let rows = sqlx::query_as::<_, LeaseRow>(sql::LEASES)
            .fetch_all(self.reader())
            .await
            .map_err(Error::from)?;
        rows.into_iter().map(Lease::try_from).collect()
    }
}
