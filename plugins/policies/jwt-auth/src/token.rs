//! Token validation: compact JWS parsing, algorithm and key selection, signature
//! check, then the registered claims (`exp`, `nbf`, `iss`, `aud`) against a given
//! time. Pure: the caller passes "now", so tests control the clock exactly.

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::keys::{Algorithm, Key};

/// Tokens longer than this are refused before any decoding, to bound the work
/// an unauthenticated client can cause.
pub(crate) const MAX_TOKEN_LEN: usize = 16 * 1024;

/// The checks a token must pass, fixed at `init`.
pub(crate) struct Rules {
    /// Accepted `alg` values; the token header only selects among these.
    pub(crate) algorithms: Vec<Algorithm>,
    pub(crate) keys: Vec<Key>,
    pub(crate) leeway_ms: u64,
    pub(crate) require_exp: bool,
    /// Accepted `iss` values; empty means "not checked".
    pub(crate) issuers: Vec<String>,
    /// Accepted `aud` values; empty means "not checked".
    pub(crate) audiences: Vec<String>,
}

/// Why a token was refused. The `Display` text goes to the client as the
/// `error_description`, so it names the failed check without echoing token data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokenError {
    Malformed,
    AlgorithmNotAllowed,
    CriticalHeader,
    UnknownKey,
    BadSignature,
    Expired,
    NotYetValid,
    MissingExp,
    BadIssuer,
    BadAudience,
}

impl TokenError {
    pub(crate) fn description(self) -> &'static str {
        match self {
            TokenError::Malformed => "the token is malformed",
            TokenError::AlgorithmNotAllowed => "the token's signing algorithm is not allowed",
            TokenError::CriticalHeader => "the token has critical header parameters",
            TokenError::UnknownKey => "no configured key matches the token",
            TokenError::BadSignature => "the token signature is invalid",
            TokenError::Expired => "the token has expired",
            TokenError::NotYetValid => "the token is not valid yet",
            TokenError::MissingExp => "the token has no expiry",
            TokenError::BadIssuer => "the token issuer is not accepted",
            TokenError::BadAudience => "the token audience is not accepted",
        }
    }
}

/// The JOSE header members that matter here.
#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    crit: Option<Value>,
}

/// Validate `token` at `now_ms` (milliseconds since the Unix epoch) and return
/// its claims.
pub(crate) fn validate(
    rules: &Rules,
    token: &str,
    now_ms: u64,
) -> Result<Map<String, Value>, TokenError> {
    if token.len() > MAX_TOKEN_LEN {
        return Err(TokenError::Malformed);
    }
    let mut parts = token.split('.');
    let (Some(header_b64), Some(payload_b64), Some(signature_b64), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(TokenError::Malformed);
    };
    let header: Header = decode_json(header_b64)?;

    // The header's `alg` only picks among the configured algorithms; `none` and
    // anything unlisted stop here, before any key is touched.
    let alg = Algorithm::from_name(&header.alg)
        .filter(|alg| rules.algorithms.contains(alg))
        .ok_or(TokenError::AlgorithmNotAllowed)?;
    // RFC 7515 §4.1.11: unknown critical extensions must be refused, and this
    // plugin implements none.
    if header.crit.is_some() {
        return Err(TokenError::CriticalHeader);
    }

    let signature = URL_SAFE_NO_PAD
        .decode(signature_b64)
        .map_err(|_| TokenError::Malformed)?;
    let signing_input = &token[..header_b64.len() + 1 + payload_b64.len()];
    let candidates = candidate_keys(&rules.keys, alg, header.kid.as_deref());
    if candidates.is_empty() {
        return Err(TokenError::UnknownKey);
    }
    if !candidates
        .iter()
        .any(|key| key.verify(alg, signing_input.as_bytes(), &signature))
    {
        return Err(TokenError::BadSignature);
    }

    // Claims are only looked at once the signature proved who wrote them.
    let claims: Map<String, Value> = decode_json(payload_b64)?;
    check_time(rules, &claims, now_ms)?;
    check_issuer(rules, &claims)?;
    check_audience(rules, &claims)?;
    Ok(claims)
}

