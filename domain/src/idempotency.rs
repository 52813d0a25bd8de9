//! Stripe-style idempotency keys, as pure decisions.
//!
//! A `POST /rides` runs as a chain of *atomic phases*. Each phase is one transaction in the
//! store, and ends by moving the key to its next *recovery point*. Only the processor call has
//! to sit between two commits, so a ride takes **two** transactions (the reference took four):
//!
//! ```text
//!            commit 1 (begin)                      processor          commit 2
//!  (none) ──key + ride + audit + ride.created──▶ ride_created ──charge──▶ finished 201
//!                                                     │        (charge id, ride.charged,
//!                                                     │         receipt.requested, response)
//!                                                     └── declined 402 / processor error 503 ──▶ finished
//! ```
//!
//! Recovery points written by older versions still resume: a key at `started` gets its ride in
//! the transaction that resumes it, a key at `charge_created` gets its receipt ([`Phase::receipt`]).
//!
//! A crash between the commits leaves the key at `ride_created` with its lock taken; a client
//! retry with the same key (once the lock expired) or the completer resumes from there, and the
//! processor-side idempotency key ([`KeyRecord::processor_key`]) makes the second charge
//! attempt return the first charge. This module decides every step of the key's life
//! ([`KeyRecord::decide`], [`KeyRecord::resume`], [`KeyRecord::apply`], [`KeyRecord::expect_at`],
//! [`Phase`]); the store adapters commit what it decided; the services only call.

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::record::RecordDraft;
use crate::ride::{Ride, RideCommand, RideError, RideEvent, RideParams};

/// Shortest accepted key.
pub const MIN_KEY_LEN: usize = 20;
/// Longest accepted key (the reference enforced it only by a database CHECK, answering 500;
/// we answer 400 deliberately).
pub const MAX_KEY_LEN: usize = 100;
/// The amount charged for every ride, in cents.
pub const RIDE_CHARGE_CENTS: i64 = 2000;
/// The currency of [`RIDE_CHARGE_CENTS`].
pub const RIDE_CHARGE_CURRENCY: &str = "usd";

/// Exact user-facing messages of the reference API (section 2.3).
pub mod messages {
    /// 201 body message.
    pub const CREATED: &str = "Payment accepted. Your pilot is on their way!";
    /// 401 without credentials.
    pub const AUTH_REQUIRED: &str = "Please specify credentials in the Authorization header.";
    /// 401 with unknown credentials.
    pub const AUTH_INVALID: &str = "Credentials in Authorization were invalid.";
    /// 400 without a key.
    pub const KEY_REQUIRED: &str =
        "Please specify an idempotency key with the Idempotency-Key header.";
    /// 400 with a short key.
    pub const KEY_TOO_SHORT: &str = "Idempotency-Key must be at least 20 characters long.";
    /// 400 with a long key (deliberate fix: the reference answered 500).
    pub const KEY_TOO_LONG: &str = "Idempotency-Key must be at most 100 characters long.";
    /// 409 when the parameters differ from the stored ones.
    pub const PARAMS_MISMATCH: &str = "There was a mismatch between this request's parameters and the parameters of a previously stored request with the same Idempotency-Key.";
    /// 409 while another request holds the key.
    pub const IN_PROGRESS: &str =
        "An API request with the same Idempotency-Key is already in progress.";
    /// 409 on a serialization failure (the reference's typo is kept byte for byte).
    pub const CONFLICT: &str =
        "Conflict detected with a concurrent request. Please retry with the same Idmpotency-Key.";
    /// 500 on any internal error.
    pub const INTERNAL: &str = "Internal server error. Please retry the request periodically with the same Idempotency-Key until it succeeds.";
    /// 402 prefix; the processor's message follows.
    pub const CARD_ERROR_PREFIX: &str = "Error from payment processor: ";
    /// 503 on a processor error.
    pub const PROCESSOR_ERROR: &str = "Error from payment processor. Please contact support.";
}

/// A validated `Idempotency-Key` header value.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct IdempotencyKey(String);

