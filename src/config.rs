//! Layered configuration: `config/default.toml`, then `config/$POSTWIRE_ENV.toml`, then
//! `POSTWIRE__SECTION__KEY` environment variables. Every key is documented in
//! `config/default.toml`; a bad value stops the process with a message naming the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::domain::{ConnectionFields, FieldError};

/// The whole configuration of a postwire process.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    pub server: ServerSettings,
    pub database: DatabaseSettings,
    pub amqp: AmqpSettings,
    pub worker: WorkerSettings,
    pub smtp: SmtpSettings,
    pub limits: Limits,
    pub retry: RetrySettings,
    pub outbox: OutboxSettings,
    pub reconcile: ReconcileSettings,
    pub idempotency: IdempotencySettings,
    pub security: SecuritySettings,
    pub retention: RetentionSettings,
    /// Signed status-change notifications to producers.
    #[serde(default)]
    pub webhooks: WebhookSettings,
    pub log: LogSettings,
    /// `POSTWIRE_ENV`: `production` unless set. Only `development` and `test` may run
    /// without a master key.
    #[serde(skip)]
    pub environment: String,
}

/// Secrets at rest.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SecuritySettings {
    /// AES-256 key (base64 of 32 bytes) encrypting SMTP passwords.
    #[serde(default)]
    pub master_key: Option<SecretString>,
    /// Keys that encrypted older values; kept for decryption during a rotation.
    #[serde(default)]
    pub previous_master_keys: Vec<SecretString>,
    /// How long a verified API key is remembered; a revocation takes this long to
    /// reach running processes.
    #[serde(default = "default_key_cache", with = "humantime_serde")]
    pub api_key_cache: Duration,
}

fn default_key_cache() -> Duration {
    Duration::from_secs(5)
}

/// When and how often a transient failure is retried.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetrySettings {
    /// Delay before the second attempt.
    #[serde(with = "humantime_serde")]
    pub initial: Duration,
    /// Each further delay is the previous one times this.
    pub factor: f32,
    /// Upper bound of one delay.
    #[serde(with = "humantime_serde")]
    pub max_delay: Duration,
    /// Attempts in all (the first included) before the message fails.
    pub max_attempts: u32,
    /// A message not sent this long after it was accepted fails as expired.
    #[serde(with = "humantime_serde")]
    pub max_age: Duration,
    /// Add random jitter (up to one delay) so that a burst of failures does not come
    /// back as a burst.
    pub jitter: bool,
    /// After an authentication failure the connection is paused this long; its
    /// messages wait without spending attempts.
    #[serde(with = "humantime_serde")]
    pub auth_pause: Duration,
}

/// The outbox relay: publishes committed messages whose publish was never confirmed.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OutboxSettings {
    /// How often the relay looks for unpublished messages.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Messages younger than this are left to the request that accepted them.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Most messages republished per round.
    pub batch: u32,
}

/// The reconciler: makes PostgreSQL the single record by republishing the job of every
/// non-terminal message whose job is overdue (lost queue, lost broker node, a crashed
/// worker), and by publishing scheduled sends when they fall due.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReconcileSettings {
    /// How often a pass runs (one process at a time holds the pass).
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// How late a job may be before it is presumed lost and republished; also the
    /// least time between two republishes of one message.
    #[serde(with = "humantime_serde")]
    pub grace: Duration,
    /// Most messages republished per pass.
    pub batch: u32,
}

/// How long message content is kept.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionSettings {
    /// Content of terminal messages older than this many days is deleted; 0 keeps
    /// everything. Fractions are allowed.
    pub days: f64,
    /// Delete whole messages and their history instead of only their content.
    pub delete_rows: bool,
    /// How often the job runs.
    #[serde(with = "humantime_serde")]
    pub interval: Duration,
    /// Messages per batch.
    pub batch: i64,
}

/// `Idempotency-Key` handling.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdempotencySettings {
    /// How long a key is remembered.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

