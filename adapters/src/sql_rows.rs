//! Row structs shared by the SQL stores (SQLite and Postgres), and their one decoding into
//! domain values.
//!
//! Both dialects select the same column names and the same wire types (JSON as text, integers
//! as `BIGINT`), so one `sqlx::FromRow` struct per table reads both, and one function checks
//! each row. Data the store holds but the domain refuses is an error naming the row, never a
//! default.

use domain::{KeyRecord, NewRecord, Phase, RecoveryPoint, RideParams, RideWrite, StoredResponse};
use ports::{RideRow, StoreError, User};

/// Columns of `rides` for [`RideSqlRow`], as a literal for `concat!`.
macro_rules! ride_columns {
    () => {
        "id, user_id, idempotency_key_id, origin_lat, origin_lon, target_lat, target_lon, \
         distance_mm, charge_id, created_at_ms"
    };
}
pub(crate) use ride_columns;

/// The [`StoreSql`] of a dialect: both write `$1, $2, …` placeholders (sqlx's SQLite driver
/// binds them by position too), so the statements differ only in three places: the key
/// columns (`$columns!()`, where Postgres casts JSON to text), the row lock taken by the
/// locking reads (`for_update`), and the cast of JSON text parameters (`json`).
macro_rules! store_sql {
    ($columns:ident, for_update = $lock:literal, json = $json:literal) => {
        $crate::sql_rows::StoreSql {
            lock_key: concat!(
                "SELECT ",
                $columns!(),
                " FROM idempotency_keys k WHERE k.user_id = $1 AND k.idempotency_key = $2",
                $lock
            ),
            lock_key_by_id: concat!(
                "SELECT ",
                $columns!(),
                " FROM idempotency_keys k WHERE k.id = $1",
                $lock
            ),
            insert_key: concat!(
                "INSERT INTO idempotency_keys (user_id, idempotency_key, created_at_ms, \
                 last_run_at_ms, locked_at_ms, request_method, request_path, request_params, \
                 recovery_point, response_code, response_body, ride_id) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8",
                $json,
                ", $9, $10, $11",
                $json,
                ", $12) ON CONFLICT (user_id, idempotency_key) DO NOTHING RETURNING id"
            ),
            update_key: concat!(
                "UPDATE idempotency_keys SET last_run_at_ms = $1, locked_at_ms = $2, \
                 recovery_point = $3, response_code = $4, response_body = $5",
                $json,
                ", ride_id = $6 WHERE id = $7"
            ),
            insert_ride: "INSERT INTO rides (user_id, idempotency_key_id, origin_lat, \
                 origin_lon, target_lat, target_lon, distance_mm, created_at_ms) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8) RETURNING id",
            set_charge: "UPDATE rides SET charge_id = $1 WHERE id = $2",
            insert_audit: concat!(
                "INSERT INTO audit_records (user_id, action, data, origin_ip, resource_type, \
                 resource_id, created_at_ms) VALUES ($1, $2, $3",
                $json,
                ", $4, 'ride', $5, $6)"
            ),
            key: concat!(
                "SELECT ",
                $columns!(),
                " FROM idempotency_keys k WHERE k.user_id = $1 AND k.idempotency_key = $2"
            ),
            ride_by_key: concat!(
                "SELECT ",
                $crate::sql_rows::ride_columns!(),
                " FROM rides WHERE idempotency_key_id = $1"
            ),
            ride_by_id: concat!(
                "SELECT ",
                $crate::sql_rows::ride_columns!(),
                " FROM rides WHERE id = $1"
            ),
            rides_for_user: concat!(
                "SELECT ",
                $crate::sql_rows::ride_columns!(),
                " FROM rides WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
            ),
            user_by_email: "SELECT id, email FROM users WHERE email = $1",
            completable: concat!(
                "SELECT ",
                $columns!(),
                ", u.email AS user_email FROM idempotency_keys k \
                 JOIN users u ON u.id = k.user_id \
                 WHERE k.recovery_point <> 'finished' AND k.created_at_ms < $1 \
                 AND k.last_run_at_ms < $2 AND (k.locked_at_ms IS NULL OR k.locked_at_ms <= $3) \
                 ORDER BY k.id LIMIT $4"
            ),
            unlock: "UPDATE idempotency_keys SET locked_at_ms = NULL WHERE id = $1",
            reap: "DELETE FROM idempotency_keys WHERE id IN \
                 (SELECT id FROM idempotency_keys WHERE created_at_ms < $1 ORDER BY id LIMIT $2)",
            truth: "SELECT (SELECT count(*) FROM rides) AS rides, \
                 (SELECT CAST(coalesce(sum(distance_mm), 0) AS BIGINT) FROM rides) \
                 AS distance_mm, \
                 (SELECT count(*) FROM idempotency_keys WHERE recovery_point <> 'finished') \
                 AS unfinished_keys",
        }
    };
}
pub(crate) use store_sql;

