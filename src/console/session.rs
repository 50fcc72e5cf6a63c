//! Signing in and out, sessions and CSRF.
//!
//! Sign-in posts an API key (never echoed back). A key with `operator` or `admin`
//! scope gets a session: 32 random bytes in a cookie (`HttpOnly`, `SameSite=Strict`,
//! `Path=/ui`, `Secure` when the request came over TLS, as a TLS-terminating proxy
//! says with `X-Forwarded-Proto: https`). PostgreSQL keeps only the SHA-256 of the
//! token, so every API process knows every session and sign-out ends it everywhere.
//! Every request reads the key again: revoked, disabled or stripped of its scope, the
//! session is over at once (the API's key cache is not used here).
//!
//! CSRF: each session has its own random token, put in a hidden `csrf` field of every
//! form; a POST without the session's token is refused (403) before anything is done.
//! The sign-in form, which has no session yet, is covered by `SameSite=Strict`, the
//! CSP's `form-action 'self'` and the fact that it only ever signs in the key posted.

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use askama::Template;
use axum::extract::{FromRequest, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::Form;
use axum_extra::extract::cookie::{Cookie, CookieJar, SameSite};
use base64::Engine;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::{page, see_other, ConsoleError, ConsoleState};
use crate::keys::{self, Principal, Scope};

/// The session cookie's name.
pub const COOKIE: &str = "pw_console";

/// How long a session lasts after sign-in.
const SESSION_TTL: std::time::Duration = std::time::Duration::from_secs(12 * 3600);

/// The signed-in caller of a console request.
#[derive(Debug, Clone)]
pub struct Session {
    pub principal: Principal,
    pub csrf: String,
    token_hash: Vec<u8>,
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    OsRng.fill_bytes(&mut bytes);
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn hash(token: &str) -> Vec<u8> {
    Sha256::digest(token.as_bytes()).to_vec()
}

/// The session token the request's cookie carries.
fn cookie_token(headers: &HeaderMap) -> Option<String> {
    CookieJar::from_headers(headers)
        .get(COOKIE)
        .map(|c| c.value().to_owned())
        .filter(|v| !v.is_empty() && v.len() <= 64)
}

/// The session cookie: `Path=/ui` keeps it away from the API, `Secure` when the
/// request came over TLS.
fn session_cookie(value: String, secure: bool) -> Result<Cookie<'static>, ConsoleError> {
    let max_age = SESSION_TTL
        .try_into()
        .map_err(|e| ConsoleError::Internal(anyhow::anyhow!("session lifetime: {e}")))?;
    Ok(Cookie::build((COOKIE, value))
        .path("/ui")
        .http_only(true)
        .same_site(SameSite::Strict)
        .max_age(max_age)
        .secure(secure)
        .build())
}

/// Whether the console may be used by this key: `operator`, or `admin` of its tenant.
fn may_sign_in(principal: &Principal) -> bool {
    principal.is_operator() || principal.scopes.contains(&Scope::Admin)
}

/// The session of a request, if it has a live one whose key is still good.
async fn current(
    state: &ConsoleState,
    headers: &HeaderMap,
) -> Result<Option<Session>, ConsoleError> {
    let Some(token) = cookie_token(headers) else {
        return Ok(None);
    };
    let token_hash = hash(&token);
    let store = &state.app.store;
    let Some(session) = store.console_session(&token_hash).await? else {
        return Ok(None);
    };
    let Some(row) = store.find_api_key(&session.key_lookup).await? else {
        return Ok(None);
    };
    if row.id != session.key_id || row.revoked_at.is_some() {
        return Ok(None);
    }
    let principal = keys::principal(&row);
    if principal.tenant_disabled || !may_sign_in(&principal) {
        return Ok(None);
    }
    Ok(Some(Session {
        principal,
        csrf: session.csrf,
        token_hash,
    }))
}

/// Middleware of every signed-in page: no live session, to the sign-in page (a GET)
/// or 403 (a POST).
pub async fn require(
    State(state): State<ConsoleState>,
    mut req: Request,
    next: Next,
) -> Result<Response, ConsoleError> {
    match current(&state, req.headers()).await? {
        Some(session) => {
            tracing::Span::current().record("tenant", session.principal.tenant.as_str());
            req.extensions_mut().insert(session);
            Ok(next.run(req).await)
        }
        None if req.method() == axum::http::Method::GET => Ok(see_other("/ui/login")),
        None => Err(ConsoleError::Forbidden(
            "your session has ended: sign in again".to_owned(),
        )),
    }
}

impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Session {
    type Rejection = ConsoleError;

    async fn from_request_parts(
        parts: &mut axum::http::request::Parts,
        _: &S,
    ) -> Result<Self, Self::Rejection> {
        parts
            .extensions
            .get::<Session>()
            .cloned()
            .ok_or_else(|| ConsoleError::Forbidden("not signed in".to_owned()))
    }
}

/// A form posted with the session's CSRF token (checked in constant time), and the
/// session. Any other POST is refused with 403 before its handler runs.
pub struct Checked<T> {
    pub session: Session,
    pub form: T,
}

#[derive(Deserialize)]
struct CsrfField {
    #[serde(default)]
    csrf: String,
}

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Checked<T> {
    type Rejection = ConsoleError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        let session = req
            .extensions()
            .get::<Session>()
            .cloned()
            .ok_or_else(|| ConsoleError::Forbidden("not signed in".to_owned()))?;
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ConsoleError::BadRequest(e.body_text()))?;
        let token: CsrfField = serde_urlencoded::from_bytes(&bytes)
            .map_err(|_| ConsoleError::Forbidden("the form has no CSRF token".to_owned()))?;
        let good: bool = token.csrf.as_bytes().ct_eq(session.csrf.as_bytes()).into();
        if !good {
            return Err(ConsoleError::Forbidden(
                "the form's CSRF token is not this session's: reload the page".to_owned(),
            ));
        }
        let form = serde_urlencoded::from_bytes(&bytes)
            .map_err(|e| ConsoleError::BadRequest(format!("the form is incomplete: {e}")))?;
        Ok(Checked { session, form })
    }
}

