//! [`RideStore`] on Postgres: this dialect's statements for the phase engine
//! ([`crate::phase`]) and the shared reads ([`crate::sql_rows`]).
//!
//! Each phase is one `READ COMMITTED` transaction whose first statement locks its
//! idempotency key row (`SELECT … FOR UPDATE`); everything else it does is a write guarded by a
//! unique constraint. Two requests racing on one key are serialized by the row lock, and the
//! loser sees the winner's commit: `begin` answers `InProgress` (or [`StoreError::Conflict`]
//! when both tried to create the key: unique violation), `run_phase` answers `Conflict`
//! because the key is no longer where it expected. Requests with different keys never wait
//! for each other. See the module docs for why this is as safe as `SERIALIZABLE` here.
//!
//! JSON columns travel as text (cast to `jsonb` on the way in, to `text` on the way out), so
//! both SQL stores share their row structs and statements' bind order.

use domain::{KeyRecord, NewRecord, Phase, RideWrite};
use ports::{StoreError, User};
use sqlx::{PgConnection, Postgres, Transaction};

use super::PostgresStore;
use super::error::PgError;
use super::outbox::stage_in_phase;
use crate::phase::Committed;
use crate::sql_rows::{
    FinishSql, SqlDialect, StoreSql, UserRow, bind_key, bind_staged, sql_phase_tx, sql_ride_store,
    store_sql, to_i64,
};

/// Columns of `idempotency_keys AS k` for [`crate::sql_rows::KeyRow`], JSON as text.
macro_rules! key_columns {
    () => {
        "k.id, k.user_id, k.idempotency_key, k.created_at_ms, k.last_run_at_ms, \
         k.locked_at_ms, k.request_method, k.request_path, \
         k.request_params::text AS request_params, k.recovery_point, \
         k.response_code::bigint AS response_code, k.response_body::text AS response_body, \
         k.ride_id"
    };
}

/// This dialect's statements: a locking read locks the key row until the end of the phase (a
/// concurrent phase on the key waits there, then reads its commit).
const SQL: StoreSql = store_sql!(key_columns, for_update = " FOR UPDATE", json = "::jsonb");

/// Ride ids (`bigint[]`) → [`crate::sql_rows::RideSqlRow`]s, by id.
const RIDES_BY_IDS: &str = concat!(
    "SELECT ",
    crate::sql_rows::ride_columns!(),
    " FROM rides WHERE id = ANY($1) ORDER BY id"
);

/// A sqlx error, translated once (see [`super::error`]).
fn db(e: impl Into<PgError>) -> StoreError {
    e.into().into()
}

/// A phase transaction.
struct PgTx {
    tx: Transaction<'static, Postgres>,
}

impl PgTx {
    fn conn(&mut self) -> &mut PgConnection {
        &mut self.tx
    }
}

/// The charge's commit in one statement (data-modifying CTEs).
static FINISH: std::sync::LazyLock<FinishSql> =
    std::sync::LazyLock::new(|| FinishSql::new(SqlDialect::Postgres));

sql_phase_tx!(PgTx, SQL, FINISH, {
    async fn stage(&mut self, records: &[NewRecord]) -> Result<(), StoreError> {
        Ok(stage_in_phase(&mut self.tx, records).await?)
    }

    async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(db)
    }
});

/// How many ride ids a store takes from the sequence at once.
const RIDE_ID_BLOCK: i64 = 16;

/// The most staged records [`PostgresStore::create`] writes in its one statement.
const CREATE_RECORDS_MAX: usize = 4;

