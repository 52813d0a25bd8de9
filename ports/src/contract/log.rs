//! Scenarios for the log contract ([`crate::Log`]).
//!
//! The scenarios hold for a log of one lane and for a log of many (Kafka partitions): they
//! never assume that one `read` returns everything that is there, and they check order per
//! `(producer, lane)`, which is the only order the log promises and the one the consumers'
//! duplicate rule relies on.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use domain::{DistanceState, LogRecord, Marks, Seen};
use uuid::Uuid;

use super::LogFactory;
use super::fixtures::{distance_of, rides, unique, within};
use crate::{Batch, Delivery, Log, LogError, Position};

/// The wait of a read that expects nothing more (an empty read returns after it).
const SHORT_WAIT: Duration = Duration::from_millis(50);
/// The wait of a read that expects records to be there already.
const READ_WAIT: Duration = Duration::from_millis(500);

async fn append(log: &Arc<dyn Log>, records: &[LogRecord]) {
    within("append", log.append(records))
        .await
        .unwrap_or_else(|e| panic!("append of {} records must succeed: {e}", records.len()));
}

async fn read(log: &Arc<dyn Log>, from: &Position, max: usize, wait: Duration) -> Batch {
    within("read", log.read(from, max, wait))
        .await
        .unwrap_or_else(|e| panic!("read from {from} must succeed: {e}"))
}

/// Reads from `from` until `n` records came back; returns them and the position after them.
/// Panics when a read returns more than asked, or nothing arrives within the wait limit.
async fn read_n(log: &Arc<dyn Log>, from: &Position, n: usize) -> (Vec<Delivery>, Position) {
    let mut got = Vec::with_capacity(n);
    let mut at = from.clone();
    let started = Instant::now();
    while got.len() < n {
        let want = n - got.len();
        let batch = read(log, &at, want, READ_WAIT).await;
        assert!(
            batch.deliveries.len() <= want,
            "read must return at most `max` records: asked {want}, got {}",
            batch.deliveries.len()
        );
        if batch.deliveries.is_empty() {
            assert_eq!(batch.next, at, "an empty read must return next == from");
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "read skipped records: {} of {n} came back after {from}",
                got.len()
            );
        }
        got.extend(batch.deliveries);
        at = batch.next;
    }
    (got, at)
}

/// Reads from `from` to the end (until an empty read); returns everything and the end.
async fn read_to_end(log: &Arc<dyn Log>, from: &Position) -> (Vec<Delivery>, Position) {
    let mut got = Vec::new();
    let mut at = from.clone();
    loop {
        let batch = read(log, &at, 1000, SHORT_WAIT).await;
        if batch.deliveries.is_empty() {
            assert_eq!(batch.next, at, "an empty read must return next == from");
            return (got, at);
        }
        got.extend(batch.deliveries);
        at = batch.next;
    }
}

/// Panics unless `got` holds exactly `expected` (same records, each once), and each lane
/// returns them in append order.
fn assert_same_records(got: &[Delivery], expected: &[LogRecord], rule: &str) {
    let by_id: BTreeMap<Uuid, &LogRecord> = expected.iter().map(|r| (r.id, r)).collect();
    assert_eq!(
        got.len(),
        expected.len(),
        "{rule}: expected {} records, read {}",
        expected.len(),
        got.len()
    );
    let mut seen = BTreeSet::new();
    for d in got {
        let want = by_id
            .get(&d.record.id)
            .unwrap_or_else(|| panic!("{rule}: read a record that was not appended: {d:?}"));
        assert_eq!(&d.record, *want, "{rule}: a record changed on its way");
        assert!(seen.insert(d.record.id), "{rule}: record read twice");
    }
    let rank: BTreeMap<Uuid, usize> = expected
        .iter()
        .enumerate()
        .map(|(i, r)| (r.id, i))
        .collect();
    assert_per_lane_order(got, |d| rank[&d.record.id], rule);
}

/// Panics unless `key(d)` strictly increases along each lane.
fn assert_per_lane_order(got: &[Delivery], key: impl Fn(&Delivery) -> usize, rule: &str) {
    let mut last: BTreeMap<u32, usize> = BTreeMap::new();
    for d in got {
        let k = key(d);
        if let Some(prev) = last.insert(d.lane, k) {
            assert!(
                prev < k,
                "{rule}: lane {} returned records out of append order",
                d.lane
            );
        }
    }
}

/// What a distance consumer keeps: the runtime's duplicate marks and the fold.
#[derive(Debug, Clone, Default)]
struct Consumer {
    marks: Marks,
    duplicates: u64,
    fold: DistanceState,
}