/// The keys that may verify a token signed with `alg` and carrying `kid`.
///
/// A token `kid` selects the JWKs with that `kid`; when none has it, keys
/// without a `kid` (the `secret` and `public_key` settings) are tried, since
/// providers often stamp a `kid` that a pasted PEM key does not record.
fn candidate_keys<'a>(keys: &'a [Key], alg: Algorithm, kid: Option<&str>) -> Vec<&'a Key> {
    let usable = keys.iter().filter(|k| k.supports(alg));
    match kid {
        Some(kid) if usable.clone().any(|k| k.kid.as_deref() == Some(kid)) => {
            usable.filter(|k| k.kid.as_deref() == Some(kid)).collect()
        }
        Some(_) => usable.filter(|k| k.kid.is_none()).collect(),
        None => usable.collect(),
    }
}

fn decode_json<T: serde::de::DeserializeOwned>(part: &str) -> Result<T, TokenError> {
    let bytes = URL_SAFE_NO_PAD
        .decode(part)
        .map_err(|_| TokenError::Malformed)?;
    serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)
}

/// `exp` and `nbf` are NumericDates: seconds, possibly fractional (RFC 7519 §2).
fn check_time(rules: &Rules, claims: &Map<String, Value>, now_ms: u64) -> Result<(), TokenError> {
    let now = now_ms as f64;
    let leeway = rules.leeway_ms as f64;
    match numeric_date_ms(claims, "exp")? {
        // RFC 7519 §4.1.4: valid only *before* the expiry.
        Some(exp) if now >= exp + leeway => return Err(TokenError::Expired),
        Some(_) => {}
        None if rules.require_exp => return Err(TokenError::MissingExp),
        None => {}
    }
    match numeric_date_ms(claims, "nbf")? {
        Some(nbf) if now < nbf - leeway => Err(TokenError::NotYetValid),
        _ => Ok(()),
    }
}

fn numeric_date_ms(claims: &Map<String, Value>, name: &str) -> Result<Option<f64>, TokenError> {
    match claims.get(name) {
        None => Ok(None),
        Some(value) => value
            .as_f64()
            .map(|secs| Some(secs * 1000.0))
            .ok_or(TokenError::Malformed),
    }
}

fn check_issuer(rules: &Rules, claims: &Map<String, Value>) -> Result<(), TokenError> {
    if rules.issuers.is_empty() {
        return Ok(());
    }
    match claims.get("iss").and_then(Value::as_str) {
        Some(iss) if rules.issuers.iter().any(|i| i == iss) => Ok(()),
        _ => Err(TokenError::BadIssuer),
    }
}

