//! The token bucket `take-tokens` runs as one atomic step: exact integer
//! refill and take, the stored layout, and what a rate limit reports. The
//! memory store runs this code under its lock; the Redis store runs the same
//! arithmetic in its `TAKE` script (`redis.rs`), and a test holds the two to
//! the same answers.
//!
//! Tokens are counted in units of `1 / period_ms` of a token: a bucket then
//! gains exactly `rate` units per millisecond, so refill needs no division
//! and never loses a fraction to rounding, however often it is computed.

use super::StateError;

/// The largest integer Redis's Lua numbers (doubles) hold exactly.
const EXACT: u64 = 1 << 53;

/// `rate` tokens every `period_ms`, holding at most `burst`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limit {
    rate: u64,
    period_ms: u64,
    burst: u64,
}

/// What `take-tokens` answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Taken {
    /// Whether the tokens were taken.
    pub taken: bool,
    /// Whole tokens left.
    pub remaining: u64,
    /// Milliseconds until the bucket is full again.
    pub reset_ms: u64,
    /// When not taken, milliseconds until `cost` tokens are there.
    pub retry_after_ms: u64,
}

/// First byte of a stored bucket.
const FORMAT: u8 = 1;
/// `[FORMAT, units: u64 LE, last_ms: u64 LE]`.
pub const ENCODED_LEN: usize = 17;

impl Limit {
    /// A limit, or `TooLarge` for one the contract does not take (zeros, a
    /// cost over the burst, or units past what Redis computes exactly).
    pub fn new(rate: u64, period_ms: u64, burst: u64, cost: u64) -> Result<Limit, StateError> {
        let fits = rate >= 1
            && period_ms >= 1
            && burst >= 1
            && cost <= burst
            && burst
                .checked_mul(period_ms)
                .and_then(|c| c.checked_add(rate))
                .is_some_and(|n| n < EXACT);
        if !fits {
            return Err(StateError::TooLarge);
        }
        Ok(Limit {
            rate,
            period_ms,
            burst,
        })
    }

    fn capacity(&self) -> u64 {
        self.burst * self.period_ms
    }

    /// Time for an empty bucket to fill: a bucket idle this long is full,
    /// exactly like a missing one, so this is the entry's TTL.
    pub fn ttl_ms(&self) -> u64 {
        self.capacity().div_ceil(self.rate).max(1)
    }

    pub(crate) fn rate(&self) -> u64 {
        self.rate
    }

    pub(crate) fn period_ms(&self) -> u64 {
        self.period_ms
    }

    pub(crate) fn burst(&self) -> u64 {
        self.burst
    }
}

/// Take `cost` tokens from the bucket stored as `stored` (`None`, or a value
/// of another layout: a full bucket) at `now_ms`. Returns the value to store
/// (`None` when nothing was taken, so nothing changes) and the answer.
pub fn take(
    limit: &Limit,
    stored: Option<&[u8]>,
    now_ms: u64,
    cost: u64,
) -> (Option<Vec<u8>>, Taken) {
    let capacity = limit.capacity();
    let (units, last_ms) = match stored.and_then(decode) {
        Some((units, last_ms)) => {
            // A clock that steps back refills nothing and keeps `last_ms`, so
            // the same interval is never credited twice. Past the TTL the
            // bucket is full anyway; the cap keeps the product exact.
            let elapsed = now_ms.saturating_sub(last_ms).min(limit.ttl_ms());
            let units = units.min(capacity);
            (
                (units + elapsed * limit.rate).min(capacity),
                last_ms.max(now_ms),
            )
        }
        None => (capacity, now_ms),
    };
    let need = cost * limit.period_ms;
    let answer = |units: u64, taken: bool| Taken {
        taken,
        remaining: units / limit.period_ms,
        reset_ms: (capacity - units).div_ceil(limit.rate),
        retry_after_ms: if taken {
            0
        } else {
            (need - units).div_ceil(limit.rate)
        },
    };
    if units >= need {
        let left = units - need;
        (Some(encode(left, last_ms)), answer(left, true))
    } else {
        (None, answer(units, false))
    }
}

