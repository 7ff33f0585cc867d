//! Signature algorithms and verification keys: parsing a shared secret, a PEM
//! public key or a JWK set, and checking one signature with one key.
//!
//! Every key is typed (HMAC secret, RSA, P-256, P-384) and a key only ever
//! verifies the algorithm family it belongs to. That is what rules out algorithm
//! confusion: an `HS256` token is checked against HMAC secrets only, never
//! against the bytes of an RSA public key.

use std::fmt;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde::Deserialize;
use sha2::{Sha256, Sha384, Sha512};

/// A JWS algorithm this plugin can verify. `none` is deliberately absent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Algorithm {
    Hs256,
    Hs384,
    Hs512,
    Rs256,
    Rs384,
    Rs512,
    Es256,
    Es384,
}

impl Algorithm {
    /// The algorithm for a JOSE `alg` name, exactly as spelled (names are case-sensitive).
    pub(crate) fn from_name(name: &str) -> Option<Algorithm> {
        Some(match name {
            "HS256" => Algorithm::Hs256,
            "HS384" => Algorithm::Hs384,
            "HS512" => Algorithm::Hs512,
            "RS256" => Algorithm::Rs256,
            "RS384" => Algorithm::Rs384,
            "RS512" => Algorithm::Rs512,
            "ES256" => Algorithm::Es256,
            "ES384" => Algorithm::Es384,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Algorithm::Hs256 => "HS256",
            Algorithm::Hs384 => "HS384",
            Algorithm::Hs512 => "HS512",
            Algorithm::Rs256 => "RS256",
            Algorithm::Rs384 => "RS384",
            Algorithm::Rs512 => "RS512",
            Algorithm::Es256 => "ES256",
            Algorithm::Es384 => "ES384",
        }
    }

    /// RFC 7518 §3.2: an HMAC key MUST be at least as long as the hash output.
    pub(crate) fn min_secret_len(self) -> Option<usize> {
        match self {
            Algorithm::Hs256 => Some(32),
            Algorithm::Hs384 => Some(48),
            Algorithm::Hs512 => Some(64),
            _ => None,
        }
    }
}

impl fmt::Display for Algorithm {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The key material, by family.
pub(crate) enum Material {
    Hmac(Vec<u8>),
    Rsa(rsa::PublicKey),
    P256(p256::ecdsa::VerifyingKey),
    P384(p384::ecdsa::VerifyingKey),
}

/// One verification key, with the JWK metadata that restricts its use.
pub(crate) struct Key {
    /// The JWK `kid`; `None` for the `secret` and `public_key` settings.
    pub(crate) kid: Option<String>,
    /// The JWK `alg`, if it pins the key to one algorithm.
    pub(crate) alg: Option<Algorithm>,
    pub(crate) material: Material,
}

impl Key {
    fn new(material: Material) -> Key {
        Key {
            kid: None,
            alg: None,
            material,
        }
    }

    /// Whether this key may verify a token signed with `alg`.
    pub(crate) fn supports(&self, alg: Algorithm) -> bool {
        if self.alg.is_some_and(|pinned| pinned != alg) {
            return false;
        }
        match (&self.material, alg) {
            (Material::Hmac(secret), _) => {
                alg.min_secret_len().is_some_and(|min| secret.len() >= min)
            }
            (Material::Rsa(_), Algorithm::Rs256 | Algorithm::Rs384 | Algorithm::Rs512) => true,
            (Material::P256(_), Algorithm::Es256) => true,
            (Material::P384(_), Algorithm::Es384) => true,
            _ => false,
        }
    }

