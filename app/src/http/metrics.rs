//! `GET /metrics`: the Prometheus text format (version 0.0.4).
//!
//! A scrape encodes two kinds of series:
//!
//! - the process's **counters and histograms** ([`crate::metrics::Metrics`]), updated by the
//!   services as they work (HTTP requests, phases, streamer, consumers of this process), and
//!   the faults injected by this process;
//! - **gauges read from the stats snapshot** (the document of `GET /stats`, computed at most
//!   once a second by one background refresh, see [`super::stats`]): the outbox backlog and
//!   its oldest record's age, each registered consumer's lag in records and seconds, its
//!   totals, the lease holders, how long the Postgres-only log is held back, the replica.
//!   They describe the whole store, so every process of a fleet reports the same values
//!   (aggregate them with `max`, not `sum`). A scrape never computes them itself: it reads
//!   the latest snapshot and starts a refresh when one is due.
//!
//! The API serves it on its own listener ([`super::router`]); processes without the API
//! (`rides streamer`, `consumer`, `sync`, `completer`, `reaper`, `trimmer`) serve it on
//! `--metrics-listen ADDR` ([`serve_metrics`]).

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{HeaderValue, Method, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use prometheus_client::encoding::prometheus_text;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::{Registry, Unit};
use serde_json::Value;
use tokio::net::TcpListener;

use super::StatsProvider;
use super::stats::{STATS_MIN_INTERVAL, StatsCache};
use crate::faults::Faults;
use crate::metrics::{Metrics, PREFIX};

/// A gauge holding a float.
type FGauge = Gauge<f64, AtomicU64>;
/// A family of float gauges with free-form labels.
type FGauges = Family<Vec<(String, String)>, FGauge>;

/// Where a scrape reads from.
#[derive(Clone)]
pub struct MetricsSource {
    /// The process's counters and histograms.
    pub metrics: Arc<Metrics>,
    /// The process's fault injector.
    pub faults: Arc<Faults>,
    /// The stats snapshot (`None`: no gauges from it).
    pub(crate) stats: Option<Arc<StatsCache>>,
}

impl std::fmt::Debug for MetricsSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsSource")
            .field("stats", &self.stats.is_some())
            .finish_non_exhaustive()
    }
}

impl MetricsSource {
    /// A source over `metrics` and `faults`, with gauges from a snapshot of `stats` computed
    /// at most once a second.
    pub fn new(
        metrics: Arc<Metrics>,
        faults: Arc<Faults>,
        stats: Option<Arc<dyn StatsProvider>>,
    ) -> Self {
        Self {
            metrics,
            faults,
            stats: stats.map(|p| Arc::new(StatsCache::new(p, STATS_MIN_INTERVAL))),
        }
    }

    /// The exposition: every series, in the Prometheus text format.
    pub async fn render(&self) -> String {
        let snapshot = match &self.stats {
            Some(cache) => Some(cache.current().await),
            None => None,
        };
        let mut out = String::new();
        // Writing to a String cannot fail.
        let _ = prometheus_text::encode(&mut out, self.metrics.registry());
        let _ = prometheus_text::encode(&mut out, &self.scrape_registry(snapshot));
        out
    }

    /// The series read at scrape time: faults, and the snapshot's gauges.
    fn scrape_registry(&self, snapshot: Option<Option<(Arc<Value>, Duration)>>) -> Registry {
        let mut r = Registry::with_prefix(PREFIX);
        let faults = Family::<Vec<(String, String)>, Counter>::default();
        let counts = self.faults.counts();
        for (kind, n) in [
            ("double_send", counts.double_sends),
            ("consumer_crash", counts.consumer_crashes),
            ("api_crash", counts.api_crashes),
        ] {
            faults
                .get_or_create(&vec![("kind".to_owned(), kind.to_owned())])
                .inc_by(n);
        }
        r.register(
            "faults_injected",
            "Faults injected by this process, by kind",
            faults,
        );
        let Some(snapshot) = snapshot else {
            return r;
        };
        let up = gauge(snapshot.is_some() as u8 as f64);
        r.register(
            "stats_up",
            "1 when the latest stats snapshot (the source of the store-wide gauges) succeeded",
            up,
        );
        let Some((doc, age)) = snapshot else {
            return r;
        };
        r.register_with_unit(
            "stats_snapshot_age",
            "Age of the stats snapshot the store-wide gauges come from",
            Unit::Seconds,
            gauge(age.as_secs_f64()),
        );
        snapshot_gauges(&mut r, &doc);
        r
    }
}

