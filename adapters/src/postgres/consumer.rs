//! Consumers' checkpoints (`consumer_checkpoints`: position, cursor and state as JSONB,
//! version), their dead-letter lists (`consumer_parked`) and leases (`consumer_leases`).
//!
//! Every call is one statement, hence one round trip and one transaction:
//!
//! - `save` is a data-modifying CTE. `fence` locks the named lease row `FOR SHARE` (a
//!   takeover's update waits for the save to commit, or the save, waiting for the takeover,
//!   rechecks the row's latest version and finds another epoch); `saved` writes the
//!   checkpoint only if the fence holds and the stored version is the expected one
//!   (`INSERT … ON CONFLICT DO UPDATE … WHERE version = expected`, so a consumer that was
//!   never registered is created by its first save and two first saves have one winner);
//!   `parked` and `unparked` run only if `saved` returned a row. The statement answers
//!   whether the fence held and the new version, which tells `Fenced` from `Conflict`; in
//!   both cases nothing was written.
//! - `acquire_lease` is one `INSERT … ON CONFLICT DO UPDATE … WHERE`: the row lock of the
//!   upsert serializes concurrent acquirers, and each decides on the latest row (free,
//!   expired: a new epoch; the caller's own and live: the same epoch), so exactly one of
//!   several racing processes gets a free scope.
//! - `remove` deletes the consumer's parked records and its checkpoint in one CTE.

use async_trait::async_trait;
use ports::{Checkpoint, ConsumerStore, ConsumerStoreError, Lease, Parked, Save};
use sqlx::Row;

use super::PostgresStore;
use super::error::PgError;
use crate::sql_consumer::{self as sql, CheckpointRow, LeaseRow, ParkedRow, bad, fenced};

/// Values that do not fit the columns (never produced by the runtime).
fn out_of_range(what: &str) -> ConsumerStoreError {
    ConsumerStoreError::Other(format!("{what} out of range"))
}

/// The save (see the module docs). `$1` name, `$2` expected version, `$3` position,
/// `$4` cursor, `$5` state, `$6` now, `$7`–`$9` lease scope, holder and epoch (NULL: no
/// fencing), `$10` the records to park as a JSON array of `{lane, record, error}`, `$11` the
/// ids to unpark.
const SAVE: &str = "\
WITH fence AS (
    SELECT $7::text IS NULL OR EXISTS (
        SELECT 1 FROM consumer_leases
        WHERE scope = $7 AND holder = $8 AND epoch = $9
        FOR SHARE
    ) AS held
), saved AS (
    INSERT INTO consumer_checkpoints AS c
        (name, position, cursor, state, version, updated_at_ms)
    SELECT $1, $3, $4, $5, $2 + 1, $6 FROM fence WHERE fence.held AND $2 = 0
    ON CONFLICT (name) DO UPDATE SET position = excluded.position, cursor = excluded.cursor,
        state = excluded.state, version = excluded.version,
        updated_at_ms = excluded.updated_at_ms
    WHERE c.version = $2
    RETURNING version
), updated AS (
    UPDATE consumer_checkpoints
    SET position = $3, cursor = $4, state = $5, version = $2 + 1, updated_at_ms = $6
    WHERE name = $1 AND version = $2 AND $2 <> 0 AND (SELECT held FROM fence)
    RETURNING version
), done AS (
    SELECT version FROM saved UNION ALL SELECT version FROM updated
), parked AS (
    INSERT INTO consumer_parked (name, lane, record, error, parked_at_ms)
    SELECT $1, (p.e ->> 'lane')::bigint, p.e -> 'record', p.e ->> 'error', $6
    FROM jsonb_array_elements($10) WITH ORDINALITY AS p (e, ord)
    WHERE EXISTS (SELECT 1 FROM done)
    ORDER BY p.ord
), unparked AS (
    DELETE FROM consumer_parked
    WHERE name = $1 AND id = ANY ($11) AND EXISTS (SELECT 1 FROM done)
)
SELECT (SELECT held FROM fence) AS held, (SELECT version FROM done) AS version";

#[async_trait]
impl ConsumerStore for PostgresStore {
    async fn register(&self, name: &str) -> Result<(), ConsumerStoreError> {
        sqlx::query(
            "INSERT INTO consumer_checkpoints (name, position, cursor, state, version, \
             updated_at_ms) VALUES ($1, '', '{}'::jsonb, 'null'::jsonb, 0, 0) \
             ON CONFLICT (name) DO NOTHING",
        )
        .bind(name)
        .execute(self.pool())
        .await
        .map_err(PgError::from)?;
        Ok(())
    }

    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, ConsumerStoreError> {
        let row = sqlx::query_as::<_, CheckpointRow>(sql::LOAD)
            .bind(name)
            .fetch_optional(self.pool())
            .await
            .map_err(PgError::from)?;
        row.map(|row| row.decode().map(|(_, cp)| cp)).transpose()
    }

