//! The canonical store and its outbox, in memory.

use std::collections::{BTreeMap, HashMap};
use std::ops::Bound;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use domain::{KeyRecord, LogRecord, NewRecord, RecoveryPoint, Thresholds};
use ports::{Forgotten, Outbox, RideRow, Route, StoreError, Truth, User};
use tokio::sync::Notify;

use super::lock;
use crate::phase::{Committed, NewAudit, NewRide, PhaseTx, ride_store_impl};

/// The reference users every fresh store contains (id, email).
const REFERENCE_USERS: [(i64, &str); 2] =
    [(1, "user@example.com"), (2, "user-bad-source@example.com")];

/// An audit record written by a phase (the reference's `audit_records` row).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditRecord {
    /// Store-assigned id.
    pub id: i64,
    /// The acting user.
    pub user_id: i64,
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
pub(super) struct Inner {
    users: BTreeMap<i64, User>,
    rides: BTreeMap<i64, RideRow>,
    keys: BTreeMap<i64, KeyRecord>,
    /// (user id, key text) → key id: keys are unique per user.
    key_index: HashMap<(i64, String), i64>,
    audit: Vec<AuditRecord>,
    /// Staged records by sequence.
    staged: BTreeMap<u64, LogRecord>,
    /// The `published` index: (kind, key) of removed records, by sequence.
    published: BTreeMap<u64, (String, String)>,
    next_user_id: i64,
    next_ride_id: i64,
    next_key_id: i64,
    next_audit_id: i64,
    /// The next producer sequence; starts at 1 and is never reused.
    next_seq: u64,
    /// The streamer's route, once a cutover set one.
    route: Option<Route>,
    /// The event store's streams and documents ([`super::MemoryEventStore`]), here so that
    /// one lock commits messages and their outbox records together.
    pub(super) es: super::event_store::EsState,
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
            published: BTreeMap::new(),
            next_user_id: REFERENCE_USERS.len() as i64 + 1,
            next_ride_id: 1,
            next_key_id: 1,
            next_audit_id: 1,
            next_seq: 1,
            route: None,
            es: super::event_store::EsState::default(),
        }
    }

    /// Stages `record` under the next producer sequence.
    pub(super) fn stage(&mut self, producer: &str, record: NewRecord) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.staged.insert(seq, record.sequenced(producer, seq));
    }

    fn key_id(&self, user_id: i64, key: &str) -> Option<i64> {
        self.key_index.get(&(user_id, key.to_owned())).copied()
    }
}

/// The canonical store ([`RideStore`]) and its outbox ([`Outbox`]), in memory.
///
/// A fresh store holds the two reference users (`1 user@example.com`, `2
/// user-bad-source@example.com`) and nothing else. Use one `Arc<MemoryStore>` as both the
/// store and the outbox: they share their state, as a database's tables do.
#[derive(Debug)]
pub struct MemoryStore {
    pub(super) producer: String,
    pub(super) inner: Mutex<Inner>,
    /// Held by the one open phase transaction ([`MemoryTx`]), as SQLite's single writer.
    writer: tokio::sync::Mutex<()>,
    /// Woken (one permit) when a phase staged records.
    pub(super) staged_wakeup: Notify,
    /// Bumped after event-store commits that stored messages and after group starts: the
    /// reactor runtime's wake-ups ([`ports::ReactorStore::wait_wake`]).
    pub(super) es_wake: tokio::sync::watch::Sender<u64>,
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
            writer: tokio::sync::Mutex::new(()),
            staged_wakeup: Notify::new(),
            es_wake: tokio::sync::watch::channel(0).0,
        }
    }

    /// Every audit record written so far, oldest first (for tests and inspection).
    pub fn audit_records(&self) -> Vec<AuditRecord> {
        lock(&self.inner).audit.clone()
    }

    /// Opens a phase transaction: waits for the writer, as SQLite's `BEGIN IMMEDIATE` does.
    async fn tx(&self) -> Result<MemoryTx<'_>, StoreError> {
        Ok(MemoryTx {
            store: self,
            _writer: self.writer.lock().await,
            writes: Vec::new(),
        })
    }

    /// Wakes the streamer after a commit that staged records.
    fn woke<T>(&self, committed: Committed<T>) -> T {
        if committed.staged {
            self.staged_wakeup.notify_one();
        }
        committed.value
    }
}

/// Takes the next id of a counter (a rolled-back transaction leaves a gap, as a sequence).
fn next_id(counter: &mut i64) -> i64 {
    *counter += 1;
    *counter - 1
}

/// A write of a [`MemoryTx`], applied at commit.
#[derive(Debug)]
enum Write {
    Key(KeyRecord),
    Ride(RideRow),
    Charge(i64, String),
    Audit(AuditRecord),
    Stage(Vec<NewRecord>),
}

/// A phase transaction in memory: holds the writer, buffers its writes, and applies all of
/// them under one lock at commit (dropping it discards them). Ids are taken when a row is
/// written, so a rolled-back transaction leaves a gap, as a database sequence does.
struct MemoryTx<'a> {
    store: &'a MemoryStore,
    _writer: tokio::sync::MutexGuard<'a, ()>,
    writes: Vec<Write>,
}

