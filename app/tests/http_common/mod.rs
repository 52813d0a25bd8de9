//! Shared fixtures of the HTTP tests: a router over real in-memory adapters, request helpers
//! that check every response is JSON, key fixtures, and a store wrapper that injects failures.

#![allow(dead_code, unreachable_pub)]

use std::sync::{Arc, Mutex};

use adapters::memory::MemoryStore;
use adapters::payment::FakeProcessor;
use app::faults::{FaultConfig, Faults};
use app::http::{AppState, StatsProvider, router};
use app::rides::{RideService, RideServiceConfig};
use async_trait::async_trait;
use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use domain::{
    IdempotencyKey, KeyRecord, KeyTransition, Phase, RecoveryPoint, Ride, RideEvent, RideParams,
    StoredResponse, Thresholds,
};
use http_body_util::BodyExt;
use ports::{
    BeginRequest, Begun, ManualClock, PaymentGateway, RideRow, RideStore, StoreError, Truth, User,
};
use serde_json::Value;
use tower::ServiceExt;

/// The start of every test's manual clock.
pub const T0: i64 = 1_700_000_000_000;
/// The reference's lock timeout.
pub const LOCK_TIMEOUT_MS: i64 = 90_000;
/// The reference test user.
pub const USER: &str = "user@example.com";
/// The user whose card is declined.
pub const BAD_SOURCE_USER: &str = "user-bad-source@example.com";
/// The all-zero coordinates of the reference tests, form-encoded.
pub const VALID_FORM: &str = "origin_lat=0.0&origin_lon=0.0&target_lat=0.0&target_lon=0.0";

/// Wraps the memory store in another store (e.g. one that injects failures).
pub type WrapStore = fn(Arc<MemoryStore>) -> Arc<dyn RideStore>;

/// A router over real adapters and the handles to inspect them.
pub struct Harness {
    pub store: Arc<MemoryStore>,
    pub payments: Arc<FakeProcessor>,
    pub clock: Arc<ManualClock>,
    pub router: Router,
}

impl Harness {
    /// A memory store, a fake processor that never fails transiently, no faults.
    pub fn new() -> Self {
        Self::with(Faults::none(), FakeProcessor::default(), None)
    }

    /// A harness with these faults and this processor; `wrap` wraps the memory store
    /// when given (the harness's `store` is still the memory store underneath).
    pub fn with(faults: Faults, payments: FakeProcessor, wrap: Option<WrapStore>) -> Self {
        let store = Arc::new(MemoryStore::new("memory"));
        let payments = Arc::new(payments);
        let clock = Arc::new(ManualClock::new(T0));
        let served: Arc<dyn RideStore> = match wrap {
            Some(f) => f(store.clone()),
            None => store.clone(),
        };
        let router = build_router(served, payments.clone(), clock.clone(), faults, None);
        Self {
            store,
            payments,
            clock,
            router,
        }
    }

    /// Another "process" over the same store, processor and clock (e.g. after a crash).
    pub fn restarted(&self, faults: Faults) -> Router {
        build_router(
            self.store.clone(),
            self.payments.clone(),
            self.clock.clone(),
            faults,
            None,
        )
    }

    /// The key `key` of user 1 as stored.
    pub async fn key(&self, key: &str) -> Option<KeyRecord> {
        self.store.key(1, key).await.unwrap()
    }

    /// Stores a key for user 1 as the reference fixtures do (unlocked, at `started`, all-zero
    /// params), adjusted by `edit`.
    pub async fn put_key(&self, key: &str, edit: impl FnOnce(&mut KeyRecord)) -> KeyRecord {
        let mut record = KeyRecord {
            id: 0,
            user_id: 1,
            key: key.to_owned(),
            created_at_ms: self.clock_now(),
            last_run_at_ms: self.clock_now(),
            locked_at_ms: None,
            request_method: "POST".into(),
            request_path: "/rides".into(),
            request_params: zero_params(),
            recovery_point: RecoveryPoint::Started,
            response: None,
            ride_id: None,
        };
        edit(&mut record);
        self.store.put_key(&record).await.unwrap()
    }

    /// Moves a stored key from `started` to `ride_created` (ride inserted), then unlocks it.
    pub async fn advance_to_ride_created(&self, key: &KeyRecord) -> KeyRecord {
        let phase = Phase::create_ride(key, "127.0.0.1", None).unwrap();
        let k = self
            .store
            .run_phase(key.id, RecoveryPoint::Started, &phase, self.clock_now())
            .await
            .unwrap();
        self.store.unlock(k.id).await.unwrap();
        k
    }

