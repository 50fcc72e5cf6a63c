//! Webhooks through a real HTTP receiver that checks every signature with its own
//! implementation: one event per status change, ids stable over retries, a receiver
//! that fails for a while, 410, rotation, recovery and the private-address guard.

use crate::helpers;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use helpers::proxy::TcpProxy;
use helpers::{
    assert_problem, simple_message, spawn_app_with, spawn_role_with, Action, Event, Script,
    TestApp, WebhookReceiver,
};
use postwire::config::Settings;
use serde_json::{json, Value};

/// Webhooks to the test receiver (http, on loopback), retried quickly.
fn quick_webhooks(s: &mut Settings) {
    s.webhooks.allow_http = true;
    s.webhooks.allow_private_targets = true;
    s.webhooks.timeout = Duration::from_secs(2);
    s.webhooks.retry = vec![Duration::from_millis(300); 3];
    s.retry.initial = Duration::from_millis(300);
    s.retry.jitter = false;
}

/// Subscribes `receiver` to `events`; the secret goes to the receiver.
async fn subscribe(app: &TestApp, receiver: &WebhookReceiver, events: &[&str]) -> Value {
    let response = app
        .post(
            "/v1/webhooks",
            &json!({"url": receiver.url(), "events": events, "description": "test receiver"}),
        )
        .await;
    let status = response.status();
    let created: Value = response.json().await.unwrap();
    assert_eq!(status, 201, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("whsec_"));
    receiver.set_secrets(&[secret]);
    created
}

/// A relay that defers the first DATA of `defer@`, refuses `bob@` as unknown and
/// `reject@`'s message outright.
fn relay() -> Script {
    let deferred = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    Script::new(move |event, _| match event {
        Event::RcptTo(to) if *to == "bob@example.com" => {
            Action::reply(550, "5.1.1 <bob@example.com>: User unknown")
        }
        Event::DataEnd { rcpt_to, .. } if rcpt_to.iter().any(|r| r == "defer@example.com") => {
            if deferred.swap(true, std::sync::atomic::Ordering::SeqCst) {
                Action::Default
            } else {
                Action::reply(451, "4.3.0 try again later")
            }
        }
        Event::DataEnd { rcpt_to, .. } if rcpt_to.iter().any(|r| r == "reject@example.com") => {
            Action::reply(554, "5.6.0 Message rejected")
        }
        _ => Action::Default,
    })
}

