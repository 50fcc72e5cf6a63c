//! An SMTP connection: one model for the connection declared in configuration, the
//! ones stored in PostgreSQL and the ones sent to the API. [`ConnectionFields`] is what
//! a person writes; [`ConnectionFields::parse`] checks every field and gives the
//! [`SmtpConnection`] the rest of the code uses.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::{check_header_text_max, FieldError, Mailbox};

/// How the SMTP session is protected.
#[derive(
    Debug, Default, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Security {
    /// Plain connection upgraded with STARTTLS; refuses to continue without it.
    #[default]
    Starttls,
    /// TLS from the first byte (SMTPS, usually port 465).
    Tls,
    /// No encryption: for local relays and test sinks only.
    None,
}

/// A name of a connection or a tenant: 1 to 64 of letters, digits, `.`, `_` and `-`.
pub(super) fn parse_name(name: &str) -> Result<String, ()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
    ok.then(|| name.to_owned()).ok_or(())
}

/// A connection name: 1 to 64 of letters, digits, `.`, `_` and `-`.
pub fn parse_connection_name(name: &str) -> Result<String, String> {
    parse_name(name).map_err(|()| {
        format!("{name:?} is not a connection name (1-64 letters, digits, '.', '_' or '-')")
    })
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

/// Sessions per worker process when a connection does not say.
pub const DEFAULT_MAX_CONNECTIONS: u16 = 8;

/// A connection as written in configuration or sent to `POST /v1/connections`, before
/// its fields are checked.
#[derive(Debug, Clone, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(example = json!({
    "name": "relay",
    "host": "smtp.example.com",
    "port": 587,
    "security": "starttls",
    "username": "postwire",
    "password": "secret",
    "default_from": "Postwire <noreply@example.com>"
}))]
pub struct ConnectionFields {
    /// 1 to 64 letters, digits, `.`, `_` and `-`.
    #[serde(default)]
    #[schema(pattern = "^[A-Za-z0-9._-]{1,64}$")]
    pub name: String,
    /// Host name or IP address.
    #[schema(min_length = 1, max_length = 253, pattern = "^[A-Za-z0-9.:\\[\\]-]+$")]
    pub host: String,
    #[schema(minimum = 1, maximum = 65535)]
    pub port: u16,
    pub security: Security,
    /// Text without control characters. Absent, `null` or `""`: no AUTH.
    #[serde(default)]
    #[schema(
        pattern = "^[^\\x00-\\x08\\x0A-\\x1F\\x7F-\\x9F\\u00AD\\u180E\\u200B-\\u200F\\u202A-\\u202E\\u2060-\\u2064\\u2066-\\u2069\\uFEFF]*$"
    )]
    pub username: Option<String>,
    /// Write-only: encrypted at rest, never returned. Absent, `null` or `""`: none.
    #[serde(default)]
    #[schema(value_type = Option<String>, write_only)]
    pub password: Option<SecretString>,
    /// The sender used when a send has no `From`.
    #[serde(default)]
    pub default_from: Option<String>,
    /// Simultaneous SMTP sessions per worker process, 1 to 1000; default 8.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 1000)]
    pub max_connections: Option<u16>,
    /// Messages per second per worker process, at least 1; `null` or absent for no
    /// limit.
    #[serde(default)]
    #[schema(minimum = 1)]
    pub max_rate_per_second: Option<u32>,
    /// Allow AUTH over `security: none` to a host other than loopback (the password
    /// then crosses the network in clear text). Default false.
    #[serde(default)]
    pub allow_plaintext_auth: bool,
}

impl ConnectionFields {
    /// Checks every field, reporting each bad one by name.
    pub fn parse(self) -> Result<SmtpConnection, Vec<FieldError>> {
        let mut errors = Vec::new();
        let mut check = |field: &str, result: Result<(), String>| {
            if let Err(e) = result {
                errors.push(FieldError::new(field, e));
            }
        };
        check("name", parse_connection_name(&self.name).map(drop));
        let host_ok = !self.host.is_empty()
            && self.host.len() <= 253
            && self
                .host
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c));
        check(
            "host",
            host_ok
                .then_some(())
                .ok_or_else(|| format!("{:?} is not a host name or IP address", self.host)),
        );
        check(
            "port",
            (self.port != 0)
                .then_some(())
                .ok_or_else(|| "must be 1 to 65535".to_owned()),
        );
        // Forms send empty strings for fields left blank: no user name, no password.
        let username = self.username.filter(|u| !u.is_empty());
        if let Some(u) = &username {
            check(
                "username",
                check_header_text_max(u, 255).map_err(|_| {
                    "must be at most 255 bytes of text without control characters".to_owned()
                }),
            );
        }
        let password = self.password.filter(|p| !p.expose_secret().is_empty());
        if password
            .as_ref()
            .is_some_and(|p| p.expose_secret().len() > 1024)
        {
            check("password", Err("must be at most 1024 bytes".to_owned()));
        }
        let default_from = match self.default_from.filter(|f| !f.trim().is_empty()) {
            Some(f) => Mailbox::parse(&f)
                .map_err(|e| check("default_from", Err(e.to_string())))
                .ok(),
            None => None,
        };
        let max_connections = self.max_connections.unwrap_or(DEFAULT_MAX_CONNECTIONS);
        if !(1..=1000).contains(&max_connections) {
            check("max_connections", Err("must be 1 to 1000".to_owned()));
        }
        if self.max_rate_per_second == Some(0) {
            check(
                "max_rate_per_second",
                Err("must be at least 1 (or null for no limit)".to_owned()),
            );
        }
        if let Some(refusal) = plaintext_auth_refusal(
            self.security,
            &self.host,
            username.is_some(),
            self.allow_plaintext_auth,
        ) {
            check("security", Err(refusal));
        }
        if !errors.is_empty() {
            return Err(errors);
        }
        Ok(SmtpConnection {
            name: self.name,
            host: self.host,
            port: self.port,
            security: self.security,
            username,
            password,
            credentials_error: None,
            default_from,
            max_connections,
            max_rate_per_second: self.max_rate_per_second,
            allow_plaintext_auth: self.allow_plaintext_auth,
            revision: 0,
        })
    }
}

/// A reusable SMTP connection: where and how to deliver, and as whom.
#[derive(Debug, Clone)]
pub struct SmtpConnection {
    pub name: String,
    pub host: String,
    pub port: u16,
    pub security: Security,
    pub username: Option<String>,
    pub password: Option<SecretString>,
    /// Why the stored password cannot be used: it does not decrypt under the
    /// configured master keys, or was stored for another connection. Such a
    /// connection never authenticates; its messages wait until it is fixed.
    pub credentials_error: Option<String>,
    pub default_from: Option<Mailbox>,
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
