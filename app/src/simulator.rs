//! The load generator: real HTTP clients creating rides, with client-side retries.
//!
//! Each of `concurrency` workers takes the next ride number until `rides` requests have been
//! made. A ride is a random origin in a city-sized area (around San Francisco) and a target
//! 5 to 1000 m away (the reference's distance range), for `user@example.com`, or for about 5 %
//! of rides `user-bad-source@example.com` (whose card is declined: 402). Every ride gets a
//! fresh 36-character UUID as its `Idempotency-Key`.
//!
//! A client that sees a 5xx, a 409 or a connection error retries *with the same key* a few
//! times with a short back-off: that is what idempotency keys are for, and it is how a
//! request that crashed after its charge gets finished without a second ride or charge. What
//! a client gives up on is left to the completer.
//!
//! Randomness is seeded: ride `i` of a run with seed `s` draws from its own generator seeded
//! with `s` and `i`, so the same seed makes the same rides (user, key, coordinates) whichever
//! worker makes them; only their interleaving depends on scheduling.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

/// The user who normally rides.
pub const GOOD_USER: &str = "user@example.com";
/// The user whose card is declined.
pub const BAD_SOURCE_USER: &str = "user-bad-source@example.com";

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The API's base URL, e.g. `http://127.0.0.1:5000`.
    pub url: String,
    /// How many rides (distinct keys) to request.
    pub rides: u64,
    /// How many concurrent clients.
    pub concurrency: usize,
    /// Seed of the ride generator.
    pub seed: u64,
    /// Share of rides made by the user whose card is declined.
    pub bad_source_rate: f64,
    /// Attempts per key (1 = no client retry).
    pub attempts: u32,
    /// Back-off before the n-th retry is `n * backoff`.
    pub backoff: Duration,
    /// Where each ride's final answer is recorded (user, key, status), for `rides ledger
    /// check`.
    pub ledger: Option<Arc<crate::ledger::LedgerWriter>>,
}

impl SimConfig {
    /// Defaults: 5 % declined cards, 5 attempts, 100 ms back-off step.
    pub fn new(url: impl Into<String>, rides: u64, concurrency: usize, seed: u64) -> Self {
        Self {
            url: url.into(),
            rides,
            concurrency: concurrency.max(1),
            seed,
            bad_source_rate: 0.05,
            attempts: 5,
            backoff: Duration::from_millis(100),
            ledger: None,
        }
    }
}

/// Live counters, readable while the simulation runs.
#[derive(Debug, Default)]
pub struct SimStats {
    /// Rides whose requests are over (answered finally or given up).
    pub done: AtomicU64,
    /// Retries made with the same key.
    pub retries: AtomicU64,
    /// Rides whose final answer was 201.
    pub created: AtomicU64,
    finals: Mutex<BTreeMap<String, u64>>,
}

impl SimStats {
    fn count_final(&self, outcome: String) {
        *self
            .finals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(outcome)
            .or_default() += 1;
    }
}

/// What a simulation did.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SimReport {
    /// Rides requested.
    pub rides: u64,
    /// Retries with the same key.
    pub retries: u64,
    /// Final outcome of each ride by status (`"201"`, `"402"`, `"500"`, `"connection error"`).
    pub outcomes: BTreeMap<String, u64>,
    /// Wall time, seconds.
    pub elapsed_s: f64,
}