/// Binds a key's 12 columns in [`StoreSql::insert_key`]'s order to query `$q`.
macro_rules! bind_key {
    ($q:expr, $k:expr) => {{
        let k: &domain::KeyRecord = $k;
        let c = $crate::sql_rows::KeyColumns::of(k);
        $q.bind(k.user_id)
            .bind(k.key.as_str())
            .bind(k.created_at_ms)
            .bind(k.last_run_at_ms)
            .bind(k.locked_at_ms)
            .bind(k.request_method.as_str())
            .bind(k.request_path.as_str())
            .bind(c.request_params)
            .bind(k.recovery_point.as_str())
            .bind(c.response_code)
            .bind(c.response_body)
            .bind(k.ride_id)
    }};
}
pub(crate) use bind_key;

/// The most staged records the charge's commit writes in its one call.
pub(crate) const FINISH_RECORDS_MAX: usize = 4;

/// The SQL dialect, where statement texts differ beyond [`store_sql!`]'s knobs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum SqlDialect {
    /// Several writes as data-modifying CTEs in one statement; JSON and UUIDs cast from text.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    Postgres,
    /// Several writes as consecutive statements sharing one numbered argument list.
    #[cfg_attr(not(feature = "sqlite"), allow(dead_code))]
    Sqlite,
}

impl SqlDialect {
    /// `n` staged records as `VALUES` rows whose binds start at `$first`, 8 per record, as
    /// [`bind_staged!`] binds them (UUIDs and JSON as text).
    pub(crate) fn record_rows(self, first: usize, n: usize) -> String {
        let (uuid, json) = match self {
            Self::Postgres => ("::uuid", "::jsonb"),
            Self::Sqlite => ("", ""),
        };
        let rows: Vec<String> = (0..n)
            .map(|i| {
                let p = |c: usize| format!("${}", first + i * 8 + c);
                format!(
                    "({}{uuid}, {}, {}, {}, {}{json}, {}{uuid}, {}{uuid}, {})",
                    p(0),
                    p(1),
                    p(2),
                    p(3),
                    p(4),
                    p(5),
                    p(6),
                    p(7)
                )
            })
            .collect();
        rows.join(", ")
    }

    /// The insert of `n` staged records into the outbox table (see [`Self::record_rows`]).
    pub(crate) fn insert_records(self, first: usize, n: usize) -> String {
        let (table, id) = match self {
            Self::Postgres => ("outbox", "record_id"),
            Self::Sqlite => ("staged_records", "id"),
        };
        format!(
            "INSERT INTO {table} ({id}, stream, key, kind, payload, correlation_id, causation_id, \
             recorded_at_ms) VALUES {}",
            self.record_rows(first, n)
        )
    }
}

