//! End-to-end: the five policies composed on one route, in the documented
//! order [key-auth, rate-limit, degradation, circuit-breaker, traffic-split],
//! each shown to act in that setting.

use std::sync::atomic::Ordering;
use std::time::Duration;

use wicket_tests::wicket::Clock;
use wicket_tests::{backend, fill, Backend, HttpClient, Reply, TestGateway};

const T0_MS: u64 = 1_700_000_000_000;

struct Setup {
    gw: TestGateway,
    stable: Backend,
    canary: Backend,
}

impl Setup {
    fn hits(&self) -> (u64, u64) {
        (
            self.stable.hits.load(Ordering::SeqCst),
            self.canary.hits.load(Ordering::SeqCst),
        )
    }
}

/// `/api/...` to `stable` as `/...`; `x-canary: 1` to `canary`, `x-canary:
/// gone` to an upstream where nothing listens. Bursts of 10 per consumer,
/// refilling one an hour; the breaker opens after 3 failures for 30 s.
async fn start() -> Setup {
    let stable = backend("stable").await;
    let canary = backend("canary").await;
    let yaml = fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
plugins:
  key-auth: { module: "{plugin:key-auth}" }
  rate-limit: { module: "{plugin:rate-limit}" }
  degradation: { module: "{plugin:degradation}" }
  circuit-breaker: { module: "{plugin:circuit-breaker}" }
  traffic-split: { module: "{plugin:traffic-split}" }
upstreams:
  stable: { endpoints: [{ address: "{backend:stable}" }] }
  canary: { endpoints: [{ address: "{backend:canary}" }] }
  gone: { endpoints: [{ address: "127.0.0.1:1" }] }
routes:
  - name: api
    match: { path: "/api/{*rest}" }
    upstream: stable
    plugins:
      - name: key-auth
        config: { keys: { "k-alice": alice, "k-bob": bob } }
      - name: rate-limit
        config: { rate: 1, period_seconds: 3600, burst: 10, key: consumer, missing_key: deny }
      - name: degradation
        config: { fallback: { status: 200, body_json: { degraded: true } } }
      - name: circuit-breaker
        config: { scope: route, consecutive_failures: 3, cooldown_seconds: 30 }
      - name: traffic-split
        config:
          upstream_header: x-wicket-upstream
          rewrite: { strip_prefix: "/api" }
          rules:
            - match: { header: { name: x-canary, value: "1" } }
              upstream: canary
            - match: { header: { name: x-canary, value: "gone" } }
              upstream: gone
"#,
        &[("stable", &stable), ("canary", &canary)],
    );
    let gw = TestGateway::start_with_clock(&yaml, Clock::manual(T0_MS)).await;
    Setup { gw, stable, canary }
}

const ALICE: (&str, &str) = ("x-api-key", "k-alice");

