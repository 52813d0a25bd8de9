//! The canonical store and its outbox, in memory.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use domain::{
    KeyDecision, KeyRecord, KeyTransition, LogRecord, NewRecord, Phase, RecoveryPoint, RideWrite,
    Thresholds,
};
use ports::{BeginRequest, Begun, Outbox, RideRow, RideStore, Route, StoreError, Truth, User};
use tokio::sync::Notify;

use super::lock;

/// The reference users every fresh store contains (id, email).
const REFERENCE_USERS: [(i64, &str); 2] =
    [(1, "user@example.com"), (2, "user-bad-source@example.com")];

/// An audit record written by a phase (the reference's `audit_records` row).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Store-assigned id.
    pub id: i64,
    /// E.g. `ride.created`.
    pub action: String,
    /// The request parameters.
    pub data: serde_json::Value,
    /// The client's address.
    pub origin_ip: String,
    /// The ride the record is about.
    pub resource_id: i64,
    /// When the phase ran (ms).
    pub created_at_ms: i64,
}

/// Everything the store holds; guarded by one mutex.
#[derive(Debug)]
struct Inner {
    users: BTreeMap<i64, User>,
    rides: BTreeMap<i64, RideRow>,
    keys: BTreeMap<i64, KeyRecord>,
    /// (user id, key text) → key id: keys are unique per user.
    key_index: HashMap<(i64, String), i64>,
    audit: Vec<AuditRecord>,
    /// Staged records by sequence.
    staged: BTreeMap<u64, LogRecord>,
    next_user_id: i64,
    next_ride_id: i64,
    next_key_id: i64,
    next_audit_id: i64,
    /// The next producer sequence; starts at 1 and is never reused.
    next_seq: u64,
    /// The streamer's route, once a cutover set one.
    route: Option<Route>,
}

impl Inner {
    fn new() -> Self {
        let users = REFERENCE_USERS
            .iter()
            .map(|(id, email)| {
                (
                    *id,
                    User {
                        id: *id,
                        email: (*email).to_owned(),
                    },
                )
            })
            .collect();
        Self {
            users,
            rides: BTreeMap::new(),
            keys: BTreeMap::new(),
            key_index: HashMap::new(),
            audit: Vec::new(),
            staged: BTreeMap::new(),
            next_user_id: REFERENCE_USERS.len() as i64 + 1,
            next_ride_id: 1,
            next_key_id: 1,
            next_audit_id: 1,
            next_seq: 1,
            route: None,
        }
    }

    /// Stages `record` under the next producer sequence.
    fn stage(&mut self, producer: &str, record: NewRecord) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.staged.insert(seq, record.sequenced(producer, seq));
    }

    fn insert_key(&mut self, mut key: KeyRecord) -> KeyRecord {
        key.id = self.next_key_id;
        self.next_key_id += 1;
        self.key_index
            .insert((key.user_id, key.key.clone()), key.id);
        self.keys.insert(key.id, key.clone());
        key
    }
}

/// The canonical store ([`RideStore`]) and its outbox ([`Outbox`]), in memory.
///
/// A fresh store holds the two reference users (`1 user@example.com`, `2
/// user-bad-source@example.com`) and nothing else. Use one `Arc<MemoryStore>` as both the
/// store and the outbox: they share their state, as a database's tables do.
#[derive(Debug)]
pub struct MemoryStore {
    producer: String,
    inner: Mutex<Inner>,
    /// Woken (one permit) when a phase staged records.
    staged_wakeup: Notify,
}

impl Default for MemoryStore {
    /// A store whose records are sequenced under the producer `memory`.
    fn default() -> Self {
        Self::new("memory")
    }
}

impl MemoryStore {
    /// A fresh store whose outbox sequences records under `producer`.
    pub fn new(producer: impl Into<String>) -> Self {
        Self {
            producer: producer.into(),
            inner: Mutex::new(Inner::new()),
            staged_wakeup: Notify::new(),
        }
    }

