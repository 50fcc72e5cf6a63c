//! The vocabulary of delivery: statuses, SMTP replies and per-recipient results.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Where a message is in its life. `sent`, `failed` and `cancelled` are terminal.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, sqlx::Type,
)]
#[serde(rename_all = "lowercase")]
#[sqlx(type_name = "text", rename_all = "lowercase")]
pub enum Status {
    Queued,
    Sending,
    Deferred,
    Sent,
    Failed,
    Cancelled,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Sending => "sending",
            Status::Deferred => "deferred",
            Status::Sent => "sent",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
        }
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, Status::Sent | Status::Failed | Status::Cancelled)
    }
}

impl std::str::FromStr for Status {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "queued" => Status::Queued,
            "sending" => Status::Sending,
            "deferred" => Status::Deferred,
            "sent" => Status::Sent,
            "failed" => Status::Failed,
            "cancelled" => Status::Cancelled,
            _ => return Err(format!("unknown status {s:?}")),
        })
    }
}

impl std::fmt::Display for Status {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An SMTP server's reply: `250 2.0.0 Ok: queued as 1234`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SmtpReply {
    pub code: u16,
    /// RFC 3463 enhanced status code, e.g. `5.1.1`, when the server sent one.
    pub enhanced: Option<String>,
    /// The reply text, lines joined with a space, without the codes.
    pub text: String,
}

impl SmtpReply {
    /// Builds a reply from its code and lines, splitting off an enhanced status code
    /// whose class matches the reply's.
    pub fn new(code: u16, lines: &[&str]) -> SmtpReply {
        let mut enhanced = None;
        let mut texts = Vec::with_capacity(lines.len());
        for (i, line) in lines.iter().enumerate() {
            let line = line.trim();
            match line.split_once(' ').map_or((line, ""), |(a, b)| (a, b)) {
                (first, rest) if is_enhanced_code(first, code) => {
                    if i == 0 {
                        enhanced = Some(first.to_owned());
                    }
                    texts.push(rest.trim());
                }
                _ => texts.push(line),
            }
        }
        SmtpReply {
            code,
            enhanced,
            text: texts.join(" "),
        }
    }

    pub fn is_positive(&self) -> bool {
        (200..300).contains(&self.code)
    }

    pub fn is_permanent(&self) -> bool {
        (500..600).contains(&self.code)
    }
}

impl std::fmt::Display for SmtpReply {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.enhanced {
            Some(e) => write!(f, "{} {} {}", self.code, e, self.text),
            None => write!(f, "{} {}", self.code, self.text),
        }
    }
}

fn is_enhanced_code(word: &str, code: u16) -> bool {
    let parts: Vec<&str> = word.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()))
        && parts[0] == (code / 100).to_string()
}

/// What became of one recipient: the server's answer to its `RCPT TO`, or that it was
/// left out because its address is suppressed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct RecipientResult {
    pub address: String,
    pub accepted: bool,
    /// The server's reply to `RCPT TO`; `null` for a suppressed recipient (no command
    /// was sent for it).
    pub reply: Option<SmtpReply>,
    /// Set when the recipient was not given to the server because its address is on
    /// the tenant's suppression list.
    #[serde(default)]
    pub suppressed: Option<super::Suppressed>,
}

impl RecipientResult {
    /// A recipient the server answered.
    pub fn answered(address: &str, reply: SmtpReply) -> RecipientResult {
        RecipientResult {
            address: address.to_owned(),
            accepted: reply.is_positive(),
            reply: Some(reply),
            suppressed: None,
        }
    }

    /// A recipient left out: its address is suppressed.
    pub fn suppressed(recipient: &super::SuppressedRecipient) -> RecipientResult {
        RecipientResult {
            address: recipient.address.clone(),
            accepted: false,
            reply: None,
            suppressed: Some(super::Suppressed {
                since: recipient.since,
                reason: recipient.reason.clone(),
            }),
        }
    }
}

/// A message claimed by a worker for one attempt.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Claimed {
    pub id: Uuid,
    /// The name of the message's tenant.
    pub tenant: String,
    pub connection: String,
    pub envelope_from: String,
    pub envelope_to: Vec<String>,
    pub raw: Vec<u8>,
    /// 1 for the first attempt.
    #[sqlx(rename = "attempts")]
    pub attempt: i32,
    pub created_at: DateTime<Utc>,
    /// When the message first became due: its `SendAt`, else its acceptance.
    pub send_at: Option<DateTime<Utc>>,
    pub expires_at: Option<DateTime<Utc>>,
    /// Recipients whose addresses are on the tenant's suppression list.
    pub suppressed: sqlx::types::Json<Vec<super::SuppressedRecipient>>,
}

/// The result of trying to claim a message.
#[derive(Debug)]
pub enum Claim {
    /// This worker now owns the attempt.
    Claimed(Claimed),
    /// Another worker, alive as far as PostgreSQL knows, is sending it right now.
    InProgress,
    /// Waiting, but not due before this time (a duplicate or early job).
    NotYet(DateTime<Utc>),
    /// Its tenant is disabled: the message waits in PostgreSQL, and the reconciler
    /// publishes it again once the tenant is enabled.
    Held,
    /// Nothing to do: the message is terminal (or does not exist).
    Nothing(Option<Status>),
}

/// How an attempt ended, as it is recorded.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub status: Status,
    /// The history entry for the new status: the status itself, or `expired`.
    pub event: &'static str,
    pub reply: Option<SmtpReply>,
    pub error: Option<String>,
    pub recipients: Vec<RecipientResult>,
    pub next_attempt_at: Option<DateTime<Utc>>,
    /// False when nothing was sent (connection paused, message expired): the claim's
    /// attempt is given back and no `attempt` event is written.
    pub attempted: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn enhanced_codes_are_split_from_the_text() {
        let r = SmtpReply::new(550, &["5.1.1 <x@y.com>: Recipient address rejected"]);
        assert_eq!(r.enhanced.as_deref(), Some("5.1.1"));
        assert_eq!(r.text, "<x@y.com>: Recipient address rejected");
        let r = SmtpReply::new(250, &["Ok"]);
        assert_eq!(r.enhanced, None);
        // A class that disagrees with the reply code is text, not an enhanced code.
        let r = SmtpReply::new(250, &["5.0.0 odd"]);
        assert_eq!(r.enhanced, None);
        assert_eq!(r.to_string(), "250 5.0.0 odd");
    }
}
