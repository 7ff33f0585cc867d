//! Traffic-split policy plugin (canary routing): sends a request to another
//! upstream when a rule matches it — by header, by cookie, or by a weighted,
//! optionally sticky, split — and optionally rewrites its path.
//!
//! Place it last in the chain, after authentication (so a `consumer` sticky
//! key sees the authenticated consumer). The decisions live in [`split`];
//! this module is the thin glue to the host.

mod config;
mod hash;
mod rewrite;
mod split;

use wicket_plugin_sdk::{
    clock, export_plugin, gateway, metrics, Hooks, Plugin, Request, RequestAction, RequestPatch,
};

use config::TrafficSplit;

impl Plugin for TrafficSplit {
    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn init(config: &str) -> Result<Self, String> {
        let mut split = TrafficSplit::from_json(config)?;
        split.seeds = hash::Seeds::new(clock::monotonic_ns() ^ clock::now_ms().rotate_left(32));
        // A misspelt upstream is a configuration error, not a 500 later.
        split.check_upstreams(&gateway::upstreams())?;
        Ok(split)
    }

    fn on_request(&self, request: &Request) -> RequestAction {
        // A seed costs no host call; rules without a weight ignore it.
        let seed = self.seeds.next();
        let decision = self.route(request, seed);
        let served_by = decision.upstream.unwrap_or(request.upstream());
        count(request.route(), served_by);

        let mut patch = RequestPatch::default();
        if let Some(name) = &self.upstream_header {
            patch = patch.response_header(name, served_by);
        }
        patch.upstream = decision.upstream.map(str::to_string);
        patch.path = decision.path;
        RequestAction::Continue(patch)
    }
}

/// Count requests per route and chosen upstream (exported as `wicket_plugin_routed_total`).
fn count(route: &str, upstream: &str) {
    metrics::counter_add(
        "routed",
        &[
            metrics::Label {
                name: "route".to_string(),
                value: route.to_string(),
            },
            metrics::Label {
                name: "upstream".to_string(),
                value: upstream.to_string(),
            },
        ],
        1,
    );
}

export_plugin!(TrafficSplit);
