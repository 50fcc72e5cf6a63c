//! The operator's console: server-rendered HTML at `/ui`, served by every API
//! process (no separate server, no build step).
//!
//! Templates are askama's (`templates/`): compiled into the binary and checked at
//! build time (a typo in a field is a compile error, not a blank page in production),
//! and HTML-escaped by default, so whatever a producer put in a Subject or a header is
//! shown as text. CSS and one small JavaScript file (confirmation of actions) are
//! compiled in too and served from `/ui/static/`; no page has inline script or style,
//! so the Content-Security-Policy forbids both.
//!
//! Who may sign in: a key with `operator` (every tenant) or `admin` (its own tenant's
//! objects only, exactly as the JSON API scopes them). Sessions and CSRF: see
//! [`session`]. The pages call the JSON API's own handlers and store functions, so the
//! console can do nothing the API would refuse the same key.

mod broker;
mod connections;
mod dead_letters;
mod error;
mod messages;
mod overview;
mod session;
mod suppressions;
mod webhooks;

pub use error::ConsoleError;
pub use session::Session;

use std::sync::Arc;

use askama::Template;
use axum::extract::Request;
use axum::http::{header, HeaderValue};
use axum::middleware::{from_fn, from_fn_with_state, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;

use crate::api::AppState;

/// The console's policy: nothing inline, nothing from elsewhere, never framed; the
/// message preview (an iframe of our own origin) is the one frame.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'; \
     frame-src 'self'";

/// The state of the console's handlers: the API's, and its own broker connection
/// (queue depths and the dead-letter queue).
#[derive(Clone)]
pub struct ConsoleState {
    pub app: AppState,
    pub broker: Arc<broker::Broker>,
}

/// The page frame: who is signed in, the CSRF token of the forms, the active tab.
pub struct Chrome {
    pub who: String,
    pub tenant: String,
    pub operator: bool,
    pub csrf: String,
    pub nav: &'static str,
}

impl Chrome {
    pub fn of(session: &Session, nav: &'static str) -> Chrome {
        Chrome {
            who: session.principal.name.clone(),
            tenant: session.principal.tenant.clone(),
            operator: session.principal.is_operator(),
            csrf: session.csrf.clone(),
            nav,
        }
    }
}

/// Renders a template as an HTML response.
pub fn page<T: Template>(template: &T) -> Result<Response, ConsoleError> {
    let html = template
        .render()
        .map_err(|e| ConsoleError::Internal(anyhow::anyhow!("rendering a page: {e}")))?;
    Ok(Html(html).into_response())
}

/// A 303 to `to` (after a form post: reloading the page does not post again).
pub fn see_other(to: &str) -> Response {
    axum::response::Redirect::to(to).into_response()
}

/// A short text for a notice chosen by code (never text from the request, so a link
/// cannot make the console say anything).
pub fn notice(code: Option<&str>) -> Option<&'static str> {
    Some(match code? {
        "cancelled" => "The message was cancelled.",
        "retried" => "The message is due now and was queued for an attempt.",
        "saved" => "The limits were saved.",
        "added" => "The address was added to the suppression list.",
        "removed" => "The address was taken off the suppression list.",
        "recovered" => "Failed deliveries were made due again.",
        "requeued" => "The job was requeued.",
        "stale" => "The message was no longer failed, so it was not queued again; its dead letter was removed.",
        "discarded" => "The job was discarded.",
        "signed-out" => "You are signed out.",
        _ => return None,
    })
}

const CSS: &str = include_str!("static/console.css");
const JS: &str = include_str!("static/console.js");

async fn css() -> Response {
    static_file(CSS, "text/css; charset=utf-8")
}

async fn js() -> Response {
    static_file(JS, "text/javascript; charset=utf-8")
}

fn static_file(body: &'static str, content_type: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "public, max-age=3600"),
        ],
        body,
    )
        .into_response()
}

/// Security headers on every console answer (a handler that set its own CSP, the
/// message preview, keeps it).
async fn security_headers(req: Request, next: Next) -> Response {
    let mut response = next.run(req).await;
    let headers = response.headers_mut();
    headers
        .entry(header::CONTENT_SECURITY_POLICY)
        .or_insert(HeaderValue::from_static(CSP));
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers
        .entry(header::X_FRAME_OPTIONS)
        .or_insert(HeaderValue::from_static("DENY"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers
        .entry(header::CACHE_CONTROL)
        .or_insert(HeaderValue::from_static("no-store"));
    response
}

/// Every route of the console, relative to `/ui` where the API's router nests it
/// (`nest_service`: the console has its own state). Links and redirects are
/// absolute (`/ui/...`).
pub fn router(app: AppState) -> Router {
    let state = ConsoleState {
        broker: Arc::new(broker::Broker::new(&app.settings)),
        app,
    };
    let signed_in = Router::new()
        .route("/", get(overview::show))
        .route("/logout", post(session::sign_out))
        .route("/messages", get(messages::search))
        .route("/messages/{id}", get(messages::show))
        .route("/messages/{id}/preview", get(messages::preview))
        .route("/messages/{id}/cancel", post(messages::cancel))
        .route("/messages/{id}/retry", post(messages::retry))
        .route("/connections", get(connections::list))
        .route("/connections/{name}", get(connections::show))
        .route("/connections/{name}/verify", post(connections::verify))
        .route("/connections/{name}/limits", post(connections::limits))
        .route("/webhooks", get(webhooks::list))
        .route("/webhooks/{id}", get(webhooks::show))
        .route("/webhooks/{id}/recover", post(webhooks::recover))
        .route(
            "/suppressions",
            get(suppressions::list).post(suppressions::add),
        )
        .route("/suppressions/remove", post(suppressions::remove))
        .route("/dead-letters", get(dead_letters::list))
        .route("/dead-letters/requeue", post(dead_letters::requeue))
        .route("/dead-letters/discard", post(dead_letters::discard))
        .route_layer(from_fn_with_state(state.clone(), session::require));
    Router::new()
        .merge(signed_in)
        .route("/login", get(session::login_form).post(session::sign_in))
        .route("/static/console.css", get(css))
        .route("/static/console.js", get(js))
        .layer(from_fn(security_headers))
        .with_state(state)
}
