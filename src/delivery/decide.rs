//! What an attempt's result means for the message: its recorded outcome and what
//! happens to the job next.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use chrono::{DateTime, Utc};

use crate::config::RetrySettings;
use crate::domain::Status;
use crate::domain::{Claimed, Outcome};
use crate::queue::Job;
use crate::smtp::Delivery;

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

    /// When the message must have been sent by, and which limit that is: its
    /// `ExpiresAt`, or `retry.max_age` after it first became due (its `SendAt`, else
    /// its acceptance), whichever comes first.
    fn deadline(&self, claimed: &Claimed) -> (DateTime<Utc>, String) {
        let start = claimed.send_at.unwrap_or(claimed.created_at);
        let max_age = start
            + chrono::Duration::from_std(self.settings.max_age).unwrap_or(chrono::TimeDelta::MAX);
        match claimed.expires_at {
            Some(expires) if expires <= max_age => {
                (expires, format!("ExpiresAt ({})", expires.to_rfc3339()))
            }
            _ => (
                max_age,
                format!(
                    "retry.max_age ({})",
                    humantime::format_duration(self.settings.max_age)
                ),
            ),
        }
    }

    /// True when the claimed message is past its deadline (see [`Self::deadline`]).
    pub fn expired(&self, claimed: &Claimed) -> bool {
        Utc::now() > self.deadline(claimed).0
    }

    /// The outcome of a message found expired before an attempt.
    pub fn expire(&self, claimed: &Claimed) -> (Outcome, Next) {
        let (_, limit) = self.deadline(claimed);
        let outcome = Outcome {
            status: Status::Failed,
            event: "expired",
            reply: None,
            error: Some(format!("expired: not sent by {limit}")),
            recipients: Vec::new(),
            next_attempt_at: None,
            attempted: false,
        };
        (outcome, Next::Done)
    }

    /// The outcome of a message whose every recipient is suppressed: failed, with no
    /// SMTP session and no attempt spent.
    pub fn suppress(&self, claimed: &Claimed) -> (Outcome, Next) {
        let listed: Vec<String> = claimed
            .suppressed
            .iter()
            .map(|s| {
                format!(
                    "{} (since {}: {})",
                    s.address,
                    s.since.to_rfc3339(),
                    s.reason
                )
            })
            .collect();
        let outcome = Outcome {
            status: Status::Failed,
            event: "suppressed",
            reply: None,
            error: Some(format!(
                "suppressed: every recipient is on the suppression list: {}",
                listed.join("; ")
            )),
            recipients: claimed
                .suppressed
                .iter()
                .map(crate::domain::RecipientResult::suppressed)
                .collect(),
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
                let (deadline, limit) = self.deadline(claimed);
                if next_at > deadline {
                    let error = format!(
                        "expired: the next attempt would fall after {limit}; last error: {error}"
                    );
                    let mut failed = outcome(Status::Failed, reply, Some(error), recipients);
                    failed.event = "expired";
                    return (failed, Next::Done);
                }
                let mut deferred = outcome(Status::Deferred, reply, Some(error), recipients);
                deferred.next_attempt_at = Some(next_at);
                (
                    deferred,
                    Next::Park(
                        Job::new(claimed.id)
                            .of_tenant(&claimed.tenant)
                            .due_at(next_at),
                        wait,
                    ),
                )
            }
            Delivery::Paused {
                reply,
                error,
                resume_in,
            } => not_attempted(claimed, reply, error, resume_in),
            Delivery::Throttled { error, resume_in } => {
                not_attempted(claimed, None, error, resume_in)
            }
            Delivery::Withheld { error } => not_attempted(claimed, None, error, WITHHELD_WAIT),
        }
    }
}

/// How long a withheld message waits before it is tried again.
const WITHHELD_WAIT: Duration = Duration::from_secs(1);

/// Deferred without spending the attempt: nothing was sent.
fn not_attempted(
    claimed: &Claimed,
    reply: Option<crate::domain::SmtpReply>,
    error: String,
    wait: Duration,
) -> (Outcome, Next) {
    let next_at = Utc::now() + wait;
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
        Next::Park(
            Job::new(claimed.id)
                .of_tenant(&claimed.tenant)
                .due_at(next_at),
            wait,
        ),
    )
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
