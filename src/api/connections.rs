//! SMTP connections (the connector's "connection"): stored once, reused by every
//! sender. The password is write-only: encrypted at rest, never returned.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{ApiError, AppState, Payload};
use crate::domain::{parse_connection_name, ConnectionFields, Security, SmtpReply, Throttle};
use crate::keys::Principal;
use crate::store::{ConnectionRow, DeleteConnection};

/// `PATCH /v1/connections/{name}` body: absent fields are kept; `null` clears an
/// optional one.
#[derive(Deserialize, Default, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ConnectionPatch {
    /// Host name or IP address.
    #[schema(min_length = 1, max_length = 253, pattern = "^[A-Za-z0-9.:\\[\\]-]+$")]
    pub host: Option<String>,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: Option<u16>,
    pub security: Option<Security>,
    /// `null` or `""` removes it.
    #[serde(default, deserialize_with = "super::payload::present")]
    #[schema(value_type = Option<String>, pattern = "^[^\\x00-\\x08\\x0A-\\x1F\\x7F-\\x9F\\u00AD\\u180E\\u200B-\\u200F\\u202A-\\u202E\\u2060-\\u2064\\u2066-\\u2069\\uFEFF]*$")]
    pub username: Option<Option<String>>,
    /// Write-only; `null` or `""` removes it. A PATCH that changes `host`, `port` or
    /// `security` without a new password clears the stored one (the answer says
    /// `password_cleared`): stored credentials only ever go where they were stored for.
    #[serde(default, deserialize_with = "super::payload::present")]
    #[schema(value_type = Option<String>, write_only)]
    pub password: Option<Option<SecretString>>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "super::payload::present")]
    #[schema(value_type = Option<String>)]
    pub default_from: Option<Option<String>>,
    /// 1 to 1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_connections: Option<u16>,
    /// At least 1; `null` for no limit.
    #[serde(default, deserialize_with = "super::payload::present")]
    #[schema(value_type = Option<u32>, minimum = 1)]
    pub max_rate_per_second: Option<Option<u32>>,
    /// See [`ConnectionFields::allow_plaintext_auth`].
    pub allow_plaintext_auth: Option<bool>,
    /// Usable by every tenant's sends (`operator` keys only).
    pub shared: Option<bool>,
}

impl super::RequestBody for ConnectionFields {
    type Xml = ConnectionFields;
}

impl super::RequestBody for ConnectionPatch {
    type Xml = ConnectionPatch;
}

/// A connection as the API shows it: everything but the password.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionView {
    pub name: String,
    /// The tenant that owns it.
    pub tenant: String,
    /// Usable by every tenant's sends (an operator decides).
    pub shared: bool,
    pub host: String,
    pub port: i32,
    pub security: Security,
    pub username: Option<String>,
    /// Whether a password is stored; the password itself is never returned.
    pub has_password: bool,
    pub default_from: Option<String>,
    pub max_connections: i32,
    pub max_rate_per_second: Option<i32>,
    /// AUTH may go over `security: none` to a host other than loopback.
    pub allow_plaintext_auth: bool,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// True only in the answer to a PATCH that changed `host`, `port` or `security`
    /// without a new `password`: the stored password was cleared, because it was
    /// stored for the old destination. Send `password` again to set it.
    #[serde(default)]
    pub password_cleared: bool,
    /// How the connection sends now: its limits after its server's throttling
    /// replies.
    pub throttle: ThrottleView,
}

/// Whether the connection is slowed down by its server's throttling replies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ThrottleState {
    /// Sending at its configured limits.
    Normal,
    /// Sending nothing new until `paused_until`, after a throttling reply.
    Paused,
    /// Sending at reduced limits, recovering a quarter per `smtp.throttle.recover_every`.
    Reduced,
}

