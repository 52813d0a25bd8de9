//! The streamer's view of the records staged by the store.

use std::time::Duration;

use async_trait::async_trait;
use domain::LogRecord;

use crate::error::StoreError;

/// Staged records waiting to be moved to the log.
///
/// Records are staged only by [`crate::RideStore::run_phase`], in the phase's transaction,
/// and are sequenced in commit order: [`Outbox::peek`] never returns a record with sequence
/// `n` while a record with a smaller sequence that will still be staged is missing.
///
/// # Contract (checked by `contract::outbox`)
/// - `peek` returns staged records in increasing sequence order and does not remove them.
/// - `remove` removes exactly the given sequences (never "everything up to n").
/// - `wait_staged` returns early when a phase staged records (in this process, or in any
///   process where the backend supports it), and otherwise after `timeout`.
#[async_trait]
pub trait Outbox: Send + Sync + 'static {
    /// The producer name this outbox sequences its records under.
    fn producer(&self) -> String;

    /// Up to `max` staged records, lowest sequence first.
    ///
    /// # Errors
    /// [`StoreError::Unavailable`] when the store cannot be reached.
    async fn peek(&self, max: usize) -> Result<Vec<LogRecord>, StoreError>;

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
}

const _: fn(&dyn Outbox) = |_| {};
