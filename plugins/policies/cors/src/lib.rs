//! Policy plugin: Cross-Origin Resource Sharing for a route — answers
//! browsers' preflights itself and sets the CORS headers on every response,
//! for the origins the route allows.
//!
//! Its defaults suit gRPC-Web: a page on an allowed origin may POST with
//! `content-type`, `x-grpc-web`, `x-user-agent`, `grpc-timeout` and
//! `authorization`, and may read `grpc-status` and `grpc-message` from the
//! head. The route's policy owns the CORS headers: whatever the upstream
//! sent under those names is replaced or removed. CORS is a browser's rule
//! for what a page may read, not access control: requests without `Origin`,
//! or from other origins, still go upstream — put auth after this plugin.
//! Configuration reference: `docs/plugins/cors.md`.

mod config;
mod origin;

use wicket_plugin_sdk::{
    export_plugin, metrics, Hooks, Plugin, Request, RequestAction, RequestPatch, Response,
    ResponseAction, ResponseHead, ResponsePatch, UpstreamOutcome,
};

use crate::config::{Config, Origins};
use crate::origin::Origin;

/// Every header this policy answers for; an upstream's copies are dropped.
const OWNED: [&str; 6] = [
    "access-control-allow-origin",
    "access-control-allow-credentials",
    "access-control-expose-headers",
    "access-control-allow-methods",
    "access-control-allow-headers",
    "access-control-max-age",
];

/// One route's CORS policy, immutable after `init`.
struct Cors {
    config: Config,
    /// `allow_methods` joined, for preflight answers.
    methods: String,
    /// `allow_headers` joined (`None`: any requested header).
    allow_headers: Option<String>,
    /// `expose_headers` joined (`None`: none).
    expose_headers: Option<String>,
}

/// Why a preflight was refused, or that it was not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Preflight {
    Allowed,
    OriginNotAllowed,
    MethodNotAllowed,
    HeadersNotAllowed,
}

impl Preflight {
    fn label(self) -> &'static str {
        match self {
            Preflight::Allowed => "allowed",
            Preflight::OriginNotAllowed => "origin_not_allowed",
            Preflight::MethodNotAllowed => "method_not_allowed",
            Preflight::HeadersNotAllowed => "headers_not_allowed",
        }
    }
}

impl Cors {
    fn new(config: Config) -> Cors {
        let join = |list: &[String]| (!list.is_empty()).then(|| list.join(", "));
        Cors {
            methods: config.methods.join(", "),
            allow_headers: config.allow_headers.as_deref().map(|h| h.join(", ")),
            expose_headers: join(&config.expose_headers),
            config,
        }
    }

    /// The request's one `Origin`, when it is one this route allows. Two
    /// `Origin` headers, or one that is not a serialised origin, allow nothing.
    fn allowed_origin(&self, request: &Request) -> Option<String> {
        let mut values = request.header_values("origin").into_iter();
        let (Some(value), None) = (values.next(), values.next()) else {
            return None;
        };
        let text = String::from_utf8(value).ok()?;
        let origin = Origin::parse(&text)?;
        self.config.origins.allows(&origin).then_some(text)
    }

