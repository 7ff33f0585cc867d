//! Building a snapshot — config text → parse → upstreams, router, plugin
//! chains — at 1,000 and 10,000 routes, as a reload does. The first ten routes
//! carry a no-op plugin, each with its own config, so ten pools are
//! initialised per build; the module itself is compiled once (the runtime
//! keeps compiled modules by digest across generations, as a reload would).
//!
//! Run with `cargo bench -p wicket-tests --bench snapshot`.

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use wicket::metrics::Metrics;
use wicket::plugin::{Runtime, RuntimeOptions};
use wicket::snapshot::Snapshot;
use wicket::state::SharedState;
use wicket::Clock;

const SIZES: [usize; 2] = [1_000, 10_000];
const ROUTES_WITH_PLUGINS: usize = 10;

fn config(n: usize) -> String {
    let noop = wicket_tests::plugins::NOOP;
    let mut yaml = format!(
        "listeners: [{{ address: \"127.0.0.1:0\" }}]\naccess_log: false\n\
         plugins:\n  noop: {{ module: \"{noop}\" }}\nupstreams:\n"
    );
    for u in 0..10 {
        yaml += &format!(
            "  svc{u}: {{ endpoints: [{{ address: \"10.0.{u}.1:8080\" }}, {{ address: \"10.0.{u}.2:8080\" }}] }}\n"
        );
    }
    yaml += "routes:\n";
    for i in 0..n {
        let svc = i / 5;
        let (path, methods) = match i % 5 {
            0 => (format!("/api/v1/svc{svc}/users/{{id}}"), ""),
            1 => (
                format!("/api/v2/svc{svc}/orders/{{order}}/items/{{item}}"),
                "",
            ),
            2 => (format!("/svc{svc}/static/{{*rest}}"), ""),
            3 => (
                format!("/tenants/{{tenant}}/svc{svc}/reports"),
                ", methods: [GET]",
            ),
            _ => (format!("/api/v1/svc{svc}/users"), ", methods: [POST]"),
        };
        let host = if i % 10 == 9 {
            format!("host: svc{svc}.example.com, ")
        } else {
            String::new()
        };
        let plugins = if i < ROUTES_WITH_PLUGINS {
            format!(", plugins: [{{ name: noop, config: {{ route: {i} }} }}]")
        } else {
            String::new()
        };
        yaml += &format!(
            "  - {{ name: r{i}, match: {{ {host}path: \"{path}\"{methods} }}, upstream: svc{}{plugins} }}\n",
            i % 10
        );
    }
    yaml
}

fn builds(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let clock = Clock::system();
    let options = RuntimeOptions {
        module_cache: Some(wicket_tests::module_cache()),
        instance_slots: 1000,
        max_memory_bytes: 256 * 1024 * 1024,
        ..RuntimeOptions::from_config(&Default::default())
    };
    let state = SharedState::in_memory(clock.clone());
    let runtime =
        Arc::new(Runtime::new(options, clock, state, Arc::new(Metrics::new())).expect("runtime"));
    let base = std::path::Path::new(".");

    let mut group = c.benchmark_group("snapshot");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(8));
    for n in SIZES {
        let text = config(n);
        let (text, runtime) = (&text, &runtime);
        group.bench_function(BenchmarkId::new("parse_and_build", n), |b| {
            b.to_async(&rt).iter(|| async move {
                let cfg = wicket::config::parse(text).expect("bench config parses");
                let s = Snapshot::build(cfg, text, base, runtime, 1, None)
                    .await
                    .unwrap_or_else(|e| panic!("bench config is valid: {e}"));
                assert_eq!(s.route_count(), n);
                s
            });
        });
        let cfg = wicket::config::parse(text).expect("bench config parses");
        group.bench_function(BenchmarkId::new("build", n), |b| {
            b.to_async(&rt).iter_batched(
                || cfg.clone(),
                |cfg| async move {
                    Snapshot::build(cfg, text, base, runtime, 1, None)
                        .await
                        .unwrap_or_else(|e| panic!("bench config is valid: {e}"))
                },
                BatchSize::PerIteration,
            );
        });
    }
    group.finish();
}

criterion_group!(benches, builds);
criterion_main!(benches);
