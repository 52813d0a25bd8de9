//! Scenarios for the consumer-store contract ([`crate::ConsumerStore`]).
//!
//! The consumer store is optimistic: every save names the version it read, so two processes
//! running one consumer name can never both commit a batch. A save also carries the runtime's
//! [`Cursor`], changes to the consumer's dead-letter list, and optionally the lease it is
//! fenced by; all of it commits together or not at all. Lease scenarios drive time through
//! the `now_ms` arguments (no sleeping).

use std::collections::BTreeMap;
use std::sync::Arc;

use domain::{DistanceState, LogRecord, Marks};

use super::StoreFactory;
use super::fixtures::{now_ms, rides, unique, within};
use crate::{
    Checkpoint, ConsumerStore, ConsumerStoreError, Cursor, Lease, Parked, Position, Save, ToPark,
};

async fn load(consumers: &Arc<dyn ConsumerStore>, name: &str) -> Option<Checkpoint> {
    within("consumer load", consumers.load(name))
        .await
        .unwrap_or_else(|e| panic!("load({name}) failed: {e}"))
}

async fn register(consumers: &Arc<dyn ConsumerStore>, name: &str) {
    within("consumer register", consumers.register(name))
        .await
        .unwrap_or_else(|e| panic!("register({name}) failed: {e}"));
}

async fn save(
    consumers: &Arc<dyn ConsumerStore>,
    name: &str,
    save: &Save<'_>,
) -> Result<u64, ConsumerStoreError> {
    within("consumer save", consumers.save(name, save)).await
}

/// A save with nothing but position, default cursor and state.
async fn save_plain(
    consumers: &Arc<dyn ConsumerStore>,
    name: &str,
    expected_version: u64,
    position: &Position,
    state: &serde_json::Value,
    now_ms: i64,
) -> Result<u64, ConsumerStoreError> {
    let cursor = Cursor::default();
    save(
        consumers,
        name,
        &Save::new(expected_version, position, &cursor, state, now_ms),
    )
    .await
}

/// A folded state as the distance consumer saves it.
fn state(rides: u64) -> serde_json::Value {
    let s = DistanceState {
        rides,
        distance_mm: rides * 1_500,
        ..DistanceState::default()
    };
    serde_json::to_value(s).unwrap_or_default()
}

/// Rule: `register` creates a consumer at [`Position::start`] with version 0 and never saved;
/// registering again (before or after a save) changes nothing.
/// Preconditions: a fresh store.
pub async fn register_is_idempotent_and_starts_at_start(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let name = unique("consumer");
    assert_eq!(
        load(c, &name).await,
        None,
        "an unknown consumer loads as None"
    );
    register(c, &name).await;
    let cp = load(c, &name)
        .await
        .unwrap_or_else(|| panic!("a registered consumer must load"));
    assert_eq!(
        cp,
        Checkpoint::registered(),
        "a registered consumer starts at start, with the default cursor, a null state, \
         version 0 and updated_at_ms 0"
    );
    register(c, &name).await;
    assert_eq!(
        load(c, &name).await,
        Some(cp),
        "registering twice changed the consumer"
    );

    let pos = Position::new("contract-position-3");
    save_plain(c, &name, 0, &pos, &state(3), now_ms())
        .await
        .unwrap_or_else(|e| panic!("save after register failed: {e}"));
    let saved = load(c, &name).await;
    register(c, &name).await;
    assert_eq!(
        load(c, &name).await,
        saved,
        "register must leave a saved consumer unchanged"
    );
}

