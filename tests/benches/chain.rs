//! The plugin machinery's per-request cost, driven without sockets.
//!
//! - `chain/*`: `on-request` then `on-response` through a route's chain of 0,
//!   1, 3 and 5 no-op plugins (`plugins/test-programs/noop`), pooled instances
//!   and `isolation: per-request`, exactly as `proxy.rs` runs them
//!   (`wicket::chain`). The 0-plugin case is the baseline: the request head
//!   clone and the chain bookkeeping every request pays anyway.
//! - `call/*`: one host→guest `on-request` call on a pooled instance, with a
//!   request of 20 headers (and 0, to show what marshalling headers costs).
//! - `policy/*`: the real policies, each alone and as the 3- and 5-policy
//!   chains of `bench/run`, with `bench/run`'s configs (the limiter's limit far
//!   above what is asked, so it does its work and never refuses). A policy's
//!   cost is its figure minus `policy/none`.
//!
//! Run with `cargo bench -p wicket-tests --bench chain`.

use std::sync::Arc;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderName, HeaderValue, Method};
use wicket::chain;
use wicket::metrics::Metrics;
use wicket::plugin::{
    OutcomeResult, RequestDecision, RequestInfo, Runtime, RuntimeOptions, UpstreamOutcome,
};
use wicket::snapshot::Snapshot;
use wicket::state::SharedState;
use wicket::Clock;

const CHAIN_LENGTHS: [usize; 4] = [0, 1, 3, 5];

/// Routes `/pooled-N` and `/per-request-N` with N distinct no-op plugins each
/// (distinct plugins, so each has its own pool, as a real chain would).
fn config() -> String {
    let noop = wicket_tests::plugins::NOOP;
    let mut yaml =
        String::from("listeners: [{ address: \"127.0.0.1:0\" }]\naccess_log: false\nplugins:\n");
    for i in 1..=5 {
        yaml += &format!("  noop-{i}: {{ module: \"{noop}\" }}\n");
        yaml += &format!("  fresh-{i}: {{ module: \"{noop}\", isolation: per-request }}\n");
    }
    yaml += "upstreams:\n  b: { endpoints: [{ address: \"127.0.0.1:9\" }] }\nroutes:\n";
    for n in CHAIN_LENGTHS {
        for (kind, plugin) in [("pooled", "noop"), ("per-request", "fresh")] {
            let chain: Vec<String> = (1..=n)
                .map(|i| format!("{{ name: {plugin}-{i} }}"))
                .collect();
            yaml += &format!(
                "  - {{ name: {kind}-{n}, match: {{ path: \"/{kind}-{n}\" }}, upstream: b, plugins: [{}] }}\n",
                chain.join(", ")
            );
        }
    }
    yaml
}

/// The real policies with `bench/run`'s configs, in chain order.
const POLICIES: [(&str, &str); 5] = [
    (
        "key-auth",
        "{ keys: { \"bench-key-5f0c2a\": bench-client } }",
    ),
    (
        "rate-limit",
        "{ rate: 1000000000, burst: 1000000000, key: consumer }",
    ),
    ("degradation", "{}"),
    ("circuit-breaker", "{}"),
    ("traffic-split", "{ rules: [{ weight: 50, upstream: b2 }] }"),
];

/// Routes `/policy-<name>` with one real policy each, `/policy-3` (key-auth,
/// rate-limit, traffic-split), `/policy-5` (all five) and `/policy-none`.
fn policy_config() -> String {
    use wicket_tests::plugins;
    let modules = [
        plugins::KEY_AUTH,
        plugins::RATE_LIMIT,
        plugins::DEGRADATION,
        plugins::CIRCUIT_BREAKER,
        plugins::TRAFFIC_SPLIT,
    ];
    let mut yaml =
        String::from("listeners: [{ address: \"127.0.0.1:0\" }]\naccess_log: false\nplugins:\n");
    for ((name, _), module) in POLICIES.iter().zip(modules) {
        yaml += &format!("  {name}: {{ module: \"{module}\" }}\n");
    }
    yaml += "upstreams:\n  b: { endpoints: [{ address: \"127.0.0.1:9\" }] }\n";
    yaml += "  b2: { endpoints: [{ address: \"127.0.0.1:9\" }] }\nroutes:\n";
    let entry = |(name, config): &(&str, &str)| format!("{{ name: {name}, config: {config} }}");
    let mut routes: Vec<(String, Vec<String>)> = POLICIES
        .iter()
        .map(|p| (p.0.to_string(), vec![entry(p)]))
        .collect();
    routes.push(("none".into(), vec![]));
    routes.push((
        "3".into(),
        [0, 1, 4].iter().map(|&i| entry(&POLICIES[i])).collect(),
    ));
    routes.push(("5".into(), POLICIES.iter().map(entry).collect()));
    for (name, chain) in routes {
        yaml += &format!(
            "  - {{ name: policy-{name}, match: {{ path: \"/policy-{name}\" }}, upstream: b, plugins: [{}] }}\n",
            chain.join(", ")
        );
    }
    yaml
}

fn runtime() -> Arc<Runtime> {
    let clock = Clock::system();
    let options = RuntimeOptions {
        module_cache: Some(wicket_tests::module_cache()),
        instance_slots: 1000,
        max_memory_bytes: 256 * 1024 * 1024,
        ..RuntimeOptions::from_config(&Default::default())
    };
    let state = SharedState::in_memory(clock.clone());
    Arc::new(Runtime::new(options, clock, state, Arc::new(Metrics::new())).expect("runtime"))
}

