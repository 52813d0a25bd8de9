//! The route handlers. Each reads its inputs raw and decodes them itself, so every rejection is
//! an [`ApiError`] (JSON) rather than one of axum's plain-text rejections.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::Extension;
use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use domain::{IdempotencyKey, RideRequest};
use ports::{RideRow, RideStore, User};
use serde_json::{Value, json};

use super::stats::StatsCache;
use super::{ApiError, AppState, client_ip};
use crate::rides::ApiReply;

/// Largest accepted request body (a ride request is a few dozen bytes).
pub(super) const MAX_BODY_BYTES: usize = 64 * 1024;
/// Default page size of `GET /rides`.
const DEFAULT_LIMIT: u32 = 20;
/// Largest page size of `GET /rides` (larger requests are clamped).
const MAX_LIMIT: u32 = 100;
/// The 400 message for `raise_error=true` on a server that does not allow test errors.
const TEST_ERRORS_REFUSED: &str = "Parameter 'raise_error' is a test switch and this server \
     does not allow test errors (they are allowed with --allow-test-errors).";
/// The 404 message for a ride that is missing or not the caller's.
const RIDE_NOT_FOUND: &str = "Ride not found.";

/// `POST /rides`: validates credentials, key and parameters in the reference's order, then
/// hands over to the ride service.
pub(super) async fn create_ride(
    State(state): State<AppState>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    // Read the body first (it cannot be validated before the headers, but it must be drained),
    // then validate in order: credentials, key, parameters.
    let bytes = axum::body::to_bytes(body, MAX_BODY_BYTES).await;
    let user = authenticate(state.store.as_ref(), &headers).await?;
    let key = idempotency_key(&headers)?;
    let bytes = bytes.map_err(|_| {
        ApiError::BadRequest(format!(
            "The request body could not be read (at most {MAX_BODY_BYTES} bytes are accepted)."
        ))
    })?;
    let fields = decode_body(&headers, &bytes)?;
    let request = RideRequest::parse(|name| fields.get(name).cloned())?;
    if request.raise_error && !state.allow_test_errors {
        return Err(ApiError::BadRequest(TEST_ERRORS_REFUSED.into()));
    }
    let ip = client_ip(connect.as_ref().map(|Extension(ci)| ci));
    // A request that started runs to its end, as Stripe's do: when the client goes away the
    // server drops this future, but not the task, so the key is never left locked mid-phase
    // and a retry gets the stored result at once.
    let rides = Arc::clone(&state.rides);
    let reply = tokio::spawn(async move { rides.create_ride(&user, &key, &request, &ip).await })
        .await
        .map_err(|e| ApiError::Internal(format!("the request's task failed: {e}")))?;
    Ok(reply_response(reply))
}

/// `GET /rides?limit=&before=`: the caller's rides, newest first.
pub(super) async fn list_rides(
    State(state): State<AppState>,
    headers: HeaderMap,
    RawQuery(query): RawQuery,
) -> Result<Response, ApiError> {
    let user = authenticate(state.store.as_ref(), &headers).await?;
    let (limit, before) = page(query.as_deref().unwrap_or(""))?;
    let mut rows = state
        .store
        .rides_for_user(user.id, before, limit + 1)
        .await?;
    let next_before = if rows.len() > limit as usize {
        rows.truncate(limit as usize);
        rows.last().map(|r| r.id)
    } else {
        None
    };
    let rides: Vec<Value> = rows.iter().map(ride_json).collect();
    Ok(Json(json!({ "rides": rides, "next_before": next_before })).into_response())
}

/// `GET /rides/{id}`: one of the caller's rides; another user's ride is "not found".
pub(super) async fn get_ride(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let user = authenticate(state.store.as_ref(), &headers).await?;
    let id = uri
        .path()
        .rsplit('/')
        .next()
        .and_then(|s| s.parse::<i64>().ok())
        .ok_or_else(|| ApiError::not_found(RIDE_NOT_FOUND))?;
    match state.store.ride(id).await? {
        Some(row) if row.user_id == user.id => Ok(Json(ride_json(&row)).into_response()),
        _ => Err(ApiError::not_found(RIDE_NOT_FOUND)),
    }
}

/// `GET /healthz`: 200 when the store answers, 503 otherwise.
pub(super) async fn healthz(State(state): State<AppState>) -> Response {
    match state.store.ping().await {
        Ok(()) => Json(json!({ "status": "ok" })).into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "health check failed");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "status": "unavailable", "error": "The store is unavailable." })),
            )
                .into_response()
        }
    }
}

