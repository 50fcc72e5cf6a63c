//! The test harness shared by postwire's integration tests and benchmark: `spawn_app()`
//! starts postwire in-process on port 0 with its own database, its own RabbitMQ queues
//! and a scripted SMTP server; a cuttable proxy stands in for outages; `postwire`
//! processes of the real binary are started next to it.

pub mod browser;
pub mod proxy;
pub mod smtp_server;
pub mod webhook_receiver;

use std::path::{Path, PathBuf};
use std::sync::Once;
use std::time::Duration;

use postwire::config::Settings;
use postwire::domain::{ConnectionFields, Security};
use postwire::keys::Scope;
use postwire::{Application, Role};
use serde_json::{json, Value};
use sqlx::{Connection, PgConnection, PgPool};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

pub use smtp_server::{
    non_loopback_ip, Action, Event, ReceivedMail, Script, TestSmtpServer, TlsMode,
};
pub use webhook_receiver::{WebhookReceiver, WebhookRequest};

/// The repository's `config/` directory: the shipped configuration.
pub fn config_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../config")
}

/// The `postwire` binary of this build, next to the test executable (cargo builds a
/// package's binaries before its integration tests): `target/<profile>/postwire`,
/// the test being `target/<profile>/deps/<test>-<hash>`.
pub fn postwire_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("the test executable's path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable lives in target/<profile>/deps");
    let binary = profile_dir.join(format!("postwire{}", std::env::consts::EXE_SUFFIX));
    assert!(
        binary.exists(),
        "{} is missing: build it first (cargo test builds it)",
        binary.display()
    );
    binary
}

/// The default sender of the test connection.
pub const DEFAULT_FROM: &str = "Postwire Test <sender@example.com>";

