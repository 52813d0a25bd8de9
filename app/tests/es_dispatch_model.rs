//! Ride dispatch under random command sequences, through the unit of work on the in-memory
//! event store: whatever the order (and whatever is refused), the cross-stream invariants
//! hold after every command.
//!
//! - a pilot's active ride and the ride's pilot agree both ways (so a pilot has at most one
//!   active ride and an active ride has exactly one pilot);
//! - a ride is never both completed and cancelled;
//! - every stream's seqs are 1..=n;
//! - every stored message is staged in the outbox exactly once;
//! - a refused command stores nothing.

use std::collections::BTreeMap;
use std::sync::Arc;

use adapters::memory::MemoryStore;
use app::es::{Unit, UnitError, load};
use domain::es::dispatch::{
    AssignPilot, CancelRide, CompleteRide, GoOffline, GoOnline, PickUp, Pilot, RequestRide, Ride,
    RideStatus,
};
use domain::es::{ActorInstance, Message};
use ports::{EventStore, Outbox};
use proptest::prelude::*;

const NOW: i64 = 1_700_000_000_000;
const PILOTS: usize = 3;
const RIDES: usize = 4;

#[derive(Debug, Clone)]
enum Op {
    Online(usize),
    Offline(usize),
    Request(usize),
    Assign(usize, usize),
    PickUp(usize),
    Complete(usize),
    Cancel(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..PILOTS).prop_map(Op::Online),
        (0..PILOTS).prop_map(Op::Offline),
        (0..RIDES).prop_map(Op::Request),
        (0..RIDES, 0..PILOTS).prop_map(|(r, p)| Op::Assign(r, p)),
        (0..RIDES).prop_map(Op::PickUp),
        (0..RIDES).prop_map(Op::Complete),
        (0..RIDES).prop_map(Op::Cancel),
    ]
}

fn pilot(p: usize) -> String {
    format!("pilot-{p}")
}
fn ride(r: usize) -> String {
    format!("ride-{r}")
}

fn message(op: &Op) -> Message {
    let m = match op {
        Op::Online(p) => Message::build(pilot(*p), &GoOnline { name: pilot(*p) }, NOW),
        Op::Offline(p) => Message::build(pilot(*p), &GoOffline {}, NOW),
        Op::Request(r) => Message::build(
            ride(*r),
            &RequestRide {
                rider_id: "u1".into(),
                pickup: "A".into(),
                dropoff: "B".into(),
            },
            NOW,
        ),
        Op::Assign(r, p) => Message::build(
            ride(*r),
            &AssignPilot {
                pilot_id: pilot(*p),
            },
            NOW,
        ),
        Op::PickUp(r) => Message::build(ride(*r), &PickUp {}, NOW),
        Op::Complete(r) => Message::build(ride(*r), &CompleteRide {}, NOW),
        Op::Cancel(r) => Message::build(ride(*r), &CancelRide { reason: "x".into() }, NOW),
    };
    m.unwrap()
}

async fn check_invariants(store: &Arc<MemoryStore>, events: &Arc<dyn EventStore>) {
    let mut active_of_pilot: BTreeMap<String, Option<String>> = BTreeMap::new();
    for p in 0..PILOTS {
        let mut i = ActorInstance::new(&Pilot, pilot(p));
        load(events.as_ref(), &mut i).await.unwrap();
        active_of_pilot.insert(pilot(p), i.state().active_ride.clone());
    }
    let mut pilot_of_active_ride: BTreeMap<String, String> = BTreeMap::new();
    for r in 0..RIDES {
        let mut i = ActorInstance::new(&Ride, ride(r));
        let history = load(events.as_ref(), &mut i).await.unwrap();
        let kinds: Vec<&str> = history.iter().map(Message::kind).collect();
        assert!(
            !(kinds.contains(&"ride.completed") && kinds.contains(&"ride.cancelled")),
            "{} was completed and cancelled: {kinds:?}",
            ride(r)
        );
        if matches!(
            i.state().status,
            RideStatus::Assigned | RideStatus::PickedUp
        ) {
            let p = i.state().pilot_id.clone().unwrap();
            pilot_of_active_ride.insert(ride(r), p);
        }
    }
    for (r, p) in &pilot_of_active_ride {
        assert_eq!(
            active_of_pilot.get(p).cloned().flatten().as_deref(),
            Some(r.as_str()),
            "{r} is driven by {p}, whose active ride must be {r}"
        );
    }
    for (p, r) in &active_of_pilot {
        if let Some(r) = r {
            assert_eq!(
                pilot_of_active_ride.get(r),
                Some(p),
                "{p}'s active ride {r} must be under way with {p}"
            );
        }
    }
    let all = events.read_all(0, 100_000).await.unwrap();
    let mut last: BTreeMap<String, u64> = BTreeMap::new();
    for s in &all {
        let prev = last.insert(s.message.stream_id().to_owned(), s.message.seq());
        assert_eq!(s.message.seq(), prev.unwrap_or(0) + 1, "contiguous seqs");
    }
    assert_eq!(
        store.staged().await.unwrap(),
        all.len() as u64,
        "every stored message is staged once"
    );
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn dispatch_invariants_hold_under_any_command_sequence(ops in proptest::collection::vec(op(), 1..40)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async {
            let store = Arc::new(MemoryStore::default());
            let events: Arc<dyn EventStore> = Arc::new(store.event_store());
            let unit = Unit::new(Arc::clone(&events))
                .with_actor(Ride)
                .and_then(|u| u.with_actor(Pilot))
                .unwrap();
            for op in &ops {
                let before = events.stats().await.unwrap();
                match unit.handle(message(op), NOW).await {
                    Ok(_) => {}
                    Err(UnitError::Actor(_)) => {
                        assert_eq!(
                            events.stats().await.unwrap(),
                            before,
                            "a refused {op:?} stored nothing"
                        );
                    }
                    Err(e) => panic!("{op:?}: unexpected {e}"),
                }
                check_invariants(&store, &events).await;
            }
        });
    }
}
