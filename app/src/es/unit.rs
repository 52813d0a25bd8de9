//! The unit of work: one command through a set of actors, all or nothing.
//!
//! ```text
//!  command ─▶ queue ─▶ actor decides (stream loaded, events numbered, sync ops kept)
//!               ▲         └─▶ events ─▶ actors reacting to them ─▶ commands
//!               └──────────────────────────────── (unit actors) ◀─┘
//!  everything ─▶ ONE EventStore::commit (expected seq per stream, sync ops, outbox records)
//! ```
//!
//! [`Unit::handle`] walks breadth-first: the command is decided by the unit actor that
//! declares it (and stored, since commands count in seq); each event produced is handed to
//! the unit actors that react to it; the commands they send are decided in turn if a unit
//! actor declares them, and are otherwise only stored on their stream, for background
//! processing (part 2). Commands scheduled for later (created after `now`, see
//! `Message::at`) are returned in [`UnitOutcome::scheduled`]; a unit made with
//! [`Unit::with_runtime`] also stores them in its commit (the housekeeper promotes them when
//! due) and acknowledges what its actors handled for their background groups. Nothing is written until the walk is over; then one
//! [`EventStore::commit`] writes every append (each with the seq its stream had when the unit
//! read it: optimistic concurrency) and every sync op, or nothing.
//!
//! # Deliberate differences from sourced
//!
//! - One commit at the end instead of a backend transaction held open during the walk, so the
//!   unit needs nothing but the [`EventStore`] port; a concurrent writer is detected by the
//!   expected seqs ([`UnitError::Store`] with [`EventStoreError::Conflict`]).
//! - Commands are always stored (sourced's `persist_commands: false` is not offered).
//! - A command type is decided by at most one actor of a unit (checked by
//!   [`Unit::with_actor`]); sourced would let two actors append after the same seq.
//! - Acknowledgements (`ack_on`) and scheduled messages commit with the unit's messages
//!   ([`Unit::with_runtime`]), not after them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use domain::es::{
    Actor, ActorError, ActorInstance, AnyActor, EvolveError, Handled, Message, RegistrationError,
    Role, SyncOp,
};
use ports::{
    Append, Commit, EventStore, EventStoreError, ExpectedSeq, ReactorStore, ScheduledMessage,
    StoredMessage,
};
use thiserror::Error;

/// The default iteration cap of a unit (sourced's `max_iterations: 100`).
pub const MAX_ITERATIONS: usize = 100;

/// Errors of a unit of work. Nothing was written when one is returned.
#[derive(Debug, Error)]
pub enum UnitError {
    /// An actor refused (a business rule; the API answers 422) or a stored message does not
    /// apply.
    #[error(transparent)]
    Actor(#[from] ActorError),
    /// The event store failed; [`EventStoreError::Conflict`] means another writer appended to
    /// one of the unit's streams after the unit read it (the API answers 409).
    #[error(transparent)]
    Store(#[from] EventStoreError),
    /// The walk handled more messages than the cap: actors that keep triggering each other.
    #[error("Exceeded {0} iterations")]
    TooManyIterations(usize),
}

/// What a unit of work did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct UnitOutcome {
    /// Every message committed (commands, events, commands for background processing), in
    /// commit order, with their global sequences.
    pub stored: Vec<StoredMessage>,
    /// The events each actor decided, by actor name, in the order they were decided.
    pub produced: BTreeMap<&'static str, Vec<Message>>,
    /// Commands due later (stored for the housekeeper by a unit made with
    /// [`Unit::with_runtime`]; only returned otherwise).
    pub scheduled: Vec<Message>,
}

impl UnitOutcome {
    /// The events `actor` decided (empty if none).
    pub fn events_for(&self, actor: &str) -> &[Message] {
        self.produced.get(actor).map_or(&[], Vec::as_slice)
    }
}

/// A set of actors that handle a command synchronously. See the [module docs](self).
#[derive(Clone)]
pub struct Unit {
    store: Arc<dyn EventStore>,
    actors: Vec<Arc<dyn AnyActor>>,
    max_iterations: usize,
    /// With the background runtime's store: scheduled messages are stored and handled
    /// messages acknowledged for the actors' groups, in the unit's commit.
    runtime: Option<Arc<dyn ReactorStore>>,
}

impl std::fmt::Debug for Unit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Unit")
            .field("store", &self.store.describe())
            .field(
                "actors",
                &self.actors.iter().map(|a| a.name()).collect::<Vec<_>>(),
            )
            .field("max_iterations", &self.max_iterations)
            .finish()
    }
}

/// One stream as the walk sees it.
#[derive(Debug, Default)]
struct StreamWork {
    /// The last seq committed when the unit read the stream.
    base: u64,
    /// Committed messages, then the ones this unit will append.
    messages: Vec<Message>,
}

