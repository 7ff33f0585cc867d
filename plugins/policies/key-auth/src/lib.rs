//! Policy plugin: authenticates requests by API key and forwards the consumer's
//! name upstream.
//!
//! The key comes from a header (default `x-api-key`) or, when that is absent and
//! `query_param` is configured, from the query string. A known key continues the
//! request with `x-wicket-consumer: <consumer>`; anything else is answered with
//! 401 and `WWW-Authenticate: ApiKey realm="wicket"`. There is no fail-open mode:
//! this plugin touches no shared state, so nothing can fail but the key itself.
//! Configuration reference: `docs/plugins/key-auth.md`.

mod config;
mod keys;

use wicket_plugin_sdk::{
    export_plugin, metrics, query_without, span, Hooks, Plugin, Request, RequestAction,
    RequestPatch, Response,
};

use crate::config::Config;
use crate::keys::KeyTable;

/// One route's key-auth policy, immutable after `init`.
struct KeyAuth {
    keys: KeyTable,
    header: String,
    query_param: Option<String>,
    strip_key: bool,
    consumer_header: String,
}

/// What `authenticate` decided, for the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    MissingKey,
    InvalidKey,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::MissingKey => "missing_key",
            Outcome::InvalidKey => "invalid_key",
        }
    }
}

impl KeyAuth {
    fn from_config(config: Config) -> KeyAuth {
        KeyAuth {
            keys: KeyTable::new(config.keys.iter().map(|(k, c)| (k.as_str(), c.as_str()))),
            header: config.header,
            query_param: config.query_param,
            strip_key: config.strip_key,
            consumer_header: config.consumer_header,
        }
    }

    /// The decision for one request; no host imports, so it is unit-tested as is.
    fn authenticate(&self, request: &Request) -> (RequestAction, Outcome) {
        let Some(key) = self.presented_key(request) else {
            let response = unauthorized("missing_api_key", "an API key is required");
            return (RequestAction::Respond(response), Outcome::MissingKey);
        };
        let Some(consumer) = self.keys.consumer(&key) else {
            let response = unauthorized("invalid_api_key", "the API key is not valid");
            return (RequestAction::Respond(response), Outcome::InvalidKey);
        };
        // A client-supplied consumer header is removed first so that upstreams
        // can trust the one they receive (remove is applied before set).
        let mut patch = RequestPatch::default().remove_header(&self.consumer_header);
        if self.strip_key {
            // Every copy the request carries goes, not only the one that
            // authenticated it: a second key in the query would otherwise
            // reach the upstream (and its logs).
            if request.header(&self.header).is_some() {
                patch = patch.remove_header(&self.header);
            }
            if let (Some(param), Some(query)) = (&self.query_param, request.query()) {
                if request.query_param(param).is_some() {
                    patch = patch.query(query_without(query, param));
                }
            }
        }
        patch = patch.set_header(&self.consumer_header, consumer);
        (RequestAction::Continue(patch), Outcome::Allowed)
    }

    fn presented_key(&self, request: &Request) -> Option<Vec<u8>> {
        if let Some(value) = request.header(&self.header) {
            let value = value.trim_ascii();
            if !value.is_empty() {
                return Some(value.to_vec());
            }
        }
        let raw = request.query_param(self.query_param.as_deref()?)?;
        let value = percent_decode(raw);
        (!value.is_empty()).then_some(value)
    }
}

impl Plugin for KeyAuth {
    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn init(config: &str) -> Result<Self, String> {
        Config::parse(config).map(KeyAuth::from_config)
    }

    fn on_request(&self, request: &Request) -> RequestAction {
        let (action, outcome) = self.authenticate(request);
        metrics::counter_add(
            "auth_decisions",
            &[metrics::Label {
                name: "outcome".into(),
                value: outcome.label().into(),
            }],
            1,
        );
        // In the request's trace (when it is recorded), the hook's span says
        // what the key came to.
        if span::recording() {
            span::set_attribute("key_auth.outcome", outcome.label());
            if !matches!(outcome, Outcome::Allowed) {
                let reason = span::Attribute {
                    key: "reason".into(),
                    value: outcome.label().into(),
                };
                span::add_event("api key refused", &[reason]);
            }
        }
        action
    }
}

