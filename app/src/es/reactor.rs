//! Reactors: what the background runtime ([`super::runtime`]) runs for a consumer group.
//!
//! A [`Reactor`] gets a claimed batch of one stream (and, if it asks, the stream's whole
//! history) and returns a [`BatchResult`]: the [`Action`]s of each handled message, and the
//! message that failed, if one did (partial batches). Three kinds are provided:
//!
//! - [`ActorReactor`]: an [`Actor`]'s commands (decided in the background: the events are
//!   appended after the stream's last message, optimistically) and reactions (commands
//!   appended or scheduled, [`Action::build_for`]);
//! - [`Handler`]: a function from a message to messages;
//! - [`Projector`]: a read model kept in the event store's documents, state-stored (the
//!   document is the state: loaded, evolved by the batch, written back with a
//!   [`Action::Sync`] in the acknowledging transaction) or event-sourced (evolved from the
//!   stream's whole history every time). A projector's reactions run only for messages that
//!   are not replaying, so a reset rebuilds the read model without repeating side effects.
//!
//! Unlike sourced, an actor's batch evolves the events it decides before the next command of
//! the same batch (sourced's actors share one pre-fetched history, so two commands of one
//! stream in one batch conflict).

use std::collections::HashSet;
use std::sync::Arc;

use async_trait::async_trait;
use domain::es::{
    Action, Actor, ActorInstance, BatchResult, GroupSpec, HandleError, Message, Role, SyncOp,
};
use ports::ReactorStore;
use serde_json::Value;

/// One message of a batch, as a reactor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// The message.
    pub message: Message,
    /// Whether the group had handled it before its last reset.
    pub replaying: bool,
}

/// A reactor: a consumer group's code. See the [module docs](self).
#[async_trait]
pub trait Reactor: Send + Sync + 'static {
    /// The group: id, handled types, start, batch size.
    fn group(&self) -> GroupSpec;

    /// Whether [`Reactor::handle_batch`] needs the stream's whole history (all types).
    fn wants_history(&self) -> bool {
        false
    }

    /// Handles a batch of one stream, in order. `history` is empty unless
    /// [`Reactor::wants_history`]. `store` is there for reactors that read (a state-stored
    /// projector loads its document); writes go through the returned actions.
    async fn handle_batch(
        &self,
        store: &dyn ReactorStore,
        batch: &[Delivery],
        history: &[Message],
        now_ms: i64,
    ) -> BatchResult;
}

/// An [`Actor`] run in the background: its commands and its reactions.
#[derive(Debug)]
pub struct ActorReactor<A: Actor> {
    actor: A,
    spec: GroupSpec,
}

impl<A: Actor> ActorReactor<A> {
    /// The actor as a reactor of the group named after it, handling its commands and
    /// reactions from the beginning.
    pub fn new(actor: A) -> Self {
        let mut types = actor.commands();
        types.extend(actor.reactions());
        let spec = GroupSpec::new(actor.name(), &types);
        Self { actor, spec }
    }

    /// The same reactor with another group (id, start, batch size; the types are the
    /// actor's).
    pub fn with_group(mut self, spec: GroupSpec) -> Self {
        let types = std::mem::take(&mut self.spec.types);
        self.spec = GroupSpec { types, ..spec };
        self
    }
}

fn handle_error<E: std::fmt::Display>(e: HandleError<E>) -> String {
    e.to_string()
}

#[async_trait]
impl<A: Actor> Reactor for ActorReactor<A> {
    fn group(&self) -> GroupSpec {
        self.spec.clone()
    }

    fn wants_history(&self) -> bool {
        true
    }

