//! Retries, backoff and faults: every accepted message reaches a terminal status.

use crate::helpers;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use helpers::proxy::TcpProxy;
use helpers::{postwire_id, simple_message, spawn_app, spawn_app_with, Action, Event, Script};
use postwire::config::QueueType;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(20);

/// Fast, deterministic retry settings.
fn fast_retries(s: &mut postwire::config::Settings) {
    s.retry.initial = Duration::from_millis(100);
    s.retry.factor = 2.0;
    s.retry.max_delay = Duration::from_secs(1);
    s.retry.jitter = false;
}

/// When the server finished reading each DATA, per postwire message id.
type DataTimes = Arc<Mutex<HashMap<String, Vec<Instant>>>>;

/// Answers `code` to the first `k` DATA of every message, then 250, noting
/// when each DATA arrived.
fn fail_each_message_first(k: usize, code: u16) -> (Script, DataTimes) {
    let seen: DataTimes = Arc::default();
    let times = Arc::clone(&seen);
    let script = Script::new(move |event, _| match event {
        Event::DataEnd { data, .. } => {
            let id = postwire_id(data).unwrap_or_default();
            let mut seen = seen.lock().unwrap();
            let tries = seen.entry(id).or_default();
            tries.push(Instant::now());
            if tries.len() <= k {
                Action::Reply(code, "4.3.0 try again later".into())
            } else {
                Action::Default
            }
        }
        _ => Action::Default,
    });
    (script, times)
}

#[tokio::test]
async fn transient_451s_are_retried_until_sent_with_growing_delays() {
    retried_until_sent(QueueType::Classic).await;
}

#[tokio::test]
async fn transient_451s_are_retried_through_quorum_queues_too() {
    retried_until_sent(QueueType::Quorum).await;
}

async fn retried_until_sent(queue_type: QueueType) {
    let (script, data_times) = fail_each_message_first(2, 451);
    let app = spawn_app_with(script, |s| {
        fast_retries(s);
        s.amqp.queue_type = Some(queue_type);
    })
    .await;
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut body = simple_message();
        body["Subject"] = json!(format!("retry {i}"));
        ids.push(app.send_ok(&body).await);
    }
    for id in &ids {
        let status = app.wait_until_terminal(id).await;
        assert_eq!(status["status"], "sent", "{status}");
        assert_eq!(status["attempts"], 3);
        assert_eq!(
            app.event_types(id).await,
            ["accepted", "attempt", "deferred", "attempt", "deferred", "attempt", "sent"]
        );
        let events = app.events(id).await;
        let attempts: Vec<&Value> = events["events"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|e| e["type"] == "attempt")
            .collect();
        assert_eq!(attempts[0]["reply"]["code"], 451);
        assert_eq!(attempts[0]["reply"]["enhanced"], "4.3.0");
    }
    // initial = 100 ms, factor 2: the waits are at least 100 ms, then 200 ms. Timed at
    // the server: the worker computes each due time after it read the refusal, so
    // the spacing there is a hard lower bound, whatever the database's commit latency.
    let data_times = data_times.lock().unwrap().clone();
    assert_eq!(data_times.len(), 5);
    for (id, tries) in &data_times {
        assert_eq!(tries.len(), 3, "{id}");
        let first_wait = tries[1] - tries[0];
        let second_wait = tries[2] - tries[1];
        assert!(
            first_wait >= Duration::from_millis(100),
            "{id}: {first_wait:?}"
        );
        assert!(
            second_wait >= Duration::from_millis(200),
            "{id}: {second_wait:?}"
        );
    }
    let mails = app.smtp.wait_for_messages(5, WAIT).await;
    assert_eq!(mails.len(), 5);
    assert_eq!(
        app.smtp.data_attempts(),
        15,
        "5 messages × (2 refusals + 1 success)"
    );
}

#[tokio::test]
async fn a_permanent_550_is_attempted_exactly_once() {
    let app = spawn_app_with(Script::reject_data(550), fast_retries).await;
    let id = app.send_ok(&simple_message()).await;
    let status = app.wait_until_terminal(&id).await;
    assert_eq!(status["status"], "failed");
    // Longer than several retry delays: no retry may follow.
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(app.smtp.data_attempts(), 1);
    assert_eq!(app.message(&id).await["attempts"], 1);
}

