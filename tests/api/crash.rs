//! Crash safety: worker processes killed with SIGKILL mid-run lose nothing.

use crate::helpers;

use std::collections::HashMap;
use std::process::Child;
use std::time::Duration;

use helpers::{postwire_id, spawn_role_with, Script, TestApp};
use postwire::Role;
use serde_json::json;

/// A `postwire serve --role worker` process sharing the test app's database, queues
/// and SMTP server.
fn start_worker(app: &TestApp) -> Child {
    app.process("worker")
        .env("POSTWIRE__WORKER__CONCURRENCY", "8")
        .spawn()
        .expect("start a worker process")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killing_workers_mid_run_loses_no_message() {
    const MESSAGES: usize = 1000;
    const KILLS: usize = 6;
    let app = spawn_role_with(Role::Api, Script::accept_all(), |_| {}).await;
    let mut workers = vec![start_worker(&app), start_worker(&app)];

    // Producers: 16 concurrent clients.
    let client = app.client.clone();
    let url = format!("{}/v1/messages", app.address);
    let producers = tokio::spawn(async move {
        let (tx, rx) = tokio::sync::mpsc::channel::<usize>(MESSAGES);
        for i in 0..MESSAGES {
            tx.send(i).await.unwrap();
        }
        drop(tx);
        let rx = std::sync::Arc::new(tokio::sync::Mutex::new(rx));
        let tasks: Vec<_> = (0..16)
            .map(|_| {
                let (client, url, rx) = (client.clone(), url.clone(), rx.clone());
                tokio::spawn(async move {
                    let mut ids = Vec::new();
                    while let Some(i) = { let next = rx.lock().await.recv().await; next } {
                        let body = json!({"To": "ann@example.com", "Subject": format!("crash {i}"), "Body": "x"});
                        let response = client.post(&url).json(&body).send().await.unwrap();
                        assert_eq!(response.status().as_u16(), 202);
                        let v: serde_json::Value = response.json().await.unwrap();
                        ids.push(v["id"].as_str().unwrap().to_owned());
                    }
                    ids
                })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.extend(t.await.unwrap());
        }
        ids
    });

    // Kill a worker with SIGKILL every 400 ms, and start a fresh one in its place.
    for k in 0..KILLS {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let victim = k % workers.len();
        workers[victim].kill().expect("SIGKILL a worker");
        let _ = workers[victim].wait();
        workers[victim] = start_worker(&app);
    }
    let ids = producers.await.unwrap();
    assert_eq!(ids.len(), MESSAGES, "every send was accepted");

    // Wait until every message is terminal.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    let counts = loop {
        let rows: Vec<(String, i64)> =
            sqlx::query_as("SELECT status, count(*) FROM messages GROUP BY status")
                .fetch_all(&app.db)
                .await
                .unwrap();
        let counts: HashMap<String, i64> = rows.into_iter().collect();
        let terminal: i64 = ["sent", "failed", "cancelled"]
            .iter()
            .map(|s| counts.get(*s).copied().unwrap_or(0))
            .sum();
        if terminal as usize == MESSAGES || tokio::time::Instant::now() > deadline {
            break counts;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    for w in &mut workers {
        let _ = w.kill();
        let _ = w.wait();
    }

    let received = app.smtp.received();
    let mut per_id: HashMap<String, usize> = HashMap::new();
    for mail in &received {
        *per_id.entry(postwire_id(&mail.data).unwrap()).or_default() += 1;
    }
    let sent = counts.get("sent").copied().unwrap_or(0) as usize;
    let delivered_unique = ids.iter().filter(|id| per_id.contains_key(*id)).count();
    let lost = MESSAGES - delivered_unique;
    let duplicated = received.len() - per_id.len();
    println!(
        "crash test: attempted {MESSAGES} / accepted {} / sent {sent} / lost {lost} / duplicated {duplicated} (kills {KILLS}); statuses {counts:?}",
        ids.len()
    );
    assert_eq!(sent, MESSAGES, "every message ends sent: {counts:?}");
    assert_eq!(lost, 0, "no accepted message is lost");
    // A duplicate needs a kill between the server's 250 and the status commit; each
    // kill catches at most the worker's concurrent deliveries (8) in that window.
    assert!(
        duplicated <= KILLS * 8,
        "{duplicated} duplicates for {KILLS} kills"
    );
    // And every duplicate is a message whose first attempt was cut off by a kill:
    // it was claimed twice. A message sent twice from one claim would be a bug.
    for (id, copies) in per_id.iter().filter(|(_, n)| **n > 1) {
        let attempts: i32 = sqlx::query_scalar("SELECT attempts FROM messages WHERE id = $1::uuid")
            .bind(id)
            .fetch_one(&app.db)
            .await
            .unwrap();
        assert!(
            attempts as usize >= *copies,
            "{id}: {copies} copies from {attempts} attempts"
        );
    }
}
