//! A payment gateway on Stripe's HTTP API (feature `stripe`).
//!
//! [`StripeGateway`] makes the charge of a ride the way rocket-rides-atomic did with the
//! Stripe gem, without the gem:
//!
//! ```text
//! POST {base}/v1/charges
//! Authorization: Bearer <secret key>
//! Idempotency-Key: rocket-rides-atomic-<key id>      (the ride's processor key)
//! Content-Type: application/x-www-form-urlencoded
//!
//! amount=2000&currency=usd&description=Charge+for+ride+42&customer=cus_…
//! ```
//!
//! # Who is charged
//!
//! The port's `customer` is a Stripe customer id (`cus_…`) → `customer=`, or a payment
//! source (`tok_…`, `src_…`, `card_…`) → `source=`. Anything else is the email of one of
//! this project's users (the store knows no Stripe ids); it is charged with a test token, as
//! the reference's `up.rb` seeded its two users with a customer on `tok_visa` and one on
//! `tok_chargeCustomerFail`: the reference's bad-source user
//! ([`crate::payment::DECLINED_CUSTOMER`]) is charged with [`DECLINED_SOURCE`]
//! (`tok_chargeDeclined`, the token that declines when charged directly), every other email
//! with [`StripeConfig::default_source`] (`tok_visa`). The email travels as
//! `metadata[customer]`. Test tokens only work with a test-mode key (`sk_test_…`).
//!
//! # Outcomes
//!
//! | Stripe answers | after retries | port error |
//! |---|---|---|
//! | 2xx with a charge | - | `Ok(Charge)` |
//! | 402 `card_error` | no retry | [`PaymentError::CardDeclined`] with Stripe's message |
//! | other 4xx (bad request, authentication, idempotency key reused with other parameters …) | no retry | [`PaymentError::Processor`] (final 503, as in the reference) |
//! | 409 (same key in flight), 429 (rate limited) | retried | [`PaymentError::Unavailable`] (nothing decided: retry later) |
//! | 5xx | retried | [`PaymentError::Processor`] |
//! | no answer: connect error, timeout, broken connection | retried | [`PaymentError::Unavailable`] |
//!
//! Stripe's `Stripe-Should-Retry` header, when present, decides whether an answer is
//! retried. Every attempt of one charge sends the same `Idempotency-Key`, so a request whose
//! answer was lost (a timeout after Stripe charged) gets the charge it made, not a second
//! one; for the same reason an [`PaymentError::Unavailable`] is safe to retry later, by the
//! client or the completer, under the same ride key.
//!
//! # Timeouts
//!
//! Each attempt has a connect timeout and a total timeout; attempts are separated by an
//! exponential back-off with jitter. The defaults (20 s per attempt, 2 retries, 0.5 s back-off
//! doubling) keep a charge well under the API's key lock timeout (90 s), so a client retry
//! does not take over a key whose charge is still in flight.
//!
//! # The secret key
//!
//! It is sent in the `Authorization` header only; it is never logged, never in an error
//! (anything the server echoes back is scrubbed of it) and `Debug` prints `***`.

use std::time::Duration;

use async_trait::async_trait;
use ports::{Charge, ChargeRequest, PaymentError, PaymentGateway};
use rand::Rng as _;
use serde::Deserialize;

/// Stripe's API.
pub const DEFAULT_BASE_URL: &str = "https://api.stripe.com";
/// The source charged for an email that has no Stripe id (Stripe's test Visa card).
pub const DEFAULT_SOURCE: &str = "tok_visa";
/// The source charged for the reference's bad-source user: declined when charged.
pub const DECLINED_SOURCE: &str = "tok_chargeDeclined";

/// A Stripe secret key; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct SecretKey(String);

impl SecretKey {
    /// Wraps `key`.
    pub fn new(key: impl Into<String>) -> Self {
        Self(key.into())
    }

    fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for SecretKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretKey(***)")
    }
}

