//! The replica ([`ports::Replica`]) in memory: the model the other replicas are tested
//! against, and the default for unit tests.

use std::collections::BTreeMap;
use std::ops::Bound;
use std::sync::Mutex;

use async_trait::async_trait;
use ports::{Replica, ReplicaError, RideRow};

use super::lock;

/// Rides by id, behind one mutex: every call is one atomic step.
#[derive(Debug, Default)]
pub struct MemoryReplica {
    rides: Mutex<BTreeMap<i64, RideRow>>,
}

impl MemoryReplica {
    /// An empty replica.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl Replica for MemoryReplica {
    fn describe(&self) -> String {
        "memory://".to_owned()
    }

    async fn ping(&self) -> Result<(), ReplicaError> {
        Ok(())
    }

    async fn upsert(&self, rides: &[RideRow]) -> Result<(), ReplicaError> {
        let mut held = lock(&self.rides);
        for ride in rides {
            held.insert(ride.id, ride.clone());
        }
        Ok(())
    }

    async fn delete(&self, ids: &[i64]) -> Result<(), ReplicaError> {
        let mut held = lock(&self.rides);
        for id in ids {
            held.remove(id);
        }
        Ok(())
    }

    async fn page(&self, after_id: i64, limit: usize) -> Result<Vec<RideRow>, ReplicaError> {
        let held = lock(&self.rides);
        Ok(held
            .range((Bound::Excluded(after_id), Bound::Unbounded))
            .take(limit)
            .map(|(_, r)| r.clone())
            .collect())
    }

    async fn count(&self) -> Result<u64, ReplicaError> {
        Ok(lock(&self.rides).len() as u64)
    }

    async fn rides_for_user(
        &self,
        user_id: i64,
        before_id: Option<i64>,
        limit: usize,
    ) -> Result<Vec<RideRow>, ReplicaError> {
        let held = lock(&self.rides);
        Ok(held
            .range((
                Bound::Unbounded,
                before_id.map_or(Bound::Unbounded, Bound::Excluded),
            ))
            .rev()
            .map(|(_, r)| r)
            .filter(|r| r.user_id == user_id)
            .take(limit)
            .cloned()
            .collect())
    }
}
