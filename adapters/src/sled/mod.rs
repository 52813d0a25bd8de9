//! The log on [sled](https://docs.rs/sled/0.34.7), embedded in the process.
//!
//! # Layout on disk
//!
//! One sled database per log directory, with two trees:
//!
//! - `records`: key = the record's offset as a big-endian `u64` (so byte order is numeric
//!   order and a range scan reads in append order), value = [`LogRecord::to_json`].
//!   Offsets start at 1 and are contiguous; trimming removes a prefix.
//! - `meta`: key `head` = the last offset ever allocated. It is written in the same sled
//!   transaction as the records it allocates, so an offset is never reused, even after every
//!   record was trimmed and the log reopened.
//!
//! # Positions
//!
//! A [`Position`] is the decimal offset of the last record read; [`Position::start`] (`""`)
//! is before offset 1. Anything that does not parse as a `u64`, or that lies beyond the head
//! (a position this log never handed out), is [`LogError::InvalidPosition`].
//!
//! # Durability and visibility
//!
//! [`SledLog::append`] allocates offsets and writes the whole batch in one transaction under
//! an async mutex, then waits for `flush_async`: only then is the batch durable, and only
//! then does the *visible head* (a [`tokio::sync::watch`] channel) move. Readers never look
//! past the visible head, so a reader can never checkpoint a record that a crash could still
//! take back. Waiting readers subscribe to the watch channel before they look, so a wake-up
//! cannot be lost between "found nothing" and "start waiting".
//!
//! # One process only
//!
//! sled 0.34 locks its directory for as long as any handle (the `Db` or any `Tree`) is alive,
//! and a directory can be opened once per process. The sled log is therefore *embedded and
//! single-process*: the streamer and every consumer that reads it must run inside the same
//! process (as `rides demo` and `rides serve` do). Use Redis, Postgres or Kafka for a fleet of
//! processes. Opening a directory that another process (or another live `SledLog` in this
//! process) holds fails with [`LogError::Unavailable`] naming the path.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use domain::LogRecord;
use ports::{Batch, Delivery, Log, LogError, Position};
use sled::Transactional;
use sled::transaction::{ConflictableTransactionError, TransactionError};
use tokio::sync::{Mutex, watch};

/// The key of the last allocated offset in the `meta` tree.
const HEAD_KEY: &[u8] = b"head";

/// A [`Log`] stored in an embedded sled database (one lane, offsets from 1).
///
/// See the [module docs](self) for the layout and the single-process rule.
pub struct SledLog {
    path: PathBuf,
    db: sled::Db,
    records: sled::Tree,
    meta: sled::Tree,
    /// Serialises appends; holds the last allocated offset.
    allocated: Mutex<u64>,
    /// Mirror of `allocated`, readable without the lock (to find the trimmed prefix).
    allocated_mirror: AtomicU64,
    /// The visible head: the last offset that is durable. Readers never go past it.
    head: watch::Sender<u64>,
}

impl std::fmt::Debug for SledLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SledLog")
            .field("path", &self.path)
            .field("head", &*self.head.borrow())
            .finish_non_exhaustive()
    }
}

/// Maps a sled error: I/O problems may pass (retry), anything else will not.
fn map_sled(context: &str, e: sled::Error) -> LogError {
    match e {
        sled::Error::Io(io) => LogError::Unavailable(format!("{context}: {io}")),
        other => LogError::Other(format!("{context}: {other}")),
    }
}

/// Decodes an offset key written by [`offset_key`].
fn key_offset(key: &[u8]) -> Result<u64, LogError> {
    let bytes: [u8; 8] = key
        .try_into()
        .map_err(|_| LogError::Other(format!("sled log: corrupt record key {key:?}")))?;
    Ok(u64::from_be_bytes(bytes))
}

/// The key of a record: its offset, big-endian so byte order is numeric order.
fn offset_key(offset: u64) -> [u8; 8] {
    offset.to_be_bytes()
}

/// Parses a position of this log: `""` is 0 (before offset 1), else a decimal `u64`.
fn parse_position(position: &Position) -> Result<u64, LogError> {
    if position.is_start() {
        return Ok(0);
    }
    let s = position.as_str();
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LogError::InvalidPosition(s.to_owned()));
    }
    s.parse::<u64>()
        .map_err(|_| LogError::InvalidPosition(s.to_owned()))
}

