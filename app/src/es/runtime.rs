//! The background runtime (sourced's Supervisor, Dispatcher, Workers and HouseKeeper):
//! workers that claim batches for every registered reactor and settle them, and a
//! housekeeper that promotes scheduled messages, sends heartbeats' safety net and releases
//! stale claims.
//!
//! ```text
//!  commit ─▶ store wake-up (in-process; LISTEN/NOTIFY on Postgres) ─┐
//!  catch-up poll (every `catch_up`) ─────────────────────────────────┤
//!                                                                    ▼
//!  worker: for each reactor: claim (group, stream) ─▶ handle_batch ─▶ plan_settlement
//!          ─▶ failure? error strategy (back-off / park stream / stop group)
//!          ─▶ settle (effects + ack + failure, one transaction) ... until nothing is found,
//!          then wait for the next wake-up (a burst of commits is one wake-up: coalesced)
//!  housekeeper: promote due scheduled messages; release claims older than the TTL whose
//!               worker has not sent a heartbeat within it
//! ```
//!
//! Each worker sends its own heartbeat from a task tied to it: a worker that dies (its task
//! aborted, its process killed) stops beating, and its claim is released after the TTL and
//! taken by another worker, which redoes the batch (at-least-once delivery; effects commit
//! with the acknowledgement, so a batch's effects are never committed twice).
//!
//! Errors while executing actions (an optimistic conflict of an `AppendAfter`, a message
//! id already stored) go through the group's error strategy like the reactor's own errors
//! (sourced lets them kill the worker).

use std::sync::Arc;
use std::time::Duration;

use domain::es::{ErrorStrategy, Message, Verdict};
use ports::{
    Claim, Clock, EventStoreError, ReactorStore, Settlement, StreamFailure, SystemClock,
    plan_settlement,
};
use tokio::task::JoinHandle;

use super::reactor::{Delivery, Reactor};

/// The runtime's knobs (sourced's defaults where it has them).
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Workers per process (sourced: 2).
    pub workers: usize,
    /// The catch-up poll: a worker re-checks every group at least this often even without
    /// a wake-up (sourced: 5 s).
    pub catch_up: Duration,
    /// Claims older than this whose worker has not sent a heartbeat within it are released
    /// (sourced: 120 s).
    pub claim_ttl: Duration,
    /// How often a worker sends its heartbeat (sourced: 5 s).
    pub heartbeat: Duration,
    /// How often the housekeeper runs (sourced: 3 s).
    pub housekeeping: Duration,
    /// Batches a worker handles for one group before turning to the next (sourced's
    /// `max_drain_rounds`: 10), so one busy group does not starve the others.
    pub max_drain_rounds: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            catch_up: Duration::from_secs(5),
            claim_ttl: Duration::from_secs(120),
            heartbeat: Duration::from_secs(5),
            housekeeping: Duration::from_secs(3),
            max_drain_rounds: 10,
        }
    }
}

/// What happened to a failing message, for [`Runtime::on_failure`] callbacks (sourced's
/// `on_retry` and `on_stop`).
#[derive(Debug, Clone, PartialEq)]
pub struct FailureReport {
    /// The group.
    pub group_id: String,
    /// The stream.
    pub stream_id: String,
    /// The message that failed (the batch's first when the settlement itself failed).
    pub message_id: uuid::Uuid,
    /// Why.
    pub error: String,
    /// The strategy's verdict.
    pub verdict: Verdict,
}

/// A callback on failures.
pub type FailureCallback = dyn Fn(&FailureReport) + Send + Sync;

/// Reactors and their error strategies over one store. See the [module docs](self).
pub struct Runtime {
    store: Arc<dyn ReactorStore>,
    reactors: Vec<(Arc<dyn Reactor>, ErrorStrategy)>,
    config: RuntimeConfig,
    on_failure: Option<Arc<FailureCallback>>,
    clock: Arc<dyn Clock>,
}

impl std::fmt::Debug for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Runtime")
            .field("store", &self.store.describe())
            .field(
                "groups",
                &self
                    .reactors
                    .iter()
                    .map(|(r, _)| r.group().group_id)
                    .collect::<Vec<_>>(),
            )
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// Running workers and housekeeper ([`Runtime::spawn`]).
#[derive(Debug)]
pub struct RuntimeHandle {
    /// The workers' tasks, by index.
    pub workers: Vec<JoinHandle<()>>,
    /// The housekeeper's task.
    pub housekeeper: JoinHandle<()>,
}

impl RuntimeHandle {
    /// Stops everything (claims held are released after the TTL, or settled if a batch
    /// finished first).
    pub fn abort(&self) {
        for w in &self.workers {
            w.abort();
        }
        self.housekeeper.abort();
    }

    /// Waits until every task ended (after [`RuntimeHandle::abort`], or forever).
    pub async fn join(self) {
        for w in self.workers {
            let _ = w.await;
        }
        let _ = self.housekeeper.await;
    }
}

