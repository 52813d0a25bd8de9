//! `rides admin forget-user`: a user's rides leave the store, the distance consumers' totals
//! and the replica, through one change record per ride; other users are untouched; the
//! verdict agrees afterwards. The real binary runs the command on a SQLite store.

use std::time::{Duration, Instant};

use app::services::{Fleet, FleetConfig};

async fn post_ride(base: &str, user: &str, key: &str) {
    let res = reqwest::Client::new()
        .post(format!("{base}/rides"))
        .header("Authorization", user)
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

async fn settled(stores: &app::wiring::Stores, log: &app::wiring::OpenedLog) -> app::demo::Verdict {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let v = app::demo::collect_verdict(stores, log).await.unwrap();
        if v.settled() && v.agree {
            return v;
        }
        assert!(Instant::now() < deadline, "did not settle:\n{}", v.table());
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_user_empties_the_replica_of_that_user_and_keeps_every_total_exact() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}", dir.path().join("rides.db").display());
    let log_url = format!("sled://{}", dir.path().join("log").display());
    let replica_url = format!("sqlite://{}", dir.path().join("replica.db").display());
    let stores = app::wiring::open_store(&store_url)
        .await
        .unwrap()
        .with_replica(&replica_url)
        .await
        .unwrap();
    let log = app::wiring::open_log(&log_url, &stores).await.unwrap();
    let (gone, kept) = ("forget-me@example.com", "keep-me@example.com");
    let gone_user = stores.store.ensure_user(gone).await.unwrap();
    let kept_user = stores.store.ensure_user(kept).await.unwrap();
    let mut config = FleetConfig::everything(Some(([127, 0, 0, 1], 0).into()));
    config.intervals = app::services::Intervals::demo();
    let fleet = Fleet::start(&stores, &log, config).await.unwrap();
    let base = format!("http://{}", fleet.addr().unwrap());
    for i in 0..3 {
        post_ride(&base, gone, &format!("forget-user-test-key-gone-{i}")).await;
    }
    for i in 0..2 {
        post_ride(&base, kept, &format!("forget-user-test-key-kept-{i}")).await;
    }
    let before = settled(&stores, &log).await;
    // `/stats` (this verdict) shows which instance runs each service.
    let scopes: Vec<&str> = before.leases.iter().map(|l| l.scope.as_str()).collect();
    for scope in [
        "streamer",
        "consumer:distance-a",
        "consumer:distance-b",
        "consumer:replica",
    ] {
        assert!(scopes.contains(&scope), "{scope} in {scopes:?}");
    }
    assert!(before.consumers.iter().all(|c| c.parked == 0));
    let replica = stores.replica.clone().unwrap().replica;
    assert_eq!(
        replica
            .rides_for_user(gone_user.id, None, 10)
            .await
            .unwrap()
            .len(),
        3
    );
    assert_eq!(before.truth.rides, 5);

    let forgotten = stores.store.forget_user(gone, 0).await.unwrap();
    assert_eq!((forgotten.rides, forgotten.keys), (3, 3));
    let after = settled(&stores, &log).await;
    assert_eq!(after.truth.rides, 2, "{}", after.table());
    for c in &after.consumers {
        assert_eq!(
            (c.rides, c.distance_mm),
            (2, after.truth.distance_mm),
            "{}",
            after.table()
        );
    }
    let r = after.replica.as_ref().unwrap();
    assert_eq!((r.rows, r.mismatches), (2, 0), "{}", after.table());
    assert!(
        replica
            .rides_for_user(gone_user.id, None, 10)
            .await
            .unwrap()
            .is_empty()
    );
    assert_eq!(
        replica
            .rides_for_user(kept_user.id, None, 10)
            .await
            .unwrap()
            .len(),
        2
    );
    fleet.stop(Duration::from_secs(10)).await;

    // The command line does the same on a store at rest.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rides"))
        .args(["admin", "forget-user", kept, "--store", &store_url])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("2 rides and 2 keys deleted"), "{text}");
    let unknown = std::process::Command::new(env!("CARGO_BIN_EXE_rides"))
        .args([
            "admin",
            "forget-user",
            "nobody@example.com",
            "--store",
            &store_url,
        ])
        .env("RUST_LOG", "error")
        .output()
        .unwrap();
    assert!(!unknown.status.success(), "an unknown user is an error");
}
