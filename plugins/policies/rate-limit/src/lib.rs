//! Rate-limit policy plugin: an exact token bucket per client and route,
//! shared by every pooled instance (and, with state on Redis, every gateway)
//! through the host's `state.take-tokens`: one atomic call per request.
//!
//! The decision is made in [`limiter::check`] (pure apart from the buckets it
//! is given); this file is the glue: metrics, and turning a verdict into
//! HTTP. Configuration and responses: `docs/plugins/rate-limit.md`.

mod bucket;
mod config;
mod key;
mod limiter;

use wicket_plugin_sdk::{
    export_plugin, log, metrics, state, Hooks, Plugin, Request, RequestAction, RequestPatch,
    Response,
};

use crate::bucket::{reset_secs, retry_after_secs, Quota};
use crate::config::{Config, OnStateError};
use crate::limiter::{HostBuckets, Verdict};

struct RateLimit {
    config: Config,
}

impl Plugin for RateLimit {
    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn init(config: &str) -> Result<Self, String> {
        Config::parse(config).map(|config| RateLimit { config })
    }

    fn on_request(&self, request: &Request) -> RequestAction {
        let verdict = limiter::check(&self.config, &HostBuckets, request);
        observe(request, &verdict);
        respond(&self.config, verdict)
    }
}

export_plugin!(RateLimit);

/// Count the decision and log the ones an operator must hear about.
fn observe(request: &Request, verdict: &Verdict<state::StateError>) {
    let decision = match verdict {
        Verdict::Allowed(_) => "allowed",
        Verdict::Limited { .. } => "limited",
        Verdict::KeyMissing => "key_missing",
        Verdict::StateFailed(e) => {
            log::log(
                log::Level::Warn,
                &format!(
                    "rate limit state unavailable on route {}: {e:?}",
                    request.route()
                ),
            );
            "state_error"
        }
    };
    let label = |name: &str, value: &str| metrics::Label {
        name: name.to_string(),
        value: value.to_string(),
    };
    metrics::counter_add(
        "rate_limit_requests_total",
        &[label("route", request.route()), label("decision", decision)],
        1,
    );
}

/// Turn a verdict into the hook's result.
fn respond<E>(config: &Config, verdict: Verdict<E>) -> RequestAction {
    let limit = &config.limit;
    match verdict {
        Verdict::Allowed(quota) => {
            let patch = quota_headers(&quota)
                .into_iter()
                .fold(RequestPatch::default(), |p, (name, value)| {
                    p.response_header(name, value)
                });
            RequestAction::Continue(patch)
        }
        Verdict::Limited {
            quota,
            retry_after_ms,
        } => {
            let retry = retry_after_secs(retry_after_ms);
            let message = format!(
                "too many requests: the limit is {} per {} s with bursts of {}; retry in {retry} s",
                limit.rate,
                limit.period_ms / 1000,
                limit.burst
            );
            RequestAction::Respond(too_many(&message, retry, &quota))
        }
        Verdict::KeyMissing => RequestAction::Respond(Response::json_error(
            403,
            "rate_limit_key_missing",
            "this route is rate limited per client identity and the request carries none",
        )),
        Verdict::StateFailed(_) => match config.on_state_error {
            OnStateError::Allow => RequestAction::Continue(RequestPatch::default()),
            OnStateError::Deny => RequestAction::Respond(
                Response::json_error(
                    503,
                    "rate_limit_unavailable",
                    "the rate limit cannot be checked right now; retry shortly",
                )
                .with_header("retry-after", "1"),
            ),
        },
    }
}

fn quota_headers(quota: &Quota) -> [(&'static str, String); 3] {
    [
        ("ratelimit-limit", quota.limit.to_string()),
        ("ratelimit-remaining", quota.remaining.to_string()),
        ("ratelimit-reset", reset_secs(quota.reset_ms).to_string()),
    ]
}

fn too_many(message: &str, retry_after: u64, quota: &Quota) -> Response {
    quota_headers(quota).into_iter().fold(
        Response::json_error(429, "rate_limited", message)
            .with_header("retry-after", retry_after.to_string()),
        |r, (name, value)| r.with_header(name, value),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(json: &str) -> Config {
        Config::parse(json).unwrap()
    }

    fn header<'a>(headers: &'a [wicket_plugin_sdk::Header], name: &str) -> Option<&'a str> {
        headers
            .iter()
            .find(|h| h.name == name)
            .map(|h| std::str::from_utf8(&h.value).unwrap())
    }

    fn body(r: &Response) -> serde_json::Value {
        serde_json::from_slice(&r.body).unwrap()
    }

    #[test]
    fn allowed_request_reports_quota_on_response() {
        let quota = Quota {
            limit: 20,
            remaining: 7,
            reset_ms: 1_300,
        };
        let RequestAction::Continue(patch) =
            respond::<()>(&config(r#"{"rate": 10}"#), Verdict::Allowed(quota))
        else {
            panic!("expected continue");
        };
        let h = &patch.response_headers;
        assert_eq!(header(h, "ratelimit-limit"), Some("20"));
        assert_eq!(header(h, "ratelimit-remaining"), Some("7"));
        assert_eq!(header(h, "ratelimit-reset"), Some("2"));
        assert!(patch.set_headers.is_empty());
    }

    #[test]
    fn limited_request_gets_429_with_retry_after() {
        let quota = Quota {
            limit: 20,
            remaining: 0,
            reset_ms: 2_000,
        };
        let verdict = Verdict::<()>::Limited {
            quota,
            retry_after_ms: 100,
        };
        let RequestAction::Respond(r) = respond(&config(r#"{"rate": 10, "burst": 20}"#), verdict)
        else {
            panic!("expected a response");
        };
        assert_eq!(r.status, 429);
        assert_eq!(header(&r.headers, "content-type"), Some("application/json"));
        assert_eq!(header(&r.headers, "retry-after"), Some("1"));
        assert_eq!(header(&r.headers, "ratelimit-limit"), Some("20"));
        assert_eq!(header(&r.headers, "ratelimit-remaining"), Some("0"));
        assert_eq!(header(&r.headers, "ratelimit-reset"), Some("2"));
        assert_eq!(body(&r)["error"], "rate_limited");
        assert!(body(&r)["message"].as_str().unwrap().contains("10 per 1 s"));
    }

    #[test]
    fn missing_key_refuses_with_403() {
        let RequestAction::Respond(r) =
            respond::<()>(&config(r#"{"rate": 10}"#), Verdict::KeyMissing)
        else {
            panic!("expected a response");
        };
        assert_eq!(r.status, 403);
        assert_eq!(body(&r)["error"], "rate_limit_key_missing");
    }

    #[test]
    fn state_error_allows_by_default() {
        let action = respond(&config(r#"{"rate": 10}"#), Verdict::StateFailed(()));
        let RequestAction::Continue(patch) = action else {
            panic!("expected continue");
        };
        assert!(patch.response_headers.is_empty());
    }

    #[test]
    fn state_error_denies_when_configured() {
        let cfg = config(r#"{"rate": 10, "on_state_error": "deny"}"#);
        let RequestAction::Respond(r) = respond(&cfg, Verdict::StateFailed(())) else {
            panic!("expected a response");
        };
        assert_eq!(r.status, 503);
        assert_eq!(header(&r.headers, "retry-after"), Some("1"));
        assert_eq!(body(&r)["error"], "rate_limit_unavailable");
    }
}
