//! The event store (sourced's backend, part 1): streams of messages with a per-stream
//! sequence, optimistic appends, a gap-safe global order, correlation batches, and a small
//! documents table written by `sync` hooks in the same transaction.
//!
//! ```text
//!  stream "ride-1":   seq 1 (cmd)   seq 2 (evt)   seq 3 (cmd)   seq 4 (evt)
//!  stream "pilot-7":        seq 1 (cmd)   seq 2 (evt)
//!  global order:      g1      g2      g3      g4      g5      g6
//!                     └─ read_all(after = g3) returns g4, g5, g6 (never skipping a
//!                        message that commits later with a smaller global_seq)
//! ```
//!
//! Every stored message (commands included) is also staged in the canonical store's outbox
//! in the same transaction, as [`domain::es::Message::to_record`] builds it (stream `es`, key
//! the message's stream id, kind its type, payload the whole envelope), so that every log
//! backend carries the event store's messages.
//!
//! # Deliberate differences from sourced
//!
//! - Appends return the stored messages (with their global sequence) instead of `true`; an
//!   empty append returns an empty list (sourced: `false` for `append_to_stream`).
//! - [`EventStore::append_to_stream`] checks that the first message's seq is exactly the
//!   stream's last + 1 and that seqs are contiguous (sourced relies on the unique
//!   `(stream, seq)` index only, so it accepts gaps).
//! - A conflict names the stream, the expected and the actual last seq.
//! - [`EventStore::recent_streams`] takes a `usize`, so a negative limit cannot be expressed,
//!   and "most recent activity" is the highest global sequence of the stream (sourced sorts
//!   by a timestamp, which ties within a clock tick).
//! - `sync` work is data ([`SyncOp`]) written to a documents table, not code run inside the
//!   transaction; transactions are one [`EventStore::commit`] call, not a block.
//! - Scheduling, consumer groups, claims and notifications are part 2.

use async_trait::async_trait;
use domain::es::{Message, SyncOp};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::EventStoreError;

/// How many times [`EventStore::append_next_to_stream`]'s default retries after a conflict.
pub const APPEND_NEXT_ATTEMPTS: u32 = 4;

/// A message as stored, with its place in the global order.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Position in the store's global order: unique, increasing in commit order as seen by
    /// readers (see [`EventStore::read_all`]); gaps are allowed.
    pub global_seq: u64,
    /// The message, with the seq it was stored under.
    pub message: Message,
}

/// A stream's summary, as [`EventStore::recent_streams`] lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamInfo {
    /// The stream id.
    pub stream_id: String,
    /// The seq of its last message.
    pub seq: u64,
    /// When its last append committed (ms since the Unix epoch, the store's clock).
    pub updated_at_ms: i64,
}

/// Counters of a store, as [`EventStore::stats`] reports them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct EventStoreStats {
    /// Streams with at least one message.
    pub stream_count: u64,
    /// Messages stored.
    pub message_count: u64,
    /// The highest global sequence handed out to a stored message (0 when empty).
    pub max_global_seq: u64,
}

/// What an [`Append`] expects of its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExpectedSeq {
    /// Optimistic concurrency: the stream's last seq must be exactly this (0 = the stream is
    /// empty or new), and the messages carry seqs `n + 1, n + 2, ...`.
    Exactly(u64),
    /// No expectation: the store renumbers the messages after the stream's last seq.
    Any,
}

/// Messages to add to one stream inside a [`Commit`].
#[derive(Debug, Clone, PartialEq)]
pub struct Append {
    /// The stream; every message must belong to it.
    pub stream_id: String,
    /// The concurrency check.
    pub expected: ExpectedSeq,
    /// The messages, in stream order.
    pub messages: Vec<Message>,
}

/// One all-or-nothing write: appends to any number of streams and read-model writes.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Commit {
    /// Applied in order; two appends to the same stream chain (the second expects the
    /// first's last seq).
    pub appends: Vec<Append>,
    /// Applied in order after the appends.
    pub sync: Vec<SyncOp>,
}

