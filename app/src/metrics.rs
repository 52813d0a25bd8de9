//! In-process metrics: the Prometheus registry of a process, and commit-to-consumed latency
//! samples.
//!
//! One [`Metrics`] is shared by every service of a process ([`crate::services::Fleet`] makes
//! it). It holds:
//!
//! - the **counters and histograms** that the services update as they work, in a
//!   [`prometheus_client`] registry of the process's own (no global recorder, so every test
//!   has its own): HTTP requests, phase durations and conflicts, streamer batches and
//!   records, consumer records, duplicates and commit-to-consumed latency. `GET /metrics`
//!   ([`crate::http::metrics`]) encodes them with the gauges read from the `/stats`
//!   snapshot (lags, leases, outbox, held back);
//! - **latency samples**: every consumer records, for each ride it counted in a committed
//!   batch, the time between the staging transaction (`recorded_at_ms`) and the consumer's
//!   commit. The demo prints the p50 and p99 of these samples. Samples are kept in memory
//!   (capped, so a long-running `serve` does not grow without bound: past the cap, the
//!   oldest half is dropped).

use std::sync::Mutex;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use serde::{Deserialize, Serialize};

/// The most samples kept.
const MAX_SAMPLES: usize = 200_000;

/// The prefix of every metric name.
pub const PREFIX: &str = "rides";

/// Labels of the HTTP metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HttpLabels {
    /// The route's pattern (`/rides/{id}`), or `unmatched`.
    route: String,
    /// The method (`GET`, `POST`…, `other` for unusual ones).
    method: String,
    /// The response's status code.
    status: u16,
}

/// Labels of the phase metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PhaseLabels {
    /// `begin`, `charge` (`create_ride`, `stage_receipt` for keys of older versions).
    phase: String,
}

/// Labels of the per-consumer metrics.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ConsumerLabels {
    /// The consumer's name.
    consumer: String,
}

/// A histogram constructor (a plain `fn`, so families of histograms have a nameable type).
type NewHistogram = fn() -> Histogram;

/// Buckets from 0.5 ms to about 16 s, doubling: request and phase durations.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0005, 2.0, 16))
}

/// Buckets from 1 ms to about 65 s, doubling: commit-to-consumed latency.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// Commit-to-consumed latency samples and the process's Prometheus registry, shared by the
/// services of one process.
pub struct Metrics {
    latencies_ms: Mutex<Vec<u64>>,
    registry: Registry,
    http_requests: Family<HttpLabels, Counter>,
    http_duration: Family<HttpLabels, Histogram, NewHistogram>,
    phase_duration: Family<PhaseLabels, Histogram, NewHistogram>,
    phase_conflicts: Family<PhaseLabels, Counter>,
    streamer_batches: Counter,
    streamer_records: Counter,
    published_batches: Counter,
    published_records: Counter,
    consumer_records: Family<ConsumerLabels, Counter>,
    consumer_duplicates: Family<ConsumerLabels, Counter>,
    consumer_latency: Family<ConsumerLabels, Histogram, NewHistogram>,
    connections_open: Gauge,
    connections_evicted: Counter,
    connections_refused: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Percentiles of the latency samples, in milliseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    /// Median.
    pub p50: u64,
    /// 99th percentile.
    pub p99: u64,
    /// How many samples.
    pub samples: u64,
}

