//! Row structs shared by the SQL stores (SQLite and Postgres), and their one decoding into
//! domain values.
//!
//! Both dialects select the same column names and the same wire types (JSON as text, integers
//! as `BIGINT`), so one `sqlx::FromRow` struct per table reads both, and one function checks
//! each row. Data the store holds but the domain refuses is an error naming the row, never a
//! default.

use domain::{KeyRecord, RecoveryPoint, RideParams, StoredResponse};
use ports::{RideRow, StoreError, User};

/// Columns of `idempotency_keys AS k` for [`KeyRow`] (SQLite spelling; Postgres casts JSON
/// columns to text, see its store).
pub(crate) const KEY_COLUMNS: &str = "k.id, k.user_id, k.idempotency_key, k.created_at_ms, \
     k.last_run_at_ms, k.locked_at_ms, k.request_method, k.request_path, k.request_params, \
     k.recovery_point, k.response_code, k.response_body";

/// Columns of `rides` for [`RideSqlRow`].
pub(crate) const RIDE_COLUMNS: &str = "id, user_id, idempotency_key_id, origin_lat, origin_lon, \
     target_lat, target_lon, distance_mm, charge_id, created_at_ms";

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
