//! End-to-end: the rate-limit policy plugin through the gateway on a manual
//! clock — burst, refusal headers, refill, per-consumer buckets, and an exact
//! limit under concurrent instances.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Barrier;
use wicket_tests::wicket::Clock;
use wicket_tests::{backend, fill, Backend, HttpClient, Reply, TestGateway};

const T0_MS: u64 = 1_700_000_000_000;

/// `/limited`: 1 token per minute per client, bursts of 3. `/per-consumer`:
/// key-auth, then 2 per hour per consumer.
async fn start() -> (TestGateway, Backend) {
    let b = backend("b").await;
    let yaml = fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
plugins:
  key-auth: { module: "{plugin:key-auth}" }
  rate-limit: { module: "{plugin:rate-limit}" }
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes:
  - name: limited
    match: { path: "/limited" }
    upstream: b
    plugins:
      - name: rate-limit
        config: { rate: 1, period_seconds: 60, burst: 3 }
  - name: per-consumer
    match: { path: "/per-consumer" }
    upstream: b
    plugins:
      - name: key-auth
        config: { keys: { "k-alice": alice, "k-bob": bob } }
      - name: rate-limit
        config: { rate: 2, period_seconds: 3600, key: consumer, missing_key: deny }
"#,
        &[("b", &b)],
    );
    let gw = TestGateway::start_with_clock(&yaml, Clock::manual(T0_MS)).await;
    (gw, b)
}

fn assert_limited(r: &Reply, limit: &str, retry_after: &str) {
    assert_eq!(r.status, 429, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["error"], "rate_limited");
    assert_eq!(r.header("retry-after"), Some(retry_after));
    assert_eq!(r.header("ratelimit-limit"), Some(limit));
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert!(r.header("ratelimit-reset").is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_allows_burst_and_reports_remaining() {
    let (gw, b) = start().await;
    let c = HttpClient::new();
    for remaining in ["2", "1", "0"] {
        let r = c.get(&gw.url("/limited"), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.json()["backend"], "b");
        assert_eq!(r.header("ratelimit-limit"), Some("3"));
        assert_eq!(r.header("ratelimit-remaining"), Some(remaining));
    }
    // An empty bucket refills at 1/min: full again in 3 minutes.
    let r = c.get(&gw.url("/limited"), &[]).await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("ratelimit-reset"), Some("180"));
    assert_eq!(b.hits.load(Ordering::SeqCst), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_rejects_excess_with_retry_after() {
    let (gw, b) = start().await;
    let c = HttpClient::new();
    for _ in 0..3 {
        assert_eq!(c.get(&gw.url("/limited"), &[]).await.status, 200);
    }
    for _ in 0..5 {
        assert_limited(&c.get(&gw.url("/limited"), &[]).await, "3", "60");
    }
    assert_eq!(
        b.hits.load(Ordering::SeqCst),
        3,
        "a refusal reached the upstream"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_refills_as_the_clock_advances() {
    let (gw, b) = start().await;
    let c = HttpClient::new();
    for _ in 0..3 {
        assert_eq!(c.get(&gw.url("/limited"), &[]).await.status, 200);
    }
    gw.clock.advance(Duration::from_secs(59));
    assert_limited(&c.get(&gw.url("/limited"), &[]).await, "3", "1");

    gw.clock.advance(Duration::from_secs(1));
    let r = c.get(&gw.url("/limited"), &[]).await;
    assert_eq!(r.status, 200, "one token after one period");
    assert_eq!(r.header("ratelimit-remaining"), Some("0"));
    assert_limited(&c.get(&gw.url("/limited"), &[]).await, "3", "60");

    // Long idle: the bucket fills to burst, never beyond.
    gw.clock.advance(Duration::from_secs(3600));
    for remaining in ["2", "1", "0"] {
        let r = c.get(&gw.url("/limited"), &[]).await;
        assert_eq!(r.header("ratelimit-remaining"), Some(remaining));
    }
    assert_eq!(c.get(&gw.url("/limited"), &[]).await.status, 429);
    assert_eq!(b.hits.load(Ordering::SeqCst), 7);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_keys_by_consumer_after_auth() {
    let (gw, b) = start().await;
    let c = HttpClient::new();
    let alice = [("x-api-key", "k-alice")];
    let bob = [("x-api-key", "k-bob")];
    for _ in 0..2 {
        let r = c.get(&gw.url("/per-consumer"), &alice).await;
        assert_eq!(r.status, 200);
        assert_eq!(
            r.echoed_header("x-wicket-consumer").as_deref(),
            Some("alice")
        );
    }
    assert_limited(&c.get(&gw.url("/per-consumer"), &alice).await, "2", "1800");

    // Same client address, other consumer: a bucket of its own.
    for remaining in ["1", "0"] {
        let r = c.get(&gw.url("/per-consumer"), &bob).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("ratelimit-remaining"), Some(remaining));
    }
    assert_limited(&c.get(&gw.url("/per-consumer"), &bob).await, "2", "1800");

    // Unauthenticated requests are refused by key-auth before the limiter.
    assert_eq!(c.get(&gw.url("/per-consumer"), &[]).await.status, 401);
    assert_eq!(b.hits.load(Ordering::SeqCst), 4);
}

/// 8 clients × 50 requests at once on one bucket of 100 that cannot refill.
async fn race_for_one_bucket(gw: &TestGateway, bucket: &str) -> (usize, usize) {
    const TASKS: usize = 8;
    const PER_TASK: usize = 50;
    let url = gw.url("/exact");
    let start = Arc::new(Barrier::new(TASKS));
    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let url = url.clone();
        let start = start.clone();
        let bucket = bucket.to_string();
        tasks.push(tokio::spawn(async move {
            // One client (so one connection) per task.
            let c = HttpClient::new();
            start.wait().await;
            let mut statuses = Vec::with_capacity(PER_TASK);
            for _ in 0..PER_TASK {
                statuses.push(c.get(&url, &[("x-bucket", &bucket)]).await.status);
            }
            statuses
        }));
    }
    let (mut allowed, mut refused) = (0, 0);
    for task in tasks {
        for status in task.await.expect("client task") {
            match status {
                200 => allowed += 1,
                429 => refused += 1,
                other => panic!("unexpected status {other}"),
            }
        }
    }
    (allowed, refused)
}

// More worker threads than cores, so the OS interleaves instances mid-call
// and a lost update (a non-atomic read-modify-write) shows up as extra
// admissions. Several rounds, each on a fresh bucket, make a lucky pass of
// such a bug unlikely.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn limit_is_exact_under_concurrent_instances() {
    let b = backend("b").await;
    let yaml = fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
plugins:
  rate-limit:
    module: "{plugin:rate-limit}"
    limits: { instances: 16 }
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes:
  - name: exact
    match: { path: "/exact" }
    upstream: b
    plugins:
      - name: rate-limit
        config: { rate: 1, period_seconds: 86400, burst: 100, key: "header:x-bucket" }
"#,
        &[("b", &b)],
    );
    // The manual clock never moves here: nothing refills during the test.
    let gw = TestGateway::start_with_clock(&yaml, Clock::manual(T0_MS)).await;
    for round in 1..=3 {
        let (allowed, refused) = race_for_one_bucket(&gw, &format!("round-{round}")).await;
        assert_eq!((allowed, refused), (100, 300), "round {round}");
        assert_eq!(b.hits.load(Ordering::SeqCst), 100 * round);
    }
}
