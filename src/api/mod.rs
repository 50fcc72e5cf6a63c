//! The HTTP API: one file per resource, one error type, JSON bodies.

mod auth;
pub mod connections;
pub mod email_message;
mod error;
mod health;
mod inflight;
pub mod messages;
mod negotiate;
mod openapi;
mod payload;
mod rate_limit;
pub mod schemas;
pub mod send;
pub mod server;
pub mod suppressions;
pub mod tenants;
pub mod webhooks;

pub use error::{ApiError, Problem};
pub use payload::{page_limit, rfc3339, Payload, Query, RequestBody};

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::middleware::from_fn_with_state;
use axum::routing::get;
use axum::{Extension, Router};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

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
    /// Per-tenant send rates.
    limits: Arc<rate_limit::TenantLimits>,
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
            limits: Arc::default(),
            body_budget: Arc::new(inflight::BodyBudget::new(
                settings.server.max_body_bytes_in_flight,
            )),
            store,
            publisher,
            connections,
            settings,
        }
    }

    /// Publishes the jobs of webhook deliveries a request wrote, off the request's
    /// path: a broker that is down must not hold the answer, and whatever fails here
    /// the reconciler publishes from PostgreSQL.
    pub fn announce_webhooks(&self, ids: Vec<uuid::Uuid>) {
        if ids.is_empty() {
            return;
        }
        let publisher = self.publisher.clone();
        tokio::spawn(async move { publisher.publish_webhooks(&ids).await });
    }
}

/// Health and metrics alone, for worker-only processes.
pub fn operations_router() -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/metrics", get(health::metrics))
}

/// The routes of one scope. Each handler is routed once, with its `#[utoipa::path]`:
/// the router and the OpenAPI document are both made from these.
fn send_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(send::send_email))
        .routes(routes!(send::send))
        .routes(routes!(send::send_batch))
        .routes(routes!(messages::cancel))
}

fn read_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(messages::list))
        .routes(routes!(messages::get))
        .routes(routes!(messages::events))
}

fn admin_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(connections::create, connections::list))
        .routes(routes!(
            connections::get,
            connections::update,
            connections::delete
        ))
        .routes(routes!(connections::verify))
        .routes(routes!(suppressions::list, suppressions::add))
        .routes(routes!(suppressions::delete))
        .routes(routes!(webhooks::create, webhooks::list))
        .routes(routes!(webhooks::get, webhooks::update, webhooks::delete))
        .routes(routes!(webhooks::rotate_secret))
        .routes(routes!(webhooks::attempts))
        .routes(routes!(webhooks::recover))
}

fn operator_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(tenants::list, tenants::create))
        .routes(routes!(tenants::get, tenants::update))
}

fn open_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(health::metrics))
        .routes(routes!(health::openapi_json))
}

/// The OpenAPI document of every route [`router`] serves.
pub fn document() -> utoipa::openapi::OpenApi {
    let mut paths = utoipa::openapi::OpenApi::default();
    for group in [
        send_routes(),
        read_routes(),
        admin_routes(),
        operator_routes(),
        open_routes(),
    ] {
        paths.merge(group.into_openapi());
    }
    openapi::document(paths)
}

/// Every route of the API, each group behind the scope it needs.
pub fn router(state: AppState) -> Router {
    let body_limit = state.settings.server.body_limit_bytes;
    let document = document()
        .to_json()
        .expect("the OpenAPI document serialises");
    let send = Router::from(send_routes())
        .route_layer(from_fn_with_state(state.clone(), inflight::read_body))
        .route_layer(from_fn_with_state(state.clone(), auth::require_send));
    let read = Router::from(read_routes())
        .route_layer(from_fn_with_state(state.clone(), auth::require_read));
    let admin = Router::from(admin_routes())
        .route_layer(from_fn_with_state(state.clone(), inflight::read_body))
        .route_layer(from_fn_with_state(state.clone(), auth::require_admin));
    let operator = Router::from(operator_routes())
        .route_layer(from_fn_with_state(state.clone(), inflight::read_body))
        .route_layer(from_fn_with_state(state.clone(), auth::require_operator));
    Router::new()
        .merge(send)
        .merge(read)
        .merge(admin)
        .merge(operator)
        .merge(Router::from(open_routes()))
        .nest_service("/ui", crate::console::router(state.clone()))
        .layer(Extension(health::OpenApiJson(document.into())))
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
                tracing::info_span!("http", method = %req.method(), path = %req.uri().path(), request_id, tenant = tracing::field::Empty)
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
