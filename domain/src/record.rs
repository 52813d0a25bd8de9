//! The log record envelope.
//!
//! A record is *staged* ([`NewRecord`]) in the same transaction as the canonical data that it
//! describes. When the staging transaction commits, the store gives it a producer name and a
//! sequence number ([`LogRecord::producer`], [`LogRecord::seq`]), strictly increasing in
//! commit order. That sequence travels with the record through every log, so consumers can
//! recognise duplicates without looking at log offsets: it survives double sends, redelivery
//! and even a change of log backend.

use serde::{Deserialize, Serialize};
use thiserror::Error;
use uuid::Uuid;

/// Record kinds published by Rocket Rides.
pub mod kinds {
    /// A ride exists; payload `{ride_id, user_id, distance_mm}`.
    pub const RIDE_CREATED: &str = "ride.created";
    /// A ride was paid; payload `{ride_id, charge_id}`.
    pub const RIDE_CHARGED: &str = "ride.charged";
    /// A ride's payment was declined; payload `{ride_id, message}`.
    pub const RIDE_DECLINED: &str = "ride.declined";
    /// A ride was deleted (a user's right to erasure); payload `{ride_id, user_id,
    /// distance_mm}`, so that a fold can take it back out.
    pub const RIDE_DELETED: &str = "ride.deleted";
    /// A receipt must be sent (the reference's staged job `send_ride_receipt`).
    pub const RECEIPT_REQUESTED: &str = "receipt.requested";
    /// Control record: every record sequenced after this one is published on another log;
    /// payload `{"to": "<log url>"}`. See [`super::NewRecord::cutover`].
    pub const LOG_CUTOVER: &str = "log.cutover";
}

/// The stream every Rocket Rides record is published on.
pub const RIDES_STREAM: &str = "rides";

/// A record as staged in the outbox, before the store has sequenced it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewRecord {
    /// Unique id of this record.
    pub id: Uuid,
    /// Logical stream (topic) name.
    pub stream: String,
    /// Entity key, e.g. `ride:42`; logs that partition keep per-key order.
    pub key: String,
    /// Record kind, e.g. `ride.created`.
    pub kind: String,
    /// Kind-specific JSON payload.
    pub payload: serde_json::Value,
    /// The request or workflow this record belongs to.
    pub correlation_id: Option<Uuid>,
    /// The record or command that caused this one.
    pub causation_id: Option<Uuid>,
    /// When the staging transaction ran (ms since the Unix epoch).
    pub recorded_at_ms: i64,
}

impl NewRecord {
    /// The change record of a deleted ride, staged in the deleting transaction.
    pub fn ride_deleted(ride_id: i64, user_id: i64, distance_mm: u64, now_ms: i64) -> Self {
        Self {
            id: Uuid::new_v4(),
            stream: RIDES_STREAM.to_owned(),
            key: format!("ride:{ride_id}"),
            kind: kinds::RIDE_DELETED.to_owned(),
            payload: serde_json::json!({
                "ride_id": ride_id,
                "user_id": user_id,
                "distance_mm": distance_mm,
            }),
            correlation_id: None,
            causation_id: None,
            recorded_at_ms: now_ms,
        }
    }

    /// The control record that moves publishing to the log at `to_url`: the streamer appends
    /// it to the current log as that log's last record (a seal), and publishes every record
    /// sequenced after it on the new log; a consumer that reads it finishes the old log there
    /// and continues at the start of the new one.
    pub fn cutover(to_url: &str, now_ms: i64) -> Self {
        Self {
            id: Uuid::new_v4(),
            stream: RIDES_STREAM.to_owned(),
            key: "log".to_owned(),
            kind: kinds::LOG_CUTOVER.to_owned(),
            payload: serde_json::json!({ "to": to_url }),
            correlation_id: None,
            causation_id: None,
            recorded_at_ms: now_ms,
        }
    }

    /// Gives the record its producer and commit-ordered sequence number.
    pub fn sequenced(self, producer: impl Into<String>, seq: u64) -> LogRecord {
        LogRecord {
            id: self.id,
            producer: producer.into(),
            seq,
            stream: self.stream,
            key: self.key,
            kind: self.kind,
            payload: self.payload,
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            recorded_at_ms: self.recorded_at_ms,
        }
    }
}

/// A record that a log carries: a [`NewRecord`] plus its producer and sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LogRecord {
    /// Unique id of this record.
    pub id: Uuid,
    /// The producer (one canonical store) that sequenced the record.
    pub producer: String,
    /// Producer-side sequence: strictly increasing in commit order, never reused.
    pub seq: u64,
    /// Logical stream (topic) name.
    pub stream: String,
    /// Entity key.
    pub key: String,
    /// Record kind.
    pub kind: String,
    /// Kind-specific JSON payload.
    pub payload: serde_json::Value,
    /// The request or workflow this record belongs to.
    pub correlation_id: Option<Uuid>,
    /// The record or command that caused this one.
    pub causation_id: Option<Uuid>,
    /// When the staging transaction ran (ms since the Unix epoch).
    pub recorded_at_ms: i64,
}

