//! Degradation configuration: the route's JSON, checked once in `init` and
//! turned into an immutable [`Degradation`] that every request reads.

use std::collections::BTreeMap;

use serde::Deserialize;
use wicket_plugin_sdk::config::{header_name, parse_object};

use crate::decide::{Trigger, Triggers};

/// The marker header put on every degraded response unless configured otherwise.
pub(crate) const DEFAULT_MARKER_HEADER: &str = "x-wicket-degraded";

/// The header the circuit-breaker plugin sets (to `open`) on its short-circuit reply.
pub(crate) const DEFAULT_CIRCUIT_HEADER: &str = "x-wicket-circuit";

/// The plugin's configuration as written on the route.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default = "all_triggers")]
    on: Vec<Trigger>,
    #[serde(default)]
    fallback: Option<RawFallback>,
    #[serde(default)]
    force: bool,
    #[serde(default)]
    switch_key: Option<String>,
    #[serde(default)]
    on_state_error: OnStateError,
    // `null` turns the marker off; a missing field keeps the default name.
    #[serde(default = "default_marker_header")]
    marker_header: Option<String>,
    #[serde(default = "default_circuit_header")]
    circuit_header: String,
    #[serde(default)]
    methods: Option<Vec<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFallback {
    #[serde(default = "default_status")]
    status: u16,
    #[serde(default)]
    headers: BTreeMap<String, String>,
    #[serde(default)]
    body: Option<String>,
    #[serde(default)]
    body_json: Option<serde_json::Value>,
}

fn all_triggers() -> Vec<Trigger> {
    Trigger::ALL.to_vec()
}

fn default_marker_header() -> Option<String> {
    Some(DEFAULT_MARKER_HEADER.to_string())
}

fn default_circuit_header() -> String {
    DEFAULT_CIRCUIT_HEADER.to_string()
}

fn default_status() -> u16 {
    503
}

/// What to do when the shared state holding the manual switch cannot be read.
#[derive(Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnStateError {
    /// Treat the switch as off and serve normally. The default: the switch is a
    /// manual override, and an unreachable state store must not take a healthy
    /// route down with it.
    #[default]
    Allow,
    /// Treat the switch as on and serve the fallback: for a switch that guards
    /// a backend which must not be called (e.g. during a migration).
    Deny,
}

/// The response served in place of the upstream's.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Fallback {
    pub(crate) status: u16,
    /// Lower-case names, `content-type` always present.
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: Vec<u8>,
}

/// A validated configuration: what every hook call reads, never changed after `init`.
#[derive(Debug)]
pub(crate) struct Degradation {
    pub(crate) triggers: Triggers,
    pub(crate) fallback: Fallback,
    pub(crate) force: bool,
    pub(crate) switch_key: Option<String>,
    pub(crate) on_state_error: OnStateError,
    pub(crate) marker_header: Option<String>,
    pub(crate) circuit_header: String,
    /// Upper-case methods the plugin acts on; `None` means every method.
    pub(crate) methods: Option<Vec<String>>,
}

impl Degradation {
    /// Parse and validate the route's JSON configuration. Errors name the field.
    pub(crate) fn from_json(text: &str) -> Result<Degradation, String> {
        let raw: RawConfig = parse_object(text)?;

        let triggers = Triggers::from_list(&raw.on);
        if triggers.is_empty() && !raw.force && raw.switch_key.is_none() {
            return Err(
                "on: give at least one trigger, or set force or switch_key (otherwise the plugin never acts)"
                    .to_string(),
            );
        }

        if let Some(key) = &raw.switch_key {
            if key.is_empty() {
                return Err("switch_key: must not be empty".to_string());
            }
        }

        let marker_header = match raw.marker_header {
            Some(name) => Some(header_name("marker_header", &name)?),
            None => None,
        };
        let circuit_header = header_name("circuit_header", &raw.circuit_header)?;

        let methods = match raw.methods {
            Some(list) => {
                if list.is_empty() {
                    return Err(
                        "methods: must not be empty (omit it to act on every method)".to_string(),
                    );
                }
                let mut upper = Vec::with_capacity(list.len());
                for m in list {
                    if m.is_empty() || !m.bytes().all(|b| b.is_ascii_alphabetic()) {
                        return Err(format!("methods: `{m}` is not an HTTP method"));
                    }
                    upper.push(m.to_ascii_uppercase());
                }
                Some(upper)
            }
            None => None,
        };

        let fallback = match raw.fallback {
            Some(f) => Fallback::from_raw(f)?,
            None => Fallback::default_json(),
        };

        Ok(Degradation {
            triggers,
            fallback,
            force: raw.force,
            switch_key: raw.switch_key,
            on_state_error: raw.on_state_error,
            marker_header,
            circuit_header,
            methods,
        })
    }

