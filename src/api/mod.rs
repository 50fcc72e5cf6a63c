//! The HTTP API: one file per resource, one error type, JSON bodies.

mod auth;
pub mod connections;
pub mod email_message;
mod error;
mod health;
mod inflight;
pub mod messages;
mod negotiate;
pub mod openapi;
mod payload;
pub mod send;
pub mod server;

pub use error::{ApiError, Problem};
pub use payload::{Payload, Query, RequestBody};

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::{get, post};
use axum::Router;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;

use crate::accept::Acceptor;
use crate::config::Settings;
use crate::connections::Directory;
use crate::queue::Publisher;
use crate::store::Store;

/// Shared state of every handler.
#[derive(Clone)]
pub struct AppState {
    pub store: Store,
    pub publisher: Arc<Publisher>,
    /// The accept pipeline of the send endpoints.
    pub acceptor: Arc<Acceptor>,
    pub connections: Arc<Directory>,
    pub keys: Arc<auth::KeyCache>,
    /// Bytes of request bodies in flight, all requests together.
    body_budget: Arc<inflight::BodyBudget>,
    pub settings: Arc<Settings>,
}

impl AppState {
    pub fn new(
        store: Store,
        publisher: Arc<Publisher>,
        connections: Arc<Directory>,
        settings: Arc<Settings>,
    ) -> AppState {
        AppState {
            acceptor: Arc::new(Acceptor::new(
                store.clone(),
                publisher.clone(),
                connections.clone(),
                settings.clone(),
            )),
            keys: Arc::new(auth::KeyCache::new(settings.security.api_key_cache)),
            body_budget: Arc::new(inflight::BodyBudget::new(
                settings.server.max_body_bytes_in_flight,
            )),
            store,
            publisher,
            connections,
            settings,
        }
    }
}

/// Health and metrics alone, for worker-only processes.
pub fn operations_router() -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
}

/// Every `(method, path)` that [`router`] serves. Kept by hand next to the router;
/// `tests/openapi.rs` checks that the router serves each of them (and no other method
/// on their paths), that `router` declares no other, and that the OpenAPI document
/// has exactly these operations.
pub const ROUTES: &[(&str, &str)] = &[
    ("POST", "/SendEmail"),
    ("POST", "/v1/messages"),
    ("POST", "/v1/messages/batch"),
    ("POST", "/v1/messages/{id}/cancel"),
    ("GET", "/v1/messages"),
    ("GET", "/v1/messages/{id}"),
    ("GET", "/v1/messages/{id}/events"),
    ("POST", "/v1/connections"),
    ("GET", "/v1/connections"),
    ("GET", "/v1/connections/{name}"),
    ("PATCH", "/v1/connections/{name}"),
    ("DELETE", "/v1/connections/{name}"),
    ("POST", "/v1/connections/{name}/verify"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

/// Every route of the API, each group behind the scope it needs.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.server.body_limit_bytes;
    let send = Router::new()
        .route("/SendEmail", post(send::send))
        .route("/v1/messages", post(send::send))
        .route("/v1/messages/batch", post(send::send_batch))
        .route("/v1/messages/{id}/cancel", post(messages::cancel))
        .route_layer(from_fn_with_state(state.clone(), inflight::read_body))
        .route_layer(from_fn_with_state(state.clone(), auth::require_send));
    let read = Router::new()
        .route("/v1/messages", get(messages::list))
        .route("/v1/messages/{id}", get(messages::get))
        .route("/v1/messages/{id}/events", get(messages::events))
        .route_layer(from_fn_with_state(state.clone(), auth::require_read));
    let admin = Router::new()
        .route(
            "/v1/connections",
            post(connections::create).get(connections::list),
        )
        .route(
            "/v1/connections/{name}",
            get(connections::get)
                .patch(connections::update)
                .delete(connections::delete),
        )
        .route("/v1/connections/{name}/verify", post(connections::verify))
        .route_layer(from_fn_with_state(state.clone(), inflight::read_body))
        .route_layer(from_fn_with_state(state.clone(), auth::require_admin));
    Router::new()
        .merge(send)
        .merge(read)
        .merge(admin)
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/metrics", get(health::metrics))
        .route("/openapi.json", get(openapi::openapi_json))
        .layer(axum::middleware::from_fn(negotiate::xml_when_preferred))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(
            TraceLayer::new_for_http().make_span_with(|req: &axum::http::Request<_>| {
                let request_id = req
                    .headers()
                    .get("x-request-id")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id)
            }),
        )
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(axum::middleware::map_request(plain_request_id))
        .with_state(state)
}

/// Drops a client's `x-request-id` that is not a plain token of at most 64
/// characters, so that a fresh one is made: it goes into every log line of the
/// request and back into the response.
async fn plain_request_id(mut request: axum::extract::Request) -> axum::extract::Request {
    let plain = |v: &axum::http::HeaderValue| {
        v.len() <= 64
            && v.as_bytes()
                .iter()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(b))
    };
    if request
        .headers()
        .get("x-request-id")
        .is_some_and(|v| !plain(v))
    {
        request.headers_mut().remove("x-request-id");
    }
    request
}
