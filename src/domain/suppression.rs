//! The suppression list's rules: which refusals suppress an address, and how addresses
//! are compared.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::SmtpReply;

/// The form an address is kept and compared in: the local part as written, the domain
/// in lower case (domains are case-insensitive; local parts may not be).
pub fn suppression_key(address: &str) -> String {
    match address.rsplit_once('@') {
        Some((local, domain)) => format!("{local}@{}", domain.to_ascii_lowercase()),
        None => address.to_owned(),
    }
}

/// Whether a recipient's refusal says the address itself is bad, so that mailing it
/// again is pointless (and hurts the sender's reputation):
///
/// - any permanent reply with an enhanced code `5.1.x` (bad mailbox, bad domain, bad
///   syntax, moved, no MX);
/// - `550`, `551` or `553` without an enhanced code whose text says the user or
///   mailbox is unknown ("user unknown", "no such user", "mailbox not found",
///   "does not exist", "unknown recipient", "invalid recipient").
///
/// Never a `5.7.x` (policy, reputation, authentication: the address may be fine), any
/// other class, or a transient (`4xx`) reply.
pub fn is_address_failure(reply: &SmtpReply) -> bool {
    if !reply.is_permanent() {
        return false;
    }
    match reply.enhanced.as_deref() {
        Some(code) => code.starts_with("5.1."),
        None if matches!(reply.code, 550 | 551 | 553) => {
            let text = reply.text.to_ascii_lowercase();
            [
                "user unknown",
                "unknown user",
                "no such user",
                "no such mailbox",
                "mailbox not found",
                "does not exist",
                "unknown recipient",
                "invalid recipient",
            ]
            .iter()
            .any(|phrase| text.contains(phrase))
        }
        None => false,
    }
}

/// A recipient left out of a delivery because its address is on the tenant's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct Suppressed {
    /// Since when the address is on the list.
    pub since: DateTime<Utc>,
    /// Why: the refusal that put it there, or what the tenant said.
    pub reason: String,
}

/// A suppressed recipient of a claimed message, as the claim finds it.
#[derive(Debug, Clone, Deserialize)]
pub struct SuppressedRecipient {
    /// The recipient as the message has it.
    pub address: String,
    pub since: DateTime<Utc>,
    pub reason: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_compare_case_insensitively_on_the_domain_only() {
        assert_eq!(
            suppression_key("Ann.Lee@Example.COM"),
            "Ann.Lee@example.com"
        );
        assert_ne!(
            suppression_key("ann@example.com"),
            suppression_key("ANN@example.com")
        );
        assert_eq!(suppression_key("\"a@b\"@X.org"), "\"a@b\"@x.org");
    }

    #[test]
    fn only_permanent_address_refusals_suppress() {
        let reply = |code: u16, line: &str| SmtpReply::new(code, &[line]);
        let suppressing = [
            (
                550,
                "5.1.1 <bob@example.com>: Recipient address rejected: User unknown",
            ),
            (550, "5.1.2 Host unknown"),
            (553, "5.1.3 Bad recipient address syntax"),
            (550, "5.1.10 RESOLVER.ADR.RecipientNotFound"),
            (550, "User unknown in virtual mailbox table"),
            (551, "No such user here"),
            (553, "Sorry, that mailbox does not exist"),
        ];
        for (code, line) in suppressing {
            assert!(is_address_failure(&reply(code, line)), "{code} {line}");
        }
        let not = [
            (550, "5.7.1 Message rejected as spam; user unknown to us"),
            (554, "5.7.1 Relay access denied"),
            (550, "5.2.2 Mailbox full"),
            (
                450,
                "4.1.1 Recipient address rejected: User unknown (try later)",
            ),
            (550, "Rejected by policy"),
            (554, "No such user"),
            (552, "5.3.4 Message too big"),
        ];
        for (code, line) in not {
            assert!(!is_address_failure(&reply(code, line)), "{code} {line}");
        }
    }
}
