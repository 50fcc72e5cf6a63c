//! Whether this worker may still start DATA: its own view of its heartbeat.

use std::sync::Mutex;
use std::time::Duration;

use crate::config::WorkerSettings;

/// This worker's view of its own heartbeat. Other workers presume it dead once its
/// heartbeat is `presumed_dead_after` old; it stops starting DATA one heartbeat
/// interval before that, and a delivery that began before a gap in its heartbeat never
/// starts DATA at all, even when the heartbeat has resumed since: a successor may be
/// sending that message already.
pub(crate) struct Liveness {
    last_beat: Mutex<std::time::Instant>,
    /// Bumped by every heartbeat that follows a gap.
    epoch: std::sync::atomic::AtomicU64,
    limit: Duration,
}

impl Liveness {
    pub(crate) fn new(settings: &WorkerSettings) -> Liveness {
        let presumed = settings.presumed_dead_after;
        Liveness {
            last_beat: Mutex::new(std::time::Instant::now()),
            epoch: std::sync::atomic::AtomicU64::new(0),
            limit: presumed
                .saturating_sub(settings.heartbeat_interval)
                .max(presumed / 2),
        }
    }

    /// A heartbeat was recorded.
    pub(crate) fn beat(&self) {
        if let Ok(mut last) = self.last_beat.lock() {
            if last.elapsed() >= self.limit {
                self.epoch.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            }
            *last = std::time::Instant::now();
        }
    }

    /// Taken when a delivery starts.
    pub(crate) fn ticket(&self) -> u64 {
        self.epoch.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// True while no gap in the heartbeat happened since `ticket` was taken.
    pub(crate) fn unbroken_since(&self, ticket: u64) -> bool {
        let fresh = self
            .last_beat
            .lock()
            .is_ok_and(|last| last.elapsed() < self.limit);
        fresh && self.ticket() == ticket
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn liveness(limit_ms: u64) -> Liveness {
        Liveness {
            last_beat: Mutex::new(std::time::Instant::now()),
            epoch: std::sync::atomic::AtomicU64::new(0),
            limit: Duration::from_millis(limit_ms),
        }
    }

    #[test]
    fn data_starts_only_while_the_heartbeat_has_been_unbroken_since_the_claim() {
        let l = liveness(40);
        let ticket = l.ticket();
        assert!(l.unbroken_since(ticket));
        // The heartbeat goes quiet past the limit: no DATA.
        std::thread::sleep(Duration::from_millis(60));
        assert!(!l.unbroken_since(ticket));
        // It resumes: a delivery claimed before the gap still may not start DATA (a
        // successor may have it), one claimed after may.
        l.beat();
        assert!(!l.unbroken_since(ticket));
        assert!(l.unbroken_since(l.ticket()));
    }

    #[test]
    fn regular_heartbeats_keep_the_same_epoch() {
        let l = liveness(1000);
        let ticket = l.ticket();
        for _ in 0..3 {
            l.beat();
        }
        assert!(l.unbroken_since(ticket));
    }
}
