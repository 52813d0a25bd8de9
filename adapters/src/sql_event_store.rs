//! What the SQLite and Postgres event stores ([`ports::EventStore`]) share: the statements
//! (`$n` placeholders, valid on both dialects, which differ only in the casts of UUID and
//! JSON text parameters), the decoding of their rows (`sqlx::FromRow`), and one body of
//! `commit` and of every read ([`sql_event_store!`]), so the rules are written once.
//!
//! # One commit
//!
//! ```text
//!  BEGIN (SQLite: IMMEDIATE, the one writer; Postgres: READ COMMITTED)
//!  1. lock each stream the commit appends to, in stream-id order: an upsert of its row
//!     (created with seq 0 if new) returning its last seq       ── appends to one stream queue here
//!  2. plan_commit (the port's rule: conflicts, gaps, renumbering); duplicate ids in the commit
//!  3. sync ops (document puts and deletes), in order
//!  4. stage every message in the store's outbox (Message::to_record), as a phase does
//!  5. take n global seqs: UPDATE es_global ... RETURNING       ── every commit queues here
//!  6. insert the messages with their global seqs; a unique violation is a duplicate id
//!  7. the streams' new last seq, time and last global seq
//!  COMMIT, then the store's wake-up (as after a phase that staged records)
//! ```
//!
//! Streams are locked in one order (by id) and the global counter last, so two commits never
//! wait for each other in a cycle over streams or the counter. (Documents are written in the
//! commit's own order, which matters for a put and a delete of one id; two Postgres commits
//! writing the same two documents in opposite orders can deadlock, and the one Postgres
//! aborts gets a retryable [`EventStoreError::Unavailable`], having written nothing.) Any
//! failure rolls the whole transaction back: no message, no outbox record, no document, no
//! stream row.
//!
//! Errors: the port's rule decides `InvalidAppend` and `Conflict` on the locked seqs; ids
//! repeated inside a commit are `DuplicateMessage` before anything is inserted; a unique
//! violation while inserting a message is decided after the rollback with a fresh read:
//! `DuplicateMessage` when its id is stored, else `Conflict` (expected: the message's seq
//! minus one; actual: the stream's last seq now), which the stream lock makes unexpected.
//! Other driver errors go through the dialect's one classification (`sql_error.rs`).
//!
//! # Why the global order is gap-safe (DESIGN.md invariant 4)
//!
//! Global seqs come from a one-row counter (`es_global`) that a commit updates *after* its
//! checks and holds (row lock on Postgres, the write lock on SQLite) until it commits. A
//! commit holding seqs `a..=b` therefore commits before the next commit can even take `b + 1`
//! (Postgres releases a transaction's locks only after its commit is visible), so seqs become
//! visible in the order they were handed out and `read_all`'s plain `WHERE global_seq > $1
//! ORDER BY global_seq` never passes over a message that commits later. A rolled-back commit
//! returns its seqs to the counter: the global order has no gaps either. The adapters' module
//! docs compare this with the alternatives.

use std::time::{SystemTime, UNIX_EPOCH};

use domain::es::{Message, MessageParts};
use ports::{EventStoreError, EventStoreStats, StoredMessage, StreamInfo};
use serde_json::{Map, Value};
use uuid::Uuid;

/// The columns of a message, as [`MessageRow`] reads them (UUIDs and JSON as text).
macro_rules! message_columns {
    () => {
        "SELECT global_seq, CAST(id AS TEXT) AS id, stream_id, seq, type AS kind, \
         created_at_ms, CAST(causation_id AS TEXT) AS causation_id, \
         CAST(correlation_id AS TEXT) AS correlation_id, CAST(metadata AS TEXT) AS metadata, \
         CAST(payload AS TEXT) AS payload FROM es_messages"
    };
}

