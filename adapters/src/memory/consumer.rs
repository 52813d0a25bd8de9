//! Consumers' checkpoints, dead-letter lists and leases, in memory.
//!
//! Everything lives behind one lock, so every method is one atomic step: a save checks the
//! lease (fencing) and the version, then writes the checkpoint, parks and unparks in the same
//! step, or writes nothing at all. Leases keep their row when released or expired, so epochs
//! only ever grow.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use ports::{Checkpoint, ConsumerStore, ConsumerStoreError, Lease, Parked, Save};

use super::lock;

/// A [`ConsumerStore`] in memory. A save is one step under one lock, so position, cursor,
/// state and dead letters always change together, and the version check (optimistic
/// concurrency) makes two processes with one consumer name unable to both win.
#[derive(Debug, Default)]
pub struct MemoryConsumerStore {
    inner: Mutex<Inner>,
}

#[derive(Debug, Default)]
struct Inner {
    consumers: BTreeMap<String, Checkpoint>,
    /// Dead letters by consumer name, oldest (smallest id) first.
    parked: BTreeMap<String, Vec<Parked>>,
    /// The last parked id handed out (ids are never reused).
    last_parked_id: u64,
    leases: BTreeMap<String, Lease>,
}

impl MemoryConsumerStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::default()
    }
}

#[async_trait]
impl ConsumerStore for MemoryConsumerStore {
    async fn register(&self, name: &str) -> Result<(), ConsumerStoreError> {
        lock(&self.inner)
            .consumers
            .entry(name.to_owned())
            .or_insert_with(Checkpoint::registered);
        Ok(())
    }

    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, ConsumerStoreError> {
        Ok(lock(&self.inner).consumers.get(name).cloned())
    }

