//! The trimmer: removes log records that every registered consumer has passed.
//!
//! It asks the consumer store for every registered checkpoint and hands them all to
//! [`Log::trim`], which removes only what *all* of them have passed. With no registered
//! consumer it trims nothing (the log contract refuses an empty list too): a consumer that has
//! not started yet must not lose records. A consumer that registered but never saved sits at
//! the start and holds trimming back entirely.
//!
//! With [`Trimmer::following`], consumers are grouped by the log their position belongs to
//! (after a log cutover they move to another log). While a cutover is in progress (consumers
//! on more than one log) nothing is trimmed: a consumer still finishing the old log will read
//! the new log *from its start*, so the new log must keep everything until that consumer is
//! on it too. Once every consumer is on one log, that log is trimmed as usual; the old logs
//! are left alone (drop the old stream or topic once `rides log status` shows every consumer
//! on the new log).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use async_trait::async_trait;
use ports::{Clock, ConsumerStore, Log, Outbox, Position};
use tokio_util::sync::CancellationToken;

use super::{Outcome, Step, run_loop};
use crate::wiring::OpenedLog;

/// Log records every consumer has passed → removed.
pub struct Trimmer {
    log: Arc<dyn Log>,
    consumers: Arc<dyn ConsumerStore>,
    interval: Duration,
    following: Option<OpenedLog>,
    expiry: Option<(Duration, Arc<dyn Clock>)>,
    /// Consumers already reported as expired (reported once, loudly).
    expired: std::sync::Mutex<std::collections::BTreeSet<String>>,
    /// The store whose `published` index is pruned with the log.
    outbox: Option<Arc<dyn Outbox>>,
}

impl Trimmer {
    /// A trimmer (idle interval 5 s).
    pub fn new(log: Arc<dyn Log>, consumers: Arc<dyn ConsumerStore>) -> Self {
        Self {
            log,
            consumers,
            interval: Duration::from_secs(5),
            following: None,
            expiry: None,
            expired: std::sync::Mutex::new(std::collections::BTreeSet::new()),
            outbox: None,
        }
    }

    /// Also prunes `outbox`'s `published` index (what `rides log repair` rebuilds lost
    /// records from) below the lowest sequence any consumer may still report missing
    /// ([`domain::gaps::index_needed_from`]).
    pub fn with_outbox(mut self, outbox: Arc<dyn Outbox>) -> Self {
        self.outbox = Some(outbox);
        self
    }

    /// Prunes the `published` index below what every consumer of `cps` may still miss.
    async fn prune_index(&self, cps: &[(String, ports::Checkpoint)]) {
        let Some(outbox) = &self.outbox else { return };
        let producer = outbox.producer();
        let Some(below) = cps
            .iter()
            .map(|(_, cp)| {
                domain::gaps::index_needed_from(&cp.cursor.marks, &cp.cursor.gaps, &producer)
            })
            .min()
        else {
            return;
        };
        match outbox.forget_published(&producer, below).await {
            Ok(0) => {}
            Ok(n) => tracing::debug!(n, below, "pruned the published index"),
            // Not this step's failure: the index only grows until the next prune.
            Err(e) => tracing::warn!(error = %e, "pruning the published index failed"),
        }
    }

    /// Consumer expiry (`--consumer-expiry-s`): a consumer whose checkpoint has not moved
    /// for `expiry` and that holds no live lease (no instance of it runs) is reported, once,
    /// and no longer holds back trimming. A consumer that never saved never expires.
    /// `rides consumer remove NAME` deregisters it for good.
    pub fn with_consumer_expiry(mut self, expiry: Duration, clock: Arc<dyn Clock>) -> Self {
        self.expiry = Some((expiry, clock));
        self
    }