/// Why an `Idempotency-Key` was refused. `Display` is the exact message (status 400).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum KeyError {
    /// Missing or empty.
    #[error("{}", messages::KEY_REQUIRED)]
    Missing,
    /// Fewer than [`MIN_KEY_LEN`] characters.
    #[error("{}", messages::KEY_TOO_SHORT)]
    TooShort,
    /// More than [`MAX_KEY_LEN`] characters.
    #[error("{}", messages::KEY_TOO_LONG)]
    TooLong,
}

impl IdempotencyKey {
    /// Validates a header value.
    ///
    /// # Errors
    /// [`KeyError`] when the value is empty, shorter than 20 or longer than 100 characters.
    pub fn parse(raw: Option<&str>) -> Result<Self, KeyError> {
        let raw = raw.filter(|s| !s.is_empty()).ok_or(KeyError::Missing)?;
        match raw.chars().count() {
            n if n < MIN_KEY_LEN => Err(KeyError::TooShort),
            n if n > MAX_KEY_LEN => Err(KeyError::TooLong),
            _ => Ok(Self(raw.to_owned())),
        }
    }

    /// The key text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where a request stopped; stored on the key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecoveryPoint {
    /// The key exists; nothing else happened.
    Started,
    /// The ride row exists.
    RideCreated,
    /// The processor charged the ride.
    ChargeCreated,
    /// A response is stored; replays return it.
    Finished,
}

impl RecoveryPoint {
    /// The stored name (`started`, `ride_created`, `charge_created`, `finished`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Started => "started",
            Self::RideCreated => "ride_created",
            Self::ChargeCreated => "charge_created",
            Self::Finished => "finished",
        }
    }

    /// Parses a stored name.
    ///
    /// # Errors
    /// [`UnknownRecoveryPoint`] for a name no version of the store ever wrote.
    pub fn parse(s: &str) -> Result<Self, UnknownRecoveryPoint> {
        Ok(match s {
            "started" => Self::Started,
            "ride_created" => Self::RideCreated,
            "charge_created" => Self::ChargeCreated,
            "finished" => Self::Finished,
            other => return Err(UnknownRecoveryPoint(other.to_owned())),
        })
    }
}

/// A stored recovery point that no version of the store ever wrote (corrupt data).
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("Bug! Unhandled recovery point '{0}'.")]
pub struct UnknownRecoveryPoint(pub String);

/// A phase was asked to run on a key that is no longer where its caller saw it (a concurrent
/// request moved it on). The API answers 409.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("idempotency key {key_id} is at {}, not {}", .at.as_str(), .expected.as_str())]
pub struct KeyMoved {
    /// The key.
    pub key_id: i64,
    /// Where it is.
    pub at: RecoveryPoint,
    /// Where the phase expected it.
    pub expected: RecoveryPoint,
}

/// A request arriving with a key (phase 1 input): everything the decision and the first
/// transaction need.
#[derive(Debug, Clone, PartialEq)]
pub struct BeginRequest {
    /// The authenticated user.
    pub user_id: i64,
    /// The key.
    pub key: IdempotencyKey,
    /// The parsed parameters.
    pub params: RideParams,
    /// `POST`.
    pub method: String,
    /// `/rides`.
    pub path: String,
    /// Now (ms).
    pub now_ms: i64,
    /// Lock timeout and friends.
    pub thresholds: Thresholds,
    /// The client's address, for the audit record written with the ride.
    pub origin_ip: String,
    /// The request's correlation id, carried by the records the first transaction stages.
    pub correlation: Option<uuid::Uuid>,
}

/// What happens to a request carrying a key: the domain's decision and the store's answer
/// (one enum for both).
#[derive(Debug, Clone, PartialEq)]
pub enum Begun {
    /// The key is this request's: created locked, or resumed (lock taken, `last_run_at`
    /// bumped). From the store, the key is as committed, its ride created.
    Proceed(KeyRecord),
    /// Finished earlier: replay this.
    Replay(StoredResponse),
    /// Same key, other parameters: 409.
    Mismatch,
    /// Another request holds the lock: 409 with `Retry-After`.
    InProgress,
}

/// A response stored on a finished key and replayed verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredResponse {
    /// HTTP status code.
    pub status: u16,
    /// JSON body.
    pub body: serde_json::Value,
}

