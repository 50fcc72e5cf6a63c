//! Sending: the connector's *Send Email* (`POST /SendEmail`, `POST /v1/messages`) and
//! the batch (`POST /v1/messages/batch`). The body becomes domain types here; the
//! [`accept`](crate::accept) pipeline renders, commits and publishes; the answer is 202.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::email_message::{EmailMessage, EmailMessageXml};
use super::payload::LARGE_BODY;
use super::{ApiError, AppState, Payload, RequestBody};
use crate::accept::{off_runtime, Idempotency, Prepared};
use crate::domain::{FieldError, Status};
use crate::keys::Principal;
use crate::store::Accept;

/// `POST /SendEmail` and `POST /v1/messages`. The 202 means committed: if the publish
/// fails, the outbox relay publishes the message later.
#[utoipa::path(
    post,
    path = "/v1/messages",
    operation_id = "sendMessage",
    tag = "send",
    summary = "Accept a message for delivery",
    description = "Requires an API key with the **send** scope.\n\n\
        Validates the message, renders it, commits it to the database and queues it; \
        `202` means committed. Invalid input is never stored or queued: every invalid \
        field is reported at once in `errors`. `POST /SendEmail` takes the same body.",
    request_body(
        description = "The connector's `emailMessage`, as JSON or XML.",
        content(
            (EmailMessage = "application/json"),
            (EmailMessageXml = "application/xml")
        )
    ),
    params(super::schemas::IdempotencyKey),
    responses(
        (status = 202, description = "Committed and queued.", body = super::schemas::AcceptedMessage,
            headers(
                ("Location" = String, description = "`/v1/messages/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this answers a repeated `Idempotency-Key`")
            )),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 408, response = super::schemas::RequestTimeout),
        (status = 413, response = super::schemas::PayloadTooLarge),
        (status = 415, response = super::schemas::UnsupportedMediaType),
        (status = 422, response = super::schemas::IdempotencyKeyReused),
        (status = 429, response = super::schemas::TooManyRequests),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["send"]), ("apiKey" = ["send"]))
)]
pub async fn send(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Payload(request, digest): Payload<EmailMessage>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    state.limits.admit(&principal, 1)?;
    let large = request.content_len() > LARGE_BODY;
    let prepared = prepare(&state, &principal, request, large).await?;
    let answer = json!({ "id": prepared.id(), "status": Status::Queued });
    accept(&state, &principal, vec![prepared], key, digest, answer).await
}

/// `POST /SendEmail`: the connector's own path for `POST /v1/messages`.
#[utoipa::path(
    post,
    path = "/SendEmail",
    operation_id = "SendEmail",
    tag = "send",
    summary = "Accept a message for delivery (the connector's path)",
    description = "Requires an API key with the **send** scope.\n\n\
        The SMTP connector's *Send Email* path: the same as `POST /v1/messages`.",
    request_body(
        description = "The connector's `emailMessage`, as JSON or XML.",
        content(
            (EmailMessage = "application/json"),
            (EmailMessageXml = "application/xml")
        )
    ),
    params(super::schemas::IdempotencyKey),
    responses(
        (status = 202, description = "Committed and queued.", body = super::schemas::AcceptedMessage,
            headers(
                ("Location" = String, description = "`/v1/messages/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this answers a repeated `Idempotency-Key`")
            )),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 408, response = super::schemas::RequestTimeout),
        (status = 413, response = super::schemas::PayloadTooLarge),
        (status = 415, response = super::schemas::UnsupportedMediaType),
        (status = 422, response = super::schemas::IdempotencyKeyReused),
        (status = 429, response = super::schemas::TooManyRequests),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["send"]), ("apiKey" = ["send"]))
)]
pub async fn send_email(
    state: State<AppState>,
    principal: Extension<Principal>,
    headers: HeaderMap,
    payload: Payload<EmailMessage>,
) -> Result<Response, ApiError> {
    send(state, principal, headers, payload).await
}

/// The batch body: `{"messages": [emailMessage, ...]}`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchRequest {
    /// 1 to `limits.batch_max` messages; errors name `messages[i].Field`.
    #[schema(min_items = 1)]
    pub messages: Vec<EmailMessage>,
}

/// The batch in XML: `<batch><emailMessage>…</emailMessage>…</batch>`.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(xml(name = "batch"))]
pub struct BatchXml {
    #[serde(rename = "@xmlns", default)]
    #[schema(ignore)]
    _xmlns: Option<String>,
    #[serde(rename = "emailMessage", default)]
    #[schema(min_items = 1)]
    pub messages: Vec<EmailMessageXml>,
}

impl From<BatchXml> for BatchRequest {
    fn from(x: BatchXml) -> BatchRequest {
        BatchRequest {
            messages: x.messages.into_iter().map(Into::into).collect(),
        }
    }
}

impl RequestBody for BatchRequest {
    type Xml = BatchXml;
}

impl RequestBody for EmailMessage {
    type Xml = EmailMessageXml;
}

