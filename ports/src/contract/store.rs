//! Scenarios for the store contract ([`crate::RideStore`]) and the outbox contract
//! ([`crate::Outbox`]).
//!
//! Timestamps are passed in by the scenarios (`now_ms`), so the key life cycle (locks that go
//! stale, completer and reaper thresholds) is checked without waiting: a key "created 72 h
//! ago" is simply a key put with that `created_at_ms`.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use domain::record::kinds;
use domain::{KeyRecord, LogRecord, NewRecord, Phase, RecoveryPoint, StoredResponse, Thresholds};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::fixtures::{
    BAD_SOURCE_USER, USER, begin_request, create_ride, finish, hello_response, is_conflict,
    key_fixture, key_text, now_ms, params, proceed, ride_for, user, within,
};
use super::{StoreFactory, StoreUnderTest};
use crate::{Begun, Route, StoreError, Truth};

async fn key_of(sut: &StoreUnderTest, user_id: i64, key: &str) -> Option<KeyRecord> {
    sut.store
        .key(user_id, key)
        .await
        .unwrap_or_else(|e| panic!("key({user_id}, {key}) failed: {e}"))
}

async fn truth(sut: &StoreUnderTest) -> Truth {
    sut.store
        .truth()
        .await
        .unwrap_or_else(|e| panic!("truth failed: {e}"))
}

async fn staged(sut: &StoreUnderTest) -> u64 {
    sut.outbox
        .staged()
        .await
        .unwrap_or_else(|e| panic!("staged failed: {e}"))
}

async fn peek(sut: &StoreUnderTest, max: usize) -> Vec<LogRecord> {
    sut.outbox
        .peek(max)
        .await
        .unwrap_or_else(|e| panic!("peek({max}) failed: {e}"))
}

async fn put_key(sut: &StoreUnderTest, key: &KeyRecord) -> KeyRecord {
    sut.store
        .put_key(key)
        .await
        .unwrap_or_else(|e| panic!("put_key of a new key must succeed: {e}"))
}

fn assert_strictly_increasing(records: &[LogRecord], rule: &str) {
    for w in records.windows(2) {
        assert!(
            w[0].seq < w[1].seq,
            "{rule}: seq {} came before seq {}",
            w[0].seq,
            w[1].seq
        );
    }
}

/// Rule: a fresh store holds the two reference users; an unknown email is `None`;
/// `ensure_user` creates a user once and then returns the same one.
/// Preconditions: a fresh store.
pub async fn fresh_store_has_the_reference_users(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let good = user(&sut, USER).await;
    let bad = user(&sut, BAD_SOURCE_USER).await;
    assert_eq!(good.email, USER, "user_by_email returned another email");
    assert_eq!(
        bad.email, BAD_SOURCE_USER,
        "user_by_email returned another email"
    );
    assert_ne!(
        good.id, bad.id,
        "the reference users must have distinct ids"
    );
    let nobody = sut.store.user_by_email("nobody@example.com").await;
    assert_eq!(nobody, Ok(None), "an unknown email must be None");
    let again = sut.store.ensure_user(USER).await;
    assert_eq!(
        again,
        Ok(good),
        "ensure_user of an existing email must return that user"
    );
    let new = sut
        .store
        .ensure_user("contract-new@example.com")
        .await
        .unwrap_or_else(|e| panic!("ensure_user of a new email must succeed: {e}"));
    assert_eq!(new.email, "contract-new@example.com");
    assert_eq!(
        sut.store.ensure_user("contract-new@example.com").await,
        Ok(new.clone()),
        "ensure_user must be idempotent"
    );
    assert_eq!(
        sut.store.user_by_email("contract-new@example.com").await,
        Ok(Some(new)),
        "an ensured user must be found by email"
    );
}

/// Rule: phase 1 with a new key is the ride's first commit: it inserts the key locked at
/// `ride_created`, with the request's parameters, method and path, created and last run now,
/// its ride, and stages `ride.created`.
/// Preconditions: a fresh store.
pub async fn begin_creates_a_locked_key_with_its_ride(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let now = now_ms();
    let text = key_text("begin");
    let k = proceed(&sut, &begin_request(u.id, &text, params(1), now)).await;
    let ride = ride_for(&sut, k.id).await;
    let expected = KeyRecord {
        id: k.id,
        locked_at_ms: Some(now),
        recovery_point: RecoveryPoint::RideCreated,
        ride_id: Some(ride.id),
        ..key_fixture(u.id, &text, params(1), now)
    };
    assert_eq!(
        k, expected,
        "a new key must be locked at `ride_created`, knowing its ride"
    );
    assert_eq!(
        key_of(&sut, u.id, &text).await,
        Some(expected),
        "the new key must be stored as returned"
    );
    assert_eq!(
        (ride.user_id, ride.params, ride.charge_id.as_deref()),
        (u.id, params(1), None),
        "the first commit creates the ride, uncharged"
    );
    let staged_records = peek(&sut, 10).await;
    let kinds: Vec<&str> = staged_records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["ride.created"],
        "the first commit stages `ride.created`"
    );
    assert_eq!(staged_records[0].payload["ride_id"], ride.id);
    assert_eq!(
        key_of(&sut, u.id + 1_000_000, &text).await,
        None,
        "keys are scoped per user"
    );
}

/// Rule (issue: exact replays): a key finished with coordinates whose shortest decimal form
/// has 17 significant digits replays its response when the same text is sent again, and the
/// stored parameters equal the parsed ones bit for bit.
/// Preconditions: a fresh store.
pub async fn seventeen_digit_coordinates_replay(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let text = [
        ("origin_lat", "37.760634058469556"),
        ("origin_lon", "-122.41962585931567"),
        ("target_lat", "37.79401207930116"),
        ("target_lon", "-122.39508346185291"),
    ];
    let parse = || {
        domain::RideRequest::parse(|k| {
            text.iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| (*v).to_owned())
        })
        .unwrap_or_else(|e| panic!("the fixture coordinates are valid: {e}"))
        .params
    };
    let key = key_text("sf");
    let now = now_ms();
    let k = proceed(&sut, &begin_request(u.id, &key, parse(), now)).await;
    let ride = ride_for(&sut, k.id).await;
    finish(&sut, &k, &ride, "ch_contract_sf").await;
    let stored = key_of(&sut, u.id, &key)
        .await
        .unwrap_or_else(|| panic!("key vanished"));
    assert_eq!(stored.request_params, parse(), "stored parameters changed");
    assert_eq!(
        ride_for(&sut, k.id).await.params,
        parse(),
        "ride coordinates changed"
    );
    let retry = sut
        .store
        .begin(&begin_request(u.id, &key, parse(), now + 1_000))
        .await;
    assert_eq!(
        retry,
        Ok(Begun::Replay(StoredResponse::created())),
        "a retry with the same text must replay, not mismatch"
    );
}