    /// Whether `signature` is valid for `input` under `alg` with this key.
    /// A key of another family never verifies (see [`Key::supports`]).
    pub(crate) fn verify(&self, alg: Algorithm, input: &[u8], signature: &[u8]) -> bool {
        if !self.supports(alg) {
            return false;
        }
        match (&self.material, alg) {
            (Material::Hmac(secret), Algorithm::Hs256) => {
                hmac_ok::<Hmac<Sha256>>(secret, input, signature)
            }
            (Material::Hmac(secret), Algorithm::Hs384) => {
                hmac_ok::<Hmac<Sha384>>(secret, input, signature)
            }
            (Material::Hmac(secret), Algorithm::Hs512) => {
                hmac_ok::<Hmac<Sha512>>(secret, input, signature)
            }
            (Material::Rsa(key), Algorithm::Rs256) => rsa_ok::<Sha256>(key, input, signature),
            (Material::Rsa(key), Algorithm::Rs384) => rsa_ok::<Sha384>(key, input, signature),
            (Material::Rsa(key), Algorithm::Rs512) => rsa_ok::<Sha512>(key, input, signature),
            (Material::P256(key), Algorithm::Es256) => {
                use p256::ecdsa::signature::Verifier;
                // JWS carries ECDSA signatures as raw r‖s, not DER (RFC 7518 §3.4).
                p256::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verify(input, &sig).is_ok())
            }
            (Material::P384(key), Algorithm::Es384) => {
                use p384::ecdsa::signature::Verifier;
                p384::ecdsa::Signature::from_slice(signature)
                    .is_ok_and(|sig| key.verify(input, &sig).is_ok())
            }
            _ => false,
        }
    }
}

fn hmac_ok<M: KeyInit + Mac>(secret: &[u8], input: &[u8], signature: &[u8]) -> bool {
    let Ok(mut mac) = <M as KeyInit>::new_from_slice(secret) else {
        return false;
    };
    mac.update(input);
    // `verify_slice` compares in constant time.
    mac.verify_slice(signature).is_ok()
}

fn rsa_ok<D>(key: &rsa::PublicKey, input: &[u8], signature: &[u8]) -> bool
where
    D: sha2::Digest + rsa::pkcs8::AssociatedOid,
{
    let hashed = D::digest(input);
    key.verify(rsa::Pkcs1v15Sign::new::<D>(), &hashed, signature)
        .is_ok()
}

/// A shared secret given as text: its UTF-8 bytes are the HMAC key.
pub(crate) fn from_secret(secret: &str) -> Key {
    Key::new(Material::Hmac(secret.as_bytes().to_vec()))
}

/// A PEM public key: RSA (`PUBLIC KEY` or `RSA PUBLIC KEY`), P-256 or P-384.
pub(crate) fn from_pem(pem: &str) -> Result<Key, String> {
    // One `pkcs8` trait serves RSA, P-256 and P-384 alike.
    use p256::pkcs8::DecodePublicKey as _;
    use rsa::pkcs1::DecodeRsaPublicKey as _;

    let pem = pem.trim();
    // Each decoder checks the key's algorithm identifier, so at most one succeeds.
    let material = if let Ok(key) = rsa::PublicKey::from_public_key_pem(pem) {
        Material::Rsa(key)
    } else if let Ok(key) = rsa::PublicKey::from_pkcs1_pem(pem) {
        Material::Rsa(key)
    } else if let Ok(key) = p256::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        Material::P256(key)
    } else if let Ok(key) = p384::ecdsa::VerifyingKey::from_public_key_pem(pem) {
        Material::P384(key)
    } else {
        return Err(
            "public_key: not a PEM-encoded RSA (1024 to 8192 bits), P-256 or P-384 public key"
                .into(),
        );
    };
    Ok(Key::new(material))
}

/// A JWK set: `{"keys": [...]}`.
#[derive(Deserialize)]
pub(crate) struct JwkSet {
    keys: Vec<Jwk>,
}

/// The JWK members this plugin reads; any others (`x5c`, `key_ops`...) are ignored.
#[derive(Deserialize)]
struct Jwk {
    kty: String,
    kid: Option<String>,
    alg: Option<String>,
    #[serde(rename = "use")]
    use_: Option<String>,
    n: Option<String>,
    e: Option<String>,
    crv: Option<String>,
    x: Option<String>,
    y: Option<String>,
    k: Option<String>,
}

