//! The delivery job: what travels through RabbitMQ for one message.

use chrono::{DateTime, TimeZone, Utc};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::BasicProperties;
use uuid::Uuid;

const DUE_HEADER: &str = "x-postwire-due-ms";
const FAILURES_HEADER: &str = "x-postwire-failures";
const REASON_HEADER: &str = "x-postwire-dead-reason";
const TENANT_HEADER: &str = "x-postwire-tenant";

/// A delivery job. The body is the message id in text; the rest rides in headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Job {
    pub id: Uuid,
    /// Not to be attempted before this time (a retry parked in a delay queue).
    pub due: Option<DateTime<Utc>>,
    /// Times processing failed for reasons other than SMTP (database errors...), so
    /// that a message that can never be processed ends in the dead-letter queue.
    pub failures: u32,
    /// The message's tenant, for the worker's log lines before its claim says it. Not
    /// trusted for anything else: the claim reads the message from PostgreSQL.
    pub tenant: Option<String>,
    /// Further ids carried by the same job (webhook deliveries published together, so
    /// that a busy worker's webhooks cost the broker one message per batch, not one
    /// each). Mail jobs carry one id.
    pub more: Vec<Uuid>,
}

impl Job {
    pub fn new(id: Uuid) -> Job {
        Job {
            id,
            due: None,
            failures: 0,
            tenant: None,
            more: Vec::new(),
        }
    }

    /// One job for several ids (none: `None`).
    pub fn of_ids(ids: &[Uuid]) -> Option<Job> {
        let (first, more) = ids.split_first()?;
        Some(Job {
            more: more.to_vec(),
            ..Job::new(*first)
        })
    }

    /// Every id the job carries, the first first.
    pub fn ids(&self) -> impl Iterator<Item = Uuid> + '_ {
        std::iter::once(self.id).chain(self.more.iter().copied())
    }

    /// A fresh job for the same message (not due later, no failures counted).
    pub fn renewed(&self) -> Job {
        Job {
            tenant: self.tenant.clone(),
            ..Job::new(self.id)
        }
    }

    /// The same job, saying whose message it is.
    pub fn of_tenant(self, tenant: &str) -> Job {
        Job {
            tenant: Some(tenant.to_owned()),
            ..self
        }
    }

    /// The same job, due at `at`.
    pub fn due_at(self, at: DateTime<Utc>) -> Job {
        Job {
            due: Some(at),
            ..self
        }
    }

    /// The same job, due `wait` from now.
    pub fn due_in(self, wait: std::time::Duration) -> Job {
        let at = Utc::now() + chrono::Duration::from_std(wait).unwrap_or(chrono::TimeDelta::MAX);
        self.due_at(at)
    }

    /// Reads a job from a delivery; `Err` with the reason for poison.
    pub fn decode(body: &[u8], properties: &BasicProperties) -> Result<Job, String> {
        let text = std::str::from_utf8(body).map_err(|_| "the body is not UTF-8".to_owned())?;
        let mut ids = text.split_whitespace().map(Uuid::parse_str);
        let (Some(Ok(id)), more) = (ids.next(), ids.collect::<Result<Vec<Uuid>, _>>()) else {
            return Err(format!(
                "the body is not a message id: {:?}",
                truncate(text, 64)
            ));
        };
        let more =
            more.map_err(|_| format!("the body holds a non-id: {:?}", truncate(text, 64)))?;
        let header = |name: &str| {
            properties
                .headers()
                .as_ref()
                .and_then(|h| h.inner().get(name).cloned())
        };
        let due = match header(DUE_HEADER) {
            Some(AMQPValue::LongLongInt(ms)) => Utc.timestamp_millis_opt(ms).single(),
            _ => None,
        };
        let failures = match header(FAILURES_HEADER) {
            Some(AMQPValue::LongUInt(n)) => n,
            Some(AMQPValue::LongLongInt(n)) => u32::try_from(n).unwrap_or(u32::MAX),
            _ => 0,
        };
        let tenant = match header(TENANT_HEADER) {
            Some(AMQPValue::LongString(s)) => {
                Some(truncate(&String::from_utf8_lossy(s.as_bytes()), 64).to_owned())
            }
            _ => None,
        };
        Ok(Job {
            id,
            due,
            failures,
            tenant,
            more,
        })
    }

    /// The ids in text, one per line.
    pub fn body(&self) -> Vec<u8> {
        self.ids()
            .map(|id| id.to_string())
            .collect::<Vec<_>>()
            .join("\n")
            .into_bytes()
    }

    /// Persistent, with the job's headers.
    pub fn properties(&self, dead_reason: Option<&str>) -> BasicProperties {
        let mut headers = FieldTable::default();
        if let Some(due) = self.due {
            headers.insert(
                DUE_HEADER.into(),
                AMQPValue::LongLongInt(due.timestamp_millis()),
            );
        }
        if self.failures > 0 {
            headers.insert(FAILURES_HEADER.into(), AMQPValue::LongUInt(self.failures));
        }
        if let Some(tenant) = &self.tenant {
            headers.insert(
                TENANT_HEADER.into(),
                AMQPValue::LongString(tenant.as_str().into()),
            );
        }
        if let Some(reason) = dead_reason {
            headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
        }
        BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from("text/plain"))
            .with_message_id(ShortString::from(self.id.to_string()))
            .with_headers(headers)
    }
}

fn truncate(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jobs_round_trip_through_their_properties() {
        let job = Job {
            id: Uuid::now_v7(),
            due: Utc.timestamp_millis_opt(1_700_000_000_123).single(),
            failures: 2,
            tenant: Some("acme".to_owned()),
            more: Vec::new(),
        };
        let decoded = Job::decode(&job.body(), &job.properties(None)).unwrap();
        assert_eq!(decoded, job);
        assert!(Job::decode(b"garbage", &BasicProperties::default()).is_err());
        let ids = [Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7()];
        let batch = Job::of_ids(&ids).unwrap();
        let decoded = Job::decode(&batch.body(), &batch.properties(None)).unwrap();
        assert_eq!(decoded.ids().collect::<Vec<_>>(), ids);
        let bad = format!("{}\nnot-an-id", ids[0]);
        assert!(Job::decode(bad.as_bytes(), &BasicProperties::default()).is_err());
    }
}
