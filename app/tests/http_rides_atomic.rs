//! `POST /rides` under idempotency keys, over real in-memory adapters: every API case of the
//! reference's rocket-rides-atomic suite (seed-behaviour 2.12), plus concurrency, crash
//! recovery and the headers we add (`Idempotent-Replayed`, `Retry-After`).

mod http_common;

use adapters::payment::FakeProcessor;
use app::faults::Faults;
use axum::http::StatusCode;
use domain::RecoveryPoint;
use domain::idempotency::messages;
use http_common::*;
use ports::{Outbox, RideStore};
use serde_json::json;

// ---- idempotency keys and recovery -------------------------------------------------------

#[tokio::test]
async fn passes_for_a_new_key() {
    let h = Harness::new();
    let key = new_key();
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.message(), messages::CREATED);
    assert_eq!(r.header("idempotent-replayed"), None);
    let k = h.key(&key).await.unwrap();
    assert_eq!(k.recovery_point, RecoveryPoint::Finished);
    assert_eq!(k.locked_at_ms, None);
    assert_eq!(h.rides().await, 1);
    assert_eq!(h.payments.charges_made(), 1);
}

#[tokio::test]
async fn returns_a_stored_result_with_the_replay_header() {
    let h = Harness::new();
    let key = new_key();
    h.put_key(&key, finished_with(201, json!({"message": "hello"})))
        .await;
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.message(), "hello");
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(h.rides().await, 0, "a replay runs no phase");
}

#[tokio::test]
async fn a_retry_replays_the_first_response_without_a_second_ride() {
    let h = Harness::new();
    let key = new_key();
    let first = send(&h.router, post_valid(&key)).await;
    let again = send(&h.router, post_valid(&key)).await;
    assert_eq!(first.status, StatusCode::CREATED);
    assert_eq!(again.status, StatusCode::CREATED);
    assert_eq!(again.body, first.body);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(h.rides().await, 1);
    assert_eq!(h.payments.charges_made(), 1);
}

#[tokio::test]
async fn passes_for_keys_that_are_unlocked() {
    let h = Harness::new();
    let key = new_key();
    h.put_key(&key, |k| k.locked_at_ms = None).await;
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.message(), messages::CREATED);
}

#[tokio::test]
async fn passes_for_keys_with_a_stale_lock() {
    let h = Harness::new();
    let key = new_key();
    h.put_key(&key, |k| k.locked_at_ms = Some(T0 - LOCK_TIMEOUT_MS - 1))
        .await;
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.message(), messages::CREATED);
}

#[tokio::test]
async fn stores_results_for_a_permanent_failure() {
    let h = Harness::new();
    let key = new_key();
    let req = post_rides(Some(BAD_SOURCE_USER), Some(&key), VALID_FORM);
    let r = send(&h.router, req).await;
    assert_eq!(r.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(
        r.error(),
        "Error from payment processor: Your card was declined."
    );
    let k = h.store.key(2, &key).await.unwrap().unwrap();
    assert_eq!(k.recovery_point, RecoveryPoint::Finished);
    assert_eq!(k.response.as_ref().map(|r| r.status), Some(402));
    // The stored failure is replayed, and the ride's decline was staged.
    let again = send(
        &h.router,
        post_rides(Some(BAD_SOURCE_USER), Some(&key), VALID_FORM),
    )
    .await;
    assert_eq!(again.status, StatusCode::PAYMENT_REQUIRED);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    let kinds: Vec<String> = h
        .store
        .peek(100)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.kind)
        .collect();
    assert_eq!(kinds, ["ride.created", "ride.declined"]);
}

#[tokio::test]
async fn stores_a_processor_error_as_a_final_503() {
    let h = Harness::with(Faults::none(), FakeProcessor::new(1.0, 1), None);
    let key = new_key();
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.error(), messages::PROCESSOR_ERROR);
    let again = send(&h.router, post_valid(&key)).await;
    assert_eq!(again.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(again.header("idempotent-replayed"), Some("true"));
    assert_eq!(h.payments.charges_made(), 0);
}

// ---- atomic phases and recovery points ---------------------------------------------------

#[tokio::test]
async fn continues_from_started() {
    let h = Harness::new();
    let key = new_key();
    h.put_key(&key, |k| k.recovery_point = RecoveryPoint::Started)
        .await;
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(h.rides().await, 1);
    assert_eq!(h.payments.charges_made(), 1);
}

#[tokio::test]
async fn continues_from_ride_created() {
    let h = Harness::new();
    let key = new_key();
    let k = h.put_key(&key, |_| {}).await;
    h.advance_to_ride_created(&k).await;
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(h.rides().await, 1, "the pre-inserted ride is reused");
    assert_eq!(h.payments.charges_made(), 1);
    let ride = h.store.ride_for_key(k.id).await.unwrap().unwrap();
    assert!(ride.charge_id.is_some());
}

