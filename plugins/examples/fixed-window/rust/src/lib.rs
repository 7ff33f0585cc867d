//! Example plugin, written alike in Rust, Python and JavaScript
//! (`../python`, `../js`) and held to one spec (`../spec.yaml`): a fixed
//! window limit per client, with the window kept in the shared state so
//! every instance counts together.
//!
//! Config: `{"limit": 100, "window_seconds": 60, "key": "client-ip"}`; `key`
//! is `client-ip` (the default) or `header:<name>` (a request without the
//! header is counted by its client IP).

use serde::Deserialize;
use wicket_plugin_sdk::{
    export_plugin, state, Hooks, Plugin, Request, RequestAction, RequestPatch, Response,
};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    limit: u32,
    window_seconds: u32,
    #[serde(default)]
    key: Option<String>,
}

struct FixedWindow {
    limit: i64,
    window_ms: u64,
    /// The header that keys the window, if not the client IP.
    header: Option<String>,
}

impl Plugin for FixedWindow {
    fn init(config: &str) -> Result<Self, String> {
        let c: Config = wicket_plugin_sdk::config::parse_object(config)?;
        if c.limit == 0 {
            return Err("limit: must be at least 1".into());
        }
        if c.window_seconds == 0 {
            return Err("window_seconds: must be at least 1".into());
        }
        let header = match c.key.as_deref() {
            None | Some("client-ip") => None,
            Some(k) => match k.strip_prefix("header:") {
                Some(h) if !h.is_empty() => Some(h.to_ascii_lowercase()),
                _ => return Err(format!("key: {k:?} is neither client-ip nor header:<name>")),
            },
        };
        Ok(FixedWindow {
            limit: c.limit.into(),
            window_ms: u64::from(c.window_seconds) * 1000,
            header,
        })
    }

    fn hooks(&self) -> Hooks {
        Hooks::ON_REQUEST
    }

    fn on_request(&self, request: &Request) -> RequestAction {
        let who = self
            .header
            .as_deref()
            .and_then(|h| request.header_str(h))
            .unwrap_or_else(|| request.client_ip().to_string());
        let counter = match state::increment_with_ttl(&format!("w:{who}"), 1, Some(self.window_ms))
        {
            Ok(c) => c,
            // The store is down: let traffic through rather than refuse all.
            Err(_) => return RequestAction::Continue(RequestPatch::default()),
        };
        let remaining = (self.limit - counter.value).max(0);
        if counter.value > self.limit {
            let retry = counter.ttl_ms.unwrap_or(self.window_ms).div_ceil(1000);
            let body = serde_json::json!({"error": "rate_limited", "retry_after": retry});
            return RequestAction::Respond(
                Response::json(429, &body.to_string())
                    .with_header("retry-after", retry.to_string())
                    .with_header("x-ratelimit-limit", self.limit.to_string())
                    .with_header("x-ratelimit-remaining", "0"),
            );
        }
        RequestAction::Continue(
            RequestPatch::default()
                .response_header("x-ratelimit-limit", self.limit.to_string())
                .response_header("x-ratelimit-remaining", remaining.to_string()),
        )
    }
}

export_plugin!(FixedWindow);
