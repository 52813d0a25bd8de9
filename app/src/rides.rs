//! The ride service: runs a `POST /rides` through its atomic phases.
//!
//! This is the reference's request handler without HTTP (seed-behaviour 2.3–2.5), so that the
//! API and the completer share one code path ("the completer reuses the exact API code path").
//!
//! ```text
//!  begin (commit 1) ─┬─ Replay ───────────────▶ stored reply, replayed
//!                    ├─ Mismatch / InProgress ▶ 409 (key untouched)
//!                    └─ Proceed (key, ride, ride.created; key at ride_created) ─▶ loop:
//!                         ride_created   ─ charge (processor) ─ commit 2 ─▶ finished 201/402/503
//!                         charge_created ─ stage receipt (keys of older versions) ─▶ finished 201
//!                         finished       ─ answer the stored response
//! ```
//!
//! Two commits per ride: only the processor call sits between them.
//!
//! # Design choices
//!
//! - **Every outcome is a reply.** [`RideService::create_ride`] never returns an error: the
//!   HTTP layer only turns an [`ApiReply`] into a response, and the completer only logs it.
//! - **Errors unlock, crashes do not.** A [`StoreError::Conflict`] from any phase answers 409
//!   and any other error answers 500; both release the key's lock (errors while unlocking are
//!   logged and swallowed, as in the reference). A simulated crash (fault injection) answers
//!   500 *without* unlocking: a crashed process cannot unlock, so the lock expires after the
//!   lock timeout and a client retry or the completer finishes the key.
//! - **The processor is called with the key's processor-side idempotency key**
//!   ([`KeyRecord::processor_key`]), so a charge phase that is retried after its commit failed
//!   never charges twice.
//! - `raise_error` is not stored with the key: a retry without it (or the completer) succeeds.

use std::sync::Arc;
use std::time::Duration;

use domain::idempotency::{RIDE_CHARGE_CENTS, RIDE_CHARGE_CURRENCY, messages};
use domain::{
    IdempotencyKey, KeyRecord, NextPhase, Phase, Ride, RideEvent, RideRequest, StoredResponse,
    Thresholds,
};
use ports::{
    BeginRequest, Begun, ChargeRequest, Clock, PaymentError, PaymentGateway, RideRow, RideStore,
    StoreError, User,
};
use serde_json::json;
use uuid::Uuid;

use crate::faults::Faults;

/// Settings of the ride service.
#[derive(Debug, Clone)]
pub struct RideServiceConfig {
    /// Lock timeout and friends (the lock timeout decides `InProgress` and `Retry-After`).
    pub thresholds: Thresholds,
    /// Fault injection; the service asks [`Faults::api_crash`] after a charge.
    pub faults: Arc<Faults>,
}

impl Default for RideServiceConfig {
    /// The reference thresholds and no faults.
    fn default() -> Self {
        Self {
            thresholds: Thresholds::default(),
            faults: Arc::new(Faults::none()),
        }
    }
}

/// The outcome of a request, ready to be sent by any transport.
#[derive(Debug, Clone, PartialEq)]
pub struct ApiReply {
    /// HTTP status code.
    pub status: u16,
    /// JSON body: `{"message": ...}` on success, `{"error": ...}` otherwise.
    pub body: serde_json::Value,
    /// Whether this is the stored response of a finished key (`Idempotent-Replayed: true`).
    pub replayed: bool,
    /// Seconds after which a retry may succeed (`Retry-After`, on the in-progress 409).
    pub retry_after_s: Option<u64>,
}

impl ApiReply {
    /// An error reply `{"error": message}`.
    pub fn error(status: u16, message: &str) -> Self {
        Self {
            status,
            body: json!({ "error": message }),
            replayed: false,
            retry_after_s: None,
        }
    }

    fn stored(resp: StoredResponse, replayed: bool) -> Self {
        Self {
            status: resp.status,
            body: resp.body,
            replayed,
            retry_after_s: None,
        }
    }

    fn internal() -> Self {
        Self::error(500, messages::INTERNAL)
    }
}

/// Why a request stopped before its final response.
#[derive(Debug)]
enum Failure {
    /// A concurrent request won: 409, unlock.
    Conflict(String),
    /// Anything else: 500, unlock.
    Internal(String),
    /// A simulated process crash: 500, the lock stays.
    Crashed,
}

