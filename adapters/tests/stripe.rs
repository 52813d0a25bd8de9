//! The Stripe adapter against a Stripe-compatible server in the test suite
//! (`support/stripe_server.rs`): the wire format (path, form fields, authentication,
//! `Idempotency-Key`), idempotent replays, declines, error mapping, and retries after 5xx,
//! rate limits, timeouts and connection errors, always with the same key.

mod support;

use std::time::{Duration, Instant};

use adapters::stripe::{SecretKey, StripeConfig, StripeGateway};
use ports::{ChargeRequest, PaymentError, PaymentGateway};
use support::stripe_server::{Fault, StripeServer};

const KEY: &str = "sk_test_4eC39HqLyjWDarjtT1zdp7dc";

fn config(base: &str) -> StripeConfig {
    let mut c = StripeConfig::new(SecretKey::new(KEY));
    c.base_url = base.to_owned();
    c.timeout = Duration::from_millis(500);
    c.connect_timeout = Duration::from_millis(500);
    c.backoff = Duration::from_millis(10);
    c
}

fn gateway(server: &StripeServer) -> StripeGateway {
    StripeGateway::new(config(&server.base_url())).unwrap()
}

fn ride(key: &str, customer: &str) -> ChargeRequest {
    ChargeRequest {
        idempotency_key: key.to_owned(),
        customer: customer.to_owned(),
        amount_cents: 2000,
        currency: "usd".into(),
        description: "Charge for ride 42".into(),
    }
}

#[tokio::test]
async fn a_charge_is_a_form_encoded_post_with_the_key_and_the_idempotency_key() {
    let server = StripeServer::start(KEY).await;
    let g = gateway(&server);
    let charge = g
        .charge(&ride("rocket-rides-atomic-1", "cus_good"))
        .await
        .unwrap();
    assert!(charge.id.starts_with("ch_"), "{charge:?}");
    assert_eq!(charge.amount_cents, 2000);

    let seen = server.requests();
    assert_eq!(seen.len(), 1);
    let r = &seen[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/charges")
    );
    assert_eq!(r.authorization.as_deref(), Some(&*format!("Bearer {KEY}")));
    assert_eq!(
        r.content_type.as_deref(),
        Some("application/x-www-form-urlencoded")
    );
    assert_eq!(r.idempotency_key.as_deref(), Some("rocket-rides-atomic-1"));
    assert_eq!(r.field("amount"), Some("2000"));
    assert_eq!(r.field("currency"), Some("usd"));
    assert_eq!(r.field("description"), Some("Charge for ride 42"));
    assert_eq!(r.field("customer"), Some("cus_good"));
    assert_eq!(r.field("source"), None);
    assert_eq!(server.charges().len(), 1);
    assert_eq!(server.charges()[0]["id"], charge.id.as_str());
}

#[tokio::test]
async fn a_user_known_by_email_is_charged_with_the_reference_test_token() {
    let server = StripeServer::start(KEY).await;
    let g = gateway(&server);
    g.charge(&ride("rocket-rides-atomic-2", "user@example.com"))
        .await
        .unwrap();
    let r = &server.requests()[0];
    assert_eq!(r.field("source"), Some("tok_visa"));
    assert_eq!(r.field("customer"), None);
    assert_eq!(r.field("metadata[customer]"), Some("user@example.com"));
    assert_eq!(
        server.charges()[0]["metadata"]["customer"],
        "user@example.com"
    );
}

#[tokio::test]
async fn the_same_key_replays_the_same_charge_and_charges_once() {
    let server = StripeServer::start(KEY).await;
    let g = gateway(&server);
    let req = ride("rocket-rides-atomic-3", "user@example.com");
    let first = g.charge(&req).await.unwrap();
    let again = g.charge(&req).await.unwrap();
    assert_eq!(first, again);
    assert_eq!(server.charges().len(), 1, "one charge for one key");
    let other = g
        .charge(&ride("rocket-rides-atomic-4", "user@example.com"))
        .await
        .unwrap();
    assert_ne!(other.id, first.id);
    assert_eq!(server.charges().len(), 2);
}

