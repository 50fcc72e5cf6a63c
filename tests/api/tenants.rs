//! Tenants: made and changed with the CLI; what existed before them belongs to the
//! tenant `default`; a disabled tenant's keys are refused.

use crate::helpers;

use std::borrow::Cow;
use std::process::{Output, Stdio};

use std::collections::BTreeSet;
use std::time::Duration;

use helpers::{
    fresh_database, simple_message, spawn_app, spawn_app_with, Producer, Script, TestApp,
};
use postwire::domain::DEFAULT_TENANT_ID;
use postwire::keys::Scope;
use postwire::store::MIGRATOR;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// The migration that made tenants.
const TENANTS_MIGRATION: i64 = 20261202100000;

const EVERY_PRODUCER_SCOPE: &[Scope] = &[Scope::Send, Scope::Read, Scope::Admin];

fn run(app: &TestApp, args: &[&str]) -> (Output, String, String) {
    let output = app
        .cli(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run postwire");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    (output, stdout, stderr)
}

/// `POST path` with `key`.
async fn post_as(
    app: &TestApp,
    key: &str,
    path: &str,
    body: &serde_json::Value,
) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!("{}{path}", app.address))
        .bearer_auth(key)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// `GET path` with `key`.
async fn get_as(app: &TestApp, key: &str, path: &str) -> reqwest::Response {
    reqwest::Client::new()
        .get(format!("{}{path}", app.address))
        .bearer_auth(key)
        .send()
        .await
        .unwrap()
}

fn run_ok(app: &TestApp, args: &[&str]) -> String {
    let (output, stdout, stderr) = run(app, args);
    assert!(output.status.success(), "postwire {args:?}: {stderr}");
    stdout
}

#[tokio::test]
async fn existing_keys_connections_and_messages_move_into_the_default_tenant() {
    let url = fresh_database().await;
    let db = PgPoolOptions::new()
        .max_connections(2)
        .connect(&url)
        .await
        .unwrap();
    // The schema as it was before tenants, with data in it.
    let mut before = sqlx::migrate::Migrator {
        migrations: Cow::Owned(
            MIGRATOR
                .iter()
                .filter(|m| m.version < TENANTS_MIGRATION)
                .cloned()
                .collect(),
        ),
        ..sqlx::migrate::Migrator::DEFAULT
    };
    before.set_ignore_missing(true);
    before.run(&db).await.unwrap();
    let (key, connection, message) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    sqlx::query(
        "INSERT INTO api_keys (id, name, lookup, secret_hash, scopes)
         VALUES ($1, 'old', '0123456789ab', '\\x00', '{send}')",
    )
    .bind(key)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO smtp_connections (id, name, host, port, security, max_connections)
         VALUES ($1, 'relay', 'smtp.example.com', 587, 'starttls', 4)",
    )
    .bind(connection)
    .execute(&db)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO messages (id, status, connection, from_addr, recipients, envelope_from,
             envelope_to, subject, message_id, size)
         VALUES ($1, 'queued', 'relay', 'a@example.com', '{}', 'a@example.com',
             '{b@example.com}', 'old', '<x@example.com>', 10)",
    )
    .bind(message)
    .execute(&db)
    .await
    .unwrap();
    // An Idempotency-Key recorded for the key, as they were before tenants.
    sqlx::query(
        "INSERT INTO idempotency_keys (scope, key, request_hash, response, expires_at)
         VALUES ($1, 'k1', '\\x01', '{}', now() + interval '1 hour')",
    )
    .bind(key.to_string())
    .execute(&db)
    .await
    .unwrap();

    MIGRATOR.run(&db).await.unwrap();

    let scope: String = sqlx::query_scalar("SELECT scope FROM idempotency_keys WHERE key = 'k1'")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(
        scope,
        DEFAULT_TENANT_ID.to_string(),
        "the key's tenant owns it now"
    );

    let default: (Uuid, String) = sqlx::query_as("SELECT id, name FROM tenants WHERE id = $1")
        .bind(DEFAULT_TENANT_ID)
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(default.1, "default");
    for (table, id) in [
        ("api_keys", key),
        ("smtp_connections", connection),
        ("messages", message),
    ] {
        let tenant: Uuid =
            sqlx::query_scalar(&format!("SELECT tenant_id FROM {table} WHERE id = $1"))
                .bind(id)
                .fetch_one(&db)
                .await
                .unwrap();
        assert_eq!(tenant, DEFAULT_TENANT_ID, "{table}");
    }
    // From now on the tenant is always written: there is no default to fall back on.
    let refused = sqlx::query(
        "INSERT INTO api_keys (id, name, lookup, secret_hash, scopes)
         VALUES ($1, 'new', 'ba9876543210', '\\x00', '{send}')",
    )
    .bind(Uuid::now_v7())
    .execute(&db)
    .await;
    assert!(refused.is_err(), "a key without a tenant was stored");
}