/// How to reach Stripe.
#[derive(Debug, Clone)]
pub struct StripeConfig {
    /// The API's base URL, without `/v1` ([`DEFAULT_BASE_URL`]; a stripe-mock or a test
    /// server otherwise).
    pub base_url: String,
    /// The secret key (`sk_test_…`, `sk_live_…`, or a restricted `rk_…`).
    pub secret_key: SecretKey,
    /// The longest wait for one attempt, connection included.
    pub timeout: Duration,
    /// The longest wait for a connection.
    pub connect_timeout: Duration,
    /// Attempts after the first one, for answers that may be retried.
    pub max_retries: u32,
    /// The first back-off; it doubles per retry, up to 5 s, with up to 50 % jitter.
    pub backoff: Duration,
    /// The source charged for a customer given as an email (see the module docs).
    pub default_source: String,
}

impl StripeConfig {
    /// Stripe's API with `secret_key` and the default timeouts and retries.
    pub fn new(secret_key: SecretKey) -> Self {
        Self {
            base_url: DEFAULT_BASE_URL.to_owned(),
            secret_key,
            timeout: Duration::from_secs(20),
            connect_timeout: Duration::from_secs(5),
            max_retries: 2,
            backoff: Duration::from_millis(500),
            default_source: DEFAULT_SOURCE.to_owned(),
        }
    }
}

/// Why a gateway could not be built.
#[derive(Debug, thiserror::Error)]
pub enum StripeSetupError {
    /// The base URL is not an `http(s)://` URL.
    #[error("the Stripe base URL {0} must start with http:// or https://")]
    BadBaseUrl(String),
    /// The secret key is empty.
    #[error("the Stripe secret key is empty")]
    EmptyKey,
    /// The HTTP client could not be built.
    #[error("building the HTTP client: {0}")]
    Client(String),
}

/// Charges through Stripe's HTTP API; see the module docs.
#[derive(Debug)]
pub struct StripeGateway {
    config: StripeConfig,
    charges_url: String,
    http: reqwest::Client,
}

/// The longest back-off between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

