//! A single-lane log in memory.
//!
//! Records get offsets 1, 2, 3, ... in append order. A [`Position`] is the decimal offset of
//! the last record read ([`Position::start`] is before offset 1). Trimming removes records but
//! never renumbers the rest, so a saved position stays meaningful.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use domain::LogRecord;
use ports::{Batch, Delivery, Log, LogError, Position};
use tokio::sync::watch;

use super::lock;

#[derive(Debug, Default)]
struct Inner {
    /// `(offset, record)` in offset order, without gaps.
    records: VecDeque<(u64, LogRecord)>,
    /// The last offset handed out (0 before the first append).
    head: u64,
}

impl Inner {
    /// The records after `from`.
    fn after(&self, from: u64) -> impl Iterator<Item = &(u64, LogRecord)> {
        let i = self.records.partition_point(|(o, _)| *o <= from);
        self.records.range(i..)
    }
}

/// A single-lane [`Log`] in memory; all readers share it (wrap it in an `Arc`).
#[derive(Debug)]
pub struct MemoryLog {
    inner: Mutex<Inner>,
    /// Carries the head offset; every append wakes every waiting reader.
    appended: watch::Sender<u64>,
}

impl Default for MemoryLog {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryLog {
    /// An empty log.
    pub fn new() -> Self {
        Self {
            inner: Mutex::new(Inner::default()),
            appended: watch::Sender::new(0),
        }
    }
}

/// Decodes a position: the start is offset 0, anything else must be a decimal `u64`.
fn offset(p: &Position) -> Result<u64, LogError> {
    if p.is_start() {
        return Ok(0);
    }
    p.as_str()
        .parse()
        .map_err(|_| LogError::InvalidPosition(p.as_str().to_owned()))
}

#[async_trait]
impl Log for MemoryLog {
    fn describe(&self) -> String {
        "memory://".to_owned()
    }

    async fn ping(&self) -> Result<(), LogError> {
        Ok(())
    }

    async fn append(&self, records: &[LogRecord]) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        let head = {
            let mut inner = lock(&self.inner);
            for r in records {
                inner.head += 1;
                let o = inner.head;
                inner.records.push_back((o, r.clone()));
            }
            inner.head
        };
        // `send_replace` stores the value even when no reader is subscribed.
        self.appended.send_replace(head);
        Ok(())
    }

    async fn read(&self, from: &Position, max: usize, wait: Duration) -> Result<Batch, LogError> {
        let from_offset = offset(from)?;
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribe before looking, so an append between the look and the wait still wakes us.
        let mut appended = self.appended.subscribe();
        loop {
            {
                let inner = lock(&self.inner);
                let deliveries: Vec<(u64, Delivery)> = inner
                    .after(from_offset)
                    .take(max)
                    .map(|(o, r)| {
                        (
                            *o,
                            Delivery {
                                lane: 0,
                                record: r.clone(),
                            },
                        )
                    })
                    .collect();
                if let Some((last, _)) = deliveries.last() {
                    return Ok(Batch {
                        next: Position::new(last.to_string()),
                        deliveries: deliveries.into_iter().map(|(_, d)| d).collect(),
                    });
                }
            }
            if max == 0 {
                break;
            }
            match tokio::time::timeout_at(deadline, appended.changed()).await {
                // An append happened: look again.
                Ok(Ok(())) => {}
                // Timed out, or the sender is gone (it lives as long as `self`).
                Ok(Err(_)) | Err(_) => break,
            }
        }
        Ok(Batch {
            deliveries: Vec::new(),
            next: from.clone(),
        })
    }

    async fn lag(&self, from: &Position) -> Result<u64, LogError> {
        let from = offset(from)?;
        Ok(lock(&self.inner).after(from).count() as u64)
    }

    async fn trim(&self, checkpoints: &[Position]) -> Result<u64, LogError> {
        if checkpoints.is_empty() || checkpoints.iter().any(Position::is_start) {
            return Ok(0);
        }
        let mut min = u64::MAX;
        for cp in checkpoints {
            min = min.min(offset(cp)?);
        }
        let mut inner = lock(&self.inner);
        let n = inner.records.partition_point(|(o, _)| *o <= min);
        inner.records.drain(..n);
        Ok(n as u64)
    }

    async fn beyond_end(&self, from: &Position) -> Result<bool, LogError> {
        Ok(offset(from)? > lock(&self.inner).head)
    }

