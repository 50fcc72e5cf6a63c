//! A bounded pool of SMTP sessions to one server.
//!
//! lettre's own pool bounds idle connections, not concurrency, and its transport stops
//! at the first refused recipient; this pool caps concurrent sessions with a semaphore
//! and runs the transaction itself (see `session`) on lettre's `AsyncSmtpConnection`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::transport::smtp::client::AsyncSmtpConnection;
use tokio::sync::{Notify, Semaphore};

use super::connect::{self, Target, Timeouts};
use super::leases::{Lease, SessionLeases};
use super::session::{self, Attempt};
use super::{Delivery, Outgoing};
use crate::domain::{Limits, SmtpConnection};

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
    /// The session's slot of the connection's cap across workers, held while idle.
    lease: Option<Lease>,
}

/// Sessions to one SMTP server, at most `max_connections` at once, at most
/// `max_rate_per_second` messages per second (less while the server throttles).
pub struct Pool {
    target: Target,
    timeouts: Timeouts,
    revision: i64,
    name: String,
    max: usize,
    idle: Mutex<Vec<Idle>>,
    slots: Semaphore,
    pace: Pace,
    /// With leases, a session opens only on a slot free across all workers.
    leases: Option<Arc<SessionLeases>>,
    /// Slots this pool holds leases on.
    held: Arc<AtomicUsize>,
    /// Signalled when a session of this pool is done with.
    returned: Notify,
}

/// Spaces messages evenly: each takes the next free slot of 1/rate seconds, where the
/// rate is this worker's share of the connection's (see `take_turn`).
///
/// tokio's clock, not std's, so that tests can run the schedule in paused time.
struct Pace {
    next: Mutex<tokio::time::Instant>,
}