#[tokio::test]
async fn attempts_stop_at_max_attempts_and_the_message_fails() {
    let app = spawn_app_with(Script::reject_data(451), |s| {
        fast_retries(s);
        s.retry.max_attempts = 3;
    })
    .await;
    let id = app.send_ok(&simple_message()).await;
    let status = app.wait_until_terminal(&id).await;
    assert_eq!(status["status"], "failed");
    assert_eq!(status["attempts"], 3);
    assert!(status["last_error"]
        .as_str()
        .unwrap()
        .contains("gave up after 3 attempts"));
    assert_eq!(app.smtp.data_attempts(), 3);
}

#[tokio::test]
async fn a_message_past_max_age_expires_instead_of_retrying() {
    let app = spawn_app_with(Script::reject_data(451), |s| {
        fast_retries(s);
        s.retry.max_age = Duration::from_millis(250);
    })
    .await;
    let id = app.send_ok(&simple_message()).await;
    let status = app.wait_until_terminal(&id).await;
    assert_eq!(status["status"], "failed");
    assert!(
        status["last_error"].as_str().unwrap().contains("expired"),
        "{status}"
    );
    assert!(app.event_types(&id).await.contains(&"expired".to_owned()));
}

#[tokio::test]
async fn messages_wait_out_an_smtp_outage_and_are_delivered_when_it_ends() {
    let down = Script::new(|event, _| match event {
        Event::Connect => Action::Drop,
        _ => Action::Default,
    });
    let app = spawn_app_with(down, fast_retries).await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        ids.push(app.send_ok(&simple_message()).await);
    }
    for id in &ids {
        app.wait_for(id, "deferred", |m| m["status"] == "deferred")
            .await;
    }
    assert!(app.smtp.received().is_empty());
    app.smtp.set_script(Script::accept_all());
    for id in &ids {
        assert_eq!(app.wait_until_terminal(id).await["status"], "sent");
    }
    let mails = app.smtp.wait_for_messages(10, WAIT).await;
    let mut delivered: Vec<String> = mails.iter().filter_map(|m| postwire_id(&m.data)).collect();
    delivered.sort();
    delivered.dedup();
    assert_eq!(delivered.len(), 10, "each message once");
    assert_eq!(mails.len(), 10);
}

