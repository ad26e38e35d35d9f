//! API errors: one JSON shape, `{"error": {"code", "message", "field"}}`,
//! with a stable `code` per status. A token, a path on the host or another
//! tenant's existence never appears in one.

use bytes::Bytes;
use http::{header, Response, StatusCode};
use std::convert::Infallible;

use http_body_util::{combinators::BoxBody, BodyExt, Full};
use serde_json::json;

/// What every response body of the API is: JSON in full, or a stream (the
/// bundle archive).
pub type ApiBody = BoxBody<Bytes, Infallible>;

/// A refusal or failure, answered as JSON.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, for programs: `unauthorized`, `not_found`, `invalid`, ...
    pub code: &'static str,
    /// For people; may change.
    pub message: String,
    /// The input field at fault (400), or the quota exceeded (429).
    pub field: Option<&'static str>,
    /// Seconds for `Retry-After` (429).
    pub retry_after: Option<u64>,
    /// The methods the path takes, for `Allow` (405; RFC 9110 requires it).
    pub allow: Option<&'static str>,
}

impl ApiError {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
            allow: None,
        }
    }

    /// 401: no token, a malformed one, or one that matches nothing.
    pub fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing or wrong bearer token",
        )
    }

    /// 404: no such thing, or a thing of another tenant, or one this
    /// token may not see (existence is never revealed).
    pub fn not_found() -> Self {
        Self::new(StatusCode::NOT_FOUND, "not_found", "not found")
    }

    /// 400 naming the field.
    pub fn invalid(field: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            field: Some(field),
            ..Self::new(StatusCode::BAD_REQUEST, "invalid", message)
        }
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::new(StatusCode::CONFLICT, "conflict", message)
    }

    /// 429 `quota_exceeded`, `field` naming the quota, with `Retry-After`.
    pub fn quota_exceeded(
        field: &'static str,
        message: impl Into<String>,
        retry_after: u64,
    ) -> Self {
        ApiError {
            field: Some(field),
            retry_after: Some(retry_after),
            ..Self::new(StatusCode::TOO_MANY_REQUESTS, "quota_exceeded", message)
        }
    }

    /// 405, naming the methods the path takes (`"GET, POST"`).
    pub fn method_not_allowed(allow: &'static str) -> Self {
        ApiError {
            allow: Some(allow),
            ..Self::new(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                "this path does not take that method",
            )
        }
    }

    pub fn unsupported_media_type() -> Self {
        Self::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "send application/json",
        )
    }

    pub fn too_large() -> Self {
        Self::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "too_large",
            "the request body is too large",
        )
    }

    /// 503: the daemon is shutting down and starts nothing new.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }

    /// 500: the cause goes to the daemon's log with the request id, not to
    /// the client.
    pub fn internal(request_id: &str, cause: &anyhow::Error) -> Self {
        tracing::error!(request_id, "request failed: {cause:#}");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "the request failed; the daemon's log has the cause under this request id",
        )
    }

    pub fn into_response(self) -> Response<ApiBody> {
        let body = json!({
            "error": {"code": self.code, "message": self.message, "field": self.field}
        });
        let mut builder = Response::builder().status(self.status);
        if self.status == StatusCode::UNAUTHORIZED {
            builder = builder.header(header::WWW_AUTHENTICATE, "Bearer");
        }
        if let Some(seconds) = self.retry_after {
            builder = builder.header(header::RETRY_AFTER, seconds.to_string());
        }
        if let Some(methods) = self.allow {
            builder = builder.header(header::ALLOW, methods);
        }
        json_with(builder, &body)
    }
}

/// A JSON response with `status`.
pub fn json(status: StatusCode, value: &impl serde::Serialize) -> Response<ApiBody> {
    json_with(Response::builder().status(status), value)
}

fn json_with(builder: http::response::Builder, value: &impl serde::Serialize) -> Response<ApiBody> {
    let body = serde_json::to_vec(value).unwrap_or_default();
    builder
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body)).boxed())
        .expect("static response parts are valid")
}
