//! What a console page answers when it cannot show what was asked: a small HTML page
//! with the status, never a JSON problem, never a stack of internals.

use askama::Template;
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};

use crate::api::ApiError;

/// Everything a console handler can answer besides its page.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    #[error("not found")]
    NotFound,
    /// The request is refused: a missing or wrong CSRF token, a scope.
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

impl From<ApiError> for ConsoleError {
    fn from(e: ApiError) -> ConsoleError {
        match e {
            ApiError::NotFound { .. } => ConsoleError::NotFound,
            ApiError::Invalid { errors, .. } => ConsoleError::BadRequest(
                errors
                    .iter()
                    .map(|e| format!("{}: {}", e.field, e.message))
                    .collect::<Vec<_>>()
                    .join("; "),
            ),
            ApiError::Malformed { message, .. } => ConsoleError::BadRequest(message),
            ApiError::Forbidden(m) | ApiError::Unauthorized(m) => ConsoleError::Forbidden(m),
            ApiError::Conflict(m) => ConsoleError::Conflict(m),
            ApiError::Unavailable(m) | ApiError::Busy(m) => ConsoleError::Unavailable(m),
            ApiError::Internal(e) => ConsoleError::Internal(e),
            other => ConsoleError::BadRequest(other.to_string()),
        }
    }
}

impl From<sqlx::Error> for ConsoleError {
    fn from(e: sqlx::Error) -> ConsoleError {
        ApiError::from(e).into()
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage<'a> {
    status: u16,
    title: &'a str,
    detail: String,
}

impl IntoResponse for ConsoleError {
    fn into_response(self) -> Response {
        let (status, title) = match &self {
            ConsoleError::NotFound => (StatusCode::NOT_FOUND, "Not found"),
            ConsoleError::Forbidden(_) => (StatusCode::FORBIDDEN, "Refused"),
            ConsoleError::BadRequest(_) => (StatusCode::BAD_REQUEST, "Not understood"),
            ConsoleError::Conflict(_) => (StatusCode::CONFLICT, "Not possible now"),
            ConsoleError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "Unavailable"),
            ConsoleError::Internal(e) => {
                tracing::error!(error = %format!("{e:#}"), "console page failed");
                (StatusCode::INTERNAL_SERVER_ERROR, "Something went wrong")
            }
        };
        let detail = match &self {
            ConsoleError::Internal(_) => "The error is in the server's log.".to_owned(),
            ConsoleError::NotFound => "There is nothing here that you can see.".to_owned(),
            other => other.to_string(),
        };
        let page = ErrorPage {
            status: status.as_u16(),
            title,
            detail,
        };
        let body = page
            .render()
            .unwrap_or_else(|_| format!("{} {title}", status.as_u16()));
        (status, Html(body)).into_response()
    }
}