/// Rule: `save` stores position, cursor and state together and returns the next version;
/// `load` returns exactly what was saved. A consumer never registered can be saved with
/// version 0.
/// Preconditions: a fresh store.
pub async fn save_then_load(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let name = unique("consumer");
    register(c, &name).await;
    let now = now_ms();
    let pos = Position::new("contract-position-42");
    let v = save_plain(c, &name, 0, &pos, &state(2), now)
        .await
        .unwrap_or_else(|e| panic!("save with the loaded version must succeed: {e}"));
    assert_eq!(v, 1, "the first save returns version 1");
    assert_eq!(
        load(c, &name).await,
        Some(Checkpoint {
            position: pos,
            cursor: Cursor::default(),
            state: state(2),
            version: 1,
            updated_at_ms: now,
        }),
        "load must return the saved position, cursor, state and version"
    );
    let pos2 = Position::new("contract-position-43");
    let v2 = save_plain(c, &name, 1, &pos2, &state(5), now + 1)
        .await
        .unwrap_or_else(|e| panic!("a second save with version 1 must succeed: {e}"));
    assert_eq!(v2, 2, "versions increment with every save");
    let cp = load(c, &name)
        .await
        .unwrap_or_else(|| panic!("consumer vanished"));
    assert_eq!((cp.position, cp.state, cp.version), (pos2, state(5), 2));

    let fresh = unique("unregistered");
    let v = save_plain(c, &fresh, 0, &Position::new("p-1"), &state(1), now)
        .await
        .unwrap_or_else(|e| panic!("saving a new consumer with version 0 must succeed: {e}"));
    assert_eq!(v, 1, "the first save of a new consumer returns version 1");
    let never = unique("never-saved");
    let r = save_plain(c, &never, 3, &Position::new("p-1"), &state(1), now).await;
    assert!(
        matches!(r, Err(ConsumerStoreError::Conflict(_))),
        "saving an unknown consumer with version 3 must be a Conflict, got {r:?}"
    );
    assert_eq!(load(c, &never).await, None, "a conflicting save created it");
}

/// Rule: `save` with a version other than the stored one fails with
/// [`ConsumerStoreError::Conflict`] and changes nothing; of two concurrent saves from the same
/// version exactly one wins.
/// Preconditions: a fresh store.
pub async fn save_with_a_stale_version_conflicts_and_changes_nothing(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let name = unique("consumer");
    register(c, &name).await;
    let now = now_ms();
    save_plain(c, &name, 0, &Position::new("pos-1"), &state(1), now)
        .await
        .unwrap_or_else(|e| panic!("first save failed: {e}"));
    let saved = load(c, &name).await;
    for stale in [0, 5] {
        let r = save_plain(c, &name, stale, &Position::new("pos-x"), &state(9), now + 1).await;
        assert!(
            matches!(r, Err(ConsumerStoreError::Conflict(_))),
            "save with stale version {stale} must be a Conflict, got {r:?}"
        );
        assert_eq!(
            load(c, &name).await,
            saved,
            "a conflicting save changed the consumer"
        );
    }

    let mut racers = Vec::new();
    for i in 0..2u64 {
        let c = Arc::clone(c);
        let name = name.clone();
        racers.push(tokio::spawn(async move {
            let (pos, st, cursor) = (
                Position::new(format!("race-{i}")),
                state(10 + i),
                Cursor::default(),
            );
            c.save(&name, &Save::new(1, &pos, &cursor, &st, now + 2))
                .await
        }));
    }
    let mut wins = 0;
    for r in racers {
        match within("a concurrent save", r).await {
            Ok(Ok(v)) => {
                assert_eq!(v, 2, "the winning save returns version 2");
                wins += 1;
            }
            Ok(Err(ConsumerStoreError::Conflict(_))) => {}
            other => panic!("a losing save must be a Conflict, got {other:?}"),
        }
    }
    assert_eq!(
        wins, 1,
        "two processes with one consumer name must never both win"
    );
}