    /// Every audit record written so far, oldest first (for tests and inspection).
    pub fn audit_records(&self) -> Vec<AuditRecord> {
        lock(&self.inner).audit.clone()
    }
}

#[async_trait]
impl RideStore for MemoryStore {
    fn describe(&self) -> String {
        "memory://".to_owned()
    }

    async fn ping(&self) -> Result<(), StoreError> {
        Ok(())
    }

    async fn user_by_email(&self, email: &str) -> Result<Option<User>, StoreError> {
        let inner = lock(&self.inner);
        Ok(inner.users.values().find(|u| u.email == email).cloned())
    }

    async fn ensure_user(&self, email: &str) -> Result<User, StoreError> {
        let mut inner = lock(&self.inner);
        if let Some(u) = inner.users.values().find(|u| u.email == email) {
            return Ok(u.clone());
        }
        let user = User {
            id: inner.next_user_id,
            email: email.to_owned(),
        };
        inner.next_user_id += 1;
        inner.users.insert(user.id, user.clone());
        Ok(user)
    }

    async fn begin(&self, req: &BeginRequest) -> Result<Begun, StoreError> {
        let mut inner = lock(&self.inner);
        let id = inner
            .key_index
            .get(&(req.user_id, req.key.as_str().to_owned()))
            .copied();
        let existing = id.and_then(|id| inner.keys.get(&id));
        match KeyRecord::decide(existing, &req.params, req.now_ms, &req.thresholds) {
            KeyDecision::Create => {
                let key = inner.insert_key(KeyRecord {
                    id: 0,
                    user_id: req.user_id,
                    key: req.key.as_str().to_owned(),
                    created_at_ms: req.now_ms,
                    last_run_at_ms: req.now_ms,
                    locked_at_ms: Some(req.now_ms),
                    request_method: req.method.clone(),
                    request_path: req.path.clone(),
                    request_params: req.params,
                    recovery_point: RecoveryPoint::Started,
                    response: None,
                });
                Ok(Begun::Proceed(key))
            }
            KeyDecision::Resume => {
                let key = id
                    .and_then(|id| inner.keys.get_mut(&id))
                    .ok_or_else(|| StoreError::Other("resumed a key that is not there".into()))?;
                key.locked_at_ms = Some(req.now_ms);
                key.last_run_at_ms = req.now_ms;
                Ok(Begun::Proceed(key.clone()))
            }
            KeyDecision::Replay(resp) => Ok(Begun::Replay(resp)),
            KeyDecision::Mismatch => Ok(Begun::Mismatch),
            KeyDecision::InProgress => Ok(Begun::InProgress),
        }
    }

