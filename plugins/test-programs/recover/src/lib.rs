//! Test guest `recover.wasm`: when the upstream failed, replaces the gateway's
//! 502/504 with a 200 that names the failure; otherwise keeps the response.
//!
//! Config: `{}` (no fields; unknown fields refused). The replacement carries the
//! header `x-recovered: <kind>` and the JSON body `{"recovered":"<kind>"}`, where
//! `<kind>` is the WIT name of the `upstream-error` (`connect-failed`, `timeout`,
//! `reset`, `no-endpoint`, `protocol`), so a test can tell the host classified
//! the failure correctly and that `on-response` runs after upstream errors.

use serde::Deserialize;
use wicket_plugin_sdk::{
    export_plugin, Hooks, Plugin, Request, Response, ResponseAction, ResponseHead, ResponsePatch,
    UpstreamError, UpstreamOutcome, UpstreamResult,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Recover {}

/// The kebab-case WIT name of an upstream error.
fn kind_name(error: UpstreamError) -> &'static str {
    match error {
        UpstreamError::ConnectFailed => "connect-failed",
        UpstreamError::Timeout => "timeout",
        UpstreamError::Reset => "reset",
        UpstreamError::NoEndpoint => "no-endpoint",
        UpstreamError::Protocol => "protocol",
    }
}

/// The response that stands in for a failed upstream call.
fn recovered(error: UpstreamError) -> Response {
    let kind = kind_name(error);
    Response::json(200, &serde_json::json!({ "recovered": kind }).to_string())
        .with_header("x-recovered", kind)
}

impl Plugin for Recover {
    fn hooks(&self) -> Hooks {
        Hooks::ON_RESPONSE
    }

    fn init(config: &str) -> Result<Self, String> {
        serde_json::from_str(config).map_err(|e| format!("invalid configuration: {e}"))
    }

    fn on_response(
        &self,
        _request: &Request,
        outcome: &UpstreamOutcome,
        _response: &ResponseHead,
    ) -> ResponseAction {
        match outcome.result {
            UpstreamResult::Error(error) => ResponseAction::Replace(recovered(error)),
            _ => ResponseAction::Continue(ResponsePatch::default()),
        }
    }
}

export_plugin!(Recover);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recovered_names_kind_in_header_and_body() {
        let r = recovered(UpstreamError::NoEndpoint);
        assert_eq!(r.status, 200);
        assert!(r
            .headers
            .iter()
            .any(|h| h.name == "x-recovered" && h.value == b"no-endpoint"));
        assert_eq!(r.body, br#"{"recovered":"no-endpoint"}"#);
    }

    #[test]
    fn kind_names_are_kebab_case() {
        assert_eq!(kind_name(UpstreamError::ConnectFailed), "connect-failed");
        assert_eq!(kind_name(UpstreamError::Timeout), "timeout");
        assert_eq!(kind_name(UpstreamError::Reset), "reset");
        assert_eq!(kind_name(UpstreamError::Protocol), "protocol");
    }

    #[test]
    fn config_rejects_unknown_fields() {
        assert!(Recover::init("{}").is_ok());
        assert!(Recover::init(r#"{"x": 1}"#).is_err());
    }
}
