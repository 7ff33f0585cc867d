//! A Wicket policy to start from: refuse requests that lack a required
//! header. Config: `{"header": "x-tenant"}`. Copy this folder next to it
//! (`plugins/policies/<name>`), rename the crate, and replace the policy;
//! see `docs/plugins/rust.md`.

use serde::Deserialize;
use wicket_plugin_sdk::{export_plugin, metrics, Hooks, Plugin, Request, RequestAction, Response};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RequireHeader {
    header: String,
}

impl Plugin for RequireHeader {
    fn init(config: &str) -> Result<Self, String> {
        let me: RequireHeader = wicket_plugin_sdk::config::parse_object(config)?;
        if me.header.is_empty() {
            return Err("header: must not be empty".into());
        }
        Ok(RequireHeader {
            header: me.header.to_ascii_lowercase(),
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&self, request: &Request) -> RequestAction {
        if request.header(&self.header).is_some() {
            return RequestAction::Continue(Default::default());
        }
        let route = metrics::Label {
            name: "route".into(),
            value: request.route().to_string(),
        };
        metrics::counter_add("refused_total", &[route], 1);
        let message = format!("the {} header is required", self.header);
        RequestAction::Respond(Response::json_error(400, "missing_header", &message))
    }
}

export_plugin!(RequireHeader);

#[cfg(test)]
mod tests {
    use super::*;
    use wicket_plugin_sdk::{header, RequestHead};

    fn request(headers: Vec<wicket_plugin_sdk::Header>) -> Request<'static> {
        Request::from_head(RequestHead {
            method: "GET".into(),
            scheme: "http".into(),
            authority: "example.test".into(),
            path: "/".into(),
            query: None,
            headers,
            client_addr: "203.0.113.7:40000".into(),
            route: "r".into(),
            params: vec![],
            upstream: "default".into(),
        })
    }

    #[test]
    fn the_config_must_name_the_header() {
        assert!(RequireHeader::init("{}").unwrap_err().contains("header"));
    }

    #[test]
    fn a_request_with_the_header_passes() {
        let p = RequireHeader::init(r#"{"header": "X-Tenant"}"#).unwrap();
        let r = request(vec![header("x-tenant", "acme")]);
        assert!(matches!(p.on_request(&r), RequestAction::Continue(_)));
    }
}