/// A log payload that is not a valid record.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("invalid log record: {0}")]
pub struct RecordError(pub String);

impl LogRecord {
    /// Encodes the record as JSON bytes (the wire format of every log adapter).
    pub fn to_json(&self) -> Vec<u8> {
        serde_json::to_vec(self).unwrap_or_default()
    }

    /// Decodes a record from JSON bytes read from a log.
    ///
    /// # Errors
    /// Returns a [`RecordError`] naming the problem when the bytes are not a record.
    pub fn from_json(bytes: &[u8]) -> Result<Self, RecordError> {
        serde_json::from_slice(bytes).map_err(|e| RecordError(e.to_string()))
    }

    /// The target log URL when this is a [`kinds::LOG_CUTOVER`] record.
    pub fn cutover_target(&self) -> Option<&str> {
        (self.kind == kinds::LOG_CUTOVER)
            .then(|| self.payload.get("to")?.as_str())
            .flatten()
    }

    /// The record without its sequence, e.g. to stage it again.
    pub fn unsequenced(&self) -> NewRecord {
        NewRecord {
            id: self.id,
            stream: self.stream.clone(),
            key: self.key.clone(),
            kind: self.kind.clone(),
            payload: self.payload.clone(),
            correlation_id: self.correlation_id,
            causation_id: self.causation_id,
            recorded_at_ms: self.recorded_at_ms,
        }
    }
}

/// A record planned by the domain for a phase whose ride id the store assigns: the store calls
/// [`RecordDraft::build`] once it knows the id, inside the same transaction.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordDraft {
    /// Record kind.
    pub kind: String,
    /// Payload without `ride_id`; [`RecordDraft::build`] adds it.
    pub payload: serde_json::Map<String, serde_json::Value>,
    /// The request this record belongs to.
    pub correlation_id: Option<Uuid>,
}

impl RecordDraft {
    /// A draft from a ride event.
    pub fn from_event(event: &crate::RideEvent, correlation_id: Option<Uuid>) -> Self {
        let mut payload = match serde_json::to_value(event) {
            Ok(serde_json::Value::Object(m)) => m,
            _ => serde_json::Map::new(),
        };
        payload.remove("type");
        Self {
            kind: event.kind().to_owned(),
            payload,
            correlation_id,
        }
    }

    /// The staged record for the ride `ride_id`, recorded at `now_ms`.
    pub fn build(&self, ride_id: i64, now_ms: i64) -> NewRecord {
        let mut payload = self.payload.clone();
        payload.insert("ride_id".into(), ride_id.into());
        NewRecord {
            id: Uuid::new_v4(),
            stream: RIDES_STREAM.to_owned(),
            key: format!("ride:{ride_id}"),
            kind: self.kind.clone(),
            payload: serde_json::Value::Object(payload),
            correlation_id: self.correlation_id,
            causation_id: None,
            recorded_at_ms: now_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::RideEvent;

    #[test]
    fn drafts_carry_the_ride_id_and_kind() {
        let d = RecordDraft::from_event(
            &RideEvent::Requested {
                user_id: 7,
                distance_mm: 1234,
            },
            None,
        );
        let r = d.build(42, 1000).sequenced("rides", 9);
        assert_eq!(r.kind, "ride.created");
        assert_eq!(r.key, "ride:42");
        assert_eq!(
            r.payload,
            serde_json::json!({"ride_id": 42, "user_id": 7, "distance_mm": 1234})
        );
        assert_eq!((r.producer.as_str(), r.seq), ("rides", 9));
        assert_eq!(LogRecord::from_json(&r.to_json()).unwrap(), r);
    }

    #[test]
    fn cutover_records_name_their_target() {
        let r = NewRecord::cutover("kafka://b:9092/rides", 5).sequenced("p", 3);
        assert_eq!(r.cutover_target(), Some("kafka://b:9092/rides"));
        let other = RecordDraft::from_event(
            &RideEvent::Charged {
                charge_id: "c".into(),
            },
            None,
        );
        assert_eq!(other.build(1, 0).sequenced("p", 4).cutover_target(), None);
    }

    #[test]
    fn garbage_is_a_clear_error() {
        let e = LogRecord::from_json(b"{\"id\": 3}").unwrap_err();
        assert!(e.to_string().starts_with("invalid log record"), "{e}");
    }
}
