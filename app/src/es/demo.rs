//! `rides es demo`: the ride dispatch example running on the background runtime, with
//! faults, ending with a verdict.
//!
//! ```text
//!  pilots go online, riders request rides ── Unit (Ride + Pilot actors, synchronous)
//!  ride.requested ─▶ dispatcher    assigns a free online pilot through the unit (a busy or
//!                                  offline pilot refuses; no pilot free: back-off and retry)
//!  ride.requested ─▶ timeouts      schedules dispatch.ride_timeout at requested + N ms
//!  dispatch.ride_timeout ─▶ canceller   cancels the ride if it is still waiting for a pilot
//!  ride.pilot_assigned ─▶ drivers  pick the rider up and complete the ride (unit)
//!  ride.completed ─▶ receipts      starts the receipt workflow (a durable step sends through a
//!                                  fake mailer that fails at random)
//!  every ride/pilot event ─▶ dispatch-board (state-stored projector)
//! ```
//!
//! Faults: workers are killed mid-run (their claims released after the TTL, their batches
//! redone by others), the mailer fails at random (the error strategy retries with back-off),
//! and the receipt handler "crashes" after a successful send at random (the batch is
//! delivered again: a duplicate delivery). The mailer takes the ride id as an idempotency key,
//! as a real provider's API does, so a duplicate delivery never sends a second receipt.
//!
//! The verdict agrees only when every requested ride ended completed or cancelled, no pilot
//! ever held two rides, every completed ride got exactly one receipt (and no cancelled ride
//! one), and the board equals a rebuild from the events after a reset.
//!
//! The receipt is a durable workflow ([`super::workflow`]) started once per completed ride
//! (the start commits with the acknowledgement of `ride.completed`): one step sending through
//! the mailer, retried by the workflow when the mailer fails or the step crashes after a send.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use domain::es::dispatch::{
    AssignPilot, CompleteRide, GoOnline, PickUp, Pilot, PilotAssigned, RequestRide, Ride,
    RideAccepted, RideCompleted, RideFinished, RideRequested, RideState, RideStatus,
};
use domain::es::{
    Action, ActorInstance, Backoff, BatchResult, ErrorStrategy, GroupSpec, Message, MessageType,
};
use ports::{Clock, ReactorStore, SystemClock};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::board::{BOARD, DispatchBoard};
use super::reactor::{Delivery, Handler, Projector, Reactor};
use super::runtime::{Runtime, RuntimeConfig};
use super::unit::{Unit, UnitError};
use super::workflow::{Ctx, Halt, Workflow};

/// The scheduled message that ends a ride's wait for a pilot.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RideTimeout {}

impl MessageType for RideTimeout {
    const TYPE: &'static str = "dispatch.ride_timeout";
}

/// The demo's knobs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    /// Rides requested.
    pub rides: usize,
    /// Pilots online.
    pub pilots: usize,
    /// A ride still waiting for a pilot this long after its request is cancelled (ms).
    pub timeout_ms: i64,
    /// Probability that a mailer call fails.
    pub mailer_failure: f64,
    /// Probability that the receipt handler fails after a successful send.
    pub crash_after_send: f64,
    /// Workers.
    pub workers: usize,
    /// How often a worker is killed (none: no kills).
    pub kill_every: Option<Duration>,
    /// The random seed.
    pub seed: u64,
    /// The longest wait for every ride to end (s).
    pub settle_timeout: Duration,
}

impl Default for DemoConfig {
    fn default() -> Self {
        Self {
            rides: 40,
            pilots: 5,
            timeout_ms: 3_000,
            mailer_failure: 0.3,
            crash_after_send: 0.2,
            workers: 3,
            kill_every: Some(Duration::from_millis(700)),
            seed: 7,
            settle_timeout: Duration::from_secs(120),
        }
    }
}