    /// Whether the plugin acts on requests with this (upper-case) method.
    pub(crate) fn applies_to(&self, method: &str) -> bool {
        match &self.methods {
            Some(list) => list.iter().any(|m| m.eq_ignore_ascii_case(method)),
            None => true,
        }
    }
}

impl Fallback {
    /// The fallback of a route that configures none: a JSON refusal in the
    /// shape every Wicket plugin uses.
    fn default_json() -> Fallback {
        Fallback {
            status: 503,
            headers: vec![("content-type".to_string(), "application/json".to_string())],
            body: br#"{"error":"service_degraded","message":"the service is temporarily degraded; try again later"}"#
                .to_vec(),
        }
    }

    fn from_raw(raw: RawFallback) -> Result<Fallback, String> {
        // 1xx are not final responses; the host accepts nothing above 599.
        if !(200..=599).contains(&raw.status) {
            return Err(format!(
                "fallback.status: must be 200..=599, got {}",
                raw.status
            ));
        }
        let mut headers = Vec::with_capacity(raw.headers.len() + 1);
        for (name, value) in raw.headers {
            let name = header_name("fallback.headers", &name)?;
            if matches!(name.as_str(), "content-length" | "transfer-encoding") {
                return Err(format!(
                    "fallback.headers: `{name}` is set by the gateway from the body"
                ));
            }
            if value.bytes().any(|b| b == b'\r' || b == b'\n' || b == 0) {
                return Err(format!(
                    "fallback.headers.{name}: value must not contain CR, LF or NUL"
                ));
            }
            headers.push((name, value));
        }
        let (body, default_type) = match (raw.body, raw.body_json) {
            (Some(_), Some(_)) => {
                return Err("fallback: give body or body_json, not both".to_string())
            }
            (Some(text), None) => (text.into_bytes(), "text/plain; charset=utf-8"),
            (None, Some(json)) => (json.to_string().into_bytes(), "application/json"),
            (None, None) => (Vec::new(), "text/plain; charset=utf-8"),
        };
        if !headers.iter().any(|(n, _)| n == "content-type") {
            headers.push(("content-type".to_string(), default_type.to_string()));
        }
        Ok(Fallback {
            status: raw.status,
            headers,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_degrades_on_every_trigger_with_json_503() {
        let d = Degradation::from_json("{}").unwrap();
        assert_eq!(d.triggers, Triggers::from_list(&Trigger::ALL));
        assert_eq!(d.fallback.status, 503);
        assert_eq!(
            d.fallback.headers,
            vec![("content-type".to_string(), "application/json".to_string())]
        );
        let body: serde_json::Value = serde_json::from_slice(&d.fallback.body).unwrap();
        assert_eq!(body["error"], "service_degraded");
        assert_eq!(d.marker_header.as_deref(), Some("x-wicket-degraded"));
        assert_eq!(d.circuit_header, "x-wicket-circuit");
        assert!(!d.force);
        assert_eq!(d.on_state_error, OnStateError::Allow);
        assert!(d.applies_to("POST"));
    }

    #[test]
    fn full_config_is_read() {
        let d = Degradation::from_json(
            r#"{
                "on": ["5xx", "timeout"],
                "fallback": {"status": 200, "headers": {"Cache-Control": "no-store"}, "body_json": {"items": []}},
                "force": true,
                "switch_key": "degrade:api",
                "on_state_error": "deny",
                "marker_header": "X-Degraded",
                "circuit_header": "x-breaker",
                "methods": ["get", "HEAD"]
            }"#,
        )
        .unwrap();
        assert_eq!(
            d.triggers,
            Triggers::from_list(&[Trigger::Status5xx, Trigger::Timeout])
        );
        assert_eq!(d.fallback.status, 200);
        assert_eq!(
            d.fallback.headers,
            vec![
                ("cache-control".to_string(), "no-store".to_string()),
                ("content-type".to_string(), "application/json".to_string()),
            ]
        );
        assert_eq!(d.fallback.body, br#"{"items":[]}"#);
        assert!(d.force);
        assert_eq!(d.switch_key.as_deref(), Some("degrade:api"));
        assert_eq!(d.on_state_error, OnStateError::Deny);
        assert_eq!(d.marker_header.as_deref(), Some("x-degraded"));
        assert_eq!(d.circuit_header, "x-breaker");
        assert!(d.applies_to("GET"));
        assert!(!d.applies_to("POST"));
    }

    #[test]
    fn text_body_defaults_to_plain_text_unless_content_type_given() {
        let d = Degradation::from_json(r#"{"fallback": {"body": "sorry"}}"#).unwrap();
        assert_eq!(d.fallback.status, 503);
        assert_eq!(d.fallback.body, b"sorry");
        assert_eq!(
            d.fallback.headers,
            vec![(
                "content-type".to_string(),
                "text/plain; charset=utf-8".to_string()
            )]
        );

        let d = Degradation::from_json(
            r#"{"fallback": {"body": "<p>sorry</p>", "headers": {"content-type": "text/html"}}}"#,
        )
        .unwrap();
        assert_eq!(
            d.fallback.headers,
            vec![("content-type".to_string(), "text/html".to_string())]
        );
    }

    #[test]
    fn null_marker_header_turns_the_marker_off() {
        let d = Degradation::from_json(r#"{"marker_header": null}"#).unwrap();
        assert_eq!(d.marker_header, None);
    }

    fn error(json: &str) -> String {
        Degradation::from_json(json).unwrap_err()
    }

    #[test]
    fn errors_name_the_field() {
        assert!(error(r#"{"rate": 1}"#).contains("unknown field `rate`"));
        assert!(error(r#"{"on": ["5xx", "4xx"]}"#).starts_with("on[1]: unknown variant `4xx`"));
        assert_eq!(
            error(r#"{"fallback": {"status": "ok"}}"#),
            r#"fallback.status: invalid type: string "ok", expected u16"#
        );
        assert!(error(r#"{"fallback": {"status": 99}}"#).starts_with("fallback.status:"));
        assert!(error(r#"{"fallback": {"status": 600}}"#).starts_with("fallback.status:"));
        assert!(error(r#"{"fallback": {"body": "a", "body_json": {}}}"#).starts_with("fallback:"));
        assert!(
            error(r#"{"fallback": {"headers": {"content-length": "3"}}}"#)
                .starts_with("fallback.headers:")
        );
        assert!(error(r#"{"fallback": {"headers": {"bad name": "x"}}}"#)
            .starts_with("fallback.headers:"));
        assert!(
            error(r#"{"fallback": {"headers": {"x-a": "1\r\nx-b: 2"}}}"#)
                .starts_with("fallback.headers.x-a:")
        );
        assert!(error(r#"{"marker_header": ""}"#).starts_with("marker_header:"));
        assert!(error(r#"{"circuit_header": "a:b"}"#).starts_with("circuit_header:"));
        assert!(error(r#"{"switch_key": ""}"#).starts_with("switch_key:"));
        assert!(error(r#"{"methods": []}"#).starts_with("methods:"));
        assert!(error(r#"{"methods": ["G T"]}"#).starts_with("methods:"));
        assert!(error(r#"{"on_state_error": "maybe"}"#).starts_with("on_state_error:"));
        assert_eq!(error("[1]"), "configuration must be a JSON object");
        assert!(error("{} x").starts_with("configuration has trailing characters"));
    }

    #[test]
    fn no_trigger_needs_a_manual_switch() {
        assert!(error(r#"{"on": []}"#).starts_with("on:"));
        assert!(Degradation::from_json(r#"{"on": [], "force": true}"#).is_ok());
        assert!(Degradation::from_json(r#"{"on": [], "switch_key": "k"}"#).is_ok());
    }
}
