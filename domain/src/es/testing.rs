//! A given/when/then kit for actors (sourced's `with_reactor`).
//!
//! ```
//! use domain::es::dispatch::{Ride, RequestRide, RideRequested, AssignPilot, PilotAssigned, RideError};
//! use domain::es::testing::{Expected, with_actor};
//!
//! with_actor(&Ride, "ride-1")
//!     .given(&RideRequested { rider_id: "u1".into(), pickup: "A".into(), dropoff: "B".into() })
//!     .when(&AssignPilot { pilot_id: "pilot-7".into() })
//!     .then(&[Expected::event(&PilotAssigned { pilot_id: "pilot-7".into() })]);
//!
//! with_actor(&Ride, "ride-1")
//!     .when(&AssignPilot { pilot_id: "pilot-7".into() })
//!     .then_error(&RideError::NotRequested { ride_id: "ride-1".into() });
//! ```
//!
//! - **given** past messages of the actor's stream (events, or commands: they count in seq),
//!   evolved in order with seqs 1, 2, ...;
//! - **when** a command (decided) or an event (evolved, then reacted to);
//! - **then** the messages produced (type, stream and payload, in order, same count), or
//!   [`TestCase::then_nothing`], or an error ([`TestCase::then_error`],
//!   [`TestCase::then_error_message`]); [`TestCase::then_sync`] checks the sync ops of a
//!   decision; [`TestCase::outcome`] hands back everything for custom assertions.
//!
//! Several `then`s may follow one `when`. A failed expectation panics with both lists. Adding
//! a `given` or a `when` after an assertion panics with a message that starts with
//! `FinishedTestCase` (a case is given → when → then; start a new one for a new scenario).

use std::fmt;

use serde_json::Value;

use super::actor::{Actor, ActorInstance, HandleError, Role};
use super::message::{Message, MessageType, payload_value};
use super::sync::SyncOp;

/// The time the kit's messages are created at (ms since the Unix epoch), unless
/// [`TestCase::at_time`] says otherwise.
pub const TEST_NOW_MS: i64 = 1_700_000_000_000;

/// A message the test expects: type, stream and payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Expected {
    /// The type.
    pub kind: String,
    /// The stream; `None` means the test case's stream.
    pub stream_id: Option<String>,
    /// The payload.
    pub payload: Value,
}

impl Expected {
    /// A message of the test case's stream.
    ///
    /// # Panics
    /// See [`payload_value`].
    pub fn event<T: MessageType>(payload: &T) -> Self {
        Self {
            kind: T::TYPE.to_owned(),
            stream_id: None,
            payload: payload_value(payload),
        }
    }

    /// A message of `stream_id` (e.g. a command a reaction sends elsewhere).
    ///
    /// # Panics
    /// See [`payload_value`].
    pub fn on<T: MessageType>(stream_id: &str, payload: &T) -> Self {
        Self {
            stream_id: Some(stream_id.to_owned()),
            ..Self::event(payload)
        }
    }
}

/// What the `when` message produced: the messages (events of a decision, or commands of a
/// reaction) and the sync ops of a decision.
pub type Outcome<E> = Result<(Vec<Message>, Vec<SyncOp>), HandleError<E>>;

/// One given/when/then case for an actor. See the [module docs](self).
pub struct TestCase<'a, A: Actor> {
    actor: &'a A,
    stream_id: String,
    history: Vec<Message>,
    when: Option<Message>,
    asserted: bool,
    now_ms: i64,
}

/// Starts a case for `actor` on stream `stream_id`.
pub fn with_actor<'a, A: Actor>(actor: &'a A, stream_id: &str) -> TestCase<'a, A> {
    TestCase {
        actor,
        stream_id: stream_id.to_owned(),
        history: Vec::new(),
        when: None,
        asserted: false,
        now_ms: TEST_NOW_MS,
    }
}

impl<A: Actor> fmt::Debug for TestCase<'_, A> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TestCase")
            .field("actor", &self.actor.name())
            .field("stream_id", &self.stream_id)
            .field("history", &self.history)
            .field("when", &self.when)
            .finish()
    }
}

