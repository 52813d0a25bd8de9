//! Event sourcing, the pure part (sourced's core): messages, actors, their decisions, and a
//! given/when/then test kit. The event store that persists these decisions is a port
//! (`ports::EventStore`); the unit of work that drives actors against it lives in `app`.
//!
//! # Layout
//!
//! - [`message`]: the envelope ([`Message`]), typed payloads ([`MessageType`]) and their
//!   field-naming validation errors.
//! - [`registry`]: building messages from untrusted JSON within a scope ([`Registry`]).
//! - [`actor`]: the [`Actor`] trait (decide / evolve / react / sync), one actor loaded for
//!   one stream ([`ActorInstance`]), and its type-erased form ([`AnyActor`]).
//! - [`sync`]: read-model writes as data ([`SyncOp`]).
//! - [`topology`]: commands → events → reactions → read models, declared in code.
//! - [`reactor`]: consumer groups ([`GroupSpec`]), reactors' [`Action`]s and the
//!   [`ErrorStrategy`] (part 2, the background runtime).
//! - [`testing`]: the given/when/then kit for actors.
//! - [`dispatch`]: the worked example, ride dispatch (Ride and Pilot actors).
//!
//! # Deliberate differences from sourced
//!
//! - Time is an input: constructors take `created_at_ms`, and a follower takes the creation
//!   time of its cause (sourced reads the clock in every constructor).
//! - Invalid messages cannot be constructed: every constructor validates and returns a
//!   `Result` (sourced builds invalid messages and asks `valid?` later).
//! - `sync` hooks return data ([`SyncOp`]) that the event store commits, instead of running
//!   arbitrary code inside the store's transaction.

pub mod actor;
pub mod dispatch;
pub mod message;
pub mod reactor;
pub mod registry;
pub mod sync;
pub mod testing;
pub mod topology;

pub use actor::{
    Actor, ActorError, ActorInstance, AnyActor, Decision, Emit, EvolveError, HandleError, Handled,
    RegistrationError, Role, check_roles,
};
pub use message::{
    ES_RECORD_STREAM, FieldError, Message, MessageError, MessageParts, MessageType, decode_payload,
    payload_value,
};
pub use reactor::{
    Action, Backoff, BatchResult, ErrorStrategy, Exhausted, GroupSpec, StartFrom, Verdict,
};
pub use registry::Registry;
pub use sync::SyncOp;