    /// Moves a key at `ride_created` to `charge_created` with a charge made elsewhere, as the
    /// charge phase of an older version did (this version finishes in the charge's commit).
    pub async fn advance_to_charge_created(&self, key: &KeyRecord) -> KeyRecord {
        let ride = self.store.ride_for_key(key.id).await.unwrap().unwrap();
        let state = Ride::from_events(&[RideEvent::Requested {
            user_id: ride.user_id,
            distance_mm: ride.distance_mm,
        }]);
        let mut phase = Phase::charged(&state, ride.id, "ch_fixture", None).unwrap();
        phase.records.truncate(1); // `ride.charged`; the receipt came in a phase of its own
        phase.then = KeyTransition::To(RecoveryPoint::ChargeCreated);
        let k = self
            .store
            .run_phase(key.id, RecoveryPoint::RideCreated, &phase, self.clock_now())
            .await
            .unwrap();
        self.store.unlock(k.id).await.unwrap();
        k
    }

    fn clock_now(&self) -> i64 {
        use ports::Clock;
        self.clock.now_ms()
    }

    /// The store's ride count.
    pub async fn rides(&self) -> u64 {
        self.store.truth().await.unwrap().rides
    }
}

/// A router with its own ride service over these ports.
pub fn build_router(
    store: Arc<dyn RideStore>,
    payments: Arc<dyn PaymentGateway>,
    clock: Arc<ManualClock>,
    faults: Faults,
    stats: Option<Arc<dyn StatsProvider>>,
) -> Router {
    let rides = Arc::new(RideService::new(
        store.clone(),
        payments,
        clock,
        RideServiceConfig {
            thresholds: Thresholds::default(),
            faults: Arc::new(faults),
        },
    ));
    router(AppState {
        rides,
        store,
        log: None,
        stats,
        allow_test_errors: true,
        events: None,
    })
}

/// Faults that crash every request after its charge.
pub fn always_crash() -> Faults {
    Faults::new(FaultConfig {
        api_crash_rate: 1.0,
        ..FaultConfig::none()
    })
}

/// The reference's all-zero parameters.
pub fn zero_params() -> RideParams {
    RideParams::new(0.0, 0.0, 0.0, 0.0).unwrap()
}

/// A fresh 36-character key.
pub fn new_key() -> String {
    uuid::Uuid::new_v4().to_string()
}

/// A response, decoded; asserts that it is JSON.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Reply {
    /// `body.error` as text.
    pub fn error(&self) -> &str {
        self.body["error"].as_str().unwrap_or_default()
    }
    /// `body.message` as text.
    pub fn message(&self) -> &str {
        self.body["message"].as_str().unwrap_or_default()
    }
    /// A header as text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

/// Sends `req` through `router`; asserts the response is `application/json` and decodes it.
pub async fn send(router: &Router, req: Request<Body>) -> Reply {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    assert_eq!(
        headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok()),
        Some("application/json"),
        "every response is JSON (status {status})"
    );
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).expect("a JSON body");
    Reply {
        status,
        headers,
        body,
    }
}

/// A form-encoded `POST /rides`; `None` leaves a header out.
pub fn post_rides(auth: Option<&str>, key: Option<&str>, form: &str) -> Request<Body> {
    let mut b =
        Request::post("/rides").header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
    if let Some(a) = auth {
        b = b.header(header::AUTHORIZATION, a);
    }
    if let Some(k) = key {
        b = b.header("Idempotency-Key", k);
    }
    b.body(Body::from(form.to_owned())).unwrap()
}

/// A `POST /rides` for the reference user with the all-zero parameters.
pub fn post_valid(key: &str) -> Request<Body> {
    post_rides(Some(USER), Some(key), VALID_FORM)
}

/// A `GET` as `auth`.
pub fn get(uri: &str, auth: Option<&str>) -> Request<Body> {
    let mut b = Request::get(uri);
    if let Some(a) = auth {
        b = b.header(header::AUTHORIZATION, a);
    }
    b.body(Body::empty()).unwrap()
}

/// A store that delegates to another (a [`MemoryStore`] in the HTTP tests) but fails
/// `run_phase` with the given error when the key is at `ride_created` (the charge phase), as
/// the reference's stubs did; or serves a stale or failing truth.
pub struct FailingStore {
    inner: Arc<dyn RideStore>,
    fail_with: Mutex<Option<StoreError>>,
    /// Slows the charge phase down instead (a long commit).
    delay: Option<std::time::Duration>,
    /// `truth` reads, then waits this long before answering (a stale truth).
    truth_delay: Option<std::time::Duration>,
    /// `truth` and `ping` fail as when the store is down.
    down: bool,
}

impl FailingStore {
    fn wrap(inner: Arc<dyn RideStore>) -> Self {
        Self {
            inner,
            fail_with: Mutex::new(None),
            delay: None,
            truth_delay: None,
            down: false,
        }
    }

    /// Answers `truth` with what the store held `delay` earlier: it reads, then waits.
    pub fn stale_truth(
        inner: Arc<dyn RideStore>,
        delay: std::time::Duration,
    ) -> Arc<dyn RideStore> {
        Arc::new(Self {
            truth_delay: Some(delay),
            ..Self::wrap(inner)
        })
    }

    /// `truth` and `ping` fail with `Unavailable`, as when the store's server is down.
    pub fn down(inner: Arc<dyn RideStore>) -> Arc<dyn RideStore> {
        Arc::new(Self {
            down: true,
            ..Self::wrap(inner)
        })
    }