impl SledLog {
    /// Opens (or creates) the sled log in directory `path`.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] naming the path when the directory cannot be opened, most
    /// often because another process, or another live handle in this process, holds it
    /// (sled allows one open per process); [`LogError::Other`] when the data is corrupt.
    pub fn open(path: impl AsRef<Path>) -> Result<SledLog, LogError> {
        let path = path.as_ref().to_path_buf();
        let context = format!(
            "cannot open sled log at {} (a sled log can be opened by one process, once)",
            path.display()
        );
        let db = sled::Config::new()
            .path(&path)
            .open()
            .map_err(|e| map_sled(&context, e))?;
        let records = db.open_tree("records").map_err(|e| map_sled(&context, e))?;
        let meta = db.open_tree("meta").map_err(|e| map_sled(&context, e))?;
        let from_meta = match meta.get(HEAD_KEY).map_err(|e| map_sled(&context, e))? {
            Some(v) => key_offset(&v)?,
            None => 0,
        };
        let last_key = match records.last().map_err(|e| map_sled(&context, e))? {
            Some((k, _)) => key_offset(&k)?,
            None => 0,
        };
        // Both are written in one transaction; the max is belt and braces.
        let head = from_meta.max(last_key);
        Ok(SledLog {
            path,
            db,
            records,
            meta,
            allocated: Mutex::new(head),
            allocated_mirror: AtomicU64::new(head),
            head: watch::Sender::new(head),
        })
    }

    /// The directory this log lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The offset just before the first record still held: records `(low, head]` exist.
    fn low(&self) -> Result<u64, LogError> {
        match self
            .records
            .first()
            .map_err(|e| map_sled("sled log: read", e))?
        {
            Some((k, _)) => Ok(key_offset(&k)?.saturating_sub(1)),
            None => Ok(self.allocated_mirror.load(Ordering::Acquire)),
        }
    }

    /// Parses `position` and rejects one beyond the visible head (never handed out here).
    fn checked(&self, position: &Position) -> Result<u64, LogError> {
        let offset = parse_position(position)?;
        if offset > *self.head.borrow() {
            return Err(LogError::InvalidPosition(position.as_str().to_owned()));
        }
        Ok(offset)
    }

    /// Reads up to `max` records in `(from, head]`.
    fn scan(&self, from: u64, head: u64, max: usize) -> Result<Vec<(u64, LogRecord)>, LogError> {
        let mut out = Vec::new();
        if from >= head || max == 0 {
            return Ok(out);
        }
        let range = offset_key(from + 1)..=offset_key(head);
        for item in self.records.range(range).take(max) {
            let (k, v) = item.map_err(|e| map_sled("sled log: read", e))?;
            let offset = key_offset(&k)?;
            let record = LogRecord::from_json(&v)
                .map_err(|e| LogError::Other(format!("sled log: offset {offset}: {e}")))?;
            out.push((offset, record));
        }
        Ok(out)
    }
}

#[async_trait]
impl Log for SledLog {
    fn describe(&self) -> String {
        format!("sled://{}", self.path.display())
    }

    async fn ping(&self) -> Result<(), LogError> {
        self.records
            .first()
            .map(|_| ())
            .map_err(|e| map_sled("sled log: ping", e))
    }

