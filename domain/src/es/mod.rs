//! Event sourcing, the pure part (sourced's core): messages, actors, their decisions, and a
//! given/when/then test kit. The event store that persists these decisions is a port
//! (`ports::EventStore`); the unit of work that drives actors against it lives in `app`.
//!
//! # Layout
//!
//! - [`message`]: the envelope ([`Message`]), typed payloads ([`MessageType`]) and their
//!   field-naming validation errors.
//! - [`sync`]: read-model writes as data ([`SyncOp`]).
//!
//! # Deliberate differences from sourced
//!
//! - Time is an input: constructors take `created_at_ms`, and a follower takes the creation
//!   time of its cause (sourced reads the clock in every constructor).
//! - Invalid messages cannot be constructed: every constructor validates and returns a
//!   `Result` (sourced builds invalid messages and asks `valid?` later).
//! - `sync` hooks return data ([`SyncOp`]) that the event store commits, instead of running
//!   arbitrary code inside the store's transaction.

pub mod message;
pub mod sync;

pub use message::{
    ES_RECORD_STREAM, FieldError, Message, MessageError, MessageParts, MessageType, decode_payload,
    payload_value,
};
pub use sync::SyncOp;
