//! What operators use: the message listing, retention, metrics, OpenAPI.

use crate::helpers;

use std::time::Duration;

use helpers::{simple_message, spawn_app, spawn_app_with, Script};
use serde_json::{json, Value};

async fn page(app: &helpers::TestApp, query: &str) -> Value {
    let response = app.get(&format!("/v1/messages?{query}")).await;
    assert_eq!(response.status().as_u16(), 200);
    response.json().await.unwrap()
}

fn ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn the_listing_pages_newest_first_and_stays_stable_under_inserts() {
    let app = spawn_app().await;
    let mut sent = Vec::new();
    for i in 0..7 {
        let mut body = simple_message();
        body["Subject"] = json!(format!("m{i}"));
        sent.push(app.send_ok(&body).await);
    }
    let first = page(&app, "limit=3").await;
    assert_eq!(
        ids(&first),
        [sent[6].clone(), sent[5].clone(), sent[4].clone()]
    );
    // New messages arriving between pages do not shift the next page.
    app.send_ok(&simple_message()).await;
    let cursor = first["next_cursor"].as_str().unwrap();
    let second = page(&app, &format!("limit=3&cursor={cursor}")).await;
    assert_eq!(
        ids(&second),
        [sent[3].clone(), sent[2].clone(), sent[1].clone()]
    );
    let cursor = second["next_cursor"].as_str().unwrap();
    let third = page(&app, &format!("limit=3&cursor={cursor}")).await;
    assert_eq!(ids(&third), [sent[0].clone()]);
    assert!(third["next_cursor"].is_null());
}

#[tokio::test]
async fn the_listing_filters_by_status_connection_and_time() {
    let app = spawn_app_with(Script::reject_data(550), |_| {}).await;
    let failed = app.send_ok(&simple_message()).await;
    app.wait_until_terminal(&failed).await;
    let before = chrono::Utc::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let later = app.send_ok(&simple_message()).await;
    app.wait_until_terminal(&later).await;

    assert_eq!(ids(&page(&app, "status=failed").await).len(), 2);
    assert!(ids(&page(&app, "status=sent").await).is_empty());
    assert_eq!(ids(&page(&app, "connection=default").await).len(), 2);
    assert!(ids(&page(&app, "connection=other").await).is_empty());
    let since = before.to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    assert_eq!(
        ids(&page(&app, &format!("since={since}")).await),
        std::slice::from_ref(&later)
    );
    assert_eq!(
        ids(&page(&app, &format!("until={since}")).await),
        std::slice::from_ref(&failed)
    );
    for bad in [
        "status=lost",
        "limit=0",
        "limit=501",
        "since=yesterday",
        "cursor=x",
    ] {
        let response = app.get(&format!("/v1/messages?{bad}")).await;
        assert_eq!(response.status().as_u16(), 400, "{bad}");
    }
}

#[tokio::test]
async fn the_listing_uses_an_index_on_a_large_table() {
    let app = spawn_app().await;
    // Five tenants (`default` and four more), 10,000 messages each.
    let mut tenants = vec![postwire::domain::DEFAULT_TENANT_ID];
    for n in 1..5 {
        let id = uuid::Uuid::now_v7();
        sqlx::query("INSERT INTO tenants (id, name) VALUES ($1, $2)")
            .bind(id)
            .bind(format!("tenant-{n}"))
            .execute(&app.db)
            .await
            .unwrap();
        tenants.push(id);
    }
    // 50,000 synthetic rows, mostly sent: a listing must not scan them.
    sqlx::query(
        "INSERT INTO messages (id, tenant_id, status, connection, from_addr, recipients,
             envelope_from, envelope_to, subject, message_id, size, created_at)
         SELECT gen_random_uuid(), ($1::uuid[])[1 + g % 5],
                CASE WHEN g % 100 = 0 THEN 'failed' ELSE 'sent' END,
                CASE WHEN g % 10 = 0 THEN 'bulk' ELSE 'default' END, 'a@example.com',
                '{\"to\":[],\"cc\":[],\"bcc\":[]}', 'a@example.com', ARRAY['b@example.com'],
                's', '<x@y>', 1, now()
           FROM generate_series(1, 50000) g",
    )
    .bind(&tenants)
    .execute(&app.db)
    .await
    .unwrap();
    sqlx::query("ANALYZE messages")
        .execute(&app.db)
        .await
        .unwrap();
    let store = postwire::store::Store::from_pool(app.db.clone());
    for tenant in [None, Some(tenants[2])] {
        for filter in [
            postwire::store::ListFilter {
                status: Some(postwire::domain::Status::Failed),
                ..Default::default()
            },
            postwire::store::ListFilter {
                connection: Some("bulk".into()),
                ..Default::default()
            },
            postwire::store::ListFilter {
                since: Some(chrono::Utc::now() - chrono::Duration::hours(1)),
                ..Default::default()
            },
            postwire::store::ListFilter::default(),
        ] {
            let filter = postwire::store::ListFilter {
                tenant,
                limit: 50,
                ..filter
            };
            let plan = store.explain_list(&filter).await.unwrap();
            println!("{filter:?}:\n{plan}\n");
            assert!(plan.contains("Index"), "{filter:?}:\n{plan}");
            assert!(!plan.contains("Seq Scan"), "{filter:?}:\n{plan}");
            if tenant.is_some() {
                assert!(plan.contains("tenant_id"), "{filter:?}:\n{plan}");
            }
            if tenant.is_some() && filter.status.is_none() && filter.connection.is_none() {
                // A tenant's page is read off the tenant's index, not filtered out of
                // everyone's.
                assert!(
                    plan.lines()
                        .any(|l| l.contains("Index Cond") && l.contains("tenant_id")),
                    "{filter:?}:\n{plan}"
                );
            }
        }
    }
}

