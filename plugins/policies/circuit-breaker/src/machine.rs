//! The breaker's state machine as pure functions: given the stored circuit,
//! the time and what happened, compute the next circuit.
//!
//! ```text
//!            failure threshold                    cooldown elapses
//!   Closed ───────────────────────▶ Open ─────────────────────────▶ HalfOpen
//!     ▲                              ▲   (next request is a probe)     │
//!     │                              └──────── any probe failure ──────┤
//!     └──────────────────── half_open_probes successes ────────────────┘
//! ```
//!
//! Closed lets everything through and counts failures (consecutive, and
//! optionally an error rate over a sliding window). Open refuses everything
//! until `until_ms`. HalfOpen admits at most `half_open_probes` requests at a
//! time, each tagged with the episode (`since_ms`) it belongs to, so a late
//! answer from an earlier episode cannot close or reopen the current one.

use serde::{Deserialize, Serialize};

use crate::outcome::Observation;

/// The thresholds and times that drive transitions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Policy {
    /// Open after this many failures in a row; 0 turns the rule off.
    pub(crate) consecutive_failures: u32,
    /// Open when the failure rate reaches a percentage, if configured.
    pub(crate) error_rate: Option<ErrorRate>,
    /// How long Open refuses requests.
    pub(crate) cooldown_ms: u64,
    /// Probes HalfOpen admits, and successes it needs to close.
    pub(crate) half_open_probes: u32,
    /// How long HalfOpen waits for its probes to report before it starts a
    /// new episode (a probe's answer can be lost, e.g. if its instance trapped).
    pub(crate) probe_timeout_ms: u64,
}

/// The error-rate rule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct ErrorRate {
    /// 1–100.
    pub(crate) percent: u32,
    pub(crate) window_ms: u64,
    /// The rule is silent until the window has seen this many requests.
    pub(crate) min_requests: u32,
}

impl Policy {
    /// TTL of every stored circuit, refreshed on each write. Long enough that
    /// no Open or HalfOpen state and no live window can expire early; idle
    /// upstreams (e.g. removed from the config) then vanish after an hour.
    pub(crate) fn idle_ttl_ms(&self) -> u64 {
        let window = self.error_rate.map_or(0, |r| 2 * r.window_ms);
        (window + self.cooldown_ms + self.probe_timeout_ms).max(3_600_000)
    }
}

/// The state stored per upstream (or route). A missing key is a fresh
/// `Closed`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum Circuit {
    Closed {
        consecutive_failures: u32,
        window: Window,
    },
    Open {
        until_ms: u64,
    },
    HalfOpen {
        /// When this episode began; also its identity in probe tags.
        since_ms: u64,
        /// Probes admitted and not released (in flight or succeeded).
        admitted: u32,
        successes: u32,
    },
}

impl Default for Circuit {
    fn default() -> Circuit {
        Circuit::Closed {
            consecutive_failures: 0,
            window: Window::default(),
        }
    }
}

impl Circuit {
    /// The state's name, for logs, metrics and headers.
    pub(crate) fn name(&self) -> &'static str {
        match self {
            Circuit::Closed { .. } => "closed",
            Circuit::Open { .. } => "open",
            Circuit::HalfOpen { .. } => "half_open",
        }
    }
}

/// Request and failure counts of the current fixed window and the one before.
/// The rate is estimated over a window sliding with `now` by weighting the
/// previous window by the part of it still covered — two counters instead
/// of a log of every request.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Window {
    start_ms: u64,
    requests: u32,
    failures: u32,
    prev_requests: u32,
    prev_failures: u32,
}

impl Window {
    /// The window as of `now`: moved on by whole windows, with counts that
    /// fell out of reach dropped. Window starts are multiples of `len`, so
    /// every instance agrees on them.
    fn rolled(self, now: u64, len: u64) -> Window {
        if now < self.start_ms.saturating_add(len) {
            return self;
        }
        if now < self.start_ms.saturating_add(2 * len) {
            return Window {
                start_ms: self.start_ms + len,
                requests: 0,
                failures: 0,
                prev_requests: self.requests,
                prev_failures: self.failures,
            };
        }
        Window {
            start_ms: now - now % len,
            ..Window::default()
        }
    }