/// The first commit of a ride as ONE statement, run in a transaction of its own: the key
/// (`ON CONFLICT DO NOTHING`: nothing at all is written when the user has it already), its
/// ride, the audit record and `n` staged records (index = `n`). Binds: the key's 12 columns
/// as `StoreSql::insert_key` (its ride id included), the ride's id and its 7 other columns,
/// the audit record's 5 (user, action, data, origin ip, created), then 8 per record as the
/// phase outbox insert.
static CREATE_SQL: std::sync::LazyLock<Vec<String>> = std::sync::LazyLock::new(|| {
    (0..=CREATE_RECORDS_MAX)
        .map(|n| {
            format!(
                "WITH k AS (INSERT INTO idempotency_keys (user_id, idempotency_key, \
                   created_at_ms, last_run_at_ms, locked_at_ms, request_method, request_path, \
                   request_params, recovery_point, response_code, response_body, ride_id) \
                   VALUES ($1, $2, $3, $4, $5, $6, $7, $8::jsonb, $9, $10, $11::jsonb, $12) \
                   ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING id), \
                 r AS (INSERT INTO rides (id, user_id, idempotency_key_id, origin_lat, \
                   origin_lon, target_lat, target_lon, distance_mm, created_at_ms) \
                   SELECT $13, $14, k.id, $15, $16, $17, $18, $19, $20 FROM k RETURNING id), \
                 a AS (INSERT INTO audit_records (user_id, action, data, origin_ip, \
                   resource_type, resource_id, created_at_ms) \
                   SELECT $21, $22, $23::jsonb, $24, 'ride', r.id, $25 FROM r) \
                 {} SELECT id FROM k",
                if n == 0 {
                    String::new()
                } else {
                    format!(
                        ", o AS (INSERT INTO outbox (record_id, stream, key, kind, payload, \
                           correlation_id, causation_id, recorded_at_ms) \
                           SELECT v.* FROM r, (VALUES {}) AS v)",
                        SqlDialect::Postgres.record_rows(26, n)
                    )
                }
            )
        })
        .collect()
});

impl PostgresStore {
    /// A new key with its opening phase: one statement in a transaction of its own
    /// ([`CREATE_SQL`]) when the phase inserts a ride with an audit record and a few records
    /// (the first commit of every new ride), else [`crate::phase::create`] in a transaction.
    /// The ride's id is taken from the sequence ahead ([`RIDE_ID_BLOCK`] at a time), so the
    /// records can be built with it before the statement runs.
    async fn create(
        &self,
        key: &KeyRecord,
        opening: Option<&Phase>,
        now_ms: i64,
    ) -> Result<Option<KeyRecord>, StoreError> {
        let one_statement = opening.and_then(|p| match (&p.ride, &p.audit) {
            (RideWrite::Insert { .. }, Some(audit)) if p.records.len() <= CREATE_RECORDS_MAX => {
                Some((p, audit))
            }
            _ => None,
        });
        let Some((phase, audit)) = one_statement else {
            return crate::phase::create(self.tx().await?, key, opening, now_ms).await;
        };
        let RideWrite::Insert {
            user_id,
            params,
            distance_mm,
        } = &phase.ride
        else {
            return crate::phase::create(self.tx().await?, key, opening, now_ms).await;
        };
        let ride_id = self.next_ride_id().await?;
        let key = KeyRecord {
            ride_id: Some(ride_id),
            ..key.clone()
        };
        let records: Vec<NewRecord> = phase
            .records
            .iter()
            .map(|d| d.build(ride_id, now_ms))
            .collect();
        let statement =
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(CREATE_SQL[records.len()].as_str()));
        let mut q = bind_key!(statement, &key)
            .bind(ride_id)
            .bind(user_id)
            .bind(params.origin_lat())
            .bind(params.origin_lon())
            .bind(params.target_lat())
            .bind(params.target_lon())
            .bind(to_i64(*distance_mm, "distance")?)
            .bind(now_ms)
            .bind(key.user_id)
            .bind(&audit.action)
            .bind(audit.data.to_string())
            .bind(&audit.origin_ip)
            .bind(now_ms);
        for r in &records {
            q = bind_staged!(q, r);
        }
        let id = q.fetch_optional(self.pool()).await.map_err(db)?;
        Ok(id.map(|id| KeyRecord { id, ..key }))
    }

    /// The next ride id, from a block taken ahead from the `rides` sequence (ids are unique,
    /// not gap-free, as with any sequence).
    async fn next_ride_id(&self) -> Result<i64, StoreError> {
        if let Some(id) = self.take_ride_id() {
            return Ok(id);
        }
        let mut block: Vec<i64> = sqlx::query_scalar(
            "SELECT nextval(pg_get_serial_sequence('rides', 'id')) FROM generate_series(1, $1)",
        )
        .bind(RIDE_ID_BLOCK)
        .fetch_all(self.pool())
        .await
        .map_err(db)?;
        // Hand out the lowest first.
        block.sort_unstable_by(|a, b| b.cmp(a));
        let id = block
            .pop()
            .ok_or_else(|| StoreError::Other("the rides sequence returned no ids".to_owned()))?;
        if let Ok(mut ids) = self.inner.ride_ids.lock() {
            ids.extend(block);
            ids.sort_unstable_by(|a, b| b.cmp(a));
        }
        Ok(id)
    }

    fn take_ride_id(&self) -> Option<i64> {
        self.inner.ride_ids.lock().ok()?.pop()
    }

    /// Starts a phase: a `READ COMMITTED` transaction (named explicitly, so a server whose
    /// `default_transaction_isolation` differs changes nothing).
    async fn tx(&self) -> Result<PgTx, StoreError> {
        let tx = self
            .inner
            .pool
            .begin_with("BEGIN ISOLATION LEVEL READ COMMITTED")
            .await
            .map_err(db)?;
        Ok(PgTx { tx })
    }

    /// Wakes every process's waiters after a commit that staged records (see
    /// [`super::notify`]: phases do not `NOTIFY` in their transaction).
    fn woke<T>(&self, committed: Committed<T>) -> T {
        if committed.staged {
            self.inner.wake.announce();
        }
        committed.value
    }
}

