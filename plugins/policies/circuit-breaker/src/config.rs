//! The plugin's configuration: parsed from the route's JSON, validated once in
//! `init`, immutable afterwards.

use serde::Deserialize;
use wicket_plugin_sdk::config;

use crate::machine::{ErrorRate, Policy};
use crate::outcome::{FailureOn, DEFAULT_FAILURE_ON};

/// Longest cooldown, window or probe timeout: a day.
const MAX_SECONDS: u64 = 86_400;

/// What one circuit covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Scope {
    /// One circuit per upstream, shared by every route that sends to it.
    Upstream,
    /// One circuit per route.
    Route,
}

/// What to do when the state store fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum OnStateError {
    /// Let the request through as if the circuit were closed.
    Allow,
    /// Refuse the request with 503.
    Deny,
}

/// The route's JSON, as written.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    #[serde(default = "default_scope")]
    scope: Scope,
    #[serde(default = "default_consecutive_failures")]
    consecutive_failures: u32,
    error_rate_percent: Option<u32>,
    window_seconds: Option<u64>,
    min_requests: Option<u32>,
    #[serde(default = "default_cooldown")]
    cooldown_seconds: u64,
    #[serde(default = "default_probes")]
    half_open_probes: u32,
    probe_timeout_seconds: Option<u64>,
    #[serde(default = "default_failure_on")]
    failure_on: Vec<String>,
    #[serde(default = "default_on_state_error")]
    on_state_error: OnStateError,
}

fn default_scope() -> Scope {
    Scope::Upstream
}
fn default_consecutive_failures() -> u32 {
    5
}
fn default_cooldown() -> u64 {
    30
}
fn default_probes() -> u32 {
    1
}
fn default_failure_on() -> Vec<String> {
    DEFAULT_FAILURE_ON.iter().map(|s| s.to_string()).collect()
}
fn default_on_state_error() -> OnStateError {
    // Fail open: without its state the breaker cannot know the upstream is
    // failing, so the honest fallback is to act as if there were no breaker.
    // Upstream failures still reach the client as 502/504; refusing instead
    // would turn a state-store outage into an outage of every guarded route.
    OnStateError::Allow
}

const DEFAULT_WINDOW_SECONDS: u64 = 10;
const DEFAULT_MIN_REQUESTS: u32 = 20;

/// The validated configuration.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Config {
    pub(crate) scope: Scope,
    pub(crate) policy: Policy,
    pub(crate) failure_on: FailureOn,
    pub(crate) on_state_error: OnStateError,
}

impl Config {
    /// Parse and validate; errors name the field.
    pub(crate) fn parse(json: &str) -> Result<Config, String> {
        let raw: Raw = config::deserialize(json).map_err(|e| e.to_string())?;
        raw.validate()
    }
}

fn seconds(field: &str, value: u64) -> Result<u64, String> {
    if value == 0 || value > MAX_SECONDS {
        return Err(format!("{field}: must be between 1 and {MAX_SECONDS}"));
    }
    Ok(value * 1000)
}