/// `POST /v1/messages/batch`: up to `limits.batch_max` messages, validated as a whole
/// (errors name `messages[i].Field`, nothing is accepted if any is invalid), committed
/// in one transaction, answered with the ids in request order.
#[utoipa::path(
    post,
    path = "/v1/messages/batch",
    operation_id = "sendBatch",
    tag = "send",
    summary = "Accept several messages at once",
    description = "Requires an API key with the **send** scope.\n\n\
        Up to `limits.batch_max` messages, validated as a whole: if any is invalid, \
        nothing is accepted and `errors` name `messages[i].Field`. Committed in one \
        transaction; the answer lists the ids in request order.",
    request_body(
        description = "`{\"messages\": [emailMessage, ...]}`, or XML \
            `<batch><emailMessage>…</emailMessage>…</batch>`.",
        content(
            (BatchRequest = "application/json"),
            (BatchXml = "application/xml")
        )
    ),
    params(super::schemas::IdempotencyKey),
    responses(
        (status = 202, description = "Committed and queued.", body = super::schemas::BatchAccepted,
            headers(
                ("Idempotent-Replayed" = String, description = "`true` when this answers a repeated `Idempotency-Key`")
            )),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 408, response = super::schemas::RequestTimeout),
        (status = 413, response = super::schemas::PayloadTooLarge),
        (status = 415, response = super::schemas::UnsupportedMediaType),
        (status = 422, response = super::schemas::IdempotencyKeyReused),
        (status = 429, response = super::schemas::TooManyRequests),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["send"]), ("apiKey" = ["send"]))
)]
pub async fn send_batch(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    Payload(batch, digest): Payload<BatchRequest>,
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let max = state.settings.limits.batch_max;
    if batch.messages.is_empty() {
        return Err(ApiError::field(
            "messages",
            "at least one message is required",
        ));
    }
    if batch.messages.len() > max {
        return Err(ApiError::Invalid {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            errors: vec![FieldError::new(
                "messages",
                format!("{} messages, over the limit of {max}", batch.messages.len()),
            )],
        });
    }
    state.limits.admit(&principal, batch.messages.len())?;
    // Many medium messages add up: past a megabyte the whole batch is worked on the
    // blocking pool, one message at a time.
    let large = batch
        .messages
        .iter()
        .map(EmailMessage::content_len)
        .sum::<usize>()
        > LARGE_BATCH;
    let mut prepared = Vec::with_capacity(batch.messages.len());
    let mut errors = Vec::new();
    let mut status = StatusCode::BAD_REQUEST;
    for (i, message) in batch.messages.into_iter().enumerate() {
        match prepare(&state, &principal, message, large).await {
            Ok(p) => prepared.push(p),
            Err(ApiError::Invalid {
                status: s,
                errors: e,
            }) => {
                status = if errors.is_empty() || status == s {
                    s
                } else {
                    StatusCode::BAD_REQUEST
                };
                errors.extend(
                    e.into_iter()
                        .map(|f| FieldError::new(format!("messages[{i}].{}", f.field), f.message)),
                );
            }
            Err(ApiError::NotFound {
                detail,
                field: Some(field),
            }) => {
                status = StatusCode::BAD_REQUEST;
                errors.push(FieldError::new(format!("messages[{i}].{field}"), detail));
            }
            Err(other) => return Err(other),
        }
    }
    if !errors.is_empty() {
        return Err(ApiError::Invalid { status, errors });
    }
    let answer = json!({
        "messages": prepared.iter().map(|p| json!({ "id": p.id(), "status": Status::Queued })).collect::<Vec<_>>()
    });
    accept(&state, &principal, prepared, key, digest, answer).await
}

/// A batch whose messages hold more content than this in all is validated and
/// rendered on the blocking pool.
const LARGE_BATCH: usize = 1024 * 1024;

/// Turns one request into a domain message (at the edge) and hands it to the
/// pipeline, on the blocking pool when `large`.
async fn prepare(
    state: &AppState,
    principal: &Principal,
    request: EmailMessage,
    large: bool,
) -> Result<Prepared, ApiError> {
    let limits = state.settings.limits.clone();
    let message = off_runtime(large, move || request.into_domain(&limits)).await??;
    Ok(state.acceptor.prepare(principal, message, large).await?)
}

/// Commits and publishes, then answers.
async fn accept(
    state: &AppState,
    principal: &Principal,
    prepared: Vec<Prepared>,
    key: Option<String>,
    digest: [u8; 32],
    answer: Value,
) -> Result<Response, ApiError> {
    let idempotency = key.map(|key| Idempotency {
        key,
        request_hash: digest,
        answer: answer.clone(),
    });
    match state
        .acceptor
        .accept(principal, prepared, idempotency)
        .await
        .map_err(ApiError::from)?
    {
        Accept::Committed => Ok(accepted_response(answer, false)),
        Accept::Replay(original) => Ok(accepted_response(original, true)),
        Accept::KeyReused => Err(ApiError::IdempotencyKeyReused),
    }
}

/// 202, with `Location` for a single message and `Idempotent-Replayed: true` when
/// answering a repeated key.
fn accepted_response(body: Value, replayed: bool) -> Response {
    let mut headers = HeaderMap::new();
    if let Some(id) = body["id"].as_str() {
        if let Ok(location) = HeaderValue::from_str(&format!("/v1/messages/{id}")) {
            headers.insert(header::LOCATION, location);
        }
    }
    if replayed {
        headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    (StatusCode::ACCEPTED, headers, Json(body)).into_response()
}

/// The `Idempotency-Key` header: 1 to 255 printable ASCII characters.
fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 255 && k.bytes().all(|b| (0x20..0x7f).contains(&b)))
        .ok_or_else(|| {
            ApiError::field(
                "Idempotency-Key",
                "must be 1 to 255 printable ASCII characters",
            )
        })?;
    Ok(Some(key.to_owned()))
}