    async fn append(&self, records: &[LogRecord]) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        let mut allocated = self.allocated.lock().await;
        let first = *allocated + 1;
        let last = *allocated + records.len() as u64;
        let mut batch = sled::Batch::default();
        for (offset, record) in (first..=last).zip(records) {
            batch.insert(&offset_key(offset), record.to_json());
        }
        (&self.records, &self.meta)
            .transaction(|(recs, meta)| {
                recs.apply_batch(&batch)?;
                meta.insert(HEAD_KEY, &offset_key(last))?;
                Ok::<_, ConflictableTransactionError<LogError>>(())
            })
            .map_err(|e| match e {
                TransactionError::Abort(e) => e,
                TransactionError::Storage(e) => map_sled("sled log: append", e),
            })?;
        // The offsets are taken now, even if the flush below fails or is cancelled: the
        // records are in the tree and become visible with the next successful append.
        *allocated = last;
        self.allocated_mirror.store(last, Ordering::Release);
        self.db
            .flush_async()
            .await
            .map_err(|e| map_sled("sled log: flush", e))?;
        self.head.send_modify(|h| *h = (*h).max(last));
        Ok(())
    }

    async fn read(&self, from: &Position, max: usize, wait: Duration) -> Result<Batch, LogError> {
        let start = self.checked(from)?;
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribe before looking, so an append between the look and the wait still wakes us.
        let mut rx = self.head.subscribe();
        loop {
            let head = *rx.borrow_and_update();
            // Records trimmed below a stale position are gone: look from the first one held.
            let effective = start.max(self.low()?);
            let found = self.scan(effective, head, max)?;
            if let Some((last, _)) = found.last() {
                let next = Position::new(last.to_string());
                let deliveries = found
                    .into_iter()
                    .map(|(_, record)| Delivery { lane: 0, record })
                    .collect();
                return Ok(Batch { deliveries, next });
            }
            if max == 0 {
                break;
            }
            let woke = tokio::time::timeout_at(deadline, rx.wait_for(|h| *h > effective)).await;
            match woke {
                Ok(Ok(_)) => continue,
                // Timed out; the sender lives as long as `self`, so `Err` cannot happen.
                Ok(Err(_)) | Err(_) => break,
            }
        }
        Ok(Batch {
            deliveries: Vec::new(),
            next: from.clone(),
        })
    }

    async fn lag(&self, from: &Position) -> Result<u64, LogError> {
        let start = self.checked(from)?;
        let head = *self.head.borrow();
        Ok(head.saturating_sub(start.max(self.low()?)))
    }

    async fn trim(&self, checkpoints: &[Position]) -> Result<u64, LogError> {
        if checkpoints.is_empty() || checkpoints.iter().any(Position::is_start) {
            return Ok(0);
        }
        let mut min = u64::MAX;
        for cp in checkpoints {
            min = min.min(self.checked(cp)?);
        }
        let records = self.records.clone();
        // Removing many keys is slow work: keep it off the async worker threads.
        let removed = tokio::task::spawn_blocking(move || -> Result<u64, LogError> {
            let mut removed = 0;
            // Ascending order: an interrupted trim still leaves a contiguous suffix.
            for item in records.range(..=offset_key(min)) {
                let (k, _) = item.map_err(|e| map_sled("sled log: trim", e))?;
                if records
                    .remove(&k)
                    .map_err(|e| map_sled("sled log: trim", e))?
                    .is_some()
                {
                    removed += 1;
                }
            }
            Ok(removed)
        })
        .await
        .map_err(|e| LogError::Other(format!("sled log: trim task failed: {e}")))??;
        if removed > 0 {
            self.db
                .flush_async()
                .await
                .map_err(|e| map_sled("sled log: flush", e))?;
        }
        Ok(removed)
    }

    async fn len(&self) -> Result<u64, LogError> {
        let head = *self.head.borrow();
        Ok(head.saturating_sub(self.low()?))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    fn record(seq: u64) -> LogRecord {
        LogRecord {
            id: uuid::Uuid::new_v4(),
            producer: "p".into(),
            seq,
            stream: "rides".into(),
            key: format!("ride-{seq}"),
            kind: "ride.created".into(),
            payload: serde_json::json!({ "distance": seq }),
            correlation_id: None,
            causation_id: None,
            recorded_at_ms: 0,
        }
    }

    fn seqs(batch: &Batch) -> Vec<u64> {
        batch.deliveries.iter().map(|d| d.record.seq).collect()
    }

    #[tokio::test]
    async fn append_read_trim_reopen_keeps_offsets() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path()).unwrap();
        log.append(&[record(1), record(2), record(3)])
            .await
            .unwrap();
        let b = log
            .read(&Position::start(), 2, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(seqs(&b), vec![1, 2]);
        assert_eq!(b.next, Position::new("2"));
        assert_eq!(log.lag(&b.next).await.unwrap(), 1);
        assert_eq!(log.trim(std::slice::from_ref(&b.next)).await.unwrap(), 2);
        assert_eq!(log.len().await.unwrap(), 1);
        assert_eq!(log.lag(&Position::start()).await.unwrap(), 1);
        let all = log.trim(&[Position::new("3")]).await.unwrap();
        assert_eq!(all, 1);
        drop(log);
        let log = SledLog::open(dir.path()).unwrap();
        assert_eq!(log.len().await.unwrap(), 0);
        log.append(&[record(4)]).await.unwrap();
        let b = log
            .read(&Position::new("3"), 10, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(seqs(&b), vec![4]);
        assert_eq!(b.next, Position::new("4"), "offsets are never reused");
    }

    #[tokio::test]
    async fn bad_positions_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path()).unwrap();
        for bad in ["x", "1-0", "-1", "+1", "5"] {
            let err = log.read(&Position::new(bad), 1, Duration::ZERO).await;
            assert!(
                matches!(err, Err(LogError::InvalidPosition(_))),
                "{bad}: {err:?}"
            );
        }
        assert_eq!(log.trim(&[]).await.unwrap(), 0);
    }

    #[tokio::test]
    async fn blocked_reader_wakes_on_append() {
        let dir = tempfile::tempdir().unwrap();
        let log = Arc::new(SledLog::open(dir.path()).unwrap());
        let reader = {
            let log = Arc::clone(&log);
            tokio::spawn(async move {
                log.read(&Position::start(), 10, Duration::from_secs(30))
                    .await
            })
        };
        tokio::task::yield_now().await;
        log.append(&[record(1)]).await.unwrap();
        let b = tokio::time::timeout(Duration::from_secs(10), reader)
            .await
            .expect("reader woke")
            .unwrap()
            .unwrap();
        assert_eq!(seqs(&b), vec![1]);
    }

    #[tokio::test]
    async fn second_open_in_process_names_the_path() {
        let dir = tempfile::tempdir().unwrap();
        let _log = SledLog::open(dir.path()).unwrap();
        let err = SledLog::open(dir.path()).unwrap_err();
        assert!(
            err.to_string().contains(&dir.path().display().to_string()),
            "{err}"
        );
    }
}
