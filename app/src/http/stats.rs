//! `GET /stats` from a snapshot: stats that cannot hurt the system.
//!
//! Computing the stats is expensive (the store's truth is a full count, and a log's `lag` can
//! cost the log server real work), so requests never compute them. Every request reads the
//! latest snapshot; a request that finds it older than the minimum interval (1 s) starts
//! **one** background refresh and is answered from the snapshot it has (its age says how old
//! it is). So the provider runs at most once per interval, one run at a time, however many
//! clients poll: a flood of `GET /stats` costs the store nothing more than one poller does.
//! Only the very first request of a process waits for a computation.
//!
//! Serving the same snapshot again and again is not free either (HTTP and JSON for every
//! request: 16 clients polling back to back made ~30 000 requests a second and doubled
//! `POST /rides` latency on two cores). So each client address gets each snapshot **once**:
//! a request from an address that has already been sent the current snapshot waits for the
//! next one (a long poll of at most the interval plus one computation) and gets it. A poller
//! therefore gets at most one answer per snapshot per request it has waiting, and a slow
//! poller always gets fresh data.
//!
//! ```text
//!  GET /stats ─▶ latest snapshot ─ already sent to this address? ─▶ wait for the next one
//!                   │                                      └─ no ─▶ 200 {…, snapshot_age_ms}
//!                   │ older than the interval and no refresh running?    (or 503 if it failed)
//!                   └──▶ spawn one refresh: provider.stats() (≤ 10 s) ─▶ new snapshot
//! ```
//!
//! A refresh that fails (the store is down) or times out makes the snapshot a failure: the
//! detail is logged once per refresh, and requests get a 503 with a generic message until a
//! refresh succeeds.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use ports::Clock as _;
use serde_json::Value;

use super::{ApiError, StatsProvider};

/// The shortest time between the starts of two computations.
pub const STATS_MIN_INTERVAL: Duration = Duration::from_secs(1);
/// The longest a computation may take before its snapshot counts as failed.
const COMPUTE_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the first request of a process waits for the first snapshot.
const FIRST_WAIT: Duration = Duration::from_secs(10);
/// Client addresses remembered before the ones that have not polled lately are forgotten.
const MAX_CLIENTS: usize = 4096;

/// The latest snapshot, whether a refresh is running, and which snapshot each client address
/// was sent last.
#[derive(Default)]
struct Slot {
    latest: Option<Snapshot>,
    refreshing: bool,
    generation: u64,
    sent: HashMap<IpAddr, u64>,
}

impl Slot {
    /// Records that `client` is sent snapshot `generation`; `false` when it already was.
    fn send_once(&mut self, client: IpAddr, generation: u64) -> bool {
        if self.sent.len() >= MAX_CLIENTS && !self.sent.contains_key(&client) {
            let recent = generation.saturating_sub(1);
            self.sent.retain(|_, g| *g >= recent);
        }
        let last = self.sent.entry(client).or_insert(0);
        if *last >= generation {
            return false;
        }
        *last = generation;
        true
    }
}

/// One computation's result.
#[derive(Clone)]
struct Snapshot {
    /// Its number (1, 2, …).
    generation: u64,
    /// When its computation started (its data is at least this old).
    started: Instant,
    /// The same, as wall-clock milliseconds since the epoch.
    taken_at_ms: i64,
    /// How long the computation took.
    compute_ms: u64,
    /// The document; `None` when the computation failed.
    doc: Option<Arc<Value>>,
}

impl Snapshot {
    /// The response body: the document with the snapshot's age, or the generic 503.
    fn render(&self) -> Result<Value, ApiError> {
        let doc = self.doc.as_ref().ok_or(ApiError::StatsUnavailable)?;
        let mut v = Value::clone(doc);
        if let Value::Object(map) = &mut v {
            let age = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
            map.insert("snapshot_age_ms".into(), age.into());
            map.insert("snapshot_taken_at_ms".into(), self.taken_at_ms.into());
            map.insert("snapshot_compute_ms".into(), self.compute_ms.into());
        }
        Ok(v)
    }
}

/// The snapshot behind `GET /stats` and its single refresher.
pub(crate) struct StatsCache {
    provider: Arc<dyn StatsProvider>,
    min_interval: Duration,
    slot: Mutex<Slot>,
    /// Bumped after every refresh, so the first request can wait for the first snapshot.
    refreshed: tokio::sync::watch::Sender<u64>,
}

