//! Schemas and responses of the OpenAPI document that no handler's type carries by
//! itself: answers built with `json!`, the error responses (RFC 7807, shared by every
//! operation), headers and XML shapes.

use serde::Serialize;
use utoipa::{IntoParams, ToResponse, ToSchema};
use uuid::Uuid;

use super::Problem;
use crate::domain::Status;

/// The media type of every error response.
pub const PROBLEM_JSON: &str = "application/problem+json";

/// The `Idempotency-Key` header of the send operations.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyKey {
    /// Makes the send safe to retry: a repeat with the same key and body (by the same
    /// API key, within `idempotency.ttl`) answers the original 202 with
    /// `Idempotent-Replayed: true` and accepts nothing new; the same key with another
    /// body answers 422. 1 to 255 printable ASCII characters.
    #[param(
        rename = "Idempotency-Key",
        value_type = String,
        required = false,
        min_length = 1,
        max_length = 255,
        pattern = "^[\\x20-\\x7E]{1,255}$",
        example = "order-1234-confirmation"
    )]
    key: Option<String>,
}

/// `202` of a send: `{"id", "status": "queued"}`.
#[derive(Serialize, ToSchema)]
pub struct AcceptedMessage {
    /// Look the message up at `/v1/messages/{id}`.
    pub id: Uuid,
    /// Always `queued`.
    pub status: Status,
}

/// `202` of a batch: the messages in request order.
#[derive(Serialize, ToSchema)]
pub struct BatchAccepted {
    pub messages: Vec<AcceptedMessage>,
}

/// `200` of a cancel: `{"id", "status": "cancelled"}`.
#[derive(Serialize, ToSchema)]
pub struct CancelledMessage {
    pub id: Uuid,
    /// Always `cancelled`.
    pub status: Status,
}

/// What happened to a message (the `type` of an event).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum EventType {
    Accepted,
    Attempt,
    Deferred,
    Sent,
    Failed,
    Cancelled,
    Expired,
    /// Failed without an attempt: every recipient is on the suppression list.
    Suppressed,
    /// Failed, then queued again by an operator from the dead-letter queue.
    Requeued,
}

/// How an attachment's `ContentData` is encoded; any case is accepted.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ContentTransferEncoding {
    /// Base64, possibly wrapped in lines.
    Base64,
    /// The literal content.
    None,
}

/// A custom header in XML: `<Header name="X-Campaign">spring</Header>` (the value is
/// the element's text).
#[derive(Serialize, ToSchema)]
#[schema(xml(name = "Header"))]
pub struct HeaderXml {
    /// The `name` attribute: the header name (`X-` and letters, digits and `-`).
    #[schema(xml(attribute), pattern = "^[Xx]-[A-Za-z0-9-]{1,74}$")]
    pub name: String,
    /// The element's text: the header value (at most 4000 bytes).
    #[schema(
        max_length = 4000,
        pattern = "^[^\\x00-\\x08\\x0A-\\x1F\\x7F-\\x9F\\u00AD\\u180E\\u200B-\\u200F\\u202A-\\u202E\\u2060-\\u2064\\u2066-\\u2069\\uFEFF]*$"
    )]
    pub value: String,
}

/// Text that may go into a header: no control characters but tab, no zero-width or
/// bidirectional-override characters (as `domain::check_header_text` checks).
pub const HEADER_TEXT: &str = r"^[^\x00-\x08\x0A-\x1F\x7F-\x9F\u00AD\u180E\u200B-\u200F\u202A-\u202E\u2060-\u2064\u2066-\u2069\uFEFF]*$";

/// The schema of `EmailMessage.Headers`: `X-` names, header-safe values.
pub fn custom_headers() -> utoipa::openapi::Object {
    use utoipa::openapi::schema::{ObjectBuilder, SchemaType, Type};
    ObjectBuilder::new()
        .schema_type(SchemaType::from_iter([Type::Object, Type::Null]))
        .description(Some(
            "Extension: custom headers (at most 50), name to value. Names are `X-` and \
             letters, digits and `-` (at most 76 characters); values are header-safe text \
             of at most 4000 bytes, folded when long.",
        ))
        .property_names(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .pattern(Some("^[Xx]-[A-Za-z0-9-]{1,74}$")),
        ))
        .additional_properties(Some(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(4000))
                .pattern(Some(HEADER_TEXT)),
        ))
        .max_properties(Some(50))
        .examples([serde_json::json!({"X-Campaign": "spring"})])
        .build()
}

/// A metadata entry in XML: `<Item name="order">1234</Item>` (the value is the
/// element's text).
#[derive(Serialize, ToSchema)]
#[schema(xml(name = "Item"))]
pub struct MetadataItemXml {
    /// The `name` attribute: the key.
    #[schema(xml(attribute))]
    pub name: String,
    /// The element's text: the value.
    pub value: String,
}

/// `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Always `ok`.
    #[schema(example = "ok")]
    pub status: String,
}

/// `GET /readyz`.
#[derive(Serialize, ToSchema)]
pub struct Readiness {
    /// `ready` or `not ready`.
    #[schema(example = "ready")]
    pub status: String,
    pub checks: ReadinessChecks,
}

/// Each dependency's state.
#[derive(Serialize, ToSchema)]
pub struct ReadinessChecks {
    pub postgres: CheckState,
    pub rabbitmq: CheckState,
}

/// A dependency's state.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum CheckState {
    Ok,
    Unreachable,
}

macro_rules! problem_response {
    ($name:ident, $description:literal) => {
        #[doc = $description]
        #[derive(ToResponse)]
        #[response(description = $description, content_type = PROBLEM_JSON)]
        #[allow(dead_code)]
        pub struct $name(Problem);
    };
}

problem_response!(
    BadRequest,
    "Invalid request (`validation`: `errors` names each invalid field) or malformed body (`malformed`)."
);
problem_response!(
    Unauthorized,
    "No valid API key (missing, unknown or revoked); `WWW-Authenticate: Bearer` is set."
);
problem_response!(
    Forbidden,
    "The API key lacks the scope this operation needs, or its tenant is disabled."
);
problem_response!(
    NotFound,
    "No such message or connection, or one of another tenant (ids and names of other tenants are never confirmed). A send naming an unknown `connection` names the field."
);
problem_response!(
    TooManyRequests,
    "The tenant is over its `max_rate_per_second` (`rate-limited`, counted per API process); nothing was accepted. Retry after `Retry-After` seconds."
);
problem_response!(Conflict, "The request conflicts with the resource's state.");
problem_response!(
    PayloadTooLarge,
    "Over a size limit: the body (`server.body_limit_bytes`), the message, an attachment, the number of attachments or of batch messages."
);
problem_response!(
    UnsupportedMediaType,
    "The body is not `application/json` or `application/xml` (`+json`, `+xml` and `text/xml` are accepted too)."
);
problem_response!(
    IdempotencyKeyReused,
    "The `Idempotency-Key` was already used with a different request body."
);
problem_response!(
    Unavailable,
    "Nothing was accepted; retry after `Retry-After`. The database is unreachable (`unavailable`), or this API process is at its limit of open connections or of request body bytes in flight (`busy`, `Retry-After: 1`)."
);
problem_response!(
    RequestTimeout,
    "The request body did not arrive within `server.body_read_timeout` (`timeout`); the connection is closed."
);
