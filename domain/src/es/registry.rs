//! Building messages from untrusted JSON, one scope at a time.
//!
//! A [`Registry`] knows message types ([`MessageType`]) by their type string, each in one or
//! more scopes (for example `"dispatch.commands"`). [`Registry::build`] turns a client's
//! `{"type", "stream_id", "payload", "metadata"?, "id"?}` into a validated [`Message`],
//! accepting only the types of the given scope: a client of the dispatch API cannot submit an
//! event, or a command of another context.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::{Map, Value};
use uuid::Uuid;

use super::message::{
    FieldError, Message, MessageError, MessageType, decode_payload, payload_value,
};

/// Decodes, validates and re-encodes a payload as its canonical JSON.
type Normalise = fn(&Value) -> Result<Value, MessageError>;

fn normalise<T: MessageType>(payload: &Value) -> Result<Value, MessageError> {
    let typed: T = decode_payload(payload, "payload")?;
    Ok(payload_value(&typed))
}

#[derive(Debug, Clone)]
struct Entry {
    scopes: BTreeSet<&'static str>,
    normalise: Normalise,
}

/// Message types by type string, each in one or more scopes. See the [module docs](self).
#[derive(Debug, Clone, Default)]
pub struct Registry {
    entries: BTreeMap<&'static str, Entry>,
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `T` in `scope` (registering it again adds a scope).
    pub fn register<T: MessageType>(&mut self, scope: &'static str) -> &mut Self {
        self.entries
            .entry(T::TYPE)
            .or_insert_with(|| Entry {
                scopes: BTreeSet::new(),
                normalise: normalise::<T>,
            })
            .scopes
            .insert(scope);
        self
    }

    /// [`Registry::register`], by value.
    #[must_use]
    pub fn with<T: MessageType>(mut self, scope: &'static str) -> Self {
        self.register::<T>(scope);
        self
    }

    /// Whether `kind` is registered in `scope`.
    pub fn contains(&self, scope: &str, kind: &str) -> bool {
        self.entries
            .get(kind)
            .is_some_and(|e| e.scopes.contains(scope))
    }

