//! The plugin's configuration: parsed from the route's JSON, validated once in
//! `init`, immutable afterwards.

use serde::Deserialize;
use wicket_plugin_sdk::config;

use crate::bucket::Limit;
use crate::key::{KeySource, MissingKey};

/// Upper bounds far beyond any real limit. Together `burst × period_ms +
/// rate` must also stay below 2^53, where the host's store counts exactly
/// (checked in `parse`).
pub(crate) const MAX_RATE: u64 = 1_000_000_000;
pub(crate) const MAX_BURST: u64 = 1_000_000_000;
pub(crate) const MAX_PERIOD_SECONDS: u64 = 86_400;

/// Longest `bucket` name: keeps state keys well under the host's 512 bytes.
const MAX_BUCKET_NAME: usize = 128;

/// What to do when the state store fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnStateError {
    /// Let the request through without a limit.
    Allow,
    /// Refuse the request with 503.
    Deny,
}

/// The route's JSON, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    rate: Option<u64>,
    #[serde(default = "default_period")]
    period_seconds: u64,
    burst: Option<u64>,
    #[serde(default = "default_key")]
    key: String,
    #[serde(default = "default_missing_key")]
    missing_key: MissingKey,
    #[serde(default = "default_consumer_header")]
    consumer_header: String,
    bucket: Option<String>,
    #[serde(default = "default_on_state_error")]
    on_state_error: OnStateError,
}

fn default_period() -> u64 {
    1
}
fn default_key() -> String {
    "client_ip".to_string()
}
fn default_missing_key() -> MissingKey {
    MissingKey::Anonymous
}
fn default_consumer_header() -> String {
    "x-wicket-consumer".to_string()
}
fn default_on_state_error() -> OnStateError {
    // Fail open: the limiter protects capacity, and a state-store outage is
    // the gateway's fault, not the client's. Refusing every request while the
    // store is down would turn an infrastructure blip into a full API outage.
    // Routes where the limit guards something costly (paid quotas, expensive
    // upstreams) should set `deny`.
    OnStateError::Allow
}

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) limit: Limit,
    pub(crate) key: KeySource,
    pub(crate) missing_key: MissingKey,
    pub(crate) consumer_header: String,
    /// Shared bucket name; `None` scopes buckets to the route.
    pub(crate) bucket: Option<String>,
    pub(crate) on_state_error: OnStateError,
}

impl Config {
    /// Parse and validate; errors name the field.
    pub(crate) fn parse(json: &str) -> Result<Config, String> {
        let raw: Raw = config::deserialize(json).map_err(|e| e.to_string())?;
        raw.validate()
    }
}

impl Raw {
    fn validate(self) -> Result<Config, String> {
        let rate = self
            .rate
            .ok_or("rate: required (tokens added per period_seconds)")?;
        if rate == 0 || rate > MAX_RATE {
            return Err(format!("rate: must be between 1 and {MAX_RATE}"));
        }
        if self.period_seconds == 0 || self.period_seconds > MAX_PERIOD_SECONDS {
            return Err(format!(
                "period_seconds: must be between 1 and {MAX_PERIOD_SECONDS}"
            ));
        }
        // A bucket holding one period's worth of tokens is the usual reading
        // of "N per period".
        let burst = self.burst.unwrap_or(rate.min(MAX_BURST));
        if burst == 0 || burst > MAX_BURST {
            return Err(format!("burst: must be between 1 and {MAX_BURST}"));
        }
        let key = parse_key(&self.key)?;
        let consumer_header = self.consumer_header.to_ascii_lowercase();
        if !is_header_name(&consumer_header) {
            return Err("consumer_header: not a valid header name".to_string());
        }
        if let Some(bucket) = &self.bucket {
            if bucket.is_empty() || bucket.len() > MAX_BUCKET_NAME {
                return Err(format!("bucket: must be 1 to {MAX_BUCKET_NAME} characters"));
            }
        }
        let limit = Limit {
            rate,
            burst,
            period_ms: self.period_seconds * 1000,
        };
        if !limit.fits_host() {
            return Err(format!(
                "burst: {burst} tokens over {} s is more than the state store counts exactly; lower burst or period_seconds",
                self.period_seconds
            ));
        }
        Ok(Config {
            limit,
            key,
            missing_key: self.missing_key,
            consumer_header,
            bucket: self.bucket,
            on_state_error: self.on_state_error,
        })
    }
}

