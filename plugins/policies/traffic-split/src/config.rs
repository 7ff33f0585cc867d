//! Traffic-split configuration: the route's JSON, checked once in `init` and
//! turned into an immutable [`TrafficSplit`] that every request reads.

use serde::Deserialize;
use wicket_plugin_sdk::config::{header_name, is_token, parse_object};

use crate::hash::Seeds;
use crate::rewrite::{RawRewrite, Rewrite};
use crate::split::{Rule, StickyKey, ValueMatch};

/// Where the authentication plugins put the consumer, by Wicket convention.
const DEFAULT_CONSUMER_HEADER: &str = "x-wicket-consumer";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    rules: Vec<RawRule>,
    #[serde(default)]
    sticky_key: Option<String>,
    #[serde(default)]
    rewrite: Option<RawRewrite>,
    #[serde(default)]
    upstream_header: Option<String>,
    #[serde(default = "default_consumer_header")]
    consumer_header: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRule {
    #[serde(default, rename = "match")]
    when: Option<RawMatch>,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    upstream: Option<String>,
    #[serde(default)]
    rewrite: Option<RawRewrite>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMatch {
    #[serde(default)]
    header: Option<RawValueMatch>,
    #[serde(default)]
    cookie: Option<RawValueMatch>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawValueMatch {
    name: String,
    #[serde(default)]
    value: Option<String>,
    #[serde(default)]
    values: Option<Vec<String>>,
}

fn default_consumer_header() -> String {
    DEFAULT_CONSUMER_HEADER.to_string()
}

/// A validated configuration: what every request reads, never changed after `init`.
#[derive(Debug)]
pub(crate) struct TrafficSplit {
    pub(crate) rules: Vec<Rule>,
    pub(crate) sticky_key: Option<StickyKey>,
    /// Applies to requests no rule matched, and to rules without their own.
    pub(crate) rewrite: Option<Rewrite>,
    /// Response header naming the upstream that served; `None` adds none.
    pub(crate) upstream_header: Option<String>,
    pub(crate) consumer_header: String,
    pub(crate) seeds: Seeds,
}

impl TrafficSplit {
    /// Check that every upstream a rule names is one of `known` (the
    /// gateway's upstreams, sorted).
    pub(crate) fn check_upstreams(&self, known: &[String]) -> Result<(), String> {
        for (i, rule) in self.rules.iter().enumerate() {
            if let Some(name) = &rule.upstream {
                if known.binary_search(name).is_err() {
                    return Err(format!(
                        "rules[{i}].upstream: no upstream named `{name}` in the configuration (upstreams: {})",
                        known.join(", ")
                    ));
                }
            }
        }
        Ok(())
    }

    /// Parse and validate the route's JSON configuration. Errors name the field.
    pub(crate) fn from_json(text: &str) -> Result<TrafficSplit, String> {
        let raw: RawConfig = parse_object(text)?;
        if raw.rules.is_empty() && raw.rewrite.is_none() {
            return Err("rules: give at least one rule (or a rewrite)".to_string());
        }

        let mut rules = Vec::with_capacity(raw.rules.len());
        for (i, raw_rule) in raw.rules.into_iter().enumerate() {
            let field = format!("rules[{i}]");
            if let Some(earlier) = rules.iter().position(Rule::matches_all) {
                return Err(format!(
                    "{field}: unreachable, rules[{earlier}] already matches every request"
                ));
            }
            rules.push(rule(&field, raw_rule)?);
        }

        let sticky_key = match raw.sticky_key {
            Some(key) => Some(sticky_key(&key)?),
            None => None,
        };
        let rewrite = match raw.rewrite {
            Some(r) => Some(Rewrite::from_raw("rewrite", r)?),
            None => None,
        };
        let upstream_header = match raw.upstream_header {
            Some(name) => Some(header_name("upstream_header", &name)?),
            None => None,
        };
        let consumer_header = header_name("consumer_header", &raw.consumer_header)?;

        Ok(TrafficSplit {
            rules,
            sticky_key,
            rewrite,
            upstream_header,
            consumer_header,
            // `init` starts the sequence from the clock.
            seeds: Seeds::new(0),
        })
    }
}

fn rule(field: &str, raw: RawRule) -> Result<Rule, String> {
    let (header, cookie) = match raw.when {
        Some(RawMatch {
            header: None,
            cookie: None,
        }) => {
            return Err(format!(
                "{field}.match: give header and/or cookie (omit match to match every request)"
            ))
        }
        Some(m) => (
            m.header
                .map(|h| value_match(&format!("{field}.match.header"), h, NameKind::Header))
                .transpose()?,
            m.cookie
                .map(|c| value_match(&format!("{field}.match.cookie"), c, NameKind::Cookie))
                .transpose()?,
        ),
        None => (None, None),
    };
    let weight = match raw.weight {
        Some(w) if w > 100 => {
            return Err(format!(
                "{field}.weight: must be a percentage, 0..=100, got {w}"
            ))
        }
        Some(w) => Some(w as u8),
        None => None,
    };
    let upstream = match raw.upstream {
        Some(name)
            if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) =>
        {
            return Err(format!(
                "{field}.upstream: `{name}` is not an upstream name"
            ))
        }
        other => other,
    };
    let rewrite = raw
        .rewrite
        .map(|r| Rewrite::from_raw(&format!("{field}.rewrite"), r))
        .transpose()?;
    if upstream.is_none() && rewrite.is_none() {
        return Err(format!(
            "{field}: give upstream, rewrite or both (the rule does nothing otherwise)"
        ));
    }
    let salt = upstream.clone().unwrap_or_else(|| field.to_string());
    Ok(Rule {
        header,
        cookie,
        weight,
        upstream,
        rewrite,
        salt,
    })
}

#[derive(Clone, Copy)]
enum NameKind {
    Header,
    Cookie,
}

fn value_match(field: &str, raw: RawValueMatch, kind: NameKind) -> Result<ValueMatch, String> {
    let name = match kind {
        NameKind::Header => header_name(&format!("{field}.name"), &raw.name)?,
        NameKind::Cookie => cookie_name(&format!("{field}.name"), &raw.name)?,
    };
    let values = match (raw.value, raw.values) {
        (Some(_), Some(_)) => return Err(format!("{field}: give value or values, not both")),
        (Some(v), None) => Some(vec![v]),
        (None, Some(vs)) if vs.is_empty() => {
            return Err(format!(
                "{field}.values: must not be empty (omit it to match any value)"
            ))
        }
        (None, vs) => vs,
    };
    Ok(ValueMatch { name, values })
}

fn sticky_key(text: &str) -> Result<StickyKey, String> {
    let key = match text.split_once(':') {
        None if text == "client_ip" => StickyKey::ClientIp,
        None if text == "consumer" => StickyKey::Consumer,
        Some(("header", name)) => StickyKey::Header(header_name("sticky_key", name)?),
        Some(("cookie", name)) => StickyKey::Cookie(cookie_name("sticky_key", name)?),
        _ => {
            return Err(format!(
                "sticky_key: expected client_ip, consumer, header:<name> or cookie:<name>, got `{text}`"
            ))
        }
    };
    Ok(key)
}

/// Check a cookie name (an RFC 6265 token; case matters).
fn cookie_name(field: &str, name: &str) -> Result<String, String> {
    if name.is_empty() || !name.bytes().all(is_token) {
        return Err(format!("{field}: `{name}` is not a valid cookie name"));
    }
    Ok(name.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(json: &str) -> String {
        TrafficSplit::from_json(json).unwrap_err()
    }

    #[test]
    fn full_config_is_read() {
        let s = TrafficSplit::from_json(
            r#"{
                "rules": [
                    {"match": {"header": {"name": "X-Canary", "value": "1"}, "cookie": {"name": "Beta", "values": ["a", "b"]}},
                     "upstream": "canary", "rewrite": {"strip_prefix": "/api", "replace_prefix": "/v2"}},
                    {"weight": 10, "upstream": "canary"}
                ],
                "sticky_key": "header:X-User",
                "rewrite": {"strip_prefix": "/api"},
                "upstream_header": "X-Wicket-Upstream",
                "consumer_header": "x-consumer"
            }"#,
        )
        .unwrap();
        assert_eq!(s.rules.len(), 2);
        let r0 = &s.rules[0];
        assert_eq!(
            r0.header,
            Some(ValueMatch {
                name: "x-canary".to_string(),
                values: Some(vec!["1".to_string()])
            })
        );
        assert_eq!(
            r0.cookie,
            Some(ValueMatch {
                name: "Beta".to_string(),
                values: Some(vec!["a".to_string(), "b".to_string()])
            })
        );
        assert_eq!(r0.weight, None);
        assert_eq!(r0.upstream.as_deref(), Some("canary"));
        assert!(r0.rewrite.is_some());
        assert_eq!(s.rules[1].weight, Some(10));
        assert_eq!(s.rules[1].salt, "canary");
        assert_eq!(s.sticky_key, Some(StickyKey::Header("x-user".to_string())));
        assert!(s.rewrite.is_some());
        assert_eq!(s.upstream_header.as_deref(), Some("x-wicket-upstream"));
        assert_eq!(s.consumer_header, "x-consumer");
    }

    #[test]
    fn defaults() {
        let s =
            TrafficSplit::from_json(r#"{"rules": [{"weight": 5, "upstream": "canary"}]}"#).unwrap();
        assert_eq!(s.sticky_key, None);
        assert_eq!(s.rewrite, None);
        assert_eq!(s.upstream_header, None);
        assert_eq!(s.consumer_header, "x-wicket-consumer");
    }

    #[test]
    fn sticky_keys_parse() {
        let key = |k: &str| {
            TrafficSplit::from_json(&format!(
                r#"{{"sticky_key": "{k}", "rules": [{{"weight": 5, "upstream": "c"}}]}}"#
            ))
            .map(|s| s.sticky_key.unwrap())
        };
        assert_eq!(key("client_ip"), Ok(StickyKey::ClientIp));
        assert_eq!(key("consumer"), Ok(StickyKey::Consumer));
        assert_eq!(
            key("header:X-Id"),
            Ok(StickyKey::Header("x-id".to_string()))
        );
        assert_eq!(key("cookie:SID"), Ok(StickyKey::Cookie("SID".to_string())));
        for bad in ["ip", "header:", "cookie:a;b", "query:x", "client_ip:1"] {
            assert!(key(bad).unwrap_err().starts_with("sticky_key:"), "{bad}");
        }
    }

    #[test]
    fn rewrite_alone_is_enough() {
        assert!(TrafficSplit::from_json(r#"{"rewrite": {"strip_prefix": "/api"}}"#).is_ok());
    }

    #[test]
    fn errors_name_the_field() {
        assert_eq!(error("{}"), "rules: give at least one rule (or a rewrite)");
        assert_eq!(error("[]"), "configuration must be a JSON object");
        assert!(
            error(r#"{"rules": [], "weights": 1}"#).starts_with("weights: unknown field `weights`")
        );
        let split = TrafficSplit::from_json(
            r#"{"rules": [{"weight": 5, "upstream": "a"}, {"weight": 5, "upstream": "typo"}]}"#,
        )
        .unwrap();
        let known = ["a".to_string(), "b".to_string()];
        assert_eq!(
            split.check_upstreams(&known).unwrap_err(),
            "rules[1].upstream: no upstream named `typo` in the configuration (upstreams: a, b)"
        );
        assert!(split.check_upstreams(&["a".into(), "typo".into()]).is_ok());
        assert!(error(r#"{"rules": [{"weight": 101, "upstream": "c"}]}"#)
            .starts_with("rules[0].weight: must be a percentage"));
        assert!(error(r#"{"rules": [{"weight": -1, "upstream": "c"}]}"#)
            .starts_with("rules[0].weight:"));
        assert!(
            error(r#"{"rules": [{"weight": 5}]}"#).starts_with("rules[0]: give upstream, rewrite")
        );
        assert!(error(r#"{"rules": [{"weight": 5, "upstream": ""}]}"#)
            .starts_with("rules[0].upstream:"));
        assert!(
            error(r#"{"rules": [{"match": {}, "upstream": "c"}]}"#).starts_with("rules[0].match:")
        );
        assert!(
            error(r#"{"rules": [{"match": {"path": "/"}, "upstream": "c"}]}"#)
                .starts_with("rules[0].match.path: unknown field `path`")
        );
        assert!(
            error(r#"{"rules": [{"match": {"header": {"value": "1"}}, "upstream": "c"}]}"#)
                .starts_with("rules[0].match.header: missing field `name`")
        );
        assert!(
            error(r#"{"rules": [{"match": {"header": {"name": "a b"}}, "upstream": "c"}]}"#)
                .starts_with("rules[0].match.header.name:")
        );
        assert!(
            error(r#"{"rules": [{"match": {"cookie": {"name": "a=b"}}, "upstream": "c"}]}"#)
                .starts_with("rules[0].match.cookie.name:")
        );
        assert!(error(r#"{"rules": [{"match": {"header": {"name": "a", "value": "1", "values": ["2"]}}, "upstream": "c"}]}"#)
            .starts_with("rules[0].match.header: give value or values"));
        assert!(error(
            r#"{"rules": [{"match": {"header": {"name": "a", "values": []}}, "upstream": "c"}]}"#
        )
        .starts_with("rules[0].match.header.values:"));
        assert!(error(r#"{"rules": [{"upstream": "c", "rewrite": {}}]}"#)
            .starts_with("rules[0].rewrite: give strip_prefix"));
        assert!(
            error(r#"{"rewrite": {"strip_prefix": "api"}}"#).starts_with("rewrite.strip_prefix:")
        );
        assert!(
            error(r#"{"rules": [{"weight": 1, "upstream": "c"}], "upstream_header": "a b"}"#)
                .starts_with("upstream_header:")
        );
        assert!(
            error(r#"{"rules": [{"weight": 1, "upstream": "c"}], "consumer_header": ""}"#)
                .starts_with("consumer_header:")
        );
    }

    #[test]
    fn rules_after_a_catch_all_are_unreachable() {
        assert_eq!(
            error(r#"{"rules": [{"upstream": "a"}, {"weight": 5, "upstream": "b"}]}"#),
            "rules[1]: unreachable, rules[0] already matches every request"
        );
        assert!(
            error(r#"{"rules": [{"weight": 100, "upstream": "a"}, {"upstream": "b"}]}"#)
                .starts_with("rules[1]: unreachable")
        );
        // A catch-all last is fine, and so is a weight below 100 before others.
        assert!(TrafficSplit::from_json(
            r#"{"rules": [{"weight": 99, "upstream": "a"}, {"upstream": "b"}]}"#
        )
        .is_ok());
    }
}
