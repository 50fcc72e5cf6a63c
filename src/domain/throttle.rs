//! Adaptive throttling: a connection whose server says "too many" or "too fast" slows
//! down, rests, and recovers step by step.
//!
//! The rule is additive increase, multiplicative decrease, on one number per
//! connection: the fraction of its configured `max_connections` and
//! `max_rate_per_second` it may use.
//!
//! - A throttling reply halves the fraction (down to 1/8) and pauses the connection
//!   for `smtp.throttle.pause`: nothing new is sent through it until then.
//! - Further throttling replies during the pause only count: they answer sessions that
//!   were already under way at the old pace.
//! - After the pause the connection sends at the reduced fraction, and every
//!   `smtp.throttle.recover_every` without another throttling reply adds a quarter of
//!   the limits back, until they are whole again.
//!
//! The state is a pure function of the last step down and the clock, so every process
//! (each worker, and the API answering `GET /v1/connections/{name}`) computes the same
//! limits from the same stored row without anyone writing recovery steps.

use std::time::Duration;

use chrono::{DateTime, Utc};

use super::SmtpReply;

/// What a throttling reply multiplies the fraction by.
const STEP_DOWN: f64 = 0.5;
/// What each quiet `recover_every` adds back.
const STEP_UP: f64 = 0.25;
/// The least fraction: a connection is slowed, never stopped for good.
const FLOOR: f64 = 0.125;

/// Whether a reply asks the client to slow down (rather than refusing this message):
///
/// - `421`/`432` with `4.3.2` (system not accepting messages now: too many sessions;
///   Office 365 answers the session over its limit so);
/// - `450 4.2.1` (Gmail: "receiving mail at a rate that prevents additional messages");
/// - `421`, `450`, `451` or `452` with a `4.7.x` code, or `421` without one, whose
///   text says "too many", "rate", "throttle" or "slow down" (Postfix's "too many
///   connections", Exim's "too many concurrent SMTP connections", Gmail's `4.7.28`
///   "unusual rate").
pub fn is_throttling(reply: &SmtpReply) -> bool {
    let enhanced = reply.enhanced.as_deref().unwrap_or("");
    match (reply.code, enhanced) {
        (421 | 432, "4.3.2") | (450, "4.2.1") => true,
        (421 | 450 | 451 | 452, e) if e.starts_with("4.7.") => says_slow_down(&reply.text),
        (421, "") => says_slow_down(&reply.text),
        _ => false,
    }
}

fn says_slow_down(text: &str) -> bool {
    let text = text.to_ascii_lowercase();
    if text.contains("too many") || text.contains("slow down") {
        return true;
    }
    // Whole words only: "rate" and "rate-limited", not "generated" or "separate".
    text.split(|c: char| !c.is_ascii_alphanumeric())
        .any(|word| word.starts_with("rate") || word.starts_with("throttl"))
}

/// A connection's throttling state, as stored after its last throttling reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Throttle {
    /// The fraction of the limits set by the last step down, in effect from
    /// `paused_until`.
    pub fraction: f64,
    /// Nothing new is sent through the connection before this.
    pub paused_until: DateTime<Utc>,
    /// The last throttling reply, and when it came.
    pub last_reply: SmtpReply,
    pub last_at: DateTime<Utc>,
    /// Throttling replies seen since the connection was last at full limits.
    pub replies: i64,
}

/// A connection's limits now, after throttling.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Limits {
    /// The fraction of the configured limits in effect (1 when not throttled).
    pub fraction: f64,
    pub max_connections: u16,
    pub max_rate_per_second: Option<f64>,
    /// Set while the connection rests after a throttling reply.
    pub paused_until: Option<DateTime<Utc>>,
}

impl Limits {
    /// The configured limits, whole.
    pub fn full(max_connections: u16, max_rate_per_second: Option<u32>) -> Limits {
        Limits {
            fraction: 1.0,
            max_connections: max_connections.max(1),
            max_rate_per_second: max_rate_per_second.map(f64::from),
            paused_until: None,
        }
    }
}

impl Throttle {
    /// The state after a throttling `reply` at `now`, given the state before (if any).
    pub fn stepped_down(
        before: Option<&Throttle>,
        reply: SmtpReply,
        now: DateTime<Utc>,
        pause: Duration,
        recover_every: Duration,
    ) -> Throttle {
        let until = chrono::Duration::from_std(pause)
            .ok()
            .and_then(|p| now.checked_add_signed(p))
            .unwrap_or(DateTime::<Utc>::MAX_UTC);
        match before {
            // Still resting: this reply answers a session begun at the old pace.
            Some(b) if now < b.paused_until => Throttle {
                last_reply: reply,
                last_at: now,
                replies: b.replies + 1,
                ..b.clone()
            },
            _ => {
                let current = before.map_or(1.0, |b| b.fraction_at(now, recover_every));
                let replies = before.filter(|_| current < 1.0).map_or(0, |b| b.replies);
                Throttle {
                    fraction: (current * STEP_DOWN).max(FLOOR),
                    paused_until: until,
                    last_reply: reply,
                    last_at: now,
                    replies: replies + 1,
                }
            }
        }
    }

    /// The fraction of the limits in effect at `now`: the stepped-down one from the
    /// end of the pause, a quarter more after each quiet `recover_every`.
    pub fn fraction_at(&self, now: DateTime<Utc>, recover_every: Duration) -> f64 {
        let Ok(quiet) = (now - self.paused_until).to_std() else {
            return self.fraction;
        };
        let steps = if recover_every.is_zero() {
            f64::INFINITY
        } else {
            (quiet.as_secs_f64() / recover_every.as_secs_f64()).floor()
        };
        (self.fraction + STEP_UP * steps).min(1.0)
    }

