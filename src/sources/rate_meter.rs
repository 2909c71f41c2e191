//! A cheap estimate of events per second over the last second, for decisions such as
//! `passthrough_below_rate`. Two one-second buckets; the estimate weights the previous bucket by
//! how much of it is still inside the sliding second. Races between concurrent callers can lose
//! a tick at a bucket boundary: an estimate, not a ledger.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

pub struct RateMeter {
    origin: Instant,
    /// Index (seconds since `origin`) of the current bucket.
    bucket: AtomicU64,
    current: AtomicU64,
    previous: AtomicU64,
}

impl Default for RateMeter {
    fn default() -> Self {
        Self {
            origin: Instant::now(),
            bucket: AtomicU64::new(0),
            current: AtomicU64::new(0),
            previous: AtomicU64::new(0),
        }
    }
}

impl RateMeter {
    fn rotate(&self, now_bucket: u64) {
        let bucket = self.bucket.load(Ordering::Relaxed);
        if now_bucket != bucket
            && self
                .bucket
                .compare_exchange(bucket, now_bucket, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let last = self.current.swap(0, Ordering::Relaxed);
            self.previous.store(
                if now_bucket == bucket + 1 { last } else { 0 },
                Ordering::Relaxed,
            );
        }
    }

    pub fn tick(&self) {
        self.rotate(self.origin.elapsed().as_secs());
        self.current.fetch_add(1, Ordering::Relaxed);
    }

    /// Events in the last second.
    pub fn rate(&self) -> f64 {
        let elapsed = self.origin.elapsed();
        self.rotate(elapsed.as_secs());
        let into_bucket = elapsed.as_secs_f64().fract();
        self.previous.load(Ordering::Relaxed) as f64 * (1.0 - into_bucket)
            + self.current.load(Ordering::Relaxed) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_ticks_in_the_current_second() {
        let meter = RateMeter::default();
        for _ in 0..10 {
            meter.tick();
        }
        assert!((10.0..=10.5).contains(&meter.rate()), "{}", meter.rate());
    }
}