impl From<StoreError> for Failure {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Conflict(m) => Self::Conflict(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

/// Runs ride requests through their atomic phases.
pub struct RideService {
    store: Arc<dyn RideStore>,
    payments: Arc<dyn PaymentGateway>,
    clock: Arc<dyn Clock>,
    config: RideServiceConfig,
    metrics: Arc<crate::metrics::Metrics>,
    /// Direct publishing (`--publish direct`): told after every phase that staged records.
    publisher: Option<Arc<crate::services::publisher::DirectPublisher>>,
}

impl std::fmt::Debug for RideService {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RideService")
            .field("store", &self.store.describe())
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl RideService {
    /// A service over these ports.
    pub fn new(
        store: Arc<dyn RideStore>,
        payments: Arc<dyn PaymentGateway>,
        clock: Arc<dyn Clock>,
        config: RideServiceConfig,
    ) -> Self {
        Self {
            store,
            payments,
            clock,
            config,
            metrics: Arc::new(crate::metrics::Metrics::new()),
            publisher: None,
        }
    }

    /// Records phase durations and conflicts in `metrics` (the process's shared metrics; the
    /// API's `GET /metrics` encodes the ride service's).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// The metrics this service records in.
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        &self.metrics
    }

    /// Publishes each phase's staged records right after its commit (`--publish direct`,
    /// see [`crate::services::publisher`]).
    pub fn with_publisher(
        mut self,
        publisher: Arc<crate::services::publisher::DirectPublisher>,
    ) -> Self {
        self.publisher = Some(publisher);
        self
    }

    /// The service's settings.
    pub fn config(&self) -> &RideServiceConfig {
        &self.config
    }

    /// Handles `POST /rides` for an authenticated user with a validated key and request.
    ///
    /// Never fails: every outcome, including store and processor failures, is an [`ApiReply`]
    /// with the reference's status and message.
    #[tracing::instrument(
        skip_all,
        fields(user = user.id, key = %key.as_str(), correlation = tracing::field::Empty)
    )]
    pub async fn create_ride(
        &self,
        user: &User,
        key: &IdempotencyKey,
        request: &RideRequest,
        origin_ip: &str,
    ) -> ApiReply {
        let correlation = Uuid::new_v4();
        tracing::Span::current().record("correlation", tracing::field::display(correlation));
        let begin = BeginRequest {
            user_id: user.id,
            key: key.clone(),
            params: request.params,
            method: "POST".into(),
            path: "/rides".into(),
            now_ms: self.clock.now_ms(),
            thresholds: self.config.thresholds,
            origin_ip: origin_ip.to_owned(),
            correlation: Some(correlation),
        };
        let started = std::time::Instant::now();
        let begun = self.store.begin(&begin).await;
        self.metrics.phase("begin", started.elapsed());
        if matches!(begun, Err(StoreError::Conflict(_))) {
            self.metrics.phase_conflict("begin");
        }
        let record = match begun {
            Ok(Begun::Proceed(record)) => record,
            Ok(Begun::Replay(resp)) => {
                tracing::debug!(status = resp.status, "replaying a finished key");
                return ApiReply::stored(resp, true);
            }
            Ok(Begun::Mismatch) => return ApiReply::error(409, messages::PARAMS_MISMATCH),
            Ok(Begun::InProgress) => {
                let mut reply = ApiReply::error(409, messages::IN_PROGRESS);
                reply.retry_after_s = Some(self.retry_after_s(user.id, key).await);
                return reply;
            }
            // Phase 1 failed: no key of ours to unlock (reference 2.4).
            Err(StoreError::Conflict(m)) => {
                tracing::info!(reason = %m, "conflict while taking the key");
                return ApiReply::error(409, messages::CONFLICT);
            }
            Err(e) => {
                tracing::error!(error = %e, "phase 1 failed");
                return ApiReply::internal();
            }
        };
        let key_id = record.id;
        match self
            .drive(record, user, request.raise_error, origin_ip, correlation)
            .await
        {
            Ok(resp) => ApiReply::stored(resp, false),
            Err(Failure::Crashed) => {
                // Logged at INFO with a `fault` field by the injector.
                tracing::debug!(key_id, "simulated API crash: the key stays locked");
                ApiReply::internal()
            }
            Err(Failure::Conflict(m)) => {
                tracing::info!(key_id, reason = %m, "conflict in an atomic phase");
                self.unlock(key_id).await;
                ApiReply::error(409, messages::CONFLICT)
            }
            Err(Failure::Internal(m)) => {
                tracing::error!(key_id, error = %m, "atomic phase failed");
                self.unlock(key_id).await;
                ApiReply::internal()
            }
        }
    }

