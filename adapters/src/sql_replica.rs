//! What the SQL replicas ([`ports::Replica`] on SQLite and on Postgres) share: the table,
//! its reads, the upsert's update clause, and the decoding of rows.
//!
//! Both dialects take `$n` placeholders, and the Postgres replica reaches its schema through
//! `search_path`, so every statement here is one text for both. Rows are read with the
//! store's own [`RideSqlRow`] (same column names and wire types), so a replica row decodes
//! exactly as a store row does: through the domain's validation, a corrupt row is an error
//! naming the ride, never a default.
//!
//! The table is `replica_rides`, never `rides`: a replica pointed by mistake at the store's
//! own file, database or schema must not write into the store's table.

use ports::{ReplicaError, RideRow, StoreError};

use crate::sql_rows::{RideSqlRow, ride_columns};

/// after id, limit → [`RideSqlRow`]s by increasing id.
pub(crate) const PAGE: &str = concat!(
    "SELECT ",
    ride_columns!(),
    " FROM replica_rides WHERE id > $1 ORDER BY id LIMIT $2"
);

/// user id, before id, limit → [`RideSqlRow`]s, newest first (the store's `rides_for_user`).
pub(crate) const RIDES_FOR_USER: &str = concat!(
    "SELECT ",
    ride_columns!(),
    " FROM replica_rides WHERE user_id = $1 AND id < $2 ORDER BY id DESC LIMIT $3"
);

/// → the number of rows.
pub(crate) const COUNT: &str = "SELECT count(*) FROM replica_rides";

/// The start of an upsert; a dialect adds the rows (10 columns in this order) and
/// [`ON_CONFLICT`].
pub(crate) const INSERT: &str = "INSERT INTO replica_rides (id, user_id, idempotency_key_id, \
     origin_lat, origin_lon, target_lat, target_lon, distance_mm, charge_id, created_at_ms) ";

/// The end of an upsert: an existing row is replaced whole (last write wins).
pub(crate) const ON_CONFLICT: &str = " ON CONFLICT (id) DO UPDATE SET \
     user_id = excluded.user_id, idempotency_key_id = excluded.idempotency_key_id, \
     origin_lat = excluded.origin_lat, origin_lon = excluded.origin_lon, \
     target_lat = excluded.target_lat, target_lon = excluded.target_lon, \
     distance_mm = excluded.distance_mm, charge_id = excluded.charge_id, \
     created_at_ms = excluded.created_at_ms";

/// A limit as SQL's `BIGINT`.
pub(crate) fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A ride's distance as SQL's `BIGINT`.
pub(crate) fn distance(r: &RideRow) -> Result<i64, ReplicaError> {
    i64::try_from(r.distance_mm).map_err(|_| {
        ReplicaError::Other(format!(
            "ride {}: distance out of range: {}",
            r.id, r.distance_mm
        ))
    })
}

/// Decodes rows read from the replica.
pub(crate) fn decode(rows: Vec<RideSqlRow>) -> Result<Vec<RideRow>, ReplicaError> {
    rows.into_iter()
        .map(|r| {
            RideRow::try_from(r).map_err(|e| match e {
                StoreError::Unavailable(m) => ReplicaError::Unavailable(m),
                StoreError::Conflict(m) | StoreError::NotFound(m) | StoreError::Other(m) => {
                    ReplicaError::Other(format!("in the replica: {m}"))
                }
            })
        })
        .collect()
}

/// `impl Replica for $ty` for a SQL dialect: the shared reads, plus the dialect's own
/// `{ items }` (`describe`, `ping`, `upsert`, `delete`). `self.$reader()` is the pool to read
/// from, and a function `db` in scope translates sqlx errors into [`ReplicaError`].
macro_rules! sql_replica {
    ($ty:ty, $reader:ident, { $($items:tt)* }) => {
        #[async_trait::async_trait]
        impl ports::Replica for $ty {
        async fn page(
            &self,
            after_id: i64,
            limit: usize,
        ) -> Result<Vec<ports::RideRow>, ports::ReplicaError> {
            let rows =
                sqlx::query_as::<_, $crate::sql_rows::RideSqlRow>($crate::sql_replica::PAGE)
                    .bind(after_id)
                    .bind($crate::sql_replica::limit(limit))
                    .fetch_all(self.$reader())
                    .await
                    .map_err(db)?;
            $crate::sql_replica::decode(rows)
        }

        async fn count(&self) -> Result<u64, ports::ReplicaError> {
            let n: i64 = sqlx::query_scalar($crate::sql_replica::COUNT)
                .fetch_one(self.$reader())
                .await
                .map_err(db)?;
            Ok(n.unsigned_abs())
        }

        async fn rides_for_user(
            &self,
            user_id: i64,
            before_id: Option<i64>,
            limit: usize,
        ) -> Result<Vec<ports::RideRow>, ports::ReplicaError> {
            let rows = sqlx::query_as::<_, $crate::sql_rows::RideSqlRow>(
                $crate::sql_replica::RIDES_FOR_USER,
            )
            .bind(user_id)
            .bind(before_id.unwrap_or(i64::MAX))
            .bind($crate::sql_replica::limit(limit))
            .fetch_all(self.$reader())
            .await
            .map_err(db)?;
            $crate::sql_replica::decode(rows)
        }

        $($items)*
        }
    };
}
pub(crate) use sql_replica;
