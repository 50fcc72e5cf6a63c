//! Scaling out: a connection's caps hold for the connection as a whole, however many
//! worker processes send through it.

use crate::helpers;

use std::process::Child;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use helpers::{spawn_role_with, Action, Event, Script, TestApp};
use postwire::Role;
use serde_json::json;

/// The connection's cap in this test.
const CAP: usize = 2;

/// A `postwire serve --role worker` process on the test app's database, queues and
/// SMTP server, with the same cap on the configured connection.
fn start_worker(app: &TestApp) -> Child {
    app.process("worker")
        .env("POSTWIRE__WORKER__CONCURRENCY", "8")
        .env("POSTWIRE__SMTP__DEFAULT__MAX_CONNECTIONS", CAP.to_string())
        .spawn()
        .expect("start a worker process")
}

/// Killed with the test, whatever happens.
struct Workers(Vec<Child>);

impl Drop for Workers {
    fn drop(&mut self) {
        for w in &mut self.0 {
            let _ = w.kill();
            let _ = w.wait();
        }
    }
}

async fn send_many(app: &TestApp, n: usize, tag: &str) {
    for i in 0..n {
        let body = json!({"To": "ann@example.com", "Subject": format!("{tag} {i}"), "Body": "x"});
        app.send_ok(&body).await;
    }
}

