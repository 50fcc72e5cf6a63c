//! Group commit for hot database writes: requests from concurrent tasks that arrive
//! while a batch is being written go out together in the next one (one statement, one
//! commit), so PostgreSQL does one round of work for many messages. By default nothing
//! waits to fill a batch: a lone request is written at once, so latency is never traded
//! away for throughput when the service is idle. Work that is not waited on by a
//! caller (webhooks) may linger a few milliseconds for company instead
//! ([`BatchLimits::linger`]): each statement has a fixed cost in PostgreSQL.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, Semaphore};

/// Hands requests of type `T` to a background writer that answers each with an `R`.
pub struct Batcher<T, R> {
    tx: mpsc::Sender<(T, Option<oneshot::Sender<R>>)>,
}

impl<T, R> Clone for Batcher<T, R> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

/// How large one batch may grow: at most `count` requests, and at most `weight` in
/// all as weighed by the batcher's weight function (a request heavier than that on
/// its own is written alone); a batch that is not full waits up to `linger` for more.
#[derive(Debug, Clone, Copy)]
pub struct BatchLimits {
    pub count: usize,
    pub weight: usize,
    pub linger: Duration,
}

impl BatchLimits {
    /// At most `count` requests, written as soon as a writer is free.
    pub const fn count(count: usize) -> BatchLimits {
        BatchLimits {
            count,
            weight: usize::MAX,
            linger: Duration::ZERO,
        }
    }
}

impl<T: Send + 'static, R: Send + 'static> Batcher<T, R> {
    /// Starts the writer. `write` gets up to `max_batch` requests and must answer with
    /// one result per request, in order. Up to `parallel` batches are written at
    /// once; requests arriving while all of them are busy form the next batch.
    pub fn start<F, Fut>(max_batch: usize, parallel: usize, write: F) -> Batcher<T, R>
    where
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        Batcher::start_weighted(BatchLimits::count(max_batch), |_| 0, parallel, write)
    }

    /// [`Batcher::start`] with batches bounded by `limits.weight` as well, each request
    /// weighing `weigh(request)` (say, its bytes).
    pub fn start_weighted<W, F, Fut>(
        limits: BatchLimits,
        weigh: W,
        parallel: usize,
        write: F,
    ) -> Batcher<T, R>
    where
        W: Fn(&T) -> usize + Send + 'static,
        F: Fn(Vec<T>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Vec<R>> + Send + 'static,
    {
        let (tx, mut rx) = mpsc::channel::<(T, Option<oneshot::Sender<R>>)>(4096);
        let writers = Arc::new(Semaphore::new(parallel.max(1)));
        tokio::spawn(async move {
            // A request that did not fit the previous batch opens the next one.
            let mut carried = None;
            loop {
                let first = match carried.take() {
                    Some(first) => first,
                    None => match rx.recv().await {
                        Some(first) => first,
                        None => return,
                    },
                };
                let Ok(permit) = writers.clone().acquire_owned().await else {
                    return;
                };
                // Whatever queued up while we waited for a writer joins this batch
                // (and whatever comes within the linger).
                let deadline = tokio::time::Instant::now() + limits.linger;
                let mut weight = weigh(&first.0);
                let mut batch = vec![first];
                while batch.len() < limits.count {
                    let next = match rx.try_recv() {
                        Ok(next) => next,
                        Err(_) if limits.linger.is_zero() => break,
                        Err(_) => match tokio::time::timeout_at(deadline, rx.recv()).await {
                            Ok(Some(next)) => next,
                            _ => break,
                        },
                    };
                    let w = weigh(&next.0);
                    if weight.saturating_add(w) > limits.weight {
                        carried = Some(next);
                        break;
                    }
                    weight += w;
                    batch.push(next);
                }
                let (items, replies): (Vec<T>, Vec<_>) = batch.into_iter().unzip();
                let written = write(items);
                tokio::spawn(async move {
                    let results = written.await;
                    debug_assert_eq!(results.len(), replies.len());
                    for (reply, result) in replies.into_iter().zip(results) {
                        if let Some(reply) = reply {
                            let _ = reply.send(result);
                        }
                    }
                    drop(permit);
                });
            }
        });
        Batcher { tx }
    }

    /// Submits one request and waits for its result; `None` if the writer has
    /// stopped (the runtime is shutting down).
    pub async fn call(&self, item: T) -> Option<R> {
        let (reply, done) = oneshot::channel();
        self.tx.send((item, Some(reply))).await.ok()?;
        done.await.ok()
    }

    /// Submits one request without waiting for its result; false if the writer has
    /// stopped.
    pub async fn submit(&self, item: T) -> bool {
        self.tx.send((item, None)).await.is_ok()
    }
}

