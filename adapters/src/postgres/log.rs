//! The Postgres-only log: the store's outbox table, read by seq.
//!
//! Positions are the decimal seq of the last record read (`""` is the start); there is one
//! lane. Reads run the sequencer first, then return `seq > position` in seq order, and wait on
//! `LISTEN` (or poll, in poll-only mode) when there is nothing yet. Trimming deletes what every
//! checkpoint has passed. Records appended from another store keep their producer and
//! producer seq, so consumers' duplicate rule works across a change of log backend.

use std::time::Duration;

use async_trait::async_trait;
use domain::LogRecord;
use ports::{Batch, Delivery, Log, LogError, Position, StoreError};
use tokio::time::Instant;

use super::error::PgError;
use super::outbox::{
    CLAIMED_ROWS, CLAIMED_SEQ, RECORD_COLUMNS, SEQUENCER_LOCK_CLASS, Staged, UNCLAIMED,
    claimed_countdown, count_above, insert, record_from_row, sequenced_above,
};
use super::{PgOptions, PostgresStore};

/// The log over a Postgres store's outbox table. Cheap to clone.
#[derive(Clone, Debug)]
pub struct PostgresLog {
    store: PostgresStore,
}

/// Parses a position: start, or the decimal seq of the last record read.
fn parse_position(p: &Position) -> Result<i64, LogError> {
    if p.is_start() {
        return Ok(0);
    }
    let s = p.as_str();
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(LogError::InvalidPosition(s.to_owned()));
    }
    s.parse::<i64>()
        .map_err(|_| LogError::InvalidPosition(s.to_owned()))
}

impl PostgresLog {
    /// Connects to `url` with its own pool (see [`PostgresStore::connect`]); the log lives in
    /// the store's outbox table, so `url` and `opts.schema` name the store.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the server cannot be reached; [`LogError::Other`] for
    /// a bad URL, a failed migration or an unmigrated database.
    pub async fn connect(url: &str, opts: PgOptions) -> Result<Self, LogError> {
        let store = PostgresStore::connect(url, opts)
            .await
            .map_err(|e| match e {
                StoreError::Unavailable(m) | StoreError::Conflict(m) => LogError::Unavailable(m),
                StoreError::NotFound(m) | StoreError::Other(m) => LogError::Other(m),
            })?;
        Ok(Self::from_store(store))
    }

    pub(crate) fn from_store(store: PostgresStore) -> Self {
        Self { store }
    }

    /// The store whose outbox this log reads.
    pub fn store(&self) -> &PostgresStore {
        &self.store
    }

    /// How long delivery is being held back right now; `None` when nothing is.
    ///
    /// Two things hold delivery back in this scheme, and this is the age of the older of
    /// them:
    ///
    /// - **a transaction holding staged records**: one that has written to the outbox
    ///   (`RowExclusiveLock` on it and a transaction id) and not committed yet. Its records
    ///   wait for its commit; the age is the transaction's (`now() - xact_start`);
    /// - **the sequencer's lock**: while a transaction holds it, no committed record gets
    ///   its seq, so every reader waits; the age is the holder's transaction's. A normal
    ///   sequencer run holds it for milliseconds.
    ///
    /// Transactions that write elsewhere (another table, another schema's outbox, another
    /// database) hold nothing back and are not counted: records of transactions that commit
    /// after a long one are sequenced at once. Other sessions' `xact_start` is visible to
    /// the same role, a superuser or `pg_read_all_stats`; sessions hidden from this role are
    /// not counted.
    ///
    /// # Errors
    /// [`LogError::Unavailable`] when the server cannot be reached.
    pub async fn held_back(&self) -> Result<Option<Duration>, LogError> {
        let secs: Option<f64> = sqlx::query_scalar(
            "SELECT extract(epoch FROM (now() - min(a.xact_start)))::float8 \
             FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
             WHERE l.granted AND l.pid <> pg_backend_pid() \
               AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database()) \
               AND ((l.locktype = 'relation' AND l.relation = to_regclass('outbox') \
                     AND l.mode = 'RowExclusiveLock' AND a.backend_xid IS NOT NULL) \
                 OR (l.locktype = 'advisory' AND l.classid = $1::oid AND l.objsubid = 2 \
                     AND l.objid = (hashtext(current_schema())::bigint & 4294967295)::oid))",
        )
        .bind(SEQUENCER_LOCK_CLASS)
        .fetch_one(self.store.pool())
        .await
        .map_err(PgError::from)?;
        Ok(secs.map(|s| Duration::from_secs_f64(s.max(0.0))))
    }

    /// Reads, returning the records with their log seqs (the record's own `seq` is its
    /// producer seq, which differs for appended records).
    async fn read_batch(&self, after: i64, max: usize) -> Result<Option<Batch>, PgError> {
        self.store.sequence().await?;
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT seq AS log_seq, {RECORD_COLUMNS} FROM ({}) s ORDER BY seq LIMIT $2",
                sequenced_above("$1", "$2")
            )
        });
        let rows = sqlx::query(sqlx::AssertSqlSafe(SQL.as_str()))
            .bind(after)
            .bind(i64::try_from(max).unwrap_or(i64::MAX))
            .fetch_all(self.store.pool())
            .await?;
        let Some(last) = rows.last() else {
            return Ok(None);
        };
        let last: i64 = sqlx::Row::try_get(last, "log_seq")?;
        let producer = &self.store.inner.producer;
        let deliveries = rows
            .iter()
            .map(|r| record_from_row(r, producer).map(|record| Delivery { lane: 0, record }))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some(Batch {
            deliveries,
            next: Position::new(last.to_string()),
        }))
    }
}

