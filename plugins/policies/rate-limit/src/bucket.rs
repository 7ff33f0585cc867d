//! Token-bucket arithmetic: exact integer refill and take, and the waits
//! reported to clients. Pure functions of (limit, stored bucket, now).
//!
//! Tokens are counted in units of `1 / period_ms` of a token. A bucket then
//! gains exactly `rate` units per millisecond, so refill needs no division and
//! never loses a fraction to rounding, however often it is computed.

/// `rate` tokens every `period_ms`, holding at most `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Limit {
    pub(crate) rate: u64,
    pub(crate) burst: u64,
    pub(crate) period_ms: u64,
}

impl Limit {
    /// Units in one token.
    fn unit(&self) -> u64 {
        self.period_ms
    }

    /// Units in a full bucket. Config validation bounds `burst` and
    /// `period_ms` so this fits a `u64`.
    fn capacity(&self) -> u64 {
        self.burst * self.period_ms
    }

    /// Time for an empty bucket to fill. A stored bucket idle this long is
    /// full, exactly like a missing one, so this is the entry's TTL.
    pub(crate) fn ttl_ms(&self) -> u64 {
        ceil_div(self.capacity(), self.rate).max(1)
    }
}

/// The state kept per key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Bucket {
    /// Tokens available at `last_ms`, in units (see the module docs).
    units: u64,
    /// When `units` was last brought up to date.
    last_ms: u64,
}

/// First byte of an encoded bucket, so a future layout can be told apart.
const FORMAT: u8 = 1;
const ENCODED_LEN: usize = 17;

impl Bucket {
    /// A bucket as a new key starts: full.
    pub(crate) fn full(limit: &Limit, now_ms: u64) -> Bucket {
        Bucket {
            units: limit.capacity(),
            last_ms: now_ms,
        }
    }

    /// `[FORMAT, units: u64 LE, last_ms: u64 LE]`.
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(ENCODED_LEN);
        out.push(FORMAT);
        out.extend_from_slice(&self.units.to_le_bytes());
        out.extend_from_slice(&self.last_ms.to_le_bytes());
        out
    }

    /// The bucket in `bytes`, or `None` for anything this version did not write.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Bucket> {
        if bytes.len() != ENCODED_LEN || bytes[0] != FORMAT {
            return None;
        }
        let units = u64::from_le_bytes(bytes[1..9].try_into().ok()?);
        let last_ms = u64::from_le_bytes(bytes[9..17].try_into().ok()?);
        Some(Bucket { units, last_ms })
    }

    /// The bucket as of `now_ms`: refilled by the time elapsed, capped at
    /// `burst`. A clock that steps back refills nothing and keeps `last_ms`,
    /// so the same interval is never credited twice.
    pub(crate) fn refilled(self, limit: &Limit, now_ms: u64) -> Bucket {
        let elapsed = now_ms.saturating_sub(self.last_ms);
        let gained = u128::from(elapsed) * u128::from(limit.rate);
        let units = (u128::from(self.units) + gained).min(u128::from(limit.capacity()));
        Bucket {
            // Bounded by `capacity`, a u64.
            units: units as u64,
            last_ms: self.last_ms.max(now_ms),
        }
    }

    /// Whole tokens available.
    pub(crate) fn tokens(&self, limit: &Limit) -> u64 {
        self.units / limit.unit()
    }

    fn quota(&self, limit: &Limit) -> Quota {
        Quota {
            limit: limit.burst,
            remaining: self.tokens(limit),
            reset_ms: ceil_div(limit.capacity().saturating_sub(self.units), limit.rate),
        }
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

/// The outcome of asking for one token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// A token was taken; `after` is the bucket to store.
    Allowed { after: Bucket, quota: Quota },
    /// No whole token; nothing changes. `retry_after_ms` is the time until one
    /// token has accumulated.
    Limited { quota: Quota, retry_after_ms: u64 },
}

/// Take one token from `stored` (a missing key is a full bucket) at `now_ms`.
pub(crate) fn take(limit: &Limit, stored: Option<Bucket>, now_ms: u64) -> Decision {
    let bucket = match stored {
        Some(b) => b.refilled(limit, now_ms),
        None => Bucket::full(limit, now_ms),
    };
    if bucket.units >= limit.unit() {
        let after = Bucket {
            units: bucket.units - limit.unit(),
            last_ms: bucket.last_ms,
        };
        Decision::Allowed {
            after,
            quota: after.quota(limit),
        }
    } else {
        Decision::Limited {
            quota: bucket.quota(limit),
            retry_after_ms: ceil_div(limit.unit() - bucket.units, limit.rate),
        }
    }
}

/// `Retry-After` in whole seconds: rounded up, and at least 1 so a client
/// never retries at once into the same refusal.
pub(crate) fn retry_after_secs(ms: u64) -> u64 {
    ceil_div(ms, 1000).max(1)
}

/// `RateLimit-Reset` in whole seconds, rounded up (0 means "full now").
pub(crate) fn reset_secs(ms: u64) -> u64 {
    ceil_div(ms, 1000)
}

