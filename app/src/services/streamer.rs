//! The streamer: moves staged records from the outbox to the log.
//!
//! One step: peek a batch (lowest sequence first), append it to the log (durable when the
//! append returns), then remove *exactly* the sequences that were appended. A crash between the
//! append and the remove leaves the records staged, so the next step sends them again: the log
//! may hold duplicates (at least once), which consumers skip by sequence. A failed append
//! removes nothing. The fault injector can make a step append its batch twice, which is what
//! such a crash looks like from the consumers' side.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ports::{Log, Outbox};
use tokio_util::sync::CancellationToken;

use super::{BATCH_SIZE, Outcome, Step, run_loop};
use crate::faults::Faults;

/// Outbox → log.
pub struct Streamer {
    outbox: Arc<dyn Outbox>,
    log: Arc<dyn Log>,
    faults: Arc<Faults>,
    batch: usize,
    poll: Duration,
}

impl Streamer {
    /// A streamer with the default batch (1000) and fallback poll (250 ms).
    pub fn new(outbox: Arc<dyn Outbox>, log: Arc<dyn Log>, faults: Arc<Faults>) -> Self {
        Self {
            outbox,
            log,
            faults,
            batch: BATCH_SIZE,
            poll: Duration::from_millis(250),
        }
    }

    /// Sets the longest wait for an outbox wake-up when idle (a fallback for stores whose
    /// notifications do not cross processes).
    pub fn with_poll(mut self, poll: Duration) -> Self {
        self.poll = poll;
        self
    }

    /// Moves one batch; returns [`Outcome::Worked`] with the number of records moved.
    ///
    /// # Errors
    /// When the outbox or the log fails; nothing is removed from the outbox unless the log
    /// accepted the records.
    pub async fn step(&self) -> anyhow::Result<Outcome> {
        let records = self.outbox.peek(self.batch).await?;
        if records.is_empty() {
            return Ok(Outcome::Idle);
        }
        self.log.append(&records).await?;
        if self.faults.double_send() {
            tracing::debug!(n = records.len(), "fault injected: sending the batch twice");
            self.log.append(&records).await?;
        }
        let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
        self.outbox.remove(&seqs).await?;
        Ok(Outcome::Worked(records.len() as u64))
    }

    /// Steps until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        run_loop(self, shutdown).await;
    }
}

#[async_trait]
impl Step for Streamer {
    fn name(&self) -> String {
        "streamer".into()
    }
    async fn step(&self) -> anyhow::Result<Outcome> {
        Streamer::step(self).await
    }
    async fn idle(&self) {
        self.outbox.wait_staged(self.poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::faults::FaultConfig;
    use crate::services::mocks::{MockLog, MockOutbox, ride_record};
    use mockall::predicate::eq;
    use ports::LogError;

    fn always_double() -> Arc<Faults> {
        Arc::new(Faults::new(FaultConfig {
            double_send_rate: 1.0,
            ..FaultConfig::none()
        }))
    }

    #[tokio::test]
    async fn moves_a_batch_and_removes_exactly_its_sequences() {
        let mut outbox = MockOutbox::new();
        outbox
            .expect_peek()
            .returning(|_| Ok(vec![ride_record(3, 1, 0), ride_record(7, 2, 0)]));
        outbox
            .expect_remove()
            .with(eq(vec![3u64, 7]))
            .times(1)
            .returning(|s| Ok(s.len() as u64));
        let mut log = MockLog::new();
        log.expect_append().times(1).returning(|_| Ok(()));
        let s = Streamer::new(Arc::new(outbox), Arc::new(log), Arc::new(Faults::none()));
        assert_eq!(s.step().await.unwrap(), Outcome::Worked(2));
    }

    #[tokio::test]
    async fn a_failed_append_removes_nothing() {
        let mut outbox = MockOutbox::new();
        outbox
            .expect_peek()
            .returning(|_| Ok(vec![ride_record(1, 1, 0)]));
        outbox.expect_remove().never();
        let mut log = MockLog::new();
        log.expect_append()
            .returning(|_| Err(LogError::Unavailable("down".into())));
        let s = Streamer::new(Arc::new(outbox), Arc::new(log), Arc::new(Faults::none()));
        assert!(s.step().await.is_err());
    }

    #[tokio::test]
    async fn a_double_send_appends_twice_and_removes_once() {
        let mut outbox = MockOutbox::new();
        outbox
            .expect_peek()
            .returning(|_| Ok(vec![ride_record(1, 1, 0)]));
        outbox
            .expect_remove()
            .with(eq(vec![1u64]))
            .times(1)
            .returning(|_| Ok(1));
        let mut log = MockLog::new();
        log.expect_append().times(2).returning(|_| Ok(()));
        let faults = always_double();
        let s = Streamer::new(Arc::new(outbox), Arc::new(log), faults.clone());
        assert_eq!(s.step().await.unwrap(), Outcome::Worked(1));
        assert_eq!(faults.counts().double_sends, 1);
    }

    #[tokio::test]
    async fn an_empty_outbox_is_idle_and_touches_no_log() {
        let mut outbox = MockOutbox::new();
        outbox.expect_peek().returning(|_| Ok(vec![]));
        let mut log = MockLog::new();
        log.expect_append().never();
        let s = Streamer::new(Arc::new(outbox), Arc::new(log), Arc::new(Faults::none()));
        assert_eq!(s.step().await.unwrap(), Outcome::Idle);
    }
}
