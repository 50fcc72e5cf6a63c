//! A bounded pool of SMTP sessions to one server.
//!
//! lettre's own pool bounds idle connections, not concurrency, and its transport stops
//! at the first refused recipient; this pool caps concurrent sessions with a semaphore
//! and runs the transaction itself (see `session`) on lettre's `AsyncSmtpConnection`.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::extension::ClientId;
use tokio::net::TcpStream;
use tokio::sync::Semaphore;

use super::session::{self, Attempt};
use super::tls;
use super::verify::VerifyStep;
use super::{Delivery, Outgoing};
use crate::config::SmtpSettings;
use crate::domain::{Security, SmtpConnection};

/// Where and how to connect.
#[derive(Clone)]
pub struct Target {
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub credentials: Option<Credentials>,
    /// Credentials may go over an unencrypted session to a host other than loopback.
    pub allow_plaintext_auth: bool,
    /// Why the credentials cannot be used; then no AUTH is attempted.
    pub credentials_error: Option<String>,
    pub hello_name: ClientId,
    /// Certificate authorities trusted besides the system's (PEM).
    pub extra_roots: Arc<[String]>,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("security", &self.security)
            .field("authenticated", &self.credentials.is_some())
            .finish()
    }
}

impl Target {
    pub fn from_connection(
        c: &SmtpConnection,
        hello_name: Option<&str>,
        extra_roots: Arc<[String]>,
    ) -> Target {
        Target {
            host: c.host.clone(),
            port: c.port,
            security: c.security,
            credentials: c.username.as_ref().map(|u| {
                let password = c.password.as_ref().map(|p| p.expose().to_owned());
                Credentials::new(u.clone(), password.unwrap_or_default())
            }),
            allow_plaintext_auth: c.allow_plaintext_auth,
            credentials_error: c.credentials_error.clone(),
            hello_name: hello_name
                .map(|h| ClientId::Domain(h.to_owned()))
                .unwrap_or_default(),
            extra_roots,
        }
    }
}

/// Limits on each step of a session.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    pub connect: Duration,
    pub command: Duration,
    pub data: Duration,
    pub idle: Duration,
}

