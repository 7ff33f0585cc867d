//! What one plugin state call costs on each backend, driven without a plugin.
//!
//! - `state-latency/<backend>/<op>`: wall time of one call, awaited in turn
//!   (so on Redis one loopback round trip each, to a `redis-server` this
//!   bench starts).
//! - `state-cpu/redis/<op>`: the gateway's own CPU time per call — the
//!   thread's CPU time over the batch, on a current-thread runtime so every
//!   bit of the client's work (encoding, the multiplexer, the socket) runs on
//!   it; Redis's own CPU is not counted. Criterion prints it as
//!   "time". (A memory call never waits: its CPU time is its latency.)
//!
//! `<op>` is `get` (a hit), `set`, `cas` (a compare-and-swap that succeeds)
//! and `increment`, each through `SharedState` exactly as a hook's host call
//! runs it (routing, size checks, deadline, metrics). The limiter makes a
//! `get` and a `cas` per request; the breaker a `get`, and a `cas` on a
//! recorded outcome.
//!
//! Run with `cargo bench -p wicket-tests --bench state` (needs `redis-server`).

use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use wicket::metrics::Metrics;
use wicket::state::{CasOutcome, Routes, SharedState};
use wicket::Clock;
use wicket_tests::redis_server::RedisServer;

/// A store routed as a gateway with this `state` section routes plugin `p`.
fn store(rt: &tokio::runtime::Runtime, state_yaml: &str) -> SharedState {
    let yaml = format!(
        "listeners: [{{ address: \"127.0.0.1:0\" }}]\n{state_yaml}\nplugins:\n  p: {{ module: x.wasm }}\n"
    );
    let cfg = wicket::config::parse(&yaml).expect("a valid config");
    let metrics = Arc::new(Metrics::new());
    let routes = Routes::build(&cfg, std::path::Path::new("."), None, &metrics).expect("valid");
    let state = SharedState::in_memory(Clock::system());
    rt.block_on(state.apply(Arc::new(routes)));
    state
}

/// What a batch is timed by.
type BatchClock = fn() -> Duration;

/// Wall time since the bench started.
fn wall_clock() -> Duration {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START.get_or_init(std::time::Instant::now).elapsed()
}

/// This thread's CPU time so far, from the scheduler's own accounting
/// (nanoseconds). The runtime is current-thread, so the client's work all
/// runs on this thread.
fn thread_cpu() -> Duration {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").expect("schedstat");
    let ns = text.split_whitespace().next().and_then(|f| f.parse().ok());
    Duration::from_nanos(ns.expect("schedstat's first field: ns on CPU"))
}

/// One call of `op` on key `k`, the way the bench repeats it: a `cas` reads
/// the version the last write left, so every swap succeeds.
async fn call(s: &SharedState, ns: &Arc<str>, op: &str, version: &mut u64) {
    match op {
        "get" => {
            let e = s.get(ns, "k", None).await.expect("get");
            assert!(e.is_some());
        }
        "set" => {
            *version = s.set(ns, "k", vec![7; 64], None, None).await.expect("set");
        }
        "cas" => {
            let expected = Some(*version);
            match s
                .compare_and_swap(ns, "k", expected, vec![7; 64], None, None)
                .await
            {
                Ok(CasOutcome::Swapped(v)) => *version = v,
                other => panic!("compare-and-swap: {other:?}"),
            }
        }
        "increment" => {
            s.increment(ns, "n", 1, Some(60_000), None)
                .await
                .expect("increment");
        }
        _ => unreachable!(),
    }
}

fn state_calls(c: &mut Criterion) {
    let redis = RedisServer::start();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let backends = [
        ("memory", store(&rt, "state: { backend: memory }")),
        (
            "redis",
            store(
                &rt,
                &format!(
                    "state: {{ backend: redis, redis: {{ url: \"{}\" }} }}",
                    redis.url()
                ),
            ),
        ),
    ];
    let ns: Arc<str> = Arc::from("p");
    const OPS: [&str; 4] = ["get", "set", "cas", "increment"];

    // Memory calls never wait, so their CPU time is their latency; and the
    // scheduler's clock only moves when a thread sleeps or a tick lands,
    // which a memory batch may never do: the CPU group is Redis's only.
    let groups: [(&str, BatchClock, &[&str]); 2] = [
        ("state-latency", wall_clock, &["memory", "redis"]),
        ("state-cpu", thread_cpu, &["redis"]),
    ];
    for (group, clock, measured) in groups {
        let mut g = c.benchmark_group(group);
        for (name, s) in backends.iter().filter(|(name, _)| measured.contains(name)) {
            let mut version = rt
                .block_on(s.set(&ns, "k", vec![7; 64], None, None))
                .unwrap();
            for op in OPS {
                g.bench_function(format!("{name}/{op}"), |b| {
                    b.iter_custom(|iters| {
                        rt.block_on(async {
                            let start = clock();
                            for _ in 0..iters {
                                call(s, &ns, op, &mut version).await;
                            }
                            clock() - start
                        })
                    })
                });
            }
        }
        g.finish();
    }
}

criterion_group!(benches, state_calls);
criterion_main!(benches);
