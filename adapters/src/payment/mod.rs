//! A fake payment processor that stands in for Stripe.
//!
//! The reference application (rocket-rides-atomic) charged rides through the real Stripe test
//! API. [`FakeProcessor`] reproduces the outcomes its users could observe, without a network:
//!
//! | when                                       | outcome                                          |
//! |--------------------------------------------|--------------------------------------------------|
//! | customer `user-bad-source@example.com`     | [`PaymentError::CardDeclined`]`("Your card was declined.")` (Stripe's `tok_chargeCustomerFail`) |
//! | with probability `transient_error_rate`    | [`PaymentError::Processor`] (any other Stripe error) |
//! | otherwise                                  | a [`Charge`] with id `ch_` + 24 hex digits derived from the idempotency key, and the requested amount |
//!
//! # Idempotency
//!
//! Like Stripe, the processor honours the request's idempotency key: the first *final*
//! outcome for a key (a charge or a decline) is stored and replayed for every later request
//! with that key, so a retried phase never charges twice. Transient errors are not stored (as
//! with Stripe, where a failed request can be retried with the same key). A replay does not
//! compare the request's parameters with the first one's.
//!
//! The charge id is a function of the idempotency key (a name-based UUID), so the same key
//! gets the same charge even from a processor that restarted and forgot its replay table,
//! and distinct keys never share a charge id. (A random id would repeat after a restart with
//! the same seed and collide with the charges already stored.) Transient errors come from a
//! seeded [`StdRng`], so a run with a given seed makes the same decisions in the same order.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use ports::{Charge, ChargeRequest, PaymentError, PaymentGateway};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// The customer whose card is always declined (the reference's `tok_chargeCustomerFail`).
pub const DECLINED_CUSTOMER: &str = "user-bad-source@example.com";
/// The decline message, as Stripe words it.
pub const DECLINE_MESSAGE: &str = "Your card was declined.";
/// The message of a simulated transient processor error.
pub const PROCESSOR_ERROR_MESSAGE: &str =
    "An error occurred with our connection to the payment processor (simulated).";

#[derive(Debug)]
struct Inner {
    rng: StdRng,
    /// Final outcome per idempotency key: a charge, or a decline message.
    outcomes: HashMap<String, Result<Charge, String>>,
    charges: u64,
}

/// A deterministic, in-process stand-in for Stripe; see the module docs.
#[derive(Debug)]
pub struct FakeProcessor {
    transient_error_rate: f64,
    inner: Mutex<Inner>,
}

impl Default for FakeProcessor {
    /// A processor that never fails transiently.
    fn default() -> Self {
        Self::new(0.0, 0)
    }
}

impl FakeProcessor {
    /// A processor that fails a first attempt transiently with probability
    /// `transient_error_rate` (clamped to `0.0..=1.0`; NaN means never), drawing from a
    /// random generator seeded with `seed`.
    pub fn new(transient_error_rate: f64, seed: u64) -> Self {
        let rate = if transient_error_rate.is_nan() {
            0.0
        } else {
            transient_error_rate.clamp(0.0, 1.0)
        };
        Self {
            transient_error_rate: rate,
            inner: Mutex::new(Inner {
                rng: StdRng::seed_from_u64(seed),
                outcomes: HashMap::new(),
                charges: 0,
            }),
        }
    }