/// The result of one request of a batched database write: an error is shared by
/// every request of the batch.
pub type DbResult<T> = Result<T, Arc<sqlx::Error>>;

impl<T: Send + 'static, R: Send + 'static> Batcher<T, DbResult<R>> {
    /// [`Batcher::call`] for database writes: a writer that has stopped reads as a
    /// closed pool.
    pub async fn write(&self, item: T) -> DbResult<R> {
        self.call(item)
            .await
            .unwrap_or_else(|| Err(Arc::new(sqlx::Error::PoolClosed)))
    }
}

/// Spreads the result of one statement over the `n` requests it served: each its
/// own answer, or all the same error.
pub fn each<R>(result: Result<Vec<R>, sqlx::Error>, n: usize) -> Vec<DbResult<R>> {
    match result {
        Ok(answers) => answers.into_iter().map(Ok).collect(),
        Err(e) => {
            let e = Arc::new(e);
            (0..n).map(|_| Err(Arc::clone(&e))).collect()
        }
    }
}

/// Writes `items` with one call of `write` (one statement); when the database refuses
/// that statement (a value it will not store, a constraint) rather than being
/// unreachable, each item is written again on its own, so that only the items at
/// fault get the error and the innocent ones that shared their batch are committed.
pub async fn write_or_isolate<T, F, Fut>(items: Vec<T>, write: F) -> Vec<DbResult<()>>
where
    T: Clone,
    F: Fn(Vec<T>) -> Fut,
    Fut: Future<Output = Result<(), sqlx::Error>>,
{
    let n = items.len();
    match write(items.clone()).await {
        Ok(()) => vec![Ok(()); n],
        Err(e) if n > 1 && !crate::store::is_unavailable(&e) => {
            tracing::warn!(error = %e, requests = n, "a grouped write was refused; writing its requests one by one");
            let mut results = Vec::with_capacity(n);
            for item in items {
                results.push(write(vec![item]).await.map_err(Arc::new));
            }
            results
        }
        Err(e) => each(Err(e), n),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn each_caller_gets_its_own_result_and_waiting_calls_share_a_batch() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let batcher = Batcher::start(100, 1, move |items: Vec<u32>| {
            seen.lock().unwrap().push(items.len());
            async move {
                // Slow enough that the other callers queue up behind the first batch.
                tokio::time::sleep(Duration::from_millis(50)).await;
                items.into_iter().map(|i| i * 10).collect()
            }
        });
        let calls: Vec<_> = (0..20u32)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move { (i, batcher.call(i).await) })
            })
            .collect();
        for call in calls {
            let (i, result) = call.await.unwrap();
            assert_eq!(result, Some(i * 10));
        }
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 20);
        assert!(
            sizes.len() < 20,
            "some calls were written together: {sizes:?}"
        );
    }

    #[tokio::test]
    async fn requests_arriving_within_the_linger_share_a_batch_and_a_lone_one_waits_no_longer() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let limits = BatchLimits {
            linger: Duration::from_millis(200),
            ..BatchLimits::count(100)
        };
        // A fast writer: without the linger, spaced requests would go one by one.
        let batcher = Batcher::start_weighted(
            limits,
            |_| 0,
            1,
            move |items: Vec<u32>| {
                seen.lock().unwrap().push(items.len());
                async move { items }
            },
        );
        let calls: Vec<_> = (0..5u32)
            .map(|i| {
                let batcher = batcher.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_millis(u64::from(i) * 20)).await;
                    batcher.call(i).await
                })
            })
            .collect();
        for (i, call) in calls.into_iter().enumerate() {
            assert_eq!(call.await.unwrap(), Some(i as u32));
        }
        assert_eq!(sizes.lock().unwrap().clone(), [5]);
        let started = tokio::time::Instant::now();
        assert_eq!(batcher.call(7).await, Some(7));
        let waited = started.elapsed();
        assert!(
            waited >= Duration::from_millis(200) && waited < Duration::from_secs(5),
            "a lone request is written once the linger is over: {waited:?}"
        );
    }

    #[tokio::test]
    async fn a_batch_stays_under_its_weight_and_a_heavy_request_goes_alone() {
        let batches = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&batches);
        let limits = BatchLimits {
            count: 100,
            weight: 10,
            linger: Duration::ZERO,
        };
        let batcher = Batcher::start_weighted(
            limits,
            |w: &usize| *w,
            1,
            move |items: Vec<usize>| {
                seen.lock().unwrap().push(items.clone());
                async move {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    vec![(); items.len()]
                }
            },
        );
        for w in [1, 4, 4, 4, 25, 3, 3] {
            assert!(batcher.submit(w).await);
        }
        assert_eq!(batcher.call(1).await, Some(()));
        let batches = batches.lock().unwrap().clone();
        let all: Vec<usize> = batches.iter().flatten().copied().collect();
        assert_eq!(all, [1, 4, 4, 4, 25, 3, 3, 1], "every request, in order");
        for batch in &batches {
            let weight: usize = batch.iter().sum();
            assert!(weight <= 10 || batch.len() == 1, "{batches:?}");
        }
    }

    #[tokio::test]
    async fn a_refused_group_is_written_again_one_by_one_and_only_the_offender_fails() {
        let calls = Mutex::new(Vec::new());
        let results = write_or_isolate(vec!["a", "bad", "c"], |group: Vec<&str>| {
            calls.lock().unwrap().push(group.len());
            async move {
                if group.contains(&"bad") {
                    // Not an outage: the statement itself is refused.
                    Err(sqlx::Error::ColumnNotFound("bad".into()))
                } else {
                    Ok(())
                }
            }
        })
        .await;
        let ok: Vec<bool> = results.iter().map(Result::is_ok).collect();
        assert_eq!(ok, [true, false, true]);
        assert_eq!(*calls.lock().unwrap(), [3, 1, 1, 1]);
    }

    #[tokio::test]
    async fn an_unreachable_database_fails_the_group_without_a_retry_per_request() {
        let calls = Mutex::new(0);
        let results = write_or_isolate(vec![1, 2, 3], |_group: Vec<i32>| {
            *calls.lock().unwrap() += 1;
            async { Err(sqlx::Error::PoolTimedOut) }
        })
        .await;
        assert!(results.iter().all(Result::is_err));
        assert_eq!(*calls.lock().unwrap(), 1);
    }

    #[tokio::test]
    async fn a_batch_never_exceeds_its_maximum() {
        let sizes = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&sizes);
        let batcher = Batcher::start(3, 2, move |items: Vec<u32>| {
            seen.lock().unwrap().push(items.len());
            async move {
                tokio::time::sleep(Duration::from_millis(20)).await;
                vec![(); items.len()]
            }
        });
        for i in 0..10 {
            assert!(batcher.submit(i).await);
        }
        assert_eq!(batcher.call(10).await, Some(()));
        let sizes = sizes.lock().unwrap().clone();
        assert_eq!(sizes.iter().sum::<usize>(), 11);
        assert!(sizes.iter().all(|s| *s <= 3), "{sizes:?}");
    }
}