/// A connection's limits in effect, across all workers.
#[derive(Debug, Clone, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ThrottleView {
    pub state: ThrottleState,
    /// Sessions open at once, all workers together, now.
    pub max_connections: u16,
    /// Messages per second now (`null`: no limit configured).
    pub max_rate_per_second: Option<f64>,
    /// The fraction of the configured limits in effect (1: whole).
    pub fraction: f64,
    pub paused_until: Option<DateTime<Utc>>,
    /// The last throttling reply from the server, if there ever was one.
    pub last_reply: Option<SmtpReply>,
    pub last_throttled_at: Option<DateTime<Utc>>,
    /// Throttling replies since the connection last sent at its whole limits.
    pub throttle_replies: i64,
}

impl ThrottleView {
    fn of(row: &ConnectionRow, throttle: Option<&Throttle>, state: &AppState) -> ThrottleView {
        let max_connections = u16::try_from(row.max_connections).unwrap_or(1);
        let rate = row
            .max_rate_per_second
            .and_then(|r| u32::try_from(r).ok())
            .filter(|r| *r > 0);
        let every = state.settings.smtp.throttle.recover_every;
        let now = Utc::now();
        let limits = match throttle {
            Some(t) => t.limits(max_connections, rate, now, every),
            None => crate::domain::Limits::full(max_connections, rate),
        };
        let recovered = throttle.is_none_or(|t| t.recovered(now, every));
        ThrottleView {
            state: match (limits.paused_until, recovered) {
                (Some(_), _) => ThrottleState::Paused,
                (None, false) => ThrottleState::Reduced,
                (None, true) => ThrottleState::Normal,
            },
            max_connections: limits.max_connections,
            max_rate_per_second: limits.max_rate_per_second,
            fraction: limits.fraction,
            paused_until: limits.paused_until,
            last_reply: throttle.map(|t| t.last_reply.clone()),
            last_throttled_at: throttle.map(|t| t.last_at),
            throttle_replies: throttle.filter(|_| !recovered).map_or(0, |t| t.replies),
        }
    }
}

impl ConnectionView {
    /// The view of a stored connection with its throttling state (`None`: never
    /// throttled).
    fn of(c: &ConnectionRow, throttle: Option<&Throttle>, state: &AppState) -> ConnectionView {
        ConnectionView {
            throttle: ThrottleView::of(c, throttle, state),
            name: c.name.clone(),
            tenant: c.tenant.clone(),
            shared: c.shared,
            host: c.host.clone(),
            port: c.port,
            security: c.security,
            username: c.username.clone(),
            has_password: c.password_enc.is_some(),
            default_from: c.default_from.clone(),
            max_connections: c.max_connections,
            max_rate_per_second: c.max_rate_per_second,
            allow_plaintext_auth: c.allow_plaintext_auth,
            created_at: c.created_at,
            updated_at: c.updated_at,
            password_cleared: false,
        }
    }

    /// The view of a stored connection, its throttling state read.
    async fn read(c: &ConnectionRow, state: &AppState) -> Result<ConnectionView, ApiError> {
        let throttle = state.store.throttle(&c.name).await?;
        Ok(ConnectionView::of(c, throttle.as_ref(), state))
    }
}

