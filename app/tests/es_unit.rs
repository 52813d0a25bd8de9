//! The unit of work (sourced's "a unit" examples) on the in-memory event store, with the
//! ride-dispatch actors and a few small test actors.

use std::sync::Arc;

use adapters::memory::MemoryStore;
use app::es::{Unit, UnitError, load};
use async_trait::async_trait;
use domain::es::dispatch::{
    AcceptRide, AssignPilot, GoOnline, Pilot, PilotAssigned, RequestRide, Ride, RideAccepted,
};
use domain::es::{
    Actor, ActorError, ActorInstance, Emit, Message, MessageError, MessageType, RegistrationError,
    SyncOp,
};
use ports::{
    Commit, EventStore, EventStoreError, EventStoreStats, Outbox, StoredMessage, StreamInfo,
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use uuid::Uuid;

const NOW: i64 = 1_700_000_000_000;

struct Fixture {
    store: Arc<MemoryStore>,
    events: Arc<dyn EventStore>,
}

fn fixture() -> Fixture {
    let store = Arc::new(MemoryStore::default());
    let events: Arc<dyn EventStore> = Arc::new(store.event_store());
    Fixture { store, events }
}

fn dispatch(events: &Arc<dyn EventStore>) -> Unit {
    Unit::new(Arc::clone(events))
        .with_actor(Ride)
        .and_then(|u| u.with_actor(Pilot))
        .unwrap()
}

fn request(ride: &str) -> Message {
    Message::build(
        ride,
        &RequestRide {
            rider_id: "u1".into(),
            pickup: "A".into(),
            dropoff: "B".into(),
        },
        NOW,
    )
    .unwrap()
}

fn online(pilot: &str) -> Message {
    Message::build(
        pilot,
        &GoOnline {
            name: "Amelia".into(),
        },
        NOW,
    )
    .unwrap()
}

fn assign(ride: &str, pilot: &str) -> Message {
    Message::build(
        ride,
        &AssignPilot {
            pilot_id: pilot.into(),
        },
        NOW,
    )
    .unwrap()
}

async fn stream(events: &Arc<dyn EventStore>, id: &str) -> Vec<Message> {
    events
        .read_stream(id, 0, None)
        .await
        .unwrap()
        .into_iter()
        .map(|s| s.message)
        .collect()
}

fn kinds(messages: &[Message]) -> Vec<&str> {
    messages.iter().map(Message::kind).collect()
}

#[tokio::test]
async fn assigning_a_pilot_runs_the_whole_chain_in_one_commit() {
    let f = fixture();
    let unit = dispatch(&f.events);
    unit.handle(online("pilot-7"), NOW).await.unwrap();
    unit.handle(request("ride-1"), NOW).await.unwrap();
    let staged_before = f.store.staged().await.unwrap();

    let mut meta = serde_json::Map::new();
    meta.insert("request_id".into(), json!("req-1"));
    let command = assign("ride-1", "pilot-7").with_metadata(meta);
    let out = unit.handle(command.clone(), NOW).await.unwrap();

    let stored: Vec<Message> = out.stored.iter().map(|s| s.message.clone()).collect();
    assert_eq!(
        kinds(&stored),
        vec![
            "ride.assign_pilot",
            "ride.pilot_assigned",
            "pilot.accept_ride",
            "pilot.ride_accepted"
        ],
        "the command, its event, the reaction's command and its event, breadth-first"
    );
    assert!(
        stored
            .iter()
            .all(|m| m.correlation_id() == command.id() && m.metadata()["request_id"] == "req-1"),
        "one correlation id and the metadata across the chain"
    );
    assert_eq!(
        stored[2].causation_id(),
        stored[1].id(),
        "caused by the event"
    );
    assert_eq!(
        out.events_for("Ride")
            .iter()
            .map(|m| m.decode::<PilotAssigned>().unwrap())
            .collect::<Vec<_>>(),
        vec![PilotAssigned {
            pilot_id: "pilot-7".into()
        }]
    );
    assert_eq!(
        out.events_for("Pilot")[0].decode::<RideAccepted>().unwrap(),
        RideAccepted {
            ride_id: "ride-1".into()
        }
    );
    assert_eq!(
        kinds(&stream(&f.events, "ride-1").await),
        vec![
            "ride.request",
            "ride.requested",
            "ride.assign_pilot",
            "ride.pilot_assigned"
        ]
    );
    assert_eq!(
        stream(&f.events, "pilot-7")
            .await
            .iter()
            .map(Message::seq)
            .collect::<Vec<_>>(),
        vec![1, 2, 3, 4],
        "commands count in seq"
    );
    assert_eq!(
        f.events.document("rides", "ride-1").await.unwrap(),
        Some(json!({"status": "assigned", "rider_id": "u1", "pilot_id": "pilot-7"})),
        "the sync ops were committed"
    );
    assert_eq!(
        f.events.document("pilots", "pilot-7").await.unwrap(),
        Some(json!({"online": true, "name": "Amelia", "active_ride": "ride-1"}))
    );
    assert_eq!(
        f.store.staged().await.unwrap(),
        staged_before + 4,
        "every stored message is staged in the outbox"
    );
    assert!(out.scheduled.is_empty());
}

#[tokio::test]
async fn a_busy_pilot_rolls_back_the_assignment() {
    let f = fixture();
    let unit = dispatch(&f.events);
    unit.handle(online("pilot-7"), NOW).await.unwrap();
    unit.handle(request("ride-1"), NOW).await.unwrap();
    unit.handle(request("ride-2"), NOW).await.unwrap();
    unit.handle(assign("ride-1", "pilot-7"), NOW).await.unwrap();
    let staged_before = f.store.staged().await.unwrap();
    let stats_before = f.events.stats().await.unwrap();

    let err = unit
        .handle(assign("ride-2", "pilot-7"), NOW)
        .await
        .unwrap_err();
    match &err {
        UnitError::Actor(ActorError::Domain { actor, message }) => {
            assert_eq!(*actor, "Pilot");
            assert_eq!(message, "pilot pilot-7 already has an active ride (ride-1)");
        }
        other => panic!("expected the pilot's refusal, got {other:?}"),
    }
    assert_eq!(
        kinds(&stream(&f.events, "ride-2").await),
        vec!["ride.request", "ride.requested"],
        "the ride's own event is rolled back with the pilot's refusal"
    );
    assert_eq!(f.events.stats().await.unwrap(), stats_before);
    assert_eq!(f.store.staged().await.unwrap(), staged_before);
    assert_eq!(
        f.events.document("rides", "ride-2").await.unwrap(),
        Some(json!({"status": "requested", "rider_id": "u1", "pilot_id": null})),
        "no sync op of a rolled-back unit"
    );
}

#[tokio::test]
async fn a_domain_error_of_the_first_actor_writes_nothing() {
    let f = fixture();
    let unit = dispatch(&f.events);
    let err = unit
        .handle(assign("ride-9", "pilot-7"), NOW)
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "ride ride-9 was not requested");
    assert_eq!(f.events.stats().await.unwrap(), EventStoreStats::default());
}

