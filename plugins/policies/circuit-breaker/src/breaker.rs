//! The state machine applied to shared state: every transition is a
//! compare-and-swap, so concurrent instances agree on one circuit per key.
//! Generic over the [`Store`] so tests run it natively against memory.

use crate::machine::{admit, observe, Admission, Circuit, Policy};
use crate::outcome::Observation;
use wicket_plugin_sdk::transact::{transact, Step, Store, TxError};

/// A change of state, for logs and metrics.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Transition {
    pub(crate) from: &'static str,
    pub(crate) to: &'static str,
}

/// What `on-request` should do, with the transition it caused, if any.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Gate<E> {
    Pass,
    Probe {
        episode: u64,
        transition: Option<Transition>,
    },
    Reject {
        retry_after_ms: u64,
    },
    StateFailed(E),
}

/// A stored circuit, or a fresh one for a missing or unreadable value.
fn decode(value: Option<&[u8]>) -> Circuit {
    value
        .and_then(|v| serde_json::from_slice(v).ok())
        .unwrap_or_default()
}

fn encode(circuit: &Circuit) -> Vec<u8> {
    // Serialising a plain enum of integers cannot fail.
    serde_json::to_vec(circuit).unwrap_or_default()
}

fn transition(from: &Circuit, to: &Circuit) -> Option<Transition> {
    (from.name() != to.name()).then(|| Transition {
        from: from.name(),
        to: to.name(),
    })
}

/// Decide on a request for the circuit at `key`.
pub(crate) fn gate<S: Store>(policy: &Policy, store: &S, key: &str, now: u64) -> Gate<S::Error> {
    let result = transact(store, key, |value| {
        let current = decode(value);
        match admit(policy, &current, now) {
            Admission::Pass => Step::Keep(Gate::Pass),
            Admission::Reject { retry_after_ms } => Step::Keep(Gate::Reject { retry_after_ms }),
            Admission::Probe { episode, next } => Step::Write {
                value: encode(&next),
                ttl_ms: Some(policy.idle_ttl_ms()),
                then: Gate::Probe {
                    episode,
                    transition: transition(&current, &next),
                },
            },
        }
    });
    match result {
        Ok(gate) => gate,
        Err(TxError::State(e)) => Gate::StateFailed(e),
        // Only probe admissions write here, and probes are few by design:
        // losing every race means others took the slots, so refuse.
        Err(TxError::Contended) => Gate::Reject {
            retry_after_ms: 1000,
        },
    }
}