/// Rule: `list` returns every registered consumer, by name, with its checkpoint.
/// Preconditions: a fresh store.
pub async fn list_returns_every_registered_consumer(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let names: Vec<String> = (0..3).map(|i| unique(&format!("list{i}"))).collect();
    for n in &names {
        register(c, n).await;
    }
    let (pos, cursor, st) = (Position::new("p-9"), cursor(), state(4));
    save(c, &names[1], &Save::new(0, &pos, &cursor, &st, now_ms()))
        .await
        .unwrap_or_else(|e| panic!("save failed: {e}"));
    let listed: BTreeMap<String, Checkpoint> = within("consumer list", c.list())
        .await
        .unwrap_or_else(|e| panic!("list failed: {e}"))
        .into_iter()
        .collect();
    let mut expected: Vec<&String> = names.iter().collect();
    expected.sort();
    assert_eq!(
        listed.keys().collect::<Vec<_>>(),
        expected,
        "list must return exactly the registered consumers"
    );
    for n in &names {
        assert_eq!(
            listed.get(n).cloned(),
            load(c, n).await,
            "list must return each consumer's checkpoint as load does"
        );
    }
    assert_eq!(
        listed.get(&names[1]).map(|cp| &cp.cursor),
        Some(&cursor),
        "list must return the saved cursor"
    );
}

/// A cursor with every field set, as a consumer that followed a cutover saves it.
fn cursor() -> Cursor {
    Cursor {
        kind: Some("distance".into()),
        log_url: Some("kafka://broker-a:9092/rides-v2".into()),
        sealed_to: Some("redis://cache:6379/0?stream=rides-v3".into()),
        marks: Marks {
            high_water: [
                ("pg-0a1b2c3d/0".to_owned(), 41),
                ("pg-0a1b2c3d/2".to_owned(), 7),
            ]
            .into_iter()
            .collect(),
            floors: [
                ("sqlite-9f8e7d6c".to_owned(), 1_234),
                ("pg-0a1b2c3d".to_owned(), u64::from(u32::MAX) + 5),
            ]
            .into_iter()
            .collect(),
        },
        duplicates: 17,
        gaps: vec![
            domain::Gap {
                producer: "pg-0a1b2c3d".into(),
                lane: 0,
                from_seq: 30,
                to_seq: Some(35),
                detected_at_ms: 1_700_000_000_000,
            },
            domain::Gap {
                producer: "pg-0a1b2c3d".into(),
                lane: 2,
                from_seq: 8,
                to_seq: None,
                detected_at_ms: 1_700_000_000_001,
            },
        ],
    }
}

/// Rule: the cursor round-trips exactly (log URL, pending seal, marks and duplicates), through
/// `load`, `list`, a later save, and a reopen of the store.
/// Preconditions: a fresh store.
pub async fn cursor_round_trips(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let name = unique("cursor");
    let (pos, full, st) = (Position::new("cursor-pos-1"), cursor(), state(2));
    save(
        &sut.consumers,
        &name,
        &Save::new(0, &pos, &full, &st, now_ms()),
    )
    .await
    .unwrap_or_else(|e| panic!("save with a full cursor failed: {e}"));
    let cp = load(&sut.consumers, &name)
        .await
        .unwrap_or_else(|| panic!("the saved consumer must load"));
    assert_eq!(cp.cursor, full, "load must return the saved cursor exactly");
    assert_eq!(cp.state, st, "the state is kept beside the cursor");

    // Moving on to a new log: the seal is consumed and the marks collapse into floors.
    let mut moved = full.clone();
    moved.log_url = moved.sealed_to.take();
    moved.marks.start_new_log();
    let pos2 = Position::start();
    save(
        &sut.consumers,
        &name,
        &Save::new(1, &pos2, &moved, &st, now_ms()),
    )
    .await
    .unwrap_or_else(|e| panic!("second save failed: {e}"));
    let cp = load(&sut.consumers, &name)
        .await
        .unwrap_or_else(|| panic!("consumer vanished"));
    assert_eq!(
        (&cp.position, &cp.cursor),
        (&pos2, &moved),
        "a later save replaces the cursor (no field of the old one survives)"
    );

    let Some(sut) = f.reopen(sut).await else {
        return;
    };
    assert_eq!(
        load(&sut.consumers, &name).await.map(|cp| cp.cursor),
        Some(moved),
        "the cursor must survive a reopen"
    );
}

