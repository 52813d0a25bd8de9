//! The HTTP surface over real in-memory adapters: the reference's rocket-rides-log API cases
//! (seed-behaviour 1.7, adapted to our parameters), JSON bodies, JSON errors on every route,
//! reading rides back, health, stats, and serving on a real socket.

mod http_common;

use std::net::SocketAddr;
use std::sync::Arc;

use adapters::payment::FakeProcessor;
use app::faults::Faults;
use app::http::{AppState, StatsProvider, serve};
use app::rides::{RideService, RideServiceConfig};
use async_trait::async_trait;
use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{Request, StatusCode, header};
use domain::idempotency::messages;
use http_common::*;
use ports::{ManualClock, Outbox, RideStore};
use serde_json::{Value, json};

fn post_json(key: &str, body: &str) -> Request<Body> {
    Request::post("/rides")
        .header(header::AUTHORIZATION, USER)
        .header("Idempotency-Key", key)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_owned()))
        .unwrap()
}

// ---- reference 1.7 -----------------------------------------------------------------------

#[tokio::test]
async fn succeeds_and_creates_a_ride_and_log_record() {
    let h = Harness::new();
    let r = send(&h.router, post_valid(&new_key())).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.message(), messages::CREATED);
    assert_eq!(h.rides().await, 1);
    let staged = h.store.peek(100).await.unwrap();
    let created: Vec<_> = staged.iter().filter(|r| r.kind == "ride.created").collect();
    assert_eq!(created.len(), 1, "one staged ride.created record");
    let ride = h.store.rides_for_user(1, None, 10).await.unwrap();
    assert_eq!(created[0].payload["ride_id"], json!(ride[0].id));
    assert_eq!(
        created[0].payload["distance_mm"],
        json!(ride[0].distance_mm)
    );
}

#[tokio::test]
async fn denies_requests_that_are_missing_parameters() {
    let h = Harness::new();
    let r = send(&h.router, post_rides(Some(USER), Some(&new_key()), "")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error(), "Please specify parameter 'origin_lat'.");
    assert_eq!(h.rides().await, 0);
    assert_eq!(h.store.staged().await.unwrap(), 0);
}

#[tokio::test]
async fn underscores_are_accepted_only_between_digits_as_by_ruby_float() {
    let h = Harness::new();
    let ok = "origin_lat=4_5&origin_lon=0&target_lat=0&target_lon=0";
    let r = send(&h.router, post_rides(Some(USER), Some(&new_key()), ok)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    for bad in ["_4_5_", "4__5", "4_", "1_e_1"] {
        let form = format!("origin_lat={bad}&origin_lon=0&target_lat=0&target_lon=0");
        let r = send(&h.router, post_rides(Some(USER), Some(&new_key()), &form)).await;
        assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY, "{bad}");
        assert_eq!(
            r.error(),
            "Parameter 'origin_lat' must be a floating-point number.",
            "{bad}"
        );
    }
    assert_eq!(h.rides().await, 1, "refused requests write nothing");
}

#[tokio::test]
async fn denies_requests_that_are_the_wrong_type() {
    let h = Harness::new();
    let form = "origin_lat=foo&origin_lon=0&target_lat=0&target_lon=0";
    let r = send(&h.router, post_rides(Some(USER), Some(&new_key()), form)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.error(),
        "Parameter 'origin_lat' must be a floating-point number."
    );
    assert_eq!(h.rides().await, 0);
}

#[tokio::test]
async fn out_of_range_coordinates_are_422() {
    let h = Harness::new();
    let form = "origin_lat=0&origin_lon=181&target_lat=0&target_lon=0";
    let r = send(&h.router, post_rides(Some(USER), Some(&new_key()), form)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.error(),
        "Parameter 'origin_lon' must be a valid longitude coordinate."
    );
}

// ---- bodies ------------------------------------------------------------------------------