    /// The completer's entry point: pushes an abandoned key through the same code path as
    /// [`RideService::create_ride`], with the key's stored parameters (`raise_error` off,
    /// origin `127.0.0.1`).
    pub async fn complete(&self, key: &KeyRecord, user: &User) -> ApiReply {
        let Ok(idempotency_key) = IdempotencyKey::parse(Some(&key.key)) else {
            tracing::error!(key_id = key.id, "stored key text is not a valid key");
            return ApiReply::internal();
        };
        let request = RideRequest {
            params: key.request_params,
            raise_error: false,
        };
        self.create_ride(user, &idempotency_key, &request, "127.0.0.1")
            .await
    }

    /// Runs phases from the key's recovery point until a response is stored.
    async fn drive(
        &self,
        mut record: KeyRecord,
        user: &User,
        raise_error: bool,
        origin_ip: &str,
        correlation: Uuid,
    ) -> Result<StoredResponse, Failure> {
        let corr = Some(correlation);
        // Only a key's first run rolls the crash dice, so a retry or the completer always
        // gets through (a resumed key's `last_run_at` is later than its creation).
        let first_run = record.last_run_at_ms == record.created_at_ms;
        loop {
            let next = record.next_phase();
            let name = match &next {
                NextPhase::Respond(_) => "respond",
                NextPhase::CreateRide => "create_ride",
                NextPhase::Charge => "charge",
                NextPhase::StageReceipt => "stage_receipt",
            };
            let started = std::time::Instant::now();
            let phase = match next {
                NextPhase::Respond(resp) => return Ok(resp),
                NextPhase::CreateRide => Phase::create_ride(&record, origin_ip, corr)
                    .map_err(|e| Failure::Internal(format!("Bug! {e}")))?,
                NextPhase::Charge => {
                    let phase = self.charge(&record, user, raise_error, corr).await?;
                    // Fault injection point: the process "dies" after its charge and before
                    // the commit that records it. The retry or the completer charges again
                    // with the same processor key and gets the same charge.
                    if first_run && self.config.faults.api_crash() {
                        return Err(Failure::Crashed);
                    }
                    phase
                }
                NextPhase::StageReceipt => {
                    let ride = self.ride_for(&record).await?;
                    Phase::receipt(&record, ride.id, corr)
                }
            };
            let expected = record.recovery_point;
            let ran = self
                .store
                .run_phase(record.id, expected, &phase, self.clock.now_ms())
                .await;
            self.metrics.phase(name, started.elapsed());
            record = ran.map_err(|e| {
                if matches!(e, StoreError::Conflict(_)) {
                    self.metrics.phase_conflict(name);
                }
                Failure::from(e)
            })?;
            if let Some(publisher) = self
                .publisher
                .as_ref()
                .filter(|_| !phase.records.is_empty())
            {
                publisher.committed();
            }
            tracing::debug!(
                key_id = record.id,
                recovery_point = record.recovery_point.as_str(),
                "atomic phase committed"
            );
        }
    }

