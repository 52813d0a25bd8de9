//! One error enum per port. Each says whether retrying the same call can help
//! ([`StoreError::retryable`] and friends); callers branch on the variants, never on strings.

use thiserror::Error;

/// Errors of [`crate::RideStore`] and [`crate::Outbox`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum StoreError {
    /// A concurrent transaction won (serialization failure, unique race, or the key moved on).
    /// The API answers 409 and unlocks the key; retrying the request can help.
    #[error("conflict with a concurrent request: {0}")]
    Conflict(String),
    /// The row the call is about does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// The store cannot be reached right now; retrying can help.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (bad data, bug, schema problem); retrying will not help.
    #[error("store error: {0}")]
    Other(String),
}

impl StoreError {
    /// Whether retrying the same call can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Conflict(_) | Self::Unavailable(_))
    }
}

/// Errors of [`crate::Log`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum LogError {
    /// The log cannot be reached right now; retrying can help.
    #[error("log unavailable: {0}")]
    Unavailable(String),
    /// A position that this log did not produce (another backend's, or garbage).
    #[error("invalid log position {0:?}")]
    InvalidPosition(String),
    /// Anything else; retrying will not help.
    #[error("log error: {0}")]
    Other(String),
}

impl LogError {
    /// Whether retrying the same call can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Errors of [`crate::ConsumerStore`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ConsumerStoreError {
    /// The saved version is not the one the caller loaded: another process with the same
    /// consumer name saved in between. Reload and redo the batch.
    #[error("consumer {0} was saved concurrently")]
    Conflict(String),
    /// The save named a lease that is no longer current: another instance took over. This
    /// instance must stop working on the scope (it is a standby now).
    #[error("lease lost: {0}")]
    Fenced(String),
    /// The store cannot be reached right now; retrying can help.
    #[error("consumer store unavailable: {0}")]
    Unavailable(String),
    /// Anything else; retrying will not help.
    #[error("consumer store error: {0}")]
    Other(String),
}

impl ConsumerStoreError {
    /// Whether retrying (after a reload) can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Conflict(_) | Self::Unavailable(_))
    }
}

/// Errors of [`crate::PaymentGateway`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum PaymentError {
    /// The card was declined; permanent (402). The message is the processor's.
    #[error("{0}")]
    CardDeclined(String),
    /// The processor failed; the reference stores this as a final 503.
    #[error("payment processor error: {0}")]
    Processor(String),
    /// The processor could not be reached, or its answer was lost; retrying with the same
    /// idempotency key can help and never charges twice.
    #[error("payment processor unavailable: {0}")]
    Unavailable(String),
}

impl PaymentError {
    /// Whether retrying the same call can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Errors of [`crate::Replica`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ReplicaError {
    /// The secondary datastore cannot be reached right now, or a concurrent writer won a race
    /// (deadlock, serialization failure); retrying the same call can help: every write of the
    /// port is idempotent.
    #[error("replica unavailable: {0}")]
    Unavailable(String),
    /// Anything else (bad data, schema problem, bug); retrying will not help.
    #[error("replica error: {0}")]
    Other(String),
}

impl ReplicaError {
    /// Whether retrying the same call can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Errors of [`crate::EventStore`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EventStoreError {
    /// Optimistic concurrency: the stream's last seq is not the one the append expected
    /// (another writer appended first). Reload the stream and decide again.
    #[error(
        "stream {stream_id} was appended to concurrently: expected last seq {expected}, found {actual}"
    )]
    Conflict {
        /// The stream.
        stream_id: String,
        /// The last seq the append expected.
        expected: u64,
        /// The stream's actual last seq.
        actual: u64,
    },
    /// A message with this id is already stored (ids are unique in a store).
    #[error("message {0} is already stored")]
    DuplicateMessage(uuid::Uuid),
    /// The append itself is wrong (a message of another stream, seqs with gaps); retrying
    /// will not help.
    #[error("invalid append: {0}")]
    InvalidAppend(String),
    /// No consumer group has this id (register it first).
    #[error("Consumer group {0} not found")]
    UnknownGroup(String),
    /// The worker no longer holds the claim it settles (it was released as stale and
    /// perhaps taken by another worker): nothing was written.
    #[error("claim lost: {0}")]
    ClaimLost(String),
    /// The backend cannot be reached right now; retrying can help.
    #[error("event store unavailable: {0}")]
    Unavailable(String),
    /// Anything else (bad data, schema problem, bug); retrying will not help.
    #[error("event store error: {0}")]
    Other(String),
}

impl EventStoreError {
    /// Whether retrying (after reloading, for a conflict) can succeed.
    pub fn retryable(&self) -> bool {
        matches!(self, Self::Conflict { .. } | Self::Unavailable(_))
    }
}
