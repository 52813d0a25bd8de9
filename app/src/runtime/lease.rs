//! Leases: one active instance per scope, the others hot standbys.
//!
//! A [`LeaseKeeper`] holds the lease of one scope (`consumer:distance-a`, `streamer`...) for
//! one process. Before each step the service asks [`LeaseKeeper::hold`]: it renews the lease
//! when the last renewal is older than [`RENEW_EVERY`] (so a lease expires at most its TTL
//! after the holder stopped stepping), and answers `None` while another holder's lease is
//! live, which makes the service a standby that tries again every [`LeaseKeeper::standby_poll`].
//! SIGTERM (a cancelled shutdown token) releases the lease at once, so a standby takes over
//! without waiting for the TTL; SIGKILL leaves it to expire.
//!
//! A lease alone does not make work exclusive: a holder paused (GC, a stopped VM, a network
//! partition) past its expiry still believes it holds the lease when it wakes. Fencing does:
//! every takeover increments the lease's epoch, and a consumer's save names the lease it
//! holds, checked in the save's transaction, so the paused holder's save fails with
//! [`ports::ConsumerStoreError::Fenced`].

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ports::{Clock, ConsumerStore, ConsumerStoreError, Lease};

use super::lanes::LaneShare;

/// The default TTL of a lease.
pub const DEFAULT_TTL: Duration = Duration::from_secs(5);

/// How often a holder renews its lease (at most; renewals happen at step boundaries).
pub const RENEW_EVERY: Duration = Duration::from_millis(1000);

/// The lease of one scope, for one process.
pub struct LeaseKeeper {
    store: Arc<dyn ConsumerStore>,
    clock: Arc<dyn Clock>,
    scope: String,
    holder: String,
    ttl: Duration,
    /// The lease held, and when it was last renewed (ms).
    held: Mutex<Option<(Lease, i64)>>,
    /// For the lease of one lane of a consumer that runs per lane: the instance's share of
    /// the lanes, and this lane (see [`super::lanes`]).
    share: Option<(Arc<LaneShare>, u32)>,
}

impl LeaseKeeper {
    /// A keeper of `scope` for `holder` (unique per process run: see [`holder_id`]).
    pub fn new(
        store: Arc<dyn ConsumerStore>,
        clock: Arc<dyn Clock>,
        scope: impl Into<String>,
        holder: impl Into<String>,
        ttl: Duration,
    ) -> Self {
        Self {
            store,
            clock,
            scope: scope.into(),
            holder: holder.into(),
            ttl: ttl.max(Duration::from_millis(100)),
            held: Mutex::new(None),
            share: None,
        }
    }

    /// Makes this the lease of lane `lane` in `share`: the lane is taken only while the
    /// instance holds less than its fair share of the lanes, and given back while it holds
    /// more (see [`super::lanes`]).
    pub fn with_share(mut self, share: Arc<LaneShare>, lane: u32) -> Self {
        self.share = Some((share, lane));
        self
    }

    /// The scope.
    pub fn scope(&self) -> &str {
        &self.scope
    }

    /// How long a standby waits between attempts to take over.
    pub fn standby_poll(&self) -> Duration {
        (self.ttl / 10).clamp(Duration::from_millis(10), Duration::from_millis(500))
    }

    /// The lease this process holds, as last taken or renewed (`None` as a standby).
    pub fn current(&self) -> Option<Lease> {
        self.held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            .map(|(l, _)| l.clone())
    }

