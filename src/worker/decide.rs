//! What an attempt's result means for the message: its recorded outcome and what
//! happens to the job next.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};

use crate::config::RetrySettings;
use crate::domain::Status;
use crate::queue::Job;
use crate::smtp::Delivery;
use crate::store::{Claimed, Outcome};

/// What to do with the queue job after processing it.
#[derive(Debug)]
pub enum Next {
    /// Nothing more: acknowledge it.
    Done,
    /// Wait this long in a delay queue, then come back.
    Park(Job, Duration),
    /// It can never be processed: dead-letter it, fail the message.
    Dead(Job, String),
}

/// The retry schedule: exponential backoff with jitter (from `backon`), a cap on
/// attempts and on age.
#[derive(Debug, Clone)]
pub struct RetryPolicy {
    settings: RetrySettings,
}

impl RetryPolicy {
    pub fn new(settings: RetrySettings) -> RetryPolicy {
        RetryPolicy { settings }
    }

    /// The wait after failed attempt number `attempt` (1-based); `None` once the
    /// attempts are used up.
    pub fn delay_after(&self, attempt: u32) -> Option<Duration> {
        let s = &self.settings;
        if attempt >= s.max_attempts {
            return None;
        }
        let mut builder = ExponentialBuilder::default()
            .with_min_delay(s.initial)
            .with_factor(s.factor)
            .with_max_delay(s.max_delay)
            .without_max_times();
        if s.jitter {
            builder = builder.with_jitter();
        }
        let index = usize::try_from(attempt.saturating_sub(1)).unwrap_or(usize::MAX);
        builder.build().nth(index).map(|d| d.min(s.max_delay))
    }

    /// True when a message accepted at `created_at` is past `retry.max_age`.
    pub fn expired(&self, created_at: DateTime<Utc>) -> bool {
        Utc::now() - created_at
            > chrono::Duration::from_std(self.settings.max_age).unwrap_or(chrono::TimeDelta::MAX)
    }

    /// The outcome of a message found expired before an attempt.
    pub fn expire(&self) -> (Outcome, Next) {
        let outcome = Outcome {
            status: Status::Failed,
            event: "expired",
            reply: None,
            error: Some(format!(
                "expired: not sent within retry.max_age ({})",
                humantime::format_duration(self.settings.max_age)
            )),
            recipients: Vec::new(),
            next_attempt_at: None,
            attempted: false,
        };
        (outcome, Next::Done)
    }

    /// Turns a delivery result into the recorded outcome and the job's next step.
    pub fn decide(&self, claimed: &Claimed, delivery: Delivery) -> (Outcome, Next) {
        let attempt = u32::try_from(claimed.attempt).unwrap_or(u32::MAX);
        let outcome = |status: Status, reply, error, recipients| Outcome {
            status,
            event: status.as_str(),
            reply,
            error,
            recipients,
            next_attempt_at: None,
            attempted: true,
        };
        match delivery {
            Delivery::Sent { reply, recipients } => (
                outcome(Status::Sent, Some(reply), None, recipients),
                Next::Done,
            ),
            Delivery::Rejected {
                reply,
                error,
                recipients,
            } => (
                outcome(Status::Failed, reply, Some(error), recipients),
                Next::Done,
            ),
            Delivery::Deferred {
                reply,
                error,
                recipients,
            } => {
                let Some(wait) = self.delay_after(attempt) else {
                    let error = format!("gave up after {attempt} attempts; last error: {error}");
                    return (
                        outcome(Status::Failed, reply, Some(error), recipients),
                        Next::Done,
                    );
                };
                let next_at = Utc::now() + wait;
                if self.expired_at(claimed.created_at, next_at) {
                    let error = format!(
                        "expired: the next attempt would fall after retry.max_age; last error: {error}"
                    );
                    let mut failed = outcome(Status::Failed, reply, Some(error), recipients);
                    failed.event = "expired";
                    return (failed, Next::Done);
                }
                let mut deferred = outcome(Status::Deferred, reply, Some(error), recipients);
                deferred.next_attempt_at = Some(next_at);
                (
                    deferred,
                    Next::Park(Job::new(claimed.id).due_at(next_at), wait),
                )
            }
            Delivery::Paused {
                reply,
                error,
                resume_in,
            } => {
                let next_at = Utc::now() + resume_in;
                let deferred = Outcome {
                    status: Status::Deferred,
                    event: "deferred",
                    reply,
                    error: Some(error),
                    recipients: Vec::new(),
                    next_attempt_at: Some(next_at),
                    attempted: false,
                };
                (
                    deferred,
                    Next::Park(Job::new(claimed.id).due_at(next_at), resume_in),
                )
            }
        }
    }

    fn expired_at(&self, created_at: DateTime<Utc>, at: DateTime<Utc>) -> bool {
        at - created_at
            > chrono::Duration::from_std(self.settings.max_age).unwrap_or(chrono::TimeDelta::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(jitter: bool) -> RetryPolicy {
        RetryPolicy::new(RetrySettings {
            initial: Duration::from_secs(30),
            factor: 2.0,
            max_delay: Duration::from_secs(300),
            max_attempts: 6,
            max_age: Duration::from_secs(86400),
            jitter,
            auth_pause: Duration::from_secs(60),
        })
    }

    #[test]
    fn delays_grow_exponentially_up_to_the_cap_and_stop_at_max_attempts() {
        let p = policy(false);
        let delays: Vec<_> = (1..=6)
            .map(|a| p.delay_after(a).map(|d| d.as_secs()))
            .collect();
        assert_eq!(
            delays,
            [Some(30), Some(60), Some(120), Some(240), Some(300), None]
        );
    }

    #[test]
    fn jitter_stays_between_one_and_two_delays_and_under_the_cap() {
        let p = policy(true);
        for _ in 0..100 {
            let d = p.delay_after(2).unwrap().as_secs_f64();
            assert!((60.0..=120.0).contains(&d), "{d}");
            assert!(p.delay_after(5).unwrap() <= Duration::from_secs(300));
        }
    }
}
