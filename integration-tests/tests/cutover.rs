//! Swapping the log in production (issue acceptance): the fleet runs under load with every
//! fault on while the log is cut over from Redis to Kafka and then to the Postgres-only log;
//! the API keeps serving throughout, and every consumer ends equal to the store's truth.

mod harness;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use app::demo::{self, DemoOptions};
use app::faults::{FaultConfig, Faults};
use app::services::{Fleet, FleetConfig, Intervals};
use app::simulator::{self, SimConfig, SimStats};
use app::{cutover, wiring};
use harness::FreshDb;
use ports::SystemClock;
use tokio_util::sync::CancellationToken;

const RIDES: u64 = 600;

async fn until_done(stats: &SimStats, n: u64) {
    tokio::time::timeout(Duration::from_secs(120), async {
        while stats.done.load(Ordering::Relaxed) < n {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the simulator made progress");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cutover_redis_to_kafka_to_postgres_only_under_load_converges() {
    let db = FreshDb::create().await;
    // This machine's Redis keeps nothing on disk: the test accepts it.
    let redis = format!(
        "{}?volatile=ok&stream={}",
        harness::redis_url().await.trim_end_matches('/'),
        harness::unique("rides_cutover")
    );
    // tansu needs one record per producer batch and has no record deletion (see the Kafka
    // adapter's docs); a real Kafka needs neither option.
    let kafka = format!(
        "kafka://{}/{}?partitions=3&batch_records=1&delete_records=false",
        harness::kafka_brokers().await,
        harness::unique("rides_cutover")
    );

    let stores = wiring::open_store(&db.url).await.unwrap();
    let log = wiring::open_log(&redis, &stores).await.unwrap();
    let seed = 21;
    let config = FleetConfig {
        listen: Some(([127, 0, 0, 1], 0).into()),
        thresholds: DemoOptions::new(0, seed).thresholds,
        faults: Arc::new(Faults::new(FaultConfig::demo(seed))),
        intervals: Intervals::demo(),
        seed,
        ..FleetConfig::everything(None)
    };
    let faults = config.faults.clone();
    let fleet = Fleet::start(&stores, &log, config).await.unwrap();
    let url = format!("http://{}", fleet.addr().unwrap());
    let stats = Arc::new(SimStats::default());
    let sim = tokio::spawn(simulator::simulate(
        SimConfig::new(url, RIDES, 6, seed),
        stats.clone(),
        CancellationToken::new(),
    ));

    until_done(&stats, RIDES / 4).await;
    let from = cutover::request(&stores, &log, &kafka, &SystemClock)
        .await
        .unwrap();
    assert_eq!(from, redis);
    until_done(&stats, RIDES * 3 / 5).await;
    let from = cutover::request(&stores, &log, &db.url, &SystemClock)
        .await
        .unwrap();
    assert_eq!(
        from, kafka,
        "the first cutover was carried out before the second"
    );
    let report = sim.await.unwrap().unwrap();
    assert_eq!(report.rides, RIDES);

    let settled = demo::settle(&stores, &log, Duration::from_secs(120)).await;
    let v = demo::collect_verdict(&stores, &log).await.unwrap();
    let status = cutover::status(&stores, &log).await.unwrap();
    let kafka_len = log.follow(&kafka).await.unwrap().log.len().await.unwrap();
    fleet.stop(Duration::from_secs(10)).await;

    if !(settled && v.agree) {
        // Everything needed to tell where a record went.
        let mut report = String::new();
        for (name, cp) in stores.consumers.list().await.unwrap() {
            report.push_str(&format!(
                "{name} at {} v{}: {}\n",
                cp.position, cp.version, cp.state
            ));
        }
        report.push_str(&format!(
            "route: {:?}\n",
            stores.outbox.route().await.unwrap()
        ));
        let peek = stores.outbox.peek(5).await.unwrap();
        report.push_str(&format!(
            "outbox staged {} first seqs {:?}\n",
            stores.outbox.staged().await.unwrap(),
            peek.iter()
                .map(|r| (r.seq, r.kind.clone()))
                .collect::<Vec<_>>()
        ));
        let pg = log.follow(&db.url).await.unwrap();
        let b = pg
            .log
            .read(&ports::Position::start(), 5, Duration::from_millis(10))
            .await
            .unwrap();
        report.push_str(&format!(
            "pg log len {} first {:?}\n",
            pg.log.len().await.unwrap(),
            b.deliveries
                .iter()
                .map(|d| (
                    d.record.producer.clone(),
                    d.record.seq,
                    d.record.kind.clone()
                ))
                .collect::<Vec<_>>()
        ));
        panic!("did not converge:\n{}\n{report}", v.table());
    }
    assert!(settled, "did not settle:\n{}", v.table());
    assert!(v.agree, "consumers disagree with the truth:\n{}", v.table());
    assert_eq!(
        v.truth.rides,
        RIDES,
        "every simulated ride exists once:\n{}",
        v.table()
    );
    assert_eq!(v.consumers.len(), 2);
    for c in &v.consumers {
        assert_eq!(
            (c.rides, c.distance_mm),
            (v.truth.rides, v.truth.distance_mm)
        );
    }
    assert_eq!(status.publishing_on, db.url, "{status:?}");
    assert!(
        status.consumers.iter().all(|(_, on)| *on == db.url),
        "{status:?}"
    );
    assert!(
        kafka_len > 0,
        "records were published on Kafka between the cutovers"
    );
    let f = faults.counts();
    assert!(
        f.double_sends > 0 && f.consumer_crashes > 0 && f.api_crashes > 0,
        "{f:?}"
    );
    db.drop_now().await;
}
