//! Test-only helpers: requests and token signing with the fixed keys in
//! `testdata/` (throwaway keys generated with openssl for these tests only).

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{json, Value};
use sha2::{Sha256, Sha384, Sha512};
use wicket_plugin_sdk::{header, Request, RequestHead};

/// The fixed "now" of every test: 2023-11-14T22:13:20Z.
pub(crate) const NOW_S: u64 = 1_700_000_000;
pub(crate) const NOW_MS: u64 = NOW_S * 1000;

const RSA_PRIVATE: &str = include_str!("../testdata/rsa_private.pem");
const P256_PRIVATE: &str = include_str!("../testdata/p256_private.pem");
const P384_PRIVATE: &str = include_str!("../testdata/p384_private.pem");

pub(crate) fn request(headers: &[(&str, &str)], query: Option<&str>) -> Request<'static> {
    Request::from_head(RequestHead {
        method: "GET".into(),
        scheme: "https".into(),
        authority: "api.example.test".into(),
        path: "/orders".into(),
        query: query.map(str::to_string),
        headers: headers.iter().map(|(n, v)| header(n, v)).collect(),
        client_addr: "192.0.2.7:41000".into(),
        route: "orders".into(),
        params: Vec::new(),
        upstream: "orders-backend".into(),
    })
}

/// How a test token is signed.
#[derive(Clone, Copy)]
pub(crate) enum Signer<'a> {
    Hs256(&'a [u8]),
    Hs384(&'a [u8]),
    Hs512(&'a [u8]),
    Rs256,
    Rs384,
    Rs512,
    Es256,
    Es384,
}

impl Signer<'_> {
    pub(crate) fn alg(self) -> &'static str {
        match self {
            Signer::Hs256(_) => "HS256",
            Signer::Hs384(_) => "HS384",
            Signer::Hs512(_) => "HS512",
            Signer::Rs256 => "RS256",
            Signer::Rs384 => "RS384",
            Signer::Rs512 => "RS512",
            Signer::Es256 => "ES256",
            Signer::Es384 => "ES384",
        }
    }

    /// A token with header `{"alg": <alg>, "typ": "JWT"[, "kid": kid]}`.
    pub(crate) fn sign(self, kid: Option<&str>, claims: Value) -> String {
        let mut header = json!({"alg": self.alg(), "typ": "JWT"});
        if let Some(kid) = kid {
            header["kid"] = json!(kid);
        }
        self.sign_with_header(header, claims)
    }

    /// A token with an arbitrary header, signed by this signer regardless of
    /// what the header's `alg` says.
    pub(crate) fn sign_with_header(self, header: Value, claims: Value) -> String {
        let input = format!("{}.{}", b64_json(&header), b64_json(&claims));
        let signature = self.signature(input.as_bytes());
        format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature))
    }

    fn signature(self, input: &[u8]) -> Vec<u8> {
        use p256::ecdsa::signature::Signer as _;
        use rsa::pkcs8::DecodePrivateKey as _;
        use rsa::signature::SignatureEncoding as _;
        let rsa_key = || rsa::PrivateKey::from_pkcs8_pem(RSA_PRIVATE).unwrap();
        match self {
            Signer::Hs256(secret) => hmac::<Hmac<Sha256>>(secret, input),
            Signer::Hs384(secret) => hmac::<Hmac<Sha384>>(secret, input),
            Signer::Hs512(secret) => hmac::<Hmac<Sha512>>(secret, input),
            Signer::Rs256 => rsa::pkcs1v15::SigningKey::<Sha256>::new(rsa_key())
                .sign(input)
                .to_vec(),
            Signer::Rs384 => rsa::pkcs1v15::SigningKey::<Sha384>::new(rsa_key())
                .sign(input)
                .to_vec(),
            Signer::Rs512 => rsa::pkcs1v15::SigningKey::<Sha512>::new(rsa_key())
                .sign(input)
                .to_vec(),
            Signer::Es256 => {
                let key = p256::ecdsa::SigningKey::from_pkcs8_pem(P256_PRIVATE).unwrap();
                let sig: p256::ecdsa::Signature = key.sign(input);
                sig.to_vec()
            }
            Signer::Es384 => {
                let key = p384::ecdsa::SigningKey::from_pkcs8_pem(P384_PRIVATE).unwrap();
                let sig: p384::ecdsa::Signature = key.sign(input);
                sig.to_vec()
            }
        }
    }
}

/// An HS256 token signed with a text secret.
pub(crate) fn hs256(secret: &str, claims: Value) -> String {
    Signer::Hs256(secret.as_bytes()).sign(None, claims)
}

pub(crate) fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

fn hmac<M: KeyInit + Mac>(secret: &[u8], input: &[u8]) -> Vec<u8> {
    let mut mac = <M as KeyInit>::new_from_slice(secret).unwrap();
    mac.update(input);
    mac.finalize().into_bytes().to_vec()
}
