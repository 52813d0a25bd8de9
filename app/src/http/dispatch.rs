//! The ride-dispatch API: commands handled through the unit of work ([`crate::es::Unit`]).
//!
//! | route | what |
//! |---|---|
//! | `POST /dispatch/commands` | `{"type", "stream_id", "payload"}` handled by the Ride and Pilot actors |
//! | `GET /dispatch/streams/{id}` | a stream's messages, in order |
//!
//! Both routes need `Authorization` (the user's email, as `POST /rides`), and the POST needs
//! an `Idempotency-Key` (same rules as `POST /rides`). The command's message id is derived
//! from the user and the key (UUIDv5), and ids are unique in the event store, so a retried
//! command never appends twice: when the id is already stored the API replays the answer
//! from what that command stored (its correlation batch), with `Idempotent-Replayed: true`;
//! a retry with another type, stream or payload is a 409 (the reference's mismatch message).
//!
//! Statuses: 201 with `{"command", "messages"}` (every message the command stored: the
//! command, then its events and the commands its reactions sent, in global order, each with
//! its `global_seq`); 400 for an unknown type or an invalid field (named); 422 when an actor
//! refuses (`{"error": "<the actor's message>"}`); 409 on an optimistic-concurrency conflict
//! (another request appended to one of the streams first: retry reloads and decides again).

use std::sync::Arc;

use axum::Json;
use axum::Router;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use domain::es::dispatch::{self, COMMANDS};
use domain::es::{ActorError, Message, MessageError, Registry};
use domain::idempotency::messages;
use ports::{Clock, EventStore, EventStoreError, RideStore, StoredMessage};
use serde_json::{Value, json};
use uuid::Uuid;

use super::ApiError;
use super::handlers::{MAX_BODY_BYTES, authenticate, idempotency_key};
use crate::es::{Unit, UnitError};

/// The 404 message of an empty stream.
const STREAM_NOT_FOUND: &str = "Stream not found.";

/// What the dispatch handlers share.
#[derive(Clone)]
pub struct DispatchState {
    /// The Ride and Pilot actors over the event store.
    pub unit: Unit,
    /// The dispatch message types (clients may send the [`COMMANDS`] scope only).
    pub registry: Arc<Registry>,
    /// The canonical store, for authentication.
    pub store: Arc<dyn RideStore>,
    /// The time commands are created at.
    pub clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for DispatchState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DispatchState")
            .field("unit", &self.unit)
            .finish_non_exhaustive()
    }
}

impl DispatchState {
    /// The dispatch API over `events` (which must live in `store`'s database, so that its
    /// messages are staged in the same outbox), authenticating against `store`.
    ///
    /// # Panics
    /// Never in practice: the Ride and Pilot actors register without conflict (a unit test
    /// checks it).
    pub fn new(
        events: Arc<dyn EventStore>,
        store: Arc<dyn RideStore>,
        clock: Arc<dyn Clock>,
    ) -> Self {
        let unit = Unit::new(events)
            .with_actor(dispatch::Ride)
            .and_then(|u| u.with_actor(dispatch::Pilot))
            .unwrap_or_else(|e| panic!("the dispatch actors register: {e}"));
        Self {
            unit,
            registry: Arc::new(dispatch::registry()),
            store,
            clock,
        }
    }
}

/// The dispatch routes (no fallback: merge them into [`super::router`]'s router).
pub fn router(state: DispatchState) -> Router {
    Router::new()
        .route("/dispatch/commands", post(post_command))
        .route("/dispatch/streams/{id}", get(get_stream))
        .with_state(state)
}

/// The message id of a command sent by `user_id` under `key`.
pub fn command_id(user_id: i64, key: &str) -> Uuid {
    Uuid::new_v5(
        &Uuid::NAMESPACE_OID,
        format!("rocket-rides/dispatch/{user_id}/{key}").as_bytes(),
    )
}

fn envelope(stored: &StoredMessage) -> Value {
    let mut v = serde_json::to_value(&stored.message).unwrap_or(Value::Null);
    if let Value::Object(m) = &mut v {
        m.insert("global_seq".into(), json!(stored.global_seq));
    }
    v
}