/// Keys from a JWK set. Keys meant for encryption (`use: "enc"`) or of a type
/// this plugin does not verify (e.g. `OKP`) are skipped, so a provider's full
/// key set can be pasted as is; a malformed key of a supported type is an error.
pub(crate) fn from_jwks(set: &JwkSet) -> Result<Vec<Key>, String> {
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let at = |msg: String| format!("jwks.keys[{i}]: {msg}");
        if jwk.use_.as_deref().is_some_and(|u| u != "sig") {
            continue;
        }
        let alg = match jwk.alg.as_deref() {
            None => None,
            Some(name) => match Algorithm::from_name(name) {
                Some(alg) => Some(alg),
                // A key pinned to an algorithm we do not verify can never be used.
                None => continue,
            },
        };
        let material = match jwk.kty.as_str() {
            "RSA" => rsa_jwk(jwk).map_err(at)?,
            "EC" => match ec_jwk(jwk).map_err(at)? {
                Some(material) => material,
                None => continue,
            },
            "oct" => Material::Hmac(b64_member(&jwk.k, "k").map_err(at)?),
            _ => continue,
        };
        let key = Key {
            kid: jwk.kid.clone(),
            alg,
            material,
        };
        if let Some(alg) = alg.filter(|alg| !key.supports(*alg)) {
            return Err(at(match alg.min_secret_len() {
                Some(min) if matches!(key.material, Material::Hmac(_)) => {
                    format!("k must be at least {min} bytes for {alg}")
                }
                _ => format!("alg {alg} does not fit a {} key", jwk.kty),
            }));
        }
        keys.push(key);
    }
    Ok(keys)
}

fn rsa_jwk(jwk: &Jwk) -> Result<Material, String> {
    let n = b64_member(&jwk.n, "n")?;
    let e = b64_member(&jwk.e, "e")?;
    let n = rsa::BoxedUint::from_be_slice_vartime(&n);
    let e = rsa::BoxedUint::from_be_slice_vartime(&e);
    rsa::PublicKey::new(n, e)
        .map(Material::Rsa)
        .map_err(|e| format!("invalid RSA key: {e}"))
}

/// `None` for a curve this plugin does not verify.
fn ec_jwk(jwk: &Jwk) -> Result<Option<Material>, String> {
    let (crv, len) = match jwk.crv.as_deref() {
        Some("P-256") => ("P-256", 32),
        Some("P-384") => ("P-384", 48),
        _ => return Ok(None),
    };
    let x = b64_member(&jwk.x, "x")?;
    let y = b64_member(&jwk.y, "y")?;
    if x.len() != len || y.len() != len {
        return Err(format!("x and y must be {len} bytes each for {crv}"));
    }
    // SEC1 uncompressed point: 0x04 ‖ x ‖ y.
    let mut point = Vec::with_capacity(1 + 2 * len);
    point.push(0x04);
    point.extend_from_slice(&x);
    point.extend_from_slice(&y);
    let material = if crv == "P-256" {
        p256::ecdsa::VerifyingKey::from_sec1_bytes(&point).map(Material::P256)
    } else {
        p384::ecdsa::VerifyingKey::from_sec1_bytes(&point).map(Material::P384)
    };
    material
        .map(Some)
        .map_err(|_| format!("({crv}) is not a point on the curve"))
}

