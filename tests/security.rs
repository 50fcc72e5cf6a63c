//! API keys, scopes, stored connections and their secrets, TLS.

mod helpers;

use std::time::Duration;

use helpers::{create_key, simple_message, spawn_app, spawn_app_with, Script, TestApp, TlsMode};
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
