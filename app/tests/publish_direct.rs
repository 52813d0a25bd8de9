//! `--publish direct` (issue "Any consumer on any log" §3): the API appends what a phase
//! staged right after the commit, so the consumers count a ride long before the streamer
//! would sweep it; the streamer, in sweep mode, sends only records left staged longer than
//! the delay (a crash between a commit and its append), and the totals stay exact.

use std::time::{Duration, Instant};

use app::services::{Fleet, FleetConfig, Intervals};
use app::wiring::{OpenedLog, Stores};

async fn post_ride(base: &str, key: &str) {
    let res = reqwest::Client::new()
        .post(format!("{base}/rides"))
        .header("Authorization", "user@example.com")
        .header("Idempotency-Key", key)
        .form(&[
            ("origin_lat", "37.760634058469556"),
            ("origin_lon", "-122.41962585931567"),
            ("target_lat", "37.79401207930116"),
            ("target_lon", "-122.39508346185291"),
        ])
        .send()
        .await
        .expect("POST /rides");
    assert_eq!(
        res.status(),
        201,
        "{}",
        res.text().await.unwrap_or_default()
    );
}

async fn open(dir: &tempfile::TempDir) -> (Stores, OpenedLog) {
    let stores = app::wiring::open_store(&format!(
        "sqlite://{}",
        dir.path().join("rides.db").display()
    ))
    .await
    .unwrap();
    let log = app::wiring::open_log(
        &format!("sled://{}", dir.path().join("log").display()),
        &stores,
    )
    .await
    .unwrap();
    stores.store.ensure_user("user@example.com").await.unwrap();
    (stores, log)
}

fn direct(delay: Duration) -> FleetConfig {
    let mut config = FleetConfig::everything(Some(([127, 0, 0, 1], 0).into()));
    config.intervals = Intervals::demo();
    config.sync = false;
    config.publish_direct = Some(delay);
    config
}

/// Waits until the verdict agrees on `rides` rides, or panics after `limit`.
async fn agreed(stores: &Stores, log: &OpenedLog, rides: u64, limit: Duration) {
    let deadline = Instant::now() + limit;
    loop {
        let v = app::demo::collect_verdict(stores, log).await.unwrap();
        if v.agree && v.truth.rides == rides {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not agreed within {limit:?}:\n{}",
            v.table()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_publishes_right_after_the_commit_without_the_streamer() {
    let dir = tempfile::tempdir().unwrap();
    let (stores, log) = open(&dir).await;
    // The streamer would wait ten minutes: every ride reaching the consumers sooner was
    // appended by the API.
    let fleet = Fleet::start(&stores, &log, direct(Duration::from_secs(600)))
        .await
        .unwrap();
    let base = format!("http://{}", fleet.addr().unwrap());
    for i in 0..20 {
        post_ride(&base, &format!("publish-direct-test-key-{i:04}")).await;
    }
    agreed(&stores, &log, 20, Duration::from_secs(60)).await;
    assert_eq!(
        stores.outbox.staged().await.unwrap(),
        0,
        "removed once appended"
    );
    fleet.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_sweeper_sends_what_no_api_published_but_only_after_the_delay() {
    let dir = tempfile::tempdir().unwrap();
    let (stores, log) = open(&dir).await;
    let delay = Duration::from_millis(1500);
    let fleet = Fleet::start(&stores, &log, direct(delay)).await.unwrap();
    // What a crash between a commit and its append leaves: records staged, never appended.
    let records: Vec<domain::NewRecord> = (1..=3)
        .map(|i| {
            let mut r = ports::contract::fixtures::ride_created(i, 1_000 * i as u64);
            r.recorded_at_ms = ports::Clock::now_ms(&ports::SystemClock);
            r
        })
        .collect();
    let staged_at = Instant::now();
    stores.outbox.stage(&records).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    if staged_at.elapsed() < delay {
        assert_eq!(
            stores.outbox.staged().await.unwrap(),
            3,
            "not swept before the delay"
        );
        assert_eq!(log.log.len().await.unwrap(), 0);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while log.log.len().await.unwrap() < 3 {
        assert!(
            Instant::now() < deadline,
            "the sweeper did not send the staged records"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        staged_at.elapsed() >= delay,
        "swept after the delay, not before"
    );
    fleet.stop(Duration::from_secs(5)).await;
}
