//! The API's one error type, rendered as RFC 7807 `application/problem+json`.

use std::sync::Arc;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::accept::AcceptError;
use crate::domain::FieldError;
use crate::store::StoreError;

/// Everything a handler can answer besides success.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// One or more fields are invalid (400), or over a size limit (413).
    #[error("the request has invalid fields")]
    Invalid {
        status: StatusCode,
        errors: Vec<FieldError>,
    },
    /// The body is not well-formed JSON, or has the wrong shape.
    #[error("malformed request body: {message}")]
    Malformed {
        field: Option<String>,
        message: String,
    },
    #[error("the request body is larger than the server accepts (server.body_limit_bytes)")]
    PayloadTooLarge,
    #[error("unsupported content type {0:?}")]
    UnsupportedMediaType(String),
    #[error("{detail}")]
    NotFound {
        detail: String,
        field: Option<&'static str>,
    },
    /// No valid API key (401).
    #[error("{0}")]
    Unauthorized(String),
    /// A valid key without the needed scope (403).
    #[error("{0}")]
    Forbidden(String),
    /// The request conflicts with the resource's state (409).
    #[error("{0}")]
    Conflict(String),
    /// The Idempotency-Key was used before with a different body (422).
    #[error("the Idempotency-Key was already used with a different request body")]
    IdempotencyKeyReused,
    /// A dependency (PostgreSQL) is unreachable: nothing was accepted, try again.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// The tenant is over its send rate (429): try again after `retry_after`.
    #[error("{detail}")]
    RateLimited {
        detail: String,
        retry_after: std::time::Duration,
    },
    /// This process is at one of its limits (bodies in flight): try again shortly.
    #[error("{0}")]
    Busy(String),
    /// The request body did not arrive in time (408); the connection is closed.
    #[error("the request body did not arrive within {0:?} (server.body_read_timeout)")]
    RequestTimeout(std::time::Duration),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl ApiError {
    /// A 400 listing every bad field.
    pub fn invalid(errors: Vec<FieldError>) -> ApiError {
        ApiError::Invalid {
            status: StatusCode::BAD_REQUEST,
            errors,
        }
    }

    /// A 400 about one field.
    pub fn field(field: impl Into<String>, message: impl std::fmt::Display) -> ApiError {
        ApiError::invalid(vec![FieldError::new(field, message)])
    }

    /// 404 for an unknown SMTP connection; `field` names the request field it came
    /// from, if any.
    pub fn no_connection(name: &str, field: Option<&'static str>) -> ApiError {
        ApiError::NotFound {
            detail: format!("no SMTP connection named {name:?}"),
            field,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::Invalid { status, .. } => *status,
            ApiError::Malformed { .. } => StatusCode::BAD_REQUEST,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::NotFound { .. } => StatusCode::NOT_FOUND,
            ApiError::Conflict(_) => StatusCode::CONFLICT,
            ApiError::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::IdempotencyKeyReused => StatusCode::UNPROCESSABLE_ENTITY,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) | ApiError::Busy(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::RequestTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn kind(&self) -> (&'static str, &'static str) {
        match self {
            ApiError::Invalid { status, .. } if *status == StatusCode::PAYLOAD_TOO_LARGE => {
                ("too-large", "Over a size limit")
            }
            ApiError::Invalid { .. } => ("validation", "Invalid request"),
            ApiError::Malformed { .. } => ("malformed", "Malformed request body"),
            ApiError::PayloadTooLarge => ("too-large", "Request body too large"),
            ApiError::UnsupportedMediaType(_) => {
                ("unsupported-media-type", "Unsupported media type")
            }
            ApiError::NotFound { .. } => ("not-found", "Not found"),
            ApiError::Conflict(_) => ("conflict", "Conflict"),
            ApiError::Unauthorized(_) => ("unauthorized", "Unauthorized"),
            ApiError::Forbidden(_) => ("forbidden", "Forbidden"),
            ApiError::IdempotencyKeyReused => ("idempotency-key-reused", "Idempotency-Key reused"),
            ApiError::RateLimited { .. } => ("rate-limited", "Too many requests"),
            ApiError::Unavailable(_) => ("unavailable", "Service unavailable"),
            ApiError::Busy(_) => ("busy", "Server busy"),
            ApiError::RequestTimeout(_) => ("timeout", "Request timeout"),
            ApiError::Internal(_) => ("internal", "Internal server error"),
        }
    }
}

/// An RFC 7807 problem document (`application/problem+json`; `application/problem+xml`
/// when the request's `Accept` prefers XML).
#[derive(Debug, Serialize, utoipa::ToSchema)]
#[schema(example = json!({
    "type": "urn:postwire:problem:validation",
    "title": "Invalid request",
    "status": 400,
    "detail": "To: \"ann@\" is not a valid address",
    "errors": [{"field": "To", "message": "\"ann@\" is not a valid address"}]
}))]
pub struct Problem {
    /// `urn:postwire:problem:<kind>`: validation, malformed, too-large,
    /// unsupported-media-type, not-found, conflict, unauthorized, forbidden,
    /// idempotency-key-reused, rate-limited, unavailable, busy, timeout or internal.
    #[serde(rename = "type")]
    #[schema(pattern = "^urn:postwire:problem:[a-z-]+$")]
    pub kind: String,
    /// A short summary of the kind of problem.
    pub title: &'static str,
    /// The HTTP status code.
    #[schema(minimum = 400, maximum = 599)]
    pub status: u16,
    /// What went wrong, for a person.
    pub detail: String,
    /// One entry per invalid field; absent when the problem is not about fields.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

/// The one place where a store failure becomes an answer: unavailable → 503 (clients
/// retry), conflict → 409, not found → 404, anything else → 500.
impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> ApiError {
        match e {
            StoreError::Unavailable(detail) => {
                tracing::warn!(error = %detail, "database unavailable");
                ApiError::Unavailable("the database is unavailable".to_owned())
            }
            StoreError::Conflict(detail) => ApiError::Conflict(detail),
            StoreError::NotFound => ApiError::NotFound {
                detail: "not found".to_owned(),
                field: None,
            },
            StoreError::Internal(detail) => {
                ApiError::Internal(anyhow::anyhow!("database error: {detail}"))
            }
        }
    }
}

