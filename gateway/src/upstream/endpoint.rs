//! One endpoint of an upstream: its connections, and what the gateway has
//! learnt about its health — from active probes ([`super::health`]) and from
//! the real requests it served (passive outlier ejection).
//!
//! Every field is an atomic: requests on all workers read and update it
//! without a lock. Times are milliseconds on the upstream's own clock
//! ([`super::Upstream::now_ms`]), which runs on tokio's clock so ejection
//! and return are testable on a paused one.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;

use super::pool::EndpointPool;
use super::UpstreamErrorKind;
use crate::config::OutlierConfig;

/// Where an endpoint came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// An `ip:port` in the configuration.
    Static,
    /// A DNS name in the configuration.
    Dns,
    /// The discovery registry (file or etcd).
    Registry,
}

impl Source {
    /// Its name in `/status`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Source::Static => "static",
            Source::Dns => "dns",
            Source::Registry => "registry",
        }
    }
}

/// An endpoint, shared by the live endpoint sets it belongs to: a discovery
/// update that keeps an address keeps its connections and its health.
#[derive(Debug)]
pub(crate) struct Endpoint {
    pub(crate) pool: Arc<EndpointPool>,
    pub(crate) weight: u32,
    pub(crate) source: Source,
    state: State,
}

#[derive(Debug, Default)]
struct State {
    /// Active probes say it is down.
    checked_down: AtomicBool,
    check_passes: AtomicU32,
    check_fails: AtomicU32,
    /// Ejected until this time (0: never ejected).
    ejected_until: AtomicU64,
    /// Ejections in a row (the next one lasts longer).
    ejections: AtomicU32,
    last_ejected: AtomicU64,
    consecutive_failures: AtomicU32,
    consecutive_5xx: AtomicU32,
    /// Requests in flight.
    active: AtomicU64,
    // Totals, for metrics and `/status`.
    requests: AtomicU64,
    retried: AtomicU64,
    ejections_total: AtomicU64,
    failures: [AtomicU64; UpstreamErrorKind::COUNT],
}

/// What one try at an endpoint produced.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Observed {
    Status(u16),
    Failure(UpstreamErrorKind),
}

impl Endpoint {
    pub(crate) fn new(pool: Arc<EndpointPool>, weight: u32, source: Source) -> Endpoint {
        Endpoint {
            pool,
            weight,
            source,
            state: State::default(),
        }
    }

    /// An endpoint at `addr` that nothing connects to, for unit tests.
    #[cfg(test)]
    pub(crate) fn for_test(addr: SocketAddr, weight: u32) -> Arc<Endpoint> {
        let pool = EndpointPool::new(
            addr,
            1,
            std::time::Duration::from_secs(1),
            crate::config::UpstreamProtocol::Http1,
            None,
        );
        Arc::new(Endpoint::new(Arc::new(pool), weight, Source::Static))
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.pool.addr()
    }

    /// In rotation: not failing its probes, not ejected.
    pub(crate) fn available(&self, now: u64) -> bool {
        !self.checked_down() && !self.ejected(now)
    }

    pub(crate) fn checked_down(&self) -> bool {
        self.state.checked_down.load(Ordering::Relaxed)
    }

    pub(crate) fn ejected(&self, now: u64) -> bool {
        self.state.ejected_until.load(Ordering::Relaxed) > now
    }

    /// Requests in flight now.
    pub(crate) fn active(&self) -> u64 {
        self.state.active.load(Ordering::Relaxed)
    }

