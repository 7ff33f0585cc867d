//! Test guest `inspect.wasm`: reports what it reads through the contract's
//! request and response handles, so a test can check every accessor against
//! what the client sent, and declares the hooks its config names, so a test
//! can check the host calls only those.
//!
//! Config: `{"hooks": ["on-request", "on-response"]}` (the default is both;
//! `[]` declares none). Unknown fields are refused.
//!
//! `on-request` sets on the upstream request:
//! - `x-seen-method`, `-scheme`, `-authority`, `-path`, `-query` (`-` when
//!   there is none), `-client-addr`, `-route`, `-upstream`;
//! - `x-seen-params`: `name=value` pairs joined by `,`; `x-seen-param-id`:
//!   `param("id")` (`-` when missing);
//! - `x-seen-probe`: `header("X-Probe")` (mixed case on purpose), `-` when
//!   missing; `x-seen-multi`: every `x-multi` value joined by `|`;
//! - `x-seen-header-count`: how many headers `headers()` returned;
//! - `x-seen-head-agrees`: `yes` if `head()` matches the single accessors;
//! - `x-seen-tls`: `-` in cleartext, else `sni=…;alpn=…;version=…` and, when
//!   the client presented a certificate, `x-seen-client-subject`,
//!   `x-seen-client-sans` (joined by `,`) and `x-seen-client-sha256`.
//!
//! `on-response` sets on the response: `x-seen-status`, `x-seen-backend`
//! (`header("X-Backend")`, `-` when missing), `x-seen-response-header-count`,
//! `x-seen-request-path` (the request is readable in `on-response` too),
//! `x-seen-attempts` (`upstream-attempts()`), and `x-seen-outcome`: the
//! status, `error:<kind>` or `skipped`, then `@` and the endpoint when there
//! was one.

use serde::Deserialize;
use wicket_plugin_sdk::{
    export_plugin, Hooks, Plugin, Request, RequestAction, RequestPatch, ResponseAction,
    ResponseHead, ResponsePatch, UpstreamOutcome, UpstreamResult,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Inspect {
    #[serde(default = "both")]
    hooks: Vec<String>,
}

fn both() -> Vec<String> {
    vec!["on-request".into(), "on-response".into()]
}

fn text(value: Option<Vec<u8>>) -> String {
    value.map_or_else(|| "-".into(), |v| String::from_utf8_lossy(&v).into_owned())
}

impl Plugin for Inspect {
    fn init(config: &str) -> Result<Self, String> {
        let inspect: Inspect = serde_json::from_str(config).map_err(|e| e.to_string())?;
        for hook in &inspect.hooks {
            if hook != "on-request" && hook != "on-response" {
                return Err(format!("hooks: unknown hook {hook:?}"));
            }
        }
        Ok(inspect)
    }

    fn hooks(&self) -> Hooks {
        let mut hooks = Hooks::empty();
        for hook in &self.hooks {
            match hook.as_str() {
                "on-request" => hooks |= Hooks::ON_REQUEST,
                _ => hooks |= Hooks::ON_RESPONSE,
            }
        }
        hooks
    }

    fn on_request(&self, request: &Request) -> RequestAction {
        // Single lookups first, before `headers()` fills the SDK's cache, so
        // they go to the host.
        let probe = text(request.header("X-Probe"));
        let multi: Vec<String> = request
            .header_values("x-multi")
            .into_iter()
            .map(|v| String::from_utf8_lossy(&v).into_owned())
            .collect();
        let param_id = request.param("id").unwrap_or("-").to_string();
        let head = request.head();
        let params: Vec<String> = request
            .params()
            .iter()
            .map(|p| format!("{}={}", p.name, p.value))
            .collect();
        let agrees = head.method == request.method()
            && head.scheme == request.scheme()
            && head.authority == request.authority()
            && head.path == request.path()
            && head.query.as_deref() == request.query()
            && head.client_addr == request.client_addr()
            && head.route == request.route()
            && head.upstream == request.upstream()
            && head.headers.len() == request.headers().len()
            && head.params.len() == request.params().len();
        let patch = RequestPatch::default()
            .set_header("x-seen-method", request.method())
            .set_header("x-seen-scheme", request.scheme())
            .set_header("x-seen-authority", request.authority())
            .set_header("x-seen-path", request.path())
            .set_header("x-seen-query", request.query().unwrap_or("-"))
            .set_header("x-seen-client-addr", request.client_addr())
            .set_header("x-seen-route", request.route())
            .set_header("x-seen-upstream", request.upstream())
            .set_header("x-seen-params", params.join(","))
            .set_header("x-seen-param-id", param_id)
            .set_header("x-seen-probe", probe)
            .set_header("x-seen-multi", multi.join("|"))
            .set_header("x-seen-header-count", request.headers().len().to_string())
            .set_header("x-seen-head-agrees", if agrees { "yes" } else { "no" });
        let patch = match request.tls() {
            None => patch.set_header("x-seen-tls", "-"),
            Some(tls) => {
                let patch = patch.set_header(
                    "x-seen-tls",
                    format!(
                        "sni={};alpn={};version={}",
                        tls.server_name.as_deref().unwrap_or("-"),
                        tls.alpn.as_deref().unwrap_or("-"),
                        tls.version
                    ),
                );
                match &tls.client_certificate {
                    None => patch,
                    Some(c) => patch
                        .set_header("x-seen-client-subject", c.subject.as_str())
                        .set_header("x-seen-client-sans", c.sans.join(","))
                        .set_header("x-seen-client-sha256", c.sha256.as_str()),
                }
            }
        };
        RequestAction::Continue(patch)
    }

    fn on_response(
        &self,
        request: &Request,
        outcome: &UpstreamOutcome,
        response: &ResponseHead,
    ) -> ResponseAction {
        let result = match &outcome.result {
            UpstreamResult::Status(s) => s.to_string(),
            UpstreamResult::Error(e) => format!("error:{e:?}"),
            UpstreamResult::Skipped => "skipped".into(),
        };
        let seen = match &outcome.endpoint {
            Some(at) => format!("{result}@{at}"),
            None => result,
        };
        let patch = ResponsePatch::default()
            .set_header("x-seen-attempts", request.upstream_attempts().to_string())
            .set_header("x-seen-outcome", seen)
            .set_header("x-seen-status", response.status().to_string())
            .set_header("x-seen-backend", text(response.header("X-Backend")))
            .set_header(
                "x-seen-response-header-count",
                response.headers().len().to_string(),
            )
            .set_header("x-seen-request-path", request.path());
        ResponseAction::Continue(patch)
    }
}

export_plugin!(Inspect);
