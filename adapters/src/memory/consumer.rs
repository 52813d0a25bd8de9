//! Consumers' states and positions, in memory.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;
use ports::{Checkpoint, ConsumerStore, ConsumerStoreError, Position};

use super::lock;

/// A [`ConsumerStore`] in memory. A save is one step under one lock, so state and position
/// always change together, and the version check (optimistic concurrency) makes two
/// processes with one consumer name unable to both win.
#[derive(Debug, Default)]
pub struct MemoryConsumerStore {
    consumers: Mutex<BTreeMap<String, Checkpoint>>,
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
        lock(&self.consumers)
            .entry(name.to_owned())
            .or_insert_with(|| Checkpoint {
                position: Position::start(),
                state: serde_json::Value::Null,
                version: 0,
                updated_at_ms: 0,
            });
        Ok(())
    }

    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, ConsumerStoreError> {
        Ok(lock(&self.consumers).get(name).cloned())
    }

    async fn save(
        &self,
        name: &str,
        expected_version: u64,
        position: &Position,
        state: &serde_json::Value,
        now_ms: i64,
    ) -> Result<u64, ConsumerStoreError> {
        let mut consumers = lock(&self.consumers);
        let current = consumers.get(name).map_or(0, |c| c.version);
        if current != expected_version {
            return Err(ConsumerStoreError::Conflict(name.to_owned()));
        }
        let version = current + 1;
        consumers.insert(
            name.to_owned(),
            Checkpoint {
                position: position.clone(),
                state: state.clone(),
                version,
                updated_at_ms: now_ms,
            },
        );
        Ok(version)
    }

    async fn list(&self) -> Result<Vec<(String, Checkpoint)>, ConsumerStoreError> {
        Ok(lock(&self.consumers)
            .iter()
            .map(|(n, c)| (n.clone(), c.clone()))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn register_is_idempotent_and_starts_at_the_start() {
        let s = MemoryConsumerStore::new();
        assert_eq!(s.load("a").await.unwrap(), None);
        s.register("a").await.unwrap();
        let cp = s.load("a").await.unwrap().unwrap();
        assert_eq!((cp.position.is_start(), cp.version), (true, 0));
        s.save(
            "a",
            0,
            &Position::new("5"),
            &serde_json::json!({"n": 1}),
            10,
        )
        .await
        .unwrap();
        s.register("a").await.unwrap();
        assert_eq!(s.load("a").await.unwrap().unwrap().version, 1);
        assert_eq!(s.list().await.unwrap().len(), 1);
    }

    #[tokio::test]
    async fn a_stale_version_conflicts_and_writes_nothing() {
        let s = MemoryConsumerStore::new();
        let v1 = s
            .save("a", 0, &Position::new("1"), &serde_json::json!(1), 1)
            .await
            .unwrap();
        assert_eq!(v1, 1);
        let err = s
            .save("a", 0, &Position::new("9"), &serde_json::json!(9), 2)
            .await
            .unwrap_err();
        assert_eq!(err, ConsumerStoreError::Conflict("a".into()));
        let cp = s.load("a").await.unwrap().unwrap();
        assert_eq!(
            (cp.position, cp.state, cp.version, cp.updated_at_ms),
            (Position::new("1"), serde_json::json!(1), 1, 1)
        );
        assert_eq!(
            s.save("a", 1, &Position::new("2"), &serde_json::json!(2), 3)
                .await
                .unwrap(),
            2
        );
    }
}
