//! Actors: decide, evolve, react (and sync), keyed by stream id.
//!
//! ```text
//!   history (stream "ride-1")          command
//!   ──────────────────────────▶ evolve ───────▶ decide ──▶ events (seq last+1, +2, ...)
//!                                 state  ◀─────── evolve each event at once
//!   event ──▶ react(state) ──▶ commands (any stream, maybe scheduled with `at`)
//!   command + events + state ──▶ sync ──▶ SyncOps (committed with the events)
//! ```
//!
//! An [`Actor`] is pure and synchronous; an [`ActorInstance`] is one actor loaded for one
//! stream: it tracks the stream's last seq, refuses messages of another stream or at a seq
//! at or below its own, and numbers the events a command produces. [`AnyActor`] erases the
//! state type so that a unit of work can hold different actors.
//!
//! # Deliberate differences from sourced
//!
//! - Each command's events are evolved before the next command is decided, so two commands
//!   for one stream in one batch get seqs `n+1..` and then the following ones (sourced's
//!   marked bug: both computed `last + 1`).
//! - `decide` returns [`Emit`]s (type + payload); the instance builds the messages, so an
//!   actor cannot get causation, correlation or seq wrong.
//! - `react` receives the state as of the reacted event and after it: in a unit of work the
//!   history is the stream up to the messages committed so far (sourced: the whole fetched
//!   history).
//! - A command type and a reaction type of the same actor are declared as data
//!   ([`Actor::commands`], [`Actor::reactions`]) and checked by [`check_roles`].

use std::fmt;

use serde_json::{Map, Value};
use thiserror::Error;

use super::message::{Message, MessageError, MessageType, payload_value};
use super::sync::SyncOp;

/// What an actor does with a message type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The actor decides it (it is a command for the actor's stream).
    Command,
    /// The actor reacts to it (it is an event; reactions produce commands).
    Reaction,
}

/// An event a decision produces: its type and payload. The [`ActorInstance`] turns it into a
/// [`Message`] following the command.
#[derive(Debug, Clone, PartialEq)]
pub struct Emit {
    /// The event type.
    pub kind: String,
    /// The event payload.
    pub payload: Value,
}

impl Emit {
    /// An event with a typed payload.
    ///
    /// # Panics
    /// See [`payload_value`].
    pub fn new<T: MessageType>(payload: &T) -> Self {
        Self {
            kind: T::TYPE.to_owned(),
            payload: payload_value(payload),
        }
    }
}

/// An actor: pure decide/evolve/react/sync over a state keyed by stream id.
pub trait Actor: Send + Sync + 'static {
    /// The state rebuilt from a stream.
    type State: Clone + fmt::Debug + Send + Sync + 'static;
    /// The business errors of [`Actor::decide`] and [`Actor::react`].
    type Error: std::error::Error + Send + Sync + 'static;

    /// A stable name (used as the `producer` metadata of reactions and in errors).
    fn name(&self) -> &'static str;

    /// The state of a stream with no messages.
    fn initial(&self, stream_id: &str) -> Self::State;

    /// The command types this actor decides.
    fn commands(&self) -> Vec<&'static str>;

    /// The event types this actor reacts to.
    fn reactions(&self) -> Vec<&'static str> {
        Vec::new()
    }

    /// Every business rule: the events `command` produces in `state`, or why not.
    ///
    /// # Errors
    /// The actor's business error; nothing is appended.
    fn decide(&self, state: &Self::State, command: &Message) -> Result<Vec<Emit>, Self::Error>;

    /// Applies a stored message (event or command) to the state; ignores types it does not
    /// know. Holds no rule: a stored message happened.
    ///
    /// # Errors
    /// [`MessageError`] for a payload that does not decode (corrupt data, loud).
    fn evolve(&self, state: &mut Self::State, message: &Message) -> Result<(), MessageError>;

    /// The commands an event triggers (to any stream; scheduled ones carry a later
    /// `created_at` set with [`Message::at`]). The instance correlates them with the event.
    ///
    /// # Errors
    /// The actor's business error.
    fn react(&self, state: &Self::State, event: &Message) -> Result<Vec<Message>, Self::Error> {
        let _ = (state, event);
        Ok(Vec::new())
    }

    /// Read-model writes for a decision, committed with its events (`state` is after the
    /// events).
    fn sync(&self, state: &Self::State, command: &Message, events: &[Message]) -> Vec<SyncOp> {
        let _ = (state, command, events);
        Vec::new()
    }
}

