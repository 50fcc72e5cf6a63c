//! The OpenAPI document (`GET /openapi.json`): served without a key, and in step with
//! the router. The router and the document are made from the same declarations; the
//! tests check that no route is declared outside them (the router's source), that the
//! running app serves each documented operation and no other method on its path, and
//! that the public surface is exactly [`ROUTES`], the API's contract.

use crate::helpers;

use std::collections::{BTreeMap, BTreeSet};

use helpers::{create_key, simple_message, spawn_app};
use postwire::keys::Scope;
use reqwest::Method;
use serde_json::{json, Value};

/// Operations anyone may call.
const OPEN: &[&str] = &["/healthz", "/readyz", "/metrics", "/openapi.json"];

/// Operations whose body may be JSON or XML.
const BODY_OPERATIONS: &[&str] = &[
    "SendEmail",
    "sendMessage",
    "sendBatch",
    "createConnection",
    "updateConnection",
    "createTenant",
    "updateTenant",
    "addSuppression",
    "createWebhook",
    "updateWebhook",
    "recoverWebhooks",
];

/// Operations that accept `Idempotency-Key`.
const SEND_OPERATIONS: &[&str] = &["SendEmail", "sendMessage", "sendBatch"];

/// Every `(method, path)` of the API: changing this list is changing the contract.
const ROUTES: &[(&str, &str)] = &[
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
    ("GET", "/v1/tenants"),
    ("POST", "/v1/tenants"),
    ("GET", "/v1/tenants/{name}"),
    ("PATCH", "/v1/tenants/{name}"),
    ("GET", "/v1/suppressions"),
    ("POST", "/v1/suppressions"),
    ("DELETE", "/v1/suppressions/{address}"),
    ("POST", "/v1/webhooks"),
    ("GET", "/v1/webhooks"),
    ("GET", "/v1/webhooks/{id}"),
    ("PATCH", "/v1/webhooks/{id}"),
    ("DELETE", "/v1/webhooks/{id}"),
    ("POST", "/v1/webhooks/{id}/rotate-secret"),
    ("GET", "/v1/webhooks/{id}/attempts"),
    ("POST", "/v1/webhooks/{id}/recover"),
    ("GET", "/healthz"),
    ("GET", "/readyz"),
    ("GET", "/metrics"),
    ("GET", "/openapi.json"),
];

const METHODS: &[&str] = &[
    "get", "put", "post", "delete", "options", "head", "patch", "trace",
];

fn document() -> Value {
    serde_json::to_value(postwire::api::document()).expect("the document serialises")
}

/// `(method, path)` → operation, methods upper-case as in `ROUTES`.
fn operations(doc: &Value) -> BTreeMap<(String, String), Value> {
    let mut out = BTreeMap::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, operation) in item.as_object().expect("path item") {
            if METHODS.contains(&method.as_str()) {
                out.insert((method.to_uppercase(), path.clone()), operation.clone());
            }
        }
    }
    out
}

fn routes() -> BTreeSet<(String, String)> {
    ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect()
}

/// Follows a local `$ref`.
fn resolve<'a>(doc: &'a Value, value: &'a Value) -> &'a Value {
    match value.get("$ref").and_then(Value::as_str) {
        Some(reference) => {
            let pointer = reference.strip_prefix('#').expect("a local $ref");
            resolve(
                doc,
                doc.pointer(pointer)
                    .unwrap_or_else(|| panic!("dangling $ref {reference}")),
            )
        }
        None => value,
    }
}

/// The scope an operation needs, from the router's grouping (not from the document).
fn scope_of(method: &str, path: &str) -> Option<&'static str> {
    if OPEN.contains(&path) {
        None
    } else if ["/v1/connections", "/v1/suppressions", "/v1/webhooks"]
        .iter()
        .any(|p| path.starts_with(p))
    {
        Some("admin")
    } else if path.starts_with("/v1/tenants") {
        Some("operator")
    } else if method == "POST" {
        Some("send")
    } else {
        Some("read")
    }
}

