//! Webhook endpoints of the caller's tenant: where its messages' status changes are
//! POSTed, signed (see `crate::webhooks`).

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ApiError, AppState, Payload};
use crate::domain::{new_webhook_secret, parse_webhook_url, WebhookEvent};
use crate::keys::Principal;
use crate::store::{WebhookAttemptRow, WebhookRow};

/// `POST /v1/webhooks` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewWebhook {
    /// Where to POST: `https://` (`http://` only with `webhooks.allow_http`).
    pub url: String,
    /// The event types to send, at least one.
    pub events: Vec<WebhookEvent>,
    /// For people: what the endpoint is (at most 500 characters).
    #[serde(default)]
    pub description: Option<String>,
}

impl super::RequestBody for NewWebhook {
    type Xml = NewWebhook;
}

/// `PATCH /v1/webhooks/{id}` body: absent fields are kept.
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    pub url: Option<String>,
    pub events: Option<Vec<WebhookEvent>>,
    pub description: Option<String>,
    /// `false` enables a disabled endpoint again (its failed deliveries stay failed:
    /// `recover` sends them); `true` disables it.
    pub disabled: Option<bool>,
}

impl super::RequestBody for WebhookPatch {
    type Xml = WebhookPatch;
}

/// An endpoint, without its secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookView {
    pub id: Uuid,
    pub url: String,
    pub events: Vec<String>,
    pub description: Option<String>,
    /// Set when postwire stopped sending to it (410 Gone, or failing for
    /// `webhooks.disable_after`), or someone disabled it; `disabled_reason` says why.
    pub disabled_at: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    /// Failing without a success since.
    pub failing_since: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<&WebhookRow> for WebhookView {
    fn from(w: &WebhookRow) -> WebhookView {
        WebhookView {
            id: w.id,
            url: w.url.clone(),
            events: w.events.clone(),
            description: w.description.clone(),
            disabled_at: w.disabled_at,
            disabled_reason: w.disabled_reason.clone(),
            failing_since: w.failing_since,
            created_at: w.created_at,
            updated_at: w.updated_at,
        }
    }
}

/// A created endpoint, or a rotated secret: the one answer that shows the secret.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookWithSecret {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// `whsec_...`: the key of the signatures. Shown only here; keep it.
    pub secret: String,
    /// After a rotation: until when the previous secret signs too.
    pub previous_secret_valid_until: Option<DateTime<Utc>>,
}

/// The tenant's endpoints.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
}

/// Query of `GET /v1/webhooks/{id}/attempts`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AttemptQuery {
    /// `succeeded` or `failed`.
    #[param(value_type = String, required = false)]
    pub status: Option<String>,
    /// RFC 3339: attempts at or after.
    #[param(value_type = String, format = DateTime, required = false)]
    pub since: Option<String>,
    /// 1 to 500, default 100.
    #[param(value_type = u32, minimum = 1, maximum = 500, default = 100, required = false)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = String, required = false)]
    pub cursor: Option<String>,
}

/// One try of a delivery.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptView {
    /// The `webhook-id` (the same on every try of one event).
    pub event_id: Uuid,
    #[serde(rename = "type")]
    pub event_type: String,
    pub message_id: Uuid,
    pub at: DateTime<Utc>,
    pub succeeded: bool,
    /// The endpoint's HTTP status, if it answered.
    pub http_status: Option<i32>,
    /// Why it failed (no answer, refused target, status).
    pub error: Option<String>,
    pub duration_ms: i32,
}

impl From<WebhookAttemptRow> for AttemptView {
    fn from(a: WebhookAttemptRow) -> AttemptView {
        AttemptView {
            event_id: a.delivery_id,
            event_type: a.event_type,
            message_id: a.message_id,
            at: a.at,
            succeeded: a.succeeded,
            http_status: a.http_status,
            error: a.error,
            duration_ms: a.duration_ms,
        }
    }
}

/// A page of attempts, newest first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct AttemptList {
    pub attempts: Vec<AttemptView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// `POST /v1/webhooks/{id}/recover` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Recover {
    /// RFC 3339: failed deliveries of events at or after this are sent again.
    pub since: String,
}

impl super::RequestBody for Recover {
    type Xml = Recover;
}

/// How many failed deliveries were made due again.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Recovered {
    pub recovered: u64,
}

