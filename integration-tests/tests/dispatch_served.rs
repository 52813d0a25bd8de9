//! Ride dispatch as `rides serve` serves it: the fleet's API mounts `POST /dispatch/commands`
//! and `GET /dispatch/streams/{id}` over the store's own event store (SQLite and Postgres),
//! and the streamer carries the appended messages to the log like any staged record.

mod harness;

use std::time::Duration;

use app::services::{Fleet, FleetConfig, Intervals};
use app::wiring::{self, OpenedLog, Stores};
use harness::FreshDb;
use serde_json::{Value, json};

const USER: &str = "user@example.com";

async fn post(
    client: &reqwest::Client,
    base: &str,
    kind: &str,
    stream: &str,
    payload: Value,
) -> (u16, Value) {
    let resp = client
        .post(format!("{base}/dispatch/commands"))
        .header("Authorization", USER)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .header("Content-Type", "application/json")
        .body(json!({"type": kind, "stream_id": stream, "payload": payload}).to_string())
        .send()
        .await
        .expect("the API answers");
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

/// Drives one ride from request to completion through the served API and checks the stream
/// and the log.
async fn dispatch_end_to_end(stores: &Stores, log: &OpenedLog) {
    let config = FleetConfig {
        listen: Some(([127, 0, 0, 1], 0).into()),
        streamer: true,
        intervals: Intervals::demo(),
        es_workers: 1,
        ..FleetConfig::nothing()
    };
    let fleet = Fleet::start(stores, log, config)
        .await
        .expect("the fleet starts");
    let base = format!("http://{}", fleet.addr().expect("the API listens"));
    let client = reqwest::Client::new();

    let (status, body) = post(
        &client,
        &base,
        "pilot.go_online",
        "pilot-1",
        json!({"name": "Ada"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post(
        &client,
        &base,
        "ride.request",
        "ride-1",
        json!({"rider_id": "u1", "pickup": "Market St", "dropoff": "Mission St"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = post(
        &client,
        &base,
        "ride.assign_pilot",
        "ride-1",
        json!({"pilot_id": "pilot-1"}),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    // The invariant is the domain's: a second assignment is a 422.
    let (status, body) = post(
        &client,
        &base,
        "ride.assign_pilot",
        "ride-1",
        json!({"pilot_id": "pilot-1"}),
    )
    .await;
    assert_eq!(status, 422, "{body}");
    // An unknown type is a 400 that names it.
    let (status, body) = post(&client, &base, "ride.teleport", "ride-1", json!({})).await;
    assert_eq!(status, 400, "{body}");

    let stream: Value = client
        .get(format!("{base}/dispatch/streams/ride-1"))
        .header("Authorization", USER)
        .send()
        .await
        .expect("the API answers")
        .json()
        .await
        .expect("JSON");
    let kinds: Vec<&str> = stream["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .filter_map(|m| m["type"].as_str())
        .collect();
    assert!(kinds.contains(&"ride.requested"), "{kinds:?}");
    assert!(kinds.contains(&"ride.pilot_assigned"), "{kinds:?}");

    // The fleet's event-sourcing workers keep the dispatch board (woken by the commits).
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let board = stores
            .reactors
            .document("dispatch_board", "ride-1")
            .await
            .expect("document");
        if board.as_ref().is_some_and(|b| b["status"] == "assigned") {
            assert_eq!(board.map(|b| b["pilot_id"].clone()), Some(json!("pilot-1")));
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dispatch board did not follow: {board:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let groups = stores.reactors.groups().await.expect("groups");
    assert!(
        groups
            .iter()
            .any(|g| g.group_id == "dispatch-board" && g.failing.is_empty()),
        "{groups:?}"
    );

    // Every stored message was staged with it, and the streamer moved it to the log.
    let stored = stores.events.stats().await.expect("stats").message_count;
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    loop {
        let in_log = log.log.len().await.expect("len");
        if in_log >= stored {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{in_log} of {stored} messages reached the log"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    fleet.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dispatches_rides_on_a_sqlite_store() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = wiring::open_store(&format!("sqlite://{}/store.db", dir.path().display()))
        .await
        .expect("store");
    let log = wiring::open_log(&format!("sled://{}/log", dir.path().display()), &stores)
        .await
        .expect("log");
    dispatch_end_to_end(&stores, &log).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serve_dispatches_rides_on_a_postgres_store() {
    let db = FreshDb::create().await;
    let stores = wiring::open_store(&db.url).await.expect("store");
    let dir = tempfile::tempdir().expect("tempdir");
    let log = wiring::open_log(&format!("sled://{}/log", dir.path().display()), &stores)
        .await
        .expect("log");
    dispatch_end_to_end(&stores, &log).await;
    drop(stores);
    db.drop_now().await;
}