/// The [`EsSql`] of a dialect: `uuid` and `json` are the casts of UUID and JSON parameters
/// bound as text (`::uuid`, `::jsonb` on Postgres; nothing on SQLite, which stores text).
macro_rules! es_sql {
    (uuid = $uuid:literal, json = $json:literal) => {
        $crate::sql_event_store::EsSql {
            lock_stream: "INSERT INTO es_streams AS s (stream_id, seq, updated_at_ms, \
                 last_global_seq) VALUES ($1, 0, $2, 0) \
                 ON CONFLICT (stream_id) DO UPDATE SET seq = s.seq RETURNING seq",
            stream_seq: "SELECT seq FROM es_streams WHERE stream_id = $1",
            take_globals: "UPDATE es_global SET last_global_seq = last_global_seq + $1 \
                 RETURNING last_global_seq",
            insert_message: concat!(
                "INSERT INTO es_messages (global_seq, id, stream_id, seq, type, created_at_ms, \
                 causation_id, correlation_id, metadata, payload) VALUES ($1, $2",
                $uuid,
                ", $3, $4, $5, $6, $7",
                $uuid,
                ", $8",
                $uuid,
                ", $9",
                $json,
                ", $10",
                $json,
                ")"
            ),
            update_stream: "UPDATE es_streams SET seq = $2, updated_at_ms = $3, \
                 last_global_seq = $4 WHERE stream_id = $1",
            put_document: concat!(
                "INSERT INTO es_documents (collection, doc_id, doc) VALUES ($1, $2, $3",
                $json,
                ") ON CONFLICT (collection, doc_id) DO UPDATE SET doc = excluded.doc"
            ),
            delete_document: "DELETE FROM es_documents WHERE collection = $1 AND doc_id = $2",
            message_count_by_id: concat!("SELECT count(*) FROM es_messages WHERE id = $1", $uuid),
            read_stream: concat!(
                $crate::sql_event_store::message_columns!(),
                " WHERE stream_id = $1 AND seq > $2 AND seq <= $3 ORDER BY seq"
            ),
            read_correlation: concat!(
                $crate::sql_event_store::message_columns!(),
                " WHERE correlation_id = (SELECT correlation_id FROM es_messages WHERE id = $1",
                $uuid,
                ") ORDER BY global_seq"
            ),
            read_all: concat!(
                $crate::sql_event_store::message_columns!(),
                " WHERE global_seq > $1 ORDER BY global_seq LIMIT $2"
            ),
            recent_streams: "SELECT stream_id, seq, updated_at_ms FROM es_streams \
                 WHERE seq > 0 ORDER BY last_global_seq DESC LIMIT $1",
            stats: "SELECT (SELECT count(*) FROM es_streams WHERE seq > 0) AS stream_count, \
                 (SELECT count(*) FROM es_messages) AS message_count, \
                 (SELECT coalesce(max(global_seq), 0) FROM es_messages) AS max_global_seq",
            document: "SELECT CAST(doc AS TEXT) FROM es_documents \
                 WHERE collection = $1 AND doc_id = $2",
            documents: "SELECT doc_id, CAST(doc AS TEXT) AS doc FROM es_documents \
                 WHERE collection = $1",
        }
    };
}
pub(crate) use {es_sql, message_columns};

