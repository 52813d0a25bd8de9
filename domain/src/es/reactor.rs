//! Reactors' vocabulary, the pure part of the background runtime (sourced's `Actions`,
//! `consumer_info` and `ErrorStrategy`): what a consumer group is, what a reactor asks the
//! store to do with a batch ([`Action`]), and what to do when a message fails
//! ([`ErrorStrategy`]). No I/O: the store commits actions (`ports::ReactorStore::settle`),
//! the runtime in `app::es` calls reactors and applies the strategy.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{Message, SyncOp};

/// Where a consumer group starts reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum StartFrom {
    /// Every message ever stored.
    Beginning,
    /// Messages created after the group was first registered (sourced re-evaluates
    /// "now - 5 s" at every claim, so a message older than 5 s that was never delivered is
    /// skipped forever; here "now" is fixed at registration).
    Now,
    /// Messages created after this time (ms since the Unix epoch).
    After(i64),
}

impl StartFrom {
    /// Messages created strictly after this time are delivered (`i64::MIN` for everything),
    /// for a group registered at `now_ms`.
    pub fn created_after_ms(self, now_ms: i64) -> i64 {
        match self {
            Self::Beginning => i64::MIN,
            Self::Now => now_ms,
            Self::After(t) => t,
        }
    }
}

/// A consumer group: a reactor's position in the store, shared by every worker running it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupSpec {
    /// The group id (sourced: the reactor's class name by default).
    pub group_id: String,
    /// The message types the reactor handles; other messages are never delivered.
    pub types: Vec<String>,
    /// Where the group starts.
    pub start: StartFrom,
    /// The most messages of one stream in one claimed batch (at least 1).
    pub batch_size: usize,
}

impl GroupSpec {
    /// A group from the beginning with batches of up to 50 messages.
    pub fn new(group_id: impl Into<String>, types: &[&str]) -> Self {
        Self {
            group_id: group_id.into(),
            types: types.iter().map(|t| (*t).to_owned()).collect(),
            start: StartFrom::Beginning,
            batch_size: 50,
        }
    }

    /// The same group starting elsewhere.
    pub fn starting(mut self, start: StartFrom) -> Self {
        self.start = start;
        self
    }

    /// The same group with another batch size (0 counts as 1).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.batch_size = n.max(1);
        self
    }
}

/// What a reactor asks for after handling one message (sourced's `Actions`). Actions are
/// data: the store commits every effect of a batch together with its acknowledgement, in
/// one transaction.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// Acknowledge the message (the default: no action at all also acknowledges).
    Ok,
    /// Do not acknowledge: release the claim, the message (and the rest of the batch) is
    /// delivered again. Not an error: the error strategy is not consulted.
    Retry,
    /// Also acknowledge another message (for this group), e.g. one handled synchronously.
    Ack(Uuid),
    /// Append after each target stream's last message (seqs assigned by the store), caused
    /// by the handled message.
    AppendNext(Vec<Message>),
    /// Append to `stream_id` with the messages' own seqs: optimistic, a conflict fails the
    /// message (and goes through the error strategy).
    AppendAfter {
        /// The stream.
        stream_id: String,
        /// The messages, seqs `last + 1, last + 2, ...`.
        messages: Vec<Message>,
    },
    /// Store the messages now and append them to their streams at `at_ms` (the
    /// housekeeper promotes them), caused by the handled message.
    Schedule {
        /// When they become due (ms since the Unix epoch).
        at_ms: i64,
        /// The messages.
        messages: Vec<Message>,
    },
    /// Read-model writes committed in the acknowledging transaction.
    Sync(Vec<SyncOp>),
}

impl Action {
    /// Sourced's `Actions.build_for`: messages due by `now_ms` become one
    /// [`Action::AppendNext`], later ones one [`Action::Schedule`] per due time (their
    /// creation time, see [`Message::at`]), in the order first seen.
    pub fn build_for(messages: Vec<Message>, now_ms: i64) -> Vec<Action> {
        let mut due = Vec::new();
        let mut later: Vec<(i64, Vec<Message>)> = Vec::new();
        for m in messages {
            let at = m.created_at_ms();
            if at <= now_ms {
                due.push(m);
            } else if let Some(slot) = later.iter_mut().find(|(t, _)| *t == at) {
                slot.1.push(m);
            } else {
                later.push((at, vec![m]));
            }
        }
        let mut out = Vec::new();
        if !due.is_empty() {
            out.push(Action::AppendNext(due));
        }
        out.extend(
            later
                .into_iter()
                .map(|(at_ms, messages)| Action::Schedule { at_ms, messages }),
        );
        out
    }
}

/// What a reactor did with a claimed batch: the actions of each handled message, in batch
/// order, and the message that failed, if one did (the ones after it were not handled).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BatchResult {
    /// `(message id, its actions)` for the messages handled, a prefix of the batch.
    pub handled: Vec<(Uuid, Vec<Action>)>,
    /// The message that failed and why; it and the rest of the batch are not acknowledged.
    pub failed: Option<(Uuid, String)>,
}

impl BatchResult {
    /// Records the outcome of the next message of the batch: its actions, or why it failed.
    /// Returns whether the batch goes on: after a failure the rest of the batch is neither
    /// handled nor acknowledged (partial batches), so the caller stops there.
    pub fn record(&mut self, id: Uuid, outcome: Result<Vec<Action>, String>) -> bool {
        match outcome {
            Ok(actions) => {
                self.handled.push((id, actions));
                true
            }
            Err(why) => {
                self.failed = Some((id, why));
                false
            }
        }
    }