fn concrete(path: &str) -> String {
    path.replace("{id}", &uuid::Uuid::now_v7().to_string())
        .replace("{name}", "no-such-connection")
        .replace("{address}", "nobody%40example.com")
}

#[tokio::test]
async fn the_document_is_served_without_a_key() {
    let app = spawn_app().await;
    let response = app
        .anonymous
        .get(format!("{}/openapi.json", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));
    let served: Value = response.json().await.expect("valid JSON");
    assert!(
        served["openapi"].as_str().unwrap().starts_with("3."),
        "{}",
        served["openapi"]
    );
    assert_eq!(served, document());
    assert!(served["paths"]["/openapi.json"]["get"].is_object());
}

#[test]
fn the_router_declares_no_route_outside_the_document() {
    // Routes declared with axum's own `.route(...)` would be served but not documented;
    // every route goes through `routes!`, which documents it.
    let source = include_str!("../../src/api/mod.rs");
    let start = source.find("fn send_routes(").expect("the route groups");
    let end = start
        + source[start..]
            .find("/// Drops a client's")
            .expect("end of fn router");
    let body = &source[start..end];
    assert!(!body.contains(".route("), "a route outside routes!: {body}");
    assert!(!body.contains(".nest("), "a nested router: {body}");
    assert!(body.contains("routes!("));
}

#[test]
fn the_document_has_exactly_the_listed_routes() {
    let doc = document();
    let documented: BTreeSet<(String, String)> = operations(&doc).into_keys().collect();
    let missing: Vec<_> = routes().difference(&documented).cloned().collect();
    let extra: Vec<_> = documented.difference(&routes()).cloned().collect();
    assert!(missing.is_empty(), "routed but not documented: {missing:?}");
    assert!(extra.is_empty(), "documented but not routed: {extra:?}");
}

#[tokio::test]
async fn every_listed_route_is_served_and_no_other_method_on_its_path() {
    let app = spawn_app().await;
    let documented: BTreeSet<(String, String)> = operations(&document()).into_keys().collect();
    assert_eq!(documented, routes());
    let paths: BTreeSet<&str> = ROUTES.iter().map(|(_, p)| *p).collect();
    let every_scope = create_key(
        &app.db,
        &[Scope::Send, Scope::Read, Scope::Admin, Scope::Operator],
        None,
    )
    .await;
    for path in paths {
        let url = format!("{}{}", app.address, concrete(path));
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let listed = ROUTES.contains(&(method, path));
            // A listed route answers a request without a key (401 if it needs one); any
            // other method on the path is 405 even with a key that has every scope.
            let request = app
                .anonymous
                .request(Method::from_bytes(method.as_bytes()).unwrap(), &url);
            let request = if listed {
                request
            } else {
                request.bearer_auth(&every_scope)
            };
            let status = request.send().await.unwrap().status().as_u16();
            let expected = match (listed, scope_of(method, path)) {
                (false, _) => 405,
                (true, None) => 200,
                (true, Some(_)) => 401,
            };
            assert_eq!(status, expected, "{method} {path}");
        }
    }
}

#[tokio::test]
async fn each_operation_needs_exactly_the_scope_it_documents() {
    let app = spawn_app().await;
    let doc = document();
    let mut keys = BTreeMap::new();
    let every = [Scope::Send, Scope::Read, Scope::Admin, Scope::Operator];
    for scope in every {
        let only = create_key(&app.db, &[scope], None).await;
        // Every scope that does not cover this one (`operator` covers read and admin).
        let others: Vec<Scope> = every
            .into_iter()
            .filter(|s| *s != scope)
            .filter(|s| !(*s == Scope::Operator && matches!(scope, Scope::Read | Scope::Admin)))
            .collect();
        let all_but = create_key(&app.db, &others, None).await;
        keys.insert(scope.as_str(), (only, all_but));
    }
    for ((method, path), operation) in operations(&doc) {
        let Some(security) = operation.get("security") else {
            assert!(
                OPEN.contains(&path.as_str()),
                "{method} {path} has no security"
            );
            continue;
        };
        let scope = security[0]["bearer"][0]
            .as_str()
            .unwrap_or_else(|| panic!("{method} {path}: no bearer scope"));
        let (only, all_but) = &keys[scope];
        let url = format!("{}{}", app.address, concrete(&path));
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let with_scope = app
            .anonymous
            .request(method.clone(), &url)
            .bearer_auth(only)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert!(
            ![401, 403, 405].contains(&with_scope),
            "{method} {path} with the {scope} scope: {with_scope}"
        );
        let without_scope = app
            .anonymous
            .request(method.clone(), &url)
            .header("X-API-Key", all_but)
            .send()
            .await
            .unwrap()
            .status()
            .as_u16();
        assert_eq!(
            without_scope, 403,
            "{method} {path} with every scope that does not cover {scope}"
        );
    }
}

