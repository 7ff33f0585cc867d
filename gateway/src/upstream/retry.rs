//! When a failed try is tried again: what is retried, the backoff between
//! tries, and the retry budget that keeps retries a bounded fraction of
//! traffic, so a brown-out does not become an outage.

use std::sync::Mutex;
use std::time::Duration;

use super::UpstreamErrorKind;
use crate::config::RetryConfig;

/// An upstream's retry settings, validated.
#[derive(Debug)]
pub(crate) struct RetryPolicy {
    pub(crate) attempts: u32,
    on: RetryOn,
    pub(crate) per_try: Option<Duration>,
    backoff_base: Duration,
    backoff_max: Duration,
    pub(crate) max_body_bytes: u64,
    non_idempotent: bool,
    pub(crate) budget: Budget,
}

#[derive(Debug, Default)]
struct RetryOn {
    connect_failure: bool,
    reset: bool,
    refused_stream: bool,
    timeout: bool,
    statuses: Vec<u16>,
}

impl RetryPolicy {
    /// From config; `Err` names the field.
    pub(crate) fn new(cfg: &RetryConfig) -> Result<RetryPolicy, (String, String)> {
        let err = |f: &str, m: &str| Err((format!("retry.{f}"), m.to_string()));
        if !(2..=10).contains(&cfg.attempts) {
            return err(
                "attempts",
                "must be 2 to 10 (1 is no retry: leave `retry` out)",
            );
        }
        let mut on = RetryOn::default();
        for (i, what) in cfg.retry_on.iter().enumerate() {
            match what.as_str() {
                "connect-failure" => on.connect_failure = true,
                "reset" => on.reset = true,
                "refused-stream" => on.refused_stream = true,
                "timeout" => on.timeout = true,
                s => match s.parse::<u16>() {
                    Ok(code) if (500..600).contains(&code) => on.statuses.push(code),
                    _ => return err(
                        &format!("retry_on[{i}]"),
                        "must be connect-failure, reset, refused-stream, timeout or a 5xx status",
                    ),
                },
            }
        }
        if cfg.retry_on.is_empty() {
            return err("retry_on", "must name at least one condition");
        }
        if cfg.per_try_timeout_ms == Some(0) {
            return err("per_try_timeout_ms", "must be at least 1");
        }
        if cfg.backoff_max_ms < cfg.backoff_base_ms {
            return err("backoff_max_ms", "must be at least backoff_base_ms");
        }
        let b = &cfg.budget;
        if !(0.0..=1.0).contains(&b.ratio) {
            return err("budget.ratio", "must be between 0 and 1");
        }
        if b.window_ms < 1_000 {
            return err("budget.window_ms", "must be at least 1000");
        }
        Ok(RetryPolicy {
            attempts: cfg.attempts,
            on,
            per_try: cfg.per_try_timeout_ms.map(Duration::from_millis),
            backoff_base: Duration::from_millis(cfg.backoff_base_ms),
            backoff_max: Duration::from_millis(cfg.backoff_max_ms),
            max_body_bytes: cfg.max_body_bytes,
            non_idempotent: cfg.non_idempotent,
            budget: Budget::new(
                b.ratio,
                b.min_per_second,
                Duration::from_millis(b.window_ms),
            ),
        })
    }

    /// Whether a failure of this kind is retried.
    pub(crate) fn on_failure(&self, kind: UpstreamErrorKind) -> bool {
        match kind {
            UpstreamErrorKind::ConnectFailed => self.on.connect_failure,
            UpstreamErrorKind::Reset => self.on.reset,
            UpstreamErrorKind::Refused => self.on.refused_stream,
            UpstreamErrorKind::Timeout => self.on.timeout,
            // Another endpoint may have one (discovery, health).
            UpstreamErrorKind::NoEndpoint => false,
            // Configuration problems, not transient ones.
            UpstreamErrorKind::Protocol | UpstreamErrorKind::Certificate => false,
        }
    }

    /// Whether an answer with this status is retried.
    pub(crate) fn on_status(&self, status: u16) -> bool {
        self.on.statuses.contains(&status)
    }

    /// Whether a try's result is retried; `unsent` when the request never
    /// reached the endpoint (a connect that timed out then counts as a
    /// connect failure).
    pub(crate) fn wants<B>(
        &self,
        result: &Result<http::Response<B>, UpstreamErrorKind>,
        unsent: bool,
    ) -> bool {
        match result {
            Ok(resp) => self.on_status(resp.status().as_u16()),
            Err(UpstreamErrorKind::Timeout) if unsent => self.on.connect_failure || self.on.timeout,
            Err(kind) => self.on_failure(*kind),
        }
    }

    /// Whether a request with this method may be sent again once it was
    /// sent (a request never sent may always go again).
    pub(crate) fn resends(&self, method: &http::Method) -> bool {
        self.non_idempotent || is_idempotent(method)
    }

    /// The wait before retry `n` (1 for the first): drawn at random up to
    /// the base doubled per retry, capped ("full jitter").
    pub(crate) fn backoff(&self, n: u32) -> Duration {
        let cap = self
            .backoff_base
            .saturating_mul(1u32 << (n.saturating_sub(1)).min(16))
            .min(self.backoff_max);
        if cap.is_zero() {
            return cap;
        }
        Duration::from_micros(rand::random_range(0..=cap.as_micros() as u64))
    }
}

