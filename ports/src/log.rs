//! The pluggable log.
//!
//! ```text
//!   append([r1 r2 r3])        append([r3 r4])   (a double send repeats records; that is fine)
//!        │                         │
//!        ▼                         ▼
//!   ┌────┬────┬────┬────┬────┬────┐
//!   │ r1 │ r2 │ r3 │ r3 │ r4 │    │  ... head
//!   └────┴────┴────┴────┴────┴────┘
//!   ▲         ▲
//!   │         └── a consumer's checkpoint: read(from) returns what comes after it
//!   └── trim(checkpoints) removes only what every registered checkpoint has passed
//! ```
//!
//! # Ordering
//!
//! A log is divided into *lanes* (1 for most backends; Kafka's partitions). Within one lane,
//! records are read in the order they were appended. Records of one entity (same
//! [`domain::LogRecord::key`]) always go to the same lane. Appending a batch appends its
//! records in slice order. Consumers recognise duplicates per (producer, lane) by the
//! producer's sequence, so a log MUST NOT reorder records within a lane.
//!
//! # Positions
//!
//! A [`Position`] is opaque and owned by the adapter that produced it (an offset, a Redis id,
//! a partition → offset map...). [`Position::start`] is before everything, for every adapter.
//! Positions are saved by consumers in their own store, in the same transaction as their
//! result, and handed back to [`Log::read`].

use std::time::Duration;

use async_trait::async_trait;
use domain::LogRecord;
use serde::{Deserialize, Serialize};

use crate::error::LogError;

/// An adapter-encoded position in a log. The empty position is the start of the log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Position(String);

impl Position {
    /// Before every record.
    pub fn start() -> Self {
        Self(String::new())
    }
    /// Wraps an adapter's encoding.
    pub fn new(encoded: impl Into<String>) -> Self {
        Self(encoded.into())
    }
    /// The adapter's encoding (empty at the start).
    pub fn as_str(&self) -> &str {
        &self.0
    }
    /// Whether this is [`Position::start`].
    pub fn is_start(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.0.is_empty() {
            f.write_str("start")
        } else {
            f.write_str(&self.0)
        }
    }
}

/// One record as read from a log, with the lane it was read from.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The lane (0 for single-lane logs; the partition for Kafka).
    pub lane: u32,
    /// The record.
    pub record: LogRecord,
}

/// What [`Log::read`] returns: records in lane order, and the position after the last one.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// The records read, possibly none.
    pub deliveries: Vec<Delivery>,
    /// Where the next read starts; equals the `from` of the read when nothing was read.
    pub next: Position,
}

/// A durable, ordered, append-only log of [`LogRecord`]s.
///
/// # Contract (checked by `contract::log`)
/// - `append` is durable when it returns `Ok`; a failed `append` MAY have appended a prefix.
/// - `read` never returns a record at or before `from`, never skips one after it, and returns
///   records of one lane in append order.
/// - `read` with nothing to return waits up to `wait` and MUST wake as soon as a record is
///   appended (no busy polling, no fixed sleep).
/// - `trim(cps)` removes only records that every position in `cps` has passed; with an empty
///   `cps` it removes nothing.
#[allow(
    clippy::len_without_is_empty,
    reason = "`len` is a remote count for stats and tests; emptiness is never asked on its own"
)]
#[cfg_attr(feature = "test-util", mockall::automock)]
#[async_trait]
pub trait Log: Send + Sync + 'static {
    /// A human-readable description, e.g. `sled:///var/lib/rides/log` (no secrets).
    fn describe(&self) -> String;

    /// A cheap health check.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the backend cannot be reached.
    async fn ping(&self) -> Result<(), LogError>;

    /// Appends `records` in order, durably.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the backend cannot be reached (retry the whole batch).
    async fn append(&self, records: &[LogRecord]) -> Result<(), LogError>;

    /// Reads up to `max` records after `from`, waiting up to `wait` when there are none.
    ///
    /// # Errors
    /// [`LogError::InvalidPosition`] when `from` was not produced by this log;
    /// [`LogError::Unavailable`] when the backend cannot be reached.
    async fn read(&self, from: &Position, max: usize, wait: Duration) -> Result<Batch, LogError>;

    /// How many records come after `from` (a consumer's lag).
    ///
    /// # Errors
    /// As [`Log::read`].
    async fn lag(&self, from: &Position) -> Result<u64, LogError>;

    /// Removes the records that every checkpoint in `checkpoints` has passed, and returns how
    /// many were removed. MUST remove nothing when `checkpoints` is empty or contains
    /// [`Position::start`].
    ///
    /// # Errors
    /// As [`Log::read`].
    async fn trim(&self, checkpoints: &[Position]) -> Result<u64, LogError>;

    /// How long delivery is held back right now by a transaction still in flight, for a log
    /// whose gap-free ordering can make records wait for it (the Postgres-only log); `None`
    /// when nothing is held back. A log without such a stall keeps the default, `None`.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the backend cannot be reached.
    async fn held_back(&self) -> Result<Option<Duration>, LogError> {
        Ok(None)
    }

    /// How many records the log holds now.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the backend cannot be reached.
    async fn len(&self) -> Result<u64, LogError>;
}

const _: fn(&dyn Log) = |_| {};
