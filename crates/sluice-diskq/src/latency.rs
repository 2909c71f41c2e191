//! How long appends wait to become durable: histograms the writer thread fills as syncs (or,
//! under [`crate::SyncPolicy::Never`], writes) make entries durable. Two are kept:
//!
//! - **per sync** (`DiskQueue::sync_latency`): one sample per sync, the time from when the
//!   oldest entry it covered was appended (the moment its group-commit chunk was opened) to
//!   when `wait_durable` callers were released: the longest any of its entries waited, however
//!   many it covered;
//! - **per entry** (`DiskQueue::entry_wait`): one sample per entry, the time from its chunk's
//!   opening to the same release: the durable ack's wait as producers see it, weighted by the
//!   entries each sync made durable. An entry appended to a chunk that an earlier append
//!   opened is counted from that earlier append (chunks live for one writer round at most), so
//!   this too is an upper bound, a close one.
//!
//! Buckets are log-linear in microseconds: four per power of two, so a quantile is exact to
//! within 25 % (it reports the bucket's upper bound), from 1 µs up; samples beyond 2^35 µs
//! (about 9.5 hours) land in the last bucket. Recording is two relaxed atomic adds; reading copies the
//! counts, so a snapshot taken while syncs complete may be off by those syncs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Sub-buckets per power of two.
const SUBS: usize = 4;
/// Powers of two covered: 1 µs up to 2^34 µs.
const OCTAVES: usize = 34;
/// Number of buckets.
pub const BUCKETS: usize = OCTAVES * SUBS;

/// The live histogram, shared by the writer (recording) and `stats` callers (reading).
#[derive(Debug)]
pub(crate) struct SyncLatency {
    counts: [AtomicU64; BUCKETS],
    sum_micros: AtomicU64,
}