impl MemoryTx<'_> {
    fn key_written(&self, key_id: i64) -> Option<&KeyRecord> {
        self.writes.iter().rev().find_map(|w| match w {
            Write::Key(k) if k.id == key_id => Some(k),
            _ => None,
        })
    }
}

#[async_trait]
impl PhaseTx for MemoryTx<'_> {
    async fn lock_key(&mut self, user_id: i64, key: &str) -> Result<Option<KeyRecord>, StoreError> {
        let id = lock(&self.store.inner).key_id(user_id, key);
        match id {
            Some(id) => self.lock_key_by_id(id).await,
            None => Ok(None),
        }
    }

    async fn lock_key_by_id(&mut self, key_id: i64) -> Result<Option<KeyRecord>, StoreError> {
        if let Some(k) = self.key_written(key_id) {
            return Ok(Some(k.clone()));
        }
        Ok(lock(&self.store.inner).keys.get(&key_id).cloned())
    }

    async fn insert_key(&mut self, key: &KeyRecord) -> Result<Option<i64>, StoreError> {
        let mut inner = lock(&self.store.inner);
        if inner.key_id(key.user_id, &key.key).is_some() {
            return Ok(None);
        }
        let id = next_id(&mut inner.next_key_id);
        drop(inner);
        self.writes
            .push(Write::Key(KeyRecord { id, ..key.clone() }));
        Ok(Some(id))
    }

    async fn update_key(&mut self, key: &KeyRecord) -> Result<(), StoreError> {
        self.writes.push(Write::Key(key.clone()));
        Ok(())
    }

    async fn insert_ride(&mut self, ride: &NewRide) -> Result<i64, StoreError> {
        let id = next_id(&mut lock(&self.store.inner).next_ride_id);
        self.writes.push(Write::Ride(RideRow {
            id,
            user_id: ride.user_id,
            idempotency_key_id: Some(ride.key_id),
            params: ride.params,
            distance_mm: ride.distance_mm,
            charge_id: None,
            created_at_ms: ride.created_at_ms,
        }));
        Ok(id)
    }

    async fn set_charge(&mut self, ride_id: i64, charge_id: &str) -> Result<bool, StoreError> {
        let pending = self
            .writes
            .iter()
            .any(|w| matches!(w, Write::Ride(r) if r.id == ride_id));
        if !pending && !lock(&self.store.inner).rides.contains_key(&ride_id) {
            return Ok(false);
        }
        self.writes
            .push(Write::Charge(ride_id, charge_id.to_owned()));
        Ok(true)
    }

    async fn insert_audit(&mut self, audit: &NewAudit<'_>) -> Result<(), StoreError> {
        let id = next_id(&mut lock(&self.store.inner).next_audit_id);
        self.writes.push(Write::Audit(AuditRecord {
            id,
            user_id: audit.user_id,
            action: audit.draft.action.clone(),
            data: audit.draft.data.clone(),
            origin_ip: audit.draft.origin_ip.clone(),
            resource_id: audit.ride_id,
            created_at_ms: audit.created_at_ms,
        }));
        Ok(())
    }

    async fn stage(&mut self, records: &[NewRecord]) -> Result<(), StoreError> {
        self.writes.push(Write::Stage(records.to_vec()));
        Ok(())
    }

    async fn commit(self) -> Result<(), StoreError> {
        let mut inner = lock(&self.store.inner);
        for write in self.writes {
            match write {
                Write::Key(k) => {
                    inner.key_index.insert((k.user_id, k.key.clone()), k.id);
                    inner.keys.insert(k.id, k);
                }
                Write::Ride(r) => {
                    inner.rides.insert(r.id, r);
                }
                Write::Charge(id, charge) => {
                    if let Some(r) = inner.rides.get_mut(&id) {
                        r.charge_id = Some(charge);
                    }
                }
                Write::Audit(a) => inner.audit.push(a),
                Write::Stage(records) => {
                    for record in records {
                        inner.stage(&self.store.producer, record);
                    }
                }
            }
        }
        Ok(())
    }
}