/// One ride's form body: coordinates `distance_m` apart, in a city-sized area.
pub(crate) fn ride_coordinates(rng: &mut StdRng) -> [(&'static str, f64); 4] {
    let origin_lat = 37.70 + rng.random::<f64>() * 0.12;
    let origin_lon = -122.51 + rng.random::<f64>() * 0.15;
    let distance_m = rng.random::<f64>() * (1000.0 - 5.0) + 5.0;
    let bearing = rng.random::<f64>() * std::f64::consts::TAU;
    let m_per_deg_lat = 111_320.0;
    let m_per_deg_lon = m_per_deg_lat * origin_lat.to_radians().cos();
    [
        ("origin_lat", origin_lat),
        ("origin_lon", origin_lon),
        (
            "target_lat",
            origin_lat + distance_m * bearing.cos() / m_per_deg_lat,
        ),
        (
            "target_lon",
            origin_lon + distance_m * bearing.sin() / m_per_deg_lon,
        ),
    ]
}

/// Runs the simulation until `rides` rides are done or `shutdown` is cancelled.
///
/// # Errors
/// When the HTTP client cannot be built.
pub async fn simulate(
    config: SimConfig,
    stats: Arc<SimStats>,
    shutdown: CancellationToken,
) -> anyhow::Result<SimReport> {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()?;
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let config = Arc::new(config);
    let mut workers = Vec::new();
    for _ in 0..config.concurrency {
        let (client, next, config, stats, shutdown) = (
            client.clone(),
            next.clone(),
            config.clone(),
            stats.clone(),
            shutdown.clone(),
        );
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if shutdown.is_cancelled() || i >= config.rides {
                    break;
                }
                // Ride `i` draws from its own generator, so the same seed makes the same rides
                // whichever worker happens to make them.
                let mut rng = ride_rng(config.seed, i);
                let (user, key, outcome) =
                    one_ride(&client, &config, &mut rng, &stats, &shutdown).await;
                if let Some(ledger) = &config.ledger {
                    ledger.record(&crate::ledger::Entry {
                        user: user.to_owned(),
                        key,
                        status: outcome.clone(),
                    });
                }
                if outcome == "201" {
                    stats.created.fetch_add(1, Ordering::Relaxed);
                }
                stats.count_final(outcome);
                stats.done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for w in workers {
        w.await?;
    }
    if let Some(ledger) = &config.ledger {
        ledger.flush()?;
    }
    let outcomes = stats
        .finals
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .clone();
    Ok(SimReport {
        rides: stats.done.load(Ordering::Relaxed),
        retries: stats.retries.load(Ordering::Relaxed),
        outcomes,
        elapsed_s: started.elapsed().as_secs_f64(),
    })
}

/// The generator of ride `i` in a run seeded with `seed`.
fn ride_rng(seed: u64, i: u64) -> StdRng {
    StdRng::seed_from_u64(seed ^ i.wrapping_add(1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

/// Requests one ride, retrying with the same key; returns the user, the key and the final
/// outcome.
async fn one_ride(
    client: &reqwest::Client,
    config: &SimConfig,
    rng: &mut StdRng,
    stats: &SimStats,
    shutdown: &CancellationToken,
) -> (&'static str, String, String) {
    let user = if rng.random_bool(config.bad_source_rate.clamp(0.0, 1.0)) {
        BAD_SOURCE_USER
    } else {
        GOOD_USER
    };
    let key = uuid::Builder::from_random_bytes(rng.random())
        .into_uuid()
        .to_string();
    let body = serde_urlencoded::to_string(ride_coordinates(rng)).unwrap_or_default();
    let url = format!("{}/rides", config.url.trim_end_matches('/'));
    let mut outcome = String::new();
    for attempt in 0..config.attempts.max(1) {
        if attempt > 0 {
            stats.retries.fetch_add(1, Ordering::Relaxed);
            tokio::select! {
                () = shutdown.cancelled() => return (user, key, outcome),
                () = tokio::time::sleep(config.backoff * attempt) => {}
            }
        }
        let res = client
            .post(&url)
            .header("Authorization", user)
            .header("Idempotency-Key", &key)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body.clone())
            .send()
            .await;
        match res {
            Ok(r) => {
                let status = r.status().as_u16();
                let _ = r.bytes().await;
                tracing::debug!(%key, status, attempt, "response");
                outcome = status.to_string();
                if !(status >= 500 || status == 409) {
                    return (user, key, outcome);
                }
            }
            Err(e) => {
                tracing::debug!(%key, error = %e, attempt, "request failed");
                outcome = "connection error".to_owned();
            }
        }
    }
    (user, key, outcome)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn haversine_m(c: &[(&str, f64); 4]) -> f64 {
        let p = domain::RideParams::new(c[0].1, c[1].1, c[2].1, c[3].1).unwrap();
        p.distance_mm() as f64 / 1000.0
    }

    #[test]
    fn rides_are_between_5_and_1000_m_and_repeatable() {
        let mut a = StdRng::seed_from_u64(7);
        let mut b = StdRng::seed_from_u64(7);
        for _ in 0..500 {
            let (ca, cb) = (ride_coordinates(&mut a), ride_coordinates(&mut b));
            assert_eq!(ca, cb);
            let d = haversine_m(&ca);
            assert!((4.9..=1003.0).contains(&d), "{d}");
        }
    }
}