impl StatsCache {
    /// A cache over `provider` that computes at most once per `min_interval`.
    pub(crate) fn new(provider: Arc<dyn StatsProvider>, min_interval: Duration) -> Self {
        Self {
            provider,
            min_interval,
            slot: Mutex::new(Slot::default()),
            refreshed: tokio::sync::watch::Sender::new(0),
        }
    }

    fn slot(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The body of `GET /stats` for a request from `client`: the latest snapshot, or the
    /// next one when `client` was already sent the latest (starting a refresh when one is
    /// due).
    ///
    /// # Errors
    /// [`ApiError::StatsUnavailable`] when the snapshot's computation failed, or no snapshot
    /// came in time.
    pub(super) async fn get(self: &Arc<Self>, client: IpAddr) -> Result<Value, ApiError> {
        let mut refreshed = self.refreshed.subscribe();
        let Some(current) = self.latest_or_refresh() else {
            // The process's first request: wait for the first snapshot.
            let _ = tokio::time::timeout(FIRST_WAIT, refreshed.changed()).await;
            let latest = self.slot().latest.clone();
            let latest = latest.ok_or(ApiError::StatsUnavailable)?;
            self.slot().send_once(client, latest.generation);
            return latest.render();
        };
        if self.slot().send_once(client, current.generation) {
            return current.render();
        }
        // Already sent to this address: wait for the next snapshot (due at the end of the
        // interval, then one computation), and send that one.
        let due = tokio::time::Instant::from_std(current.started + self.min_interval);
        let deadline = due + COMPUTE_TIMEOUT;
        tokio::select! {
            _ = refreshed.changed() => {}
            () = tokio::time::sleep_until(due) => {}
        }
        loop {
            // Starts the refresh if it is due and none runs.
            if let Some(next) = self.latest_or_refresh()
                && next.generation > current.generation
            {
                self.slot().send_once(client, next.generation);
                return next.render();
            }
            match tokio::time::timeout_at(deadline, refreshed.changed()).await {
                Ok(Ok(())) => {}
                _ => return current.render(),
            }
        }
    }

    /// The latest snapshot's document and age for `GET /metrics`: no once-per-client rule
    /// (a scrape never waits for the next snapshot), a refresh started when one is due, and
    /// only the process's first call waits for a computation. `None` when the latest
    /// computation failed or none came in time.
    pub(crate) async fn current(self: &Arc<Self>) -> Option<(Arc<Value>, Duration)> {
        let mut refreshed = self.refreshed.subscribe();
        let latest = match self.latest_or_refresh() {
            Some(latest) => latest,
            None => {
                let _ = tokio::time::timeout(FIRST_WAIT, refreshed.changed()).await;
                self.slot().latest.clone()?
            }
        };
        Some((latest.doc?, latest.started.elapsed()))
    }

    /// The latest snapshot; starts a refresh first when the snapshot is due and none runs.
    fn latest_or_refresh(self: &Arc<Self>) -> Option<Snapshot> {
        let mut slot = self.slot();
        let due = slot
            .latest
            .as_ref()
            .is_none_or(|s| s.started.elapsed() >= self.min_interval);
        if due && !slot.refreshing {
            slot.refreshing = true;
            tokio::spawn(Arc::clone(self).refresh());
        }
        slot.latest.clone()
    }

    /// Computes one snapshot and publishes it.
    async fn refresh(self: Arc<Self>) {
        /// Clears `refreshing` even if the provider panics, so refreshes never stop.
        struct Running<'a>(&'a StatsCache);
        impl Drop for Running<'_> {
            fn drop(&mut self) {
                self.0.slot().refreshing = false;
                self.0.refreshed.send_modify(|n| *n += 1);
            }
        }
        let running = Running(&self);
        let started = Instant::now();
        let taken_at_ms = ports::SystemClock.now_ms();
        let doc = match tokio::time::timeout(COMPUTE_TIMEOUT, self.provider.stats()).await {
            Ok(Ok(v)) => Some(Arc::new(v)),
            Ok(Err(e)) => {
                tracing::warn!(error = %format!("{e:#}"), "stats: the snapshot could not be computed");
                None
            }
            Err(_) => {
                tracing::warn!(timeout = ?COMPUTE_TIMEOUT, "stats: the snapshot took too long");
                None
            }
        };
        let compute_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let mut slot = self.slot();
        slot.generation += 1;
        slot.latest = Some(Snapshot {
            generation: slot.generation,
            started,
            taken_at_ms,
            compute_ms,
            doc,
        });
        drop(slot);
        drop(running);
    }
}