/// A running postwire with everything it talks to.
pub struct TestApp {
    pub address: String,
    /// Sends an API key with every scope.
    pub client: reqwest::Client,
    /// Sends no API key.
    pub anonymous: reqwest::Client,
    pub db: PgPool,
    pub smtp: TestSmtpServer,
    pub settings: Settings,
    shutdown: CancellationToken,
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

static TRACING: Once = Once::new();

/// Base URL of the PostgreSQL server the tests create their databases on.
fn database_server() -> String {
    std::env::var("TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// Creates an empty database of its own for a test; returns its URL.
pub async fn fresh_database() -> String {
    let db_name = format!("postwire_test_{}", Uuid::new_v4().simple());
    let mut admin = PgConnection::connect(&format!("{}/postgres", database_server()))
        .await
        .expect("PostgreSQL must be running (see README: Running the tests)");
    sqlx::query(&format!("CREATE DATABASE \"{db_name}\""))
        .execute(&mut admin)
        .await
        .expect("create the test database");
    format!("{}/{db_name}", database_server())
}

/// Empties `queues`, as a lost node or a restored broker would; how many jobs were
/// lost.
pub async fn purge(settings: &Settings, queues: &[String]) -> u32 {
    let conn = postwire::queue::connect(&settings.amqp, "test")
        .await
        .expect("connect to RabbitMQ");
    let channel = conn.create_channel().await.expect("open a channel");
    let mut purged = 0;
    for queue in queues {
        purged += channel
            .queue_purge(queue.as_str().into(), Default::default())
            .await
            .expect("purge a queue");
    }
    let _ = conn.close(200, "done".into()).await;
    purged
}

/// Settings for a test: the shipped defaults, with a fresh database, unique queue
/// names, port 0 and the test SMTP server as the default connection.
pub async fn test_settings(smtp: &TestSmtpServer) -> Settings {
    let dir = config_dir();
    let mut settings = Settings::load_env(Some(&dir), "test").expect("config/default.toml loads");
    settings.database.url = fresh_database().await;
    settings.database.max_connections = 8;
    settings.server.port = 0;
    settings.security.api_key_cache = Duration::ZERO;
    settings.amqp.queue_prefix = format!("pwtest-{}", Uuid::new_v4().simple());
    settings.amqp.queue_expires = Some(Duration::from_secs(600));
    if let Ok(url) = std::env::var("TEST_AMQP_URL") {
        settings.amqp.url = url;
    }
    settings.worker.concurrency = 8;
    settings.worker.shutdown_timeout = Duration::from_secs(2);
    settings.worker.heartbeat_interval = Duration::from_millis(200);
    settings.worker.presumed_dead_after = Duration::from_secs(1);
    settings.outbox.interval = Duration::from_millis(200);
    settings.outbox.grace = Duration::from_millis(500);
    settings.server.shutdown_timeout = Duration::from_secs(2);
    settings.smtp.connect_timeout = Duration::from_secs(2);
    settings.smtp.command_timeout = Duration::from_secs(3);
    settings.smtp.data_timeout = Duration::from_secs(3);
    settings.smtp.default = Some(ConnectionFields {
        name: "default".to_owned(),
        host: "127.0.0.1".to_owned(),
        port: smtp.port(),
        security: Security::None,
        default_from: Some(DEFAULT_FROM.to_owned()),
        max_connections: Some(4),
        ..ConnectionFields::default()
    });
    settings
}

/// Starts postwire (API and worker) against an SMTP server that accepts everything.
pub async fn spawn_app() -> TestApp {
    spawn_app_with(Script::accept_all(), |_| {}).await
}

/// Starts postwire against an SMTP server following `script`, after `adjust` has
/// changed the test settings.
pub async fn spawn_app_with(script: Script, adjust: impl FnOnce(&mut Settings)) -> TestApp {
    spawn_role_with(Role::All, script, adjust).await
}

/// Like `spawn_app_with`, running only `role` in-process.
pub async fn spawn_role_with(
    role: Role,
    script: Script,
    adjust: impl FnOnce(&mut Settings),
) -> TestApp {
    TRACING.call_once(|| {
        if std::env::var_os("TEST_LOG").is_some() {
            let _ = tracing_subscriber_init();
        }
    });
    let smtp = TestSmtpServer::start_with(script).await;
    let mut settings = test_settings(&smtp).await;
    adjust(&mut settings);
    let app = Application::build(settings.clone(), role)
        .await
        .expect("postwire builds");
    let port = app.port().unwrap_or(0);
    let shutdown = CancellationToken::new();
    tokio::spawn(app.run(shutdown.clone()));
    let db = PgPool::connect(&settings.database.url)
        .await
        .expect("connect to the test database");
    let key = create_key(&db, &[Scope::Send, Scope::Read, Scope::Admin], None).await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        format!("Bearer {key}").parse().expect("header value"),
    );
    TestApp {
        address: format!("http://127.0.0.1:{port}"),
        // A hung request fails the test with a message instead of hanging it.
        client: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .default_headers(headers)
            .build()
            .expect("HTTP client"),
        anonymous: reqwest::Client::builder()
            .timeout(Duration::from_secs(15))
            .build()
            .expect("HTTP client"),
        db,
        smtp,
        settings,
        shutdown,
    }
}

/// Creates an API key of the tenant `default` the way `postwire keys create` does;
/// returns its text.
pub async fn create_key(db: &PgPool, scopes: &[Scope], default_connection: Option<&str>) -> String {
    let store = postwire::store::Store::from_pool(db.clone());
    postwire::keys::create(
        &store,
        postwire::domain::DEFAULT_TENANT_ID,
        "test",
        scopes,
        default_connection,
    )
    .await
    .expect("create an API key")
    .key
}

fn tracing_subscriber_init() -> anyhow::Result<()> {
    let mut log = Settings::load_env(Some(&config_dir()), "test")?.log;
    log.level = "debug,sqlx=warn,lapin=info".to_owned();
    postwire::telemetry::init(&log)
}

/// Sends `SIG{name}` (`STOP`, `CONT`, `TERM`...) to a process the test started.
pub fn signal(child: &std::process::Child, name: &str) {
    let status = std::process::Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{name}");
}

/// A minimal valid send body.
pub fn simple_message() -> Value {
    json!({
        "To": "Ann <ann@example.com>",
        "Subject": "Hello",
        "Body": "Hi Ann,\nthis is a test.\n",
    })
}

impl TestApp {
    /// A `postwire serve --role <role>` process (not started) sharing this app's
    /// database, queues and SMTP server, with the test timings; output discarded.
    pub fn process(&self, role: &str) -> std::process::Command {
        self.cli(&["serve", "--role", role])
    }

    /// `postwire <args>` (not started) with this app's configuration, like
    /// [`TestApp::process`].
    pub fn cli(&self, args: &[&str]) -> std::process::Command {
        let s = &self.settings;
        let smtp = s.smtp.default.as_ref().unwrap();
        let mut command = std::process::Command::new(postwire_binary());
        command
            .args(args)
            .env("POSTWIRE_ENV", "test")
            .env("POSTWIRE_CONFIG_DIR", config_dir())
            .env("POSTWIRE__DATABASE__URL", &s.database.url)
            .env("POSTWIRE__DATABASE__MIGRATE_ON_START", "false")
            .env("POSTWIRE__DATABASE__MAX_CONNECTIONS", "4")
            .env("POSTWIRE__AMQP__URL", &s.amqp.url)
            .env("POSTWIRE__AMQP__QUEUE_PREFIX", &s.amqp.queue_prefix)
            .env("POSTWIRE__AMQP__QUEUE_EXPIRES", "10m")
            .env("POSTWIRE__WORKER__HEARTBEAT_INTERVAL", "200ms")
            .env("POSTWIRE__WORKER__PRESUMED_DEAD_AFTER", "1s")
            .env("POSTWIRE__SMTP__DEFAULT__HOST", &smtp.host)
            .env("POSTWIRE__SMTP__DEFAULT__PORT", smtp.port.to_string())
            .env("POSTWIRE__SMTP__DEFAULT__SECURITY", "none")
            .env(
                "POSTWIRE__SMTP__DEFAULT__DEFAULT_FROM",
                smtp.default_from.as_deref().unwrap(),
            )
            .env("POSTWIRE__LOG__LEVEL", "warn")
            .env_remove("RUST_LOG")
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        if !s.amqp.urls.is_empty() {
            command.env("POSTWIRE__AMQP__URLS", s.amqp.urls.join(","));
        }
        if let Some(queue_type) = s.amqp.queue_type {
            command.env("POSTWIRE__AMQP__QUEUE_TYPE", queue_type.as_str());
        }
        command
    }

    /// Starts a `postwire serve --role api` process on a free port with `env` on top
    /// of [`TestApp::process`]'s, and waits until it is ready.
    pub async fn api_process(&self, env: &[(&str, &str)]) -> ApiProcess {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut command = self.process("api");
        command.env("POSTWIRE__SERVER__PORT", port.to_string());
        for (k, v) in env {
            command.env(k, v);
        }
        let child = command.spawn().expect("start an API process");
        let process = ApiProcess { child, port };
        let ready = format!("{}/readyz", process.url());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        while !matches!(reqwest::get(&ready).await, Ok(r) if r.status() == 200) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the API never got ready"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        process
    }

    /// Stops the app (as SIGTERM would).
    pub fn stop(&self) {
        self.shutdown.cancel();
    }

    /// `POST /v1/messages` with a JSON body.
    pub async fn send(&self, body: &Value) -> reqwest::Response {
        self.post("/v1/messages", body).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.client
            .post(format!("{}{path}", self.address))
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {path}: {e}"))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.client
            .get(format!("{}{path}", self.address))
            .send()
            .await
            .unwrap_or_else(|e| panic!("GET {path}: {e}"))
    }

    /// Sends and expects 202; returns the message id.
    pub async fn send_ok(&self, body: &Value) -> String {
        accepted_id(self.send(body).await).await
    }

    /// `GET /v1/messages/{id}` as JSON.
    pub async fn message(&self, id: &str) -> Value {
        let response = self.get(&format!("/v1/messages/{id}")).await;
        assert_eq!(response.status().as_u16(), 200);
        response.json().await.expect("message JSON")
    }

    /// `GET /v1/messages/{id}/events` as JSON.
    pub async fn events(&self, id: &str) -> Value {
        let response = self.get(&format!("/v1/messages/{id}/events")).await;
        assert_eq!(response.status().as_u16(), 200);
        response.json().await.expect("events JSON")
    }

    /// Polls the status lookup until the message is terminal (sent, failed, cancelled).
    pub async fn wait_until_terminal(&self, id: &str) -> Value {
        until_terminal(id, || self.message(id)).await
    }

    /// Polls until `check` holds for the message's status JSON.
    pub async fn wait_for(&self, id: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let message = self.message(id).await;
            if check(&message) {
                return message;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "message {id}: not {what} after 20s: {message}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// Polls `GET /v1/webhooks/{webhook}/attempts{query}` (`query` empty or starting
    /// with `?`) until `check` holds for its attempts, and returns them. An attempt is
    /// recorded just after its endpoint answered, so a receiver's count alone does
    /// not say it is listed yet.
    pub async fn wait_for_attempts(
        &self,
        webhook: &str,
        query: &str,
        what: &str,
        check: impl Fn(&[Value]) -> bool,
    ) -> Vec<Value> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let response = self
                .get(&format!("/v1/webhooks/{webhook}/attempts{query}"))
                .await;
            assert_eq!(response.status().as_u16(), 200);
            let page: Value = response.json().await.expect("attempts JSON");
            let attempts = page["attempts"].as_array().expect("attempts").clone();
            if check(&attempts) {
                return attempts;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "webhook {webhook}: not {what} after 20s: {page:#}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// A message's events in order, without the deferrals that spent no attempt: a
    /// loaded machine may hold a message back before an attempt (its worker's
    /// heartbeat late, a session slot not yet free), which is not what tests of the
    /// attempts themselves look at.
    pub async fn history(&self, id: &str) -> Vec<Value> {
        self.events(id).await["events"]
            .as_array()
            .expect("events")
            .iter()
            .filter(|e| !(e["type"] == "deferred" && e["attempt"].is_null()))
            .cloned()
            .collect()
    }

    /// The types of a message's [`history`](Self::history), in order.
    pub async fn event_types(&self, id: &str) -> Vec<String> {
        self.history(id)
            .await
            .iter()
            .map(|e| e["type"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Rows in the messages table (to prove that nothing was stored).
    pub async fn stored_messages(&self) -> i64 {
        sqlx::query_scalar("SELECT count(*) FROM messages")
            .fetch_one(&self.db)
            .await
            .expect("count messages")
    }
}

/// A `postwire serve --role api` process; killed when dropped.
pub struct ApiProcess {
    pub child: std::process::Child,
    pub port: u16,
}

impl ApiProcess {
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The process's resident memory now and at its peak (VmRSS, VmHWM), in KiB.
    pub fn rss_kib(&self) -> (u64, u64) {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .expect("the API process is running");
        let field = |name: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
                .unwrap_or(0)
        };
        (field("VmRSS:"), field("VmHWM:"))
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let killed = std::process::Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(killed.success());
    }
}

impl Drop for ApiProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `simple_message()` with some fields replaced.
pub fn message_with(changes: Value) -> Value {
    let mut body = simple_message();
    for (k, v) in changes.as_object().expect("an object of changes") {
        body[k] = v.clone();
    }
    body
}

/// Sends `body`, expects `status` naming `field`, and checks nothing was stored or
/// sent.
pub async fn assert_refused(app: &TestApp, body: Value, status: u16, field: &str) -> Value {
    let problem = assert_problem(app.send(&body).await, status, field).await;
    assert_eq!(
        app.stored_messages().await,
        0,
        "nothing may be stored for {body}"
    );
    assert_eq!(app.smtp.sessions_opened(), 0, "nothing may be sent");
    problem
}

/// Asserts a problem+json answer with `status` that names `field`.
pub async fn assert_problem(response: reqwest::Response, status: u16, field: &str) -> Value {
    let got = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned();
    let body: Value = response.json().await.expect("problem body is JSON");
    assert_eq!(got, status, "unexpected status; body: {body}");
    assert_eq!(content_type, "application/problem+json");
    assert_eq!(body["status"], status);
    let fields: Vec<&str> = body["errors"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["field"].as_str()).collect())
        .unwrap_or_default();
    assert!(
        fields.contains(&field),
        "expected an error naming {field:?}, got {body}"
    );
    body
}

/// The postwire id a received message carries in its X-Postwire-Id header.
pub fn postwire_id(data: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(data);
    let header_end = text.find("\r\n\r\n").unwrap_or(text.len());
    text[..header_end]
        .lines()
        .find_map(|l| l.strip_prefix("X-Postwire-Id: "))
        .map(|v| v.trim().to_owned())
}

/// Parses a received message.
pub fn parse_mail(mail: &ReceivedMail) -> mail_parser::Message<'_> {
    mail_parser::MessageParser::default()
        .parse(&mail.data)
        .expect("the received message parses as MIME")
}

/// A producer of its own: a tenant made for the test and an API key of it, and
/// requests made with that key against a running app.
pub struct Producer {
    pub tenant: String,
    pub tenant_id: Uuid,
    pub key: String,
    address: String,
    client: reqwest::Client,
}

impl TestApp {
    /// Creates tenant `name` (as `postwire tenants create` does) with a key of
    /// `scopes`.
    pub async fn producer(&self, name: &str, scopes: &[Scope]) -> Producer {
        let store = postwire::store::Store::from_pool(self.db.clone());
        let now = chrono::Utc::now();
        let tenant = postwire::store::TenantRow {
            id: Uuid::now_v7(),
            name: name.to_owned(),
            max_rate_per_second: None,
            allowed_from_domains: None,
            disabled_at: None,
            created_at: now,
            updated_at: now,
        };
        assert!(
            store.insert_tenant(&tenant).await.expect("create a tenant"),
            "tenant {name} exists"
        );
        self.producer_of(name, tenant.id, scopes).await
    }

    /// Another key of an existing tenant.
    pub async fn producer_of(&self, name: &str, tenant_id: Uuid, scopes: &[Scope]) -> Producer {
        let store = postwire::store::Store::from_pool(self.db.clone());
        let key = postwire::keys::create(&store, tenant_id, &format!("{name}-key"), scopes, None)
            .await
            .expect("create an API key")
            .key;
        Producer {
            tenant: name.to_owned(),
            tenant_id,
            key,
            address: self.address.clone(),
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(15))
                .build()
                .expect("HTTP client"),
        }
    }
}

impl Producer {
    /// A request with this producer's key.
    pub fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.client
            .request(method, format!("{}{path}", self.address))
            .bearer_auth(&self.key)
    }

    /// Sends `method path` (with a JSON body, if any); fails the test if no answer
    /// comes.
    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&Value>,
    ) -> reqwest::Response {
        let request = self.request(method.clone(), path);
        let request = match body {
            Some(body) => request.json(body),
            None => request,
        };
        request
            .send()
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub async fn get(&self, path: &str) -> reqwest::Response {
        self.call(reqwest::Method::GET, path, None).await
    }

    pub async fn post(&self, path: &str, body: &Value) -> reqwest::Response {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    pub async fn patch(&self, path: &str, body: &Value) -> reqwest::Response {
        self.call(reqwest::Method::PATCH, path, Some(body)).await
    }

    /// Sends and expects 202; returns the message id.
    pub async fn send_ok(&self, body: &Value) -> String {
        accepted_id(self.post("/v1/messages", body).await).await
    }

    /// Polls this producer's view of a message until it is terminal.
    pub async fn wait_until_terminal(&self, id: &str) -> Value {
        until_terminal(id, || async {
            let response = self.get(&format!("/v1/messages/{id}")).await;
            assert_eq!(response.status().as_u16(), 200, "{}: {id}", self.tenant);
            response.json().await.expect("message JSON")
        })
        .await
    }
}

/// The id of a 202 answer to a send; fails the test on anything else.
async fn accepted_id(response: reqwest::Response) -> String {
    let status = response.status().as_u16();
    let text = response.text().await.unwrap_or_default();
    assert_eq!(status, 202, "expected 202, got {status}: {text}");
    let accepted: Value = serde_json::from_str(&text).expect("202 body is JSON");
    assert_eq!(accepted["status"], "queued");
    accepted["id"].as_str().expect("id").to_owned()
}

/// Polls `look` (a status lookup of message `id`) until the message is terminal.
async fn until_terminal<F, Fut>(id: &str, look: F) -> Value
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = Value>,
{
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let message = look().await;
        if matches!(
            message["status"].as_str(),
            Some("sent" | "failed" | "cancelled")
        ) {
            return message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "message {id} not terminal after 20s: {message}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
