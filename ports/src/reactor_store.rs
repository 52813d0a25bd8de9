//! Consumer groups over the event store (sourced's backend, part 2): per-(group, stream)
//! claims, acknowledgements that commit a batch's effects, scheduled messages, worker
//! heartbeats and stale claims.
//!
//! ```text
//!  group "dispatcher" (types: ride.requested, ...), offsets per stream:
//!    ride-1: acked g4, claimed by worker-2 ── nobody else gets ride-1 until worker-2 settles
//!    ride-2: acked g0, free                ── the next claim takes the stream whose oldest
//!    ride-3: parked (poison message g7)        pending message is oldest (fair), skipping
//!                                               claimed, parked and backing-off streams
//! ```
//!
//! A [`ReactorStore`] is an [`EventStore`] (the same adapter types implement both): a new
//! port beside it rather than more methods on it, so that part 1's users (the unit of work,
//! the dispatch API) keep their small interface, while the runtime needs both. The claim and
//! acknowledgement rules that are pure decisions are written once here
//! ([`plan_settlement`]); the adapters implement the storage.
//!
//! # Deliberate differences from sourced
//!
//! - Failures are per (group, stream): a failing stream backs off and, once the strategy
//!   gives up, is **parked** for that group while its other streams keep flowing; sourced
//!   pauses or stops the whole group. A stream's retry count resets after a success.
//! - Replay flags: [`ReactorStore::reset_group`] remembers the highest acknowledged global
//!   seq at the time of the reset; sourced keeps a running maximum updated by every ack
//!   (same flags, one write less per ack).
//! - `StartFrom::Now` is fixed when the group is first registered (sourced: "now - 5 s" at
//!   every claim).
//! - [`ReactorStore::release_stale_claims`] also releases claims of workers that never sent
//!   a heartbeat (sourced keeps those forever).
//! - Acknowledging another message ([`domain::es::Action::Ack`]) only moves that stream's
//!   offset forward (a maximum), so it needs no lock and cannot conflict with the worker
//!   holding that stream (sourced raises `ConcurrentAckError`).
//! - Settling checks that the claim is still held by the worker
//!   ([`EventStoreError::ClaimLost`]): a worker whose claim was released as stale cannot
//!   acknowledge over the worker that took the stream over.

use std::time::Duration;

use async_trait::async_trait;
use domain::es::{Action, BatchResult, GroupSpec, Message};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::EventStoreError;
use crate::event_store::{Append, Commit, EventStore, ExpectedSeq, StoredMessage};

/// How many due scheduled messages one [`ReactorStore::promote_due`] call moves at most.
pub const PROMOTE_BATCH: usize = 100;

/// One message of a claimed batch.
#[derive(Debug, Clone, PartialEq)]
pub struct ClaimedMessage {
    /// The message and its global seq.
    pub stored: StoredMessage,
    /// Whether the group had acknowledged it before its last reset (a replay: projectors
    /// rebuild but skip side effects).
    pub replaying: bool,
}

/// A batch of one stream claimed by one worker for one group: until it is settled or
/// released, no other worker gets this stream for this group.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The group.
    pub group_id: String,
    /// The stream.
    pub stream_id: String,
    /// The worker holding the claim.
    pub worker_id: String,
    /// The group's offset on the stream when claimed (the last acknowledged global seq).
    pub acked: u64,
    /// The stream's failures in a row before this claim (0 after a success).
    pub retry_count: u32,
    /// Pending messages of the group's types, oldest first, at most the group's batch size.
    pub batch: Vec<ClaimedMessage>,
}

/// A stream's failure, recorded when a claim is settled.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamFailure {
    /// The message that failed.
    pub message_id: Uuid,
    /// Why.
    pub error: String,
    /// Failures in a row, this one included.
    pub retry_count: u32,
    /// When the stream may be claimed again; `None` parks it until
    /// [`ReactorStore::retry_stream`].
    pub retry_at_ms: Option<i64>,
}

