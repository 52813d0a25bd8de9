//! `POST /dispatch/commands` and `GET /dispatch/streams/{id}` over the in-memory store and
//! its event store (issue 9 §6).

use std::sync::Arc;
use std::time::Duration;

use adapters::memory::MemoryStore;
use app::http::dispatch::{DispatchState, router};
use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use domain::idempotency::messages;
use http_body_util::BodyExt;
use ports::{
    Commit, EventStore, EventStoreError, EventStoreStats, ManualClock, Outbox, StoredMessage,
    StreamInfo,
};
use serde_json::{Value, json};
use tower::ServiceExt;
use uuid::Uuid;

const USER: &str = "user@example.com";
const OTHER_USER: &str = "user-bad-source@example.com";

/// The memory event store whose commits wait a little first, so that two requests sent
/// together both read their streams before either commits: a deterministic race.
struct SlowCommits {
    inner: Arc<dyn EventStore>,
}

#[async_trait]
impl EventStore for SlowCommits {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn ping(&self) -> Result<(), EventStoreError> {
        self.inner.ping().await
    }
    async fn commit(&self, commit: Commit) -> Result<Vec<StoredMessage>, EventStoreError> {
        tokio::time::sleep(Duration::from_millis(150)).await;
        self.inner.commit(commit).await
    }
    async fn read_stream(
        &self,
        stream_id: &str,
        after: u64,
        upto: Option<u64>,
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        self.inner.read_stream(stream_id, after, upto).await
    }
    async fn read_correlation_batch(
        &self,
        message_id: Uuid,
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        self.inner.read_correlation_batch(message_id).await
    }
    async fn read_all(
        &self,
        after_global: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        self.inner.read_all(after_global, max).await
    }
    async fn recent_streams(&self, limit: usize) -> Result<Vec<StreamInfo>, EventStoreError> {
        self.inner.recent_streams(limit).await
    }
    async fn stats(&self) -> Result<EventStoreStats, EventStoreError> {
        self.inner.stats().await
    }
    async fn document(&self, collection: &str, id: &str) -> Result<Option<Value>, EventStoreError> {
        self.inner.document(collection, id).await
    }
    async fn documents(&self, collection: &str) -> Result<Vec<(String, Value)>, EventStoreError> {
        self.inner.documents(collection).await
    }
}

struct Api {
    store: Arc<MemoryStore>,
    events: Arc<dyn EventStore>,
    router: Router,
}

fn api(slow: bool) -> Api {
    let store = Arc::new(MemoryStore::default());
    let memory: Arc<dyn EventStore> = Arc::new(store.event_store());
    let events: Arc<dyn EventStore> = if slow {
        Arc::new(SlowCommits {
            inner: Arc::clone(&memory),
        })
    } else {
        Arc::clone(&memory)
    };
    let state = DispatchState::new(
        events,
        store.clone(),
        Arc::new(ManualClock::new(1_700_000_000_000)),
    );
    Api {
        store,
        events: memory,
        router: router(state),
    }
}

struct Reply {
    status: StatusCode,
    replayed: bool,
    body: Value,
}