/// The state of one [`Unit::handle`] call.
struct Walk<'a> {
    unit: &'a Unit,
    now_ms: i64,
    streams: HashMap<String, StreamWork>,
    /// Streams in the order they were first appended to (the commit's order).
    append_order: Vec<String>,
    sync: Vec<SyncOp>,
    produced: BTreeMap<&'static str, Vec<Message>>,
    scheduled: Vec<Message>,
    /// Messages to hand to the actors; `true` when the message is a command to decide (not
    /// stored yet).
    queue: VecDeque<(Message, bool)>,
    /// (actor name, message id) for every message an actor handled.
    acks: Vec<(String, uuid::Uuid)>,
}

impl Unit {
    /// A unit with no actors over `store`.
    pub fn new(store: Arc<dyn EventStore>) -> Self {
        Self {
            store,
            actors: Vec::new(),
            max_iterations: MAX_ITERATIONS,
            runtime: None,
        }
    }

    /// A unit with no actors over a store with consumer groups: in the same commit as its
    /// messages, the unit stores the messages it schedules (promoted by the housekeeper when
    /// due) and acknowledges every message it handled for the group named after the actor
    /// that handled it (sourced's `Unit` calling `ack_on`), so that an
    /// [`ActorReactor`](super::ActorReactor) of the same actor running in the background
    /// does not handle it again. Groups that are not registered are skipped.
    pub fn with_runtime(store: Arc<dyn ReactorStore>) -> Self {
        let events: Arc<dyn EventStore> = store.clone();
        Self {
            runtime: Some(store),
            ..Self::new(events)
        }
    }

    /// Adds an actor.
    ///
    /// # Errors
    /// [`RegistrationError::DualRole`] when the actor declares a type both as a command and
    /// as a reaction; [`RegistrationError::DuplicateCommand`] when another actor of the unit
    /// decides one of its commands.
    pub fn with_actor(mut self, actor: impl AnyActor) -> Result<Self, RegistrationError> {
        let (commands, reactions) = actor.declared();
        if let Some(kind) = reactions.iter().find(|r| commands.contains(r)) {
            return Err(RegistrationError::DualRole {
                actor: actor.name(),
                kind: (*kind).to_owned(),
            });
        }
        for kind in &commands {
            if let Some(other) = self.command_handler(kind) {
                return Err(RegistrationError::DuplicateCommand {
                    kind: (*kind).to_owned(),
                    first: other.name(),
                    second: actor.name(),
                });
            }
        }
        self.actors.push(Arc::new(actor));
        Ok(self)
    }

    /// Sets the iteration cap (messages handled per [`Unit::handle`]).
    #[must_use]
    pub fn max_iterations(mut self, max: usize) -> Self {
        self.max_iterations = max;
        self
    }

    /// The event store.
    pub fn store(&self) -> &Arc<dyn EventStore> {
        &self.store
    }

    fn command_handler(&self, kind: &str) -> Option<&Arc<dyn AnyActor>> {
        self.actors
            .iter()
            .find(|a| a.role(kind) == Some(Role::Command))
    }

    fn reactors(&self, kind: &str) -> impl Iterator<Item = &Arc<dyn AnyActor>> {
        self.actors
            .iter()
            .filter(move |a| a.role(kind) == Some(Role::Reaction))
    }

    /// Handles `command` and everything it triggers among the unit's actors, then commits
    /// all of it at once. `now_ms` separates commands due now from scheduled ones.
    ///
    /// # Errors
    /// [`UnitError`]; nothing is written when one is returned.
    pub async fn handle(&self, command: Message, now_ms: i64) -> Result<UnitOutcome, UnitError> {
        let mut walk = Walk {
            unit: self,
            now_ms,
            streams: HashMap::new(),
            append_order: Vec::new(),
            sync: Vec::new(),
            produced: BTreeMap::new(),
            scheduled: Vec::new(),
            queue: VecDeque::new(),
            acks: Vec::new(),
        };
        walk.route(command).await?;
        let mut iterations = 0;
        while let Some((message, decide)) = walk.queue.pop_front() {
            iterations += 1;
            if iterations > self.max_iterations {
                return Err(UnitError::TooManyIterations(self.max_iterations));
            }
            walk.process(message, decide).await?;
        }
        let appends = walk
            .append_order
            .iter()
            .filter_map(|s| {
                let work = walk.streams.get(s)?;
                let pending = work.messages.iter().filter(|m| m.seq() > work.base);
                Some(Append {
                    stream_id: s.clone(),
                    expected: ExpectedSeq::Exactly(work.base),
                    messages: pending.cloned().collect(),
                })
            })
            .collect();
        let commit = Commit {
            appends,
            sync: walk.sync,
        };
        let stored = match &self.runtime {
            Some(rs) => {
                let schedule: Vec<ScheduledMessage> = walk
                    .scheduled
                    .iter()
                    .map(|m| ScheduledMessage {
                        at_ms: m.created_at_ms(),
                        message: m.clone(),
                    })
                    .collect();
                rs.commit_with(commit, &schedule, &walk.acks).await?
            }
            None => self.store.commit(commit).await?,
        };
        Ok(UnitOutcome {
            stored,
            produced: walk.produced,
            scheduled: walk.scheduled,
        })
    }
}