/// Binds a staged record's 8 columns to query `$q` in [`SqlDialect::record_rows`]' order
/// (UUIDs and JSON as text).
macro_rules! bind_staged {
    ($q:expr, $r:expr) => {{
        let r: &domain::NewRecord = $r;
        $q.bind(r.id.to_string())
            .bind(r.stream.as_str())
            .bind(r.key.as_str())
            .bind(r.kind.as_str())
            .bind(r.payload.to_string())
            .bind(r.correlation_id.map(|u| u.to_string()))
            .bind(r.causation_id.map(|u| u.to_string()))
            .bind(r.recorded_at_ms)
    }};
}
pub(crate) use bind_staged;

/// The charge's commit as ONE call, after the key was locked and checked: the key's new
/// state, the ride's charge id (when the phase sets it) and up to [`FINISH_RECORDS_MAX`]
/// staged records. The call returns one row: how many rides got the charge id (1 when the
/// phase sets none). Binds: the key as `StoreSql::update_key` (7), then charge id and ride id
/// when charging, then 8 per record.
#[derive(Debug)]
pub(crate) struct FinishSql(Vec<String>);

/// What [`FinishSql::plan`] chose for a phase.
#[derive(Debug)]
pub(crate) struct FinishPlan<'a> {
    /// The statement text.
    pub(crate) sql: &'a str,
    /// The ride the phase is about.
    pub(crate) ride_id: i64,
    /// The charge id to set, if any.
    pub(crate) charge_id: Option<&'a str>,
    /// The staged records, built with the ride id.
    pub(crate) records: Vec<NewRecord>,
}

impl FinishSql {
    /// Every variant (index = `charging * (FINISH_RECORDS_MAX + 1) + records`).
    pub(crate) fn new(dialect: SqlDialect) -> Self {
        let json = match dialect {
            SqlDialect::Postgres => "::jsonb",
            SqlDialect::Sqlite => "",
        };
        let mut all = Vec::new();
        for charging in [false, true] {
            for n in 0..=FINISH_RECORDS_MAX {
                let key = format!(
                    "UPDATE idempotency_keys SET last_run_at_ms = $1, locked_at_ms = $2, \
                     recovery_point = $3, response_code = $4, response_body = $5{json}, \
                     ride_id = $6 WHERE id = $7"
                );
                let first = if charging { 10 } else { 8 };
                let records = (n > 0).then(|| dialect.insert_records(first, n));
                let charge = "UPDATE rides SET charge_id = $8 WHERE id = $9";
                all.push(match dialect {
                    SqlDialect::Postgres => {
                        let mut sql = format!("WITH k AS ({key})");
                        if charging {
                            sql.push_str(&format!(", r AS ({charge} RETURNING id)"));
                        }
                        if let Some(records) = records {
                            sql.push_str(&format!(", o AS ({records})"));
                        }
                        sql.push_str(if charging {
                            " SELECT count(*) FROM r"
                        } else {
                            " SELECT 1::bigint"
                        });
                        sql
                    }
                    // `changes()` counts the rows of the statement just before it: the charge.
                    SqlDialect::Sqlite => {
                        let mut sql = format!("{key};");
                        if let Some(records) = records {
                            sql.push_str(&format!(" {records};"));
                        }
                        if charging {
                            sql.push_str(&format!(" {charge}; SELECT changes();"));
                        } else {
                            sql.push_str(" SELECT 1;");
                        }
                        sql
                    }
                });
            }
        }
        Self(all)
    }

    /// The one-call plan for `phase`, or `None` when it needs the engine's one-write-at-a-time
    /// path (it inserts a ride, writes an audit record, or stages more records).
    pub(crate) fn plan<'a>(&'a self, phase: &'a Phase, now_ms: i64) -> Option<FinishPlan<'a>> {
        let (ride_id, charge_id) = match &phase.ride {
            RideWrite::SetCharge { ride_id, charge_id } => (*ride_id, Some(charge_id.as_str())),
            RideWrite::Existing(ride_id) => (*ride_id, None),
            RideWrite::Insert { .. } => return None,
        };
        if phase.audit.is_some() || phase.records.len() > FINISH_RECORDS_MAX {
            return None;
        }
        let records: Vec<NewRecord> = phase
            .records
            .iter()
            .map(|d| d.build(ride_id, now_ms))
            .collect();
        let index = usize::from(charge_id.is_some()) * (FINISH_RECORDS_MAX + 1) + records.len();
        Some(FinishPlan {
            sql: &self.0[index],
            ride_id,
            charge_id,
            records,
        })
    }
}