/// The HTTP API.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerSettings {
    pub host: String,
    pub port: u16,
    /// Upper bound on a request body, in bytes; larger bodies get 413.
    pub body_limit_bytes: usize,
    /// How long in-flight requests may take to finish after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// A connection must deliver a request's headers within this long (counted from
    /// the connection's start, or from the end of the previous response); otherwise it
    /// is closed. Idle keep-alive connections close after this long too.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// A request body must arrive whole within this long; otherwise 408.
    #[serde(with = "humantime_serde")]
    pub body_read_timeout: Duration,
    /// Open HTTP connections at most; a connection beyond them is answered 503 with
    /// `Retry-After` and closed.
    pub max_connections: usize,
    /// Bytes of request bodies held at once, all requests together; a request that
    /// would go beyond gets 503 with `Retry-After` instead of growing the process.
    pub max_body_bytes_in_flight: usize,
}

/// PostgreSQL, the system of record.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatabaseSettings {
    pub url: String,
    pub max_connections: u32,
    #[serde(with = "humantime_serde")]
    pub acquire_timeout: Duration,
    /// Run the embedded migrations when `serve` starts.
    pub migrate_on_start: bool,
}

impl std::fmt::Debug for DatabaseSettings {
    // The URL may carry a password.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatabaseSettings")
            .field("url", &redact_url(&self.url))
            .field("max_connections", &self.max_connections)
            .field("migrate_on_start", &self.migrate_on_start)
            .finish()
    }
}

/// RabbitMQ, the work queue.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// The broker, when it is one node.
    pub url: String,
    /// Every node of a RabbitMQ cluster; when set, `url` is not used. A connection
    /// goes to the first node that answers, starting after the one last used, so a
    /// reconnect after a node's failure goes to another. From the environment:
    /// `POSTWIRE__AMQP__URLS=amqp://a:5672/%2f,amqp://b:5672/%2f`.
    #[serde(default)]
    pub urls: Vec<String>,
    /// Every queue name starts with this prefix, so several deployments (or tests) can
    /// share one broker.
    pub queue_prefix: String,
    /// `classic` on a single node, `quorum` on a cluster. Unset: `quorum` when `urls`
    /// names several nodes, else `classic`.
    #[serde(default)]
    pub queue_type: Option<QueueType>,
    /// Delete the queues after this long unused (RabbitMQ `x-expires`); for tests only.
    #[serde(default, with = "humantime_serde")]
    pub queue_expires: Option<Duration>,
    /// Upper bound of every broker operation: connecting, declaring, a publish and its
    /// confirm, an acknowledgement. A broker that hangs instead of refusing costs
    /// this long, then the connection is dropped and opened again.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// How long a send waits for the broker's confirm before answering 202 anyway:
    /// the message is committed, and the outbox relay publishes it if this publish
    /// did not make it.
    #[serde(with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// AMQP heartbeat: a connection silent for about twice this is known dead.
    #[serde(with = "humantime_serde")]
    pub heartbeat: Duration,
}

impl AmqpSettings {
    /// The broker's nodes: `urls`, or `url` alone.
    pub fn addresses(&self) -> Vec<&str> {
        if self.urls.is_empty() {
            vec![self.url.as_str()]
        } else {
            self.urls.iter().map(String::as_str).collect()
        }
    }

    /// The queue type in effect: as set, else quorum (replicated) on a cluster.
    pub fn queue_type(&self) -> QueueType {
        self.queue_type.unwrap_or(if self.urls.len() > 1 {
            QueueType::Quorum
        } else {
            QueueType::Classic
        })
    }
}

impl std::fmt::Debug for AmqpSettings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let addresses: Vec<String> = self.addresses().into_iter().map(redact_url).collect();
        f.debug_struct("AmqpSettings")
            .field("addresses", &addresses)
            .field("queue_prefix", &self.queue_prefix)
            .field("queue_type", &self.queue_type)
            .field("timeout", &self.timeout)
            .field("publish_timeout", &self.publish_timeout)
            .finish()
    }
}

/// RabbitMQ queue type.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum QueueType {
    Classic,
    Quorum,
}

