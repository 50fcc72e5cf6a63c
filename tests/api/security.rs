//! API keys, scopes, stored connections and their secrets, TLS.

use crate::helpers;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use helpers::{
    create_key, non_loopback_ip, simple_message, spawn_app, spawn_app_with, Action, Event, Script,
    TestApp, TestSmtpServer, TlsMode,
};
use postwire::keys::Scope;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

async fn request(app: &TestApp, method: &str, path: &str, key: Option<&str>) -> reqwest::Response {
    let url = format!("{}{path}", app.address);
    let mut builder = match method {
        "GET" => app.anonymous.get(url),
        _ => app.anonymous.post(url).json(&simple_message()),
    };
    if let Some(key) = key {
        builder = builder.bearer_auth(key);
    }
    builder.send().await.unwrap()
}

#[tokio::test]
async fn requests_without_a_valid_key_get_401_with_www_authenticate() {
    let app = spawn_app().await;
    for key in [None, Some("pw_000000000000_nope"), Some("not-a-key")] {
        let response = request(&app, "POST", "/v1/messages", key).await;
        assert_eq!(response.status().as_u16(), 401, "{key:?}");
        assert!(response.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Bearer"));
    }
    let response = request(
        &app,
        "GET",
        &format!("/v1/messages/{}", uuid::Uuid::now_v7()),
        None,
    )
    .await;
    assert_eq!(response.status().as_u16(), 401);
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test]
async fn the_x_api_key_header_works_too() {
    let app = spawn_app().await;
    let key = create_key(&app.db, &[Scope::Send], None).await;
    let response = app
        .anonymous
        .post(format!("{}/v1/messages", app.address))
        .header("X-API-Key", &key)
        .json(&simple_message())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 202);
}

#[tokio::test]
async fn a_key_without_the_scope_gets_403() {
    let app = spawn_app().await;
    let read_only = create_key(&app.db, &[Scope::Read], None).await;
    let send_only = create_key(&app.db, &[Scope::Send], None).await;
    assert_eq!(
        request(&app, "POST", "/v1/messages", Some(&read_only))
            .await
            .status()
            .as_u16(),
        403
    );
    let id = uuid::Uuid::now_v7();
    assert_eq!(
        request(&app, "GET", &format!("/v1/messages/{id}"), Some(&send_only))
            .await
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        request(&app, "GET", "/v1/connections", Some(&send_only))
            .await
            .status()
            .as_u16(),
        403
    );
    assert_eq!(
        request(&app, "GET", &format!("/v1/messages/{id}"), Some(&read_only))
            .await
            .status()
            .as_u16(),
        404
    );
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test]
async fn a_revoked_key_is_refused() {
    let app = spawn_app().await;
    let key = create_key(&app.db, &[Scope::Send], None).await;
    assert_eq!(
        request(&app, "POST", "/v1/messages", Some(&key))
            .await
            .status()
            .as_u16(),
        202
    );
    let store = postwire::store::Store::from_pool(app.db.clone());
    let lookup = postwire::keys::split(&key).unwrap().0.to_owned();
    assert_eq!(store.revoke_api_key(&lookup).await.unwrap(), 1);
    assert_eq!(
        request(&app, "POST", "/v1/messages", Some(&key))
            .await
            .status()
            .as_u16(),
        401
    );
}

#[tokio::test]
async fn only_a_hash_of_each_key_is_stored() {
    let app = spawn_app().await;
    let key = create_key(&app.db, &[Scope::Send], None).await;
    let secret = postwire::keys::split(&key).unwrap().1.to_owned();
    let dump: String =
        sqlx::query_scalar("SELECT string_agg(row_to_json(k)::text, '') FROM api_keys k")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(!dump.contains(&secret));
    assert!(
        key.starts_with("pw_") && secret.len() >= 22,
        "≥128 random bits"
    );
}

#[tokio::test]
async fn health_readiness_stay_open() {
    let app = spawn_app().await;
    assert_eq!(
        request(&app, "GET", "/healthz", None)
            .await
            .status()
            .as_u16(),
        200
    );
    let ready = request(&app, "GET", "/readyz", None).await;
    assert_eq!(ready.status().as_u16(), 200);
}