/// Errors of registering actors.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum RegistrationError {
    /// A type is both a command and a reaction of one actor.
    #[error("{actor} declares {kind} both as a command and as a reaction")]
    DualRole {
        /// The actor.
        actor: &'static str,
        /// The type.
        kind: String,
    },
    /// Two actors of one unit decide the same command type.
    #[error("{kind} is decided by both {first} and {second}")]
    DuplicateCommand {
        /// The type.
        kind: String,
        /// The first actor.
        first: &'static str,
        /// The second actor.
        second: &'static str,
    },
}

/// Checks that no type is both a command and a reaction of `actor`.
///
/// # Errors
/// [`RegistrationError::DualRole`].
pub fn check_roles<A: Actor + ?Sized>(actor: &A) -> Result<(), RegistrationError> {
    let commands = actor.commands();
    match actor.reactions().into_iter().find(|r| commands.contains(r)) {
        Some(kind) => Err(RegistrationError::DualRole {
            actor: actor.name(),
            kind: kind.to_owned(),
        }),
        None => Ok(()),
    }
}

/// Errors of evolving an instance.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum EvolveError {
    /// The message belongs to another stream.
    #[error("message {message_id} of stream {actual} cannot evolve an actor of stream {expected}")]
    DifferentStream {
        /// The instance's stream.
        expected: String,
        /// The message's stream.
        actual: String,
        /// The message.
        message_id: uuid::Uuid,
    },
    /// The message's seq is at or below the instance's.
    #[error(
        "message {message_id} has seq {seq}, not above the current seq {current} of {stream_id}"
    )]
    SmallerSequence {
        /// The stream.
        stream_id: String,
        /// The instance's seq.
        current: u64,
        /// The message's seq.
        seq: u64,
        /// The message.
        message_id: uuid::Uuid,
    },
    /// A stored payload does not decode.
    #[error(transparent)]
    Payload(#[from] MessageError),
}

/// Errors of [`ActorInstance::decide`] and [`ActorInstance::react`].
#[derive(Debug, Error)]
pub enum HandleError<E> {
    /// The business rule refused (the actor's error).
    #[error("{0}")]
    Domain(E),
    /// The message cannot be applied to this instance.
    #[error(transparent)]
    Evolve(#[from] EvolveError),
}

/// What deciding a command produced.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The command, placed at the stream's next seq (commands count in seq).
    pub command: Message,
    /// The events, following the command.
    pub events: Vec<Message>,
    /// The read-model writes to commit with them.
    pub sync: Vec<SyncOp>,
}

/// One actor loaded for one stream. See the [module docs](self).
#[derive(Debug, Clone)]
pub struct ActorInstance<'a, A: Actor> {
    actor: &'a A,
    stream_id: String,
    seq: u64,
    state: A::State,
}

impl<'a, A: Actor> ActorInstance<'a, A> {
    /// A new instance at seq 0 with the actor's initial state.
    pub fn new(actor: &'a A, stream_id: impl Into<String>) -> Self {
        let stream_id = stream_id.into();
        Self {
            state: actor.initial(&stream_id),
            actor,
            stream_id,
            seq: 0,
        }
    }

