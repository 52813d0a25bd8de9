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
//! an async mutex, then flushes: only then is the batch durable, and only then does the
//! *visible head* (a [`tokio::sync::watch`] channel) move. Readers never look past the
//! visible head, so a reader can never checkpoint a record that a crash could still take
//! back. Waiting readers subscribe to the watch channel before they look, so a wake-up
//! cannot be lost between "found nothing" and "start waiting".
//!
//! # Off the async runtime
//!
//! sled calls block (a write may hit the disk, a flush is an `fsync`), so every call that
//! touches sled runs in *one* [`tokio::task::spawn_blocking`] task per `append`, `read`
//! (only when there is something to read), `trim` and `ping`, never per record. An append's
//! task takes the allocation lock with it: if the caller stops waiting, the task still
//! finishes writing its batch before the next append can allocate offsets. `lag` and `len`
//! touch no sled at all: they are differences of two counters kept in memory, the visible
//! head and the offset below the first record held (read from disk at open, raised by
//! `trim`).
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
use std::sync::Arc;
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
    /// Serialises appends; holds the last allocated offset. An append's blocking task holds
    /// it (owned) until its batch is written, even when the caller stopped waiting.
    allocated: Arc<Mutex<u64>>,
    /// The offset just before the first record held: records `(low, head]` exist. Read from
    /// disk at open; only `trim` raises it.
    low: Arc<AtomicU64>,
    /// The visible head: the last offset that is durable. Readers never go past it.
    head: Arc<watch::Sender<u64>>,
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

/// Maps the failure of a blocking task (a panic inside it) to a log error.
fn join_error(what: &str, e: tokio::task::JoinError) -> LogError {
    LogError::Other(format!("sled log: {what} task failed: {e}"))
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
        let low = match records.first().map_err(|e| map_sled(&context, e))? {
            Some((k, _)) => key_offset(&k)?.saturating_sub(1),
            None => head,
        };
        Ok(SledLog {
            path,
            db,
            records,
            meta,
            allocated: Arc::new(Mutex::new(head)),
            low: Arc::new(AtomicU64::new(low)),
            head: Arc::new(watch::Sender::new(head)),
        })
    }

    /// The directory this log lives in.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The offset just before the first record still held: records `(low, head]` exist.
    fn low(&self) -> u64 {
        self.low.load(Ordering::Acquire)
    }

    /// Parses `position` and rejects one beyond the visible head (never handed out here).
    fn checked(&self, position: &Position) -> Result<u64, LogError> {
        let offset = parse_position(position)?;
        if offset > *self.head.borrow() {
            return Err(LogError::InvalidPosition(position.as_str().to_owned()));
        }
        Ok(offset)
    }
}

/// Reads up to `max` records of `records` in `(from, head]` (blocking: sled).
fn scan(
    records: &sled::Tree,
    from: u64,
    head: u64,
    max: usize,
) -> Result<Vec<(u64, LogRecord)>, LogError> {
    if from >= head || max == 0 {
        return Ok(Vec::new());
    }
    let wanted = usize::try_from(head - from).unwrap_or(usize::MAX).min(max);
    let mut out = Vec::with_capacity(wanted);
    let range = offset_key(from + 1)..=offset_key(head);
    for item in records.range(range).take(max) {
        let (k, v) = item.map_err(|e| map_sled("sled log: read", e))?;
        let offset = key_offset(&k)?;
        let record = LogRecord::from_json(&v)
            .map_err(|e| LogError::Other(format!("sled log: offset {offset}: {e}")))?;
        out.push((offset, record));
    }
    Ok(out)
}

#[async_trait]
impl Log for SledLog {
    fn describe(&self) -> String {
        format!("sled://{}", self.path.display())
    }

    async fn ping(&self) -> Result<(), LogError> {
        let records = self.records.clone();
        tokio::task::spawn_blocking(move || {
            records
                .first()
                .map(|_| ())
                .map_err(|e| map_sled("sled log: ping", e))
        })
        .await
        .map_err(|e| join_error("ping", e))?
    }

