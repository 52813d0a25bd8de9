//! Contract suites: one per port, run unchanged against every adapter.
//!
//! An adapter's test file implements a factory ([`LogFactory`], [`StoreFactory`],
//! [`PaymentFactory`]) and stamps one `#[tokio::test]` per scenario with the matching macro:
//!
//! ```ignore
//! struct Sqlite;
//! #[ports::contract::async_trait]
//! impl ports::contract::StoreFactory for Sqlite { /* ... */ }
//! ports::store_contract_tests!(Sqlite);
//! ```
//!
//! Scenarios are plain `pub async fn name(factory: &dyn Factory)` functions that panic with a
//! message naming the broken rule. Each one documents its preconditions.

use std::sync::Arc;

pub use async_trait::async_trait;

use crate::{ConsumerStore, Log, Outbox, PaymentGateway, RideStore};

pub mod consumer;
pub mod log;
pub mod payment;
pub mod store;

/// Makes logs for the log contract.
#[async_trait]
pub trait LogFactory: Send + Sync + 'static {
    /// A fresh, empty log in its own namespace (directory, key prefix, schema or topic), so
    /// that tests running in parallel never see each other's records.
    async fn fresh(&self) -> Arc<dyn Log>;
    /// Opens `log` again as a restarted process would (the caller has dropped every other
    /// clone); `None` for a backend that keeps nothing across restarts (memory).
    async fn reopen(&self, log: Arc<dyn Log>) -> Option<Arc<dyn Log>>;
}

/// A store under test: the three views one backend offers.
#[derive(Clone)]
pub struct StoreUnderTest {
    /// The canonical store.
    pub store: Arc<dyn RideStore>,
    /// Its outbox.
    pub outbox: Arc<dyn Outbox>,
    /// Its consumer state store.
    pub consumers: Arc<dyn ConsumerStore>,
}

/// Makes stores for the store, outbox and consumer-store contracts.
#[async_trait]
pub trait StoreFactory: Send + Sync + 'static {
    /// A fresh store in its own namespace (file, database or schema), with the two reference
    /// users and nothing else.
    async fn fresh(&self) -> StoreUnderTest;
    /// Opens the same store again as a restarted process would (the caller has dropped every
    /// other clone); `None` for a backend that keeps nothing (memory).
    async fn reopen(&self, store: StoreUnderTest) -> Option<StoreUnderTest>;
}

/// Makes payment gateways for the payment contract.
pub trait PaymentFactory: Send + Sync + 'static {
    /// A gateway whose transient-error rate is zero.
    fn gateway(&self) -> Arc<dyn PaymentGateway>;
}