impl Metrics {
    /// An empty recorder with its own registry.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix(PREFIX);
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests answered by the API's router, by route pattern, method and status",
            http_requests.clone(),
        );
        let http_duration: Family<HttpLabels, Histogram, NewHistogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "http_request_duration",
            "Time from a request's arrival at the router to its response",
            Unit::Seconds,
            http_duration.clone(),
        );
        let phase_duration: Family<PhaseLabels, Histogram, NewHistogram> =
            Family::new_with_constructor(duration_histogram);
        registry.register_with_unit(
            "phase_duration",
            "Duration of the atomic phases of POST /rides (begin: commit 1, the key and the \
             ride; charge: the payment processor's call and commit 2)",
            Unit::Seconds,
            phase_duration.clone(),
        );
        let phase_conflicts = Family::<PhaseLabels, Counter>::default();
        registry.register(
            "phase_conflicts",
            "Atomic phases that ended in a serialization conflict (answered 409)",
            phase_conflicts.clone(),
        );
        let streamer_batches = Counter::default();
        registry.register(
            "streamer_batches",
            "Batches the streamer appended to the log (outbox to log)",
            streamer_batches.clone(),
        );
        let streamer_records = Counter::default();
        registry.register(
            "streamer_records",
            "Records the streamer moved from the outbox to the log",
            streamer_records.clone(),
        );
        let published_batches = Counter::default();
        registry.register(
            "direct_publish_batches",
            "Batches the API appended to the log right after its commits (--publish direct)",
            published_batches.clone(),
        );
        let published_records = Counter::default();
        registry.register(
            "direct_publish_records",
            "Records the API appended to the log right after its commits (--publish direct)",
            published_records.clone(),
        );
        let consumer_records = Family::<ConsumerLabels, Counter>::default();
        registry.register(
            "consumer_records",
            "Records a consumer of this process handled and committed (duplicates excluded)",
            consumer_records.clone(),
        );
        let consumer_duplicates = Family::<ConsumerLabels, Counter>::default();
        registry.register(
            "consumer_duplicates_skipped",
            "Duplicate records a consumer of this process skipped in committed batches",
            consumer_duplicates.clone(),
        );
        let consumer_latency: Family<ConsumerLabels, Histogram, NewHistogram> =
            Family::new_with_constructor(latency_histogram);
        registry.register_with_unit(
            "consumer_commit_to_consumed",
            "Time from a record's staging transaction to the consumer's commit of it",
            Unit::Seconds,
            consumer_latency.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "http_connections_open",
            "Connections the API's server holds open",
            connections_open.clone(),
        );
        let connections_evicted = Counter::default();
        registry.register(
            "http_connections_evicted",
            "Idle or slow connections closed at the connection cap to admit new ones",
            connections_evicted.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "Connections refused with a 503 at the cap (every open one had a request in flight)",
            connections_refused.clone(),
        );
        Self {
            latencies_ms: Mutex::new(Vec::new()),
            connections_open,
            connections_evicted,
            connections_refused,
            registry,
            http_requests,
            http_duration,
            phase_duration,
            phase_conflicts,
            streamer_batches,
            streamer_records,
            published_batches,
            published_records,
            consumer_records,
            consumer_duplicates,
            consumer_latency,
        }
    }

    /// The registry of the counters and histograms (encode it with
    /// [`prometheus_client::encoding::prometheus_text::encode`]).
    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Counts one HTTP request answered by the router.
    pub fn http_request(&self, route: &str, method: &str, status: u16, took: Duration) {
        let labels = HttpLabels {
            route: route.to_owned(),
            method: method.to_owned(),
            status,
        };
        self.http_requests.get_or_create(&labels).inc();
        self.http_duration
            .get_or_create(&labels)
            .observe(took.as_secs_f64());
    }

    /// A connection was admitted (`+1`) or closed (`-1`).
    pub fn connection_open(&self, delta: i64) {
        self.connections_open.inc_by(delta);
    }

    /// A connection was evicted at the cap.
    pub fn connection_evicted(&self) {
        self.connections_evicted.inc();
    }

    /// A connection was refused at the cap.
    pub fn connection_refused(&self) {
        self.connections_refused.inc();
    }

    /// Records one atomic phase's duration.
    pub fn phase(&self, phase: &str, took: Duration) {
        self.phase_duration
            .get_or_create(&PhaseLabels {
                phase: phase.to_owned(),
            })
            .observe(took.as_secs_f64());
    }

    /// Counts a serialization conflict in `phase`.
    pub fn phase_conflict(&self, phase: &str) {
        self.phase_conflicts
            .get_or_create(&PhaseLabels {
                phase: phase.to_owned(),
            })
            .inc();
    }

    /// Counts one batch of `records` appended by the streamer.
    pub fn streamer_batch(&self, records: usize) {
        self.streamer_batches.inc();
        self.streamer_records.inc_by(records as u64);
    }

    /// Counts one batch of `records` appended by direct publishing.
    pub fn published_batch(&self, records: usize) {
        self.published_batches.inc();
        self.published_records.inc_by(records as u64);
    }

    /// Counts a consumer's committed batch: `records` handled, `duplicates` skipped.
    pub fn consumer_batch(&self, consumer: &str, records: usize, duplicates: u64) {
        let labels = ConsumerLabels {
            consumer: consumer.to_owned(),
        };
        self.consumer_records
            .get_or_create(&labels)
            .inc_by(records as u64);
        self.consumer_duplicates
            .get_or_create(&labels)
            .inc_by(duplicates);
    }

    /// Records one commit-to-consumed latency of `consumer` (a sample for the percentiles
    /// too).
    pub fn consumed(&self, consumer: &str, ms: i64) {
        self.consumer_latency
            .get_or_create(&ConsumerLabels {
                consumer: consumer.to_owned(),
            })
            .observe(ms.max(0) as f64 / 1000.0);
        self.record_latency(ms);
    }

    /// Records one latency sample (negative values, from clock skew, count as 0).
    pub fn record_latency(&self, ms: i64) {
        let mut v = self.latencies_ms.lock().unwrap_or_else(|e| e.into_inner());
        if v.len() >= MAX_SAMPLES {
            v.drain(..MAX_SAMPLES / 2);
        }
        v.push(ms.max(0) as u64);
    }

    /// The percentiles so far (all zero without samples).
    pub fn latency(&self) -> Latency {
        let mut v = self
            .latencies_ms
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if v.is_empty() {
            return Latency::default();
        }
        v.sort_unstable();
        let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
        Latency {
            p50: at(0.50),
            p99: at(0.99),
            samples: v.len() as u64,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_known_samples() {
        let m = Metrics::new();
        assert_eq!(m.latency(), Latency::default());
        for i in 1..=100 {
            m.record_latency(i);
        }
        m.record_latency(-5);
        let l = m.latency();
        assert_eq!((l.p50, l.p99, l.samples), (50, 99, 101));
    }
}
