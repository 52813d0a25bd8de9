//! The reactor-store contract (consumer groups, claims, scheduling) against the SQLite
//! adapter. Every store is a fresh database file in its own temporary directory, kept as
//! long as the factory.

use std::sync::{Arc, Mutex};

use adapters::sqlite::SqliteStore;
use ports::ReactorStore;
use ports::contract::{ReactorStoreFactory, async_trait};

/// Fresh SQLite stores, each in a temporary directory kept until the factory is dropped.
#[derive(Default)]
struct SqliteReactorStores {
    dirs: Mutex<Vec<tempfile::TempDir>>,
}

#[async_trait]
impl ReactorStoreFactory for SqliteReactorStores {
    async fn fresh(&self) -> Arc<dyn ReactorStore> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("rides.db").display());
        self.dirs
            .lock()
            .expect("the directory list is never poisoned")
            .push(dir);
        let store = SqliteStore::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        Arc::new(store.event_store())
    }
}

ports::reactor_store_contract_tests!(SqliteReactorStores::default());
