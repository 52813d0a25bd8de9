//! In-process metrics: how long a record takes from its commit to being consumed.
//!
//! Every consumer records, for each ride it counted in a committed batch, the time between the
//! staging transaction (`recorded_at_ms`) and the consumer's commit. The demo prints the p50 and
//! p99 of these samples. Samples are kept in memory (capped, so a long-running `serve` does not
//! grow without bound: past the cap, the oldest half is dropped).

use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// The most samples kept.
const MAX_SAMPLES: usize = 200_000;

/// Commit-to-consumed latency samples, shared by the consumers of one process.
#[derive(Debug, Default)]
pub struct Metrics {
    latencies_ms: Mutex<Vec<u64>>,
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
    /// An empty recorder.
    pub fn new() -> Self {
        Self::default()
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
