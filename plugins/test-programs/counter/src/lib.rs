//! Test guest `counter.wasm`: counts requests in the shared `state` store and
//! tells the upstream the running total.
//!
//! Config: `{}` (no fields; unknown fields refused). Each request increments
//! the state key `hits` (shared by every instance and route of this plugin) and
//! sets the upstream header `x-hits: <n>`; it also adds 1 to the metric
//! `hits_total{route="<route>"}`. Lets host tests check that state is shared
//! across pooled instances and that metrics reach the admin endpoint.
//!
//! A state error answers 503 (fail closed), so a test can observe an
//! unavailable store from outside.

use serde::Deserialize;
use wicket_plugin_sdk::{
    export_plugin, metrics, state, Hooks, Plugin, Request, RequestAction, RequestPatch, Response,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Counter {}

/// The action for a given result of incrementing the hit counter.
fn action(hits: Result<i64, state::StateError>) -> RequestAction {
    match hits {
        Ok(n) => {
            RequestAction::Continue(RequestPatch::default().set_header("x-hits", n.to_string()))
        }
        Err(e) => RequestAction::Respond(Response::json(
            503,
            &serde_json::json!({
                "error": "state_unavailable",
                "message": format!("hit counter unavailable: {e:?}"),
            })
            .to_string(),
        )),
    }
}

impl Plugin for Counter {
    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn init(config: &str) -> Result<Self, String> {
        serde_json::from_str(config).map_err(|e| format!("invalid configuration: {e}"))
    }

    fn on_request(&self, request: &Request) -> RequestAction {
        let route = metrics::Label {
            name: "route".to_string(),
            value: request.route().to_string(),
        };
        metrics::counter_add("hits_total", &[route], 1);
        action(state::increment("hits", 1, None))
    }
}

export_plugin!(Counter);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_forwarded_upstream() {
        let RequestAction::Continue(patch) = action(Ok(7)) else {
            panic!("expected continue");
        };
        assert_eq!(patch.set_headers[0].name, "x-hits");
        assert_eq!(patch.set_headers[0].value, b"7");
    }

    #[test]
    fn state_error_answers_503() {
        let RequestAction::Respond(r) = action(Err(state::StateError::Unavailable)) else {
            panic!("expected respond");
        };
        assert_eq!(r.status, 503);
    }
}