    async fn save<'a>(&self, name: &str, save: &Save<'a>) -> Result<u64, ConsumerStoreError> {
        let expected = i64::try_from(save.expected_version)
            .map_err(|_| ConsumerStoreError::Conflict(name.to_owned()))?;
        let epoch = save
            .lease
            .map(|l| i64::try_from(l.epoch))
            .transpose()
            .map_err(|_| out_of_range("lease epoch"))?;
        let park = save
            .park
            .iter()
            .map(|p| {
                Ok(serde_json::json!({
                    "lane": p.lane,
                    "record": serde_json::to_value(&p.record)?,
                    "error": p.error,
                }))
            })
            .collect::<Result<Vec<_>, serde_json::Error>>()
            .map_err(|e| ConsumerStoreError::Other(format!("cannot encode a record: {e}")))?;
        let unpark = save
            .unpark
            .iter()
            .map(|&id| i64::try_from(id))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| out_of_range("parked id"))?;
        let cursor = serde_json::to_value(save.cursor)
            .map_err(|e| ConsumerStoreError::Other(format!("cannot encode a cursor: {e}")))?;
        let row = sqlx::query(SAVE)
            .bind(name)
            .bind(expected)
            .bind(save.position.as_str())
            .bind(cursor)
            .bind(save.state)
            .bind(save.now_ms)
            .bind(save.lease.map(|l| l.scope.as_str()))
            .bind(save.lease.map(|l| l.holder.as_str()))
            .bind(epoch)
            .bind(serde_json::Value::Array(park))
            .bind(unpark)
            .fetch_one(self.pool())
            .await
            .map_err(PgError::from)?;
        let held: bool = row.try_get("held").map_err(PgError::from)?;
        let version: Option<i64> = row.try_get("version").map_err(PgError::from)?;
        match (held, version) {
            (false, _) => Err(fenced(save.lease)),
            (true, None) => Err(ConsumerStoreError::Conflict(name.to_owned())),
            (true, Some(v)) => {
                u64::try_from(v).map_err(|_| bad(name, format_args!("saved version {v}")))
            }
        }
    }

    async fn list(&self) -> Result<Vec<(String, Checkpoint)>, ConsumerStoreError> {
        let rows = sqlx::query_as::<_, CheckpointRow>(sql::LIST)
            .fetch_all(self.pool())
            .await
            .map_err(PgError::from)?;
        rows.into_iter().map(CheckpointRow::decode).collect()
    }

    async fn remove(&self, name: &str) -> Result<bool, ConsumerStoreError> {
        let removed: i64 = sqlx::query_scalar(
            "WITH parked AS (DELETE FROM consumer_parked WHERE name = $1), \
             removed AS (DELETE FROM consumer_checkpoints WHERE name = $1 RETURNING 1) \
             SELECT count(*) FROM removed",
        )
        .bind(name)
        .fetch_one(self.pool())
        .await
        .map_err(PgError::from)?;
        Ok(removed > 0)
    }

    async fn parked(&self, name: &str) -> Result<Vec<Parked>, ConsumerStoreError> {
        let rows = sqlx::query_as::<_, ParkedRow>(sql::PARKED)
            .bind(name)
            .fetch_all(self.pool())
            .await
            .map_err(PgError::from)?;
        rows.into_iter().map(|row| row.decode(name)).collect()
    }

    async fn acquire_lease(
        &self,
        scope: &str,
        holder: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Option<Lease>, ConsumerStoreError> {
        let row = sqlx::query_as::<_, LeaseRow>(sql::ACQUIRE_LEASE)
            .bind(scope)
            .bind(holder)
            .bind(now_ms.saturating_add(ttl_ms))
            .bind(now_ms)
            .fetch_optional(self.pool())
            .await
            .map_err(PgError::from)?;
        row.map(Lease::try_from).transpose()
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), ConsumerStoreError> {
        let epoch = i64::try_from(lease.epoch).map_err(|_| out_of_range("lease epoch"))?;
        sqlx::query(sql::RELEASE_LEASE)
            .bind(&lease.scope)
            .bind(&lease.holder)
            .bind(epoch)
            .execute(self.pool())
            .await
            .map_err(PgError::from)?;
        Ok(())
    }

    async fn leases(&self) -> Result<Vec<Lease>, ConsumerStoreError> {
        let rows = sqlx::query_as::<_, LeaseRow>(sql::LEASES)
            .fetch_all(self.pool())
            .await
            .map_err(PgError::from)?;
        rows.into_iter().map(Lease::try_from).collect()
    }
}
