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
use ports::{ConsumerStore, Log, Position};
use tokio_util::sync::CancellationToken;

use super::{Outcome, Step, run_loop};
use crate::wiring::OpenedLog;

/// Log records every consumer has passed → removed.
pub struct Trimmer {
    log: Arc<dyn Log>,
    consumers: Arc<dyn ConsumerStore>,
    interval: Duration,
    following: Option<OpenedLog>,
}

impl Trimmer {
    /// A trimmer (idle interval 5 s).
    pub fn new(log: Arc<dyn Log>, consumers: Arc<dyn ConsumerStore>) -> Self {
        Self {
            log,
            consumers,
            interval: Duration::from_secs(5),
            following: None,
        }
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
        let mut groups: std::collections::BTreeMap<Option<String>, Vec<Position>> =
            std::collections::BTreeMap::new();
        for (_, cp) in consumers {
            // `None` (never followed a cutover) is the log the process started with.
            let url = match &self.following {
                Some(start) => Some(cp.cursor.log_url.unwrap_or_else(|| start.url.clone())),
                None => None,
            };
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
}