/// `POST /v1/connections/relay-1/verify`: the report of each step.
async fn verify(app: &TestApp) -> Value {
    app.post("/v1/connections/relay-1/verify", &json!({}))
        .await
        .json()
        .await
        .unwrap()
}

/// Sends a message through `relay-1` and waits until it is deferred; its status.
async fn deferred_send(app: &TestApp) -> Value {
    let mut send = simple_message();
    send["connection"] = json!("relay-1");
    let id = app.send_ok(&send).await;
    app.wait_for(&id, "deferred", |m| m["status"] == "deferred")
        .await
}

/// Asserts that no credentials and no mail were offered to the server.
fn assert_no_auth_or_mail(commands: &[String]) {
    assert!(
        !commands.iter().any(|c| {
            let c = c.to_ascii_uppercase();
            c.starts_with("AUTH") || c.starts_with("MAIL")
        }),
        "{commands:?}"
    );
}

/// The names of a verify report's steps, in order.
fn step_names(report: &Value) -> Vec<&str> {
    report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect()
}

fn connection_body(port: u16, password: &str) -> Value {
    json!({
        "name": "relay-1",
        "host": "127.0.0.1",
        "port": port,
        "security": "none",
        "username": "mailer",
        "password": password,
        "default_from": "Relay <relay@example.com>",
        "max_connections": 2,
    })
}