/// The statements of one dialect behind [`sql_event_store!`]. Both dialects bind the same
/// values in the same order (listed on each field; UUIDs and JSON as text).
#[derive(Debug)]
pub(crate) struct EsSql {
    /// stream id, now → the stream's last seq, its row locked (created with seq 0 if new).
    pub(crate) lock_stream: &'static str,
    /// stream id → its last seq (no lock), or no row.
    pub(crate) stream_seq: &'static str,
    /// n → the last of n new global seqs (the counter stays locked until commit).
    pub(crate) take_globals: &'static str,
    /// global seq, id, stream id, seq, type, created at, causation id, correlation id,
    /// metadata, payload.
    pub(crate) insert_message: &'static str,
    /// stream id, last seq, updated at, last global seq.
    pub(crate) update_stream: &'static str,
    /// collection, document id, document.
    pub(crate) put_document: &'static str,
    /// collection, document id.
    pub(crate) delete_document: &'static str,
    /// message id → how many messages have it (0 or 1).
    pub(crate) message_count_by_id: &'static str,
    /// stream id, after seq, up to seq → [`MessageRow`]s in seq order.
    pub(crate) read_stream: &'static str,
    /// message id → [`MessageRow`]s sharing its correlation id, in global order.
    pub(crate) read_correlation: &'static str,
    /// after global seq, limit → [`MessageRow`]s in global order.
    pub(crate) read_all: &'static str,
    /// limit → [`StreamRow`]s, most recent first.
    pub(crate) recent_streams: &'static str,
    /// → [`StatsRow`].
    pub(crate) stats: &'static str,
    /// collection, document id → the document's JSON text.
    pub(crate) document: &'static str,
    /// collection → [`DocumentRow`]s.
    pub(crate) documents: &'static str,
}

/// Why a commit's transaction failed; it is rolled back either way.
#[derive(Debug)]
pub(crate) enum Failure {
    /// Return this error.
    Port(EventStoreError),
    /// Inserting this message violated a unique index: its id is already stored
    /// ([`EventStoreError::DuplicateMessage`]), or (not expected while its stream's row is
    /// locked) its place in the stream was taken ([`EventStoreError::Conflict`]). Decided
    /// after the rollback, with a fresh read.
    Taken(Message),
}

impl From<EventStoreError> for Failure {
    fn from(e: EventStoreError) -> Self {
        Self::Port(e)
    }
}

/// Whether a driver error is a unique (or primary-key) violation.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(db) if db.is_unique_violation())
}

/// The store's clock, in ms since the Unix epoch (streams' `updated_at_ms`).
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

/// Converts a count or position for SQL's signed `BIGINT`.
pub(crate) fn to_i64(v: u64, what: &str) -> Result<i64, EventStoreError> {
    i64::try_from(v).map_err(|_| EventStoreError::Other(format!("{what} out of range: {v}")))
}

/// Data in the event store that does not decode.
pub(crate) fn corrupt(
    row: impl std::fmt::Display,
    what: impl std::fmt::Display,
) -> EventStoreError {
    EventStoreError::Other(format!("corrupt data in the event store, {row}: {what}"))
}

/// A stored seq (never negative in a sound store).
pub(crate) fn seq_of(stream_id: &str, seq: i64) -> Result<u64, EventStoreError> {
    u64::try_from(seq).map_err(|_| {
        corrupt(
            format_args!("stream {stream_id}"),
            format_args!("seq {seq}"),
        )
    })
}

/// A message's columns as both dialects bind them (UUIDs and JSON as text).
#[derive(Debug)]
pub(crate) struct MessageColumns {
    /// `id`.
    pub(crate) id: String,
    /// `seq`.
    pub(crate) seq: i64,
    /// `causation_id`.
    pub(crate) causation_id: String,
    /// `correlation_id`.
    pub(crate) correlation_id: String,
    /// `metadata`, JSON text.
    pub(crate) metadata: String,
    /// `payload`, JSON text.
    pub(crate) payload: String,
}

impl MessageColumns {
    /// Encodes the columns of `m`.
    pub(crate) fn of(m: &Message) -> Result<Self, EventStoreError> {
        Ok(Self {
            id: m.id().to_string(),
            seq: to_i64(m.seq(), "seq")?,
            causation_id: m.causation_id().to_string(),
            correlation_id: m.correlation_id().to_string(),
            metadata: Value::Object(m.metadata().clone()).to_string(),
            payload: m.payload().to_string(),
        })
    }
}

/// An `es_messages` row.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct MessageRow {
    global_seq: i64,
    id: String,
    stream_id: String,
    seq: i64,
    kind: String,
    created_at_ms: i64,
    causation_id: String,
    correlation_id: String,
    metadata: String,
    payload: String,
}