    async fn handle_batch(
        &self,
        _store: &dyn ReactorStore,
        batch: &[Delivery],
        history: &[Message],
        now_ms: i64,
    ) -> BatchResult {
        let role = |m: &Message| {
            if self.actor.commands().contains(&m.kind()) {
                Some(Role::Command)
            } else if self.actor.reactions().contains(&m.kind()) {
                Some(Role::Reaction)
            } else {
                None
            }
        };
        let mut result = BatchResult::default();
        let Some(first) = batch.first() else {
            return result;
        };
        // The state of the whole stream, but for the batch's commands (decided below).
        let deciding: HashSet<_> = batch
            .iter()
            .filter(|d| !d.replaying && role(&d.message) == Some(Role::Command))
            .map(|d| d.message.id())
            .collect();
        let mut instance = ActorInstance::new(&self.actor, first.message.stream_id());
        let loaded = history
            .iter()
            .filter(|m| !deciding.contains(&m.id()))
            .try_for_each(|m| instance.evolve(m));
        if let Err(e) = loaded {
            result.failed = Some((first.message.id(), e.to_string()));
            return result;
        }
        let mut next_seq = history.last().map_or(1, |m| m.seq() + 1);
        for d in batch {
            let m = &d.message;
            if d.replaying {
                result.handled.push((m.id(), vec![Action::Ok]));
                continue;
            }
            let actions = match role(m) {
                Some(Role::Command) => instance.decide(m).map(|decision| {
                    let events: Vec<Message> = decision
                        .events
                        .into_iter()
                        .enumerate()
                        .map(|(i, e)| e.with_seq(next_seq + i as u64))
                        .collect();
                    next_seq += events.len() as u64;
                    let mut actions = Vec::new();
                    if !events.is_empty() {
                        actions.push(Action::AppendAfter {
                            stream_id: m.stream_id().to_owned(),
                            messages: events,
                        });
                    }
                    if !decision.sync.is_empty() {
                        actions.push(Action::Sync(decision.sync));
                    }
                    actions
                }),
                Some(Role::Reaction) => instance
                    .react(m)
                    .map(|commands| Action::build_for(commands, now_ms)),
                None => Ok(vec![Action::Ok]),
            };
            if !result.record(m.id(), actions.map_err(handle_error)) {
                break;
            }
        }
        result
    }
}

/// The function of a [`Handler`]: a message (and whether it is replayed) to the messages it
/// causes, or an error.
pub type HandlerFn = dyn Fn(&Message, bool) -> Result<Vec<Message>, String> + Send + Sync;

/// A handler (sourced's `Sourced::Handler`): message → messages, appended when due or
/// scheduled ([`Action::build_for`]).
pub struct Handler {
    spec: GroupSpec,
    f: Arc<HandlerFn>,
}

impl std::fmt::Debug for Handler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Handler").field("spec", &self.spec).finish()
    }
}

impl Handler {
    /// A handler of group `spec` running `f`.
    pub fn new(
        spec: GroupSpec,
        f: impl Fn(&Message, bool) -> Result<Vec<Message>, String> + Send + Sync + 'static,
    ) -> Self {
        Self {
            spec,
            f: Arc::new(f),
        }
    }
}

#[async_trait]
impl Reactor for Handler {
    fn group(&self) -> GroupSpec {
        self.spec.clone()
    }

    async fn handle_batch(
        &self,
        _store: &dyn ReactorStore,
        batch: &[Delivery],
        _history: &[Message],
        now_ms: i64,
    ) -> BatchResult {
        let mut result = BatchResult::default();
        for d in batch {
            let outcome =
                (self.f)(&d.message, d.replaying).map(|out| Action::build_for(out, now_ms));
            if !result.record(d.message.id(), outcome) {
                break;
            }
        }
        result
    }
}