impl Walk<'_> {
    /// Reads `stream_id` once per walk.
    async fn touch(&mut self, stream_id: &str) -> Result<&mut StreamWork, UnitError> {
        if !self.streams.contains_key(stream_id) {
            let messages: Vec<Message> = self
                .unit
                .store
                .read_stream(stream_id, 0, None)
                .await?
                .into_iter()
                .map(|s| s.message)
                .collect();
            let base = messages.last().map_or(0, Message::seq);
            self.streams
                .insert(stream_id.to_owned(), StreamWork { base, messages });
        }
        self.streams
            .get_mut(stream_id)
            .ok_or_else(|| UnitError::Store(EventStoreError::Other("stream vanished".into())))
    }

    /// Adds messages (numbered already) to their stream's pending appends.
    async fn push(&mut self, messages: Vec<Message>) -> Result<(), UnitError> {
        for m in messages {
            let stream_id = m.stream_id().to_owned();
            let work = self.touch(&stream_id).await?;
            let last = work.messages.last().map_or(0, Message::seq);
            if m.seq() != last + 1 {
                return Err(ActorError::Evolve(EvolveError::SmallerSequence {
                    stream_id,
                    current: last,
                    seq: m.seq(),
                    message_id: m.id(),
                })
                .into());
            }
            work.messages.push(m);
            if !self.append_order.contains(&stream_id) {
                self.append_order.push(stream_id);
            }
        }
        Ok(())
    }

    /// A new message enters the walk: a command a unit actor decides is queued (it is
    /// stored when decided); anything else is stored now at its stream's next seq and
    /// queued if a unit actor reacts to it. A message due later is set aside.
    async fn route(&mut self, message: Message) -> Result<(), UnitError> {
        if message.created_at_ms() > self.now_ms {
            self.scheduled.push(message);
            return Ok(());
        }
        if self.unit.command_handler(message.kind()).is_some() {
            self.queue.push_back((message, true));
            return Ok(());
        }
        let work = self.touch(message.stream_id()).await?;
        let seq = work.messages.last().map_or(0, Message::seq) + 1;
        let message = message.with_seq(seq);
        self.push(vec![message.clone()]).await?;
        if self.unit.reactors(message.kind()).next().is_some() {
            self.queue.push_back((message, false));
        }
        Ok(())
    }

    /// Hands one queued message to the unit's actors: its decider (if it is a command not
    /// stored yet), then every actor reacting to it.
    async fn process(&mut self, message: Message, decide: bool) -> Result<(), UnitError> {
        let stream_id = message.stream_id().to_owned();
        let mut message = message;
        let decider = self.unit.command_handler(message.kind()).filter(|_| decide);
        if let Some(actor) = decider.cloned() {
            let history = self.touch(&stream_id).await?.messages.clone();
            if let Handled::Decided(d) = actor.handle(&message, &history)? {
                message = d.command.clone();
                self.acks.push((actor.name().to_owned(), message.id()));
                self.sync.extend(d.sync);
                self.produced
                    .entry(actor.name())
                    .or_default()
                    .extend(d.events.iter().cloned());
                let events = d.events.clone();
                self.push(std::iter::once(d.command).chain(d.events).collect())
                    .await?;
                for e in events {
                    if self.unit.reactors(e.kind()).next().is_some() {
                        self.queue.push_back((e, false));
                    }
                }
            }
        }
        let reactors: Vec<Arc<dyn AnyActor>> =
            self.unit.reactors(message.kind()).cloned().collect();
        for actor in reactors {
            let history = self.touch(&stream_id).await?.messages.clone();
            if let Handled::Reacted(commands) = actor.handle(&message, &history)? {
                self.acks.push((actor.name().to_owned(), message.id()));
                for c in commands {
                    self.route(c).await?;
                }
            }
        }
        Ok(())
    }
}

/// Catches `instance` up with its stream: reads the messages after its seq and evolves them
/// (sourced's `load`; calling it again reads only what is new). Returns the messages read.
///
/// # Errors
/// [`UnitError::Store`] when the store fails; [`UnitError::Actor`] when a message does not
/// apply.
pub async fn load<A: Actor>(
    store: &dyn EventStore,
    instance: &mut ActorInstance<'_, A>,
) -> Result<Vec<Message>, UnitError> {
    let messages = history_for(store, instance.stream_id(), instance.seq(), None).await?;
    instance
        .evolve_all(&messages)
        .map_err(|e| UnitError::Actor(e.into()))?;
    Ok(messages)
}

/// The messages of `stream_id` with `after < seq <= upto` (sourced's `history_for`).
///
/// # Errors
/// [`UnitError::Store`] when the store fails.
pub async fn history_for(
    store: &dyn EventStore,
    stream_id: &str,
    after: u64,
    upto: Option<u64>,
) -> Result<Vec<Message>, UnitError> {
    Ok(store
        .read_stream(stream_id, after, upto)
        .await?
        .into_iter()
        .map(|s| s.message)
        .collect())
}