#[tokio::test]
async fn tenants_are_made_changed_and_listed_with_the_cli() {
    let app = spawn_app().await;
    let id = run_ok(
        &app,
        &[
            "tenants",
            "create",
            "acme",
            "--max-rate-per-second",
            "5",
            "--allowed-from-domains",
            "Example.COM,mail.example.org",
        ],
    );
    let id: Uuid = id.trim().parse().expect("the new tenant's id");
    let (output, _, said) = run(&app, &["tenants", "create", "acme"]);
    assert!(!output.status.success());
    assert!(said.contains("already exists"), "{said}");
    let (output, _, said) = run(&app, &["tenants", "create", "bad name"]);
    assert!(!output.status.success());
    assert!(said.contains("not a tenant name"), "{said}");
    let (output, _, said) = run(
        &app,
        &[
            "tenants",
            "create",
            "x",
            "--allowed-from-domains",
            "not a domain",
        ],
    );
    assert!(!output.status.success());
    assert!(said.contains("--allowed-from-domains"), "{said}");

    let listed = run_ok(&app, &["tenants", "list"]);
    let acme = listed
        .lines()
        .find(|l| l.contains(" acme "))
        .unwrap_or_else(|| panic!("acme is not listed: {listed}"));
    assert!(acme.starts_with(&id.to_string()), "{acme}");
    assert!(acme.contains("rate=5/s"), "{acme}");
    assert!(acme.contains("example.com,mail.example.org"), "{acme}");
    assert!(listed.lines().any(|l| l.contains(" default ")), "{listed}");

    run_ok(
        &app,
        &[
            "tenants",
            "update",
            "acme",
            "--no-rate-limit",
            "--any-from-domain",
        ],
    );
    let (rate, domains): (Option<i32>, Option<Vec<String>>) = sqlx::query_as(
        "SELECT max_rate_per_second, allowed_from_domains FROM tenants WHERE name = 'acme'",
    )
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert_eq!((rate, domains), (None, None));
}