impl Timeouts {
    pub fn from_settings(s: &SmtpSettings) -> Timeouts {
        Timeouts {
            connect: s.connect_timeout,
            command: s.command_timeout,
            data: s.data_timeout,
            idle: s.idle_timeout,
        }
    }
}

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
        self.connect_steps(&mut Vec::new()).await
    }

    /// Opens a session and says QUIT, reporting each step (connection verification).
    pub async fn verify(&self) -> Vec<VerifyStep> {
        let mut steps = Vec::new();
        match self.connect_steps(&mut steps).await {
            Ok(mut conn) => {
                let _ = tokio::time::timeout(self.timeouts.command, conn.quit()).await;
            }
            Err(delivery) => {
                let step = match steps.len() {
                    0 => "connect",
                    1 if self.target.security == Security::Starttls => "starttls",
                    _ => "auth",
                };
                let detail = match delivery {
                    Delivery::Deferred { error, .. }
                    | Delivery::Rejected { error, .. }
                    | Delivery::Paused { error, .. }
                    | Delivery::Withheld { error } => error,
                    Delivery::Sent { .. } => String::new(),
                };
                steps.push(VerifyStep {
                    step: step.to_owned(),
                    ok: false,
                    detail,
                });
            }
        }
        steps
    }

    /// Opens a session, recording each step that succeeded in `steps`.
    async fn connect_steps(
        &self,
        steps: &mut Vec<VerifyStep>,
    ) -> Result<AsyncSmtpConnection, Delivery> {
        let t = &self.target;
        // Our own socket in every mode, so that Nagle's algorithm is off: each SMTP
        // command is a small write followed by a wait for the reply, and with Nagle on
        // every transaction stalls on delayed ACKs (~40 ms).
        let tcp = match tokio::time::timeout(
            self.timeouts.connect,
            TcpStream::connect((t.host.as_str(), t.port)),
        )
        .await
        {
            Ok(Ok(tcp)) => tcp,
            Ok(Err(e)) => return Err(deferred(format!("connect to {}:{}: {e}", t.host, t.port))),
            Err(_) => {
                return Err(deferred(format!(
                    "connect to {}:{}: timed out",
                    t.host, t.port
                )))
            }
        };
        let _ = tcp.set_nodelay(true);
        // Checked on the address actually connected to, whatever the host name
        // resolved to: credentials never cross the network in clear text unless the
        // connection allows it.
        let peer_is_loopback = tcp.peer_addr().is_ok_and(|a| a.ip().is_loopback());
        let stream: Box<dyn AsyncTokioStream> = match t.security {
            Security::Tls => {
                let handshake = tls::connect_implicit(tcp, &t.host, &t.extra_roots);
                match tokio::time::timeout(self.timeouts.connect, handshake).await {
                    Ok(Ok(socket)) => Box::new(socket),
                    Ok(Err(e)) => return Err(deferred(e)),
                    Err(_) => {
                        return Err(deferred("timed out during the TLS handshake".to_owned()))
                    }
                }
            }
            Security::Starttls | Security::None => Box::new(tcp),
        };
        let greeting = AsyncSmtpConnection::connect_with_transport(stream, &t.hello_name);
        let opened = tokio::time::timeout(self.timeouts.command, greeting).await;
        let mut conn = match opened {
            Ok(Ok(conn)) => conn,
            Ok(Err(e)) => return Err(session::classify_error("connect", &e)),
            Err(_) => {
                return Err(deferred(
                    "timed out waiting for the SMTP greeting".to_owned(),
                ))
            }
        };
        steps.push(VerifyStep {
            step: "connect".to_owned(),
            ok: true,
            detail: format!(
                "connected to {}:{}{}; EHLO: {}",
                t.host,
                t.port,
                if t.security == Security::Tls {
                    " over TLS"
                } else {
                    ""
                },
                conn.server_info()
            ),
        });
        if t.security == Security::Starttls {
            if !conn.can_starttls() {
                conn.abort().await;
                return Err(deferred(
                    "the SMTP server does not offer STARTTLS; refusing to send in plain text"
                        .to_owned(),
                ));
            }
            let parameters = tls::parameters(&t.host, &t.extra_roots).map_err(deferred)?;
            let upgrade = conn.starttls(parameters, &t.hello_name);
            match tokio::time::timeout(self.timeouts.command * 2, upgrade).await {
                Ok(Ok(())) => steps.push(VerifyStep {
                    step: "starttls".to_owned(),
                    ok: true,
                    detail: format!("TLS established; EHLO: {}", conn.server_info()),
                }),
                Ok(Err(e)) => return Err(session::classify_error("STARTTLS", &e)),
                Err(_) => return Err(deferred("timed out during STARTTLS".to_owned())),
            }
        }
        if let Some(credentials) = &t.credentials {
            let refusal = if let Some(error) = &t.credentials_error {
                Some(format!("AUTH: {error}"))
            } else if t.security == Security::None && !t.allow_plaintext_auth && !peer_is_loopback {
                Some(format!(
                    "AUTH: refusing to send credentials in clear text to {}:{} (security none, not loopback); use starttls or tls, or set allow_plaintext_auth",
                    t.host, t.port
                ))
            } else {
                None
            };
            if let Some(error) = refusal {
                conn.abort().await;
                return Err(Delivery::Paused {
                    reply: None,
                    error,
                    resume_in: Duration::ZERO,
                });
            }
            let mechanisms = [Mechanism::Plain, Mechanism::Login];
            match tokio::time::timeout(
                self.timeouts.command * 2,
                conn.auth(&mechanisms, credentials),
            )
            .await
            {
                Ok(Ok(reply)) => steps.push(VerifyStep {
                    step: "auth".to_owned(),
                    ok: true,
                    detail: reply.message().collect::<Vec<_>>().join(" "),
                }),
                Ok(Err(e)) => return Err(session::auth_refused(&e)),
                Err(_) => return Err(deferred("timed out during AUTH".to_owned())),
            }
        }
        Ok(conn)
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

fn deferred(error: String) -> Delivery {
    Delivery::Deferred {
        reply: None,
        error,
        recipients: Vec::new(),
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
