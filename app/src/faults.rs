//! Seeded fault injection.
//!
//! The demo and the tests inject three kinds of faults on purpose, to show that the system
//! converges anyway:
//!
//! - **double send**: the streamer appends a batch twice (as after a crash between the append
//!   and the outbox delete);
//! - **consumer crash**: a consumer folds a batch and then dies before its commit;
//! - **API crash**: a request dies after the charge and before its final phase, leaving its
//!   key locked at `charge_created` for a client retry or the completer.
//!
//! Every decision comes from one seeded generator, so a run with the same seed injects the
//! same sequence of decisions (their interleaving across tasks still depends on scheduling).
//!
//! Every injected fault is logged here, once, at INFO with a `fault` field (`double_send`,
//! `consumer_crash`, `api_crash`): faults are the point of the demo, not warnings. The services
//! add their own context at DEBUG.

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Fault rates, each a probability in `[0, 1]`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct FaultConfig {
    /// Probability that the streamer sends a batch twice.
    pub double_send_rate: f64,
    /// Probability that a consumer crashes after applying a batch, before commit.
    pub consumer_crash_rate: f64,
    /// Probability that a request crashes after the charge, before the final phase.
    pub api_crash_rate: f64,
    /// Seed of the generator.
    pub seed: u64,
}

impl FaultConfig {
    /// No faults.
    pub fn none() -> Self {
        Self {
            double_send_rate: 0.0,
            consumer_crash_rate: 0.0,
            api_crash_rate: 0.0,
            seed: 0,
        }
    }

    /// The demo's rates: about 10 % of each kind.
    pub fn demo(seed: u64) -> Self {
        Self {
            double_send_rate: 0.1,
            consumer_crash_rate: 0.1,
            api_crash_rate: 0.1,
            seed,
        }
    }
}

/// How many faults of each kind were injected so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FaultCounts {
    /// Batches sent twice.
    pub double_sends: u64,
    /// Consumer crashes before commit.
    pub consumer_crashes: u64,
    /// Requests crashed after the charge.
    pub api_crashes: u64,
}

/// The fault injector shared by every service of a process.
#[derive(Debug)]
pub struct Faults {
    config: FaultConfig,
    rng: Mutex<StdRng>,
    double_sends: AtomicU64,
    consumer_crashes: AtomicU64,
    api_crashes: AtomicU64,
}

impl Faults {
    /// An injector with these rates.
    pub fn new(config: FaultConfig) -> Self {
        Self {
            config,
            rng: Mutex::new(StdRng::seed_from_u64(config.seed)),
            double_sends: AtomicU64::new(0),
            consumer_crashes: AtomicU64::new(0),
            api_crashes: AtomicU64::new(0),
        }
    }

    /// An injector that never fires.
    pub fn none() -> Self {
        Self::new(FaultConfig::none())
    }

    /// The configured rates.
    pub fn config(&self) -> FaultConfig {
        self.config
    }

    fn roll(&self, rate: f64, counter: &AtomicU64, fault: &'static str, what: &str) -> bool {
        if rate <= 0.0 {
            return false;
        }
        let hit = {
            let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
            rng.random_bool(rate.min(1.0))
        };
        if hit {
            let n = counter.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::info!(fault, n, "fault injected: {what}");
        }
        hit
    }

    /// Whether the streamer should send this batch twice (counted when true).
    pub fn double_send(&self) -> bool {
        self.roll(
            self.config.double_send_rate,
            &self.double_sends,
            "double_send",
            "the streamer sends a batch twice",
        )
    }

    /// Whether a consumer should crash before this commit (counted when true).
    pub fn consumer_crash(&self) -> bool {
        self.roll(
            self.config.consumer_crash_rate,
            &self.consumer_crashes,
            "consumer_crash",
            "a consumer crashes before its commit",
        )
    }

    /// Whether this request should crash after its charge (counted when true).
    pub fn api_crash(&self) -> bool {
        self.roll(
            self.config.api_crash_rate,
            &self.api_crashes,
            "api_crash",
            "a request crashes after its charge, its key stays locked",
        )
    }

    /// The counts so far.
    pub fn counts(&self) -> FaultCounts {
        FaultCounts {
            double_sends: self.double_sends.load(Ordering::Relaxed),
            consumer_crashes: self.consumer_crashes.load(Ordering::Relaxed),
            api_crashes: self.api_crashes.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_faults_never_fire() {
        let f = Faults::none();
        assert!((0..1000).all(|_| !f.double_send() && !f.consumer_crash() && !f.api_crash()));
        assert_eq!(f.counts(), FaultCounts::default());
    }

    #[test]
    fn rates_fire_about_as_often_as_configured_and_are_counted() {
        let f = Faults::new(FaultConfig::demo(7));
        let hits = (0..10_000).filter(|_| f.double_send()).count() as u64;
        assert!((800..1200).contains(&hits), "{hits}");
        assert_eq!(f.counts().double_sends, hits);
    }

    #[test]
    fn same_seed_same_decisions() {
        let (a, b) = (
            Faults::new(FaultConfig::demo(3)),
            Faults::new(FaultConfig::demo(3)),
        );
        let da: Vec<bool> = (0..200).map(|_| a.api_crash()).collect();
        let db: Vec<bool> = (0..200).map(|_| b.api_crash()).collect();
        assert_eq!(da, db);
    }
}
