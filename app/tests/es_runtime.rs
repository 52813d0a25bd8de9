//! The background runtime (app::es::runtime) on real stores: a worker killed mid-batch has
//! its claim released after the TTL and the batch finished by another worker; two
//! housekeepers promote each scheduled message once; a poison message parks its stream
//! only; a state-stored projector rebuilds after a reset without repeating its reactions;
//! an actor's commands are decided in the background.
//!
//! Memory and SQLite always; Postgres through `RIDES_TEST_POSTGRES_URL` (a new schema per
//! test).

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use adapters::memory::MemoryStore;
use adapters::postgres::{PgOptions, PostgresStore};
use adapters::sqlite::SqliteStore;
use app::es::{Delivery, Handler, Projection, Projector, Reactor, Runtime, RuntimeConfig};
use async_trait::async_trait;
use domain::es::{Action, BatchResult, GroupSpec, Message};
use ports::{Clock, ReactorStore, ScheduledMessage, SystemClock};
use serde_json::{Value, json};

const EVT: &str = "tests.something_happened1";

fn now() -> i64 {
    SystemClock.now_ms()
}

fn evt(stream: &str, n: u64) -> Message {
    Message::new(EVT, stream, json!({"n": n}), now()).unwrap_or_else(|e| panic!("{e}"))
}

async fn sqlite() -> (Arc<dyn ReactorStore>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}", dir.path().join("rides.db").display());
    let store = SqliteStore::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    (Arc::new(store.event_store()), dir)
}

async fn postgres() -> Arc<dyn ReactorStore> {
    let url = std::env::var("RIDES_TEST_POSTGRES_URL").unwrap_or_else(|_| {
        panic!("this test needs Postgres: set RIDES_TEST_POSTGRES_URL (scripts/test.sh sets it)")
    });
    let schema = format!(
        "rides_test_{}_{}",
        now() / 1000,
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    );
    let options = PgOptions {
        schema: Some(schema),
        max_connections: 5,
        ..PgOptions::default()
    };
    let store = PostgresStore::connect(&url, options)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    Arc::new(store.event_store())
}

fn memory() -> Arc<dyn ReactorStore> {
    Arc::new(Arc::new(MemoryStore::default()).event_store())
}

async fn append(store: &Arc<dyn ReactorStore>, stream: &str, n: u64) -> Vec<Message> {
    let msgs: Vec<Message> = (1..=n).map(|i| evt(stream, i)).collect();
    store
        .append_next_to_stream(stream, &msgs)
        .await
        .unwrap_or_else(|e| panic!("append: {e}"));
    msgs
}

fn fast() -> RuntimeConfig {
    RuntimeConfig {
        workers: 1,
        catch_up: Duration::from_millis(100),
        claim_ttl: Duration::from_millis(400),
        heartbeat: Duration::from_millis(50),
        housekeeping: Duration::from_millis(50),
        max_drain_rounds: 10,
    }
}

