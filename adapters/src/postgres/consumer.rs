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
use ports::{Checkpoint, ConsumerStore, ConsumerStoreError, Cursor, Lease, Parked, Position, Save};
use serde::Deserialize;
use sqlx::Row;
use sqlx::postgres::PgRow;

use super::PostgresStore;
use super::error::PgError;

/// Data of consumer `name` that cannot be decoded.
fn bad(name: &str, what: impl std::fmt::Display) -> ConsumerStoreError {
    ConsumerStoreError::Other(format!(
        "corrupt data in the store, consumer {name:?}: {what}"
    ))
}

fn checkpoint(name: &str, row: &PgRow) -> Result<Checkpoint, ConsumerStoreError> {
    let version: i64 = row.try_get("version").map_err(PgError::from)?;
    let cursor: serde_json::Value = row.try_get("cursor").map_err(PgError::from)?;
    Ok(Checkpoint {
        position: Position::new(
            row.try_get::<String, _>("position")
                .map_err(PgError::from)?,
        ),
        cursor: Cursor::deserialize(&cursor)
            .map_err(|e| bad(name, format_args!("unreadable cursor {cursor}: {e}")))?,
        state: row.try_get("state").map_err(PgError::from)?,
        version: u64::try_from(version)
            .map_err(|_| bad(name, format_args!("negative version {version}")))?,
        updated_at_ms: row.try_get("updated_at_ms").map_err(PgError::from)?,
    })
}

fn parked(name: &str, row: &PgRow) -> Result<Parked, ConsumerStoreError> {
    let id: i64 = row.try_get("id").map_err(PgError::from)?;
    let lane: i64 = row.try_get("lane").map_err(PgError::from)?;
    let record: serde_json::Value = row.try_get("record").map_err(PgError::from)?;
    Ok(Parked {
        id: u64::try_from(id).map_err(|_| bad(name, format_args!("parked id {id}")))?,
        lane: u32::try_from(lane)
            .map_err(|_| bad(name, format_args!("parked record {id}: lane {lane}")))?,
        record: serde_json::from_value(record)
            .map_err(|e| bad(name, format_args!("parked record {id}: {e}")))?,
        error: row.try_get("error").map_err(PgError::from)?,
        parked_at_ms: row.try_get("parked_at_ms").map_err(PgError::from)?,
    })
}

fn lease(row: &PgRow) -> Result<Lease, ConsumerStoreError> {
    let scope: String = row.try_get("scope").map_err(PgError::from)?;
    let epoch: i64 = row.try_get("epoch").map_err(PgError::from)?;
    Ok(Lease {
        epoch: u64::try_from(epoch).map_err(|_| {
            ConsumerStoreError::Other(format!(
                "corrupt data in the store, lease {scope:?}: epoch {epoch}"
            ))
        })?,
        holder: row.try_get("holder").map_err(PgError::from)?,
        expires_at_ms: row.try_get("expires_at_ms").map_err(PgError::from)?,
        scope,
    })
}

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
        let row = sqlx::query(
            "SELECT position, cursor, state, version, updated_at_ms FROM consumer_checkpoints \
             WHERE name = $1",
        )
        .bind(name)
        .fetch_optional(self.pool())
        .await
        .map_err(PgError::from)?;
        row.map(|row| checkpoint(name, &row)).transpose()
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
        let rows = sqlx::query(
            "SELECT name, position, cursor, state, version, updated_at_ms \
             FROM consumer_checkpoints ORDER BY name",
        )
        .fetch_all(self.pool())
        .await
        .map_err(PgError::from)?;
        let mut out = Vec::with_capacity(rows.len());
        for row in &rows {
            let name: String = row.try_get("name").map_err(PgError::from)?;
            let checkpoint = checkpoint(&name, row)?;
            out.push((name, checkpoint));
        }
        Ok(out)
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
        let rows = sqlx::query(
            "SELECT id, lane, record, error, parked_at_ms FROM consumer_parked \
             WHERE name = $1 ORDER BY id",
        )
        .bind(name)
        .fetch_all(self.pool())
        .await
        .map_err(PgError::from)?;
        rows.iter().map(|row| parked(name, row)).collect()
    }

    async fn acquire_lease(
        &self,
        scope: &str,
        holder: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Option<Lease>, ConsumerStoreError> {
        let row = sqlx::query(
            "INSERT INTO consumer_leases AS l (scope, holder, epoch, expires_at_ms) \
             VALUES ($1, $2, 1, $3) \
             ON CONFLICT (scope) DO UPDATE SET \
               epoch = CASE WHEN l.expires_at_ms <= $4 THEN l.epoch + 1 ELSE l.epoch END, \
               holder = excluded.holder, expires_at_ms = excluded.expires_at_ms \
             WHERE l.expires_at_ms <= $4 OR l.holder = excluded.holder \
             RETURNING scope, holder, epoch, expires_at_ms",
        )
        .bind(scope)
        .bind(holder)
        .bind(now_ms.saturating_add(ttl_ms))
        .bind(now_ms)
        .fetch_optional(self.pool())
        .await
        .map_err(PgError::from)?;
        row.as_ref().map(lease).transpose()
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), ConsumerStoreError> {
        let epoch = i64::try_from(lease.epoch).map_err(|_| out_of_range("lease epoch"))?;
        sqlx::query(
            "UPDATE consumer_leases SET expires_at_ms = 0 \
             WHERE scope = $1 AND holder = $2 AND epoch = $3",
        )
        .bind(&lease.scope)
        .bind(&lease.holder)
        .bind(epoch)
        .execute(self.pool())
        .await
        .map_err(PgError::from)?;
        Ok(())
    }

    async fn leases(&self) -> Result<Vec<Lease>, ConsumerStoreError> {
        let rows = sqlx::query(
            "SELECT scope, holder, epoch, expires_at_ms FROM consumer_leases ORDER BY scope",
        )
        .fetch_all(self.pool())
        .await
        .map_err(PgError::from)?;
        rows.iter().map(lease).collect()
    }
}

/// The error of a save whose lease is no longer the stored one.
fn fenced(lease: Option<&Lease>) -> ConsumerStoreError {
    ConsumerStoreError::Fenced(lease.map_or_else(String::new, |l| {
        format!("{} (holder {}, epoch {})", l.scope, l.holder, l.epoch)
    }))
}