fn encode(units: u64, last_ms: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(ENCODED_LEN);
    out.push(FORMAT);
    out.extend_from_slice(&units.to_le_bytes());
    out.extend_from_slice(&last_ms.to_le_bytes());
    out
}

fn decode(bytes: &[u8]) -> Option<(u64, u64)> {
    if bytes.len() != ENCODED_LEN || bytes[0] != FORMAT {
        return None;
    }
    let units = u64::from_le_bytes(bytes[1..9].try_into().ok()?);
    let last_ms = u64::from_le_bytes(bytes[9..17].try_into().ok()?);
    Some((units, last_ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(rate: u64, period_s: u64, burst: u64) -> Limit {
        Limit::new(rate, period_s * 1000, burst, 1).unwrap()
    }

    /// Take one token `n` times at `now`; how many were taken.
    fn drain(l: &Limit, mut b: Option<Vec<u8>>, n: usize, now: u64) -> (Option<Vec<u8>>, usize) {
        let mut taken = 0;
        for _ in 0..n {
            let (next, t) = take(l, b.as_deref(), now, 1);
            if t.taken {
                taken += 1;
                b = next;
            }
        }
        (b, taken)
    }

    #[test]
    fn a_new_bucket_allows_its_burst_then_refuses_with_the_wait() {
        let l = limit(10, 1, 20);
        let (b, taken) = drain(&l, None, 25, 1_000);
        assert_eq!(taken, 20);
        let (_, t) = take(&l, b.as_deref(), 1_000, 1);
        assert!(!t.taken);
        assert_eq!(t.remaining, 0);
        assert_eq!(t.retry_after_ms, 100, "one token every 100 ms");
        assert_eq!(t.reset_ms, 2_000, "20 tokens at 10/s");
    }

    #[test]
    fn refill_is_exact_and_capped_at_the_burst() {
        let l = limit(1, 3, 2); // one token every 3 s: not a whole ms per unit
        let (b, _) = drain(&l, None, 2, 0);
        let (_, t) = take(&l, b.as_deref(), 2_999, 1);
        assert!(!t.taken);
        assert_eq!(t.retry_after_ms, 1);
        let (b2, t) = take(&l, b.as_deref(), 3_000, 1);
        assert!(t.taken && t.remaining == 0);
        // Idle far past the TTL: full, never more.
        let (_, t) = take(&l, b2.as_deref(), 10_000_000, 1);
        assert_eq!(t.remaining, 1);
    }

    #[test]
    fn a_clock_that_steps_back_refills_nothing() {
        let l = limit(1, 1, 5);
        let (b, _) = drain(&l, None, 5, 10_000);
        let (_, t) = take(&l, b.as_deref(), 4_000, 1);
        assert!(!t.taken);
        let (_, t) = take(&l, b.as_deref(), 11_000, 1);
        assert!(t.taken, "the second after the last refill counts once");
    }

    #[test]
    fn a_cost_takes_that_many_or_nothing() {
        let l = Limit::new(10, 1_000, 10, 4).unwrap();
        let (b, t) = take(&l, None, 0, 4);
        assert!(t.taken);
        assert_eq!(t.remaining, 6);
        let (b, _) = take(&l, b.as_deref(), 0, 4);
        let (none, t) = take(&l, b.as_deref(), 0, 4);
        assert!(none.is_none() && !t.taken);
        assert_eq!(t.remaining, 2);
        assert_eq!(t.retry_after_ms, 200, "two more tokens at 10/s");
    }

    #[test]
    fn foreign_values_are_a_full_bucket_and_bad_limits_are_refused() {
        let l = limit(1, 1, 3);
        let (_, t) = take(&l, Some(b"not a bucket"), 0, 1);
        assert!(t.taken);
        assert_eq!(t.remaining, 2);
        for (rate, period, burst, cost) in [
            (0, 1_000, 10, 1),
            (1, 0, 10, 1),
            (1, 1_000, 0, 0),
            (1, 1_000, 10, 11),
            (1, 1 << 30, 1 << 23, 1),
        ] {
            assert_eq!(
                Limit::new(rate, period, burst, cost),
                Err(StateError::TooLarge),
                "{rate} {period} {burst} {cost}"
            );
        }
    }
}