/// Record an upstream outcome against the circuit at `key`. Returns the
/// transition it caused, if any.
pub(crate) fn record<S: Store>(
    policy: &Policy,
    store: &S,
    key: &str,
    now: u64,
    observation: Observation,
    probe: Option<u64>,
) -> Result<Option<Transition>, TxError<S::Error>> {
    transact(store, key, |value| {
        let current = decode(value);
        match observe(policy, &current, now, observation, probe) {
            None => Step::Keep(None),
            Some(next) => Step::Write {
                value: encode(&next),
                ttl_ms: Some(policy.idle_ttl_ms()),
                then: transition(&current, &next),
            },
        }
    })
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Barrier;

    use super::*;
    use wicket_plugin_sdk::transact::memory::{MemoryStore, Unavailable};

    const T0: u64 = 1_700_000_000_000;
    const KEY: &str = "upstream:backend";

    fn policy(probes: u32) -> Policy {
        Policy {
            consecutive_failures: 5,
            error_rate: None,
            cooldown_ms: 30_000,
            half_open_probes: probes,
            probe_timeout_ms: 30_000,
        }
    }

    fn open(store: &MemoryStore, p: &Policy) {
        for _ in 0..5 {
            record(p, store, KEY, T0, Observation::Failure, None).unwrap();
        }
        assert!(matches!(gate(p, store, KEY, T0), Gate::Reject { .. }));
    }

    #[test]
    fn failures_open_the_shared_circuit() {
        let p = policy(1);
        let store = MemoryStore::default();
        for i in 0..4 {
            assert_eq!(
                record(&p, &store, KEY, T0 + i, Observation::Failure, None),
                Ok(None)
            );
        }
        assert_eq!(
            record(&p, &store, KEY, T0 + 4, Observation::Failure, None),
            Ok(Some(Transition {
                from: "closed",
                to: "open"
            }))
        );
        assert_eq!(
            gate(&p, &store, KEY, T0 + 5),
            Gate::Reject {
                retry_after_ms: 29_999
            }
        );
        // Another upstream is unaffected.
        assert_eq!(gate(&p, &store, "upstream:other", T0 + 5), Gate::Pass);
    }

    #[test]
    fn healthy_traffic_writes_nothing() {
        let p = policy(1);
        let store = MemoryStore::default();
        assert_eq!(gate(&p, &store, KEY, T0), Gate::Pass);
        record(&p, &store, KEY, T0, Observation::Success, None).unwrap();
        assert!(store.keys().is_empty());
    }

    #[test]
    fn concurrent_requests_admit_exactly_k_probes() {
        let p = policy(3);
        let store = MemoryStore::default();
        open(&store, &p);
        let probes = AtomicUsize::new(0);
        let start = Barrier::new(8);
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    start.wait();
                    for _ in 0..25 {
                        match gate(&p, &store, KEY, T0 + 30_000) {
                            Gate::Probe { .. } => {
                                probes.fetch_add(1, Ordering::SeqCst);
                            }
                            Gate::Reject { .. } => {}
                            other => panic!("unexpected {other:?}"),
                        }
                    }
                });
            }
        });
        assert_eq!(probes.load(Ordering::SeqCst), 3);
    }

    #[test]
    fn probe_success_closes_for_everyone() {
        let p = policy(1);
        let store = MemoryStore::default();
        open(&store, &p);
        let now = T0 + 30_000;
        let Gate::Probe {
            episode,
            transition,
        } = gate(&p, &store, KEY, now)
        else {
            panic!("expected a probe");
        };
        assert_eq!(
            transition,
            Some(Transition {
                from: "open",
                to: "half_open"
            })
        );
        assert!(matches!(
            gate(&p, &store, KEY, now + 1),
            Gate::Reject { .. }
        ));
        assert_eq!(
            record(
                &p,
                &store,
                KEY,
                now + 2,
                Observation::Success,
                Some(episode)
            ),
            Ok(Some(Transition {
                from: "half_open",
                to: "closed"
            }))
        );
        assert_eq!(gate(&p, &store, KEY, now + 3), Gate::Pass);
    }

    #[test]
    fn state_failure_is_reported() {
        let p = policy(1);
        let store = MemoryStore::default();
        store.down.store(true, Ordering::SeqCst);
        assert_eq!(gate(&p, &store, KEY, T0), Gate::StateFailed(Unavailable));
        assert_eq!(
            record(&p, &store, KEY, T0, Observation::Failure, None),
            Err(TxError::State(Unavailable))
        );
    }

    #[test]
    fn entries_carry_idle_ttl() {
        let p = policy(1);
        let store = MemoryStore::default();
        record(&p, &store, KEY, T0, Observation::Failure, None).unwrap();
        assert_eq!(store.ttl_of(KEY), Some(p.idle_ttl_ms()));
    }

    #[test]
    fn expired_circuit_is_closed() {
        let p = policy(1);
        let store = MemoryStore::default();
        open(&store, &p);
        store.remove(KEY);
        assert_eq!(gate(&p, &store, KEY, T0 + 1), Gate::Pass);
    }

    #[test]
    fn unreadable_value_counts_as_closed() {
        let p = policy(1);
        let store = MemoryStore::default();
        store.compare_and_swap(KEY, None, b"junk", None).unwrap();
        assert_eq!(gate(&p, &store, KEY, T0), Gate::Pass);
        record(&p, &store, KEY, T0, Observation::Failure, None).unwrap();
        let stored = store.get(KEY).unwrap().unwrap().value;
        assert_eq!(decode(Some(&stored)).name(), "closed");
    }
}