    /// Whether the limits are whole again at `now` (the state is history).
    pub fn recovered(&self, now: DateTime<Utc>, recover_every: Duration) -> bool {
        now >= self.paused_until && self.fraction_at(now, recover_every) >= 1.0
    }

    /// The configured limits scaled by the fraction in effect at `now`: at least one
    /// session, and the rate never below the floor's share.
    pub fn limits(
        &self,
        max_connections: u16,
        max_rate_per_second: Option<u32>,
        now: DateTime<Utc>,
        recover_every: Duration,
    ) -> Limits {
        let fraction = self.fraction_at(now, recover_every);
        let sessions = (f64::from(max_connections.max(1)) * fraction).floor();
        Limits {
            fraction,
            // In 1..=max_connections by construction.
            max_connections: (sessions as u16).max(1),
            max_rate_per_second: max_rate_per_second.map(|r| f64::from(r) * fraction),
            paused_until: (now < self.paused_until).then_some(self.paused_until),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(code: u16, line: &str) -> SmtpReply {
        SmtpReply::new(code, &[line])
    }

    #[test]
    fn throttling_replies_are_told_from_other_transient_ones() {
        let throttling = [
            (421, "4.3.2 Service not available, too many connections"),
            (432, "4.3.2 Concurrent connections limit exceeded"),
            (
                450,
                "4.2.1 The user you are trying to contact is receiving mail at a rate",
            ),
            (451, "4.7.1 Rate limit exceeded, try again later"),
            (421, "4.7.0 Error: too many connections from 192.0.2.1"),
            (
                421,
                "4.7.28 Our system has detected an unusual rate of mail",
            ),
            (452, "4.7.0 Throttled: slow down"),
            (
                421,
                "Too many concurrent SMTP connections; please try again later",
            ),
        ];
        for (code, line) in throttling {
            assert!(is_throttling(&reply(code, line)), "{code} {line}");
        }
        let other = [
            (421, "4.4.2 Connection timed out"),
            (451, "4.3.0 Temporary local problem"),
            (450, "4.2.0 Mailbox busy"),
            (451, "4.7.1 Greylisted, see separate documentation"),
            (451, "4.7.1 Message generated an error"),
            (550, "5.7.1 Too many recipients"),
            (554, "5.3.2 Too many connections"),
            (454, "4.7.0 TLS not available"),
        ];
        for (code, line) in other {
            assert!(!is_throttling(&reply(code, line)), "{code} {line}");
        }
    }

    #[test]
    fn a_throttle_halves_the_limits_pauses_and_recovers_a_quarter_per_quiet_period() {
        let t0 = Utc::now();
        let pause = Duration::from_secs(10);
        let every = Duration::from_secs(60);
        let s = chrono::Duration::seconds;
        let first = Throttle::stepped_down(None, reply(421, "4.3.2 busy"), t0, pause, every);
        assert_eq!(first.fraction, 0.5);
        let during = first.limits(4, Some(40), t0 + s(5), every);
        assert_eq!(during.paused_until, Some(t0 + s(10)));
        assert_eq!(during.max_connections, 2);
        assert_eq!(during.max_rate_per_second, Some(20.0));
        let resumed = first.limits(4, Some(40), t0 + s(10), every);
        assert_eq!((resumed.paused_until, resumed.fraction), (None, 0.5));
        assert_eq!(first.limits(4, Some(40), t0 + s(70), every).fraction, 0.75);
        assert_eq!(first.limits(4, Some(40), t0 + s(129), every).fraction, 0.75);
        let whole = first.limits(4, Some(40), t0 + s(130), every);
        assert_eq!(whole, Limits::full(4, Some(40)));
        assert!(first.recovered(t0 + s(130), every));
        assert!(!first.recovered(t0 + s(129), every));
    }

    #[test]
    fn replies_during_the_pause_count_but_do_not_step_down_again() {
        let t0 = Utc::now();
        let (pause, every) = (Duration::from_secs(10), Duration::from_secs(60));
        let s = chrono::Duration::seconds;
        let mut t = Throttle::stepped_down(None, reply(421, "4.3.2 a"), t0, pause, every);
        for i in 1..5 {
            t = Throttle::stepped_down(Some(&t), reply(421, "4.3.2 b"), t0 + s(i), pause, every);
        }
        assert_eq!((t.fraction, t.replies), (0.5, 5));
        assert_eq!(t.paused_until, t0 + s(10));
        assert_eq!(t.last_reply.text, "b");
        // After the pause, another one halves what is in effect then.
        let later = t0 + s(75);
        let t = Throttle::stepped_down(Some(&t), reply(421, "4.3.2 c"), later, pause, every);
        assert_eq!(t.fraction, 0.375);
        assert_eq!(t.paused_until, later + s(10));
        // Down to the floor and no further; one session always remains.
        let mut t = t;
        for i in 1..10 {
            let at = later + s(i * 11);
            t = Throttle::stepped_down(Some(&t), reply(421, "4.3.2 d"), at, pause, every);
        }
        assert_eq!(t.fraction, FLOOR);
        assert_eq!(t.limits(2, None, t.paused_until, every).max_connections, 1);
    }

    #[test]
    fn a_throttle_after_full_recovery_starts_counting_afresh() {
        let t0 = Utc::now();
        let (pause, every) = (Duration::from_secs(1), Duration::from_secs(1));
        let t = Throttle::stepped_down(None, reply(421, "4.3.2 a"), t0, pause, every);
        let much_later = t0 + chrono::Duration::seconds(60);
        let t = Throttle::stepped_down(Some(&t), reply(421, "4.3.2 b"), much_later, pause, every);
        assert_eq!((t.fraction, t.replies), (0.5, 1));
    }
}