#[tokio::test]
async fn the_same_key_with_other_parameters_is_a_final_processor_error() {
    let server = StripeServer::start(KEY).await;
    let g = gateway(&server);
    g.charge(&ride("rocket-rides-atomic-5", "cus_good"))
        .await
        .unwrap();
    let mut changed = ride("rocket-rides-atomic-5", "cus_good");
    changed.amount_cents = 3000;
    let e = g.charge(&changed).await.unwrap_err();
    assert!(
        matches!(&e, PaymentError::Processor(m) if m.contains("400") && m.contains("idempotency_error") && m.contains("same parameters")),
        "{e:?}"
    );
    assert!(!e.retryable());
    assert_eq!(server.requests().len(), 2, "a 400 is not retried");
    assert_eq!(server.charges().len(), 1);
}

#[tokio::test]
async fn a_decline_is_a_card_error_with_stripes_message_and_is_not_retried() {
    let server = StripeServer::start(KEY).await;
    let g = gateway(&server);
    for customer in ["cus_declined", "user-bad-source@example.com"] {
        let key = format!("rocket-rides-atomic-decline-{customer}");
        let e = g.charge(&ride(&key, customer)).await.unwrap_err();
        assert_eq!(
            e,
            PaymentError::CardDeclined("Your card was declined.".into())
        );
        // The decline is stored under the key and replayed, like a charge.
        let again = g.charge(&ride(&key, customer)).await.unwrap_err();
        assert_eq!(again, e);
    }
    let seen = server.requests();
    assert_eq!(seen.len(), 4, "one request per call");
    assert_eq!(seen[2].field("source"), Some("tok_chargeDeclined"));
    assert!(server.charges().is_empty());
}

#[tokio::test]
async fn a_5xx_is_retried_with_the_same_key_until_it_succeeds() {
    let server = StripeServer::start(KEY).await;
    server.push_fault(Fault::Status(500));
    server.push_fault(Fault::Status(503));
    let g = gateway(&server);
    let charge = g
        .charge(&ride("rocket-rides-atomic-6", "cus_good"))
        .await
        .unwrap();
    let seen = server.requests();
    assert_eq!(seen.len(), 3, "two failures, then the charge");
    assert!(
        seen.iter()
            .all(|r| r.idempotency_key.as_deref() == Some("rocket-rides-atomic-6")),
        "every attempt sends the same key"
    );
    assert!(seen.iter().all(|r| r.form == seen[0].form));
    assert_eq!(server.charges().len(), 1);
    assert_eq!(server.charges()[0]["id"], charge.id.as_str());
}

#[tokio::test]
async fn a_5xx_that_persists_is_a_processor_error_after_the_retries() {
    let server = StripeServer::start(KEY).await;
    for _ in 0..3 {
        server.push_fault(Fault::Status(500));
    }
    let g = gateway(&server);
    let e = g
        .charge(&ride("rocket-rides-atomic-7", "cus_good"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PaymentError::Processor(m) if m.contains("500")),
        "{e:?}"
    );
    assert_eq!(
        server.requests().len(),
        3,
        "the first attempt and 2 retries"
    );
    assert!(server.charges().is_empty());
}

#[tokio::test]
async fn a_rate_limit_is_retried_then_unavailable() {
    let server = StripeServer::start(KEY).await;
    server.push_fault(Fault::Status(429));
    let g = gateway(&server);
    g.charge(&ride("rocket-rides-atomic-8", "cus_good"))
        .await
        .unwrap();
    assert_eq!(server.requests().len(), 2);

    for _ in 0..3 {
        server.push_fault(Fault::Status(429));
    }
    let e = g
        .charge(&ride("rocket-rides-atomic-9", "cus_good"))
        .await
        .unwrap_err();
    assert!(matches!(e, PaymentError::Unavailable(_)), "{e:?}");
    assert!(e.retryable());
}

