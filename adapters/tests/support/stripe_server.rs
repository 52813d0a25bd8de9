//! A small Stripe-compatible server for tests: `POST /v1/charges` as Stripe answers it, and
//! a record of every request, so tests check the wire format (path, form fields, headers)
//! and idempotent replays. Shared by `adapters/tests/stripe.rs` and the app's tests
//! (`#[path]`).
//!
//! What it implements of Stripe:
//! - authentication: `Authorization: Bearer <key>` or HTTP basic with the key as the user,
//!   else 401 `invalid_request_error`;
//! - a form-encoded body (else 400), `amount` (integer ≥ 50), `currency`, and exactly one of
//!   `customer` (`cus_good`, or `cus_declined`, whose card is declined) and `source`
//!   (`tok_visa`, or `tok_chargeDeclined`, declined); an unknown customer or token is 400
//!   `resource_missing`;
//! - a decline is 402 `card_error` `card_declined` "Your card was declined.";
//! - `Idempotency-Key`: the first answer for a key is stored (charge or decline) and replayed
//!   with `Idempotent-Replayed: true` for the same parameters; other parameters are 400
//!   `idempotency_error`; a request while another with the same key is in flight is 409.
//!
//! Faults for the next requests are scripted with [`StripeServer::push_fault`].

#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use serde_json::{Value, json};

/// A request as the server saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub path: String,
    pub authorization: Option<String>,
    pub content_type: Option<String>,
    pub idempotency_key: Option<String>,
    /// The form fields, in the order sent.
    pub form: Vec<(String, String)>,
}

