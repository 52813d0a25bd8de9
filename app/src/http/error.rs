//! The API's one error type and its status table.
//!
//! Every error a handler can meet is an [`ApiError`] variant; [`ApiError::status`] is the single
//! table that maps them to HTTP statuses, and the body is always `{"error": "<message>"}` with
//! `Content-Type: application/json`. Internal details (store errors, bugs) are logged with
//! `tracing::error!` and never sent to clients: they get the reference's generic message.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use domain::idempotency::messages;
use domain::{KeyError, ParamError};
use serde_json::json;

/// The generic message of a 503.
const UNAVAILABLE: &str = "Service unavailable. Please retry later.";

/// Everything that can go wrong while answering a request, before the ride service replies.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApiError {
    /// No (or an empty) `Authorization` header.
    #[error("{}", messages::AUTH_REQUIRED)]
    AuthRequired,
    /// No user with the email given in `Authorization`.
    #[error("{}", messages::AUTH_INVALID)]
    AuthInvalid,
    /// A missing, short or long `Idempotency-Key`.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// A body that could not be decoded (bad JSON, a header that is not text, ...).
    #[error("{0}")]
    BadRequest(String),
    /// A parameter failed validation.
    #[error(transparent)]
    Param(#[from] ParamError),
    /// A body in a format the API does not read.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// No such route or resource.
    #[error("{0}")]
    NotFound(String),
    /// A business rule refused the request (e.g. a dispatch command an actor refused).
    #[error("{0}")]
    Unprocessable(String),
    /// A concurrent request won (e.g. an optimistic-concurrency conflict on a stream).
    #[error("{0}")]
    Conflict(String),
    /// The route exists, the method does not.
    #[error("Method not allowed.")]
    MethodNotAllowed,
    /// The request target is longer than the server accepts.
    #[error("{0}")]
    UriTooLong(String),
    /// The request head is larger than the server accepts.
    #[error("{0}")]
    HeadersTooLarge(String),
    /// The request's head or body did not arrive within its timeout.
    #[error("{0}")]
    RequestTimeout(String),
    /// The server is at its connection limit and every connection has a request in flight.
    #[error("Too many connections. Please retry later.")]
    TooManyConnections,
    /// A dependency (the store) is down; the detail is logged, not sent.
    #[error("{UNAVAILABLE}")]
    Unavailable(String),
    /// The stats snapshot could not be computed (its refresh logged why, once).
    #[error("{UNAVAILABLE}")]
    StatsUnavailable,
    /// A bug or an unexpected failure; the detail is logged, not sent.
    #[error("{}", messages::INTERNAL)]
    Internal(String),
}

impl ApiError {
    /// The status table: one place for every error's HTTP status.
    pub fn status(&self) -> StatusCode {
        match self {
            Self::AuthRequired | Self::AuthInvalid => StatusCode::UNAUTHORIZED,
            Self::Key(_) | Self::BadRequest(_) => StatusCode::BAD_REQUEST,
            Self::Param(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::UriTooLong(_) => StatusCode::URI_TOO_LONG,
            Self::HeadersTooLarge(_) => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            Self::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Self::Unavailable(_) | Self::StatsUnavailable | Self::TooManyConnections => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A 404 with this message.
    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    /// The error as a whole HTTP/1.1 response that closes the connection, for the server to
    /// write on a socket itself (a refused head or connection, a timeout: there is no
    /// request for axum to answer). The same status and JSON body as [`IntoResponse`].
    pub fn raw_response(&self) -> bytes::Bytes {
        let status = self.status();
        let body = json!({ "error": self.to_string() }).to_string();
        let retry = if status == StatusCode::SERVICE_UNAVAILABLE {
            "retry-after: 1\r\n"
        } else {
            ""
        };
        format!(
            "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\
             connection: close\r\n{retry}\r\n{body}",
            status.as_u16(),
            status.canonical_reason().unwrap_or(""),
            body.len(),
        )
        .into()
    }
}

impl From<ports::StoreError> for ApiError {
    fn from(e: ports::StoreError) -> Self {
        match e {
            ports::StoreError::Unavailable(m) => Self::Unavailable(m),
            other => Self::Internal(other.to_string()),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            Self::Internal(detail) => tracing::error!(error = %detail, "internal error"),
            Self::Unavailable(detail) => tracing::error!(error = %detail, "dependency unavailable"),
            _ => {}
        }
        (self.status(), Json(json!({ "error": self.to_string() }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn internal_details_are_not_sent() {
        let e = ApiError::Internal("password=hunter2 at db".into());
        assert_eq!(e.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(e.to_string(), messages::INTERNAL);
        let e = ApiError::from(ports::StoreError::Unavailable("host 10.0.0.1".into()));
        assert_eq!(e.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(!e.to_string().contains("10.0.0.1"));
    }

    #[test]
    fn raw_responses_are_whole_json_responses_that_close() {
        let raw = ApiError::UriTooLong("The request URI is too long.".into()).raw_response();
        let text = std::str::from_utf8(&raw).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 414 URI Too Long\r\n"), "{head}");
        assert!(head.contains("content-type: application/json"));
        assert!(head.contains(&format!("content-length: {}", body.len())));
        assert!(head.contains("connection: close"));
        assert_eq!(body, r#"{"error":"The request URI is too long."}"#);
        let raw = ApiError::TooManyConnections.raw_response();
        assert!(
            std::str::from_utf8(&raw)
                .unwrap()
                .contains("retry-after: 1\r\n")
        );
    }

    #[test]
    fn validation_errors_keep_the_reference_messages() {
        assert_eq!(ApiError::AuthRequired.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            ApiError::from(KeyError::TooShort).to_string(),
            messages::KEY_TOO_SHORT
        );
        let p = ApiError::from(ParamError::Missing("origin_lat"));
        assert_eq!(p.status(), StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(p.to_string(), "Please specify parameter 'origin_lat'.");
    }
}