/// `POST /v1/connections`: 201 with `Location`.
#[utoipa::path(
    post,
    path = "/v1/connections",
    operation_id = "createConnection",
    tag = "connections",
    summary = "Store an SMTP connection",
    description = "Requires an API key with the **admin** scope.\n\n\
        The password is encrypted at rest and never returned. The connection belongs to \
        the key's tenant; names are unique across the deployment (a taken name is 409, \
        whoever's it is).",
    request_body(
        description = "The connection, as JSON or XML.",
        content(
            (ConnectionFields = "application/json"),
            (ConnectionFields = "application/xml")
        )
    ),
    responses(
        (status = 201, description = "Created.", body = ConnectionView,
            headers(("Location" = String, description = "`/v1/connections/{name}`"))),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 409, response = super::schemas::Conflict),
        (status = 408, response = super::schemas::RequestTimeout),
        (status = 413, response = super::schemas::PayloadTooLarge),
        (status = 415, response = super::schemas::UnsupportedMediaType),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn create(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Payload(fields, _): Payload<ConnectionFields>,
) -> Result<Response, ApiError> {
    if state.connections.configured_name() == Some(fields.name.as_str()) {
        return Err(ApiError::Conflict(format!(
            "the name {:?} is taken by the connection declared in configuration",
            fields.name
        )));
    }
    let connection = fields.parse().map_err(ApiError::invalid)?;
    let id = Uuid::now_v7();
    let sealed = seal(&state, id, connection.password.as_ref());
    let row = ConnectionRow::new(
        id,
        (principal.tenant_id, &principal.tenant),
        &connection,
        sealed,
    );
    if !state.store.insert_connection(&row).await? {
        return Err(ApiError::Conflict(format!(
            "the connection name {:?} is taken (names are unique across the deployment)",
            row.name
        )));
    }
    tracing::info!(connection = %row.name, host = %row.host, "connection created");
    let stored = load(&state, &principal, &row.name).await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/connections/{}", row.name)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((
        StatusCode::CREATED,
        headers,
        Json(ConnectionView::read(&stored, &state).await?),
    )
        .into_response())
}

/// The password encrypted for connection `id` (its id is bound into the ciphertext).
fn seal(state: &AppState, id: Uuid, password: Option<&SecretString>) -> Option<Vec<u8>> {
    password.map(|p| {
        state
            .connections
            .cipher()
            .encrypt(p.expose_secret().as_bytes(), id.as_bytes())
    })
}

/// `row` with `patch` applied, every field checked again as a whole. The flag is true
/// when the stored password was cleared because the connection now points elsewhere.
fn patched(
    state: &AppState,
    caller: &Principal,
    row: &ConnectionRow,
    patch: ConnectionPatch,
) -> Result<(ConnectionRow, bool), ApiError> {
    if patch.shared.is_some() && !caller.is_operator() {
        return Err(ApiError::Forbidden(
            "only an operator key can share a connection with every tenant".to_owned(),
        ));
    }
    let mut fields = row.fields();
    if let Some(host) = patch.host {
        fields.host = host;
    }
    if let Some(port) = patch.port {
        fields.port = port;
    }
    if let Some(security) = patch.security {
        fields.security = security;
    }
    if let Some(username) = patch.username {
        fields.username = username;
    }
    if let Some(default_from) = patch.default_from {
        fields.default_from = default_from;
    }
    if let Some(max) = patch.max_connections {
        fields.max_connections = Some(max);
    }
    if let Some(rate) = patch.max_rate_per_second {
        fields.max_rate_per_second = rate;
    }
    if let Some(allow) = patch.allow_plaintext_auth {
        fields.allow_plaintext_auth = allow;
    }
    let new_password = patch.password;
    if let Some(password) = &new_password {
        fields.password = password.clone();
    }
    let connection = fields.parse().map_err(ApiError::invalid)?;
    let destination = |host: &str, port: i32, security| (host.to_ascii_lowercase(), port, security);
    let moved = destination(&row.host, row.port, row.security)
        != destination(
            &connection.host,
            i32::from(connection.port),
            connection.security,
        );
    let (sealed, cleared) = match new_password {
        Some(_) => (seal(state, row.id, connection.password.as_ref()), false),
        // A password stored for one server is never sent to another: whoever can
        // change the host could otherwise read it off the wire there.
        None if moved && row.password_enc.is_some() => (None, true),
        None => (row.password_enc.clone(), false),
    };
    let mut updated = ConnectionRow::new(row.id, (row.tenant_id, &row.tenant), &connection, sealed);
    updated.shared = patch.shared.unwrap_or(row.shared);
    Ok((updated, cleared))
}

