//! The one phase engine: every store runs `begin`, `run_phase` and `put_key` through these
//! functions, and only persists.
//!
//! The domain decides every step of a key's life ([`KeyRecord::decide`],
//! [`KeyRecord::opening_phase`], [`KeyRecord::expect_at`], [`KeyRecord::apply`], [`Phase`]).
//! This module turns those decisions into calls on a [`PhaseTx`]: one open transaction of a
//! store, whose methods each write one thing. A store adapter implements [`PhaseTx`] for its
//! dialect (a handful of statements) and calls [`begin`], [`run_phase`] and [`put_key`] from
//! its `RideStore` methods; it never decides anything itself.
//!
//! ```text
//!  begin:     create: insert the new key ─┬─ inserted: opening phase (ride, audit, staged
//!                                        │            records) ─ commit
//!                                        └─ the user has it: (new transaction) lock key by
//!                                           text ─ decide ─ Replay / Mismatch / InProgress:
//!                                           commit nothing; Proceed: [opening phase] ─ update
//!                                           key ─ commit
//!  run_phase: lock key by id ─ expect_at ─ ride write ─ audit ─ stage ─ update key ─ commit
//! ```
//!
//! Dropping a [`PhaseTx`] without [`PhaseTx::commit`] rolls everything back, so any error
//! between the first statement and the commit leaves the store as it was.

use async_trait::async_trait;
use domain::{
    AuditDraft, BeginRequest, Begun, KeyRecord, NewRecord, Phase, RecoveryPoint, RideParams,
    RideWrite,
};
use ports::StoreError;

/// A ride row to insert.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewRide {
    /// The key that creates it.
    pub(crate) key_id: i64,
    /// Owner.
    pub(crate) user_id: i64,
    /// Coordinates.
    pub(crate) params: RideParams,
    /// Distance in millimetres.
    pub(crate) distance_mm: u64,
    /// Creation time (ms).
    pub(crate) created_at_ms: i64,
}

/// An audit row to insert (resource type `ride`).
#[derive(Debug, Clone, Copy)]
pub(crate) struct NewAudit<'a> {
    /// The acting user.
    pub(crate) user_id: i64,
    /// What the phase recorded.
    pub(crate) draft: &'a AuditDraft,
    /// The ride it is about.
    pub(crate) ride_id: i64,
    /// When (ms).
    pub(crate) created_at_ms: i64,
}

/// One open transaction of a store. Each method is one write or one locking read; none
/// decides anything.
#[async_trait]
pub(crate) trait PhaseTx: Send + Sized {
    /// The key `key` of `user_id`, locked until the transaction ends.
    async fn lock_key(&mut self, user_id: i64, key: &str) -> Result<Option<KeyRecord>, StoreError>;
    /// The key `key_id`, locked until the transaction ends.
    async fn lock_key_by_id(&mut self, key_id: i64) -> Result<Option<KeyRecord>, StoreError>;
    /// Inserts `key` as given except its id; returns the new id, or `None` (and writes
    /// nothing) when the user has a key with that text already.
    async fn insert_key(&mut self, key: &KeyRecord) -> Result<Option<i64>, StoreError>;
    /// Writes the key's mutable fields (lock, last run, recovery point, response).
    async fn update_key(&mut self, key: &KeyRecord) -> Result<(), StoreError>;
    /// Inserts a ride; returns its id.
    async fn insert_ride(&mut self, ride: &NewRide) -> Result<i64, StoreError>;
    /// Sets a ride's charge id; `false` when there is no such ride.
    async fn set_charge(&mut self, ride_id: i64, charge_id: &str) -> Result<bool, StoreError>;
    /// Inserts an audit record.
    async fn insert_audit(&mut self, audit: &NewAudit<'_>) -> Result<(), StoreError>;
    /// Stages records in the outbox, to be sequenced in commit order.
    async fn stage(&mut self, records: &[NewRecord]) -> Result<(), StoreError>;
    /// Writes a phase that inserts no ride (the charge's commit), then the key's state after
    /// it, `after` (what [`KeyRecord::apply`] made of the locked key). One write at a time
    /// unless the store writes all of it at once.
    async fn finish_phase(
        &mut self,
        after: &KeyRecord,
        phase: &Phase,
        now_ms: i64,
    ) -> Result<(), StoreError> {
        finish_one_at_a_time(self, after, phase, now_ms).await
    }
    /// The audit record (if any) and the staged records of a phase, after its ride write.
    /// One write at a time unless the store writes both at once.
    async fn audit_and_stage(
        &mut self,
        audit: Option<&NewAudit<'_>>,
        records: &[NewRecord],
    ) -> Result<(), StoreError> {
        if let Some(audit) = audit {
            self.insert_audit(audit).await?;
        }
        if !records.is_empty() {
            self.stage(records).await?;
        }
        Ok(())
    }
    /// Commits everything.
    async fn commit(self) -> Result<(), StoreError>;
    /// Whether inserting a ride also records its id on its key (a trigger), so that a new
    /// key needs no second write for it.
    fn ride_id_set_by_store(&self) -> bool {
        false
    }
}

/// What a committed transaction did, for the store's wake-ups.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Committed<T> {
    /// The answer.
    pub(crate) value: T,
    /// Whether records were staged (wake the streamer).
    pub(crate) staged: bool,
}

