//! The OpenAPI document, generated from the handlers' `#[utoipa::path]` annotations and
//! the request and response types' `ToSchema` derives; served at `GET /openapi.json`.
//!
//! What the code cannot say by itself lives here: the answers built with `json!`, the
//! error responses (RFC 7807, shared by every operation), the security schemes and the
//! alias `POST /SendEmail`. `tests/openapi.rs` checks the document against
//! [`ROUTES`](super::ROUTES) and against the running router.

use std::sync::OnceLock;

use axum::http::header;
use axum::response::IntoResponse;
use serde::Serialize;
use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{IntoParams, Modify, OpenApi, ToResponse, ToSchema};
use uuid::Uuid;

use super::connections::{ConnectionList, ConnectionPatch, ConnectionView, NewConnection};
use super::email_message::{EmailAttachment, EmailMessage, EmailMessageXml};
use super::messages::{EventView, EventsView, ListView, MessageView, SummaryView};
use super::send::{BatchRequest, BatchXml};
use super::Problem;
use crate::domain::{FieldError, Importance, RecipientResult, Security, SmtpReply, Status};
use crate::keys::Scope;
use crate::smtp::{VerifyReport, VerifyStep};

/// The media type of every error response.
pub const PROBLEM_JSON: &str = "application/problem+json";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "postwire",
        description = "A queue-backed SMTP delivery service. Producers post mail with the \
            SMTP connector's *Send Email* contract and get `202 Accepted` with a message id \
            once the message is committed; workers deliver it; anyone with a key can look \
            it up by id.\n\n\
            **Authentication**: every operation except `/healthz`, `/readyz`, `/metrics` \
            and `/openapi.json` needs an API key, as `Authorization: Bearer pw_...` or \
            `X-API-Key: pw_...`, with the scope the operation names (`send`, `read` or \
            `admin`): 401 without a valid key, 403 without the scope.\n\n\
            **Errors** are RFC 7807 `application/problem+json` with `errors: [{field, \
            message}]` naming each invalid field.\n\n\
            **XML**: request bodies may be `application/xml` (or `text/xml`); responses are \
            XML (`application/xml`, `application/problem+xml`) when `Accept` prefers XML \
            to JSON."
    ),
    paths(
        send_email,
        super::send::send,
        super::send::send_batch,
        super::messages::list,
        super::messages::get,
        super::messages::events,
        super::messages::cancel,
        super::connections::create,
        super::connections::list,
        super::connections::get,
        super::connections::update,
        super::connections::delete,
        super::connections::verify,
        super::health::healthz,
        super::health::readyz,
        super::health::metrics,
        openapi_json,
    ),
    components(
        schemas(
            EmailMessage,
            EmailMessageXml,
            EmailAttachment,
            HeaderXml,
            MetadataItemXml,
            BatchRequest,
            BatchXml,
            AcceptedMessage,
            BatchAccepted,
            CancelledMessage,
            MessageView,
            EventsView,
            EventView,
            EventType,
            ListView,
            SummaryView,
            NewConnection,
            ConnectionPatch,
            ConnectionView,
            ConnectionList,
            VerifyReport,
            VerifyStep,
            SmtpReply,
            RecipientResult,
            Status,
            Security,
            Importance,
            ContentTransferEncoding,
            Scope,
            Problem,
            FieldError,
            Health,
            Readiness,
            ReadinessChecks,
            CheckState,
        ),
        responses(
            BadRequest,
            Unauthorized,
            Forbidden,
            NotFound,
            Conflict,
            PayloadTooLarge,
            UnsupportedMediaType,
            IdempotencyKeyReused,
            Unavailable,
            RequestTimeout,
        )
    ),
    modifiers(&SecuritySchemes, &AlwaysPresent, &XmlWithoutNull),
    tags(
        (name = "send", description = "Accepting messages (scope `send`)."),
        (name = "messages", description = "Looking messages up (scope `read`) and cancelling them (scope `send`)."),
        (name = "connections", description = "Stored SMTP connections (scope `admin`)."),
        (name = "operations", description = "Health, readiness, metrics and this document; no key needed."),
    )
)]
pub struct ApiDoc;

/// The document.
pub fn document() -> utoipa::openapi::OpenApi {
    ApiDoc::openapi()
}

/// `GET /openapi.json`: the document, built once.
#[utoipa::path(
    get,
    path = "/openapi.json",
    operation_id = "openapi",
    tag = "operations",
    summary = "This OpenAPI document",
    description = "No API key needed.",
    responses((status = 200, description = "The OpenAPI 3.1 document.", body = Object))
)]
pub async fn openapi_json() -> impl IntoResponse {
    static JSON: OnceLock<String> = OnceLock::new();
    let json = JSON.get_or_init(|| {
        document()
            .to_json()
            .expect("the OpenAPI document serialises")
    });
    ([(header::CONTENT_TYPE, "application/json")], json.as_str())
}

