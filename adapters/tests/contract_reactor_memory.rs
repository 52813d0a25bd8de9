//! The reactor-store contract (consumer groups, claims, scheduling) against the in-memory
//! event store.

use std::sync::Arc;

use adapters::memory::MemoryStore;
use ports::ReactorStore;
use ports::contract::{ReactorStoreFactory, async_trait};

/// Fresh in-memory stores' event stores.
struct MemoryReactorStores;

#[async_trait]
impl ReactorStoreFactory for MemoryReactorStores {
    async fn fresh(&self) -> Arc<dyn ReactorStore> {
        Arc::new(Arc::new(MemoryStore::default()).event_store())
    }
}

ports::reactor_store_contract_tests!(MemoryReactorStores);
