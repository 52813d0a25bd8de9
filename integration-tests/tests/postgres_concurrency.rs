//! Postgres-only log under many concurrent writers (DESIGN.md invariant 4).
//!
//! 16 writers each run raw transactions that stage records exactly as a phase does
//! (`PostgresStore::stage_in`: rows with seq NULL plus the `NOTIFY`), wait a random 0–20 ms
//! before finishing, and roll back about one transaction in five, until 10 000 records are
//! committed. Meanwhile two readers follow the log with `PostgresLog::read` from their own
//! positions: one through the store's pool with `LISTEN`, one through its own connection in
//! poll-only mode (as another process behind PgBouncer would). When the writers are done and
//! the log is drained, every reader must have read every committed record exactly once, no
//! rolled-back record, and seqs that strictly increase.

mod harness;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use adapters::postgres::{PgOptions, PostgresLog, PostgresStore};
use domain::NewRecord;
use ports::{Log, Position};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use uuid::Uuid;

const WRITERS: usize = 16;
const RECORDS: usize = 10_000;
const PER_WRITER: usize = RECORDS / WRITERS;

/// The test service URL: from the environment, a container, or a clear failure (see `harness`).
async fn url() -> String {
    harness::postgres_url().await
}

fn record(writer: usize, n: usize) -> NewRecord {
    NewRecord {
        id: Uuid::new_v4(),
        stream: "rides".into(),
        key: format!("ride:{writer}"),
        kind: "test.staged".into(),
        payload: serde_json::json!({ "writer": writer, "n": n }),
        correlation_id: None,
        causation_id: None,
        recorded_at_ms: 0,
    }
}

/// What one writer did: ids it committed, ids it rolled back.
type Outcome = (Vec<Uuid>, Vec<Uuid>);

async fn writer(store: PostgresStore, w: usize) -> Outcome {
    let mut rng = StdRng::seed_from_u64(w as u64);
    let (mut committed, mut rolled_back) = (Vec::new(), Vec::new());
    let mut n = 0;
    while committed.len() < PER_WRITER {
        let batch: Vec<_> = (0..rng.random_range(1..=4))
            .map(|_| {
                n += 1;
                record(w, n)
            })
            .collect();
        let mut tx = store.pool().begin().await.expect("begin");
        store.stage_in(&mut tx, &batch).await.expect("stage");
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..=20))).await;
        let ids = batch.iter().map(|r| r.id);
        if rng.random_bool(0.2) {
            tx.rollback().await.expect("rollback");
            rolled_back.extend(ids);
        } else {
            tx.commit().await.expect("commit");
            committed.extend(ids);
        }
    }
    (committed, rolled_back)
}

/// Reads until the writers are done and nothing is left; returns every record id read, in
/// order, after checking that seqs strictly increase.
async fn reader(log: PostgresLog, done: Arc<AtomicBool>) -> Vec<Uuid> {
    let mut pos = Position::start();
    let mut last_seq = 0_u64;
    let mut seen = Vec::new();
    loop {
        let finished = done.load(Ordering::SeqCst);
        let batch = log
            .read(&pos, 500, Duration::from_millis(200))
            .await
            .expect("read");
        for d in &batch.deliveries {
            assert!(
                d.record.seq > last_seq,
                "seq went from {last_seq} to {}",
                d.record.seq
            );
            last_seq = d.record.seq;
            seen.push(d.record.id);
        }
        assert_eq!(batch.next, Position::new(last_seq.to_string()));
        pos = batch.next;
        // Drained: the writers had finished before this read, and nothing (sequenced or not)
        // is left after our position.
        if finished && batch.deliveries.is_empty() && log.lag(&pos).await.expect("lag") == 0 {
            return seen;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_with_delays_and_rollbacks_skip_nothing_and_invent_nothing() {
    let schema = format!("rides_test_{}", Uuid::new_v4().simple());
    let opts = PgOptions {
        schema: Some(schema.clone()),
        max_connections: WRITERS as u32 + 6,
        ..PgOptions::default()
    };
    let store = PostgresStore::connect(&url().await, opts.clone())
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let poll_only = PostgresLog::connect(
        &url().await,
        PgOptions {
            listen: false,
            max_connections: 3,
            ..opts
        },
    )
    .await
    .unwrap_or_else(|e| panic!("connect the poll-only log: {e}"));

    let done = Arc::new(AtomicBool::new(false));
    let readers = [store.log(), poll_only].map(|log| tokio::spawn(reader(log, Arc::clone(&done))));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(store.clone(), w)))
        .collect();

    let (mut committed, mut rolled_back) = (HashSet::new(), HashSet::new());
    for w in writers {
        let (c, r) = w.await.expect("writer task");
        committed.extend(c);
        rolled_back.extend(r);
    }
    done.store(true, Ordering::SeqCst);
    assert!(committed.len() >= RECORDS, "{} committed", committed.len());
    assert!(
        !rolled_back.is_empty(),
        "the test must roll some transactions back"
    );

    for (i, r) in readers.into_iter().enumerate() {
        let seen = tokio::time::timeout(Duration::from_secs(60), r)
            .await
            .unwrap_or_else(|_| panic!("reader {i} did not drain the log in time"))
            .expect("reader task");
        let mut counts: HashMap<Uuid, usize> = HashMap::new();
        for id in &seen {
            *counts.entry(*id).or_default() += 1;
        }
        let phantom = counts.keys().filter(|id| !committed.contains(id)).count();
        let rolled = counts.keys().filter(|id| rolled_back.contains(id)).count();
        let skipped = committed
            .iter()
            .filter(|id| !counts.contains_key(id))
            .count();
        let twice = counts.values().filter(|&&n| n > 1).count();
        assert_eq!(
            (skipped, phantom, rolled, twice),
            (0, 0, 0, 0),
            "reader {i}: (skipped, phantom, rolled back but read, read twice) of {} committed",
            committed.len()
        );
    }

    // Leave nothing behind in the shared test database.
    let drop = format!("DROP SCHEMA \"{schema}\" CASCADE");
    sqlx::query(sqlx::AssertSqlSafe(drop))
        .execute(store.pool())
        .await
        .expect("drop the test schema");
}
