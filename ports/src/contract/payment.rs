//! Scenarios for the payment contract ([`crate::PaymentGateway`]), with the observable
//! outcomes of the reference's fake processor: a charge for the good user, "Your card was
//! declined." for the bad-source user, and one outcome per processor idempotency key.

use std::sync::Arc;

use domain::idempotency::{RIDE_CHARGE_CENTS, RIDE_CHARGE_CURRENCY};

use super::PaymentFactory;
use super::fixtures::{BAD_SOURCE_USER, DECLINED_MESSAGE, USER, unique, within};
use crate::{Charge, ChargeRequest, PaymentError, PaymentGateway};

/// A ride charge for `customer` under a fresh processor idempotency key.
fn request(customer: &str) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: format!("rocket-rides-atomic-{}", unique("pay")),
        customer: customer.to_owned(),
        amount_cents: RIDE_CHARGE_CENTS,
        currency: RIDE_CHARGE_CURRENCY.to_owned(),
        description: "Charge for ride 1".to_owned(),
    }
}

async fn charge(g: &Arc<dyn PaymentGateway>, req: &ChargeRequest) -> Result<Charge, PaymentError> {
    within("charge", g.charge(req)).await
}

/// Rule: charging the good user succeeds with a charge id and the amount asked (2000).
/// Preconditions: one gateway from the factory, without transient errors.
pub async fn success_returns_a_charge(f: &dyn PaymentFactory) {
    let g = f.gateway();
    let c = charge(&g, &request(USER))
        .await
        .unwrap_or_else(|e| panic!("charging {USER} must succeed: {e}"));
    assert!(!c.id.is_empty(), "a charge must have an id");
    assert_eq!(c.amount_cents, RIDE_CHARGE_CENTS, "the charged amount");
}

/// Rule: two calls with one idempotency key return the same charge (charged once).
/// Preconditions: one gateway from the factory, without transient errors.
pub async fn same_key_same_charge(f: &dyn PaymentFactory) {
    let g = f.gateway();
    let req = request(USER);
    let first = charge(&g, &req).await;
    let second = charge(&g, &req).await;
    assert!(first.is_ok(), "charging {USER} must succeed: {first:?}");
    assert_eq!(
        first, second,
        "the same idempotency key must give the same charge"
    );
}

/// Rule: different idempotency keys give different charges.
/// Preconditions: one gateway from the factory, without transient errors.
pub async fn different_keys_different_charges(f: &dyn PaymentFactory) {
    let g = f.gateway();
    let a = charge(&g, &request(USER))
        .await
        .unwrap_or_else(|e| panic!("charge a: {e}"));
    let b = charge(&g, &request(USER))
        .await
        .unwrap_or_else(|e| panic!("charge b: {e}"));
    assert_ne!(
        a.id, b.id,
        "different idempotency keys must give different charges"
    );
}

/// Rule (reference 2.12): the bad-source user's card is declined with the processor's
/// message "Your card was declined.", and a retry with the same key is declined the same way.
/// Preconditions: one gateway from the factory, without transient errors.
pub async fn declined_card_for_the_bad_source_user(f: &dyn PaymentFactory) {
    let g = f.gateway();
    let req = request(BAD_SOURCE_USER);
    for attempt in ["first call", "retry with the same key"] {
        let r = charge(&g, &req).await;
        assert_eq!(
            r,
            Err(PaymentError::CardDeclined(DECLINED_MESSAGE.to_owned())),
            "{attempt}: the bad-source user must be declined with {DECLINED_MESSAGE:?}"
        );
    }
}
