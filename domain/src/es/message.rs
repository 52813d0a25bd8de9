//! The message envelope: commands and events, with their causation and correlation.
//!
//! A [`Message`] is a command or an event. Its envelope carries an `id`, a non-empty
//! `stream_id`, a stable `type` string, its `seq` within the stream, its creation time, the
//! ids of the message that caused it and of the conversation it belongs to, a metadata map and
//! a JSON payload. Payloads are typed Rust values ([`MessageType`]) serialised as JSON;
//! [`Message::build`] and [`Message::decode`] convert between the two.
//!
//! Time is an input: this crate never reads a clock, so constructors take `created_at_ms`
//! (milliseconds since the Unix epoch) and followers ([`Message::follow`]) take the creation
//! time of the message that caused them.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use thiserror::Error;
use uuid::Uuid;

use crate::record::NewRecord;

/// The outbox stream every event-store message is staged on (the record's key is the
/// message's stream id, so partitioned logs keep per-stream order).
pub const ES_RECORD_STREAM: &str = "es";

/// A validation error that names the field at fault, e.g. `payload.pilot_id: missing field`.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("{field}: {message}")]
pub struct FieldError {
    /// The path of the field, e.g. `stream_id` or `payload.pilot_id`.
    pub field: String,
    /// What is wrong with it.
    pub message: String,
}

impl FieldError {
    /// An error about `field`.
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The same error with its field path under `prefix` (`pilot_id` → `payload.pilot_id`).
    pub fn under(self, prefix: &str) -> Self {
        let field = if self.field.is_empty() || self.field == "." {
            prefix.to_owned()
        } else {
            format!("{prefix}.{}", self.field)
        };
        Self { field, ..self }
    }
}

/// Errors of building, decoding and rescheduling messages.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum MessageError {
    /// A field of the envelope or of the payload is invalid (the error names it).
    #[error(transparent)]
    Invalid(#[from] FieldError),
    /// The type is not registered in the scope the message was built in.
    #[error("Unknown message type: {0}")]
    UnknownType(String),
    /// [`Message::decode`] asked for a payload type that is not the message's.
    #[error("message {id} has type {actual}, not {expected}")]
    WrongType {
        /// The message.
        id: Uuid,
        /// The type asked for.
        expected: String,
        /// The message's type.
        actual: String,
    },
    /// [`Message::at`] was given a time before the message's creation.
    #[error("Message {kind} can't be delayed to a date in the past")]
    PastDate {
        /// The message's type.
        kind: String,
    },
}

/// A typed payload with its stable type string.
///
/// ```
/// use domain::es::{MessageType, FieldError};
/// #[derive(serde::Serialize, serde::Deserialize)]
/// struct GoOnline { pilot_name: String }
/// impl MessageType for GoOnline {
///     const TYPE: &'static str = "pilot.go_online";
///     fn validate(&self) -> Result<(), FieldError> {
///         if self.pilot_name.is_empty() {
///             return Err(FieldError::new("pilot_name", "must not be empty"));
///         }
///         Ok(())
///     }
/// }
/// ```
pub trait MessageType: Serialize + DeserializeOwned {
    /// The stable type string, e.g. `ride.requested`; never reuse one for another shape.
    const TYPE: &'static str;

    /// Rules serde cannot express; the field named is relative to the payload.
    ///
    /// # Errors
    /// A [`FieldError`] naming the field at fault.
    fn validate(&self) -> Result<(), FieldError> {
        Ok(())
    }
}

/// The JSON of a typed payload.
///
/// # Panics
/// If `T`'s `Serialize` fails, which for derived impls only happens with non-string map keys:
/// a bug in the payload type, never a consequence of input.
pub fn payload_value<T: Serialize>(payload: &T) -> Value {
    match serde_json::to_value(payload) {
        Ok(v) => v,
        Err(e) => panic!("a message payload must serialise to JSON: {e}"),
    }
}

