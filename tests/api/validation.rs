//! Bad input gets a 4xx naming the field, and nothing is stored or queued.

use crate::helpers;

use helpers::{assert_problem, assert_refused, message_with as with, spawn_app};
use serde_json::{json, Value};

fn attachment(changes: Value) -> Value {
    let mut a = json!({
        "FileName": "a.txt",
        "ContentData": "aGVsbG8=",
        "ContentType": "text/plain",
        "ContentTransferEncoding": "base64",
    });
    for (k, v) in changes.as_object().unwrap() {
        if v.is_null() {
            a.as_object_mut().unwrap().remove(k);
        } else {
            a[k] = v.clone();
        }
    }
    with(json!({ "Attachments": [a] }))
}

#[tokio::test]
async fn send_with_a_malformed_address_returns_400_naming_the_field() {
    let app = spawn_app().await;
    let problem = assert_refused(
        &app,
        with(json!({"To": "ann@example.com;not-an-address"})),
        400,
        "To",
    )
    .await;
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("not-an-address"));
    assert_refused(&app, with(json!({"CC": "bob@@example.com"})), 400, "CC").await;
    assert_refused(
        &app,
        with(json!({"Bcc": "Ann <ann@example.com> trailing"})),
        400,
        "Bcc",
    )
    .await;
    assert_refused(
        &app,
        with(json!({"From": "\"a@b\"@example.com"})),
        400,
        "From",
    )
    .await;
}

#[tokio::test]
async fn send_without_any_recipient_returns_400() {
    let app = spawn_app().await;
    let body = json!({"Subject": "x", "Body": "y", "To": " ; "});
    assert_refused(&app, body, 400, "To").await;
}

#[tokio::test]
async fn send_with_too_many_recipients_returns_400() {
    let app = spawn_app().await;
    let max = app.settings.limits.max_recipients;
    let to: Vec<String> = (0..=max).map(|i| format!("r{i}@example.com")).collect();
    let problem = assert_refused(&app, with(json!({"To": to.join(";")})), 400, "To").await;
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("too many recipients"));
}

#[tokio::test]
async fn line_breaks_in_headers_are_refused() {
    let app = spawn_app().await;
    assert_refused(
        &app,
        with(json!({"Subject": "Hi\r\nBcc: victim@example.com"})),
        400,
        "Subject",
    )
    .await;
    assert_refused(&app, with(json!({"Subject": "Hi\nthere"})), 400, "Subject").await;
    assert_refused(
        &app,
        with(json!({"Subject": "nul\u{0}byte"})),
        400,
        "Subject",
    )
    .await;
    assert_refused(
        &app,
        with(json!({"To": "\"Evil\r\nBcc: x@y.com\" <ann@example.com>"})),
        400,
        "To",
    )
    .await;
    assert_refused(
        &app,
        attachment(json!({"FileName": "a\r\nContent-Type: text/html"})),
        400,
        "Attachments[0].FileName",
    )
    .await;
    assert_refused(
        &app,
        attachment(json!({"ContentType": "text/plain\r\nX-Evil: 1"})),
        400,
        "Attachments[0].ContentType",
    )
    .await;
}

#[tokio::test]
async fn invalid_base64_is_refused() {
    let app = spawn_app().await;
    assert_refused(
        &app,
        attachment(json!({"ContentData": "not base64!!"})),
        400,
        "Attachments[0].ContentData",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_transfer_encoding_is_refused() {
    let app = spawn_app().await;
    let problem = assert_refused(
        &app,
        attachment(json!({"ContentTransferEncoding": "quoted-printable"})),
        400,
        "Attachments[0].ContentTransferEncoding",
    )
    .await;
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("base64 or none"));
}

#[tokio::test]
async fn missing_required_attachment_fields_are_each_named() {
    let app = spawn_app().await;
    let body = attachment(
        json!({"ContentData": null, "ContentType": null, "ContentTransferEncoding": null}),
    );
    let problem = assert_refused(&app, body, 400, "Attachments[0].ContentData").await;
    let fields: Vec<&str> = problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["field"].as_str().unwrap())
        .collect();
    assert_eq!(
        fields,
        [
            "Attachments[0].ContentData",
            "Attachments[0].ContentType",
            "Attachments[0].ContentTransferEncoding"
        ]
    );
    assert_refused(
        &app,
        attachment(json!({"ContentType": "not a type"})),
        400,
        "Attachments[0].ContentType",
    )
    .await;
}

#[tokio::test]
async fn an_unknown_importance_is_refused() {
    let app = spawn_app().await;
    assert_refused(
        &app,
        with(json!({"Importance": "Urgent"})),
        400,
        "Importance",
    )
    .await;
}

#[tokio::test]
async fn a_misspelt_field_is_refused_rather_than_ignored() {
    let app = spawn_app().await;
    let problem = assert_problem(
        app.send(&with(json!({"Bc": "x@example.com"}))).await,
        400,
        "Bc",
    )
    .await;
    assert_eq!(problem["status"], 400);
    assert!(problem["detail"]
        .as_str()
        .unwrap()
        .contains("unknown field"));
    let problem = assert_problem(
        app.send(&with(json!({"IsHtml": "yes"}))).await,
        400,
        "IsHtml",
    )
    .await;
    assert!(problem["detail"].as_str().unwrap().contains("invalid type"));
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test]
async fn malformed_json_returns_400_and_other_media_types_415() {
    let app = spawn_app().await;
    let response = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .header("content-type", "application/json")
        .body("{\"To\": \"ann@example.com\",")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);
    let response = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .header("content-type", "text/plain")
        .body("To: ann@example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 415);
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test]
async fn a_body_over_the_request_limit_returns_413() {
    let app = helpers::spawn_app_with(helpers::Script::accept_all(), |s| {
        s.server.body_limit_bytes = 64 * 1024;
    })
    .await;
    let response = app
        .send(&with(json!({"Body": "x".repeat(100 * 1024)})))
        .await;
    assert_eq!(response.status().as_u16(), 413);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test]
async fn an_attachment_over_its_limit_returns_413_naming_it() {
    let app = helpers::spawn_app_with(helpers::Script::accept_all(), |s| {
        s.limits.max_attachment_bytes = 1024;
    })
    .await;
    let body =
        attachment(json!({"ContentData": "y".repeat(2000), "ContentTransferEncoding": "none"}));
    assert_refused(&app, body, 413, "Attachments[0].ContentData").await;
}

#[tokio::test]
async fn an_unknown_connection_returns_404_naming_it() {
    let app = spawn_app().await;
    let problem =
        assert_refused(&app, with(json!({"connection": "nope"})), 404, "connection").await;
    assert!(problem["detail"].as_str().unwrap().contains("nope"));
}