impl Pace {
    fn new() -> Pace {
        Pace {
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    /// Waits for the next slot at `rate` messages per second.
    async fn wait(&self, rate: f64) {
        let interval = Duration::try_from_secs_f64(1.0 / rate).unwrap_or(Duration::from_secs(1));
        let slot = {
            let Ok(mut next) = self.next.lock() else {
                return;
            };
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

impl Pool {
    pub fn new(
        target: Target,
        timeouts: Timeouts,
        connection: &SmtpConnection,
        leases: Option<Arc<SessionLeases>>,
    ) -> Pool {
        Pool {
            leases,
            held: Arc::default(),
            returned: Notify::new(),
            target,
            timeouts,
            revision: connection.revision,
            name: connection.name.clone(),
            max: usize::from(connection.max_connections.max(1)),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(usize::from(connection.max_connections.max(1))),
            pace: Pace::new(),
        }
    }

    /// The revision of the connection this pool was built for.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Runs one SMTP transaction, waiting for a free session slot, then a session,
    /// then (with a rate limit) the message's turn, all within the `limits` in effect.
    /// `hold`, asked once the turn comes, may still hand the message back (the
    /// connection was paused while it waited).
    pub async fn send(
        &self,
        message: &Outgoing<'_>,
        limits: &(dyn Fn() -> Limits + Sync),
        hold: &(dyn Fn() -> Option<Delivery> + Sync),
    ) -> Delivery {
        let cap = usize::from(limits().max_connections).min(self.max);
        let Ok(_slot) = self.slots.acquire().await else {
            return Delivery::Deferred {
                reply: None,
                error: "the SMTP pool is closed".to_owned(),
                recipients: Vec::new(),
            };
        };
        // A pooled session may have been closed by the server while idle; that shows
        // as a network error on the first command, and then a fresh session is tried
        // once (on the same slot) before the message is deferred.
        let mut slot = None;
        let mut paced = false;
        let give_up_at = tokio::time::Instant::now() + self.timeouts.command;
        loop {
            if let Some((conn, lease)) = self.take_idle(cap) {
                if !paced {
                    if let Err(held) = self.take_turn(cap, limits, hold).await {
                        return held;
                    }
                    paced = true;
                }
                match session::transact(conn, &self.timeouts, message).await {
                    Attempt::StaleSession => {
                        slot = lease;
                        break;
                    }
                    attempt => return self.finish(attempt, lease).await,
                }
            }
            let Some(leases) = &self.leases else {
                break;
            };
            let held = self.held.load(Ordering::SeqCst);
            let acquired = if held >= leases.fair_share(cap) {
                // This worker has its share: it waits for one of its own sessions.
                Ok(None)
            } else {
                leases.acquire(&self.name, cap, &self.held).await
            };
            match acquired {
                Ok(Some(lease)) => {
                    slot = Some(lease);
                    break;
                }
                // Every other slot is taken, but this worker has sessions: wait for
                // one of them rather than hand the message back.
                Ok(None)
                    if self.held.load(Ordering::SeqCst) > 0
                        && tokio::time::Instant::now() < give_up_at =>
                {
                    let _ = tokio::time::timeout_at(give_up_at, self.returned.notified()).await;
                }
                Ok(None) => {
                    return Delivery::Withheld {
                        error: format!(
                            "all {cap} sessions of connection {:?} are open in other workers",
                            self.name
                        ),
                    }
                }
                Err(e) => {
                    return Delivery::Withheld {
                        error: format!("could not lease a session slot: {e}"),
                    }
                }
            }
        }
        match connect::open(&self.target, &self.timeouts, &mut Vec::new()).await {
            Ok(conn) => {
                if !paced {
                    if let Err(held) = self.take_turn(cap, limits, hold).await {
                        return held;
                    }
                }
                let attempt = session::transact(conn, &self.timeouts, message).await;
                self.finish(attempt, slot).await
            }
            // Dropping the lease gives the slot back.
            Err(delivery) => delivery,
        }
    }

    /// Waits for the message's turn under the rate limit. With leases this worker's
    /// share is the rate times the share of the connection's `cap` slots it holds (it
    /// holds at least the one it is about to use). Then `hold` has the last word.
    async fn take_turn(
        &self,
        cap: usize,
        limits: &(dyn Fn() -> Limits + Sync),
        hold: &(dyn Fn() -> Option<Delivery> + Sync),
    ) -> Result<(), Delivery> {
        if let Some(rate) = limits().max_rate_per_second.filter(|r| *r > 0.0) {
            let share = match self.leases {
                Some(_) => self.held.load(Ordering::SeqCst).clamp(1, cap) as f64 / cap as f64,
                None => 1.0,
            };
            self.pace.wait(rate * share).await;
        }
        hold().map_or(Ok(()), Err)
    }

    async fn finish(&self, attempt: Attempt, lease: Option<Lease>) -> Delivery {
        let delivery = self.settle(attempt, lease);
        // A session is idle again, or its slot was given back: a delivery waiting for
        // one may go on.
        self.returned.notify_one();
        let idle = self.idle.lock().map(|i| i.len()).unwrap_or(0);
        let busy = self.max.saturating_sub(self.slots.available_permits() + 1);
        crate::metrics::pool_sessions(&self.name, busy, idle);
        delivery
    }

    /// Pools the session if it is still usable; otherwise it and its lease go.
    fn settle(&self, attempt: Attempt, lease: Option<Lease>) -> Delivery {
        match attempt {
            Attempt::Done {
                delivery,
                conn: Some(conn),
            } if lease.as_ref().is_none_or(Lease::is_current) => {
                if let Ok(mut idle) = self.idle.lock() {
                    idle.push(Idle {
                        conn,
                        since: Instant::now(),
                        lease,
                    });
                }
                delivery
            }
            Attempt::Done { delivery, .. } => delivery,
            Attempt::StaleSession => Delivery::Deferred {
                reply: None,
                error: "the SMTP server closed the connection".to_owned(),
                recipients: Vec::new(),
            },
        }
    }

    fn take_idle(&self, cap: usize) -> Option<(AsyncSmtpConnection, Option<Lease>)> {
        let mut idle = self.idle.lock().ok()?;
        // More slots than this worker's share (workers joined since, or the server
        // throttles): idle sessions beyond it close, giving their slots back.
        if let Some(leases) = &self.leases {
            let share = leases.fair_share(cap);
            while self.held.load(Ordering::SeqCst) > share && !idle.is_empty() {
                idle.remove(0);
            }
        }
        while let Some(entry) = idle.pop() {
            let leased = entry.lease.as_ref().is_none_or(Lease::is_current);
            if leased && entry.since.elapsed() < self.timeouts.idle && !entry.conn.has_broken() {
                return Some((entry.conn, entry.lease));
            }
            // Too old (the server has probably given up on it), or its lease may have
            // lapsed: drop closes the socket and gives its slot back.
        }
        None
    }

    /// Closes the idle sessions whose leases were retired (dropping them closes the
    /// socket).
    pub fn close_retired(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.retain(|entry| entry.lease.as_ref().is_none_or(Lease::is_current));
        }
    }

    /// Closes every idle session at once (the server throttles: it counts sockets).
    pub fn drop_idle(&self) {
        if let Ok(mut idle) = self.idle.lock() {
            idle.clear();
        }
    }

    /// Says QUIT to every idle session.
    pub async fn close(&self) {
        let idle: Vec<Idle> = self
            .idle
            .lock()
            .map(|mut i| std::mem::take(&mut *i))
            .unwrap_or_default();
        for mut entry in idle {
            let _ = tokio::time::timeout(self.timeouts.command, entry.conn.quit()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn pace_gives_concurrent_callers_slots_one_interval_apart() {
        let pace = Arc::new(Pace::new());
        let start = tokio::time::Instant::now();
        let waits: Vec<_> = (0..6)
            .map(|_| {
                let pace = Arc::clone(&pace);
                tokio::spawn(async move {
                    pace.wait(5.0).await;
                    tokio::time::Instant::now() - start
                })
            })
            .collect();
        let mut offsets = Vec::new();
        for wait in waits {
            offsets.push(wait.await.unwrap());
        }
        offsets.sort();
        let expected: Vec<_> = (0..6).map(|i| Duration::from_millis(200 * i)).collect();
        assert_eq!(offsets, expected);
    }

    #[tokio::test(start_paused = true)]
    async fn pace_does_not_bank_idle_time_into_a_burst() {
        let pace = Pace::new();
        pace.wait(5.0).await;
        // Idle for a long time: the next caller goes at once, but the one after
        // still waits a full interval rather than spending the idle seconds.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let resumed = tokio::time::Instant::now();
        pace.wait(5.0).await;
        assert_eq!(tokio::time::Instant::now() - resumed, Duration::ZERO);
        pace.wait(5.0).await;
        assert_eq!(
            tokio::time::Instant::now() - resumed,
            Duration::from_millis(200)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn pace_follows_a_rate_that_changes_between_calls() {
        // A throttled connection at half its 10/s, then whole again.
        let pace = Pace::new();
        let start = tokio::time::Instant::now();
        pace.wait(5.0).await;
        pace.wait(5.0).await;
        assert_eq!(
            tokio::time::Instant::now() - start,
            Duration::from_millis(200)
        );
        pace.wait(10.0).await;
        pace.wait(10.0).await;
        assert_eq!(
            tokio::time::Instant::now() - start,
            Duration::from_millis(500)
        );
    }
}
