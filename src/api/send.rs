//! Sending: the connector's *Send Email* (`POST /SendEmail`, `POST /v1/messages`) and
//! the batch (`POST /v1/messages/batch`). Validate, render, commit to PostgreSQL in one
//! transaction, publish to RabbitMQ with confirms, answer 202.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use super::email_message::{EmailMessage, EmailMessageXml};
use super::payload::{off_runtime, LARGE_BODY};
use super::{ApiError, AppState, Payload, RequestBody};
use crate::batcher::{self, BatchLimits, Batcher, DbResult};
use crate::domain::{FieldError, Mailbox, NewMessage, Status};
use crate::keys::Principal;
use crate::mime::Rendered;
use crate::queue::Job;
use crate::store::{Accept, IdempotencyRecord, NewMessageRow, Store};

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
    params(super::openapi::IdempotencyKey),
    responses(
        (status = 202, description = "Committed and queued.", body = super::openapi::AcceptedMessage,
            headers(
                ("Location" = String, description = "`/v1/messages/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this answers a repeated `Idempotency-Key`")
            )),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 422, response = super::openapi::IdempotencyKeyReused),
        (status = 503, response = super::openapi::Unavailable),
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
    let large = request.content_len() > LARGE_BODY;
    let prepared = prepare(&state, &principal, request, large).await?;
    let answer = json!({ "id": prepared.id, "status": Status::Queued });
    accept(&state, &principal, vec![prepared], key, digest, answer).await
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
    params(super::openapi::IdempotencyKey),
    responses(
        (status = 202, description = "Committed and queued.", body = super::openapi::BatchAccepted,
            headers(
                ("Idempotent-Replayed" = String, description = "`true` when this answers a repeated `Idempotency-Key`")
            )),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 422, response = super::openapi::IdempotencyKeyReused),
        (status = 503, response = super::openapi::Unavailable),
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
        "messages": prepared.iter().map(|p| json!({ "id": p.id, "status": Status::Queued })).collect::<Vec<_>>()
    });
    accept(&state, &principal, prepared, key, digest, answer).await
}

/// A validated, rendered message ready to commit.
pub(crate) struct Prepared {
    id: Uuid,
    connection: String,
    /// The From header as stored for the status lookup.
    from_addr: String,
    message: NewMessage,
    rendered: Rendered,
    /// Scheduled beyond the delay queues: no job now, the reconciler publishes one
    /// when it falls due.
    held: bool,
}

impl Prepared {
    /// The delivery job to publish at acceptance, if any: due at `SendAt` when the
    /// send is scheduled within the delay queues' reach.
    fn job(&self) -> Option<Job> {
        (!self.held).then(|| {
            let job = Job::new(self.id);
            match self.message.send_at {
                Some(at) => job.due_at(at),
                None => job,
            }
        })
    }
}

/// The rows to insert for prepared messages.
fn rows<'a>(prepared: impl IntoIterator<Item = &'a Prepared>) -> Vec<NewMessageRow<'a>> {
    prepared
        .into_iter()
        .map(|p| NewMessageRow {
            id: p.id,
            connection: &p.connection,
            from_addr: &p.from_addr,
            recipients: &p.message.recipients,
            envelope_from: &p.rendered.envelope_from,
            envelope_to: &p.rendered.envelope_to,
            subject: p.message.subject.as_str(),
            message_id: &p.rendered.message_id,
            raw: &p.rendered.raw,
            metadata: &p.message.metadata,
            send_at: p.message.send_at,
            expires_at: p.message.expires_at,
            held: p.held,
        })
        .collect()
}

/// Commits of concurrent single sends without an idempotency key, written together:
/// the messages of every request waiting when a writer is free go into one INSERT and
/// one commit. Batch requests commit on their own: they are batched already, and
/// joining several would make statements (and connection buffers) of many megabytes;
/// for the same reason a group is capped in bytes as well as in count. A group the
/// database refuses is written again request by request, so that one bad request
/// never fails the others; an unreachable database fails them all alike (none of them
/// is committed), which is what a per-request commit would have done.
pub(crate) type Commits = Batcher<Arc<Vec<Prepared>>, DbResult<()>>;

/// Requests written together at most, their rendered bytes at most, and batches
/// written at once.
const COMMIT_BATCH: BatchLimits = BatchLimits {
    count: 128,
    weight: 8 * 1024 * 1024,
};
const COMMIT_WRITERS: usize = 4;

/// A batch whose messages hold more content than this in all is validated and
/// rendered on the blocking pool.
const LARGE_BATCH: usize = 1024 * 1024;

/// Starts the group-commit writer of the send endpoints.
pub(crate) fn commits(store: Store) -> Commits {
    Batcher::start_weighted(
        COMMIT_BATCH,
        |request: &Arc<Vec<Prepared>>| request.iter().map(|p| p.rendered.raw.len()).sum(),
        COMMIT_WRITERS,
        move |requests: Vec<Arc<Vec<Prepared>>>| {
            let store = store.clone();
            batcher::write_or_isolate(requests, move |group| {
                let store = store.clone();
                async move {
                    let rows = rows(group.iter().flat_map(|r| r.iter()));
                    store.accept(&rows, None).await.map(|_| ())
                }
            })
        },
    )
}