#[tokio::test]
async fn a_stalled_smtp_server_times_out_and_leaks_no_connection() {
    let app = spawn_app_with(Script::stall_on_data(), |s| {
        fast_retries(s);
        s.retry.initial = Duration::from_millis(500);
        s.smtp.data_timeout = Duration::from_millis(300);
    })
    .await;
    let id = app.send_ok(&simple_message()).await;
    let status = app
        .wait_for(&id, "deferred after a timeout", |m| {
            m["status"] == "deferred"
                && m["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("no reply"))
        })
        .await;
    assert_eq!(status["attempts"], 1);
    // The timed-out session is closed, not returned to the pool.
    app.smtp.wait_for_sessions_open(0, WAIT).await;
    app.smtp.set_script(Script::accept_all());
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");
    assert_eq!(app.smtp.received().len(), 1);
}

#[tokio::test]
async fn rabbitmq_going_away_delays_messages_but_loses_none() {
    broker_goes_away(QueueType::Classic).await;
}

#[tokio::test]
async fn rabbitmq_going_away_with_quorum_queues_loses_none_either() {
    broker_goes_away(QueueType::Quorum).await;
}

async fn broker_goes_away(queue_type: QueueType) {
    let broker = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let port = broker.port();
    let app = spawn_app_with(Script::accept_all(), |s| {
        s.amqp.url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
        s.amqp.queue_type = Some(queue_type);
    })
    .await;
    let first = app.send_ok(&simple_message()).await;
    assert_eq!(app.wait_until_terminal(&first).await["status"], "sent");

    broker.cut();
    let mut ids = Vec::new();
    for _ in 0..20 {
        // Committed to PostgreSQL: still 202 while the broker is unreachable.
        ids.push(app.send_ok(&simple_message()).await);
    }
    tokio::time::sleep(Duration::from_millis(700)).await;
    for id in &ids {
        assert_eq!(app.message(id).await["status"], "queued");
    }
    broker.restore();
    for id in &ids {
        assert_eq!(app.wait_until_terminal(id).await["status"], "sent");
    }
    let mails = app.smtp.wait_for_messages(21, WAIT).await;
    assert_eq!(mails.len(), 21, "every message once, none twice");
}

#[tokio::test]
async fn postgres_going_away_gives_503_with_retry_after_never_202() {
    let database = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let port = database.port();
    let app = spawn_app_with(Script::accept_all(), |s| {
        s.database.url = s.database.url.replace(":5432/", &format!(":{port}/"));
        s.database.acquire_timeout = Duration::from_millis(500);
    })
    .await;
    app.send_ok(&simple_message()).await;

    database.cut();
    for _ in 0..3 {
        let response = app.send(&simple_message()).await;
        assert_eq!(response.status().as_u16(), 503);
        assert!(response.headers().contains_key("retry-after"));
    }
    database.restore();
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let response = app.send(&simple_message()).await;
        if response.status().as_u16() == 202 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the API did not recover"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(app.stored_messages().await, 2);
}

#[tokio::test]
async fn an_idempotency_key_replays_the_first_answer_and_refuses_another_body() {
    let app = spawn_app_with(Script::accept_all(), |_| {}).await;
    let send = |body: Value, key: &'static str| {
        let request = app
            .client
            .post(format!("{}/v1/messages", app.address))
            .header("Idempotency-Key", key)
            .json(&body);
        async move { request.send().await.unwrap() }
    };
    let first = send(simple_message(), "order-42").await;
    assert_eq!(first.status().as_u16(), 202);
    let first: Value = first.json().await.unwrap();

    let again = send(simple_message(), "order-42").await;
    assert_eq!(again.status().as_u16(), 202);
    assert_eq!(again.headers()["idempotent-replayed"], "true");
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);

    let mut other = simple_message();
    other["Subject"] = json!("something else");
    helpers::assert_problem(send(other, "order-42").await, 422, "Idempotency-Key").await;

    assert_eq!(app.stored_messages().await, 1);
    app.smtp.wait_for_messages(1, WAIT).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(app.smtp.received().len(), 1);
}

#[tokio::test]
async fn concurrent_first_uses_of_a_key_make_one_message() {
    let app = spawn_app_with(Script::accept_all(), |_| {}).await;
    let requests = (0..8).map(|_| {
        app.client
            .post(format!("{}/v1/messages", app.address))
            .header("Idempotency-Key", "concurrent-1")
            .json(&simple_message())
            .send()
    });
    let responses = futures_util::future::join_all(requests).await;
    let mut ids = Vec::new();
    for response in responses {
        let response = response.unwrap();
        let status = response.status().as_u16();
        assert!(status == 202 || status == 409, "{status}");
        if status == 202 {
            ids.push(response.json::<Value>().await.unwrap()["id"].clone());
        }
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "every 202 carries the same id");
    assert_eq!(app.stored_messages().await, 1);
}

#[tokio::test]
async fn a_malformed_idempotency_key_is_refused() {
    let app = spawn_app_with(Script::accept_all(), |_| {}).await;
    let response = app
        .client
        .post(format!("{}/v1/messages", app.address))
        .header("Idempotency-Key", "k".repeat(256))
        .json(&simple_message())
        .send()
        .await
        .unwrap();
    helpers::assert_problem(response, 400, "Idempotency-Key").await;
    assert_eq!(app.stored_messages().await, 0);
}

