//! Baselines for `rides bench`: what the same database, through the same driver (sqlx), does
//! with a simpler or older design, so that the store's numbers are read next to a reference
//! measured in the same run.
//!
//! Two baselines, both behind [`Baseline`] (opened by the app's wiring from the store URL):
//!
//! - **The reference design** ([`Baseline::create_ride`]): `POST /rides` as rocket-rides-atomic
//!   runs it, four transactions per ride, in its own tables (`baseline_…`, next to the
//!   store's, referencing the store's `users` as the reference's tables do):
//!
//!   ```text
//!   tx 1  lock or insert the key (SELECT … FOR UPDATE; INSERT … 'started')
//!   tx 2  lock key; INSERT ride; INSERT audit record; key → ride_created
//!         processor call (outside any transaction)
//!   tx 3  lock key; UPDATE ride SET charge_id; key → charge_created
//!   tx 4  lock key; INSERT staged job (send_ride_receipt); store the response; key → finished
//!   ```
//!
//!   The statements are the reference's (Sequel's) ones, with the store's column types. The
//!   isolation is the store's, not the reference's: `READ COMMITTED` plus the key row locked
//!   `FOR UPDATE` on Postgres (the reference's `SERIALIZABLE` made two concurrent requests in
//!   three fail with 40001 on this kind of machine, which would measure isolation rather than
//!   the number of transactions), `BEGIN IMMEDIATE` on one writer connection on SQLite. The
//!   reference calls Stripe inside its charge transaction; here the (fake, instant) processor
//!   is called between transactions 2 and 3, as the store's design does.
//! - **The store side of a relay** ([`Baseline::drain_outbox`]): one statement per batch that
//!   takes the oldest staged records of the store's own outbox and deletes them
//!   (`DELETE … WHERE id IN (SELECT … ORDER BY id LIMIT n) RETURNING …`), decoding every
//!   column a relay would publish. No relay can move records faster than its store gives them
//!   up, so this is the ceiling the streamer is compared with.
//!
//! The SQL is shared by both backends (`$n` placeholders work on both); only the transaction
//! start, the row lock, the DDL and the outbox table differ ([`sql::Dialect`], one per
//! backend, in `postgres/baseline.rs` and `sqlite/baseline.rs`).

#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub(crate) mod sql;

use async_trait::async_trait;
use domain::RideParams;
use ports::{PaymentGateway, StoreError};

/// One ride request for the reference design.
#[derive(Debug, Clone, Copy)]
pub struct BaselineRide<'a> {
    /// The user (a row of the store's `users`).
    pub user_id: i64,
    /// The user's email (the processor's customer).
    pub email: &'a str,
    /// The idempotency key.
    pub key: &'a str,
    /// The ride's parameters.
    pub params: &'a RideParams,
    /// The client's address (audit record).
    pub origin_ip: &'a str,
    /// Now, in milliseconds since the epoch.
    pub now_ms: i64,
}

/// What one [`Baseline::drain_outbox`] call took out of the outbox.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Drained {
    /// Records taken and deleted.
    pub records: u64,
    /// Bytes of their columns as decoded (ids, stream, key, kind, payload, …).
    pub bytes: u64,
}

/// The baselines of one SQL store; see the module docs.
#[async_trait]
pub trait Baseline: Send + Sync {
    /// What runs, e.g. `postgres://…: reference design (4 transactions per ride)`.
    fn describe(&self) -> String;

    /// Creates the reference design's tables.
    ///
    /// # Errors
    /// When the DDL fails, e.g. because they exist (a database holds one run at a time).
    async fn create_tables(&self) -> Result<(), StoreError>;

    /// Drops the reference design's tables.
    ///
    /// # Errors
    /// When the DDL fails.
    async fn drop_tables(&self) -> Result<(), StoreError>;

    /// Runs one `POST /rides` through the reference design's four transactions; returns the
    /// HTTP status the reference answers (201, 402, 503, or 409 for a lost race or a key in
    /// progress, after which the client retries with the same key).
    ///
    /// # Errors
    /// When a transaction fails for another reason than a conflict (the key is unlocked
    /// first, as the reference does), or the processor is unavailable.
    async fn create_ride(
        &self,
        ride: &BaselineRide<'_>,
        payments: &dyn PaymentGateway,
    ) -> Result<u16, StoreError>;

    /// Takes and deletes the (at most) `max` oldest records of the store's outbox in one
    /// statement.
    ///
    /// # Errors
    /// When the statement fails.
    async fn drain_outbox(&self, max: usize) -> Result<Drained, StoreError>;
}

const _: fn(&dyn Baseline) = |_| {};