/// `POST /SendEmail`: the connector's own path for `POST /v1/messages` (same handler);
/// documentation only. A test checks that both operations agree.
#[utoipa::path(
    post,
    path = "/SendEmail",
    operation_id = "SendEmail",
    tag = "send",
    summary = "Accept a message for delivery (the connector's path)",
    description = "Requires an API key with the **send** scope.\n\n\
        The SMTP connector's *Send Email* path: the same as `POST /v1/messages`.",
    request_body(
        description = "The connector's `emailMessage`, as JSON or XML.",
        content(
            (EmailMessage = "application/json"),
            (EmailMessageXml = "application/xml")
        )
    ),
    params(IdempotencyKey),
    responses(
        (status = 202, description = "Committed and queued.", body = AcceptedMessage,
            headers(
                ("Location" = String, description = "`/v1/messages/{id}`"),
                ("Idempotent-Replayed" = String, description = "`true` when this answers a repeated `Idempotency-Key`")
            )),
        (status = 400, response = BadRequest),
        (status = 401, response = Unauthorized),
        (status = 403, response = Forbidden),
        (status = 404, response = NotFound),
        (status = 408, response = RequestTimeout),
        (status = 413, response = PayloadTooLarge),
        (status = 415, response = UnsupportedMediaType),
        (status = 422, response = IdempotencyKeyReused),
        (status = 503, response = Unavailable),
    ),
    security(("bearer" = ["send"]), ("apiKey" = ["send"]))
)]
#[allow(dead_code)]
fn send_email() {}

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
    "The API key lacks the scope this operation needs."
);
problem_response!(
    NotFound,
    "No such message or connection (a send naming an unknown `connection` names the field)."
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

/// The two ways to present an API key.
struct SecuritySchemes;

impl Modify for SecuritySchemes {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("pw_<lookup>_<secret>")
                    .description(Some(
                        "`Authorization: Bearer pw_...`. Keys are created with \
                         `postwire keys create --name NAME --scopes send,read,admin`.",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "apiKey",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "`X-API-Key: pw_...`, the same key as for `bearer`.",
            ))),
        );
    }
}

/// Response types whose every property is always serialised, `null` included: all
/// their properties are required (an `Option` is nullable, not absent).
const ALWAYS_PRESENT: &[&str] = &[
    "MessageView",
    "SummaryView",
    "ListView",
    "ConnectionView",
    "ConnectionList",
    "EventsView",
    "VerifyReport",
    "VerifyStep",
    "SmtpReply",
    "RecipientResult",
    "AcceptedMessage",
    "BatchAccepted",
    "CancelledMessage",
    "Health",
    "Readiness",
    "ReadinessChecks",
];

struct AlwaysPresent;

impl Modify for AlwaysPresent {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for name in ALWAYS_PRESENT {
            if let Some(RefOr::T(utoipa::openapi::schema::Schema::Object(object))) =
                components.schemas.get_mut(*name)
            {
                object.required = object.properties.keys().cloned().collect();
            }
        }
    }
}

/// XML has no `null`: an absent element is the only way to leave a field out. The
/// `application/xml` request bodies get copies of their schemas (`...Xml`) with `null`
/// taken out of every type, so that clients and fuzzers do not send `<IsHtml>null</IsHtml>`.
struct XmlWithoutNull;

impl Modify for XmlWithoutNull {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let Ok(mut doc) = serde_json::to_value(&*openapi) else {
            return;
        };
        let mut pending: Vec<String> = Vec::new();
        if let Some(paths) = doc["paths"].as_object_mut() {
            for operation in paths.values_mut().filter_map(Value::as_object_mut) {
                for operation in operation.values_mut() {
                    if let Some(schema) = operation
                        .pointer_mut("/requestBody/content/application~1xml/schema")
                        .and_then(Value::as_object_mut)
                    {
                        if let Some(name) = schema_ref(schema) {
                            schema.insert(
                                "$ref".to_owned(),
                                Value::String(reference(&xml_name(&name))),
                            );
                            pending.push(name);
                        }
                    }
                }
            }
        }
        let mut done = std::collections::BTreeSet::new();
        while let Some(name) = pending.pop() {
            if !done.insert(name.clone()) {
                continue;
            }
            let Some(mut schema) = doc["components"]["schemas"].get(&name).cloned() else {
                continue;
            };
            without_null(&doc, &mut schema, &mut pending);
            doc["components"]["schemas"][xml_name(&name)] = schema;
        }
        if let Ok(changed) = serde_json::from_value(doc) {
            *openapi = changed;
        }
    }
}

fn xml_name(name: &str) -> String {
    if name.ends_with("Xml") {
        name.to_owned()
    } else {
        format!("{name}Xml")
    }
}

fn reference(name: &str) -> String {
    format!("#/components/schemas/{name}")
}

fn schema_ref(schema: &serde_json::Map<String, Value>) -> Option<String> {
    schema
        .get("$ref")?
        .as_str()?
        .strip_prefix("#/components/schemas/")
        .map(str::to_owned)
}

/// Takes `null` out of `schema`, and points its references to objects at their XML
/// copies (queued in `pending`).
fn without_null(doc: &Value, schema: &mut Value, pending: &mut Vec<String>) {
    let Some(map) = schema.as_object_mut() else {
        return;
    };
    // `oneOf: [{type: null}, X]` is X.
    if let Some(Value::Array(options)) = map.get("oneOf") {
        let rest: Vec<Value> = options
            .iter()
            .filter(|o| o.get("type") != Some(&Value::String("null".to_owned())))
            .cloned()
            .collect();
        if rest.len() == 1 && options.len() == 2 {
            map.remove("oneOf");
            if let Value::Object(inner) = &rest[0] {
                for (k, v) in inner {
                    map.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if let Some(Value::Array(types)) = map.get_mut("type") {
        types.retain(|t| t != "null");
        if types.len() == 1 {
            let only = types[0].clone();
            map.insert("type".to_owned(), only);
        }
    }
    if let Some(name) = schema_ref(map) {
        let is_object = doc["components"]["schemas"][&name]
            .get("properties")
            .is_some();
        if is_object {
            map.insert(
                "$ref".to_owned(),
                Value::String(reference(&xml_name(&name))),
            );
            pending.push(name);
        }
    }
    for key in ["items", "additionalProperties"] {
        if let Some(inner) = map.get_mut(key) {
            without_null(doc, inner, pending);
        }
    }
    if let Some(Value::Object(properties)) = map.get_mut("properties") {
        for property in properties.values_mut() {
            without_null(doc, property, pending);
        }
    }
}