/// The statements of one SQL dialect behind the phase engine and the store's reads. Both
/// dialects bind the same values in the same order (listed on each field), so one macro body
/// ([`sql_phase_tx`], [`sql_store_reads`]) runs either.
#[derive(Debug)]
pub(crate) struct StoreSql {
    /// user id, key text → a locked [`KeyRow`].
    pub(crate) lock_key: &'static str,
    /// key id → a locked [`KeyRow`].
    pub(crate) lock_key_by_id: &'static str,
    /// user id, key text, created, last run, locked, method, path, params (JSON text),
    /// recovery point, response code, response body (JSON text), ride id → id, or no row when
    /// the user has that key already.
    pub(crate) insert_key: &'static str,
    /// last run, locked, recovery point, response code, response body (JSON text), ride id,
    /// key id.
    pub(crate) update_key: &'static str,
    /// user id, key id, origin lat, origin lon, target lat, target lon, distance, created → id.
    pub(crate) insert_ride: &'static str,
    /// charge id, ride id.
    pub(crate) set_charge: &'static str,
    /// user id, action, data (JSON text), origin ip, ride id, created.
    pub(crate) insert_audit: &'static str,
    /// user id, key text → [`KeyRow`] (no lock).
    pub(crate) key: &'static str,
    /// key id → [`RideSqlRow`].
    pub(crate) ride_by_key: &'static str,
    /// ride id → [`RideSqlRow`].
    pub(crate) ride_by_id: &'static str,
    /// user id, before id, limit → [`RideSqlRow`]s, newest first.
    pub(crate) rides_for_user: &'static str,
    /// email → [`UserRow`].
    pub(crate) user_by_email: &'static str,
    /// created before, last run before, lock expired at or before, limit → [`KeyWithEmail`]s.
    pub(crate) completable: &'static str,
    /// key id.
    pub(crate) unlock: &'static str,
    /// created before, limit.
    pub(crate) reap: &'static str,
    /// → [`TruthRow`].
    pub(crate) truth: &'static str,
}

