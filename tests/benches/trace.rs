//! What tracing a request costs the request path, without sockets on it.
//!
//! - `trace/request/N`: one traced request's spans as `proxy.rs` makes them —
//!   the server span (started, its request, route and answer attributes,
//!   ended), N plugin hook spans and the upstream span (with the
//!   `traceparent` written into the upstream headers) — with the batch export
//!   to a collector on loopback that discards what it receives. The exporter
//!   runs on the same single-threaded runtime (each iteration yields to it),
//!   so its encoding and sends are part of the figure, as they are on a
//!   gateway core.
//! - `trace/unsampled`: the same calls on a request the sampler did not pick
//!   (a ratio of 0): what an untraced request pays when tracing is configured.
//!
//! Run with `cargo bench -p wicket-tests --bench trace`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use http::{HeaderMap, Method};
use wicket::metrics::Metrics;
use wicket::plugin::{OutcomeResult, UpstreamOutcome};
use wicket::request::Conn;
use wicket::telemetry::trace::{HookCall, Tracing};

/// A collector that reads each export request whole and answers 200.
async fn discarding_collector() -> SocketAddr {
    use http_body_util::BodyExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind collector");
    let addr = listener.local_addr().expect("collector address");
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let service = hyper::service::service_fn(
                    |req: hyper::Request<hyper::body::Incoming>| async move {
                        let _ = req.into_body().collect().await;
                        Ok::<_, std::convert::Infallible>(hyper::Response::new(
                            http_body_util::Full::new(bytes::Bytes::new()),
                        ))
                    },
                );
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service)
                    .await;
            });
        }
    });
    addr
}

fn tracing(collector: SocketAddr, ratio: f64) -> Arc<Tracing> {
    let yaml = format!(
        "otlp: {{ endpoint: \"http://{collector}/v1/traces\" }}\nsampling_ratio: {ratio}\n"
    );
    let cfg = serde_yaml_ng::from_str(&yaml).expect("tracing config");
    Tracing::build(Some(&cfg), None, Metrics::new().span_counters())
        .expect("tracing builds")
        .expect("tracing is on")
}

/// One request's spans, as the request path makes them.
fn request(tracing: &Arc<Tracing>, head: &HeaderMap, conn: &Conn, hooks: usize) {
    let route: Arc<str> = Arc::from("bench");
    let plugins: [Arc<str>; 3] = [
        "key-auth".into(),
        "rate-limit".into(),
        "traffic-split".into(),
    ];
    let trace = tracing.start(head, &Method::GET, SystemTime::now());
    trace.request("api.example.com", "/bench", http::Version::HTTP_11, conn);
    trace.routed(&route, &wicket::request::RequestId::next());
    for i in 0..hooks {
        let call = HookCall {
            plugin: &plugins[i % 3],
            hook: "on-request",
            decision: "continue",
            failure: None,
            took: Duration::from_micros(3),
        };
        trace.hook(call, None);
    }
    let mut upstream = HeaderMap::new();
    let span = trace.upstream("backend", &mut upstream);
    let outcome = UpstreamOutcome {
        result: OutcomeResult::Status(200),
        latency_us: 100,
        endpoint: Some("127.0.0.1:8081".into()),
        attempts: 1,
    };
    span.end(&outcome);
    trace.answered(200, Some("backend"), &outcome, None);
    trace.end();
    std::hint::black_box(upstream);
}

fn spans(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let collector = rt.block_on(discarding_collector());
    let (sampled, unsampled) = {
        let _guard = rt.enter();
        (tracing(collector, 1.0), tracing(collector, 0.0))
    };
    let head = HeaderMap::new();
    let conn = Conn {
        client: "127.0.0.1:50000".parse().expect("address"),
        scheme: "http",
        listener: 0,
        tls: None,
        hold: None,
    };
    let mut group = c.benchmark_group("trace");
    for hooks in [0, 3, 6] {
        group.bench_function(BenchmarkId::new("request", hooks), |b| {
            b.to_async(&rt).iter(|| async {
                request(&sampled, &head, &conn, hooks);
                tokio::task::yield_now().await;
            })
        });
    }
    group.bench_function("unsampled", |b| {
        b.to_async(&rt).iter(|| async {
            request(&unsampled, &head, &conn, 3);
            tokio::task::yield_now().await;
        })
    });
    group.finish();
    rt.block_on(async {
        sampled.shutdown().await;
        unsampled.shutdown().await;
    });
}

criterion_group!(benches, spans);
criterion_main!(benches);