    /// Whether `name` (last saved at `updated_at_ms`) has expired, given the live leases.
    fn is_expired(&self, name: &str, updated_at_ms: i64, live: &[String]) -> bool {
        let Some((expiry, clock)) = &self.expiry else {
            return false;
        };
        let idle_ms = clock.now_ms() - updated_at_ms;
        let expired = updated_at_ms > 0
            && idle_ms > i64::try_from(expiry.as_millis()).unwrap_or(i64::MAX)
            && !live.iter().any(|s| s == &format!("consumer:{name}"));
        let mut reported = self
            .expired
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if expired && reported.insert(name.to_owned()) {
            tracing::error!(consumer = %name, idle_s = idle_ms / 1000,
                "consumer expired: its checkpoint has not moved for longer than --consumer-expiry-s and no instance of it runs; it no longer holds back trimming (it will miss what is trimmed). `rides consumer remove {name}` deregisters it");
        } else if !expired && reported.remove(name) {
            tracing::warn!(consumer = %name, "expired consumer is back: it holds back trimming again");
        }
        expired
    }

    /// Trims every log that consumers are on, starting from `log` (see the module docs).
    pub fn following(mut self, log: OpenedLog) -> Self {
        self.log = log.log.clone();
        self.following = Some(log);
        self
    }

    /// Sets how long to wait after a run that removed nothing.
    pub fn with_interval(mut self, interval: Duration) -> Self {
        self.interval = interval;
        self
    }

    /// Trims once; [`Outcome::Worked`] with the number of records removed.
    ///
    /// # Errors
    /// When the consumer store or the log fails, or a checkpoint cannot be read: then
    /// nothing is trimmed (a consumer whose position is unknown must not lose records).
    pub async fn step(&self) -> anyhow::Result<Outcome> {
        let consumers = self
            .consumers
            .list()
            .await
            .context("reading the consumers' checkpoints; trimming nothing")?;
        let live: Vec<String> = match &self.expiry {
            Some((_, clock)) => {
                let now = clock.now_ms();
                self.consumers
                    .leases()
                    .await
                    .context("reading the leases; trimming nothing")?
                    .into_iter()
                    .filter(|l| l.expires_at_ms > now)
                    .map(|l| l.scope)
                    .collect()
            }
            None => Vec::new(),
        };
        let consumers: Vec<(String, ports::Checkpoint)> = consumers
            .into_iter()
            .filter(|(name, cp)| !self.is_expired(name, cp.updated_at_ms, &live))
            .collect();
        self.prune_index(&consumers).await;
        let mut groups: std::collections::BTreeMap<Option<String>, Vec<Position>> =
            std::collections::BTreeMap::new();
        // The lane checkpoints of consumers that run per lane, by consumer: merged into one
        // position of the whole log below.
        let mut laned: std::collections::BTreeMap<
            String,
            std::collections::BTreeMap<u32, Position>,
        > = std::collections::BTreeMap::new();
        for (name, cp) in consumers {
            // `None` (never followed a cutover) is the log the process started with.
            let url = match &self.following {
                Some(start) => Some(cp.cursor.log_url.unwrap_or_else(|| start.url.clone())),
                None => None,
            };
            if let Some((base, lane)) = crate::runtime::lanes::split_lane(&name) {
                groups.entry(url).or_default();
                laned
                    .entry(base.to_owned())
                    .or_default()
                    .insert(lane, cp.position);
                continue;
            }
            groups.entry(url).or_default().push(cp.position);
        }
        if groups.len() > 1 {
            tracing::debug!(logs = groups.len(), "log cutover in progress: not trimming");
            return Ok(Outcome::Idle);
        }
        let Some((url, positions)) = groups.into_iter().next() else {
            return Ok(Outcome::Idle);
        };
        let log = match (&url, &self.following) {
            (Some(url), Some(start)) => start.follow(url).await?.log,
            _ => self.log.clone(),
        };
        let mut positions = positions;
        for (base, lanes) in laned {
            let in_order: Vec<Position> = lanes.into_values().collect();
            // A lane that never saved is missing: then the whole consumer counts as unread.
            positions.push(log.merge_lanes(&in_order).unwrap_or_else(|e| {
                tracing::debug!(consumer = %base, error = %e, "lanes not all saved yet: trimming nothing");
                Position::start()
            }));
        }
        let n = log.trim(&positions).await?;
        Ok(if n == 0 {
            Outcome::Idle
        } else {
            tracing::debug!(n, "trimmed the log");
            Outcome::Worked(n)
        })
    }