    fn record(self, failed: bool) -> Window {
        Window {
            requests: self.requests.saturating_add(1),
            failures: self.failures.saturating_add(u32::from(failed)),
            ..self
        }
    }

    /// (requests, failures) over the sliding window ending at `now`, both
    /// multiplied by `len` to stay in integers.
    fn weighted(&self, now: u64, len: u64) -> (u128, u128) {
        let into = now.saturating_sub(self.start_ms).min(len);
        let prev_weight = u128::from(len - into);
        let len = u128::from(len);
        (
            u128::from(self.prev_requests) * prev_weight + u128::from(self.requests) * len,
            u128::from(self.prev_failures) * prev_weight + u128::from(self.failures) * len,
        )
    }
}

/// What `on-request` should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Admission {
    /// Let the request through; nothing to store.
    Pass,
    /// Store `next`, then let the request through as a probe of `episode`.
    Probe { episode: u64, next: Circuit },
    /// Refuse the request; the circuit may admit traffic again in this long.
    Reject { retry_after_ms: u64 },
}

/// Decide on a request arriving at `now` while the circuit is `current`.
pub(crate) fn admit(policy: &Policy, current: &Circuit, now: u64) -> Admission {
    match *current {
        Circuit::Closed { .. } => Admission::Pass,
        Circuit::Open { until_ms } if now < until_ms => Admission::Reject {
            retry_after_ms: until_ms - now,
        },
        Circuit::Open { .. } => new_episode(now),
        Circuit::HalfOpen {
            since_ms,
            admitted,
            successes,
        } => {
            if admitted < policy.half_open_probes {
                Admission::Probe {
                    episode: since_ms,
                    next: Circuit::HalfOpen {
                        since_ms,
                        admitted: admitted + 1,
                        successes,
                    },
                }
            } else {
                let deadline = since_ms.saturating_add(policy.probe_timeout_ms);
                if now >= deadline {
                    // The probes never all reported: start over rather than
                    // stay half-open for ever.
                    new_episode(now)
                } else {
                    Admission::Reject {
                        retry_after_ms: deadline - now,
                    }
                }
            }
        }
    }
}

fn new_episode(now: u64) -> Admission {
    Admission::Probe {
        episode: now,
        next: Circuit::HalfOpen {
            since_ms: now,
            admitted: 1,
            successes: 0,
        },
    }
}

/// The circuit after an upstream call that ended at `now` with `observation`;
/// `probe` is the episode the request was admitted to probe, if it was a
/// probe. `None` means "no change, write nothing".
pub(crate) fn observe(
    policy: &Policy,
    current: &Circuit,
    now: u64,
    observation: Observation,
    probe: Option<u64>,
) -> Option<Circuit> {
    match *current {
        Circuit::Closed {
            consecutive_failures,
            window,
        } => observe_closed(policy, consecutive_failures, window, now, observation),
        // Answers to requests admitted before the circuit opened say nothing
        // new: the circuit already decided.
        Circuit::Open { .. } => None,
        Circuit::HalfOpen {
            since_ms,
            admitted,
            successes,
        } => {
            // Only this episode's probes decide it.
            if probe != Some(since_ms) {
                return None;
            }
            Some(match observation {
                // The probe told nothing: free its slot for another request.
                Observation::Neutral => Circuit::HalfOpen {
                    since_ms,
                    admitted: admitted.saturating_sub(1),
                    successes,
                },
                Observation::Failure => Circuit::Open {
                    until_ms: now.saturating_add(policy.cooldown_ms),
                },
                Observation::Success if successes + 1 >= policy.half_open_probes => {
                    Circuit::default()
                }
                Observation::Success => Circuit::HalfOpen {
                    since_ms,
                    admitted,
                    successes: successes + 1,
                },
            })
        }
    }
}