impl TryFrom<MessageRow> for StoredMessage {
    type Error = EventStoreError;

    fn try_from(r: MessageRow) -> Result<Self, EventStoreError> {
        let row = format!("message at global seq {}", r.global_seq);
        let uuid = |what: &str, text: &str| {
            Uuid::parse_str(text).map_err(|e| corrupt(&row, format_args!("{what} {text:?}: {e}")))
        };
        let global_seq =
            u64::try_from(r.global_seq).map_err(|_| corrupt(&row, "negative global seq"))?;
        let seq = u64::try_from(r.seq).map_err(|_| corrupt(&row, format_args!("seq {}", r.seq)))?;
        let metadata: Map<String, Value> = serde_json::from_str(&r.metadata)
            .map_err(|e| corrupt(&row, format_args!("metadata: {e}")))?;
        let payload: Value = serde_json::from_str(&r.payload)
            .map_err(|e| corrupt(&row, format_args!("payload: {e}")))?;
        let message = Message::from_parts(MessageParts {
            id: uuid("id", &r.id)?,
            stream_id: r.stream_id,
            kind: r.kind,
            seq,
            created_at_ms: r.created_at_ms,
            causation_id: uuid("causation id", &r.causation_id)?,
            correlation_id: uuid("correlation id", &r.correlation_id)?,
            metadata,
            payload,
        })
        .map_err(|e| corrupt(&row, e))?;
        Ok(Self {
            global_seq,
            message,
        })
    }
}

/// An `es_streams` row, as [`EsSql::recent_streams`] reads it.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StreamRow {
    stream_id: String,
    seq: i64,
    updated_at_ms: i64,
}

impl TryFrom<StreamRow> for StreamInfo {
    type Error = EventStoreError;

    fn try_from(r: StreamRow) -> Result<Self, EventStoreError> {
        Ok(Self {
            seq: seq_of(&r.stream_id, r.seq)?,
            stream_id: r.stream_id,
            updated_at_ms: r.updated_at_ms,
        })
    }
}

/// The counters, as one row ([`EsSql::stats`]).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct StatsRow {
    stream_count: i64,
    message_count: i64,
    max_global_seq: i64,
}

impl TryFrom<StatsRow> for EventStoreStats {
    type Error = EventStoreError;

    fn try_from(r: StatsRow) -> Result<Self, EventStoreError> {
        let n = |what: &str, v: i64| {
            u64::try_from(v).map_err(|_| corrupt("counters", format_args!("negative {what} {v}")))
        };
        Ok(Self {
            stream_count: n("stream count", r.stream_count)?,
            message_count: n("message count", r.message_count)?,
            max_global_seq: n("global seq", r.max_global_seq)?,
        })
    }
}

/// An `es_documents` row ([`EsSql::documents`]).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct DocumentRow {
    doc_id: String,
    doc: String,
}

/// Decodes a document's JSON text.
pub(crate) fn document(collection: &str, id: &str, doc: &str) -> Result<Value, EventStoreError> {
    serde_json::from_str(doc).map_err(|e| corrupt(format_args!("document {collection}/{id}"), e))
}

impl DocumentRow {
    /// The document id and document of `collection`.
    pub(crate) fn decode(self, collection: &str) -> Result<(String, Value), EventStoreError> {
        let doc = document(collection, &self.doc_id, &self.doc)?;
        Ok((self.doc_id, doc))
    }
}

/// Decodes a list of rows.
pub(crate) fn decode_all<R, T: TryFrom<R, Error = EventStoreError>>(
    rows: Vec<R>,
) -> Result<Vec<T>, EventStoreError> {
    rows.into_iter().map(T::try_from).collect()
}

