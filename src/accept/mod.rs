//! The accept pipeline: a validated message is given its SMTP connection and sender,
//! rendered once, committed to PostgreSQL (with its idempotency key and its outbox
//! row), and published to RabbitMQ; then it is answered. HTTP handlers are thin
//! adapters over [`Acceptor`]; the outbox relay ([`outbox`]) publishes what a
//! publish did not confirm.
//!
//! Committing means never lost: from then on the reconciler and the relay see to it
//! that a job exists. A publish is attempted within `amqp.publish_timeout`, never
//! longer: the broker's health is not the producer's wait.

mod commit;
pub mod outbox;

use std::sync::Arc;

use uuid::Uuid;

use crate::config::Settings;
use crate::connections::Directory;
use crate::domain::{parse_connection_name, FieldError, Mailbox, NewMessage};
use crate::keys::Principal;
use crate::mime::{RenderError, Rendered};
use crate::queue::{Job, Publisher};
use crate::store::{Accept, IdempotencyRecord, NewMessageRow, Store, StoreError};

pub use outbox::PublishedMarks;

/// Why a message was not accepted.
#[derive(Debug, thiserror::Error)]
pub enum AcceptError {
    /// Fields of the message are invalid, or over a size limit (`too_large`).
    #[error("invalid fields")]
    Invalid {
        too_large: bool,
        errors: Vec<FieldError>,
    },
    /// The send names an SMTP connection that does not exist.
    #[error("no SMTP connection named {0:?}")]
    NoConnection(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Internal(#[from] anyhow::Error),
}

impl AcceptError {
    fn field(field: &str, message: impl std::fmt::Display) -> AcceptError {
        AcceptError::Invalid {
            too_large: false,
            errors: vec![FieldError::new(field, message)],
        }
    }
}

/// An `Idempotency-Key` with the request it came with and the answer to replay.
pub struct Idempotency {
    pub key: String,
    /// SHA-256 of the request body.
    pub request_hash: [u8; 32],
    /// What the first request was answered, replayed to later ones.
    pub answer: serde_json::Value,
}

/// A validated, rendered message ready to commit.
pub struct Prepared {
    id: Uuid,
    tenant_id: Uuid,
    /// The tenant's name, for the job and the log lines.
    tenant: String,
    connection: String,
    /// The From header as stored for the status lookup.
    from_addr: String,
    message: NewMessage,
    rendered: Rendered,
    /// Scheduled beyond the delay queues: no job now, the reconciler publishes one
    /// when it falls due.
    held: bool,
}

impl Prepared {
    /// The id the message is known by from now on.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The delivery job to publish at acceptance, if any: due at `SendAt` when the
    /// send is scheduled within the delay queues' reach.
    fn job(&self) -> Option<Job> {
        (!self.held).then(|| {
            let job = Job::new(self.id).of_tenant(&self.tenant);
            match self.message.send_at {
                Some(at) => job.due_at(at),
                None => job,
            }
        })
    }

    fn row(&self) -> NewMessageRow<'_> {
        NewMessageRow {
            id: self.id,
            tenant_id: self.tenant_id,
            connection: &self.connection,
            from_addr: &self.from_addr,
            recipients: &self.message.recipients,
            envelope_from: &self.rendered.envelope_from,
            envelope_to: &self.rendered.envelope_to,
            subject: self.message.subject.as_str(),
            message_id: &self.rendered.message_id,
            raw: &self.rendered.raw,
            metadata: &self.message.metadata,
            send_at: self.message.send_at,
            expires_at: self.message.expires_at,
            held: self.held,
        }
    }
}

/// The connection a send goes through, as far as accepting needs to know it.
struct SendConnection {
    name: String,
    default_from: Option<Mailbox>,
}

/// Accepts messages; shared by every request of an API process.
pub struct Acceptor {
    store: Store,
    publisher: Arc<Publisher>,
    connections: Arc<Directory>,
    commits: commit::Commits,
    published: PublishedMarks,
    settings: Arc<Settings>,
}

impl Acceptor {
    /// Starts the group-commit writer and the publish recorder.
    pub fn new(
        store: Store,
        publisher: Arc<Publisher>,
        connections: Arc<Directory>,
        settings: Arc<Settings>,
    ) -> Acceptor {
        Acceptor {
            commits: commit::start(store.clone()),
            published: PublishedMarks::start(store.clone()),
            store,
            publisher,
            connections,
            settings,
        }
    }