/// Rule: keys an older version left at `started` (before its ride) or `charge_created`
/// (charged, receipt not staged) still resume: `begin` gives the first its ride in the same
/// transaction; the second proceeds where it is, and `receipt` finishes it.
/// Preconditions: a fresh store.
pub async fn keys_left_by_an_older_version_resume(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let now = now_ms();
    let old = key_fixture(u.id, &key_text("old-started"), params(5), now - 100_000);
    let old = put_key(&sut, &old).await;
    let resumed = proceed(&sut, &begin_request(u.id, &old.key, params(5), now)).await;
    assert_eq!(
        (resumed.recovery_point, resumed.locked_at_ms),
        (RecoveryPoint::RideCreated, Some(now)),
        "a key at `started` resumes with its ride"
    );
    let ride = ride_for(&sut, old.id).await;
    assert_eq!(ride.params, params(5));
    assert_eq!(
        resumed.ride_id,
        Some(ride.id),
        "the resumed key knows its ride"
    );

    // An older version's charge phase: charge id stored, key at `charge_created`.
    let (k, ride) = create_ride(&sut, u.id, params(6), now).await;
    let old_charge = Phase {
        then: domain::KeyTransition::To(RecoveryPoint::ChargeCreated),
        records: vec![],
        ..Phase::charged(&super::fixtures::ride_state(&ride), ride.id, "ch_old", None)
            .unwrap_or_else(|e| panic!("charge: {e}"))
    };
    sut.store
        .run_phase(k.id, RecoveryPoint::RideCreated, &old_charge, now)
        .await
        .unwrap_or_else(|e| panic!("old charge phase: {e}"));
    sut.store
        .unlock(k.id)
        .await
        .unwrap_or_else(|e| panic!("unlock: {e}"));
    let at_charge = proceed(&sut, &begin_request(u.id, &k.key, params(6), now + 1)).await;
    assert_eq!(at_charge.recovery_point, RecoveryPoint::ChargeCreated);
    let receipt = Phase::receipt(&at_charge, ride.id, None);
    let done = sut
        .store
        .run_phase(k.id, RecoveryPoint::ChargeCreated, &receipt, now + 2)
        .await
        .unwrap_or_else(|e| panic!("receipt from `charge_created` must commit: {e}"));
    assert_eq!(done.response, Some(StoredResponse::created()));
    assert_eq!(done.locked_at_ms, None);
}

/// Rule (reference 2.5): other parameters → `Mismatch`; a live lock → `InProgress` (both
/// write nothing); a lock older than `lock_timeout_ms` → `Proceed`, taking the lock and
/// bumping `last_run_at`; a finished key → `Replay` of exactly its stored response.
/// Preconditions: a fresh store.
pub async fn begin_decisions(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let t = Thresholds::default();
    let now = now_ms();
    let text = key_text("decide");
    let created = proceed(&sut, &begin_request(u.id, &text, params(1), now)).await;

    let mismatch = sut
        .store
        .begin(&begin_request(u.id, &text, params(2), now + 1_000))
        .await;
    assert_eq!(
        mismatch,
        Ok(Begun::Mismatch),
        "other parameters must be a Mismatch"
    );
    let busy = sut
        .store
        .begin(&begin_request(u.id, &text, params(1), now + 1_000))
        .await;
    assert_eq!(
        busy,
        Ok(Begun::InProgress),
        "a locked key must be InProgress"
    );
    assert_eq!(
        key_of(&sut, u.id, &text).await,
        Some(created.clone()),
        "Mismatch and InProgress must write nothing"
    );

    let later = now + t.lock_timeout_ms + 1;
    let resumed = proceed(&sut, &begin_request(u.id, &text, params(1), later)).await;
    assert_eq!(
        resumed,
        KeyRecord {
            locked_at_ms: Some(later),
            last_run_at_ms: later,
            ..created
        },
        "a stale lock must be taken over, bumping last_run_at and nothing else"
    );
    assert_eq!(key_of(&sut, u.id, &text).await, Some(resumed));

    let done_text = key_text("done");
    let mut done = key_fixture(u.id, &done_text, params(1), now);
    done.recovery_point = RecoveryPoint::Finished;
    done.response = Some(hello_response());
    let done = put_key(&sut, &done).await;
    let replay = sut
        .store
        .begin(&begin_request(u.id, &done_text, params(1), now))
        .await;
    assert_eq!(
        replay,
        Ok(Begun::Replay(hello_response())),
        "a finished key must replay its stored response"
    );
    assert_eq!(
        key_of(&sut, u.id, &done_text).await,
        Some(done),
        "a replay must write nothing"
    );
}

/// Rule: of 8 concurrent phase-1 calls with one new key exactly one proceeds; the others get
/// `InProgress` or [`StoreError::Conflict`], and one key exists afterwards.
/// Preconditions: a fresh store.
pub async fn concurrent_begins_with_one_key_have_one_winner(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let text = key_text("race");
    let req = begin_request(u.id, &text, params(1), now_ms());
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let store = Arc::clone(&sut.store);
        let req = req.clone();
        tasks.push(tokio::spawn(async move { store.begin(&req).await }));
    }
    let mut winners = 0;
    for t in tasks {
        match within("a concurrent begin", t).await {
            Ok(Ok(Begun::Proceed(_))) => winners += 1,
            Ok(Ok(Begun::InProgress)) => {}
            Ok(Err(e)) if is_conflict(&e) => {}
            other => panic!("a losing begin must be InProgress or Conflict, got {other:?}"),
        }
    }
    assert_eq!(winners, 1, "exactly one concurrent begin must Proceed");
    assert!(
        key_of(&sut, u.id, &text).await.is_some(),
        "the key must exist"
    );
    assert_eq!(
        truth(&sut).await.unfinished_keys,
        1,
        "concurrent begins must leave exactly one key"
    );
}