/// Decodes `value` as `T`, then runs `T::validate`; errors name the field under `prefix`.
///
/// # Errors
/// [`MessageError::Invalid`] naming the field, e.g. `payload.pilot_id: missing field`.
pub fn decode_payload<T: MessageType>(value: &Value, prefix: &str) -> Result<T, MessageError> {
    let typed: T = serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        // serde reports a missing field at its parent's path: move the name into the path.
        let (field, message) = match inner
            .strip_prefix("missing field `")
            .and_then(|rest| rest.split('`').next())
        {
            Some(name) if path == "." => (name.to_owned(), "missing field".to_owned()),
            Some(name) => (format!("{path}.{name}"), "missing field".to_owned()),
            None => (path, strip_position(&inner)),
        };
        FieldError::new(field, message).under(prefix)
    })?;
    typed.validate().map_err(|e| e.under(prefix))?;
    Ok(typed)
}

/// serde_json's `at line 1 column 9` suffix means nothing for a value.
fn strip_position(message: &str) -> String {
    message
        .split(" at line ")
        .next()
        .unwrap_or(message)
        .to_owned()
}

/// The fields of a [`Message`], public, for adapters that store and load them column by
/// column; [`Message::from_parts`] validates them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MessageParts {
    /// Unique id.
    pub id: Uuid,
    /// The stream the message belongs to (non-empty).
    pub stream_id: String,
    /// The stable type string.
    #[serde(rename = "type")]
    pub kind: String,
    /// Position in the stream, from 1.
    pub seq: u64,
    /// Creation time (ms since the Unix epoch); for a scheduled message, when it is due.
    pub created_at_ms: i64,
    /// The message that caused this one (its own id for an initial message).
    pub causation_id: Uuid,
    /// The conversation this message belongs to (its own id for an initial message).
    pub correlation_id: Uuid,
    /// Free-form metadata, inherited by followers.
    #[serde(default)]
    pub metadata: Map<String, Value>,
    /// The payload's JSON.
    #[serde(default = "empty_object")]
    pub payload: Value,
}

fn empty_object() -> Value {
    Value::Object(Map::new())
}

/// A command or an event. See the [module docs](self).
///
/// Serialised (and staged in the outbox) as
/// `{"id", "stream_id", "type", "seq", "created_at_ms", "causation_id", "correlation_id",
/// "metadata", "payload"}`; deserialising validates like [`Message::from_parts`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "MessageParts", into = "MessageParts")]
pub struct Message {
    id: Uuid,
    stream_id: String,
    kind: String,
    seq: u64,
    created_at_ms: i64,
    causation_id: Uuid,
    correlation_id: Uuid,
    metadata: Map<String, Value>,
    payload: Value,
}

fn check_stream_id(stream_id: &str) -> Result<(), FieldError> {
    if stream_id.trim().is_empty() {
        return Err(FieldError::new("stream_id", "must not be empty"));
    }
    Ok(())
}

impl TryFrom<MessageParts> for Message {
    type Error = MessageError;
    fn try_from(p: MessageParts) -> Result<Self, MessageError> {
        Self::from_parts(p)
    }
}

impl From<Message> for MessageParts {
    fn from(m: Message) -> Self {
        m.into_parts()
    }
}

impl Message {
    /// A new initial message (causation and correlation are its own id, seq 1, no metadata).
    ///
    /// # Errors
    /// [`MessageError::Invalid`] for an empty `stream_id` or `kind`.
    pub fn new(
        kind: impl Into<String>,
        stream_id: impl Into<String>,
        payload: Value,
        created_at_ms: i64,
    ) -> Result<Self, MessageError> {
        let id = Uuid::new_v4();
        Self::from_parts(MessageParts {
            id,
            stream_id: stream_id.into(),
            kind: kind.into(),
            seq: 1,
            created_at_ms,
            causation_id: id,
            correlation_id: id,
            metadata: Map::new(),
            payload,
        })
    }

    /// A new initial message with a typed payload, validated with [`MessageType::validate`].
    ///
    /// # Errors
    /// [`MessageError::Invalid`] for an empty `stream_id` or an invalid payload.
    pub fn build<T: MessageType>(
        stream_id: impl Into<String>,
        payload: &T,
        created_at_ms: i64,
    ) -> Result<Self, MessageError> {
        payload.validate().map_err(|e| e.under("payload"))?;
        Self::new(T::TYPE, stream_id, payload_value(payload), created_at_ms)
    }

