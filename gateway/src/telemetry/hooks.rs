//! Per-pool counts of plugin hook calls — how many, how long, how they
//! failed — for the admin page: plain atomics, so counting costs a few
//! uncontended adds per call.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Failure kinds, in the order their counts are kept (the labels of
/// [`crate::plugin::PluginError::kind`]).
pub const FAILURE_KINDS: [&str; 7] = [
    "trap",
    "deadline",
    "memory",
    "invalid_output",
    "init",
    "instantiate",
    "busy",
];

/// Latency buckets: bucket `i` counts calls under 2^i µs; the last, the rest.
const BUCKETS: usize = 21;

/// The two hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    /// `on-request`.
    Request = 0,
    /// `on-response`.
    Response = 1,
}

impl Hook {
    /// The contract's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Hook::Request => "on-request",
            Hook::Response => "on-response",
        }
    }
}

/// One pool's hook calls.
#[derive(Debug, Default)]
pub struct HookStats {
    hooks: [Counters; 2],
}

#[derive(Debug, Default)]
struct Counters {
    calls: AtomicU64,
    micros: AtomicU64,
    failures: [AtomicU64; FAILURE_KINDS.len()],
    buckets: [AtomicU64; BUCKETS],
}

/// A summary of one hook's calls, summed over pools.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HookSummary {
    /// Calls made.
    pub calls: u64,
    /// Mean duration, in ms.
    pub mean_ms: f64,
    /// Upper bounds of the median and 99th percentile, in ms (from
    /// power-of-two buckets, so within a factor of two).
    pub p50_ms: f64,
    /// See `p50_ms`.
    pub p99_ms: f64,
    /// Failures by kind (kinds with none left out).
    pub failures: std::collections::BTreeMap<&'static str, u64>,
    #[serde(skip)]
    micros: u64,
    #[serde(skip)]
    buckets: [u64; BUCKETS],
}

impl HookStats {
    /// Count one call of `hook` that took `took`, failing with `failure`
    /// (a [`FAILURE_KINDS`] label) if it failed.
    pub fn record(&self, hook: Hook, took: Duration, failure: Option<&str>) {
        let c = &self.hooks[hook as usize];
        let us = took.as_micros().min(u64::MAX as u128) as u64;
        c.calls.fetch_add(1, Relaxed);
        c.micros.fetch_add(us, Relaxed);
        let bucket = (u64::BITS - us.leading_zeros()) as usize;
        c.buckets[bucket.min(BUCKETS - 1)].fetch_add(1, Relaxed);
        if let Some(kind) = failure {
            if let Some(i) = FAILURE_KINDS.iter().position(|k| *k == kind) {
                c.failures[i].fetch_add(1, Relaxed);
            }
        }
    }

    /// Add this pool's counts for `hook` into `into`.
    pub fn add_to(&self, hook: Hook, into: &mut HookSummary) {
        let c = &self.hooks[hook as usize];
        into.calls += c.calls.load(Relaxed);
        into.micros += c.micros.load(Relaxed);
        for (i, b) in c.buckets.iter().enumerate() {
            into.buckets[i] += b.load(Relaxed);
        }
        for (i, f) in c.failures.iter().enumerate() {
            let n = f.load(Relaxed);
            if n > 0 {
                *into.failures.entry(FAILURE_KINDS[i]).or_default() += n;
            }
        }
    }
}

impl HookSummary {
    /// Fill in the mean and the percentiles from what was added.
    pub fn finish(mut self) -> HookSummary {
        if self.calls > 0 {
            self.mean_ms = self.micros as f64 / self.calls as f64 / 1000.0;
            self.p50_ms = self.quantile(0.5);
            self.p99_ms = self.quantile(0.99);
        }
        self
    }

    /// As a Prometheus histogram: the sum in seconds, the count, and each
    /// bucket's upper bound in seconds with its own (not cumulative) count;
    /// the last bucket's bound is `f64::MAX`, written as `+Inf`. The count
    /// is the buckets' total (read while calls are counted, `calls` may be
    /// a call ahead of them, and `+Inf` must equal the count).
    pub fn histogram(&self) -> (f64, u64, Vec<(f64, u64)>) {
        let buckets = self
            .buckets
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let le = if i == BUCKETS - 1 {
                    f64::MAX
                } else {
                    (1u64 << i) as f64 / 1e6
                };
                (le, *n)
            })
            .collect();
        let count = self.buckets.iter().sum();
        (self.micros as f64 / 1e6, count, buckets)
    }

    fn quantile(&self, q: f64) -> f64 {
        let want = (self.calls as f64 * q).ceil() as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= want.max(1) {
                return (1u64 << i) as f64 / 1000.0;
            }
        }
        (1u64 << (BUCKETS - 1)) as f64 / 1000.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summarises_calls_latency_and_failures() {
        let s = HookStats::default();
        for _ in 0..98 {
            s.record(Hook::Request, Duration::from_micros(3), None);
        }
        s.record(Hook::Request, Duration::from_millis(5), Some("trap"));
        s.record(Hook::Request, Duration::from_millis(50), Some("deadline"));
        let mut sum = HookSummary::default();
        s.add_to(Hook::Request, &mut sum);
        s.add_to(Hook::Request, &mut sum);
        let sum = sum.finish();
        assert_eq!(sum.calls, 200);
        assert_eq!(sum.p50_ms, 0.004, "3 µs is under 4 µs");
        assert!(sum.p99_ms >= 5.0 && sum.p99_ms <= 8.192, "{}", sum.p99_ms);
        assert_eq!(sum.failures["trap"], 2);
        assert_eq!(sum.failures["deadline"], 2);
        let (sum_s, count, buckets) = sum.histogram();
        assert_eq!(count, 200);
        assert!((sum_s - (196.0 * 3e-6 + 2.0 * 0.005 + 2.0 * 0.05)).abs() < 1e-9);
        assert_eq!(buckets.len(), BUCKETS);
        assert_eq!(buckets.iter().map(|(_, n)| n).sum::<u64>(), 200);
        assert_eq!(buckets[2], (4e-6, 196), "3 µs counts under 4 µs");
        assert_eq!(buckets[BUCKETS - 1].0, f64::MAX);
        let mut none = HookSummary::default();
        s.add_to(Hook::Response, &mut none);
        assert_eq!(none.finish().calls, 0);
    }
}
