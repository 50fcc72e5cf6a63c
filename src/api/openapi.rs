//! The OpenAPI document's frame: its description, the schemas and responses that no
//! operation reaches by itself, the security schemes, and the finishing touches that
//! need the whole document. The operations come from the router (`api::routes`),
//! where each handler is routed once with its `#[utoipa::path]`.

use serde_json::Value;
use utoipa::openapi::security::{ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::openapi::RefOr;
use utoipa::{Modify, OpenApi};

use super::connections::{
    ConnectionList, ConnectionPatch, ConnectionView, ThrottleState, ThrottleView,
};
use super::email_message::{EmailAttachment, EmailMessage, EmailMessageXml};
use super::messages::{EventView, EventsView, ListView, MessageView, SummaryView};
use super::schemas::*;
use super::send::{BatchRequest, BatchXml};
use super::suppressions::{NewSuppression, SuppressionList, SuppressionView};
use super::tenants::{NewTenant, TenantList, TenantPatch, TenantView};
use super::webhooks::{
    AttemptList, AttemptView, NewWebhook, Recover, Recovered, WebhookList, WebhookPatch,
    WebhookView, WebhookWithSecret,
};
use super::Problem;
use crate::domain::{
    ConnectionFields, FieldError, Importance, RecipientResult, Security, SmtpReply, Status,
    Suppressed, WebhookEvent,
};
use crate::keys::Scope;
use crate::smtp::{VerifyReport, VerifyStep};

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
            `X-API-Key: pw_...`, with the scope the operation names (`send`, `read`, \
            `admin` or `operator`): 401 without a valid key, 403 without the scope or when \
            the key's tenant is disabled.\n\n\
            **Tenants**: every key belongs to a tenant (one producing application) and \
            sees, sends through and changes only its tenant's messages and connections \
            (plus connections an operator shared): another tenant's message id or \
            connection name answers 404, exactly as one that does not exist. \
            Idempotency keys are per tenant. `admin` manages the tenant's own connections. \
            `operator` covers `read` and `admin` across every tenant, manages tenants \
            (`/v1/tenants`) and shares connections; views carry the `tenant`. A tenant's \
            `max_rate_per_second` answers 429 with `Retry-After` beyond it (per API \
            process), and its `allowed_from_domains` refuse any other From or Reply-To \
            domain (400 naming the field).\n\n\
            **Errors** are RFC 7807 `application/problem+json` with `errors: [{field, \
            message}]` naming each invalid field.\n\n\
            **XML**: request bodies may be `application/xml` (or `text/xml`); responses are \
            XML (`application/xml`, `application/problem+xml`) when `Accept` prefers XML \
            to JSON."
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
            ConnectionFields,
            ConnectionPatch,
            ConnectionView,
            ThrottleView,
            ThrottleState,
            ConnectionList,
            NewSuppression,
            SuppressionView,
            SuppressionList,
            Suppressed,
            NewWebhook,
            WebhookPatch,
            WebhookView,
            WebhookWithSecret,
            WebhookList,
            AttemptView,
            AttemptList,
            Recover,
            Recovered,
            WebhookEvent,
            NewTenant,
            TenantPatch,
            TenantView,
            TenantList,
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
            TooManyRequests,
            Unavailable,
            RequestTimeout,
        )
    ),
    tags(
        (name = "send", description = "Accepting messages (scope `send`)."),
        (name = "messages", description = "Looking messages up (scope `read`) and cancelling them (scope `send`)."),
        (name = "connections", description = "Stored SMTP connections (scope `admin`: the tenant's own; `operator`: every tenant's)."),
        (name = "suppressions", description = "The tenant's suppression list: addresses not mailed again (scope `admin`)."),
        (name = "webhooks", description = "Signed notifications of the tenant's messages' status changes (scope `admin`)."),
        (name = "tenants", description = "Tenants: producing applications, each with its own keys, connections and mail (scope `operator`)."),
        (name = "operations", description = "Health, readiness, metrics and this document; no key needed."),
    )
)]
pub struct ApiDoc;

/// The document of `paths` (the router's operations) within the frame.
pub fn document(paths: utoipa::openapi::OpenApi) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    doc.merge(paths);
    // After the merge: these look at every operation and schema.
    SecuritySchemes.modify(&mut doc);
    AlwaysPresent.modify(&mut doc);
    XmlWithoutNull.modify(&mut doc);
    doc
}

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
                         `postwire keys create --tenant TENANT --name NAME --scopes send,read,admin` \
                         (scopes: send, read, admin, operator).",
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
    "ThrottleView",
    "SuppressionView",
    "SuppressionList",
    "Suppressed",
    "WebhookView",
    "WebhookList",
    "AttemptView",
    "AttemptList",
    "Recovered",
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