    /// Count a request in flight until the guard drops.
    pub(crate) fn start(&self) -> InFlight<'_> {
        self.state.active.fetch_add(1, Ordering::Relaxed);
        self.state.requests.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    /// Record what a try produced. Returns `true` when this ejected the
    /// endpoint; `may_eject` is asked first (the cap on ejected endpoints):
    /// `None` refuses, and the guard it returns is held until the ejection
    /// is recorded, so concurrent ejections cannot both pass the cap.
    pub(crate) fn observe<G>(
        &self,
        seen: Observed,
        now: u64,
        cfg: &OutlierConfig,
        may_eject: impl FnOnce() -> Option<G>,
    ) -> bool {
        let s = &self.state;
        let (failures, fives) = match seen {
            Observed::Status(status) => {
                // Written only when set: a healthy endpoint's requests leave
                // the line shared between cores untouched.
                reset(&s.consecutive_failures);
                if status < 500 {
                    reset(&s.consecutive_5xx);
                    return false;
                }
                (0, s.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1)
            }
            Observed::Failure(kind) => {
                s.failures[kind as usize].fetch_add(1, Ordering::Relaxed);
                if kind == UpstreamErrorKind::NoEndpoint {
                    return false;
                }
                (
                    s.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1,
                    s.consecutive_5xx.fetch_add(1, Ordering::Relaxed) + 1,
                )
            }
        };
        let tripped = (cfg.consecutive_failures > 0 && failures >= cfg.consecutive_failures)
            || (cfg.consecutive_5xx > 0 && fives >= cfg.consecutive_5xx);
        if !tripped || self.ejected(now) {
            return false;
        }
        let Some(_cap) = may_eject() else {
            return false;
        };
        // Ejections in a row last longer; a quiet spell as long as the
        // longest ejection starts the count again.
        let last = s.last_ejected.load(Ordering::Relaxed);
        let previous = s.ejections.load(Ordering::Relaxed);
        let n = if last > 0 && now.saturating_sub(last) <= cfg.max_ejection_ms {
            previous + 1
        } else {
            1
        };
        let length = cfg
            .base_ejection_ms
            .saturating_mul(1u64 << (n - 1).min(20))
            .min(cfg.max_ejection_ms);
        let until = now + length;
        // One ejection per trip, however many requests saw it at once.
        let current = s.ejected_until.load(Ordering::Relaxed);
        if current > now
            || s.ejected_until
                .compare_exchange(current, until, Ordering::Relaxed, Ordering::Relaxed)
                .is_err()
        {
            return false;
        }
        s.ejections.store(n, Ordering::Relaxed);
        s.last_ejected.store(until, Ordering::Relaxed);
        s.ejections_total.fetch_add(1, Ordering::Relaxed);
        s.consecutive_failures.store(0, Ordering::Relaxed);
        s.consecutive_5xx.store(0, Ordering::Relaxed);
        tracing::warn!(endpoint = %self.addr(), ejection_ms = length, ejections = n, "endpoint ejected after consecutive failures");
        true
    }

    /// A try here failed and the request went on to another.
    pub(crate) fn retried(&self) {
        self.state.retried.fetch_add(1, Ordering::Relaxed);
    }

    /// Record a probe. Returns the new state when it changed: `Some(true)`
    /// back in rotation, `Some(false)` out of it.
    pub(crate) fn probed(&self, passed: bool, healthy: u32, unhealthy: u32) -> Option<bool> {
        let s = &self.state;
        if passed {
            s.check_fails.store(0, Ordering::Relaxed);
            let n = s.check_passes.fetch_add(1, Ordering::Relaxed) + 1;
            if self.checked_down() && n >= healthy {
                s.checked_down.store(false, Ordering::Relaxed);
                return Some(true);
            }
        } else {
            s.check_passes.store(0, Ordering::Relaxed);
            let n = s.check_fails.fetch_add(1, Ordering::Relaxed) + 1;
            if !self.checked_down() && n >= unhealthy {
                s.checked_down.store(true, Ordering::Relaxed);
                return Some(false);
            }
        }
        None
    }

    /// Totals, for metrics and `/status`.
    pub(crate) fn totals(&self) -> Totals {
        let s = &self.state;
        Totals {
            requests: s.requests.load(Ordering::Relaxed),
            retried: s.retried.load(Ordering::Relaxed),
            ejections: s.ejections_total.load(Ordering::Relaxed),
            failures: UpstreamErrorKind::ALL
                .map(|k| (k, s.failures[k as usize].load(Ordering::Relaxed))),
        }
    }
}

