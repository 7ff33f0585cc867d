//! The plugin's route configuration: parsed from JSON and validated once in
//! `init` into the immutable [`Settings`] every request reads.

use std::collections::BTreeMap;

use serde::Deserialize;
use wicket_plugin_sdk::config;

use crate::keys::{self, Algorithm, JwkSet};
use crate::source::TokenSource;
use crate::token::Rules;

/// The configuration as written in the route.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Config {
    #[serde(default)]
    algorithms: Vec<String>,
    #[serde(default)]
    secret: Option<String>,
    #[serde(default)]
    public_key: Option<String>,
    #[serde(default)]
    jwks: Option<JwkSet>,
    #[serde(default)]
    issuer: Option<OneOrMany>,
    #[serde(default)]
    audience: Option<OneOrMany>,
    #[serde(default = "default_leeway")]
    leeway_seconds: u64,
    #[serde(default = "default_true")]
    require_exp: bool,
    #[serde(default = "default_sources")]
    token_from: Vec<TokenSource>,
    #[serde(default)]
    forward_claims: BTreeMap<String, String>,
    #[serde(default = "default_consumer_claim")]
    consumer_claim: String,
    #[serde(default = "default_consumer_header")]
    consumer_header: String,
    #[serde(default)]
    strip_authorization: bool,
}

/// `"a"` or `["a", "b"]`.
#[derive(Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

impl OneOrMany {
    fn into_vec(self) -> Vec<String> {
        match self {
            OneOrMany::One(s) => vec![s],
            OneOrMany::Many(v) => v,
        }
    }
}

fn default_leeway() -> u64 {
    30
}

fn default_true() -> bool {
    true
}

fn default_sources() -> Vec<TokenSource> {
    vec![TokenSource::Header("authorization".into())]
}

fn default_consumer_claim() -> String {
    "sub".into()
}

fn default_consumer_header() -> String {
    "x-wicket-consumer".into()
}

/// Validated settings for one route.
pub(crate) struct Settings {
    pub(crate) rules: Rules,
    /// Where to look for the token, in order; the first present wins.
    pub(crate) sources: Vec<TokenSource>,
    /// Claim name → upstream header name (lower-case).
    pub(crate) forward_claims: Vec<(String, String)>,
    pub(crate) consumer_claim: String,
    pub(crate) consumer_header: String,
    /// Remove the header sources from the upstream request once validated.
    pub(crate) strip_authorization: bool,
}

/// An upper bound on leeway: a day of tolerance already makes `exp` meaningless.
const MAX_LEEWAY_SECONDS: u64 = 86_400;

impl Settings {
    /// Parse and validate; errors name the offending field.
    pub(crate) fn parse(text: &str) -> Result<Settings, String> {
        let config: Config = from_json(text)?;
        let algorithms = algorithms(&config.algorithms)?;
        let keys = keys(&config)?;
        for alg in &algorithms {
            if !keys.iter().any(|k| k.supports(*alg)) {
                return Err(no_key_message(*alg));
            }
        }
        if config.leeway_seconds > MAX_LEEWAY_SECONDS {
            return Err(format!(
                "leeway_seconds: must be at most {MAX_LEEWAY_SECONDS}"
            ));
        }
        let issuers = non_empty_list(config.issuer, "issuer")?;
        let audiences = non_empty_list(config.audience, "audience")?;

        if config.token_from.is_empty() {
            return Err("token_from: must list at least one source".into());
        }
        let sources = config
            .token_from
            .into_iter()
            .map(TokenSource::validated)
            .collect::<Result<Vec<_>, _>>()?;

        let consumer_header = header_name(&config.consumer_header, "consumer_header")?;
        if config.consumer_claim.is_empty() {
            return Err("consumer_claim: must not be empty".into());
        }
        let mut forward_claims = Vec::new();
        for (claim, header) in config.forward_claims {
            let header = header_name(&header, "forward_claims")?;
            if claim.is_empty() {
                return Err("forward_claims: a claim name must not be empty".into());
            }
            if header == consumer_header {
                return Err(format!(
                    "forward_claims: header {header:?} is already the consumer_header"
                ));
            }
            if forward_claims.iter().any(|(_, h)| *h == header) {
                return Err(format!(
                    "forward_claims: header {header:?} is used for two claims"
                ));
            }
            forward_claims.push((claim, header));
        }

        Ok(Settings {
            rules: Rules {
                algorithms,
                keys,
                leeway_ms: config.leeway_seconds * 1000,
                require_exp: config.require_exp,
                issuers,
                audiences,
            },
            sources,
            forward_claims,
            consumer_claim: config.consumer_claim,
            consumer_header,
            strip_authorization: config.strip_authorization,
        })
    }
}

