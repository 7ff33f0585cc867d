//! A hook call whose future is dropped half-way — the client went away, a
//! timeout fired — must not leave a half-run instance in the pool: wasmtime
//! refuses to enter such an instance again, so reusing it would fail the next
//! request with "cannot enter component instance".
//!
//! Runs a pool of the `chaos` test guest directly, without sockets.

use std::sync::Arc;
use std::time::Duration;

use http::Method;
use wicket::config::{Limits, PluginConfig, UpstreamConfig};
use wicket::metrics::Metrics;
use wicket::plugin::{Pool, RequestDecision, RequestInfo, Runtime, RuntimeOptions};
use wicket::state::SharedState;
use wicket::upstream::Upstream;
use wicket::Clock;

/// A pool of one `chaos` instance with a deadline far beyond the test's wait.
async fn single_instance_pool() -> Arc<Pool> {
    let clock = Clock::system();
    let options = RuntimeOptions {
        module_cache: Some(wicket_tests::module_cache()),
        instance_slots: 16,
        max_memory_bytes: 64 * 1024 * 1024,
        ..RuntimeOptions::from_config(&Default::default())
    };
    let state = SharedState::in_memory(clock.clone());
    let runtime =
        Arc::new(Runtime::new(options, clock, state, Arc::new(Metrics::new())).expect("runtime"));
    let cfg = PluginConfig {
        module: wicket_tests::plugins::CHAOS.to_string(),
        limits: Limits {
            instances: 1,
            deadline_ms: 10_000,
            ..Limits::default()
        },
        failure: Default::default(),
        isolation: Default::default(),
        state: Default::default(),
    };
    let plugin = runtime
        .load("chaos", &cfg, std::path::Path::new("."))
        .expect("chaos loads");
    plugin
        .pool("{}".into(), Arc::from(vec!["b".to_string()]))
        .await
        .expect("chaos initialises")
}

fn request(chaos: Option<&str>) -> http::request::Parts {
    let mut req = http::Request::builder().method(Method::GET).uri("/");
    if let Some(mode) = chaos {
        req = req.header("x-chaos", mode);
    }
    req.body(()).expect("valid request").into_parts().0
}

async fn call(pool: &Pool, parts: &http::request::Parts) -> Result<RequestDecision, String> {
    let info = Arc::new(RequestInfo {
        scheme: "http",
        authority: "test".into(),
        client: "127.0.0.1:1".parse().expect("address"),
        route: Arc::from("r"),
        path: "/".into(),
        params: Default::default(),
        request_id: wicket::request::RequestId::next(),
        tls: None,
    });
    let upstream = UpstreamConfig {
        request_timeout_ms: 1_000,
        max_idle_per_endpoint: 1,
        ..UpstreamConfig::single("127.0.0.1:9".parse().expect("address"))
    };
    let upstream =
        Upstream::new("b", &upstream, std::path::Path::new(".")).expect("valid upstream");
    let mut parts = parts.clone();
    pool.on_request(&mut parts, &info, &upstream, &mut Default::default())
        .await
        .map_err(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completed_call_returns_its_instance_to_the_pool() {
    let pool = single_instance_pool().await;
    let decision = call(&pool, &request(None)).await;
    assert!(matches!(decision, Ok(RequestDecision::Continue(_))));
    assert_eq!(pool.idle_len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancelled_call_discards_its_instance() {
    let pool = single_instance_pool().await;
    // The guest spins until its deadline, yielding at every epoch tick, so the
    // timeout drops the call's future while the guest is inside its code.
    let spinning = request(Some("loop"));
    let cancelled = tokio::time::timeout(Duration::from_millis(20), call(&pool, &spinning)).await;
    assert!(
        cancelled.is_err(),
        "the spinning call should still be running"
    );
    assert_eq!(
        pool.idle_len(),
        0,
        "a half-run instance went back to the pool"
    );

    let decision = call(&pool, &request(None)).await;
    assert!(
        matches!(decision, Ok(RequestDecision::Continue(_))),
        "{decision:?}"
    );
    assert_eq!(pool.idle_len(), 1);
}