/// The answer to a command: the command and everything else it stored.
fn answer(command_id: Uuid, stored: &[StoredMessage], replayed: bool) -> Response {
    let command = stored.iter().find(|s| s.message.id() == command_id);
    let others: Vec<Value> = stored
        .iter()
        .filter(|s| s.message.id() != command_id)
        .map(envelope)
        .collect();
    let mut resp = (
        StatusCode::CREATED,
        Json(json!({"command": command.map(envelope), "messages": others})),
    )
        .into_response();
    if replayed {
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    resp
}

/// The stored answer of a command id, if the command is stored: a replay, or a 409 when the
/// stored command differs from `command`.
async fn replay(events: &dyn EventStore, command: &Message) -> Result<Option<Response>, ApiError> {
    let batch = events
        .read_correlation_batch(command.id())
        .await
        .map_err(store_error)?;
    let Some(stored) = batch.iter().find(|s| s.message.id() == command.id()) else {
        return Ok(None);
    };
    let same = stored.message.kind() == command.kind()
        && stored.message.stream_id() == command.stream_id()
        && stored.message.payload() == command.payload();
    if !same {
        return Err(ApiError::Conflict(messages::PARAMS_MISMATCH.into()));
    }
    Ok(Some(answer(command.id(), &batch, true)))
}

fn store_error(e: EventStoreError) -> ApiError {
    match e {
        EventStoreError::Conflict { .. } => ApiError::Conflict(e.to_string()),
        EventStoreError::Unavailable(m) => ApiError::Unavailable(m),
        other => ApiError::Internal(other.to_string()),
    }
}

fn message_error(e: MessageError) -> ApiError {
    ApiError::BadRequest(e.to_string())
}

/// `POST /dispatch/commands`.
async fn post_command(
    State(state): State<DispatchState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await;
    let user = authenticate(state.store.as_ref(), &headers).await?;
    let key = idempotency_key(&headers)?;
    let bytes = bytes.map_err(|_| {
        ApiError::BadRequest(format!(
            "The request body could not be read (at most {MAX_BODY_BYTES} bytes are accepted)."
        ))
    })?;
    let input: Value = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::BadRequest(format!("The body is not valid JSON: {e}")))?;
    let now = state.clock.now_ms();
    let mut user_meta = serde_json::Map::new();
    user_meta.insert("user_id".into(), json!(user.id));
    let command = state
        .registry
        .build(COMMANDS, &input, now)
        .map_err(message_error)?
        .with_id(command_id(user.id, key.as_str()))
        .with_metadata(user_meta);
    let events = Arc::clone(state.unit.store());
    if let Some(resp) = replay(events.as_ref(), &command).await? {
        return Ok(resp);
    }
    // The unit runs to its end even if the client goes away (one commit, nothing to leave
    // half done, but the answer is then ready for a retry).
    let unit = state.unit.clone();
    let id = command.id();
    let handled = tokio::spawn(async move { unit.handle(command, now).await })
        .await
        .map_err(|e| ApiError::Internal(format!("the request's task failed: {e}")))?;
    match handled {
        Ok(outcome) => Ok(answer(id, &outcome.stored, false)),
        Err(UnitError::Actor(ActorError::Domain { message, .. })) => {
            Err(ApiError::Unprocessable(message))
        }
        Err(UnitError::Actor(e @ ActorError::Evolve(_))) => Err(ApiError::Internal(e.to_string())),
        Err(UnitError::Store(
            e @ (EventStoreError::DuplicateMessage(_) | EventStoreError::Conflict { .. }),
        )) => {
            // A concurrent retry with the same key may have committed first: then answer as
            // it did; otherwise another command won the race.
            let batch = events
                .read_correlation_batch(id)
                .await
                .map_err(store_error)?;
            if batch.iter().any(|s| s.message.id() == id) {
                Ok(answer(id, &batch, true))
            } else {
                Err(store_error(e))
            }
        }
        Err(UnitError::Store(e)) => Err(store_error(e)),
        Err(e @ UnitError::TooManyIterations(_)) => Err(ApiError::Internal(e.to_string())),
    }
}

/// `GET /dispatch/streams/{id}`.
async fn get_stream(
    State(state): State<DispatchState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    authenticate(state.store.as_ref(), &headers).await?;
    let raw = uri.path().rsplit('/').next().unwrap_or("");
    let stream_id = percent_decode(raw);
    let stored = state
        .unit
        .store()
        .read_stream(&stream_id, 0, None)
        .await
        .map_err(store_error)?;
    if stored.is_empty() {
        return Err(ApiError::not_found(STREAM_NOT_FOUND));
    }
    let messages: Vec<Value> = stored.iter().map(envelope).collect();
    Ok(Json(json!({"stream_id": stream_id, "messages": messages})).into_response())
}

/// Decodes `%XX` escapes of a path segment (invalid escapes are kept as they are).
fn percent_decode(raw: &str) -> String {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| char::from(b).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push(u8::try_from(h * 16 + l).unwrap_or(b'?'));
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn command_ids_are_per_user_and_key() {
        let a = command_id(1, "key-aaaaaaaaaaaaaaaaaaaa");
        assert_eq!(a, command_id(1, "key-aaaaaaaaaaaaaaaaaaaa"));
        assert_ne!(a, command_id(2, "key-aaaaaaaaaaaaaaaaaaaa"));
        assert_ne!(a, command_id(1, "key-bbbbbbbbbbbbbbbbbbbb"));
    }

    #[test]
    fn path_segments_are_percent_decoded() {
        assert_eq!(percent_decode("ride-1"), "ride-1");
        assert_eq!(percent_decode("ride%201"), "ride 1");
        assert_eq!(percent_decode("bad%2"), "bad%2");
        assert_eq!(percent_decode("bad%zz"), "bad%zz");
    }
}
