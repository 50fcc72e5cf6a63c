//! Faults that last longer than every timeout postwire sets, tried with real
//! processes: PostgreSQL unreachable for minutes, the broker's queues emptied, a broker
//! that hangs instead of refusing, a worker frozen mid-DATA and resumed. Each counts
//! messages: lost = 0, and duplicates only in the unavoidable window.

use crate::helpers;

use std::collections::HashMap;
use std::process::Child;
use std::time::{Duration, Instant};

use helpers::proxy::TcpProxy;
use helpers::{
    postwire_id, signal, simple_message, spawn_role_with, Action, Event, Script, TestApp,
};
use postwire::config::{QueueType, Settings};
use postwire::Role;
use serde_json::{json, Value};

/// Refuses the first DATA of every message with 451, accepts later ones.
fn defer_each_message_once() -> Script {
    let seen = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    Script::new(move |event, _| match event {
        Event::DataEnd { data, .. } => {
            let id = postwire_id(data).unwrap_or_default();
            if seen.lock().unwrap().insert(id) {
                Action::reply(451, "4.3.0 try again later")
            } else {
                Action::Default
            }
        }
        _ => Action::Default,
    })
}

/// Retries every few seconds, a quick reconciler, and short broker timeouts.
fn outage_settings(s: &mut Settings) {
    s.retry.initial = Duration::from_secs(3);
    s.retry.factor = 2.0;
    s.retry.max_delay = Duration::from_secs(12);
    s.retry.jitter = false;
    s.reconcile.interval = Duration::from_millis(500);
    s.reconcile.grace = Duration::from_secs(5);
    s.amqp.timeout = Duration::from_secs(2);
    s.amqp.heartbeat = Duration::from_secs(2);
    s.database.acquire_timeout = Duration::from_secs(1);
}

/// The same settings for a `serve --role worker` process.
fn start_worker(app: &TestApp, extra: &[(&str, &str)]) -> Child {
    let mut command = app.process("worker");
    command
        .env("POSTWIRE__RETRY__INITIAL", "3s")
        .env("POSTWIRE__RETRY__MAX_DELAY", "12s")
        .env("POSTWIRE__RETRY__JITTER", "false")
        .env("POSTWIRE__RECONCILE__INTERVAL", "500ms")
        .env("POSTWIRE__RECONCILE__GRACE", "5s")
        .env("POSTWIRE__AMQP__TIMEOUT", "2s")
        .env("POSTWIRE__AMQP__HEARTBEAT", "2s")
        .env(
            "POSTWIRE__AMQP__QUEUE_TYPE",
            app.settings.amqp.queue_type().as_str(),
        )
        .env("POSTWIRE__DATABASE__ACQUIRE_TIMEOUT", "1s")
        .env("POSTWIRE__WORKER__CONCURRENCY", "16")
        .env("POSTWIRE__SMTP__DATA_TIMEOUT", "3s");
    for (k, v) in extra {
        command.env(k, v);
    }
    command.spawn().expect("start a worker process")
}

async fn stop_gracefully(mut child: Child) {
    signal(&child, "TERM");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the worker did not stop");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Sends `n` messages, each with its own subject; their ids.
async fn send_many(app: &TestApp, n: usize, label: &str) -> Vec<String> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let mut body = simple_message();
        body["Subject"] = json!(format!("{label} {i}"));
        ids.push(app.send_ok(&body).await);
    }
    ids
}

