//! Example plugin, written alike in Rust, Python and JavaScript
//! (`../python`, `../js`) and held to one spec (`../spec.yaml`): refuse a
//! request that carries a configured header.
//!
//! Config: `{"header": "x-debug", "status": 403}` (`status` optional, a 4xx).

use serde::Deserialize;
use wicket_plugin_sdk::{export_plugin, Hooks, Plugin, Request, RequestAction, Response};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DenyHeader {
    header: String,
    #[serde(default = "forbidden")]
    status: u16,
}

fn forbidden() -> u16 {
    403
}

impl Plugin for DenyHeader {
    fn init(config: &str) -> Result<Self, String> {
        let me: DenyHeader = wicket_plugin_sdk::config::parse_object(config)?;
        if me.header.is_empty() {
            return Err("header: must not be empty".into());
        }
        if !(400..=499).contains(&me.status) {
            return Err(format!("status: {} is not a 4xx status", me.status));
        }
        Ok(DenyHeader {
            header: me.header.to_ascii_lowercase(),
            ..me
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&self, request: &Request) -> RequestAction {
        if request.header(&self.header).is_none() {
            return RequestAction::Continue(Default::default());
        }
        let body = serde_json::json!({
            "error": "denied",
            "reason": format!("{} is not allowed", self.header),
        });
        RequestAction::Respond(Response::json(self.status, &body.to_string()))
    }
}

export_plugin!(DenyHeader);
