//! Shared fixtures of the contract suites: record builders, store shortcuts and time bounds.
//!
//! Every suite builds its data here, so that a scenario reads as the rule it checks and no
//! backend ever gets its own copy of a fixture.

use std::future::Future;
use std::time::Duration;

use domain::{
    IdempotencyKey, KeyRecord, LogRecord, NewRecord, Phase, RecoveryPoint, Ride, RideEvent,
    RideParams, StoredResponse, Thresholds, record::RIDES_STREAM, record::kinds,
};
use uuid::Uuid;

use super::StoreUnderTest;
use crate::{BeginRequest, Begun, Clock, RideRow, StoreError, SystemClock, User};

/// The reference user whose card is accepted.
pub const USER: &str = "user@example.com";
/// The reference user whose card is declined.
pub const BAD_SOURCE_USER: &str = "user-bad-source@example.com";
/// The processor's message for a declined card (reference section 2.12).
pub const DECLINED_MESSAGE: &str = "Your card was declined.";

/// The upper bound of any single wait in a scenario (a read that should wake, a join).
pub const WAIT_LIMIT: Duration = Duration::from_secs(20);
/// The upper bound of a whole scenario, so that a broken adapter fails instead of hanging.
pub const SCENARIO_LIMIT: Duration = Duration::from_secs(180);

/// Now, in ms since the Unix epoch.
pub fn now_ms() -> i64 {
    SystemClock.now_ms()
}

/// Awaits `fut`, panicking with `what` when it takes longer than [`WAIT_LIMIT`].
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    match tokio::time::timeout(WAIT_LIMIT, fut).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: no answer within {WAIT_LIMIT:?} (a wait that never ends)"),
    }
}

/// Runs a whole scenario under [`SCENARIO_LIMIT`]; used by the test macros.
pub async fn bounded(scenario: &str, fut: impl Future<Output = ()>) {
    if tokio::time::timeout(SCENARIO_LIMIT, fut).await.is_err() {
        panic!("scenario {scenario} did not finish within {SCENARIO_LIMIT:?}");
    }
}

/// A unique name with a readable tag, e.g. for consumers, producers and keys.
pub fn unique(tag: &str) -> String {
    format!("contract-{tag}-{}", Uuid::new_v4().simple())
}

/// A staged `ride.created` record for `ride_id` (the envelope a store would build).
pub fn ride_created(ride_id: i64, distance_mm: u64) -> NewRecord {
    NewRecord {
        id: Uuid::new_v4(),
        stream: RIDES_STREAM.to_owned(),
        key: format!("ride:{ride_id}"),
        kind: kinds::RIDE_CREATED.to_owned(),
        payload: serde_json::json!({"ride_id": ride_id, "user_id": 1, "distance_mm": distance_mm}),
        correlation_id: None,
        causation_id: None,
        recorded_at_ms: 1_700_000_000_000 + ride_id,
    }
}

/// The distance of the fixture ride `ride_id`: distinct per ride, so sums catch a double count.
pub fn fixture_distance(ride_id: i64) -> u64 {
    1_000 + ride_id.unsigned_abs() * 7
}

/// `count` sequenced `ride.created` records of `producer`, seqs `first..first + count`, ride
/// ids equal to the seqs.
pub fn rides(producer: &str, first: u64, count: u64) -> Vec<LogRecord> {
    (first..first + count)
        .map(|seq| {
            let ride_id = seq as i64;
            ride_created(ride_id, fixture_distance(ride_id)).sequenced(producer, seq)
        })
        .collect()
}

/// Sum of the fixture distances of `records`.
pub fn distance_of(records: &[LogRecord]) -> u64 {
    records
        .iter()
        .map(|r| r.payload["distance_mm"].as_u64().unwrap_or_default())
        .sum()
}

/// Ride parameters whose distance grows with `n` (n = 0 is about 1.1 km).
pub fn params(n: u32) -> RideParams {
    let lon = 0.01 + f64::from(n % 10_000) * 0.0001;
    RideParams::new(0.0, 0.0, 0.0, lon).unwrap_or_else(|e| panic!("fixture params {n}: {e}"))
}

/// A ride row as a store holds it, for the replica contract: ride `id` of `user_id`,
/// uncharged, with its key `id + 100_000`, parameters [`params`] and distance
/// [`fixture_distance`] of the id, created at `1_700_000_000_000 + id`.
pub fn ride_row(id: i64, user_id: i64) -> RideRow {
    RideRow {
        id,
        user_id,
        idempotency_key_id: Some(id + 100_000),
        params: params(u32::try_from(id.rem_euclid(10_000)).unwrap_or_default()),
        distance_mm: fixture_distance(id),
        charge_id: None,
        created_at_ms: 1_700_000_000_000 + id,
    }
}