/// `impl PhaseTx for $ty` for a SQL dialect, from its [`StoreSql`] and [`FinishSql`], plus
/// the dialect's own `{ items }` (`stage`, `commit`). `$ty` has `fn conn(&mut self) -> &mut
/// <Db>::Connection`, and a function `db` in scope translates sqlx errors.
macro_rules! sql_phase_tx {
    ($ty:ty, $sql:expr, $finish:expr, { $($items:tt)* }) => {
        #[async_trait::async_trait]
        impl $crate::phase::PhaseTx for $ty {
        async fn finish_phase(
            &mut self,
            after: &domain::KeyRecord,
            phase: &domain::Phase,
            now_ms: i64,
        ) -> Result<(), ports::StoreError> {
            let Some(plan) = $finish.plan(phase, now_ms) else {
                return $crate::phase::finish_one_at_a_time(self, after, phase, now_ms).await;
            };
            let c = $crate::sql_rows::KeyColumns::of(after);
            let mut q = sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(plan.sql))
                .bind(after.last_run_at_ms)
                .bind(after.locked_at_ms)
                .bind(after.recovery_point.as_str())
                .bind(c.response_code)
                .bind(c.response_body)
                .bind(after.ride_id)
                .bind(after.id);
            if let Some(charge) = plan.charge_id {
                q = q.bind(charge.to_owned()).bind(plan.ride_id);
            }
            for r in &plan.records {
                q = $crate::sql_rows::bind_staged!(q, r);
            }
            if q.fetch_one(self.conn()).await.map_err(db)? == 0 {
                return Err(ports::StoreError::NotFound(format!("ride {}", plan.ride_id)));
            }
            Ok(())
        }

        async fn lock_key(
            &mut self,
            user_id: i64,
            key: &str,
        ) -> Result<Option<domain::KeyRecord>, ports::StoreError> {
            let row = sqlx::query_as::<_, $crate::sql_rows::KeyRow>($sql.lock_key)
                .bind(user_id)
                .bind(key)
                .fetch_optional(self.conn())
                .await
                .map_err(db)?;
            row.map(domain::KeyRecord::try_from).transpose()
        }

        async fn lock_key_by_id(
            &mut self,
            key_id: i64,
        ) -> Result<Option<domain::KeyRecord>, ports::StoreError> {
            let row = sqlx::query_as::<_, $crate::sql_rows::KeyRow>($sql.lock_key_by_id)
                .bind(key_id)
                .fetch_optional(self.conn())
                .await
                .map_err(db)?;
            row.map(domain::KeyRecord::try_from).transpose()
        }

        async fn insert_key(
            &mut self,
            k: &domain::KeyRecord,
        ) -> Result<Option<i64>, ports::StoreError> {
            $crate::sql_rows::bind_key!(sqlx::query_scalar($sql.insert_key), k)
                .fetch_optional(self.conn())
                .await
                .map_err(db)
        }

        async fn update_key(&mut self, k: &domain::KeyRecord) -> Result<(), ports::StoreError> {
            let c = $crate::sql_rows::KeyColumns::of(k);
            sqlx::query($sql.update_key)
                .bind(k.last_run_at_ms)
                .bind(k.locked_at_ms)
                .bind(k.recovery_point.as_str())
                .bind(c.response_code)
                .bind(c.response_body)
                .bind(k.ride_id)
                .bind(k.id)
                .execute(self.conn())
                .await
                .map_err(db)?;
            Ok(())
        }

        async fn insert_ride(
            &mut self,
            r: &$crate::phase::NewRide,
        ) -> Result<i64, ports::StoreError> {
            sqlx::query_scalar($sql.insert_ride)
                .bind(r.user_id)
                .bind(r.key_id)
                .bind(r.params.origin_lat())
                .bind(r.params.origin_lon())
                .bind(r.params.target_lat())
                .bind(r.params.target_lon())
                .bind($crate::sql_rows::to_i64(r.distance_mm, "distance")?)
                .bind(r.created_at_ms)
                .fetch_one(self.conn())
                .await
                .map_err(db)
        }

        async fn set_charge(
            &mut self,
            ride_id: i64,
            charge_id: &str,
        ) -> Result<bool, ports::StoreError> {
            let done = sqlx::query($sql.set_charge)
                .bind(charge_id)
                .bind(ride_id)
                .execute(self.conn())
                .await
                .map_err(db)?;
            Ok(done.rows_affected() > 0)
        }

        async fn insert_audit(
            &mut self,
            a: &$crate::phase::NewAudit<'_>,
        ) -> Result<(), ports::StoreError> {
            sqlx::query($sql.insert_audit)
                .bind(a.user_id)
                .bind(&a.draft.action)
                .bind(a.draft.data.to_string())
                .bind(&a.draft.origin_ip)
                .bind(a.ride_id)
                .bind(a.created_at_ms)
                .execute(self.conn())
                .await
                .map_err(db)?;
            Ok(())
        }

        $($items)*
        }
    };
}
pub(crate) use sql_phase_tx;