/// A new key for `req` (as the domain decides for a key the user does not have:
/// [`KeyRecord::new_locked`]) moved through its opening phase, which is returned to be
/// written with it. Not written yet.
pub(crate) fn new_key(req: &BeginRequest) -> Result<(KeyRecord, Option<Phase>), StoreError> {
    let mut key = KeyRecord::new_locked(req);
    let opening = opening_phase(&key, req)?;
    if let Some(phase) = &opening {
        key.apply(&phase.then);
    }
    Ok((key, opening))
}

/// Writes a new key (from [`new_key`]) and its opening phase in `tx`, and commits. Returns
/// the key as written, or `None` with nothing written when the user has that key already.
pub(crate) async fn create<T: PhaseTx>(
    mut tx: T,
    key: &KeyRecord,
    opening: Option<&Phase>,
    now_ms: i64,
) -> Result<Option<KeyRecord>, StoreError> {
    let Some(id) = tx.insert_key(key).await? else {
        return Ok(None);
    };
    let mut key = KeyRecord { id, ..key.clone() };
    if let Some(phase) = opening {
        let written = write_phase(&mut tx, &key, phase, now_ms).await?;
        if written.ride_id.is_some() {
            key.ride_id = written.ride_id;
            if !tx.ride_id_set_by_store() {
                tx.update_key(&key).await?;
            }
        }
    }
    tx.commit().await?;
    Ok(Some(key))
}

/// Phase 1 for a key the user has already (the store's `create` found it): lock it, let the
/// domain decide, and for `Proceed` take the lock (a key left at `started` gets its ride in
/// the same transaction).
pub(crate) async fn begin_existing<T: PhaseTx>(
    mut tx: T,
    req: &BeginRequest,
) -> Result<Committed<Begun>, StoreError> {
    let existing = tx
        .lock_key(req.user_id, req.key.as_str())
        .await?
        .ok_or_else(|| {
            StoreError::Conflict(format!("idempotency key {:?} vanished", req.key.as_str()))
        })?;
    let mut begun = KeyRecord::decide(Some(&existing), req);
    let mut staged = false;
    if let Begun::Proceed(key) = &mut begun {
        if let Some(phase) = opening_phase(key, req)? {
            key.apply(&phase.then);
            let written = write_phase(&mut tx, key, &phase, req.now_ms).await?;
            staged = written.staged;
            key.ride_id = written.ride_id.or(key.ride_id);
        }
        tx.update_key(key).await?;
    }
    tx.commit().await?;
    Ok(Committed {
        value: begun,
        staged,
    })
}

/// The domain's opening phase of `key` (a bug if the ride aggregate refuses).
fn opening_phase(key: &KeyRecord, req: &BeginRequest) -> Result<Option<Phase>, StoreError> {
    key.opening_phase(req)
        .map_err(|e| StoreError::Other(format!("Bug! The ride of key {} was refused: {e}", key.id)))
}

/// One atomic phase on the key `key_id`, which must be at `expected`: see
/// `RideStore::run_phase`.
pub(crate) async fn run_phase<T: PhaseTx>(
    mut tx: T,
    key_id: i64,
    expected: RecoveryPoint,
    phase: &Phase,
    now_ms: i64,
) -> Result<Committed<KeyRecord>, StoreError> {
    let mut key = tx
        .lock_key_by_id(key_id)
        .await?
        .ok_or_else(|| StoreError::NotFound(format!("idempotency key {key_id}")))?;
    key.expect_at(expected)
        .map_err(|moved| StoreError::Conflict(moved.to_string()))?;
    if matches!(phase.ride, RideWrite::Insert { .. }) {
        let written = write_phase(&mut tx, &key, phase, now_ms).await?;
        key.apply(&phase.then);
        key.ride_id = written.ride_id.or(key.ride_id);
        tx.update_key(&key).await?;
    } else {
        key.apply(&phase.then);
        tx.finish_phase(&key, phase, now_ms).await?;
    }
    tx.commit().await?;
    Ok(Committed {
        value: key,
        staged: !phase.records.is_empty(),
    })
}

/// [`PhaseTx::finish_phase`] one write at a time.
pub(crate) async fn finish_one_at_a_time<T: PhaseTx>(
    tx: &mut T,
    after: &KeyRecord,
    phase: &Phase,
    now_ms: i64,
) -> Result<(), StoreError> {
    write_phase(tx, after, phase, now_ms).await?;
    tx.update_key(after).await
}