    /// `ride_created`: calls the processor and returns the phase that records its outcome.
    async fn charge(
        &self,
        record: &KeyRecord,
        user: &User,
        raise_error: bool,
        corr: Option<Uuid>,
    ) -> Result<Phase, Failure> {
        // The key knows its unpaid ride when this version created it; older keys look it up.
        let (ride_id, ride) = match record.ride_awaiting_payment() {
            Some(known) => known,
            None => {
                let row = self.ride_for(record).await?;
                (row.id, ride_state(&row))
            }
        };
        if raise_error {
            return Err(Failure::Internal(
                "raise_error was requested: failing the charge phase".into(),
            ));
        }
        let req = ChargeRequest {
            idempotency_key: record.processor_key(),
            customer: user.email.clone(),
            amount_cents: RIDE_CHARGE_CENTS,
            currency: RIDE_CHARGE_CURRENCY.into(),
            description: format!("Charge for ride {ride_id}"),
        };
        let refused = |e: domain::RideError| {
            Failure::Internal(format!("ride {ride_id} cannot record its payment: {e}"))
        };
        match self.payments.charge(&req).await {
            Ok(charge) => Phase::charged(&ride, ride_id, &charge.id, corr).map_err(refused),
            Err(PaymentError::CardDeclined(m)) => {
                Phase::declined(&ride, ride_id, &m, corr).map_err(refused)
            }
            Err(PaymentError::Processor(m)) => {
                tracing::warn!(error = %m, "payment processor error (stored as a final 503)");
                Ok(Phase::processor_error(ride_id))
            }
            Err(e @ PaymentError::Unavailable(_)) => Err(Failure::Internal(e.to_string())),
        }
    }

    /// The ride created for the key; its absence past `started` is a bug (500).
    async fn ride_for(&self, record: &KeyRecord) -> Result<RideRow, Failure> {
        self.store.ride_for_key(record.id).await?.ok_or_else(|| {
            Failure::Internal(format!(
                "Bug! Should have ride for key at {}.",
                record.recovery_point.as_str()
            ))
        })
    }

    /// Releases the key's lock after a failed phase. When the store cannot be reached (the
    /// phase probably failed for that reason too), the unlock is retried in the background
    /// with back-off (100 ms doubling to 5 s) until the store answers, for at most half the
    /// lock timeout: a client's retry then gets the key at once instead of a 409 until the
    /// lock expires. It stops well before the lock could expire and be taken by another
    /// request, so a late unlock never releases someone else's lock.
    async fn unlock(&self, key_id: i64) {
        let Err(e) = self.store.unlock(key_id).await else {
            return;
        };
        if !e.retryable() {
            tracing::error!(key_id, error = %e, "Failed to unlock key {key_id}.");
            return;
        }
        tracing::warn!(key_id, error = %e, "could not unlock the key: retrying until the store is back");
        let store = self.store.clone();
        let give_up = Duration::from_millis(
            u64::try_from(self.config.thresholds.lock_timeout_ms / 2).unwrap_or(0),
        );
        tokio::spawn(async move {
            let started = tokio::time::Instant::now();
            let mut wait = Duration::from_millis(100);
            while started.elapsed() + wait < give_up {
                tokio::time::sleep(wait).await;
                match store.unlock(key_id).await {
                    Ok(()) => {
                        tracing::info!(key_id, "key unlocked after the store came back");
                        return;
                    }
                    Err(e) if e.retryable() => wait = (wait * 2).min(Duration::from_secs(5)),
                    Err(e) => {
                        tracing::error!(key_id, error = %e, "Failed to unlock key {key_id}.");
                        return;
                    }
                }
            }
            tracing::error!(
                key_id,
                "Failed to unlock key {key_id}: the store stayed unavailable; the lock expires on its own"
            );
        });
    }

    /// Seconds until the lock holding `key` expires (at least 1).
    async fn retry_after_s(&self, user_id: i64, key: &IdempotencyKey) -> u64 {
        let now = self.clock.now_ms();
        let timeout = self.config.thresholds.lock_timeout_ms;
        match self.store.key(user_id, key.as_str()).await {
            Ok(Some(KeyRecord {
                locked_at_ms: Some(at),
                ..
            })) => {
                let remaining_ms = (at + timeout - now).max(0);
                u64::try_from((remaining_ms + 999) / 1000)
                    .unwrap_or(1)
                    .max(1)
            }
            _ => 1,
        }
    }
}