/// `impl RideStore for $ty` for a SQL dialect: the engine's methods
/// ([`crate::phase::ride_store_impl`]), the reads from its [`StoreSql`], and the dialect's own
/// `{ items }`. `self.$pool()` is the pool to read from, and a function `db` in scope
/// translates sqlx errors.
macro_rules! sql_ride_store {
    ($ty:ty, $sql:expr, $pool:ident, create in a transaction, { $($items:tt)* }) => {
        $crate::sql_rows::sql_ride_store!(@reads $ty, $sql, $pool, [create in a transaction,], { $($items)* });
    };
    ($ty:ty, $sql:expr, $pool:ident, { $($items:tt)* }) => {
        $crate::sql_rows::sql_ride_store!(@reads $ty, $sql, $pool, [], { $($items)* });
    };
    (@reads $ty:ty, $sql:expr, $pool:ident, [$($create:tt)*], { $($items:tt)* }) => {
        $crate::phase::ride_store_impl!($ty, $($create)* {
        async fn user_by_email(
            &self,
            email: &str,
        ) -> Result<Option<ports::User>, ports::StoreError> {
            let row = sqlx::query_as::<_, $crate::sql_rows::UserRow>($sql.user_by_email)
                .bind(email)
                .fetch_optional(self.$pool())
                .await
                .map_err(db)?;
            Ok(row.map(ports::User::from))
        }

        async fn key(
            &self,
            user_id: i64,
            key: &str,
        ) -> Result<Option<domain::KeyRecord>, ports::StoreError> {
            let row = sqlx::query_as::<_, $crate::sql_rows::KeyRow>($sql.key)
                .bind(user_id)
                .bind(key)
                .fetch_optional(self.$pool())
                .await
                .map_err(db)?;
            row.map(domain::KeyRecord::try_from).transpose()
        }

        async fn ride_for_key(
            &self,
            key_id: i64,
        ) -> Result<Option<ports::RideRow>, ports::StoreError> {
            let row = sqlx::query_as::<_, $crate::sql_rows::RideSqlRow>($sql.ride_by_key)
                .bind(key_id)
                .fetch_optional(self.$pool())
                .await
                .map_err(db)?;
            row.map(ports::RideRow::try_from).transpose()
        }

        async fn ride(&self, ride_id: i64) -> Result<Option<ports::RideRow>, ports::StoreError> {
            let row = sqlx::query_as::<_, $crate::sql_rows::RideSqlRow>($sql.ride_by_id)
                .bind(ride_id)
                .fetch_optional(self.$pool())
                .await
                .map_err(db)?;
            row.map(ports::RideRow::try_from).transpose()
        }

        async fn rides_for_user(
            &self,
            user_id: i64,
            before_id: Option<i64>,
            limit: u32,
        ) -> Result<Vec<ports::RideRow>, ports::StoreError> {
            let rows = sqlx::query_as::<_, $crate::sql_rows::RideSqlRow>($sql.rides_for_user)
                .bind(user_id)
                .bind(before_id.unwrap_or(i64::MAX))
                .bind(i64::from(limit))
                .fetch_all(self.$pool())
                .await
                .map_err(db)?;
            $crate::sql_rows::decode_all(rows)
        }

        async fn completable_keys(
            &self,
            now_ms: i64,
            t: &domain::Thresholds,
            limit: u32,
        ) -> Result<Vec<(domain::KeyRecord, ports::User)>, ports::StoreError> {
            // The domain's rule (`KeyRecord::is_completable`) as bounds.
            let b = t.completable_bounds(now_ms);
            let rows = sqlx::query_as::<_, $crate::sql_rows::KeyWithEmail>($sql.completable)
                .bind(b.created_before)
                .bind(b.last_run_before)
                .bind(b.lock_expired_at_or_before)
                .bind(i64::from(limit))
                .fetch_all(self.$pool())
                .await
                .map_err(db)?;
            $crate::sql_rows::decode_all(rows)
        }

        async fn truth(&self) -> Result<ports::Truth, ports::StoreError> {
            // One statement, so the three numbers come from one snapshot.
            let row = sqlx::query_as::<_, $crate::sql_rows::TruthRow>($sql.truth)
                .fetch_one(self.$pool())
                .await
                .map_err(db)?;
            row.try_into()
        }

        $($items)*
        });
    };
}
pub(crate) use sql_ride_store;