/// A read model: how a stream's messages fold into one JSON document.
pub trait Projection: Send + Sync + 'static {
    /// The group id.
    fn group_id(&self) -> &str;
    /// The message types it evolves.
    fn types(&self) -> Vec<&'static str>;
    /// The documents' collection.
    fn collection(&self) -> &str;
    /// The document of a stream before any message.
    fn initial(&self, stream_id: &str) -> Value;
    /// Folds one message into the document.
    ///
    /// # Errors
    /// A text naming what does not apply (the message fails, see the error strategy).
    fn evolve(&self, doc: &mut Value, message: &Message) -> Result<(), String>;
    /// Messages to send after `message` was folded in (run only when not replaying).
    ///
    /// # Errors
    /// A text; the message fails.
    fn react(&self, doc: &Value, message: &Message) -> Result<Vec<Message>, String> {
        let _ = (doc, message);
        Ok(Vec::new())
    }
}

/// How a [`Projector`] gets its state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProjectorKind {
    /// The document is the state: loaded, evolved by the batch, written back.
    StateStored,
    /// The state is rebuilt from the stream's whole history every time.
    EventSourced,
}

/// A [`Projection`] run as a reactor; its document is written with the acknowledgement.
pub struct Projector<P: Projection> {
    projection: P,
    kind: ProjectorKind,
    batch_size: usize,
}

impl<P: Projection> std::fmt::Debug for Projector<P> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projector")
            .field("group", &self.projection.group_id())
            .field("kind", &self.kind)
            .finish()
    }
}

impl<P: Projection> Projector<P> {
    /// A state-stored projector (sourced's `Projector::StateStored`).
    pub fn state_stored(projection: P) -> Self {
        Self {
            projection,
            kind: ProjectorKind::StateStored,
            batch_size: 50,
        }
    }

    /// An event-sourced projector (sourced's `Projector::EventSourced`).
    pub fn event_sourced(projection: P) -> Self {
        Self {
            projection,
            kind: ProjectorKind::EventSourced,
            batch_size: 50,
        }
    }
}

#[async_trait]
impl<P: Projection> Reactor for Projector<P> {
    fn group(&self) -> GroupSpec {
        GroupSpec::new(self.projection.group_id(), &self.projection.types())
            .batch_size(self.batch_size)
    }

    fn wants_history(&self) -> bool {
        self.kind == ProjectorKind::EventSourced
    }

    async fn handle_batch(
        &self,
        store: &dyn ReactorStore,
        batch: &[Delivery],
        history: &[Message],
        now_ms: i64,
    ) -> BatchResult {
        let p = &self.projection;
        let mut result = BatchResult::default();
        let Some(first) = batch.first() else {
            return result;
        };
        let stream = first.message.stream_id().to_owned();
        let mut doc = match self.kind {
            ProjectorKind::StateStored => match store.document(p.collection(), &stream).await {
                Ok(doc) => doc.unwrap_or_else(|| p.initial(&stream)),
                Err(e) => {
                    result.failed = Some((first.message.id(), e.to_string()));
                    return result;
                }
            },
            ProjectorKind::EventSourced => {
                // Everything before the batch; the batch is folded below.
                let mut doc = p.initial(&stream);
                let types = p.types();
                for m in history
                    .iter()
                    .take_while(|m| m.id() != first.message.id())
                    .filter(|m| types.contains(&m.kind()))
                {
                    if let Err(e) = p.evolve(&mut doc, m) {
                        result.failed = Some((first.message.id(), e));
                        return result;
                    }
                }
                doc
            }
        };
        for d in batch {
            let before = doc.clone();
            let outcome = p.evolve(&mut doc, &d.message).and_then(|()| {
                if d.replaying {
                    Ok(Vec::new())
                } else {
                    p.react(&doc, &d.message)
                }
            });
            if !result.record(
                d.message.id(),
                outcome.map(|out| Action::build_for(out, now_ms)),
            ) {
                doc = before;
                break;
            }
        }
        // One write for the successful prefix, with its last message's actions (so that it
        // commits with the acknowledgement).
        if let Some((_, actions)) = result.handled.last_mut() {
            actions.push(Action::Sync(vec![SyncOp::put(
                p.collection(),
                stream.as_str(),
                doc,
            )]));
        }
        result
    }
}