#[test]
fn operations_that_need_a_key_declare_security_and_their_scope() {
    let doc = document();
    let schemes = &doc["components"]["securitySchemes"];
    assert_eq!(schemes["bearer"]["type"], "http");
    assert_eq!(schemes["bearer"]["scheme"], "bearer");
    assert_eq!(schemes["apiKey"]["type"], "apiKey");
    assert_eq!(schemes["apiKey"]["in"], "header");
    assert_eq!(schemes["apiKey"]["name"], "X-API-Key");
    assert!(doc.get("security").is_none(), "no global security");
    let mut ids = BTreeSet::new();
    for ((method, path), operation) in operations(&doc) {
        let what = format!("{method} {path}");
        let id = operation["operationId"].as_str().expect("operationId");
        assert!(
            ids.insert(id.to_owned()),
            "{what}: duplicate operationId {id}"
        );
        assert!(
            operation["tags"].as_array().is_some_and(|t| !t.is_empty()),
            "{what}: tags"
        );
        match scope_of(&method, &path) {
            None => assert!(operation.get("security").is_none(), "{what} is open"),
            Some(scope) => {
                assert_eq!(
                    operation["security"],
                    json!([{"bearer": [scope]}, {"apiKey": [scope]}]),
                    "{what}"
                );
                let description = operation["description"].as_str().unwrap_or("");
                assert!(
                    description.contains(&format!("**{scope}** scope")),
                    "{what}: the description must state the {scope} scope: {description:?}"
                );
                for status in ["401", "403"] {
                    assert!(
                        operation["responses"].get(status).is_some(),
                        "{what}: {status} is not documented"
                    );
                }
            }
        }
    }
}