/// The demo's outcome. `agree` is true only when every check holds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DemoVerdict {
    /// Every check holds.
    pub agree: bool,
    /// Rides requested.
    pub rides: usize,
    /// Rides completed.
    pub completed: usize,
    /// Rides cancelled (timed out).
    pub cancelled: usize,
    /// Rides in another state at the end (must be 0).
    pub unfinished: usize,
    /// Pilots that ever held two rides at once (must be 0).
    pub double_booked_pilots: usize,
    /// Completed rides without exactly one receipt, or cancelled rides with one (must be 0).
    pub receipt_mismatches: usize,
    /// Receipts sent.
    pub receipts: usize,
    /// Whether the board equals its rebuild after a reset.
    pub board_rebuilt_equal: bool,
    /// Workers killed.
    pub workers_killed: u64,
    /// Mailer calls that failed.
    pub mailer_failures: u64,
    /// Deliveries of an already sent receipt (duplicates absorbed by the idempotency key).
    pub duplicate_receipts: u64,
    /// Handler crashes after a send.
    pub crashes_after_send: u64,
    /// The store.
    pub store: String,
}

/// A mailer that fails at random and deduplicates by idempotency key.
#[derive(Debug)]
pub struct FakeMailer {
    rng: Mutex<StdRng>,
    failure: f64,
    sent: Mutex<HashMap<String, u64>>,
    failures: AtomicU64,
    duplicates: AtomicU64,
}

impl FakeMailer {
    /// A mailer failing with probability `failure`.
    pub fn new(seed: u64, failure: f64) -> Self {
        Self {
            rng: Mutex::new(StdRng::seed_from_u64(seed)),
            failure,
            sent: Mutex::new(HashMap::new()),
            failures: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
        }
    }

    fn roll(&self, p: f64) -> bool {
        let mut rng = self.rng.lock().unwrap_or_else(|e| e.into_inner());
        rng.random_bool(p.clamp(0.0, 1.0))
    }

    /// Sends the receipt for `key` once (a repeated key is accepted and not sent again).
    ///
    /// # Errors
    /// A random failure.
    pub fn send(&self, key: &str) -> Result<(), String> {
        if self.roll(self.failure) {
            self.failures.fetch_add(1, Ordering::Relaxed);
            return Err("mailer unavailable".into());
        }
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let n = sent.entry(key.to_owned()).or_insert(0);
        if *n > 0 {
            self.duplicates.fetch_add(1, Ordering::Relaxed);
        } else {
            *n = 1;
        }
        Ok(())
    }

