//! The payment processor port.

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::PaymentError;

/// A charge to make.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChargeRequest {
    /// Processor-side idempotency key: the same key MUST yield the same charge, never two.
    pub idempotency_key: String,
    /// The customer (the user's email in the demo).
    pub customer: String,
    /// Amount in the currency's minor unit.
    pub amount_cents: i64,
    /// ISO currency, lower case.
    pub currency: String,
    /// Free text, e.g. `Charge for ride 42`.
    pub description: String,
}

/// A successful charge.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    /// The processor's charge id.
    pub id: String,
    /// Amount charged.
    pub amount_cents: i64,
}

/// Charges customers.
///
/// # Contract
/// - Two calls with the same `idempotency_key` MUST return the same outcome (the same charge
///   id on success, the same decline), and charge at most once.
/// - [`PaymentError::Unavailable`] means no outcome is known: nothing was charged, or (an
///   answer lost to a timeout) a later call with the same `idempotency_key` returns the charge
///   that was made. Either way, retrying with the same key is safe.
#[cfg_attr(feature = "test-util", mockall::automock)]
#[async_trait]
pub trait PaymentGateway: Send + Sync + 'static {
    /// Charges, or replays the outcome stored for the idempotency key.
    ///
    /// # Errors
    /// [`PaymentError::CardDeclined`] (permanent), [`PaymentError::Processor`] (the reference
    /// answers 503), [`PaymentError::Unavailable`] (nothing charged).
    async fn charge(&self, req: &ChargeRequest) -> Result<Charge, PaymentError>;
}

const _: fn(&dyn PaymentGateway) = |_| {};
