//! The suppression list of the caller's tenant: addresses postwire will not mail.

use axum::extract::{Path, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ApiError, AppState, Payload};
use crate::domain::{suppression_key, EmailAddress, SmtpReply};
use crate::keys::Principal;
use crate::store::SuppressionRow;

/// What a path segment must escape: everything but RFC 3986's unreserved characters.
const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// Which tenant's list: the caller's own, or (operators only) the one named.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct TenantQuery {
    /// Another tenant's list (`operator` keys only).
    #[param(value_type = String, required = false)]
    pub tenant: Option<String>,
}

/// Query of `GET /v1/suppressions`.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SuppressionQuery {
    /// Another tenant's list (`operator` keys only).
    #[param(value_type = String, required = false)]
    pub tenant: Option<String>,
    /// 1 to 500, default 100.
    #[param(value_type = u32, minimum = 1, maximum = 500, default = 100, required = false)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(value_type = String, required = false)]
    pub cursor: Option<String>,
}

/// `POST /v1/suppressions` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewSuppression {
    /// The address not to mail any more.
    pub address: String,
    /// Why, e.g. `complaint` or `unsubscribed` (at most 500 characters).
    pub reason: String,
}

impl super::RequestBody for NewSuppression {
    type Xml = NewSuppression;
}

/// One suppressed address.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuppressionView {
    /// As kept and compared: the domain in lower case.
    pub address: String,
    /// `bounce` (a server refused it as a bad address) or `manual`.
    pub source: String,
    pub reason: String,
    /// The refusal that put it on the list (bounces only).
    pub reply: Option<SmtpReply>,
    /// The message whose delivery was refused (bounces only).
    pub message_id: Option<Uuid>,
    pub created_at: DateTime<Utc>,
}

impl From<SuppressionRow> for SuppressionView {
    fn from(row: SuppressionRow) -> SuppressionView {
        SuppressionView {
            address: row.address,
            source: row.source,
            reason: row.reason,
            reply: row.reply.map(|r| r.0),
            message_id: row.message_id,
            created_at: row.created_at,
        }
    }
}

/// A page of the list, in address order.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SuppressionList {
    pub suppressions: Vec<SuppressionView>,
    /// Pass as `cursor` for the next page; `null` on the last page.
    pub next_cursor: Option<String>,
}

/// The tenant whose list the caller acts on: its own unless an operator names one.
async fn tenant_of(
    state: &AppState,
    caller: &Principal,
    name: Option<String>,
) -> Result<Uuid, ApiError> {
    let chosen = super::messages::chosen_tenant(state, caller, name).await?;
    Ok(chosen.unwrap_or(caller.tenant_id))
}

/// An address as the list keeps it, or a 400 naming `field`.
fn listed_form(address: &str, field: &str) -> Result<String, ApiError> {
    let parsed = EmailAddress::parse(address.trim()).map_err(|e| ApiError::field(field, e))?;
    Ok(suppression_key(parsed.as_str()))
}

/// `GET /v1/suppressions`.
#[utoipa::path(
    get,
    path = "/v1/suppressions",
    operation_id = "listSuppressions",
    tag = "suppressions",
    summary = "List the suppressed addresses",
    description = "Requires an API key with the **admin** scope.\n\n\
        The key's tenant's list, in address order, in keyset pages (`next_cursor`). \
        An address is added when a server refuses it permanently as an address \
        (`5.1.x`, or `550`/`551`/`553` saying the user is unknown; never `5.7.x` or \
        `4xx`), or by hand. A later message leaves a suppressed recipient out (its \
        result says `suppressed`); with every recipient suppressed it fails at once, \
        without an SMTP session.",
    params(SuppressionQuery),
    responses(
        (status = 200, description = "A page of the list.", body = SuppressionList),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    super::Query(q): super::Query<SuppressionQuery>,
) -> Result<Json<SuppressionList>, ApiError> {
    let tenant = tenant_of(&state, &caller, q.tenant).await?;
    let limit = super::page_limit(q.limit, 100)?;
    let rows = state
        .store
        .list_suppressions(tenant, q.cursor.as_deref(), i64::from(limit))
        .await?;
    let next_cursor = (rows.len() == limit as usize)
        .then(|| rows.last().map(|r| r.address.clone()))
        .flatten();
    Ok(Json(SuppressionList {
        suppressions: rows.into_iter().map(SuppressionView::from).collect(),
        next_cursor,
    }))
}

