//! A secondary datastore kept in sync with the canonical store (redstream's model).
//!
//! ```text
//!   change records (ride ids)       one batched reload            the replica
//!   ride.created 7, ride.charged 7 ─▶ RideStore::rides_by_ids ─┬─▶ upsert(rows found)
//!   ride.deleted 9                                             └─▶ delete(ids not found)
//! ```
//!
//! The sync consumer never copies a change record's payload into the replica: it reloads the
//! *current* rows of the rides a batch mentions and writes those. So a write is always the
//! newest state the store had at reload time, a redelivered or reordered batch writes the same
//! rows again, and the replica converges on the store whatever the order of the records.
//! That is why the writes here are plain "last write wins" upserts and deletes, idempotent
//! and insensitive to order, and why the port needs no versions or sequence numbers.

use async_trait::async_trait;

use crate::error::ReplicaError;
use crate::store::RideRow;

/// A secondary datastore holding copies of the store's rides.
///
/// # Contract (checked by `contract::replica`)
/// - [`Replica::upsert`] makes each given row the replica's row for its id, fields and all
///   (a field that became `None`, such as a reaped key id, is cleared). It is idempotent, and
///   a batch is applied as a whole with ONE round trip (statement, pipeline or script) per
///   call, never one per row. Within one batch a later row for the same id wins.
/// - [`Replica::delete`] removes exactly the given ids; a missing id is not an error.
/// - Coordinates read back bit for bit as written (`f64::to_bits`), like every other field;
///   the one exception is `-0.0`, which MAY read back as `0.0` (SQLite stores an integral
///   REAL as an integer, in the store as in its replica), an equal value.
/// - Concurrent calls never leave a ride half written: a ride, its per-user listing entry and
///   its place in [`Replica::page`] and [`Replica::count`] change together.
/// - The reads see every write that returned `Ok` before they started.
/// - Ids up to 2^53 in absolute value are stored exactly; an adapter MAY refuse larger ones
///   with [`ReplicaError::Other`] (the Redis adapter scores its sorted sets by id, an `f64`).
#[cfg_attr(feature = "test-util", mockall::automock)]
#[async_trait]
pub trait Replica: Send + Sync + 'static {
    /// A human-readable description, e.g. `sqlite:///data/replica.db` (no secrets).
    fn describe(&self) -> String;

    /// A cheap health check.
    ///
    /// # Errors
    /// [`ReplicaError::Unavailable`] when the replica cannot be reached.
    async fn ping(&self) -> Result<(), ReplicaError>;

    /// Writes `rides` as the current rows of their ids (insert or replace), in one round trip.
    /// An empty slice does nothing.
    ///
    /// # Errors
    /// [`ReplicaError::Unavailable`] when the replica cannot be reached or a concurrent
    /// writer won a race (retry the whole batch: it is idempotent).
    async fn upsert(&self, rides: &[RideRow]) -> Result<(), ReplicaError>;

    /// Deletes the rides with these ids, in one round trip; missing ids are ignored and an
    /// empty slice does nothing.
    ///
    /// # Errors
    /// As [`Replica::upsert`].
    async fn delete(&self, ids: &[i64]) -> Result<(), ReplicaError>;

    /// Up to `limit` rides with ids greater than `after_id`, in increasing id order: a full
    /// scan for row-by-row verification is `page(i64::MIN, n)`, then `page(last id, n)` until
    /// a page comes back empty.
    ///
    /// # Errors
    /// [`ReplicaError::Unavailable`] when the replica cannot be reached;
    /// [`ReplicaError::Other`] for a stored row that does not decode (named in the message).
    async fn page(&self, after_id: i64, limit: usize) -> Result<Vec<RideRow>, ReplicaError>;

    /// How many rides the replica holds.
    ///
    /// # Errors
    /// [`ReplicaError::Unavailable`] when the replica cannot be reached.
    async fn count(&self) -> Result<u64, ReplicaError>;

    /// A user's rides, newest first (decreasing ids, the order of
    /// [`crate::RideStore::rides_for_user`]), at most `limit`, with ids below `before_id`
    /// when given: "my rides", served from the replica.
    ///
    /// # Errors
    /// As [`Replica::page`].
    async fn rides_for_user(
        &self,
        user_id: i64,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RideRow>, ReplicaError>;
}

const _: fn(&dyn Replica) = |_| {};