/// Rule: a ride takes two commits: `begin` (key, ride, `ride.created`) then the charge
/// (`ride_created → finished`: charge id, `ride.charged`, `receipt.requested`, response). The
/// outbox then holds exactly those three records about the ride, under the outbox's producer,
/// with strictly increasing seqs.
/// Preconditions: a fresh store.
pub async fn phases_chain_to_finished(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let now = now_ms();
    let p = params(3);
    let (k1, ride) = create_ride(&sut, u.id, p, now).await;
    assert!(k1.locked_at_ms.is_some(), "a recovery point keeps the lock");
    assert_eq!(ride.distance_mm, p.distance_mm(), "the ride's distance");
    assert_eq!(ride.user_id, u.id, "the ride's owner");
    assert_eq!(ride.params, p, "the ride's parameters");
    assert_eq!(ride.idempotency_key_id, Some(k1.id), "the ride's key");
    assert_eq!(ride.charge_id, None, "a new ride is not charged");

    finish(&sut, &k1, &ride, "ch_contract_chain").await;
    let done = key_of(&sut, u.id, &k1.key)
        .await
        .unwrap_or_else(|| panic!("key vanished"));
    assert_eq!(done.recovery_point, RecoveryPoint::Finished);
    assert_eq!(done.locked_at_ms, None, "finishing releases the lock");
    assert_eq!(
        done.response,
        Some(StoredResponse::created()),
        "finished response"
    );
    assert_eq!(
        ride_for(&sut, k1.id).await.charge_id.as_deref(),
        Some("ch_contract_chain"),
        "the charged phase stores the charge id"
    );

    let staged_records = peek(&sut, 100).await;
    let kinds: Vec<&str> = staged_records.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds,
        ["ride.created", "ride.charged", "receipt.requested"],
        "the outbox must hold exactly the three records of the chain, in order"
    );
    let producer = sut.outbox.producer();
    for r in &staged_records {
        assert_eq!(
            r.payload["ride_id"], ride.id,
            "staged records carry the ride id"
        );
        assert_eq!(
            r.producer, producer,
            "staged records carry the outbox's producer"
        );
    }
    assert_strictly_increasing(&staged_records, "staged records");
    assert_eq!(staged(&sut).await, 3, "staged() counts the staged records");
    assert_eq!(
        truth(&sut).await,
        Truth {
            rides: 1,
            distance_mm: p.distance_mm(),
            unfinished_keys: 0
        }
    );
}

/// Rule: `run_phase` with a key that is not at `expected` fails with
/// [`StoreError::Conflict`] and writes nothing (no ride, no staged record, key unchanged),
/// including a retry of a phase that already committed.
/// Preconditions: a fresh store.
pub async fn run_phase_at_the_wrong_recovery_point_conflicts_and_writes_nothing(
    f: &dyn StoreFactory,
) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let now = now_ms();
    let mut fixture = key_fixture(u.id, &key_text("wrong"), params(1), now);
    fixture.locked_at_ms = Some(now);
    let k = put_key(&sut, &fixture).await;
    let phase =
        Phase::create_ride(&k, "127.0.0.1", None).unwrap_or_else(|e| panic!("a fresh ride: {e}"));
    let wrong = sut
        .store
        .run_phase(k.id, RecoveryPoint::RideCreated, &phase, now)
        .await;
    assert!(
        matches!(wrong, Err(StoreError::Conflict(_))),
        "a phase at the wrong recovery point must be a Conflict, got {wrong:?}"
    );
    assert_eq!(
        key_of(&sut, u.id, &k.key).await,
        Some(k.clone()),
        "key changed"
    );
    assert_eq!(
        sut.store.ride_for_key(k.id).await,
        Ok(None),
        "a ride was written"
    );
    assert_eq!(staged(&sut).await, 0, "a record was staged");
    assert_eq!(
        truth(&sut).await,
        Truth {
            unfinished_keys: 1,
            ..Truth::default()
        }
    );

    let k1 = sut
        .store
        .run_phase(k.id, RecoveryPoint::Started, &phase, now)
        .await
        .unwrap_or_else(|e| panic!("create_ride from `started` must commit: {e}"));
    let before = (truth(&sut).await, peek(&sut, 100).await);
    let again = sut
        .store
        .run_phase(k.id, RecoveryPoint::Started, &phase, now)
        .await;
    assert!(
        matches!(again, Err(StoreError::Conflict(_))),
        "re-running a committed phase must be a Conflict, got {again:?}"
    );
    assert_eq!(
        (truth(&sut).await, peek(&sut, 100).await),
        before,
        "a conflicting phase must not write a second ride or record"
    );
    assert_eq!(key_of(&sut, u.id, &k.key).await, Some(k1), "key changed");
}

/// Rule: `run_phase` on a key that does not exist fails with [`StoreError::NotFound`].
/// Preconditions: a fresh store.
pub async fn run_phase_on_an_unknown_key_is_not_found(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let now = now_ms();
    let ghost = KeyRecord {
        id: 987_654_321,
        ..key_fixture(u.id, &key_text("ghost"), params(1), now)
    };
    let phase = Phase::create_ride(&ghost, "127.0.0.1", None)
        .unwrap_or_else(|e| panic!("a fresh ride: {e}"));
    let r = sut
        .store
        .run_phase(ghost.id, RecoveryPoint::Started, &phase, now)
        .await;
    assert!(
        matches!(r, Err(StoreError::NotFound(_))),
        "run_phase on an unknown key must be NotFound, got {r:?}"
    );
    assert_eq!(staged(&sut).await, 0, "a failed phase staged a record");
    assert_eq!(truth(&sut).await, Truth::default(), "a failed phase wrote");
}

/// Rule: the charge's commit for a ride that does not exist fails with
/// [`StoreError::NotFound`] and writes nothing (key, rides and outbox unchanged).
/// Preconditions: a fresh store.
pub async fn charging_a_missing_ride_is_not_found_and_writes_nothing(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let now = now_ms();
    let (k, ride) = create_ride(&sut, u.id, params(1), now).await;
    let before = (
        key_of(&sut, u.id, &k.key).await,
        peek(&sut, 100).await,
        truth(&sut).await,
    );
    let missing = ride.id + 1_000_000;
    let phase = Phase::charged(
        &super::fixtures::ride_state(&ride),
        missing,
        "ch_ghost",
        None,
    )
    .unwrap_or_else(|e| panic!("charge: {e}"));
    let r = sut
        .store
        .run_phase(k.id, RecoveryPoint::RideCreated, &phase, now)
        .await;
    assert!(
        matches!(r, Err(StoreError::NotFound(_))),
        "charging a missing ride must be NotFound, got {r:?}"
    );
    assert_eq!(
        (
            key_of(&sut, u.id, &k.key).await,
            peek(&sut, 100).await,
            truth(&sut).await
        ),
        before,
        "a failed charge's commit must write nothing"
    );
}