ride_store_impl!(MemoryStore, create in a transaction, {
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

    /// Clears the key's lock; an unknown key has no lock to clear, which is not an error.
    async fn unlock(&self, key_id: i64) -> Result<(), StoreError> {
        // Waits for an open phase on the key, as a row lock would.
        let _writer = self.writer.lock().await;
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

    async fn rides_by_ids(&self, ids: &[i64]) -> Result<Vec<RideRow>, StoreError> {
        let wanted: std::collections::BTreeSet<i64> = ids.iter().copied().collect();
        let inner = lock(&self.inner);
        Ok(wanted
            .iter()
            .filter_map(|id| inner.rides.get(id).cloned())
            .collect())
    }

    async fn forget_user(&self, email: &str, now_ms: i64) -> Result<Forgotten, StoreError> {
        let forgotten = {
            let mut inner = lock(&self.inner);
            let Some(user_id) = inner
                .users
                .values()
                .find(|u| u.email == email)
                .map(|u| u.id)
            else {
                return Err(StoreError::NotFound(format!("no user {email}")));
            };
            let rides: Vec<RideRow> = inner
                .rides
                .values()
                .filter(|r| r.user_id == user_id)
                .cloned()
                .collect();
            for r in &rides {
                inner.rides.remove(&r.id);
                let record = NewRecord::ride_deleted(r.id, user_id, r.distance_mm, now_ms);
                inner.stage(&self.producer, record);
            }
            let keys: Vec<i64> = inner
                .keys
                .values()
                .filter(|k| k.user_id == user_id)
                .map(|k| k.id)
                .collect();
            for id in &keys {
                if let Some(k) = inner.keys.remove(id) {
                    inner.key_index.remove(&(user_id, k.key));
                }
            }
            inner.audit.retain(|a| a.user_id != user_id);
            inner.users.remove(&user_id);
            Forgotten {
                user_id,
                rides: rides.len() as u64,
                keys: keys.len() as u64,
            }
        };
        if forgotten.rides > 0 {
            self.staged_wakeup.notify_one();
        }
        Ok(forgotten)
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
        let _writer = self.writer.lock().await;
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
});

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
        let mut n = 0;
        for s in seqs {
            if let Some(r) = inner.staged.remove(s) {
                inner.published.insert(*s, (r.kind, r.key));
                n += 1;
            }
        }
        Ok(n)
    }

    async fn published(
        &self,
        producer: &str,
        from_seq: u64,
        to_seq: u64,
    ) -> Result<Vec<ports::Published>, StoreError> {
        if producer != self.producer || from_seq > to_seq {
            return Ok(Vec::new());
        }
        Ok(lock(&self.inner)
            .published
            .range(from_seq..=to_seq)
            .map(|(seq, (kind, key))| ports::Published {
                producer: producer.to_owned(),
                seq: *seq,
                kind: kind.clone(),
                key: key.clone(),
            })
            .collect())
    }

    async fn forget_published(&self, producer: &str, below_seq: u64) -> Result<u64, StoreError> {
        if producer != self.producer {
            return Ok(0);
        }
        let mut inner = lock(&self.inner);
        let kept = inner.published.split_off(&below_seq);
        let gone = std::mem::replace(&mut inner.published, kept);
        Ok(gone.len() as u64)
    }

    async fn restage(&self, records: &[LogRecord]) -> Result<(), StoreError> {
        if let Some(r) = records.iter().find(|r| r.producer != self.producer) {
            return Err(StoreError::Other(format!(
                "cannot re-stage a record of producer {} in the store of {}",
                r.producer, self.producer
            )));
        }
        {
            let mut inner = lock(&self.inner);
            for r in records {
                inner.staged.entry(r.seq).or_insert_with(|| r.clone());
            }
        }
        self.staged_wakeup.notify_one();
        Ok(())
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
    //! The store's behaviour is the contract suite's (`tests/contract_memory.rs`); these tests
    //! cover what only the memory store exposes, and its transaction buffering.
    use super::*;
    use domain::{IdempotencyKey, RideParams};
    use ports::{BeginRequest, Begun, RideStore};

    fn req(key: &str, now_ms: i64) -> BeginRequest {
        BeginRequest {
            user_id: 1,
            key: IdempotencyKey::parse(Some(key)).unwrap(),
            params: RideParams::new(1.0, 0.0, 0.0, 0.0).unwrap(),
            method: "POST".into(),
            path: "/rides".into(),
            now_ms,
            thresholds: Thresholds::default(),
            origin_ip: "10.0.0.1".into(),
            correlation: None,
        }
    }

    #[tokio::test]
    async fn the_first_commit_writes_its_audit_record_with_the_ride() {
        let s = MemoryStore::new("p");
        let Begun::Proceed(k) = s
            .begin(&req("key-0123456789abcdefghij", 1000))
            .await
            .unwrap()
        else {
            panic!("a new key proceeds")
        };
        let ride = s.ride_for_key(k.id).await.unwrap().expect("ride");
        let audit = s.audit_records();
        assert_eq!(audit.len(), 1);
        assert_eq!(
            (
                audit[0].user_id,
                audit[0].resource_id,
                audit[0].origin_ip.as_str()
            ),
            (1, ride.id, "10.0.0.1")
        );
        assert_eq!(audit[0].action, "ride.created");
        assert_eq!(audit[0].data, ride.params.to_json());
    }

    #[tokio::test]
    async fn a_dropped_transaction_writes_nothing() {
        let s = MemoryStore::new("p");
        {
            let mut tx = s.tx().await.unwrap();
            let key = KeyRecord::new_locked(&req("key-dropped-0123456789", 0));
            let id = tx.insert_key(&key).await.unwrap().expect("a new key");
            tx.stage(&[NewRecord::cutover("memory://", 0)])
                .await
                .unwrap();
            assert!(
                tx.lock_key_by_id(id).await.unwrap().is_some(),
                "read your writes"
            );
        }
        assert_eq!(s.key(1, "key-dropped-0123456789").await.unwrap(), None);
        assert_eq!(s.staged().await.unwrap(), 0);
        assert_eq!(s.truth().await.unwrap(), Truth::default());
    }
}