fn algorithms(names: &[String]) -> Result<Vec<Algorithm>, String> {
    if names.is_empty() {
        return Err(
            "algorithms: required; list the accepted signing algorithms, e.g. [\"RS256\"]".into(),
        );
    }
    let mut algorithms = Vec::new();
    for name in names {
        let alg = Algorithm::from_name(name).ok_or_else(|| {
            format!(
                "algorithms: {name:?} is not supported (HS256, HS384, HS512, RS256, RS384, RS512, ES256, ES384)"
            )
        })?;
        if !algorithms.contains(&alg) {
            algorithms.push(alg);
        }
    }
    Ok(algorithms)
}

fn keys(config: &Config) -> Result<Vec<keys::Key>, String> {
    let mut keys = Vec::new();
    if let Some(secret) = &config.secret {
        // RFC 7518 §3.2: the key must be at least as long as the hash output.
        if secret.len() < 32 {
            return Err("secret: must be at least 32 bytes (RFC 7518 §3.2)".into());
        }
        keys.push(keys::from_secret(secret));
    }
    if let Some(pem) = &config.public_key {
        keys.push(keys::from_pem(pem)?);
    }
    if let Some(set) = &config.jwks {
        keys.extend(keys::from_jwks(set)?);
    }
    if keys.is_empty() {
        return Err("secret, public_key or jwks: at least one key is required".into());
    }
    Ok(keys)
}

fn no_key_message(alg: Algorithm) -> String {
    match alg.min_secret_len() {
        Some(min) => format!(
            "algorithms: {alg} is listed but no secret (or oct JWK) of at least {min} bytes is configured"
        ),
        None => format!(
            "algorithms: {alg} is listed but no configured public_key or JWK fits it"
        ),
    }
}

fn non_empty_list(list: Option<OneOrMany>, field: &str) -> Result<Vec<String>, String> {
    let list = list.map(OneOrMany::into_vec).unwrap_or_default();
    if list.iter().any(String::is_empty) {
        return Err(format!("{field}: values must not be empty"));
    }
    Ok(list)
}

/// A lower-cased header name, checked to be an HTTP token (RFC 9110 §5.1).
pub(crate) fn header_name(name: &str, field: &str) -> Result<String, String> {
    let valid = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
    if valid {
        Ok(name.to_ascii_lowercase())
    } else {
        Err(format!("{field}: {name:?} is not a valid header name"))
    }
}

