//! The reaper: deletes idempotency keys older than the reap threshold (reference 2.8).
//!
//! Rides outlive their keys (their key reference is cleared). 72 hours by default: a bug
//! deployed on Friday can be fixed on Monday and the completer can still push the failed
//! requests through.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use domain::Thresholds;
use ports::{Clock, RideStore};
use tokio_util::sync::CancellationToken;

use super::{BATCH_SIZE, Outcome, Step, run_loop};

/// Old keys → deleted.
pub struct Reaper {
    store: Arc<dyn RideStore>,
    clock: Arc<dyn Clock>,
    thresholds: Thresholds,
    batch: u32,
    interval: Duration,
}

impl Reaper {
    /// A reaper (batch 1000, idle interval 5 s like the reference).
    pub fn new(store: Arc<dyn RideStore>, clock: Arc<dyn Clock>, thresholds: Thresholds) -> Self {
        Self {
            store,
            clock,
            thresholds,
            batch: BATCH_SIZE as u32,
            interval: Duration::from_secs(5),
        }
    }

    /// Sets how long to wait after a run that deleted nothing.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Deletes one batch of old keys; [`Outcome::Worked`] with how many.
    ///
    /// # Errors
    /// When the store fails.
    pub async fn step(&self) -> anyhow::Result<Outcome> {
        let now = self.clock.now_ms();
        let n = self
            .store
            .reap_keys(now, &self.thresholds, self.batch)
            .await?;
        Ok(if n == 0 {
            Outcome::Idle
        } else {
            tracing::info!(n, "reaped idempotency keys");
            Outcome::Worked(n)
        })
    }

    /// Steps until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        run_loop(self, shutdown).await;
    }
}

#[async_trait]
impl Step for Reaper {
    fn name(&self) -> String {
        "reaper".into()
    }
    async fn step(&self) -> anyhow::Result<Outcome> {
        Reaper::step(self).await
    }
    async fn idle(&self) {
        tokio::time::sleep(self.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::mocks::MockStore;
    use mockall::predicate::eq;
    use ports::ManualClock;

    #[tokio::test]
    async fn deletes_what_the_store_says_is_old_and_idles_otherwise() {
        let t = Thresholds::default();
        let mut store = MockStore::new();
        let mut answers = vec![2u64, 0].into_iter();
        store
            .expect_reap_keys()
            .with(eq(5_000i64), eq(t), eq(1000u32))
            .times(2)
            .returning(move |_, _, _| Ok(answers.next().unwrap_or(0)));
        let r = Reaper::new(Arc::new(store), Arc::new(ManualClock::new(5_000)), t);
        assert_eq!(r.step().await.unwrap(), Outcome::Worked(2));
        assert_eq!(r.step().await.unwrap(), Outcome::Idle);
    }
}