    async fn save<'a>(&self, name: &str, save: &Save<'a>) -> Result<u64, ConsumerStoreError> {
        let mut inner = lock(&self.inner);
        if let Some(lease) = save.lease
            && inner.leases.get(&lease.scope).is_none_or(|stored| {
                (stored.holder.as_str(), stored.epoch) != (lease.holder.as_str(), lease.epoch)
            })
        {
            return Err(ConsumerStoreError::Fenced(format!(
                "{} (holder {}, epoch {})",
                lease.scope, lease.holder, lease.epoch
            )));
        }
        let current = inner.consumers.get(name).map_or(0, |c| c.version);
        if current != save.expected_version {
            return Err(ConsumerStoreError::Conflict(name.to_owned()));
        }
        let version = current + 1;
        inner.consumers.insert(
            name.to_owned(),
            Checkpoint {
                position: save.position.clone(),
                cursor: save.cursor.clone(),
                state: save.state.clone(),
                version,
                updated_at_ms: save.now_ms,
            },
        );
        let mut next_id = inner.last_parked_id;
        let new: Vec<Parked> = save
            .park
            .iter()
            .map(|p| {
                next_id += 1;
                Parked {
                    id: next_id,
                    lane: p.lane,
                    record: p.record.clone(),
                    error: p.error.clone(),
                    parked_at_ms: save.now_ms,
                }
            })
            .collect();
        inner.last_parked_id = next_id;
        let list = inner.parked.entry(name.to_owned()).or_default();
        list.retain(|p| !save.unpark.contains(&p.id));
        list.extend(new);
        if list.is_empty() {
            inner.parked.remove(name);
        }
        Ok(version)
    }

    async fn list(&self) -> Result<Vec<(String, Checkpoint)>, ConsumerStoreError> {
        Ok(lock(&self.inner)
            .consumers
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect())
    }

    async fn remove(&self, name: &str) -> Result<bool, ConsumerStoreError> {
        let mut inner = lock(&self.inner);
        inner.parked.remove(name);
        Ok(inner.consumers.remove(name).is_some())
    }

    async fn parked(&self, name: &str) -> Result<Vec<Parked>, ConsumerStoreError> {
        Ok(lock(&self.inner)
            .parked
            .get(name)
            .cloned()
            .unwrap_or_default())
    }

    async fn acquire_lease(
        &self,
        scope: &str,
        holder: &str,
        ttl_ms: i64,
        now_ms: i64,
    ) -> Result<Option<Lease>, ConsumerStoreError> {
        let expires_at_ms = now_ms.saturating_add(ttl_ms);
        let mut inner = lock(&self.inner);
        let lease = match inner.leases.get(scope) {
            None => Lease {
                scope: scope.to_owned(),
                holder: holder.to_owned(),
                epoch: 1,
                expires_at_ms,
            },
            Some(l) if l.expires_at_ms <= now_ms => Lease {
                holder: holder.to_owned(),
                epoch: l.epoch + 1,
                expires_at_ms,
                ..l.clone()
            },
            Some(l) if l.holder == holder => Lease {
                expires_at_ms,
                ..l.clone()
            },
            Some(_) => return Ok(None),
        };
        inner.leases.insert(scope.to_owned(), lease.clone());
        Ok(Some(lease))
    }

    async fn release_lease(&self, lease: &Lease) -> Result<(), ConsumerStoreError> {
        if let Some(stored) = lock(&self.inner).leases.get_mut(&lease.scope)
            && stored.holder == lease.holder
            && stored.epoch == lease.epoch
        {
            stored.expires_at_ms = 0;
        }
        Ok(())
    }

    async fn leases(&self) -> Result<Vec<Lease>, ConsumerStoreError> {
        Ok(lock(&self.inner).leases.values().cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ports::{Cursor, Position};

    #[tokio::test]
    async fn register_is_idempotent_and_starts_at_the_start() {
        let s = MemoryConsumerStore::new();
        assert_eq!(s.load("a").await.unwrap(), None);
        s.register("a").await.unwrap();
        let cp = s.load("a").await.unwrap().unwrap();
        assert_eq!(cp, Checkpoint::registered());
        let (pos, state) = (Position::new("5"), serde_json::json!({"n": 1}));
        s.save("a", &Save::new(0, &pos, &Cursor::default(), &state, 10))
            .await
            .unwrap();
        s.register("a").await.unwrap();
        assert_eq!(s.load("a").await.unwrap().unwrap().version, 1);
        assert_eq!(s.list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_stale_version_conflicts_and_writes_nothing() {
        let s = MemoryConsumerStore::new();
        let cursor = Cursor::default();
        let (p1, s1) = (Position::new("1"), serde_json::json!(1));
        let v1 = s.save("a", &Save::new(0, &p1, &cursor, &s1, 1)).await;
        assert_eq!(v1, Ok(1));
        let (p9, s9) = (Position::new("9"), serde_json::json!(9));
        let err = s
            .save("a", &Save::new(0, &p9, &cursor, &s9, 2))
            .await
            .unwrap_err();
        assert_eq!(err, ConsumerStoreError::Conflict("a".into()));
        let cp = s.load("a").await.unwrap().unwrap();
        assert_eq!(
            (cp.position, cp.state, cp.version, cp.updated_at_ms),
            (p1, s1, 1, 1)
        );
        let (p2, s2) = (Position::new("2"), serde_json::json!(2));
        assert_eq!(
            s.save("a", &Save::new(1, &p2, &cursor, &s2, 3)).await,
            Ok(2)
        );
    }

    #[tokio::test]
    async fn a_released_lease_keeps_its_epoch_for_the_next_holder() {
        let s = MemoryConsumerStore::new();
        let a = s
            .acquire_lease("x", "a", 100, 1_000)
            .await
            .unwrap()
            .unwrap();
        s.release_lease(&a).await.unwrap();
        let b = s
            .acquire_lease("x", "b", 100, 1_001)
            .await
            .unwrap()
            .unwrap();
        assert_eq!((b.holder.as_str(), b.epoch), ("b", 2));
    }
}
