//! Two `rides consumer --name distance-a` processes on one Postgres store (the Postgres-only
//! log): exactly one works, the other is a hot standby. SIGKILL of the active one lets the
//! standby take over within the lease TTL (the test measures it), SIGTERM releases the lease
//! at once, and the result is exact: every ride counted once.
//!
//! Needs Postgres: `RIDES_TEST_POSTGRES_URL` (set by `scripts/test.sh`).
#![cfg(feature = "postgres")]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use domain::NewRecord;

const TTL_MS: u64 = 2_000;

fn pg_url() -> String {
    std::env::var("RIDES_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!(
            "this test needs Postgres: set RIDES_TEST_POSTGRES_URL (scripts/test.sh starts one and sets it)"
        )
    })
}

fn with_schema(url: &str, schema: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}schema={schema}")
}

fn consumer(url: &str) -> Child {
    Command::new(env!("CARGO_BIN_EXE_rides"))
        .args(["consumer", "--name", "distance-a"])
        .args(["--store", url, "--log", url])
        .args(["--lease-ttl-ms", &TTL_MS.to_string()])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rides consumer")
}

fn rides(from: u64, n: u64) -> Vec<NewRecord> {
    (from..from + n)
        .map(|i| NewRecord {
            id: uuid::Uuid::new_v4(),
            stream: "rides".into(),
            key: format!("ride:{i}"),
            kind: "ride.created".into(),
            payload: serde_json::json!({"ride_id": i, "user_id": 1, "distance_mm": 1_000}),
            correlation_id: None,
            causation_id: None,
            recorded_at_ms: 0,
        })
        .collect()
}

/// The lease holder of `distance-a`, when its lease is live.
async fn holder(stores: &app::wiring::Stores) -> Option<String> {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64;
    stores
        .consumers
        .leases()
        .await
        .unwrap()
        .into_iter()
        .find(|l| l.scope == "consumer:distance-a" && l.expires_at_ms > now)
        .map(|l| l.holder)
}

async fn counted(stores: &app::wiring::Stores) -> u64 {
    match stores.consumers.load("distance-a").await.unwrap() {
        Some(cp) => app::services::consumer::result(&cp)
            .unwrap()
            .map_or(0, |s| s.rides),
        None => 0,
    }
}

async fn until<F, Fut>(what: &str, limit: Duration, mut f: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !f().await {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_after_sigkill_and_counts_exactly() {
    let schema = format!("takeover_{}", uuid::Uuid::new_v4().simple());
    let url = with_schema(&pg_url(), &schema);
    let stores = app::wiring::open_store(&url).await.expect("open the store");
    stores.outbox.stage(&rides(1, 500)).await.unwrap();

    let mut a = consumer(&url);
    until(
        "the first consumer to count",
        Duration::from_secs(60),
        || async { counted(&stores).await == 500 },
    )
    .await;
    let active = holder(&stores)
        .await
        .expect("the active instance holds the lease");
    let mut b = consumer(&url);
    // The standby never takes the lease while the active one renews it.
    tokio::time::sleep(Duration::from_millis(3 * TTL_MS / 2)).await;
    assert_eq!(holder(&stores).await.as_deref(), Some(active.as_str()));

    a.kill().expect("SIGKILL the active consumer");
    a.wait().unwrap();
    let killed = Instant::now();
    stores.outbox.stage(&rides(501, 500)).await.unwrap();
    until(
        "the standby to take over",
        Duration::from_secs(30),
        || async { holder(&stores).await.is_some_and(|h| h != active) },
    )
    .await;
    let takeover = killed.elapsed();
    eprintln!(
        "standby took over {} ms after SIGKILL (lease TTL {TTL_MS} ms)",
        takeover.as_millis()
    );
    assert!(
        takeover < Duration::from_millis(TTL_MS + 1_500),
        "takeover took {takeover:?}, lease TTL {TTL_MS} ms"
    );
    until(
        "the standby to count the rest",
        Duration::from_secs(60),
        || async { counted(&stores).await == 1_000 },
    )
    .await;

    // SIGTERM releases the lease at once.
    let pid = b.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    let released = until(
        "the lease to be released",
        Duration::from_secs(10),
        || async { holder(&stores).await.is_none() },
    )
    .await;
    assert!(
        released < Duration::from_millis(TTL_MS),
        "released after {released:?}: that is expiry, not release"
    );
    b.wait().unwrap();
    assert_eq!(counted(&stores).await, 1_000, "nothing counted twice");

    drop_schema(&pg_url(), &schema);
}

/// Drops the test's schema (best effort: `psql` from the Postgres the tests run against).
fn drop_schema(url: &str, schema: &str) {
    let _ = Command::new("psql")
        .arg(url)
        .args([
            "-qc",
            &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
        ])
        .output();
}
