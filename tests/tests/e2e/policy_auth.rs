//! End-to-end: the jwt-auth and key-auth policy plugins through the gateway,
//! each with the request it lets through (identity forwarded upstream) and the
//! ones it refuses (401 before the upstream is touched).

use std::sync::atomic::Ordering;
use std::time::Duration;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;
use wicket_tests::wicket::Clock;
use wicket_tests::{backend, fill, Backend, HttpClient, Reply, TestGateway};

/// The manual clock's start: 2023-11-14T22:13:20Z.
const T0_S: u64 = 1_700_000_000;

const SECRET: &str = "an-hs256-test-secret-of-32-bytes-or-more";

/// RS256, `kid: rsa-1`, claims `{"sub":"rsa-user","iss":"wicket-tests","exp":1700003600}`,
/// signed with `plugins/policies/jwt-auth/testdata/rsa_private.pem` by
/// `openssl dgst -sha256 -sign` (valid for the first hour of the manual clock).
const RS256_TOKEN: &str = "eyJhbGciOiJSUzI1NiIsInR5cCI6IkpXVCIsImtpZCI6InJzYS0xIn0.\
eyJzdWIiOiJyc2EtdXNlciIsImlzcyI6IndpY2tldC10ZXN0cyIsImV4cCI6MTcwMDAwMzYwMH0.\
n56SnXO0b-67GPNCS_L01vTd1t2Dc0M2zjcM9mdvGKUqgjPOZblMcDSLdXmujP78nU0UyOQtvADXbjjSOAS2eYwFbAlfyFYNG\
A7k3ijuRziiOdjkTG64S0hQbJfLenSxe7gPS9hCTbPs1ozUSiCZWFBKtE3KdHcJExlqSEEi20nUBG278ZWj3l7dH-AVgYcXMD\
Hip8sjio524bxxCzGSldiQ073_Ib-kOp2Vy70Jp-b5A-5oDmFcU5D9g6a-4dS6Qeg5AtseJPuD_l3Jf8iPWo46zXx2oIwlBoh\
Omc8v2nRzj0YAgPOvryci_YAKphOa3jPzbX5uoh64LSDtQu15tA";

const JWKS: &str = include_str!("../../../plugins/policies/jwt-auth/testdata/jwks.json");

fn b64_json(value: &Value) -> String {
    URL_SAFE_NO_PAD.encode(value.to_string())
}

/// A compact JWS with `header`, signed HS256 with `secret` whatever the header says.
fn sign_hs256(secret: &str, header: Value, claims: Value) -> String {
    let input = format!("{}.{}", b64_json(&header), b64_json(&claims));
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    mac.update(input.as_bytes());
    let signature = URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes());
    format!("{input}.{signature}")
}

fn hs256(secret: &str, claims: Value) -> String {
    sign_hs256(secret, json!({"alg": "HS256", "typ": "JWT"}), claims)
}