/// Inserts a key exactly as given except its id: see `RideStore::put_key`.
pub(crate) async fn put_key<T: PhaseTx>(
    mut tx: T,
    key: &KeyRecord,
) -> Result<KeyRecord, StoreError> {
    let id = tx.insert_key(key).await?.ok_or_else(|| {
        StoreError::Conflict(format!(
            "user {} already has the idempotency key {:?}",
            key.user_id, key.key
        ))
    })?;
    tx.commit().await?;
    Ok(KeyRecord { id, ..key.clone() })
}

/// What [`write_phase`] wrote.
struct Written {
    /// Records were staged.
    staged: bool,
    /// The id of the ride it inserted.
    ride_id: Option<i64>,
}

/// The ride write, the audit record and the staged records of `phase`.
async fn write_phase<T: PhaseTx>(
    tx: &mut T,
    key: &KeyRecord,
    phase: &Phase,
    now_ms: i64,
) -> Result<Written, StoreError> {
    let inserted = matches!(phase.ride, RideWrite::Insert { .. });
    let ride_id = match &phase.ride {
        RideWrite::Insert {
            user_id,
            params,
            distance_mm,
        } => {
            let ride = NewRide {
                key_id: key.id,
                user_id: *user_id,
                params: *params,
                distance_mm: *distance_mm,
                created_at_ms: now_ms,
            };
            tx.insert_ride(&ride).await?
        }
        RideWrite::SetCharge { ride_id, charge_id } => {
            if !tx.set_charge(*ride_id, charge_id).await? {
                return Err(StoreError::NotFound(format!("ride {ride_id}")));
            }
            *ride_id
        }
        RideWrite::Existing(ride_id) => *ride_id,
    };
    let audit = phase.audit.as_ref().map(|draft| NewAudit {
        user_id: key.user_id,
        draft,
        ride_id,
        created_at_ms: now_ms,
    });
    let records: Vec<NewRecord> = phase
        .records
        .iter()
        .map(|d| d.build(ride_id, now_ms))
        .collect();
    tx.audit_and_stage(audit.as_ref(), &records).await?;
    Ok(Written {
        staged: !records.is_empty(),
        ride_id: inserted.then_some(ride_id),
    })
}

/// `impl RideStore for $ty` with `begin`, `run_phase` and `put_key` through the engine, plus
/// the store's own `{ items }`. The store has `async fn tx(&self) -> Result<impl PhaseTx,
/// StoreError>`, `fn woke<T>(&self, Committed<T>) -> T` (which wakes the streamer after a
/// commit that staged records), and `async fn create(&self, &KeyRecord, Option<&Phase>, i64)
/// -> Result<Option<KeyRecord>, StoreError>`: [`create`] in a transaction, or anything that
/// writes the same rows atomically.
///
/// `begin` first writes the request's key as new (most requests carry a new key: one step
/// instead of a locking read and an insert); only when the user has it already does it lock,
/// read and decide ([`begin_existing`]).
///
/// The whole impl is generated (not just the methods) because `#[async_trait]` must see the
/// methods' tokens, not a macro call.
macro_rules! ride_store_impl {
    // A store without a one-step `create` of its own: [`create`] in a transaction.
    ($ty:ty, create in a transaction, { $($items:tt)* }) => {
        impl $ty {
            async fn create(
                &self,
                key: &domain::KeyRecord,
                opening: Option<&domain::Phase>,
                now_ms: i64,
            ) -> Result<Option<domain::KeyRecord>, ports::StoreError> {
                $crate::phase::create(self.tx().await?, key, opening, now_ms).await
            }
        }
        $crate::phase::ride_store_impl!($ty, { $($items)* });
    };
    ($ty:ty, { $($items:tt)* }) => {
        #[async_trait::async_trait]
        impl ports::RideStore for $ty {
            async fn begin(
                &self,
                req: &ports::BeginRequest,
            ) -> Result<ports::Begun, ports::StoreError> {
                let (key, opening) = $crate::phase::new_key(req)?;
                if let Some(key) = self.create(&key, opening.as_ref(), req.now_ms).await? {
                    let staged = opening.is_some_and(|p| !p.records.is_empty());
                    let value = ports::Begun::Proceed(key);
                    return Ok(self.woke($crate::phase::Committed { value, staged }));
                }
                let tx = self.tx().await?;
                Ok(self.woke($crate::phase::begin_existing(tx, req).await?))
            }

            async fn run_phase(
                &self,
                key_id: i64,
                expected: domain::RecoveryPoint,
                phase: &domain::Phase,
                now_ms: i64,
            ) -> Result<domain::KeyRecord, ports::StoreError> {
                let tx = self.tx().await?;
                let committed =
                    $crate::phase::run_phase(tx, key_id, expected, phase, now_ms).await?;
                Ok(self.woke(committed))
            }

            async fn put_key(
                &self,
                key: &domain::KeyRecord,
            ) -> Result<domain::KeyRecord, ports::StoreError> {
                $crate::phase::put_key(self.tx().await?, key).await
            }

            $($items)*
        }
    };
}
pub(crate) use ride_store_impl;