    /// Steps until `shutdown` is cancelled.
    pub async fn run(self, shutdown: CancellationToken) {
        run_loop(self, shutdown).await;
    }
}

#[async_trait]
impl Step for Trimmer {
    fn name(&self) -> String {
        "trimmer".into()
    }
    async fn step(&self) -> anyhow::Result<Outcome> {
        Trimmer::step(self).await
    }
    async fn idle(&self) {
        tokio::time::sleep(self.interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::services::mocks::{MockConsumers, MockLog, ride_record};
    use mockall::predicate::eq;
    use ports::Checkpoint;

    fn cp(p: &str) -> Checkpoint {
        Checkpoint {
            position: Position::new(p),
            version: 1,
            ..Checkpoint::registered()
        }
    }

    #[tokio::test]
    async fn an_unreadable_checkpoint_trims_nothing_and_says_why() {
        let mut cs = MockConsumers::new();
        cs.expect_list().returning(|| {
            Err(ports::ConsumerStoreError::Other(
                "consumer a: unreadable cursor".into(),
            ))
        });
        let mut log = MockLog::new();
        log.expect_trim().never();
        let t = Trimmer::new(Arc::new(log), Arc::new(cs));
        let err = t.step().await.unwrap_err();
        let text = format!("{err:#}");
        assert!(
            text.contains("trimming nothing") && text.contains("unreadable"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn an_expired_consumer_stops_holding_back_trimming_unless_it_runs() {
        use adapters::memory::{MemoryConsumerStore, MemoryLog};
        use ports::{Cursor, ManualClock, Save};
        let log = Arc::new(MemoryLog::new());
        let records: Vec<_> = (1..=4).map(|seq| ride_record(seq, 10, 0)).collect();
        log.append(&records).await.unwrap();
        let cs = Arc::new(MemoryConsumerStore::new());
        let clock = Arc::new(ManualClock::new(1_000));
        let null = serde_json::Value::Null;
        // `fast` read 3 records just now; `dead` read 1 record long ago.
        cs.save(
            "fast",
            &Save::new(0, &Position::new("3"), &Cursor::default(), &null, 100_000),
        )
        .await
        .unwrap();
        cs.save(
            "dead",
            &Save::new(0, &Position::new("1"), &Cursor::default(), &null, 1_000),
        )
        .await
        .unwrap();
        clock.set(100_000);
        let t = Trimmer::new(log.clone(), cs.clone())
            .with_consumer_expiry(Duration::from_secs(60), clock.clone());
        // `dead` runs somewhere (a live lease): it still holds trimming back.
        cs.acquire_lease("consumer:dead", "h", 5_000, 100_000)
            .await
            .unwrap();
        assert_eq!(t.step().await.unwrap(), Outcome::Worked(1));
        // No instance of it runs any more: it expired, `fast` alone decides.
        clock.set(200_000);
        cs.save(
            "fast",
            &Save::new(1, &Position::new("3"), &Cursor::default(), &null, 200_000),
        )
        .await
        .unwrap();
        assert_eq!(t.step().await.unwrap(), Outcome::Worked(2));
        assert_eq!(log.len().await.unwrap(), 1);
    }

    #[tokio::test]
    async fn never_trims_without_a_registered_consumer() {
        let mut cs = MockConsumers::new();
        cs.expect_list().returning(|| Ok(vec![]));
        let mut log = MockLog::new();
        log.expect_trim().never();
        let t = Trimmer::new(Arc::new(log), Arc::new(cs));
        assert_eq!(t.step().await.unwrap(), Outcome::Idle);
    }

    #[tokio::test]
    async fn trims_below_every_registered_checkpoint() {
        let mut cs = MockConsumers::new();
        cs.expect_list()
            .returning(|| Ok(vec![("a".into(), cp("5")), ("b".into(), cp("3"))]));
        let mut log = MockLog::new();
        log.expect_trim()
            .with(eq(vec![Position::new("5"), Position::new("3")]))
            .times(1)
            .returning(|_| Ok(3));
        let t = Trimmer::new(Arc::new(log), Arc::new(cs));
        assert_eq!(t.step().await.unwrap(), Outcome::Worked(3));
    }

    #[tokio::test]
    async fn nothing_is_trimmed_while_consumers_are_on_different_logs() {
        use crate::wiring;
        use ports::{Cursor, Save};
        let stores = wiring::open_store("memory://").await.unwrap();
        let log = wiring::open_log("memory://", &stores).await.unwrap();
        let records: Vec<_> = (1..=4).map(|seq| ride_record(seq, 10, 0)).collect();
        log.log.append(&records).await.unwrap();
        let on = |url: Option<&str>| Cursor {
            log_url: url.map(str::to_owned),
            ..Cursor::default()
        };
        let null = serde_json::Value::Null;
        let cs = &stores.consumers;
        cs.save("a", &Save::new(0, &Position::new("3"), &on(None), &null, 0))
            .await
            .unwrap();
        // `b` already moved to another log after a cutover; it will read `memory://` no more,
        // but `a` will read the new log from its start once it gets there.
        cs.save(
            "b",
            &Save::new(0, &Position::new("1"), &on(Some("memory://new")), &null, 0),
        )
        .await
        .unwrap();
        let t = Trimmer::new(log.log.clone(), cs.clone()).following(log.clone());
        assert_eq!(t.step().await.unwrap(), Outcome::Idle);
        assert_eq!(
            log.log.len().await.unwrap(),
            4,
            "nothing trimmed during the cutover"
        );

        // Once every consumer is on one log (here: back on the start log), it is trimmed.
        cs.save(
            "b",
            &Save::new(1, &Position::new("2"), &on(Some("memory://")), &null, 0),
        )
        .await
        .unwrap();
        assert_eq!(t.step().await.unwrap(), Outcome::Worked(2));
        assert_eq!(log.log.len().await.unwrap(), 2);
    }

    #[tokio::test]
    async fn the_published_index_is_pruned_below_what_a_consumer_may_still_miss() {
        use adapters::memory::{MemoryConsumerStore, MemoryLog, MemoryStore};
        let store = Arc::new(MemoryStore::new("p"));
        let outbox: Arc<dyn Outbox> = store.clone();
        let records: Vec<domain::NewRecord> = (1..=6)
            .map(|i| domain::NewRecord::cutover(&format!("memory://{i}"), 0))
            .collect();
        outbox.stage(&records).await.unwrap();
        outbox.remove(&[1, 2, 3, 4, 5, 6]).await.unwrap();
        let consumers = Arc::new(MemoryConsumerStore::new());
        let mut cursor = ports::Cursor::default();
        cursor.marks.high_water.insert("p/0".into(), 6);
        cursor.gaps.push(domain::Gap {
            producer: "p".into(),
            lane: 0,
            from_seq: 4,
            to_seq: Some(5),
            detected_at_ms: 0,
        });
        let state = serde_json::Value::Null;
        let at = Position::new("6");
        consumers
            .save("c", &ports::Save::new(0, &at, &cursor, &state, 1))
            .await
            .unwrap();
        let t = Trimmer::new(Arc::new(MemoryLog::new()), consumers).with_outbox(outbox.clone());
        t.step().await.unwrap();
        let kept: Vec<u64> = outbox
            .published("p", 0, u64::MAX)
            .await
            .unwrap()
            .iter()
            .map(|p| p.seq)
            .collect();
        assert_eq!(
            kept,
            vec![4, 5, 6],
            "the gap and what lies above the mark stay"
        );
    }
}
