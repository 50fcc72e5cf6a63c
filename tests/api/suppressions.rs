//! The suppression list: an address a server refused as bad is not mailed again;
//! addresses can be added and taken off by hand; tenants keep their own lists.

use crate::helpers;

use helpers::{assert_problem, spawn_app_with, Action, Event, Script, TestApp};
use postwire::keys::Scope;
use serde_json::{json, Value};

/// A relay that refuses `bob@example.com` as an unknown user, `eve@example.com` by
/// policy, and takes everyone else.
fn picky_relay() -> Script {
    Script::new(|event, _| match event {
        Event::RcptTo(to) if to.eq_ignore_ascii_case("bob@example.com") => Action::reply(
            550,
            "5.1.1 <bob@example.com>: Recipient address rejected: User unknown",
        ),
        Event::RcptTo(to) if to.eq_ignore_ascii_case("eve@example.com") => {
            Action::reply(550, "5.7.1 Message rejected by policy")
        }
        _ => Action::Default,
    })
}

async fn list(app: &TestApp, query: &str) -> Value {
    let response = app.get(&format!("/v1/suppressions{query}")).await;
    assert_eq!(response.status(), 200);
    response.json().await.unwrap()
}

/// The addresses of a `GET /v1/suppressions` page.
pub(crate) fn addresses(page: &Value) -> Vec<String> {
    page["suppressions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["address"].as_str().unwrap().to_owned())
        .collect()
}

/// `RCPT TO` commands the relay saw for `address`.
fn rcpts_for(app: &TestApp, address: &str) -> usize {
    app.smtp
        .commands()
        .iter()
        .filter(|c| c.to_ascii_lowercase() == format!("rcpt to:<{}>", address.to_ascii_lowercase()))
        .count()
}

#[tokio::test]
async fn a_recipient_refused_as_unknown_is_suppressed_and_left_out_of_later_messages() {
    let app = spawn_app_with(picky_relay(), |_| {}).await;
    let first = app
        .send_ok(&json!({"To": "ann@example.com;bob@example.com", "Subject": "one", "Body": "x"}))
        .await;
    let status = app.wait_until_terminal(&first).await;
    assert_eq!(status["status"], "sent");

    let page = list(&app, "").await;
    assert_eq!(addresses(&page), vec!["bob@example.com"]);
    let entry = &page["suppressions"][0];
    assert_eq!(entry["source"], "bounce");
    assert_eq!(entry["reply"]["code"], 550);
    assert_eq!(entry["reply"]["enhanced"], "5.1.1");
    assert_eq!(entry["message_id"], first.as_str());
    assert!(entry["reason"].as_str().unwrap().contains("User unknown"));

    // The domain compares case-insensitively: BOB's server is never asked again.
    let second = app
        .send_ok(&json!({"To": "ann@example.com", "CC": "bob@EXAMPLE.com", "Subject": "two", "Body": "x"}))
        .await;
    let status = app.wait_until_terminal(&second).await;
    assert_eq!(status["status"], "sent");
    assert_eq!(
        rcpts_for(&app, "bob@example.com"),
        1,
        "bob was asked for again"
    );
    let recipients = status["recipients"].as_array().unwrap();
    let bob = recipients
        .iter()
        .find(|r| r["address"] == "bob@EXAMPLE.com")
        .unwrap_or_else(|| panic!("no result for bob: {recipients:?}"));
    assert_eq!(bob["accepted"], false);
    assert!(bob["reply"].is_null());
    assert!(bob["suppressed"]["reason"]
        .as_str()
        .unwrap()
        .contains("5.1.1"));
    assert!(bob["suppressed"]["since"].is_string());
    // The delivered copy went to ann alone, and still names bob in its CC header.
    let received = app.smtp.received();
    let last = received.last().unwrap();
    assert_eq!(last.rcpt_to, vec!["ann@example.com"]);
    let parsed = helpers::parse_mail(last);
    assert_eq!(parsed.subject(), Some("two"));
}

#[tokio::test]
async fn a_message_whose_every_recipient_is_suppressed_fails_without_an_smtp_session() {
    let app = spawn_app_with(Script::accept_all(), |_| {}).await;
    let added = app
        .post(
            "/v1/suppressions",
            &json!({"address": "Carol@Example.COM", "reason": "complaint"}),
        )
        .await;
    assert_eq!(added.status(), 201);
    assert_eq!(
        added.headers()["location"],
        "/v1/suppressions/Carol%40example.com"
    );
    let entry: Value = added.json().await.unwrap();
    assert_eq!(entry["address"], "Carol@example.com");
    assert_eq!(entry["source"], "manual");
    assert!(entry["reply"].is_null());
    // Listed already: 200 with the entry as it was.
    let again = app
        .post(
            "/v1/suppressions",
            &json!({"address": "Carol@example.com", "reason": "another"}),
        )
        .await;
    assert_eq!(again.status(), 200);
    assert_eq!(again.json::<Value>().await.unwrap()["reason"], "complaint");

    let id = app
        .send_ok(&json!({"To": "Carol@example.com", "Bcc": "Carol@EXAMPLE.com", "Subject": "hi", "Body": "x"}))
        .await;
    let status = app.wait_until_terminal(&id).await;
    assert_eq!(status["status"], "failed");
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .starts_with("suppressed:"),
        "{status}"
    );
    assert_eq!(status["attempts"], 0, "{status}");
    assert_eq!(status["recipients"][0]["suppressed"]["reason"], "complaint");
    assert!(app
        .event_types(&id)
        .await
        .contains(&"suppressed".to_owned()));
    assert_eq!(app.smtp.sessions_opened(), 0, "a session was opened");
}