/// Folds deliveries into `state` as the consumer runtime does: the duplicate rule, then the
/// distance fold.
fn fold(state: &mut Consumer, deliveries: &[Delivery]) {
    for d in deliveries {
        if state.marks.see(d.lane, &d.record) == Seen::Duplicate {
            state.duplicates += 1;
        } else {
            state.fold.apply(&d.record);
        }
    }
}

/// Rule: records appended (in one or several batches) are read back complete, unchanged and,
/// per lane, in append order.
/// Preconditions: a fresh log.
pub async fn append_then_read_in_order(f: &dyn LogFactory) {
    let log = f.fresh().await;
    let records = rides(&unique("p"), 1, 8);
    append(&log, &records[..5]).await;
    append(&log, &records[5..]).await;
    let (got, _) = read_n(&log, &Position::start(), records.len()).await;
    assert_same_records(&got, &records, "append then read");
    let (more, _) = read_to_end(&log, &Position::start()).await;
    assert_eq!(more.len(), records.len(), "a read must not invent records");
}

/// Rule: reading part of the log and continuing from the returned `next` yields every record
/// exactly once: no duplicate, no skip.
/// Preconditions: a fresh log.
pub async fn read_resumes_from_a_position(f: &dyn LogFactory) {
    let log = f.fresh().await;
    let records = rides(&unique("p"), 1, 10);
    append(&log, &records).await;
    let first = read(&log, &Position::start(), 4, READ_WAIT).await;
    assert!(
        !first.deliveries.is_empty() && first.deliveries.len() <= 4,
        "read(max 4) over 10 records must return 1..=4, got {}",
        first.deliveries.len()
    );
    assert_ne!(
        first.next,
        Position::start(),
        "next must move past what was read"
    );
    let rest = records.len() - first.deliveries.len();
    let (second, end) = read_n(&log, &first.next, rest).await;
    let mut all = first.deliveries;
    all.extend(second);
    assert_same_records(&all, &records, "resume from next");
    let tail = read(&log, &end, 10, SHORT_WAIT).await;
    assert!(
        tail.deliveries.is_empty(),
        "reading from the end must return nothing, got {} records",
        tail.deliveries.len()
    );
}

/// Rule: reading every lane on its own (`read_lane`, or a [`crate::LaneLog`] view) yields
/// every record exactly once, each lane's records from that lane only and in append order;
/// a lane's `lag` counts what is left of that lane; merging the lanes' end positions gives a
/// position of the whole log after which nothing is left. A lane the log does not have is an
/// error. (One-lane logs: lane 0 is the whole log.)
/// Preconditions: a fresh log.
pub async fn lanes_read_separately_cover_the_log(f: &dyn LogFactory) {
    let log = f.fresh().await;
    let records = rides(&unique("p"), 1, 12);
    append(&log, &records).await;
    let lanes = log.lanes();
    assert!(lanes >= 1, "a log has at least one lane");
    let mut all = Vec::new();
    let mut ends = Vec::new();
    for lane in 0..lanes {
        let view: Arc<dyn Log> = Arc::new(
            crate::LaneLog::new(log.clone(), lane)
                .unwrap_or_else(|e| panic!("lane {lane} of {lanes} must exist: {e}")),
        );
        let (got, end) = read_to_end(&view, &Position::start()).await;
        assert!(
            got.iter().all(|d| d.lane == lane),
            "lane {lane} returned records of another lane"
        );
        let lag = within("lag_lane", log.lag_lane(lane, &Position::start()))
            .await
            .unwrap_or_else(|e| panic!("lag of lane {lane}: {e}"));
        assert_eq!(lag, got.len() as u64, "lane {lane}'s lag from the start");
        let left = within("lag_lane", log.lag_lane(lane, &end))
            .await
            .unwrap_or_else(|e| panic!("lag of lane {lane}: {e}"));
        assert_eq!(left, 0, "nothing is left after lane {lane}'s end");
        all.extend(got);
        ends.push(end);
    }
    assert_same_records(&all, &records, "lanes read separately");
    let whole = log
        .merge_lanes(&ends)
        .unwrap_or_else(|e| panic!("merging one end position per lane: {e}"));
    assert_eq!(
        within("lag", log.lag(&whole))
            .await
            .unwrap_or_else(|e| panic!("lag: {e}")),
        0,
        "the merged end position has nothing after it"
    );
    assert!(
        crate::LaneLog::new(log.clone(), lanes).is_err(),
        "lane {lanes} of a {lanes}-lane log must be an error"
    );
    assert!(
        log.merge_lanes(&ends[1..]).is_err(),
        "merging fewer positions than lanes must be an error"
    );
}

