//! Opening an SMTP session: TCP or implicit TLS, greeting and EHLO, STARTTLS, AUTH.
//! Used by the pool for deliveries and by verify, which reports each step.

use std::sync::Arc;
use std::time::Duration;

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, AsyncTokioStream};
use lettre::transport::smtp::extension::ClientId;
use secrecy::ExposeSecret;
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;

use super::reply::{auth_refused, classify_error, deferred};
use super::{tls, Delivery};
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
                let password = c.password.as_ref().map(|p| p.expose_secret().to_owned());
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

/// One step of a session set-up, as verify reports it: `connect` (TCP, TLS for `tls`,
/// greeting and EHLO), `starttls`, `auth`.
#[derive(Debug, Serialize, Deserialize, utoipa::ToSchema)]
pub struct VerifyStep {
    pub step: String,
    pub ok: bool,
    pub detail: String,
}

/// Opens a session, recording each step that succeeded in `steps`.
pub async fn open(
    t: &Target,
    timeouts: &Timeouts,
    steps: &mut Vec<VerifyStep>,
) -> Result<AsyncSmtpConnection, Delivery> {
    // Our own socket in every mode, so that Nagle's algorithm is off: each SMTP
    // command is a small write followed by a wait for the reply, and with Nagle on
    // every transaction stalls on delayed ACKs (~40 ms).
    let tcp = match tokio::time::timeout(
        timeouts.connect,
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
            match tokio::time::timeout(timeouts.connect, handshake).await {
                Ok(Ok(socket)) => Box::new(socket),
                Ok(Err(e)) => return Err(deferred(e)),
                Err(_) => return Err(deferred("timed out during the TLS handshake".to_owned())),
            }
        }
        Security::Starttls | Security::None => Box::new(tcp),
    };
    let greeting = AsyncSmtpConnection::connect_with_transport(stream, &t.hello_name);
    let opened = tokio::time::timeout(timeouts.command, greeting).await;
    let mut conn = match opened {
        Ok(Ok(conn)) => conn,
        Ok(Err(e)) => return Err(classify_error("connect", &e)),
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
        match tokio::time::timeout(timeouts.command * 2, upgrade).await {
            Ok(Ok(())) => steps.push(VerifyStep {
                step: "starttls".to_owned(),
                ok: true,
                detail: format!("TLS established; EHLO: {}", conn.server_info()),
            }),
            Ok(Err(e)) => return Err(classify_error("STARTTLS", &e)),
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
        match tokio::time::timeout(timeouts.command * 2, conn.auth(&mechanisms, credentials)).await
        {
            Ok(Ok(reply)) => steps.push(VerifyStep {
                step: "auth".to_owned(),
                ok: true,
                detail: reply.message().collect::<Vec<_>>().join(" "),
            }),
            Ok(Err(e)) => return Err(auth_refused(&e)),
            Err(_) => return Err(deferred("timed out during AUTH".to_owned())),
        }
    }
    Ok(conn)
}