/// Rule: `unlock` clears the lock and nothing else; the key can then be resumed at once.
/// Preconditions: a fresh store.
pub async fn unlock_clears_the_lock_only(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let now = now_ms();
    let (k, _) = create_ride(&sut, u.id, params(1), now).await;
    assert!(k.locked_at_ms.is_some(), "precondition: the key is locked");
    sut.store
        .unlock(k.id)
        .await
        .unwrap_or_else(|e| panic!("unlock failed: {e}"));
    assert_eq!(
        key_of(&sut, u.id, &k.key).await,
        Some(KeyRecord {
            locked_at_ms: None,
            ..k.clone()
        }),
        "unlock must clear the lock and change nothing else"
    );
    let resumed = proceed(&sut, &begin_request(u.id, &k.key, params(1), now + 1)).await;
    assert_eq!(
        resumed.recovery_point,
        RecoveryPoint::RideCreated,
        "a resumed key continues from its recovery point"
    );
}

/// Rule (reference 2.12, completer): a key created 301 s ago, last run 61 s ago, unlocked and
/// unfinished is listed with its user; one created now, run now, finished or freshly locked
/// is not; an empty store lists nothing.
/// Preconditions: a fresh store.
pub async fn completer_eligibility(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let t = Thresholds::default();
    let now = now_ms();
    let list = |now| {
        let store = Arc::clone(&sut.store);
        async move {
            store
                .completable_keys(now, &t, 1000)
                .await
                .unwrap_or_else(|e| panic!("completable_keys failed: {e}"))
        }
    };
    assert!(
        list(now).await.is_empty(),
        "an empty store has nothing to complete"
    );

    let old = |tag: &str| {
        let mut k = key_fixture(u.id, &key_text(tag), params(1), now - 301_000);
        k.last_run_at_ms = now - 61_000;
        k
    };
    let eligible = put_key(&sut, &old("eligible")).await;
    let mut young = old("young");
    young.created_at_ms = now;
    put_key(&sut, &young).await;
    let mut recent = old("recent");
    recent.last_run_at_ms = now;
    put_key(&sut, &recent).await;
    let mut finished = old("finished");
    finished.recovery_point = RecoveryPoint::Finished;
    finished.response = Some(StoredResponse::created());
    put_key(&sut, &finished).await;
    let mut locked = old("locked");
    locked.locked_at_ms = Some(now);
    put_key(&sut, &locked).await;

    let listed = list(now).await;
    let ids: Vec<i64> = listed.iter().map(|(k, _)| k.id).collect();
    assert_eq!(
        ids,
        [eligible.id],
        "only the key created 301 s ago and run 61 s ago is completable"
    );
    assert_eq!(listed[0].0, eligible, "the completable key as stored");
    assert_eq!(listed[0].1, u, "a completable key comes with its user");
}

/// Rule (reference 2.8): the reaper deletes keys created more than 72 h ago (whatever their
/// recovery point) and keeps younger ones; rides of a reaped key stay, with their key
/// reference cleared.
/// Preconditions: a fresh store.
pub async fn reaper_deletes_old_keys_and_keeps_their_rides(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let t = Thresholds::default();
    let now = now_ms();
    let reap = || async {
        sut.store
            .reap_keys(now, &t, 1000)
            .await
            .unwrap_or_else(|e| panic!("reap_keys failed: {e}"))
    };
    assert_eq!(reap().await, 0, "an empty store has nothing to reap");
    let (old, ride) = create_ride(&sut, u.id, params(1), now - t.reap_after_ms - 1_000).await;
    let young = put_key(&sut, &key_fixture(u.id, &key_text("young"), params(1), now)).await;
    assert_eq!(
        reap().await,
        1,
        "exactly the key created 72 h + 1 s ago is reaped"
    );
    assert_eq!(
        key_of(&sut, u.id, &old.key).await,
        None,
        "the reaped key is gone"
    );
    assert_eq!(
        key_of(&sut, u.id, &young.key).await,
        Some(young),
        "a key created now must not be reaped"
    );
    assert_eq!(
        sut.store.ride(ride.id).await,
        Ok(Some(crate::RideRow {
            idempotency_key_id: None,
            ..ride
        })),
        "the ride of a reaped key stays, with its key reference cleared"
    );
    assert_eq!(reap().await, 0, "nothing left to reap");
}

/// Rule: `rides_for_user` lists one user's rides newest first (decreasing ids), at most
/// `limit`, and pages with `before_id` without duplicates or gaps.
/// Preconditions: a fresh store.
pub async fn rides_for_user_newest_first_with_paging(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let other = user(&sut, BAD_SOURCE_USER).await;
    let now = now_ms();
    let mut created = Vec::new();
    for n in 0..5 {
        created.push(create_ride(&sut, u.id, params(n), now).await.1);
    }
    create_ride(&sut, other.id, params(9), now).await;
    let page = |before, limit| {
        let store = Arc::clone(&sut.store);
        async move {
            store
                .rides_for_user(u.id, before, limit)
                .await
                .unwrap_or_else(|e| panic!("rides_for_user failed: {e}"))
        }
    };
    let all = page(None, 10).await;
    let mut expected = created.clone();
    expected.sort_by_key(|r| std::cmp::Reverse(r.id));
    assert_eq!(
        all, expected,
        "a user's rides, newest first, and only theirs"
    );

    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let p = page(before, 2).await;
        assert!(p.len() <= 2, "rides_for_user must respect its limit");
        let Some(last) = p.last() else { break };
        before = Some(last.id);
        paged.extend(p);
    }
    assert_eq!(
        paged, expected,
        "paging with before_id must list every ride once"
    );
}

/// Rule: `ride(id)` returns the stored ride, and `None` for an unknown id.
/// Preconditions: a fresh store.
pub async fn ride_by_id(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let (_, ride) = create_ride(&sut, u.id, params(4), now_ms()).await;
    assert_eq!(
        sut.store.ride(ride.id).await,
        Ok(Some(ride.clone())),
        "ride by id"
    );
    assert_eq!(
        sut.store.ride(ride.id + 1_000_000).await,
        Ok(None),
        "an unknown ride id must be None"
    );
}