    async fn run_phase(
        &self,
        key_id: i64,
        expected: RecoveryPoint,
        phase: &Phase,
        now_ms: i64,
    ) -> Result<KeyRecord, StoreError> {
        let staged_any;
        let key = {
            let mut inner = lock(&self.inner);
            // Check everything first: a failed phase writes nothing.
            let key = inner
                .keys
                .get(&key_id)
                .ok_or_else(|| StoreError::NotFound(format!("idempotency key {key_id}")))?;
            if key.recovery_point != expected {
                return Err(StoreError::Conflict(format!(
                    "idempotency key {key_id} is at {}, not {}",
                    key.recovery_point.as_str(),
                    expected.as_str()
                )));
            }
            if let RideWrite::SetCharge { ride_id, .. } = &phase.ride
                && !inner.rides.contains_key(ride_id)
            {
                return Err(StoreError::NotFound(format!("ride {ride_id}")));
            }

            // The ride write.
            let ride_id = match &phase.ride {
                RideWrite::Insert {
                    user_id,
                    params,
                    distance_mm,
                } => {
                    let id = inner.next_ride_id;
                    inner.next_ride_id += 1;
                    inner.rides.insert(
                        id,
                        RideRow {
                            id,
                            user_id: *user_id,
                            idempotency_key_id: Some(key_id),
                            params: *params,
                            distance_mm: *distance_mm,
                            charge_id: None,
                            created_at_ms: now_ms,
                        },
                    );
                    id
                }
                RideWrite::SetCharge { ride_id, charge_id } => {
                    if let Some(ride) = inner.rides.get_mut(ride_id) {
                        ride.charge_id = Some(charge_id.clone());
                    }
                    *ride_id
                }
                RideWrite::Existing(ride_id) => *ride_id,
            };

            // The audit record.
            if let Some(a) = &phase.audit {
                let id = inner.next_audit_id;
                inner.next_audit_id += 1;
                inner.audit.push(AuditRecord {
                    id,
                    action: a.action.clone(),
                    data: a.data.clone(),
                    origin_ip: a.origin_ip.clone(),
                    resource_id: ride_id,
                    created_at_ms: now_ms,
                });
            }

            // The staged records, sequenced in commit order.
            for draft in &phase.records {
                inner.stage(&self.producer, draft.build(ride_id, now_ms));
            }
            staged_any = !phase.records.is_empty();

            // The key transition.
            let key = inner
                .keys
                .get_mut(&key_id)
                .ok_or_else(|| StoreError::NotFound(format!("idempotency key {key_id}")))?;
            match &phase.then {
                KeyTransition::To(rp) => key.recovery_point = *rp,
                KeyTransition::Finish(resp) => {
                    key.recovery_point = RecoveryPoint::Finished;
                    key.response = Some(resp.clone());
                    key.locked_at_ms = None;
                }
            }
            key.clone()
        };
        if staged_any {
            self.staged_wakeup.notify_one();
        }
        Ok(key)
    }

    /// Clears the key's lock; an unknown key has no lock to clear, which is not an error.
    async fn unlock(&self, key_id: i64) -> Result<(), StoreError> {
        if let Some(key) = lock(&self.inner).keys.get_mut(&key_id) {
            key.locked_at_ms = None;
        }
        Ok(())
    }

    async fn key(&self, user_id: i64, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        let inner = lock(&self.inner);
        Ok(inner
            .key_index
            .get(&(user_id, key.to_owned()))
            .and_then(|id| inner.keys.get(id))
            .cloned())
    }

    async fn put_key(&self, key: &KeyRecord) -> Result<KeyRecord, StoreError> {
        let mut inner = lock(&self.inner);
        if inner
            .key_index
            .contains_key(&(key.user_id, key.key.clone()))
        {
            return Err(StoreError::Conflict(format!(
                "user {} already has the idempotency key {:?}",
                key.user_id, key.key
            )));
        }
        Ok(inner.insert_key(key.clone()))
    }

    async fn ride_for_key(&self, key_id: i64) -> Result<Option<RideRow>, StoreError> {
        let inner = lock(&self.inner);
        Ok(inner
            .rides
            .values()
            .find(|r| r.idempotency_key_id == Some(key_id))
            .cloned())
    }

    async fn ride(&self, ride_id: i64) -> Result<Option<RideRow>, StoreError> {
        Ok(lock(&self.inner).rides.get(&ride_id).cloned())
    }

    async fn rides_for_user(
        &self,
        user_id: i64,
        before_id: Option<i64>,
        limit: u32,
    ) -> Result<Vec<RideRow>, StoreError> {
        let inner = lock(&self.inner);
        Ok(inner
            .rides
            .values()
            .rev()
            .filter(|r| r.user_id == user_id && before_id.is_none_or(|b| r.id < b))
            .take(limit as usize)
            .cloned()
            .collect())
    }

    async fn completable_keys(
        &self,
        now_ms: i64,
        thresholds: &Thresholds,
        limit: u32,
    ) -> Result<Vec<(KeyRecord, User)>, StoreError> {
        let inner = lock(&self.inner);
        Ok(inner
            .keys
            .values()
            .filter(|k| k.is_completable(now_ms, thresholds))
            .filter_map(|k| inner.users.get(&k.user_id).map(|u| (k.clone(), u.clone())))
            .take(limit as usize)
            .collect())
    }