/// The stored connection `name` if the caller's tenant owns it (an operator: any).
/// Another tenant's is a 404, as if it did not exist.
async fn load(state: &AppState, caller: &Principal, name: &str) -> Result<ConnectionRow, ApiError> {
    // A name that cannot exist is not looked up.
    parse_connection_name(name).map_err(|_| ApiError::no_connection(name, None))?;
    state
        .store
        .get_connection(name)
        .await?
        .filter(|row| caller.sees().is_none_or(|t| t == row.tenant_id))
        .ok_or_else(|| ApiError::no_connection(name, None))
}

/// The connections, without passwords.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionList {
    pub connections: Vec<ConnectionView>,
}

/// `GET /v1/connections`.
#[utoipa::path(
    get,
    path = "/v1/connections",
    operation_id = "listConnections",
    tag = "connections",
    summary = "List the stored SMTP connections",
    description = "Requires an API key with the **admin** scope.\n\n\
        The key's tenant's connections (an `operator` key: every tenant's). Passwords \
        are never returned (`has_password` says whether one is stored).",
    responses(
        (status = 200, description = "The connections.", body = ConnectionList),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn list(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
) -> Result<Json<ConnectionList>, ApiError> {
    let rows = state.store.list_connections(caller.sees()).await?;
    let throttles: std::collections::HashMap<String, Throttle> =
        state.store.throttles().await?.into_iter().collect();
    Ok(Json(ConnectionList {
        connections: rows
            .iter()
            .map(|row| ConnectionView::of(row, throttles.get(&row.name), &state))
            .collect(),
    }))
}

/// `GET /v1/connections/{name}`.
#[utoipa::path(
    get,
    path = "/v1/connections/{name}",
    operation_id = "getConnection",
    tag = "connections",
    summary = "Look a stored SMTP connection up",
    description = "Requires an API key with the **admin** scope.\n\n\
        Another tenant's connection is 404 (an `operator` key sees every tenant's). \
        `throttle` says how it sends now: after a throttling reply from its server \
        (`421`/`432 4.3.2`, `450 4.2.1`, `421`/`451 4.7.x` \"too many\"/\"rate\") its \
        limits are halved and it pauses, then recovers a quarter per quiet period.",
    params((
        "name" = String,
        Path,
        description = "The connection's name: 1 to 64 letters, digits, `.`, `_` and `-`.",
        pattern = "^[A-Za-z0-9._-]{1,64}$"
    )),
    responses(
        (status = 200, description = "The connection.", body = ConnectionView),
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
    Path(name): Path<String>,
) -> Result<Json<ConnectionView>, ApiError> {
    let row = load(&state, &caller, &name).await?;
    Ok(Json(ConnectionView::read(&row, &state).await?))
}

/// `PATCH /v1/connections/{name}`.
#[utoipa::path(
    patch,
    path = "/v1/connections/{name}",
    operation_id = "updateConnection",
    tag = "connections",
    summary = "Change a stored SMTP connection",
    description = "Requires an API key with the **admin** scope.\n\n\
        Absent fields are kept; `null` clears an optional one. Another tenant's \
        connection is 404; `shared` needs an `operator` key (403 otherwise).",
    params((
        "name" = String,
        Path,
        description = "The connection's name: 1 to 64 letters, digits, `.`, `_` and `-`.",
        pattern = "^[A-Za-z0-9._-]{1,64}$"
    )),
    request_body(
        description = "The fields to change, as JSON or XML.",
        content(
            (ConnectionPatch = "application/json"),
            (ConnectionPatch = "application/xml")
        )
    ),
    responses(
        (status = 200, description = "The updated connection.", body = ConnectionView),
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
    Path(name): Path<String>,
    Payload(patch, _): Payload<ConnectionPatch>,
) -> Result<Json<ConnectionView>, ApiError> {
    let stored = load(&state, &caller, &name).await?;
    let (row, password_cleared) = patched(&state, &caller, &stored, patch)?;
    state.store.update_connection(&row).await?;
    state.connections.forget(&name);
    tracing::info!(connection = %name, password_cleared, shared = row.shared, "connection updated");
    let mut view = ConnectionView::read(&load(&state, &caller, &name).await?, &state).await?;
    view.password_cleared = password_cleared;
    Ok(Json(view))
}

/// `?force=true` deletes even with messages waiting.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct DeleteQuery {
    /// Delete even while messages wait to be sent through it (they will fail).
    #[serde(default)]
    #[param(default = false)]
    pub force: bool,
}

