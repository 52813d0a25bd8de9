//! Consumers' checkpoints, results and leases, saved together.
//!
//! A checkpoint has two owners. The consumer *runtime* owns the [`Cursor`] (the log it is on,
//! the position, the duplicate marks, a pending seal): every service that asks "where is this
//! consumer?" (the trimmer, `rides log status`, `rides verify`, the demo, `GET /stats`) reads
//! the cursor through this port and never a consumer's own state. The consumer's *handler*
//! owns the `state` (JSON; `null` for a consumer that keeps no state here, such as one that
//! applies its effects to another system).
//!
//! Leases make one process the active instance of a scope (a consumer name, the streamer of a
//! store...) while others wait as hot standbys. A lease is fenced: every takeover increments
//! its epoch, and a [`Save`] that names a lease commits only while that lease (holder and
//! epoch) is still the stored one, checked in the save's transaction.

use async_trait::async_trait;
use domain::{Gap, LogRecord, Marks};
use serde::{Deserialize, Serialize};

use crate::error::ConsumerStoreError;
use crate::log::Position;

/// The runtime-owned part of a checkpoint, besides the position.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The kind of consumer that saved it (`distance`, `sync`...), set by the runtime from
    /// its handler; `None` before the first save.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The log the position belongs to; `None` means the log the process was started with
    /// (the consumer has never followed a cutover).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_url: Option<String>,
    /// The log a seal read on the current log points to; the runtime moves there once the
    /// current log has nothing more to read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sealed_to: Option<String>,
    /// The duplicate rule's marks.
    #[serde(default)]
    pub marks: Marks,
    /// Records skipped as duplicates so far.
    #[serde(default)]
    pub duplicates: u64,
    /// Records the log lost, found by the runtime ([`domain::gaps`]): reported (`GET
    /// /stats`, `rides log status`, `rides consumer list`, `rides verify`) until repaired
    /// records fill them or an operator acknowledges them. Empty in checkpoints saved before
    /// gaps were tracked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gaps: Vec<Gap>,
}

/// A consumer's saved checkpoint and result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Where its next read starts.
    pub position: Position,
    /// The rest of the runtime's checkpoint.
    pub cursor: Cursor,
    /// The handler's result (JSON; `null` when it keeps none, or never saved).
    pub state: serde_json::Value,
    /// Increments with every save; 0 for a registered consumer that never saved.
    pub version: u64,
    /// When it was last saved (ms), 0 if never.
    pub updated_at_ms: i64,
}

impl Checkpoint {
    /// A registered consumer that never saved.
    pub fn registered() -> Self {
        Self {
            position: Position::start(),
            cursor: Cursor::default(),
            state: serde_json::Value::Null,
            version: 0,
            updated_at_ms: 0,
        }
    }
}

/// A lease on a scope: its holder is the one active instance until `expires_at_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// What the lease is for, e.g. `consumer:distance-a` or `streamer`.
    pub scope: String,
    /// Who holds it (a process identity, unique per process run).
    pub holder: String,
    /// Increments at every change of holder (and when a holder takes it back after it
    /// expired), so a holder that was paused past its expiry cannot commit.
    pub epoch: u64,
    /// When it expires unless renewed (ms).
    pub expires_at_ms: i64,
}

/// A record a consumer set aside after its handler failed on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Parked {
    /// Its id in the consumer's dead-letter list.
    pub id: u64,
    /// The lane it was read from.
    pub lane: u32,
    /// The record.
    pub record: LogRecord,
    /// Why: the handler's last error.
    pub error: String,
    /// When it was parked (ms).
    pub parked_at_ms: i64,
}

/// A record to park (see [`Save::park`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ToPark {
    /// The lane it was read from.
    pub lane: u32,
    /// The record.
    pub record: LogRecord,
    /// Why.
    pub error: String,
}

/// One atomic save: position, cursor, state, and the dead-letter changes, under the version
/// loaded (and the lease held, when given).
#[derive(Debug, Clone, Copy)]
pub struct Save<'a> {
    /// The version loaded; the save fails with [`ConsumerStoreError::Conflict`] otherwise.
    pub expected_version: u64,
    /// The new position.
    pub position: &'a Position,
    /// The new cursor.
    pub cursor: &'a Cursor,
    /// The new state.
    pub state: &'a serde_json::Value,
    /// The save's time (ms).
    pub now_ms: i64,
    /// Fencing: when set, the save fails with [`ConsumerStoreError::Fenced`] unless this
    /// lease (scope, holder and epoch) is still the stored one. It is checked before the
    /// version, so a deposed holder learns that it is one rather than reloading and retrying.
    pub lease: Option<&'a Lease>,
    /// Records to add to the consumer's dead-letter list.
    pub park: &'a [ToPark],
    /// Ids of parked records to drop from it (they were handled after all).
    pub unpark: &'a [u64],
}