impl StoredResponse {
    /// 201, ride accepted.
    pub fn created() -> Self {
        Self {
            status: 201,
            body: serde_json::json!({ "message": messages::CREATED }),
        }
    }
    /// 402, card declined with the processor's message.
    pub fn card_declined(message: &str) -> Self {
        let error = format!("{}{message}", messages::CARD_ERROR_PREFIX);
        Self {
            status: 402,
            body: serde_json::json!({ "error": error }),
        }
    }
    /// 503, processor error (stored as final, as in the reference).
    pub fn processor_error() -> Self {
        Self {
            status: 503,
            body: serde_json::json!({ "error": messages::PROCESSOR_ERROR }),
        }
    }
}

/// An idempotency key as the store keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyRecord {
    /// Store-assigned id (also names the processor-side idempotency key).
    pub id: i64,
    /// Owner; keys are scoped per user.
    pub user_id: i64,
    /// The key text.
    pub key: String,
    /// Creation time (ms).
    pub created_at_ms: i64,
    /// Last time a request took the lock (ms).
    pub last_run_at_ms: i64,
    /// Lock time, or `None` when unlocked.
    pub locked_at_ms: Option<i64>,
    /// `POST`.
    pub request_method: String,
    /// `/rides`.
    pub request_path: String,
    /// The parsed parameters of the first request.
    pub request_params: RideParams,
    /// Progress.
    pub recovery_point: RecoveryPoint,
    /// The stored response, once finished.
    pub response: Option<StoredResponse>,
    /// The ride created for this key, set by the commit that creates it (`None` before, and
    /// on keys written by older versions, whose ride is found by its key id).
    pub ride_id: Option<i64>,
}

/// Timing thresholds of the key life cycle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds {
    /// A lock older than this is considered abandoned (reference: 90 s).
    pub lock_timeout_ms: i64,
    /// The completer leaves younger keys to client retries (reference: 300 s).
    pub completer_grace_ms: i64,
    /// The completer skips keys run more recently than this (reference: 60 s).
    pub completer_last_run_ms: i64,
    /// The reaper deletes keys older than this (reference: 72 h).
    pub reap_after_ms: i64,
}

/// The completer's rule ([`KeyRecord::is_completable`]) as bounds a store filters on: a key
/// qualifies when it is not finished, `created_at_ms < created_before`, `last_run_at_ms <
/// last_run_before`, and it is unlocked or `locked_at_ms <= lock_expired_at_or_before`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompletableBounds {
    /// Keys created before this are past the completer's grace period.
    pub created_before: i64,
    /// Keys run before this were not run recently.
    pub last_run_before: i64,
    /// Locks taken at or before this have expired.
    pub lock_expired_at_or_before: i64,
}

impl Thresholds {
    /// The completer's rule at `now_ms`, as bounds.
    pub fn completable_bounds(&self, now_ms: i64) -> CompletableBounds {
        CompletableBounds {
            created_before: now_ms.saturating_sub(self.completer_grace_ms),
            last_run_before: now_ms.saturating_sub(self.completer_last_run_ms),
            lock_expired_at_or_before: now_ms.saturating_sub(self.lock_timeout_ms),
        }
    }

    /// The reaper's rule at `now_ms`: keys created before this are deleted.
    pub fn reap_before(&self, now_ms: i64) -> i64 {
        now_ms.saturating_sub(self.reap_after_ms)
    }
}

impl Default for Thresholds {
    fn default() -> Self {
        Self {
            lock_timeout_ms: 90_000,
            completer_grace_ms: 300_000,
            completer_last_run_ms: 60_000,
            reap_after_ms: 72 * 3600 * 1000,
        }
    }
}

impl KeyRecord {
    /// A new key for `req`, locked at `started` (its id is the store's to assign).
    pub fn new_locked(req: &BeginRequest) -> Self {
        Self {
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
            ride_id: None,
        }
    }

    /// The ride of a key at `ride_created` whose ride id is known, as the aggregate: the
    /// commit that charges a ride is the one that moves its key past `ride_created`, so that
    /// ride is requested and not paid yet, with the distance of the key's parameters.
    pub fn ride_awaiting_payment(&self) -> Option<(i64, Ride)> {
        let ride_id = self.ride_id?;
        (self.recovery_point == RecoveryPoint::RideCreated).then(|| {
            let requested = RideEvent::Requested {
                user_id: self.user_id,
                distance_mm: self.request_params.distance_mm(),
            };
            (ride_id, Ride::from_events(&[requested]))
        })
    }

