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

/// `rides serve` as a whole (API, streamer, consumers, sync, completer, reaper, trimmer)
/// starts while its Redis log is down, takes rides, keeps every service retrying, and
/// converges once a Redis comes up on that address: `rides verify` agrees.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_fleet_starts_with_its_log_down_and_converges_once_it_is_up() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("sqlite://{}", dir.path().join("rides.db").display());
    let redis_port = free_port();
    // A Redis with AOF will listen here later: the URL needs no `volatile=ok`.
    let log = format!("redis://127.0.0.1:{redis_port}/rides-log-down");
    let port = free_port();
    let mut serve = Command::new(env!("CARGO_BIN_EXE_rides"))
        .args(["serve", "--store", &store, "--log", &log])
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rides serve");
    let base = format!("http://127.0.0.1:{port}");
    let client = reqwest::Client::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while client
        .get(format!("{base}/healthz/live"))
        .send()
        .await
        .is_err()
    {
        if let Ok(Some(status)) = serve.try_wait() {
            panic!("rides serve exited with {status} while its log is down");
        }
        assert!(Instant::now() < deadline, "rides serve did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..5 {
        let res = client
            .post(format!("{base}/rides"))
            .header("Authorization", "user@example.com")
            .header("Idempotency-Key", format!("fleet-log-down-key-{i:06}"))
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
    }
    // A while with the log down: every service keeps retrying, nothing exits.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(serve.try_wait().unwrap().is_none(), "rides serve stays up");

    let mut redis = Command::new("redis-server")
        .args(["--port", &redis_port.to_string(), "--bind", "127.0.0.1"])
        .args(["--appendonly", "yes", "--save", ""])
        .arg("--dir")
        .arg(dir.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start redis-server (Debian's redis-server package)");

    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let verify = Command::new(env!("CARGO_BIN_EXE_rides"))
            .args(["verify", "--store", &store, "--log", &log, "--json"])
            .env("RUST_LOG", "error")
            .output()
            .expect("run rides verify");
        let out = String::from_utf8_lossy(&verify.stdout);
        let agreed = verify.status.success()
            && out
                .lines()
                .last()
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .is_some_and(|v| v["agree"] == true && v["truth"]["rides"] == 5);
        if agreed {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no agreement after the log came up: {out}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let _ = serve.kill();
    let _ = serve.wait();
    let _ = redis.kill();
    let _ = redis.wait();
}
