//! Group commit of single sends. Concurrent sends without an idempotency key are
//! written together: the messages of every request waiting when a writer is free go
//! into one INSERT and one commit. Batch requests commit on their own: they are
//! batched already, and joining several would make statements (and connection
//! buffers) of many megabytes; for the same reason a group is capped in bytes as well
//! as in count. A group the database refuses is written again request by request, so
//! that one bad request never fails the others; an unreachable database fails them
//! all alike (none of them is committed), which is what a per-request commit would
//! have done.

use std::sync::Arc;

use super::Prepared;
use crate::batcher::{self, BatchLimits, Batcher, DbResult};
use crate::store::Store;

pub(super) type Commits = Batcher<Arc<Vec<Prepared>>, DbResult<()>>;

/// Requests written together at most, and their rendered bytes at most.
const COMMIT_BATCH: BatchLimits = BatchLimits {
    count: 128,
    weight: 8 * 1024 * 1024,
    linger: std::time::Duration::ZERO,
};
/// Groups written at once.
const COMMIT_WRITERS: usize = 4;

/// Starts the writer.
pub(super) fn start(store: Store) -> Commits {
    Batcher::start_weighted(
        COMMIT_BATCH,
        |request: &Arc<Vec<Prepared>>| request.iter().map(|p| p.rendered.raw.len()).sum(),
        COMMIT_WRITERS,
        move |requests: Vec<Arc<Vec<Prepared>>>| {
            let store = store.clone();
            batcher::write_or_isolate(requests, move |group| {
                let store = store.clone();
                async move {
                    let rows: Vec<_> = group
                        .iter()
                        .flat_map(|r| r.iter().map(Prepared::row))
                        .collect();
                    store.accept(&rows, None).await.map(|_| ())
                }
            })
        },
    )
}
