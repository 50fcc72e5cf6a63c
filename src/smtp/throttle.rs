//! A worker's view of its connections' throttling state.
//!
//! A throttling reply steps the connection down in PostgreSQL at once (a rare event,
//! so a round trip is fine) and in this process; the other workers learn of it at
//! their next heartbeat, which reads every connection's state. Between the two, the
//! limits in effect come from `domain::Throttle` and the clock: no query per message.

use std::collections::HashMap;
use std::sync::RwLock;

use chrono::Utc;

use super::Delivery;
use crate::config::ThrottleSettings;
use crate::domain::{is_throttling, Limits, SmtpConnection, SmtpReply, Throttle};
use crate::store::Store;

pub(super) struct Throttles {
    settings: ThrottleSettings,
    /// Where the state is shared; `None` keeps it to this process.
    store: Option<Store>,
    known: RwLock<HashMap<String, Throttle>>,
}

impl Throttles {
    pub(super) fn new(settings: ThrottleSettings) -> Throttles {
        Throttles {
            settings,
            store: None,
            known: RwLock::new(HashMap::new()),
        }
    }

    /// The same, shared with every process using `store`.
    pub(super) fn shared(self, store: Store) -> Throttles {
        Throttles {
            store: Some(store),
            ..self
        }
    }

    /// The limits of `connection` in effect now.
    pub(super) fn limits(&self, connection: &SmtpConnection) -> Limits {
        let full = Limits::full(connection.max_connections, connection.max_rate_per_second);
        let Ok(known) = self.known.read() else {
            return full;
        };
        match known.get(&connection.name) {
            Some(throttle) => throttle.limits(
                connection.max_connections,
                connection.max_rate_per_second,
                Utc::now(),
                self.settings.recover_every,
            ),
            None => full,
        }
    }

    /// `Delivery::Throttled` while `connection` rests after a throttling reply.
    pub(super) fn hold(&self, connection: &SmtpConnection) -> Option<Delivery> {
        let until = self.limits(connection).paused_until?;
        let known = self.known.read().ok()?;
        let reply = known.get(&connection.name)?.last_reply.to_string();
        Some(Delivery::Throttled {
            error: format!(
                "connection {:?} paused until {} after its server's throttling reply: {reply}",
                connection.name,
                until.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            ),
            resume_in: (until - Utc::now()).to_std().unwrap_or_default(),
        })
    }

    /// The throttling reply in `delivery`, if any: the session's, or one recipient's.
    pub(super) fn reply_in(delivery: &Delivery) -> Option<&SmtpReply> {
        let (reply, recipients) = match delivery {
            Delivery::Sent { reply, recipients } => (Some(reply), recipients.as_slice()),
            Delivery::Deferred {
                reply, recipients, ..
            }
            | Delivery::Rejected {
                reply, recipients, ..
            } => (reply.as_ref(), recipients.as_slice()),
            Delivery::Paused { .. } | Delivery::Throttled { .. } | Delivery::Withheld { .. } => {
                return None
            }
        };
        reply
            .into_iter()
            .chain(recipients.iter().filter_map(|r| r.reply.as_ref()))
            .find(|r| is_throttling(r))
    }

    /// Steps `connection` down after a throttling `reply`: in PostgreSQL for every
    /// worker, and here. True when this reply started a new pause (rather than
    /// answering a session begun before the last one).
    pub(super) async fn throttled(&self, connection: &str, reply: &SmtpReply) -> bool {
        let now = Utc::now();
        let (pause, every) = (self.settings.pause, self.settings.recover_every);
        let step = |before: Option<Throttle>| {
            Throttle::stepped_down(before.as_ref(), reply.clone(), now, pause, every)
        };
        let before = self
            .known
            .read()
            .ok()
            .and_then(|k| k.get(connection).cloned());
        let after = match &self.store {
            Some(store) => match store.step_down_throttle(connection, step).await {
                Ok(after) => after,
                Err(e) => {
                    tracing::warn!(connection = %connection, error = %e, "could not record the throttle in PostgreSQL; slowing down this worker only");
                    step(before.clone())
                }
            },
            None => step(before.clone()),
        };
        crate::metrics::throttle_reply(connection);
        crate::metrics::connection_limits(connection, after.fraction, after.paused_until > now);
        let started = before.map(|b| b.paused_until) != Some(after.paused_until);
        if let Ok(mut known) = self.known.write() {
            known.insert(connection.to_owned(), after);
        }
        started
    }

    /// Reads the state every worker recorded (at a heartbeat); it replaces this
    /// process's view. Answers the connections that entered a pause this process did
    /// not know of.
    pub(super) async fn refresh(&self) -> Vec<String> {
        let Some(store) = &self.store else {
            return Vec::new();
        };
        let throttles = match store.throttles().await {
            Ok(throttles) => throttles,
            Err(e) => {
                tracing::warn!(error = %e, "could not read the connections' throttling state");
                return Vec::new();
            }
        };
        let now = Utc::now();
        let every = self.settings.recover_every;
        let current: HashMap<String, Throttle> = throttles
            .into_iter()
            .filter(|(_, t)| !t.recovered(now, every))
            .collect();
        let Ok(mut known) = self.known.write() else {
            return Vec::new();
        };
        let paused = current
            .iter()
            .filter(|(name, t)| {
                t.paused_until > now
                    && known.get(*name).map(|k| k.paused_until) != Some(t.paused_until)
            })
            .map(|(name, _)| name.clone())
            .collect();
        for (name, t) in &current {
            crate::metrics::connection_limits(
                name,
                t.fraction_at(now, every),
                now < t.paused_until,
            );
        }
        for name in known.keys().filter(|name| !current.contains_key(*name)) {
            crate::metrics::connection_limits(name, 1.0, false);
        }
        *known = current;
        paused
    }
}
