//! Example plugin: sets configured headers on the upstream request and on the
//! client's response.
//!
//! Config: `{"request": {"x-name": "value"}, "response": {"x-name": "value"}}`.

use std::collections::BTreeMap;

use serde::Deserialize;
use wicket_plugin_sdk::{
    export_plugin, Hooks, Plugin, Request, RequestAction, RequestPatch, ResponseAction,
    ResponseHead, ResponsePatch, UpstreamOutcome,
};

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct HeaderInjector {
    #[serde(default)]
    request: BTreeMap<String, String>,
    #[serde(default)]
    response: BTreeMap<String, String>,
}

impl Plugin for HeaderInjector {
    fn init(config: &str) -> Result<Self, String> {
        serde_json::from_str(config).map_err(|e| e.to_string())
    }

    // Only the hooks with something to set, so a route that injects request
    // headers alone never pays for an `on-response` call.
    fn hooks(&self) -> Hooks {
        let mut hooks = Hooks::empty();
        hooks.set(Hooks::ON_REQUEST, !self.request.is_empty());
        hooks.set(Hooks::ON_RESPONSE, !self.response.is_empty());
        hooks
    }

    fn on_request(&self, _request: &Request) -> RequestAction {
        let patch = self
            .request
            .iter()
            .fold(RequestPatch::default(), |p, (k, v)| p.set_header(k, v));
        RequestAction::Continue(patch)
    }

    fn on_response(
        &self,
        _request: &Request,
        _outcome: &UpstreamOutcome,
        _response: &ResponseHead,
    ) -> ResponseAction {
        let patch = self
            .response
            .iter()
            .fold(ResponsePatch::default(), |p, (k, v)| p.set_header(k, v));
        ResponseAction::Continue(patch)
    }
}

export_plugin!(HeaderInjector);