impl QueueType {
    /// As RabbitMQ's `x-queue-type` (and this configuration) spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            QueueType::Classic => "classic",
            QueueType::Quorum => "quorum",
        }
    }
}

/// Delivery workers.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerSettings {
    /// Deliveries one worker process runs at once; also its RabbitMQ prefetch.
    pub concurrency: u16,
    /// How long in-flight deliveries may take to finish after a shutdown signal.
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
    /// Where a worker-only process serves `/metrics` and `/healthz` (e.g.
    /// `0.0.0.0:9091`); unset for none. API processes serve them on the API port.
    #[serde(default)]
    pub metrics_listen: Option<String>,
    /// How often a worker tells PostgreSQL it is alive.
    #[serde(with = "humantime_serde")]
    pub heartbeat_interval: Duration,
    /// A worker silent this long is presumed dead: its in-progress messages may be
    /// taken over by another worker.
    #[serde(with = "humantime_serde")]
    pub presumed_dead_after: Duration,
}

/// SMTP client behaviour and the default connection.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpSettings {
    /// Name announced in EHLO; defaults to the machine's host name.
    #[serde(default)]
    pub hello_name: Option<String>,
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Limit for each SMTP command's reply.
    #[serde(with = "humantime_serde")]
    pub command_timeout: Duration,
    /// Limit for the reply to the end of DATA (the server may scan the message first).
    #[serde(with = "humantime_serde")]
    pub data_timeout: Duration,
    /// Idle pooled connections are closed after this long.
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Domain used in generated Message-IDs when the sender's domain cannot be used.
    pub message_id_domain: String,
    /// PEM files of certificate authorities trusted for SMTP TLS besides the
    /// system's, for relays with a private CA. Host names are checked all the same.
    #[serde(default)]
    pub extra_root_certificates: Vec<std::path::PathBuf>,
    /// How a connection slows down after its server's throttling replies.
    #[serde(default)]
    pub throttle: ThrottleSettings,
    /// The connection used when a send names none (its name defaults to `default`).
    pub default: Option<ConnectionFields>,
}

/// Webhook delivery.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhookSettings {
    /// Accept `http://` endpoint URLs (tests, a receiver on a private network);
    /// otherwise only `https://`.
    pub allow_http: bool,
    /// Deliver to addresses on loopback, private, link-local, CGNAT or cloud metadata
    /// ranges. Off: an endpoint whose host resolves there is refused (no request is
    /// made), so a tenant cannot aim postwire at the internal network.
    pub allow_private_targets: bool,
    /// An endpoint must answer within this long; a 2xx within it is a success.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// The waits before each retry of a failed delivery; after the last, the delivery
    /// is failed (and can be replayed with `POST /v1/webhooks/{id}/recover`).
    #[serde(deserialize_with = "durations")]
    pub retry: Vec<Duration>,
    /// An endpoint failing this long without a success is disabled.
    #[serde(with = "humantime_serde")]
    pub disable_after: Duration,
    /// Webhook jobs in hand at once per worker process (the prefetch of the webhook
    /// queue; a job carries up to 64 deliveries); 0: this process delivers no
    /// webhooks.
    pub concurrency: u16,
    /// Requests in flight at once to one endpoint, per process.
    pub per_endpoint_concurrency: usize,
    /// After a secret rotation the old secret signs too for this long.
    #[serde(with = "humantime_serde")]
    pub rotation_overlap: Duration,
}

/// A list of durations written like "5s", "2h".
fn durations<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
    let list: Vec<humantime_serde::Serde<Duration>> = Deserialize::deserialize(d)?;
    Ok(list
        .into_iter()
        .map(humantime_serde::Serde::into_inner)
        .collect())
}

