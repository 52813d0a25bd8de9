//! What the SQLite and Postgres reactor stores ([`ports::ReactorStore`]) share: the
//! statements (`$n` placeholders valid on both dialects, which differ only in the row-lock
//! clauses and the JSON cast) and one body of every method ([`sql_reactor_store!`]), so the
//! claim and acknowledgement rules are written once.
//!
//! # A claim (one transaction; the claim itself is ONE statement)
//!
//! ```text
//!  1. the group's batch size (UnknownGroup if none)
//!  2. offsets rows (global_seq 0) for streams the group has none for, in stream order (one
//!     lock order for concurrent claimers)  ── ON CONFLICT DO NOTHING
//!  3. WITH next AS (SELECT the offset whose stream has the oldest pending message of the
//!                   group's types, unclaimed, not parked, not backing off, group active and
//!                   not paused  ORDER BY global_seq LIMIT 1  FOR UPDATE OF o SKIP LOCKED)
//!     UPDATE es_offsets SET claimed_by, claimed_at_ms ... RETURNING offset, retry count
//!  4. the batch: the stream's pending messages of the group's types, with replay flags
//!  COMMIT (an empty batch, a race lost to an acknowledgement, rolls back instead)
//! ```
//!
//! On Postgres `SKIP LOCKED` lets concurrent claimers pass over each other's candidate rows
//! without waiting, and the `claimed_by IS NULL` condition is re-checked on the locked row,
//! so two workers never claim one (group, stream). On SQLite the single writer serializes
//! claims (`BEGIN IMMEDIATE`), so the lock clauses are empty.
//!
//! # A settlement (one transaction)
//!
//! ```text
//!  1. UPDATE the claimed offset (acknowledge: a maximum; release; failure or reset of the
//!     retry count) WHERE claimed_by = the worker  ── 0 rows: ClaimLost, roll back
//!  2. other messages acknowledged (offset upserts, maxima)
//!  3. the commit's appends and sync ops (the event store's commit body, same transaction)
//!  4. scheduled messages
//!  COMMIT, then the store's wake-up
//! ```
//!
//! Lock order: offsets, then stream rows, then the global counter (as every event-store
//! commit, which locks streams then the counter), so settlements and commits never wait for
//! each other in a cycle. Two settlements acknowledging each other's streams
//! ([`domain::es::Action::Ack`]) can deadlock on Postgres; the one Postgres aborts gets a
//! retryable error, having written nothing. A failed step rolls everything back: the claim
//! is still held and the caller releases it with the failure.

