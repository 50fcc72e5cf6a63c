//! A RabbitMQ cluster losing a node mid-run. These tests need the 3-node cluster of
//! `scripts/cluster.sh` and are ignored by default: `scripts/test.sh --cluster` starts
//! it and runs them, with `TEST_AMQP_CLUSTER_URLS` set to its nodes.

use crate::helpers;

use std::collections::HashMap;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use helpers::{postwire_id, spawn_role_with, Script, TestApp};
use postwire::config::QueueType;
use postwire::Role;
use serde_json::{json, Value};

/// The cluster's AMQP URLs, as `scripts/test.sh --cluster` passes them.
fn cluster_urls() -> Vec<String> {
    let urls = std::env::var("TEST_AMQP_CLUSTER_URLS")
        .expect("TEST_AMQP_CLUSTER_URLS: run these with scripts/test.sh --cluster");
    urls.split(',').map(str::to_owned).collect()
}

/// `scripts/cluster.sh <args>`, its standard output.
async fn cluster(args: &[&str]) -> String {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/cluster.sh");
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let output = tokio::task::spawn_blocking(move || {
        std::process::Command::new(script)
            .args(&args)
            .stderr(std::process::Stdio::inherit())
            .output()
            .expect("run scripts/cluster.sh")
    })
    .await
    .unwrap();
    assert!(output.status.success(), "scripts/cluster.sh failed");
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
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

/// Broker failures noticed within seconds, as in the outage tests.
const AMQP_TIMEOUT: Duration = Duration::from_secs(2);

/// Slow enough that the queue holds a backlog when its node dies.
const RATE: u32 = 60;

fn start_worker(app: &TestApp) -> Child {
    app.process("worker")
        .env("POSTWIRE__WORKER__CONCURRENCY", "32")
        .env(
            "POSTWIRE__SMTP__DEFAULT__MAX_RATE_PER_SECOND",
            RATE.to_string(),
        )
        .env("POSTWIRE__AMQP__TIMEOUT", "2s")
        .env("POSTWIRE__AMQP__HEARTBEAT", "2s")
        .env("POSTWIRE__RECONCILE__INTERVAL", "1s")
        .env("POSTWIRE__RECONCILE__GRACE", "10s")
        .spawn()
        .expect("start a worker process")
}

async fn sent_count(app: &TestApp) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM messages WHERE status = 'sent'")
        .fetch_one(&app.db)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs the RabbitMQ cluster of scripts/cluster.sh: scripts/test.sh --cluster"]
async fn a_cluster_node_killed_and_restarted_mid_run_loses_no_message() {
    const BATCHES: usize = 10;
    const PER_BATCH: usize = 100;
    const TOTAL: usize = BATCHES * PER_BATCH;
    let urls = cluster_urls();
    let app = spawn_role_with(Role::Api, Script::accept_all(), |s| {
        s.amqp.urls = urls.clone();
        // Unset: several nodes make the queues quorum queues.
        s.amqp.queue_type = None;
        s.amqp.timeout = AMQP_TIMEOUT;
        s.amqp.heartbeat = AMQP_TIMEOUT;
        s.reconcile.interval = Duration::from_secs(1);
        s.reconcile.grace = Duration::from_secs(10);
        s.smtp.default.as_mut().unwrap().max_rate_per_second = Some(RATE);
    })
    .await;
    assert_eq!(app.settings.amqp.queue_type(), QueueType::Quorum);
    let _workers = Workers(vec![start_worker(&app), start_worker(&app)]);

    // The work queue is replicated on all three nodes; its leader is the node to kill.
    let deliver = format!("{}.deliver", app.settings.amqp.queue_prefix);
    let mut ids = Vec::new();
    let mut send_batch = async |b: usize| {
        let messages: Vec<_> = (0..PER_BATCH)
            .map(|i| json!({"To": "ann@example.com", "Subject": format!("cluster {b}-{i}"), "Body": "x"}))
            .collect();
        let response = app
            .post("/v1/messages/batch", &json!({ "messages": messages }))
            .await;
        assert_eq!(response.status(), 202, "batch {b}");
        let body: Value = response.json().await.unwrap();
        for m in body["messages"].as_array().unwrap() {
            ids.push(m["id"].as_str().unwrap().to_owned());
        }
    };
    for b in 0..5 {
        send_batch(b).await;
    }
    // Killed mid-stream: some delivered, hundreds waiting in the queue or in flight.
    app.smtp
        .wait_for_messages(150, Duration::from_secs(30))
        .await;
    let leader = cluster(&["leader", &deliver]).await;
    assert!(
        ["1", "2", "3"].contains(&leader.as_str()),
        "leader of {deliver}: {leader:?}"
    );
    let before_kill = app.smtp.received().len();
    cluster(&["kill", &leader]).await;
    let killed_at = Instant::now();
    eprintln!("killed node {leader} (leader of {deliver}) after {before_kill} deliveries");

    // Producers carry on while the node is down: every send still answers 202.
    for b in 5..BATCHES {
        send_batch(b).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let while_down = sent_count(&app).await;
    tokio::time::sleep(Duration::from_secs(5).saturating_sub(killed_at.elapsed())).await;
    // Delivery went on through the other nodes, not only once this one was back.
    assert!(
        while_down as usize > before_kill + 100,
        "{while_down} sent while node {leader} was down, {before_kill} before"
    );
    cluster(&["restart", &leader]).await;
    eprintln!(
        "node {leader} back after {:?}; {while_down} sent while it was down",
        killed_at.elapsed()
    );

    let deadline = Instant::now() + Duration::from_secs(180);
    while sent_count(&app).await < TOTAL as i64 {
        assert!(
            Instant::now() < deadline,
            "{} of {TOTAL} sent 180 s after the restart",
            sent_count(&app).await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let mut counts: HashMap<String, usize> = HashMap::new();
    for mail in app.smtp.received() {
        *counts
            .entry(postwire_id(&mail.data).unwrap_or_default())
            .or_default() += 1;
    }
    let lost = ids.iter().filter(|id| !counts.contains_key(*id)).count();
    let duplicated: usize = counts.values().map(|n| n - 1).sum();
    eprintln!(
        "{TOTAL} messages, node {leader} killed after {before_kill} deliveries: lost {lost}, duplicated {duplicated}, all sent {:?} after the kill",
        killed_at.elapsed()
    );
    assert_eq!(ids.len(), TOTAL);
    assert_eq!(lost, 0, "messages accepted but never delivered");
    // Nothing here dies between an SMTP 250 and its record: the claim fences every
    // redelivered job, so no message goes twice.
    assert_eq!(duplicated, 0, "messages delivered more than once");
}
