//! SMTP connections (the connector's "connection"): stored once, reused by every
//! sender. The password is write-only: encrypted at rest, never returned.

use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, Serialize};
use uuid::Uuid;

use super::{ApiError, AppState, Payload};
use crate::connections::security_str;
use crate::domain::{parse_connection_name, plaintext_auth_refusal, FieldError, Mailbox, Security};
use crate::store::{ConnectionRow, DeleteConnection};

/// `POST /v1/connections` body.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "relay",
    "host": "smtp.example.com",
    "port": 587,
    "security": "starttls",
    "username": "postwire",
    "password": "secret",
    "default_from": "Postwire <noreply@example.com>"
}))]
pub struct NewConnection {
    /// 1 to 64 letters, digits, `.`, `_` and `-`.
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// Host name or IP address.
    #[schema(min_length = 1, max_length = 253, pattern = "^[A-Za-z0-9.:\\[\\]-]+$")]
    pub host: String,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    pub security: Security,
    /// Text without control characters. Absent, `null` or `""`: no AUTH.
    #[schema(
        pattern = "^[^\\x00-\\x08\\x0A-\\x1F\\x7F-\\x9F\\u00AD\\u180E\\u200B-\\u200F\\u202A-\\u202E\\u2060-\\u2064\\u2066-\\u2069\\uFEFF]*$"
    )]
    pub username: Option<String>,
    /// Write-only: encrypted at rest, never returned. Absent, `null` or `""`: none.
    #[schema(write_only)]
    pub password: Option<String>,
    /// The sender used when a send has no `From`.
    pub default_from: Option<String>,
    /// Simultaneous SMTP sessions per worker process, 1 to 1000; default 8.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_connections: Option<u16>,
    /// Messages per second per worker process, at least 1; `null` or absent for no
    /// limit.
    #[schema(minimum = 1)]
    pub max_rate_per_second: Option<u32>,
    /// Allow AUTH over `security: none` to a host other than loopback (the password
    /// then crosses the network in clear text). Default false.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
}

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
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, pattern = "^[^\\x00-\\x08\\x0A-\\x1F\\x7F-\\x9F\\u00AD\\u180E\\u200B-\\u200F\\u202A-\\u202E\\u2060-\\u2064\\u2066-\\u2069\\uFEFF]*$")]
    pub username: Option<Option<String>>,
    /// Write-only; `null` or `""` removes it. A PATCH that changes `host`, `port` or
    /// `security` without a new password clears the stored one (the answer says
    /// `password_cleared`): stored credentials only ever go where they were stored for.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>, write_only)]
    pub password: Option<Option<String>>,
    /// `null` removes it.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<String>)]
    pub default_from: Option<Option<String>>,
    /// 1 to 1000.
    #[schema(minimum = 1, maximum = 1000)]
    pub max_connections: Option<u16>,
    /// At least 1; `null` for no limit.
    #[serde(default, deserialize_with = "present")]
    #[schema(value_type = Option<u32>, minimum = 1)]
    pub max_rate_per_second: Option<Option<u32>>,
    /// See [`NewConnection::allow_plaintext_auth`].
    pub allow_plaintext_auth: Option<bool>,
}

impl super::RequestBody for NewConnection {
    type Xml = NewConnection;
}

impl super::RequestBody for ConnectionPatch {
    type Xml = ConnectionPatch;
}

/// Distinguishes a field sent as `null` (`Some(None)`) from an absent one (`None`).
fn present<'de, D, T>(d: D) -> Result<Option<Option<T>>, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de>,
{
    Option::<T>::deserialize(d).map(Some)
}

/// A connection as the API shows it: everything but the password.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct ConnectionView {
    pub name: String,
    pub host: String,
    pub port: i32,
    #[schema(value_type = Security)]
    pub security: String,
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
}

