//! Tenants: made and changed with the CLI; what existed before them belongs to the
//! tenant `default`; a disabled tenant's keys are refused.

use crate::helpers;

use std::borrow::Cow;
use std::process::{Output, Stdio};

use helpers::{fresh_database, simple_message, spawn_app, TestApp};
use postwire::domain::DEFAULT_TENANT_ID;
use postwire::store::MIGRATOR;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use uuid::Uuid;

/// The migration that made tenants.
const TENANTS_MIGRATION: i64 = 20261202100000;

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

    MIGRATOR.run(&db).await.unwrap();

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
