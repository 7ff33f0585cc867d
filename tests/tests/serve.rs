//! Serving under load and shutting down: concurrency through a plugin chain,
//! shared state across instances, metrics, and SIGTERM draining.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use wicket_tests::{backend, fill, scratch_dir, HttpClient, TestGateway};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_concurrent_requests_through_a_three_plugin_chain() {
    let b = backend("b").await;
    let yaml = fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
access_log: false
plugins:
  chaos: { module: "{plugin:chaos}", limits: { instances: 8 } }
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes:
  - name: r
    match: { path: "/item/{id}" }
    upstream: b
    plugins:
      - { name: chaos, config: { tag: one } }
      - { name: chaos, config: { tag: two } }
      - { name: chaos, config: { tag: three } }
"#,
        &[("b", &b)],
    );
    let gw = TestGateway::start(&yaml).await;
    let c = HttpClient::new();
    let mut tasks = Vec::new();
    for i in 0..200 {
        let c = c.clone();
        let url = gw.url(&format!("/item/{i}"));
        tasks.push(tokio::spawn(async move { (i, c.get(&url, &[]).await) }));
    }
    for t in tasks {
        let (i, r) = t.await.unwrap();
        assert_eq!(r.status, 200);
        assert_eq!(
            r.json()["path"],
            format!("/item/{i}"),
            "response belongs to its request"
        );
        assert_eq!(r.echoed_header("x-chain").as_deref(), Some("one,two,three"));
        assert_eq!(r.header("x-chain-response"), Some("three,two,one"));
    }
    assert_eq!(b.hits.load(SeqCst), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_is_shared_by_concurrent_instances_and_metrics_are_exposed() {
    let b = backend("b").await;
    let yaml = fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
admin: { address: "127.0.0.1:0" }
access_log: false
plugins:
  counter: { module: "{plugin:counter}", limits: { instances: 8 } }
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes:
  - { name: counted, match: { path: "/{*p}" }, upstream: b, plugins: [{ name: counter }] }
"#,
        &[("b", &b)],
    );
    let gw = TestGateway::start(&yaml).await;
    let c = HttpClient::new();
    let mut tasks = Vec::new();
    for _ in 0..100 {
        let c = c.clone();
        let url = gw.url("/x");
        tasks.push(tokio::spawn(async move { c.get(&url, &[]).await }));
    }
    let mut seen: Vec<u64> = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        seen.push(r.echoed_header("x-hits").unwrap().parse().unwrap());
    }
    seen.sort();
    assert_eq!(
        seen,
        (1..=100).collect::<Vec<_>>(),
        "every increment is atomic and unique"
    );

    let admin = gw.gateway.admin_addr().unwrap();
    let m = c.get(&format!("http://{admin}/metrics"), &[]).await;
    let text = String::from_utf8_lossy(&m.body);
    assert!(
        text.contains(r#"wicket_plugin_hits_total{route="counted",plugin="counter"} 100"#),
        "{text}"
    );
    assert!(text.contains("wicket_requests_total"), "{text}");
    let s = c.get(&format!("http://{admin}/status"), &[]).await;
    assert_eq!(s.json()["generation"], 1);
}

#[test]
fn sigterm_drains_requests_in_flight() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = rt.block_on(backend("b"));
    let dir = scratch_dir("sigterm");
    let config = dir.join("wicket.yaml");
    std::fs::write(
        &config,
        fill(
            r#"
listeners: [{ address: "127.0.0.1:0" }]
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes: [{ name: r, match: { path: "/{*p}" }, upstream: b }]
"#,
            &[("b", &b)],
        ),
    )
    .unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_wicket-under-test"))
        .args(["run", "--config"])
        .arg(&config)
        .env("WICKET_LOG", "info")
        .env("NO_COLOR", "1")
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // The listener's port is in the start-up log line.
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines
            .next()
            .expect("gateway exited before listening")
            .unwrap();
        if let Some(rest) = line.split("listeners=[").nth(1) {
            break rest.split(']').next().unwrap().to_string();
        }
    };
    std::thread::spawn(move || for _ in lines {});

    rt.block_on(async {
        let c = HttpClient::new();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let c = c.clone();
            let url = format!("http://{addr}/slow/1500");
            tasks.push(tokio::spawn(async move { c.get(&url, &[]).await }));
        }
        // Signal only once every request has reached the backend.
        while b.hits.load(SeqCst) < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let kill = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status()
            .unwrap();
        assert!(kill.success());
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "a request in flight was lost");
        }
    });
    let status = child.wait().unwrap();
    assert!(status.success(), "gateway exited with {status}");
}
