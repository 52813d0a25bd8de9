//! The canonical store: users, rides, idempotency keys, audit records, and the outbox.

use async_trait::async_trait;
pub use domain::{BeginRequest, Begun};
use domain::{KeyRecord, Phase, RecoveryPoint, RideParams, Thresholds};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// A user (the demo trusts the `Authorization` header as the user's email).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// Id.
    pub id: i64,
    /// Unique email.
    pub email: String,
}

/// A ride as stored.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RideRow {
    /// Id.
    pub id: i64,
    /// Owner.
    pub user_id: i64,
    /// The key that created it (`None` once the key was reaped).
    pub idempotency_key_id: Option<i64>,
    /// Coordinates.
    pub params: RideParams,
    /// Great-circle distance in millimetres.
    pub distance_mm: u64,
    /// The processor's charge id once charged.
    pub charge_id: Option<String>,
    /// Creation time (ms).
    pub created_at_ms: i64,
}

/// What [`RideStore::forget_user`] deleted.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Forgotten {
    /// The user's id.
    pub user_id: i64,
    /// Rides deleted (one `ride.deleted` record staged for each).
    pub rides: u64,
    /// Idempotency keys deleted.
    pub keys: u64,
}

/// The store's own account of the rides, which every consumer must end up agreeing with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Truth {
    /// Number of rides.
    pub rides: u64,
    /// Sum of their distances, in millimetres.
    pub distance_mm: u64,
    /// Keys that are not finished yet.
    pub unfinished_keys: u64,
}

/// The canonical store.
///
/// # Contract (checked by `contract::store`)
/// - [`RideStore::begin`] runs phase 1 in ONE transaction, deciding with
///   [`KeyRecord::decide`]: a new key is inserted locked, an abandoned one is resumed (lock
///   taken, `last_run_at` bumped), the other outcomes write nothing. A key that is (or was
///   left) at `started` gets its ride in the same transaction
///   ([`KeyRecord::opening_phase`]), so `Proceed` returns it at `ride_created`: the first of
///   the ride's two commits. Two concurrent `begin`s with one new key MUST NOT both return
///   `Proceed`: the loser gets `InProgress` or [`StoreError::Conflict`].
/// - [`RideStore::run_phase`] commits everything the [`Phase`] says in ONE transaction, or
///   nothing: the ride write, the audit record, the staged records (built with the ride's id
///   and sequenced in commit order), and the key transition. It MUST fail with
///   [`StoreError::Conflict`] and write nothing when the key is not at `expected`.
/// - [`RideStore::unlock`] clears the lock and nothing else.
#[cfg_attr(feature = "test-util", mockall::automock)]
#[async_trait]
pub trait RideStore: Send + Sync + 'static {
    /// A human-readable description, e.g. `sqlite:///data/rides.db` (no secrets).
    fn describe(&self) -> String;

    /// A cheap health check.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn ping(&self) -> Result<(), StoreError>;

    /// Finds a user by email.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;

    /// Creates a user, or returns the existing one with that email.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn ensure_user(&self, email: &str) -> Result<User, StoreError>;

    /// Phase 1: find or create the key and take its lock, or say why not; a key at `started`
    /// gets its ride in the same transaction.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when a concurrent request won a race for the key.
    async fn begin(&self, req: &BeginRequest) -> Result<Begun, StoreError>;

    /// Commits one atomic phase for the key `key_id`, which must be at `expected`; returns
    /// the key as it is afterwards.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when the key does not exist; [`StoreError::Conflict`] when it
    /// is not at `expected` or a concurrent transaction won.
    async fn run_phase(
        &self,
        key_id: i64,
        expected: RecoveryPoint,
        phase: &Phase,
        now_ms: i64,
    ) -> Result<KeyRecord, StoreError>;

    /// Releases the key's lock (after a failed phase).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn unlock(&self, key_id: i64) -> Result<(), StoreError>;

    /// Loads a key by user and key text.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn key(&self, user_id: i64, key: &str) -> Result<Option<KeyRecord>, StoreError>;

    /// Inserts a key exactly as given except its id, which the store assigns (fixtures,
    /// imports); returns it with its id.
    ///
    /// # Errors
    /// [`StoreError::Conflict`] when the user already has that key.
    async fn put_key(&self, key: &KeyRecord) -> Result<KeyRecord, StoreError>;

    /// The ride created for a key.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn ride_for_key(&self, key_id: i64) -> Result<Option<RideRow>, StoreError>;

    /// A ride by id.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn ride(&self, ride_id: i64) -> Result<Option<RideRow>, StoreError>;

    /// The rides with these ids that exist, in increasing id order, in ONE query (the sync
    /// consumer's batched reload). Missing ids are simply absent; an id given twice is
    /// returned once; an empty slice returns nothing.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn rides_by_ids(&self, ids: &[i64]) -> Result<Vec<RideRow>, StoreError>;

    /// Forgets a user (a right-to-erasure request), in ONE transaction and with set-based
    /// statements: deletes the user's rides, idempotency keys, audit records and the user,
    /// and stages one `ride.deleted` change record per deleted ride
    /// ([`domain::NewRecord::ride_deleted`]), so consumers and replicas drop them too.
    ///
    /// # Errors
    /// [`StoreError::NotFound`] when no user has this email (nothing changes);
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn forget_user(&self, email: &str, now_ms: i64) -> Result<Forgotten, StoreError>;

    /// A user's rides, newest first, with ids below `before_id` when given.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn rides_for_user(
        &self,
        user_id: i64,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RideRow>, StoreError>;

    /// Up to `limit` keys that the completer should push through now
    /// ([`KeyRecord::is_completable`]), each with its user.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn completable_keys(
        &self,
        now_ms: i64,
        thresholds: &Thresholds,
        limit: u32,
    ) -> Result<Vec<(KeyRecord, User)>, StoreError>;

    /// Deletes up to `limit` keys older than the reap threshold; rides keep existing with
    /// their key reference cleared. Returns how many were deleted.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn reap_keys(
        &self,
        now_ms: i64,
        thresholds: &Thresholds,
        limit: u32,
    ) -> Result<u64, StoreError>;

    /// The store's truth: ride count, total distance, unfinished keys.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn truth(&self) -> Result<Truth, StoreError>;
}

const _: fn(&dyn RideStore) = |_| {};