/// Validates and renders one message, on the blocking pool when `large`.
async fn prepare(
    state: &AppState,
    principal: &Principal,
    request: EmailMessage,
    large: bool,
) -> Result<Prepared, ApiError> {
    let limits = state.settings.limits.clone();
    let message = off_runtime(large, move || request.into_domain(&limits)).await??;
    let connection = state
        .connection(message.connection.as_deref(), principal)
        .await?;
    let from = match (&message.from, connection.default_from) {
        (Some(from), _) => from.clone(),
        (None, Some(default)) => default,
        (None, None) => {
            return Err(ApiError::field(
                "From",
                format!(
                    "is required: connection {:?} has no default sender",
                    connection.name
                ),
            ))
        }
    };
    let id = Uuid::now_v7();
    let from_addr = from.to_display();
    let (message, rendered) = render(state, id, message, from, large).await?;
    // The longest delay queue is retry.max_delay: a send scheduled further ahead
    // waits in PostgreSQL, not in a queue.
    let horizon = chrono::Duration::from_std(state.settings.retry.max_delay)
        .unwrap_or(chrono::TimeDelta::MAX);
    let held = message
        .send_at
        .is_some_and(|at| at - chrono::Utc::now() > horizon);
    Ok(Prepared {
        id,
        connection: connection.name,
        from_addr,
        message,
        rendered,
        held,
    })
}

/// Commits (with the idempotency key, if any), publishes, answers. The commit and
/// the publish run in their own task: a client that hangs up must not cancel them
/// halfway.
async fn accept(
    state: &AppState,
    principal: &Principal,
    prepared: Vec<Prepared>,
    key: Option<String>,
    digest: [u8; 32],
    answer: Value,
) -> Result<Response, ApiError> {
    let task_state = state.clone();
    let committed = answer.clone();
    // A key belongs to the API key that used it: another caller's key is not a replay.
    let scope = principal.key_id.to_string();
    let accepted = tokio::spawn(async move {
        let prepared = Arc::new(prepared);
        // A lone message shares its commit with the concurrent sends; a batch is one
        // commit already, and one keyed send must commit with its key.
        let accepted = if key.is_none() && prepared.len() == 1 {
            task_state
                .commits
                .write(Arc::clone(&prepared))
                .await
                .map(|()| Accept::Committed)
                ?
        } else {
            let record = key.as_deref().map(|key| IdempotencyRecord {
                scope: &scope,
                key,
                request_hash: &digest,
                response: &committed,
                ttl: task_state.settings.idempotency.ttl,
            });
            task_state
                .store
                .accept(&rows(prepared.iter()), record.as_ref())
                .await
                ?
        };
        if let Accept::Committed = accepted {
            for p in prepared.iter() {
                tracing::info!(message_id = %p.id, connection = %p.connection, size = p.rendered.raw.len(), "accepted");
                crate::metrics::message(&p.connection, "accepted");
            }
            let jobs: Vec<Job> = prepared.iter().filter_map(Prepared::job).collect();
            // The 202 waits for the broker at most amqp.publish_timeout; a publish
            // still running then goes on by itself (bounded by amqp.timeout), and
            // whatever does not make it is the outbox relay's.
            let publishing = tokio::spawn({
                let state = task_state.clone();
                async move { state.publish(&jobs).await }
            });
            let bound = task_state.settings.amqp.publish_timeout;
            if tokio::time::timeout(bound, publishing).await.is_err() {
                tracing::warn!(bound = ?bound, "RabbitMQ is slow to confirm; answering without waiting, the outbox relay has the rest");
            }
        }
        Ok::<Accept, ApiError>(accepted)
    })
    .await
    .map_err(|e| ApiError::Internal(e.into()))??;

    match accepted {
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

/// Renders the MIME message (on the blocking pool when `large`) and checks its final
/// size. The content leaves the returned message: from here on only the rendered
/// bytes are needed, and a 20 MB attachment should not be held twice.
async fn render(
    state: &AppState,
    id: Uuid,
    mut message: NewMessage,
    from: Mailbox,
    large: bool,
) -> Result<(NewMessage, crate::mime::Rendered), ApiError> {
    let domain = state.settings.smtp.message_id_domain.clone();
    let (message, rendered) = off_runtime(large, move || {
        let rendered = crate::mime::render(id, &mut message, &from, &domain);
        (message, rendered)
    })
    .await?;
    let rendered = rendered.map_err(|e| match e {
        crate::mime::RenderError::Address { field, .. } => ApiError::field(field, e),
        crate::mime::RenderError::Header(_) => ApiError::field("Headers", e),
        other => {
            ApiError::Internal(anyhow::Error::new(other).context(format!("rendering message {id}")))
        }
    })?;
    let limit = state.settings.limits.max_message_bytes;
    if rendered.raw.len() > limit {
        return Err(ApiError::Invalid {
            status: StatusCode::PAYLOAD_TOO_LARGE,
            errors: vec![FieldError::new(
                "Body",
                format!(
                    "the message is {} bytes once encoded (limit {limit})",
                    rendered.raw.len()
                ),
            )],
        });
    }
    Ok((message, rendered))
}
