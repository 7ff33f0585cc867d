//! Policy plugin: validates JWT bearer tokens and forwards selected claims
//! upstream.
//!
//! A request continues only with a token whose signature verifies with a
//! configured key under a configured algorithm, which has not expired and whose
//! issuer and audience are accepted. The consumer (the `sub` claim by default)
//! travels upstream in `x-wicket-consumer`. Anything else is answered with 401
//! and an RFC 6750 `WWW-Authenticate: Bearer` challenge. There is no fail-open
//! mode: validation needs no shared state, so nothing can fail but the token.
//! Configuration reference: `docs/plugins/jwt-auth.md`.

mod config;
mod keys;
mod source;
mod token;

use serde_json::{Map, Value};
use wicket_plugin_sdk::{
    clock, export_plugin, log, metrics, query_without, Hooks, Plugin, Request, RequestAction,
    RequestPatch, Response,
};

use crate::config::Settings;
use crate::source::TokenSource;
use crate::token::TokenError;

/// One route's JWT policy, immutable after `init`.
struct JwtAuth {
    settings: Settings,
}

/// What `authenticate` decided, for metrics and logs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    MissingToken,
    InvalidToken(TokenError),
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::MissingToken => "missing_token",
            Outcome::InvalidToken(_) => "invalid_token",
        }
    }
}

impl JwtAuth {
    /// The decision for one request at `now_ms`; no host imports, so it is
    /// unit-tested as is.
    fn authenticate(&self, request: &Request, now_ms: u64) -> (RequestAction, Outcome) {
        let Some(token) = self.settings.sources.iter().find_map(|s| s.token(request)) else {
            return (
                RequestAction::Respond(missing_token()),
                Outcome::MissingToken,
            );
        };
        match token::validate(&self.settings.rules, &token, now_ms) {
            Ok(claims) => (
                RequestAction::Continue(self.forward(&claims, request)),
                Outcome::Allowed,
            ),
            Err(error) => (
                RequestAction::Respond(invalid_token(error)),
                Outcome::InvalidToken(error),
            ),
        }
    }

    /// The patch for an accepted token: client-supplied copies of every header
    /// this plugin vouches for are removed first (remove is applied before set),
    /// so upstreams can trust what they receive.
    fn forward(&self, claims: &Map<String, Value>, request: &Request) -> RequestPatch {
        let s = &self.settings;
        let mut patch = RequestPatch::default().remove_header(&s.consumer_header);
        for (_, header) in &s.forward_claims {
            patch = patch.remove_header(header);
        }
        if s.strip_authorization {
            // Query and cookie sources are rewritten without the token, the
            // other parameters and cookies kept as they were.
            let mut query = request.query().map(str::to_string);
            let mut cookies: Option<Vec<String>> = None;
            for source in &s.sources {
                match source {
                    TokenSource::Header(name) => patch = patch.remove_header(name),
                    TokenSource::Query(name) => {
                        query = query.map(|q| query_without(&q, name));
                    }
                    TokenSource::Cookie(name) => {
                        let all = cookies.get_or_insert_with(|| request_cookies(request));
                        all.retain(|c| c.split('=').next().map(str::trim) != Some(name));
                    }
                }
            }
            if let Some(q) = query.filter(|q| Some(q.as_str()) != request.query()) {
                patch = patch.query(q);
            }
            if let Some(cookies) = cookies {
                patch = if cookies.is_empty() {
                    patch.remove_header("cookie")
                } else {
                    patch.set_header("cookie", cookies.join("; "))
                };
            }
        }
        if let Some(consumer) = claims.get(&s.consumer_claim).and_then(header_value) {
            patch = patch.set_header(&s.consumer_header, consumer);
        }
        for (claim, header) in &s.forward_claims {
            if let Some(value) = claims.get(claim).and_then(header_value) {
                patch = patch.set_header(header, value);
            }
        }
        patch
    }
}

/// Every cookie pair of the request's `cookie` header(s), trimmed.
fn request_cookies(request: &Request) -> Vec<String> {
    request
        .header_values("cookie")
        .iter()
        .filter_map(|v| std::str::from_utf8(v).ok())
        .flat_map(|v| v.split(';'))
        .map(str::trim)
        .filter(|c| !c.is_empty())
        .map(str::to_string)
        .collect()
}