impl Default for WebhookSettings {
    fn default() -> WebhookSettings {
        let h = |hours: u64| Duration::from_secs(hours * 3600);
        WebhookSettings {
            allow_http: false,
            allow_private_targets: false,
            timeout: Duration::from_secs(15),
            retry: vec![
                Duration::from_secs(5),
                Duration::from_secs(300),
                Duration::from_secs(1800),
                h(2),
                h(5),
                h(10),
                h(10),
            ],
            disable_after: h(5 * 24),
            concurrency: 32,
            per_endpoint_concurrency: 4,
            rotation_overlap: h(24),
        }
    }
}

/// Adaptive throttling (see `domain::Throttle`): a throttling reply halves a
/// connection's limits and pauses it; each quiet period gives a quarter back.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ThrottleSettings {
    /// How long a connection sends nothing new after a throttling reply.
    #[serde(with = "humantime_serde")]
    pub pause: Duration,
    /// After the pause, a quarter of the limits comes back per this long without
    /// another throttling reply.
    #[serde(with = "humantime_serde")]
    pub recover_every: Duration,
}

impl Default for ThrottleSettings {
    fn default() -> ThrottleSettings {
        ThrottleSettings {
            pause: Duration::from_secs(30),
            recover_every: Duration::from_secs(60),
        }
    }
}

/// Limits on what a send may contain.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// To + CC + Bcc of one message.
    pub max_recipients: usize,
    pub max_attachments: usize,
    /// Decoded size of one attachment, in bytes.
    pub max_attachment_bytes: usize,
    /// Size of the rendered message (headers, body, encoded attachments), in bytes.
    pub max_message_bytes: usize,
    /// Messages in one `POST /v1/messages/batch`.
    pub batch_max: usize,
}

/// Logging.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogSettings {
    /// `text` for people, `json` for log collectors.
    pub format: LogFormat,
    /// A `tracing` filter, e.g. `info` or `postwire=debug,sqlx=warn`; `RUST_LOG` wins.
    pub level: String,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