fn assert_degraded(r: &Reply, reason: &str) {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-wicket-degraded"), Some(reason));
    assert_eq!(r.json(), serde_json::json!({"degraded": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_serves_an_authenticated_request_with_every_policy_applied() {
    let s = start().await;
    let c = HttpClient::new();
    let r = c.get(&s.gw.url("/api/users?x=1"), &[ALICE]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["backend"], "stable");
    assert_eq!(r.json()["path"], "/users");
    assert_eq!(r.json()["query"], "x=1");
    assert_eq!(
        r.echoed_header("x-wicket-consumer").as_deref(),
        Some("alice")
    );
    assert_eq!(r.echoed_header("x-api-key"), None);
    assert_eq!(r.header("ratelimit-remaining"), Some("9"));
    assert_eq!(r.header("x-wicket-upstream"), Some("stable"));
    assert_eq!(r.header("x-wicket-degraded"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_refuses_unauthenticated_requests_before_any_other_policy() {
    let s = start().await;
    let c = HttpClient::new();
    for headers in [vec![], vec![("x-api-key", "k-mallory")]] {
        let r = c.get(&s.gw.url("/api/users"), &headers).await;
        assert_eq!(r.status, 401, "not degraded, not limited");
        assert_eq!(
            r.header("www-authenticate"),
            Some(r#"ApiKey realm="wicket""#)
        );
        assert_eq!(r.header("x-wicket-degraded"), None);
        assert_eq!(r.header("ratelimit-limit"), None);
    }
    assert_eq!(s.hits(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_rate_limits_each_consumer() {
    let s = start().await;
    let c = HttpClient::new();
    for _ in 0..10 {
        assert_eq!(c.get(&s.gw.url("/api/users"), &[ALICE]).await.status, 200);
    }
    let r = c.get(&s.gw.url("/api/users"), &[ALICE]).await;
    assert_eq!(r.status, 429, "the limiter's refusal is not degraded");
    assert_eq!(r.json()["error"], "rate_limited");
    assert_eq!(r.header("retry-after"), Some("3600"));
    assert_eq!(r.header("x-wicket-degraded"), None);

    let r = c
        .get(&s.gw.url("/api/users"), &[("x-api-key", "k-bob")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-wicket-consumer").as_deref(), Some("bob"));
    assert_eq!(s.hits(), (11, 0));

    // One token per hour.
    s.gw.clock.advance(Duration::from_secs(3600));
    assert_eq!(c.get(&s.gw.url("/api/users"), &[ALICE]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_routes_the_canary_by_header() {
    let s = start().await;
    let c = HttpClient::new();
    let r = c
        .get(&s.gw.url("/api/users"), &[ALICE, ("x-canary", "1")])
        .await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["backend"], "canary");
    assert_eq!(r.json()["path"], "/users");
    assert_eq!(
        r.echoed_header("x-wicket-consumer").as_deref(),
        Some("alice")
    );
    assert_eq!(r.header("x-wicket-upstream"), Some("canary"));
    assert_eq!(r.header("ratelimit-remaining"), Some("9"));
    assert_eq!(s.hits(), (0, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_serves_the_fallback_when_the_upstream_fails() {
    let s = start().await;
    let c = HttpClient::new();
    // The stable backend drops the connection.
    let r = c.get(&s.gw.url("/api/close"), &[ALICE]).await;
    assert_degraded(&r, "error");
    assert_eq!(
        r.header("ratelimit-remaining"),
        Some("9"),
        "earlier plugins' headers stay"
    );
    // The canary's upstream has nothing listening.
    let r = c
        .get(&s.gw.url("/api/users"), &[ALICE, ("x-canary", "gone")])
        .await;
    assert_degraded(&r, "error");
    // The stable backend answers 500.
    assert_degraded(&c.get(&s.gw.url("/api/status/500"), &[ALICE]).await, "5xx");
    assert_eq!(s.hits(), (2, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chain_opens_the_breaker_and_degrades_its_refusal() {
    let s = start().await;
    let c = HttpClient::new();
    for _ in 0..3 {
        assert_degraded(&c.get(&s.gw.url("/api/close"), &[ALICE]).await, "error");
    }
    assert_eq!(s.hits(), (3, 0));

    // Open: neither the stable nor the canary backend is called.
    assert_degraded(
        &c.get(&s.gw.url("/api/users"), &[ALICE]).await,
        "circuit_open",
    );
    assert_degraded(
        &c.get(&s.gw.url("/api/users"), &[ALICE, ("x-canary", "1")])
            .await,
        "circuit_open",
    );
    assert_eq!(s.hits(), (3, 0));

    // After the cooldown one probe closes the circuit.
    s.gw.clock.advance(Duration::from_secs(30));
    let r = c.get(&s.gw.url("/api/users"), &[ALICE]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["backend"], "stable");
    // The probe's mark stays in the request context, never upstream.
    assert_eq!(r.echoed_header("x-wicket-circuit-probe"), None);
    let r = c
        .get(&s.gw.url("/api/users"), &[ALICE, ("x-canary", "1")])
        .await;
    assert_eq!(r.json()["backend"], "canary");
    assert_eq!(s.hits(), (4, 1));
}
