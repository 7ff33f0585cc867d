//! Policy plugin: authenticates requests by the TLS client certificate their
//! connection presented, and forwards the consumer's name upstream.
//!
//! The listener verifies the certificate against its CA bundle during the
//! handshake (`client_auth`), so a certificate a plugin sees is already
//! trusted; this policy decides *which* verified certificates a route
//! accepts, per route, and who each one is. A listed certificate continues
//! the request with `x-wicket-consumer: <consumer>`; no certificate (or a
//! cleartext connection) is answered with 401, a verified but unlisted one
//! with 403. Configuration reference: `docs/plugins/mtls-auth.md`.

mod config;

use std::collections::HashMap;

use wicket_plugin_sdk::{
    export_plugin, metrics, span, ClientCertificate, Hooks, Plugin, Request, RequestAction,
    RequestPatch, Response,
};

use crate::config::{Config, Criterion};

/// One route's mtls-auth policy, immutable after `init`.
struct MtlsAuth {
    /// Criterion → (its position in `consumers`, the consumer). The earliest
    /// entry that matches wins, as in the configured list.
    by_subject: HashMap<String, (usize, String)>,
    by_san: HashMap<String, (usize, String)>,
    by_sha256: HashMap<String, (usize, String)>,
    consumer_header: String,
    forward_subject: Option<String>,
    forward_sha256: Option<String>,
}

/// What `authenticate` decided, for the metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    Allowed,
    MissingCertificate,
    NotAllowed,
}

impl Outcome {
    fn label(self) -> &'static str {
        match self {
            Outcome::Allowed => "allowed",
            Outcome::MissingCertificate => "missing_certificate",
            Outcome::NotAllowed => "certificate_not_allowed",
        }
    }
}

impl MtlsAuth {
    fn from_config(config: Config) -> MtlsAuth {
        let mut plugin = MtlsAuth {
            by_subject: HashMap::new(),
            by_san: HashMap::new(),
            by_sha256: HashMap::new(),
            consumer_header: config.consumer_header,
            forward_subject: config.forward.subject,
            forward_sha256: config.forward.sha256,
        };
        for (criterion, i) in config.criteria {
            let (table, key) = match criterion {
                Criterion::Subject(s) => (&mut plugin.by_subject, s),
                Criterion::San(s) => (&mut plugin.by_san, s),
                Criterion::Sha256(s) => (&mut plugin.by_sha256, s),
            };
            table.insert(key, (i, config.consumers[i].consumer.clone()));
        }
        plugin
    }

    /// The consumer `cert` authenticates: of the entries it matches, the one
    /// listed first.
    fn consumer(&self, cert: &ClientCertificate) -> Option<&str> {
        let subject = self.by_subject.get(&cert.subject);
        let sha256 = self.by_sha256.get(&cert.sha256);
        let sans = cert.sans.iter().filter_map(|san| self.by_san.get(san));
        subject
            .into_iter()
            .chain(sha256)
            .chain(sans)
            .min_by_key(|(i, _)| *i)
            .map(|(_, consumer)| consumer.as_str())
    }

    /// The decision for one request's certificate (`None`: the connection
    /// presented none, or is not TLS).
    fn authenticate(&self, cert: Option<&ClientCertificate>) -> (RequestAction, Outcome) {
        let Some(cert) = cert else {
            let response = Response::json_error(
                401,
                "client_certificate_required",
                "a TLS client certificate is required",
            )
            .with_header("www-authenticate", r#"MutualTLS realm="wicket""#);
            return (
                RequestAction::Respond(response),
                Outcome::MissingCertificate,
            );
        };
        let Some(consumer) = self.consumer(cert) else {
            let response = Response::json_error(
                403,
                "client_certificate_not_allowed",
                "the TLS client certificate is not allowed on this route",
            );
            return (RequestAction::Respond(response), Outcome::NotAllowed);
        };
        // Client-supplied copies go first (remove is applied before set), so
        // the upstream can trust every header this policy owns.
        let mut patch = RequestPatch::default().remove_header(&self.consumer_header);
        for (header, value) in [
            (&self.forward_subject, &cert.subject),
            (&self.forward_sha256, &cert.sha256),
        ] {
            if let Some(header) = header {
                patch = patch.remove_header(header).set_header(header, value);
            }
        }
        patch = patch.set_header(&self.consumer_header, consumer);
        (RequestAction::Continue(patch), Outcome::Allowed)
    }
}

impl Plugin for MtlsAuth {
    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn init(config: &str) -> Result<Self, String> {
        Config::parse(config).map(MtlsAuth::from_config)
    }

    fn on_request(&self, request: &Request) -> RequestAction {
        let cert = request.tls().and_then(|t| t.client_certificate.as_ref());
        let (action, outcome) = self.authenticate(cert);
        metrics::counter_add(
            "auth_decisions",
            &[metrics::Label {
                name: "outcome".into(),
                value: outcome.label().into(),
            }],
            1,
        );
        if span::recording() {
            span::set_attribute("mtls_auth.outcome", outcome.label());
        }
        action
    }
}

export_plugin!(MtlsAuth);

#[cfg(test)]
mod tests {
    use super::*;
    use wicket_plugin_sdk::Header;