    /// The value of `Access-Control-Allow-Origin` for an allowed origin.
    fn allow_origin_value<'o>(&self, origin: &'o str) -> &'o str {
        match self.config.origins {
            Origins::Any if !self.config.allow_credentials => "*",
            _ => origin,
        }
    }

    /// Whether responses depend on `Origin` (so caches must key on it).
    fn varies(&self) -> bool {
        !matches!(self.config.origins, Origins::Any) || self.config.allow_credentials
    }

    /// A preflight (`OPTIONS` with `Origin` and
    /// `Access-Control-Request-Method`): answered here, never upstream.
    fn preflight(&self, request: &Request, method: &[u8]) -> (Response, Preflight) {
        let vary = "origin, access-control-request-method, access-control-request-headers";
        let refuse = |outcome: Preflight, message: &str| {
            let r = Response::json_error(403, &format!("cors_{}", outcome.label()), message)
                .with_header("vary", vary);
            (r, outcome)
        };
        let Some(origin) = self.allowed_origin(request) else {
            return refuse(
                Preflight::OriginNotAllowed,
                "this origin may not call this route",
            );
        };
        if !self.config.methods.iter().any(|m| m.as_bytes() == method) {
            return refuse(
                Preflight::MethodNotAllowed,
                "this method is not allowed across origins",
            );
        }
        let requested: Vec<String> = request
            .header_values("access-control-request-headers")
            .iter()
            .flat_map(|v| v.split(|b| *b == b','))
            .map(|h| String::from_utf8_lossy(h.trim_ascii()).to_ascii_lowercase())
            .filter(|h| !h.is_empty())
            .collect();
        let allow_headers = match (&self.config.allow_headers, &self.allow_headers) {
            (Some(allowed), Some(joined)) => {
                if !requested.iter().all(|h| allowed.contains(h)) {
                    return refuse(
                        Preflight::HeadersNotAllowed,
                        "a requested header is not allowed across origins",
                    );
                }
                Some(joined.clone())
            }
            // `*`: any header the browser asks for is allowed, by name (a
            // literal `*` means nothing to a browser sending credentials).
            _ => {
                if !requested.iter().all(|h| config::is_token(h)) {
                    return refuse(
                        Preflight::HeadersNotAllowed,
                        "a requested header is not allowed across origins",
                    );
                }
                (!requested.is_empty()).then(|| requested.join(", "))
            }
        };
        let mut r = Response {
            status: 204,
            headers: Vec::new(),
            body: Vec::new(),
        }
        .with_header(
            "access-control-allow-origin",
            self.allow_origin_value(&origin),
        )
        .with_header("access-control-allow-methods", &self.methods)
        .with_header(
            "access-control-max-age",
            self.config.max_age_seconds.to_string(),
        )
        .with_header("vary", vary);
        if let Some(h) = allow_headers {
            r = r.with_header("access-control-allow-headers", h);
        }
        if self.config.allow_credentials {
            r = r.with_header("access-control-allow-credentials", "true");
        }
        (r, Preflight::Allowed)
    }

    /// The CORS headers for an actual response.
    fn response_patch(&self, request: &Request, response: &ResponseHead) -> ResponsePatch {
        let mut patch = ResponsePatch {
            remove_headers: OWNED.iter().map(|h| h.to_string()).collect(),
            ..ResponsePatch::default()
        };
        if self.varies() {
            if let Some(vary) = vary_with_origin(&response.header_values("vary")) {
                patch = patch.set_header("vary", vary);
            }
        }
        let value = match (&self.config.origins, self.config.allow_credentials) {
            // Every origin, no credentials: the same `*` on every response,
            // with or without `Origin`, so caches need not vary on it.
            (Origins::Any, false) => "*".to_string(),
            _ => match self.allowed_origin(request) {
                Some(origin) => origin,
                None => return patch,
            },
        };
        patch = patch.set_header("access-control-allow-origin", value);
        if let Some(expose) = &self.expose_headers {
            patch = patch.set_header("access-control-expose-headers", expose);
        }
        if self.config.allow_credentials {
            patch = patch.set_header("access-control-allow-credentials", "true");
        }
        patch
    }
}

