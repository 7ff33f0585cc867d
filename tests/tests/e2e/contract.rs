//! End-to-end: what a plugin reads through the contract's `request` and
//! `response-head` handles, and which hooks the host calls after `init`
//! declared them — with the `inspect` test guest, through real sockets.

use wicket_tests::{backend, fill, HttpClient, TestGateway};

fn config(hooks: &str, backend_addr: &wicket_tests::Backend) -> String {
    fill(
        &format!(
            r#"
listeners: [{{ address: "127.0.0.1:0" }}]
plugins:
  inspect: {{ module: "{{plugin:inspect}}" }}
upstreams:
  items: {{ endpoints: [{{ address: "{{backend:items}}" }}] }}
routes:
  - name: item
    match: {{ path: "/shops/{{shop}}/items/{{id}}" }}
    upstream: items
    plugins: [{{ name: inspect, config: {{ hooks: {hooks} }} }}]
"#
        ),
        &[("items", backend_addr)],
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_request_reads_every_part_of_the_request_through_the_handle() {
    let items = backend("items").await;
    let gw = TestGateway::start(&config(r#"["on-request"]"#, &items)).await;
    let r = HttpClient::new()
        .get(
            &gw.url("/shops/north/items/42?color=red&size=9"),
            &[("x-probe", "hello"), ("x-multi", "a"), ("x-multi", "b")],
        )
        .await;
    assert_eq!(r.status, 200, "{r:?}");
    let seen = |name: &str| r.echoed_header(&format!("x-seen-{name}"));
    assert_eq!(seen("method").as_deref(), Some("GET"));
    assert_eq!(seen("scheme").as_deref(), Some("http"));
    assert_eq!(seen("authority"), Some(gw.gateway.addrs()[0].to_string()));
    assert_eq!(seen("path").as_deref(), Some("/shops/north/items/42"));
    assert_eq!(seen("query").as_deref(), Some("color=red&size=9"));
    let client = seen("client-addr").expect("client address");
    assert!(client.starts_with("127.0.0.1:"), "{client}");
    assert_eq!(seen("route").as_deref(), Some("item"));
    assert_eq!(seen("upstream").as_deref(), Some("items"));
    assert_eq!(seen("params").as_deref(), Some("shop=north,id=42"));
    assert_eq!(seen("param-id").as_deref(), Some("42"));
    // Looked up as `X-Probe`: names match case-insensitively.
    assert_eq!(seen("probe").as_deref(), Some("hello"));
    assert_eq!(seen("multi").as_deref(), Some("a|b"));
    assert_eq!(seen("head-agrees").as_deref(), Some("yes"));

    // `headers()` returned exactly the head the upstream got, less the 15
    // headers the plugin itself added (x-seen-tls is the 15th).
    let echoed: usize = r.json()["headers"]
        .as_object()
        .expect("headers object")
        .values()
        .map(|v| v.as_array().map_or(0, Vec::len))
        .sum();
    let count: usize = seen("header-count")
        .expect("header count")
        .parse()
        .expect("a number");
    assert_eq!(count + 15, echoed, "{:?}", r.json()["headers"]);

    // Declared `on-request` only: `on-response` was never called.
    assert_eq!(r.header("x-seen-status"), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_without_query_or_probe_reads_as_absent() {
    let items = backend("items").await;
    let gw = TestGateway::start(&config(r#"["on-request"]"#, &items)).await;
    let r = HttpClient::new()
        .get(&gw.url("/shops/s/items/1"), &[])
        .await;
    assert_eq!(r.echoed_header("x-seen-query").as_deref(), Some("-"));
    assert_eq!(r.echoed_header("x-seen-probe").as_deref(), Some("-"));
    assert_eq!(r.echoed_header("x-seen-multi").as_deref(), Some(""));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_response_reads_the_response_head_and_the_request() {
    let items = backend("items").await;
    let gw = TestGateway::start(&config(r#"["on-response"]"#, &items)).await;
    let c = HttpClient::new();

    let r = c.get(&gw.url("/shops/s/items/7"), &[]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-seen-status"), Some("200"));
    assert_eq!(r.header("x-seen-backend"), Some("items"));
    assert_eq!(r.header("x-seen-request-path"), Some("/shops/s/items/7"));
    let count: usize = r
        .header("x-seen-response-header-count")
        .expect("count")
        .parse()
        .expect("a number");
    assert!(count >= 2, "content-type and x-backend at least: {count}");
    // Declared `on-response` only: `on-request` was never called, and the
    // request still went through unchanged.
    assert_eq!(r.echoed_header("x-seen-path"), None);

    // After an upstream failure the response head is the gateway's own 502.
    drop(items);
    let gw_down = TestGateway::start(&fill(
        r#"
listeners: [{ address: "127.0.0.1:0" }]
plugins:
  inspect: { module: "{plugin:inspect}" }
upstreams:
  dead: { endpoints: [{ address: "127.0.0.1:1" }], connect_timeout_ms: 500 }
routes:
  - name: dead
    match: { path: "/{*rest}" }
    upstream: dead
    plugins: [{ name: inspect, config: { hooks: ["on-response"] } }]
"#,
        &[],
    ))
    .await;
    let r = c.get(&gw_down.url("/x"), &[]).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.header("x-seen-status"), Some("502"));
    assert_eq!(r.header("x-seen-backend"), Some("-"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declared_hooks_are_the_only_ones_called() {
    let items = backend("items").await;
    let c = HttpClient::new();
    for (hooks, request_hook, response_hook) in [
        (r#"["on-request", "on-response"]"#, true, true),
        (r#"["on-request"]"#, true, false),
        (r#"["on-response"]"#, false, true),
        ("[]", false, false),
    ] {
        let gw = TestGateway::start(&config(hooks, &items)).await;
        let r = c.get(&gw.url("/shops/s/items/1"), &[]).await;
        assert_eq!(r.status, 200, "hooks {hooks}");
        assert_eq!(
            r.echoed_header("x-seen-path").is_some(),
            request_hook,
            "on-request with hooks {hooks}"
        );
        assert_eq!(
            r.header("x-seen-status").is_some(),
            response_hook,
            "on-response with hooks {hooks}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_hook_name_is_a_config_error_at_its_location() {
    let items = backend("items").await;
    let path = wicket_tests::scratch_dir("contract").join("wicket.yaml");
    std::fs::write(&path, config(r#"["on-body"]"#, &items)).expect("write config");
    let errors = match wicket_tests::wicket::gateway::validate(&path).await {
        Ok(_) => panic!("a bad hook name must not validate"),
        Err(e) => e.0.iter().map(|e| e.to_string()).collect::<Vec<_>>(),
    };
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0].starts_with("routes[0].plugins[0].config: ")
            && errors[0].contains("hooks: unknown hook \"on-body\""),
        "{errors:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plugin_built_against_contract_0_1_0_runs_on_this_host() {
    // `tests/corpus/contract-0.1.0-noop.wasm` is the `noop` test guest as
    // built against `wicket:plugin@0.1.0`, kept to hold the compatibility
    // promise in `wit/plugin.wit`: additions never break an older plugin.
    let module = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/corpus/contract-0.1.0-noop.wasm"
    );
    let wasm = std::fs::read(module).unwrap();
    let imports = String::from_utf8_lossy(&wasm);
    assert!(
        imports.contains("wicket:plugin/types@0.1.0"),
        "the fixture imports the 0.1.0 contract"
    );
    let b = backend("b").await;
    let yaml = fill(
        &format!(
            r#"
listeners: [{{ address: "127.0.0.1:0" }}]
plugins:
  old: {{ module: "{module}" }}
upstreams: {{ b: {{ endpoints: [{{ address: "{{backend:b}}" }}] }} }}
routes:
  - {{ name: r, match: {{ path: "/x" }}, upstream: b, plugins: [{{ name: old }}] }}
"#
        ),
        &[("b", &b)],
    );
    let gw = TestGateway::start(&yaml).await;
    let r = HttpClient::new().get(&gw.url("/x"), &[]).await;
    assert_eq!(r.status, 200);
}
