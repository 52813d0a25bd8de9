//! A consumer's state and log position, saved together.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::ConsumerStoreError;
use crate::log::Position;

/// A consumer's saved state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Checkpoint {
    /// Where its next read starts.
    pub position: Position,
    /// Its folded result (JSON; the distance consumer stores a `domain::DistanceState`).
    pub state: serde_json::Value,
    /// Increments with every save; 0 for a registered consumer that never saved.
    pub version: u64,
    /// When it was last saved (ms), 0 if never.
    pub updated_at_ms: i64,
}

/// Stores consumers' results with their positions, atomically.
///
/// # Contract (checked by `contract::consumer`)
/// - `save` writes state and position in ONE transaction: after a crash either both are the
///   new ones or both are the old ones.
/// - `save` MUST fail with [`ConsumerStoreError::Conflict`] when the stored version is not
///   `expected_version`, and then change nothing (two processes with one name never both win).
/// - `register` creates the consumer at [`Position::start`] (version 0) if it does not exist
///   and leaves an existing one unchanged. Registered consumers hold back log trimming.
#[cfg_attr(feature = "test-util", mockall::automock)]
#[async_trait]
pub trait ConsumerStore: Send + Sync + 'static {
    /// Registers a consumer so that trimming waits for it.
    ///
    /// # Errors
    /// [`ConsumerStoreError::Unavailable`] when the store cannot be reached.
    async fn register(&self, name: &str) -> Result<(), ConsumerStoreError>;

    /// Loads a consumer, or `None` if it was never registered nor saved.
    ///
    /// # Errors
    /// [`ConsumerStoreError::Unavailable`] when the store cannot be reached.
    async fn load(&self, name: &str) -> Result<Option<Checkpoint>, ConsumerStoreError>;

    /// Saves state and position if the stored version is `expected_version` (0 when the
    /// consumer is new or only registered); returns the new version.
    ///
    /// # Errors
    /// [`ConsumerStoreError::Conflict`] on a version mismatch (nothing written).
    async fn save(
        &self,
        name: &str,
        expected_version: u64,
        position: &Position,
        state: &serde_json::Value,
        now_ms: i64,
    ) -> Result<u64, ConsumerStoreError>;

    /// Every registered consumer, by name.
    ///
    /// # Errors
    /// [`ConsumerStoreError::Unavailable`] when the store cannot be reached.
    async fn list(&self) -> Result<Vec<(String, Checkpoint)>, ConsumerStoreError>;
}

const _: fn(&dyn ConsumerStore) = |_| {};
