//! When to try a delivery again: exponential backoff with full jitter, honouring a
//! destination's `Retry-After`.
//!
//! Attempt `n` (1-based) that failed waits a random time in `[0, min(max_backoff,
//! initial_backoff × 2^(n-1))]` ("full jitter", so many relays recovering at once do not retry in
//! lock-step). A `Retry-After` from the destination is a floor on that wait, capped at
//! [`MAX_RETRY_AFTER`] so a confused server cannot park a delivery for a day.

use std::time::Duration;

use serde::Deserialize;

use crate::config::HumanDuration;

/// The longest `Retry-After` honoured.
pub const MAX_RETRY_AFTER: Duration = Duration::from_secs(600);

/// `retry = { max_attempts = 10, initial_backoff = "100ms", max_backoff = "30s" }`
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Attempts in all, the first included; 0 = retry until delivered.
    #[serde(default)]
    pub max_attempts: u32,
    #[serde(default = "RetryConfig::default_initial_backoff")]
    pub initial_backoff: HumanDuration,
    #[serde(default = "RetryConfig::default_max_backoff")]
    pub max_backoff: HumanDuration,
}

impl RetryConfig {
    fn default_initial_backoff() -> HumanDuration {
        HumanDuration::from_millis(100)
    }
    fn default_max_backoff() -> HumanDuration {
        HumanDuration::from_secs(30)
    }

    /// Whether attempt number `attempt` (1-based) was the last one allowed.
    pub fn exhausted(&self, attempt: u32) -> bool {
        self.max_attempts != 0 && attempt >= self.max_attempts
    }

    /// How long to wait after failed attempt `attempt` (1-based).
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let initial = self.initial_backoff.0;
        let exponent = attempt.saturating_sub(1).min(32);
        let ceiling = initial
            .saturating_mul(1u32 << exponent.min(31))
            .min(self.max_backoff.0);
        let jittered = ceiling.mul_f64(fastrand::f64());
        match retry_after {
            Some(after) => jittered.max(after.min(MAX_RETRY_AFTER)),
            None => jittered,
        }
    }
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_attempts: 0,
            initial_backoff: Self::default_initial_backoff(),
            max_backoff: Self::default_max_backoff(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_ceiling_with_jitter_below() {
        let retry = RetryConfig {
            max_attempts: 5,
            initial_backoff: HumanDuration::from_millis(100),
            max_backoff: HumanDuration::from_secs(1),
        };
        for _ in 0..200 {
            assert!(retry.delay(1, None) <= Duration::from_millis(100));
            assert!(retry.delay(3, None) <= Duration::from_millis(400));
            assert!(retry.delay(40, None) <= Duration::from_secs(1));
        }
        assert!(retry.exhausted(5) && !retry.exhausted(4));
        assert!(
            !RetryConfig::default().exhausted(u32::MAX),
            "0 retries forever"
        );
    }

    #[test]
    fn retry_after_is_a_floor_with_a_cap() {
        let retry = RetryConfig::default();
        assert!(retry.delay(1, Some(Duration::from_secs(3))) >= Duration::from_secs(3));
        assert_eq!(
            retry.delay(1, Some(Duration::from_secs(86_400))),
            MAX_RETRY_AFTER
        );
    }
}
