//! The ports of Rocket Rides: the traits the services talk through, one error enum per port,
//! and (behind the `test-util` feature) the contract suites every adapter must pass.
//!
//! Every runtime-wired port is an `#[async_trait]` trait bounded `Send + Sync + 'static` and
//! used as `Arc<dyn Port>`, because the backend is chosen at run time from a URL.
//!
//! # Layout
//!
//! - [`store`]: the canonical store, which commits one atomic phase per call.
//! - [`outbox`]: the streamer's view of staged records.
//! - [`log`]: the pluggable log (append, blocking read, lag, trim).
//! - [`consumer`]: a consumer's state and position, saved atomically.
//! - [`payment`]: the payment processor.
//! - [`replica`]: a secondary datastore kept in sync with the store (redstream's model).
//! - [`event_store`]: the event store (sourced's backend): streams, optimistic appends, a
//!   gap-safe global order, and documents written by `sync` hooks.
//! - [`reactor_store`]: consumer groups over the event store (part 2): per-(group, stream)
//!   claims, settlements that commit a batch's effects, scheduling, heartbeats.
//! - [`clock`]: time, as a port, with a manual clock for tests.
//! - [`error`]: the error enums, each answering "can a retry help?".
//! - `contract` (feature `test-util`): one scenario suite per port and a macro that stamps
//!   one test per scenario for an adapter.

pub mod clock;
pub mod consumer;
pub mod error;
pub mod event_store;
pub mod log;
pub mod outbox;
pub mod payment;
pub mod reactor_store;
pub mod replica;
pub mod store;

#[cfg(feature = "test-util")]
pub mod contract;

pub use clock::{Clock, ManualClock, SystemClock};
pub use consumer::{Checkpoint, ConsumerStore, Cursor, Lease, Parked, Save, ToPark};
pub use error::{
    ConsumerStoreError, EventStoreError, LogError, PaymentError, ReplicaError, StoreError,
};
pub use event_store::{
    Append, Commit, EventStore, EventStoreStats, ExpectedSeq, StoredMessage, StreamInfo,
};
pub use log::{Batch, Delivery, LaneLog, Log, Position};
pub use outbox::{Outbox, Published, Route};
pub use payment::{Charge, ChargeRequest, PaymentGateway};
pub use reactor_store::{
    Claim, ClaimedMessage, FailingStream, GroupInfo, GroupStatus, ReactorStore, ScheduledMessage,
    Settlement, StreamFailure, plan_settlement,
};
pub use replica::Replica;
pub use store::{BeginRequest, Begun, Forgotten, RideRow, RideStore, Truth, User};

#[cfg(feature = "test-util")]
pub use {
    consumer::MockConsumerStore, log::MockLog, outbox::MockOutbox, payment::MockPaymentGateway,
    replica::MockReplica, store::MockRideStore,
};