async fn jwt_gateway() -> (TestGateway, Backend) {
    let b = backend("b").await;
    let jwks: Value = serde_json::from_str(JWKS).expect("testdata jwks is JSON");
    let yaml = fill(
        &format!(
            r#"
listeners: [{{ address: "127.0.0.1:0" }}]
plugins:
  jwt-auth: {{ module: "{{plugin:jwt-auth}}" }}
upstreams: {{ b: {{ endpoints: [{{ address: "{{backend:b}}" }}] }} }}
routes:
  - name: hs
    match: {{ path: "/hs" }}
    upstream: b
    plugins:
      - name: jwt-auth
        config:
          algorithms: [HS256]
          secret: "{SECRET}"
          forward_claims: {{ scope: x-scope, tier: x-tier }}
  - name: rs
    match: {{ path: "/rs" }}
    upstream: b
    plugins:
      - name: jwt-auth
        config:
          algorithms: [RS256]
          issuer: wicket-tests
          jwks: {jwks}
"#
        ),
        &[("b", &b)],
    );
    let gw = TestGateway::start_with_clock(&yaml, Clock::manual(T0_S * 1000)).await;
    (gw, b)
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// A jwt-auth refusal: 401, the RFC 6750 challenge, and the JSON error.
fn assert_jwt_refused(r: &Reply, error: &str, description: &str) {
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("content-type"), Some("application/json"));
    let challenge = r.header("www-authenticate").expect("WWW-Authenticate");
    assert!(
        challenge.starts_with("Bearer realm=\"wicket\""),
        "{challenge}"
    );
    assert_eq!(r.json()["error"], error);
    assert_eq!(r.json()["message"], description);
    if error == "invalid_token" {
        assert!(
            challenge.contains(r#"error="invalid_token""#),
            "{challenge}"
        );
        assert!(challenge.contains(description), "{challenge}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_valid_hs256_token_forwards_consumer_and_claims() {
    let (gw, b) = jwt_gateway().await;
    let c = HttpClient::new();
    let token = hs256(
        SECRET,
        json!({"sub": "alice", "scope": "orders:read", "tier": 2, "exp": T0_S + 60}),
    );
    let r = c
        .get(
            &gw.url("/hs"),
            &[
                ("authorization", &bearer(&token)),
                // Client-sent copies must be replaced, so the upstream can trust them.
                ("x-wicket-consumer", "mallory"),
                ("x-scope", "admin"),
            ],
        )
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(
        r.echoed_header("x-wicket-consumer").as_deref(),
        Some("alice")
    );
    assert_eq!(r.echoed_header("x-scope").as_deref(), Some("orders:read"));
    assert_eq!(r.echoed_header("x-tier").as_deref(), Some("2"));
    assert_eq!(
        r.json()["headers"]["x-wicket-consumer"]
            .as_array()
            .unwrap()
            .len(),
        1
    );
    assert_eq!(b.hits.load(Ordering::SeqCst), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_token_is_accepted_until_expiry_and_refused_after() {
    let (gw, b) = jwt_gateway().await;
    let c = HttpClient::new();
    let token = hs256(SECRET, json!({"sub": "alice", "exp": T0_S + 60}));
    let auth = bearer(&token);

    let r = c.get(&gw.url("/hs"), &[("authorization", &auth)]).await;
    assert_eq!(r.status, 200);

    // Past exp and the default 30 s leeway.
    gw.clock.advance(Duration::from_secs(120));
    let r = c.get(&gw.url("/hs"), &[("authorization", &auth)]).await;
    assert_jwt_refused(&r, "invalid_token", "the token has expired");
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        1,
        "a refusal reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_rejects_wrong_signature_alg_none_and_missing_token() {
    let (gw, b) = jwt_gateway().await;
    let c = HttpClient::new();
    let claims = json!({"sub": "alice", "exp": T0_S + 60});

    let forged = hs256("another-secret-that-is-32-bytes-long!!", claims.clone());
    let r = c
        .get(&gw.url("/hs"), &[("authorization", &bearer(&forged))])
        .await;
    assert_jwt_refused(&r, "invalid_token", "the token signature is invalid");

    // Same payload, valid signature, one claim changed after signing.
    let good = hs256(SECRET, claims.clone());
    let mut parts: Vec<String> = good.split('.').map(str::to_string).collect();
    parts[1] = b64_json(&json!({"sub": "admin", "exp": T0_S + 60}));
    let tampered = parts.join(".");
    let r = c
        .get(&gw.url("/hs"), &[("authorization", &bearer(&tampered))])
        .await;
    assert_jwt_refused(&r, "invalid_token", "the token signature is invalid");

    let unsigned = format!(
        "{}.{}.",
        b64_json(&json!({"alg": "none", "typ": "JWT"})),
        b64_json(&claims)
    );
    let r = c
        .get(&gw.url("/hs"), &[("authorization", &bearer(&unsigned))])
        .await;
    assert_jwt_refused(
        &r,
        "invalid_token",
        "the token's signing algorithm is not allowed",
    );

    let r = c.get(&gw.url("/hs"), &[]).await;
    assert_jwt_refused(&r, "missing_token", "a bearer token is required");
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"Bearer realm="wicket""#)
    );

    // A bearer token under another scheme is no token at all.
    let r = c
        .get(
            &gw.url("/hs"),
            &[("authorization", &format!("Basic {good}"))],
        )
        .await;
    assert_jwt_refused(&r, "missing_token", "a bearer token is required");

    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        0,
        "a refusal reached the upstream"
    );
    let r = c
        .get(&gw.url("/hs"), &[("authorization", &bearer(&good))])
        .await;
    assert_eq!(r.status, 200, "the same gateway accepts the genuine token");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_valid_rs256_token_verifies_against_the_jwks() {
    let (gw, _b) = jwt_gateway().await;
    let c = HttpClient::new();
    let r = c
        .get(&gw.url("/rs"), &[("authorization", &bearer(RS256_TOKEN))])
        .await;
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.echoed_header("x-wicket-consumer").as_deref(),
        Some("rsa-user")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_rs256_route_rejects_forgeries() {
    let (gw, b) = jwt_gateway().await;
    let c = HttpClient::new();

    // The RSA signature over different claims.
    let mut parts: Vec<&str> = RS256_TOKEN.split('.').collect();
    let other_claims =
        b64_json(&json!({"sub": "admin", "iss": "wicket-tests", "exp": 1_700_003_600}));
    parts[1] = &other_claims;
    let r = c
        .get(
            &gw.url("/rs"),
            &[("authorization", &bearer(&parts.join(".")))],
        )
        .await;
    assert_jwt_refused(&r, "invalid_token", "the token signature is invalid");

    // An HS256 token on a route that only accepts RS256.
    let hs = hs256(
        SECRET,
        json!({"sub": "alice", "iss": "wicket-tests", "exp": T0_S + 60}),
    );
    let r = c
        .get(&gw.url("/rs"), &[("authorization", &bearer(&hs))])
        .await;
    assert_jwt_refused(
        &r,
        "invalid_token",
        "the token's signing algorithm is not allowed",
    );

    // The genuine token after its exp (T0 + 1 h) and leeway.
    gw.clock.advance(Duration::from_secs(3600 + 31));
    let r = c
        .get(&gw.url("/rs"), &[("authorization", &bearer(RS256_TOKEN))])
        .await;
    assert_jwt_refused(&r, "invalid_token", "the token has expired");
    assert_eq!(b.hits.load(Ordering::SeqCst), 0);
}

async fn key_gateway() -> (TestGateway, Backend) {
    let b = backend("b").await;
    let yaml = fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
plugins:
  key-auth: { module: "{plugin:key-auth}" }
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes:
  - name: api
    match: { path: "/api" }
    upstream: b
    plugins:
      - name: key-auth
        config:
          keys: { "k-alice-1": alice, "k-alice-2": alice, "k-bob": bob }
          query_param: api_key
"#,
        &[("b", &b)],
    );
    (TestGateway::start(&yaml).await, b)
}

fn assert_key_refused(r: &Reply, error: &str) {
    assert_eq!(r.status, 401, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        r.header("www-authenticate"),
        Some(r#"ApiKey realm="wicket""#)
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json()["error"], error);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_auth_valid_key_forwards_its_consumer() {
    let (gw, b) = key_gateway().await;
    let c = HttpClient::new();
    for (key, consumer) in [
        ("k-alice-1", "alice"),
        ("k-alice-2", "alice"),
        ("k-bob", "bob"),
    ] {
        let r = c
            .get(
                &gw.url("/api"),
                &[("x-api-key", key), ("x-wicket-consumer", "mallory")],
            )
            .await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.echoed_header("x-wicket-consumer").as_deref(),
            Some(consumer)
        );
        assert_eq!(r.echoed_header("x-api-key"), None, "the key is stripped");
    }
    assert_eq!(b.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_auth_strips_a_key_sent_in_the_query() {
    let (gw, _b) = key_gateway().await;
    let c = HttpClient::new();
    let r = c
        .get(&gw.url("/api?page=2&api_key=k-bob&sort=asc"), &[])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-wicket-consumer").as_deref(), Some("bob"));
    assert_eq!(
        r.json()["query"],
        "page=2&sort=asc",
        "the key never reaches the upstream"
    );

    let r = c.get(&gw.url("/api?api_key=k-bob"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["query"], Value::Null);
    assert_key_refused(
        &c.get(&gw.url("/api?api_key=nope"), &[]).await,
        "invalid_api_key",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_auth_rejects_unknown_and_missing_keys() {
    let (gw, b) = key_gateway().await;
    let c = HttpClient::new();
    assert_key_refused(
        &c.get(&gw.url("/api"), &[("x-api-key", "k-alice-")]).await,
        "invalid_api_key",
    );
    assert_key_refused(
        &c.get(&gw.url("/api"), &[("x-api-key", "k-alice-11")]).await,
        "invalid_api_key",
    );
    assert_key_refused(&c.get(&gw.url("/api"), &[]).await, "missing_api_key");
    assert_key_refused(
        &c.get(&gw.url("/api"), &[("x-wicket-consumer", "alice")])
            .await,
        "missing_api_key",
    );
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        0,
        "a refusal reached the upstream"
    );
}