    /// A message from stored fields.
    ///
    /// # Errors
    /// [`MessageError::Invalid`] for an empty `stream_id` or `type`.
    pub fn from_parts(p: MessageParts) -> Result<Self, MessageError> {
        check_stream_id(&p.stream_id)?;
        if p.kind.trim().is_empty() {
            return Err(FieldError::new("type", "must not be empty").into());
        }
        Ok(Self {
            id: p.id,
            stream_id: p.stream_id,
            kind: p.kind,
            seq: p.seq,
            created_at_ms: p.created_at_ms,
            causation_id: p.causation_id,
            correlation_id: p.correlation_id,
            metadata: p.metadata,
            payload: p.payload,
        })
    }

    /// The fields, e.g. to store them column by column.
    pub fn into_parts(self) -> MessageParts {
        MessageParts {
            id: self.id,
            stream_id: self.stream_id,
            kind: self.kind,
            seq: self.seq,
            created_at_ms: self.created_at_ms,
            causation_id: self.causation_id,
            correlation_id: self.correlation_id,
            metadata: self.metadata,
            payload: self.payload,
        }
    }

    /// Unique id.
    pub fn id(&self) -> Uuid {
        self.id
    }
    /// The stream this message belongs to.
    pub fn stream_id(&self) -> &str {
        &self.stream_id
    }
    /// The stable type string.
    pub fn kind(&self) -> &str {
        &self.kind
    }
    /// Position in the stream (from 1).
    pub fn seq(&self) -> u64 {
        self.seq
    }
    /// Creation time, ms since the Unix epoch.
    pub fn created_at_ms(&self) -> i64 {
        self.created_at_ms
    }
    /// The message that caused this one.
    pub fn causation_id(&self) -> Uuid {
        self.causation_id
    }
    /// The conversation this message belongs to.
    pub fn correlation_id(&self) -> Uuid {
        self.correlation_id
    }
    /// Free-form metadata.
    pub fn metadata(&self) -> &Map<String, Value> {
        &self.metadata
    }
    /// The payload's JSON.
    pub fn payload(&self) -> &Value {
        &self.payload
    }

    /// Whether the payload is a `T`.
    pub fn is<T: MessageType>(&self) -> bool {
        self.kind == T::TYPE
    }

    /// The typed payload.
    ///
    /// # Errors
    /// [`MessageError::WrongType`] when the message is not a `T`; [`MessageError::Invalid`]
    /// naming the payload field that does not decode or validate.
    pub fn decode<T: MessageType>(&self) -> Result<T, MessageError> {
        if self.kind != T::TYPE {
            return Err(MessageError::WrongType {
                id: self.id,
                expected: T::TYPE.to_owned(),
                actual: self.kind.clone(),
            });
        }
        decode_payload(&self.payload, "payload")
    }

    /// A message of type `kind` on the same stream, caused by this one: causation is this id,
    /// correlation and metadata are inherited, creation time is this message's, seq is this
    /// seq + 1 (see [`Message::follow_with_seq`]).
    pub fn follow_raw(&self, kind: impl Into<String>, payload: Value) -> Message {
        Message {
            id: Uuid::new_v4(),
            stream_id: self.stream_id.clone(),
            kind: kind.into(),
            seq: self.seq + 1,
            created_at_ms: self.created_at_ms,
            causation_id: self.id,
            correlation_id: self.correlation_id,
            metadata: self.metadata.clone(),
            payload,
        }
    }

    /// [`Message::follow_raw`] with a typed payload.
    ///
    /// # Panics
    /// See [`payload_value`].
    pub fn follow<T: MessageType>(&self, payload: &T) -> Message {
        self.follow_raw(T::TYPE, payload_value(payload))
    }

    /// [`Message::follow`] with an explicit seq.
    ///
    /// # Panics
    /// See [`payload_value`].
    pub fn follow_with_seq<T: MessageType>(&self, seq: u64, payload: &T) -> Message {
        self.follow(payload).with_seq(seq)
    }

    /// `other` as caused by this message: causation is this id, correlation this message's,
    /// metadata this message's merged with `other`'s (other's keys win).
    pub fn correlate(&self, other: Message) -> Message {
        let mut metadata = self.metadata.clone();
        metadata.extend(other.metadata);
        Message {
            causation_id: self.id,
            correlation_id: self.correlation_id,
            metadata,
            ..other
        }
    }

