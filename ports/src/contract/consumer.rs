//! Scenarios for the consumer-store contract ([`crate::ConsumerStore`]).
//!
//! The consumer store is optimistic: every save names the version it read, so two processes
//! running one consumer name can never both commit a batch.

use std::collections::BTreeMap;
use std::sync::Arc;

use domain::DistanceState;

use super::StoreFactory;
use super::fixtures::{now_ms, unique, within};
use crate::{Checkpoint, ConsumerStore, ConsumerStoreError, Position};

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
        cp.position,
        Position::start(),
        "a registered consumer starts at start"
    );
    assert_eq!(cp.version, 0, "a registered consumer has version 0");
    assert_eq!(
        cp.updated_at_ms, 0,
        "a never-saved consumer has updated_at_ms 0"
    );
    register(c, &name).await;
    assert_eq!(
        load(c, &name).await,
        Some(cp),
        "registering twice changed the consumer"
    );

    let pos = Position::new("contract-position-3");
    within("consumer save", c.save(&name, 0, &pos, &state(3), now_ms()))
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

/// Rule: `save` stores state and position together and returns the next version; `load`
/// returns exactly what was saved. A consumer never registered can be saved with version 0.
/// Preconditions: a fresh store.
pub async fn save_then_load(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let c = &sut.consumers;
    let name = unique("consumer");
    register(c, &name).await;
    let now = now_ms();
    let pos = Position::new("contract-position-42");
    let v = within("consumer save", c.save(&name, 0, &pos, &state(2), now))
        .await
        .unwrap_or_else(|e| panic!("save with the loaded version must succeed: {e}"));
    assert_eq!(v, 1, "the first save returns version 1");
    assert_eq!(
        load(c, &name).await,
        Some(Checkpoint {
            position: pos,
            state: state(2),
            version: 1,
            updated_at_ms: now,
        }),
        "load must return the saved state, position and version"
    );
    let pos2 = Position::new("contract-position-43");
    let v2 = within("consumer save", c.save(&name, 1, &pos2, &state(5), now + 1))
        .await
        .unwrap_or_else(|e| panic!("a second save with version 1 must succeed: {e}"));
    assert_eq!(v2, 2, "versions increment with every save");
    let cp = load(c, &name)
        .await
        .unwrap_or_else(|| panic!("consumer vanished"));
    assert_eq!((cp.position, cp.state, cp.version), (pos2, state(5), 2));

    let fresh = unique("unregistered");
    let v = within(
        "consumer save",
        c.save(&fresh, 0, &Position::new("p-1"), &state(1), now),
    )
    .await
    .unwrap_or_else(|e| panic!("saving a new consumer with version 0 must succeed: {e}"));
    assert_eq!(v, 1, "the first save of a new consumer returns version 1");
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
    within(
        "consumer save",
        c.save(&name, 0, &Position::new("pos-1"), &state(1), now),
    )
    .await
    .unwrap_or_else(|e| panic!("first save failed: {e}"));
    let saved = load(c, &name).await;
    for stale in [0, 5] {
        let r = within(
            "consumer save",
            c.save(&name, stale, &Position::new("pos-x"), &state(9), now + 1),
        )
        .await;
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
            c.save(
                &name,
                1,
                &Position::new(format!("race-{i}")),
                &state(10 + i),
                now + 2,
            )
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
    within(
        "consumer save",
        c.save(&names[1], 0, &Position::new("p-9"), &state(4), now_ms()),
    )
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
}
