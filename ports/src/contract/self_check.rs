//! The log suite checked against itself: a tiny correct log passes every scenario, and the
//! same log with one deliberate bug fails the scenario that names that bug. A contract suite
//! that no broken adapter can fail would prove nothing.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use domain::LogRecord;

use super::LogFactory;
use crate::{Batch, Delivery, Log, LogError, Position};

/// A deliberate bug of [`VecLog`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Bug {
    None,
    /// Appending drops records whose id is already in the log.
    DropsDuplicates,
    /// `read` returns the record at `from` again.
    RereadsTheLastRecord,
    /// `trim` removes everything below the *fastest* checkpoint.
    TrimsToTheFastest,
    /// A batch is appended in reverse order.
    ReversesBatches,
    /// `lag` counts from the start.
    LagIgnoresThePosition,
}

/// A single-lane log in a vector; positions are decimal offsets of the next record.
struct VecLog {
    bug: Bug,
    /// Offset of `records[0]` (after trims) and the records.
    state: Mutex<(u64, Vec<LogRecord>)>,
    appended: tokio::sync::watch::Sender<u64>,
}

impl VecLog {
    fn new(bug: Bug) -> Self {
        Self {
            bug,
            state: Mutex::new((0, Vec::new())),
            appended: tokio::sync::watch::channel(0).0,
        }
    }

    fn offset(p: &Position) -> Result<u64, LogError> {
        if p.is_start() {
            return Ok(0);
        }
        p.as_str()
            .parse()
            .map_err(|_| LogError::InvalidPosition(p.to_string()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Vec<LogRecord>)> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn take(&self, from: u64, max: usize) -> Vec<(u64, LogRecord)> {
        let s = self.lock();
        let from = match self.bug {
            Bug::RereadsTheLastRecord => from.saturating_sub(1),
            _ => from,
        };
        (from.max(s.0)..s.0 + s.1.len() as u64)
            .take(max)
            .map(|o| (o, s.1[(o - s.0) as usize].clone()))
            .collect()
    }
}

#[async_trait]
impl Log for VecLog {
    fn describe(&self) -> String {
        "vec://self-check".into()
    }

    async fn ping(&self) -> Result<(), LogError> {
        Ok(())
    }

    async fn append(&self, records: &[LogRecord]) -> Result<(), LogError> {
        let total = {
            let mut s = self.lock();
            let mut batch = records.to_vec();
            if self.bug == Bug::ReversesBatches {
                batch.reverse();
            }
            for r in batch {
                if self.bug == Bug::DropsDuplicates && s.1.iter().any(|x| x.id == r.id) {
                    continue;
                }
                s.1.push(r);
            }
            s.0 + s.1.len() as u64
        };
        self.appended.send_replace(total);
        Ok(())
    }

    async fn read(&self, from: &Position, max: usize, wait: Duration) -> Result<Batch, LogError> {
        let at = Self::offset(from)?;
        let mut appended = self.appended.subscribe();
        let mut got = self.take(at, max);
        if got.is_empty() {
            let _ = tokio::time::timeout(wait, appended.wait_for(|n| *n > at)).await;
            got = self.take(at, max);
        }
        let next = got
            .last()
            .map_or_else(|| from.clone(), |(o, _)| Position::new((o + 1).to_string()));
        let deliveries = got
            .into_iter()
            .map(|(_, record)| Delivery { lane: 0, record })
            .collect();
        Ok(Batch { deliveries, next })
    }

    async fn lag(&self, from: &Position) -> Result<u64, LogError> {
        let at = match self.bug {
            Bug::LagIgnoresThePosition => 0,
            _ => Self::offset(from)?,
        };
        let s = self.lock();
        Ok((s.0 + s.1.len() as u64).saturating_sub(at.max(s.0)))
    }

    async fn trim(&self, checkpoints: &[Position]) -> Result<u64, LogError> {
        let offsets = checkpoints
            .iter()
            .map(Self::offset)
            .collect::<Result<Vec<_>, _>>()?;
        let bound = match self.bug {
            Bug::TrimsToTheFastest => offsets.iter().max(),
            _ => offsets.iter().min(),
        };
        let Some(&bound) = bound else { return Ok(0) };
        let mut s = self.lock();
        let n = bound.saturating_sub(s.0).min(s.1.len() as u64);
        s.1.drain(..n as usize);
        s.0 += n;
        Ok(n)
    }

    async fn len(&self) -> Result<u64, LogError> {
        Ok(self.lock().1.len() as u64)
    }
}

/// Makes [`VecLog`]s with one bug (or none).
struct VecLogs(Bug);

#[async_trait]
impl LogFactory for VecLogs {
    async fn fresh(&self) -> Arc<dyn Log> {
        Arc::new(VecLog::new(self.0))
    }
    async fn reopen(&self, log: Arc<dyn Log>) -> Option<Arc<dyn Log>> {
        // Keeps the same log: a "restart" that keeps everything.
        Some(log)
    }
}

mod correct_log_passes {
    use super::{Bug, VecLogs};
    crate::log_contract_tests!(VecLogs(Bug::None));
}

/// Runs `scenario` against a log with `bug` and expects it to fail (panic).
async fn must_fail<F, Fut>(bug: Bug, scenario: F)
where
    F: FnOnce(VecLogs) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    use futures::FutureExt;
    let run = std::panic::AssertUnwindSafe(scenario(VecLogs(bug))).catch_unwind();
    let outcome = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("the scenario hung on {bug:?}"));
    assert!(
        outcome.is_err(),
        "a log with bug {bug:?} passed the scenario that should catch it"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_logs_fail_the_scenario_that_names_their_bug() {
    use super::log;
    must_fail(Bug::DropsDuplicates, |f| async move {
        log::duplicates_are_kept(&f).await
    })
    .await;
    must_fail(Bug::RereadsTheLastRecord, |f| async move {
        log::read_resumes_from_a_position(&f).await
    })
    .await;
    must_fail(Bug::TrimsToTheFastest, |f| async move {
        log::trim_never_removes_unread(&f).await
    })
    .await;
    must_fail(Bug::ReversesBatches, |f| async move {
        log::append_then_read_in_order(&f).await
    })
    .await;
    must_fail(Bug::ReversesBatches, |f| async move {
        log::concurrent_appenders_keep_per_producer_order(&f).await
    })
    .await;
    must_fail(Bug::LagIgnoresThePosition, |f| async move {
        log::lag_counts_records_after_a_position(&f).await
    })
    .await;
}
