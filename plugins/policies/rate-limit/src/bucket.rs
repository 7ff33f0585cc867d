//! The limit a route configures, what the `RateLimit-*` headers report, and
//! the waits rounded for clients. The bucket itself lives in the host: one
//! `take-tokens` call refills and takes atomically (contract 0.1.5).

use wicket_plugin_sdk::state;

/// `rate` tokens every `period_ms`, holding at most `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limit {
    pub(crate) rate: u64,
    pub(crate) burst: u64,
    pub(crate) period_ms: u64,
}

/// Past this the host refuses a bucket (`too-large`): Redis counts in
/// doubles, exact below 2^53.
const HOST_EXACT: u64 = 1 << 53;

impl Limit {
    /// Whether the host can keep this bucket: `burst × period_ms + rate`
    /// below 2^53.
    pub(crate) fn fits_host(&self) -> bool {
        self.burst
            .checked_mul(self.period_ms)
            .and_then(|c| c.checked_add(self.rate))
            .is_some_and(|n| n < HOST_EXACT)
    }
}

/// What the `RateLimit-*` headers report.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Quota {
    /// The bucket's capacity (`burst`).
    pub(crate) limit: u64,
    /// Whole tokens left.
    pub(crate) remaining: u64,
    /// Time until the bucket is full again; 0 when it is full.
    pub(crate) reset_ms: u64,
}

impl Quota {
    pub(crate) fn of(limit: &Limit, bucket: &state::Bucket) -> Quota {
        Quota {
            limit: limit.burst,
            remaining: bucket.remaining,
            reset_ms: bucket.reset_ms,
        }
    }
}

/// `Retry-After` in whole seconds: rounded up, and at least 1 so a client
/// never retries at once into the same refusal.
pub(crate) fn retry_after_secs(ms: u64) -> u64 {
    ms.div_ceil(1000).max(1)
}

/// `RateLimit-Reset` in whole seconds, rounded up (0 means "full now").
pub(crate) fn reset_secs(ms: u64) -> u64 {
    ms.div_ceil(1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_is_at_least_one_second_and_rounds_up() {
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1000), 1);
        assert_eq!(retry_after_secs(1001), 2);
        assert_eq!(reset_secs(0), 0);
        assert_eq!(reset_secs(1), 1);
        assert_eq!(reset_secs(7_500), 8);
    }

    #[test]
    fn limits_past_the_hosts_exact_range_do_not_fit() {
        let l = |rate, burst, period_ms| Limit {
            rate,
            burst,
            period_ms,
        };
        assert!(l(1_000_000_000, 1_000_000_000, 1_000).fits_host());
        assert!(l(100, 100, 86_400_000).fits_host());
        assert!(!l(1, 1_000_000_000, 86_400_000).fits_host());
    }
}