fn ceil_div(n: u64, d: u64) -> u64 {
    n.div_ceil(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: u64 = 1_700_000_000_000;

    fn limit(rate: u64, burst: u64, period_s: u64) -> Limit {
        Limit {
            rate,
            burst,
            period_ms: period_s * 1000,
        }
    }

    /// Take `n` tokens in a row at `now`, storing each result.
    fn drain(l: &Limit, mut b: Option<Bucket>, n: usize, now: u64) -> (Option<Bucket>, usize) {
        let mut allowed = 0;
        for _ in 0..n {
            if let Decision::Allowed { after, .. } = take(l, b, now) {
                b = Some(after);
                allowed += 1;
            }
        }
        (b, allowed)
    }

    #[test]
    fn limit_allows_burst() {
        let l = limit(10, 20, 1);
        let (_, allowed) = drain(&l, None, 20, T0);
        assert_eq!(allowed, 20);
    }

    #[test]
    fn limit_rejects_excess() {
        let l = limit(10, 20, 1);
        let (b, allowed) = drain(&l, None, 25, T0);
        assert_eq!(allowed, 20);
        match take(&l, b, T0) {
            Decision::Limited {
                quota,
                retry_after_ms,
            } => {
                assert_eq!(quota.remaining, 0);
                assert_eq!(quota.limit, 20);
                // 10 tokens/s: one token every 100 ms, full in 2 s.
                assert_eq!(retry_after_ms, 100);
                assert_eq!(quota.reset_ms, 2000);
            }
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn first_take_reports_remaining_and_reset() {
        let l = limit(10, 20, 1);
        match take(&l, None, T0) {
            Decision::Allowed { quota, .. } => {
                assert_eq!(
                    quota,
                    Quota {
                        limit: 20,
                        remaining: 19,
                        reset_ms: 100
                    }
                );
            }
            other => panic!("expected a token, got {other:?}"),
        }
    }

    #[test]
    fn refill_is_proportional_to_elapsed_time() {
        let l = limit(10, 20, 1);
        let (b, _) = drain(&l, None, 20, T0);
        // 250 ms at 10/s is 2.5 tokens: 2 whole ones are usable.
        let (b, allowed) = drain(&l, b, 5, T0 + 250);
        assert_eq!(allowed, 2);
        // The half token carried over: 50 ms more makes it whole.
        let (_, allowed) = drain(&l, b, 5, T0 + 300);
        assert_eq!(allowed, 1);
    }

    #[test]
    fn refill_caps_at_burst() {
        let l = limit(10, 20, 1);
        let (b, _) = drain(&l, None, 20, T0);
        let (_, allowed) = drain(&l, b, 100, T0 + 3_600_000);
        assert_eq!(allowed, 20);
    }

    #[test]
    fn slow_rate_accumulates_fractions_exactly() {
        // 1 token a minute, refilled and stored every 7 ms: rounding each
        // refill to whole milli-tokens would lose time at every step and
        // delay the token; units keep it exact.
        let l = limit(1, 1, 60);
        let (mut b, _) = drain(&l, None, 1, T0);
        let mut t = T0;
        while t < T0 + 59_999 {
            t += 7;
            let now = t.min(T0 + 59_999);
            match take(&l, b, now) {
                Decision::Allowed { .. } => panic!("token granted early at +{} ms", now - T0),
                Decision::Limited { .. } => b = b.map(|b| b.refilled(&l, now)),
            }
        }
        assert!(matches!(take(&l, b, T0 + 60_000), Decision::Allowed { .. }));
    }

    #[test]
    fn retry_after_counts_down_to_next_token() {
        let l = limit(1, 5, 10);
        let (b, _) = drain(&l, None, 5, T0);
        let wait = |now| match take(&l, b, now) {
            Decision::Limited { retry_after_ms, .. } => retry_after_ms,
            other => panic!("expected a refusal, got {other:?}"),
        };
        assert_eq!(wait(T0), 10_000);
        assert_eq!(wait(T0 + 2_500), 7_500);
        assert_eq!(wait(T0 + 9_999), 1);
        assert_eq!(retry_after_secs(wait(T0 + 2_500)), 8);
        assert_eq!(retry_after_secs(wait(T0 + 9_999)), 1);
    }

    #[test]
    fn retry_after_is_at_least_one_second() {
        assert_eq!(retry_after_secs(0), 1);
        assert_eq!(retry_after_secs(1), 1);
        assert_eq!(retry_after_secs(1000), 1);
        assert_eq!(retry_after_secs(1001), 2);
        assert_eq!(reset_secs(0), 0);
        assert_eq!(reset_secs(1), 1);
    }

    #[test]
    fn clock_stepping_back_credits_nothing() {
        let l = limit(10, 10, 1);
        let (b, _) = drain(&l, None, 10, T0);
        // The clock steps back 500 ms, then returns to T0 + 100: only the
        // 100 ms after the last update count, not 600.
        let (b, allowed) = drain(&l, b, 5, T0 - 500);
        assert_eq!(allowed, 0);
        let (_, allowed) = drain(&l, b, 5, T0 + 100);
        assert_eq!(allowed, 1);
    }

    #[test]
    fn encoding_round_trips() {
        let b = Bucket {
            units: 123_456_789,
            last_ms: T0,
        };
        assert_eq!(Bucket::decode(&b.encode()), Some(b));
        assert_eq!(Bucket::decode(&[]), None);
        assert_eq!(Bucket::decode(&[2; ENCODED_LEN]), None);
    }

    #[test]
    fn ttl_is_time_to_fill_from_empty() {
        assert_eq!(limit(10, 20, 1).ttl_ms(), 2_000);
        assert_eq!(limit(3, 1, 1).ttl_ms(), 334);
        assert_eq!(limit(1, 100, 3600).ttl_ms(), 360_000_000);
    }

    #[test]
    fn extreme_limits_do_not_overflow() {
        let l = Limit {
            rate: crate::config::MAX_RATE,
            burst: crate::config::MAX_BURST,
            period_ms: crate::config::MAX_PERIOD_SECONDS * 1000,
        };
        let b = Bucket {
            units: 0,
            last_ms: 0,
        };
        let full = b.refilled(&l, u64::MAX);
        assert_eq!(full.tokens(&l), l.burst);
        assert!(matches!(take(&l, Some(b), 0), Decision::Limited { .. }));
    }
}