/// The [`RxSql`] of a dialect: `claim_lock` ends the claim's candidate query,
/// `scheduled_lock` the promotion's, `json` casts a JSON text parameter.
macro_rules! rx_sql {
    (claim_lock = $lock:literal, scheduled_lock = $slock:literal, json = $json:literal, uuid = $uuid:literal) => {
        $crate::sql_reactor_store::RxSql {
            register: "INSERT INTO es_groups (group_id, created_after_ms, batch_size) \
                 VALUES ($1, $2, $3) \
                 ON CONFLICT (group_id) DO UPDATE SET batch_size = excluded.batch_size",
            delete_types: "DELETE FROM es_group_types WHERE group_id = $1",
            insert_type: "INSERT INTO es_group_types (group_id, type) VALUES ($1, $2) \
                 ON CONFLICT DO NOTHING",
            batch_size: "SELECT batch_size FROM es_groups WHERE group_id = $1",
            stop: "UPDATE es_groups SET status = 'stopped', reason = $2, retry_at_ms = NULL \
                 WHERE group_id = $1",
            start: "UPDATE es_groups SET status = 'active', reason = NULL, retry_at_ms = NULL \
                 WHERE group_id = $1",
            pause: "UPDATE es_groups SET retry_at_ms = $2 WHERE group_id = $1",
            reset_mark: "UPDATE es_groups SET replay_until = CASE \
                 WHEN (SELECT coalesce(max(global_seq), 0) FROM es_offsets WHERE group_id = $1) \
                 > replay_until \
                 THEN (SELECT coalesce(max(global_seq), 0) FROM es_offsets WHERE group_id = $1) \
                 ELSE replay_until END WHERE group_id = $1",
            reset_offsets: "DELETE FROM es_offsets WHERE group_id = $1",
            retry_stream: "UPDATE es_offsets SET parked = false, retry_at_ms = NULL \
                 WHERE group_id = $1 AND stream_id = $2",
            bootstrap: "INSERT INTO es_offsets (group_id, stream_id) \
                 SELECT $1, s.stream_id FROM es_streams s WHERE s.seq > 0 AND NOT EXISTS \
                 (SELECT 1 FROM es_offsets o WHERE o.group_id = $1 AND o.stream_id = s.stream_id) \
                 ORDER BY s.stream_id ON CONFLICT DO NOTHING",
            claim: concat!(
                "WITH next AS (SELECT o.stream_id FROM es_offsets o \
                 JOIN es_groups g ON g.group_id = o.group_id \
                 JOIN es_messages m ON m.stream_id = o.stream_id AND m.global_seq > o.global_seq \
                 JOIN es_group_types t ON t.group_id = o.group_id AND t.type = m.type \
                 WHERE o.group_id = $1 AND o.claimed_by IS NULL AND o.parked = false \
                 AND (o.retry_at_ms IS NULL OR o.retry_at_ms <= $3) \
                 AND g.status = 'active' AND (g.retry_at_ms IS NULL OR g.retry_at_ms <= $3) \
                 AND m.created_at_ms > g.created_after_ms \
                 ORDER BY m.global_seq LIMIT 1",
                $lock,
                ") UPDATE es_offsets SET claimed_by = $2, claimed_at_ms = $3 \
                 WHERE group_id = $1 AND stream_id = (SELECT stream_id FROM next) \
                 RETURNING stream_id, global_seq, retry_count"
            ),
            batch: "SELECT m.global_seq, CAST(m.id AS TEXT) AS id, m.stream_id, m.seq, \
                 m.type AS kind, m.created_at_ms, CAST(m.causation_id AS TEXT) AS causation_id, \
                 CAST(m.correlation_id AS TEXT) AS correlation_id, \
                 CAST(m.metadata AS TEXT) AS metadata, CAST(m.payload AS TEXT) AS payload, \
                 CAST(CASE WHEN m.global_seq <= g.replay_until THEN 1 ELSE 0 END AS INTEGER) \
                 AS replaying \
                 FROM es_messages m JOIN es_groups g ON g.group_id = $1 \
                 JOIN es_group_types t ON t.group_id = g.group_id AND t.type = m.type \
                 WHERE m.stream_id = $2 AND m.global_seq > $3 \
                 AND m.created_at_ms > g.created_after_ms ORDER BY m.global_seq LIMIT $4",
            settle: "UPDATE es_offsets SET \
                 global_seq = CASE WHEN $3 > global_seq THEN $3 ELSE global_seq END, \
                 claimed_by = NULL, claimed_at_ms = NULL, \
                 retry_count = CASE WHEN $4 < 0 THEN retry_count ELSE $4 END, \
                 retry_at_ms = CASE WHEN $4 < 0 THEN retry_at_ms ELSE $5 END, \
                 parked = CASE WHEN $4 < 0 THEN parked ELSE $6 END, \
                 error = CASE WHEN $4 < 0 THEN error ELSE $7 END, \
                 failed_message = CASE WHEN $4 < 0 THEN failed_message ELSE $8 END \
                 WHERE group_id = $1 AND stream_id = $2 AND claimed_by = $9",
            ack: concat!(
                "INSERT INTO es_offsets (group_id, stream_id, global_seq) \
                 SELECT $1, stream_id, global_seq FROM es_messages WHERE id = $2",
                $uuid,
                " AND EXISTS (SELECT 1 FROM es_groups WHERE group_id = $1) \
                 ON CONFLICT (group_id, stream_id) DO UPDATE SET global_seq = CASE \
                 WHEN excluded.global_seq > es_offsets.global_seq THEN excluded.global_seq \
                 ELSE es_offsets.global_seq END"
            ),
            schedule: concat!(
                "INSERT INTO es_scheduled (available_at_ms, message) VALUES ($1, $2",
                $json,
                ")"
            ),
            due: concat!(
                "SELECT id, CAST(message AS TEXT) AS message FROM es_scheduled \
                 WHERE available_at_ms <= $1 ORDER BY id LIMIT $2",
                $slock
            ),
            delete_scheduled: "DELETE FROM es_scheduled WHERE id = $1",
            heartbeat: "INSERT INTO es_workers (worker_id, last_seen_ms) VALUES ($1, $2) \
                 ON CONFLICT (worker_id) DO UPDATE SET last_seen_ms = excluded.last_seen_ms",
            release_stale: "UPDATE es_offsets SET claimed_by = NULL, claimed_at_ms = NULL \
                 WHERE claimed_by IS NOT NULL AND claimed_at_ms <= $1 AND NOT EXISTS \
                 (SELECT 1 FROM es_workers w WHERE w.worker_id = es_offsets.claimed_by \
                 AND w.last_seen_ms > $1)",
            groups: "SELECT g.group_id, g.status, g.reason, g.retry_at_ms, \
                 (SELECT coalesce(min(o.global_seq), 0) FROM es_offsets o \
                  WHERE o.group_id = g.group_id AND o.global_seq > 0) AS oldest, \
                 (SELECT coalesce(max(o.global_seq), 0) FROM es_offsets o \
                  WHERE o.group_id = g.group_id AND o.global_seq > 0) AS newest, \
                 (SELECT count(*) FROM es_offsets o \
                  WHERE o.group_id = g.group_id AND o.global_seq > 0) AS streams, \
                 (SELECT count(*) FROM es_messages m \
                  JOIN es_group_types t ON t.group_id = g.group_id AND t.type = m.type \
                  LEFT JOIN es_offsets o ON o.group_id = g.group_id AND o.stream_id = m.stream_id \
                  WHERE m.global_seq > coalesce(o.global_seq, 0) \
                  AND m.created_at_ms > g.created_after_ms) AS lag \
                 FROM es_groups g ORDER BY g.group_id",
            failing: "SELECT group_id, stream_id, parked, retry_count, retry_at_ms, error, \
                 failed_message FROM es_offsets WHERE parked OR error IS NOT NULL \
                 ORDER BY group_id, stream_id",
        }
    };
}
pub(crate) use rx_sql;