#[tokio::test]
async fn a_deferred_message_can_be_cancelled_and_is_never_sent() {
    let app = spawn_app_with(Script::reject_data(451), |s| {
        fast_retries(s);
        s.retry.initial = Duration::from_millis(700);
    })
    .await;
    let id = app.send_ok(&simple_message()).await;
    app.wait_for(&id, "deferred", |m| m["status"] == "deferred")
        .await;

    let response = app
        .post(&format!("/v1/messages/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status().as_u16(), 200);
    assert_eq!(app.message(&id).await["status"], "cancelled");
    app.smtp.set_script(Script::accept_all());
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(app.smtp.data_attempts(), 1, "no attempt after the cancel");
    assert!(app.smtp.received().is_empty());
    assert_eq!(app.message(&id).await["status"], "cancelled");
    assert_eq!(app.event_types(&id).await.last().unwrap(), "cancelled");

    let again = app
        .post(&format!("/v1/messages/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(again.status().as_u16(), 409);
    let unknown = app
        .post(
            &format!("/v1/messages/{}/cancel", uuid::Uuid::now_v7()),
            &json!({}),
        )
        .await;
    assert_eq!(unknown.status().as_u16(), 404);
}

#[tokio::test]
async fn an_authentication_failure_pauses_the_connection_without_spending_attempts() {
    let app = spawn_app_with(Script::require_auth("mailer", "right"), |s| {
        fast_retries(s);
        s.retry.max_attempts = 2;
        s.retry.auth_pause = Duration::from_millis(400);
        let conn = s.smtp.default.as_mut().unwrap();
        conn.username = Some("mailer".into());
        conn.password = Some("wrong".into());
    })
    .await;
    let id = app.send_ok(&simple_message()).await;
    let status = app
        .wait_for(&id, "deferred by the auth failure", |m| {
            m["status"] == "deferred"
        })
        .await;
    assert_eq!(
        status["attempts"], 0,
        "an auth failure costs no attempt: {status}"
    );
    assert!(status["last_error"].as_str().unwrap().contains("AUTH"));
    // Several pauses pass, more than max_attempts, and the message is still waiting.
    // (Each pause ends with a claim and a new refusal: the message is `sending` for
    // an instant then, so look at it between two of them.)
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let status = app
        .wait_for(&id, "deferred again", |m| m["status"] == "deferred")
        .await;
    assert_eq!(status["attempts"], 0, "{status}");
    // The server accepts the credentials again: the message goes out.
    app.smtp.set_script(Script::accept_all());
    let status = app.wait_until_terminal(&id).await;
    assert_eq!(status["status"], "sent");
    assert_eq!(status["attempts"], 1);
}

/// Publishes raw bytes as a delivery job, bypassing the API.
async fn publish_raw(settings: &postwire::config::Settings, body: &[u8]) {
    use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
    let conn = postwire::queue::connect(&settings.amqp, "test")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await
        .unwrap();
    let queue = format!("{}.deliver", settings.amqp.queue_prefix);
    channel
        .basic_publish(
            "".into(),
            queue.as_str().into(),
            BasicPublishOptions::default(),
            body,
            Default::default(),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let _ = conn.close(200, "done".into()).await;
}

/// Takes one message from the dead-letter queue, waiting for it to arrive.
async fn dead_letter(settings: &postwire::config::Settings) -> Vec<u8> {
    use lapin::options::BasicGetOptions;
    let conn = postwire::queue::connect(&settings.amqp, "test")
        .await
        .unwrap();
    let channel = conn.create_channel().await.unwrap();
    let queue = format!("{}.dead", settings.amqp.queue_prefix);
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let got = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap();
        if let Some(message) = got {
            let _ = conn.close(200, "done".into()).await;
            return message.delivery.data;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "nothing reached {queue}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_poison_job_goes_to_the_dead_letter_queue_and_the_rest_keep_flowing() {
    let app = spawn_app_with(Script::accept_all(), |_| {}).await;
    // A first delivery proves the worker has declared its queues.
    let first = app.send_ok(&simple_message()).await;
    assert_eq!(app.wait_until_terminal(&first).await["status"], "sent");
    publish_raw(&app.settings, b"this is not a message id").await;
    // A job for a message that does not exist is acknowledged and skipped.
    publish_raw(&app.settings, uuid::Uuid::now_v7().to_string().as_bytes()).await;
    let id = app.send_ok(&simple_message()).await;
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");
    assert_eq!(
        dead_letter(&app.settings).await,
        b"this is not a message id"
    );
}

#[tokio::test]
async fn a_message_whose_content_is_gone_fails_and_is_dead_lettered() {
    let app = helpers::spawn_role_with(postwire::Role::Api, Script::accept_all(), |_| {}).await;
    let id = app.send_ok(&simple_message()).await;
    sqlx::query("DELETE FROM message_bodies WHERE message_id = $1::uuid")
        .bind(&id)
        .execute(&app.db)
        .await
        .unwrap();
    let worker = postwire::Application::build(app.settings.clone(), postwire::Role::Worker)
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(worker.run(stop.clone()));

    let status = app.wait_until_terminal(&id).await;
    assert_eq!(status["status"], "failed");
    assert!(status["last_error"]
        .as_str()
        .unwrap()
        .contains("content is missing"));
    assert_eq!(dead_letter(&app.settings).await, id.as_bytes());
    stop.cancel();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_told_to_stop_finishes_its_deliveries_first() {
    // Each DATA takes 400 ms to be answered; count the ones under way.
    let started = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = started.clone();
    let slow = Script::new(move |event, _| {
        if let Event::DataEnd { .. } = event {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            std::thread::sleep(Duration::from_millis(400));
        }
        Action::Default
    });
    let app = helpers::spawn_role_with(postwire::Role::Api, slow, |_| {}).await;
    let worker = postwire::Application::build(app.settings.clone(), postwire::Role::Worker)
        .await
        .unwrap();
    let stop = tokio_util::sync::CancellationToken::new();
    let running = tokio::spawn(worker.run(stop.clone()));

    let mut ids = Vec::new();
    for _ in 0..3 {
        ids.push(app.send_ok(&simple_message()).await);
    }
    let deadline = tokio::time::Instant::now() + WAIT;
    while started.load(std::sync::atomic::Ordering::SeqCst) == 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no delivery started"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Stop while a delivery is in flight.
    stop.cancel();
    let in_flight = started.load(std::sync::atomic::Ordering::SeqCst);
    tokio::time::timeout(Duration::from_secs(5), running)
        .await
        .expect("the worker stops within its shutdown timeout")
        .unwrap()
        .unwrap();
    let mut sent = 0;
    for id in &ids {
        match app.message(id).await["status"].as_str().unwrap() {
            "sent" => sent += 1,
            "queued" => {}
            other => panic!("{id} left {other}: a stopped worker leaves nothing half-done"),
        }
    }
    assert!(
        sent >= in_flight,
        "the {in_flight} deliveries under way finished ({sent} sent)"
    );
    assert_eq!(app.smtp.received().len(), sent);
}

#[tokio::test]
async fn an_expired_idempotency_key_can_be_used_again() {
    let app = spawn_app_with(Script::accept_all(), |s| {
        s.idempotency.ttl = Duration::from_millis(300);
    })
    .await;
    let send = |subject: &'static str| {
        let mut body = simple_message();
        body["Subject"] = json!(subject);
        app.client
            .post(format!("{}/v1/messages", app.address))
            .header("Idempotency-Key", "short-lived")
            .json(&body)
            .send()
    };
    let first: Value = send("one").await.unwrap().json().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // Past the TTL the key is free: another body is a new message, not a 422.
    let second = send("two").await.unwrap();
    assert_eq!(second.status().as_u16(), 202);
    assert!(!second.headers().contains_key("idempotent-replayed"));
    let second: Value = second.json().await.unwrap();
    assert_ne!(first["id"], second["id"]);
    assert_eq!(app.stored_messages().await, 2);
}

#[tokio::test]
async fn one_batched_claim_sorts_out_claimable_duplicate_running_and_finished_messages() {
    use postwire::domain::{Claim, Outcome};
    use postwire::store::Store;
    // API only: the messages stay queued for the store to claim by hand.
    let app = helpers::spawn_role_with(postwire::Role::Api, Script::accept_all(), |_| {}).await;
    let store = Store::from_pool(app.db.clone());
    let a: uuid::Uuid = app.send_ok(&simple_message()).await.parse().unwrap();
    let b: uuid::Uuid = app.send_ok(&simple_message()).await.parse().unwrap();
    let unknown = uuid::Uuid::now_v7();
    let (first, second) = (uuid::Uuid::now_v7(), uuid::Uuid::now_v7());
    store.register_worker(first, "test").await.unwrap();
    store.register_worker(second, "test").await.unwrap();
    let dead = Duration::from_secs(60);

    let claims = store.claim(&[a, b, a, unknown], first, dead).await.unwrap();
    assert!(matches!(&claims[0], Claim::Claimed(c) if c.id == a && c.attempt == 1));
    assert!(matches!(&claims[1], Claim::Claimed(c) if c.id == b && !c.raw.is_empty()));
    assert!(matches!(claims[2], Claim::InProgress), "{:?}", claims[2]);
    assert!(matches!(claims[3], Claim::Nothing(None)), "{:?}", claims[3]);

    // b ends; a is still being sent by a live worker.
    let sent = Outcome {
        status: postwire::domain::Status::Sent,
        event: "sent",
        reply: None,
        error: None,
        recipients: Vec::new(),
        next_attempt_at: None,
        attempted: true,
    };
    // Only the claimant of that attempt records it.
    let none: Vec<uuid::Uuid> = Vec::new();
    assert_eq!(
        store
            .record_outcomes(second, &[(b, 1, &sent)])
            .await
            .unwrap()
            .messages,
        none
    );
    assert_eq!(
        store
            .record_outcomes(first, &[(b, 2, &sent)])
            .await
            .unwrap()
            .messages,
        none
    );
    assert_eq!(
        store
            .record_outcomes(first, &[(b, 1, &sent)])
            .await
            .unwrap()
            .messages,
        [b]
    );
    let claims = store.claim(&[a, b], second, dead).await.unwrap();
    assert!(matches!(claims[0], Claim::InProgress), "{:?}", claims[0]);
    assert!(
        matches!(
            claims[1],
            Claim::Nothing(Some(postwire::domain::Status::Sent))
        ),
        "{:?}",
        claims[1]
    );
    assert_eq!(app.message(&b.to_string()).await["attempts"], 1);
}

/// `SendAt` 2 s ahead (within the delay queues) and 4 s ahead with the delay queues
/// shorter than that (so it waits in PostgreSQL for the reconciler): neither is
/// attempted before its time, both are sent, the lookup and the events show it.
#[tokio::test]
async fn scheduled_sends_wait_for_send_at_in_the_queues_or_in_postgres() {
    let app = spawn_app_with(Script::accept_all(), |s| {
        fast_retries(s);
        s.retry.max_delay = Duration::from_secs(3);
        s.reconcile.interval = Duration::from_millis(200);
    })
    .await;
    let mut expected = Vec::new();
    for (ahead, subject) in [(2, "queued for later"), (4, "held in postgres")] {
        let at = chrono::Utc::now() + chrono::Duration::seconds(ahead);
        let due = Instant::now() + Duration::from_secs(ahead as u64);
        let mut body = simple_message();
        body["Subject"] = json!(subject);
        body["SendAt"] = json!(at.to_rfc3339());
        let id = app.send_ok(&body).await;
        let message = app.message(&id).await;
        assert_eq!(message["status"], "queued");
        let stored: chrono::DateTime<chrono::Utc> =
            serde_json::from_value(message["send_at"].clone()).unwrap();
        assert!((stored - at).num_milliseconds().abs() < 1000);
        let events = app.events(&id).await;
        assert!(events["events"][0]["detail"]
            .as_str()
            .unwrap()
            .starts_with("scheduled for"));
        expected.push((id, due, subject));
    }
    let held: bool =
        sqlx::query_scalar("SELECT held FROM messages WHERE subject = 'held in postgres'")
            .fetch_one(&app.db)
            .await
            .unwrap();
    assert!(held, "beyond the longest delay queue, no job is published");
    let mails = app.smtp.wait_for_messages(2, WAIT).await;
    for (id, due, subject) in expected {
        assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");
        let mail = mails
            .iter()
            .find(|m| postwire_id(&m.data).as_deref() == Some(id.as_str()))
            .unwrap();
        // MAIL FROM arrived (on this process's clock) after SendAt.
        assert!(
            mail.started_at + Duration::from_millis(200) >= due,
            "{subject}: attempted {:?} before SendAt",
            due - mail.started_at
        );
    }
}

#[tokio::test]
async fn a_scheduled_send_can_be_cancelled_before_its_time_and_is_never_sent() {
    let app = spawn_app_with(Script::accept_all(), |s| {
        s.reconcile.interval = Duration::from_millis(200);
    })
    .await;
    let mut body = simple_message();
    body["SendAt"] = json!((chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339());
    let id = app.send_ok(&body).await;
    let response = app
        .post(&format!("/v1/messages/{id}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status().as_u16(), 200);
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(app.message(&id).await["status"], "cancelled");
    assert_eq!(app.smtp.sessions_opened(), 0, "never sent");
}

#[tokio::test]
async fn a_message_not_sent_by_expires_at_fails_as_expired() {
    let app = spawn_app_with(Script::reject_data(451), fast_retries).await;
    let mut body = simple_message();
    body["ExpiresAt"] = json!((chrono::Utc::now() + chrono::Duration::seconds(2)).to_rfc3339());
    let id = app.send_ok(&body).await;
    let message = app.wait_until_terminal(&id).await;
    assert_eq!(message["status"], "failed");
    assert!(
        message["last_error"]
            .as_str()
            .unwrap()
            .contains("ExpiresAt"),
        "{message}"
    );
    assert!(message["expires_at"].is_string());
    assert_eq!(
        app.event_types(&id).await.last().map(String::as_str),
        Some("expired")
    );
}

#[tokio::test]
async fn send_at_and_expires_at_are_validated() {
    let app = spawn_app().await;
    let in_secs = |s: i64| (chrono::Utc::now() + chrono::Duration::seconds(s)).to_rfc3339();
    for (changes, field) in [
        (json!({"SendAt": "tomorrow"}), "SendAt"),
        (json!({"ExpiresAt": "2026-13-01T00:00:00Z"}), "ExpiresAt"),
        (
            json!({"SendAt": in_secs(600), "ExpiresAt": in_secs(300)}),
            "ExpiresAt",
        ),
        (json!({"ExpiresAt": in_secs(-60)}), "ExpiresAt"),
        (json!({"SendAt": in_secs(400 * 86400)}), "SendAt"),
    ] {
        helpers::assert_refused(&app, helpers::message_with(changes), 400, field).await;
    }
    // A SendAt in the past means now.
    let mut body = simple_message();
    body["SendAt"] = json!(in_secs(-3600));
    let id = app.send_ok(&body).await;
    let message = app.wait_until_terminal(&id).await;
    assert_eq!(message["status"], "sent");
    assert!(message["send_at"].is_null());
}

/// A 451 defers a message; a duplicate job for it (a republish, a redelivery) that
/// arrives before its next attempt is due must not attempt it again.
#[tokio::test]
async fn a_duplicate_job_never_attempts_a_deferred_message_before_it_is_due() {
    let (script, data_times) = fail_each_message_first(1, 451);
    let app = spawn_app_with(script, |s| {
        fast_retries(s);
        s.retry.initial = Duration::from_secs(3);
        s.retry.max_delay = Duration::from_secs(3);
    })
    .await;
    let id = app.send_ok(&simple_message()).await;
    app.wait_for(&id, "deferred", |m| m["status"] == "deferred")
        .await;
    for _ in 0..3 {
        publish_raw(&app.settings, id.as_bytes()).await;
    }
    assert_eq!(app.wait_until_terminal(&id).await["status"], "sent");
    let times = data_times.lock().unwrap()[&id].clone();
    assert_eq!(times.len(), 2, "one refusal, one retry");
    assert!(
        times[1] - times[0] >= Duration::from_secs(3),
        "{:?}",
        times[1] - times[0]
    );
}

/// The connection lookup is the first thing a send through a stored connection does:
/// during an outage it must say 503 (retry), like the commit would, not 500.
#[tokio::test]
async fn a_send_through_a_stored_connection_during_an_outage_is_a_503() {
    let database = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let port = database.port();
    let app = spawn_app_with(Script::accept_all(), |s| {
        s.database.url = s.database.url.replace(":5432/", &format!(":{port}/"));
        s.database.acquire_timeout = Duration::from_millis(500);
    })
    .await;
    let relay = json!({"name": "relay-1", "host": "127.0.0.1", "port": app.smtp.port(),
                       "security": "none", "default_from": "Relay <relay@example.com>"});
    assert_eq!(
        app.post("/v1/connections", &relay).await.status().as_u16(),
        201
    );
    database.cut();
    let mut body = simple_message();
    body["connection"] = json!("relay-1");
    let response = app.send(&body).await;
    assert_eq!(response.status().as_u16(), 503);
    assert!(response.headers().contains_key("retry-after"));
    database.restore();
}