    /// The same message on another stream.
    ///
    /// # Errors
    /// [`MessageError::Invalid`] (`stream_id: must not be empty`).
    pub fn to(self, stream_id: impl Into<String>) -> Result<Message, MessageError> {
        let stream_id = stream_id.into();
        check_stream_id(&stream_id)?;
        Ok(Message { stream_id, ..self })
    }

    /// The same message, due at `time_ms` (a scheduled message).
    ///
    /// # Errors
    /// [`MessageError::PastDate`] (`Message <type> can't be delayed to a date in the past`)
    /// when `time_ms` is before the message's creation time.
    pub fn at(self, time_ms: i64) -> Result<Message, MessageError> {
        if time_ms < self.created_at_ms {
            return Err(MessageError::PastDate { kind: self.kind });
        }
        Ok(Message {
            created_at_ms: time_ms,
            ..self
        })
    }

    /// The same message with `metadata` merged into its own (the given keys win).
    pub fn with_metadata(mut self, metadata: Map<String, Value>) -> Message {
        self.metadata.extend(metadata);
        self
    }

    /// The same message at position `seq` of its stream.
    pub fn with_seq(self, seq: u64) -> Message {
        Message { seq, ..self }
    }

    /// The same message with another id; an initial message's causation and correlation
    /// (equal to its old id) follow it. Used to derive an id from an idempotency key.
    pub fn with_id(self, id: Uuid) -> Message {
        let old = self.id;
        Message {
            id,
            causation_id: if self.causation_id == old {
                id
            } else {
                self.causation_id
            },
            correlation_id: if self.correlation_id == old {
                id
            } else {
                self.correlation_id
            },
            ..self
        }
    }