/// Waits until every message is terminal; their statuses.
async fn wait_terminal(app: &TestApp, ids: &[String], within: Duration) -> HashMap<String, Value> {
    let deadline = Instant::now() + within;
    loop {
        let mut done = HashMap::new();
        for id in ids {
            let response = app.get(&format!("/v1/messages/{id}")).await;
            if response.status() != 200 {
                break;
            }
            let message: Value = response.json().await.unwrap();
            if matches!(
                message["status"].as_str(),
                Some("sent" | "failed" | "cancelled")
            ) {
                done.insert(id.clone(), message);
            }
        }
        if done.len() == ids.len() {
            return done;
        }
        assert!(
            Instant::now() < deadline,
            "{} of {} messages terminal after {within:?}",
            done.len(),
            ids.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// How many times the SMTP server accepted each message.
fn deliveries(app: &TestApp) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for mail in app.smtp.received() {
        *counts
            .entry(postwire_id(&mail.data).unwrap_or_default())
            .or_default() += 1;
    }
    counts
}

/// Lost (not sent) and duplicated (sent more than once) among `ids`.
fn tally(app: &TestApp, ids: &[String], statuses: &HashMap<String, Value>) -> (usize, usize) {
    let counts = deliveries(app);
    let lost = ids
        .iter()
        .filter(|id| {
            statuses[*id]["status"] != "sent" || counts.get(*id).copied().unwrap_or(0) == 0
        })
        .count();
    let duplicated = ids
        .iter()
        .filter(|id| counts.get(*id).copied().unwrap_or(0) > 1)
        .count();
    (lost, duplicated)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_unreachable_for_minutes_strands_no_queued_or_deferred_message() {
    const OUTAGE: Duration = Duration::from_secs(150);
    let database = TcpProxy::start("127.0.0.1:5432".parse().unwrap()).await;
    let port = database.port();
    // The API in process, the worker a process of its own; both through the proxy.
    let app = spawn_role_with(Role::Api, defer_each_message_once(), |s| {
        outage_settings(s);
        s.database.url = s.database.url.replace(":5432/", &format!(":{port}/"));
        s.amqp.queue_type = Some(QueueType::Quorum);
    })
    .await;
    let worker = start_worker(&app, &[]);
    // 60 deferred: each first attempt refused, the retry due 3 s later.
    let deferred = send_many(&app, 60, "deferred").await;
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in &deferred {
        app.wait_for(id, "deferred", |m| {
            m["attempts"] == 1 && m["status"] == "deferred"
        })
        .await;
        assert!(Instant::now() < deadline);
    }
    // 40 queued: accepted while no worker runs. The worker stops gracefully (a kill
    // between an SMTP 250 and its record would be the unavoidable duplicate).
    stop_gracefully(worker).await;
    let queued = send_many(&app, 40, "queued").await;

    database.cut();
    let started = Instant::now();
    let worker = start_worker(&app, &[]);
    tokio::time::sleep(OUTAGE).await;
    database.restore();
    let ids: Vec<String> = deferred.iter().chain(&queued).cloned().collect();
    let statuses = wait_terminal(&app, &ids, Duration::from_secs(120)).await;
    let recovered = started.elapsed() - OUTAGE;
    let (lost, duplicated) = tally(&app, &ids, &statuses);
    eprintln!(
        "PostgreSQL cut {OUTAGE:?}: {} messages, lost {lost}, duplicated {duplicated}, all terminal {recovered:?} after the restore",
        ids.len()
    );
    stop(worker);
    assert_eq!(lost, 0, "{statuses:#?}");
    assert_eq!(duplicated, 0);
}

/// Empties the work queue and every delay queue, as a lost node or a restored broker
/// would.
async fn purge_queues(settings: &Settings) {
    let topology = postwire::queue::Topology::of(settings);
    let queues: Vec<String> = std::iter::once(topology.deliver)
        .chain(topology.tiers.into_iter().map(|(_, q)| q))
        .collect();
    assert!(
        helpers::purge(settings, &queues).await > 0,
        "the jobs were there to lose"
    );
}

async fn purged_queues_lose_nothing(queue_type: QueueType) {
    let app = spawn_role_with(Role::All, defer_each_message_once(), |s| {
        outage_settings(s);
        s.retry.initial = Duration::from_secs(8);
        s.amqp.queue_type = Some(queue_type);
    })
    .await;
    let ids = send_many(&app, 40, "purged").await;
    for id in &ids {
        app.wait_for(id, "deferred", |m| m["status"] == "deferred")
            .await;
    }
    purge_queues(&app.settings).await;
    let started = Instant::now();
    let statuses = wait_terminal(&app, &ids, Duration::from_secs(60)).await;
    let (lost, duplicated) = tally(&app, &ids, &statuses);
    eprintln!(
        "queues purged ({queue_type:?}): {} messages, lost {lost}, duplicated {duplicated}, all sent {:?} after the purge",
        ids.len(),
        started.elapsed()
    );
    assert_eq!((lost, duplicated), (0, 0));
    let metrics = app.get("/metrics").await.text().await.unwrap();
    assert!(metrics.contains("postwire_reconciled_total{reason=\"waiting\"}"));
}

#[tokio::test]
async fn purged_classic_queues_are_rebuilt_from_postgres() {
    purged_queues_lose_nothing(QueueType::Classic).await;
}

#[tokio::test]
async fn purged_quorum_queues_are_rebuilt_from_postgres() {
    purged_queues_lose_nothing(QueueType::Quorum).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_hangs_never_holds_up_a_202_and_loses_nothing() {
    const HANG: Duration = Duration::from_secs(35);
    let broker = TcpProxy::start("127.0.0.1:5672".parse().unwrap()).await;
    let port = broker.port();
    let app = spawn_role_with(Role::All, Script::accept_all(), |s| {
        outage_settings(s);
        s.amqp.url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f");
    })
    .await;
    let first = app.send_ok(&simple_message()).await;
    assert_eq!(app.wait_until_terminal(&first).await["status"], "sent");

    broker.black_hole();
    let bound = app.settings.amqp.publish_timeout;
    let mut ids = Vec::new();
    let mut slowest = Duration::ZERO;
    let hung = Instant::now();
    while hung.elapsed() < HANG {
        let started = Instant::now();
        ids.push(app.send_ok(&simple_message()).await);
        slowest = slowest.max(started.elapsed());
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    // Answered within the publish bound (plus the commit), never waiting on the broker.
    assert!(
        slowest < bound + Duration::from_secs(1),
        "a send took {slowest:?} while the broker hung"
    );
    broker.restore();
    let restored = Instant::now();
    let statuses = wait_terminal(&app, &ids, Duration::from_secs(60)).await;
    let (lost, duplicated) = tally(&app, &ids, &statuses);
    eprintln!(
        "broker black-holed {HANG:?}: {} messages, slowest 202 {slowest:?}, lost {lost}, duplicated {duplicated}, all sent {:?} after the restore",
        ids.len(),
        restored.elapsed()
    );
    assert_eq!((lost, duplicated), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_frozen_mid_data_cannot_overwrite_its_successors_outcome() {
    // The first two DATA of the server's life get no answer: the first is the frozen
    // worker's, the second its successor's, still waiting when the frozen one wakes.
    let script = Script::new(|event, counters| match event {
        Event::DataEnd { .. } if counters.data_attempt <= 2 => Action::Stall,
        _ => Action::Default,
    });
    let app = spawn_role_with(Role::Api, script, |s| {
        outage_settings(s);
        s.reconcile.grace = Duration::from_secs(1);
    })
    .await;
    let frozen = start_worker(&app, &[]);
    let id = app.send_ok(&simple_message()).await;
    wait_for_data(&app, 1).await;
    signal(&frozen, "STOP");
    // Presumed dead (1 s) many times over: a successor takes the message over and
    // starts its own DATA.
    let successor = start_worker(&app, &[("POSTWIRE__SMTP__DATA_TIMEOUT", "8s")]);
    wait_for_data(&app, 2).await;
    let taken = app.message(&id).await;
    assert_eq!(
        (taken["status"].clone(), taken["attempts"].clone()),
        (json!("sending"), json!(2))
    );
    // The frozen worker wakes while its successor still waits: its DATA timer has long
    // run out, and its late outcome must not replace the successor's claim.
    signal(&frozen, "CONT");
    let sent = app.wait_until_terminal(&id).await;
    assert_eq!(sent["status"], "sent", "{sent}");
    let events = app.events(&id).await;
    let attempts: Vec<i64> = events["events"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["type"] == "attempt")
        .map(|e| e["attempt"].as_i64().unwrap())
        .collect();
    assert_eq!(
        attempts,
        [2, 3],
        "the presumed-dead worker's attempt 1 is never recorded: {events:#}"
    );
    assert_eq!(app.smtp.received().len(), 1, "sent once");
    stop(frozen);
    stop(successor);
}

async fn wait_for_data(app: &TestApp, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while app.smtp.data_attempts() < n {
        assert!(Instant::now() < deadline, "DATA number {n} never came");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_addresses_that_refuse_or_hang_are_passed_over_for_one_that_answers() {
    // One address refuses at once; one accepts the TCP connection and never says a
    // word (a hung node); the third is the real broker.
    let refusing = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let refusing_port = refusing.local_addr().unwrap().port();
    drop(refusing);
    let hanging = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hanging_port = hanging.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut sockets = Vec::new();
        while let Ok((socket, _)) = hanging.accept().await {
            sockets.push(socket);
        }
    });
    let app = spawn_role_with(Role::All, Script::accept_all(), |s| {
        let real = s.amqp.url.clone();
        let dead = |port: u16| real.replace(":5672/", &format!(":{port}/"));
        s.amqp.urls = vec![dead(refusing_port), dead(hanging_port), real];
        s.amqp.queue_type = Some(QueueType::Classic);
        s.amqp.timeout = Duration::from_secs(1);
    })
    .await;
    let ids = send_many(&app, 10, "failover").await;
    let statuses = wait_terminal(&app, &ids, Duration::from_secs(30)).await;
    assert_eq!(tally(&app, &ids, &statuses), (0, 0));
    held.abort();
}
