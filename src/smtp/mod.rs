//! SMTP delivery: one bounded connection pool per SMTP connection, and the
//! classification of what the server answered.

mod connect;
mod leases;
mod pool;
mod reply;
mod session;
mod throttle;
pub mod tls;
mod verify;

pub use connect::VerifyStep;
pub use leases::SessionLeases;

use connect::{Target, Timeouts};
use pool::Pool;
use throttle::Throttles;
pub use verify::{verify, VerifyReport};

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::config::SmtpSettings;
use crate::domain::{RecipientResult, SmtpConnection, SmtpReply};

/// How one delivery attempt ended.
#[derive(Debug, Clone)]
pub enum Delivery {
    /// The server took the message (for at least one recipient).
    Sent {
        reply: SmtpReply,
        recipients: Vec<RecipientResult>,
    },
    /// A permanent (5xx) answer: retrying cannot help.
    Rejected {
        reply: Option<SmtpReply>,
        error: String,
        recipients: Vec<RecipientResult>,
    },
    /// A transient failure (4xx, network, TLS, timeout): try again later.
    Deferred {
        reply: Option<SmtpReply>,
        error: String,
        recipients: Vec<RecipientResult>,
    },
    /// The connection is paused after its credentials were refused: nothing was
    /// attempted, and the message should wait `resume_in` without losing an attempt.
    Paused {
        reply: Option<SmtpReply>,
        error: String,
        resume_in: Duration,
    },
    /// The connection rests after its server's throttling reply: nothing was
    /// attempted, and the message waits `resume_in` without losing an attempt.
    Throttled { error: String, resume_in: Duration },
    /// Nothing was sent, for a reason of this process rather than of the server: its
    /// heartbeat is too old to start DATA (it may have been presumed dead and taken
    /// over), or the connection could not be loaded. No attempt is spent.
    Withheld { error: String },
}

/// One message to send, and the check that lets its DATA start.
pub struct Outgoing<'a> {
    pub envelope_from: &'a str,
    pub envelope_to: &'a [String],
    pub raw: &'a [u8],
    /// Asked right before DATA: false withholds the message (see
    /// [`Delivery::Withheld`]), so that a worker whose heartbeat went stale never
    /// starts a transmission its successor may be making too.
    pub may_start_data: &'a (dyn Fn() -> bool + Send + Sync),
}

/// Every SMTP connection's pool, created on first use and rebuilt when the
/// connection changes. A worker process holds one.
pub struct Mailer {
    settings: SmtpSettings,
    /// The certificates of `smtp.extra_root_certificates`, read once.
    extra_roots: Arc<[String]>,
    auth_pause: Duration,
    pools: RwLock<HashMap<String, Arc<Pool>>>,
    /// A worker's: sessions count against each connection's cap across workers.
    leases: Option<Arc<SessionLeases>>,
    /// Connections slowed down by their servers.
    throttles: Throttles,
    /// Connections whose credentials were refused: until when, why, and at which
    /// revision (an update of the connection lifts the pause).
    paused: Mutex<HashMap<String, (Instant, String, i64)>>,
}

impl Mailer {
    /// `auth_pause` is how long a connection rests after its credentials are refused.
    /// Fails when `smtp.extra_root_certificates` cannot be read.
    pub fn new(settings: SmtpSettings, auth_pause: Duration) -> anyhow::Result<Mailer> {
        let extra_roots = tls::extra_roots(&settings.extra_root_certificates)
            .map_err(anyhow::Error::msg)?
            .into();
        Ok(Mailer {
            throttles: Throttles::new(settings.throttle.clone()),
            settings,
            extra_roots,
            auth_pause,
            pools: RwLock::new(HashMap::new()),
            paused: Mutex::new(HashMap::new()),
            leases: None,
        })
    }

    /// The same mailer, opening sessions only under leases and sharing throttling
    /// state with every worker (a worker's mailer).
    pub fn with_session_leases(self, leases: SessionLeases) -> Mailer {
        let store = leases.store().clone();
        Mailer {
            leases: Some(Arc::new(leases)),
            throttles: self.throttles.shared(store),
            ..self
        }
    }

    /// Reads what every worker recorded of the connections' throttling (at a
    /// heartbeat); the idle sessions of a connection newly paused close.
    pub async fn refresh_throttles(&self) {
        let paused = self.throttles.refresh().await;
        if paused.is_empty() {
            return;
        }
        let Ok(pools) = self.pools.read() else {
            return;
        };
        for name in paused {
            if let Some(pool) = pools.get(&name) {
                pool.drop_idle();
            }
        }
    }

