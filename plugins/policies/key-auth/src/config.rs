//! The plugin's route configuration: parsed from JSON, validated once in `init`.

use std::collections::BTreeMap;

use serde::Deserialize;
use wicket_plugin_sdk::config;

/// The configuration as written in the route.
#[derive(Deserialize, Debug)]
#[serde(deny_unknown_fields)]
pub(crate) struct Config {
    /// API key → consumer name. Required and non-empty.
    #[serde(default)]
    pub(crate) keys: BTreeMap<String, String>,
    /// Request header carrying the key.
    #[serde(default = "default_header")]
    pub(crate) header: String,
    /// Query parameter carrying the key, tried when the header is absent.
    #[serde(default)]
    pub(crate) query_param: Option<String>,
    /// Remove the key header before the request goes upstream.
    #[serde(default = "default_true")]
    pub(crate) strip_key: bool,
    /// Header that carries the authenticated consumer's name upstream.
    #[serde(default = "default_consumer_header")]
    pub(crate) consumer_header: String,
}

fn default_header() -> String {
    "x-api-key".to_string()
}

fn default_consumer_header() -> String {
    "x-wicket-consumer".to_string()
}

fn default_true() -> bool {
    true
}

impl Config {
    /// Parse and validate; errors name the offending field.
    pub(crate) fn parse(text: &str) -> Result<Config, String> {
        let mut config: Config = from_json(text)?;
        config.header = config.header.to_ascii_lowercase();
        config.consumer_header = config.consumer_header.to_ascii_lowercase();
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        if self.keys.is_empty() {
            return Err("keys: must map at least one API key to a consumer name".into());
        }
        for (key, consumer) in &self.keys {
            if key.is_empty() {
                return Err("keys: an API key must not be empty".into());
            }
            if consumer.is_empty() || !is_header_value(consumer) {
                return Err(format!(
                    "keys: the consumer name for a key must be non-empty printable text (got {consumer:?})"
                ));
            }
        }
        if !is_header_name(&self.header) {
            return Err(format!(
                "header: {:?} is not a valid header name",
                self.header
            ));
        }
        if !is_header_name(&self.consumer_header) {
            return Err(format!(
                "consumer_header: {:?} is not a valid header name",
                self.consumer_header
            ));
        }
        if self.consumer_header == self.header {
            return Err("consumer_header: must differ from header".into());
        }
        if let Some(param) = &self.query_param {
            if param.is_empty() {
                return Err("query_param: must not be empty".into());
            }
        }
        Ok(())
    }
}

/// An HTTP token (RFC 9110 §5.1), as the host requires for header names.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Text that can travel in a header value: no control characters.
fn is_header_value(value: &str) -> bool {
    !value.chars().any(char::is_control)
}

/// Deserialize, prefixing errors with the path of the offending field.
fn from_json(text: &str) -> Result<Config, String> {
    config::deserialize(text).map_err(|e| e.describe("invalid key-auth config"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_apply() {
        let c = Config::parse(r#"{"keys": {"k1": "alice"}}"#).unwrap();
        assert_eq!(c.header, "x-api-key");
        assert_eq!(c.query_param, None);
        assert!(c.strip_key);
        assert_eq!(c.consumer_header, "x-wicket-consumer");
    }

    #[test]
    fn empty_config_names_the_missing_field() {
        let err = Config::parse("{}").unwrap_err();
        assert!(err.starts_with("keys:"), "{err}");
    }

    #[test]
    fn type_errors_name_the_field() {
        let err = Config::parse(r#"{"keys": {"k": "a"}, "strip_key": "yes"}"#).unwrap_err();
        assert!(err.starts_with("strip_key: invalid type"), "{err}");
        let err = Config::parse(r#"{"keys": {"k": 1}}"#).unwrap_err();
        assert!(err.starts_with("keys.k: invalid type"), "{err}");
    }

    #[test]
    fn unknown_field_is_rejected() {
        let err = Config::parse(r#"{"keys": {"k": "a"}, "hdr": "x"}"#).unwrap_err();
        assert!(err.contains("unknown field `hdr`"), "{err}");
    }

    #[test]
    fn bad_values_are_rejected_by_field() {
        let cases = [
            (r#"{"keys": {"": "a"}}"#, "keys:"),
            (r#"{"keys": {"k": ""}}"#, "keys:"),
            (r#"{"keys": {"k": "a\nb"}}"#, "keys:"),
            (r#"{"keys": {"k": "a"}, "header": "x api"}"#, "header:"),
            (
                r#"{"keys": {"k": "a"}, "consumer_header": ""}"#,
                "consumer_header:",
            ),
            (r#"{"keys": {"k": "a"}, "query_param": ""}"#, "query_param:"),
            (
                r#"{"keys": {"k": "a"}, "consumer_header": "X-Api-Key"}"#,
                "consumer_header:",
            ),
        ];
        for (text, field) in cases {
            let err = Config::parse(text).unwrap_err();
            assert!(err.starts_with(field), "{text}: {err}");
        }
    }
}
