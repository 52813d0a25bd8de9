//! Scaling one consumer out over Kafka partitions (issue "Any consumer on any log" §2): a
//! distance consumer runs per lane on a 3-partition topic in two instances; they share the
//! lanes, one instance is killed midway (its leases are left to expire, as after SIGKILL),
//! the survivor takes its lanes over, and the lanes' states add up exactly to what was
//! appended, double sends included.

mod harness;

use std::collections::BTreeSet;
use std::time::Duration;

use app::runtime::lanes::{lane_name, split_lane};
use app::services::{Fleet, FleetConfig, Intervals};
use app::wiring::{self, Stores};
use domain::DistanceState;
use ports::contract::fixtures::{distance_of, rides};

const CONSUMER: &str = "dist";
const LANES: u32 = 3;
const TTL: Duration = Duration::from_millis(1500);

/// The lanes' checkpoints of [`CONSUMER`], summed.
async fn total(stores: &Stores) -> (DistanceState, u64) {
    let mut sum = DistanceState::default();
    let mut duplicates = 0;
    for (name, cp) in stores.consumers.list().await.expect("list consumers") {
        if split_lane(&name).is_some_and(|(base, _)| base == CONSUMER) {
            let state = app::services::consumer::result(&cp)
                .expect("a distance state")
                .expect("a distance consumer");
            sum.rides += state.rides;
            sum.distance_mm += state.distance_mm;
            duplicates += cp.cursor.duplicates;
        }
    }
    (sum, duplicates)
}

/// The holders of the live lane leases, by lane.
async fn holders(stores: &Stores) -> Vec<(u32, String)> {
    let now = ports::Clock::now_ms(&ports::SystemClock);
    let mut out: Vec<(u32, String)> = stores
        .consumers
        .leases()
        .await
        .expect("leases")
        .into_iter()
        .filter(|l| l.expires_at_ms > now)
        .filter_map(|l| {
            let name = l.scope.strip_prefix("consumer:")?;
            let (base, lane) = split_lane(name)?;
            (base == CONSUMER).then_some((lane, l.holder))
        })
        .collect();
    out.sort();
    out
}