/// Rule: `rides_by_ids` returns the rides with the given ids that exist, in increasing id
/// order, each once: missing ids are simply absent, duplicates and order in the input do not
/// matter, an empty input returns nothing, and a charge is seen as it is now.
/// Preconditions: a fresh store.
pub async fn rides_by_ids_reloads_current_rows(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let other = user(&sut, BAD_SOURCE_USER).await;
    let now = now_ms();
    let (k1, r1) = create_ride(&sut, u.id, params(1), now).await;
    let (_, r2) = create_ride(&sut, other.id, params(2), now).await;
    let (_, r3) = create_ride(&sut, u.id, params(3), now).await;
    finish(&sut, &k1, &r1, "ch_contract_by_ids").await;
    let by_ids = |ids: Vec<i64>| {
        let store = Arc::clone(&sut.store);
        async move {
            within("rides_by_ids", store.rides_by_ids(&ids))
                .await
                .unwrap_or_else(|e| panic!("rides_by_ids({ids:?}) failed: {e}"))
        }
    };
    let charged = ride_for(&sut, k1.id).await;
    assert_eq!(
        charged.charge_id.as_deref(),
        Some("ch_contract_by_ids"),
        "fixture: the first ride is charged"
    );
    let missing = r3.id + 1_000_000;
    let first = r1.id.min(r2.id).min(r3.id);
    assert_eq!(
        by_ids(vec![r3.id, missing, r1.id, r3.id, r2.id, -1]).await,
        vec![charged.clone(), r2.clone(), r3.clone()],
        "the existing rides, current, in id order, each once"
    );
    assert_eq!(by_ids(vec![r2.id]).await, vec![r2], "one id gives its ride");
    assert_eq!(
        by_ids(vec![missing]).await,
        Vec::new(),
        "only missing ids give nothing"
    );
    assert_eq!(by_ids(Vec::new()).await, Vec::new(), "no ids give nothing");
    let many: Vec<i64> = (0..2_000).map(|i| first + i).collect();
    assert_eq!(
        by_ids(many).await.len(),
        3,
        "a batch of 2000 ids finds the 3 rides"
    );
}

/// Rule: `forget_user` deletes the user's rides, keys and the user in one transaction, and
/// stages one `ride.deleted` change record per deleted ride (its id, user and distance), after
/// everything staged before; other users are untouched; an unknown email is `NotFound` and
/// changes nothing.
/// Preconditions: a fresh store.
pub async fn forget_user_deletes_and_stages_one_change_per_ride(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let other = user(&sut, BAD_SOURCE_USER).await;
    let now = now_ms();
    let (k1, r1) = create_ride(&sut, u.id, params(1), now).await;
    let (_, r2) = create_ride(&sut, u.id, params(2), now).await;
    let (_, kept) = create_ride(&sut, other.id, params(3), now).await;
    finish(&sut, &k1, &r1, "ch_contract_forget").await;
    let before = peek(&sut, 1_000).await;
    let last_seq = before.last().map_or(0, |r| r.seq);

    let missing = within(
        "forget_user",
        sut.store.forget_user("nobody@example.com", now),
    )
    .await;
    assert!(
        matches!(missing, Err(crate::StoreError::NotFound(_))),
        "an unknown email is NotFound: {missing:?}"
    );
    assert_eq!(peek(&sut, 1_000).await, before, "NotFound stages nothing");

    let gone = within("forget_user", sut.store.forget_user(USER, now))
        .await
        .unwrap_or_else(|e| panic!("forget_user failed: {e}"));
    assert_eq!(
        (gone.user_id, gone.rides, gone.keys),
        (u.id, 2, 2),
        "{gone:?}"
    );
    let by_ids = within(
        "rides_by_ids",
        sut.store.rides_by_ids(&[r1.id, r2.id, kept.id]),
    )
    .await
    .unwrap_or_else(|e| panic!("rides_by_ids failed: {e}"));
    assert_eq!(
        by_ids,
        vec![kept.clone()],
        "only the other user's ride is left"
    );
    assert_eq!(
        key_of(&sut, u.id, &k1.key).await,
        None,
        "the user's keys are gone"
    );
    let found = within("user_by_email", sut.store.user_by_email(USER))
        .await
        .unwrap_or_else(|e| panic!("user_by_email failed: {e}"));
    assert_eq!(found, None, "the user is gone");
    assert_eq!(
        truth(&sut).await.rides,
        1,
        "truth counts the remaining ride"
    );

    let after = peek(&sut, 1_000).await;
    let deleted: Vec<&LogRecord> = after.iter().filter(|r| r.seq > last_seq).collect();
    let mut changes: Vec<(String, i64, u64)> = deleted
        .iter()
        .map(|r| {
            (
                r.kind.clone(),
                r.payload["ride_id"].as_i64().unwrap_or_default(),
                r.payload["distance_mm"].as_u64().unwrap_or_default(),
            )
        })
        .collect();
    changes.sort();
    let mut want = vec![
        ("ride.deleted".to_owned(), r1.id, r1.distance_mm),
        ("ride.deleted".to_owned(), r2.id, r2.distance_mm),
    ];
    want.sort();
    assert_eq!(
        changes, want,
        "one ride.deleted per ride, after what was staged before"
    );
    assert!(
        deleted
            .iter()
            .all(|r| r.key == format!("ride:{}", r.payload["ride_id"])),
        "keyed by the ride, like its other records"
    );
}

/// Rule: `truth` counts rides, the sum of their distances, and keys not yet finished.
/// Preconditions: a fresh store.
pub async fn truth_counts_rides_distance_and_unfinished_keys(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let now = now_ms();
    assert_eq!(
        truth(&sut).await,
        Truth::default(),
        "a fresh store is empty"
    );
    let (k1, r1) = create_ride(&sut, u.id, params(1), now).await;
    let (_, r2) = create_ride(&sut, u.id, params(2), now).await;
    put_key(&sut, &key_fixture(u.id, &key_text("idle"), params(3), now)).await;
    finish(&sut, &k1, &r1, "ch_contract_truth").await;
    let mut done = key_fixture(u.id, &key_text("done"), params(1), now);
    done.recovery_point = RecoveryPoint::Finished;
    done.response = Some(hello_response());
    put_key(&sut, &done).await;
    assert_eq!(
        truth(&sut).await,
        Truth {
            rides: 2,
            distance_mm: r1.distance_mm + r2.distance_mm,
            unfinished_keys: 2,
        },
        "truth: 2 rides, their distance, and the 2 keys not finished"
    );
}

/// Rule: `peek` returns staged records in increasing seq order without removing them;
/// `remove` removes exactly the given seqs (not "everything up to"), and counts only what it
/// removed; `staged` counts what is left.
/// Preconditions: a fresh store.
pub async fn outbox_peek_is_in_seq_order_and_remove_is_exact(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let now = now_ms();
    assert!(peek(&sut, 10).await.is_empty(), "a fresh outbox is empty");
    for n in 0..5 {
        create_ride(&sut, u.id, params(n), now).await;
    }
    let all = peek(&sut, 100).await;
    assert_eq!(all.len(), 5, "five phases staged five records");
    assert_strictly_increasing(&all, "peek");
    assert_eq!(
        peek(&sut, 2).await,
        all[..2],
        "peek(2) returns the two lowest seqs"
    );
    assert_eq!(peek(&sut, 100).await, all, "peek must not remove");
    assert_eq!(staged(&sut).await, 5);

    let remove = |seqs: Vec<u64>| {
        let outbox = Arc::clone(&sut.outbox);
        async move {
            outbox
                .remove(&seqs)
                .await
                .unwrap_or_else(|e| panic!("remove failed: {e}"))
        }
    };
    assert_eq!(
        remove(vec![all[1].seq, all[3].seq]).await,
        2,
        "remove two seqs"
    );
    let left = peek(&sut, 100).await;
    assert_eq!(
        left,
        [all[0].clone(), all[2].clone(), all[4].clone()],
        "remove must delete exactly the given seqs"
    );
    assert_eq!(staged(&sut).await, 3);
    assert_eq!(
        remove(vec![all[1].seq, all[3].seq]).await,
        0,
        "removing removed seqs removes nothing"
    );
    let rest: Vec<u64> = left.iter().map(|r| r.seq).collect();
    assert_eq!(remove(rest).await, 3);
    assert_eq!(staged(&sut).await, 0);
    assert!(peek(&sut, 100).await.is_empty(), "the outbox is drained");
}

