//! `rides api` starts and takes rides while its log is down (records wait in the outbox), and
//! `/healthz/live` and `/healthz/ready` tell liveness from readiness, dependency by dependency.
//! The log here is a Redis URL on which nothing listens.
#![cfg(feature = "redis")]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    l.local_addr().expect("its address").port()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_starts_and_takes_rides_while_its_log_is_down() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("rides.db").display());
    let dead_log = format!("redis://127.0.0.1:{}", free_port());
    let port = free_port();
    let mut api = Command::new(env!("CARGO_BIN_EXE_rides"))
        .args(["api", "--store", &store, "--log", &dead_log])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rides api");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    let live = loop {
        if let Ok(r) = client.get(format!("{base}/healthz/live")).send().await {
            break r;
        }
        if let Ok(Some(status)) = api.try_wait() {
            panic!("rides api exited with {status} while its log is down");
        }
        assert!(Instant::now() < deadline, "rides api did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(live.status(), 200);

    let ready = client
        .get(format!("{base}/healthz/ready"))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "the API needs only its store");
    let body: serde_json::Value = ready.json().await.unwrap();
    assert_eq!(body["dependencies"]["store"], "ok", "{body}");
    assert_eq!(body["dependencies"]["log"], "unavailable", "{body}");

    let res = client
        .post(format!("{base}/rides"))
        .header("Authorization", "user@example.com")
        .header("Idempotency-Key", "degraded-start-key-000000001")
        .form(&[
            ("origin_lat", "37.760634058469556"),
            ("origin_lon", "-122.41962585931567"),
            ("target_lat", "37.79401207930116"),
            ("target_lon", "-122.39508346185291"),
        ])
        .send()
        .await
        .unwrap();
    assert_eq!(
        res.status(),
        201,
        "{}",
        res.text().await.unwrap_or_default()
    );
    let _ = api.kill();
    let _ = api.wait();

    // The ride's records wait in the outbox for the streamer.
    let stores = app::wiring::open_store(&store).await.unwrap();
    assert!(stores.outbox.staged().await.unwrap() >= 1);
}