/// The statements of one dialect behind [`sql_reactor_store!`] (parameters on each field).
#[derive(Debug)]
pub(crate) struct RxSql {
    /// group, created after, batch size.
    pub(crate) register: &'static str,
    /// group.
    pub(crate) delete_types: &'static str,
    /// group, type.
    pub(crate) insert_type: &'static str,
    /// group → batch size.
    pub(crate) batch_size: &'static str,
    /// group, reason.
    pub(crate) stop: &'static str,
    /// group.
    pub(crate) start: &'static str,
    /// group, until.
    pub(crate) pause: &'static str,
    /// group.
    pub(crate) reset_mark: &'static str,
    /// group.
    pub(crate) reset_offsets: &'static str,
    /// group, stream.
    pub(crate) retry_stream: &'static str,
    /// group.
    pub(crate) bootstrap: &'static str,
    /// group, worker, now → stream, offset, retry count.
    pub(crate) claim: &'static str,
    /// group, stream, after global seq, limit → [`BatchRow`]s.
    pub(crate) batch: &'static str,
    /// group, stream, ack, retry count (-1: keep the failure), retry at, parked, error,
    /// failed message, worker.
    pub(crate) settle: &'static str,
    /// group, message id.
    pub(crate) ack: &'static str,
    /// at, message JSON.
    pub(crate) schedule: &'static str,
    /// now, limit → id, message JSON.
    pub(crate) due: &'static str,
    /// id.
    pub(crate) delete_scheduled: &'static str,
    /// worker, now.
    pub(crate) heartbeat: &'static str,
    /// cutoff.
    pub(crate) release_stale: &'static str,
    /// → [`GroupRow`]s.
    pub(crate) groups: &'static str,
    /// → [`FailingRow`]s.
    pub(crate) failing: &'static str,
}

/// The second parameter of a group update.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Arg<'a> {
    /// A text.
    Text(&'a str),
    /// A number.
    Int(i64),
}