    /// Picks the message's connection and sender and renders it (on the blocking
    /// pool when `large`).
    pub async fn prepare(
        &self,
        sender: &Principal,
        message: NewMessage,
        large: bool,
    ) -> Result<Prepared, AcceptError> {
        let connection = self
            .connection(message.connection.as_deref(), sender)
            .await?;
        let from = match (&message.from, connection.default_from) {
            (Some(from), _) => from.clone(),
            (None, Some(default)) => default,
            (None, None) => {
                return Err(AcceptError::field(
                    "From",
                    format!(
                        "is required: connection {:?} has no default sender",
                        connection.name
                    ),
                ))
            }
        };
        check_sender_domains(sender, &from, &message.reply_to)?;
        let id = Uuid::now_v7();
        let from_addr = from.to_display();
        let (message, rendered) = self.render(id, message, from, large).await?;
        // The longest delay queue is retry.max_delay: a send scheduled further ahead
        // waits in PostgreSQL, not in a queue.
        let horizon = chrono::Duration::from_std(self.settings.retry.max_delay)
            .unwrap_or(chrono::TimeDelta::MAX);
        let held = message
            .send_at
            .is_some_and(|at| at - chrono::Utc::now() > horizon);
        Ok(Prepared {
            id,
            tenant_id: sender.tenant_id,
            tenant: sender.tenant.clone(),
            connection: connection.name,
            from_addr,
            message,
            rendered,
            held,
        })
    }

    /// The connection of a send: the one it names, else the API key's default, else
    /// the configured default; one of the sender's tenant or a shared one.
    async fn connection(
        &self,
        requested: Option<&str>,
        sender: &Principal,
    ) -> Result<SendConnection, AcceptError> {
        let name = requested
            .or(sender.default_connection.as_deref())
            .or(self.connections.configured_name())
            .ok_or_else(|| {
                AcceptError::field(
                    "connection",
                    "is required: no default SMTP connection is configured",
                )
            })?;
        // Checked before any lookup: a name that cannot exist costs no query and no
        // cache entry.
        let name = parse_connection_name(name).map_err(|e| AcceptError::field("connection", e))?;
        let connection = self
            .connections
            .usable_by(&name, sender.tenant_id)
            .await?
            .ok_or(AcceptError::NoConnection(name))?;
        Ok(SendConnection {
            name: connection.name.clone(),
            default_from: connection.default_from.clone(),
        })
    }

    /// Renders the MIME message and checks its final size. The content leaves the
    /// returned message: from here on only the rendered bytes are needed, and a 20 MB
    /// attachment should not be held twice.
    async fn render(
        &self,
        id: Uuid,
        mut message: NewMessage,
        from: Mailbox,
        large: bool,
    ) -> Result<(NewMessage, Rendered), AcceptError> {
        let domain = self.settings.smtp.message_id_domain.clone();
        let (message, rendered) = off_runtime(large, move || {
            let rendered = crate::mime::render(id, &mut message, &from, &domain);
            (message, rendered)
        })
        .await?;
        let rendered = rendered.map_err(|e| match e {
            RenderError::Address { field, .. } => AcceptError::field(field, e),
            RenderError::Header(_) => AcceptError::field("Headers", e),
            other => AcceptError::Internal(
                anyhow::Error::new(other).context(format!("rendering message {id}")),
            ),
        })?;
        let limit = self.settings.limits.max_message_bytes;
        if rendered.raw.len() > limit {
            return Err(AcceptError::Invalid {
                too_large: true,
                errors: vec![FieldError::new(
                    "Body",
                    format!(
                        "the message is {} bytes once encoded (limit {limit})",
                        rendered.raw.len()
                    ),
                )],
            });
        }
        Ok((message, rendered))
    }

    /// Commits (with the idempotency key, if any) and publishes. Runs in its own task:
    /// a client that hangs up must not cancel a commit or a publish halfway.
    pub async fn accept(
        self: &Arc<Self>,
        sender: &Principal,
        prepared: Vec<Prepared>,
        idempotency: Option<Idempotency>,
    ) -> Result<Accept, AcceptError> {
        let this = Arc::clone(self);
        // An Idempotency-Key belongs to the tenant that used it: another tenant's same
        // key is not a replay (nor a conflict).
        let scope = sender.tenant_id.to_string();
        tokio::spawn(async move { this.commit_and_publish(scope, prepared, idempotency).await })
            .await
            .map_err(|e| AcceptError::Internal(e.into()))?
    }

