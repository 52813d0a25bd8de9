//! `GET /metrics`: the Prometheus text format, parsed by a Prometheus text-format parser
//! (`prometheus-parse`) and checked line by line, with the series an operator needs and sane
//! values after rides are created: on the API's listener, and on `--metrics-listen` for a
//! process without the API.

mod http_common;

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use app::faults::Faults;
use app::metrics::Metrics;
use app::services::{Fleet, FleetConfig, Intervals, Streamer, distance_consumer};
use app::wiring::{self, OpenedLog, Stores};
use domain::{IdempotencyKey, RideParams, RideRequest};
use prometheus_parse::{Sample, Scrape, Value as PValue};

const USER: &str = "metrics@example.com";
const FORM: &str = "origin_lat=37.76&origin_lon=-122.42&target_lat=37.78&target_lon=-122.40";

/// One scrape: the raw text, parsed.
struct Scraped {
    text: String,
    scrape: Scrape,
}

impl Scraped {
    /// The samples of `metric` whose labels include `labels`.
    fn find(&self, metric: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
        self.scrape
            .samples
            .iter()
            .filter(|s| s.metric == metric)
            .filter(|s| labels.iter().all(|(k, v)| s.labels.get(k) == Some(*v)))
            .collect()
    }

    /// The value of the one sample of `metric` with `labels` (counters, gauges, untyped).
    fn value(&self, metric: &str, labels: &[(&str, &str)]) -> f64 {
        let found = self.find(metric, labels);
        assert_eq!(
            found.len(),
            1,
            "one sample of {metric} {labels:?} expected in:\n{}",
            self.text
        );
        match &found[0].value {
            PValue::Counter(v) | PValue::Gauge(v) | PValue::Untyped(v) => *v,
            other => panic!("{metric} is not a plain value: {other:?}"),
        }
    }

    /// Whether a sample of `metric` with `labels` exists.
    fn has(&self, metric: &str, labels: &[(&str, &str)]) -> bool {
        !self.find(metric, labels).is_empty()
    }
}

/// Checks the exposition line by line (what a strict Prometheus parser would refuse): every
/// sample belongs to a family declared by `# TYPE` before it, names and labels are well
/// formed, values are numbers; then parses it with `prometheus-parse`.
fn parse(text: &str) -> Scraped {
    let mut families: BTreeMap<String, String> = BTreeMap::new();
    let name_ok = |n: &str| {
        !n.is_empty()
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
            && !n.starts_with(|c: char| c.is_ascii_digit())
    };
    for line in text.lines() {
        if line.is_empty() {
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').expect("# TYPE name kind");
            assert!(name_ok(name), "bad family name in {line:?}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line:?}"
            );
            assert!(
                families.insert(name.to_owned(), kind.to_owned()).is_none(),
                "family {name} declared twice"
            );
            continue;
        }
        if line.starts_with("# HELP ") {
            continue;
        }
        assert!(!line.starts_with('#'), "unexpected comment {line:?}");
        let (series, value) = line.rsplit_once(' ').expect("series value");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        assert!(!value.is_nan(), "{line:?}");
        let name = series.split('{').next().unwrap();
        assert!(name_ok(name), "bad metric name in {line:?}");
        let labels = &series[name.len()..];
        assert!(
            labels.is_empty() || (labels.starts_with('{') && labels.ends_with('}')),
            "bad labels in {line:?}"
        );
        let family = families
            .keys()
            .filter(|f| name.starts_with(f.as_str()))
            .max_by_key(|f| f.len())
            .unwrap_or_else(|| panic!("{name} has no # TYPE before it"));
        let suffix = &name[family.len()..];
        let allowed: &[&str] = match families[family].as_str() {
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["", "_sum", "_count"],
            _ => &[""],
        };
        assert!(allowed.contains(&suffix), "{name} in family {family}");
    }
    let scrape = Scrape::parse(text.lines().map(|l| Ok(l.to_owned()))).expect("parses");
    assert!(!scrape.samples.is_empty());
    Scraped {
        text: text.to_owned(),
        scrape,
    }
}

/// `GET http://addr/metrics`, checked and parsed.
async fn scrape(addr: std::net::SocketAddr) -> Scraped {
    let resp = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    parse(&resp.text().await.unwrap())
}