    /// The outbox record that carries this message on every log: stream
    /// [`ES_RECORD_STREAM`], key the stream id, kind the message type, payload the whole
    /// envelope (as serialised), correlation and causation ids, recorded at creation time.
    pub fn to_record(&self) -> NewRecord {
        NewRecord {
            id: self.id,
            stream: ES_RECORD_STREAM.to_owned(),
            key: self.stream_id.clone(),
            kind: self.kind.clone(),
            payload: payload_value(&self.clone().into_parts()),
            correlation_id: Some(self.correlation_id),
            causation_id: Some(self.causation_id),
            recorded_at_ms: self.created_at_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct AddItem {
        name: String,
        qty: u32,
    }
    impl MessageType for AddItem {
        const TYPE: &'static str = "cart.add_item";
        fn validate(&self) -> Result<(), FieldError> {
            if self.qty == 0 {
                return Err(FieldError::new("qty", "must be positive"));
            }
            Ok(())
        }
    }

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct ItemAdded {
        name: String,
    }
    impl MessageType for ItemAdded {
        const TYPE: &'static str = "cart.item_added";
    }

    fn add() -> Message {
        Message::build(
            "cart-1",
            &AddItem {
                name: "tea".into(),
                qty: 2,
            },
            1_000,
        )
        .unwrap()
    }

    #[test]
    fn causation_and_correlation_default_to_the_own_id() {
        let m = add();
        assert_eq!(m.causation_id(), m.id());
        assert_eq!(m.correlation_id(), m.id());
        assert_eq!(m.kind(), "cart.add_item");
        assert_eq!(m.seq(), 1);
    }

    #[test]
    fn an_empty_stream_id_is_refused_naming_the_field() {
        let err = Message::new("x", " ", json!({}), 0).unwrap_err();
        assert_eq!(err.to_string(), "stream_id: must not be empty");
        let err = add().to("").unwrap_err();
        assert_eq!(err.to_string(), "stream_id: must not be empty");
    }

    #[test]
    fn build_validates_and_names_the_payload_field() {
        let err = Message::build(
            "c",
            &AddItem {
                name: "x".into(),
                qty: 0,
            },
            0,
        )
        .unwrap_err();
        assert_eq!(err.to_string(), "payload.qty: must be positive");
    }

    #[test]
    fn decode_round_trips_and_names_missing_and_mistyped_fields() {
        let m = add();
        assert_eq!(
            m.decode::<AddItem>().unwrap(),
            AddItem {
                name: "tea".into(),
                qty: 2
            }
        );
        assert!(matches!(
            m.decode::<ItemAdded>(),
            Err(MessageError::WrongType { .. })
        ));
        let missing = Message::new(AddItem::TYPE, "c", json!({"name": "x"}), 0).unwrap();
        assert_eq!(
            missing.decode::<AddItem>().unwrap_err().to_string(),
            "payload.qty: missing field"
        );
        let mistyped =
            Message::new(AddItem::TYPE, "c", json!({"name": "x", "qty": "two"}), 0).unwrap();
        let err = mistyped.decode::<AddItem>().unwrap_err().to_string();
        assert!(err.starts_with("payload.qty: invalid type"), "{err}");
    }

    #[test]
    fn follow_inherits_stream_correlation_and_metadata() {
        let mut meta = Map::new();
        meta.insert("user".into(), json!("u1"));
        let cmd = add().with_metadata(meta.clone());
        let evt = cmd.follow(&ItemAdded { name: "tea".into() });
        assert_eq!(evt.stream_id(), "cart-1");
        assert_eq!(evt.causation_id(), cmd.id());
        assert_eq!(evt.correlation_id(), cmd.correlation_id());
        assert_eq!(evt.metadata(), &meta);
        assert_eq!(evt.seq(), 2);
        assert_ne!(evt.id(), cmd.id());
        let evt = cmd.follow_with_seq(7, &ItemAdded { name: "tea".into() });
        assert_eq!(evt.seq(), 7);
        let second = evt.follow(&ItemAdded { name: "b".into() });
        assert_eq!(second.correlation_id(), cmd.id(), "correlation is kept");
        assert_eq!(second.causation_id(), evt.id());
    }

    #[test]
    fn correlate_merges_metadata_other_wins() {
        let mut a = Map::new();
        a.insert("k".into(), json!(1));
        a.insert("tid".into(), json!("a"));
        let src = add().with_metadata(a);
        let mut b = Map::new();
        b.insert("k".into(), json!(2));
        let other = Message::new("x.y", "s2", json!({}), 0)
            .unwrap()
            .with_metadata(b);
        let c = src.correlate(other);
        assert_eq!(c.causation_id(), src.id());
        assert_eq!(c.correlation_id(), src.correlation_id());
        assert_eq!(c.metadata()["k"], json!(2));
        assert_eq!(c.metadata()["tid"], json!("a"));
        assert_eq!(c.stream_id(), "s2");
    }

    #[test]
    fn at_refuses_the_past_with_a_clear_message() {
        let m = add();
        assert_eq!(m.clone().at(5_000).unwrap().created_at_ms(), 5_000);
        let err = m.at(999).unwrap_err();
        assert_eq!(
            err.to_string(),
            "Message cart.add_item can't be delayed to a date in the past"
        );
    }

    #[test]
    fn serde_round_trip_and_validation_on_deserialise() {
        let m = add();
        let json = serde_json::to_value(&m).unwrap();
        assert_eq!(json["type"], json!("cart.add_item"));
        let back: Message = serde_json::from_value(json.clone()).unwrap();
        assert_eq!(back, m);
        let mut bad = json;
        bad["stream_id"] = json!("");
        assert!(serde_json::from_value::<Message>(bad).is_err());
    }

    #[test]
    fn to_record_carries_the_envelope_keyed_by_stream() {
        let m = add();
        let r = m.to_record();
        assert_eq!(r.stream, ES_RECORD_STREAM);
        assert_eq!(r.key, "cart-1");
        assert_eq!(r.kind, "cart.add_item");
        assert_eq!(r.id, m.id());
        let back: Message = serde_json::from_value(r.payload).unwrap();
        assert_eq!(back, m);
    }

    #[test]
    fn with_id_moves_default_causation_and_correlation() {
        let m = add();
        let id = Uuid::new_v4();
        let m2 = m.with_id(id);
        assert_eq!(m2.causation_id(), id);
        assert_eq!(m2.correlation_id(), id);
    }
}