/// Rule: `read` returns at most `max` records.
/// Preconditions: a fresh log.
pub async fn read_respects_max(f: &dyn LogFactory) {
    let log = f.fresh().await;
    append(&log, &rides(&unique("p"), 1, 10)).await;
    for max in [1, 3, 9] {
        let batch = read(&log, &Position::start(), max, READ_WAIT).await;
        assert!(
            !batch.deliveries.is_empty() && batch.deliveries.len() <= max,
            "read(max {max}) over 10 records must return 1..={max}, got {}",
            batch.deliveries.len()
        );
    }
}

/// Rule: a read on an empty log waits, and wakes as soon as a record is appended (no fixed
/// sleep, no waiting out the timeout).
/// Preconditions: a fresh log. A reader waits up to 30 s; the record is appended ~100 ms
/// later; the reader must return it well before 30 s (bound: 10 s).
pub async fn read_waits_and_wakes_on_append(f: &dyn LogFactory) {
    let log = f.fresh().await;
    let reader = {
        let log = Arc::clone(&log);
        tokio::spawn(async move {
            let started = Instant::now();
            let batch = log
                .read(&Position::start(), 10, Duration::from_secs(30))
                .await;
            (batch, started.elapsed())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let records = rides(&unique("p"), 1, 1);
    append(&log, &records).await;
    let (batch, elapsed) = within("a waiting read after an append", reader)
        .await
        .unwrap_or_else(|e| panic!("reader task panicked: {e}"));
    let batch = batch.unwrap_or_else(|e| panic!("waiting read must succeed: {e}"));
    assert_same_records(&batch.deliveries, &records, "waiting read");
    assert!(
        elapsed < Duration::from_secs(10),
        "a waiting read must wake on append, but took {elapsed:?} (the wait was 30 s)"
    );
}

/// Rule: a read with nothing to return waits out `wait` and returns no records with
/// `next == from`.
/// Preconditions: a fresh log.
pub async fn read_on_empty_log_times_out_empty(f: &dyn LogFactory) {
    let log = f.fresh().await;
    let batch = read(&log, &Position::start(), 10, SHORT_WAIT).await;
    assert!(batch.deliveries.is_empty(), "an empty log returned records");
    assert_eq!(
        batch.next,
        Position::start(),
        "an empty read must return next == from"
    );
}

/// Rule: the log keeps duplicates (a double send is two appends); deduplication is the
/// consumers' job.
/// Preconditions: a fresh log.
pub async fn duplicates_are_kept(f: &dyn LogFactory) {
    let log = f.fresh().await;
    let records = rides(&unique("p"), 1, 3);
    append(&log, &records).await;
    append(&log, &records).await;
    let (got, _) = read_n(&log, &Position::start(), 6).await;
    for r in &records {
        let n = got.iter().filter(|d| d.record == *r).count();
        assert_eq!(n, 2, "a record appended twice must be read twice, read {n}");
    }
    let (rest, _) = read_to_end(&log, &Position::start()).await;
    assert_eq!(rest.len(), 6, "duplicates: expected 6 records in all");
}

/// Rule: `lag(from)` counts the records after `from`.
/// Preconditions: a fresh log.
pub async fn lag_counts_records_after_a_position(f: &dyn LogFactory) {
    let log = f.fresh().await;
    let lag = |p: Position| {
        let log = Arc::clone(&log);
        async move {
            within("lag", log.lag(&p))
                .await
                .unwrap_or_else(|e| panic!("lag({p}) must succeed: {e}"))
        }
    };
    assert_eq!(lag(Position::start()).await, 0, "lag of an empty log");
    append(&log, &rides(&unique("p"), 1, 6)).await;
    assert_eq!(lag(Position::start()).await, 6, "lag from the start");
    let first = read(&log, &Position::start(), 2, READ_WAIT).await;
    let k = first.deliveries.len() as u64;
    assert_eq!(
        lag(first.next.clone()).await,
        6 - k,
        "lag after reading {k}"
    );
    let (_, end) = read_to_end(&log, &first.next).await;
    assert_eq!(lag(end).await, 0, "lag at the end");
}

/// Rule: `len` counts the records the log holds.
/// Preconditions: a fresh log.
pub async fn len_counts_records(f: &dyn LogFactory) {
    let log = f.fresh().await;
    let len = || async {
        within("len", log.len())
            .await
            .unwrap_or_else(|e| panic!("len: {e}"))
    };
    assert_eq!(len().await, 0, "len of a fresh log");
    let p = unique("p");
    append(&log, &rides(&p, 1, 3)).await;
    assert_eq!(len().await, 3, "len after appending 3");
    append(&log, &rides(&p, 4, 2)).await;
    assert_eq!(len().await, 5, "len after appending 5");
}

/// Rule: `trim` removes only what every checkpoint has passed: with one consumer at the end
/// and one in the middle, the slower one can still read everything after its position, the
/// same records; an empty slice or a [`Position::start`] among the checkpoints removes
/// nothing.
/// Preconditions: a fresh log.
pub async fn trim_never_removes_unread(f: &dyn LogFactory) {
    let log = f.fresh().await;
    let records = rides(&unique("p"), 1, 10);
    append(&log, &records).await;
    let (_, fast) = read_n(&log, &Position::start(), records.len()).await;
    let (slow_read, slow) = read_n(&log, &Position::start(), 4).await;
    let trim = |cps: Vec<Position>| {
        let log = Arc::clone(&log);
        async move {
            within("trim", log.trim(&cps))
                .await
                .unwrap_or_else(|e| panic!("trim must succeed: {e}"))
        }
    };
    let len = || async {
        within("len", log.len())
            .await
            .unwrap_or_else(|e| panic!("len: {e}"))
    };

    assert_eq!(
        trim(vec![]).await,
        0,
        "trim with no checkpoints must remove nothing"
    );
    assert_eq!(len().await, 10, "trim with no checkpoints removed records");
    assert_eq!(
        trim(vec![fast.clone(), Position::start()]).await,
        0,
        "trim with a checkpoint at the start must remove nothing"
    );
    assert_eq!(
        len().await,
        10,
        "trim with a start checkpoint removed records"
    );
    let (all, _) = read_n(&log, &Position::start(), 10).await;
    assert_same_records(&all, &records, "after trims that remove nothing");

    let removed = trim(vec![fast.clone(), slow.clone()]).await;
    assert!(
        removed <= 4,
        "trim removed {removed} records but the slower consumer had read only 4"
    );
    assert_eq!(len().await, 10 - removed, "trim's count must match len");
    let unread: Vec<LogRecord> = records
        .iter()
        .filter(|r| !slow_read.iter().any(|d| d.record.id == r.id))
        .cloned()
        .collect();
    let (after, _) = read_to_end(&log, &slow).await;
    assert_same_records(
        &after,
        &unread,
        "trim removed records the slower consumer had not read",
    );
    let (nothing, _) = read_to_end(&log, &fast).await;
    assert!(
        nothing.is_empty(),
        "the faster consumer must have nothing left"
    );
}

/// Rule: a position this log did not produce is [`LogError::InvalidPosition`] for `read`,
/// `lag` and `trim`, never a panic.
/// Preconditions: a fresh log with records.
pub async fn invalid_position_is_an_error(f: &dyn LogFactory) {
    let log = f.fresh().await;
    append(&log, &rides(&unique("p"), 1, 2)).await;
    let bad = Position::new("not a position ✗");
    let read = within("read(garbage)", log.read(&bad, 10, SHORT_WAIT)).await;
    assert!(
        matches!(read, Err(LogError::InvalidPosition(_))),
        "read from a garbage position must be InvalidPosition, got {read:?}"
    );
    let lag = within("lag(garbage)", log.lag(&bad)).await;
    assert!(
        matches!(lag, Err(LogError::InvalidPosition(_))),
        "lag from a garbage position must be InvalidPosition, got {lag:?}"
    );
    let trim = within("trim(garbage)", log.trim(std::slice::from_ref(&bad))).await;
    assert!(
        matches!(trim, Err(LogError::InvalidPosition(_))),
        "trim with a garbage position must be InvalidPosition, got {trim:?}"
    );
}

/// Rule (invariant 2): a double send (the relay crashed between publishing and deleting
/// from the outbox, then published the same batch again) leaves the consumers' fold
/// unchanged.
/// Preconditions: a fresh log.
pub async fn double_send_leaves_fold_unchanged(f: &dyn LogFactory) {
    let log = f.fresh().await;
    let batch = rides(&unique("p"), 1, 5);
    append(&log, &batch).await;
    let (once, _) = read_n(&log, &Position::start(), 5).await;
    let mut first = Consumer::default();
    fold(&mut first, &once);
    assert_eq!(
        (first.fold.rides, first.fold.distance_mm),
        (5, distance_of(&batch)),
        "fold of 5 rides"
    );
    append(&log, &batch).await;
    let (twice, _) = read_n(&log, &Position::start(), 10).await;
    let mut second = Consumer::default();
    fold(&mut second, &twice);
    assert_eq!(
        (second.fold.rides, second.fold.distance_mm),
        (first.fold.rides, first.fold.distance_mm),
        "a double send changed the fold"
    );
    assert_eq!(
        second.duplicates, 5,
        "the repeated records must be seen as duplicates"
    );
}

/// Rule (invariant 2): a consumer that crashes after folding a batch but before saving reads
/// the batch again from its saved position and counts it once; folding a redelivered batch
/// into a state that already holds it counts nothing either.
/// Preconditions: a fresh log.
pub async fn consumer_crash_before_commit_never_applies_twice(f: &dyn LogFactory) {
    let log = f.fresh().await;
    let records = rides(&unique("p"), 1, 6);
    append(&log, &records).await;
    // Commit a first part: state and position are "saved" together.
    let (part, saved_pos) = read_n(&log, &Position::start(), 2).await;
    let mut saved = Consumer::default();
    fold(&mut saved, &part);
    // Read and fold the next batch, then crash before saving.
    let (batch, _) = read_n(&log, &saved_pos, 2).await;
    let mut working = saved.clone();
    fold(&mut working, &batch);
    // Restart: reload the saved state, re-read from the saved position.
    let mut restarted = saved.clone();
    let (redelivered, _) = read_n(&log, &saved_pos, records.len() - part.len()).await;
    fold(&mut restarted, &redelivered);
    assert_eq!(
        (restarted.fold.rides, restarted.fold.distance_mm),
        (6, distance_of(&records)),
        "after a crash before commit each ride must be counted once"
    );
    // The same redelivery folded into the unsaved working state (had the state been saved
    // without its position) must count nothing twice either.
    fold(&mut working, &redelivered);
    assert_eq!(
        (working.fold.rides, working.fold.distance_mm),
        (6, distance_of(&records)),
        "a redelivered batch was applied twice"
    );
}

/// Rule: concurrent appenders never reorder one producer's records within a lane, and lose
/// none: 4 tasks each append 50 batches of 5 records under their own producer.
/// Preconditions: a fresh log.
pub async fn concurrent_appenders_keep_per_producer_order(f: &dyn LogFactory) {
    const TASKS: u64 = 4;
    const BATCHES: u64 = 50;
    const PER_BATCH: u64 = 5;
    let log = f.fresh().await;
    let base = unique("p");
    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let log = Arc::clone(&log);
        let producer = format!("{base}-{t}");
        tasks.push(tokio::spawn(async move {
            for b in 0..BATCHES {
                let batch = rides(&producer, 1 + b * PER_BATCH, PER_BATCH);
                log.append(&batch)
                    .await
                    .unwrap_or_else(|e| panic!("concurrent append failed: {e}"));
            }
        }));
    }
    for t in tasks {
        within("an appender task", t)
            .await
            .unwrap_or_else(|e| panic!("appender task panicked: {e}"));
    }
    let total = (TASKS * BATCHES * PER_BATCH) as usize;
    let (got, end) = read_n(&log, &Position::start(), total).await;
    let (extra, _) = read_to_end(&log, &end).await;
    assert!(
        extra.is_empty(),
        "read {} records more than appended",
        extra.len()
    );
    let mut last: BTreeMap<(String, u32), u64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for d in &got {
        let r = &d.record;
        if let Some(prev) = last.insert((r.producer.clone(), d.lane), r.seq) {
            assert!(
                prev < r.seq,
                "producer {} on lane {}: seq {} came after {prev} (reordered)",
                r.producer,
                d.lane,
                r.seq
            );
        }
        assert!(
            seen.insert((r.producer.clone(), r.seq)),
            "record {}#{} read twice",
            r.producer,
            r.seq
        );
    }
    assert_eq!(seen.len(), total, "concurrent appends lost records");
}

/// Rule: a reopened log (a restarted process) keeps its records, and positions handed out
/// before the restart still work: reading from one returns exactly the rest.
/// Preconditions: a fresh log; skipped when the factory's `reopen` returns `None` (memory).
pub async fn reopen_keeps_records_and_positions(f: &dyn LogFactory) {
    let log = f.fresh().await;
    let records = rides(&unique("p"), 1, 10);
    append(&log, &records).await;
    let (first_half, half) = read_n(&log, &Position::start(), 5).await;
    let Some(log) = f.reopen(log).await else {
        return;
    };
    let rest: Vec<LogRecord> = records
        .iter()
        .filter(|r| !first_half.iter().any(|d| d.record.id == r.id))
        .cloned()
        .collect();
    let (got, _) = read_to_end(&log, &half).await;
    assert_same_records(&got, &rest, "after reopen, reading from a saved position");
}
