//! Contract suites against the SQLite adapter.
//!
//! Every scenario gets a fresh database file in its own temporary directory, which lives as
//! long as the factory (one factory per test). `reopen` drops the store and connects to the
//! same file again, as a restarted process would.

use std::sync::{Arc, Mutex};

use adapters::sqlite::SqliteStore;
use ports::contract::{StoreFactory, StoreUnderTest};

/// Fresh SQLite stores, each in a temporary directory kept until the factory is dropped.
#[derive(Default)]
struct SqliteStores {
    dirs: Mutex<Vec<tempfile::TempDir>>,
}

fn under_test(store: SqliteStore) -> StoreUnderTest {
    let store = Arc::new(store);
    StoreUnderTest {
        store: store.clone(),
        outbox: store.clone(),
        consumers: store,
    }
}

#[ports::contract::async_trait]
impl StoreFactory for SqliteStores {
    async fn fresh(&self) -> StoreUnderTest {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("rides.db").display());
        self.dirs
            .lock()
            .expect("the directory list is never poisoned")
            .push(dir);
        let store = SqliteStore::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect {url}: {e}"));
        under_test(store)
    }

    async fn reopen(&self, store: StoreUnderTest) -> Option<StoreUnderTest> {
        let url = store.store.describe();
        drop(store);
        let store = SqliteStore::connect(&url)
            .await
            .unwrap_or_else(|e| panic!("reopen {url}: {e}"));
        Some(under_test(store))
    }
}

ports::store_contract_tests!(SqliteStores::default());