/// RFC 9110 §9.2.2.
pub(crate) fn is_idempotent(m: &http::Method) -> bool {
    use http::Method as M;
    [M::GET, M::HEAD, M::OPTIONS, M::TRACE, M::PUT, M::DELETE].contains(m)
}

/// Linkerd's retry budget: over a sliding window, retries may be at most
/// `ratio` of requests plus `min_per_second` a second. The window is kept
/// in ten buckets.
#[derive(Debug)]
pub(crate) struct Budget {
    ratio: f64,
    min_per_second: u32,
    window: Duration,
    buckets: Mutex<Buckets>,
}

const BUCKETS: usize = 10;

#[derive(Debug, Default)]
struct Buckets {
    /// (bucket number since the clock's start, requests, retries).
    slots: [(u64, u64, u64); BUCKETS],
}

impl Budget {
    fn new(ratio: f64, min_per_second: u32, window: Duration) -> Budget {
        Budget {
            ratio,
            min_per_second,
            window,
            buckets: Mutex::default(),
        }
    }

    fn bucket_ms(&self) -> u64 {
        (self.window.as_millis() as u64 / BUCKETS as u64).max(1)
    }

    fn with_slot<R>(&self, now_ms: u64, f: impl FnOnce(&mut Buckets, usize) -> R) -> R {
        let n = now_ms / self.bucket_ms();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        let i = (n % BUCKETS as u64) as usize;
        if b.slots[i].0 != n {
            b.slots[i] = (n, 0, 0);
        }
        // Only buckets inside the window count.
        for s in b.slots.iter_mut() {
            if s.0 + (BUCKETS as u64) <= n {
                *s = (0, 0, 0);
            }
        }
        f(&mut b, i)
    }

    /// A request started.
    pub(crate) fn deposit(&self, now_ms: u64) {
        self.with_slot(now_ms, |b, i| b.slots[i].1 += 1);
    }

    /// Take a retry from the budget; `false` when it is spent.
    pub(crate) fn withdraw(&self, now_ms: u64) -> bool {
        let window_s = self.window.as_secs_f64();
        let (ratio, min) = (self.ratio, self.min_per_second as f64);
        self.with_slot(now_ms, |b, i| {
            let requests: u64 = b.slots.iter().map(|s| s.1).sum();
            let retries: u64 = b.slots.iter().map(|s| s.2).sum();
            let allowed = min * window_s + ratio * requests as f64;
            if (retries as f64) < allowed.floor() {
                b.slots[i].2 += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::RetryBudgetConfig;

    fn policy(retry_on: &[&str]) -> Result<RetryPolicy, (String, String)> {
        RetryPolicy::new(&RetryConfig {
            attempts: 3,
            retry_on: retry_on.iter().map(|s| s.to_string()).collect(),
            per_try_timeout_ms: None,
            backoff_base_ms: 10,
            backoff_max_ms: 40,
            max_body_bytes: 1024,
            non_idempotent: false,
            budget: RetryBudgetConfig::default(),
        })
    }

    #[test]
    fn conditions_are_parsed_and_unknown_ones_located() {
        let p = policy(&["connect-failure", "503"]).unwrap();
        assert!(p.on_failure(UpstreamErrorKind::ConnectFailed));
        assert!(!p.on_failure(UpstreamErrorKind::Timeout));
        assert!(p.on_status(503) && !p.on_status(502));
        let (at, _) = policy(&["reset", "404"]).unwrap_err();
        assert_eq!(at, "retry.retry_on[1]");
        let (at, _) = policy(&["sometimes"]).unwrap_err();
        assert_eq!(at, "retry.retry_on[0]");
    }

    #[test]
    fn backoff_is_jittered_under_a_doubling_cap() {
        let p = policy(&["reset"]).unwrap();
        for _ in 0..200 {
            assert!(p.backoff(1) <= Duration::from_millis(10));
            assert!(p.backoff(2) <= Duration::from_millis(20));
            assert!(p.backoff(9) <= Duration::from_millis(40));
        }
    }

    #[test]
    fn only_idempotent_methods_are_sent_twice() {
        let p = policy(&["reset"]).unwrap();
        assert!(p.resends(&http::Method::GET) && p.resends(&http::Method::PUT));
        assert!(!p.resends(&http::Method::POST) && !p.resends(&http::Method::PATCH));
    }

    #[test]
    fn budget_allows_its_floor_and_its_ratio() {
        // 1 retry a second over 10 s, plus 20 % of requests.
        let b = Budget::new(0.2, 1, Duration::from_secs(10));
        let granted = (0..100).filter(|_| b.withdraw(0)).count();
        assert_eq!(granted, 10, "the floor alone");
        for _ in 0..100 {
            b.deposit(0);
        }
        let granted = (0..100).filter(|_| b.withdraw(0)).count();
        assert_eq!(granted, 20, "plus a fifth of 100 requests");
    }

    #[test]
    fn budget_refills_as_the_window_slides() {
        let b = Budget::new(0.0, 1, Duration::from_secs(10));
        assert_eq!((0..20).filter(|_| b.withdraw(0)).count(), 10);
        assert!(!b.withdraw(9_999));
        // Ten seconds on, the first bucket's retries have left the window.
        assert_eq!((0..20).filter(|_| b.withdraw(10_000)).count(), 10);
    }
}