fn checked_events(events: &[WebhookEvent]) -> Result<Vec<String>, ApiError> {
    if events.is_empty() {
        return Err(ApiError::field(
            "events",
            "must name at least one event type",
        ));
    }
    let mut names: Vec<String> = events.iter().map(|e| e.as_str().to_owned()).collect();
    names.sort();
    names.dedup();
    Ok(names)
}

fn checked_description(description: Option<String>) -> Result<Option<String>, ApiError> {
    match description {
        Some(d) if d.chars().count() > 500 || d.chars().any(char::is_control) => {
            Err(ApiError::field(
                "description",
                "at most 500 characters, no control characters",
            ))
        }
        other => Ok(other),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::NotFound {
        detail: format!("no webhook endpoint with id {id}"),
        field: None,
    }
}

/// The endpoint `id` if the caller's tenant owns it (an operator: any).
async fn load(state: &AppState, caller: &Principal, id: &str) -> Result<WebhookRow, ApiError> {
    let uuid = Uuid::parse_str(id).map_err(|_| not_found(id))?;
    state
        .store
        .get_webhook(uuid, caller.sees())
        .await?
        .ok_or_else(|| not_found(id))
}

fn seal(state: &AppState, id: Uuid, secret: &str) -> Vec<u8> {
    state
        .connections
        .cipher()
        .encrypt(secret.as_bytes(), id.as_bytes())
}

const ID_PARAM: &str = "The endpoint's id.";

/// `POST /v1/webhooks`: 201 with the secret.
#[utoipa::path(
    post,
    path = "/v1/webhooks",
    operation_id = "createWebhook",
    tag = "webhooks",
    summary = "Subscribe an endpoint to message events",
    description = "Requires an API key with the **admin** scope.\n\n\
        Status changes of the key's tenant's messages are POSTed to `url` as \
        `{\"type\", \"timestamp\", \"data\"}` (`data`: the message as \
        `GET /v1/messages/{id}` shows it, at the event), signed per the Standard \
        Webhooks specification: `webhook-id` (the same on every retry: deduplicate on \
        it), `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256 of \
        \"{id}.{timestamp}.{body}\">` keyed with the base64 after `whsec_` of the \
        `secret`, which this answer alone shows. A 2xx within `webhooks.timeout` (15 s) \
        is success; other answers are retried after about 5 s, 5 min, 30 min, 2 h, \
        5 h, 10 h, 10 h; 410 Gone disables the endpoint.",
    request_body(
        description = "The endpoint, as JSON or XML.",
        content((NewWebhook = "application/json"), (NewWebhook = "application/xml"))
    ),
    responses(
        (status = 201, description = "Subscribed.", body = WebhookWithSecret,
            headers(("Location" = String, description = "The endpoint's URL."))),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 408, response = super::schemas::RequestTimeout),
        (status = 413, response = super::schemas::PayloadTooLarge),
        (status = 415, response = super::schemas::UnsupportedMediaType),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Payload(body, _): Payload<NewWebhook>,
) -> Result<Response, ApiError> {
    let url = parse_webhook_url(&body.url, state.settings.webhooks.allow_http)
        .map_err(|e| ApiError::field("url", e))?;
    let now = Utc::now();
    let secret = new_webhook_secret();
    let id = Uuid::now_v7();
    let row = WebhookRow {
        id,
        tenant_id: caller.tenant_id,
        url: url.to_string(),
        events: checked_events(&body.events)?,
        description: checked_description(body.description)?,
        secret_enc: seal(&state, id, &secret),
        previous_secret_enc: None,
        previous_until: None,
        failing_since: None,
        disabled_at: None,
        disabled_reason: None,
        created_at: now,
        updated_at: now,
    };
    state.store.insert_webhook(&row).await?;
    tracing::info!(tenant = %caller.tenant, webhook = %id, url = %row.url, "webhook endpoint created");
    let created = WebhookWithSecret {
        webhook: WebhookView::from(&row),
        secret,
        previous_secret_valid_until: None,
    };
    let location = format!("/v1/webhooks/{id}");
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, location)],
        Json(created),
    )
        .into_response())
}