async fn until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) {
    let start = std::time::Instant::now();
    while !done().await {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn instance() -> FleetConfig {
    let mut c = FleetConfig::nothing();
    c.consumers = vec![CONSUMER.to_owned()];
    c.per_lane = true;
    c.lease_ttl = Some(TTL);
    c.intervals = Intervals::demo();
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_instances_share_three_partitions_and_one_killed_loses_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = wiring::open_store(&format!("sqlite://{}/store.db", dir.path().display()))
        .await
        .expect("open the store");
    // tansu needs one record per producer batch and has no record deletion.
    let url = format!(
        "kafka://{}/{}?partitions={LANES}&batch_records=1&delete_records=false",
        harness::kafka_brokers().await,
        harness::unique("rides-lanes")
    );
    let log = wiring::open_log(&url, &stores).await.expect("open the log");
    assert_eq!(log.log.lanes(), LANES);

    // 600 rides, keyed by ride (so spread over the partitions), the first 200 sent twice.
    let first = rides("lanes-producer", 1, 300);
    let second = rides("lanes-producer", 301, 300);
    log.log.append(&first).await.expect("append");
    log.log.append(&first[..200]).await.expect("double send");
    let expected = distance_of(&first) + distance_of(&second);

    let a = Fleet::start(&stores, &log, instance())
        .await
        .expect("instance a");
    let b = Fleet::start(&stores, &log, instance())
        .await
        .expect("instance b");

    // Both instances own lanes: every lane has one owner, and there are two owners.
    until(
        "the lanes are shared by both instances",
        Duration::from_secs(30),
        async || {
            let h = holders(&stores).await;
            let lanes: BTreeSet<u32> = h.iter().map(|(l, _)| *l).collect();
            let owners: BTreeSet<&String> = h.iter().map(|(_, o)| o).collect();
            lanes.len() == LANES as usize && h.len() == LANES as usize && owners.len() == 2
        },
    )
    .await;
    until(
        "the first half is consumed",
        Duration::from_secs(60),
        async || total(&stores).await.0.rides == 300,
    )
    .await;

    // Kill instance a: no release, its leases expire after the TTL.
    a.abort().await;
    log.log
        .append(&second)
        .await
        .expect("append the second half");

    let took_over = std::time::Instant::now();
    until(
        "the survivor owns every lane",
        Duration::from_secs(30),
        async || {
            let h = holders(&stores).await;
            let owners: BTreeSet<&String> = h.iter().map(|(_, o)| o).collect();
            h.len() == LANES as usize && owners.len() == 1
        },
    )
    .await;
    let takeover = took_over.elapsed();
    until(
        "everything is consumed",
        Duration::from_secs(60),
        async || total(&stores).await.0.rides == 600,
    )
    .await;

    let (sum, duplicates) = total(&stores).await;
    assert_eq!(sum.rides, 600, "every ride counted once");
    assert_eq!(sum.distance_mm, expected, "exact distance");
    assert!(
        duplicates >= 200,
        "the double sends were skipped: {duplicates}"
    );
    assert!(
        takeover < TTL * 4,
        "the survivor took the dead instance's lanes within the TTL (plus a renewal): {takeover:?}"
    );
    // Each lane has its own checkpoint.
    for lane in 0..LANES {
        let cp = stores
            .consumers
            .load(&lane_name(CONSUMER, lane))
            .await
            .expect("load")
            .expect("a checkpoint per lane");
        assert!(cp.version > 0, "lane {lane} saved");
    }

    // The verdict shows the consumer once, its lanes added up, at one position of the log.
    let verdict = app::demo::collect_verdict(&stores, &log)
        .await
        .expect("verdict");
    let views: Vec<_> = verdict
        .consumers
        .iter()
        .filter(|c| c.name == CONSUMER)
        .collect();
    assert_eq!(views.len(), 1, "{:?}", verdict.consumers);
    assert_eq!((views[0].rides, views[0].distance_mm), (600, expected));
    assert_eq!(views[0].lag, Some(0));
    assert_eq!(
        views[0].position.split(',').count(),
        LANES as usize,
        "{}",
        views[0].position
    );

    b.stop(Duration::from_secs(5)).await;
    // A stopped instance releases its lanes at once.
    assert!(
        holders(&stores).await.is_empty(),
        "SIGTERM releases every lane"
    );
}

/// A consumer that ran whole cannot be restarted per lane (or the other way round): it would
/// count everything again under new checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_keeps_the_mode_it_ran_in() {
    let dir = tempfile::tempdir().expect("tempdir");
    let stores = wiring::open_store(&format!("sqlite://{}/store.db", dir.path().display()))
        .await
        .expect("open the store");
    let url = format!(
        "kafka://{}/{}?partitions=2&batch_records=1&delete_records=false",
        harness::kafka_brokers().await,
        harness::unique("rides-lanes-mode")
    );
    let log = wiring::open_log(&url, &stores).await.expect("open the log");
    log.log
        .append(&rides("mode-producer", 1, 5))
        .await
        .expect("append");
    let mut whole = instance();
    whole.per_lane = false;
    let fleet = Fleet::start(&stores, &log, whole.clone())
        .await
        .expect("whole");
    until(
        "the whole consumer saved",
        Duration::from_secs(30),
        async || {
            stores
                .consumers
                .load(CONSUMER)
                .await
                .ok()
                .flatten()
                .is_some_and(|cp| cp.version > 0)
        },
    )
    .await;
    fleet.stop(Duration::from_secs(5)).await;
    let Err(e) = Fleet::start(&stores, &log, instance()).await else {
        panic!("per lane after whole must be refused");
    };
    assert!(e.to_string().contains("has run whole before"), "{e}");
}

/// Per lane needs a log with lanes.
#[tokio::test]
async fn per_lane_on_a_one_lane_log_is_a_clear_error() {
    let stores = wiring::open_store("memory://").await.expect("store");
    let log = wiring::open_log("memory://", &stores).await.expect("log");
    let Err(e) = Fleet::start(&stores, &log, instance()).await else {
        panic!("per lane on a one-lane log must be refused");
    };
    assert!(
        e.to_string().contains("needs a log with several lanes"),
        "{e}"
    );
}