/// The response's `Vary` with `origin` added, or `None` when it already
/// covers it (`*` or `origin` listed).
fn vary_with_origin(values: &[Vec<u8>]) -> Option<Vec<u8>> {
    let covered = values
        .iter()
        .flat_map(|v| v.split(|b| *b == b','))
        .map(|t| t.trim_ascii())
        .any(|t| t == b"*" || t.eq_ignore_ascii_case(b"origin"));
    if covered {
        return None;
    }
    let mut out = values.join(&b", "[..]);
    if !out.is_empty() {
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(b"origin");
    Some(out)
}

impl Plugin for Cors {
    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST | Hooks::ON_RESPONSE
    }

    fn init(config: &str) -> Result<Self, String> {
        Config::parse(config).map(Cors::new)
    }

    fn on_request(&self, request: &Request) -> RequestAction {
        if request.method() != "OPTIONS" || request.header("origin").is_none() {
            return RequestAction::Continue(RequestPatch::default());
        }
        // A plain OPTIONS (no requested method) is the upstream's to answer.
        let Some(method) = request.header("access-control-request-method") else {
            return RequestAction::Continue(RequestPatch::default());
        };
        let (response, outcome) = self.preflight(request, method.trim_ascii());
        metrics::counter_add(
            "cors_preflights",
            &[metrics::Label {
                name: "outcome".into(),
                value: outcome.label().into(),
            }],
            1,
        );
        RequestAction::Respond(response)
    }

    fn on_response(
        &self,
        request: &Request,
        _outcome: &UpstreamOutcome,
        response: &ResponseHead,
    ) -> ResponseAction {
        ResponseAction::Continue(self.response_patch(request, response))
    }
}

export_plugin!(Cors);

#[cfg(test)]
mod tests {
    use super::*;
    use wicket_plugin_sdk::{header, Header, RequestHead};

    fn plugin(config: &str) -> Cors {
        Cors::init(config).unwrap()
    }