/// `n` records to park, one per lane `0..n`, with a payload whose float must round-trip.
fn to_park(first_seq: u64, n: u64) -> Vec<ToPark> {
    rides(&unique("producer"), first_seq, n)
        .into_iter()
        .zip(0u32..)
        .map(|(mut record, lane)| {
            // A 17-digit coordinate: JSON stores must keep it exactly.
            record.payload["pickup_lat"] = serde_json::from_str("37.760634058469556")
                .unwrap_or_else(|e| panic!("a float literal: {e}"));
            ToPark {
                lane,
                record,
                error: format!("handler failed on seq {first_seq} + {lane}: \"quoted\" ü"),
            }
        })
        .collect()
}

async fn parked(consumers: &Arc<dyn ConsumerStore>, name: &str) -> Vec<Parked> {
    within("consumer parked", consumers.parked(name))
        .await
        .unwrap_or_else(|e| panic!("parked({name}) failed: {e}"))
}

/// What a parked list holds, without the store's ids.
fn contents(list: &[Parked]) -> Vec<(u32, LogRecord, String, i64)> {
    list.iter()
        .map(|p| (p.lane, p.record.clone(), p.error.clone(), p.parked_at_ms))
        .collect()
}

fn expected_contents(parks: &[ToPark], now: i64) -> Vec<(u32, LogRecord, String, i64)> {
    parks
        .iter()
        .map(|p| (p.lane, p.record.clone(), p.error.clone(), now))
        .collect()
}