    async fn reap_keys(
        &self,
        now_ms: i64,
        thresholds: &Thresholds,
        limit: u32,
    ) -> Result<u64, StoreError> {
        let mut inner = lock(&self.inner);
        let doomed: Vec<i64> = inner
            .keys
            .values()
            .filter(|k| k.is_reapable(now_ms, thresholds))
            .map(|k| k.id)
            .take(limit as usize)
            .collect();
        for id in &doomed {
            if let Some(k) = inner.keys.remove(id) {
                inner.key_index.remove(&(k.user_id, k.key));
            }
        }
        for ride in inner.rides.values_mut() {
            if ride
                .idempotency_key_id
                .is_some_and(|id| doomed.contains(&id))
            {
                ride.idempotency_key_id = None;
            }
        }
        Ok(doomed.len() as u64)
    }

    async fn truth(&self) -> Result<Truth, StoreError> {
        let inner = lock(&self.inner);
        Ok(Truth {
            rides: inner.rides.len() as u64,
            distance_mm: inner.rides.values().map(|r| r.distance_mm).sum(),
            unfinished_keys: inner
                .keys
                .values()
                .filter(|k| k.recovery_point != RecoveryPoint::Finished)
                .count() as u64,
        })
    }
}

#[async_trait]
impl Outbox for MemoryStore {
    fn producer(&self) -> String {
        self.producer.clone()
    }

    async fn peek(&self, max: usize) -> Result<Vec<LogRecord>, StoreError> {
        self.peek_after(0, max).await
    }

    async fn peek_after(&self, after_seq: u64, max: usize) -> Result<Vec<LogRecord>, StoreError> {
        let inner = lock(&self.inner);
        // Sequences start at 1: "after 0" is everything.
        let after = inner
            .route
            .as_ref()
            .map_or(after_seq, |r| r.after_seq.max(after_seq));
        Ok(inner
            .staged
            .range((Bound::Excluded(after), Bound::Unbounded))
            .map(|(_, r)| r)
            .take(max)
            .cloned()
            .collect())
    }

    async fn remove(&self, seqs: &[u64]) -> Result<u64, StoreError> {
        let mut inner = lock(&self.inner);
        Ok(seqs
            .iter()
            .filter(|s| inner.staged.remove(s).is_some())
            .count() as u64)
    }

    async fn staged(&self) -> Result<u64, StoreError> {
        Ok(lock(&self.inner).staged.len() as u64)
    }

    async fn wait_staged(&self, timeout: Duration) {
        // `notify_one` leaves a permit when nobody waits, so a phase that staged records
        // between two waits makes the next wait return at once.
        let _ = tokio::time::timeout(timeout, self.staged_wakeup.notified()).await;
    }

