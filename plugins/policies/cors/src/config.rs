//! The plugin's route configuration: parsed from JSON, validated once in `init`.

use serde::Deserialize;
use wicket_plugin_sdk::config;

use crate::origin::{Origin, Pattern};

/// The configuration as written in the route.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default)]
    allow_origins: Vec<String>,
    #[serde(default = "default_methods")]
    allow_methods: Vec<String>,
    #[serde(default = "default_allow_headers")]
    allow_headers: Vec<String>,
    #[serde(default = "default_expose_headers")]
    expose_headers: Vec<String>,
    #[serde(default = "default_max_age")]
    max_age_seconds: u32,
    #[serde(default)]
    allow_credentials: bool,
}

/// The validated configuration.
#[derive(Debug)]
pub(crate) struct Config {
    /// The origins allowed; `Any` for `*`.
    pub(crate) origins: Origins,
    /// Methods a preflight may ask for, as written (methods are case-sensitive).
    pub(crate) methods: Vec<String>,
    /// Request headers a preflight may ask for, lower-case; `None` for `*`.
    pub(crate) allow_headers: Option<Vec<String>>,
    /// Response headers the browser may show the page, lower-case.
    pub(crate) expose_headers: Vec<String>,
    pub(crate) max_age_seconds: u32,
    pub(crate) allow_credentials: bool,
}

/// Which origins may read responses.
#[derive(Debug)]
pub(crate) enum Origins {
    /// `*`: every origin (never with credentials).
    Any,
    /// Exact origins and `*.` subdomain patterns.
    Listed(Vec<Pattern>),
}

impl Origins {
    pub(crate) fn allows(&self, origin: &Origin) -> bool {
        match self {
            Origins::Any => true,
            Origins::Listed(patterns) => patterns.iter().any(|p| p.matches(origin)),
        }
    }
}

fn default_methods() -> Vec<String> {
    ["GET", "HEAD", "POST"].map(String::from).to_vec()
}

/// What the grpc-web library and `fetch` with a bearer token send.
fn default_allow_headers() -> Vec<String> {
    [
        "authorization",
        "content-type",
        "grpc-timeout",
        "x-grpc-web",
        "x-user-agent",
    ]
    .map(String::from)
    .to_vec()
}

/// What a gRPC-Web client must read from the head (a trailers-only answer
/// carries its status there), and the gateway's request id.
fn default_expose_headers() -> Vec<String> {
    [
        "grpc-status",
        "grpc-message",
        "grpc-status-details-bin",
        "x-request-id",
    ]
    .map(String::from)
    .to_vec()
}

fn default_max_age() -> u32 {
    600
}

impl Config {
    /// Parse and validate; errors name the offending field.
    pub(crate) fn parse(text: &str) -> Result<Config, String> {
        let raw: Raw = config::deserialize(text)
            .map_err(|e: config::ConfigError| e.describe("invalid cors config"))?;
        if raw.allow_origins.is_empty() {
            return Err(
                "allow_origins: must list at least one origin (`https://app.example.com`, `https://*.example.com` or `*`)"
                    .into(),
            );
        }
        let origins = if raw.allow_origins.iter().any(|o| o == "*") {
            if raw.allow_origins.len() > 1 {
                return Err(
                    "allow_origins: `*` allows every origin; list nothing beside it".into(),
                );
            }
            if raw.allow_credentials {
                return Err(
                    "allow_credentials: browsers refuse credentials with `allow_origins: [\"*\"]`; list the origins"
                        .into(),
                );
            }
            Origins::Any
        } else {
            let mut patterns = Vec::with_capacity(raw.allow_origins.len());
            for (i, text) in raw.allow_origins.iter().enumerate() {
                patterns
                    .push(Pattern::parse(text).map_err(|e| format!("allow_origins[{i}]: {e}"))?);
            }
            Origins::Listed(patterns)
        };
        if raw.allow_methods.is_empty() {
            return Err("allow_methods: must list at least one method".into());
        }
        for (i, m) in raw.allow_methods.iter().enumerate() {
            if !is_token(m) {
                return Err(format!("allow_methods[{i}]: {m:?} is not an HTTP method"));
            }
        }
        let allow_headers = if raw.allow_headers.iter().any(|h| h == "*") {
            if raw.allow_headers.len() > 1 {
                return Err(
                    "allow_headers: `*` allows every header; list nothing beside it".into(),
                );
            }
            None
        } else {
            Some(lower_tokens(&raw.allow_headers, "allow_headers")?)
        };
        if raw.expose_headers.iter().any(|h| h == "*") {
            return Err(
                "expose_headers: list the headers; `*` is not honoured with credentials and hides intent"
                    .into(),
            );
        }
        let expose_headers = lower_tokens(&raw.expose_headers, "expose_headers")?;
        if raw.max_age_seconds > 86_400 {
            return Err(format!(
                "max_age_seconds: {} is more than a day, which browsers cut anyway",
                raw.max_age_seconds
            ));
        }
        Ok(Config {
            origins,
            methods: raw.allow_methods,
            allow_headers,
            expose_headers,
            max_age_seconds: raw.max_age_seconds,
            allow_credentials: raw.allow_credentials,
        })
    }
}