    /// A new instance evolved through `history`.
    ///
    /// # Errors
    /// As [`ActorInstance::evolve`].
    pub fn load<'m>(
        actor: &'a A,
        stream_id: impl Into<String>,
        history: impl IntoIterator<Item = &'m Message>,
    ) -> Result<Self, EvolveError> {
        let mut me = Self::new(actor, stream_id);
        me.evolve_all(history)?;
        Ok(me)
    }

    /// The stream id.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }
    /// The seq of the last message evolved (0 for none).
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// The state.
    pub fn state(&self) -> &A::State {
        &self.state
    }
    /// The actor.
    pub fn actor(&self) -> &'a A {
        self.actor
    }

    /// Applies one stored message: refuses another stream's message and a seq at or below
    /// the current one, then advances the seq (also for messages the actor ignores: commands
    /// count) and lets the actor evolve its state.
    ///
    /// # Errors
    /// [`EvolveError::DifferentStream`], [`EvolveError::SmallerSequence`],
    /// [`EvolveError::Payload`]; the instance is unchanged on error.
    pub fn evolve(&mut self, message: &Message) -> Result<(), EvolveError> {
        if message.stream_id() != self.stream_id {
            return Err(EvolveError::DifferentStream {
                expected: self.stream_id.clone(),
                actual: message.stream_id().to_owned(),
                message_id: message.id(),
            });
        }
        if message.seq() <= self.seq {
            return Err(EvolveError::SmallerSequence {
                stream_id: self.stream_id.clone(),
                current: self.seq,
                seq: message.seq(),
                message_id: message.id(),
            });
        }
        let mut state = self.state.clone();
        self.actor.evolve(&mut state, message)?;
        self.state = state;
        self.seq = message.seq();
        Ok(())
    }

    /// [`ActorInstance::evolve`] for each message, in order (catching up incrementally: pass
    /// only the messages after [`ActorInstance::seq`]).
    ///
    /// # Errors
    /// As [`ActorInstance::evolve`]; messages before the failing one stay applied.
    pub fn evolve_all<'m>(
        &mut self,
        messages: impl IntoIterator<Item = &'m Message>,
    ) -> Result<(), EvolveError> {
        messages.into_iter().try_for_each(|m| self.evolve(m))
    }

    /// Decides a new command: places it at seq + 1 and evolves it, asks the actor, builds
    /// the events as followers of the command with the next seqs, evolves them at once (so
    /// a next command on this instance follows them), and asks for the sync ops.
    ///
    /// # Errors
    /// [`HandleError::Domain`] when the actor refuses; [`HandleError::Evolve`] when the
    /// command belongs to another stream or an event does not apply. On error the instance
    /// is unchanged.
    pub fn decide(&mut self, command: &Message) -> Result<Decision, HandleError<A::Error>> {
        let before = (self.seq, self.state.clone());
        let result = self.try_decide(command);
        if result.is_err() {
            (self.seq, self.state) = before;
        }
        result
    }

    fn try_decide(&mut self, command: &Message) -> Result<Decision, HandleError<A::Error>> {
        let command = command.clone().with_seq(self.seq + 1);
        self.evolve(&command)?;
        let emits = self
            .actor
            .decide(&self.state, &command)
            .map_err(HandleError::Domain)?;
        let mut events = Vec::with_capacity(emits.len());
        for emit in emits {
            let event = command
                .follow_raw(emit.kind, emit.payload)
                .with_seq(self.seq + 1);
            self.evolve(&event)?;
            events.push(event);
        }
        let sync = self.actor.sync(&self.state, &command, &events);
        Ok(Decision {
            command,
            events,
            sync,
        })
    }

    /// The commands `event` triggers in the current state, each correlated with the event
    /// ([`Message::correlate`]) and marked with `producer: <actor name>` metadata.
    ///
    /// # Errors
    /// [`HandleError::Domain`] when the actor fails.
    pub fn react(&self, event: &Message) -> Result<Vec<Message>, HandleError<A::Error>> {
        let produced = self
            .actor
            .react(&self.state, event)
            .map_err(HandleError::Domain)?;
        let mut producer = Map::new();
        producer.insert("producer".to_owned(), Value::from(self.actor.name()));
        Ok(produced
            .into_iter()
            .map(|m| event.correlate(m).with_metadata(producer.clone()))
            .collect())
    }
}

/// An actor's failure, with the state type erased (see [`AnyActor`]).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum ActorError {
    /// The business rule refused; `message` is the actor error's text.
    #[error("{message}")]
    Domain {
        /// The actor.
        actor: &'static str,
        /// The error's text, e.g. "ride ride-1 already has a pilot".
        message: String,
    },
    /// The message cannot be applied (wrong stream, stale seq, corrupt payload).
    #[error(transparent)]
    Evolve(#[from] EvolveError),
}

/// What [`AnyActor::handle`] did with a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Handled {
    /// A command was decided.
    Decided(Decision),
    /// An event triggered these commands.
    Reacted(Vec<Message>),
    /// The actor does not handle the message's type.
    Ignored,
}

/// An [`Actor`] with its state type erased, so that a unit of work can hold several.
pub trait AnyActor: Send + Sync + 'static {
    /// The actor's name.
    fn name(&self) -> &'static str;
    /// What the actor does with `kind`, if anything.
    fn role(&self, kind: &str) -> Option<Role>;
    /// The command and reaction types, for registration checks.
    fn declared(&self) -> (Vec<&'static str>, Vec<&'static str>);
    /// Loads the instance of `message`'s stream from `history` (that stream's messages
    /// before the message, for a command; up to and including it, for an event) and decides
    /// or reacts.
    ///
    /// # Errors
    /// [`ActorError`].
    fn handle(&self, message: &Message, history: &[Message]) -> Result<Handled, ActorError>;
}