    fn request(method: &str, headers: &[(&str, &str)]) -> Request<'static> {
        Request::from_head(RequestHead {
            method: method.into(),
            scheme: "https".into(),
            authority: "api.example.com".into(),
            path: "/helloworld.Greeter/SayHello".into(),
            query: None,
            headers: headers.iter().map(|(n, v)| header(n, v)).collect(),
            client_addr: "192.0.2.1:50000".into(),
            route: "grpc".into(),
            params: Vec::new(),
            upstream: "greeter".into(),
        })
    }

    fn value<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| std::str::from_utf8(&h.value).unwrap())
    }

    const APP: &str = r#"{"allow_origins": ["https://app.example.com", "https://*.shop.example"]}"#;

    fn preflight(p: &Cors, origin: &str, method: &str, headers: &str) -> (Response, Preflight) {
        let req = request(
            "OPTIONS",
            &[
                ("origin", origin),
                ("access-control-request-method", method),
                ("access-control-request-headers", headers),
            ],
        );
        p.preflight(&req, method.as_bytes())
    }

    #[test]
    fn a_grpc_web_preflight_from_an_allowed_origin_is_answered() {
        let p = plugin(APP);
        let (r, outcome) = preflight(
            &p,
            "https://app.example.com",
            "POST",
            "content-type,x-grpc-web,X-User-Agent, grpc-timeout",
        );
        assert_eq!(outcome, Preflight::Allowed);
        assert_eq!(r.status, 204);
        let h = &r.headers;
        assert_eq!(
            value(h, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            value(h, "access-control-allow-methods"),
            Some("GET, HEAD, POST")
        );
        assert!(value(h, "access-control-allow-headers")
            .unwrap()
            .contains("x-grpc-web"));
        assert_eq!(value(h, "access-control-max-age"), Some("600"));
        assert_eq!(value(h, "access-control-allow-credentials"), None);
        assert!(value(h, "vary").unwrap().contains("origin"));
    }

    #[test]
    fn preflights_outside_the_policy_are_refused_with_403() {
        let p = plugin(APP);
        for (origin, method, headers, want) in [
            ("https://evil.test", "POST", "", Preflight::OriginNotAllowed),
            (
                "https://app.example.com.evil.test",
                "POST",
                "",
                Preflight::OriginNotAllowed,
            ),
            ("null", "POST", "", Preflight::OriginNotAllowed),
            (
                "https://app.example.com",
                "DELETE",
                "",
                Preflight::MethodNotAllowed,
            ),
            (
                "https://app.example.com",
                "post",
                "",
                Preflight::MethodNotAllowed,
            ),
            (
                "https://a.shop.example",
                "POST",
                "x-secret",
                Preflight::HeadersNotAllowed,
            ),
        ] {
            let (r, outcome) = preflight(&p, origin, method, headers);
            assert_eq!(outcome, want, "{origin} {method} {headers}");
            assert_eq!(r.status, 403);
            assert_eq!(value(&r.headers, "access-control-allow-origin"), None);
            let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
            assert_eq!(body["error"], format!("cors_{}", want.label()));
        }
    }

    #[test]
    fn two_origin_headers_allow_nothing() {
        let p = plugin(APP);
        let req = request(
            "POST",
            &[
                ("origin", "https://app.example.com"),
                ("origin", "https://evil.test"),
            ],
        );
        assert_eq!(p.allowed_origin(&req), None);
    }

    #[test]
    fn any_origin_answers_star_unless_credentials_force_the_origin() {
        let p = plugin(r#"{"allow_origins": ["*"], "allow_headers": ["*"]}"#);
        let (r, _) = preflight(&p, "https://x.test", "GET", "X-Custom, x-other");
        assert_eq!(value(&r.headers, "access-control-allow-origin"), Some("*"));
        assert_eq!(
            value(&r.headers, "access-control-allow-headers"),
            Some("x-custom, x-other")
        );
        let p =
            plugin(r#"{"allow_origins": ["https://app.example.com"], "allow_credentials": true}"#);
        let (r, _) = preflight(&p, "https://app.example.com", "GET", "");
        assert_eq!(
            value(&r.headers, "access-control-allow-origin"),
            Some("https://app.example.com")
        );
        assert_eq!(
            value(&r.headers, "access-control-allow-credentials"),
            Some("true")
        );
    }

    #[test]
    fn actual_responses_get_the_policy_headers_and_lose_the_upstreams() {
        let p = plugin(APP);
        let upstream = ResponseHead::new(
            200,
            vec![
                header("access-control-allow-origin", "*"),
                header("vary", "accept-encoding"),
            ],
        );
        let allowed = request("POST", &[("origin", "https://b.shop.example")]);
        let patch = p.response_patch(&allowed, &upstream);
        assert!(patch
            .remove_headers
            .contains(&"access-control-allow-origin".to_string()));
        let h = &patch.set_headers;
        assert_eq!(
            value(h, "access-control-allow-origin"),
            Some("https://b.shop.example")
        );
        assert!(value(h, "access-control-expose-headers")
            .unwrap()
            .contains("grpc-status"));
        assert_eq!(value(h, "vary"), Some("accept-encoding, origin"));

        // Another origin: the upstream's `*` goes and nothing replaces it.
        let other = request("POST", &[("origin", "https://evil.test")]);
        let patch = p.response_patch(&other, &upstream);
        assert!(patch
            .remove_headers
            .contains(&"access-control-allow-origin".to_string()));
        assert_eq!(
            value(&patch.set_headers, "access-control-allow-origin"),
            None
        );
        assert_eq!(
            value(&patch.set_headers, "vary"),
            Some("accept-encoding, origin")
        );
    }

    #[test]
    fn any_origin_grants_star_on_every_response_without_vary() {
        let p = plugin(r#"{"allow_origins": ["*"]}"#);
        let upstream = ResponseHead::new(200, vec![]);
        for req in [
            request("GET", &[]),
            request("GET", &[("origin", "https://x.test")]),
        ] {
            let patch = p.response_patch(&req, &upstream);
            assert_eq!(
                value(&patch.set_headers, "access-control-allow-origin"),
                Some("*")
            );
            assert_eq!(value(&patch.set_headers, "vary"), None);
        }
    }

    #[test]
    fn vary_is_extended_once() {
        assert_eq!(vary_with_origin(&[]), Some(b"origin".to_vec()));
        assert_eq!(vary_with_origin(&[b"Origin".to_vec()]), None);
        assert_eq!(vary_with_origin(&[b"accept, origin".to_vec()]), None);
        assert_eq!(vary_with_origin(&[b"*".to_vec()]), None);
        assert_eq!(
            vary_with_origin(&[b"accept".to_vec(), b"accept-encoding".to_vec()]),
            Some(b"accept, accept-encoding, origin".to_vec())
        );
    }
}
