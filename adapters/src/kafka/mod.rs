//! The log on Kafka: one topic, its partitions are the lanes ([`KafkaLog`]).
//!
//! ```text
//!   append([r1 r2 r3])  ── key = LogRecord::key ──►  partition = hash(key) % N
//!                                                    p0: r1 r3 ...
//!                                                    p1: r2 ...
//!   read(from = "0:15,1:3,2:0")  ◄── assign p0@15 p1@3 p2@0, no group, no commit
//! ```
//!
//! # Guarantees
//!
//! - **Per-partition order, per-entity order.** Records are keyed by [`domain::LogRecord::key`],
//!   so every record of one entity lands in one partition, and a partition is read in the
//!   order it was written. The producer is idempotent (`enable.idempotence=true`,
//!   `acks=all`): librdkafka keeps up to 5 requests in flight per partition and the broker
//!   rejects out-of-sequence batches, so retries neither reorder nor duplicate within one
//!   producer session. `append` queues its batch in slice order, sends it concurrently, and
//!   returns only when every record is acknowledged by all in-sync replicas (durable). There is
//!   no order *across* partitions, and the port does not promise one.
//! - **Exactly-once effect without broker transactions.** The log itself is at-least-once: a
//!   relay that crashes between publishing and deleting from its outbox publishes the batch
//!   again (a "double send"). Consumers make that harmless: they save their fold *and* their
//!   [`ports::Position`] in one transaction of their own store, and recognise repeats per
//!   `(producer, lane)` by the producer's sequence. So neither Kafka transactions nor
//!   consumer-group commits are needed (and the test broker, tansu, has no transactions).
//!
//! # Positions and why consumers do not use group commits
//!
//! A position is the map partition → next offset, e.g. `"0:15,1:3,2:0"`; a partition left
//! out is read from its earliest retained record (so [`ports::Position::start`], the empty
//! map, is the beginning of every partition). Readers `assign` the partitions at those
//! offsets themselves instead of subscribing to a consumer group and committing offsets to
//! the broker, because:
//!
//! 1. the offset must be saved **atomically with the consumer's result** in the consumer's own
//!    store; a broker commit is a second, separate write, and a crash between the two either
//!    loses or repeats a batch;
//! 2. the port's `lag` and `trim` take positions as values (trim by the slowest registered
//!    checkpoint), which group offsets stored in the broker would hide;
//! 3. no group membership means no rebalances, no session timeouts, and the same position
//!    type works for every backend.
//!
//! Reads take a consumer from a small pool (making one costs a broker handshake), assign
//! it, wait up to `wait` for the first record, then take what follows without a pause (up
//! to `max`). When nothing arrived within `wait`, the watermarks decide whether the log is
//! really empty after `from` (an empty batch) or the consumer was still fetching (the read
//! keeps waiting for the records, bounded by [`KafkaOptions::timeout`]); so an empty batch
//! always means "nothing after `from`". `lag` and `len` come from the partitions' low and
//! high watermarks.
//!
//! # Topics and trimming
//!
//! The topic is created explicitly through the admin API on connect (an existing one is
//! reused with its own partition count); broker auto-creation is never relied on.
//! `trim` deletes, per partition, the records every checkpoint has passed with
//! `DeleteRecords`; a broker that refuses it gets an error saying to bound the topic with
//! retention instead (retention may drop records a slow consumer has not read; the
//! checkpoint-driven trim never does). With [`KafkaOptions::delete_records`] off, `trim`
//! removes nothing and returns 0.
//!
//! # Broker compatibility: tansu 0.6 (the local test broker)
//!
//! Topic admin, idempotent produce, fetch and metadata work. Two gaps need options:
//! `ListOffsets(latest)` answers the base offset of the last produce *batch* + 1, so
//! watermarks are right only with one record per batch ([`KafkaOptions::batch_records`]
//! `= Some(1)`); and `DeleteRecords` is not implemented by its in-memory storage (the broker
//! drops the connection), so trimming needs [`KafkaOptions::delete_records`] `= false`.

mod config;
mod error;
mod log;
mod position;

pub use config::KafkaOptions;
pub use log::KafkaLog;
