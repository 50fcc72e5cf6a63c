//! API key authentication and scopes. Health, readiness, metrics and the OpenAPI
//! document stay open; everything else needs a key (`Authorization: Bearer pw_...` or
//! `X-API-Key: pw_...`) with the route's scope.

use std::time::Duration;

use axum::extract::{Request, State};
use axum::http::header;
use axum::middleware::Next;
use axum::response::Response;

use super::{ApiError, AppState};
use crate::keys::{self, Principal, Scope};
use crate::store::{ApiKeyRow, Store};

/// Looked-up keys (found or not), reused for a short time so that a send does not pay
/// a key lookup. Revoking a key takes effect within `security.api_key_cache`. Bounded:
/// whoever sends random tokens chooses the cache keys, so the least used entries go
/// first beyond [`KEY_CACHE_CAPACITY`].
pub struct KeyCache {
    entries: Option<moka::sync::Cache<String, Option<ApiKeyRow>>>,
}

/// Keys remembered at most.
pub const KEY_CACHE_CAPACITY: u64 = 10_000;

impl KeyCache {
    pub fn new(ttl: Duration) -> KeyCache {
        KeyCache {
            entries: (!ttl.is_zero()).then(|| {
                moka::sync::Cache::builder()
                    .max_capacity(KEY_CACHE_CAPACITY)
                    .time_to_live(ttl)
                    .build()
            }),
        }
    }

    async fn find(&self, store: &Store, lookup: &str) -> Result<Option<ApiKeyRow>, ApiError> {
        if let Some(row) = self.entries.as_ref().and_then(|e| e.get(lookup)) {
            return Ok(row);
        }
        let row = store.find_api_key(lookup).await?;
        if let Some(entries) = &self.entries {
            entries.insert(lookup.to_owned(), row.clone());
            crate::metrics::cache_entries("api_keys", entries.entry_count());
        }
        Ok(row)
    }
}

/// Middleware for routes that need `send`.
pub async fn require_send(
    state: State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorize(state, Scope::Send, req, next).await
}

/// Middleware for routes that need `read`.
pub async fn require_read(
    state: State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorize(state, Scope::Read, req, next).await
}

/// Middleware for routes that need `admin`.
pub async fn require_admin(
    state: State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorize(state, Scope::Admin, req, next).await
}

/// Middleware for routes that need `operator`.
pub async fn require_operator(
    state: State<AppState>,
    req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    authorize(state, Scope::Operator, req, next).await
}

async fn authorize(
    State(state): State<AppState>,
    scope: Scope,
    mut req: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let presented = presented_key(&req).ok_or_else(|| {
        ApiError::Unauthorized("an API key is required (Authorization: Bearer pw_...)".to_owned())
    })?;
    let invalid = || ApiError::Unauthorized("the API key is not valid".to_owned());
    let (lookup, secret) = keys::split(&presented).ok_or_else(invalid)?;
    let row = state
        .keys
        .find(&state.store, lookup)
        .await?
        .filter(|row| keys::verify(row, secret))
        .ok_or_else(invalid)?;
    if row.revoked_at.is_some() {
        return Err(ApiError::Unauthorized(
            "the API key has been revoked".to_owned(),
        ));
    }
    let principal = keys::principal(&row);
    // Every later line of the request says whose it is.
    tracing::Span::current().record("tenant", principal.tenant.as_str());
    if principal.tenant_disabled {
        return Err(ApiError::Forbidden(format!(
            "the tenant {:?} of this API key is disabled",
            principal.tenant
        )));
    }
    if !principal.allows(scope) {
        return Err(ApiError::Forbidden(format!(
            "the API key {:?} lacks the {:?} scope",
            principal.name,
            scope.as_str()
        )));
    }
    req.extensions_mut().insert::<Principal>(principal);
    Ok(next.run(req).await)
}

fn presented_key(req: &Request) -> Option<String> {
    let headers = req.headers();
    if let Some(value) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        let (scheme, token) = value.trim().split_once(' ')?;
        return scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim().to_owned());
    }
    headers
        .get("x-api-key")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_owned())
}
