//! Background services: streamer, consumer, completer, reaper, trimmer.
//!
//! Every service is a *single step* ([`Outcome`]) inside a loop (STYLE rule 27):
//!
//! ```text
//!   loop {
//!       step()  ──Worked(n)──▶ step again at once (there may be more)
//!          │
//!          ├──Idle──────────▶ wait for a wake-up (outbox notification, blocking log read,
//!          │                  or a timer for the time-driven completer/reaper/trimmer)
//!          └──Err───────────▶ log it, back off (doubling, capped), try again
//!   }   ... until the shutdown token is cancelled
//! ```
//!
//! Tests drive `step()` directly and never sleep. A step that has started always runs to its
//! end (it is never cancelled half-way), so a shutdown drains in-flight work: only the waits
//! between steps are interrupted by the shutdown token.
//!
//! # Layout
//!
//! - [`streamer`]: outbox → log.
//! - [`consumer`]: the distance consumer, a fold on the consumer runtime ([`crate::runtime`]).
//! - [`sync`]: keeps a secondary datastore equal to the store's rides (idempotent consumer).
//! - [`completer`]: pushes abandoned idempotency keys through the ride service.
//! - [`reaper`]: deletes old idempotency keys.
//! - [`trimmer`]: trims the log below every registered consumer's checkpoint.
//! - [`fleet`]: starts them all (plus the API) in one process, stops or aborts them.

use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

pub mod completer;
pub mod consumer;
pub mod fleet;
pub mod publisher;
pub mod reaper;
pub mod streamer;
pub mod sync;
pub mod trimmer;

pub use completer::{Completer, CompleterRun};
pub use consumer::{DistanceConsumer, distance_consumer};
pub use fleet::{Fleet, FleetConfig, Intervals};
pub use reaper::Reaper;
pub use streamer::Streamer;
pub use trimmer::Trimmer;

/// The batch size of every service (the reference's `BATCH_SIZE`).
pub const BATCH_SIZE: usize = 1000;

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// It did `n` units of work (records moved, keys completed...): step again at once.
    Worked(u64),
    /// Nothing to do: wait for a wake-up before the next step.
    Idle,
}

/// A service as the run loop sees it: a step, and how to wait when idle.
#[async_trait]
pub(crate) trait Step: Send + Sync + 'static {
    /// The name used in log lines.
    fn name(&self) -> String;
    /// One step.
    async fn step(&self) -> anyhow::Result<Outcome>;
    /// Waits for a reason to step again after an idle step.
    async fn idle(&self);
    /// Whether `error` ends the service (instead of a back-off and another step).
    fn stops_on(&self, _error: &anyhow::Error) -> bool {
        false
    }
    /// Runs once when the loop ends (releases a lease, for example).
    async fn stop(&self) {}
}

/// The first back-off after an error; doubles up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(50);
/// The longest back-off after repeated errors (the reference's 5 s).
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// Runs `svc` step by step until `shutdown` is cancelled.
pub(crate) async fn run_loop<S: Step>(svc: S, shutdown: CancellationToken) {
    let name = svc.name();
    tracing::debug!(service = %name, "started");
    let mut backoff = MIN_BACKOFF;
    while !shutdown.is_cancelled() {
        match svc.step().await {
            Ok(Outcome::Worked(n)) => {
                backoff = MIN_BACKOFF;
                tracing::debug!(service = %name, n, "worked");
            }
            Ok(Outcome::Idle) => {
                backoff = MIN_BACKOFF;
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = svc.idle() => {}
                }
            }
            Err(e) if svc.stops_on(&e) => {
                tracing::error!(service = %name, error = %format!("{e:#}"), "stopped");
                break;
            }
            Err(e) if e.downcast_ref::<crate::runtime::SimulatedCrash>().is_some() => {
                // An injected fault, counted by the injector: not worth a warning.
                tracing::debug!(service = %name, "{e}; restarting the step");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(MIN_BACKOFF) => {}
                }
            }
            Err(e) => {
                tracing::warn!(service = %name, error = %format!("{e:#}"), backoff_ms = backoff.as_millis() as u64, "step failed; backing off");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
    svc.stop().await;
    tracing::debug!(service = %name, "stopped");
}

/// Runs `svc` until `shutdown`, only while it holds `lease` when one is given.
pub(crate) async fn run_service<S: Step>(
    svc: S,
    lease: Option<crate::runtime::LeaseKeeper>,
    shutdown: CancellationToken,
) {
    match lease {
        Some(keeper) => run_loop(crate::runtime::lease::Leased::new(svc, keeper), shutdown).await,
        None => run_loop(svc, shutdown).await,
    }
}

/// Mocks of the ports, shared by the services' unit tests.
#[cfg(test)]
pub(crate) mod mocks {
    use domain::LogRecord;

    // Generated from the port traits themselves (`ports` feature `test-util`), so a mock can
    // never drift from its port.
    pub(crate) use ports::{
        MockConsumerStore as MockConsumers, MockLog, MockOutbox, MockRideStore as MockStore,
    };

    /// A `ride.created` record with sequence `seq`.
    pub(crate) fn ride_record(seq: u64, distance_mm: u64, recorded_at_ms: i64) -> LogRecord {
        domain::NewRecord {
            id: uuid::Uuid::new_v4(),
            stream: domain::record::RIDES_STREAM.into(),
            key: format!("ride:{seq}"),
            kind: domain::record::kinds::RIDE_CREATED.into(),
            payload: serde_json::json!({"ride_id": seq, "user_id": 1, "distance_mm": distance_mm}),
            correlation_id: None,
            causation_id: None,
            recorded_at_ms,
        }
        .sequenced("rides", seq)
    }
}