impl Default for SyncLatency {
    fn default() -> Self {
        SyncLatency {
            counts: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl SyncLatency {
    pub fn record(&self, waited: Duration) {
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(micros)].fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(micros, Ordering::Relaxed);
    }

    /// Records `n` samples of `waited`.
    pub fn record_n(&self, waited: Duration, n: u64) {
        let micros = u64::try_from(waited.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket_of(micros)].fetch_add(n, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(micros.saturating_mul(n), Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> LatencyHistogram {
        LatencyHistogram {
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_micros: self.sum_micros.load(Ordering::Relaxed),
        }
    }
}

/// The index of the bucket holding `micros`.
fn bucket_of(micros: u64) -> usize {
    if micros < SUBS as u64 {
        // 0..4 µs: one bucket per microsecond (0 and 1 share the first).
        return micros.saturating_sub(1) as usize;
    }
    let octave = 63 - micros.leading_zeros() as usize; // ≥ 2
    let sub = ((micros >> (octave - 2)) & 3) as usize;
    (octave * SUBS + sub - SUBS * 2 + SUBS - 1).min(BUCKETS - 1)
}

/// The largest value (µs) bucket `index` holds.
fn upper_bound_micros(index: usize) -> u64 {
    if index < SUBS - 1 {
        return index as u64 + 1;
    }
    // Inverse of `bucket_of`: index = octave*4 + sub - 5.
    let i = index + SUBS + 1;
    let (octave, sub) = (i / SUBS, i % SUBS);
    ((SUBS + sub + 1) as u64 * (1u64 << (octave - 2))) - 1
}

/// A copy of the queue's sync latency counts at one moment; see the module documentation for
/// what it counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LatencyHistogram {
    counts: Vec<u64>,
    sum_micros: u64,
}

impl Default for LatencyHistogram {
    fn default() -> Self {
        LatencyHistogram {
            counts: vec![0; BUCKETS],
            sum_micros: 0,
        }
    }
}

impl LatencyHistogram {
    /// Samples recorded.
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The sum of all samples.
    pub fn sum(&self) -> Duration {
        Duration::from_micros(self.sum_micros)
    }

    /// The value at quantile `q` (0.0 ..= 1.0), as its bucket's upper bound; `None` if empty.
    pub fn quantile(&self, q: f64) -> Option<Duration> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        // The rank of the sample wanted, 1-based: at least the first, at most the last.
        let rank = ((q.clamp(0.0, 1.0) * total as f64).ceil() as u64).clamp(1, total);
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            if seen >= rank {
                return Some(Duration::from_micros(upper_bound_micros(index)));
            }
        }
        None
    }

    /// Cumulative counts at each power of two of microseconds within `bounds`: `(le, count of
    /// samples below le)`, the shape of a Prometheus histogram's buckets (the `+Inf` one is
    /// [`LatencyHistogram::count`]).
    pub fn cumulative(&self, bounds: std::ops::RangeInclusive<Duration>) -> Vec<(Duration, u64)> {
        let mut out = Vec::new();
        let mut seen = 0;
        for (index, count) in self.counts.iter().enumerate() {
            seen += count;
            let bound = upper_bound_micros(index) + 1;
            if bound.is_power_of_two() && bounds.contains(&Duration::from_micros(bound)) {
                out.push((Duration::from_micros(bound), seen));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_contiguous_and_within_a_quarter() {
        let mut previous = 0;
        for index in 0..BUCKETS - 1 {
            let upper = upper_bound_micros(index);
            assert!(upper > previous, "bucket {index}");
            assert_eq!(bucket_of(upper), index, "upper bound of {index}");
            assert_eq!(bucket_of(upper + 1), index + 1, "after bucket {index}");
            // The next bucket's values are at most 25 % above this one's upper bound.
            let next_upper = upper_bound_micros(index + 1);
            assert!(next_upper as f64 <= (upper + 1) as f64 * 1.25 + 1.0);
            previous = upper;
        }
        assert_eq!(bucket_of(0), 0);
        assert_eq!(bucket_of(u64::MAX), BUCKETS - 1);
    }

    #[test]
    fn quantiles_report_the_bucket_upper_bound() {
        let live = SyncLatency::default();
        assert_eq!(live.snapshot().quantile(0.5), None);
        for _ in 0..98 {
            live.record(Duration::from_micros(300));
        }
        live.record(Duration::from_millis(3));
        live.record(Duration::from_secs(1));
        let h = live.snapshot();
        assert_eq!(h.count(), 100);
        let p50 = h.quantile(0.5).unwrap_or_default();
        assert!(p50 >= Duration::from_micros(300) && p50 < Duration::from_micros(375));
        let p99 = h.quantile(0.99).unwrap_or_default();
        assert!(p99 >= Duration::from_millis(3) && p99 < Duration::from_micros(3750));
        let max = h.quantile(1.0).unwrap_or_default();
        assert!(max >= Duration::from_secs(1) && max < Duration::from_millis(1250));
        assert_eq!(h.sum(), Duration::from_micros(98 * 300 + 3000 + 1_000_000));
    }

    #[test]
    fn a_weighted_sample_counts_as_that_many() {
        let live = SyncLatency::default();
        live.record_n(Duration::from_micros(100), 9);
        live.record(Duration::from_micros(3000));
        let h = live.snapshot();
        assert_eq!(h.count(), 10);
        assert_eq!(h.sum(), Duration::from_micros(9 * 100 + 3000));
        // Nine in ten samples are the short ones.
        assert!(h.quantile(0.9) <= Some(Duration::from_micros(128)));
        assert!(h.quantile(1.0) >= Some(Duration::from_micros(3000)));
    }

    #[test]
    fn cumulative_counts_rise_to_the_total_at_powers_of_two() {
        let live = SyncLatency::default();
        live.record(Duration::from_micros(100));
        live.record(Duration::from_micros(1000));
        live.record(Duration::from_micros(1025));
        let h = live.snapshot();
        let c = h.cumulative(Duration::from_micros(64)..=Duration::from_secs(1));
        assert_eq!(c.first(), Some(&(Duration::from_micros(64), 0)));
        assert_eq!(c.last(), Some(&(Duration::from_micros(1 << 19), 3)));
        assert!(c.contains(&(Duration::from_micros(128), 1)));
        assert!(c.contains(&(Duration::from_micros(1024), 2)));
        assert!(c.contains(&(Duration::from_micros(2048), 3)));
        assert!(c.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }
}