    async fn stage(&self, records: &[NewRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        {
            // One lock: the records get consecutive sequences, as a phase's do.
            let mut inner = lock(&self.inner);
            for record in records {
                inner.stage(&self.producer, record.clone());
            }
        }
        self.staged_wakeup.notify_one();
        Ok(())
    }

    async fn route(&self) -> Result<Option<Route>, StoreError> {
        Ok(lock(&self.inner).route.clone())
    }

    async fn set_route(&self, route: &Route) -> Result<(), StoreError> {
        lock(&self.inner).route = Some(route.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use domain::{IdempotencyKey, RideParams, StoredResponse};

    const T: Thresholds = Thresholds {
        lock_timeout_ms: 90_000,
        completer_grace_ms: 300_000,
        completer_last_run_ms: 60_000,
        reap_after_ms: 259_200_000,
    };

    fn params(lat: f64) -> RideParams {
        RideParams::new(lat, 0.0, 0.0, 0.0).unwrap()
    }

    fn req(user_id: i64, key: &str, lat: f64, now_ms: i64) -> BeginRequest {
        BeginRequest {
            user_id,
            key: IdempotencyKey::parse(Some(key)).unwrap(),
            params: params(lat),
            method: "POST".into(),
            path: "/rides".into(),
            now_ms,
            thresholds: T,
        }
    }

    const KEY: &str = "key-0123456789abcdefghij";

    async fn begin_new(s: &MemoryStore, key: &str, now: i64) -> KeyRecord {
        match s.begin(&req(1, key, 1.0, now)).await.unwrap() {
            Begun::Proceed(k) => k,
            other => panic!("expected Proceed, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn a_fresh_store_has_the_reference_users_only() {
        let s = MemoryStore::default();
        assert_eq!(s.describe(), "memory://");
        assert_eq!(s.producer(), "memory");
        let u1 = s.user_by_email("user@example.com").await.unwrap().unwrap();
        let u2 = s
            .user_by_email("user-bad-source@example.com")
            .await
            .unwrap()
            .unwrap();
        assert_eq!((u1.id, u2.id), (1, 2));
        assert_eq!(s.user_by_email("nobody@example.com").await.unwrap(), None);
        assert_eq!(s.truth().await.unwrap(), Truth::default());
        let u3 = s.ensure_user("new@example.com").await.unwrap();
        assert_eq!(u3.id, 3);
        assert_eq!(s.ensure_user("new@example.com").await.unwrap(), u3);
    }

    #[tokio::test]
    async fn begin_creates_locks_replays_and_refuses() {
        let s = MemoryStore::new("p");
        let k = begin_new(&s, KEY, 1000).await;
        assert_eq!(k.recovery_point, RecoveryPoint::Started);
        assert_eq!(k.locked_at_ms, Some(1000));
        // Held: in progress. Other params: mismatch.
        assert_eq!(
            s.begin(&req(1, KEY, 1.0, 2000)).await.unwrap(),
            Begun::InProgress
        );
        assert_eq!(
            s.begin(&req(1, KEY, 2.0, 2000)).await.unwrap(),
            Begun::Mismatch
        );
        // Another user may use the same key text.
        assert!(matches!(
            s.begin(&req(2, KEY, 1.0, 2000)).await.unwrap(),
            Begun::Proceed(_)
        ));
        // After the lock expires the key resumes, with its lock retaken.
        let later = 1000 + T.lock_timeout_ms + 1;
        let Begun::Proceed(r) = s.begin(&req(1, KEY, 1.0, later)).await.unwrap() else {
            panic!("expected resume");
        };
        assert_eq!(
            (r.id, r.locked_at_ms, r.last_run_at_ms),
            (k.id, Some(later), later)
        );
        // Finish it: replay.
        let phase = Phase {
            ride: RideWrite::Existing(0),
            audit: None,
            records: vec![],
            then: KeyTransition::Finish(StoredResponse::processor_error()),
        };
        s.run_phase(k.id, RecoveryPoint::Started, &phase, later)
            .await
            .unwrap();
        assert_eq!(
            s.begin(&req(1, KEY, 1.0, later)).await.unwrap(),
            Begun::Replay(StoredResponse::processor_error())
        );
    }

    #[tokio::test]
    async fn phases_write_rides_audit_records_and_keys_atomically() {
        let s = MemoryStore::new("rides");
        let k = begin_new(&s, KEY, 1000).await;
        let create = Phase::create_ride(&k, "10.0.0.1", None);
        let after = s
            .run_phase(k.id, RecoveryPoint::Started, &create, 1100)
            .await
            .unwrap();
        assert_eq!(after.recovery_point, RecoveryPoint::RideCreated);
        assert_eq!(after.locked_at_ms, Some(1000), "To keeps the lock");
        let ride = s.ride_for_key(k.id).await.unwrap().unwrap();
        assert_eq!(ride.id, 1);
        assert_eq!(ride.distance_mm, params(1.0).distance_mm());
        let audit = s.audit_records();
        assert_eq!(audit.len(), 1);
        assert_eq!(
            (
                audit[0].action.as_str(),
                audit[0].resource_id,
                audit[0].origin_ip.as_str()
            ),
            ("ride.created", 1, "10.0.0.1")
        );
        let staged = s.peek(10).await.unwrap();
        assert_eq!(staged.len(), 1);
        assert_eq!(
            (
                staged[0].seq,
                staged[0].producer.as_str(),
                staged[0].key.as_str()
            ),
            (1, "rides", "ride:1")
        );
        assert_eq!(staged[0].payload["ride_id"], 1);

        // Running the same phase again conflicts and writes nothing.
        let err = s
            .run_phase(k.id, RecoveryPoint::Started, &create, 1200)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Conflict(_)), "{err:?}");
        assert_eq!(s.truth().await.unwrap().rides, 1);
        assert_eq!(s.staged().await.unwrap(), 1);
        assert_eq!(s.audit_records().len(), 1);

        let r = domain::Ride::from_events(&[domain::RideEvent::Requested {
            user_id: 1,
            distance_mm: ride.distance_mm,
        }]);
        let charged = Phase::charged(&r, ride.id, "ch_1", None);
        s.run_phase(k.id, RecoveryPoint::RideCreated, &charged, 1300)
            .await
            .unwrap();
        assert_eq!(
            s.ride(ride.id).await.unwrap().unwrap().charge_id.as_deref(),
            Some("ch_1")
        );
        let receipt = Phase::receipt(&k, ride.id, None);
        let done = s
            .run_phase(k.id, RecoveryPoint::ChargeCreated, &receipt, 1400)
            .await
            .unwrap();
        assert_eq!(done.recovery_point, RecoveryPoint::Finished);
        assert_eq!(done.locked_at_ms, None);
        assert_eq!(done.response, Some(StoredResponse::created()));
        let seqs: Vec<u64> = s.peek(10).await.unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3]);
        assert_eq!(
            s.truth().await.unwrap(),
            Truth {
                rides: 1,
                distance_mm: ride.distance_mm,
                unfinished_keys: 0
            }
        );
    }

    #[tokio::test]
    async fn unknown_keys_and_rides_are_not_found() {
        let s = MemoryStore::default();
        let k = begin_new(&s, KEY, 0).await;
        let phase = Phase::processor_error(1);
        assert!(matches!(
            s.run_phase(99, RecoveryPoint::Started, &phase, 0).await,
            Err(StoreError::NotFound(_))
        ));
        let set = Phase {
            ride: RideWrite::SetCharge {
                ride_id: 42,
                charge_id: "ch".into(),
            },
            audit: None,
            records: vec![],
            then: KeyTransition::To(RecoveryPoint::RideCreated),
        };
        assert!(matches!(
            s.run_phase(k.id, RecoveryPoint::Started, &set, 0).await,
            Err(StoreError::NotFound(_))
        ));
        assert_eq!(
            s.key(1, KEY).await.unwrap().unwrap().recovery_point,
            RecoveryPoint::Started
        );
    }

    #[tokio::test]
    async fn outbox_removes_exactly_the_given_sequences_and_never_reuses_them() {
        let s = MemoryStore::default();
        for (i, key) in ["a", "b", "c"].iter().enumerate() {
            let k = begin_new(&s, &key.repeat(20), i as i64).await;
            s.run_phase(
                k.id,
                RecoveryPoint::Started,
                &Phase::create_ride(&k, "ip", None),
                0,
            )
            .await
            .unwrap();
        }
        assert_eq!(s.remove(&[2, 7]).await.unwrap(), 1);
        let seqs: Vec<u64> = s.peek(10).await.unwrap().iter().map(|r| r.seq).collect();
        assert_eq!(seqs, vec![1, 3]);
        assert_eq!(s.peek(1).await.unwrap()[0].seq, 1);
        s.remove(&[1, 3]).await.unwrap();
        let k = begin_new(&s, &"d".repeat(20), 9).await;
        s.run_phase(
            k.id,
            RecoveryPoint::Started,
            &Phase::create_ride(&k, "ip", None),
            0,
        )
        .await
        .unwrap();
        assert_eq!(s.peek(10).await.unwrap()[0].seq, 4);
    }

    #[tokio::test]
    async fn a_staging_wakeup_between_two_waits_is_not_lost() {
        let s = MemoryStore::default();
        let k = begin_new(&s, KEY, 0).await;
        s.run_phase(
            k.id,
            RecoveryPoint::Started,
            &Phase::create_ride(&k, "ip", None),
            0,
        )
        .await
        .unwrap();
        // Nobody was waiting; the permit is kept and the wait returns at once.
        tokio::time::timeout(
            Duration::from_secs(5),
            s.wait_staged(Duration::from_secs(60)),
        )
        .await
        .expect("wait_staged should return on the stored wake-up");
        // No wake-up pending now: the wait ends at its timeout.
        let start = std::time::Instant::now();
        s.wait_staged(Duration::from_millis(20)).await;
        assert!(start.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_begins_with_one_new_key_proceed_once() {
        let s = std::sync::Arc::new(MemoryStore::default());
        let tasks: Vec<_> = (0..8)
            .map(|_| {
                let s = s.clone();
                tokio::spawn(async move { s.begin(&req(1, KEY, 1.0, 0)).await })
            })
            .collect();
        let mut proceeded = 0;
        for t in tasks {
            match t.await.unwrap().unwrap() {
                Begun::Proceed(_) => proceeded += 1,
                other => assert_eq!(other, Begun::InProgress),
            }
        }
        assert_eq!(proceeded, 1);
    }

    #[tokio::test]
    async fn put_key_is_unique_per_user() {
        let s = MemoryStore::default();
        let k = begin_new(&s, KEY, 0).await;
        assert!(matches!(s.put_key(&k).await, Err(StoreError::Conflict(_))));
        let mut other = k.clone();
        other.user_id = 2;
        let put = s.put_key(&other).await.unwrap();
        assert_ne!(put.id, k.id);
        assert_eq!(s.key(2, KEY).await.unwrap(), Some(put));
    }

    #[tokio::test]
    async fn completer_and_reaper_select_by_age() {
        let s = MemoryStore::default();
        let now = 1_000_000_000;
        let k = begin_new(&s, KEY, 0).await;
        let create = Phase::create_ride(&k, "ip", None);
        s.run_phase(k.id, RecoveryPoint::Started, &create, 0)
            .await
            .unwrap();
        let young = begin_new(&s, &"y".repeat(20), now).await;
        s.unlock(young.id).await.unwrap();
        s.unlock(k.id).await.unwrap();
        assert_eq!(s.key(1, KEY).await.unwrap().unwrap().locked_at_ms, None);
        let c = s.completable_keys(now, &T, 10).await.unwrap();
        assert_eq!(c.len(), 1);
        assert_eq!((c[0].0.id, c[0].1.id), (k.id, 1));
        assert_eq!(s.truth().await.unwrap().unfinished_keys, 2);

        assert_eq!(s.reap_keys(now, &T, 10).await.unwrap(), 1);
        assert_eq!(s.key(1, KEY).await.unwrap(), None);
        assert_eq!(s.ride(1).await.unwrap().unwrap().idempotency_key_id, None);
        assert!(s.key(1, &"y".repeat(20)).await.unwrap().is_some());
        // The reaped key's text can be used again.
        assert!(matches!(
            s.begin(&req(1, KEY, 5.0, now)).await.unwrap(),
            Begun::Proceed(_)
        ));
    }

    #[tokio::test]
    async fn rides_for_user_pages_newest_first() {
        let s = MemoryStore::default();
        for i in 0..5 {
            let k = begin_new(&s, &format!("{i}").repeat(20), 0).await;
            s.run_phase(
                k.id,
                RecoveryPoint::Started,
                &Phase::create_ride(&k, "ip", None),
                0,
            )
            .await
            .unwrap();
        }
        let ids = |v: Vec<RideRow>| v.iter().map(|r| r.id).collect::<Vec<_>>();
        assert_eq!(ids(s.rides_for_user(1, None, 2).await.unwrap()), vec![5, 4]);
        assert_eq!(
            ids(s.rides_for_user(1, Some(4), 10).await.unwrap()),
            vec![3, 2, 1]
        );
        assert!(s.rides_for_user(2, None, 10).await.unwrap().is_empty());
    }
}
