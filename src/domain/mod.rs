//! Validated domain types. Request bodies become these at the edge; code past the edge
//! never re-checks them.

mod address;
mod connection;
mod delivery;
mod importance;
mod message;
mod suppression;
mod tenant;
mod text;
mod throttle;
mod webhook;

pub use address::{parse_mailbox_list, AddressError, EmailAddress, Mailbox};
pub use connection::{
    is_loopback_host, parse_connection_name, plaintext_auth_refusal, ConnectionFields, Security,
    SmtpConnection, DEFAULT_MAX_CONNECTIONS,
};
pub use delivery::{Claim, Claimed, Outcome, RecipientResult, SmtpReply, Status};
pub use importance::Importance;
pub use message::{
    Attachment, Body, CustomHeader, NewMessage, Recipients, Subject, TransferEncoding, MAX_SUBJECT,
};
pub use suppression::{is_address_failure, suppression_key, Suppressed, SuppressedRecipient};
pub use tenant::{
    parse_sender_domains, parse_tenant_name, parse_tenant_rate, DEFAULT_TENANT, DEFAULT_TENANT_ID,
};
pub use text::{check_header_text, check_header_text_max, HeaderTextError};
pub use throttle::{is_throttling, Limits, Throttle};
pub use webhook::{new_webhook_secret, parse_webhook_url, sign_webhook, WebhookEvent};

/// One problem with one input field, as reported to the client.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub struct FieldError {
    /// Path of the field in the request, e.g. `To` or `Attachments[1].ContentData`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl std::fmt::Display) -> FieldError {
        FieldError {
            field: field.into(),
            message: message.to_string(),
        }
    }

    /// Errors as one line, each after its field: `host: ...; port: ...`.
    pub fn describe(errors: &[FieldError]) -> String {
        errors
            .iter()
            .map(|e| format!("{}: {}", e.field, e.message))
            .collect::<Vec<_>>()
            .join("; ")
    }
}