/// `DELETE /v1/connections/{name}`: 204; 409 while messages wait on it.
#[utoipa::path(
    delete,
    path = "/v1/connections/{name}",
    operation_id = "deleteConnection",
    tag = "connections",
    summary = "Delete a stored SMTP connection",
    description = "Requires an API key with the **admin** scope.\n\n\
        409 while messages wait to be sent through it, unless `force=true`. Another \
        tenant's connection is 404.",
    params((
        "name" = String,
        Path,
        description = "The connection's name: 1 to 64 letters, digits, `.`, `_` and `-`.",
        pattern = "^[A-Za-z0-9._-]{1,64}$"
    ), DeleteQuery),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, response = super::schemas::BadRequest),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 409, response = super::schemas::Conflict),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn delete(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
    super::Query(query): super::Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    parse_connection_name(&name).map_err(|_| ApiError::no_connection(&name, None))?;
    match state
        .store
        .delete_connection(&name, caller.sees(), query.force)
        .await?
    {
        DeleteConnection::Deleted => {
            state.connections.forget(&name);
            tracing::info!(connection = %name, force = query.force, "connection deleted");
            Ok(StatusCode::NO_CONTENT)
        }
        DeleteConnection::NotFound => Err(ApiError::no_connection(&name, None)),
        DeleteConnection::InUse(n) => Err(ApiError::Conflict(format!(
            "{n} message(s) still wait to be sent through {name:?}; add ?force=true to delete anyway (they will fail)"
        ))),
    }
}

/// `POST /v1/connections/{name}/verify`: connect, EHLO, STARTTLS or TLS, AUTH; report
/// what the server said at each step, or the step that failed.
#[utoipa::path(
    post,
    path = "/v1/connections/{name}/verify",
    operation_id = "verifyConnection",
    tag = "connections",
    summary = "Try a connection's session set-up",
    description = "Requires an API key with the **admin** scope.\n\n\
        Connects, says EHLO, upgrades with STARTTLS or TLS, authenticates, then QUIT; \
        reports what the server said at each step, or the step that failed. A failed \
        step is still a 200 with `ok: false`. The key's tenant's own connections (an \
        `operator` key: any, the configured one too); another tenant's is 404.",
    params((
        "name" = String,
        Path,
        description = "The connection's name: 1 to 64 letters, digits, `.`, `_` and `-`.",
        pattern = "^[A-Za-z0-9._-]{1,64}$"
    )),
    responses(
        (status = 200, description = "The steps.", body = crate::smtp::VerifyReport),
        (status = 401, response = super::schemas::Unauthorized),
        (status = 403, response = super::schemas::Forbidden),
        (status = 404, response = super::schemas::NotFound),
        (status = 503, response = super::schemas::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn verify(
    State(state): State<AppState>,
    Extension(caller): Extension<Principal>,
    Path(name): Path<String>,
) -> Result<Json<crate::smtp::VerifyReport>, ApiError> {
    parse_connection_name(&name).map_err(|_| ApiError::no_connection(&name, None))?;
    if !caller.is_operator() {
        // The tenant's own stored connections only: a shared one is usable, not the
        // tenant's to probe (nor is the configured one).
        load(&state, &caller, &name).await?;
    }
    let connection = state
        .connections
        .get(&name)
        .await?
        .ok_or_else(|| ApiError::no_connection(&name, None))?;
    Ok(Json(
        crate::smtp::verify(&connection, &state.settings.smtp).await,
    ))
}
