//! One rate-limit decision: find the request's bucket, take a token with a
//! compare-and-swap loop, and say what happened. Generic over the [`Store`]
//! so the same code runs against the host and, in tests, an in-memory store.

use wicket_plugin_sdk::Request;

use crate::bucket::{take, Bucket, Decision, Quota};
use crate::config::Config;
use crate::key::{identity, state_key};
use wicket_plugin_sdk::transact::{transact, Step, Store, TxError};

/// The decision for one request, before it becomes HTTP.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict<E> {
    /// A token was taken.
    Allowed(Quota),
    /// The bucket is empty.
    Limited { quota: Quota, retry_after_ms: u64 },
    /// Every compare-and-swap attempt lost to another writer.
    Contended,
    /// The request lacks the identity `key` asks for and `missing_key` is `deny`.
    KeyMissing,
    /// The state store failed.
    StateFailed(E),
}

/// Decide whether `request` may pass at `now_ms`.
pub(crate) fn check<S: Store>(
    config: &Config,
    store: &S,
    request: &Request,
    now_ms: u64,
) -> Verdict<S::Error> {
    let Some(identity) = identity(
        &config.key,
        &config.consumer_header,
        config.missing_key,
        request,
    ) else {
        return Verdict::KeyMissing;
    };
    let scope = config.bucket.as_deref().unwrap_or(request.route());
    let key = state_key(scope, &config.limit, &identity);
    let limit = &config.limit;
    let result = transact(store, &key, |current| {
        // A value this version cannot read (another layout) is replaced by a
        // fresh bucket; the swap still checks its version, so no write is lost.
        let stored = current.and_then(Bucket::decode);
        match take(limit, stored, now_ms) {
            Decision::Allowed { after, quota } => Step::Write {
                value: after.encode(),
                ttl_ms: Some(limit.ttl_ms()),
                then: Verdict::Allowed(quota),
            },
            // Refusing takes nothing, so there is nothing to write: the
            // decision holds as of the read. This also keeps a flood of
            // refused requests from contending on the key.
            Decision::Limited {
                quota,
                retry_after_ms,
            } => Step::Keep(Verdict::Limited {
                quota,
                retry_after_ms,
            }),
        }
    });
    match result {
        Ok(verdict) => verdict,
        Err(TxError::State(e)) => Verdict::StateFailed(e),
        Err(TxError::Contended) => Verdict::Contended,
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering;
    use std::sync::Barrier;

    use wicket_plugin_sdk::{header, RequestHead};

    use super::*;
    use wicket_plugin_sdk::transact::memory::{MemoryStore, Unavailable};

    const T0: u64 = 1_700_000_000_000;

    fn request(route: &str, ip: &str, headers: &[(&str, &str)]) -> Request<'static> {
        Request::from_head(RequestHead {
            method: "GET".into(),
            scheme: "http".into(),
            authority: "example.test".into(),
            path: "/".into(),
            query: None,
            headers: headers.iter().map(|(n, v)| header(n, v)).collect(),
            client_addr: format!("{ip}:40000"),
            route: route.into(),
            params: vec![],
            upstream: "backend".into(),
        })
    }

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    fn allowed(v: &Verdict<Unavailable>) -> bool {
        matches!(v, Verdict::Allowed(_))
    }

    #[test]
    fn concurrent_clients_get_exactly_the_limit() {
        // 8 clients x 50 requests at once against one bucket of 100 that does
        // not refill during the test: exactly 100 may pass.
        let cfg = config(r#"{"rate": 100, "period_seconds": 3600, "burst": 100, "key": "route"}"#);
        let store = MemoryStore::default();
        let start = Barrier::new(8);
        let allowed_total: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|client| {
                    let (cfg, store, start) = (&cfg, &store, &start);
                    s.spawn(move || {
                        let req = request("api", &format!("10.0.0.{client}"), &[]);
                        start.wait();
                        (0..50)
                            .filter(|_| {
                                let v = check(cfg, store, &req, T0);
                                assert!(
                                    matches!(v, Verdict::Allowed(_) | Verdict::Limited { .. }),
                                    "{v:?}"
                                );
                                allowed(&v)
                            })
                            .count()
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert_eq!(allowed_total, 100);
    }

    #[test]
    fn clients_have_separate_buckets() {
        let cfg = config(r#"{"rate": 1, "burst": 2}"#);
        let store = MemoryStore::default();
        let a = request("api", "192.0.2.1", &[]);
        let b = request("api", "192.0.2.2", &[]);
        assert!(allowed(&check(&cfg, &store, &a, T0)));
        assert!(allowed(&check(&cfg, &store, &a, T0)));
        assert!(!allowed(&check(&cfg, &store, &a, T0)));
        assert!(allowed(&check(&cfg, &store, &b, T0)));
    }

    #[test]
    fn routes_have_separate_buckets() {
        let cfg = config(r#"{"rate": 1, "burst": 1, "key": "route"}"#);
        let store = MemoryStore::default();
        let ip = "192.0.2.1";
        assert!(allowed(&check(&cfg, &store, &request("a", ip, &[]), T0)));
        assert!(!allowed(&check(&cfg, &store, &request("a", ip, &[]), T0)));
        assert!(allowed(&check(&cfg, &store, &request("b", ip, &[]), T0)));
    }

    #[test]
    fn named_bucket_is_shared_across_routes() {
        let cfg = config(r#"{"rate": 1, "burst": 1, "key": "route", "bucket": "all"}"#);
        let store = MemoryStore::default();
        let ip = "192.0.2.1";
        assert!(allowed(&check(&cfg, &store, &request("a", ip, &[]), T0)));
        assert!(!allowed(&check(&cfg, &store, &request("b", ip, &[]), T0)));
    }

    #[test]
    fn consumers_are_limited_apart() {
        let cfg = config(r#"{"rate": 1, "burst": 1, "key": "consumer"}"#);
        let store = MemoryStore::default();
        let alice = request("api", "192.0.2.1", &[("x-wicket-consumer", "alice")]);
        let bob = request("api", "192.0.2.1", &[("x-wicket-consumer", "bob")]);
        assert!(allowed(&check(&cfg, &store, &alice, T0)));
        assert!(!allowed(&check(&cfg, &store, &alice, T0)));
        assert!(allowed(&check(&cfg, &store, &bob, T0)));
    }

    #[test]
    fn missing_consumer_denied_when_configured() {
        let cfg = config(r#"{"rate": 1, "key": "consumer", "missing_key": "deny"}"#);
        let store = MemoryStore::default();
        let v = check(&cfg, &store, &request("api", "192.0.2.1", &[]), T0);
        assert_eq!(v, Verdict::KeyMissing);
        assert!(store.keys().is_empty());
    }

    #[test]
    fn refused_request_writes_nothing() {
        let cfg = config(r#"{"rate": 1, "burst": 1}"#);
        let store = MemoryStore::default();
        let req = request("api", "192.0.2.1", &[]);
        check(&cfg, &store, &req, T0);
        let key = store.keys().pop().unwrap();
        let before = store.get(&key).unwrap();
        assert!(!allowed(&check(&cfg, &store, &req, T0 + 10)));
        assert_eq!(store.get(&key).unwrap(), before);
    }

    #[test]
    fn refill_lets_client_back_in() {
        let cfg = config(r#"{"rate": 2, "burst": 1}"#);
        let store = MemoryStore::default();
        let req = request("api", "192.0.2.1", &[]);
        assert!(allowed(&check(&cfg, &store, &req, T0)));
        match check(&cfg, &store, &req, T0 + 100) {
            Verdict::Limited { retry_after_ms, .. } => assert_eq!(retry_after_ms, 400),
            other => panic!("expected a refusal, got {other:?}"),
        }
        assert!(allowed(&check(&cfg, &store, &req, T0 + 500)));
    }

    #[test]
    fn entries_get_time_to_fill_as_ttl() {
        let cfg = config(r#"{"rate": 10, "burst": 50}"#);
        let store = MemoryStore::default();
        check(&cfg, &store, &request("api", "192.0.2.1", &[]), T0);
        let key = store.keys().pop().unwrap();
        assert_eq!(store.ttl_of(&key), Some(5_000));
    }

    #[test]
    fn expired_entry_is_a_full_bucket() {
        let cfg = config(r#"{"rate": 1, "burst": 3}"#);
        let store = MemoryStore::default();
        let req = request("api", "192.0.2.1", &[]);
        for _ in 0..3 {
            check(&cfg, &store, &req, T0);
        }
        store.remove(&store.keys().pop().unwrap());
        match check(&cfg, &store, &req, T0 + 3_000) {
            Verdict::Allowed(q) => assert_eq!(q.remaining, 2),
            other => panic!("expected a token, got {other:?}"),
        }
    }

    #[test]
    fn unreadable_value_is_replaced() {
        let cfg = config(r#"{"rate": 1, "burst": 1, "key": "route"}"#);
        let store = MemoryStore::default();
        let req = request("api", "192.0.2.1", &[]);
        let key = state_key("api", &cfg.limit, "route");
        store.compare_and_swap(&key, None, b"junk", None).unwrap();
        assert!(allowed(&check(&cfg, &store, &req, T0)));
        assert!(!allowed(&check(&cfg, &store, &req, T0)));
    }

    #[test]
    fn state_failure_is_reported() {
        let cfg = config(r#"{"rate": 1}"#);
        let store = MemoryStore::default();
        store.down.store(true, Ordering::SeqCst);
        let v = check(&cfg, &store, &request("api", "192.0.2.1", &[]), T0);
        assert_eq!(v, Verdict::StateFailed(Unavailable));
    }
}
