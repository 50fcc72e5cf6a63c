//! The console's own AMQP connection, opened on first use and kept: queue depths for
//! the overview (work queue, every delay tier, dead letters) and the dead-letter
//! queue's jobs. Its own, so that browsing never holds up the publisher's channel.
//! Each operation takes a fresh channel and closes it: jobs it took and did not
//! settle go back to their queue.

use std::ops::ControlFlow;

use anyhow::Context;
use lapin::options::{BasicAckOptions, BasicGetOptions, QueueDeclareOptions};
use lapin::types::AMQPValue;
use lapin::{Channel, Connection};
use tokio::sync::Mutex;
use uuid::Uuid;

use crate::config::{AmqpSettings, Settings};
use crate::queue::Topology;

pub struct Broker {
    settings: AmqpSettings,
    topology: Topology,
    connection: Mutex<Option<Connection>>,
}

/// A queue and its ready messages.
pub struct Depth {
    pub label: String,
    pub queue: String,
    pub messages: u32,
}

/// A job in the dead-letter queue.
pub struct DeadJob {
    /// The message id the job carries, if its body is one.
    pub message_id: Option<Uuid>,
    /// The body as text (shown when it is not a message id).
    pub body: String,
    /// Why it was dead-lettered (the worker's header).
    pub reason: String,
    pub redelivered: bool,
}

/// The most jobs the dead-letter page shows, and looks through to find one.
pub const DEAD_LETTER_PAGE: usize = 200;

const REASON_HEADER: &str = "x-postwire-dead-reason";

impl Broker {
    pub fn new(settings: &Settings) -> Broker {
        Broker {
            settings: settings.amqp.clone(),
            topology: Topology::of(settings),
            connection: Mutex::new(None),
        }
    }

    async fn channel(&self) -> anyhow::Result<Channel> {
        let mut connection = self.connection.lock().await;
        if let Some(c) = connection.as_ref().filter(|c| c.status().connected()) {
            if let Ok(channel) = c.create_channel().await {
                return Ok(channel);
            }
        }
        let c = crate::queue::connect(&self.settings, "postwire-console").await?;
        let channel = c.create_channel().await.context("opening a channel")?;
        *connection = Some(c);
        Ok(channel)
    }

    /// Ready messages of the work queue, each delay tier, the dead-letter queue, and
    /// the webhook queue with its retry tiers.
    pub async fn depths(&self) -> anyhow::Result<Vec<Depth>> {
        crate::queue::within(&self.settings, "inspecting the queues", async {
            let channel = self.channel().await?;
            let mut queues = vec![("work".to_owned(), self.topology.deliver.clone())];
            for (delay, name) in &self.topology.tiers {
                queues.push((
                    format!("delay {}", humantime::format_duration(*delay)),
                    name.clone(),
                ));
            }
            queues.push(("dead letters".to_owned(), self.topology.dead.clone()));
            queues.push(("webhooks".to_owned(), self.topology.webhooks.clone()));
            for (delay, name) in &self.topology.webhook_tiers {
                queues.push((
                    format!("webhook retry {}", humantime::format_duration(*delay)),
                    name.clone(),
                ));
            }
            let mut depths = Vec::new();
            for (label, queue) in queues {
                let declared = channel
                    .queue_declare(
                        queue.as_str().into(),
                        QueueDeclareOptions {
                            passive: true,
                            ..Default::default()
                        },
                        Default::default(),
                    )
                    .await;
                // A tier nobody has used yet may not exist (its expiry removed it).
                let messages = declared.map(|d| d.message_count()).unwrap_or(0);
                depths.push(Depth {
                    label,
                    queue,
                    messages,
                });
                if !channel.status().connected() {
                    break;
                }
            }
            let _ = channel.close(200, "done".into()).await;
            Ok(depths)
        })
        .await
    }

    /// Takes the jobs of the dead-letter queue one by one, unsettled, and hands each
    /// to `visit`, until the queue is empty, `visit` breaks, or [`DEAD_LETTER_PAGE`]
    /// were taken. What is taken and not acknowledged goes back, in its place, when
    /// the channel closes.
    async fn browse_dead_letters(
        &self,
        channel: &Channel,
        mut visit: impl FnMut(lapin::message::Delivery) -> ControlFlow<()>,
    ) -> anyhow::Result<()> {
        for _ in 0..DEAD_LETTER_PAGE {
            let Some(got) = channel
                .basic_get(
                    self.topology.dead.as_str().into(),
                    BasicGetOptions { no_ack: false },
                )
                .await
                .context("reading the dead-letter queue")?
            else {
                break;
            };
            if visit(got.delivery).is_break() {
                break;
            }
        }
        Ok(())
    }

    /// The first jobs of the dead-letter queue, left in it.
    pub async fn dead_letters(&self) -> anyhow::Result<Vec<DeadJob>> {
        crate::queue::within(&self.settings, "reading the dead-letter queue", async {
            let channel = self.channel().await?;
            let mut jobs = Vec::new();
            let browsed = self
                .browse_dead_letters(&channel, |delivery| {
                    jobs.push(dead_job(&delivery));
                    ControlFlow::Continue(())
                })
                .await;
            // Closing the channel puts every job taken back, in its place.
            let _ = channel.close(200, "done".into()).await;
            browsed.map(|()| jobs)
        })
        .await
    }

    /// Takes the dead-letter job of message `id` out of the queue, after `settle`
    /// (which requeues or discards it) succeeded; `false` when no such job is among
    /// the first [`DEAD_LETTER_PAGE`].
    pub async fn take_dead_letter<F, Fut>(&self, id: Uuid, settle: F) -> anyhow::Result<bool>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<()>>,
    {
        // The broker's parts are bounded by amqp.timeout (a hung broker must not hang
        // the operator's request); `settle` bounds its own.
        let channel =
            crate::queue::within(&self.settings, "reading the dead-letter queue", async {
                self.channel().await
            })
            .await?;
        let mut found = None;
        let browsed =
            crate::queue::within(&self.settings, "reading the dead-letter queue", async {
                self.browse_dead_letters(&channel, |delivery| {
                    if dead_job(&delivery).message_id == Some(id) {
                        found = Some(delivery);
                        ControlFlow::Break(())
                    } else {
                        ControlFlow::Continue(())
                    }
                })
                .await
            })
            .await;
        let result = match browsed.map(|()| found) {
            Ok(Some(delivery)) => match settle().await {
                Ok(()) => {
                    crate::queue::within(
                        &self.settings,
                        "taking the job out of the dead-letter queue",
                        async {
                            delivery
                                .ack(BasicAckOptions::default())
                                .await
                                .map(|_| true)
                                .context("taking the job out of the dead-letter queue")
                        },
                    )
                    .await
                }
                Err(e) => Err(e),
            },
            Ok(None) => Ok(false),
            Err(e) => Err(e),
        };
        // Closing puts back every job browsed and not taken.
        let _ =
            tokio::time::timeout(self.settings.timeout, channel.close(200, "done".into())).await;
        result
    }
}

fn dead_job(delivery: &lapin::message::Delivery) -> DeadJob {
    let body = String::from_utf8_lossy(&delivery.data);
    let reason = match delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(REASON_HEADER).cloned())
    {
        Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
        _ => "(no reason recorded)".to_owned(),
    };
    DeadJob {
        message_id: Uuid::parse_str(body.trim()).ok(),
        body: body.chars().take(200).collect(),
        reason,
        redelivered: delivery.redelivered,
    }
}
