//! The operator's console at `/ui`: plain HTTP tests of its security (CSP, cookie
//! flags, CSRF, tenant isolation, sign-in scopes), then tests in a real browser
//! (Debian's chromium under chromedriver) that sign in, search, open a timeline,
//! cancel, verify, look at webhook attempts, and show a hostile subject as text. The
//! browser tests save a screenshot of every page under
//! `target/console-screenshots/<test name>/`.

use crate::helpers;

use std::time::Duration;

use helpers::browser::Browser;
use helpers::{create_key, message_with, spawn_app, spawn_app_with, Event, Script, TestApp};
use postwire::keys::Scope;
use serde_json::json;

/// A signed-in console session over plain HTTP: its cookie and CSRF token.
struct Console {
    base: String,
    http: reqwest::Client,
    cookie: String,
    csrf: String,
}

/// A client that does not follow redirects (the tests look at them).
fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(15))
        .build()
        .unwrap()
}

/// Posts `key` to the sign-in form.
async fn post_login(app: &TestApp, key: &str) -> reqwest::Response {
    http()
        .post(format!("{}/ui/login", app.address))
        .form(&[("api_key", key)])
        .send()
        .await
        .expect("POST /ui/login")
}

/// The value of the first `name="csrf"` field of a page.
fn csrf_of(html: &str) -> String {
    let at = html.find("name=\"csrf\" value=\"").expect("a CSRF field") + 19;
    html[at..at + html[at..].find('"').unwrap()].to_owned()
}

impl Console {
    async fn sign_in(app: &TestApp, key: &str) -> Console {
        let response = post_login(app, key).await;
        assert_eq!(response.status(), 303, "sign-in redirects");
        let set_cookie = response.headers()["set-cookie"]
            .to_str()
            .unwrap()
            .to_owned();
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        let mut console = Console {
            base: app.address.clone(),
            http: http(),
            cookie,
            csrf: String::new(),
        };
        let overview = console.get("/ui").await;
        assert_eq!(overview.status(), 200);
        console.csrf = csrf_of(&overview.text().await.unwrap());
        console
    }

    async fn get(&self, path: &str) -> reqwest::Response {
        self.http
            .get(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .send()
            .await
            .unwrap()
    }

    async fn post(&self, path: &str, form: &[(&str, &str)]) -> reqwest::Response {
        self.http
            .post(format!("{}{path}", self.base))
            .header("cookie", &self.cookie)
            .form(form)
            .send()
            .await
            .unwrap()
    }
}

/// An SMTP server that answers every DATA with 451: messages stay deferred.
fn always_deferring() -> Script {
    Script::new(|event, _| match event {
        Event::DataEnd { .. } => helpers::Action::reply(451, "4.3.0 try again later"),
        _ => helpers::Action::Default,
    })
}

/// Retries an hour apart: a deferred message stays deferred for the test.
fn slow_retries(s: &mut postwire::config::Settings) {
    s.retry.initial = Duration::from_secs(3600);
    s.retry.max_delay = Duration::from_secs(7200);
}

async fn deferred_message(app: &TestApp, to: &str) -> String {
    let id = app
        .send_ok(&message_with(json!({"To": to, "Subject": "Stuck"})))
        .await;
    // Deferred by the 451, or (on a loaded machine) held back before an attempt.
    app.wait_for(&id, "deferred", |m| m["status"] == "deferred")
        .await;
    id
}

/// Messages that failed for want of their stored content (as in `reliability.rs`),
/// their jobs in the dead-letter queue, and the content taken from them.
struct DeadLetters {
    app: TestApp,
    ids: Vec<String>,
    contents: Vec<Vec<u8>>,
    /// Stops the worker when the test ends.
    _worker: tokio_util::sync::DropGuard,
}

/// `n` dead letters: the messages are accepted by an API-only app, lose their content,
/// and only then does a worker start, fail them and dead-letter their jobs.
async fn dead_letters(n: usize) -> DeadLetters {
    let app = helpers::spawn_role_with(postwire::Role::Api, Script::accept_all(), |_| {}).await;
    let mut ids = Vec::new();
    let mut contents = Vec::new();
    for i in 0..n {
        let id = app
            .send_ok(&message_with(json!({
                "To": format!("dead{i}@example.com"),
                "Subject": format!("Dead letter {i}"),
            })))
            .await;
        let raw: Vec<u8> = sqlx::query_scalar(
            "DELETE FROM message_bodies WHERE message_id = $1::uuid RETURNING raw",
        )
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
        ids.push(id);
        contents.push(raw);
    }
    let worker = postwire::Application::build(app.settings.clone(), postwire::Role::Worker)
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(worker.run(stop.clone()));
    for id in &ids {
        let status = app.wait_until_terminal(id).await;
        assert_eq!(status["status"], "failed", "{status}");
    }
    DeadLetters {
        app,
        ids,
        contents,
        _worker: stop.drop_guard(),
    }
}

impl DeadLetters {
    /// Puts message `i`'s content back, so that a requeue can deliver it.
    async fn restore(&self, i: usize) {
        sqlx::query("INSERT INTO message_bodies (message_id, raw) VALUES ($1::uuid, $2)")
            .bind(&self.ids[i])
            .bind(&self.contents[i])
            .execute(&self.app.db)
            .await
            .unwrap();
    }
}

/// Polls `/ui/dead-letters` until every message of `ids` is listed: the worker
/// dead-letters a job just after failing its message.
async fn wait_for_dead_letters(console: &Console, ids: &[String]) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = console.get("/ui/dead-letters").await.text().await.unwrap();
        if ids.iter().all(|id| page.contains(id.as_str())) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not all of {ids:?} dead-lettered: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits until the browser's address contains `part` (a form's redirect landed).
