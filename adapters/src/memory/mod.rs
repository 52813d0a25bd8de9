//! In-memory backends for every storage port: the model every other backend is tested against.
//!
//! - [`MemoryStore`]: the canonical store ([`ports::RideStore`]) and its outbox
//!   ([`ports::Outbox`]) in one value, because staged records must be written in the same
//!   atomic step as the ride they describe.
//! - [`MemoryLog`]: a single-lane log ([`ports::Log`]) with decimal offsets.
//! - [`MemoryConsumerStore`]: consumers' checkpoints, dead-letter lists and leases
//!   ([`ports::ConsumerStore`]).
//! - [`MemoryReplica`]: a secondary datastore ([`ports::Replica`]).
//! - [`MemoryEventStore`]: the event store ([`ports::EventStore`]), living inside a
//!   [`MemoryStore`] so that appended messages are staged in its outbox atomically.
//!
//! # Design choices
//!
//! Each value keeps all of its state behind ONE [`std::sync::Mutex`], and every trait method
//! locks it once, decides, writes, and unlocks: a method call is one atomic step, which is the
//! in-memory equivalent of one database transaction. Methods that can fail check everything
//! first and only then mutate, so a failed call writes nothing. The lock is never held across
//! an `.await` (the only awaits are waits for wake-ups, done after unlocking), so a blocking
//! mutex is both correct and cheaper than an async one.
//!
//! Waiting is done with wake-ups, never with polling: the outbox uses a
//! [`tokio::sync::Notify`] (one streamer, and a wake-up that arrives between two waits is
//! kept as a permit), the log a [`tokio::sync::watch`] channel (several consumers read the same
//! log and all of them must wake).
//!
//! Nothing survives the process: these backends are for tests, demos and as an executable
//! specification of the contracts in `ports::contract`.

mod consumer;
mod event_store;
mod log;
mod reactor_store;
mod replica;
mod store;

pub use consumer::MemoryConsumerStore;
pub use event_store::MemoryEventStore;
pub use log::MemoryLog;
pub use replica::MemoryReplica;
pub use store::{AuditRecord, MemoryStore};

use std::sync::{Mutex, MutexGuard};

/// Locks `m`, recovering the data if a panicking thread poisoned it. Every method checks
/// before it writes, so a panic never leaves half a step behind.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}