impl Settings {
    /// Loads the configuration from `dir` (or `POSTWIRE_CONFIG_DIR`, or `./config`), the
    /// environment's file and `POSTWIRE__*` variables. The environment is
    /// `POSTWIRE_ENV`, `production` when unset: a forgotten variable must fail closed
    /// (a master key required), never fall back to the public development key.
    pub fn load(dir: Option<&Path>) -> anyhow::Result<Settings> {
        let dir = dir
            .map(Path::to_path_buf)
            .or_else(|| std::env::var_os("POSTWIRE_CONFIG_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("config"));
        let env = std::env::var("POSTWIRE_ENV").unwrap_or_else(|_| "production".to_owned());
        Settings::load_env(Some(&dir), &env)
    }

    /// Loads the configuration of the environment `env` (the `POSTWIRE_ENV` that
    /// [`Settings::load`] would read) from `dir` (or `./config`), with `POSTWIRE__*`
    /// variables on top.
    pub fn load_env(dir: Option<&Path>, env: &str) -> anyhow::Result<Settings> {
        let dir = dir.map_or_else(|| PathBuf::from("config"), Path::to_path_buf);
        let env = env.to_owned();
        let builder = config::Config::builder()
            .add_source(config::File::from(dir.join("default.toml")).required(true))
            .add_source(config::File::from(dir.join(format!("{env}.toml"))).required(false))
            .add_source(
                config::Environment::with_prefix("POSTWIRE")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("amqp.urls")
                    .with_list_parse_key("webhooks.retry"),
            );
        let raw = builder
            .build()
            .with_context(|| format!("reading configuration from {}", dir.display()))?;
        let mut settings: Settings = raw.try_deserialize().context("invalid configuration")?;
        settings.environment = env;
        if let Some(conn) = settings.smtp.default.as_mut().filter(|c| c.name.is_empty()) {
            conn.name = "default".to_owned();
        }
        settings.check()?;
        settings.cipher()?;
        Ok(settings)
    }

    /// The cipher for secrets at rest. Outside `development` and `test` a master key
    /// is required: the process refuses to start without one.
    pub fn cipher(&self) -> anyhow::Result<crate::crypto::Cipher> {
        match &self.security.master_key {
            Some(key) if !key.expose_secret().trim().is_empty() => {
                let previous: Vec<String> = self
                    .security
                    .previous_master_keys
                    .iter()
                    .map(|k| k.expose_secret().to_owned())
                    .collect();
                crate::crypto::Cipher::new(key.expose_secret(), &previous)
            }
            _ if matches!(self.environment.as_str(), "development" | "test") => {
                tracing::warn!(
                    "security.master_key is not set: using the development key; SMTP passwords are NOT protected"
                );
                Ok(crate::crypto::Cipher::development())
            }
            _ => anyhow::bail!(
                "security.master_key is required when POSTWIRE_ENV={:?} (unset means production; only development and test run without one): set it to 32 random bytes in base64 (e.g. `openssl rand -base64 32`, or POSTWIRE__SECURITY__MASTER_KEY)",
                self.environment
            ),
        }
    }

    /// Checks what types alone cannot say.
    pub fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.worker.concurrency > 0,
            "worker.concurrency must be at least 1"
        );
        anyhow::ensure!(
            self.database.max_connections > 0,
            "database.max_connections must be at least 1"
        );
        anyhow::ensure!(
            self.limits.max_recipients > 0,
            "limits.max_recipients must be at least 1"
        );
        anyhow::ensure!(
            self.retry.max_attempts > 0,
            "retry.max_attempts must be at least 1"
        );
        anyhow::ensure!(self.retry.factor >= 1.0, "retry.factor must be at least 1");
        anyhow::ensure!(
            !self.retry.initial.is_zero() && self.retry.initial <= self.retry.max_delay,
            "retry.initial must be above zero and at most retry.max_delay"
        );
        anyhow::ensure!(
            self.server.max_body_bytes_in_flight >= self.server.body_limit_bytes,
            "server.max_body_bytes_in_flight must be at least server.body_limit_bytes, or the largest request could never be taken"
        );
        anyhow::ensure!(
            u32::try_from(self.server.body_limit_bytes).is_ok(),
            "server.body_limit_bytes must be under 4 GiB"
        );
        anyhow::ensure!(
            !self.amqp.timeout.is_zero() && !self.amqp.publish_timeout.is_zero(),
            "amqp.timeout and amqp.publish_timeout must be above zero"
        );
        anyhow::ensure!(
            self.amqp.heartbeat >= Duration::from_secs(1),
            "amqp.heartbeat must be at least 1s"
        );
        anyhow::ensure!(
            !self.reconcile.interval.is_zero() && self.reconcile.batch > 0,
            "reconcile.interval must be above zero and reconcile.batch at least 1"
        );
        anyhow::ensure!(
            self.server.max_connections > 0,
            "server.max_connections must be at least 1"
        );
        anyhow::ensure!(
            !self.server.header_read_timeout.is_zero() && !self.server.body_read_timeout.is_zero(),
            "server.header_read_timeout and server.body_read_timeout must be above zero"
        );
        anyhow::ensure!(
            self.worker.presumed_dead_after > self.worker.heartbeat_interval * 2,
            "worker.presumed_dead_after must be more than twice worker.heartbeat_interval"
        );
        if let Some(conn) = &self.smtp.default {
            conn.clone().parse().map_err(|errors| {
                anyhow::anyhow!("smtp.default: {}", FieldError::describe(&errors))
            })?;
        }
        Ok(())
    }
}

/// Query parameters that carry a secret (libpq's `password`, `sslpassword`, and the
/// usual others).
const SECRET_PARAMETERS: [&str; 6] = ["password", "sslpassword", "pass", "pwd", "secret", "token"];