    /// Takes or renews the lease when due; `None` while another holder's lease is live.
    ///
    /// # Errors
    /// When the store cannot be reached (the lease held so far is kept: it is still valid
    /// until it expires, and fencing protects the saves).
    pub async fn hold(&self) -> Result<Option<Lease>, ConsumerStoreError> {
        let now = self.clock.now_ms();
        let renew_ms = i64::try_from(RENEW_EVERY.as_millis()).unwrap_or(i64::MAX);
        if let Some((lease, renewed)) = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_ref()
            && now - renewed < renew_ms
            && lease.expires_at_ms > now
        {
            return Ok(Some(lease.clone()));
        }
        if let Some((share, lane)) = &self.share {
            let quota = share.quota().await?;
            if self.current().is_some() {
                if share.should_give_back(*lane, quota) {
                    tracing::info!(scope = %self.scope, quota, "more lanes than this instance's share: giving this one back");
                    self.release().await;
                    return Ok(None);
                }
            } else if !share.may_take(quota) {
                return Ok(None);
            }
        }
        let ttl_ms = i64::try_from(self.ttl.as_millis()).unwrap_or(i64::MAX);
        let got = self
            .store
            .acquire_lease(&self.scope, &self.holder, ttl_ms, now)
            .await?;
        if let Some((share, lane)) = &self.share {
            share.set_held(*lane, got.is_some());
        }
        let mut held = self.held.lock().unwrap_or_else(PoisonError::into_inner);
        match (&*held, &got) {
            (None, Some(l)) => {
                tracing::info!(scope = %self.scope, holder = %self.holder, epoch = l.epoch, "lease taken: this instance is active");
            }
            (Some((old, _)), Some(l)) if old.epoch != l.epoch => {
                tracing::warn!(scope = %self.scope, holder = %self.holder, epoch = l.epoch, "lease taken again after it expired");
            }
            (Some(_), None) => {
                tracing::warn!(scope = %self.scope, holder = %self.holder, "lease lost: another instance took over; standing by");
            }
            _ => {}
        }
        *held = got.clone().map(|l| (l, now));
        Ok(got)
    }

    /// Forgets the lease after a save was fenced: another instance holds it now.
    pub fn lost(&self) {
        if let Some((share, lane)) = &self.share {
            share.set_held(*lane, false);
        }
        if self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
            .is_some()
        {
            tracing::warn!(scope = %self.scope, holder = %self.holder, "lease lost (a save was fenced); standing by");
        }
    }

    /// Releases the lease now (on shutdown), so a standby takes over at once.
    pub async fn release(&self) {
        if let Some((share, lane)) = &self.share {
            share.set_held(*lane, false);
        }
        let lease = self
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((lease, _)) = lease {
            match self.store.release_lease(&lease).await {
                Ok(()) => tracing::info!(scope = %self.scope, "lease released"),
                Err(e) => {
                    tracing::warn!(scope = %self.scope, error = %e, "could not release the lease; it expires on its own");
                }
            }
        }
    }
}

/// A holder id unique to this process run: host, pid and a random suffix.
pub fn holder_id() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "localhost".to_owned());
    format!(
        "{host}-{}-{}",
        std::process::id(),
        &uuid::Uuid::new_v4().simple().to_string()[..8]
    )
}

/// Any service, run only while it holds its lease (hot standby otherwise): the streamer,
/// trimmer, completer and reaper are at most one active per store this way.
pub(crate) struct Leased<S> {
    inner: S,
    keeper: LeaseKeeper,
}

impl<S> Leased<S> {
    pub(crate) fn new(inner: S, keeper: LeaseKeeper) -> Self {
        Self { inner, keeper }
    }
}

#[async_trait::async_trait]
impl<S: crate::services::Step> crate::services::Step for Leased<S> {
    fn name(&self) -> String {
        self.inner.name()
    }
    async fn step(&self) -> anyhow::Result<crate::services::Outcome> {
        if self.keeper.hold().await?.is_none() {
            return Ok(crate::services::Outcome::Idle);
        }
        self.inner.step().await
    }
    async fn idle(&self) {
        if self.keeper.current().is_none() {
            tokio::time::sleep(self.keeper.standby_poll()).await;
            return;
        }
        // A service may idle longer than the lease lives (the reaper's interval, say): keep
        // renewing meanwhile, so that the lease never lapses between two steps.
        let idle = self.inner.idle();
        tokio::pin!(idle);
        loop {
            tokio::select! {
                () = &mut idle => return,
                () = tokio::time::sleep(RENEW_EVERY) => {
                    if !matches!(self.keeper.hold().await, Ok(Some(_))) {
                        return;
                    }
                }
            }
        }
    }
    fn stops_on(&self, error: &anyhow::Error) -> bool {
        self.inner.stops_on(error)
    }
    async fn stop(&self) {
        self.inner.stop().await;
        self.keeper.release().await;
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU64, Ordering};