/// A message stored now and appended to its stream when due.
#[derive(Debug, Clone, PartialEq)]
pub struct ScheduledMessage {
    /// When it becomes due (ms since the Unix epoch).
    pub at_ms: i64,
    /// The message (its seq is assigned when promoted).
    pub message: Message,
}

/// Everything settling a claim does, in one transaction: the effects of the acknowledged
/// messages, the acknowledgement, and the failure if one happened.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Settlement {
    /// Acknowledge the claimed stream up to this global seq (`None`: nothing acknowledged,
    /// the claim is only released).
    pub ack: Option<u64>,
    /// Other messages to acknowledge for the group.
    pub also_ack: Vec<Uuid>,
    /// Appends and read-model writes.
    pub commit: Commit,
    /// Messages to schedule.
    pub schedule: Vec<ScheduledMessage>,
    /// The stream's failure; `None` with an `ack` resets its retry count.
    pub failure: Option<StreamFailure>,
}

/// Whether a group is running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupStatus {
    /// Claims are handed out.
    Active,
    /// Stopped (by an operator or the error strategy): no claims.
    Stopped,
}

/// One stream of a group that failed and has not succeeded since.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailingStream {
    /// The stream.
    pub stream_id: String,
    /// Parked (waits for [`ReactorStore::retry_stream`]) rather than backing off.
    pub parked: bool,
    /// Failures in a row.
    pub retry_count: u32,
    /// When it is retried (back-off), if not parked.
    pub retry_at_ms: Option<i64>,
    /// The last error.
    pub error: Option<String>,
    /// The message that failed.
    pub message_id: Option<Uuid>,
}

/// A group as [`ReactorStore::groups`] reports it (sourced's stats, plus lag and failing
/// streams).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupInfo {
    /// The group id.
    pub group_id: String,
    /// Running or stopped.
    pub status: GroupStatus,
    /// Why it was stopped.
    pub reason: Option<String>,
    /// The whole group pauses until then (sourced's group `retry_at`).
    pub retry_at_ms: Option<i64>,
    /// The lowest acknowledged position among its streams (0 when none).
    pub oldest_processed: u64,
    /// The highest acknowledged position (0 when none).
    pub newest_processed: u64,
    /// Streams with at least one acknowledged message.
    pub stream_count: u64,
    /// Messages of its types not acknowledged yet.
    pub lag: u64,
    /// Streams that failed and have not succeeded since, parked or backing off.
    pub failing: Vec<FailingStream>,
}

/// Consumer groups, claims and scheduling over an [`EventStore`].
///
/// # Contract (checked by `contract::reactor_store`)
/// - At most one worker holds a claim on a given (group, stream) at a time; different
///   streams of a group, and different groups on a stream, are claimed independently.
/// - A claim takes the (group, stream) whose oldest pending message (of the group's types,
///   created after its start, above its offset) has the lowest global seq, skipping
///   streams claimed, parked or backing off, and nothing while the group is stopped or
///   paused. Its batch is that stream's pending messages in order, up to the batch size.
/// - Settling is atomic: the effects commit with the acknowledgement or nothing happens
///   (and the claim is then still held, to be released with a failure).
/// - Scheduled messages are appended to their streams once due, each exactly once, even
///   with concurrent [`ReactorStore::promote_due`] callers.
#[async_trait]
pub trait ReactorStore: EventStore {
    /// Registers a group (or updates its types and batch size; its status, offsets and
    /// start are kept).
    ///
    /// # Errors
    /// [`EventStoreError::Unavailable`] when the backend cannot be reached.
    async fn register_group(&self, spec: &GroupSpec, now_ms: i64) -> Result<(), EventStoreError>;

    /// Stops a group: no more claims (claims held are settled normally).
    ///
    /// # Errors
    /// [`EventStoreError::UnknownGroup`].
    async fn stop_group(&self, group_id: &str, reason: &str) -> Result<(), EventStoreError>;