    /// A heartbeat renewed this worker's session leases; `workers` are alive and
    /// share each connection's slots.
    pub fn heartbeat_recorded(&self, workers: usize) {
        let retired = self
            .leases
            .as_ref()
            .is_some_and(|leases| leases.renewed(workers));
        if retired {
            // Idle sessions on retired leases close now, not when next used: their
            // slots may already be another worker's, and the server counts sockets.
            for pool in self.pools.read().iter().flat_map(|p| p.values()) {
                pool.close_retired();
            }
        }
    }

    /// Sends a message through `connection`.
    pub async fn send(&self, connection: &SmtpConnection, message: &Outgoing<'_>) -> Delivery {
        if let Some((resume_in, error)) = self.pause_left(connection) {
            return Delivery::Paused {
                reply: None,
                error,
                resume_in,
            };
        }
        let limits = || self.throttles.limits(connection);
        if let Some(held) = self.throttles.hold(connection) {
            return held;
        }
        let pool = self.pool(connection);
        let delivery = pool
            .send(message, &limits, &|| self.throttles.hold(connection))
            .await;
        if let Some(reply) = Throttles::reply_in(&delivery) {
            if self.throttles.throttled(&connection.name, reply).await {
                let now = self.throttles.limits(connection);
                tracing::warn!(
                    connection = %connection.name,
                    reply = %reply,
                    max_connections = now.max_connections,
                    max_rate_per_second = now.max_rate_per_second,
                    paused_until = ?now.paused_until,
                    "the SMTP server throttles: pausing the connection, then sending at reduced limits"
                );
                // The server counts sockets: the idle ones go now.
                pool.drop_idle();
            }
        }
        match delivery {
            Delivery::Paused { reply, error, .. } => {
                tracing::warn!(connection = %connection.name, error = %error, pause = ?self.auth_pause, "SMTP authentication refused; pausing the connection");
                if let Ok(mut paused) = self.paused.lock() {
                    paused.insert(
                        connection.name.clone(),
                        (
                            Instant::now() + self.auth_pause,
                            error.clone(),
                            connection.revision,
                        ),
                    );
                }
                Delivery::Paused {
                    reply,
                    error,
                    resume_in: self.auth_pause,
                }
            }
            other => other,
        }
    }

    fn pause_left(&self, connection: &SmtpConnection) -> Option<(Duration, String)> {
        let mut paused = self.paused.lock().ok()?;
        let (until, error, revision) = paused.get(&connection.name)?;
        match until.checked_duration_since(Instant::now()) {
            Some(left) if !left.is_zero() && *revision == connection.revision => {
                Some((left, format!("connection paused: {error}")))
            }
            _ => {
                paused.remove(&connection.name);
                None
            }
        }
    }

    /// Closes every idle pooled connection (on shutdown).
    pub async fn close(&self) {
        let pools: Vec<Arc<Pool>> = self
            .pools
            .read()
            .map(|p| p.values().cloned().collect())
            .unwrap_or_default();
        for pool in pools {
            pool.close().await;
        }
    }

    fn pool(&self, connection: &SmtpConnection) -> Arc<Pool> {
        let current = |pools: &HashMap<String, Arc<Pool>>| {
            pools
                .get(&connection.name)
                .filter(|p| p.revision() == connection.revision)
                .cloned()
        };
        if let Some(pool) = self.pools.read().ok().and_then(|p| current(&p)) {
            return pool;
        }
        let fresh = || {
            Arc::new(Pool::new(
                Target::from_connection(
                    connection,
                    self.settings.hello_name.as_deref(),
                    Arc::clone(&self.extra_roots),
                ),
                Timeouts::from_settings(&self.settings),
                connection,
                self.leases.clone(),
            ))
        };
        let Ok(mut pools) = self.pools.write() else {
            return fresh();
        };
        // Checked again under the write lock: two first deliveries racing here must
        // share one pool, or its session and rate limits would each count half.
        if let Some(pool) = current(&pools) {
            return pool;
        }
        // A changed connection replaces its pool; sessions of the old one close as
        // their deliveries finish.
        let pool = fresh();
        pools.insert(connection.name.clone(), pool.clone());
        pool
    }
}
