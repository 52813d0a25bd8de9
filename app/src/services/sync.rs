//! The sync consumer: keeps a secondary datastore (a replica) equal to the store's rides, as
//! redstream keeps secondary datastores in sync with a primary database.
//!
//! It is an *idempotent* consumer ([`crate::runtime::Effects`]): every change of a ride is a
//! change record (`ride.created`, `ride.charged`, `ride.deleted`, …) whose key names the
//! entity (`ride:42`). For a batch the consumer takes the set of ride ids it names, reloads
//! their *current* rows from the primary store in ONE query ([`RideStore::rides_by_ids`]),
//! upserts the rows it found and deletes the ids it did not. The outcome depends only on the
//! primary's current rows, never on the records' order or on how often they are delivered, so
//! redelivery after a crash (between the effects and the checkpoint) changes nothing.

use std::collections::BTreeSet;
use std::sync::Arc;

use async_trait::async_trait;
use ports::{Delivery, Replica, RideStore};

use crate::runtime::{Effects, Failure};

/// The kind name of sync consumers, kept in their cursor.
pub const KIND: &str = "sync";

/// The default name of the sync consumer (its checkpoint's key).
pub const DEFAULT_NAME: &str = "replica";

/// Primary store → replica.
pub struct ReplicaSync {
    store: Arc<dyn RideStore>,
    replica: Arc<dyn Replica>,
}

impl ReplicaSync {
    /// Syncs `replica` from `store`.
    pub fn new(store: Arc<dyn RideStore>, replica: Arc<dyn Replica>) -> Self {
        Self { store, replica }
    }
}

/// The ride a change record is about: its key is `ride:<id>`.
pub fn ride_id(key: &str) -> Option<i64> {
    key.strip_prefix("ride:")?.parse().ok()
}

#[async_trait]
impl Effects for ReplicaSync {
    const KIND: &'static str = KIND;

    async fn apply(&self, records: &[Delivery]) -> Result<(), Failure> {
        let ids: BTreeSet<i64> = records
            .iter()
            .filter_map(|d| ride_id(&d.record.key))
            .collect();
        if ids.is_empty() {
            return Ok(());
        }
        let ids: Vec<i64> = ids.into_iter().collect();
        let rows = self
            .store
            .rides_by_ids(&ids)
            .await
            .map_err(|e| Failure::Batch(anyhow::anyhow!("reloading rides: {e}")))?;
        let found: BTreeSet<i64> = rows.iter().map(|r| r.id).collect();
        let gone: Vec<i64> = ids.into_iter().filter(|id| !found.contains(id)).collect();
        self.replica
            .upsert(&rows)
            .await
            .map_err(|e| Failure::Batch(anyhow::anyhow!("upserting into the replica: {e}")))?;
        self.replica
            .delete(&gone)
            .await
            .map_err(|e| Failure::Batch(anyhow::anyhow!("deleting from the replica: {e}")))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::{Consumer, Idempotent};
    use crate::services::Outcome;
    use adapters::memory::{MemoryConsumerStore, MemoryLog, MemoryReplica};
    use ports::{Log, ManualClock};

    /// Creates `n` rides through the ride service; their ids, oldest first.
    pub(crate) async fn create_rides(
        stores: &crate::wiring::Stores,
        user: &ports::User,
        n: usize,
    ) -> Vec<i64> {
        use domain::{IdempotencyKey, RideParams, RideRequest};
        let service = crate::rides::RideService::new(
            stores.store.clone(),
            Arc::new(adapters::payment::FakeProcessor::new(0.0, 1)),
            Arc::new(ManualClock::new(1_000)),
            crate::rides::RideServiceConfig::default(),
        );
        for i in 0..n {
            let key =
                IdempotencyKey::parse(Some(&format!("sync-consumer-test-key-{i:04}"))).unwrap();
            let request = RideRequest {
                params: RideParams::new(37.760634058469556, -122.41962585931567, 37.79, -122.39)
                    .unwrap(),
                raise_error: false,
            };
            service.create_ride(user, &key, &request, "127.0.0.1").await;
        }
        let mut ids: Vec<i64> = stores
            .store
            .rides_for_user(user.id, None, 100)
            .await
            .unwrap()
            .iter()
            .map(|r| r.id)
            .collect();
        ids.sort_unstable();
        assert_eq!(ids.len(), n);
        ids
    }

    #[test]
    fn ride_ids_come_from_the_key() {
        assert_eq!(ride_id("ride:42"), Some(42));
        assert_eq!(ride_id("user:42"), None);
        assert_eq!(ride_id("ride:x"), None);
    }

    #[tokio::test]
    async fn the_replica_follows_the_primary_whatever_the_order_and_repeats() {
        let stores = crate::wiring::open_store("memory://").await.unwrap();
        let user = stores.store.ensure_user("sync@example.com").await.unwrap();
        let rides = create_rides(&stores, &user, 3).await;
        let log = Arc::new(MemoryLog::new());
        // The records, delivered backwards and twice, plus a ride that no longer exists.
        let mut records: Vec<_> = rides
            .iter()
            .rev()
            .map(|id| crate::services::mocks::ride_record(*id as u64, 1, 0))
            .collect();
        records.extend(records.clone());
        let mut ghost = crate::services::mocks::ride_record(999, 1, 0);
        ghost.key = "ride:999".into();
        records.push(ghost);
        for (i, r) in records.iter_mut().enumerate() {
            r.seq = i as u64 + 1; // distinct seqs: every delivery reaches the handler
        }
        log.append(&records).await.unwrap();
        let replica = Arc::new(MemoryReplica::new());
        replica
            .upsert(&[stores.store.ride(rides[0]).await.unwrap().unwrap()])
            .await
            .unwrap();
        let mut stale = stores.store.ride(rides[0]).await.unwrap().unwrap();
        stale.id = 999;
        replica.upsert(&[stale]).await.unwrap();
        let c = Consumer::new(
            "replica",
            Idempotent(ReplicaSync::new(stores.store.clone(), replica.clone())),
            log,
            Arc::new(MemoryConsumerStore::new()),
            Arc::new(ManualClock::new(0)),
        )
        .with_wait(std::time::Duration::ZERO);
        assert_eq!(c.step().await.unwrap(), Outcome::Worked(7));
        assert_eq!(replica.count().await.unwrap(), 3, "999 is gone");
        let page = replica.page(0, 10).await.unwrap();
        let primary = stores.store.rides_by_ids(&rides).await.unwrap();
        assert_eq!(page, primary);
    }
}