fn lower_tokens(names: &[String], field: &str) -> Result<Vec<String>, String> {
    names
        .iter()
        .enumerate()
        .map(|(i, h)| {
            if is_token(h) {
                Ok(h.to_ascii_lowercase())
            } else {
                Err(format!("{field}[{i}]: {h:?} is not a header name"))
            }
        })
        .collect()
}

/// An HTTP token (RFC 9110 §5.6.2): header names and methods.
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_suit_grpc_web() {
        let c = Config::parse(r#"{"allow_origins": ["https://app.example.com"]}"#).unwrap();
        assert_eq!(c.methods, ["GET", "HEAD", "POST"]);
        let allow = c.allow_headers.unwrap();
        for h in ["content-type", "x-grpc-web", "x-user-agent", "grpc-timeout"] {
            assert!(allow.contains(&h.to_string()), "{h}");
        }
        assert!(c.expose_headers.contains(&"grpc-status".to_string()));
        assert_eq!(c.max_age_seconds, 600);
        assert!(!c.allow_credentials);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let cases = [
            ("{}", "allow_origins:"),
            (
                r#"{"allow_origins": ["*", "https://a.test"]}"#,
                "allow_origins:",
            ),
            (
                r#"{"allow_origins": ["*"], "allow_credentials": true}"#,
                "allow_credentials:",
            ),
            (r#"{"allow_origins": ["a.test"]}"#, "allow_origins[0]:"),
            (
                r#"{"allow_origins": ["https://a.test/"]}"#,
                "allow_origins[0]:",
            ),
            (
                r#"{"allow_origins": ["https://a.test", "null"]}"#,
                "allow_origins[1]:",
            ),
            (r#"{"allow_origins": ["https://*"]}"#, "allow_origins[0]:"),
            (
                r#"{"allow_origins": ["https://a.*.test"]}"#,
                "allow_origins[0]:",
            ),
            (
                r#"{"allow_origins": ["https://a.test"], "allow_methods": []}"#,
                "allow_methods:",
            ),
            (
                r#"{"allow_origins": ["https://a.test"], "allow_methods": ["GE T"]}"#,
                "allow_methods[0]:",
            ),
            (
                r#"{"allow_origins": ["https://a.test"], "allow_headers": ["x y"]}"#,
                "allow_headers[0]:",
            ),
            (
                r#"{"allow_origins": ["https://a.test"], "allow_headers": ["*", "x"]}"#,
                "allow_headers:",
            ),
            (
                r#"{"allow_origins": ["https://a.test"], "expose_headers": ["*"]}"#,
                "expose_headers:",
            ),
            (
                r#"{"allow_origins": ["https://a.test"], "max_age_seconds": 100000}"#,
                "max_age_seconds:",
            ),
            (
                r#"{"allow_origins": ["https://a.test"], "max_age_seconds": -1}"#,
                "max_age_seconds:",
            ),
            (
                r#"{"allow_origins": ["https://a.test"], "origins": []}"#,
                "unknown field `origins`",
            ),
        ];
        for (text, want) in cases {
            let err = Config::parse(text).unwrap_err();
            assert!(err.contains(want), "{text}: {err}");
        }
    }
}