    /// Takes the lock of an abandoned key for a request at `now_ms`.
    pub fn resume(&mut self, now_ms: i64) {
        self.locked_at_ms = Some(now_ms);
        self.last_run_at_ms = now_ms;
    }

    /// Moves the key as a committed phase says.
    pub fn apply(&mut self, transition: &KeyTransition) {
        match transition {
            KeyTransition::To(rp) => self.recovery_point = *rp,
            KeyTransition::Finish(resp) => {
                self.recovery_point = RecoveryPoint::Finished;
                self.response = Some(resp.clone());
                self.locked_at_ms = None;
            }
        }
    }

    /// Checks that the key is where a phase expects it.
    ///
    /// # Errors
    /// [`KeyMoved`] when a concurrent request moved it on.
    pub fn expect_at(&self, expected: RecoveryPoint) -> Result<(), KeyMoved> {
        if self.recovery_point == expected {
            Ok(())
        } else {
            Err(KeyMoved {
                key_id: self.id,
                at: self.recovery_point,
                expected,
            })
        }
    }

    /// Whether a live request holds the lock at `now_ms`.
    pub fn is_locked(&self, now_ms: i64, t: &Thresholds) -> bool {
        self.locked_at_ms
            .is_some_and(|at| at > t.completable_bounds(now_ms).lock_expired_at_or_before)
    }

    /// Whether the completer should push this key through at `now_ms` (reference 2.6).
    pub fn is_completable(&self, now_ms: i64, t: &Thresholds) -> bool {
        let b = t.completable_bounds(now_ms);
        self.recovery_point != RecoveryPoint::Finished
            && self.created_at_ms < b.created_before
            && self.last_run_at_ms < b.last_run_before
            && !self.is_locked(now_ms, t)
    }

    /// Whether the reaper should delete this key at `now_ms` (reference 2.8).
    pub fn is_reapable(&self, now_ms: i64, t: &Thresholds) -> bool {
        self.created_at_ms < t.reap_before(now_ms)
    }

    /// Phase 1: what happens to `req`, given its key as stored (or none). `Proceed` carries
    /// the key to write: [`KeyRecord::new_locked`] or the existing key [`KeyRecord::resume`]d.
    pub fn decide(existing: Option<&Self>, req: &BeginRequest) -> Begun {
        let Some(key) = existing else {
            return Begun::Proceed(Self::new_locked(req));
        };
        if key.request_params != req.params {
            return Begun::Mismatch;
        }
        if key.is_locked(req.now_ms, &req.thresholds) {
            return Begun::InProgress;
        }
        match (&key.recovery_point, &key.response) {
            (RecoveryPoint::Finished, Some(resp)) => Begun::Replay(resp.clone()),
            _ => {
                let mut key = key.clone();
                key.resume(req.now_ms);
                Begun::Proceed(key)
            }
        }
    }

    /// The phase committed in the same transaction as taking the key: a key at `started`
    /// gets its ride there (new keys, and keys an older version left at `started`).
    ///
    /// # Errors
    /// [`RideError`] if the ride aggregate refuses (a bug).
    pub fn opening_phase(&self, req: &BeginRequest) -> Result<Option<Phase>, RideError> {
        match self.recovery_point {
            RecoveryPoint::Started => {
                Phase::create_ride(self, &req.origin_ip, req.correlation).map(Some)
            }
            _ => Ok(None),
        }
    }

    /// The next phase to run from this key's recovery point.
    pub fn next_phase(&self) -> NextPhase {
        match self.recovery_point {
            RecoveryPoint::Started => NextPhase::CreateRide,
            RecoveryPoint::RideCreated => NextPhase::Charge,
            RecoveryPoint::ChargeCreated => NextPhase::StageReceipt,
            RecoveryPoint::Finished => match &self.response {
                Some(r) => NextPhase::Respond(r.clone()),
                None => NextPhase::Respond(StoredResponse {
                    status: 500,
                    body: serde_json::json!({ "error": messages::INTERNAL }),
                }),
            },
        }
    }

