//! The streamer: moves staged records from the outbox to the log.
//!
//! One step: peek a batch (lowest sequence first), append it to the log (durable when the
//! append returns), then remove *exactly* the sequences that were appended. A crash between the
//! append and the remove leaves the records staged, so the next step sends them again: the log
//! may hold duplicates (at least once), which consumers skip by sequence. A failed append
//! removes nothing. The fault injector can make a step append its batch twice, which is what
//! such a crash looks like from the consumers' side.
//!
//! # Log cutover
//!
//! With [`Streamer::following`], the streamer publishes where the store's route says (the log
//! it was started with until a cutover happens). When a batch contains a `log.cutover` record
//! naming another log, the streamer appends the batch up to and including that record to the
//! current log (the record is the old log's seal), opens the new log, stores the route
//! `{new log, after_seq: the cutover's seq}` in the store, and only then removes what it sent.
//! Records sequenced after the cutover go to the new log. A crash anywhere in between repeats
//! the seal or re-sends records that consumers skip by sequence; a restarted streamer reads
//! the route back from the store, so it never publishes on the old log again.
//!
//! When the current log is the store's own outbox (the Postgres-only log), there is nothing to
//! move: the streamer only watches for a cutover away from it, advancing the route past the
//! records it has looked at. Its double-send fault then appends copies of the batch to that
//! log, as a relay that published twice would.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ports::{Log, Outbox, Route};
use tokio_util::sync::CancellationToken;

use super::{BATCH_SIZE, Outcome, Step, run_loop};
use crate::faults::Faults;
use crate::wiring::OpenedLog;

/// Outbox → log.
pub struct Streamer {
    outbox: Arc<dyn Outbox>,
    log: Arc<dyn Log>,
    faults: Arc<Faults>,
    batch: usize,
    poll: Duration,
    following: Option<OpenedLog>,
    current: tokio::sync::Mutex<Option<OpenedLog>>,
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
            following: None,
            current: tokio::sync::Mutex::new(None),
        }
    }

    /// Follows log cutovers, starting on `log` unless the store's route names another log.
    pub fn following(mut self, log: OpenedLog) -> Self {
        self.log = log.log.clone();
        self.following = Some(log);
        self
    }

    /// The log the route names (loaded from the store once), when following cutovers.
    async fn current(&self) -> anyhow::Result<Option<OpenedLog>> {
        let Some(start) = &self.following else {
            return Ok(None);
        };
        let mut current = self.current.lock().await;
        if current.is_none() {
            *current = Some(match self.outbox.route().await? {
                Some(route) => start.follow(&route.log_url).await?,
                None => start.clone(),
            });
        }
        Ok(current.clone())
    }

    /// Moves publishing to `target` after the cutover record `after_seq`.
    async fn switch(&self, target: &str, after_seq: u64) -> anyhow::Result<()> {
        let Some(start) = &self.following else {
            return Ok(());
        };
        let next = start.follow(target).await?;
        self.outbox
            .set_route(&Route {
                log_url: target.to_owned(),
                after_seq,
            })
            .await?;
        tracing::info!(to = %target, after_seq, "log cutover: publishing on the new log");
        *self.current.lock().await = Some(next);
        Ok(())
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
        let current = self.current().await?;
        let records = self.outbox.peek(self.batch).await?;
        let Some(last) = records.last() else {
            return Ok(Outcome::Idle);
        };
        // The first cutover to a log other than the current one (only when following).
        let cut = current.as_ref().and_then(|c| {
            records
                .iter()
                .position(|r| r.cutover_target().is_some_and(|t| t != c.url))
        });
        let target =
            cut.and_then(|i| Some((records[i].cutover_target()?.to_owned(), records[i].seq)));
        if let Some(c) = current.as_ref().filter(|c| !c.needs_streamer) {
            // The outbox is the log: nothing to move, only a cutover away from it to watch for.
            if let Some((to, seq)) = target {
                self.switch(&to, seq).await?;
                return Ok(Outcome::Worked(1));
            }
            if self.faults.double_send() {
                // What a relay that published twice leaves behind: copies of the batch in the
                // log, with their producer and sequence, which consumers must skip.
                tracing::debug!(
                    n = records.len(),
                    "fault injected: publishing the batch again"
                );
                c.log.append(&records).await?;
            }
            let route = Route {
                log_url: c.url.clone(),
                after_seq: last.seq,
            };
            self.outbox.set_route(&route).await?;
            return Ok(Outcome::Idle);
        }
        let log = current.map_or_else(|| self.log.clone(), |c| c.log);
        let send = &records[..cut.map_or(records.len(), |i| i + 1)];
        log.append(send).await?;
        if self.faults.double_send() {
            tracing::debug!(n = send.len(), "fault injected: sending the batch twice");
            log.append(send).await?;
        }
        if let Some((to, seq)) = target {
            self.switch(&to, seq).await?;
        }
        let seqs: Vec<u64> = send.iter().map(|r| r.seq).collect();
        self.outbox.remove(&seqs).await?;
        Ok(Outcome::Worked(send.len() as u64))
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