/// The endpoint's view once postwire has disabled it (within 20 s).
async fn wait_until_disabled(app: &TestApp, id: &str) -> Value {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let view: Value = app
            .get(&format!("/v1/webhooks/{id}"))
            .await
            .json()
            .await
            .unwrap();
        if !view["disabled_at"].is_null() {
            return view;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not disabled: {view}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_events(receiver: &WebhookReceiver, n: usize) -> Vec<helpers::WebhookRequest> {
    receiver.wait_for(n, Duration::from_secs(30)).await
}

#[tokio::test]
async fn every_status_change_is_posted_once_signed_with_the_endpoints_secret() {
    let app = spawn_app_with(relay(), quick_webhooks).await;
    let receiver = WebhookReceiver::start().await;
    let all = [
        "message.sent",
        "message.deferred",
        "message.failed",
        "message.cancelled",
        "message.expired",
        "message.suppressed",
        "message.recipient_failed",
    ];
    subscribe(&app, &receiver, &all).await;
    let added = app
        .post(
            "/v1/suppressions",
            &json!({"address": "gone@example.com", "reason": "complaint"}),
        )
        .await;
    assert_eq!(added.status(), 201);

    let send = |to: &str, subject: &str| json!({"To": to, "Subject": subject, "Body": "x"});
    let deferred_then_sent = app.send_ok(&send("defer@example.com", "deferred")).await;
    let partly_refused = app
        .send_ok(&send("ann@example.com;bob@example.com", "partly"))
        .await;
    let rejected = app.send_ok(&send("reject@example.com", "rejected")).await;
    let suppressed = app.send_ok(&send("gone@example.com", "suppressed")).await;
    let later = (chrono::Utc::now() + chrono::Duration::hours(1)).to_rfc3339();
    let cancelled = app
        .send_ok(
            &json!({"To": "ann@example.com", "Subject": "cancelled", "Body": "x", "SendAt": later}),
        )
        .await;
    let response = app
        .post(&format!("/v1/messages/{cancelled}/cancel"), &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    for id in [&deferred_then_sent, &partly_refused, &rejected, &suppressed] {
        app.wait_until_terminal(id).await;
    }

    let expected: BTreeSet<(String, &str)> = [
        (deferred_then_sent.clone(), "message.deferred"),
        (deferred_then_sent.clone(), "message.sent"),
        (partly_refused.clone(), "message.sent"),
        (partly_refused.clone(), "message.recipient_failed"),
        (rejected.clone(), "message.failed"),
        (suppressed.clone(), "message.suppressed"),
        (cancelled.clone(), "message.cancelled"),
    ]
    .into_iter()
    .collect();
    let got = wait_for_events(&receiver, expected.len()).await;
    // A moment for anything extra to show.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_all = receiver.received();
    assert_eq!(got_all.len(), expected.len(), "{got_all:#?}");
    assert!(got.iter().all(|r| r.verified), "unverified: {got:#?}");
    let seen: BTreeSet<(String, &str)> = got_all
        .iter()
        .map(|r| {
            let json = r.json.as_ref().unwrap();
            let kind = all
                .iter()
                .find(|t| **t == json["type"])
                .unwrap_or_else(|| panic!("unknown type {}", json["type"]));
            (json["data"]["id"].as_str().unwrap().to_owned(), *kind)
        })
        .collect();
    assert_eq!(seen, expected);
    let ids: BTreeSet<&str> = got_all.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(ids.len(), got_all.len(), "webhook-ids repeat");

    // The data is the message as GET shows it, as it was at the event.
    let by: BTreeMap<(String, String), Value> = got_all
        .iter()
        .map(|r| {
            let json = r.json.clone().unwrap();
            let key = (
                json["data"]["id"].as_str().unwrap().to_owned(),
                json["type"].as_str().unwrap().to_owned(),
            );
            (key, json)
        })
        .collect();
    let deferred = &by[&(deferred_then_sent.clone(), "message.deferred".to_owned())];
    assert_eq!(deferred["data"]["status"], "deferred");
    assert_eq!(deferred["data"]["last_reply"]["code"], 451);
    assert_eq!(deferred["data"]["subject"], "deferred");
    assert_eq!(deferred["data"]["to"][0], "defer@example.com");
    assert!(deferred["timestamp"].is_string());
    let sent = &by[&(deferred_then_sent.clone(), "message.sent".to_owned())];
    assert_eq!(sent["data"]["status"], "sent");
    assert_eq!(sent["data"]["attempts"], 2);
    let refused = &by[&(
        partly_refused.clone(),
        "message.recipient_failed".to_owned(),
    )];
    let bob = refused["data"]["recipients"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["address"] == "bob@example.com")
        .cloned()
        .unwrap();
    assert_eq!(bob["reply"]["enhanced"], "5.1.1");
    let gone = &by[&(suppressed.clone(), "message.suppressed".to_owned())];
    assert_eq!(gone["data"]["status"], "failed");
    assert_eq!(
        gone["data"]["recipients"][0]["suppressed"]["reason"],
        "complaint"
    );
}

#[tokio::test]
async fn a_receiver_failing_for_a_while_gets_each_event_once_with_the_same_id_on_every_try() {
    let app = spawn_app_with(Script::accept_all(), |s| {
        quick_webhooks(s);
        // Enough tries to outlast the outage below.
        s.webhooks.retry = vec![Duration::from_millis(400); 8];
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = subscribe(&app, &receiver, &["message.sent"]).await;
    receiver.answer(503);
    let mut ids = Vec::new();
    for i in 0..5 {
        ids.push(
            app.send_ok(&json!({"To": "ann@example.com", "Subject": format!("m{i}"), "Body": "x"}))
                .await,
        );
    }
    // Each event tried and refused at least twice.
    receiver
        .wait_for_requests(10, Duration::from_secs(30))
        .await;
    receiver.answer(200);
    let delivered = wait_for_events(&receiver, 5).await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let all = receiver.received();
    let delivered_ids: BTreeSet<&str> = delivered.iter().map(|r| r.id.as_str()).collect();
    assert_eq!(
        delivered_ids.len(),
        5,
        "an event delivered twice: {delivered:#?}"
    );
    assert_eq!(receiver.verified_events().len(), 5);
    // Every refused try carried the id its event was finally delivered under.
    for refused in all.iter().filter(|r| r.answered == 503) {
        assert!(delivered_ids.contains(refused.id.as_str()), "{refused:#?}");
    }
    let messages: BTreeSet<String> = delivered
        .iter()
        .map(|r| {
            r.json.as_ref().unwrap()["data"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(messages, ids.iter().cloned().collect());

    // The attempts are visible, failed and succeeded.
    let id = endpoint["id"].as_str().unwrap();
    let failed: Value = app
        .get(&format!("/v1/webhooks/{id}/attempts?status=failed"))
        .await
        .json()
        .await
        .unwrap();
    let failed = failed["attempts"].as_array().unwrap();
    assert!(failed.len() >= 10);
    assert!(failed
        .iter()
        .all(|a| a["http_status"] == 503 && a["succeeded"] == false));
    // The last success may be recorded just after the receiver saw it.
    let succeeded = app
        .wait_for_attempts(id, "?status=succeeded", "5 succeeded", |a| a.len() >= 5)
        .await;
    assert_eq!(succeeded.len(), 5);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("postwire_webhook_deliveries_total{outcome=\"delivered\"}"));
}

#[tokio::test]
async fn deliveries_out_of_retries_fail_and_recover_sends_them_again() {
    let app = spawn_app_with(Script::accept_all(), quick_webhooks).await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = subscribe(&app, &receiver, &["message.sent"]).await;
    let id = endpoint["id"].as_str().unwrap();
    receiver.answer(500);
    let message = app
        .send_ok(&json!({"To": "ann@example.com", "Subject": "late", "Body": "x"}))
        .await;
    // The first try and three retries, then nothing more.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while receiver.received().len() < 4 {
        assert!(tokio::time::Instant::now() < deadline, "tries missing");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), 4);

    receiver.answer(200);
    let since = (chrono::Utc::now() - chrono::Duration::minutes(5)).to_rfc3339();
    let response = app
        .post(
            &format!("/v1/webhooks/{id}/recover"),
            &json!({"since": since}),
        )
        .await;
    assert_eq!(response.status(), 202);
    assert_eq!(response.json::<Value>().await.unwrap()["recovered"], 1);
    let delivered = wait_for_events(&receiver, 1).await;
    assert_eq!(
        delivered[0].json.as_ref().unwrap()["data"]["id"],
        message.as_str()
    );
    assert_eq!(
        delivered[0].id,
        receiver.received()[0].id,
        "a new id on recovery"
    );
}

#[tokio::test]
async fn a_410_disables_the_endpoint_and_its_admin_sees_why() {
    let app = spawn_app_with(Script::accept_all(), quick_webhooks).await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = subscribe(&app, &receiver, &["message.sent"]).await;
    let id = endpoint["id"].as_str().unwrap();
    receiver.answer(410);
    let first = app
        .send_ok(&json!({"To": "ann@example.com", "Subject": "one", "Body": "x"}))
        .await;
    app.wait_until_terminal(&first).await;
    let view = wait_until_disabled(&app, id).await;
    assert!(view["disabled_reason"].as_str().unwrap().contains("410"));
    let second = app
        .send_ok(&json!({"To": "ann@example.com", "Subject": "two", "Body": "x"}))
        .await;
    app.wait_until_terminal(&second).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(receiver.received().len(), 1, "sent to a disabled endpoint");

    // Enabled again, it hears of what comes next.
    receiver.answer(200);
    let response = app
        .client
        .patch(format!("{}/v1/webhooks/{id}", app.address))
        .json(&json!({"disabled": false}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let third = app
        .send_ok(&json!({"To": "ann@example.com", "Subject": "three", "Body": "x"}))
        .await;
    let delivered = wait_for_events(&receiver, 1).await;
    assert_eq!(
        delivered[0].json.as_ref().unwrap()["data"]["id"],
        third.as_str()
    );
}

#[tokio::test]
async fn after_a_rotation_both_secrets_sign_until_the_overlap_ends() {
    let app = spawn_app_with(Script::accept_all(), quick_webhooks).await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = subscribe(&app, &receiver, &["message.sent"]).await;
    let old = endpoint["secret"].as_str().unwrap().to_owned();
    let id = endpoint["id"].as_str().unwrap();
    let response = app
        .post(&format!("/v1/webhooks/{id}/rotate-secret"), &json!({}))
        .await;
    assert_eq!(response.status(), 200);
    let rotated: Value = response.json().await.unwrap();
    let new = rotated["secret"].as_str().unwrap().to_owned();
    assert_ne!(new, old);
    assert!(rotated["previous_secret_valid_until"].is_string());
    // A receiver that knows only the new secret, and one that knows only the old.
    for secret in [&new, &old] {
        receiver.set_secrets(std::slice::from_ref(secret));
        let before = receiver.received().len();
        app.send_ok(&json!({"To": "ann@example.com", "Subject": "rotating", "Body": "x"}))
            .await;
        let got = wait_for_events(&receiver, before + 1).await;
        let last = got.last().unwrap();
        assert_eq!(last.signatures.len(), 2, "{last:#?}");
        assert!(last.verified, "not verified with one of the two secrets");
    }
    // The secret is never shown again.
    let view = app
        .get(&format!("/v1/webhooks/{id}"))
        .await
        .text()
        .await
        .unwrap();
    assert!(!view.contains(&new) && !view.contains("whsec_"), "{view}");
}

#[tokio::test]
async fn endpoints_inside_the_network_are_refused_unless_allowed() {
    let app = spawn_app_with(Script::accept_all(), |s| {
        quick_webhooks(s);
        s.webhooks.allow_private_targets = false;
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    // By address, by a name that resolves to loopback, and the metadata service.
    let by_name = receiver.url().replace("127.0.0.1", "localhost");
    for url in [receiver.url(), by_name] {
        let response = app
            .post(
                "/v1/webhooks",
                &json!({"url": url, "events": ["message.sent"]}),
            )
            .await;
        assert_eq!(response.status(), 201);
    }
    let message = app
        .send_ok(&json!({"To": "ann@example.com", "Subject": "x", "Body": "x"}))
        .await;
    app.wait_until_terminal(&message).await;
    let list: Value = app.get("/v1/webhooks").await.json().await.unwrap();
    for endpoint in list["webhooks"].as_array().unwrap() {
        let id = endpoint["id"].as_str().unwrap();
        let attempt = app
            .wait_for_attempts(id, "", "attempted", |a| !a.is_empty())
            .await[0]
            .clone();
        assert_eq!(attempt["succeeded"], false);
        assert!(attempt["http_status"].is_null());
        assert!(
            attempt["error"]
                .as_str()
                .unwrap()
                .contains("not a public address"),
            "{attempt}"
        );
    }
    assert_eq!(receiver.count(), 0, "a request reached the private address");

    // Plain http is refused at creation unless allowed.
    let strict = spawn_app_with(Script::accept_all(), |_| {}).await;
    let response = strict
        .post(
            "/v1/webhooks",
            &json!({"url": "http://hooks.example.com/x", "events": ["message.sent"]}),
        )
        .await;
    assert_problem(response, 400, "url").await;
    let response = strict
        .post(
            "/v1/webhooks",
            &json!({"url": "https://hooks.example.com/x", "events": ["message.bounced"]}),
        )
        .await;
    assert_eq!(response.status(), 400);
}

/// Webhook settings for `postwire` processes of this build, as `quick_webhooks`.
const PROCESS_WEBHOOKS: &[(&str, &str)] = &[
    ("POSTWIRE__WEBHOOKS__ALLOW_HTTP", "true"),
    ("POSTWIRE__WEBHOOKS__ALLOW_PRIVATE_TARGETS", "true"),
    ("POSTWIRE__WEBHOOKS__TIMEOUT", "2s"),
    ("POSTWIRE__WEBHOOKS__RETRY", "300ms,300ms,300ms,300ms,300ms"),
];

/// Killed with the test, whatever happens.
struct Killed(Vec<std::process::Child>);

impl Drop for Killed {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_and_api_processes_killed_mid_delivery_lose_no_webhook() {
    const MESSAGES: usize = 30;
    // The in-process app delivers no webhooks itself: the processes below do it all.
    let app = spawn_app_with(Script::accept_all(), |s| {
        quick_webhooks(s);
        s.webhooks.concurrency = 0;
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    subscribe(&app, &receiver, &["message.sent"]).await;
    // Slow answers: requests are in flight when the processes die.
    receiver.set_delay(Duration::from_millis(700));
    let start_worker = || {
        let mut worker = app.process("worker");
        worker.envs(PROCESS_WEBHOOKS.iter().copied());
        worker.spawn().expect("start a worker process")
    };
    let mut processes = Killed(vec![start_worker()]);
    let api = app.api_process(PROCESS_WEBHOOKS).await;

    let mut ids = BTreeSet::new();
    for i in 0..MESSAGES {
        ids.insert(
            app.send_ok(&json!({"To": "ann@example.com", "Subject": format!("k{i}"), "Body": "x"}))
                .await,
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while receiver.count() < 3 {
        assert!(tokio::time::Instant::now() < deadline, "no webhook came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGKILL both, mid-request, then fresh ones take over.
    processes.0[0].kill().unwrap();
    let _ = processes.0[0].wait();
    drop(api);
    let killed_at = receiver.count();
    receiver.set_delay(Duration::ZERO);
    processes.0.push(start_worker());
    let _api = app.api_process(PROCESS_WEBHOOKS).await;

    // Every message sent, and its event delivered: at least once, always under the
    // same webhook-id.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let by_message = loop {
        let mut by_message: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for r in receiver.verified_events() {
            let message = r.json.as_ref().unwrap()["data"]["id"]
                .as_str()
                .unwrap()
                .to_owned();
            by_message.entry(message).or_default().insert(r.id.clone());
        }
        if by_message.len() == MESSAGES {
            break by_message;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {MESSAGES} messages' webhooks delivered after the kill",
            by_message.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(by_message.keys().cloned().collect::<BTreeSet<_>>(), ids);
    for (message, webhook_ids) in &by_message {
        assert_eq!(webhook_ids.len(), 1, "{message} told of under several ids");
    }
    let received = receiver.received().len();
    eprintln!(
        "{MESSAGES} events; {killed_at} requests before the kill, {received} in all (repeats after the kill are the at-least-once window)"
    );
}

#[tokio::test]
async fn a_tenant_neither_sees_nor_hears_of_another_tenants_webhooks() {
    let app = spawn_app_with(Script::accept_all(), quick_webhooks).await;
    let receiver = WebhookReceiver::start().await;
    let ours = subscribe(&app, &receiver, &["message.sent"]).await;
    let id = ours["id"].as_str().unwrap();
    let globex = app
        .producer(
            "globex",
            &[
                postwire::keys::Scope::Admin,
                postwire::keys::Scope::Send,
                postwire::keys::Scope::Read,
            ],
        )
        .await;
    let theirs: Value = globex.get("/v1/webhooks").await.json().await.unwrap();
    assert!(
        theirs["webhooks"].as_array().unwrap().is_empty(),
        "{theirs}"
    );
    for path in [
        format!("/v1/webhooks/{id}"),
        format!("/v1/webhooks/{id}/attempts"),
    ] {
        assert_eq!(globex.get(&path).await.status(), 404, "{path}");
    }
    let response = globex
        .post(&format!("/v1/webhooks/{id}/rotate-secret"), &json!({}))
        .await;
    assert_eq!(response.status(), 404);
    // Their mail is not told to our endpoint.
    let theirs = globex
        .send_ok(&json!({"To": "ann@example.com", "Subject": "globex", "Body": "x"}))
        .await;
    globex.wait_until_terminal(&theirs).await;
    let ours_sent = app
        .send_ok(&json!({"To": "ann@example.com", "Subject": "acme", "Body": "x"}))
        .await;
    let got = wait_for_events(&receiver, 1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(receiver.received().len(), 1);
    assert_eq!(
        got[0].json.as_ref().unwrap()["data"]["id"],
        ours_sent.as_str()
    );
}

#[tokio::test]
async fn an_endpoint_failing_longer_than_disable_after_is_disabled_with_the_reason() {
    let app = spawn_app_with(Script::accept_all(), |s| {
        quick_webhooks(s);
        s.webhooks.retry = vec![Duration::from_millis(300); 20];
        s.webhooks.disable_after = Duration::from_secs(1);
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = subscribe(&app, &receiver, &["message.sent"]).await;
    let id = endpoint["id"].as_str().unwrap();
    // Down (the connection dropped without an answer) the whole time.
    receiver.set_down(true);
    app.send_ok(&json!({"To": "ann@example.com", "Subject": "x", "Body": "x"}))
        .await;
    let view = wait_until_disabled(&app, id).await;
    let reason = view["disabled_reason"].as_str().unwrap();
    assert!(reason.contains("failing without a success"), "{reason}");
    assert!(!view["failing_since"].is_null());
    let attempts: Value = app
        .get(&format!("/v1/webhooks/{id}/attempts"))
        .await
        .json()
        .await
        .unwrap();
    let attempts = attempts["attempts"].as_array().unwrap();
    assert!(attempts.len() >= 3, "{attempts:?}");
    assert!(attempts
        .iter()
        .all(|a| a["http_status"].is_null() && a["succeeded"] == false));
}

#[tokio::test]
async fn requests_to_one_endpoint_never_exceed_its_concurrency() {
    let app = spawn_app_with(Script::accept_all(), |s| {
        quick_webhooks(s);
        s.webhooks.per_endpoint_concurrency = 2;
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    subscribe(&app, &receiver, &["message.sent"]).await;
    // Slow answers, so that deliveries pile up behind the two slots.
    receiver.set_delay(Duration::from_millis(300));
    for i in 0..12 {
        app.send_ok(&json!({"To": "ann@example.com", "Subject": format!("c{i}"), "Body": "x"}))
            .await;
    }
    let got = wait_for_events(&receiver, 12).await;
    assert_eq!(got.len(), 12);
    assert_eq!(
        receiver.max_in_flight(),
        2,
        "requests in flight at once to one endpoint"
    );
}

#[tokio::test]
async fn a_huge_response_is_read_no_further_than_64_kib() {
    let app = spawn_app_with(Script::accept_all(), quick_webhooks).await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = subscribe(&app, &receiver, &["message.sent"]).await;
    // Far more than the kernel's socket buffers hold: a client that read it all
    // would take every byte, one that stops early breaks the connection.
    receiver.answer_with_body_bytes(Some(64 << 20));
    for i in 0..3 {
        app.send_ok(&json!({"To": "ann@example.com", "Subject": format!("h{i}"), "Body": "x"}))
            .await;
    }
    wait_for_events(&receiver, 3).await;
    let id = endpoint["id"].as_str().unwrap();
    app.wait_for_attempts(id, "?status=succeeded", "3 succeeded", |a| a.len() == 3)
        .await;
    // The 2xx counted, and each answer was cut off rather than read to its end.
    assert_eq!(receiver.received().len(), 3, "a success was tried again");
    assert!(
        receiver.broken_connections() >= 3,
        "{} answers cut off",
        receiver.broken_connections()
    );
}

#[tokio::test]
async fn an_endpoint_slower_than_the_timeout_is_retried_and_its_attempts_say_it_timed_out() {
    let app = spawn_app_with(Script::accept_all(), |s| {
        quick_webhooks(s);
        s.webhooks.timeout = Duration::from_millis(500);
        s.webhooks.retry = vec![Duration::from_millis(300); 10];
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = subscribe(&app, &receiver, &["message.sent"]).await;
    receiver.set_delay(Duration::from_secs(3));
    let message = app
        .send_ok(&json!({"To": "ann@example.com", "Subject": "slow", "Body": "x"}))
        .await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while receiver.received().len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "no retry came");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiver.set_delay(Duration::ZERO);
    // Delivered once it answers in time, under the id of the tries that timed out.
    let id = endpoint["id"].as_str().unwrap();
    let attempts = app
        .wait_for_attempts(id, "", "delivered", |a| {
            a.iter().any(|a| a["succeeded"] == true)
        })
        .await;
    let timed_out: Vec<&Value> = attempts
        .iter()
        .filter(|a| a["succeeded"] == false)
        .collect();
    assert!(timed_out.len() >= 2, "{attempts:#?}");
    for a in &timed_out {
        assert!(a["http_status"].is_null(), "{a}");
        let error = a["error"].as_str().unwrap();
        assert!(error.contains("timed out"), "{error}");
        assert!(a["duration_ms"].as_u64().unwrap() < 2_000, "{a}");
    }
    let ids: BTreeSet<String> = receiver.received().iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids.len(), 1, "one event, one webhook-id");
    let delivered = receiver.verified_events();
    assert_eq!(
        delivered.last().unwrap().json.as_ref().unwrap()["data"]["id"],
        message.as_str()
    );
}

#[tokio::test]
async fn webhook_jobs_lost_from_rabbitmq_are_published_again_from_postgresql() {
    let app = spawn_app_with(Script::accept_all(), |s| {
        quick_webhooks(s);
        s.webhooks.retry = vec![Duration::from_secs(8); 3];
        s.reconcile.interval = Duration::from_millis(300);
        s.reconcile.grace = Duration::from_secs(1);
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    subscribe(&app, &receiver, &["message.sent"]).await;
    receiver.answer(503);
    let mut ids = BTreeSet::new();
    for i in 0..10 {
        ids.insert(
            app.send_ok(&json!({"To": "ann@example.com", "Subject": format!("p{i}"), "Body": "x"}))
                .await,
        );
    }
    // Each refused once: its retry waits eight seconds in a delay queue, and the
    // broker loses every one of them.
    let topology = postwire::queue::Topology::of(&app.settings);
    let queues: Vec<String> = std::iter::once(topology.webhooks.clone())
        .chain(topology.webhook_tiers.iter().map(|(_, q)| q.clone()))
        .collect();
    while receiver.received().len() < 10 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(6);
    let mut lost = 0;
    while lost < 10 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{lost} retries parked"
        );
        lost += helpers::purge(&app.settings, &queues).await;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(receiver.received().len(), 10);
    receiver.answer(200);
    let delivered = wait_for_events(&receiver, 10).await;
    let told: BTreeSet<String> = delivered
        .iter()
        .map(|r| {
            r.json.as_ref().unwrap()["data"]["id"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(told, ids);
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(
        metrics.contains("reason=\"webhook\""),
        "the reconciler's republishing is counted"
    );
}

#[tokio::test]
async fn a_slow_endpoint_does_not_hold_up_another_endpoints_deliveries() {
    let app = spawn_app_with(Script::accept_all(), |s| {
        quick_webhooks(s);
        s.webhooks.concurrency = 8;
        s.webhooks.per_endpoint_concurrency = 2;
        s.webhooks.timeout = Duration::from_millis(700);
        s.webhooks.retry = vec![Duration::from_millis(500); 50];
    })
    .await;
    let slow = WebhookReceiver::start().await;
    let fast = WebhookReceiver::start().await;
    subscribe(&app, &slow, &["message.sent"]).await;
    subscribe(&app, &fast, &["message.sent"]).await;
    // Every answer of the slow one comes after the timeout.
    slow.set_delay(Duration::from_secs(5));
    for i in 0..30 {
        app.send_ok(&json!({"To": "ann@example.com", "Subject": format!("s{i}"), "Body": "x"}))
            .await;
    }
    fast.wait_for(30, Duration::from_secs(30)).await;
    // Two slots of the slow endpoint, each busy for the timeout: had its waiting
    // deliveries kept the process's other slots, the fast endpoint's 30 would have
    // trickled in behind them, one slow try at a time.
    let slow_tries = slow.received().len();
    assert!(
        slow_tries < 20,
        "the fast endpoint had to wait for {slow_tries} tries of the slow one"
    );
}

/// Rows of `table` (`webhook_deliveries` or `webhook_attempts`) for an endpoint.
async fn rows_of(app: &TestApp, table: &str, endpoint: &str) -> i64 {
    sqlx::query_scalar(&format!(
        "SELECT count(*) FROM {table} WHERE endpoint_id = $1::uuid"
    ))
    .bind(endpoint)
    .fetch_one(&app.db)
    .await
    .unwrap()
}

#[tokio::test]
async fn deleting_an_endpoint_removes_its_deliveries_and_their_tries() {
    let app = spawn_app_with(Script::accept_all(), quick_webhooks).await;
    let failing = WebhookReceiver::start().await;
    let healthy = WebhookReceiver::start().await;
    failing.answer(500);
    let gone = subscribe(&app, &failing, &["message.sent"]).await;
    let kept = subscribe(&app, &healthy, &["message.sent"]).await;
    let (gone, kept) = (gone["id"].as_str().unwrap(), kept["id"].as_str().unwrap());
    app.send_ok(&simple_message()).await;
    wait_for_events(&healthy, 1).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while failing.count() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "not tried twice");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(rows_of(&app, "webhook_deliveries", gone).await, 1);
    assert!(rows_of(&app, "webhook_attempts", gone).await >= 2);

    let response = app
        .client
        .delete(format!("{}/v1/webhooks/{gone}", app.address))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 204);
    // A try already on its way when the endpoint went may still arrive, but leaves
    // no row behind.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let tries = failing.count();
    assert_eq!(rows_of(&app, "webhook_deliveries", gone).await, 0);
    assert_eq!(rows_of(&app, "webhook_attempts", gone).await, 0);
    assert_eq!(rows_of(&app, "webhook_deliveries", kept).await, 1);
    tokio::time::sleep(Duration::from_secs(1)).await; // three retry waits
    assert_eq!(failing.count(), tries, "tried after its deletion");
    assert_eq!(rows_of(&app, "webhook_attempts", gone).await, 0);
}

#[tokio::test]
async fn retention_purges_settled_webhook_deliveries_and_old_tries() {
    let app = spawn_app_with(Script::accept_all(), |s| {
        quick_webhooks(s);
        s.retention.days = 0.5 / 86_400.0; // half a second
        s.retention.interval = Duration::from_millis(200);
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = subscribe(&app, &receiver, &["message.sent"]).await;
    let endpoint = endpoint["id"].as_str().unwrap();
    receiver.answer(500);
    app.send_ok(&simple_message()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while receiver.count() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "never tried");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    receiver.answer(200);
    wait_for_events(&receiver, 1).await;
    loop {
        let left = rows_of(&app, "webhook_deliveries", endpoint).await
            + rows_of(&app, "webhook_attempts", endpoint).await;
        if left == 0 {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "{left} rows left");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_written_while_the_workers_broker_hangs_all_arrive_once_it_answers() {
    const MESSAGES: usize = 3;
    // Far longer than the worker's every broker timeout (2 s) and its heartbeat (2 s).
    const HANG: Duration = Duration::from_secs(20);
    // Each message's first DATA gets no answer: the worker gives up on it after 3 s and
    // writes the deferral (and its webhook) while its broker is silent.
    let script = Script::new(|event, counters| match event {
        Event::DataEnd { .. } if counters.data_attempt <= MESSAGES => Action::Stall,
        _ => Action::Default,
    });
    // The API (and its reconciler) in this process, on the real broker.
    let app = spawn_role_with(postwire::Role::Api, script, |s| {
        quick_webhooks(s);
        s.reconcile.interval = Duration::from_millis(500);
        s.reconcile.grace = Duration::from_secs(3);
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    subscribe(&app, &receiver, &["message.deferred", "message.sent"]).await;
    // The only worker, a process of this build, reaches the broker through a proxy
    // that can go silent (packets swallowed, connections left open).
    let broker = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let mut worker = app.process("worker");
    worker
        .envs(PROCESS_WEBHOOKS.iter().copied())
        .env(
            "POSTWIRE__AMQP__URL",
            format!("amqp://guest:guest@127.0.0.1:{}/%2f", broker.port()),
        )
        .env_remove("POSTWIRE__AMQP__URLS")
        .env("POSTWIRE__AMQP__TIMEOUT", "2s")
        .env("POSTWIRE__AMQP__HEARTBEAT", "2s")
        .env("POSTWIRE__SMTP__DATA_TIMEOUT", "3s")
        .env("POSTWIRE__RETRY__INITIAL", "1s")
        .env("POSTWIRE__RETRY__JITTER", "false")
        .env("POSTWIRE__RECONCILE__INTERVAL", "500ms")
        .env("POSTWIRE__RECONCILE__GRACE", "3s");
    let _worker = Killed(vec![worker.spawn().expect("start a worker process")]);

    let mut ids = BTreeSet::new();
    for i in 0..MESSAGES {
        ids.insert(
            app.send_ok(&json!({"To": "ann@example.com", "Subject": format!("h{i}"), "Body": "x"}))
                .await,
        );
    }
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while app.smtp.data_attempts() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no DATA came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    broker.black_hole();
    let hung_at = chrono::Utc::now();
    tokio::time::sleep(HANG).await;
    broker.restore();
    let restored_at = chrono::Utc::now();

    // Every delivery written is told (at least once, always under its own id), and
    // the deliveries are the messages' status changes.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let (told, written) = loop {
        let mut told: BTreeMap<String, (String, String)> = BTreeMap::new();
        for r in receiver.verified_events() {
            let json = r.json.as_ref().unwrap();
            let event = (
                json["data"]["id"].as_str().unwrap().to_owned(),
                json["type"].as_str().unwrap().to_owned(),
            );
            let first = told.entry(r.id.clone()).or_insert_with(|| event.clone());
            assert_eq!(*first, event, "one webhook-id for two events");
        }
        let written: BTreeMap<String, (String, String)> =
            sqlx::query_as("SELECT id::text, message_id::text, type FROM webhook_deliveries")
                .fetch_all(&app.db)
                .await
                .unwrap()
                .into_iter()
                .map(|(id, message, kind): (String, String, String)| (id, (message, kind)))
                .collect();
        let sent = told
            .values()
            .filter(|(_, kind)| kind == "message.sent")
            .count();
        if sent == MESSAGES && told == written {
            break (told, written);
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sent} of {MESSAGES} message.sent told; {} of {} deliveries told",
            told.len(),
            written.len()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(told, written);
    for id in &ids {
        let events = app.events(id).await;
        let events = events["events"].as_array().unwrap();
        let attempted_deferrals = events
            .iter()
            .filter(|e| e["type"] == "deferred" && !e["attempt"].is_null())
            .count();
        let sent = events.iter().filter(|e| e["type"] == "sent").count();
        let kinds = |kind: &str| {
            told.values()
                .filter(|(message, k)| message == id && k == kind)
                .count()
        };
        assert_eq!(
            (kinds("message.deferred"), kinds("message.sent")),
            (attempted_deferrals, sent),
            "{id}: {events:?}"
        );
        assert_eq!(sent, 1, "{id}");
    }
    // The case at hand did happen: deferrals were written while the broker was silent,
    // and their jobs could not have been published then.
    let during: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM webhook_deliveries
          WHERE type = 'message.deferred' AND occurred_at BETWEEN $1 AND $2",
    )
    .bind(hung_at)
    .bind(restored_at)
    .fetch_one(&app.db)
    .await
    .unwrap();
    assert!(during >= 1, "no webhook was written during the hang");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_mid_request_cannot_undo_its_successors_delivery() {
    // The in-process app sends mail and reconciles; only the processes below post.
    let app = spawn_app_with(Script::accept_all(), |s| {
        quick_webhooks(s);
        s.webhooks.concurrency = 0;
        s.reconcile.interval = Duration::from_millis(500);
        s.reconcile.grace = Duration::from_secs(3);
    })
    .await;
    let receiver = WebhookReceiver::start().await;
    let endpoint = subscribe(&app, &receiver, &["message.sent"]).await;
    let endpoint = endpoint["id"].as_str().unwrap().to_owned();
    let start_worker = || {
        let mut worker = app.process("worker");
        worker
            .envs(PROCESS_WEBHOOKS.iter().copied())
            .env("POSTWIRE__AMQP__HEARTBEAT", "2s");
        worker.spawn().expect("start a worker process")
    };
    // The first request is answered 500, late: its worker is frozen before the answer.
    receiver.answer(500);
    receiver.set_delay(Duration::from_millis(1500));
    let frozen = start_worker();
    let mut processes = Killed(vec![]);
    app.send_ok(&simple_message()).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while receiver.count() < 1 {
        assert!(tokio::time::Instant::now() < deadline, "no webhook came");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    helpers::signal(&frozen, "STOP");
    processes.0.push(frozen);
    receiver.answer(200);
    receiver.set_delay(Duration::ZERO);

    // Its job is taken over (the broker gives it back once the frozen connection is
    // dead, or the reconciler publishes it again) and delivered by a successor.
    processes.0.push(start_worker());
    wait_for_events(&receiver, 1).await;
    let state = || async {
        sqlx::query_as::<_, (String, i32)>(
            "SELECT state, tries FROM webhook_deliveries WHERE endpoint_id = $1::uuid",
        )
        .bind(&endpoint)
        .fetch_one(&app.db)
        .await
        .unwrap()
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while state().await.0 != "delivered" {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not recorded as delivered"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await; // a duplicate job settles
    let delivered = state().await;
    let requests = receiver.count();

    // The frozen worker wakes to its failed request, long timed out: its late try
    // must not make the delivered event pending again (and sent again).
    helpers::signal(&processes.0[0], "CONT");
    tokio::time::sleep(Duration::from_secs(3)).await; // ten retry waits
    assert_eq!(state().await, delivered);
    assert_eq!(receiver.count(), requests, "posted again after the wake");
}

#[tokio::test]
async fn a_webhooks_data_is_the_message_as_get_shows_it_on_the_first_try_and_on_a_retry() {
    // The delivery holds the message's state at the event; the rest of `data` is read
    // with it on every try. Both tries must show the message as GET does.
    let app = spawn_app_with(relay(), quick_webhooks).await;
    let receiver = WebhookReceiver::start().await;
    subscribe(
        &app,
        &receiver,
        &["message.sent", "message.recipient_failed"],
    )
    .await;
    receiver.answer(503);
    let id = app
        .send_ok(&json!({
            "To": "ann@example.com;bob@example.com",
            "CC": "Carl <carl@example.com>",
            "Bcc": "dora@example.com",
            "Subject": "Ünïcode and \"quotes\"",
            "Body": "x",
            "Metadata": {"order": "42"},
        }))
        .await;
    // Both events tried once (and refused), then tried again and delivered.
    receiver.wait_for_requests(2, Duration::from_secs(20)).await;
    receiver.answer(204);
    wait_for_events(&receiver, 2).await;
    let shown: Value = app
        .get(&format!("/v1/messages/{id}"))
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(shown["status"], "sent");
    assert_eq!(shown["metadata"], json!({"order": "42"}));
    let all = receiver.received();
    for kind in ["message.sent", "message.recipient_failed"] {
        let tries: Vec<&helpers::WebhookRequest> = all
            .iter()
            .filter(|r| r.event_type() == Some(kind))
            .collect();
        assert!(tries.len() >= 2, "{kind}: {tries:#?}");
        let (first, last) = (tries[0], tries[tries.len() - 1]);
        // The first try was refused, so the last is a retry, read back again.
        assert_eq!(first.answered, 503, "{kind}: {first:#?}");
        assert_eq!(last.answered, 204, "{kind}: {last:#?}");
        assert!(first.verified && last.verified, "{kind}: unsigned");
        assert_eq!(first.id, last.id, "{kind}: one event, one id");
        let (first, last) = (first.json.as_ref().unwrap(), last.json.as_ref().unwrap());
        assert_eq!(first["data"], shown, "{kind}: the first try's data");
        assert_eq!(last["data"], shown, "{kind}: the retry's data");
        assert_eq!(first["timestamp"], last["timestamp"]);
    }
}