#[tokio::test]
async fn continues_from_charge_created() {
    let h = Harness::new();
    let key = new_key();
    let k = h.put_key(&key, |_| {}).await;
    let k = h.advance_to_ride_created(&k).await;
    h.advance_to_charge_created(&k).await;
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(h.payments.charges_made(), 0, "the charge was already made");
    assert_eq!(
        h.key(&key).await.unwrap().recovery_point,
        RecoveryPoint::Finished
    );
}

// ---- failure -----------------------------------------------------------------------------

#[tokio::test]
async fn denies_requests_that_are_missing_authentication() {
    let h = Harness::new();
    for auth in [Some(""), None] {
        let r = send(&h.router, post_rides(auth, Some(&new_key()), VALID_FORM)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED);
        assert_eq!(r.error(), messages::AUTH_REQUIRED);
    }
}

#[tokio::test]
async fn denies_requests_with_invalid_authentication() {
    let h = Harness::new();
    let r = send(
        &h.router,
        post_rides(Some("bad-user@example.com"), Some(&new_key()), VALID_FORM),
    )
    .await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    assert_eq!(r.error(), messages::AUTH_INVALID);
}

#[tokio::test]
async fn denies_requests_that_are_missing_a_key() {
    let h = Harness::new();
    for key in [Some(""), None] {
        let r = send(&h.router, post_rides(Some(USER), key, VALID_FORM)).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST);
        assert_eq!(r.error(), messages::KEY_REQUIRED);
    }
}

#[tokio::test]
async fn denies_requests_that_have_a_key_thats_too_short() {
    let h = Harness::new();
    let r = send(&h.router, post_rides(Some(USER), Some("xxx"), VALID_FORM)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error(), messages::KEY_TOO_SHORT);
}

#[tokio::test]
async fn denies_requests_that_have_a_key_thats_too_long() {
    let h = Harness::new();
    let long = "x".repeat(101);
    let r = send(&h.router, post_rides(Some(USER), Some(&long), VALID_FORM)).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.error(), messages::KEY_TOO_LONG);
    let ok = "x".repeat(100);
    let r = send(&h.router, post_rides(Some(USER), Some(&ok), VALID_FORM)).await;
    assert_eq!(r.status, StatusCode::CREATED, "100 characters are fine");
}

#[tokio::test]
async fn denies_requests_that_are_missing_parameters() {
    let h = Harness::new();
    let key = new_key();
    let r = send(&h.router, post_rides(Some(USER), Some(&key), "")).await;
    assert_eq!(r.status, StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(r.error(), "Please specify parameter 'origin_lat'.");
    assert!(h.key(&key).await.is_none(), "validation touches no key");
}

#[tokio::test]
async fn validation_follows_the_reference_order() {
    let h = Harness::new();
    // Credentials first, then the key, then the parameters.
    let r = send(&h.router, post_rides(None, Some("xxx"), "origin_lat=foo")).await;
    assert_eq!(r.error(), messages::AUTH_REQUIRED);
    let r = send(
        &h.router,
        post_rides(Some(USER), Some("xxx"), "origin_lat=foo"),
    )
    .await;
    assert_eq!(r.error(), messages::KEY_TOO_SHORT);
    let r = send(
        &h.router,
        post_rides(Some(USER), Some(&new_key()), "origin_lat=foo"),
    )
    .await;
    assert_eq!(
        r.error(),
        "Parameter 'origin_lat' must be a floating-point number."
    );
}

#[tokio::test]
async fn denies_requests_where_parameters_dont_match_on_an_existing_key() {
    let h = Harness::new();
    let key = new_key();
    h.put_key(&key, |_| {}).await;
    let form = "origin_lat=10.0&origin_lon=0.0&target_lat=0.0&target_lon=0.0";
    let r = send(&h.router, post_rides(Some(USER), Some(&key), form)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error(), messages::PARAMS_MISMATCH);
}

#[tokio::test]
async fn equal_floats_written_differently_match_the_stored_params() {
    let h = Harness::new();
    let key = new_key();
    h.put_key(&key, |_| {}).await;
    let form = "origin_lat=0&origin_lon=0.00&target_lat=-0&target_lon=0e0";
    let r = send(&h.router, post_rides(Some(USER), Some(&key), form)).await;
    assert_eq!(r.status, StatusCode::CREATED);
}

#[tokio::test]
async fn denies_requests_that_have_an_equivalent_in_flight() {
    let h = Harness::new();
    let key = new_key();
    h.put_key(&key, |k| k.locked_at_ms = Some(T0)).await;
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error(), messages::IN_PROGRESS);
    assert_eq!(r.header("retry-after"), Some("90"));
    h.clock.advance(60_000);
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(
        r.header("retry-after"),
        Some("30"),
        "the remaining lock time"
    );
    assert_eq!(
        h.key(&key).await.unwrap().locked_at_ms,
        Some(T0),
        "the lock is untouched"
    );
}

#[tokio::test]
async fn unlocks_a_key_and_returns_409_on_a_serialization_failure() {
    let h = Harness::with(
        Faults::none(),
        FakeProcessor::default(),
        Some(FailingStore::conflict),
    );
    let key = new_key();
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error(), messages::CONFLICT);
    let k = h.key(&key).await.unwrap();
    assert_eq!(k.locked_at_ms, None, "the key was unlocked");
    assert_eq!(k.recovery_point, RecoveryPoint::RideCreated);
}

