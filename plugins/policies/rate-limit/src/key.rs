//! Which bucket a request draws from: the state key built from the bucket's
//! scope (route or shared name), the limit, and the client identity.

use sha2::{Digest, Sha256};
use wicket_plugin_sdk::Request;

use crate::bucket::Limit;

/// What identifies a client, from the `key` config field.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum KeySource {
    /// The client's IP address (`client_ip`).
    ClientIp,
    /// The first value of a request header (`header:<name>`, name lower-cased).
    Header(String),
    /// The authenticated consumer, from `consumer_header` (`consumer`).
    Consumer,
    /// One bucket for every client of the scope (`route`).
    Route,
}

/// What happens to a request that lacks the identity `key` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum MissingKey {
    /// All such requests share one `anonymous` bucket.
    Anonymous,
    /// Each such client gets its own bucket by IP address.
    ClientIp,
    /// Refuse the request with 403.
    Deny,
}

/// The identity part of a state key, or `None` when the request must be refused.
pub(crate) fn identity(
    source: &KeySource,
    consumer_header: &str,
    missing: MissingKey,
    request: &Request,
) -> Option<String> {
    let value = match source {
        KeySource::ClientIp => return Some(client_ip_identity(request)),
        KeySource::Route => return Some("route".to_string()),
        KeySource::Header(name) => request
            .header(name)
            .filter(|v| !v.is_empty())
            // Header values are often credentials (API keys, tokens): only a
            // digest of them is kept in state, never the value itself.
            .map(|v| format!("h:{name}:{}", digest(&v))),
        KeySource::Consumer => request
            .header(consumer_header)
            .filter(|v| !v.is_empty())
            .map(|v| match std::str::from_utf8(&v) {
                Ok(name) if is_plain(name) => format!("c:{name}"),
                _ => format!("c#:{}", digest(&v)),
            }),
    };
    match (value, missing) {
        (Some(v), _) => Some(v),
        (None, MissingKey::Anonymous) => Some("anonymous".to_string()),
        (None, MissingKey::ClientIp) => Some(client_ip_identity(request)),
        (None, MissingKey::Deny) => None,
    }
}

fn client_ip_identity(request: &Request) -> String {
    format!("ip:{}", request.client_ip())
}

/// The state key of a bucket.
///
/// `scope` is the route name, or the configured `bucket` name when routes
/// share one. The limit is part of the key so that two rate-limit entries on
/// one route (say 10/s and 1000/h) keep separate buckets, and a changed limit
/// starts fresh instead of reinterpreting a bucket sized for the old one. The
/// scope is length-prefixed so no scope name can run into the next field.
pub(crate) fn state_key(scope: &str, limit: &Limit, identity: &str) -> String {
    format!(
        "{}:{scope}:{}/{}ms/{}:{identity}",
        scope.len(),
        limit.rate,
        limit.period_ms,
        limit.burst
    )
}

/// Whether a consumer name can go into a key as it is: short, printable ASCII.
fn is_plain(name: &str) -> bool {
    name.len() <= 128 && name.bytes().all(|b| b.is_ascii_graphic())
}

/// The first 128 bits of SHA-256, in hex: collision-free in practice, and
/// short enough for the host's 512-byte key limit.
fn digest(value: &[u8]) -> String {
    Sha256::digest(value)[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[cfg(test)]
mod tests {
    use wicket_plugin_sdk::{header, RequestHead};

    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request<'static> {
        Request::from_head(RequestHead {
            method: "GET".into(),
            scheme: "http".into(),
            authority: "example.test".into(),
            path: "/".into(),
            query: None,
            headers: headers.iter().map(|(n, v)| header(n, v)).collect(),
            client_addr: "192.0.2.7:51000".into(),
            route: "api".into(),
            params: vec![],
            upstream: "backend".into(),
        })
    }

    const CONSUMER: &str = "x-wicket-consumer";

    fn id(source: KeySource, missing: MissingKey, headers: &[(&str, &str)]) -> Option<String> {
        identity(&source, CONSUMER, missing, &request(headers))
    }

    #[test]
    fn client_ip_drops_port() {
        assert_eq!(
            id(KeySource::ClientIp, MissingKey::Deny, &[]).as_deref(),
            Some("ip:192.0.2.7")
        );
    }

    #[test]
    fn consumer_is_kept_readable() {
        assert_eq!(
            id(
                KeySource::Consumer,
                MissingKey::Deny,
                &[(CONSUMER, "alice")]
            )
            .as_deref(),
            Some("c:alice")
        );
    }

    #[test]
    fn odd_consumer_names_are_digested() {
        let key = id(KeySource::Consumer, MissingKey::Deny, &[(CONSUMER, "a b")]).unwrap();
        assert!(key.starts_with("c#:"), "{key}");
        assert_eq!(key.len(), 3 + 32);
    }

    #[test]
    fn header_values_are_digested() {
        let source = KeySource::Header("x-api-key".into());
        let a = id(
            source.clone(),
            MissingKey::Deny,
            &[("x-api-key", "secret-1")],
        )
        .unwrap();
        let b = id(source, MissingKey::Deny, &[("x-api-key", "secret-2")]).unwrap();
        assert!(!a.contains("secret"), "{a}");
        assert!(a.starts_with("h:x-api-key:"));
        assert_ne!(a, b);
    }

    #[test]
    fn missing_identity_follows_policy() {
        let source = KeySource::Consumer;
        assert_eq!(
            id(source.clone(), MissingKey::Anonymous, &[]).as_deref(),
            Some("anonymous")
        );
        assert_eq!(
            id(source.clone(), MissingKey::ClientIp, &[]).as_deref(),
            Some("ip:192.0.2.7")
        );
        assert_eq!(id(source.clone(), MissingKey::Deny, &[]), None);
        // An empty header is as good as none.
        assert_eq!(id(source, MissingKey::Deny, &[(CONSUMER, "")]), None);
    }

    #[test]
    fn anonymous_cannot_collide_with_a_consumer_named_anonymous() {
        let named = id(
            KeySource::Consumer,
            MissingKey::Anonymous,
            &[(CONSUMER, "anonymous")],
        );
        let missing = id(KeySource::Consumer, MissingKey::Anonymous, &[]);
        assert_ne!(named, missing);
    }

    #[test]
    fn state_key_separates_scopes_and_limits() {
        let l = Limit {
            rate: 10,
            burst: 20,
            period_ms: 1000,
        };
        assert_eq!(
            state_key("api", &l, "ip:1.2.3.4"),
            "3:api:10/1000ms/20:ip:1.2.3.4"
        );
        assert_ne!(state_key("a:b", &l, "c"), state_key("a", &l, "b:c"));
        let other = Limit { rate: 11, ..l };
        assert_ne!(state_key("api", &l, "x"), state_key("api", &other, "x"));
    }
}
