//! The reactor-store contract (consumer groups, claims with `FOR UPDATE SKIP LOCKED`,
//! scheduling) against the Postgres adapter.
//!
//! Needs a server: `RIDES_TEST_POSTGRES_URL` names a database the tests may create schemas in
//! (`eval "$(scripts/services.sh)"` starts or finds one). Every store lives in its own new
//! schema (`rides_test_<secs>_<random>`), dropped by the event-store suite's sweep once older
//! than an hour.

use std::sync::Arc;

use adapters::postgres::{PgOptions, PostgresStore};
use ports::ReactorStore;
use ports::contract::{ReactorStoreFactory, async_trait};

fn url() -> String {
    std::env::var("RIDES_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "the Postgres reactor-store contract needs a server: set RIDES_TEST_POSTGRES_URL to \
             a database the tests may create schemas in (e.g. run `eval \"$(scripts/services.sh)\"`)"
        )
    })
}

fn new_schema() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("rides_test_{secs}_{}", &random[..12])
}

/// Reactor stores, each in a new schema.
struct PgReactorStores;

#[async_trait]
impl ReactorStoreFactory for PgReactorStores {
    async fn fresh(&self) -> Arc<dyn ReactorStore> {
        let schema = new_schema();
        let options = PgOptions {
            schema: Some(schema.clone()),
            max_connections: 5,
            ..PgOptions::default()
        };
        let store = PostgresStore::connect(&url(), options)
            .await
            .unwrap_or_else(|e| panic!("connect to schema {schema}: {e}"));
        Arc::new(store.event_store())
    }
}

ports::reactor_store_contract_tests!(PgReactorStores);
