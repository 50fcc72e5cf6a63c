//! SMTP delivery: one bounded connection pool per SMTP connection, and the
//! classification of what the server answered.

mod connect;
mod leases;
mod pool;
mod reply;
mod session;
pub mod tls;
mod verify;

pub use connect::VerifyStep;
pub use leases::SessionLeases;

use connect::{Target, Timeouts};
use pool::Pool;
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
            settings,
            extra_roots,
            auth_pause,
            pools: RwLock::new(HashMap::new()),
            paused: Mutex::new(HashMap::new()),
            leases: None,
        })
    }

    /// The same mailer, opening sessions only under leases (a worker's mailer).
    pub fn with_session_leases(self, leases: SessionLeases) -> Mailer {
        Mailer {
            leases: Some(Arc::new(leases)),
            ..self
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
        let pool = self.pool(connection);
        match pool.send(message).await {
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
