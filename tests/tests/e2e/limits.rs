//! Hostile plugins: every limit the runtime enforces, each with the gateway
//! still serving afterwards, and both failure policies.

use std::time::Instant;

use wicket_tests::{backend, fill, Backend, HttpClient, TestGateway};

fn config(b: &Backend) -> String {
    fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
plugins:
  closed:
    module: "{plugin:chaos}"
    limits: { memory_mb: 16, deadline_ms: 100, instances: 4, max_headers: 32 }
  open:
    module: "{plugin:chaos}"
    failure: fail-open
    limits: { memory_mb: 16, deadline_ms: 100 }
  fresh:
    module: "{plugin:chaos}"
    isolation: per-request
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes:
  - { name: closed, match: { path: "/closed" }, upstream: b, plugins: [{ name: closed }] }
  - { name: open, match: { path: "/open" }, upstream: b, plugins: [{ name: open }] }
  - { name: fresh, match: { path: "/fresh" }, upstream: b, plugins: [{ name: fresh }] }
"#,
        &[("b", b)],
    )
}

async fn start() -> (TestGateway, Backend) {
    let b = backend("b").await;
    let gw = TestGateway::start(&config(&b)).await;
    (gw, b)
}

fn instance_id(r: &wicket_tests::Reply) -> String {
    r.header("x-chaos-instance")
        .expect("chaos reports its instance")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_fails_closed_and_the_next_request_gets_a_fresh_instance() {
    let (gw, b) = start().await;
    let c = HttpClient::new();
    let before = instance_id(&c.get(&gw.url("/closed"), &[]).await);

    let r = c.get(&gw.url("/closed"), &[("x-chaos", "trap")]).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.json()["error"], "plugin_failed");
    assert!(r.json()["message"].as_str().unwrap().contains("closed"));

    // The trapped instance was the only idle one; it must not come back.
    let after = instance_id(&c.get(&gw.url("/closed"), &[]).await);
    assert_ne!(before, after, "a trapped instance was reused");
    assert_eq!(b.hits.load(std::sync::atomic::Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_skips_a_failing_plugin() {
    let (gw, _b) = start().await;
    let c = HttpClient::new();
    let r = c.get(&gw.url("/open"), &[("x-chaos", "trap")]).await;
    assert_eq!(r.status, 200, "fail-open must let the request through");
    assert_eq!(r.json()["backend"], "b");
    assert_eq!(
        r.header("x-chaos-instance"),
        None,
        "the failed plugin's patch must not apply"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_exceeded_stops_an_infinite_loop() {
    let (gw, _b) = start().await;
    let c = HttpClient::new();
    let started = Instant::now();
    let r = c.get(&gw.url("/closed"), &[("x-chaos", "loop")]).await;
    assert_eq!(r.status, 500);
    assert!(
        r.json()["message"].as_str().unwrap().contains("deadline"),
        "{}",
        r.json()
    );
    // Generous bound: proves the loop was cut, not that it was fast.
    assert!(started.elapsed().as_secs() < 10);
    assert_eq!(c.get(&gw.url("/closed"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_obeyed_by_a_well_behaved_plugin() {
    let (gw, _b) = start().await;
    let c = HttpClient::new();
    for _ in 0..50 {
        assert_eq!(c.get(&gw.url("/closed"), &[]).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_refused_and_the_gateway_keeps_serving() {
    let (gw, _b) = start().await;
    let c = HttpClient::new();
    let r = c.get(&gw.url("/closed"), &[("x-chaos", "memory")]).await;
    assert_eq!(r.status, 500);
    assert!(
        r.json()["message"].as_str().unwrap().contains("memory"),
        "{}",
        r.json()
    );
    let r = c.get(&gw.url("/open"), &[("x-chaos", "memory")]).await;
    assert_eq!(r.status, 200);
    for _ in 0..10 {
        assert_eq!(c.get(&gw.url("/closed"), &[]).await.status, 200);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_plugin_output_is_refused() {
    let (gw, _b) = start().await;
    let c = HttpClient::new();
    for mode in [
        "bad-header",
        "many-headers",
        "big-body",
        "respond-99",
        "respond-1000",
    ] {
        let r = c.get(&gw.url("/closed"), &[("x-chaos", mode)]).await;
        assert_eq!(r.status, 500, "mode {mode}");
        assert!(
            r.json()["message"]
                .as_str()
                .unwrap()
                .contains("invalid_output"),
            "{mode}: {}",
            r.json()
        );
    }
    assert_eq!(c.get(&gw.url("/closed"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_response_failures_follow_the_policy_too() {
    let (gw, _b) = start().await;
    let c = HttpClient::new();
    let r = c
        .get(&gw.url("/closed"), &[("x-chaos-response", "trap")])
        .await;
    assert_eq!(r.status, 500);
    let r = c
        .get(&gw.url("/open"), &[("x-chaos-response", "trap")])
        .await;
    assert_eq!(r.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_request_isolation_gives_a_fresh_instance_each_call() {
    let (gw, _b) = start().await;
    let c = HttpClient::new();
    let a = instance_id(&c.get(&gw.url("/fresh"), &[]).await);
    let b = instance_id(&c.get(&gw.url("/fresh"), &[]).await);
    assert_ne!(a, b);
    let p1 = instance_id(&c.get(&gw.url("/closed"), &[]).await);
    let p2 = instance_id(&c.get(&gw.url("/closed"), &[]).await);
    assert_eq!(p1, p2, "pooled instances are reused");
}

/// One instance, held by a request that spins until its 1.5 s deadline: the
/// next request waits at most `queue_timeout_ms`, then the failure policy
/// decides (503 + Retry-After when fail-closed, skip when fail-open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_waits_for_a_busy_pool_only_until_its_queue_timeout() {
    let b = backend("b").await;
    let yaml = fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
plugins:
  closed:
    module: "{plugin:chaos}"
    limits: { deadline_ms: 1500, instances: 1, queue_timeout_ms: 100 }
  open:
    module: "{plugin:chaos}"
    failure: fail-open
    limits: { deadline_ms: 1500, instances: 1, queue_timeout_ms: 100 }
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes:
  - { name: closed, match: { path: "/closed" }, upstream: b, plugins: [{ name: closed }] }
  - { name: open, match: { path: "/open" }, upstream: b, plugins: [{ name: open }] }
"#,
        &[("b", &b)],
    );
    let gw = TestGateway::start(&yaml).await;
    for (path, busy_status) in [("/closed", 503), ("/open", 200)] {
        let url = gw.url(path);
        let hog = {
            let (c, url) = (HttpClient::new(), url.clone());
            tokio::spawn(async move { c.get(&url, &[("x-chaos", "loop")]).await })
        };
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;

        let c = HttpClient::new();
        let r = c.get(&url, &[]).await;
        assert_eq!(r.status, busy_status, "{path}: {:?}", r.body);
        if busy_status == 503 {
            assert_eq!(r.json()["error"], "plugin_busy");
            assert_eq!(r.header("retry-after"), Some("1"));
        } else {
            assert_eq!(r.json()["backend"], "b", "fail-open skipped the plugin");
        }

        let hogged = hog.await.expect("hog task");
        assert_eq!(hogged.status, if busy_status == 503 { 500 } else { 200 });
        // The looping instance was discarded; a fresh one serves.
        assert_eq!(c.get(&url, &[]).await.status, 200, "{path} recovers");
    }
    // Each plugin gave up on exactly one request as busy — for `open` that
    // is what shows the 200 came from skipping, not from waiting.
    let text = gw.gateway.shared().runtime().metrics().encode();
    for plugin in ["closed", "open"] {
        let line = format!(r#"wicket_plugin_failures_total{{plugin="{plugin}",kind="busy"}} 1"#);
        assert!(text.contains(&line), "{line} in {text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deadline_is_wall_clock_across_host_awaits() {
    // `sleep` waits a second in a host call (the WASI clock): no guest code
    // runs, so no epoch tick is charged. The 100 ms deadline must still cut it.
    let (gw, _b) = start().await;
    let c = HttpClient::new();
    let started = Instant::now();
    let r = c.get(&gw.url("/closed"), &[("x-chaos", "sleep")]).await;
    let took = started.elapsed();
    assert_eq!(r.status, 500, "{}", r.json());
    assert_eq!(r.json()["error"], "plugin_failed");
    assert!(r.json()["message"].as_str().unwrap().contains("deadline"));
    assert!(
        took < std::time::Duration::from_millis(900),
        "the host await ran to its end: {took:?}"
    );
    // Fail-open: the request goes on with its head intact.
    let r = c.get(&gw.url("/open"), &[("x-chaos", "sleep")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.echoed_header("x-chaos").as_deref(), Some("sleep"));
    assert_eq!(c.get(&gw.url("/closed"), &[]).await.status, 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_replies_carry_a_code_and_request_id_but_no_internals() {
    let (gw, _b) = start().await;
    let c = HttpClient::new();
    let r = c.get(&gw.url("/closed"), &[("x-chaos", "trap")]).await;
    assert_eq!(r.status, 500);
    let json = r.json();
    let id = json["request_id"]
        .as_str()
        .expect("a request id")
        .to_string();
    assert_eq!(id.len(), 16);
    assert_eq!(r.header("x-request-id"), Some(id.as_str()));
    let text = json.to_string();
    for leak in ["wasm", "backtrace", ".rs", "panicked", "chaos.wasm", "0x"] {
        assert!(!text.contains(leak), "the reply leaks {leak:?}: {text}");
    }
    assert!(text.len() < 200, "{text}");
    let other = c.get(&gw.url("/closed"), &[("x-chaos", "trap")]).await;
    assert_ne!(other.json()["request_id"], json["request_id"]);
}