/// Data in the store that the domain refuses.
pub(crate) fn corrupt(row: impl std::fmt::Display, what: impl std::fmt::Display) -> StoreError {
    StoreError::Other(format!("corrupt data in the store, {row}: {what}"))
}

/// An `idempotency_keys` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct KeyRow {
    id: i64,
    user_id: i64,
    idempotency_key: String,
    created_at_ms: i64,
    last_run_at_ms: i64,
    locked_at_ms: Option<i64>,
    request_method: String,
    request_path: String,
    request_params: String,
    recovery_point: String,
    response_code: Option<i64>,
    response_body: Option<String>,
    ride_id: Option<i64>,
}

impl TryFrom<KeyRow> for KeyRecord {
    type Error = StoreError;

    fn try_from(r: KeyRow) -> Result<Self, StoreError> {
        let row = format!("idempotency key {}", r.id);
        let request_params: RideParams =
            serde_json::from_str(&r.request_params).map_err(|e| corrupt(&row, e))?;
        let recovery_point =
            RecoveryPoint::parse(&r.recovery_point).map_err(|e| corrupt(&row, e))?;
        let response = match (r.response_code, r.response_body) {
            (Some(code), Some(body)) => Some(StoredResponse {
                status: u16::try_from(code)
                    .map_err(|_| corrupt(&row, format!("response code {code}")))?,
                body: serde_json::from_str(&body).map_err(|e| corrupt(&row, e))?,
            }),
            (None, None) => None,
            _ => {
                return Err(corrupt(
                    &row,
                    "a response code without a body, or the reverse",
                ));
            }
        };
        Ok(Self {
            id: r.id,
            user_id: r.user_id,
            key: r.idempotency_key,
            created_at_ms: r.created_at_ms,
            last_run_at_ms: r.last_run_at_ms,
            locked_at_ms: r.locked_at_ms,
            request_method: r.request_method,
            request_path: r.request_path,
            request_params,
            recovery_point,
            response,
            ride_id: r.ride_id,
        })
    }
}

/// A key's columns as both dialects bind them (JSON as text).
#[derive(Debug)]
pub(crate) struct KeyColumns {
    /// `request_params`.
    pub(crate) request_params: String,
    /// `response_code`.
    pub(crate) response_code: Option<i64>,
    /// `response_body`.
    pub(crate) response_body: Option<String>,
}

impl KeyColumns {
    /// Encodes the JSON columns of `key`.
    pub(crate) fn of(key: &KeyRecord) -> Self {
        Self {
            request_params: key.request_params.to_json().to_string(),
            response_code: key.response.as_ref().map(|r| i64::from(r.status)),
            response_body: key.response.as_ref().map(|r| r.body.to_string()),
        }
    }
}

/// A `rides` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct RideSqlRow {
    id: i64,
    user_id: i64,
    idempotency_key_id: Option<i64>,
    origin_lat: f64,
    origin_lon: f64,
    target_lat: f64,
    target_lon: f64,
    distance_mm: i64,
    charge_id: Option<String>,
    created_at_ms: i64,
}

impl TryFrom<RideSqlRow> for RideRow {
    type Error = StoreError;

    fn try_from(r: RideSqlRow) -> Result<Self, StoreError> {
        let row = format!("ride {}", r.id);
        let params = RideParams::new(r.origin_lat, r.origin_lon, r.target_lat, r.target_lon)
            .map_err(|e| corrupt(&row, e))?;
        let distance_mm = u64::try_from(r.distance_mm)
            .map_err(|_| corrupt(&row, format!("negative distance {}", r.distance_mm)))?;
        Ok(Self {
            id: r.id,
            user_id: r.user_id,
            idempotency_key_id: r.idempotency_key_id,
            params,
            distance_mm,
            charge_id: r.charge_id,
            created_at_ms: r.created_at_ms,
        })
    }
}

/// A `users` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct UserRow {
    id: i64,
    email: String,
}