/// `GET /v1/webhooks`.
#[utoipa::path(
    get,
    path = "/v1/webhooks",
    operation_id = "listWebhooks",
    tag = "webhooks",
    summary = "List the webhook endpoints",
    description = "Requires an API key with the **admin** scope.\n\n\
        The key's tenant's endpoints (an `operator` key: every tenant's), without secrets.",
    responses(
        (status = 200, description = "The endpoints.", body = WebhookList),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<WebhookList>, ApiError> {
    let rows = state.store.list_webhooks(caller.sees()).await?;
    Ok(Json(WebhookList {
        webhooks: rows.iter().map(WebhookView::from).collect(),
    }))
}

/// `GET /v1/webhooks/{id}`.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}",
    operation_id = "getWebhook",
    tag = "webhooks",
    summary = "Look a webhook endpoint up",
    description = "Requires an API key with the **admin** scope.\n\n\
        Another tenant's endpoint is 404. `disabled_reason` says why postwire stopped \
        sending to it.",
    params(("id" = Uuid, Path, description = ID_PARAM)),
    responses(
        (status = 200, description = "The endpoint.", body = WebhookView),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>, ApiError> {
    Ok(Json(WebhookView::from(&load(&state, &caller, &id).await?)))
}

/// `PATCH /v1/webhooks/{id}`.
#[utoipa::path(
    patch,
    path = "/v1/webhooks/{id}",
    operation_id = "updateWebhook",
    tag = "webhooks",
    summary = "Change a webhook endpoint",
    description = "Requires an API key with the **admin** scope.\n\n\
        Absent fields are kept. `disabled: false` enables a disabled endpoint again.",
    params(("id" = Uuid, Path, description = ID_PARAM)),
    request_body(
        description = "The fields to change, as JSON or XML.",
        content((WebhookPatch = "application/json"), (WebhookPatch = "application/xml"))
    ),
    responses(
        (status = 200, description = "The endpoint.", body = WebhookView),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 408, response = super::schemas::RequestTimeout),
        (status = 413, response = super::schemas::PayloadTooLarge),
        (status = 415, response = super::schemas::UnsupportedMediaType),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn update(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    Payload(patch, _): Payload<WebhookPatch>,
) -> Result<Json<WebhookView>, ApiError> {
    let mut row = load(&state, &caller, &id).await?;
    if let Some(url) = patch.url {
        row.url = parse_webhook_url(&url, state.settings.webhooks.allow_http)
            .map_err(|e| ApiError::field("url", e))?
            .to_string();
    }
    if let Some(events) = patch.events {
        row.events = checked_events(&events)?;
    }
    if patch.description.is_some() {
        row.description = checked_description(patch.description)?;
    }
    match patch.disabled {
        Some(true) if row.disabled_at.is_none() => {
            row.disabled_at = Some(Utc::now());
            row.disabled_reason = Some(format!("disabled by {}", caller.name));
        }
        Some(false) => {
            row.disabled_at = None;
            row.disabled_reason = None;
            row.failing_since = None;
        }
        _ => {}
    }
    state.store.update_webhook(&row).await?;
    tracing::info!(tenant = %caller.tenant, webhook = %row.id, disabled = row.disabled_at.is_some(), "webhook endpoint updated");
    Ok(Json(WebhookView::from(&load(&state, &caller, &id).await?)))
}

/// `DELETE /v1/webhooks/{id}`: 204.
#[utoipa::path(
    delete,
    path = "/v1/webhooks/{id}",
    operation_id = "deleteWebhook",
    tag = "webhooks",
    summary = "Delete a webhook endpoint",
    description = "Requires an API key with the **admin** scope.\n\n\
        The endpoint and its pending deliveries go.",
    params(("id" = Uuid, Path, description = ID_PARAM)),
    responses(
        (status = 204, description = "Deleted."),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<StatusCode, ApiError> {
    let row = load(&state, &caller, &id).await?;
    if !state.store.delete_webhook(row.id, caller.sees()).await? {
        return Err(not_found(&id));
    }
    tracing::info!(tenant = %caller.tenant, webhook = %row.id, "webhook endpoint deleted");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /v1/webhooks/{id}/rotate-secret`: a new secret; the old one signs too for
/// `webhooks.rotation_overlap`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/rotate-secret",
    operation_id = "rotateWebhookSecret",
    tag = "webhooks",
    summary = "Rotate an endpoint's signing secret",
    description = "Requires an API key with the **admin** scope.\n\n\
        Answers the new secret (shown only here). Until \
        `previous_secret_valid_until` (24 h) every request carries two signatures, \
        space-separated: one with each secret, so the receiver can switch at leisure.",
    params(("id" = Uuid, Path, description = ID_PARAM)),
    responses(
        (status = 200, description = "The new secret.", body = WebhookWithSecret),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn rotate_secret(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<WebhookWithSecret>, ApiError> {
    let mut row = load(&state, &caller, &id).await?;
    let secret = new_webhook_secret();
    let overlap = chrono::Duration::from_std(state.settings.webhooks.rotation_overlap)
        .unwrap_or(chrono::Duration::hours(24));
    let until = Utc::now() + overlap;
    row.previous_secret_enc = Some(std::mem::replace(
        &mut row.secret_enc,
        seal(&state, row.id, &secret),
    ));
    row.previous_until = Some(until);
    state.store.update_webhook(&row).await?;
    tracing::info!(tenant = %caller.tenant, webhook = %row.id, "webhook secret rotated");
    Ok(Json(WebhookWithSecret {
        webhook: WebhookView::from(&row),
        secret,
        previous_secret_valid_until: Some(until),
    }))
}

/// `GET /v1/webhooks/{id}/attempts`.
#[utoipa::path(
    get,
    path = "/v1/webhooks/{id}/attempts",
    operation_id = "listWebhookAttempts",
    tag = "webhooks",
    summary = "List an endpoint's delivery attempts",
    description = "Requires an API key with the **admin** scope.\n\n\
        Every try, newest first: the event, the HTTP status or the error, how long it \
        took. Keyset pages (`next_cursor`).",
    params(("id" = Uuid, Path, description = ID_PARAM), AttemptQuery),
    responses(
        (status = 200, description = "A page of attempts.", body = AttemptList),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn attempts(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    super::Query(q): super::Query<AttemptQuery>,
) -> Result<Json<AttemptList>, ApiError> {
    let row = load(&state, &caller, &id).await?;
    let succeeded = match q.status.as_deref() {
        None => None,
        Some("succeeded") => Some(true),
        Some("failed") => Some(false),
        Some(other) => {
            return Err(ApiError::field(
                "status",
                format!("{other:?} is not succeeded or failed"),
            ))
        }
    };
    let since = q
        .since
        .as_deref()
        .map(|s| super::rfc3339("since", s))
        .transpose()?;
    let before = q
        .cursor
        .as_deref()
        .map(|c| {
            c.parse::<i64>()
                .map_err(|_| ApiError::field("cursor", "is not a cursor from a previous page"))
        })
        .transpose()?;
    let limit = super::page_limit(q.limit, 100)?;
    let rows = state
        .store
        .list_webhook_attempts(row.id, succeeded, since, before, i64::from(limit))
        .await?;
    let next_cursor = (rows.len() == limit as usize)
        .then(|| rows.last().map(|a| a.id.to_string()))
        .flatten();
    Ok(Json(AttemptList {
        attempts: rows.into_iter().map(AttemptView::from).collect(),
        next_cursor,
    }))
}

/// `POST /v1/webhooks/{id}/recover`.
#[utoipa::path(
    post,
    path = "/v1/webhooks/{id}/recover",
    operation_id = "recoverWebhooks",
    tag = "webhooks",
    summary = "Send failed deliveries again",
    description = "Requires an API key with the **admin** scope.\n\n\
        Every delivery to this endpoint that failed (retries exhausted, or the endpoint \
        disabled) for an event at or after `since` is sent again, with a fresh retry \
        schedule and its original `webhook-id`. Enable a disabled endpoint first.",
    params(("id" = Uuid, Path, description = ID_PARAM)),
    request_body(
        description = "From when, as JSON or XML.",
        content((Recover = "application/json"), (Recover = "application/xml"))
    ),
    responses(
        (status = 202, description = "Made due again.", body = Recovered),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 408, response = super::schemas::RequestTimeout),
        (status = 413, response = super::schemas::PayloadTooLarge),
        (status = 415, response = super::schemas::UnsupportedMediaType),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn recover(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
    Payload(body, _): Payload<Recover>,
) -> Result<(StatusCode, Json<Recovered>), ApiError> {
    let row = load(&state, &caller, &id).await?;
    let since = super::rfc3339("since", &body.since)?;
    let ids = state.store.recover_webhooks(row.id, since).await?;
    let recovered = ids.len() as u64;
    state.announce_webhooks(ids);
    tracing::info!(tenant = %caller.tenant, webhook = %row.id, recovered, "failed webhook deliveries made due again");
    Ok((StatusCode::ACCEPTED, Json(Recovered { recovered })))
}