#[tokio::test]
async fn commands_for_actors_outside_the_unit_are_stored_for_later() {
    let f = fixture();
    let unit = Unit::new(Arc::clone(&f.events)).with_actor(Ride).unwrap();
    unit.handle(request("ride-1"), NOW).await.unwrap();
    let out = unit.handle(assign("ride-1", "pilot-7"), NOW).await.unwrap();
    let pilot = stream(&f.events, "pilot-7").await;
    assert_eq!(kinds(&pilot), vec!["pilot.accept_ride"]);
    assert_eq!(pilot[0].seq(), 1);
    assert_eq!(
        pilot[0].decode::<AcceptRide>().unwrap(),
        AcceptRide {
            ride_id: "ride-1".into()
        }
    );
    assert_eq!(pilot[0].metadata()["producer"], "Ride");
    assert!(out.events_for("Pilot").is_empty());
    assert_eq!(out.stored.len(), 3);
}

#[tokio::test]
async fn registration_refuses_two_deciders_of_one_command() {
    let f = fixture();
    let err = dispatch(&f.events).with_actor(Ride).unwrap_err();
    assert!(matches!(err, RegistrationError::DuplicateCommand { .. }));
    assert_eq!(
        err.to_string(),
        "ride.request is decided by both Ride and Ride"
    );
}

// ---- small test actors -------------------------------------------------------------------

macro_rules! payload {
    ($name:ident = $ty:literal) => {
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
        struct $name {
            n: i64,
        }
        impl MessageType for $name {
            const TYPE: &'static str = $ty;
        }
    };
}
payload!(Ping = "pp.ping");
payload!(Pinged = "pp.pinged");
payload!(Start = "fan.start");
payload!(Started = "fan.started");
payload!(Add = "counter.add");
payload!(Added = "counter.added");