    fn check_up(&self) -> Result<(), StoreError> {
        if self.down {
            return Err(StoreError::Unavailable(
                "connection refused (postgres://secret@10.0.0.7)".into(),
            ));
        }
        Ok(())
    }
}

impl FailingStore {
    /// Fails the charge phase with a serialization conflict.
    pub fn conflict(inner: Arc<MemoryStore>) -> Arc<dyn RideStore> {
        Arc::new(Self {
            fail_with: Mutex::new(Some(StoreError::Conflict(
                "could not serialize access".into(),
            ))),
            delay: None,
            ..Self::wrap(inner)
        })
    }

    /// Makes the charge phase take 300 ms, then succeed.
    pub fn slow(inner: Arc<MemoryStore>) -> Arc<dyn RideStore> {
        Arc::new(Self {
            fail_with: Mutex::new(None),
            delay: Some(std::time::Duration::from_millis(300)),
            ..Self::wrap(inner)
        })
    }

    /// Fails the charge phase with an internal error.
    pub fn internal(inner: Arc<MemoryStore>) -> Arc<dyn RideStore> {
        Arc::new(Self {
            fail_with: Mutex::new(Some(StoreError::Other("runtime error".into()))),
            delay: None,
            ..Self::wrap(inner)
        })
    }
}

#[async_trait]
impl RideStore for FailingStore {
    fn describe(&self) -> String {
        format!("failing({})", self.inner.describe())
    }
    async fn ping(&self) -> Result<(), StoreError> {
        self.check_up()?;
        self.inner.ping().await
    }
    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        self.inner.user_by_email(email).await
    }
    async fn ensure_user(&self, email: &str) -> Result<User, StoreError> {
        self.inner.ensure_user(email).await
    }
    async fn begin(&self, req: &BeginRequest) -> Result<Begun, StoreError> {
        self.inner.begin(req).await
    }
    async fn run_phase(
        &self,
        key_id: i64,
        expected: RecoveryPoint,
        phase: &Phase,
        now_ms: i64,
    ) -> Result<KeyRecord, StoreError> {
        if expected == RecoveryPoint::RideCreated {
            if let Some(delay) = self.delay {
                tokio::time::sleep(delay).await;
            }
            let fail = self.fail_with.lock().unwrap().clone();
            if let Some(e) = fail {
                return Err(e);
            }
        }
        self.inner.run_phase(key_id, expected, phase, now_ms).await
    }
    async fn unlock(&self, key_id: i64) -> Result<(), StoreError> {
        self.inner.unlock(key_id).await
    }
    async fn key(&self, user_id: i64, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        self.inner.key(user_id, key).await
    }
    async fn put_key(&self, key: &KeyRecord) -> Result<KeyRecord, StoreError> {
        self.inner.put_key(key).await
    }
    async fn ride_for_key(&self, key_id: i64) -> Result<Option<RideRow>, StoreError> {
        self.inner.ride_for_key(key_id).await
    }
    async fn ride(&self, ride_id: i64) -> Result<Option<RideRow>, StoreError> {
        self.inner.ride(ride_id).await
    }
    async fn rides_by_ids(&self, ids: &[i64]) -> Result<Vec<RideRow>, StoreError> {
        self.inner.rides_by_ids(ids).await
    }
    async fn forget_user(&self, email: &str, now_ms: i64) -> Result<ports::Forgotten, StoreError> {
        self.inner.forget_user(email, now_ms).await
    }
    async fn rides_for_user(
        &self,
        user_id: i64,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RideRow>, StoreError> {
        self.inner.rides_for_user(user_id, before_id, limit).await
    }
    async fn completable_keys(
        &self,
        now_ms: i64,
        thresholds: &Thresholds,
        limit: u32,
    ) -> Result<Vec<(KeyRecord, User)>, StoreError> {
        self.inner.completable_keys(now_ms, thresholds, limit).await
    }
    async fn reap_keys(
        &self,
        now_ms: i64,
        thresholds: &Thresholds,
        limit: u32,
    ) -> Result<u64, StoreError> {
        self.inner.reap_keys(now_ms, thresholds, limit).await
    }
    async fn truth(&self) -> Result<Truth, StoreError> {
        self.check_up()?;
        let truth = self.inner.truth().await?;
        if let Some(d) = self.truth_delay {
            tokio::time::sleep(d).await;
        }
        Ok(truth)
    }
}

/// A finished key's stored response, as the reference fixture writes it.
pub fn finished_with(status: u16, body: Value) -> impl FnOnce(&mut KeyRecord) {
    move |k| {
        k.recovery_point = RecoveryPoint::Finished;
        k.response = Some(StoredResponse { status, body });
    }
}

/// A parsed key (for direct service calls).
pub fn parsed_key(key: &str) -> IdempotencyKey {
    IdempotencyKey::parse(Some(key)).unwrap()
}
