//! Test guest `bad_init.wasm`: validates its configuration in `init` and refuses
//! it unless `must_be_positive` is a positive integer.
//!
//! Config: `{"must_be_positive": <integer>}` (required; unknown fields refused).
//! Lets host tests check that an `init` error fails the whole configuration and
//! that the message, which names the field, reaches the operator. A valid
//! configuration gives a plugin that lets everything through.

use serde::Deserialize;
use wicket_plugin_sdk::{export_plugin, Plugin};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    must_be_positive: Option<i64>,
}

struct BadInit;

/// Check the configuration text; the error names the offending field.
fn validate(config: &str) -> Result<(), String> {
    let config: Config =
        serde_json::from_str(config).map_err(|e| format!("invalid configuration: {e}"))?;
    match config.must_be_positive {
        None => Err("must_be_positive: required, must be > 0".to_string()),
        Some(n) if n <= 0 => Err(format!("must_be_positive: must be > 0, got {n}")),
        Some(_) => Ok(()),
    }
}

impl Plugin for BadInit {
    fn init(config: &str) -> Result<Self, String> {
        validate(config).map(|()| BadInit)
    }
}

export_plugin!(BadInit);

#[cfg(test)]
mod tests {
    use super::validate;

    #[test]
    fn positive_accepted() {
        assert_eq!(validate(r#"{"must_be_positive": 1}"#), Ok(()));
    }

    #[test]
    fn zero_or_negative_rejected_naming_field() {
        assert_eq!(
            validate(r#"{"must_be_positive": 0}"#).unwrap_err(),
            "must_be_positive: must be > 0, got 0"
        );
        assert_eq!(
            validate(r#"{"must_be_positive": -3}"#).unwrap_err(),
            "must_be_positive: must be > 0, got -3"
        );
    }

    #[test]
    fn missing_field_rejected_naming_field() {
        assert!(validate("{}").unwrap_err().starts_with("must_be_positive:"));
    }

    #[test]
    fn unknown_field_rejected() {
        let err = validate(r#"{"must_be_positive": 1, "other": 2}"#).unwrap_err();
        assert!(err.contains("other"), "{err}");
    }
}