fn b64_member(value: &Option<String>, name: &str) -> Result<Vec<u8>, String> {
    let value = value.as_deref().ok_or_else(|| format!("missing {name}"))?;
    let bytes = URL_SAFE_NO_PAD
        .decode(value)
        .map_err(|_| format!("{name} is not base64url"))?;
    if bytes.is_empty() {
        return Err(format!("{name} is empty"));
    }
    Ok(bytes)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const RSA_PUBLIC: &str = include_str!("../testdata/rsa_public.pem");
    pub(crate) const P256_PUBLIC: &str = include_str!("../testdata/p256_public.pem");
    pub(crate) const P384_PUBLIC: &str = include_str!("../testdata/p384_public.pem");
    pub(crate) const JWKS: &str = include_str!("../testdata/jwks.json");

    fn family(key: &Key) -> &'static str {
        match key.material {
            Material::Hmac(_) => "hmac",
            Material::Rsa(_) => "rsa",
            Material::P256(_) => "p256",
            Material::P384(_) => "p384",
        }
    }

    #[test]
    fn algorithm_names_round_trip_and_exclude_none() {
        for name in [
            "HS256", "HS384", "HS512", "RS256", "RS384", "RS512", "ES256", "ES384",
        ] {
            assert_eq!(Algorithm::from_name(name).unwrap().name(), name);
        }
        for name in ["none", "None", "hs256", "PS256", "ES512", "EdDSA", ""] {
            assert_eq!(Algorithm::from_name(name), None, "{name}");
        }
    }

    #[test]
    fn pem_keys_are_recognised_by_type() {
        assert_eq!(family(&from_pem(RSA_PUBLIC).unwrap()), "rsa");
        assert_eq!(family(&from_pem(P256_PUBLIC).unwrap()), "p256");
        assert_eq!(family(&from_pem(P384_PUBLIC).unwrap()), "p384");
        assert!(
            from_pem("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----")
                .err()
                .unwrap()
                .starts_with("public_key:")
        );
    }

    #[test]
    fn keys_support_only_their_own_family() {
        let rsa = from_pem(RSA_PUBLIC).unwrap();
        assert!(rsa.supports(Algorithm::Rs256) && rsa.supports(Algorithm::Rs512));
        assert!(!rsa.supports(Algorithm::Hs256) && !rsa.supports(Algorithm::Es256));
        let p256 = from_pem(P256_PUBLIC).unwrap();
        assert!(p256.supports(Algorithm::Es256) && !p256.supports(Algorithm::Es384));
        let secret = from_secret(&"s".repeat(48));
        assert!(secret.supports(Algorithm::Hs256) && secret.supports(Algorithm::Hs384));
        assert!(!secret.supports(Algorithm::Hs512) && !secret.supports(Algorithm::Rs256));
    }

    #[test]
    fn jwks_keys_carry_kid_and_alg() {
        let set: JwkSet = serde_json::from_str(JWKS).unwrap();
        let keys = from_jwks(&set).unwrap();
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].kid.as_deref(), Some("rsa-1"));
        assert_eq!(keys[0].alg, Some(Algorithm::Rs256));
        assert!(!keys[0].supports(Algorithm::Rs384), "alg pins the key");
        assert_eq!(family(&keys[1]), "p256");
        assert_eq!(keys[1].kid.as_deref(), Some("ec-1"));
    }

    #[test]
    fn jwks_skips_unusable_keys_and_rejects_malformed_ones() {
        let set: JwkSet = serde_json::from_str(
            r#"{"keys": [
                {"kty": "OKP", "crv": "Ed25519", "x": "AA"},
                {"kty": "RSA", "use": "enc", "n": "AA", "e": "AQAB"},
                {"kty": "EC", "crv": "P-521", "x": "AA", "y": "AA"},
                {"kty": "RSA", "alg": "PS256", "n": "AA", "e": "AQAB"},
                {"kty": "oct", "k": "c2VjcmV0"}
            ]}"#,
        )
        .unwrap();
        let keys = from_jwks(&set).unwrap();
        assert_eq!(keys.len(), 1);
        assert_eq!(family(&keys[0]), "hmac");

        let bad: JwkSet =
            serde_json::from_str(r#"{"keys": [{"kty": "RSA", "n": "AQAB"}]}"#).unwrap();
        assert_eq!(from_jwks(&bad).err().unwrap(), "jwks.keys[0]: missing e");
        let bad: JwkSet = serde_json::from_str(
            r#"{"keys": [{"kty": "EC", "crv": "P-256", "x": "AA", "y": "AA"}]}"#,
        )
        .unwrap();
        assert!(from_jwks(&bad)
            .err()
            .unwrap()
            .starts_with("jwks.keys[0]: x and y"));
        let bad: JwkSet =
            serde_json::from_str(r#"{"keys": [{"kty": "oct", "alg": "RS256", "k": "AAAA"}]}"#)
                .unwrap();
        assert!(from_jwks(&bad).err().unwrap().contains("does not fit"));
    }
}