/// `aud` may be one string or an array of strings (RFC 7519 §4.1.3); one
/// accepted value is enough.
fn check_audience(rules: &Rules, claims: &Map<String, Value>) -> Result<(), TokenError> {
    if rules.audiences.is_empty() {
        return Ok(());
    }
    let accepted = |aud: &Value| {
        aud.as_str()
            .is_some_and(|aud| rules.audiences.iter().any(|a| a == aud))
    };
    let ok = match claims.get("aud") {
        Some(Value::Array(auds)) => auds.iter().any(accepted),
        Some(aud) => accepted(aud),
        None => false,
    };
    if ok {
        Ok(())
    } else {
        Err(TokenError::BadAudience)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Settings;
    use crate::keys::tests::{JWKS, P256_PUBLIC, P384_PUBLIC, RSA_PUBLIC};
    use crate::testkit::{b64_json, hs256, Signer, NOW_MS, NOW_S};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";
    const LONG_SECRET: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn rules(config: Value) -> Rules {
        Settings::parse(&config.to_string()).unwrap().rules
    }

    fn hs_rules() -> Rules {
        rules(json!({"algorithms": ["HS256"], "secret": SECRET}))
    }

    fn rsa_rules() -> Rules {
        rules(json!({"algorithms": ["RS256"], "public_key": RSA_PUBLIC}))
    }

    /// Claims valid for a minute around `NOW_S`, plus `extra`.
    fn claims(extra: Value) -> Value {
        let mut claims = json!({"sub": "alice", "iat": NOW_S, "exp": NOW_S + 60});
        claims
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        claims
    }

    #[test]
    fn valid_hmac_tokens_pass() {
        let r = rules(json!({"algorithms": ["HS256", "HS384", "HS512"], "secret": LONG_SECRET}));
        let secret = LONG_SECRET.as_bytes();
        for signer in [
            Signer::Hs256(secret),
            Signer::Hs384(secret),
            Signer::Hs512(secret),
        ] {
            let token = signer.sign(None, claims(json!({})));
            let got =
                validate(&r, &token, NOW_MS).unwrap_or_else(|e| panic!("{}: {e:?}", signer.alg()));
            assert_eq!(got["sub"], "alice");
        }
    }

    #[test]
    fn valid_rsa_tokens_pass() {
        let r = rules(json!({"algorithms": ["RS256", "RS384", "RS512"], "public_key": RSA_PUBLIC}));
        for signer in [Signer::Rs256, Signer::Rs384, Signer::Rs512] {
            let token = signer.sign(None, claims(json!({})));
            assert!(validate(&r, &token, NOW_MS).is_ok(), "{}", signer.alg());
        }
    }

    #[test]
    fn valid_ec_tokens_pass() {
        let r = rules(json!({"algorithms": ["ES256"], "public_key": P256_PUBLIC}));
        let token = Signer::Es256.sign(None, claims(json!({})));
        assert_eq!(validate(&r, &token, NOW_MS).map(|_| ()), Ok(()));
        let r = rules(json!({"algorithms": ["ES384"], "public_key": P384_PUBLIC}));
        let token = Signer::Es384.sign(None, claims(json!({})));
        assert_eq!(validate(&r, &token, NOW_MS).map(|_| ()), Ok(()));
    }

    #[test]
    fn expired_token_is_refused_after_leeway() {
        let r = hs_rules();
        let token = hs256(SECRET, claims(json!({"exp": NOW_S - 31})));
        assert_eq!(validate(&r, &token, NOW_MS), Err(TokenError::Expired));
        // Exactly at exp + leeway the token is no longer valid (RFC 7519 §4.1.4).
        let token = hs256(SECRET, claims(json!({"exp": NOW_S - 30})));
        assert_eq!(validate(&r, &token, NOW_MS), Err(TokenError::Expired));
    }

    #[test]
    fn expired_token_is_accepted_within_leeway() {
        let r = hs_rules();
        let token = hs256(SECRET, claims(json!({"exp": NOW_S - 29})));
        assert!(validate(&r, &token, NOW_MS).is_ok());
        // Fractional NumericDates are honoured to the millisecond.
        let token = hs256(SECRET, claims(json!({"exp": (NOW_S - 30) as f64 + 0.001})));
        assert!(validate(&r, &token, NOW_MS).is_ok());
    }

    #[test]
    fn leeway_is_configurable() {
        let r = rules(json!({"algorithms": ["HS256"], "secret": SECRET, "leeway_seconds": 0}));
        let token = hs256(SECRET, claims(json!({"exp": NOW_S})));
        assert_eq!(validate(&r, &token, NOW_MS), Err(TokenError::Expired));
        assert!(validate(&r, &token, NOW_MS - 1).is_ok());
    }

    #[test]
    fn future_nbf_is_refused_beyond_leeway() {
        let r = hs_rules();
        let token = hs256(SECRET, claims(json!({"nbf": NOW_S + 31})));
        assert_eq!(validate(&r, &token, NOW_MS), Err(TokenError::NotYetValid));
    }

    #[test]
    fn future_nbf_is_accepted_within_leeway() {
        let r = hs_rules();
        let token = hs256(SECRET, claims(json!({"nbf": NOW_S + 30})));
        assert!(validate(&r, &token, NOW_MS).is_ok());
    }

    #[test]
    fn exp_is_required_unless_disabled() {
        let token = hs256(SECRET, json!({"sub": "alice"}));
        assert_eq!(
            validate(&hs_rules(), &token, NOW_MS),
            Err(TokenError::MissingExp)
        );
        let r = rules(json!({"algorithms": ["HS256"], "secret": SECRET, "require_exp": false}));
        assert!(validate(&r, &token, NOW_MS).is_ok());
    }

    #[test]
    fn non_numeric_time_claims_are_malformed() {
        let token = hs256(SECRET, claims(json!({"exp": "tomorrow"})));
        assert_eq!(
            validate(&hs_rules(), &token, NOW_MS),
            Err(TokenError::Malformed)
        );
        let token = hs256(SECRET, claims(json!({"nbf": null})));
        assert_eq!(
            validate(&hs_rules(), &token, NOW_MS),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn issuer_is_checked_when_configured() {
        let r = rules(json!({
            "algorithms": ["HS256"], "secret": SECRET,
            "issuer": ["https://idp.example", "https://idp2.example"]
        }));
        let ok = hs256(SECRET, claims(json!({"iss": "https://idp2.example"})));
        assert!(validate(&r, &ok, NOW_MS).is_ok());
        let wrong = hs256(SECRET, claims(json!({"iss": "https://evil.example"})));
        assert_eq!(validate(&r, &wrong, NOW_MS), Err(TokenError::BadIssuer));
        let missing = hs256(SECRET, claims(json!({})));
        assert_eq!(validate(&r, &missing, NOW_MS), Err(TokenError::BadIssuer));
        // Not configured: any issuer passes.
        assert!(validate(&hs_rules(), &wrong, NOW_MS).is_ok());
    }

    #[test]
    fn audience_is_checked_when_configured() {
        let r = rules(json!({"algorithms": ["HS256"], "secret": SECRET, "audience": "orders"}));
        let one = hs256(SECRET, claims(json!({"aud": "orders"})));
        assert!(validate(&r, &one, NOW_MS).is_ok());
        let many = hs256(SECRET, claims(json!({"aud": ["billing", "orders"]})));
        assert!(validate(&r, &many, NOW_MS).is_ok());
        let wrong = hs256(SECRET, claims(json!({"aud": ["billing"]})));
        assert_eq!(validate(&r, &wrong, NOW_MS), Err(TokenError::BadAudience));
        let missing = hs256(SECRET, claims(json!({})));
        assert_eq!(validate(&r, &missing, NOW_MS), Err(TokenError::BadAudience));
    }

    #[test]
    fn unlisted_algorithm_is_refused() {
        // Signed correctly with the configured RSA key, but RS384 is not listed.
        let token = Signer::Rs384.sign(None, claims(json!({})));
        assert_eq!(
            validate(&rsa_rules(), &token, NOW_MS),
            Err(TokenError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn alg_none_is_always_refused() {
        let r = rules(
            json!({"algorithms": ["HS256", "RS256"], "secret": SECRET, "public_key": RSA_PUBLIC}),
        );
        for alg in ["none", "None", "NONE"] {
            let header = json!({"alg": alg, "typ": "JWT"});
            let unsigned = format!("{}.{}.", b64_json(&header), b64_json(&claims(json!({}))));
            assert_eq!(
                validate(&r, &unsigned, NOW_MS),
                Err(TokenError::AlgorithmNotAllowed),
                "{alg}"
            );
        }
    }

    #[test]
    fn hs_token_keyed_with_rsa_public_key_is_refused() {
        // The classic confusion attack: HMAC-sign with the RSA public key's bytes.
        let forged = Signer::Hs256(RSA_PUBLIC.as_bytes()).sign(None, claims(json!({})));
        assert_eq!(
            validate(&rsa_rules(), &forged, NOW_MS),
            Err(TokenError::AlgorithmNotAllowed)
        );
        // Even with HS256 allowed (for a separate secret), the RSA key is never
        // used as an HMAC key.
        let both = rules(
            json!({"algorithms": ["RS256", "HS256"], "secret": SECRET, "public_key": RSA_PUBLIC}),
        );
        assert_eq!(
            validate(&both, &forged, NOW_MS),
            Err(TokenError::BadSignature)
        );
        let jwks: Value = serde_json::from_str(JWKS).unwrap();
        let jwks_only = rules(json!({"algorithms": ["RS256"], "jwks": jwks}));
        assert_eq!(
            validate(&jwks_only, &forged, NOW_MS),
            Err(TokenError::AlgorithmNotAllowed)
        );
    }

    #[test]
    fn token_signed_by_another_family_key_is_refused() {
        // ES256 header, but the signature is RSA: no P-256 key configured.
        let r = rules(
            json!({"algorithms": ["RS256", "ES256"], "public_key": RSA_PUBLIC, "jwks": {"keys": [serde_json::from_str::<Value>(JWKS).unwrap()["keys"][1].clone()]}}),
        );
        let header = json!({"alg": "ES256"});
        let token = Signer::Rs256.sign_with_header(header, claims(json!({})));
        assert_eq!(validate(&r, &token, NOW_MS), Err(TokenError::BadSignature));
    }

    #[test]
    fn tampered_signature_is_refused() {
        for (r, token) in [
            (hs_rules(), hs256(SECRET, claims(json!({})))),
            (rsa_rules(), Signer::Rs256.sign(None, claims(json!({})))),
        ] {
            let (input, sig) = token.rsplit_once('.').unwrap();
            let mut sig = URL_SAFE_NO_PAD.decode(sig).unwrap();
            sig[0] ^= 0x01;
            let tampered = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig));
            assert_eq!(
                validate(&r, &tampered, NOW_MS),
                Err(TokenError::BadSignature)
            );
            // Truncated and empty signatures too.
            let truncated = format!("{input}.{}", URL_SAFE_NO_PAD.encode(&sig[..sig.len() - 1]));
            assert_eq!(
                validate(&r, &truncated, NOW_MS),
                Err(TokenError::BadSignature)
            );
            assert_eq!(
                validate(&r, &format!("{input}."), NOW_MS),
                Err(TokenError::BadSignature)
            );
        }
    }

    #[test]
    fn tampered_claims_are_refused() {
        let token = hs256(SECRET, claims(json!({})));
        let mut parts: Vec<&str> = token.split('.').collect();
        let forged_claims = b64_json(&claims(json!({"sub": "admin"})));
        parts[1] = &forged_claims;
        assert_eq!(
            validate(&hs_rules(), &parts.join("."), NOW_MS),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn wrong_secret_is_refused() {
        let token = hs256("ffffffffffffffffffffffffffffffff", claims(json!({})));
        assert_eq!(
            validate(&hs_rules(), &token, NOW_MS),
            Err(TokenError::BadSignature)
        );
    }

    #[test]
    fn kid_selects_the_jwk() {
        let jwks: Value = serde_json::from_str(JWKS).unwrap();
        let r = rules(json!({"algorithms": ["RS256", "ES256"], "jwks": jwks}));
        let token = Signer::Rs256.sign(Some("rsa-1"), claims(json!({})));
        assert!(validate(&r, &token, NOW_MS).is_ok());
        let token = Signer::Es256.sign(None, claims(json!({})));
        assert!(
            validate(&r, &token, NOW_MS).is_ok(),
            "no kid: every fitting key is tried"
        );
        let token = Signer::Rs256.sign(Some("rotated-away"), claims(json!({})));
        assert_eq!(validate(&r, &token, NOW_MS), Err(TokenError::UnknownKey));
    }

    #[test]
    fn kid_falls_back_to_keys_without_kid() {
        let token = Signer::Rs256.sign(Some("idp-key-7"), claims(json!({})));
        assert!(validate(&rsa_rules(), &token, NOW_MS).is_ok());
    }

    #[test]
    fn critical_header_is_refused() {
        let header = json!({"alg": "HS256", "crit": ["exp"], "exp": 1});
        let token = Signer::Hs256(SECRET.as_bytes()).sign_with_header(header, claims(json!({})));
        assert_eq!(
            validate(&hs_rules(), &token, NOW_MS),
            Err(TokenError::CriticalHeader)
        );
    }

    #[test]
    fn malformed_tokens_are_refused() {
        let good = hs256(SECRET, claims(json!({})));
        let (header, rest) = good.split_once('.').unwrap();
        let not_object = Signer::Hs256(SECRET.as_bytes())
            .sign_with_header(json!({"alg": "HS256"}), json!(["sub", "alice"]));
        let cases = [
            String::new(),
            "abc".to_string(),
            "a.b".to_string(),
            format!("{good}.extra"),
            format!("{header}!.{rest}"),
            format!("{}.{rest}", URL_SAFE_NO_PAD.encode("not json")),
            format!("{}.{rest}", b64_json(&json!({"typ": "JWT"}))),
            format!("{good}=="),
            not_object,
            format!("{}.{rest}", "a".repeat(MAX_TOKEN_LEN)),
        ];
        for token in cases {
            assert_eq!(
                validate(&hs_rules(), &token, NOW_MS),
                Err(TokenError::Malformed),
                "{token:.60}"
            );
        }
    }
}
