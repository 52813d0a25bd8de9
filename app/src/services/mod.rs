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
//! - [`consumer`]: log → distance state + checkpoint, saved atomically.
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
pub mod reaper;
pub mod streamer;
pub mod trimmer;

pub use completer::{Completer, CompleterRun};
pub use consumer::DistanceConsumer;
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
            Err(e) if e.downcast_ref::<consumer::SimulatedCrash>().is_some() => {
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
    tracing::debug!(service = %name, "stopped");
}

/// Mocks of the ports, shared by the services' unit tests.
#[cfg(test)]
pub(crate) mod mocks {
    use std::time::Duration;

    use async_trait::async_trait;
    use domain::{KeyRecord, LogRecord, Phase, RecoveryPoint, Thresholds};
    use ports::{
        Batch, BeginRequest, Begun, Checkpoint, ConsumerStoreError, LogError, Position, RideRow,
        StoreError, Truth, User,
    };

    mockall::mock! {
        pub(crate) Outbox {}
        #[async_trait]
        impl ports::Outbox for Outbox {
            fn producer(&self) -> String;
            async fn peek(&self, max: usize) -> Result<Vec<LogRecord>, StoreError>;
            async fn remove(&self, seqs: &[u64]) -> Result<u64, StoreError>;
            async fn staged(&self) -> Result<u64, StoreError>;
            async fn wait_staged(&self, timeout: Duration);
            async fn stage(&self, records: &[domain::NewRecord]) -> Result<(), StoreError>;
            async fn route(&self) -> Result<Option<ports::Route>, StoreError>;
            async fn set_route(&self, route: &ports::Route) -> Result<(), StoreError>;
        }
    }

    mockall::mock! {
        pub(crate) Log {}
        #[async_trait]
        impl ports::Log for Log {
            fn describe(&self) -> String;
            async fn ping(&self) -> Result<(), LogError>;
            async fn append(&self, records: &[LogRecord]) -> Result<(), LogError>;
            async fn read(&self, from: &Position, max: usize, wait: Duration) -> Result<Batch, LogError>;
            async fn lag(&self, from: &Position) -> Result<u64, LogError>;
            async fn trim(&self, checkpoints: &[Position]) -> Result<u64, LogError>;
            async fn len(&self) -> Result<u64, LogError>;
        }
    }

    mockall::mock! {
        pub(crate) Consumers {}
        #[async_trait]
        impl ports::ConsumerStore for Consumers {
            async fn register(&self, name: &str) -> Result<(), ConsumerStoreError>;
            async fn load(&self, name: &str) -> Result<Option<Checkpoint>, ConsumerStoreError>;
            async fn save(
                &self,
                name: &str,
                expected_version: u64,
                position: &Position,
                state: &serde_json::Value,
                now_ms: i64,
            ) -> Result<u64, ConsumerStoreError>;
            async fn list(&self) -> Result<Vec<(String, Checkpoint)>, ConsumerStoreError>;
        }
    }

    mockall::mock! {
        pub(crate) Store {}
        #[async_trait]
        impl ports::RideStore for Store {
            fn describe(&self) -> String;
            async fn ping(&self) -> Result<(), StoreError>;
            async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError>;
            async fn ensure_user(&self, email: &str) -> Result<User, StoreError>;
            async fn begin(&self, req: &BeginRequest) -> Result<Begun, StoreError>;
            async fn run_phase(
                &self,
                key_id: i64,
                expected: RecoveryPoint,
                phase: &Phase,
                now_ms: i64,
            ) -> Result<KeyRecord, StoreError>;
            async fn unlock(&self, key_id: i64) -> Result<(), StoreError>;
            async fn key(&self, user_id: i64, key: &str) -> Result<Option<KeyRecord>, StoreError>;
            async fn put_key(&self, key: &KeyRecord) -> Result<KeyRecord, StoreError>;
            async fn ride_for_key(&self, key_id: i64) -> Result<Option<RideRow>, StoreError>;
            async fn ride(&self, ride_id: i64) -> Result<Option<RideRow>, StoreError>;
            async fn rides_for_user(
                &self,
                user_id: i64,
                before_id: Option<i64>,
                limit: u32,
            ) -> Result<Vec<RideRow>, StoreError>;
            async fn completable_keys(
                &self,
                now_ms: i64,
                thresholds: &Thresholds,
                limit: u32,
            ) -> Result<Vec<(KeyRecord, User)>, StoreError>;
            async fn reap_keys(
                &self,
                now_ms: i64,
                thresholds: &Thresholds,
                limit: u32,
            ) -> Result<u64, StoreError>;
            async fn truth(&self) -> Result<Truth, StoreError>;
        }
    }

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