impl Seen {
    /// The value of form field `name`.
    pub fn field(&self, name: &str) -> Option<&str> {
        self.form
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// What the server does with the next request.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Answers this status with Stripe's error body for it, before doing anything (nothing
    /// is charged, nothing stored).
    Status(u16),
    /// Handles the request (charges and stores the outcome), then waits this long before
    /// answering: with a client timeout shorter than that, the answer is lost.
    SlowAnswer(Duration),
}

/// A stored outcome: the request's sorted parameters, the status and the body.
type Outcome = (Vec<(String, String)>, u16, Value);

#[derive(Default)]
struct Inner {
    requests: Vec<Seen>,
    /// Outcome per idempotency key.
    outcomes: HashMap<String, Outcome>,
    charges: Vec<Value>,
    faults: VecDeque<Fault>,
    in_flight: HashSet<String>,
}

struct Shared {
    key: String,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The running server; stops when dropped.
pub struct StripeServer {
    addr: SocketAddr,
    shared: Arc<Shared>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for StripeServer {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl StripeServer {
    /// Starts a server on `127.0.0.1:0` that accepts the secret key `key`.
    pub async fn start(key: &str) -> Self {
        let shared = Arc::new(Shared {
            key: key.to_owned(),
            inner: Mutex::default(),
        });
        let app = axum::Router::new()
            .fallback(handle)
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Self { addr, shared, task }
    }

    /// `http://127.0.0.1:PORT`.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Queues a fault for the next request not yet faulted.
    pub fn push_fault(&self, f: Fault) {
        self.shared.lock().faults.push_back(f);
    }

    /// Every request so far.
    pub fn requests(&self) -> Vec<Seen> {
        self.shared.lock().requests.clone()
    }

    /// Every charge made (replays do not make one).
    pub fn charges(&self) -> Vec<Value> {
        self.shared.lock().charges.clone()
    }
}

fn error(status: u16, kind: &str, code: Option<&str>, message: &str) -> (u16, Value) {
    let mut e = json!({"type": kind, "message": message});
    if let Some(code) = code {
        e["code"] = json!(code);
    }
    (status, json!({ "error": e }))
}

fn respond(status: u16, body: &Value, replayed: bool, should_retry: Option<bool>) -> Response {
    let mut r = (
        StatusCode::from_u16(status).unwrap(),
        [("content-type", "application/json")],
        body.to_string(),
    )
        .into_response();
    if replayed {
        r.headers_mut()
            .insert("idempotent-replayed", "true".parse().unwrap());
    }
    if let Some(retry) = should_retry {
        r.headers_mut()
            .insert("stripe-should-retry", retry.to_string().parse().unwrap());
    }
    r
}

fn authorized(headers: &HeaderMap, key: &str) -> Result<(), String> {
    let Some(auth) = headers.get("authorization").and_then(|v| v.to_str().ok()) else {
        return Err("You did not provide an API key.".into());
    };
    let given = if let Some(token) = auth.strip_prefix("Bearer ") {
        token.to_owned()
    } else if let Some(b64) = auth.strip_prefix("Basic ") {
        let raw = base64_decode(b64).unwrap_or_default();
        let raw = String::from_utf8_lossy(&raw).into_owned();
        raw.split(':').next().unwrap_or_default().to_owned()
    } else {
        return Err("Invalid authorization header.".into());
    };
    if given == key {
        Ok(())
    } else {
        // Echoes the key in full (Stripe masks it): the client must not pass it on.
        Err(format!("Invalid API Key provided: {given}"))
    }
}

fn base64_decode(s: &str) -> Option<Vec<u8>> {
    const A: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::new();
    let (mut buf, mut bits) = (0u32, 0);
    for c in s.trim_end_matches('=').bytes() {
        buf = (buf << 6) | A.iter().position(|&x| x == c)? as u32;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((buf >> bits) as u8);
            buf &= (1 << bits) - 1;
        }
    }
    Some(out)
}

async fn handle(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let seen = Seen {
        method: method.to_string(),
        path: uri.path().to_owned(),
        authorization: header("authorization"),
        content_type: header("content-type"),
        idempotency_key: header("idempotency-key"),
        form: serde_urlencoded::from_bytes(&body).unwrap_or_default(),
    };
    let fault = {
        let mut inner = shared.lock();
        inner.requests.push(seen.clone());
        inner.faults.pop_front()
    };
    let mut slow = None;
    match fault {
        Some(Fault::Status(status)) => {
            let (kind, message) = match status {
                429 => (
                    "rate_limit_error",
                    "Too many requests hit the API too quickly.",
                ),
                _ => ("api_error", "An unknown error occurred (injected)."),
            };
            let (s, b) = error(status, kind, None, message);
            return respond(s, &b, false, None);
        }
        Some(Fault::SlowAnswer(d)) => slow = Some(d),
        None => {}
    }
    let response = answer(&shared, &method, &uri, &headers, &seen);
    // A slow answer is slow whatever it is, a replay included.
    if let Some(d) = slow {
        tokio::time::sleep(d).await;
    }
    response
}

/// The answer to a request, as Stripe gives it (after any scripted fault).
fn answer(
    shared: &Shared,
    method: &Method,
    uri: &Uri,
    headers: &HeaderMap,
    seen: &Seen,
) -> Response {
    if let Err(message) = authorized(headers, &shared.key) {
        let (s, b) = error(401, "invalid_request_error", None, &message);
        return respond(s, &b, false, None);
    }
    if *method != Method::POST || uri.path() != "/v1/charges" {
        let (s, b) = error(
            404,
            "invalid_request_error",
            None,
            &format!("Unrecognized request URL ({method}: {}).", uri.path()),
        );
        return respond(s, &b, false, None);
    }
    if seen.content_type.as_deref() != Some("application/x-www-form-urlencoded") {
        let (s, b) = error(
            400,
            "invalid_request_error",
            None,
            "Invalid request: expected a form-encoded body.",
        );
        return respond(s, &b, false, None);
    }
    let mut params = seen.form.clone();
    params.sort();
    let key = seen.idempotency_key.clone();
    if let Some(key) = &key {
        let mut inner = shared.lock();
        if let Some((stored, status, body)) = inner.outcomes.get(key) {
            if *stored == params {
                return respond(*status, body, true, None);
            }
            let (s, b) = error(
                400,
                "idempotency_error",
                None,
                &format!(
                    "Keys for idempotent requests can only be used with the same parameters they were first used with. Try using a key other than '{key}' if you meant to execute a different request."
                ),
            );
            return respond(s, &b, false, Some(false));
        }
        if !inner.in_flight.insert(key.clone()) {
            let (s, b) = error(
                409,
                "idempotency_error",
                None,
                "There is currently another in-progress request using this Idempotent Key. Please try again later.",
            );
            return respond(s, &b, false, Some(true));
        }
    }
    let (status, body) = charge(shared, seen);
    {
        let mut inner = shared.lock();
        if let Some(key) = &key {
            inner.in_flight.remove(key);
            // Stripe stores the result once the endpoint ran (not for validation errors).
            if status == 200 || status == 402 {
                inner
                    .outcomes
                    .insert(key.clone(), (params, status, body.clone()));
            }
        }
    }
    respond(status, &body, false, None)
}

fn charge(shared: &Shared, seen: &Seen) -> (u16, Value) {
    let invalid = |m: &str| error(400, "invalid_request_error", Some("parameter_missing"), m);
    let Some(amount) = seen.field("amount") else {
        return invalid("Missing required param: amount.");
    };
    let Ok(amount) = amount.parse::<i64>() else {
        return invalid("Invalid integer: amount.");
    };
    if amount < 50 {
        return invalid("Amount must be at least 50 cents.");
    }
    let Some(currency) = seen.field("currency") else {
        return invalid("Missing required param: currency.");
    };
    let declined = match (seen.field("customer"), seen.field("source")) {
        (Some("cus_good"), None) | (None, Some("tok_visa")) => false,
        (Some("cus_declined"), None) | (None, Some("tok_chargeDeclined")) => true,
        (Some(c), None) => {
            return error(
                400,
                "invalid_request_error",
                Some("resource_missing"),
                &format!("No such customer: '{c}'"),
            );
        }
        (None, Some(t)) => {
            return error(
                400,
                "invalid_request_error",
                Some("resource_missing"),
                &format!("No such token: '{t}'"),
            );
        }
        _ => return invalid("You must supply either a source or a customer (not both)."),
    };
    if declined {
        return error(
            402,
            "card_error",
            Some("card_declined"),
            "Your card was declined.",
        );
    }
    let mut inner = shared.lock();
    let metadata: serde_json::Map<String, Value> = seen
        .form
        .iter()
        .filter_map(|(k, v)| {
            let name = k.strip_prefix("metadata[")?.strip_suffix(']')?;
            Some((name.to_owned(), json!(v)))
        })
        .collect();
    let c = json!({
        "id": format!("ch_test{:016}", inner.charges.len() + 1),
        "object": "charge",
        "amount": amount,
        "currency": currency,
        "customer": seen.field("customer"),
        "description": seen.field("description"),
        "metadata": metadata,
        "paid": true,
        "status": "succeeded",
    });
    inner.charges.push(c.clone());
    (200, c)
}
