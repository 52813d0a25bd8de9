//! The demo and the fleet, end to end in one process, with faults on.
//!
//! - the demo converges on memory adapters and on SQLite + sled, with every kind of fault
//!   injected at least once;
//! - a fleet stopped abruptly mid-run (tasks dropped wherever they are, the in-process
//!   stand-in for `kill -9`) and started again on the same directory converges with nothing
//!   lost and nothing counted twice.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use app::demo::{self, DemoOptions, Verdict};
use app::faults::{FaultConfig, Faults};
use app::services::{Fleet, FleetConfig, Intervals};
use app::simulator::{self, SimConfig, SimStats};
use app::wiring;
use tokio_util::sync::CancellationToken;

fn assert_converged(v: &Verdict) {
    assert!(v.agree, "consumers disagree with the truth:\n{}", v.table());
    assert_eq!(v.consumers.len(), 2, "{}", v.table());
    for c in &v.consumers {
        assert_eq!(
            (c.rides, c.distance_mm),
            (v.truth.rides, v.truth.distance_mm)
        );
    }
    assert_eq!(v.truth.unfinished_keys, 0, "{}", v.table());
}

fn assert_every_fault_fired(v: &Verdict) {
    let f = v.faults;
    assert!(
        f.double_sends > 0 && f.consumer_crashes > 0 && f.api_crashes > 0,
        "{f:?}"
    );
}

fn small_demo(rides: u64, seed: u64) -> DemoOptions {
    let mut o = DemoOptions::new(rides, seed);
    o.concurrency = 4;
    o.progress = false;
    o.settle_timeout = Duration::from_secs(60);
    o
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_converges_on_memory_adapters_with_faults() {
    let mut o = small_demo(250, 3);
    o.store = Some("memory://".into());
    o.log = Some("memory://".into());
    let v = demo::run_demo(o).await.unwrap();
    assert_converged(&v);
    assert_every_fault_fired(&v);
    assert_eq!(v.truth.rides, 250, "every simulated ride exists once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_demo_converges_on_sqlite_and_sled_with_faults() {
    let dir = tempfile::tempdir().unwrap();
    let mut o = small_demo(250, 5);
    o.data_dir = Some(dir.path().join("demo"));
    let v = demo::run_demo(o).await.unwrap();
    assert_converged(&v);
    assert_every_fault_fired(&v);
    assert_eq!(v.truth.rides, 250);
    assert!(dir.path().join("demo/rides.db").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_seed_makes_the_same_rides() {
    let run = |seed| async move {
        let mut o = small_demo(120, seed);
        o.store = Some("memory://".into());
        o.log = Some("memory://".into());
        demo::run_demo(o).await.unwrap()
    };
    let (a, b, other) = (run(9).await, run(9).await, run(10).await);
    assert_converged(&a);
    assert_converged(&b);
    assert_eq!(
        (a.truth.rides, a.truth.distance_mm),
        (b.truth.rides, b.truth.distance_mm),
        "same seed, same truth"
    );
    assert_ne!(
        a.truth.distance_mm, other.truth.distance_mm,
        "another seed, other rides"
    );
}

fn fleet_config(seed: u64) -> FleetConfig {
    let demo = DemoOptions::new(0, seed);
    FleetConfig {
        listen: Some(([127, 0, 0, 1], 0).into()),
        thresholds: demo.thresholds,
        faults: Arc::new(Faults::new(FaultConfig::demo(seed))),
        intervals: Intervals::demo(),
        seed,
        ..FleetConfig::everything(None)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fleet_killed_mid_run_resumes_and_converges() {
    let dir = tempfile::tempdir().unwrap();
    let store_url = format!("sqlite://{}", dir.path().join("rides.db").display());
    let log_url = format!("sled://{}", dir.path().join("log").display());

    // First life: run until some rides are in, then drop everything without draining.
    let made_before_kill = {
        let stores = wiring::open_store(&store_url).await.unwrap();
        let log = wiring::open_log(&log_url, &stores).await.unwrap();
        for u in [simulator::GOOD_USER, simulator::BAD_SOURCE_USER] {
            stores.store.ensure_user(u).await.unwrap();
        }
        let fleet = Fleet::start(&stores, &log, fleet_config(11)).await.unwrap();
        let addr = fleet.addr().unwrap();
        let stats = Arc::new(SimStats::default());
        let stop = CancellationToken::new();
        let sim = tokio::spawn(simulator::simulate(
            SimConfig::new(format!("http://{addr}"), 400, 4, 11),
            stats.clone(),
            stop.clone(),
        ));
        // Poll the live counter (an upper bound, not a timing guess).
        tokio::time::timeout(Duration::from_secs(60), async {
            while stats.done.load(Ordering::Relaxed) < 120 {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await
        .expect("the simulator made progress");
        fleet.abort().await;
        stop.cancel();
        let _ = sim.await;
        stats.done.load(Ordering::Relaxed)
    };
    assert!(made_before_kill >= 120);

    // Second life on the same files: more rides, then every consumer must equal the truth.
    // (In a real `kill -9` the OS releases sled's file lock at once; in-process, connection
    // tasks that the HTTP server spawned may hold the old handle a moment longer.)
    let stores = wiring::open_store(&store_url).await.unwrap();
    let log = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match wiring::open_log(&log_url, &stores).await {
                Ok(log) => break log,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the killed fleet's log handle was released");
    let before = stores.store.truth().await.unwrap();
    let fleet = Fleet::start(&stores, &log, fleet_config(12)).await.unwrap();
    let addr = fleet.addr().unwrap();
    let report = simulator::simulate(
        SimConfig::new(format!("http://{addr}"), 150, 4, 12),
        Arc::new(SimStats::default()),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.rides, 150);
    let settled = demo::settle(&stores, &log, Duration::from_secs(60)).await;
    fleet.stop(Duration::from_secs(10)).await;
    let v = demo::collect_verdict(&stores, &log).await.unwrap();
    assert!(settled, "did not settle:\n{}", v.table());
    assert_converged(&v);
    assert!(
        v.truth.rides >= before.rides + 150,
        "rides from both lives are kept: {} then {}",
        before.rides,
        v.truth.rides
    );
    assert!(before.rides > 0, "the first life committed rides");
}