    /// The processor-side idempotency key for this key's charge: same key, same charge.
    pub fn processor_key(&self) -> String {
        format!("rocket-rides-atomic-{}", self.id)
    }
}

/// The phase that follows a recovery point.
#[derive(Debug, Clone, PartialEq)]
pub enum NextPhase {
    /// `started`: create the ride ([`Phase::create_ride`]; the store's `begin` already does it
    /// in the transaction that takes the key, so a service sees this only from a fixture).
    CreateRide,
    /// `ride_created`: call the processor, then [`Phase::charged`], [`Phase::declined`] or
    /// [`Phase::processor_error`], each of which finishes the key.
    Charge,
    /// `charge_created` (left by an older version, which charged in a phase of its own):
    /// [`Phase::receipt`].
    StageReceipt,
    /// `finished`: answer with the stored response.
    Respond(StoredResponse),
}

/// The write to the `rides` table in a phase.
#[derive(Debug, Clone, PartialEq)]
pub enum RideWrite {
    /// Insert a ride for the key; records are built with the new ride's id.
    Insert {
        /// Owner.
        user_id: i64,
        /// Coordinates.
        params: RideParams,
        /// Great-circle distance in millimetres.
        distance_mm: u64,
    },
    /// Set the charge id of an existing ride.
    SetCharge {
        /// The ride.
        ride_id: i64,
        /// The processor's charge id.
        charge_id: String,
    },
    /// No write; the phase's records are about this ride.
    Existing(i64),
}

/// An audit record written with the ride (reference `audit_records`).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditDraft {
    /// E.g. `ride.created`.
    pub action: String,
    /// The request parameters.
    pub data: serde_json::Value,
    /// The client's address.
    pub origin_ip: String,
}

/// Where the key goes at the end of a phase.
#[derive(Debug, Clone, PartialEq)]
pub enum KeyTransition {
    /// A new recovery point; the lock is kept.
    To(RecoveryPoint),
    /// Store the response, set `finished`, release the lock.
    Finish(StoredResponse),
}

/// Everything one atomic phase writes. The store commits all of it in one transaction, or
/// nothing: ride write, audit record, staged log records, key transition.
#[derive(Debug, Clone, PartialEq)]
pub struct Phase {
    /// The ride write.
    pub ride: RideWrite,
    /// An audit record about the ride, if any.
    pub audit: Option<AuditDraft>,
    /// Log records to stage, built with the ride's id.
    pub records: Vec<RecordDraft>,
    /// The key's next state.
    pub then: KeyTransition,
}

impl Phase {
    /// Commit 1 (`started` → `ride_created`): insert the ride, its audit record and
    /// `ride.created`.
    ///
    /// # Errors
    /// [`RideError`] if the ride aggregate refuses (never for a fresh ride).
    pub fn create_ride(
        key: &KeyRecord,
        origin_ip: &str,
        correlation: Option<uuid::Uuid>,
    ) -> Result<Self, RideError> {
        let cmd = RideCommand::Request {
            user_id: key.user_id,
            params: key.request_params,
        };
        let events = Ride::default().decide(&cmd)?;
        Ok(Self {
            ride: RideWrite::Insert {
                user_id: key.user_id,
                params: key.request_params,
                distance_mm: key.request_params.distance_mm(),
            },
            audit: Some(AuditDraft {
                action: "ride.created".into(),
                data: key.request_params.to_json(),
                origin_ip: origin_ip.to_owned(),
            }),
            records: events
                .iter()
                .map(|e| RecordDraft::from_event(e, correlation))
                .collect(),
            then: KeyTransition::To(RecoveryPoint::RideCreated),
        })
    }

    /// Commit 2 (`ride_created` → `finished` 201): store the charge id, stage `ride.charged`
    /// and `receipt.requested` (the reference's `send_ride_receipt` job), store the response.
    ///
    /// # Errors
    /// [`RideError`] when the ride is not awaiting its payment.
    pub fn charged(
        ride: &Ride,
        ride_id: i64,
        charge_id: &str,
        correlation: Option<uuid::Uuid>,
    ) -> Result<Self, RideError> {
        let cmd = RideCommand::RecordCharge {
            charge_id: charge_id.to_owned(),
        };
        let mut records = drafts(ride, &cmd, correlation)?;
        records.push(receipt_draft(ride.user_id(), correlation));
        Ok(Self {
            ride: RideWrite::SetCharge {
                ride_id,
                charge_id: charge_id.to_owned(),
            },
            audit: None,
            records,
            then: KeyTransition::Finish(StoredResponse::created()),
        })
    }