/// Streams of messages with optimistic appends and a global order.
///
/// # Contract (checked by `contract::event_store`)
/// - A [`Commit`] is atomic: either every append, every outbox record and every document
///   write is visible, or none is (a conflict in the second append leaves no trace of the
///   first).
/// - Within a stream, seqs are 1, 2, 3, ... with no gap and no duplicate.
/// - Every stored message is staged in the same transaction in the outbox of the store the
///   event store lives in, as [`Message::to_record`] builds it. Commands are stored (and
///   staged) like events: they count in `seq`, as in sourced.
/// - Global sequences are unique and readers never miss a message: once
///   [`EventStore::read_all`] returned a message with global sequence `g`, no message with a
///   global sequence below `g` becomes visible later (the outbox's invariant 4).
/// - Messages read back equal what was appended (ids, seqs, times, metadata, payload).
#[async_trait]
pub trait EventStore: Send + Sync + 'static {
    /// A human-readable description (no secrets).
    fn describe(&self) -> String;

    /// A cheap health check.
    ///
    /// # Errors
    /// [`EventStoreError::Unavailable`] when the backend cannot be reached.
    async fn ping(&self) -> Result<(), EventStoreError>;

    /// Commits `commit` in one transaction and returns the stored messages in commit order.
    ///
    /// # Errors
    /// - MUST return [`EventStoreError::InvalidAppend`] when an append holds a message of
    ///   another stream, or (for [`ExpectedSeq::Exactly`]) seqs that are not contiguous from
    ///   `expected + 1`, and write nothing.
    /// - MUST return [`EventStoreError::Conflict`] when a stream's last seq is above the
    ///   expected one (a concurrent commit won a race), and write nothing; one below the
    ///   expected one is a gap: [`EventStoreError::InvalidAppend`].
    /// - MUST return [`EventStoreError::DuplicateMessage`] when a message id is already
    ///   stored (or appears twice in the commit), and write nothing.
    /// - [`EventStoreError::Unavailable`] when the backend cannot be reached.
    async fn commit(&self, commit: Commit) -> Result<Vec<StoredMessage>, EventStoreError>;

    /// Appends `messages` (which carry their seqs) to `stream_id`, checking that the first
    /// seq is the stream's last + 1: optimistic concurrency. An empty list does nothing.
    ///
    /// # Errors
    /// As [`EventStore::commit`]; in particular [`EventStoreError::InvalidAppend`]
    /// ("Messages must all belong to the same stream") for a message of another stream.
    async fn append_to_stream(
        &self,
        stream_id: &str,
        messages: &[Message],
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        let Some(first) = messages.first() else {
            return Ok(Vec::new());
        };
        check_same_stream(stream_id, messages)?;
        let expected = first.seq().checked_sub(1).ok_or_else(|| {
            EventStoreError::InvalidAppend(format!(
                "stream {stream_id}: seq 0 is not a valid position (seqs start at 1)"
            ))
        })?;
        self.commit(Commit {
            appends: vec![Append {
                stream_id: stream_id.to_owned(),
                expected: ExpectedSeq::Exactly(expected),
                messages: messages.to_vec(),
            }],
            sync: Vec::new(),
        })
        .await
    }

    /// Appends `messages` after the stream's last message, whatever their seqs say (the
    /// store assigns the next ones), retrying a few times if a concurrent append won a
    /// race. An empty list does nothing.
    ///
    /// # Errors
    /// [`EventStoreError::InvalidAppend`] for a message of another stream;
    /// [`EventStoreError::Conflict`] if the race is lost [`APPEND_NEXT_ATTEMPTS`] times;
    /// [`EventStoreError::Unavailable`] when the backend cannot be reached.
    async fn append_next_to_stream(
        &self,
        stream_id: &str,
        messages: &[Message],
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        if messages.is_empty() {
            return Ok(Vec::new());
        }
        check_same_stream(stream_id, messages)?;
        let mut attempt = 1;
        loop {
            let commit = Commit {
                appends: vec![Append {
                    stream_id: stream_id.to_owned(),
                    expected: ExpectedSeq::Any,
                    messages: messages.to_vec(),
                }],
                sync: Vec::new(),
            };
            match self.commit(commit).await {
                Err(EventStoreError::Conflict { .. }) if attempt < APPEND_NEXT_ATTEMPTS => {
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    /// The messages of `stream_id` with `after < seq <= upto` (no upper bound for `None`),
    /// in seq order; empty for an unknown stream.
    ///
    /// # Errors
    /// [`EventStoreError::Unavailable`] when the backend cannot be reached;
    /// [`EventStoreError::Other`] for a stored message that does not decode.
    async fn read_stream(
        &self,
        stream_id: &str,
        after: u64,
        upto: Option<u64>,
    ) -> Result<Vec<StoredMessage>, EventStoreError>;

    /// Every message sharing the correlation id of message `message_id` (that message
    /// included), in global order; empty when the message is unknown.
    ///
    /// # Errors
    /// As [`EventStore::read_stream`].
    async fn read_correlation_batch(
        &self,
        message_id: Uuid,
    ) -> Result<Vec<StoredMessage>, EventStoreError>;

    /// Up to `max` messages with a global sequence above `after_global`, in global order.
    /// Gap-safe: a message with a smaller global sequence than one returned never appears
    /// later (a backend whose sequences are handed out before commit, as Postgres's,
    /// returns only messages below the oldest transaction still in flight).
    ///
    /// # Errors
    /// As [`EventStore::read_stream`].
    async fn read_all(
        &self,
        after_global: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, EventStoreError>;

    /// Up to `limit` streams, most recently appended first (by their last message's global
    /// sequence); `0` gives an empty list.
    ///
    /// # Errors
    /// [`EventStoreError::Unavailable`] when the backend cannot be reached.
    async fn recent_streams(&self, limit: usize) -> Result<Vec<StreamInfo>, EventStoreError>;

    /// The store's counters.
    ///
    /// # Errors
    /// [`EventStoreError::Unavailable`] when the backend cannot be reached.
    async fn stats(&self) -> Result<EventStoreStats, EventStoreError>;

    /// The document `id` of `collection`, as the last committed [`SyncOp`] left it.
    ///
    /// # Errors
    /// As [`EventStore::read_stream`].
    async fn document(&self, collection: &str, id: &str) -> Result<Option<Value>, EventStoreError>;

    /// Every document of `collection`, in increasing id order (byte order of the ids).
    ///
    /// # Errors
    /// As [`EventStore::read_stream`].
    async fn documents(&self, collection: &str) -> Result<Vec<(String, Value)>, EventStoreError>;
}

/// Checks that every message belongs to `stream_id`.
///
/// # Errors
/// [`EventStoreError::InvalidAppend`] ("Messages must all belong to the same stream").
pub fn check_same_stream(stream_id: &str, messages: &[Message]) -> Result<(), EventStoreError> {
    match messages.iter().find(|m| m.stream_id() != stream_id) {
        Some(m) => Err(EventStoreError::InvalidAppend(format!(
            "Messages must all belong to the same stream: {} is on {}, not {stream_id}",
            m.id(),
            m.stream_id()
        ))),
        None => Ok(()),
    }
}

/// Validates a [`Commit`] against the streams' current last seqs and returns the messages
/// to store, renumbered for [`ExpectedSeq::Any`]: the rule every adapter applies, written
/// once. `last_seq` answers a stream's last seq as committed so far; appends to the same
/// stream chain.
///
/// # Errors
/// [`EventStoreError::InvalidAppend`] and [`EventStoreError::Conflict`] as
/// [`EventStore::commit`] documents them.
pub fn plan_commit(
    commit: &Commit,
    mut last_seq: impl FnMut(&str) -> u64,
) -> Result<Vec<Message>, EventStoreError> {
    let mut seen: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
    let mut out = Vec::new();
    for append in &commit.appends {
        check_same_stream(&append.stream_id, &append.messages)?;
        let stream = append.stream_id.as_str();
        let actual = match seen.get(stream) {
            Some(s) => *s,
            None => last_seq(stream),
        };
        let first = match append.expected {
            ExpectedSeq::Exactly(expected) => {
                for (i, m) in append.messages.iter().enumerate() {
                    let want = expected + 1 + i as u64;
                    if m.seq() != want {
                        return Err(EventStoreError::InvalidAppend(format!(
                            "stream {stream}: message {} has seq {}, expected {want} \
                             (seqs must follow the expected seq {expected} without gaps)",
                            m.id(),
                            m.seq()
                        )));
                    }
                }
                if expected > actual {
                    return Err(EventStoreError::InvalidAppend(format!(
                        "stream {stream}: the append starts at seq {} but the stream ends at \
                         {actual} (a gap)",
                        expected + 1
                    )));
                }
                if actual != expected {
                    return Err(EventStoreError::Conflict {
                        stream_id: stream.to_owned(),
                        expected,
                        actual,
                    });
                }
                expected + 1
            }
            ExpectedSeq::Any => actual + 1,
        };
        for (i, m) in append.messages.iter().enumerate() {
            out.push(m.clone().with_seq(first + i as u64));
        }
        seen.insert(stream, actual + append.messages.len() as u64);
    }
    Ok(out)
}

const _: fn(&dyn EventStore) = |_| {};