#[tokio::test]
async fn a_tenants_key_sends_as_the_tenant_and_is_refused_while_the_tenant_is_disabled() {
    let app = spawn_app().await;
    let tenant: Uuid = run_ok(&app, &["tenants", "create", "acme"])
        .trim()
        .parse()
        .unwrap();
    let (output, _, said) = run(
        &app,
        &["keys", "create", "--name", "k", "--tenant", "nosuch"],
    );
    assert!(!output.status.success());
    assert!(said.contains("no tenant named \"nosuch\""), "{said}");
    let key = run_ok(
        &app,
        &[
            "keys",
            "create",
            "--name",
            "acme-key",
            "--tenant",
            "acme",
            "--scopes",
            "send,read,admin",
        ],
    )
    .trim()
    .to_owned();
    assert!(run_ok(&app, &["keys", "list"]).contains("tenant=acme"));
    let response = post_as(&app, &key, "/v1/messages", &simple_message()).await;
    assert_eq!(response.status().as_u16(), 202);
    let id: Uuid = response.json::<serde_json::Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let owner: Uuid = sqlx::query_scalar("SELECT tenant_id FROM messages WHERE id = $1")
        .bind(id)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(owner, tenant);
    // The default key of the harness sends as `default`.
    let other: Uuid = app.send_ok(&simple_message()).await.parse().unwrap();
    let owner: Uuid = sqlx::query_scalar("SELECT tenant_id FROM messages WHERE id = $1")
        .bind(other)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(owner, DEFAULT_TENANT_ID);

    let relay =
        json!({"name": "acme-relay", "host": "127.0.0.1", "port": 2525, "security": "none"});
    let response = post_as(&app, &key, "/v1/connections", &relay).await;
    assert_eq!(response.status().as_u16(), 201);
    let owner: Uuid =
        sqlx::query_scalar("SELECT tenant_id FROM smtp_connections WHERE name = 'acme-relay'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert_eq!(owner, tenant);

    run_ok(&app, &["tenants", "disable", "acme"]);
    let response = get_as(&app, &key, &format!("/v1/messages/{id}")).await;
    assert_eq!(response.status().as_u16(), 403);
    let problem: serde_json::Value = response.json().await.unwrap();
    assert!(
        problem["detail"].as_str().unwrap().contains("disabled"),
        "{problem}"
    );
    let refused = post_as(&app, &key, "/v1/messages", &simple_message()).await;
    assert_eq!(refused.status().as_u16(), 403);
    // Other tenants' keys are not affected.
    assert_eq!(
        app.get(&format!("/v1/messages/{other}"))
            .await
            .status()
            .as_u16(),
        200
    );

    run_ok(&app, &["tenants", "enable", "acme"]);
    let response = get_as(&app, &key, &format!("/v1/messages/{id}")).await;
    assert_eq!(response.status().as_u16(), 200);
}

/// Two producers, `acme` and `globex`, each with a send, read and admin key.
async fn two_producers(app: &TestApp) -> (Producer, Producer) {
    (
        app.producer("acme", EVERY_PRODUCER_SCOPE).await,
        app.producer("globex", EVERY_PRODUCER_SCOPE).await,
    )
}

/// A send of `producer` that stays queued for a minute (scheduled), with a subject and
/// a Bcc that say whose it is.
fn scheduled(producer: &Producer, n: usize) -> serde_json::Value {
    let mut body = simple_message();
    body["Subject"] = json!(format!("{}-secret-subject-{n}", producer.tenant));
    body["Bcc"] = json!(format!("hidden-{}@example.com", producer.tenant));
    body["SendAt"] = json!((chrono::Utc::now() + chrono::Duration::seconds(60)).to_rfc3339());
    body
}

/// Fails when `body` says anything of `other`'s mail: its tenant name, a subject, a
/// recipient or a message id.
fn assert_nothing_of(body: &str, other: &Producer, ids: &[String]) {
    for needle in [
        format!("{}-secret-subject", other.tenant),
        format!("hidden-{}@", other.tenant),
        format!("\"{}\"", other.tenant),
    ]
    .iter()
    .chain(ids)
    {
        assert!(
            !body.contains(needle.as_str()),
            "{needle:?} of {} leaked: {body}",
            other.tenant
        );
    }
}

/// How many messages of `producer`'s tenant are stored.
async fn stored_of(app: &TestApp, producer: &Producer) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages WHERE tenant_id = $1")
        .bind(producer.tenant_id)
        .fetch_one(&app.db)
        .await
        .unwrap()
}

