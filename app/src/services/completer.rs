//! The completer: pushes abandoned idempotency keys through the ride service (reference 2.6).
//!
//! A key whose request died (a crash after the charge, a client that gave up) stays
//! unfinished. Once it is older than the grace period, was not run recently and is not locked
//! by a live request, the completer replays it through *the same code path as the API*
//! ([`RideService::complete`]), so there is no separate recovery logic to get wrong. Any answer
//! below 500 counts as succeeded (a stored 402 is a finished key too); a 5xx answer counts as
//! failed, and the key is tried again after the last-run threshold.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::Thresholds;
use ports::{Clock, RideStore};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::{BATCH_SIZE, Outcome, Step, run_loop};
use crate::rides::RideService;

/// What one completer run did (the reference's `{num_succeeded, num_failed}`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CompleterRun {
    /// Keys that got an answer below 500.
    pub succeeded: u64,
    /// Keys whose replay failed with a 5xx.
    pub failed: u64,
}

/// Abandoned keys → ride service.
pub struct Completer {
    store: Arc<dyn RideStore>,
    rides: Arc<RideService>,
    clock: Arc<dyn Clock>,
    thresholds: Thresholds,
    batch: u32,
    interval: Duration,
}

impl Completer {
    /// A completer (batch 1000, idle interval 5 s like the reference).
    pub fn new(
        store: Arc<dyn RideStore>,
        rides: Arc<RideService>,
        clock: Arc<dyn Clock>,
        thresholds: Thresholds,
    ) -> Self {
        Self {
            store,
            rides,
            clock,
            thresholds,
            batch: BATCH_SIZE as u32,
            interval: Duration::from_secs(5),
        }
    }

    /// Sets how long to wait after a run that found nothing.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Completes every key the store says is completable now.
    ///
    /// # Errors
    /// When the store cannot list the keys (a failing key is counted, not an error).
    pub async fn run_once(&self) -> anyhow::Result<CompleterRun> {
        let now = self.clock.now_ms();
        let keys = self
            .store
            .completable_keys(now, &self.thresholds, self.batch)
            .await?;
        let mut run = CompleterRun::default();
        for (key, user) in &keys {
            let reply = self.rides.complete(key, user).await;
            if reply.status >= 500 {
                tracing::warn!(key = %key.key, status = reply.status, "API call failed");
                run.failed += 1;
            } else {
                tracing::debug!(key = %key.key, status = reply.status, "API call completed");
                run.succeeded += 1;
            }
        }
        Ok(run)
    }

    /// One step: [`Outcome::Worked`] with the number of keys tried, or idle.
    ///
    /// # Errors
    /// As [`Self::run_once`].
    pub async fn step(&self) -> anyhow::Result<Outcome> {
        let run = self.run_once().await?;
        Ok(match run.succeeded + run.failed {
            0 => Outcome::Idle,
            // Failed keys will not be eligible again before the last-run threshold: wait.
            n if run.succeeded == 0 => {
                tracing::debug!(n, "every completion failed");
                Outcome::Idle
            }
            n => Outcome::Worked(n),
        })
    }

    /// Steps until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        run_loop(self, shutdown).await;
    }
}

#[async_trait]
impl Step for Completer {
    fn name(&self) -> String {
        "completer".into()
    }
    async fn step(&self) -> anyhow::Result<Outcome> {
        Completer::step(self).await
    }
    async fn idle(&self) {
        tokio::time::sleep(self.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rides::RideServiceConfig;
    use crate::services::mocks::MockStore;
    use domain::{KeyRecord, RecoveryPoint, RideParams, StoredResponse};
    use mockall::predicate::eq;
    use ports::{Begun, ManualClock, User};

    fn key(id: i64) -> (KeyRecord, User) {
        let key = KeyRecord {
            id,
            user_id: 1,
            key: format!("{id:0>36}"),
            created_at_ms: 0,
            last_run_at_ms: 0,
            locked_at_ms: None,
            request_method: "POST".into(),
            request_path: "/rides".into(),
            request_params: RideParams::new(0.0, 0.0, 0.0, 0.0).unwrap(),
            recovery_point: RecoveryPoint::Started,
            response: None,
            ride_id: None,
        };
        let user = User {
            id: 1,
            email: "user@example.com".into(),
        };
        (key, user)
    }

    fn completer(store: MockStore, now: i64) -> Completer {
        let store: Arc<dyn RideStore> = Arc::new(store);
        let clock: Arc<dyn Clock> = Arc::new(ManualClock::new(now));
        let rides = Arc::new(RideService::new(
            store.clone(),
            Arc::new(adapters::payment::FakeProcessor::default()),
            clock.clone(),
            RideServiceConfig::default(),
        ));
        Completer::new(store, rides, clock, Thresholds::default())
    }

    #[tokio::test]
    async fn nothing_eligible_means_no_request_at_all() {
        let mut store = MockStore::new();
        store
            .expect_completable_keys()
            .with(eq(1_000_000i64), eq(Thresholds::default()), eq(1000u32))
            .times(1)
            .returning(|_, _, _| Ok(vec![]));
        // Any other store call (begin, run_phase...) would panic: the mock expects none.
        let c = completer(store, 1_000_000);
        assert_eq!(c.run_once().await.unwrap(), CompleterRun::default());
    }

    #[tokio::test]
    async fn pushes_exactly_the_eligible_keys_through_the_ride_service() {
        let mut store = MockStore::new();
        store
            .expect_completable_keys()
            .times(1)
            .returning(|_, _, _| Ok(vec![key(1), key(2)]));
        // The ride service starts every request with phase 1; here the keys turn out to be
        // finished already, so it replays their stored responses.
        store
            .expect_begin()
            .times(2)
            .returning(|_| Ok(Begun::Replay(StoredResponse::created())));
        let c = completer(store, 1_000_000);
        assert_eq!(
            c.run_once().await.unwrap(),
            CompleterRun {
                succeeded: 2,
                failed: 0
            }
        );
    }

    #[tokio::test]
    async fn a_5xx_counts_as_failed_and_does_not_stop_the_run() {
        let mut store = MockStore::new();
        store
            .expect_completable_keys()
            .returning(|_, _, _| Ok(vec![key(1), key(2)]));
        let mut first = true;
        store.expect_begin().times(2).returning(move |_| {
            if std::mem::take(&mut first) {
                Err(ports::StoreError::Other("boom".into()))
            } else {
                Ok(Begun::Replay(StoredResponse::created()))
            }
        });
        let c = completer(store, 1_000_000);
        assert_eq!(
            c.run_once().await.unwrap(),
            CompleterRun {
                succeeded: 1,
                failed: 1
            }
        );
    }
}