    async fn len(&self) -> Result<u64, LogError> {
        Ok(lock(&self.inner).records.len() as u64)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use domain::NewRecord;
    use domain::record::RIDES_STREAM;

    fn rec(seq: u64) -> LogRecord {
        NewRecord {
            id: uuid::Uuid::new_v4(),
            stream: RIDES_STREAM.into(),
            key: format!("ride:{seq}"),
            kind: "ride.created".into(),
            payload: serde_json::json!({"ride_id": seq, "user_id": 1, "distance_mm": 10}),
            correlation_id: None,
            causation_id: None,
            recorded_at_ms: 0,
        }
        .sequenced("p", seq)
    }

    fn seqs(b: &Batch) -> Vec<u64> {
        b.deliveries.iter().map(|d| d.record.seq).collect()
    }

    const NOW: Duration = Duration::ZERO;

    #[tokio::test]
    async fn reads_forward_from_a_position_in_batches() {
        let log = MemoryLog::new();
        assert_eq!(log.describe(), "memory://");
        log.append(&[rec(1), rec(2), rec(3)]).await.unwrap();
        let b = log.read(&Position::start(), 2, NOW).await.unwrap();
        assert_eq!(seqs(&b), vec![1, 2]);
        assert_eq!(b.next, Position::new("2"));
        assert!(b.deliveries.iter().all(|d| d.lane == 0));
        let b = log.read(&b.next, 10, NOW).await.unwrap();
        assert_eq!(seqs(&b), vec![3]);
        let empty = log.read(&b.next, 10, NOW).await.unwrap();
        assert!(empty.deliveries.is_empty());
        assert_eq!(empty.next, b.next);
        assert_eq!(log.lag(&Position::start()).await.unwrap(), 3);
        assert_eq!(log.lag(&Position::new("1")).await.unwrap(), 2);
    }

    #[tokio::test]
    async fn garbage_positions_are_refused() {
        let log = MemoryLog::new();
        for bad in ["x", "-1", "1-0"] {
            let p = Position::new(bad);
            assert_eq!(
                log.read(&p, 1, NOW).await,
                Err(LogError::InvalidPosition(bad.into()))
            );
            assert!(matches!(
                log.trim(&[p]).await,
                Err(LogError::InvalidPosition(_))
            ));
        }
    }

    #[tokio::test]
    async fn trim_keeps_what_a_checkpoint_has_not_passed_and_offsets_keep_counting() {
        let log = MemoryLog::new();
        log.append(&[rec(1), rec(2), rec(3), rec(4)]).await.unwrap();
        assert_eq!(log.trim(&[]).await.unwrap(), 0);
        assert_eq!(
            log.trim(&[Position::new("3"), Position::start()])
                .await
                .unwrap(),
            0
        );
        assert_eq!(
            log.trim(&[Position::new("3"), Position::new("2")])
                .await
                .unwrap(),
            2
        );
        assert_eq!(log.len().await.unwrap(), 2);
        let b = log.read(&Position::start(), 10, NOW).await.unwrap();
        assert_eq!(seqs(&b), vec![3, 4]);
        assert_eq!(b.next, Position::new("4"));
        log.append(&[rec(5)]).await.unwrap();
        let b = log.read(&Position::new("4"), 10, NOW).await.unwrap();
        assert_eq!((seqs(&b), b.next), (vec![5], Position::new("5")));
    }

    #[tokio::test]
    async fn every_waiting_reader_wakes_on_append() {
        let log = Arc::new(MemoryLog::new());
        let readers: Vec<_> = (0..3)
            .map(|_| {
                let log = log.clone();
                tokio::spawn(async move {
                    log.read(&Position::start(), 10, Duration::from_secs(30))
                        .await
                })
            })
            .collect();
        // Let the readers start waiting (not required for correctness: a reader that starts
        // after the append finds the record without waiting).
        tokio::task::yield_now().await;
        log.append(&[rec(1)]).await.unwrap();
        for r in readers {
            let b = tokio::time::timeout(Duration::from_secs(5), r)
                .await
                .expect("a reader did not wake")
                .unwrap()
                .unwrap();
            assert_eq!(seqs(&b), vec![1]);
        }
    }

    #[tokio::test]
    async fn an_empty_read_waits_for_its_timeout() {
        let log = MemoryLog::new();
        let start = std::time::Instant::now();
        let b = log
            .read(&Position::start(), 10, Duration::from_millis(20))
            .await
            .unwrap();
        assert!(b.deliveries.is_empty());
        assert!(start.elapsed() >= Duration::from_millis(20));
    }
}