/// A URL such as `postgres://user:secret@host/db?password=...` with every password
/// replaced by `redacted`; a URL that does not parse is not shown at all.
pub fn redact_url(raw: &str) -> String {
    let Ok(mut url) = url::Url::parse(raw) else {
        return "<unparseable URL>".to_owned();
    };
    if url.password().is_some() {
        // Only fails for URLs that cannot have credentials, which this one has.
        let _ = url.set_password(Some("redacted"));
    }
    let is_secret = |key: &str| {
        SECRET_PARAMETERS
            .iter()
            .any(|s| key.eq_ignore_ascii_case(s))
    };
    if url.query_pairs().any(|(key, _)| is_secret(&key)) {
        let pairs: Vec<(String, String)> = url
            .query_pairs()
            .map(|(key, value)| {
                let value = if is_secret(&key) {
                    "redacted".into()
                } else {
                    value
                };
                (key.into_owned(), value.into_owned())
            })
            .collect();
        url.query_pairs_mut().clear().extend_pairs(pairs);
    }
    url.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_url_hides_the_password_only() {
        assert_eq!(
            redact_url("amqp://guest:guest@127.0.0.1:5672/%2f"),
            "amqp://guest:redacted@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("postgres://localhost/db"),
            "postgres://localhost/db"
        );
        assert_eq!(
            redact_url("postgres://u@db.example/x?sslmode=require&Password=s3cret&password=x"),
            "postgres://u@db.example/x?sslmode=require&Password=redacted&password=redacted"
        );
        assert_eq!(redact_url("not a url hunter2"), "<unparseable URL>");
    }

    fn shipped(env: &str) -> anyhow::Result<Settings> {
        Settings::load_env(
            Some(&Path::new(env!("CARGO_MANIFEST_DIR")).join("config")),
            env,
        )
    }

    #[test]
    fn several_broker_addresses_make_quorum_queues_unless_told_otherwise() {
        let mut amqp = shipped("test").unwrap().amqp;
        assert_eq!(amqp.addresses(), vec![amqp.url.as_str()]);
        assert_eq!(amqp.queue_type(), QueueType::Classic);
        amqp.urls = vec!["amqp://a/%2f".into(), "amqp://b/%2f".into()];
        assert_eq!(amqp.addresses(), vec!["amqp://a/%2f", "amqp://b/%2f"]);
        assert_eq!(amqp.queue_type(), QueueType::Quorum);
        amqp.queue_type = Some(QueueType::Classic);
        assert_eq!(amqp.queue_type(), QueueType::Classic);
    }

    #[test]
    fn debug_output_never_shows_secrets() {
        let mut settings = shipped("test").unwrap();
        settings.security.master_key = Some("bWFzdGVyLWtleS1zZWNyZXQtdmFsdWUtMzJieXRlcyE=".into());
        settings.database.url = "postgres://u:db-secret@host/db".into();
        if let Some(c) = settings.smtp.default.as_mut() {
            c.password = Some("smtp-secret".into());
        }
        let printed = format!("{settings:?}");
        for secret in ["bWFzdGVyLWtleS1zZWNyZXQ", "db-secret", "smtp-secret"] {
            assert!(!printed.contains(secret), "{secret} leaked");
        }
    }

    #[test]
    fn without_an_environment_the_process_is_production_and_needs_a_master_key() {
        // Settings::load with POSTWIRE_ENV unset is load_env(.., "production"); the
        // variable itself is left alone here, tests run in parallel.
        let err = format!("{:#}", shipped("production").unwrap_err());
        assert!(err.contains("security.master_key is required"), "{err}");
        let err = format!("{:#}", shipped("staging").unwrap_err());
        assert!(err.contains("security.master_key is required"), "{err}");
        assert!(shipped("development").is_ok());
        assert!(shipped("test").is_ok());
    }

    #[test]
    fn outside_development_a_master_key_is_required() {
        let mut settings = shipped("test").unwrap();
        settings.environment = "production".to_owned();
        settings.security.master_key = None;
        let err = settings.cipher().unwrap_err().to_string();
        assert!(err.contains("security.master_key"), "{err}");
        settings.security.master_key = Some(crate::crypto::Cipher::generate_key().into());
        assert!(settings.cipher().is_ok());
    }

    #[test]
    fn the_shipped_default_configuration_loads() {
        let settings = shipped("test").expect("config/default.toml must load");
        assert_eq!(settings.amqp.queue_type(), QueueType::Classic);
    }
}
