//! Wiring: builds the API and/or the worker from the configuration and runs them until
//! a shutdown signal.

use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::api::{self, AppState};
use crate::config::Settings;
use crate::connections::Directory;
use crate::queue::{Publisher, Topology};
use crate::smtp::Mailer;
use crate::store::Store;
use crate::worker::Worker;

/// Which parts a process runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Role {
    /// The HTTP API only.
    Api,
    /// The delivery worker only.
    Worker,
    /// Both in one process.
    All,
}

impl Role {
    fn runs_api(self) -> bool {
        matches!(self, Role::Api | Role::All)
    }

    fn runs_worker(self) -> bool {
        matches!(self, Role::Worker | Role::All)
    }
}

/// A built, not yet running, postwire process.
pub struct Application {
    api: Option<(TcpListener, axum::Router, Arc<Publisher>, Store)>,
    worker: Option<Arc<Worker>>,
    store: Store,
    settings: Arc<Settings>,
}

impl Application {
    /// Connects what the role needs, applies migrations if configured, and binds the
    /// HTTP listener (port 0 picks a free one).
    pub async fn build(settings: Settings, role: Role) -> anyhow::Result<Application> {
        let settings = Arc::new(settings);
        crate::metrics::install();
        // Read at start-up by every role, so that a missing file stops the process
        // here rather than at the first TLS session or verify.
        crate::smtp::tls::extra_roots(&settings.smtp.extra_root_certificates)
            .map_err(anyhow::Error::msg)
            .context("smtp.extra_root_certificates")?;
        let store = Store::connect_lazy(&settings.database)?;
        let connections = Arc::new(Directory::new(
            store.clone(),
            settings.cipher()?,
            settings.smtp.default.as_ref(),
        )?);
        if settings.database.migrate_on_start {
            store.migrate().await?;
        }

        let api = if role.runs_api() {
            let address = format!("{}:{}", settings.server.host, settings.server.port);
            let listener = TcpListener::bind(&address).await.with_context(|| {
                format!("binding the HTTP listener to {address} (server.host, server.port)")
            })?;
            let publisher = Arc::new(Publisher::new(
                settings.amqp.clone(),
                Topology::of(&settings),
                "postwire-api",
            ));
            let state = AppState::new(
                store.clone(),
                publisher.clone(),
                connections.clone(),
                settings.clone(),
            );
            Some((listener, api::router(state), publisher, store.clone()))
        } else {
            None
        };

        let worker = if role.runs_worker() {
            Some(Arc::new(Worker::new(
                store.clone(),
                connections.clone(),
                Mailer::new(settings.smtp.clone(), settings.retry.auth_pause)?,
                settings.amqp.clone(),
                settings.worker.clone(),
                settings.retry.clone(),
                Topology::of(&settings),
            )))
        } else {
            None
        };
        Ok(Application {
            api,
            worker,
            store,
            settings,
        })
    }

    /// The port the API listens on, if this process runs the API.
    pub fn port(&self) -> Option<u16> {
        self.api
            .as_ref()
            .and_then(|(listener, ..)| listener.local_addr().ok())
            .map(|a| a.port())
    }

    /// Runs until `shutdown` is cancelled, then drains: the API stops accepting and
    /// finishes in-flight requests, the worker finishes or hands back its deliveries.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let api_port = self.port();
        let mut tasks = tokio::task::JoinSet::new();
        tasks.spawn(crate::retention::run(
            self.store.clone(),
            self.settings.retention.clone(),
            shutdown.clone(),
        ));
        // The reconciler runs in every process; one at a time holds a pass.
        let reconciler_publisher = match &self.api {
            Some((_, _, publisher, _)) => publisher.clone(),
            None => Arc::new(Publisher::new(
                self.settings.amqp.clone(),
                Topology::of(&self.settings),
                "postwire-reconciler",
            )),
        };
        tasks.spawn(crate::reconcile::run(
            self.store.clone(),
            reconciler_publisher,
            self.settings.reconcile.clone(),
            self.settings.worker.presumed_dead_after,
            shutdown.clone(),
        ));
        if let Some((listener, router, publisher, store)) = self.api {
            tasks.spawn(crate::accept::outbox::run(
                store,
                publisher.clone(),
                self.settings.outbox.clone(),
                shutdown.clone(),
            ));
            let server = self.settings.server.clone();
            let token = shutdown.clone();
            tracing::info!(address = %listener.local_addr()?, "API listening");
            tasks.spawn(async move {
                api::server::serve(listener, router, &server, token).await;
                publisher.close().await;
                Ok(())
            });
        }
        if let Some(worker) = self.worker {
            tasks.spawn(worker.run(shutdown.clone()));
            // Webhooks go out from the worker processes, which share their queue.
            let dispatcher = crate::webhooks::Dispatcher::new(
                self.store.clone(),
                Arc::new(self.settings.cipher()?),
                self.settings.webhooks.clone(),
                self.settings.amqp.clone(),
                Topology::of(&self.settings),
                |message| {
                    serde_json::value::to_raw_value(&api::messages::MessageView::from(message))
                },
            )?;
            tasks.spawn(Arc::new(dispatcher).run(shutdown.clone()));
            if let (None, Some(address)) = (api_port, &self.settings.worker.metrics_listen) {
                let listener = TcpListener::bind(address)
                    .await
                    .with_context(|| format!("binding worker.metrics_listen {address}"))?;
                tracing::info!(address = %address, "worker metrics listening");
                let token = shutdown.clone();
                tasks.spawn(async move {
                    axum::serve(listener, api::operations_router())
                        .with_graceful_shutdown(async move { token.cancelled().await })
                        .await
                        .context("worker metrics server")
                });
            }
        }
        let mut outcome = Ok(());
        while let Some(joined) = tasks.join_next().await {
            let result = joined.context("a postwire task panicked").and_then(|r| r);
            if let Err(e) = result {
                tracing::error!(error = format!("{e:#}"), "stopping");
                // One part failing stops the others: a half-running process misleads.
                shutdown.cancel();
                outcome = Err(e);
            }
        }
        outcome
    }
}

/// Makes glibc's allocator give large buffers back to the system as soon as they are
/// freed. glibc serves allocations over its mmap threshold with mmap, but after the
/// first such buffer is freed it raises the threshold (up to 32 MiB), and from then on
/// request bodies and rendered messages of tens of megabytes come from the heap and
/// stay resident after use: a few large sends left the API at twice the memory its
/// in-flight budget allows. A fixed threshold of 1 MiB keeps those buffers mmapped
/// (measured: peak RSS 594 → 240 MiB for fifty concurrent 20 MB sends, BENCHMARKS.md);
/// the small allocations of ordinary requests are not affected.
pub fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes a tuning parameter of the allocator; it is called
    // once, before the runtime starts any thread.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}

/// A token cancelled by SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => {}
            () = term => {}
        }
        tracing::info!("shutdown signal received; draining");
        cancel.cancel();
    });
    token
}