#[async_trait]
impl Log for PostgresLog {
    async fn held_back(&self) -> Result<Option<Duration>, LogError> {
        PostgresLog::held_back(self).await
    }

    fn describe(&self) -> String {
        self.store.inner.describe.clone()
    }

    /// Not gap-free per producer: records appended to this log (another store's, or a
    /// relay's second send) take store sequences from the same counter as this store's own
    /// records, whose producer sequence is that store sequence, so this store's own
    /// sequence skips them. A jump here is not a loss (and the log is the store's own table:
    /// it loses records only with the store).
    fn gap_free_lanes(&self) -> bool {
        false
    }

    async fn ping(&self) -> Result<(), LogError> {
        sqlx::query("SELECT 1")
            .execute(self.store.pool())
            .await
            .map_err(PgError::from)?;
        Ok(())
    }

    async fn append(&self, records: &[LogRecord]) -> Result<(), LogError> {
        if records.is_empty() {
            return Ok(());
        }
        // One statement (insert + `NOTIFY`): atomic without an explicit transaction.
        insert(
            self.store.pool(),
            records.iter().map(Staged::appended),
            Some(self.store.inner.wake.channel()),
        )
        .await?;
        self.store.inner.wake.bump();
        Ok(())
    }

    async fn read(&self, from: &Position, max: usize, wait: Duration) -> Result<Batch, LogError> {
        let after = parse_position(from)?;
        let empty = || Batch {
            deliveries: vec![],
            next: from.clone(),
        };
        if max == 0 {
            return Ok(empty());
        }
        let deadline = Instant::now() + wait;
        let wake = &self.store.inner.wake;
        let mut rx = wake.subscribe();
        loop {
            if let Some(batch) = self.read_batch(after, max).await? {
                return Ok(batch);
            }
            if Instant::now() >= deadline {
                return Ok(empty());
            }
            wake.wait(&mut rx, deadline).await;
        }
    }

    async fn lag(&self, from: &Position) -> Result<u64, LogError> {
        let after = parse_position(from)?;
        self.store.sequence().await?;
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "SELECT (SELECT count(*) FROM outbox WHERE {UNCLAIMED}) + {}",
                count_above("$1")
            )
        });
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(SQL.as_str()))
            .bind(after)
            .fetch_one(self.store.pool())
            .await
            .map_err(PgError::from)?;
        Ok(u64::try_from(n).unwrap_or_default())
    }

    async fn trim(&self, checkpoints: &[Position]) -> Result<u64, LogError> {
        let mut min: Option<i64> = None;
        let mut has_start = false;
        for cp in checkpoints {
            if cp.is_start() {
                has_start = true;
                continue;
            }
            let p = parse_position(cp)?;
            min = Some(min.map_or(p, |m| m.min(p)));
        }
        let Some(min) = min.filter(|_| !has_start) else {
            return Ok(0);
        };
        // Rows sequenced in place at or below `min`, and claimed rows at or below it (their
        // batches count down, and go once empty). One statement.
        static SQL: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
            format!(
                "WITH gone AS (DELETE FROM outbox WHERE seq <= $1 RETURNING 1), \
                 gone_claimed AS ( \
                   DELETE FROM outbox o2 USING ( \
                     SELECT c.first_seq, o.id FROM {CLAIMED_ROWS} \
                     WHERE c.first_seq <= $1 AND {CLAIMED_SEQ} <= $1) h \
                   WHERE o2.id = h.id RETURNING h.first_seq), \
                 {} \
                 SELECT (SELECT count(*) FROM gone) + (SELECT count(*) FROM gone_claimed)",
                claimed_countdown("gone_claimed")
            )
        });
        let done: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(SQL.as_str()))
            .bind(min)
            .fetch_one(self.store.pool())
            .await
            .map_err(PgError::from)?;
        Ok(u64::try_from(done).unwrap_or_default())
    }

    async fn len(&self) -> Result<u64, LogError> {
        Ok(self.store.staged_inner().await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn positions_are_decimal_seqs() {
        assert_eq!(parse_position(&Position::start()), Ok(0));
        assert_eq!(parse_position(&Position::new("42")), Ok(42));
        for bad in ["-1", "1-0", "abc", "99999999999999999999", "+3", " 4"] {
            assert_eq!(
                parse_position(&Position::new(bad)),
                Err(LogError::InvalidPosition(bad.to_owned())),
                "{bad}"
            );
        }
    }
}