#[tokio::test]
async fn unlocks_a_key_and_returns_500_on_an_internal_error() {
    let h = Harness::with(
        Faults::none(),
        FakeProcessor::default(),
        Some(FailingStore::internal),
    );
    let key = new_key();
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.error(), messages::INTERNAL);
    let k = h.key(&key).await.unwrap();
    assert_eq!(k.locked_at_ms, None, "the key was unlocked");
    assert_eq!(k.recovery_point, RecoveryPoint::RideCreated);
}

#[tokio::test]
async fn raise_error_fails_with_500_and_a_retry_without_it_succeeds() {
    let h = Harness::new();
    let key = new_key();
    let form = format!("{VALID_FORM}&raise_error=true");
    let r = send(&h.router, post_rides(Some(USER), Some(&key), &form)).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.error(), messages::INTERNAL);
    let k = h.key(&key).await.unwrap();
    assert_eq!(k.locked_at_ms, None);
    assert_eq!(k.recovery_point, RecoveryPoint::RideCreated);
    assert_eq!(h.payments.charges_made(), 0);

    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::CREATED, "raise_error is not stored");
    assert_eq!(h.rides().await, 1);
    assert_eq!(h.payments.charges_made(), 1);
}

// ---- concurrency and crashes -------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_with_one_key_make_one_ride_and_one_charge() {
    let h = Harness::new();
    let key = new_key();
    let mut tasks = Vec::new();
    for _ in 0..16 {
        let router = h.router.clone();
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            send(&router, post_valid(&key)).await
        }));
    }
    let mut created = 0;
    for t in tasks {
        let r = t.await.unwrap();
        assert!(
            r.status == StatusCode::CREATED || r.status == StatusCode::CONFLICT,
            "unexpected {r:?}"
        );
        if r.status == StatusCode::CREATED {
            created += 1;
        }
    }
    assert!(created >= 1, "at least one request finished the key");
    assert_eq!(h.rides().await, 1);
    assert_eq!(h.payments.charges_made(), 1);
}

#[tokio::test]
async fn a_client_that_disconnects_mid_request_does_not_abort_its_phases() {
    let h = Harness::with(
        Faults::none(),
        FakeProcessor::default(),
        Some(FailingStore::slow),
    );
    let key = new_key();
    let request = {
        let router = h.router.clone();
        let key = key.clone();
        tokio::spawn(async move { send(&router, post_valid(&key)).await })
    };
    // The request is inside its charge's commit (300 ms) when the client goes away: the
    // server drops the handler's future, as aborting this task does.
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    request.abort();
    tokio::time::sleep(std::time::Duration::from_millis(800)).await;
    let k = h.key(&key).await.unwrap();
    assert_eq!(
        (k.recovery_point, k.locked_at_ms),
        (RecoveryPoint::Finished, None),
        "a request that started runs to its end"
    );
    // So a retry gets the stored result at once.
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.header("idempotent-replayed"), Some("true"));
    assert_eq!(h.payments.charges_made(), 1);
}

#[tokio::test]
async fn a_request_that_crashed_after_its_charge_is_finished_by_a_client_retry() {
    let h = Harness::with(always_crash(), FakeProcessor::default(), None);
    let key = new_key();
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.error(), messages::INTERNAL);
    let k = h.key(&key).await.unwrap();
    // Charged at the processor, but the commit that records the charge never happened.
    assert_eq!(k.recovery_point, RecoveryPoint::RideCreated);
    assert_eq!(k.locked_at_ms, Some(T0), "a crashed process cannot unlock");
    assert_eq!(h.payments.charges_made(), 1);

    // While the lock is fresh, a retry is told to wait.
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::CONFLICT);
    assert_eq!(r.error(), messages::IN_PROGRESS);

    // Once the lock expired, a retry (against the restarted process) finishes the key.
    h.clock.advance(LOCK_TIMEOUT_MS + 1);
    let restarted = h.restarted(Faults::none());
    let r = send(&restarted, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.message(), messages::CREATED);
    assert_eq!(
        h.payments.charges_made(),
        1,
        "the retry's charge with the same processor key is the first charge"
    );
    assert_eq!(h.rides().await, 1);
    let k = h.key(&key).await.unwrap();
    assert_eq!(k.recovery_point, RecoveryPoint::Finished);
    assert_eq!(k.locked_at_ms, None);
}

#[tokio::test]
async fn a_retry_of_a_crashed_request_in_the_same_process_also_finishes_it() {
    // The crash fault only fires on a key's first run, so even a process that crashes every
    // request lets a retry (or the completer) through.
    let h = Harness::with(always_crash(), FakeProcessor::default(), None);
    let key = new_key();
    assert_eq!(
        send(&h.router, post_valid(&key)).await.status,
        StatusCode::INTERNAL_SERVER_ERROR
    );
    h.clock.advance(LOCK_TIMEOUT_MS + 1);
    let r = send(&h.router, post_valid(&key)).await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(h.payments.charges_made(), 1);
}
