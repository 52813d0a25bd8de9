//! What the two SQL consumer stores share: the reads and the lease statements (`$n`
//! placeholders, valid on both dialects), and the decoding of their rows (`sqlx::FromRow`),
//! where corrupt data is an error that names the consumer. JSON columns are read as text
//! (`CAST(… AS TEXT)`: JSONB on Postgres, text on SQLite), then parsed here.

use ports::{Checkpoint, ConsumerStoreError, Cursor, Lease, Parked, Position};

/// The columns of a checkpoint, as [`CheckpointRow`] reads them.
macro_rules! checkpoint_columns {
    () => {
        "SELECT name, position, CAST(cursor AS TEXT) AS cursor, CAST(state AS TEXT) AS state, \
         version, updated_at_ms FROM consumer_checkpoints"
    };
}

/// One consumer's checkpoint: `$1` the name.
pub(crate) const LOAD: &str = concat!(checkpoint_columns!(), " WHERE name = $1");

/// Every checkpoint, by name.
pub(crate) const LIST: &str = concat!(checkpoint_columns!(), " ORDER BY name");

/// A consumer's dead-letter list, oldest first: `$1` the name.
pub(crate) const PARKED: &str = "SELECT id, lane, CAST(record AS TEXT) AS record, error, \
     parked_at_ms FROM consumer_parked WHERE name = $1 ORDER BY id";

/// Takes or renews a lease in one upsert that decides on the stored row: free or expired
/// (a new epoch), or the caller's own and live (the same epoch); else no row. `$1` scope,
/// `$2` holder, `$3` new expiry, `$4` now.
pub(crate) const ACQUIRE_LEASE: &str = "INSERT INTO consumer_leases AS l (scope, holder, epoch, expires_at_ms) \
     VALUES ($1, $2, 1, $3) \
     ON CONFLICT (scope) DO UPDATE SET \
       epoch = CASE WHEN l.expires_at_ms <= $4 THEN l.epoch + 1 ELSE l.epoch END, \
       holder = excluded.holder, expires_at_ms = excluded.expires_at_ms \
     WHERE l.expires_at_ms <= $4 OR l.holder = excluded.holder \
     RETURNING scope, holder, epoch, expires_at_ms";

/// Frees a lease at once, only for its holder and epoch: `$1` scope, `$2` holder, `$3` epoch.
pub(crate) const RELEASE_LEASE: &str = "UPDATE consumer_leases SET expires_at_ms = 0 \
     WHERE scope = $1 AND holder = $2 AND epoch = $3";

/// Every lease, by scope.
pub(crate) const LEASES: &str =
    "SELECT scope, holder, epoch, expires_at_ms FROM consumer_leases ORDER BY scope";

/// Data of consumer `name` that cannot be decoded.
pub(crate) fn bad(name: &str, what: impl std::fmt::Display) -> ConsumerStoreError {
    ConsumerStoreError::Other(format!(
        "corrupt data in the store, consumer {name:?}: {what}"
    ))
}

/// The error of a save whose lease is no longer the stored one.
pub(crate) fn fenced(lease: Option<&Lease>) -> ConsumerStoreError {
    ConsumerStoreError::Fenced(lease.map_or_else(String::new, |l| {
        format!("{} (holder {}, epoch {})", l.scope, l.holder, l.epoch)
    }))
}

/// A `consumer_checkpoints` row ([`LOAD`], [`LIST`]).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CheckpointRow {
    name: String,
    position: String,
    cursor: String,
    state: String,
    version: i64,
    updated_at_ms: i64,
}

impl CheckpointRow {
    /// The consumer's name and checkpoint.
    pub(crate) fn decode(self) -> Result<(String, Checkpoint), ConsumerStoreError> {
        let name = self.name;
        let (cursor, version) = (self.cursor, self.version);
        let checkpoint = Checkpoint {
            position: Position::new(self.position),
            cursor: serde_json::from_str::<Cursor>(&cursor)
                .map_err(|e| bad(&name, format_args!("unreadable cursor {cursor}: {e}")))?,
            state: serde_json::from_str(&self.state)
                .map_err(|e| bad(&name, format_args!("unreadable state: {e}")))?,
            version: u64::try_from(version)
                .map_err(|_| bad(&name, format_args!("negative version {version}")))?,
            updated_at_ms: self.updated_at_ms,
        };
        Ok((name, checkpoint))
    }
}

/// A `consumer_parked` row ([`PARKED`]).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct ParkedRow {
    id: i64,
    lane: i64,
    record: String,
    error: String,
    parked_at_ms: i64,
}

impl ParkedRow {
    /// The parked record of consumer `name`.
    pub(crate) fn decode(self, name: &str) -> Result<Parked, ConsumerStoreError> {
        let (id, lane) = (self.id, self.lane);
        Ok(Parked {
            id: u64::try_from(id).map_err(|_| bad(name, format_args!("parked id {id}")))?,
            lane: u32::try_from(lane)
                .map_err(|_| bad(name, format_args!("parked record {id}: lane {lane}")))?,
            record: serde_json::from_str(&self.record)
                .map_err(|e| bad(name, format_args!("parked record {id}: {e}")))?,
            error: self.error,
            parked_at_ms: self.parked_at_ms,
        })
    }
}

/// A `consumer_leases` row ([`ACQUIRE_LEASE`], [`LEASES`]).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct LeaseRow {
    scope: String,
    holder: String,
    epoch: i64,
    expires_at_ms: i64,
}

impl TryFrom<LeaseRow> for Lease {
    type Error = ConsumerStoreError;

    fn try_from(row: LeaseRow) -> Result<Self, ConsumerStoreError> {
        let (scope, epoch) = (row.scope, row.epoch);
        Ok(Lease {
            epoch: u64::try_from(epoch).map_err(|_| {
                ConsumerStoreError::Other(format!(
                    "corrupt data in the store, lease {scope:?}: epoch {epoch}"
                ))
            })?,
            holder: row.holder,
            expires_at_ms: row.expires_at_ms,
            scope,
        })
    }
}