    async fn commit_and_publish(
        self: Arc<Self>,
        scope: String,
        prepared: Vec<Prepared>,
        idempotency: Option<Idempotency>,
    ) -> Result<Accept, AcceptError> {
        let prepared = Arc::new(prepared);
        // A lone message shares its commit with the concurrent sends; a batch is one
        // commit already, and one keyed send must commit with its key.
        let accepted = match &idempotency {
            None if prepared.len() == 1 => self
                .commits
                .write(Arc::clone(&prepared))
                .await
                .map(|()| Accept::Committed)
                .map_err(StoreError::from)?,
            _ => {
                let record = idempotency.as_ref().map(|i| IdempotencyRecord {
                    scope: &scope,
                    key: &i.key,
                    request_hash: &i.request_hash,
                    response: &i.answer,
                    ttl: self.settings.idempotency.ttl,
                });
                let rows: Vec<NewMessageRow<'_>> = prepared.iter().map(Prepared::row).collect();
                self.store
                    .accept(&rows, record.as_ref())
                    .await
                    .map_err(StoreError::from)?
            }
        };
        if let Accept::Committed = accepted {
            for p in prepared.iter() {
                tracing::info!(message_id = %p.id, tenant = %p.tenant, connection = %p.connection, size = p.rendered.raw.len(), "accepted");
                crate::metrics::message(&p.tenant, &p.connection, "accepted");
            }
            let jobs: Vec<Job> = prepared.iter().filter_map(Prepared::job).collect();
            // The answer waits for the broker at most amqp.publish_timeout; a publish
            // still running then goes on by itself (bounded by amqp.timeout), and
            // whatever does not make it is the outbox relay's.
            let publishing = tokio::spawn({
                let this = Arc::clone(&self);
                async move { this.publish(&jobs).await }
            });
            let bound = self.settings.amqp.publish_timeout;
            if tokio::time::timeout(bound, publishing).await.is_err() {
                tracing::warn!(bound = ?bound, "RabbitMQ is slow to confirm; answering without waiting, the outbox relay has the rest");
            }
        }
        Ok(accepted)
    }

    /// Publishes the delivery jobs of committed messages. A failure is logged, not
    /// returned: the messages are committed, and the outbox relay publishes them.
    async fn publish(&self, jobs: &[Job]) {
        let published = self.publisher.publish_all(jobs).await;
        for (id, e) in &published.failed {
            let tenant = jobs
                .iter()
                .find(|j| j.id == *id)
                .and_then(|j| j.tenant.as_deref());
            tracing::warn!(message_id = %id, tenant, error = format!("{e:#}"), "publish failed; the outbox relay will publish it");
        }
        self.published.mark(published.ok).await;
    }
}

/// Refuses a From or Reply-To outside the tenant's sender domains (when it has any):
/// the anchors send only from verified domains, and a tenant must not be able to
/// speak for another's.
fn check_sender_domains(
    sender: &Principal,
    from: &Mailbox,
    reply_to: &[Mailbox],
) -> Result<(), AcceptError> {
    let Some(allowed) = &sender.allowed_from_domains else {
        return Ok(());
    };
    let permitted = |m: &Mailbox| {
        let domain = m.address.domain().to_ascii_lowercase();
        allowed.contains(&domain)
    };
    let errors: Vec<FieldError> = std::iter::once(("From", from))
        .chain(reply_to.iter().map(|m| ("ReplyTo", m)))
        .filter(|(_, m)| !permitted(m))
        .map(|(field, m)| {
            FieldError::new(
                field,
                format!(
                    "the domain {:?} is not one of the tenant's sender domains ({})",
                    m.address.domain(),
                    allowed.join(", ")
                ),
            )
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(AcceptError::Invalid {
            too_large: false,
            errors,
        })
    }
}

/// Runs `work` on the blocking pool when `large`: parsing, decoding and encoding
/// megabytes would stall an async worker thread, and with it every other request
/// that thread serves.
pub async fn off_runtime<T: Send + 'static>(
    large: bool,
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, anyhow::Error> {
    if large {
        tokio::task::spawn_blocking(work)
            .await
            .map_err(anyhow::Error::from)
    } else {
        Ok(work())
    }
}