async fn status_and_text(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

#[tokio::test]
async fn another_tenants_message_is_404_to_read_to_its_events_and_to_cancel() {
    let app = spawn_app().await;
    let (acme, globex) = two_producers(&app).await;
    let theirs = acme.send_ok(&scheduled(&acme, 1)).await;
    let never = Uuid::now_v7().to_string();

    for path in [
        format!("/v1/messages/{theirs}"),
        format!("/v1/messages/{theirs}/events"),
    ] {
        let (status, body) = status_and_text(globex.get(&path).await).await;
        assert_eq!(status, 404, "GET {path}: {body}");
        assert_nothing_of(&body.replace(&theirs, ""), &acme, &[]);
        // Exactly what an id that never existed answers: ids cannot be probed.
        let (_, unknown) = status_and_text(globex.get(&path.replace(&theirs, &never)).await).await;
        assert_eq!(body.replace(&theirs, "ID"), unknown.replace(&never, "ID"));
    }
    let (status, body) = status_and_text(
        globex
            .post(&format!("/v1/messages/{theirs}/cancel"), &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 404, "{body}");
    assert_nothing_of(&body.replace(&theirs, ""), &acme, &[]);

    // Still queued: the other tenant's cancel did nothing.
    let (status, body) = status_and_text(acme.get(&format!("/v1/messages/{theirs}")).await).await;
    assert_eq!(status, 200);
    let message: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(message["status"], "queued");
    assert_eq!(message["tenant"], "acme");
    assert_nothing_of(&body, &globex, &[]);
    let (status, _) = status_and_text(
        acme.post(&format!("/v1/messages/{theirs}/cancel"), &json!({}))
            .await,
    )
    .await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn a_listing_shows_only_the_callers_tenant_with_and_without_filters_across_pages() {
    let app = spawn_app().await;
    let (acme, globex) = two_producers(&app).await;
    let mut ids = std::collections::HashMap::new();
    for producer in [&acme, &globex] {
        let mut mine = BTreeSet::new();
        for n in 0..5 {
            mine.insert(producer.send_ok(&scheduled(producer, n)).await);
        }
        ids.insert(producer.tenant.clone(), mine);
    }
    let since = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let until = (chrono::Utc::now() + chrono::Duration::minutes(5)).to_rfc3339();
    let filters = [
        String::new(),
        "&status=queued".to_owned(),
        "&connection=default".to_owned(),
        format!("&since={}&until={}", urlencode(&since), urlencode(&until)),
        "&tenant=globex".to_owned(),
    ];
    for filter in &filters {
        for (me, other) in [(&globex, &acme), (&acme, &globex)] {
            if filter.contains("tenant=") && me.tenant != "globex" {
                continue;
            }
            let others: Vec<String> = ids[&other.tenant].iter().cloned().collect();
            let mut seen = BTreeSet::new();
            let mut cursor = String::new();
            for page in 0.. {
                assert!(page < 10, "the pages do not end");
                let path = format!("/v1/messages?limit=2{filter}{cursor}");
                let (status, body) = status_and_text(me.get(&path).await).await;
                assert_eq!(status, 200, "{path}: {body}");
                assert_nothing_of(&body, other, &others);
                let page: serde_json::Value = serde_json::from_str(&body).unwrap();
                for m in page["messages"].as_array().unwrap() {
                    assert_eq!(m["tenant"], me.tenant.as_str());
                    seen.insert(m["id"].as_str().unwrap().to_owned());
                }
                match page["next_cursor"].as_str() {
                    Some(next) => cursor = format!("&cursor={next}"),
                    None => break,
                }
            }
            assert_eq!(seen, ids[&me.tenant], "{} with {filter:?}", me.tenant);
        }
    }
    // Only an operator chooses a tenant.
    let (status, body) = status_and_text(globex.get("/v1/messages?tenant=acme").await).await;
    assert_eq!(status, 400, "{body}");
    assert!(body.contains("\"field\":\"tenant\""), "{body}");
    assert_nothing_of(&body.replace("tenant=acme", ""), &acme, &[]);
}

fn urlencode(s: &str) -> String {
    s.replace('+', "%2B").replace(':', "%3A")
}

#[tokio::test]
async fn a_send_through_another_tenants_connection_is_404_until_an_operator_shares_it() {
    let app = spawn_app().await;
    let (acme, globex) = two_producers(&app).await;
    let relay = json!({"name": "acme-relay", "host": "127.0.0.1", "port": app.smtp.port(),
                       "security": "none", "default_from": "Acme <mail@acme.example>"});
    assert_eq!(acme.post("/v1/connections", &relay).await.status(), 201);

    let mut body = simple_message();
    body["connection"] = json!("acme-relay");
    let (status, refused) = status_and_text(globex.post("/v1/messages", &body).await).await;
    assert_eq!(status, 404, "{refused}");
    assert!(
        refused.contains("no SMTP connection named \\\"acme-relay\\\""),
        "{refused}"
    );
    assert!(refused.contains("\"field\":\"connection\""), "{refused}");
    assert_nothing_of(&refused, &acme, &[]);
    let mut unknown = body.clone();
    unknown["connection"] = json!("nope-relay");
    let (_, never) = status_and_text(globex.post("/v1/messages", &unknown).await).await;
    assert_eq!(
        refused.replace("acme-relay", "X"),
        never.replace("nope-relay", "X")
    );

    // Nor can the other tenant's admin see, change, verify or delete it.
    for (method, path) in [
        (reqwest::Method::GET, "/v1/connections/acme-relay"),
        (reqwest::Method::PATCH, "/v1/connections/acme-relay"),
        (reqwest::Method::POST, "/v1/connections/acme-relay/verify"),
        (reqwest::Method::DELETE, "/v1/connections/acme-relay"),
    ] {
        let response = globex
            .request(method.clone(), path)
            .json(&json!({"max_connections": 1}))
            .send()
            .await
            .unwrap();
        let (status, text) = status_and_text(response).await;
        assert_eq!(status, 404, "{method} {path}: {text}");
        assert_nothing_of(&text, &acme, &[]);
    }
    let (status, list) = status_and_text(globex.get("/v1/connections").await).await;
    assert_eq!(status, 200);
    assert!(!list.contains("acme-relay"), "{list}");
    let (_, own) = status_and_text(acme.get("/v1/connections").await).await;
    assert!(own.contains("acme-relay"), "{own}");
    assert_nothing_of(&own, &globex, &[]);
    // The configured default connection is shared with everyone.
    let id = globex.send_ok(&simple_message()).await;

    // Sharing is the operator's: the owner's admin cannot.
    let response = acme
        .patch("/v1/connections/acme-relay", &json!({"shared": true}))
        .await;
    assert_eq!(response.status(), 403);
    let operator = app
        .producer_of("default", DEFAULT_TENANT_ID, &[Scope::Operator])
        .await;
    let (status, shared) = status_and_text(
        operator
            .patch("/v1/connections/acme-relay", &json!({"shared": true}))
            .await,
    )
    .await;
    assert_eq!(status, 200, "{shared}");
    let shared: serde_json::Value = serde_json::from_str(&shared).unwrap();
    assert_eq!(
        (shared["shared"].clone(), shared["tenant"].clone()),
        (json!(true), json!("acme"))
    );
    let through_shared = globex.send_ok(&body).await;
    for id in [id, through_shared] {
        let message = globex.wait_until_terminal(&id).await;
        assert_eq!(message["status"], "sent", "{message}");
    }
    // Shared to send through, still not the other tenant's to change or probe.
    let response = globex
        .patch("/v1/connections/acme-relay", &json!({"max_connections": 1}))
        .await;
    assert_eq!(response.status(), 404);
    let response = globex
        .post("/v1/connections/acme-relay/verify", &json!({}))
        .await;
    assert_eq!(response.status(), 404);
    let response = acme
        .post("/v1/connections/acme-relay/verify", &json!({}))
        .await;
    assert_eq!(response.status(), 200);
}

#[tokio::test]
async fn the_same_idempotency_key_in_two_tenants_is_two_messages() {
    let app = spawn_app().await;
    let (acme, globex) = two_producers(&app).await;
    let send = |p: &Producer, subject: &str| {
        let mut body = simple_message();
        body["Subject"] = json!(subject);
        p.request(reqwest::Method::POST, "/v1/messages")
            .header("Idempotency-Key", "order-42")
            .json(&body)
    };
    let first: serde_json::Value = send(&acme, "acme-secret-subject")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    // Another body under the same key: in another tenant it is not a reuse (422)
    // and not a replay of acme's answer.
    let response = send(&globex, "globex-secret-subject").send().await.unwrap();
    assert_eq!(response.status(), 202);
    assert!(response.headers().get("idempotent-replayed").is_none());
    let (_, second) = status_and_text(response).await;
    assert_nothing_of(&second, &acme, &[first["id"].as_str().unwrap().to_owned()]);
    // Each tenant's repeat replays its own answer.
    let replay = send(&acme, "acme-secret-subject").send().await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let replay: serde_json::Value = replay.json().await.unwrap();
    assert_eq!(replay["id"], first["id"]);
    let replay = send(&globex, "globex-secret-subject").send().await.unwrap();
    assert_eq!(replay.headers()["idempotent-replayed"], "true");
    let second: serde_json::Value = serde_json::from_str(&second).unwrap();
    assert_eq!(
        replay.json::<serde_json::Value>().await.unwrap()["id"],
        second["id"]
    );
    let reused = send(&globex, "another body").send().await.unwrap();
    assert_eq!(reused.status(), 422);
}

#[tokio::test]
async fn an_operator_sees_every_tenant_and_manages_tenants_over_http() {
    let app = spawn_app().await;
    let (acme, globex) = two_producers(&app).await;
    let a = acme.send_ok(&scheduled(&acme, 1)).await;
    let g = globex.send_ok(&scheduled(&globex, 1)).await;
    let operator = app
        .producer_of("default", DEFAULT_TENANT_ID, &[Scope::Operator])
        .await;

    for (id, tenant) in [(&a, "acme"), (&g, "globex")] {
        let (status, body) =
            status_and_text(operator.get(&format!("/v1/messages/{id}")).await).await;
        assert_eq!(status, 200, "{body}");
        let message: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(message["tenant"], tenant);
        let response = operator.get(&format!("/v1/messages/{id}/events")).await;
        assert_eq!(response.status(), 200);
    }
    let all: serde_json::Value = operator.get("/v1/messages").await.json().await.unwrap();
    let tenants: BTreeSet<&str> = all["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["tenant"].as_str().unwrap())
        .collect();
    assert_eq!(tenants, BTreeSet::from(["acme", "globex"]));
    let (_, only) = status_and_text(operator.get("/v1/messages?tenant=acme").await).await;
    assert!(only.contains(&a), "{only}");
    assert_nothing_of(&only, &globex, std::slice::from_ref(&g));
    let response = operator.get("/v1/messages?tenant=nosuch").await;
    assert_eq!(response.status(), 404);
    // An operator key without `send` does not send.
    assert_eq!(
        operator
            .post("/v1/messages", &simple_message())
            .await
            .status(),
        403
    );

    // Tenants over HTTP: an admin key is not enough.
    assert_eq!(acme.get("/v1/tenants").await.status(), 403);
    let response = operator
        .post(
            "/v1/tenants",
            &json!({"name": "initech", "max_rate_per_second": 10,
                    "allowed_from_domains": ["Initech.Example"]}),
        )
        .await;
    assert_eq!(response.status(), 201);
    assert_eq!(response.headers()["location"], "/v1/tenants/initech");
    let created: serde_json::Value = response.json().await.unwrap();
    assert_eq!(created["allowed_from_domains"], json!(["initech.example"]));
    assert_eq!(
        operator
            .post("/v1/tenants", &json!({"name": "initech"}))
            .await
            .status(),
        409
    );
    let bad = operator
        .post("/v1/tenants", &json!({"name": "bad name"}))
        .await;
    helpers::assert_problem(bad, 400, "name").await;
    let bad = operator
        .post(
            "/v1/tenants",
            &json!({"name": "x", "max_rate_per_second": 0}),
        )
        .await;
    helpers::assert_problem(bad, 400, "max_rate_per_second").await;
    let listed: serde_json::Value = operator.get("/v1/tenants").await.json().await.unwrap();
    let names: Vec<&str> = listed["tenants"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["acme", "default", "globex", "initech"]);
    let changed: serde_json::Value = operator
        .patch(
            "/v1/tenants/initech",
            &json!({"max_rate_per_second": null, "disabled": true}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(changed["max_rate_per_second"], json!(null));
    assert_eq!(changed["disabled"], json!(true));
    assert_eq!(operator.get("/v1/tenants/nosuch").await.status(), 404);

    // Disabling over HTTP refuses the tenant's keys; enabling lets them in again.
    let response = operator
        .patch("/v1/tenants/globex", &json!({"disabled": true}))
        .await;
    assert_eq!(response.status(), 200);
    assert_eq!(globex.get(&format!("/v1/messages/{g}")).await.status(), 403);
    assert_eq!(acme.get(&format!("/v1/messages/{a}")).await.status(), 200);
    operator
        .patch("/v1/tenants/globex", &json!({"disabled": false}))
        .await;
    assert_eq!(globex.get(&format!("/v1/messages/{g}")).await.status(), 200);

    // Operators see every tenant's connections, with their tenant.
    let relay =
        json!({"name": "globex-relay", "host": "127.0.0.1", "port": 2525, "security": "none"});
    assert_eq!(globex.post("/v1/connections", &relay).await.status(), 201);
    let (_, all) = status_and_text(operator.get("/v1/connections").await).await;
    assert!(all.contains("\"tenant\":\"globex\""), "{all}");
}

#[tokio::test]
async fn a_disabled_tenants_queued_mail_waits_until_the_tenant_is_enabled() {
    let app = spawn_app_with(Script::accept_all(), |s| {
        s.reconcile.interval = Duration::from_millis(200);
        s.reconcile.grace = Duration::from_millis(500);
    })
    .await;
    let (acme, globex) = two_producers(&app).await;
    let operator = app
        .producer_of("default", DEFAULT_TENANT_ID, &[Scope::Operator])
        .await;
    let soon = |p: &Producer| {
        let mut body = scheduled(p, 1);
        body["SendAt"] = json!((chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339());
        body
    };
    let waiting = acme.send_ok(&soon(&acme)).await;
    let other = globex.send_ok(&soon(&globex)).await;
    operator
        .patch("/v1/tenants/acme", &json!({"disabled": true}))
        .await;
    // The other tenant's mail goes; acme's stays queued well past its time.
    let received = app.smtp.wait_for_messages(1, Duration::from_secs(20)).await;
    assert!(helpers::postwire_id(&received[0].data).is_some_and(|id| id == other));
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(
        app.smtp.received().len(),
        1,
        "a disabled tenant's mail was sent"
    );
    let status: String = sqlx::query_scalar("SELECT status FROM messages WHERE id = $1::uuid")
        .bind(&waiting)
        .fetch_one(&app.db)
        .await
        .unwrap();
    assert_eq!(status, "queued");

    // Enabled again (with the CLI this time): the reconciler publishes it.
    run_ok(&app, &["tenants", "enable", "acme"]);
    let received = app.smtp.wait_for_messages(2, Duration::from_secs(20)).await;
    assert!(received
        .iter()
        .any(|m| helpers::postwire_id(&m.data).is_some_and(|id| id == waiting)));
}

#[tokio::test]
async fn a_tenant_over_its_rate_gets_429_with_retry_after_and_others_do_not() {
    let app = spawn_app().await;
    let (acme, globex) = two_producers(&app).await;
    run_ok(
        &app,
        &["tenants", "update", "acme", "--max-rate-per-second", "2"],
    );
    // Ten at once: the bucket holds one second's worth (two).
    let bodies: Vec<serde_json::Value> = (0..10).map(|n| scheduled(&acme, n)).collect();
    let responses =
        futures_util::future::join_all(bodies.iter().map(|body| acme.post("/v1/messages", body)))
            .await;
    let statuses: Vec<u16> = responses.iter().map(|r| r.status().as_u16()).collect();
    let accepted = statuses.iter().filter(|s| **s == 202).count();
    assert!(
        (2..10).contains(&accepted) && statuses.iter().all(|s| [202, 429].contains(s)),
        "{statuses:?}"
    );
    let limited = responses.into_iter().find(|r| r.status() == 429);
    let limited = limited.expect("a 429");
    let retry_after: u64 = limited.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Half a second until the next token, in whole seconds.
    assert_eq!(retry_after, 1);
    let (_, problem) = status_and_text(limited).await;
    assert!(
        problem.contains("urn:postwire:problem:rate-limited"),
        "{problem}"
    );
    assert_nothing_of(&problem, &globex, &[]);
    let stored = stored_of(&app, &acme).await;
    assert_eq!(stored, accepted as i64, "a refused send was stored");
    // Another tenant is not slowed down by acme.
    for n in 0..8 {
        globex.send_ok(&scheduled(&globex, n)).await;
    }
    // A batch bigger than one second's worth never fits: a 400 that says so.
    let batch = json!({"messages": (0..5).map(|n| scheduled(&acme, n)).collect::<Vec<_>>()});
    tokio::time::sleep(Duration::from_secs(2)).await;
    let response = acme.post("/v1/messages/batch", &batch).await;
    helpers::assert_problem(response, 400, "messages").await;
    // After the wait the bucket is full again.
    acme.send_ok(&scheduled(&acme, 9)).await;
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("postwire_rate_limited_total") && l.contains("tenant=\"acme\"")),
        "{metrics}"
    );
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("postwire_messages_total")
                && l.contains("tenant=\"globex\"")
                && l.contains("outcome=\"accepted\"")),
        "no tenant label on postwire_messages_total"
    );
}

#[tokio::test]
async fn a_from_or_reply_to_outside_the_tenants_domains_is_refused_naming_the_field() {
    let app = spawn_app().await;
    let (acme, _globex) = two_producers(&app).await;
    run_ok(
        &app,
        &[
            "tenants",
            "update",
            "acme",
            "--allowed-from-domains",
            "acme.example",
        ],
    );
    let cases = [
        (json!({"From": "x@evil.example"}), "From"),
        // The connection's default sender is a From like any other.
        (json!({}), "From"),
        (
            json!({"From": "x@acme.example", "ReplyTo": "ok@acme.example;y@evil.example"}),
            "ReplyTo",
        ),
        // Only that domain, not its look-alikes.
        (json!({"From": "x@notacme.example"}), "From"),
    ];
    for (changes, field) in cases {
        let response = acme
            .post("/v1/messages", &helpers::message_with(changes.clone()))
            .await;
        let problem = helpers::assert_problem(response, 400, field).await;
        assert!(
            problem.to_string().contains("acme.example"),
            "{changes}: {problem}"
        );
    }
    let stored = stored_of(&app, &acme).await;
    assert_eq!(stored, 0);
    acme.send_ok(&helpers::message_with(
        json!({"From": "Acme <News@ACME.example>", "ReplyTo": "help@acme.example"}),
    ))
    .await;
    // Other tenants keep any sender.
    app.send_ok(&helpers::message_with(json!({"From": "x@evil.example"})))
        .await;
}

#[tokio::test]
async fn every_log_line_about_a_tenants_message_names_the_tenant() {
    let app = spawn_app().await;
    let acme = app.producer("acme", EVERY_PRODUCER_SCOPE).await;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    // The real binary, API and worker in one process, on queues of its own (the
    // in-process app's worker must not take its jobs), logging JSON as in production.
    let child = app
        .cli(&["serve", "--role", "all"])
        .env(
            "POSTWIRE__AMQP__QUEUE_PREFIX",
            format!("{}-logs", app.settings.amqp.queue_prefix),
        )
        .env("POSTWIRE__SERVER__PORT", port.to_string())
        .env("POSTWIRE__LOG__FORMAT", "json")
        .env("POSTWIRE__LOG__LEVEL", "info,postwire=debug")
        .env("POSTWIRE__WORKER__SHUTDOWN_TIMEOUT", "2s")
        .env("POSTWIRE__SERVER__SHUTDOWN_TIMEOUT", "2s")
        .stderr(Stdio::piped())
        .spawn()
        .expect("start postwire");
    let base = format!("http://127.0.0.1:{port}");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !matches!(reqwest::get(format!("{base}/readyz")).await, Ok(r) if r.status() == 200) {
        assert!(tokio::time::Instant::now() < deadline, "never ready");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let client = reqwest::Client::new();
    let send = |body: serde_json::Value| {
        client
            .post(format!("{base}/v1/messages"))
            .bearer_auth(&acme.key)
            .json(&body)
            .send()
    };
    let id_of = |v: serde_json::Value| v["id"].as_str().unwrap().to_owned();
    let now = send(simple_message()).await.unwrap().json().await.unwrap();
    let mut later = simple_message();
    // Through a delay queue first.
    later["SendAt"] = json!((chrono::Utc::now() + chrono::Duration::seconds(1)).to_rfc3339());
    let later = send(later).await.unwrap().json().await.unwrap();
    let cancelled = id_of(
        send(scheduled(&acme, 1))
            .await
            .unwrap()
            .json()
            .await
            .unwrap(),
    );
    let response = client
        .post(format!("{base}/v1/messages/{cancelled}/cancel"))
        .bearer_auth(&acme.key)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let ids = [id_of(now), id_of(later), cancelled];
    for id in &ids[..2] {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let m: serde_json::Value = client
                .get(format!("{base}/v1/messages/{id}"))
                .bearer_auth(&acme.key)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            if m["status"] == "sent" {
                break;
            }
            assert!(tokio::time::Instant::now() < deadline, "{m}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = std::process::Command::new("kill")
        .arg(child.id().to_string())
        .status();
    // Waited for off the runtime: the test's SMTP server (on this runtime) must
    // answer the worker's QUIT while it stops.
    let output = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let logged = String::from_utf8_lossy(&output.stderr);
    let about: Vec<&str> = logged
        .lines()
        .filter(|l| ids.iter().any(|id| l.contains(id.as_str())))
        .collect();
    for line in &about {
        assert!(line.contains(r#""tenant":"acme""#), "no tenant: {line}");
    }
    for what in ["accepted", "sending", "sent", "cancelled"] {
        assert!(
            about
                .iter()
                .any(|l| l.contains(&format!(r#""message":"{what}""#))),
            "no {what:?} line about the messages in:\n{}",
            about.join("\n")
        );
    }
}