async fn wait_all_sent(app: &TestApp, n: i64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    loop {
        let sent: i64 = sqlx::query_scalar("SELECT count(*) FROM messages WHERE status = 'sent'")
            .fetch_one(&app.db)
            .await
            .unwrap();
        if sent == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{sent} of {n} sent after 90 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_together_never_open_more_sessions_than_the_connection_allows() {
    // A relay that, like Office 365, refuses a session beyond the cap with 421 4.3.2.
    let refused = Arc::new(AtomicUsize::new(0));
    let script = {
        let refused = Arc::clone(&refused);
        Script::new(move |event, counters| match event {
            Event::Connect if counters.open > CAP => {
                refused.fetch_add(1, Ordering::SeqCst);
                Action::reply(421, "4.3.2 Too many concurrent connections")
            }
            _ => Action::Default,
        })
    };
    let app = spawn_role_with(Role::Api, script, |s| {
        s.smtp.default.as_mut().unwrap().max_connections = Some(CAP as u16);
    })
    .await;
    let mut workers = Workers((0..3).map(|_| start_worker(&app)).collect());

    send_many(&app, 60, "together").await;
    wait_all_sent(&app, 60).await;

    // One worker killed mid-run: its slots come back once its leases lapse
    // (worker.presumed_dead_after), and the others carry on.
    send_many(&app, 40, "after a kill").await;
    workers.0[0].kill().expect("SIGKILL a worker");
    let _ = workers.0[0].wait();
    wait_all_sent(&app, 100).await;

    assert!(
        app.smtp.peak_sessions_open() <= CAP,
        "{} sessions were open at once, the cap is {CAP}",
        app.smtp.peak_sessions_open()
    );
    assert_eq!(refused.load(Ordering::SeqCst), 0, "sessions were refused");
    assert!(app.smtp.received().len() >= 100);
    // And the cap was used: sessions ran side by side.
    assert_eq!(app.smtp.peak_sessions_open(), CAP);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_processes_together_keep_to_the_connections_rate_and_reach_it() {
    const RATE: usize = 40;
    const SLOTS: u16 = 3;
    const MESSAGES: usize = 200;
    let app = spawn_role_with(Role::Api, Script::accept_all(), |s| {
        let default = s.smtp.default.as_mut().unwrap();
        default.max_connections = Some(SLOTS);
        default.max_rate_per_second = Some(RATE as u32);
    })
    .await;
    let _workers = Workers(
        (0..3)
            .map(|_| {
                app.process("worker")
                    .env("POSTWIRE__WORKER__CONCURRENCY", "8")
                    .env(
                        "POSTWIRE__SMTP__DEFAULT__MAX_CONNECTIONS",
                        SLOTS.to_string(),
                    )
                    .env(
                        "POSTWIRE__SMTP__DEFAULT__MAX_RATE_PER_SECOND",
                        RATE.to_string(),
                    )
                    .spawn()
                    .expect("start a worker process")
            })
            .collect(),
    );
    // Queued at once, so that every worker has a backlog.
    for batch in 0..MESSAGES / 100 {
        let messages: Vec<_> = (0..100)
            .map(|i| json!({"To": "ann@example.com", "Subject": format!("rate {batch}-{i}"), "Body": "x"}))
            .collect();
        let response = app
            .post("/v1/messages/batch", &json!({ "messages": messages }))
            .await;
        assert_eq!(response.status(), 202);
    }
    wait_all_sent(&app, MESSAGES as i64).await;

    // Measured at the relay, from each transaction's start.
    let mut started: Vec<_> = app.smtp.received().iter().map(|m| m.started_at).collect();
    started.sort();
    let busiest = (0..started.len())
        .map(|i| {
            started[i..]
                .iter()
                .take_while(|t| **t - started[i] < Duration::from_secs(1))
                .count()
        })
        .max()
        .unwrap();
    assert!(
        busiest <= RATE + RATE / 10,
        "{busiest} messages within one second; the rate is {RATE}/s"
    );
    let span = *started.last().unwrap() - started[0];
    let achieved = (started.len() - 1) as f64 / span.as_secs_f64();
    assert!(
        achieved >= RATE as f64 * 0.8,
        "{achieved:.1}/s over {span:?}: the three workers did not reach the rate of {RATE}/s"
    );
    eprintln!("busiest second {busiest}, overall {achieved:.1}/s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_past_its_leases_closes_its_sessions_when_it_wakes() {
    let app = spawn_role_with(Role::Api, Script::accept_all(), |s| {
        s.smtp.default.as_mut().unwrap().max_connections = Some(CAP as u16);
    })
    .await;
    // Alone, the first worker takes every slot and keeps its sessions pooled.
    let mut workers = Workers(vec![start_worker(&app)]);
    send_many(&app, 20, "before").await;
    wait_all_sent(&app, 20).await;
    let held_open = app.smtp.sessions_open();
    assert!(held_open >= 1, "no pooled session to freeze");

    // Frozen for three times worker.presumed_dead_after (1 s): its leases lapse while
    // its sockets stay open, and another worker takes the slots.
    helpers::signal(&workers.0[0], "STOP");
    workers.0.push(start_worker(&app));
    tokio::time::sleep(Duration::from_secs(3)).await;
    send_many(&app, 20, "while frozen").await;
    wait_all_sent(&app, 40).await;

    // Awake: its next heartbeat retires the lapsed leases and closes their sessions.
    helpers::signal(&workers.0[0], "CONT");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    while app.smtp.sessions_open() > CAP {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} sessions still open 5 s after the frozen worker woke; the cap is {CAP}",
            app.smtp.sessions_open()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    send_many(&app, 20, "after").await;
    wait_all_sent(&app, 60).await;
    assert!(app.smtp.sessions_open() <= CAP);
    assert!(app.smtp.received().len() >= 60);
}

/// A free local port for a worker's `/metrics`.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_throttle_reply_storm_slows_the_connection_in_every_worker_then_it_recovers() {
    const RATE: f64 = 20.0;
    const MESSAGES: usize = 120;
    // A relay that, after 20 messages, answers every MAIL FROM for 300 ms with a
    // rate-limit reply, as a provider does when it is sent mail too fast.
    let throttled = Arc::new(AtomicUsize::new(0));
    let storm_began = Arc::new(std::sync::Mutex::new(None::<std::time::Instant>));
    let script = {
        let throttled = Arc::clone(&throttled);
        Script::new(move |event, counters| {
            let mut began = storm_began.lock().unwrap();
            let storming = counters.data_attempt >= 20
                && began.is_none_or(|t| t.elapsed() < Duration::from_millis(300));
            match event {
                Event::MailFrom(_) if storming => {
                    began.get_or_insert_with(std::time::Instant::now);
                    throttled.fetch_add(1, Ordering::SeqCst);
                    Action::reply(451, "4.7.1 Rate limit exceeded, slow down")
                }
                _ => Action::Default,
            }
        })
    };
    let app = spawn_role_with(Role::Api, script, |s| {
        s.smtp.throttle.pause = Duration::from_secs(2);
        s.smtp.throttle.recover_every = Duration::from_secs(1);
        s.retry.initial = Duration::from_millis(500);
    })
    .await;
    let metrics_ports = [free_port(), free_port()];
    let _workers = Workers(
        metrics_ports
            .iter()
            .map(|port| {
                app.process("worker")
                    .env("POSTWIRE__WORKER__CONCURRENCY", "8")
                    .env("POSTWIRE__SMTP__THROTTLE__PAUSE", "2s")
                    .env("POSTWIRE__SMTP__THROTTLE__RECOVER_EVERY", "1s")
                    .env("POSTWIRE__RETRY__INITIAL", "500ms")
                    .env(
                        "POSTWIRE__WORKER__METRICS_LISTEN",
                        format!("127.0.0.1:{port}"),
                    )
                    .spawn()
                    .expect("start a worker process")
            })
            .collect(),
    );
    let connection = json!({
        "name": "relay", "host": "127.0.0.1", "port": app.smtp.port(), "security": "none",
        "max_connections": 2, "max_rate_per_second": RATE as u32,
        "default_from": "A <a@example.com>"
    });
    assert_eq!(app.post("/v1/connections", &connection).await.status(), 201);
    let view = |body: serde_json::Value| body["throttle"].clone();
    let before = view(app.get("/v1/connections/relay").await.json().await.unwrap());
    assert_eq!(before["state"], "normal");
    assert_eq!(before["max_connections"], 2);
    assert_eq!(before["fraction"], 1.0);
    assert!(before["last_reply"].is_null());

    let messages: Vec<_> = (0..MESSAGES)
        .map(|i| json!({"To": "ann@example.com", "Subject": format!("storm {i}"), "Body": "x", "Connection": "relay"}))
        .collect();
    let response = app
        .post("/v1/messages/batch", &json!({ "messages": messages }))
        .await;
    assert_eq!(response.status(), 202);

    // The connection's state as the API shows it, sampled until it is whole again.
    let mut states: Vec<serde_json::Value> = Vec::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = view(app.get("/v1/connections/relay").await.json().await.unwrap());
        let recovered = now["state"] == "normal" && !now["last_reply"].is_null();
        if states.last() != Some(&now) {
            states.push(now);
        }
        if recovered {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "not recovered after 60 s: {states:#?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let paused = states
        .iter()
        .find(|s| s["state"] == "paused")
        .unwrap_or_else(|| panic!("never paused: {states:#?}"));
    assert_eq!(paused["last_reply"]["code"], 451);
    assert_eq!(paused["last_reply"]["enhanced"], "4.7.1");
    assert_eq!(paused["fraction"], 0.5);
    assert_eq!(paused["max_connections"], 1);
    assert_eq!(paused["max_rate_per_second"], RATE / 2.0);
    // Recovering step by step: a quarter per quiet second.
    let fractions: Vec<f64> = states
        .iter()
        .filter(|s| s["state"] == "reduced")
        .map(|s| s["fraction"].as_f64().unwrap())
        .collect();
    assert_eq!(fractions, vec![0.5, 0.75], "{states:#?}");
    assert_eq!(states.last().unwrap()["fraction"], 1.0);
    assert_eq!(states.last().unwrap()["max_connections"], 2);

    // At the relay: nothing started while the connection rested (after the other
    // worker's next heartbeat, 200 ms, has told it), and no faster than the reduced
    // rate in the first second after.
    let paused_until: chrono::DateTime<chrono::Utc> =
        serde_json::from_value(paused["paused_until"].clone()).unwrap();
    let pause_start = paused_until - chrono::Duration::seconds(2);
    let to_instant = {
        let (wall, mono) = (chrono::Utc::now(), std::time::Instant::now());
        move |t: chrono::DateTime<chrono::Utc>| mono - (wall - t).to_std().unwrap()
    };
    wait_all_sent(&app, MESSAGES as i64).await;
    let started: Vec<_> = app.smtp.received().iter().map(|m| m.started_at).collect();
    let within = |from: std::time::Instant, to: std::time::Instant| {
        started.iter().filter(|t| **t >= from && **t < to).count()
    };
    let rested = within(
        to_instant(pause_start) + Duration::from_millis(500),
        to_instant(paused_until) - Duration::from_millis(100),
    );
    assert_eq!(
        rested, 0,
        "messages were started while the connection was paused"
    );
    let reduced = within(
        to_instant(paused_until),
        to_instant(paused_until) + Duration::from_secs(1),
    );
    assert!(
        reduced as f64 <= RATE / 2.0 * 1.1 + 1.0,
        "{reduced} messages in the first second after the pause; the reduced rate is {}/s",
        RATE / 2.0
    );
    assert!(throttled.load(Ordering::SeqCst) >= 1);

    // The workers' metrics say so too: the replies counted where they came, and
    // every worker sees the connection whole and unpaused again.
    let mut replies = 0.0;
    for port in metrics_ports {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        let value = |metrics: &str, name: &str| {
            metrics
                .lines()
                .find(|l| l.starts_with(name) && l.contains("connection=\"relay\""))
                .and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        };
        loop {
            let metrics = reqwest::get(format!("http://127.0.0.1:{port}/metrics"))
                .await
                .unwrap()
                .text()
                .await
                .unwrap();
            let whole = value(&metrics, "postwire_connection_paused") == Some(0.0)
                && value(&metrics, "postwire_connection_limit_fraction") == Some(1.0);
            if whole {
                replies += value(&metrics, "postwire_smtp_throttle_replies_total").unwrap_or(0.0);
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "a worker does not see the connection whole again: {metrics}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_eq!(replies as usize, throttled.load(Ordering::SeqCst));
}
