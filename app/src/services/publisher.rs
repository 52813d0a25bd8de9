//! Direct publishing (`--publish direct`): the API appends what a phase staged to the log
//! right after the phase commits, and the streamer only sweeps records older than a delay.
//!
//! This is redstream's queue + delay + Delayer in our terms. The outbox is the delay queue:
//! a record is staged in the phase's transaction, so a crash between the commit and the
//! append loses nothing; the streamer, in [sweep mode](super::Streamer::sweeping), sends any
//! record still staged after the delay (default 5 s).
//!
//! # Order
//!
//! Consumers rely on each producer's records reaching a lane in sequence order (the duplicate
//! rule keeps a high-water mark per producer and lane). So the API does not append "its own"
//! records: right after a commit it runs one relay round, like a streamer step, that sends
//! every staged record from the **oldest** one, then removes them. Any such round, in any
//! process, sends a prefix of what is staged, and a record is removed only after the log took
//! it, so a record can never reach the log for the first time after a record with a higher
//! sequence: concurrent rounds (two API processes, or an API and the sweeper) at worst send a
//! record twice, which consumers skip by sequence.
//!
//! Rounds in one process are serialized and coalesced: a commit whose records a round
//! started after it will send (any round that starts after the commit reads them) does not
//! start its own. Rounds never touch a batch holding a `log.cutover` record, nor run while
//! the route points at another log: a cutover is the streamer's job.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use ports::{Log, Outbox};

use super::BATCH_SIZE;

/// The default sweep delay of the streamer under direct publishing.
pub const DEFAULT_SWEEP_DELAY: std::time::Duration = std::time::Duration::from_secs(5);

/// Appends staged records to the log right after the commits of this process.
pub struct DirectPublisher {
    outbox: Arc<dyn Outbox>,
    log: Arc<dyn Log>,
    /// The URL the log was opened from: rounds run only while the route (if any) names it.
    log_url: String,
    /// Held by the round in progress.
    gate: tokio::sync::Mutex<()>,
    /// Rounds started so far.
    started: AtomicU64,
    /// Counts the batches and records appended.
    metrics: Arc<crate::metrics::Metrics>,
}

impl DirectPublisher {
    /// A publisher from `outbox` to `log` (opened from `log_url`).
    pub fn new(outbox: Arc<dyn Outbox>, log: Arc<dyn Log>, log_url: impl Into<String>) -> Self {
        Self {
            outbox,
            log,
            log_url: log_url.into(),
            gate: tokio::sync::Mutex::new(()),
            started: AtomicU64::new(0),
            metrics: Arc::new(crate::metrics::Metrics::new()),
        }
    }

    /// Counts the batches and records it appends in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Called right after a phase that staged records committed: publishes them (and
    /// everything staged before them) in the background. Failures are left to the sweeper.
    pub fn committed(self: &Arc<Self>) {
        let seen = self.started.load(Ordering::SeqCst);
        let me = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = me.round_after(seen).await {
                tracing::debug!(error = %format!("{e:#}"), "direct publishing failed; the sweeper will send the records");
            }
        });
    }

    /// Runs a round unless one started after the commit that saw `seen` rounds started;
    /// returns how many records it sent.
    ///
    /// # Errors
    /// When the outbox or the log fails (the records stay staged).
    pub async fn round_after(&self, seen: u64) -> anyhow::Result<u64> {
        let _gate = self.gate.lock().await;
        if self.started.load(Ordering::SeqCst) > seen {
            // A round that started after this commit has sent its records.
            return Ok(0);
        }
        self.started.fetch_add(1, Ordering::SeqCst);
        if let Some(route) = self.outbox.route().await?
            && route.log_url != self.log_url
        {
            return Ok(0);
        }
        let mut sent = 0;
        loop {
            let records = self.outbox.peek(BATCH_SIZE).await?;
            if records.is_empty() || records.iter().any(|r| r.cutover_target().is_some()) {
                return Ok(sent);
            }
            self.log.append(&records).await?;
            let seqs: Vec<u64> = records.iter().map(|r| r.seq).collect();
            self.outbox.remove(&seqs).await?;
            self.metrics.published_batch(records.len());
            sent += records.len() as u64;
            if records.len() < BATCH_SIZE {
                return Ok(sent);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use adapters::memory::{MemoryLog, MemoryStore};
    use ports::{Position, Route};
    use std::time::Duration;

    fn staged(n: u64) -> Vec<domain::NewRecord> {
        (1..=n)
            .map(|i| crate::services::mocks::ride_record(i, 1, 0).unsequenced())
            .collect()
    }

    #[tokio::test]
    async fn a_round_sends_everything_staged_from_the_oldest_and_removes_it() {
        let store = Arc::new(MemoryStore::new("p"));
        let log = Arc::new(MemoryLog::new());
        store.stage(&staged(3)).await.unwrap();
        let p = Arc::new(DirectPublisher::new(
            store.clone(),
            log.clone(),
            "memory://",
        ));
        assert_eq!(p.round_after(0).await.unwrap(), 3);
        let got = log
            .read(&Position::start(), 10, Duration::ZERO)
            .await
            .unwrap();
        let seqs: Vec<u64> = got.deliveries.iter().map(|d| d.record.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3], "in sequence order");
        assert_eq!(store.staged().await.unwrap(), 0, "removed once appended");
    }

    #[tokio::test]
    async fn a_commit_covered_by_a_later_round_starts_none() {
        let store = Arc::new(MemoryStore::new("p"));
        let log = Arc::new(MemoryLog::new());
        let p = Arc::new(DirectPublisher::new(
            store.clone(),
            log.clone(),
            "memory://",
        ));
        store.stage(&staged(2)).await.unwrap();
        // Two commits saw 0 rounds; the first round covers both.
        assert_eq!(p.round_after(0).await.unwrap(), 2);
        assert_eq!(p.round_after(0).await.unwrap(), 0, "coalesced");
        assert_eq!(log.len().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn rounds_leave_cutovers_and_other_routes_to_the_streamer() {
        let store = Arc::new(MemoryStore::new("p"));
        let log = Arc::new(MemoryLog::new());
        let p = Arc::new(DirectPublisher::new(
            store.clone(),
            log.clone(),
            "memory://",
        ));
        store
            .stage(&[domain::NewRecord::cutover("sled:///elsewhere", 0)])
            .await
            .unwrap();
        assert_eq!(
            p.round_after(0).await.unwrap(),
            0,
            "a cutover is the streamer's"
        );
        assert_eq!(store.staged().await.unwrap(), 1);
        let other = Arc::new(MemoryStore::new("q"));
        other
            .set_route(&Route {
                log_url: "sled:///elsewhere".into(),
                after_seq: 0,
            })
            .await
            .unwrap();
        other.stage(&staged(1)).await.unwrap();
        let q = Arc::new(DirectPublisher::new(
            other.clone(),
            log.clone(),
            "memory://",
        ));
        assert_eq!(
            q.round_after(0).await.unwrap(),
            0,
            "the route names another log"
        );
        assert_eq!(log.len().await.unwrap(), 0);
    }
}