impl StripeGateway {
    /// A gateway for `config`.
    ///
    /// # Errors
    /// A [`StripeSetupError`] for an empty key, a base URL that is not HTTP, or an HTTP client
    /// that cannot be built.
    pub fn new(config: StripeConfig) -> Result<Self, StripeSetupError> {
        let base = config.base_url.trim_end_matches('/');
        if !(base.starts_with("http://") || base.starts_with("https://")) {
            return Err(StripeSetupError::BadBaseUrl(config.base_url.clone()));
        }
        if config.secret_key.expose().trim().is_empty() {
            return Err(StripeSetupError::EmptyKey);
        }
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.connect_timeout)
            .user_agent(concat!("rocket-rides/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| StripeSetupError::Client(e.to_string()))?;
        Ok(Self {
            charges_url: format!("{base}/v1/charges"),
            config,
            http,
        })
    }

    /// The URL charges are posted to.
    pub fn charges_url(&self) -> &str {
        &self.charges_url
    }

    /// The form of a charge (see the module docs for who is charged).
    pub fn form(&self, req: &ChargeRequest) -> Vec<(&'static str, String)> {
        let mut form = vec![
            ("amount", req.amount_cents.to_string()),
            ("currency", req.currency.clone()),
            ("description", req.description.clone()),
        ];
        let c = req.customer.as_str();
        if c.starts_with("cus_") {
            form.push(("customer", c.to_owned()));
        } else if ["tok_", "src_", "card_"].iter().any(|p| c.starts_with(p)) {
            form.push(("source", c.to_owned()));
        } else {
            let source = if c == crate::payment::DECLINED_CUSTOMER {
                DECLINED_SOURCE.to_owned()
            } else {
                self.config.default_source.clone()
            };
            form.push(("source", source));
            form.push(("metadata[customer]", c.to_owned()));
        }
        form
    }

    /// `msg` without the secret key (in case a server echoes it).
    fn scrub(&self, msg: &str) -> String {
        let key = self.config.secret_key.expose();
        if key.is_empty() {
            msg.to_owned()
        } else {
            msg.replace(key, "***")
        }
    }

    /// The back-off before retry number `retry` (1-based).
    fn backoff(&self, retry: u32) -> Duration {
        let base = self
            .config
            .backoff
            .saturating_mul(1 << (retry - 1).min(16))
            .min(MAX_BACKOFF);
        let jitter = rand::rng().random_range(0.0..=0.5);
        base.mul_f64(1.0 - jitter / 2.0)
    }

    /// One attempt.
    async fn attempt(&self, req: &ChargeRequest, form: &[(&str, String)]) -> Attempt {
        let sent = self
            .http
            .post(&self.charges_url)
            .bearer_auth(self.config.secret_key.expose())
            .header("Idempotency-Key", &req.idempotency_key)
            .form(form)
            .send()
            .await;
        let resp = match sent {
            Ok(r) => r,
            Err(e) => return Attempt::NoAnswer(self.scrub(&describe(e))),
        };
        let status = resp.status().as_u16();
        let should_retry = resp
            .headers()
            .get("Stripe-Should-Retry")
            .and_then(|v| v.to_str().ok())
            .map(|v| v.eq_ignore_ascii_case("true"));
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => return Attempt::NoAnswer(self.scrub(&describe(e))),
        };
        if (200..300).contains(&status) {
            return match serde_json::from_slice::<ChargeBody>(&body) {
                Ok(c) => Attempt::Done(Ok(Charge {
                    id: c.id,
                    amount_cents: c.amount,
                })),
                Err(e) => Attempt::Done(Err(PaymentError::Processor(format!(
                    "Stripe answered {status} with a body that is not a charge: {e}"
                )))),
            };
        }
        let error = serde_json::from_slice::<ErrorBody>(&body)
            .map(|b| b.error)
            .unwrap_or_default();
        let message = match status {
            // Stripe's message names (part of) the key: say what to check instead.
            401 => "Stripe refused the secret key (401); check STRIPE_SECRET_KEY".to_owned(),
            _ => self.scrub(&error.describe(status)),
        };
        let retry = should_retry.unwrap_or(matches!(status, 409 | 429 | 500..=599));
        if status == 402 && error.kind.as_deref() == Some("card_error") {
            let m = error
                .message
                .map_or_else(|| "Your card was declined.".to_owned(), |m| self.scrub(&m));
            return Attempt::Done(Err(PaymentError::CardDeclined(m)));
        }
        let final_error = if matches!(status, 409 | 429) {
            PaymentError::Unavailable(message)
        } else {
            PaymentError::Processor(message)
        };
        if retry {
            Attempt::Retry(final_error)
        } else {
            Attempt::Done(Err(final_error))
        }
    }
}

/// What one attempt ended with.
enum Attempt {
    /// A final answer.
    Done(Result<Charge, PaymentError>),
    /// An answer that may change on retry; this error if no retry is left.
    Retry(PaymentError),
    /// No answer at all (connect error, timeout, broken connection).
    NoAnswer(String),
}

/// A reqwest error with its sources (reqwest's own message is often just "error sending
/// request"), without the request's URL.
fn describe(e: reqwest::Error) -> String {
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "could not connect"
    } else {
        "request failed"
    };
    let e = e.without_url();
    let mut out = format!("{kind}: {e}");
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

#[derive(Deserialize)]
struct ChargeBody {
    id: String,
    amount: i64,
}

#[derive(Deserialize)]
struct ErrorBody {
    error: StripeError,
}

/// Stripe's error object (the fields this adapter reads).
#[derive(Debug, Default, Deserialize)]
struct StripeError {
    #[serde(rename = "type")]
    kind: Option<String>,
    code: Option<String>,
    message: Option<String>,
}