impl<A: Actor> AnyActor for A {
    fn name(&self) -> &'static str {
        Actor::name(self)
    }

    fn role(&self, kind: &str) -> Option<Role> {
        if self.commands().contains(&kind) {
            Some(Role::Command)
        } else if self.reactions().contains(&kind) {
            Some(Role::Reaction)
        } else {
            None
        }
    }

    fn declared(&self) -> (Vec<&'static str>, Vec<&'static str>) {
        (self.commands(), self.reactions())
    }

    fn handle(&self, message: &Message, history: &[Message]) -> Result<Handled, ActorError> {
        let name = Actor::name(self);
        let domain = |e: HandleError<A::Error>| match e {
            HandleError::Domain(e) => ActorError::Domain {
                actor: name,
                message: e.to_string(),
            },
            HandleError::Evolve(e) => ActorError::Evolve(e),
        };
        let Some(role) = AnyActor::role(self, message.kind()) else {
            return Ok(Handled::Ignored);
        };
        let mut instance = ActorInstance::load(self, message.stream_id(), history)?;
        match role {
            Role::Command => instance
                .decide(message)
                .map(Handled::Decided)
                .map_err(domain),
            Role::Reaction => {
                if instance.seq() < message.seq() {
                    instance.evolve(message)?;
                }
                instance
                    .react(message)
                    .map(Handled::Reacted)
                    .map_err(domain)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::es::FieldError;
    use serde::{Deserialize, Serialize};

    #[derive(Serialize, Deserialize)]
    struct Add {
        n: i64,
    }
    impl MessageType for Add {
        const TYPE: &'static str = "counter.add";
    }
    #[derive(Serialize, Deserialize)]
    struct Added {
        n: i64,
    }
    impl MessageType for Added {
        const TYPE: &'static str = "counter.added";
    }
    #[derive(Serialize, Deserialize)]
    struct Notify {
        total: i64,
    }
    impl MessageType for Notify {
        const TYPE: &'static str = "counter.notify";
        fn validate(&self) -> Result<(), FieldError> {
            Ok(())
        }
    }

    #[derive(Debug, Error, PartialEq)]
    enum CounterError {
        #[error("must add a positive number")]
        NotPositive,
        #[error(transparent)]
        Message(#[from] MessageError),
    }

    struct Counter;
    impl Actor for Counter {
        type State = i64;
        type Error = CounterError;
        fn name(&self) -> &'static str {
            "Counter"
        }
        fn initial(&self, _: &str) -> i64 {
            0
        }
        fn commands(&self) -> Vec<&'static str> {
            vec![Add::TYPE]
        }
        fn reactions(&self) -> Vec<&'static str> {
            vec![Added::TYPE]
        }
        fn decide(&self, _: &i64, command: &Message) -> Result<Vec<Emit>, CounterError> {
            let add: Add = command.decode()?;
            if add.n <= 0 {
                return Err(CounterError::NotPositive);
            }
            Ok(vec![
                Emit::new(&Added { n: add.n }),
                Emit::new(&Added { n: 0 }),
            ])
        }
        fn evolve(&self, state: &mut i64, message: &Message) -> Result<(), MessageError> {
            if message.is::<Added>() {
                *state += message.decode::<Added>()?.n;
            }
            Ok(())
        }
        fn react(&self, state: &i64, event: &Message) -> Result<Vec<Message>, CounterError> {
            Ok(vec![
                Message::build("audit", &Notify { total: *state }, event.created_at_ms())?
                    .at(event.created_at_ms() + 30)?,
            ])
        }
        fn sync(&self, state: &i64, _: &Message, _: &[Message]) -> Vec<SyncOp> {
            vec![SyncOp::put("counters", "c", serde_json::json!(*state))]
        }
    }

    fn add(n: i64) -> Message {
        Message::build("c-1", &Add { n }, 100).unwrap()
    }

    #[test]
    fn decide_numbers_events_after_the_command_and_evolves_them() {
        let mut i = ActorInstance::new(&Counter, "c-1");
        let d = i.decide(&add(2)).unwrap();
        assert_eq!(d.command.seq(), 1, "the command counts in seq");
        assert_eq!(
            d.events.iter().map(Message::seq).collect::<Vec<_>>(),
            vec![2, 3]
        );
        assert!(
            d.events
                .iter()
                .all(|e| e.causation_id() == d.command.id()
                    && e.correlation_id() == d.command.id())
        );
        assert_eq!(*i.state(), 2);
        assert_eq!(i.seq(), 3);
        assert_eq!(
            d.sync,
            vec![SyncOp::put("counters", "c", serde_json::json!(2))]
        );
    }

    #[test]
    fn two_commands_in_one_batch_do_not_share_a_seq() {
        // sourced's marked bug: both commands computed seq = last + 1.
        let mut i = ActorInstance::new(&Counter, "c-1");
        let first = i.decide(&add(1)).unwrap();
        let second = i.decide(&add(5)).unwrap();
        let seqs: Vec<u64> = [first, second]
            .iter()
            .flat_map(|d| std::iter::once(&d.command).chain(&d.events))
            .map(Message::seq)
            .collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(*i.state(), 6);
    }

    #[test]
    fn a_refused_command_leaves_the_instance_unchanged() {
        let mut i = ActorInstance::new(&Counter, "c-1");
        i.decide(&add(1)).unwrap();
        let err = i.decide(&add(0)).unwrap_err();
        assert!(matches!(
            err,
            HandleError::Domain(CounterError::NotPositive)
        ));
        assert_eq!((i.seq(), *i.state()), (3, 1));
    }

    #[test]
    fn evolve_refuses_other_streams_and_smaller_seqs_and_counts_unhandled_messages() {
        let mut i = ActorInstance::new(&Counter, "c-1");
        let cmd = add(1);
        i.evolve(&cmd).unwrap();
        assert_eq!(i.seq(), 1, "a message without handler still advances seq");
        let again = i.evolve(&cmd).unwrap_err();
        assert!(matches!(
            again,
            EvolveError::SmallerSequence {
                current: 1,
                seq: 1,
                ..
            }
        ));
        let other = cmd.clone().to("c-2").unwrap().with_seq(2);
        assert!(matches!(
            i.evolve(&other).unwrap_err(),
            EvolveError::DifferentStream { .. }
        ));
        let evt = cmd.follow(&Added { n: 4 });
        i.evolve(&evt).unwrap();
        assert_eq!((i.seq(), *i.state()), (2, 4));
    }

    #[test]
    fn load_catches_up_incrementally() {
        let mut i = ActorInstance::new(&Counter, "c-1");
        let d = i.decide(&add(3)).unwrap();
        let history: Vec<Message> = std::iter::once(d.command).chain(d.events).collect();
        let mut loaded = ActorInstance::load(&Counter, "c-1", &history[..2]).unwrap();
        assert_eq!((loaded.seq(), *loaded.state()), (2, 3));
        loaded.evolve_all(&history[2..]).unwrap();
        assert_eq!(loaded.seq(), 3);
    }

    #[test]
    fn react_correlates_and_marks_the_producer() {
        let mut i = ActorInstance::new(&Counter, "c-1");
        let d = i.decide(&add(3)).unwrap();
        let out = i.react(&d.events[0]).unwrap();
        assert_eq!(out.len(), 1);
        let c = &out[0];
        assert_eq!(c.stream_id(), "audit");
        assert_eq!(c.causation_id(), d.events[0].id());
        assert_eq!(c.correlation_id(), d.command.id());
        assert_eq!(c.metadata()["producer"], serde_json::json!("Counter"));
        assert_eq!(c.created_at_ms(), 130, "scheduled with at");
    }

    #[test]
    fn dual_registration_is_refused() {
        struct Dual;
        impl Actor for Dual {
            type State = ();
            type Error = CounterError;
            fn name(&self) -> &'static str {
                "Dual"
            }
            fn initial(&self, _: &str) {}
            fn commands(&self) -> Vec<&'static str> {
                vec![Add::TYPE]
            }
            fn reactions(&self) -> Vec<&'static str> {
                vec![Add::TYPE]
            }
            fn decide(&self, _: &(), _: &Message) -> Result<Vec<Emit>, CounterError> {
                Ok(vec![])
            }
            fn evolve(&self, _: &mut (), _: &Message) -> Result<(), MessageError> {
                Ok(())
            }
        }
        assert_eq!(
            check_roles(&Dual).unwrap_err().to_string(),
            "Dual declares counter.add both as a command and as a reaction"
        );
        assert!(check_roles(&Counter).is_ok());
    }

    #[test]
    fn any_actor_handles_commands_and_reactions() {
        let d = match AnyActor::handle(&Counter, &add(1), &[]).unwrap() {
            Handled::Decided(d) => d,
            other => panic!("expected a decision, got {other:?}"),
        };
        let history = vec![d.command.clone(), d.events[0].clone()];
        match AnyActor::handle(&Counter, &d.events[0], &history).unwrap() {
            Handled::Reacted(cmds) => assert_eq!(cmds.len(), 1),
            other => panic!("expected a reaction, got {other:?}"),
        }
        let err = AnyActor::handle(&Counter, &add(-1), &[]).unwrap_err();
        assert_eq!(err.to_string(), "must add a positive number");
        let unknown = Message::new("x.y", "c-1", serde_json::json!({}), 0).unwrap();
        assert_eq!(
            AnyActor::handle(&Counter, &unknown, &[]).unwrap(),
            Handled::Ignored
        );
    }
}