/// Rule: records parked by a save are stored with that save and listed by `parked` oldest
/// first, each with its lane, the record intact, the error and the save's time; ids are
/// distinct and grow. Another consumer's list is separate.
/// Preconditions: a fresh store.
pub async fn park_and_save_are_atomic_and_parked_is_oldest_first(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let (name, other) = (unique("parking"), unique("other"));
    register(c, &name).await;
    register(c, &other).await;
    assert!(
        parked(c, &name).await.is_empty(),
        "a new consumer has no parked records"
    );
    let (first, second) = (to_park(10, 2), to_park(20, 1));
    let now = now_ms();
    let (pos, cur, st) = (Position::new("park-1"), cursor(), state(1));
    let v = save(
        c,
        &name,
        &Save {
            park: &first,
            ..Save::new(0, &pos, &cur, &st, now)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("a save that parks must succeed: {e}"));
    assert_eq!(v, 1, "a save that parks is an ordinary save");
    let cp = load(c, &name)
        .await
        .unwrap_or_else(|| panic!("consumer vanished"));
    assert_eq!(
        (cp.position, cp.cursor, cp.version),
        (pos, cur.clone(), 1),
        "the save that parked wrote its checkpoint"
    );
    assert_eq!(
        contents(&parked(c, &name).await),
        expected_contents(&first, now),
        "parked must return what the save parked"
    );

    let pos2 = Position::new("park-2");
    save(
        c,
        &name,
        &Save {
            park: &second,
            ..Save::new(1, &pos2, &cur, &st, now + 5)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("a second save that parks must succeed: {e}"));
    let list = parked(c, &name).await;
    let mut expected = expected_contents(&first, now);
    expected.extend(expected_contents(&second, now + 5));
    assert_eq!(
        contents(&list),
        expected,
        "parked must list every parked record, oldest first"
    );
    assert!(
        list.windows(2).all(|w| w[0].id < w[1].id),
        "parked ids must be distinct and grow: {:?}",
        list.iter().map(|p| p.id).collect::<Vec<_>>()
    );
    assert!(
        parked(c, &other).await.is_empty(),
        "parking for one consumer must not show in another's list"
    );
}

/// Rule: a save that unparks ids drops exactly those records of this consumer (ids of another
/// consumer's records, or unknown ids, are left alone), in the same save.
/// Preconditions: a fresh store.
pub async fn unpark_in_a_save_drops_exactly_those_ids(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let (name, other) = (unique("unpark"), unique("other"));
    let now = now_ms();
    let (pos, cur, st) = (Position::new("u-1"), Cursor::default(), state(1));
    let (mine, theirs) = (to_park(1, 3), to_park(100, 1));
    for (n, parks) in [(&name, &mine), (&other, &theirs)] {
        save(
            c,
            n,
            &Save {
                park: parks,
                ..Save::new(0, &pos, &cur, &st, now)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("parking save failed: {e}"));
    }
    let before = parked(c, &name).await;
    let their_list = parked(c, &other).await;
    assert_eq!(before.len(), 3, "three records were parked");
    let unknown = before
        .iter()
        .chain(&their_list)
        .map(|p| p.id)
        .max()
        .unwrap_or(0)
        + 1_000;
    let unpark = [before[1].id, their_list[0].id, unknown];
    let pos2 = Position::new("u-2");
    save(
        c,
        &name,
        &Save {
            unpark: &unpark,
            ..Save::new(1, &pos2, &cur, &st, now + 1)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("a save that unparks must succeed: {e}"));
    assert_eq!(
        parked(c, &name).await,
        vec![before[0].clone(), before[2].clone()],
        "unpark must drop exactly the named records of this consumer"
    );
    assert_eq!(
        parked(c, &other).await,
        their_list,
        "unpark must never drop another consumer's records"
    );
    assert_eq!(
        load(c, &name).await.map(|cp| (cp.position, cp.version)),
        Some((pos2, 2)),
        "the unparking save wrote its checkpoint"
    );
}

/// Rule: a save that fails with Conflict parks nothing and unparks nothing.
/// Preconditions: a fresh store.
pub async fn a_conflicting_save_parks_nothing(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let name = unique("conflict-park");
    let now = now_ms();
    let (pos, cur, st) = (Position::new("c-1"), Cursor::default(), state(1));
    let first = to_park(1, 2);
    save(
        c,
        &name,
        &Save {
            park: &first,
            ..Save::new(0, &pos, &cur, &st, now)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("parking save failed: {e}"));
    let before_list = parked(c, &name).await;
    let before = load(c, &name).await;
    let more = to_park(50, 2);
    let unpark = [before_list[0].id];
    let (pos2, st2) = (Position::new("c-2"), state(2));
    let r = save(
        c,
        &name,
        &Save {
            park: &more,
            unpark: &unpark,
            ..Save::new(0, &pos2, &cursor(), &st2, now + 1)
        },
    )
    .await;
    assert!(
        matches!(r, Err(ConsumerStoreError::Conflict(_))),
        "a save with a stale version must be a Conflict, got {r:?}"
    );
    assert_eq!(
        parked(c, &name).await,
        before_list,
        "a conflicting save must neither park nor unpark"
    );
    assert_eq!(
        load(c, &name).await,
        before,
        "a conflicting save changed the consumer"
    );
}

/// Rule: `remove` deregisters a consumer: it no longer loads nor lists, its dead-letter list
/// is gone, and it returns whether the consumer existed. Other consumers are untouched; the
/// name can be registered again from scratch.
/// Preconditions: a fresh store.
pub async fn remove_deregisters_and_drops_parked_records(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let (name, other) = (unique("removed"), unique("kept"));
    let now = now_ms();
    let (pos, cur, st) = (Position::new("r-1"), cursor(), state(3));
    let parks = to_park(1, 2);
    for n in [&name, &other] {
        save(
            c,
            n,
            &Save {
                park: &parks,
                ..Save::new(0, &pos, &cur, &st, now)
            },
        )
        .await
        .unwrap_or_else(|e| panic!("save failed: {e}"));
    }
    let kept = (load(c, &other).await, parked(c, &other).await);
    let removed = within("consumer remove", c.remove(&name))
        .await
        .unwrap_or_else(|e| panic!("remove failed: {e}"));
    assert!(removed, "remove of an existing consumer must return true");
    assert_eq!(
        load(c, &name).await,
        None,
        "a removed consumer must not load"
    );
    assert!(
        parked(c, &name).await.is_empty(),
        "remove must drop the consumer's parked records"
    );
    let names: Vec<String> = within("consumer list", c.list())
        .await
        .unwrap_or_else(|e| panic!("list failed: {e}"))
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    assert_eq!(
        names,
        vec![other.clone()],
        "a removed consumer must not list"
    );
    assert_eq!(
        (load(c, &other).await, parked(c, &other).await),
        kept,
        "remove must leave other consumers alone"
    );
    let again = within("consumer remove", c.remove(&name))
        .await
        .unwrap_or_else(|e| panic!("remove failed: {e}"));
    assert!(!again, "remove of an unknown consumer must return false");

    register(c, &name).await;
    assert_eq!(
        load(c, &name).await,
        Some(Checkpoint::registered()),
        "a removed name registers again from scratch"
    );
}

async fn acquire(
    consumers: &Arc<dyn ConsumerStore>,
    scope: &str,
    holder: &str,
    ttl_ms: i64,
    now_ms: i64,
) -> Option<Lease> {
    within(
        "acquire_lease",
        consumers.acquire_lease(scope, holder, ttl_ms, now_ms),
    )
    .await
    .unwrap_or_else(|e| panic!("acquire_lease({scope}, {holder}) failed: {e}"))
}

async fn leases(consumers: &Arc<dyn ConsumerStore>) -> Vec<Lease> {
    within("leases", consumers.leases())
        .await
        .unwrap_or_else(|e| panic!("leases failed: {e}"))
}

/// The manual clock the lease scenarios start at (ms).
const T0: i64 = 1_700_000_000_000;
/// The lease TTL of the lease scenarios (ms).
const TTL: i64 = 5_000;

/// Rule: a free scope is granted with epoch 1 until `now + ttl`; once that time has come
/// (`expires_at_ms <= now`) another holder gets it with a higher epoch. `leases` lists every
/// scope.
/// Preconditions: a fresh store.
pub async fn a_lease_expires_and_another_holder_gets_a_higher_epoch(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let (scope, other_scope) = (unique("scope"), unique("scope"));
    let a = acquire(c, &scope, "holder-a", TTL, T0)
        .await
        .unwrap_or_else(|| panic!("a free scope must be granted"));
    assert_eq!(
        a,
        Lease {
            scope: scope.clone(),
            holder: "holder-a".into(),
            epoch: 1,
            expires_at_ms: T0 + TTL,
        },
        "a first lease has epoch 1 and expires after the ttl"
    );
    assert_eq!(
        acquire(c, &scope, "holder-b", TTL, T0 + TTL - 1).await,
        None,
        "a lease is live until its expiry"
    );
    let b = acquire(c, &scope, "holder-b", TTL, T0 + TTL)
        .await
        .unwrap_or_else(|| panic!("an expired lease must be granted to another holder"));
    assert_eq!(
        (b.holder.as_str(), b.expires_at_ms),
        ("holder-b", T0 + 2 * TTL),
        "the new holder's lease runs from now"
    );
    assert!(b.epoch > a.epoch, "a takeover must raise the epoch: {b:?}");
    let o = acquire(c, &other_scope, "holder-a", TTL, T0)
        .await
        .unwrap_or_else(|| panic!("scopes are independent"));
    let mut expected = vec![b, o];
    expected.sort_by(|x, y| x.scope.cmp(&y.scope));
    assert_eq!(
        leases(c).await,
        expected,
        "leases must list every scope with its current lease"
    );
}

/// Rule: the holder of a live lease renews it: same epoch, later expiry. A holder that comes
/// back after its lease expired gets a new epoch (it may have been taken over meanwhile).
/// Preconditions: a fresh store.
pub async fn a_lease_renews_for_its_holder(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let scope = unique("scope");
    let a = acquire(c, &scope, "holder-a", TTL, T0)
        .await
        .unwrap_or_else(|| panic!("a free scope must be granted"));
    let renewed = acquire(c, &scope, "holder-a", TTL, T0 + 1_000)
        .await
        .unwrap_or_else(|| panic!("the holder of a live lease must renew it"));
    assert_eq!(
        (renewed.epoch, renewed.expires_at_ms),
        (a.epoch, T0 + 1_000 + TTL),
        "a renewal keeps the epoch and moves the expiry"
    );
    assert_eq!(
        leases(c).await,
        vec![renewed.clone()],
        "the renewal is stored"
    );
    let late = acquire(c, &scope, "holder-a", TTL, renewed.expires_at_ms)
        .await
        .unwrap_or_else(|| panic!("an expired lease must be granted again"));
    assert!(
        late.epoch > renewed.epoch,
        "taking back an expired lease must raise the epoch: {late:?}"
    );
}

/// Rule: while a lease is live, every other holder is refused (`None`) and the lease is
/// unchanged.
/// Preconditions: a fresh store.
pub async fn a_live_lease_is_refused_to_another_holder(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let scope = unique("scope");
    let a = acquire(c, &scope, "holder-a", TTL, T0)
        .await
        .unwrap_or_else(|| panic!("a free scope must be granted"));
    for (holder, at) in [("holder-b", T0), ("holder-c", T0 + TTL - 1)] {
        assert_eq!(
            acquire(c, &scope, holder, TTL, at).await,
            None,
            "a live lease must be refused to {holder}"
        );
    }
    assert_eq!(leases(c).await, vec![a], "a refusal must change nothing");
}

/// Rule: `release_lease` frees the scope at once for another holder; a release with a lease
/// that is no longer the stored one (older epoch or another holder) does nothing.
/// Preconditions: a fresh store.
pub async fn release_frees_the_lease_at_once(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let scope = unique("scope");
    let a = acquire(c, &scope, "holder-a", TTL, T0)
        .await
        .unwrap_or_else(|| panic!("a free scope must be granted"));
    within("release_lease", c.release_lease(&a))
        .await
        .unwrap_or_else(|e| panic!("release failed: {e}"));
    let b = acquire(c, &scope, "holder-b", TTL, T0 + 1)
        .await
        .unwrap_or_else(|| panic!("a released lease must be granted at once"));
    assert!(b.epoch > a.epoch, "a takeover must raise the epoch: {b:?}");
    for stale in [
        a.clone(),
        Lease {
            holder: "holder-a".into(),
            ..b.clone()
        },
    ] {
        within("release_lease", c.release_lease(&stale))
            .await
            .unwrap_or_else(|e| panic!("a stale release must not fail: {e}"));
    }
    assert_eq!(
        acquire(c, &scope, "holder-a", TTL, T0 + 2).await,
        None,
        "a stale release must not free the current holder's lease"
    );
    assert_eq!(
        leases(c).await,
        vec![b],
        "a stale release changed the lease"
    );
}

/// Rule: a save fenced by a lease that is no longer the stored one fails with
/// [`ConsumerStoreError::Fenced`] and writes nothing (checkpoint, parked records), whether or
/// not its version is also stale; a save with the current lease succeeds.
/// Scenario: holder A saves under its lease, pauses past the expiry, B takes over; A wakes
/// and tries to save.
/// Preconditions: a fresh store.
pub async fn a_fenced_save_fails_and_changes_nothing(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let (name, scope) = (unique("fenced"), unique("scope"));
    let a = acquire(c, &scope, "holder-a", TTL, T0)
        .await
        .unwrap_or_else(|| panic!("a free scope must be granted"));
    let (cur, st) = (cursor(), state(1));
    let pos1 = Position::new("f-1");
    let parks = to_park(1, 1);
    let v1 = save(
        c,
        &name,
        &Save {
            lease: Some(&a),
            park: &parks,
            ..Save::new(0, &pos1, &cur, &st, T0 + 1)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("a save under the current lease must succeed: {e}"));

    // A pauses; its lease expires and B takes over.
    let b = acquire(c, &scope, "holder-b", TTL, T0 + TTL + 1)
        .await
        .unwrap_or_else(|| panic!("an expired lease must be granted to another holder"));
    let before = (load(c, &name).await, parked(c, &name).await);
    let (pos_a, st_a, more) = (Position::new("f-a"), state(99), to_park(9, 1));
    let unpark = [before.1[0].id];
    let fenced = Save {
        lease: Some(&a),
        park: &more,
        unpark: &unpark,
        ..Save::new(v1, &pos_a, &cur, &st_a, T0 + TTL + 2)
    };
    let r = save(c, &name, &fenced).await;
    assert!(
        matches!(r, Err(ConsumerStoreError::Fenced(_))),
        "a save under a lease that was taken over must be Fenced, got {r:?}"
    );
    assert_eq!(
        (load(c, &name).await, parked(c, &name).await),
        before,
        "a fenced save must write nothing"
    );
    let unknown = Lease {
        scope: unique("never-leased"),
        ..a.clone()
    };
    let r = save(
        c,
        &name,
        &Save {
            lease: Some(&unknown),
            ..fenced
        },
    )
    .await;
    assert!(
        matches!(r, Err(ConsumerStoreError::Fenced(_))),
        "a save under a lease that was never granted must be Fenced, got {r:?}"
    );

    let pos_b = Position::new("f-b");
    let v2 = save(
        c,
        &name,
        &Save {
            lease: Some(&b),
            ..Save::new(v1, &pos_b, &cur, &st, T0 + TTL + 3)
        },
    )
    .await
    .unwrap_or_else(|e| panic!("a save under the current lease must succeed: {e}"));
    assert_eq!(v2, v1 + 1, "the new holder's save is an ordinary save");
    let r = save(c, &name, &fenced).await;
    assert!(
        matches!(r, Err(ConsumerStoreError::Fenced(_))),
        "a deposed holder must learn it was fenced even when its version is stale too, \
         got {r:?}"
    );
    assert_eq!(
        load(c, &name).await.map(|cp| (cp.position, cp.version)),
        Some((pos_b, v2)),
        "the deposed holder wrote nothing"
    );
}

/// Rule: of 8 holders racing for one free scope exactly one gets it; of 8 racing for it once
/// it has expired, again exactly one, with the next epoch.
/// Preconditions: a fresh store.
pub async fn concurrent_acquirers_get_exactly_one_lease(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let scope = unique("scope");
    let race = |round: u32, now: i64| {
        let tasks: Vec<_> = (0..8)
            .map(|i| {
                let (c, scope) = (Arc::clone(c), scope.clone());
                tokio::spawn(async move {
                    c.acquire_lease(&scope, &format!("racer-{round}-{i}"), TTL, now)
                        .await
                })
            })
            .collect();
        async move {
            let mut granted = Vec::new();
            for t in tasks {
                match within("a concurrent acquire", t).await {
                    Ok(Ok(Some(lease))) => granted.push(lease),
                    Ok(Ok(None)) => {}
                    other => panic!("a concurrent acquire failed: {other:?}"),
                }
            }
            granted
        }
    };
    let first = race(0, T0).await;
    assert_eq!(
        first.len(),
        1,
        "exactly one of 8 racers must get a free scope: {first:?}"
    );
    assert_eq!(leases(c).await, first, "the stored lease is the winner's");
    let second = race(1, T0 + TTL).await;
    assert_eq!(
        second.len(),
        1,
        "exactly one of 8 racers must get an expired scope: {second:?}"
    );
    assert_eq!(
        second[0].epoch,
        first[0].epoch + 1,
        "one takeover raises the epoch once"
    );
    assert_eq!(leases(c).await, second, "the stored lease is the winner's");
}