/// A float gauge set to `v`.
fn gauge(v: f64) -> FGauge {
    let g = FGauge::default();
    g.set(v);
    g
}

/// `v[key]` as a float.
fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64)
}

/// One label pair.
fn label(k: &str, v: &str) -> (String, String) {
    (k.to_owned(), v.to_owned())
}

/// The gauges of a stats document (a [`crate::demo::Verdict`]).
fn snapshot_gauges(r: &mut Registry, doc: &Value) {
    r.register(
        "outbox_staged",
        "Records staged in the outbox, not yet moved to the log by the streamer",
        gauge(num(doc, "staged").unwrap_or(0.0)),
    );
    r.register_with_unit(
        "outbox_oldest_staged_age",
        "Age of the oldest record staged in the outbox (0 when it is empty)",
        Unit::Seconds,
        gauge(num(doc, "staged_oldest_age_s").unwrap_or(0.0)),
    );
    r.register_with_unit(
        "log_held_back",
        "How long the Postgres-only log is held back by an in-flight transaction (0 when \
         nothing is, and for the other logs)",
        Unit::Seconds,
        gauge(num(doc, "held_back_ms").unwrap_or(0.0) / 1000.0),
    );
    let with_truth = doc.get("truth").is_some();
    let [lag, lag_s, rides, dups, parked, agrees] = [(); 6].map(|()| FGauges::default());
    let [gaps, lost] = [(); 2].map(|()| FGauges::default());
    // Records a consumer's log lost (`domain::gaps`): every consumer, distance or not.
    let lost_records = |c: &Value, l: &Vec<(String, String)>| {
        let list = c.get("gaps").and_then(Value::as_array);
        let known: f64 = list
            .into_iter()
            .flatten()
            .filter_map(|g| Some(num(g, "to_seq")? - num(g, "from_seq")? + 1.0))
            .sum();
        gaps.get_or_create(l).set(list.map_or(0, Vec::len) as f64);
        lost.get_or_create(l).set(known);
    };
    for c in doc
        .get("consumers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = c.get("name").and_then(Value::as_str) else {
            continue;
        };
        let l = vec![label("consumer", name)];
        lost_records(c, &l);
        if let Some(v) = num(c, "lag") {
            lag.get_or_create(&l).set(v);
        }
        if let Some(v) = num(c, "lag_s") {
            lag_s.get_or_create(&l).set(v);
        }
        rides.get_or_create(&l).set(num(c, "rides").unwrap_or(0.0));
        dups.get_or_create(&l)
            .set(num(c, "duplicates").unwrap_or(0.0));
        parked
            .get_or_create(&l)
            .set(num(c, "parked").unwrap_or(0.0));
        if with_truth {
            let agree = c.get("agrees").and_then(Value::as_bool).unwrap_or(false);
            agrees.get_or_create(&l).set(agree as u8 as f64);
        }
    }
    for c in doc
        .get("other_consumers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let Some(name) = c.get("name").and_then(Value::as_str) else {
            continue;
        };
        let l = vec![label("consumer", name)];
        lost_records(c, &l);
        if let Some(v) = num(c, "lag") {
            lag.get_or_create(&l).set(v);
        }
        if let Some(v) = num(c, "lag_s") {
            lag_s.get_or_create(&l).set(v);
        }
        dups.get_or_create(&l)
            .set(num(c, "duplicates").unwrap_or(0.0));
    }
    r.register(
        "consumer_lost_gaps",
        "Gaps a consumer found in its log (records the log lost; an error state until \
         `rides log repair` fills them or they are acknowledged)",
        gaps,
    );
    r.register(
        "consumer_lost_records",
        "Records a consumer's log lost, in its gaps of known size (open-ended gaps count 0)",
        lost,
    );
    r.register(
        "consumer_lag_records",
        "Records in the log after a consumer's checkpoint",
        lag,
    );
    r.register_with_unit(
        "consumer_lag",
        "Age of the oldest record a consumer has not consumed yet (0 when it is caught up)",
        Unit::Seconds,
        lag_s,
    );
    r.register(
        "consumer_counted_rides",
        "Rides a distance consumer has counted (its checkpoint's total)",
        rides,
    );
    r.register(
        "consumer_checkpoint_duplicates_skipped",
        "Duplicates a consumer has skipped over its life (from its checkpoint)",
        dups,
    );
    r.register(
        "consumer_parked",
        "Records in a consumer's dead-letter list",
        parked,
    );
    let holders = FGauges::default();
    let epochs = FGauges::default();
    for l in doc
        .get("leases")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let (Some(scope), Some(holder)) = (
            l.get("scope").and_then(Value::as_str),
            l.get("holder").and_then(Value::as_str),
        ) else {
            continue;
        };
        holders
            .get_or_create(&vec![label("scope", scope), label("holder", holder)])
            .set(1.0);
        epochs
            .get_or_create(&vec![label("scope", scope)])
            .set(num(l, "epoch").unwrap_or(0.0));
    }
    r.register(
        "lease_holder",
        "1 for the instance holding each live lease (scope: the service, holder: the instance)",
        holders,
    );
    r.register(
        "lease_epoch",
        "Each live lease's epoch (incremented at every takeover)",
        epochs,
    );
    if let Some(truth) = doc.get("truth") {
        r.register(
            "consumer_agrees",
            "1 when a distance consumer's totals equal the store's truth",
            agrees,
        );
        r.register(
            "truth_rides",
            "Rides in the canonical store",
            gauge(num(truth, "rides").unwrap_or(0.0)),
        );
        r.register(
            "truth_unfinished_keys",
            "Idempotency keys not finished yet",
            gauge(num(truth, "unfinished_keys").unwrap_or(0.0)),
        );
    }
    if let Some(replica) = doc.get("replica") {
        r.register(
            "replica_rows",
            "Rows in the replica",
            gauge(num(replica, "rows").unwrap_or(0.0)),
        );
        r.register(
            "replica_mismatches",
            "Replica rows that differ from the store's, are missing or extra",
            gauge(num(replica, "mismatches").unwrap_or(0.0)),
        );
        if let Some(v) = num(replica, "lag") {
            r.register(
                "replica_lag_records",
                "Records after the sync consumer's checkpoint",
                gauge(v),
            );
        }
    }
}

