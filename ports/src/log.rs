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

    /// Whether `from` lies beyond everything this log ever appended: the log lost its end
    /// (a volatile Redis restarted, a directory restored from an older backup), so a reader
    /// waiting there would wait for records that may never come, or skip new ones. The
    /// consumer runtime asks when a read found nothing (or refused the position), and then
    /// starts again from the start of the log with the loss reported. A log that cannot tell
    /// keeps the default, `false`.
    ///
    /// # Errors
    /// [`LogError::InvalidPosition`] when `from` was not produced by this kind of log;
    /// [`LogError::Unavailable`] when the backend cannot be reached.
    async fn beyond_end(&self, from: &Position) -> Result<bool, LogError> {
        let _ = from;
        Ok(false)
    }

    /// Whether every lane carries every record of each producer in sequence order, so that a
    /// jump in a producer's sequence on a lane proves that records were lost (DESIGN
    /// invariant 8). True for single-lane logs; false for a partitioned log (Kafka with more
    /// than one partition), where a producer's records are spread over the lanes and
    /// per-lane jumps are normal.
    fn gap_free_lanes(&self) -> bool {
        self.lanes() == 1
    }

    /// How many lanes the log has: 1 unless it partitions (Kafka: the topic's partitions).
    /// Order holds within a lane; lanes can be read separately, each by its own owner
    /// ([`Log::read_lane`]), which is how one consumer scales out.
    fn lanes(&self) -> u32 {
        1
    }

    /// [`Log::read`] restricted to `lane`: reads only that lane's records, and the position
    /// it returns covers that lane only. On a one-lane log, lane 0 is the whole log.
    ///
    /// # Errors
    /// As [`Log::read`]; [`LogError::Other`] for a lane the log does not have.
    async fn read_lane(
        &self,
        lane: u32,
        from: &Position,
        max: usize,
        wait: Duration,
    ) -> Result<Batch, LogError> {
        if lane == 0 && self.lanes() == 1 {
            self.read(from, max, wait).await
        } else {
            Err(no_such_lane(&self.describe(), lane, self.lanes()))
        }
    }

    /// [`Log::lag`] of a position returned by [`Log::read_lane`] for `lane`.
    ///
    /// # Errors
    /// As [`Log::read_lane`].
    async fn lag_lane(&self, lane: u32, from: &Position) -> Result<u64, LogError> {
        if lane == 0 && self.lanes() == 1 {
            self.lag(from).await
        } else {
            Err(no_such_lane(&self.describe(), lane, self.lanes()))
        }
    }

    /// One position of the whole log from one position per lane (`lanes[k]` from
    /// [`Log::read_lane`] of lane k, every lane present): what [`Log::trim`] and [`Log::lag`]
    /// take for a consumer that reads its lanes separately.
    ///
    /// # Errors
    /// [`LogError::InvalidPosition`] when a position is not one of its lane;
    /// [`LogError::Other`] when `lanes` does not hold one position per lane.
    fn merge_lanes(&self, lanes: &[Position]) -> Result<Position, LogError> {
        match lanes {
            [one] if self.lanes() == 1 => Ok(one.clone()),
            _ => Err(LogError::Other(format!(
                "{}: {} lane positions for {} lanes",
                self.describe(),
                lanes.len(),
                self.lanes()
            ))),
        }
    }
}

/// The error for a lane a log does not have.
pub fn no_such_lane(log: &str, lane: u32, lanes: u32) -> LogError {
    LogError::Other(format!("{log} has no lane {lane} (it has {lanes})"))
}

/// One lane of a log, as a log of its own: reads and lags through [`Log::read_lane`] and
/// [`Log::lag_lane`]; appends, trims and counts go to the whole log. A consumer that owns
/// one lane reads it through this view with the runtime unchanged.
pub struct LaneLog {
    inner: std::sync::Arc<dyn Log>,
    lane: u32,
}

impl LaneLog {
    /// Lane `lane` of `inner`.
    ///
    /// # Errors
    /// [`LogError::Other`] for a lane the log does not have.
    pub fn new(inner: std::sync::Arc<dyn Log>, lane: u32) -> Result<Self, LogError> {
        if lane >= inner.lanes() {
            return Err(no_such_lane(&inner.describe(), lane, inner.lanes()));
        }
        Ok(Self { inner, lane })
    }

    /// The lane this view reads.
    pub fn lane(&self) -> u32 {
        self.lane
    }
}

#[async_trait]
impl Log for LaneLog {
    fn describe(&self) -> String {
        format!("{} (lane {})", self.inner.describe(), self.lane)
    }
    async fn ping(&self) -> Result<(), LogError> {
        self.inner.ping().await
    }
    async fn append(&self, records: &[LogRecord]) -> Result<(), LogError> {
        self.inner.append(records).await
    }
    async fn read(&self, from: &Position, max: usize, wait: Duration) -> Result<Batch, LogError> {
        self.inner.read_lane(self.lane, from, max, wait).await
    }
    async fn lag(&self, from: &Position) -> Result<u64, LogError> {
        self.inner.lag_lane(self.lane, from).await
    }
    async fn trim(&self, checkpoints: &[Position]) -> Result<u64, LogError> {
        self.inner.trim(checkpoints).await
    }
    async fn held_back(&self) -> Result<Option<Duration>, LogError> {
        self.inner.held_back().await
    }
    async fn len(&self) -> Result<u64, LogError> {
        self.inner.len().await
    }
    /// A lane's position is one of the whole log's kind (Kafka: offsets of that partition).
    async fn beyond_end(&self, from: &Position) -> Result<bool, LogError> {
        self.inner.beyond_end(from).await
    }
    fn gap_free_lanes(&self) -> bool {
        self.inner.gap_free_lanes()
    }
}

const _: fn(&dyn Log) = |_| {};