impl StripeError {
    fn describe(&self, status: u16) -> String {
        let mut out = format!("Stripe answered {status}");
        if let Some(kind) = &self.kind {
            out.push_str(&format!(" {kind}"));
        }
        if let Some(code) = &self.code {
            out.push_str(&format!(" ({code})"));
        }
        if let Some(m) = &self.message {
            out.push_str(&format!(": {m}"));
        }
        out
    }
}

#[async_trait]
impl PaymentGateway for StripeGateway {
    async fn charge(&self, req: &ChargeRequest) -> Result<Charge, PaymentError> {
        let form = self.form(req);
        let mut retry = 0;
        loop {
            let last = match self.attempt(req, &form).await {
                Attempt::Done(outcome) => return outcome,
                Attempt::Retry(e) => e,
                Attempt::NoAnswer(why) => PaymentError::Unavailable(format!("Stripe: {why}")),
            };
            if retry >= self.config.max_retries {
                return Err(last);
            }
            retry += 1;
            let wait = self.backoff(retry);
            tracing::warn!(
                idempotency_key = %req.idempotency_key,
                retry,
                wait_ms = wait.as_millis() as u64,
                error = %last,
                "Stripe charge failed; retrying with the same idempotency key"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gateway() -> StripeGateway {
        let mut c = StripeConfig::new(SecretKey::new("sk_test_secret"));
        c.base_url = "http://127.0.0.1:9/".into();
        StripeGateway::new(c).unwrap()
    }

    fn req(customer: &str) -> ChargeRequest {
        ChargeRequest {
            idempotency_key: "rocket-rides-atomic-1".into(),
            customer: customer.into(),
            amount_cents: 2000,
            currency: "usd".into(),
            description: "Charge for ride 1".into(),
        }
    }

    #[test]
    fn the_customer_picks_the_field() {
        let g = gateway();
        assert_eq!(g.charges_url(), "http://127.0.0.1:9/v1/charges");
        let f = g.form(&req("cus_123"));
        assert!(f.contains(&("customer", "cus_123".into())), "{f:?}");
        assert!(!f.iter().any(|(k, _)| *k == "source"));
        let f = g.form(&req("tok_mastercard"));
        assert!(f.contains(&("source", "tok_mastercard".into())), "{f:?}");
        let f = g.form(&req("user@example.com"));
        assert!(f.contains(&("source", DEFAULT_SOURCE.into())), "{f:?}");
        assert!(f.contains(&("metadata[customer]", "user@example.com".into())));
        let f = g.form(&req(crate::payment::DECLINED_CUSTOMER));
        assert!(f.contains(&("source", DECLINED_SOURCE.into())), "{f:?}");
    }

    #[test]
    fn the_key_is_never_printed() {
        let g = gateway();
        assert!(!format!("{g:?}").contains("sk_test_secret"));
        assert_eq!(g.scrub("bad key sk_test_secret"), "bad key ***");
    }

    #[test]
    fn a_bad_setup_is_refused() {
        let mut c = StripeConfig::new(SecretKey::new(""));
        assert!(matches!(
            StripeGateway::new(c.clone()),
            Err(StripeSetupError::EmptyKey)
        ));
        c.secret_key = SecretKey::new("sk_test_x");
        c.base_url = "api.stripe.com".into();
        assert!(matches!(
            StripeGateway::new(c),
            Err(StripeSetupError::BadBaseUrl(_))
        ));
    }

    #[test]
    fn back_off_doubles_with_jitter_and_is_capped() {
        let g = gateway();
        for _ in 0..50 {
            let first = g.backoff(1);
            assert!(
                first <= Duration::from_millis(500) && first >= Duration::from_millis(375),
                "{first:?}"
            );
            let second = g.backoff(2);
            assert!(second >= Duration::from_millis(750), "{second:?}");
            assert!(g.backoff(30) <= MAX_BACKOFF);
        }
    }
}