    /// Receipts sent, by key.
    pub fn sent(&self) -> HashMap<String, u64> {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

async fn ride_state(store: &dyn ReactorStore, ride_id: &str) -> Result<RideState, String> {
    let mut ride = ActorInstance::new(&Ride, ride_id);
    super::unit::load(store, &mut ride)
        .await
        .map_err(|e| e.to_string())?;
    Ok(ride.state().clone())
}

/// Whether a unit error is a refusal (the domain said no) rather than a failure to retry.
fn refused(e: &UnitError) -> bool {
    matches!(e, UnitError::Actor(_))
}

/// Assigns a free pilot to each requested ride, through the unit.
struct Dispatcher {
    unit: Arc<Unit>,
    pilots: Vec<String>,
}

#[async_trait]
impl Reactor for Dispatcher {
    fn group(&self) -> GroupSpec {
        GroupSpec::new("dispatcher", &[RideRequested::TYPE]).batch_size(1)
    }

    async fn handle_batch(
        &self,
        store: &dyn ReactorStore,
        batch: &[Delivery],
        _history: &[Message],
        now_ms: i64,
    ) -> BatchResult {
        let mut result = BatchResult::default();
        for d in batch {
            let m = &d.message;
            if d.replaying {
                result.handled.push((m.id(), vec![Action::Ok]));
                continue;
            }
            let outcome = self.assign(store, m, now_ms).await;
            if !result.record(m.id(), outcome.map(|()| vec![Action::Ok])) {
                break;
            }
        }
        result
    }
}

impl Dispatcher {
    async fn assign(
        &self,
        store: &dyn ReactorStore,
        m: &Message,
        now_ms: i64,
    ) -> Result<(), String> {
        let ride_id = m.stream_id();
        let start = m.id().as_u128() as usize;
        for i in 0..self.pilots.len() {
            if ride_state(store, ride_id).await?.status != RideStatus::Requested {
                return Ok(()); // assigned by an earlier delivery, or timed out
            }
            let pilot = &self.pilots[(start + i) % self.pilots.len()];
            let cmd = Message::build(
                ride_id,
                &AssignPilot {
                    pilot_id: pilot.clone(),
                },
                now_ms,
            )
            .map_err(|e| e.to_string())?;
            let cmd = m.correlate(cmd);
            match self.unit.handle(cmd, SystemClock.now_ms()).await {
                Ok(_) => return Ok(()),
                Err(e) if refused(&e) => {} // that pilot is busy: the next one
                Err(e) => return Err(e.to_string()),
            }
        }
        Err("no pilot free".into())
    }
}

/// Cancels a ride still waiting for a pilot when its timeout fires.
struct Canceller {
    unit: Arc<Unit>,
}

/// Picks up and completes assigned rides.
struct Drivers {
    unit: Arc<Unit>,
}

/// Starts a receipt workflow for each completed ride.
struct Receipts {
    workflow: Arc<Workflow>,
}

#[async_trait]
impl Reactor for Canceller {
    fn group(&self) -> GroupSpec {
        GroupSpec::new("ride-timeouts", &[RideTimeout::TYPE]).batch_size(1)
    }

    async fn handle_batch(
        &self,
        store: &dyn ReactorStore,
        batch: &[Delivery],
        _history: &[Message],
        now_ms: i64,
    ) -> BatchResult {
        let mut result = BatchResult::default();
        for d in batch {
            let m = &d.message;
            let done = async {
                if d.replaying
                    || ride_state(store, m.stream_id()).await?.status != RideStatus::Requested
                {
                    return Ok(());
                }
                let cancel = Message::build(
                    m.stream_id(),
                    &domain::es::dispatch::CancelRide {
                        reason: "no pilot accepted in time".into(),
                    },
                    now_ms,
                )
                .map_err(|e| e.to_string())?;
                match self
                    .unit
                    .handle(m.correlate(cancel), SystemClock.now_ms())
                    .await
                {
                    Ok(_) => Ok(()),
                    Err(e) if refused(&e) => Ok(()),
                    Err(e) => Err(e.to_string()),
                }
            }
            .await;
            if !result.record(m.id(), done.map(|()| vec![Action::Ok])) {
                break;
            }
        }
        result
    }
}

#[async_trait]
impl Reactor for Drivers {
    fn group(&self) -> GroupSpec {
        GroupSpec::new("drivers", &[PilotAssigned::TYPE]).batch_size(1)
    }

    async fn handle_batch(
        &self,
        _store: &dyn ReactorStore,
        batch: &[Delivery],
        _history: &[Message],
        now_ms: i64,
    ) -> BatchResult {
        let mut result = BatchResult::default();
        for d in batch {
            let m = &d.message;
            let done = async {
                if d.replaying {
                    return Ok(());
                }
                let pick =
                    Message::build(m.stream_id(), &PickUp {}, now_ms).map_err(|e| e.to_string())?;
                let complete = Message::build(m.stream_id(), &CompleteRide {}, now_ms)
                    .map_err(|e| e.to_string())?;
                for c in [pick, complete] {
                    match self.unit.handle(m.correlate(c), SystemClock.now_ms()).await {
                        Ok(_) => {}
                        Err(e) if refused(&e) => {} // done by an earlier delivery
                        Err(e) => return Err(e.to_string()),
                    }
                }
                Ok(())
            }
            .await;
            if !result.record(m.id(), done.map(|()| vec![Action::Ok])) {
                break;
            }
        }
        result
    }
}

#[async_trait]
impl Reactor for Receipts {
    fn group(&self) -> GroupSpec {
        GroupSpec::new("receipts", &[RideCompleted::TYPE]).batch_size(5)
    }

    /// Starts the receipt workflow of each completed ride (once: the start commits with the
    /// acknowledgement).
    async fn handle_batch(
        &self,
        store: &dyn ReactorStore,
        batch: &[Delivery],
        _history: &[Message],
        now_ms: i64,
    ) -> BatchResult {
        let mut result = BatchResult::default();
        for d in batch {
            let m = &d.message;
            let started = store
                .read_stream(&self.workflow.handle(m.stream_id()).stream_id, 0, Some(1))
                .await;
            let actions = match started {
                Ok(s) if !s.is_empty() || d.replaying => Ok(vec![Action::Ok]),
                Ok(_) => self
                    .workflow
                    .start_action(
                        m.stream_id(),
                        serde_json::json!({"ride_id": m.stream_id()}),
                        now_ms,
                    )
                    .map(|a| vec![a]),
                Err(e) => Err(e.to_string()),
            };
            if !result.record(m.id(), actions) {
                break;
            }
        }
        result
    }
}

/// The receipt workflow: one durable step that sends the receipt (retried up to 20 times);
/// it sometimes "crashes" after a successful send, so the step runs again (a duplicate
/// delivery the mailer's idempotency key absorbs).
fn receipt_workflow(mailer: Arc<FakeMailer>, crash: f64, crashes: Arc<AtomicU64>) -> Workflow {
    Workflow::new("receipt", move |ctx: Ctx, args: Value| {
        let (mailer, crashes) = (Arc::clone(&mailer), Arc::clone(&crashes));
        async move {
            let ride = args["ride_id"].as_str().unwrap_or_default().to_owned();
            ctx.step(
                "send_receipt",
                serde_json::json!([ride]),
                20,
                move |_| async move {
                    mailer.send(&ride)?;
                    if mailer.roll(crash) {
                        crashes.fetch_add(1, Ordering::Relaxed);
                        return Err("crashed after sending".to_owned());
                    }
                    Ok(Value::Bool(true))
                },
            )
            .await?;
            Ok::<Value, Halt>(Value::Bool(true))
        }
    })
}

/// The demo's topology, declared (`rides es topology`): the Ride and Pilot actors' commands
/// and events, their reactions, the demo's reactors and the dispatch board.
pub fn topology() -> domain::es::topology::Topology {
    use domain::es::dispatch::{
        AcceptRide, CancelRide, FinishRide, GoOffline, RideCancelled, RiderPickedUp, WentOffline,
        WentOnline,
    };
    let board = DispatchBoard;
    let board_types = super::reactor::Projection::types(&board);
    domain::es::topology::Topology::new()
        .command("Ride", RequestRide::TYPE, &[RideRequested::TYPE])
        .command("Ride", AssignPilot::TYPE, &[PilotAssigned::TYPE])
        .command("Ride", PickUp::TYPE, &[RiderPickedUp::TYPE])
        .command("Ride", CompleteRide::TYPE, &[RideCompleted::TYPE])
        .command("Ride", CancelRide::TYPE, &[RideCancelled::TYPE])
        .command("Pilot", GoOnline::TYPE, &[WentOnline::TYPE])
        .command("Pilot", GoOffline::TYPE, &[WentOffline::TYPE])
        .command("Pilot", AcceptRide::TYPE, &[RideAccepted::TYPE])
        .command("Pilot", FinishRide::TYPE, &[RideFinished::TYPE])
        .automation("Ride", &[PilotAssigned::TYPE], &[AcceptRide::TYPE])
        .automation(
            "Ride",
            &[RideCompleted::TYPE, RideCancelled::TYPE],
            &[FinishRide::TYPE],
        )
        .automation("dispatcher", &[RideRequested::TYPE], &[AssignPilot::TYPE])
        .automation("timeouts", &[RideRequested::TYPE], &[RideTimeout::TYPE])
        .automation("ride-timeouts", &[RideTimeout::TYPE], &[CancelRide::TYPE])
        .automation(
            "drivers",
            &[PilotAssigned::TYPE],
            &[PickUp::TYPE, CompleteRide::TYPE],
        )
        .automation("receipts", &[RideCompleted::TYPE], &["receipt.started"])
        .automation(
            "workflow:receipt",
            &[
                "receipt.started",
                "receipt.step_started",
                "receipt.step_failed",
            ],
            &[
                "receipt.step_started",
                "receipt.step_complete",
                "receipt.complete",
            ],
        )
        .read_model(super::reactor::Projection::group_id(&board), &board_types)
}

/// Runs the demo on `store` and returns its verdict.
///
/// # Errors
/// When the store fails outside what the runtime retries.
pub async fn run(store: Arc<dyn ReactorStore>, config: DemoConfig) -> anyhow::Result<DemoVerdict> {
    let run_id = &uuid::Uuid::new_v4().simple().to_string()[..8];
    let unit = Arc::new(
        Unit::with_runtime(Arc::clone(&store))
            .with_actor(Ride)?
            .with_actor(Pilot)?,
    );
    let pilots: Vec<String> = (0..config.pilots.max(1))
        .map(|i| format!("pilot-{run_id}-{i}"))
        .collect();
    let mailer = Arc::new(FakeMailer::new(config.seed, config.mailer_failure));
    let crashes = Arc::new(AtomicU64::new(0));
    let workflow = Arc::new(receipt_workflow(
        Arc::clone(&mailer),
        config.crash_after_send,
        Arc::clone(&crashes),
    ));
    let receipts = Receipts {
        workflow: Arc::clone(&workflow),
    };
    let timeout_ms = config.timeout_ms;
    let patient = ErrorStrategy::retry(10_000, 100, Backoff::Constant);
    let rt_config = RuntimeConfig {
        workers: config.workers.max(1),
        catch_up: Duration::from_millis(500),
        claim_ttl: Duration::from_millis(800),
        heartbeat: Duration::from_millis(100),
        housekeeping: Duration::from_millis(100),
        max_drain_rounds: 10,
    };
    let rt = Arc::new(
        Runtime::new(Arc::clone(&store))
            .with_reactor_strategy(
                Dispatcher {
                    unit: Arc::clone(&unit),
                    pilots: pilots.clone(),
                },
                patient,
            )
            .with_reactor_strategy(
                Handler::new(
                    GroupSpec::new("timeouts", &[RideRequested::TYPE]),
                    move |m, replaying| {
                        if replaying {
                            return Ok(Vec::new());
                        }
                        let t = Message::build(m.stream_id(), &RideTimeout {}, m.created_at_ms())
                            .and_then(|t| t.at(m.created_at_ms() + timeout_ms))
                            .map_err(|e| e.to_string())?;
                        Ok(vec![t])
                    },
                ),
                patient,
            )
            .with_reactor_strategy(
                Canceller {
                    unit: Arc::clone(&unit),
                },
                patient,
            )
            .with_reactor_strategy(
                Drivers {
                    unit: Arc::clone(&unit),
                },
                patient,
            )
            .with_reactor_strategy(receipts, patient)
            .with_reactor_strategy(SharedWorkflow(Arc::clone(&workflow)), patient)
            .with_reactor(Projector::state_stored(DispatchBoard))
            .with_config(rt_config),
    );
    rt.register().await?;
    let prefix = format!("demo-{run_id}");
    let spawn_worker =
        |n: u64| tokio::spawn(Arc::clone(&rt).run_worker(format!("{prefix}-worker-{n}")));
    let mut next_worker = 0_u64;
    let mut workers: Vec<tokio::task::JoinHandle<()>> = Vec::new();
    for _ in 0..config.workers.max(1) {
        workers.push(spawn_worker(next_worker));
        next_worker += 1;
    }
    let housekeeper = tokio::spawn(Arc::clone(&rt).run_housekeeper());

    // Pilots online, then the riders, a few milliseconds apart.
    for p in &pilots {
        let m = Message::build(
            p.as_str(),
            &GoOnline { name: p.clone() },
            SystemClock.now_ms(),
        )?;
        unit.handle(m, SystemClock.now_ms()).await?;
    }
    let rides: Vec<String> = (0..config.rides)
        .map(|i| format!("ride-{run_id}-{i}"))
        .collect();
    let mut rng = StdRng::seed_from_u64(config.seed);
    let mut killed = 0_u64;
    let mut last_kill = tokio::time::Instant::now();
    let mut kill = |workers: &mut Vec<tokio::task::JoinHandle<()>>, rng: &mut StdRng| {
        if config
            .kill_every
            .is_some_and(|every| last_kill.elapsed() >= every)
            && !workers.is_empty()
        {
            let i = rng.random_range(0..workers.len());
            workers.swap_remove(i).abort();
            workers.push(spawn_worker(next_worker));
            next_worker += 1;
            killed += 1;
            last_kill = tokio::time::Instant::now();
            tracing::info!(fault = "worker_killed", "killed a worker mid-run");
        }
    };
    for r in &rides {
        let m = Message::build(
            r.as_str(),
            &RequestRide {
                rider_id: format!("rider-{r}"),
                pickup: "Market St".into(),
                dropoff: "Mission St".into(),
            },
            SystemClock.now_ms(),
        )?;
        unit.handle(m, SystemClock.now_ms()).await?;
        kill(&mut workers, &mut rng);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    // Until every ride ended and every group caught up.
    let deadline = tokio::time::Instant::now() + config.settle_timeout;
    loop {
        kill(&mut workers, &mut rng);
        let mut ended = 0;
        for r in &rides {
            let s = ride_state(store.as_ref(), r)
                .await
                .map_err(anyhow::Error::msg)?;
            if matches!(s.status, RideStatus::Completed | RideStatus::Cancelled) {
                ended += 1;
            }
        }
        let groups = store.groups().await?;
        let caught_up = groups
            .iter()
            .all(|g| g.lag == 0 && g.failing.iter().all(|f| !f.parked));
        if (ended == rides.len() && caught_up) || tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    for w in &workers {
        w.abort();
    }
    housekeeper.abort();

    // The verdict.
    let (mut completed, mut cancelled, mut unfinished) = (0, 0, 0);
    let sent = mailer.sent();
    let mut receipt_mismatches = 0;
    for r in &rides {
        let s = ride_state(store.as_ref(), r)
            .await
            .map_err(anyhow::Error::msg)?;
        let receipts = sent.get(r).copied().unwrap_or(0);
        match s.status {
            RideStatus::Completed => {
                completed += 1;
                receipt_mismatches += usize::from(receipts != 1);
            }
            RideStatus::Cancelled => {
                cancelled += 1;
                receipt_mismatches += usize::from(receipts != 0);
            }
            _ => unfinished += 1,
        }
    }
    let mut double_booked_pilots = 0;
    for p in &pilots {
        let mut active: Option<String> = None;
        let mut doubled = false;
        for m in store.read_stream(p, 0, None).await? {
            let m = m.message;
            if m.is::<RideAccepted>() {
                doubled |= active.is_some();
                active = Some(m.decode::<RideAccepted>()?.ride_id);
            } else if m.is::<RideFinished>() {
                active = None;
            }
        }
        double_booked_pilots += usize::from(doubled);
    }
    // The board, then its rebuild after a reset.
    let mine = |docs: Vec<(String, Value)>| -> BTreeMap<String, Value> {
        docs.into_iter()
            .filter(|(id, _)| id.contains(run_id))
            .collect()
    };
    let board = mine(store.documents(BOARD).await?);
    let clear: Vec<domain::es::SyncOp> = board
        .keys()
        .map(|id| domain::es::SyncOp::Delete {
            collection: BOARD.into(),
            id: id.clone(),
        })
        .collect();
    store
        .commit(ports::Commit {
            appends: Vec::new(),
            sync: clear,
        })
        .await?;
    store.reset_group("dispatch-board").await?;
    let rebuild =
        Runtime::new(Arc::clone(&store)).with_reactor(Projector::state_stored(DispatchBoard));
    rebuild.drain(&format!("{prefix}-rebuild")).await?;
    let rebuilt = mine(store.documents(BOARD).await?);
    let board_rebuilt_equal = !board.is_empty() && rebuilt == board;
    let agree = unfinished == 0
        && double_booked_pilots == 0
        && receipt_mismatches == 0
        && board_rebuilt_equal
        && completed + cancelled == rides.len();
    Ok(DemoVerdict {
        agree,
        rides: rides.len(),
        completed,
        cancelled,
        unfinished,
        double_booked_pilots,
        receipt_mismatches,
        receipts: sent.values().filter(|n| **n > 0).count(),
        board_rebuilt_equal,
        workers_killed: killed,
        mailer_failures: mailer.failures.load(Ordering::Relaxed),
        duplicate_receipts: mailer.duplicates.load(Ordering::Relaxed),
        crashes_after_send: crashes.load(Ordering::Relaxed),
        store: store.describe(),
    })
}

/// The receipt [`Workflow`], shared with [`Receipts`] (which starts its runs).
struct SharedWorkflow(Arc<Workflow>);

#[async_trait]
impl Reactor for SharedWorkflow {
    fn group(&self) -> GroupSpec {
        self.0.group()
    }

    fn wants_history(&self) -> bool {
        self.0.wants_history()
    }

    async fn handle_batch(
        &self,
        store: &dyn ReactorStore,
        batch: &[Delivery],
        history: &[Message],
        now_ms: i64,
    ) -> BatchResult {
        self.0.handle_batch(store, batch, history, now_ms).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::es::Actor;
    use domain::es::topology::NodeKind;

    /// The declared topology agrees with the code it describes: command nodes are exactly the
    /// actors' commands (with their group), the actors' reactions are declared, and every
    /// event a command produces is one the board or a reaction knows.
    #[test]
    fn the_declared_topology_matches_the_actors() {
        let t = topology();
        let mut declared: Vec<(String, String)> = t
            .of(NodeKind::Command)
            .map(|n| (n.group_id.clone(), n.id.clone()))
            .collect();
        declared.sort();
        let mut actual: Vec<(String, String)> = Ride
            .commands()
            .into_iter()
            .map(|c| ("Ride".to_owned(), c.to_owned()))
            .chain(
                Pilot
                    .commands()
                    .into_iter()
                    .map(|c| ("Pilot".to_owned(), c.to_owned())),
            )
            .collect();
        actual.sort();
        assert_eq!(declared, actual);
        let mut reacted: Vec<String> = t
            .of(NodeKind::Automation)
            .filter(|n| n.group_id == "Ride")
            .flat_map(|n| n.consumes.clone())
            .collect();
        reacted.sort();
        let mut reactions: Vec<String> = Ride.reactions().into_iter().map(str::to_owned).collect();
        reactions.sort();
        assert_eq!(reacted, reactions);
        let board = t
            .of(NodeKind::ReadModel)
            .next()
            .map(|n| n.consumes.clone())
            .unwrap_or_default();
        for e in t.of(NodeKind::Event) {
            assert!(board.contains(&e.id), "the board follows {}", e.id);
        }
        assert!(
            t.to_mermaid()
                .contains("Event_ride_requested --> Automation_ride_requested_dispatcher_aut")
        );
    }
}
