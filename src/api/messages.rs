//! Reading messages back: status, history, cancel.

use std::collections::BTreeMap;

use axum::extract::{Path, State};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ApiError, AppState};
use crate::domain::{
    parse_connection_name, parse_tenant_name, Mailbox, RecipientResult, SmtpReply, Status,
};
use crate::keys::Principal;
use crate::store::{Cancel, EventRecord, ListFilter, MessageRecord};

/// A message as `GET /v1/messages/{id}` shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageView {
    pub id: Uuid,
    /// The tenant whose message it is (a key sees only its own tenant's, an
    /// `operator` key every tenant's).
    pub tenant: String,
    pub status: Status,
    pub connection: String,
    pub from: String,
    pub to: Vec<String>,
    pub cc: Vec<String>,
    pub bcc: Vec<String>,
    pub subject: String,
    /// The RFC 5322 Message-ID header of the sent message.
    pub message_id: String,
    /// Bytes of the rendered message.
    pub size: i32,
    pub attempts: i32,
    pub next_attempt_at: Option<DateTime<Utc>>,
    pub last_reply: Option<SmtpReply>,
    pub last_error: Option<String>,
    /// What the server said to each recipient on the last attempt.
    pub recipients: Vec<RecipientResult>,
    /// The send's `Metadata`.
    #[schema(value_type = BTreeMap<String, String>)]
    pub metadata: BTreeMap<String, serde_json::Value>,
    /// The send's `SendAt`: no attempt before this time.
    pub send_at: Option<DateTime<Utc>>,
    /// The send's `ExpiresAt`: failed as `expired` if not sent by then.
    pub expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

impl From<MessageRecord> for MessageView {
    fn from(m: MessageRecord) -> MessageView {
        let display = |list: &[Mailbox]| list.iter().map(Mailbox::to_display).collect();
        MessageView {
            id: m.id,
            tenant: m.tenant,
            status: m.status,
            connection: m.connection,
            from: m.from_addr,
            to: display(&m.recipients.to),
            cc: display(&m.recipients.cc),
            bcc: display(&m.recipients.bcc),
            subject: m.subject,
            message_id: m.message_id,
            size: m.size,
            attempts: m.attempts,
            next_attempt_at: m.next_attempt_at,
            last_reply: m.last_reply,
            last_error: m.last_error,
            recipients: m.recipient_results.unwrap_or_default(),
            metadata: match m.metadata {
                serde_json::Value::Object(map) => map.into_iter().collect(),
                _ => BTreeMap::new(),
            },
            send_at: m.send_at,
            expires_at: m.expires_at,
            created_at: m.created_at,
            updated_at: m.updated_at,
            sent_at: m.sent_at,
        }
    }
}

/// `GET /v1/messages/{id}`.
#[utoipa::path(
    get,
    path = "/v1/messages/{id}",
    operation_id = "getMessage",
    tag = "messages",
    summary = "Look a message up",
    description = "Requires an API key with the **read** scope.\n\n\
        Status, connection, sender, recipients, subject, size, attempts, the last SMTP \
        reply, per-recipient results and timestamps. A key sees its own tenant's \
        messages only: any other id is 404, whether it exists or not. An `operator` key \
        sees every tenant's.",
    params(("id" = Uuid, Path, description = "The message id from the 202 answer (a UUID).")),
    responses(
        (status = 200, description = "The message.", body = MessageView),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["read"]), ("apiKey" = ["read"]))
)]
pub async fn get(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<MessageView>, ApiError> {
    let id = parse_id(&id)?;
    let message = state
        .store
        .get_message(id, caller.sees())
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(message.into()))
}

/// One entry of `GET /v1/messages/{id}/events`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventView {
    /// accepted, attempt, deferred, sent, failed, cancelled, expired, suppressed or
    /// requeued.
    #[serde(rename = "type")]
    #[schema(value_type = super::schemas::EventType)]
    pub kind: String,
    pub at: DateTime<Utc>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attempt: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply: Option<SmtpReply>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub recipients: Option<Vec<RecipientResult>>,
}

