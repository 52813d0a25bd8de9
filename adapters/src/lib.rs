//! Backends for the Rocket Rides ports, one folder and one cargo feature each.
//!
//! # Layout
//!
//! | folder       | feature    | implements                                         |
//! |--------------|------------|----------------------------------------------------|
//! | `memory/`    | `memory`   | every port; the model the others are tested against |
//! | `payment/`   | `payment`  | a fake payment processor with the reference's outcomes |
//! | `stripe/`    | `stripe`   | the payment gateway on Stripe's HTTP API (reqwest)  |
//! | `sqlite/`    | `sqlite`   | store + outbox + consumer state (sqlx), the replica, the event store |
//! | `sled/`      | `sled`     | the log, embedded                                   |
//! | `postgres/`  | `postgres` | store + outbox + consumer state, the Postgres-only log, the replica, the event store |
//! | `redis/`     | `redis`    | the log on Redis Streams, the replica (hashes + sorted sets) |
//! | `kafka/`     | `kafka`    | the log on Kafka (rdkafka)                          |
//! | `baseline/`  | -          | the benchmarks' SQL baselines (`sqlite/baseline.rs`, `postgres/baseline.rs`) |
//!
//! Every adapter passes the contract suites of `ports::contract` (see `tests/contract_*.rs`).
//!
//! The stores (`memory`, `sqlite`, `postgres`) share one phase engine (`phase.rs`): the
//! domain decides each step of an idempotency key's life, the engine sequences the writes, and
//! each store only implements the writes for its dialect (`PhaseTx`).

pub mod baseline;
#[cfg(feature = "kafka")]
pub mod kafka;
#[cfg(any(test, feature = "memory"))]
pub mod memory;
#[cfg(feature = "payment")]
pub mod payment;
#[cfg(any(test, feature = "memory", feature = "sqlite", feature = "postgres"))]
mod phase;
#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "redis")]
pub mod redis;
#[cfg(feature = "sled")]
pub mod sled;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_consumer;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_error;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_event_store;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_reactor_store;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_replica;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql_rows;
#[cfg(feature = "sqlite")]
pub mod sqlite;
#[cfg(feature = "stripe")]
pub mod stripe;
