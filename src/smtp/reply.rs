//! What a failure of lettre means for the message: the server's reply inside the
//! error, and whether the attempt is deferred, paused or rejected.

use std::error::Error as _;

use super::Delivery;
use crate::domain::SmtpReply;

/// The server's reply inside a lettre error, when the error is a negative reply.
pub(super) fn reply_of(e: &lettre::transport::smtp::Error) -> Option<SmtpReply> {
    let code = u16::from(e.status()?);
    let text = e.source().map(|s| s.to_string()).unwrap_or_default();
    Some(SmtpReply::new(code, &[text.as_str()]))
}

pub(super) fn describe(e: &lettre::transport::smtp::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Classifies a failure while opening a session. Failures there are about the server
/// or the connection's settings, never the message, so even a 5xx (say, 535 bad
/// credentials) defers rather than fails it.
pub(super) fn classify_error(step: &str, e: &lettre::transport::smtp::Error) -> Delivery {
    Delivery::Deferred {
        reply: reply_of(e),
        error: format!("{step}: {}", describe(e)),
        recipients: Vec::new(),
    }
}

/// An AUTH failure: the connection's credentials are wrong (or the server refuses
/// them for now); the connection pauses rather than failing its messages.
pub(super) fn auth_refused(e: &lettre::transport::smtp::Error) -> Delivery {
    let reply = reply_of(e);
    if reply.as_ref().is_some_and(|r| !r.is_permanent()) {
        // 454 and other 4xx: a passing server problem, an ordinary retry.
        return classify_error("AUTH", e);
    }
    Delivery::Paused {
        reply,
        error: format!("AUTH: {}", describe(e)),
        resume_in: std::time::Duration::ZERO,
    }
}

/// A transient failure without a reply (network, TLS, timeout).
pub(super) fn deferred(error: String) -> Delivery {
    Delivery::Deferred {
        reply: None,
        error,
        recipients: Vec::new(),
    }
}