/// A claim as header text: strings as they are, other values as compact JSON.
/// `null`, empty values and values with control characters (which could split
/// a header) are not forwarded.
fn header_value(claim: &Value) -> Option<String> {
    let text = match claim {
        Value::Null => return None,
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    (!text.is_empty() && !text.chars().any(char::is_control)).then_some(text)
}

/// RFC 6750 §3.1: a request without credentials gets a challenge with no error code.
fn missing_token() -> Response {
    refusal(
        "missing_token",
        "a bearer token is required",
        r#"Bearer realm="wicket""#.to_string(),
    )
}

fn invalid_token(error: TokenError) -> Response {
    // Descriptions are fixed ASCII text without quotes, so they need no escaping.
    let description = error.description();
    refusal(
        "invalid_token",
        description,
        format!(
            r#"Bearer realm="wicket", error="invalid_token", error_description="{description}""#
        ),
    )
}

fn refusal(code: &str, message: &str, challenge: String) -> Response {
    Response::json_error(401, code, message).with_header("www-authenticate", challenge)
}

impl Plugin for JwtAuth {
    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn init(config: &str) -> Result<Self, String> {
        Settings::parse(config).map(|settings| JwtAuth { settings })
    }

    fn on_request(&self, request: &Request) -> RequestAction {
        let (action, outcome) = self.authenticate(request, clock::now_ms());
        if let Outcome::InvalidToken(error) = outcome {
            log::log(
                log::Level::Debug,
                &format!(
                    "route {}: token refused: {}",
                    request.route(),
                    error.description()
                ),
            );
        }
        metrics::counter_add(
            "auth_decisions",
            &[metrics::Label {
                name: "outcome".into(),
                value: outcome.label().into(),
            }],
            1,
        );
        action
    }
}

export_plugin!(JwtAuth);

#[cfg(test)]
mod testkit;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testkit::{hs256, request, Signer, NOW_MS, NOW_S};
    use wicket_plugin_sdk::Header;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn plugin(config: serde_json::Value) -> JwtAuth {
        JwtAuth::init(&config.to_string()).unwrap()
    }

    fn hs_plugin(extra: serde_json::Value) -> JwtAuth {
        let mut config = serde_json::json!({"algorithms": ["HS256"], "secret": SECRET});
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        plugin(config)
    }

    fn bearer(token: &str) -> Request<'static> {
        request(&[("authorization", &format!("Bearer {token}"))], None)
    }

    fn continued(action: RequestAction) -> RequestPatch {
        match action {
            RequestAction::Continue(patch) => patch,
            RequestAction::Respond(r) => panic!(
                "expected continue, got {}: {}",
                r.status,
                String::from_utf8_lossy(&r.body)
            ),
        }
    }

    fn refused(action: RequestAction) -> Response {
        match action {
            RequestAction::Respond(response) => response,
            RequestAction::Continue(_) => panic!("expected a refusal"),
        }
    }

    fn value<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| std::str::from_utf8(&h.value).unwrap())
    }

    #[test]
    fn valid_token_forwards_consumer_and_claims() {
        let p = hs_plugin(
            serde_json::json!({"forward_claims": {"email": "x-user-email", "admin": "x-admin"}}),
        );
        let token = hs256(
            SECRET,
            serde_json::json!({"sub": "alice", "email": "a@example.test", "admin": true, "exp": NOW_S + 60}),
        );
        let req = request(
            &[
                ("authorization", &format!("Bearer {token}")),
                ("x-wicket-consumer", "mallory"),
                ("x-admin", "true"),
            ],
            None,
        );
        let (action, outcome) = p.authenticate(&req, NOW_MS);
        assert_eq!(outcome, Outcome::Allowed);
        let patch = continued(action);
        assert_eq!(
            value(&patch.set_headers, "x-wicket-consumer"),
            Some("alice")
        );
        assert_eq!(
            value(&patch.set_headers, "x-user-email"),
            Some("a@example.test")
        );
        assert_eq!(value(&patch.set_headers, "x-admin"), Some("true"));
        for name in ["x-wicket-consumer", "x-user-email", "x-admin"] {
            assert!(patch.remove_headers.iter().any(|h| h == name), "{name}");
        }
        assert!(!patch.remove_headers.iter().any(|h| h == "authorization"));
    }

    #[test]
    fn client_consumer_header_removed_even_without_sub() {
        let p = hs_plugin(serde_json::json!({"forward_claims": {"email": "x-user-email"}}));
        let token = hs256(SECRET, serde_json::json!({"exp": NOW_S + 60}));
        let patch = continued(p.authenticate(&bearer(&token), NOW_MS).0);
        assert!(patch.set_headers.is_empty());
        assert_eq!(
            patch.remove_headers,
            vec!["x-wicket-consumer", "x-user-email"]
        );
    }

    #[test]
    fn consumer_claim_and_header_are_configurable() {
        let p = hs_plugin(
            serde_json::json!({"consumer_claim": "client_id", "consumer_header": "X-Client"}),
        );
        let token = hs256(
            SECRET,
            serde_json::json!({"sub": "alice", "client_id": "mobile-app", "exp": NOW_S + 60}),
        );
        let patch = continued(p.authenticate(&bearer(&token), NOW_MS).0);
        assert_eq!(value(&patch.set_headers, "x-client"), Some("mobile-app"));
        assert_eq!(value(&patch.set_headers, "x-wicket-consumer"), None);
    }

    #[test]
    fn claims_that_could_split_a_header_are_not_forwarded() {
        let p = hs_plugin(
            serde_json::json!({"forward_claims": {"name": "x-name", "roles": "x-roles"}}),
        );
        let token = hs256(
            SECRET,
            serde_json::json!({"sub": "a\r\nx-admin: 1", "name": null, "roles": ["a", "b"], "exp": NOW_S + 60}),
        );
        let patch = continued(p.authenticate(&bearer(&token), NOW_MS).0);
        assert_eq!(value(&patch.set_headers, "x-wicket-consumer"), None);
        assert_eq!(value(&patch.set_headers, "x-name"), None);
        assert_eq!(value(&patch.set_headers, "x-roles"), Some(r#"["a","b"]"#));
    }

    #[test]
    fn strip_authorization_removes_the_token_header() {
        let token = hs256(
            SECRET,
            serde_json::json!({"sub": "alice", "exp": NOW_S + 60}),
        );
        let p = hs_plugin(serde_json::json!({"strip_authorization": true}));
        let patch = continued(p.authenticate(&bearer(&token), NOW_MS).0);
        assert!(patch.remove_headers.iter().any(|h| h == "authorization"));
        assert_eq!(patch.query, None);
        assert_eq!(value(&patch.set_headers, "cookie"), None);
    }

    #[test]
    fn strip_authorization_rewrites_query_and_cookie_sources() {
        let token = hs256(SECRET, serde_json::json!({"sub": "dan", "exp": NOW_S + 60}));
        let p = hs_plugin(serde_json::json!({
            "strip_authorization": true,
            "token_from": [{"query": "access_token"}, {"cookie": "jwt"}],
        }));
        let req = request(
            &[("cookie", &format!("theme=dark; jwt={token}; lang=en"))],
            Some(&format!("x=1&access_token={token}&y=2")),
        );
        let patch = continued(p.authenticate(&req, NOW_MS).0);
        assert_eq!(value(&patch.set_headers, "x-wicket-consumer"), Some("dan"));
        assert_eq!(patch.query.as_deref(), Some("x=1&y=2"));
        assert_eq!(
            value(&patch.set_headers, "cookie"),
            Some("theme=dark; lang=en")
        );

        // The token was the only cookie and the whole query: both go.
        let req = request(
            &[("cookie", &format!("jwt={token}"))],
            Some(&format!("access_token={token}")),
        );
        let patch = continued(p.authenticate(&req, NOW_MS).0);
        assert_eq!(patch.query.as_deref(), Some(""));
        assert!(patch.remove_headers.iter().any(|h| h == "cookie"));
    }

    #[test]
    fn missing_token_gets_bare_challenge() {
        let p = hs_plugin(serde_json::json!({}));
        for req in [
            request(&[], None),
            request(&[("authorization", "Basic dXNlcjpwYXNz")], None),
        ] {
            let (action, outcome) = p.authenticate(&req, NOW_MS);
            assert_eq!(outcome, Outcome::MissingToken);
            let response = refused(action);
            assert_eq!(response.status, 401);
            assert_eq!(
                value(&response.headers, "www-authenticate"),
                Some(r#"Bearer realm="wicket""#)
            );
            assert_eq!(
                value(&response.headers, "content-type"),
                Some("application/json")
            );
            let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
            assert_eq!(body["error"], "missing_token");
        }
    }

    #[test]
    fn invalid_token_gets_rfc6750_challenge_and_json_body() {
        let p = hs_plugin(serde_json::json!({}));
        let token = hs256(
            SECRET,
            serde_json::json!({"sub": "alice", "exp": NOW_S - 3600}),
        );
        let (action, outcome) = p.authenticate(&bearer(&token), NOW_MS);
        assert_eq!(outcome, Outcome::InvalidToken(TokenError::Expired));
        let response = refused(action);
        assert_eq!(response.status, 401);
        assert_eq!(
            value(&response.headers, "www-authenticate"),
            Some(
                r#"Bearer realm="wicket", error="invalid_token", error_description="the token has expired""#
            )
        );
        let body: serde_json::Value = serde_json::from_slice(&response.body).unwrap();
        assert_eq!(body["error"], "invalid_token");
        assert_eq!(body["message"], "the token has expired");
    }

    #[test]
    fn sources_are_tried_in_order() {
        let p = hs_plugin(
            serde_json::json!({"token_from": [{"header": "authorization"}, {"cookie": "jwt"}]}),
        );
        let token = hs256(SECRET, serde_json::json!({"sub": "bob", "exp": NOW_S + 60}));
        let req = request(&[("cookie", &format!("jwt={token}"))], None);
        let patch = continued(p.authenticate(&req, NOW_MS).0);
        assert_eq!(value(&patch.set_headers, "x-wicket-consumer"), Some("bob"));
        // A present but bad header token is not rescued by a good cookie.
        let req = request(
            &[
                ("authorization", "Bearer not.a.token"),
                ("cookie", &format!("jwt={token}")),
            ],
            None,
        );
        assert_eq!(
            p.authenticate(&req, NOW_MS).1,
            Outcome::InvalidToken(TokenError::Malformed)
        );
    }

    #[test]
    fn query_source_reads_the_token() {
        let p = hs_plugin(serde_json::json!({"token_from": [{"query": "access_token"}]}));
        let token = hs256(
            SECRET,
            serde_json::json!({"sub": "carol", "exp": NOW_S + 60}),
        );
        let req = request(&[], Some(&format!("x=1&access_token={token}")));
        let patch = continued(p.authenticate(&req, NOW_MS).0);
        assert_eq!(
            value(&patch.set_headers, "x-wicket-consumer"),
            Some("carol")
        );
    }

    #[test]
    fn rs256_token_accepted_with_pem_key() {
        let p = plugin(serde_json::json!({
            "algorithms": ["RS256"],
            "public_key": crate::keys::tests::RSA_PUBLIC,
        }));
        let token = Signer::Rs256.sign(None, serde_json::json!({"sub": "svc", "exp": NOW_S + 60}));
        let patch = continued(p.authenticate(&bearer(&token), NOW_MS).0);
        assert_eq!(value(&patch.set_headers, "x-wicket-consumer"), Some("svc"));
    }

    #[test]
    fn es256_token_accepted_with_jwks_key() {
        let jwks: serde_json::Value = serde_json::from_str(crate::keys::tests::JWKS).unwrap();
        let p = plugin(serde_json::json!({"algorithms": ["RS256", "ES256"], "jwks": jwks}));
        let token = Signer::Es256.sign(
            Some("ec-1"),
            serde_json::json!({"sub": "svc", "exp": NOW_S + 60}),
        );
        let patch = continued(p.authenticate(&bearer(&token), NOW_MS).0);
        assert_eq!(value(&patch.set_headers, "x-wicket-consumer"), Some("svc"));
    }
}