    /// The type strings of `scope`, sorted.
    pub fn types(&self, scope: &str) -> Vec<&'static str> {
        self.entries
            .iter()
            .filter(|(_, e)| e.scopes.contains(scope))
            .map(|(k, _)| *k)
            .collect()
    }

    /// Builds a message of `scope` from untrusted JSON
    /// `{"type", "stream_id", "payload"?, "metadata"?, "id"?}` created at `now_ms`. The
    /// payload is decoded as its registered type, validated, and stored in its canonical form
    /// (unknown payload fields are dropped unless the type refuses them). Other fields of the
    /// input (`seq`, `created_at_ms`, ids of causes) are ignored: the server decides them.
    ///
    /// # Errors
    /// - [`MessageError::UnknownType`] ("Unknown message type: <type>") for a type that is
    ///   not registered in `scope`;
    /// - [`MessageError::Invalid`] naming the field: `type`, `stream_id`, `id`, `metadata`,
    ///   or `payload.<field>`.
    pub fn build(&self, scope: &str, input: &Value, now_ms: i64) -> Result<Message, MessageError> {
        let Some(obj) = input.as_object() else {
            return Err(FieldError::new("message", "must be a JSON object").into());
        };
        let kind = match obj.get("type") {
            None | Some(Value::Null) => return Err(FieldError::new("type", "missing field").into()),
            Some(Value::String(s)) => s.as_str(),
            Some(_) => return Err(FieldError::new("type", "must be a string").into()),
        };
        let entry = self
            .entries
            .get(kind)
            .filter(|e| e.scopes.contains(scope))
            .ok_or_else(|| MessageError::UnknownType(kind.to_owned()))?;
        let stream_id = match obj.get("stream_id") {
            None | Some(Value::Null) => {
                return Err(FieldError::new("stream_id", "missing field").into());
            }
            Some(Value::String(s)) => s.clone(),
            Some(_) => return Err(FieldError::new("stream_id", "must be a string").into()),
        };
        let payload = match obj.get("payload") {
            None | Some(Value::Null) => Value::Object(Map::new()),
            Some(p @ Value::Object(_)) => p.clone(),
            Some(_) => return Err(FieldError::new("payload", "must be a JSON object").into()),
        };
        let metadata = match obj.get("metadata") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(m)) => m.clone(),
            Some(_) => return Err(FieldError::new("metadata", "must be a JSON object").into()),
        };
        let id = match obj.get("id") {
            None | Some(Value::Null) => None,
            Some(Value::String(s)) => {
                Some(Uuid::parse_str(s).map_err(|_| FieldError::new("id", "must be a UUID"))?)
            }
            Some(_) => return Err(FieldError::new("id", "must be a UUID string").into()),
        };
        let payload = (entry.normalise)(&payload)?;
        let message = Message::new(kind, stream_id, payload, now_ms)?.with_metadata(metadata);
        Ok(match id {
            Some(id) => message.with_id(id),
            None => message,
        })
    }

    /// Checks a message built elsewhere against the registry: its type is registered in some
    /// scope and its payload decodes and validates.
    ///
    /// # Errors
    /// As [`Registry::build`].
    pub fn check(&self, message: &Message) -> Result<(), MessageError> {
        let entry = self
            .entries
            .get(message.kind())
            .ok_or_else(|| MessageError::UnknownType(message.kind().to_owned()))?;
        (entry.normalise)(message.payload()).map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::{Deserialize, Serialize};
    use serde_json::json;

    #[derive(Serialize, Deserialize)]
    struct Assign {
        pilot_id: String,
    }
    impl MessageType for Assign {
        const TYPE: &'static str = "ride.assign_pilot";
        fn validate(&self) -> Result<(), FieldError> {
            if self.pilot_id.is_empty() {
                return Err(FieldError::new("pilot_id", "must not be empty"));
            }
            Ok(())
        }
    }
    #[derive(Serialize, Deserialize)]
    struct Assigned {
        pilot_id: String,
    }
    impl MessageType for Assigned {
        const TYPE: &'static str = "ride.pilot_assigned";
    }

    fn registry() -> Registry {
        Registry::new()
            .with::<Assign>("commands")
            .with::<Assigned>("events")
    }

    #[test]
    fn builds_a_message_of_the_scope() {
        let m = registry()
            .build(
                "commands",
                &json!({"type": "ride.assign_pilot", "stream_id": "ride-1",
                        "payload": {"pilot_id": "pilot-7", "extra": 1}, "metadata": {"user": "u"}}),
                42,
            )
            .unwrap();
        assert_eq!(m.kind(), "ride.assign_pilot");
        assert_eq!(m.stream_id(), "ride-1");
        assert_eq!(
            m.payload(),
            &json!({"pilot_id": "pilot-7"}),
            "canonical payload"
        );
        assert_eq!(m.metadata()["user"], json!("u"));
        assert_eq!(m.created_at_ms(), 42);
    }

    #[test]
    fn unknown_and_out_of_scope_types_are_clear_errors() {
        let r = registry();
        let err = r
            .build("commands", &json!({"type": "x.y", "stream_id": "s"}), 0)
            .unwrap_err();
        assert_eq!(err.to_string(), "Unknown message type: x.y");
        let err = r
            .build(
                "commands",
                &json!({"type": "ride.pilot_assigned", "stream_id": "s", "payload": {"pilot_id": "p"}}),
                0,
            )
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "Unknown message type: ride.pilot_assigned",
            "an event is not a command"
        );
        assert_eq!(r.types("commands"), vec!["ride.assign_pilot"]);
    }

    #[test]
    fn validation_errors_name_the_field() {
        let r = registry();
        let cases = [
            (json!({"stream_id": "s"}), "type: missing field"),
            (
                json!({"type": 3, "stream_id": "s"}),
                "type: must be a string",
            ),
            (
                json!({"type": "ride.assign_pilot", "payload": {"pilot_id": "p"}}),
                "stream_id: missing field",
            ),
            (
                json!({"type": "ride.assign_pilot", "stream_id": "", "payload": {"pilot_id": "p"}}),
                "stream_id: must not be empty",
            ),
            (
                json!({"type": "ride.assign_pilot", "stream_id": "s"}),
                "payload.pilot_id: missing field",
            ),
            (
                json!({"type": "ride.assign_pilot", "stream_id": "s", "payload": {"pilot_id": ""}}),
                "payload.pilot_id: must not be empty",
            ),
            (
                json!({"type": "ride.assign_pilot", "stream_id": "s", "payload": []}),
                "payload: must be a JSON object",
            ),
            (
                json!({"type": "ride.assign_pilot", "stream_id": "s", "payload": {"pilot_id": "p"}, "id": "nope"}),
                "id: must be a UUID",
            ),
            (json!([1]), "message: must be a JSON object"),
        ];
        for (input, want) in cases {
            let err = r.build("commands", &input, 0).unwrap_err();
            assert_eq!(err.to_string(), want, "for {input}");
        }
        let err = r
            .build(
                "commands",
                &json!({"type": "ride.assign_pilot", "stream_id": "s", "payload": {"pilot_id": 7}}),
                0,
            )
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("payload.pilot_id: invalid type"), "{err}");
    }

    #[test]
    fn a_client_id_is_kept_with_its_causation_and_correlation() {
        let id = Uuid::new_v4();
        let m = registry()
            .build(
                "commands",
                &json!({"type": "ride.assign_pilot", "stream_id": "s",
                        "payload": {"pilot_id": "p"}, "id": id.to_string()}),
                0,
            )
            .unwrap();
        assert_eq!((m.id(), m.causation_id(), m.correlation_id()), (id, id, id));
        assert!(registry().check(&m).is_ok());
    }
}
