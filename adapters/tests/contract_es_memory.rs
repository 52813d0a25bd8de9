//! The event-store contract against the in-memory event store (the model the others are
//! tested against).

use std::sync::Arc;

use adapters::memory::MemoryStore;
use ports::contract::{EventStoreFactory, EventStoreUnderTest, async_trait};

/// Fresh in-memory stores, each with its event store.
struct MemoryEventStores;

#[async_trait]
impl EventStoreFactory for MemoryEventStores {
    async fn fresh(&self) -> EventStoreUnderTest {
        let store = Arc::new(MemoryStore::default());
        EventStoreUnderTest {
            events: Arc::new(store.event_store()),
            outbox: store,
        }
    }
}

ports::event_store_contract_tests!(MemoryEventStores);
