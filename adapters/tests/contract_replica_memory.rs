//! The replica contract against the in-memory replica (the model the others are tested
//! against).

use std::sync::Arc;

use adapters::memory::MemoryReplica;
use ports::Replica;
use ports::contract::{ReplicaFactory, async_trait};

/// Fresh in-memory replicas; nothing survives a reopen.
struct MemoryReplicas;

#[async_trait]
impl ReplicaFactory for MemoryReplicas {
    async fn fresh(&self) -> Arc<dyn Replica> {
        Arc::new(MemoryReplica::new())
    }

    async fn reopen(&self, _replica: Arc<dyn Replica>) -> Option<Arc<dyn Replica>> {
        None
    }
}

ports::replica_contract_tests!(MemoryReplicas);