/// The 401 refusal: a JSON body plus the challenge naming this scheme.
fn unauthorized(code: &str, message: &str) -> Response {
    Response::json_error(401, code, message)
        .with_header("www-authenticate", r#"ApiKey realm="wicket""#)
}

/// Decode `%XX` escapes; anything malformed is kept as written.
fn percent_decode(raw: &str) -> Vec<u8> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escaped = (bytes[i] == b'%')
            .then(|| bytes.get(i + 1..i + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    out
}

export_plugin!(KeyAuth);

#[cfg(test)]
mod tests {
    use super::*;
    use wicket_plugin_sdk::{header, Header, RequestHead};

    fn plugin(config: &str) -> KeyAuth {
        KeyAuth::init(config).unwrap()
    }

    fn request(headers: &[(&str, &str)], query: Option<&str>) -> Request<'static> {
        Request::from_head(RequestHead {
            method: "GET".into(),
            scheme: "http".into(),
            authority: "example.test".into(),
            path: "/api/items".into(),
            query: query.map(str::to_string),
            headers: headers.iter().map(|(n, v)| header(n, v)).collect(),
            client_addr: "192.0.2.1:50000".into(),
            route: "api".into(),
            params: Vec::new(),
            upstream: "backend".into(),
        })
    }

    fn continued(action: RequestAction) -> RequestPatch {
        match action {
            RequestAction::Continue(patch) => patch,
            RequestAction::Respond(r) => panic!("expected continue, got {}", r.status),
        }
    }

    fn refused(action: RequestAction) -> Response {
        match action {
            RequestAction::Respond(response) => response,
            RequestAction::Continue(_) => panic!("expected a refusal"),
        }
    }

    fn header_value<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| std::str::from_utf8(&h.value).unwrap())
    }

    const KEYS: &str = r#"{"keys": {"s3cret-a": "alice", "s3cret-b": "bob"}"#;

    #[test]
    fn known_key_forwards_consumer_and_strips_key() {
        let p = plugin(&format!("{KEYS}}}"));
        let req = request(
            &[("x-api-key", "s3cret-b"), ("x-wicket-consumer", "admin")],
            None,
        );
        let (action, outcome) = p.authenticate(&req);
        assert_eq!(outcome, Outcome::Allowed);
        let patch = continued(action);
        assert_eq!(
            header_value(&patch.set_headers, "x-wicket-consumer"),
            Some("bob")
        );
        assert!(patch
            .remove_headers
            .contains(&"x-wicket-consumer".to_string()));
        assert!(patch.remove_headers.contains(&"x-api-key".to_string()));
        assert_eq!(patch.query, None, "a header key leaves the query alone");
    }

    #[test]
    fn known_key_kept_when_strip_key_is_off() {
        let p = plugin(&format!(r#"{KEYS}, "strip_key": false}}"#));
        let patch = continued(
            p.authenticate(&request(&[("x-api-key", "s3cret-a")], None))
                .0,
        );
        assert_eq!(patch.remove_headers, vec!["x-wicket-consumer".to_string()]);
        assert_eq!(
            header_value(&patch.set_headers, "x-wicket-consumer"),
            Some("alice")
        );
    }

    #[test]
    fn unknown_key_is_refused_with_challenge() {
        let p = plugin(&format!("{KEYS}}}"));
        let (action, outcome) = p.authenticate(&request(&[("x-api-key", "s3cret-c")], None));
        assert_eq!(outcome, Outcome::InvalidKey);
        let response = refused(action);
        assert_eq!(response.status, 401);
        assert_eq!(
            header_value(&response.headers, "www-authenticate"),
            Some(r#"ApiKey realm="wicket""#)
        );
        assert_eq!(
            header_value(&response.headers, "content-type"),
            Some("application/json")
        );
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["error"], "invalid_api_key");
        assert!(body["message"].is_string());
    }

    #[test]
    fn missing_key_is_refused() {
        let p = plugin(&format!("{KEYS}}}"));
        for req in [
            request(&[], None),
            request(&[("x-api-key", "  ")], None),
            // The query is ignored unless query_param is configured.
            request(&[], Some("api_key=s3cret-a")),
        ] {
            let (action, outcome) = p.authenticate(&req);
            assert_eq!(outcome, Outcome::MissingKey);
            let body: serde_json::Value = serde_json::from_slice(&refused(action).body).unwrap();
            assert_eq!(body["error"], "missing_api_key");
        }
    }

    #[test]
    fn query_param_mode_accepts_key_and_strips_it_from_the_query() {
        let p = plugin(&format!(r#"{KEYS}, "query_param": "api_key"}}"#));
        let req = request(&[], Some("page=2&api_key=s3cret-a"));
        let patch = continued(p.authenticate(&req).0);
        assert_eq!(
            header_value(&patch.set_headers, "x-wicket-consumer"),
            Some("alice")
        );
        assert_eq!(patch.path, None);
        assert_eq!(patch.query.as_deref(), Some("page=2"));
        assert_eq!(patch.remove_headers, vec!["x-wicket-consumer".to_string()]);

        // The key was the whole query: the query goes.
        let req = request(&[], Some("api_key=s3cret-a"));
        assert_eq!(continued(p.authenticate(&req).0).query.as_deref(), Some(""));
    }

    #[test]
    fn query_key_kept_when_strip_key_is_off() {
        let p = plugin(&format!(
            r#"{KEYS}, "query_param": "api_key", "strip_key": false}}"#
        ));
        let req = request(&[], Some("page=2&api_key=s3cret-a"));
        assert_eq!(continued(p.authenticate(&req).0).query, None);
    }

    #[test]
    fn query_param_mode_rejects_unknown_key() {
        let p = plugin(&format!(r#"{KEYS}, "query_param": "api_key"}}"#));
        let (_, outcome) = p.authenticate(&request(&[], Some("api_key=nope")));
        assert_eq!(outcome, Outcome::InvalidKey);
    }

    #[test]
    fn query_param_is_percent_decoded() {
        let p = plugin(r#"{"keys": {"a+b/c=": "alice"}, "query_param": "key"}"#);
        let patch = continued(p.authenticate(&request(&[], Some("key=a%2Bb%2Fc%3D"))).0);
        assert_eq!(
            header_value(&patch.set_headers, "x-wicket-consumer"),
            Some("alice")
        );
    }

    #[test]
    fn header_wins_over_query_param() {
        let p = plugin(&format!(r#"{KEYS}, "query_param": "api_key"}}"#));
        let req = request(
            &[("x-api-key", "s3cret-b")],
            Some("api_key=s3cret-a&page=2"),
        );
        let patch = continued(p.authenticate(&req).0);
        assert_eq!(
            header_value(&patch.set_headers, "x-wicket-consumer"),
            Some("bob")
        );
        // Both keys are stripped, not only the one that authenticated.
        assert!(patch.remove_headers.contains(&"x-api-key".to_string()));
        assert_eq!(patch.query.as_deref(), Some("page=2"));
    }

    #[test]
    fn custom_header_names_are_used() {
        let p = plugin(&format!(
            r#"{KEYS}, "header": "X-Key", "consumer_header": "x-consumer"}}"#
        ));
        let patch = continued(p.authenticate(&request(&[("x-key", "s3cret-a")], None)).0);
        assert_eq!(
            header_value(&patch.set_headers, "x-consumer"),
            Some("alice")
        );
        assert!(patch.remove_headers.contains(&"x-key".to_string()));
        assert!(patch.remove_headers.contains(&"x-consumer".to_string()));
    }

    #[test]
    fn percent_decode_keeps_malformed_escapes() {
        assert_eq!(percent_decode("a%2"), b"a%2");
        assert_eq!(percent_decode("%zz%41"), b"%zzA");
        assert_eq!(percent_decode("%e2%82%ac"), "€".as_bytes());
    }
}
