//! Percentiles and rates: the arithmetic of the report, kept pure so it can be tested.

use serde::Serialize;

/// Summary of a latency distribution, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Percentiles {
    /// Number of samples.
    pub count: usize,
    pub p50: f64,
    pub p95: f64,
    pub p99: f64,
    pub max: f64,
}

impl Percentiles {
    /// Summarises `samples` (any order; sorted in place). `None` when there are none.
    pub fn of(samples: &mut [f64]) -> Option<Percentiles> {
        samples.sort_by(f64::total_cmp);
        Some(Percentiles {
            count: samples.len(),
            p50: percentile(samples, 50.0)?,
            p95: percentile(samples, 95.0)?,
            p99: percentile(samples, 99.0)?,
            max: *samples.last()?,
        })
    }
}

/// The `p`th percentile (0–100) of ascending `sorted` samples by the nearest-rank
/// method: the smallest sample with at least `p`% of the samples at or below it.
/// `None` for no samples.
pub fn percentile(sorted: &[f64], p: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let p = p.clamp(0.0, 100.0);
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// Events per second; 0 when no time passed.
pub fn rate(count: u64, seconds: f64) -> f64 {
    if seconds > 0.0 {
        count as f64 / seconds
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&sorted, 50.0), Some(50.0));
        assert_eq!(percentile(&sorted, 95.0), Some(95.0));
        assert_eq!(percentile(&sorted, 99.0), Some(99.0));
        assert_eq!(percentile(&sorted, 100.0), Some(100.0));
        assert_eq!(percentile(&sorted, 0.0), Some(1.0));
        assert_eq!(percentile(&[7.0], 99.0), Some(7.0));
        assert_eq!(percentile(&[], 50.0), None);
        // Ten samples: p95 is the 10th (ceil(9.5)), p50 the 5th.
        let ten: Vec<f64> = (1..=10).map(f64::from).collect();
        assert_eq!(percentile(&ten, 95.0), Some(10.0));
        assert_eq!(percentile(&ten, 50.0), Some(5.0));
    }

    #[test]
    fn summary_sorts_its_input() {
        let mut samples = vec![5.0, 1.0, 4.0, 2.0, 3.0];
        let p = Percentiles::of(&mut samples).unwrap();
        assert_eq!(p.count, 5);
        assert_eq!((p.p50, p.p95, p.p99, p.max), (3.0, 5.0, 5.0, 5.0));
        assert!(Percentiles::of(&mut []).is_none());
    }

    #[test]
    fn rate_of_nothing_is_zero() {
        assert_eq!(rate(10, 0.0), 0.0);
        assert_eq!(rate(10, 2.0), 5.0);
    }
}
