//! End-to-end: the circuit-breaker and degradation policy plugins through the
//! gateway on a manual clock — opening, refusing without touching the upstream,
//! half-open probes, error-rate mode; fallbacks on 5xx, connect failure,
//! timeout, a forced switch and an open circuit.

use std::sync::atomic::Ordering;
use std::time::Duration;

use wicket_tests::wicket::Clock;
use wicket_tests::{backend, fill, Backend, HttpClient, Reply, TestGateway};

const T0_MS: u64 = 1_700_000_000_000;

/// Where no one listens: every connect fails at once.
const DEAD: &str = "127.0.0.1:1";

/// A gateway with one catch-all route to `upstream` (an upstream's YAML body)
/// running `chain` (a YAML list of chain entries), on a manual clock.
async fn start(upstream: &str, chain: &str) -> TestGateway {
    let yaml = format!(
        r#"
listeners: [{{ address: "127.0.0.1:0" }}]
plugins:
  circuit-breaker: {{ module: "{{plugin:circuit-breaker}}" }}
  degradation: {{ module: "{{plugin:degradation}}" }}
upstreams:
  b: {upstream}
routes:
  - name: all
    match: {{ path: "/{{*rest}}" }}
    upstream: b
    plugins: {chain}
"#
    );
    TestGateway::start_with_clock(&fill(&yaml, &[]), Clock::manual(T0_MS)).await
}

