//! The streamer: moves staged records from the outbox to the log.
//!
//! One step: peek a batch (lowest sequence first), append it to the log (durable when the
//! append returns), then remove *exactly* the sequences that were appended, in one call (one
//! statement on the SQL stores). A crash between the append and the remove leaves the
//! records staged, so the next step sends them again: the log may hold duplicates (at least
//! once), which consumers skip by sequence. A failed append removes nothing. The fault
//! injector can make a step append its batch twice, which is what such a crash looks like
//! from the consumers' side.
//!
//! # Linger and read-ahead
//!
//! Under load, a streamer that sends whatever one wake-up finds spends a whole round of
//! peek, append and remove on a handful of records. Two things make the cost per record fall
//! as the load rises:
//!
//! - **Linger** (`--linger-ms`, `RIDES_LINGER_MS`, default 5 ms; 0 turns it off), like
//!   Kafka's `linger.ms`: after a wake-up from idle, and while a batch that was not full is
//!   being appended, the streamer waits the linger before it peeks again, so records staged
//!   meanwhile go out together. A full batch is never held back: the next one is read at
//!   once. The linger is the most a record waits on top of the round trips.
//! - **Read-ahead**: after a full batch (more is probably waiting), the next batch is peeked
//!   with [`Outbox::peek_after`] the last sequence of the current one *while* the current one
//!   is appended, and the next step sends it without peeking. Order is unchanged: the
//!   read-ahead only ever returns records above the batch in flight, and it is dropped
//!   whenever the step fails (the next step peeks from the oldest staged record again, so
//!   nothing is skipped) or when the batch holds a cutover (the route changes).
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

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use domain::LogRecord;
use ports::{Log, Outbox, Route};
use tokio_util::sync::CancellationToken;

use super::{BATCH_SIZE, Outcome, Step, run_loop};
use crate::faults::Faults;
use crate::wiring::OpenedLog;

/// The default linger (see the [module docs](self#linger-and-read-ahead)).
pub const DEFAULT_LINGER: Duration = Duration::from_millis(5);

/// Outbox → log.
pub struct Streamer {
    outbox: Arc<dyn Outbox>,
    log: Arc<dyn Log>,
    faults: Arc<Faults>,
    metrics: Arc<crate::metrics::Metrics>,
    batch: usize,
    poll: Duration,
    linger: Duration,
    following: Option<OpenedLog>,
    current: tokio::sync::Mutex<Option<OpenedLog>>,
    /// The next batch, peeked while the previous (full) one was appended; the next step
    /// sends it instead of peeking. Set only by a step that succeeded.
    ahead: Mutex<Option<Vec<LogRecord>>>,
    /// Under direct publishing ([`super::publisher`]): only records staged at least this
    /// long ago are sent, checked every tenth of it.
    sweep: Option<Duration>,
}

impl Streamer {
    /// A streamer with the default batch (1000), fallback poll (250 ms) and linger (5 ms).
    pub fn new(outbox: Arc<dyn Outbox>, log: Arc<dyn Log>, faults: Arc<Faults>) -> Self {
        Self {
            outbox,
            log,
            faults,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            batch: BATCH_SIZE,
            poll: Duration::from_millis(250),
            linger: DEFAULT_LINGER,
            following: None,
            current: tokio::sync::Mutex::new(None),
            ahead: Mutex::new(None),
            sweep: None,
        }
    }

    /// Counts batches and records in `metrics`.
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Sweep mode, for direct publishing (`--publish direct`, see [`super::publisher`]):
    /// the API appends what it commits, and the streamer only sends records still staged
    /// `delay` after they were staged (a crash between a commit and its append, a commit of
    /// a process without direct publishing), looking every tenth of the delay.
    pub fn sweeping(mut self, delay: Duration) -> Self {
        self.sweep = Some(delay);
        self
    }