impl Reply {
    fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
    fn kinds(&self) -> Vec<String> {
        self.body["messages"]
            .as_array()
            .map(|a| {
                a.iter()
                    .map(|m| m["type"].as_str().unwrap_or_default().to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

async fn send(router: &Router, req: Request<Body>) -> Reply {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let replayed = resp.headers().get("idempotent-replayed").is_some();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("every answer is JSON ({e}): {bytes:?}"));
    Reply {
        status,
        replayed,
        body,
    }
}

fn post_as(user: Option<&str>, key: Option<&str>, body: &str) -> Request<Body> {
    let mut req =
        Request::post("/dispatch/commands").header(header::CONTENT_TYPE, "application/json");
    if let Some(user) = user {
        req = req.header(header::AUTHORIZATION, user);
    }
    if let Some(key) = key {
        req = req.header("idempotency-key", key);
    }
    req.body(Body::from(body.to_owned())).unwrap()
}

fn command(kind: &str, stream: &str, payload: Value) -> String {
    json!({"type": kind, "stream_id": stream, "payload": payload}).to_string()
}

fn new_key() -> String {
    Uuid::new_v4().to_string()
}

async fn post(api: &Api, kind: &str, stream: &str, payload: Value) -> Reply {
    send(
        &api.router,
        post_as(
            Some(USER),
            Some(&new_key()),
            &command(kind, stream, payload),
        ),
    )
    .await
}

async fn stream_kinds(api: &Api, stream: &str) -> Vec<String> {
    let req = Request::get(format!("/dispatch/streams/{stream}"))
        .header(header::AUTHORIZATION, USER)
        .body(Body::empty())
        .unwrap();
    let reply = send(&api.router, req).await;
    if reply.status == StatusCode::NOT_FOUND {
        return Vec::new();
    }
    assert_eq!(reply.status, StatusCode::OK, "{:?}", reply.body);
    assert_eq!(reply.body["stream_id"], json!(stream));
    reply.kinds()
}

fn request_payload() -> Value {
    json!({"rider_id": "u1", "pickup": "Market St", "dropoff": "Mission St"})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ride_goes_from_request_to_completion_and_one_of_two_racing_clients_gets_409() {
    let api = api(true);
    for pilot in ["pilot-7", "pilot-8"] {
        let r = post(&api, "pilot.go_online", pilot, json!({"name": pilot})).await;
        assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    }
    let r = post(&api, "ride.request", "ride-1", request_payload()).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(r.body["command"]["type"], json!("ride.request"));
    assert_eq!(r.body["command"]["seq"], json!(1));
    assert_eq!(r.kinds(), vec!["ride.requested"]);

    // Two dispatchers assign a pilot to the same ride at the same time.
    let a = {
        let router = api.router.clone();
        tokio::spawn(async move {
            send(
                &router,
                post_as(
                    Some(USER),
                    Some(&new_key()),
                    &command(
                        "ride.assign_pilot",
                        "ride-1",
                        json!({"pilot_id": "pilot-7"}),
                    ),
                ),
            )
            .await
        })
    };
    let b = {
        let router = api.router.clone();
        tokio::spawn(async move {
            send(
                &router,
                post_as(
                    Some(USER),
                    Some(&new_key()),
                    &command(
                        "ride.assign_pilot",
                        "ride-1",
                        json!({"pilot_id": "pilot-8"}),
                    ),
                ),
            )
            .await
        })
    };
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    let mut statuses = [a.status, b.status];
    statuses.sort();
    assert_eq!(
        statuses,
        [StatusCode::CREATED, StatusCode::CONFLICT],
        "one wins, the other conflicts: {:?} / {:?}",
        a.body,
        b.body
    );
    let (winner, loser, conflict) = if a.status == StatusCode::CREATED {
        ("pilot-7", "pilot-8", b)
    } else {
        ("pilot-8", "pilot-7", a)
    };
    assert!(
        conflict.error().contains("ride-1"),
        "the 409 names the stream: {}",
        conflict.error()
    );
    assert_eq!(
        stream_kinds(&api, winner).await,
        vec![
            "pilot.go_online",
            "pilot.went_online",
            "pilot.accept_ride",
            "pilot.ride_accepted"
        ]
    );
    assert_eq!(
        stream_kinds(&api, loser).await,
        vec!["pilot.go_online", "pilot.went_online"],
        "the losing assignment left nothing on the other pilot"
    );

    let r = post(&api, "ride.pick_up", "ride-1", json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    let r = post(&api, "ride.complete", "ride-1", json!({})).await;
    assert_eq!(r.status, StatusCode::CREATED, "{:?}", r.body);
    assert_eq!(
        r.kinds(),
        vec!["ride.completed", "pilot.finish_ride", "pilot.ride_finished"]
    );
    assert_eq!(
        stream_kinds(&api, "ride-1").await,
        vec![
            "ride.request",
            "ride.requested",
            "ride.assign_pilot",
            "ride.pilot_assigned",
            "ride.pick_up",
            "ride.picked_up",
            "ride.complete",
            "ride.completed"
        ]
    );
    let r = post(&api, "ride.cancel", "ride-1", json!({"reason": "late"})).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.error(),
        "ride ride-1 is completed and cannot be cancelled"
    );
    assert_eq!(
        api.events.document("pilots", winner).await.unwrap(),
        Some(json!({"online": true, "name": winner, "active_ride": null}))
    );
}

#[tokio::test]
async fn bad_commands_are_400_and_refusals_422_and_nothing_is_stored() {
    let api = api(false);
    let cases = [
        (
            command("ride.fly", "ride-1", json!({})),
            "Unknown message type: ride.fly",
        ),
        (
            command("pilot.accept_ride", "pilot-7", json!({"ride_id": "ride-1"})),
            "Unknown message type: pilot.accept_ride",
        ),
        (
            command("ride.assign_pilot", "ride-1", json!({})),
            "payload.pilot_id: missing field",
        ),
        (
            command("ride.assign_pilot", "", json!({"pilot_id": "p"})),
            "stream_id: must not be empty",
        ),
        (
            command(
                "ride.request",
                "ride-1",
                json!({"rider_id": "", "pickup": "a", "dropoff": "b"}),
            ),
            "payload.rider_id: must not be empty",
        ),
    ];
    for (body, want) in cases {
        let r = send(&api.router, post_as(Some(USER), Some(&new_key()), &body)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        assert_eq!(r.error(), want, "{body}");
    }
    let r = send(
        &api.router,
        post_as(Some(USER), Some(&new_key()), "{not json"),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().starts_with("The body is not valid JSON"));
    let r = send(&api.router, post_as(None, Some(&new_key()), "{}")).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = send(&api.router, post_as(Some(USER), None, "{}")).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error(), messages::KEY_REQUIRED);

    let r = post(
        &api,
        "ride.assign_pilot",
        "ride-9",
        json!({"pilot_id": "pilot-7"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error(), "ride ride-9 was not requested");
    assert_eq!(api.events.stats().await.unwrap().message_count, 0);
    assert_eq!(api.store.staged().await.unwrap(), 0);
    assert!(
        stream_kinds(&api, "ride-9").await.is_empty(),
        "404 for an empty stream"
    );
}

#[tokio::test]
async fn a_busy_pilot_is_a_422_and_the_ride_stays_unassigned() {
    let api = api(false);
    post(&api, "pilot.go_online", "pilot-7", json!({"name": "A"})).await;
    post(&api, "ride.request", "ride-1", request_payload()).await;
    post(&api, "ride.request", "ride-2", request_payload()).await;
    let r = post(
        &api,
        "ride.assign_pilot",
        "ride-1",
        json!({"pilot_id": "pilot-7"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::CREATED);
    let r = post(
        &api,
        "ride.assign_pilot",
        "ride-2",
        json!({"pilot_id": "pilot-7"}),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.error(),
        "pilot pilot-7 already has an active ride (ride-1)"
    );
    assert_eq!(
        stream_kinds(&api, "ride-2").await,
        vec!["ride.request", "ride.requested"]
    );
}

#[tokio::test]
async fn a_retried_command_never_appends_twice() {
    let api = api(false);
    let key = new_key();
    let body = command("ride.request", "ride-1", request_payload());
    let first = send(&api.router, post_as(Some(USER), Some(&key), &body)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert!(!first.replayed);
    let again = send(&api.router, post_as(Some(USER), Some(&key), &body)).await;
    assert_eq!(again.status, StatusCode::CREATED);
    assert!(again.replayed, "the retry is a replay");
    assert_eq!(again.body, first.body, "the same answer");
    assert_eq!(
        stream_kinds(&api, "ride-1").await,
        vec!["ride.request", "ride.requested"],
        "appended once"
    );
    let other = command("ride.request", "ride-2", request_payload());
    let mismatch = send(&api.router, post_as(Some(USER), Some(&key), &other)).await;
    assert_eq!(mismatch.status, StatusCode::CONFLICT);
    assert_eq!(mismatch.error(), messages::PARAMS_MISMATCH);
    // Keys are per user: another user's same key is another command (refused here).
    let r = send(&api.router, post_as(Some(OTHER_USER), Some(&key), &body)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error(), "ride ride-1 was already requested");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_retries_with_one_key_append_once() {
    let api = api(true);
    let key = new_key();
    let body = command("pilot.go_online", "pilot-7", json!({"name": "A"}));
    let send_one = || {
        let router = api.router.clone();
        let (key, body) = (key.clone(), body.clone());
        tokio::spawn(async move { send(&router, post_as(Some(USER), Some(&key), &body)).await })
    };
    let (a, b) = (send_one(), send_one());
    let (a, b) = (a.await.unwrap(), b.await.unwrap());
    assert_eq!(
        (a.status, b.status),
        (StatusCode::CREATED, StatusCode::CREATED),
        "{:?} {:?}",
        a.body,
        b.body
    );
    assert!(a.replayed != b.replayed, "exactly one of them is a replay");
    assert_eq!(a.body, b.body, "the same answer");
    assert_eq!(
        stream_kinds(&api, "pilot-7").await,
        vec!["pilot.go_online", "pilot.went_online"],
        "appended once"
    );
}