#[test]
fn send_operations_document_the_idempotency_key() {
    let doc = document();
    for ((method, path), operation) in operations(&doc) {
        let id = operation["operationId"].as_str().unwrap();
        let header = operation["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["name"] == "Idempotency-Key");
        if SEND_OPERATIONS.contains(&id) {
            let header = header.unwrap_or_else(|| panic!("{method} {path}: no Idempotency-Key"));
            assert_eq!(header["in"], "header");
            assert_eq!(header["required"], false);
            assert_eq!(header["schema"]["type"], "string");
            assert_eq!(header["schema"]["maxLength"], 255);
            assert!(operation["responses"].get("422").is_some(), "{id}: 422");
        } else {
            assert!(
                header.is_none(),
                "{method} {path} does not take Idempotency-Key"
            );
        }
    }
}

#[test]
fn errors_are_problem_documents_and_bodies_are_json_or_xml() {
    let doc = document();
    let problem = &doc["components"]["schemas"]["Problem"];
    for field in ["type", "title", "status", "detail"] {
        assert!(
            problem["required"]
                .as_array()
                .unwrap()
                .contains(&json!(field)),
            "{field}"
        );
    }
    assert_eq!(
        problem["properties"]["errors"]["items"]["$ref"],
        "#/components/schemas/FieldError"
    );
    for ((method, path), operation) in operations(&doc) {
        let what = format!("{method} {path}");
        let id = operation["operationId"].as_str().unwrap();
        for (status, response) in operation["responses"].as_object().unwrap() {
            let code: u16 = status.parse().expect("numeric status");
            if code < 400 || path == "/readyz" {
                continue;
            }
            let response = resolve(&doc, response);
            let content = response["content"].as_object().expect("content");
            assert_eq!(
                content.keys().collect::<Vec<_>>(),
                ["application/problem+json"],
                "{what} {status}"
            );
            assert_eq!(
                content["application/problem+json"]["schema"]["$ref"],
                "#/components/schemas/Problem",
                "{what} {status}"
            );
        }
        let body = operation.get("requestBody");
        if BODY_OPERATIONS.contains(&id) {
            let body = body.unwrap_or_else(|| panic!("{what}: no request body"));
            assert_eq!(body["required"], true);
            let types: BTreeSet<&str> = body["content"]
                .as_object()
                .unwrap()
                .keys()
                .map(String::as_str)
                .collect();
            assert_eq!(
                types,
                BTreeSet::from(["application/json", "application/xml"]),
                "{what}"
            );
            for status in ["400", "413", "415"] {
                assert!(
                    operation["responses"].get(status).is_some(),
                    "{what}: {status}"
                );
            }
        } else {
            assert!(body.is_none(), "{what} takes no body");
        }
    }
}

#[test]
fn xml_bodies_have_no_null() {
    fn check(doc: &Value, schema: &Value, at: &str, seen: &mut BTreeSet<String>) {
        if let Some(reference) = schema.get("$ref").and_then(Value::as_str) {
            if seen.insert(reference.to_owned()) {
                check(doc, resolve(doc, schema), reference, seen);
            }
            return;
        }
        assert!(
            !schema.to_string().contains(r#""null""#),
            "{at} allows null in XML: {schema}"
        );
        for inner in ["items", "additionalProperties"] {
            if let Some(inner) = schema.get(inner) {
                check(doc, inner, at, seen);
            }
        }
        for (name, property) in schema["properties"].as_object().into_iter().flatten() {
            check(doc, property, &format!("{at}.{name}"), seen);
        }
    }
    let doc = document();
    let mut checked = 0;
    for ((method, path), operation) in operations(&doc) {
        if let Some(schema) = operation.pointer("/requestBody/content/application~1xml/schema") {
            check(
                &doc,
                schema,
                &format!("{method} {path}"),
                &mut BTreeSet::new(),
            );
            checked += 1;
        }
    }
    assert_eq!(checked, BODY_OPERATIONS.len());
}

#[test]
fn the_connector_path_is_the_same_operation_as_v1_messages() {
    let doc = document();
    let mut connector = doc["paths"]["/SendEmail"]["post"].clone();
    let mut v1 = doc["paths"]["/v1/messages"]["post"].clone();
    for op in [&mut connector, &mut v1] {
        let op = op.as_object_mut().unwrap();
        for key in ["operationId", "summary", "description"] {
            op.remove(key);
        }
    }
    assert_eq!(connector, v1);
}

#[test]
fn schemas_name_the_connector_fields_and_the_enums() {
    let doc = document();
    let schemas = &doc["components"]["schemas"];
    let properties = |name: &str| -> BTreeSet<String> {
        schemas[name]["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("schema {name}"))
            .keys()
            .cloned()
            .collect()
    };
    assert_eq!(
        properties("EmailMessage"),
        [
            "To",
            "CC",
            "Bcc",
            "From",
            "Subject",
            "Body",
            "IsHtml",
            "Importance",
            "Attachments",
            "connection",
            "ReplyTo",
            "Headers",
            "Metadata",
            "SendAt",
            "ExpiresAt"
        ]
        .map(String::from)
        .into()
    );
    assert_eq!(schemas["EmailMessage"]["additionalProperties"], false);
    assert_eq!(
        properties("EmailAttachment"),
        [
            "FileName",
            "ContentId",
            "ContentData",
            "ContentType",
            "ContentTransferEncoding"
        ]
        .map(String::from)
        .into()
    );
    // The enums are the ones the code parses.
    for value in schemas["Status"]["enum"].as_array().unwrap() {
        serde_json::from_value::<postwire::domain::Status>(value.clone()).expect("a status");
    }
    assert_eq!(schemas["Status"]["enum"].as_array().unwrap().len(), 6);
    for value in schemas["Security"]["enum"].as_array().unwrap() {
        serde_json::from_value::<postwire::domain::Security>(value.clone()).expect("a security");
    }
    assert_eq!(
        schemas["Importance"]["enum"],
        json!(["High", "Normal", "Low"])
    );
    for value in schemas["Importance"]["enum"].as_array().unwrap() {
        value
            .as_str()
            .unwrap()
            .parse::<postwire::domain::Importance>()
            .expect("an importance");
    }
    // Nullable fields are marked, and present.
    let view = &schemas["MessageView"];
    assert_eq!(
        view["properties"]["sent_at"]["type"],
        json!(["string", "null"])
    );
    assert!(view["required"]
        .as_array()
        .unwrap()
        .contains(&json!("sent_at")));
    assert_eq!(
        schemas["ListView"]["properties"]["next_cursor"]["type"],
        json!(["string", "null"])
    );
}

/// A small JSON Schema check (type, enum, required, properties, additionalProperties,
/// items, nullable), enough to catch the document drifting from what the API returns.
fn conforms(doc: &Value, schema: &Value, value: &Value, at: &str) -> Result<(), String> {
    let schema = resolve(doc, schema);
    if let Some(options) = schema.get("oneOf").and_then(Value::as_array) {
        let matching = options
            .iter()
            .filter(|s| conforms(doc, s, value, at).is_ok())
            .count();
        return if matching == 1 {
            Ok(())
        } else {
            Err(format!("{at}: {matching} oneOf branches match {value}"))
        };
    }
    if let Some(types) = schema.get("type") {
        let types: Vec<&str> = match types {
            Value::String(t) => vec![t.as_str()],
            Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
            _ => vec![],
        };
        let actual = match value {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
            Value::Number(_) => "number",
            Value::String(_) => "string",
            Value::Array(_) => "array",
            Value::Object(_) => "object",
        };
        let integer_as_number = actual == "integer" && types.contains(&"number");
        if !(types.contains(&actual) || integer_as_number) {
            return Err(format!("{at}: {actual} is not {types:?}"));
        }
    }
    if let Some(values) = schema.get("enum").and_then(Value::as_array) {
        if !values.contains(value) {
            return Err(format!("{at}: {value} is not one of {values:?}"));
        }
    }
    if let Value::Object(map) = value {
        for required in schema["required"].as_array().into_iter().flatten() {
            if !map.contains_key(required.as_str().unwrap()) {
                return Err(format!("{at}: {required} is missing"));
            }
        }
        for (key, v) in map {
            match schema["properties"].get(key) {
                Some(property) => conforms(doc, property, v, &format!("{at}.{key}"))?,
                None => match schema.get("additionalProperties") {
                    Some(Value::Bool(false)) => return Err(format!("{at}: unexpected {key}")),
                    Some(extra @ Value::Object(_)) => {
                        conforms(doc, extra, v, &format!("{at}.{key}"))?
                    }
                    _ if schema.get("properties").is_some() => {
                        return Err(format!("{at}: undocumented {key}"))
                    }
                    _ => {}
                },
            }
        }
    }
    if let (Value::Array(items), Some(item_schema)) = (value, schema.get("items")) {
        for (i, item) in items.iter().enumerate() {
            conforms(doc, item_schema, item, &format!("{at}[{i}]"))?;
        }
    }
    Ok(())
}

async fn check(doc: &Value, response: reqwest::Response, operation: &Value) {
    let status = response.status().as_u16().to_string();
    let content_type = response.headers()["content-type"]
        .to_str()
        .unwrap()
        .to_owned();
    let body: Value = response.json().await.expect("a JSON body");
    let documented = resolve(
        doc,
        operation["responses"]
            .get(&status)
            .unwrap_or_else(|| panic!("{}: {status} is not documented", operation["operationId"])),
    );
    let schema = &documented["content"][&content_type]["schema"];
    assert!(
        !schema.is_null(),
        "{}: {status} {content_type} is not documented",
        operation["operationId"]
    );
    if let Err(e) = conforms(doc, schema, &body, "$") {
        panic!("{} {status}: {e}\n{body:#}", operation["operationId"]);
    }
}

#[tokio::test]
async fn real_responses_conform_to_the_document() {
    let app = spawn_app().await;
    let doc = document();
    let ops = operations(&doc);
    let op = |method: &str, path: &str| ops[&(method.to_owned(), path.to_owned())].clone();
    let url = |path: &str| format!("{}{path}", app.address);

    let mut message = simple_message();
    message["Metadata"] = json!({"order": "1234"});
    let response = app.post("/v1/messages", &message).await;
    assert_eq!(response.status().as_u16(), 202);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    let accepted: Value = response.json().await.unwrap();
    assert_eq!(
        location,
        format!("/v1/messages/{}", accepted["id"].as_str().unwrap())
    );
    conforms(
        &doc,
        &json!({"$ref": "#/components/schemas/AcceptedMessage"}),
        &accepted,
        "$",
    )
    .unwrap();
    let id = accepted["id"].as_str().unwrap().to_owned();
    app.wait_until_terminal(&id).await;

    let batch = json!({"messages": [simple_message(), simple_message()]});
    let response = app.post("/v1/messages/batch", &batch).await;
    check(&doc, response, &op("POST", "/v1/messages/batch")).await;
    let response = app.post("/SendEmail", &json!({"To": "ann@"})).await;
    check(&doc, response, &op("POST", "/SendEmail")).await;

    for (path, template) in [
        (format!("/v1/messages/{id}"), "/v1/messages/{id}"),
        (
            format!("/v1/messages/{id}/events"),
            "/v1/messages/{id}/events",
        ),
        ("/v1/messages?limit=2".to_owned(), "/v1/messages"),
        ("/v1/messages?limit=0".to_owned(), "/v1/messages"),
        ("/v1/messages/not-a-uuid".to_owned(), "/v1/messages/{id}"),
        ("/v1/connections".to_owned(), "/v1/connections"),
        ("/v1/connections/nope".to_owned(), "/v1/connections/{name}"),
        ("/healthz".to_owned(), "/healthz"),
        ("/readyz".to_owned(), "/readyz"),
    ] {
        let response = app.client.get(url(&path)).send().await.unwrap();
        check(&doc, response, &op("GET", template)).await;
    }
    let response = app
        .client
        .post(url(&format!("/v1/messages/{id}/cancel")))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 409);
    check(&doc, response, &op("POST", "/v1/messages/{id}/cancel")).await;

    let connection = json!({
        "name": "relay", "host": "127.0.0.1", "port": app.smtp.port(), "security": "none",
        "username": "u", "password": "p", "default_from": "A <a@example.com>"
    });
    let response = app.post("/v1/connections", &connection).await;
    assert_eq!(response.status().as_u16(), 201);
    check(&doc, response, &op("POST", "/v1/connections")).await;
    let response = app
        .client
        .patch(url("/v1/connections/relay"))
        .json(&json!({"password": null, "max_rate_per_second": 5}))
        .send()
        .await
        .unwrap();
    check(&doc, response, &op("PATCH", "/v1/connections/{name}")).await;
    let response = app
        .client
        .get(url("/v1/connections/relay"))
        .send()
        .await
        .unwrap();
    check(&doc, response, &op("GET", "/v1/connections/{name}")).await;
    let response = app
        .client
        .post(url("/v1/connections/relay/verify"))
        .send()
        .await
        .unwrap();
    check(&doc, response, &op("POST", "/v1/connections/{name}/verify")).await;
    let response = app
        .client
        .post(url("/v1/connections"))
        .header("content-type", "text/plain")
        .body("x")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    check(&doc, response, &op("POST", "/v1/connections")).await;
    let response = app
        .anonymous
        .get(url("/v1/connections"))
        .send()
        .await
        .unwrap();
    check(&doc, response, &op("GET", "/v1/connections")).await;
}