async fn wait_for_url(browser: &Browser, part: &str) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let url = browser.url().await;
        if url.contains(part) {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "still at {url}, not {part}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

// ---- Plain HTTP: sign-in, headers, CSRF, tenancy -------------------------------

#[tokio::test]
async fn signing_in_with_a_send_key_is_refused() {
    let app = spawn_app().await;
    let send_only = create_key(&app.db, &[Scope::Send, Scope::Read], None).await;
    let response = post_login(&app, &send_only).await;
    assert_eq!(response.status(), 401);
    assert!(response.headers().get("set-cookie").is_none());
    let page = response.text().await.unwrap();
    assert!(
        page.contains("neither the operator nor the admin scope"),
        "{page}"
    );
    assert!(!page.contains(&send_only), "the key is never echoed back");

    let unknown = post_login(&app, "pw_0123456789ab_not-a-key").await;
    assert_eq!(unknown.status(), 401);
    // Without a session, pages lead to the sign-in form.
    let anonymous = http()
        .get(format!("{}/ui/messages", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(anonymous.status(), 303);
    assert_eq!(anonymous.headers()["location"], "/ui/login");
}

#[tokio::test]
async fn console_pages_carry_a_strict_content_security_policy_and_safe_cookies() {
    let app = spawn_app().await;
    let login = http()
        .get(format!("{}/ui/login", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), 200);
    let csp = login.headers()["content-security-policy"].to_str().unwrap();
    assert_eq!(csp, postwire::console::CSP);
    assert!(csp.contains("script-src 'self'") && !csp.contains("unsafe-inline"));
    assert!(csp.contains("frame-ancestors 'none'"));
    assert_eq!(login.headers()["x-content-type-options"], "nosniff");
    let html = login.text().await.unwrap();
    assert!(
        !html.contains("<script>") && !html.contains("style="),
        "nothing inline"
    );

    let operator = create_key(&app.db, &[Scope::Operator], None).await;
    let plain = post_login(&app, &operator).await;
    let cookie = plain.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(cookie.contains("HttpOnly"), "{cookie}");
    assert!(cookie.contains("SameSite=Strict"), "{cookie}");
    assert!(cookie.contains("Path=/ui"), "{cookie}");
    assert!(!cookie.contains("Secure"), "plain HTTP: {cookie}");
    // Behind a TLS-terminating proxy the cookie is Secure.
    let tls = http()
        .post(format!("{}/ui/login", app.address))
        .header("x-forwarded-proto", "https")
        .form(&[("api_key", operator.as_str())])
        .send()
        .await
        .unwrap();
    let cookie = tls.headers()["set-cookie"].to_str().unwrap();
    assert!(cookie.contains("; Secure"), "{cookie}");
}

#[tokio::test]
async fn a_post_without_the_sessions_csrf_token_is_refused() {
    let app = spawn_app_with(always_deferring(), slow_retries).await;
    let id = deferred_message(&app, "ann@example.com").await;
    let operator = create_key(&app.db, &[Scope::Operator], None).await;
    let console = Console::sign_in(&app, &operator).await;
    let cancel = format!("/ui/messages/{id}/cancel");

    let none = console.post(&cancel, &[]).await;
    assert_eq!(none.status(), 403);
    let wrong = console.post(&cancel, &[("csrf", "not-the-token")]).await;
    assert_eq!(wrong.status(), 403);
    // Another session's token is not this one's.
    let other = Console::sign_in(&app, &operator).await;
    let crossed = console.post(&cancel, &[("csrf", &other.csrf)]).await;
    assert_eq!(crossed.status(), 403);
    assert_eq!(app.message(&id).await["status"], "deferred");

    let right = console.post(&cancel, &[("csrf", &console.csrf)]).await;
    assert_eq!(right.status(), 303);
    assert_eq!(app.message(&id).await["status"], "cancelled");

    // Signing out ends the session: its cookie opens nothing any more.
    let out = console.post("/ui/logout", &[("csrf", &console.csrf)]).await;
    assert_eq!(out.status(), 303);
    assert_eq!(console.get("/ui").await.status(), 303);
    assert_eq!(
        other.get("/ui").await.status(),
        200,
        "only that session ended"
    );
}

#[tokio::test]
async fn an_admin_of_another_tenant_gets_404_for_a_message_page() {
    let app = spawn_app().await;
    let acme = app
        .producer("acme", &[Scope::Send, Scope::Read, Scope::Admin])
        .await;
    let globex = app.producer("globex", &[Scope::Admin]).await;
    let id = acme
        .send_ok(&json!({
            "To": "ann@example.com", "Subject": "Acme's secret plan",
            "Body": "<p>only for acme</p>", "IsHtml": true,
        }))
        .await;
    acme.wait_until_terminal(&id).await;

    let theirs = Console::sign_in(&app, &globex.key).await;
    for path in [
        format!("/ui/messages/{id}"),
        format!("/ui/messages/{id}/preview"),
    ] {
        let response = theirs.get(&path).await;
        assert_eq!(response.status(), 404, "{path}");
        let page = response.text().await.unwrap();
        assert!(!page.contains("secret plan") && !page.contains("only for acme"));
    }
    let search = theirs.get("/ui/messages?subject=secret").await;
    assert!(!search.text().await.unwrap().contains("secret plan"));
    // Nor can it pick acme's tenant.
    let picked = theirs.get("/ui/messages?tenant=acme").await;
    assert_eq!(picked.status(), 400);

    // Acme's admin sees it, and the preview is sandboxed.
    let own = Console::sign_in(&app, &acme.key).await;
    let page = own.get(&format!("/ui/messages/{id}")).await;
    assert_eq!(page.status(), 200);
    assert!(page.text().await.unwrap().contains("secret plan"));
    let preview = own.get(&format!("/ui/messages/{id}/preview")).await;
    assert_eq!(preview.status(), 200);
    let csp = preview.headers()["content-security-policy"]
        .to_str()
        .unwrap();
    assert!(
        csp.starts_with("sandbox;") && csp.contains("default-src 'none'"),
        "{csp}"
    );
    assert!(preview.text().await.unwrap().contains("only for acme"));
}

#[tokio::test]
async fn a_revoked_key_ends_its_console_sessions() {
    let app = spawn_app().await;
    let operator = create_key(&app.db, &[Scope::Operator], None).await;
    let console = Console::sign_in(&app, &operator).await;
    let store = postwire::store::Store::from_pool(app.db.clone());
    let (lookup, _) = postwire::keys::split(&operator).unwrap();
    store.revoke_api_key(lookup).await.unwrap();
    assert_eq!(console.get("/ui").await.status(), 303);
    let post = console
        .post(
            "/ui/suppressions",
            &[
                ("csrf", &console.csrf),
                ("address", "a@b.c"),
                ("reason", "x"),
            ],
        )
        .await;
    assert_eq!(post.status(), 403);
}

#[tokio::test]
async fn a_requeued_dead_letter_is_delivered_and_its_history_says_it_was_requeued() {
    let dead = dead_letters(1).await;
    let app = &dead.app;
    let id = &dead.ids[0];
    let operator = create_key(&app.db, &[Scope::Operator], None).await;
    let console = Console::sign_in(app, &operator).await;
    wait_for_dead_letters(&console, &dead.ids).await;
    dead.restore(0).await;

    let requeued = console
        .post(
            "/ui/dead-letters/requeue",
            &[("csrf", &console.csrf), ("message_id", id)],
        )
        .await;
    assert_eq!(requeued.status(), 303);
    assert_eq!(
        requeued.headers()["location"],
        "/ui/dead-letters?done=requeued"
    );
    assert_eq!(app.wait_until_terminal(id).await["status"], "sent");

    // GET /v1/messages/{id}/events: failed, then requeued (by whom), then sent.
    let types = app.event_types(id).await;
    let at = |kind: &str| {
        types
            .iter()
            .position(|t| t == kind)
            .unwrap_or_else(|| panic!("no {kind} event: {types:?}"))
    };
    assert!(
        at("failed") < at("requeued") && at("requeued") < at("sent"),
        "{types:?}"
    );
    let history = app.history(id).await;
    let event = history.iter().find(|e| e["type"] == "requeued").unwrap();
    let detail = event["detail"].as_str().unwrap();
    assert!(detail.contains("dead-letter queue"), "{detail}");

    // The console's timeline shows it, and the dead letter is gone.
    let page = console
        .get(&format!("/ui/messages/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(page.contains("<li class=\"event requeued\">"), "{page}");
    let list = console.get("/ui/dead-letters").await.text().await.unwrap();
    assert!(!list.contains(id.as_str()), "{list}");
}

// ---- In a real browser -------------------------------------------------------

#[tokio::test]
async fn an_operator_signs_in_finds_a_message_by_recipient_and_opens_its_timeline() {
    let app = spawn_app().await;
    for to in ["bob@example.com", "carol@example.com"] {
        let id = app.send_ok(&message_with(json!({"To": to}))).await;
        app.wait_until_terminal(&id).await;
    }
    let id = app
        .send_ok(&message_with(json!({
            "To": "Ann <ann@example.com>",
            "Subject": "Quarterly report",
            "Body": "<h1>Report</h1><p>Numbers are up.</p>",
            "IsHtml": true,
            "Attachments": [{"FileName": "report.csv", "ContentType": "text/csv",
                             "ContentData": "YSxiCjEsMgo=", "ContentTransferEncoding": "base64"}],
        })))
        .await;
    app.wait_until_terminal(&id).await;
    let operator = create_key(&app.db, &[Scope::Operator], None).await;

    let browser = Browser::start("an_operator_signs_in_finds_a_message", &app.address).await;
    browser.open("/ui/login").await;
    browser.screenshot("sign-in").await;
    browser.sign_in(&operator).await;
    browser.wait_for("#total-sent").await;
    assert_eq!(browser.text("#total-sent").await, "3");
    assert_eq!(browser.text("#total-accepted").await, "3");
    browser.screenshot("overview").await;

    browser.click("a[href='/ui/messages']").await;
    browser.fill("#recipient", "ann@").await;
    browser.click("#search").await;
    browser.wait_for("#results").await;
    assert_eq!(
        browser.count("#results tbody tr").await,
        1,
        "only Ann's message matches"
    );
    assert!(browser.text("#results").await.contains("Quarterly report"));
    browser.screenshot("messages").await;

    browser.click("#results a.message-link").await;
    browser.wait_for("#timeline").await;
    assert_eq!(browser.text("#status").await, "sent");
    let timeline = browser.text("#timeline").await;
    for kind in ["accepted", "attempt", "sent"] {
        assert!(timeline.contains(kind), "{timeline}");
    }
    assert!(
        timeline.contains("250"),
        "the SMTP reply is shown: {timeline}"
    );
    assert!(browser.text("#attachments").await.contains("report.csv"));
    browser.find("iframe.preview[sandbox]").await;
    browser.screenshot("message").await;

    // The other pages render too (screenshots for the README and for people).
    for (path, name) in [
        ("/ui/connections", "connections"),
        ("/ui/webhooks", "webhooks"),
        ("/ui/suppressions", "suppressions"),
        ("/ui/dead-letters", "dead-letters"),
    ] {
        browser.open(path).await;
        browser.wait_for("h1").await;
        browser.screenshot(name).await;
    }
    // Narrow screen: still usable.
    browser.client.set_window_size(390, 844).await.unwrap();
    browser.open(&format!("/ui/messages/{id}")).await;
    browser.wait_for("#timeline").await;
    browser.screenshot("message-narrow").await;

    browser.click("button.link").await; // Sign out
    browser.wait_for("#api_key").await;
    browser.open("/ui").await;
    browser.wait_for("#api_key").await;
    browser.close().await;
}

#[tokio::test]
async fn an_operator_cancels_a_deferred_message() {
    let app = spawn_app_with(always_deferring(), slow_retries).await;
    let id = deferred_message(&app, "dave@example.com").await;
    let operator = create_key(&app.db, &[Scope::Operator], None).await;

    let browser = Browser::start("an_operator_cancels_a_deferred_message", &app.address).await;
    browser.sign_in(&operator).await;
    browser.open("/ui/messages?status=deferred").await;
    browser.click("#results a.message-link").await;
    browser.wait_for("#cancel").await;
    assert_eq!(browser.text("#status").await, "deferred");
    assert!(browser.text("#timeline").await.contains("deferred"));
    browser.screenshot("deferred-message").await;
    browser.click("#cancel").await;
    browser.accept_dialog().await;
    browser.wait_for("#notice").await;
    assert_eq!(browser.text("#status").await, "cancelled");
    assert!(browser.text("#timeline").await.contains("cancelled"));
    browser.screenshot("cancelled-message").await;
    assert_eq!(app.message(&id).await["status"], "cancelled");
    browser.close().await;
}

#[tokio::test]
async fn an_operator_verifies_a_connection_and_edits_its_limits() {
    let app = spawn_app().await;
    let created = app
        .post(
            "/v1/connections",
            &json!({"name": "relay", "host": "127.0.0.1", "port": app.smtp.port(),
                    "security": "none", "max_connections": 3}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let operator = create_key(&app.db, &[Scope::Operator], None).await;

    let browser = Browser::start("an_operator_verifies_a_connection", &app.address).await;
    browser.sign_in(&operator).await;
    browser.open("/ui/connections").await;
    browser.click("a[href='/ui/connections/relay']").await;
    browser.click("#verify").await;
    browser.wait_for("#verify-report").await;
    assert_eq!(browser.text("#verify-result").await, "ok");
    let report = browser.text("#verify-report").await;
    assert!(report.contains("connected to 127.0.0.1"), "{report}");
    assert!(
        report.contains("ehlo") || report.contains("EHLO"),
        "{report}"
    );
    browser.screenshot("verified-connection").await;

    browser.fill("#max_connections", "7").await;
    browser.fill("#max_rate_per_second", "20").await;
    browser.click("#save-limits").await;
    browser.accept_dialog().await;
    browser.wait_for("#notice").await;
    let stored: serde_json::Value = app.get("/v1/connections/relay").await.json().await.unwrap();
    assert_eq!(stored["max_connections"], 7);
    assert_eq!(stored["max_rate_per_second"], 20);
    browser.screenshot("connection-limits").await;
    browser.close().await;
}

#[tokio::test]
async fn an_operator_sees_a_delivered_webhook_attempt() {
    let app = spawn_app_with(Script::accept_all(), |s| {
        s.webhooks.allow_http = true;
        s.webhooks.allow_private_targets = true;
    })
    .await;
    let receiver = helpers::WebhookReceiver::start().await;
    let created = app
        .post(
            "/v1/webhooks",
            &json!({"url": receiver.url(), "events": ["message.sent"], "description": "the receiver"}),
        )
        .await;
    assert_eq!(created.status(), 201);
    let created: serde_json::Value = created.json().await.unwrap();
    receiver.set_secrets(&[created["secret"].as_str().unwrap().to_owned()]);
    let webhook = created["id"].as_str().unwrap().to_owned();
    let id = app.send_ok(&message_with(json!({}))).await;
    app.wait_until_terminal(&id).await;
    receiver.wait_for(1, Duration::from_secs(30)).await;
    let operator = create_key(&app.db, &[Scope::Operator], None).await;

    let browser =
        Browser::start("an_operator_sees_a_delivered_webhook_attempt", &app.address).await;
    browser.sign_in(&operator).await;
    browser.open("/ui/webhooks").await;
    browser.click("a.webhook-link").await;
    // The attempt is recorded just after the receiver answered.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let page = browser.source().await;
        if page.contains("delivered") && page.contains(&id[..8]) {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivered attempt shown"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
        browser.open(&format!("/ui/webhooks/{webhook}")).await;
    }
    assert!(browser.text("#attempts").await.contains("message.sent"));
    browser.screenshot("webhook-attempts").await;
    browser.click("#recover").await;
    browser.accept_dialog().await;
    browser.wait_for("#notice").await;
    browser.close().await;
}

#[tokio::test]
async fn a_subject_with_a_script_tag_shows_as_text() {
    let app = spawn_app().await;
    let hostile = "<script>alert(1)</script>";
    let id = app
        .send_ok(&message_with(json!({
            "To": "eve@example.com",
            "Subject": hostile,
            "Body": "<p>hi</p><script>alert(2)</script><img src=\"x\" onerror=\"alert(3)\">",
            "IsHtml": true,
        })))
        .await;
    app.wait_until_terminal(&id).await;
    let operator = create_key(&app.db, &[Scope::Operator], None).await;

    let browser = Browser::start("a_subject_with_a_script_tag_shows_as_text", &app.address).await;
    browser.sign_in(&operator).await;
    browser.open("/ui/messages?recipient=eve").await;
    browser.wait_for("#results").await;
    assert!(browser.text("#results").await.contains(hostile));
    assert!(
        !browser.alert_open().await,
        "no script ran on the search page"
    );
    browser.open(&format!("/ui/messages/{id}")).await;
    browser.wait_for("iframe.preview").await;
    assert_eq!(browser.text("#subject").await, hostile);
    // Give the sandboxed preview time to (not) run its scripts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !browser.alert_open().await,
        "no script ran on the message page"
    );
    let source = browser.source().await;
    assert!(source.contains("&lt;script&gt;alert(1)&lt;/script&gt;"));
    browser.screenshot("hostile-subject").await;
    browser.close().await;
}

#[tokio::test]
async fn an_operator_requeues_a_dead_letter_and_discards_another() {
    let dead = dead_letters(2).await;
    let app = &dead.app;
    let (requeue, discard) = (&dead.ids[0], &dead.ids[1]);
    let operator = create_key(&app.db, &[Scope::Operator], None).await;
    wait_for_dead_letters(&Console::sign_in(app, &operator).await, &dead.ids).await;
    // Its content back, the first one can be delivered once requeued.
    dead.restore(0).await;

    let browser = Browser::start("an_operator_requeues_a_dead_letter", &app.address).await;
    browser.sign_in(&operator).await;
    browser.open("/ui/dead-letters").await;
    browser.wait_for("h1").await;
    assert_eq!(browser.count("tr[data-message]").await, 2);
    browser.screenshot("dead-letters").await;

    dead_letter_action(&browser, requeue, "requeue", "requeued").await;
    assert_eq!(browser.count("tr[data-message]").await, 1);
    assert_eq!(app.wait_until_terminal(requeue).await["status"], "sent");

    dead_letter_action(&browser, discard, "discard", "discarded").await;
    assert_eq!(browser.count("tr[data-message]").await, 0);
    assert!(browser
        .source()
        .await
        .contains("The dead-letter queue is empty."));
    browser.screenshot("dead-letters-settled").await;
    // Discarded: its message stays failed, and was not queued again.
    assert_eq!(app.message(discard).await["status"], "failed");
    assert!(!app
        .event_types(discard)
        .await
        .contains(&"requeued".to_owned()));

    browser.open(&format!("/ui/messages/{requeue}")).await;
    browser.wait_for("#timeline").await;
    assert_eq!(browser.text("#status").await, "sent");
    let timeline = browser.text("#timeline").await;
    for kind in ["failed", "requeued", "sent"] {
        assert!(timeline.contains(kind), "{timeline}");
    }
    browser.screenshot("requeued-message").await;
    browser.close().await;
}

#[tokio::test]
async fn an_operator_retries_a_deferred_message_now_and_it_is_delivered() {
    // 451 until the test says otherwise; retries an hour apart.
    let deferring = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
    let flag = deferring.clone();
    let script = Script::new(move |event, _| match event {
        Event::DataEnd { .. } if flag.load(std::sync::atomic::Ordering::SeqCst) => {
            helpers::Action::reply(451, "4.3.0 try again later")
        }
        _ => helpers::Action::Default,
    });
    let app = spawn_app_with(script, slow_retries).await;
    let id = app
        .send_ok(&message_with(
            json!({"To": "erin@example.com", "Subject": "Retry me"}),
        ))
        .await;
    // Deferred by the 451 itself, so that the next attempt is an hour away.
    app.wait_for(&id, "deferred after an attempt", |m| {
        m["status"] == "deferred" && m["attempts"].as_i64().unwrap_or(0) >= 1
    })
    .await;
    deferring.store(false, std::sync::atomic::Ordering::SeqCst);
    let operator = create_key(&app.db, &[Scope::Operator], None).await;

    let browser = Browser::start("an_operator_retries_a_deferred_message", &app.address).await;
    browser.sign_in(&operator).await;
    browser.open(&format!("/ui/messages/{id}")).await;
    browser.wait_for("#retry").await;
    assert_eq!(browser.text("#status").await, "deferred");
    browser.click("#retry").await;
    browser.accept_dialog().await;
    wait_for_url(&browser, "done=retried").await;
    browser.wait_for("#notice").await;
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");
    browser.open(&format!("/ui/messages/{id}")).await;
    browser.wait_for("#timeline").await;
    assert_eq!(browser.text("#status").await, "sent");
    assert!(browser.text("#timeline").await.contains("sent"));
    browser.screenshot("retried-message").await;
    browser.close().await;
}

#[tokio::test]
async fn an_operator_suppresses_an_address_and_removes_it_again() {
    let app = spawn_app().await;
    let operator = create_key(&app.db, &[Scope::Operator], None).await;

    let browser = Browser::start("an_operator_suppresses_an_address", &app.address).await;
    browser.sign_in(&operator).await;
    browser.open("/ui/suppressions").await;
    browser.fill("#address", "frank@example.com").await;
    browser.fill("#reason", "asked by phone").await;
    browser.click("#add").await;
    wait_for_url(&browser, "done=added").await;
    browser.wait_for("#notice").await;
    let table = browser.text("#suppressions").await;
    assert!(
        table.contains("frank@example.com") && table.contains("asked by phone"),
        "{table}"
    );
    let stored = app.get("/v1/suppressions").await.json().await.unwrap();
    assert_eq!(
        crate::suppressions::addresses(&stored),
        ["frank@example.com"]
    );
    browser.screenshot("suppressed").await;

    browser.click("#suppressions button.link").await;
    browser.accept_dialog().await;
    wait_for_url(&browser, "done=removed").await;
    browser.wait_for("#notice").await;
    assert_eq!(browser.count("#suppressions").await, 0);
    let stored = app.get("/v1/suppressions").await.json().await.unwrap();
    assert!(crate::suppressions::addresses(&stored).is_empty());
    browser.screenshot("unsuppressed").await;
    browser.close().await;
}

/// Presses `action` (`requeue` or `discard`) on the dead letter of `message`, confirms,
/// and waits for the page that says `done`.
async fn dead_letter_action(browser: &Browser, message: &str, action: &str, done: &str) {
    browser
        .click(&format!(
            "tr[data-message='{message}'] form[action='/ui/dead-letters/{action}'] button"
        ))
        .await;
    browser.accept_dialog().await;
    wait_for_url(browser, &format!("done={done}")).await;
    browser.wait_for("#notice").await;
}