/// Deserialize, prefixing errors with the path of the offending field.
fn from_json(text: &str) -> Result<Config, String> {
    config::deserialize(text).map_err(|e| e.describe("invalid jwt-auth config"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::keys::tests::{JWKS, P256_PUBLIC, RSA_PUBLIC};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn parse(json: serde_json::Value) -> Result<Settings, String> {
        Settings::parse(&json.to_string())
    }

    #[test]
    fn defaults_apply() {
        let s = parse(serde_json::json!({"algorithms": ["HS256"], "secret": SECRET})).unwrap();
        assert_eq!(s.rules.leeway_ms, 30_000);
        assert!(s.rules.require_exp);
        assert!(s.rules.issuers.is_empty() && s.rules.audiences.is_empty());
        assert_eq!(s.sources, vec![TokenSource::Header("authorization".into())]);
        assert_eq!(s.consumer_claim, "sub");
        assert_eq!(s.consumer_header, "x-wicket-consumer");
        assert!(!s.strip_authorization);
        assert!(s.forward_claims.is_empty());
    }

    #[test]
    fn full_config_is_accepted() {
        let jwks: serde_json::Value = serde_json::from_str(JWKS).unwrap();
        let s = parse(serde_json::json!({
            "algorithms": ["RS256", "ES256", "HS256"],
            "secret": SECRET,
            "public_key": RSA_PUBLIC,
            "jwks": jwks,
            "issuer": ["https://a.example", "https://b.example"],
            "audience": "api",
            "leeway_seconds": 0,
            "require_exp": false,
            "token_from": [{"header": "X-Token"}, {"query": "access_token"}, {"cookie": "jwt"}],
            "forward_claims": {"sub": "X-User-Id", "scope": "x-scope"},
            "consumer_claim": "client_id",
            "consumer_header": "x-consumer",
            "strip_authorization": true
        }))
        .unwrap();
        assert_eq!(s.rules.keys.len(), 4);
        assert_eq!(s.rules.issuers.len(), 2);
        assert_eq!(s.rules.audiences, vec!["api".to_string()]);
        assert_eq!(s.sources[0], TokenSource::Header("x-token".into()));
        assert_eq!(
            s.forward_claims,
            vec![
                ("scope".to_string(), "x-scope".to_string()),
                ("sub".to_string(), "x-user-id".to_string())
            ]
        );
    }

    #[test]
    fn empty_config_names_algorithms() {
        assert!(Settings::parse("{}")
            .err()
            .unwrap()
            .starts_with("algorithms: required"));
    }

    #[test]
    fn errors_name_their_field() {
        let cases = [
            (
                serde_json::json!({"algorithms": ["none"], "secret": SECRET}),
                "algorithms:",
            ),
            (
                serde_json::json!({"algorithms": ["PS256"], "secret": SECRET}),
                "algorithms:",
            ),
            (
                serde_json::json!({"algorithms": ["HS256"]}),
                "secret, public_key or jwks:",
            ),
            (
                serde_json::json!({"algorithms": ["HS256"], "secret": "short"}),
                "secret:",
            ),
            (
                serde_json::json!({"algorithms": ["HS512"], "secret": SECRET}),
                "algorithms: HS512",
            ),
            (
                serde_json::json!({"algorithms": ["HS256"], "public_key": RSA_PUBLIC}),
                "algorithms: HS256",
            ),
            (
                serde_json::json!({"algorithms": ["ES256"], "public_key": RSA_PUBLIC}),
                "algorithms: ES256",
            ),
            (
                serde_json::json!({"algorithms": ["RS256"], "public_key": P256_PUBLIC}),
                "algorithms: RS256",
            ),
            (
                serde_json::json!({"algorithms": ["RS256"], "public_key": "nope"}),
                "public_key:",
            ),
            (
                serde_json::json!({"algorithms": ["HS256"], "secret": SECRET, "leeway_seconds": 100000}),
                "leeway_seconds:",
            ),
            (
                serde_json::json!({"algorithms": ["HS256"], "secret": SECRET, "issuer": ""}),
                "issuer:",
            ),
            (
                serde_json::json!({"algorithms": ["HS256"], "secret": SECRET, "audience": [""]}),
                "audience:",
            ),
            (
                serde_json::json!({"algorithms": ["HS256"], "secret": SECRET, "token_from": []}),
                "token_from:",
            ),
            (
                serde_json::json!({"algorithms": ["HS256"], "secret": SECRET, "token_from": [{"header": "a b"}]}),
                "token_from:",
            ),
            (
                serde_json::json!({"algorithms": ["HS256"], "secret": SECRET, "consumer_header": ""}),
                "consumer_header:",
            ),
            (
                serde_json::json!({"algorithms": ["HS256"], "secret": SECRET, "consumer_claim": ""}),
                "consumer_claim:",
            ),
            (
                serde_json::json!({"algorithms": ["HS256"], "secret": SECRET, "forward_claims": {"sub": "x-wicket-consumer"}}),
                "forward_claims:",
            ),
            (
                serde_json::json!({"algorithms": ["HS256"], "secret": SECRET, "forward_claims": {"a": "x-a", "b": "X-A"}}),
                "forward_claims:",
            ),
            (
                serde_json::json!({"algorithms": ["HS256"], "secret": SECRET, "jwks": {"keys": [{"kty": "RSA"}]}}),
                "jwks.keys[0]:",
            ),
        ];
        for (config, field) in cases {
            let err = parse(config.clone()).err().unwrap_or_default();
            assert!(err.starts_with(field), "{config}: {err}");
        }
    }

    #[test]
    fn type_errors_name_the_field() {
        let err = parse(
            serde_json::json!({"algorithms": ["HS256"], "secret": SECRET, "leeway_seconds": -1}),
        )
        .err()
        .unwrap();
        assert!(err.starts_with("leeway_seconds: invalid value"), "{err}");
        let err = parse(serde_json::json!({"algorithms": "HS256"}))
            .err()
            .unwrap();
        assert!(err.starts_with("algorithms: invalid type"), "{err}");
        let err = parse(serde_json::json!({"algorithms": ["HS256"], "secret": SECRET, "token_from": [{"body": "t"}]}))
            .err()
            .unwrap();
        assert!(
            err.starts_with("token_from[0]: unknown variant `body`"),
            "{err}"
        );
    }

    #[test]
    fn unknown_fields_are_rejected() {
        let err =
            parse(serde_json::json!({"algorithms": ["HS256"], "secret": SECRET, "leeway": 5}))
                .err()
                .unwrap();
        assert!(err.contains("unknown field `leeway`"), "{err}");
    }
}