/// `POST /v1/suppressions`: 201, or 200 when the address was listed already.
#[utoipa::path(
    post,
    path = "/v1/suppressions",
    operation_id = "addSuppression",
    tag = "suppressions",
    summary = "Suppress an address",
    description = "Requires an API key with the **admin** scope.\n\n\
        Puts an address on the key's tenant's list by hand (a complaint, an \
        unsubscribe): `201`, or `200` with the existing entry when it was listed \
        already. The domain is compared case-insensitively.",
    params(TenantQuery),
    request_body(
        description = "The address and why, as JSON or XML.",
        content(
            (NewSuppression = "application/json"),
            (NewSuppression = "application/xml")
        )
    ),
    responses(
        (status = 201, description = "Added.", body = SuppressionView,
            headers(("Location" = String, description = "The entry's URL."))),
        (status = 200, description = "Listed already; the existing entry.", body = SuppressionView),
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
pub async fn add(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    super::Query(q): super::Query<TenantQuery>,
    Payload(body, _): Payload<NewSuppression>,
) -> Result<Response, ApiError> {
    let tenant = tenant_of(&state, &caller, q.tenant).await?;
    let address = listed_form(&body.address, "address")?;
    let reason = body.reason.trim();
    if reason.is_empty() || reason.chars().count() > 500 {
        return Err(ApiError::field("reason", "must be 1 to 500 characters"));
    }
    let added = state.store.suppress(tenant, &address, reason).await?;
    let row = state
        .store
        .suppression(tenant, &address)
        .await?
        .ok_or_else(|| anyhow::anyhow!("suppression of {address} vanished after its insert"))?;
    tracing::info!(tenant = %caller.tenant, address = %address, added, "address suppressed by hand");
    let view = Json(SuppressionView::from(row));
    if !added {
        return Ok((StatusCode::OK, view).into_response());
    }
    let encoded = percent_encoding::utf8_percent_encode(&address, PATH_SEGMENT);
    let location = format!("/v1/suppressions/{encoded}");
    Ok((StatusCode::CREATED, [(header::LOCATION, location)], view).into_response())
}

/// `DELETE /v1/suppressions/{address}`: 204.
#[utoipa::path(
    delete,
    path = "/v1/suppressions/{address}",
    operation_id = "deleteSuppression",
    tag = "suppressions",
    summary = "Reactivate a suppressed address",
    description = "Requires an API key with the **admin** scope.\n\n\
        Takes the address off the key's tenant's list: later messages are sent to it \
        again. 404 when it is not listed.",
    params(
        ("address" = String, Path, description = "The address (URL-encoded)."),
        TenantQuery
    ),
    responses(
        (status = 204, description = "Taken off the list."),
        (status = 400, response = super::schemas::BadRequest),
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
    Path(address): Path<String>,
    super::Query(q): super::Query<TenantQuery>,
) -> Result<StatusCode, ApiError> {
    let tenant = tenant_of(&state, &caller, q.tenant).await?;
    let key = listed_form(&address, "address")?;
    if !state.store.unsuppress(tenant, &key).await? {
        return Err(ApiError::NotFound {
            detail: format!("{key:?} is not on the suppression list"),
            field: Some("address"),
        });
    }
    tracing::info!(tenant = %caller.tenant, address = %key, "address taken off the suppression list");
    Ok(StatusCode::NO_CONTENT)
}