    /// Every message handled with these actions.
    pub fn all(handled: Vec<(Uuid, Vec<Action>)>) -> Self {
        Self {
            handled,
            failed: None,
        }
    }
}

/// How the back-off between retries grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backoff {
    /// Always `retry_after_ms`.
    Constant,
    /// `retry_after_ms * attempt` (sourced's default).
    Linear,
    /// `retry_after_ms * 2^(attempt - 1)`.
    Exponential,
}

/// What to do once the retries are used up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Exhausted {
    /// Park the failing message's stream for the group: other streams keep flowing, the
    /// parked one waits for `rides es retry GROUP STREAM` (the improvement over sourced).
    ParkStream,
    /// Stop the whole group with the error (sourced's behaviour).
    StopGroup,
}

/// A group's error strategy (sourced's `ErrorStrategy`): retry a failing stream with
/// back-off a few times, then park it (or stop the group).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorStrategy {
    /// Retries before giving up (0: give up at the first failure, sourced's default).
    pub max_retries: u32,
    /// The base delay.
    pub retry_after_ms: i64,
    /// How the delay grows.
    pub backoff: Backoff,
    /// What giving up means.
    pub exhausted: Exhausted,
}

impl Default for ErrorStrategy {
    fn default() -> Self {
        Self {
            max_retries: 0,
            retry_after_ms: 3_000,
            backoff: Backoff::Linear,
            exhausted: Exhausted::ParkStream,
        }
    }
}

/// The strategy's verdict on one failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try the stream again at `at_ms`; this was failure number `retry_count`.
    RetryAt {
        /// When.
        at_ms: i64,
        /// Failures in a row so far (1 after the first).
        retry_count: u32,
    },
    /// Park the stream (after `retry_count` failures in a row).
    Park {
        /// Failures in a row.
        retry_count: u32,
    },
    /// Stop the group.
    StopGroup,
}

impl ErrorStrategy {
    /// Retries `max_retries` times, `retry_after_ms` apart growing by `backoff`.
    pub fn retry(max_retries: u32, retry_after_ms: i64, backoff: Backoff) -> Self {
        Self {
            max_retries,
            retry_after_ms,
            backoff,
            exhausted: Exhausted::ParkStream,
        }
    }

    /// The verdict on a failure of a stream that had failed `previous` times in a row
    /// (reset by every success).
    pub fn decide(&self, previous: u32, now_ms: i64) -> Verdict {
        let attempt = previous + 1;
        if attempt <= self.max_retries {
            let factor: i64 = match self.backoff {
                Backoff::Constant => 1,
                Backoff::Linear => i64::from(attempt),
                Backoff::Exponential => 1_i64.checked_shl(attempt - 1).unwrap_or(i64::MAX),
            };
            Verdict::RetryAt {
                at_ms: now_ms.saturating_add(self.retry_after_ms.saturating_mul(factor)),
                retry_count: attempt,
            }
        } else {
            match self.exhausted {
                Exhausted::ParkStream => Verdict::Park {
                    retry_count: attempt,
                },
                Exhausted::StopGroup => Verdict::StopGroup,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(at: i64) -> Message {
        Message::new("t.cmd", "s", json!({}), at).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn build_for_splits_due_and_later_by_time() {
        let actions = Action::build_for(vec![msg(10), msg(30), msg(5), msg(30), msg(40)], 10);
        assert!(matches!(&actions[0], Action::AppendNext(m) if m.len() == 2));
        assert!(
            matches!(&actions[1], Action::Schedule { at_ms: 30, messages } if messages.len() == 2)
        );
        assert!(
            matches!(&actions[2], Action::Schedule { at_ms: 40, messages } if messages.len() == 1)
        );
        assert_eq!(actions.len(), 3);
        assert!(Action::build_for(Vec::new(), 0).is_empty());
    }

    /// sourced's ErrorStrategy case: retry 3 times after 5 s with linear back-off, then give
    /// up.
    #[test]
    fn retries_with_backoff_then_parks() {
        let s = ErrorStrategy::retry(3, 5_000, Backoff::Linear);
        let mut count = 0;
        let mut times = Vec::new();
        loop {
            match s.decide(count, 0) {
                Verdict::RetryAt { at_ms, retry_count } => {
                    times.push(at_ms);
                    count = retry_count;
                }
                v => {
                    assert_eq!(v, Verdict::Park { retry_count: 4 });
                    break;
                }
            }
        }
        assert_eq!(times, vec![5_000, 10_000, 15_000]);
        assert_eq!(
            ErrorStrategy::default().decide(0, 0),
            Verdict::Park { retry_count: 1 }
        );
        let stop = ErrorStrategy {
            exhausted: Exhausted::StopGroup,
            ..ErrorStrategy::default()
        };
        assert_eq!(stop.decide(0, 0), Verdict::StopGroup);
        let exp = ErrorStrategy::retry(3, 100, Backoff::Exponential);
        assert_eq!(
            exp.decide(2, 0),
            Verdict::RetryAt {
                at_ms: 400,
                retry_count: 3
            }
        );
    }

    #[test]
    fn start_from_is_fixed_at_registration() {
        assert_eq!(StartFrom::Beginning.created_after_ms(7), i64::MIN);
        assert_eq!(StartFrom::Now.created_after_ms(7), 7);
        assert_eq!(StartFrom::After(3).created_after_ms(7), 3);
        assert_eq!(GroupSpec::new("g", &["a"]).batch_size(0).batch_size, 1);
    }
}