/// A request head as a browser-ish client sends it, with `extra` more headers
/// to make up the count.
fn request(path: &str, headers: usize) -> http::request::Parts {
    let mut req = http::Request::builder().method(Method::GET).uri(path);
    let common = [
        ("host", "api.example.com"),
        ("user-agent", "bench/1.0"),
        ("accept", "application/json"),
        ("accept-encoding", "gzip, br"),
        ("x-request-id", "7f3c9a2e-5b1d-4c8e-9f0a-1b2c3d4e5f60"),
        ("x-forwarded-for", "127.0.0.1"),
        ("x-forwarded-proto", "http"),
        ("x-forwarded-host", "api.example.com"),
    ];
    for (k, v) in common.iter().take(headers) {
        req = req.header(*k, *v);
    }
    for i in common.len()..headers {
        req = req.header(
            format!("x-extra-{i}"),
            format!("value-{i}-abcdefghijklmnop"),
        );
    }
    req.body(()).expect("valid request").into_parts().0
}

/// The snapshot `text` describes, built as a reload would build it.
fn snapshot(rt: &tokio::runtime::Runtime, text: &str) -> Snapshot {
    let cfg = wicket::config::parse(text).expect("bench config parses");
    rt.block_on(Snapshot::build(
        cfg,
        text,
        std::path::Path::new("."),
        &runtime(),
        1,
        None,
    ))
    .unwrap_or_else(|e| panic!("bench config is valid: {e}"))
}

/// What routing decided for a request to `path` on `route`.
fn info(
    route: &wicket::snapshot::Route,
    path: &str,
    params: wicket::router::Params,
) -> Arc<RequestInfo> {
    Arc::new(RequestInfo {
        scheme: "http",
        authority: "api.example.com".into(),
        client: "127.0.0.1:50000".parse().expect("address"),
        route: route.name.clone(),
        path: path.into(),
        params,
        request_id: wicket::request::RequestId::next(),
        tls: None,
    })
}

fn chains(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let snapshot = snapshot(&rt, &config());

    let mut group = c.benchmark_group("chain");
    for kind in ["pooled", "per-request"] {
        for n in CHAIN_LENGTHS {
            if kind == "per-request" && n == 0 {
                continue;
            }
            let path = format!("/{kind}-{n}");
            let (route, params) = snapshot
                .lookup("api.example.com", &Method::GET, &path)
                .expect("route exists");
            let head = request(&path, 8);
            let info = info(route, &path, params.clone());
            let outcome = UpstreamOutcome {
                result: OutcomeResult::Status(200),
                latency_us: 250,
                endpoint: Some("127.0.0.1:9".into()),
                attempts: 1,
            };
            group.bench_function(BenchmarkId::new(kind, n), |b| {
                b.to_async(&rt).iter(|| async {
                    let mut parts = head.clone();
                    let mut pass =
                        chain::on_request(&snapshot, route, &mut parts, &info, None).await;
                    assert!(pass.short_circuit.is_none(), "no-op plugins continue");
                    let mut resp = http::Response::new(wicket::body::empty());
                    resp.headers_mut().insert(
                        HeaderName::from_static("content-type"),
                        HeaderValue::from_static("application/json"),
                    );
                    chain::on_response(route, &mut pass, &mut parts, &info, &outcome, resp, None)
                        .await
                });
            });
        }
    }
    group.finish();

    let mut group = c.benchmark_group("call");
    let (route, params) = snapshot
        .lookup("api.example.com", &Method::GET, "/pooled-1")
        .expect("route exists");
    let pool = &route.chain[0];
    let upstream = snapshot.upstream("b").expect("upstream b");
    let info = info(route, "/pooled-1", params);
    for headers in [0, 20] {
        // The head is lent to the call and returned by it, so one copy serves
        // every iteration; the RefCell only carries it into criterion's
        // closure. Iterations run one after another on one thread, so the
        // borrow held across the call never conflicts.
        let parts = std::cell::RefCell::new(request("/pooled-1", headers));
        group.bench_function(BenchmarkId::new("on_request/headers", headers), |b| {
            #[allow(clippy::await_holding_refcell_ref)]
            b.to_async(&rt).iter(|| async {
                let mut parts = parts.borrow_mut();
                let decision = pool
                    .on_request(&mut parts, &info, upstream, &mut Default::default())
                    .await
                    .expect("no-op succeeds");
                assert!(matches!(decision, RequestDecision::Continue(_)));
                decision
            });
        });
    }
    group.finish();
}

/// The real policies, as `bench/run` configures them, through the chain code.
fn policies(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let snapshot = snapshot(&rt, &policy_config());
    let outcome = UpstreamOutcome {
        result: OutcomeResult::Status(200),
        latency_us: 250,
        endpoint: Some("127.0.0.1:9".into()),
        attempts: 1,
    };
    let mut group = c.benchmark_group("policy");
    let names = [
        "none",
        "key-auth",
        "rate-limit",
        "degradation",
        "circuit-breaker",
    ];
    for name in names.into_iter().chain(["traffic-split", "3", "5"]) {
        let path = format!("/policy-{name}");
        let (route, params) = snapshot
            .lookup("api.example.com", &Method::GET, &path)
            .expect("route exists");
        let mut head = request(&path, 8);
        head.headers.insert(
            HeaderName::from_static("x-api-key"),
            HeaderValue::from_static("bench-key-5f0c2a"),
        );
        let info = info(route, &path, params.clone());
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let mut parts = head.clone();
                let mut pass = chain::on_request(&snapshot, route, &mut parts, &info, None).await;
                assert!(
                    pass.short_circuit.is_none(),
                    "{name} lets the request through"
                );
                let resp = http::Response::new(wicket::body::empty());
                chain::on_response(route, &mut pass, &mut parts, &info, &outcome, resp, None).await
            });
        });
    }
    group.finish();
}

criterion_group!(benches, chains, policies);
criterion_main!(benches);