    /// Commit 2 (`ride_created` → `finished` 402): stage `ride.declined`.
    ///
    /// # Errors
    /// [`RideError`] when the ride is not awaiting its payment.
    pub fn declined(
        ride: &Ride,
        ride_id: i64,
        message: &str,
        correlation: Option<uuid::Uuid>,
    ) -> Result<Self, RideError> {
        let cmd = RideCommand::RecordDecline {
            message: message.to_owned(),
        };
        Ok(Self {
            ride: RideWrite::Existing(ride_id),
            audit: None,
            records: drafts(ride, &cmd, correlation)?,
            then: KeyTransition::Finish(StoredResponse::card_declined(message)),
        })
    }

    /// Commit 2 (`ride_created` → `finished` 503, stored as final, as in the reference).
    pub fn processor_error(ride_id: i64) -> Self {
        Self {
            ride: RideWrite::Existing(ride_id),
            audit: None,
            records: vec![],
            then: KeyTransition::Finish(StoredResponse::processor_error()),
        }
    }

    /// `charge_created` → `finished` 201: stage `receipt.requested`. Only keys written by an
    /// older version (which charged in a phase of its own) are ever at `charge_created`.
    pub fn receipt(key: &KeyRecord, ride_id: i64, correlation: Option<uuid::Uuid>) -> Self {
        Self {
            ride: RideWrite::Existing(ride_id),
            audit: None,
            records: vec![receipt_draft(key.user_id, correlation)],
            then: KeyTransition::Finish(StoredResponse::created()),
        }
    }
}

/// The reference's `send_ride_receipt` job, as a record.
pub(crate) fn receipt_draft(user_id: i64, correlation: Option<uuid::Uuid>) -> RecordDraft {
    let mut payload = serde_json::Map::new();
    payload.insert("amount".into(), RIDE_CHARGE_CENTS.into());
    payload.insert("currency".into(), RIDE_CHARGE_CURRENCY.into());
    payload.insert("user_id".into(), user_id.into());
    RecordDraft {
        kind: crate::record::kinds::RECEIPT_REQUESTED.into(),
        payload,
        correlation_id: correlation,
    }
}