#[tokio::test]
async fn retention_drops_old_content_but_keeps_the_history() {
    let app = spawn_app_with(Script::accept_all(), |s| {
        s.retention.days = 0.5 / 86_400.0; // half a second
        s.retention.interval = Duration::from_millis(200);
    })
    .await;
    let id = app.send_ok(&simple_message()).await;
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let purged: bool = sqlx::query_scalar(
            "SELECT NOT EXISTS (SELECT 1 FROM message_bodies WHERE message_id = $1::uuid)",
        )
        .bind(&id)
        .fetch_one(&app.db)
        .await
        .unwrap();
        if purged {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "content not purged");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let status = app.message(&id).await;
    assert_eq!(status["status"], "sent");
    assert_eq!(app.event_types(&id).await, ["accepted", "attempt", "sent"]);
}

#[tokio::test]
async fn metrics_are_scraped_without_a_key() {
    let app = spawn_app().await;
    let id = app.send_ok(&simple_message()).await;
    app.wait_until_terminal(&id).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // an outbox round samples the gauges
    let response = app
        .anonymous
        .get(format!("{}/metrics", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let text = response.text().await.unwrap();
    for needle in [
        r#"postwire_messages_total{tenant="default",connection="default",outcome="accepted"}"#,
        r#"postwire_messages_total{tenant="default",connection="default",outcome="sent"}"#,
        r#"postwire_smtp_replies_total{connection="default",class="2xx"}"#,
        "postwire_smtp_attempt_duration_seconds_bucket",
        "postwire_publish_confirm_seconds_bucket",
        "postwire_deliveries_in_flight",
        r#"postwire_smtp_sessions{connection="default",state="idle"}"#,
        "postwire_outbox_backlog",
        "postwire_queue_messages{queue=",
    ] {
        assert!(text.contains(needle), "missing {needle} in:\n{text}");
    }
}

#[tokio::test]
async fn readiness_names_the_dependency_that_is_down() {
    let broker = helpers::proxy::TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let port = broker.port();
    let app = spawn_app_with(Script::accept_all(), |s| {
        s.amqp.url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    })
    .await;
    let ready = app
        .anonymous
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 200);
    broker.cut();
    let ready = app
        .anonymous
        .get(format!("{}/readyz", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["rabbitmq"], "unreachable");
    assert_eq!(body["checks"]["postgres"], "ok");
}

#[tokio::test]
async fn sigterm_lets_the_api_finish_the_request_in_flight_then_exit() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    // The in-process app delivers and answers lookups; the API under test is a
    // process of its own on the same database and queues, so it gets a real SIGTERM.
    let app = spawn_app().await;
    let mut api = app.api_process(&[]).await;
    let port = api.port;
    let key = helpers::create_key(&app.db, &[postwire::keys::Scope::Send], None).await;

    // A request whose body is still arriving when the signal comes.
    let body = serde_json::to_vec(&simple_message()).unwrap();
    let mut request = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let head = format!(
        "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    request.write_all(head.as_bytes()).await.unwrap();
    request.write_all(&body[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    api.terminate();
    tokio::time::sleep(Duration::from_millis(500)).await;

    // Draining: no new connections, but the request in flight completes.
    assert!(
        TcpStream::connect(("127.0.0.1", port)).await.is_err(),
        "the API still accepts connections after SIGTERM"
    );
    request.write_all(&body[10..]).await.unwrap();
    let mut response = String::new();
    request.read_to_string(&mut response).await.unwrap();
    assert!(response.starts_with("HTTP/1.1 202"), "{response}");
    let id = response
        .split("\r\n\r\n")
        .nth(1)
        .and_then(|json| serde_json::from_str::<Value>(json).ok())
        .and_then(|v| v["id"].as_str().map(str::to_owned))
        .expect("the 202 carries the id");

    // Then the process exits cleanly, and the message it accepted is delivered.
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    let status = loop {
        if let Some(status) = api.child.try_wait().unwrap() {
            break status;
        }
        assert!(std::time::Instant::now() < deadline, "the API did not exit");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(status.success(), "exit status {status}");
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");
}