impl From<EventRecord> for EventView {
    fn from(e: EventRecord) -> EventView {
        EventView {
            kind: e.kind,
            at: e.at,
            attempt: e.attempt,
            reply: e.reply,
            detail: e.detail,
            recipients: e.recipients,
        }
    }
}

/// The history of a message.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EventsView {
    pub id: Uuid,
    pub events: Vec<EventView>,
}

/// `GET /v1/messages/{id}/events`.
#[utoipa::path(
    get,
    path = "/v1/messages/{id}/events",
    operation_id = "getMessageEvents",
    tag = "messages",
    summary = "The history of a message",
    description = "Requires an API key with the **read** scope.\n\n\
        `accepted`, each `attempt` with its reply, then `sent`, `failed`, `deferred`, \
        `cancelled` or `expired`, oldest first. Another tenant's message is 404.",
    params(("id" = Uuid, Path, description = "The message id from the 202 answer (a UUID).")),
    responses(
        (status = 200, description = "The events.", body = EventsView),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["read"]), ("apiKey" = ["read"]))
)]
pub async fn events(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<EventsView>, ApiError> {
    let id = parse_id(&id)?;
    let events = state
        .store
        .events(id, caller.sees())
        .await?
        .ok_or_else(|| not_found(id))?;
    Ok(Json(EventsView {
        id,
        events: events.into_iter().map(Into::into).collect(),
    }))
}

/// `POST /v1/messages/{id}/cancel`: a queued or deferred message is never sent.
#[utoipa::path(
    post,
    path = "/v1/messages/{id}/cancel",
    operation_id = "cancelMessage",
    tag = "messages",
    summary = "Cancel a message that has not been sent",
    description = "Requires an API key with the **send** scope.\n\n\
        A `queued` or `deferred` message becomes `cancelled` and is never sent; a \
        message in any other status answers 409. Another tenant's message is 404.",
    params(("id" = Uuid, Path, description = "The message id from the 202 answer (a UUID).")),
    responses(
        (status = 200, description = "Cancelled.", body = super::schemas::CancelledMessage),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 409, response = super::schemas::Conflict),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["send"]), ("apiKey" = ["send"]))
)]
pub async fn cancel(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(id): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let id = parse_id(&id)?;
    match state.store.cancel(id, caller.sees()).await? {
        Cancel::Cancelled {
            tenant,
            connection,
            webhooks,
        } => {
            tracing::info!(message_id = %id, tenant = %tenant, connection = %connection, "cancelled");
            state.announce_webhooks(webhooks);
            crate::metrics::message(&tenant, &connection, "cancelled");
            Ok(Json(
                serde_json::json!({ "id": id, "status": Status::Cancelled }),
            ))
        }
        Cancel::NotFound => Err(not_found(id)),
        Cancel::Conflict(status) => Err(ApiError::Conflict(format!(
            "message {id} is {status} and can no longer be cancelled"
        ))),
    }
}

fn parse_id(id: &str) -> Result<Uuid, ApiError> {
    Uuid::parse_str(id)
        .map_err(|_| ApiError::field("id", format!("{id:?} is not a message id (UUID)")))
}

fn not_found(id: Uuid) -> ApiError {
    ApiError::NotFound {
        detail: format!("no message with id {id}"),
        field: None,
    }
}

/// Query of `GET /v1/messages`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Only this tenant's messages (`operator` keys only; other keys always see
    /// their own tenant's).
    #[param(value_type = String, required = false)]
    pub tenant: Option<String>,
    /// Only messages in this status.
    #[param(value_type = Status, required = false)]
    pub status: Option<String>,
    /// Only messages sent through this connection.
    #[param(value_type = String, required = false)]
    pub connection: Option<String>,
    /// RFC 3339; messages created at or after.
    #[param(value_type = String, format = DateTime, required = false)]
    pub since: Option<String>,
    /// RFC 3339; messages created before.
    #[param(value_type = String, format = DateTime, required = false)]
    pub until: Option<String>,
    /// 1 to 500, default 50.
    #[param(value_type = u32, minimum = 1, maximum = 500, default = 50, required = false)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = String, format = Uuid, required = false)]
    pub cursor: Option<String>,
}