impl Raw {
    fn validate(self) -> Result<Config, String> {
        let error_rate = match self.error_rate_percent {
            Some(percent) => {
                if !(1..=100).contains(&percent) {
                    return Err("error_rate_percent: must be between 1 and 100".to_string());
                }
                let min_requests = self.min_requests.unwrap_or(DEFAULT_MIN_REQUESTS);
                if min_requests == 0 {
                    return Err("min_requests: must be at least 1".to_string());
                }
                Some(ErrorRate {
                    percent,
                    window_ms: seconds(
                        "window_seconds",
                        self.window_seconds.unwrap_or(DEFAULT_WINDOW_SECONDS),
                    )?,
                    min_requests,
                })
            }
            None => {
                // Said without the rule they belong to, these would be
                // silently ignored: refuse them instead.
                if self.window_seconds.is_some() {
                    return Err("window_seconds: only used with error_rate_percent".to_string());
                }
                if self.min_requests.is_some() {
                    return Err("min_requests: only used with error_rate_percent".to_string());
                }
                None
            }
        };
        if self.consecutive_failures == 0 && error_rate.is_none() {
            return Err(
                "consecutive_failures: 0 turns it off, so error_rate_percent must be set"
                    .to_string(),
            );
        }
        if self.half_open_probes == 0 || self.half_open_probes > 1000 {
            return Err("half_open_probes: must be between 1 and 1000".to_string());
        }
        let cooldown_ms = seconds("cooldown_seconds", self.cooldown_seconds)?;
        let probe_timeout_ms = seconds(
            "probe_timeout_seconds",
            self.probe_timeout_seconds.unwrap_or(self.cooldown_seconds),
        )?;
        Ok(Config {
            scope: self.scope,
            policy: Policy {
                consecutive_failures: self.consecutive_failures,
                error_rate,
                cooldown_ms,
                half_open_probes: self.half_open_probes,
                probe_timeout_ms,
            },
            failure_on: FailureOn::parse(&self.failure_on)?,
            on_state_error: self.on_state_error,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gets_defaults() {
        let c = Config::parse("{}").unwrap();
        assert_eq!(c.scope, Scope::Upstream);
        assert_eq!(
            c.policy,
            Policy {
                consecutive_failures: 5,
                error_rate: None,
                cooldown_ms: 30_000,
                half_open_probes: 1,
                probe_timeout_ms: 30_000,
            }
        );
        assert_eq!(
            c.failure_on,
            FailureOn::parse(&default_failure_on()).unwrap()
        );
        assert_eq!(c.on_state_error, OnStateError::Allow);
    }

    #[test]
    fn error_rate_config_parses() {
        let c = Config::parse(
            r#"{"scope": "route", "consecutive_failures": 0, "error_rate_percent": 50,
                "window_seconds": 30, "min_requests": 10, "cooldown_seconds": 5,
                "half_open_probes": 3, "probe_timeout_seconds": 20,
                "failure_on": ["5xx", "timeout"], "on_state_error": "deny"}"#,
        )
        .unwrap();
        assert_eq!(c.scope, Scope::Route);
        assert_eq!(
            c.policy,
            Policy {
                consecutive_failures: 0,
                error_rate: Some(ErrorRate {
                    percent: 50,
                    window_ms: 30_000,
                    min_requests: 10
                }),
                cooldown_ms: 5_000,
                half_open_probes: 3,
                probe_timeout_ms: 20_000,
            }
        );
        assert_eq!(c.on_state_error, OnStateError::Deny);
    }

    #[test]
    fn error_rate_defaults_window_and_min_requests() {
        let c = Config::parse(r#"{"error_rate_percent": 25}"#).unwrap();
        assert_eq!(
            c.policy.error_rate,
            Some(ErrorRate {
                percent: 25,
                window_ms: 10_000,
                min_requests: 20
            })
        );
    }

    fn err(json: &str) -> String {
        Config::parse(json).unwrap_err()
    }

    #[test]
    fn bad_values_name_their_field() {
        assert!(err(r#"{"scope": "host"}"#).starts_with("scope:"));
        assert!(err(r#"{"consecutive_failures": 0}"#).starts_with("consecutive_failures:"));
        assert!(err(r#"{"consecutive_failures": -1}"#).starts_with("consecutive_failures:"));
        assert!(err(r#"{"error_rate_percent": 0}"#).starts_with("error_rate_percent:"));
        assert!(err(r#"{"error_rate_percent": 101}"#).starts_with("error_rate_percent:"));
        assert!(err(r#"{"window_seconds": 10}"#).starts_with("window_seconds:"));
        assert!(err(r#"{"min_requests": 10}"#).starts_with("min_requests:"));
        assert!(err(r#"{"error_rate_percent": 5, "min_requests": 0}"#).starts_with("min_requests:"));
        assert!(
            err(r#"{"error_rate_percent": 5, "window_seconds": 0}"#).starts_with("window_seconds:")
        );
        assert!(err(r#"{"cooldown_seconds": 0}"#).starts_with("cooldown_seconds:"));
        assert!(err(r#"{"half_open_probes": 0}"#).starts_with("half_open_probes:"));
        assert!(err(r#"{"probe_timeout_seconds": 0}"#).starts_with("probe_timeout_seconds:"));
        assert!(err(r#"{"failure_on": []}"#).starts_with("failure_on:"));
        assert!(err(r#"{"failure_on": ["5xx", "slow"]}"#).starts_with("failure_on[1]:"));
        assert!(err(r#"{"on_state_error": "retry"}"#).starts_with("on_state_error:"));
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = err(r#"{"threshold": 5}"#);
        assert!(e.contains("unknown field `threshold`"), "{e}");
    }
}
