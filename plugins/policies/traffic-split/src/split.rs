//! Choosing the side of the split: rules are tried in order, the first that
//! matches the request decides the upstream and the path. Pure functions of
//! the request and a per-request seed, so every case is unit-tested.

use wicket_plugin_sdk::Request;

use crate::config::TrafficSplit;
use crate::hash;
use crate::rewrite::Rewrite;

/// One routing rule. It matches when every condition it has holds; a rule
/// with no condition matches every request.
#[derive(Debug)]
pub(crate) struct Rule {
    pub(crate) header: Option<ValueMatch>,
    pub(crate) cookie: Option<ValueMatch>,
    /// Percent (0..=100) of the requests reaching this rule (and meeting its
    /// other conditions) that it takes.
    pub(crate) weight: Option<u8>,
    /// Where matching requests go; `None` keeps the route's upstream.
    pub(crate) upstream: Option<String>,
    /// Replaces the top-level rewrite for matching requests.
    pub(crate) rewrite: Option<Rewrite>,
    /// Salts this rule's weight buckets, so that two weighted rules roll
    /// independently. It is the upstream name (not the rule's position), so
    /// reordering rules does not move users across a running canary.
    pub(crate) salt: String,
}

/// A condition on a header or cookie: present, or equal to one of `values`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct ValueMatch {
    pub(crate) name: String,
    /// `None`: any value, the header or cookie only has to be present.
    pub(crate) values: Option<Vec<String>>,
}

/// What keeps a client on one side of a weighted split.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum StickyKey {
    ClientIp,
    Consumer,
    Header(String),
    Cookie(String),
}

/// The outcome of routing one request.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Decision<'a> {
    /// The upstream to send to instead of the route's, if any.
    pub(crate) upstream: Option<&'a str>,
    /// The new path, if it changes.
    pub(crate) path: Option<String>,
}

impl TrafficSplit {
    /// Route one request. `seed` is a per-request random value, used for
    /// weighted rules when there is no sticky key (or the request lacks it).
    pub(crate) fn route(&self, request: &Request, seed: u64) -> Decision<'_> {
        let sticky = self
            .sticky_key
            .as_ref()
            .and_then(|key| sticky_value(key, request, &self.consumer_header));
        let rule = self
            .rules
            .iter()
            .find(|rule| rule.matches(request, sticky.as_deref(), seed));
        let rewrite = rule
            .and_then(|r| r.rewrite.as_ref())
            .or(self.rewrite.as_ref());
        Decision {
            upstream: rule.and_then(|r| r.upstream.as_deref()),
            path: rewrite.and_then(|r| r.apply(request.path())),
        }
    }
}

impl Rule {
    fn matches(&self, request: &Request, sticky: Option<&[u8]>, seed: u64) -> bool {
        if let Some(m) = &self.header {
            if !m.matches_header(request) {
                return false;
            }
        }
        if let Some(m) = &self.cookie {
            if !m.matches_cookie(request) {
                return false;
            }
        }
        match self.weight {
            Some(weight) => {
                let bucket = match sticky {
                    Some(key) => hash::bucket(&self.salt, key),
                    None => hash::seed_bucket(&self.salt, seed),
                };
                bucket < weight
            }
            None => true,
        }
    }

    /// Whether this rule takes every request, leaving later rules unreachable.
    pub(crate) fn matches_all(&self) -> bool {
        self.header.is_none() && self.cookie.is_none() && self.weight.is_none_or(|w| w >= 100)
    }
}

impl ValueMatch {
    /// Any line of the header (a name may repeat) counts; values are compared
    /// byte for byte, as whole field values.
    fn matches_header(&self, request: &Request) -> bool {
        request
            .header_values(&self.name)
            .iter()
            .any(|v| self.accepts(v))
    }

    fn matches_cookie(&self, request: &Request) -> bool {
        request
            .cookie(&self.name)
            .is_some_and(|v| self.accepts(v.as_bytes()))
    }

    fn accepts(&self, value: &[u8]) -> bool {
        match &self.values {
            Some(values) => values.iter().any(|v| v.as_bytes() == value),
            None => true,
        }
    }
}

