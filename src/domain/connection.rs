use serde::{Deserialize, Serialize};

/// How the SMTP session is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS; refuses to continue without it.
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
    /// No encryption: for local relays and test sinks only.
    None,
}

/// A secret (an SMTP password): never printed, never serialised.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Secret {
        Secret(value.into())
    }

    /// The clear text, for the one place that needs it (AUTH, encryption).
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<redacted>")
    }
}

/// A connection name: 1 to 64 of letters, digits, `.`, `_` and `-`.
pub fn parse_connection_name(name: &str) -> Result<String, String> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    if ok {
        Ok(name.to_owned())
    } else {
        Err(format!(
            "{name:?} is not a connection name (1-64 letters, digits, '.', '_' or '-')"
        ))
    }
}

/// True for `localhost` and loopback IP addresses: a session to them never leaves the
/// machine.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Why credentials must not be used with these settings: AUTH in clear text over the
/// network, unless allowed.
pub fn plaintext_auth_refusal(
    security: Security,
    host: &str,
    has_credentials: bool,
    allowed: bool,
) -> Option<String> {
    (security == Security::None && has_credentials && !allowed && !is_loopback_host(host)).then(|| {
        format!(
            "credentials would be sent in clear text to {host:?} (security \"none\"): use starttls or tls, or set allow_plaintext_auth to true"
        )
    })
}

/// A reusable SMTP connection: where and how to deliver, and as whom.
#[derive(Debug, Clone)]
pub struct SmtpConnection {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub username: Option<String>,
    pub password: Option<Secret>,
    /// Why the stored password cannot be used: it does not decrypt under the
    /// configured master keys, or was stored for another connection. Such a
    /// connection never authenticates; its messages wait until it is fixed.
    pub credentials_error: Option<String>,
    pub default_from: Option<super::Mailbox>,
    /// Simultaneous SMTP sessions per worker process.
    pub max_connections: u16,
    /// Messages per second per worker process; `None` for no limit.
    pub max_rate_per_second: Option<u32>,
    /// AUTH may go over an unencrypted session (`security: none`) to a host other than
    /// loopback. Off unless the operator says so: the password would cross the network
    /// in clear text.
    pub allow_plaintext_auth: bool,
    /// Changes whenever the connection is updated, so pools can be rebuilt.
    pub revision: i64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_hosts_take_plaintext_credentials_by_default() {
        for host in [
            "localhost",
            "LOCALHOST",
            "127.0.0.1",
            "127.8.9.1",
            "::1",
            "[::1]",
        ] {
            assert!(is_loopback_host(host), "{host}");
            assert_eq!(
                plaintext_auth_refusal(Security::None, host, true, false),
                None
            );
        }
        for host in [
            "smtp.example.com",
            "10.0.0.1",
            "localhost.evil.com",
            "0.0.0.0",
        ] {
            assert!(!is_loopback_host(host), "{host}");
            assert!(plaintext_auth_refusal(Security::None, host, true, false).is_some());
            assert_eq!(
                plaintext_auth_refusal(Security::None, host, true, true),
                None
            );
            assert_eq!(
                plaintext_auth_refusal(Security::None, host, false, false),
                None
            );
            assert_eq!(
                plaintext_auth_refusal(Security::Starttls, host, true, false),
                None
            );
        }
    }
}