impl From<&ConnectionRow> for ConnectionView {
    fn from(c: &ConnectionRow) -> ConnectionView {
        ConnectionView {
            name: c.name.clone(),
            host: c.host.clone(),
            port: c.port,
            security: c.security.clone(),
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
}

/// `POST /v1/connections`: 201 with `Location`.
#[utoipa::path(
    post,
    path = "/v1/connections",
    operation_id = "createConnection",
    tag = "connections",
    summary = "Store an SMTP connection",
    description = "Requires an API key with the **admin** scope.\n\n\
        The password is encrypted at rest and never returned.",
    request_body(
        description = "The connection, as JSON or XML.",
        content(
            (NewConnection = "application/json"),
            (NewConnection = "application/xml")
        )
    ),
    responses(
        (status = 201, description = "Created.", body = ConnectionView,
            headers(("Location" = String, description = "`/v1/connections/{name}`"))),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 409, response = super::openapi::Conflict),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn create(
    State(state): State<AppState>,
    Payload(new, _): Payload<NewConnection>,
) -> Result<Response, ApiError> {
    let mut errors = Vec::new();
    let name = parse_connection_name(&new.name)
        .map_err(|e| errors.push(FieldError::new("name", e)))
        .unwrap_or_default();
    if state.connections.configured_name() == Some(name.as_str()) {
        return Err(ApiError::Conflict(format!(
            "the name {name:?} is taken by the connection declared in configuration"
        )));
    }
    let mut row = ConnectionRow {
        id: Uuid::now_v7(),
        name,
        host: String::new(),
        port: 0,
        security: String::new(),
        username: None,
        password_enc: None,
        default_from: None,
        max_connections: 8,
        max_rate_per_second: None,
        allow_plaintext_auth: false,
        created_at: Utc::now(),
        updated_at: Utc::now(),
    };
    let patch = ConnectionPatch {
        host: Some(new.host),
        port: Some(new.port),
        security: Some(new.security),
        username: Some(new.username),
        password: Some(new.password),
        default_from: Some(new.default_from),
        max_connections: Some(new.max_connections.unwrap_or(8)),
        max_rate_per_second: Some(new.max_rate_per_second),
        allow_plaintext_auth: Some(new.allow_plaintext_auth),
    };
    apply(&state, &mut row, patch, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Invalid {
            status: StatusCode::BAD_REQUEST,
            errors,
        });
    }
    if !state.store.insert_connection(&row).await? {
        return Err(ApiError::Conflict(format!(
            "a connection named {:?} already exists",
            row.name
        )));
    }
    tracing::info!(connection = %row.name, host = %row.host, "connection created");
    let stored = load(&state, &row.name).await?;
    let mut headers = HeaderMap::new();
    if let Ok(location) = HeaderValue::from_str(&format!("/v1/connections/{}", row.name)) {
        headers.insert(header::LOCATION, location);
    }
    Ok((
        StatusCode::CREATED,
        headers,
        Json(ConnectionView::from(&stored)),
    )
        .into_response())
}

/// Validates a patch into `row`, encrypting a new password.
/// Applies a patch (or a new connection, as a patch of an empty row), collecting
/// every invalid field. Returns true when the stored password was cleared because
/// the connection now points elsewhere.
fn apply(
    state: &AppState,
    row: &mut ConnectionRow,
    patch: ConnectionPatch,
    errors: &mut Vec<FieldError>,
) -> bool {
    let destination = (
        row.host.to_ascii_lowercase(),
        row.port,
        row.security.clone(),
    );
    if let Some(host) = patch.host {
        let ok = !host.is_empty()
            && host.len() <= 253
            && host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
        if ok {
            row.host = host;
        } else {
            errors.push(FieldError::new(
                "host",
                format!("{host:?} is not a host name or IP address"),
            ));
        }
    }
    if let Some(port) = patch.port {
        if port == 0 {
            errors.push(FieldError::new("port", "must be 1 to 65535"));
        }
        row.port = i32::from(port);
    }
    if let Some(security) = patch.security {
        row.security = security_str(security).to_owned();
    }
    // Forms send empty strings for fields left blank: no user name, no password.
    let blank_is_none = |v: Option<String>| v.filter(|v| !v.is_empty());
    if let Some(username) = patch.username.map(blank_is_none) {
        if let Some(u) = &username {
            if crate::domain::check_header_text_max(u, 255).is_err() {
                errors.push(FieldError::new(
                    "username",
                    "must be at most 255 bytes of text without control characters",
                ));
            }
        }
        row.username = username;
    }
    let moved = (
        row.host.to_ascii_lowercase(),
        row.port,
        row.security.clone(),
    ) != destination;
    let mut cleared = false;
    match patch.password.map(blank_is_none) {
        Some(password) => {
            if password.as_ref().is_some_and(|p| p.len() > 1024) {
                errors.push(FieldError::new("password", "must be at most 1024 bytes"));
            }
            row.password_enc = password.map(|p| {
                state
                    .connections
                    .cipher()
                    .encrypt(p.as_bytes(), row.id.as_bytes())
            });
        }
        // A password stored for one server is never sent to another: whoever can
        // change the host could otherwise read it off the wire there.
        None if moved && row.password_enc.is_some() => {
            row.password_enc = None;
            cleared = true;
        }
        None => {}
    }
    if let Some(default_from) = patch.default_from {
        row.default_from = match default_from.filter(|f| !f.trim().is_empty()) {
            Some(f) => match Mailbox::parse(&f) {
                Ok(m) => Some(m.to_display()),
                Err(e) => {
                    errors.push(FieldError::new("default_from", e));
                    None
                }
            },
            None => None,
        };
    }
    if let Some(max) = patch.max_connections {
        if !(1..=1000).contains(&max) {
            errors.push(FieldError::new("max_connections", "must be 1 to 1000"));
        }
        row.max_connections = i32::from(max);
    }
    if let Some(rate) = patch.max_rate_per_second {
        if rate == Some(0) {
            errors.push(FieldError::new(
                "max_rate_per_second",
                "must be at least 1 (or null for no limit)",
            ));
        }
        row.max_rate_per_second = rate.map(|r| i32::try_from(r).unwrap_or(i32::MAX));
    }
    if let Some(allow) = patch.allow_plaintext_auth {
        row.allow_plaintext_auth = allow;
    }
    if let Ok(security) = crate::connections::parse_security(&row.security) {
        if let Some(refusal) = plaintext_auth_refusal(
            security,
            &row.host,
            row.username.is_some(),
            row.allow_plaintext_auth,
        ) {
            errors.push(FieldError::new("security", refusal));
        }
    }
    cleared
}

async fn load(state: &AppState, name: &str) -> Result<ConnectionRow, ApiError> {
    // A name that cannot exist is not looked up.
    parse_connection_name(name).map_err(|_| ApiError::no_connection(name, None))?;
    state
        .store
        .get_connection(name)
        .await?
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
        Passwords are never returned (`has_password` says whether one is stored).",
    responses(
        (status = 200, description = "The connections.", body = ConnectionList),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn list(State(state): State<AppState>) -> Result<Json<ConnectionList>, ApiError> {
    let rows = state.store.list_connections().await?;
    Ok(Json(ConnectionList {
        connections: rows.iter().map(ConnectionView::from).collect(),
    }))
}

/// `GET /v1/connections/{name}`.
#[utoipa::path(
    get,
    path = "/v1/connections/{name}",
    operation_id = "getConnection",
    tag = "connections",
    summary = "Look a stored SMTP connection up",
    description = "Requires an API key with the **admin** scope.",
    params((
        "name" = String,
        Path,
        description = "The connection's name: 1 to 64 letters, digits, `.`, `_` and `-`.",
        pattern = "^[A-Za-z0-9._-]{1,64}$"
    )),
    responses(
        (status = 200, description = "The connection.", body = ConnectionView),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn get(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<ConnectionView>, ApiError> {
    Ok(Json(ConnectionView::from(&load(&state, &name).await?)))
}

/// `PATCH /v1/connections/{name}`.
#[utoipa::path(
    patch,
    path = "/v1/connections/{name}",
    operation_id = "updateConnection",
    tag = "connections",
    summary = "Change a stored SMTP connection",
    description = "Requires an API key with the **admin** scope.\n\n\
        Absent fields are kept; `null` clears an optional one.",
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
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
        (status = 408, response = super::openapi::RequestTimeout),
        (status = 413, response = super::openapi::PayloadTooLarge),
        (status = 415, response = super::openapi::UnsupportedMediaType),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn update(
    State(state): State<AppState>,
    Path(name): Path<String>,
    Payload(patch, _): Payload<ConnectionPatch>,
) -> Result<Json<ConnectionView>, ApiError> {
    let mut row = load(&state, &name).await?;
    let mut errors = Vec::new();
    let password_cleared = apply(&state, &mut row, patch, &mut errors);
    if !errors.is_empty() {
        return Err(ApiError::Invalid {
            status: StatusCode::BAD_REQUEST,
            errors,
        });
    }
    state.store.update_connection(&row).await?;
    state.connections.forget(&name);
    tracing::info!(connection = %name, password_cleared, "connection updated");
    let mut view = ConnectionView::from(&load(&state, &name).await?);
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
        409 while messages wait to be sent through it, unless `force=true`.",
    params((
        "name" = String,
        Path,
        description = "The connection's name: 1 to 64 letters, digits, `.`, `_` and `-`.",
        pattern = "^[A-Za-z0-9._-]{1,64}$"
    ), DeleteQuery),
    responses(
        (status = 204, description = "Deleted."),
        (status = 400, response = super::openapi::BadRequest),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
        (status = 409, response = super::openapi::Conflict),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn delete(
    State(state): State<AppState>,
    Path(name): Path<String>,
    super::Query(query): super::Query<DeleteQuery>,
) -> Result<StatusCode, ApiError> {
    parse_connection_name(&name).map_err(|_| ApiError::no_connection(&name, None))?;
    match state
        .store
        .delete_connection(&name, query.force)
        .await
        ?
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
        step is still a 200 with `ok: false`.",
    params((
        "name" = String,
        Path,
        description = "The connection's name: 1 to 64 letters, digits, `.`, `_` and `-`.",
        pattern = "^[A-Za-z0-9._-]{1,64}$"
    )),
    responses(
        (status = 200, description = "The steps.", body = crate::smtp::VerifyReport),
        (status = 401, response = super::openapi::Unauthorized),
        (status = 403, response = super::openapi::Forbidden),
        (status = 404, response = super::openapi::NotFound),
        (status = 503, response = super::openapi::Unavailable),
    ),
    security(("bearer" = ["admin"]), ("apiKey" = ["admin"]))
)]
pub async fn verify(
    State(state): State<AppState>,
    Path(name): Path<String>,
) -> Result<Json<crate::smtp::VerifyReport>, ApiError> {
    parse_connection_name(&name).map_err(|_| ApiError::no_connection(&name, None))?;
    let connection = state
        .connections
        .get(&name)
        .await?
        .ok_or_else(|| ApiError::no_connection(&name, None))?;
    Ok(Json(
        crate::smtp::verify(&connection, &state.settings.smtp).await,
    ))
}