#[tokio::test]
async fn an_answer_lost_to_a_timeout_is_retried_and_gets_the_charge_already_made() {
    let server = StripeServer::start(KEY).await;
    // Stripe charges, but its answer comes after the client gave up.
    server.push_fault(Fault::SlowAnswer(Duration::from_secs(3)));
    let g = gateway(&server);
    let started = Instant::now();
    let charge = g
        .charge(&ride("rocket-rides-atomic-10", "cus_good"))
        .await
        .unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the first attempt timed out"
    );
    let seen = server.requests();
    assert_eq!(seen.len(), 2);
    assert!(
        seen.iter()
            .all(|r| r.idempotency_key.as_deref() == Some("rocket-rides-atomic-10"))
    );
    assert_eq!(server.charges().len(), 1, "charged once");
    assert_eq!(server.charges()[0]["id"], charge.id.as_str());
}

#[tokio::test]
async fn timeouts_on_every_attempt_are_unavailable() {
    let server = StripeServer::start(KEY).await;
    for _ in 0..3 {
        server.push_fault(Fault::SlowAnswer(Duration::from_secs(3)));
    }
    let g = gateway(&server);
    let e = g
        .charge(&ride("rocket-rides-atomic-11", "cus_good"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PaymentError::Unavailable(m) if m.contains("timed out")),
        "{e:?}"
    );
    assert!(e.retryable());
    assert_eq!(server.requests().len(), 3);
    // Retrying later with the same key (the API's client or the completer) replays the
    // charge that the lost answers made.
    let later = g
        .charge(&ride("rocket-rides-atomic-11", "cus_good"))
        .await
        .unwrap();
    assert_eq!(server.charges().len(), 1);
    assert_eq!(server.charges()[0]["id"], later.id.as_str());
}

#[tokio::test]
async fn a_server_that_cannot_be_reached_is_unavailable_after_the_retries() {
    // A port that was just free: nothing listens on it.
    let addr = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    let g = StripeGateway::new(config(&format!("http://{addr}"))).unwrap();
    let e = g
        .charge(&ride("rocket-rides-atomic-12", "cus_good"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PaymentError::Unavailable(m) if m.contains("connect")),
        "{e:?}"
    );
    assert!(e.retryable());
}

#[tokio::test]
async fn a_wrong_key_is_a_processor_error_that_never_shows_a_key() {
    let server = StripeServer::start(KEY).await;
    let mut c = config(&server.base_url());
    c.secret_key = SecretKey::new("sk_test_wrong_and_secret");
    let g = StripeGateway::new(c).unwrap();
    let e = g
        .charge(&ride("rocket-rides-atomic-13", "cus_good"))
        .await
        .unwrap_err();
    let shown = format!("{e} {e:?} {g:?}");
    assert!(!shown.contains("sk_test_wrong_and_secret"), "{shown}");
    assert!(!shown.contains(KEY), "{shown}");
    assert!(
        matches!(&e, PaymentError::Processor(m) if m.contains("401") && m.contains("STRIPE_SECRET_KEY")),
        "{e:?}"
    );
    assert_eq!(server.requests().len(), 1, "a 401 is not retried");
}

#[tokio::test]
async fn an_unknown_customer_is_a_final_processor_error_with_stripes_message() {
    let server = StripeServer::start(KEY).await;
    let g = gateway(&server);
    let e = g
        .charge(&ride("rocket-rides-atomic-14", "cus_nobody"))
        .await
        .unwrap_err();
    assert!(
        matches!(&e, PaymentError::Processor(m) if m.contains("resource_missing") && m.contains("No such customer")),
        "{e:?}"
    );
}

#[tokio::test]
async fn concurrent_calls_with_one_key_make_one_charge() {
    let server = StripeServer::start(KEY).await;
    let g = std::sync::Arc::new(gateway(&server));
    let calls: Vec<_> = (0..8)
        .map(|_| {
            let g = g.clone();
            tokio::spawn(async move { g.charge(&ride("rocket-rides-atomic-15", "cus_good")).await })
        })
        .collect();
    let mut ids = Vec::new();
    for c in calls {
        ids.push(c.await.unwrap().unwrap().id);
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every caller got the one charge: {ids:?}");
    assert_eq!(server.charges().len(), 1);
}