    fn plugin(config: &str) -> MtlsAuth {
        MtlsAuth::init(config).unwrap()
    }

    fn cert(subject: &str, sans: &[&str], sha256: &str) -> ClientCertificate {
        ClientCertificate {
            subject: subject.into(),
            sans: sans.iter().map(|s| s.to_string()).collect(),
            sha256: sha256.into(),
        }
    }

    fn header_value<'a>(headers: &'a [Header], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| std::str::from_utf8(&h.value).unwrap())
    }

    const FP_A: &str = "aa0c9a8e4b1d7c6e2a5f8b9d0c1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e";
    const FP_B: &str = "bb0c9a8e4b1d7c6e2a5f8b9d0c1e2f3a4b5c6d7e8f9a0b1c2d3e4f5a6b7c8d9e";

    const CONFIG: &str = r#"{"consumers": [
        {"consumer": "pinned", "sha256": "AA:0C:9A:8E:4B:1D:7C:6E:2A:5F:8B:9D:0C:1E:2F:3A:4B:5C:6D:7E:8F:9A:0B:1C:2D:3E:4F:5A:6B:7C:8D:9E"},
        {"consumer": "billing", "subject": "O=Example,CN=billing"},
        {"consumer": "svc-a", "san": "svc-a.internal"},
        {"consumer": "mesh", "san": "spiffe://cluster.local/ns/prod/sa/orders"}
    ], "forward": {"subject": "X-Client-Subject", "sha256": "x-client-sha256"}}"#;

    #[test]
    fn each_kind_of_entry_authenticates_its_consumer() {
        let p = plugin(CONFIG);
        for (c, want) in [
            (cert("CN=anything", &[], FP_A), "pinned"),
            (cert("O=Example,CN=billing", &[], FP_B), "billing"),
            (
                cert("CN=x", &["other.internal", "svc-a.internal"], FP_B),
                "svc-a",
            ),
            (
                cert("", &["spiffe://cluster.local/ns/prod/sa/orders"], FP_B),
                "mesh",
            ),
        ] {
            assert_eq!(p.consumer(&c), Some(want), "{c:?}");
        }
    }

    #[test]
    fn the_entry_listed_first_wins_when_several_match() {
        let p = plugin(CONFIG);
        // Matches billing (subject, second) and svc-a (SAN, third).
        let c = cert("O=Example,CN=billing", &["svc-a.internal"], FP_B);
        assert_eq!(p.consumer(&c), Some("billing"));
        // And the pinned fingerprint (first) beats both.
        let c = cert("O=Example,CN=billing", &["svc-a.internal"], FP_A);
        assert_eq!(p.consumer(&c), Some("pinned"));
    }

    #[test]
    fn near_misses_do_not_match() {
        let p = plugin(CONFIG);
        for c in [
            // A subject that contains the listed one is not it.
            cert("O=Example,CN=billing,OU=x", &[], FP_B),
            cert("o=example,cn=billing", &[], FP_B),
            cert(
                "CN=x",
                &["svc-a.internal.evil.test", "a.svc-a.internal"],
                FP_B,
            ),
            cert(
                "CN=x",
                &["spiffe://cluster.local/ns/prod/sa/orders/x"],
                FP_B,
            ),
            // URIs are matched exactly, case and all.
            cert("CN=x", &["spiffe://cluster.local/ns/prod/sa/Orders"], FP_B),
        ] {
            assert_eq!(p.consumer(&c), None, "{c:?}");
        }
    }

    #[test]
    fn an_allowed_certificate_continues_with_trusted_headers() {
        let p = plugin(CONFIG);
        let c = cert("O=Example,CN=billing", &[], FP_B);
        let (action, outcome) = p.authenticate(Some(&c));
        assert_eq!(outcome, Outcome::Allowed);
        let RequestAction::Continue(patch) = action else {
            panic!("expected continue");
        };
        assert_eq!(
            header_value(&patch.set_headers, "x-wicket-consumer"),
            Some("billing")
        );
        assert_eq!(
            header_value(&patch.set_headers, "x-client-subject"),
            Some("O=Example,CN=billing")
        );
        assert_eq!(
            header_value(&patch.set_headers, "x-client-sha256"),
            Some(FP_B)
        );
        for h in ["x-wicket-consumer", "x-client-subject", "x-client-sha256"] {
            assert!(patch.remove_headers.contains(&h.to_string()), "{h}");
        }
    }

    #[test]
    fn no_certificate_is_401_and_an_unlisted_one_403() {
        let p = plugin(CONFIG);
        let (action, outcome) = p.authenticate(None);
        assert_eq!(outcome, Outcome::MissingCertificate);
        let RequestAction::Respond(r) = action else {
            panic!("expected a refusal");
        };
        assert_eq!(r.status, 401);
        assert_eq!(
            header_value(&r.headers, "www-authenticate"),
            Some(r#"MutualTLS realm="wicket""#)
        );
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"], "client_certificate_required");

        let (action, outcome) = p.authenticate(Some(&cert("CN=stranger", &["x.test"], FP_B)));
        assert_eq!(outcome, Outcome::NotAllowed);
        let RequestAction::Respond(r) = action else {
            panic!("expected a refusal");
        };
        assert_eq!(r.status, 403);
        let body: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["error"], "client_certificate_not_allowed");
    }
}