impl From<UserRow> for User {
    fn from(r: UserRow) -> Self {
        Self {
            id: r.id,
            email: r.email,
        }
    }
}

/// A completable key with its user's email.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct KeyWithEmail {
    #[sqlx(flatten)]
    key: KeyRow,
    user_email: String,
}

impl TryFrom<KeyWithEmail> for (KeyRecord, User) {
    type Error = StoreError;

    fn try_from(r: KeyWithEmail) -> Result<Self, StoreError> {
        let key = KeyRecord::try_from(r.key)?;
        let user = User {
            id: key.user_id,
            email: r.user_email,
        };
        Ok((key, user))
    }
}

/// The store's counts, as one row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct TruthRow {
    rides: i64,
    distance_mm: i64,
    unfinished_keys: i64,
}

impl TryFrom<TruthRow> for ports::Truth {
    type Error = StoreError;

    fn try_from(r: TruthRow) -> Result<Self, StoreError> {
        let n = |what: &str, v: i64| {
            u64::try_from(v).map_err(|_| corrupt("counts", format!("negative {what} {v}")))
        };
        Ok(Self {
            rides: n("rides", r.rides)?,
            distance_mm: n("distance", r.distance_mm)?,
            unfinished_keys: n("unfinished keys", r.unfinished_keys)?,
        })
    }
}

/// Converts an unsigned quantity for SQL's signed `BIGINT`.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, StoreError> {
    i64::try_from(v).map_err(|_| StoreError::Other(format!("{what} out of range: {v}")))
}

/// Decodes a list of rows.
pub(crate) fn decode_all<R, T: TryFrom<R, Error = StoreError>>(
    rows: Vec<R>,
) -> Result<Vec<T>, StoreError> {
    rows.into_iter().map(T::try_from).collect()
}

/// The deletes of `RideStore::forget_user`, shared by both SQL dialects: in the open write
/// transaction `$tx`, finds the user (`$lock` is the dialect's row lock suffix, e.g.
/// `" FOR UPDATE"`), deletes its rides (returning their ids and distances), keys, audit
/// records and the user, and evaluates to `(user_id, ride.deleted records, keys deleted)`.
/// Returns `NotFound` from the enclosing function when there is no such user. A function `db`
/// in scope translates sqlx errors.
macro_rules! forget_user_deletes {
    ($tx:expr, $email:expr, $now_ms:expr, $lock:literal) => {{
        let user_id: Option<i64> =
            sqlx::query_scalar(concat!("SELECT id FROM users WHERE email = $1", $lock))
                .bind($email)
                .fetch_optional(&mut *$tx)
                .await
                .map_err(db)?;
        let Some(user_id) = user_id else {
            return Err(ports::StoreError::NotFound(format!("no user {}", $email)));
        };
        let rides: Vec<(i64, i64)> =
            sqlx::query_as("DELETE FROM rides WHERE user_id = $1 RETURNING id, distance_mm")
                .bind(user_id)
                .fetch_all(&mut *$tx)
                .await
                .map_err(db)?;
        let mut keys = 0;
        for (i, sql) in [
            "DELETE FROM idempotency_keys WHERE user_id = $1",
            "DELETE FROM audit_records WHERE user_id = $1",
            "DELETE FROM users WHERE id = $1",
        ]
        .into_iter()
        .enumerate()
        {
            let done = sqlx::query(sql)
                .bind(user_id)
                .execute(&mut *$tx)
                .await
                .map_err(db)?
                .rows_affected();
            if i == 0 {
                keys = done;
            }
        }
        let records: Vec<domain::NewRecord> = rides
            .iter()
            .map(|(id, d)| {
                domain::NewRecord::ride_deleted(
                    *id,
                    user_id,
                    u64::try_from(*d).unwrap_or(0),
                    $now_ms,
                )
            })
            .collect();
        (user_id, records, keys)
    }};
}
pub(crate) use forget_user_deletes;
