//! Scaling one consumer out over the lanes of a log (Kafka partitions).
//!
//! A consumer that outgrows one process runs *per lane*: lane k of the log is read by its own
//! [`Consumer`](super::Consumer), named `NAME/lane-k`, through a [`ports::LaneLog`] view. Each
//! lane has its own checkpoint, duplicate marks, state and lease (`consumer:NAME/lane-k`), so
//! a lane has one owner at a time, fenced like any consumer. Up to P instances of one
//! consumer share its P lanes:
//!
//! - every instance holds a *membership* lease (`members:NAME/<holder>`), renewed with its
//!   lane leases; the live members are the unexpired ones;
//! - an instance takes a free lane only while it holds fewer than its fair share,
//!   `ceil(P / members)`, and gives back its highest lanes while it holds more;
//! - so a joining instance gets lanes as soon as the others notice it (their next renewal,
//!   within a second), and a killed one's lanes are taken over once its leases expire (one
//!   TTL); a stopped one (SIGTERM) releases them at once.
//!
//! The consumer's result is the combination of its lanes' states: `rides verify`, the demo
//! and `GET /stats` add the lanes of a distance consumer up, and the trimmer merges the lane
//! positions into one position of the whole log ([`ports::Log::merge_lanes`]).
//!
//! Guarantees: per-lane order (records of one entity share a lane, since the log keys by
//! entity) and exactly-once folding per lane, as for any transactional consumer. A laned
//! consumer does not follow log cutovers: a cutover record stops it with a clear error.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ports::{Clock, ConsumerStore, ConsumerStoreError};

use super::lease::RENEW_EVERY;

/// The separator between a consumer's name and its lane.
pub const LANE_SUFFIX: &str = "/lane-";

/// The checkpoint name of lane `lane` of consumer `name`.
pub fn lane_name(name: &str, lane: u32) -> String {
    format!("{name}{LANE_SUFFIX}{lane}")
}

/// The consumer and lane of a lane checkpoint's name (`None` for any other name).
pub fn split_lane(name: &str) -> Option<(&str, u32)> {
    let (base, lane) = name.rsplit_once(LANE_SUFFIX)?;
    let lane = lane.parse().ok()?;
    (!base.is_empty()).then_some((base, lane))
}

/// One instance's share of a consumer's lanes: shared by the lease keepers of its lanes.
pub struct LaneShare {
    store: Arc<dyn ConsumerStore>,
    clock: Arc<dyn Clock>,
    consumer: String,
    holder: String,
    lanes: u32,
    ttl: Duration,
    state: Mutex<ShareState>,
}

#[derive(Default)]
struct ShareState {
    /// The lanes this instance holds.
    held: BTreeSet<u32>,
    /// Live members when last counted, and when (ms).
    members: Option<(u32, i64)>,
}

impl LaneShare {
    /// The share of `holder` in the `lanes` lanes of `consumer`, with leases of `ttl`.
    pub fn new(
        store: Arc<dyn ConsumerStore>,
        clock: Arc<dyn Clock>,
        consumer: impl Into<String>,
        holder: impl Into<String>,
        lanes: u32,
        ttl: Duration,
    ) -> Self {
        Self {
            store,
            clock,
            consumer: consumer.into(),
            holder: holder.into(),
            lanes: lanes.max(1),
            ttl,
            state: Mutex::new(ShareState::default()),
        }
    }

    fn members_prefix(&self) -> String {
        format!("members:{}/", self.consumer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, ShareState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// This instance's fair share now: `ceil(lanes / live members)`. Renews the membership
    /// lease and recounts the members at most every [`RENEW_EVERY`].
    ///
    /// # Errors
    /// When the consumer store cannot be reached.
    pub async fn quota(&self) -> Result<u32, ConsumerStoreError> {
        let now = self.clock.now_ms();
        let renew_ms = i64::try_from(RENEW_EVERY.as_millis()).unwrap_or(i64::MAX);
        let cached = self.lock().members;
        let members = match cached {
            Some((n, at)) if now - at < renew_ms => n,
            _ => {
                let prefix = self.members_prefix();
                let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
                let scope = format!("{prefix}{}", self.holder);
                self.store
                    .acquire_lease(&scope, &self.holder, ttl_ms, now)
                    .await?;
                let live = self
                    .store
                    .leases()
                    .await?
                    .into_iter()
                    .filter(|l| l.scope.starts_with(&prefix) && l.expires_at_ms > now)
                    .count();
                let n = u32::try_from(live).unwrap_or(u32::MAX).max(1);
                let mut state = self.lock();
                if state.members.is_some_and(|(old, _)| old != n) {
                    tracing::info!(consumer = %self.consumer, members = n, "lane members changed: rebalancing");
                }
                state.members = Some((n, now));
                n
            }
        };
        Ok(self.lanes.div_ceil(members))
    }

    /// Whether this instance may try to take `lane` (it does not hold it).
    pub fn may_take(&self, quota: u32) -> bool {
        u32::try_from(self.lock().held.len()).unwrap_or(u32::MAX) < quota
    }

    /// Whether this instance should give `lane` (held) back: it holds more than `quota`
    /// lanes and `lane` is its highest.
    pub fn should_give_back(&self, lane: u32, quota: u32) -> bool {
        let state = self.lock();
        u32::try_from(state.held.len()).unwrap_or(u32::MAX) > quota
            && state.held.last() == Some(&lane)
    }

    /// Notes whether `lane` is held now.
    pub fn set_held(&self, lane: u32, held: bool) {
        let mut state = self.lock();
        if held {
            state.held.insert(lane);
        } else {
            state.held.remove(&lane);
        }
    }

    /// The lanes this instance holds.
    pub fn held(&self) -> Vec<u32> {
        self.lock().held.iter().copied().collect()
    }

    /// Leaves the group at once (shutdown): releases the membership lease.
    pub async fn leave(&self) {
        let scope = format!("{}{}", self.members_prefix(), self.holder);
        let now = self.clock.now_ms();
        let mine = self.store.leases().await.ok().and_then(|ls| {
            ls.into_iter()
                .find(|l| l.scope == scope && l.holder == self.holder && l.expires_at_ms > now)
        });
        if let Some(lease) = mine
            && let Err(e) = self.store.release_lease(&lease).await
        {
            tracing::warn!(consumer = %self.consumer, error = %e, "could not leave the lane group; the membership expires on its own");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lane_names_round_trip() {
        assert_eq!(lane_name("distance-a", 2), "distance-a/lane-2");
        assert_eq!(split_lane("distance-a/lane-2"), Some(("distance-a", 2)));
        assert_eq!(split_lane("a/lane-1/lane-3"), Some(("a/lane-1", 3)));
        assert_eq!(split_lane("distance-a"), None);
        assert_eq!(split_lane("/lane-1"), None);
        assert_eq!(split_lane("x/lane-one"), None);
    }
}
