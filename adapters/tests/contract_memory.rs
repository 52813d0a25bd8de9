//! Contract suites against the memory adapters and the fake payment processor.
//!
//! The memory backends keep nothing across a restart, so both `reopen`s answer `None` and the
//! restart scenarios have nothing to check.

use std::sync::Arc;

use adapters::memory::{MemoryConsumerStore, MemoryLog, MemoryStore};
use adapters::payment::FakeProcessor;
use ports::contract::{LogFactory, PaymentFactory, StoreFactory, StoreUnderTest};
use ports::{Log, PaymentGateway};

/// Fresh [`MemoryLog`]s.
struct MemoryLogs;

#[ports::contract::async_trait]
impl LogFactory for MemoryLogs {
    async fn fresh(&self) -> Arc<dyn Log> {
        Arc::new(MemoryLog::new())
    }

    async fn reopen(&self, _log: Arc<dyn Log>) -> Option<Arc<dyn Log>> {
        None
    }
}

/// Fresh [`MemoryStore`]s (store and outbox) with a [`MemoryConsumerStore`].
struct MemoryStores;

#[ports::contract::async_trait]
impl StoreFactory for MemoryStores {
    async fn fresh(&self) -> StoreUnderTest {
        let store = Arc::new(MemoryStore::default());
        StoreUnderTest {
            store: store.clone(),
            outbox: store,
            consumers: Arc::new(MemoryConsumerStore::new()),
        }
    }

    async fn reopen(&self, _store: StoreUnderTest) -> Option<StoreUnderTest> {
        None
    }
}

/// [`FakeProcessor`]s without transient errors.
struct FakePayments;

impl PaymentFactory for FakePayments {
    fn gateway(&self) -> Arc<dyn PaymentGateway> {
        Arc::new(FakeProcessor::default())
    }
}

ports::log_contract_tests!(MemoryLogs);
ports::store_contract_tests!(MemoryStores);
ports::payment_contract_tests!(FakePayments);