    async fn append(&self, records: &[LogRecord]) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        // Encoding is CPU work; it happens before the lock so appends overlap in it.
        let encoded: Vec<Vec<u8>> = records.iter().map(LogRecord::to_json).collect();
        // Owned: the blocking task keeps the offsets locked until its batch is written, even
        // if this future is dropped while it waits for the task.
        let mut allocated = Arc::clone(&self.allocated).lock_owned().await;
        let (tree, meta, db) = (self.records.clone(), self.meta.clone(), self.db.clone());
        let head = Arc::clone(&self.head);
        tokio::task::spawn_blocking(move || {
            let first = *allocated + 1;
            let last = *allocated + encoded.len() as u64;
            let mut batch = sled::Batch::default();
            for (offset, json) in (first..=last).zip(encoded) {
                batch.insert(&offset_key(offset), json);
            }
            (&tree, &meta)
                .transaction(|(recs, meta)| {
                    recs.apply_batch(&batch)?;
                    meta.insert(HEAD_KEY, &offset_key(last))?;
                    Ok::<_, ConflictableTransactionError<LogError>>(())
                })
                .map_err(|e| match e {
                    TransactionError::Abort(e) => e,
                    TransactionError::Storage(e) => map_sled("sled log: append", e),
                })?;
            // The offsets are taken now, even if the flush below fails: the records are in
            // the tree and become visible with the next successful append.
            *allocated = last;
            // The next append may write while this one flushes: a flush makes everything
            // written before it durable, so whichever flush ends first covers both batches
            // and the head it publishes is durable.
            drop(allocated);
            db.flush().map_err(|e| map_sled("sled log: flush", e))?;
            head.send_modify(|h| *h = (*h).max(last));
            Ok(())
        })
        .await
        .map_err(|e| join_error("append", e))?
    }

    async fn read(&self, from: &Position, max: usize, wait: Duration) -> Result<Batch, LogError> {
        let start = self.checked(from)?;
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribe before looking, so an append between the look and the wait still wakes us.
        let mut rx = self.head.subscribe();
        loop {
            let head = *rx.borrow_and_update();
            // Records trimmed below a stale position are gone: look from the first one held.
            let effective = start.max(self.low());
            let found = if effective < head && max > 0 {
                let records = self.records.clone();
                tokio::task::spawn_blocking(move || scan(&records, effective, head, max))
                    .await
                    .map_err(|e| join_error("read", e))??
            } else {
                Vec::new()
            };
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
        Ok(head.saturating_sub(start.max(self.low())))
    }

    async fn trim(&self, checkpoints: &[Position]) -> Result<u64, LogError> {
        if checkpoints.is_empty() || checkpoints.iter().any(Position::is_start) {
            return Ok(0);
        }
        let mut min = u64::MAX;
        for cp in checkpoints {
            min = min.min(self.checked(cp)?);
        }
        let (records, db) = (self.records.clone(), self.db.clone());
        let low = Arc::clone(&self.low);
        // Removing many keys and flushing are slow, blocking work: one task for both.
        tokio::task::spawn_blocking(move || -> Result<u64, LogError> {
            let mut removed = 0;
            // Ascending order: an interrupted trim still leaves a contiguous suffix, whose
            // start `low` follows as keys go.
            for item in records.range(..=offset_key(min)) {
                let (k, _) = item.map_err(|e| map_sled("sled log: trim", e))?;
                if records
                    .remove(&k)
                    .map_err(|e| map_sled("sled log: trim", e))?
                    .is_some()
                {
                    removed += 1;
                }
                low.fetch_max(key_offset(&k)?, Ordering::AcqRel);
            }
            // Every record up to `min` is gone now (`min` is at most the visible head).
            low.fetch_max(min, Ordering::AcqRel);
            if removed > 0 {
                db.flush().map_err(|e| map_sled("sled log: flush", e))?;
            }
            Ok(removed)
        })
        .await
        .map_err(|e| join_error("trim", e))?
    }

    async fn len(&self) -> Result<u64, LogError> {
        let head = *self.head.borrow();
        Ok(head.saturating_sub(self.low()))
    }

    /// A position above the head: the directory was restored from a backup older than the
    /// reader's checkpoint (reads refuse such a position).
    async fn beyond_end(&self, from: &Position) -> Result<bool, LogError> {
        Ok(parse_position(from)? > *self.head.borrow())
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    /// Reopens a log whose last handle was just dropped. sled releases its directory lock
    /// from its background flusher shortly after the drop, so a reopen in the same process
    /// retries for a while (a restarted process never sees this: the lock dies with it).
    async fn open_again(path: &std::path::Path) -> SledLog {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            match SledLog::open(path) {
                Ok(log) => return log,
                Err(e) if std::time::Instant::now() > deadline => panic!("reopen: {e}"),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

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
        let log = open_again(dir.path()).await;
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
    async fn an_abandoned_append_still_owns_its_offsets() {
        use futures::FutureExt;

        let dir = tempfile::tempdir().unwrap();
        let log = SledLog::open(dir.path()).unwrap();
        // Polled once, then dropped: its blocking task carries on with offset 1 locked.
        let first = [record(1)];
        assert!(log.append(&first).now_or_never().is_none_or(|r| r.is_ok()));
        log.append(&[record(2)]).await.unwrap();
        let b = log
            .read(&Position::start(), 10, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(seqs(&b), vec![1, 2], "the abandoned batch keeps offset 1");
        assert_eq!(b.next, Position::new("2"));
        assert_eq!(log.len().await.unwrap(), 2);
        assert_eq!(log.lag(&Position::new("1")).await.unwrap(), 1);
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
