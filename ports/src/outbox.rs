//! The streamer's view of the records staged by the store.

use std::time::Duration;

use async_trait::async_trait;
use domain::{LogRecord, NewRecord};
use serde::{Deserialize, Serialize};

use crate::error::StoreError;

/// Where the streamer publishes: a log URL, and the sequence after which records go there.
///
/// A log cutover (`rides log cutover --to URL`) stages a `log.cutover` control record; when
/// the streamer reaches it, it appends it to the current log as a seal and stores the route
/// `{log_url: URL, after_seq: <the cutover record's seq>}`. From then on [`Outbox::peek`] only
/// returns records sequenced after the cutover, which go to the new log. The route lives in
/// the store so that a restarted streamer continues on the right log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    /// The log records are published on.
    pub log_url: String,
    /// Records at or below this sequence belong to earlier logs.
    pub after_seq: u64,
}

/// What a store remembers of a record after the streamer removed it from the outbox (it
/// reached the log): enough to tell which entity a sequence was about, so that `rides log
/// repair` can rebuild a record the log lost from the canonical data, under its original
/// producer and sequence. Kept in the store's `published` index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    /// The record's producer.
    pub producer: String,
    /// Its producer sequence.
    pub seq: u64,
    /// Its kind (`ride.created`...).
    pub kind: String,
    /// Its entity key (`ride:42`).
    pub key: String,
}

/// Staged records waiting to be moved to the log.
///
/// Records are staged only by [`crate::RideStore::run_phase`], in the phase's transaction,
/// and are sequenced in commit order: [`Outbox::peek`] never returns a record with sequence
/// `n` while a record with a smaller sequence that will still be staged is missing.
///
/// # Contract (checked by `contract::outbox`)
/// - `peek` returns staged records in increasing sequence order and does not remove them;
///   with a [`Route`] set, only records above its `after_seq`.
/// - `peek_after(s, max)` returns what `peek` would, without the records at or below `s`.
/// - `stage` sequences its records exactly like a phase's, in a transaction of its own.
/// - `set_route` then `route` returns the same route, also after a restart.
/// - `remove` removes exactly the given sequences (never "everything up to n"), and notes
///   each removed record's (producer, seq, kind, key) in the `published` index, in the same
///   transaction.
/// - `published(p, from, to)` returns the index entries of producer `p` in `from..=to`, in
///   sequence order; `forget_published(p, s)` removes exactly those below `s`.
/// - `restage` stages records that keep their producer and sequence; `peek` returns them
///   (with that producer and sequence) like any staged record, and `remove` removes them by
///   that sequence.
/// - `wait_staged` returns early when a phase staged records (in this process, or in any
///   process where the backend supports it), and otherwise after `timeout`.
#[cfg_attr(feature = "test-util", mockall::automock)]
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// The producer name this outbox sequences its records under.
    fn producer(&self) -> String;

    /// Up to `max` staged records above the route's `after_seq`, lowest sequence first.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn peek(&self, max: usize) -> Result<Vec<LogRecord>, StoreError>;

    /// Up to `max` staged records above both `after_seq` and the route's `after_seq`, lowest
    /// sequence first: [`Outbox::peek`] resumed after a cursor. The streamer reads its next
    /// batch with it while the current one (up to `after_seq`) is still being appended and
    /// is not removed yet. `peek_after(0, max)` is `peek(max)`.
    ///
    /// `after_seq` is compared like the route's: with the sequence this outbox gave the
    /// record (a record [`crate::Log::append`]ed into a Postgres store keeps its producer's
    /// sequence, which `peek` hands out, but is ordered by the store's own).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn peek_after(&self, after_seq: u64, max: usize) -> Result<Vec<LogRecord>, StoreError>;

    /// Removes exactly the records with these sequences; returns how many were removed.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn remove(&self, seqs: &[u64]) -> Result<u64, StoreError>;

    /// How many records are staged.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn staged(&self) -> Result<u64, StoreError>;

    /// Waits for a staging wake-up or `timeout`, whichever comes first.
    async fn wait_staged(&self, timeout: Duration);

    /// Stages records outside any ride phase (control records such as a log cutover), in one
    /// transaction, sequenced in commit order like every other staged record.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn stage(&self, records: &[NewRecord]) -> Result<(), StoreError>;

    /// The `published` index (see [`Published`]) of `producer` for the sequences
    /// `from_seq..=to_seq`, lowest first.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn published(
        &self,
        producer: &str,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<Vec<Published>, StoreError>;

    /// Forgets the `published` index entries of `producer` below `below_seq` (no consumer
    /// can miss them any more: see [`domain::gaps::index_needed_from`]); returns how many.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn forget_published(&self, producer: &str, below_seq: u64) -> Result<u64, StoreError>;

    /// Stages records that keep their producer and sequence (a repair re-stages what a log
    /// lost, rebuilt from the canonical data), in one transaction. A record whose sequence
    /// is still staged is left as it is.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached; [`StoreError::Other`]
    /// for a record of another producer where the store cannot keep one.
    async fn restage(&self, records: &[LogRecord]) -> Result<(), StoreError>;

    /// The streamer's current route, if a cutover ever set one.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn route(&self) -> Result<Option<Route>, StoreError>;

    /// Stores the streamer's route (durably: a restarted streamer reads it back).
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn set_route(&self, route: &Route) -> Result<(), StoreError>;
}

const _: fn(&dyn Outbox) = |_| {};