impl<'a> Save<'a> {
    /// A plain save: no lease, nothing parked or unparked.
    pub fn new(
        expected_version: u64,
        position: &'a Position,
        cursor: &'a Cursor,
        state: &'a serde_json::Value,
        now_ms: i64,
    ) -> Self {
        Self {
            expected_version,
            position,
            cursor,
            state,
            now_ms,
            lease: None,
            park: &[],
            unpark: &[],
        }
    }
}

/// Stores consumers' checkpoints with their results, their dead-letter lists, and leases.
///
/// # Contract (checked by `contract::consumer`)
/// - `save` writes position, cursor, state, parked records and unparked ids in ONE
///   transaction: after a crash either all are the new ones or all are the old ones.
/// - `save` MUST fail with [`ConsumerStoreError::Conflict`] when the stored version is not
///   `expected_version`, and then change nothing (two processes with one name never both win).
/// - `save` with a lease MUST fail with [`ConsumerStoreError::Fenced`] when that lease is no
///   longer the stored one (another holder, or a newer epoch), and then change nothing.
/// - `register` creates the consumer at [`Position::start`] (version 0) if it does not exist
///   and leaves an existing one unchanged. Registered consumers hold back log trimming.
/// - `remove` deletes a consumer's checkpoint, state and dead-letter list.
/// - `acquire_lease` grants a scope that is free or expired (a new epoch), renews it for its
///   current holder (same epoch, new expiry), and returns `None` while another holder's
///   lease is live. `release_lease` frees it at once, only for its current holder and epoch.
#[cfg_attr(feature = "test-util", mockall::automock)]
#[async_trait]
pub trait ConsumerStore: Send + Sync + 'static {
    /// Registers a consumer so that trimming waits for it.
    ///
    /// # Errors
    /// [`ConsumerStoreError::Unavailable`] when the store cannot be reached.
    async fn register(&self, name: &str) -> Result<(), ConsumerStoreError>;

    /// Loads a consumer, or `None` if it was never registered nor saved.
    ///
    /// # Errors
    /// [`ConsumerStoreError::Unavailable`] when the store cannot be reached;
    /// [`ConsumerStoreError::Other`] when the stored checkpoint cannot be read.
    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, ConsumerStoreError>;

    /// Saves atomically (see [`Save`]); returns the new version.
    ///
    /// # Errors
    /// [`ConsumerStoreError::Conflict`] on a version mismatch and
    /// [`ConsumerStoreError::Fenced`] on a lost lease (nothing written in either case).
    // The lifetime is named because mockall's `automock` rejects `&Save<'_>` here.
    async fn save<'a>(&self, name: &str, save: &Save<'a>) -> Result<u64, ConsumerStoreError>;

    /// Every registered consumer, by name.
    ///
    /// # Errors
    /// [`ConsumerStoreError::Unavailable`] when the store cannot be reached;
    /// [`ConsumerStoreError::Other`] when a stored checkpoint cannot be read.
    async fn list(&self) -> Result<Vec<(String, Checkpoint)>, ConsumerStoreError>;

    /// Deregisters a consumer: its checkpoint, state and dead-letter list are deleted, and
    /// it no longer holds back trimming. Returns whether it existed.
    ///
    /// # Errors
    /// [`ConsumerStoreError::Unavailable`] when the store cannot be reached.
    async fn remove(&self, name: &str) -> Result<bool, ConsumerStoreError>;

    /// The consumer's dead-letter list, oldest first.
    ///
    /// # Errors
    /// [`ConsumerStoreError::Unavailable`] when the store cannot be reached.
    async fn parked(&self, name: &str) -> Result<Vec<Parked>, ConsumerStoreError>;

    /// Takes or renews the lease on `scope` for `holder` until `now_ms + ttl_ms`; `None`
    /// while another holder's lease is live.
    ///
    /// # Errors
    /// [`ConsumerStoreError::Unavailable`] when the store cannot be reached.
    async fn acquire_lease(
        &self,
        scope: &str,
        holder: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Option<Lease>, ConsumerStoreError>;

    /// Frees `lease` at once if it is still the stored one (a standby may take it right
    /// away); otherwise does nothing.
    ///
    /// # Errors
    /// [`ConsumerStoreError::Unavailable`] when the store cannot be reached.
    async fn release_lease(&self, lease: &Lease) -> Result<(), ConsumerStoreError>;

    /// Every lease, live or expired, by scope.
    ///
    /// # Errors
    /// [`ConsumerStoreError::Unavailable`] when the store cannot be reached.
    async fn leases(&self) -> Result<Vec<Lease>, ConsumerStoreError>;
}

const _: fn(&dyn ConsumerStore) = |_| {};
