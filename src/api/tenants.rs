//! Tenants over HTTP, for operators (`operator` scope): the same changes as
//! `postwire tenants ...`.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ApiError, AppState, Payload};
use crate::domain::{parse_sender_domains, parse_tenant_name, parse_tenant_rate};
use crate::store::TenantRow;

/// A tenant as the API shows it.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantView {
    pub id: Uuid,
    pub name: String,
    /// Sends per second accepted from its keys, per API process; `null`: no limit.
    pub max_rate_per_second: Option<i32>,
    /// Domains its From and Reply-To may use; `null`: any.
    pub allowed_from_domains: Option<Vec<String>>,
    /// Its keys are refused (403) and its mail waits.
    pub disabled: bool,
    pub disabled_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

impl From<TenantRow> for TenantView {
    fn from(t: TenantRow) -> TenantView {
        TenantView {
            id: t.id,
            name: t.name,
            max_rate_per_second: t.max_rate_per_second,
            allowed_from_domains: t.allowed_from_domains,
            disabled: t.disabled_at.is_some(),
            disabled_at: t.disabled_at,
            created_at: t.created_at,
            updated_at: t.updated_at,
        }
    }
}

/// Every tenant.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TenantList {
    pub tenants: Vec<TenantView>,
}

/// `POST /v1/tenants` body.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewTenant {
    /// 1 to 64 letters, digits, `.`, `_` and `-`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// At least 1; absent: no limit.
    #[schema(minimum = 1)]
    pub max_rate_per_second: Option<u32>,
    /// Absent: any sender domain.
    pub allowed_from_domains: Option<Vec<String>>,
}

/// `PATCH /v1/tenants/{name}` body: absent fields are kept; `null` clears a limit.
#[derive(Debug, Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TenantPatch {
    /// At least 1; `null` for no limit.
    #[serde(default, deserialize_with = "super::payload::present")]
    #[schema(value_type = Option<u32>, minimum = 1)]
    pub max_rate_per_second: Option<Option<u32>>,
    /// `null` for any sender domain.
    #[serde(default, deserialize_with = "super::payload::present")]
    #[schema(value_type = Option<Vec<String>>)]
    pub allowed_from_domains: Option<Option<Vec<String>>>,
    /// `true` disables the tenant (its keys get 403, its mail waits); `false`
    /// enables it again (its waiting mail goes out within `reconcile.grace`).
    pub disabled: Option<bool>,
}

impl super::RequestBody for NewTenant {
    type Xml = NewTenant;
}

impl super::RequestBody for TenantPatch {
    type Xml = TenantPatch;
}

fn rate(rate: Option<u32>) -> Result<Option<i32>, ApiError> {
    rate.map(parse_tenant_rate)
        .transpose()
        .map_err(|e| ApiError::field("max_rate_per_second", e))
}

fn domains(domains: Option<Vec<String>>) -> Result<Option<Vec<String>>, ApiError> {
    domains
        .map(|d| parse_sender_domains(&d))
        .transpose()
        .map_err(|e| ApiError::field("allowed_from_domains", e))
}

async fn load(state: &AppState, name: &str) -> Result<TenantRow, ApiError> {
    let not_found = || ApiError::NotFound {
        detail: format!("no tenant named {name:?}"),
        field: None,
    };
    let name = parse_tenant_name(name).map_err(|_| not_found())?;
    state
        .store
        .tenant_by_name(&name)
        .await?
        .ok_or_else(not_found)
}

/// `GET /v1/tenants`.
#[utoipa::path(
    get,
    path = "/v1/tenants",
    operation_id = "listTenants",
    tag = "tenants",
    summary = "List tenants",
    description = "Requires an API key with the **operator** scope.",
    responses(
        (status = 200, description = "Every tenant.", body = TenantList),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["operator"]), ("apiKey" = ["operator"]))
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<TenantList>, ApiError> {
    let tenants = state.store.list_tenants().await?;
    Ok(Json(TenantList {
        tenants: tenants.into_iter().map(Into::into).collect(),
    }))
}

