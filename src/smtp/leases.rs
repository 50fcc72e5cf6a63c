//! A connection's caps across every worker process.
//!
//! - `max_connections`: a session is opened only under a lease on one of the
//!   connection's slots, held in PostgreSQL. Leases are taken when a session opens and
//!   given back when it closes (a pooled session keeps its lease while idle), so
//!   PostgreSQL is asked per session, not per message; the worker's heartbeat renews
//!   them, and a dead worker's lapse after `worker.presumed_dead_after`.
//! - Each worker holds at most an even share of a connection's slots (rounded up)
//!   among the live workers its heartbeat counts, so that every worker with jobs for
//!   the connection can send through it.
//! - `max_rate_per_second`: each worker paces at its share, the rate times the share of
//!   the connection's slots it holds (`rate × held / max_connections`): the shares
//!   never add up to more than the rate, a worker without a slot takes none, and a
//!   worker holding every slot (one worker alone under load) sends at the full rate.
//!   No query per message.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use uuid::Uuid;

use crate::store::Store;

/// Takes and gives back session slots for one worker.
pub struct SessionLeases {
    store: Store,
    worker: Uuid,
    ttl: Duration,
    /// Live workers, this one included, as of the last heartbeat.
    alive: AtomicUsize,
    /// Bumped when a heartbeat comes after a gap longer than `ttl` (the process was
    /// frozen, or PostgreSQL out of reach): every lease taken before may have lapsed
    /// and been taken by another worker, so sessions holding one are closed.
    epoch: AtomicU64,
    last_renewal: Mutex<Instant>,
}

impl SessionLeases {
    /// Leases of `worker`, lapsing `ttl` after its last heartbeat.
    pub fn new(store: Store, worker: Uuid, ttl: Duration) -> SessionLeases {
        SessionLeases {
            store,
            worker,
            ttl,
            alive: AtomicUsize::new(1),
            epoch: AtomicU64::new(0),
            last_renewal: Mutex::new(Instant::now()),
        }
    }

    /// Where the leases are kept.
    pub(super) fn store(&self) -> &Store {
        &self.store
    }

    /// A heartbeat renewed this worker's leases; `workers` are alive. True when it
    /// came after a gap that may have let them lapse: every lease taken before is
    /// retired, and the sessions holding one must close.
    pub fn renewed(&self, workers: usize) -> bool {
        self.alive.store(workers.max(1), Ordering::SeqCst);
        let Ok(mut last) = self.last_renewal.lock() else {
            return false;
        };
        let gap = last.elapsed();
        *last = Instant::now();
        if gap <= self.ttl {
            return false;
        }
        self.epoch.fetch_add(1, Ordering::SeqCst);
        tracing::warn!(gap = ?gap, "no heartbeat for longer than worker.presumed_dead_after: session leases may have lapsed; closing the sessions that held them");
        true
    }

    /// The most slots of a connection of `cap` this worker should hold: an even share
    /// among the live workers, rounded up. A worker that took every slot while it was
    /// alone gives the extra back as others join, so that no worker's jobs wait for
    /// a slot another keeps idle.
    pub(super) fn fair_share(&self, cap: usize) -> usize {
        cap.div_ceil(self.alive.load(Ordering::SeqCst).max(1))
            .max(1)
    }

    /// A free slot of `connection` (of `cap`), or `None` when other sessions hold
    /// them all. `held` counts the caller's slots while their leases live.
    pub(super) async fn acquire(
        self: &Arc<Self>,
        connection: &str,
        cap: usize,
        held: &Arc<AtomicUsize>,
    ) -> Result<Option<Lease>, sqlx::Error> {
        let cap = u16::try_from(cap).unwrap_or(u16::MAX);
        // Two workers may race for the same free slot; the loser looks once more.
        for _ in 0..2 {
            if let Some(slot) = self
                .store
                .acquire_session_lease(connection, cap, self.worker, self.ttl)
                .await?
            {
                held.fetch_add(1, Ordering::SeqCst);
                return Ok(Some(Lease {
                    epoch: self.epoch.load(Ordering::SeqCst),
                    leases: Arc::clone(self),
                    connection: connection.to_owned(),
                    slot,
                    held: Arc::clone(held),
                }));
            }
        }
        Ok(None)
    }
}

/// One held slot; dropping it (the session closed) gives the slot back.
pub(super) struct Lease {
    leases: Arc<SessionLeases>,
    connection: String,
    slot: i32,
    held: Arc<AtomicUsize>,
    epoch: u64,
}

impl Lease {
    /// False once a heartbeat gap may have let the lease lapse: its session must
    /// close rather than be used again.
    pub(super) fn is_current(&self) -> bool {
        self.epoch == self.leases.epoch.load(Ordering::SeqCst)
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.held.fetch_sub(1, Ordering::SeqCst);
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            // No runtime (the process is ending): the lease lapses by itself.
            return;
        };
        let store = self.leases.store.clone();
        let worker = self.leases.worker;
        let connection = std::mem::take(&mut self.connection);
        let slot = self.slot;
        runtime.spawn(async move {
            if let Err(e) = store
                .release_session_lease(&connection, slot, worker)
                .await
            {
                tracing::warn!(connection = %connection, slot, error = %e, "could not give a session slot back; it lapses after worker.presumed_dead_after");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_heartbeat_after_a_gap_longer_than_the_lease_retires_the_leases_held() {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .connect_lazy("postgres://nobody@127.0.0.1:1/none")
            .unwrap();
        let leases = Arc::new(SessionLeases::new(
            Store::from_pool(pool),
            Uuid::nil(),
            Duration::from_millis(50),
        ));
        let held = Arc::new(AtomicUsize::new(1));
        let lease = Lease {
            leases: Arc::clone(&leases),
            connection: String::new(),
            slot: 0,
            held: Arc::clone(&held),
            epoch: leases.epoch.load(Ordering::SeqCst),
        };
        assert!(!leases.renewed(3));
        assert!(lease.is_current(), "a heartbeat on time keeps it");
        assert_eq!(
            leases.fair_share(4),
            2,
            "4 slots among 3 workers: 2 at most each"
        );
        std::thread::sleep(Duration::from_millis(80));
        assert!(leases.renewed(3));
        assert!(!lease.is_current(), "after a gap it may have lapsed");
        // Dropped outside a runtime's reach of PostgreSQL: the count still falls.
        drop(lease);
        assert_eq!(held.load(Ordering::SeqCst), 0);
    }
}