#[tokio::test]
async fn a_json_body_with_numbers_and_strings_is_accepted() {
    let h = Harness::new();
    let key = new_key();
    let body = r#"{"origin_lat": 0.0, "origin_lon": "0", "target_lat": 1, "target_lon": 0}"#;
    let r = send(&h.router, post_json(&key, body)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    let rides = h.store.rides_for_user(1, None, 10).await.unwrap();
    assert_eq!(rides[0].params.target_lat(), 1.0);
    // The same request form-encoded matches the stored parameters: a replay.
    let form = "origin_lat=0&origin_lon=0&target_lat=1.0&target_lon=0";
    let again = send(&h.router, post_rides(Some(USER), Some(&key), form)).await;
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
}

#[tokio::test]
async fn a_json_body_is_validated_like_a_form() {
    let h = Harness::new();
    let r = send(&h.router, post_json(&new_key(), r#"{"origin_lat": "foo"}"#)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(
        r.error(),
        "Parameter 'origin_lat' must be a floating-point number."
    );
    let r = send(&h.router, post_json(&new_key(), r#"{"origin_lat": [1]}"#)).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    let r = send(&h.router, post_json(&new_key(), "{}")).await;
    assert_eq!(r.error(), "Please specify parameter 'origin_lat'.");
}

#[tokio::test]
async fn a_garbage_body_is_400_and_changes_nothing() {
    let h = Harness::new();
    let key = new_key();
    for garbage in ["{not json", "[1, 2]", "\"text\"", "\u{0}\u{1}\u{2}"] {
        let r = send(&h.router, post_json(&key, garbage)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{garbage:?}");
        assert!(!r.error().is_empty());
    }
    let bytes = Request::post("/rides")
        .header(header::AUTHORIZATION, USER)
        .header("Idempotency-Key", &key)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(vec![0xff, 0xfe, 0x00]))
        .unwrap();
    assert_eq!(send(&h.router, bytes).await.status, StatusCode::BAD_REQUEST);
    assert!(h.key(&key).await.is_none());
    assert_eq!(h.rides().await, 0);
}

#[tokio::test]
async fn an_unsupported_content_type_is_415() {
    let h = Harness::new();
    let req = Request::post("/rides")
        .header(header::AUTHORIZATION, USER)
        .header("Idempotency-Key", new_key())
        .header(header::CONTENT_TYPE, "text/plain")
        .body(Body::from(VALID_FORM))
        .unwrap();
    let r = send(&h.router, req).await;
    assert_eq!(r.status, StatusCode::UNSUPPORTED_MEDIA_TYPE);
    assert!(r.error().contains("application/json"));
}

#[tokio::test]
async fn a_body_over_the_limit_is_400() {
    let h = Harness::new();
    let big = format!("{VALID_FORM}&pad={}", "x".repeat(100 * 1024));
    let r = send(&h.router, post_rides(Some(USER), Some(&new_key()), &big)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(h.rides().await, 0);
}

// ---- JSON everywhere ---------------------------------------------------------------------

#[tokio::test]
async fn unknown_routes_and_wrong_methods_answer_json() {
    let h = Harness::new();
    let r = send(&h.router, get("/nope", None)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(!r.error().is_empty());
    let del = Request::delete("/rides").body(Body::empty()).unwrap();
    let r = send(&h.router, del).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(!r.error().is_empty());
    let put = Request::put("/healthz").body(Body::empty()).unwrap();
    assert_eq!(
        send(&h.router, put).await.status,
        StatusCode::METHOD_NOT_ALLOWED
    );
}

// ---- reading rides -----------------------------------------------------------------------

async fn create_rides(h: &Harness, auth: &str, n: usize) {
    for i in 0..n {
        let form = format!(
            "origin_lat=0&origin_lon=0&target_lat={}&target_lon=0",
            i + 1
        );
        let r = send(&h.router, post_rides(Some(auth), Some(&new_key()), &form)).await;
        assert!(r.status.is_success() || r.status == StatusCode::PAYMENT_REQUIRED);
    }
}

fn ids(v: &Value) -> Vec<i64> {
    v["rides"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn get_rides_pages_newest_first() {
    let h = Harness::new();
    create_rides(&h, USER, 5).await;
    create_rides(&h, BAD_SOURCE_USER, 1).await;

    let r = send(&h.router, get("/rides?limit=2", Some(USER))).await;
    assert_eq!(r.status, StatusCode::OK);
    let first = ids(&r.body);
    assert_eq!(first.len(), 2);
    assert!(first[0] > first[1], "newest first");
    assert_eq!(r.body["next_before"], json!(first[1]));
    let ride = &r.body["rides"][0];
    for field in [
        "distance_m",
        "distance_mm",
        "origin_lat",
        "origin_lon",
        "target_lat",
        "target_lon",
        "charge_id",
        "created_at_ms",
    ] {
        assert!(ride.get(field).is_some(), "{field}");
    }
    assert!(ride["charge_id"].is_string());

    let r = send(
        &h.router,
        get(&format!("/rides?limit=2&before={}", first[1]), Some(USER)),
    )
    .await;
    let second = ids(&r.body);
    assert_eq!(second.len(), 2);
    assert!(second[0] < first[1]);
    let r = send(
        &h.router,
        get(&format!("/rides?limit=2&before={}", second[1]), Some(USER)),
    )
    .await;
    assert_eq!(ids(&r.body).len(), 1);
    assert_eq!(r.body["next_before"], Value::Null, "last page");

    // Default page: all five of the user's rides, none of the other user's.
    let r = send(&h.router, get("/rides", Some(USER))).await;
    assert_eq!(ids(&r.body).len(), 5);
    assert_eq!(r.body["next_before"], Value::Null);
}

#[tokio::test]
async fn get_rides_validates_its_query_and_credentials() {
    let h = Harness::new();
    let r = send(&h.router, get("/rides", None)).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error(), messages::AUTH_REQUIRED);
    for q in ["limit=0", "limit=abc", "before=x"] {
        let r = send(&h.router, get(&format!("/rides?{q}"), Some(USER))).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{q}");
    }
    let r = send(&h.router, get("/rides?limit=1000", Some(USER))).await;
    assert_eq!(r.status, StatusCode::OK, "a large limit is clamped");
}

#[tokio::test]
async fn get_ride_shows_only_the_callers_rides() {
    let h = Harness::new();
    create_rides(&h, USER, 1).await;
    let id = h.store.rides_for_user(1, None, 1).await.unwrap()[0].id;

    let r = send(&h.router, get(&format!("/rides/{id}"), Some(USER))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["id"], json!(id));
    assert_eq!(r.body["target_lat"], json!(1.0));

    for (uri, auth) in [
        (format!("/rides/{id}"), BAD_SOURCE_USER),
        ("/rides/999999".to_owned(), USER),
        ("/rides/abc".to_owned(), USER),
    ] {
        let r = send(&h.router, get(&uri, Some(auth))).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri} as {auth}");
        assert_eq!(r.error(), "Ride not found.");
    }
    let r = send(
        &h.router,
        get(&format!("/rides/{id}"), Some("nobody@example.com")),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

// ---- health and stats --------------------------------------------------------------------

struct FixedStats;

#[async_trait]
impl StatsProvider for FixedStats {
    async fn stats(&self) -> anyhow::Result<Value> {
        Ok(json!({"consumers": [{"name": "c0", "lag": 0}]}))
    }
}

#[tokio::test]
async fn healthz_and_stats() {
    let h = Harness::new();
    let r = send(&h.router, get("/healthz", None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, json!({"status": "ok"}));

    let r = send(&h.router, get("/stats", None)).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(!r.error().is_empty());

    let with_stats = build_router(
        h.store.clone(),
        h.payments.clone(),
        h.clock.clone(),
        Faults::none(),
        Some(Arc::new(FixedStats)),
    );
    let r = send(&with_stats, get("/stats", None)).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["consumers"][0]["name"], "c0");
}

// ---- the client's address ----------------------------------------------------------------

#[tokio::test]
async fn the_audit_record_gets_the_clients_address() {
    let h = Harness::new();
    let mut req = post_valid(&new_key());
    let addr: SocketAddr = "127.0.0.9:4242".parse().unwrap();
    req.extensions_mut().insert(ConnectInfo(addr));
    assert_eq!(send(&h.router, req).await.status, StatusCode::CREATED);
    // Without connection info (oneshot, completer) the address defaults to 127.0.0.1.
    assert_eq!(
        send(&h.router, post_valid(&new_key())).await.status,
        StatusCode::CREATED
    );
    let ips: Vec<String> = h
        .store
        .audit_records()
        .into_iter()
        .map(|a| a.origin_ip)
        .collect();
    assert_eq!(ips, ["127.0.0.9", "127.0.0.1"]);
}

#[tokio::test]
async fn serve_answers_on_a_socket_and_shuts_down_gracefully() {
    let store = Arc::new(adapters::memory::MemoryStore::new("memory"));
    let payments = Arc::new(FakeProcessor::default());
    let rides = Arc::new(RideService::new(
        store.clone(),
        payments,
        Arc::new(ManualClock::new(T0)),
        RideServiceConfig::default(),
    ));
    let state = AppState {
        rides,
        store: store.clone(),
        log: None,
        stats: None,
        allow_test_errors: false,
        events: None,
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));

    let client = reqwest::Client::new();
    let resp = client
        .post(format!("http://{addr}/rides"))
        .header("Authorization", USER)
        .header("Idempotency-Key", new_key())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(VALID_FORM)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("application/json")
    );
    let audit = store.audit_records();
    assert_eq!(audit[0].origin_ip, "127.0.0.1", "from the connection");

    stop.send(()).unwrap();
    tokio::time::timeout(std::time::Duration::from_secs(10), server)
        .await
        .expect("the server stops")
        .unwrap()
        .unwrap();
}