/// `POST /v1/tenants`: 201 with `Location`.
#[utoipa::path(
    post,
    path = "/v1/tenants",
    operation_id = "createTenant",
    tag = "tenants",
    summary = "Create a tenant",
    description = "Requires an API key with the **operator** scope.\n\n\
        A tenant is one producing application: its keys (`postwire keys create --tenant`), \
        connections and messages are its own.",
    request_body(
        description = "The tenant, as JSON or XML.",
        content((NewTenant = "application/json"), (NewTenant = "application/xml"))
    ),
    responses(
        (status = 201, description = "Created.", body = TenantView,
            headers(("Location" = String, description = "`/v1/tenants/{name}`"))),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 408, response = super::schemas::RequestTimeout),
        (status = 409, response = super::schemas::Conflict),
        (status = 413, response = super::schemas::PayloadTooLarge),
        (status = 415, response = super::schemas::UnsupportedMediaType),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["operator"]), ("apiKey" = ["operator"]))
)]
pub async fn create(
    State(state): State<AppState>,
    Payload(new, _): Payload<NewTenant>,
) -> Result<Response, ApiError> {
    let name = parse_tenant_name(&new.name).map_err(|e| ApiError::field("name", e))?;
    let now = Utc::now();
    let tenant = TenantRow {
        id: Uuid::now_v7(),
        name,
        max_rate_per_second: rate(new.max_rate_per_second)?,
        allowed_from_domains: domains(new.allowed_from_domains)?,
        disabled_at: None,
        created_at: now,
        updated_at: now,
    };
    if !state.store.insert_tenant(&tenant).await? {
        return Err(ApiError::Conflict(format!(
            "a tenant named {:?} already exists",
            tenant.name
        )));
    }
    tracing::info!(tenant = %tenant.name, "tenant created");
    let stored = load(&state, &tenant.name).await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/tenants/{}", stored.name)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((StatusCode::CREATED, headers, Json(TenantView::from(stored))).into_response())
}

/// `GET /v1/tenants/{name}`.
#[utoipa::path(
    get,
    path = "/v1/tenants/{name}",
    operation_id = "getTenant",
    tag = "tenants",
    summary = "Look a tenant up",
    description = "Requires an API key with the **operator** scope.",
    params(("name" = String, Path, description = "The tenant's name.")),
    responses(
        (status = 200, description = "The tenant.", body = TenantView),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["operator"]), ("apiKey" = ["operator"]))
)]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<TenantView>, ApiError> {
    Ok(Json(load(&state, &name).await?.into()))
}

/// `PATCH /v1/tenants/{name}`.
#[utoipa::path(
    patch,
    path = "/v1/tenants/{name}",
    operation_id = "updateTenant",
    tag = "tenants",
    summary = "Change a tenant's limits, or disable or enable it",
    description = "Requires an API key with the **operator** scope.\n\n\
        Absent fields are kept; `null` removes a limit. Changes reach keys within \
        `security.api_key_cache`.",
    params(("name" = String, Path, description = "The tenant's name.")),
    request_body(
        description = "The fields to change, as JSON or XML.",
        content((TenantPatch = "application/json"), (TenantPatch = "application/xml"))
    ),
    responses(
        (status = 200, description = "The updated tenant.", body = TenantView),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 408, response = super::schemas::RequestTimeout),
        (status = 413, response = super::schemas::PayloadTooLarge),
        (status = 415, response = super::schemas::UnsupportedMediaType),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["operator"]), ("apiKey" = ["operator"]))
)]
pub async fn update(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Payload(patch, _): Payload<TenantPatch>,
) -> Result<Json<TenantView>, ApiError> {
    let mut tenant = load(&state, &name).await?;
    if let Some(r) = patch.max_rate_per_second {
        tenant.max_rate_per_second = rate(r)?;
    }
    if let Some(d) = patch.allowed_from_domains {
        tenant.allowed_from_domains = domains(d)?;
    }
    match patch.disabled {
        Some(true) => tenant.disabled_at = tenant.disabled_at.or_else(|| Some(Utc::now())),
        Some(false) => tenant.disabled_at = None,
        None => {}
    }
    state.store.update_tenant(&tenant).await?;
    tracing::info!(tenant = %tenant.name, disabled = tenant.disabled_at.is_some(), "tenant updated");
    Ok(Json(load(&state, &name).await?.into()))
}