/// Scrapes until `ready` holds (the store-wide gauges come from a snapshot refreshed at most
/// once a second).
async fn scrape_until(
    addr: std::net::SocketAddr,
    what: &str,
    ready: impl Fn(&Scraped) -> bool,
) -> Scraped {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = scrape(addr).await;
        if ready(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {what}:\n{}",
            s.text
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn memory() -> (Stores, OpenedLog) {
    let stores = wiring::open_store("memory://").await.unwrap();
    let log = wiring::open_log("memory://", &stores).await.unwrap();
    stores.store.ensure_user(USER).await.unwrap();
    (stores, log)
}

async fn post_ride(client: &reqwest::Client, addr: std::net::SocketAddr) -> u16 {
    client
        .post(format!("http://{addr}/rides"))
        .header("Authorization", USER)
        .header("Idempotency-Key", uuid::Uuid::new_v4().to_string())
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body(FORM)
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_api_serves_metrics_that_parse_with_sane_values_after_rides() {
    let (stores, log) = memory().await;
    let stores = stores.with_replica("memory://").await.unwrap();
    let fleet = Fleet::start(
        &stores,
        &log,
        FleetConfig {
            listen: Some(([127, 0, 0, 1], 0).into()),
            streamer: true,
            consumers: vec!["distance-a".into()],
            sync: true,
            intervals: Intervals::demo(),
            ..FleetConfig::nothing()
        },
    )
    .await
    .unwrap();
    let addr = fleet.addr().unwrap();
    let client = reqwest::Client::new();
    const RIDES: u64 = 12;
    for _ in 0..RIDES {
        assert_eq!(post_ride(&client, addr).await, 201);
    }
    // A 404 and a 401 are counted under their own labels.
    let r = client
        .get(format!("http://{addr}/nowhere"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = client
        .get(format!("http://{addr}/rides"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);

    let n = RIDES as f64;
    let consumer = [("consumer", "distance-a")];
    let m = scrape_until(addr, "distance-a caught up", |s| {
        s.has("rides_consumer_counted_rides", &consumer)
            && s.value("rides_consumer_counted_rides", &consumer) == n
            && s.value("rides_consumer_lag_records", &consumer) == 0.0
            && s.value("rides_outbox_staged", &[]) == 0.0
            && s.has("rides_lease_holder", &[("scope", "consumer:distance-a")])
            && s.has("rides_replica_rows", &[])
            && s.value("rides_replica_rows", &[]) == n
    })
    .await;

    // HTTP requests by route, method and status, with latency histograms.
    let created = [("route", "/rides"), ("method", "POST"), ("status", "201")];
    assert_eq!(m.value("rides_http_requests_total", &created), n);
    assert_eq!(
        m.value("rides_http_request_duration_seconds_count", &created),
        n
    );
    let h = m.find("rides_http_request_duration_seconds", &created);
    let PValue::Histogram(buckets) = &h[0].value else {
        panic!("a histogram");
    };
    let inf = buckets.iter().find(|b| b.less_than.is_infinite()).unwrap();
    assert_eq!(inf.count, n, "every request is in the +Inf bucket");
    assert!(m.value("rides_http_request_duration_seconds_sum", &created) > 0.0);
    assert_eq!(
        m.value(
            "rides_http_requests_total",
            &[("route", "unmatched"), ("status", "404")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "rides_http_requests_total",
            &[("route", "/rides"), ("method", "GET"), ("status", "401")]
        ),
        1.0
    );

    // This scrape's own connection, at least, is open; nothing hit the cap.
    assert!(m.value("rides_http_connections_open", &[]) >= 1.0);
    assert_eq!(m.value("rides_http_connections_refused_total", &[]), 0.0);

    // Phases: every ride went through both commits once (`create_ride` and `stage_receipt`
    // only run for keys of older versions); no conflicts without contention.
    assert!(!m.has(
        "rides_phase_duration_seconds_count",
        &[("phase", "create_ride")]
    ));
    for phase in ["begin", "charge"] {
        assert_eq!(
            m.value("rides_phase_duration_seconds_count", &[("phase", phase)]),
            n,
            "{phase}"
        );
    }
    assert!(!m.has("rides_phase_conflicts_total", &[]));

    // The streamer moved every record (a ride and its receipt each stage records).
    let moved = m.value("rides_streamer_records_total", &[]);
    assert!(moved >= n, "{moved}");
    let batches = m.value("rides_streamer_batches_total", &[]);
    assert!((1.0..=moved).contains(&batches), "{batches}");

    // The consumer: in-process counters, and the store-wide gauges from the snapshot.
    assert_eq!(m.value("rides_consumer_records_total", &consumer), moved);
    assert_eq!(
        m.value("rides_consumer_duplicates_skipped_total", &consumer),
        0.0
    );
    assert_eq!(
        m.value("rides_consumer_commit_to_consumed_seconds_count", &consumer),
        n,
        "one latency sample per ride counted"
    );
    assert_eq!(m.value("rides_consumer_lag_seconds", &consumer), 0.0);
    assert_eq!(m.value("rides_consumer_agrees", &consumer), 1.0);
    assert_eq!(m.value("rides_consumer_parked", &consumer), 0.0);
    assert_eq!(m.value("rides_truth_rides", &[]), n);
    let holder = m.find("rides_lease_holder", &[("scope", "consumer:distance-a")]);
    assert_eq!(holder.len(), 1, "one holder per lease");
    assert!(!holder[0].labels.get("holder").unwrap_or("").is_empty());
    assert_eq!(m.value("rides_outbox_oldest_staged_age_seconds", &[]), 0.0);
    assert_eq!(m.value("rides_log_held_back_seconds", &[]), 0.0);

    // The sync consumer is a consumer too: its records, lag and lease.
    let sync = [("consumer", "replica")];
    assert_eq!(m.value("rides_consumer_records_total", &sync), moved);
    assert_eq!(m.value("rides_consumer_lag_records", &sync), 0.0);
    assert_eq!(m.value("rides_consumer_lag_seconds", &sync), 0.0);
    assert!(m.has("rides_lease_holder", &[("scope", "consumer:replica")]));
    assert_eq!(m.value("rides_replica_mismatches", &[]), 0.0);
    assert_eq!(m.value("rides_replica_lag_records", &[]), 0.0);
    for kind in ["double_send", "consumer_crash", "api_crash"] {
        assert_eq!(
            m.value("rides_faults_injected_total", &[("kind", kind)]),
            0.0
        );
    }
    assert_eq!(m.value("rides_stats_up", &[]), 1.0);
    let age = m.value("rides_stats_snapshot_age_seconds", &[]);
    assert!((0.0..5.0).contains(&age), "{age}");

    // Every family is documented in the README's metrics table.
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md")).unwrap();
    let families: HashSet<&str> = m
        .text
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .filter_map(|l| l.split(' ').next())
        .collect();
    for f in families {
        assert!(
            readme.contains(&format!("`{f}")),
            "{f} is not in the README"
        );
    }
    fleet.stop(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn lags_in_records_and_seconds_and_the_outbox_backlog_are_gauges() {
    let (stores, log) = memory().await;
    let faults = Arc::new(Faults::none());
    // A process without the API (a Procfile's completer, say), serving --metrics-listen.
    let fleet = Fleet::start(
        &stores,
        &log,
        FleetConfig {
            metrics_listen: Some(([127, 0, 0, 1], 0).into()),
            faults: faults.clone(),
            ..FleetConfig::nothing()
        },
    )
    .await
    .unwrap();
    assert_eq!(fleet.addr(), None, "no API");
    let addr = fleet.metrics_addr().unwrap();
    // A consumer that is registered but not running.
    let idle = distance_consumer(
        "distance-idle",
        log.log.clone(),
        stores.consumers.clone(),
        Arc::new(ports::SystemClock),
        faults.clone(),
        Arc::new(Metrics::new()),
    );
    idle.register().await.unwrap();
    let user = stores.store.user_by_email(USER).await.unwrap().unwrap();
    const RIDES: u64 = 5;
    let request = RideRequest {
        params: RideParams::new(37.76, -122.42, 37.78, -122.40).unwrap(),
        raise_error: false,
    };
    for _ in 0..RIDES {
        let key = IdempotencyKey::parse(Some(&uuid::Uuid::new_v4().to_string())).unwrap();
        let reply = fleet
            .rides()
            .create_ride(&user, &key, &request, "127.0.0.1")
            .await;
        assert_eq!(reply.status, 201);
    }

    // No streamer: the records wait in the outbox, getting older.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let m = scrape_until(addr, "the outbox backlog", |s| {
        s.has("rides_outbox_staged", &[])
            && s.value("rides_outbox_staged", &[]) > 0.0
            && s.value("rides_outbox_oldest_staged_age_seconds", &[]) >= 1.0
    })
    .await;
    let staged = m.value("rides_outbox_staged", &[]);
    assert!(staged >= RIDES as f64, "{staged}");
    let consumer = [("consumer", "distance-idle")];
    assert_eq!(m.value("rides_consumer_lag_records", &consumer), 0.0);
    assert_eq!(m.value("rides_consumer_lag_seconds", &consumer), 0.0);
    // Without the API, the truth and the replica (full scans) are not computed.
    assert!(!m.has("rides_truth_rides", &[]), "{}", m.text);
    assert!(!m.has("rides_consumer_agrees", &[]));
    // Nothing moved or consumed in this process.
    assert!(
        !m.has("rides_streamer_records_total", &[]) || {
            m.value("rides_streamer_records_total", &[]) == 0.0
        }
    );
    assert!(!m.has("rides_http_requests_total", &[]));

    // The streamer moves them to the log: the idle consumer now lags by all of them, the
    // oldest as old as the first ride.
    let streamer = Streamer::new(stores.outbox.clone(), log.log.clone(), faults.clone());
    while streamer.step().await.unwrap() != app::services::Outcome::Idle {}
    let m = scrape_until(addr, "the consumer's lag", |s| {
        s.value("rides_outbox_staged", &[]) == 0.0
            && s.value("rides_consumer_lag_records", &consumer) >= RIDES as f64
    })
    .await;
    assert_eq!(m.value("rides_consumer_lag_records", &consumer), staged);
    let lag_s = m.value("rides_consumer_lag_seconds", &consumer);
    assert!((1.0..60.0).contains(&lag_s), "{lag_s}");
    assert_eq!(m.value("rides_outbox_oldest_staged_age_seconds", &[]), 0.0);
    fleet.stop(Duration::from_secs(5)).await;
}

/// A `rides consumer` process on Postgres (the Postgres-only log) serving `--metrics-listen`:
/// its records, its lease, its lag and the held-back gauge, scraped over HTTP.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_process_serves_metrics_listen_on_postgres() {
    use std::process::{Command, Stdio};

    let base = std::env::var("RIDES_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!("this test needs Postgres: set RIDES_TEST_POSTGRES_URL (scripts/test.sh sets it)")
    });
    let schema = format!("metrics_{}", uuid::Uuid::new_v4().simple());
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}schema={schema}");
    let stores = wiring::open_store(&url).await.expect("open the store");
    let records: Vec<domain::NewRecord> = (1..=50)
        .map(|i| domain::NewRecord {
            id: uuid::Uuid::new_v4(),
            stream: "rides".into(),
            key: format!("ride:{i}"),
            kind: "ride.created".into(),
            payload: serde_json::json!({"ride_id": i, "user_id": 1, "distance_mm": 1_000}),
            correlation_id: None,
            causation_id: None,
            recorded_at_ms: ports::Clock::now_ms(&ports::SystemClock),
        })
        .collect();
    stores.outbox.stage(&records).await.unwrap();
    let addr = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_rides"))
        .args(["consumer", "--name", "distance-a"])
        .args(["--store", &url, "--log", &url])
        .args(["--metrics-listen", &addr.to_string()])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start rides consumer");
    // The listener comes up with the process.
    let deadline = Instant::now() + Duration::from_secs(30);
    while reqwest::get(format!("http://{addr}/metrics"))
        .await
        .is_err()
    {
        assert!(Instant::now() < deadline, "no metrics listener on {addr}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let consumer = [("consumer", "distance-a")];
    let m = scrape_until(addr, "distance-a to count and hold its lease", |s| {
        s.has("rides_consumer_records_total", &consumer)
            && s.value("rides_consumer_records_total", &consumer) == 50.0
            && s.has("rides_consumer_counted_rides", &consumer)
            && s.value("rides_consumer_counted_rides", &consumer) == 50.0
            && s.has("rides_lease_holder", &[("scope", "consumer:distance-a")])
    })
    .await;
    assert_eq!(m.value("rides_consumer_lag_records", &consumer), 0.0);
    assert_eq!(m.value("rides_consumer_lag_seconds", &consumer), 0.0);
    assert_eq!(
        m.value("rides_consumer_duplicates_skipped_total", &consumer),
        0.0
    );
    let held = m.value("rides_log_held_back_seconds", &[]);
    assert!((0.0..60.0).contains(&held), "{held}");
    // On the Postgres-only log the outbox is the log: nothing waits for a streamer.
    assert_eq!(m.value("rides_outbox_staged", &[]), 0.0);
    assert!(!m.has("rides_truth_rides", &[]));
    let pid = child.id().to_string();
    Command::new("kill").args(["-TERM", &pid]).status().unwrap();
    child.wait().unwrap();
    let _ = Command::new("psql")
        .arg(&base)
        .args([
            "-qc",
            &format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE"),
        ])
        .output();
}

/// `GET /metrics` on a router without a server.
async fn scrape_router(router: &axum::Router) -> Scraped {
    use tower::ServiceExt as _;
    let resp = router
        .clone()
        .oneshot(
            axum::http::Request::get("/metrics")
                .body(axum::body::Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 200);
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    parse(std::str::from_utf8(&body).unwrap())
}

#[tokio::test]
async fn conflicts_and_injected_faults_are_counted() {
    use http_common::{FailingStore, Harness, always_crash, new_key, post_valid, send};

    // A serialization conflict in the charge phase: a 409, counted under its phase.
    let h = Harness::with(
        Faults::none(),
        adapters::payment::FakeProcessor::default(),
        Some(FailingStore::conflict),
    );
    assert_eq!(send(&h.router, post_valid(&new_key())).await.status, 409);
    let m = scrape_router(&h.router).await;
    assert_eq!(
        m.value("rides_phase_conflicts_total", &[("phase", "charge")]),
        1.0
    );
    assert!(!m.has("rides_phase_conflicts_total", &[("phase", "begin")]));
    assert_eq!(
        m.value(
            "rides_http_requests_total",
            &[("route", "/rides"), ("method", "POST"), ("status", "409")]
        ),
        1.0
    );
    // No stats provider: no store-wide gauges, the process's own series only.
    assert!(!m.has("rides_stats_up", &[]));
    assert!(!m.has("rides_outbox_staged", &[]));

    // An injected API crash.
    let h = Harness::with(
        always_crash(),
        adapters::payment::FakeProcessor::default(),
        None,
    );
    assert_eq!(send(&h.router, post_valid(&new_key())).await.status, 500);
    let m = scrape_router(&h.router).await;
    assert_eq!(
        m.value("rides_faults_injected_total", &[("kind", "api_crash")]),
        1.0
    );
    assert_eq!(
        m.value("rides_faults_injected_total", &[("kind", "double_send")]),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn direct_publishing_is_counted_apart_from_the_streamer() {
    let (stores, log) = memory().await;
    let fleet = Fleet::start(
        &stores,
        &log,
        FleetConfig {
            listen: Some(([127, 0, 0, 1], 0).into()),
            streamer: true,
            publish_direct: Some(Duration::from_secs(30)),
            consumers: vec!["distance-a".into()],
            intervals: Intervals::demo(),
            ..FleetConfig::nothing()
        },
    )
    .await
    .unwrap();
    let addr = fleet.addr().unwrap();
    let client = reqwest::Client::new();
    for _ in 0..4 {
        assert_eq!(post_ride(&client, addr).await, 201);
    }
    let consumer = [("consumer", "distance-a")];
    let m = scrape_until(addr, "distance-a to count the rides", |s| {
        s.has("rides_consumer_counted_rides", &consumer)
            && s.value("rides_consumer_counted_rides", &consumer) == 4.0
    })
    .await;
    let published = m.value("rides_direct_publish_records_total", &[]);
    assert!(published >= 4.0, "{published}");
    assert!(m.value("rides_direct_publish_batches_total", &[]) >= 1.0);
    // The sweeper waits 30 s: everything went directly.
    assert_eq!(m.value("rides_streamer_records_total", &[]), 0.0);
    assert_eq!(
        m.value("rides_consumer_records_total", &consumer),
        published
    );
    fleet.stop(Duration::from_secs(5)).await;
}