    /// Starts a stopped group and lifts its pause (sourced: clears `retry_at` and the
    /// error context).
    ///
    /// # Errors
    /// [`EventStoreError::UnknownGroup`].
    async fn start_group(&self, group_id: &str) -> Result<(), EventStoreError>;

    /// Pauses the whole group until `until_ms` (sourced's `group.retry(time)`).
    ///
    /// # Errors
    /// [`EventStoreError::UnknownGroup`].
    async fn pause_group(&self, group_id: &str, until_ms: i64) -> Result<(), EventStoreError>;

    /// Forgets the group's offsets and failures: every message is delivered again, those it
    /// had acknowledged with `replaying = true`.
    ///
    /// # Errors
    /// [`EventStoreError::UnknownGroup`].
    async fn reset_group(&self, group_id: &str) -> Result<(), EventStoreError>;

    /// Un-parks (or ends the back-off of) one stream of a group.
    ///
    /// # Errors
    /// [`EventStoreError::UnknownGroup`].
    async fn retry_stream(&self, group_id: &str, stream_id: &str) -> Result<(), EventStoreError>;

    /// Claims the next batch for `group_id` (see the contract), or `None`.
    ///
    /// # Errors
    /// [`EventStoreError::UnknownGroup`]; [`EventStoreError::Unavailable`].
    async fn claim(
        &self,
        group_id: &str,
        worker_id: &str,
        now_ms: i64,
    ) -> Result<Option<Claim>, EventStoreError>;

    /// Settles `claim`: commits `settlement` and releases the claim, in one transaction.
    /// Returns the messages appended.
    ///
    /// # Errors
    /// As [`EventStore::commit`] (nothing written, the claim still held); and
    /// [`EventStoreError::ClaimLost`] when the worker no longer holds the claim.
    async fn settle(
        &self,
        claim: &Claim,
        settlement: Settlement,
        now_ms: i64,
    ) -> Result<Vec<StoredMessage>, EventStoreError>;

    /// Moves `group_id`'s offset on `message_id`'s stream up to that message (sourced's
    /// `ack_on`). Returns `false` for an unknown message.
    ///
    /// # Errors
    /// [`EventStoreError::UnknownGroup`].
    async fn ack(&self, group_id: &str, message_id: Uuid) -> Result<bool, EventStoreError>;

    /// Commits `commit`, stores `schedule` and acknowledges `acks` ((group, message id):
    /// the message's stream offset moves up to it; unknown groups are skipped) in one
    /// transaction: how a synchronous unit of work stores its scheduled messages and tells
    /// background groups what it already handled (sourced's `Unit` + `ack_on`).
    ///
    /// # Errors
    /// As [`EventStore::commit`]; nothing is written on error.
    async fn commit_with(
        &self,
        commit: Commit,
        schedule: &[ScheduledMessage],
        acks: &[(String, Uuid)],
    ) -> Result<Vec<StoredMessage>, EventStoreError>;

    /// Stores messages to append when due.
    ///
    /// # Errors
    /// [`EventStoreError::Unavailable`].
    async fn schedule(&self, messages: &[ScheduledMessage]) -> Result<(), EventStoreError>;

    /// Appends up to [`PROMOTE_BATCH`] scheduled messages due by `now_ms` to their streams
    /// (after their last message, created at `now_ms`, ids and correlation kept) and forgets
    /// them. Returns what was appended.
    ///
    /// # Errors
    /// As [`EventStore::commit`].
    async fn promote_due(&self, now_ms: i64) -> Result<Vec<StoredMessage>, EventStoreError>;

    /// Records that these workers are alive at `now_ms`.
    ///
    /// # Errors
    /// [`EventStoreError::Unavailable`].
    async fn heartbeat(&self, worker_ids: &[String], now_ms: i64) -> Result<(), EventStoreError>;

    /// Releases claims taken at or before `now_ms - ttl` by workers not seen since then.
    /// Returns how many.
    ///
    /// # Errors
    /// [`EventStoreError::Unavailable`].
    async fn release_stale_claims(
        &self,
        ttl: Duration,
        now_ms: i64,
    ) -> Result<u64, EventStoreError>;

