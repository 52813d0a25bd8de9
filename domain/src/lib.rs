//! Pure core of Rocket Rides: no I/O, no async runtime, no database.
//!
//! Everything that decides *what happens* lives here; the adapters only commit what this crate
//! decided, and the services only move data between ports.
//!
//! # Layout
//!
//! - [`ride`]: ride parameters (exact validation messages of the reference), the great-circle
//!   distance, and the ride aggregate in decide/evolve style.
//! - [`idempotency`]: the Stripe-style idempotency-key model: key parsing, recovery points,
//!   the decision taken when a request arrives, and the plan of the next atomic phase.
//! - [`record`]: the log record envelope staged in the outbox and carried by every log.
//! - [`marks`]: the duplicate rule every consumer follows, based on the producer's sequence
//!   (never on log offsets or timing).
//! - [`gaps`]: records a log lost, found from the producers' gap-free sequences.
//! - [`distance`]: the distance consumer's fold.
//! - [`es`]: event sourcing (sourced's core): messages, actors, decisions, a test kit.

pub mod distance;
pub mod es;
pub mod gaps;
pub mod idempotency;
pub mod marks;
pub mod record;
pub mod ride;

pub use distance::{Applied, DistanceState};
pub use gaps::Gap;
pub use idempotency::{
    AuditDraft, BeginRequest, Begun, CompletableBounds, IdempotencyKey, KeyError, KeyMoved,
    KeyRecord, KeyTransition, NextPhase, Phase, RecoveryPoint, RideWrite, StoredResponse,
    Thresholds, UnknownRecoveryPoint,
};
pub use marks::{Marks, Seen};
pub use record::{LogRecord, NewRecord, RecordDraft};
pub use ride::{
    ParamError, Ride, RideCommand, RideError, RideEvent, RideParams, RideRequest, RideStatus,
};