#[derive(Debug, thiserror::Error)]
#[error(transparent)]
struct TestError(#[from] MessageError);

/// Pings itself forever: each `pp.pinged` sends another `pp.ping`.
struct PingPong;
impl Actor for PingPong {
    type State = ();
    type Error = TestError;
    fn name(&self) -> &'static str {
        "PingPong"
    }
    fn initial(&self, _: &str) {}
    fn commands(&self) -> Vec<&'static str> {
        vec![Ping::TYPE]
    }
    fn reactions(&self) -> Vec<&'static str> {
        vec![Pinged::TYPE]
    }
    fn decide(&self, _: &(), c: &Message) -> Result<Vec<Emit>, TestError> {
        Ok(vec![Emit::new(&Pinged {
            n: c.decode::<Ping>()?.n,
        })])
    }
    fn evolve(&self, _: &mut (), _: &Message) -> Result<(), MessageError> {
        Ok(())
    }
    fn react(&self, _: &(), e: &Message) -> Result<Vec<Message>, TestError> {
        let n = e.decode::<Pinged>()?.n;
        Ok(vec![Message::build(
            e.stream_id(),
            &Ping { n: n + 1 },
            e.created_at_ms(),
        )?])
    }
}

/// `fan.start` → `fan.started` → two `counter.add` to `counter-1` now, one in a minute.
struct Fan;
impl Actor for Fan {
    type State = ();
    type Error = TestError;
    fn name(&self) -> &'static str {
        "Fan"
    }
    fn initial(&self, _: &str) {}
    fn commands(&self) -> Vec<&'static str> {
        vec![Start::TYPE]
    }
    fn reactions(&self) -> Vec<&'static str> {
        vec![Started::TYPE]
    }
    fn decide(&self, _: &(), c: &Message) -> Result<Vec<Emit>, TestError> {
        Ok(vec![Emit::new(&Started {
            n: c.decode::<Start>()?.n,
        })])
    }
    fn evolve(&self, _: &mut (), _: &Message) -> Result<(), MessageError> {
        Ok(())
    }
    fn react(&self, _: &(), e: &Message) -> Result<Vec<Message>, TestError> {
        let at = e.created_at_ms();
        Ok(vec![
            Message::build("counter-1", &Add { n: 1 }, at)?,
            Message::build("counter-1", &Add { n: 10 }, at)?,
            Message::build("counter-1", &Add { n: 100 }, at)?.at(at + 60_000)?,
        ])
    }
}

/// Sums what it is told to add; keeps the total in a document.
struct Counter;
impl Actor for Counter {
    type State = i64;
    type Error = TestError;
    fn name(&self) -> &'static str {
        "Counter"
    }
    fn initial(&self, _: &str) -> i64 {
        0
    }
    fn commands(&self) -> Vec<&'static str> {
        vec![Add::TYPE]
    }
    fn decide(&self, _: &i64, c: &Message) -> Result<Vec<Emit>, TestError> {
        Ok(vec![Emit::new(&Added {
            n: c.decode::<Add>()?.n,
        })])
    }
    fn evolve(&self, s: &mut i64, m: &Message) -> Result<(), MessageError> {
        if m.is::<Added>() {
            *s += m.decode::<Added>()?.n;
        }
        Ok(())
    }
    fn sync(&self, s: &i64, _: &Message, _: &[Message]) -> Vec<SyncOp> {
        vec![SyncOp::put("counters", "counter-1", json!(*s))]
    }
}

#[tokio::test]
async fn an_endless_chain_stops_at_the_iteration_cap_and_writes_nothing() {
    let f = fixture();
    let unit = Unit::new(Arc::clone(&f.events))
        .with_actor(PingPong)
        .unwrap()
        .max_iterations(5);
    let ping = Message::build("pp-1", &Ping { n: 0 }, NOW).unwrap();
    let err = unit.handle(ping, NOW).await.unwrap_err();
    assert!(matches!(err, UnitError::TooManyIterations(5)));
    assert_eq!(err.to_string(), "Exceeded 5 iterations");
    assert_eq!(f.events.stats().await.unwrap().message_count, 0);
}

#[tokio::test]
async fn two_commands_for_one_stream_in_one_unit_get_distinct_seqs_and_scheduled_ones_wait() {
    // sourced's marked bug: two commands for one stream in one batch both took last + 1.
    let f = fixture();
    let unit = Unit::new(Arc::clone(&f.events))
        .with_actor(Fan)
        .and_then(|u| u.with_actor(Counter))
        .unwrap();
    let out = unit
        .handle(Message::build("fan-1", &Start { n: 0 }, NOW).unwrap(), NOW)
        .await
        .unwrap();
    let counter = stream(&f.events, "counter-1").await;
    assert_eq!(
        counter
            .iter()
            .map(|m| (m.kind(), m.seq()))
            .collect::<Vec<_>>(),
        vec![
            ("counter.add", 1),
            ("counter.added", 2),
            ("counter.add", 3),
            ("counter.added", 4)
        ]
    );
    assert_eq!(
        f.events.document("counters", "counter-1").await.unwrap(),
        Some(json!(11)),
        "the second command was decided on the state after the first"
    );
    assert_eq!(out.scheduled.len(), 1, "the command due in a minute waits");
    assert_eq!(out.scheduled[0].created_at_ms(), NOW + 60_000);
    assert_eq!(out.events_for("Counter").len(), 2);
}

