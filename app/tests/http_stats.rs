//! `GET /stats` cannot hurt the system: one computation per interval however many clients
//! poll, a snapshot that never shows consumers ahead of the truth, its age, and a generic 503
//! when the store is down.

mod http_common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use app::demo::collect_verdict;
use app::faults::Faults;
use app::http::StatsProvider;
use app::services::{Fleet, FleetConfig, Intervals};
use app::wiring;
use async_trait::async_trait;
use axum::http::StatusCode;
use domain::{RideParams, RideRequest};
use http_common::*;
use serde_json::{Value, json};

/// Counts its computations, each taking 50 ms.
#[derive(Default)]
struct Counting {
    calls: AtomicU64,
}

#[async_trait]
impl StatsProvider for Counting {
    async fn stats(&self) -> anyhow::Result<Value> {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(json!({ "computation": n }))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_flood_of_stats_requests_computes_once_per_interval() {
    let h = Harness::new();
    let provider = Arc::new(Counting::default());
    let router = build_router(
        h.store.clone(),
        h.payments.clone(),
        h.clock.clone(),
        Faults::none(),
        Some(provider.clone()),
    );
    let replies =
        futures::future::join_all((0..200).map(|_| send(&router, get("/stats", None)))).await;
    for r in &replies {
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(
            r.body["computation"], 1,
            "every request reads the one snapshot"
        );
        assert!(r.body["snapshot_age_ms"].as_u64().is_some(), "{}", r.body);
        assert!(r.body["snapshot_taken_at_ms"].as_i64().is_some());
    }
    assert_eq!(
        provider.calls.load(Ordering::SeqCst),
        1,
        "200 requests, one computation"
    );

    // Past the interval, the next request starts one refresh and, having been sent the old
    // snapshot already, gets the new one.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = send(&router, get("/stats", None)).await;
    assert_eq!(r.body["computation"], 2);
    assert!(
        r.body["snapshot_age_ms"].as_u64().unwrap() < 1000,
        "{}",
        r.body
    );
    assert_eq!(provider.calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_client_polling_back_to_back_gets_each_snapshot_once() {
    let h = Harness::new();
    let provider = Arc::new(Counting::default());
    let router = build_router(
        h.store.clone(),
        h.payments.clone(),
        h.clock.clone(),
        Faults::none(),
        Some(provider.clone()),
    );
    let from = |ip: [u8; 4]| {
        let mut req = get("/stats", None);
        req.extensions_mut()
            .insert(axum::extract::ConnectInfo(std::net::SocketAddr::from((
                ip, 4242,
            ))));
        req
    };
    // Four pollers at one address, back to back for 2.5 s: each waits for the next snapshot.
    let started = Instant::now();
    let pollers = (0..4).map(|_| {
        let router = router.clone();
        async move {
            let mut seen = Vec::new();
            while started.elapsed() < Duration::from_millis(2500) {
                let r = send(&router, from([10, 0, 0, 1])).await;
                assert_eq!(r.status, StatusCode::OK);
                seen.push(r.body["computation"].as_u64().unwrap());
            }
            seen
        }
    });
    let seen = futures::future::join_all(pollers).await;
    for s in &seen {
        assert!(
            s.len() <= 5,
            "a poller is answered once per snapshot, not {}",
            s.len()
        );
        assert!(
            s.windows(2).all(|w| w[0] < w[1]),
            "each answer is a newer snapshot: {s:?}"
        );
    }
    let calls = provider.calls.load(Ordering::SeqCst);
    assert!(
        (3..=5).contains(&calls),
        "one computation per second, not {calls}"
    );
    // Another address gets the current snapshot at once.
    let t = Instant::now();
    let r = send(&router, from([10, 0, 0, 2])).await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(t.elapsed() < Duration::from_millis(500));
}

#[tokio::test]
async fn stats_answer_503_with_a_generic_message_when_the_store_is_down() {
    let mut stores = wiring::open_store("memory://").await.unwrap();
    let log = wiring::open_log("memory://", &stores).await.unwrap();
    stores.store = FailingStore::down(stores.store.clone());
    let fleet = Fleet::start(
        &stores,
        &log,
        FleetConfig {
            listen: Some(([127, 0, 0, 1], 0).into()),
            ..FleetConfig::nothing()
        },
    )
    .await
    .unwrap();
    let url = format!("http://{}/stats", fleet.addr().unwrap());
    for _ in 0..3 {
        let resp = reqwest::get(&url).await.unwrap();
        assert_eq!(resp.status().as_u16(), 503);
        let body: Value = resp.json().await.unwrap();
        assert_eq!(
            body,
            json!({"error": "Service unavailable. Please retry later."}),
            "generic: nothing about the store's address or error"
        );
    }
    fleet.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn consumers_never_appear_ahead_of_the_truth() {
    let mut stores = wiring::open_store("memory://").await.unwrap();
    let log = wiring::open_log("memory://", &stores).await.unwrap();
    let user = stores.store.ensure_user(USER).await.unwrap();
    // The truth takes 300 ms to come back, while rides keep being created and consumed.
    stores.store = FailingStore::stale_truth(stores.store.clone(), Duration::from_millis(300));
    let fleet = Fleet::start(
        &stores,
        &log,
        FleetConfig {
            streamer: true,
            consumers: vec!["distance-a".into()],
            intervals: Intervals::demo(),
            ..FleetConfig::nothing()
        },
    )
    .await
    .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let load = {
        let (rides, stop) = (fleet.rides().clone(), stop.clone());
        tokio::spawn(async move {
            let request = RideRequest {
                params: RideParams::new(37.76, -122.42, 37.78, -122.40).unwrap(),
                raise_error: false,
            };
            let mut created = 0u64;
            while !stop.is_cancelled() {
                let key = parsed_key(&new_key());
                if rides
                    .create_ride(&user, &key, &request, "127.0.0.1")
                    .await
                    .status
                    == 201
                {
                    created += 1;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            created
        })
    };
    let mut consumed_while_reading = 0;
    for _ in 0..8 {
        let v = collect_verdict(&stores, &log).await.unwrap();
        for c in &v.consumers {
            assert!(
                c.rides <= v.truth.rides && c.distance_mm <= v.truth.distance_mm,
                "consumer {} ({} rides, {} mm) ahead of the truth ({} rides, {} mm)",
                c.name,
                c.rides,
                c.distance_mm,
                v.truth.rides,
                v.truth.distance_mm
            );
            consumed_while_reading += c.rides;
        }
    }
    stop.cancel();
    let created = load.await.unwrap();
    fleet.stop(Duration::from_secs(5)).await;
    assert!(created > 50, "rides kept coming ({created})");
    assert!(consumed_while_reading > 0, "the consumer was consuming");
}