/// One line of the listing.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SummaryView {
    pub id: Uuid,
    pub tenant: String,
    pub status: Status,
    pub connection: String,
    pub from: String,
    pub subject: String,
    pub attempts: i32,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub sent_at: Option<DateTime<Utc>>,
}

/// A page of messages, newest first.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ListView {
    pub messages: Vec<SummaryView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    #[schema(format = Uuid)]
    pub next_cursor: Option<String>,
}

/// `GET /v1/messages?status=&connection=&since=&until=&limit=&cursor=`: keyset pages,
/// stable while new messages arrive.
#[utoipa::path(
    get,
    path = "/v1/messages",
    operation_id = "listMessages",
    tag = "messages",
    summary = "List messages, newest first",
    description = "Requires an API key with the **read** scope.\n\n\
        Keyset pages, stable while new messages arrive: pass `next_cursor` as `cursor` \
        for the next page. Unknown query parameters are refused (400). A key lists its \
        own tenant's messages; an `operator` key lists every tenant's, or one tenant's \
        with `tenant`.",
    params(ListQuery),
    responses(
        (status = 200, description = "A page of messages.", body = ListView),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["read"]), ("apiKey" = ["read"]))
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    super::Query(q): super::Query<ListQuery>,
) -> Result<Json<ListView>, ApiError> {
    let time =
        |field: &'static str, v: Option<String>| v.map(|t| super::rfc3339(field, &t)).transpose();
    let limit = super::page_limit(q.limit, 50)?;
    let tenant = chosen_tenant(&state, &caller, q.tenant).await?;
    let filter = ListFilter {
        tenant,
        status: q
            .status
            .map(|s| {
                s.parse::<Status>()
                    .map_err(|e| ApiError::field("status", e))
            })
            .transpose()?,
        connection: q
            .connection
            .map(|c| parse_connection_name(&c).map_err(|e| ApiError::field("connection", e)))
            .transpose()?,
        since: time("since", q.since)?,
        until: time("until", q.until)?,
        before: q
            .cursor
            .map(|c| {
                Uuid::parse_str(&c)
                    .map_err(|_| ApiError::field("cursor", "is not a cursor from a previous page"))
            })
            .transpose()?,
        limit,
    };
    let rows = state.store.list_messages(&filter).await?;
    let next_cursor = (rows.len() == limit as usize)
        .then(|| rows.last().map(|m| m.id.to_string()))
        .flatten();
    Ok(Json(ListView {
        messages: rows
            .into_iter()
            .map(|m| SummaryView {
                id: m.id,
                tenant: m.tenant,
                status: m.status,
                connection: m.connection,
                from: m.from_addr,
                subject: m.subject,
                attempts: m.attempts,
                created_at: m.created_at,
                updated_at: m.updated_at,
                sent_at: m.sent_at,
            })
            .collect(),
        next_cursor,
    }))
}

/// The tenant a request's `?tenant=` chooses: any, for an `operator` key; for other
/// keys only their own (another name is a 400). `None`: none chosen and the key sees
/// every tenant (an operator).
pub(crate) async fn chosen_tenant(
    state: &AppState,
    caller: &Principal,
    name: Option<String>,
) -> Result<Option<Uuid>, ApiError> {
    match (name, caller.sees()) {
        (None, own) => Ok(own),
        (Some(name), None) => Ok(Some(tenant_id(state, &name).await?)),
        (Some(name), Some(own)) if name == caller.tenant => Ok(Some(own)),
        (Some(_), Some(_)) => Err(ApiError::field(
            "tenant",
            "only an operator key can choose a tenant; this key acts on its own tenant's",
        )),
    }
}

/// The id of the tenant an operator filters by.
async fn tenant_id(state: &AppState, name: &str) -> Result<Uuid, ApiError> {
    let name = parse_tenant_name(name).map_err(|e| ApiError::field("tenant", e))?;
    state
        .store
        .tenant_by_name(&name)
        .await?
        .map(|t| t.id)
        .ok_or_else(|| ApiError::NotFound {
            detail: format!("no tenant named {name:?}"),
            field: Some("tenant"),
        })
}