impl<A: Actor> TestCase<'_, A> {
    fn unfinished(&self, what: &str) {
        assert!(
            !self.asserted,
            "FinishedTestCase: {what} after an assertion; a test case is given -> when -> \
             then, start a new one for a new scenario"
        );
    }

    /// The creation time of the messages built from now on.
    pub fn at_time(&mut self, now_ms: i64) -> &mut Self {
        self.now_ms = now_ms;
        self
    }

    /// A past message of the case's stream, with a typed payload, at the next seq.
    ///
    /// # Panics
    /// After an assertion (`FinishedTestCase`), or after `when`.
    pub fn given<T: MessageType>(&mut self, payload: &T) -> &mut Self {
        let message = Message::new(
            T::TYPE,
            self.stream_id.clone(),
            payload_value(payload),
            self.now_ms,
        )
        .unwrap_or_else(|e| panic!("given: {e}"));
        self.given_message(message)
    }

    /// [`TestCase::given`], read as "and".
    ///
    /// # Panics
    /// As [`TestCase::given`].
    pub fn and<T: MessageType>(&mut self, payload: &T) -> &mut Self {
        self.given(payload)
    }

    /// A past message, moved to the case's stream at the next seq.
    ///
    /// # Panics
    /// As [`TestCase::given`].
    pub fn given_message(&mut self, message: Message) -> &mut Self {
        self.unfinished("given");
        assert!(self.when.is_none(), "given after when: give the past first");
        let seq = self.history.len() as u64 + 1;
        let message = message
            .to(self.stream_id.clone())
            .unwrap_or_else(|e| panic!("given: {e}"))
            .with_seq(seq);
        self.history.push(message);
        self
    }

    /// The message under test, with a typed payload: a command of the actor (decided) or an
    /// event it reacts to (evolved, then reacted to), on the case's stream.
    ///
    /// # Panics
    /// After an assertion (`FinishedTestCase`), or when a `when` was already given.
    pub fn when<T: MessageType>(&mut self, payload: &T) -> &mut Self {
        let message = Message::new(
            T::TYPE,
            self.stream_id.clone(),
            payload_value(payload),
            self.now_ms,
        )
        .unwrap_or_else(|e| panic!("when: {e}"));
        self.when_message(message)
    }

    /// [`TestCase::when`] with a built message (its stream is the case's; its seq is set to
    /// the next one).
    ///
    /// # Panics
    /// As [`TestCase::when`].
    pub fn when_message(&mut self, message: Message) -> &mut Self {
        self.unfinished("when");
        assert!(self.when.is_none(), "a test case has one when");
        let seq = self.history.len() as u64 + 1;
        self.when = Some(
            message
                .to(self.stream_id.clone())
                .unwrap_or_else(|e| panic!("when: {e}"))
                .with_seq(seq),
        );
        self
    }

    /// Runs the case (on a fresh instance each time) and returns what `when` produced.
    ///
    /// # Panics
    /// Without `when`, when a given message does not evolve, or when the actor neither
    /// decides nor reacts to `when`'s type.
    pub fn outcome(&mut self) -> Outcome<A::Error> {
        self.asserted = true;
        let when = self
            .when
            .clone()
            .unwrap_or_else(|| panic!("then without when: say what happens"));
        let mut instance = ActorInstance::load(self.actor, self.stream_id.clone(), &self.history)
            .unwrap_or_else(|e| panic!("given messages must evolve: {e}"));
        let role = if self.actor.commands().contains(&when.kind()) {
            Role::Command
        } else if self.actor.reactions().contains(&when.kind()) {
            Role::Reaction
        } else {
            panic!(
                "{} neither decides nor reacts to {}",
                self.actor.name(),
                when.kind()
            );
        };
        match role {
            Role::Command => instance.decide(&when).map(|d| (d.events, d.sync)),
            Role::Reaction => {
                instance.evolve(&when)?;
                instance.react(&when).map(|cmds| (cmds, Vec::new()))
            }
        }
    }

    fn produced(&mut self) -> (Vec<Message>, Vec<SyncOp>) {
        match self.outcome() {
            Ok(v) => v,
            Err(e) => panic!("expected messages, got the error: {e}"),
        }
    }

    /// Asserts the messages produced: type, stream and payload, in order, same count.
    ///
    /// # Panics
    /// When they differ (both lists are shown), or as [`TestCase::outcome`].
    pub fn then(&mut self, expected: &[Expected]) -> &mut Self {
        let (messages, _) = self.produced();
        let got: Vec<Expected> = messages
            .iter()
            .map(|m| Expected {
                kind: m.kind().to_owned(),
                stream_id: Some(m.stream_id().to_owned()),
                payload: m.payload().clone(),
            })
            .collect();
        let want: Vec<Expected> = expected
            .iter()
            .map(|e| Expected {
                stream_id: Some(
                    e.stream_id
                        .clone()
                        .unwrap_or_else(|| self.stream_id.clone()),
                ),
                ..e.clone()
            })
            .collect();
        assert!(
            got == want,
            "unexpected messages\n  expected: {want:#?}\n  got: {got:#?}"
        );
        self
    }

    /// Asserts that nothing was produced (and no error).
    ///
    /// # Panics
    /// Otherwise.
    pub fn then_nothing(&mut self) -> &mut Self {
        self.then(&[])
    }

    /// Asserts the sync ops of a decision.
    ///
    /// # Panics
    /// When they differ, or as [`TestCase::outcome`].
    pub fn then_sync(&mut self, expected: &[SyncOp]) -> &mut Self {
        let (_, sync) = self.produced();
        assert!(
            sync == expected,
            "unexpected sync ops\n  expected: {expected:#?}\n  got: {sync:#?}"
        );
        self
    }

    /// Asserts that the actor refused with `expected`.
    ///
    /// # Panics
    /// When it succeeded or failed otherwise.
    pub fn then_error(&mut self, expected: &A::Error) -> &mut Self
    where
        A::Error: PartialEq,
    {
        match self.outcome() {
            Err(HandleError::Domain(e)) if &e == expected => {}
            Err(e) => panic!("expected the error {expected:?}, got the error {e:?}"),
            Ok((m, _)) => panic!("expected the error {expected:?}, got messages {m:#?}"),
        }
        self
    }

    /// Asserts that handling failed with this text (a domain or an evolve error).
    ///
    /// # Panics
    /// When it succeeded or failed with another text.
    pub fn then_error_message(&mut self, expected: &str) -> &mut Self {
        match self.outcome() {
            Err(e) => assert_eq!(e.to_string(), expected, "unexpected error text"),
            Ok((m, _)) => panic!("expected the error {expected:?}, got messages {m:#?}"),
        }
        self
    }
}