/// `impl EventStore for $ty` for a SQL dialect `$db` (`sqlx::Sqlite`, `sqlx::Postgres`) from
/// its [`EsSql`]. `$ty` has these inherent methods:
///
/// - `fn describe_es(&self) -> String` and `fn reader_es(&self) -> &sqlx::Pool<$db>`;
/// - `async fn begin_es(&self) -> Result<sqlx::Transaction<'static, $db>, EventStoreError>`:
///   the store's write transaction;
/// - `async fn stage_es(&self, tx, records: &[domain::NewRecord]) -> Result<(),
///   EventStoreError>`: the store's own staging of outbox records inside `tx`;
/// - `fn committed_es(&self)`: the store's wake-up after a commit that staged records;
///
/// and a function `db(sqlx::Error) -> EventStoreError` is in scope.
macro_rules! sql_event_store {
    ($ty:ty, $db:ty, $sql:expr) => {
        impl $ty {
            /// Steps 1 to 7 of a commit (see `sql_event_store`) inside `tx`.
            async fn write_commit(
                &self,
                tx: &mut sqlx::Transaction<'static, $db>,
                commit: &ports::Commit,
                now_ms: i64,
            ) -> Result<Vec<ports::StoredMessage>, $crate::sql_event_store::Failure> {
                use $crate::sql_event_store::{Failure, MessageColumns, to_i64};
                // 1. Lock the streams appended to, in one order; read the others.
                let mut streams: std::collections::BTreeMap<&str, bool> =
                    std::collections::BTreeMap::new();
                for a in &commit.appends {
                    *streams.entry(a.stream_id.as_str()).or_default() |= !a.messages.is_empty();
                }
                let mut last = std::collections::HashMap::new();
                for (stream, writes) in streams {
                    let seq: Option<i64> = if writes {
                        Some(
                            sqlx::query_scalar($sql.lock_stream)
                                .bind(stream)
                                .bind(now_ms)
                                .fetch_one(&mut **tx)
                                .await
                                .map_err(db)?,
                        )
                    } else {
                        sqlx::query_scalar($sql.stream_seq)
                            .bind(stream)
                            .fetch_optional(&mut **tx)
                            .await
                            .map_err(db)?
                    };
                    let seq = $crate::sql_event_store::seq_of(stream, seq.unwrap_or(0))?;
                    last.insert(stream, seq);
                }
                // 2. The port's rule, then ids appearing twice in the commit.
                let planned =
                    ports::event_store::plan_commit(commit, |s| last.get(s).copied().unwrap_or(0))?;
                let mut ids = std::collections::HashSet::new();
                if let Some(m) = planned.iter().find(|m| !ids.insert(m.id())) {
                    return Err(ports::EventStoreError::DuplicateMessage(m.id()).into());
                }
                // 3. Documents.
                for op in &commit.sync {
                    match op {
                        domain::es::SyncOp::Put {
                            collection,
                            id,
                            doc,
                        } => sqlx::query($sql.put_document)
                            .bind(collection.as_str())
                            .bind(id.as_str())
                            .bind(doc.to_string()),
                        domain::es::SyncOp::Delete { collection, id } => {
                            sqlx::query($sql.delete_document)
                                .bind(collection.as_str())
                                .bind(id.as_str())
                        }
                    }
                    .execute(&mut **tx)
                    .await
                    .map_err(db)?;
                }
                if planned.is_empty() {
                    return Ok(Vec::new());
                }
                // 4. The outbox, as the store stages a phase's records (before the counter,
                // which is held until commit).
                let records: Vec<domain::NewRecord> =
                    planned.iter().map(domain::es::Message::to_record).collect();
                self.stage_es(tx, &records).await?;
                // 5. Global seqs: the counter stays locked until this transaction commits.
                let n = to_i64(planned.len() as u64, "message count")?;
                let last_global: i64 = sqlx::query_scalar($sql.take_globals)
                    .bind(n)
                    .fetch_one(&mut **tx)
                    .await
                    .map_err(db)?;
                let first = last_global - n + 1;
                // 6. The messages.
                let mut out = Vec::with_capacity(planned.len());
                let mut tails: std::collections::BTreeMap<String, (i64, i64)> =
                    std::collections::BTreeMap::new();
                for (global, m) in (first..).zip(planned) {
                    let c = MessageColumns::of(&m)?;
                    let done = sqlx::query($sql.insert_message)
                        .bind(global)
                        .bind(c.id)
                        .bind(m.stream_id())
                        .bind(c.seq)
                        .bind(m.kind())
                        .bind(m.created_at_ms())
                        .bind(c.causation_id)
                        .bind(c.correlation_id)
                        .bind(c.metadata)
                        .bind(c.payload)
                        .execute(&mut **tx)
                        .await;
                    match done {
                        Ok(_) => {}
                        Err(e) if $crate::sql_event_store::is_unique_violation(&e) => {
                            return Err(Failure::Taken(m));
                        }
                        Err(e) => return Err(db(e).into()),
                    }
                    tails.insert(m.stream_id().to_owned(), (c.seq, global));
                    let global_seq = u64::try_from(global).map_err(|_| {
                        ports::EventStoreError::Other(format!("global seq {global}"))
                    })?;
                    out.push(ports::StoredMessage {
                        global_seq,
                        message: m,
                    });
                }
                // 7. The streams' new tails.
                for (stream, (seq, global)) in &tails {
                    sqlx::query($sql.update_stream)
                        .bind(stream.as_str())
                        .bind(*seq)
                        .bind(now_ms)
                        .bind(*global)
                        .execute(&mut **tx)
                        .await
                        .map_err(db)?;
                }
                Ok(out)
            }

            /// After a unique violation on `m`'s insert (the commit rolled back): its id is
            /// stored, or its place in its stream was taken.
            async fn why_taken(&self, m: domain::es::Message) -> ports::EventStoreError {
                let stored: Result<i64, _> = sqlx::query_scalar($sql.message_count_by_id)
                    .bind(m.id().to_string())
                    .fetch_one(self.reader_es())
                    .await;
                match stored {
                    Ok(n) if n > 0 => ports::EventStoreError::DuplicateMessage(m.id()),
                    Ok(_) => {
                        let actual: Result<Option<i64>, _> = sqlx::query_scalar($sql.stream_seq)
                            .bind(m.stream_id())
                            .fetch_optional(self.reader_es())
                            .await;
                        match actual {
                            Ok(actual) => ports::EventStoreError::Conflict {
                                stream_id: m.stream_id().to_owned(),
                                expected: m.seq().saturating_sub(1),
                                actual: u64::try_from(actual.unwrap_or(0)).unwrap_or(0),
                            },
                            Err(e) => db(e),
                        }
                    }
                    Err(e) => db(e),
                }
            }
        }

        #[async_trait::async_trait]
        impl ports::EventStore for $ty {
            fn describe(&self) -> String {
                self.describe_es()
            }

            async fn ping(&self) -> Result<(), ports::EventStoreError> {
                sqlx::query("SELECT 1")
                    .execute(self.reader_es())
                    .await
                    .map_err(db)?;
                Ok(())
            }

            async fn commit(
                &self,
                commit: ports::Commit,
            ) -> Result<Vec<ports::StoredMessage>, ports::EventStoreError> {
                let now_ms = $crate::sql_event_store::now_ms();
                let mut tx = self.begin_es().await?;
                match self.write_commit(&mut tx, &commit, now_ms).await {
                    Ok(out) => {
                        tx.commit().await.map_err(db)?;
                        if !out.is_empty() {
                            self.committed_es();
                        }
                        Ok(out)
                    }
                    Err(failure) => {
                        // Best effort: a transaction dropped unfinished is rolled back too.
                        let _ = tx.rollback().await;
                        match failure {
                            $crate::sql_event_store::Failure::Port(e) => Err(e),
                            $crate::sql_event_store::Failure::Taken(m) => {
                                Err(self.why_taken(m).await)
                            }
                        }
                    }
                }
            }

            async fn read_stream(
                &self,
                stream_id: &str,
                after: u64,
                upto: Option<u64>,
            ) -> Result<Vec<ports::StoredMessage>, ports::EventStoreError> {
                // Seqs are SQL BIGINTs: nothing lies above i64::MAX.
                let Ok(after) = i64::try_from(after) else {
                    return Ok(Vec::new());
                };
                let upto = upto.map_or(i64::MAX, |u| i64::try_from(u).unwrap_or(i64::MAX));
                let rows =
                    sqlx::query_as::<_, $crate::sql_event_store::MessageRow>($sql.read_stream)
                        .bind(stream_id)
                        .bind(after)
                        .bind(upto)
                        .fetch_all(self.reader_es())
                        .await
                        .map_err(db)?;
                $crate::sql_event_store::decode_all(rows)
            }

            async fn read_correlation_batch(
                &self,
                message_id: uuid::Uuid,
            ) -> Result<Vec<ports::StoredMessage>, ports::EventStoreError> {
                let rows =
                    sqlx::query_as::<_, $crate::sql_event_store::MessageRow>($sql.read_correlation)
                        .bind(message_id.to_string())
                        .fetch_all(self.reader_es())
                        .await
                        .map_err(db)?;
                $crate::sql_event_store::decode_all(rows)
            }

            async fn read_all(
                &self,
                after_global: u64,
                max: usize,
            ) -> Result<Vec<ports::StoredMessage>, ports::EventStoreError> {
                let Ok(after) = i64::try_from(after_global) else {
                    return Ok(Vec::new());
                };
                let rows = sqlx::query_as::<_, $crate::sql_event_store::MessageRow>($sql.read_all)
                    .bind(after)
                    .bind(i64::try_from(max).unwrap_or(i64::MAX))
                    .fetch_all(self.reader_es())
                    .await
                    .map_err(db)?;
                $crate::sql_event_store::decode_all(rows)
            }

            async fn recent_streams(
                &self,
                limit: usize,
            ) -> Result<Vec<ports::StreamInfo>, ports::EventStoreError> {
                let rows =
                    sqlx::query_as::<_, $crate::sql_event_store::StreamRow>($sql.recent_streams)
                        .bind(i64::try_from(limit).unwrap_or(i64::MAX))
                        .fetch_all(self.reader_es())
                        .await
                        .map_err(db)?;
                $crate::sql_event_store::decode_all(rows)
            }

            async fn stats(&self) -> Result<ports::EventStoreStats, ports::EventStoreError> {
                // One statement, so the three numbers come from one snapshot.
                let row = sqlx::query_as::<_, $crate::sql_event_store::StatsRow>($sql.stats)
                    .fetch_one(self.reader_es())
                    .await
                    .map_err(db)?;
                row.try_into()
            }

            async fn document(
                &self,
                collection: &str,
                id: &str,
            ) -> Result<Option<serde_json::Value>, ports::EventStoreError> {
                let doc: Option<String> = sqlx::query_scalar($sql.document)
                    .bind(collection)
                    .bind(id)
                    .fetch_optional(self.reader_es())
                    .await
                    .map_err(db)?;
                doc.map(|d| $crate::sql_event_store::document(collection, id, &d))
                    .transpose()
            }

            async fn documents(
                &self,
                collection: &str,
            ) -> Result<Vec<(String, serde_json::Value)>, ports::EventStoreError> {
                let rows =
                    sqlx::query_as::<_, $crate::sql_event_store::DocumentRow>($sql.documents)
                        .bind(collection)
                        .fetch_all(self.reader_es())
                        .await
                        .map_err(db)?;
                let mut docs = rows
                    .into_iter()
                    .map(|r| r.decode(collection))
                    .collect::<Result<Vec<_>, _>>()?;
                // By id in byte order, whatever the database's collation.
                docs.sort_by(|a, b| a.0.cmp(&b.0));
                Ok(docs)
            }
        }
    };
}
pub(crate) use sql_event_store;
