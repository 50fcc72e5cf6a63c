//! A bounded pool of SMTP sessions to one server.
//!
//! lettre's own pool bounds idle connections, not concurrency, and its transport stops
//! at the first refused recipient; this pool caps concurrent sessions with a semaphore
//! and runs the transaction itself (see `session`) on lettre's `AsyncSmtpConnection`.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use lettre::transport::smtp::client::AsyncSmtpConnection;
use tokio::sync::Semaphore;

use super::connect::{self, Target, Timeouts};
use super::session::{self, Attempt};
use super::{Delivery, Outgoing};
use crate::domain::SmtpConnection;

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

/// Sessions to one SMTP server, at most `max_connections` at once, at most
/// `max_rate_per_second` messages per second.
pub struct Pool {
    target: Target,
    timeouts: Timeouts,
    revision: i64,
    name: String,
    max: usize,
    idle: Mutex<Vec<Idle>>,
    slots: Semaphore,
    pace: Option<Pace>,
}

/// Spaces messages evenly: each takes the next free slot of 1/rate seconds.
///
/// tokio's clock, not std's, so that tests can run the schedule in paused time.
struct Pace {
    interval: Duration,
    next: Mutex<tokio::time::Instant>,
}

impl Pace {
    fn new(rate: u32) -> Pace {
        Pace {
            interval: Duration::from_secs(1) / rate,
            next: Mutex::new(tokio::time::Instant::now()),
        }
    }

    async fn wait(&self) {
        let slot = {
            let Ok(mut next) = self.next.lock() else {
                return;
            };
            let slot = (*next).max(tokio::time::Instant::now());
            *next = slot + self.interval;
            slot
        };
        tokio::time::sleep_until(slot).await;
    }
}

impl Pool {
    pub fn new(target: Target, timeouts: Timeouts, connection: &SmtpConnection) -> Pool {
        Pool {
            target,
            timeouts,
            revision: connection.revision,
            name: connection.name.clone(),
            max: usize::from(connection.max_connections.max(1)),
            idle: Mutex::new(Vec::new()),
            slots: Semaphore::new(usize::from(connection.max_connections.max(1))),
            pace: connection
                .max_rate_per_second
                .filter(|r| *r > 0)
                .map(Pace::new),
        }
    }

    /// The revision of the connection this pool was built for.
    pub fn revision(&self) -> i64 {
        self.revision
    }

    /// Runs one SMTP transaction, waiting for a free session slot (and, with a rate
    /// limit, for the message's turn) first.
    pub async fn send(&self, message: &Outgoing<'_>) -> Delivery {
        if let Some(pace) = &self.pace {
            pace.wait().await;
        }
        let Ok(_slot) = self.slots.acquire().await else {
            return Delivery::Deferred {
                reply: None,
                error: "the SMTP pool is closed".to_owned(),
                recipients: Vec::new(),
            };
        };
        // A pooled session may have been closed by the server while idle; that shows
        // as a network error on the first command, and then a fresh session is tried
        // once before the message is deferred.
        if let Some(conn) = self.take_idle() {
            match session::transact(conn, &self.timeouts, message).await {
                Attempt::StaleSession => {}
                attempt => return self.finish(attempt).await,
            }
        }
        match self.connect().await {
            Ok(conn) => {
                let attempt = session::transact(conn, &self.timeouts, message).await;
                self.finish(attempt).await
            }
            Err(delivery) => delivery,
        }
    }

    async fn finish(&self, attempt: Attempt) -> Delivery {
        let delivery = self.settle(attempt);
        let idle = self.idle.lock().map(|i| i.len()).unwrap_or(0);
        let busy = self.max.saturating_sub(self.slots.available_permits() + 1);
        crate::metrics::pool_sessions(&self.name, busy, idle);
        delivery
    }

    fn settle(&self, attempt: Attempt) -> Delivery {
        match attempt {
            Attempt::Done {
                delivery,
                conn: Some(conn),
            } => {
                if let Ok(mut idle) = self.idle.lock() {
                    idle.push(Idle {
                        conn,
                        since: Instant::now(),
                    });
                }
                delivery
            }
            Attempt::Done {
                delivery,
                conn: None,
            } => delivery,
            Attempt::StaleSession => Delivery::Deferred {
                reply: None,
                error: "the SMTP server closed the connection".to_owned(),
                recipients: Vec::new(),
            },
        }
    }

    fn take_idle(&self) -> Option<AsyncSmtpConnection> {
        let mut idle = self.idle.lock().ok()?;
        while let Some(entry) = idle.pop() {
            if entry.since.elapsed() < self.timeouts.idle && !entry.conn.has_broken() {
                return Some(entry.conn);
            }
            // Too old: the server has probably given up on it; drop closes the socket.
        }
        None
    }

    /// Opens a session: TCP (or implicit TLS), EHLO, STARTTLS when asked for (never
    /// continuing in plain text without it), then AUTH.
    async fn connect(&self) -> Result<AsyncSmtpConnection, Delivery> {
        connect::open(&self.target, &self.timeouts, &mut Vec::new()).await
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
        let pace = Arc::new(Pace::new(5));
        let start = tokio::time::Instant::now();
        let waits: Vec<_> = (0..6)
            .map(|_| {
                let pace = Arc::clone(&pace);
                tokio::spawn(async move {
                    pace.wait().await;
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
        let pace = Pace::new(5);
        pace.wait().await;
        // Idle for a long time: the next caller goes at once, but the one after
        // still waits a full interval rather than spending the idle seconds.
        tokio::time::sleep(Duration::from_secs(10)).await;
        let resumed = tokio::time::Instant::now();
        pace.wait().await;
        assert_eq!(tokio::time::Instant::now() - resumed, Duration::ZERO);
        pace.wait().await;
        assert_eq!(
            tokio::time::Instant::now() - resumed,
            Duration::from_millis(200)
        );
    }
}