sql_ride_store!(PostgresStore, SQL, pool, {
    fn describe(&self) -> String {
        self.inner.describe.clone()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1")
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn ensure_user(&self, email: &str) -> Result<User, StoreError> {
        sqlx::query("INSERT INTO users (email) VALUES ($1) ON CONFLICT (email) DO NOTHING")
            .bind(email)
            .execute(self.pool())
            .await
            .map_err(db)?;
        let row = sqlx::query_as::<_, UserRow>(SQL.user_by_email)
            .bind(email)
            .fetch_one(self.pool())
            .await
            .map_err(db)?;
        Ok(row.into())
    }

    /// One transaction of set-based statements: the user's row locked, its rides deleted
    /// (their ids and distances returned), then keys, audit records and the user, and the
    /// `ride.deleted` records staged as one insert.
    async fn forget_user(&self, email: &str, now_ms: i64) -> Result<ports::Forgotten, StoreError> {
        let mut tx = self.pool().begin().await.map_err(db)?;
        let (user_id, records, keys) =
            crate::sql_rows::forget_user_deletes!(tx, email, now_ms, " FOR UPDATE");
        super::outbox::insert(
            &mut *tx,
            records.iter().map(super::outbox::Staged::from),
            None,
        )
        .await?;
        tx.commit().await.map_err(db)?;
        if !records.is_empty() {
            self.inner.wake.announce();
        }
        Ok(ports::Forgotten {
            user_id,
            rides: records.len() as u64,
            keys,
        })
    }

    /// One statement: the ids travel as one `bigint[]`.
    async fn rides_by_ids(&self, ids: &[i64]) -> Result<Vec<ports::RideRow>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let rows = sqlx::query_as::<_, crate::sql_rows::RideSqlRow>(RIDES_BY_IDS)
            .bind(ids)
            .fetch_all(self.pool())
            .await
            .map_err(db)?;
        crate::sql_rows::decode_all(rows)
    }

    async fn unlock(&self, key_id: i64) -> Result<(), StoreError> {
        sqlx::query(SQL.unlock)
            .bind(key_id)
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(())
    }

    async fn reap_keys(
        &self,
        now_ms: i64,
        t: &domain::Thresholds,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(SQL.reap)
            .bind(t.reap_before(now_ms))
            .bind(i64::from(limit))
            .execute(self.pool())
            .await
            .map_err(db)?;
        Ok(done.rows_affected())
    }
});