/// A message of a claimed batch.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct BatchRow {
    #[sqlx(flatten)]
    pub(crate) message: crate::sql_event_store::MessageRow,
    pub(crate) replaying: i32,
}

/// A row of [`RxSql::groups`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct GroupRow {
    pub(crate) group_id: String,
    pub(crate) status: String,
    pub(crate) reason: Option<String>,
    pub(crate) retry_at_ms: Option<i64>,
    pub(crate) oldest: i64,
    pub(crate) newest: i64,
    pub(crate) streams: i64,
    pub(crate) lag: i64,
}

/// A row of [`RxSql::failing`].
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct FailingRow {
    pub(crate) group_id: String,
    pub(crate) stream_id: String,
    pub(crate) parked: bool,
    pub(crate) retry_count: i64,
    pub(crate) retry_at_ms: Option<i64>,
    pub(crate) error: Option<String>,
    pub(crate) failed_message: Option<String>,
}

/// Builds the groups' report from their rows.
pub(crate) fn group_infos(rows: Vec<GroupRow>, failing: Vec<FailingRow>) -> Vec<ports::GroupInfo> {
    let n = |v: i64| u64::try_from(v).unwrap_or(0);
    rows.into_iter()
        .map(|g| ports::GroupInfo {
            status: if g.status == "stopped" {
                ports::GroupStatus::Stopped
            } else {
                ports::GroupStatus::Active
            },
            failing: failing
                .iter()
                .filter(|f| f.group_id == g.group_id)
                .map(|f| ports::FailingStream {
                    stream_id: f.stream_id.clone(),
                    parked: f.parked,
                    retry_count: u32::try_from(f.retry_count).unwrap_or(0),
                    retry_at_ms: f.retry_at_ms,
                    error: f.error.clone(),
                    message_id: f
                        .failed_message
                        .as_deref()
                        .and_then(|m| uuid::Uuid::parse_str(m).ok()),
                })
                .collect(),
            group_id: g.group_id,
            reason: g.reason,
            retry_at_ms: g.retry_at_ms,
            oldest_processed: n(g.oldest),
            newest_processed: n(g.newest),
            stream_count: n(g.streams),
            lag: n(g.lag),
        })
        .collect()
}

