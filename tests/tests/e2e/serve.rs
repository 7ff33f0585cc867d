//! Serving under load and shutting down: concurrency through a plugin chain,
//! shared state across instances, metrics, and SIGTERM draining.

use std::sync::atomic::Ordering::SeqCst;
use std::time::Duration;

use wicket_tests::{backend, fill, metric, scratch_dir, GatewayProcess, HttpClient, TestGateway};

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
    // Every hook call is in the plugin's histogram.
    let hook = [("plugin", "counter"), ("hook", "on-request")];
    let count = "wicket_plugin_hook_duration_seconds_count";
    assert_eq!(metric(&text, count, &hook), Some(100.0), "{text}");
    let inf = [
        ("plugin", "counter"),
        ("hook", "on-request"),
        ("le", "+Inf"),
    ];
    let bucket = "wicket_plugin_hook_duration_seconds_bucket";
    assert_eq!(metric(&text, bucket, &inf), Some(100.0), "{text}");
    let sum = metric(&text, "wicket_plugin_hook_duration_seconds_sum", &hook).unwrap();
    assert!(sum > 0.0 && sum < 100.0, "{sum}");
    // Connections by listener, role and protocol; the scrape's own is open.
    let proxy = gw.gateway.addrs()[0].to_string();
    let http1 = [
        ("listener", proxy.as_str()),
        ("role", "proxy"),
        ("protocol", "http1"),
    ];
    let opened = metric(&text, "wicket_connections_total", &http1).unwrap();
    assert!((1.0..=100.0).contains(&opened), "{text}");
    let admin_open = [("role", "admin")];
    assert!(metric(&text, "wicket_connections_open", &admin_open).unwrap() >= 1.0);
    assert_eq!(
        metric(&text, "wicket_connections_refused_total", &[]),
        Some(0.0)
    );
    // Which build this is.
    let contract = wicket_tests::wicket::plugin::contract_version();
    let build = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("contract", contract),
    ];
    assert_eq!(
        metric(&text, "wicket_build_info", &build),
        Some(1.0),
        "{text}"
    );
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
    let mut gw = GatewayProcess::spawn(env!("CARGO_BIN_EXE_wicket-under-test"), &config, &[]);
    rt.block_on(async {
        let c = HttpClient::new();
        let mut tasks = Vec::new();
        for _ in 0..20 {
            let c = c.clone();
            let url = format!("http://{}/slow/1500", gw.addr);
            tasks.push(tokio::spawn(async move { c.get(&url, &[]).await }));
        }
        // Signal only once every request has reached the backend.
        while b.hits.load(SeqCst) < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        gw.signal("TERM");
        for t in tasks {
            let r = t.await.unwrap();
            assert_eq!(r.status, 200, "a request in flight was lost");
        }
    });
    let status = gw.child.wait().unwrap();
    assert!(status.success(), "gateway exited with {status}");
}

#[test]
fn sighup_reloads_the_configuration() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = rt.block_on(backend("b"));
    let dir = scratch_dir("sighup");
    let config = dir.join("wicket.yaml");
    let yaml = |route: &str| {
        fill(
            &r#"
listeners: [{ address: "127.0.0.1:0" }]
expose_generation: true
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes: [{ name: r, match: { path: "/ROUTE" }, upstream: b }]
"#
            .replace("ROUTE", route),
            &[("b", &b)],
        )
    };
    std::fs::write(&config, yaml("before")).unwrap();
    // No watcher: only the signal can make this reload happen.
    let mut gw = GatewayProcess::spawn(
        env!("CARGO_BIN_EXE_wicket-under-test"),
        &config,
        &["--no-watch"],
    );
    std::fs::write(&config, yaml("after")).unwrap();
    gw.signal("HUP");
    gw.wait_for_log("configuration applied");
    rt.block_on(async {
        let c = HttpClient::new();
        let r = c.get(&format!("http://{}/after", gw.addr), &[]).await;
        assert_eq!(r.status, 200);
        assert_eq!(r.header("x-wicket-generation"), Some("2"));
        let r = c.get(&format!("http://{}/before", gw.addr), &[]).await;
        assert_eq!(r.status, 404);
    });
    gw.signal("TERM");
    assert!(gw.child.wait().unwrap().success());
}

#[test]
fn a_closed_log_pipe_costs_log_lines_not_requests() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let b = rt.block_on(backend("b"));
    let dir = scratch_dir("closed-log");
    let config = dir.join("wicket.yaml");
    // The log is the only way to learn a port-0 address, and it is about to be
    // closed: take a free port from the OS instead.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(
        &config,
        fill(
            &r#"
listeners: [{ address: "127.0.0.1:PORT" }]
upstreams: { b: { endpoints: [{ address: "{backend:b}" }] } }
routes: [{ name: r, match: { path: "/" }, upstream: b }]
"#
            .replace("PORT", &port.to_string()),
            &[("b", &b)],
        ),
    )
    .unwrap();
    let mut gw = GatewayProcess::spawn(env!("CARGO_BIN_EXE_wicket-under-test"), &config, &[]);
    gw.close_log();
    rt.block_on(async {
        let c = HttpClient::new();
        for _ in 0..5 {
            // Each request logs an access line into the closed pipe.
            assert_eq!(
                c.get(&format!("http://127.0.0.1:{port}/"), &[])
                    .await
                    .status,
                200
            );
        }
    });
}