fn observe_closed(
    policy: &Policy,
    consecutive: u32,
    window: Window,
    now: u64,
    observation: Observation,
) -> Option<Circuit> {
    let failed = match observation {
        Observation::Neutral => return None,
        // Nothing to reset and no window to count into: skip the write, so
        // a healthy upstream costs one read per request.
        Observation::Success if consecutive == 0 && policy.error_rate.is_none() => return None,
        Observation::Success => false,
        Observation::Failure => true,
    };
    let window = match policy.error_rate {
        Some(rate) => window.rolled(now, rate.window_ms).record(failed),
        None => window,
    };
    let consecutive = if failed {
        consecutive.saturating_add(1)
    } else {
        0
    };
    let trips_consecutive =
        policy.consecutive_failures > 0 && consecutive >= policy.consecutive_failures;
    let trips_rate = failed
        && policy.error_rate.is_some_and(|rate| {
            let (requests, failures) = window.weighted(now, rate.window_ms);
            requests >= u128::from(rate.min_requests) * u128::from(rate.window_ms)
                && failures * 100 >= u128::from(rate.percent) * requests
        });
    Some(if trips_consecutive || trips_rate {
        Circuit::Open {
            until_ms: now.saturating_add(policy.cooldown_ms),
        }
    } else {
        Circuit::Closed {
            consecutive_failures: consecutive,
            window,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use Observation::{Failure, Neutral, Success};

    const T0: u64 = 1_700_000_000_000;

    fn policy() -> Policy {
        Policy {
            consecutive_failures: 5,
            error_rate: None,
            cooldown_ms: 30_000,
            half_open_probes: 1,
            probe_timeout_ms: 30_000,
        }
    }

    fn rate_policy(percent: u32, min_requests: u32) -> Policy {
        Policy {
            consecutive_failures: 0,
            error_rate: Some(ErrorRate {
                percent,
                window_ms: 10_000,
                min_requests,
            }),
            ..policy()
        }
    }

    /// Feed outcomes (all at `now`, not probes) and return the final circuit.
    fn feed(p: &Policy, mut c: Circuit, now: u64, outcomes: &[Observation]) -> Circuit {
        for &o in outcomes {
            if let Some(next) = observe(p, &c, now, o, None) {
                c = next;
            }
        }
        c
    }

    fn open_at(p: &Policy, now: u64) -> Circuit {
        let c = feed(p, Circuit::default(), now, &[Failure; 5]);
        assert_eq!(c.name(), "open");
        c
    }

    #[test]
    fn closed_stays_closed_below_threshold() {
        let p = policy();
        let c = feed(&p, Circuit::default(), T0, &[Failure; 4]);
        assert_eq!(
            c,
            Circuit::Closed {
                consecutive_failures: 4,
                window: Window::default()
            }
        );
        assert_eq!(admit(&p, &c, T0), Admission::Pass);
    }

    #[test]
    fn closed_opens_at_consecutive_failures() {
        let p = policy();
        let c = feed(&p, Circuit::default(), T0, &[Failure; 5]);
        assert_eq!(
            c,
            Circuit::Open {
                until_ms: T0 + 30_000
            }
        );
    }

    #[test]
    fn success_resets_consecutive_count() {
        let p = policy();
        let mut outcomes = vec![Failure; 4];
        outcomes.push(Success);
        outcomes.extend([Failure; 4]);
        let c = feed(&p, Circuit::default(), T0, &outcomes);
        assert_eq!(c.name(), "closed");
    }

    #[test]
    fn neutral_neither_counts_nor_resets() {
        let p = policy();
        let mut outcomes = vec![Failure; 4];
        outcomes.extend([Neutral; 10]);
        outcomes.push(Failure);
        let c = feed(&p, Circuit::default(), T0, &outcomes);
        assert_eq!(c.name(), "open");
    }

    #[test]
    fn healthy_success_writes_nothing() {
        let p = policy();
        assert_eq!(observe(&p, &Circuit::default(), T0, Success, None), None);
        assert_eq!(observe(&p, &Circuit::default(), T0, Neutral, None), None);
    }

    #[test]
    fn open_rejects_until_cooldown() {
        let p = policy();
        let c = open_at(&p, T0);
        assert_eq!(
            admit(&p, &c, T0 + 1),
            Admission::Reject {
                retry_after_ms: 29_999
            }
        );
        assert_eq!(
            admit(&p, &c, T0 + 29_999),
            Admission::Reject { retry_after_ms: 1 }
        );
    }

    #[test]
    fn open_ignores_outcomes() {
        let p = policy();
        let c = open_at(&p, T0);
        assert_eq!(observe(&p, &c, T0 + 5, Success, None), None);
        assert_eq!(observe(&p, &c, T0 + 5, Failure, None), None);
    }

    #[test]
    fn cooldown_elapsed_admits_one_probe() {
        let p = policy();
        let c = open_at(&p, T0);
        let now = T0 + 30_000;
        let Admission::Probe { episode, next } = admit(&p, &c, now) else {
            panic!("expected a probe");
        };
        assert_eq!(episode, now);
        assert_eq!(
            next,
            Circuit::HalfOpen {
                since_ms: now,
                admitted: 1,
                successes: 0
            }
        );
        // The slot is taken: the next request is refused until the probe
        // reports or times out.
        assert_eq!(
            admit(&p, &next, now + 10),
            Admission::Reject {
                retry_after_ms: 29_990
            }
        );
    }

    #[test]
    fn half_open_admits_exactly_k_probes() {
        let p = Policy {
            half_open_probes: 3,
            ..policy()
        };
        let mut c = Circuit::Open { until_ms: T0 };
        let mut probes = 0;
        for i in 0..10 {
            match admit(&p, &c, T0 + i) {
                Admission::Probe { next, episode } => {
                    assert_eq!(episode, T0);
                    c = next;
                    probes += 1;
                }
                Admission::Reject { .. } => {}
                Admission::Pass => panic!("half-open passed a request unprobed"),
            }
        }
        assert_eq!(probes, 3);
    }

    #[test]
    fn half_open_closes_after_k_successes() {
        let p = Policy {
            half_open_probes: 2,
            ..policy()
        };
        let c = Circuit::HalfOpen {
            since_ms: T0,
            admitted: 2,
            successes: 0,
        };
        let c = observe(&p, &c, T0 + 1, Success, Some(T0)).unwrap();
        assert_eq!(c.name(), "half_open");
        let c = observe(&p, &c, T0 + 2, Success, Some(T0)).unwrap();
        assert_eq!(c, Circuit::default());
    }

    #[test]
    fn half_open_reopens_on_probe_failure() {
        let p = Policy {
            half_open_probes: 3,
            ..policy()
        };
        let c = Circuit::HalfOpen {
            since_ms: T0,
            admitted: 3,
            successes: 2,
        };
        let c = observe(&p, &c, T0 + 7, Failure, Some(T0)).unwrap();
        assert_eq!(
            c,
            Circuit::Open {
                until_ms: T0 + 7 + 30_000
            }
        );
    }

    #[test]
    fn half_open_ignores_non_probes_and_stale_probes() {
        let p = policy();
        let c = Circuit::HalfOpen {
            since_ms: T0,
            admitted: 1,
            successes: 0,
        };
        assert_eq!(observe(&p, &c, T0 + 1, Failure, None), None);
        assert_eq!(observe(&p, &c, T0 + 1, Failure, Some(T0 - 60_000)), None);
        assert_eq!(observe(&p, &c, T0 + 1, Success, Some(T0 - 60_000)), None);
    }

    #[test]
    fn neutral_probe_frees_its_slot() {
        let p = policy();
        let c = Circuit::HalfOpen {
            since_ms: T0,
            admitted: 1,
            successes: 0,
        };
        let c = observe(&p, &c, T0 + 1, Neutral, Some(T0)).unwrap();
        assert!(matches!(
            admit(&p, &c, T0 + 2),
            Admission::Probe { episode: T0, .. }
        ));
    }

    #[test]
    fn lost_probe_times_out_into_new_episode() {
        let p = policy();
        let c = Circuit::HalfOpen {
            since_ms: T0,
            admitted: 1,
            successes: 0,
        };
        let later = T0 + 30_000;
        let Admission::Probe { episode, next } = admit(&p, &c, later) else {
            panic!("expected a fresh probe");
        };
        assert_eq!(episode, later);
        // The lost probe's late answer belongs to the old episode.
        assert_eq!(observe(&p, &next, later + 1, Success, Some(T0)), None);
        assert_eq!(
            observe(&p, &next, later + 1, Success, Some(later)),
            Some(Circuit::default())
        );
    }

    #[test]
    fn full_cycle_closed_open_half_open_closed() {
        let p = policy();
        let c = open_at(&p, T0);
        assert!(matches!(admit(&p, &c, T0 + 100), Admission::Reject { .. }));
        let Admission::Probe { episode, next } = admit(&p, &c, T0 + 30_000) else {
            panic!("expected a probe");
        };
        let c = observe(&p, &next, T0 + 30_050, Failure, Some(episode)).unwrap();
        assert_eq!(
            c,
            Circuit::Open {
                until_ms: T0 + 60_050
            }
        );
        let Admission::Probe { episode, next } = admit(&p, &c, T0 + 60_050) else {
            panic!("expected a probe");
        };
        let c = observe(&p, &next, T0 + 60_060, Success, Some(episode)).unwrap();
        assert_eq!(c, Circuit::default());
        assert_eq!(admit(&p, &c, T0 + 60_061), Admission::Pass);
    }

    #[test]
    fn error_rate_needs_min_requests() {
        let p = rate_policy(50, 10);
        let c = feed(&p, Circuit::default(), T0, &[Failure; 9]);
        assert_eq!(c.name(), "closed");
        let c = feed(&p, c, T0, &[Failure]);
        assert_eq!(c.name(), "open");
    }

    #[test]
    fn error_rate_opens_at_percentage() {
        let p = rate_policy(50, 10);
        // 6 successes then 5 failures: 5/11 < 50%, closed.
        let mut outcomes = vec![Success; 6];
        outcomes.extend([Failure; 5]);
        let c = feed(&p, Circuit::default(), T0, &outcomes);
        assert_eq!(c.name(), "closed");
        // One more failure: 6/12 = 50%, open.
        let c = feed(&p, c, T0, &[Failure]);
        assert_eq!(c.name(), "open");
    }

    #[test]
    fn error_rate_forgets_old_windows() {
        let p = rate_policy(50, 10);
        let c = feed(&p, Circuit::default(), T0, &[Failure; 9]);
        // Two whole windows later the failures are gone; 9 more are not
        // enough requests on their own.
        let c = feed(&p, c, T0 + 20_000, &[Failure; 9]);
        assert_eq!(c.name(), "closed");
    }

    #[test]
    fn sliding_window_weights_previous_window() {
        let len = 10_000;
        let w = Window::default().rolled(T0, len);
        let start = w.start_ms;
        let w = (0..10).fold(w, |w, _| w.record(true));
        // Halfway into the next window, the previous one counts half.
        let w = w.rolled(start + len + len / 2, len);
        let (requests, failures) = w.weighted(start + len + len / 2, len);
        assert_eq!(requests, 5 * u128::from(len));
        assert_eq!(failures, 5 * u128::from(len));
        // At the end of it, nothing of the previous window is left.
        assert_eq!(w.weighted(start + 2 * len, len), (0, 0));
    }

    #[test]
    fn rate_success_is_counted_in_window() {
        let p = rate_policy(50, 10);
        let c = observe(&p, &Circuit::default(), T0, Success, None).unwrap();
        let Circuit::Closed { window, .. } = c else {
            panic!("expected closed");
        };
        assert_eq!(window.requests, 1);
        assert_eq!(window.failures, 0);
    }

    #[test]
    fn either_rule_opens() {
        let p = Policy {
            consecutive_failures: 3,
            ..rate_policy(90, 100)
        };
        let c = feed(&p, Circuit::default(), T0, &[Failure; 3]);
        assert_eq!(c.name(), "open");
    }

    #[test]
    fn circuit_serialises_readably() {
        let c = Circuit::Open { until_ms: 5 };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"state":"open","until_ms":5}"#
        );
        let c = Circuit::HalfOpen {
            since_ms: 1,
            admitted: 2,
            successes: 0,
        };
        let back: Circuit = serde_json::from_str(&serde_json::to_string(&c).unwrap()).unwrap();
        assert_eq!(back, c);
    }

    #[test]
    fn ttl_outlives_every_timer() {
        let p = Policy {
            cooldown_ms: 86_400_000,
            ..rate_policy(50, 10)
        };
        assert!(p.idle_ttl_ms() > p.cooldown_ms + p.probe_timeout_ms);
        assert_eq!(policy().idle_ttl_ms(), 3_600_000);
    }
}
