//! Swapping the log in production.
//!
//! `rides log cutover --to URL` moves a live system from its current log to another one
//! without stopping the API and without losing or double-counting a record:
//!
//! 1. It opens the new log (creating its topic or tables) and checks that it answers.
//! 2. It stages a `log.cutover` control record in the outbox. The record is sequenced like
//!    every other record, in commit order: everything committed before it belongs to the old
//!    log, everything after it to the new one.
//! 3. The streamer appends the records up to the cutover record to the old log (the cutover
//!    record is the old log's seal), stores the route `{new log, after_seq}` in the store, and
//!    publishes every later record on the new log.
//! 4. Each consumer reads the old log up to the seal, then continues at the start of the new
//!    log, with per-producer floors that make every record of the old log a duplicate
//!    (`DistanceState::start_new_log`), in the same transaction as its position.
//!
//! Nothing here depends on log offsets, so any log can follow any other: sled, Redis, Kafka,
//! or the store's own outbox (the Postgres-only log). Processes that run the streamer, the
//! consumers or the trimmer must be able to open the new URL (same features, same network).

use anyhow::Context as _;
use domain::NewRecord;
use ports::Clock;
use serde::Serialize;

use crate::wiring::{OpenedLog, Stores};

/// What `rides log status` shows.
#[derive(Debug, Clone, Serialize)]
pub struct LogStatus {
    /// The log records are published on now.
    pub publishing_on: String,
    /// Records at or below this sequence went to earlier logs (0 before any cutover).
    pub after_seq: u64,
    /// Each consumer and the log it reads.
    pub consumers: Vec<(String, String)>,
    /// Records the consumers' logs lost (see [`domain::gaps`]): consumer name and gap, until
    /// repaired or acknowledged.
    pub gaps: Vec<(String, domain::Gap)>,
}

/// Where records are published now: the store's route, else the log the process was started on.
///
/// # Errors
/// When the store cannot be read.
pub async fn current(stores: &Stores, log: &OpenedLog) -> anyhow::Result<(String, u64)> {
    Ok(
        match stores.outbox.route().await.context("reading the route")? {
            Some(route) => (route.log_url, route.after_seq),
            None => (log.url.clone(), 0),
        },
    )
}

/// Requests a cutover to the log at `to` (see the module docs) and returns the log it moves
/// away from.
///
/// # Errors
/// When `to` is already the current log, cannot be opened or does not answer, or the control
/// record cannot be staged.
pub async fn request(
    stores: &Stores,
    log: &OpenedLog,
    to: &str,
    clock: &dyn Clock,
) -> anyhow::Result<String> {
    let (from, _) = current(stores, log).await?;
    anyhow::ensure!(from != to, "records are already published on {to}");
    let target = log.follow(to).await.context("opening the new log")?;
    target
        .log
        .ping()
        .await
        .context("the new log does not answer")?;
    stores
        .outbox
        .stage(&[NewRecord::cutover(to, clock.now_ms())])
        .await
        .context("staging the cutover record")?;
    Ok(from)
}

/// The route and where each consumer reads.
///
/// # Errors
/// When the store or the consumer store cannot be read.
pub async fn status(stores: &Stores, log: &OpenedLog) -> anyhow::Result<LogStatus> {
    let (publishing_on, after_seq) = current(stores, log).await?;
    let mut consumers = Vec::new();
    let mut gaps = Vec::new();
    for (name, cp) in stores.consumers.list().await.context("listing consumers")? {
        gaps.extend(cp.cursor.gaps.into_iter().map(|g| (name.clone(), g)));
        let on = cp.cursor.log_url.unwrap_or_else(|| log.url.clone());
        consumers.push((name, on));
    }
    Ok(LogStatus {
        publishing_on,
        after_seq,
        consumers,
        gaps,
    })
}