/// Rule: `peek_after(s, max)` is `peek(max)` without the records at or below `s`: records
/// above the cursor, lowest seq first, at most `max`, nothing removed; `peek_after(0, _)` is
/// `peek`; with a route, the higher of the cursor and the route's `after_seq` applies.
/// Preconditions: a fresh store.
pub async fn peek_after_resumes_after_a_cursor(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let now = now_ms();
    for n in 0..5 {
        create_ride(&sut, u.id, params(n), now).await;
    }
    let all = peek(&sut, 100).await;
    assert_eq!(all.len(), 5, "five phases staged five records");
    let peek_after = |after: u64, max: usize| {
        let outbox = Arc::clone(&sut.outbox);
        async move {
            outbox
                .peek_after(after, max)
                .await
                .unwrap_or_else(|e| panic!("peek_after({after}, {max}) failed: {e}"))
        }
    };
    assert_eq!(peek_after(0, 100).await, all, "peek_after(0, _) is peek");
    assert_eq!(
        peek_after(all[1].seq, 100).await,
        all[2..],
        "peek_after returns only the records above the cursor"
    );
    assert_eq!(
        peek_after(all[1].seq, 2).await,
        all[2..4],
        "peek_after returns at most `max`, lowest seqs first"
    );
    assert!(
        peek_after(all[4].seq, 100).await.is_empty(),
        "nothing above the last record"
    );
    assert!(
        peek_after(u64::MAX, 100).await.is_empty(),
        "nothing above u64::MAX"
    );
    assert_eq!(staged(&sut).await, 5, "peek_after must not remove");

    set_route(
        &sut,
        &Route {
            log_url: "x://y".to_owned(),
            after_seq: all[2].seq,
        },
    )
    .await;
    assert_eq!(
        peek_after(all[0].seq, 100).await,
        all[3..],
        "a route above the cursor wins"
    );
    assert_eq!(
        peek_after(all[3].seq, 100).await,
        all[4..],
        "a cursor above the route wins"
    );
}