    /// Every group, by id.
    ///
    /// # Errors
    /// [`EventStoreError::Unavailable`].
    async fn groups(&self) -> Result<Vec<GroupInfo>, EventStoreError>;

    /// A counter that changes after commits that stored messages and after group starts
    /// (a wake-up hint, in-process or across processes on Postgres).
    fn wake_version(&self) -> u64;

    /// Waits until [`ReactorStore::wake_version`] differs from `seen` or `timeout` passes;
    /// returns the version.
    async fn wait_wake(&self, seen: u64, timeout: Duration) -> u64;
}

/// The settlement of `result` for `claim` (the rule every runtime applies, written once):
/// the handled prefix up to the first [`Action::Retry`] is acknowledged with its effects
/// (messages caused by their source: causation, correlation and metadata, see
/// [`Message::correlate`]); with nothing acknowledged the claim is only released. The
/// failure, if any, is the caller's to fill in (its error strategy decides).
///
/// # Errors
/// [`EventStoreError::InvalidAppend`] for an action on a message that is not in the batch.
pub fn plan_settlement(claim: &Claim, result: &BatchResult) -> Result<Settlement, EventStoreError> {
    let mut s = Settlement::default();
    for (id, actions) in &result.handled {
        if actions.iter().any(|a| matches!(a, Action::Retry)) {
            break;
        }
        let source = claim
            .batch
            .iter()
            .find(|c| c.stored.message.id() == *id)
            .ok_or_else(|| {
                EventStoreError::InvalidAppend(format!(
                    "message {id} is not in the batch claimed on {} for {}",
                    claim.stream_id, claim.group_id
                ))
            })?;
        let cause = &source.stored.message;
        for action in actions {
            match action {
                Action::Ok | Action::Retry => {}
                Action::Ack(other) => s.also_ack.push(*other),
                Action::AppendNext(messages) => {
                    for m in messages {
                        let m = cause.correlate(m.clone());
                        s.commit.appends.push(Append {
                            stream_id: m.stream_id().to_owned(),
                            expected: ExpectedSeq::Any,
                            messages: vec![m],
                        });
                    }
                }
                Action::AppendAfter {
                    stream_id,
                    messages,
                } => {
                    let expected = messages.first().map_or(0, |m| m.seq().saturating_sub(1));
                    s.commit.appends.push(Append {
                        stream_id: stream_id.clone(),
                        expected: ExpectedSeq::Exactly(expected),
                        messages: messages
                            .iter()
                            .map(|m| cause.correlate(m.clone()))
                            .collect(),
                    });
                }
                Action::Schedule { at_ms, messages } => {
                    s.schedule.extend(messages.iter().map(|m| ScheduledMessage {
                        at_ms: *at_ms,
                        message: cause.correlate(m.clone()),
                    }));
                }
                Action::Sync(ops) => s.commit.sync.extend(ops.iter().cloned()),
            }
        }
        s.ack = Some(source.stored.global_seq);
    }
    Ok(s)
}

/// The commit promoting due scheduled messages (the rule every store applies): each appended after its stream's last
/// message, created at `now_ms` (sourced rewrites `created_at` at promotion), in order.
///
/// # Errors
/// [`EventStoreError::Other`] for a message that does not rebuild (not expected).
pub fn promotion(
    due: impl Iterator<Item = Message>,
    now_ms: i64,
) -> Result<Commit, EventStoreError> {
    let mut commit = Commit::default();
    for m in due {
        let mut parts = m.into_parts();
        parts.created_at_ms = now_ms;
        let m = Message::from_parts(parts).map_err(|e| EventStoreError::Other(e.to_string()))?;
        commit.appends.push(Append {
            stream_id: m.stream_id().to_owned(),
            expected: ExpectedSeq::Any,
            messages: vec![m],
        });
    }
    Ok(commit)
}

const _: fn(&dyn ReactorStore) = |_| {};