fn endpoint(addr: &str) -> String {
    format!(r#"{{ endpoints: [{{ address: "{addr}" }}] }}"#)
}

const BREAKER: &str =
    "[{ name: circuit-breaker, config: { consecutive_failures: 3, cooldown_seconds: 30 } }]";

async fn breaker() -> (TestGateway, Backend) {
    let b = backend("b").await;
    let gw = start(&endpoint(&b.addr.to_string()), BREAKER).await;
    (gw, b)
}

fn hits(b: &Backend) -> u64 {
    b.hits.load(Ordering::SeqCst)
}

fn assert_circuit_open(r: &Reply, retry_after: &str) {
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-wicket-circuit"), Some("open"));
    assert_eq!(r.header("retry-after"), Some(retry_after));
    assert_eq!(r.json()["error"], "circuit_open");
}

/// Three upstream 500s in a row: the circuit is open afterwards.
async fn trip(gw: &TestGateway, c: &HttpClient) {
    for _ in 0..3 {
        assert_eq!(c.get(&gw.url("/status/500"), &[]).await.status, 500);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_stays_closed_while_failures_are_not_consecutive() {
    let (gw, b) = breaker().await;
    let c = HttpClient::new();
    for _ in 0..3 {
        assert_eq!(c.get(&gw.url("/status/500"), &[]).await.status, 500);
        assert_eq!(c.get(&gw.url("/status/502"), &[]).await.status, 502);
        // A success resets the count; a 4xx is a success by default.
        assert_eq!(c.get(&gw.url("/status/404"), &[]).await.status, 404);
    }
    let r = c.get(&gw.url("/ok"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(hits(&b), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_after_consecutive_failures_and_spares_the_upstream() {
    let (gw, b) = breaker().await;
    let c = HttpClient::new();
    trip(&gw, &c).await;
    assert_eq!(hits(&b), 3);
    for _ in 0..5 {
        assert_circuit_open(&c.get(&gw.url("/ok"), &[]).await, "30");
    }
    gw.clock.advance(Duration::from_secs(29));
    assert_circuit_open(&c.get(&gw.url("/ok"), &[]).await, "1");
    assert_eq!(hits(&b), 3, "an open circuit let a request through");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_closes_after_a_successful_probe() {
    let (gw, b) = breaker().await;
    let c = HttpClient::new();
    trip(&gw, &c).await;
    gw.clock.advance(Duration::from_secs(30));

    // The probe's mark is kept in the request context: the upstream sees
    // the request as the client sent it.
    let r = c.get(&gw.url("/ok"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-wicket-circuit-probe"), None);

    for _ in 0..3 {
        let r = c.get(&gw.url("/ok"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.echoed_header("x-wicket-circuit-probe"), None);
    }
    // Closed with a fresh count: two failures do not reopen it.
    for _ in 0..2 {
        assert_eq!(c.get(&gw.url("/status/500"), &[]).await.status, 500);
    }
    assert_eq!(c.get(&gw.url("/ok"), &[]).await.status, 200);
    assert_eq!(hits(&b), 3 + 1 + 3 + 2 + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_reopens_when_a_probe_fails() {
    let (gw, b) = breaker().await;
    let c = HttpClient::new();
    trip(&gw, &c).await;
    gw.clock.advance(Duration::from_secs(30));

    assert_eq!(c.get(&gw.url("/status/500"), &[]).await.status, 500);
    assert_eq!(hits(&b), 4, "the probe reached the upstream");
    // One failed probe reopens for a whole new cooldown.
    assert_circuit_open(&c.get(&gw.url("/ok"), &[]).await, "30");
    assert_eq!(hits(&b), 4);

    gw.clock.advance(Duration::from_secs(30));
    assert_eq!(c.get(&gw.url("/ok"), &[]).await.status, 200);
    assert_eq!(c.get(&gw.url("/ok"), &[]).await.status, 200);
    assert_eq!(hits(&b), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_admits_only_one_probe_while_half_open() {
    let (gw, b) = breaker().await;
    let c = HttpClient::new();
    trip(&gw, &c).await;
    gw.clock.advance(Duration::from_secs(30));

    // A slow probe holds the only probe slot.
    let probe = {
        let url = gw.url("/slow/300");
        tokio::spawn(async move { HttpClient::new().get(&url, &[]).await })
    };
    while hits(&b) < 4 {
        tokio::task::yield_now().await;
    }
    let r = c.get(&gw.url("/ok"), &[]).await;
    assert_eq!(r.status, 503, "a second request was admitted as a probe");
    assert_eq!(r.header("x-wicket-circuit"), Some("open"));
    assert_eq!(hits(&b), 4);

    assert_eq!(probe.await.expect("probe task").status, 200);
    assert_eq!(c.get(&gw.url("/ok"), &[]).await.status, 200);
    assert_eq!(hits(&b), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_opens_on_connect_failures_to_a_dead_upstream() {
    let gw = start(&endpoint(DEAD), BREAKER).await;
    let c = HttpClient::new();
    for _ in 0..3 {
        let r = c.get(&gw.url("/ok"), &[]).await;
        assert_eq!(r.status, 502);
        assert_eq!(r.json()["error"], "upstream_connect_failed");
    }
    assert_circuit_open(&c.get(&gw.url("/ok"), &[]).await, "30");
}

const ERROR_RATE: &str = "[{ name: circuit-breaker, config: { consecutive_failures: 0, \
    error_rate_percent: 50, window_seconds: 10, min_requests: 4, cooldown_seconds: 30 } }]";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_error_rate_below_threshold_keeps_the_circuit_closed() {
    let b = backend("b").await;
    let gw = start(&endpoint(&b.addr.to_string()), ERROR_RATE).await;
    let c = HttpClient::new();
    // Three failures out of three, but fewer than min_requests.
    for _ in 0..3 {
        assert_eq!(c.get(&gw.url("/status/500"), &[]).await.status, 500);
    }
    for _ in 0..5 {
        assert_eq!(c.get(&gw.url("/ok"), &[]).await.status, 200);
    }
    // 4 of 9 = 44 %: under 50.
    assert_eq!(c.get(&gw.url("/status/500"), &[]).await.status, 500);
    assert_eq!(c.get(&gw.url("/ok"), &[]).await.status, 200);
    assert_eq!(hits(&b), 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn breaker_error_rate_at_threshold_opens_the_circuit() {
    let b = backend("b").await;
    let gw = start(&endpoint(&b.addr.to_string()), ERROR_RATE).await;
    let c = HttpClient::new();
    for _ in 0..2 {
        assert_eq!(c.get(&gw.url("/ok"), &[]).await.status, 200);
        assert_eq!(c.get(&gw.url("/status/500"), &[]).await.status, 500);
    }
    // 2 of 4 = 50 %, never two failures in a row.
    assert_circuit_open(&c.get(&gw.url("/ok"), &[]).await, "30");
    assert_eq!(hits(&b), 4);
}

const DEGRADE: &str = r#"
      - name: degradation
        config:
          fallback:
            status: 200
            headers: { cache-control: no-store }
            body_json: { items: [], degraded: true }"#;

/// The configured fallback, marked with `reason`.
fn assert_degraded(r: &Reply, reason: &str) {
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.header("x-wicket-degraded"), Some(reason));
    assert_eq!(r.header("cache-control"), Some("no-store"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.json(), serde_json::json!({"items": [], "degraded": true}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degradation_passes_healthy_and_client_error_responses_through() {
    let b = backend("b").await;
    let gw = start(&endpoint(&b.addr.to_string()), DEGRADE).await;
    let c = HttpClient::new();
    let r = c.get(&gw.url("/ok"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["backend"], "b");
    assert_eq!(r.header("x-wicket-degraded"), None);
    let r = c.get(&gw.url("/status/404"), &[]).await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("x-wicket-degraded"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degradation_replaces_upstream_5xx_with_the_fallback() {
    let b = backend("b").await;
    let gw = start(&endpoint(&b.addr.to_string()), DEGRADE).await;
    let c = HttpClient::new();
    for path in ["/status/500", "/status/503"] {
        assert_degraded(&c.get(&gw.url(path), &[]).await, "5xx");
    }
    assert_eq!(hits(&b), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degradation_replaces_a_connect_failure() {
    let gw = start(&endpoint(DEAD), DEGRADE).await;
    assert_degraded(&HttpClient::new().get(&gw.url("/ok"), &[]).await, "error");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degradation_replaces_a_reset_connection() {
    let b = backend("b").await;
    let gw = start(&endpoint(&b.addr.to_string()), DEGRADE).await;
    assert_degraded(
        &HttpClient::new().get(&gw.url("/close"), &[]).await,
        "error",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degradation_replaces_an_upstream_timeout() {
    let b = backend("b").await;
    let upstream = format!(
        r#"{{ endpoints: [{{ address: "{}" }}], request_timeout_ms: 100 }}"#,
        b.addr
    );
    let gw = start(&upstream, DEGRADE).await;
    assert_degraded(
        &HttpClient::new().get(&gw.url("/slow/5000"), &[]).await,
        "timeout",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degradation_forced_serves_the_fallback_without_calling_the_upstream() {
    let b = backend("b").await;
    let chain = r#"[{ name: degradation, config: { force: true, fallback: { status: 503, body: "down for maintenance" } } }]"#;
    let gw = start(&endpoint(&b.addr.to_string()), chain).await;
    let c = HttpClient::new();
    for path in ["/ok", "/status/500"] {
        let r = c.get(&gw.url(path), &[]).await;
        assert_eq!(r.status, 503);
        assert_eq!(r.header("x-wicket-degraded"), Some("forced"));
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(&r.body[..], b"down for maintenance");
    }
    assert_eq!(hits(&b), 0, "a forced fallback called the upstream");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degradation_leaves_other_methods_alone() {
    let b = backend("b").await;
    let chain = r#"[{ name: degradation, config: { methods: [GET] } }]"#;
    let gw = start(&endpoint(&b.addr.to_string()), chain).await;
    let c = HttpClient::new();
    let r = c
        .send("POST", &gw.url("/status/500"), &[], Default::default())
        .await;
    assert_eq!(r.status, 500, "a failed write must report its error");
    assert_eq!(r.header("x-wicket-degraded"), None);
    let r = c.get(&gw.url("/status/500"), &[]).await;
    assert_eq!(r.status, 503);
    assert_eq!(r.header("x-wicket-degraded"), Some("5xx"));
    assert_eq!(r.json()["error"], "service_degraded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn degradation_serves_the_fallback_for_an_open_circuit() {
    let b = backend("b").await;
    let chain = format!(
        r#"{DEGRADE}
      - name: circuit-breaker
        config: {{ consecutive_failures: 2, cooldown_seconds: 30 }}"#
    );
    let gw = start(&endpoint(&b.addr.to_string()), &chain).await;
    let c = HttpClient::new();
    for _ in 0..2 {
        assert_degraded(&c.get(&gw.url("/status/500"), &[]).await, "5xx");
    }
    // The breaker counted the 500s it saw before degradation replaced them.
    let r = c.get(&gw.url("/ok"), &[]).await;
    assert_degraded(&r, "circuit_open");
    assert_eq!(r.header("x-wicket-circuit"), None);
    assert_eq!(hits(&b), 2, "an open circuit let a request through");

    gw.clock.advance(Duration::from_secs(30));
    let r = c.get(&gw.url("/ok"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["backend"], "b");
    assert_eq!(hits(&b), 3);
}