#[tokio::test]
async fn load_catches_up_incrementally() {
    let f = fixture();
    let unit = dispatch(&f.events);
    unit.handle(request("ride-1"), NOW).await.unwrap();
    let mut ride = ActorInstance::new(&Ride, "ride-1");
    let first = load(f.events.as_ref(), &mut ride).await.unwrap();
    assert_eq!(first.len(), 2);
    assert_eq!(ride.seq(), 2);
    unit.handle(online("pilot-7"), NOW).await.unwrap();
    unit.handle(assign("ride-1", "pilot-7"), NOW).await.unwrap();
    let next = load(f.events.as_ref(), &mut ride).await.unwrap();
    assert_eq!(
        kinds(&next),
        vec!["ride.assign_pilot", "ride.pilot_assigned"],
        "only the new messages"
    );
    assert_eq!(ride.state().pilot_id.as_deref(), Some("pilot-7"));
    assert!(load(f.events.as_ref(), &mut ride).await.unwrap().is_empty());
}

/// The memory event store with a rival writer: just before the unit's commit, another
/// writer appends to the first stream the commit touches.
struct Rival {
    inner: Arc<dyn EventStore>,
}

#[async_trait]
impl EventStore for Rival {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn ping(&self) -> Result<(), EventStoreError> {
        self.inner.ping().await
    }
    async fn commit(&self, commit: Commit) -> Result<Vec<StoredMessage>, EventStoreError> {
        if let Some(first) = commit.appends.first() {
            let rival = Message::new("rival.wrote", first.stream_id.clone(), json!({}), NOW)
                .map_err(|e| EventStoreError::Other(e.to_string()))?;
            self.inner
                .append_next_to_stream(&first.stream_id, &[rival])
                .await?;
        }
        self.inner.commit(commit).await
    }
    async fn read_stream(
        &self,
        stream_id: &str,
        after: u64,
        upto: Option<u64>,
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        self.inner.read_stream(stream_id, after, upto).await
    }
    async fn read_correlation_batch(
        &self,
        message_id: Uuid,
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        self.inner.read_correlation_batch(message_id).await
    }
    async fn read_all(
        &self,
        after_global: u64,
        max: usize,
    ) -> Result<Vec<StoredMessage>, EventStoreError> {
        self.inner.read_all(after_global, max).await
    }
    async fn recent_streams(&self, limit: usize) -> Result<Vec<StreamInfo>, EventStoreError> {
        self.inner.recent_streams(limit).await
    }
    async fn stats(&self) -> Result<EventStoreStats, EventStoreError> {
        self.inner.stats().await
    }
    async fn document(&self, collection: &str, id: &str) -> Result<Option<Value>, EventStoreError> {
        self.inner.document(collection, id).await
    }
    async fn documents(&self, collection: &str) -> Result<Vec<(String, Value)>, EventStoreError> {
        self.inner.documents(collection).await
    }
}

#[tokio::test]
async fn a_concurrent_writer_makes_the_unit_conflict() {
    let f = fixture();
    dispatch(&f.events)
        .handle(request("ride-1"), NOW)
        .await
        .unwrap();
    let rival: Arc<dyn EventStore> = Arc::new(Rival {
        inner: Arc::clone(&f.events),
    });
    dispatch(&f.events)
        .handle(online("pilot-7"), NOW)
        .await
        .unwrap();
    let err = dispatch(&rival)
        .handle(assign("ride-1", "pilot-7"), NOW)
        .await
        .unwrap_err();
    match err {
        UnitError::Store(EventStoreError::Conflict {
            stream_id,
            expected,
            actual,
        }) => {
            assert_eq!(stream_id, "ride-1");
            assert_eq!((expected, actual), (2, 3));
        }
        other => panic!("expected a conflict, got {other:?}"),
    }
    assert_eq!(
        kinds(&stream(&f.events, "ride-1").await),
        vec!["ride.request", "ride.requested", "rival.wrote"],
        "only the rival's write"
    );
    assert_eq!(
        kinds(&stream(&f.events, "pilot-7").await),
        vec!["pilot.go_online", "pilot.went_online"],
        "the pilot's side of the unit is rolled back too"
    );
}