/// A fresh key text (between 20 and 100 characters).
pub fn key_text(tag: &str) -> String {
    unique(tag)
}

/// A phase-1 request of `user_id` for key `key` at `now_ms`, with the reference thresholds.
pub fn begin_request(user_id: i64, key: &str, params: RideParams, now_ms: i64) -> BeginRequest {
    BeginRequest {
        user_id,
        key: IdempotencyKey::parse(Some(key))
            .unwrap_or_else(|e| panic!("fixture key {key:?} is invalid: {e}")),
        params,
        method: "POST".into(),
        path: "/rides".into(),
        now_ms,
        thresholds: Thresholds::default(),
        origin_ip: "127.0.0.1".into(),
        correlation: None,
    }
}

/// A key as the reference specs create it (unlocked, at `started`, POST /rides), for
/// [`crate::RideStore::put_key`]; adjust the fields the scenario is about.
pub fn key_fixture(user_id: i64, key: &str, params: RideParams, now_ms: i64) -> KeyRecord {
    KeyRecord {
        id: 0,
        user_id,
        key: key.to_owned(),
        created_at_ms: now_ms,
        last_run_at_ms: now_ms,
        locked_at_ms: None,
        request_method: "POST".into(),
        request_path: "/rides".into(),
        request_params: params,
        recovery_point: RecoveryPoint::Started,
        response: None,
        ride_id: None,
    }
}

/// The finished response of reference 2.12 "returns a stored result".
pub fn hello_response() -> StoredResponse {
    StoredResponse {
        status: 201,
        body: serde_json::json!({"message": "hello"}),
    }
}

/// A reference user, which every fresh store holds.
pub async fn user(sut: &StoreUnderTest, email: &str) -> User {
    sut.store
        .user_by_email(email)
        .await
        .unwrap_or_else(|e| panic!("user_by_email({email}) failed: {e}"))
        .unwrap_or_else(|| panic!("a fresh store must hold the reference user {email}"))
}

/// Runs phase 1 and expects `Proceed`.
pub async fn proceed(sut: &StoreUnderTest, req: &BeginRequest) -> KeyRecord {
    match sut.store.begin(req).await {
        Ok(Begun::Proceed(k)) => k,
        other => panic!("begin with a new or resumable key must Proceed, got {other:?}"),
    }
}

/// Phase 1 with a new key at `now_ms` (commit 1 of a ride): returns the key (at
/// `ride_created`) and its ride.
pub async fn create_ride(
    sut: &StoreUnderTest,
    user_id: i64,
    params: RideParams,
    now_ms: i64,
) -> (KeyRecord, RideRow) {
    let key = proceed(
        sut,
        &begin_request(user_id, &key_text("ride"), params, now_ms),
    )
    .await;
    assert_eq!(
        key.recovery_point,
        RecoveryPoint::RideCreated,
        "begin with a new key must create its ride in the same transaction"
    );
    let ride = ride_for(sut, key.id).await;
    (key, ride)
}

/// The ride of a key, which must exist.
pub async fn ride_for(sut: &StoreUnderTest, key_id: i64) -> RideRow {
    sut.store
        .ride_for_key(key_id)
        .await
        .unwrap_or_else(|e| panic!("ride_for_key({key_id}) failed: {e}"))
        .unwrap_or_else(|| panic!("a committed create_ride phase must leave a ride for its key"))
}

/// Pushes a key at `ride_created` through the charge's commit (commit 2) to `finished`.
pub async fn finish(sut: &StoreUnderTest, key: &KeyRecord, ride: &RideRow, charge_id: &str) {
    let now = now_ms();
    let charged = Phase::charged(&ride_state(ride), ride.id, charge_id, None)
        .unwrap_or_else(|e| panic!("a ride awaiting payment can be charged: {e}"));
    sut.store
        .run_phase(key.id, RecoveryPoint::RideCreated, &charged, now)
        .await
        .unwrap_or_else(|e| panic!("charged phase from `ride_created` must commit: {e}"));
}

/// The ride aggregate of an uncharged ride row.
pub fn ride_state(ride: &RideRow) -> Ride {
    Ride::from_events(&[RideEvent::Requested {
        user_id: ride.user_id,
        distance_mm: ride.distance_mm,
    }])
}

/// Whether `e` is a conflict (the outcome a lost race or a wrong recovery point must give).
pub fn is_conflict(e: &StoreError) -> bool {
    matches!(e, StoreError::Conflict(_))
}