/// `GET /healthz/live`: 200 while the process serves requests (liveness: restart it if not).
pub(super) async fn live() -> Response {
    Json(json!({ "status": "live" })).into_response()
}

/// `GET /healthz/ready`: whether this API can take rides (readiness), and each dependency's
/// state. Creating rides needs only the store, so the log being down is reported but keeps
/// the API ready: records wait in the outbox until the streamer reaches the log.
pub(super) async fn ready(State(state): State<AppState>) -> Response {
    let store = state.store.ping().await;
    // A log server that does not answer must not hold the probe: 2 s at most.
    let log = match &state.log {
        Some(log) => Some(
            tokio::time::timeout(std::time::Duration::from_secs(2), log.ping())
                .await
                .unwrap_or_else(|_| Err(ports::LogError::Unavailable("no answer in 2 s".into()))),
        ),
        None => None,
    };
    let word = |ok: bool| if ok { "ok" } else { "unavailable" };
    let body = json!({
        "status": if store.is_ok() { "ready" } else { "unavailable" },
        "dependencies": {
            "store": word(store.is_ok()),
            "log": log.as_ref().map_or("not used", |r| word(r.is_ok())),
        },
    });
    if let Err(e) = &store {
        tracing::warn!(error = %e, "readiness: the store is unavailable");
    }
    if let Some(Err(e)) = &log {
        tracing::warn!(error = %e, "readiness: the log is unavailable (rides still wait in the outbox)");
    }
    let code = if store.is_ok() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}

/// `GET /stats`: the latest stats snapshot (see [`super::stats`]), 404 when this process has
/// none, 503 when the store could not be read.
pub(super) async fn stats(
    Extension(cache): Extension<Option<Arc<StatsCache>>>,
    connect: Option<Extension<ConnectInfo<SocketAddr>>>,
) -> Result<Response, ApiError> {
    let cache =
        cache.ok_or_else(|| ApiError::not_found("Stats are not available in this process."))?;
    let client = connect.map_or(std::net::Ipv4Addr::LOCALHOST.into(), |Extension(ci)| {
        ci.0.ip()
    });
    Ok(Json(cache.get(client).await?).into_response())
}

/// Unknown routes.
pub(super) async fn not_found() -> ApiError {
    ApiError::not_found("Not found.")
}

/// Known routes, wrong method.
pub(super) async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

/// The user named by `Authorization` (the demo trusts it as the user's email).
pub(super) async fn authenticate(
    store: &dyn RideStore,
    headers: &HeaderMap,
) -> Result<User, ApiError> {
    let raw = headers
        .get(header::AUTHORIZATION)
        .map(HeaderValue::to_str)
        .transpose()
        .map_err(|_| ApiError::AuthInvalid)?
        .unwrap_or("")
        .trim();
    if raw.is_empty() {
        return Err(ApiError::AuthRequired);
    }
    store.user_by_email(raw).await?.ok_or(ApiError::AuthInvalid)
}

/// The validated `Idempotency-Key` header.
pub(super) fn idempotency_key(headers: &HeaderMap) -> Result<IdempotencyKey, ApiError> {
    let raw = headers
        .get("idempotency-key")
        .map(HeaderValue::to_str)
        .transpose()
        .map_err(|_| {
            ApiError::BadRequest(
                "Idempotency-Key must contain only visible ASCII characters.".into(),
            )
        })?;
    Ok(IdempotencyKey::parse(raw)?)
}

/// Decodes a form-encoded or JSON body into field → text. JSON numbers and booleans become
/// their text, `null` counts as absent; for repeated form fields the first one wins.
fn decode_body(headers: &HeaderMap, bytes: &Bytes) -> Result<HashMap<String, String>, ApiError> {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    let mut fields = HashMap::new();
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(fields);
    }
    let is_json = essence == "application/json" || essence.ends_with("+json");
    if is_json {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| {
            ApiError::BadRequest(format!("The request body is not valid JSON: {e}."))
        })?;
        let Value::Object(map) = value else {
            return Err(ApiError::BadRequest(
                "The JSON body must be an object, e.g. {\"origin_lat\": 0.0, \"origin_lon\": 0.0, \
                 \"target_lat\": 0.0, \"target_lon\": 0.0}."
                    .into(),
            ));
        };
        for (name, v) in map {
            let text = match v {
                Value::Null => continue,
                Value::String(s) => s,
                Value::Bool(b) => b.to_string(),
                Value::Number(n) => n.to_string(),
                other => other.to_string(),
            };
            fields.insert(name, text);
        }
    } else if essence.is_empty() || essence == "application/x-www-form-urlencoded" {
        let pairs: Vec<(String, String)> = serde_urlencoded::from_bytes(bytes).map_err(|_| {
            ApiError::BadRequest(
                "The request body is not valid application/x-www-form-urlencoded data.".into(),
            )
        })?;
        for (name, v) in pairs {
            fields.entry(name).or_insert(v);
        }
    } else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "Unsupported Content-Type '{essence}': send application/x-www-form-urlencoded or \
             application/json."
        )));
    }
    Ok(fields)
}