fn parse_key(key: &str) -> Result<KeySource, String> {
    match key {
        "client_ip" => Ok(KeySource::ClientIp),
        "consumer" => Ok(KeySource::Consumer),
        "route" => Ok(KeySource::Route),
        _ => match key.strip_prefix("header:") {
            Some(name) if is_header_name(&name.to_ascii_lowercase()) => {
                Ok(KeySource::Header(name.to_ascii_lowercase()))
            }
            Some(_) => Err(format!("key: `{key}` does not name a valid header")),
            None => Err(format!(
                "key: unknown `{key}`; expected client_ip, consumer, route or header:<name>"
            )),
        },
    }
}

/// An HTTP token (RFC 9110), as header names are; at most 128 bytes so it
/// fits in a state key.
fn is_header_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minimal_config_gets_defaults() {
        let c = Config::parse(r#"{"rate": 10}"#).unwrap();
        assert_eq!(
            c,
            Config {
                limit: Limit {
                    rate: 10,
                    burst: 10,
                    period_ms: 1000
                },
                key: KeySource::ClientIp,
                missing_key: MissingKey::Anonymous,
                consumer_header: "x-wicket-consumer".into(),
                bucket: None,
                on_state_error: OnStateError::Allow,
            }
        );
    }

    #[test]
    fn full_config_parses() {
        let c = Config::parse(
            r#"{"rate": 100, "period_seconds": 60, "burst": 5, "key": "header:X-Api-Key",
                "missing_key": "deny", "consumer_header": "X-Consumer", "bucket": "shared",
                "on_state_error": "deny"}"#,
        )
        .unwrap();
        assert_eq!(c.limit.period_ms, 60_000);
        assert_eq!(c.limit.burst, 5);
        assert_eq!(c.key, KeySource::Header("x-api-key".into()));
        assert_eq!(c.missing_key, MissingKey::Deny);
        assert_eq!(c.consumer_header, "x-consumer");
        assert_eq!(c.bucket.as_deref(), Some("shared"));
        assert_eq!(c.on_state_error, OnStateError::Deny);
    }

    fn err(json: &str) -> String {
        Config::parse(json).unwrap_err()
    }

    #[test]
    fn empty_config_names_rate() {
        assert!(err("{}").starts_with("rate: required"), "{}", err("{}"));
    }

    #[test]
    fn bad_values_name_their_field() {
        assert!(err(r#"{"rate": 0}"#).starts_with("rate:"));
        assert!(err(r#"{"rate": -1}"#).starts_with("rate:"));
        assert!(err(r#"{"rate": 1, "burst": 0}"#).starts_with("burst:"));
        assert!(err(r#"{"rate": 1, "period_seconds": 0}"#).starts_with("period_seconds:"));
        assert!(err(r#"{"rate": 1, "period_seconds": 86401}"#).starts_with("period_seconds:"));
        assert!(err(r#"{"rate": 1, "key": "ip"}"#).starts_with("key:"));
        assert!(err(r#"{"rate": 1, "key": "header:"}"#).starts_with("key:"));
        assert!(err(r#"{"rate": 1, "key": "header:a b"}"#).starts_with("key:"));
        assert!(err(r#"{"rate": 1, "missing_key": "drop"}"#).starts_with("missing_key:"));
        assert!(err(r#"{"rate": 1, "on_state_error": "maybe"}"#).starts_with("on_state_error:"));
        assert!(err(r#"{"rate": 1, "consumer_header": ""}"#).starts_with("consumer_header:"));
        assert!(err(r#"{"rate": 1, "bucket": ""}"#).starts_with("bucket:"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = err(r#"{"rate": 1, "limit": 5}"#);
        assert!(e.contains("unknown field `limit`"), "{e}");
    }
}