    use adapters::memory::MemoryConsumerStore;
    use ports::ManualClock;

    use super::*;
    use crate::services::{Outcome, Step};

    /// A service that counts its steps.
    struct Counting(Arc<AtomicU64>);

    #[async_trait::async_trait]
    impl Step for Counting {
        fn name(&self) -> String {
            "counting".into()
        }
        async fn step(&self) -> anyhow::Result<Outcome> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Outcome::Worked(1))
        }
        async fn idle(&self) {}
    }

    #[tokio::test]
    async fn a_leased_service_runs_once_per_store_and_the_standby_takes_over_on_release() {
        let store = Arc::new(MemoryConsumerStore::new());
        let clock = Arc::new(ManualClock::new(1_000));
        let service = |holder: &str, steps: &Arc<AtomicU64>| {
            let keeper = LeaseKeeper::new(
                store.clone(),
                clock.clone(),
                "streamer",
                holder,
                Duration::from_secs(5),
            );
            Leased::new(Counting(steps.clone()), keeper)
        };
        let (a_steps, b_steps) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (a, b) = (service("a", &a_steps), service("b", &b_steps));
        for _ in 0..3 {
            assert_eq!(a.step().await.unwrap(), Outcome::Worked(1));
            assert_eq!(b.step().await.unwrap(), Outcome::Idle, "b stands by");
        }
        assert_eq!(
            (
                a_steps.load(Ordering::SeqCst),
                b_steps.load(Ordering::SeqCst)
            ),
            (3, 0)
        );
        // SIGTERM on `a`: its lease is released and `b` works at once.
        a.stop().await;
        assert_eq!(b.step().await.unwrap(), Outcome::Worked(1));
        assert_eq!(
            a.step().await.unwrap(),
            Outcome::Idle,
            "a is the standby now"
        );
        // `b` dies without releasing: `a` takes over once the lease expired.
        clock.advance(5_001);
        assert_eq!(a.step().await.unwrap(), Outcome::Worked(1));
        assert_eq!(
            (
                a_steps.load(Ordering::SeqCst),
                b_steps.load(Ordering::SeqCst)
            ),
            (4, 1)
        );
    }

    /// A service that idles for longer than its lease lives (the reaper's interval against a
    /// short TTL) keeps its lease through the idle: same epoch, no lapse a standby could use.
    #[tokio::test(start_paused = true)]
    async fn a_long_idle_keeps_renewing_the_lease() {
        /// Time as tokio's (paused) clock sees it.
        struct TokioClock(tokio::time::Instant);
        impl Clock for TokioClock {
            fn now_ms(&self) -> i64 {
                1_000 + i64::try_from(self.0.elapsed().as_millis()).unwrap_or(i64::MAX)
            }
        }
        struct Slow;
        #[async_trait::async_trait]
        impl Step for Slow {
            fn name(&self) -> String {
                "slow".into()
            }
            async fn step(&self) -> anyhow::Result<Outcome> {
                Ok(Outcome::Idle)
            }
            async fn idle(&self) {
                tokio::time::sleep(Duration::from_secs(10)).await;
            }
        }
        let store = Arc::new(MemoryConsumerStore::new());
        let clock = Arc::new(TokioClock(tokio::time::Instant::now()));
        let keeper = LeaseKeeper::new(
            store.clone(),
            clock.clone(),
            "reaper",
            "a",
            Duration::from_secs(2),
        );
        let service = Leased::new(Slow, keeper);
        service.step().await.unwrap();
        let epoch = service.keeper.current().expect("held").epoch;
        for _ in 0..3 {
            service.idle().await;
            service.step().await.unwrap();
        }
        let lease = service.keeper.current().expect("still held");
        assert_eq!(lease.epoch, epoch, "renewed, never lapsed and taken again");
        // A standby never got it during the idles.
        let standby = LeaseKeeper::new(store, clock, "reaper", "b", Duration::from_secs(2));
        assert!(standby.hold().await.unwrap().is_none());
    }
}