/// `?limit=` (default 20, clamped to 100) and `?before=` of `GET /rides`.
fn page(query: &str) -> Result<(u32, Option<i64>), ApiError> {
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query)
        .map_err(|_| ApiError::BadRequest("The query string could not be decoded.".into()))?;
    let get = |name: &str| {
        pairs
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    };
    let limit = match get("limit") {
        None => DEFAULT_LIMIT,
        Some(raw) => match raw.trim().parse::<u64>() {
            Ok(n) if n >= 1 => u32::try_from(n.min(u64::from(MAX_LIMIT))).unwrap_or(MAX_LIMIT),
            _ => {
                return Err(ApiError::BadRequest(format!(
                    "Parameter 'limit' must be an integer between 1 and {MAX_LIMIT}."
                )));
            }
        },
    };
    let before = get("before")
        .map(|raw| {
            raw.trim().parse::<i64>().map_err(|_| {
                ApiError::BadRequest("Parameter 'before' must be a ride id (an integer).".into())
            })
        })
        .transpose()?;
    Ok((limit, before))
}

/// A ride as the API shows it.
fn ride_json(row: &RideRow) -> Value {
    json!({
        "id": row.id,
        "distance_m": row.distance_mm as f64 / 1000.0,
        "distance_mm": row.distance_mm,
        "origin_lat": row.params.origin_lat(),
        "origin_lon": row.params.origin_lon(),
        "target_lat": row.params.target_lat(),
        "target_lon": row.params.target_lon(),
        "charge_id": row.charge_id,
        "created_at_ms": row.created_at_ms,
    })
}

/// The ride service's reply as a response, with `Idempotent-Replayed` and `Retry-After`.
fn reply_response(reply: ApiReply) -> Response {
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut response = (status, Json(reply.body)).into_response();
    let h = response.headers_mut();
    if reply.replayed {
        h.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    if let Some(s) = reply.retry_after_s {
        h.insert(header::RETRY_AFTER, HeaderValue::from(s));
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(content_type: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_str(content_type).unwrap(),
        );
        h
    }

    #[test]
    fn json_numbers_strings_and_nulls() {
        let body = Bytes::from_static(
            br#"{"origin_lat": 1.5, "origin_lon": "2", "x": null, "raise_error": true}"#,
        );
        let f = decode_body(&headers("application/json; charset=utf-8"), &body).unwrap();
        assert_eq!(f["origin_lat"], "1.5");
        assert_eq!(f["origin_lon"], "2");
        assert_eq!(f["raise_error"], "true");
        assert!(!f.contains_key("x"));
    }

    #[test]
    fn bad_bodies_are_400_or_415() {
        let e =
            decode_body(&headers("application/json"), &Bytes::from_static(b"{nope")).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = decode_body(&headers("application/json"), &Bytes::from_static(b"[1]")).unwrap_err();
        assert_eq!(e.status(), StatusCode::BAD_REQUEST);
        let e = decode_body(&headers("text/plain"), &Bytes::from_static(b"a")).unwrap_err();
        assert_eq!(e.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    }

    #[test]
    fn form_first_value_wins() {
        let f = decode_body(
            &headers("application/x-www-form-urlencoded"),
            &Bytes::from_static(b"origin_lat=1&origin_lat=2"),
        )
        .unwrap();
        assert_eq!(f["origin_lat"], "1");
    }

    #[test]
    fn paging_parameters() {
        assert_eq!(page("").unwrap(), (20, None));
        assert_eq!(page("limit=500&before=9").unwrap(), (100, Some(9)));
        assert!(page("limit=0").is_err());
        assert!(page("before=x").is_err());
    }
}
