//! Outcomes of concurrent deliveries written together: whatever outcomes are waiting
//! when the writer is free go out in one statement (one commit), so the database does
//! one round of work for many messages. Nothing waits to fill a batch: a lone outcome
//! is written at once.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::store::{Outcome, Store};

const MAX_BATCH: usize = 256;

type Reply = oneshot::Sender<Result<(), Arc<sqlx::Error>>>;

/// Hands outcomes to the background writer.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::Sender<(Uuid, i32, Outcome, Reply)>,
}

impl Recorder {
    pub fn start(store: Store) -> Recorder {
        let (tx, mut rx) = mpsc::channel::<(Uuid, i32, Outcome, Reply)>(4096);
        tokio::spawn(async move {
            while let Some(first) = rx.recv().await {
                let mut batch = vec![first];
                while batch.len() < MAX_BATCH {
                    match rx.try_recv() {
                        Ok(next) => batch.push(next),
                        Err(_) => break,
                    }
                }
                let items: Vec<(Uuid, i32, &Outcome)> = batch
                    .iter()
                    .map(|(id, attempt, o, _)| (*id, *attempt, o))
                    .collect();
                let result = store.record_outcomes(&items).await.map_err(Arc::new);
                for (_, _, _, reply) in batch {
                    let _ = reply.send(result.clone());
                }
            }
        });
        Recorder { tx }
    }

    /// Records one outcome; resolves when it is committed (with the others of its batch).
    pub async fn record(
        &self,
        id: Uuid,
        attempt: i32,
        outcome: Outcome,
    ) -> Result<(), Arc<sqlx::Error>> {
        let (reply, done) = oneshot::channel();
        if self.tx.send((id, attempt, outcome, reply)).await.is_err() {
            return Err(Arc::new(sqlx::Error::PoolClosed));
        }
        done.await.unwrap_or(Err(Arc::new(sqlx::Error::PoolClosed)))
    }
}