fn reset(n: &AtomicU32) {
    if n.load(Ordering::Relaxed) != 0 {
        n.store(0, Ordering::Relaxed);
    }
}

/// An endpoint's counters.
#[derive(Debug, Clone)]
pub(crate) struct Totals {
    pub(crate) requests: u64,
    pub(crate) retried: u64,
    pub(crate) ejections: u64,
    pub(crate) failures: [(UpstreamErrorKind, u64); UpstreamErrorKind::COUNT],
}

/// A request in flight at an endpoint (least-request balancing reads the
/// count).
pub(crate) struct InFlight<'e>(&'e Endpoint);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.state.active.fetch_sub(1, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn endpoint() -> Arc<Endpoint> {
        Endpoint::for_test("127.0.0.1:9".parse().unwrap(), 1)
    }

    fn cfg() -> OutlierConfig {
        OutlierConfig {
            consecutive_failures: 3,
            consecutive_5xx: 0,
            base_ejection_ms: 1_000,
            max_ejection_ms: 5_000,
            max_ejected_percent: 100,
        }
    }

    const RESET: Observed = Observed::Failure(UpstreamErrorKind::Reset);

    #[test]
    fn consecutive_failures_eject_and_a_success_between_them_does_not() {
        let e = endpoint();
        assert!(!e.observe(RESET, 10, &cfg(), || Some(())));
        assert!(!e.observe(RESET, 10, &cfg(), || Some(())));
        assert!(!e.observe(Observed::Status(200), 10, &cfg(), || Some(())));
        assert!(!e.observe(RESET, 10, &cfg(), || Some(())));
        assert!(!e.observe(RESET, 10, &cfg(), || Some(())));
        assert!(e.available(10));
        assert!(e.observe(RESET, 10, &cfg(), || Some(())));
        assert!(!e.available(10));
        assert!(!e.available(1_009));
        assert!(e.available(1_010));
    }

    #[test]
    fn repeated_ejections_grow_up_to_the_maximum_and_a_quiet_spell_resets_them() {
        let e = endpoint();
        let mut now = 0;
        let mut lengths = Vec::new();
        for _ in 0..5 {
            for _ in 0..3 {
                e.observe(RESET, now, &cfg(), || Some(()));
            }
            let until = e.state.ejected_until.load(Ordering::Relaxed);
            lengths.push(until - now);
            now = until;
        }
        assert_eq!(lengths, vec![1_000, 2_000, 4_000, 5_000, 5_000]);
        now += 5_001;
        for _ in 0..3 {
            e.observe(RESET, now, &cfg(), || Some(()));
        }
        assert_eq!(e.state.ejected_until.load(Ordering::Relaxed) - now, 1_000);
    }

    #[test]
    fn the_ejection_cap_is_asked_and_obeyed() {
        let e = endpoint();
        for _ in 0..3 {
            assert!(!e.observe(RESET, 0, &cfg(), || None::<()>));
        }
        assert!(e.available(0));
    }

    #[test]
    fn fives_eject_only_when_configured() {
        let e = endpoint();
        for _ in 0..10 {
            assert!(!e.observe(Observed::Status(503), 0, &cfg(), || Some(())));
        }
        let cfg = OutlierConfig {
            consecutive_5xx: 2,
            ..cfg()
        };
        assert!(e.observe(Observed::Status(503), 0, &cfg, || Some(())));
    }

    #[test]
    fn probes_flip_state_at_their_thresholds() {
        let e = endpoint();
        assert_eq!(e.probed(false, 2, 2), None);
        assert_eq!(e.probed(true, 2, 2), None);
        assert_eq!(e.probed(false, 2, 2), None);
        assert_eq!(e.probed(false, 2, 2), Some(false));
        assert!(!e.available(0));
        assert_eq!(e.probed(false, 2, 2), None);
        assert_eq!(e.probed(true, 2, 2), None);
        assert_eq!(e.probed(true, 2, 2), Some(true));
        assert!(e.available(0));
    }
}