fn drafts(
    ride: &Ride,
    cmd: &RideCommand,
    correlation: Option<uuid::Uuid>,
) -> Result<Vec<RecordDraft>, RideError> {
    Ok(ride
        .decide(cmd)?
        .iter()
        .map(|e: &RideEvent| RecordDraft::from_event(e, correlation))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(lat: f64) -> RideParams {
        RideParams::new(lat, 0.0, 0.0, 0.0).unwrap()
    }

    fn key(rp: RecoveryPoint, locked_at_ms: Option<i64>) -> KeyRecord {
        KeyRecord {
            id: 7,
            user_id: 1,
            key: "k".repeat(20),
            created_at_ms: 0,
            last_run_at_ms: 0,
            locked_at_ms,
            request_method: "POST".into(),
            request_path: "/rides".into(),
            request_params: params(0.0),
            recovery_point: rp,
            response: (rp == RecoveryPoint::Finished).then(StoredResponse::created),
            ride_id: None,
        }
    }

    const T: Thresholds = Thresholds {
        lock_timeout_ms: 90_000,
        completer_grace_ms: 300_000,
        completer_last_run_ms: 60_000,
        reap_after_ms: 259_200_000,
    };

    #[test]
    fn key_length_rules() {
        assert_eq!(IdempotencyKey::parse(None), Err(KeyError::Missing));
        assert_eq!(IdempotencyKey::parse(Some("")), Err(KeyError::Missing));
        assert_eq!(IdempotencyKey::parse(Some("xxx")), Err(KeyError::TooShort));
        assert_eq!(
            IdempotencyKey::parse(Some(&"x".repeat(101))),
            Err(KeyError::TooLong)
        );
        assert_eq!(
            IdempotencyKey::parse(Some(&"x".repeat(20)))
                .unwrap()
                .as_str(),
            "x".repeat(20)
        );
        assert_eq!(KeyError::TooShort.to_string(), messages::KEY_TOO_SHORT);
    }

    fn begin_req(p: RideParams, now_ms: i64) -> BeginRequest {
        BeginRequest {
            user_id: 1,
            key: IdempotencyKey::parse(Some(&"k".repeat(20))).unwrap(),
            params: p,
            method: "POST".into(),
            path: "/rides".into(),
            now_ms,
            thresholds: T,
            origin_ip: "127.0.0.1".into(),
            correlation: None,
        }
    }

    #[test]
    fn decisions_follow_the_reference() {
        let now = 1_000_000;
        let p = params(0.0);
        let req = begin_req(p, now);
        let Begun::Proceed(new) = KeyRecord::decide(None, &req) else {
            panic!("a new key proceeds")
        };
        assert_eq!(new, KeyRecord::new_locked(&req));
        assert_eq!(
            (new.recovery_point, new.locked_at_ms, new.last_run_at_ms),
            (RecoveryPoint::Started, Some(now), now)
        );
        let unlocked = key(RecoveryPoint::Started, None);
        let mut resumed = unlocked.clone();
        resumed.resume(now);
        assert_eq!(
            KeyRecord::decide(Some(&unlocked), &req),
            Begun::Proceed(resumed.clone())
        );
        assert_eq!(resumed.locked_at_ms, Some(now));
        assert_eq!(
            KeyRecord::decide(Some(&unlocked), &begin_req(params(10.0), now)),
            Begun::Mismatch
        );
        let locked = key(RecoveryPoint::Started, Some(now));
        assert_eq!(KeyRecord::decide(Some(&locked), &req), Begun::InProgress);
        let stale = key(RecoveryPoint::Started, Some(now - 90_000 - 1));
        assert!(matches!(
            KeyRecord::decide(Some(&stale), &req),
            Begun::Proceed(_)
        ));
        let done = key(RecoveryPoint::Finished, None);
        assert_eq!(
            KeyRecord::decide(Some(&done), &req),
            Begun::Replay(StoredResponse::created())
        );
    }

    #[test]
    fn apply_and_expect_at_move_the_key() {
        let mut k = key(RecoveryPoint::Started, Some(5));
        assert_eq!(k.expect_at(RecoveryPoint::Started), Ok(()));
        k.apply(&KeyTransition::To(RecoveryPoint::RideCreated));
        assert_eq!(k.locked_at_ms, Some(5), "a recovery point keeps the lock");
        let moved = k.expect_at(RecoveryPoint::Started).unwrap_err();
        assert_eq!(
            moved.to_string(),
            "idempotency key 7 is at ride_created, not started"
        );
        k.apply(&KeyTransition::Finish(StoredResponse::created()));
        assert_eq!(k.recovery_point, RecoveryPoint::Finished);
        assert_eq!(k.locked_at_ms, None);
        assert_eq!(k.response, Some(StoredResponse::created()));
    }

    #[test]
    fn a_key_at_ride_created_knows_its_unpaid_ride() {
        let mut k = key(RecoveryPoint::RideCreated, Some(0));
        k.request_params = params(1.0);
        assert_eq!(
            k.ride_awaiting_payment(),
            None,
            "no ride id: look the ride up"
        );
        k.ride_id = Some(9);
        let (id, ride) = k.ride_awaiting_payment().expect("known");
        assert_eq!(id, 9);
        assert_eq!(ride.status(), &crate::RideStatus::Requested);
        assert_eq!(ride.distance_mm(), params(1.0).distance_mm());
        assert_eq!(ride.user_id(), 1);
        k.recovery_point = RecoveryPoint::ChargeCreated;
        assert_eq!(k.ride_awaiting_payment(), None, "charged already");
    }

    #[test]
    fn only_a_key_at_started_opens_with_its_ride() {
        let req = begin_req(params(1.0), 0);
        let new = KeyRecord::new_locked(&req);
        let opening = new.opening_phase(&req).unwrap().expect("a ride");
        assert_eq!(opening.then, KeyTransition::To(RecoveryPoint::RideCreated));
        assert!(matches!(opening.ride, RideWrite::Insert { .. }));
        for rp in [
            RecoveryPoint::RideCreated,
            RecoveryPoint::ChargeCreated,
            RecoveryPoint::Finished,
        ] {
            assert_eq!(key(rp, None).opening_phase(&req), Ok(None));
        }
    }

    #[test]
    fn completer_and_reaper_eligibility() {
        let now = 10_000_000;
        let mut k = key(RecoveryPoint::Started, None);
        k.created_at_ms = now - 301_000;
        k.last_run_at_ms = now - 61_000;
        assert!(k.is_completable(now, &T));
        k.last_run_at_ms = now;
        assert!(!k.is_completable(now, &T), "run recently");
        k.last_run_at_ms = now - 61_000;
        k.created_at_ms = now;
        assert!(!k.is_completable(now, &T), "too young");
        let mut f = key(RecoveryPoint::Finished, None);
        f.created_at_ms = now - 301_000;
        assert!(!f.is_completable(now, &T), "finished");
        f.created_at_ms = now - T.reap_after_ms - 1;
        assert!(f.is_reapable(now, &T));
        assert!(!key(RecoveryPoint::Started, None).is_reapable(T.reap_after_ms, &T));
    }

    #[test]
    fn two_commits_chain_through_the_recovery_points() {
        let k = key(RecoveryPoint::Started, Some(0));
        assert_eq!(k.next_phase(), NextPhase::CreateRide);
        let create = Phase::create_ride(&k, "127.0.0.1", None).unwrap();
        assert_eq!(create.then, KeyTransition::To(RecoveryPoint::RideCreated));
        assert_eq!(create.records.len(), 1);
        assert_eq!(create.records[0].kind, "ride.created");
        assert!(matches!(
            create.ride,
            RideWrite::Insert { distance_mm: 0, .. }
        ));

        let ride = Ride::from_events(&[RideEvent::Requested {
            user_id: 1,
            distance_mm: 0,
        }]);
        let charged = Phase::charged(&ride, 3, "ch_1", None).unwrap();
        assert_eq!(
            charged.then,
            KeyTransition::Finish(StoredResponse::created()),
            "the charge's commit is the last one"
        );
        let kinds: Vec<_> = charged.records.iter().map(|r| r.kind.as_str()).collect();
        assert_eq!(kinds, ["ride.charged", "receipt.requested"]);
        assert_eq!(charged.records[0].build(3, 0).payload["charge_id"], "ch_1");
        assert_eq!(charged.records[1].build(3, 0).payload["user_id"], 1);

        let declined = Phase::declined(&ride, 3, "Your card was declined.", None).unwrap();
        assert_eq!(
            declined.then,
            KeyTransition::Finish(StoredResponse::card_declined("Your card was declined."))
        );
        assert_eq!(
            StoredResponse::card_declined("Your card was declined.").body["error"],
            "Error from payment processor: Your card was declined."
        );
        // A ride that is not awaiting payment refuses, instead of staging nothing.
        assert_eq!(
            Phase::charged(&Ride::default(), 3, "ch_1", None),
            Err(RideError::NotRequested)
        );
        // Keys an older version left at `charge_created` still finish.
        let old = key(RecoveryPoint::ChargeCreated, Some(0));
        assert_eq!(old.next_phase(), NextPhase::StageReceipt);
        let receipt = Phase::receipt(&old, 3, None);
        assert_eq!(
            receipt.then,
            KeyTransition::Finish(StoredResponse::created())
        );
        assert_eq!(receipt.records[0].kind, "receipt.requested");
        assert_eq!(k.processor_key(), "rocket-rides-atomic-7");
    }

    #[test]
    fn recovery_points_round_trip() {
        for rp in [
            RecoveryPoint::Started,
            RecoveryPoint::RideCreated,
            RecoveryPoint::ChargeCreated,
            RecoveryPoint::Finished,
        ] {
            assert_eq!(RecoveryPoint::parse(rp.as_str()), Ok(rp));
        }
        assert_eq!(
            RecoveryPoint::parse("nope").unwrap_err().to_string(),
            "Bug! Unhandled recovery point 'nope'."
        );
    }
}