    /// How many distinct successful charges were made (replays do not count).
    pub fn charges_made(&self) -> u64 {
        self.lock().charges
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

fn replay(outcome: &Result<Charge, String>) -> Result<Charge, PaymentError> {
    outcome.clone().map_err(PaymentError::CardDeclined)
}

/// `ch_` + 24 hex digits of a name-based UUID of the idempotency key.
fn charge_id(idempotency_key: &str) -> String {
    let id = uuid::Uuid::new_v5(&uuid::Uuid::NAMESPACE_OID, idempotency_key.as_bytes());
    format!("ch_{}", &id.simple().to_string()[..24])
}

#[async_trait]
impl PaymentGateway for FakeProcessor {
    async fn charge(&self, req: &ChargeRequest) -> Result<Charge, PaymentError> {
        let mut inner = self.lock();
        if let Some(outcome) = inner.outcomes.get(&req.idempotency_key) {
            return replay(outcome);
        }
        let outcome = if req.customer == DECLINED_CUSTOMER {
            Err(DECLINE_MESSAGE.to_owned())
        } else if inner.rng.random::<f64>() < self.transient_error_rate {
            return Err(PaymentError::Processor(PROCESSOR_ERROR_MESSAGE.to_owned()));
        } else {
            inner.charges += 1;
            Ok(Charge {
                id: charge_id(&req.idempotency_key),
                amount_cents: req.amount_cents,
            })
        };
        inner
            .outcomes
            .insert(req.idempotency_key.clone(), outcome.clone());
        replay(&outcome)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(key: &str, customer: &str) -> ChargeRequest {
        ChargeRequest {
            idempotency_key: key.into(),
            customer: customer.into(),
            amount_cents: 2000,
            currency: "usd".into(),
            description: "Charge for ride 1".into(),
        }
    }

    #[tokio::test]
    async fn same_key_same_charge_one_charge() {
        let p = FakeProcessor::default();
        let a = p.charge(&req("k1", "user@example.com")).await.unwrap();
        assert!(a.id.starts_with("ch_") && a.id.len() == 27, "{}", a.id);
        assert!(a.id[3..].chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(a.amount_cents, 2000);
        assert_eq!(p.charge(&req("k1", "user@example.com")).await.unwrap(), a);
        assert_eq!(p.charges_made(), 1);
        let b = p.charge(&req("k2", "user@example.com")).await.unwrap();
        assert_ne!(a.id, b.id);
        assert_eq!(p.charges_made(), 2);
    }

    #[tokio::test]
    async fn the_bad_source_is_declined_every_time() {
        let p = FakeProcessor::new(1.0, 7);
        for _ in 0..2 {
            assert_eq!(
                p.charge(&req("k", DECLINED_CUSTOMER)).await,
                Err(PaymentError::CardDeclined("Your card was declined.".into()))
            );
        }
        assert_eq!(p.charges_made(), 0);
    }

    #[tokio::test]
    async fn transient_errors_are_not_stored() {
        let p = FakeProcessor::new(1.0, 1);
        let e = p.charge(&req("k", "user@example.com")).await.unwrap_err();
        assert!(matches!(e, PaymentError::Processor(_)), "{e:?}");
        assert!(
            !e.retryable(),
            "stored as final by the API, as in the reference"
        );
        assert_eq!(p.charges_made(), 0);
        // With rate 0.5 and a fixed seed, retries with the same key eventually succeed once.
        let p = FakeProcessor::new(0.5, 42);
        let mut first = None;
        for _ in 0..64 {
            if let Ok(c) = p.charge(&req("k", "user@example.com")).await {
                first.get_or_insert(c.clone());
                assert_eq!(Some(c), first);
            }
        }
        assert!(first.is_some());
        assert_eq!(p.charges_made(), 1);
    }

    #[tokio::test]
    async fn the_same_seed_makes_the_same_decisions() {
        let run = |seed| async move {
            let p = FakeProcessor::new(0.3, seed);
            let mut out = Vec::new();
            for i in 0..20 {
                out.push(p.charge(&req(&format!("k{i}"), "u@example.com")).await);
            }
            out
        };
        assert_eq!(run(9).await, run(9).await);
    }

    #[tokio::test]
    async fn a_restarted_processor_gives_the_same_key_the_same_charge_and_new_keys_new_ones() {
        let req = |key: &str| ChargeRequest {
            idempotency_key: key.to_owned(),
            customer: "user@example.com".into(),
            amount_cents: 2000,
            currency: "usd".into(),
            description: "Charge for ride 1".into(),
        };
        let before = FakeProcessor::new(0.0, 7);
        let a = before.charge(&req("rocket-rides-atomic-1")).await.unwrap();
        // Same seed, empty replay table: what a process restart looks like.
        let after = FakeProcessor::new(0.0, 7);
        let b = after.charge(&req("rocket-rides-atomic-2")).await.unwrap();
        let a_again = after.charge(&req("rocket-rides-atomic-1")).await.unwrap();
        assert_ne!(
            a.id, b.id,
            "a new key after a restart must not reuse a charge id"
        );
        assert_eq!(
            a.id, a_again.id,
            "the same key keeps its charge across a restart"
        );
    }
}