#[tokio::test]
async fn a_policy_refusal_does_not_suppress_the_address() {
    let app = spawn_app_with(picky_relay(), |_| {}).await;
    let id = app
        .send_ok(&json!({"To": "eve@example.com", "Subject": "x", "Body": "x"}))
        .await;
    assert_eq!(app.wait_until_terminal(&id).await["status"], "failed");
    assert!(addresses(&list(&app, "").await).is_empty());
    // Mailed again, she is asked for again.
    let id = app
        .send_ok(&json!({"To": "eve@example.com", "Subject": "y", "Body": "x"}))
        .await;
    app.wait_until_terminal(&id).await;
    assert_eq!(rcpts_for(&app, "eve@example.com"), 2);
}

#[tokio::test]
async fn the_list_pages_by_address_takes_addresses_off_and_is_per_tenant() {
    let app = spawn_app_with(Script::accept_all(), |_| {}).await;
    for (address, reason) in [
        ("d@example.com", "unsubscribed"),
        ("a@example.com", "complaint"),
        ("c@example.com", "complaint"),
        ("b@example.com", "complaint"),
        ("e@example.com", "complaint"),
    ] {
        let added = app
            .post(
                "/v1/suppressions",
                &json!({"address": address, "reason": reason}),
            )
            .await;
        assert_eq!(added.status(), 201);
    }
    let mut seen = Vec::new();
    let mut query = "?limit=2".to_owned();
    loop {
        let page = list(&app, &query).await;
        seen.extend(addresses(&page));
        match page["next_cursor"].as_str() {
            Some(cursor) => query = format!("?limit=2&cursor={cursor}"),
            None => break,
        }
    }
    assert_eq!(
        seen,
        ["a", "b", "c", "d", "e"].map(|l| format!("{l}@example.com"))
    );

    // Another tenant has a list of its own, and cannot see or change this one.
    let globex = app.producer("globex", &[Scope::Admin]).await;
    let theirs: Value = globex.get("/v1/suppressions").await.json().await.unwrap();
    assert!(addresses(&theirs).is_empty(), "{theirs}");
    let response = globex
        .request(reqwest::Method::DELETE, "/v1/suppressions/a%40example.com")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 404);
    let response = globex.get("/v1/suppressions?tenant=default").await;
    assert_problem(response, 400, "tenant").await;

    // Taken off (any case of the domain): mailed again.
    let delete = |path: &str| app.client.delete(format!("{}{path}", app.address)).send();
    assert_eq!(
        delete("/v1/suppressions/a%40EXAMPLE.com")
            .await
            .unwrap()
            .status(),
        204
    );
    assert_eq!(
        delete("/v1/suppressions/a%40example.com")
            .await
            .unwrap()
            .status(),
        404
    );
    let id = app
        .send_ok(&json!({"To": "a@example.com", "Subject": "back", "Body": "x"}))
        .await;
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");

    // Bad input names its field.
    let response = app
        .post(
            "/v1/suppressions",
            &json!({"address": "not an address", "reason": "x"}),
        )
        .await;
    assert_problem(response, 400, "address").await;
    let response = app
        .post(
            "/v1/suppressions",
            &json!({"address": "z@example.com", "reason": " "}),
        )
        .await;
    assert_problem(response, 400, "reason").await;
}