/// The ride aggregate as the ride row describes it.
fn ride_state(row: &RideRow) -> Ride {
    let mut events = vec![RideEvent::Requested {
        user_id: row.user_id,
        distance_mm: row.distance_mm,
    }];
    if let Some(charge_id) = &row.charge_id {
        events.push(RideEvent::Charged {
            charge_id: charge_id.clone(),
        });
    }
    Ride::from_events(&events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{RecoveryPoint, RideParams};
    use mockall::predicate::eq;
    use ports::{Charge, ManualClock};

    use crate::faults::FaultConfig;
    use crate::services::mocks::MockStore;

    use ports::MockPaymentGateway as MockPayments;

    const KEY_ID: i64 = 42;

    fn user() -> User {
        User {
            id: 1,
            email: "user@example.com".into(),
        }
    }

    fn key_text() -> IdempotencyKey {
        IdempotencyKey::parse(Some("0123456789abcdefghij")).unwrap()
    }

    fn params() -> RideParams {
        RideParams::new(0.0, 0.0, 0.0, 0.0).unwrap()
    }

    fn record(rp: RecoveryPoint) -> KeyRecord {
        KeyRecord {
            id: KEY_ID,
            user_id: 1,
            key: key_text().as_str().to_owned(),
            created_at_ms: 0,
            last_run_at_ms: 0,
            locked_at_ms: Some(0),
            request_method: "POST".into(),
            request_path: "/rides".into(),
            request_params: params(),
            recovery_point: rp,
            response: None,
            ride_id: None,
        }
    }

    fn ride_row() -> RideRow {
        RideRow {
            id: 7,
            user_id: 1,
            idempotency_key_id: Some(KEY_ID),
            params: params(),
            distance_mm: 0,
            charge_id: None,
            created_at_ms: 0,
        }
    }

    fn request(raise_error: bool) -> RideRequest {
        RideRequest {
            params: params(),
            raise_error,
        }
    }

    fn service(store: MockStore, payments: MockPayments, faults: Faults) -> RideService {
        RideService::new(
            Arc::new(store),
            Arc::new(payments),
            Arc::new(ManualClock::new(1_000_000)),
            RideServiceConfig {
                thresholds: Thresholds::default(),
                faults: Arc::new(faults),
            },
        )
    }

    /// A store whose key proceeds from `rp` and whose key has a ride.
    fn store_from(rp: RecoveryPoint) -> MockStore {
        let mut store = MockStore::new();
        store
            .expect_begin()
            .returning(move |_| Ok(Begun::Proceed(record(rp))));
        store
            .expect_ride_for_key()
            .with(eq(KEY_ID))
            .returning(|_| Ok(Some(ride_row())));
        store
    }

    #[tokio::test]
    async fn a_key_that_knows_its_ride_is_charged_without_looking_the_ride_up() {
        let mut store = MockStore::new();
        store.expect_begin().returning(|_| {
            Ok(Begun::Proceed(KeyRecord {
                ride_id: Some(7),
                ..record(RecoveryPoint::RideCreated)
            }))
        });
        store.expect_ride_for_key().never();
        store
            .expect_run_phase()
            .withf(|key_id, expected, phase, _| {
                *key_id == KEY_ID
                    && *expected == RecoveryPoint::RideCreated
                    && phase
                        .records
                        .iter()
                        .all(|r| r.build(7, 0).payload["ride_id"] == 7)
                    && phase.records.len() == 2
            })
            .times(1)
            .returning(|_, _, _, _| {
                Ok(KeyRecord {
                    response: Some(StoredResponse::created()),
                    ..record(RecoveryPoint::Finished)
                })
            });
        let mut payments = MockPayments::new();
        payments
            .expect_charge()
            .withf(|req| req.description == "Charge for ride 7")
            .times(1)
            .returning(|_| {
                Ok(Charge {
                    id: "ch_7".into(),
                    amount_cents: 2000,
                })
            });
        let svc = service(store, payments, Faults::none());
        let reply = svc
            .create_ride(&user(), &key_text(), &request(false), "1.2.3.4")
            .await;
        assert_eq!(reply.status, 201);
    }

    #[tokio::test]
    async fn a_conflict_in_a_phase_answers_409_and_unlocks() {
        let mut store = store_from(RecoveryPoint::Started);
        store
            .expect_run_phase()
            .times(1)
            .returning(|_, _, _, _| Err(StoreError::Conflict("40001".into())));
        store
            .expect_unlock()
            .with(eq(KEY_ID))
            .times(1)
            .returning(|_| Ok(()));
        let svc = service(store, MockPayments::new(), Faults::none());
        let reply = svc
            .create_ride(&user(), &key_text(), &request(false), "1.2.3.4")
            .await;
        assert_eq!(reply.status, 409);
        assert_eq!(reply.body["error"], messages::CONFLICT);
        assert!(!reply.replayed);
    }

    #[tokio::test]
    async fn an_internal_error_answers_500_and_unlocks() {
        let mut store = store_from(RecoveryPoint::RideCreated);
        store.expect_run_phase().never();
        store
            .expect_unlock()
            .with(eq(KEY_ID))
            .times(1)
            .returning(|_| Err(StoreError::Other("refused".into())));
        let mut payments = MockPayments::new();
        payments
            .expect_charge()
            .times(1)
            .returning(|_| Err(PaymentError::Unavailable("timeout".into())));
        let svc = service(store, payments, Faults::none());
        let reply = svc
            .create_ride(&user(), &key_text(), &request(false), "1.2.3.4")
            .await;
        assert_eq!(reply.status, 500);
        assert_eq!(reply.body["error"], messages::INTERNAL);
    }

    #[tokio::test(start_paused = true)]
    async fn an_unlock_that_fails_while_the_store_is_down_is_retried_until_it_is_back() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let mut store = store_from(RecoveryPoint::RideCreated);
        store.expect_run_phase().never();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        // Down for the first three attempts, then back.
        store.expect_unlock().with(eq(KEY_ID)).returning(move |_| {
            if c.fetch_add(1, Ordering::SeqCst) < 3 {
                Err(StoreError::Unavailable("down".into()))
            } else {
                Ok(())
            }
        });
        let mut payments = MockPayments::new();
        payments
            .expect_charge()
            .times(1)
            .returning(|_| Err(PaymentError::Unavailable("timeout".into())));
        let svc = service(store, payments, Faults::none());
        let reply = svc
            .create_ride(&user(), &key_text(), &request(false), "1.2.3.4")
            .await;
        assert_eq!(reply.status, 500);
        // 100 + 200 + 400 ms of back-off (paused clock: no real waiting).
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(
            calls.load(Ordering::SeqCst),
            4,
            "retried until it succeeded, then stopped"
        );
    }

    #[tokio::test]
    async fn raise_error_answers_500_before_charging_and_unlocks() {
        let mut store = store_from(RecoveryPoint::RideCreated);
        store.expect_unlock().times(1).returning(|_| Ok(()));
        let mut payments = MockPayments::new();
        payments.expect_charge().never();
        let svc = service(store, payments, Faults::none());
        let reply = svc
            .create_ride(&user(), &key_text(), &request(true), "1.2.3.4")
            .await;
        assert_eq!(reply.status, 500);
    }

    #[tokio::test]
    async fn a_simulated_crash_answers_500_and_keeps_the_lock() {
        // The crash falls between the charge and the commit that records it.
        let mut store = store_from(RecoveryPoint::RideCreated);
        store.expect_run_phase().never();
        store.expect_unlock().never();
        let mut payments = MockPayments::new();
        payments.expect_charge().times(1).returning(|_| {
            Ok(Charge {
                id: "ch_1".into(),
                amount_cents: 2000,
            })
        });
        let faults = Faults::new(FaultConfig {
            api_crash_rate: 1.0,
            ..FaultConfig::none()
        });
        let svc = service(store, payments, faults);
        let reply = svc
            .create_ride(&user(), &key_text(), &request(false), "1.2.3.4")
            .await;
        assert_eq!(reply.status, 500);
        assert_eq!(reply.body["error"], messages::INTERNAL);
        assert_eq!(svc.config().faults.counts().api_crashes, 1);
    }

    #[tokio::test]
    async fn a_finished_key_is_replayed() {
        let mut store = MockStore::new();
        store.expect_begin().returning(|_| {
            Ok(Begun::Replay(StoredResponse {
                status: 201,
                body: json!({"message": "hello"}),
            }))
        });
        store.expect_run_phase().never();
        let svc = service(store, MockPayments::new(), Faults::none());
        let reply = svc
            .create_ride(&user(), &key_text(), &request(false), "1.2.3.4")
            .await;
        assert_eq!(reply.status, 201);
        assert_eq!(reply.body["message"], "hello");
        assert!(reply.replayed);
    }

    #[tokio::test]
    async fn in_progress_answers_409_with_the_remaining_lock_time() {
        let mut store = MockStore::new();
        store.expect_begin().returning(|_| Ok(Begun::InProgress));
        store.expect_key().returning(|_, _| {
            let mut r = record(RecoveryPoint::Started);
            r.locked_at_ms = Some(1_000_000 - 30_000);
            Ok(Some(r))
        });
        store.expect_unlock().never();
        let svc = service(store, MockPayments::new(), Faults::none());
        let reply = svc
            .create_ride(&user(), &key_text(), &request(false), "1.2.3.4")
            .await;
        assert_eq!(reply.status, 409);
        assert_eq!(reply.body["error"], messages::IN_PROGRESS);
        assert_eq!(reply.retry_after_s, Some(60));
    }

    #[tokio::test]
    async fn the_processor_is_called_with_the_processor_key_and_the_phases_chain() {
        let mut store = store_from(RecoveryPoint::RideCreated);
        store
            .expect_run_phase()
            .with(
                eq(KEY_ID),
                eq(RecoveryPoint::RideCreated),
                mockall::predicate::always(),
                mockall::predicate::always(),
            )
            .times(1)
            .returning(|_, _, _, _| Ok(record(RecoveryPoint::ChargeCreated)));
        store
            .expect_run_phase()
            .with(
                eq(KEY_ID),
                eq(RecoveryPoint::ChargeCreated),
                mockall::predicate::always(),
                mockall::predicate::always(),
            )
            .times(1)
            .returning(|_, _, _, _| {
                let mut r = record(RecoveryPoint::Finished);
                r.response = Some(StoredResponse::created());
                r.locked_at_ms = None;
                Ok(r)
            });
        store.expect_unlock().never();
        let mut payments = MockPayments::new();
        payments
            .expect_charge()
            .withf(|req| {
                req.idempotency_key == record(RecoveryPoint::RideCreated).processor_key()
                    && req.customer == "user@example.com"
                    && req.amount_cents == 2000
                    && req.currency == "usd"
                    && req.description == "Charge for ride 7"
            })
            .times(1)
            .returning(|_| {
                Ok(Charge {
                    id: "ch_1".into(),
                    amount_cents: 2000,
                })
            });
        let svc = service(store, payments, Faults::none());
        let reply = svc
            .create_ride(&user(), &key_text(), &request(false), "1.2.3.4")
            .await;
        assert_eq!(reply.status, 201);
        assert_eq!(reply.body["message"], messages::CREATED);
        assert!(!reply.replayed);
    }

    #[tokio::test]
    async fn a_declined_card_finishes_with_402() {
        let mut store = store_from(RecoveryPoint::RideCreated);
        store
            .expect_run_phase()
            .withf(|_, _, phase, _| {
                phase.then
                    == domain::KeyTransition::Finish(StoredResponse::card_declined(
                        "Your card was declined.",
                    ))
            })
            .times(1)
            .returning(|_, _, phase, _| {
                let mut r = record(RecoveryPoint::Finished);
                if let domain::KeyTransition::Finish(resp) = &phase.then {
                    r.response = Some(resp.clone());
                }
                Ok(r)
            });
        let mut payments = MockPayments::new();
        payments
            .expect_charge()
            .returning(|_| Err(PaymentError::CardDeclined("Your card was declined.".into())));
        let svc = service(store, payments, Faults::none());
        let reply = svc
            .create_ride(&user(), &key_text(), &request(false), "1.2.3.4")
            .await;
        assert_eq!(reply.status, 402);
        assert_eq!(
            reply.body["error"],
            "Error from payment processor: Your card was declined."
        );
    }

    #[tokio::test]
    async fn complete_runs_the_stored_params_without_raise_error() {
        let mut store = MockStore::new();
        store
            .expect_begin()
            .withf(|req| {
                req.user_id == 1
                    && req.key.as_str() == "0123456789abcdefghij"
                    && req.params == params()
                    && req.method == "POST"
                    && req.path == "/rides"
            })
            .times(1)
            .returning(|_| {
                let mut r = record(RecoveryPoint::Finished);
                r.response = Some(StoredResponse::created());
                Ok(Begun::Proceed(r))
            });
        let svc = service(store, MockPayments::new(), Faults::none());
        let reply = svc.complete(&record(RecoveryPoint::Started), &user()).await;
        assert_eq!(reply.status, 201);
    }
}
