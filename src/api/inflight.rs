//! Request bodies, read before any handler runs: whole within
//! `server.body_read_timeout` (else 408), at most `server.body_limit_bytes` (else 413),
//! and within the process's budget of body bytes in flight,
//! `server.max_body_bytes_in_flight` (else 503 with `Retry-After`, before the body is
//! read when its length is declared). The budget is held until the response is ready,
//! which covers the parsed and rendered copies a handler makes of the body.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;
use http_body_util::{BodyExt, Limited};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::{ApiError, AppState};

/// The bytes of request bodies this process may hold at once.
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
}

impl BodyBudget {
    pub fn new(bytes: usize) -> BodyBudget {
        BodyBudget {
            bytes: Arc::new(Semaphore::new(bytes)),
        }
    }

    /// Takes `n` bytes of the budget now, or none.
    fn take(&self, n: usize) -> Result<Option<OwnedSemaphorePermit>, ApiError> {
        if n == 0 {
            return Ok(None);
        }
        let n = u32::try_from(n).map_err(|_| ApiError::PayloadTooLarge)?;
        Arc::clone(&self.bytes)
            .try_acquire_many_owned(n)
            .map(Some)
            .map_err(|_| {
                crate::metrics::http_refused("body_budget");
                ApiError::Busy(
                    "the server holds as many request bodies as it takes (server.max_body_bytes_in_flight); retry shortly"
                        .to_owned(),
                )
            })
    }
}

/// Middleware: reads the body under the limits above and hands the handler a body
/// that is already complete.
pub async fn read_body(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let server = &state.settings.server;
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<usize>().ok());
    if declared.is_some_and(|n| n > server.body_limit_bytes) {
        return Err(ApiError::PayloadTooLarge);
    }
    let mut held = state.body_budget.take(declared.unwrap_or(0))?;
    let (parts, body) = request.into_parts();
    let read = async {
        let mut body = Limited::new(body, server.body_limit_bytes);
        let mut bytes = Vec::with_capacity(declared.unwrap_or(0));
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| {
                if e.is::<http_body_util::LengthLimitError>() {
                    ApiError::PayloadTooLarge
                } else {
                    ApiError::Malformed {
                        field: None,
                        message: format!("the request body could not be read: {e}"),
                    }
                }
            })?;
            if let Ok(data) = frame.into_data() {
                // A body of undeclared length (chunked) takes its budget as it comes.
                if declared.is_none() {
                    if let Some(more) = state.body_budget.take(data.len())? {
                        match held.as_mut() {
                            Some(held) => held.merge(more),
                            None => held = Some(more),
                        }
                    }
                }
                bytes.extend_from_slice(&data);
            }
        }
        Ok::<_, ApiError>(Bytes::from(bytes))
    };
    let bytes = tokio::time::timeout(server.body_read_timeout, read)
        .await
        .map_err(|_| {
            crate::metrics::http_refused("body_timeout");
            ApiError::RequestTimeout(server.body_read_timeout)
        })??;
    let response = next
        .run(Request::from_parts(parts, Body::from(bytes)))
        .await;
    // The budget is given back only now: the handler's copies of the body are gone.
    drop(held);
    Ok(response)
}