/// Rule: `wait_staged` returns soon after a phase stages records, well before its timeout
/// (a 30 s wait must return within 10 s).
/// Preconditions: a fresh store.
pub async fn wait_staged_wakes_on_a_phase(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let waiter = {
        let outbox = Arc::clone(&sut.outbox);
        tokio::spawn(async move {
            let started = Instant::now();
            outbox.wait_staged(Duration::from_secs(30)).await;
            started.elapsed()
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    create_ride(&sut, u.id, params(1), now_ms()).await;
    let elapsed = within("wait_staged after a phase", waiter)
        .await
        .unwrap_or_else(|e| panic!("waiter task panicked: {e}"));
    assert!(
        elapsed < Duration::from_secs(10),
        "wait_staged must wake when a phase stages records, but took {elapsed:?}"
    );
}

async fn stage(sut: &StoreUnderTest, records: &[NewRecord]) {
    sut.outbox
        .stage(records)
        .await
        .unwrap_or_else(|e| panic!("stage of {} records failed: {e}", records.len()));
}

async fn route(sut: &StoreUnderTest) -> Option<Route> {
    sut.outbox
        .route()
        .await
        .unwrap_or_else(|e| panic!("route failed: {e}"))
}

async fn set_route(sut: &StoreUnderTest, r: &Route) {
    sut.outbox
        .set_route(r)
        .await
        .unwrap_or_else(|e| panic!("set_route({r:?}) failed: {e}"));
}

/// Rule: `stage` sequences its records exactly like a phase's: two cutover records staged
/// between two ride phases come out of `peek` between the two rides' records, with strictly
/// increasing seqs, this store's producer, and the kind and payload they were staged with.
/// Preconditions: a fresh store.
pub async fn stage_sequences_like_a_phase(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let now = now_ms();
    create_ride(&sut, u.id, params(1), now).await;
    let cutovers = [
        NewRecord::cutover("contract://first", now),
        NewRecord::cutover("contract://second", now),
    ];
    stage(&sut, &cutovers).await;
    create_ride(&sut, u.id, params(2), now).await;

    let all = peek(&sut, 100).await;
    assert_eq!(
        all.len(),
        4,
        "two phases and one stage of two records staged four records: {all:?}"
    );
    assert_strictly_increasing(&all, "peek after stage");
    let kinds: Vec<&str> = all.iter().map(|r| r.kind.as_str()).collect();
    assert_eq!(
        kinds[1..3],
        [kinds::LOG_CUTOVER, kinds::LOG_CUTOVER],
        "staged records must be sequenced between the phases around them: {kinds:?}"
    );
    assert!(
        all[0].kind != kinds::LOG_CUTOVER && all[3].kind != kinds::LOG_CUTOVER,
        "the phases' records must come first and last: {kinds:?}"
    );
    for (got, want) in all[1..3].iter().zip(&cutovers) {
        assert_eq!(
            got.unsequenced(),
            *want,
            "a staged record must come back as it was staged"
        );
        assert_eq!(
            got.producer,
            sut.outbox.producer(),
            "staged records carry the outbox's producer"
        );
    }
    assert_eq!(staged(&sut).await, 4, "staged counts the staged records");
}

/// Rule: `remove` notes each removed record in the `published` index (producer, seq, kind,
/// key), which `published` returns by range; `restage` stages records under their own
/// producer and sequence, which `peek` hands out and `remove` removes; a record still staged
/// is not staged twice.
/// Preconditions: a fresh store.
pub async fn removed_records_are_indexed_and_restage_keeps_their_sequence(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let now = now_ms();
    let (_, ride) = create_ride(&sut, u.id, params(1), now).await;
    create_ride(&sut, u.id, params(2), now).await;
    let all = peek(&sut, 100).await;
    assert_eq!(all.len(), 2, "two phases staged two records: {all:?}");
    let producer = sut.outbox.producer();
    let seqs: Vec<u64> = all.iter().map(|r| r.seq).collect();
    let removed = sut.outbox.remove(&seqs).await.expect("remove");
    assert_eq!(removed, 2);
    let index = sut
        .outbox
        .published(&producer, 0, u64::MAX)
        .await
        .expect("published");
    let want: Vec<crate::Published> = all
        .iter()
        .map(|r| crate::Published {
            producer: producer.clone(),
            seq: r.seq,
            kind: r.kind.clone(),
            key: r.key.clone(),
        })
        .collect();
    assert_eq!(
        index, want,
        "the index must hold every removed record, by seq"
    );
    assert_eq!(index[0].key, format!("ride:{}", ride.id));
    let one = sut
        .outbox
        .published(&producer, seqs[1], seqs[1])
        .await
        .expect("published");
    assert_eq!(one, want[1..].to_vec(), "a range returns only its records");
    assert_eq!(
        sut.outbox
            .forget_published(&producer, seqs[1])
            .await
            .expect("forget_published"),
        1,
        "forget_published removes exactly the entries below the sequence"
    );
    assert_eq!(
        sut.outbox
            .published(&producer, 0, u64::MAX)
            .await
            .expect("published"),
        want[1..].to_vec()
    );
    assert!(
        sut.outbox
            .published("another-producer", 0, u64::MAX)
            .await
            .expect("published")
            .is_empty(),
        "another producer has no entries"
    );

    // A later record, then the first one re-staged (twice) under its original sequence.
    create_ride(&sut, u.id, params(3), now).await;
    sut.outbox.restage(&all[..1]).await.expect("restage");
    sut.outbox.restage(&all[..1]).await.expect("restage again");
    let again = peek(&sut, 100).await;
    let pairs: Vec<(String, u64)> = again.iter().map(|r| (r.producer.clone(), r.seq)).collect();
    assert_eq!(
        again.len(),
        2,
        "the later record and ONE re-staged copy: {pairs:?}"
    );
    let restaged = again
        .iter()
        .find(|r| r.seq == all[0].seq)
        .expect("peek must hand out the re-staged record under its original seq");
    assert_eq!(restaged, &all[0], "a re-staged record comes back as it was");
    assert_eq!(
        sut.outbox.remove(&[all[0].seq]).await.expect("remove"),
        1,
        "remove names a re-staged record by its original seq"
    );
    let left = peek(&sut, 100).await;
    assert_eq!(left.len(), 1);
    assert_ne!(left[0].seq, all[0].seq);
}

/// Rule: a fresh store has no route; `set_route` then `route` returns it, a second
/// `set_route` overwrites it, and it survives a restart; with a route set, `peek` returns
/// only records above its `after_seq`.
/// Preconditions: a fresh store; the restart part is skipped when the factory's `reopen`
/// returns `None` (memory).
pub async fn route_is_durable_and_peek_starts_after_it(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let now = now_ms();
    assert_eq!(route(&sut).await, None, "a fresh store has no route");
    let records: Vec<NewRecord> = (1..=3)
        .map(|n| NewRecord::cutover(&format!("contract://{n}"), now))
        .collect();
    stage(&sut, &records).await;
    let all = peek(&sut, 100).await;
    assert_eq!(all.len(), 3, "three staged records: {all:?}");

    let first = Route {
        log_url: "x://y".to_owned(),
        after_seq: all[1].seq,
    };
    set_route(&sut, &first).await;
    assert_eq!(
        route(&sut).await,
        Some(first),
        "route must return what set_route stored"
    );
    assert_eq!(
        peek(&sut, 100).await,
        all[2..],
        "with a route, peek returns only the records above its after_seq"
    );
    assert_eq!(
        staged(&sut).await,
        3,
        "a route hides records from peek but does not remove them"
    );

    let second = Route {
        log_url: "x://z".to_owned(),
        after_seq: all[0].seq,
    };
    set_route(&sut, &second).await;
    assert_eq!(
        route(&sut).await,
        Some(second.clone()),
        "set_route must overwrite the route"
    );
    assert_eq!(
        peek(&sut, 100).await,
        all[1..],
        "peek follows the overwritten route"
    );

    let Some(sut) = f.reopen(sut).await else {
        return;
    };
    assert_eq!(
        route(&sut).await,
        Some(second),
        "the route must survive a restart"
    );
    assert_eq!(
        peek(&sut, 100).await,
        all[1..],
        "peek after a restart follows the stored route"
    );
}

/// What the concurrent-writers scenario observed.
#[derive(Default)]
struct Drained {
    seqs: Vec<u64>,
    /// `(kind, ride id)` of every drained record.
    rides: Vec<(String, i64)>,
}

/// Rule (invariant 4): with 16 concurrent writers (random delays, about one phase in five
/// failing on purpose and rolling back) and one drainer that peeks and removes, the drainer
/// sees seqs strictly increasing across the whole run, and exactly the rides of the
/// committed phases: zero skipped, zero phantom. `truth().rides` agrees.
/// Preconditions: a fresh store. A correct phase that loses a race ([`StoreError::Conflict`])
/// counts as rolled back, as the trait allows.
pub async fn concurrent_writers_nothing_skipped_nothing_phantom(f: &dyn StoreFactory) {
    const WRITERS: u64 = 16;
    const PHASES: u64 = 40;
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let done = Arc::new(AtomicBool::new(false));

    let drainer = {
        let outbox = Arc::clone(&sut.outbox);
        let done = Arc::clone(&done);
        tokio::spawn(async move {
            let mut seen = Drained::default();
            loop {
                let finished = done.load(Ordering::SeqCst);
                let batch = outbox
                    .peek(100)
                    .await
                    .unwrap_or_else(|e| panic!("peek under load failed: {e}"));
                if batch.is_empty() {
                    if finished {
                        return seen;
                    }
                    outbox.wait_staged(Duration::from_millis(20)).await;
                    continue;
                }
                let seqs: Vec<u64> = batch.iter().map(|r| r.seq).collect();
                for r in &batch {
                    if let Some(last) = seen.seqs.last() {
                        assert!(
                            *last < r.seq,
                            "outbox returned seq {} after seq {last} was drained (a skip)",
                            r.seq
                        );
                    }
                    seen.seqs.push(r.seq);
                    let id = r.payload["ride_id"]
                        .as_i64()
                        .unwrap_or_else(|| panic!("a staged record without ride_id: {r:?}"));
                    seen.rides.push((r.kind.clone(), id));
                }
                let removed = outbox
                    .remove(&seqs)
                    .await
                    .unwrap_or_else(|e| panic!("remove under load failed: {e}"));
                assert_eq!(
                    removed,
                    seqs.len() as u64,
                    "remove must remove what was peeked"
                );
            }
        })
    };

    let mut writers = Vec::new();
    for w in 0..WRITERS {
        let sut = sut.clone();
        writers.push(tokio::spawn(async move {
            let mut rng = StdRng::seed_from_u64(0x5eed + w);
            let mut created = Vec::new();
            let mut charged = Vec::new();
            for i in 0..PHASES {
                let n = (w * PHASES + i) as u32;
                let req = begin_request(u.id, &key_text("load"), params(n), now_ms());
                // Commit 1 stages `ride.created`; commit 2 `ride.charged` and the receipt,
                // or fails on purpose (wrong recovery point) and rolls back.
                let key = match sut.store.begin(&req).await {
                    Ok(Begun::Proceed(k)) => k,
                    Err(e) if is_conflict(&e) => continue,
                    other => panic!("begin with a unique new key must Proceed, got {other:?}"),
                };
                let ride = ride_for(&sut, key.id).await;
                created.push(ride.id);
                let pause = rng.random_range(0..=3);
                tokio::time::sleep(Duration::from_millis(pause)).await;
                let fail = rng.random_ratio(1, 5);
                let expected = if fail {
                    RecoveryPoint::ChargeCreated
                } else {
                    RecoveryPoint::RideCreated
                };
                let charge = format!("ch_load_{}", ride.id);
                let phase =
                    Phase::charged(&super::fixtures::ride_state(&ride), ride.id, &charge, None)
                        .unwrap_or_else(|e| panic!("charge: {e}"));
                match sut
                    .store
                    .run_phase(key.id, expected, &phase, now_ms())
                    .await
                {
                    Ok(_) if fail => panic!("a phase at the wrong recovery point committed"),
                    Ok(_) => charged.push(ride.id),
                    Err(e) if is_conflict(&e) => {}
                    Err(e) => panic!("a phase under load failed with a non-conflict: {e}"),
                }
            }
            (created, charged)
        }));
    }
    let (mut created, mut charged) = (BTreeSet::new(), BTreeSet::new());
    for w in writers {
        let (c, p) = within("a writer task", w)
            .await
            .unwrap_or_else(|e| panic!("writer task panicked: {e}"));
        created.extend(c);
        charged.extend(p);
    }
    done.store(true, Ordering::SeqCst);
    let drained = within("the drainer", drainer)
        .await
        .unwrap_or_else(|e| panic!("drainer task panicked: {e}"));

    let drained_set: BTreeSet<&(String, i64)> = drained.rides.iter().collect();
    assert_eq!(
        drained_set.len(),
        drained.rides.len(),
        "a ride's record was drained twice"
    );
    for (kind, committed) in [
        (kinds::RIDE_CREATED, &created),
        (kinds::RIDE_CHARGED, &charged),
        (kinds::RECEIPT_REQUESTED, &charged),
    ] {
        let drained_ids: BTreeSet<i64> = drained
            .rides
            .iter()
            .filter(|(k, _)| k == kind)
            .map(|(_, id)| *id)
            .collect();
        let skipped: Vec<_> = committed.difference(&drained_ids).collect();
        let phantom: Vec<_> = drained_ids.difference(committed).collect();
        assert!(
            skipped.is_empty() && phantom.is_empty(),
            "drained {kind} records must match committed phases: \
             skipped {skipped:?}, phantom {phantom:?}"
        );
    }
    assert!(!charged.is_empty(), "no second commit committed at all");
    assert!(!created.is_empty(), "no phase committed at all");
    assert_eq!(
        truth(&sut).await.rides,
        created.len() as u64,
        "truth must count exactly the committed rides"
    );
}

/// Rule: a reopened store (a process killed and restarted) still has its keys, rides, staged
/// records and consumer checkpoints, and keeps sequencing above the seqs it handed out.
/// Preconditions: a fresh store; skipped when the factory's `reopen` returns `None` (memory).
pub async fn store_survives_reopen(f: &dyn StoreFactory) {
    let sut = f.fresh().await;
    let u = user(&sut, USER).await;
    let now = now_ms();
    let (k1, r1) = create_ride(&sut, u.id, params(1), now).await;
    finish(&sut, &k1, &r1, "ch_contract_reopen").await;
    let (k2, r2) = create_ride(&sut, u.id, params(2), now).await;
    let position = crate::Position::new("contract-position-7");
    let state = serde_json::json!({"rides": 2});
    let cursor = crate::Cursor::default();
    sut.consumers
        .save(
            "contract-consumer",
            &crate::Save::new(0, &position, &cursor, &state, now),
        )
        .await
        .unwrap_or_else(|e| panic!("consumer save failed: {e}"));
    let before_keys = (
        key_of(&sut, u.id, &k1.key).await,
        key_of(&sut, u.id, &k2.key).await,
    );
    let before_r1 = sut.store.ride(r1.id).await.ok().flatten();
    assert_eq!(
        before_r1.as_ref().and_then(|r| r.charge_id.as_deref()),
        Some("ch_contract_reopen"),
        "precondition: the first ride is charged"
    );
    let before_staged = peek(&sut, 100).await;
    let before_truth = truth(&sut).await;
    let before_consumer = sut.consumers.load("contract-consumer").await;

    let Some(sut) = f.reopen(sut).await else {
        return;
    };
    assert_eq!(
        (
            key_of(&sut, u.id, &k1.key).await,
            key_of(&sut, u.id, &k2.key).await
        ),
        before_keys,
        "keys lost or changed across a restart"
    );
    assert_eq!(
        sut.store.ride_for_key(k1.id).await,
        Ok(before_r1),
        "a charged ride lost or changed across a restart"
    );
    assert_eq!(
        sut.store.ride(r2.id).await,
        Ok(Some(r2)),
        "ride lost across a restart"
    );
    assert_eq!(
        peek(&sut, 100).await,
        before_staged,
        "staged records lost across a restart"
    );
    assert_eq!(
        truth(&sut).await,
        before_truth,
        "truth changed across a restart"
    );
    assert_eq!(
        sut.consumers.load("contract-consumer").await,
        before_consumer,
        "a consumer checkpoint lost across a restart"
    );

    create_ride(&sut, u.id, params(3), now).await;
    let after = peek(&sut, 100).await;
    let last_before = before_staged.last().map(|r| r.seq).unwrap_or_default();
    assert!(
        after.last().is_some_and(|r| r.seq > last_before),
        "a restarted store must sequence new records above the ones it handed out"
    );
}