#[tokio::test]
async fn a_stored_connection_is_used_by_sends_and_its_password_never_shows() {
    let password = "s3cret-Passw0rd!";
    let app = spawn_app_with(Script::require_auth("mailer", password), |_| {}).await;
    let created = app
        .post(
            "/v1/connections",
            &connection_body(app.smtp.port(), password),
        )
        .await;
    assert_eq!(created.status().as_u16(), 201);
    assert_eq!(created.headers()["location"], "/v1/connections/relay-1");
    let text = created.text().await.unwrap();
    assert!(
        !text.contains(password) && !text.contains("\"password\""),
        "{text}"
    );
    let view: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(view["has_password"], true);

    for path in ["/v1/connections", "/v1/connections/relay-1"] {
        let body = app.get(path).await.text().await.unwrap();
        assert!(!body.contains(password), "{path}: {body}");
    }
    // At rest: ciphertext only.
    let dump: String = sqlx::query_scalar(
        "SELECT row_to_json(c)::text || encode(password_enc, 'escape') FROM smtp_connections c",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(!dump.contains(password));

    let mut body = simple_message();
    body["connection"] = json!("relay-1");
    let id = app.send_ok(&body).await;
    let status = app.wait_until_terminal(&id).await;
    assert_eq!(status["status"], "sent", "{status}");
    assert_eq!(status["connection"], "relay-1");
    let mails = app.smtp.wait_for_messages(1, WAIT).await;
    assert_eq!(mails[0].auth_user.as_deref(), Some("mailer"));
    assert_eq!(
        mails[0].mail_from, "relay@example.com",
        "the connection's default sender"
    );
}

#[tokio::test]
async fn an_api_keys_default_connection_is_used_when_a_send_names_none() {
    let app = spawn_app_with(Script::require_auth("mailer", "pw"), |_| {}).await;
    app.post("/v1/connections", &connection_body(app.smtp.port(), "pw"))
        .await;
    let key = create_key(&app.db, &[Scope::Send, Scope::Read], Some("relay-1")).await;
    let response = request(&app, "POST", "/v1/messages", Some(&key)).await;
    assert_eq!(response.status().as_u16(), 202);
    let id = response.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned();
    assert_eq!(app.wait_until_terminal(&id).await["connection"], "relay-1");
}

#[tokio::test]
async fn connections_can_be_listed_patched_and_deleted_with_guards() {
    let app = spawn_app_with(Script::reject_data(451), |s| {
        s.retry.initial = Duration::from_secs(30);
    })
    .await;
    assert_eq!(
        app.post("/v1/connections", &connection_body(app.smtp.port(), "pw"))
            .await
            .status()
            .as_u16(),
        201
    );
    assert_eq!(
        app.post("/v1/connections", &connection_body(app.smtp.port(), "pw"))
            .await
            .status()
            .as_u16(),
        409
    );
    let mut bad = connection_body(app.smtp.port(), "pw");
    bad["name"] = json!("bad name");
    bad["default_from"] = json!("nope");
    let problem =
        helpers::assert_problem(app.post("/v1/connections", &bad).await, 400, "name").await;
    assert!(problem["errors"]
        .as_array()
        .unwrap()
        .iter()
        .any(|e| e["field"] == "default_from"));

    let patched: Value = app
        .client
        .patch(format!("{}/v1/connections/relay-1", app.address))
        .json(&json!({"max_connections": 5, "username": null, "password": null}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(patched["max_connections"], 5);
    assert_eq!(patched["has_password"], false);
    assert!(patched["username"].is_null());

    // A deferred message still waits on the connection: deleting needs force.
    let mut body = simple_message();
    body["connection"] = json!("relay-1");
    let id = app.send_ok(&body).await;
    app.wait_for(&id, "deferred", |m| m["status"] == "deferred")
        .await;
    let delete = |force: bool| {
        app.client
            .delete(format!(
                "{}/v1/connections/relay-1{}",
                app.address,
                if force { "?force=true" } else { "" }
            ))
            .send()
    };
    assert_eq!(delete(false).await.unwrap().status().as_u16(), 409);
    assert_eq!(delete(true).await.unwrap().status().as_u16(), 204);
    assert_eq!(
        app.get("/v1/connections/relay-1").await.status().as_u16(),
        404
    );
    let mut body = simple_message();
    body["connection"] = json!("relay-1");
    helpers::assert_problem(app.send(&body).await, 404, "connection").await;
}

#[tokio::test]
async fn verify_reports_each_step_and_the_one_that_failed() {
    let app = spawn_app_with(Script::require_auth("mailer", "right"), |_| {}).await;
    app.post(
        "/v1/connections",
        &connection_body(app.smtp.port(), "right"),
    )
    .await;
    let report: Value = verify(&app).await;
    assert_eq!(report["ok"], true, "{report}");
    let steps: Vec<&str> = step_names(&report);
    assert_eq!(steps, ["connect", "auth"]);

    app.client
        .patch(format!("{}/v1/connections/relay-1", app.address))
        .json(&json!({"password": "wrong"}))
        .send()
        .await
        .unwrap();
    let report: Value = verify(&app).await;
    assert_eq!(report["ok"], false);
    let last = report["steps"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["step"], "auth");
    assert!(last["detail"].as_str().unwrap().contains("535"), "{last}");
}

#[tokio::test]
async fn starttls_never_falls_back_to_plain_text() {
    // The test server offers no STARTTLS.
    let app = spawn_app_with(Script::accept_all(), |_| {}).await;
    let mut body = connection_body(app.smtp.port(), "never-in-clear");
    body["security"] = json!("starttls");
    app.post("/v1/connections", &body).await;
    let report: Value = verify(&app).await;
    assert_eq!(report["ok"], false);
    assert!(
        report.to_string().contains("does not offer STARTTLS"),
        "{report}"
    );

    let status = deferred_send(&app).await;
    assert!(status["last_error"].as_str().unwrap().contains("STARTTLS"));
    // Nothing but EHLO and QUIT in plain text.
    assert_no_auth_or_mail(&app.smtp.commands());
}

#[tokio::test]
async fn implicit_tls_refuses_a_certificate_it_cannot_verify() {
    // Issued for the right name, by a CA this app was not told to trust.
    let ca = PrivateCa::new();
    let server = helpers::TestSmtpServer::start_tls(
        TlsMode::Implicit,
        Script::accept_all(),
        ca.server_identity(),
    )
    .await;
    let app = spawn_app().await;
    let mut body = connection_body(server.port(), "pw");
    body["security"] = json!("tls");
    body["host"] = json!("localhost");
    app.post("/v1/connections", &body).await;
    let report = verify(&app).await;
    assert_eq!(report["ok"], false, "{report}");
    assert_eq!(report["steps"][0]["step"], "connect");
    let detail = report["steps"][0]["detail"]
        .as_str()
        .unwrap()
        .to_ascii_lowercase();
    assert!(detail.contains("certificate verify failed"), "{detail}");
    assert!(
        server.commands().is_empty(),
        "nothing said before the handshake"
    );
}

#[tokio::test]
async fn a_connections_rate_limit_spaces_its_messages() {
    let app = spawn_app_with(Script::require_auth("mailer", "pw"), |_| {}).await;
    let mut body = connection_body(app.smtp.port(), "pw");
    body["max_rate_per_second"] = json!(5);
    assert_eq!(
        app.post("/v1/connections", &body).await.status().as_u16(),
        201
    );
    let mut ids = Vec::new();
    for _ in 0..6 {
        let mut send = simple_message();
        send["connection"] = json!("relay-1");
        ids.push(app.send_ok(&send).await);
    }
    for id in &ids {
        let status = app.wait_until_terminal(id).await;
        assert_eq!(status["status"], "sent");
    }
    // Measured where the limit matters, at the SMTP server, from the moment each
    // transaction started: commit times in PostgreSQL jitter with the database's load.
    let started: Vec<_> = app.smtp.received().iter().map(|m| m.started_at).collect();
    assert_eq!(started.len(), 6);
    let spread = *started.iter().max().unwrap() - *started.iter().min().unwrap();
    // Six messages at 5 per second take slots 200 ms apart, 1 s from first to last;
    // unpaced, they would all go out within a few milliseconds. The margin absorbs
    // the first message's extra connect and AUTH, which delay only its start.
    assert!(spread >= Duration::from_millis(700), "spread {spread:?}");
}

/// A private certificate authority and a server certificate it signed for
/// `localhost` only, made with the openssl command line.
struct PrivateCa {
    dir: std::path::PathBuf,
}

impl PrivateCa {
    fn new() -> PrivateCa {
        let dir = std::env::temp_dir().join(format!("pw-ca-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let openssl = |args: &[&str]| {
            let status = std::process::Command::new("openssl")
                .args(args)
                .current_dir(&dir)
                .stderr(std::process::Stdio::null())
                .status()
                .expect("openssl is installed");
            assert!(status.success(), "openssl {args:?}");
        };
        openssl(&[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            "/CN=postwire test CA",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ]);
        openssl(&[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=localhost",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
        ]);
        std::fs::write(
            dir.join("server.ext"),
            "subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "server.ext",
            "-out",
            "server.pem",
        ]);
        PrivateCa { dir }
    }

    fn ca_pem(&self) -> std::path::PathBuf {
        self.dir.join("ca.pem")
    }

    fn server_identity(&self) -> native_tls::Identity {
        let cert = std::fs::read(self.dir.join("server.pem")).unwrap();
        let key = std::fs::read(self.dir.join("server.key")).unwrap();
        native_tls::Identity::from_pkcs8(&cert, &key).unwrap()
    }
}

impl Drop for PrivateCa {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[tokio::test]
async fn implicit_tls_checks_the_host_name_against_the_certificate() {
    tls_checks_the_host_name(TlsMode::Implicit).await;
}

#[tokio::test]
async fn starttls_checks_the_host_name_against_the_certificate() {
    tls_checks_the_host_name(TlsMode::Starttls).await;
}

/// A server whose certificate a trusted CA issued for `localhost`: refused under a
/// name the certificate does not list, used under the one it does.
async fn tls_checks_the_host_name(mode: TlsMode) {
    let (security, step) = match mode {
        TlsMode::Implicit => ("tls", "connect"),
        TlsMode::Starttls => ("starttls", "starttls"),
    };
    let ca = PrivateCa::new();
    let server =
        helpers::TestSmtpServer::start_tls(mode, Script::accept_all(), ca.server_identity()).await;
    let ca_pem = ca.ca_pem();
    let app = spawn_app_with(Script::accept_all(), move |s| {
        s.smtp.extra_root_certificates = vec![ca_pem];
    })
    .await;
    // The certificate names localhost, trusted through the private CA; the
    // connection names the server by its address, which the certificate does not list.
    let mut body = connection_body(server.port(), "pw");
    body["security"] = json!(security);
    body["host"] = json!("127.0.0.1");
    assert_eq!(
        app.post("/v1/connections", &body).await.status().as_u16(),
        201
    );
    let report: Value = verify(&app).await;
    assert_eq!(report["ok"], false, "{report}");
    let failed = report["steps"].as_array().unwrap().last().unwrap();
    assert_eq!(failed["step"], step, "{report}");
    let detail = failed["detail"].as_str().unwrap().to_ascii_lowercase();
    // OpenSSL's wording for a name the certificate does not list ("IP address
    // mismatch" here, "Hostname mismatch" for a DNS name).
    assert!(detail.contains("certificate verify failed"), "{detail}");
    assert!(detail.contains("mismatch"), "{detail}");
    let status = deferred_send(&app).await;
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .to_ascii_lowercase()
            .contains("mismatch"),
        "{status}"
    );

    // Refused before any credentials or mail went out.
    assert_no_auth_or_mail(&server.commands());

    // The same server under the name its certificate carries: verified and used.
    let patched = app
        .client
        .patch(format!("{}/v1/connections/relay-1", app.address))
        .json(&json!({ "host": "localhost" }))
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status().as_u16(), 200);
    let report: Value = verify(&app).await;
    assert_eq!(report["ok"], true, "{report}");
    let steps: Vec<&str> = step_names(&report);
    match mode {
        TlsMode::Implicit => assert!(report["steps"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("over TLS")),
        TlsMode::Starttls => assert!(steps.contains(&"starttls"), "{report}"),
    }
    let mut send = simple_message();
    send["connection"] = json!("relay-1");
    send["Subject"] = json!("over verified TLS");
    let id = app.send_ok(&send).await;
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");
    let mails = server.wait_for_messages(1, Duration::from_secs(10)).await;
    let subjects: Vec<String> = mails
        .iter()
        .map(|m| {
            helpers::parse_mail(m)
                .subject()
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert!(
        subjects.contains(&"over verified TLS".to_owned()),
        "{subjects:?}"
    );
    assert!(mails
        .iter()
        .all(|m| m.auth_user.as_deref() == Some("mailer")));
}

/// A relay that accepts any login and remembers every password it was offered.
fn recording_passwords() -> (Script, Arc<Mutex<Vec<String>>>) {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let record = Arc::clone(&seen);
    let script = Script::new(move |event, _| {
        if let Event::Auth { password, .. } = event {
            record.lock().unwrap().push((*password).to_owned());
        }
        Action::Default
    });
    (script, seen)
}

async fn patch(app: &TestApp, name: &str, body: Value) -> Value {
    let response = app
        .client
        .patch(format!("{}/v1/connections/{name}", app.address))
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.unwrap()
}

/// Sends through `relay-1` and waits for the outcome.
async fn send_through_relay(app: &TestApp) -> Value {
    let mut body = simple_message();
    body["connection"] = json!("relay-1");
    let id = app.send_ok(&body).await;
    app.wait_until_terminal(&id).await
}

#[tokio::test]
async fn moving_a_connection_without_a_new_password_clears_the_stored_one() {
    let (script, seen) = recording_passwords();
    let app = spawn_app_with(script.clone(), |_| {}).await;
    let elsewhere = TestSmtpServer::start_with(script).await;
    assert_eq!(
        app.post(
            "/v1/connections",
            &connection_body(app.smtp.port(), "s3cret")
        )
        .await
        .status()
        .as_u16(),
        201
    );
    // Limits are not the destination: the password stays.
    let view = patch(&app, "relay-1", json!({"max_connections": 3})).await;
    assert_eq!(
        (
            view["has_password"].clone(),
            view["password_cleared"].clone()
        ),
        (json!(true), json!(false))
    );
    // Another port, no new password: the stored one must not follow.
    let view = patch(&app, "relay-1", json!({"port": elsewhere.port()})).await;
    assert_eq!(
        (
            view["has_password"].clone(),
            view["password_cleared"].clone()
        ),
        (json!(false), json!(true))
    );
    assert_eq!(send_through_relay(&app).await["status"], "sent");
    assert_eq!(elsewhere.received().len(), 1);
    assert!(
        !seen.lock().unwrap().iter().any(|p| p == "s3cret"),
        "{seen:?}"
    );
    // A move that brings its own password keeps that one.
    let view = patch(
        &app,
        "relay-1",
        json!({"host": "localhost", "port": app.smtp.port(), "password": "n3w"}),
    )
    .await;
    assert_eq!(
        (
            view["has_password"].clone(),
            view["password_cleared"].clone()
        ),
        (json!(true), json!(false))
    );
    assert_eq!(send_through_relay(&app).await["status"], "sent");
    assert_eq!(seen.lock().unwrap().last().map(String::as_str), Some("n3w"));
    // So does a change of security.
    let view = patch(&app, "relay-1", json!({"security": "starttls"})).await;
    assert_eq!(view["password_cleared"], true);
    let stored: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT password_enc FROM smtp_connections WHERE name = 'relay-1'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(stored.is_none());
}

#[tokio::test]
async fn credentials_never_cross_the_network_in_clear_text_unless_allowed() {
    let (script, seen) = recording_passwords();
    let app = spawn_app().await;
    let public = TestSmtpServer::start_public(script).await;
    let mut body = connection_body(public.port(), "s3cret");
    body["host"] = json!(non_loopback_ip().to_string());
    // Refused at the edge...
    helpers::assert_problem(app.post("/v1/connections", &body).await, 400, "security").await;
    // ...unless the operator says so.
    body["allow_plaintext_auth"] = json!(true);
    let created = app.post("/v1/connections", &body).await;
    assert_eq!(created.status().as_u16(), 201);
    assert_eq!(
        created.json::<Value>().await.unwrap()["allow_plaintext_auth"],
        true
    );
    // A row that does not allow it (stored before the rule, or changed in the
    // database) is refused on the wire: no AUTH, no MAIL.
    sqlx::query("UPDATE smtp_connections SET allow_plaintext_auth = false")
        .execute(&app.db)
        .await
        .unwrap();
    let status = deferred_send(&app).await;
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("clear text"),
        "{status}"
    );
    let report = verify(&app).await;
    assert_eq!(report["ok"], false);
    assert!(report["steps"][1]["detail"]
        .as_str()
        .unwrap()
        .contains("clear text"));
    assert_no_auth_or_mail(&public.commands());
    assert!(seen.lock().unwrap().is_empty());
    // Loopback stays allowed without the switch.
    let mut local = connection_body(app.smtp.port(), "pw");
    local["name"] = json!("local");
    assert_eq!(
        app.post("/v1/connections", &local).await.status().as_u16(),
        201
    );
}

#[tokio::test]
async fn a_password_copied_to_another_connection_does_not_decrypt_there() {
    let (script, seen) = recording_passwords();
    let app = spawn_app_with(script, |_| {}).await;
    app.post(
        "/v1/connections",
        &connection_body(app.smtp.port(), "s3cret"),
    )
    .await;
    let mut other = connection_body(app.smtp.port(), "other");
    other["name"] = json!("relay-2");
    app.post("/v1/connections", &other).await;
    // Someone with write access to the table moves relay-1's ciphertext over.
    sqlx::query(
        "UPDATE smtp_connections SET password_enc =
            (SELECT password_enc FROM smtp_connections WHERE name = 'relay-1')
          WHERE name = 'relay-2'",
    )
    .execute(&app.db)
    .await
    .unwrap();
    let mut body = simple_message();
    body["connection"] = json!("relay-2");
    let id = app.send_ok(&body).await;
    let status = app
        .wait_for(&id, "deferred", |m| m["status"] == "deferred")
        .await;
    assert!(
        status["last_error"]
            .as_str()
            .unwrap()
            .contains("cannot be decrypted"),
        "{status}"
    );
    assert!(seen.lock().unwrap().is_empty(), "{seen:?}");
    assert_no_auth_or_mail(&app.smtp.commands());
}

#[tokio::test]
async fn rekey_binds_passwords_of_the_first_format_to_their_connection() {
    use aes_gcm::aead::{Aead, AeadCore, KeyInit, OsRng};
    use sha2::Digest;

    let app = spawn_app_with(Script::require_auth("mailer", "s3cret"), |_| {}).await;
    app.post(
        "/v1/connections",
        &connection_body(app.smtp.port(), "placeholder"),
    )
    .await;
    // A password stored by an earlier postwire: format 1, under the test
    // environment's development key, bound to nothing.
    let key = *b"postwire-development-master-key!";
    let aes = aes_gcm::Aes256Gcm::new(&key.into());
    let nonce = aes_gcm::Aes256Gcm::generate_nonce(&mut OsRng);
    let mut legacy = vec![1u8];
    legacy.extend_from_slice(&sha2::Sha256::digest(key)[..4]);
    legacy.extend_from_slice(&nonce);
    legacy.extend_from_slice(&aes.encrypt(&nonce, &b"s3cret"[..]).unwrap());
    sqlx::query("UPDATE smtp_connections SET password_enc = $1")
        .bind(&legacy)
        .execute(&app.db)
        .await
        .unwrap();
    assert_eq!(
        send_through_relay(&app).await["status"],
        "sent",
        "still readable"
    );

    let rekey = app
        .cli(&["connections", "rekey"])
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&rekey.stderr);
    assert!(rekey.status.success(), "{said}");
    assert!(said.contains("re-encrypted 1 password"), "{said}");
    let stored: Vec<u8> = sqlx::query_scalar("SELECT password_enc FROM smtp_connections")
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(stored[0], 2, "the current, bound format");
    assert_ne!(stored, legacy);
    let report = verify(&app).await;
    assert_eq!(report["ok"], true, "{report}");
}

#[tokio::test]
async fn blank_username_and_password_from_a_form_mean_no_auth() {
    let app = spawn_app().await;
    let mut body = connection_body(app.smtp.port(), "");
    body["username"] = json!("");
    body["default_from"] = json!("");
    let created = app.post("/v1/connections", &body).await;
    assert_eq!(created.status().as_u16(), 201);
    let view: Value = created.json().await.unwrap();
    assert!(view["username"].is_null(), "{view}");
    assert_eq!(view["has_password"], false);
    assert!(view["default_from"].is_null());
    let mut send = simple_message();
    send["connection"] = json!("relay-1");
    send["From"] = json!("me@example.com");
    let id = app.send_ok(&send).await;
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");
    assert!(!app
        .smtp
        .commands()
        .iter()
        .any(|c| c.to_ascii_uppercase().starts_with("AUTH")));
    // And in a PATCH, "" clears.
    patch(&app, "relay-1", json!({"username": "u", "password": "p"})).await;
    let view = patch(&app, "relay-1", json!({"password": ""})).await;
    assert_eq!(view["has_password"], false);
}

#[tokio::test]
async fn without_postwire_env_the_binary_refuses_to_start_without_a_master_key() {
    let run = |env: Option<&str>| {
        let mut command = std::process::Command::new(helpers::postwire_binary());
        command
            .arg("migrate")
            .env("POSTWIRE_CONFIG_DIR", helpers::config_dir())
            .env(
                "POSTWIRE__DATABASE__URL",
                "postgres://nobody@127.0.0.1:1/none",
            )
            .env_remove("POSTWIRE_ENV")
            .env_remove("POSTWIRE__SECURITY__MASTER_KEY");
        if let Some(env) = env {
            command.env("POSTWIRE_ENV", env);
        }
        command.output().unwrap()
    };
    for env in [None, Some("production"), Some("staging")] {
        let output = run(env);
        let said = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(2), "{env:?}: {said}");
        assert!(said.contains("security.master_key is required"), "{said}");
    }
    // An explicit development environment passes the key check (and then fails
    // to reach the database it was pointed at, which is not the question here).
    let said = String::from_utf8_lossy(&run(Some("development")).stderr).into_owned();
    assert!(!said.contains("security.master_key is required"), "{said}");
}

#[tokio::test]
async fn broker_passwords_never_reach_the_logs_of_the_binary() {
    let app = spawn_app().await;
    // Refused logins, a closed port and a URL that does not parse: each is logged on
    // every reconnect, and none may show a password, in the user part or the query.
    for url in [
        "amqp://guest:hunter2@127.0.0.1:5672/%2f?password=hunter3",
        "amqp://guest:hunter2@127.0.0.1:1/%2f?password=hunter3",
        "amqq://guest:hunter2@[bad/%2f?password=hunter3",
    ] {
        let child = app
            .cli(&["serve", "--role", "worker"])
            .env("POSTWIRE__AMQP__URL", url)
            .env("POSTWIRE__AMQP__TIMEOUT", "1s")
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start postwire");
        tokio::time::sleep(Duration::from_secs(3)).await;
        // SIGTERM: a graceful stop, as an operator would.
        let _ = std::process::Command::new("kill")
            .arg(child.id().to_string())
            .status();
        let output = child.wait_with_output().unwrap();
        let logged = String::from_utf8_lossy(&output.stderr);
        assert!(
            logged.contains("reconnecting"),
            "{url}: nothing logged: {logged}"
        );
        assert!(
            !logged.contains("hunter"),
            "{url}: a password was logged: {logged}"
        );
    }
}