    /// Whether a freshly peeked batch is too young to sweep.
    fn too_young(&self, records: &[LogRecord]) -> bool {
        let (Some(delay), Some(first)) = (self.sweep, records.first()) else {
            return false;
        };
        let delay_ms = i64::try_from(delay.as_millis()).unwrap_or(i64::MAX);
        first.recorded_at_ms > ports::Clock::now_ms(&ports::SystemClock) - delay_ms
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

    /// Sets the linger: how long records may gather after a wake-up, or behind a batch that
    /// was not full, before the next peek ([`Duration::ZERO`] turns it off). See the
    /// [module docs](self#linger-and-read-ahead).
    pub fn with_linger(mut self, linger: Duration) -> Self {
        self.linger = linger;
        self
    }

    /// Takes the batch read ahead by the previous step, if any.
    fn take_ahead(&self) -> Option<Vec<LogRecord>> {
        self.ahead
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
    }

    /// Moves one batch; returns [`Outcome::Worked`] with the number of records moved.
    ///
    /// # Errors
    /// When the outbox or the log fails; nothing is removed from the outbox unless the log
    /// accepted the records.
    pub async fn step(&self) -> anyhow::Result<Outcome> {
        // Taken first: whatever happens below, a read-ahead is used at most once.
        let ahead = self.take_ahead();
        let current = self.current().await?;
        let records = match ahead {
            Some(records) => records,
            None => {
                let records = self.outbox.peek(self.batch).await?;
                if self.too_young(&records) {
                    return Ok(Outcome::Idle);
                }
                records
            }
        };
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
        // A full batch without a cutover: more is probably staged, read it during the append.
        // Otherwise the outbox was drained: let records gather for the linger meanwhile.
        let read_ahead = target.is_none() && records.len() >= self.batch;
        let after_seq = last.seq;
        let append = async {
            log.append(send).await?;
            if self.faults.double_send() {
                tracing::debug!(n = send.len(), "fault injected: sending the batch twice");
                log.append(send).await?;
            }
            anyhow::Ok(())
        };
        let next = async {
            if read_ahead {
                Some(self.outbox.peek_after(after_seq, self.batch).await)
            } else {
                if !self.linger.is_zero() {
                    tokio::time::sleep(self.linger).await;
                }
                None
            }
        };
        let (appended, next) = tokio::join!(append, next);
        appended?;
        if let Some((to, seq)) = target {
            self.switch(&to, seq).await?;
        }
        let seqs: Vec<u64> = send.iter().map(|r| r.seq).collect();
        self.outbox.remove(&seqs).await?;
        self.metrics.streamer_batch(send.len());
        match next {
            Some(Ok(next)) => {
                *self.ahead.lock().unwrap_or_else(PoisonError::into_inner) = Some(next);
            }
            // Not this step's failure: the next step peeks instead.
            Some(Err(e)) => tracing::debug!(error = %e, "reading ahead failed"),
            None => {}
        }
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
        if let Some(delay) = self.sweep {
            tokio::time::sleep((delay / 10).max(Duration::from_millis(10))).await;
            return;
        }
        self.outbox.wait_staged(self.poll).await;
        // Woken (or polled): give what is being staged right now a moment to join the batch.
        if !self.linger.is_zero() {
            tokio::time::sleep(self.linger).await;
        }
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

    /// `n` ride records with seqs `first..first + n`.
    fn rides(first: u64, n: u64) -> Vec<LogRecord> {
        (first..first + n)
            .map(|seq| ride_record(seq, 1, 0))
            .collect()
    }

    fn seqs(records: &[LogRecord]) -> Vec<u64> {
        records.iter().map(|r| r.seq).collect()
    }

    /// A log whose append returns only once `gate` was opened, and records what it got.
    #[derive(Default)]
    struct GatedLog {
        gate: tokio::sync::Notify,
        appended: Mutex<Vec<Vec<u64>>>,
    }

    #[async_trait]
    impl Log for GatedLog {
        fn describe(&self) -> String {
            "gated://".into()
        }
        async fn ping(&self) -> Result<(), LogError> {
            Ok(())
        }
        async fn append(&self, records: &[LogRecord]) -> Result<(), LogError> {
            self.gate.notified().await;
            self.appended.lock().unwrap().push(seqs(records));
            Ok(())
        }
        async fn read(
            &self,
            from: &ports::Position,
            _max: usize,
            _wait: Duration,
        ) -> Result<ports::Batch, LogError> {
            Ok(ports::Batch {
                deliveries: Vec::new(),
                next: from.clone(),
            })
        }
        async fn lag(&self, _from: &ports::Position) -> Result<u64, LogError> {
            Ok(0)
        }
        async fn trim(&self, _checkpoints: &[ports::Position]) -> Result<u64, LogError> {
            Ok(0)
        }
        async fn len(&self) -> Result<u64, LogError> {
            Ok(0)
        }
    }

    #[tokio::test]
    async fn after_a_full_batch_the_next_is_read_during_the_append_and_sent_next() {
        let log = Arc::new(GatedLog::default());
        let mut outbox = MockOutbox::new();
        outbox
            .expect_peek()
            .times(1)
            .returning(|_| Ok(rides(1, BATCH_SIZE as u64)));
        let gate = Arc::clone(&log);
        // Only the read-ahead opens the append's gate: the step can only finish if the
        // read-ahead runs while the append is in flight.
        outbox
            .expect_peek_after()
            .with(eq(BATCH_SIZE as u64), eq(BATCH_SIZE))
            .times(1)
            .returning(move |_, _| {
                gate.gate.notify_one();
                Ok(rides(BATCH_SIZE as u64 + 1, 2))
            });
        outbox
            .expect_remove()
            .times(2)
            .returning(|s| Ok(s.len() as u64));
        let s = Streamer::new(Arc::new(outbox), log.clone(), Arc::new(Faults::none()))
            .with_linger(Duration::ZERO);
        let first = tokio::time::timeout(Duration::from_secs(10), s.step())
            .await
            .expect("the read-ahead must run during the append");
        assert_eq!(first.unwrap(), Outcome::Worked(BATCH_SIZE as u64));
        // The second batch comes from the read-ahead (peek is expected once only).
        log.gate.notify_one();
        assert_eq!(s.step().await.unwrap(), Outcome::Worked(2));
        let appended = log.appended.lock().unwrap().clone();
        assert_eq!(
            appended,
            vec![
                (1..=BATCH_SIZE as u64).collect::<Vec<_>>(),
                vec![BATCH_SIZE as u64 + 1, BATCH_SIZE as u64 + 2]
            ],
            "each record once, in order"
        );
    }

    #[tokio::test]
    async fn a_failed_remove_drops_the_read_ahead_and_the_batch_is_sent_again() {
        let mut outbox = MockOutbox::new();
        outbox
            .expect_peek()
            .times(2)
            .returning(|_| Ok(rides(1, BATCH_SIZE as u64)));
        outbox
            .expect_peek_after()
            .returning(|after, _| Ok(rides(after + 1, 5)));
        let mut removes = 0;
        outbox.expect_remove().times(2).returning(move |s| {
            removes += 1;
            if removes == 1 {
                Err(ports::StoreError::Unavailable("down".into()))
            } else {
                Ok(s.len() as u64)
            }
        });
        let sent = Arc::new(Mutex::new(Vec::new()));
        let mut log = MockLog::new();
        let record = Arc::clone(&sent);
        log.expect_append().returning(move |r| {
            record.lock().unwrap().push(seqs(r));
            Ok(())
        });
        let s = Streamer::new(Arc::new(outbox), Arc::new(log), Arc::new(Faults::none()))
            .with_linger(Duration::ZERO);
        assert!(s.step().await.is_err(), "the remove failed");
        // Not the read-ahead (records above the batch that is still staged): peek again.
        assert_eq!(s.step().await.unwrap(), Outcome::Worked(BATCH_SIZE as u64));
        let sent = sent.lock().unwrap().clone();
        assert_eq!(sent.len(), 2);
        assert_eq!(
            sent[0], sent[1],
            "the batch still staged is sent again first"
        );
    }

    /// Stages `n` records one by one, one millisecond apart (on a paused clock), into a
    /// memory outbox that a running streamer with `linger` drains; returns the batches the
    /// log received.
    async fn batches_with_linger(linger: Duration, n: u64) -> Vec<Vec<u64>> {
        let store = Arc::new(adapters::memory::MemoryStore::new("p"));
        let sent = Arc::new(Mutex::new(Vec::<Vec<u64>>::new()));
        let mut log = MockLog::new();
        let record = Arc::clone(&sent);
        log.expect_append().returning(move |r| {
            record.lock().unwrap().push(seqs(r));
            Ok(())
        });
        let shutdown = CancellationToken::new();
        let streamer = Streamer::new(store.clone(), Arc::new(log), Arc::new(Faults::none()))
            .with_linger(linger);
        let task = tokio::spawn(streamer.run(shutdown.clone()));
        for seq in 1..=n {
            store
                .stage(&[ride_record(seq, 1, 0).unsequenced()])
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        while sent.lock().unwrap().iter().map(Vec::len).sum::<usize>() < n as usize {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        shutdown.cancel();
        task.await.unwrap();
        let batches = sent.lock().unwrap().clone();
        let all: Vec<u64> = batches.iter().flatten().copied().collect();
        assert_eq!(
            all,
            (1..=n).collect::<Vec<_>>(),
            "each record once, in order"
        );
        batches
    }

    #[tokio::test(start_paused = true)]
    async fn a_linger_gathers_records_staged_in_quick_succession_into_fewer_appends() {
        let alone = batches_with_linger(Duration::ZERO, 20).await;
        assert_eq!(
            alone.len(),
            20,
            "without a linger every wake-up sends what it finds: one record each"
        );
        let gathered = batches_with_linger(Duration::from_millis(5), 20).await;
        assert!(
            gathered.len() < alone.len(),
            "with a linger, records staged while it runs go out together: {gathered:?}"
        );
        assert!(
            gathered.iter().any(|b| b.len() > 1),
            "some append carries several records: {gathered:?}"
        );
    }
}
