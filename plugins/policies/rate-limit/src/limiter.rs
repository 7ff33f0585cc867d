//! One rate-limit decision: find the request's bucket, take a token in one
//! host call, and say what happened. Generic over [`Buckets`] so the same
//! code runs against the host and, in tests, a fake.

use wicket_plugin_sdk::{state, Request};

use crate::bucket::{Limit, Quota};
use crate::config::Config;
use crate::key::{identity, state_key};

/// The decision for one request, before it becomes HTTP.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict<E> {
    /// A token was taken.
    Allowed(Quota),
    /// The bucket is empty.
    Limited { quota: Quota, retry_after_ms: u64 },
    /// The request lacks the identity `key` asks for and `missing_key` is `deny`.
    KeyMissing,
    /// The state store failed.
    StateFailed(E),
}

/// Where the token buckets live.
pub(crate) trait Buckets {
    type Error;
    /// Take one token from the bucket under `key`.
    fn take(&self, key: &str, limit: &Limit) -> Result<state::Bucket, Self::Error>;
}

/// The host's shared state: `take-tokens`, atomic on its store.
pub(crate) struct HostBuckets;

impl Buckets for HostBuckets {
    type Error = state::StateError;

    fn take(&self, key: &str, limit: &Limit) -> Result<state::Bucket, state::StateError> {
        state::take_tokens(key, limit.rate, limit.period_ms, limit.burst, 1)
    }
}

/// Decide whether `request` may pass.
pub(crate) fn check<B: Buckets>(
    config: &Config,
    buckets: &B,
    request: &Request,
) -> Verdict<B::Error> {
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
    match buckets.take(&key, &config.limit) {
        Ok(b) if b.taken => Verdict::Allowed(Quota::of(&config.limit, &b)),
        Ok(b) => Verdict::Limited {
            quota: Quota::of(&config.limit, &b),
            retry_after_ms: b.retry_after_ms,
        },
        Err(e) => Verdict::StateFailed(e),
    }
}

#[cfg(test)]
mod tests {
    use std::cell::RefCell;
    use std::collections::HashMap;

    use wicket_plugin_sdk::{header, RequestHead};

    use super::*;

    /// Buckets that never refill (the host's arithmetic is tested in the
    /// host): which keys were used, and how many tokens each has left.
    #[derive(Default)]
    struct Fake {
        left: RefCell<HashMap<String, u64>>,
        down: bool,
    }

    impl Buckets for Fake {
        type Error = ();

        fn take(&self, key: &str, limit: &Limit) -> Result<state::Bucket, ()> {
            if self.down {
                return Err(());
            }
            let mut left = self.left.borrow_mut();
            let n = left.entry(key.to_string()).or_insert(limit.burst);
            let taken = *n > 0;
            *n -= u64::from(taken);
            Ok(state::Bucket {
                taken,
                remaining: *n,
                reset_ms: 1_000,
                retry_after_ms: if taken { 0 } else { 250 },
            })
        }
    }

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

    fn allowed(v: &Verdict<()>) -> bool {
        matches!(v, Verdict::Allowed(_))
    }

    #[test]
    fn clients_have_separate_buckets() {
        let cfg = config(r#"{"rate": 1, "burst": 2}"#);
        let b = Fake::default();
        let a = request("api", "192.0.2.1", &[]);
        let other = request("api", "192.0.2.2", &[]);
        assert!(allowed(&check(&cfg, &b, &a)));
        assert!(allowed(&check(&cfg, &b, &a)));
        assert!(!allowed(&check(&cfg, &b, &a)));
        assert!(allowed(&check(&cfg, &b, &other)));
    }

    #[test]
    fn routes_have_separate_buckets_unless_named() {
        let cfg = config(r#"{"rate": 1, "burst": 1, "key": "route"}"#);
        let b = Fake::default();
        let ip = "192.0.2.1";
        assert!(allowed(&check(&cfg, &b, &request("a", ip, &[]))));
        assert!(!allowed(&check(&cfg, &b, &request("a", ip, &[]))));
        assert!(allowed(&check(&cfg, &b, &request("b", ip, &[]))));
        let cfg = config(r#"{"rate": 1, "burst": 1, "key": "route", "bucket": "all"}"#);
        let b = Fake::default();
        assert!(allowed(&check(&cfg, &b, &request("a", ip, &[]))));
        assert!(!allowed(&check(&cfg, &b, &request("b", ip, &[]))));
    }

    #[test]
    fn consumers_are_limited_apart() {
        let cfg = config(r#"{"rate": 1, "burst": 1, "key": "consumer"}"#);
        let b = Fake::default();
        let alice = request("api", "192.0.2.1", &[("x-wicket-consumer", "alice")]);
        let bob = request("api", "192.0.2.1", &[("x-wicket-consumer", "bob")]);
        assert!(allowed(&check(&cfg, &b, &alice)));
        assert!(!allowed(&check(&cfg, &b, &alice)));
        assert!(allowed(&check(&cfg, &b, &bob)));
    }

    #[test]
    fn missing_consumer_denied_when_configured_without_touching_state() {
        let cfg = config(r#"{"rate": 1, "key": "consumer", "missing_key": "deny"}"#);
        let b = Fake::default();
        let v = check(&cfg, &b, &request("api", "192.0.2.1", &[]));
        assert_eq!(v, Verdict::KeyMissing);
        assert!(b.left.borrow().is_empty());
    }

    #[test]
    fn the_hosts_answer_becomes_the_verdict() {
        let cfg = config(r#"{"rate": 1, "burst": 1}"#);
        let b = Fake::default();
        let req = request("api", "192.0.2.1", &[]);
        let quota = |remaining| Quota {
            limit: 1,
            remaining,
            reset_ms: 1_000,
        };
        assert_eq!(check(&cfg, &b, &req), Verdict::Allowed(quota(0)));
        assert_eq!(
            check(&cfg, &b, &req),
            Verdict::Limited {
                quota: quota(0),
                retry_after_ms: 250
            }
        );
        let down = Fake {
            down: true,
            ..Fake::default()
        };
        assert_eq!(check(&cfg, &down, &req), Verdict::StateFailed(()));
    }
}