/// `impl ReactorStore for $ty` for a SQL dialect `$db` from its [`RxSql`]. Besides what
/// `sql_event_store!` needs (`begin_es`, `reader_es`, `committed_es`, `write_commit`,
/// `why_taken`, `db`), `$ty` has `fn wake_version_es(&self) -> u64` and
/// `async fn wait_wake_es(&self, seen: u64, timeout: Duration) -> u64`.
macro_rules! sql_reactor_store {
    ($ty:ty, $db:ty, $sql:expr) => {
        impl $ty {
            /// Rolls `tx` back (best effort) and turns a commit failure into its error.
            async fn abandon(
                &self,
                tx: sqlx::Transaction<'static, $db>,
                failure: $crate::sql_event_store::Failure,
            ) -> ports::EventStoreError {
                let _ = tx.rollback().await;
                match failure {
                    $crate::sql_event_store::Failure::Port(e) => e,
                    $crate::sql_event_store::Failure::Taken(m) => self.why_taken(m).await,
                }
            }

            /// Stores scheduled messages in `tx` (promoted into their streams when due).
            async fn write_schedule(
                tx: &mut sqlx::Transaction<'static, $db>,
                messages: &[ports::ScheduledMessage],
            ) -> Result<(), ports::EventStoreError> {
                for s in messages {
                    let json = serde_json::to_string(&s.message)
                        .map_err(|e| ports::EventStoreError::Other(e.to_string()))?;
                    sqlx::query($sql.schedule)
                        .bind(s.at_ms)
                        .bind(json)
                        .execute(&mut **tx)
                        .await
                        .map_err(db)?;
                }
                Ok(())
            }

            async fn group_exists(&self, group_id: &str) -> Result<i64, ports::EventStoreError> {
                let size: Option<i64> = sqlx::query_scalar($sql.batch_size)
                    .bind(group_id)
                    .fetch_optional(self.reader_es())
                    .await
                    .map_err(db)?;
                size.ok_or_else(|| ports::EventStoreError::UnknownGroup(group_id.to_owned()))
            }

            /// Runs a one-parameter-or-two group update; 0 rows: unknown group.
            async fn update_group(
                &self,
                sql: &'static str,
                group_id: &str,
                second: Option<$crate::sql_reactor_store::Arg<'_>>,
            ) -> Result<(), ports::EventStoreError> {
                let mut q = sqlx::query(sql).bind(group_id);
                match second {
                    Some($crate::sql_reactor_store::Arg::Text(s)) => q = q.bind(s),
                    Some($crate::sql_reactor_store::Arg::Int(n)) => q = q.bind(n),
                    None => {}
                }
                let mut tx = self.begin_es().await?;
                let done = q.execute(&mut *tx).await.map_err(db)?;
                if done.rows_affected() == 0 {
                    let _ = tx.rollback().await;
                    return Err(ports::EventStoreError::UnknownGroup(group_id.to_owned()));
                }
                tx.commit().await.map_err(db)?;
                Ok(())
            }
        }

        #[async_trait::async_trait]
        impl ports::ReactorStore for $ty {
            async fn register_group(
                &self,
                spec: &domain::es::GroupSpec,
                now_ms: i64,
            ) -> Result<(), ports::EventStoreError> {
                let size =
                    $crate::sql_event_store::to_i64(spec.batch_size.max(1) as u64, "batch size")?;
                let mut tx = self.begin_es().await?;
                sqlx::query($sql.register)
                    .bind(spec.group_id.as_str())
                    .bind(spec.start.created_after_ms(now_ms))
                    .bind(size)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                sqlx::query($sql.delete_types)
                    .bind(spec.group_id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                for t in &spec.types {
                    sqlx::query($sql.insert_type)
                        .bind(spec.group_id.as_str())
                        .bind(t.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
                tx.commit().await.map_err(db)?;
                Ok(())
            }

            async fn stop_group(
                &self,
                group_id: &str,
                reason: &str,
            ) -> Result<(), ports::EventStoreError> {
                self.update_group(
                    $sql.stop,
                    group_id,
                    Some($crate::sql_reactor_store::Arg::Text(reason)),
                )
                .await
            }

            async fn start_group(&self, group_id: &str) -> Result<(), ports::EventStoreError> {
                self.update_group($sql.start, group_id, None).await?;
                self.committed_es();
                Ok(())
            }

            async fn pause_group(
                &self,
                group_id: &str,
                until_ms: i64,
            ) -> Result<(), ports::EventStoreError> {
                self.update_group(
                    $sql.pause,
                    group_id,
                    Some($crate::sql_reactor_store::Arg::Int(until_ms)),
                )
                .await
            }

            async fn reset_group(&self, group_id: &str) -> Result<(), ports::EventStoreError> {
                let mut tx = self.begin_es().await?;
                let marked = sqlx::query($sql.reset_mark)
                    .bind(group_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                if marked.rows_affected() == 0 {
                    let _ = tx.rollback().await;
                    return Err(ports::EventStoreError::UnknownGroup(group_id.to_owned()));
                }
                sqlx::query($sql.reset_offsets)
                    .bind(group_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                self.committed_es();
                Ok(())
            }

            async fn retry_stream(
                &self,
                group_id: &str,
                stream_id: &str,
            ) -> Result<(), ports::EventStoreError> {
                self.group_exists(group_id).await?;
                let mut tx = self.begin_es().await?;
                sqlx::query($sql.retry_stream)
                    .bind(group_id)
                    .bind(stream_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                self.committed_es();
                Ok(())
            }

            async fn claim(
                &self,
                group_id: &str,
                worker_id: &str,
                now_ms: i64,
            ) -> Result<Option<ports::Claim>, ports::EventStoreError> {
                let batch_size = self.group_exists(group_id).await?;
                let mut tx = self.begin_es().await?;
                sqlx::query($sql.bootstrap)
                    .bind(group_id)
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                let claimed: Option<(String, i64, i64)> = sqlx::query_as($sql.claim)
                    .bind(group_id)
                    .bind(worker_id)
                    .bind(now_ms)
                    .fetch_optional(&mut *tx)
                    .await
                    .map_err(db)?;
                let Some((stream_id, acked, retry_count)) = claimed else {
                    // Keep the bootstrapped offsets.
                    tx.commit().await.map_err(db)?;
                    return Ok(None);
                };
                let rows: Vec<$crate::sql_reactor_store::BatchRow> = sqlx::query_as($sql.batch)
                    .bind(group_id)
                    .bind(stream_id.as_str())
                    .bind(acked)
                    .bind(batch_size)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db)?;
                if rows.is_empty() {
                    let _ = tx.rollback().await;
                    return Ok(None);
                }
                tx.commit().await.map_err(db)?;
                let batch = rows
                    .into_iter()
                    .map(|r| {
                        Ok(ports::ClaimedMessage {
                            stored: r.message.try_into()?,
                            replaying: r.replaying != 0,
                        })
                    })
                    .collect::<Result<Vec<_>, ports::EventStoreError>>()?;
                Ok(Some(ports::Claim {
                    group_id: group_id.to_owned(),
                    stream_id,
                    worker_id: worker_id.to_owned(),
                    acked: u64::try_from(acked).unwrap_or(0),
                    retry_count: u32::try_from(retry_count).unwrap_or(0),
                    batch,
                }))
            }

            async fn settle(
                &self,
                claim: &ports::Claim,
                settlement: ports::Settlement,
                now_ms: i64,
            ) -> Result<Vec<ports::StoredMessage>, ports::EventStoreError> {
                use $crate::sql_event_store::to_i64;
                let ack = to_i64(settlement.ack.unwrap_or(0), "global seq")?;
                let (count, retry_at, parked, error, failed) = match &settlement.failure {
                    Some(f) => (
                        i64::from(f.retry_count),
                        f.retry_at_ms,
                        f.retry_at_ms.is_none(),
                        Some(f.error.clone()),
                        Some(f.message_id.to_string()),
                    ),
                    None if settlement.ack.is_some() => (0, None, false, None, None),
                    None => (-1, None, false, None, None),
                };
                let mut tx = self.begin_es().await?;
                // 1. The claimed offset, if still ours.
                let done = sqlx::query($sql.settle)
                    .bind(claim.group_id.as_str())
                    .bind(claim.stream_id.as_str())
                    .bind(ack)
                    .bind(count)
                    .bind(retry_at)
                    .bind(parked)
                    .bind(error)
                    .bind(failed)
                    .bind(claim.worker_id.as_str())
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                if done.rows_affected() == 0 {
                    let _ = tx.rollback().await;
                    return Err(ports::EventStoreError::ClaimLost(format!(
                        "{} no longer holds {} for {}",
                        claim.worker_id, claim.stream_id, claim.group_id
                    )));
                }
                // 2. Other messages acknowledged.
                for id in &settlement.also_ack {
                    sqlx::query($sql.ack)
                        .bind(claim.group_id.as_str())
                        .bind(id.to_string())
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
                // 3. The effects.
                let out = match self.write_commit(&mut tx, &settlement.commit, now_ms).await {
                    Ok(out) => out,
                    Err(failure) => return Err(self.abandon(tx, failure).await),
                };
                // 4. Scheduled messages.
                Self::write_schedule(&mut tx, &settlement.schedule).await?;
                tx.commit().await.map_err(db)?;
                if !out.is_empty() {
                    self.committed_es();
                }
                Ok(out)
            }

            async fn ack(
                &self,
                group_id: &str,
                message_id: uuid::Uuid,
            ) -> Result<bool, ports::EventStoreError> {
                self.group_exists(group_id).await?;
                let mut tx = self.begin_es().await?;
                let done = sqlx::query($sql.ack)
                    .bind(group_id)
                    .bind(message_id.to_string())
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok(done.rows_affected() > 0)
            }

            async fn commit_with(
                &self,
                commit: ports::Commit,
                schedule: &[ports::ScheduledMessage],
                acks: &[(String, uuid::Uuid)],
            ) -> Result<Vec<ports::StoredMessage>, ports::EventStoreError> {
                let now_ms = $crate::sql_event_store::now_ms();
                let mut tx = self.begin_es().await?;
                let out = match self.write_commit(&mut tx, &commit, now_ms).await {
                    Ok(out) => out,
                    Err(failure) => return Err(self.abandon(tx, failure).await),
                };
                Self::write_schedule(&mut tx, schedule).await?;
                for (group, id) in acks {
                    sqlx::query($sql.ack)
                        .bind(group.as_str())
                        .bind(id.to_string())
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
                tx.commit().await.map_err(db)?;
                if !out.is_empty() {
                    self.committed_es();
                }
                Ok(out)
            }

            async fn schedule(
                &self,
                messages: &[ports::ScheduledMessage],
            ) -> Result<(), ports::EventStoreError> {
                let mut tx = self.begin_es().await?;
                Self::write_schedule(&mut tx, messages).await?;
                tx.commit().await.map_err(db)?;
                Ok(())
            }

            async fn promote_due(
                &self,
                now_ms: i64,
            ) -> Result<Vec<ports::StoredMessage>, ports::EventStoreError> {
                let mut tx = self.begin_es().await?;
                let due: Vec<(i64, String)> = sqlx::query_as($sql.due)
                    .bind(now_ms)
                    .bind(ports::reactor_store::PROMOTE_BATCH as i64)
                    .fetch_all(&mut *tx)
                    .await
                    .map_err(db)?;
                if due.is_empty() {
                    let _ = tx.rollback().await;
                    return Ok(Vec::new());
                }
                let mut messages = Vec::with_capacity(due.len());
                for (id, json) in &due {
                    let m: domain::es::Message = serde_json::from_str(json).map_err(|e| {
                        $crate::sql_event_store::corrupt(format_args!("scheduled message {id}"), e)
                    })?;
                    messages.push(m);
                }
                let commit = ports::reactor_store::promotion(messages.into_iter(), now_ms)?;
                let out = match self.write_commit(&mut tx, &commit, now_ms).await {
                    Ok(out) => out,
                    Err(failure) => return Err(self.abandon(tx, failure).await),
                };
                for (id, _) in &due {
                    sqlx::query($sql.delete_scheduled)
                        .bind(*id)
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
                tx.commit().await.map_err(db)?;
                if !out.is_empty() {
                    self.committed_es();
                }
                Ok(out)
            }

            async fn heartbeat(
                &self,
                worker_ids: &[String],
                now_ms: i64,
            ) -> Result<(), ports::EventStoreError> {
                let mut tx = self.begin_es().await?;
                for w in worker_ids {
                    sqlx::query($sql.heartbeat)
                        .bind(w.as_str())
                        .bind(now_ms)
                        .execute(&mut *tx)
                        .await
                        .map_err(db)?;
                }
                tx.commit().await.map_err(db)?;
                Ok(())
            }

            async fn release_stale_claims(
                &self,
                ttl: std::time::Duration,
                now_ms: i64,
            ) -> Result<u64, ports::EventStoreError> {
                let ttl = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
                let mut tx = self.begin_es().await?;
                let done = sqlx::query($sql.release_stale)
                    .bind(now_ms.saturating_sub(ttl))
                    .execute(&mut *tx)
                    .await
                    .map_err(db)?;
                tx.commit().await.map_err(db)?;
                Ok(done.rows_affected())
            }

            async fn groups(&self) -> Result<Vec<ports::GroupInfo>, ports::EventStoreError> {
                let rows: Vec<$crate::sql_reactor_store::GroupRow> = sqlx::query_as($sql.groups)
                    .fetch_all(self.reader_es())
                    .await
                    .map_err(db)?;
                let failing: Vec<$crate::sql_reactor_store::FailingRow> =
                    sqlx::query_as($sql.failing)
                        .fetch_all(self.reader_es())
                        .await
                        .map_err(db)?;
                Ok($crate::sql_reactor_store::group_infos(rows, failing))
            }

            fn wake_version(&self) -> u64 {
                self.wake_version_es()
            }

            async fn wait_wake(&self, seen: u64, timeout: std::time::Duration) -> u64 {
                self.wait_wake_es(seen, timeout).await
            }
        }
    };
}
pub(crate) use sql_reactor_store;