/// The request's sticky key, if it has a non-empty one.
fn sticky_value(key: &StickyKey, request: &Request, consumer_header: &str) -> Option<Vec<u8>> {
    let value = match key {
        StickyKey::ClientIp => Some(request.client_ip().as_bytes().to_vec()),
        StickyKey::Consumer => request.header(consumer_header),
        StickyKey::Header(name) => request.header(name),
        StickyKey::Cookie(name) => request.cookie(name).map(String::into_bytes),
    };
    value.filter(|v| !v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use wicket_plugin_sdk::{header, RequestHead};

    fn head(path: &str, headers: &[(&str, &str)]) -> RequestHead {
        RequestHead {
            method: "GET".to_string(),
            scheme: "http".to_string(),
            authority: "example.test".to_string(),
            path: path.to_string(),
            query: None,
            headers: headers.iter().map(|(n, v)| header(n, v)).collect(),
            client_addr: "192.0.2.10:51000".to_string(),
            route: "api".to_string(),
            params: Vec::new(),
            upstream: "stable".to_string(),
        }
    }

    fn request(path: &str, headers: &[(&str, &str)]) -> Request<'static> {
        Request::from_head(head(path, headers))
    }

    fn split(json: &str) -> TrafficSplit {
        TrafficSplit::from_json(json).unwrap()
    }

    fn upstream_of<'a>(s: &'a TrafficSplit, r: &Request, seed: u64) -> Option<&'a str> {
        s.route(r, seed).upstream
    }

    #[test]
    fn header_value_matches() {
        let s = split(
            r#"{"rules": [{"match": {"header": {"name": "X-Canary", "values": ["1", "yes"]}}, "upstream": "canary"}]}"#,
        );
        assert_eq!(
            upstream_of(&s, &request("/", &[("x-canary", "1")]), 0),
            Some("canary")
        );
        assert_eq!(
            upstream_of(&s, &request("/", &[("x-canary", "yes")]), 0),
            Some("canary")
        );
        // Any line of a repeated header.
        assert_eq!(
            upstream_of(
                &s,
                &request("/", &[("x-canary", "0"), ("x-canary", "1")]),
                0
            ),
            Some("canary")
        );
    }

    #[test]
    fn header_value_mismatches() {
        let s = split(
            r#"{"rules": [{"match": {"header": {"name": "x-canary", "value": "1"}}, "upstream": "canary"}]}"#,
        );
        assert_eq!(
            upstream_of(&s, &request("/", &[("x-canary", "0")]), 0),
            None
        );
        assert_eq!(
            upstream_of(&s, &request("/", &[("x-canary", "1, 1")]), 0),
            None
        );
        assert_eq!(upstream_of(&s, &request("/", &[("x-other", "1")]), 0), None);
        assert_eq!(upstream_of(&s, &request("/", &[]), 0), None);
    }

    #[test]
    fn header_presence_matches_any_value() {
        let s =
            split(r#"{"rules": [{"match": {"header": {"name": "x-beta"}}, "upstream": "beta"}]}"#);
        assert_eq!(
            upstream_of(&s, &request("/", &[("x-beta", "")]), 0),
            Some("beta")
        );
        assert_eq!(
            upstream_of(&s, &request("/", &[("x-beta", "anything")]), 0),
            Some("beta")
        );
        assert_eq!(upstream_of(&s, &request("/", &[]), 0), None);
    }

    #[test]
    fn cookie_value_matches() {
        let s = split(
            r#"{"rules": [{"match": {"cookie": {"name": "release", "value": "canary"}}, "upstream": "canary"}]}"#,
        );
        let r = request(
            "/",
            &[("cookie", "session=abc; release=canary; theme=dark")],
        );
        assert_eq!(upstream_of(&s, &r, 0), Some("canary"));
        let r = request("/", &[("cookie", "a=1"), ("cookie", "release=canary")]);
        assert_eq!(upstream_of(&s, &r, 0), Some("canary"));
    }

    #[test]
    fn cookie_value_mismatches() {
        let s = split(
            r#"{"rules": [{"match": {"cookie": {"name": "release", "value": "canary"}}, "upstream": "canary"}]}"#,
        );
        for cookie in ["release=stable", "xrelease=canary", "release=canary2", ""] {
            let r = request("/", &[("cookie", cookie)]);
            assert_eq!(upstream_of(&s, &r, 0), None, "{cookie}");
        }
        // The header of the same name is not a cookie.
        assert_eq!(
            upstream_of(&s, &request("/", &[("release", "canary")]), 0),
            None
        );
    }

    #[test]
    fn header_and_cookie_must_both_hold() {
        let s = split(
            r#"{"rules": [{"match": {"header": {"name": "x-a", "value": "1"}, "cookie": {"name": "b", "value": "2"}}, "upstream": "both"}]}"#,
        );
        assert_eq!(
            upstream_of(&s, &request("/", &[("x-a", "1"), ("cookie", "b=2")]), 0),
            Some("both")
        );
        assert_eq!(upstream_of(&s, &request("/", &[("x-a", "1")]), 0), None);
        assert_eq!(
            upstream_of(&s, &request("/", &[("cookie", "b=2")]), 0),
            None
        );
    }

    #[test]
    fn first_matching_rule_wins() {
        let s = split(
            r#"{"rules": [
                {"match": {"header": {"name": "x-canary", "value": "0"}}, "upstream": "stable-pinned"},
                {"match": {"header": {"name": "x-canary"}}, "upstream": "canary"},
                {"weight": 100, "upstream": "everyone-else"}
            ]}"#,
        );
        assert_eq!(
            upstream_of(&s, &request("/", &[("x-canary", "0")]), 0),
            Some("stable-pinned")
        );
        assert_eq!(
            upstream_of(&s, &request("/", &[("x-canary", "1")]), 0),
            Some("canary")
        );
        assert_eq!(
            upstream_of(&s, &request("/", &[]), 0),
            Some("everyone-else")
        );
    }

    /// Share of `n` distinct sticky keys that a `weight`% rule sends to canary.
    fn canary_share(weight: u8, n: usize) -> f64 {
        let s = split(&format!(
            r#"{{"sticky_key": "header:x-user", "rules": [{{"weight": {weight}, "upstream": "canary"}}]}}"#
        ));
        let hits = (0..n)
            .filter(|i| {
                let user = format!("user-{i}");
                upstream_of(&s, &request("/", &[("x-user", &user)]), 0).is_some()
            })
            .count();
        hits as f64 / n as f64
    }

    #[test]
    fn weights_split_many_keys_roughly_as_configured() {
        for weight in [1, 10, 25, 50, 90] {
            let share = canary_share(weight, 20_000);
            let expected = f64::from(weight) / 100.0;
            // 20 000 keys: the standard deviation is at most ~0.35 points.
            assert!((share - expected).abs() < 0.015, "weight {weight}: {share}");
        }
    }

    #[test]
    fn weight_bounds_are_exact() {
        assert_eq!(canary_share(0, 2_000), 0.0);
        assert_eq!(canary_share(100, 2_000), 1.0);
    }

    #[test]
    fn weights_split_per_request_seeds_roughly_as_configured() {
        let s = split(r#"{"rules": [{"weight": 30, "upstream": "canary"}]}"#);
        let r = request("/", &[]);
        let n = 20_000;
        // Consecutive seeds, as a monotonic clock gives: the hash must spread them.
        let hits = (0..n)
            .filter(|seed| upstream_of(&s, &r, 1_000_000 + seed * 1_000).is_some())
            .count();
        let share = hits as f64 / n as f64;
        assert!((share - 0.30).abs() < 0.015, "{share}");
    }

    #[test]
    fn sticky_key_keeps_a_client_on_one_side() {
        let s = split(
            r#"{"sticky_key": "cookie:uid", "rules": [{"weight": 50, "upstream": "canary"}]}"#,
        );
        for i in 0..200 {
            let cookie = format!("uid=u{i}");
            let r = request("/", &[("cookie", &cookie)]);
            let first = upstream_of(&s, &r, 0);
            // Whatever the per-request seed, the same key lands on the same side.
            for seed in [1, 7, 1 << 40, u64::MAX] {
                assert_eq!(upstream_of(&s, &r, seed), first, "{cookie}");
            }
        }
    }

    #[test]
    fn sticky_side_survives_a_weight_increase() {
        // Ramping a canary from 10% to 30% keeps the first 10% on canary.
        let at = |w: u8| {
            split(&format!(
                r#"{{"sticky_key": "consumer", "rules": [{{"weight": {w}, "upstream": "canary"}}]}}"#
            ))
        };
        let (low, high) = (at(10), at(30));
        for i in 0..1_000 {
            let user = format!("consumer-{i}");
            let r = request("/", &[("x-wicket-consumer", &user)]);
            if upstream_of(&low, &r, 0).is_some() {
                assert_eq!(upstream_of(&high, &r, 0), Some("canary"), "{user}");
            }
        }
    }

    #[test]
    fn sticky_by_client_ip_ignores_port() {
        let s = split(
            r#"{"sticky_key": "client_ip", "rules": [{"weight": 50, "upstream": "canary"}]}"#,
        );
        let at = |client_addr: String| {
            Request::from_head(RequestHead {
                client_addr,
                ..head("/", &[])
            })
        };
        for i in 0..100 {
            let a = at(format!("198.51.100.{i}:1000"));
            let b = at(format!("198.51.100.{i}:2000"));
            assert_eq!(upstream_of(&s, &a, 1), upstream_of(&s, &b, 2));
        }
    }

    #[test]
    fn missing_sticky_key_falls_back_to_seed() {
        let s = split(
            r#"{"sticky_key": "header:x-user", "rules": [{"weight": 50, "upstream": "canary"}]}"#,
        );
        let r = request("/", &[]);
        let canary = (0..1_000u64)
            .filter(|seed| upstream_of(&s, &r, *seed).is_some())
            .count();
        assert!((400..600).contains(&canary), "{canary}");
    }

    #[test]
    fn weighted_rules_roll_independently() {
        // The second rule takes 50% of what the first (10%) leaves: 45% overall.
        let s = split(
            r#"{"sticky_key": "header:x-user", "rules": [
                {"weight": 10, "upstream": "a"},
                {"weight": 50, "upstream": "b"}
            ]}"#,
        );
        let n = 20_000;
        let b = (0..n)
            .filter(|i| {
                let user = format!("user-{i}");
                upstream_of(&s, &request("/", &[("x-user", &user)]), 0) == Some("b")
            })
            .count();
        let share = b as f64 / n as f64;
        assert!((share - 0.45).abs() < 0.015, "{share}");
    }

    #[test]
    fn weight_applies_within_a_header_match() {
        let s = split(
            r#"{"sticky_key": "header:x-user", "rules": [
                {"match": {"header": {"name": "x-beta"}}, "weight": 100, "upstream": "beta"}
            ]}"#,
        );
        assert_eq!(upstream_of(&s, &request("/", &[("x-user", "u")]), 0), None);
        assert_eq!(
            upstream_of(&s, &request("/", &[("x-user", "u"), ("x-beta", "1")]), 0),
            Some("beta")
        );
    }

    #[test]
    fn rule_rewrite_replaces_top_level_rewrite() {
        let s = split(
            r#"{
                "rewrite": {"strip_prefix": "/api"},
                "rules": [{"match": {"header": {"name": "x-canary"}}, "upstream": "canary",
                           "rewrite": {"strip_prefix": "/api", "replace_prefix": "/v2"}}]
            }"#,
        );
        let canary = s.route(&request("/api/users", &[("x-canary", "1")]), 0);
        assert_eq!(
            canary,
            Decision {
                upstream: Some("canary"),
                path: Some("/v2/users".to_string())
            }
        );
        let stable = s.route(&request("/api/users", &[]), 0);
        assert_eq!(
            stable,
            Decision {
                upstream: None,
                path: Some("/users".to_string())
            }
        );
    }

    #[test]
    fn rule_without_rewrite_uses_top_level_rewrite() {
        let s = split(
            r#"{"rewrite": {"replace_prefix": "/internal"}, "rules": [{"weight": 100, "upstream": "canary"}]}"#,
        );
        assert_eq!(
            s.route(&request("/users", &[]), 0).path.as_deref(),
            Some("/internal/users")
        );
    }

    #[test]
    fn rewrite_only_rule_keeps_the_upstream() {
        let s = split(
            r#"{"rules": [{"match": {"header": {"name": "x-v2"}}, "rewrite": {"replace_prefix": "/v2"}}]}"#,
        );
        assert_eq!(
            s.route(&request("/users", &[("x-v2", "1")]), 0),
            Decision {
                upstream: None,
                path: Some("/v2/users".to_string())
            }
        );
        assert_eq!(
            s.route(&request("/users", &[]), 0),
            Decision {
                upstream: None,
                path: None
            }
        );
    }
}