/// Aborts a task when dropped (a worker's heartbeat dies with the worker).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl Runtime {
    /// A runtime over `store` with no reactor yet.
    pub fn new(store: Arc<dyn ReactorStore>) -> Self {
        Self {
            store,
            reactors: Vec::new(),
            config: RuntimeConfig::default(),
            on_failure: None,
            clock: Arc::new(SystemClock),
        }
    }

    /// Adds a reactor with the default error strategy (park the stream at the first failure).
    pub fn with_reactor(self, reactor: impl Reactor) -> Self {
        self.with_reactor_strategy(reactor, ErrorStrategy::default())
    }

    /// Adds a reactor with its error strategy.
    pub fn with_reactor_strategy(mut self, reactor: impl Reactor, strategy: ErrorStrategy) -> Self {
        self.reactors.push((Arc::new(reactor), strategy));
        self
    }

    /// Replaces the configuration.
    pub fn with_config(mut self, config: RuntimeConfig) -> Self {
        self.config = config;
        self
    }

    /// Replaces the clock (tests).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Calls `f` on every failure, after the strategy decided (sourced's `on_retry` /
    /// `on_stop`).
    pub fn on_failure(mut self, f: impl Fn(&FailureReport) + Send + Sync + 'static) -> Self {
        self.on_failure = Some(Arc::new(f));
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ReactorStore> {
        &self.store
    }

    /// The configuration.
    pub fn config(&self) -> &RuntimeConfig {
        &self.config
    }

    /// Registers every reactor's group (idempotent; keeps positions and status).
    ///
    /// # Errors
    /// The store's.
    pub async fn register(&self) -> Result<(), EventStoreError> {
        let now = self.clock.now_ms();
        for (r, _) in &self.reactors {
            self.store.register_group(&r.group(), now).await?;
        }
        Ok(())
    }

    /// Claims, handles and settles one batch of reactor `index` as `worker_id`. Returns
    /// whether a batch was claimed.
    ///
    /// # Errors
    /// The store's, when it cannot be reached (a failing reactor or a failed settlement is
    /// not an error here: the strategy handles it).
    pub async fn tick(&self, index: usize, worker_id: &str) -> Result<bool, EventStoreError> {
        let Some((reactor, strategy)) = self.reactors.get(index) else {
            return Ok(false);
        };
        let group = reactor.group();
        let now = self.clock.now_ms();
        let Some(claim) = self.store.claim(&group.group_id, worker_id, now).await? else {
            return Ok(false);
        };
        let history: Vec<Message> = if reactor.wants_history() {
            match self.store.read_stream(&claim.stream_id, 0, None).await {
                Ok(h) => h.into_iter().map(|s| s.message).collect(),
                Err(e) => {
                    self.release(&claim, Settlement::default()).await;
                    return Err(e);
                }
            }
        } else {
            Vec::new()
        };
        let batch: Vec<Delivery> = claim
            .batch
            .iter()
            .map(|c| Delivery {
                message: c.stored.message.clone(),
                replaying: c.replaying,
            })
            .collect();
        tracing::debug!(
            worker = worker_id,
            group = %group.group_id,
            stream = %claim.stream_id,
            n = batch.len(),
            "handling batch"
        );
        let result = reactor
            .handle_batch(self.store.as_ref(), &batch, &history, now)
            .await;
        let mut settlement = match plan_settlement(&claim, &result) {
            Ok(s) => s,
            Err(e) => {
                let first = batch[0].message.id();
                let failure = self.fail(&claim, strategy, first, e.to_string()).await;
                self.release(&claim, failure).await;
                return Ok(true);
            }
        };
        if let Some((id, error)) = &result.failed {
            settlement = Settlement {
                failure: self
                    .fail(&claim, strategy, *id, error.clone())
                    .await
                    .failure,
                ..settlement
            };
        }
        match self.store.settle(&claim, settlement, now).await {
            Ok(_) => Ok(true),
            Err(EventStoreError::ClaimLost(why)) => {
                tracing::warn!(worker = worker_id, %why, "claim lost; the batch is redone elsewhere");
                Ok(true)
            }
            Err(e @ EventStoreError::Unavailable(_)) => {
                self.release(&claim, Settlement::default()).await;
                Err(e)
            }
            Err(e) => {
                // Executing the actions failed (a conflict, a duplicate): the whole batch is
                // unacknowledged; the strategy decides about its first message.
                let first = batch[0].message.id();
                let failure = self.fail(&claim, strategy, first, e.to_string()).await;
                self.release(&claim, failure).await;
                Ok(true)
            }
        }
    }

    /// Applies the strategy to a failure; returns the release recording it.
    async fn fail(
        &self,
        claim: &Claim,
        strategy: &ErrorStrategy,
        message_id: uuid::Uuid,
        error: String,
    ) -> Settlement {
        let now = self.clock.now_ms();
        let verdict = strategy.decide(claim.retry_count, now);
        let (retry_count, retry_at_ms) = match verdict {
            Verdict::RetryAt { at_ms, retry_count } => (retry_count, Some(at_ms)),
            Verdict::Park { retry_count } => (retry_count, None),
            Verdict::StopGroup => {
                let reason = format!("{error} (message {message_id} on {})", claim.stream_id);
                if let Err(e) = self.store.stop_group(&claim.group_id, &reason).await {
                    tracing::warn!(error = %e, "stopping the group failed");
                }
                (claim.retry_count + 1, Some(now))
            }
        };
        tracing::warn!(
            group = %claim.group_id,
            stream = %claim.stream_id,
            %message_id,
            %error,
            ?verdict,
            "message failed"
        );
        if let Some(cb) = &self.on_failure {
            cb(&FailureReport {
                group_id: claim.group_id.clone(),
                stream_id: claim.stream_id.clone(),
                message_id,
                error: error.clone(),
                verdict,
            });
        }
        Settlement {
            failure: Some(StreamFailure {
                message_id,
                error,
                retry_count,
                retry_at_ms,
            }),
            ..Settlement::default()
        }
    }

    /// Releases `claim` with `release` (best effort: if the store cannot be reached, the
    /// claim expires after the TTL).
    async fn release(&self, claim: &Claim, release: Settlement) {
        let now = self.clock.now_ms();
        if let Err(e) = self.store.settle(claim, release, now).await {
            tracing::warn!(error = %e, "releasing a claim failed; it expires after the TTL");
        }
    }

    /// Handles batches of every reactor until none is left (sourced's `Router#drain`, for
    /// tests and one-shot runs); promotes due scheduled messages first. Returns the
    /// batches handled.
    ///
    /// # Errors
    /// The store's.
    pub async fn drain(&self, worker_id: &str) -> Result<usize, EventStoreError> {
        let mut n = 0;
        loop {
            self.store.promote_due(self.clock.now_ms()).await?;
            let mut found = false;
            for i in 0..self.reactors.len() {
                while self.tick(i, worker_id).await? {
                    found = true;
                    n += 1;
                }
            }
            if !found {
                return Ok(n);
            }
        }
    }

    /// One worker: drains every group (up to `max_drain_rounds` batches each in turn), then
    /// waits for a wake-up or the catch-up interval. Sends its heartbeat from a task that
    /// dies with it. Runs until aborted.
    pub async fn run_worker(self: Arc<Self>, worker_id: String) {
        let _beat = {
            let (store, clock, id, every) = (
                Arc::clone(&self.store),
                Arc::clone(&self.clock),
                worker_id.clone(),
                self.config.heartbeat,
            );
            AbortOnDrop(tokio::spawn(async move {
                loop {
                    if let Err(e) = store
                        .heartbeat(std::slice::from_ref(&id), clock.now_ms())
                        .await
                    {
                        tracing::warn!(error = %e, "heartbeat failed");
                    }
                    tokio::time::sleep(every).await;
                }
            }))
        };
        loop {
            let seen = self.store.wake_version();
            let mut found = false;
            for i in 0..self.reactors.len() {
                for _ in 0..self.config.max_drain_rounds.max(1) {
                    match self.tick(i, &worker_id).await {
                        Ok(true) => found = true,
                        Ok(false) => break,
                        Err(e) => {
                            tracing::warn!(worker = %worker_id, error = %e, "worker tick failed");
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            break;
                        }
                    }
                }
            }
            if !found {
                self.store.wait_wake(seen, self.config.catch_up).await;
            }
        }
    }

    /// One housekeeping pass: promotes every due scheduled message and releases stale
    /// claims. Returns (messages promoted, claims released).
    ///
    /// # Errors
    /// The store's.
    pub async fn housekeep(&self) -> Result<(usize, u64), EventStoreError> {
        let mut promoted = 0;
        loop {
            let n = self.store.promote_due(self.clock.now_ms()).await?.len();
            promoted += n;
            if n == 0 {
                break;
            }
        }
        let released = self
            .store
            .release_stale_claims(self.config.claim_ttl, self.clock.now_ms())
            .await?;
        if promoted > 0 || released > 0 {
            tracing::info!(promoted, released, "housekeeping");
        }
        Ok((promoted, released))
    }

    /// The housekeeper: [`Runtime::housekeep`] every `housekeeping` interval, until aborted.
    pub async fn run_housekeeper(self: Arc<Self>) {
        loop {
            if let Err(e) = self.housekeep().await {
                tracing::warn!(error = %e, "housekeeping failed");
            }
            tokio::time::sleep(self.config.housekeeping).await;
        }
    }

    /// Registers the groups and spawns `config.workers` workers named `<prefix>-worker-<i>`
    /// and one housekeeper.
    ///
    /// # Errors
    /// The store's, while registering.
    pub async fn spawn(self: Arc<Self>, prefix: &str) -> Result<RuntimeHandle, EventStoreError> {
        self.register().await?;
        let workers = (0..self.config.workers)
            .map(|i| tokio::spawn(Arc::clone(&self).run_worker(format!("{prefix}-worker-{i}"))))
            .collect();
        let housekeeper = tokio::spawn(Arc::clone(&self).run_housekeeper());
        Ok(RuntimeHandle {
            workers,
            housekeeper,
        })
    }
}