#[derive(Template)]
#[template(path = "login.html")]
struct LoginPage {
    error: Option<&'static str>,
    notice: Option<&'static str>,
}

#[derive(Deserialize)]
pub struct LoginQuery {
    done: Option<String>,
}

/// `GET /ui/login`.
pub async fn login_form(
    axum::extract::Query(q): axum::extract::Query<LoginQuery>,
) -> Result<Response, ConsoleError> {
    page(&LoginPage {
        error: None,
        notice: super::notice(q.done.as_deref()),
    })
}

#[derive(Deserialize)]
pub struct LoginForm {
    #[serde(default)]
    api_key: String,
}

fn refused(error: &'static str) -> Result<Response, ConsoleError> {
    let mut response = page(&LoginPage {
        error: Some(error),
        notice: None,
    })?;
    *response.status_mut() = StatusCode::UNAUTHORIZED;
    Ok(response)
}

/// `POST /ui/login`: the key's checks are the API's (shape, hash, revocation, tenant,
/// scope); one message for every refusal of an unknown key, so the page tells nothing
/// about which keys exist.
pub async fn sign_in(
    State(state): State<ConsoleState>,
    jar: CookieJar,
    headers: HeaderMap,
    Form(form): Form<LoginForm>,
) -> Result<Response, ConsoleError> {
    let presented = form.api_key.trim();
    let Some((lookup, secret)) = keys::split(presented) else {
        return refused("That is not a valid API key.");
    };
    let Some(row) = state
        .app
        .store
        .find_api_key(lookup)
        .await?
        .filter(|row| keys::verify(row, secret) && row.revoked_at.is_none())
    else {
        return refused("That is not a valid API key.");
    };
    let principal = keys::principal(&row);
    if principal.tenant_disabled {
        return refused("The tenant of this key is disabled.");
    }
    if !may_sign_in(&principal) {
        return refused("This key has neither the operator nor the admin scope.");
    }
    let token = random_token();
    let csrf = random_token();
    state
        .app
        .store
        .insert_console_session(&hash(&token), row.id, &row.lookup, &csrf, SESSION_TTL)
        .await?;
    tracing::info!(key = %principal.name, tenant = %principal.tenant, "console sign-in");
    let secure = headers
        .get("x-forwarded-proto")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').next().unwrap_or("").trim() == "https");
    Ok((jar.add(session_cookie(token, secure)?), see_other("/ui")).into_response())
}

#[derive(Deserialize)]
pub struct Empty {}

/// `POST /ui/logout`: the session is deleted and the cookie cleared.
pub async fn sign_out(
    State(state): State<ConsoleState>,
    jar: CookieJar,
    checked: Checked<Empty>,
) -> Result<Response, ConsoleError> {
    state
        .app
        .store
        .delete_console_session(&checked.session.token_hash)
        .await?;
    // The same name and path, emptied and expired.
    let cleared = jar.remove(session_cookie(String::new(), false)?);
    Ok((cleared, see_other("/ui/login?done=signed-out")).into_response())
}
