//! One SMTP transaction on an open session: MAIL, one RCPT per recipient (each result
//! kept), DATA, the content, with a time limit on every step.

use std::future::Future;
use std::time::Duration;

use lettre::transport::smtp::client::AsyncSmtpConnection;
use lettre::transport::smtp::commands::{Data, Mail, Rcpt, Rset};
use lettre::transport::smtp::extension::{Extension, MailBodyParameter, MailParameter};
use lettre::transport::smtp::response::Response;
use lettre::Address;

use super::connect::Timeouts;
use super::reply::{describe, reply_of};
use super::{Delivery, Outgoing};
use crate::domain::{RecipientResult, SmtpReply};

/// What became of a transaction, and of the session it ran on.
// Lives for one call and is moved once; boxing the session would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Attempt {
    /// The transaction ended; `conn` is the session if it can be reused.
    Done {
        delivery: Delivery,
        conn: Option<AsyncSmtpConnection>,
    },
    /// The session was dead before the server answered anything: nothing was sent,
    /// so the caller may retry on a fresh session.
    StaleSession,
}

enum Step {
    Reply(Response),
    Negative(SmtpReply),
    Broken(String),
}

async fn step<F>(limit: Duration, what: &str, fut: F) -> Step
where
    F: Future<Output = Result<Response, lettre::transport::smtp::Error>>,
{
    match tokio::time::timeout(limit, fut).await {
        Ok(Ok(response)) => Step::Reply(response),
        Ok(Err(e)) => match reply_of(&e) {
            Some(reply) => Step::Negative(reply),
            None => Step::Broken(format!("{what}: {}", describe(&e))),
        },
        Err(_) => Step::Broken(format!("{what}: no reply within {limit:?}")),
    }
}

/// Runs MAIL/RCPT/DATA for one message. `conn` is consumed and handed back in the
/// result when it is still usable.
pub(super) async fn transact(
    mut conn: AsyncSmtpConnection,
    timeouts: &Timeouts,
    message: &Outgoing<'_>,
) -> Attempt {
    let (envelope_from, envelope_to, raw) =
        (message.envelope_from, message.envelope_to, message.raw);
    let broken = |error: String, recipients: Vec<RecipientResult>| Attempt::Done {
        delivery: Delivery::Deferred {
            reply: None,
            error,
            recipients,
        },
        conn: None,
    };
    let Ok(from) = envelope_from.parse::<Address>() else {
        return Attempt::Done {
            delivery: rejected(
                None,
                format!("invalid envelope sender {envelope_from:?}"),
                vec![],
            ),
            conn: Some(conn),
        };
    };

    let mut params = Vec::new();
    if !raw.is_ascii() && conn.server_info().supports_feature(Extension::EightBitMime) {
        params.push(MailParameter::Body(MailBodyParameter::EightBitMime));
    }
    let non_ascii_envelope = !envelope_from.is_ascii() || envelope_to.iter().any(|a| !a.is_ascii());
    if non_ascii_envelope {
        if !conn.server_info().supports_feature(Extension::SmtpUtfEight) {
            return Attempt::Done {
                delivery: rejected(
                    None,
                    "the SMTP server does not support SMTPUTF8, needed for these addresses".into(),
                    vec![],
                ),
                conn: Some(conn),
            };
        }
        params.push(MailParameter::SmtpUtfEight);
    }

    match step(
        timeouts.command,
        "MAIL FROM",
        conn.command(Mail::new(Some(from), params)),
    )
    .await
    {
        Step::Reply(_) => {}
        Step::Negative(reply) => return reset(conn, timeouts, by_class(reply, vec![])).await,
        // Nothing reached the server yet: the caller may try a fresh session.
        Step::Broken(_) => return Attempt::StaleSession,
    }

    let mut recipients = Vec::with_capacity(envelope_to.len());
    for to in envelope_to {
        let Ok(address) = to.parse::<Address>() else {
            recipients.push(RecipientResult::answered(
                to,
                SmtpReply::new(553, &["invalid recipient address"]),
            ));
            continue;
        };
        let reply = match step(
            timeouts.command,
            "RCPT TO",
            conn.command(Rcpt::new(address, vec![])),
        )
        .await
        {
            Step::Reply(r) => smtp_reply(&r),
            Step::Negative(reply) => reply,
            Step::Broken(error) => return broken(error, recipients),
        };
        recipients.push(RecipientResult::answered(to, reply));
    }

    // A recipient refused for now would miss this copy; keep the message whole and
    // try again later rather than deliver to some and lose the others.
    let deferred = recipients.iter().find_map(|r| {
        let reply = r
            .reply
            .as_ref()
            .filter(|reply| !r.accepted && !reply.is_permanent())?;
        Some((r.address.clone(), reply.clone()))
    });
    if let Some((address, reply)) = deferred {
        let error = format!("recipient {address} deferred: {reply}");
        let delivery = Delivery::Deferred {
            reply: Some(reply),
            error,
            recipients,
        };
        return reset(conn, timeouts, delivery).await;
    }
    if !recipients.iter().any(|r| r.accepted) {
        let reply = recipients.first().and_then(|r| r.reply.clone());
        let delivery = rejected(reply, "every recipient was refused".to_owned(), recipients);
        return reset(conn, timeouts, delivery).await;
    }

    if !(message.may_start_data)() {
        let delivery = Delivery::Withheld {
            error: "this worker's heartbeat is too old to start DATA (it may have been presumed dead); nothing was sent".to_owned(),
        };
        return reset(conn, timeouts, delivery).await;
    }
    match step(timeouts.command, "DATA", conn.command(Data)).await {
        Step::Reply(_) => {}
        Step::Negative(reply) => return reset(conn, timeouts, by_class(reply, recipients)).await,
        Step::Broken(error) => return broken(error, recipients),
    }
    // lettre ends the content with CRLF "." CRLF, whose CRLF closes the last line; a
    // message that ends with its own CRLF (a rendered one does) would gain an empty
    // line at the receiver.
    let content = raw.strip_suffix(b"\r\n").unwrap_or(raw);
    match step(timeouts.data, "end of DATA", conn.message(content)).await {
        Step::Reply(r) => Attempt::Done {
            delivery: Delivery::Sent {
                reply: smtp_reply(&r),
                recipients,
            },
            conn: Some(conn),
        },
        Step::Negative(reply) => Attempt::Done {
            delivery: by_class(reply, recipients),
            conn: Some(conn),
        },
        Step::Broken(error) => broken(error, recipients),
    }
}

/// Ends a failed transaction with RSET so the session can be reused.
async fn reset(mut conn: AsyncSmtpConnection, timeouts: &Timeouts, delivery: Delivery) -> Attempt {
    let conn = match step(timeouts.command, "RSET", conn.command(Rset)).await {
        Step::Reply(_) => Some(conn),
        _ => None,
    };
    Attempt::Done { delivery, conn }
}

fn by_class(reply: SmtpReply, recipients: Vec<RecipientResult>) -> Delivery {
    let error = reply.to_string();
    if reply.is_permanent() {
        rejected(Some(reply), error, recipients)
    } else {
        Delivery::Deferred {
            reply: Some(reply),
            error,
            recipients,
        }
    }
}

fn rejected(reply: Option<SmtpReply>, error: String, recipients: Vec<RecipientResult>) -> Delivery {
    Delivery::Rejected {
        reply,
        error,
        recipients,
    }
}

fn smtp_reply(r: &Response) -> SmtpReply {
    let lines: Vec<&str> = r.message().collect();
    SmtpReply::new(u16::from(r.code()), &lines)
}