/// The `GET /metrics` response.
pub(super) async fn metrics(State(source): State<MetricsSource>) -> Response {
    let body = source.render().await;
    let mut resp = body.into_response();
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(prometheus_text::CONTENT_TYPE),
    );
    resp
}

/// A router serving only `GET /metrics`.
pub fn metrics_router(source: MetricsSource) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .with_state(source)
}

/// Counts every request the router answers, by route pattern, method and status.
pub(super) async fn track(State(m): State<Arc<Metrics>>, req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = match *req.method() {
        Method::GET
        | Method::POST
        | Method::PUT
        | Method::DELETE
        | Method::PATCH
        | Method::HEAD
        | Method::OPTIONS => req.method().as_str().to_owned(),
        _ => "other".to_owned(),
    };
    let started = Instant::now();
    let resp = next.run(req).await;
    m.http_request(&route, &method, resp.status().as_u16(), started.elapsed());
    resp
}

/// Serves `GET /metrics` on `listener` until `shutdown` completes (`--metrics-listen`, for
/// processes without the API).
///
/// # Errors
/// When the server fails.
pub async fn serve_metrics(
    listener: TcpListener,
    source: MetricsSource,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "metrics listening");
    }
    axum::serve(listener, metrics_router(source))
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lost_records_are_gauges_per_consumer() {
        let doc = serde_json::json!({
            "consumers": [{"name": "distance-a", "rides": 3, "gaps": [
                {"producer": "p", "lane": 0, "from_seq": 13, "to_seq": 27, "detected_at_ms": 1},
                {"producer": "q", "lane": 0, "from_seq": 5, "detected_at_ms": 1}
            ]}],
            "other_consumers": [{"name": "sync", "duplicates": 0, "gaps": []}]
        });
        let mut r = Registry::with_prefix(PREFIX);
        snapshot_gauges(&mut r, &doc);
        let mut out = String::new();
        prometheus_text::encode(&mut out, &r).unwrap();
        let line = |l: &str| out.lines().any(|x| x == l);
        assert!(
            line(&format!(
                "{PREFIX}_consumer_lost_gaps{{consumer=\"distance-a\"}} 2.0"
            )),
            "{out}"
        );
        assert!(
            line(&format!(
                "{PREFIX}_consumer_lost_records{{consumer=\"distance-a\"}} 15.0"
            )),
            "{out}"
        );
        assert!(
            line(&format!(
                "{PREFIX}_consumer_lost_gaps{{consumer=\"sync\"}} 0.0"
            )),
            "{out}"
        );
    }
}
