//! The replica contract against the SQLite replica.
//!
//! Every scenario gets a fresh database file in its own temporary directory, which lives as
//! long as the factory (one factory per test). `reopen` drops the replica and opens the same
//! file again, as a restarted process would.

use std::sync::{Arc, Mutex};

use adapters::sqlite::{SqliteReplica, SqliteStore};
use ports::contract::{ReplicaFactory, async_trait};
use ports::{Replica, ReplicaError};

/// Fresh SQLite replicas, each in a temporary directory kept until the factory is dropped.
#[derive(Default)]
struct SqliteReplicas {
    dirs: Mutex<Vec<tempfile::TempDir>>,
}

#[async_trait]
impl ReplicaFactory for SqliteReplicas {
    async fn fresh(&self) -> Arc<dyn Replica> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        let url = format!("sqlite://{}", dir.path().join("replica.db").display());
        self.dirs
            .lock()
            .expect("the directory list is never poisoned")
            .push(dir);
        let replica = SqliteReplica::open(&url)
            .await
            .unwrap_or_else(|e| panic!("open {url}: {e}"));
        Arc::new(replica)
    }

    async fn reopen(&self, replica: Arc<dyn Replica>) -> Option<Arc<dyn Replica>> {
        let url = replica.describe();
        drop(replica);
        let replica = SqliteReplica::open(&url)
            .await
            .unwrap_or_else(|e| panic!("reopen {url}: {e}"));
        Some(Arc::new(replica))
    }
}

ports::replica_contract_tests!(SqliteReplicas::default());

/// Adapter-specific: a private in-memory database works too (one connection).
#[tokio::test]
async fn in_memory_replica_keeps_rows_while_open() {
    let replica = SqliteReplica::open("sqlite::memory:")
        .await
        .expect("open an in-memory replica");
    let rows = [ports::contract::fixtures::ride_row(1, 1)];
    replica.upsert(&rows).await.expect("upsert");
    assert_eq!(replica.page(0, 10).await.expect("page"), rows);
}

/// Adapter-specific: a URL that is not SQLite's is a clear, permanent error.
#[tokio::test]
async fn a_foreign_url_is_refused() {
    let e = SqliteReplica::open("postgres://localhost/x")
        .await
        .expect_err("not a SQLite URL");
    assert!(matches!(e, ReplicaError::Other(_)), "{e}");
}

/// Adapter-specific: the replica's table is not the store's, so a replica pointed at the
/// store's own file by mistake leaves the store's rides alone.
#[tokio::test]
async fn a_replica_in_the_store_file_never_touches_the_store_rides() {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sqlite://{}", dir.path().join("rides.db").display());
    let store = SqliteStore::connect(&url).await.expect("store");
    let replica = SqliteReplica::open(&url)
        .await
        .expect("replica in the same file");
    replica
        .upsert(&[ports::contract::fixtures::ride_row(1, 1)])
        .await
        .expect("upsert");
    let truth = ports::RideStore::truth(&store).await.expect("truth");
    assert_eq!(truth.rides, 0, "the store's rides table was written");
    assert_eq!(replica.count().await.expect("count"), 1);
}