impl From<AcceptError> for ApiError {
    fn from(e: AcceptError) -> ApiError {
        match e {
            AcceptError::Invalid { too_large, errors } => ApiError::Invalid {
                status: if too_large {
                    StatusCode::PAYLOAD_TOO_LARGE
                } else {
                    StatusCode::BAD_REQUEST
                },
                errors,
            },
            AcceptError::NoConnection(name) => ApiError::no_connection(&name, Some("connection")),
            AcceptError::Store(e) => e.into(),
            AcceptError::Internal(e) => ApiError::Internal(e),
        }
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> ApiError {
        StoreError::from(e).into()
    }
}

impl From<Arc<sqlx::Error>> for ApiError {
    fn from(e: Arc<sqlx::Error>) -> ApiError {
        StoreError::from(e).into()
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status();
        let (kind, title) = self.kind();
        let errors = match &self {
            ApiError::Invalid { errors, .. } => errors.clone(),
            ApiError::Malformed {
                field: Some(field),
                message,
            } => vec![FieldError::new(field.clone(), message)],
            ApiError::NotFound {
                field: Some(field),
                detail,
            } => vec![FieldError::new(*field, detail)],
            ApiError::IdempotencyKeyReused => vec![FieldError::new(
                "Idempotency-Key",
                "was already used with a different request body",
            )],
            _ => Vec::new(),
        };
        let detail = match &self {
            ApiError::Invalid { errors, .. } => errors
                .iter()
                .map(|e| format!("{}: {}", e.field, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            ApiError::Internal(e) => {
                tracing::error!(error = format!("{e:#}"), "internal error");
                "an unexpected error occurred; it has been logged".to_owned()
            }
            other => other.to_string(),
        };
        let problem = Problem {
            kind: format!("urn:postwire:problem:{kind}"),
            title,
            status: status.as_u16(),
            detail,
            errors,
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"postwire\""),
            );
        }
        match self {
            ApiError::Unavailable(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
            }
            ApiError::Busy(_) => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            ApiError::RateLimited { retry_after, .. } => {
                // Whole seconds, rounded up: a client that waits that long fits.
                let seconds = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
            }
            ApiError::RequestTimeout(_) => {
                headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            _ => {}
        }
        response
    }
}