/// Polls `f` until it holds, for at most 20 s.
async fn eventually(what: &str, mut f: impl AsyncFnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !f().await {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{what}: not within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// A reactor whose first batch never finishes (its worker "hangs" until killed); later
/// batches record their messages.
struct Hangs {
    calls: AtomicUsize,
    started: tokio::sync::Notify,
    done: Mutex<Vec<uuid::Uuid>>,
}

/// A [`Hangs`] shared with the test.
struct Shared(Arc<Hangs>);

#[async_trait]
impl Reactor for Shared {
    fn group(&self) -> GroupSpec {
        GroupSpec::new("hangs", &[EVT]).batch_size(10)
    }

    async fn handle_batch(
        &self,
        _store: &dyn ReactorStore,
        batch: &[Delivery],
        _history: &[Message],
        _now_ms: i64,
    ) -> BatchResult {
        if self.0.calls.fetch_add(1, Ordering::SeqCst) == 0 {
            self.0.started.notify_one();
            std::future::pending::<()>().await;
        }
        let ids: Vec<uuid::Uuid> = batch.iter().map(|d| d.message.id()).collect();
        if let Ok(mut done) = self.0.done.lock() {
            done.extend(ids.iter().copied());
        }
        BatchResult::all(ids.into_iter().map(|id| (id, vec![Action::Ok])).collect())
    }
}

async fn killed_worker_claim_is_released_and_finished(store: Arc<dyn ReactorStore>) {
    let msgs = append(&store, "ride-killed", 3).await;
    let hangs = Arc::new(Hangs {
        calls: AtomicUsize::new(0),
        started: tokio::sync::Notify::new(),
        done: Mutex::new(Vec::new()),
    });
    let rt = Arc::new(
        Runtime::new(Arc::clone(&store))
            .with_reactor(Shared(Arc::clone(&hangs)))
            .with_config(fast()),
    );
    rt.register().await.unwrap_or_else(|e| panic!("{e}"));
    let doomed = tokio::spawn(Arc::clone(&rt).run_worker("doomed".into()));
    tokio::time::timeout(Duration::from_secs(10), hangs.started.notified())
        .await
        .unwrap_or_else(|_| panic!("the first worker claimed the batch"));
    doomed.abort();
    let _ = doomed.await;
    // The claim is still held: nobody else gets the stream before the TTL.
    assert!(
        !rt.tick(0, "early").await.unwrap_or(true),
        "the dead worker's claim holds until the TTL"
    );
    let handle = Arc::clone(&rt)
        .spawn("rescuer")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    eventually("the batch finished by another worker", async || {
        hangs.done.lock().map(|d| d.len()).unwrap_or(0) == 3
    })
    .await;
    eventually("the batch acknowledged", async || {
        store.groups().await.is_ok_and(|g| g[0].lag == 0)
    })
    .await;
    handle.abort();
    let done = hangs.done.lock().map(|d| d.clone()).unwrap_or_default();
    assert_eq!(done, msgs.iter().map(Message::id).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_batch_is_finished_by_another_memory() {
    killed_worker_claim_is_released_and_finished(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_batch_is_finished_by_another_sqlite() {
    let (store, _dir) = sqlite().await;
    killed_worker_claim_is_released_and_finished(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_worker_s_batch_is_finished_by_another_postgres() {
    killed_worker_claim_is_released_and_finished(postgres().await).await;
}

async fn two_housekeepers_promote_each_message_once(store: Arc<dyn ReactorStore>) {
    let due: Vec<ScheduledMessage> = (0..250)
        .map(|i| ScheduledMessage {
            at_ms: now() - 1,
            message: evt(&format!("sched-{}", i % 5), i),
        })
        .collect();
    store.schedule(&due).await.unwrap_or_else(|e| panic!("{e}"));
    let rt = Arc::new(Runtime::new(Arc::clone(&store)).with_config(fast()));
    let (a, b) = tokio::join!(rt.housekeep(), rt.housekeep());
    let promoted = a.unwrap_or_else(|e| panic!("{e}")).0 + b.unwrap_or_else(|e| panic!("{e}")).0;
    assert_eq!(promoted, 250, "each scheduled message promoted once");
    let mut ids = BTreeSet::new();
    for s in 0..5 {
        let stream = store
            .read_stream(&format!("sched-{s}"), 0, None)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(stream.len(), 50);
        ids.extend(stream.iter().map(|m| m.message.id()));
    }
    assert_eq!(ids.len(), 250);
    assert_eq!(rt.housekeep().await.unwrap_or((9, 9)).0, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_housekeepers_memory() {
    two_housekeepers_promote_each_message_once(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_housekeepers_sqlite() {
    let (store, _dir) = sqlite().await;
    two_housekeepers_promote_each_message_once(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_housekeepers_postgres() {
    two_housekeepers_promote_each_message_once(postgres().await).await;
}

async fn a_poison_message_parks_its_stream_only(store: Arc<dyn ReactorStore>) {
    append(&store, "bad", 2).await;
    append(&store, "good", 3).await;
    let healed = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Vec::<(String, u64)>::new()));
    let (h, s) = (Arc::clone(&healed), Arc::clone(&seen));
    let handler = Handler::new(GroupSpec::new("poison", &[EVT]), move |m, _| {
        if m.stream_id() == "bad" && m.seq() == 2 && !h.load(Ordering::SeqCst) {
            return Err("poison".into());
        }
        if let Ok(mut s) = s.lock() {
            s.push((m.stream_id().to_owned(), m.seq()));
        }
        Ok(Vec::new())
    });
    let failures = Arc::new(AtomicUsize::new(0));
    let f = Arc::clone(&failures);
    let rt = Runtime::new(Arc::clone(&store))
        .with_reactor(handler)
        .on_failure(move |_| {
            f.fetch_add(1, Ordering::SeqCst);
        });
    rt.register().await.unwrap_or_else(|e| panic!("{e}"));
    rt.drain("w").await.unwrap_or_else(|e| panic!("{e}"));
    let got = seen.lock().map(|s| s.clone()).unwrap_or_default();
    assert_eq!(
        got,
        vec![
            ("bad".into(), 1),
            ("good".into(), 1),
            ("good".into(), 2),
            ("good".into(), 3)
        ],
        "bad's first message acknowledged (partial batch), good flows"
    );
    assert_eq!(failures.load(Ordering::SeqCst), 1);
    let g = &store.groups().await.unwrap_or_else(|e| panic!("{e}"))[0];
    assert_eq!(g.failing.len(), 1);
    assert!(g.failing[0].parked);
    assert_eq!(g.failing[0].stream_id, "bad");
    assert_eq!(g.failing[0].error.as_deref(), Some("poison"));
    assert_eq!(g.lag, 1);
    healed.store(true, Ordering::SeqCst);
    store
        .retry_stream("poison", "bad")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    rt.drain("w").await.unwrap_or_else(|e| panic!("{e}"));
    let g = &store.groups().await.unwrap_or_else(|e| panic!("{e}"))[0];
    assert!(g.failing.is_empty(), "a success clears the failure");
    assert_eq!(g.lag, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_parks_its_stream_only_memory() {
    a_poison_message_parks_its_stream_only(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_parks_its_stream_only_sqlite() {
    let (store, _dir) = sqlite().await;
    a_poison_message_parks_its_stream_only(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_message_parks_its_stream_only_postgres() {
    a_poison_message_parks_its_stream_only(postgres().await).await;
}

/// Counts a stream's messages and sums `n`; reacts once per message with a side effect.
struct Totals {
    reactions: Arc<AtomicUsize>,
}

impl Projection for Totals {
    fn group_id(&self) -> &str {
        "totals"
    }
    fn types(&self) -> Vec<&'static str> {
        vec![EVT]
    }
    fn collection(&self) -> &str {
        "totals"
    }
    fn initial(&self, _: &str) -> Value {
        json!({"count": 0, "sum": 0})
    }
    fn evolve(&self, doc: &mut Value, m: &Message) -> Result<(), String> {
        let n = m.payload()["n"].as_u64().ok_or("n missing")?;
        let count = doc["count"].as_u64().unwrap_or(0) + 1;
        let sum = doc["sum"].as_u64().unwrap_or(0) + n;
        *doc = json!({"count": count, "sum": sum});
        Ok(())
    }
    fn react(&self, _: &Value, _: &Message) -> Result<Vec<Message>, String> {
        self.reactions.fetch_add(1, Ordering::SeqCst);
        Ok(Vec::new())
    }
}

async fn projectors_rebuild_after_reset(store: Arc<dyn ReactorStore>) {
    append(&store, "p1", 4).await;
    append(&store, "p2", 2).await;
    let reactions = Arc::new(AtomicUsize::new(0));
    let rt = Runtime::new(Arc::clone(&store)).with_reactor(Projector::state_stored(Totals {
        reactions: Arc::clone(&reactions),
    }));
    rt.register().await.unwrap_or_else(|e| panic!("{e}"));
    rt.drain("w").await.unwrap_or_else(|e| panic!("{e}"));
    let before = store
        .documents("totals")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        before,
        vec![
            ("p1".into(), json!({"count": 4, "sum": 10})),
            ("p2".into(), json!({"count": 2, "sum": 3}))
        ]
    );
    assert_eq!(reactions.load(Ordering::SeqCst), 6);
    // Reset: the documents are rebuilt from scratch (start over from empty documents, as a
    // rebuild would), the reactions are not repeated.
    for (id, _) in &before {
        store
            .commit(ports::Commit {
                appends: Vec::new(),
                sync: vec![domain::es::SyncOp::Delete {
                    collection: "totals".into(),
                    id: id.clone(),
                }],
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    store
        .reset_group("totals")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    rt.drain("w").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        store
            .documents("totals")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        before
    );
    assert_eq!(reactions.load(Ordering::SeqCst), 6, "no reaction replayed");
    // Event-sourced: the same read model from the whole history.
    let es = Runtime::new(Arc::clone(&store)).with_reactor(Projector::event_sourced(Totals2));
    es.register().await.unwrap_or_else(|e| panic!("{e}"));
    es.drain("w").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        store
            .documents("totals2")
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        before
    );
}

/// [`Totals`] as an event-sourced projector.
struct Totals2;

impl Projection for Totals2 {
    fn group_id(&self) -> &str {
        "totals2"
    }
    fn types(&self) -> Vec<&'static str> {
        vec![EVT]
    }
    fn collection(&self) -> &str {
        "totals2"
    }
    fn initial(&self, _: &str) -> Value {
        json!({"count": 0, "sum": 0})
    }
    fn evolve(&self, doc: &mut Value, m: &Message) -> Result<(), String> {
        Totals {
            reactions: Arc::default(),
        }
        .evolve(doc, m)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projectors_rebuild_after_reset_memory() {
    projectors_rebuild_after_reset(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projectors_rebuild_after_reset_sqlite() {
    let (store, _dir) = sqlite().await;
    projectors_rebuild_after_reset(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn projectors_rebuild_after_reset_postgres() {
    projectors_rebuild_after_reset(postgres().await).await;
}

/// Workers are woken by commits (no poll needed): with a catch-up interval of a minute, a
/// message appended after the workers went idle is handled within seconds.
async fn workers_wake_on_commits(store: Arc<dyn ReactorStore>) {
    let seen = Arc::new(AtomicUsize::new(0));
    let s = Arc::clone(&seen);
    let handler = Handler::new(GroupSpec::new("wake", &[EVT]), move |_, _| {
        s.fetch_add(1, Ordering::SeqCst);
        Ok(Vec::new())
    });
    let config = RuntimeConfig {
        catch_up: Duration::from_secs(60),
        workers: 2,
        ..fast()
    };
    let rt = Arc::new(
        Runtime::new(Arc::clone(&store))
            .with_reactor(handler)
            .with_config(config),
    );
    let handle = Arc::clone(&rt)
        .spawn("wake")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        append(&store, &format!("w-{}", i % 4), 1).await;
    }
    eventually("woken by the commits", async || {
        seen.load(Ordering::SeqCst) == 20
    })
    .await;
    handle.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_wake_on_commits_memory() {
    workers_wake_on_commits(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_wake_on_commits_sqlite() {
    let (store, _dir) = sqlite().await;
    workers_wake_on_commits(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_wake_on_commits_postgres() {
    workers_wake_on_commits(postgres().await).await;
}

/// The dispatch actors as background reactors: two commands of one ride in one batch are
/// decided one after the other (the second sees the first's events: sourced's batch bug
/// fixed), the reaction sends the pilot its command, the pilot decides it, and the actors'
/// sync ops commit with the acknowledgements.
async fn actors_decide_and_react_in_the_background(store: Arc<dyn ReactorStore>) {
    use app::es::ActorReactor;
    use domain::es::MessageType;
    use domain::es::dispatch::{
        AssignPilot, GoOnline, Pilot, PilotAssigned, RequestRide, Ride, RideAccepted, RideRequested,
    };
    let t = now();
    let online = Message::build("pilot-1", &GoOnline { name: "Ann".into() }, t)
        .unwrap_or_else(|e| panic!("{e}"));
    let request = Message::build(
        "ride-1",
        &RequestRide {
            rider_id: "rider-1".into(),
            pickup: "a".into(),
            dropoff: "b".into(),
        },
        t,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let assign = Message::build(
        "ride-1",
        &AssignPilot {
            pilot_id: "pilot-1".into(),
        },
        t,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    store
        .append_next_to_stream("pilot-1", &[online])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    store
        .append_next_to_stream("ride-1", &[request, assign.clone()])
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let rt = Runtime::new(Arc::clone(&store))
        .with_reactor(ActorReactor::new(Ride))
        .with_reactor(ActorReactor::new(Pilot));
    rt.register().await.unwrap_or_else(|e| panic!("{e}"));
    rt.drain("w").await.unwrap_or_else(|e| panic!("{e}"));
    let kinds = |msgs: Vec<ports::StoredMessage>| -> Vec<String> {
        msgs.into_iter()
            .map(|m| m.message.kind().to_owned())
            .collect()
    };
    let ride = kinds(
        store
            .read_stream("ride-1", 0, None)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(
        ride,
        vec![
            RequestRide::TYPE,
            AssignPilot::TYPE,
            RideRequested::TYPE,
            PilotAssigned::TYPE
        ]
    );
    let pilot = kinds(
        store
            .read_stream("pilot-1", 0, None)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    );
    assert_eq!(pilot.last().map(String::as_str), Some(RideAccepted::TYPE));
    let accepted = store
        .read_stream("pilot-1", 0, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .pop()
        .unwrap_or_else(|| panic!("a pilot event"));
    assert_eq!(
        accepted.message.correlation_id(),
        assign.correlation_id(),
        "one correlation id across the chain AssignPilot → PilotAssigned → AcceptRide → \
         RideAccepted"
    );
    let groups = store.groups().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        groups.iter().all(|g| g.lag == 0 && g.failing.is_empty()),
        "{groups:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_decide_and_react_in_the_background_memory() {
    actors_decide_and_react_in_the_background(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_decide_and_react_in_the_background_sqlite() {
    let (store, _dir) = sqlite().await;
    actors_decide_and_react_in_the_background(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn actors_decide_and_react_in_the_background_postgres() {
    actors_decide_and_react_in_the_background(postgres().await).await;
}

/// The dispatch example end to end: rides handled by the unit of work (part 1), the
/// dispatch board built by `rides es work`'s runtime, and equal to a rebuild after a reset.
async fn the_dispatch_board_follows_the_unit_and_rebuilds(store: Arc<dyn ReactorStore>) {
    use app::es::Unit;
    use app::es::board::BOARD;
    use domain::es::dispatch::{
        AssignPilot, CompleteRide, GoOnline, PickUp, Pilot, RequestRide, Ride,
    };
    let events: Arc<dyn ports::EventStore> = store.clone();
    let unit = Unit::new(events)
        .with_actor(Ride)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_actor(Pilot)
        .unwrap_or_else(|e| panic!("{e}"));
    let t = now();
    let send = async |m: Message| {
        unit.handle(m, now())
            .await
            .unwrap_or_else(|e| panic!("unit: {e}"));
    };
    send(
        Message::build("pilot-1", &GoOnline { name: "Ann".into() }, t)
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    for ride in ["ride-1", "ride-2"] {
        send(
            Message::build(
                ride,
                &RequestRide {
                    rider_id: "r".into(),
                    pickup: "a".into(),
                    dropoff: "b".into(),
                },
                t,
            )
            .unwrap_or_else(|e| panic!("{e}")),
        )
        .await;
    }
    send(
        Message::build(
            "ride-1",
            &AssignPilot {
                pilot_id: "pilot-1".into(),
            },
            t,
        )
        .unwrap_or_else(|e| panic!("{e}")),
    )
    .await;
    send(Message::build("ride-1", &PickUp {}, t).unwrap_or_else(|e| panic!("{e}"))).await;
    send(Message::build("ride-1", &CompleteRide {}, t).unwrap_or_else(|e| panic!("{e}"))).await;
    let rt = app::es::cli::runtime(Arc::clone(&store), fast());
    rt.register().await.unwrap_or_else(|e| panic!("{e}"));
    rt.drain("w").await.unwrap_or_else(|e| panic!("{e}"));
    let board = store
        .documents(BOARD)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        board,
        vec![
            (
                "pilot-1".into(),
                json!({"kind": "pilot", "status": "online", "name": "Ann", "ride_id": null})
            ),
            (
                "ride-1".into(),
                json!({"kind": "ride", "status": "completed", "pilot_id": "pilot-1"})
            ),
            (
                "ride-2".into(),
                json!({"kind": "ride", "status": "requested"})
            ),
        ]
    );
    for (id, _) in &board {
        store
            .commit(ports::Commit {
                appends: Vec::new(),
                sync: vec![domain::es::SyncOp::Delete {
                    collection: BOARD.into(),
                    id: id.clone(),
                }],
            })
            .await
            .unwrap_or_else(|e| panic!("{e}"));
    }
    store
        .reset_group("dispatch-board")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    rt.drain("w").await.unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        store
            .documents(BOARD)
            .await
            .unwrap_or_else(|e| panic!("{e}")),
        board,
        "the board equals a rebuild from the events"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatch_board_sqlite() {
    let (store, _dir) = sqlite().await;
    the_dispatch_board_follows_the_unit_and_rebuilds(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dispatch_board_postgres() {
    the_dispatch_board_follows_the_unit_and_rebuilds(postgres().await).await;
}

/// Records every seq it folds in, per stream.
struct Seqs;

impl Projection for Seqs {
    fn group_id(&self) -> &str {
        "seqs"
    }
    fn types(&self) -> Vec<&'static str> {
        vec![EVT]
    }
    fn collection(&self) -> &str {
        "seqs"
    }
    fn initial(&self, _: &str) -> Value {
        json!([])
    }
    fn evolve(&self, doc: &mut Value, m: &Message) -> Result<(), String> {
        doc.as_array_mut().ok_or("not a list")?.push(json!(m.seq()));
        Ok(())
    }
}

/// sourced's concurrency case: 3 workers and a state-stored projector while two streams
/// (100 and 120 events) are appended interleaved: each stream's document holds its seqs
/// exactly once, in order (exactly-once effects under at-least-once delivery).
async fn three_workers_project_each_event_once(store: Arc<dyn ReactorStore>) {
    let config = RuntimeConfig {
        workers: 3,
        ..fast()
    };
    let rt = Arc::new(
        Runtime::new(Arc::clone(&store))
            .with_reactor(Projector::state_stored(Seqs))
            .with_config(config),
    );
    let handle = Arc::clone(&rt)
        .spawn("conc")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let writer = |stream: &'static str, n: u64| {
        let store = Arc::clone(&store);
        tokio::spawn(async move {
            for i in 1..=n {
                store
                    .append_next_to_stream(stream, &[evt(stream, i)])
                    .await
                    .unwrap_or_else(|e| panic!("append: {e}"));
            }
        })
    };
    let (a, b) = (writer("stream1", 100), writer("stream2", 120));
    a.await.unwrap_or_else(|e| panic!("{e}"));
    b.await.unwrap_or_else(|e| panic!("{e}"));
    eventually("every event projected", async || {
        store.groups().await.is_ok_and(|g| g[0].lag == 0)
    })
    .await;
    handle.abort();
    for (stream, n) in [("stream1", 100_u64), ("stream2", 120)] {
        let doc = store
            .document("seqs", stream)
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(doc, Some(json!((1..=n).collect::<Vec<_>>())), "{stream}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_project_each_event_once_memory() {
    three_workers_project_each_event_once(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_project_each_event_once_sqlite() {
    let (store, _dir) = sqlite().await;
    three_workers_project_each_event_once(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_project_each_event_once_postgres() {
    three_workers_project_each_event_once(postgres().await).await;
}

/// The unit of work with the runtime's store: the dispatch actors decide synchronously and
/// acknowledge what they handled, so the same actors running in the background find nothing
/// to redo; a command the unit schedules is stored, promoted by the housekeeper when due,
/// and then decided in the background.
async fn the_unit_acknowledges_and_schedules(store: Arc<dyn ReactorStore>) {
    use app::es::{ActorReactor, Unit};
    use domain::es::MessageType;
    use domain::es::dispatch::{CancelRide, GoOnline, Pilot, RequestRide, Ride, RideCancelled};
    let rt = Runtime::new(Arc::clone(&store))
        .with_reactor(ActorReactor::new(Ride))
        .with_reactor(ActorReactor::new(Pilot));
    rt.register().await.unwrap_or_else(|e| panic!("{e}"));
    let unit = Unit::with_runtime(Arc::clone(&store))
        .with_actor(Ride)
        .unwrap_or_else(|e| panic!("{e}"))
        .with_actor(Pilot)
        .unwrap_or_else(|e| panic!("{e}"));
    let t = now();
    for m in [
        Message::build("pilot-1", &GoOnline { name: "Ann".into() }, t),
        Message::build(
            "ride-1",
            &RequestRide {
                rider_id: "r".into(),
                pickup: "a".into(),
                dropoff: "b".into(),
            },
            t,
        ),
    ] {
        unit.handle(m.unwrap_or_else(|e| panic!("{e}")), now())
            .await
            .unwrap_or_else(|e| panic!("unit: {e}"));
    }
    let groups = store.groups().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(
        groups.iter().all(|g| g.lag == 0),
        "the unit acknowledged what it handled: {groups:?}"
    );
    assert_eq!(rt.drain("w").await.unwrap_or(9), 0, "nothing to redo");
    // A command due in 300 ms, through the unit: stored for later, not in the stream yet.
    let cancel = Message::build(
        "ride-1",
        &CancelRide {
            reason: "timeout".into(),
        },
        now(),
    )
    .and_then(|m| m.at(now() + 300))
    .unwrap_or_else(|e| panic!("{e}"));
    let out = unit
        .handle(cancel.clone(), now())
        .await
        .unwrap_or_else(|e| panic!("unit: {e}"));
    assert_eq!(out.scheduled.len(), 1);
    assert!(out.stored.is_empty());
    tokio::time::sleep(Duration::from_millis(350)).await;
    rt.drain("w").await.unwrap_or_else(|e| panic!("{e}"));
    let ride = store
        .read_stream("ride-1", 0, None)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let last = &ride.last().unwrap_or_else(|| panic!("messages")).message;
    assert_eq!(
        last.kind(),
        RideCancelled::TYPE,
        "decided in the background"
    );
    assert_eq!(last.correlation_id(), cancel.correlation_id());
    assert!(
        ride.iter().any(|m| m.message.id() == cancel.id()),
        "promoted with its id"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unit_acknowledges_and_schedules_memory() {
    the_unit_acknowledges_and_schedules(memory()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unit_acknowledges_and_schedules_sqlite() {
    let (store, _dir) = sqlite().await;
    the_unit_acknowledges_and_schedules(store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_unit_acknowledges_and_schedules_postgres() {
    the_unit_acknowledges_and_schedules(postgres().await).await;
}
