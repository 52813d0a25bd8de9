//! Read-model writes as data: what an actor's `sync` hook (and, in part 2, a state-stored
//! projector) asks the event store to commit in the same transaction as the events.

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// One write to the event store's documents table (a small key-value read model per
/// backend), committed atomically with the appends it accompanies.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum SyncOp {
    /// Makes `doc` the document `id` of `collection` (insert or replace).
    Put {
        /// The collection (a table name in spirit), e.g. `rides`.
        collection: String,
        /// The document id within the collection, e.g. a stream id.
        id: String,
        /// The whole document.
        doc: Value,
    },
    /// Removes the document `id` of `collection`; a missing document is not an error.
    Delete {
        /// The collection.
        collection: String,
        /// The document id.
        id: String,
    },
}

impl SyncOp {
    /// A [`SyncOp::Put`].
    pub fn put(collection: impl Into<String>, id: impl Into<String>, doc: Value) -> Self {
        Self::Put {
            collection: collection.into(),
            id: id.into(),
            doc,
        }
    }

    /// A [`SyncOp::Delete`].
    pub fn delete(collection: impl Into<String>, id: impl Into<String>) -> Self {
        Self::Delete {
            collection: collection.into(),
            id: id.into(),
        }
    }
}
